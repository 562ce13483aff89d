"""Ultra-slow diffusion (the paper's Figure 2): weight distance from init against updates.

    python -m tunegap.studies.diffusion

For several batch sizes, with and without sqrt LR scaling: ||w_t - w_0|| against the number of
updates on a log axis. The paper finds straight lines (distance ~ log t) whose slopes come
together once the learning rate is scaled; the fitted slopes are in the legend and in the
table. The small-batch baseline (B0) is one line and one row, the reference of every
exponent: at B0 every exponent gives the same learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Unpack

import numpy as np
import pandas as pd

from tunegap.analysis import plots
from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import float_list, int_list
from tunegap.study import Study
from tunegap.study_options import StudyOptions, own_defaults, study_fields

QUESTION = (
    "Does the weight distance from initialization grow like log(updates), and does sqrt LR "
    "scaling bring the curves of different batch sizes together?"
)


# The study's own defaults of the common options, for its function and its command alike.
DEFAULTS = {"seeds": 3}


def figures(cells, trials, epochs) -> dict:
    # The baseline is one line whatever exponent its trials carry (the same lr at B0).
    base = trials["is_baseline"].fillna(False).astype(bool)
    trials = trials.assign(lr_exponent=trials["lr_exponent"].where(~base, 0.0))
    return {"diffusion": plots.diffusion_plot(epochs, trials)}


def slope_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The fitted diffusion slope per cell, the small batch once.

    The baseline (B=B0) is one row, the shared reference of every lr exponent: at B0 every
    exponent gives the same learning rate, so its trials are grouped by seed, never counted
    once per exponent, and its lr exponent is the one it was run with (0 once
    `Study.trial_configs` runs B0 once). Other rows are (batch size, lr exponent). `seeds` is
    the number of distinct seeds of the row with a completed trial and a finite fit; `slope`
    and `r2` are means over those seeds (a seed run twice, identically, counts once, as the
    mean of its runs).
    """
    done = trials[trials["outcome"] == "completed"]
    fitted = done[np.isfinite(pd.to_numeric(done["diffusion_slope"], errors="coerce")
                              .astype(float))]
    base = trials["is_baseline"].fillna(False).astype(bool)
    rows = []
    groups = [(True, trials[base])] + [
        (False, g) for _, g in trials[~base].groupby(["batch_size", "lr_exponent"], sort=True)
    ]
    for is_base, group in groups:
        if group.empty:
            continue
        ok = fitted[fitted["trial_id"].isin(group["trial_id"])]
        per_seed = ok.groupby("seed")[["diffusion_slope", "diffusion_r2"]].mean()
        exponents = sorted(set(group["lr_exponent"].astype(float)))
        rows.append({
            "batch_size": int(group["batch_size"].iloc[0]),
            "lr_exponent": ", ".join(f"{a:g}" for a in exponents),
            "is_baseline": is_base,
            "seeds": len(per_seed),
            "seeds_run": int(group["seed"].nunique()),
            "slope": float(per_seed["diffusion_slope"].mean()) if len(per_seed) else math.nan,
            "r2": float(per_seed["diffusion_r2"].mean()) if len(per_seed) else math.nan,
        })
    return pd.DataFrame(rows, columns=["batch_size", "lr_exponent", "is_baseline", "seeds",
                                       "seeds_run", "slope", "r2"])


def report(cells, trials, epochs) -> str:
    """The fitted diffusion slope per batch size and lr exponent; the baseline once."""
    lines = [
        "Slope of ||w_t - w_0|| against ln(updates) over the high-learning-rate phase "
        "(mean over the row's seeds; R² of the fit). The baseline (B=B0) is one row, the "
        "reference of every lr exponent (at B0 every exponent gives the same learning rate); "
        "seeds: the distinct seeds with a fit, of those run.",
        "",
        "| batch | lr exponent | seeds | slope | R² |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in slope_table(trials).itertuples():
        batch = f"{r.batch_size} (baseline)" if r.is_baseline else str(r.batch_size)
        lines.append(f"| {batch} | {r.lr_exponent} | {r.seeds}/{r.seeds_run} | "
                     f"{_number(r.slope, '.3f')} | {_number(r.r2, '.3f')} |")
    return "\n".join(lines)


def _number(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "—"


def study(*, batch_sizes: Sequence[int] = (32, 128, 512, 2048),
          exponents: Sequence[float] = (0.0, 0.5), **options: Unpack[StudyOptions]) -> Study:
    """The diffusion study: `batch_sizes` x lr `exponents`, 3 seeds by default; `options`
    as `StudyOptions`."""
    return Study(
        name="diffusion",
        grid={"batch_size": tuple(batch_sizes), "lr_exponent": tuple(exponents)},
        question=QUESTION,
        figures=figures,
        report=report,
        **study_fields("diffusion", options, **DEFAULTS),
    )


def parser():
    own = own_defaults(study)
    p = study_parser("diffusion", __doc__, defaults=DEFAULTS)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=own["batch_sizes"])
    p.add_argument("--exponents", type=float_list("--exponents"), default=own["exponents"])
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
