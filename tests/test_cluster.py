"""cluster.yaml (AWS) and cluster-local.yaml (your own machines) are checked the way `ray up`
checks them, without contacting AWS or any machine, and the steps both run
(scripts/cluster_setup.sh) are run here for real where they are cheap.

For cluster.yaml, three layers, each with a broken copy that must fail, so a typo fails CI
rather than `ray up`: Ray's JSON schema (ray/autoscaler/ray-schema.json), Ray's own
preparation and validation (`prepare_config` merges the provider's defaults, `validate_config`
checks the result), and each node type's `node_config` against EC2's RunInstances parameters
from botocore's offline model (Ray passes node_config to boto3 unchecked). cluster-local.yaml
gets the first two with provider `local`. Then what the issues ask of the files: who opens
which port, no credentials, the same setup in both (the shared script), the MLflow server on
the head's 127.0.0.1 (started for real), and the settings studies pick up. What `ray up`
itself does with them is scripts/ray_up_smoke.sh's (run by .ci/run).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from study_procs import HANG_S

import tunegap.runner.options as study_module
from tunegap.cli import options_from_args

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
LOCAL_YAML = ROOT / "cluster-local.yaml"
SETUP_SCRIPT = ROOT / "scripts" / "cluster_setup.sh"
SETUP = "bash ~/src/tunegap/scripts/cluster_setup.sh"
CHECKOUT_ON_NODES = "~/src/tunegap"


def load(path: Path = CLUSTER_YAML) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check_with_ray(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it talks to the cloud; returns the prepared config."""
    # The launcher's own checks: Ray has no public API to validate a cluster file offline.
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(config, ray_schema())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def check_node_configs(config: dict[str, Any]) -> None:
    """Each node_config as the parameters of EC2 RunInstances (botocore's offline model)."""
    import botocore.session as botocore_session  # the dev extra declares botocore
    from botocore.validate import validate_parameters

    model = botocore_session.get_session().get_service_model("ec2")
    shape = model.operation_model("RunInstances").input_shape
    for name, node_type in config["available_node_types"].items():
        params = {k: v for k, v in node_type["node_config"].items() if k != "SubnetIds"}
        # Ray adds the counts; SubnetIds is Ray's own (it picks one of them per launch).
        validate_parameters({**params, "MinCount": 1, "MaxCount": 1}, shape)
        assert name  # every node type was checked


def commands(config: dict[str, Any], *keys: str) -> list[str]:
    return [cmd for key in keys for cmd in config.get(key) or []]


ALL_COMMANDS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


# ---------------------------------------------------------------- Ray accepts it


def test_cluster_yaml_passes_rays_schema_and_preparation():
    prepared = check_with_ray(load())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_node_configs_are_valid_run_instances_parameters():
    check_node_configs(load())


def _set(config: dict, path: tuple, value: Any) -> dict:
    broken = copy.deepcopy(config)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return broken


def _rename(config: dict, path: tuple, new_key: str) -> dict:
    broken = copy.deepcopy(config)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[new_key] = target.pop(path[-1])
    return broken


BROKEN_FOR_RAY = [
    ("typo in a top-level key", lambda c: _rename(c, ("max_workers",), "max_worker")),
    (
        "typo in a node type's key",
        lambda c: _rename(c, ("available_node_types", "gpu_worker", "min_workers"), "min_worker"),
    ),
    ("wrong type: max_workers", lambda c: _set(c, ("max_workers",), "eight")),
    (
        "wrong type: a resource",
        lambda c: _set(c, ("available_node_types", "gpu_worker", "resources", "GPU"), 0.5),
    ),
    ("wrong type: setup_commands", lambda c: _set(c, ("setup_commands",), "pip install -e .")),
    ("head_node_type names no node type", lambda c: _set(c, ("head_node_type",), "haed")),
    (
        "min_workers above max_workers",
        lambda c: _set(c, ("available_node_types", "gpu_worker", "min_workers"), 20),
    ),
    ("no provider", lambda c: {k: v for k, v in c.items() if k != "provider"}),
]


