/* SPDX-License-Identifier: MIT */
/*
 * Shared provider helpers (see providers_int.h): raw JSON member iteration and editing, the
 * OpenAI error shapes and status rules, redaction of the upstream key, Retry-After.
 *
 * Member iteration comes from core/json, which never recurses: nested values are skipped by
 * matching brackets with a bit stack, so hostile nesting costs bounded memory and no stack.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/err.h"
#include "upstream/providers/providers_int.h"

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

static size_t skip_ws(const char *p, size_t len, size_t i)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) {
        i++;
    }
    return i;
}

/* Index of the edit for raw key, or n_edits. */
static size_t edit_index(struct br_slice raw_key, const struct br__json_edit *edits, size_t n_edits)
{
    size_t k = 0;
    while (k < n_edits && !br_json_key_eq(raw_key, edits[k].key)) {
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
static int copy_member(struct br_slice obj, const struct br_json_member *m,
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
    struct br_json_iter it;
    struct br_json_member m;
    bool first = true;
    int rc = br_json_obj_iter_init(&it, obj);
    if (rc == BR_OK) {
        rc = br_buf_append(out, "{", 1);
    }
    if (rc == BR_OK) {
        rc = br_json_obj_iter_next(&it, &m);
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
            rc = br_json_obj_iter_next(&it, &m);
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

/* A token count: a non-negative integer, anything else reads as 0. */
static int64_t count_raw(struct br_slice v)
{
    int64_t x = 0;
    return (v.ptr && br_json_int(v, &x) == BR_OK && x > 0) ? x : 0;
}

/* The named member of a small object, in one pass (NULL slice when absent). */
static struct br_slice member(struct br_slice obj, const char *key)
{
    return br_json_type_of(obj) == BR_JSON_OBJECT ? br_json_obj_get(obj, key)
                                                  : br_slice_make(NULL, 0);
}

bool br__openai_usage_read(struct br_slice usage, struct br_usage *out)
{
    if (br_json_type_of(usage) != BR_JSON_OBJECT) {
        return false;
    }
    struct br_usage u = {0};
    struct br_slice cached = {NULL, 0};
    struct br_slice cache_hit = {NULL, 0};
    struct br_json_iter it;
    struct br_json_member m;
    int rc = br_json_obj_iter_init(&it, usage);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        if (br_json_key_eq(m.key, "prompt_tokens")) {
            u.prompt_tokens = count_raw(m.value);
        } else if (br_json_key_eq(m.key, "completion_tokens")) {
            u.completion_tokens = count_raw(m.value);
        } else if (br_json_key_eq(m.key, "prompt_tokens_details")) {
            cached = member(m.value, "cached_tokens");
        } else if (br_json_key_eq(m.key, "completion_tokens_details")) {
            u.reasoning_tokens = count_raw(member(m.value, "reasoning_tokens"));
        } else if (br_json_key_eq(m.key, "prompt_cache_hit_tokens")) {
            cache_hit = m.value; /* DeepSeek's name for cached input */
        }
    }
    u.cached_tokens = count_raw(br_json_type_of(cached) == BR_JSON_NUMBER ? cached : cache_hit);
    u.reported = true;
    *out = u;
    return true;
}

static bool has_crlf(const char *s)
{
    return s && strpbrk(s, "\r\n") != NULL;
}

int br__provider_check_http_target(const struct br_provider_target *t, bool need_base_url,
                                   char *err, size_t errlen)
{
    const char *why = NULL;
    if ((need_base_url && !t->base_url) ||
        (t->base_url && strncmp(t->base_url, "http://", 7) != 0 &&
         strncmp(t->base_url, "https://", 8) != 0)) {
        why = "base_url must be an http:// or https:// URL";
    } else if (has_crlf(t->api_key)) {
        why = "api_key contains a line break";
    }
    for (size_t i = 0; !why && i < t->n_extra_headers; i++) {
        if (has_crlf(t->extra_headers[i]) || !strchr(t->extra_headers[i], ':')) {
            why = "extra header must be one \"Name: value\" line";
        }
    }
    if (why) {
        if (err && errlen) {
            (void)snprintf(err, errlen, "%s", why);
        }
        return BR_ERR_INVAL;
    }
    return BR_OK;
}
