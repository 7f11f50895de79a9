#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Times `brigade eval` end to end (process start, loading, scoring, the full threshold sweep,
# the report) on the RouteLLM MMLU folder (14,042 prompts in 57 CSVs) and the other DEV sets.
# Target (issue 3): MMLU under 1 s in a Release build. Uses hyperfine when installed, else a
# loop timed with `date +%s%N` (median and max of the runs). See README.md beside this file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

brigade="${BRIGADE:-$repo/build-eval-rel/src/brigade}"
runs=10
routers="random"

usage() {
    cat <<USAGE
usage: bench/eval/run.sh [--brigade PATH] [--runs N] [--router NAME[,NAME...]]
  --brigade PATH   brigade binary (default: \$BRIGADE, else build-eval-rel/src/brigade;
                   build it with -DCMAKE_BUILD_TYPE=Release)
  --runs N         timed runs per dataset (default 10)
  --router LIST    routers to evaluate in each run (default random)
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
    --brigade) brigade=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --router) routers=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done

if [ ! -x "$brigade" ]; then
    echo "bench/eval: no brigade binary at $brigade (build it in Release, or pass --brigade)" >&2
    exit 1
fi

# name|dataset|extra arguments
sets=(
    "mmlu|$repo/data/routellm/mmlu|"
    "gsm8k|$repo/data/routellm/gsm8k/gsm8k_responses.csv|"
    "arc|$repo/../shared/data/routing/routerbench/arc_challenge_train.csv|--strong gpt-4-1106-preview --weak mistralai/mixtral-8x7b-chat"
    "mbpp|$repo/../shared/data/routing/routerbench/mbpp_train.csv|--strong gpt-4-1106-preview --weak mistralai/mixtral-8x7b-chat"
)

echo "brigade eval timing: $brigade, routers $routers, $runs runs each"
for s in "${sets[@]}"; do
    IFS='|' read -r name data extra <<<"$s"
    if [ ! -e "$data" ]; then
        echo "$name: skipped ($data is not here: RouterBench is read from ../shared, not copied)"
        continue
    fi
    # shellcheck disable=SC2206
    args=(eval "$data" --router "$routers" --quiet $extra)
    "$brigade" "${args[@]}" >/dev/null # warm the page cache; fails loudly on a bad set
    if command -v hyperfine >/dev/null 2>&1; then
        hyperfine --warmup 1 --runs "$runs" --style basic -n "$name" \
            "$(printf '%q ' "$brigade" "${args[@]}")"
        continue
    fi
    times=()
    for _ in $(seq "$runs"); do
        t0=$(date +%s%N)
        "$brigade" "${args[@]}" >/dev/null
        t1=$(date +%s%N)
        times+=($(((t1 - t0) / 1000)))
    done
    sorted=$(printf '%s\n' "${times[@]}" | sort -n)
    median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    max=$(echo "$sorted" | tail -1)
    awk -v n="$name" -v med="$median" -v max="$max" -v runs="$runs" \
        'BEGIN { printf "%-6s median %7.1f ms   max %7.1f ms   (%d runs)\n", n, med / 1000, max / 1000, runs }' 
done
