"""Regenerate every committed study folder, `studies/<name>/`, from a fresh run.

    python scripts/regenerate_studies.py                  # every study, then the README table
    python scripts/regenerate_studies.py --only frontier  # one study (the table covers all)
    python scripts/regenerate_studies.py --dry-run        # print the commands, run nothing
    python scripts/regenerate_studies.py --only table1 --companion-only  # table1 --protocol authors

Per study: run its recorded command (`shipped_studies.COMMANDS`: `tunegap run NAME` at its defaults, in a new
temporary folder for `--storage-path` and the MLflow `--tracking-uri`, `--quiet`), then
`write_folder` copies the run folder's `trials.parquet`, `cells.csv`, figures (`*.png`) and
any other `*.csv` (e.g. `frontier.csv`) into `studies/<name>/`, after removing the stale
files of those kinds there, and writes its README.md: a header (the study's question, the
exact command, hardware, package versions, git commit, wall time measured here), then
"## Result", the run's own `summary.md` verbatim, the figures beside it. No sentence is
typed by hand: where a study module defines `interpretation(cells, trials, epochs) -> str`,
its output follows. Last, `readme_studies.readme_table` rebuilds the root README's study table (between
`TABLE_START` and `TABLE_END`) from every `studies/*/cells.csv`: the verdict counts at each
study's margin, and for the frontier the closing multiplier per batch size; and
`readme_real_data.py` its paragraph on real against generated data.

A study whose command fails keeps its old folder; the script then exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# Its sibling module, importable however this script is loaded (run, or by file in tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_studies import readme_table, rewrite_readme
from shipped_studies import COMMANDS, COMPANIONS, QUESTION_PREFIX, question_of, study_of

REPO = Path(__file__).resolve().parent.parent
STUDIES_ROOT = REPO / "studies"
README = REPO / "README.md"
PACKAGES = ("torch", "ray", "mlflow", "optuna")
# What a study folder holds from its run; the kinds `write_folder` replaces.
TABLE_FILES = ("trials.parquet", "cells.csv")
COPIED_PATTERNS = ("*.png", "*.csv")
TMP = "$TMP"  # how the command shows the temporary folder
IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")

Interpretation = Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], str]


@dataclass(frozen=True)
class HeaderInfo:
    """What the README of a study folder says about how its result was made."""

    name: str
    question: str
    command: str
    hardware: str
    versions: dict[str, str] = field(default_factory=dict)
    commit: str = "unknown"
    wall_seconds: float = math.nan


# ------------------------------------------------------------------- what was run, and where


def study_args(name: str, tmp: str = TMP, extra: Sequence[str] = ()) -> list[str]:
    """The arguments after `tunegap` of study `name`'s recorded command (plus `extra`, a
    companion run's options), with its results and MLflow store in `tmp`."""
    return ["run", study_of(name), *COMMANDS[name], *extra, "--storage-path", f"{tmp}/results",
            "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--quiet"]


def display_command(name: str, extra: Sequence[str] = ()) -> str:
    """The command as the README shows it: `tunegap ...`, the temporary folder as $TMP."""
    return " ".join(a if TMP in a else shlex.quote(a)
                    for a in ["tunegap", *study_args(name, extra=extra)])


