#!/usr/bin/env bash
# Stops what e2e/node/start-node.sh started and removes what it created: the node's
# components (by their recorded PIDs), the pods' processes (by their cgroups), containerd
# and its shims (every process left in the network namespace), the control plane, the
# cgroup subtree kubelet made in every hierarchy, and the network namespace. The private
# mount namespace goes away with its last process. Safe to run twice.
#
# Usage: e2e/node/stop-node.sh STATE_DIR
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${1:?usage: stop-node.sh STATE_DIR}"

netns=""
[[ -f "$state/netns" ]] && netns="$(cat "$state/netns")"
netns_exists() { [[ -n "$netns" && -e "/run/netns/$netns" ]]; }

# Stops PID if it still is one of the node's processes (in its network namespace): a
# recorded PID may have been reused since, e.g. after a reboot.
stop_pid() {
  local pid="$1"
  kill -0 "$pid" 2>/dev/null || return 0
  netns_exists && [[ "$(ip netns identify "$pid" 2>/dev/null)" == "$netns" ]] || return 0
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

for name in traefik coredns kube-router kube-proxy kubelet; do
  pidfile="$state/pids/$name.pid"
  [[ -f "$pidfile" ]] || continue
  stop_pid "$(cat "$pidfile")"
  rm -f "$pidfile"
done

# The pods' processes: everything in the node's cgroup subtree.
# (start-node.sh names the subtree after the namespace.)
cgroup_dirs() {
  [[ -n "$netns" ]] || return 0
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -d "$hierarchy$netns" ]] && echo "$hierarchy$netns"
  done
}
for _ in 1 2 3; do
  pids="$(cgroup_dirs | while read -r dir; do find "$dir" -name cgroup.procs -exec cat {} +; done | sort -u)"
  [[ -n "$pids" ]] || break
  # shellcheck disable=SC2086 # one PID per word
  kill -9 $pids 2>/dev/null
  sleep 0.5
done

if netns_exists; then
  # containerd, its shims and anything else still in the namespace.
  for pid in $(ip netns pids "$netns"); do
    stop_pid "$pid" &
  done
  wait
fi
pidfile="$state/pids/containerd.pid"
[[ -f "$pidfile" ]] && stop_pid "$(cat "$pidfile")" && rm -f "$pidfile"

[[ -d "$state/cp" ]] && "$here/../k8s/stop-cluster.sh" "$state/cp" 2>/dev/null

# kubelet's cgroups, deepest first (a cgroup is removed with rmdir once it is empty).
cgroup_dirs | while read -r dir; do
  find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
done
left="$(cgroup_dirs)"
[[ -z "$left" ]] || echo "stop-node: WARNING: cgroups left behind: $left" >&2

if netns_exists; then
  ip netns del "$netns" || echo "stop-node: WARNING: could not delete netns $netns" >&2
fi
echo "stop-node: stopped the node in $state" >&2
