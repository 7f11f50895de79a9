/* SPDX-License-Identifier: MIT */
/*
 * Virtual keys end to end: the real gateway with a master key, its key store on disk and the
 * mock upstream. Key lifecycle through the admin API (the secret shown once and never listed,
 * logged or stored), budgets debited by non-streamed, streamed and disconnected requests, a
 * request refused while another holds the last of the budget, two requests racing for it, RPM
 * and TPM limits with Retry-After, the allowed-models list, and keys and spend that survive a
 * kill -9 once acknowledged.
 */
#define _DEFAULT_SOURCE /* usleep */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "br_test.h"
#include "common.h"

#define MASTER_KEY "br-master-key-keys-4a1c"

/* Two workers (requests of one key run on several threads); the two mock providers, and a
 * model at $1000 per million tokens: one token costs 1,000,000 nano-USD. */
#define KEYS_CONFIG                                           \
    "server:\n"                                               \
    "  workers: 2\n"                                          \
    "  timeouts: {drain: 5s}\n"                               \
    "models:\n"                                               \
    "  - name: mock-gpt\n"                                    \
    "    provider: openai\n"                                  \
    "    model: gpt-4o-mini\n"                                \
    "    base_url: http://127.0.0.1:{MOCK}/v1\n"              \
    "    api_key: env:BR_IT_PROVIDER_KEY\n"                   \
    "    price: {input: 0.15, output: 0.60}\n"                \
    "  - name: mock-claude\n"                                 \
    "    provider: anthropic\n"                               \
    "    model: claude-test\n"                                \
    "    base_url: http://127.0.0.1:{MOCK}/v1\n"              \
    "    api_key: env:BR_IT_PROVIDER_KEY\n"                   \
    "    price: {input: 3, output: 15}\n"                     \
    "  - name: pricey\n"                                      \
    "    provider: openai\n"                                  \
    "    model: gpt-4o-mini\n"                                \
    "    base_url: http://127.0.0.1:{MOCK}/v1\n"              \
    "    api_key: env:BR_IT_PROVIDER_KEY\n"                   \
    "    price: {input: 1000, output: 1000}\n"                \
    "    timeouts: {connect: 1s, first_byte: 5s, idle: 5s}\n" \
    "auth:\n"                                                 \
    "  master_key: env:BR_IT_MASTER_KEY\n"

#define LOCAL_MODEL                                                \
    "  - name: stories260k\n"                                      \
    "    provider: local\n"                                        \
    "    local:\n"                                                 \
    "      model: {SRC}/models/stories260K/stories260K-f32.gguf\n" \
    "    price: {input: 1000, output: 1000}\n"

static const char *const master[] = {"Authorization: Bearer " MASTER_KEY, NULL};

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    setenv("BR_IT_MASTER_KEY", MASTER_KEY, 1);
    start_env(e, KEYS_CONFIG);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    env_stop(*state);
    free(*state);
    return 0;
}

/* An admin call answering status; returns the parsed body (caller decrefs). */
static json_t *admin(struct env *e, const char *method, const char *path, const char *body,
                     long status)
{
    struct http_resp r;
    http_request(e, method, path, master, body, &r);
    if (r.status != status) {
        fail_msg("%s %s: status %ld, want %ld: %s", method, path, r.status, status, r.body);
    }
    json_t *j = parse_json(r.body);
    http_resp_free(&r);
    return j;
}

/* "0.000106000" -> 106000 */
static long long nano_of(const char *usd)
{
    assert_non_null(usd);
    long long whole = 0;
    long long frac = 0;
    int digits = 0;
    const char *p = usd;
    while (*p && *p != '.') {
        whole = whole * 10 + (*p++ - '0');
    }
    if (*p == '.') {
        p++;
        while (*p && digits < 9) {
            frac = frac * 10 + (*p++ - '0');
            digits++;
        }
    }
    while (digits++ < 9) {
        frac *= 10;
    }
    return whole * 1000000000LL + frac;
}

static long long spend_field(json_t *key, const char *field)
{
    return nano_of(json_string_value(json_object_get(json_object_get(key, "spend"), field)));
}

static json_t *get_key(struct env *e, const char *id)
{
    char path[80];
    snprintf(path, sizeof(path), "/admin/keys/%s", id);
    return admin(e, "GET", path, NULL, 200);
}

