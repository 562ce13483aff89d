#!/usr/bin/env bash
# `ray up` for real, on this machine: cluster-local.yaml brought up over SSH on loopback, a
# one-epoch ghost_size study submitted to it with `ray job submit`, its results checked on the
# head, and everything torn down again. .ci/run runs it after the tests; by hand:
#
#   scripts/ray_up_smoke.sh    # from a checkout, with the Python that has Ray first on PATH
#                              # (pip install -c constraints.txt -e ".[cluster]")
#
# It runs as root (it installs packages, adds a user and runs an sshd); started by another user
# with passwordless sudo, it runs itself again with sudo, keeping PATH. What it does:
#   1. installs what is missing of openssh-server, rsync and netcat-openbsd (Debian), without
#      letting the package start the system's own sshd;
#   2. adds a throwaway user ($TUNEGAP_SMOKE_USER, default tunegap-smoke) and starts an sshd
#      bound to 127.0.0.1 on a free port, with a host key of its own, that user's throwaway key
#      as the only way in (no password, no root login), and no forwarding;
#   3. writes cluster-local.yaml as scripts/ray_up_smoke_config.py changes it: the head at
#      127.0.0.1 through that sshd, no workers, and settings for its ~/.tunegap_env: free
#      ports for Ray and MLflow, a Ray temp dir of its own, the storage folder in its home, the
#      CPU torch of constraints.txt, and this machine's Ray version. Every command is the
#      file's own, so scripts/cluster_setup.sh runs as it does on any node;
#   4. `ray up -y`: syncs the checkout, installs it in a fresh ~/venv, starts MLflow on the
#      head's 127.0.0.1 and Ray;
#   5. `ray job submit ... -- python -m tunegap.studies.ghost_size --address auto --epochs 1
#      ...` (no --tracking-uri, no --storage-path: the cluster's variables must do);
#   6. `ray exec ... scripts/ray_up_smoke_check.py`: on the head, one parent run with every
#      trial as a child on its MLflow server, and the Parquet tables in its storage;
#   7. stops MLflow, `ray down -y`, and checks that nothing of the user is left running.
# Whatever fails, the EXIT trap stops the cluster and the sshd, removes the user (its home,
# venv and MLflow store with it) and every file it made, and prints the time it took. Other
# Ray instances on this machine are never touched: the cluster runs as the throwaway user
# (whose `ray stop` cannot stop anyone else's processes) on ports and a temp dir of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$SECONDS
PY="${PYTHON:-python}"
SMOKE_USER="${TUNEGAP_SMOKE_USER:-tunegap-smoke}"
# pip's cache outlives the user, so a second run does not download the same wheels again.
PIP_CACHE="${TUNEGAP_SMOKE_PIP_CACHE-/var/cache/tunegap-ray-up-smoke/pip}"
MARKER=".tunegap-ray-up-smoke"
CLUSTER="tunegap-smoke-$$"
# --baseline-epochs 1: the small batch otherwise trains its workload's whole base regime,
# and the check on the head counts one epoch per trial.
STUDY_ARGS=(--epochs 1 --baseline-epochs 1 --batch-sizes 512 --ghost-sizes none,32 --seeds 2)
TRIALS=6  # (2 cells + the small-batch baseline) x 2 seeds

WORK=""
USER_HOME=""
SSHD_PID=""
CHILD=""
CLUSTER_UP=0
RAY_UP_RAN=0
MADE_USER=0
OWNS_CACHE=0
MADE_POLICY=0
MADE_RUN_SSHD=0
# ssh makes ~/.ssh (of the account running it) on its first run; removed again if it was ours.
DOT_SSH="$(getent passwd "$(id -un)" | cut -d: -f6)/.ssh"
MADE_DOT_SSH=0
[ -e "$DOT_SSH" ] || MADE_DOT_SSH=1

log() { echo "ray_up_smoke: $*"; }
die() {
    echo "ray_up_smoke: error: $*" >&2
    exit 1
}

step() {
    local name=$1 t=$SECONDS
    shift
    log "--- $name"
    "$@"
    log "--- $name: done in $((SECONDS - t)) s"
}

# `ray_cli SECONDS ARGS...`: the launcher's `ray ARGS...`, killed after SECONDS, with a temp
# dir (Ray's, and its cluster config cache) of its own. Waited for in the background, so that
# Ctrl-C or a TERM from CI runs the trap at once (it stops this command first).
ray_cli() {
    local limit=$1 status=0
    shift
    RAY_TMPDIR="$WORK/launcher" TMPDIR="$WORK/launcher" RAY_USAGE_STATS_ENABLED=0 \
        timeout "$limit" ray "$@" &
    CHILD=$!
    wait "$CHILD" || status=$?
    CHILD=""
    return "$status"
}

