/* SPDX-License-Identifier: MIT */
/*
 * Shared provider helpers (see providers_int.h): raw JSON member iteration and editing, the
 * OpenAI error shapes and status rules, redaction of the upstream key, Retry-After.
 *
 * The JSON scanner never recurses: nested values are skipped by matching brackets with a bit
 * stack, so hostile nesting costs a bounded amount of memory and no stack.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/err.h"
#include "upstream/providers/providers_int.h"

#define JSON_MAX_DEPTH   2048
#define MAX_EDITS        16
#define SNIPPET_MAX      200
#define RETRY_AFTER_MAX  3600000u
#define ERROR_JSON_LIMIT ((size_t)1 << 20)

static const char nomem_body[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                 "\"server_error\",\"param\":null,\"code\":null}}";

/* ---- JSON text ------------------------------------------------------------------------ */

int br__json_append_string(struct br_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int rc = br_buf_append(b, "\"", 1);
    size_t run = 0; /* start of the bytes not yet copied */
    for (size_t i = 0; rc == BR_OK && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c != '"' && c != '\\' && c >= 0x20) {
            continue;
        }
        rc = br_buf_append(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t esc_len = 2;
        switch (c) {
        case '"':
        case '\\':
            esc[1] = (char)c;
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            esc_len = 6;
            break;
        }
        if (rc == BR_OK) {
            rc = br_buf_append(b, esc, esc_len);
        }
    }
    if (rc == BR_OK) {
        rc = br_buf_append(b, s + run, n - run);
    }
    if (rc == BR_OK) {
        rc = br_buf_append(b, "\"", 1);
    }
    return rc;
}

enum { ITER_START, ITER_FIRST, ITER_AFTER, ITER_DONE, ITER_ERROR };

static size_t skip_ws(const char *p, size_t len, size_t i)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) {
        i++;
    }
    return i;
}

/* *i is at the opening quote; leaves it just past the closing one. */
static int skip_string(const char *p, size_t len, size_t *i)
{
    size_t k = *i + 1;
    while (k < len) {
        unsigned char c = (unsigned char)p[k];
        if (c == '"') {
            *i = k + 1;
            return BR_OK;
        }
        if (c < 0x20) {
            return BR_ERR_PARSE;
        }
        k += c == '\\' ? 2 : 1;
    }
    return BR_ERR_PARSE;
}

