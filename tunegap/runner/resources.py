"""Where trials run: the Ray connection, and the GPUs (or none) each trial reserves."""

from __future__ import annotations

import os
from dataclasses import replace

from tunegap.cpu_memory import MODE_VARIABLE as CPU_MALLOC_VARIABLE
from tunegap.study import RunOptions, Study, StudyError
from tunegap.workloads import Workload, get_workload


def init_ray(options: RunOptions) -> None:
    import ray

    # Frequent small checkpoints are cheap here (a trial is small); Tune's warning about
    # them would drown the progress lines.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's newer console output prints its own banner even at verbose=0; the legacy one is
    # silent there, leaving the runner's one line per trial.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    if ray.is_initialized():
        return
    # Trials take their environment from the Ray they run in, which on a cluster is not the
    # driver's: pass on the malloc mode checked here, so trials run what the driver was told.
    mode = os.environ.get(CPU_MALLOC_VARIABLE)
    runtime_env = {} if mode is None else {"runtime_env": {"env_vars": {CPU_MALLOC_VARIABLE: mode}}}
    if options.address and options.address != "local":
        ray.init(address=options.address, log_to_driver=False, **runtime_env)
    else:
        # "local" starts a fresh Ray owned by this process, even where `ray start` left one.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, **runtime_env)


def local_gpu_count() -> int:
    """GPUs a local Ray offers trials: the running Ray's own count where this process has
    one already (a notebook, a test session), else the machine's."""
    import ray

    if ray.is_initialized():
        return int(ray.cluster_resources().get("GPU", 0))
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_trial_hardware(study: Study, options: RunOptions) -> RunOptions:
    """`options` with the planned GPUs per trial, and `--device auto` made "cpu" where a
    trial gets no GPU share: Ray leaves a GPU visible to an actor that reserved none, so
    "auto" would otherwise train on a GPU nobody reserved."""
    gpus = plan_gpus_per_trial(get_workload(study.workload), options, local_gpu_count())
    device = "cpu" if gpus == 0 and options.device == "auto" else options.device
    return replace(options, gpus_per_trial=gpus, device=device)


def plan_gpus_per_trial(workload: Workload, options: RunOptions, local_gpus: int) -> float:
    """The GPUs each trial asks Ray for, checked before any trial starts.

    A local Ray has this machine's GPUs only: `--device auto` without one trains on the CPU
    (asking for a GPU would leave every trial pending for ever), and `--device cuda` without
    one, or more GPUs per trial than there are, is refused. On a cluster (`--address`) the
    autoscaler may still be adding GPU nodes, so only the request itself is checked.
    """
    if options.device == "cpu":
        return 0.0
    gpus = workload.gpus_per_trial if options.gpus_per_trial is None else options.gpus_per_trial
    on_cluster = options.address not in (None, "local")
    if not on_cluster and local_gpus == 0:
        if options.device == "cuda":
            raise StudyError(
                "--device cuda is not allowed here: CUDA is not available (use --device auto "
                "or cpu, or --address to run on a cluster with GPUs)"
            )
        return 0.0
    if options.device == "cuda" and gpus == 0:
        raise StudyError(
            f"--device cuda with 0 GPUs per trial (workload {workload.name}) is not allowed: "
            "pass --gpus-per-trial, e.g. 0.25 for four trials per GPU"
        )
    if not on_cluster and gpus > local_gpus:
        raise StudyError(
            f"--gpus-per-trial {gpus:g} is more than the {local_gpus} GPU(s) here: use at "
            f"most {local_gpus}"
        )
    return gpus
