/* SPDX-License-Identifier: MIT */
/*
 * Structures shared by the http subsystem's own files (never included from outside src/http,
 * except by its unit tests and fuzz targets): the request parser (http_parse.c), which can be
 * driven without sockets, and the server's worker and connection state (http_server.c,
 * http_write.c). See docs/internals/http.md for the design.
 */
#ifndef BR_HTTP_INT_H
#define BR_HTTP_INT_H

#include <llhttp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/rand.h"
#include "core/slice.h"
#include "http/http.h"

/* ---------------------------------------------------------------------------------------- */
/* Parser                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Where the parser is in the current message. */
enum br__http_phase {
    BR__HTTP_PHASE_HEAD = 0, /* request line and header fields */
    BR__HTTP_PHASE_BODY,     /* head accepted, body (or trailers) being read */
    BR__HTTP_PHASE_DONE,     /* message complete; llhttp is paused behind it */
    BR__HTTP_PHASE_ERROR,    /* rejected; status/code/message say why */
};

/*
 * Byte scanner that runs over the head before llhttp sees it. It enforces what llhttp does not
 * (or not in its strict mode): the request-line and header-block byte limits, the field count,
 * NUL bytes, bare CR or LF as line ends, obs-fold, empty field names and whitespace before the
 * colon. It stops at the CRLF CRLF that ends the head and never looks at the body.
 */
struct br__http_scan {
    uint8_t state;     /* enum in http_parse.c */
    bool cr;           /* previous byte was CR; the next one must be LF */
    bool method_token; /* the bytes before the first SP are all tchar */
    bool method_ended; /* the first SP of the request line was seen */
    uint8_t tail_len;  /* bytes in tail */
    char tail[9];      /* last bytes of the request line: must be " HTTP/d.d" */
    size_t line_bytes; /* request line so far (leading empty lines included), bytes */
    size_t head_bytes; /* header lines so far, CRLFs included, bytes */
    size_t n_fields;   /* header field lines so far */
};

/* One header field of the current message, as offsets into the parser's head buffer. */
struct br__http_field {
    uint32_t name_off;
    uint32_t name_len;
    uint32_t value_off;
    uint32_t value_len;
};

/*
 * The request parser: llhttp (strict, no lenient flags) plus the scanner above, the framing
 * checks llhttp leaves to us (Content-Length/Transfer-Encoding rules, versions, CONNECT,
 * Expect) and the body limit. It copies the head into `head` and de-chunks the body into
 * `body`; both are reused from one message to the next, so a keep-alive connection allocates
 * nothing per request once they have grown. One message at a time: after BR_OK the parser is
 * paused until br__http_parser_begin starts the next one.
 */
struct br__http_parser {
    llhttp_t ll;
    struct br_http_limits lim; /* limits of the current message */
    struct br__http_scan scan;
    enum br__http_phase phase;
    struct br_buf head;            /* method, target and header names/values, copied */
    struct br_buf body;            /* de-chunked body, capped at lim.body_bytes */
    struct br__http_field *fields; /* (cap_fields) */
    size_t n_fields;
    size_t cap_fields;
    uint32_t method_off, method_len;
    uint32_t target_off, target_len;
    int last_cb;          /* which span callback ran last (enum in http_parse.c) */
    bool value_split;     /* the last value span ended at the end of the input */
    const char *exec_end; /* end of the bytes handed to llhttp_execute */
    /* framing facts collected from the head */
    unsigned n_content_length;
    unsigned n_transfer_encoding;
    unsigned n_host;
    int i_content_length; /* index into fields, -1 when absent */
    int i_transfer_encoding;
    int i_expect;
    int i_request_id;
    bool chunked;            /* body is chunked */
    bool keep_alive;         /* the connection may carry another request */
    bool expect_continue;    /* HTTP/1.1 request with Expect: 100-continue */
    bool in_trailers;        /* the last chunk was read; trailer fields follow */
    bool method_unknown;     /* llhttp refused the method before its end was seen */
    uint64_t content_length; /* declared body length (0 when chunked) */
    size_t trailer_bytes;
    size_t trailer_span; /* bytes of the trailer name or value being read */
    int ck_state;        /* strict chunked-framing check (enum in http_parse.c) */
    uint64_t ck_size;    /* chunk size being read, then bytes of it left */
    size_t n_trailer_fields;
    /* rejection */
    int status;          /* HTTP status of the rejection, 0 when none */
    const char *code;    /* static string: "bad_request", ... */
    const char *message; /* static string for the client */
};

/** Prepares an idle parser (no allocation yet). */
void br__http_parser_init(struct br__http_parser *p);

