# shellcheck shell=bash
# shellcheck disable=SC2154 # state is set by the sourcing script
# Background components of the test clusters, sourced by e2e/k8s/start-cluster.sh and
# e2e/node/start-node.sh. The caller sets `state` (its state directory, with logs/ and
# pids/) and defines `say`.

# `start NAME COMMAND...`: runs COMMAND in the background, its output in
# $state/logs/NAME.log and its PID in $state/pids/NAME.pid.
start() {
  local name="$1"
  shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/pids/$name.pid"
}

# `wait_for NAME TRIES COMMAND...`: retries COMMAND every 0.5 s, at most TRIES times;
# on failure prints the end of NAME's log and returns 1 (the caller's ERR trap stops what
# was started; set -e ends the script).
wait_for() {
  local what="$1" tries="$2"
  shift 2
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  say "$what did not come up; last lines of its log:"
  tail -n 30 "$state/logs/$what.log" >&2 || true
  return 1
}
