/* SPDX-License-Identifier: MIT */
/*
 * The upstream HTTP client against a real scripted server on 127.0.0.1: bodies whole and in
 * pieces, keep-alive, status handling, every timeout, connection failures, cancellation from
 * every place, size caps and many concurrent calls. Each of those cases runs twice, as
 * <case>_native (the default backend, which takes http:// URLs) and <case>_curl
 * (BR_UPSTREAM_BACKEND_CURL). The native_* cases cover what only the native client does:
 * its pool (dead and closed connections, Connection: close, HTTP/1.0, idle cap), name
 * resolution, close-delimited bodies and the exact request head it writes.
 */
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "unit/upstream/test_server.h"
#include "upstream/upstream.h"

struct ctx;

struct rec {
    struct ctx *ctx;
    br_upstream_call *call;
    int n_head;
    int status;
    char x_test[64];
    char content_type[64];
    char body[1 << 16];
    size_t body_len;
    int n_data;
    int n_done;
    struct br_upstream_stats stats;
    char error_text[512];
    bool in_start;          /* set while br_upstream_call_start runs */
    bool callback_in_start; /* a callback ran inside call_start */
    bool cancel_on_data;    /* cancel this call in its first on_data */
    bool cancel_on_head;
    struct rec *cancel_other;  /* cancel that call in this call's first on_data */
    struct rec *start_on_head; /* start that call from this call's on_head */
    const struct br_upstream_request *start_req;
    int chain_left; /* start the same request again from on_done this many times */
    const struct br_upstream_request *chain_req;
    struct rec *chain; /* records for the chained calls */
};

struct ctx {
    uv_loop_t loop;
    uv_timer_t guard;
    br_upstream *u;
    int done;
    int expect;
    bool timed_out;
};

static void on_head(void *user, const struct br_upstream_head *head);
static void on_data(void *user, const char *data, size_t n);
static void on_done(void *user, const struct br_upstream_stats *stats);

static const struct br_upstream_callbacks cbs = {on_head, on_data, on_done};

static void start(struct ctx *ctx, struct rec *r, const struct br_upstream_request *req)
{
    r->ctx = ctx;
    r->in_start = true;
    int rc = br_upstream_call_start(ctx->u, req, &cbs, r, &r->call);
    r->in_start = false;
    assert_int_equal(rc, BR_OK);
}

static void on_head(void *user, const struct br_upstream_head *head)
{
    struct rec *r = user;
    r->callback_in_start |= r->in_start;
    r->n_head++;
    r->status = head->status;
    for (size_t i = 0; i < head->n_headers; i++) {
        const struct br_upstream_header *h = &head->headers[i];
        if (br_slice_case_eq_cstr(h->name, "x-test")) {
            snprintf(r->x_test, sizeof(r->x_test), "%.*s", (int)h->value.len, h->value.ptr);
        }
        if (br_slice_case_eq_cstr(h->name, "content-type")) {
            snprintf(r->content_type, sizeof(r->content_type), "%.*s", (int)h->value.len,
                     h->value.ptr);
        }
    }
    if (r->start_on_head) {
        start(r->ctx, r->start_on_head, r->start_req);
    }
    if (r->cancel_on_head) {
        br_upstream_call_cancel(r->call);
        r->ctx->done++;
    }
}

static void on_data(void *user, const char *data, size_t n)
{
    struct rec *r = user;
    r->callback_in_start |= r->in_start;
    if (r->body_len + n <= sizeof(r->body)) {
        memcpy(r->body + r->body_len, data, n);
        r->body_len += n;
    }
    r->n_data++;
    if (r->n_data == 1 && r->cancel_other) {
        br_upstream_call_cancel(r->cancel_other->call);
        r->ctx->done++;
    }
    if (r->n_data == 1 && r->cancel_on_data) {
        br_upstream_call_cancel(r->call);
        r->ctx->done++;
        if (r->ctx->done >= r->ctx->expect) {
            uv_stop(&r->ctx->loop);
        }
    }
}

static void on_done(void *user, const struct br_upstream_stats *stats)
{
    struct rec *r = user;
    r->callback_in_start |= r->in_start;
    r->n_done++;
    r->stats = *stats;
    if (stats->error_text) {
        snprintf(r->error_text, sizeof(r->error_text), "%s", stats->error_text);
    }
    r->stats.error_text = NULL;
    struct ctx *ctx = r->ctx;
    if (r->chain_left > 0) {
        r->chain->chain_left = r->chain_left - 1;
        r->chain->chain_req = r->chain_req;
        r->chain->chain = r->chain + 1;
        start(ctx, r->chain, r->chain_req);
    }
    ctx->done++;
    if (ctx->done >= ctx->expect) {
        uv_stop(&ctx->loop);
    }
}

static void guard_cb(uv_timer_t *t)
{
    struct ctx *ctx = t->data;
    ctx->timed_out = true;
    uv_stop(&ctx->loop);
}

/* The backend of the case running (set by the _native / _curl wrappers). */
static enum br_upstream_backend backend;

static void ctx_init(struct ctx *ctx, const struct br_upstream_opts *opts)
{
    memset(ctx, 0, sizeof(*ctx));
    assert_int_equal(uv_loop_init(&ctx->loop), 0);
    uv_timer_init(&ctx->loop, &ctx->guard);
    ctx->guard.data = ctx;
    struct br_upstream_opts o = {0};
    if (opts) {
        o = *opts;
    }
    o.backend = backend;
    assert_int_equal(br_upstream_create(&ctx->loop, &o, &ctx->u), BR_OK);
}

