#!/usr/bin/env bash
# The setup and start commands of a ray_stream node under Ray's cluster launcher (`ray up`),
# shared by cluster.yaml (AWS) and deploy/local.yaml (this machine, over SSH):
#
#   ray-stream-node.sh setup                          setup_commands: every node
#   ray-stream-node.sh head   ray start --head ...    head_start_ray_commands
#   ray-stream-node.sh worker ray start --address ... worker_start_ray_commands
#
# `head` and `worker` run the `ray start` command they are given unless this node's Ray
# already runs. `head` then runs `ray-stream start --address <this Ray>` with the options of
# the config's `metadata.ray_stream` block (the launcher copies the config to the head as
# ~/ray_bootstrap_config.yaml), unless one already runs, and waits for its `ready` line.
#
# Rules this script keeps:
# 1. Re-running `ray up` is safe: a step whose work is done is skipped (the virtualenv is
#    current, this node's raylet runs, a `ray-stream start` runs). A running ray-stream
#    keeps its options: `ray-stream stop` on the head, then `ray up` again, applies new ones.
# 2. It never runs `ray stop`: that stops every Ray process on the machine, not just this
#    node's (and on deploy/local.yaml every node is this machine).
# 3. The node's own Python is left as it was: ray_stream is installed (editable, from the
#    synced copy) into the virtualenv ~/ray_stream-venv, which sees python3's packages
#    (Ray comes with the image), and Ray is started by that virtualenv's Python so that
#    Ray's workers import this copy.
# 4. A node reached over SSH on a loopback address other than 127.0.0.1 is one of several
#    simulated on one machine (deploy/local.yaml): Ray runs on that address
#    (--node-ip-address; RAY_STREAM_NODE_IP overrides), so the nodes stay apart.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VENV=$HOME/ray_stream-venv
LOG=$HOME/ray-stream.log
PIDFILE=$HOME/ray-stream.pid
READY_TIMEOUT_S=300

die() {
    echo "ray-stream-node.sh: $*" >&2
    exit 1
}

node_ip() {
    local _a _b server_ip _c
    if [[ -n ${RAY_STREAM_NODE_IP:-} ]]; then
        echo "$RAY_STREAM_NODE_IP"
    elif [[ -n ${SSH_CONNECTION:-} ]]; then
        read -r _a _b server_ip _c <<<"$SSH_CONNECTION"
        if [[ $server_ip == 127.* && $server_ip != 127.0.0.1 ]]; then
            echo "$server_ip"
        fi
    fi
}

setup() {
    if [[ ! -x $VENV/bin/python ]]; then
        python3 -m venv --system-site-packages "$VENV"
        # When python3 is itself a virtualenv, --system-site-packages reaches past it to
        # the base interpreter: also add python3's own site directories (Ray among them).
        local site_dir
        site_dir=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
        python3 -c 'import site; print("".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()))' \
            >"$site_dir/_ray_stream_node_base.pth"
    fi
    # Reinstall when pyproject.toml (the dependencies) changed or ray_stream is not this copy.
    local stamp
    stamp=$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)
    if [[ $(cat "$VENV/.ray_stream-stamp" 2>/dev/null) != "$stamp" ]] ||
        ! "$VENV/bin/python" - "$REPO" <<'EOF'
import os, sys
import ray_stream
sys.exit(not os.path.realpath(ray_stream.__file__).startswith(sys.argv[1] + os.sep))
EOF
    then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO"
        echo "$stamp" >"$VENV/.ray_stream-stamp"
    fi
    if [[ ! -e $VENV/bin/ray ]]; then # Ray is the image's: its CLI, run by this Python
        printf '#!%s\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n' \
            "$VENV/bin/python" >"$VENV/bin/ray"
        chmod +x "$VENV/bin/ray"
    fi
    # `ray exec` / `ray attach` shells find ray-stream (the launcher sources ~/.bashrc).
    # shellcheck disable=SC2016  # written as is: expanded by the shells that source it
    local line='export PATH="$HOME/ray_stream-venv/bin:$PATH"  # deploy/ray-stream-node.sh'
    grep -qxF "$line" "$HOME/.bashrc" 2>/dev/null || printf '%s\n' "$line" >>"$HOME/.bashrc"
    echo "ray_stream installed from $REPO in $VENV"
}

