r"""PagedAttention's memory manager: fixed-size KV blocks, block tables, reference counts, copy-on-write.

A contiguous cache reserves ``max_len`` positions per sequence up front; most of it stays empty
(the output length is unknown), so few sequences fit. vLLM (Kwon et al., 2023) stores keys/values in
*blocks* of ``b`` positions taken from one pool, on demand, and gives each sequence a **block table**
(logical block ``j`` -> physical block ``table[j]``). Position ``p`` of a sequence lives at the flat
*slot*

$$ \text{slot}(p) = \text{table}[\lfloor p / b \rfloor] \cdot b + (p \bmod b), $$

so the only waste is the unfilled tail of each sequence's last block ($< b$ positions). Blocks carry
**reference counts**: a forked sequence (parallel sampling, beam search) or a cached prefix shares
blocks; a shared block that is about to be written is first copied (**copy-on-write**).

A second, smaller pool stands for **host memory** (``swap_blocks`` blocks; pinned CPU memory when the device
pool is on a GPU, a separate preallocated tensor on CPU): :meth:`BlockManager.swap_out` copies a preempted
sequence's blocks there and frees them on the device, :meth:`BlockManager.swap_in` brings them back into
fresh device blocks (vLLM's swap preemption). A shared block is copied out like any other and keeps its
other owners on the device, so a swapped-in sequence owns all its blocks.

:class:`PagedKVCache` implements the model kit's cache protocol
(:class:`~llmcore.architecture.kv_cache.KVCacheProtocol`) over such a pool, so the kit's ``Llama`` and
its :func:`~llmcore.architecture.generate.generate` run on it unchanged. For a batch of rows with
different cached lengths it *right-aligns* every row: row ``i`` with ``c_i`` cached and ``n_i`` new
tokens reads its ``c_i + n_i`` keys into the last columns of an ``(B, K, S, D)`` tensor
(``S = max_i(c_i + n_i)``), its new queries are the last ``n_i`` of ``T = max_i n_i``; a key mask hides the
left padding. The model then sees an ordinary causal attention with ``past = S - T`` cached positions.
Shapes: ``L`` layers, ``N`` blocks, ``b`` block size, ``K`` KV heads, ``D`` head size.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmcore.core.errors import LLMCoreError


class OutOfBlocks(LLMCoreError):
    """No free KV block is left (the scheduler preempts a sequence and retries)."""


@dataclass
class BlockTable:
    """One sequence's logical -> physical block map and how many positions are stored."""

    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0
    swapped: bool = False  # True: ``blocks`` are host (swap pool) blocks


