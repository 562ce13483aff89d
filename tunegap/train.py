"""`tunegap train` (= `python -m tunegap.train`): one configuration, no Ray, no MLflow.

    python -m tunegap.train --workload mnist1d-cnn --batch-size 2048 --ghost-batch-size 32 \
        --lr-exponent 0.5 --regime-multiplier matched --seed 0

prints one line per epoch and a final summary, for debugging one configuration.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from tunegap.cli import (
    OneLineParser,
    add_plugin_option,
    add_training_knobs,
    fail,
    import_plugins,
    interrupted,
    training_knobs,
)
from tunegap.cli_values import integer, number
from tunegap.config import TrialConfig, ghost_is_whole_batch
from tunegap.cpu_memory import cpu_malloc_mode

PROG = "python -m tunegap.train"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description="Train one configuration (no Ray, no MLflow) and print one line per epoch.",
    )
    p.add_argument("--workload", default="mnist1d-cnn")
    p.add_argument("--batch-size", required=True, type=integer("--batch-size"))
    p.add_argument(
        "--ghost-batch-size",
        default="none",
        help="positive integer, or 'none' for plain BatchNorm (default)",
    )
    p.add_argument(
        "--lr-exponent",
        default=0.0,
        type=number("--lr-exponent"),
        help="lr = base_lr * (B/B0)^alpha; 0.5 is the paper's sqrt rule",
    )
    p.add_argument(
        "--regime-multiplier",
        default="1",
        help="epochs and decay epochs times this number, or 'matched' = ceil(B/B0)",
    )
    p.add_argument("--seed", default=0, type=integer("--seed"))
    p.add_argument(
        "--epochs",
        default=None,
        type=integer("--epochs"),
        help="override the workload's base epochs (before the multiplier)",
    )
    p.add_argument("--base-lr", default=None, type=number("--base-lr"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--workers",
        default=None,
        type=integer("--workers"),
        help="DataLoader worker processes for a streaming dataset such as ImageNet "
        "(default: the workload's cpus_per_trial; 0 = decode in the main process)",
    )
    p.add_argument(
        "--noise-scale-every",
        default=0,
        type=integer("--noise-scale-every"),
        help="measure the gradient noise scale every k-th step (0 = off)",
    )
    p.add_argument(
        "--sharpness-every",
        default=0,
        type=integer("--sharpness-every"),
        help="top Hessian eigenvalue every k epochs and at the end (0 = off)",
    )
    add_training_knobs(p)
    add_plugin_option(p)
    return p


def format_epoch(m: dict[str, Any]) -> str:
    return (
        f"epoch {m['epoch']:4d}  updates {m['updates']:6d}  lr {m['lr']:.4g}  "
        f"train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:6.2f}  "
        f"test_loss {m['test_loss']:.4f}  test_acc {m['test_acc']:6.2f}  "
        f"weight_distance {m['weight_distance']:.3f}"
        + (f"  noise_scale {m['noise_scale']:.1f}" if math.isfinite(m["noise_scale"]) else "")
        + (f"  sharpness {m['sharpness']:.2f}" if math.isfinite(m["sharpness"]) else "")
        + f"  {m['seconds']:.2f}s"
    )


def check_data(config: TrialConfig) -> None:
    """Refuse missing data, and a batch larger than a training set the dataset declares,
    before anything is loaded: a reader that would download never gets to try."""
    from tunegap.data.catalog import dataset_hooks
    from tunegap.workloads import check_workload_data

    # A dataset without a declared size is counted once loaded (see main), not loaded twice.
    declared = dataset_hooks(config.get_workload().dataset).train_size is not None
    subsets = [(config.train_size, config.batch_size)] if config.train_size else []
    check_workload_data(config.workload, config.data_dir, [config.batch_size] if declared else (),
                        subsets=subsets if declared else [])


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    import_plugins(prog, args)
    from tunegap.engine import Engine
    from tunegap.preflight import load_data, preflight
    from tunegap.trial_data import pick_device
    from tunegap.workloads import check_batch_sizes

    try:
        config = TrialConfig(
            workload=args.workload,
            batch_size=args.batch_size,
            ghost_batch_size=args.ghost_batch_size,
            lr_exponent=args.lr_exponent,
            regime_multiplier=args.regime_multiplier,
            seed=args.seed,
            epochs=args.epochs,
            base_lr=args.base_lr,
            device=args.device,
            data_dir=args.data_dir,
            noise_scale_every=args.noise_scale_every,
            sharpness_every=args.sharpness_every,
            protocol=args.protocol,
            **training_knobs(args),
        )
        pick_device(config.device)
        cpu_malloc_mode()
    except ValueError as err:
        fail(prog, err)
    ghost = config.ghost_batch_size
    if ghost_is_whole_batch(ghost, config.batch_size):
        fail(prog, f"--ghost-batch-size {ghost} is not smaller than --batch-size "
                   f"{config.batch_size}: use a smaller ghost size, or 'none' for BatchNorm")
    if args.workers is not None and args.workers < 0:
        fail(prog, f"--workers {args.workers} is below 0")
    try:
        check_data(config)
        data = load_data(config)
        # The files' own count: a subset, or a dataset sized only by loading it.
        check_batch_sizes(config.workload, data.train_size, [config.batch_size])
        preflight(config, data)
        engine = Engine(config, data=data, num_workers=args.workers)
    except (OSError, ValueError) as err:
        fail(prog, err)
    r = engine.resolved
    print(
        f"# {config.workload} B={config.batch_size} ghost={config.ghost_batch_size} "
        f"lr={r.lr:.4g} epochs={r.epochs} decay_epochs={list(r.decay_epochs)} "
        f"updates={r.total_updates} optimizer={config.optimizer} schedule={r.schedule} "
        f"protocol={config.protocol} device={engine.device}",
        flush=True,
    )
    try:
        history = engine.run(on_epoch=lambda m: print(format_epoch(m), flush=True))
    except KeyboardInterrupt:
        interrupted(prog, f"training stopped after {engine.epoch} epoch(s); nothing was saved")
    last = history[-1]
    outcome = "diverged" if engine.diverged else "completed"
    print(
        f"# {outcome}: test_acc {last['test_acc']:.2f}  train_acc {last['train_acc']:.2f}  "
        f"train_test_gap {last['train_test_gap']:.2f}  updates {last['updates']}  "
        f"seconds {sum(m['seconds'] for m in history):.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
