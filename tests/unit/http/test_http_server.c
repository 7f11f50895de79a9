/* SPDX-License-Identifier: MIT */
/*
 * In-process server tests over raw sockets on 127.0.0.1: limits and timeouts (small configured
 * values), framing rejections, keep-alive, pipelining, chunked bodies, 100-continue,
 * streaming with trailers, HTTP/1.0, abort on disconnect, drain, set_limits and request ids.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "br_test.h"
#include "core/err.h"
#include "unit/http/http_test_util.h"

static int teardown(void **state)
{
    (void)state;
    ht_stop();
    return 0;
}

/* The response is an OpenAI-shaped error with the given status and code, closing. */
static void assert_error_response(const struct ht_resp *r, int status, const char *code)
{
    char v[256];
    assert_int_equal(r->status, status);
    assert_true(ht_header(r, "x-request-id", v, sizeof(v)));
    assert_true(strlen(v) > 0);
    assert_true(ht_header(r, "Connection", v, sizeof(v)));
    assert_string_equal(v, "close");
    assert_true(ht_header(r, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "application/json");
    char want[128];
    snprintf(want, sizeof(want), "\"code\":\"%s\"", code);
    assert_non_null(strstr(r->body, "{\"error\":{\"message\":"));
    assert_non_null(strstr(r->body, "\"type\":\"invalid_request_error\""));
    assert_non_null(strstr(r->body, "\"param\":null"));
    assert_non_null(strstr(r->body, want));
}

/* Sends raw bytes on a fresh connection; expects an error status, a close, no request. */
static void expect_rejected(const char *raw, size_t len, int status, const char *code)
{
    int before = ht_n_records();
    struct ht_conn c;
    ht_conn_open(&c);
    assert_true(c.fd >= 0);
    assert_int_equal(ht_send(c.fd, raw, len), 0);
    struct ht_resp r;
    if (ht_read_response(&c, &r, 3000) != 0) {
        fprintf(stderr, "no response for: %.*s\n", (int)len, raw);
        fail();
    }
    if (r.status != status) {
        fprintf(stderr, "status %d (want %d) for: %.*s\n%s\n", r.status, status, (int)len, raw,
                r.body);
    }
    assert_error_response(&r, status, code);
    assert_true(ht_wait_closed(&c, 3000, NULL));
    ht_resp_free(&r);
    ht_conn_close(&c);
    assert_int_equal(ht_n_records(), before);
}

static void expect_rejected_str(const char *raw, int status, const char *code)
{
    expect_rejected(raw, strlen(raw), status, code);
}

/* ---- basics ----------------------------------------------------------------------------- */

static void test_basic_keepalive(void **state)
{
    (void)state;
    ht_start(NULL, 2);
    struct ht_conn c;
    ht_conn_open(&c);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ht_send_str(c.fd, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
        struct ht_resp r;
        assert_int_equal(ht_read_response(&c, &r, 3000), 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "ok");
        char v[64];
        assert_true(ht_header(&r, "Date", v, sizeof(v)));
        assert_true(ht_header(&r, "Content-Length", v, sizeof(v)));
        assert_string_equal(v, "2");
        assert_false(ht_header(&r, "Connection", v, sizeof(v)));
        ht_resp_free(&r);
    }
    assert_int_equal(ht_n_records(), 5);
    /* Connection: close is honoured. */
    assert_int_equal(ht_send_str(c.fd, "GET /y HTTP/1.1\r\nConnection: close\r\n\r\n"), 0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    char v[64];
    assert_true(ht_header(&r, "Connection", v, sizeof(v)));
    assert_string_equal(v, "close");
    assert_true(ht_wait_closed(&c, 3000, NULL));
    ht_resp_free(&r);
    ht_conn_close(&c);
    assert_int_equal(ht.n_worker_init, 2);
}

static void test_post_echo_and_head(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_resp r;
    assert_int_equal(ht_roundtrip("POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", &r),
                     200);
    assert_string_equal(r.body, "hello");
    ht_resp_free(&r);
    /* HEAD: Content-Length of the body, no body bytes; the next response follows directly. */
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "HEAD /head HTTP/1.1\r\n\r\nGET /head HTTP/1.1\r\n\r\n"), 0);
    c.head_request = true;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    char v[64];
    assert_true(ht_header(&r, "Content-Length", v, sizeof(v)));
    assert_string_equal(v, "5");
    ht_resp_free(&r);
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_string_equal(r.body, "hello");
    ht_resp_free(&r);
    ht_conn_close(&c);
}

