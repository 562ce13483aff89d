"""Paired comparisons between cells of one study: does one remedy beat another?

A trial's seed fixes its initial weights and its data order, so two cells of a study that
ran the same seeds can be compared seed by seed: `compute_effects(trials, comparisons, ...)`
gives, per `Comparison` (cell A against cell B, each picked by knob values), the mean of
d = acc_A - acc_B over the seeds both have, its paired t interval at the design's confidence
and `paired_effect`'s verdict (better, worse, equivalent at the margin, inconclusive). Over the table, Holm at 5% on the "better" tests, on the "worse" tests and on
the equivalence tests, each a family of its own (`verdict_holm`), after Bonferroni over the
design's looks when seeds were added on the way.

**The rule** (`paired_effect`): the paired t interval of mean(d) at the design's confidence;
**better** when its lower end > 0, **worse** when its upper end < 0, **equivalent** when it
lies within [-margin, margin], else **inconclusive** (`tunegap.analysis.decide`'s words).

A study names its questions as comparisons (`Study.comparisons`): table1's "+GBN against
+LR", ghost_size's "ghost 32 against plain BN at B=512", ...

>>> import pandas as pd
>>> trials = pd.DataFrame({"batch_size": [512] * 4, "ghost_batch_size": [32, 32, None, None],
...     "seed": [0, 1, 0, 1], "outcome": ["completed"] * 4, "test_acc": [91.0, 93.0, 90.0, 92.1]})
>>> effects = compute_effects(trials, [Comparison(label="GBN vs BN",
...     a={"batch_size": 512, "ghost_batch_size": 32},
...     b={"batch_size": 512, "ghost_batch_size": None})], margin=0.5)
>>> effects[["comparison", "n_pairs", "verdict"]].values.tolist()
[['GBN vs BN', 2, 'better']]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tunegap.analysis.cells import plain_value
from tunegap.analysis.decide import (
    ACCURACIES,
    BETTER,
    CONFIDENCE,
    EQUIVALENT,
    FAMILY_ALPHA,
    INCONCLUSIVE,
    WORSE,
    SeedDesign,
    check_margin,
    counted_seeds,
    holm,
)

EFFECTS_FILE = "effects.csv"


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Cell A against cell B: each the trials whose knobs take these values (None matches a
    missing value, e.g. a ghost size of None for plain BatchNorm)."""

    label: str
    a: Mapping[str, Any] = field(default_factory=dict)
    b: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Effect:
    """`paired_effect`'s answer: cell A against cell B on the seeds they share."""

    verdict: str  # better | worse | equivalent | inconclusive
    effect: float  # mean over shared seeds of acc_A - acc_B, points
    low: float
    high: float
    n_pairs: int
    p_better: float  # one-sided paired t p-value of H0: effect <= 0
    p_worse: float  # of H0: effect >= 0
    p_equivalent: float  # TOST: the larger p of H0: effect <= -margin and H0: effect >= margin
    a_mean: float  # mean of A over the pairs
    b_mean: float  # mean of B over the pairs


def paired_effect(a: Mapping[int, float], b: Mapping[int, float], *, margin: float,
                  confidence: float = CONFIDENCE) -> Effect:
    """Cell A against cell B, seed by seed: `a` and `b` map seed -> test accuracy (points).

    Seeds present with a finite accuracy in both are the pairs; d = A - B per pair; the
    interval is the paired t interval of mean(d) at `confidence`. Verdict: "better" if its
    lower end > 0, "worse" if its upper end < 0, "equivalent" if it lies within
    [-margin, margin], else (or with fewer than 2 pairs) "inconclusive". Without spread in
    d the interval is the exact difference.
    """
    margin = check_margin(margin)
    seeds = sorted(s for s in set(a) & set(b)
                   if _is_finite(a[s]) and _is_finite(b[s]))
    d = np.array([float(a[s]) - float(b[s]) for s in seeds])
    mean = float(d.mean()) if len(d) else math.nan
    a_mean = float(np.mean([float(a[s]) for s in seeds])) if seeds else math.nan
    b_mean = float(np.mean([float(b[s]) for s in seeds])) if seeds else math.nan
    if len(d) < 2:
        return Effect(INCONCLUSIVE, mean, math.nan, math.nan, len(d), math.nan, math.nan,
                      math.nan, a_mean, b_mean)
    if np.ptp(d) == 0:
        low = high = mean
        p_better = 0.0 if mean > 0 else 1.0
        p_worse = 0.0 if mean < 0 else 1.0
        p_equivalent = 0.0 if abs(mean) < margin else 1.0
    else:
        from scipy import stats

        se = float(d.std(ddof=1)) / math.sqrt(len(d))
        t = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1))
        low, high = mean - t * se, mean + t * se
        p_better = float(stats.t.sf(mean / se, len(d) - 1))
        p_worse = float(stats.t.cdf(mean / se, len(d) - 1))
        p_equivalent = float(max(stats.t.sf((mean + margin) / se, len(d) - 1),
                                 stats.t.cdf((mean - margin) / se, len(d) - 1)))
    if low > 0:
        verdict = BETTER
    elif high < 0:
        verdict = WORSE
    elif -margin <= low and high <= margin:
        verdict = EQUIVALENT
    else:
        verdict = INCONCLUSIVE
    return Effect(verdict, mean, low, high, len(d), p_better, p_worse, p_equivalent,
                  a_mean, b_mean)


