#!/bin/sh
# SPDX-License-Identifier: MIT
# Smoke test of mock_upstream: start it on port 0, check a plain and a streamed OpenAI answer,
# an Anthropic answer, a fault directive and request recording with curl, then stop it.
set -eu
bin=$1
dir=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$bin" --port 0 --port-file "$dir/port" >"$dir/out" 2>&1 &
pid=$!
i=0
while [ ! -s "$dir/port" ]; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "mock did not start"; sleep 0.05
done
base="http://127.0.0.1:$(cat "$dir/port")"
grep -q "^listening on 127.0.0.1:" "$dir/out" || fail "no listening line"

body='{"model":"gpt-4o-mini","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello mock world"}]}'
out=$(curl -sS "$base/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
echo "$out" | grep -q '"content": "Echo: hello mock world"' || fail "plain answer: $out"
echo "$out" | grep -q '"prompt_tokens": 11' || fail "prompt_tokens: $out"
echo "$out" | grep -q '"completion_tokens": 4' || fail "completion_tokens: $out"

sbody='{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two"}]}'
out=$(curl -sS -N "$base/v1/chat/completions" -d "$sbody")
[ "$(echo "$out" | grep -c '^data: ')" -eq 7 ] || fail "stream chunk count: $out"
echo "$out" | grep -q '"delta":{"content":" two"}' || fail "stream word chunk: $out"
echo "$out" | grep -q '"choices":\[\],"usage":{"prompt_tokens":5,"completion_tokens":3' ||
    fail "stream usage chunk: $out"
[ "$(echo "$out" | grep '^data: ' | tail -n 1)" = "data: [DONE]" ] || fail "no [DONE]: $out"

abody='{"model":"claude-x","max_tokens":2,"messages":[{"role":"user","content":"a b c"}]}'
out=$(curl -sS "$base/v1/messages" -H 'anthropic-version: 2023-06-01' -d "$abody")
echo "$out" | grep -q '"text":"Echo: a"}\],"stop_reason":"max_tokens"' || fail "anthropic: $out"

code=$(curl -sS -o /dev/null -w '%{http_code}' "$base/v1/chat/completions" \
    -d '{"model":"m","messages":[{"role":"user","content":"x [[status:429]]"}]}')
[ "$code" = 429 ] || fail "status directive gave $code"

n=$(curl -sS "$base/_mock/requests" | grep -o '"method": *"POST"' | wc -l)
[ "$n" -eq 4 ] || fail "recorded $n requests, expected 4"

kill "$pid"; wait "$pid" || fail "mock did not exit cleanly"; pid=
echo "mock_upstream selftest: 1 passed, 0 failed"
