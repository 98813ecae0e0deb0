r"""Transformer core: tokenizer, the LLaMA-style decoder, embeddings, Pre-LN vs Post-LN.

The pieces live in their own files (one source of truth):
:mod:`~llmcore.architecture.tokenizer` (byte-level BPE), :mod:`~llmcore.architecture.llama` (the
model), :mod:`~llmcore.architecture.training` (the loop), :mod:`~llmcore.architecture.pretrained`
(the cached tiny LM). This module adds the chapter's experiments and its closed loop ``run``:

1. BPE trained on the stdlib-docstring corpus vs HF ``tokenizers``' byte-level BPE (same text,
   same vocabulary size): bytes per token on held-out text;
2. our model vs HF ``LlamaForCausalLM`` with copied weights (max |logit difference|);
3. the tiny LM's validation loss vs the unigram baseline;
4. image-patch embeddings projected to the text width, fed to the decoder with text tokens;
5. a deep stack trained without warmup: Post-LN vs Pre-LN (loss curves, per-layer gradient norms);
6. the shipped, pretrained book LM (:mod:`~llmcore.architecture.book_lm`): loaded by HF unchanged,
   and its validation loss per byte against the tiny LM's on the same text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM

from llmcore.architecture.book_lm import BookLM, load_book_lm, nats_per_byte, token_byte_lengths
from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.pretrained import corpus_ids, tiny_lm
from llmcore.architecture.tokenizer import SPECIAL_TOKENS, BPETokenizer
from llmcore.architecture.training import TrainConfig, random_windows, train
from llmcore.core.corpus import SEPARATOR, book_corpus, docstring_corpus
from llmcore.core.device import pick_device
from llmcore.core.errors import LLMCoreError
from llmcore.core.report import Report
from llmcore.core.seed import seed_everything


# ---- 1. tokenizers ---------------------------------------------------------------------------------
def hf_byte_bpe(text: str, vocab_size: int, specials: tuple[str, ...] = SPECIAL_TOKENS):
    """HF ``tokenizers``' byte-level BPE (GPT-2 style) trained on ``text`` with the same vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator([text], trainer=trainer)
    return tok


@dataclass
class TokenizerComparison:
    vocab_size: int
    ours_bytes_per_token: float
    hf_bytes_per_token: float
    ours_train_s: float
    hf_train_s: float
    roundtrip_ok: bool
    sample: list[str] = field(default_factory=list)  # how ours splits a sentence

    @property
    def ratio(self) -> float:
        """Our compression relative to HF's (1.0 = identical; > 1 = ours compresses better)."""
        return self.ours_bytes_per_token / self.hf_bytes_per_token


def compare_tokenizers(train_text: str, val_text: str, vocab_size: int = 512) -> tuple[BPETokenizer,
                                                                                        TokenizerComparison]:
    t0 = time.perf_counter()
    ours = BPETokenizer.train(train_text, vocab_size)
    t1 = time.perf_counter()
    hf = hf_byte_bpe(train_text, vocab_size)
    t2 = time.perf_counter()
    n_bytes = len(val_text.encode("utf-8"))
    ids = ours.encode(val_text)
    hf_ids = hf.encode(val_text).ids
    sentence = "Return the number of items in a sequence."
    sample = [ours.decode([i]) for i in ours.encode(sentence)]
    return ours, TokenizerComparison(vocab_size, n_bytes / len(ids), n_bytes / len(hf_ids), t1 - t0, t2 - t1,
                                     ours.decode(ids) == val_text, sample)


# ---- 2. HF cross-check -----------------------------------------------------------------------------
@torch.no_grad()
def hf_logit_diff(model: Llama, idx: torch.Tensor) -> float:
    """Max |logits(ours) - logits(HF LlamaForCausalLM with the same weights)| in fp32."""
    hf = model.to_hf()
    return float((model.float()(idx) - hf(idx).logits).abs().max())


