/* SPDX-License-Identifier: MIT */
/*
 * Overload protection as a client sees it: past the connection limit, and past a model's
 * in-flight limit and queue, the answer is an immediate 503 with Retry-After (never a hang or a
 * timeout) while queued requests complete in order; a client that does not read a long stream
 * is dropped once the gateway holds 256 KiB for it (upstream canceled, row logged as aborted);
 * a 64 MiB body is refused before anything goes upstream; 1,000 slowloris connections
 * (slowhttptest) do not stop normal clients; kill -9 during heavy logging loses no committed row.
 */
#define _DEFAULT_SOURCE /* usleep */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "br_test.h"
#include "common.h"

#define MODEL_ENTRY(name, extra)                 \
    "  - name: " name "\n"                       \
    "    provider: openai\n"                     \
    "    model: gpt-4o-mini\n"                   \
    "    base_url: http://127.0.0.1:{MOCK}/v1\n" \
    "    api_key: env:BR_IT_PROVIDER_KEY\n"      \
    "    price: {input: 0.15, output: 0.60}\n"   \
    "    timeouts: {connect: 1s, first_byte: 20s, idle: 5s}\n" extra

/* Two workers, so that the connection count and the model gates are shared across threads. */
#define OVERLOAD_CONFIG                                                                   \
    "server:\n"                                                                           \
    "  workers: 2\n"                                                                      \
    "  timeouts: {drain: 5s}\n"                                                           \
    "resilience:\n"                                                                       \
    "  retry: {attempts: 0}\n"                                                            \
    "  breaker: off\n"                                                                    \
    "models:\n" MODEL_ENTRY("mock-gpt", "") MODEL_ENTRY("gated", "    max_in_flight: 2\n" \
                                                                 "    queue: 2\n")

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    start_env(e, OVERLOAD_CONFIG);
    *state = e;
    return 0;
}

static int setup_conns(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    start_env(e, "server:\n  workers: 2\n  limits: {connections: 4}\n  timeouts: {drain: "
                 "5s}\nmodels:\n" MODEL_ENTRY("mock-gpt", ""));
    *state = e;
    return 0;
}

