#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Measures the overhead brigade adds in front of an upstream, side by side with a plain nginx
# proxy hop, in one run: wrk -> upstream nginx directly; wrk -> nginx proxy_pass -> upstream;
# wrk -> brigade -> upstream. Plain and streamed (SSE) chat completions; req/s at 64
# connections, p50/p99 latency at 1 connection, brigade's RSS. See README.md beside this file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

brigade="$repo/build/src/brigade"
duration=10s
reps=3
warmup=2s
conns=64
soak=
keep_tmp=0
c1_same_cpu=0
route=
nolog=0

usage() {
    cat <<EOF
usage: bench/overhead/run.sh [--brigade PATH] [--duration 10s] [--reps 3] [--quick]
                             [--soak 10m] [--keep-tmp]
  --brigade PATH   brigade binary (default: build/src/brigade; build it in Release)
  --duration D     length of each measured wrk run (wrk syntax: 10s, 1m)
  --reps N         repetitions of the whole set; medians are reported (default 3)
  --quick          smoke test: 2s runs, 1s warm-up, 1 repetition
  --soak D         RSS flatness mode: brigade only, c=64 non-streamed for D, RSS every 5 s
  --c1-same-cpu    run the 1-connection latency runs with the gateway moved to wrk's CPU
                   (no cross-CPU wake-ups: isolates per-request processing cost)
  --keep-tmp       keep the temporary directory (configs, logs) after the run
  --no-log         run brigade without its request log (--log-db off), to see what the log
                   costs
  --route R        send brigade's requests to a route ("model": "auto-plain"/"auto-sse") over
                   two models of the same upstream instead of a model: R is "rules" (a rules
                   route) or a classifier model file (a classifier route, from brigade train)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --brigade) brigade=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --quick) duration=2s; warmup=1s; reps=1; shift ;;
    --soak) soak=$2; shift 2 ;;
    --keep-tmp) keep_tmp=1; shift ;;
    --c1-same-cpu) c1_same_cpu=1; shift ;;
    --route) route=$2; shift 2 ;;
    --no-log) nolog=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "run.sh: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }

for tool in nginx wrk curl awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (scripts/install-deps.sh)"
done
nginx_bin=$(command -v nginx)
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer"

# Seconds in a wrk-style duration (10, 10s, 2m, 1h).
seconds_of() {
    case "$1" in
    *h) echo $((${1%h} * 3600)) ;;
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
    esac
}
for d in "$duration" "$warmup" ${soak:+"$soak"}; do
    [[ "$(seconds_of "$d")" =~ ^[1-9][0-9]*$ ]] || die "bad duration '$d' (use 10s, 2m, ...)"
done

# CPU pinning: brigade and the proxy nginx on CPU 0; wrk and the upstream nginx on CPU 1.
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    pin_gw=(taskset -c 0)
    pin_load=(taskset -c 1)
    pinning="gateway (brigade, nginx hop) on CPU 0; wrk and upstream nginx on CPU 1"
else
    pin_gw=()
    pin_load=()
    pinning="none (needs taskset and 2 CPUs): numbers are noisier"
    c1_same_cpu=0
fi
if [ "$c1_same_cpu" = 1 ]; then
    pinning="$pinning; c=1 latency runs: gateway moved to CPU 1 too (--c1-same-cpu)"
fi

stamp=$(date +%Y%m%d-%H%M%S)
results="$here/results/$stamp"
mkdir -p "$results"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/brigade-bench.XXXXXX")
pids=()

cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if [ "$keep_tmp" = 1 ]; then
        note "temporary files kept in $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on now (checked with a connect through bash's /dev/tcp), taken below
# the kernel's ephemeral range so that no client socket's source port can hold it.
eph_low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "${eph_low:-0}" -gt 12000 ] 2>/dev/null || eph_low=32768
used_ports=" "
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((10000 + RANDOM % (eph_low - 10000)))
        case "$used_ports" in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            used_ports="$used_ports$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# Waits until URL answers 200 (GET), at most $2 seconds.
