#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Benchmarks the resilience targets of issue 5 against a fast local upstream (Debian's nginx
# answering from memory):
#   1. fallback: model `dead` (a refused port on 127.0.0.1, `fallbacks: [healthy]`) against
#      model `healthy` directly, at one connection: what the refused attempt and the fallback
#      add to a request, with 0 retries, with the default 2 retries, and with the default
#      breaker (which ejects the dead deployment after 5 failures);
#   2. pool: a model with two deployments, one answering 500 to everything, against a pool of
#      two healthy ones: success rate and latency at 1 and 16 connections over runs long
#      enough (default 40 s) to see the breaker eject the failing deployment and probe it.
# See README.md beside this file. Not run by CI.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

brigade="$repo/build/src/brigade"
duration=10s
pool_duration=40s
reps=3
warmup=1s
pool_conns=16
keep_tmp=0
parts="fallback,pool"

usage() {
    cat <<EOF
usage: bench/resil/run.sh [--brigade PATH] [--duration 10s] [--pool-duration 40s] [--reps 3]
                          [--only fallback|pool] [--quick] [--keep-tmp]
  --brigade PATH        brigade binary (default: build/src/brigade; build it in Release)
  --duration D          length of each fallback run at c=1 (10s, 1m)
  --pool-duration D     length of each pool run (c=1 and c=$pool_conns); at least 31s to see
                        the breaker's first probe (30 s after the ejection)
  --reps N              repetitions; every configuration runs once per repetition,
                        interleaved, and the tables report medians (default 3)
  --only PART           run only the fallback or the pool part
  --quick               smoke test: 2s fallback runs, 5s pool runs, 1 repetition
  --keep-tmp            keep the temporary directory (configs, logs) after the run
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --brigade) brigade=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --pool-duration) pool_duration=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --only) parts=$2; shift 2 ;;
    --quick) duration=2s; pool_duration=5s; reps=1; shift ;;
    --keep-tmp) keep_tmp=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "run.sh: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }

for tool in nginx cc curl awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (scripts/install-deps.sh)"
done
nginx_bin=$(command -v nginx)
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer"
[ -x "$brigade" ] || die "no brigade binary at $brigade (cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target brigade, or --brigade PATH)"
case ",$parts," in *,fallback,* | *,pool,*) ;; *) die "--only wants fallback or pool" ;; esac
do_part() { case ",$parts," in *,"$1",*) return 0 ;; *) return 1 ;; esac; }

seconds_of() {
    case "$1" in
    *h) echo $((${1%h} * 3600)) ;;
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
    esac
}
for d in "$duration" "$pool_duration" "$warmup"; do
    [[ "$(seconds_of "$d")" =~ ^[1-9][0-9]*$ ]] || die "bad duration '$d' (use 10s, 2m, ...)"
done

# brigade on CPU 0; the client and the upstream nginx on CPU 1 (as bench/overhead does).
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    pin_gw=(taskset -c 0)
    pin_load=(taskset -c 1)
    pinning="brigade on CPU 0; client (resil_client) and upstream nginx on CPU 1"
else
    pin_gw=()
    pin_load=()
    pinning="none (needs taskset and 2 CPUs): numbers are noisier"
fi
if grep -q '__asan_init\|__ubsan_handle' "$brigade" 2>/dev/null; then
    brigade_build="sanitizer (Debug) build: its numbers are NOT representative, use a Release build"
else
    brigade_build="non-sanitized build"
fi

stamp=$(date -u +%Y%m%d-%H%M%S)
results="$here/results/$stamp"
mkdir -p "$results"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/brigade-resil.XXXXXX")
pids=()
br_pid=

