"""The launcher-side helpers of scripts/ray_up_smoke.sh (run with the Python that has Ray).

    python scripts/ray_up_smoke_config.py config --out FILE --ssh-user U --ssh-key KEY \\
        --ssh-port PORT --cluster-name NAME [--env NAME=VALUE ...]
    python scripts/ray_up_smoke_config.py ports N
    python scripts/ray_up_smoke_config.py pip-conf

`config` writes cluster-local.yaml as the smoke runs it: the head at 127.0.0.1 (no workers),
SSH to the smoke's own sshd (its port through `ssh_proxy_command`, as cluster-local.yaml
documents for an SSH server off port 22), its own cluster name, and settings for
~/.tunegap_env (a setting already in the file's settings block gets the new value in place;
the others are added after that block). Everything else, above all every command, is the
file's own. `ports` prints N TCP ports free on every interface. `pip-conf` prints this
Python's effective pip configuration as a pip.conf, so the node's installs read the same
package sources as the machine that runs the smoke (on loopback the node is this machine).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "cluster-local.yaml"
# A settings line of the cluster files: echo 'export NAME=VALUE' > (or >>) ~/.tunegap_env
SETTING = re.compile(r"^echo 'export (?P<name>\w+)=(?P<value>[^']*)' >>? ~/\.tunegap_env$")
# What a double-quoted value in ~/.tunegap_env may hold without shell expansion or quoting.
PLAIN_VALUE = re.compile(r'^[^\'"$`\\]*$')


def setting_line(name: str, value: str, *, first: bool = False) -> str:
    """One settings command: `echo 'export NAME="VALUE"' >> ~/.tunegap_env` (> if first)."""
    if not PLAIN_VALUE.match(value):
        raise ValueError(f"setting {name}={value!r}: quotes, $, ` and \\ are not allowed")
    quoted = f'"{value}"' if re.search(r"\s", value) else value
    return f"echo 'export {name}={quoted}' {'>' if first else '>>'} ~/.tunegap_env"


def with_settings(commands: list[str], env: dict[str, str]) -> list[str]:
    """`commands` with `env` in their settings block (the leading run of settings lines)."""
    block = 0
    while block < len(commands) and SETTING.match(commands[block]):
        block += 1
    if block == 0:
        raise ValueError("the setup commands do not start with echo 'export ...' > ~/.tunegap_env")
    out = list(commands)
    todo = dict(env)
    for i in range(block):
        name = SETTING.match(out[i])["name"]  # type: ignore[index]
        if name in todo:
            out[i] = setting_line(name, todo.pop(name), first=i == 0)
    added = [setting_line(name, value) for name, value in todo.items()]
    return out[:block] + added + out[block:]


def smoke_config(
    base: dict[str, Any],
    *,
    ssh_user: str,
    ssh_key: str,
    ssh_port: int,
    cluster_name: str,
    env: dict[str, str],
) -> dict[str, Any]:
    """cluster-local.yaml's config with the head on this machine's loopback sshd."""
    config = dict(base)
    config["cluster_name"] = cluster_name
    config["provider"] = {**base["provider"], "head_ip": "127.0.0.1", "worker_ips": []}
    config["auth"] = {
        "ssh_user": ssh_user,
        "ssh_private_key": ssh_key,
        # %h is the node's address, 127.0.0.1; the port is the smoke's sshd.
        "ssh_proxy_command": f"nc %h {ssh_port}",
    }
    config["setup_commands"] = with_settings(list(base["setup_commands"]), env)
    return config


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that nothing listens on, on any interface."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("", 0))  # held until all are chosen, so no port comes twice
            ports.append(sock.getsockname()[1])
        return ports


def pip_conf(listing: str) -> str:
    """A pip.conf from `pip config list` output; the environment's values win, as in pip."""
    files: dict[str, dict[str, str]] = {}
    from_env: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        if not sep or "." not in name:
            continue
        section, _, key = name.rpartition(".")
        value = str(ast.literal_eval(raw))
        if section == ":env:":
            from_env[key] = value
        else:
            files.setdefault(section, {})[key] = value
    files.setdefault("global", {}).update(from_env)
    lines: list[str] = []
    for section, values in files.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise SystemExit(f"ray_up_smoke_config: error: --env {item!r}: use NAME=VALUE")
        env[name] = value
    return env


def main(argv: list[str] | None = None) -> None:
    """The command line above."""
    parser = argparse.ArgumentParser(prog="ray_up_smoke_config")
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config")
    config.add_argument("--base", type=Path, default=BASE)
    config.add_argument("--out", type=Path, required=True)
    config.add_argument("--ssh-user", required=True)
    config.add_argument("--ssh-key", required=True)
    config.add_argument("--ssh-port", type=int, required=True)
    config.add_argument("--cluster-name", required=True)
    config.add_argument("--env", action="append", default=[])
    ports = sub.add_parser("ports")
    ports.add_argument("count", type=int)
    sub.add_parser("pip-conf")
    args = parser.parse_args(argv)

    if args.command == "config":
        written = smoke_config(
            yaml.safe_load(args.base.read_text()),
            ssh_user=args.ssh_user,
            ssh_key=args.ssh_key,
            ssh_port=args.ssh_port,
            cluster_name=args.cluster_name,
            env=parse_env(args.env),
        )
        args.out.write_text(yaml.safe_dump(written, sort_keys=False))
    elif args.command == "ports":
        print(" ".join(map(str, free_ports(args.count))))
    else:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            check=True, capture_output=True, text=True,
        ).stdout
        sys.stdout.write(pip_conf(listing))


if __name__ == "__main__":
    main()