wait_http() {
    local url=$1 limit=$2 i
    for i in $(seq 1 $((limit * 20))); do
        if curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" 2>/dev/null | grep -q '^200$'; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

up_port=$(free_port)
hop_port=$(free_port)
br_port=$(free_port)

# ---------------------------------------------------------------- upstream bodies
# The fixed answers the upstream nginx returns: a chat.completion JSON and an SSE stream of
# chat.completion.chunk events (role, 10 content pieces, finish, usage, [DONE]). No '$' (nginx
# variables), no single quotes (the nginx string delimiter), no backslashes.
plain_body='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Start with the Louvre, the Eiffel Tower and Montmartre. Budget roughly 80 to 150 euros per person per day for food and tickets, depending on the season. A museum pass rarely pays off in three days unless you visit four or more museums.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":212,"completion_tokens":48,"total_tokens":260,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench"}'

sse_chunk() { # $1 = delta JSON, $2 = finish_reason JSON
    printf 'data: {"id":"chatcmpl-bench0002","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}],"usage":null}\n\n' "$1" "$2"
}
sse_body=$(
    sse_chunk '{"role":"assistant","content":"","refusal":null}' null
    for piece in "Start with" " the Louvre," " the Eiffel Tower" " and Montmartre." \
        " Budget roughly" " 80 to 150 euros" " per person per day" " for food and tickets." \
        " A museum pass" " rarely pays off."; do
        sse_chunk "{\"content\":\"$piece\"}" null
    done
    sse_chunk '{}' '"stop"'
    printf 'data: {"id":"chatcmpl-bench0002","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_bench","choices":[],"usage":{"prompt_tokens":212,"completion_tokens":24,"total_tokens":236,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}\n\n'
    printf 'data: [DONE]\n\n'
)
sse_body="$sse_body"$'\n\n' # $(...) strips the trailing blank line
printf '%s' "$plain_body" >"$tmp/plain.json"
printf '%s' "$sse_body" >"$tmp/sse.txt"
sse_nginx=${sse_body//$'\n'/\\n}

# ---------------------------------------------------------------- nginx configs

# Common main-context lines: everything (pid, logs, temp files) inside $tmp; never /etc/nginx.
nginx_main() { # $1 = name
    cat <<EOF
worker_processes 1;
daemon off;
pid $tmp/$1.pid;
error_log $tmp/$1-error.log warn;
$(if [ "$(id -u)" = 0 ]; then echo "user root;"; fi)
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # $1 = name
    cat <<EOF
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path $tmp/$1-body;
    proxy_temp_path $tmp/$1-proxy;
    fastcgi_temp_path $tmp/$1-fastcgi;
    uwsgi_temp_path $tmp/$1-uwsgi;
    scgi_temp_path $tmp/$1-scgi;
EOF
}

{
    nginx_main upstream
    echo "http {"
    nginx_http_common upstream
    cat <<EOF
    server {
        listen 127.0.0.1:$up_port;
        location = /health { default_type text/plain; return 200 'ok'; }
        # 'return' answers any method, POST included, and discards the request body.
        location = /plain/v1/chat/completions {
            default_type application/json;
            return 200 '$plain_body';
        }
        # sub_filter (matching nothing) drops Content-Length, so the stream goes out chunked
        # like a real provider's SSE response.
        location = /sse/v1/chat/completions {
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            sub_filter_types text/event-stream;
            sub_filter '<never-matches>' '';
            return 200 '$sse_nginx';
        }
    }
}
EOF
} >"$tmp/upstream.conf"

{
    nginx_main hop
    echo "http {"
    nginx_http_common hop
    cat <<EOF
    upstream bench_upstream {
        server 127.0.0.1:$up_port;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$hop_port;
        location = /health { default_type text/plain; return 200 'ok'; }
        location /sse/ {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$tmp/hop.conf"

cat >"$tmp/brigade.yaml" <<EOF
server:
  listen: 127.0.0.1:$br_port
  workers: 1
log:
  path: $tmp/bench.db
models:
  - name: bench-plain
    provider: openai
    base_url: http://127.0.0.1:$up_port/plain/v1
    price: {input: 0.15, output: 0.60}
  - name: bench-sse
    provider: openai
    base_url: http://127.0.0.1:$up_port/sse/v1
    price: {input: 0.15, output: 0.60}
EOF
if [ -n "$route" ]; then
    # A route per mode over a cheap and a strong model of the same upstream: the routing
    # decision is the only difference from the plain model runs.
    if [ "$route" = rules ]; then
        policy="policy: [rules, direct]
    rules:
      - {if: {keywords: [prove, derive, step by step]}, then: strong}
      - {if: {regex: '[0-9]+ *% '}, then: strong}
      - {if: {code: true}, then: strong}
      - {then: weak}"
    else
        [ -f "$route" ] || die "--route: no such model file: $route"
        policy="policy: classifier
    classifier: {model: $(cd "$(dirname "$route")" && pwd)/$(basename "$route"), threshold: 0.5}"
    fi
    cat >>"$tmp/brigade.yaml" <<EOF
  - name: bench-plain-cheap
    provider: openai
    base_url: http://127.0.0.1:$up_port/plain/v1
    price: {input: 0.01, output: 0.02}
  - name: bench-sse-cheap
    provider: openai
    base_url: http://127.0.0.1:$up_port/sse/v1
    price: {input: 0.01, output: 0.02}
routes:
  - name: auto-plain
    models: [bench-plain-cheap, bench-plain]
    $policy
  - name: auto-sse
    models: [bench-sse-cheap, bench-sse]
    $policy
EOF
fi

start_nginx() { # $1 = name, rest = pinning command
    local name=$1
    shift
    "$@" "$nginx_bin" -p "$tmp/" -e "$tmp/$name-error.log" -c "$tmp/$name.conf" \
        >"$tmp/$name.out" 2>&1 &
    pids+=($!)
}

"$nginx_bin" -t -p "$tmp/" -e "$tmp/check-error.log" -c "$tmp/upstream.conf" >"$tmp/check.out" 2>&1 ||
    { cat "$tmp/check.out" >&2; die "upstream nginx config rejected"; }
"$nginx_bin" -t -p "$tmp/" -e "$tmp/check-error.log" -c "$tmp/hop.conf" >"$tmp/check.out" 2>&1 ||
    { cat "$tmp/check.out" >&2; die "hop nginx config rejected"; }

start_nginx upstream "${pin_load[@]}"
wait_http "http://127.0.0.1:$up_port/health" 5 ||
    { cat "$tmp/upstream.out" "$tmp/upstream-error.log" >&2 2>/dev/null; die "upstream nginx did not start"; }

# ---------------------------------------------------------------- brigade

brigade_ok=0
brigade_pid=
brigade_why=
brigade_build=
if [ ! -x "$brigade" ]; then
    brigade_why="binary $brigade not found (build it: cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target brigade), or pass --brigade PATH"
else
    log_args=()
    [ "$nolog" = 1 ] && log_args=(--log-db off)
    "${pin_gw[@]}" "$brigade" serve -c "$tmp/brigade.yaml" "${log_args[@]}" >"$tmp/brigade.log" 2>&1 &
    brigade_pid=$!
    pids+=("$brigade_pid")
    if wait_http "http://127.0.0.1:$br_port/health" 5; then
        brigade_ok=1
    else
        brigade_why="brigade did not answer GET /health within 5 s (log: $results/brigade.log)"
        kill "$brigade_pid" 2>/dev/null || true
    fi
    if grep -q '__asan_init\|__ubsan_handle' "$brigade" 2>/dev/null; then
        brigade_build="sanitizer (Debug) build: its numbers are NOT representative, use a Release build"
    else
        brigade_build="non-sanitized build"
    fi
fi

# ---------------------------------------------------------------- sanity checks

declare -A url model
url[direct.plain]="http://127.0.0.1:$up_port/plain/v1/chat/completions"
url[direct.sse]="http://127.0.0.1:$up_port/sse/v1/chat/completions"
url[hop.plain]="http://127.0.0.1:$hop_port/plain/v1/chat/completions"
url[hop.sse]="http://127.0.0.1:$hop_port/sse/v1/chat/completions"
url[brigade.plain]="http://127.0.0.1:$br_port/v1/chat/completions"
url[brigade.sse]="http://127.0.0.1:$br_port/v1/chat/completions"
model[direct.plain]=gpt-4o-mini
model[direct.sse]=gpt-4o-mini
model[hop.plain]=gpt-4o-mini
model[hop.sse]=gpt-4o-mini
model[brigade.plain]=bench-plain
model[brigade.sse]=bench-sse
if [ -n "$route" ]; then
    model[brigade.plain]=auto-plain
    model[brigade.sse]=auto-sse
    note "brigade requests go to routes auto-plain / auto-sse ($route)"
fi

# The request body chat.lua sends, for the curl checks.
request_body() { # $1 = model, $2 = 1 for stream
    local s=''
    [ "$2" = 1 ] && s=',"stream":true,"stream_options":{"include_usage":true}'
    printf '{"model":"%s","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Three sights in Paris?"}],"temperature":0.7,"max_tokens":256%s}' "$1" "$s"
}

# Checks one path answers 200 with the right Content-Type and body. Prints why not.
check_path() { # $1 = path (direct|hop|brigade), $2 = mode (plain|sse)
    local key="$1.$2" stream=0 ctype
    [ "$2" = sse ] && stream=1
    ctype=$(curl -s -m 5 -o "$tmp/check.body" -w '%{http_code} %{content_type}' \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-bench-not-a-real-key' \
        -d "$(request_body "${model[$key]}" $stream)" "${url[$key]}") || true
    if [ "$2" = plain ]; then
        [[ "$ctype" == "200 application/json"* ]] || { echo "got '$ctype': $(head -c 300 "$tmp/check.body")"; return 1; }
        grep -q '"object": *"chat.completion"' "$tmp/check.body" ||
            { echo "body is not a chat.completion: $(head -c 300 "$tmp/check.body")"; return 1; }
        if [ "$1" != brigade ]; then
            cmp -s "$tmp/check.body" "$tmp/plain.json" || { echo "body differs from the fixed answer"; return 1; }
        fi
    else
        [[ "$ctype" == "200 text/event-stream"* ]] || { echo "got '$ctype': $(head -c 300 "$tmp/check.body")"; return 1; }
        grep -q '^data: \[DONE\]' "$tmp/check.body" || { echo "stream has no [DONE]"; return 1; }
        [ "$(grep -c '"chat.completion.chunk"' "$tmp/check.body")" -ge 12 ] ||
            { echo "stream has fewer than 12 chunks"; return 1; }
        if [ "$1" != brigade ]; then
            cmp -s "$tmp/check.body" "$tmp/sse.txt" || { echo "stream differs from the fixed answer"; return 1; }
        fi
    fi
    return 0
}

# ---------------------------------------------------------------- RSS sampler

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }
echo "start" >"$tmp/phase"
start_sampler() { # $1 = interval seconds, $2 = output file
    (
        t0=$(date +%s)
        printf 'elapsed_s\trss_kb\tphase\n'
        while kill -0 "$brigade_pid" 2>/dev/null; do
            printf '%s\t%s\t%s\n' $(($(date +%s) - t0)) "$(rss_kb "$brigade_pid")" "$(cat "$tmp/phase")"
            sleep "$1"
        done
    ) >"$2" &
    pids+=($!)
    sampler_pid=$!
}

# ---------------------------------------------------------------- wrk and parsing

# After a brigade run: 0 if brigade is still alive; else records why it died (once) and
# returns 1, so that the run is discarded and the remaining brigade runs are skipped.
brigade_died=
brigade_alive() { # $1 = what was running
    local st
    [ -z "$brigade_died" ] || return 1
    kill -0 "$brigade_pid" 2>/dev/null && return 0
    st=0
    wait "$brigade_pid" 2>/dev/null || st=$?
    brigade_died="brigade exited during $1 with status $st"
    if [ "$st" -gt 128 ]; then
        brigade_died="$brigade_died (signal $((st - 128)): $(kill -l $((st - 128)) 2>/dev/null || echo '?'))"
    fi
    note "$brigade_died"
    return 1
}

# Moves a gateway (all threads of the process and of its child processes) to CPU $2.
move_gateway() { # $1 = path (hop|brigade), $2 = cpu
    local pid p
    case "$1" in hop) pid=$hop_pid ;; brigade) pid=$brigade_pid ;; *) return 0 ;; esac
    for p in "$pid" $(pgrep -P "$pid" 2>/dev/null || true); do
        taskset -a -p -c "$2" "$p" >/dev/null 2>&1 || true
    done
}

# Microseconds from a wrk duration like 52.00us, 1.21ms, 2.00s.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /m$/) print n * 60000000; else if (v ~ /s$/) print n * 1000000; else print n }'
}

