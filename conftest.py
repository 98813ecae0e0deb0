"""Repository-wide pytest hooks (loaded for `make unit` and `make nbval` alike)."""

from __future__ import annotations

# nbval waits this long for each of a finished cell's output messages before it declares the kernel hung (its
# default, 5 s, is fixed in nbval's code). With two test workers on two cores a busy machine can hold a finished
# cell's last messages for longer (seen once: a 132-s diffusion cell, "Timeout of 5 seconds exceeded waiting
# for output"), so the wait is 60 s; a cell that really hangs still fails on --nbval-cell-timeout.
NBVAL_OUTPUT_TIMEOUT_S = 60


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if type(item).__name__ == "IPyNbCell" and hasattr(item, "output_timeout"):
            item.output_timeout = NBVAL_OUTPUT_TIMEOUT_S
