/* SPDX-License-Identifier: MIT */
/*
 * White-box tests of the native HTTP/1.1 client (it includes upstream_h1.c to reach its pool,
 * host cache and timers): idle connections dropped on EOF, the 60 s idle sweep, the 60 s DNS
 * cache, moving on to a host's next address when one refuses, the host table's cap, and the
 * free lists (no allocation per call once warm). The behaviour both backends share is tested
 * through the public API in test_upstream.c.
 */
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "../../../src/upstream/upstream_h1.c"
#include "br_test.h"
#include "unit/upstream/test_server.h"

struct fx {
    uv_loop_t loop;
    uv_timer_t guard;
    struct br__upstream_h1 *u;
    struct test_server srv;
    int done;
    int expect;
    bool timed_out;
    struct br_upstream_stats last;
    char url[128];
};

static void on_done(void *user, const struct br_upstream_stats *st)
{
    struct fx *f = user;
    f->last = *st;
    f->last.error_text = NULL;
    f->done++;
    if (f->done >= f->expect) {
        uv_stop(&f->loop);
    }
}

static const struct br_upstream_callbacks cbs = {NULL, NULL, on_done};

static void guard_cb(uv_timer_t *t)
{
    struct fx *f = t->data;
    f->timed_out = true;
    uv_stop(&f->loop);
}

static void h_hello(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    (void)user;
    ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
}

static void h_hello_then_close(struct ts_conn *c, const struct ts_request *req, void *user)
{
    h_hello(c, req, user);
    c->close_after = true;
}

static void fx_init(struct fx *f, ts_handler handler, const struct br_upstream_opts *opts)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(ts_start(&f->srv, handler, NULL), 0);
    ts_url(&f->srv, "/", f->url, sizeof(f->url));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->guard);
    f->guard.data = f;
    assert_int_equal(br__upstream_h1_create(&f->loop, opts, &f->u), BR_OK);
}

static void fx_cleanup(struct fx *f)
{
    br__upstream_h1_destroy(f->u);
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    ts_stop(&f->srv);
}

/* One call to url; waits for it and returns its stats. */
static struct br_upstream_stats call(struct fx *f, const char *url)
{
    struct br_upstream_request req = {.method = "GET", .url = url};
    req.connect_timeout_ms = 2000;
    assert_int_equal(br__upstream_h1_call_start(f->u, &req, &cbs, f, NULL), BR_OK);
    f->expect = f->done + 1;
    uv_timer_start(&f->guard, guard_cb, 5000, 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&f->guard);
    assert_false(f->timed_out);
    return f->last;
}

/* Runs the loop for about ms milliseconds with the guard keeping it alive. */
static void spin(struct fx *f, int ms)
{
    uv_timer_start(&f->guard, guard_cb, (uint64_t)ms + 60000, 0);
    for (int i = 0; i < ms; i += 5) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        ts_sleep_ms(5);
    }
    uv_timer_stop(&f->guard);
}

static struct h1_host *only_host(struct fx *f)
{
    assert_int_equal(f->u->n_hosts, 1);
    return H1_CONTAINER(f->u->hosts.next, struct h1_host, link);
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static void test_idle_conn_dropped_on_eof(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, h_hello_then_close, NULL);
    struct br_upstream_stats st = call(&f, f.url);
    assert_int_equal(st.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(f.u->n_idle, 1); /* pooled: the response did not say close */
    assert_true(uv_is_active((uv_handle_t *)f.u->sweep));
    spin(&f, 100);
    assert_int_equal(f.u->n_idle, 0); /* the server's FIN reached the idle read */
    st = call(&f, f.url);
    assert_int_equal(st.error, BR_UPSTREAM_ERROR_NONE);
    assert_false(st.reused_connection);
    assert_int_equal(atomic_load(&f.srv.n_accepted), 2);
    fx_cleanup(&f);
}

static void test_idle_sweep(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, h_hello, NULL);
    assert_int_equal(call(&f, f.url).error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(f.u->n_idle, 1);
    struct h1_host *h = only_host(&f);
    struct h1_conn *k = H1_CONTAINER(h->idle.next, struct h1_conn, idle_link);
    /* Not yet 60 s: the sweep keeps it. */
    sweep_cb(f.u->sweep);
    assert_int_equal(f.u->n_idle, 1);
    struct br_upstream_stats st = call(&f, f.url);
    assert_true(st.reused_connection);
    /* 61 s idle: swept, and the sweep timer stops with nothing left to watch. */
    k->idle_since_ms -= H1_IDLE_CONN_MS + 1000;
    sweep_cb(f.u->sweep);
    assert_int_equal(f.u->n_idle, 0);
    assert_false(uv_is_active((uv_handle_t *)f.u->sweep));
    st = call(&f, f.url);
    assert_int_equal(st.error, BR_UPSTREAM_ERROR_NONE);
    assert_false(st.reused_connection);
    assert_int_equal(atomic_load(&f.srv.n_accepted), 2);
    fx_cleanup(&f);
}

static void test_dns_cache_ttl(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, h_hello, NULL);
    /* A name that does not resolve, with a cache entry pointing at the test server. */
    char url[128];
    snprintf(url, sizeof(url), "http://cached.invalid:%u/", f.srv.port);
    struct h1_url pu;
    assert_int_equal(parse_url(url, &pu), BR_OK);
    struct h1_host *h = host_get(f.u, &pu);
    assert_non_null(h);
    assert_false(h->numeric);
    assert_int_equal(uv_ip4_addr("127.0.0.1", f.srv.port, (struct sockaddr_in *)&h->addrs[0]), 0);
    h->n_addrs = 1;
    uv_update_time(&f.loop);
    h->resolved_ms = uv_now(&f.loop);
    struct br_upstream_stats st = call(&f, url);
    assert_int_equal(st.error, BR_UPSTREAM_ERROR_NONE);
    /* New connections after 60 s resolve again, and this name does not resolve. */
    while (!link_empty(&h->idle)) {
        conn_close(H1_CONTAINER(h->idle.next, struct h1_conn, idle_link));
    }
    h->resolved_ms -= H1_DNS_TTL_MS + 1000;
    st = call(&f, url);
    assert_int_equal(st.error, BR_UPSTREAM_ERROR_DNS);
    assert_int_equal(h->n_addrs, 0);
    assert_int_equal(atomic_load(&f.srv.n_requests), 1);
    fx_cleanup(&f);
}

