"""Paired comparisons between cells (`tunegap.analysis.effects`), checked against a paired t
interval computed by hand, on tables whose seeds share an effect across cells."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tunegap.analysis.decide import SeedDesign
from tunegap.analysis.effects import Comparison, comparisons_within, compute_effects, paired_effect


def trials_with_a_shared_seed_effect(n_seeds: int = 5, shift: float = 0.8) -> pd.DataFrame:
    """B=2048: ghost 128 beats plain BN by `shift` points on every seed, but each seed moves
    both cells by up to 10 points (as seed 0 did in the shipped ghost_size map)."""
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 4.0, n_seeds)
    rows = []
    for seed in range(n_seeds):
        for ghost, mean in ((128.0, 90.0 + shift), (None, 90.0)):
            rows.append({"is_baseline": False, "batch_size": 2048, "ghost_batch_size": ghost,
                         "seed": seed, "outcome": "completed",
                         "test_acc": mean + seed_effect[seed] + rng.normal(0, 0.1)})
        rows.append({"is_baseline": True, "batch_size": 32, "ghost_batch_size": None,
                     "seed": seed, "outcome": "completed", "test_acc": 97.0})
    return pd.DataFrame(rows)


def test_pairing_removes_the_shared_seed_effect_and_matches_a_paired_t_by_hand():
    trials = trials_with_a_shared_seed_effect()
    comparisons = comparisons_within(trials, group_by=["batch_size"], vary=["ghost_batch_size"],
                                     reference=[None])
    assert [c.label for c in comparisons] == [
        "batch_size=2048: ghost_batch_size=128 vs ghost_batch_size=BN"]
    effects = compute_effects(trials, comparisons, margin=0.5)
    row = effects.iloc[0]
    a = trials[trials["ghost_batch_size"] == 128].sort_values("seed")["test_acc"].to_numpy()
    b = trials[trials["ghost_batch_size"].isna() & ~trials["is_baseline"]].sort_values(
        "seed")["test_acc"].to_numpy()
    d = a - b
    half = stats.t.ppf(0.95, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert row["effect"] == pytest.approx(d.mean())
    assert (row["effect_ci_low"], row["effect_ci_high"]) == pytest.approx(
        (d.mean() - half, d.mean() + half))
    assert row["verdict"] == "better" and row["n_pairs"] == 5
    # Unpaired, the same numbers decide nothing: the seed effect swamps the 0.8 points.
    unpaired = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.90)
    assert unpaired.low < 0 < unpaired.high


def test_each_effect_verdict():
    base = {s: 90.0 + s for s in range(4)}
    assert paired_effect({s: v + 1.0 + 0.1 * (s % 2) for s, v in base.items()}, base,
                         margin=0.5).verdict == "better"
    assert paired_effect({s: v - 1.0 - 0.1 * (s % 2) for s, v in base.items()}, base,
                         margin=0.5).verdict == "worse"
    same = paired_effect({s: v + 0.05 * (-1) ** s for s, v in base.items()}, base, margin=0.5)
    assert same.verdict == "equivalent" and same.low >= -0.5 and same.high <= 0.5
    noisy = paired_effect({s: v + 3.0 * (-1) ** s for s, v in base.items()}, base, margin=0.5)
    assert noisy.verdict == "inconclusive"
    # Only seeds both cells ran count; one pair is no interval.
    lonely = paired_effect({0: 91.0, 7: 95.0}, {0: 90.0, 8: 80.0}, margin=0.5)
    assert lonely.n_pairs == 1 and lonely.verdict == "inconclusive"


def test_looks_widen_the_interval_and_holm_adjusts_each_claim():
    trials = trials_with_a_shared_seed_effect(n_seeds=4, shift=0.3)
    comparison = Comparison(label="x", a={"batch_size": 2048, "ghost_batch_size": 128},
                            b={"batch_size": 2048, "ghost_batch_size": None})
    one = compute_effects(trials, [comparison], margin=0.5).iloc[0]
    three = compute_effects(trials, [comparison], margin=0.5,
                            design=SeedDesign.adaptive(2, 8)).iloc[0]
    assert three["effect_ci_high"] - three["effect_ci_low"] > one["effect_ci_high"] - one[
        "effect_ci_low"]
    assert three["p_better_holm"] == pytest.approx(min(1.0, 3 * three["p_better"]))
    # Two copies of one comparison: Holm doubles the smaller p-value of each claim.
    two = compute_effects(trials, [comparison, comparison], margin=0.5)
    assert two["p_better_holm"].iloc[0] == pytest.approx(min(1.0, 2 * one["p_better"]))
    assert set(two["verdict_holm"]) <= {"better", "worse", "equivalent", "inconclusive"}


def test_table1_asks_each_remedy_against_the_column_before_it():
    from tunegap.studies import table1

    rows = []
    for seed in range(3):
        for column, (batch, ghost, alpha, mult, acc) in {
            "SB": (32, None, 0.0, "1.0", 98.0), "LB": (2048, None, 0.0, "1.0", 70.0),
            "+LR": (2048, None, 0.5, "1.0", 80.0), "+GBN": (2048, 32.0, 0.5, "1.0", 85.0),
            "+RA": (2048, 32.0, 0.5, "matched", 97.9),
        }.items():
            rows.append({"workload": "mnist1d-cnn", "is_baseline": column == "SB",
                         "batch_size": batch, "ghost_batch_size": ghost, "lr_exponent": alpha,
                         "regime_multiplier": mult, "seed": seed, "outcome": "completed",
                         "test_acc": acc + 0.3 * seed + (0.1 if column == "+GBN" else 0)})
    trials = pd.DataFrame(rows)
    comparisons = table1.comparisons(trials)
    assert [c.label for c in comparisons] == ["+LR vs LB", "+GBN vs +LR", "+RA vs +GBN"]
    effects = compute_effects(trials, comparisons, margin=0.5)
    assert effects["n_pairs"].tolist() == [3, 3, 3]
    assert effects["verdict"].tolist() == ["better", "better", "better"]
    assert effects["effect"].tolist() == pytest.approx([10.0, 5.1, 12.8])


def test_batch_size_asks_each_remedy_against_the_row_before_it_at_each_batch():
    from pathlib import Path

    from tunegap.studies import batch_size

    shipped = Path(__file__).resolve().parents[1] / "studies" / "batch_size" / "trials.parquet"
    trials = pd.read_parquet(shipped)
    found = batch_size.comparisons(trials)
    large = sorted(set(trials.loc[~trials["is_baseline"], "batch_size"]))
    assert [c.label for c in found] == [f"B={b}: {a}" for b in large
                                        for a in ("+LR vs LB", "+LR+GBN vs +LR")]
    first = found[1]
    assert first.a["ghost_batch_size"] is not None and first.b["ghost_batch_size"] is None
    assert first.a["lr_exponent"] == first.b["lr_exponent"] == 0.5
    effects = compute_effects(trials, found, margin=0.5)
    assert len(effects) == len(found) and (effects["n_pairs"] >= 3).all()


def test_optimizers_compares_each_optimizer_with_heavy_ball_sgd_at_each_batch():
    from pathlib import Path

    from tunegap.studies import optimizers

    shipped = Path(__file__).resolve().parents[1] / "studies" / "optimizers" / "trials.parquet"
    trials = pd.read_parquet(shipped)
    found = optimizers.comparisons(trials)
    assert found and all({k: c.b[k] for k in ("optimizer", "momentum")}
                         == {"optimizer": "sgd", "momentum": 0.9} for c in found)
    assert {c.a["optimizer"] for c in found} == {"sgd", "nesterov", "adam"}
    b0 = 32
    assert b0 not in {int(c.label.split(":")[0].split("=")[1]) for c in found}  # the baseline
    assert optimizers.parser().parse_args([]).seeds == "auto"
