"""How glibc treats freed CPU memory in training processes (tunegap.cpu_memory).

Each check runs in a fresh interpreter, since the setting is process-wide and cannot be
undone. glibc's own accounting (mallinfo2) says where a block came from: mmap'd blocks go
back to the kernel on free, so the next step faults them in again; heap blocks are reused.
Nothing is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunegap.cpu_memory import MODE_VARIABLE

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc only",
)

PLACEMENT = """
import ctypes, json
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
    during = libc.mallinfo2()
    del t
    after = libc.mallinfo2()
    return {"mapped": during.hblkhd - before.hblkhd >= mib * MiB,
            "heap_kept": after.arena - before.arena >= mib * MiB}

print(json.dumps({"mode": mode, "16": placed(16), "64": placed(64)}))
"""


def run_python(code: str, *args: str, mode: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop(MODE_VARIABLE, None)
    if mode is not None:
        env[MODE_VARIABLE] = mode
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300)
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


def test_system_leaves_glibc_to_map_and_return_big_blocks():
    got = run_python(PLACEMENT, mode="system")
    assert got["mode"] == "system"
    assert got["64"] == {"mapped": True, "heap_kept": False}


ENGINE = """
import json, sys
from tunegap.config import TrialConfig
from tunegap.cpu_memory import reuse_freed_memory
from tunegap.train import Engine
Engine(TrialConfig(workload="mnist1d-cnn", batch_size=512, epochs=1, device="cpu",
                   data_dir=sys.argv[1]))
print(json.dumps({"mode": reuse_freed_memory()}))
"""


@pytest.mark.parametrize("mode", [None, "heap", "system"])
def test_engine_on_the_cpu_sets_the_mode_asked_for(data_dir, mode):
    assert run_python(ENGINE, str(data_dir), mode=mode)["mode"] == (mode or "cached")


def test_unknown_mode_is_refused_before_training(tmp_path):
    env = dict(os.environ, **{MODE_VARIABLE: "jemalloc"})
    proc = subprocess.run(
        [sys.executable, "-m", "tunegap.train", "--batch-size", "64", "--epochs", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TUNEGAP_CPU_MALLOC='jemalloc' is not allowed" in lines[0]
    assert "cached, heap, system" in lines[0]
