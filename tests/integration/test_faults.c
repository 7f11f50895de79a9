/* SPDX-License-Identifier: MIT */
/*
 * Upstream faults as a client sees them: errors keep their status (never a 200), transport
 * failures become 502/504 in OpenAI's shape, a stream cut short ends with an SSE error event,
 * and a client that hangs up mid-stream is still billed for what was produced.
 */
#define _DEFAULT_SOURCE /* usleep */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "br_test.h"
#include "common.h"

/* One attempt per request and no breaker: each fault's own client-visible result (retries,
 * fallbacks and breakers on top of these are test_resil.c's). */
#define FAULT_CONFIG                                       \
    "resilience:\n"                                        \
    "  retry: {attempts: 0}\n"                             \
    "  breaker: off\n" BASE_CONFIG "  - name: mock-dead\n" \
    "    provider: openai\n"                               \
    "    base_url: http://127.0.0.1:1/v1\n"                \
    "    price: {input: 1, output: 1}\n"

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    start_env(e, FAULT_CONFIG);
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

/* Asserts an OpenAI-shaped error body and returns its code (malloc'd, may be NULL). */
static char *error_code(const char *body)
{
    json_t *j = parse_json(body);
    json_t *err = json_object_get(j, "error");
    assert_true(json_is_object(err));
    assert_true(json_is_string(json_object_get(err, "message")));
    assert_true(json_object_get(err, "type") != NULL);
    assert_true(json_object_get(err, "param") != NULL);
    assert_true(json_object_get(err, "code") != NULL);
    json_t *code = json_object_get(err, "code");
    char *c = json_is_string(code) ? strdup(json_string_value(code)) : NULL;
    json_decref(j);
    return c;
}

static void call(struct env *e, const char *model, const char *text, bool stream,
                 struct http_resp *r)
{
    char *body = chat_body(model, text, stream, "\"max_tokens\":100");
    http_request(e, "POST", "/v1/chat/completions", NULL, body, r);
    free(body);
}

static void test_upstream_status_passed_on(void **state)
{
    struct env *e = *state;
    static const struct {
        const char *model;
        const char *text;
        long status;
    } cases[] = {
        {"mock-gpt", "x [[status:429]]", 429},    {"mock-gpt", "x [[status:500]]", 500},
        {"mock-gpt", "x [[status:503]]", 503},    {"mock-gpt", "x [[status:400]]", 400},
        {"mock-claude", "x [[status:429]]", 429}, {"mock-claude", "x [[status:529]]", 529},
        {"mock-claude", "x [[status:500]]", 500},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (int s = 0; s < 2; s++) {
            struct http_resp r;
            call(e, cases[i].model, cases[i].text, s == 1, &r);
            if (r.status != cases[i].status) {
                fail_msg("%s %s stream=%d: status %ld, want %ld: %s", cases[i].model, cases[i].text,
                         s, r.status, cases[i].status, r.body);
            }
            free(error_code(r.body));
            http_resp_free(&r);
        }
    }
    assert_true(db_wait_rows(e, 14));
    assert_int_equal(db_int(e, "SELECT count(*) FROM requests WHERE status=429"), 4);
    assert_int_equal(db_int(e, "SELECT count(*) FROM requests WHERE error_kind IS NULL"), 0);
}

static void test_transport_failures(void **state)
{
    struct env *e = *state;
    static const struct {
        const char *model;
        const char *text;
        long status;
    } cases[] = {
        {"mock-gpt", "x [[fault:invalid_json]]", 502},
        {"mock-gpt", "x [[fault:close_before_headers]]", 502},
        {"mock-gpt", "x [[fault:close_mid_body]]", 502},
        {"mock-claude", "x [[fault:invalid_json]]", 502},
        {"mock-dead", "x", 502},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http_resp r;
        call(e, cases[i].model, cases[i].text, false, &r);
        if (r.status != cases[i].status) {
            fail_msg("%s %s: status %ld, want %ld: %s", cases[i].model, cases[i].text, r.status,
                     cases[i].status, r.body);
        }
        free(error_code(r.body));
        http_resp_free(&r);
    }
    struct http_resp r;
    call(e, "mock-dead", "x", false, &r);
    char *code = error_code(r.body);
    assert_non_null(code);
    assert_non_null(strstr(code, "connect"));
    free(code);
    http_resp_free(&r);
}

static void test_timeouts(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    long long t0 = now_ms();
    call(e, "mock-gpt", "x [[fault:no_answer]]", false, &r);
    long long took = now_ms() - t0;
    assert_int_equal(r.status, 504);
    assert_true(took >= 1400 && took < 6000);
    char *code = error_code(r.body);
    assert_non_null(code);
    assert_non_null(strstr(code, "timeout"));
    free(code);
    http_resp_free(&r);

    t0 = now_ms();
    call(e, "mock-gpt", "x [[fault:headers_then_silence]]", false, &r);
    took = now_ms() - t0;
    assert_int_equal(r.status, 504);
    assert_true(took >= 1400 && took < 6000);
    http_resp_free(&r);

    /* Streamed: either a 504 before any byte, or an SSE error event after the headers. */
    call(e, "mock-gpt", "x [[fault:headers_then_silence]]", true, &r);
    assert_true(r.status == 504 || (r.status == 200 && strstr(r.body, "\"error\"")));
    assert_null(strstr(r.body, "[DONE]"));
    http_resp_free(&r);
    assert_true(db_wait_rows(e, 3));
    assert_int_equal(db_int(e, "SELECT count(*) FROM requests WHERE error_kind LIKE "
                               "'upstream_timeout%'"),
                     3);
}