static int setup_plain(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    start_env(
        e, "server:\n  workers: 2\n  timeouts: {drain: 5s}\nmodels:\n" MODEL_ENTRY("mock-gpt", ""));
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

static int connect_gw(const struct env *e)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(e->gw_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* Reads until close or until `until` shows up or timeout_ms pass; returns the text (malloc'd). */
static char *read_some(int fd, const char *until, int timeout_ms)
{
    size_t cap = 65536;
    size_t got = 0;
    char *buf = malloc(cap);
    buf[0] = '\0';
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) {
            continue;
        }
        if (got + 4097 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t k = recv(fd, buf + got, 4096, 0);
        if (k <= 0) {
            break;
        }
        got += (size_t)k;
        buf[got] = '\0';
        if (until && strstr(buf, until)) {
            break;
        }
    }
    return buf;
}

static char *error_code(const char *body)
{
    json_t *j = parse_json(body);
    json_t *err = json_object_get(j, "error");
    assert_true(json_is_object(err));
    assert_true(json_is_string(json_object_get(err, "message")));
    assert_true(json_object_get(err, "type") != NULL);
    json_t *code = json_object_get(err, "code");
    char *c = json_is_string(code) ? strdup(json_string_value(code)) : NULL;
    json_decref(j);
    return c;
}

/* ------------------------------------------------------------------ connections */

static void test_max_connections_503_at_once(void **state)
{
    struct env *e = *state;
    static const char health[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = connect_gw(e);
        assert_int_equal(send(fds[i], health, sizeof(health) - 1, 0), (ssize_t)sizeof(health) - 1);
        char *r = read_some(fds[i], "\r\n\r\n", 3000);
        assert_non_null(strstr(r, "HTTP/1.1 200"));
        free(r);
    }
    /* The fifth connection is answered at once, without sending a byte, and closed. */
    long long t0 = now_ms();
    int fd = connect_gw(e);
    char *r = read_some(fd, NULL, 3000);
    long long took = now_ms() - t0;
    close(fd);
    if (!strstr(r, "HTTP/1.1 503")) {
        fail_msg("fifth connection: %.300s", r);
    }
    assert_true(took < 1000);
    assert_non_null(strstr(r, "Retry-After: 1"));
    assert_non_null(strstr(r, "Connection: close"));
    char *code = error_code(strstr(r, "\r\n\r\n") + 4);
    assert_string_equal(code, "too_many_connections");
    free(code);
    free(r);
    /* Once one of the four goes away, a new connection is served again. */
    close(fds[0]);
    bool served = false;
    for (int i = 0; i < 50 && !served; i++) {
        usleep(20000);
        fd = connect_gw(e);
        assert_int_equal(send(fd, health, sizeof(health) - 1, MSG_NOSIGNAL),
                         (ssize_t)sizeof(health) - 1);
        r = read_some(fd, "\r\n\r\n", 3000);
        served = strstr(r, "HTTP/1.1 200") != NULL;
        free(r);
        close(fd);
    }
    assert_true(served);
    for (int i = 1; i < 4; i++) {
        close(fds[i]);
    }
}

/* ------------------------------------------------------------------ per-model gate */

struct caller {
    struct env *e;
    const char *id;
    int delay_ms; /* upstream delay before the answer */
    long status;
    long long done_ms;
    char *body;
    char *retry_after;
};

static void *caller_main(void *arg)
{
    struct caller *c = arg;
    char text[64];
    snprintf(text, sizeof(text), "hi [[delay:%d]]", c->delay_ms);
    char *body = chat_body("gated", text, false, "\"max_tokens\":10");
    char hid[96];
    snprintf(hid, sizeof(hid), "x-request-id: %s", c->id);
    const char *h[] = {hid, NULL};
    struct http_resp r;
    http_request(c->e, "POST", "/v1/chat/completions", h, body, &r);
    c->done_ms = now_ms();
    c->status = r.status;
    c->body = strdup(r.body ? r.body : "");
    c->retry_after = http_header(&r, "retry-after");
    http_resp_free(&r);
    free(body);
    return NULL;
}

static void test_model_in_flight_and_queue(void **state)
{
    struct env *e = *state;
    struct http_resp warm;
    http_request(e, "GET", "/health", NULL, NULL, &warm); /* curl's global init, once */
    http_resp_free(&warm);
    /* Two in flight (a ends at ~400 ms, b at ~800 ms), then c and d queued in that order: c
     * must take a's slot (ends ~1000 ms) and d b's (ends ~1400 ms). */
    struct caller cs[4] = {
        {e, "gate-a", 400, 0, 0, NULL, NULL},
        {e, "gate-b", 800, 0, 0, NULL, NULL},
        {e, "gate-c", 600, 0, 0, NULL, NULL},
        {e, "gate-d", 600, 0, 0, NULL, NULL},
    };
    pthread_t th[4];
    long long t0 = now_ms();
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, caller_main, &cs[i]), 0);
        usleep(60000); /* arrival order a, b, c, d */
    }
    /* Two in flight and two queued, as the metrics say ... */
    struct http_resp m;
    http_request(e, "GET", "/metrics", NULL, NULL, &m);
    if (!strstr(m.body, "brigade_model_in_flight{model=\"gated\"} 2") ||
        !strstr(m.body, "brigade_model_queued{model=\"gated\"} 2")) {
        const char *p = strstr(m.body, "brigade_model_in_flight{");
        fail_msg("gate gauges: %.200s", p ? p : "(none)");
    }
    http_resp_free(&m);
    /* ... so the next one is refused at once. */
    struct caller x = {e, "gate-x", 10, 0, 0, NULL, NULL};
    long long tx = now_ms();
    caller_main(&x);
    assert_true(x.done_ms - tx < 300);
    assert_int_equal(x.status, 503);
    assert_non_null(x.retry_after);
    assert_string_equal(x.retry_after, "1");
    char *code = error_code(x.body);
    assert_string_equal(code, "upstream_overloaded");
    free(code);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        if (cs[i].status != 200) {
            fail_msg("%s: %ld %s", cs[i].id, cs[i].status, cs[i].body);
        }
    }
    print_message("done at a=%lld b=%lld c=%lld d=%lld ms\n", cs[0].done_ms - t0,
                  cs[1].done_ms - t0, cs[2].done_ms - t0, cs[3].done_ms - t0);
    assert_true(cs[2].done_ms < cs[3].done_ms); /* FIFO: c started before d */
    assert_true(cs[2].done_ms - t0 >= 900);     /* c waited for a's slot */
    assert_true(cs[3].done_ms - t0 >= 1300);    /* d waited for b's slot */
    assert_true(db_wait_rows(e, 5));
    assert_int_equal(db_int(e, "SELECT status FROM requests WHERE id='gate-x'"), 503);
    char *k = db_text(e, "SELECT error_kind FROM requests WHERE id='gate-x'");
    assert_string_equal(k, "upstream_overloaded");
    free(k);
    /* The refused request never reached the upstream: four calls only. */
    char *stats = mock_get(e, "/_mock/stats");
    json_t *j = parse_json(stats);
    assert_int_equal(json_integer_value(json_object_get(j, "requests")), 4);
    json_decref(j);
    free(stats);
    for (int i = 0; i < 4; i++) {
        free(cs[i].body);
        free(cs[i].retry_after);
    }
    free(x.body);
    free(x.retry_after);
}