/* Runs the loop until `expect` calls have ended, failing after max_ms. */
static void run(struct ctx *ctx, int expect, int max_ms)
{
    ctx->expect = expect;
    if (ctx->done >= expect) {
        return;
    }
    uv_timer_start(&ctx->guard, guard_cb, (uint64_t)max_ms, 0);
    uv_run(&ctx->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&ctx->guard);
    assert_false(ctx->timed_out);
    assert_true(ctx->done >= expect);
}

static void ctx_cleanup(struct ctx *ctx)
{
    br_upstream_destroy(ctx->u);
    uv_close((uv_handle_t *)&ctx->guard, NULL);
    uv_run(&ctx->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&ctx->loop), 0);
}

static struct br_upstream_request get_req(const char *url)
{
    struct br_upstream_request req = {.method = "GET", .url = url};
    req.connect_timeout_ms = 2000;
    req.first_byte_timeout_ms = 5000;
    req.idle_timeout_ms = 5000;
    return req;
}

static bool wait_counter(atomic_int *counter, int want, int max_ms)
{
    for (int waited = 0; waited < max_ms; waited += 5) {
        if (atomic_load(counter) >= want) {
            return true;
        }
        ts_sleep_ms(5);
    }
    return atomic_load(counter) >= want;
}

static int setup(void **state)
{
    (void)state;
    /* Like brigade's main: a peer closing mid-write must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    return br_upstream_global_init() == BR_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    br_upstream_global_cleanup();
    return 0;
}

/* ---- handlers ------------------------------------------------------------------------- */

static void h_hello(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: yes\r\n"
                   "Content-Type: text/plain\r\n\r\nhello");
}

static void h_echo(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)user;
    char head[256];
    bool has_key = strstr(req->head, "\r\nX-Key: abc\r\n") != NULL;
    bool no_expect = strstr(req->head, "Expect:") == NULL;
    snprintf(head, sizeof(head),
             "HTTP/1.1 201 Created\r\nContent-Length: %zu\r\nX-Test: %s-%s-%s\r\n\r\n",
             req->body_len, req->method, has_key ? "key" : "nokey",
             no_expect ? "noexpect" : "expect");
    ts_send_str(c, head);
    ts_send(c, req->body, req->body_len);
}

static void h_chunked_slow(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    static const char *const parts[] = {"alpha ", "beta ", "gamma ", "delta"};
    for (int i = 0; i < 4; i++) {
        ts_sleep_ms(30);
        ts_send_chunk(c, parts[i], strlen(parts[i]));
    }
    ts_send_str(c, "0\r\n\r\n");
}

static void h_silent(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_wait_peer_close(c, 5000);
    c->close_after = true;
}

static void h_stall_body(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial");
    ts_wait_peer_close(c, 5000);
    c->close_after = true;
}

static void h_trickle(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n");
    for (int i = 0; i < 6; i++) {
        ts_sleep_ms(100);
        ts_send(c, "x", 1);
    }
}

static void h_cut_body(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    c->close_after = true;
}

static void h_close_at_once(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    c->close_after = true;
}

static void h_endless(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 500; i++) {
        if (!ts_send_chunk(c, "tick\n", 5)) {
            atomic_fetch_add(&c->srv->n_peer_closed, 1);
            break;
        }
        ts_sleep_ms(10);
    }
    c->close_after = true;
}

static void h_big(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)user;
    char body[100];
    memset(body, 'b', sizeof(body));
    if (strcmp(req->path, "/chunked") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        ts_send_chunk(c, body, sizeof(body));
        ts_send_str(c, "0\r\n\r\n");
    } else {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
        ts_send(c, body, sizeof(body));
    }
}

static void h_continue(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 100 Continue\r\n\r\n");
    ts_sleep_ms(20);
    ts_send_str(c, "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                   "HTTP/1.1 200 OK\r\nX-Test: final\r\nContent-Length: 2\r\n\r\nok");
}

static void h_404(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
}

static void h_garbage(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "SMTP ready\r\n\r\n");
    c->close_after = true;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_get_success(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_hello, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/hello", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    assert_int_equal(br_upstream_active(ctx.u), 1);
    run(&ctx, 1, 5000);
    assert_int_equal(r.n_head, 1);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.x_test, "yes");
    assert_string_equal(r.content_type, "text/plain");
    assert_int_equal(r.body_len, 5);
    assert_memory_equal(r.body, "hello", 5);
    assert_int_equal(r.n_done, 1);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r.stats.http_version, 11);
    assert_false(r.stats.reused_connection);
    assert_true(r.stats.t_start_ns > 0);
    assert_true(r.stats.t_connected_ns >= r.stats.t_start_ns);
    assert_true(r.stats.t_first_byte_ns >= r.stats.t_connected_ns);
    assert_true(r.stats.t_done_ns >= r.stats.t_first_byte_ns);
    assert_false(r.callback_in_start);
    assert_int_equal(br_upstream_active(ctx.u), 0);
    assert_true(strncmp(srv.last_head, "GET /hello HTTP/1.1\r\n", 21) == 0);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_post_body_and_headers(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_echo, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    /* Large enough that curl would otherwise ask for 100-continue. */
    static char body[40000];
    for (size_t i = 0; i < sizeof(body); i++) {
        body[i] = (char)('a' + i % 26);
    }
    const char *headers[] = {"X-Key: abc", "Content-Type: application/json"};
    struct br_upstream_request req = get_req(ts_url(&srv, "/echo", url, sizeof(url)));
    req.method = "POST";
    req.headers = headers;
    req.n_headers = 2;
    req.body = br_slice_make(body, sizeof(body));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.x_test, "POST-key-noexpect");
    assert_int_equal(r.body_len, sizeof(body));
    assert_memory_equal(r.body, body, sizeof(body));
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_chunked_in_pieces(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_chunked_slow, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_true(r.n_data >= 3); /* the pieces arrived separately */
    assert_int_equal(r.body_len, strlen("alpha beta gamma delta"));
    assert_memory_equal(r.body, "alpha beta gamma delta", r.body_len);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_keepalive_reuse(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_hello, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r[5];
    memset(r, 0, sizeof(r));
    r[0].chain_left = 4;
    r[0].chain_req = &req;
    r[0].chain = &r[1];
    start(&ctx, &r[0], &req);
    run(&ctx, 5, 5000);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(r[i].n_done, 1);
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_memory_equal(r[i].body, "hello", 5);
        assert_int_equal(r[i].stats.reused_connection, i > 0);
        if (i > 0) {
            assert_int_equal(r[i].stats.t_connected_ns, r[i].stats.t_start_ns);
        }
    }
    assert_int_equal(atomic_load(&srv.n_accepted), 1);
    assert_int_equal(atomic_load(&srv.n_requests), 5);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_connection_refused(void **state)
{
    (void)state;
    /* A port that was just free: bind, read the port, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", ntohs(sa.sin_port));
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    struct br_upstream_request req = get_req(url);
    struct rec r = {0};
    start(&ctx, &r, &req);
    assert_int_equal(r.n_done, 0); /* never inside call_start */
    run(&ctx, 1, 5000);
    assert_int_equal(r.n_done, 1);
    assert_int_equal(r.n_head, 0);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_CONNECT);
    assert_true(strlen(r.error_text) > 0);
    assert_false(r.callback_in_start);
    ctx_cleanup(&ctx);
}

