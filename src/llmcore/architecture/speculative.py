r"""Speculative decoding (greedy, exact) and speculative *sampling* (the rejection rule), with the
measurements and the diagram of the Decoding chapter.

A cheap **draft** model proposes $k$ tokens $d_1..d_k$; the **target** scores all of them in *one*
forward pass over ``[last, d_1..d_k]`` and gets its next-token distributions $p_0..p_k$
($p_{i}$ is the distribution after $d_1..d_i$). Shapes: ``B`` rows, ``V`` vocabulary, ``k`` draft length.

* **Greedy** (:func:`speculative_generate`): accept the longest prefix with $d_{i+1} = \arg\max p_i$
  ($n$ tokens), then append $\arg\max p_n$. The output is *exactly* the target's greedy output.
* **Sampling** (:func:`speculative_sample`, Leviathan et al. 2023; Chen et al. 2023): accept $d_i \sim q_i$
  with probability $\min(1, p_i(d_i)/q_i(d_i))$; at the first rejection draw the token from the residual
  $r = \mathrm{norm}(\max(0, p - q))$; if all $k$ are accepted draw a bonus token from $p_k$. Every emitted
  token is then distributed exactly as the target's own sample (:func:`rejection_probs` holds the rule).
* **Acceptance** (both): per position $i$, $\alpha_i$ = accepted / tested at $i$ (a position is tested only
  if every earlier one was accepted). The pooled $\alpha = \sum_i \text{accepted}_i / \sum_i
  \text{tested}_i$ (the tested-weighted mean of the $\alpha_i$, and the maximum-likelihood $\alpha$ of the
  i.i.d. model) gives the expected tokens per verification pass $(1 - \alpha^{k+1}) / (1 - \alpha)$.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.patches import FancyBboxPatch
from scipy import stats

from llmcore.architecture.generate import _cuda_sync
from llmcore.architecture.kv_cache import DynamicKVCache, StaticKVCache
from llmcore.core.errors import LLMCoreError, check_range


def expected_tokens_per_pass(alpha: float, k: int) -> float:
    r"""$\mathbb E[\text{tokens per verification pass}] = \sum_{i=0}^{k} \alpha^i = (1-\alpha^{k+1})/(1-\alpha)$
    when each of the $k$ drafts is accepted independently with probability $\alpha$ ($k + 1$ at $\alpha = 1$)."""
    check_range("alpha", alpha, 0.0, 1.0)
    return float(k + 1) if alpha == 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)


@dataclass
class SpeculativeResult:
    tokens: torch.Tensor  # (B, T_prompt + new)
    prompt_len: int
    k: int
    rounds: int  # verification passes of the target (after the prefill), summed over rows
    drafted: int
    accepted: int
    wall_s: float
    tested_at: list[int] = field(default_factory=list)  # (k,) rounds in which draft position i was tested
    accepted_at: list[int] = field(default_factory=list)  # (k,) rounds in which it was accepted
    emitted: int = 0  # tokens the rounds emitted (before cutting to max_new_tokens)
    first_round_accepted: torch.Tensor | None = None  # (B,) drafts accepted in each row's first round

    @property
    def acceptance_rate(self) -> float:
        """Fraction of *drafted* tokens the target accepted ($\\mathbb E[n]/k$: untested drafts count as rejected)."""
        return self.accepted / max(1, self.drafted)

    @property
    def tokens_per_target_call(self) -> float:
        """New tokens per target forward pass, the prefill included (plain decoding: exactly 1)."""
        return (self.tokens.shape[1] - self.prompt_len) / (self.rounds + 1)

    @property
    def per_position_acceptance(self) -> list[float]:
        r"""$\alpha_i = P(d_i \text{ accepted} \mid d_1..d_{i-1} \text{ accepted})$, ``nan`` where never tested."""
        return [a / t if t else float("nan") for a, t in zip(self.accepted_at, self.tested_at)]

    @property
    def alpha(self) -> float:
        r"""Pooled per-position acceptance $\sum_i \text{accepted}_i / \sum_i \text{tested}_i$."""
        return sum(self.accepted_at) / max(1, sum(self.tested_at))

    @property
    def tokens_per_pass(self) -> float:
        """Tokens emitted per verification pass of the target (accepted drafts + 1)."""
        return self.emitted / max(1, self.rounds)

    @property
    def predicted_tokens_per_pass(self) -> float:
        r"""$(1-\alpha^{k+1})/(1-\alpha)$ with the pooled $\alpha$ (:func:`expected_tokens_per_pass`)."""
        return expected_tokens_per_pass(self.alpha, self.k)


def _tally(res_tested: list[int], res_acc: list[int], n: torch.Tensor, k: int) -> None:
    """Add one round's accepted counts ``n (B,)`` to the per-position tallies (position i tested iff n >= i)."""
    for i in range(k):
        res_tested[i] += int((n >= i).sum())
        res_acc[i] += int((n > i).sum())