/* Creates a key; *secret_out and *id_out are malloc'd. */
static void create_key(struct env *e, const char *spec, char **secret_out, char **id_out)
{
    json_t *k = admin(e, "POST", "/admin/keys", spec, 201);
    *secret_out = strdup(json_string_value(json_object_get(k, "key")));
    *id_out = strdup(json_string_value(json_object_get(k, "id")));
    assert_int_equal(strncmp(*secret_out, "br-", 3), 0);
    json_decref(k);
}

struct call {
    struct env *e;
    const char *secret;
    const char *body;
    const char *rid;
    struct http_resp r;
};

static void call_run(struct call *c)
{
    char auth[128];
    char rid[80];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", c->secret);
    snprintf(rid, sizeof(rid), "x-request-id: %s", c->rid ? c->rid : "k");
    const char *h[] = {auth, rid, NULL};
    http_request(c->e, "POST", "/v1/chat/completions", h, c->body, &c->r);
}

static void *call_main(void *arg)
{
    call_run(arg);
    return NULL;
}

static long long cost_header(const struct http_resp *r)
{
    char *c = http_header(r, "x-brigade-cost-usd");
    assert_non_null(c);
    long long n = nano_of(c);
    free(c);
    return n;
}

static void assert_error_code(const struct http_resp *r, long status, const char *code)
{
    if (r->status != status) {
        fail_msg("status %ld, want %ld: %s", r->status, status, r->body);
    }
    json_t *j = parse_json(r->body);
    json_t *err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), code);
    assert_true(json_is_string(json_object_get(err, "message")));
    assert_true(json_is_string(json_object_get(err, "type")));
    json_decref(j);
}

static bool file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return false;
    }
    size_t cap = 1 << 20;
    size_t len = 0;
    char *buf = malloc(cap);
    size_t k;
    while ((k = fread(buf + len, 1, cap - len, f)) > 0) {
        len += k;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    fclose(f);
    size_t nl = strlen(needle);
    bool found = false;
    for (size_t i = 0; !found && i + nl <= len; i++) {
        found = memcmp(buf + i, needle, nl) == 0;
    }
    free(buf);
    return found;
}

/* ------------------------------------------------------------------ lifecycle */