/* A queued client that hangs up gives its place back: the queue is not clogged by it. */
static void test_model_queue_cancel(void **state)
{
    struct env *e = *state;
    struct http_resp warm;
    http_request(e, "GET", "/health", NULL, NULL, &warm);
    http_resp_free(&warm);
    struct caller cs[2] = {{e, "q-a", 700, 0, 0, NULL, NULL}, {e, "q-b", 700, 0, 0, NULL, NULL}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, caller_main, &cs[i]), 0);
    }
    usleep(150000);
    /* Two raw clients queue, then hang up. */
    char *body = chat_body("gated", "hi", false, "\"max_tokens\":10");
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    free(body);
    for (int i = 0; i < 2; i++) {
        int fd = connect_gw(e);
        assert_int_equal(send(fd, req, (size_t)n, 0), n);
        usleep(50000);
        close(fd);
    }
    usleep(100000);
    /* Their places are free again: one more request queues instead of a 503. */
    struct caller q = {e, "q-c", 10, 0, 0, NULL, NULL};
    caller_main(&q);
    assert_int_equal(q.status, 200);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(cs[i].status, 200);
        free(cs[i].body);
        free(cs[i].retry_after);
    }
    free(q.body);
    free(q.retry_after);
}

/* ------------------------------------------------------------------ slow reader */

static long rss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return -1;
    }
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    return kib;
}

