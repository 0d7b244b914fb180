#!/usr/bin/env bash
# Lints the GitHub Actions workflows (.github/workflows) with actionlint, built from its Go
# module (pinned in e2e/k8s/versions.sh) into the tools cache on the first run. The
# workflows need Docker and GitHub's runners, so this is all that can run of them here;
# actionlint also runs shellcheck on their `run:` scripts.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/k8s/versions.sh"

bin="$(tools_cache)/actionlint-v$ACTIONLINT_VERSION-$(go env GOVERSION)/bin"
if [[ ! -x "$bin/actionlint" ]]; then
  mkdir -p "$bin"
  echo "actionlint: building v$ACTIONLINT_VERSION" >&2
  timed_build "$bin/../build.log" "actionlint v$ACTIONLINT_VERSION" env CGO_ENABLED=0 \
    GOBIN="$bin" go install -trimpath -ldflags "-s -w" \
    "github.com/rhysd/actionlint/cmd/actionlint@v$ACTIONLINT_VERSION"
fi
cd "$here/.."
workflows=(.github/workflows/*.yml)
"$bin/actionlint" -no-color "${workflows[@]}"
echo "actionlint: ${#workflows[@]} workflows clean"
