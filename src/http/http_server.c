/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 server: listening sockets, worker threads and the connection state machine.
 * Each worker owns a libuv loop and its own SO_REUSEPORT listener, so a connection and its
 * requests live on one thread without locks. A connection reads into a pooled buffer, feeds
 * the parser (http_parse.c), hands each complete request to the handler and does not parse the
 * next pipelined request before the current response is finished and flushed. Timers enforce
 * the header, body-idle and keep-alive timeouts; drain closes listeners and idle connections,
 * lets in-flight requests finish and aborts the rest after drain_timeout_ms.
 */
/* SO_REUSEPORT is a Linux extension that glibc exposes only with _DEFAULT_SOURCE. */
#define _DEFAULT_SOURCE 1 /* NOLINT(readability-identifier-naming) */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "http/http.h"
#include "http/http_int.h"

#define CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define LISTEN_BACKLOG 511
#define MAX_WORKERS    256u

/* Defaults (http.h documents them). */
#define DEF_WRITE_BUFFER_BYTES ((size_t)256 * 1024)
#define DEF_ARENA_BYTES        ((size_t)64 * 1024 * 1024)

void br_http_limits_default(struct br_http_limits *out)
{
    out->request_line_bytes = (size_t)8 * 1024;
    out->header_bytes = (size_t)32 * 1024;
    out->header_fields = 100;
    out->body_bytes = (size_t)16 * 1024 * 1024;
    out->header_timeout_ms = 10000;
    out->body_idle_timeout_ms = 30000;
    out->keepalive_timeout_ms = 75000;
    out->drain_timeout_ms = 30000;
    out->write_buffer_bytes = DEF_WRITE_BUFFER_BYTES;
    out->arena_bytes = DEF_ARENA_BYTES;
    out->max_connections = 0;
}

static void normalize_limits(struct br_http_limits *l)
{
    if (l->write_buffer_bytes == 0) {
        l->write_buffer_bytes = DEF_WRITE_BUFFER_BYTES;
    }
    if (l->arena_bytes == 0) {
        l->arena_bytes = DEF_ARENA_BYTES;
    }
}

/* ---- workers: small helpers ------------------------------------------------------------- */

static void refresh_limits(struct br__http_worker *w)
{
    br_http_server *s = w->s;
    uint64_t gen = atomic_load_explicit(&s->limits_gen, memory_order_acquire);
    if (gen == w->lim_gen) {
        return;
    }
    uv_mutex_lock(&s->limits_mu);
    w->lim = s->limits;
    w->lim_gen = atomic_load_explicit(&s->limits_gen, memory_order_relaxed);
    uv_mutex_unlock(&s->limits_mu);
}

static struct br__http_rbuf *rbuf_get(struct br__http_worker *w)
{
    struct br__http_rbuf *b = w->rbuf_free;
    if (b) {
        w->rbuf_free = b->next;
        w->n_rbuf_free--;
        return b;
    }
    return br_malloc(sizeof(*b) + BR__HTTP_RBUF_BYTES);
}

static void rbuf_put(struct br__http_worker *w, struct br__http_rbuf *b)
{
    if (w->n_rbuf_free >= BR__HTTP_RBUF_KEEP) {
        br_free(b);
        return;
    }
    b->next = w->rbuf_free;
    w->rbuf_free = b;
    w->n_rbuf_free++;
}

static void release_rbuf_if_empty(struct br__http_conn *c)
{
    if (c->rbuf && c->rstart == c->rend) {
        rbuf_put(c->w, c->rbuf);
        c->rbuf = NULL;
        c->rstart = 0;
        c->rend = 0;
    }
}

static void check_drained(struct br__http_worker *w);

/* ---- connection lifetime ---------------------------------------------------------------- */

static void conn_maybe_free(struct br__http_conn *c)
{
    if (c->handles_open || c->in_handler || c->busy) {
        return;
    }
    struct br__http_worker *w = c->w;
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        w->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    w->n_conns--;
    if (c->counted) {
        atomic_fetch_sub_explicit(&w->s->n_conns, 1, memory_order_relaxed);
    }
    if (c->rbuf) {
        rbuf_put(w, c->rbuf);
    }
    br__http_parser_cleanup(&c->parser);
    br_buf_cleanup(&c->held);
    br_arena_destroy(c->arena);
    br_free(c);
    check_drained(w);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct br__http_conn *c = h->data;
    if (--c->handles_open) {
        return;
    }
    if (c->in_handler && !c->aborted) {
        /* Deferred to here so that the handler is never re-entered from its own calls. */
        c->aborted = true;
        if (c->w->s->h.on_abort) {
            c->busy++;
            c->w->s->h.on_abort(c->w->wctx, &c->req);
            c->busy--;
        }
    }
    conn_maybe_free(c);
}

