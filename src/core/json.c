/* SPDX-License-Identifier: MIT */
/*
 * Strict JSON validation and navigation over raw text (see json.h). The validator is a single
 * pass with an explicit state and a bit stack for nesting; navigation skips nested values by
 * bracket matching. Neither allocates nor recurses.
 */
#include "core/json.h"

#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "core/err.h"

enum { ITER_FIRST, ITER_AFTER, ITER_DONE, ITER_ERROR };

static size_t skip_ws(const char *p, size_t len, size_t i)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) {
        i++;
    }
    return i;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

static int hex4(const char *s, size_t avail, unsigned *out)
{
    unsigned v = 0;
    if (avail < 4) {
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        int d = hexval((unsigned char)s[i]);
        if (d < 0) {
            return -1;
        }
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ validation */

struct vstate {
    const char *p;
    size_t n;
    bool allow_nul;
    size_t off;      /* error offset */
    const char *msg; /* error reason */
};

static int vfail(struct vstate *v, size_t off, const char *msg)
{
    v->off = off;
    v->msg = msg;
    return BR_ERR_PARSE;
}

/* Length of the valid UTF-8 sequence starting at s[0] (>= 0x80), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    size_t len;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) {
            lo = 0xA0; /* no overlong forms */
        } else if (c == 0xED) {
            hi = 0x9F; /* no UTF-16 surrogates */
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) {
            lo = 0x90;
        } else if (c == 0xF4) {
            hi = 0x8F; /* nothing above U+10FFFF */
        }
    } else {
        return 0;
    }
    if (avail < len || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t k = 2; k < len; k++) {
        if (s[k] < 0x80 || s[k] > 0xBF) {
            return 0;
        }
    }
    return len;
}

/* The first index at or after k that ends a run of plain string ASCII (a quote, a backslash, a
 * control character or a byte >= 0x80), or n. */
static size_t plain_run_end(const unsigned char *p, size_t n, size_t k)
{
    /* 16 bytes at a time where SSE2 exists (all x86-64). A signed byte compare below 0x20
     * catches control characters and every byte >= 0x80 at once. */
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i bslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (k + 16 <= n) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)(const void *)(p + k));
        __m128i hit =
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(bytes, quote), _mm_cmpeq_epi8(bytes, bslash)),
                         _mm_cmplt_epi8(bytes, space));
        int mask = _mm_movemask_epi8(hit);
        if (mask) {
            return k + (size_t)__builtin_ctz((unsigned)mask);
        }
        k += 16;
    }
#endif
    while (k < n && p[k] >= 0x20 && p[k] < 0x80 && p[k] != '"' && p[k] != '\\') {
        k++;
    }
    return k;
}

/* *k at a backslash inside a string; on success leaves it just past the escape (a surrogate
 * pair of \u escapes counts as one). */
static int scan_escape(struct vstate *v, const unsigned char *p, size_t n, size_t *k)
{
    size_t at = *k;
    if (at + 1 >= n) {
        return vfail(v, at, "unterminated escape");
    }
    unsigned char e = p[at + 1];
    if (e != 'u') {
        if (!strchr("\"\\/bfnrt", e) || e == '\0') {
            return vfail(v, at, "invalid escape");
        }
        *k = at + 2;
        return BR_OK;
    }
    unsigned cp;
    if (hex4((const char *)p + at + 2, n - at - 2, &cp) != 0) {
        return vfail(v, at, "invalid \\u escape");
    }
    if (cp == 0 && !v->allow_nul) {
        return vfail(v, at, "\\u0000 is not allowed");
    }
    if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return vfail(v, at, "unpaired surrogate escape");
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        unsigned lo;
        if (at + 12 > n || p[at + 6] != '\\' || p[at + 7] != 'u' ||
            hex4((const char *)p + at + 8, n - at - 8, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
            return vfail(v, at, "unpaired surrogate escape");
        }
        *k = at + 12;
        return BR_OK;
    }
    *k = at + 6;
    return BR_OK;
}

