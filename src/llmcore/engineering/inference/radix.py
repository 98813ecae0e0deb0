r"""RadixAttention's prefix cache (SGLang, Zheng et al., 2024): a radix tree over token prefixes whose
nodes own KV blocks, with LRU eviction of nodes no running request uses.

Requests that share a prefix (a system prompt, few-shot examples, an earlier chat turn) need the same
keys/values for it. The tree stores every finished request's tokens; a new request walks it from the
root, takes the longest cached prefix's blocks (reference count + 1, no compute) and prefills only the
rest. Edges are labelled with token runs and split where two requests diverge (a *compressed* trie);
as in SGLang with ``page_size > 1`` and vLLM's prefix caching, the unit is a whole KV block of ``b``
tokens, so every edge label has a multiple of ``b`` tokens and a match is rounded down to full blocks.

When the pool runs dry, :meth:`RadixCache.evict` removes least-recently-used *leaves* whose blocks only
the tree holds (``ref == 1``), so a prefix in use is never evicted and a parent goes only after its
children. Counters: ``queried`` prompt tokens, ``hit`` tokens served from the tree (prefill saved).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from llmcore.engineering.inference.paged import BlockManager


@dataclass(eq=False)
class RadixNode:
    """An edge label ``key`` (``len(blocks) * b`` tokens), the blocks holding its KV, children by first block."""

    key: tuple[int, ...] = ()
    blocks: list[int] = field(default_factory=list)
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    parent: RadixNode | None = None
    last_access: int = 0


class RadixCache:
    """A radix tree of cached prefixes over a :class:`~.paged.BlockManager` (it becomes the pool's evictor)."""

    def __init__(self, manager: BlockManager) -> None:
        self.m, self.b = manager, manager.block_size
        self.root = RadixNode()
        self.clock = itertools.count(1)
        self.queried = self.hit = self.evicted = 0
        manager.evictor = self.evict

    def _block_key(self, tokens, j: int) -> tuple[int, ...]:
        return tuple(tokens[j * self.b:(j + 1) * self.b])

    def match(self, tokens: list[int]) -> list[int]:
        """Blocks of the longest cached prefix of ``tokens`` (full blocks only; the caller takes references)."""
        n_full, out, node, j = len(tokens) // self.b, [], self.root, 0
        now = next(self.clock)
        while j < n_full:
            child = node.children.get(self._block_key(tokens, j))
            if child is None:
                break
            child.last_access = now
            k = 0
            while k < len(child.blocks) and j < n_full and child.key[k * self.b:(k + 1) * self.b] == self._block_key(tokens, j):
                out.append(child.blocks[k])
                k, j = k + 1, j + 1
            if k < len(child.blocks):
                break
            node = child
        return out

    def lookup(self, tokens: list[int]) -> list[int]:
        """:meth:`match` for a prompt about to be prefilled: keeps >= 1 token to compute."""
        return self.match(tokens[:len(tokens) - 1])

    def record(self, queried: int, hit: int) -> None:
        """Count an admitted request: ``queried`` prompt tokens, ``hit`` of them served from the tree."""
        self.queried += queried
        self.hit += hit

    def _split(self, node: RadixNode, k: int) -> RadixNode:
        """Cut ``node``'s edge after ``k`` blocks; returns the new upper node."""
        upper = RadixNode(node.key[:k * self.b], node.blocks[:k], {}, node.parent, node.last_access)
        node.parent.children[self._block_key(upper.key, 0)] = upper
        node.key, node.blocks, node.parent = node.key[k * self.b:], node.blocks[k:], upper
        upper.children[self._block_key(node.key, 0)] = node
        return upper

    def insert(self, tokens: list[int], blocks: list[int]) -> int:
        """Cache the full blocks of ``tokens`` (``blocks[j]`` holds tokens ``[j b, (j+1) b)``); the tree takes a
        reference on each block it newly stores. Returns the number of new blocks stored."""
        n_full = min(len(tokens) // self.b, len(blocks))
        node, j, added = self.root, 0, 0
        now = next(self.clock)
        while j < n_full:
            child = node.children.get(self._block_key(tokens, j))
            if child is None:
                new = RadixNode(tuple(tokens[j * self.b:n_full * self.b]), list(blocks[j:n_full]), {}, node, now)
                for blk in new.blocks:
                    self.m.incref(blk)
                node.children[self._block_key(tokens, j)] = new
                return added + len(new.blocks)
            child.last_access = now
            k = 0
            while k < len(child.blocks) and j < n_full and child.key[k * self.b:(k + 1) * self.b] == self._block_key(tokens, j):
                k, j = k + 1, j + 1
            if k < len(child.blocks):
                child = self._split(child, k)
            node = child
        return added

    def evict(self, n: int) -> int:
        """Free up to ``n`` blocks by removing LRU leaves that no request references; returns blocks freed."""
        heap = [(leaf.last_access, id(leaf), leaf) for leaf in self._leaves() if self._evictable(leaf)]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < n:
            _, _, leaf = heapq.heappop(heap)
            for blk in leaf.blocks:
                self.m.decref(blk)
            freed += len(leaf.blocks)
            self.evicted += len(leaf.blocks)
            parent = leaf.parent
            del parent.children[self._block_key(leaf.key, 0)]
            if parent is not self.root and not parent.children and self._evictable(parent):
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return freed

    def _evictable(self, node: RadixNode) -> bool:
        return all(self.m.ref[blk] == 1 for blk in node.blocks)

    def _leaves(self) -> list[RadixNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out

    def nodes(self) -> list[RadixNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    @property
    def cached_blocks(self) -> int:
        return sum(len(n.blocks) for n in self.nodes())

    @property
    def hit_rate(self) -> float:
        return self.hit / max(self.queried, 1)