ray_runs_here() { # a raylet of this node (of this address, when simulated) is alive
    local ip=$1 pid args
    for pid in $(pgrep -f '/raylet/raylet ' || true); do
        args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        if [[ -z $ip || $args == *"--node_ip_address=$ip "* ]]; then
            return 0
        fi
    done
    return 1
}

start_ray() { # start_ray ROLE NODE_IP ray start ...
    local role=$1 ip=$2
    shift 2
    [[ ${1:-} == ray && ${2:-} == start ]] || die "$role: expected a 'ray start ...' command, got: $*"
    [[ -x $VENV/bin/python ]] || die "$role: run 'ray-stream-node.sh setup' first"
    if ray_runs_here "$ip"; then
        echo "Ray already runs on this node${ip:+ ($ip)}: not starting it again"
        return 0
    fi
    local extra=()
    if [[ -n $ip ]]; then
        extra+=("--node-ip-address=$ip")
        if [[ $role == head ]]; then extra+=("--dashboard-host=$ip"); fi
    fi
    "$@" "${extra[@]}"
}

ray_stream_pid() { # the pid of the ray-stream start this script launched, if it runs
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [[ -n $pid ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'ray-stream start' &&
        echo "$pid"
}

start_options() { # metadata.ray_stream of the cluster config, as NUL-separated options
    "$VENV/bin/python" - "$HOME/ray_bootstrap_config.yaml" <<'EOF'
import os, sys
import yaml
with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
options = (config.get("metadata") or {}).get("ray_stream") or {}
for key, value in options.items():
    for item in value if isinstance(value, list) else [value]:
        flag = "--" + key.replace("_", "-")
        if item is True:
            sys.stdout.write(flag + "\0")
        elif item not in (False, None):
            sys.stdout.write(flag + "\0" + os.path.expanduser(str(item)) + "\0")
EOF
}

start_ray_stream() { # start_ray_stream GCS_ADDRESS
    local pid options
    if pid=$(ray_stream_pid); then
        echo "ray-stream start already runs (pid $pid): not starting another"
        grep -E '^(ready|group) ' "$LOG" || true
        return 0
    fi
    [[ -f $HOME/ray_bootstrap_config.yaml ]] || die "head: no ~/ray_bootstrap_config.yaml"
    start_options >"$HOME/.ray-stream-options" || die "head: cannot read metadata.ray_stream"
    mapfile -d '' -t options <"$HOME/.ray-stream-options"
    echo "ray-stream start --address $1 ${options[*]}"
    nohup "$VENV/bin/ray-stream" start --address "$1" "${options[@]}" >"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
    for ((i = 0; i < READY_TIMEOUT_S; i++)); do
        if grep -qE '^ready ' "$LOG"; then
            grep -E '^(ready|group) ' "$LOG"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "ray-stream start exited (log: $LOG)"; }
        sleep 1
    done
    die "ray-stream start not ready after ${READY_TIMEOUT_S} s (log: $LOG)"
}

gcs_address() { # the GCS address ray-stream attaches to: this node's, port from --port
    local ip=$1 port=6379 arg
    shift
    for arg in "$@"; do
        if [[ $arg == --port=* ]]; then port=${arg#--port=}; fi
    done
    if [[ -n $ip ]]; then echo "$ip:$port"; else echo auto; fi
}

main() {
    local command=${1:-} ip
    shift || true
    ip=$(node_ip)
    case $command in
    setup) setup ;;
    head)
        export PATH="$VENV/bin:$PATH"
        start_ray head "$ip" "$@"
        start_ray_stream "$(gcs_address "$ip" "$@")"
        ;;
    worker)
        export PATH="$VENV/bin:$PATH"
        start_ray worker "$ip" "$@"
        ;;
    *) die "usage: ray-stream-node.sh setup | head ray start --head ... | worker ray start ..." ;;
    esac
}

main "$@"