static void test_respond_error_and_bad_header(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_resp r;
    assert_int_equal(ht_roundtrip("GET /error HTTP/1.1\r\n\r\n", &r), 429);
    assert_string_equal(r.body, "{\"error\":{\"message\":\"slow \\\"down\\\"\\n\",\"type\":"
                                "\"invalid_request_error\",\"param\":\"model\",\"code\":"
                                "\"rate_limited\"}}");
    char v[64];
    assert_true(ht_header(&r, "x-request-id", v, sizeof(v)));
    ht_resp_free(&r);
    /* A handler header with CR LF is refused: 500 instead, nothing injected. */
    assert_int_equal(ht_roundtrip("GET /badheader HTTP/1.1\r\n\r\n", &r), 500);
    assert_false(ht_header(&r, "Injected", v, sizeof(v)));
    assert_non_null(strstr(r.body, "\"type\":\"server_error\""));
    ht_resp_free(&r);
}

static void test_request_id(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_resp r;
    char v[256];
    /* Echoed. */
    assert_int_equal(ht_roundtrip("GET /id HTTP/1.1\r\nX-Request-Id: my-id.42\r\n\r\n", &r), 200);
    assert_string_equal(r.body, "my-id.42");
    assert_true(ht_header(&r, "x-request-id", v, sizeof(v)));
    assert_string_equal(v, "my-id.42");
    ht_resp_free(&r);
    /* Invalid (space, too long): generated, 32 hex digits. */
    char big[200];
    memset(big, 'a', sizeof(big));
    char raw[512];
    snprintf(raw, sizeof(raw), "GET /id HTTP/1.1\r\nx-request-id: %.*s\r\n\r\n", 129, big);
    const char *bad[] = {"GET /id HTTP/1.1\r\nX-Request-Id: a b\r\n\r\n",
                         "GET /id HTTP/1.1\r\n\r\n", raw};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(ht_roundtrip(bad[i], &r), 200);
        assert_int_equal(strlen(r.body), 32);
        assert_int_equal(strspn(r.body, "0123456789abcdef"), 32);
        assert_true(ht_header(&r, "x-request-id", v, sizeof(v)));
        assert_string_equal(v, r.body);
        ht_resp_free(&r);
    }
    /* 128 characters is still accepted. */
    snprintf(raw, sizeof(raw), "GET /id HTTP/1.1\r\nx-request-id: %.*s\r\n\r\n", 128, big);
    assert_int_equal(ht_roundtrip(raw, &r), 200);
    assert_int_equal(strlen(r.body), 128);
    ht_resp_free(&r);
    /* The layer's own errors carry the client's id when the head got that far. */
    assert_int_equal(ht_roundtrip("POST / HTTP/1.1\r\nX-Request-Id: rej-1\r\nContent-Length: 1\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n",
                                  &r),
                     400);
    assert_true(ht_header(&r, "x-request-id", v, sizeof(v)));
    assert_string_equal(v, "rej-1");
    ht_resp_free(&r);
    /* ... and a generated one otherwise. */
    assert_int_equal(ht_roundtrip("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", &r), 400);
    assert_true(ht_header(&r, "x-request-id", v, sizeof(v)));
    assert_int_equal(strlen(v), 32);
    ht_resp_free(&r);
}

/* ---- limits ----------------------------------------------------------------------------- */

static void test_limit_request_line(void **state)
{
    (void)state;
    struct br_http_limits l;
    ht_limits(&l);
    l.request_line_bytes = 100;
    ht_start(&l, 1);
    char raw[512];
    char t[300];
    memset(t, 'a', sizeof(t));
    snprintf(raw, sizeof(raw), "GET /%.*s HTTP/1.1\r\n\r\n", 200, t);
    expect_rejected_str(raw, 414, "uri_too_long");
    /* Over the limit without a line end yet: rejected at once. */
    snprintf(raw, sizeof(raw), "GET /%.*s", 200, t);
    expect_rejected_str(raw, 414, "uri_too_long");
    /* Just under it: served. */
    snprintf(raw, sizeof(raw), "GET /%.*s HTTP/1.1\r\n\r\n", 100 - 14, t);
    struct ht_resp r;
    assert_int_equal(ht_roundtrip(raw, &r), 200);
    ht_resp_free(&r);
    assert_true(ht.n_rejects >= 2);
    assert_int_equal(ht.last_reject_status, 414);
}

