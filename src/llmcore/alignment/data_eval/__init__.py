"""Data & evaluation: cleaning, MinHash-LSH dedup, decontamination, synthetic data, metrics, attacks, judges.

Submodules: :mod:`.clean` (normalisation, quality rules, PII, exact dedup, the raw corpus),
:mod:`.dedup` (MinHash, LSH, n-gram decontamination), :mod:`.metrics` (pass@k, ECE, bootstrap, kappa),
:mod:`.models` (the QA task, the hashed n-gram classifier, perturbations, the pairwise judge),
:mod:`.experiment` (the closed loop: ``run``), :mod:`.plots` (the diagrams).
"""

from llmcore.alignment.data_eval.experiment import THREADS, DataEvalConfig, make_report, run

__all__ = ["THREADS", "DataEvalConfig", "make_report", "run"]
