"""Shared test set-up: offline, quiet progress bars, Agg plots, small thread count."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LLMCORE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Triton kernels run on a CPU only under the interpreter, which must be chosen before triton is imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
