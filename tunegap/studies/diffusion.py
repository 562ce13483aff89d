"""Ultra-slow diffusion (the paper's Figure 2): weight distance from init against updates.

    python -m tunegap.studies.diffusion

For several batch sizes, with and without sqrt LR scaling: ||w_t - w_0|| against the number of
updates on a log axis. The paper finds straight lines (distance ~ log t) whose slopes come
together once the learning rate is scaled; the fitted slope per trial is in the legend and in
the table.
"""

from __future__ import annotations

from tunegap.analysis import plots
from tunegap.cli import common_study_fields, float_list, int_list, study_command, study_parser
from tunegap.study import Study

QUESTION = (
    "Does the weight distance from initialization grow like log(updates), and does sqrt LR "
    "scaling bring the curves of different batch sizes together?"
)


def figures(cells, trials, epochs) -> dict:
    return {"diffusion": plots.diffusion_plot(epochs, trials)}


def report(cells, trials, epochs) -> str:
    """The fitted diffusion slope per batch size, without and with LR scaling."""
    done = trials[trials["outcome"] == "completed"]
    table = done.groupby(["batch_size", "lr_exponent"])[["diffusion_slope", "diffusion_r2"]].mean()
    lines = [
        "Slope of ||w_t - w_0|| against ln(updates) over the high-learning-rate phase "
        "(mean over seeds; R² of the fit):",
        "",
        "| batch | lr exponent | slope | R² |",
        "|---:|---:|---:|---:|",
    ]
    for (batch, alpha), row in table.iterrows():
        lines.append(f"| {batch} | {alpha:g} | {row['diffusion_slope']:.3f} | "
                     f"{row['diffusion_r2']:.3f} |")
    return "\n".join(lines)


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
        report=report,
        **common_study_fields(args),
    )


main = study_command(parser, build)


if __name__ == "__main__":
    main()
