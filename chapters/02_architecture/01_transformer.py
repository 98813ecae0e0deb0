# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Transformer Core / Transformer 核心
#
# **中文摘要：** 本章从零搭建本书后续所有章节共用的微型语言模型：语料来自随包发布的 Python 标准库文档字符串
# 快照（不下载任何数据，任何 Python 版本读到的字节都相同），训练一个字节级 BPE 分词器，并与 Hugging Face `tokenizers` 在同样文本、
# 同样词表大小下比较压缩率；然后实现 LLaMA 风格的解码器（RMSNorm、RoPE、SwiGLU、因果多头注意力），把权重
# 拷贝进 HF `LlamaForCausalLM` 后逐个 logits 对比（误差 < 1e-4），并导出为 HF 的 safetensors 格式；再用
# AdamW + 预热 + 余弦退火 + 梯度裁剪训练它，验证集损失远低于一元（unigram）基线；演示图像切块嵌入如何
# 投影到与文本词元相同的宽度；在不预热的深层网络上对比 Pre-LN 与 Post-LN 的训练稳定性；最后介绍随包发布的
# 预训练"本书模型"（book LM）：HF 可直接加载，验证集每字节损失远低于微型模型。
#
# **Learning goals**
# - train a byte-level BPE tokenizer and see why it round-trips *any* Unicode string;
# - read a LLaMA block line by line: RMSNorm, rotary position embeddings, SwiGLU, causal attention;
# - prove the implementation right by matching Hugging Face's logits with the same weights;
# - train a small LM properly (warmup + cosine, AdamW, clipping) and judge it against a baseline;
# - put image patches and text tokens into one sequence;
# - see why modern LLMs put the norm *before* each sublayer (Pre-LN);
# - meet the book LM, the pretrained base of later chapters, and compare models with different tokenizers
#   fairly (nats per byte).
#
# **Prerequisites:** PyTorch modules and autograd; softmax and cross-entropy. (Part 1 is not needed.)

# %% tags=["parameters"]
toy = True  # True: 300 kB BPE sample, cached 600-step tiny LM, 150-step norm runs (CPU); False: full sizes
device = "auto"
seed = 0
bpe_vocab = 512  # vocabulary size for the BPE comparison (toy)

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[hf] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import matplotlib.pyplot as plt
import numpy as np
import torch

from llmcore.architecture import book_lm
from llmcore.architecture import llama as L
from llmcore.architecture import pretrained as P
from llmcore.architecture import tokenizer as T
from llmcore.architecture import training as TR
from llmcore.architecture import transformer as X
from llmcore.core import pick_device, seed_everything, show_source, use_style
from llmcore.core.corpus import docstring_corpus

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Data without downloads
#
# The corpus ships with the package: a snapshot of CPython 3.11.7's standard library, harvested once by
# `python -m llmcore.core.corpus --write-snapshot` — every module, class and function docstring, parsed
# with `ast` (nothing is imported), plus the language reference and the source code that the book LM
# below also reads. Its sha256 is checked on every load, so every reader, on any Python version, trains
# on the same bytes. Each docstring goes to validation when a hash of its text says so (5%), so the split
# never depends on file order and duplicates cannot leak across it.

# %%
corpus = docstring_corpus()
print(corpus.source, f"— {corpus.n_docs} docstrings, {corpus.n_bytes / 1e6:.2f} MB "
      f"(train {len(corpus.train.encode()) / 1e6:.2f} MB, val {len(corpus.val.encode()) / 1e3:.0f} kB)")
print(corpus.val[:400])

# %% [markdown]
# ## Tokenization: byte-level BPE
#
# Text is first split into word-like chunks (GPT-2's pattern: letters with an optional leading space,
# digits, punctuation, whitespace), each chunk becomes its UTF-8 **bytes**, and training repeatedly
# replaces the most frequent adjacent pair by a new token {cite}`sennrich2016bpe,radford2019gpt2`.
# Because the 256 bytes are all in the vocabulary, *every* string encodes and decodes losslessly — no
# unknown token. Encoding replays the merges in the order they were learned (lowest rank first).

# %%
show_source(T.BPETokenizer.train, T.BPETokenizer._encode_chunk)

