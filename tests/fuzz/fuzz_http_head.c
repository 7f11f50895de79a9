/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the HTTP/1 request parser (src/http/http_parse.c), head path first:
 * arbitrary bytes are parsed as a stream of pipelined requests under small limits, once in one
 * piece and once split into small reads. Invariants: the verdict (requests, their contents,
 * the final status) does not depend on the split; every accepted request respects the limits
 * and carries no CR, LF or NUL in its header fields; every rejection has a known status; no
 * leaks (the parser and the arena are freed on every path).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/err.h"
#include "http/http_int.h"

/* A function, not an if in a macro, so that checks do not count as branches of the caller. */
static void check(bool ok, const char *what, int line)
{
    if (!ok) {
        (void)fprintf(stderr, "fuzz_http_head: check failed: %s (line %d)\n", what, line);
        abort();
    }
}

#define CHECK(x) check((x), #x, __LINE__)

struct verdict {
    int n_msgs;
    int rc;
    int status;
    uint64_t digest;
    size_t consumed;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ b[i]) * 0x100000001b3ull;
    }
    return (h ^ 0xff) * 0x100000001b3ull;
}

static bool tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Names are tokens, values carry no CR, LF, NUL or edge spaces; returns their hash. */
static uint64_t check_fields(const struct br_http_request *req, const struct br_http_limits *l,
                             uint64_t h)
{
    size_t bytes = 0;
    for (size_t i = 0; i < req->n_headers; i++) {
        struct br_slice n = req->headers[i].name;
        struct br_slice v = req->headers[i].value;
        CHECK(n.len > 0);
        for (size_t k = 0; k < n.len; k++) {
            CHECK(tchar((unsigned char)n.ptr[k]));
        }
        CHECK(memchr(v.ptr, '\r', v.len) == NULL && memchr(v.ptr, '\n', v.len) == NULL &&
              memchr(v.ptr, '\0', v.len) == NULL);
        CHECK(v.len == 0 || (v.ptr[0] != ' ' && v.ptr[v.len - 1] != ' '));
        bytes += n.len + v.len;
        h = fnv(h, n.ptr, n.len);
        h = fnv(h, v.ptr, v.len);
    }
    CHECK(bytes <= l->header_bytes);
    return h;
}

static uint64_t check_request(const struct br_http_request *req, const struct br_http_limits *l)
{
    CHECK(req->method_name.len > 0);
    CHECK(req->target.len > 0);
    CHECK(req->target.len <= l->request_line_bytes);
    CHECK(req->http_minor == 0 || req->http_minor == 1);
    CHECK(req->path.len <= req->target.len);
    CHECK(req->n_headers <= l->header_fields);
    CHECK(req->body.len <= l->body_bytes);
    uint64_t h = fnv(0xcbf29ce484222325ull, req->method_name.ptr, req->method_name.len);
    h = fnv(h, req->target.ptr, req->target.len);
    h = check_fields(req, l, h);
    return fnv(h, req->body.ptr, req->body.len);
}

static bool known_status(int s)
{
    return s == 400 || s == 413 || s == 414 || s == 417 || s == 431 || s == 501 || s == 503 ||
           s == 505;
}

static struct verdict run(const uint8_t *data, size_t size, size_t step,
                          const struct br_http_limits *l)
{
    struct verdict v = {0, BR_AGAIN, 0, 0, 0};
    struct br__http_parser p;
    br_arena *arena = NULL;
    if (br_arena_create(1u << 20, &arena) != BR_OK) {
        abort();
    }
    br__http_parser_init(&p);
    br__http_parser_begin(&p, l);
    size_t off = 0;
    while (off < size) {
        size_t n = size - off;
        if (step && n > step) {
            n = step;
        }
        size_t used = 0;
        int rc = br__http_parser_feed(&p, (const char *)data + off, n, &used);
        CHECK(used <= n);
        off += used;
        v.rc = rc;
        if (rc == BR_AGAIN) {
            CHECK(used == n);
            continue;
        }
        if (rc == BR_OK) {
            struct br_http_request req;
            memset(&req, 0, sizeof(req));
            CHECK(br__http_parser_fill(&p, arena, &req) == BR_OK);
            v.digest = fnv(v.digest, &v.n_msgs, sizeof(v.n_msgs)) ^ check_request(&req, l);
            struct br_slice id = br__http_parser_request_id(&p);
            CHECK(id.len <= 128);
            v.n_msgs++;
            br_arena_reset(arena);
            if (!p.keep_alive) {
                break;
            }
            br__http_parser_begin(&p, l);
            v.rc = BR_AGAIN;
            continue;
        }
        CHECK(rc == BR_ERR_PARSE || rc == BR_ERR_NOMEM);
        CHECK(known_status(p.status));
        CHECK(p.code != NULL && p.message != NULL);
        v.status = p.status;
        break;
    }
    v.consumed = off;
    br__http_parser_cleanup(&p);
    br_arena_destroy(arena);
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct br_http_limits l;
    br_http_limits_default(&l);
    l.request_line_bytes = 200;
    l.header_bytes = 600;
    l.header_fields = 12;
    l.body_bytes = 2000;
    struct verdict whole = run(data, size, 0, &l);
    /* The split is derived from the input so that corpus files stay raw HTTP. */
    size_t step = 1 + size % 11;
    struct verdict split = run(data, size, step, &l);
    CHECK(whole.n_msgs == split.n_msgs);
    CHECK(whole.rc == split.rc);
    CHECK(whole.status == split.status);
    CHECK(whole.digest == split.digest);
    if (whole.rc == BR_OK || whole.rc == BR_AGAIN) {
        CHECK(whole.consumed == split.consumed);
    }
    return 0;
}
