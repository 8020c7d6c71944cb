#!/usr/bin/env bash
# The forced command (authorized_keys `command="..."`) of the SSH key that
# tests/integration/test_ray_up.py gives `ray up`: it turns each SSH session into a session
# on one simulated node of the test's cluster, on this machine.
#
#   bash ray_up_ssh_command.sh ROOT TAG
#
# Rules this script keeps:
# 1. Each node, named by the loopback address the client reached, has its own HOME and temp
#    dirs (TMPDIR, RAY_TMPDIR), ROOT/<address>; nothing is written to the real home or /tmp.
# 2. Every process started through it carries RAY_UP_TEST_CLUSTER=TAG in its environment
#    (Ray's processes inherit it), so the guard and the test tell the cluster's processes
#    from every other process on the machine.
# 3. `ray stop` never runs: on this machine it would stop every Ray process (other test
#    sessions', the suite's own). Each `ray stop` in the command text is replaced by
#    ray_up_guard_stop.sh before the command runs, and a `ray` shell function does the same
#    for `ray stop` run by a script.
# Every command is appended to ROOT/ssh-commands.log (the original, then what ran).
set -euo pipefail

root=$1
tag=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
guard="bash $here/ray_up_guard_stop.sh"
read -r _ _ node_ip _ <<<"${SSH_CONNECTION:?not an SSH session}"

export HOME=$root/$node_ip RAY_TMPDIR=$root/$node_ip TMPDIR=$root/$node_ip
export RAY_UP_TEST_CLUSTER=$tag RAY_UP_TEST_ROOT=$root
# Ray refuses a second node with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its loopback-only
# switch). Each node runs on its loopback address (deploy/ray-stream-node.sh), and the
# test's network namespace has no other interface for Ray's 0.0.0.0 listeners.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
mkdir -p "$HOME"
cd "$HOME"

command=${SSH_ORIGINAL_COMMAND:-}
# `ray stop` as words, not inside longer ones (`array stop`, `ray stopped`, `ray-stream stop`).
guarded=$(sed -E "s#\\<ray[[:space:]]+stop\\>#$guard#g" <<<"$command")
{
    printf '%s %s %s\n' "$(date +%T)" "$node_ip" "$command"
    if [[ $guarded != "$command" ]]; then printf '    ran instead: %s\n' "$guarded"; fi
} >>"$root/ssh-commands.log"

ray() {
    if [[ ${1:-} == stop ]]; then
        shift
        bash "$RAY_UP_TEST_GUARD" "$@"
    else
        command ray "$@"
    fi
}
export RAY_UP_TEST_GUARD=$here/ray_up_guard_stop.sh
export -f ray

if [[ -z $guarded ]]; then exec bash --login; fi
exec bash -c "$guarded"
