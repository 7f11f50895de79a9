/* SPDX-License-Identifier: MIT */
/*
 * Operating the gateway: the catalogue, health, metrics, OpenAI-shaped errors, auth and key
 * hygiene, config reload on SIGHUP, graceful drain on SIGTERM, requests the HTTP layer refuses
 * (never forwarded), hostile JSON bodies, request ids and upstream keep-alive.
 */
#define _DEFAULT_SOURCE /* usleep */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "common.h"

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    start_env(e, BASE_CONFIG);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    env_stop(*state);
    free(*state);
    return 0;
}

static void assert_error(const struct http_resp *r, long status, const char *code,
                         const char *param)
{
    if (r->status != status) {
        fail_msg("status %ld, want %ld: %s", r->status, status, r->body);
    }
    json_t *j = parse_json(r->body);
    json_t *err = json_object_get(j, "error");
    assert_true(json_is_string(json_object_get(err, "message")));
    assert_true(json_is_string(json_object_get(err, "type")));
    assert_non_null(json_object_get(err, "param"));
    assert_non_null(json_object_get(err, "code"));
    if (code) {
        assert_string_equal(json_string_value(json_object_get(err, "code")), code);
    }
    if (param) {
        assert_string_equal(json_string_value(json_object_get(err, "param")), param);
    }
    char *rid = http_header(r, "x-request-id");
    assert_non_null(rid);
    free(rid);
    json_decref(j);
}

static void test_models_and_health(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    http_request(e, "GET", "/v1/models", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "list");
    json_t *data = json_object_get(j, "data");
    assert_int_equal(json_array_size(data), 2);
    json_t *m0 = json_array_get(data, 0);
    assert_string_equal(json_string_value(json_object_get(m0, "id")), "mock-gpt");
    assert_string_equal(json_string_value(json_object_get(m0, "object")), "model");
    assert_true(json_is_integer(json_object_get(m0, "created")));
    assert_string_equal(json_string_value(json_object_get(m0, "owned_by")), "openai");
    json_decref(j);
    http_resp_free(&r);

    http_request(e, "GET", "/v1/models/mock-claude", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"id\":\"mock-claude\""));
    http_resp_free(&r);
    http_request(e, "GET", "/v1/models/nope", NULL, NULL, &r);
    assert_error(&r, 404, "model_not_found", NULL);
    http_resp_free(&r);
    http_request(e, "GET", "/health", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"ok\""));
    http_resp_free(&r);
}