def hardware() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            gpu = ", ".join(names)
    except ImportError:
        pass
    cpu = f"CPU {model}, {cores} cores" + (f" ({usable} usable here)" if usable != cores else "")
    return f"{cpu}; GPU: {gpu}"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def git_commit(repo: Path = REPO) -> str:
    """HEAD, with "+dirty" when the working tree has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        return head + ("+dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# ------------------------------------------------------------------------- one study folder


def write_folder(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str],
                 header_info: HeaderInfo, *,
                 interpretation: Interpretation | None = None) -> list[Path]:
    """Make `dest` the study folder of the run in `run_dir`; returns the files written.

    Removes `dest`'s trials.parquet, *.csv and *.png, copies the run's trials.parquet,
    *.csv (cells.csv and any other table) and *.png, and writes README.md: the header from
    `header_info`, then "## Result" with the run's summary.md verbatim (an image link to a
    path elsewhere is pointed at the copy beside it), then the output of `interpretation`
    (default: `tunegap.studies.<name>.interpretation`, where the module defines one).
    Raises FileNotFoundError when the run folder lacks summary.md, trials.parquet or
    cells.csv.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    missing = [f for f in ("summary.md", *TABLE_FILES) if not (run_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} has no {', '.join(missing)}: not a finished run")
    copies = sorted({p for pattern in COPIED_PATTERNS for p in run_dir.glob(pattern)}
                    | {run_dir / "trials.parquet"})
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in ("trials.parquet", *COPIED_PATTERNS):
        for stale in dest.glob(pattern):
            stale.unlink()
    written = []
    for source in copies:
        shutil.copy2(source, dest / source.name)
        written.append(dest / source.name)
    summary = _local_image_links((run_dir / "summary.md").read_text(), {p.name for p in copies})
    if interpretation is None:
        interpretation = _module_interpretation(study_of(header_info.name))
    text = header(header_info, sorted(p.name for p in copies)) + "\n## Result\n\n" + summary
    if interpretation is not None:
        cells, trials, epochs = _run_tables(run_dir)
        text = (text.rstrip("\n") + f"\n\n## Interpretation\n\n(generated by "
                f"`tunegap.studies.{study_of(header_info.name)}.interpretation` from the "
                "tables)\n\n"
                + interpretation(cells, trials, epochs).strip() + "\n")
    (dest / "README.md").write_text(text)
    return [*written, dest / "README.md"]


def header(info: HeaderInfo, files: Sequence[str]) -> str:
    software = ", ".join(f"{k} {v}" for k, v in info.versions.items())
    figures = [f for f in files if f.endswith(".png")]
    tables = [f for f in files if not f.endswith(".png")]
    commit = info.commit.removesuffix("+dirty")
    dirty = " with uncommitted changes (+dirty)" if info.commit.endswith("+dirty") else ""
    wall = ("not measured" if not math.isfinite(info.wall_seconds)
            else f"{info.wall_seconds:.0f} s")
    return "\n".join([
        f"# Study `{info.name}`",
        "",
        QUESTION_PREFIX + info.question,
        "",
        "## How it was made",
        "",
        f"Run by `python scripts/regenerate_studies.py` ({TMP}: a new empty temporary folder):",
        "",
        "```bash",
        info.command,
        "```",
        "",
        f"- hardware: {info.hardware}",
        f"- software: {software}",
        f"- code: commit `{commit}`{dirty}",
        f"- wall time of the command: {wall} (measured by the script)",
        "- in this folder: " + ", ".join(f"`{f}`" for f in tables)
        + " (tables; schema of trials.parquet in `tunegap/analysis/schema.py`)"
        + ("; figures " + ", ".join(f"`{f}`" for f in figures) if figures else ""),
        "",
    ])


def _local_image_links(text: str, present: set[str]) -> str:
    def local(match: re.Match[str]) -> str:
        alt, target = match.groups()
        name = Path(target).name
        if target not in present and name in present:
            return f"![{alt}]({name})"
        if name not in present:
            print(f"warning: summary.md links {target}, which the run folder lacks",
                  file=sys.stderr)
        return match.group(0)

    return IMAGE_LINK.sub(local, text)


def _module_interpretation(name: str) -> Interpretation | None:
    module_name = f"tunegap.studies.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise
    return getattr(module, "interpretation", None)


def _run_tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from tunegap.analysis.schema import EPOCHS_SCHEMA
    from tunegap.analysis.tables import read_tables

    cells = pd.read_csv(run_dir / "cells.csv")
    if (run_dir / "epochs.parquet").is_file():
        trials, epochs = read_tables(run_dir)
    else:
        trials = pd.read_parquet(run_dir / "trials.parquet")
        epochs = pd.DataFrame(columns=EPOCHS_SCHEMA.names)
    return cells, trials, epochs


# ----------------------------------------------------------------------------------- driver


def run_study(name: str, dest: Path, common: dict[str, object],
              extra: Sequence[str] = ()) -> bool:
    """Run study `name`'s command (plus `extra`) in a new temporary folder and rewrite `dest`
    from it; a study with a companion run (`COMPANIONS`) then runs that too."""
    launcher = Path(sys.executable).with_name("tunegap")
    prefix = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "tunegap"]
    with tempfile.TemporaryDirectory(prefix=f"tunegap-{name}-", ignore_cleanup_errors=True) as tmp:
        argv = prefix + study_args(name, tmp, extra)
        print(f"== {name}: {display_command(name, extra)}", flush=True)
        started = time.perf_counter()
        rc = subprocess.run(argv, cwd=REPO).returncode
        wall = time.perf_counter() - started
        if rc != 0:
            print(f"== {name}: failed with exit status {rc} after {wall:.0f} s; "
                  f"{dest} left as it was", file=sys.stderr, flush=True)
            return False
        runs = sorted(p.parent for p in Path(tmp, "results", study_of(name)).glob("*/summary.md"))
        if len(runs) != 1:
            print(f"== {name}: expected one finished run folder, found {len(runs)}",
                  file=sys.stderr)
            return False
        info = HeaderInfo(name=name, question=question_of(study_of(name)),
                          command=display_command(name, extra), wall_seconds=wall, **common)
        write_folder(runs[0], dest, info)
    print(f"== {name}: {wall:.0f} s, written to {dest}", flush=True)
    if extra or name not in COMPANIONS:
        return True
    return run_companion(name, dest, common)