def _is_finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)



def compute_effects(trials_df: pd.DataFrame, comparisons: Sequence[Comparison], *,
                    margin: float, accuracy: str = "final",
                    design: SeedDesign | None = None) -> pd.DataFrame:
    """One row per comparison: comparison, a, b (the knob values), n_pairs, a_mean, b_mean
    (over the paired seeds), effect (mean of A - B, points), effect_ci_low/high, verdict,
    p_better, p_worse, p_equivalent (TOST), their Holm adjustments, verdict_holm, margin,
    confidence. Seeds count when completed with a finite accuracy on both sides."""
    margin = check_margin(margin)
    design = design or SeedDesign.fixed(2)
    acc_col = ACCURACIES[accuracy]
    rows = []
    for comparison in comparisons:
        a = _by_seed(trials_df, comparison.a, acc_col)
        b = _by_seed(trials_df, comparison.b, acc_col)
        effect = paired_effect(a, b, margin=margin, confidence=design.confidence)
        rows.append({
            "comparison": comparison.label,
            "a": _describe(comparison.a),
            "b": _describe(comparison.b),
            "n_pairs": effect.n_pairs,
            "a_mean": effect.a_mean,
            "b_mean": effect.b_mean,
            "effect": effect.effect,
            "effect_ci_low": effect.low,
            "effect_ci_high": effect.high,
            "verdict": effect.verdict,
            "p_better": effect.p_better,
            "p_worse": effect.p_worse,
            "p_equivalent": effect.p_equivalent,
            "margin": margin,
            "confidence": design.confidence,
        })
    columns = ["comparison", "a", "b", "n_pairs", "a_mean", "b_mean", "effect",
               "effect_ci_low", "effect_ci_high", "verdict", "p_better", "p_worse",
               "p_equivalent", "p_better_holm", "p_worse_holm", "p_equivalent_holm",
               "verdict_holm", "margin", "confidence"]
    if not rows:
        return pd.DataFrame(columns=columns)
    effects = pd.DataFrame(rows)
    looks = len(design.looks)
    for name in (BETTER, WORSE, EQUIVALENT):
        raw = np.minimum(1.0, looks * effects[f"p_{name}"].to_numpy(dtype=float))
        effects[f"p_{name}_holm"] = holm(raw)
    effects["verdict_holm"] = [
        _holm_verdict(r) for r in effects.to_dict("records")
    ]
    return effects[columns]


