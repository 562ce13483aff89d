"""Freed CPU memory stays in the training process (glibc), so large batches stop faulting.

Each check runs in a fresh interpreter: the setting is process-wide and cannot be undone.
Page faults are counted, not timed, so a slow machine cannot fail these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunegap.cpu_memory import OPT_OUT_VARIABLE

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc only",
)

FAULTS = """
import json, resource, sys
import torch
from tunegap.cpu_memory import keep_freed_memory, keeps_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "call" else None
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(64 * 2**20)  # 256 MiB, as a large batch's activation
    t.fill_(1.0)
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "kept": keeps_freed_memory(), "faults": faults[1:]}))
"""


def run_python(code: str, *args: str, opt_out: bool = False) -> dict:
    env = dict(os.environ)
    env.pop(OPT_OUT_VARIABLE, None)
    if opt_out:
        env[OPT_OUT_VARIABLE] = "1"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
    kept = run_python(FAULTS, "call")
    assert kept["applied"] is True and kept["kept"] is True
    # 256 MiB freshly mapped would take 128 faults even in 2 MiB huge pages, 65,536 in 4 KiB.
    assert max(kept["faults"]) < 16, kept["faults"]


def test_glibc_left_alone_maps_and_faults_each_time():
    untouched = run_python(FAULTS, "skip")
    assert untouched["kept"] is False
    assert min(untouched["faults"]) >= 128, untouched["faults"]


def test_opting_out_leaves_glibc_alone():
    result = run_python(FAULTS, "call", opt_out=True)
    assert result["applied"] is False and result["kept"] is False
    assert min(result["faults"]) >= 128, result["faults"]


ENGINE = """
import json, sys
from tunegap.config import TrialConfig
from tunegap.cpu_memory import keeps_freed_memory
from tunegap.train import Engine
Engine(TrialConfig(workload="mnist1d-cnn", batch_size=512, epochs=1, device="cpu",
                   data_dir=sys.argv[1]))
print(json.dumps({"kept": keeps_freed_memory()}))
"""


@pytest.mark.parametrize("opt_out", [False, True], ids=["default", "opted-out"])
def test_engine_on_the_cpu_keeps_freed_memory_unless_told_not_to(data_dir, opt_out):
    assert run_python(ENGINE, str(data_dir), opt_out=opt_out)["kept"] is (not opt_out)
