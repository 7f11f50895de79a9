/* SPDX-License-Identifier: MIT */
/*
 * Python list literals of strings, as RouterBench stores prompts and answers
 * ("['Write a function ...']", str() of a Python list). Only what repr() of a list of str
 * produces is accepted, plus the escapes a hand-written literal may use; anything else is an
 * error with the offset of the offending byte. See br__pylist_decode in eval_int.h.
 */
#include <stdint.h>
#include <string.h>

#include "core/err.h"
#include "eval/eval_int.h"

struct pyl {
    const char *s;
    size_t n;
    size_t i;
    struct br_buf *out;
    const char *what;
};

static int fail(struct pyl *p, const char *what)
{
    p->what = what;
    return BR_ERR_PARSE;
}

static void skip_ws(struct pyl *p)
{
    while (p->i < p->n &&
           (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r')) {
        p->i++;
    }
}

static int hexval(char c)
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

static int put_cp(struct pyl *p, uint32_t cp)
{
    char u[4];
    size_t k;
    if (cp == 0) {
        return fail(p, "NUL character");
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) {
        return fail(p, "surrogate code point");
    }
    if (cp > 0x10FFFF) {
        return fail(p, "code point above U+10FFFF");
    }
    if (cp < 0x80) {
        u[0] = (char)cp;
        k = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        k = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        k = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        k = 4;
    }
    return br_buf_append(p->out, u, k);
}

/* \x, \u, \U: exactly `digits` hex digits after the letter. */
static int hex_escape(struct pyl *p, size_t digits)
{
    uint32_t cp = 0;
    if (p->n - p->i < digits) {
        return fail(p, "truncated hex escape");
    }
    for (size_t k = 0; k < digits; k++) {
        int h = hexval(p->s[p->i + k]);
        if (h < 0) {
            return fail(p, "bad hex escape");
        }
        cp = (cp << 4) | (uint32_t)h;
    }
    p->i += digits;
    return put_cp(p, cp);
}

/* After a backslash (p->i at the escaped character). */
static int escape(struct pyl *p)
{
    if (p->i >= p->n) {
        return fail(p, "backslash at the end");
    }
    char c = p->s[p->i++];
    static const char from[] = "\\'\"abfnrtv";
    static const char to[] = "\\'\"\a\b\f\n\r\t\v";
    const char *hit = memchr(from, c, sizeof(from) - 1);
    if (hit != NULL) {
        return br_buf_append(p->out, &to[hit - from], 1);
    }
    if (c == '\n') {
        return BR_OK; /* line continuation */
    }
    if (c >= '0' && c <= '7') {
        uint32_t v = (uint32_t)(c - '0');
        for (int k = 0; k < 2 && p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '7'; k++) {
            v = v * 8 + (uint32_t)(p->s[p->i++] - '0');
        }
        return put_cp(p, v);
    }
    if (c == 'x') {
        return hex_escape(p, 2);
    }
    if (c == 'u') {
        return hex_escape(p, 4);
    }
    if (c == 'U') {
        return hex_escape(p, 8);
    }
    if (c == 'N') {
        return fail(p, "\\N{...} escapes are not supported");
    }
    /* Python keeps unknown escapes as written. */
    char two[2] = {'\\', c};
    return br_buf_append(p->out, two, 2);
}

static int string_lit(struct pyl *p)
{
    char q = p->s[p->i++];
    for (;;) {
        if (p->i >= p->n) {
            return fail(p, "unterminated string");
        }
        size_t start = p->i;
        while (p->i < p->n && p->s[p->i] != q && p->s[p->i] != '\\' && p->s[p->i] != '\n' &&
               p->s[p->i] != '\r' && p->s[p->i] != '\0') {
            p->i++;
        }
        int rc = br_buf_append(p->out, p->s + start, p->i - start);
        if (rc != BR_OK) {
            return rc;
        }
        if (p->i >= p->n) {
            return fail(p, "unterminated string");
        }
        char c = p->s[p->i];
        if (c == q) {
            p->i++;
            return BR_OK;
        }
        if (c == '\n' || c == '\r') {
            return fail(p, "raw newline inside a string");
        }
        if (c == '\0') {
            return fail(p, "NUL byte");
        }
        p->i++; /* backslash */
        rc = escape(p);
        if (rc != BR_OK) {
            return rc;
        }
    }
}

/* The items after '[': strings separated by commas, up to and including ']'. */
static int items(struct pyl *p)
{
    size_t n_items = 0;
    for (;;) {
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ']') {
            p->i++;
            return BR_OK;
        }
        if (p->i >= p->n || (p->s[p->i] != '\'' && p->s[p->i] != '"')) {
            return fail(p, n_items ? "expected a string or ']'" : "expected a string");
        }
        if (n_items > 0) {
            int rc = br_buf_append(p->out, "\n\n", 2);
            if (rc != BR_OK) {
                return rc;
            }
        }
        int rc = string_lit(p);
        if (rc != BR_OK) {
            return rc;
        }
        n_items++;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
        } else if (p->i >= p->n || p->s[p->i] != ']') {
            return fail(p, "expected ',' or ']'");
        }
    }
}

int br__pylist_decode(const char *s, size_t n, struct br_buf *out, const char **what, size_t *off)
{
    struct pyl p = {.s = s, .n = n, .i = 0, .out = out, .what = NULL};
    int rc;
    skip_ws(&p);
    if (p.i >= p.n || p.s[p.i] != '[') {
        rc = fail(&p, "expected '['");
    } else {
        p.i++;
        rc = items(&p);
    }
    if (rc == BR_OK) {
        skip_ws(&p);
        if (p.i != p.n) {
            rc = fail(&p, "data after ']'");
        }
    }
    if (rc == BR_ERR_LIMIT) {
        p.what = "text too long";
        rc = BR_ERR_PARSE;
    }
    if (what != NULL) {
        *what = p.what;
    }
    if (off != NULL) {
        *off = p.i;
    }
    return rc;
}
