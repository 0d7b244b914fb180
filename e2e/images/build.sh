#!/usr/bin/env bash
# Reproduces both images' Dockerfiles without a Docker engine and prints the directory
# that holds the result: <out>/<image>/rootfs and <out>/<image>/config.json.
# e2e/images/main.go says how (BuildKit's parser, Docker's .dockerignore matcher, the
# build stage run on the host); e2e/tests/images.rs checks and runs what comes out.
#
# Usage: e2e/images/build.sh [OUT]     (default: target/image-build)
# Progress goes to stderr; stdout is only the output directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/image-build}"
mkdir -p "$out/bin"
out="$(cd "$out" && pwd)"

(cd "$here" && go build -mod=readonly -o "$out/bin/imagebuild" .) >&2
(cd "$repo" && "$out/bin/imagebuild" -context . -out "$out" \
  chat-server=server/Dockerfile chatcluster-operator=operator/Dockerfile) >&2
echo "$out"
