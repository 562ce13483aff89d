"""How glibc treats freed CPU memory in training processes (tunegap.cpu_memory).

Each check runs in a fresh interpreter, since the setting is process-wide and cannot be
undone. glibc's own accounting (mallinfo2) says where a block came from: mmap'd blocks go
back to the kernel on free, so the next step faults them in again; heap blocks are reused.
Nothing is timed.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys

import pytest
from study_procs import HANG_S

from tunegap.cpu_memory import MODE_VARIABLE


def _glibc_with_mallinfo2() -> bool:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc >= 2.33


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33")

PLACEMENT = """
import ctypes, json, os
import torch
from tunegap.cpu_memory import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
mode = reuse_freed_memory()
MiB = 2**20

def placed(mib):
    before = libc.mallinfo2()
    t = torch.empty(mib * MiB // 4)
    t.fill_(1.0)  # touched, as an activation is
    during = libc.mallinfo2()
    del t
    after = libc.mallinfo2()
    # Mapped for this block; or from the heap, which still holds it free after the free.
    return {"mapped": during.hblkhd - before.hblkhd >= mib * MiB,
            "heap_kept": after.fordblks >= mib * MiB}

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

result = {"mode": mode, "16": placed(16), "64": placed(64)}
# Between trials the kept memory goes back to the kernel.
from tunegap.cpu_memory import release_freed_memory
before = resident()
release_freed_memory()
result["released_mib"] = (before - resident()) // MiB
print(json.dumps(result))
"""


def clean_env(mode: str | None) -> dict[str, str]:
    """This environment without anything that changes the C library's malloc."""
    env = {k: v for k, v in os.environ.items()
           if k not in (MODE_VARIABLE, "LD_PRELOAD", "GLIBC_TUNABLES")
           and not k.startswith("MALLOC_")}
    if mode is not None:
        env[MODE_VARIABLE] = mode
    return env


def run_python(code: str, *args: str, mode: str | None = None) -> dict:
    env = clean_env(mode)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "mode, small_from_heap, big_from_heap",
    [(None, True, False), ("cached", True, False), ("heap", True, True)],
    ids=["default", "cached", "heap"],
)
def test_blocks_come_from_a_heap_that_is_never_trimmed(mode, small_from_heap, big_from_heap):
    """16 MiB is under glibc's 32 MiB cap for heap blocks, 64 MiB over it."""
    got = run_python(PLACEMENT, mode=mode)
    assert got["mode"] == (mode or "cached")
    for size, from_heap in (("16", small_from_heap), ("64", big_from_heap)):
        # From the heap, and still held by it after the free, for the next step to reuse.
        assert got[size] == {"mapped": not from_heap, "heap_kept": from_heap}, (size, got)
    assert got["released_mib"] >= (64 if big_from_heap else 16), got


def test_system_leaves_glibc_to_map_and_return_big_blocks():
    got = run_python(PLACEMENT, mode="system")
    assert got["mode"] == "system"
    assert got["64"] == {"mapped": True, "heap_kept": False}
    assert got["released_mib"] < 8, got  # nothing kept, nothing to hand back


ENGINE = """
import json, sys
from tunegap.config import TrialConfig
from tunegap.cpu_memory import applied_mode
from tunegap.engine import Engine
assert applied_mode() is None
Engine(TrialConfig(workload="mnist1d-cnn", batch_size=512, epochs=1, device="cpu",
                   data_dir=sys.argv[1]))
print(json.dumps({"mode": applied_mode()}))
"""


@pytest.mark.parametrize("mode", [None, "heap", "system"])
def test_engine_on_the_cpu_sets_the_mode_asked_for(data_dir, mode):
    assert run_python(ENGINE, str(data_dir), mode=mode)["mode"] == (mode or "cached")


def test_unknown_mode_is_refused_before_training(tmp_path):
    env = clean_env("jemalloc")
    proc = subprocess.run(
        [sys.executable, "-m", "tunegap.train", "--batch-size", "64", "--epochs", "1"],
        capture_output=True, text=True, env=env, timeout=HANG_S,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TUNEGAP_CPU_MALLOC='jemalloc' is not allowed" in lines[0]
    assert "cached, heap, system" in lines[0]


STUDY = """
import json, sys
import mlflow
from tunegap import RunOptions, Study, run_study
tmp, data_dir = sys.argv[1], sys.argv[2]
study = Study(name="ghost_size", workload="mnist1d-cnn", epochs=1, baseline_epochs=1,
              grid={"batch_size": (1024,), "ghost_batch_size": (None, 64)})
options = RunOptions(storage_path=tmp + "/results", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                     data_dir=data_dir, quiet=True)
outcome = run_study(study, options=options)
client = mlflow.MlflowClient(options.tracking_uri)
exp = client.get_run(outcome.parent_run_id).info.experiment_id
runs = client.search_runs([exp], "tags.`tunegap.role` = 'trial'")
print(json.dumps([r.data.params.get("resolved_cpu_malloc") for r in runs]))
"""


@pytest.mark.slow
def test_study_trials_run_and_log_the_mode_the_driver_was_given(tmp_path, data_dir):
    proc = subprocess.run([sys.executable, "-c", STUDY, str(tmp_path), str(data_dir)],
                          capture_output=True, text=True, env=clean_env("heap"), timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert modes == ["heap"] * 3, modes  # two grid points and the baseline