static void test_next_address_on_refusal(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, h_hello, NULL);
    /* First a closed port on 127.0.0.2... then the server: the call must move on. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    char url[128];
    snprintf(url, sizeof(url), "http://multi.invalid:%u/", f.srv.port);
    struct h1_url pu;
    assert_int_equal(parse_url(url, &pu), BR_OK);
    struct h1_host *h = host_get(f.u, &pu);
    assert_non_null(h);
    assert_int_equal(uv_ip6_addr("::1", ntohs(sa.sin_port), (struct sockaddr_in6 *)&h->addrs[0]),
                     0);
    memcpy(&h->addrs[1], &sa, sizeof(sa));
    assert_int_equal(uv_ip4_addr("127.0.0.1", f.srv.port, (struct sockaddr_in *)&h->addrs[2]), 0);
    h->n_addrs = 3;
    uv_update_time(&f.loop);
    h->resolved_ms = uv_now(&f.loop);
    struct br_upstream_stats st = call(&f, url);
    assert_int_equal(st.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(h->good, 2); /* remembered for the next connection */
    /* All refuse: a connect error after trying each once. */
    h->addrs[2] = h->addrs[1];
    h->good = 0;
    while (!link_empty(&h->idle)) {
        conn_close(H1_CONTAINER(h->idle.next, struct h1_conn, idle_link));
    }
    st = call(&f, url);
    assert_int_equal(st.error, BR_UPSTREAM_ERROR_CONNECT);
    fx_cleanup(&f);
}

static void test_host_table_cap(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, h_hello, NULL);
    for (unsigned i = 0; i < H1_MAX_HOSTS + 50; i++) {
        char url[64];
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/", 20000 + i);
        struct h1_url pu;
        assert_int_equal(parse_url(url, &pu), BR_OK);
        assert_non_null(host_get(f.u, &pu));
        assert_true(f.u->n_hosts <= H1_MAX_HOSTS);
    }
    /* A host in use is never evicted. */
    assert_int_equal(call(&f, f.url).error, BR_UPSTREAM_ERROR_NONE);
    for (unsigned i = 0; i < H1_MAX_HOSTS + 10; i++) {
        char url[64];
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/", 30000 + i);
        struct h1_url pu;
        assert_int_equal(parse_url(url, &pu), BR_OK);
        assert_non_null(host_get(f.u, &pu));
    }
    assert_true(call(&f, f.url).reused_connection);
    fx_cleanup(&f);
}

static void test_no_allocation_per_call_when_warm(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, h_hello, NULL);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(call(&f, f.url).error, BR_UPSTREAM_ERROR_NONE);
    }
    /* Warm: one pooled call object, one read buffer, one idle connection; further calls
     * allocate nothing. */
    assert_int_equal(f.u->n_free, 1);
    assert_int_equal(f.u->n_rbufs, 1);
    uint64_t before = br_alloc_count();
    for (int i = 0; i < 5; i++) {
        struct br_upstream_stats st = call(&f, f.url);
        assert_int_equal(st.error, BR_UPSTREAM_ERROR_NONE);
        assert_true(st.reused_connection);
    }
    assert_int_equal(br_alloc_count(), before);
    fx_cleanup(&f);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_conn_dropped_on_eof),
        cmocka_unit_test(test_idle_sweep),
        cmocka_unit_test(test_dns_cache_ttl),
        cmocka_unit_test(test_next_address_on_refusal),
        cmocka_unit_test(test_host_table_cap),
        cmocka_unit_test(test_no_allocation_per_call_when_warm),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("upstream_h1", tests, setup, NULL);
}
