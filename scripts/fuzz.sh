#!/bin/sh
# SPDX-License-Identifier: MIT
# Builds every libFuzzer target with clang (Fuzz build type) and fuzzes each for SECONDS
# (default 60), starting from its committed corpus. A crash fails the run and leaves the
# reproducer in build-fuzz/artifacts/: fix the bug, then commit the input to
# tests/fuzz/corpus/<target>/ as a regression.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -eu
cd "$(dirname "$0")/.."
secs=${1:-60}
[ $# -gt 0 ] && shift
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Fuzz >/dev/null
targets=${*:-$(ls tests/fuzz/fuzz_*.c | sed -n 's#.*/fuzz_\(.*\)\.c#\1#p' | grep -v '^replay$')}
for t in $targets; do
    cmake --build build-fuzz -j"$(nproc)" --target "fuzz_$t" >/dev/null
done
mkdir -p build-fuzz/artifacts
status=0
for t in $targets; do
    work=build-fuzz/corpus-$t
    rm -rf "$work"
    mkdir -p "$work"
    [ -d "tests/fuzz/corpus/$t" ] && cp -r "tests/fuzz/corpus/$t/." "$work/"
    echo "fuzz: $t for ${secs}s"
    if ! ./build-fuzz/tests/fuzz/fuzz_$t -max_total_time="$secs" -max_len=65536 \
        -artifact_prefix=build-fuzz/artifacts/$t- -print_final_stats=1 "$work" \
        >build-fuzz/fuzz-$t.log 2>&1; then
        echo "fuzz: $t FAILED, see build-fuzz/fuzz-$t.log and build-fuzz/artifacts/"
        tail -40 build-fuzz/fuzz-$t.log
        status=1
    else
        grep -E 'stat::number_of_executed_units' build-fuzz/fuzz-$t.log | sed "s/^/fuzz: $t /"
    fi
done
exit $status