static void test_limit_headers(void **state)
{
    (void)state;
    struct br_http_limits l;
    ht_limits(&l);
    l.header_bytes = 256;
    l.header_fields = 5;
    ht_start(&l, 1);
    char raw[1024];
    char v[400];
    memset(v, 'v', sizeof(v));
    snprintf(raw, sizeof(raw), "GET / HTTP/1.1\r\nBig: %.*s\r\n\r\n", 300, v);
    expect_rejected_str(raw, 431, "headers_too_large");
    expect_rejected_str("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\n\r\n",
                        431, "headers_too_large");
    struct ht_resp r;
    assert_int_equal(
        ht_roundtrip("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n", &r), 200);
    ht_resp_free(&r);
}

static void test_limit_body(void **state)
{
    (void)state;
    struct br_http_limits l;
    ht_limits(&l);
    l.body_bytes = 16;
    ht_start(&l, 1);
    /* Content-Length too big: 413 before any body byte is sent. */
    expect_rejected_str("POST /echo HTTP/1.1\r\nContent-Length: 17\r\n\r\n", 413,
                        "request_too_large");
    /* Chunked body that grows past the limit. */
    expect_rejected_str("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "8\r\n01234567\r\n8\r\n89abcdef\r\n1\r\n",
                        413, "request_too_large");
    struct ht_resp r;
    assert_int_equal(ht_roundtrip("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n",
                                  &r),
                     200);
    assert_string_equal(r.body, "0123456789abcdef");
    ht_resp_free(&r);
}

static void test_expect_continue(void **state)
{
    (void)state;
    struct br_http_limits l;
    ht_limits(&l);
    l.body_bytes = 1000;
    ht_start(&l, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\n"
                                       "Content-Length: 4\r\n\r\n"),
                     0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 100);
    ht_resp_free(&r);
    assert_int_equal(ht_send_str(c.fd, "body"), 0);
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "body");
    ht_resp_free(&r);
    ht_conn_close(&c);
    /* Too big: 413 at once, no 100 Continue. */
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\n"
                                       "Content-Length: 1001\r\n\r\n"),
                     0);
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_error_response(&r, 413, "request_too_large");
    assert_true(ht_wait_closed(&c, 3000, NULL));
    ht_resp_free(&r);
    ht_conn_close(&c);
    /* Unknown expectation: 417. */
    expect_rejected_str("POST /echo HTTP/1.1\r\nExpect: tea\r\nContent-Length: 1\r\n\r\nx", 417,
                        "expectation_failed");
}

/* ---- timeouts --------------------------------------------------------------------------- */

static void test_header_timeout(void **state)
{
    (void)state;
    ht_start(NULL, 1); /* header timeout 200 ms */
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET / HTTP/1.1\r\nHost: a\r\n"), 0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_error_response(&r, 408, "request_timeout");
    assert_true(ht_wait_closed(&c, 3000, NULL));
    ht_resp_free(&r);
    ht_conn_close(&c);
    /* A slow trickle does not extend it: the head must be complete 200 ms after its start. */
    ht_conn_open(&c);
    const char *head = "GET / HTTP/1.1\r\nA: b\r\n";
    for (int i = 0; head[i]; i++) {
        assert_int_equal(ht_send(c.fd, head + i, 1), 0);
        ht_sleep_ms(20);
    }
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 408);
    ht_resp_free(&r);
    ht_conn_close(&c);
    assert_int_equal(ht_n_records(), 0);
}

static void test_body_idle_timeout(void **state)
{
    (void)state;
    ht_start(NULL, 1); /* body idle timeout 200 ms */
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"), 0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_error_response(&r, 408, "request_timeout");
    assert_true(ht_wait_closed(&c, 3000, NULL));
    ht_resp_free(&r);
    ht_conn_close(&c);
    /* A body byte every 50 ms keeps it alive for far longer than 200 ms in total. */
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "POST /echo HTTP/1.1\r\nContent-Length: 8\r\n\r\n"), 0);
    for (int i = 0; i < 8; i++) {
        ht_sleep_ms(50);
        assert_int_equal(ht_send(c.fd, "stuvwxyz" + i, 1), 0);
    }
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "stuvwxyz");
    ht_resp_free(&r);
    ht_conn_close(&c);
}