static void test_dns_failure(void **state)
{
    (void)state;
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    struct br_upstream_request req = get_req("http://no-such-host.invalid/");
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_DNS);
    ctx_cleanup(&ctx);
}

static void test_connect_timeout(void **state)
{
    (void)state;
    /* A listener with backlog 0 whose only queue slot is taken: further SYNs are dropped. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    socklen_t len = sizeof(sa);
    getsockname(lfd, (struct sockaddr *)&sa, &len);
    int filler = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(filler, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", ntohs(sa.sin_port));
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    struct br_upstream_request req = get_req(url);
    req.connect_timeout_ms = 200;
    struct rec r = {0};
    uint64_t t0 = br_clock_now_ns();
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    uint64_t ms = (br_clock_now_ns() - t0) / 1000000;
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_TIMEOUT_CONNECT);
    assert_true(ms >= 150 && ms < 2000);
    ctx_cleanup(&ctx);
    close(filler);
    close(lfd);
}

static void test_first_byte_timeout(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_silent, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    req.first_byte_timeout_ms = 200;
    struct rec r = {0};
    uint64_t t0 = br_clock_now_ns();
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    uint64_t ms = (br_clock_now_ns() - t0) / 1000000;
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE);
    assert_int_equal(r.n_head, 0);
    assert_true(ms >= 190 && ms < 2000);
    assert_true(r.stats.t_connected_ns > 0);
    /* The connection was dropped: the server sees the close. */
    assert_true(wait_counter(&srv.n_peer_closed, 1, 1000));
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_stall_body, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    req.idle_timeout_ms = 200;
    struct rec r = {0};
    uint64_t t0 = br_clock_now_ns();
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    uint64_t ms = (br_clock_now_ns() - t0) / 1000000;
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_TIMEOUT_IDLE);
    assert_int_equal(r.n_head, 1);
    assert_int_equal(r.body_len, 7);
    assert_true(ms >= 190 && ms < 2000);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_idle_timer_rearms(void **state)
{
    (void)state;
    /* A byte every 100 ms for 600 ms with a 250 ms idle timeout: never idle, so success. */
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_trickle, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    req.idle_timeout_ms = 250;
    req.first_byte_timeout_ms = 250;
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r.body_len, 6);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_closed_mid_body(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_cut_body, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_CLOSED);
    assert_int_equal(r.n_head, 1);
    assert_int_equal(r.body_len, 10);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_closed_before_response(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_close_at_once, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_CLOSED);
    assert_int_equal(r.n_head, 0);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_protocol_error(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_garbage, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_PROTOCOL);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_cancel_inside_on_data(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_endless, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    r.cancel_on_data = true;
    uint64_t t0 = br_clock_now_ns();
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.n_data, 1);
    assert_int_equal(r.n_done, 0);
    assert_int_equal(br_upstream_active(ctx.u), 0);
    /* The server notices the closed connection promptly (it would send for 5 s). */
    assert_true(wait_counter(&srv.n_peer_closed, 1, 2000));
    uint64_t ms = (br_clock_now_ns() - t0) / 1000000;
    assert_true(ms < 2000);
    /* The loop has nothing left to do. */
    uv_run(&ctx.loop, UV_RUN_NOWAIT);
    assert_int_equal(r.n_done, 0);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_cancel_inside_on_head(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_endless, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    r.cancel_on_head = true;
    start(&ctx, &r, &req);
    /* One more call so the loop has something to wait for after the cancel. */
    struct test_server srv2;
    assert_int_equal(ts_start(&srv2, h_chunked_slow, NULL), 0);
    char url2[128];
    struct br_upstream_request req2 = get_req(ts_url(&srv2, "/", url2, sizeof(url2)));
    struct rec r2 = {0};
    start(&ctx, &r2, &req2);
    run(&ctx, 2, 5000);
    assert_int_equal(r.n_head, 1);
    assert_int_equal(r.n_data, 0);
    assert_int_equal(r.n_done, 0);
    assert_int_equal(r2.n_done, 1);
    assert_int_equal(r2.stats.error, BR_UPSTREAM_ERROR_NONE);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
    ts_stop(&srv2);
}

