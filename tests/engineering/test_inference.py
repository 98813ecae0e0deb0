"""The inference engine: block accounting by hand, copy-on-write, swapping, the radix tree's match/split/LRU
eviction, the paged cache under the kit's ``generate``, scheduler invariants, greedy outputs equal to HF
``generate`` (with recompute and swap preemption), parallel sampling = independent seeded runs, paged beam search
= HF beam search, and the paged-attention Triton kernel (interpreter) = the torch gather path."""

from __future__ import annotations

import pytest  # noqa: I001
import torch

from llmcore.architecture.book_lm import load_book_lm
from llmcore.architecture.decoding import beam_search, hf_beam
from llmcore.architecture.generate import SamplerConfig, generate
from llmcore.architecture.llama import RMSNorm
from llmcore.core.errors import LLMCoreError
from llmcore.core.triton_env import (  # first: sets TRITON_INTERPRET before Triton loads
    available,
    why_unavailable,
)
from llmcore.engineering.inference import (
    BlockManager,
    BlockTable,
    Engine,
    EngineConfig,
    InferenceConfig,
    OutOfBlocks,
    PagedKVCache,
    RadixCache,
    add_rmsnorm,
    add_rmsnorm_triton,
    forward_paged,
    hf_greedy,
    mixed_workload,
    shared_prefix_workload,
)
from llmcore.engineering.inference import run as inference_run
from llmcore.engineering.inference.beam import beam_search_paged
from llmcore.engineering.inference.paged_attention import (
    forward_decode,
    paged_attention_torch,
    paged_attention_triton,
)


@pytest.fixture(scope="module")
def lm():
    return load_book_lm()


def test_slots_and_block_accounting_by_hand():
    m = BlockManager(num_blocks=4, block_size=4, n_layers=1, n_kv_heads=1, head_dim=2)
    t = BlockTable()
    assert m.blocks_needed(t, 6) == 2
    slots = m.append_slots(t, 6)  # blocks 0, 1 from the free list: positions 0..5 -> slots 0..5
    assert t.blocks == [0, 1] and slots.tolist() == [0, 1, 2, 3, 4, 5] and m.num_free == 2
    u = BlockTable()
    assert m.append_slots(u, 1).tolist() == [8]  # block 2, offset 0
    assert m.append_slots(t, 3).tolist() == [6, 7, 12]  # fills block 1, then block 3 (slot 3 * 4 + 0)
    assert m.num_free == 0 and m.blocks_needed(u, 4) == 1
    with pytest.raises(OutOfBlocks):
        m.append_slots(u, 4)
    assert u.num_tokens == 1 and u.blocks == [2]  # unchanged by the failed append
    m.release(t)
    assert sorted(m.free) == [0, 1, 3] and m.ref == [0, 0, 1, 0]
    with pytest.raises(LLMCoreError):
        m.decref(0)


def test_fork_copy_on_write_keeps_the_parent():
    m = BlockManager(num_blocks=4, block_size=4, n_layers=1, n_kv_heads=1, head_dim=1)
    parent = BlockTable()
    m.k[0, m.append_slots(parent, 6), 0, 0] = torch.arange(6.0)
    child = m.fork(parent)
    assert m.ref[:2] == [2, 2] and m.blocks_needed(child, 1) == 1  # writing the shared, half-full block 1 copies it
    slot = m.append_slots(child, 1)
    m.k[0, slot, 0, 0] = 99.0
    assert m.copies == 1 and child.blocks[0] == parent.blocks[0] and child.blocks[1] != parent.blocks[1]
    read = lambda t: m.k[0, m.slots(t, torch.arange(t.num_tokens)), 0, 0].tolist()  # noqa: E731
    assert read(parent) == [0, 1, 2, 3, 4, 5] and read(child) == [0, 1, 2, 3, 4, 5, 99]
    m.release(parent), m.release(child)
    assert m.num_free == 4


def test_paged_cache_under_the_kits_generate(lm):
    """The kit's generate runs unchanged on the paged cache (lockstep rows) and gives the dynamic cache's tokens."""
    x = torch.tensor([lm.tokenizer.encode(t)[:6] for t in ("def read_file(path):", "class Queue(object):")])
    m = BlockManager.for_model(lm.model, 16, 4)
    cache = PagedKVCache(m, [BlockTable(), BlockTable()])
    assert torch.equal(generate(lm.model, x, 12, cache=cache).tokens, generate(lm.model, x, 12, cache="dynamic").tokens)
    assert cache.seq_len == 6 + 11 and m.num_free == 16 - 2 * 5
    cache.crop(8)
    assert cache.seq_len == 8 and m.num_free == 16 - 2 * 2
    cache.reset()
    assert m.num_free == 16


