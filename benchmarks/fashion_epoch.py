"""Epoch time on Fashion-MNIST: tunegap's engine against a minimal PyTorch loop, side by side.

    python benchmarks/fashion_epoch.py                             # both workloads, B0 and LB
    python benchmarks/fashion_epoch.py --workloads fashion-cnn --repeats 3

For each workload (`fashion-f1`, `fashion-cnn`) at its B0 and its large batch, one training
epoch over the real files (Debian's `dataset-fashion-mnist`, or `--data-dir`) followed by one
evaluation of the 10,000 test images is timed for each of the two, alternately, after one
untimed warm-up epoch of each:

- engine: `Engine.train_epoch()` (tunegap's loop: its loader, lr and weight-decay schedule,
  gradient clipping, the per-epoch metrics and weight distance);
- minimal: the same model (same seed), the same tensors, SGD with the same momentum, weight
  decay and lr, `clip_grad_norm_` at the same norm, a `randperm` shuffle, cross entropy, then
  the same test evaluation, written as a PyTorch user would write it.

The minimal loop lays its model and tensors out as the engine does (NHWC, channels_last,
where the workload sets `cpu_channels_last`), so the ratio is the engine's own cost. For
those workloads a third side, the minimal loop in PyTorch's default NCHW layout, shows what
the layout buys (`NCHW / channels_last`).

The table gives the median seconds of each and their ratio (engine / minimal; the target is
at most 1.05). All sides run in this one process in turn, so a busy machine slows them
alike; the ratios are the figures to read, the seconds are this machine's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _provenance import print_header
from torch import nn

from tunegap.config import TrialConfig
from tunegap.engine import Engine
from tunegap.models import build_model
from tunegap.workloads import get_workload

WORKLOADS = ("fashion-f1", "fashion-cnn")


def minimal_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                  batch_size: int, clip: float | None, generator: torch.Generator,
                  eval_batch: int) -> float:
    """One epoch of plain PyTorch training and one test evaluation; returns test accuracy."""
    model.train()
    order = torch.randperm(x.shape[0], generator=generator)
    for start in range(0, x.shape[0], batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, x_test.shape[0], eval_batch):
            logits = model(x_test[start:start + eval_batch])
            correct += int((logits.argmax(1) == y_test[start:start + eval_batch]).sum())
    return 100.0 * correct / x_test.shape[0]


def time_setup(workload: str, batch_size: int, repeats: int, data_dir: str | None
               ) -> tuple[float, float, float | None]:
    """Median seconds of an epoch: the engine's, the minimal loop's in the engine's layout,
    and (where the engine uses channels_last) the minimal loop's in NCHW, else None."""
    config = TrialConfig(workload=workload, batch_size=batch_size, device="cpu",
                         data_dir=data_dir, epochs=repeats + 2)
    engine = Engine(config)
    regime = engine.resolved
    data = engine.data
    definition = get_workload(workload)
    torch.manual_seed(0)  # the engine's seed: the same initial weights
    sides = {"minimal": (data.x_train, data.x_test)}
    if engine.channels_last:
        sides["nchw"] = (data.x_train.contiguous(), data.x_test.contiguous())
    loops = {}
    for side, (x_train, x_test) in sides.items():
        plain = build_model(definition.model, num_classes=data.num_classes,
                            **definition.model_kwargs)
        if side == "minimal" and engine.channels_last:
            plain = plain.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(plain.parameters(), lr=regime.lr,
                                    momentum=engine.regime.momentum,
                                    weight_decay=regime.weight_decay_at(0))
        loops[side] = (plain, optimizer, x_train, x_test, torch.Generator().manual_seed(0))
    seconds: dict[str, list[float]] = {"engine": [], **{side: [] for side in loops}}
    for timed in [False] + [True] * repeats:  # an untimed warm-up epoch of each first
        started = time.perf_counter()
        engine.train_epoch()
        if timed:
            seconds["engine"].append(time.perf_counter() - started)
        for side, (plain, optimizer, x_train, x_test, generator) in loops.items():
            started = time.perf_counter()
            minimal_epoch(plain, optimizer, x_train, data.y_train, x_test, data.y_test,
                          batch_size=batch_size, clip=regime.clip_norm, generator=generator,
                          eval_batch=definition.eval_batch_size)
            if timed:
                seconds[side].append(time.perf_counter() - started)
    nchw = statistics.median(seconds["nchw"]) if "nchw" in seconds else None
    return statistics.median(seconds["engine"]), statistics.median(seconds["minimal"]), nchw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--repeats", type=int, default=2, help="timed epochs of each (median)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    print_header(torch.device("cpu"))
    print(f"repeats: {args.repeats} epochs each, alternating engine and minimal\n")
    print("| workload | batch | layout | engine epoch (s) | minimal epoch (s) | engine / minimal "
          "| minimal, NCHW (s) | NCHW / channels_last |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for workload in args.workloads.split(","):
        definition = get_workload(workload)
        for batch in (definition.regime.base_batch_size, definition.large_batch_size):
            engine_s, minimal_s, nchw_s = time_setup(workload, batch, args.repeats,
                                                     args.data_dir)
            layout = "channels_last" if nchw_s is not None else "NCHW"
            gain = (f"{nchw_s:.2f} | {nchw_s / minimal_s:.2f}x" if nchw_s is not None
                    else "— | —")
            print(f"| {workload} | {batch} | {layout} | {engine_s:.2f} | {minimal_s:.2f} | "
                  f"{engine_s / minimal_s:.3f} | {gain} |", flush=True)


if __name__ == "__main__":
    main()