/* *i at the opening quote; on success leaves it just past the closing quote. */
static int scan_string(struct vstate *v, size_t *i)
{
    const unsigned char *p = (const unsigned char *)v->p;
    size_t n = v->n;
    size_t k = *i + 1;
    for (;;) {
        /* The common case first: a run of plain ASCII; a quote, a backslash, a control
         * character or a byte >= 0x80 ends it. */
        k = plain_run_end(p, n, k);
        if (k >= n) {
            return vfail(v, k, "unterminated string");
        }
        unsigned char c = p[k];
        if (c == '"') {
            *i = k + 1;
            return BR_OK;
        }
        if (c < 0x20) {
            return vfail(v, k, "control character in string");
        }
        if (c >= 0x80) {
            size_t len = utf8_seq(p + k, n - k);
            if (len == 0) {
                return vfail(v, k, "invalid UTF-8");
            }
            k += len;
            continue;
        }
        int rc = scan_escape(v, p, n, &k);
        if (rc != BR_OK) {
            return rc;
        }
    }
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int scan_number(struct vstate *v, size_t *i)
{
    const char *p = v->p;
    size_t n = v->n;
    size_t k = *i;
    if (p[k] == '-') {
        k++;
    }
    if (k >= n || !is_digit(p[k])) {
        return vfail(v, k, "invalid number");
    }
    if (p[k] == '0') {
        k++;
    } else {
        while (k < n && is_digit(p[k])) {
            k++;
        }
    }
    if (k < n && p[k] == '.') {
        k++;
        if (k >= n || !is_digit(p[k])) {
            return vfail(v, k, "invalid number");
        }
        while (k < n && is_digit(p[k])) {
            k++;
        }
    }
    if (k < n && (p[k] == 'e' || p[k] == 'E')) {
        k++;
        if (k < n && (p[k] == '+' || p[k] == '-')) {
            k++;
        }
        if (k >= n || !is_digit(p[k])) {
            return vfail(v, k, "invalid number");
        }
        while (k < n && is_digit(p[k])) {
            k++;
        }
    }
    *i = k;
    return BR_OK;
}

static int scan_literal(struct vstate *v, size_t *i, const char *lit, size_t len)
{
    if (v->n - *i < len || memcmp(v->p + *i, lit, len) != 0) {
        return vfail(v, *i, "invalid literal");
    }
    *i += len;
    return BR_OK;
}

enum { V_VALUE, V_FIRST_KEY, V_KEY, V_COLON, V_AFTER };

/* One scalar or the opening of a container; updates state and the nesting stack. */
static int scan_value(struct vstate *v, size_t *i, int *state, unsigned char *stack, size_t *depth,
                      size_t max_depth)
{
    const char *p = v->p;
    char c = p[*i];
    int rc = BR_OK;
    *state = V_AFTER;
    switch (c) {
    case '{':
    case '[':
        if (*depth >= max_depth) {
            return vfail(v, *i, "nesting too deep");
        }
        if (c == '{') {
            stack[*depth / 8] |= (unsigned char)(1u << (*depth % 8));
            *state = V_FIRST_KEY;
        } else {
            stack[*depth / 8] &= (unsigned char)~(1u << (*depth % 8));
            size_t k = skip_ws(p, v->n, *i + 1);
            if (k < v->n && p[k] == ']') {
                *i = k + 1;
                return BR_OK; /* empty array: depth unchanged, state AFTER */
            }
            *state = V_VALUE;
        }
        (*depth)++;
        (*i)++;
        return BR_OK;
    case '"':
        return scan_string(v, i);
    case 't':
        return scan_literal(v, i, "true", 4);
    case 'f':
        return scan_literal(v, i, "false", 5);
    case 'n':
        return scan_literal(v, i, "null", 4);
    default:
        if (c == '-' || is_digit(c)) {
            rc = scan_number(v, i);
            return rc;
        }
        return vfail(v, *i, "expected a value");
    }
}

/* One step at text[*i] (neither whitespace nor the end): a value, a member name, a ':' or a ','
 * or the close of a container. Updates the state and the nesting stack. */
static int validate_step(struct vstate *v, size_t *i, int *state, unsigned char *stack,
                         size_t *depth)
{
    char c = v->p[*i];
    if (*state == V_VALUE) {
        return scan_value(v, i, state, stack, depth, BR_JSON_MAX_DEPTH);
    }
    if (*state == V_FIRST_KEY && c == '}') {
        (*depth)--;
        (*i)++;
        *state = V_AFTER;
        return BR_OK;
    }
    if (*state == V_FIRST_KEY || *state == V_KEY) {
        *state = V_COLON;
        return c == '"' ? scan_string(v, i) : vfail(v, *i, "expected a member name");
    }
    if (*state == V_COLON) {
        if (c != ':') {
            return vfail(v, *i, "expected ':'");
        }
        (*i)++;
        *state = V_VALUE;
        return BR_OK;
    }
    /* V_AFTER inside a container. */
    bool in_obj = *depth > 0 && ((stack[(*depth - 1) / 8] >> ((*depth - 1) % 8)) & 1u);
    if (c == ',') {
        (*i)++;
        *state = in_obj ? V_KEY : V_VALUE;
        return BR_OK;
    }
    if (c == (in_obj ? '}' : ']')) {
        (*depth)--;
        (*i)++;
        return BR_OK;
    }
    return vfail(v, *i, in_obj ? "expected ',' or '}'" : "expected ',' or ']'");
}

int br_json_validate(const char *text, size_t n, unsigned flags, size_t *err_off,
                     const char **err_msg)
{
    struct vstate v = {.p = text, .n = n, .allow_nul = (flags & BR_JSON_ALLOW_NUL) != 0};
    unsigned char stack[BR_JSON_MAX_DEPTH / 8] = {0}; /* bit set = object */
    size_t depth = 0;
    int state = V_VALUE;
    int rc = BR_OK;
    size_t i = 0;
    for (;;) {
        i = skip_ws(text, n, i);
        if (state == V_AFTER && depth == 0) {
            rc = i == n ? BR_OK : vfail(&v, i, "data after the JSON value");
            break;
        }
        if (i >= n) {
            rc = vfail(&v, i, "unexpected end of input");
            break;
        }
        rc = validate_step(&v, &i, &state, stack, &depth);
        if (rc != BR_OK) {
            break;
        }
    }
    if (rc != BR_OK) {
        if (err_off) {
            *err_off = v.off;
        }
        if (err_msg) {
            *err_msg = v.msg;
        }
    }
    return rc;
}

/* ------------------------------------------------------------------ navigation */

/* *i is at the opening quote; leaves it just past the closing one. The closing quote is the
 * first '"' preceded by an even number of backslashes; memchr finds candidates quickly. */
static int skip_string(const char *p, size_t len, size_t *i)
{
    size_t open = *i;
    size_t k = open + 1;
    while (k < len) {
        const char *q = memchr(p + k, '"', len - k);
        if (!q) {
            return BR_ERR_PARSE;
        }
        size_t j = (size_t)(q - p);
        size_t b = j;
        while (b > open + 1 && p[b - 1] == '\\') {
            b--;
        }
        if ((j - b) % 2 == 0) {
            *i = j + 1;
            return BR_OK;
        }
        k = j + 1;
    }
    return BR_ERR_PARSE;
}

/* The first index at or after k of a byte that can change the nesting (a quote or a bracket),
 * or len; without SSE2 it returns k and the caller's byte loop does the work. */
static size_t skip_inert(const char *p, size_t len, size_t k)
{
#ifdef __SSE2__
    while (k + 16 <= len) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)(const void *)(p + k));
        __m128i hit =
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(bytes, _mm_set1_epi8('"')),
                                      _mm_cmpeq_epi8(bytes, _mm_set1_epi8('{'))),
                         _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(bytes, _mm_set1_epi8('}')),
                                                   _mm_cmpeq_epi8(bytes, _mm_set1_epi8('['))),
                                      _mm_cmpeq_epi8(bytes, _mm_set1_epi8(']'))));
        int mask = _mm_movemask_epi8(hit);
        if (mask) {
            return k + (size_t)__builtin_ctz((unsigned)mask);
        }
        k += 16;
    }
