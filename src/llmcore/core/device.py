"""Device selection: ``"auto"`` picks CUDA when present, else CPU."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from llmcore.core.errors import LLMCoreError

VALID_DEVICES = ("auto", "cpu", "cuda")
CPU = torch.device("cpu")  #: default ``device`` of ``experiment(cfg, device, seed)`` functions


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a ``torch.device``) to a ``torch.device``.

    Idempotent: ``pick_device(pick_device(x)) == pick_device(x)``, so code handed an already
    resolved device may pass it through. The registry (``run_module``) and each chapter's setup cell
    resolve the device once; ``experiment(cfg, device, seed)`` functions take the result.
    Asking for CUDA on a machine without a GPU is a clear :class:`LLMCoreError`,
    not a silent fall-back to the CPU.
    """
    if isinstance(device, torch.device):
        device = f"{device.type}:{device.index}" if device.index is not None else device.type
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise LLMCoreError(
                f"device={device!r} was requested but no CUDA GPU is available here; "
                "use device='cpu' or device='auto'"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LLMCoreError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise LLMCoreError(f"unknown device {device!r}; valid: {', '.join(VALID_DEVICES)} (or cuda:N)")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere), for result records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
