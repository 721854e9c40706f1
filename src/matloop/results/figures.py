"""What every report figure does around its drawing: a headless pyplot, then lay out, write
and close (:mod:`matloop.results.plots`, :mod:`matloop.results.latent`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (flows run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay ``fig`` out, write it to ``path`` and close it (a report draws many figures)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
