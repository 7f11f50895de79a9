/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for chunked request bodies (src/http/http_parse.c): the input is the body
 * of "POST / HTTP/1.1 / Transfer-Encoding: chunked". Our parser is compared with a small,
 * deliberately lenient reference de-chunker written here: whatever we accept, the reference
 * must accept with the same body and the same end; a body the reference completes must never
 * leave us waiting for more; a body over the limit must get 413. The verdict must not depend
 * on how the input is split into reads. No leaks.
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
        (void)fprintf(stderr, "fuzz_http_chunked: check failed: %s (line %d)\n", what, line);
        abort();
    }
}

#define CHECK(x) check((x), #x, __LINE__)

static const char k_head[] = "POST /c HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n";

#define BODY_LIMIT 4096u

enum ref_result { REF_INVALID = -1, REF_INCOMPLETE = 0, REF_COMPLETE = 1, REF_OVER = 2 };

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Finds CRLF at or after i; returns its offset or n when absent. A bare CR or LF is invalid. */
static size_t line_end(const uint8_t *d, size_t n, size_t i, bool *bad)
{
    for (; i < n; i++) {
        if (d[i] == '\n' || (d[i] == '\r' && i + 1 < n && d[i + 1] != '\n')) {
            *bad = true;
            return n;
        }
        if (d[i] == '\r') {
            return i;
        }
    }
    return n;
}

/* Chunk-size line: 1*HEXDIG then anything up to CRLF. Sets *size and moves *i past it. */
static enum ref_result ref_size_line(const uint8_t *d, size_t n, size_t *i, uint64_t *size)
{
    size_t digits = 0;
    *size = 0;
    while (*i < n && hexval(d[*i]) >= 0) {
        if (*size >> 60) {
            return REF_INVALID; /* overflow */
        }
        *size = *size * 16 + (uint64_t)hexval(d[*i]);
        (*i)++;
        digits++;
    }
    if (*i == n) {
        return REF_INCOMPLETE;
    }
    if (digits == 0) {
        return REF_INVALID;
    }
    bool bad = false;
    size_t e = line_end(d, n, *i, &bad);
    if (bad) {
        return REF_INVALID;
    }
    if (e + 1 >= n) {
        return REF_INCOMPLETE;
    }
    *i = e + 2;
    return REF_COMPLETE;
}

/* Trailer lines up to an empty one; *end is the offset after it. */
static enum ref_result ref_trailers(const uint8_t *d, size_t n, size_t i, size_t *end)
{
    for (;;) {
        bool bad = false;
        size_t e = line_end(d, n, i, &bad);
        if (bad) {
            return REF_INVALID;
        }
        if (e + 1 >= n) {
            return REF_INCOMPLETE;
        }
        if (e == i) {
            *end = e + 2;
            return REF_COMPLETE;
        }
        i = e + 2;
    }
}

/*
 * Lenient reference: 1*HEXDIG, then anything up to CRLF (extensions), data, CRLF; after the
 * last chunk, any lines up to an empty one. REF_OVER as soon as a chunk size line announces
 * more than the body limit in total.
 */
static enum ref_result ref_dechunk(const uint8_t *d, size_t n, uint8_t *body, size_t *total,
                                   size_t *end)
{
    size_t i = 0;
    *total = 0;
    for (;;) {
        uint64_t size = 0;
        enum ref_result r = ref_size_line(d, n, &i, &size);
        if (r != REF_COMPLETE) {
            return r;
        }
        if (size == 0) {
            return ref_trailers(d, n, i, end);
        }
        if (size > BODY_LIMIT - *total) {
            return REF_OVER;
        }
        if (n - i < size) {
            return REF_INCOMPLETE;
        }
        memcpy(body + *total, d + i, (size_t)size);
        *total += (size_t)size;
        i += (size_t)size;
        if (n - i < 2) {
            return REF_INCOMPLETE;
        }
        if (d[i] != '\r' || d[i + 1] != '\n') {
            return REF_INVALID;
        }
        i += 2;
    }
}

struct ours {
    int rc;
    int status;
    size_t consumed;
    size_t body_len;
    uint8_t body[BODY_LIMIT];
};

static void run(const uint8_t *msg, size_t size, size_t step, const struct br_http_limits *l,
                struct ours *o)
{
    struct br__http_parser p;
    br__http_parser_init(&p);
    br__http_parser_begin(&p, l);
    size_t off = 0;
    o->rc = BR_AGAIN;
    o->status = 0;
    o->body_len = 0;
    while (off < size) {
        size_t n = size - off;
        if (step && n > step) {
            n = step;
        }
        size_t used = 0;
        o->rc = br__http_parser_feed(&p, (const char *)msg + off, n, &used);
        CHECK(used <= n);
        off += used;
        if (o->rc != BR_AGAIN) {
            break;
        }
    }
    o->consumed = off;
    o->status = p.status;
    if (o->rc == BR_OK) {
        br_arena *a = NULL;
        if (br_arena_create(0, &a) != BR_OK) {
            abort();
        }
        struct br_http_request req;
        memset(&req, 0, sizeof(req));
        CHECK(br__http_parser_fill(&p, a, &req) == BR_OK);
        CHECK(req.body.len <= BODY_LIMIT);
        o->body_len = req.body.len;
        memcpy(o->body, req.body.ptr, req.body.len);
        br_arena_destroy(a);
    }
    br__http_parser_cleanup(&p);
}

/* Our verdict must match the reference wherever the reference is sure. */
static void compare_with_reference(const uint8_t *data, size_t size, size_t hl,
                                   const struct ours *o)
{
    static uint8_t ref_body[BODY_LIMIT];
    size_t ref_total = 0;
    size_t ref_end = 0;
    enum ref_result r = ref_dechunk(data, size, ref_body, &ref_total, &ref_end);
    if (o->rc == BR_OK) {
        CHECK(r == REF_COMPLETE);
        CHECK(ref_total == o->body_len);
        CHECK(memcmp(ref_body, o->body, ref_total) == 0);
        CHECK(o->consumed == hl + ref_end);
    }
    if (r == REF_OVER) {
        /* 413, or an earlier rejection the lenient reference does not make. */
        CHECK(o->rc == BR_ERR_PARSE);
    }
    if (r == REF_COMPLETE) {
        CHECK(o->rc != BR_AGAIN); /* never left waiting on a complete body */
    }
    if (o->rc == BR_ERR_PARSE) {
        CHECK(o->status == 400 || o->status == 413 || o->status == 431);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t hl = sizeof(k_head) - 1;
    uint8_t *msg = malloc(hl + size + 1);
    if (!msg) {
        return 0;
    }
    memcpy(msg, k_head, hl);
    memcpy(msg + hl, data, size);
    struct br_http_limits l;
    br_http_limits_default(&l);
    l.body_bytes = BODY_LIMIT;
    l.header_bytes = 1024;
    l.header_fields = 8;
    static struct ours whole;
    static struct ours split;
    run(msg, hl + size, 0, &l, &whole);
    run(msg, hl + size, 1 + size % 7, &l, &split);
    CHECK(whole.rc == split.rc);
    CHECK(whole.status == split.status);
    if (whole.rc == BR_OK) {
        CHECK(whole.consumed == split.consumed);
        CHECK(whole.body_len == split.body_len);
        CHECK(memcmp(whole.body, split.body, whole.body_len) == 0);
    }
    compare_with_reference(data, size, hl, &whole);
    free(msg);
    return 0;
}
