"""`--address` where no Ray cluster answers is refused within seconds, and a study's own local
Ray listens on 127.0.0.1 only.

`check_ray_address` is checked against real sockets: closed ports, a listener that never
answers, an HTTP server, a stale `ray start` record, and a real Ray's GCS. The local Ray is
started by `init_ray` in a subprocess with a temp dir of its own; its processes are found by
a marker in their environment (Ray passes it on to every process it starts) and killed by
pid at the end, never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunegap.runner.resources import check_ray_address, running_gcs_addresses
from tunegap.study import StudyError

MARKER = "TUNEGAP_TEST_LOCAL_RAY"
REPO = Path(__file__).resolve().parents[1]
QUICK = 30.0  # "within seconds", with room for a slow machine


def closed_port() -> int:
    """A port nothing listens on, on any address of this machine."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def refusal(address: str | None, **kwargs: float) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(StudyError) as err:
        check_ray_address(address, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message, time.monotonic() - started


@pytest.fixture
def no_auto_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RAY_ADDRESS, and Ray's temp dir (where `ray start` records its cluster) in tmp_path;
    the test session's own Ray reads its settings at start, so this leaves it alone."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    return tmp_path / "ray" / "ray_current_cluster"


@pytest.mark.parametrize("form", ["{}", "ray://{}", "[::1]:{port}", "localhost:{port}"])
def test_a_closed_port_is_refused_at_once(form):
    port = closed_port()
    address = form.format(f"127.0.0.1:{port}", port=port)
    message, took = refusal(address)
    assert message.startswith(f"--address {address}: nothing answers ")
    assert "connection refused" in message and "ray start --head" in message
    assert took < QUICK


def test_auto_takes_ray_address_first(no_auto_env, monkeypatch):
    # A recorded cluster that answers would pass; RAY_ADDRESS comes first, as in ray.init.
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    message, took = refusal("auto")
    assert message.startswith(f"--address auto (RAY_ADDRESS={address}): nothing answers ")
    assert took < QUICK


def test_auto_with_a_stale_ray_start_record_is_refused(no_auto_env):
    """What `auto` meets after a `ray start` cluster died: its address, still recorded."""
    # Private on purpose: the test checks the very function Ray's `auto` reads the recorded
    # address with; Ray has no public API for that record.
    import ray._private.utils

    recorded = f"127.0.0.1:{closed_port()}"
    no_auto_env.parent.mkdir(parents=True)
    no_auto_env.write_text(recorded + "\n")
    assert ray._private.utils.read_ray_address() == recorded  # the file Ray itself reads
    message, took = refusal("auto")
    assert message.startswith(
        f"--address auto (the cluster recorded in {no_auto_env}: {recorded}): nothing answers"
    )
    assert took < QUICK


def test_auto_with_no_cluster_anywhere_is_refused(no_auto_env):
    if running_gcs_addresses():
        pytest.skip("a Ray runs on this machine, and `auto` would connect to it")
    message, took = refusal("auto")
    assert message.startswith("--address auto: no Ray cluster found")
    assert str(no_auto_env) in message and "ray start --head" in message
    assert took < QUICK


def test_the_raylet_scan_finds_what_ray_finds():
    """`auto` without a record connects to any Ray running here: the same scan as Ray's."""
    # Ray's own scan has no public name in Ray 2.60: the test compares against it.
    from ray._private import services

    for _ in range(5):  # other Rays on the machine may come and go between the two scans
        ours = running_gcs_addresses()
        if ours == services._find_address_from_flag("--gcs-address"):
            return
        time.sleep(0.2)
    pytest.fail(f"tunegap found {ours}, Ray found another set")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does) and never sends anything."""
    with socket.socket() as server:
        server.bind(("", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_port_that_never_answers_is_refused_after_the_timeout(silent_port, scheme):
    address = f"{scheme}127.0.0.1:{silent_port}"
    message, took = refusal(address, timeout_s=1.0)
    assert message.startswith(f"--address {address}: something listens ")
    assert "sends no Ray reply within 1 s" in message and "6379" in message
    assert took < QUICK


def test_an_http_server_is_not_taken_for_ray():
    server = http.server.ThreadingHTTPServer(("", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"ray://127.0.0.1:{server.server_address[1]}"
        message, took = refusal(address)
    finally:
        server.shutdown()
        server.server_close()
    assert "something answers there, but not as Ray does (no gRPC)" in message
    assert took < QUICK


def test_an_unknown_host_is_refused():
    message, took = refusal("no-such-head.invalid:6379")
    assert message.startswith("--address no-such-head.invalid:6379: host 'no-such-head.invalid'")
    assert took < QUICK


def test_the_check_runs_without_ray():
    """The runner calls the check before anything is created, so it imports no Ray."""
    code = (
        "import sys; from tunegap.runner.resources import check_ray_address; "
        "check_ray_address('local'); assert 'ray' not in sys.modules, 'ray imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_grpc_server_passes_and_local_addresses_pass(monkeypatch):
    """An HTTP/2 server answers the preface with its SETTINGS frame, as Ray's gRPC does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(2)

        def answer() -> None:
            for _ in range(2):
                conn, _ = server.accept()
                with conn:
                    conn.recv(64)
                    conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        port = server.getsockname()[1]
        # ray:// is dialed as given: Ray Client does not swap a loopback host.
        try:
            check_ray_address(f"ray://127.0.0.1:{port}")
        except StudyError as err:  # only where Ray Client is not installed
            assert "ray:// needs Ray Client" in str(err)
        # host:port with Ray's clusters off: ray.init dials 127.0.0.1 as given.
        monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        check_ray_address(f"127.0.0.1:{port}")
        thread.join(timeout=10)
    check_ray_address(None)
    check_ray_address("local")