void br__http_conn_close(struct br__http_conn *c)
{
    if (c->state == BR__HTTP_CONN_CLOSED) {
        return;
    }
    c->state = BR__HTTP_CONN_CLOSED;
    c->timer_kind = BR__HTTP_TIMER_NONE;
    c->reading = false;
    if (c->rbuf) {
        rbuf_put(c->w, c->rbuf);
        c->rbuf = NULL;
        c->rstart = c->rend = 0;
    }
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_timer(uv_timer_t *t);

static void conn_timer(struct br__http_conn *c, enum br__http_timer_kind kind, uint64_t ms)
{
    c->timer_kind = kind;
    if (kind == BR__HTTP_TIMER_NONE || (ms == 0 && kind != BR__HTTP_TIMER_RESUME)) {
        /* A zero timeout means "no timeout" (resume is the one zero-delay timer). */
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(struct br__http_conn *c)
{
    if (c->reading || c->state == BR__HTTP_CONN_CLOSED) {
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) {
        c->reading = true;
    }
}

static void conn_read_stop(struct br__http_conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* ---- writing ---------------------------------------------------------------------------- */

static void after_response(struct br__http_conn *c);

static void on_write(uv_write_t *req, int status)
{
    struct br__http_wreq *wr = CONTAINER_OF(req, struct br__http_wreq, req);
    struct br__http_conn *c = wr->conn;
    c->wq_bytes -= wr->len;
    br_free(wr);
    if (status < 0) {
        if (status != UV_ECANCELED) {
            br_log(BR_LOG_DEBUG, NULL, "event=http_write_error peer=%s err=%s", c->peer,
                   uv_err_name(status));
            br__http_conn_close(c);
        }
        return;
    }
    if (c->wq_bytes == 0 && c->state == BR__HTTP_CONN_FLUSH) {
        after_response(c);
    }
}

int br__http_conn_write(struct br__http_conn *c, const uv_buf_t *bufs, unsigned n)
{
    if (c->state == BR__HTTP_CONN_CLOSED) {
        return BR_ERR_CLOSED;
    }
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) {
        total += bufs[i].len;
    }
    if (total == 0) {
        return BR_OK;
    }
    size_t done = 0;
    if (c->wq_bytes == 0) {
        int r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
        if (r >= 0) {
            done = (size_t)r;
        } else if (r != UV_EAGAIN) {
            br_log(BR_LOG_DEBUG, NULL, "event=http_write_error peer=%s err=%s", c->peer,
                   uv_err_name(r));
            br__http_conn_close(c);
            return BR_ERR_CLOSED;
        }
    }
    if (done == total) {
        return BR_OK;
    }
    size_t rest = total - done;
    struct br__http_wreq *wr = br_malloc(sizeof(*wr) + rest);
    if (!wr) {
        br_log(BR_LOG_ERR, NULL, "event=http_write_nomem peer=%s bytes=%zu", c->peer, rest);
        br__http_conn_close(c);
        return BR_ERR_NOMEM;
    }
    size_t skip = done;
    size_t at = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(wr->data + at, bufs[i].base + skip, len - skip);
        at += len - skip;
        skip = 0;
    }
    wr->conn = c;
    wr->len = rest;
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)rest);
    int r = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (r < 0) {
        br_free(wr);
        br__http_conn_close(c);
        return BR_ERR_CLOSED;
    }
    c->wq_bytes += rest;
    return BR_OK;
}

/* ---- closing gracefully ----------------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct br__http_conn *c = req->data;
    if (c->state == BR__HTTP_CONN_CLOSED) {
        return;
    }
    if (status < 0) {
        br__http_conn_close(c);
        return;
    }
    /* Lingering close: keep reading (and discarding) so that unread input does not make the
     * kernel reset the connection before the client has read our last response. */
    conn_timer(c, BR__HTTP_TIMER_LINGER, BR__HTTP_LINGER_MS);
}

void br__http_conn_start_closing(struct br__http_conn *c)
{
    c->state = BR__HTTP_CONN_CLOSING;
    c->rstart = c->rend = 0;
    release_rbuf_if_empty(c);
    /* Bound the time the last response may take to flush. */
    uint64_t flush_ms = c->w->lim.body_idle_timeout_ms;
    conn_timer(c, BR__HTTP_TIMER_LINGER, flush_ms ? flush_ms : BR__HTTP_LINGER_MS);
    conn_read_start(c);
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        br__http_conn_close(c);
    }
}

/* ---- requests --------------------------------------------------------------------------- */

static uint64_t first_wait_ms(const struct br_http_limits *l)
{
    uint64_t a = l->header_timeout_ms;
    uint64_t b = l->keepalive_timeout_ms;
    if (a == 0) {
        return b;
    }
    if (b == 0) {
        return a;
    }
    return a < b ? a : b;
}

