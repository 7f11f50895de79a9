/* SPDX-License-Identifier: MIT */
/*
 * Resilience as a client sees it, against the mock upstream's scripted faults: fallback chains
 * (refused connection, 5xx, 429, first-byte timeout, context overflow), retries with backoff and
 * Retry-After, never anything after the first byte of a stream, load balancing over
 * deployments, breakers that eject a failing deployment, and 503 with Retry-After when nothing
 * is left. Each case checks the answer, the x-brigade-model / x-brigade-attempts headers, what
 * the mock received and the request-log row.
 */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "br_test.h"
#include "common.h"

#define MOCK_AT(prefix) "    base_url: http://127.0.0.1:{MOCK}/" prefix "/v1\n"

#define RESIL_CONFIG                                                                        \
    "server:\n"                                                                             \
    "  workers: 1\n"                                                                        \
    "  timeouts: {drain: 5s}\n"                                                             \
    "resilience:\n"                                                                         \
    "  retry: {attempts: 0, base: 10ms}\n"                                                  \
    "models:\n"                                                                             \
    "  - name: chain-a\n"                                                                   \
    "    provider: openai\n" MOCK_AT(                                                       \
        "a") "    api_key: env:BR_IT_PROVIDER_KEY\n"                                        \
             "    price: {input: 1, output: 2}\n"                                           \
             "    timeouts: {connect: 1s, first_byte: 400ms, idle: 1s}\n"                   \
             "    fallbacks: [chain-b, chain-c]\n"                                          \
             "  - name: chain-b\n"                                                          \
             "    provider: openai\n" MOCK_AT(                                              \
                 "b") "    api_key: env:BR_IT_PROVIDER_KEY\n"                               \
                      "    price: {input: 3, output: 4}\n"                                  \
                      "  - name: chain-c\n"                                                 \
                      "    provider: anthropic\n" MOCK_AT(                                  \
                          "c") "    api_key: env:BR_IT_PROVIDER_KEY\n"                      \
                               "    price: {input: 5, output: 6}\n"                         \
                               "  - name: dead\n"                                           \
                               "    provider: openai\n"                                     \
                               "    base_url: http://127.0.0.1:1/v1\n"                      \
                               "    price: {input: 1, output: 1}\n"                         \
                               "    fallbacks: [chain-b]\n"                                 \
                               "  - name: flaky\n"                                          \
                               "    provider: openai\n" MOCK_AT(                            \
                                   "f") "    api_key: env:BR_IT_PROVIDER_KEY\n"             \
                                        "    price: {input: 1, output: 1}\n"                \
                                        "    retry: {attempts: 2, base: 20ms}\n"            \
                                        "  - name: pool\n"                                  \
                                        "    provider: openai\n"                            \
                                        "    api_key: env:BR_IT_PROVIDER_KEY\n"             \
                                        "    price: {input: 1, output: 1}\n"                \
                                        "    retry: {attempts: 1, base: 1ms}\n"             \
                                        "    breaker: {failures: 2, eject: 30s}\n"          \
                                        "    deployments:\n"                                \
                                        "      - {name: p0, base_url: "                     \
                                        "http://127.0.0.1:{MOCK}/p0/v1, weight: 3}\n"       \
                                        "      - {name: p1, base_url: "                     \
                                        "http://127.0.0.1:{MOCK}/p1/v1}\n"                  \
                                        "  - name: lonely\n"                                \
                                        "    provider: openai\n" MOCK_AT(                   \
                                            "l") "    api_key: env:BR_IT_PROVIDER_KEY\n"    \
                                                 "    price: {input: 1, output: 1}\n"       \
                                                 "    breaker: {failures: 1, eject: 20s}\n" \
                                                 "  - name: limited\n"                      \
                                                 "    provider: openai\n"                   \
                                                 "    api_key: env:BR_IT_PROVIDER_KEY\n"    \
                                                 "    price: {input: 1, output: 1}\n"       \
                                                 "    deployments:\n"                       \
                                                 "      - {name: q0, base_url: "            \
                                                 "http://127.0.0.1:{MOCK}/q0/v1, rpm: 2}\n" \
                                                 "      - {name: q1, base_url: "            \
                                                 "http://127.0.0.1:{MOCK}/q1/v1}\n"         \
                                                 "auth:\n"                                  \
                                                 "  master_key: env:BR_IT_MASTER_KEY\n"

#define MASTER_KEY "br-master-key-resil-9d1c"

static const char *const auth[] = {"Authorization: Bearer " MASTER_KEY, NULL};

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    setenv("BR_IT_MASTER_KEY", MASTER_KEY, 1);
    start_env(e, RESIL_CONFIG);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    env_stop(*state);
    free(*state);
    return 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* POSTs a chat request for model with text; checks the status. */
static void ask(struct env *e, const char *model, const char *text, bool stream, long want,
                struct http_resp *r)
{
    char *body = chat_body(model, text, stream, NULL);
    http_request(e, "POST", "/v1/chat/completions", auth, body, r);
    free(body);
    if (r->status != want) {
        fail_msg("%s '%s': status %ld, want %ld: %s", model, text, r->status, want, r->body);
    }
}

