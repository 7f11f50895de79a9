/* SPDX-License-Identifier: MIT */
/*
 * Upstream HTTP client, with two backends behind one API. Plain http:// URLs go to a lean
 * native HTTP/1.1 client (libuv + llhttp; upstream_h1.c): per-host keep-alive pools, one write
 * and typically one read per call on a reused connection. https:// URLs (TLS, HTTP/2 where the
 * server offers it, peers verified) and clients created with BR_UPSTREAM_BACKEND_CURL use one
 * libcurl multi handle per loop, driven through curl's multi_socket API (upstream_curl.c). Both
 * hand response bytes to the caller as they arrive and behave the same at this interface:
 * callbacks, stats, error kinds, timeouts, cancellation (docs/internals/upstream.md).
 *
 * Thread-safety: a br_upstream and its calls belong to the loop they were created on.
 */
#ifndef BR_UPSTREAM_H
#define BR_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/slice.h"

typedef struct br_upstream br_upstream;
typedef struct br_upstream_call br_upstream_call;

/* Why a call failed, for the client's status, the log row and metrics. */
#define BR_UPSTREAM_ERROR_MAP(X)                \
    X(NONE, "none")                             \
    X(DNS, "dns")                               \
    X(CONNECT, "connect")                       \
    X(TLS, "tls")                               \
    X(TIMEOUT_CONNECT, "timeout_connect")       \
    X(TIMEOUT_FIRST_BYTE, "timeout_first_byte") \
    X(TIMEOUT_IDLE, "timeout_idle")             \
    X(CLOSED, "closed")                         \
    X(PROTOCOL, "protocol")                     \
    X(TOO_LARGE, "too_large")                   \
    X(HTTP_STATUS, "http_status")               \
    X(BAD_RESPONSE, "bad_response")             \
    X(CANCELED, "canceled")                     \
    X(OTHER, "other")

enum br_upstream_error {
#define BR__UPSTREAM_ERROR_ENUM(name, text) BR_UPSTREAM_ERROR_##name,
    BR_UPSTREAM_ERROR_MAP(BR__UPSTREAM_ERROR_ENUM)
#undef BR__UPSTREAM_ERROR_ENUM
};

/** Stable lower-case name of an error kind ("timeout_first_byte"), for logs and metrics. */
const char *br_upstream_error_name(enum br_upstream_error e);

/* Which client carries a call. */
enum br_upstream_backend {
    BR_UPSTREAM_BACKEND_AUTO = 0, /* native HTTP/1.1 for http://, libcurl for https:// */
    BR_UPSTREAM_BACKEND_CURL,     /* libcurl for every URL */
};

struct br_upstream_opts {
    long max_connections_per_host;    /* curl: connections per host (calls queue past it),
                                         0 = libcurl's default; native: idle connections kept
                                         per host (busy ones are not capped), 0 = 64 */
    size_t max_response_bytes;        /* body cap (0 = 64 MiB); past it: TOO_LARGE */
    bool insecure_skip_verify;        /* tests only; never from user config by default */
    const char *ca_file;              /* extra CA bundle; NULL = system default; copied */
    enum br_upstream_backend backend; /* 0 = AUTO */
};

struct br_upstream_request {
    const char *method;         /* "POST", "GET" */
    const char *url;            /* absolute http(s) URL */
    const char *const *headers; /* "Name: value" lines, borrowed until on_done */
    size_t n_headers;
    struct br_slice body;           /* borrowed until on_done */
    uint32_t connect_timeout_ms;    /* TCP + TLS handshake (default 5000 when 0) */
    uint32_t first_byte_timeout_ms; /* request sent -> first response byte (default 60000) */
    uint32_t idle_timeout_ms;       /* longest silence between response bytes (default 120000) */
};

struct br_upstream_header {
    struct br_slice name;
    struct br_slice value;
};

struct br_upstream_head {
    int status;                               /* HTTP status of the final response */
    const struct br_upstream_header *headers; /* valid during the callback only */
    size_t n_headers;
};

struct br_upstream_stats {
    enum br_upstream_error error; /* NONE on success (any HTTP status counts as success) */
    const char *error_text;       /* short human text for logs, NULL on success; never
                                     contains request headers or secrets */
    uint64_t t_start_ns;          /* monotonic: call started */
    uint64_t t_connected_ns;      /* connection ready; equals t_start_ns when reused, 0 if
                                     no connection was made */
    uint64_t t_first_byte_ns;     /* first response byte, 0 if none */
    uint64_t t_done_ns;           /* call ended */
    long http_version;            /* 10, 11, 20 */
    bool reused_connection;
};

struct br_upstream_callbacks {
    /** Status line and headers of the final response (1xx are skipped). */
    void (*on_head)(void *user, const struct br_upstream_head *head);
    /** Response body bytes as they arrive (de-chunked, decompressed). */
    void (*on_data)(void *user, const char *data, size_t n);
    /** Always called once at the end, unless the call was canceled. */
    void (*on_done)(void *user, const struct br_upstream_stats *stats);
};

/**
 * Process-wide libcurl set-up (curl_global_init_mem with brigade's allocators). Call once from
 * main before any thread or client exists. Returns BR_OK, BR_ERR_NOMEM or BR_ERR_IO.
 */
int br_upstream_global_init(void);

/** Undoes br_upstream_global_init; call once at exit, after every client is destroyed. */
void br_upstream_global_cleanup(void);

/** Creates the client on `loop`. Caller destroys (after the loop stops running calls). */
int br_upstream_create(uv_loop_t *loop, const struct br_upstream_opts *opts, br_upstream **out);

/**
 * Cancels outstanding calls (no callbacks) and frees the client. NULL is a no-op. Not from
 * inside one of its callbacks. Handle memory is released by libuv close callbacks: run the
 * loop once more (uv_run) before uv_loop_close.
 */
void br_upstream_destroy(br_upstream *u);

/**
 * Starts a call. Callbacks run later on the loop, never inside this function; on a non-zero
 * return (BR_ERR_INVAL, BR_ERR_NOMEM) none will run. `*out` (may be NULL) stays valid until
 * on_done returns or the call is canceled. May be called from inside callbacks.
 */
int br_upstream_call_start(br_upstream *u, const struct br_upstream_request *req,
                           const struct br_upstream_callbacks *cb, void *user,
                           br_upstream_call **out);

/**
 * Aborts a call: the connection is closed (an HTTP/2 stream is reset), no further callbacks.
 * Safe inside callbacks (of this or any call of the client); a no-op once on_done has begun.
 */
void br_upstream_call_cancel(br_upstream_call *c);

/** Number of calls in flight on this client. */
size_t br_upstream_active(const br_upstream *u);

#endif