#else
    (void)p;
    (void)len;
#endif
    return k;
}

static int skip_container(const char *p, size_t len, size_t *i)
{
    /* The opening bracket of each level: written when the level is entered, read when it
     * closes, so the array needs no clearing (this runs for every nested value skipped). */
    char open[BR_JSON_MAX_DEPTH];
    size_t depth = 0;
    size_t k = *i;
    while (k < len) {
        /* Jump over bytes that cannot change the nesting. */
        k = skip_inert(p, len, k);
        if (k >= len) {
            break;
        }
        char c = p[k];
        if (c == '"') {
            int rc = skip_string(p, len, &k);
            if (rc != BR_OK) {
                return rc;
            }
            continue;
        }
        if (c == '{' || c == '[') {
            if (depth == BR_JSON_MAX_DEPTH) {
                return BR_ERR_PARSE;
            }
            open[depth++] = c;
        } else if (c == '}' || c == ']') {
            if (depth == 0) {
                return BR_ERR_PARSE;
            }
            depth--;
            if (open[depth] != (c == '}' ? '{' : '[')) {
                return BR_ERR_PARSE;
            }
            if (depth == 0) {
                *i = k + 1;
                return BR_OK;
            }
        }
        k++;
    }
    return BR_ERR_PARSE;
}