@pytest.mark.parametrize(
    "breaks", [b for _, b in BROKEN_FOR_RAY], ids=[name for name, _ in BROKEN_FOR_RAY]
)
def test_a_broken_copy_fails_rays_checks(breaks):
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        check_with_ray(breaks(load()))


BROKEN_NODE_CONFIGS = [
    (
        "typo in an EC2 key",
        lambda c: _rename(
            c, ("available_node_types", "gpu_worker", "node_config", "InstanceType"), "InstanceTyp"
        ),
    ),
    (
        "wrong type: VolumeSize",
        lambda c: _set(
            c,
            ("available_node_types", "head", "node_config", "BlockDeviceMappings"),
            [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": "150GB"}}],
        ),
    ),
    (
        "typo inside IamInstanceProfile",
        lambda c: _set(
            c,
            ("available_node_types", "gpu_worker", "node_config", "IamInstanceProfile"),
            {"name": "ray-autoscaler-v1"},
        ),
    ),
]


@pytest.mark.parametrize(
    "breaks", [b for _, b in BROKEN_NODE_CONFIGS], ids=[name for name, _ in BROKEN_NODE_CONFIGS]
)
def test_a_broken_node_config_fails_the_ec2_check(breaks):
    from botocore.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        check_node_configs(breaks(load()))


# ---------------------------------------------------------------- safe to run


def test_only_ssh_is_opened_to_the_world():
    # The rules `ray up` opens on AWS, read from the launcher itself: no public API says them.
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    config = load()
    provider = config["provider"]
    extra_rules = provider.get("security_group", {}).get("IpPermissions", [])
    for node_type in config["available_node_types"].values():
        # Own security groups would replace the rules checked below.
        assert "SecurityGroupIds" not in node_type["node_config"]
        assert "NetworkInterfaces" not in node_type["node_config"]
    # The rules `ray up` gives the cluster's security group (Ray's code, no AWS call).
    rules = _create_default_inbound_rules(["sg-cluster"], extra_rules)
    for rule in rules:
        if rule.get("IpRanges") or rule.get("Ipv6Ranges") or rule.get("PrefixListIds"):
            assert (rule["FromPort"], rule["ToPort"]) == (22, 22), rule
        else:  # traffic between the cluster's own nodes only
            assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == ["sg-cluster"], rule


@pytest.mark.parametrize("path", [CLUSTER_YAML, LOCAL_YAML], ids=["aws", "local"])
def test_servers_on_the_head_listen_on_localhost_only(path, tmp_path):
    config = load(path)
    start = commands(config, "head_start_ray_commands")
    assert f"{SETUP} start-mlflow" in start
    (ray_start,) = [c for c in start if "ray start --head" in c]
    assert f"$({SETUP} ray-args head)" in ray_start
    assert "--dashboard-host=127.0.0.1" in setup_step(tmp_path, "ray-args", "head").stdout.split()
    assert re.search(r"mlflow server .*--host 127\.0\.0\.1 --port", mlflow_server_command())
    everything = " ".join(commands(config, *ALL_COMMANDS)) + SETUP_SCRIPT.read_text()
    assert "0.0.0.0" not in everything


def test_no_credentials_in_the_file():
    text = CLUSTER_YAML.read_text()
    lowered = text.lower()
    for word in (
        "aws_access_key",
        "aws_secret",
        "secret",
        "password",
        "ssh_private_key",
        "begin rsa",
        "private key-----",
    ):
        assert word not in lowered, word
    # AWS key ids (long-term AKIA..., temporary ASIA...).
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)
    assert "auth" not in load() or set(load()["auth"]) == {"ssh_user"}


def test_the_local_file_names_a_key_file_and_holds_no_key():
    auth = load(LOCAL_YAML)["auth"]
    assert set(auth) == {"ssh_user", "ssh_private_key"}
    assert auth["ssh_private_key"].startswith("~/.ssh/")  # a path on your machine
    text = LOCAL_YAML.read_text().lower()
    for word in ("begin openssh", "begin rsa", "private key-----", "password", "secret"):
        assert word not in text, word


