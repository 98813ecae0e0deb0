r"""BCQ and CQL: two answers to extrapolation error — stay on the data's actions, or push their values down.

**Discrete BCQ** (Fujimoto, Conti, Ghavamzadeh & Pineau 2019) fits a generative model of the behaviour policy,
:math:`G_\omega(a|s) \approx \beta(a|s)`, and lets the max of the Bellman target and the policy range only over
actions the data make likely enough:

.. math::
    \mathcal A_\tau(s) = \{a : G_\omega(a|s) / \max_{\hat a} G_\omega(\hat a|s) \ge \tau\}, \qquad
    y = r + \gamma(1-d)\,Q'\big(s', \arg\max_{a' \in \mathcal A_\tau(s')} Q(s', a')\big).

:math:`\tau = 0` allows every action (naive Q-learning); :math:`\tau = 1` only the behaviour's most likely one
(behaviour cloning's choice).

**CQL** (Kumar, Zhou, Tucker & Levine 2020), CQL(H) for discrete actions, adds to the TD loss a term that lowers
the soft maximum of :math:`Q(s,\cdot)` and raises :math:`Q` on the data's action:

.. math::
    L(\theta) = \alpha\,\mathbb E_{(s,a)\sim\mathcal D}\Big[\log\sum_{a'} e^{Q_\theta(s,a')} - Q_\theta(s,a)\Big]
    + \tfrac12\,\mathbb E_{\mathcal D}\big[(Q_\theta(s,a) - y)^2\big].

In a table its stationary point on seen pairs is :math:`Q = y - \alpha(\mu(a|s)/\hat\beta(a|s) - 1)` with
:math:`\mu = \mathrm{softmax}\,Q(s,\cdot)`; unseen pairs (:math:`\hat\beta = 0`) are pushed down without bound.
Evaluating a fixed policy :math:`\pi` with :math:`\mu = \pi` (the paper's Theorem 3.2) gives, in closed form,

.. math::
    \hat V^\pi = (I - \gamma \hat P_\pi)^{-1}\big(\hat R_\pi - \alpha D_\pi\big), \qquad
    D_\pi(s) = \sum_a \frac{\pi(a|s)^2}{\hat\beta(a|s)} - 1 \ \ge 0,

a lower bound of :math:`V^\pi` wherever the empirical model is exact (:func:`cql_policy_evaluation`).

The neural part trains naive offline DQN (Double-DQN target), BC, discrete BCQ and CQL on CartPole-v1
datasets collected from a PPO policy of :mod:`llmcore.alignment.pg_ac` (Part 3).
"""

from llmcore.offline_rl.bcq_cql.closed_loop import (
    BCQCQLConfig,
    BCQCQLResult,
    TabularStudy,
    cartpole_datasets,
    experiment,
    loss_cross_check,
    make_report,
    run,
    tabular_study,
)
from llmcore.offline_rl.bcq_cql.neural import (
    ALGOS,
    THREADS,
    NeuralConfig,
    NeuralRun,
    QNet,
    behaviour_policy,
    collect_cartpole,
    evaluate,
    train_offline,
)
from llmcore.offline_rl.bcq_cql.tabular import (
    bcq_allowed,
    bcq_loss,
    closed_states,
    cql_loss,
    cql_loss_float64,
    cql_policy_evaluation,
    cql_table_gradient,
    one_state_example,
    plot_mechanism,
    tabular_bcq,
    train_tabular_cql,
)

__all__ = [
    "ALGOS", "THREADS", "BCQCQLConfig", "BCQCQLResult", "NeuralConfig", "NeuralRun", "QNet", "TabularStudy",
    "bcq_allowed", "bcq_loss", "behaviour_policy", "cartpole_datasets", "closed_states", "collect_cartpole",
    "cql_loss", "cql_loss_float64", "cql_policy_evaluation", "cql_table_gradient", "evaluate", "experiment",
    "loss_cross_check", "make_report", "one_state_example", "plot_mechanism", "run", "tabular_bcq",
    "tabular_study", "train_offline", "train_tabular_cql",
]
