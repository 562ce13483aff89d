"""A user's own model, dataset and workload, registered outside tunegap, trained through Ray.

The plugin is a .py file in a temp folder: Ray's worker processes cannot import it, so every
trial that completes proves the registrations travelled with the trial. The commands are
the ones users type (`tunegap run ... --plugin FILE`, `python examples/custom_workload.py`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from study_procs import HANG_S

import tunegap
from tunegap.analysis.tables import read_tables
from tunegap.registry import PluginError, load_plugin

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent('''
    """A lab's own net and data, as a tunegap plugin."""
    import torch
    from torch import nn

    import tunegap


    @tunegap.register_model("lab-net")
    def lab_net(num_classes: int, width: int = 16) -> nn.Module:
        return nn.Sequential(
            nn.Conv1d(1, width, 5, stride=2, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Flatten(), nn.Linear(width * 18, num_classes))


    @tunegap.register_dataset("lab-signals")
    def lab_signals(num_samples: int = 3000) -> dict:
        g = torch.Generator().manual_seed(7)
        y = torch.randint(0, 3, (num_samples,), generator=g)
        t = torch.linspace(0, 6.28, 40)
        x = torch.sin((y[:, None] + 1.0) * t) + 0.7 * torch.randn(num_samples, 40, generator=g)
        n = num_samples * 4 // 5
        return {"x_train": x[:n, None], "y_train": y[:n], "x_test": x[n:, None],
                "y_test": y[n:], "num_classes": 3}


    tunegap.register_workload(tunegap.Workload(
        name="lab-workload", model="lab-net", dataset="lab-signals", large_batch_size=512,
        regime=tunegap.Regime(base_lr=0.05, base_batch_size=32, epochs=2, decay_epochs=(1,))))
''')


OPTIMIZER_PLUGIN = textwrap.dedent('''
    """A lab's own optimizer, as a tunegap plugin: SGD with half the momentum asked for."""
    import torch

    import tunegap


    @tunegap.register_optimizer("lab-half-momentum")
    def half_momentum(groups, *, lr, momentum, weight_decay):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum / 2)
