"""Shared test set-up: offline, quiet progress bars, Agg plots, small thread count."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LLMCORE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
