"""Part 6 — offline RL: fixed datasets, extrapolation error, behaviour cloning, BCQ and CQL."""
