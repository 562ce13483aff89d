"""The studies shipped in `studies/`: the command each folder's result was made with, the
study each folder holds, and the question each asks."""

from __future__ import annotations

import importlib

# Each study's options beyond `tunegap run NAME` (its defaults), in the README's order.
COMMANDS: dict[str, tuple[str, ...]] = {
    "ghost_size": (),
    "batch_size": (),
    "lr_scaling": (),
    "regime_length": (),
    "table1": (),
    "diffusion": (),
    "frontier": ("--batch-sizes", "256,1024", "--margin", "1.0", "--max-seeds", "3",
                 "--epochs", "4"),
    "warmup": (),
    "optimizers": (),
    # The same questions on real images (Fashion-MNIST from Debian's package).
    "table1_fashion": ("--workload", "fashion-cnn", "--max-seeds", "6"),
    "table1_fashion_f1": ("--workload", "fashion-f1", "--max-seeds", "6"),
    # Margin 0.5 as table1_fashion: the real data's gaps are a point or two, not MNIST-1D's.
    "frontier_fashion": ("--workload", "fashion-cnn", "--batch-sizes", "1024", "--max-seeds", "3"),
}
# Folders that hold a study under another name: the study each one runs.
STUDY_OF: dict[str, str] = {"table1_fashion": "table1", "table1_fashion_f1": "table1",
                             "frontier_fashion": "frontier"}
# A second run of a study under other options, written to `studies/<name>/<subfolder>/`, and
# the study module's function (cells_main, cells_companion, workload) -> markdown that puts
# both side by side in the study's README.
COMPANIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "table1": ("authors", ("--protocol", "authors"), "protocols_markdown"),
}
# Studies whose result column is the closing multiplier per batch size.
FRONTIER_STUDIES = ("frontier",)
QUESTION_PREFIX = "> **Question:** "


def study_of(folder: str) -> str:
    """The study a folder of `studies/` holds (`STUDY_OF`, else its own name)."""
    return STUDY_OF.get(folder, folder)


def question_of(name: str) -> str:
    """The module's QUESTION, else the first paragraph of its docstring, on one line."""
    module = importlib.import_module(f"tunegap.studies.{name}")
    text = getattr(module, "QUESTION", None) or (module.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(text.split())