/** Frees the parser's buffers. */
void br__http_parser_cleanup(struct br__http_parser *p);

/**
 * Starts the next message with the given limits (copied). After a completed message this
 * resumes llhttp where it paused; after an error it starts afresh.
 */
void br__http_parser_begin(struct br__http_parser *p, const struct br_http_limits *lim);

/**
 * Feeds bytes. Returns BR_AGAIN when all of them were taken and more are needed; BR_OK when a
 * message is complete (*consumed says how many bytes belonged to it; the rest is the next
 * message); BR_ERR_PARSE when the message is rejected (p->status, p->code, p->message tell the
 * answer to send; the connection must then be closed). BR_ERR_NOMEM on allocation failure.
 */
int br__http_parser_feed(struct br__http_parser *p, const char *data, size_t len, size_t *consumed);

/** Sets the rejection fields; returns BR_ERR_PARSE. */
int br__http_parser_fail(struct br__http_parser *p, int status, const char *code,
                         const char *message);

/** True when the head is complete and a body is still expected (100-continue matters). */
bool br__http_parser_wants_body(const struct br__http_parser *p);

/**
 * Fills the parsed parts of req (method, target, path, query, version, headers, body) for a
 * complete message; the header array comes from `arena`, the strings point into the parser's
 * buffers and stay valid until the next br__http_parser_begin. BR_ERR_NOMEM when the arena
 * is exhausted.
 */
int br__http_parser_fill(const struct br__http_parser *p, br_arena *arena,
                         struct br_http_request *req);

/**
 * The client's x-request-id when the head carried one that is 1..128 visible ASCII bytes;
 * an empty slice otherwise (also before the head is complete).
 */
struct br_slice br__http_parser_request_id(const struct br__http_parser *p);

/* ---------------------------------------------------------------------------------------- */
/* Server                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Connection states (docs/internals/http.md has the diagram). */
enum br__http_conn_state {
    BR__HTTP_CONN_IDLE = 0, /* waiting for the first byte of a request */
    BR__HTTP_CONN_HEAD,     /* reading a request head; header timeout runs */
    BR__HTTP_CONN_BODY,     /* reading a request body; body idle timeout runs */
    BR__HTTP_CONN_HANDLER,  /* request handed to on_request, not yet finished */
    BR__HTTP_CONN_FLUSH,    /* response finished, waiting for the socket to take it */
    BR__HTTP_CONN_CLOSING,  /* last response written; shutdown, then lingering close */
    BR__HTTP_CONN_CLOSED,   /* handles closing or closed */
};

/* What the connection timer is currently measuring. */
enum br__http_timer_kind {
    BR__HTTP_TIMER_NONE = 0,
    BR__HTTP_TIMER_KEEPALIVE,
    BR__HTTP_TIMER_HEADER,
    BR__HTTP_TIMER_BODY,
    BR__HTTP_TIMER_RESUME, /* zero-delay: parse pipelined bytes outside the handler's stack */
    BR__HTTP_TIMER_LINGER,
};

/* Response progress of the request a connection is serving. */
enum br__http_resp_state {
    BR__HTTP_RESP_NONE = 0,
    BR__HTTP_RESP_STREAMING,
};

struct br__http_worker;

/* A read buffer from the worker's pool. */
struct br__http_rbuf {
    struct br__http_rbuf *next; /* free-list link */
    char data[];                /* BR__HTTP_RBUF_BYTES */
};

/* One queued write: the bytes the socket did not take at once, copied. */
struct br__http_wreq {
    uv_write_t req;
    struct br__http_conn *conn;
    size_t len;
    char data[];
};

/*
 * One client connection. It owns at most one request at a time (`req`, embedded); the handler
 * borrows it from on_request until it finishes it. The struct is freed only when both libuv
 * handles are closed and no handler holds the request, so a client that disconnects while a
 * handler still works never leaves the handler with a dangling pointer.
 */
