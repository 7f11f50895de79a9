/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the request parser (src/http/http_parse.c), driven without sockets: limits,
 * every framing rejection, chunked bodies, pipelining, keep-alive flags, split invariance and
 * allocation failures.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/arena.h"
#include "core/err.h"
#include "http/http_int.h"

struct result {
    int rc;
    int status;
    const char *code;
    size_t consumed;
};

static struct br_http_limits lim_default(void)
{
    struct br_http_limits l;
    br_http_limits_default(&l);
    return l;
}

/* Feeds raw in pieces of `step` bytes (0 = all at once) until a result that is not AGAIN. */
static struct result feed(struct br__http_parser *p, const char *raw, size_t len, size_t step)
{
    struct result r = {BR_AGAIN, 0, NULL, 0};
    size_t off = 0;
    while (off < len) {
        size_t n = step ? (len - off < step ? len - off : step) : len - off;
        size_t used = 0;
        r.rc = br__http_parser_feed(p, raw + off, n, &used);
        off += used;
        if (r.rc != BR_AGAIN) {
            break;
        }
    }
    r.consumed = off;
    r.status = p->status;
    r.code = p->code;
    return r;
}

static struct result parse1(const char *raw, const struct br_http_limits *lim, size_t step)
{
    struct br__http_parser p;
    struct br_http_limits l = lim ? *lim : lim_default();
    br__http_parser_init(&p);
    br__http_parser_begin(&p, &l);
    struct result r = feed(&p, raw, strlen(raw), step);
    br__http_parser_cleanup(&p);
    return r;
}

/* Same outcome whether the input arrives at once, byte by byte, or in 7-byte pieces. */
static void expect_status(const char *raw, const struct br_http_limits *lim, int status)
{
    size_t steps[] = {0, 1, 7};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        struct result r = parse1(raw, lim, steps[i]);
        if (status == 0) {
            if (r.rc != BR_OK) {
                fprintf(stderr, "code=%s msg=%s\n", r.code ? r.code : "-", "");
                fprintf(stderr, "expected OK (step %zu), got rc=%d status=%d for: %s\n", steps[i],
                        r.rc, r.status, raw);
            }
            assert_int_equal(r.rc, BR_OK);
        } else {
            if (r.status != status) {
                fprintf(stderr, "expected %d (step %zu), got rc=%d status=%d for: %s\n", status,
                        steps[i], r.rc, r.status, raw);
            }
            assert_int_equal(r.rc, BR_ERR_PARSE);
            assert_int_equal(r.status, status);
        }
    }
}

static void expect_bad(const char *raw)
{
    expect_status(raw, NULL, 400);
}

static void test_simple_get(void **state)
{
    (void)state;
    const char *raw = "GET /v1/models?x=1&y=2 HTTP/1.1\r\nHost: a\r\nX-Thing:  v a l  \r\n\r\n";
    struct br__http_parser p;
    struct br_http_limits l = lim_default();
    br__http_parser_init(&p);
    br__http_parser_begin(&p, &l);
    size_t used = 0;
    assert_int_equal(br__http_parser_feed(&p, raw, strlen(raw), &used), BR_OK);
    assert_int_equal(used, strlen(raw));
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    struct br_http_request req;
    memset(&req, 0, sizeof(req));
    assert_int_equal(br__http_parser_fill(&p, a, &req), BR_OK);
    assert_int_equal(req.method, BR_HTTP_METHOD_GET);
    assert_true(br_slice_eq_cstr(req.method_name, "GET"));
    assert_true(br_slice_eq_cstr(req.target, "/v1/models?x=1&y=2"));
    assert_true(br_slice_eq_cstr(req.path, "/v1/models"));
    assert_true(br_slice_eq_cstr(req.query, "x=1&y=2"));
    assert_int_equal(req.http_minor, 1);
    assert_int_equal(req.n_headers, 2);
    assert_true(br_slice_eq_cstr(req.headers[0].name, "Host"));
    assert_true(br_slice_eq_cstr(req.headers[0].value, "a"));
    assert_true(br_slice_eq_cstr(req.headers[1].value, "v a l"));
    assert_int_equal(req.body.len, 0);
    assert_true(p.keep_alive);
    br_arena_destroy(a);
    br__http_parser_cleanup(&p);
}

