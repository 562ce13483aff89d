#!/usr/bin/env bash
# What every node of a tunegap Ray cluster runs, for cluster.yaml (AWS) and cluster-local.yaml
# (your own machines) alike: both files call these steps, so the commands that
# scripts/ray_up_smoke.sh runs on loopback are the ones an AWS node runs too.
#
#   bash ~/src/tunegap/scripts/cluster_setup.sh STEP
#
# (The checkout is synced to ~/src/tunegap, not ~/tunegap: `ray exec` commands and Ray jobs
# run in the home directory, and there a folder named tunegap would be imported instead of
# the installed package, so `python -m tunegap.studies.ghost_size` would fail.)
#
# Steps (in the order the cluster files call them):
#   env-hook       ~/.bashrc reads ~/.tunegap_env and activates ~/venv, so every later command,
#                  `ray start` and so every job and trial it runs see the variables below
#   check-storage  $TUNEGAP_STORAGE is a folder this user can write (every node: Tune writes
#                  trial checkpoints there, the study driver its Parquet tables)
#   install        ~/venv (Python 3.11+), this checkout with `pip install -e` and Ray
#   head-env       (head) MLFLOW_TRACKING_URI=http://127.0.0.1:<mlflow port> into ~/.tunegap_env
#   start-mlflow   (head) the MLflow tracking server on 127.0.0.1, once: a running one is kept
#   stop-mlflow    (head) stop that server (`ray down` does not; on AWS the head goes with it)
#   ray-args head  (head) print the flags of the cluster file's `ray start --head`: the
#                  ports, and the dashboard on 127.0.0.1
#   ray-args worker  (worker) print the flags of a worker's `ray start`: the head's address
#                  ($RAY_HEAD_IP, which Ray's autoscaler sets) and the ports
# (`ray start` itself stays in the cluster files, where `ray up` looks for it.)
#
# Settings, read from the environment (~/.tunegap_env, which the cluster file's first setup
# commands write), with their defaults:
#   TUNEGAP_STORAGE              (required) the studies' default --storage-path
#   TUNEGAP_RAY_VERSION=2.60.0   the Ray installed on the nodes: the same as `ray --version`
#                                on the machine that runs `ray up`
#   TUNEGAP_EXTRAS=vision        extras of this package to install (empty: none)
#   TUNEGAP_PIP_CONSTRAINTS=     a constraints file inside the checkout (constraints.txt pins
#                                the CPU build of torch; leave empty on GPU nodes)
#   TUNEGAP_PYTHON=              the Python for ~/venv; default the newest python3.1x >= 3.11
#                                with venv here, else one that uv installs
#   TUNEGAP_RAY_PORT=6379  TUNEGAP_OBJECT_MANAGER_PORT=8076  TUNEGAP_DASHBOARD_PORT=8265
#   TUNEGAP_MLFLOW_PORT=5000  TUNEGAP_MLFLOW_WORKERS=2
#   TUNEGAP_RAY_START_ARGS=      more `ray start` flags for every node (e.g. other ports)
set -euo pipefail

ENV_FILE="$HOME/.tunegap_env"
VENV="$HOME/venv"
CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLFLOW_DIR="$HOME/mlflow"
MLFLOW_PID_FILE="$MLFLOW_DIR/server.pid"
# A fresh sqlite store runs its migrations first; a slow node needs a while.
MLFLOW_START_TIMEOUT_S=180

# shellcheck disable=SC1090  # written by the cluster file's setup commands
[ -f "$ENV_FILE" ] && source "$ENV_FILE"

RAY_VERSION="${TUNEGAP_RAY_VERSION:-2.60.0}"
RAY_PORT="${TUNEGAP_RAY_PORT:-6379}"
OBJECT_MANAGER_PORT="${TUNEGAP_OBJECT_MANAGER_PORT:-8076}"
DASHBOARD_PORT="${TUNEGAP_DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${TUNEGAP_MLFLOW_PORT:-5000}"
MLFLOW_WORKERS="${TUNEGAP_MLFLOW_WORKERS:-2}"
# Word-split on purpose below: a list of flags.
read -r -a RAY_START_ARGS <<<"${TUNEGAP_RAY_START_ARGS:-}"