static bool scalar_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '+' ||
           c == '-' || c == '.';
}

static int skip_value(const char *p, size_t len, size_t *i)
{
    if (*i >= len) {
        return BR_ERR_PARSE;
    }
    char c = p[*i];
    if (c == '"') {
        return skip_string(p, len, i);
    }
    if (c == '{' || c == '[') {
        return skip_container(p, len, i);
    }
    size_t k = *i;
    while (k < len && scalar_char(p[k])) {
        k++;
    }
    if (k == *i) {
        return BR_ERR_PARSE;
    }
    *i = k;
    return BR_OK;
}

enum br_json_type br_json_type_of(struct br_slice v)
{
    size_t i = skip_ws(v.ptr, v.len, 0);
    if (i >= v.len) {
        return BR_JSON_INVALID;
    }
    switch (v.ptr[i]) {
    case '{':
        return BR_JSON_OBJECT;
    case '[':
        return BR_JSON_ARRAY;
    case '"':
        return BR_JSON_STRING;
    case 't':
        return BR_JSON_TRUE;
    case 'f':
        return BR_JSON_FALSE;
    case 'n':
        return BR_JSON_NULL;
    default:
        return (v.ptr[i] == '-' || is_digit(v.ptr[i])) ? BR_JSON_NUMBER : BR_JSON_INVALID;
    }
}

static int iter_init(struct br_json_iter *it, struct br_slice s, char open, bool array)
{
    it->p = s.ptr;
    it->len = s.len;
    it->array = array;
    it->pos = skip_ws(s.ptr, s.len, 0);
    if (it->pos >= it->len || it->p[it->pos] != open) {
        it->state = ITER_ERROR;
        return BR_ERR_PARSE;
    }
    it->pos++;
    it->state = ITER_FIRST;
    return BR_OK;
}

int br_json_obj_iter_init(struct br_json_iter *it, struct br_slice obj)
{
    return iter_init(it, obj, '{', false);
}

int br_json_arr_iter_init(struct br_json_iter *it, struct br_slice arr)
{
    return iter_init(it, arr, '[', true);
}

/* Moves past the separator before the next item; BR_ERR_NOTFOUND at the closing bracket. */
static int iter_advance(struct br_json_iter *it, char close, size_t *i_out)
{
    if (it->state == ITER_DONE) {
        return BR_ERR_NOTFOUND;
    }
    if (it->state != ITER_FIRST && it->state != ITER_AFTER) {
        return BR_ERR_PARSE;
    }
    const char *p = it->p;
    size_t len = it->len;
    size_t i = skip_ws(p, len, it->pos);
    if (i < len && p[i] == close) {
        it->state = ITER_DONE;
        it->pos = i + 1;
        return BR_ERR_NOTFOUND;
    }
    if (it->state == ITER_AFTER) {
        if (i >= len || p[i] != ',') {
            it->state = ITER_ERROR;
            return BR_ERR_PARSE;
        }
        i = skip_ws(p, len, i + 1);
    }
    *i_out = i;
    return BR_OK;
}

