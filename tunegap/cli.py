"""The one argparse setup of every command: one-line errors, plugins, study commands.

A bad value is one line naming it and what is allowed, and exit status 2, before anything
starts: `OneLineParser` makes argparse do that, the value parsers (`tunegap.cli_values`)
give the lines, and `fail` is the same for errors found after parsing (a bad combination, an
unknown workload).
`--plugin MODULE_OR_FILE` is imported before a study or trial is built, so the workloads,
models and datasets it registers can be named on the same command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from tunegap.analysis.decide import ACCURACIES, CONFIDENCE, DEFAULT_MARGIN, FAMILY_ALPHA
from tunegap.cli_values import (
    integer,
    non_negative,
    number,
    positive_int,
    seed_count,
)
from tunegap.errors import StudyError, StudyInterrupted
from tunegap.registry import PluginError, load_plugins
from tunegap.runner.options import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    STORAGE_ENV,
    TRACKING_URI_ENV,
    RunOptions,
    default_storage_path,
    default_tracking_uri,
)
from tunegap.study import Study
from tunegap.study_checks import SCHEDULERS
from tunegap.study_options import (
    DEFAULT_STUDY_WORKLOAD,
    STUDY_DEFAULTS,
    STUDY_OPTIONS,
    own_defaults,
)
from tunegap.text import first_line

if TYPE_CHECKING:
    from tunegap.runner.run import StudyOutcome


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line and exit status 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        fail(self.prog, message)


INTERRUPTED_STATUS = 130  # what a shell reports for a command ended by SIGINT


def fail(prog: str, message: object, *, status: int = 2) -> NoReturn:
    """Print `prog: error: message` (its first line) and exit with `status` (2: bad input)."""
    sys.stderr.write(f"{prog}: error: {first_line(message)}\n")
    raise SystemExit(status)


def interrupted(prog: str, message: str, resume_command: str | None = None) -> NoReturn:
    """Print one line for a Ctrl-C and exit with status 130."""
    how = f"; continue it with: {resume_command}" if resume_command else ""
    sys.stderr.write(f"{prog}: interrupted: {message}{how}\n")
    raise SystemExit(INTERRUPTED_STATUS)


def resume_command(prog: str, argv: Sequence[str]) -> str:
    """The command line that continues a study: the same arguments, with --resume."""
    import shlex

    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    return " ".join([prog, *(shlex.quote(a) for a in args)])


def add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
        help="import a module or .py file that registers workloads, models or datasets "
             "(repeatable); installed packages can also use the entry-point group "
             "tunegap.workloads",
    )


def import_plugins(prog: str, args: argparse.Namespace) -> None:
    """Import `--plugin` values in order; a bad one is one line and exit status 2. Then the
    names that plugins may register are checked (`--optimizer`), in one line each."""
    try:
        load_plugins(getattr(args, "plugin", []) or [])
    except PluginError as err:
        fail(prog, err)
    name = getattr(args, "optimizer", None)
    if name is not None:
        from tunegap.optim import OPTIMIZERS

        if name not in OPTIMIZERS:
            fail(prog, f"--optimizer {name!r} is not allowed: use one of "
                       f"{', '.join(OPTIMIZERS.names())} (or register one with "
                       "@register_optimizer in a --plugin file)")


def study_parser(name: str, description: str, *, defaults: Mapping[str, Any] | None = None,
                 searches: Sequence[str] = ("grid",)) -> argparse.ArgumentParser:
    """The options every study has, at `STUDY_DEFAULTS` under the study's own `defaults`
    (those of its `study()` function); a study module adds its own options."""
    values = {**STUDY_DEFAULTS, "search": searches[0], **(defaults or {})}
    seeds = values["seeds"]
    p = OneLineParser(prog=f"python -m tunegap.studies.{name}", description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload",
                   help=f"a named workload (default {DEFAULT_STUDY_WORKLOAD}: mnist1d-cnn "
                        "measured on 10,000 test samples, which decides cells with fewer seeds)")
    p.add_argument("--seeds", type=seed_count,
                   help=f"seeds per cell, or 'auto': judged at planned looks, --min-seeds "
                        f"a side, then doubling up to --max-seeds, more seeds only where a "
                        f"cell is undecided; each one-sided test at {100 * FAMILY_ALPHA:g}%% / looks (default "
                        f"{seeds})")
    p.add_argument("--min-seeds", type=positive_int("--min-seeds"),
                   help="with --seeds auto: the seeds every cell starts with (default 3)")
    p.add_argument("--max-seeds", type=positive_int("--max-seeds"),
                   help="with --seeds auto: the most seeds a cell gets, its last look "
                        "(default 12: looks at 3, 6 and 12)")
    p.add_argument("--search", choices=list(searches))
    p.add_argument("--num-samples", type=positive_int("--num-samples"),
                   help="trials for --search optuna")
    p.add_argument("--scheduler", choices=list(SCHEDULERS),
                   help="stop trials early on test accuracy, with time in weight updates: "
                        "asha (successive halving) or median (median stopping); stopped "
                        "trials are kept but are no seeds of their cell (default none)")
    p.add_argument("--max-concurrent", type=positive_int("--max-concurrent"), default=None)
    p.add_argument("--address", default=None,
                   help="Ray cluster address ('auto' on a cluster); default 'local': a new local Ray")
    p.add_argument("--storage-path", default=None,
                   help=f"results folder (default ${STORAGE_ENV} where set, else {DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default ${TRACKING_URI_ENV} where set, else "
                        f"{DEFAULT_TRACKING_URI} in this folder)")
    p.add_argument("--resume", action="store_true", help="continue the newest interrupted run")
    p.add_argument("--epochs", type=positive_int("--epochs"),
                   help="override the cells' base epochs (quick looks); the baseline keeps "
                        "the workload's full base regime unless --baseline-epochs says")
    p.add_argument("--baseline-epochs", type=positive_int("--baseline-epochs"),
                   help="epochs of the small-batch baseline (default: the workload's base "
                        "regime); a shorter one is warned of in the summary")
    p.add_argument("--margin", type=non_negative("--margin"), metavar="POINTS",
                   help="the largest loss of test accuracy, in points, that still counts as no "
                        "gap; declare it before the run, never fit it to the results. A cell is "
                        "closed when the upper end of Welch's interval of baseline - cell "
                        f"({100 * CONFIDENCE:g}%% for one look) is <= POINTS, open when its "
                        "lower end is > POINTS, "
                        "at the margin when neither but no wider than 2 x POINTS, else "
                        f"inconclusive (default {DEFAULT_MARGIN:g})")
    p.add_argument("--accuracy", choices=list(ACCURACIES),
                   help="judge each trial by its final-epoch test accuracy (default) or its "
                        "best epoch's, as the paper's authors report (the default with "
                        "--protocol authors)")
    p.add_argument("--gpus-per-trial", type=non_negative("--gpus-per-trial"), default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=5,
                   help="epochs between trial checkpoints (default 5)")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    add_training_knobs(p)
    add_plugin_option(p)
    p.set_defaults(**{k: v for k, v in values.items() if k in STUDY_OPTIONS})
    return p


def add_training_knobs(parser: argparse.ArgumentParser) -> None:
    """The training knobs beyond the paper's four (`TrialConfig` checks their values). Each
    defaults to None: not given, the workload's own setting holds."""
    from tunegap.config import BN_WEIGHT_INITS, PROTOCOLS
    from tunegap.optim import OPTIMIZERS
    from tunegap.regime import SCHEDULES

    g = parser.add_argument_group("training knobs (default: the workload's own)")
    # No argparse choices: a --plugin file may register more (@register_optimizer), and
    # TrialConfig refuses an unknown name in one line naming the registered ones.
    g.add_argument("--optimizer", default=None, metavar="NAME",
                   help=f"a registered optimizer: {', '.join(OPTIMIZERS.names())} (default "
                        "sgd; lars is You et al. 2017), or one a --plugin registers")
    g.add_argument("--momentum", type=number("--momentum"), default=None,
                   help="SGD momentum, or Adam's beta1 (0 <= m < 1)")
    g.add_argument("--weight-decay", type=number("--weight-decay"), default=None,
                   help="one weight decay for the whole run, in place of the workload's")
    g.add_argument("--no-decay-bn-bias", action="store_true", default=None,
                   help="no weight decay on BatchNorm parameters and biases")
    g.add_argument("--warmup-epochs", type=number("--warmup-epochs"), default=None,
                   help="linear warm-up epochs (Goyal et al. 2017)")
    g.add_argument("--warmup-start-factor", type=number("--warmup-start-factor"), default=None,
                   help="warm-up starts at this times the lr (0..1, default 0)")
    g.add_argument("--scale-warmup", action="store_true", default=None,
                   help="multiply the warm-up epochs by the regime multiplier too")
    g.add_argument("--schedule", choices=list(SCHEDULES), default=None,
                   help="step (the workload's decay steps, default), cosine, linear (to 0), "
                        "constant")
    g.add_argument("--label-smoothing", type=number("--label-smoothing"), default=None,
                   help="label smoothing of the cross-entropy (0 <= s < 1)")
    g.add_argument("--train-size", type=integer("--train-size"), default=None,
                   help="train on a fixed random subset of this many samples")
    g.add_argument("--validation-fraction", type=number("--validation-fraction"), default=None,
                   help="hold out this share of the training set (the same samples for every "
                        "trial) and choose a best epoch on it; a study judging --accuracy best "
                        "holds out 0.1 by default, final-epoch judging none")
    g.add_argument("--max-updates", type=integer("--max-updates"), default=None,
                   help="a budget of weight updates in place of epochs (decay points scale)")
    g.add_argument("--bn-weight-init", choices=list(BN_WEIGHT_INITS), default=None,
                   help="BatchNorm weights start at one, or uniform U(0,1) as in 2017 PyTorch")
    g.add_argument("--zero-init-residual", action="store_true", default=None,
                   help="zero the last BatchNorm weight of each residual block (ResNet/WRN)")
    g.add_argument("--protocol", choices=list(PROTOCOLS), default=PROTOCOLS[0],
                   help="clean (default) or authors: bigBatch's own training loop and input "
                        "pipelines")