static void test_keepalive_timeout(void **state)
{
    (void)state;
    struct br_http_limits l;
    ht_limits(&l);
    l.keepalive_timeout_ms = 200;
    ht_start(&l, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET / HTTP/1.1\r\n\r\n"), 0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 200);
    ht_resp_free(&r);
    /* Closed silently: no bytes, just EOF. */
    size_t extra = 1;
    assert_true(ht_wait_closed(&c, 3000, &extra));
    assert_int_equal(extra, 0);
    ht_conn_close(&c);
    /* A connection that never sends a byte is closed silently too. */
    ht_conn_open(&c);
    extra = 1;
    assert_true(ht_wait_closed(&c, 3000, &extra));
    assert_int_equal(extra, 0);
    ht_conn_close(&c);
    assert_int_equal(ht.n_rejects, 0);
}

/* ---- framing ---------------------------------------------------------------------------- */

static void test_framing_rejections(void **state)
{
    (void)state;
    ht_start(NULL, 2);
    expect_rejected_str("POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
                        "\r\n\r\n0\r\n\r\n",
                        400, "bad_request");
    expect_rejected_str("POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
                        400, "bad_request");
    expect_rejected_str("GET / HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n", 400, "bad_request");
    expect_rejected_str("GET / HTTP/1.1\nHost: a\n\n", 400, "bad_request");
    expect_rejected_str("GET / HTTP/1.1\r\nHost: a\n\r\n", 400, "bad_request");
    expect_rejected("GET / HTTP/1.1\r\nA: \0\r\n\r\n", 23, 400, "bad_request");
    expect_rejected("GET /\0 HTTP/1.1\r\n\r\n", 19, 400, "bad_request");
    expect_rejected_str("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
                        "not_implemented");
    expect_rejected_str("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501,
                        "not_implemented");
    expect_rejected_str("POST / HTTP/1.1\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n", 400,
                        "bad_request");
    expect_rejected_str("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n"
                        "0\r\n\r\n",
                        400, "bad_request");
    expect_rejected_str("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
                        "bad_request");
    expect_rejected_str("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "bad_request");
    expect_rejected_str("GET / HTTP/1.1\r\n: empty\r\n\r\n", 400, "bad_request");
    expect_rejected_str("GET /\r\n\r\n", 400, "bad_request");
    expect_rejected_str("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501,
                        "not_implemented");
    expect_rejected_str("GET / HTTP/2.0\r\n\r\n", 505, "http_version_not_supported");
    /* The rejected request never reached on_request, and the rejection was reported. */
    assert_int_equal(ht_n_records(), 0);
    assert_true(ht.n_rejects >= 17);
}

static void test_upgrade_ignored(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /a HTTP/1.1\r\nConnection: Upgrade\r\n"
                                       "Upgrade: websocket\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
                     0);
    struct ht_resp r;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ht_read_response(&c, &r, 3000), 0);
        assert_int_equal(r.status, 200);
        ht_resp_free(&r);
    }
    ht_conn_close(&c);
    assert_int_equal(ht_n_records(), 2);
}

/* ---- pipelining, chunked, HTTP/1.0 ------------------------------------------------------ */

static void test_pipelining(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    /* The slow first request must still be answered first. */
    const char *raw =
        "GET /slow?50 HTTP/1.1\r\n\r\n"
        "POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\none"
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n"
        "GET /id HTTP/1.1\r\nX-Request-Id: third\r\n\r\n";
    assert_int_equal(ht_send_str(c.fd, raw), 0);
    const char *bodies[] = {"slow", "one", "two", "third"};
    for (int i = 0; i < 4; i++) {
        struct ht_resp r;
        assert_int_equal(ht_read_response(&c, &r, 3000), 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, bodies[i]);
        ht_resp_free(&r);
    }
    ht_conn_close(&c);
    assert_int_equal(ht_n_records(), 4);
    /* Handled one at a time, in order. */
    assert_string_equal(ht_get_record(0).target, "/slow?50");
    assert_string_equal(ht_get_record(3).target, "/id");
    /* Many small pipelined requests in one write. */
    ht_conn_open(&c);
    char big[64 * 1024];
    size_t n = 0;
    for (int i = 0; i < 500; i++) {
        n += (size_t)snprintf(big + n, sizeof(big) - n, "GET /p%d HTTP/1.1\r\n\r\n", i);
    }
    assert_int_equal(ht_send(c.fd, big, n), 0);
    for (int i = 0; i < 500; i++) {
        struct ht_resp r;
        assert_int_equal(ht_read_response(&c, &r, 5000), 0);
        assert_int_equal(r.status, 200);
        ht_resp_free(&r);
    }
    ht_conn_close(&c);
    assert_int_equal(ht_n_records(), 504);
    char want[16];
    for (int i = 0; i < 500; i += 99) {
        snprintf(want, sizeof(want), "/p%d", i);
        assert_string_equal(ht_get_record(4 + i).target, want);
    }
}