static void test_slow_reader_dropped(void **state)
{
    struct env *e = *state;
    mock_reset(e);
    const char *body = "{\"model\":\"mock-gpt\",\"stream\":true,\"messages\":[{\"role\":\"user\","
                       "\"content\":\"go [[words:100000]]\"}]}";
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: slow-1\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    long rss0 = rss_kib(e->gw.pid);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096; /* keep the kernel's share small: the gateway must hold the rest */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(e->gw_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(send(fd, req, (size_t)n, 0), n);
    /* Read nothing until the gateway has given up on us. */
    long rss_max = rss0;
    bool dropped = false;
    long long deadline = now_ms() + 30000;
    while (!dropped && now_ms() < deadline) {
        long r = rss_kib(e->gw.pid);
        rss_max = r > rss_max ? r : rss_max;
        dropped = env_wait_log(e, "event=http_slow_client", 100);
    }
    if (!dropped) {
        char *log = env_gateway_log(e);
        size_t ll = strlen(log);
        char *stats = mock_get(e, "/_mock/stats");
        fail_msg("not dropped; mock %s; gateway log: %s", stats, log + (ll > 3000 ? ll - 3000 : 0));
    }
    /* Both sides closed: the client sees the end of the connection... */
    char *rest = read_some(fd, NULL, 5000);
    free(rest);
    char one;
    assert_true(recv(fd, &one, 1, MSG_DONTWAIT) <= 0);
    close(fd);
    /* ... and the upstream stream was abandoned before its end. */
    json_t *st = NULL;
    for (int i = 0; i < 100; i++) {
        char *s = mock_get(e, "/_mock/stats");
        json_decref(st);
        st = parse_json(s);
        free(s);
        if (json_integer_value(json_object_get(st, "streams_aborted")) >= 1) {
            break;
        }
        usleep(50000);
    }
    assert_int_equal(json_integer_value(json_object_get(st, "streams_aborted")), 1);
    assert_int_equal(json_integer_value(json_object_get(st, "streams_completed")), 0);
    json_decref(st);
    /* The gateway held at most the stream buffer (256 KiB) plus one write for this client. */
    char *log = env_gateway_log(e);
    const char *p = strstr(log, "event=http_slow_client");
    const char *q = p ? strstr(p, "pending=") : NULL;
    assert_non_null(q);
    long pending = strtol(q + 8, NULL, 10);
    free(log);
    print_message("slow reader: gateway held %ld bytes when it dropped the client; RSS %ld -> "
                  "max %ld KiB\n",
                  pending, rss0, rss_max);
    assert_true(pending > 256 * 1024 && pending <= 256 * 1024 + 64 * 1024);
    /* RSS (ASan build: redzones and quarantine included) grows far less than the 10+ MiB the
     * stream carries. */
    assert_true(rss_max - rss0 < 48 * 1024);
    assert_true(db_wait_rows(e, 1));
    assert_int_equal(db_int(e, "SELECT status FROM requests WHERE id='slow-1'"), 499);
    char *k = db_text(e, "SELECT error_kind FROM requests WHERE id='slow-1'");
    assert_string_equal(k, "aborted_slow_client");
    free(k);
}

/* ------------------------------------------------------------------ 64 MiB body */

static void test_64mib_body_413_nothing_upstream(void **state)
{
    struct env *e = *state;
    mock_reset(e);
    /* Announced by Content-Length: refused before a body byte is read. */
    const char *head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                       "Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n";
    long long t0 = now_ms();
    char *r = raw_exchange(e->gw_port, head, strlen(head), 3000);
    assert_true(now_ms() - t0 < 2000);
    if (!strstr(r, "HTTP/1.1 413")) {
        fail_msg("64 MiB Content-Length: %.300s", r);
    }
    char *code = error_code(strstr(r, "\r\n\r\n") + 4);
    assert_non_null(code);
    free(code);
    free(r);
    /* Chunked, really sent: refused once the 16 MiB limit is passed, long before 64 MiB. */
    int fd = connect_gw(e);
    const char *chead = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(send(fd, chead, strlen(chead), 0), (ssize_t)strlen(chead));
    size_t chunk = 1 << 20;
    char *data = malloc(chunk + 32);
    int hl = snprintf(data, 32, "%zx\r\n", chunk);
    memset(data + hl, 'a', chunk);
    memcpy(data + hl + chunk, "\r\n", 2);
    size_t sent = 0;
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    long long deadline = now_ms() + 20000;
    size_t off = 0;
    size_t len = (size_t)hl + chunk + 2;
    bool refused = false;
    while (sent < (size_t)64 << 20 && now_ms() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT};
        if (poll(&p, 1, 100) <= 0) {
            continue;
        }
        if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
            refused = true;
            break;
        }
        ssize_t k = send(fd, data + off, len - off, MSG_NOSIGNAL);
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            continue;
        }
        if (k <= 0) {
            refused = true;
            break;
        }
        off += (size_t)k;
        if (off == len) {
            off = 0;
            sent += chunk;
        }
    }
    free(data);
    fcntl(fd, F_SETFL, flags);
    assert_true(refused);
    assert_true(sent < (size_t)64 << 20);
    char *cr = read_some(fd, "}}", 3000);
    close(fd);
    if (!strstr(cr, "HTTP/1.1 413")) {
        fail_msg("chunked 64 MiB body after %zu bytes: %.300s", sent, cr);
    }
    free(cr);
    char *stats = mock_get(e, "/_mock/stats");
    json_t *j = parse_json(stats);
    assert_int_equal(json_integer_value(json_object_get(j, "requests")), 0);
    json_decref(j);
    free(stats);
}

/* A 64 MiB answer is over the upstream body cap (64 MiB): refused from its Content-Length,
 * before the body is read, and the client gets a 502 in OpenAI's shape. */
