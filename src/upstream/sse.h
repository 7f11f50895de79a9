/* SPDX-License-Identifier: MIT */
/*
 * Incremental parser for text/event-stream (WHATWG HTML "server-sent events"): bytes in, events
 * out. Handles CRLF, CR and LF line ends, multi-line data, comments, a BOM, and events split
 * across reads at any byte. An event larger than the cap is an error, not unbounded growth.
 */
#ifndef BR_UPSTREAM_SSE_H
#define BR_UPSTREAM_SSE_H

#include <stddef.h>

#include "core/buf.h"
#include "core/slice.h"

struct br_sse_event {
    struct br_slice event; /* "event:" field; empty when absent (meaning "message") */
    struct br_slice data;  /* "data:" lines joined with '\n' */
    struct br_slice id;    /* last event ID: the latest "id:" field of the stream, which per
                              WHATWG persists across events until changed; empty if none */
};

struct br_sse_parser {
    struct br_buf line;  /* partial line carried between feeds */
    struct br_buf data;  /* data lines of the event being built */
    struct br_buf event; /* event name of the event being built */
    struct br_buf id;
    int state;              /* private: BOM, CR and failure flags */
    size_t max_event_bytes; /* cap on one line, and on data + event + id of one event */
};

/** Initialises a parser whose events may be at most max_event_bytes (0 = 1 MiB). */
void br_sse_parser_init(struct br_sse_parser *p, size_t max_event_bytes);

/** Frees the parser's buffers. */
void br_sse_parser_cleanup(struct br_sse_parser *p);

/**
 * Feeds n bytes. on_event runs for each completed event (slices valid during the call); a
 * non-zero return from on_event stops parsing and is returned (the rest of this feed is
 * dropped). Returns BR_OK, BR_ERR_LIMIT (event or line too large) or BR_ERR_NOMEM; after
 * BR_ERR_LIMIT or BR_ERR_NOMEM the parser stays failed and returns that code again.
 */
int br_sse_parser_feed(struct br_sse_parser *p, const char *data, size_t n,
                       int (*on_event)(void *user, const struct br_sse_event *ev), void *user);

/**
 * End of stream: dispatches a final event that lacked its blank line only if `flush_partial`
 * is set (the spec discards it). Returns as br_sse_parser_feed.
 */
int br_sse_parser_finish(struct br_sse_parser *p, int flush_partial,
                         int (*on_event)(void *user, const struct br_sse_event *ev), void *user);

#endif
