#!/bin/sh
# SPDX-License-Identifier: MIT
# The whole test suite: installs what is missing, builds the Debug (ASan+UBSan) build, installs
# the npm packages of the SDK compatibility tests, and runs every CTest test (unit, integration,
# conformance, compat, fuzz-corpus replay, lint). Extra arguments go to ctest (e.g. -L unit).
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
(cd tests/compat && npm ci --no-audit --no-fund --loglevel=error)
cmake -S . -B build-debug -DCMAKE_BUILD_TYPE=Debug -DBR_WERROR=ON
cmake --build build-debug -j"$(nproc)"
cd build-debug
exec ctest -j2 --output-on-failure "$@"
