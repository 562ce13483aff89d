"""Faults a study must survive or report in one clear line.

(a) a trial out of GPU memory ends as `error` with what to change; (b) an unreachable tracking
server stops the study before anything runs; (c) result tables are replaced atomically, even
when the writer dies half-way; (d) an unusable storage path stops the study at start; and bad
input the CLI corpus (tests/test_study_cli.py) does not cover yet. The lost-node fault is in
tests/test_multinode.py.
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import tunegap.runner.run as run_module
import tunegap.runner.trainable as trainable_module
from tunegap import RunOptions, Study, run_study
from tunegap.analysis import tables
from tunegap.analysis.tables import TRIALS_SCHEMA, build_tables, read_tables, write_tables
from tunegap.runner.trainable import OUT_OF_MEMORY_HINT, GapTrainable

# ---------------------------------------------------------------- helpers


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(options):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(run_module, "init_ray", refuse)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def run_cli(name: str, argv: list[str]) -> tuple[int, list[str], str]:
    """Run a study's CLI in-process: (exit status, stderr lines, stderr)."""
    module = importlib.import_module(f"tunegap.studies.{name}")
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        with pytest.raises(SystemExit) as stop:
            module.main(argv)
    finally:
        sys.stderr = old
    text = err.getvalue()
    return stop.value.code, text.strip().splitlines(), text


def assert_one_line(code: int, lines: list[str], text: str, named: str) -> None:
    assert code == 2, text
    assert len(lines) == 1, text
    assert named in lines[0], text
    assert "Traceback" not in text


def trial_config(data_dir, **kw):
    base = {
        "workload": "mnist1d-cnn",
        "batch_size": 512,
        "ghost_batch_size": 64,
        "lr_exponent": 0.5,
        "seed": 0,
        "epochs": 2,
        "device": "cpu",
        "data_dir": str(data_dir),
    }
    base.update(kw)
    return base


# ---------------------------------------------------------------- (a) out of GPU memory
# No GPU exists where these tests run, so the engine is made to raise the very exception
# torch raises when CUDA memory runs out (torch.OutOfMemoryError).


def _raise(exc: BaseException):
    def train_epoch():
        raise exc

    return train_epoch


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 22.19 GiB total capacity)"
        ),
        RuntimeError("CUDA error: out of memory"),
    ],
    ids=["OutOfMemoryError", "RuntimeError text"],
)
def test_out_of_memory_becomes_a_hint(exc, data_dir):
    trial = GapTrainable(config=trial_config(data_dir, batch_size=2048))
    trial.engine.train_epoch = _raise(exc)
    with pytest.raises(RuntimeError) as raised:
        trial.train()
    trial.stop()
    message = str(raised.value)
    assert message.startswith(OUT_OF_MEMORY_HINT)
    for advice in ("smaller batch", "ghost batch size", "fewer trials per GPU"):
        assert advice in message
    assert "batch_size=2048" in message and "ghost_batch_size=64" in message
    cause = raised.value.__cause__  # the original error stays in the traceback
    assert type(cause) is type(exc) and str(cause) == str(exc)


def test_other_errors_pass_through_unchanged(data_dir):
    trial = GapTrainable(config=trial_config(data_dir))
    boom = RuntimeError("shape mismatch")
    trial.engine.train_epoch = _raise(boom)
    with pytest.raises(RuntimeError) as raised:
        trial.train()
    trial.stop()
    assert str(raised.value) == "shape mismatch"


