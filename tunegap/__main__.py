"""`tunegap` (= `python -m tunegap`): list, run STUDY, train.

    tunegap list                          # studies and workloads, one line each
    tunegap run ghost_size [options]      # = python -m tunegap.studies.ghost_size [options]
    tunegap train --batch-size 2048 ...   # = python -m tunegap.train ...
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from tunegap.cli import OneLineParser, add_plugin_option, fail, import_plugins
from tunegap.text import first_line

PROG = "tunegap"
USAGE = "tunegap {list,run STUDY,train} [options]   (tunegap COMMAND --help for its options)"


def study_names() -> list[str]:
    import tunegap.studies

    return sorted(m.name for m in pkgutil.iter_modules(tunegap.studies.__path__))


def list_command(argv: Sequence[str]) -> int:
    p = OneLineParser(prog=f"{PROG} list",
                      description="Studies, workloads and optimizers, one line each.")
    add_plugin_option(p)
    args = p.parse_args(argv)
    import_plugins(p.prog, args)
    from tunegap.workloads import WORKLOADS

    print("studies (tunegap run STUDY --help):")
    for name in study_names():
        module = importlib.import_module(f"tunegap.studies.{name}")
        print(f"  {name:15s} {first_line(module.__doc__ or '')}")
    print("workloads (--workload NAME):")
    for name in WORKLOADS.names():
        w = WORKLOADS.get(name)
        print(f"  {name:18s} model {w.model}, data {w.dataset}, B0 {w.regime.base_batch_size}, "
              f"{w.regime.epochs} epochs")
    from tunegap.optim import OPTIMIZERS

    print(f"optimizers (--optimizer NAME): {', '.join(OPTIMIZERS.names())}")
    return 0


def run_command(argv: Sequence[str]) -> int:
    names = study_names()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {PROG} run STUDY [options]\nstudies: {', '.join(names)}")
        return 0 if argv else 2
    name, rest = argv[0], list(argv[1:])
    if name not in names:
        fail(f"{PROG} run", f"unknown study {name!r}: use one of {', '.join(names)}")
    module = importlib.import_module(f"tunegap.studies.{name}")
    module.main(rest, prog=f"{PROG} run {name}")
    return 0


def train_command(argv: Sequence[str]) -> int:
    from tunegap.train import main

    return main(argv, prog=f"{PROG} train")


COMMANDS = {"list": list_command, "run": run_command, "train": train_command}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: {USAGE}")
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        fail(PROG, f"unknown command {args[0]!r}: use one of {', '.join(COMMANDS)}")
    try:
        return command(args[1:])
    except BrokenPipeError:
        # `tunegap list | head`: the reader left; stop quietly, as other commands do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
