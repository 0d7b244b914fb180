#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, nightly Rust),
# each for a bounded time, starting from its committed seed corpus (fuzz/seeds/) in a
# scratch corpus under target/fuzz-corpus/. A crash, a panic, a timeout (a single input
# over 10 s) or a leak fails the target; libFuzzer leaves the input in
# fuzz/artifacts/<target>/ to reproduce with `cargo +nightly fuzz run <target> <file>`.
#
# Usage: bash e2e/fuzz.sh [seconds per target, default 15] [target...]
#        bash e2e/fuzz.sh build    (builds the targets only: the test command does this
#                                   in the background while other tiers run)
# Prints one `fuzz <target>: N inputs, ok|FAILED` line per target and `# pass N` /
# `# fail N` for the test runner's summary. cargo-fuzz is installed (pinned) into the
# tools cache on the first run; the nightly toolchain by rustup if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=e2e/k8s/versions.sh
source e2e/k8s/versions.sh

seconds="${1:-15}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(client_frame resume auth rooms config operator_validate api_request)

CARGO_FUZZ_VERSION=0.13.2
fuzz_root="$(tools_cache)/cargo-fuzz-$CARGO_FUZZ_VERSION"
if [ ! -x "$fuzz_root/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $fuzz_root" >&2
  cargo install --locked --quiet --root "$fuzz_root" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export PATH="$fuzz_root/bin:$PATH"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi

# cargo-fuzz's default build: optimized, with debug assertions and overflow checks. Its
# target directory is kept in the tools cache, keyed by the nightly compiler, so only the
# project's own crates rebuild on later runs (a cold build took 24 minutes here, 2 cores
# with the other busy; a rebuild after a change to the server, 1 to 2 minutes).
nightly="$(rustup run nightly rustc --version | tr -c 'a-zA-Z0-9.\n' '-')"
fuzz_target_dir="$(tools_cache)/fuzz-target-$nightly"
fuzz_flags=(--codegen-units 16 --target-dir "$fuzz_target_dir")
echo "fuzz: building the targets into $fuzz_target_dir" >&2
(cd fuzz && cargo +nightly fuzz build "${fuzz_flags[@]}")
[ "$seconds" != build ] || exit 0

pass=0
fail=0
for target in "${targets[@]}"; do
  corpus="target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  log="target/fuzz-$target.log"
  if (cd fuzz && cargo +nightly fuzz run "${fuzz_flags[@]}" "$target" "../$corpus" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    result=ok
    pass=$((pass + 1))
  else
    result=FAILED
    fail=$((fail + 1))
    tail -n 40 "$log" >&2
  fi
  inputs="$(awk '/stat::number_of_executed_units:/ { print $2 }' "$log" | tail -n 1)"
  echo "fuzz $target: ${inputs:-0} inputs in ${seconds}s, $result"
done
echo "# pass $pass"
echo "# fail $fail"
[ "$fail" -eq 0 ]