def test_ragged_forward_equals_one_row_at_a_time(lm):
    """Rows at different points (cached + new lengths) in one right-aligned forward = each row alone."""
    torch.manual_seed(0)
    seqs = [torch.randint(0, 2000, (n,)).tolist() for n in (5, 13, 9)]
    cached = [3, 0, 8]
    m = BlockManager.for_model(lm.model, 32, 4)
    tables = [BlockTable() for _ in seqs]
    for t, s, c in zip(tables, seqs, cached):
        if c:
            forward_paged(lm.model, m, [t], [s[:c]])
    logits = forward_paged(lm.model, m, tables, [s[c:] for s, c in zip(seqs, cached)])
    for row, s in zip(logits, seqs):
        full = lm.model(torch.tensor([s]))[0, -1]
        assert (row - full).abs().max() < 1e-4


def test_radix_match_split_and_lru_eviction():
    m = BlockManager(num_blocks=8, block_size=2, n_layers=1, n_kv_heads=1, head_dim=1)
    r = RadixCache(m)
    a, b = BlockTable(), BlockTable()
    m.append_slots(a, 6), m.append_slots(b, 4)  # a: blocks 0,1,2   b: blocks 3,4
    assert r.insert([1, 2, 3, 4, 5, 6], a.blocks) == 3
    assert r.match([1, 2, 3, 4, 5, 6, 7]) == [0, 1, 2] and r.match([1, 2, 3, 9]) == [0]
    assert r.insert([1, 2, 7, 7], b.blocks) == 1  # shares block 0's tokens: the edge splits after one block
    assert sorted(len(n.blocks) for n in r.nodes()) == [1, 1, 2]
    m.release(a), m.release(b)
    assert m.ref[:5] == [1, 1, 1, 0, 1] and m.num_free == 4  # block 3 (b's duplicate of [1, 2]) is free
    r.match([1, 2, 7, 7])  # touch the [7, 7] leaf: the [3, 4, 5, 6] leaf is now least recently used
    assert r.evict(1) == 2 and r.match([1, 2, 3, 4]) == [0] and r.match([1, 2, 7, 7]) == [0, 4]
    t = BlockTable([0, 4], 4)
    m.incref(0), m.incref(4)  # a running request holds the remaining path: nothing is evictable
    assert r.evict(10) == 0
    assert r.lookup([1, 2, 7, 7, 5]) == [0, 4] and r.lookup([1, 2, 7, 7]) == [0]  # >= 1 token left to compute
    m.release(t)
    assert r.evict(10) == 2 and m.num_free == 8


def test_scheduler_invariants_and_errors(lm):
    cfg = EngineConfig(num_blocks=40, block_size=4, max_num_seqs=3, max_batched_tokens=16)
    eng = Engine(lm.model, cfg)
    torch.manual_seed(1)
    for n, k in [(30, 6), (5, 9), (12, 3), (7, 7), (20, 4)]:
        eng.add_request(torch.randint(0, 2000, (n,)).tolist(), k)
    while eng.has_work:
        plan_tokens = eng.step()
        assert len(eng.running) <= cfg.max_num_seqs
        s = eng.stats[-1]
        assert s.decode_rows + s.prefill_tokens <= cfg.max_batched_tokens and s.used_slots <= s.allocated_slots
        assert len(plan_tokens) <= cfg.max_num_seqs
    done = sorted(eng.finished, key=lambda r: r.rid)
    assert [len(r.output) for r in done] == [6, 9, 3, 7, 4] and eng.leaked_blocks() == 0
    assert all(r.t_arrival <= r.t_scheduled <= r.t_first <= r.t_done for r in done)
    assert done[0].t_first > done[1].t_scheduled  # the 30-token prompt takes two 16-token chunks
    for bad in ([], [5] * 600, [-1, 3], [2048]):
        with pytest.raises(LLMCoreError):
            eng.add_request(bad, 4)
    with pytest.raises(LLMCoreError):
        eng.add_request([1, 2], 0)
    for bad in (dict(policy="fifo"), dict(preemption="drop"), dict(attention="cuda"), dict(swap_blocks=0)):
        with pytest.raises(LLMCoreError):
            EngineConfig(**bad)
    req = eng.add_request([1, 2, 3], 50)
    eng.step()
    eng.abort(req)
    assert req.status == "aborted" and eng.m.num_free == cfg.num_blocks