static void test_body_content_length(void **state)
{
    (void)state;
    const char *raw = "POST /echo HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world";
    struct br__http_parser p;
    struct br_http_limits l = lim_default();
    br__http_parser_init(&p);
    br__http_parser_begin(&p, &l);
    struct result r = feed(&p, raw, strlen(raw), 3);
    assert_int_equal(r.rc, BR_OK);
    assert_int_equal(p.body.len, 11);
    assert_memory_equal(p.body.ptr, "hello world", 11);
    br__http_parser_cleanup(&p);
}

static void test_body_chunked(void **state)
{
    (void)state;
    const char *raw = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n"
                      "0\r\nTrailer-One: x\r\n\r\n";
    for (size_t step = 0; step < 9; step++) {
        struct br__http_parser p;
        struct br_http_limits l = lim_default();
        br__http_parser_init(&p);
        br__http_parser_begin(&p, &l);
        struct result r = feed(&p, raw, strlen(raw), step);
        assert_int_equal(r.rc, BR_OK);
        assert_int_equal(r.consumed, strlen(raw));
        assert_true(p.chunked);
        assert_int_equal(p.body.len, 16);
        assert_memory_equal(p.body.ptr, "hello 0123456789", 16);
        assert_int_equal(p.n_fields, 1); /* trailers are not request headers */
        br__http_parser_cleanup(&p);
    }
}

static void test_chunked_rejections(void **state)
{
    (void)state;
    const char *h = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    const char *bodies[] = {
        "0_2e\r\n\r\n",                       /* garden: python int() chunk sizes */
        "-0x0\r\n\r\n",                       /* sign and 0x prefix */
        "+1\r\nZ\r\n0\r\n\r\n",               /* sign */
        "0x1\r\nZ\r\n0\r\n\r\n",              /* 0x prefix */
        "   0\r\n\r\n",                       /* whitespace before the size */
        "1 \r\nZ\r\n0\r\n\r\n",               /* whitespace after the size */
        "Z\r\nZZ\r\n\r\n",                    /* not hex */
        "\r\n\r\n",                           /* empty size */
        "5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\n", /* bare CR in the size line */
        "a\r\n0123456789\n0\r\n\r\n",         /* bare LF after data */
        "1\r\nZX0\r\n\r\n",                   /* data longer than the size */
        "1\r\nZ\r\n0\r\nA: b\r\n c\r\n\r\n",  /* obs-fold in a trailer */
        "1\r\nZ\r\n0\r\nA: b\x01\r\n\r\n",    /* control byte in a trailer */
        "ffffffffffffffffff\r\n",             /* size overflow */
        "0\r\n\n",                            /* bare LF ends the trailer section (llhttp 8.1
                                                 accepts it; found by fuzz_http_chunked) */
        "0\r\nA: b\n\r\n",                    /* bare LF ends a trailer line */
        "1\r\nZ\r\n0\r\n\r\r",                /* bare CR at the end */
    };
    char raw[512];
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        snprintf(raw, sizeof(raw), "%s%s", h, bodies[i]);
        expect_bad(raw);
    }
}

static void test_limits_request_line(void **state)
{
    (void)state;
    struct br_http_limits l = lim_default();
    l.request_line_bytes = 64;
    char raw[512];
    /* "GET " + target + " HTTP/1.1" = 64 bytes exactly is fine, 65 is not. */
    char target[128];
    memset(target, 'a', sizeof(target));
    target[0] = '/';
    int tlen = 64 - 13;
    snprintf(raw, sizeof(raw), "GET %.*s HTTP/1.1\r\n\r\n", tlen, target);
    expect_status(raw, &l, 0);
    snprintf(raw, sizeof(raw), "GET %.*s HTTP/1.1\r\n\r\n", tlen + 1, target);
    expect_status(raw, &l, 414);
    /* Rejected before the line ends: no CRLF needed. */
    snprintf(raw, sizeof(raw), "GET %.*s", 100, target);
    expect_status(raw, &l, 414);
}

