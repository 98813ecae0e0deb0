"""The Part 4 checkers accept the book's reference implementations and reject plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from llmcore.engineering.dist_utils import ring_all_reduce_bytes
from llmcore.engineering.distributed import LINKS, collective_time
from llmcore.engineering.pipeline import bubble_formula
from llmcore.engineering.zero import zero_formula
from llmcore.exercises import (
    check_allreduce_time,
    check_column_parallel_split,
    check_pipeline_bubble,
    check_ring_allreduce_bytes,
    check_zero_memory,
)

# -- ring all-reduce bytes ----------------------------------------------------------------------------


def test_ring_allreduce_bytes_accepts_reference_and_hand_case(capsys):
    assert check_ring_allreduce_bytes(ring_all_reduce_bytes) == 6
    assert capsys.readouterr().out.startswith("PASS check_ring_allreduce_bytes")
    assert check_ring_allreduce_bytes(lambda size_bytes, n: 2 * (n - 1) * (size_bytes / n)) == 6
    # 4 ranks, 4096 B: 3 reduce-scatter steps + 3 all-gather steps of 1024 B each
    assert ring_all_reduce_bytes(4096, 4) == 6 * 1024


@pytest.mark.parametrize("wrong", [
    lambda size_bytes, n: 2 * size_bytes,  # the n -> infinity limit
    lambda size_bytes, n: (n - 1) / n * size_bytes,  # reduce-scatter only
    lambda size_bytes, n: 2 * (n - 1) * size_bytes,  # whole tensor every step
])
def test_ring_allreduce_bytes_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_ring_allreduce_bytes: case .* expected"):
        check_ring_allreduce_bytes(wrong)


# -- alpha-beta all-reduce time --------------------------------------------------------------------------


def good_time(size_bytes, n, bandwidth, latency):
    return 2 * (n - 1) * latency + 2 * (n - 1) / n * size_bytes / bandwidth


def test_allreduce_time_accepts_a_correct_answer_and_hand_case():
    assert check_allreduce_time(good_time) == 6
    # 2 ranks, 1 GB/s, 1 µs: 2 steps of 1 µs + 4096 B / 1e9 B/s = 2 µs + 4.096 µs
    assert collective_time("all_reduce", 4096, 2, LINKS["nvlink4"].__class__("t", 1e9, 1e-6, "")) == \
        pytest.approx(6.096e-6)


@pytest.mark.parametrize("wrong", [
    lambda size_bytes, n, bandwidth, latency: 2 * (n - 1) / n * size_bytes / bandwidth,  # no latency term
    lambda size_bytes, n, bandwidth, latency: latency + 2 * (n - 1) / n * size_bytes / bandwidth,  # one α only
    lambda size_bytes, n, bandwidth, latency: 2 * (n - 1) * latency + size_bytes / bandwidth,  # bytes not ring
])
def test_allreduce_time_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_allreduce_time"):
        check_allreduce_time(wrong)


# -- pipeline bubble --------------------------------------------------------------------------------------


def test_pipeline_bubble_accepts_reference_and_hand_case():
    assert check_pipeline_bubble(bubble_formula) == 6
    assert bubble_formula(4, 8) == pytest.approx(3 / 11)  # 3 idle slots of 11 per stage


@pytest.mark.parametrize("wrong", [
    lambda p, m: (p - 1) / m,  # idle over busy, not over total
    lambda p, m: (p - 1) / (m + p),  # off by one
    lambda p, m: 1 / m,  # forgot the depth
])
def test_pipeline_bubble_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_pipeline_bubble"):
        check_pipeline_bubble(wrong)


# -- column / row split -----------------------------------------------------------------------------------


def good_split(weight, rank, world, kind):
    return weight.chunk(world, dim=0 if kind == "column" else 1)[rank]


def test_column_parallel_split_accepts_a_correct_answer_and_hand_case():
    assert check_column_parallel_split(good_split) == 13
    w = torch.arange(8.0).reshape(2, 4)  # nn.Linear(4, 2): out=2, in=4
    assert good_split(w, 1, 2, "row").tolist() == [[2.0, 3.0], [6.0, 7.0]]  # rank 1 holds input features 2..3
    assert good_split(w, 1, 2, "column").tolist() == [[4.0, 5.0, 6.0, 7.0]]  # rank 1 holds output feature 1


@pytest.mark.parametrize("wrong", [
    lambda weight, rank, world, kind: weight.chunk(world, dim=1 if kind == "column" else 0)[rank],  # axes swapped
    lambda weight, rank, world, kind: weight.chunk(world, dim=0)[rank],  # always split the output
    lambda weight, rank, world, kind: weight[..., rank::world] if kind == "row" else weight[rank::world],  # strided
])
def test_column_parallel_split_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_column_parallel_split"):
        check_column_parallel_split(wrong)


# -- ZeRO memory --------------------------------------------------------------------------------------------


def good_zero(psi, n, stage, P, G, K):
    return psi * (P / (n if stage >= 3 else 1) + G / (n if stage >= 2 else 1) + K / (n if stage >= 1 else 1))


def test_zero_memory_accepts_reference_and_hand_case():
    assert check_zero_memory(lambda psi, n, stage, P, G, K: zero_formula(psi, n, stage, (P, G, K))["total"]) == 24
    assert check_zero_memory(good_zero) == 24
    # the paper's Figure 1: 7.5B parameters on 64 GPUs, ZeRO-1 = 4Ψ + 12Ψ/64 bytes = 31.4 GB
    assert good_zero(7.5e9, 64, 1, 2, 2, 12) / 1e9 == pytest.approx(31.40625)


@pytest.mark.parametrize("wrong", [
    lambda psi, n, stage, P, G, K: (P + G + K) * psi / (n if stage else 1),  # every stage shards everything
    lambda psi, n, stage, P, G, K: psi * (P / (n if stage >= 2 else 1) + G / (n if stage >= 3 else 1)
                                          + K / (n if stage >= 1 else 1)),  # params and grads swapped
    lambda psi, n, stage, P, G, K: psi * (P + G + K / (n if stage >= 1 else 1)),  # only optimizer states sharded
])
def test_zero_memory_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_zero_memory"):
        check_zero_memory(wrong)
