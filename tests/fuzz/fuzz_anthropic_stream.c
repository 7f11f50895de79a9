/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes -> SSE parser -> Anthropic stream translator, the path every streamed
 * anthropic answer takes. Invariants: every emitted chunk is a JSON object of type
 * chat.completion.chunk, no usage number is ever negative, and feeding the same bytes in
 * arbitrary pieces gives exactly the same chunks, result code and usage as feeding them whole.
 * The same bytes also go through the whole-message path (a JSON answer to a stream request).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "upstream/providers/anthropic_int.h"
#include "upstream/sse.h"

struct run {
    struct br__anthropic_stream st;
    struct br_sse_parser sse;
    uint64_t hash; /* FNV-1a over all chunk bytes */
    size_t n_chunks;
    int rc;
};

static void check(int ok)
{
    if (!ok) {
        abort();
    }
}

/* NOLINTNEXTLINE(misc-no-recursion): jansson parsed the chunk, its depth is at most 2048 */
static void check_usage(const json_t *u)
{
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)u, k, v)
    {
        if (json_is_integer(v)) {
            check(json_integer_value(v) >= 0);
        } else if (json_is_object(v)) {
            check_usage(v);
        }
    }
}

static int on_chunk(void *user, struct br_slice chunk)
{
    struct run *r = user;
    json_t *j = json_loadb(chunk.ptr, chunk.len, 0, NULL);
    check(json_is_object(j));
    const char *obj = json_string_value(json_object_get(j, "object"));
    check(obj && strcmp(obj, "chat.completion.chunk") == 0);
    check(json_is_array(json_object_get(j, "choices")));
    const json_t *u = json_object_get(j, "usage");
    if (u) {
        check(json_is_object(u));
        check_usage(u);
    }
    json_decref(j);
    for (size_t i = 0; i < chunk.len; i++) {
        r->hash = (r->hash ^ (unsigned char)chunk.ptr[i]) * 1099511628211ull;
    }
    r->n_chunks++;
    return 0;
}

static int on_event(void *user, const struct br_sse_event *ev)
{
    struct run *r = user;
    return br__anthropic_stream_feed(&r->st, ev->event, ev->data);
}

/* Feeds data in pieces whose sizes come from `split` (0: all at once). */
static void run_once(struct run *r, const uint8_t *data, size_t size, bool usage, uint8_t split)
{
    memset(r, 0, sizeof(*r));
    r->hash = 14695981039346656037ull;
    br__anthropic_stream_init(&r->st, "fuzz-model", 1700000000, usage, on_chunk, r);
    br_sse_parser_init(&r->sse, 1 << 16);
    size_t pos = 0;
    int rc = BR_OK;
    size_t k = 0;
    while (pos < size && rc == BR_OK) {
        size_t n = split ? 1 + (size_t)(((size_t)split * 31u + k * 7u) % 23u) : size;
        if (n > size - pos) {
            n = size - pos;
        }
        rc = br_sse_parser_feed(&r->sse, (const char *)data + pos, n, on_event, r);
        pos += n;
        k++;
    }
    if (rc == BR_OK) {
        rc = br_sse_parser_finish(&r->sse, 1, on_event, r);
    }
    r->rc = rc;
    const struct br_usage *u = &r->st.usage;
    check(u->prompt_tokens >= 0 && u->completion_tokens >= 0 && u->cached_tokens >= 0 &&
          u->cache_write_tokens >= 0 && u->reasoning_tokens >= 0);
    check(br__anthropic_stream_output_tokens(&r->st) >= 0);
    check(!r->st.finished || r->st.started);
    br_sse_parser_cleanup(&r->sse);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool usage = size > 0 && (data[size - 1] & 1);
    uint8_t split = size > 0 ? (uint8_t)(data[0] | 1) : 1;
    struct run whole;
    struct run pieces;
    run_once(&whole, data, size, usage, 0);
    run_once(&pieces, data, size, usage, split);
    check(whole.rc == pieces.rc);
    check(whole.n_chunks == pieces.n_chunks);
    check(whole.hash == pieces.hash);
    check(whole.st.usage.prompt_tokens == pieces.st.usage.prompt_tokens);
    check(whole.st.usage.completion_tokens == pieces.st.usage.completion_tokens);
    check(whole.st.finished == pieces.st.finished);
    br__anthropic_stream_cleanup(&whole.st);
    br__anthropic_stream_cleanup(&pieces.st);

    struct run msg;
    memset(&msg, 0, sizeof(msg));
    br__anthropic_stream_init(&msg.st, "fuzz-model", 1700000000, usage, on_chunk, &msg);
    msg.rc = br__anthropic_stream_from_message(&msg.st, (const char *)data, size);
    check(msg.rc != BR_OK || msg.st.finished);
    check(br__anthropic_stream_output_tokens(&msg.st) >= 0);
    br__anthropic_stream_cleanup(&msg.st);
    return 0;
}