static void test_limits_headers(void **state)
{
    (void)state;
    struct br_http_limits l = lim_default();
    l.header_bytes = 100;
    char raw[1024];
    /* "A: " + 90 + CRLF = 95, + final CRLF = 97 <= 100 */
    char v[256];
    memset(v, 'v', sizeof(v));
    snprintf(raw, sizeof(raw), "GET / HTTP/1.1\r\nA: %.*s\r\n\r\n", 90, v);
    expect_status(raw, &l, 0);
    snprintf(raw, sizeof(raw), "GET / HTTP/1.1\r\nA: %.*s\r\n\r\n", 94, v);
    expect_status(raw, &l, 431);
    /* Field count. */
    l = lim_default();
    l.header_fields = 3;
    expect_status("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", &l, 0);
    expect_status("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", &l, 431);
    /* Trailers count against the same limits. */
    l = lim_default();
    l.header_fields = 2;
    expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\n"
                  "C: 3\r\n\r\n",
                  &l, 431);
}

static void test_limits_body(void **state)
{
    (void)state;
    struct br_http_limits l = lim_default();
    l.body_bytes = 10;
    expect_status("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", &l, 0);
    /* Refused at the head: no body byte needed. */
    expect_status("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", &l, 413);
    expect_status("POST / HTTP/1.1\r\nContent-Length: 99999999999999999\r\n\r\n", &l, 413);
    /* A chunked body that grows past it. */
    expect_status(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n"
        "0\r\n\r\n",
        &l, 0);
    expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n6\r\n", &l,
                  413);
    expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n", &l, 413);
}

