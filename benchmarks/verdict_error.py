"""Error rates of the seed designs, computed by the decision code the studies use.

    python benchmarks/verdict_error.py                      # 10,000 sequences per setting
    python benchmarks/verdict_error.py --sequences 500      # a quick look

For each design (one look at 3 seeds; one at 12; `--seeds auto`'s planned looks at 3, 6
and 12 seeds with Bonferroni over the looks; and the old rule, a look after every seed at the
full 5%, for comparison) and each true gap (0, the margin, twice the margin), plays
`--sequences` studies of one cell against the baseline through the searcher `--seeds auto`
uses (`tunegap.runner.error_rates.simulate`: `SeedsUntilDecided` and `decide_gap`, not a
copy) and prints P(closed), P(open), their Monte-Carlo standard errors and the mean seeds per
side. At gap = margin both rates are errors and must be <= 0.05; at 0, P(closed) is the
power to close; at twice the margin, P(open) the power to open. The "map" rows add two cells
(gaps 0 and twice the margin) that share the baseline and grow it on their own schedule.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

from _provenance import git_commit

from tunegap.analysis.decide import SeedDesign
from tunegap.runner.error_rates import EveryLookAtFivePercent, simulate

DESIGNS = {
    "fixed 3 seeds (1 look)": SeedDesign.fixed(3),
    "fixed 12 seeds (1 look)": SeedDesign.fixed(12),
    "auto: looks 3,6,12 (Bonferroni)": SeedDesign.adaptive(3, 12),
    "old auto: every seed 3..8 at 5%": EveryLookAtFivePercent(looks=(3, 4, 5, 6, 7, 8)),
}


def one(args: tuple) -> tuple:
    name, gap_in_margins, others, sequences, sd, margin, seed = args
    rates = simulate(DESIGNS[name], gap=gap_in_margins * margin, sd=sd, margin=margin,
                     sequences=sequences, others=others, seed=seed)
    return name, gap_in_margins, bool(others), rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=10_000)
    p.add_argument("--sd", type=float, default=1.0, help="seed-to-seed spread, points")
    p.add_argument("--margin", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    margin = args.margin
    jobs = [(name, g, (), args.sequences, args.sd, margin, 1000 * i + int(4 * g))
            for i, name in enumerate(DESIGNS) for g in (0.0, 1.0, 2.0)]
    jobs += [(name, 1.0, (0.0, 2 * margin), args.sequences, args.sd, margin, 99 + i)
             for i, name in enumerate(DESIGNS) if "auto" in name]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(one, jobs))
    print(f"commit: {git_commit()}")
    print(f"sequences per setting: {args.sequences}; seed spread {args.sd:g} points on both "
          f"sides; margin {margin:g}; {time.perf_counter() - start:.0f} s")
    print()
    print("| design | true gap | P(closed) | P(open) | seeds a side (cell, baseline) |")
    print("|---|---:|---:|---:|---:|")
    for name, g, shared, r in results:
        gap = f"{g:g} x margin" + (" (map of 3)" if shared else "")
        print(f"| {name} | {gap} | {r.p_closed:.4f} ± {r.monte_carlo_error(r.p_closed):.4f} | "
              f"{r.p_open:.4f} ± {r.monte_carlo_error(r.p_open):.4f} | "
              f"{r.mean_seeds_cell:.2f}, {r.mean_seeds_baseline:.2f} |")
    print()
    print("At 1 x margin both columns are error rates (stated: <= 0.05 each).")


if __name__ == "__main__":
    main()