static void test_cancel_other_call_from_callback(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_endless, NULL), 0);
    struct test_server srv_slow;
    assert_int_equal(ts_start(&srv_slow, h_silent, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    char url_slow[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct br_upstream_request req_slow =
        get_req(ts_url(&srv_slow, "/", url_slow, sizeof(url_slow)));
    struct rec victim = {0};
    struct rec killer = {0};
    start(&ctx, &victim, &req_slow);
    killer.cancel_other = &victim;
    killer.cancel_on_data = true;
    start(&ctx, &killer, &req);
    run(&ctx, 2, 5000);
    assert_int_equal(victim.n_done, 0);
    assert_int_equal(killer.n_done, 0);
    assert_int_equal(br_upstream_active(ctx.u), 0);
    assert_true(wait_counter(&srv_slow.n_peer_closed, 1, 2000));
    ctx_cleanup(&ctx);
    ts_stop(&srv);
    ts_stop(&srv_slow);
}

static void test_cancel_right_after_start(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_hello, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    br_upstream_call_cancel(r.call);
    assert_int_equal(br_upstream_active(ctx.u), 0);
    /* A second call proves the client still works and lets the loop run. */
    struct rec r2 = {0};
    start(&ctx, &r2, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.n_head + r.n_data + r.n_done, 0);
    assert_int_equal(r2.n_done, 1);
    assert_int_equal(r2.stats.error, BR_UPSTREAM_ERROR_NONE);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_start_inside_callback(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_hello, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec first = {0};
    struct rec second = {0};
    first.start_on_head = &second;
    first.start_req = &req;
    start(&ctx, &first, &req);
    run(&ctx, 2, 5000);
    assert_int_equal(first.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(second.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_memory_equal(second.body, "hello", 5);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_many_concurrent(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_echo, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    enum { N = 64 };
    static struct rec r[N];
    static char bodies[N][32];
    memset(r, 0, sizeof(r));
    char url[128];
    ts_url(&srv, "/", url, sizeof(url));
    struct br_upstream_request req[N];
    for (int i = 0; i < N; i++) {
        snprintf(bodies[i], sizeof(bodies[i]), "request number %d", i);
        req[i] = get_req(url);
        req[i].method = "POST";
        req[i].body = br_slice_from_cstr(bodies[i]);
        start(&ctx, &r[i], &req[i]);
    }
    assert_int_equal(br_upstream_active(ctx.u), N);
    run(&ctx, N, 10000);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].n_done, 1);
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_int_equal(r[i].body_len, strlen(bodies[i]));
        assert_memory_equal(r[i].body, bodies[i], r[i].body_len);
    }
    assert_int_equal(atomic_load(&srv.n_requests), N);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_body_cap(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_big, NULL), 0);
    struct br_upstream_opts opts = {.max_response_bytes = 50};
    struct ctx ctx;
    ctx_init(&ctx, &opts);
    char url[128];
    char url2[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/length", url, sizeof(url)));
    struct br_upstream_request req2 = get_req(ts_url(&srv, "/chunked", url2, sizeof(url2)));
    struct rec r = {0};
    struct rec r2 = {0};
    start(&ctx, &r, &req);
    start(&ctx, &r2, &req2);
    run(&ctx, 2, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_TOO_LARGE);
    assert_int_equal(r2.stats.error, BR_UPSTREAM_ERROR_TOO_LARGE);
    assert_true(r2.body_len <= 50);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_skips_1xx(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_continue, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r.n_head, 1);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.x_test, "final");
    assert_memory_equal(r.body, "ok", 2);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_http_error_status_is_not_a_failure(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_404, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r.status, 404);
    assert_memory_equal(r.body, "not found", 9);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_destroy_with_calls_in_flight(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_endless, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r[3];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 3; i++) {
        start(&ctx, &r[i], &req);
    }
    /* Let them get going, then tear down: no callback may follow. */
    for (int i = 0; i < 20; i++) {
        uv_run(&ctx.loop, UV_RUN_NOWAIT);
        ts_sleep_ms(5);
    }
    ctx_cleanup(&ctx);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].n_done, 0);
    }
    ts_stop(&srv);
}

static void test_invalid_arguments(void **state)
{
    (void)state;
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    struct br_upstream_request req = {.url = NULL};
    struct rec r = {0};
    assert_int_equal(br_upstream_call_start(ctx.u, &req, &cbs, &r, NULL), BR_ERR_INVAL);
    struct br_upstream_callbacks no_done = {on_head, on_data, NULL};
    req.url = "http://127.0.0.1:1/";
    assert_int_equal(br_upstream_call_start(ctx.u, &req, &no_done, &r, NULL), BR_ERR_INVAL);
    assert_int_equal(br_upstream_active(ctx.u), 0);
    br_upstream_call_cancel(NULL);
    br_upstream_destroy(NULL);
    ctx_cleanup(&ctx);
}

static void test_error_names(void **state)
{
    (void)state;
    assert_string_equal(br_upstream_error_name(BR_UPSTREAM_ERROR_NONE), "none");
    assert_string_equal(br_upstream_error_name(BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE),
                        "timeout_first_byte");
    assert_string_equal(br_upstream_error_name(BR_UPSTREAM_ERROR_OTHER), "other");
    assert_string_equal(br_upstream_error_name((enum br_upstream_error)999), "other");
}