''')


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "lab_plugin.py"
    path.write_text(PLUGIN)
    return path


def tunegap_command() -> list[str]:
    exe = shutil.which("tunegap")
    return [exe] if exe else [sys.executable, "-m", "tunegap"]


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_missing_plugin_is_one_line_and_exit_2(tmp_path):
    for bad in ("no_such_plugin_module", str(tmp_path / "missing.py")):
        done = run([*tunegap_command(), "run", "ghost_size", "--plugin", bad], cwd=tmp_path)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--plugin" in lines[0] and bad in lines[0], done.stderr


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('lab server unreachable')\n")
    with pytest.raises(PluginError, match="lab server unreachable"):
        load_plugin(str(broken))


def test_unknown_workload_names_the_plugin_ones_before_ray(plugin_file, tmp_path):
    done = run([*tunegap_command(), "run", "ghost_size", "--plugin", str(plugin_file),
                "--workload", "lab-wrokload"], cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "unknown workload 'lab-wrokload'" in line and "lab-workload" in line
    assert not (tmp_path / "tunegap_results").exists()  # nothing started


def test_tunegap_list_shows_studies_and_plugin_workloads_and_optimizers(plugin_file, tmp_path):
    optimizer_file = tmp_path / "lab_optim.py"
    optimizer_file.write_text(OPTIMIZER_PLUGIN)
    done = run([*tunegap_command(), "list", "--plugin", str(plugin_file), "--plugin",
                str(optimizer_file)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split()[:1] == ["ghost_size"] for line in lines)
    assert any(line.split()[:1] == ["lab-workload"] for line in lines)
    assert any(line.split()[:1] == ["mnist1d-cnn"] for line in lines)
    (optimizers,) = [line for line in lines if line.startswith("optimizers")]
    assert "lab-half-momentum" in optimizers and "sgd" in optimizers


@pytest.mark.slow
def test_plugin_workload_runs_in_every_trial_of_a_study_cli(plugin_file, tmp_path):
    done = run([*tunegap_command(), "run", "ghost_size", "--plugin", str(plugin_file),
                "--workload", "lab-workload", "--batch-sizes", "256", "--ghost-sizes", "none,32",
                "--seeds", "1", "--device", "cpu", "--quiet"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "tunegap_results" / "ghost_size").glob("2*")
    trials, _ = read_tables(run_dir)
    assert len(trials) == 3  # baseline + 2 cells
    assert set(trials["outcome"]) == {"completed"}, trials[["outcome", "error"]]
    assert set(trials["workload"]) == {"lab-workload"}


@pytest.mark.slow
def test_a_plugin_optimizer_trains_every_trial_through_ray(plugin_file, tmp_path):
    optimizer_file = tmp_path / "lab_optim.py"
    optimizer_file.write_text(OPTIMIZER_PLUGIN)
    base = [*tunegap_command(), "run", "ghost_size", "--plugin", str(plugin_file), "--plugin",
            str(optimizer_file), "--workload", "lab-workload", "--batch-sizes", "256",
            "--ghost-sizes", "none", "--seeds", "1", "--device", "cpu", "--quiet"]
    done = run([*base, "--optimizer", "lab-half-momentum"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "tunegap_results" / "ghost_size").glob("2*")
    trials, _ = read_tables(run_dir)
    # Ray's workers cannot import the plugin file: every trial that completes built the
    # optimizer from the registration that travelled with it.
    assert set(trials["outcome"]) == {"completed"}, trials[["outcome", "error"]]
    assert set(trials["optimizer"]) == {"lab-half-momentum"}
    typo = run([*base, "--optimizer", "lab-half-momentun"], cwd=tmp_path)
    assert typo.returncode == 2
    (line,) = typo.stderr.strip().splitlines()
    assert "--optimizer 'lab-half-momentun' is not allowed" in line
    assert "lab-half-momentum" in line


@pytest.mark.slow
def test_a_user_script_builds_ghost_size_with_a_plugin_optimizer_and_runs_it(
        plugin_file, tmp_path, ray_session):
    # What a user's script does: load plugins (a workload and an optimizer, real files), build
    # the paper's ghost_size study with typed keywords, run it through Ray in process.
    from tunegap.studies import ghost_size

    optimizer_file = tmp_path / "lab_optim_inproc.py"
    optimizer_file.write_text(OPTIMIZER_PLUGIN)
    tunegap.load_plugins([str(plugin_file), str(optimizer_file)])
    study = ghost_size.study(workload="lab-workload", batch_sizes=(128,), ghost_sizes=(None, 32),
                             seeds=1, optimizer="lab-half-momentum")
    outcome = tunegap.run_study(study, options=tunegap.RunOptions(
        storage_path=str(tmp_path / "results"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
        device="cpu", quiet=True))
    assert set(outcome.trials["outcome"]) == {"completed"}
    assert len(outcome.result_grid) == 3
    assert not outcome.result_grid.errors
    assert set(outcome.result_grid.get_dataframe()["config/workload"]) == {"lab-workload"}
    assert set(outcome.trials["optimizer"]) == {"lab-half-momentum"}


@pytest.mark.slow
def test_plugin_workload_survives_a_killed_driver_and_resume(plugin_file, tmp_path):
    # One long trial (multiplier 120: 240 epochs), killed while it trains, then resumed.
    command = [*tunegap_command(), "run", "regime_length", "--plugin", str(plugin_file),
               "--workload", "lab-workload", "--batch-size", "512", "--multipliers", "120", "--seeds", "1",
               "--max-concurrent", "1", "--checkpoint-every", "5", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(command, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tmp_path / "tunegap_results" / "regime_length"

    def epochs_done() -> int:
        counts = [len(p.read_text().splitlines()) for p in root.glob("2*/*/result.json")]
        return max(counts, default=0)

    deadline = time.monotonic() + HANG_S
    while epochs_done() < 20 and proc.poll() is None:
        assert time.monotonic() < deadline, "the study never got going"
        time.sleep(0.1)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(2)
    assert epochs_done() < 240

    resumed = run([*command, "--resume"], cwd=tmp_path, timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run_dir,) = root.glob("2*")
    trials, epochs = read_tables(run_dir)
    assert set(trials["outcome"]) == {"completed"}
    assert sorted(trials["epochs_done"]) == [2, 240]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()


@pytest.mark.slow
def test_the_custom_workload_example_runs(tmp_path):
    done = run([sys.executable, str(ROOT / "examples" / "custom_workload.py")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "tunegap_results" / "waves_ghost").glob("2*")
    trials, _ = read_tables(run_dir)
    assert len(trials) == 6 and set(trials["outcome"]) == {"completed"}
    assert "test_acc_mean" in done.stdout and "config/batch_size" in done.stdout


def test_an_installed_package_exposes_workloads_through_the_entry_point_group(tmp_path):
    # A real distribution on sys.path (its dist-info names a module in `tunegap.workloads`),
    # found by importlib.metadata exactly as an installed package would be.
    site = tmp_path / "site"
    (site / "lab_pkg").mkdir(parents=True)
    (site / "lab_pkg" / "__init__.py").write_text(PLUGIN)
    info = site / "lab_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tunegap.workloads]\nlab = lab_pkg\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([*tunegap_command(), "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert any(line.split()[:1] == ["lab-workload"] for line in done.stdout.splitlines())
    # And a study accepts it by name, with no --plugin (validated before Ray: a bad knob).
    bad = subprocess.run([*tunegap_command(), "run", "ghost_size", "--workload", "lab-workload",
                          "--batch-sizes", "0"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=HANG_S)
    assert bad.returncode == 2 and "unknown workload" not in bad.stderr
