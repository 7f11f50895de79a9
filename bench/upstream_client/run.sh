#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Calls/s of brigade's upstream client alone, native HTTP/1.1 backend beside libcurl: starts a
# local nginx (its own temporary config and directory; never /etc/nginx, never port 80) that
# answers every POST with a fixed chat.completion JSON, pins it to CPU 1 and the client to
# CPU 0, and runs bench_upstream_client for each backend. --strace counts syscalls per call
# (strace -c over a fixed number of calls). See README.md beside this file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

bin="$repo/build/bench/upstream_client/bench_upstream_client"
seconds=5
reps=3
conc=64
backends="native curl"
do_strace=0
keep_tmp=0

usage() {
    cat <<USAGE
usage: bench/upstream_client/run.sh [--bin PATH] [--seconds 5] [--reps 3] [--concurrency 64]
                                    [--backends "native curl"] [--strace] [--keep-tmp]
  --bin PATH     bench_upstream_client (default: build/bench/upstream_client/...; build it in
                 Release: cmake --build build --target bench_upstream_client)
  --strace       also count syscalls per call for each backend (strace -c, 20000 calls)
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --concurrency) conc=$2; shift 2 ;;
    --backends) backends=$2; shift 2 ;;
    --strace) do_strace=1; shift ;;
    --keep-tmp) keep_tmp=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "run.sh: $*" >&2; exit 1; }
[ -x "$bin" ] || die "$bin not found (cmake --build <dir> --target bench_upstream_client, or --bin)"
command -v nginx >/dev/null 2>&1 || die "nginx is not installed"
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer"
if grep -q '__asan_init' "$bin" 2>/dev/null; then
    echo "# warning: $bin is a sanitizer build; use a Release build for numbers" >&2
fi

if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    pin_client=(taskset -c 0)
    pin_server=(taskset -c 1)
else
    pin_client=()
    pin_server=()
    echo "# no pinning (needs taskset and 2 CPUs): numbers are noisier" >&2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/brigade-upc.XXXXXX")
nginx_pid=
cleanup() {
    if [ -n "$nginx_pid" ]; then
        kill "$nginx_pid" 2>/dev/null || true
        wait "$nginx_pid" 2>/dev/null || true
    fi
    [ "$keep_tmp" = 1 ] && echo "# temporary files kept in $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port below the ephemeral range (so no client socket can hold it).
eph_low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
port=
for _ in $(seq 1 200); do
    p=$((10000 + RANDOM % (eph_low - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        port=$p
        break
    fi
done
[ -n "$port" ] || die "no free port found"

body='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Start with the Louvre, the Eiffel Tower and Montmartre. Budget roughly 80 to 150 euros per person per day for food and tickets, depending on the season.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":212,"completion_tokens":48,"total_tokens":260}}'
cat >"$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/error.log warn;
$(if [ "$(id -u)" = 0 ]; then echo "user root;"; fi)
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path $tmp/body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        location / { default_type application/json; return 200 '$body'; }
    }
}
CONF
nginx -t -p "$tmp/" -e "$tmp/error.log" -c "$tmp/nginx.conf" >"$tmp/check.out" 2>&1 ||
    { cat "$tmp/check.out" >&2; die "nginx config rejected"; }
"${pin_server[@]}" nginx -p "$tmp/" -e "$tmp/error.log" -c "$tmp/nginx.conf" >"$tmp/nginx.out" 2>&1 &
nginx_pid=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done
url="http://127.0.0.1:$port/v1/chat/completions"

median() { sort -n | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]; else print 0}'; }

echo "# upstream client alone against nginx on 127.0.0.1:$port; concurrency $conc;" \
    "${seconds}s x $reps per backend; client on CPU 0, nginx on CPU 1"
printf '%-8s %14s %16s   %s\n' backend calls/s us_cpu/call runs
for be in $backends; do
    rates=()
    cpus=()
    for _ in $(seq 1 "$reps"); do
        out=$("${pin_client[@]}" "$bin" --url "$url" --backend "$be" --concurrency "$conc" \
            --seconds "$seconds" --warmup 1 | tail -n 1)
        rates+=("$(sed -n 's/.*median_calls_per_s=\([0-9]*\).*/\1/p' <<<"$out")")
        cpus+=("$(sed -n 's/.*cpu_us_per_call=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    printf '%-8s %14s %16s   %s\n' "$be" "$(printf '%s\n' "${rates[@]}" | median)" \
        "$(printf '%s\n' "${cpus[@]}" | median)" "${rates[*]}"
done

if [ "$do_strace" = 1 ]; then
    command -v strace >/dev/null 2>&1 || die "strace is not installed"
    calls=20000
    echo
    echo "# syscalls per call ($calls calls, start-up included; strace -c -f)"
    for be in $backends; do
        "${pin_client[@]}" strace -f -c -o "$tmp/strace-$be.txt" "$bin" --url "$url" \
            --backend "$be" --concurrency "$conc" --calls "$calls" >/dev/null
        awk -v be="$be" -v n="$calls" '
            $NF == "total" { total = $(NF - 2) }
            $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { per[$NF] = $4 }
            END {
                printf "%-8s total %.2f per call:", be, total / n
                for (s in per) if (per[s] / n >= 0.01) printf " %s=%.2f", s, per[s] / n
                printf "\n"
            }' "$tmp/strace-$be.txt"
    done
fi
