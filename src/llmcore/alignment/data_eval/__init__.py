"""Data & evaluation: cleaning, MinHash-LSH dedup, decontamination, synthetic data, metrics, attacks, judges.

Submodules: :mod:`.clean` (normalisation, quality rules, PII, exact dedup, the raw corpus),
:mod:`.dedup` (MinHash, LSH, n-gram decontamination), :mod:`.metrics` (pass@k, ECE, bootstrap, kappa),
:mod:`.models` (the QA task, the hashed n-gram classifier, perturbations, the pairwise judge),
:mod:`.experiment` (the closed loop: ``run``), :mod:`.plots` (the diagrams).
"""

import importlib

__all__ = ["THREADS", "DataEvalConfig", "make_report", "run"]


def __getattr__(name: str):
    """The closed loop's names load on first use (PEP 562): other chapters import :mod:`.metrics` alone (GRPO's
    McNemar test and pass@k) and must not need this chapter's optional dependencies (datasketch, scikit-learn)."""
    if name in __all__:
        return getattr(importlib.import_module("llmcore.alignment.data_eval.experiment"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