int br_json_obj_iter_next(struct br_json_iter *it, struct br_json_member *m)
{
    size_t i;
    int rc = it->array ? BR_ERR_PARSE : iter_advance(it, '}', &i);
    if (rc != BR_OK) {
        return rc;
    }
    const char *p = it->p;
    size_t len = it->len;
    if (i >= len || p[i] != '"') {
        goto fail;
    }
    size_t start = i;
    if (skip_string(p, len, &i) != BR_OK) {
        goto fail;
    }
    m->key = br_slice_make(p + start + 1, i - start - 2);
    i = skip_ws(p, len, i);
    if (i >= len || p[i] != ':') {
        goto fail;
    }
    i = skip_ws(p, len, i + 1);
    size_t vstart = i;
    if (skip_value(p, len, &i) != BR_OK) {
        goto fail;
    }
    m->value = br_slice_make(p + vstart, i - vstart);
    m->start = start;
    m->end = i;
    it->pos = i;
    it->state = ITER_AFTER;
    return BR_OK;
fail:
    it->state = ITER_ERROR;
    return BR_ERR_PARSE;
}

int br_json_arr_iter_next(struct br_json_iter *it, struct br_slice *elem)
{
    size_t i;
    int rc = it->array ? iter_advance(it, ']', &i) : BR_ERR_PARSE;
    if (rc != BR_OK) {
        return rc;
    }
    size_t start = i;
    if (skip_value(it->p, it->len, &i) != BR_OK) {
        it->state = ITER_ERROR;
        return BR_ERR_PARSE;
    }
    *elem = br_slice_make(it->p + start, i - start);
    it->pos = i;
    it->state = ITER_AFTER;
    return BR_OK;
}