class BlockManager:
    """A pool of ``N`` KV blocks of ``b`` positions for all layers, with reference counts.

    ``k``/``v`` are ``(L, N * b, K, D)`` tensors (a block is ``b`` consecutive slots). ``evictor``
    (optional) is called as ``evictor(n)`` when fewer than ``n`` blocks are free; it may release blocks
    held only by a prefix cache and returns how many it freed.
    """

    def __init__(self, num_blocks: int, block_size: int, n_layers: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", swap_blocks: int = 0) -> None:
        if num_blocks < 1 or block_size < 1 or swap_blocks < 0:
            raise LLMCoreError(f"need num_blocks >= 1, block_size >= 1 and swap_blocks >= 0, got {num_blocks}, "
                               f"{block_size}, {swap_blocks}")
        self.num_blocks, self.block_size = num_blocks, block_size
        shape = (n_layers, num_blocks * block_size, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.ref = [0] * num_blocks
        self.free: deque[int] = deque(range(num_blocks))
        self.evictor: Callable[[int], int] | None = None
        self.copies = 0  # copy-on-write block copies made
        # the host-side swap pool (L, Ns * b, K, D): pinned CPU memory under a GPU pool, plain CPU memory here
        pin = torch.device(device).type == "cuda"
        host = (n_layers, swap_blocks * block_size, n_kv_heads, head_dim)
        self.host_k = torch.zeros(host, dtype=dtype, pin_memory=pin)
        self.host_v = torch.zeros(host, dtype=dtype, pin_memory=pin)
        self.swap_blocks = swap_blocks
        self.host_free: deque[int] = deque(range(swap_blocks))
        self.swapped_out = self.swapped_in = 0  # blocks moved device -> host, host -> device
        self.swap_bytes = 0  # bytes moved by swapping, both directions

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int, swap_blocks: int = 0) -> BlockManager:
        """A pool sized for ``model`` (the kit's ``Llama``): its layers, KV heads, head size, dtype, device."""
        c, p = model.config, next(model.parameters())
        return cls(num_blocks, block_size, c.n_layers, c.n_kv_heads, c.head_dim, p.dtype, p.device, swap_blocks)

    # ---- accounting ------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def bytes_per_block(self) -> int:
        return 2 * self.block_size * self.k[0, 0].numel() * self.k.shape[0] * self.k.element_size()

    def blocks_needed(self, table: BlockTable, n: int) -> int:
        """New blocks that appending ``n`` positions to ``table`` takes (a copy-on-write counts as one)."""
        b = self.block_size
        need = max(0, math.ceil((table.num_tokens + n) / b) - len(table.blocks))
        if n > 0 and table.num_tokens % b and self.ref[table.blocks[-1]] > 1:
            need += 1  # the shared, partly filled last block must be copied before it is written
        return need

    def can_allocate(self, n: int) -> bool:
        """True if ``n`` blocks can be had (evicting unreferenced cached prefixes if needed)."""
        if self.num_free < n and self.evictor is not None:
            self.evictor(n - self.num_free)
        return self.num_free >= n

    def allocate(self) -> int:
        if not self.can_allocate(1):
            raise OutOfBlocks(f"all {self.num_blocks} KV blocks are in use")
        blk = self.free.popleft()
        self.ref[blk] = 1
        return blk

    def incref(self, blk: int) -> None:
        if self.ref[blk] < 1:
            raise LLMCoreError(f"block {blk} is free; cannot share it")
        self.ref[blk] += 1

    def decref(self, blk: int) -> None:
        if self.ref[blk] < 1:
            raise LLMCoreError(f"block {blk} freed twice")
        self.ref[blk] -= 1
        if self.ref[blk] == 0:
            self.free.append(blk)

    # ---- sequences -------------------------------------------------------------------------------
    def append_slots(self, table: BlockTable, n: int) -> torch.Tensor:
        """Make room for ``n`` more positions of ``table`` and return their flat slots ``(n,)``.

        Copy-on-write: if the last block is shared (``ref > 1``) and partly filled, it is copied to a fresh
        block first, so the other owners keep their positions unchanged. Raises :class:`OutOfBlocks`
        (leaving ``table`` unchanged) when the pool cannot supply the blocks."""
        if not self.can_allocate(self.blocks_needed(table, n)):
            raise OutOfBlocks(f"need {self.blocks_needed(table, n)} blocks, {self.num_free} free")
        b = self.block_size
        if n > 0 and table.num_tokens % b and self.ref[table.blocks[-1]] > 1:
            old, new = table.blocks[-1], self.allocate()
            self.copy_block(old, new)
            self.decref(old)
            table.blocks[-1] = new
        start = table.num_tokens
        while len(table.blocks) * b < start + n:
            table.blocks.append(self.allocate())
        table.num_tokens = start + n
        return self.slots(table, torch.arange(start, start + n))

    def slots(self, table: BlockTable, positions: torch.Tensor) -> torch.Tensor:
        r"""Flat slots of ``positions`` (any shape): $\text{table}[p // b] \cdot b + p \bmod b$."""
        blocks = torch.tensor(table.blocks, dtype=torch.long)
        return blocks[positions // self.block_size] * self.block_size + positions % self.block_size

    def copy_block(self, src: int, dst: int) -> None:
        b = self.block_size
        self.k[:, dst * b:(dst + 1) * b] = self.k[:, src * b:(src + 1) * b]
        self.v[:, dst * b:(dst + 1) * b] = self.v[:, src * b:(src + 1) * b]
        self.copies += 1

    def _block_slots(self, blocks: list[int]) -> torch.Tensor:
        """Flat slots of whole blocks ``(len(blocks) * b,)``."""
        b = self.block_size
        return (torch.tensor(blocks, dtype=torch.long)[:, None] * b + torch.arange(b)).reshape(-1)

    def can_swap_out(self, table: BlockTable) -> bool:
        return not table.swapped and len(table.blocks) <= len(self.host_free)

    def swap_out(self, table: BlockTable) -> None:
        """Copy ``table``'s blocks to the host pool and drop their device references; ``table.blocks`` then names
        host blocks. Raises :class:`OutOfBlocks` (table unchanged) when the host pool is too small."""
        if not self.can_swap_out(table):
            raise OutOfBlocks(f"swap pool: need {len(table.blocks)} host blocks, {len(self.host_free)} free")
        host = [self.host_free.popleft() for _ in table.blocks]
        src, dst = self._block_slots(table.blocks).to(self.k.device), self._block_slots(host)
        self.host_k[:, dst] = self.k[:, src].cpu()
        self.host_v[:, dst] = self.v[:, src].cpu()
        for blk in table.blocks:
            self.decref(blk)
        self.swapped_out += len(host)
        self.swap_bytes += len(host) * self.bytes_per_block
        table.blocks, table.swapped = host, True

    def swap_in(self, table: BlockTable) -> None:
        """Copy a swapped-out ``table``'s blocks back into fresh device blocks and free its host blocks. Raises
        :class:`OutOfBlocks` (table unchanged) when the device pool cannot supply them."""
        if not table.swapped:
            raise LLMCoreError("swap_in: the sequence is not swapped out")
        if not self.can_allocate(len(table.blocks)):
            raise OutOfBlocks(f"swap in: need {len(table.blocks)} blocks, {self.num_free} free")
        dev = [self.allocate() for _ in table.blocks]
        src, dst = self._block_slots(table.blocks), self._block_slots(dev).to(self.k.device)
        self.k[:, dst] = self.host_k[:, src].to(self.k.device, non_blocking=True)
        self.v[:, dst] = self.host_v[:, src].to(self.k.device, non_blocking=True)
        self.host_free.extend(table.blocks)
        self.swapped_in += len(dev)
        self.swap_bytes += len(dev) * self.bytes_per_block
        table.blocks, table.swapped = dev, False

    def fork(self, table: BlockTable) -> BlockTable:
        """A child sequence sharing every block of ``table`` (reference counts + 1; copied on write)."""
        if table.swapped:
            raise LLMCoreError("cannot fork a swapped-out sequence")
        for blk in table.blocks:
            self.incref(blk)
        return BlockTable(list(table.blocks), table.num_tokens)

    def duplicate(self, table: BlockTable) -> BlockTable:
        """A child with its own copy of every block: what forking costs without reference counts (the baseline
        that :meth:`fork` is measured against). Raises :class:`OutOfBlocks` when the pool is too small."""
        if not self.can_allocate(len(table.blocks)):
            raise OutOfBlocks(f"need {len(table.blocks)} blocks, {self.num_free} free")
        child = BlockTable([self.allocate() for _ in table.blocks], table.num_tokens)
        for src, dst in zip(table.blocks, child.blocks):
            self.copy_block(src, dst)
        return child

    def release(self, table: BlockTable) -> None:
        """Drop ``table``'s references; blocks nobody else holds return to the free list (a swapped-out
        table's host blocks return to the swap pool)."""
        if table.swapped:
            self.host_free.extend(table.blocks)
        else:
            for blk in table.blocks:
                self.decref(blk)
        table.blocks, table.num_tokens, table.swapped = [], 0, False

    def truncate(self, table: BlockTable, n: int) -> None:
        """Keep the first ``n`` positions of ``table``; whole blocks past them are released."""
        if n > table.num_tokens:
            raise LLMCoreError(f"cannot crop to {n} > {table.num_tokens} stored positions")
        keep = math.ceil(n / self.block_size)
        for blk in table.blocks[keep:]:
            self.decref(blk)
        table.blocks, table.num_tokens = table.blocks[:keep], n


class PagedKVCache:
    """The kit's KV-cache protocol over a :class:`BlockManager`: one row per :class:`BlockTable`.

    Why a new cache: the kit's dynamic/static caches give every row its own contiguous buffer of one common
    length; here rows of *different* lengths share one pool of blocks, and memory is claimed block by block.

    Before a forward, :meth:`plan` sets how many new tokens each row feeds (default: every row feeds the
    ``T`` tokens of the input, as in the kit's ``generate``). At layer 0 the new positions get slots
    (:meth:`BlockManager.append_slots`); every layer writes its ``k, v (B, K, T, D)`` there and reads the
    rows back right-aligned as ``(B, K, S, D)``; :attr:`key_mask` ``(B, S)`` marks real keys.
    """

    def __init__(self, manager: BlockManager, tables: list[BlockTable]) -> None:
        self.m, self.tables = manager, tables
        self.new: list[int] | None = None
        self._prepared = False

    # ---- planning a forward ----------------------------------------------------------------------
    def plan(self, new_lens: list[int]) -> torch.Tensor | None:
        """Fix the new-token counts of the next forward; returns the key mask ``(B, S)`` (None if unpadded)."""
        if len(new_lens) != len(self.tables) or min(new_lens) < 1:
            raise LLMCoreError(f"need one positive new-token count per row, got {new_lens}")
        self.new, self._prepared = list(new_lens), False
        total = [t.num_tokens + n for t, n in zip(self.tables, new_lens)]
        self._S, self._T = max(total), max(new_lens)
        self._past = self._S - self._T
        pad = torch.tensor([self._S - s for s in total])
        self.key_mask = torch.arange(self._S)[None, :] >= pad[:, None]  # (B, S) True = real key
        return None if bool(self.key_mask.all()) else self.key_mask.to(self.m.k.device)

    def _prepare(self, T: int) -> None:
        if self.new is None:  # lockstep use (the kit's generate): every row feeds T tokens
            lens = {t.num_tokens for t in self.tables}
            if len(lens) != 1:
                raise LLMCoreError("rows of different lengths need plan(new_lens) before the forward")
            self.plan([T] * len(self.tables))
        if self._T != T:
            raise LLMCoreError(f"planned {self._T} new tokens per row, the model fed {T}")
        dev, b, S = self.m.k.device, self.m.block_size, self._S
        for tab, n in zip(self.tables, self.new):
            self.m.append_slots(tab, n)  # claims blocks (copy-on-write; OutOfBlocks leaves the table as it was)
        nb = max(len(t.blocks) for t in self.tables)
        table = torch.tensor([t.blocks + [0] * (nb - len(t.blocks)) for t in self.tables])  # (B, nb)
        lens = torch.tensor([t.num_tokens for t in self.tables])  # cached + new, per row
        pos = (torch.arange(S)[None, :] - (S - lens)[:, None]).clamp(min=0)  # (B, S) position of each key column
        read = table.gather(1, pos // b) * b + pos % b  # slot(p) = table[p // b] * b + p % b  (padding -> any slot)
        new_cols = torch.arange(T)[None, :] >= T - torch.tensor(self.new)[:, None]  # (B, T) real new tokens
        self._write = read[:, S - T:][new_cols].to(dev)
        self._src = new_cols.reshape(-1).nonzero()[:, 0].to(dev)  # rows of the flattened (B*T) input
        self._read = read.to(dev)  # (B, S) flat slot of every key column
        self._prepared = True

    # ---- the protocol ----------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Positions before the new queries in the right-aligned layout (``S - T``)."""
        if self.new is not None:
            return self._past
        lens = {t.num_tokens for t in self.tables}
        return lens.pop() if len(lens) == 1 else max(lens)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the real new positions of ``k, v (B, K, T, D)``; return every row's keys ``(B, K, S, D)``."""
        B, K, T, D = k.shape
        if layer == 0 and not self._prepared:
            self._prepare(T)
        self.m.k[layer, self._write] = k.transpose(1, 2).reshape(B * T, K, D)[self._src]
        self.m.v[layer, self._write] = v.transpose(1, 2).reshape(B * T, K, D)[self._src]
        if layer == self.m.k.shape[0] - 1:
            self.new, self._prepared = None, False  # the next forward plans again
        return self._gather(layer, self._read)

    def _gather(self, layer: int, read: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.m.k[layer, read].transpose(1, 2), self.m.v[layer, read].transpose(1, 2)

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored keys/values of every row, right-aligned ``(B, K, S, D)`` (rows must be equally long)."""
        lens = {t.num_tokens for t in self.tables}
        if len(lens) != 1:
            raise LLMCoreError("get() needs rows of one length; read rows one by one")
        n = lens.pop()
        read = torch.stack([self.m.slots(t, torch.arange(n)) for t in self.tables]).to(self.m.k.device)
        return self._gather(layer, read)

    def crop(self, n: int) -> None:
        for t in self.tables:
            self.m.truncate(t, min(n, t.num_tokens))

    def reset(self) -> None:
        for t in self.tables:
            self.m.release(t)

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks these rows hold (shared blocks counted once)."""
        return len({b for t in self.tables for b in t.blocks}) * self.m.bytes_per_block


@torch.no_grad()
def forward_paged(model, manager: BlockManager, tables: list[BlockTable], new_tokens: list[list[int]],
                  positions_only_last: bool = True) -> torch.Tensor:
    """One forward of the kit's ``Llama`` for rows at different points: row ``i`` feeds ``new_tokens[i]``
    after its ``tables[i].num_tokens`` cached positions. Returns the logits of each row's last new token
    ``(B, V)``. Rows are right-aligned (the left padding is masked and never written to the cache)."""
    cache = PagedKVCache(manager, tables)
    lens = [len(t) for t in new_tokens]
    key_mask = cache.plan(lens)
    B, T = len(tables), max(lens)
    dev = manager.k.device
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    for i, (tab, toks) in enumerate(zip(tables, new_tokens)):
        ids[i, T - len(toks):] = torch.tensor(toks)
        pos[i, T - len(toks):] = torch.arange(tab.num_tokens, tab.num_tokens + len(toks))
    h = model.hidden_states(ids.to(dev), position_ids=pos.to(dev), attention_mask=key_mask, kv_cache=cache)
    return model.lm_head(h[:, -1])
