"""Where trials run: the Ray connection, and the GPUs (or none) each trial reserves."""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunegap.cpu_memory import MODE_VARIABLE as CPU_MALLOC_VARIABLE
from tunegap.runner.options import RunOptions
from tunegap.study import Study, StudyError
from tunegap.workloads import Workload, get_workload

LOOPBACK = "127.0.0.1"
# Ray's switch for clusters (off by default on macOS and Windows only): off, Ray takes
# 127.0.0.1 as this machine's address, for a local Ray and for a loopback --address alike.
_RAY_CLUSTERS_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_START_A_CLUSTER = (
    "start the cluster (`ray start --head` or `ray up cluster.yaml`) or drop --address for "
    "a local Ray"
)
# An HTTP/2 client preface and an empty SETTINGS frame: any gRPC server (Ray's GCS and its
# Ray Client server both are) answers with a SETTINGS frame of its own.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_HTTP2_SETTINGS = 0x04
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # ray._common.network_utils.is_localhost


def init_ray(options: RunOptions) -> None:
    """Connect this process to Ray: the cluster of `options.address`, or a fresh local Ray
    on 127.0.0.1 only (`start_local_ray`) where there is none. Call `check_ray_address`
    first: Ray itself waits for minutes on an address where no cluster answers."""
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
    if _starts_local_ray(options.address):
        # "local" starts a fresh Ray owned by this process, even where `ray start` left one.
        start_local_ray(include_dashboard=False, log_to_driver=False, **runtime_env)
    else:
        ray.init(address=options.address, log_to_driver=False, **runtime_env)


def start_local_ray(**init_kwargs: Any) -> None:
    """`ray.init` a fresh local Ray owned by this process whose every port (GCS, raylet,
    object manager, workers, runtime-env agent) listens on 127.0.0.1 only: Ray's ports run
    code for whoever reaches them. `init_kwargs` go to `ray.init` (not `address`).

    On Linux `ray.init(_node_ip_address="127.0.0.1")` alone is not enough: Ray swaps a
    loopback node address for the machine's own (`services.resolve_ip_for_localhost`)
    unless Ray clusters are off, as they are on macOS and Windows, where Ray keeps a local
    Ray on 127.0.0.1. Its gRPC servers bind 127.0.0.1 when that is the node address.
    """
    import ray

    # Ray 2.60 has no public way to keep a local Ray on 127.0.0.1 on Linux (see above).
    from ray._private import ray_constants

    # Only this call reads the flag (services.get_node_ip_address): the processes it starts
    # are given the node address, and once Ray runs it answers with its node's address.
    # Restored after, so a later ray.init(address=...) here still reaches a cluster.
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address=LOOPBACK, **init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _starts_local_ray(address: str | None) -> bool:
    """Whether `ray.init` for `--address` starts a Ray of its own rather than connect."""
    if address in (None, "local"):
        return True
    # ray.init(address="auto") takes RAY_ADDRESS first, and "local" there starts one.
    return address == "auto" and os.environ.get("RAY_ADDRESS") == "local"


def check_ray_address(address: str | None, *, timeout_s: float = 5.0) -> None:
    """Refuse an `--address` where no Ray cluster answers, within about `timeout_s` seconds.

    `ray.init` waits for minutes there (a closed port, a port of something else, a cluster
    recorded by a `ray start` that has since gone). This checks the address the way
    `ray.init` would use it, with plain sockets and without Ray: `auto` is RAY_ADDRESS, else
    the cluster recorded in <Ray temp dir>/ray_current_cluster, else a Ray running on this
    machine; a loopback host:port is dialed at this machine's address, as Ray does. A
    connection must answer as a gRPC server (HTTP/2) does, unless RAY_USE_TLS is on. None
    and "local" (a new local Ray) pass. Raises StudyError with one line.
    """
    if _starts_local_ray(address):
        return
    for target, origin in _ray_targets(str(address)):
        problem = _probe(target, timeout_s)
        if problem is not None:
            raise StudyError(f"--address {address}{origin}: {problem}")
        if target.startswith("ray://") and importlib.util.find_spec("grpc") is None:
            raise StudyError(
                f"--address {address}{origin}: ray:// needs Ray Client, which is not installed "
                'here: pip install "ray[client]" (the installed ray version), or give the '
                "head's GCS address host:port (port 6379 by default) instead"
            )


