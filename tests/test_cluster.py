"""cluster.yaml is checked the way `ray up` checks it, without contacting AWS.

Three layers, each with a broken copy that must fail, so a typo fails CI rather than `ray up`:
Ray's JSON schema (ray/autoscaler/ray-schema.json), Ray's own preparation and validation
(`prepare_config` merges the AWS defaults, `validate_config` checks the result), and each node
type's `node_config` against EC2's RunInstances parameters from botocore's offline model
(Ray passes node_config to boto3 unchecked). Then what the issue asks of the file: who opens
which port, no credentials, the MLflow server on the head, and the settings studies pick up.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import tunegap.study as study_module
from tunegap.cli import options_from_args

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check_with_ray(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it talks to the cloud; returns the prepared config."""
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


def test_servers_on_the_head_listen_on_localhost_only():
    config = load()
    start = " ".join(commands(config, "head_start_ray_commands"))
    assert "--dashboard-host=127.0.0.1" in start
    assert re.search(r"mlflow server .*--host 127\.0\.0\.1 --port 5000", start)
    everything = " ".join(commands(config, *ALL_COMMANDS))
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


# ---------------------------------------------------------------- what it sets up


def test_head_runs_the_mlflow_server_and_autoscaling_gpu_workers():
    config = load()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [
        t for name, t in config["available_node_types"].items() if name != config["head_node_type"]
    ]
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers)
    assert all(t["min_workers"] == 0 and 1 <= t["max_workers"] <= 64 for t in workers)

    start = commands(config, "head_start_ray_commands")
    (mlflow_cmd,) = [c for c in start if "mlflow server" in c]
    args = shlex.split(mlflow_cmd[mlflow_cmd.index("mlflow server") :].split(">")[0])
    assert args[args.index("--backend-store-uri") + 1].startswith("sqlite:///")
    assert "--artifacts-destination" in args and "--default-artifact-root" in args
    assert "nohup" in mlflow_cmd and mlflow_cmd.rstrip(" }").endswith("&")
    # Ray on the head starts after the server, with the autoscaler's config.
    assert any("ray start --head" in c and "--autoscaling-config" in c for c in start)


def test_the_checkout_is_synced_and_installed_on_every_node():
    config = load()
    assert config["file_mounts"] == {"~/tunegap": "."}
    setup = " ".join(commands(config, "setup_commands"))
    assert re.search(r"pip install .*-e \"?\$HOME/tunegap", setup)


def test_studies_find_storage_and_tracking_without_flags():
    """cluster.yaml exports the variables tunegap.study reads, with the server's address."""
    config = load()
    setup = commands(config, "setup_commands")
    head_setup = commands(config, "head_setup_commands")
    # The S3 path is set in exactly one place.
    assert sum("TUNEGAP_S3=" in c for c in commands(config, *ALL_COMMANDS)) == 1
    storage = [c for c in setup if f"export {study_module.STORAGE_ENV}=" in c]
    assert len(storage) == 1
    mount = re.search(rf"{study_module.STORAGE_ENV}=(\S+?)'", storage[0]).group(1)
    assert any("s3fs " in c and f" {mount} " in c for c in setup), "the storage is not the mount"
    tracking = [c for c in head_setup if f"export {study_module.TRACKING_URI_ENV}=" in c]
    assert len(tracking) == 1 and "http://127.0.0.1:5000" in tracking[0]
    # The variables reach `ray start` (and so the jobs it runs) through ~/.bashrc.
    assert any("~/.tunegap_env" in c and "~/.bashrc" in c for c in setup)


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