static void test_64mib_answer_502(void **state)
{
    struct env *e = *state;
    mock_reset(e);
    char *body = chat_body("mock-gpt", "hi [[fault:huge_body]]", false, "\"max_tokens\":10");
    const char *h[] = {"x-request-id: huge-1", NULL};
    long rss0 = rss_kib(e->gw.pid);
    long long t0 = now_ms();
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", h, body, &r);
    long long took = now_ms() - t0;
    long rss1 = rss_kib(e->gw.pid);
    free(body);
    print_message("64 MiB answer: %ld in %lld ms, RSS %ld -> %ld KiB: %s\n", r.status, took, rss0,
                  rss1, r.body);
    assert_int_equal(r.status, 502);
    char *code = error_code(r.body);
    assert_non_null(code);
    free(code);
    http_resp_free(&r);
    assert_true(took < 3000);
    assert_true(rss1 - rss0 < 32 * 1024); /* the body was never buffered */
    assert_true(db_wait_rows(e, 1));
    assert_int_equal(db_int(e, "SELECT status FROM requests WHERE id='huge-1'"), 502);
    char *k = db_text(e, "SELECT error_kind FROM requests WHERE id='huge-1'");
    assert_string_equal(k, "upstream_too_large");
    free(k);
}

/* ------------------------------------------------------------------ slowloris */

struct probe_stats {
    int ok;
    int total;
    long long max_ms;
    long long sum_ms;
};

static void probe_once(struct env *e, struct probe_stats *ps)
{
    char *body = chat_body("mock-gpt", "hello there", false, "\"max_tokens\":10");
    long long t0 = now_ms();
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    long long ms = now_ms() - t0;
    ps->total++;
    ps->ok += r.status == 200;
    ps->sum_ms += ms;
    ps->max_ms = ms > ps->max_ms ? ms : ps->max_ms;
    http_resp_free(&r);
    free(body);
}

/* Established connections to port (from /proc/net/tcp, IPv4 loopback). */
static int established_to(uint16_t port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (!f) {
        return -1;
    }
    char line[512];
    int n = 0;
    char want[16];
    snprintf(want, sizeof(want), ":%04X ", port);
    while (fgets(line, sizeof(line), f)) {
        /* local_address is the 2nd field, state (01 = ESTABLISHED) the 4th */
        char local[64];
        char remote[64];
        char st[8];
        if (sscanf(line, "%*s %63s %63s %7s", local, remote, st) == 3 && strcmp(st, "01") == 0) {
            size_t ll = strlen(local);
            if (ll > 5 && strncmp(local + ll - 5, want, 5) == 0) {
                n++;
            }
        }
    }
    fclose(f);
    return n;
}

static void test_slowloris_1000_connections(void **state)
{
    struct env *e = *state;
    if (access("/usr/bin/slowhttptest", X_OK) != 0) {
        print_message("SKIPPED: slowhttptest is not installed (apt-get install slowhttptest, or "
                      "scripts/install-deps.sh)\n");
        skip();
    }
    /* 1,000 connections need as many descriptors in the gateway (started by setup, after
     * main raised the limit) and in slowhttptest. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < 2048) {
        print_message("SKIPPED: RLIMIT_NOFILE is below 2048 (ulimit -n); 1,000 connections need "
                      "more\n");
        skip();
    }
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/health", e->gw_port);
    char out[300];
    snprintf(out, sizeof(out), "%s/slowhttptest.out", e->dir);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *o = freopen(out, "w", stdout);
        (void)o;
        (void)dup2(1, 2);
        /* 1,000 slowloris connections at 500/s, a header line every 5 s, for 20 s. */
        execl("/usr/bin/slowhttptest", "slowhttptest", "-H", "-c", "1000", "-r", "500", "-i", "5",
              "-l", "20", "-x", "10", "-p", "2", "-u", url, (char *)NULL);
        _exit(127);
    }
    assert_true(pid > 0);
    struct http_resp warm;
    http_request(e, "GET", "/health", NULL, NULL, &warm);
    http_resp_free(&warm);
    /* Wait for the attack to be in place. */
    int peak = 0;
    long long deadline = now_ms() + 8000;
    while (now_ms() < deadline && peak < 950) {
        int n = established_to(e->gw_port);
        peak = n > peak ? n : peak;
        usleep(100000);
    }
    /* Normal clients while the connections hang on. */
    struct probe_stats ps = {0};
    long long until = now_ms() + 8000;
    int during = 0;
    while (now_ms() < until) {
        probe_once(e, &ps);
        int n = established_to(e->gw_port);
        during = n > during ? n : during;
        usleep(20000);
    }
    int st = 0;
    kill(pid, SIGTERM);
    waitpid(pid, &st, 0);
    print_message("slowloris: %d connections established at peak (%d while probing); normal "
                  "clients: %d/%d ok, mean %.1f ms, max %lld ms\n",
                  peak, during, ps.ok, ps.total, ps.total ? (double)ps.sum_ms / ps.total : 0.0,
                  ps.max_ms);
    assert_true(peak >= 950);
    assert_true(during >= 900);
    assert_true(ps.total >= 50);
    assert_int_equal(ps.ok, ps.total);
    assert_true(ps.max_ms < 1000);
    /* And the gateway is still fine afterwards. */
    struct probe_stats after = {0};
    probe_once(e, &after);
    assert_int_equal(after.ok, 1);
}