stop_brigade() {
    if [ -n "$br_pid" ]; then
        kill "$br_pid" 2>/dev/null || true
        wait "$br_pid" 2>/dev/null || true
        br_pid=
    fi
}
cleanup() {
    local p
    stop_brigade
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

# A port nothing listens on now, below the ephemeral range (see bench/overhead/run.sh).
eph_low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "${eph_low:-0}" -gt 12000 ] 2>/dev/null || eph_low=32768
used_ports=" "
free_port() {
    local p
    for _ in $(seq 1 200); do
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
wait_http() {
    local url=$1 limit=$2 _
    for _ in $(seq 1 $((limit * 20))); do
        if curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" 2>/dev/null | grep -q '^200$'; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

up_port=$(free_port)
dead_port=$(free_port) # never listened on: every connect is refused
br_port=$(free_port)

# ---------------------------------------------------------------- upstream nginx

# The same fixed chat.completion as bench/overhead, and an OpenAI-shaped 500.
ok_body='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Start with the Louvre, the Eiffel Tower and Montmartre. Budget roughly 80 to 150 euros per person per day for food and tickets, depending on the season. A museum pass rarely pays off in three days unless you visit four or more museums.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":212,"completion_tokens":48,"total_tokens":260,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench"}'
err_body='{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}'

cat >"$tmp/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/upstream.pid;
error_log $tmp/upstream-error.log warn;
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
        listen 127.0.0.1:$up_port;
        location = /health { default_type text/plain; return 200 'ok'; }
        location = /ok/v1/chat/completions {
            default_type application/json;
            return 200 '$ok_body';
        }
        location = /fail/v1/chat/completions {
            default_type application/json;
            return 500 '$err_body';
        }
    }
}
EOF
"$nginx_bin" -t -p "$tmp/" -e "$tmp/check-error.log" -c "$tmp/upstream.conf" >"$tmp/check.out" 2>&1 ||
    { cat "$tmp/check.out" >&2; die "upstream nginx config rejected"; }
"${pin_load[@]}" "$nginx_bin" -p "$tmp/" -e "$tmp/upstream-error.log" -c "$tmp/upstream.conf" \
    >"$tmp/upstream.out" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$up_port/health" 5 ||
    { cat "$tmp/upstream.out" "$tmp/upstream-error.log" >&2 2>/dev/null; die "upstream nginx did not start"; }
if (exec 3<>"/dev/tcp/127.0.0.1/$dead_port") 2>/dev/null; then
    die "port $dead_port is unexpectedly open"
fi

# ---------------------------------------------------------------- brigade config

ok_url="http://127.0.0.1:$up_port/ok/v1"
fail_url="http://127.0.0.1:$up_port/fail/v1"
dead_url="http://127.0.0.1:$dead_port/v1"
cat >"$tmp/brigade.yaml" <<EOF
server:
  listen: 127.0.0.1:$br_port
  workers: 1
log:
  path: $tmp/resil.db
models:
  - name: healthy
    provider: openai
    base_url: $ok_url
    price: {input: 0.15, output: 0.60}
  # a refused connection, then the fallback; no retry, no breaker: every request pays both
  - name: dead-r0
    provider: openai
    base_url: $dead_url
    price: {input: 0.15, output: 0.60}
    fallbacks: [healthy]
    retry: {attempts: 0}
    breaker: off
  # the default retries (2, full jitter from 200 ms), no breaker: every request pays them
  - name: dead-r2
    provider: openai
    base_url: $dead_url
    price: {input: 0.15, output: 0.60}
    fallbacks: [healthy]
    breaker: off
  # all defaults (2 retries, breaker 5 failures / 30 s x n): the dead deployment is ejected
  # after 5 failing requests and later requests go straight to the fallback
  - name: dead-default
    provider: openai
    base_url: $dead_url
    price: {input: 0.15, output: 0.60}
    fallbacks: [healthy]
  - name: pool-healthy
    provider: openai
    price: {input: 0.15, output: 0.60}
    deployments:
      - {name: a, base_url: $ok_url}
      - {name: b, base_url: $ok_url}
    retry: {attempts: 1}
  - name: pool-half
    provider: openai
    price: {input: 0.15, output: 0.60}
    deployments:
      - {name: ok, base_url: $ok_url}
      - {name: failing, base_url: $fail_url}
    retry: {attempts: 1}