static void test_chunked_request(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    /* Sent in pieces, with an extension and a trailer. */
    const char *parts[] = {"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "4\r\nWi",
                           "ki\r\n5;ext=1\r\npedia\r\n", "E\r\n in\r\n\r\nchunks.\r\n",
                           "0\r\nX-Trailer: yes\r\n\r\n"};
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(ht_send_str(c.fd, parts[i]), 0);
        ht_sleep_ms(10);
    }
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "Wikipedia in\r\n\r\nchunks.");
    ht_resp_free(&r);
    ht_conn_close(&c);
    assert_int_equal(ht_get_record(0).body_len, 23);
}

static void test_http10(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    /* Default: close after the response. */
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET / HTTP/1.0\r\n\r\n"), 0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    char v[64];
    assert_true(strncmp(r.head, "HTTP/1.1 200 OK", 15) == 0);
    assert_true(ht_header(&r, "Connection", v, sizeof(v)));
    assert_string_equal(v, "close");
    assert_true(ht_wait_closed(&c, 3000, NULL));
    ht_resp_free(&r);
    ht_conn_close(&c);
    /* Keep-alive on request. */
    ht_conn_open(&c);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ht_send_str(c.fd, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
        assert_int_equal(ht_read_response(&c, &r, 3000), 0);
        assert_true(ht_header(&r, "Connection", v, sizeof(v)));
        assert_string_equal(v, "keep-alive");
        ht_resp_free(&r);
    }
    /* Streaming to HTTP/1.0: no chunked, body delimited by close. */
    assert_int_equal(
        ht_send_str(c.fd, "GET /stream?3,10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_false(ht_header(&r, "Transfer-Encoding", v, sizeof(v)));
    assert_true(ht_header(&r, "Connection", v, sizeof(v)));
    assert_string_equal(v, "close");
    assert_string_equal(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    ht_resp_free(&r);
    ht_conn_close(&c);
    assert_int_equal(ht_get_record(0).http_minor, 0);
}

/* ---- streaming and abort ---------------------------------------------------------------- */

static void test_streaming_trailers(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /stream?4,10 HTTP/1.1\r\n\r\n"), 0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 200);
    assert_true(r.chunked);
    assert_int_equal(r.n_chunks, 4);
    assert_string_equal(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert_string_equal(r.trailers, "x-done: yes\r\n");
    char v[64];
    assert_true(ht_header(&r, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "text/event-stream");
    assert_true(ht_header(&r, "x-request-id", v, sizeof(v)));
    ht_resp_free(&r);
    /* The connection stays usable. */
    assert_int_equal(ht_send_str(c.fd, "GET / HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 200);
    ht_resp_free(&r);
    ht_conn_close(&c);
    assert_int_equal(ht.n_stream_writes_ok, 4);
}

/* Each chunk reaches the client as it is written, not at the end. */
static void test_streaming_flushes_each_write(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /stream?3,300 HTTP/1.1\r\n\r\n"), 0);
    /* After ~400 ms the head and the first chunk must have arrived, the end not yet. */
    ht_sleep_ms(450);
    char buf[4096];
    ssize_t k = recv(c.fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(k > 0);
    buf[k] = '\0';
    assert_non_null(strstr(buf, "data: 0"));
    assert_null(strstr(buf, "data: 2"));
    ht_conn_close(&c);
}

static bool aborted_and_finished(void)
{
    return atomic_load(&ht.n_aborts) == 1 && atomic_load(&ht.n_finished_async) == 1 &&
           br_http_server_inflight(ht.s) == 0;
}

static void test_abort_mid_stream(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /stream?1000,10 HTTP/1.1\r\n\r\n"), 0);
    char buf[512];
    assert_true(recv(c.fd, buf, sizeof(buf), 0) > 0);
    assert_int_equal(br_http_server_inflight(ht.s), 1);
    ht_conn_close(&c);
    assert_true(ht_wait_for(aborted_and_finished, 3000));
    /* stream_end after the abort reported the closed client. */
    assert_int_equal(ht.n_closed_results, 1);
}

static void test_abort_slow_request(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /slow?2000 HTTP/1.1\r\n\r\n"), 0);
    ht_sleep_ms(50);
    ht_conn_close(&c);
    assert_true(ht_wait_for(aborted_and_finished, 3000));
    assert_int_equal(ht.n_closed_results, 1);
}

static bool finished_late(void)
{
    return atomic_load(&ht.n_finished_async) == 1 && br_http_server_inflight(ht.s) == 0;
}

static bool one_abort(void)
{
    return atomic_load(&ht.n_aborts) == 1;
}

static bool two_finished(void)
{
    return atomic_load(&ht.n_finished_async) == 2 && br_http_server_inflight(ht.s) == 0;
}

static bool connect_refused(void)
{
    int fd = ht_connect();
    if (fd >= 0) {
        close(fd);
        return false;
    }
    return true;
}

/* A handler that keeps the request after on_abort and finishes it later: no use after free. */
static void test_abort_handler_finishes_later(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    atomic_store(&ht.abort_finishes, false);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /slow?1500 HTTP/1.1\r\n\r\n"), 0);
    ht_sleep_ms(50);
    ht_conn_close(&c);
    assert_true(ht_wait_for(one_abort, 1000));
    assert_int_equal(br_http_server_inflight(ht.s), 1);
    assert_true(ht_wait_for(finished_late, 5000));
    assert_int_equal(ht.n_closed_results, 1);
    /* Same for a stream: writes after the abort return BR_ERR_CLOSED until the handler ends. */
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /stream?20,10 HTTP/1.1\r\n\r\n"), 0);
    char buf[256];
    assert_true(recv(c.fd, buf, sizeof(buf), 0) > 0);
    ht_conn_close(&c);
    assert_true(ht_wait_for(two_finished, 5000));
    assert_int_equal(ht.n_closed_results, 2);
}

/* A client that does not read while the handler streams: pending bytes are bounded. */
static void test_slow_client_dropped(void **state)
{
    (void)state;
    struct br_http_limits l;
    ht_limits(&l);
    l.write_buffer_bytes = 1024 * 1024;
    ht_start(&l, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /flood HTTP/1.1\r\n\r\n"), 0);
    /* Never read: the layer must give up on the client instead of queueing without bound. */
    assert_true(ht_wait_for(aborted_and_finished, 5000));
    assert_int_equal(atomic_load(&ht.flood_write_rc), BR_ERR_CLOSED);
    assert_true(atomic_load(&ht.flood_max_pending) > 0);
    assert_true(atomic_load(&ht.flood_max_pending) <= l.write_buffer_bytes + 512 * 1024);
    ht_conn_close(&c);
}

/* A finished response the client never reads: dropped after the send (body-idle) timeout. */
static void test_unread_response_times_out(void **state)
{
    (void)state;
    ht_start(NULL, 1); /* body idle timeout 200 ms */
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /big?32768 HTTP/1.1\r\n\r\n"), 0);
    ht_sleep_ms(1000);
    /* Whatever was in flight can still be read, then the connection ends: far less than the
     * 32 MiB body ever arrives. */
    size_t got = 0;
    assert_true(ht_wait_closed(&c, 3000, &got));
    assert_true(got < (size_t)32 * 1024 * 1024);
    ht_conn_close(&c);
    assert_int_equal(br_http_server_inflight(ht.s), 0);
}

/* ---- drain and limits ------------------------------------------------------------------- */

static void test_drain_inflight(void **state)
{
    (void)state;
    ht_start(NULL, 2);
    /* An idle keep-alive connection. */
    struct ht_conn idle;
    ht_conn_open(&idle);
    assert_int_equal(ht_send_str(idle.fd, "GET / HTTP/1.1\r\n\r\n"), 0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&idle, &r, 3000), 0);
    ht_resp_free(&r);
    /* A request in flight. */
    struct ht_conn busy;
    ht_conn_open(&busy);
    assert_int_equal(ht_send_str(busy.fd, "GET /slow?400 HTTP/1.1\r\n\r\n"), 0);
    ht_sleep_ms(100);
    assert_int_equal(br_http_server_inflight(ht.s), 1);
    br_http_server_drain(ht.s);
    /* The idle connection is closed at once, the listener too. */
    size_t extra = 1;
    assert_true(ht_wait_closed(&idle, 1000, &extra));
    assert_int_equal(extra, 0);
    assert_true(ht_wait_for(connect_refused, 2000));
    /* The in-flight request finishes, with Connection: close. */
    assert_int_equal(ht_read_response(&busy, &r, 3000), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow");
    char v[32];
    assert_true(ht_header(&r, "Connection", v, sizeof(v)));
    assert_string_equal(v, "close");
    assert_true(ht_wait_closed(&busy, 3000, NULL));
    ht_resp_free(&r);
    br_http_server_join(ht.s);
    assert_int_equal(br_http_server_inflight(ht.s), 0);
    assert_int_equal(ht.n_worker_cleanup, 2);
    assert_int_equal(ht.n_aborts, 0);
    ht_conn_close(&idle);
    ht_conn_close(&busy);
}

static void test_drain_timeout_aborts(void **state)
{
    (void)state;
    struct br_http_limits l;
    ht_limits(&l);
    l.drain_timeout_ms = 200;
    ht_start(&l, 1);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "GET /hold HTTP/1.1\r\n\r\n"), 0);
    ht_sleep_ms(50);
    assert_int_equal(br_http_server_inflight(ht.s), 1);
    br_http_server_drain(ht.s);
    br_http_server_join(ht.s);
    assert_int_equal(ht.n_aborts, 1);
    assert_int_equal(ht.n_finished_async, 1);
    assert_int_equal(br_http_server_inflight(ht.s), 0);
    /* The client saw the connection end without a response. */
    size_t extra = 1;
    assert_true(ht_wait_closed(&c, 1000, &extra));
    assert_int_equal(extra, 0);
    ht_conn_close(&c);
}

static void test_set_limits(void **state)
{
    (void)state;
    ht_start(NULL, 2);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, "POST /echo HTTP/1.1\r\nContent-Length: 20\r\n\r\n"
                                       "01234567890123456789"),
                     0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_int_equal(r.status, 200);
    ht_resp_free(&r);
    struct br_http_limits l;
    ht_limits(&l);
    l.body_bytes = 10;
    br_http_server_set_limits(ht.s, &l);
    /* The next request on the same connection already sees the new limit. */
    assert_int_equal(ht_send_str(c.fd, "POST /echo HTTP/1.1\r\nContent-Length: 20\r\n\r\n"), 0);
    assert_int_equal(ht_read_response(&c, &r, 3000), 0);
    assert_error_response(&r, 413, "request_too_large");
    ht_resp_free(&r);
    ht_conn_close(&c);
    l.body_bytes = 100;
    br_http_server_set_limits(ht.s, &l);
    assert_int_equal(ht_roundtrip("POST /echo HTTP/1.1\r\nContent-Length: 20\r\n\r\n"
                                  "01234567890123456789",
                                  &r),
                     200);
    ht_resp_free(&r);
}

static void never_called(void *wctx, br_http_request *req)
{
    (void)wctx;
    (void)req;
    fail();
}

static void test_bind_in_use(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    /* A plain (non-SO_REUSEPORT) socket holding a port makes create fail with EXISTS. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 1), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    struct br_http_server_config cfg = {
        .host = "127.0.0.1", .port = ntohs(a.sin_port), .n_workers = 1};
    br_http_limits_default(&cfg.limits);
    static const struct br_http_handler h = {.on_request = NULL};
    br_http_server *s = NULL;
    assert_int_equal(br_http_server_create(&cfg, &h, NULL, &s), BR_ERR_INVAL);
    struct br_http_handler h2 = {.on_request = never_called};
    assert_int_equal(br_http_server_create(&cfg, &h2, NULL, &s), BR_ERR_EXISTS);
    cfg.host = "not-an-address";
    assert_int_equal(br_http_server_create(&cfg, &h2, NULL, &s), BR_ERR_INVAL);
    close(fd);
    /* Nor can a second server share the port of a running one (SO_REUSEPORT would allow it:
     * two gateways started on one address must not split its traffic silently). */
    cfg.host = "127.0.0.1";
    cfg.port = ht.port;
    assert_int_equal(br_http_server_create(&cfg, &h2, NULL, &s), BR_ERR_EXISTS);
    assert_null(s);
}

static void test_many_connections(void **state)
{
    (void)state;
    ht_start(NULL, 2);
    enum { N = 64 };
    struct ht_conn c[N];
    for (int i = 0; i < N; i++) {
        ht_conn_open(&c[i]);
        assert_true(c[i].fd >= 0);
        assert_int_equal(ht_send_str(c[i].fd, "POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
                         0);
    }
    for (int i = 0; i < N; i++) {
        struct ht_resp r;
        assert_int_equal(ht_read_response(&c[i], &r, 3000), 0);
        assert_string_equal(r.body, "hi");
        ht_resp_free(&r);
        ht_conn_close(&c[i]);
    }
    assert_int_equal(ht_n_records(), N);
}

static void test_large_body_and_response(void **state)
{
    (void)state;
    ht_start(NULL, 1);
    size_t n = 3 * 1024 * 1024;
    char *body = malloc(n);
    for (size_t i = 0; i < n; i++) {
        body[i] = (char)('a' + i % 26);
    }
    char head[128];
    snprintf(head, sizeof(head), "POST /echo HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", n);
    struct ht_conn c;
    ht_conn_open(&c);
    assert_int_equal(ht_send_str(c.fd, head), 0);
    assert_int_equal(ht_send(c.fd, body, n), 0);
    struct ht_resp r;
    assert_int_equal(ht_read_response(&c, &r, 10000), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, n);
    assert_memory_equal(r.body, body, n);
    ht_resp_free(&r);
    ht_conn_close(&c);
    free(body);
}

int main(int argc, char **argv)
{
    /* One test per line: CMake registers them line by line. */
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_basic_keepalive, teardown),
        cmocka_unit_test_teardown(test_post_echo_and_head, teardown),
        cmocka_unit_test_teardown(test_respond_error_and_bad_header, teardown),
        cmocka_unit_test_teardown(test_request_id, teardown),
        cmocka_unit_test_teardown(test_limit_request_line, teardown),
        cmocka_unit_test_teardown(test_limit_headers, teardown),
        cmocka_unit_test_teardown(test_limit_body, teardown),
        cmocka_unit_test_teardown(test_expect_continue, teardown),
        cmocka_unit_test_teardown(test_header_timeout, teardown),
        cmocka_unit_test_teardown(test_body_idle_timeout, teardown),
        cmocka_unit_test_teardown(test_keepalive_timeout, teardown),
        cmocka_unit_test_teardown(test_framing_rejections, teardown),
        cmocka_unit_test_teardown(test_upgrade_ignored, teardown),
        cmocka_unit_test_teardown(test_pipelining, teardown),
        cmocka_unit_test_teardown(test_chunked_request, teardown),
        cmocka_unit_test_teardown(test_http10, teardown),
        cmocka_unit_test_teardown(test_streaming_trailers, teardown),
        cmocka_unit_test_teardown(test_streaming_flushes_each_write, teardown),
        cmocka_unit_test_teardown(test_abort_mid_stream, teardown),
        cmocka_unit_test_teardown(test_abort_slow_request, teardown),
        cmocka_unit_test_teardown(test_abort_handler_finishes_later, teardown),
        cmocka_unit_test_teardown(test_slow_client_dropped, teardown),
        cmocka_unit_test_teardown(test_unread_response_times_out, teardown),
        cmocka_unit_test_teardown(test_drain_inflight, teardown),
        cmocka_unit_test_teardown(test_drain_timeout_aborts, teardown),
        cmocka_unit_test_teardown(test_set_limits, teardown),
        cmocka_unit_test_teardown(test_bind_in_use, teardown),
        cmocka_unit_test_teardown(test_many_connections, teardown),
        cmocka_unit_test_teardown(test_large_body_and_response, teardown),
    };
    /* clang-format on */
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("http_server", tests, NULL, NULL);
}
