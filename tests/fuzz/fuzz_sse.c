/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the text/event-stream parser. Input: two bytes choosing split points,
 * then the stream. Invariant: feeding the stream in three pieces (and, for short inputs, a
 * byte at a time) yields exactly the events and the result of feeding it at once, with the
 * default cap and with a small one that makes BR_ERR_LIMIT reachable.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "upstream/sse.h"

struct digest {
    unsigned char *p;
    size_t len;
    size_t cap;
};

static void put(struct digest *d, const void *s, size_t n)
{
    if (d->len + n + 1 > d->cap) {
        size_t cap = (d->len + n + 1) * 2;
        unsigned char *q = realloc(d->p, cap);
        if (!q) {
            abort();
        }
        d->p = q;
        d->cap = cap;
    }
    if (n) {
        memcpy(d->p + d->len, s, n);
    }
    d->len += n;
}

static void put_slice(struct digest *d, struct br_slice s)
{
    put(d, &s.len, sizeof(s.len));
    put(d, s.ptr, s.len);
}

static int on_event(void *user, const struct br_sse_event *ev)
{
    struct digest *d = user;
    put_slice(d, ev->event);
    put_slice(d, ev->data);
    put_slice(d, ev->id);
    return 0;
}

/* Feeds the pieces [0,a) [a,b) [b,n) (or bytewise), then finish; returns the first error. */
static int run(const char *s, size_t n, size_t a, size_t b, int bytewise, size_t cap,
               struct digest *d)
{
    struct br_sse_parser p;
    br_sse_parser_init(&p, cap);
    int rc = BR_OK;
    if (bytewise) {
        for (size_t i = 0; i < n && rc == BR_OK; i++) {
            rc = br_sse_parser_feed(&p, s + i, 1, on_event, d);
        }
    } else {
        rc = br_sse_parser_feed(&p, s, a, on_event, d);
        if (rc == BR_OK) {
            rc = br_sse_parser_feed(&p, s + a, b - a, on_event, d);
        }
        if (rc == BR_OK) {
            rc = br_sse_parser_feed(&p, s + b, n - b, on_event, d);
        }
    }
    if (rc == BR_OK) {
        rc = br_sse_parser_finish(&p, 1, on_event, d);
    }
    br_sse_parser_cleanup(&p);
    return rc;
}

static void check(const char *s, size_t n, size_t a, size_t b, size_t cap)
{
    struct digest whole = {0};
    struct digest split = {0};
    int rc_whole = run(s, n, n, n, 0, cap, &whole);
    int rc_split = run(s, n, a, b, 0, cap, &split);
    if (rc_whole != rc_split || whole.len != split.len ||
        (whole.len && memcmp(whole.p, split.p, whole.len) != 0)) {
        abort();
    }
    if (n <= 512) {
        struct digest bytes = {0};
        int rc_bytes = run(s, n, 0, 0, 1, cap, &bytes);
        if (rc_bytes != rc_whole || bytes.len != whole.len ||
            (whole.len && memcmp(whole.p, bytes.p, whole.len) != 0)) {
            abort();
        }
        free(bytes.p);
    }
    free(whole.p);
    free(split.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    const char *s = (const char *)data + 2;
    size_t n = size - 2;
    size_t a = n * data[0] / 255;
    size_t b = a + (n - a) * data[1] / 255;
    check(s, n, a, b, 0);
    check(s, n, a, b, 64);
    return 0;
}