static void test_key_lifecycle(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    /* The admin API needs the master key. */
    http_request(e, "GET", "/admin/keys", NULL, NULL, &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);

    char *secret = NULL;
    char *id = NULL;
    create_key(e,
               "{\"name\":\"search\",\"budget\":{\"usd\":\"5\",\"period\":\"month\"},\"rpm\":100,"
               "\"models\":[\"mock-gpt\",\"pricey\"],\"metadata\":{\"team\":\"search\","
               "\"user\":\"ana\"}}",
               &secret, &id);

    json_t *cfg = admin(e, "GET", "/admin/config", NULL, 200);
    assert_int_equal(json_integer_value(json_object_get(cfg, "virtual_keys")), 1);
    assert_non_null(
        strstr(json_string_value(json_object_get(cfg, "key_store")), "brigade-keys.db"));
    json_decref(cfg);

    /* A virtual key is not an admin key. */
    char auth[128];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", secret);
    const char *vk[] = {auth, NULL};
    http_request(e, "GET", "/admin/keys", vk, NULL, &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);
    http_request(e, "GET", "/v1/models", vk, NULL, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);

    struct call c = {e,
                     secret,
                     "{\"model\":\"pricey\",\"max_tokens\":10,\"messages\":[{\"role\":"
                     "\"user\",\"content\":\"hello there\"}]}",
                     "life-1",
                     {0}};
    call_run(&c);
    assert_int_equal(c.r.status, 200);
    long long cost = cost_header(&c.r);
    assert_true(cost > 0);
    http_resp_free(&c.r);

    /* The list shows the spend and the metadata, never the secret. */
    struct http_resp l;
    http_request(e, "GET", "/admin/keys", master, NULL, &l);
    assert_int_equal(l.status, 200);
    assert_null(strstr(l.body, secret));
    assert_null(strstr(l.body, "\"key\""));
    json_t *list = parse_json(l.body);
    json_t *k0 = json_array_get(json_object_get(list, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(k0, "id")), id);
    assert_int_equal(spend_field(k0, "usd"), cost);
    assert_string_equal(json_string_value(json_object_get(json_object_get(k0, "metadata"), "team")),
                        "search");
    assert_string_equal(json_string_value(json_object_get(k0, "name")), "search");
    json_decref(list);
    http_resp_free(&l);

    /* The request log carries the key's id. */
    assert_true(db_wait_rows(e, 1));
    char *kid = db_text(e, "SELECT key_id FROM requests WHERE id='life-1'");
    assert_string_equal(kid, id);
    free(kid);

    /* Update: only mock-claude allowed now -> 403 for pricey. */
    char path[80];
    snprintf(path, sizeof(path), "/admin/keys/%s", id);
    json_t *u = admin(e, "PATCH", path, "{\"models\":[\"mock-claude\"],\"rpm\":null}", 200);
    assert_true(json_is_null(json_object_get(u, "rpm")));
    assert_int_equal(spend_field(u, "usd"), cost); /* the spend stays */
    json_decref(u);
    c.rid = "life-2";
    call_run(&c);
    assert_error_code(&c.r, 403, "model_not_allowed");
    http_resp_free(&c.r);
    /* Bad admin input: 400 with the field named. */
    json_t *bad = admin(e, "PATCH", path, "{\"budget\":{\"usd\":-1}}", 400);
    json_decref(bad);
    bad = admin(e, "PATCH", path, "{\"colour\":\"red\"}", 400);
    json_decref(bad);
    bad = admin(e, "GET", "/admin/keys/vk_0000000000000000", NULL, 404);
    json_decref(bad);

    /* Revoke: 401 from now on; the key stays listed as inactive. */
    json_t *d = admin(e, "DELETE", path, NULL, 200);
    assert_false(json_is_true(json_object_get(d, "active")));
    json_decref(d);
    c.body = "{\"model\":\"mock-claude\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    c.rid = "life-3";
    call_run(&c);
    assert_error_code(&c.r, 401, "invalid_api_key");
    http_resp_free(&c.r);

    /* The secret is in no file: key store, request log, gateway log. */
    env_signal_gateway(e, SIGTERM);
    assert_int_equal(env_wait_gateway(e, 10000), 0);
    const char *files[] = {"brigade-keys.db", "brigade-keys.db-wal", "gateway.log", NULL};
    for (size_t i = 0; files[i]; i++) {
        char p[400];
        snprintf(p, sizeof(p), "%s/%s", e->dir, files[i]);
        assert_false(file_contains(p, secret + 3));
    }
    char p[400];
    snprintf(p, sizeof(p), "%s/brigade-keys.db", e->dir);
    assert_true(file_contains(p, id));
    assert_false(file_contains(e->db_path, secret + 3));
    free(secret);
    free(id);
}

/* ------------------------------------------------------------------ budgets */