@torch.no_grad()
def speculative_generate(target, draft, prompt: torch.Tensor, max_new_tokens: int, k: int = 4) -> SpeculativeResult:
    r"""Greedy speculative decoding (Leviathan et al. 2023; Chen et al. 2023) with batch 1.

    Each round: the draft proposes $d_1..d_k$ greedily; the target runs once on
    ``[last, d_1..d_k]`` and yields its own greedy choices $p_0..p_k$; accept the longest prefix with
    $d_{i+1} = p_i$ (say $n$ tokens), then append $p_n$ -- the target's token at the first
    disagreement (or a bonus token when all $k$ agree). Each round emits $n + 1 \ge 1$ tokens and the
    sequence is exactly the target's greedy sequence. Rejected positions are cropped from both caches
    (``crop`` of the cache protocol). Two models and a draft/verify round, so not a mode of :func:`generate`.
    """
    check_range("k", k, 1)
    if prompt.shape[0] != 1:
        raise LLMCoreError("speculative_generate takes one prompt (batch 1)")
    target.eval(), draft.eval()
    dev = prompt.device
    T0 = prompt.shape[1]
    max_len = T0 + max_new_tokens + k + 1
    tc, dc = StaticKVCache.for_model(target, 1, max_len), StaticKVCache.for_model(draft, 1, max_len)
    tested, acc_at = [0] * k, [0] * k
    _cuda_sync(dev)
    t0 = time.perf_counter()
    # prefill both on the prompt; the target's last logits give the first token
    first = target(prompt, kv_cache=tc)[:, -1].argmax(-1)
    seq = torch.cat([prompt[0], first])  # 1-D, every token emitted so far
    rounds = drafted = accepted = emitted = 0
    while seq.numel() - T0 < max_new_tokens:
        # 1) draft k tokens (feed what the draft has not seen yet, then one token at a time)
        proposal = []
        step_in = seq[dc.seq_len:][None]
        for _ in range(k):
            d = draft(step_in, kv_cache=dc)[:, -1].argmax(-1)  # (1,)
            proposal.append(d)
            step_in = d[None]
        prop = torch.cat(proposal)  # (k,)
        # 2) the target scores [unseen tokens of seq, d_1..d_k] in one pass
        t_in = torch.cat([seq[tc.seq_len:], prop])[None]
        preds = target(t_in, kv_cache=tc)[0, -(k + 1):].argmax(-1)  # p_0..p_k, (k+1,)
        # 3) accept the agreeing prefix, then the target's own token
        agree = (prop == preds[:k]).long()
        n = int(agree.cumprod(0).sum())
        seq = torch.cat([seq, prop[:n], preds[n:n + 1]])
        rounds, drafted, accepted, emitted = rounds + 1, drafted + k, accepted + n, emitted + n + 1
        _tally(tested, acc_at, torch.tensor([n]), k)
        # 4) roll back: the caches keep every token of seq except the newest one
        tc.crop(seq.numel() - 1)
        dc.crop(min(dc.seq_len, seq.numel() - 1))
    _cuda_sync(dev)
    wall = time.perf_counter() - t0
    return SpeculativeResult(seq[: T0 + max_new_tokens][None], T0, k, rounds, drafted, accepted, wall,
                             tested, acc_at, emitted)


# =================================================================================================
# Speculative sampling: the rejection rule
# =================================================================================================


