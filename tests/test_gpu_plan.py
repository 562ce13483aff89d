"""GPUs per trial: what a study asks Ray for, checked against the machine before trials start.

The GPU counts are arguments of `plan_gpus_per_trial`, so the GPU cases run here without a
GPU (nothing is mocked); the end-to-end case runs a workload whose default asks for GPUs on
this CPU-only machine, where asking Ray for a GPU would leave the trial pending for ever.
"""

from __future__ import annotations

import mlflow
import pytest
from study_procs import HANG_S
from test_datasets import write_mnist

from tunegap import RunOptions, Study, StudyError, run_study
from tunegap.runner.resources import plan_gpus_per_trial
from tunegap.workloads import get_workload

RESNET = get_workload("cifar10-resnet44")  # asks for 0.5 GPU per trial
MNIST1D = get_workload("mnist1d-cnn")  # CPU-sized: asks for none


def plan(workload, local_gpus, **kw):
    return plan_gpus_per_trial(workload, RunOptions(**kw), local_gpus)


@pytest.mark.parametrize(
    "workload, local_gpus, kw, expected",
    [
        (RESNET, 0, {}, 0.0),  # auto without a GPU: train on the CPU
        (RESNET, 1, {}, 0.5),  # the workload's share
        (RESNET, 1, {"gpus_per_trial": 0.25}, 0.25),
        (RESNET, 2, {"gpus_per_trial": 2.0}, 2.0),
        (RESNET, 1, {"device": "cpu"}, 0.0),
        (MNIST1D, 1, {}, 0.0),
        (MNIST1D, 1, {"device": "cuda", "gpus_per_trial": 0.25}, 0.25),
        # On a cluster the autoscaler may still add GPU nodes: the driver's count says nothing.
        (RESNET, 0, {"address": "auto"}, 0.5),
        (RESNET, 0, {"address": "auto", "device": "cuda", "gpus_per_trial": 4.0}, 4.0),
    ],
)
def test_gpus_per_trial_plan(workload, local_gpus, kw, expected):
    assert plan(workload, local_gpus, **kw) == expected


@pytest.mark.parametrize(
    "workload, local_gpus, kw, named",
    [
        (RESNET, 0, {"device": "cuda"}, "--device cuda is not allowed here: CUDA is not"),
        (MNIST1D, 1, {"device": "cuda"}, "--device cuda with 0 GPUs per trial"),
        (MNIST1D, 0, {"device": "cuda", "address": "auto"}, "--gpus-per-trial, e.g. 0.25"),
        (RESNET, 1, {"gpus_per_trial": 2.0}, "--gpus-per-trial 2 is more than the 1 GPU(s)"),
    ],
)
def test_impossible_gpu_requests_are_refused(workload, local_gpus, kw, named):
    with pytest.raises(StudyError, match=named.replace("(", r"\(").replace(")", r"\)")):
        plan(workload, local_gpus, **kw)


@pytest.mark.parametrize("bad", [1.5, -0.25, float("nan")])
def test_gpu_fractions_ray_cannot_hand_out_are_refused(bad):
    with pytest.raises(StudyError, match="--gpus-per-trial"):
        RunOptions(gpus_per_trial=bad)


