#!/usr/bin/env bash
# Stops what e2e/k8s/start-cluster.sh started, by the PIDs it recorded, in reverse order
# (KWOK and the controllers first, etcd last). Safe to run twice.
#
# Usage: e2e/k8s/stop-cluster.sh [STATE_DIR]      (default /tmp/chatcluster-k8s)
set -uo pipefail

state="${1:-/tmp/chatcluster-k8s}"
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pidfile="$state/pids/$name.pid"
  [[ -f "$pidfile" ]] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
done
echo "stop-cluster: stopped the components in $state" >&2