def rejection_probs(p: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The rule of speculative sampling at one position.

    ``p (..., V)`` target and ``q (..., V)`` draft probabilities, ``d (...)`` the drafted token (drawn from
    ``q``, so $q(d) > 0$) -> ``accept (...)`` $= \min(1, p(d)/q(d))$ and ``residual (..., V)``
    $= \max(0, p - q) / \sum \max(0, p - q)$, the distribution to draw from after a rejection
    (``p`` itself where $p = q$: then nothing is ever rejected).

    Why it is exact: the emitted token is $x = d$ with probability $q(x)\min(1, p(x)/q(x)) = \min(p(x), q(x))$,
    and a rejection happens with probability $1 - \sum_y \min(p(y), q(y)) = \sum_y \max(0, p(y) - q(y))$,
    so $P(x) = \min(p, q)(x) + \max(0, p - q)(x) = p(x)$.
    """
    pd = p.gather(-1, d[..., None])[..., 0]
    qd = q.gather(-1, d[..., None])[..., 0]
    accept = torch.where(qd > 0, (pd / qd.clamp_min(torch.finfo(q.dtype).tiny)).clamp(max=1.0), torch.ones_like(pd))
    r = (p - q).clamp_min(0)
    z = r.sum(-1, keepdim=True)
    residual = torch.where(z > 0, r / z.clamp_min(torch.finfo(p.dtype).tiny), p)
    return accept, residual


def speculative_accept(p: torch.Tensor, q: torch.Tensor, d: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One verification of speculative sampling for ``B`` rows.

    ``p (B, k+1, V)`` target distributions $p_0..p_k$, ``q (B, k, V)`` draft distributions $q_1..q_k$, ``d (B, k)``
    the drafts -> ``n (B,)`` accepted drafts and ``next (B,)``: drawn from the residual at position $n$ if
    $n < k$, else from $p_k$ (the bonus token). Uniforms and the last draw come from ``generator``.
    """
    B, k = d.shape
    accept, residual = rejection_probs(p[:, :k], q, d)  # (B, k), (B, k, V)
    u = torch.rand(B, k, generator=generator, device=p.device)
    n = (u < accept).long().cumprod(1).sum(1)  # (B,) length of the accepted prefix
    rows = torch.arange(B, device=p.device)
    dist = torch.where((n < k)[:, None], residual[rows, n.clamp(max=k - 1)], p[:, k])  # (B, V)
    nxt = torch.multinomial(dist, 1, generator=generator)[:, 0]
    return n, nxt


@torch.no_grad()
def speculative_sample(target, draft, prompt: torch.Tensor, max_new_tokens: int, k: int = 4,
                       temperature: float = 1.0, generator: torch.Generator | None = None) -> SpeculativeResult:
    r"""Speculative *sampling* for ``B`` independent rows ``prompt (B, T)`` at temperature $\tau$.

    Each round, for the rows that share a length: the draft samples $d_i \sim q_i = \mathrm{softmax}(\ell^q_i/\tau)$
    one at a time (a :class:`DynamicKVCache` for the round), the target scores ``[prefix, d_1..d_k]`` in one
    pass, and :func:`speculative_accept` keeps $n$ drafts plus one token. Rows accept different numbers of
    tokens, so their lengths diverge: instead of the book's per-sequence caches (one per row, or the paged
    cache of the inference chapter) this loop re-runs the target on the whole prefix every round and groups
    rows by length, which keeps each batch rectangular (the toy prefixes are short; a serving engine would
    not recompute). Returns every row cut to ``T + max_new_tokens``; counts are summed over rows.
    """
    check_range("k", k, 1)
    check_range("temperature", temperature, 1e-6)
    target.eval(), draft.eval()
    B, T0 = prompt.shape
    seqs = [prompt[b] for b in range(B)]
    tested, acc_at = [0] * k, [0] * k
    rounds = drafted = accepted = emitted = 0
    first_n = torch.full((B,), -1, dtype=torch.long)
    t0 = time.perf_counter()
    while True:
        todo = [b for b in range(B) if seqs[b].numel() - T0 < max_new_tokens]
        if not todo:
            break
        for length in sorted({seqs[b].numel() for b in todo}):
            rows = [b for b in todo if seqs[b].numel() == length]
            prefix = torch.stack([seqs[b] for b in rows])  # (G, length)
            dc, x, qs, ds = DynamicKVCache(draft.config.n_layers), prefix, [], []
            for _ in range(k):
                qi = torch.softmax(draft(x, kv_cache=dc)[:, -1].float() / temperature, -1)  # (G, V)
                di = torch.multinomial(qi, 1, generator=generator)  # (G, 1)
                qs.append(qi), ds.append(di)
                x = di
            d = torch.cat(ds, 1)  # (G, k)
            logits = target(torch.cat([prefix, d], 1))[:, -(k + 1):].float()  # (G, k+1, V)
            p = torch.softmax(logits / temperature, -1)
            n, nxt = speculative_accept(p, torch.stack(qs, 1), d, generator)
            for j, b in enumerate(rows):
                m = int(n[j])
                if length == T0:
                    first_n[b] = m
                seqs[b] = torch.cat([seqs[b], d[j, :m], nxt[j:j + 1]])
            _tally(tested, acc_at, n, k)
            rounds, drafted = rounds + len(rows), drafted + k * len(rows)
            accepted, emitted = accepted + int(n.sum()), emitted + int(n.sum()) + len(rows)
    tokens = torch.stack([s[: T0 + max_new_tokens] for s in seqs])
    return SpeculativeResult(tokens, T0, k, rounds, drafted, accepted, time.perf_counter() - t0, tested, acc_at,
                             emitted, first_n)


def _chi_square(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> tuple[float, float, int]:
    """Pearson's chi-square of ``counts`` against ``probs``; cells expected < ``min_expected`` pooled into one.

    Returns ``(statistic, p-value, degrees of freedom)`` (scipy.stats.chisquare on the pooled cells).
    """
    n = counts.sum()
    exp = probs * n
    big = exp >= min_expected
    c = np.append(counts[big], counts[~big].sum())
    e = np.append(exp[big], exp[~big].sum())
    if e[-1] < min_expected:  # the pooled tail is itself too small: merge it into the smallest kept cell
        i = int(np.argmin(e[:-1]))
        c[i] += c[-1]
        e[i] += e[-1]
        c, e = c[:-1], e[:-1]
    e *= c.sum() / e.sum()  # scipy wants equal totals (float round-off)
    stat, pval = stats.chisquare(c, e)
    return float(stat), float(pval), len(c) - 1


@torch.no_grad()
def sampling_check(target, draft, prompt: torch.Tensor, n_samples: int, k: int = 2,
                   generator: torch.Generator | None = None) -> dict:
    r"""Is speculative sampling's output distributed as the target's? Draw ``n_samples`` two-token
    continuations of ``prompt (1, T)`` with :func:`speculative_sample` and compare them with the exact
    target distributions: $p(x_1)$ and the joint $p(x_1)\,p(x_2 \mid x_1)$ (one batched target pass over
    all $V$ values of $x_1$). Returns chi-square p-values and total-variation distances, the measured
    first-position acceptance against its closed form $\beta = \sum_x \min(p(x), q(x))$, and the same
    chi-square test applied to plain draft samples (which must fail it: the test has power). The closed
    form holds for the first round only (later rounds start from other prefixes), so ``acceptance_1`` is
    measured on the rows' first rounds; ``per_position_acceptance`` pools every round.
    """
    if prompt.shape[0] != 1:
        raise LLMCoreError("sampling_check takes one prompt (batch 1)")
    V = target.config.vocab_size
    res = speculative_sample(target, draft, prompt.expand(n_samples, -1), 2, k, generator=generator)
    x1, x2 = res.tokens[:, -2], res.tokens[:, -1]
    p1 = torch.softmax(target(prompt)[0, -1].float(), -1)  # (V,)
    q1 = torch.softmax(draft(prompt)[0, -1].float(), -1)
    both = torch.cat([prompt.expand(V, -1), torch.arange(V, device=prompt.device)[:, None]], 1)  # (V, T+1)
    p2 = torch.softmax(target(both)[:, -1].float(), -1)  # (V, V): p(x2 | x1)
    joint = (p1[:, None] * p2).flatten()  # (V*V,)
    c1 = np.bincount(x1.cpu().numpy(), minlength=V)
    c12 = np.bincount((x1 * V + x2).cpu().numpy(), minlength=V * V)
    q_samples = torch.multinomial(q1, n_samples, replacement=True, generator=generator)
    cq = np.bincount(q_samples.cpu().numpy(), minlength=V)
    p1n, jn, q1n = p1.double().cpu().numpy(), joint.double().cpu().numpy(), q1.double().cpu().numpy()
    beta = float(torch.minimum(p1, q1).sum())
    acc1 = float((res.first_round_accepted >= 1).double().mean())  # d_1 accepted in the round after the prompt
    return {
        "n": n_samples, "k": k,
        "chi2_p_x1": _chi_square(c1, p1n)[1], "chi2_p_joint": _chi_square(c12, jn)[1],
        "tv_x1": 0.5 * float(np.abs(c1 / n_samples - p1n).sum()),
        "tv_joint": 0.5 * float(np.abs(c12 / n_samples - jn).sum()),
        "tv_draft_vs_target": 0.5 * float(np.abs(q1n - p1n).sum()),
        "chi2_p_draft_samples": _chi_square(cq, p1n)[1],
        "acceptance_1": acc1, "acceptance_1_closed_form": beta,  # first round only: p_0, q_1 at the prompt
        "acceptance_1_se": math.sqrt(beta * (1 - beta) / n_samples),
        "per_position_acceptance": res.per_position_acceptance, "alpha": res.alpha,
        "tokens_per_pass": res.tokens_per_pass, "predicted_tokens_per_pass": res.predicted_tokens_per_pass,
        "p1": p1n, "counts_x1": c1,
    }


# =================================================================================================
# Diagram
# =================================================================================================


def plot_speculative_round(ax, k: int = 4, accepted: int = 2, context: int = 3):
    r"""One draft-verify round: the draft proposes $d_1..d_k$ one pass each; the target scores
    ``[last, d_1..d_k]`` in one pass; drafts $1..n$ are accepted (green), $d_{n+1}$ is rejected (red) and
    replaced by the target's token (greedy: $\arg\max p_n$; sampling: a draw from $\max(0, p_n - q_{n+1})$),
    later drafts are discarded (grey) and cropped from both caches. Returns ``ax``; one box per token
    (``context + k`` in the draft row, ``k + 1`` in the target row, ``context + accepted + 1`` in the output row).
    """
    check_range("k", k, 1)
    check_range("accepted", accepted, 0, k)
    ax.set_xlim(-0.5, context + k + 3.2)
    ax.set_ylim(-0.4, 3.6)
    ax.axis("off")

    def box(x, y, text, color):
        ax.add_patch(FancyBboxPatch((x - 0.4, y - 0.3), 0.8, 0.6, boxstyle="round,pad=0.02", fc=color, ec="k",
                                    lw=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    y_draft, y_target, y_out = 3.0, 1.7, 0.3
    for i in range(context):
        box(i, y_draft, f"$x_{{{i + 1}}}$", "white")
    for i in range(1, k + 1):
        box(context - 1 + i, y_draft, f"$d_{{{i}}}$", "#fde2b3")
    ax.text(context + k + 0.1, y_draft, "draft: k passes,\none token each", va="center", fontsize=8)
    for i in range(k + 1):
        x = context - 1 + i
        color = ("#b7e4b0" if i < accepted else "#e0e0e0" if i > accepted  # accepted / discarded
                 else "#f4b6b6" if accepted < k else "#9ecae1")  # p_n: after a rejection, or the bonus
        box(x, y_target, f"$p_{{{i}}}$", color)
        ax.annotate("", xy=(x, y_target + 0.32), xytext=(x, y_draft - 0.32),
                    arrowprops=dict(arrowstyle="->", lw=0.7, color="0.4"))
    ax.text(context + k + 0.1, y_target, "target: ONE pass\nover [last, d_1..d_k]", va="center", fontsize=8)
    for i in range(context + accepted + 1):
        if i < context:
            box(i, y_out, f"$x_{{{i + 1}}}$", "white")
        elif i < context + accepted:
            box(i, y_out, f"$d_{{{i - context + 1}}}$", "#b7e4b0")
        else:
            box(i, y_out, "new", "#9ecae1")
    ax.text(context + k + 0.1, y_out, f"emitted: {accepted} accepted\n+ 1 from the target", va="center", fontsize=8)
    ax.set_title(f"Speculative decoding, one round (k = {k}): accept {accepted}, reject $d_{{{accepted + 1}}}$"
                 if accepted < k else f"Speculative decoding, one round (k = {k}): all accepted, bonus token",
                 fontsize=9)
    return ax