@pytest.mark.slow
def test_gpu_workload_with_device_auto_runs_on_a_machine_without_gpus(tmp_path, ray_session):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the machine without a GPU (CI's kind)")
    # Enough examples for the baseline's batch (B0 = 128): a larger batch is refused.
    write_mnist(tmp_path / "data", gz=False, n_train=128, n_test=32)
    study = Study(name="table1", workload="mnist-f1", epochs=1, baseline_epochs=1, grid={"batch_size": (32,)}, seeds=1)
    assert get_workload("mnist-f1").gpus_per_trial > 0
    options = RunOptions(
        storage_path=str(tmp_path / "results"),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        data_dir=str(tmp_path / "data"),
        quiet=True,
    )
    outcome = run_study(study, options=options)
    # The grid point and the baseline at B0 that every map is measured against.
    assert list(outcome.trials["outcome"]) == ["completed", "completed"]
    run = mlflow.MlflowClient(options.tracking_uri).get_run(outcome.parent_run_id)
    assert run.info.status == "FINISHED"


def test_trials_without_a_gpu_share_are_told_to_use_the_cpu():
    # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for actors that reserved no GPU, so "auto"
    # in such a trial would train on a GPU nobody reserved: the plan makes it "cpu".
    from tunegap.runner.resources import plan_trial_hardware

    study = Study(name="table1", workload="mnist1d-cnn", epochs=1, baseline_epochs=1, grid={"batch_size": (64,)})
    planned = plan_trial_hardware(study, RunOptions())
    assert (planned.gpus_per_trial, planned.device) == (0.0, "cpu")
    on_cluster = plan_trial_hardware(study, RunOptions(address="auto", gpus_per_trial=0.5))
    assert (on_cluster.gpus_per_trial, on_cluster.device) == (0.5, "auto")


def test_resume_that_would_plan_other_gpus_is_refused(tmp_path):
    # A run started (say) on a GPU machine with half a GPU per trial: its restored trials
    # keep that request, so resuming where there is none could never run them.
    import json

    from tunegap.runner.run import STATE_FILE

    study = Study(name="table1", workload="mnist1d-cnn", epochs=1, baseline_epochs=1, grid={"batch_size": (64,)})
    run_dir = tmp_path / "results" / "table1" / "20261124-120000"
    run_dir.mkdir(parents=True)
    state = {
        "study": study.describe(),
        "parent_run_id": "0" * 32,
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "hardware": {"gpus_per_trial": 0.5, "device": "auto"},
    }
    (run_dir / STATE_FILE).write_text(json.dumps(state))
    options = RunOptions(
        storage_path=str(tmp_path / "results"),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        resume=True,
        device="cpu",
    )
    with pytest.raises(StudyError, match=r"gave each trial 0.5 GPU\(s\) on device auto, but"):
        run_study(study, options=options)


SHARE_SCRIPT = """
import json, sys
import mlflow, ray
from tunegap import RunOptions, Study, run_study

gpus_per_trial, tmp, data_dir = float(sys.argv[1]), sys.argv[2], sys.argv[3]
# One GPU that exists only for Ray's scheduler (this machine has none): trials that reserve
# a share of it are placed as on a real GPU, then train on the CPU (device auto, no CUDA).
ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
study = Study(name="ghost_size", workload="mnist1d-cnn", epochs=3, baseline_epochs=3,
              grid={"batch_size": (256,), "ghost_batch_size": (None, 32, 64, 128)})
options = RunOptions(storage_path=tmp + "/results", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                     data_dir=data_dir, gpus_per_trial=gpus_per_trial, quiet=True)
outcome = run_study(study, options=options)
client = mlflow.MlflowClient(options.tracking_uri)
exp = client.get_run(outcome.parent_run_id).info.experiment_id
runs = client.search_runs([exp], "tags.`tunegap.role` = 'trial'")
print(json.dumps({"outcomes": sorted(outcome.trials["outcome"]),
                  "spans": [(r.info.start_time, r.info.end_time) for r in runs]}))
"""


def most_at_once(spans) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("gpus_per_trial, packed", [(1.0, False), (0.25, True)])
def test_fractional_gpu_shares_pack_trials_onto_one_gpu(tmp_path, data_dir, gpus_per_trial, packed):
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", SHARE_SCRIPT, str(gpus_per_trial), str(tmp_path), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outcomes"] == ["completed"] * 5  # four grid points and the baseline
    at_once = most_at_once(result["spans"])
    if packed:
        assert at_once >= 2, result["spans"]
    else:
        assert at_once == 1, result["spans"]