run_wrk() { # $1 = key, $2 = connections, $3 = duration, $4 = output file
    local stream=0
    [[ "$1" == *.sse ]] && stream=1
    BENCH_MODEL=${model[$1]} BENCH_STREAM=$stream "${pin_load[@]}" \
        wrk -t1 -c"$2" -d"$3" --timeout 5s --latency -s "$here/chat.lua" "${url[$1]}" >"$4" 2>&1 || true
}

# Appends "rep mode path metric value" rows for one wrk output to raw.tsv.
record() { # $1 = rep, $2 = mode, $3 = path, $4 = c64|c1, $5 = wrk output file
    local f=$5 rps p50 p99 errs
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    errs=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$f")
    if [ "$4" = c64 ]; then
        printf '%s\t%s\t%s\trps\t%s\n' "$1" "$2" "$3" "${rps:-0}" >>"$results/raw.tsv"
    else
        p50=$(awk '$1 == "50%" {print $2}' "$f")
        p99=$(awk '$1 == "99%" {print $2}' "$f")
        printf '%s\t%s\t%s\tp50_us\t%s\n' "$1" "$2" "$3" "$(to_us "${p50:-0}")" >>"$results/raw.tsv"
        printf '%s\t%s\t%s\tp99_us\t%s\n' "$1" "$2" "$3" "$(to_us "${p99:-0}")" >>"$results/raw.tsv"
    fi
    printf '%s\t%s\t%s\terrors_%s\t%s\n' "$1" "$2" "$3" "$4" "$errs" >>"$results/raw.tsv"
}

