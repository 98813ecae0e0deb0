"""Shared plumbing: seeding, devices, progress bars, plotting, source display, registry, reports."""

from llmcore.core.device import pick_device
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.paths import output_dir, repo_root
from llmcore.core.plotting import PALETTE, save_figure, use_style
from llmcore.core.progress import progress
from llmcore.core.report import Criterion, Report
from llmcore.core.seed import seed_everything
from llmcore.core.source import show_source, source_of

__all__ = [
    "PALETTE",
    "Criterion",
    "LLMCoreError",
    "Report",
    "check_range",
    "output_dir",
    "pick_device",
    "progress",
    "repo_root",
    "save_figure",
    "seed_everything",
    "show_source",
    "source_of",
    "use_style",
]