static void test_error_shapes(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, "{\"model\": \"mock-gpt\", ", &r);
    assert_error(&r, 400, "invalid_json", NULL);
    http_resp_free(&r);
    http_request(e, "POST", "/v1/chat/completions", NULL,
                 "{\"model\":\"no-such\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                 &r);
    assert_error(&r, 404, "model_not_found", "model");
    http_resp_free(&r);
    http_request(e, "POST", "/v1/chat/completions", NULL, "{\"model\":\"mock-gpt\"}", &r);
    assert_error(&r, 400, NULL, "messages");
    http_resp_free(&r);
    http_request(e, "POST", "/v1/chat/completions", NULL,
                 "{\"model\":\"mock-gpt\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}",
                 &r);
    assert_error(&r, 400, NULL, "messages[0].role");
    http_resp_free(&r);
    http_request(e, "POST", "/v1/chat/completions", NULL,
                 "{\"model\":\"mock-gpt\",\"stream_options\":{\"include_usage\":true},"
                 "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                 &r);
    assert_error(&r, 400, NULL, "stream_options");
    http_resp_free(&r);
    /* Duplicate keys would let the gateway and the upstream read different models. */
    http_request(e, "POST", "/v1/chat/completions", NULL,
                 "{\"model\":\"mock-gpt\",\"model\":\"other\",\"messages\":[{\"role\":\"user\","
                 "\"content\":\"x\"}]}",
                 &r);
    assert_error(&r, 400, "invalid_json", NULL);
    http_resp_free(&r);
    http_request(e, "GET", "/v1/chat/completions", NULL, NULL, &r);
    assert_error(&r, 405, NULL, NULL);
    http_resp_free(&r);
    http_request(e, "GET", "/v2/whatever", NULL, NULL, &r);
    assert_error(&r, 404, "unknown_url", NULL);
    http_resp_free(&r);
    /* Nothing of that reached the upstream. */
    char *seen = mock_get(e, "/_mock/requests");
    assert_string_equal(seen, "[]");
    free(seen);
}

#define CLIENT_KEY "br-client-key-7d3e1f0a"
#define MASTER_KEY "br-master-key-90c4b2e8"

static void test_auth_and_key_hygiene(void **state)
{
    struct env *e = *state;
    env_stop(e);
    setenv("BR_IT_CLIENT_KEY", CLIENT_KEY, 1);
    setenv("BR_IT_MASTER_KEY", MASTER_KEY, 1);
    setenv("BR_IT_WRONG_PROVIDER_KEY", "sk-wrong-provider-key-31337", 1);
    start_env(e, BASE_CONFIG "  - name: mock-badkey\n"
                             "    provider: openai\n"
                             "    base_url: http://127.0.0.1:{MOCK}/v1\n"
                             "    api_key: env:BR_IT_WRONG_PROVIDER_KEY\n"
                             "    price: {input: 1, output: 1}\n"
                             "auth:\n"
                             "  master_key: env:BR_IT_MASTER_KEY\n"
                             "  keys:\n"
                             "    - id: team-a\n"
                             "      key: env:BR_IT_CLIENT_KEY\n");
    char *body = chat_body("mock-gpt", "hi", false, NULL);
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_error(&r, 401, "missing_api_key", NULL);
    http_resp_free(&r);
    const char *wrong[] = {"Authorization: Bearer br-client-key-7d3e1f0b", NULL};
    http_request(e, "POST", "/v1/chat/completions", wrong, body, &r);
    assert_error(&r, 401, "invalid_api_key", NULL);
    assert_null(strstr(r.body, "br-client-key"));
    http_resp_free(&r);
    const char *good[] = {"Authorization: Bearer " CLIENT_KEY, "x-request-id: auth-ok", NULL};
    http_request(e, "POST", "/v1/chat/completions", good, body, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    const char *xkey[] = {"x-api-key: " CLIENT_KEY, NULL};
    http_request(e, "GET", "/v1/models", xkey, NULL, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    http_request(e, "GET", "/v1/models", NULL, NULL, &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);

    /* Admin needs the master key, not a client key. */
    http_request(e, "GET", "/admin/config", good, NULL, &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);
    const char *master[] = {"Authorization: Bearer " MASTER_KEY, NULL};
    http_request(e, "GET", "/admin/config", master, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "env:BR_IT_PROVIDER_KEY"));
    assert_null(strstr(r.body, PROVIDER_KEY));
    http_resp_free(&r);

    /* The upstream rejects the wrong provider key and echoes part of it back. */
    char *bad = chat_body("mock-badkey", "hi", false, NULL);
    http_request(e, "POST", "/v1/chat/completions", good, bad, &r);
    assert_int_equal(r.status, 401);
    assert_null(strstr(r.body, "sk-wrong-provider-key-31337"));
    assert_null(strstr(r.body, "31337"));
    http_resp_free(&r);
    free(bad);

    assert_true(db_wait_rows(e, 4));
    char *kid = db_text(e, "SELECT key_id FROM requests WHERE id='auth-ok'");
    assert_string_equal(kid, "team-a");
    free(kid);

    /* No key, client or provider, in the log, the request log or the metrics. */
    http_request(e, "GET", "/metrics", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    static const char *const secrets[] = {CLIENT_KEY, MASTER_KEY, PROVIDER_KEY,
                                          "sk-wrong-provider-key-31337", "br-client-key-7d3e1f0b"};
    char *log = env_gateway_log(e);
    char cmd[600];
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
        assert_null(strstr(r.body, secrets[i]));
        assert_null(strstr(log, secrets[i]));
        snprintf(cmd, sizeof(cmd), "grep -q -a -- '%s' '%s' '%s'-wal 2>/dev/null", secrets[i],
                 e->db_path, e->db_path);
        assert_int_not_equal(system(cmd), 0);
    }
    free(log);
    http_resp_free(&r);
    free(body);
}

static void test_metrics(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    char *body = chat_body("mock-gpt", "one two", false, NULL);
    for (int i = 0; i < 2; i++) {
        http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
        assert_int_equal(r.status, 200);
        http_resp_free(&r);
    }
    free(body);
    body = chat_body("mock-gpt", "x [[status:500]]", false, NULL);
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    http_resp_free(&r);
    free(body);
    http_request(e, "GET", "/metrics", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    char *ct = http_header(&r, "content-type");
    assert_non_null(strstr(ct, "text/plain"));
    free(ct);
    static const char *const want[] = {
        "brigade_requests_total{model=\"mock-gpt\",status=\"200\"} 2",
        "brigade_requests_total{model=\"mock-gpt\",status=\"500\"} 1",
        "brigade_tokens_total{model=\"mock-gpt\",kind=\"prompt\"}",
        "brigade_tokens_total{model=\"mock-gpt\",kind=\"completion\"}",
        "brigade_cost_usd_total{model=\"mock-gpt\"}",
        "brigade_request_duration_seconds_bucket{model=\"mock-gpt\",le=\"+Inf\"} 3",
        "brigade_gateway_overhead_seconds_count 3",
        "brigade_upstream_ttfb_seconds_count{model=\"mock-gpt\"} 3",
        "brigade_upstream_errors_total{model=\"mock-gpt\",kind=",
        "brigade_requests_in_flight 0",
        "# TYPE brigade_request_duration_seconds histogram",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (!strstr(r.body, want[i])) {
            fail_msg("metrics lack '%s':\n%s", want[i], r.body);
        }
    }
    http_resp_free(&r);
}

static void test_reload(void **state)
{
    struct env *e = *state;
    env_write_config(e, BASE_CONFIG "  - name: mock-new\n"
                                    "    provider: openai\n"
                                    "    base_url: http://127.0.0.1:{MOCK}/v1\n"
                                    "    api_key: env:BR_IT_PROVIDER_KEY\n"
                                    "    price: {input: 1, output: 1}\n");
    env_signal_gateway(e, SIGHUP);
    assert_true(env_wait_log(e, "event=reloaded", 5000));
    char *body = chat_body("mock-new", "after reload", false, NULL);
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);

    /* A broken file is refused; the previous config keeps serving. */
    env_write_config(e, "models:\n  - name: broken\n    provider: openai\n");
    env_signal_gateway(e, SIGHUP);
    assert_true(env_wait_log(e, "event=reload_failed", 5000));
    assert_true(env_wait_log(e, "needs price", 100));
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    free(body);
}

struct bg_req {
    struct env *e;
    struct http_resp r;
};

static void *bg_stream(void *arg)
{
    struct bg_req *b = arg;
    char *body = chat_body("mock-gpt", "slow [[words:20]] [[chunk_delay:60]]", true, NULL);
    const char *h[] = {"x-request-id: drain-1", NULL};
    http_request(b->e, "POST", "/v1/chat/completions", h, body, &b->r);
    free(body);
    return NULL;
}

static void test_drain_on_sigterm(void **state)
{
    struct env *e = *state;
    struct bg_req b = {.e = e};
    pthread_t t;
    pthread_create(&t, NULL, bg_stream, &b);
    /* Wait until the stream is under way, then ask the gateway to stop. */
    assert_true(env_wait_log(e, "event=listening", 1000));
    usleep(400000);
    env_signal_gateway(e, SIGTERM);
    pthread_join(t, NULL);
    assert_int_equal(b.r.status, 200);
    assert_non_null(strstr(b.r.body, "data: [DONE]"));
    size_t n;
    char **p = sse_payloads(b.r.body, &n);
    assert_true(n >= 21);
    sse_free(p);
    http_resp_free(&b.r);
    assert_int_equal(env_wait_gateway(e, 10000), 0);
    char *log = env_gateway_log(e);
    assert_non_null(strstr(log, "event=drain"));
    free(log);
    /* The row of the drained request was committed before exit. */
    assert_int_equal(db_int(e, "SELECT status FROM requests WHERE id='drain-1'"), 200);
}

static void test_refused_requests_never_forwarded(void **state)
{
    struct env *e = *state;
    static const char body[] =
        "{\"model\":\"mock-gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"smuggle\"}]}";
    char reqs[4][512];
    snprintf(reqs[0], sizeof(reqs[0]),
             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n"
             "Transfer-Encoding: chunked\r\n\r\n%s",
             strlen(body), body);
    snprintf(reqs[1], sizeof(reqs[1]),
             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(body), strlen(body), body);
    snprintf(reqs[2], sizeof(reqs[2]),
             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    snprintf(reqs[3], sizeof(reqs[3]),
             "POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: %zu\n\n%s", strlen(body),
             body);
    for (int i = 0; i < 4; i++) {
        char *out = raw_exchange(e->gw_port, reqs[i], strlen(reqs[i]), 3000);
        if (strncmp(out, "HTTP/1.1 400", 12) != 0 && strncmp(out, "HTTP/1.1 501", 12) != 0) {
            fail_msg("case %d: %.200s", i, out);
        }
        free(out);
    }
    char *seen = mock_get(e, "/_mock/requests");
    assert_string_equal(seen, "[]");
    free(seen);
}

static void test_hostile_json_bodies(void **state)
{
    struct env *e = *state;
    const char *dir = BR_SOURCE_DIR "/tests/data/json/JSONTestSuite/test_parsing";
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    size_t n = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') {
            continue;
        }
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        static char buf[1 << 20];
        size_t len = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        char head[256];
        int hl = snprintf(head, sizeof(head),
                          "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                          len);
        char *req = malloc((size_t)hl + len);
        memcpy(req, head, (size_t)hl);
        memcpy(req + hl, buf, len);
        char *out = raw_exchange(e->gw_port, req, (size_t)hl + len, 5000);
        /* None of these is a chat request: every one is refused with a 400, cleanly. */
        if (strncmp(out, "HTTP/1.1 400", 12) != 0) {
            fail_msg("%s: %.300s", de->d_name, out);
        }
        assert_non_null(strstr(out, "\"error\""));
        free(out);
        free(req);
        n++;
    }
    closedir(d);
    assert_int_equal(n, 318);
    struct http_resp r;
    http_request(e, "GET", "/health", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    char *seen = mock_get(e, "/_mock/requests");
    assert_string_equal(seen, "[]");
    free(seen);
}

static void test_request_ids_and_upstream_keepalive(void **state)
{
    struct env *e = *state;
    char *body = chat_body("mock-gpt", "again", false, NULL);
    char first_id[64] = "";
    for (int i = 0; i < 10; i++) {
        struct http_resp r;
        http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
        assert_int_equal(r.status, 200);
        char *rid = http_header(&r, "x-request-id");
        assert_non_null(rid);
        assert_int_equal(strlen(rid), 32);
        if (i == 0) {
            snprintf(first_id, sizeof(first_id), "%s", rid);
        } else {
            assert_string_not_equal(rid, first_id);
        }
        free(rid);
        http_resp_free(&r);
    }
    free(body);
    assert_true(db_wait_rows(e, 10));
    char q[128];
    snprintf(q, sizeof(q), "SELECT count(*) FROM requests WHERE id='%s'", first_id);
    assert_int_equal(db_int(e, q), 1);
    /* One worker, sequential calls: one upstream connection, reused. */
    char *stats = mock_get(e, "/_mock/stats");
    json_t *j = parse_json(stats);
    assert_int_equal(json_integer_value(json_object_get(j, "api_connections")), 1);
    json_decref(j);
    free(stats);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_models_and_health, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_and_key_hygiene, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_on_sigterm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_requests_never_forwarded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_json_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_ids_and_upstream_keepalive, setup, teardown),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("integration_ops", tests, NULL, NULL);
}