def training_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The training knobs given on the command line (`add_training_knobs`), by field name."""
    from tunegap.names import TRAINING_KNOBS

    return {k: getattr(args, k) for k in TRAINING_KNOBS if getattr(args, k, None) is not None}


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        address=args.address,
        storage_path=default_storage_path() if args.storage_path is None else args.storage_path,
        tracking_uri=default_tracking_uri() if args.tracking_uri is None else args.tracking_uri,
        resume=args.resume,
        max_concurrent=args.max_concurrent,
        gpus_per_trial=args.gpus_per_trial,
        device=args.device,
        data_dir=args.data_dir,
        checkpoint_every=args.checkpoint_every,
        quiet=args.quiet,
    )


def study_main(
    parser: argparse.ArgumentParser,
    study: Callable[..., Study],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
) -> StudyOutcome:
    """Parse, validate everything (exit 2 with one line on bad input), then run.

    `prog` names the command in messages (`tunegap run ghost_size`); by default the
    parser's own (`python -m tunegap.studies.ghost_size`).
    """
    if prog is not None:
        parser.prog = prog
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        import_plugins(parser.prog, args)
        from tunegap.runner.run import run_study  # Ray and MLflow load only once input is good

        built = study_from_args(study, args)
        return run_study(built, options=options_from_args(args))
    except StudyError as err:
        fail(parser.prog, err, status=err.exit_status)
    except StudyInterrupted as stop:
        interrupted(parser.prog, str(stop), resume_command(parser.prog, argv))
    except KeyboardInterrupt:
        interrupted(parser.prog, "before the study started; nothing was run")


def study_command(
    parser: Callable[[], argparse.ArgumentParser], study: Callable[..., Study]
) -> Callable[..., StudyOutcome]:
    """The `main(argv=None, *, prog=None)` of a study module: its command, a thin layer over
    its `study()` function."""

    def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> StudyOutcome:
        return study_main(parser(), study, argv, prog=prog)

    return main


def study_from_args(study: Callable[..., Study], args: argparse.Namespace) -> Study:
    """The `Study` a study function builds from a parsed command line: its own options and
    the common ones (`StudyOptions`) that were given, by keyword.

    >>> from tunegap.studies import ghost_size
    >>> args = ghost_size.parser().parse_args(["--batch-sizes", "512", "--seeds", "2"])
    >>> study_from_args(ghost_size.study, args) == ghost_size.study(batch_sizes=(512,), seeds=2)
    True
    """
    own = {name: getattr(args, name) for name in own_defaults(study)}
    given = {k: v for k in STUDY_OPTIONS if (v := getattr(args, k, None)) is not None}
    return study(**own, **given)


def args_builder(study: Callable[..., Study]) -> Callable[[argparse.Namespace], Study]:
    """A study module's `build(args)`: `study_from_args` for its function, kept for callers
    that parse the command line themselves."""

    def build(args: argparse.Namespace) -> Study:
        return study_from_args(study, args)

    return build