static void after_response(struct br__http_conn *c)
{
    c->state = BR__HTTP_CONN_IDLE;
    if (c->w->draining && !(c->rbuf && c->rstart < c->rend)) {
        /* Idle now, and the server is draining: close (pipelined bytes are still served,
         * with Connection: close). */
        br__http_conn_close(c);
        return;
    }
    conn_read_start(c);
    if (c->rbuf && c->rstart < c->rend) {
        /* Pipelined bytes: parse them, but never from inside the handler's own call. */
        if (c->in_dispatch) {
            conn_timer(c, BR__HTTP_TIMER_NONE, 0);
        } else {
            conn_timer(c, BR__HTTP_TIMER_RESUME, 0);
        }
        return;
    }
    conn_timer(c, BR__HTTP_TIMER_KEEPALIVE, c->w->lim.keepalive_timeout_ms);
}

void br__http_conn_finish(struct br__http_conn *c)
{
    struct br__http_worker *w = c->w;
    c->in_handler = false;
    c->resp = BR__HTTP_RESP_NONE;
    atomic_fetch_sub_explicit(&w->inflight, 1, memory_order_relaxed);
    br_arena_reset(c->arena);
    if (c->state == BR__HTTP_CONN_CLOSED) {
        conn_maybe_free(c);
        return;
    }
    if (c->close_after) {
        br__http_conn_start_closing(c);
        return;
    }
    if (c->wq_bytes) {
        /* A client that stops reading does not hold the connection forever: the body-idle
         * timeout doubles as the send timeout. */
        c->state = BR__HTTP_CONN_FLUSH;
        uint64_t ms = c->w->lim.body_idle_timeout_ms;
        conn_timer(c, BR__HTTP_TIMER_LINGER, ms ? ms : BR__HTTP_LINGER_MS);
        return;
    }
    after_response(c);
}

static int begin_request(struct br__http_conn *c)
{
    struct br__http_worker *w = c->w;
    refresh_limits(w);
    if (c->arena_cap != w->lim.arena_bytes) {
        br_arena *a = NULL;
        if (br_arena_create(w->lim.arena_bytes, &a) != BR_OK) {
            return BR_ERR_NOMEM;
        }
        br_arena_destroy(c->arena);
        c->arena = a;
        c->arena_cap = w->lim.arena_bytes;
    }
    br__http_parser_begin(&c->parser, &w->lim);
    c->state = BR__HTTP_CONN_HEAD;
    c->continue_sent = false;
    c->req.t_start_ns = br_clock_now_ns();
    conn_timer(c, BR__HTTP_TIMER_HEADER, w->lim.header_timeout_ms);
    return BR_OK;
}

static void dispatch(struct br__http_conn *c)
{
    struct br__http_worker *w = c->w;
    struct br_http_request *req = &c->req;
    uint64_t t_start = req->t_start_ns;
    memset(req, 0, sizeof(*req));
    req->arena = c->arena;
    req->t_start_ns = t_start;
    if (br__http_parser_fill(&c->parser, c->arena, req) != BR_OK) {
        br__http_conn_reject(c, 503, "server_busy", "out of memory");
        return;
    }
    struct br_slice cid = br__http_parser_request_id(&c->parser);
    char *id = NULL;
    if (cid.len) {
        id = br_arena_slice_dup(c->arena, cid);
    }
    if (!id) {
        br_rng_request_id(&w->rng, c->id_buf);
        id = c->id_buf;
    }
    req->id = id;
    req->peer = c->peer;
    req->worker = w->index;
    req->t_ready_ns = br_clock_now_ns();
    c->state = BR__HTTP_CONN_HANDLER;
    c->in_handler = true;
    c->aborted = false;
    c->resp = BR__HTTP_RESP_NONE;
    c->head_only = req->method == BR_HTTP_METHOD_HEAD;
    if (!c->parser.keep_alive || w->draining) {
        c->close_after = true;
    }
    conn_timer(c, BR__HTTP_TIMER_NONE, 0);
    atomic_fetch_add_explicit(&w->inflight, 1, memory_order_relaxed);
    c->busy++;
    c->in_dispatch = true;
    w->s->h.on_request(w->wctx, req);
    c->in_dispatch = false;
    c->busy--;
    conn_maybe_free(c);
}

static void send_continue(struct br__http_conn *c)
{
    static const char k_continue[] = "HTTP/1.1 100 Continue\r\n\r\n";
    c->continue_sent = true;
    uv_buf_t b = uv_buf_init((char *)k_continue, sizeof(k_continue) - 1);
    br__http_conn_write(c, &b, 1);
}

