/* SPDX-License-Identifier: MIT */
/*
 * Test harness for the http server: starts a br_http_server on 127.0.0.1 port 0 with a test
 * handler that records every request it receives, and a small raw-socket HTTP/1.1 client that
 * reads responses (Content-Length, chunked with trailers, or until close) and detects closes.
 *
 * Handler routes (path):
 *   /echo          200 with the request body
 *   /id            200 with req->id as the body
 *   /hdr?NAME      200 with the value of header NAME (404 when absent)
 *   /slow?MS       200 "slow" after MS milliseconds (a uv timer on the worker loop)
 *   /hold          never answered until on_abort
 *   /stream?N,MS   text/event-stream: N chunks "data: i\n\n" every MS ms, trailer x-done: yes
 *   /big?KIB       200 with KIB kibibytes of 'b'
 *   /flood         streams 256 KiB chunks every millisecond until a write fails
 *   /badheader     responds with a header value containing CR LF (the layer must send 500)
 *   /error         br_http_respond_error(429, ...)
 *   /head          200 with a 5-byte body (for HEAD)
 *   anything else  200 "ok"
 */
#ifndef BR_TEST_HTTP_UTIL_H
#define BR_TEST_HTTP_UTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/http.h"

#define HT_MAX_RECORDS 512

struct ht_record {
    char method[32];
    char target[512];
    char id[160];
    int http_minor;
    size_t n_headers;
    size_t body_len;
    char body[512]; /* first bytes of the body, NUL-terminated */
};

struct ht_state {
    br_http_server *s;
    uint16_t port;
    atomic_int n_requests;
    atomic_int n_aborts;
    atomic_int n_rejects;
    atomic_int last_reject_status;
    atomic_int n_finished_async; /* slow/stream/hold requests finished by the handler */
    atomic_int n_closed_results; /* ... of which the finishing call returned BR_ERR_CLOSED */
    atomic_int n_stream_writes_ok;
    atomic_int flood_write_rc;       /* first failing br_http_stream_write result of /flood */
    atomic_size_t flood_max_pending; /* highest br_http_stream_pending seen by /flood */
    atomic_bool abort_finishes;      /* on_abort finishes the request at once (default true) */
    atomic_int n_worker_init;
    atomic_int n_worker_cleanup;
};

extern struct ht_state ht;

/** Defaults with short timeouts suitable for tests (200 ms header/body, 1 s keep-alive). */
void ht_limits(struct br_http_limits *l);

/** Starts the server with the given limits (NULL: ht_limits) and worker count. */
void ht_start(const struct br_http_limits *lim, unsigned n_workers);

/** Drains, joins and destroys the server; resets the records. */
void ht_stop(void);

/** Number of requests recorded so far, and a copy of record i. */
int ht_n_records(void);
struct ht_record ht_get_record(int i);

/** Connected blocking TCP socket to the server (5 s receive timeout). */
int ht_connect(void);

/** Sends all bytes (0 on success). */
int ht_send(int fd, const void *p, size_t n);
int ht_send_str(int fd, const char *s);

/* A client connection with a read buffer, so pipelined responses can be read one by one. */
struct ht_conn {
    int fd;
    char *buf;
    size_t len;
    size_t cap;
    bool eof;
    bool head_request; /* the next response answers HEAD: no body follows (reset on read) */
};

struct ht_resp {
    int status;
    char head[16384]; /* status line and header lines, NUL-terminated */
    char *body;       /* malloc'd, NUL-terminated; caller frees with ht_resp_free */
    size_t body_len;
    char trailers[4096]; /* trailer lines as received */
    bool chunked;
    size_t n_chunks;
};

void ht_conn_open(struct ht_conn *c);
void ht_conn_close(struct ht_conn *c);

/**
 * Reads one response. 0 on success, -1 when the connection closed or timed out before a full
 * response arrived. A 1xx interim response is returned like any other.
 */
int ht_read_response(struct ht_conn *c, struct ht_resp *r, int timeout_ms);
void ht_resp_free(struct ht_resp *r);

/** Value of header `name` in r->head (case-insensitive) copied into out; false if absent. */
bool ht_header(const struct ht_resp *r, const char *name, char *out, size_t out_len);

/**
 * True when the peer closed the connection within timeout_ms (EOF or reset); bytes that
 * arrive meanwhile are discarded and counted in *extra (may be NULL).
 */
bool ht_wait_closed(struct ht_conn *c, int timeout_ms, size_t *extra);

/** Waits until cond() is true or timeout_ms passes. */
bool ht_wait_for(bool (*cond)(void), int timeout_ms);

/** Sleeps ms milliseconds. */
void ht_sleep_ms(int ms);

/** One request, one response, on a fresh connection; returns the status (or -1). */
int ht_roundtrip(const char *raw, struct ht_resp *r);

#endif
