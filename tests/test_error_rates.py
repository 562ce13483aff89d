"""The error rates of the seed designs, measured through the searcher and rule the studies
use (`tunegap.runner.error_rates.simulate`); `benchmarks/verdict_error.py` runs the same at
10,000 sequences per setting. Fewer here: the bounds allow three Monte-Carlo errors."""

from __future__ import annotations

import pytest

from tunegap.analysis.decide import FAMILY_ALPHA, SeedDesign
from tunegap.runner.error_rates import EveryLookAtFivePercent, simulate

SEQUENCES = 250  # seeded: each run draws the same sequences


def bound(rates) -> float:
    return FAMILY_ALPHA + 3 * rates.monte_carlo_error(FAMILY_ALPHA)


@pytest.mark.parametrize("others", [(), (0.0, 1.0)], ids=["one cell", "map of three"])
def test_seeds_auto_keeps_both_errors_at_the_margin(others):
    design = SeedDesign.adaptive(3, 12)
    rates = simulate(design, gap=0.5, sd=1.0, margin=0.5, sequences=SEQUENCES, others=others,
                     seed=11)
    assert rates.p_closed <= bound(rates)
    assert rates.p_open <= bound(rates)
    assert rates.mean_seeds_cell > 3  # undecided cells really got more seeds


def test_looking_after_every_seed_at_five_percent_inflates_the_error():
    # The rule the planned looks replace: the same ledger, every seed a look at 5%.
    rates = simulate(EveryLookAtFivePercent(looks=(3, 4, 5, 6, 7, 8)), gap=0.5, sd=1.0,
                     margin=0.5, sequences=SEQUENCES, seed=12)
    assert rates.p_closed + rates.p_open > 2 * bound(rates)


def test_a_clear_gap_is_decided_open_and_a_closed_one_closed():
    design = SeedDesign.adaptive(3, 12)
    opened = simulate(design, gap=2.5, sd=0.5, margin=0.5, sequences=100, seed=13)
    assert opened.p_open > 0.9 and opened.p_closed == 0
    # Some stop at the first look "at the margin" (an interval no wider than twice the
    # margin that straddles it), an answer of its own: the rest close.
    closed = simulate(design, gap=0.0, sd=0.2, margin=0.5, sequences=100, seed=14)
    assert closed.p_closed > 0.7 and closed.p_open == 0
