"""Part 1 — RL foundations: MDPs, dynamic programming, TD learning, advantages."""
