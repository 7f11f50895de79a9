#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/engine/run.sh: brigade's engine and llama.cpp (node-llama-cpp's prebuilt CPU binary) side
# by side in one run, on the same GGUF files: stories260K and the synthetic 110M llama2.c shape,
# F32 / Q8_0 / Q4_0, 1 and 2 threads; the runs of the two engines alternate (B L, L B, B L, ...)
# so that load from other processes hits both alike. Prints a markdown table (see README.md).
#
#   bench/engine/run.sh [--runs N] [--only 110m|260k] [--threads LIST] [--out DIR]
#                       [--build DIR] [--prompt N] [--gen N]
#
#   --runs N        timed runs per engine and configuration (median reported; default 3)
#   --only WHICH    110m or 260k (default both)
#   --threads LIST  comma-separated thread counts (default 1,2)
#   --out DIR       where the GGUF files (~620 MB) and raw results go
#                   (default /tmp/brigade-bench-engine; never the repository)
#   --build DIR     Release build directory for bench_engine (default <repo>/build-bench-engine)
#   --prompt N      prompt tokens (default 64); --gen N: generated tokens (default 128)
#
# Needs cmake, a C compiler, node >= 20 and npm (bench/engine/llamacpp is npm-installed on first
# use: node-llama-cpp and its prebuilt linux-x64 CPU binary; nothing is built or downloaded at
# run time).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=3
only=""
threads="1,2"
out=/tmp/brigade-bench-engine
build="$repo/build-bench-engine"
prompt=64
gen=128

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=${2:?}; shift 2 ;;
    --only) only=${2:?}; shift 2 ;;
    --threads) threads=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --build) build=${2:?}; shift 2 ;;
    --prompt) prompt=${2:?}; shift 2 ;;
    --gen) gen=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "run.sh: unknown argument $1" >&2; usage ;;
    esac
done
case "$only" in
"") models="stories260K synth110M"; write_only="" ;;
260k) models="stories260K"; write_only="--only stories" ;;
110m) models="synth110M"; write_only="--only 110m" ;;
*) echo "run.sh: --only must be 110m or 260k" >&2; exit 2 ;;
esac
case "$out" in
"$repo" | "$repo"/*) echo "run.sh: --out must be outside the repository" >&2; exit 2 ;;
esac

log() { echo "run.sh: $*" >&2; }

# 1. bench_engine (Release)
if [ ! -f "$build/CMakeCache.txt" ]; then
    log "configuring $build (Release)"
    cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
log "building bench_engine"
cmake --build "$build" -j2 --target bench_engine >/dev/null
bench="$build/bench/engine/bench_engine"

# 2. node-llama-cpp at the versions of package-lock.json, with its prebuilt linux-x64 CPU binary
# as a direct dependency; the optional GPU/other-platform packages and the install script (which
# would look for or build binaries) are skipped. `npm install` rather than `npm ci`: ci refuses
# this lock because node-llama-cpp 3.22.1 lists optional packages (mac, win, riscv64) that were
# never published at that version; install keeps the locked versions all the same.
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
if [ ! -d "$here/llamacpp/node_modules/node-llama-cpp" ] ||
    [ ! -d "$here/llamacpp/node_modules/@node-llama-cpp/linux-x64" ]; then
    log "npm install in bench/engine/llamacpp"
    (cd "$here/llamacpp" &&
        npm install --omit=optional --ignore-scripts --no-audit --no-fund >&2)
fi

# 3. the GGUF files (deterministic: same bytes on every run)
mkdir -p "$out"
log "writing GGUF files to $out"
# shellcheck disable=SC2086
"$bench" --write-gguf "$out" $write_only >&2

# 4. memory bandwidth (measured again after the runs; the higher figure of the two is used, as
# other load can only lower it)
log "measuring memory bandwidth"
bw_start=$("$bench" --bandwidth)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
date_start=$(date -u '+%Y-%m-%d %H:%M UTC')

# 5. the runs, alternating engines
results="$out/results.jsonl"
: >"$results"
run_brigade() {
    "$bench" --gguf "$1" --threads "$2" --runs 1 --prompt "$prompt" --gen "$gen"
}
run_llama() {
    node "$here/llamacpp/bench.mjs" "$1" --threads "$2" --runs 1 --prompt "$prompt" --gen "$gen"
}
record() { # model type threads engine-json
    printf '{"model":"%s","type":"%s","threads":%s,"result":%s}\n' "$1" "$2" "$3" "$4" >>"$results"
}
for m in $models; do
    for ty in f32 q8_0 q4_0; do
        f="$out/$m-$ty.gguf"
        for t in ${threads//,/ }; do
            log "$m $ty threads=$t"
            for ((r = 0; r < runs; r++)); do
                if ((r % 2 == 0)); then
                    record "$m" "$ty" "$t" "$(run_brigade "$f" "$t")"
                    record "$m" "$ty" "$t" "$(run_llama "$f" "$t")"
                else
                    record "$m" "$ty" "$t" "$(run_llama "$f" "$t")"
                    record "$m" "$ty" "$t" "$(run_brigade "$f" "$t")"
                fi
            done
        done
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
log "measuring memory bandwidth again"
bw_end=$("$bench" --bandwidth)
bw=$(node -e 'const a = JSON.parse(process.argv[1]).bw_gbs, b = JSON.parse(process.argv[2]).bw_gbs;
    console.log(JSON.stringify({bw_gbs: a.map((x, i) => Math.max(x, b[i])), start: a, end: b}));' \
    "$bw_start" "$bw_end")

# 6. the table
node "$here/llamacpp/table.mjs" "$results" "$bw" "$date_start" "$load_start" "$load_end" \
    "$prompt" "$gen" "$runs" | tee "$out/table.md"