# %%
n_train = 300_000 if toy else len(corpus.train)
bpe, tok_cmp = X.compare_tokenizers(corpus.train[:n_train], corpus.val, vocab_size=bpe_vocab if toy else 4096)
print(f"vocab {tok_cmp.vocab_size}: ours {tok_cmp.ours_bytes_per_token:.4f} bytes/token, "
      f"HF tokenizers {tok_cmp.hf_bytes_per_token:.4f} bytes/token (ratio {tok_cmp.ratio:.4f})")
print("round trip on the validation text:", tok_cmp.roundtrip_ok)
print("'Return the number of items in a sequence.' ->", tok_cmp.sample)
for s in ["naïve café — 東京 🙂", "def f(x):\n\treturn x**2", "\x00\ufffd\U0010ffff"]:
    assert bpe.decode(bpe.encode(s)) == s
print("longest learned tokens:", sorted((bpe.decode([i]) for i in range(256, 256 + len(bpe.merges))),
                                        key=len)[-8:])

# %% tags=["nbval-ignore-output"]
print(f"training time: ours {tok_cmp.ours_train_s:.2f} s (pure Python), HF {tok_cmp.hf_train_s:.2f} s (Rust)")

# %% [markdown]
# The unit tests also check the round trip as a *property*: `decode(encode(s)) == s` for hundreds of
# random Unicode strings generated by `hypothesis`. The tiny LM below uses the even simpler
# `ByteTokenizer` (256 bytes + 8 special tokens): at this scale a BPE vocabulary would spend most of the
# parameters on the embedding table.

# %% [markdown]
# ## The LLaMA-style decoder
#
# One block, with $x \in \mathbb R^{T \times d}$ {cite}`touvron2023llama`:
#
# $$
# h = x + \mathrm{Attn}(\mathrm{RMSNorm}(x)), \qquad y = h + W_{\text{down}}\big(\mathrm{silu}(W_{\text{gate}} \bar h)
# \odot W_{\text{up}} \bar h\big),\ \ \bar h = \mathrm{RMSNorm}(h)
# $$
#
# * **RMSNorm** {cite}`zhang2019rmsnorm`: $\mathrm{RMSNorm}(x) = g \odot x / \sqrt{\tfrac1d \sum_i x_i^2 + \epsilon}$ —
#   LayerNorm without the mean subtraction.
# * **RoPE** {cite}`su2021roformer`: rotate each pair of query/key coordinates $(x_i, x_{i+D/2})$ by the
#   angle $p\,\theta^{-2i/D}$ at position $p$. Then $\langle R_m q, R_n k\rangle$ depends only on $m-n$:
#   attention sees *relative* positions, with no position embedding table.
# * **SwiGLU** {cite}`shazeer2020glu`: a gated feed-forward with hidden size $\approx \tfrac83 d$.
# * **Causal attention** {cite}`vaswani2017attention`:
#   $\mathrm{softmax}\big(QK^\top/\sqrt{D} + M\big)V$ with $M_{ij} = -\infty$ for $j > i$.
#
# Parameter names are exactly Hugging Face's, so weights move between the two without renaming.

# %%
show_source(L.RMSNorm, L.rope_cos_sin, L.apply_rope, L.Attention.forward, L.MLP, L.Block)

# %% [markdown]
# ### Cross-check: the same weights in Hugging Face `LlamaForCausalLM`
#
# `Llama.to_hf()` builds an HF model from the same config and copies the state dict; the logits must
# agree to float rounding. `save_pretrained` writes `config.json` + `model.safetensors` in HF's layout, so
# `LlamaForCausalLM.from_pretrained(folder)` loads our checkpoints too.

# %%
from transformers import LlamaForCausalLM

lm = P.tiny_lm(device=dev)  # trained on first use (about a minute on 2 CPU cores), then cached
model, byte_tok = lm.model, lm.tokenizer
idx = torch.randint(0, lm.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(seed)).to(dev)
hf_diff = X.hf_logit_diff(model, idx)
hf_loaded = LlamaForCausalLM.from_pretrained(lm.path).to(dev)  # the cached checkpoint, read by HF
with torch.no_grad():
    load_diff = float((hf_loaded(idx).logits - model(idx)).abs().max())
print(f"config: {lm.config}")
print(f"max |logits(ours) - logits(HF)| = {hf_diff:.2e};  HF from_pretrained(our folder): {load_diff:.2e}")
assert hf_diff < 1e-4 and load_diff < 1e-4

# %% [markdown]
# ## Training the tiny LM
#
# AdamW {cite}`loshchilov2019adamw` with weight decay on matrices only, linear warmup then cosine decay,
# global-norm gradient clipping, random 256-byte windows of the training text. The loss is measured in
# nats per byte; the **unigram baseline** (each byte's frequency, no context) is the number to beat.

