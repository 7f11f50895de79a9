/* SPDX-License-Identifier: MIT */
/* Capped growable buffer. */
#include "core/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"

void br_buf_init(struct br_buf *b, size_t max)
{
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void br_buf_cleanup(struct br_buf *b)
{
    br_free(b->ptr);
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
}

int br_buf_reserve(struct br_buf *b, size_t extra)
{
    /* The last test keeps len + extra + 1 (room for the NUL) from wrapping when max is huge. */
    if (extra > b->max || b->len > b->max - extra || b->len + extra == SIZE_MAX) {
        return BR_ERR_LIMIT;
    }
    size_t need = b->len + extra + 1; /* + NUL */
    if (need <= b->cap) {
        return BR_OK;
    }
    size_t ncap = b->cap ? b->cap : 64;
    while (ncap < need) {
        ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
    }
    if (ncap - 1 > b->max) { /* not ncap > max + 1, which wraps to 0 when max == SIZE_MAX */
        ncap = b->max + 1;
    }
    char *p = br_realloc(b->ptr, ncap);
    if (!p) {
        return BR_ERR_NOMEM;
    }
    b->ptr = p;
    b->cap = ncap;
    return BR_OK;
}

int br_buf_append(struct br_buf *b, const void *p, size_t n)
{
    int rc = br_buf_reserve(b, n);
    if (rc != BR_OK) {
        return rc;
    }
    if (n) {
        memcpy(b->ptr + b->len, p, n);
    }
    b->len += n;
    b->ptr[b->len] = '\0';
    return BR_OK;
}

int br_buf_append_cstr(struct br_buf *b, const char *s)
{
    return br_buf_append(b, s, strlen(s));
}

int br_buf_vprintf(struct br_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char small[256];
    int n = vsnprintf(small, sizeof(small), fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        return BR_ERR_INVAL;
    }
    if ((size_t)n < sizeof(small)) {
        return br_buf_append(b, small, (size_t)n);
    }
    int rc = br_buf_reserve(b, (size_t)n);
    if (rc != BR_OK) {
        return rc;
    }
    (void)vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return BR_OK;
}

int br_buf_printf(struct br_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = br_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void br_buf_consume(struct br_buf *b, size_t n)
{
    if (n >= b->len) {
        br_buf_reset(b);
        return;
    }
    memmove(b->ptr, b->ptr + n, b->len - n);
    b->len -= n;
    b->ptr[b->len] = '\0';
}

void br_buf_reset(struct br_buf *b)
{
    b->len = 0;
    if (b->ptr) {
        b->ptr[0] = '\0';
    }
}

char *br_buf_steal(struct br_buf *b)
{
    char *p = b->ptr;
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}
