"""Part 2 -- architecture. The language-model core that later chapters build on.

API summary (stable; later chapters import these names)
-------------------------------------------------------

Model -- :mod:`llmcore.architecture.llama` (HF ``LlamaForCausalLM`` parameter names)::

    from llmcore.architecture.llama import Llama, ModelConfig, lm_loss
    cfg = ModelConfig(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,   # GQA/MQA: n_kv_heads < n_heads
                      ffn_hidden=176, max_seq_len=256, rope_theta=1e4, norm_eps=1e-6,
                      tie_embeddings=True, norm_position="pre", attn_impl="sdpa")     # or "post" / "eager"
    model = Llama(cfg)
    logits = model(idx)                              # idx (B, T) long -> (B, T, vocab)
    logits, loss = model(idx, labels=idx)            # HF convention: shifted inside, -100 ignored
    h = model.hidden_states(idx)                     # (B, T, d_model) after the final norm (value/reward heads)
    model(inputs_embeds=e)                           # (B, T, d_model) instead of ids (image tokens, soft prompts)
    model(idx, attention_mask=m, position_ids=p)     # m (B, S) 1 = real, 0 = pad (left padding works)
    model.generate(idx, max_new_tokens, temperature=0.0, top_k=None, eos_id=None, use_cache=True, generator=None)
    hf = model.to_hf(); model = Llama.from_hf(hf)    # transformers.LlamaForCausalLM, identical logits
    model.save_pretrained(d); Llama.from_pretrained(d)  # config.json + model.safetensors (HF loads it too)

KV caches -- :mod:`llmcore.architecture.kv_cache` (one protocol; ``llama.KVCache`` is ``DynamicKVCache``)::

    cache = DynamicKVCache(cfg.n_layers)             # or StaticKVCache.for_model(model, B, max_len), Int8KVCache...
    model(prompt, kv_cache=cache); model(next_tok, kv_cache=cache)
    #   protocol: update(layer, k, v) -> (k_all, v_all), seq_len, get(layer), crop(n), reset(), nbytes
    #   k, v (B, n_kv, T, head_dim); bytes = 2 x layers x kv_heads x head_dim x bytes x tokens x batch
    kv_cache_bytes(n_layers, n_kv_heads, head_dim, bytes_per_element, tokens, batch)

Generation -- :mod:`llmcore.architecture.generate` (the one loop; ``Llama.generate`` wraps it)::

    res = generate(model, prompt, max_new_tokens, SamplerConfig(greedy=False, temperature=0.8, top_k=50,
                   top_p=0.95, repetition_penalty=1.1), cache="static", generator=g, eos_id=None)
    res.tokens (B, T + new), res.step_s, res.cache_bytes, res.cache

Tokenizers -- :mod:`llmcore.architecture.tokenizer`::

    tok = ByteTokenizer()          # ids 0..255 = UTF-8 bytes, then <pad>=256 <bos>=257 <eos>=258 <sep>=259
                                   # <|system|>=260 <|user|>=261 <|assistant|>=262 <|tool|>=263; vocab_size 264
    tok.encode(text, add_bos=False, add_eos=False, allow_special=False) -> list[int]; tok.decode(ids)
    bpe = BPETokenizer.train(text, vocab_size=1024)   # byte-level BPE, same interface; bpe.save/load(path)

Training -- :mod:`llmcore.architecture.training`::

    res = train(model, TrainConfig(steps, batch_size, seq_len, lr, warmup_steps, grad_clip, ...),
                batch_fn=lambda gen: (idx, labels), eval_fn=None, on_backward=None, checkpoint_dir=None)
    # AdamW (decay on matrices), linear warmup + cosine, clipping, progress bar, safetensors checkpoint
    # res.loss / res.lr / res.grad_norm per step, res.val [(step, loss)]
    random_windows(ids_1d, batch_size, seq_len, gen); evaluate(model, ids_1d, seq_len) -> nats/token

The tiny pretrained LM -- :mod:`llmcore.architecture.pretrained`::

    lm = tiny_lm(device="cpu")    # cached in output/checkpoints/, trained on first call, deterministic
    lm.model, lm.tokenizer, lm.metrics["val_loss"], lm.metrics["unigram_loss"]   # nats/byte
    train_ids, val_ids = corpus_ids()                 # stdlib-docstring corpus as byte ids

The pretrained book LM -- :mod:`llmcore.architecture.book_lm` (shipped as package data, HF layout)::

    blm = load_book_lm(device="cpu")   # blm.model (Llama, 1.97M params), blm.tokenizer (BPE, 2048 ids), blm.log
    book_lm_path()                     # the folder: LlamaForCausalLM / AutoTokenizer .from_pretrained(it) work
    nats_per_byte(model, ids, token_byte_lengths(tok), seq_len)   # compare models across tokenizers

Data (a shipped, sha256-checked snapshot of CPython 3.11.7's stdlib) -- :mod:`llmcore.core.corpus`:
``docstring_corpus() -> Corpus(train, val, n_docs, source)``; ``book_corpus() -> BookCorpus`` (docstrings,
language reference, source code; same validation docstrings).
"""