EOF

# The same with a larger global retry budget (default: ratio 0.2, min 3 retries in flight), for
# one extra pool run at c=$pool_conns that shows what the default budget costs there.
cp "$tmp/brigade.yaml" "$tmp/brigade-budget.yaml"
cat >>"$tmp/brigade-budget.yaml" <<EOF
resilience:
  retry_budget: {ratio: 0.2, min: $pool_conns}
EOF

# Every start gets an empty request log (SQLite), so that no run inherits the rows, the WAL or
# the checkpoints of the runs before it.
n_starts=0
start_brigade() { # $1 = log file, $2 = config (default brigade.yaml)
    n_starts=$((n_starts + 1))
    rm -f "$tmp/resil-$((n_starts - 1)).db" "$tmp/resil-$((n_starts - 1)).db-wal" "$tmp/resil-$((n_starts - 1)).db-shm"
    "${pin_gw[@]}" "$brigade" serve -c "$tmp/${2:-brigade.yaml}" --log-db "$tmp/resil-$n_starts.db" >"$1" 2>&1 &
    br_pid=$!
    wait_http "http://127.0.0.1:$br_port/health" 5 || { cat "$1" >&2; die "brigade did not answer GET /health within 5 s"; }
}
brigade_alive() { # $1 = what was running
    kill -0 "$br_pid" 2>/dev/null && return 0
    local st=0
    wait "$br_pid" 2>/dev/null || st=$?
    br_pid=
    die "brigade exited during $1 with status $st (log in $results)"
}

# ---------------------------------------------------------------- checks

request_body() { # $1 = model
    printf '{"model":"%s","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Three sights in Paris?"}],"temperature":0.7,"max_tokens":256}' "$1"
}
# One request: "status x-brigade-model x-brigade-attempts".
probe() { # $1 = model
    curl -s -m 10 -D "$tmp/probe.h" -o "$tmp/probe.body" -w '%{http_code}' \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-bench-not-a-real-key' \
        -d "$(request_body "$1")" "http://127.0.0.1:$br_port/v1/chat/completions" >"$tmp/probe.code" || true
    printf '%s model=%s attempts=%s' "$(cat "$tmp/probe.code")" \
        "$(awk -F': ' 'tolower($1) == "x-brigade-model" {gsub("\r", "", $2); print $2}' "$tmp/probe.h")" \
        "$(awk -F': ' 'tolower($1) == "x-brigade-attempts" {gsub("\r", "", $2); print $2}' "$tmp/probe.h")"
}

# ---------------------------------------------------------------- client and parsing

# The request of bench/overhead/chat.lua (a ~1 KB chat completion: system + user message,
# temperature, max_tokens, user), non-streamed, for model $1.
chat_body() { # $1 = model
    local system user
    system="You are a concise assistant for a travel company. Answer the customer's question in at most three sentences, in plain English, without markdown. If the question is about prices, give a range rather than a single figure, and say that prices change with the season. Never invent opening hours; if you do not know them, say so and suggest checking the official website."
    user="Hello! My partner and I are planning a long weekend in Paris at the end of April and we would like to see the main sights without spending the whole time in queues. We land on Friday morning and fly back on Monday evening. Which three places would you visit first, roughly how much should we budget per day for food and museum tickets, and is it worth buying a museum pass for such a short stay? We also wonder whether the metro is easy to use with two medium suitcases."
    printf '{"model":"%s","messages":[{"role":"system","content":"%s"},{"role":"user","content":"%s"}],"temperature":0.7,"max_tokens":256,"user":"bench-user-0001"}' \
        "$1" "$system" "$user"
}

