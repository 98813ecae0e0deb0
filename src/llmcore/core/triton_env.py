"""Import Triton so that it also works without a GPU: ``TRITON_INTERPRET=1`` must be set *before*
``import triton`` (Triton's own ``tl.zeros``, ``tl.cdiv``... are decorated when ``triton.language`` is
imported), so every module that defines a Triton kernel imports it from here::

    from llmcore.core.triton_env import triton, tl, INTERPRET

On a machine without CUDA the interpreter runs kernels on CPU tensors with numpy (slowly: keep
sizes tiny); with a GPU the same kernels are compiled. ``triton`` is ``None`` when the package is
not installed (it is in the ``kernels`` extra). Import this module before anything else imports
Triton (a test module or a notebook: import it first).
"""

from __future__ import annotations

import os
import sys

import torch

_already_imported = "triton" in sys.modules
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: True when kernels run in the interpreter (on CPU tensors).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is an optional extra
    triton = None
    tl = None


def interpreter_ready() -> bool:
    """False when Triton was imported before ``TRITON_INTERPRET=1`` was set (its built-ins are then compiled-only)."""
    if triton is None or not INTERPRET:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def kernel_device() -> torch.device:
    """Where Triton kernels take their tensors: the CPU under the interpreter, the GPU when compiled."""
    return torch.device("cpu") if INTERPRET else torch.device("cuda")


def available() -> bool:
    """Triton is importable and can run here (compiled on CUDA, or interpreted on CPU)."""
    if triton is None:
        return False
    return interpreter_ready() if INTERPRET else torch.cuda.is_available()


def why_unavailable() -> str:
    if triton is None:
        return "Triton is not installed (pip install 'llmcore[kernels]')"
    if INTERPRET and not interpreter_ready():
        return ("Triton was imported before TRITON_INTERPRET=1 was set; import llmcore.core.triton_env "
                "first (or export TRITON_INTERPRET=1) in a fresh process")
    return "no CUDA GPU and the Triton interpreter is off (set TRITON_INTERPRET=1)"