def comparisons_within(trials_df: pd.DataFrame, *, group_by: Sequence[str],
                       vary: Sequence[str], reference: Sequence[Any] | None = None,
                       ) -> list[Comparison]:
    """Comparisons between the non-baseline cells of `trials_df` that share the `group_by`
    knobs and differ in the `vary` ones: each against `reference` (values of `vary`) where
    given and present, else every pair (the later value, in knob order, as A).

    >>> import pandas as pd
    >>> trials = pd.DataFrame({"is_baseline": [False] * 3, "batch_size": [512] * 3,
    ...                        "ghost_batch_size": [16, 32, None]})
    >>> [c.label for c in comparisons_within(trials, group_by=["batch_size"],
    ...                                      vary=["ghost_batch_size"], reference=[None])]
    ['batch_size=512: ghost_batch_size=16 vs ghost_batch_size=BN', 'batch_size=512: ghost_batch_size=32 vs ghost_batch_size=BN']
    """
    from tunegap.analysis.cells import knob_keys, sorted_keys

    rows = trials_df[~trials_df["is_baseline"].fillna(False).astype(bool)]
    keys = sorted_keys(knob_keys(rows, [*group_by, *vary]))
    groups: dict[tuple, list[tuple]] = {}
    for key in keys:
        groups.setdefault(key[:len(group_by)], []).append(key[len(group_by):])
    ref = tuple(plain_value(v) for v in reference) if reference is not None else None
    out = []
    for group, values in groups.items():
        where = dict(zip(group_by, group, strict=True))
        if ref is not None:
            pairs = [(v, ref) for v in values if v != ref] if ref in values else []
        else:
            pairs = [(values[j], values[i]) for i in range(len(values))
                     for j in range(i + 1, len(values))]
        for a, b in pairs:
            a_knobs = {**where, **dict(zip(vary, a, strict=True))}
            b_knobs = {**where, **dict(zip(vary, b, strict=True))}
            label = (f"{_describe(where)}: {_describe(dict(zip(vary, a, strict=True)))} vs "
                     f"{_describe(dict(zip(vary, b, strict=True)))}")
            out.append(Comparison(label=label, a=a_knobs, b=b_knobs))
    return out


def effects_markdown(effects: pd.DataFrame) -> str:
    """The comparisons as a markdown table, with the rule in one sentence under it."""
    if effects.empty:
        return ""
    lines = [
        "| comparison | pairs | A (%) | B (%) | A - B (pts) | interval | verdict | verdict (Holm) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in effects.to_dict("records"):
        interval = (f"[{r['effect_ci_low']:+.2f}, {r['effect_ci_high']:+.2f}]"
                    if math.isfinite(r["effect_ci_low"]) else "—")
        lines.append(
            f"| {r['comparison']} | {r['n_pairs']} | {_num(r['a_mean'])} | {_num(r['b_mean'])} "
            f"| {_num(r['effect'], '+.2f')} | {interval} | {r['verdict']} | "
            f"{r['verdict_holm']} |")
    conf = 100 * float(effects["confidence"].iloc[0])
    margin = float(effects["margin"].iloc[0])
    lines += ["", f"Paired comparisons on the seeds both cells ran: the {conf:.3g}% paired t "
                  f"interval of A - B; better if it lies above 0, worse if below, equivalent "
                  f"if within ±{margin:g} points, else inconclusive; verdict (Holm): Holm at "
                  f"{100 * FAMILY_ALPHA:g}% over these {len(effects)} comparisons, for each "
                  "kind of claim."]
    return "\n".join(lines)


def _holm_verdict(row: Mapping[str, Any]) -> str:
    def holds(name: str) -> bool:
        value = row[f"p_{name}_holm"]
        return math.isfinite(value) and value < FAMILY_ALPHA

    return next((v for v in (BETTER, WORSE, EQUIVALENT) if holds(v)), INCONCLUSIVE)


def _by_seed(trials: pd.DataFrame, knobs: Mapping[str, Any], acc_col: str) -> dict[int, float]:
    mask = counted_seeds(trials["outcome"].tolist(), trials[acc_col].tolist())
    for knob, value in knobs.items():
        if knob not in trials.columns:
            return {}
        # A list, not Series.map: pandas would turn None back into NaN in a float column.
        mask &= np.array([_same(plain_value(v), value) for v in trials[knob].tolist()],
                         dtype=bool)
    return {int(seed): float(acc)
            for seed, acc in zip(trials.loc[mask, "seed"], trials.loc[mask, acc_col], strict=True)}


def _same(value: Any, wanted: Any) -> bool:
    wanted = plain_value(wanted)
    if value is None or wanted is None:
        return value is None and wanted is None
    if isinstance(value, int | float) and isinstance(wanted, int | float):
        return math.isclose(float(value), float(wanted))
    return str(value) == str(wanted)


def _describe(knobs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_knob_text(k, v)}" for k, v in knobs.items())


def _knob_text(knob: str, value: Any) -> str:
    if knob == "ghost_batch_size" and value is None:
        return "BN"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _num(value: float, spec: str = ".2f") -> str:
    return format(value, spec) if math.isfinite(value) else "—"