/* The head is accepted and a body follows: body-idle timer, 100 Continue when asked for. */
static void enter_body(struct br__http_conn *c)
{
    c->state = BR__HTTP_CONN_BODY;
    c->last_read_ms = uv_now(&c->w->loop);
    conn_timer(c, BR__HTTP_TIMER_BODY, c->w->lim.body_idle_timeout_ms);
    if (c->parser.expect_continue && !c->continue_sent) {
        send_continue(c);
    }
}

/*
 * Between requests: skips an empty line (RFC 9112 section 2.2), which neither starts a request
 * nor extends the keep-alive timeout. True when it did.
 */
static bool skip_empty_line(struct br__http_conn *c)
{
    if (c->rend - c->rstart >= 2 && c->rbuf->data[c->rstart] == '\r' &&
        c->rbuf->data[c->rstart + 1] == '\n') {
        c->rstart += 2;
        return true;
    }
    return false;
}

static bool reading_request(const struct br__http_conn *c)
{
    return c->state == BR__HTTP_CONN_IDLE || c->state == BR__HTTP_CONN_HEAD ||
           c->state == BR__HTTP_CONN_BODY;
}

/* Parses buffered bytes while the connection is between requests or reading one. */
static void process_input(struct br__http_conn *c)
{
    while (c->rbuf && c->rstart < c->rend && reading_request(c)) {
        if (c->state == BR__HTTP_CONN_IDLE) {
            if (skip_empty_line(c)) {
                continue;
            }
            if (begin_request(c) != BR_OK) {
                br__http_conn_reject(c, 503, "server_busy", "out of memory");
                return;
            }
        }
        size_t used = 0;
        int rc =
            br__http_parser_feed(&c->parser, c->rbuf->data + c->rstart, c->rend - c->rstart, &used);
        c->rstart += used;
        if (rc == BR_OK) {
            dispatch(c);
            continue;
        }
        if (rc != BR_AGAIN) {
            const struct br__http_parser *p = &c->parser;
            br__http_conn_reject(c, p->status ? p->status : 400, p->code ? p->code : "bad_request",
                                 p->message ? p->message : "malformed request");
            return;
        }
        if (c->state == BR__HTTP_CONN_HEAD && br__http_parser_wants_body(&c->parser)) {
            enter_body(c);
        }
        break;
    }
    if (c->state == BR__HTTP_CONN_IDLE && c->timer_kind == BR__HTTP_TIMER_NONE) {
        conn_timer(c, BR__HTTP_TIMER_KEEPALIVE, c->w->lim.keepalive_timeout_ms);
    }
    if (c->state != BR__HTTP_CONN_CLOSED) {
        release_rbuf_if_empty(c);
    }
}

static void on_timer(uv_timer_t *t)
{
    struct br__http_conn *c = t->data;
    struct br__http_worker *w = c->w;
    switch (c->timer_kind) {
    case BR__HTTP_TIMER_KEEPALIVE:
    case BR__HTTP_TIMER_LINGER:
        br__http_conn_close(c);
        break;
    case BR__HTTP_TIMER_HEADER:
        br__http_conn_reject(c, 408, "request_timeout", "request head not received in time");
        break;
    case BR__HTTP_TIMER_BODY: {
        uint64_t now = uv_now(&w->loop);
        uint64_t idle = now - c->last_read_ms;
        uint64_t limit = w->lim.body_idle_timeout_ms;
        if (idle < limit) {
            conn_timer(c, BR__HTTP_TIMER_BODY, limit - idle);
        } else {
            br__http_conn_reject(c, 408, "request_timeout", "request body not received in time");
        }
        break;
    }
    case BR__HTTP_TIMER_RESUME:
        c->timer_kind = BR__HTTP_TIMER_NONE;
        process_input(c);
        break;
    default:
        break;
    }
}