/* A trickle of bytes (5 at a time, 2 ms apart) is slow, not broken: the whole answer arrives. */
static void test_trickle(void **state)
{
    struct env *e = *state;
    struct http_resp plain;
    call(e, "mock-gpt", "slow but sure [[fault:trickle]]", false, &plain);
    assert_int_equal(plain.status, 200);
    assert_non_null(strstr(plain.body, "Echo: slow but sure"));
    http_resp_free(&plain);
    struct http_resp st;
    call(e, "mock-gpt", "slow but sure [[fault:trickle]]", true, &st);
    assert_int_equal(st.status, 200);
    assert_non_null(strstr(st.body, "data: [DONE]"));
    assert_non_null(strstr(st.body, " sure"));
    http_resp_free(&st);
    call(e, "mock-claude", "slow but sure [[fault:trickle]]", true, &st);
    assert_int_equal(st.status, 200);
    assert_non_null(strstr(st.body, "data: [DONE]"));
    http_resp_free(&st);
    assert_true(db_wait_rows(e, 3));
    assert_int_equal(db_int(e, "SELECT count(*) FROM requests WHERE status = 200 AND "
                               "error_kind IS NULL"),
                     3);
}

static void test_stream_cut_short(void **state)
{
    struct env *e = *state;
    static const char *const models[] = {"mock-gpt", "mock-claude"};
    static const char *const faults[] = {"[[fault:close_mid_stream]]", "[[fault:stream_error]]"};
    for (size_t m = 0; m < 2; m++) {
        for (size_t f = 0; f < 2; f++) {
            char text[128];
            snprintf(text, sizeof(text), "one two three four five six [[words:12]] %s", faults[f]);
            struct http_resp r;
            call(e, models[m], text, true, &r);
            assert_int_equal(r.status, 200);
            size_t n;
            char **p = sse_payloads(r.body, &n);
            assert_true(n >= 2);
            /* No [DONE]; the last event is an OpenAI-shaped error. */
            assert_string_not_equal(p[n - 1], "[DONE]");
            free(error_code(p[n - 1]));
            sse_free(p);
            http_resp_free(&r);
        }
    }
    assert_true(db_wait_rows(e, 4));
    /* Billed for what was produced: output estimated from the chunks seen when no usage came. */
    assert_int_equal(db_int(e, "SELECT count(*) FROM requests WHERE completion_tokens >= 2 AND "
                               "cost_nano_usd > 0 AND error_kind IS NOT NULL"),
                     4);
}

static void test_client_disconnect_billed(void **state)
{
    struct env *e = *state;
    static const char *const models[] = {"mock-gpt", "mock-claude"};
    for (size_t m = 0; m < 2; m++) {
        char body[256];
        snprintf(body, sizeof(body),
                 "{\"model\":\"%s\",\"max_tokens\":100,\"stream\":true,\"messages\":[{\"role\":"
                 "\"user\",\"content\":\"go [[words:60]] [[chunk_delay:50]]\"}]}",
                 models[m]);
        char req[512];
        int n = snprintf(req, sizeof(req),
                         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: gone-%zu"
                         "\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                         m, strlen(body), body);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(e->gw_port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(send(fd, req, (size_t)n, 0), n);
        /* Read until a few content events have arrived, then hang up. */
        char buf[65536];
        size_t got = 0;
        long long deadline = now_ms() + 5000;
        while (now_ms() < deadline) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 100) > 0) {
                ssize_t k = recv(fd, buf + got, sizeof(buf) - got - 1, 0);
                if (k <= 0) {
                    break;
                }
                got += (size_t)k;
                buf[got] = '\0';
                if (count_substr(buf, "data: ") >= 5) {
                    break;
                }
            }
        }
        assert_true(count_substr(buf, "data: ") >= 5);
        close(fd);
    }
    assert_true(db_wait_rows(e, 2));
    for (size_t m = 0; m < 2; m++) {
        char q[160];
        snprintf(q, sizeof(q), "SELECT status FROM requests WHERE id='gone-%zu'", m);
        assert_int_equal(db_int(e, q), 499);
        snprintf(q, sizeof(q), "SELECT completion_tokens FROM requests WHERE id='gone-%zu'", m);
        long long ct = db_int(e, q);
        assert_true(ct >= 3 && ct < 60);
        snprintf(q, sizeof(q), "SELECT cost_nano_usd FROM requests WHERE id='gone-%zu'", m);
        assert_true(db_int(e, q) > 0);
        snprintf(q, sizeof(q), "SELECT error_kind FROM requests WHERE id='gone-%zu'", m);
        char *k = db_text(e, q);
        assert_string_equal(k, "client_closed");
        free(k);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_upstream_status_passed_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transport_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeouts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trickle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_cut_short, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_disconnect_billed, setup, teardown),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("integration_faults", tests, NULL, NULL);
}
