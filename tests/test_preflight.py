"""Pre-flight: a user's own bugs (real plugin files) refused in one line before Ray starts.

Each case is a plugin file with one mistake users make, run through the commands they type:
`tunegap run ghost_size --plugin FILE --workload ...` and `tunegap train --plugin FILE ...`.
Pass = exit status 2, one line naming the workload, the model or dataset and the error's own
last line, no traceback, no results folder and no MLflow run, within seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from study_procs import HANG_S

from tunegap.config import TrialConfig
from tunegap.preflight import PreflightError, preflight

HEADER = '''
import torch
from torch import nn

import tunegap


def signals(num_samples=400, nan=False):
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 3, (num_samples,), generator=g)
    x = torch.randn(num_samples, 1, 40, generator=g) + y[:, None, None]
    if nan:
        x[5, 0, 3] = float("nan")
    n = num_samples * 4 // 5
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:],
            "num_classes": 3}


@tunegap.register_dataset("good-signals")
def good_signals():
    return signals()


@tunegap.register_dataset("nan-signals")
def nan_signals():
    return signals(nan=True)


@tunegap.register_dataset("broken-signals")
def broken_signals():
    raise KeyError("x_train.npy")


@tunegap.register_model("good-net")
def good_net(num_classes):
    return nn.Sequential(nn.Conv1d(1, 8, 5, stride=2), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 18, num_classes))


@tunegap.register_model("off-by-one-net")
def off_by_one_net(num_classes):
    return nn.Sequential(nn.Conv1d(1, 8, 5, stride=2), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 18 + 1, num_classes))


@tunegap.register_model("raising-net")
def raising_net(num_classes):
    raise RuntimeError("the lab's net needs a config file")


class WrongShape(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = good_net(num_classes)

    def forward(self, x):
        return self.body(x).sum(1)


@tunegap.register_model("wrong-shape-net")
def wrong_shape_net(num_classes):
    return WrongShape(num_classes)


for name, model, data in [("good", "good-net", "good-signals"),
                          ("shape-bug", "off-by-one-net", "good-signals"),
                          ("raising-model", "raising-net", "good-signals"),
                          ("wrong-shape", "wrong-shape-net", "good-signals"),
                          ("nan-data", "good-net", "nan-signals"),
                          ("raising-data", "good-net", "broken-signals"),
                          ("diverging", "good-net", "good-signals")]:
    tunegap.register_workload(tunegap.Workload(
        name=name, model=model, dataset=data, large_batch_size=128,
        regime=tunegap.Regime(base_lr=1e30 if name == "diverging" else 0.05,
                              base_batch_size=32, epochs=1, decay_epochs=())))
'''

CASES = {
    "shape-bug": "mat1 and mat2 shapes cannot be multiplied",
    "raising-model": "RuntimeError: the lab's net needs a config file",
    "wrong-shape": "the model returned (8,), not (8, 3)",
    "nan-data": "1 training input(s) are not finite",
    "raising-data": "KeyError: 'x_train.npy'",
}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "lab_bugs.py"
    path.write_text(textwrap.dedent(HEADER))
    return path


def tunegap_command() -> list[str]:
    exe = shutil.which("tunegap")
    return [exe] if exe else [sys.executable, "-m", "tunegap"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=HANG_S)


def study_argv(workload: str, plugin: Path, tmp_path: Path) -> list[str]:
    return ["--plugin", str(plugin), "--workload", workload, "--batch-sizes", "128",
            "--ghost-sizes", "32", "--seeds", "2", "--storage-path", str(tmp_path / "results"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]


def test_a_study_command_refuses_the_bug_in_one_line_before_ray(plugin, tmp_path):
    # The command a user types, as its own process: nothing of Ray starts.
    done = run([*tunegap_command(), "run", "ghost_size",
                *study_argv("shape-bug", plugin, tmp_path)], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "workload 'shape-bug'" in lines[0] and CASES["shape-bug"] in lines[0], lines[0]
    assert "input shape (8, 1, 40)" in lines[0]
    assert not (tmp_path / "results").exists()
    assert "Started a local Ray instance" not in done.stdout + done.stderr


@pytest.mark.parametrize("workload", sorted(CASES))
def test_every_bug_is_one_line_naming_the_workload(workload, plugin, tmp_path, capsys):
    # The same study CLI in this process (no interpreter start per case).
    from tunegap.studies import ghost_size

    with pytest.raises(SystemExit) as stop:
        ghost_size.main(study_argv(workload, plugin, tmp_path))
    err = capsys.readouterr().err
    assert stop.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"workload {workload!r}" in lines[0] and CASES[workload] in lines[0], lines[0]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("workload", ["shape-bug", "nan-data", "raising-data"])
def test_train_refuses_the_bug_in_one_line(workload, plugin, tmp_path):
    done = run([*tunegap_command(), "train", "--plugin", str(plugin), "--workload", workload,
                "--batch-size", "32", "--epochs", "1"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert CASES[workload] in lines[0], lines[0]


def test_every_registered_workload_in_memory_passes_its_preflight(data_dir):
    # The shipped workloads whose data is here (MNIST-1D is generated offline).
    for name in ("mnist1d-cnn", "mnist1d-cnn-10k"):
        said = preflight(TrialConfig(workload=name, batch_size=128, ghost_batch_size=32,
                                     data_dir=str(data_dir)))
        assert "forward and backward" in said
    with pytest.raises(PreflightError, match="not finite"):
        import torch

        from tunegap.data.tensors import TensorData

        x = torch.zeros(16, 1, 40)
        x[3, 0, 0] = float("inf")
        data = TensorData(name="d", x_train=x, y_train=torch.zeros(16, dtype=torch.long),
                          x_test=x, y_test=torch.zeros(16, dtype=torch.long), num_classes=10)
        preflight(TrialConfig(workload="mnist1d-cnn", batch_size=32), data)


@pytest.mark.slow
def test_a_baseline_that_cannot_be_measured_is_one_line_exit_1_with_the_tables(plugin,
                                                                               tmp_path):
    # A learning rate of 1e30: every trial diverges, the baseline's included.
    done = run([*tunegap_command(), "run", "ghost_size", "--plugin", str(plugin),
                "--workload", "diverging", "--batch-sizes", "64", "--ghost-sizes", "none",
                "--seeds", "2", "--quiet", "--storage-path", str(tmp_path / "results"),
                "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "the baseline cannot be measured" in errors[0], done.stderr
    assert "2 diverged" in errors[0]
    tables = list((tmp_path / "results").rglob("trials.parquet"))
    assert len(tables) == 1
    import pandas as pd

    trials = pd.read_parquet(tables[0])
    assert len(trials) == 4 and set(trials["outcome"]) == {"diverged"}