static void assert_header(const struct http_resp *r, const char *name, const char *want)
{
    char *v = http_header(r, name);
    if (!v || strcmp(v, want) != 0) {
        fail_msg("header %s: '%s', want '%s'", name, v ? v : "(none)", want);
    }
    free(v);
}

/* How many API requests the mock received on paths starting with prefix. */
static size_t mock_count(struct env *e, const char *prefix)
{
    char *log = mock_get(e, "/_mock/requests");
    json_t *j = parse_json(log);
    free(log);
    size_t n = 0;
    size_t i;
    json_t *v;
    json_array_foreach(j, i, v)
    {
        const char *p = json_string_value(json_object_get(v, "path"));
        n += p && strncmp(p, prefix, strlen(prefix)) == 0;
    }
    json_decref(j);
    return n;
}

/* The newest request-log row's text column. */
static char *last_row(struct env *e, const char *column)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT %s FROM requests ORDER BY rowid DESC LIMIT 1", column);
    return db_text(e, sql);
}

static void test_fallback_on_5xx_and_429(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    ask(e, "chain-a", "hello [[status:503@/a]]", false, 200, &r);
    assert_header(&r, "x-brigade-model", "chain-b");
    assert_header(&r, "x-brigade-attempts", "2");
    assert_non_null(strstr(r.body, "Echo: hello"));
    http_resp_free(&r);
    assert_int_equal(mock_count(e, "/a/"), 1);
    assert_int_equal(mock_count(e, "/b/"), 1);
    assert_true(db_wait_rows(e, 1));
    char *model = last_row(e, "model");
    char *chain = last_row(e, "cascade");
    assert_string_equal(model, "chain-b");
    assert_string_equal(chain, "chain-a>chain-b");
    free(model);
    free(chain);
    /* Billed at the model that answered. */
    assert_true(db_int(e, "SELECT cost_nano_usd FROM requests ORDER BY rowid DESC LIMIT 1") > 0);

    /* Both a and b fail: the third model of the chain (another provider) answers. */
    mock_reset(e);
    ask(e, "chain-a", "hi [[status:429@/a]] [[status:500@/b]]", true, 200, &r);
    assert_header(&r, "x-brigade-model", "chain-c");
    assert_header(&r, "x-brigade-attempts", "3");
    assert_non_null(strstr(r.body, "data: [DONE]"));
    http_resp_free(&r);
    assert_int_equal(mock_count(e, "/c/"), 1);
}

static void test_fallback_triggers(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    /* A refused connection. */
    long long t0 = now_ms();
    ask(e, "dead", "hello", false, 200, &r);
    assert_header(&r, "x-brigade-model", "chain-b");
    http_resp_free(&r);
    long long refused_ms = now_ms() - t0;
    assert_true(refused_ms < 1000);

    /* No answer before the first-byte timeout (400 ms). */
    ask(e, "chain-a", "slow [[delay:3000@/a]]", false, 200, &r);
    assert_header(&r, "x-brigade-model", "chain-b");
    http_resp_free(&r);

    /* A context-window overflow falls back (it is the request's size, not the model's health). */
    ask(e, "chain-a", "long [[fault:context_length@/a]]", false, 200, &r);
    assert_header(&r, "x-brigade-model", "chain-b");
    http_resp_free(&r);

    /* Not triggers: a 400 (the request's fault) and a 404 are answered as they are. */
    mock_reset(e);
    ask(e, "chain-a", "bad [[status:400@/a]]", false, 400, &r);
    assert_header(&r, "x-brigade-model", "chain-a");
    http_resp_free(&r);
    ask(e, "chain-a", "bad [[status:404@/a]]", false, 404, &r);
    http_resp_free(&r);
    assert_int_equal(mock_count(e, "/b/"), 0);

    /* Every model of the chain fails: the last error is the answer, with its status. */
    ask(e, "chain-a", "x [[status:500@/a]] [[status:502@/b]] [[status:503@/c]]", false, 503, &r);
    assert_header(&r, "x-brigade-attempts", "3");
    http_resp_free(&r);
    assert_true(db_wait_rows(e, 6));
    char *kind = last_row(e, "error_kind");
    assert_non_null(kind);
    free(kind);
}

/* A stream that has begun is never retried nor fallen back: it ends with an SSE error event. */
static void test_no_fallback_after_first_byte(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    ask(e, "chain-a", "w [[words:20]] [[fault:close_mid_stream@/a]]", true, 200, &r);
    assert_header(&r, "x-brigade-model", "chain-a");
    assert_null(strstr(r.body, "data: [DONE]"));
    assert_non_null(strstr(r.body, "\"error\""));
    http_resp_free(&r);
    assert_int_equal(mock_count(e, "/b/"), 0);
    assert_true(db_wait_rows(e, 1));
    char *kind = last_row(e, "error_kind");
    assert_non_null(kind);
    assert_non_null(strstr(kind, "closed"));
    free(kind);
}

