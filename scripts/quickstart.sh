#!/bin/sh
# SPDX-License-Identifier: MIT
# From a fresh clone to a running gateway: installs the Debian packages, builds the Release
# binary and serves the default configuration (config/brigade.yaml: real recorded GPT-4 and
# Mixtral answers, no API key needed) on 127.0.0.1:8080. Extra arguments go to `brigade serve`.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
exec ./build/src/brigade serve -c config/brigade.yaml "$@"