/* ------------------------------------------------------------------ kill -9 */

struct load {
    uint16_t port;
    atomic_int *stop;
    int ok;
};

static void *load_main(void *arg)
{
    struct load *l = arg;
    const char *body = "{\"model\":\"mock-gpt\",\"max_tokens\":5,\"messages\":[{\"role\":"
                       "\"user\",\"content\":\"load test\"}]}";
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
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
                    got = 0;
                }
            }
        }
        buf[got > 0 ? got : 0] = '\0';
        l->ok += strncmp(buf, "HTTP/1.1 200", 12) == 0;
        close(fd);
    }
    return NULL;
}

/* brigade_log_rows_written: rows the store writer has committed (WAL) so far. */
static long long rows_committed(struct env *e)
{
    struct http_resp r;
    http_request(e, "GET", "/metrics", NULL, NULL, &r);
    long long v = -1;
    const char *p = r.body ? strstr(r.body, "\nbrigade_log_rows_written ") : NULL;
    if (p) {
        v = strtoll(p + strlen("\nbrigade_log_rows_written "), NULL, 10);
    }
    http_resp_free(&r);
    return v;
}

/*
 * kill -9 while requests flow and are logged: every row the store reported committed before
 * the kill (its `written` count, which moves only after a batch's COMMIT returned) is in the
 * database afterwards.
 */
static void test_kill9_keeps_committed_rows(void **state)
{
    struct env *e = *state;
    atomic_int stop = 0;
    struct load l[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        l[i] = (struct load){e->gw_port, &stop, 0};
        assert_int_equal(pthread_create(&th[i], NULL, load_main, &l[i]), 0);
    }
    long long acked = 0;
    long long deadline = now_ms() + 10000;
    while (now_ms() < deadline && acked < 300) {
        acked = rows_committed(e);
        usleep(20000);
    }
    acked = rows_committed(e);
    assert_true(acked >= 50);
    env_signal_gateway(e, SIGKILL);
    assert_int_equal(env_wait_gateway(e, 5000), 128 + SIGKILL);
    atomic_store(&stop, 1);
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok += l[i].ok;
    }
    long long rows = db_int(e, "SELECT COUNT(*) FROM requests");
    print_message("kill -9: %lld rows committed before the kill, %lld in the database, %d answers "
                  "received\n",
                  acked, rows, ok);
    if (rows < acked) {
        fail_msg("committed rows lost: %lld acknowledged, %lld after the kill", acked, rows);
    }
    char *ic = db_text(e, "PRAGMA integrity_check");
    assert_string_equal(ic, "ok");
    free(ic);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    /* Raise the descriptor limit (inherited by the gateway and slowhttptest) up to the hard
     * limit, for the 1,000-connection test. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_max_connections_503_at_once, setup_conns, teardown),
        cmocka_unit_test_setup_teardown(test_model_in_flight_and_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_model_queue_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_reader_dropped, setup_plain, teardown),
        cmocka_unit_test_setup_teardown(test_64mib_body_413_nothing_upstream, setup_plain,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_64mib_answer_502, setup_plain, teardown),
        cmocka_unit_test_setup_teardown(test_slowloris_1000_connections, setup_plain, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_keeps_committed_rows, setup_plain, teardown),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("overload", tests, NULL, NULL);
}