/* ---- reading ---------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct br__http_conn *c = h->data;
    if (!c->rbuf) {
        c->rbuf = rbuf_get(c->w);
        c->rstart = 0;
        c->rend = 0;
        if (!c->rbuf) {
            buf->base = NULL;
            buf->len = 0;
            return;
        }
    }
    if (c->rend == BR__HTTP_RBUF_BYTES && c->rstart > 0) {
        memmove(c->rbuf->data, c->rbuf->data + c->rstart, c->rend - c->rstart);
        c->rend -= c->rstart;
        c->rstart = 0;
    }
    buf->base = c->rbuf->data + c->rend;
    buf->len = BR__HTTP_RBUF_BYTES - c->rend;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct br__http_conn *c = st->data;
    if (nread > 0) {
        c->rend += (size_t)nread;
        switch (c->state) {
        case BR__HTTP_CONN_CLOSING:
            c->rstart = c->rend;
            break;
        case BR__HTTP_CONN_HANDLER:
        case BR__HTTP_CONN_FLUSH:
            /* Keep pipelined bytes for later; stop reading when the buffer is full. */
            if (c->rend - c->rstart >= BR__HTTP_RBUF_BYTES) {
                conn_read_stop(c);
            }
            break;
        case BR__HTTP_CONN_BODY:
            c->last_read_ms = uv_now(&c->w->loop);
            process_input(c);
            break;
        case BR__HTTP_CONN_IDLE:
        case BR__HTTP_CONN_HEAD:
            process_input(c);
            break;
        default:
            break;
        }
    } else if (nread == UV_ENOBUFS) {
        if (c->rbuf && c->rend - c->rstart >= BR__HTTP_RBUF_BYTES) {
            conn_read_stop(c);
        } else {
            br_log(BR_LOG_ERR, NULL, "event=http_read_nomem peer=%s", c->peer);
            br__http_conn_close(c);
        }
    } else if (nread < 0) {
        /* EOF or error: the client is gone (a handler holding a request gets on_abort). */
        br__http_conn_close(c);
    }
    if (c->state != BR__HTTP_CONN_CLOSED) {
        release_rbuf_if_empty(c);
    }
}

/* ---- accepting -------------------------------------------------------------------------- */

static void format_peer(struct br__http_conn *c)
{
    struct sockaddr_storage ss;
    int len = (int)sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
            uv_ip4_name(a, ip, sizeof(ip));
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof(ip));
            port = ntohs(a->sin6_port);
            (void)snprintf(c->peer, sizeof(c->peer), "[%s]:%u", ip, port);
            return;
        }
    }
    (void)snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, port);
}

static void on_spare_closed(uv_handle_t *h)
{
    struct br__http_worker *w = h->data;
    w->spare_busy = false;
}

/* Accepts into the worker's spare handle and closes it: no memory for a connection. */
static void refuse_connection(struct br__http_worker *w, uv_stream_t *server)
{
    br_log(BR_LOG_ERR, NULL, "event=http_accept_nomem");
    if (!w->spare_busy && uv_tcp_init(&w->loop, &w->spare) == 0) {
        w->spare_busy = true;
        w->spare.data = w;
        uv_accept(server, (uv_stream_t *)&w->spare);
        uv_close((uv_handle_t *)&w->spare, on_spare_closed);
    }
}

/*
 * Counts c in the server's open connections, or, past limits.max_connections, answers it an
 * immediate 503 and closes it (the refused connection is not counted: it lingers only briefly).
 */