struct br__http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct br__http_worker *w;
    struct br__http_conn *prev, *next; /* the worker's connection list */
    enum br__http_conn_state state;
    enum br__http_timer_kind timer_kind;
    enum br__http_resp_state resp;
    unsigned handles_open;      /* tcp and timer until their close callbacks ran */
    bool in_handler;            /* req is held by the handler */
    bool in_dispatch;           /* on_request is on the stack */
    unsigned busy;              /* calls into the handler on the stack; no free */
    bool aborted;               /* on_abort was (or will be) sent for req */
    bool reading;               /* uv_read_start is active */
    bool close_after;           /* close once the current response is written */
    bool head_only;             /* HEAD request or bodiless status: no body bytes */
    bool stream_chunked;        /* streamed body uses chunked encoding */
    bool continue_sent;         /* 100 Continue already written */
    bool counted;               /* counted in the server's open connections */
    bool overflowed;            /* dropped: the client read too slowly (write_buffer_bytes) */
    uint64_t last_read_ms;      /* uv_now at the last body read */
    struct br__http_rbuf *rbuf; /* NULL when nothing is buffered */
    size_t rstart, rend;        /* unparsed bytes are rbuf->data[rstart, rend) */
    size_t wq_bytes;            /* queued bytes the socket has not taken yet */
    struct br_buf held;         /* a streamed response's head, sent with its first bytes */
    struct br__http_parser parser;
    br_arena *arena;            /* request arena, reset when a request finishes */
    size_t arena_cap;           /* the arena's byte cap */
    struct br_http_request req; /* the request being served */
    char id_buf[BR_REQUEST_ID_LEN + 1];
    char peer[64]; /* "ip:port" */
    uv_shutdown_t shut;
};

/* A worker thread: its loop, listener, connections and per-thread caches. */
struct br__http_worker {
    br_http_server *s;
    unsigned index;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t async; /* drain wake-up */
    uv_timer_t drain_timer;
    int listen_fd; /* bound socket, handed to uv_tcp_open */
    void *wctx;    /* the handler's worker context */
    bool wctx_ok;  /* worker_init succeeded */
    bool thread_started;
    bool loop_ready;
    bool listener_open;
    bool async_open; /* guarded by server->drain_mu */
    bool drain_timer_open;
    bool draining;
    bool stopped;
    int init_rc;                 /* result of the start sequence */
    struct br__http_conn *conns; /* list head */
    size_t n_conns;
    struct br_http_limits lim;       /* local copy of the server limits */
    uint64_t lim_gen;                /* generation of that copy */
    struct br_rng rng;               /* request ids */
    struct br__http_rbuf *rbuf_free; /* read-buffer pool */
    size_t n_rbuf_free;
    struct br_buf out;  /* scratch for response heads */
    struct br_buf json; /* scratch for error bodies */
    uv_tcp_t spare;     /* accepts (and closes) when a connection cannot be
                           allocated, so that the listener never stalls */
    bool spare_busy;
    char date[40]; /* "Date: ...\r\n" cached per second */
    size_t date_len;
    int64_t date_sec;
    char pad_[64]; /* keeps inflight off the cache line of the fields
                      above (read from other threads) */
    atomic_size_t inflight;
};

struct br_http_server {
    struct br_http_handler h;
    void *user;
    unsigned n_workers;
    uint16_t port;
    struct br__http_worker *workers; /* (n_workers) */
    uv_mutex_t limits_mu;            /* guards limits */
    struct br_http_limits limits;
    atomic_uint_fast64_t limits_gen;
    uv_mutex_t drain_mu; /* guards async_open and the send */
    atomic_bool drain_requested;
    atomic_size_t n_conns; /* open connections over all workers (limits.max_connections) */
    bool started;
    bool joined;
    uv_sem_t ready;
};

/* Read buffer size; a request head or body is streamed through it. */
#define BR__HTTP_RBUF_BYTES ((size_t)64 * 1024)
/* Free read buffers a worker keeps. */
#define BR__HTTP_RBUF_KEEP  32u
/* How long a closing connection keeps discarding input after its last response. */
#define BR__HTTP_LINGER_MS  2000u
/* Cap on a response head built by the http layer. */
#define BR__HTTP_HEAD_MAX   ((size_t)64 * 1024)

/** Writes bytes to the connection: uv_try_write first, the rest copied and queued. */
int br__http_conn_write(struct br__http_conn *c, const uv_buf_t *bufs, unsigned n);

/** Closes the connection's handles (idempotent); on_abort follows if a handler holds req. */
void br__http_conn_close(struct br__http_conn *c);

/** Last response written: shutdown after the queued writes, then a lingering close. */
void br__http_conn_start_closing(struct br__http_conn *c);

/** The handler finished the request: release it and move the connection on. */
void br__http_conn_finish(struct br__http_conn *c);

/** Appends the cached "Date: ...\r\n" line to the worker's scratch buffer. */
int br__http_append_date(struct br__http_worker *w, struct br_buf *b);

/**
 * Sends a rejection made by the http layer itself: OpenAI-shaped JSON error, x-request-id,
 * Connection: close; then closes the connection gracefully. Reports it through on_reject.
 */
void br__http_conn_reject(struct br__http_conn *c, int status, const char *code,
                          const char *message);

/** Appends a JSON string literal (quotes included) for s, escaping as RFC 8259 requires. */
int br__http_json_string(struct br_buf *b, const char *s);

#endif