# Median of one metric over the repetitions ("" if never measured).
median() { # $1 = mode, $2 = path, $3 = metric
    awk -F'\t' -v m="$1" -v p="$2" -v k="$3" '$2 == m && $3 == p && $4 == k {print $5}' \
        "$results/raw.tsv" | sort -g | awk '{v[NR] = $1} END {
            if (NR == 0) exit
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
total() { # $1 = mode, $2 = path: errors over all runs
    awk -F'\t' -v m="$1" -v p="$2" '$2 == m && $3 == p && $4 ~ /^errors_/ {n += $5} END {print n + 0}' \
        "$results/raw.tsv"
}

env_info() {
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "nginx: $("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')"
    echo "wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $2}')"
    echo "brigade: $brigade ($([ -n "$brigade_build" ] && echo "$brigade_build" || echo "absent"))"
    echo "pinning: $pinning"
    if [ -n "$soak" ]; then
        echo "soak: $soak, wrk -t1 -c$conns, non-streamed, brigade RSS every 5 s"
    else
        echo "duration: $duration per run, warm-up $warmup, $reps repetition(s), wrk -t1 -c$conns (req/s) and -c1 (latency)"
    fi
}

copy_artifacts() {
    cp "$tmp/upstream.conf" "$tmp/hop.conf" "$tmp/brigade.yaml" "$results/" 2>/dev/null || true
    [ -f "$tmp/brigade.log" ] && cp "$tmp/brigade.log" "$results/" || true
}

kib_to_mib() { awk -v k="$1" 'BEGIN { if (k == "") print "-"; else printf "%.1f", k / 1024 }'; }

# ---------------------------------------------------------------- soak mode

if [ -n "$soak" ]; then
    copy_artifacts
    [ "$brigade_ok" = 1 ] || die "soak needs brigade: $brigade_why"
    why=$(check_path brigade plain) || die "brigade plain path fails: $why"
    note "soak: brigade only, wrk -t1 -c$conns for $soak, non-streamed, RSS every 5 s"
    # warm up first, so that the first sample is a warmed-up gateway, not an idle one
    run_wrk brigade.plain "$conns" "$warmup" "$results/wrk-soak-warmup.txt"
    start_sampler 5 "$results/rss_soak.tsv"
    echo "soak" >"$tmp/phase"
    run_wrk brigade.plain "$conns" "$soak" "$results/wrk-soak.txt"
    kill "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
    hwm=$(hwm_kb "$brigade_pid")
    rows=$(awk -F'\t' 'NR > 1 && $2 != "" {print $2}' "$results/rss_soak.tsv")
    first=$(echo "$rows" | head -n 1)
    last=$(echo "$rows" | tail -n 1)
    max=$(echo "$rows" | sort -n | tail -n 1)
    {
        echo "## brigade RSS soak ($soak, c=$conns, non-streamed)"
        echo
        env_info | sed 's/^/    /'
        echo
        echo "| req/s | errors | RSS first | RSS last | RSS max | growth | VmHWM | samples |"
        echo "|---|---|---|---|---|---|---|---|"
        printf '| %s | %s | %s MiB | %s MiB | %s MiB | %s MiB | %s MiB | %s |\n' \
            "$(awk '/^Requests\/sec:/ {print $2}' "$results/wrk-soak.txt")" \
            "$(awk '/Non-2xx or 3xx responses:/ {n += $NF} END {print n + 0}' "$results/wrk-soak.txt")" \
            "$(kib_to_mib "$first")" "$(kib_to_mib "$last")" "$(kib_to_mib "$max")" \
            "$(kib_to_mib $((last - first)))" "$(kib_to_mib "$hwm")" "$(echo "$rows" | wc -l)"
        echo
        echo "Samples: $results/rss_soak.tsv"
    } | tee "$results/summary.md"
    exit 0
fi

# ---------------------------------------------------------------- the comparison

start_nginx hop "${pin_gw[@]}"
hop_pid=${pids[-1]}
wait_http "http://127.0.0.1:$hop_port/health" 5 ||
    { cat "$tmp/hop.out" "$tmp/hop-error.log" >&2 2>/dev/null; die "hop nginx did not start"; }

paths=(direct hop)
for mode in plain sse; do
    for p in direct hop; do
        why=$(check_path "$p" "$mode") || die "$p $mode path check failed: $why"
    done
done
if [ "$brigade_ok" = 1 ]; then
    for mode in plain sse; do
        if ! why=$(check_path brigade "$mode"); then
            brigade_ok=0
            brigade_why="brigade answered /health but its $mode chat path failed: $why"
            break
        fi
    done
fi
if [ "$brigade_ok" = 1 ]; then
    paths+=(brigade)
    start_sampler 1 "$results/rss.tsv"
else
    note "SKIPPING brigade rows: $brigade_why"
fi
copy_artifacts

printf 'rep\tmode\tpath\tmetric\tvalue\n' >"$results/raw.tsv"
runs=$((reps * 2 * ${#paths[@]}))
n=0
for rep in $(seq 1 "$reps"); do
    for mode in plain sse; do
        for p in "${paths[@]}"; do
            n=$((n + 1))
            key="$p.$mode"
            if [ "$p" = brigade ] && ! brigade_alive "(before) $key rep $rep"; then
                continue
            fi
            note "[$n/$runs] rep $rep: $p $mode"
            echo "$key rep$rep" >"$tmp/phase"
            run_wrk "$key" "$conns" "$warmup" "$results/wrk-$rep-$mode-$p-warmup.txt"
            if [ "$p" = brigade ] && ! brigade_alive "the $key warm-up (c=$conns), rep $rep"; then
                continue
            fi
            run_wrk "$key" "$conns" "$duration" "$results/wrk-$rep-$mode-$p-c$conns.txt"
            if [ "$p" = brigade ] && ! brigade_alive "the $key c=$conns run, rep $rep"; then
                continue
            fi
            record "$rep" "$mode" "$p" c64 "$results/wrk-$rep-$mode-$p-c$conns.txt"
            if [ "$c1_same_cpu" = 1 ]; then move_gateway "$p" 1; fi
            run_wrk "$key" 1 "$duration" "$results/wrk-$rep-$mode-$p-c1.txt"
            if [ "$c1_same_cpu" = 1 ]; then move_gateway "$p" 0; fi
            if [ "$p" = brigade ] && ! brigade_alive "the $key c=1 run, rep $rep"; then
                continue
            fi
            record "$rep" "$mode" "$p" c1 "$results/wrk-$rep-$mode-$p-c1.txt"
        done
    done
done

hwm=
if [ "$brigade_ok" = 1 ]; then
    kill "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
    hwm=$(hwm_kb "$brigade_pid")
    brigade_alive "the end of the run" || true
    cp "$tmp/brigade.log" "$results/" 2>/dev/null || true
fi

fmt() { awk -v v="$1" -v d="${2:-0}" 'BEGIN { if (v == "") print "-"; else printf "%.*f", d, v }'; }
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%+.0f", a - b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "") print a - b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }

{
    echo "## brigade overhead benchmark"
    echo
    env_info | sed 's/^/    /'
    echo
    echo "Medians over $reps repetition(s). req/s at $conns connections; latency at 1 connection;"
    echo "added = path minus direct (µs). errors = non-2xx responses + socket errors, all runs."
    echo
    echo "| mode | path | req/s (c=$conns) | p50 µs (c=1) | p99 µs (c=1) | added p50 | added p99 | errors |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for mode in plain sse; do
        d50=$(median "$mode" direct p50_us)
        d99=$(median "$mode" direct p99_us)
        for p in direct hop brigade; do
            label=$p
            [ "$p" = direct ] && label="direct (upstream nginx)"
            [ "$p" = hop ] && label="nginx proxy hop"
            if [ "$p" = brigade ] && [ "$brigade_ok" != 1 ]; then
                echo "| $mode | brigade | skipped | | | | | |"
                continue
            fi
            r=$(median "$mode" "$p" rps)
            if [ "$p" = brigade ] && [ -z "$r" ]; then
                echo "| $mode | brigade | not measured (died) | | | | | |"
                continue
            fi
            p50=$(median "$mode" "$p" p50_us)
            p99=$(median "$mode" "$p" p99_us)
            a50=-
            a99=-
            if [ "$p" != direct ]; then
                a50=$(diff_us "$p50" "$d50")
                a99=$(diff_us "$p99" "$d99")
            fi
            echo "| $mode | $label | $(fmt "$r") | $(fmt "$p50" 1) | $(fmt "$p99" 1) | $a50 | $a99 | $(total "$mode" "$p") |"
        done
    done
    echo
    if [ "$brigade_ok" = 1 ]; then
        echo "brigade / nginx hop:"
        echo
        echo "| mode | req/s ratio | added p50 ratio | added p99 ratio |"
        echo "|---|---:|---:|---:|"
        for mode in plain sse; do
            d50=$(median "$mode" direct p50_us)
            d99=$(median "$mode" direct p99_us)
            h50=$(minus "$(median "$mode" hop p50_us)" "$d50")
            h99=$(minus "$(median "$mode" hop p99_us)" "$d99")
            b50=$(minus "$(median "$mode" brigade p50_us)" "$d50")
            b99=$(minus "$(median "$mode" brigade p99_us)" "$d99")
            echo "| $mode | $(ratio "$(median "$mode" brigade rps)" "$(median "$mode" hop rps)") | $(ratio "$b50" "$h50") | $(ratio "$b99" "$h99") |"
        done
        echo
        rows=$(awk -F'\t' 'NR > 1 && $2 != "" {print $2}' "$results/rss.tsv")
        if [ -n "$brigade_died" ]; then
            echo "**$brigade_died**; its runs from then on are missing (log: $results/brigade.log)."
            echo
        fi
        echo "brigade RSS (sampled every 1 s, $(echo "$rows" | wc -l) samples): first $(kib_to_mib "$(echo "$rows" | head -n 1)") MiB," \
            "last $(kib_to_mib "$(echo "$rows" | tail -n 1)") MiB, max $(kib_to_mib "$(echo "$rows" | sort -n | tail -n 1)") MiB;" \
            "peak (VmHWM) $(kib_to_mib "$hwm") MiB."
    else
        echo "brigade rows skipped: $brigade_why"
    fi
    echo
    echo "Raw results: $results"
} | tee "$results/summary.md"