def run_companion(name: str, dest: Path, common: dict[str, object]) -> bool:
    """Run study `name`'s companion (`COMPANIONS`) into its subfolder of `dest` and put the
    two runs side by side in `dest`/README.md."""
    subfolder, options, combine = COMPANIONS[name]
    if not run_study(name, dest / subfolder, common, options):
        return False
    add_comparison(dest, subfolder, combine, name)
    return True


def add_comparison(dest: Path, subfolder: str, combine: str, name: str) -> None:
    """Append to `dest`/README.md the study module's side-by-side view of its two runs,
    generated from their cells.csv files."""
    module = importlib.import_module(f"tunegap.studies.{name}")
    main_cells = pd.read_csv(dest / "cells.csv")
    other_cells = pd.read_csv(dest / subfolder / "cells.csv")
    workload = str(main_cells["workload"].iloc[0])
    text = getattr(module, combine)(main_cells, other_cells, workload)
    readme = dest / "README.md"
    readme.write_text(
        readme.read_text().rstrip("\n")
        + f"\n\n## Beside the run in `{subfolder}/`\n\n(generated by "
        f"`tunegap.studies.{name}.{combine}` from this folder's cells.csv and "
        f"`{subfolder}/cells.csv`; that run's own README says how it was made)\n\n"
        + text.strip() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", action="extend", choices=list(COMMANDS), metavar="NAME",
                   help=f"regenerate only these studies (of {', '.join(COMMANDS)})")
    p.add_argument("--companion-only", action="store_true",
                   help="run only the companion runs of the studies named (COMPANIONS), beside "
                        "their folders as they are")
    p.add_argument("--dry-run", action="store_true",
                   help="print each command and the README table; run and write nothing")
    p.add_argument("--studies-root", type=Path, default=STUDIES_ROOT, help=argparse.SUPPRESS)
    p.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.only or list(COMMANDS)
    if args.dry_run:
        for name in names:
            print(f"{name}: {display_command(name)}  ->  {args.studies_root / name}")
        print(readme_table(args.studies_root))
        return 0
    # Taken once, before any study folder is rewritten (which would make the tree dirty).
    common = {"hardware": hardware(), "versions": versions(), "commit": git_commit()}
    if args.companion_only:
        failed = [n for n in names if n in COMPANIONS
                  and not run_companion(n, args.studies_root / n, common)]
    else:
        failed = [n for n in names if not run_study(n, args.studies_root / n, common)]
    rewrite_readme(args.readme, args.studies_root)
    print(f"README table rewritten in {args.readme}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
