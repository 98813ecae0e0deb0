"""Speculative decoding and sampling: the rejection rule preserves the target distribution (a statistical
test that can fail), per-position acceptance bookkeeping, the expected-tokens formula, the diagram."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from _tiny_llama import tiny  # noqa: E402
from scipy import stats  # noqa: E402

from llmcore.architecture import speculative as S  # noqa: E402
from llmcore.core.errors import LLMCoreError  # noqa: E402


def test_expected_tokens_per_pass_closed_form():
    assert S.expected_tokens_per_pass(0.0, 4) == 1.0
    assert S.expected_tokens_per_pass(1.0, 4) == 5.0
    assert S.expected_tokens_per_pass(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    with pytest.raises(LLMCoreError):
        S.expected_tokens_per_pass(1.5, 2)


def test_speculative_accept_preserves_the_target_distribution():
    """Many independent rows at one position: emitted tokens ~ p (chi-square), draft-only tokens are not."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1]], dtype=torch.float64)
    q = torch.tensor([[0.1, 0.6, 0.2, 0.1]], dtype=torch.float64)
    N = 40_000
    d = torch.multinomial(q.expand(N, -1), 1, generator=g)  # (N, 1) drafts
    pk = torch.stack([p.expand(N, -1), p.expand(N, -1)], 1)  # (N, 2, V): p_0 and (unused here) p_1
    n, nxt = S.speculative_accept(pk, q.expand(N, -1)[:, None], d, g)
    x = torch.where(n == 1, d[:, 0], nxt)
    counts = np.bincount(x.numpy(), minlength=4)
    assert stats.chisquare(counts, N * p[0].numpy()).pvalue > 1e-3
    assert stats.chisquare(np.bincount(d[:, 0].numpy(), minlength=4), N * p[0].numpy()).pvalue < 1e-12
    beta = float(torch.minimum(p, q).sum())  # acceptance probability of the first draft
    assert abs(float(n.double().mean()) - beta) < 4 * (beta * (1 - beta) / N) ** 0.5


def test_bonus_token_comes_from_the_last_target_distribution():
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])  # p_0, p_1 (bonus: always token 1)
    q = torch.tensor([[[0.5, 0.5]]])  # q == p_0: every draft is accepted
    n, nxt = S.speculative_accept(p, q, torch.tensor([[0]]), g)
    assert int(n) == 1 and int(nxt) == 1


def test_speculative_sample_with_itself_as_draft_accepts_everything():
    m = tiny(n_kv_heads=2, seed=0)
    res = S.speculative_sample(m, m, torch.tensor([[1, 2, 3]]).expand(5, -1), 9, k=3,
                               generator=torch.Generator().manual_seed(0))
    assert res.tokens.shape == (5, 12)
    assert res.acceptance_rate == pytest.approx(1.0, abs=1e-6) or res.alpha > 0.99  # p == q up to round-off
    assert res.rounds == 5 * 3 and res.tokens_per_pass == pytest.approx(4.0, abs=0.05)


def test_greedy_per_position_bookkeeping():
    target = tiny(n_kv_heads=2, seed=0)
    draft = tiny(n_kv_heads=1, seed=1, n_layers=1, d_model=16, n_heads=2)
    r = S.speculative_generate(target, draft, torch.tensor([[1, 2, 3, 4]]), 40, k=3)
    assert r.tested_at[0] == r.rounds  # the first draft is tested every round
    assert all(r.tested_at[i + 1] == r.accepted_at[i] for i in range(2))  # reached i+1 iff accepted i
    assert sum(r.accepted_at) == r.accepted and r.emitted == r.accepted + r.rounds
    # with the per-position rates, 1 + sum_i prod_{j<=i} alpha_j is the measured tokens per pass exactly
    prod, total = 1.0, 1.0
    for a in r.per_position_acceptance:
        prod *= 0.0 if np.isnan(a) else a
        total += prod
    assert total == pytest.approx(r.tokens_per_pass)


def test_sampling_check_passes_on_a_random_pair_and_has_power():
    target = tiny(n_kv_heads=2, seed=0)
    draft = tiny(n_kv_heads=1, seed=1, n_layers=1, d_model=16, n_heads=2)
    out = S.sampling_check(target, draft, torch.tensor([[1, 2, 3, 4]]), 1500, k=2,
                           generator=torch.Generator().manual_seed(0))
    assert out["chi2_p_x1"] > 1e-3 and out["chi2_p_joint"] > 1e-3
    assert out["chi2_p_draft_samples"] < out["chi2_p_x1"]


def test_plot_speculative_round_draws_one_box_per_token():
    fig, ax = plt.subplots()
    assert S.plot_speculative_round(ax, k=4, accepted=2, context=3) is ax
    assert len(ax.patches) == (3 + 4) + (4 + 1) + (3 + 2 + 1)
    assert len(ax.texts) >= len(ax.patches)
    with pytest.raises(LLMCoreError):
        S.plot_speculative_round(ax, k=2, accepted=3)
    plt.close(fig)