# ---------------------------------------------------------------- what it sets up


def mlflow_server_command() -> str:
    """The `mlflow server ...` command line of cluster_setup.sh's start-mlflow step."""
    text = SETUP_SCRIPT.read_text()
    body = text[text.index("start_mlflow() {") :]
    body = body[: body.index("\n}\n")]
    joined = re.sub(r"\\\n\s*", "", body)  # the command's continuation lines, as bash joins them
    (line,) = [ln for ln in joined.splitlines() if "mlflow server" in ln]
    return line.strip()


def test_head_runs_the_mlflow_server_and_autoscaling_gpu_workers():
    config = load()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [
        t for name, t in config["available_node_types"].items() if name != config["head_node_type"]
    ]
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers)
    assert all(t["min_workers"] == 0 and 1 <= t["max_workers"] <= 64 for t in workers)

    mlflow_cmd = mlflow_server_command()
    args = shlex.split(mlflow_cmd[mlflow_cmd.index("mlflow server") :].split(">>")[0])
    assert args[args.index("--backend-store-uri") + 1].startswith("sqlite:///")
    assert "--artifacts-destination" in args and "--default-artifact-root" in args
    assert "setsid nohup mlflow server" in mlflow_cmd and mlflow_cmd.endswith("&")
    # Ray on the head starts after the server, with the autoscaler's config.
    start = commands(config, "head_start_ray_commands")
    ray_start = [
        i for i, c in enumerate(start) if "ray start --head" in c and "--autoscaling-config" in c
    ]
    assert ray_start and start.index(f"{SETUP} start-mlflow") < ray_start[0]


@pytest.mark.parametrize("path", [CLUSTER_YAML, LOCAL_YAML], ids=["aws", "local"])
def test_the_checkout_is_synced_and_installed_on_every_node(path):
    config = load(path)
    assert config["file_mounts"] == {CHECKOUT_ON_NODES: "."}
    setup = commands(config, "setup_commands")
    steps = [c.removeprefix(f"{SETUP} ") for c in setup if c.startswith(SETUP)]
    assert steps == ["env-hook", "check-storage", "install"]
    text = SETUP_SCRIPT.read_text()
    assert 'CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"' in text
    assert re.search(r'-m pip install .*"\$\{args\[@\]\}"', text)
    assert 'args=(-e "$target"' in text and 'target="$CHECKOUT[' in text


@pytest.mark.parametrize("target", [CHECKOUT_ON_NODES])
def test_the_synced_checkout_does_not_hide_the_installed_package(target, tmp_path):
    """`ray exec` commands and Ray jobs run in the home directory: the synced checkout must not
    be a folder there that `python -m tunegap...` imports instead of the installed package
    (a checkout at ~/tunegap is: 'tunegap.studies.ghost_size' is a package ...)."""
    synced = tmp_path / target.removeprefix("~/")
    synced.parent.mkdir(parents=True, exist_ok=True)
    synced.symlink_to(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "tunegap.studies.ghost_size", "--help"],
        cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=HANG_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--batch-sizes" in done.stdout


def test_studies_find_storage_and_tracking_without_flags():
    """cluster.yaml exports the variables tunegap.study reads, with the server's address."""
    config = load()
    setup = commands(config, "setup_commands")
    # The S3 path is set in exactly one place.
    assert sum("TUNEGAP_S3=" in c for c in commands(config, *ALL_COMMANDS)) == 1
    storage = [c for c in setup if f"export {study_module.STORAGE_ENV}=" in c]
    assert len(storage) == 1
    mount = re.search(rf"{study_module.STORAGE_ENV}=(\S+?)'", storage[0]).group(1)
    assert any("s3fs " in c and f" {mount} " in c for c in setup), "the storage is not the mount"
    # The storage is checked after the mount, and the tracking URI is the head's server.
    assert setup.index(f"{SETUP} check-storage") > max(
        i for i, c in enumerate(setup) if "s3fs " in c
    )
    assert f"{SETUP} head-env" in commands(config, "head_setup_commands")