/* ---- more handlers ------------------------------------------------------------------------ */

static void h_big_head(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    static char line[1100];
    ts_send_str(c, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 70; i++) {
        int n = snprintf(line, sizeof(line), "X-Fill-%02d: ", i);
        memset(line + n, 'f', 1000);
        memcpy(line + n + 1000, "\r\n", 3);
        if (!ts_send_str(c, line)) {
            break;
        }
    }
    ts_send_str(c, "Content-Length: 2\r\n\r\nok");
}

/* Answers, then closes the connection (without saying so in the response). */
static void h_hello_then_close(struct ts_conn *c, const struct ts_request *req, void *user)
{
    h_hello(c, req, user);
    c->close_after = true;
}

/* Answers the first request of each connection; a second one gets the connection closed. */
static void h_die_on_second(struct ts_conn *c, const struct ts_request *req, void *user)
{
    if (req->index_on_conn > 0) {
        c->close_after = true;
        return;
    }
    h_hello(c, req, user);
}

/* Answers only the very first request of the server's life; closes on every other one. */
static void h_only_first(struct ts_conn *c, const struct ts_request *req, void *user)
{
    if (atomic_load(&c->srv->n_requests) > 1) {
        c->close_after = true;
        return;
    }
    h_hello(c, req, user);
}

/* Says Connection: close but keeps the connection open: the client must not reuse it. */
static void h_says_close(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello");
}

static void h_extra_bytes(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhellojunk");
}

static void h_close_delimited(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ");
    ts_sleep_ms(20);
    ts_send_str(c, "the end");
    c->close_after = true;
}

static void h_http10(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)user;
    if (strcmp(req->path, "/ka") == 0) {
        ts_send_str(c, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n"
                       "hello");
    } else {
        ts_send_str(c, "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    }
}

static void h_head(struct ts_conn *c, const struct ts_request *req, void *user)
{
    if (strcmp(req->method, "HEAD") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nX-Test: head\r\nContent-Length: 100\r\n\r\n");
        return;
    }
    h_hello(c, req, user);
}

static void h_slow_hello(struct ts_conn *c, const struct ts_request *req, void *user)
{
    ts_sleep_ms(50);
    h_hello(c, req, user);
}

static void h_trailers(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Tokens\r\n\r\n"
                   "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Tokens: 42\r\n\r\n");
}

static void h_switch(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\n\r\n");
    ts_wait_peer_close(c, 2000);
    c->close_after = true;
}