die() {
    echo "cluster_setup.sh: $*" >&2
    exit 1
}

env_hook() {
    local hook='source ~/.tunegap_env; [ -f ~/venv/bin/activate ] && source ~/venv/bin/activate'
    touch "$HOME/.bashrc"
    grep -qF "$hook" "$HOME/.bashrc" || echo "$hook" >>"$HOME/.bashrc"
}

check_storage() {
    local dir="${TUNEGAP_STORAGE:-}"
    [ -n "$dir" ] || die "TUNEGAP_STORAGE is not set: set it in the cluster file's first setup commands"
    dir="${dir/#\~/$HOME}"
    # Not created here: a missing folder is most often a shared mount that is not there, and a
    # local folder in its place would hide that from every node but this one.
    [ -d "$dir" ] && [ -w "$dir" ] ||
        die "TUNEGAP_STORAGE=$dir is not a folder that $(id -un) can write on $(hostname): create or mount it there (a folder every node sees at this path where there are workers)"
}

# The Pythons to make ~/venv with: $TUNEGAP_PYTHON alone where set, else each python3.1x and
# python3 on PATH that is 3.11 or newer, newest first.
candidate_pythons() {
    if [ -n "${TUNEGAP_PYTHON:-}" ]; then
        echo "$TUNEGAP_PYTHON"
        return
    fi
    local name path
    for name in python3.13 python3.12 python3.11 python3; do
        path="$(command -v "$name")" || continue
        "$path" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo "$path"
    done
    return 0
}

# Python 3.11 from uv, where no Python here will do (Ubuntu 22.04, AWS's Deep Learning AMI, has
# 3.10); prints its path.
uv_python() {
    local uv
    uv="$(command -v uv || echo "$HOME/.local/bin/uv")"
    if [ ! -x "$uv" ]; then
        curl -LsSf https://astral.sh/uv/install.sh | sh >&2 ||
            die "no Python 3.11+ with venv on $(hostname), and uv could not be installed: install python3.11 and python3.11-venv"
    fi
    "$uv" python install 3.11 >&2
    "$uv" python find 3.11
}

make_venv() {
    local python
    for python in $(candidate_pythons); do
        # Debian and Ubuntu ship venv's pip separately (python3.x-venv): without it this fails.
        "$python" -m venv "$VENV" && return
        rm -rf "$VENV"
    done
    [ -z "${TUNEGAP_PYTHON:-}" ] || die "TUNEGAP_PYTHON=$TUNEGAP_PYTHON cannot make a virtual environment"
    python="$(uv_python)"
    "$python" -m venv "$VENV"
}

install() {
    [ -x "$VENV/bin/python" ] || make_venv
    local target="$CHECKOUT"
    [ -z "${TUNEGAP_EXTRAS-vision}" ] || target="$CHECKOUT[${TUNEGAP_EXTRAS-vision}]"
    local args=(-e "$target" "ray[default,tune]==$RAY_VERSION")
    if [ -n "${TUNEGAP_PIP_CONSTRAINTS:-}" ]; then
        args=(-c "$CHECKOUT/$TUNEGAP_PIP_CONSTRAINTS" "${args[@]}")
    fi
    "$VENV/bin/python" -m pip install -q --progress-bar off "${args[@]}"
    "$VENV/bin/python" -c 'import mlflow, ray, tunegap' || die "the install in $VENV does not import"
}

head_env() {
    # Studies on the head then log to its MLflow server without --tracking-uri (tunegap.study).
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT" >>"$ENV_FILE"
}

