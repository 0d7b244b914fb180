#!/usr/bin/env bash
# Runs checkov's Kubernetes checks on the objects the operator builds: its golden files
# (operator/tests/golden/minimal.yaml, built from examples/minimal.yaml, and full.yaml,
# from examples/full.yaml; operator/tests/builders.rs keeps them equal to the builders'
# output). checkov is installed at a pinned version from PyPI into a cache directory keyed
# by version, unless it is already there. The checks listed in e2e/checkov-skips.txt, each
# with its reason (docs/security.md has the table), are skipped; any other failed check
# fails this script. Offline: nothing is downloaded from checkov's vendor platform
# (--skip-download, no API key passed on) and there is no update check.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/k8s/versions.sh"

venv="$(pip_tool_venv checkov checkov "$CHECKOV_VERSION")"

# The skip list: "CHECK_ID reason" a line; comments and blank lines aside. An id without
# its reason is an error.
skips_file="$here/checkov-skips.txt"
skips=()
while read -r id reason || [[ -n "$id" ]]; do
  [[ -z "$id" || "$id" == \#* ]] && continue
  if [[ ! "$id" =~ ^CKV2?_K8S_[0-9]+$ || -z "$reason" ]]; then
    echo "$skips_file: want 'CKV_K8S_N reason' lines, got: $id $reason" >&2
    exit 1
  fi
  skips+=("$id")
done <"$skips_file"
skip_args=()
if [[ ${#skips[@]} -gt 0 ]]; then
  skip_args=(--skip-check "$(IFS=,; echo "${skips[*]}")")
fi

cd "$here/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "checkov $CHECKOV_VERSION, Kubernetes checks; skipped: ${skips[*]:-none} (e2e/checkov-skips.txt)"
status=0
for example in minimal full; do
  file="operator/tests/golden/$example.yaml"
  echo "-- $file (the objects built for examples/$example.yaml)"
  # Failed checks on the console (quiet, compact), the counts in JSON.
  rc=0
  env -u BC_API_KEY -u PRISMA_API_URL CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE \
    "$venv/bin/checkov" --framework kubernetes --file "$file" "${skip_args[@]}" \
    --skip-download --quiet --compact \
    --output cli --output json --output-file-path "console,$out/$example.json" || rc=$?
  # 0: every check passed, 1: some failed; anything else is checkov's own error.
  if [[ $rc -gt 1 || ! -s "$out/$example.json" ]]; then
    echo "checkov did not run on $file (exit $rc)" >&2
    status=1
    continue
  fi
  # A file with no check run or with a parsing error fails too: the gate cannot pass by
  # checking nothing.
  "$venv/bin/python" - "$out/$example.json" "$example" <<'EOF' || status=1
import json
import sys

with open(sys.argv[1]) as f:
    report = json.load(f)
s = report["summary"] if isinstance(report, dict) else {}
passed, failed = s.get("passed", 0), s.get("failed", 0)
objects, errors = s.get("resource_count", 0), s.get("parsing_errors", 0)
print(f"checkov, {sys.argv[2]}: passed {passed}, failed {failed} "
      f"({objects} objects, {errors} parsing errors)")
sys.exit(0 if failed == 0 and errors == 0 and passed > 0 and objects > 0 else 1)
EOF
done
if [[ $status -ne 0 ]]; then
  echo "checkov: fix the builders, or add the check to e2e/checkov-skips.txt and docs/security.md with its reason" >&2
fi
exit "$status"