static bool admit_connection(struct br__http_conn *c)
{
    struct br__http_worker *w = c->w;
    size_t max = w->lim.max_connections;
    size_t n = atomic_fetch_add_explicit(&w->s->n_conns, 1, memory_order_relaxed);
    if (max == 0 || n < max) {
        c->counted = true;
        return true;
    }
    atomic_fetch_sub_explicit(&w->s->n_conns, 1, memory_order_relaxed);
    br_log(BR_LOG_WARN, NULL, "event=http_connection_limit peer=%s max=%zu", c->peer, max);
    br__http_conn_reject(c, 503, "too_many_connections",
                         "The gateway is at its connection limit; retry shortly.");
    return false;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct br__http_worker *w = server->data;
    if (status < 0) {
        br_log(BR_LOG_WARN, NULL, "event=http_accept_error err=%s", uv_err_name(status));
        return;
    }
    struct br__http_conn *c = br_calloc(1, sizeof(*c));
    if (c) {
        refresh_limits(w);
        if (br_arena_create(w->lim.arena_bytes, &c->arena) != BR_OK) {
            br_free(c);
            c = NULL;
        }
    }
    if (!c) {
        /* Accepting anyway keeps the listener from stalling. */
        refuse_connection(w, server);
        return;
    }
    c->w = w;
    c->arena_cap = w->lim.arena_bytes;
    br__http_parser_init(&c->parser);
    br_buf_init(&c->held, BR__HTTP_HEAD_MAX);
    uv_tcp_init(&w->loop, &c->tcp);
    uv_timer_init(&w->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->next = w->conns;
    if (w->conns) {
        w->conns->prev = c;
    }
    w->conns = c;
    w->n_conns++;
    c->state = BR__HTTP_CONN_IDLE;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        br__http_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    format_peer(c);
    if (!admit_connection(c)) {
        return;
    }
    conn_timer(c, BR__HTTP_TIMER_KEEPALIVE, first_wait_ms(&w->lim));
    conn_read_start(c);
    if (!c->reading) {
        br__http_conn_close(c);
    }
}

/* ---- drain ------------------------------------------------------------------------------ */

static void close_async(struct br__http_worker *w)
{
    br_http_server *s = w->s;
    uv_mutex_lock(&s->drain_mu);
    if (w->async_open) {
        w->async_open = false;
        uv_close((uv_handle_t *)&w->async, NULL);
    }
    uv_mutex_unlock(&s->drain_mu);
}

static void check_drained(struct br__http_worker *w)
{
    if (!w->draining || w->n_conns || w->stopped) {
        return;
    }
    w->stopped = true;
    close_async(w);
    if (w->drain_timer_open) {
        w->drain_timer_open = false;
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
    }
    uv_stop(&w->loop);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct br__http_worker *w = t->data;
    struct br__http_conn *c = w->conns;
    while (c) {
        struct br__http_conn *next = c->next;
        if (c->state != BR__HTTP_CONN_CLOSED) {
            if (c->in_handler) {
                br_log(BR_LOG_WARN, c->req.id, "event=http_drain_abort worker=%u", w->index);
            }
            br__http_conn_close(c);
        }
        c = next;
    }
}

static void drain_begin(struct br__http_worker *w)
{
    if (w->draining) {
        return;
    }
    w->draining = true;
    refresh_limits(w);
    if (w->listener_open) {
        w->listener_open = false;
        uv_close((uv_handle_t *)&w->listener, NULL);
    }
    struct br__http_conn *c = w->conns;
    while (c) {
        struct br__http_conn *next = c->next;
        if (c->state == BR__HTTP_CONN_IDLE && !c->in_handler && !(c->rbuf && c->rstart < c->rend)) {
            br__http_conn_close(c);
        } else {
            c->close_after = true;
        }
        c = next;
    }
    if (w->drain_timer_open) {
        /* 0 aborts at once (on the next loop iteration). */
        uv_timer_start(&w->drain_timer, on_drain_timeout, w->lim.drain_timeout_ms, 0);
    }
    check_drained(w);
}

static void on_async(uv_async_t *a)
{
    struct br__http_worker *w = a->data;
    if (atomic_load(&w->s->drain_requested)) {
        drain_begin(w);
    }
}

/* ---- worker thread ---------------------------------------------------------------------- */

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static int worker_setup(struct br__http_worker *w)
{
    br_http_server *s = w->s;
    int rc = uv_loop_init(&w->loop);
    if (rc != 0) {
        return BR_ERR_IO;
    }
    w->loop_ready = true;
    w->loop.data = w;
    br_rng_seed(&w->rng, 0);
    br_buf_init(&w->out, BR__HTTP_HEAD_MAX);
    br_buf_init(&w->json, BR__HTTP_HEAD_MAX);
    refresh_limits(w);
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    w->drain_timer_open = true;
    uv_tcp_init(&w->loop, &w->listener);
    w->listener.data = w;
    w->listener_open = true;
    if (uv_tcp_open(&w->listener, w->listen_fd) != 0) {
        close(w->listen_fd);
        w->listen_fd = -1;
        return BR_ERR_IO;
    }
    w->listen_fd = -1; /* libuv owns it now */
    uv_mutex_lock(&s->drain_mu);
    rc = uv_async_init(&w->loop, &w->async, on_async);
    w->async.data = w;
    w->async_open = rc == 0;
    uv_mutex_unlock(&s->drain_mu);
    if (rc != 0) {
        return BR_ERR_IO;
    }
    if (s->h.worker_init) {
        rc = s->h.worker_init(s->user, &w->loop, w->index, &w->wctx);
        if (rc != 0) {
            br_log(BR_LOG_ERR, NULL, "event=http_worker_init_failed worker=%u rc=%d", w->index, rc);
            return rc < 0 ? rc : BR_ERR_IO;
        }
    }
    w->wctx_ok = true;
    rc = uv_listen((uv_stream_t *)&w->listener, LISTEN_BACKLOG, on_connection);
    if (rc != 0) {
        br_log(BR_LOG_ERR, NULL, "event=http_listen_failed worker=%u err=%s", w->index,
               uv_err_name(rc));
        return br_err_from_errno(-rc);
    }
    return BR_OK;
}

static void worker_main(void *arg)
{
    struct br__http_worker *w = arg;
    br_http_server *s = w->s;
    w->init_rc = worker_setup(w);
    bool run = w->loop_ready;
    uv_sem_post(&s->ready);
    if (!run) {
        return;
    }
    if (atomic_load(&s->drain_requested)) {
        drain_begin(w);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->wctx_ok && s->h.worker_cleanup) {
        s->h.worker_cleanup(w->wctx);
    }
    /* Whatever is still open (the handler's leftovers included) is closed now. */
    close_async(w);
    uv_walk(&w->loop, close_any, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0) {
        br_log(BR_LOG_WARN, NULL, "event=http_loop_busy worker=%u", w->index);
    }
    while (w->rbuf_free) {
        struct br__http_rbuf *b = w->rbuf_free;
        w->rbuf_free = b->next;
        br_free(b);
    }
    w->n_rbuf_free = 0;
    br_buf_cleanup(&w->out);
    br_buf_cleanup(&w->json);
}

/* ---- server ----------------------------------------------------------------------------- */

static int parse_addr(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (!host) {
        return BR_ERR_INVAL;
    }
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) {
        return BR_OK;
    }
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) {
        return BR_OK;
    }
    return BR_ERR_INVAL;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET) {
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    } else {
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    }
}

