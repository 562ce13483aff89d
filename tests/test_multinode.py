"""A real two-node Ray cluster on this machine: lose a worker node mid-trial, finish anyway.

The fixture starts a head (`ray start --head`, no CPUs, so no trial runs there) and one worker
node (`ray start --address`, 1 CPU) as separate processes, in a temp dir of their own so they
never touch another Ray on the machine (`ray stop` would stop every Ray on the host, so the
fixture never calls it: it kills what it started, found by a marker in their environment).
Both nodes share this machine's disk, which stands in for the shared storage (the S3 mount of
cluster.yaml) that multi-node checkpoints need.

The test runs a study as a subprocess against that cluster, SIGKILLs the worker node's raylet
(the node dies: its trial's process goes with it), adds a fresh worker node (what the
autoscaler does), and checks that Tune restarts the trial from its checkpoint there and that
the study ends with every trial exactly once in Parquet and in MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
from mlflow_checks import trial_runs_logged_once
from study_procs import HANG_S

from tunegap.analysis.tables import read_tables

pytestmark = pytest.mark.slow

MARKER = "TUNEGAP_TEST_CLUSTER"
EPOCHS_LONG = 60  # regime multiplier 30 x 2 epochs
KILL_AFTER_EPOCHS = 6
CHECKPOINT_EVERY = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked_pids(mark: str) -> list[int]:
    """Every process started under this fixture: Ray passes its environment on to them all."""
    needle = f"{MARKER}={mark}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            pids.append(int(entry))
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@dataclass
class LocalCluster:
    address: str
    env: dict[str, str]
    temp_dir: str
    mark: str
    logs: Path
    workers: int = 0
    killed: list[int] = field(default_factory=list)

    def ray_start(self, *args: str, name: str) -> None:
        log = self.logs / f"{name}.log"
        with open(log, "w") as out:
            done = subprocess.run(
                ["ray", "start", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=HANG_S,
                start_new_session=True,
            )
        assert done.returncode == 0, f"ray start {name} failed:\n{log.read_text()[-3000:]}"

    def add_worker(self) -> None:
        self.workers += 1
        self.ray_start(f"--address={self.address}", "--num-cpus=1", name=f"worker{self.workers}")

    def raylets(self) -> dict[int, bool]:
        """pid -> whether it is the head's, for the raylets of this cluster still alive."""
        found = {}
        for pid in _marked_pids(self.mark):
            cmd = _cmdline(pid)
            if cmd and os.path.basename(cmd[0]) == "raylet":
                found[pid] = "--head" in cmd
        return found

    def kill_a_worker_node(self) -> int:
        (pid,) = [p for p, head in self.raylets().items() if not head]
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)
        return pid

    def stop(self) -> None:
        # Everything this fixture started, and nothing else (no `ray stop`: it stops every
        # Ray on the machine). Twice: a dying raylet may still be starting a worker.
        for _ in range(2):
            for pid in _marked_pids(self.mark):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not on PATH")
    # Short: Ray's Unix socket paths live under the temp dir and must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="tgray", dir="/tmp")
    mark = uuid.uuid4().hex
    env = {
        **os.environ,
        MARKER: mark,
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Token auth with a token of this cluster's own: nothing read from or written to
        # ~/.ray, and every process of the test (nodes and driver) has it.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex,
        # Declare a lost node dead after ~3 s instead of ~30 s.
        "RAY_health_check_initial_delay_ms": "1000",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    env.pop("RAY_ADDRESS", None)
    logs = tmp_path / "ray_logs"
    logs.mkdir()
    port = _free_port()
    cluster = LocalCluster(
        address=f"127.0.0.1:{port}", env=env, temp_dir=temp_dir, mark=mark, logs=logs
    )
    try:
        cluster.ray_start(
            "--head",
            f"--port={port}",
            "--num-cpus=0",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            name="head",
        )
        cluster.add_worker()
        yield cluster
    finally:
        cluster.stop()


def study_command(tmp: Path, data_dir: Path, address: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tunegap.studies.regime_length",
        "--seeds",
        "1",
        "--epochs",
        "2",
        "--baseline-epochs",
        "2",
        "--batch-size",
        "2048",
        "--multipliers",
        f"1,{EPOCHS_LONG // 2}",
        "--checkpoint-every",
        str(CHECKPOINT_EVERY),
        "--address",
        address,
        "--storage-path",
        str(tmp / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp}/mlflow.db",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
    ]


def long_trial_rows(tmp: Path) -> list[dict]:
    """The result rows of the longest trial so far (it starts first: longest first)."""
    best: list[dict] = []
    for path in (tmp / "results" / "regime_length").glob("2*/*/result.json"):
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError):
            continue  # caught mid-write; read again on the next poll
        if len(rows) > len(best):
            best = rows
    return best


def live_progress(cluster: LocalCluster) -> int:
    """Epochs of the longest trial so far, from the driver's own result.json (written at
    once; the copies in storage follow every few checkpoints)."""
    pattern = "session_*/artifacts/*/*/driver_artifacts/*/result.json"
    counts = []
    for path in Path(cluster.temp_dir).glob(pattern):
        try:
            counts.append(sum(1 for line in path.read_text().splitlines() if line.strip()))
        except OSError:
            continue
    return max(counts, default=0)