# %%
show_source(TR.lr_at, TR.train)

# %%
curve = np.array(lm.metrics["loss_curve"])
tcfg = lm.train_config
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(curve, alpha=0.4, label="train loss (per step)")
axes[0].plot(np.convolve(curve, np.ones(20) / 20, mode="valid"), label="20-step mean")
axes[0].axhline(lm.metrics["unigram_loss"], color="k", ls="--", label="unigram baseline (val)")
axes[0].axhline(lm.metrics["val_loss"], color="C2", ls=":", label="final val loss")
axes[0].set_xlabel("step"), axes[0].set_ylabel("nats / byte"), axes[0].legend(fontsize=8)
axes[1].plot([TR.lr_at(s, tcfg) for s in range(tcfg.steps)])
axes[1].set_xlabel("step"), axes[1].set_title("learning rate: warmup + cosine", fontsize=10)
plt.show()
print(f"{lm.metrics['params']:,} parameters, {tcfg.steps} steps of {tcfg.batch_size}x{tcfg.seq_len} bytes; "
      f"val loss {lm.metrics['val_loss']:.4f} vs unigram {lm.metrics['unigram_loss']:.4f} nats/byte")

# %%
prompt = torch.tensor([byte_tok.encode("Return the")], device=dev)
print(repr(byte_tok.decode(model.generate(prompt, 80)[0].tolist())))

# %% tags=["nbval-ignore-output"]
print(f"tiny LM training took {lm.metrics['train_s']:.1f} s when it was trained (cached since: {lm.path.name})")

# %% [markdown]
# ## Text and image embeddings in one space
#
# A token embedding is a table lookup $E[t] \in \mathbb R^d$. An image enters the same space by cutting it
# into $p \times p$ patches and projecting each flattened patch with one matrix {cite}`dosovitskiy2021vit` —
# a strided convolution does exactly that. The patch vectors are then ordinary "tokens": concatenated with
# the text embeddings they go through the decoder unchanged (the VLM chapter trains this projector).

# %%
show_source(X.PatchEmbedding, X.multimodal_sequence)

# %%
seed_everything(seed)
emb = X.PatchEmbedding(patch=4, channels=1, d_model=lm.config.d_model).to(dev)
images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dev)
with torch.no_grad():
    patch_diff = float((emb(images) - X.patches_as_linear(emb, images)).abs().max())
    seq, logits = X.multimodal_sequence(model, emb, images, prompt.expand(2, -1))
print(f"image (2, 1, 8, 8) -> {tuple(emb(images).shape)} patch tokens; text {tuple(prompt.shape)} -> "
      f"joint sequence {tuple(seq.shape)} -> logits {tuple(logits.shape)}")
print(f"conv patch embedding vs unfold + linear: max |diff| = {patch_diff:.1e}")
assert patch_diff < 1e-5

# %% [markdown]
# ## Pre-LN vs Post-LN
#
# The original Transformer normalises *after* the residual addition (Post-LN, $x_{l+1} = \mathrm{LN}(x_l +
# F(x_l))$); GPT-2 and LLaMA normalise the sublayer's *input* (Pre-LN, $x_{l+1} = x_l + F(\mathrm{LN}(x_l))$).
# With Pre-LN the residual stream is an identity path from the loss to every layer, so gradients reach the
# bottom undamped; with Post-LN every layer's norm sits on that path and the gradient at initialisation is
# concentrated in the top layers — which is why Post-LN needs a learning-rate warmup {cite}`xiong2020preln`.
# Below: the same 8-layer stack, same data and seed, constant learning rate, **no warmup, no clipping**.

# %%
train_ids, val_ids = P.corpus_ids()
runs = X.norm_position_runs(train_ids, toy=toy, seed=seed, device=str(dev))
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
for pos, r in runs.items():
    c = np.array(r.loss)
    axes[0].plot(np.convolve(c, np.ones(10) / 10, mode="valid"), label=f"{pos}-LN")
    axes[1].semilogy(np.arange(1, len(r.layer_grad_norms) + 1), r.layer_grad_norms, "o-", label=f"{pos}-LN")
