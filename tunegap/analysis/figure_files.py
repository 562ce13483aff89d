"""Figures to PNG files in a run folder, each written atomically and then closed."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

from matplotlib.figure import Figure

from tunegap.atomic import write_atomically

__all__ = ["save_figures"]


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def save_figures(
    figs: Mapping[str, Figure], out_dir: str | os.PathLike[str], *, dpi: int = 120
) -> list[Path]:
    """Write each figure as `<name>.png` under `out_dir` (created if needed) and close it.

    Each PNG is written atomically (`tunegap.atomic`), so a reader never sees half an
    image. Names must be plain file stems (letters, digits, `_`, `.`, `-`). Every
    figure is closed even when one fails to save.
    """
    bad = [name for name in figs if not _NAME.match(name)]
    if bad:
        raise ValueError(
            f"figure name(s) {bad} are not plain file names: use letters, digits, _ . -"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for name, fig in figs.items():
            png = partial(fig.savefig, dpi=dpi, format="png", bbox_inches="tight")
            paths.append(write_atomically(out / f"{name}.png", png))
    finally:
        _close(figs.values())
    return paths


def _close(figs: Iterable[Figure]) -> None:
    # Figures made here are not registered with pyplot; ones a caller made with pyplot are,
    # and only pyplot can release them. Import it only if the caller already did.
    pyplot = sys.modules.get("matplotlib.pyplot")
    for fig in figs:
        if pyplot is not None:
            pyplot.close(fig)
        fig.clear()