static void test_framing_rejections(void **state)
{
    (void)state;
    /* Content-Length and Transfer-Encoding together (either order). */
    expect_bad(
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    expect_bad(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n");
    expect_bad("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello");
    /* Duplicate Content-Length, even with equal values; conflicting ones. */
    expect_bad("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nZ");
    expect_bad("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 0\r\n\r\nZ");
    /* Malformed Content-Length values. */
    expect_bad("POST / HTTP/1.1\r\nContent-Length: \r\n\r\n");
    expect_bad("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nZ");
    expect_bad("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
    expect_bad("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n");
    expect_bad("POST / HTTP/1.1\r\nContent-Length: 1Z\r\n\r\nZ");
    expect_bad("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\nZ");
    expect_bad("POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\nZ");
    /* obs-fold, in the first and in a later field. */
    expect_bad("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n");
    expect_bad("GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n");
    expect_bad("GET / HTTP/1.1\r\n\tContent-Length: 1\r\n\r\nX");
    expect_bad(
        "POST /hello HTTP/1.1\r\nHost: localhost\r\nFoo: bar\r\n Content-Length: 38\r\n\r\n");
    /* Bare LF / bare CR line ends. */
    expect_bad("GET / HTTP/1.1\nHost: a\n\n");
    expect_bad("GET / HTTP/1.1\r\nHost: a\n\r\n");
    expect_bad("GET / HTTP/1.1\r\nHost: a\r\n\n");
    expect_bad("GET /\nHTTP/1.1\r\n\r\n");
    expect_bad("GET / HTTP/1.1\r\nVisible: :/\rSmuggled: :)\r\n\r\n");
    expect_bad("GET / HTTP/1.1\r\nHost: a\r\n\rZGET /evil: HTTP/1.1\r\nHost: a\r\n\r\n");
    /* NUL anywhere in the head. */
    const char nul_value[] = "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n";
    const char nul_name[] = "GET / HTTP/1.1\r\nA\0: b\r\n\r\n";
    const char nul_target[] = "GET /\0 HTTP/1.1\r\n\r\n";
    const char nul_method[] = "\0GET / HTTP/1.1\r\n\r\n";
    const char *nuls[] = {nul_value, nul_name, nul_target, nul_method};
    size_t nul_len[] = {sizeof(nul_value) - 1, sizeof(nul_name) - 1, sizeof(nul_target) - 1,
                        sizeof(nul_method) - 1};
    for (size_t i = 0; i < 4; i++) {
        struct br__http_parser p;
        struct br_http_limits l = lim_default();
        br__http_parser_init(&p);
        br__http_parser_begin(&p, &l);
        struct result r = feed(&p, nuls[i], nul_len[i], 0);
        assert_int_equal(r.rc, BR_ERR_PARSE);
        assert_int_equal(r.status, 400);
        br__http_parser_cleanup(&p);
    }
    /* Whitespace before the colon; empty names; lines without a colon. */
    expect_bad("GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc");
    expect_bad("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n");
    expect_bad("GET / HTTP/1.1\r\n: ignored\r\nHost: a\r\n\r\n");
    expect_bad("GET / HTTP/1.1\r\n:\r\nI: am chopped off\r\n\r\n");
    expect_bad("GET / HTTP/1.1\r\nContent-Length 10\r\n\r\n0123456789");
    /* Invalid bytes in names. */
    expect_bad("GET / HTTP/1.1\r\n\xef"
               "foo: bar\r\n\r\n");
    expect_bad("GET / HTTP/1.1\r\nContent-Length\x85: 10\r\n\r\n0123456789");
    /* Control characters in values. */
    expect_bad("GET / HTTP/1.1\r\nA: b\x01\r\n\r\n");
    /* Duplicate Host. */
    expect_bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    /* HTTP/0.9 style and bad versions. */
    expect_bad("GET /\r\n\r\n");
    expect_bad("GET / HTTP/0.9\r\n\r\n");
    expect_bad("GET / HTTP/1.32\r\n\r\n");
    expect_bad("GET / HTTP/\r\r1.1\r\n\r\n");
    expect_bad("GET / HTTP/4294967295.255\r\n\r\n");
    expect_bad("OPTIONS /url RTSP/1.0\r\n\r\n");
    expect_bad("SOURCE /music ICE/1.0\r\n\r\n");
    expect_bad("GET / HTTP/1.1 \r\n\r\n");
    expect_bad("GET / XTTP/1.1\r\n\r\n");
    expect_status("GET / HTTP/2.0\r\n\r\n", NULL, 505);
    expect_status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NULL, 505);
    /* Methods. */
    expect_status("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", NULL, 501);
    expect_status("BREW /pot HTTP/1.1\r\n\r\n", NULL, 501);
    expect_bad("G=\":<>(e),[T];?\" /get HTTP/1.1\r\n\r\n");
    expect_bad("GET ! HTTP/1.1\r\n\r\n");
    /* Expectations. */
    expect_status("POST / HTTP/1.1\r\nExpect: 100-continue-please\r\nContent-Length: 1\r\n\r\n",
                  NULL, 417);
}

static void test_transfer_encoding(void **state)
{
    (void)state;
    struct {
        const char *te;
        int status;
    } cases[] = {
        {"chunked", 0},
        {"CHUNKED", 0},
        {"Chunked ", 0},
        {"gzip", 501},
        {"gzip, chunked", 501},
        {"pigeons", 501},
        {"identity", 501},
        {"chunkedchunked", 501},
        {"x;q=1, chunked", 501},
        {",chunked", 400},
        {"chunked,", 400},
        {"chunked, chunked", 400},
        {"chunked;a=b", 400},
        {"", 400},
        {"chunked, , gzip", 400},
        {"\xa0"
         "chunked",
         400},
        {"chunked\xa0", 400},
        {"\xff"
         "chunked\xff",
         400},
        {"gzip;q=\"", 400},
        {"ch unked", 400},
        {"chunked x", 400},
    };
    char raw[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(raw, sizeof(raw), "POST / HTTP/1.1\r\nTransfer-Encoding: %s\r\n\r\n0\r\n\r\n",
                 cases[i].te);
        expect_status(raw, NULL, cases[i].status);
    }
    /* Several Transfer-Encoding fields form one list: never exactly "chunked". */
    expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
               "0\r\n\r\n");
    expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "0\r\n\r\n",
                  NULL, 501);
    expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: ,chunked\r\n\r\n"
               "0\r\n\r\n");
    /* Transfer-Encoding in HTTP/1.0. */
    expect_bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
}