static size_t utf8_encode(unsigned cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes the escape at s[0] == '\\' into out; returns bytes consumed, 0 if malformed. */
static size_t decode_escape(const char *s, size_t avail, char out[4], size_t *out_len)
{
    if (avail < 2) {
        return 0;
    }
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    if (s[1] != 'u') {
        const char *hit = s[1] ? strchr(from, s[1]) : NULL;
        if (!hit) {
            return 0;
        }
        out[0] = to[hit - from];
        *out_len = 1;
        return 2;
    }
    unsigned cp;
    if (hex4(s + 2, avail - 2, &cp) != 0) {
        return 0;
    }
    size_t used = 6;
    if (cp >= 0xD800 && cp <= 0xDBFF && avail >= 12 && s[6] == '\\' && s[7] == 'u') {
        unsigned lo;
        if (hex4(s + 8, avail - 8, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            used = 12;
        }
    }
    *out_len = utf8_encode(cp, out);
    return used;
}

bool br_json_key_eqn(struct br_slice raw_key, const char *key, size_t klen)
{
    const char *s = raw_key.ptr;
    size_t n = raw_key.len;
    if (n == klen && memcmp(s, key, n) == 0) {
        return true; /* no escapes: the usual case */
    }
    size_t j = 0;
    size_t i = 0;
    while (i < n) {
        if (s[i] != '\\') {
            if (j >= klen || s[i] != key[j]) {
                return false;
            }
            i++;
            j++;
            continue;
        }
        char dec[4];
        size_t dec_len = 0;
        size_t used = decode_escape(s + i, n - i, dec, &dec_len);
        if (used == 0 || dec_len > klen - j || memcmp(dec, key + j, dec_len) != 0) {
            return false;
        }
        i += used;
        j += dec_len;
    }
    return j == klen;
}

int br_json_obj_find(struct br_slice obj, const char *key, struct br_json_member *out)
{
    struct br_json_iter it;
    struct br_json_member m;
    int rc = br_json_obj_iter_init(&it, obj);
    bool found = false;
    while (rc == BR_OK) {
        rc = br_json_obj_iter_next(&it, &m);
        if (rc == BR_OK && br_json_key_eq(m.key, key)) {
            *out = m;
            found = true;
        }
    }
    if (rc != BR_ERR_NOTFOUND) {
        return rc;
    }
    return found ? BR_OK : BR_ERR_NOTFOUND;
}

struct br_slice br_json_obj_get(struct br_slice obj, const char *key)
{
    struct br_json_member m;
    if (br_json_obj_find(obj, key, &m) != BR_OK) {
        return br_slice_make(NULL, 0);
    }
    return m.value;
}

/* Decodes v into out when out != NULL (at most cap - 1 bytes, NUL-terminated); always
 * computes the decoded length. */
static int decode(struct br_slice v, char *out, size_t cap, size_t *len_out)
{
    size_t i = skip_ws(v.ptr, v.len, 0);
    if (i >= v.len || v.ptr[i] != '"') {
        return BR_ERR_PARSE;
    }
    size_t end = i;
    if (skip_string(v.ptr, v.len, &end) != BR_OK) {
        return BR_ERR_PARSE;
    }
    const char *s = v.ptr + i + 1;
    size_t n = end - i - 2;
    size_t j = 0; /* decoded length */
    size_t w = 0; /* bytes written to out */
    int rc = BR_OK;
    for (size_t k = 0; k < n;) {
        char dec[4];
        size_t dec_len = 1;
        if (s[k] == '\\') {
            size_t used = decode_escape(s + k, n - k, dec, &dec_len);
            if (used == 0) {
                return BR_ERR_PARSE;
            }
            k += used;
        } else {
            dec[0] = s[k++];
        }
        if (out && rc == BR_OK && w + dec_len < cap) {
            memcpy(out + w, dec, dec_len);
            w += dec_len;
        } else if (out) {
            rc = BR_ERR_LIMIT; /* stop writing; keep counting */
        }
        j += dec_len;
    }
    if (out) {
        out[w] = '\0';
    }
    if (len_out) {
        *len_out = j;
    }
    return rc;
}

int br_json_string_decode(struct br_slice v, char *out, size_t cap, size_t *len_out)
{
    if (cap == 0) {
        return BR_ERR_LIMIT;
    }
    out[0] = '\0';
    return decode(v, out, cap, len_out);
}

long long br_json_string_decoded_len(struct br_slice v)
{
    size_t n = 0;
    int rc = decode(v, NULL, 0, &n);
    return rc == BR_OK ? (long long)n : (long long)rc;
}

int br_json_int(struct br_slice v, int64_t *out)
{
    size_t i = skip_ws(v.ptr, v.len, 0);
    size_t end = v.len;
    while (end > i && (v.ptr[end - 1] == ' ' || v.ptr[end - 1] == '\t' || v.ptr[end - 1] == '\n' ||
                       v.ptr[end - 1] == '\r')) {
        end--;
    }
    bool neg = i < end && v.ptr[i] == '-';
    if (neg) {
        i++;
    }
    if (i >= end) {
        return BR_ERR_PARSE;
    }
    uint64_t acc = 0;
    for (; i < end; i++) {
        char c = v.ptr[i];
        if (!is_digit(c)) {
            return BR_ERR_PARSE;
        }
        unsigned d = (unsigned)(c - '0');
        if (acc > (UINT64_MAX - d) / 10) {
            return BR_ERR_RANGE;
        }
        acc = acc * 10 + d;
    }
    if ((!neg && acc > (uint64_t)INT64_MAX) || (neg && acc > (uint64_t)INT64_MAX + 1)) {
        return BR_ERR_RANGE;
    }
    *out = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return BR_OK;
}

int br_json_number(struct br_slice v, double *out)
{
    size_t i = skip_ws(v.ptr, v.len, 0);
    size_t k = i;
    while (k < v.len && scalar_char(v.ptr[k])) {
        k++;
    }
    char buf[64];
    if (k == i || k - i >= sizeof(buf)) {
        return BR_ERR_PARSE;
    }
    struct vstate vs = {.p = v.ptr, .n = k};
    size_t end = i;
    if (v.ptr[i] != '-' && !is_digit(v.ptr[i])) {
        return BR_ERR_PARSE;
    }
    if (scan_number(&vs, &end) != BR_OK || end != k) {
        return BR_ERR_PARSE;
    }
    memcpy(buf, v.ptr + i, k - i);
    buf[k - i] = '\0';
    *out = strtod(buf, NULL);
    return BR_OK;
}