@pytest.mark.slow
def test_out_of_memory_trial_is_an_error_with_the_hint(
    tmp_path, data_dir, ray_session, monkeypatch
):
    """Through Tune: the trial ends as `error`, the study finishes, the hint is recorded."""

    # Defined here and using nothing else of this module, so Ray ships the class itself to
    # its workers (pickled by value; they cannot import this test module).
    class OutOfMemoryAtLargeBatch(GapTrainable):
        # Tune's two hooks that start a trial: a new actor, and a reused one.
        def setup(self, config, registrations=None):
            super().setup(config, registrations)
            self._fail_at_large_batch()

        def reset_config(self, new_config):
            started = super().reset_config(new_config)
            self._fail_at_large_batch()
            return started

        def _fail_at_large_batch(self):
            if self.trial_config.batch_size == 2048:
                self.engine.train_epoch = self._out_of_memory

        @staticmethod
        def _out_of_memory():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainable_module, "GapTrainable", OutOfMemoryAtLargeBatch)
    study = Study(
        name="faults_oom",
        workload="mnist1d-cnn",
        epochs=1,
        baseline_epochs=1,
        grid={"batch_size": (2048,), "lr_exponent": (0.5,)},
    )
    options = RunOptions(
        storage_path=str(tmp_path / "results"),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        device="cpu",
        data_dir=str(data_dir),
        quiet=True,
        max_failures=1,
    )
    outcome = run_study(study, options=options)

    trials = outcome.trials.set_index("batch_size")
    assert trials.loc[2048, "outcome"] == "error"
    assert OUT_OF_MEMORY_HINT in trials.loc[2048, "error"]
    assert trials.loc[32, "outcome"] == "completed"  # the baseline is unaffected
    on_disk, _ = read_tables(outcome.run_dir)
    assert OUT_OF_MEMORY_HINT in on_disk.set_index("batch_size").loc[2048, "error"]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(trials.loc[2048, "mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["outcome"] == "error"
    assert OUT_OF_MEMORY_HINT in run.data.tags["error"]
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"


# ---------------------------------------------------------------- (b) tracking unreachable


@pytest.mark.parametrize("via", ["flag", "MLFLOW_TRACKING_URI"])
def test_unreachable_tracking_server_stops_the_study_at_start(via, tmp_path, no_ray, monkeypatch):
    uri = f"http://127.0.0.1:{closed_port()}"
    argv = ["--storage-path", str(tmp_path / "results")]
    if via == "flag":
        argv += ["--tracking-uri", uri]
    else:  # the rule the cluster relies on: no flag, MLflow's variable
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    code, lines, text = run_cli("ghost_size", argv)
    assert_one_line(code, lines, text, uri)
    assert "cannot be reached" in lines[0]
    assert time.monotonic() - started < 60  # one probe; MLflow's own retries take minutes
    # Ray was never started (no_ray fails the test if it is) and nothing ran: no run folder.
    assert not list((tmp_path / "results").glob("ghost_size/2*"))


# ---------------------------------------------------------------- (c) atomic tables


def _tables():
    history = [
        {
            "epoch": e,
            "updates": 10 * e,
            "lr": 0.1,
            "train_loss": 0.5,
            "train_acc": 90.0,
            "test_loss": 0.6,
            "test_acc": 85.0 + e,
            "train_test_gap": 5.0 - e,
            "weight_distance": 1.0,
            "seconds": 1.0,
            "diverged": False,
        }
        for e in (1, 2)
    ]
    record = {
        "trial_id": "t0",
        "mlflow_run_id": None,
        "is_baseline": True,
        "config": {"workload": "mnist1d-cnn", "batch_size": 32},
        "resolved": {"resolved_epochs": 2},
        "outcome": "completed",
        "error": None,
        "history": history,
    }
    return build_tables([record], study="s")


@pytest.mark.parametrize(
    "crash",
    [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
    ids=["disk full", "interrupted"],
)
def test_crash_mid_write_keeps_the_previous_table(crash, tmp_path, monkeypatch):
    trials, epochs = _tables()
    write_tables(trials, epochs, tmp_path)
    before = (tmp_path / "trials.parquet").read_bytes()
    real_write = pq.write_table

    def half_then_crash(table, where, **kw):
        buffer = io.BytesIO()
        real_write(table, buffer, **kw)
        Path(where).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise crash

    monkeypatch.setattr(tables.pq, "write_table", half_then_crash)
    newer = trials.assign(test_acc=0.0)
    with pytest.raises(type(crash)):
        write_tables(newer, epochs, tmp_path)
    assert (tmp_path / "trials.parquet").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["epochs.parquet", "trials.parquet"]  # no temp
    pd.testing.assert_frame_equal(read_tables(tmp_path)[0], trials)


KILLED_WRITER = """
import os, signal, sys
import pandas as pd
import pyarrow.parquet as pq
from tunegap.analysis import tables

real_write = pq.write_table

def write_half_then_hang(table, where, **kw):
    real_write(table, where, **kw)
    size = os.path.getsize(where)
    with open(where, "r+b") as f:
        f.truncate(size // 2)
    print("half written", flush=True)
    signal.pause()  # killed here, in the middle of the write

tables.pq.write_table = write_half_then_hang
trials = pd.read_parquet(sys.argv[1] + "/trials.parquet")
tables.write_parquet_atomic(trials.assign(test_acc=0.0), sys.argv[1] + "/trials.parquet",
                            tables.TRIALS_SCHEMA)
"""


def test_writer_killed_mid_write_leaves_the_previous_table(tmp_path):
    """A real crash (SIGKILL: no cleanup runs): readers still find the old, whole table."""
    trials, epochs = _tables()
    write_tables(trials, epochs, tmp_path)
    before = (tmp_path / "trials.parquet").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "half written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert (tmp_path / "trials.parquet").read_bytes() == before
    pd.testing.assert_frame_equal(read_tables(tmp_path)[0], trials)
    # What the killed writer left is only its hidden temp file, never the table's name.
    leftovers = set(os.listdir(tmp_path)) - {"trials.parquet", "epochs.parquet"}
    assert all(n.startswith(".trials.") and ".tmp" in n for n in leftovers)
    assert pq.read_schema(tmp_path / "trials.parquet").names == TRIALS_SCHEMA.names


# ---------------------------------------------------------------- (d) storage


def test_storage_path_under_a_file_is_refused(tmp_path, no_ray):
    blocked = tmp_path / "file"
    blocked.write_text("x")
    code, lines, text = run_cli(
        "ghost_size",
        [
            "--storage-path",
            str(blocked / "results"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
    )
    assert_one_line(code, lines, text, "not writable")


def test_unwritable_storage_from_the_environment_is_refused(tmp_path, no_ray, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("x")
    monkeypatch.setenv("TUNEGAP_STORAGE", str(blocked / "results"))
    code, lines, text = run_cli("ghost_size", ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert_one_line(code, lines, text, "not writable")
    assert str(blocked) in lines[0]


@pytest.mark.parametrize("via", ["flag", "TUNEGAP_STORAGE"])
def test_storage_url_is_refused_not_made_a_local_folder(via, tmp_path, no_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    if via == "flag":
        argv += ["--storage-path", "s3://bucket/tunegap"]
    else:
        monkeypatch.setenv("TUNEGAP_STORAGE", "s3://bucket/tunegap")
    code, lines, text = run_cli("ghost_size", argv)
    assert_one_line(code, lines, text, "s3://bucket/tunegap")
    assert "CLUSTER.md" in lines[0]
    assert not (tmp_path / "s3:").exists()


# ---------------------------------------------------------------- more bad input

BAD_INPUT = [
    (["--address", "foo:bar:baz"], "--address 'foo:bar:baz'"),
    (["--address", "10.0.0.5"], "--address '10.0.0.5'"),
    (["--address", "10.0.0.5:99999"], "--address '10.0.0.5:99999'"),
    (["--address", "ray://"], "--address 'ray://'"),
    (["--address", ":6379"], "--address ':6379'"),
    (["--storage-path", "gs://bucket/x"], "--storage-path 'gs://bucket/x'"),
]


@pytest.mark.parametrize("argv, named", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_more_bad_input(argv, named, tmp_path, no_ray):
    argv = [*argv, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    if "--storage-path" not in argv:
        argv += ["--storage-path", str(tmp_path / "results")]
    code, lines, text = run_cli("ghost_size", argv)
    assert_one_line(code, lines, text, named)


@pytest.mark.parametrize(
    "address",
    ["auto", "local", "10.0.0.5:6379", "head-node:6379", "ray://10.0.0.5:10001", "[::1]:6379"],
)
def test_good_addresses_pass(address):
    assert RunOptions(address=address).address == address


def test_resume_with_another_study_definition_is_refused(tmp_path, no_ray):
    """--resume must repeat the original command: other options would mix two studies."""
    run_dir = tmp_path / "results" / "ghost_size" / "20250101-000000"
    run_dir.mkdir(parents=True)
    module = importlib.import_module("tunegap.studies.ghost_size")
    original = module.build(module.parser().parse_args(["--batch-sizes", "256,1024"]))
    (run_dir / run_module.STATE_FILE).write_text(
        json.dumps(
            {
                "study": original.describe(),
                "parent_run_id": "0" * 32,
                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            }
        )
    )
    code, lines, text = run_cli(
        "ghost_size",
        [
            "--batch-sizes",
            "256,2048",
            "--resume",
            "--storage-path",
            str(tmp_path / "results"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
    )
    assert_one_line(code, lines, text, "--resume")
    assert "other options" in lines[0] and str(run_dir) in lines[0]


def test_unknown_cpu_malloc_mode_stops_the_study_at_start(tmp_path, no_ray, monkeypatch):
    monkeypatch.setenv("TUNEGAP_CPU_MALLOC", "tcmalloc")
    code, lines, text = run_cli("ghost_size", ["--storage-path", str(tmp_path / "results")])
    assert_one_line(code, lines, text, "TUNEGAP_CPU_MALLOC='tcmalloc' is not allowed")
    assert not list((tmp_path / "results").glob("ghost_size/2*"))


def test_resume_against_another_tracking_store_is_refused(tmp_path, no_ray):
    """The run's parent lives in the store it started with: name it, do not traceback."""
    run_dir = tmp_path / "results" / "ghost_size" / "20250101-000000"
    run_dir.mkdir(parents=True)
    module = importlib.import_module("tunegap.studies.ghost_size")
    study = module.build(module.parser().parse_args([]))
    original = f"sqlite:///{tmp_path}/first.db"
    (run_dir / run_module.STATE_FILE).write_text(json.dumps({
        "study": study.describe(), "parent_run_id": "0" * 32,
        "hardware": {"gpus_per_trial": 0.0, "device": "cpu"}, "tracking_uri": original,
    }))
    code, lines, text = run_cli("ghost_size", [
        "--resume", "--device", "cpu", "--storage-path", str(tmp_path / "results"),
        "--tracking-uri", f"sqlite:///{tmp_path}/other.db",
    ])
    assert_one_line(code, lines, text, "--resume")
    assert original in lines[0] and "--tracking-uri" in lines[0]


REFUSED_LATE = [
    ["--tracking-uri", "http://127.0.0.1:{port}"],
    ["--address", "127.0.0.1:{port}"],
    ["--workload", "cifar10-resnet44", "--data-dir", "{tmp}/no-data"],
]


@pytest.mark.parametrize("argv", REFUSED_LATE, ids=[a[0] for a in REFUSED_LATE])
def test_a_refusal_leaves_nothing_behind(argv, tmp_path, no_ray):
    """Refused after the cheap checks passed: still no results folder and no MLflow run."""
    port = closed_port()
    argv = [a.format(port=port, tmp=tmp_path) for a in argv]
    if "--tracking-uri" not in argv:
        argv += ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    storage = tmp_path / "new" / "results"
    started = time.monotonic()
    code, lines, text = run_cli("ghost_size", [*argv, "--storage-path", str(storage)])
    assert code == 2 and len(lines) == 1 and "Traceback" not in text, text
    assert time.monotonic() - started < 30
    assert not (tmp_path / "new").exists()
    db = tmp_path / "mlflow.db"
    if db.exists():
        client = mlflow.MlflowClient(f"sqlite:///{db}")
        assert not [e for e in client.search_experiments() if e.name.startswith("tunegap/")]
