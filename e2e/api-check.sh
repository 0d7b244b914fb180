#!/usr/bin/env bash
# Checks the server API against its OpenAPI 3.1 document (server/src/api/openapi.json):
# openapi-spec-validator validates the document (the committed file and the one a server
# serves, which must be the same), then Schemathesis generates requests from it, valid and
# invalid, against a live chat-server, once on the in-memory backplane and once over a
# real redis-server, with every check on: no 5xx, every answer's status, headers and body
# as documented, schema-valid requests accepted and invalid ones refused. Both tools are
# installed at pinned versions from PyPI into the tools cache.
#
# Usage: bash e2e/api-check.sh   (after `cargo build`: runs target/debug/chat-server)
# Prints `# pass N` / `# fail N` for the test runner's summary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/k8s/versions.sh"
cd "$here/.."

validator="$(pip_tool_venv openapi-spec-validator openapi-spec-validator "$OPENAPI_SPEC_VALIDATOR_VERSION")"
schemathesis="$(pip_tool_venv schemathesis schemathesis "$SCHEMATHESIS_VERSION")"

scratch="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

key="api-check-key-$(date +%s%N)"
pass=0
fail=0
result() {
  if [ "$1" = 0 ]; then pass=$((pass + 1)); echo "api-check $2: ok"; else fail=$((fail + 1)); echo "api-check $2: FAILED"; fi
}

set +e
"$validator/bin/openapi-spec-validator" server/src/api/openapi.json
result $? "openapi-spec-validator (committed document)"
set -e

# One chat-server (and, for redis, its redis-server) on free loopback ports.
run_against() {
  local backplane="$1" api_port redis_args=()
  api_port="$(free_port)"
  if [ "$backplane" = redis ]; then
    local redis_port
    redis_port="$(free_port)"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$scratch" >"$scratch/redis.log" 2>&1 &
    pids+=($!)
    wait_port "$redis_port"
    redis_args=(--redis-url "redis://127.0.0.1:$redis_port")
  fi
  CHAT_API_KEYS="$key" target/debug/chat-server --dev --log-format json \
    --listen "127.0.0.1:$(free_port)" --admin-listen "127.0.0.1:$(free_port)" \
    --api-listen "127.0.0.1:$api_port" --api-rate-per-sec 100000 --api-burst 100000 \
    "${redis_args[@]}" >"$scratch/server-$backplane.log" 2>&1 &
  pids+=($!)
  wait_port "$api_port"
  local url="http://127.0.0.1:$api_port"

  set +e
  curl -sS --fail "$url/api/v1/openapi.json" -o "$scratch/served.json" &&
    cmp -s "$scratch/served.json" server/src/api/openapi.json &&
    "$validator/bin/openapi-spec-validator" "$scratch/served.json"
  result $? "the served document is the committed one ($backplane)"
  # ASCII strings: the document's maxLength counts characters and the server's body
  # limit counts bytes, which are the same in ASCII. Deterministic: a failure reproduces.
  (cd "$scratch" && "$schemathesis/bin/schemathesis" run "$OLDPWD/server/src/api/openapi.json" \
    --url "$url" --header "Authorization: Bearer $key" --checks all \
    --generation-codec ascii --generation-deterministic --max-examples 100 \
    --no-color) 2>&1 | tail -n 25
  result "${PIPESTATUS[0]}" "schemathesis, every check ($backplane)"
  set -e
}

run_against memory
run_against redis

echo "# pass $pass"
echo "# fail $fail"
[ "$fail" = 0 ]
