/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 server: N worker threads, each with its own libuv loop and its own listening socket
 * bound with SO_REUSEPORT, so a request lives and dies on one thread. Requests are parsed with
 * llhttp in strict mode, checked against configurable limits and timeouts, and handed whole
 * (body included, de-chunked) to a handler. The handler answers with one complete response or
 * a chunked stream (SSE), each write flushed to the socket as it is made.
 *
 * Rejections made here (malformed framing, limits, timeouts) get an OpenAI-shaped JSON error,
 * an x-request-id, and close the connection; they never reach the handler's on_request.
 */
#ifndef BR_HTTP_H
#define BR_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/arena.h"
#include "core/slice.h"

typedef struct br_http_server br_http_server;
typedef struct br_http_request br_http_request;

/*
 * Limits and timeouts; every field is configurable and each violation has its own status.
 * A timeout of 0 disables that timeout, except drain_timeout_ms, where 0 aborts in-flight
 * requests at once. Start from br_http_limits_default.
 */
struct br_http_limits {
    size_t request_line_bytes;  /* method SP target SP version; over it: 414 */
    size_t header_bytes;        /* whole header block (CRLFs included); over it: 431 */
    size_t header_fields;       /* number of header fields; over it: 431 */
    size_t body_bytes;          /* de-chunked body; over it: 413 (before reading if CL says so) */
    uint64_t header_timeout_ms; /* first byte to end of head; over it: 408 and close. Also
                                   the longest wait for the first byte of a new connection
                                   (then closed silently) */
    uint64_t body_idle_timeout_ms; /* longest gap between body bytes; over it: 408 and close */
    uint64_t keepalive_timeout_ms; /* idle keep-alive connection is closed silently */
    uint64_t drain_timeout_ms;     /* on drain, in-flight requests get this long to finish */
    size_t write_buffer_bytes;     /* streamed bytes the client has not read yet; a stream_write
                                      past it drops the client (BR_ERR_CLOSED, and
                                      br_http_stream_overflowed says so). 0 = 256 KiB */
    size_t arena_bytes;            /* cap on one request's arena (handler allocations
                                      included). 0 = 64 MiB */
    size_t max_connections;        /* open client connections, summed over workers; a new one
                                      past it gets an immediate 503 (Retry-After: 1) and is
                                      closed. 0 = unlimited */
};

/**
 * Fills the defaults: 8 KiB, 32 KiB, 100, 16 MiB, 10 s, 30 s, 75 s, 30 s, 256 KiB, 64 MiB,
 * 0 (unlimited connections).
 */
void br_http_limits_default(struct br_http_limits *out);

struct br_http_server_config {
    const char *host;             /* numeric IPv4 or IPv6 address to bind, e.g. "127.0.0.1" */
    uint16_t port;                /* 0 picks a free port (see br_http_server_port) */
    unsigned n_workers;           /* 0 = one per online CPU */
    struct br_http_limits limits; /* initial limits; see br_http_server_set_limits */
};

struct br_http_header {
    struct br_slice name;  /* as sent by the peer, or as given by the handler */
    struct br_slice value; /* leading/trailing whitespace removed */
};

enum br_http_method {
    BR_HTTP_METHOD_OTHER = 0,
    BR_HTTP_METHOD_GET,
    BR_HTTP_METHOD_HEAD,
    BR_HTTP_METHOD_POST,
    BR_HTTP_METHOD_PUT,
    BR_HTTP_METHOD_DELETE,
    BR_HTTP_METHOD_PATCH,
    BR_HTTP_METHOD_OPTIONS,
};

/*
 * One request. Owned by the http layer; everything it points to lives in `arena` and is valid
 * until the handler finishes the request (br_http_respond or br_http_stream_end).
 */
struct br_http_request {
    br_arena *arena; /* request lifetime; the handler may allocate from it */
    enum br_http_method method;
    struct br_slice method_name; /* as sent */
    struct br_slice target;      /* request-target as sent (origin-, absolute- or
                                    asterisk-form; CONNECT is refused with 501) */
    struct br_slice path;        /* target up to '?' */
    struct br_slice query;       /* after '?', empty when absent */
    int http_minor;              /* 0 for HTTP/1.0, 1 for HTTP/1.1 */
    const struct br_http_header *headers;
    size_t n_headers;
    struct br_slice body; /* complete, de-chunked */
    const char *id;       /* NUL-terminated request id: the client's x-request-id
                             when it is 1..128 visible ASCII chars, else generated */
    const char *peer;     /* NUL-terminated "ip:port" ("[ip6]:port") */
    uint64_t t_start_ns;  /* monotonic clock at the request's first byte */
    uint64_t t_ready_ns;  /* monotonic clock when handed to on_request */
    unsigned worker;      /* index of the worker thread that owns it */
    void *user;           /* free for the handler */
};

struct br_http_handler {
    /**
     * Runs on each worker thread before it accepts connections; *wctx_out becomes that worker's
     * context for the other callbacks. A non-zero return stops the server from starting.
     */
    int (*worker_init)(void *user, uv_loop_t *loop, unsigned worker, void **wctx_out);
    /** Runs on the worker thread after its loop has stopped. */
    void (*worker_cleanup)(void *wctx);
    /**
     * A complete request. The handler finishes it exactly once, now or later on this thread,
     * with br_http_respond or br_http_stream_end, also after on_abort.
     */
    void (*on_request)(void *wctx, br_http_request *req);
    /**
     * The client went away (or a hard shutdown began) before the response was finished. The
     * handler should stop work for req and then finish it; writes now return BR_ERR_CLOSED.
     * May be NULL.
     */
    void (*on_abort)(void *wctx, br_http_request *req);
    /**
     * The http layer rejected a request itself (400, 408, 413, 414, 431, 501) or a connection
     * ended with a protocol error; for metrics and logs. req_id may be NULL. May be NULL.
     */
    void (*on_reject)(void *wctx, int status, const char *reason, const char *req_id);
};

