-- SPDX-License-Identifier: MIT
-- wrk script for bench/overhead/run.sh: POSTs a realistic ~1 KB chat completion request
-- (system + user message, model, temperature, max_tokens) to whatever URL wrk was given.
--   BENCH_MODEL   model name to put in the body (default gpt-4o-mini)
--   BENCH_STREAM  "1" to ask for a streamed answer (stream + stream_options.include_usage)

local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local stream = os.getenv("BENCH_STREAM") == "1"

local system = "You are a concise assistant for a travel company. Answer the customer's " ..
    "question in at most three sentences, in plain English, without markdown. If the " ..
    "question is about prices, give a range rather than a single figure, and say that " ..
    "prices change with the season. Never invent opening hours; if you do not know them, " ..
    "say so and suggest checking the official website."

local user = "Hello! My partner and I are planning a long weekend in Paris at the end of " ..
    "April and we would like to see the main sights without spending the whole time in " ..
    "queues. We land on Friday morning and fly back on Monday evening. Which three places " ..
    "would you visit first, roughly how much should we budget per day for food and " ..
    "museum tickets, and is it worth buying a museum pass for such a short stay? We also " ..
    "wonder whether the metro is easy to use with two medium suitcases."

local body = '{"model":"' .. model .. '",' ..
    '"messages":[{"role":"system","content":"' .. system .. '"},' ..
    '{"role":"user","content":"' .. user .. '"}],' ..
    '"temperature":0.7,"max_tokens":256,"user":"bench-user-0001"'
if stream then
    body = body .. ',"stream":true,"stream_options":{"include_usage":true}'
end
body = body .. '}'

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"
