/* SPDX-License-Identifier: MIT */
/* Shared config and helpers for the integration tests. */
#ifndef BR_TEST_COMMON_H
#define BR_TEST_COMMON_H

#include <jansson.h>

#include "harness.h"

#define PROVIDER_KEY "sk-mock-provider-key-5f2a9c"

/* Both mock providers behind the gateway, plus a replay model over the real GSM8K answers. */
#define BASE_CONFIG                                                   \
    "server:\n"                                                       \
    "  workers: 1\n"                                                  \
    "  timeouts: {drain: 5s}\n"                                       \
    "models:\n"                                                       \
    "  - name: mock-gpt\n"                                            \
    "    provider: openai\n"                                          \
    "    model: gpt-4o-mini\n"                                        \
    "    base_url: http://127.0.0.1:{MOCK}/v1\n"                      \
    "    api_key: env:BR_IT_PROVIDER_KEY\n"                           \
    "    price: {input: 0.15, output: 0.60, cached_input: 0.075}\n"   \
    "    timeouts: {connect: 1s, first_byte: 1500ms, idle: 1500ms}\n" \
    "  - name: mock-claude\n"                                         \
    "    provider: anthropic\n"                                       \
    "    model: claude-test\n"                                        \
    "    base_url: http://127.0.0.1:{MOCK}/v1\n"                      \
    "    api_key: env:BR_IT_PROVIDER_KEY\n"                           \
    "    price: {input: 3, output: 15, cached_input: 0.30}\n"         \
    "    timeouts: {connect: 1s, first_byte: 1500ms, idle: 1500ms}\n"

#define REPLAY_MODEL                                              \
    "  - name: gpt-4-1106-preview\n"                              \
    "    provider: replay\n"                                      \
    "    replay:\n"                                               \
    "      file: {SRC}/data/routellm/gsm8k/gsm8k_responses.csv\n" \
    "      prompt: prompt\n"                                      \
    "      response: gpt-4-1106-preview_response\n"               \
    "    price: {input: 10, output: 30}\n"

/* Starts the mock (requiring PROVIDER_KEY) and the gateway with config text. */
void start_env(struct env *e, const char *config);

/* The newest request the mock recorded ({method, path, headers, body, json}); caller decrefs. */
json_t *mock_last_request(struct env *e);

/* Parses JSON (fails the test on error). */
json_t *parse_json(const char *text);

/* Expected cost string for usage at per-token nano-USD prices. */
void expect_cost(const char *header_value, long long nano);

/* The data payloads of an SSE body, in order (NULL-terminated, malloc'd). */
char **sse_payloads(const char *body, size_t *n_out);
void sse_free(char **p);

#endif
