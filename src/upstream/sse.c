/* SPDX-License-Identifier: MIT */
/*
 * text/event-stream parser after the WHATWG "server-sent events" interpretation rules. Lines
 * that arrive whole inside one feed are processed in place; only a line cut by the end of a
 * feed is copied into p->line. Data lines are accumulated with a trailing '\n' each, the last
 * one stripped at dispatch, exactly as the spec's "data buffer". Two caps, both
 * max_event_bytes, hold whatever the split of the input: one line (whether buffered or
 * processed in place), and the data + event name + last event ID of the event being built.
 */
#include "upstream/sse.h"

#include <string.h>

#include "core/err.h"

#define SSE_DEFAULT_MAX (1u << 20)

/* p->state bits */
#define SSE_BOM_MATCHED  0x3  /* BOM bytes matched so far while the BOM check is pending */
#define SSE_BOM_DONE     0x4  /* the start of the stream is behind us */
#define SSE_SKIP_LF      0x8  /* the previous feed ended with CR: a leading LF belongs to it */
#define SSE_FAILED       0x10 /* sticky BR_ERR_LIMIT */
#define SSE_FAILED_NOMEM 0x20 /* sticky BR_ERR_NOMEM */

static const unsigned char bom[3] = {0xEF, 0xBB, 0xBF};

void br_sse_parser_init(struct br_sse_parser *p, size_t max_event_bytes)
{
    if (max_event_bytes == 0) {
        max_event_bytes = SSE_DEFAULT_MAX;
    }
    p->max_event_bytes = max_event_bytes;
    br_buf_init(&p->line, max_event_bytes);
    br_buf_init(&p->data, max_event_bytes);
    br_buf_init(&p->event, max_event_bytes);
    br_buf_init(&p->id, max_event_bytes);
    p->state = 0;
}

void br_sse_parser_cleanup(struct br_sse_parser *p)
{
    br_buf_cleanup(&p->line);
    br_buf_cleanup(&p->data);
    br_buf_cleanup(&p->event);
    br_buf_cleanup(&p->id);
    p->state = 0;
}

/* Appends to the data/event/id buffers, enforcing the cap on what the event holds. */
static int keep(struct br_sse_parser *p, struct br_buf *b, const char *s, size_t n)
{
    size_t held = p->data.len + p->event.len + p->id.len;
    if (n > p->max_event_bytes || held > p->max_event_bytes - n) {
        return BR_ERR_LIMIT;
    }
    return br_buf_append(b, s, n);
}

/* Appends to the partial line; a line may be at most max_event_bytes long. */
static int keep_line(struct br_sse_parser *p, const char *s, size_t n)
{
    if (n > p->max_event_bytes - p->line.len) {
        return BR_ERR_LIMIT;
    }
    return br_buf_append(&p->line, s, n);
}

static int dispatch(struct br_sse_parser *p,
                    int (*on_event)(void *user, const struct br_sse_event *ev), void *user)
{
    if (p->data.len == 0) {
        br_buf_reset(&p->event);
        return BR_OK;
    }
    struct br_sse_event ev = {
        .event = br_slice_make(p->event.ptr, p->event.len),
        .data = br_slice_make(p->data.ptr, p->data.len - 1), /* minus the last '\n' */
        .id = br_slice_make(p->id.ptr, p->id.len),
    };
    int rc = on_event(user, &ev);
    br_buf_reset(&p->data);
    br_buf_reset(&p->event);
    return rc;
}

static int field(struct br_sse_parser *p, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    const char *value = colon ? colon + 1 : line + len;
    size_t value_len = (size_t)(line + len - value);
    if (value_len > 0 && value[0] == ' ') {
        value++;
        value_len--;
    }
    struct br_slice name = br_slice_make(line, name_len);
    int rc = BR_OK;
    if (br_slice_eq_cstr(name, "data")) {
        rc = keep(p, &p->data, value, value_len);
        if (rc == BR_OK) {
            rc = keep(p, &p->data, "\n", 1);
        }
    } else if (br_slice_eq_cstr(name, "event")) {
        br_buf_reset(&p->event);
        rc = keep(p, &p->event, value, value_len);
    } else if (br_slice_eq_cstr(name, "id")) {
        if (memchr(value, '\0', value_len) == NULL) {
            br_buf_reset(&p->id);
            rc = keep(p, &p->id, value, value_len);
        }
    }
    /* "retry" and unknown fields are ignored. */
    return rc;
}

