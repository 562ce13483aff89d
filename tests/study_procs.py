"""A study's driver as a real process: started in its own session (like a terminal job), its
progress read from the run folder, signals sent to the whole process group; and
`refused_line`, a study's command run in-process on bad input."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# A limit that only a hung process reaches: tests never fail because a machine is slow (the
# 600 s this replaced was reached once by a resume on a loaded 2-core machine), but a study
# that hangs still ends the test instead of CI's whole run.
HANG_S = 1800


def regime_study(storage: Path, tracking_uri: str, data_dir: Path, *extra: str) -> list[str]:
    """Three trials, the longest (80 epochs at B=2048) started first: a study that is
    surely mid-run when its longest trial has 20 epochs."""
    return [
        sys.executable, "-m", "tunegap.studies.regime_length", "--epochs", "2",
        "--baseline-epochs", "2",
        "--batch-size", "2048", "--multipliers", "1,40", "--max-concurrent", "1", "--seeds", "1",
        "--storage-path", str(storage), "--tracking-uri", tracking_uri, "--device", "cpu",
        "--data-dir", str(data_dir), "--checkpoint-every", "5", *extra,
    ]


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(command, start_new_session=True, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def run_dirs(storage: Path, study: str = "regime_length") -> list[Path]:
    return sorted((storage / study).glob("2*"))


def epochs_seen(storage: Path, study: str = "regime_length") -> int:
    """Epochs the driver's journal holds, over all trials of the newest run."""
    dirs = run_dirs(storage, study)
    journal = dirs[-1] / "epochs_journal.jsonl" if dirs else None
    try:
        return len(journal.read_text().splitlines()) if journal else 0
    except OSError:
        return 0


def wait_for_epochs(proc: subprocess.Popen, storage: Path, count: int, *,
                    study: str = "regime_length", timeout_s: float = HANG_S) -> None:
    deadline = time.monotonic() + timeout_s
    while epochs_seen(storage, study) < count:
        assert proc.poll() is None, "the study ended before the fault"
        assert time.monotonic() < deadline, "the study never got going"
        time.sleep(0.2)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """What a terminal's Ctrl-C (SIGINT) or a kill of the job does: the whole group."""
    os.killpg(proc.pid, sig)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1, on a sqlite file that outlives it."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = HANG_S) -> MlflowServer:
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
            "--artifacts-destination", str(self.folder / "artifacts"),
        ]
        self.proc = start(command, self.folder / f"server-{time.monotonic_ns()}.log")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # A plain probe: MLflow's client retries a refused connection for minutes.
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return self
            except OSError:
                exited = self.proc.poll() is not None
                if exited or time.monotonic() >= deadline:
                    self.kill()  # a server that never answered must not outlive the test
                    raise AssertionError("mlflow server exited" if exited
                                         else "mlflow server never answered") from None
                time.sleep(0.5)

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def refused_line(module, argv: list[str], tmp_path: Path, capsys) -> str:
    """Run a study module's `main(argv)` in-process with its results and MLflow store in
    `tmp_path`; assert it refused in one line with exit status 2, no traceback and no
    results folder, and return that line."""
    import pytest

    with pytest.raises(SystemExit) as stop:
        module.main([*argv, "--storage-path", str(tmp_path / "results"),
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "results").exists()
    return lines[0]