@pytest.mark.parametrize("path", [CLUSTER_YAML, LOCAL_YAML], ids=["aws", "local"])
def test_commands_run_the_way_ray_runs_them_see_the_cluster_variables(path, tmp_path):
    """Each node's first setup commands, env-hook and (on the head) head-env, then a command
    run the way Ray's SSH command runner runs it (`bash --login -c -i 'source ~/.bashrc;
    ...'`): it sees TUNEGAP_STORAGE and MLFLOW_TRACKING_URI, as `ray start` does and so every
    job and trial it starts."""
    # The launcher's own command wrapping: no public API builds the command it runs over SSH.
    from ray.autoscaler._private.command_runner import _with_interactive

    config = load(path)
    settings = [c for c in commands(config, "setup_commands") if smoke_module().SETTING.match(c)]
    for cmd in settings:
        subprocess.run(["bash", "-c", cmd], env=bare_env(tmp_path), check=True)
    for step in ("env-hook", "env-hook", "head-env"):  # env-hook twice: the hook once
        setup_step(tmp_path, step, check=True)
    hooks = (tmp_path / ".bashrc").read_text().count("source ~/.tunegap_env")
    assert hooks == 1
    probe = 'echo "storage=$TUNEGAP_STORAGE tracking=$MLFLOW_TRACKING_URI"'
    shown = subprocess.run(
        ["bash", "-c", " ".join(_with_interactive(probe))], env=bare_env(tmp_path),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    (storage,) = re.findall(r"TUNEGAP_STORAGE=(\S+?)'", " ".join(settings))
    assert f"storage={storage} tracking=http://127.0.0.1:5000" in shown.stdout, shown.stderr


# ---------------------------------------------------------------- cluster-local.yaml


def test_cluster_local_yaml_passes_rays_schema_and_preparation():
    config = load(LOCAL_YAML)
    prepared = check_with_ray(config)
    assert prepared["provider"]["type"] == "local"
    workers = config["provider"]["worker_ips"]
    assert config["provider"]["head_ip"] not in workers
    # One node type for every machine; all the workers join (min = max = their number).
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(workers)


BROKEN_LOCAL = [
    (
        "no head_ip",
        lambda c: {**c, "provider": {k: v for k, v in c["provider"].items() if k != "head_ip"}},
    ),
    ("worker_ips not a list", lambda c: _set(c, ("provider", "worker_ips"), "192.168.1.11")),
    (
        "node types, which the local provider has none of",
        lambda c: {**c, "available_node_types": {"x": {}}},
    ),
    ("typo in an auth key", lambda c: _rename(c, ("auth", "ssh_user"), "ssh_usr")),
    ("wrong type: setup_commands", lambda c: _set(c, ("setup_commands",), "pip install -e .")),
]


@pytest.mark.parametrize("breaks", [b for _, b in BROKEN_LOCAL], ids=[n for n, _ in BROKEN_LOCAL])
def test_a_broken_local_copy_fails_rays_checks(breaks):
    with pytest.raises((jsonschema.ValidationError, ValueError, click.ClickException)):
        check_with_ray(breaks(load(LOCAL_YAML)))


def test_both_files_run_the_same_setup():
    """What is not AWS's own is the same in both files: the shared steps, Ray's start commands,
    the synced checkout. So what the loopback smoke run executes is what an AWS node runs."""
    aws, local = load(CLUSTER_YAML), load(LOCAL_YAML)
    for key in ("head_start_ray_commands", "worker_start_ray_commands", "file_mounts",
                "rsync_exclude", "rsync_filter", "worker_setup_commands"):
        assert aws[key] == local[key], key

    def shared(config: dict[str, Any], key: str) -> list[str]:
        return [c for c in config[key] if SETUP in c]

    for key in ("setup_commands", "head_setup_commands"):
        assert shared(aws, key) == shared(local, key), key
    # Every step the files name is one the script has.
    known = set(re.findall(r"^    ([a-z-]+)\) ", SETUP_SCRIPT.read_text(), re.MULTILINE))
    every_command = " ".join(commands(aws, *ALL_COMMANDS) + commands(local, *ALL_COMMANDS))
    named = set(re.findall(r"cluster_setup\.sh ([a-z-]+)", every_command))
    assert named and named <= known, named - known


def smoke_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ray_up_smoke_config", ROOT / "scripts" / "ray_up_smoke_config.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_runs_the_local_file_with_its_head_on_loopback():
    """scripts/ray_up_smoke.sh's cluster file: cluster-local.yaml with the head at 127.0.0.1
    through its sshd and its own settings; Ray accepts it, and every other command is the
    file's own."""
    smoke = smoke_module()
    base = load(LOCAL_YAML)
    env = {"TUNEGAP_STORAGE": "/home/u/results", "TUNEGAP_RAY_START_ARGS": "--a=1 --b=2"}
    config = smoke.smoke_config(base, ssh_user="u", ssh_key="/k", ssh_port=2222,
                                cluster_name="smoke", env=env)
    prepared = check_with_ray(config)
    assert prepared["provider"]["head_ip"] == "127.0.0.1"
    assert prepared["provider"]["worker_ips"] == []
    assert config["auth"]["ssh_proxy_command"] == "nc %h 2222"
    setup = config["setup_commands"]
    assert setup[0] == "echo 'export TUNEGAP_STORAGE=/home/u/results' > ~/.tunegap_env"
    assert setup[1] == "echo 'export TUNEGAP_RAY_START_ARGS=\"--a=1 --b=2\"' >> ~/.tunegap_env"
    assert setup[2:] == base["setup_commands"][1:]
    for key in ALL_COMMANDS[2:]:
        assert config.get(key) == base.get(key), key
    with pytest.raises(ValueError, match="not allowed"):
        smoke.smoke_config(base, ssh_user="u", ssh_key="/k", ssh_port=1, cluster_name="s",
                           env={"TUNEGAP_STORAGE": "$(rm -rf ~)"})


def test_the_smoke_gives_the_node_the_launchers_pip_sources():
    listing = "\n".join([
        "global.find-links='/from/file'",
        "global.cert='/etc/ssl/ca.crt'",
        "install.no-compile='true'",
        ":env:.find-links='/from/env'",
    ])
    conf = smoke_module().pip_conf(listing)
    assert conf.splitlines() == [
        "[global]", "find-links = /from/env", "cert = /etc/ssl/ca.crt",
        "[install]", "no-compile = true",
    ]


# ---------------------------------------------------------------- the shared steps, run here


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    """A node's environment: this Python's tools on PATH, nothing of the caller's settings."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", **extra}


def setup_step(home: Path, *args: str, check: bool = False, timeout: float = 60,
               **env: str) -> subprocess.CompletedProcess[str]:
    """Run `cluster_setup.sh ARGS...` with HOME=home."""
    done = subprocess.run(["bash", str(SETUP_SCRIPT), *args], env=bare_env(home, **env),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_ray_args_give_the_ports_and_the_head_address(tmp_path):
    head = setup_step(tmp_path, "ray-args", "head", check=True).stdout.split()
    assert head == ["--port=6379", "--object-manager-port=8076", "--dashboard-host=127.0.0.1",
                    "--dashboard-port=8265"]
    (tmp_path / ".tunegap_env").write_text(
        "export TUNEGAP_RAY_PORT=7000\nexport TUNEGAP_RAY_START_ARGS='--num-gpus=2 --x=1'\n"
    )
    worker = setup_step(tmp_path, "ray-args", "worker", check=True, RAY_HEAD_IP="10.0.0.1")
    assert worker.stdout.split() == ["--address=10.0.0.1:7000", "--object-manager-port=8076",
                                     "--num-gpus=2", "--x=1"]
    # Without the head's address a worker gets no flags, so `ray start` refuses to run.
    missing = setup_step(tmp_path, "ray-args", "worker")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "RAY_HEAD_IP is not set" in missing.stderr
    unknown = setup_step(tmp_path, "start-everything")
    assert unknown.returncode == 2 and "is not one of" in unknown.stderr


def test_check_storage_wants_a_writable_folder(tmp_path):
    missing = tmp_path / "shared" / "tunegap"
    (tmp_path / ".tunegap_env").write_text(f"export TUNEGAP_STORAGE={missing}\n")
    done = setup_step(tmp_path, "check-storage")
    assert done.returncode == 1 and f"TUNEGAP_STORAGE={missing} is not a folder" in done.stderr
    assert not missing.exists()  # never made here: a missing mount must not be papered over
    missing.mkdir(parents=True)
    setup_step(tmp_path, "check-storage", check=True)


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* write them) that listen on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    found.add(address)
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_start_mlflow_serves_on_loopback_only_and_stop_mlflow_ends_it(tmp_path):
    """The head's start-mlflow step for real: the server answers on 127.0.0.1 and listens on
    no other address; a second start keeps it; stop-mlflow ends its whole process group."""
    port = smoke_module().free_ports(1)[0]
    (tmp_path / ".tunegap_env").write_text(f"export TUNEGAP_MLFLOW_PORT={port}\n")
    pid_file = tmp_path / "mlflow" / "server.pid"
    try:
        setup_step(tmp_path, "start-mlflow", check=True, timeout=HANG_S)
        pgid = int(pid_file.read_text())
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, and nothing else
        argv = Path(f"/proc/{pgid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--host") + 1] == b"127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            assert reply.read().strip() == b"OK"
        again = setup_step(tmp_path, "start-mlflow", check=True)
        assert "left as it is" in again.stdout and int(pid_file.read_text()) == pgid
        setup_step(tmp_path, "stop-mlflow", check=True, timeout=60)
        assert not _group_alive(pgid) and not pid_file.exists() and not _listening(port)
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


# ---------------------------------------------------------------- the rule studies follow
# Without --tracking-uri / --storage-path a study uses $MLFLOW_TRACKING_URI / $TUNEGAP_STORAGE
# where set (what the cluster's head exports), else sqlite:///mlflow.db / ./tunegap_results.


def test_default_tracking_uri_rule():
    rule = study_module.default_tracking_uri
    assert rule({}) == "sqlite:///mlflow.db"
    assert rule({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}) == "http://127.0.0.1:5000"
    assert rule({"MLFLOW_TRACKING_URI": ""}) == "sqlite:///mlflow.db"


def test_default_storage_path_rule():
    rule = study_module.default_storage_path
    assert rule({}) == "./tunegap_results"
    assert rule({"TUNEGAP_STORAGE": "/mnt/tunegap"}) == "/mnt/tunegap"
    assert rule({"TUNEGAP_STORAGE": ""}) == "./tunegap_results"


def _options(argv: list[str]) -> study_module.RunOptions:
    from tunegap.studies import ghost_size

    return options_from_args(ghost_size.parser().parse_args(argv))


def test_the_command_line_uses_the_environment_when_no_flag_is_given(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("TUNEGAP_STORAGE", "/mnt/tunegap")
    options = _options([])
    assert options.tracking_uri == "http://127.0.0.1:5000"
    assert options.storage_path == "/mnt/tunegap"
    # A flag always wins.
    options = _options(["--tracking-uri", "sqlite:///here.db", "--storage-path", "here"])
    assert options.tracking_uri == "sqlite:///here.db"
    assert options.storage_path == "here"


def test_the_command_line_defaults_without_the_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TUNEGAP_STORAGE", raising=False)
    options = _options([])
    assert options.tracking_uri == "sqlite:///mlflow.db"
    assert options.storage_path == "./tunegap_results"


def test_run_options_in_code_ignore_the_environment(monkeypatch):
    """The rule is the command line's; RunOptions built in code means what it says."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("TUNEGAP_STORAGE", "/mnt/tunegap")
    options = study_module.RunOptions()
    assert options.tracking_uri == "sqlite:///mlflow.db"
    assert options.storage_path == "./tunegap_results"


def test_help_documents_the_rule():
    from tunegap.studies import ghost_size

    text = " ".join(ghost_size.parser().format_help().split())
    assert "$MLFLOW_TRACKING_URI where set" in text
    assert "$TUNEGAP_STORAGE where set" in text
