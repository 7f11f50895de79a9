/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the OpenAI stream processor (upstream SSE bytes -> chunks + usage) and
 * the raw-JSON request splicer the openai provider uses. Input: a flags byte (bit 0: the
 * client asked for usage), two bytes choosing split points, then the upstream bytes.
 *
 * Invariants: the same chunks, counters, usage and result whether the bytes arrive at once or
 * in three pieces; every forwarded chunk is a JSON object without raw CR/LF; usage is never
 * negative; a JSON completion replayed as chunks yields JSON objects; and when the input is a
 * JSON object jansson accepts (without raw NUL bytes, which jansson skips between tokens),
 * splicing "model" in and a member out gives JSON whose other members decode as before.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "core/json.h"
#include "upstream/providers/providers_int.h"

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

static void on_chunk(void *user, struct br_slice json)
{
    struct digest *d = user;
    for (size_t i = 0; i < json.len; i++) {
        if (json.ptr[i] == '\n' || json.ptr[i] == '\r') {
            abort();
        }
    }
    /* Every forwarded chunk is one valid JSON object. jansson serves as a second opinion,
     * except for numbers outside int64/double, which JSON allows and jansson refuses. */
    if (br_json_validate(json.ptr, json.len, BR_JSON_ALLOW_NUL, NULL, NULL) != BR_OK ||
        br_json_type_of(json) != BR_JSON_OBJECT) {
        abort();
    }
    json_error_t err;
    json_t *j = json_loadb(json.ptr, json.len, JSON_ALLOW_NUL, &err);
    if (!json_is_object(j) && !strstr(err.text, "too big") && !strstr(err.text, "overflow")) {
        abort();
    }
    json_decref(j);
    put(d, &json.len, sizeof(json.len));
    put(d, json.ptr, json.len);
}

static void summarize(const struct br__openai_stream *st, int rc, struct digest *d)
{
    struct br_usage u;
    br__openai_stream_usage(st, NULL, &u);
    if (u.prompt_tokens < 0 || u.completion_tokens < 0 || u.cached_tokens < 0 ||
        u.reasoning_tokens < 0) {
        abort();
    }
    put(d, &rc, sizeof(rc));
    put(d, &u, sizeof(u));
    put(d, &st->n_deltas, sizeof(st->n_deltas));
    put(d, &st->n_chunks, sizeof(st->n_chunks));
    put(d, &st->done, sizeof(st->done));
    put(d, st->model, strlen(st->model) + 1);
    put(d, st->finish_reason, strlen(st->finish_reason) + 1);
    if (rc == BR_ERR_UPSTREAM) {
        put(d, st->error_body.ptr, st->error_body.len);
    }
}

static void run_stream(const char *s, size_t n, size_t a, size_t b, bool usage, struct digest *d)
{
    struct br__openai_stream st;
    br__openai_stream_init(&st, usage, on_chunk, d);
    int rc = br__openai_stream_feed(&st, s, a);
    if (rc == BR_OK) {
        rc = br__openai_stream_feed(&st, s + a, b - a);
    }
    if (rc == BR_OK) {
        rc = br__openai_stream_feed(&st, s + b, n - b);
    }
    if (rc == BR_OK) {
        rc = br__openai_stream_finish(&st);
    }
    summarize(&st, rc, d);
    br__openai_stream_cleanup(&st);
}

static void check_splice(const char *s, size_t n)
{
    json_error_t err;
    /* jansson skips raw NUL bytes between tokens; the splicer (rightly) does not. */
    if (memchr(s, '\0', n)) {
        return;
    }
    json_t *orig = json_loadb(s, n, 0, &err);
    if (!json_is_object(orig)) {
        json_decref(orig);
        return;
    }
    struct br__json_edit edits[2] = {
        {.key = "model", .value = BR_SLICE_LIT("\"m\"")},
        {.key = "drop", .value = {NULL, 0}},
    };
    struct br_buf out;
    br_buf_init(&out, n + 1024);
    if (br__json_edit(br_slice_make(s, n), edits, 2, &out) != BR_OK) {
        abort(); /* valid JSON objects are always editable */
    }
    json_t *res = json_loadb(out.ptr, out.len, 0, &err);
    const char *model = json_string_value(json_object_get(res, "model"));
    if (!json_is_object(res) || !model || strcmp(model, "m") != 0 || json_object_get(res, "drop")) {
        abort();
    }
    const char *key;
    json_t *v;
    json_object_foreach(orig, key, v)
    {
        if (strcmp(key, "model") != 0 && strcmp(key, "drop") != 0 &&
            !json_equal(v, json_object_get(res, key))) {
            abort();
        }
    }
    json_decref(res);
    json_decref(orig);
    br_buf_cleanup(&out);
}

static void ignore_chunk(void *user, struct br_slice json)
{
    on_chunk(user, json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3) {
        return 0;
    }
    bool usage = data[0] & 1;
    const char *s = (const char *)data + 3;
    size_t n = size - 3;
    size_t a = n * data[1] / 255;
    size_t b = a + (n - a) * data[2] / 255;

    struct digest whole = {0};
    struct digest split = {0};
    run_stream(s, n, n, n, usage, &whole);
    run_stream(s, n, a, b, usage, &split);
    if (whole.len != split.len || (whole.len && memcmp(whole.p, split.p, whole.len) != 0)) {
        abort();
    }
    free(whole.p);
    free(split.p);

    /* The same bytes as a whole JSON answer. */
    struct digest d = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, usage, ignore_chunk, &d);
    (void)br__openai_stream_from_completion(&st, br_slice_make(s, n));
    br__openai_stream_cleanup(&st);
    br__openai_stream_init(&st, usage, NULL, NULL);
    (void)br__openai_body_scan(&st, br_slice_make(s, n));
    br__openai_stream_cleanup(&st);
    free(d.p);

    check_splice(s, n);
    return 0;
}