cc -O2 -o "$tmp/resil_client" "$here/resil_client.c" || die "cannot compile resil_client.c"
run_client() { # $1 = model, $2 = connections, $3 = duration, $4 = output file
    [ -f "$tmp/body-$1.json" ] || chat_body "$1" >"$tmp/body-$1.json"
    "${pin_load[@]}" "$tmp/resil_client" 127.0.0.1 "$br_port" /v1/chat/completions \
        "$tmp/body-$1.json" "$2" "$(seconds_of "$3")" >"$4" 2>&1 || true
}

printf 'part\trep\tconfig\tconns\tmetric\tvalue\n' >"$results/raw.tsv"
record() { # $1 = part, $2 = rep, $3 = config, $4 = conns, $5 = client output
    awk -v part="$1" -v rep="$2" -v cfg="$3" -v c="$4" '$1 == "RESIL" {
        printf "%s\t%s\t%s\t%s\t%s\t%s\n", part, rep, cfg, c, $2, $3 }' "$5" >>"$results/raw.tsv"
    grep -q '^RESIL requests' "$5" || note "no figures in $5: $(head -c 300 "$5")"
}
median() { # $1 = part, $2 = config, $3 = conns, $4 = metric
    awk -F'\t' -v p="$1" -v k="$2" -v c="$3" -v m="$4" \
        '$1 == p && $3 == k && $4 == c && $5 == m {print $6}' "$results/raw.tsv" |
        sort -g | awk '{v[NR] = $1} END {
            if (NR == 0) exit
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
sum() { # $1 = part, $2 = config, $3 = conns, $4 = metric
    awk -F'\t' -v p="$1" -v k="$2" -v c="$3" -v m="$4" \
        '$1 == p && $3 == k && $4 == c && $5 == m {n += $6} END {print n + 0}' "$results/raw.tsv"
}
# "attempts: count" over all repetitions, e.g. "1: 9990, 2: 10".
attempts() { # $1 = part, $2 = config, $3 = conns
    awk -F'\t' -v p="$1" -v k="$2" -v c="$3" '$1 == p && $3 == k && $4 == c && $5 ~ /^attempts_/ {
        n[substr($5, 10)] += $6 } END { s = ""; for (a = 0; a <= 16; a++) if (a "" in n) s = s (s == "" ? "" : ", ") a ": " n[a ""]; print (s == "" ? "-" : s) }' \
        "$results/raw.tsv"
}
us() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else if (v >= 100000) printf "%.0f ms", v / 1000; else if (v >= 10000) printf "%.1f ms", v / 1000; else printf "%.0f µs", v }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Offsets in seconds from $2 (seconds of the UTC day, with ms) of the log's retry lines for a
# model; the log's timestamps are UTC with milliseconds.
retry_offsets() { # $1 = log, $2 = start, $3 = model
    awk -v t0="$2" -v m="model=$3 " 'index($0, "event=retry " m) {
        split(substr($1, 12, 12), a, ":"); t = a[1] * 3600 + a[2] * 60 + a[3]
        printf "%s%.1f", (n++ ? " " : ""), t - t0 } END { if (!n) printf "none" }' "$1"
}
now_sod() { date -u +%H:%M:%S.%N | awk -F: '{printf "%.3f", $1 * 3600 + $2 * 60 + $3}'; }

load_start=$(loadavg)
fb_configs=(healthy dead-r0 dead-r2 dead-default)
pool_configs=(pool-healthy pool-half)

# ---------------------------------------------------------------- checks

start_brigade "$results/brigade-check.log"
checks=""
for m in "${fb_configs[@]}" "${pool_configs[@]}"; do
    checks="$checks    $m: $(probe "$m")"$'\n'
done
stop_brigade
note "checks (fresh brigade, first request per model):"
printf '%s' "$checks" >&2
# dead-r0 must answer 200 from `healthy` in 2 attempts, or the fallback figures mean nothing.
case "$checks" in
*"dead-r0: 200 model=healthy attempts=2"*) ;;
*) die "dead-r0 does not fall back to healthy in 2 attempts: see the checks above" ;;
esac

# ---------------------------------------------------------------- part 1: fallback