def _ray_targets(address: str) -> list[tuple[str, str]]:
    """(address Ray would dial, where it came from) for `--address`; the order of
    services.get_ray_address_from_environment for "auto"."""
    if address != "auto":
        return [(address, "")]
    env = os.environ.get("RAY_ADDRESS", "")
    if env and env != "auto":
        return [(env, f" (RAY_ADDRESS={env})")]
    recorded_file = _ray_address_file()
    try:
        recorded = recorded_file.read_text().strip()
    except OSError:
        recorded = ""
    if recorded:
        return [(recorded, f" (the cluster recorded in {recorded_file}: {recorded})")]
    running = sorted(running_gcs_addresses())
    if running:
        return [(gcs, f" (the Ray running on this machine at {gcs})") for gcs in running]
    raise StudyError(
        f"--address auto: no Ray cluster found (no RAY_ADDRESS, no {recorded_file}, no Ray "
        f"running on this machine): {_START_A_CLUSTER}"
    )


def _ray_address_file() -> Path:
    """Where `ray start` records its cluster: ray._common.utils.get_ray_address_file."""
    if "RAY_TMPDIR" in os.environ:
        system_tmp = os.environ["RAY_TMPDIR"]
    else:
        system_tmp = os.environ.get("TMPDIR", "/tmp")
    return Path(system_tmp) / "ray" / "ray_current_cluster"


def running_gcs_addresses() -> set[str]:
    """The --gcs-address of every raylet on this machine (services._find_address_from_flag)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        args = [arg for arg in argv.split("\0") if arg]
        if not args or "raylet" not in os.path.basename(args[0]):
            continue
        for word in " ".join(args).split(" "):
            name, _, value = word.partition("=")
            if name == "--gcs-address" and value not in ("", "None"):
                found.add(value)
    return found


def _probe(target: str, timeout_s: float) -> str | None:
    """What is wrong with `target` as a Ray address ("problem: what to do"), or None."""
    client = target.startswith("ray://")
    parsed = _host_port(target.removeprefix("ray://"))
    if parsed is None:
        return f"{target!r} is not host:port or ray://host:port"
    host, port = parsed
    dialed = host if client else _dialed_host(host)
    where = (
        "there"
        if dialed == host
        else f"at {_joined(dialed, port)}, this machine's address, which Ray dials for {host}"
    )
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((dialed, port), timeout=timeout_s) as sock:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return None  # TLS first: the cleartext HTTP/2 check would fail on it
            return _not_grpc(sock, where, deadline, timeout_s)
    except ConnectionRefusedError:
        return f"nothing answers {where} (connection refused): {_START_A_CLUSTER}"
    except TimeoutError:
        return f"no answer {where} within {timeout_s:g} s: {_START_A_CLUSTER}"
    except socket.gaierror as err:
        return f"host {host!r} is not known ({err.strerror}): check the head's address"
    except OSError as err:
        return f"cannot connect {where} ({err.strerror or err}): {_START_A_CLUSTER}"


def _not_grpc(sock: socket.socket, where: str, deadline: float, timeout_s: float) -> str | None:
    """None where `sock` answers as a gRPC server, else what to do."""
    wrong_port = (
        "check the port (the head's GCS port, 6379 by default, or ray://host:10001 for "
        "Ray Client)"
    )
    sock.settimeout(max(deadline - time.monotonic(), 0.1))
    reply = b""
    try:
        sock.sendall(_HTTP2_PREFACE)
        while len(reply) < 9:
            chunk = sock.recv(9 - len(reply))
            if not chunk:
                break
            reply += chunk
    except TimeoutError:
        return (
            f"something listens {where} but sends no Ray reply within {timeout_s:g} s: "
            f"{wrong_port}"
        )
    except OSError as err:
        return (
            f"something listens {where} but drops the connection ({err.strerror or err}): "
            f"{wrong_port}"
        )
    if len(reply) < 9 or reply[3] != _HTTP2_SETTINGS:
        return f"something answers {where}, but not as Ray does (no gRPC): {wrong_port}"
    return None


def _host_port(text: str) -> tuple[str, int] | None:
    """host:port or [v6]:port as (host, port), else None."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _joined(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dialed_host(host: str) -> str:
    """The host Ray dials for `host`: this machine's own address for a loopback one
    (services.resolve_ip_for_localhost), unless Ray clusters are off."""
    if host not in _LOOPBACK_NAMES:
        return host
    if os.environ.get(_RAY_CLUSTERS_VARIABLE, "1").lower() not in ("1", "true"):
        return LOOPBACK
    return _machine_address() or host


def _machine_address() -> str | None:
    """This machine's address toward the internet, found as Ray finds it (a UDP socket
    "connected" to a public resolver; nothing is sent)."""
    public_resolvers = (
        (socket.AF_INET, ("8.8.8.8", 53)),
        (socket.AF_INET6, ("2001:4860:4860::8888", 53)),
    )
    for family, far in public_resolvers:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                udp.connect(far)
                return udp.getsockname()[0]
        except OSError:
            continue
    return None


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