static int bind_errno(int e)
{
    if (e == EADDRINUSE) {
        return BR_ERR_EXISTS;
    }
    if (e == EADDRNOTAVAIL || e == EAFNOSUPPORT) {
        return BR_ERR_INVAL;
    }
    return br_err_from_errno(e);
}

/* One listening socket, SO_REUSEPORT so that every worker can bind the same address. */
static int open_listener(struct sockaddr_storage *ss, int *fd_out)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        br_log(BR_LOG_ERR, NULL, "event=http_socket_failed errno=%d", e);
        return br_err_from_errno(e);
    }
    int one = 1;
    socklen_t len =
        ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    int rc = BR_OK;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
        int e = errno;
        br_log(BR_LOG_ERR, NULL, "event=http_setsockopt_failed errno=%d", e);
        rc = br_err_from_errno(e);
        goto fail_close;
    }
    if (bind(fd, (struct sockaddr *)ss, len) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        int e = errno;
        br_log(BR_LOG_ERR, NULL, "event=http_bind_failed errno=%d", e);
        rc = bind_errno(e);
        goto fail_close;
    }
    *fd_out = fd;
    return BR_OK;
fail_close:
    close(fd);
    return rc;
}

static unsigned online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        return 1;
    }
    return n > (long)MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
}

/*
 * SO_REUSEPORT lets any process of the same user bind the port too, so a second gateway
 * started on the same address would silently share its traffic. A probe without
 * SO_REUSEPORT fails with EADDRINUSE while anyone listens there.
 */
static int probe_address_free(struct sockaddr_storage *ss)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return br_err_from_errno(errno);
    }
    int one = 1;
    socklen_t len =
        ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    int rc = BR_OK;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)ss, len) != 0) {
        int e = errno;
        br_log(BR_LOG_ERR, NULL, "event=http_bind_failed errno=%d what=address_in_use_probe", e);
        rc = bind_errno(e);
    }
    (void)close(fd);
    return rc;
}

/* Binds one socket per worker; the first one picks the port when 0 was asked for. */
static int open_listeners(br_http_server *s, struct sockaddr_storage *ss)
{
    uint16_t asked = ntohs(ss->ss_family == AF_INET ? ((struct sockaddr_in *)ss)->sin_port
                                                    : ((struct sockaddr_in6 *)ss)->sin6_port);
    if (asked != 0) {
        int rc = probe_address_free(ss);
        if (rc != BR_OK) {
            return rc;
        }
    }
    for (unsigned i = 0; i < s->n_workers; i++) {
        int rc = open_listener(ss, &s->workers[i].listen_fd);
        if (rc != BR_OK) {
            return rc;
        }
        if (i == 0) {
            struct sockaddr_storage bound;
            socklen_t blen = sizeof(bound);
            if (getsockname(s->workers[0].listen_fd, (struct sockaddr *)&bound, &blen) != 0) {
                return br_err_from_errno(errno);
            }
            s->port =
                ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                                 : ((struct sockaddr_in6 *)&bound)->sin6_port);
            set_port(ss, s->port);
        }
    }
    return BR_OK;
}