mlflow_answers() {
    python3 - "$MLFLOW_PORT" <<'EOF'
import sys
import urllib.request

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=5) as reply:
        sys.exit(0 if reply.read().strip() == b"OK" else 1)
except OSError:
    sys.exit(1)
EOF
}

start_mlflow() {
    mkdir -p "$MLFLOW_DIR/artifacts"
    if mlflow_answers; then
        echo "cluster_setup.sh: MLflow already answers at 127.0.0.1:$MLFLOW_PORT; left as it is"
        return
    fi
    # Its own session (setsid), so it outlives the SSH command that starts it and stop-mlflow
    # can stop it with all its workers as one process group. Only 127.0.0.1: reach it from
    # elsewhere through an SSH tunnel. Studies only log runs and artifacts, from their driver:
    # a few workers do, and MLflow's job runner (a handful of processes more) stays off.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid nohup mlflow server \
        --backend-store-uri "sqlite:///$MLFLOW_DIR/mlflow.db" \
        --default-artifact-root mlflow-artifacts:/ --artifacts-destination "$MLFLOW_DIR/artifacts" \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
        >>"$MLFLOW_DIR/server.log" 2>&1 </dev/null &
    echo $! >"$MLFLOW_PID_FILE"
    local waited=0
    until mlflow_answers; do
        if ! kill -0 "$(cat "$MLFLOW_PID_FILE")" 2>/dev/null || [ "$waited" -ge "$MLFLOW_START_TIMEOUT_S" ]; then
            tail -n 20 "$MLFLOW_DIR/server.log" >&2
            die "the MLflow server did not come up on 127.0.0.1:$MLFLOW_PORT (log: $MLFLOW_DIR/server.log)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "cluster_setup.sh: MLflow at http://127.0.0.1:$MLFLOW_PORT (store: $MLFLOW_DIR)"
}

stop_mlflow() {
    [ -f "$MLFLOW_PID_FILE" ] || {
        echo "cluster_setup.sh: no MLflow server started here"
        return
    }
    local pid waited=0
    pid="$(cat "$MLFLOW_PID_FILE")"
    kill -TERM -- "-$pid" 2>/dev/null || true
    while kill -0 -- "-$pid" 2>/dev/null; do
        if [ "$waited" -ge 15 ]; then
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        sleep 1
        waited=$((waited + 1))
        [ "$waited" -lt 30 ] || die "the MLflow server (process group $pid) does not stop"
    done
    rm -f "$MLFLOW_PID_FILE"
    echo "cluster_setup.sh: MLflow server stopped"
}

# One line of flags, for `ray start $(bash cluster_setup.sh ray-args head)` in the cluster
# files. Nothing is printed on an error, and `ray start` without --head or --address refuses.
ray_args() {
    local args
    case "${1:-}" in
        head)
            args=(--port="$RAY_PORT" --object-manager-port="$OBJECT_MANAGER_PORT"
                --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT")
            ;;
        worker)
            [ -n "${RAY_HEAD_IP:-}" ] || die "RAY_HEAD_IP is not set (Ray's autoscaler sets it on workers)"
            args=(--address="$RAY_HEAD_IP:$RAY_PORT" --object-manager-port="$OBJECT_MANAGER_PORT")
            ;;
        *) die "ray-args ${1:-}: use ray-args head or ray-args worker" ;;
    esac
    echo "${args[*]} ${RAY_START_ARGS[*]}"
}

case "${1:-}" in
    env-hook) env_hook ;;
    check-storage) check_storage ;;
    install) install ;;
    head-env) head_env ;;
    start-mlflow) start_mlflow ;;
    stop-mlflow) stop_mlflow ;;
    ray-args) ray_args "${2:-}" ;;
    *)
        echo "cluster_setup.sh: error: step '${1:-}' is not one of env-hook, check-storage, install, head-env, start-mlflow, stop-mlflow, ray-args" >&2
        exit 2
        ;;
esac
