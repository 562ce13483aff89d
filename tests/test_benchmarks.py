"""The benchmark scripts run and print their tables (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from study_procs import HANG_S

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_gbn_speed_prints_all_three_variants_per_net():
    out = run(
        "gbn_speed.py",
        "--nets",
        "conv1d,conv2d",
        "--batch-size",
        "64",
        "--repeats",
        "1",
        "--min-time",
        "0",
        "--bf16",
        "--channels-last",
    )
    for line in ("commit:", "options: bf16=True channels_last=True", "net:     conv1d"):
        assert line in out
    rows = [r for r in out.splitlines() if r.startswith(("conv1d", "conv2d"))]
    assert len(rows) == 8  # with bf16, GBN both ways (bf16 kept, copied to fp32)
    assert sum("GhostBN (bf16 kept)" in r for r in rows) == 2
    assert all(r.split()[-2].endswith("x") for r in rows)
    # BatchNorm against itself is 1.00x by construction; the others' ratios are timings
    bn_rows = [r for r in rows if "BatchNorm" in r]
    assert len(bn_rows) == 2 and all(r.split()[-2:] == ["1.00x", "1.00x"] for r in bn_rows)


def test_gbn_speed_refuses_unknown_nets():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gbn_speed.py"), "--nets", "resnet50"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert proc.returncode == 2 and "--nets 'resnet50' is not allowed" in proc.stderr


def test_mixed_dtype_compares_each_op_with_its_fp32_twin():
    out = run("mixed_dtype.py", "--device", "cpu", "--batch-size", "256", "--repeats", "1")
    assert "tensor:  [2, 128, 16, 1024]" in out
    rows = [r.split() for r in out.splitlines() if r.split()[:1] in (["sub"], ["addcmul"], ["sum"])]
    assert len(rows) == 3 and all(r[-1].endswith("x") for r in rows)


def test_epoch_time_reports_rate_and_fraction_of_peak():
    out = run("epoch_time.py", "--samples", "16", "--batch-sizes", "8,16")
    assert "GFLOP per image" in out and "matmul peak" in out
    rows = [r.split() for r in out.splitlines() if r.split() and r.split()[0] in ("8", "16")]
    assert [r[1] for r in rows] == ["2", "1"]  # updates per epoch
    assert all(r[-1].endswith("%") and float(r[-1][:-1]) > 0 for r in rows)


@pytest.mark.slow
def test_loader_speed_compares_both_loaders():
    out = run(
        "loader_speed.py",
        "--samples",
        "256",
        "--batch-size",
        "64",
        "--workers",
        "1",
        "--epochs",
        "1",
    )
    assert "(a) device loader" in out and "(b) DataLoader 1 workers" in out


def test_verdict_error_prints_every_design_and_gap():
    out = run("verdict_error.py", "--sequences", "20", "--workers", "1")
    assert "commit:" in out and "sequences per setting: 20" in out
    for design in ("fixed 3 seeds (1 look)", "auto: looks 3,6,12 (Bonferroni)",
                   "old auto: every seed 3..8 at 5%"):
        assert f"| {design} | 1 x margin |" in out
    assert "(map of 3)" in out


@pytest.mark.slow
def test_seeds_to_decide_prints_each_view_per_cell(data_dir):
    out = run("seeds_to_decide.py", "--seeds", "2", "--batch-sizes", "512", "--epochs", "1",
              "--data-dir", str(data_dir))
    assert ("| cell (B, ghost) | gap, final (pts) | gap, 10k (pts) | sd cell final / 10k | "
            "final | 10k | last3 | last3 10k | paired |") in out
    assert "baseline (10k): " in out
    assert "| 512, BN |" in out and "| median over cells |" in out


@pytest.mark.slow
def test_fashion_epoch_times_the_engine_beside_a_minimal_loop():
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    out = run("fashion_epoch.py", "--workloads", "fashion-f1", "--repeats", "1")
    assert ("| workload | batch | layout | engine epoch (s) | minimal epoch (s) | engine / minimal "
            "| minimal, NCHW (s) | NCHW / channels_last |") in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| fashion-f1 |")]
    from tunegap.workloads import get_workload

    f1 = get_workload("fashion-f1")
    assert [int(row[2]) for row in rows] == [f1.regime.base_batch_size, f1.large_batch_size]
    # F1 has no convolution: no channels_last, so no NCHW side to compare with.
    assert all(row[3].strip() == "NCHW" and row[7].strip() == "—" for row in rows)
    assert all(float(row[6]) > 0 for row in rows)


def test_study_overhead_reads_a_regenerated_folder(tmp_path):
    import pandas as pd

    (tmp_path / "README.md").write_text("- wall time of the command: 300 s (measured)\n")
    pd.DataFrame({"train_seconds": [100.0, 150.0, 250.0]}).to_parquet(
        tmp_path / "trials.parquet")
    out = run("study_overhead.py", "--folder", str(tmp_path), "--slots", "2")
    # 300 s of wall on 2 slots against 500 s of training: +20%.
    assert "| 300 | 500 | 2 | +20.0% |" in out