int br_http_server_create(const struct br_http_server_config *cfg, const struct br_http_handler *h,
                          void *user, br_http_server **out)
{
    int rc = BR_OK;
    *out = NULL;
    if (!cfg || !h || !h->on_request) {
        return BR_ERR_INVAL;
    }
    struct sockaddr_storage ss;
    rc = parse_addr(cfg->host, cfg->port, &ss);
    if (rc != BR_OK) {
        return rc;
    }
    unsigned n = cfg->n_workers ? cfg->n_workers : online_cpus();
    if (n > MAX_WORKERS) {
        return BR_ERR_INVAL;
    }
    br_http_server *s = br_calloc(1, sizeof(*s));
    if (!s) {
        return BR_ERR_NOMEM;
    }
    s->workers = br_calloc(n, sizeof(*s->workers));
    if (!s->workers) {
        br_free(s);
        return BR_ERR_NOMEM;
    }
    s->h = *h;
    s->user = user;
    s->n_workers = n;
    s->limits = cfg->limits;
    normalize_limits(&s->limits);
    atomic_init(&s->limits_gen, 1);
    atomic_init(&s->drain_requested, false);
    atomic_init(&s->n_conns, 0);
    for (unsigned i = 0; i < n; i++) {
        s->workers[i].listen_fd = -1;
        s->workers[i].s = s;
        s->workers[i].index = i;
        atomic_init(&s->workers[i].inflight, 0);
    }
    if (uv_mutex_init(&s->limits_mu) != 0) {
        rc = BR_ERR_IO;
        goto fail_free;
    }
    if (uv_mutex_init(&s->drain_mu) != 0) {
        rc = BR_ERR_IO;
        goto fail_limits_mu;
    }
    if (uv_sem_init(&s->ready, 0) != 0) {
        rc = BR_ERR_IO;
        goto fail_drain_mu;
    }
    rc = open_listeners(s, &ss);
    if (rc != BR_OK) {
        goto fail_fds;
    }
    *out = s;
    return BR_OK;
fail_fds:
    for (unsigned i = 0; i < n; i++) {
        if (s->workers[i].listen_fd >= 0) {
            close(s->workers[i].listen_fd);
        }
    }
    uv_sem_destroy(&s->ready);
fail_drain_mu:
    uv_mutex_destroy(&s->drain_mu);
fail_limits_mu:
    uv_mutex_destroy(&s->limits_mu);
fail_free:
    br_free(s->workers);
    br_free(s);
    return rc;
}

uint16_t br_http_server_port(const br_http_server *s)
{
    return s->port;
}

int br_http_server_start(br_http_server *s)
{
    if (s->started) {
        return BR_ERR_INVAL;
    }
    s->started = true;
    unsigned n_started = 0;
    int rc = BR_OK;
    for (unsigned i = 0; i < s->n_workers; i++) {
        if (uv_thread_create(&s->workers[i].thread, worker_main, &s->workers[i]) != 0) {
            br_log(BR_LOG_ERR, NULL, "event=http_thread_failed worker=%u", i);
            rc = BR_ERR_IO;
            break;
        }
        s->workers[i].thread_started = true;
        n_started++;
    }
    for (unsigned i = 0; i < n_started; i++) {
        uv_sem_wait(&s->ready);
    }
    for (unsigned i = 0; i < n_started && rc == BR_OK; i++) {
        if (s->workers[i].init_rc != BR_OK) {
            rc = s->workers[i].init_rc;
        }
    }
    if (rc != BR_OK) {
        br_http_server_drain(s);
        br_http_server_join(s);
    }
    return rc;
}

size_t br_http_server_connections(const br_http_server *s)
{
    return atomic_load_explicit(&((br_http_server *)s)->n_conns, memory_order_relaxed);
}

void br_http_server_set_limits(br_http_server *s, const struct br_http_limits *limits)
{
    uv_mutex_lock(&s->limits_mu);
    s->limits = *limits;
    normalize_limits(&s->limits);
    atomic_fetch_add_explicit(&s->limits_gen, 1, memory_order_release);
    uv_mutex_unlock(&s->limits_mu);
}

void br_http_server_drain(br_http_server *s)
{
    if (atomic_exchange(&s->drain_requested, true)) {
        return;
    }
    uv_mutex_lock(&s->drain_mu);
    for (unsigned i = 0; i < s->n_workers; i++) {
        if (s->workers[i].async_open) {
            uv_async_send(&s->workers[i].async);
        }
    }
    uv_mutex_unlock(&s->drain_mu);
}

void br_http_server_join(br_http_server *s)
{
    if (s->joined) {
        return;
    }
    for (unsigned i = 0; i < s->n_workers; i++) {
        if (s->workers[i].thread_started) {
            uv_thread_join(&s->workers[i].thread);
            s->workers[i].thread_started = false;
        }
    }
    s->joined = true;
}

void br_http_server_destroy(br_http_server *s)
{
    if (!s) {
        return;
    }
    if (s->started && !s->joined) {
        br_http_server_drain(s);
        br_http_server_join(s);
    }
    for (unsigned i = 0; i < s->n_workers; i++) {
        if (s->workers[i].listen_fd >= 0) {
            close(s->workers[i].listen_fd);
        }
    }
    uv_sem_destroy(&s->ready);
    uv_mutex_destroy(&s->drain_mu);
    uv_mutex_destroy(&s->limits_mu);
    br_free(s->workers);
    br_free(s);
}

size_t br_http_server_inflight(const br_http_server *s)
{
    size_t n = 0;
    for (unsigned i = 0; i < s->n_workers; i++) {
        n += atomic_load_explicit(&s->workers[i].inflight, memory_order_relaxed);
    }
    return n;
}

const struct br_slice *br_http_request_header(const br_http_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++) {
        if (br_slice_case_eq_cstr(req->headers[i].name, name)) {
            return &req->headers[i].value;
        }
    }
    return NULL;
}