/* Sends a streamed request and hangs up after the first content events. */
static void stream_and_hang_up(struct env *e, const char *secret, const char *rid)
{
    const char *body = "{\"model\":\"pricey\",\"max_tokens\":40,\"stream\":true,\"messages\":[{"
                       "\"role\":\"user\",\"content\":\"go [[words:40]] [[chunk_delay:50]]\"}]}";
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: %s\r\n"
                     "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     rid, secret, strlen(body), body);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(e->gw_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(send(fd, req, (size_t)n, 0), n);
    char buf[65536];
    size_t got = 0;
    long long deadline = mono_ms() + 5000;
    while (mono_ms() < deadline) {
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

static json_t *wait_idle(struct env *e, const char *id)
{
    long long deadline = mono_ms() + 5000;
    for (;;) {
        json_t *k = get_key(e, id);
        json_t *u = json_object_get(k, "usage");
        if (json_integer_value(json_object_get(u, "in_flight")) == 0 || mono_ms() > deadline) {
            return k;
        }
        json_decref(k);
        usleep(10000);
    }
}

static void test_budget_debits(void **state)
{
    struct env *e = *state;
    char *secret = NULL;
    char *id = NULL;
    create_key(e, "{\"budget\":{\"usd\":1,\"period\":\"day\"}}", &secret, &id);
    long long total = 0;

    /* Non-streamed. */
    struct call c = {e,
                     secret,
                     "{\"model\":\"pricey\",\"max_tokens\":8,\"messages\":[{\"role\":"
                     "\"user\",\"content\":\"one two three\"}]}",
                     "b-plain",
                     {0}};
    call_run(&c);
    assert_int_equal(c.r.status, 200);
    total += cost_header(&c.r);
    http_resp_free(&c.r);
    json_t *k = get_key(e, id);
    assert_int_equal(spend_field(k, "usd"), total);
    json_decref(k);

    /* Streamed: the usage comes from the stream (the cost is a trailer). */
    c.body = "{\"model\":\"pricey\",\"max_tokens\":8,\"stream\":true,\"messages\":[{\"role\":"
             "\"user\",\"content\":\"four five [[words:6]]\"}]}";
    c.rid = "b-stream";
    call_run(&c);
    assert_int_equal(c.r.status, 200);
    long long sc = cost_header(&c.r);
    assert_true(sc > 0);
    total += sc;
    http_resp_free(&c.r);
    k = get_key(e, id);
    assert_int_equal(spend_field(k, "usd"), total);
    json_decref(k);

    /* Disconnected mid-stream: billed what was produced (the 499 row's cost). */
    stream_and_hang_up(e, secret, "b-gone");
    k = wait_idle(e, id);
    assert_true(db_wait_rows(e, 3));
    long long deadline = mono_ms() + 5000;
    while (db_int(e, "SELECT COUNT(*) FROM requests WHERE id='b-gone'") < 1 &&
           mono_ms() < deadline) {
        usleep(10000);
    }
    assert_int_equal(db_int(e, "SELECT status FROM requests WHERE id='b-gone'"), 499);
    long long gone = db_int(e, "SELECT cost_nano_usd FROM requests WHERE id='b-gone'");
    assert_true(gone > 0);
    total += gone;
    assert_int_equal(spend_field(k, "usd"), total);
    assert_int_equal(spend_field(k, "reserved_usd"), 0);
    json_decref(k);
    /* The spend equals the request log's sum for the key. */
    char q[160];
    snprintf(q, sizeof(q), "SELECT SUM(cost_nano_usd) FROM requests WHERE key_id='%s'", id);
    assert_int_equal(db_int(e, q), total);

    /* Exhausted: the budget is set just above the spend; an estimate does not fit. */
    char path[80];
    char patch[160];
    snprintf(path, sizeof(path), "/admin/keys/%s", id);
    snprintf(patch, sizeof(patch), "{\"budget\":{\"usd\":\"0.%09lld\",\"period\":\"day\"}}",
             total + 1000000);
    json_decref(admin(e, "PATCH", path, patch, 200));
    c.body = "{\"model\":\"pricey\",\"max_tokens\":8,\"messages\":[{\"role\":\"user\","
             "\"content\":\"more\"}]}";
    c.rid = "b-over";
    call_run(&c);
    assert_error_code(&c.r, 429, "budget_exceeded");
    char *ra = http_header(&c.r, "retry-after");
    assert_non_null(ra);
    long ras = atol(ra);
    assert_true(ras >= 1 && ras <= 86400); /* until midnight UTC */
    free(ra);
    http_resp_free(&c.r);
    /* The refused request is logged and reached no upstream. */
    mock_reset(e);
    call_run(&c);
    assert_int_equal(c.r.status, 429);
    http_resp_free(&c.r);
    char *log = mock_get(e, "/_mock/requests");
    assert_null(strstr(log, "more"));
    free(log);
    free(secret);
    free(id);
}

/* One request in flight holds the estimate: a second one that would pass the budget waits. */
static void test_budget_race(void **state)
{
    struct env *e = *state;
    char *secret = NULL;
    char *id = NULL;
    create_key(e, "{\"budget\":{\"usd\":100,\"period\":\"total\"}}", &secret, &id);
    const char *slow = "{\"model\":\"pricey\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\","
                       "\"content\":\"slow [[delay:600]]\"}]}";
    struct call a = {e, secret, slow, "race-a", {0}};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, call_main, &a), 0);
    long long est = 0;
    long long deadline = mono_ms() + 5000;
    while (mono_ms() < deadline && est == 0) {
        json_t *k = get_key(e, id);
        est = spend_field(k, "reserved_usd");
        json_decref(k);
        usleep(5000);
    }
    assert_true(est > 0);
    /* Room for 1.5 estimates: the request in flight holds one; a second does not fit. */
    char path[80];
    char patch[160];
    snprintf(path, sizeof(path), "/admin/keys/%s", id);
    snprintf(patch, sizeof(patch), "{\"budget\":{\"usd\":\"%lld.%09lld\",\"period\":\"total\"}}",
             (est * 3 / 2) / 1000000000LL, (est * 3 / 2) % 1000000000LL);
    json_decref(admin(e, "PATCH", path, patch, 200));
    struct call b = {e, secret, slow, "race-b", {0}};
    call_run(&b);
    assert_error_code(&b.r, 429, "budget_exceeded");
    char *ra = http_header(&b.r, "retry-after");
    assert_non_null(ra);
    assert_string_equal(ra, "1"); /* the rest is held by a request in flight */
    free(ra);
    http_resp_free(&b.r);
    pthread_join(th, NULL);
    assert_int_equal(a.r.status, 200);
    long long spent = cost_header(&a.r);
    http_resp_free(&a.r);

    /* Six concurrent requests (on two workers), room for one: exactly one starts. */
    long long budget = spent + est + est / 2;
    snprintf(patch, sizeof(patch), "{\"budget\":{\"usd\":\"%lld.%09lld\",\"period\":\"total\"}}",
             budget / 1000000000LL, budget % 1000000000LL);
    json_decref(admin(e, "PATCH", path, patch, 200));
    struct call many[6];
    pthread_t tm[6];
    for (int i = 0; i < 6; i++) {
        many[i] = (struct call){e, secret, slow, "race-n", {0}};
        assert_int_equal(pthread_create(&tm[i], NULL, call_main, &many[i]), 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(tm[i], NULL);
    }
    int ok = 0;
    int refused = 0;
    for (int i = 0; i < 6; i++) {
        if (many[i].r.status == 200) {
            ok++;
            spent += cost_header(&many[i].r);
        } else {
            assert_error_code(&many[i].r, 429, "budget_exceeded");
            refused++;
        }
        http_resp_free(&many[i].r);
    }
    assert_int_equal(ok, 1);
    assert_int_equal(refused, 5);
    json_t *k = wait_idle(e, id);
    assert_int_equal(spend_field(k, "usd"), spent);
    assert_true(spent <= budget); /* the estimate bounds the real cost here: no overshoot */
    json_decref(k);
    free(secret);
    free(id);
}

/* ------------------------------------------------------------------ rate limits */

static void test_rate_limits(void **state)
{
    struct env *e = *state;
    char *secret = NULL;
    char *id = NULL;
    create_key(e, "{\"rpm\":2}", &secret, &id);
    struct call c = {e,
                     secret,
                     "{\"model\":\"mock-gpt\",\"messages\":[{\"role\":\"user\","
                     "\"content\":\"hi\"}]}",
                     "rpm",
                     {0}};
    for (int i = 0; i < 2; i++) {
        call_run(&c);
        assert_int_equal(c.r.status, 200);
        http_resp_free(&c.r);
    }
    call_run(&c);
    assert_error_code(&c.r, 429, "rate_limit_exceeded");
    char *ra = http_header(&c.r, "retry-after");
    assert_non_null(ra);
    assert_true(atol(ra) >= 1 && atol(ra) <= 60);
    free(ra);
    assert_non_null(strstr(c.r.body, "requests per minute"));
    http_resp_free(&c.r);
    free(secret);
    free(id);

    /* TPM: a first request passes an empty window; its tokens then fill it. */
    create_key(e, "{\"tpm\":5}", &secret, &id);
    c.secret = secret;
    c.body = "{\"model\":\"mock-gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"a b c "
             "[[words:10]]\"}]}";
    call_run(&c);
    assert_int_equal(c.r.status, 200);
    http_resp_free(&c.r);
    call_run(&c);
    assert_error_code(&c.r, 429, "rate_limit_exceeded");
    assert_non_null(strstr(c.r.body, "tokens per minute"));
    ra = http_header(&c.r, "retry-after");
    assert_non_null(ra);
    free(ra);
    http_resp_free(&c.r);
    json_t *k = get_key(e, id);
    assert_true(
        json_integer_value(json_object_get(json_object_get(k, "usage"), "tokens_last_minute")) > 5);
    json_decref(k);
    free(secret);
    free(id);
}

/* ------------------------------------------------------------------ restart */

static void test_restart_keeps_keys_and_spend(void **state)
{
    struct env *e = *state;
    char *secret = NULL;
    char *id = NULL;
    char *revoked = NULL;
    char *rid = NULL;
    create_key(e, "{\"name\":\"keep\",\"budget\":{\"usd\":2,\"period\":\"month\"},\"tpm\":100000}",
               &secret, &id);
    create_key(e, "{\"name\":\"gone\"}", &revoked, &rid);
    char path[80];
    snprintf(path, sizeof(path), "/admin/keys/%s", rid);
    json_decref(admin(e, "DELETE", path, NULL, 200));
    long long total = 0;
    struct call c = {e,
                     secret,
                     "{\"model\":\"pricey\",\"max_tokens\":5,\"messages\":[{\"role\":"
                     "\"user\",\"content\":\"x y\"}]}",
                     "rs",
                     {0}};
    for (int i = 0; i < 3; i++) {
        call_run(&c);
        assert_int_equal(c.r.status, 200);
        total += cost_header(&c.r);
        http_resp_free(&c.r);
    }
    /* Acknowledged: the committed spend (persisted_usd) has caught up. */
    long long deadline = mono_ms() + 5000;
    for (;;) {
        json_t *k = get_key(e, id);
        long long p = spend_field(k, "persisted_usd");
        json_decref(k);
        if (p == total) {
            break;
        }
        assert_true(mono_ms() < deadline);
        usleep(10000);
    }
    env_signal_gateway(e, SIGKILL);
    assert_int_equal(env_wait_gateway(e, 5000), 128 + SIGKILL);
    /* The harness would find the old run's "listening" line before the child truncates it. */
    unlink(e->gw.log_path);
    env_start_gateway(e, KEYS_CONFIG);

    json_t *k = get_key(e, id);
    assert_int_equal(spend_field(k, "usd"), total);
    assert_string_equal(json_string_value(json_object_get(k, "name")), "keep");
    assert_int_equal(json_integer_value(json_object_get(k, "tpm")), 100000);
    assert_string_equal(json_string_value(json_object_get(json_object_get(k, "budget"), "period")),
                        "month");
    json_decref(k);
    c.rid = "rs-after";
    call_run(&c);
    assert_int_equal(c.r.status, 200);
    http_resp_free(&c.r);
    c.secret = revoked;
    call_run(&c);
    assert_error_code(&c.r, 401, "invalid_api_key");
    http_resp_free(&c.r);
    free(secret);
    free(id);
    free(revoked);
    free(rid);
}

/* ------------------------------------------------------------------ crash under load */

struct load {
    uint16_t port;
    const char *secret;
    atomic_int *stop;
    int ok;
};

/* Requests on fresh connections until told to stop; failures (the gateway killed) are fine. */
static void *load_main(void *arg)
{
    struct load *l = arg;
    const char *body = "{\"model\":\"pricey\",\"max_tokens\":5,\"messages\":[{\"role\":"
                       "\"user\",\"content\":\"load test\"}]}";
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     l->secret, strlen(body), body);
    while (!atomic_load(l->stop)) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(l->port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
            close(fd);
            usleep(1000);
            continue;
        }
        char buf[4096];
        ssize_t got = 0;
        if (send(fd, req, (size_t)n, MSG_NOSIGNAL) == n) {
            ssize_t k;
            while ((k = recv(fd, buf + got, sizeof(buf) - 1 - (size_t)got, 0)) > 0) {
                got += k;
                if ((size_t)got >= sizeof(buf) - 1) {
                    got = 0; /* only the status line matters */
                }
            }
        }
        buf[got > 0 ? got : 0] = '\0';
        l->ok += strncmp(buf, "HTTP/1.1 200", 12) == 0;
        close(fd);
    }
    return NULL;
}