static void test_pipelining_and_keepalive(void **state)
{
    (void)state;
    const char *raw = "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                      "\r\nGET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                      "GET /d HTTP/1.1\r\nConnection: close\r\n\r\n";
    const char *targets[] = {"/a", "/b", "/c", "/d"};
    bool keep[] = {true, true, true, false};
    struct br__http_parser p;
    struct br_http_limits l = lim_default();
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    br__http_parser_init(&p);
    size_t off = 0;
    size_t len = strlen(raw);
    for (int i = 0; i < 4; i++) {
        br__http_parser_begin(&p, &l);
        size_t used = 0;
        assert_int_equal(br__http_parser_feed(&p, raw + off, len - off, &used), BR_OK);
        off += used;
        struct br_http_request req;
        memset(&req, 0, sizeof(req));
        assert_int_equal(br__http_parser_fill(&p, a, &req), BR_OK);
        assert_true(br_slice_eq_cstr(req.target, targets[i]));
        assert_int_equal(p.keep_alive, keep[i]);
        if (i == 1) {
            assert_true(br_slice_eq_cstr(req.body, "abc"));
        }
        br_arena_reset(a);
    }
    assert_int_equal(off, len);
    /* Nothing may follow a request that closes the connection. */
    br__http_parser_begin(&p, &l);
    size_t used = 0;
    assert_int_equal(br__http_parser_feed(&p, "GET /e HTTP/1.1\r\n\r\n", 20, &used), BR_ERR_PARSE);
    br__http_parser_cleanup(&p);
    br_arena_destroy(a);
}

static void test_upgrade_ignored(void **state)
{
    (void)state;
    const char *raw = "GET /chat HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                      "GET /next HTTP/1.1\r\n\r\n";
    struct br__http_parser p;
    struct br_http_limits l = lim_default();
    br__http_parser_init(&p);
    br__http_parser_begin(&p, &l);
    size_t used = 0;
    assert_int_equal(br__http_parser_feed(&p, raw, strlen(raw), &used), BR_OK);
    assert_true(used < strlen(raw));
    br__http_parser_begin(&p, &l);
    size_t used2 = 0;
    assert_int_equal(br__http_parser_feed(&p, raw + used, strlen(raw) - used, &used2), BR_OK);
    assert_int_equal(used + used2, strlen(raw));
    br__http_parser_cleanup(&p);
    /* An upgrade request with a body: the body is read as a body, not as a new protocol. */
    expect_status("POST / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n"
                  "\r\nhi",
                  NULL, 0);
}

