r"""The book LM: a small pretrained LLaMA-style model with the book's own BPE tokenizer, shipped as package data.

Later chapters whose premise is a *pretrained base* (fine-tuning, alignment, agents, inference
engines) load it instead of training a model from random weights::

    from llmcore.architecture.book_lm import load_book_lm
    lm = load_book_lm()                   # Llama (eval mode) + BPETokenizer + the training log
    ids = lm.tokenizer.encode("def read_file(path):")
    out = lm.model.generate(torch.tensor([ids]), 40)

It is also an ordinary Hugging Face checkpoint (``LlamaForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load it, :func:`book_lm_path` says where it is).

**The recipe** (``make pretrain`` = ``python -m llmcore.architecture.book_lm``), deterministic
end to end:

1. data: :func:`llmcore.core.corpus.book_corpus` -- the shipped snapshot of CPython's standard
   library docstrings, language reference and source (sha256-checked);
2. tokenizer: byte-level BPE (:class:`~llmcore.architecture.tokenizer.BPETokenizer`) with 2048 ids
   trained on the training parts (pure Python, deterministic: ~16 s);
3. model: :data:`BOOK_LM_CONFIG`, ~2M parameters (4 layers, d=192, GQA with 6 query / 2 KV heads,
   512-token context, tied embeddings);
4. training: :class:`PretrainConfig` -- AdamW, warmup + cosine, windows of 512 tokens drawn from
   the three parts with fixed mixture weights; validation on the held-out docstrings every
   ``eval_every`` steps; resumable (``state_dir``: kill it and run again, it continues exactly);
5. the result is written in HF's ``save_pretrained`` layout to ``src/llmcore/data/book_lm/``
   (``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``) with
   ``training_log.json`` (per-step loss and learning rate, the validation curve, the configs, the
   corpus sha256, time and hardware).

Why not :func:`llmcore.core.checkpoints.train_once`: that is the run-time cache of models a chapter
trains (in ``output/``, retrained when missing). The book LM is *package data*: made once by this
recipe, committed, and never retrained at run time -- a missing or corrupt file is an error naming the
fix, and the tests check that the files reproduce their logged validation loss.

Validation loss is reported in nats per *byte* (the summed next-token loss divided by the UTF-8
bytes of the predicted tokens), so it is comparable with the byte-level tiny LM of the Transformer
chapter on exactly the same validation text:

$$ \text{nats/byte} = \frac{\sum_t -\log p_\theta(x_t \mid x_{<t})}{\sum_t \lvert \mathrm{bytes}(x_t) \rvert}. $$
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError

from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.tokenizer import BPETokenizer
from llmcore.architecture.training import TrainConfig, TrainResult, loss_of, train
from llmcore.core.corpus import SEPARATOR, SNAPSHOT_SHA256, book_corpus
from llmcore.core.device import cpu_name
from llmcore.core.errors import LLMCoreError
from llmcore.core.paths import output_dir
from llmcore.core.seed import seed_everything

#: Vocabulary size of the book's BPE tokenizer: 256 bytes + 1784 merges + 8 special tokens.
BOOK_VOCAB_SIZE = 2048
#: The book LM's architecture (special-token ids are the tokenizer's: <pad> 2040, <bos> 2041, <eos> 2042).
BOOK_LM_CONFIG = ModelConfig(vocab_size=BOOK_VOCAB_SIZE, d_model=192, n_layers=4, n_heads=6, n_kv_heads=2,
                             ffn_hidden=512, max_seq_len=512, tie_embeddings=True,
                             bos_id=2041, eos_id=2042, pad_id=2040)
#: The files of a complete checkpoint (HF layout + our training log).
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_log.json")


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining run. Budgets are step counts, never wall-clock time."""

    steps: int = 1200  # optimizer steps (16 x 512 tokens each: 9.8M tokens, ~3.5 passes over the data)
    batch_size: int = 16  # sequences per step
    seq_len: int = 512  # tokens per sequence (= the model's context)
    lr: float = 3e-3  # peak AdamW learning rate
    warmup_steps: int = 80  # linear warmup, then cosine decay ...
    min_lr_ratio: float = 0.1  # ... to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # on matrices and embeddings only
    grad_clip: float = 1.0  # max global gradient L2 norm
    mixture: tuple[tuple[str, float], ...] = (("docstrings", 0.45), ("topics", 0.10), ("code", 0.45))
    eval_every: int = 100  # validation (held-out docstrings) every this many steps
    save_every: int = 50  # resumable training state every this many steps
    seed: int = 0  # model init and batch order
    threads: int = 1  # torch intra-op threads (fixed: reductions depend on the split; 1 leaves a core free)

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, seq_len=self.seq_len, lr=self.lr,
                           min_lr_ratio=self.min_lr_ratio, warmup_steps=self.warmup_steps,
                           weight_decay=self.weight_decay, grad_clip=self.grad_clip, eval_every=self.eval_every,
                           seed=self.seed, desc="pretrain book LM")


