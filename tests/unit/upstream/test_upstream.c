/* SPDX-License-Identifier: MIT */
/*
 * The upstream HTTP client against a real scripted server on 127.0.0.1: bodies whole and in
 * pieces, keep-alive, status handling, every timeout, connection failures, cancellation from
 * every place, size caps and many concurrent calls.
 */
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

static void ctx_init(struct ctx *ctx, const struct br_upstream_opts *opts)
{
    memset(ctx, 0, sizeof(*ctx));
    assert_int_equal(uv_loop_init(&ctx->loop), 0);
    uv_timer_init(&ctx->loop, &ctx->guard);
    ctx->guard.data = ctx;
    assert_int_equal(br_upstream_create(&ctx->loop, opts, &ctx->u), BR_OK);
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

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_success),
        cmocka_unit_test(test_post_body_and_headers),
        cmocka_unit_test(test_chunked_in_pieces),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_dns_failure),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_first_byte_timeout),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_idle_timer_rearms),
        cmocka_unit_test(test_closed_mid_body),
        cmocka_unit_test(test_closed_before_response),
        cmocka_unit_test(test_protocol_error),
        cmocka_unit_test(test_cancel_inside_on_data),
        cmocka_unit_test(test_cancel_inside_on_head),
        cmocka_unit_test(test_cancel_other_call_from_callback),
        cmocka_unit_test(test_cancel_right_after_start),
        cmocka_unit_test(test_start_inside_callback),
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_body_cap),
        cmocka_unit_test(test_skips_1xx),
        cmocka_unit_test(test_http_error_status_is_not_a_failure),
        cmocka_unit_test(test_destroy_with_calls_in_flight),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_error_names),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("upstream", tests, setup, teardown);
}