axes[0].axhline(lm.metrics["unigram_loss"], color="k", ls="--", lw=1, label="unigram")
axes[0].set_xlabel("step"), axes[0].set_ylabel("train loss (10-step mean)"), axes[0].legend()
axes[1].set_xlabel("layer"), axes[1].set_ylabel("grad norm (mean of first 10 steps)"), axes[1].legend()
axes[0].set_title("8 layers, lr 3e-3, no warmup", fontsize=10)
plt.show()
for pos, r in runs.items():
    print(f"{pos}-LN: final loss {r.final_loss:.4f}; layer grad norms top/bottom "
          f"{r.layer_grad_norms[-1] / r.layer_grad_norms[0]:.2f}")

# %% [markdown]
# ## The book LM: a pretrained base for the rest of the book / 本书的预训练基座模型
#
# The tiny LM above is the right tool when *training* is the lesson. Chapters whose premise is a
# **pretrained** model — fine-tuning, alignment, agents, inference engines — need a base that already
# knows the language. The book ships one, made by an in-repo recipe (`make pretrain`) and committed as
# package data in Hugging Face's `save_pretrained` layout:
#
# | | tiny LM (this chapter) | **book LM** (shipped) |
# |---|---|---|
# | tokenizer | bytes (264 ids) | the book's byte-level BPE (2048 ids, trained by the recipe) |
# | model | 2 layers, $d=64$, MHA, 256-byte context | 4 layers, $d=192$, GQA 6 query / 2 KV heads, 512-token context |
# | data | stdlib docstrings | docstrings + the language reference + stdlib source (docstrings cut out) |
# | training | 600 steps × 4k bytes, ~1 min | 1200 steps × 8k tokens (9.8M tokens), ~45 min on one CPU core |
#
# 中文：小模型适合讲"训练"本身；后续以"预训练基座"为前提的章节（微调、对齐、智能体、推理引擎）加载本书的
# 预训练模型。它由仓库内的配方一次训练完成，权重、分词器、训练日志和语料哈希一起作为包数据提交，HF 可直接加载。
#
# The corpus is a **snapshot** of CPython 3.11.7's standard library shipped with the package (sha256-checked
# on every load), so a reader on Python 3.12 in Colab sees the same bytes. The recipe draws each training
# window from one of the three parts with fixed weights (45% docstrings, 10% language reference, 45% code):

# %%
show_source(book_lm.mixture_windows)

# %% [markdown]
# Comparing models with different tokenizers needs a common unit. A BPE token covers ~3 bytes, so
# nats per *token* would flatter it; we divide the summed loss by the bytes the predicted tokens cover:
#
# $$ \text{nats/byte} = \frac{\sum_t -\log p_\theta(x_t \mid x_{<t})}{\sum_t \lvert \mathrm{bytes}(x_t)\rvert}. $$
#
# For the byte-level tiny LM every token is one byte, so its nats/token *is* nats/byte.

# %%
show_source(book_lm.nats_per_byte)

# %%
blm = book_lm.load_book_lm(device=dev)
book = X.check_book_lm(blm)
log = blm.log
cfg_p = log["pretrain_config"]
print(f"book LM: {book.params:,} parameters; {cfg_p['steps']} steps x {cfg_p['batch_size']}x{cfg_p['seq_len']} tokens "
      f"= {cfg_p['steps'] * cfg_p['batch_size'] * cfg_p['seq_len'] / 1e6:.1f}M tokens")
print("training tokens per part:", {k: f"{v / 1e6:.2f}M" for k, v in log["tokens"].items()})
print(f"HF LlamaForCausalLM.from_pretrained(shipped folder): max |logit diff| = {book.hf_max_diff:.1e}; "
      f"AutoTokenizer ids equal ours on the validation text: {book.hf_tokenizer_equal}")
assert book.hf_max_diff < 1e-4 and book.hf_tokenizer_equal

# %%
curves = log["curves"]
loss = np.array(curves["loss"])
val_byte = np.array(curves["val_nats_per_byte"])
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
axes[0].plot(loss, alpha=0.35, label="train loss (per step)")
axes[0].plot(np.arange(24, len(loss)), np.convolve(loss, np.ones(25) / 25, mode="valid"), label="25-step mean")
axes[0].set_xlabel("step"), axes[0].set_ylabel("nats / token"), axes[0].legend(fontsize=8)
axes[0].set_title("book LM pretraining", fontsize=10)
axes[1].plot(val_byte[:, 0], val_byte[:, 1], "o-", color="C2", label="book LM (val)")
axes[1].axhline(lm.metrics["val_loss"], color="C1", ls=":", label="tiny LM (val, final)")
axes[1].axhline(lm.metrics["unigram_loss"], color="k", ls="--", lw=1, label="byte unigram")
axes[1].set_xlabel("step"), axes[1].set_ylabel("nats / byte, held-out docstrings"), axes[1].legend(fontsize=8)
plt.show()