static int skip_container(const char *p, size_t len, size_t *i)
{
    unsigned char stack[JSON_MAX_DEPTH / 8] = {0}; /* bit set = object */
    size_t depth = 0;
    size_t k = *i;
    while (k < len) {
        char c = p[k];
        if (c == '"') {
            int rc = skip_string(p, len, &k);
            if (rc != BR_OK) {
                return rc;
            }
            continue;
        }
        if (c == '{' || c == '[') {
            if (depth == JSON_MAX_DEPTH) {
                return BR_ERR_PARSE;
            }
            if (c == '{') {
                stack[depth / 8] |= (unsigned char)(1u << (depth % 8));
            } else {
                stack[depth / 8] &= (unsigned char)~(1u << (depth % 8));
            }
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) {
                return BR_ERR_PARSE;
            }
            depth--;
            bool is_obj = (stack[depth / 8] >> (depth % 8)) & 1u;
            if (is_obj != (c == '}')) {
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

int br__json_iter_init(struct br__json_iter *it, struct br_slice obj)
{
    it->p = obj.ptr;
    it->len = obj.len;
    it->pos = skip_ws(obj.ptr, obj.len, 0);
    if (it->pos >= it->len || it->p[it->pos] != '{') {
        it->state = ITER_ERROR;
        return BR_ERR_PARSE;
    }
    it->pos++;
    it->state = ITER_FIRST;
    return BR_OK;
}

int br__json_iter_next(struct br__json_iter *it, struct br__json_member *m)
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
    if (i < len && p[i] == '}') {
        it->state = ITER_DONE;
        it->pos = i + 1;
        return BR_ERR_NOTFOUND;
    }
    if (it->state == ITER_AFTER) {
        if (i >= len || p[i] != ',') {
            goto fail;
        }
        i = skip_ws(p, len, i + 1);
    }
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

static int hex4(const char *s, size_t avail, unsigned *out)
{
    unsigned v = 0;
    if (avail < 4) {
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9') {
            d = (unsigned)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            d = (unsigned)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            d = (unsigned)(c - 'A' + 10);
        } else {
            return -1;
        }
        v = v * 16 + d;
    }
    *out = v;
    return 0;
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
    const char *hit = strchr(from, s[1]);
    if (s[1] != 'u') {
        if (!hit || s[1] == '\0') {
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

bool br__json_key_eq(struct br_slice raw_key, const char *key)
{
    const char *s = raw_key.ptr;
    size_t n = raw_key.len;
    size_t klen = strlen(key);
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

int br__json_find(struct br_slice obj, const char *key, struct br__json_member *out)
{
    struct br__json_iter it;
    struct br__json_member m;
    int rc = br__json_iter_init(&it, obj);
    bool found = false;
    while (rc == BR_OK) {
        rc = br__json_iter_next(&it, &m);
        if (rc == BR_OK && br__json_key_eq(m.key, key)) {
            *out = m;
            found = true;
        }
    }
    if (rc != BR_ERR_NOTFOUND) {
        return rc;
    }
    return found ? BR_OK : BR_ERR_NOTFOUND;
}

/* Index of the edit for raw key, or n_edits. */
static size_t edit_index(struct br_slice raw_key, const struct br__json_edit *edits, size_t n_edits)
{
    size_t k = 0;
    while (k < n_edits && !br__json_key_eq(raw_key, edits[k].key)) {
        k++;
    }
    return k;
}

/* Appends `"key":value` for the edits that found no member to replace. */
static int append_missing(const struct br__json_edit *edits, size_t n_edits, const bool *seen,
                          bool first, struct br_buf *out)
{
    int rc = BR_OK;
    for (size_t k = 0; rc == BR_OK && k < n_edits; k++) {
        if (seen[k] || edits[k].value.ptr == NULL || edits[k].only_if_present) {
            continue;
        }
        if (!first) {
            rc = br_buf_append(out, ",", 1);
        }
        first = false;
        if (rc == BR_OK) {
            rc = br__json_append_string(out, edits[k].key, strlen(edits[k].key));
        }
        if (rc == BR_OK) {
            rc = br_buf_append(out, ":", 1);
        }
        if (rc == BR_OK) {
            rc = br_buf_append(out, edits[k].value.ptr, edits[k].value.len);
        }
    }
    return rc;
}

/* Appends member m of obj, with its value replaced when edit is not NULL. */
static int copy_member(struct br_slice obj, const struct br__json_member *m,
                       const struct br__json_edit *edit, struct br_buf *out)
{
    if (!edit) {
        return br_buf_append(out, obj.ptr + m->start, m->end - m->start);
    }
    /* Keep the key (and the text up to the value) as the client wrote it. */
    int rc = br_buf_append(out, obj.ptr + m->start, (size_t)(m->value.ptr - obj.ptr) - m->start);
    if (rc == BR_OK) {
        rc = br_buf_append(out, edit->value.ptr, edit->value.len);
    }
    return rc;
}

int br__json_edit(struct br_slice obj, const struct br__json_edit *edits, size_t n_edits,
                  struct br_buf *out)
{
    if (n_edits > MAX_EDITS) {
        return BR_ERR_INVAL;
    }
    bool seen[MAX_EDITS] = {false};
    struct br__json_iter it;
    struct br__json_member m;
    bool first = true;
    int rc = br__json_iter_init(&it, obj);
    if (rc == BR_OK) {
        rc = br_buf_append(out, "{", 1);
    }
    if (rc == BR_OK) {
        rc = br__json_iter_next(&it, &m);
    }
    while (rc == BR_OK) {
        size_t k = edit_index(m.key, edits, n_edits);
        if (k < n_edits && (seen[k] || edits[k].value.ptr == NULL)) {
            seen[k] = true; /* deleted, or a later duplicate of an edited member */
        } else {
            rc = first ? BR_OK : br_buf_append(out, ",", 1);
            first = false;
            if (rc == BR_OK) {
                rc = copy_member(obj, &m, k < n_edits ? &edits[k] : NULL, out);
            }
            if (k < n_edits) {
                seen[k] = true;
            }
        }
        if (rc == BR_OK) {
            rc = br__json_iter_next(&it, &m);
        }
    }
    if (rc != BR_ERR_NOTFOUND) {
        return rc;
    }
    rc = append_missing(edits, n_edits, seen, first, out);
    if (rc == BR_OK) {
        rc = br_buf_append(out, "}", 1);
    }
    return rc;
}

/* ---- errors and results --------------------------------------------------------------- */

int br__provider_error_json(br_arena *a, const char *message, size_t message_len, const char *type,
                            const char *code, struct br_slice *out)
{
    struct br_buf b;
    br_buf_init(&b, ERROR_JSON_LIMIT);
    int rc = br_buf_append_cstr(&b, "{\"error\":{\"message\":");
    if (rc == BR_OK) {
        rc = br__json_append_string(&b, message, message_len);
    }
    if (rc == BR_OK) {
        rc = br_buf_append_cstr(&b, ",\"type\":");
    }
    if (rc == BR_OK) {
        rc = br__json_append_string(&b, type, strlen(type));
    }
    if (rc == BR_OK) {
        rc = br_buf_append_cstr(&b, ",\"param\":null,\"code\":");
    }
    if (rc == BR_OK) {
        rc = code ? br__json_append_string(&b, code, strlen(code)) : br_buf_append_cstr(&b, "null");
    }
    if (rc == BR_OK) {
        rc = br_buf_append_cstr(&b, "}}");
    }
    if (rc == BR_OK) {
        char *s = br_arena_strndup(a, b.ptr, b.len);
        if (s) {
            *out = br_slice_make(s, b.len);
        } else {
            rc = BR_ERR_NOMEM;
        }
    }
    br_buf_cleanup(&b);
    return rc == BR_OK ? BR_OK : BR_ERR_NOMEM;
}

void br__provider_fail(br_arena *a, int rc, int status, enum br_upstream_error kind,
                       const char *message, const char *type, const char *code,
                       struct br_provider_result *res)
{
    res->rc = rc;
    res->status = status;
    res->error_kind = kind;
    if (br__provider_error_json(a, message, strlen(message), type, code, &res->error_body) !=
        BR_OK) {
        res->rc = BR_ERR_NOMEM;
        res->status = 503;
        res->error_body = BR_SLICE_LIT(nomem_body);
    }
}

static const char *transport_message(enum br_upstream_error kind)
{
    switch (kind) {
    case BR_UPSTREAM_ERROR_DNS:
        return "could not resolve the upstream host";
    case BR_UPSTREAM_ERROR_CONNECT:
        return "could not connect to the upstream";
    case BR_UPSTREAM_ERROR_TLS:
        return "TLS handshake with the upstream failed";
    case BR_UPSTREAM_ERROR_TIMEOUT_CONNECT:
        return "timed out connecting to the upstream";
    case BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE:
        return "the upstream did not start answering in time";
    case BR_UPSTREAM_ERROR_TIMEOUT_IDLE:
        return "the upstream stopped sending data";
    case BR_UPSTREAM_ERROR_CLOSED:
        return "the upstream closed the connection before the response was complete";
    case BR_UPSTREAM_ERROR_PROTOCOL:
        return "the upstream sent an invalid HTTP response";
    case BR_UPSTREAM_ERROR_TOO_LARGE:
        return "the upstream response is too large";
    case BR_UPSTREAM_ERROR_BAD_RESPONSE:
        return "the upstream sent a malformed response";
    default:
        return "the upstream request failed";
    }
}

void br__provider_fail_transport(br_arena *a, enum br_upstream_error kind,
                                 struct br_provider_result *res)
{
    bool timeout = kind == BR_UPSTREAM_ERROR_TIMEOUT_CONNECT ||
                   kind == BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE ||
                   kind == BR_UPSTREAM_ERROR_TIMEOUT_IDLE;
    char code[64];
    (void)snprintf(code, sizeof(code), "upstream_%s", br_upstream_error_name(kind));
    br__provider_fail(a, BR_ERR_UPSTREAM, timeout ? 504 : 502, kind, transport_message(kind),
                      "upstream_error", code, res);
}

static const char *find_bytes(const char *h, size_t hn, const char *needle, size_t nn)
{
    if (nn == 0 || hn < nn) {
        return NULL;
    }
    for (size_t i = 0; i + nn <= hn; i++) {
        if (h[i] == needle[0] && memcmp(h + i, needle, nn) == 0) {
            return h + i;
        }
    }
    return NULL;
}

struct br_slice br__provider_redact(br_arena *a, struct br_slice s, const char *secret)
{
    size_t sn = secret ? strlen(secret) : 0;
    if (sn < 8 || !find_bytes(s.ptr, s.len, secret, sn)) {
        return s;
    }
    struct br_buf b;
    br_buf_init(&b, s.len + 1);
    const char *p = s.ptr;
    const char *end = s.ptr + s.len;
    int rc = BR_OK;
    while (rc == BR_OK && p < end) {
        const char *hit = find_bytes(p, (size_t)(end - p), secret, sn);
        const char *stop = hit ? hit : end;
        rc = br_buf_append(&b, p, (size_t)(stop - p));
        if (rc == BR_OK && hit) {
            rc = br_buf_append(&b, "***", 3); /* shorter than any secret we redact */
        }
        p = hit ? hit + sn : end;
    }
    struct br_slice out = {NULL, 0};
    if (rc == BR_OK) {
        char *copy = br_arena_strndup(a, b.ptr ? b.ptr : "", b.len);
        if (copy) {
            out = br_slice_make(copy, b.len);
        }
    }
    br_buf_cleanup(&b);
    return out;
}

/* Printable ASCII, whitespace runs folded to one space, HTML tags dropped, <= SNIPPET_MAX. */
static size_t sanitize(struct br_slice in, char *out, size_t cap)
{
    size_t n = 0;
    bool in_tag = false;
    bool html = false;
    size_t i = skip_ws(in.ptr, in.len, 0);
    if (i < in.len && in.ptr[i] == '<') {
        html = true;
    }
    bool space = false;
    for (; i < in.len && n + 4 < cap; i++) {
        unsigned char c = (unsigned char)in.ptr[i];
        if (html && c == '<') {
            in_tag = true;
            space = true;
            continue;
        }
        if (in_tag) {
            in_tag = c != '>';
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            space = true;
            continue;
        }
        if (space && n > 0) {
            out[n++] = ' ';
        }
        space = false;
        char ch = '?';
        if (c >= 0x20 && c < 0x7f) {
            ch = (char)c;
        }
        out[n++] = ch;
    }
    if (i < in.len && n + 4 >= cap) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return n;
}

void br__provider_fail_http(br_arena *a, int status, struct br_slice body, const char *secret,
                            struct br_provider_result *res)
{
    int client_status = (status >= 400 && status <= 599) ? status : 502;
    json_error_t jerr;
    json_t *doc = json_loadb(body.ptr ? body.ptr : "", body.len, 0, &jerr);
    const json_t *err = json_object_get(doc, "error");
    if (json_is_object(err)) {
        json_decref(doc);
        struct br_slice copy = br__provider_redact(a, body, secret);
        if (copy.ptr == body.ptr) {
            char *owned = br_arena_strndup(a, body.ptr, body.len);
            copy = owned ? br_slice_make(owned, body.len) : (struct br_slice){NULL, 0};
        }
        if (!copy.ptr) {
            br__provider_fail(a, BR_ERR_NOMEM, 503, BR_UPSTREAM_ERROR_OTHER, "out of memory",
                              "server_error", NULL, res);
            return;
        }
        res->rc = BR_ERR_UPSTREAM;
        res->status = client_status;
        res->error_kind = BR_UPSTREAM_ERROR_HTTP_STATUS;
        res->error_body = copy;
        return;
    }
    /* Ollama and TGI say {"error":"..."}, FastAPI servers {"detail":"..."}. */
    struct br_slice src = body;
    const json_t *text = json_is_string(err) ? err : json_object_get(doc, "detail");
    if (!json_is_string(text)) {
        text = json_object_get(doc, "message");
    }
    if (json_is_string(text)) {
        src = br_slice_make(json_string_value(text), json_string_length(text));
    }
    char snippet[SNIPPET_MAX + 4];
    size_t sn = sanitize(src, snippet, sizeof(snippet));
    char msg[SNIPPET_MAX + 64];
    if (sn > 0) {
        (void)snprintf(msg, sizeof(msg), "upstream returned HTTP %d: %s", status, snippet);
    } else {
        (void)snprintf(msg, sizeof(msg), "upstream returned HTTP %d", status);
    }
    json_decref(doc);
    struct br_slice clean = br__provider_redact(a, br_slice_from_cstr(msg), secret);
    char code[48];
    (void)snprintf(code, sizeof(code), "upstream_http_%d", status);
    res->rc = BR_ERR_UPSTREAM;
    res->status = client_status;
    res->error_kind = BR_UPSTREAM_ERROR_HTTP_STATUS;
    if (!clean.ptr || br__provider_error_json(a, clean.ptr, clean.len, "upstream_error", code,
                                              &res->error_body) != BR_OK) {
        br__provider_fail(a, BR_ERR_NOMEM, 503, BR_UPSTREAM_ERROR_OTHER, "out of memory",
                          "server_error", NULL, res);
    }
}

struct br_slice br__provider_header(const struct br_upstream_head *head, const char *name)
{
    for (size_t i = 0; head && i < head->n_headers; i++) {
        if (br_slice_case_eq_cstr(head->headers[i].name, name)) {
            return head->headers[i].value;
        }
    }
    return (struct br_slice){NULL, 0};
}

uint32_t br__provider_retry_after_ms(const struct br_upstream_head *head)
{
    char tmp[64];
    struct br_slice v = br__provider_header(head, "retry-after-ms");
    double ms = -1;
    if (v.ptr && v.len > 0 && v.len < sizeof(tmp)) {
        memcpy(tmp, v.ptr, v.len);
        tmp[v.len] = '\0';
        char *end = NULL;
        double d = strtod(tmp, &end);
        if (end && *end == '\0' && d >= 0) {
            ms = d;
        }
    }
    v = br__provider_header(head, "retry-after");
    if (ms < 0 && v.ptr && v.len > 0 && v.len < sizeof(tmp)) {
        unsigned long long secs;
        int rc = br_slice_to_u64(v, RETRY_AFTER_MAX / 1000, &secs);
        if (rc == BR_OK) {
            ms = (double)secs * 1000.0;
        } else if (rc == BR_ERR_RANGE) {
            ms = RETRY_AFTER_MAX;
        } else {
            memcpy(tmp, v.ptr, v.len);
            tmp[v.len] = '\0';
            time_t when = curl_getdate(tmp, NULL);
            int64_t now_ms = br_clock_wall_ms();
            if (when > 0 && (int64_t)when * 1000 > now_ms) {
                ms = (double)((int64_t)when * 1000 - now_ms);
            }
        }
    }
    if (ms <= 0) {
        return 0;
    }
    if (ms > RETRY_AFTER_MAX) {
        return RETRY_AFTER_MAX;
    }
    return (uint32_t)(ms + 0.999);
}

/* ---- OpenAI usage --------------------------------------------------------------------- */

static int64_t count(const json_t *v)
{
    if (!json_is_integer(v)) {
        return 0;
    }
    json_int_t n = json_integer_value(v);
    return n > 0 ? (int64_t)n : 0;
}

bool br__openai_usage_read(const json_t *usage, struct br_usage *out)
{
    if (!json_is_object(usage)) {
        return false;
    }
    struct br_usage u = {0};
    u.prompt_tokens = count(json_object_get(usage, "prompt_tokens"));
    u.completion_tokens = count(json_object_get(usage, "completion_tokens"));
    const json_t *cached =
        json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens");
    if (!json_is_integer(cached)) {
        cached = json_object_get(usage, "prompt_cache_hit_tokens");
    }
    u.cached_tokens = count(cached);
    u.reasoning_tokens = count(
        json_object_get(json_object_get(usage, "completion_tokens_details"), "reasoning_tokens"));
    u.reported = true;
    *out = u;
    return true;
}