static void test_leading_crlf_and_expect(void **state)
{
    (void)state;
    expect_status("\r\nGET / HTTP/1.1\r\n\r\n", NULL, 0);
    expect_status("\r\n\r\nGET / HTTP/1.1\r\n\r\n", NULL, 0);
    struct br__http_parser p;
    struct br_http_limits l = lim_default();
    br__http_parser_init(&p);
    br__http_parser_begin(&p, &l);
    const char *h = "POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
    size_t used = 0;
    assert_int_equal(br__http_parser_feed(&p, h, strlen(h), &used), BR_AGAIN);
    assert_true(p.expect_continue);
    assert_true(br__http_parser_wants_body(&p));
    assert_int_equal(br__http_parser_feed(&p, "ok", 2, &used), BR_OK);
    br__http_parser_cleanup(&p);
    /* HTTP/1.0 expectations are ignored (RFC 9110 section 10.1.1). */
    br__http_parser_init(&p);
    br__http_parser_begin(&p, &l);
    h = "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    assert_int_equal(br__http_parser_feed(&p, h, strlen(h), &used), BR_AGAIN);
    assert_false(p.expect_continue);
    br__http_parser_cleanup(&p);
}

static void test_request_id(void **state)
{
    (void)state;
    char id128[129];
    memset(id128, 'x', 128);
    id128[128] = '\0';
    struct {
        const char *value;
        bool valid;
    } cases[] = {
        {"abc-123", true}, {id128, true}, {"", false}, {"a b", false}, {"caf\xc3\xa9", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char raw[512];
        snprintf(raw, sizeof(raw), "GET / HTTP/1.1\r\nX-Request-Id: %s\r\n\r\n", cases[i].value);
        struct br__http_parser p;
        struct br_http_limits l = lim_default();
        br__http_parser_init(&p);
        br__http_parser_begin(&p, &l);
        size_t used = 0;
        assert_int_equal(br__http_parser_feed(&p, raw, strlen(raw), &used), BR_OK);
        struct br_slice id = br__http_parser_request_id(&p);
        if (cases[i].valid) {
            assert_true(br_slice_eq_cstr(id, cases[i].value));
        } else {
            assert_int_equal(id.len, 0);
        }
        br__http_parser_cleanup(&p);
    }
    /* 129 bytes is too long. */
    char raw[512];
    snprintf(raw, sizeof(raw), "GET / HTTP/1.1\r\nx-request-id: %sy\r\n\r\n", id128);
    struct br__http_parser p;
    struct br_http_limits l = lim_default();
    br__http_parser_init(&p);
    br__http_parser_begin(&p, &l);
    size_t used = 0;
    assert_int_equal(br__http_parser_feed(&p, raw, strlen(raw), &used), BR_OK);
    assert_int_equal(br__http_parser_request_id(&p).len, 0);
    br__http_parser_cleanup(&p);
}

static void test_alloc_failures(void **state)
{
    (void)state;
    const char *raw = "POST /x HTTP/1.1\r\nA: 1\r\nB: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n0\r\n\r\n";
    for (uint64_t n = 1; n < 16; n++) {
        struct br__http_parser p;
        struct br_http_limits l = lim_default();
        br__http_parser_init(&p);
        br__http_parser_begin(&p, &l);
        br_alloc_fail_at(n);
        size_t used = 0;
        int rc = br__http_parser_feed(&p, raw, strlen(raw), &used);
        br_alloc_fail_at(0);
        assert_true(rc == BR_OK || rc == BR_ERR_NOMEM);
        if (rc == BR_ERR_NOMEM) {
            assert_int_equal(p.status, 503);
        }
        br__http_parser_cleanup(&p);
    }
}

int main(int argc, char **argv)
{
    /* One test per line: CMake registers them line by line. */
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_body_content_length),
        cmocka_unit_test(test_body_chunked),
        cmocka_unit_test(test_chunked_rejections),
        cmocka_unit_test(test_limits_request_line),
        cmocka_unit_test(test_limits_headers),
        cmocka_unit_test(test_limits_body),
        cmocka_unit_test(test_framing_rejections),
        cmocka_unit_test(test_transfer_encoding),
        cmocka_unit_test(test_pipelining_and_keepalive),
        cmocka_unit_test(test_upgrade_ignored),
        cmocka_unit_test(test_leading_crlf_and_expect),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_alloc_failures),
    };
    /* clang-format on */
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("http_parse", tests, NULL, NULL);
}