def test_lost_worker_node_trial_resumes_from_checkpoint(local_cluster, tmp_path, data_dir):
    started = time.monotonic()
    log = open(tmp_path / "study.log", "w")  # noqa: SIM115 - closed at the end
    proc = subprocess.Popen(
        study_command(tmp_path, data_dir, local_cluster.address),
        env=local_cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + HANG_S
        while live_progress(local_cluster) < KILL_AFTER_EPOCHS and proc.poll() is None:
            assert time.monotonic() < deadline, "the study never got going"
            time.sleep(0.05)
        assert proc.poll() is None, "the study ended before the node could be lost"
        local_cluster.kill_a_worker_node()
        killed_at = live_progress(local_cluster)
        assert killed_at < EPOCHS_LONG, "the long trial finished before its node was lost"
        # The lost node's trial needs a CPU: a new node joins, as the autoscaler would add one.
        local_cluster.add_worker()
        proc.wait(timeout=max(10.0, 240 - (time.monotonic() - started)))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    output = (tmp_path / "study.log").read_text()
    assert proc.returncode == 0, output[-4000:]

    # The long trial: one process until its node was lost, another one after. The new one
    # began right after a checkpoint (not at epoch 1), ran to the end, and re-reported any
    # epoch the first one had reported after that checkpoint with the very same metrics (the
    # checkpoint holds the whole training state).
    rows = [r for r in long_trial_rows(tmp_path) if r.get("epoch") is not None]
    pids = list(dict.fromkeys(r["pid"] for r in rows))
    assert len(pids) == 2, f"expected one restart of the long trial, got processes {pids}"
    first = [r for r in rows if r["pid"] == pids[0]]
    second = [r for r in rows if r["pid"] == pids[1]]
    restart = second[0]["epoch"]
    assert restart > 1 and (restart - 1) % CHECKPOINT_EVERY == 0, restart
    assert [r["epoch"] for r in second] == list(range(restart, EPOCHS_LONG + 1))
    assert [r["epoch"] for r in first] == list(range(1, first[-1]["epoch"] + 1))
    again = {r["epoch"]: r for r in first if r["epoch"] >= restart}
    for row in second:
        if row["epoch"] in again:
            for key in ("updates", "lr", "train_loss", "test_acc", "weight_distance"):
                assert row[key] == again[row["epoch"]][key], (key, row["epoch"])
    # When Tune restarts a trial from a checkpoint it replaces the driver's result.json with
    # the copy in storage, which is synced only every few checkpoints, so result.json may
    # lack some epochs; the driver's epoch journal has them, and the tables use both.

    # Every trial exactly once, complete, in Parquet...
    (run_dir,) = (tmp_path / "results" / "regime_length").glob("2*")
    trials, epochs = read_tables(run_dir)
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["outcome"]) == {"completed"}
    assert sorted(trials["epochs_done"]) == [2, 2, EPOCHS_LONG]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    long_id = trials.loc[trials["epochs_done"] == EPOCHS_LONG, "trial_id"].item()
    long_epochs = epochs[epochs["trial_id"] == long_id]
    assert set(long_epochs["epoch"]) == set(range(1, EPOCHS_LONG + 1))

    # ... and in MLflow: one parent, one child per trial, no epoch logged twice.
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    children = trial_runs_logged_once(tracking_uri, "tunegap/regime_length", trials["trial_id"])
    assert len(children) == 3
    client = mlflow.MlflowClient(tracking_uri)
    for run in children:
        assert run.data.tags["outcome"] == "completed"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")]
        assert len(steps) == int(run.data.params["resolved_epochs"])
        if run.data.tags["tunegap.trial_id"] == long_id:
            assert long_epochs["updates"].tolist() == steps  # the same epochs in both


def test_a_plugin_workload_trains_on_the_other_node(local_cluster, tmp_path, data_dir):
    """A workload, model and dataset that exist only in a plugin file of the driver's reach
    the worker node (which has no such module) with each trial, and every trial completes."""
    from test_plugins import PLUGIN

    plugin = tmp_path / "lab_plugin.py"
    plugin.write_text(PLUGIN)
    done = subprocess.run(
        [sys.executable, "-m", "tunegap", "run", "ghost_size", "--plugin", str(plugin),
         "--workload", "lab-workload", "--batch-sizes", "256", "--ghost-sizes", "none,32",
         "--seeds", "1", "--address", local_cluster.address, "--device", "cpu", "--quiet",
         "--storage-path", str(tmp_path / "results"),
         "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        env=local_cluster.env, capture_output=True, text=True, timeout=HANG_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "results" / "ghost_size").glob("2*")
    trials, _ = read_tables(run_dir)
    assert len(trials) == 3 and set(trials["outcome"]) == {"completed"}
    assert set(trials["workload"]) == {"lab-workload"}
