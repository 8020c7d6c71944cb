#!/usr/bin/env bash
# Stands in for `ray stop` in the SSH sessions of tests/integration/test_ray_up.py's cluster
# (ray_up_ssh_command.sh puts it there). `ray stop` stops every Ray process on the machine;
# this stops the processes of that one cluster: those whose environment holds
# RAY_UP_TEST_CLUSTER=<its tag>, which every process started through its SSH sessions
# inherits. All the simulated nodes are this machine, so like `ray stop` on it, it stops
# every node's processes.
#
#   ray_up_guard_stop.sh [--dry-run] [ray stop's options, ignored]
#
# First `ray-stream stop` (the cluster flushes and leaves), then SIGTERM to the rest, and
# SIGKILL to what is left after GRACE_S. --dry-run lists the processes and stops none.
# It never signals a process without the tag, nor itself and its ancestors (they carry the
# tag: they are the SSH session running it).
set -uo pipefail

tag=${RAY_UP_TEST_CLUSTER:?refusing: not in a session of the ray up test cluster}
log=/dev/null
if [[ -n ${RAY_UP_TEST_ROOT:-} ]]; then log=$RAY_UP_TEST_ROOT/guard.log; fi
GRACE_S=10
dry_run=0
for arg in "$@"; do
    if [[ $arg == --dry-run ]]; then dry_run=1; fi
done

keep=" "
pid=$$
while [[ $pid -gt 1 ]]; do
    keep+="$pid "
    # the parent pid: the 2nd field after the command name, which may hold spaces
    pid=$(sed -E 's/^.*\) [A-Za-z] ([0-9]+) .*$/\1/' "/proc/$pid/stat" 2>/dev/null) || break
done

cluster_pids() { # sets `pids`; no subshell, so none of this script's own children is listed
    local environ pid
    pids=()
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        [[ $keep == *" $pid "* ]] && continue
        if grep -qzx "RAY_UP_TEST_CLUSTER=$tag" "$environ" 2>/dev/null; then pids+=("$pid"); fi
    done
}

say() { echo "ray_up_guard_stop: $*" | tee -a "$log"; }

cluster_pids
if ((dry_run)); then
    say "dry run, instead of ray stop: would stop ${#pids[@]} processes of test cluster $tag: ${pids[*]}"
    exit 0
fi

say "instead of ray stop: stopping the processes of test cluster $tag"
if command -v ray-stream >/dev/null; then
    timeout 90 ray-stream stop --timeout 60 2>&1 | tail -n 1 | tee -a "$log"
    cluster_pids
fi
say "SIGTERM to ${#pids[@]} processes: ${pids[*]}"
((${#pids[@]} == 0)) || kill -TERM "${pids[@]}" 2>/dev/null
for ((i = 0; i < GRACE_S * 5; i++)); do
    cluster_pids
    ((${#pids[@]} == 0)) && break
    sleep 0.2
done
if ((${#pids[@]} > 0)); then
    names=$(for p in "${pids[@]}"; do cat "/proc/$p/comm" 2>/dev/null; done | tr '\n' ' ')
    say "SIGKILL to ${#pids[@]} left after ${GRACE_S} s: ${pids[*]} ($names)"
    kill -KILL "${pids[@]}" 2>/dev/null
fi
say "done"
exit 0