if do_part fallback; then
    start_brigade "$results/brigade-fallback.log"
    for rep in $(seq 1 "$reps"); do
        for m in "${fb_configs[@]}"; do
            note "fallback rep $rep/$reps: $m, c=1, $duration (load $(loadavg))"
            run_client "$m" 1 "$warmup" "$results/fb-$rep-$m-warmup.txt"
            run_client "$m" 1 "$duration" "$results/fb-$rep-$m.txt"
            brigade_alive "the $m run, rep $rep"
            record fallback "$rep" "$m" 1 "$results/fb-$rep-$m.txt"
        done
    done
    fb_after=""
    for m in "${fb_configs[@]}"; do
        fb_after="$fb_after    $m: $(probe "$m")"$'\n'
    done
    stop_brigade
fi

# ---------------------------------------------------------------- part 2: pool

# A fresh brigade per run, so that every run starts with closed breakers and shows the whole
# cycle: the first failures, the ejection, the probe 30 s after it. The warm-up goes to
# `healthy` (same upstream, another model) so that it does not touch the pool's breakers.
# Runs: "label model config conns".
pool_runs=()
for c in 1 "$pool_conns"; do
    pool_runs+=("pool-healthy pool-healthy brigade.yaml $c" "pool-half pool-half brigade.yaml $c")
