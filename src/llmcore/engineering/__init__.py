"""Part 4 — engineering & scaling: distributed training (TP/PP/EP, PD disaggregation), ZeRO."""
