"""The inference checkers accept correct answers (hand-written, not the book's) and reject plausible wrong ones."""

from __future__ import annotations

import math

import pytest

from llmcore.exercises import check_block_slots, check_blocks_needed


def slots(table, positions, block_size):
    return [table[p // block_size] * block_size + p % block_size for p in positions]


def needed(num_tokens, n_blocks, last_block_shared, n, block_size):
    grow = max(0, math.ceil((num_tokens + n) / block_size) - n_blocks)
    return grow + int(n > 0 and num_tokens % block_size != 0 and last_block_shared)


def test_accept(capsys):
    assert check_block_slots(slots) == 6 and check_blocks_needed(needed) == 9
    assert slots([5, 2], [0, 3, 4, 7], 4) == [20, 23, 8, 11]  # by hand: block 5 holds slots 20-23, block 2 8-11
    assert capsys.readouterr().out.count("PASS") == 2


@pytest.mark.parametrize("wrong", [
    lambda table, positions, block_size: list(positions),  # contiguous: ignores the table
    lambda table, positions, block_size: [table[p // block_size] + p % block_size for p in positions],  # no * b
    lambda table, positions, block_size: [table[p % len(table)] * block_size + p // block_size for p in positions],
])
def test_reject_slots(wrong):
    with pytest.raises(AssertionError, match="check_block_slots: case"):
        check_block_slots(wrong)


@pytest.mark.parametrize("wrong", [
    lambda num_tokens, n_blocks, last_block_shared, n, block_size: math.ceil(n / block_size),  # ignores the tail
    lambda num_tokens, n_blocks, last_block_shared, n, block_size:
        max(0, math.ceil((num_tokens + n) / block_size) - n_blocks),  # forgets copy-on-write
    lambda num_tokens, n_blocks, last_block_shared, n, block_size:
        max(0, math.ceil((num_tokens + n) / block_size) - n_blocks) + int(last_block_shared),  # copies full blocks
])
def test_reject_needed(wrong):
    with pytest.raises(AssertionError, match="check_blocks_needed: case"):
        check_blocks_needed(wrong)
