r"""Self-checking exercises of the inference-engine chapter (paged KV cache).

* :func:`check_block_slots` -- the flat KV slot of each position through a block table,
  :math:`\text{table}[p // b] \cdot b + p \bmod b` (compared with :meth:`BlockManager.slots`);
* :func:`check_blocks_needed` -- how many new blocks appending ``n`` tokens takes, copy-on-write included
  (compared with :meth:`BlockManager.blocks_needed`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmcore.engineering.inference.paged import BlockManager, BlockTable
from llmcore.exercises.checking import run_cases

_CASES = (([3], [0, 1, 2], 4), ([5, 2], [0, 3, 4, 7], 4), ([7, 0, 9], [0, 8, 9, 17, 23], 8),
          ([1, 4, 6, 2], [15, 0, 31, 16], 16), ([0], [0], 1), ([11, 3, 5], [2, 5, 3, 0], 2))


def check_block_slots(fn: Callable) -> int:
    """``fn(table, positions, block_size) -> list[int]``: flat slots of ``positions`` of a sequence whose logical
    block ``j`` is physical block ``table[j]`` (each block holds ``block_size`` consecutive slots)."""
    cases = []
    for table, positions, b in _CASES:
        mgr = BlockManager(num_blocks=max(table) + 1, block_size=b, n_layers=1, n_kv_heads=1, head_dim=1)
        want = mgr.slots(BlockTable(list(table), len(table) * b), torch.tensor(positions)).tolist()
        cases.append(({"table": list(table), "positions": list(positions), "block_size": b}, want))
    return run_cases("check_block_slots", fn, cases, atol=0)


def check_blocks_needed(fn: Callable) -> int:
    """``fn(num_tokens, n_blocks, last_block_shared, n, block_size) -> int``: new blocks that appending ``n``
    tokens to a sequence of ``num_tokens`` stored positions in ``n_blocks`` blocks takes, where
    ``last_block_shared`` says whether its last block has another owner (then a partly filled last block
    must be copied before it is written)."""
    cases = []
    for num_tokens, n_blocks, shared, n, b in ((0, 0, False, 5, 4), (4, 1, False, 1, 4), (3, 1, False, 1, 4),
                                               (3, 1, True, 1, 4), (8, 2, True, 1, 4), (6, 2, True, 0, 4),
                                               (6, 2, True, 9, 4), (17, 3, False, 40, 8), (1, 1, True, 1, 16)):
        mgr = BlockManager(num_blocks=n_blocks + 1, block_size=b, n_layers=1, n_kv_heads=1, head_dim=1)
        table = BlockTable(list(range(n_blocks)), num_tokens)
        for blk in table.blocks:
            mgr.ref[blk] = 2 if shared and blk == table.blocks[-1] else 1
        cases.append(({"num_tokens": num_tokens, "n_blocks": n_blocks, "last_block_shared": shared, "n": n,
                       "block_size": b}, mgr.blocks_needed(table, n)))
    return run_cases("check_blocks_needed", fn, cases, atol=0)