done
pool_runs+=("pool-half/budget$pool_conns pool-half brigade-budget.yaml $pool_conns")
printf 'rep\tconfig\tconns\tretries\tretry_offsets_s\n' >"$results/pool-retries.tsv"
if do_part pool; then
    for rep in $(seq 1 "$reps"); do
        for r in "${pool_runs[@]}"; do
            read -r label m conf c <<<"$r"
            f=${label//\//-}
            note "pool rep $rep/$reps: $label, c=$c, $pool_duration (load $(loadavg))"
            log="$results/brigade-pool-$rep-$f-c$c.log"
            start_brigade "$log" "$conf"
            run_client healthy "$c" 2s "$results/pool-$rep-$f-c$c-warmup.txt"
            t0=$(now_sod)
            run_client "$m" "$c" "$pool_duration" "$results/pool-$rep-$f-c$c.txt"
            brigade_alive "the $label c=$c run, rep $rep"
            stop_brigade
            record pool "$rep" "$label" "$c" "$results/pool-$rep-$f-c$c.txt"
            printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$label" "$c" \
                "$(grep -c "event=retry model=$m " "$log" || true)" \
                "$(retry_offsets "$log" "$t0" "$m")" >>"$results/pool-retries.tsv"
        done
    done
fi
load_end=$(loadavg)

# ---------------------------------------------------------------- summary

{
    echo "## brigade resilience benchmark"
    echo
    echo "    date: $(date -u -Is)"
    echo "    host: $(uname -srm), $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "    load average (1/5/15 min): $load_start at the start, $load_end at the end"
    echo "    nginx: $("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //'); client: bench/resil/resil_client.c ($(cc --version | head -n 1))"
    echo "    brigade: $brigade ($brigade_build), workers: 1, request log on, log level info"
    echo "    pinning: $pinning"
    echo "    runs: $reps repetition(s), interleaved; fallback $duration at c=1 (after a $warmup warm-up);"
    echo "          pool $pool_duration at c=1 and c=$pool_conns, fresh brigade per run (2s warm-up on healthy)"
    echo
    echo "First request of each model on a fresh brigade (status, x-brigade-model, x-brigade-attempts):"
    echo
    printf '%s' "$checks"
    if do_part fallback; then
        echo
        echo "### 1. Fallback from a refused connection (c=1)"
        echo
        echo "Medians over the repetitions; requests and non-2xx summed over them. Δp50 = p50 − p50(healthy)."
        echo
        echo "| model | what a request does | requests | non-2xx | attempts | p50 | p90 | p99 | p99.9 | max | wrk-style p99 | Δp50 |"
        echo "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        h50=$(median fallback healthy 1 p50)
        for m in "${fb_configs[@]}"; do
            case "$m" in
            healthy) what="direct to the upstream" ;;
            dead-r0) what="refused connect, fallback to healthy (0 retries, no breaker)" ;;
            dead-r2) what="refused connect + 2 retries with backoff, then fallback (no breaker)" ;;
            dead-default) what="defaults: breaker ejects dead after 5 failures; then straight to healthy" ;;
            esac
            p50=$(median fallback "$m" 1 p50)
            d=$(awk -v a="$p50" -v b="$h50" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%+.0f µs", a - b }')
            [ "$m" = healthy ] && d="-"
            echo "| \`$m\` | $what | $(sum fallback "$m" 1 requests) | $(sum fallback "$m" 1 non2xx) | $(attempts fallback "$m" 1) |" \
                "$(us "$p50") | $(us "$(median fallback "$m" 1 p90)") | $(us "$(median fallback "$m" 1 p99)") |" \
                "$(us "$(median fallback "$m" 1 p99.9)") | $(us "$(median fallback "$m" 1 max)") | $(us "$(median fallback "$m" 1 co_p99)") | $d |"
        done
        echo
        echo "Per repetition, p50 (µs):"
        echo
        for m in "${fb_configs[@]}"; do
            echo "    $m: $(awk -F'\t' -v k="$m" '$1 == "fallback" && $3 == k && $5 == "p50" {printf "%s ", $6}' "$results/raw.tsv")"
        done
        echo
        echo "After the runs (same brigade):"
        echo
        printf '%s' "$fb_after"
    fi
    if do_part pool; then
        echo
        echo "### 2. One of two deployments answering 500 to everything"
        echo
        echo "Medians over the repetitions; requests and non-2xx summed. success = 1 − (non-2xx + socket errors) / requests."
        echo "p99 ratio = p99(pool-half) / p99(pool-healthy) at the same concurrency."
        echo
        echo "| pool | c | requests | non-2xx | success | attempts | p50 | p90 | p99 | p99.9 | max | wrk-style p99 | p99 ratio |"
        echo "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        for r in "${pool_runs[@]}"; do
            read -r m _ _ c <<<"$r"
            hp99=$(median pool pool-healthy "$c" p99)
            {
                n=$(sum pool "$m" "$c" requests)
                bad=$(($(sum pool "$m" "$c" non2xx) + $(sum pool "$m" "$c" sockerr)))
                p99=$(median pool "$m" "$c" p99)
                r=$(awk -v a="$p99" -v b="$hp99" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }')
                [ "$m" = pool-healthy ] && r="-"
                echo "| \`$m\` | $c | $n | $(sum pool "$m" "$c" non2xx) |" \
                    "$(awk -v n="$n" -v b="$bad" 'BEGIN { if (n == 0) print "-"; else printf "%.4f%%", 100 * (n - b) / n }') | $(attempts pool "$m" "$c") |" \
                    "$(us "$(median pool "$m" "$c" p50)") | $(us "$(median pool "$m" "$c" p90)") | $(us "$p99") |" \
                    "$(us "$(median pool "$m" "$c" p99.9)") | $(us "$(median pool "$m" "$c" max)") | $(us "$(median pool "$m" "$c" co_p99)") | $r |"
            }
        done
        echo
        echo "Retries of pool-half (each one is a request that met the failing deployment), with their"
        echo "times in seconds from the start of the measured run (the warm-up went to another model):"
        echo
        awk -F'\t' 'NR > 1 && $2 ~ /^pool-half/ {printf "    %s, ", $2; printf "    rep %s, c=%s: %s retries at %s s\n", $1, $3, $4, $5}' "$results/pool-retries.tsv"
    fi
    echo
    echo "Raw results: $results"
} | tee "$results/summary.md"
cp "$tmp/upstream.conf" "$tmp/brigade.yaml" "$tmp/brigade-budget.yaml" "$results/" 2>/dev/null || true
