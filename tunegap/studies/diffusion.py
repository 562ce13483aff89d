"""Ultra-slow diffusion (the paper's Figure 2): weight distance from init against updates.

    python -m tunegap.studies.diffusion

For several batch sizes, with and without sqrt LR scaling: ||w_t - w_0|| against the number of
updates on a log axis. The paper finds straight lines (distance ~ log t) whose slopes come
together once the learning rate is scaled; the fitted slope per trial is in the legend and in
the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunegap import gapmap
from tunegap.study import (
    Study,
    common_study_fields,
    float_list,
    int_list,
    study_main,
    study_parser,
)

QUESTION = (
    "Does the weight distance from initialization grow like log(updates), and does sqrt LR "
    "scaling bring the curves of different batch sizes together?"
)


def figures(cells, trials, epochs) -> dict:
    return {"diffusion": gapmap.diffusion_plot(epochs, trials)}


def parser():
    p = study_parser("diffusion", __doc__, seeds=1)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=(32, 128, 512, 2048))
    p.add_argument("--exponents", type=float_list("--exponents"), default=(0.0, 0.5))
    return p


def build(args) -> Study:
    return Study(
        name="diffusion",
        grid={"batch_size": args.batch_sizes, "lr_exponent": args.exponents},
        question=QUESTION,
        figures=figures,
        **common_study_fields(args),
    )


def main(argv: Sequence[str] | None = None) -> None:
    study_main(parser(), build, argv)


if __name__ == "__main__":
    main()