/* Answers, then sends a stray response on the idle connection (as some servers do with 408). */
static void h_hello_then_stray(struct ts_conn *c, const struct ts_request *req, void *user)
{
    h_hello(c, req, user);
    ts_sleep_ms(30);
    ts_send_str(c, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n");
}

/*
 * Runs the loop without blocking for about ms milliseconds (lets the client see closes). Idle
 * pooled connections do not keep a loop alive, and uv_run does not poll a loop that is not
 * alive: the guard timer keeps it alive meanwhile.
 */
static void spin(struct ctx *ctx, int ms)
{
    uv_timer_start(&ctx->guard, guard_cb, (uint64_t)ms + 60000, 0);
    for (int i = 0; i < ms; i += 5) {
        uv_run(&ctx->loop, UV_RUN_NOWAIT);
        ts_sleep_ms(5);
    }
    uv_timer_stop(&ctx->guard);
}

/* Two calls, the second started from the first one's on_done. */
static void run_chain(struct ctx *ctx, struct rec r[2], const struct br_upstream_request *req)
{
    memset(r, 0, 2 * sizeof(*r));
    r[0].chain_left = 1;
    r[0].chain_req = req;
    r[0].chain = &r[1];
    int base = ctx->done;
    start(ctx, &r[0], req);
    run(ctx, base + 2, 5000);
}

/* ---- cases for both backends (continued) ---------------------------------------------- */

static void test_head_too_large(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_big_head, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_TOO_LARGE);
    assert_int_equal(r.n_head, 0);
    assert_true(strlen(r.error_text) > 0);
    assert_null(strstr(r.error_text, "fff")); /* never quotes the headers */
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_chunked_trailers(void **state)
{
    (void)state;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_trailers, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r[2];
    run_chain(&ctx, r, &req);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_int_equal(r[i].n_head, 1);
        assert_int_equal(r[i].body_len, 11);
        assert_memory_equal(r[i].body, "hello world", 11);
    }
    assert_true(r[1].stats.reused_connection);
    assert_int_equal(atomic_load(&srv.n_accepted), 1);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

/* ---- native-only cases --------------------------------------------------------------------- */

static void test_native_request_head(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_echo, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    char want[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/v1/x?y=1#frag", srv.port);
    const char *headers[] = {"X-A: b", "Expect:", "X-Empty:", "Content-Length: 99",
                             "Content-Type: application/json"};
    struct br_upstream_request req = get_req(url);
    req.method = "POST";
    req.headers = headers;
    req.n_headers = 5;
    req.body = br_slice_from_cstr("abcd");
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    snprintf(want, sizeof(want),
             "POST /v1/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nUser-Agent: brigade/0.1\r\n"
             "Content-Length: 4\r\nX-A: b\r\nContent-Type: application/json\r\n\r\n",
             srv.port);
    assert_string_equal(srv.last_head, want);
    assert_memory_equal(r.body, "abcd", 4);

    /* No path, a caller Host header, a GET without a body: no Content-Length. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", srv.port);
    const char *h2[] = {"Host: example.test", "User-Agent: tester"};
    struct br_upstream_request req2 = get_req(url);
    req2.headers = h2;
    req2.n_headers = 2;
    struct rec r2 = {0};
    start(&ctx, &r2, &req2);
    run(&ctx, 2, 5000);
    assert_int_equal(r2.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_true(r2.stats.reused_connection);
    assert_string_equal(srv.last_head,
                        "GET / HTTP/1.1\r\nHost: example.test\r\nUser-Agent: tester\r\n\r\n");
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_invalid_requests(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    struct rec r = {0};
    r.ctx = &ctx;
    static const char *const bad_urls[] = {
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:0/",
        "http://bad host/",
        "http://[::1/",
        "http:///x",
        "http://127.0.0.1/a b",
        "http://127.0.0.1/\x7f",
        "http://[zz]:80/",
        "http://127.0.0.1:8a/",
    };
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        struct br_upstream_request req = get_req(bad_urls[i]);
        assert_int_equal(br_upstream_call_start(ctx.u, &req, &cbs, &r, NULL), BR_ERR_INVAL);
    }
    static const char *const bad_headers[] = {
        "X-A: b\r\nX-Injected: 1", "NoColon", "Bad Name: x", ": empty-name", "X-A: b\n",
    };
    for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++) {
        struct br_upstream_request req = get_req("http://127.0.0.1:1/");
        req.headers = &bad_headers[i];
        req.n_headers = 1;
        assert_int_equal(br_upstream_call_start(ctx.u, &req, &cbs, &r, NULL), BR_ERR_INVAL);
    }
    struct br_upstream_request req = get_req("http://127.0.0.1:1/");
    req.method = "PO ST";
    assert_int_equal(br_upstream_call_start(ctx.u, &req, &cbs, &r, NULL), BR_ERR_INVAL);
    assert_int_equal(br_upstream_active(ctx.u), 0);
    uv_run(&ctx.loop, UV_RUN_NOWAIT);
    assert_int_equal(r.n_done, 0);
    ctx_cleanup(&ctx);
}

static void test_native_idle_closed_by_server(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_hello_then_close, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r1 = {0};
    start(&ctx, &r1, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r1.stats.error, BR_UPSTREAM_ERROR_NONE);
    /* The server closes the pooled connection; the client notices while it is idle. */
    spin(&ctx, 100);
    struct rec r2 = {0};
    start(&ctx, &r2, &req);
    run(&ctx, 2, 5000);
    assert_int_equal(r2.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_false(r2.stats.reused_connection);
    assert_true(r2.stats.t_connected_ns > r2.stats.t_start_ns);
    assert_memory_equal(r2.body, "hello", 5);
    assert_int_equal(atomic_load(&srv.n_accepted), 2);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_dead_pooled_conn_retried(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_die_on_second, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    req.method = "POST";
    req.body = br_slice_from_cstr("{\"prompt\":1}");
    struct rec r[2];
    /* The second call goes out on the pooled connection, which dies before answering. */
    run_chain(&ctx, r, &req);
    assert_int_equal(r[0].stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r[1].stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_memory_equal(r[1].body, "hello", 5);
    assert_false(r[1].stats.reused_connection); /* it ended on a fresh connection */
    assert_true(r[1].stats.t_connected_ns > r[1].stats.t_start_ns);
    assert_int_equal(atomic_load(&srv.n_accepted), 2);
    assert_int_equal(atomic_load(&srv.n_requests), 3);
    assert_int_equal(srv.last_body_len, strlen("{\"prompt\":1}"));
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_retry_only_once(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_only_first, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r[2];
    run_chain(&ctx, r, &req);
    assert_int_equal(r[0].stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r[1].stats.error, BR_UPSTREAM_ERROR_CLOSED);
    assert_int_equal(r[1].n_head, 0);
    assert_true(strlen(r[1].error_text) > 0);
    assert_int_equal(atomic_load(&srv.n_accepted), 2); /* one retry, no more */
    assert_int_equal(atomic_load(&srv.n_requests), 3);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_connection_close_not_reused(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_says_close, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r[2];
    run_chain(&ctx, r, &req);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_false(r[i].stats.reused_connection);
        assert_memory_equal(r[i].body, "hello", 5);
    }
    assert_int_equal(atomic_load(&srv.n_accepted), 2);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_extra_bytes_not_reused(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_extra_bytes, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r[2];
    run_chain(&ctx, r, &req);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_int_equal(r[i].body_len, 5);
        assert_false(r[i].stats.reused_connection);
    }
    assert_int_equal(atomic_load(&srv.n_accepted), 2);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_close_delimited_body(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_close_delimited, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r[2];
    run_chain(&ctx, r, &req);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_int_equal(r[i].status, 200);
        assert_string_equal(r[i].content_type, "text/plain");
        assert_int_equal(r[i].body_len, strlen("until the end"));
        assert_memory_equal(r[i].body, "until the end", r[i].body_len);
        assert_false(r[i].stats.reused_connection);
    }
    assert_int_equal(atomic_load(&srv.n_accepted), 2);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_http10(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_http10, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r[2];
    run_chain(&ctx, r, &req);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_int_equal(r[i].stats.http_version, 10);
        assert_false(r[i].stats.reused_connection); /* 1.0 without keep-alive */
    }
    assert_int_equal(atomic_load(&srv.n_accepted), 2);
    char url_ka[128];
    struct br_upstream_request req_ka = get_req(ts_url(&srv, "/ka", url_ka, sizeof(url_ka)));
    struct rec r2[2];
    run_chain(&ctx, r2, &req_ka);
    assert_int_equal(r2[1].stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r2[1].stats.http_version, 10);
    assert_true(r2[1].stats.reused_connection); /* Connection: keep-alive */
    assert_int_equal(atomic_load(&srv.n_accepted), 3);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_head_request(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_head, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    req.method = "HEAD";
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.x_test, "head");
    assert_int_equal(r.body_len, 0);
    assert_true(strncmp(srv.last_head, "HEAD / HTTP/1.1\r\n", 17) == 0);
    assert_null(strstr(srv.last_head, "Content-Length"));
    struct br_upstream_request get = get_req(url);
    struct rec r2 = {0};
    start(&ctx, &r2, &get);
    run(&ctx, 2, 5000);
    assert_int_equal(r2.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_true(r2.stats.reused_connection);
    assert_memory_equal(r2.body, "hello", 5);
    assert_int_equal(atomic_load(&srv.n_accepted), 1);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_localhost(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_hello, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    /* The server listens on 127.0.0.1 only: if "localhost" resolves to ::1 first, the client
     * must move on to the next address. */
    snprintf(url, sizeof(url), "http://localhost:%u/", srv.port);
    struct br_upstream_request req = get_req(url);
    struct rec r[3];
    memset(r, 0, sizeof(r));
    r[0].chain_left = 2;
    r[0].chain_req = &req;
    r[0].chain = &r[1];
    start(&ctx, &r[0], &req);
    run(&ctx, 3, 5000);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_memory_equal(r[i].body, "hello", 5);
        assert_int_equal(r[i].stats.reused_connection, i > 0);
    }
    assert_int_equal(atomic_load(&srv.n_accepted), 1);
    assert_non_null(strstr(srv.last_head, "\r\nHost: localhost:"));
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_dns_shared(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_hello, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    snprintf(url, sizeof(url), "http://LocalHost:%u/", srv.port);
    struct br_upstream_request req = get_req(url);
    enum { N = 8 };
    struct rec r[N];
    memset(r, 0, sizeof(r));
    /* All wait on one resolution; one of them is canceled while it waits. */
    for (int i = 0; i < N; i++) {
        start(&ctx, &r[i], &req);
    }
    br_upstream_call_cancel(r[3].call);
    ctx.done++;
    run(&ctx, N, 5000);
    for (int i = 0; i < N; i++) {
        if (i == 3) {
            assert_int_equal(r[i].n_done, 0);
            continue;
        }
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_false(r[i].stats.reused_connection);
    }
    assert_int_equal(atomic_load(&srv.n_requests), N - 1);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_unrequested_101(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_switch, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r = {0};
    start(&ctx, &r, &req);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_PROTOCOL);
    assert_int_equal(r.n_head, 0);
    assert_int_equal(r.stats.http_version, 11);
    assert_true(wait_counter(&srv.n_peer_closed, 1, 1000));
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_stray_bytes_on_idle_conn(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_hello_then_stray, NULL), 0);
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    struct rec r1 = {0};
    start(&ctx, &r1, &req);
    run(&ctx, 1, 5000);
    spin(&ctx, 100); /* the 408 arrives on the idle connection, which is dropped */
    assert_true(wait_counter(&srv.n_peer_closed, 1, 1000));
    struct rec r2 = {0};
    start(&ctx, &r2, &req);
    run(&ctx, 2, 5000);
    assert_int_equal(r2.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r2.status, 200);
    assert_false(r2.stats.reused_connection);
    assert_int_equal(atomic_load(&srv.n_accepted), 2);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

static void test_native_ipv6_literal(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct ctx ctx;
    ctx_init(&ctx, NULL);
    /* Nothing listens on [::1]:1 (or there is no IPv6): a connect failure, reported later. */
    struct br_upstream_request req = get_req("http://[::1]:1/");
    struct rec r = {0};
    start(&ctx, &r, &req);
    assert_int_equal(r.n_done, 0);
    run(&ctx, 1, 5000);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_CONNECT);
    assert_false(r.callback_in_start);
    assert_int_equal(r.stats.t_connected_ns, 0);
    ctx_cleanup(&ctx);
}

static void test_native_idle_cap(void **state)
{
    (void)state;
    backend = BR_UPSTREAM_BACKEND_AUTO;
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_slow_hello, NULL), 0);
    struct br_upstream_opts opts = {.max_connections_per_host = 2};
    struct ctx ctx;
    ctx_init(&ctx, &opts);
    char url[128];
    struct br_upstream_request req = get_req(ts_url(&srv, "/", url, sizeof(url)));
    enum { N = 5 };
    struct rec r[2][N];
    memset(r, 0, sizeof(r));
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            start(&ctx, &r[round][i], &req);
        }
        run(&ctx, (round + 1) * N, 5000);
    }
    int reused = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[0][i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_int_equal(r[1][i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_false(r[0][i].stats.reused_connection);
        reused += r[1][i].stats.reused_connection;
    }
    assert_int_equal(reused, 2); /* only two connections were kept */
    assert_int_equal(atomic_load(&srv.n_accepted), N + N - 2);
    ctx_cleanup(&ctx);
    ts_stop(&srv);
}

/* ---- registration ---------------------------------------------------------------------- */

#define BOTH_BACKENDS(name)                 \
    static void name##_native(void **state) \
    {                                       \
        backend = BR_UPSTREAM_BACKEND_AUTO; \
        name(state);                        \
    }                                       \
    static void name##_curl(void **state)   \
    {                                       \
        backend = BR_UPSTREAM_BACKEND_CURL; \
        name(state);                        \
    }

BOTH_BACKENDS(test_get_success)
BOTH_BACKENDS(test_post_body_and_headers)
BOTH_BACKENDS(test_chunked_in_pieces)
BOTH_BACKENDS(test_keepalive_reuse)
BOTH_BACKENDS(test_connection_refused)
BOTH_BACKENDS(test_dns_failure)
BOTH_BACKENDS(test_connect_timeout)
BOTH_BACKENDS(test_first_byte_timeout)
BOTH_BACKENDS(test_idle_timeout)
BOTH_BACKENDS(test_idle_timer_rearms)
BOTH_BACKENDS(test_closed_mid_body)
BOTH_BACKENDS(test_closed_before_response)
BOTH_BACKENDS(test_protocol_error)
BOTH_BACKENDS(test_cancel_inside_on_data)
BOTH_BACKENDS(test_cancel_inside_on_head)
BOTH_BACKENDS(test_cancel_other_call_from_callback)
BOTH_BACKENDS(test_cancel_right_after_start)
BOTH_BACKENDS(test_start_inside_callback)
BOTH_BACKENDS(test_many_concurrent)
BOTH_BACKENDS(test_body_cap)
BOTH_BACKENDS(test_head_too_large)
BOTH_BACKENDS(test_skips_1xx)
BOTH_BACKENDS(test_chunked_trailers)
BOTH_BACKENDS(test_http_error_status_is_not_a_failure)
BOTH_BACKENDS(test_destroy_with_calls_in_flight)
BOTH_BACKENDS(test_invalid_arguments)

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_success_native),
        cmocka_unit_test(test_get_success_curl),
        cmocka_unit_test(test_post_body_and_headers_native),
        cmocka_unit_test(test_post_body_and_headers_curl),
        cmocka_unit_test(test_chunked_in_pieces_native),
        cmocka_unit_test(test_chunked_in_pieces_curl),
        cmocka_unit_test(test_keepalive_reuse_native),
        cmocka_unit_test(test_keepalive_reuse_curl),
        cmocka_unit_test(test_connection_refused_native),
        cmocka_unit_test(test_connection_refused_curl),
        cmocka_unit_test(test_dns_failure_native),
        cmocka_unit_test(test_dns_failure_curl),
        cmocka_unit_test(test_connect_timeout_native),
        cmocka_unit_test(test_connect_timeout_curl),
        cmocka_unit_test(test_first_byte_timeout_native),
        cmocka_unit_test(test_first_byte_timeout_curl),
        cmocka_unit_test(test_idle_timeout_native),
        cmocka_unit_test(test_idle_timeout_curl),
        cmocka_unit_test(test_idle_timer_rearms_native),
        cmocka_unit_test(test_idle_timer_rearms_curl),
        cmocka_unit_test(test_closed_mid_body_native),
        cmocka_unit_test(test_closed_mid_body_curl),
        cmocka_unit_test(test_closed_before_response_native),
        cmocka_unit_test(test_closed_before_response_curl),
        cmocka_unit_test(test_protocol_error_native),
        cmocka_unit_test(test_protocol_error_curl),
        cmocka_unit_test(test_cancel_inside_on_data_native),
        cmocka_unit_test(test_cancel_inside_on_data_curl),
        cmocka_unit_test(test_cancel_inside_on_head_native),
        cmocka_unit_test(test_cancel_inside_on_head_curl),
        cmocka_unit_test(test_cancel_other_call_from_callback_native),
        cmocka_unit_test(test_cancel_other_call_from_callback_curl),
        cmocka_unit_test(test_cancel_right_after_start_native),
        cmocka_unit_test(test_cancel_right_after_start_curl),
        cmocka_unit_test(test_start_inside_callback_native),
        cmocka_unit_test(test_start_inside_callback_curl),
        cmocka_unit_test(test_many_concurrent_native),
        cmocka_unit_test(test_many_concurrent_curl),
        cmocka_unit_test(test_body_cap_native),
        cmocka_unit_test(test_body_cap_curl),
        cmocka_unit_test(test_head_too_large_native),
        cmocka_unit_test(test_head_too_large_curl),
        cmocka_unit_test(test_skips_1xx_native),
        cmocka_unit_test(test_skips_1xx_curl),
        cmocka_unit_test(test_chunked_trailers_native),
        cmocka_unit_test(test_chunked_trailers_curl),
        cmocka_unit_test(test_http_error_status_is_not_a_failure_native),
        cmocka_unit_test(test_http_error_status_is_not_a_failure_curl),
        cmocka_unit_test(test_destroy_with_calls_in_flight_native),
        cmocka_unit_test(test_destroy_with_calls_in_flight_curl),
        cmocka_unit_test(test_invalid_arguments_native),
        cmocka_unit_test(test_invalid_arguments_curl),
        cmocka_unit_test(test_native_request_head),
        cmocka_unit_test(test_native_invalid_requests),
        cmocka_unit_test(test_native_idle_closed_by_server),
        cmocka_unit_test(test_native_dead_pooled_conn_retried),
        cmocka_unit_test(test_native_retry_only_once),
        cmocka_unit_test(test_native_connection_close_not_reused),
        cmocka_unit_test(test_native_extra_bytes_not_reused),
        cmocka_unit_test(test_native_close_delimited_body),
        cmocka_unit_test(test_native_http10),
        cmocka_unit_test(test_native_head_request),
        cmocka_unit_test(test_native_localhost),
        cmocka_unit_test(test_native_dns_shared),
        cmocka_unit_test(test_native_unrequested_101),
        cmocka_unit_test(test_native_stray_bytes_on_idle_conn),
        cmocka_unit_test(test_native_ipv6_literal),
        cmocka_unit_test(test_native_idle_cap),
        cmocka_unit_test(test_error_names),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("upstream", tests, setup, teardown);
}