# ---- 4. embeddings ---------------------------------------------------------------------------------
class PatchEmbedding(nn.Module):
    """ViT patch embedding: cut a ``(B, C, H, W)`` image into ``p x p`` patches, project each to ``d_model``.

    A strided convolution with kernel = stride = ``p`` is exactly a linear map applied to each
    flattened patch; the output ``(B, (H/p)(W/p), d_model)`` lives in the same space as token
    embeddings, so image "tokens" and text tokens can be concatenated into one sequence
    (LLaVA-style; the VLM chapter trains the projection).
    """

    def __init__(self, patch: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(channels, d_model, kernel_size=patch, stride=patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, C, H, W = images.shape
        if H % self.patch or W % self.patch:
            raise LLMCoreError(f"image {H}x{W} is not divisible into {self.patch}x{self.patch} patches")
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, n_patches, d_model)


def patches_as_linear(emb: PatchEmbedding, images: torch.Tensor) -> torch.Tensor:
    """The same projection written as unfold + matmul (the cross-check for the convolution)."""
    p = emb.patch
    cols = nn.functional.unfold(images, kernel_size=p, stride=p).transpose(1, 2)  # (B, n_patches, C*p*p)
    return cols @ emb.proj.weight.flatten(1).T + emb.proj.bias


def multimodal_sequence(model: Llama, emb: PatchEmbedding, images: torch.Tensor, text_ids: torch.Tensor):
    """``[image patches ; text tokens]`` as one ``(B, P + T, d_model)`` sequence and the decoder's logits."""
    x = torch.cat([emb(images), model.model.embed_tokens(text_ids)], dim=1)
    return x, model(inputs_embeds=x)


# ---- 5. Pre-LN vs Post-LN --------------------------------------------------------------------------
@dataclass
class NormRun:
    position: str
    loss: list[float]
    layer_grad_norms: list[float]  # per layer, mean over the first steps (Xiong et al.'s view at init)
    final_loss: float


def layer_grad_norms(model: Llama) -> list[float]:
    """L2 norm of the gradient of each decoder layer's parameters."""
    out = []
    for layer in model.model.layers:
        sq = sum(float(p.grad.pow(2).sum()) for p in layer.parameters() if p.grad is not None)
        out.append(sq ** 0.5)
    return out


def norm_position_runs(train_ids: torch.Tensor, toy: bool = True, seed: int = 0, device: str = "cpu",
                       n_layers: int = 8, lr: float = 3e-3, steps: int | None = None,
                       batch_size: int | None = None) -> dict[str, NormRun]:
    """The same deep stack, Pre-LN and Post-LN, trained at constant ``lr`` with no warmup, no clipping.

    Toy: 150 steps of 16 x 64 bytes (Post-LN stays at the unigram loss, Pre-LN goes ~0.34 nats below);
    full: 1000 steps of 32 x 64 bytes.
    """
    steps = steps or (150 if toy else 1000)
    batch_size = batch_size or (16 if toy else 32)
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=64, lr=lr, warmup_steps=0, min_lr_ratio=1.0,
                       grad_clip=None, weight_decay=0.0, seed=seed)
    runs = {}
    for pos in ("pre", "post"):
        seed_everything(seed)
        cfg = ModelConfig(vocab_size=264, d_model=64, n_layers=n_layers, n_heads=4, max_seq_len=64,
                          norm_position=pos, init_std=0.02)
        model = Llama(cfg).to(device)
        first: list[list[float]] = []

        def record(step, m, first=first):
            if step < 10:
                first.append(layer_grad_norms(m))

        res = train(model, replace(tcfg, desc=f"{pos}-LN, {n_layers} layers, no warmup"),
                    lambda g: random_windows(train_ids, tcfg.batch_size, tcfg.seq_len, g), on_backward=record)
        mean_norms = [sum(col) / len(col) for col in zip(*first)]
        runs[pos] = NormRun(pos, res.loss, mean_norms, sum(res.loss[-10:]) / 10)
    return runs


# ---- 6. the book LM --------------------------------------------------------------------------------
@dataclass
class BookLMCheck:
    """The shipped book LM, measured here (not read from its log)."""

    params: int
    val_nats_per_byte: float  # on the held-out docstrings (the tiny LM's validation text)
    hf_max_diff: float  # |logits| of LlamaForCausalLM.from_pretrained(shipped folder) vs ours
    hf_tokenizer_equal: bool  # AutoTokenizer.from_pretrained(shipped folder) gives our ids on that text


@torch.no_grad()
def check_book_lm(lm: BookLM, n_check_tokens: int = 256) -> BookLMCheck:
    """Validation nats/byte of the book LM, and the HF round trip of its shipped folder."""
    val_text = SEPARATOR.join(book_corpus().docs_val)
    ids = lm.tokenizer.encode(val_text)
    seq_len = lm.log["pretrain_config"]["seq_len"]
    _, per_byte = nats_per_byte(lm.model, torch.tensor(ids), token_byte_lengths(lm.tokenizer), seq_len)
    hf_tok = AutoTokenizer.from_pretrained(lm.path)
    hf = LlamaForCausalLM.from_pretrained(lm.path).eval()
    x = torch.tensor([ids[:n_check_tokens]])
    dev = next(lm.model.parameters()).device
    diff = float((hf(x).logits - lm.model(x.to(dev)).cpu()).abs().max())
    same = hf_tok(val_text, add_special_tokens=False)["input_ids"] == ids
    return BookLMCheck(lm.model.num_params(), per_byte, diff, same)