# %% tags=["nbval-ignore-output"]
print(f"validation loss on the same held-out docstrings: book LM {book.val_nats_per_byte:.4f} nats/byte "
      f"({book.val_nats_per_byte / np.log(2):.3f} bits/byte) vs tiny LM {lm.metrics['val_loss']:.4f} vs byte unigram "
      f"{lm.metrics['unigram_loss']:.4f}")
run_info = log["run"]
print(f"pretrained in {run_info['train_s'] / 60:.1f} min on {run_info['device']} ({run_info['processor']}, "
      f"{run_info['threads']} thread(s), torch {run_info['torch']}, Python {run_info['python']})")

# %% [markdown]
# What does a 2M-parameter model trained on 10M tokens of Python write? Greedy decoding of a docstring and
# of a function header, then a sample at temperature 0.8:

# %% tags=["nbval-ignore-output"]
btok = blm.tokenizer
for prompt_text in ["Return the number of", "def read_lines(path):\n    "]:
    ids = torch.tensor([btok.encode(prompt_text)], device=dev)
    greedy = blm.model.generate(ids, 48)[0].tolist()
    sampled = blm.model.generate(ids, 48, temperature=0.8, top_k=50,
                                 generator=torch.Generator(device=dev).manual_seed(seed))[0].tolist()
    print(f"--- greedy  | {btok.decode(greedy)!r}")
    print(f"--- T = 0.8 | {btok.decode(sampled)!r}")

# %% [markdown]
# Plausible Python and plausible docstring English, locally. Two failure modes are visible at this scale:
# greedy decoding falls into **loops** (the most likely next token after a repeated phrase is the phrase
# again — the decoding chapter's repetition penalties and sampling exist for this), and sampled text
# **drifts**: each sentence is fluent, the paragraph has no plan. Both shrink with scale; neither disappears.

# %% [markdown]
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
res = X.TransformerResult(tok_cmp, hf_diff, lm.metrics["val_loss"], lm.metrics["unigram_loss"],
                          lm.metrics["params"], lm.metrics["steps"], patch_diff, runs, book)
report = X.make_report(res, toy, str(dev), seed)
print(report.summary())
assert report.passed, report.failures()

# %% [markdown]
# ## Play: sampling temperature
#
# The same tiny model, sampled at different temperatures: low is repetitive, high is noise.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def sample(temperature: float = 0.8, prompt_text: str = "Return the") -> None:
    ids = torch.tensor([byte_tok.encode(prompt_text)], device=dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    out = model.generate(ids, 120, temperature=temperature, top_k=50, generator=g)
    print(byte_tok.decode(out[0].tolist()))


widgets.interact(sample, temperature=widgets.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.1),
                 prompt_text=widgets.Text(value="Return the"));

# %% [markdown]
# ## Exercises
#
# 1. Train the BPE with vocabulary 256 + 8 + 2000 on the full corpus and train the tiny LM on BPE tokens
#    with the same parameter budget. Compare the validation loss **per byte** (convert nats/token with
#    bytes/token) — which wins at this scale, and why?
# 2. Replace RoPE by a learned absolute position table. What happens to the loss on sequences longer
#    than the training length?
# 3. Give the Post-LN stack a 100-step warmup (`warmup_steps=100`) or gradient clipping. Does it catch up
#    with Pre-LN?
# 4. Set `n_kv_heads=1` in `ModelConfig` and check that the HF equivalence still holds (the attention
#    chapter studies this).
#
# ## References
#
# Vaswani et al. {cite}`vaswani2017attention`; LLaMA {cite}`touvron2023llama`; RMSNorm {cite}`zhang2019rmsnorm`;
# RoPE {cite}`su2021roformer`; SwiGLU {cite}`shazeer2020glu`; BPE {cite}`sennrich2016bpe` and GPT-2's byte-level
# variant {cite}`radford2019gpt2`; ViT patches {cite}`dosovitskiy2021vit`; Pre-LN {cite}`xiong2020preln`;
# AdamW {cite}`loshchilov2019adamw`. Full entries: [bibliography](../../book/bibliography.md).