stop_child() {
    [ -n "$CHILD" ] || return 0
    # timeout passes the signal on to ray and everything ray started.
    kill -TERM "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
    CHILD=""
}

check_prerequisites() {
    [ "$(id -u)" -eq 0 ] ||
        die "run it as root, or as a user with passwordless sudo (it installs packages, adds a user and starts an sshd)"
    command -v ray >/dev/null || die "no ray on PATH: pip install -c constraints.txt -e \".[cluster]\""
    "$PY" -c 'import ray, yaml' 2>/dev/null || die "$PY cannot import ray and yaml: set PYTHON to the Python that has Ray"
    command -v apt-get >/dev/null || command -v sshd >/dev/null || die "no apt-get to install openssh-server"
}

install_packages() {
    local missing=()
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v ssh-keygen >/dev/null || missing+=(openssh-client)
    command -v rsync >/dev/null || missing+=(rsync)
    command -v nc >/dev/null || missing+=(netcat-openbsd)
    if [ ${#missing[@]} -eq 0 ]; then
        log "openssh-server, rsync and netcat are there"
        return
    fi
    # Installing openssh-server starts the system's sshd (port 22, every interface) unless
    # policy-rc.d forbids starting services.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        MADE_POLICY=1
    fi
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
    export DEBIAN_FRONTEND=noninteractive
    "${apt[@]}" install -y --no-install-recommends "${missing[@]}" ||
        { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; }
    drop_policy
}

drop_policy() {
    if [ "$MADE_POLICY" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        MADE_POLICY=0
    fi
}

make_user() {
    if id "$SMOKE_USER" >/dev/null 2>&1; then
        local old_home
        old_home="$(getent passwd "$SMOKE_USER" | cut -d: -f6)"
        [ -f "$old_home/$MARKER" ] ||
            die "user $SMOKE_USER exists and is not this smoke run's: set TUNEGAP_SMOKE_USER to a free name"
        ! pgrep -u "$SMOKE_USER" >/dev/null ||
            die "user $SMOKE_USER (left by an earlier run) still runs processes: $(pgrep -u "$SMOKE_USER" | tr '\n' ' ')"
        userdel -r "$SMOKE_USER" 2>/dev/null || true
    fi
    useradd --create-home --shell /bin/bash "$SMOKE_USER"
    MADE_USER=1  # only now may the trap sweep this user's processes and remove it
    # '*': no password will do, and the account is not locked ('!'), which sshd refuses.
    usermod -p '*' "$SMOKE_USER"
    USER_HOME="$(getent passwd "$SMOKE_USER" | cut -d: -f6)"
    touch "$USER_HOME/$MARKER"
    # One folder at a time: `install -d` would make the missing parents root's.
    install -d -m 700 -o "$SMOKE_USER" -g "$SMOKE_USER" "$USER_HOME/.ssh" "$USER_HOME/.config"
    install -d -m 700 -o "$SMOKE_USER" -g "$SMOKE_USER" "$USER_HOME/.config/pip"
    install -m 600 -o "$SMOKE_USER" -g "$SMOKE_USER" "$WORK/user_key.pub" "$USER_HOME/.ssh/authorized_keys"
    # The storage folder the cluster file's check-storage step wants (on a real cluster: the
    # shared mount) and Ray's temp dir (short: Ray's socket paths must fit in 107 bytes).
    install -d -o "$SMOKE_USER" -g "$SMOKE_USER" "$USER_HOME/tunegap_results" "$USER_HOME/rt"
    local cache_env=()
    if [ -n "$PIP_CACHE" ]; then
        mkdir -p "$PIP_CACHE"
        chown -R "$SMOKE_USER:$SMOKE_USER" "$PIP_CACHE"
        OWNS_CACHE=1
        cache_env=(PIP_CACHE_DIR="$PIP_CACHE")
    fi
    env "${cache_env[@]}" "$PY" scripts/ray_up_smoke_config.py pip-conf >"$USER_HOME/.config/pip/pip.conf"
    chown "$SMOKE_USER:$SMOKE_USER" "$USER_HOME/.config/pip/pip.conf"
}

make_keys() {
    ssh-keygen -q -t ed25519 -N '' -C "tunegap-ray-up-smoke host" -f "$WORK/host_key"
    ssh-keygen -q -t ed25519 -N '' -C "tunegap-ray-up-smoke user" -f "$WORK/user_key"
}

start_sshd() {
    cat >"$WORK/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $WORK/host_key
PidFile none
AllowUsers $SMOKE_USER
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
UsePAM no
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
EOF
    if [ ! -d /run/sshd ]; then
        mkdir -p -m 755 /run/sshd
        MADE_RUN_SSHD=1
    fi
    /usr/sbin/sshd -t -f "$WORK/sshd_config"
    /usr/sbin/sshd -D -e -f "$WORK/sshd_config" 2>"$WORK/sshd.log" &
    SSHD_PID=$!
    local tries=0
    until ssh -q -i "$WORK/user_key" -p "$SSH_PORT" -o BatchMode=yes -o IdentitiesOnly=yes \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 \
        "$SMOKE_USER@127.0.0.1" true; do
        tries=$((tries + 1))
        [ "$tries" -lt 30 ] || { cat "$WORK/sshd.log" >&2; die "cannot log in through the sshd on 127.0.0.1:$SSH_PORT"; }
        sleep 1
    done
    log "sshd (pid $SSHD_PID) on 127.0.0.1:$SSH_PORT lets $SMOKE_USER in with the throwaway key"
}

write_config() {
    local ray_version
    ray_version="$("$PY" -c 'import ray; print(ray.__version__)')"
    # Every other port Ray would take at a fixed default, and a small object store: this
    # machine is shared (another Ray may hold the defaults).
    local ray_args=(--node-manager-port="$NODE_MANAGER_PORT" --ray-client-server-port="$CLIENT_PORT"
        --dashboard-agent-listen-port="$AGENT_PORT" --dashboard-agent-grpc-port="$AGENT_GRPC_PORT"
        --metrics-export-port="$METRICS_PORT" --runtime-env-agent-port="$RUNTIME_ENV_PORT"
        --object-store-memory=300000000)
    "$PY" scripts/ray_up_smoke_config.py config --out "$CFG" --cluster-name "$CLUSTER" \
        --ssh-user "$SMOKE_USER" --ssh-key "$WORK/user_key" --ssh-port "$SSH_PORT" \
        --env "TUNEGAP_STORAGE=$USER_HOME/tunegap_results" \
        --env "TUNEGAP_RAY_VERSION=$ray_version" \
        --env "TUNEGAP_PIP_CONSTRAINTS=constraints.txt" \
        --env "TUNEGAP_RAY_PORT=$RAY_PORT" \
        --env "TUNEGAP_OBJECT_MANAGER_PORT=$OBJECT_MANAGER_PORT" \
        --env "TUNEGAP_DASHBOARD_PORT=$DASHBOARD_PORT" \
        --env "TUNEGAP_MLFLOW_PORT=$MLFLOW_PORT" \
        --env "TUNEGAP_RAY_START_ARGS=${ray_args[*]}" \
        --env "RAY_TMPDIR=$USER_HOME/rt" \
        --env "RAY_USAGE_STATS_ENABLED=0"
    log "cluster file: $CFG (cluster-local.yaml, head 127.0.0.1 through port $SSH_PORT, Ray $ray_version)"
}

ray_up() {
    CLUSTER_UP=1  # from here on the trap runs `ray down`, even after a partial `ray up`
    RAY_UP_RAN=1
    log "the head's \`ray stop\` runs as $SMOKE_USER: the \"Could not terminate\" lines it may print"
    log "are other users' Ray processes on this machine, which it cannot stop (as intended)"
    ray_cli 1500 up -y --no-config-cache --disable-usage-stats --log-style record "$CFG"
}

wait_for_dashboard() {
    local tries=0
    until "$PY" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=5)" \
        "http://127.0.0.1:$DASHBOARD_PORT/api/version" 2>/dev/null; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || die "Ray's dashboard does not answer on 127.0.0.1:$DASHBOARD_PORT"
        sleep 1
    done
}

submit_study() {
    wait_for_dashboard
    # On loopback the head's 127.0.0.1 is this machine's: no tunnel (`ray dashboard`) needed.
    ray_cli 1200 job submit --address "http://127.0.0.1:$DASHBOARD_PORT" \
        --submission-id "$CLUSTER-ghost_size" -- \
        python -m tunegap.studies.ghost_size --address auto "${STUDY_ARGS[@]}"
}

check_results() {
    ray_cli 300 exec --no-config-cache "$CFG" \
        "python ~/src/tunegap/scripts/ray_up_smoke_check.py --study ghost_size --trials $TRIALS --epochs 1"
}

stop_cluster() {
    ray_cli 120 exec --no-config-cache "$CFG" "bash ~/src/tunegap/scripts/cluster_setup.sh stop-mlflow"
    ray_cli 300 down -y --log-style record "$CFG"
    CLUSTER_UP=0
}

# Ray's SSH connections stay open 10 s after each command (ControlPersist): close them now.
close_ssh_masters() {
    local dir
    dir="$("$PY" - "$CLUSTER" <<'EOF'
import getpass, hashlib, sys
from ray.autoscaler._private.command_runner import HASH_MAX_LENGTH as n
user, cluster = (hashlib.sha256(s.encode()).hexdigest()[:n] for s in (getpass.getuser(), sys.argv[1]))
print(f"/tmp/ray_ssh_{user}/{cluster}")
EOF
)" || return 0
    [ -d "$dir" ] || return 0
    local sock
    for sock in "$dir"/*; do
        [ -S "$sock" ] && ssh -o ControlPath="$sock" -O exit placeholder 2>/dev/null
    done
    rmdir "$dir" "$(dirname "$dir")" 2>/dev/null || true
}

stop_sshd() {
    [ -n "$SSHD_PID" ] || return 0
    kill -TERM "$SSHD_PID" 2>/dev/null
    wait "$SSHD_PID" 2>/dev/null
    SSHD_PID=""
}

# Every process of the throwaway user was started by this run; after `ray down` and stop-mlflow
# there must be none (the SSH sessions closing may take a few seconds).
sweep_user_processes() {
    [ "$MADE_USER" = 1 ] || return 0
    local waited=0 left
    while pgrep -u "$SMOKE_USER" >/dev/null && [ "$waited" -lt 30 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    left="$(pgrep -d, -u "$SMOKE_USER")" || return 0
    echo "ray_up_smoke: left behind by $SMOKE_USER:" >&2
    ps -o pid=,args= -p "$left" >&2
    # shellcheck disable=SC2086  # a list of pids
    kill -KILL ${left//,/ } 2>/dev/null
    return 1
}

show_logs() {
    local f
    for f in "${USER_HOME:-/nonexistent}/mlflow/server.log" "${WORK:-/nonexistent}/sshd.log"; do
        [ -s "$f" ] && { echo "ray_up_smoke: tail of $f:" >&2; tail -n 20 "$f" >&2; }
    done
    return 0
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    stop_child
    [ "$status" -eq 0 ] || show_logs
    if [ "$CLUSTER_UP" = 1 ]; then
        log "cleanup: stopping the cluster"
        stop_cluster
    fi
    [ "$RAY_UP_RAN" = 1 ] && close_ssh_masters
    stop_sshd
    if ! sweep_user_processes && [ "$status" -eq 0 ]; then
        echo "ray_up_smoke: error: processes were left running after ray down" >&2
        status=1
    fi
    [ "$MADE_USER" = 1 ] && userdel -r "$SMOKE_USER" 2>/dev/null
    drop_policy
    [ "$MADE_RUN_SSHD" = 1 ] && rmdir /run/sshd 2>/dev/null
    [ "$MADE_DOT_SSH" = 1 ] && rmdir "$DOT_SSH" 2>/dev/null
    # The cache outlives the user; no later account with the same uid should own it.
    [ "$OWNS_CACHE" = 1 ] && chown -R root:root "$PIP_CACHE"
    [ -n "$WORK" ] && rm -rf "$WORK"
    local took=$((SECONDS - T0))
    if [ "$status" -eq 0 ]; then
        log "passed in $((took / 60)) min $((took % 60)) s"
    else
        log "FAILED (exit status $status) after $((took / 60)) min $((took % 60)) s"
    fi
    exit "$status"
}

if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    exec sudo -n env "PATH=$PATH" "PYTHON=$PY" "TUNEGAP_SMOKE_USER=$SMOKE_USER" \
        "TUNEGAP_SMOKE_PIP_CACHE=$PIP_CACHE" bash "$0" "$@"
fi

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

check_prerequisites
WORK="$(mktemp -d /tmp/tunegap-ray-up-smoke.XXXXXX)"
mkdir -p "$WORK/launcher"
CFG="$WORK/cluster-local.yaml"
read -r SSH_PORT RAY_PORT OBJECT_MANAGER_PORT DASHBOARD_PORT MLFLOW_PORT NODE_MANAGER_PORT \
    CLIENT_PORT AGENT_PORT AGENT_GRPC_PORT METRICS_PORT RUNTIME_ENV_PORT \
    < <("$PY" scripts/ray_up_smoke_config.py ports 11)

step "packages" install_packages
step "keys" make_keys
step "user $SMOKE_USER" make_user
step "sshd on 127.0.0.1:$SSH_PORT" start_sshd
step "cluster file" write_config
step "ray up" ray_up
step "ray job submit: ghost_size, one epoch, $TRIALS trials" submit_study
step "results on the head" check_results
step "stop MLflow, ray down" stop_cluster