# ---- the closed loop -------------------------------------------------------------------------------
@dataclass
class TransformerResult:
    tok: TokenizerComparison
    hf_max_diff: float
    val_loss: float
    unigram_loss: float
    lm_params: int
    lm_steps: int
    patch_max_diff: float
    norm_runs: dict[str, NormRun]
    book: BookLMCheck
    samples: list[str] = field(default_factory=list)


def experiment(toy: bool = True, seed: int = 0, device: str = "cpu") -> TransformerResult:
    seed_everything(seed)
    corpus = docstring_corpus()
    n_train = 300_000 if toy else len(corpus.train)
    _, tok = compare_tokenizers(corpus.train[:n_train], corpus.val, vocab_size=512 if toy else 4096)

    lm = tiny_lm(device=device)
    idx = torch.randint(0, lm.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(seed))
    diff = hf_logit_diff(lm.model, idx.to(device))

    prompt = torch.tensor([lm.tokenizer.encode("Return the")], device=device)
    samples = [lm.tokenizer.decode(lm.model.generate(prompt, 60)[0].tolist())]

    seed_everything(seed)
    emb = PatchEmbedding(patch=4, channels=1, d_model=lm.config.d_model).to(device)
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        patch_diff = float((emb(images) - patches_as_linear(emb, images)).abs().max())

    train_ids, _ = corpus_ids()
    runs = norm_position_runs(train_ids, toy=toy, seed=seed, device=device)
    book = check_book_lm(load_book_lm(device))
    return TransformerResult(tok, diff, lm.metrics["val_loss"], lm.metrics["unigram_loss"], lm.metrics["params"],
                             lm.metrics["steps"], patch_diff, runs, book, samples)


def make_report(res: TransformerResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report("transformer", "Transformer Core / Transformer 核心", toy, device, seed)
    rep.metric("BPE bytes/token (ours)", res.tok.ours_bytes_per_token)
    rep.metric("BPE bytes/token (HF tokenizers)", res.tok.hf_bytes_per_token)
    rep.check("BPE compression within 10% of HF tokenizers (|ratio - 1|)", abs(res.tok.ratio - 1), "<=", 0.10)
    rep.check("BPE decode(encode(val text)) == val text", float(res.tok.roundtrip_ok), "==", 1.0)
    rep.check("max |logits - HF LlamaForCausalLM| (fp32)", res.hf_max_diff, "<", 1e-4)
    rep.metric("tiny LM params", res.lm_params)
    rep.metric("tiny LM val loss (nats/byte)", res.val_loss)
    rep.metric("unigram val loss (nats/byte)", res.unigram_loss)
    rep.check("tiny LM val loss is at least 1 nat/byte below unigram", res.unigram_loss - res.val_loss, ">=", 1.0)
    rep.check("patch embedding (conv) equals unfold + linear", res.patch_max_diff, "<", 1e-5)
    pre, post = res.norm_runs["pre"], res.norm_runs["post"]
    rep.metric("Pre-LN final train loss", pre.final_loss)
    rep.metric("Post-LN final train loss", post.final_loss)
    rep.metric("Post-LN last/first layer grad norm", post.layer_grad_norms[-1] / post.layer_grad_norms[0])
    rep.metric("Pre-LN last/first layer grad norm", pre.layer_grad_norms[-1] / pre.layer_grad_norms[0])
    gap = post.final_loss - pre.final_loss if post.final_loss == post.final_loss else float("inf")
    rep.check("deep Post-LN without warmup ends >= 0.3 nats above Pre-LN", gap, ">=", 0.3)
    rep.metric("book LM params", res.book.params)
    rep.metric("book LM val loss (nats/byte)", res.book.val_nats_per_byte)
    rep.check("book LM: HF from_pretrained(shipped folder) logits equal ours", res.book.hf_max_diff, "<", 1e-4)
    rep.check("book LM: HF AutoTokenizer ids equal ours on the validation text",
              float(res.book.hf_tokenizer_equal), "==", 1.0)
    rep.check("book LM val loss at least 0.4 nats/byte below the tiny LM's (same text)",
              res.val_loss - res.book.val_nats_per_byte, ">=", 0.4)
    return rep


def run(toy: bool = True, device: str = "auto", seed: int = 0) -> Report:
    dev = pick_device(device)
    res = experiment(toy=toy, seed=seed, device=str(dev))
    return make_report(res, toy, str(dev), seed)