@dataclass
class BookLM:
    """The loaded book LM."""

    model: Llama
    tokenizer: BPETokenizer
    log: dict  # training_log.json: configs, curves, metrics
    path: Path

    @property
    def metrics(self) -> dict:
        return self.log["metrics"]


# ---- data ----------------------------------------------------------------------------------------
def train_tokenizer() -> BPETokenizer:
    """The book's BPE tokenizer, trained on the training parts of the corpus (deterministic)."""
    return BPETokenizer.train(SEPARATOR.join(book_corpus().parts().values()), BOOK_VOCAB_SIZE)


def token_streams(tokenizer: BPETokenizer) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each training part as one 1-D id tensor, and the validation docstrings' ids."""
    corpus = book_corpus()
    parts = {name: torch.tensor(tokenizer.encode(text), dtype=torch.long) for name, text in corpus.parts().items()}
    return parts, torch.tensor(tokenizer.encode(SEPARATOR.join(corpus.docs_val)), dtype=torch.long)


def mixture_windows(streams: list[torch.Tensor], weights: torch.Tensor, batch_size: int, seq_len: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` windows of ``seq_len`` ids: each row picks a stream with probability ``weights``,
    then a uniformly random start in it. ``labels = idx`` (shifted inside the model)."""
    which = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    rows = []
    for w in which.tolist():
        s = int(torch.randint(0, len(streams[w]) - seq_len, (1,), generator=generator))
        rows.append(streams[w][s:s + seq_len])
    idx = torch.stack(rows)
    return idx, idx


@torch.no_grad()
def nats_per_byte(model: torch.nn.Module, ids: torch.Tensor, token_bytes: torch.Tensor, seq_len: int,
                  batch_size: int = 16) -> tuple[float, float]:
    """``(nats/token, nats/byte)`` over consecutive windows of ``ids``; each window predicts its last
    ``seq_len - 1`` tokens. ``token_bytes[i]`` = UTF-8 length of id ``i`` (all ones for a byte model)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    n = (len(ids) - 1) // seq_len
    windows = ids[: n * seq_len].view(n, seq_len)
    nats, tokens, nbytes = 0.0, 0, 0
    for i in range(0, n, batch_size):
        w = windows[i:i + batch_size].to(dev)
        k = w.shape[0] * (seq_len - 1)
        nats += float(loss_of(model, w, w)) * k
        tokens += k
        nbytes += int(token_bytes[w[:, 1:].cpu()].sum())
    model.train(was)
    return nats / tokens, nats / nbytes


def token_byte_lengths(tokenizer: BPETokenizer) -> torch.Tensor:
    """UTF-8 byte length of every id (special tokens count 0: they are not text)."""
    return torch.tensor([len(tokenizer.vocab.get(i, b"")) for i in range(tokenizer.vocab_size)])


# ---- the recipe ----------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig = PretrainConfig(), out: str | Path | None = None,
             work: str | Path | None = None, device: str = "cpu", tokenizer: BPETokenizer | None = None) -> BookLM:
    """Run the recipe; write the checkpoint to ``out`` (default: the package's ``data/book_lm``).

    ``work`` (default ``output/book_lm_pretrain``) keeps the resumable training state: running the
    recipe again after an interruption continues from the last saved step. ``tokenizer``: an
    already-trained :func:`train_tokenizer` result, to skip retraining it (the tests pass one).
    """
    out = Path(out) if out is not None else book_lm_path()
    work = Path(work) if work is not None else output_dir("book_lm_pretrain")
    seed_everything(cfg.seed, threads=cfg.threads)
    t0 = time.perf_counter()
    tokenizer = tokenizer or train_tokenizer()
    parts, val_ids = token_streams(tokenizer)
    names = [name for name, _ in cfg.mixture]
    streams = [parts[name] for name in names]
    weights = torch.tensor([w for _, w in cfg.mixture], dtype=torch.float)
    tb = token_byte_lengths(tokenizer)
    data_s = time.perf_counter() - t0

    model = Llama(BOOK_LM_CONFIG).to(device)
    tcfg = cfg.train_config()
    res = train(model, tcfg, lambda g: mixture_windows(streams, weights, cfg.batch_size, cfg.seq_len, g),
                eval_fn=lambda m: nats_per_byte(m, val_ids, tb, cfg.seq_len)[0], state_dir=work,
                save_every=cfg.save_every)
    per_token, per_byte = nats_per_byte(model, val_ids, tb, cfg.seq_len)
    log = {
        "pretrain_config": asdict(cfg), "model_config": asdict(BOOK_LM_CONFIG),
        "corpus_sha256": SNAPSHOT_SHA256, "tokens": {n: len(t) for n, t in parts.items()} | {"val": len(val_ids)},
        "metrics": {"val_nats_per_token": per_token, "val_nats_per_byte": per_byte,
                    "val_bits_per_byte": per_byte / 0.6931471805599453, "params": model.num_params(),
                    "final_train_loss": sum(res.loss[-50:]) / len(res.loss[-50:])},
        "curves": _curves(res, cfg, bytes_per_token=per_token / per_byte),
        "run": {"train_s": res.wall_s, "data_s": data_s, "device": str(device), "torch": torch.__version__,
                "python": platform.python_version(), "machine": platform.machine(),
                "processor": cpu_name(), "threads": cfg.threads},
    }
    write_checkpoint(model, tokenizer, log, out)
    return load_book_lm(path=out)


def _curves(res: TrainResult, cfg: PretrainConfig, bytes_per_token: float) -> dict:
    """Per-step training loss, learning rate and gradient norm; the validation curve in nats/token and
    nats/byte (the same windows every time, so the two differ by the constant ``bytes_per_token``)."""
    return {"loss": [round(x, 5) for x in res.loss], "lr": [round(x, 8) for x in res.lr],
            "grad_norm": [round(x, 4) for x in res.grad_norm],
            "val_nats_per_token": [[s, round(v, 5)] for s, v in res.val],
            "val_nats_per_byte": [[s, round(v / bytes_per_token, 5)] for s, v in res.val],
            "tokens_per_step": cfg.batch_size * cfg.seq_len}


def write_checkpoint(model: Llama, tokenizer: BPETokenizer, log: dict, out: Path) -> Path:
    """HF layout + ``training_log.json``, written to a temporary folder and renamed into place."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        for f in tmp.iterdir():
            f.unlink()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "training_log.json").write_text(json.dumps(log))
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (tmp / name).replace(out / name)
    tmp.rmdir()
    return out


# ---- loading -------------------------------------------------------------------------------------
def book_lm_path() -> Path:
    """Where the shipped checkpoint lives (inside the installed package)."""
    return Path(str(resources.files("llmcore") / "data" / "book_lm"))


@functools.lru_cache(maxsize=1)
def book_tokenizer() -> BPETokenizer:
    """The book LM's tokenizer alone (the shipped ``tokenizer.json``; loaded once per process).

    The post-training chapters' chat template (:mod:`llmcore.alignment.tasks`) is written in these ids.
    """
    path = book_lm_path()
    try:
        return BPETokenizer.from_pretrained(path)
    except (ValueError, KeyError, OSError) as e:
        raise LLMCoreError(f"book tokenizer in {path} is missing or corrupt ({type(e).__name__}); restore it with "
                           "`git checkout -- src/llmcore/data/book_lm` or rebuild it with `make pretrain`") from None


def load_book_lm(device: str | torch.device = "cpu", path: str | Path | None = None) -> BookLM:
    """Load the book LM (eval mode). A missing or corrupt file is one clear :class:`LLMCoreError`."""
    path = Path(path) if path is not None else book_lm_path()
    fix = ("restore it with `git checkout -- src/llmcore/data/book_lm` or rebuild it with `make pretrain`")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise LLMCoreError(f"book LM checkpoint {path} lacks {', '.join(missing)}; {fix}")
    try:
        log = json.loads((path / "training_log.json").read_text())
        tokenizer = BPETokenizer.from_pretrained(path)
        model = Llama.from_pretrained(path, device=device).eval()
    except (SafetensorError, ValueError, KeyError, RuntimeError, OSError) as e:
        raise LLMCoreError(f"book LM checkpoint {path} is corrupt ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:120]}); {fix}") from None
    except LLMCoreError as e:
        raise LLMCoreError(f"{e}; {fix}") from None
    return BookLM(model, tokenizer, log, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pretrain the book LM (resumable; deterministic).")
    ap.add_argument("--steps", type=int, default=PretrainConfig.steps, help="optimizer steps")
    ap.add_argument("--out", default=None, help="checkpoint folder (default: the package's data/book_lm)")
    ap.add_argument("--work", default=None, help="resumable state folder (default: output/book_lm_pretrain)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    try:
        lm = pretrain(replace(PretrainConfig(), steps=args.steps), args.out, args.work, args.device)
    except LLMCoreError as e:
        print(f"error: {e}")
        return 2
    m = lm.metrics
    print(f"book LM: {m['params']:,} parameters, val {m['val_nats_per_byte']:.4f} nats/byte -> {lm.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