static int process_line(struct br_sse_parser *p, const char *line, size_t len,
                        int (*on_event)(void *user, const struct br_sse_event *ev), void *user)
{
    if (len == 0) {
        return dispatch(p, on_event, user);
    }
    if (line[0] == ':') {
        return BR_OK; /* comment */
    }
    return field(p, line, len);
}

/* Consumes the start of the stream while it may still be a UTF-8 BOM. Returns bytes used. */
static size_t skip_bom(struct br_sse_parser *p, const char *data, size_t n, int *rc)
{
    size_t i = 0;
    *rc = BR_OK;
    while (!(p->state & SSE_BOM_DONE) && i < n) {
        int k = p->state & SSE_BOM_MATCHED;
        if ((unsigned char)data[i] == bom[k]) {
            i++;
            k++;
            p->state = (p->state & ~SSE_BOM_MATCHED) | (k == 3 ? SSE_BOM_DONE : k);
            continue;
        }
        /* Not a BOM after all: the bytes matched so far start the first line. */
        p->state = (p->state & ~SSE_BOM_MATCHED) | SSE_BOM_DONE;
        *rc = keep_line(p, (const char *)bom, (size_t)k);
    }
    return i;
}

static int fail(struct br_sse_parser *p, int rc)
{
    if (rc == BR_ERR_LIMIT || rc == BR_ERR_NOMEM) {
        p->state |= rc == BR_ERR_LIMIT ? SSE_FAILED : SSE_FAILED_NOMEM;
        br_buf_reset(&p->line);
    }
    return rc;
}

static int failed(const struct br_sse_parser *p)
{
    if (p->state & SSE_FAILED) {
        return BR_ERR_LIMIT;
    }
    return (p->state & SSE_FAILED_NOMEM) ? BR_ERR_NOMEM : BR_OK;
}

int br_sse_parser_feed(struct br_sse_parser *p, const char *data, size_t n,
                       int (*on_event)(void *user, const struct br_sse_event *ev), void *user)
{
    int rc = failed(p);
    if (rc != BR_OK) {
        return rc;
    }
    size_t i = skip_bom(p, data, n, &rc);
    if (rc != BR_OK) {
        return fail(p, rc);
    }
    if ((p->state & SSE_SKIP_LF) && i < n) {
        p->state &= ~SSE_SKIP_LF;
        if (data[i] == '\n') {
            i++;
        }
    }
    while (i < n) {
        size_t j = i;
        while (j < n && data[j] != '\n' && data[j] != '\r') {
            j++;
        }
        if (j == n) {
            rc = keep_line(p, data + i, n - i);
            return rc == BR_OK ? BR_OK : fail(p, rc);
        }
        const char *line = data + i;
        size_t len = j - i;
        if (p->line.len > 0) {
            rc = keep_line(p, line, len);
            if (rc != BR_OK) {
                return fail(p, rc);
            }
            line = p->line.ptr;
            len = p->line.len;
        } else if (len > p->max_event_bytes) {
            return fail(p, BR_ERR_LIMIT); /* the same limit as for a line split over feeds */
        }
        /* Work out where the next line starts before the callback can stop us. */
        if (data[j] == '\r') {
            if (j + 1 < n) {
                j += data[j + 1] == '\n';
            } else {
                p->state |= SSE_SKIP_LF;
            }
        }
        i = j + 1;
        rc = process_line(p, line, len, on_event, user);
        br_buf_reset(&p->line);
        if (rc != BR_OK) {
            return fail(p, rc);
        }
    }
    return BR_OK;
}

int br_sse_parser_finish(struct br_sse_parser *p, int flush_partial,
                         int (*on_event)(void *user, const struct br_sse_event *ev), void *user)
{
    int rc = failed(p);
    if (rc != BR_OK) {
        return rc;
    }
    if (flush_partial) {
        if (!(p->state & SSE_BOM_DONE) && (p->state & SSE_BOM_MATCHED)) {
            int k = p->state & SSE_BOM_MATCHED;
            rc = keep_line(p, (const char *)bom, (size_t)k);
        }
        if (rc == BR_OK && p->line.len > 0) {
            rc = process_line(p, p->line.ptr, p->line.len, on_event, user);
        }
        if (rc == BR_OK) {
            rc = dispatch(p, on_event, user);
        }
    }
    br_buf_reset(&p->line);
    br_buf_reset(&p->data);
    br_buf_reset(&p->event);
    p->state |= SSE_BOM_DONE;
    p->state &= ~(SSE_SKIP_LF | SSE_BOM_MATCHED);
    return rc == BR_OK ? BR_OK : fail(p, rc);
}