static void test_retries(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    /* Two 500s, then an answer: three attempts on the same model. */
    ask(e, "flaky", "again [[status:500#2]]", false, 200, &r);
    assert_header(&r, "x-brigade-model", "flaky");
    assert_header(&r, "x-brigade-attempts", "3");
    http_resp_free(&r);
    assert_int_equal(mock_count(e, "/f/"), 3);

    /* Retry-After (the mock sends 1 s with a 429) is honoured before the retry. */
    long long t0 = now_ms();
    ask(e, "flaky", "wait [[status:429#1]]", false, 200, &r);
    long long waited = now_ms() - t0;
    assert_header(&r, "x-brigade-attempts", "2");
    http_resp_free(&r);
    if (waited < 950) {
        fail_msg("retried after %lld ms, before the upstream's Retry-After of 1 s", waited);
    }

    /* Out of attempts: the error is the answer (1 + 2 attempts). */
    mock_reset(e);
    ask(e, "flaky", "down [[status:502]]", false, 502, &r);
    assert_header(&r, "x-brigade-attempts", "3");
    http_resp_free(&r);
    assert_int_equal(mock_count(e, "/f/"), 3);

    /* Not retried: a 400. */
    mock_reset(e);
    ask(e, "flaky", "bad [[status:400]]", false, 400, &r);
    http_resp_free(&r);
    assert_int_equal(mock_count(e, "/f/"), 1);
}

static void test_balance_and_breaker(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    /* Weights 3:1, smooth weighted round robin: exactly 30 and 10 of 40. */
    for (int i = 0; i < 40; i++) {
        ask(e, "pool", "share", false, 200, &r);
        http_resp_free(&r);
    }
    assert_int_equal(mock_count(e, "/p0/"), 30);
    assert_int_equal(mock_count(e, "/p1/"), 10);

    /* p0 fails every request: each is retried on p1 and succeeds; after 2 consecutive failures
     * p0 is ejected and gets no more traffic. The client sees 100% success. */
    mock_reset(e);
    for (int i = 0; i < 20; i++) {
        ask(e, "pool", "p0 down [[status:500@/p0]]", false, 200, &r);
        http_resp_free(&r);
    }
    assert_int_equal(mock_count(e, "/p0/"), 2);
    assert_int_equal(mock_count(e, "/p1/"), 20);

    /* The ejection shows in the admin API and in the metrics. */
    http_request(e, "GET", "/admin/deployments", auth, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    size_t i;
    json_t *d;
    int seen = 0;
    json_array_foreach(json_object_get(j, "data"), i, d)
    {
        const char *name = json_string_value(json_object_get(d, "deployment"));
        const char *st = json_string_value(json_object_get(json_object_get(d, "breaker"), "state"));
        if (strcmp(name, "p0") == 0) {
            assert_string_equal(st, "open");
            assert_true(json_integer_value(
                            json_object_get(json_object_get(d, "breaker"), "open_for_ms")) > 20000);
            seen++;
        } else if (strcmp(name, "p1") == 0) {
            assert_string_equal(st, "closed");
            seen++;
        }
    }
    assert_int_equal(seen, 2);
    json_decref(j);
    http_resp_free(&r);
    http_request(e, "GET", "/admin/deployments", NULL, NULL, &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);
    http_request(e, "GET", "/metrics", NULL, NULL, &r);
    assert_non_null(strstr(r.body, "brigade_deployment_state{model=\"pool\",deployment=\"p0\"} 1"));
    assert_non_null(strstr(r.body, "brigade_deployment_state{model=\"pool\",deployment=\"p1\"} 0"));
    http_resp_free(&r);
}

/* A deployment at its RPM limit is skipped: q0 takes 2 requests a minute, q1 the rest. */
static void test_rpm_limit(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    for (int i = 0; i < 10; i++) {
        ask(e, "limited", "n", false, 200, &r);
        http_resp_free(&r);
    }
    assert_int_equal(mock_count(e, "/q0/"), 2);
    assert_int_equal(mock_count(e, "/q1/"), 8);
}

/* Nothing left to try: 503 model_unavailable with Retry-After, without calling upstream. */
static void test_all_unavailable(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    ask(e, "lonely", "x [[status:500]]", false, 500, &r); /* one failure ejects it for 20 s */
    http_resp_free(&r);
    mock_reset(e);
    ask(e, "lonely", "y", false, 503, &r);
    assert_non_null(strstr(r.body, "model_unavailable"));
    char *ra = http_header(&r, "retry-after");
    assert_non_null(ra);
    long secs = strtol(ra, NULL, 10);
    assert_true(secs >= 15 && secs <= 20);
    free(ra);
    http_resp_free(&r);
    assert_int_equal(mock_count(e, "/l/"), 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fallback_on_5xx_and_429, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fallback_triggers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_fallback_after_first_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_balance_and_breaker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_unavailable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rpm_limit, setup, teardown),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("integration: resilience", tests, NULL, NULL);
}
