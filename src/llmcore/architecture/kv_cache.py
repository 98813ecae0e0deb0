r"""The book's one key/value-cache protocol and its implementations: dynamic, static, INT8.

Autoregressive decoding re-reads the keys and values of every earlier position at every step. A KV
cache stores them once, so a step costs $O(S)$ attention work instead of re-running the whole prefix.

**The protocol** (:class:`KVCacheProtocol`) is what :class:`~llmcore.architecture.llama.Llama`'s
``kv_cache=`` hook calls; any object with these members works (``B`` batch, ``K`` key/value heads,
``T`` new positions, ``S`` stored positions, ``D`` head size, ``L`` layers):

* ``update(layer, k, v) -> (k_all, v_all)``: append ``k, v (B, K, T, D)`` (RoPE already applied) to
  layer ``layer`` and return every stored position ``(B, K, S + T, D)`` for the attention of this step;
* ``seq_len``: positions stored so far (the model reads it *before* layer 0 is updated, to place RoPE
  and the causal mask);
* ``get(layer) -> (k, v)``: the stored ``(B, K, S, D)`` of one layer (to ship or inspect a cache);
* ``crop(n)``: forget every position ``>= n`` (speculative decoding rolls back rejected drafts);
* ``reset()``: forget everything (reuse the buffers for the next request);
* ``nbytes``: bytes the cache holds now (allocated buffers for the pre-allocated kinds).

Only ``K = n_kv_heads`` heads are stored: the model repeats them for its ``H`` query heads *after* the
cache, which is why grouped-query and multi-query attention shrink the cache by ``H / K``. The memory of
the filled cache is

$$ \text{bytes} = 2 \times \text{layers} \times \text{kv\_heads} \times \text{head\_dim} \times
   \text{bytes per element} \times \text{tokens} \times \text{batch} $$

(:func:`kv_cache_bytes`; the 2 is keys + values).

**Implementations** (each says why it exists):

* :class:`DynamicKVCache` -- concatenates along the sequence axis (``torch.cat``); no size limit, no
  pre-allocation, re-allocates every step. The simplest correct cache; ``Llama.generate`` uses it.
* :class:`StaticKVCache` -- one contiguous ``(L, B, K, S_max, D)`` buffer per keys/values, allocated once,
  written in place; what ``torch.compile``/CUDA-graph decoding needs (fixed addresses).
* :class:`Int8KVCache` -- the static layout stored as INT8 with one fp16 absmax scale per head vector
  (:func:`~llmcore.architecture.quantization.quantize_absmax`), dequantized on read: ~4x less than fp32.

The paged cache of the inference-engine chapter (fixed-size blocks and a block table per sequence, as
vLLM's PagedAttention) implements this same protocol, so the model and :func:`~llmcore.architecture.generate.generate`
run unchanged on it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from llmcore.architecture.quantization import SCALE_DTYPE, quantize_absmax
from llmcore.core.errors import LLMCoreError


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, bytes_per_element: float,
                   tokens: int, batch: int = 1) -> int:
    r"""$2 \times L \times K \times D \times \text{bytes} \times \text{tokens} \times B$ (the 2 is keys + values).

    Per token and per sequence it is $2 L K D \cdot \text{bytes}$ -- the usual "per-token" formula."""
    return int(round(2 * n_layers * n_kv_heads * head_dim * bytes_per_element * tokens * batch))


@runtime_checkable
class KVCacheProtocol(Protocol):
    """What ``Llama(idx, kv_cache=cache)`` and :func:`~llmcore.architecture.generate.generate` need."""

    @property
    def seq_len(self) -> int: ...

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def crop(self, n: int) -> None: ...

    def reset(self) -> None: ...

    @property
    def nbytes(self) -> int: ...


# ---- dynamic ---------------------------------------------------------------------------------------
class DynamicKVCache:
    """Per layer, concatenate new keys/values along the sequence axis: ``(B, K, S, D)`` grows by ``T``.

    No maximum length and nothing allocated up front, at the price of a new tensor (a copy of the whole
    layer cache) every step. ``reorder(index)`` permutes the batch rows (beam search follows its beams).
    """

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    @classmethod
    def for_model(cls, model, batch: int = 1, max_len: int = 0) -> DynamicKVCache:
        """Same signature as the pre-allocated caches (``batch``/``max_len`` are not needed here)."""
        return cls(model.config.n_layers)

    @property
    def seq_len(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v (B, K, T, D)``; return the layer's ``(B, K, S + T, D)``."""
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is None:
            raise LLMCoreError(f"layer {layer} of the KV cache is empty")
        return self.k[layer], self.v[layer]

    def crop(self, n: int) -> None:
        if n > self.seq_len:
            raise LLMCoreError(f"cannot crop to {n} > {self.seq_len} stored positions")
        for i in range(len(self.k)):
            if self.k[i] is not None:
                self.k[i], self.v[i] = self.k[i][:, :, :n], self.v[i][:, :, :n]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (in that order) in every layer."""
        for i in range(len(self.k)):
            if self.k[i] is not None:
                self.k[i], self.v[i] = self.k[i][index], self.v[i][index]

    def reset(self) -> None:
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v if t is not None)

    def used_bytes(self) -> int:
        """Bytes of the stored positions (here everything held)."""
        return self.nbytes


# ---- static, pre-allocated ---------------------------------------------------------------------------
class StaticKVCache:
    """A contiguous, pre-allocated key/value cache for all layers, GQA-aware.

    ``k``/``v`` are single tensors of shape ``(L, B, K, max_len, D)`` allocated once; ``update`` writes
    the new positions in place (no ``torch.cat``, no re-allocation) and returns views of the filled part
    ``(B, K, S, D)``. Only ``K = n_kv_heads`` heads are stored -- the model repeats them for its query
    heads *after* the cache, which is why GQA/MQA save cache memory. ``crop(n)`` forgets every position
    ``>= n`` (speculative decoding's rollback).
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.lens = [0] * n_layers  # filled positions per layer

    @classmethod
    def for_model(cls, model, batch: int, max_len: int, dtype: torch.dtype | None = None):
        """A cache sized for ``model`` (our ``Llama``): its layers, KV heads, head size, dtype and device."""
        c = model.config
        p = next(model.parameters())
        return cls(c.n_layers, batch, c.n_kv_heads, c.head_dim, max_len, dtype or p.dtype, p.device)

    @property
    def seq_len(self) -> int:
        """Positions stored in every layer (the model reads it before layer 0 is updated)."""
        return min(self.lens)

    def reserve(self, layer: int, T: int) -> slice:
        """Claim positions ``[S, S + T)`` of ``layer`` for new keys/values; a clear error when the buffer is full."""
        start = self.lens[layer]
        if start + T > self.max_len:
            raise LLMCoreError(f"KV cache full: {start} + {T} positions > max_len={self.max_len}")
        self.lens[layer] = start + T
        return slice(start, start + T)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v (B, K, T, D)`` at positions ``[S_old, S_old + T)``; return ``(B, K, S_old + T, D)`` views."""
        sl = self.reserve(layer, k.shape[2])
        self.k[layer, :, :, sl] = k
        self.v[layer, :, :, sl] = v
        return self.get(layer)

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.lens[layer]
        return self.k[layer, :, :, :n], self.v[layer, :, :, :n]

    def crop(self, n: int) -> None:
        """Keep the first ``n`` positions (the rest will be overwritten)."""
        if n > self.seq_len:
            raise LLMCoreError(f"cannot crop to {n} > {self.seq_len} stored positions")
        self.lens = [n] * len(self.lens)

    def reset(self) -> None:
        self.lens = [0] * len(self.lens)

    @property
    def nbytes(self) -> int:
        """Bytes allocated (the whole pre-allocated buffer)."""
        return self.k.nbytes + self.v.nbytes

    def used_bytes(self) -> int:
        """Bytes of the filled positions: the formula of :func:`kv_cache_bytes` with ``tokens = seq_len``."""
        L, B, K, _, D = self.k.shape
        return kv_cache_bytes(L, K, D, self.k.element_size(), self.seq_len, B)


# ---- INT8 -------------------------------------------------------------------------------------------
class Int8KVCache(StaticKVCache):
    """:class:`StaticKVCache` that stores keys/values as INT8 with one fp16 absmax scale per
    (layer, sequence, head, position) -- i.e. per head vector of ``D`` values -- and dequantizes on read.

    Each stored vector is ``round(x / s)`` with ``s = max|x| / 127`` (rounded to fp16), so the read-back
    error is at most ``s / 2`` per element. Bytes per position: ``2 L B K (D + 2)`` (values + scales)
    instead of ``2 L B K D x 4`` in fp32.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=torch.int8, device=device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=device)
        self.k_scale = torch.ones(shape[:-1] + (1,), dtype=SCALE_DTYPE, device=device)
        self.v_scale = torch.ones(shape[:-1] + (1,), dtype=SCALE_DTYPE, device=device)
        self.out_dtype, self.max_len, self.lens = dtype, max_len, [0] * n_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sl = self.reserve(layer, k.shape[2])
        qk, qv = quantize_absmax(k, per_channel=True), quantize_absmax(v, per_channel=True)
        self.k[layer, :, :, sl], self.k_scale[layer, :, :, sl] = qk.data, qk.scale
        self.v[layer, :, :, sl], self.v_scale[layer, :, :, sl] = qv.data, qv.scale
        return self.get(layer)

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.lens[layer]
        kd = (self.k[layer, :, :, :n].float() * self.k_scale[layer, :, :, :n].float()).to(self.out_dtype)
        vd = (self.v[layer, :, :, :n].float() * self.v_scale[layer, :, :, :n].float()).to(self.out_dtype)
        return kd, vd

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.k_scale.nbytes + self.v_scale.nbytes

    def used_bytes(self) -> int:
        L, B, K, _, D = self.k.shape
        per_pos = 2 * L * B * K * (D * 1 + self.k_scale.element_size())  # int8 values + one fp16 scale
        return per_pos * self.seq_len


#: ``cache=`` names understood by :func:`make_cache` and :func:`~llmcore.architecture.generate.generate`.
CACHES = {"dynamic": DynamicKVCache, "static": StaticKVCache, "int8": Int8KVCache}


def make_cache(kind: str, model, batch: int, max_len: int):
    """A cache of ``kind`` (``"dynamic"``, ``"static"`` or ``"int8"``) sized for ``model``."""
    if kind not in CACHES:
        raise LLMCoreError(f"unknown KV cache {kind!r}; valid: {', '.join(CACHES)}")
    return CACHES[kind].for_model(model, batch, max_len)