/* kill -9 while requests flow: every debit acknowledged before the kill is still there. */
static void test_kill9_under_load_keeps_acknowledged_spend(void **state)
{
    struct env *e = *state;
    char *secret = NULL;
    char *id = NULL;
    create_key(e, "{\"budget\":{\"usd\":1000,\"period\":\"total\"}}", &secret, &id);
    atomic_int stop = 0;
    struct load l[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        l[i] = (struct load){e->gw_port, secret, &stop, 0};
        assert_int_equal(pthread_create(&th[i], NULL, load_main, &l[i]), 0);
    }
    /* Wait for a good number of acknowledged debits while the load keeps running. */
    long long acked = 0;
    long long deadline = mono_ms() + 10000;
    while (mono_ms() < deadline) {
        json_t *k = get_key(e, id);
        acked = spend_field(k, "persisted_usd");
        json_decref(k);
        if (acked >= 100 * 1000000LL) { /* at least ~20 requests of ~5 tokens */
            break;
        }
        usleep(20000);
    }
    assert_true(acked > 0);
    env_signal_gateway(e, SIGKILL);
    assert_int_equal(env_wait_gateway(e, 5000), 128 + SIGKILL);
    atomic_store(&stop, 1);
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok += l[i].ok;
    }
    assert_true(ok > 0);
    unlink(e->gw.log_path);
    env_start_gateway(e, KEYS_CONFIG);
    json_t *k = get_key(e, id);
    long long after = spend_field(k, "usd");
    json_decref(k);
    if (after < acked) {
        fail_msg("acknowledged spend %lld lost: %lld after the restart", acked, after);
    }
    free(secret);
    free(id);
}