def test_engine_equals_hf_generate(lm):
    """Greedy outputs equal HF generate: continuous batching, a tight pool (preemption) and the prefix cache."""
    cfg = InferenceConfig(n_requests=10, prompt_len=(4, 40), short_out=(2, 8), long_out=(16, 30), n_prefixes=2,
                          per_prefix=3, prefix_len=(16, 24), question_len=(4, 8), prefix_out=(4, 8))
    model, tok = lm.model, lm.tokenizer
    ids = tok.encode("\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(200)))
    mixed, prefix = mixed_workload(cfg, ids, 0), shared_prefix_workload(cfg, ids, ids[::-1], 0)
    hf = model.to_hf()
    eos, pad = model.config.eos_id, model.config.pad_id
    for work, ecfg in [(mixed, EngineConfig(num_blocks=64, block_size=4, max_batched_tokens=32)),
                       (mixed, EngineConfig(num_blocks=24, block_size=4, max_batched_tokens=32)),
                       (mixed, EngineConfig(num_blocks=24, block_size=4, max_batched_tokens=32, preemption="swap",
                                            swap_blocks=64)),
                       (mixed, EngineConfig(num_blocks=24, block_size=4, max_batched_tokens=32, preemption="swap",
                                            swap_blocks=4)),
                       (prefix, EngineConfig(num_blocks=40, block_size=4, max_num_seqs=2, prefix_cache=True))]:
        eng = Engine(model, ecfg)
        for p, n in zip(work.prompts, work.max_new):
            eng.add_request(p, n, eos_id=eos)
        got = [r.output for r in eng.run()]
        assert got == hf_greedy(hf, work, eos, pad)
        assert eng.leaked_blocks() == 0
        if ecfg.num_blocks == 24:
            assert eng.preemptions > 0
        if ecfg.preemption == "swap":  # a 4-block swap pool cannot take every victim: some are recomputed
            assert eng.swaps > 0 and eng.m.swapped_out == eng.m.swapped_in
            assert eng.m.swap_bytes == 2 * eng.m.swapped_out * eng.m.bytes_per_block
            assert (eng.swaps < eng.preemptions) == (ecfg.swap_blocks == 4)
        if ecfg.prefix_cache:
            assert eng.radix.hit > 0


def test_fused_add_rmsnorm_equals_the_unfused_path():
    """The Triton kernel (interpreter on CPU) = the unfused reference = the kit's RMSNorm after the residual add."""
    if not available():
        pytest.skip(why_unavailable())
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(6, 192, generator=g), torch.randn(6, 192, generator=g)
    norm = RMSNorm(192)
    norm.weight.data = torch.randn(192, generator=g)
    y_ref, h_ref = add_rmsnorm(x, r, norm.weight.data)
    with torch.no_grad():
        assert torch.equal(y_ref, norm(x + r)) and torch.equal(h_ref, x + r)
    y, h = add_rmsnorm_triton(x, r, norm.weight.data)
    assert torch.equal(h, h_ref) and (y - y_ref).abs().max() < 1e-5
    with pytest.raises(LLMCoreError):
        add_rmsnorm_triton(x, r[:, :10], norm.weight.data)


def test_full_mode_config_starts(lm):
    """toy=False's sizes build an engine that serves (a few requests, a few steps; the full run is for a GPU)."""
    full = InferenceConfig.for_mode(False)
    assert full.n_requests >= 4 * InferenceConfig.for_mode(True).n_requests
    eng = Engine(lm.model, full.engine())
    assert eng.cfg.max_num_seqs == 128 and full.engine(policy="static").static_batch == 4096 * 8 // 512
    work = mixed_workload(full, list(range(100, 1900)), 0)
    for p, n in list(zip(work.prompts, work.max_new))[:3]:
        eng.add_request(p, min(n, 3))
    assert [len(r.output) for r in eng.run()] == [3, 3, 3] and eng.leaked_blocks() == 0
    with pytest.raises(LLMCoreError):
        inference_run(toy="yes")


def test_swap_out_and_back_by_hand():
    """Swapping copies a sequence's blocks to the host pool and back into fresh device blocks, byte for byte;
    a shared block keeps its other owner; a full host pool refuses (the table unchanged)."""
    m = BlockManager(num_blocks=4, block_size=2, n_layers=2, n_kv_heads=1, head_dim=3, swap_blocks=3)
    a = BlockTable()
    m.k[:, m.append_slots(a, 3)] = torch.arange(2 * 3 * 3.0).view(2, 3, 1, 3)  # blocks 0, 1
    m.v[:, m.slots(a, torch.arange(3))] = -m.k[:, m.slots(a, torch.arange(3))]
    keys = m.k[:, m.slots(a, torch.arange(3))].clone()
    child = m.fork(a)  # shares blocks 0 and 1 (ref 2)
    m.swap_out(child)
    assert child.swapped and child.blocks == [0, 1] and m.ref[:2] == [1, 1] and len(m.host_free) == 1
    assert m.swapped_out == 2 and m.swap_bytes == 2 * m.bytes_per_block  # bytes_per_block = 2 (k, v) * 2 * 2 * 3 * 4
    assert m.bytes_per_block == 2 * 2 * 2 * 3 * 4
    m.release(a)
    assert m.num_free == 4  # the parent's blocks are free: the child lives on the host only
    m.append_slots(BlockTable(), 2)  # someone else takes block 2 (the free list: 2, 3, 0, 1)
    m.swap_in(child)
    assert not child.swapped and child.blocks == [3, 0] and len(m.host_free) == 3
    assert torch.equal(m.k[:, m.slots(child, torch.arange(3))], keys)
    assert torch.equal(m.v[:, m.slots(child, torch.arange(3))], -keys) and m.swap_bytes == 4 * m.bytes_per_block
    big = BlockTable()
    m.append_slots(big, 1)
    with pytest.raises(OutOfBlocks):
        BlockManager(num_blocks=4, block_size=2, n_layers=1, n_kv_heads=1, head_dim=1, swap_blocks=1).swap_out(
            BlockTable([0, 1], 4))
    with pytest.raises(LLMCoreError):
        m.swap_in(big)  # not swapped out
    with pytest.raises(LLMCoreError):
        m.fork(BlockTable([0], 1, swapped=True))


def test_parallel_sampling_shares_blocks_and_equals_independent_runs(lm):
    """n = 3 samples of one request = 3 requests with seeds s, s+1, s+2; the prompt's blocks are shared, its
    partly filled last block copied on first write, and the pool's peak is lower than without sharing."""
    prompt = lm.tokenizer.encode("def read_file(path):\n    ")[:7]  # 7 tokens, blocks of 4: one full, one partial
    sampler = SamplerConfig(greedy=False, temperature=1.0, top_p=0.9)
    shared = Engine(lm.model, EngineConfig(num_blocks=32, block_size=4))
    req = shared.add_request(prompt, 9, sampler, seed=11, n=3)
    assert shared.run() == [req] and [s.index for s in req.samples] == [0, 1, 2]
    alone = Engine(lm.model, EngineConfig(num_blocks=32, block_size=4))
    reqs = [alone.add_request(prompt, 9, sampler, seed=11 + i) for i in range(3)]
    alone.run()
    assert [s.output for s in req.samples] == [r.output for r in reqs]
    assert len({tuple(s.output) for s in req.samples}) == 3  # different seeds, different samples
    # 7 + 9 - 1 = 15 stored positions = 4 blocks per sample; shared: block 0 once + 3 each = 10 vs 12
    peak = lambda e: max(st.allocated_slots for st in e.stats) // 4  # noqa: E731
    assert (peak(shared), peak(alone)) == (10, 12)
    assert shared.m.copies == 2 and alone.m.copies == 0  # two samples copied the shared partial block; the last wrote it
    assert shared.leaked_blocks() == 0
    greedy = Engine(lm.model, EngineConfig(num_blocks=32, block_size=4))
    g = greedy.add_request(prompt, 6, n=2)
    greedy.run()
    assert g.samples[0].output == g.samples[1].output == generate(lm.model, torch.tensor([prompt]), 6).tokens[0, 7:].tolist()
    with pytest.raises(LLMCoreError):
        greedy.add_request(prompt, 4, n=0)
    with pytest.raises(LLMCoreError):
        greedy.add_request(prompt, 4, n=33)  # more samples than batch rows
    req = greedy.add_request(prompt, 50, sampler, seed=1, n=4)
    greedy.step(), greedy.step()
    greedy.abort(req)  # aborting the request aborts its samples
    assert all(s.status == "aborted" for s in req.samples) and greedy.m.num_free == 32


def test_paged_beam_search_equals_hf_and_shares_blocks(lm):
    """Beams over the block pool: the same sequences as HF ``generate(num_beams=4)`` and the kit's beam search,
    in fewer blocks than copying every beam's history."""
    prompt = lm.tokenizer.encode("class Queue(object):")
    shared = beam_search_paged(lm.model, prompt, 10, num_beams=4, block_size=4)
    copied = beam_search_paged(lm.model, prompt, 10, num_beams=4, block_size=4, share=False)
    hf = hf_beam(lm.model.to_hf(), torch.tensor([prompt]), 10, 4)
    ours, scores = beam_search(lm.model, torch.tensor([prompt]), 10, 4)
    assert torch.equal(shared.sequences, hf) and torch.equal(shared.sequences, ours)
    assert torch.equal(copied.sequences, hf) and (shared.scores - scores).abs().max() < 1e-4
    # without sharing each of the 4 beams holds all ceil(stored / 4) blocks of its history at the end
    stored = len(prompt) + 10 - 1
    assert copied.peak_blocks == 4 * -(-stored // 4) and shared.peak_blocks < copied.peak_blocks
    assert shared.copies < copied.copies
    with pytest.raises(LLMCoreError):
        beam_search_paged(lm.model, [], 4)


def test_paged_attention_kernel_equals_the_gather_path():
    """Decode attention through a block table: the torch gather path = attention on the contiguous keys
    (written out); the Triton kernel (interpreter on CPU) = the torch path, with GQA and a partial last block."""
    g = torch.Generator().manual_seed(0)
    B, H, K, D, b = 3, 4, 2, 16, 4
    q, kp, vp = torch.randn(B, H, D, generator=g), torch.randn(40, K, D, generator=g), torch.randn(40, K, D, generator=g)
    tables, lens = torch.tensor([[5, 2, 9], [0, 0, 0], [7, 3, 1]]), torch.tensor([10, 3, 12])
    ref = paged_attention_torch(q, kp, vp, tables, lens, b)
    for i in range(B):
        p = torch.arange(int(lens[i]))
        slots = tables[i][p // b] * b + p % b
        k, v = kp[slots].repeat_interleave(H // K, 1), vp[slots].repeat_interleave(H // K, 1)  # (L, H, D)
        w = torch.softmax(torch.einsum("hd,lhd->hl", q[i], k) / D ** 0.5, -1)
        assert (torch.einsum("hl,lhd->hd", w, v) - ref[i]).abs().max() < 1e-5
    with pytest.raises(LLMCoreError):
        paged_attention_torch(q, kp, vp, tables, torch.tensor([10, 3, 13]), b)  # beyond the table's capacity
    if not available():
        pytest.skip(why_unavailable())
    assert (paged_attention_triton(q, kp, vp, tables, lens, b) - ref).abs().max() < 1e-5


def test_decode_step_with_the_kernel_in_the_engine(lm):
    """forward_decode (the kit's layers, attention over the pool) = the full model's last logits; an engine whose
    decode rows run the Triton kernel (interpreter) gives the torch engine's tokens."""
    seqs = [[5, 17, 300, 41, 9], [77, 12, 8, 1500, 3, 3, 64, 20, 1]]
    m = BlockManager.for_model(lm.model, 16, 4)
    tables = [BlockTable(), BlockTable()]
    for t, s in zip(tables, seqs):
        forward_paged(lm.model, m, [t], [s[:-1]])
    logits = forward_decode(lm.model, m, tables, [s[-1] for s in seqs])
    with torch.no_grad():
        for row, s in zip(logits, seqs):
            assert (row - lm.model(torch.tensor([s]))[0, -1]).abs().max() < 1e-4
    assert [t.num_tokens for t in tables] == [5, 9]
    if not available():
        pytest.skip(why_unavailable())
    out = {}
    for attn in ("torch", "triton"):
        eng = Engine(lm.model, EngineConfig(num_blocks=16, block_size=4, attention=attn))
        req = eng.add_request(seqs[1], 3)
        eng.run()
        out[attn] = req.output
    assert out["triton"] == out["torch"]
