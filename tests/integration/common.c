/* SPDX-License-Identifier: MIT */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"

void start_env(struct env *e, const char *config)
{
    static const char *const args[] = {"--require-key", PROVIDER_KEY, NULL};
    setenv("BR_IT_PROVIDER_KEY", PROVIDER_KEY, 1);
    env_start_mock(e, args);
    env_start_gateway(e, config);
}

json_t *parse_json(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    if (!j) {
        fail_msg("invalid JSON (%s): %.500s", err.text, text);
    }
    return j;
}

void expect_cost(const char *header_value, long long nano)
{
    char want[64];
    snprintf(want, sizeof(want), "%lld.%09lld", nano / 1000000000, nano % 1000000000);
    if (!header_value || strcmp(header_value, want) != 0) {
        fail_msg("cost header %s, want %s", header_value ? header_value : "(none)", want);
    }
}

char **sse_payloads(const char *body, size_t *n_out)
{
    size_t cap = 16;
    size_t n = 0;
    char **out = malloc(cap * sizeof(*out));
    for (const char *p = strstr(body, "data: "); p; p = strstr(p, "data: ")) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        if (!end) {
            break;
        }
        if (n + 2 > cap) {
            cap *= 2;
            out = realloc(out, cap * sizeof(*out));
        }
        out[n++] = strndup(p, (size_t)(end - p));
        p = end;
    }
    out[n] = NULL;
    *n_out = n;
    return out;
}

void sse_free(char **p)
{
    for (size_t i = 0; p && p[i]; i++) {
        free(p[i]);
    }
    free(p);
}

json_t *mock_last_request(struct env *e)
{
    char *text = mock_get(e, "/_mock/requests");
    json_t *arr = parse_json(text);
    free(text);
    assert_true(json_array_size(arr) > 0);
    json_t *last = json_incref(json_array_get(arr, json_array_size(arr) - 1));
    json_decref(arr);
    return last;
}