/**
 * Creates the server and binds its listening sockets (one per worker, SO_REUSEPORT) so that an
 * address already in use is reported here. `h` and `user` must outlive the server.
 * Errors: BR_ERR_INVAL (bad address), BR_ERR_EXISTS (address in use), BR_ERR_IO, BR_ERR_NOMEM.
 */
int br_http_server_create(const struct br_http_server_config *cfg, const struct br_http_handler *h,
                          void *user, br_http_server **out);

/** The bound port (useful when 0 was asked for). */
uint16_t br_http_server_port(const br_http_server *s);

/** Starts the worker threads; returns once every worker_init has returned. */
int br_http_server_start(br_http_server *s);

/** Replaces the limits for requests that start from now on. Thread-safe. */
void br_http_server_set_limits(br_http_server *s, const struct br_http_limits *limits);

/**
 * Graceful stop: closes the listeners, closes idle connections, lets in-flight requests finish
 * (up to drain_timeout_ms, then aborts them), and lets the worker loops end. Thread-safe and
 * async-signal-unsafe: call it from a uv_signal callback or a normal thread.
 */
void br_http_server_drain(br_http_server *s);

/** Waits for every worker thread to end (after a drain). */
void br_http_server_join(br_http_server *s);

/** Frees the server; joins first if needed. NULL is a no-op. */
void br_http_server_destroy(br_http_server *s);

/** Number of requests handed to handlers and not yet finished, summed over workers. */
size_t br_http_server_inflight(const br_http_server *s);

/** First header named `name` (ASCII case-insensitive), or NULL. */
const struct br_slice *br_http_request_header(const br_http_request *req, const char *name);

/**
 * Sends a complete response with Content-Length and finishes the request. The http layer adds
 * Date, x-request-id, Content-Length and Connection (close when the connection will close,
 * keep-alive for a persistent HTTP/1.0 client); handler fields with those names are dropped.
 * The handler supplies Content-Type and anything else. Header names that are not tokens and
 * values containing CR, LF or NUL are refused (BR_ERR_INVAL, and a 500 is sent instead), as is
 * a status outside 200..599. HEAD requests and 204/304 get no body bytes. Returns
 * BR_ERR_CLOSED when the client is gone (the request is still finished and freed). `req` is
 * invalid after the call. Must run on the request's worker thread.
 */
int br_http_respond(br_http_request *req, int status, const struct br_http_header *headers,
                    size_t n_headers, struct br_slice body);

/**
 * Sends an OpenAI-shaped error: {"error":{"message","type","param","code"}} with the given
 * status, and finishes the request. `param` and `code` may be NULL (sent as null).
 */
int br_http_respond_error(br_http_request *req, int status, const char *type, const char *code,
                          const char *param, const char *message);

/**
 * Starts a streamed response: the status line and headers are prepared now and leave with the
 * body's first bytes (or with the end of the stream, or with a zero-length stream_write, which
 * sends them at once), in the same write; the body follows as chunks (HTTP/1.1 chunked;
 * HTTP/1.0 clients get a body delimited by close). BR_ERR_INVAL for
 * a bad status or header (nothing is written; the handler may still respond), BR_ERR_CLOSED
 * when the client is gone. Either way the handler still ends with br_http_stream_end (or, when
 * nothing was begun, br_http_respond).
 */
int br_http_stream_begin(br_http_request *req, int status, const struct br_http_header *headers,
                         size_t n_headers);

/**
 * Writes one chunk; the bytes are handed to the socket at once (no batching across calls) and
 * whatever the socket does not take is copied and queued. A zero-length write sends a head
 * that is still waiting and otherwise does nothing.
 * BR_ERR_CLOSED when the client is gone, or when more than limits.write_buffer_bytes are
 * already queued (the client is then dropped and on_abort follows).
 */
int br_http_stream_write(br_http_request *req, const void *data, size_t n);

/** Bytes written by stream_write that the socket has not accepted yet. */
size_t br_http_stream_pending(const br_http_request *req);

/**
 * True when the http layer dropped this request's client because it did not read: more than
 * limits.write_buffer_bytes were queued. Valid until the request is finished (also in on_abort).
 */
bool br_http_stream_overflowed(const br_http_request *req);

/** Client connections open now, summed over workers (those refused at the limit excluded). */
size_t br_http_server_connections(const br_http_server *s);

/**
 * Ends the stream with the last chunk and optional trailers (HTTP/1.1 only; announce them in a
 * `Trailer` header at stream_begin), and finishes the request. Invalid trailers are dropped
 * (BR_ERR_INVAL, the stream still ends cleanly). `req` is invalid after the call.
 */
int br_http_stream_end(br_http_request *req, const struct br_http_header *trailers,
                       size_t n_trailers);

/**
 * As br_http_stream_write(data, n) followed by br_http_stream_end(trailers), in one write to
 * the socket. `req` is invalid after the call.
 */
int br_http_stream_finish(br_http_request *req, const void *data, size_t n,
                          const struct br_http_header *trailers, size_t n_trailers);

/** Reason phrase for a status code ("Not Found"); "Unknown" when not known. */
const char *br_http_status_reason(int status);

#endif
