"""One plot style for the whole book, and saving figures next to a run's report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from llmcore.core.paths import output_dir

#: Colours used consistently across chapters (colour-blind friendly, Okabe–Ito).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def use_style() -> None:
    """Apply the book's matplotlib style (PNG output, readable sizes, our palette)."""
    from cycler import cycler

    matplotlib.rcParams.update(
        {
            "figure.figsize": (7.0, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 110,
            "savefig.bbox": "tight",
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": cycler(color=PALETTE),
            "font.size": 10,
            "legend.frameon": False,
            "svg.hashsalt": "llmcore",
        }
    )
    try:  # inline PNG in notebooks (SVG ids would break nbval comparisons)
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except Exception:  # noqa: BLE001 - not in a notebook
        pass


def save_figure(fig, module: str, name: str) -> str:
    """Save ``fig`` as ``output/figures/<module>/<name>.png``; return the path as a string."""
    path: Path = output_dir("figures", module) / f"{name}.png"
    fig.savefig(path)
    return str(path)