# --- a study's local Ray -------------------------------------------------------------------

LOCAL_RAY = """
import json, os, sys
import ray
from tunegap.runner.resources import init_ray
from tunegap.runner.options import RunOptions

init_ray(RunOptions(device="cpu"))

@ray.remote
def pid():
    return os.getpid()

workers = ray.get([pid.remote() for _ in range(2)])
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address,
                  "node_ip": ray.util.get_node_ip_address(), "workers": workers}), flush=True)
sys.stdin.read()  # until the test is done
ray.shutdown()
"""


@dataclass
class LocalRay:
    driver: int
    gcs: str
    node_ip: str
    workers: list[int]
    mark: str

    def pids(self) -> list[int]:
        needle = f"{MARKER}={self.mark}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                        found.append(int(entry))
        return found


@pytest.fixture(scope="module")
def local_ray() -> Iterator[LocalRay]:
    # Short: Ray's Unix socket paths live under the temp dir and must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="tgray", dir="/tmp")
    mark = uuid.uuid4().hex
    env = {**os.environ, MARKER: mark, "RAY_TMPDIR": temp_dir, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCAL_RAY],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ray = None
    try:
        line = proc.stdout.readline()
        assert line, f"the local Ray did not start (exit {proc.wait(timeout=60)})"
        info = json.loads(line)
        ray = LocalRay(proc.pid, info["gcs"], info["node_ip"], info["workers"], mark)
        yield ray
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        # Whatever outlived ray.shutdown, and nothing else. Twice: a dying raylet may still
        # be starting a worker.
        for _ in range(2):
            for pid in ray.pids() if ray else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _hex_address(text: str) -> str:
    """An address of /proc/net/tcp*: 32-bit words in host order (little-endian here)."""
    raw = bytes.fromhex(text)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, swapped)


def listening_sockets() -> dict[int, tuple[str, str, int]]:
    """inode -> (protocol, local address, port) of every listening TCP socket and every
    bound UDP socket of this network namespace."""
    found = {}
    for proto, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == listening and inode:
                address, port = local.split(":")
                found[inode] = (proto, _hex_address(address), int(port, 16))
    return found


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


@pytest.mark.slow
def test_a_local_study_ray_listens_on_loopback_only(local_ray):
    assert local_ray.node_ip == "127.0.0.1"
    listening = listening_sockets()
    ours = {}  # (address, port) -> process name
    pids = local_ray.pids()
    assert local_ray.driver in pids and set(local_ray.workers) <= set(pids)
    for pid in pids:
        for inode in sockets_of(pid) & listening.keys():
            proto, address, port = listening[inode]
            ours[(proto, address, port)] = _name(pid)
    gcs_port = int(local_ray.gcs.rpartition(":")[2])
    assert gcs_port in {port for _, _, port in ours}, ours  # the scan sees Ray's ports
    assert {"gcs_server", "raylet"} <= set(ours.values()), ours
    wide = {key: name for key, name in ours.items() if not is_loopback(key[1])}
    assert not wide, f"Ray listens beyond 127.0.0.1: {wide}"


@pytest.mark.slow
def test_a_running_ray_passes_the_check_where_ray_would_reach_it(local_ray, monkeypatch):
    # The GCS is on 127.0.0.1 only. With Ray's clusters off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
    # ray.init dials 127.0.0.1 as given, and finds it:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    check_ray_address(local_ray.gcs)
    # ...with clusters on (Linux's default) it dials this machine's network address for
    # 127.0.0.1, where the loopback-only GCS does not listen.
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    machine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with machine:
        try:
            machine.connect(("8.8.8.8", 53))
        except OSError:
            pytest.skip("no network address here: Ray dials 127.0.0.1 itself")
        if is_loopback(machine.getsockname()[0]):
            pytest.skip("this machine's address is a loopback one")
    message, _ = refusal(local_ray.gcs)
    assert "which Ray dials for 127.0.0.1" in message and "connection refused" in message