/* ------------------------------------------------------------------ /v1/completions */

static int setup_local(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    setenv("BR_IT_MASTER_KEY", MASTER_KEY, 1);
    start_env(e, BASE_CONFIG LOCAL_MODEL "auth:\n  master_key: env:BR_IT_MASTER_KEY\n");
    *state = e;
    return 0;
}

static void completion(struct env *e, const char *secret, const char *body, struct http_resp *r)
{
    char auth[128];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", secret);
    const char *h[] = {auth, NULL};
    http_request(e, "POST", "/v1/completions", h, body, r);
}

static void test_completions_same_check(void **state)
{
    struct env *e = *state;
    char *secret = NULL;
    char *id = NULL;
    create_key(e, "{\"budget\":{\"usd\":1,\"period\":\"day\"},\"models\":[\"stories260k\"]}",
               &secret, &id);
    const char *body = "{\"model\":\"stories260k\",\"prompt\":\"Once upon a time\","
                       "\"max_tokens\":12,\"temperature\":0}";
    struct http_resp r;
    completion(e, secret, body, &r);
    assert_int_equal(r.status, 200);
    long long cost = cost_header(&r);
    assert_true(cost > 0);
    http_resp_free(&r);
    json_t *k = wait_idle(e, id);
    assert_int_equal(spend_field(k, "usd"), cost);
    assert_int_equal(spend_field(k, "reserved_usd"), 0);
    json_decref(k);
    /* A streamed completion is debited too. */
    completion(e, secret,
               "{\"model\":\"stories260k\",\"prompt\":\"Once\",\"max_tokens\":5,"
               "\"stream\":true}",
               &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    k = wait_idle(e, id);
    long long after = spend_field(k, "usd");
    assert_true(after > cost);
    json_decref(k);
    /* Budget: the estimate (12 output tokens at $0.001) no longer fits. */
    char path[80];
    char patch[160];
    snprintf(path, sizeof(path), "/admin/keys/%s", id);
    snprintf(patch, sizeof(patch), "{\"budget\":{\"usd\":\"0.%09lld\",\"period\":\"day\"}}",
             after + 1000000);
    json_decref(admin(e, "PATCH", path, patch, 200));
    completion(e, secret, body, &r);
    assert_error_code(&r, 429, "budget_exceeded");
    http_resp_free(&r);
    /* Models list: the local model is no longer allowed. */
    json_decref(admin(e, "PATCH", path, "{\"budget\":null,\"models\":[\"mock-gpt\"]}", 200));
    completion(e, secret, body, &r);
    assert_error_code(&r, 403, "model_not_allowed");
    http_resp_free(&r);
    free(secret);
    free(id);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_key_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_debits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_keeps_keys_and_spend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_under_load_keeps_acknowledged_spend, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_completions_same_check, setup_local, teardown),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("keys", tests, NULL, NULL);
}
