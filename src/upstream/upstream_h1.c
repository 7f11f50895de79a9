/* SPDX-License-Identifier: MIT */
/*
 * Upstream HTTP client, native HTTP/1.1 backend for plain http:// URLs: libuv TCP streams and
 * llhttp (strict mode) for responses. It exists because libcurl's per-transfer set-up, its
 * liveness polls and socket-callback churn cost more than the rest of a gateway hop.
 *
 * Per client: hosts keyed by name:port, each with a DNS cache (60 s; numeric addresses need
 * none), a LIFO list of idle keep-alive connections (at most max_connections_per_host, closed
 * after 60 s idle by a sweep timer) and the calls waiting for its name to resolve. Idle
 * connections keep their uv_read_start active (and are unref'd): an EOF or a stray byte from the
 * peer closes them at once, and reusing one costs no epoll_ctl. A call serializes its request
 * head once into a buffer that the pooled call object keeps, writes head + body with one
 * sendmsg of two iovecs (uv_write only for what the socket did not take), and parses the
 * response from one shared read buffer. One uv_timer per call carries the connect, first-byte
 * and idle deadlines; bytes only record the loop time, the timer re-arms itself lazily.
 *
 * Re-entrancy: user callbacks run inside llhttp callbacks (on_head, on_data) or after the parser
 * returned (on_done). Cancel detaches the call from its connection and closes the connection;
 * the parse loop checks `conn->call` after every user callback and stops when it changed. A
 * finished call gives its connection back to the pool before on_done runs, so a call started
 * from on_done reuses it. Failures found inside call_start are reported from the call's timer
 * (0 ms), never from call_start itself.
 *
 * Writes use MSG_NOSIGNAL; the uv_write fallback for large bodies does not, so the process must
 * ignore SIGPIPE (brigade's main does, as any libuv program writing to sockets must).
 */
#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "upstream/upstream_int.h"

#define H1_DEFAULT_IDLE_PER_HOST 64
#define H1_IDLE_CONN_MS          60000u /* idle pooled connections are closed after this */
#define H1_SWEEP_MS              5000u  /* how often idle connections are checked */
#define H1_DNS_TTL_MS            60000u /* resolved addresses are reused this long */
#define H1_MAX_ADDRS             8      /* addresses kept per host name */
#define H1_MAX_HOSTS             256    /* hosts kept per client (unused ones are evicted) */
#define H1_MAX_HOST_LEN          253
#define H1_RBUF_SIZE             65536
#define H1_RBUF_POOL             4
#define H1_MAX_REQ_HEAD          ((size_t)1 << 20)
#define H1_FREE_CALLS_MAX        256  /* pooled idle call objects per client */
#define H1_KEEP_BUF_BYTES        8192 /* larger head buffers are not pinned in the pool */
#define H1_TCP_KEEPALIVE_S       60
#define H1_USER_AGENT            "brigade/0.1"

#define H1_CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Intrusive circular doubly-linked list; an unlinked node points at itself. */
struct h1_link {
    struct h1_link *prev, *next;
};

enum call_state {
    CALL_IDLE,    /* on the free list */
    CALL_RUNNING, /* started, not finished, not canceled */
    CALL_DONE,    /* on_done is running */
};

enum call_phase {
    PHASE_CONNECT,    /* DNS + TCP connect: the connect timeout applies */
    PHASE_FIRST_BYTE, /* connection ready: request going out, waiting for the first byte */
    PHASE_BODY,       /* receiving: the idle timeout applies */
};

struct h1_field {
    uint32_t name_off, name_len; /* in resp_head */
    uint32_t value_off, value_len;
};

struct h1_host;
struct h1_conn;

struct h1_call {
    struct br_upstream_call base; /* kind = H1; first member */
    uv_timer_t timer;             /* connect / first-byte / idle deadline; data = this call */
    struct br__upstream_h1 *u;
    struct h1_host *host;      /* referenced while running */
    struct h1_conn *conn;      /* carrying connection; NULL while resolving */
    struct h1_link link;       /* u->active while running */
    struct h1_link wait_link;  /* host->waiting while the host name resolves */
    struct h1_call *next_free; /* u->free_calls */
    struct br_upstream_callbacks cb;
    void *user;
    enum call_state state;
    enum call_phase phase;
    bool head_done;    /* on_head delivered */
    bool got_byte;     /* some response byte arrived */
    bool retried;      /* already moved once from a dead pooled connection to a fresh one */
    bool is_head;      /* HEAD request: the response has no body */
    bool in_1xx;       /* parsing an interim response */
    bool dropping;     /* the current header field is past MAX_HEADERS */
    uint8_t hdr_state; /* 0 before a field, 1 in a name, 2 in a value */
    enum br_upstream_error abort;   /* why a parser callback stopped the parse */
    const char *abort_text;         /* static detail for it, or NULL */
    enum br_upstream_error pending; /* failure found inside call_start, reported by the timer */
    uint32_t connect_ms;
    uint32_t first_byte_ms;
    uint32_t idle_ms;
    uint64_t last_byte_ms; /* uv_now() of the latest response byte */
    size_t body_bytes;
    size_t max_body;
    size_t head_bytes;       /* header (and trailer) name + value bytes seen */
    unsigned n_tried;        /* addresses tried for the current connection attempt */
    struct br_slice body;    /* borrowed until on_done */
    struct br_buf req_head;  /* serialized request head */
    struct br_buf resp_head; /* header names and values of the current response */
    struct h1_field fields[BR__UPSTREAM_MAX_HEADERS];
    size_t n_fields;
    struct br_upstream_stats stats;
    char errtext[192];
};

struct h1_conn {
    uv_tcp_t tcp; /* data = this conn; first member */
    uv_connect_t connect_req;
    uv_write_t write_req;
    llhttp_t parser; /* data = this conn */
    struct br__upstream_h1 *u;
    struct h1_host *host;
    struct h1_call *call;     /* the call it carries; NULL when idle or closing */
    struct h1_link idle_link; /* host->idle while pooled */
    uint64_t idle_since_ms;
    unsigned addr_index;
    bool writing;    /* a uv_write is pending */
    bool closing;    /* uv_close called; memory goes in the close callback */
    bool complete;   /* the current response ended */
    bool keep_alive; /* ... and allows another request */
};

struct h1_gai {
    uv_getaddrinfo_t req; /* data = this */
    struct h1_host *host; /* NULL once the client is gone */
};

struct h1_host {
    struct h1_link link; /* u->hosts */
    struct br__upstream_h1 *u;
    char name[H1_MAX_HOST_LEN + 1];
    size_t name_len;
    uint16_t port;
    bool numeric; /* an IP literal: addrs[0] never expires */
    struct sockaddr_storage addrs[H1_MAX_ADDRS];
    unsigned n_addrs;
    unsigned good; /* index of the address that connected last */
    uint64_t resolved_ms;
    struct h1_gai *gai;     /* resolution in flight */
    struct h1_link waiting; /* calls waiting for it */
    struct h1_link idle;    /* pooled connections, most recently used first */
    size_t n_idle;
    size_t refs; /* running calls and open connections pointing here */
};

struct br__upstream_h1 {
    uv_loop_t *loop;
    size_t max_response_bytes;
    size_t max_idle_per_host;
    struct h1_link active; /* running calls */
    size_t n_active;
    struct h1_call *free_calls;
    size_t n_free;
    struct h1_link hosts;
    size_t n_hosts;
    size_t n_idle;     /* pooled connections over all hosts */
    uv_timer_t *sweep; /* idle-connection sweep; heap so that it can outlive the client */
    char *rbufs[H1_RBUF_POOL];
    size_t n_rbufs;
    int in_start; /* > 0 while br__upstream_h1_call_start runs */
    bool destroying;
};

/* ---- lists ------------------------------------------------------------------------------ */

static void link_init(struct h1_link *l)
{
    l->prev = l;
    l->next = l;
}

static bool link_empty(const struct h1_link *l)
{
    return l->next == l;
}

static void link_push_front(struct h1_link *head, struct h1_link *l)
{
    l->next = head->next;
    l->prev = head;
    head->next->prev = l;
    head->next = l;
}

static void link_push_back(struct h1_link *head, struct h1_link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

static void link_remove(struct h1_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    link_init(l);
}

/* Moves every node of `from` onto the empty list `to`. */
static void link_move(struct h1_link *from, struct h1_link *to)
{
    link_init(to);
    if (link_empty(from)) {
        return;
    }
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    link_init(from);
}

/* ---- small helpers ---------------------------------------------------------------------- */

static void free_data_cb(uv_handle_t *h)
{
    br_free(h->data);
}

static void free_handle_cb(uv_handle_t *h)
{
    br_free(h);
}

static bool is_tchar(unsigned char ch)
{
    /* RFC 9110 token characters */
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) {
        return true;
    }
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool name_is(const char *name, size_t len, const char *lit)
{
    return strlen(lit) == len && strncasecmp(name, lit, len) == 0;
}

static void set_text(struct h1_call *c, enum br_upstream_error kind, const char *detail)
{
    if (detail && detail[0]) {
        (void)snprintf(c->errtext, sizeof(c->errtext), "%s: %s", br__upstream_describe(kind),
                       detail);
    } else {
        c->errtext[0] = '\0';
    }
}

/* ---- read buffers ----------------------------------------------------------------------- */

static char *rbuf_get(struct br__upstream_h1 *u)
{
    if (u->n_rbufs > 0) {
        return u->rbufs[--u->n_rbufs];
    }
    return br_malloc(H1_RBUF_SIZE);
}

static void rbuf_put(struct br__upstream_h1 *u, char *b)
{
    if (!b) {
        return;
    }
    if (u->n_rbufs < H1_RBUF_POOL) {
        u->rbufs[u->n_rbufs++] = b;
    } else {
        br_free(b);
    }
}

/* ---- connections ------------------------------------------------------------------------ */

static void sweep_cb(uv_timer_t *t);
static void deadline_cb(uv_timer_t *t);
static void finish(struct h1_call *c, enum br_upstream_error kind);

/* Closes a connection (idempotent); its memory goes in the close callback. */
static void conn_close(struct h1_conn *k)
{
    if (k->closing) {
        return;
    }
    k->closing = true;
    k->call = NULL;
    if (k->idle_link.next != &k->idle_link) {
        link_remove(&k->idle_link);
        k->host->n_idle--;
        k->u->n_idle--;
    }
    k->host->refs--;
    uv_close((uv_handle_t *)&k->tcp, free_data_cb);
}

static struct h1_conn *conn_new(struct br__upstream_h1 *u, struct h1_host *h)
{
    struct h1_conn *k = br_calloc(1, sizeof(*k));
    if (!k) {
        return NULL;
    }
    if (uv_tcp_init(u->loop, &k->tcp) != 0) {
        br_free(k);
        return NULL;
    }
    k->tcp.data = k;
    k->connect_req.data = k;
    k->write_req.data = k;
    k->u = u;
    k->host = h;
    link_init(&k->idle_link);
    h->refs++;
    return k;
}

/* Puts a connection whose response ended cleanly back into its host's pool. */
static void conn_park(struct h1_conn *k)
{
    struct br__upstream_h1 *u = k->u;
    struct h1_host *h = k->host;
    k->call = NULL;
    if (u->destroying || h->n_idle >= u->max_idle_per_host) {
        conn_close(k);
        return;
    }
    k->idle_since_ms = uv_now(u->loop);
    link_push_front(&h->idle, &k->idle_link);
    h->n_idle++;
    u->n_idle++;
    /* An idle connection must not keep the loop alive; its read stays armed. */
    uv_unref((uv_handle_t *)&k->tcp);
    if (!uv_is_active((uv_handle_t *)u->sweep)) {
        uv_timer_start(u->sweep, sweep_cb, H1_SWEEP_MS, H1_SWEEP_MS);
    }
}

static struct h1_conn *conn_take(struct h1_host *h)
{
    if (link_empty(&h->idle)) {
        return NULL;
    }
    struct h1_conn *k = H1_CONTAINER(h->idle.next, struct h1_conn, idle_link);
    link_remove(&k->idle_link);
    h->n_idle--;
    k->u->n_idle--;
    uv_ref((uv_handle_t *)&k->tcp);
    return k;
}

static void sweep_cb(uv_timer_t *t)
{
    struct br__upstream_h1 *u = t->data;
    uint64_t now = uv_now(u->loop);
    for (struct h1_link *l = u->hosts.next; l != &u->hosts; l = l->next) {
        struct h1_host *h = H1_CONTAINER(l, struct h1_host, link);
        while (!link_empty(&h->idle)) {
            struct h1_conn *k = H1_CONTAINER(h->idle.prev, struct h1_conn, idle_link);
            if (now - k->idle_since_ms < H1_IDLE_CONN_MS) {
                break;
            }
            conn_close(k);
        }
    }
    if (u->n_idle == 0) {
        uv_timer_stop(t);
    }
}

/* ---- calls: pool and failure paths --------------------------------------------------------- */

static void call_destroy(struct h1_call *c)
{
    uv_timer_stop(&c->timer);
    br_buf_cleanup(&c->req_head);
    br_buf_cleanup(&c->resp_head);
    uv_close((uv_handle_t *)&c->timer, free_data_cb);
}

static void call_recycle(struct br__upstream_h1 *u, struct h1_call *c)
{
    c->state = CALL_IDLE;
    c->conn = NULL;
    c->host = NULL;
    if (u->n_free >= H1_FREE_CALLS_MAX || u->destroying) {
        call_destroy(c);
        return;
    }
    if (c->req_head.cap > H1_KEEP_BUF_BYTES) {
        br_buf_cleanup(&c->req_head);
    }
    if (c->resp_head.cap > H1_KEEP_BUF_BYTES) {
        br_buf_cleanup(&c->resp_head);
    }
    br_buf_reset(&c->req_head);
    br_buf_reset(&c->resp_head);
    c->next_free = u->free_calls;
    u->free_calls = c;
    u->n_free++;
}

static struct h1_call *call_acquire(struct br__upstream_h1 *u)
{
    struct h1_call *c = u->free_calls;
    if (c) {
        u->free_calls = c->next_free;
        u->n_free--;
    } else {
        c = br_calloc(1, sizeof(*c));
        if (!c) {
            return NULL;
        }
        c->base.kind = BR__UPSTREAM_KIND_H1;
        uv_timer_init(u->loop, &c->timer);
        c->timer.data = c;
        br_buf_init(&c->req_head, H1_MAX_REQ_HEAD);
        br_buf_init(&c->resp_head, BR__UPSTREAM_MAX_HEAD_BYTES);
    }
    c->u = u;
    c->next_free = NULL;
    link_init(&c->link);
    link_init(&c->wait_link);
    c->host = NULL;
    c->conn = NULL;
    c->head_done = false;
    c->got_byte = false;
    c->retried = false;
    c->in_1xx = false;
    c->dropping = false;
    c->hdr_state = 0;
    c->abort = BR_UPSTREAM_ERROR_NONE;
    c->abort_text = NULL;
    c->pending = BR_UPSTREAM_ERROR_NONE;
    c->body_bytes = 0;
    c->head_bytes = 0;
    c->n_tried = 0;
    c->n_fields = 0;
    c->last_byte_ms = 0;
    memset(&c->stats, 0, sizeof(c->stats));
    c->errtext[0] = '\0';
    return c;
}

/* Detaches and closes the call's connection, if it has one. */
static void drop_conn(struct h1_call *c)
{
    struct h1_conn *k = c->conn;
    if (k) {
        c->conn = NULL;
        conn_close(k);
    }
}

/*
 * Ends a running call with `kind` (NONE = success): the connection goes back to the pool when
 * the response ended cleanly and allows reuse, else it is closed; then on_done runs, then the
 * call is recycled. Never called inside call_start or a parser callback.
 */
static void finish(struct h1_call *c, enum br_upstream_error kind)
{
    struct br__upstream_h1 *u = c->u;
    struct h1_conn *k = c->conn;
    uv_timer_stop(&c->timer);
    link_remove(&c->link);
    u->n_active--;
    if (c->wait_link.next != &c->wait_link) {
        link_remove(&c->wait_link);
    }
    c->state = CALL_DONE;
    if (k) {
        c->conn = NULL;
        if (kind == BR_UPSTREAM_ERROR_NONE && k->complete && k->keep_alive && !k->writing) {
            conn_park(k);
        } else {
            conn_close(k);
        }
    }
    c->host->refs--;
    c->host = NULL;

    struct br_upstream_stats *st = &c->stats;
    st->error = kind;
    st->t_done_ns = br_clock_now_ns();
    if (kind == BR_UPSTREAM_ERROR_NONE) {
        st->error_text = NULL;
    } else {
        st->error_text = c->errtext[0] ? c->errtext : br__upstream_describe(kind);
    }
    c->cb.on_done(c->user, st);
    call_recycle(u, c);
}

/* A failure: reported now, or from the call's timer when found inside call_start. */
static void fail(struct h1_call *c, enum br_upstream_error kind, const char *detail)
{
    set_text(c, kind, detail);
    if (c->u->in_start > 0) {
        drop_conn(c);
        c->pending = kind;
        uv_timer_start(&c->timer, deadline_cb, 0, 0);
        return;
    }
    finish(c, kind);
}

static void deadline_cb(uv_timer_t *t)
{
    struct h1_call *c = t->data;
    if (c->state != CALL_RUNNING) {
        return;
    }
    if (c->pending != BR_UPSTREAM_ERROR_NONE) {
        finish(c, c->pending);
        return;
    }
    c->errtext[0] = '\0';
    if (c->phase == PHASE_BODY) {
        uint64_t quiet = uv_now(c->u->loop) - c->last_byte_ms;
        if (quiet < c->idle_ms) {
            uv_timer_start(t, deadline_cb, c->idle_ms - quiet, 0);
            return;
        }
        finish(c, BR_UPSTREAM_ERROR_TIMEOUT_IDLE);
    } else if (c->phase == PHASE_FIRST_BYTE) {
        finish(c, BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE);
    } else {
        finish(c, BR_UPSTREAM_ERROR_TIMEOUT_CONNECT);
    }
}

/* ---- response parsing (llhttp callbacks; the parser's data is the connection) ------------- */

static struct h1_call *call_of(llhttp_t *p)
{
    struct h1_conn *k = p->data;
    return k->call;
}

static int on_message_begin(llhttp_t *p)
{
    struct h1_call *c = call_of(p);
    if (!c) {
        return -1;
    }
    if (!c->head_done) {
        c->n_fields = 0;
        c->hdr_state = 0;
        c->dropping = false;
        br_buf_reset(&c->resp_head);
    }
    return 0;
}

/* Counts header (or trailer) bytes against the cap and keeps them when wanted. */
static int collect(struct h1_call *c, const char *at, size_t n, bool name)
{
    c->head_bytes += n;
    if (c->head_bytes > BR__UPSTREAM_MAX_HEAD_BYTES) {
        c->abort = BR_UPSTREAM_ERROR_TOO_LARGE;
        return -1;
    }
    if (c->head_done || c->dropping) {
        return 0;
    }
    if (br_buf_append(&c->resp_head, at, n) != BR_OK) {
        c->abort = BR_UPSTREAM_ERROR_OTHER;
        return -1;
    }
    struct h1_field *f = &c->fields[c->n_fields - 1];
    if (name) {
        f->name_len += (uint32_t)n;
    } else {
        f->value_len += (uint32_t)n;
    }
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct h1_call *c = call_of(p);
    if (!c) {
        return -1;
    }
    if (c->hdr_state != 1 && !c->head_done) {
        c->dropping = c->n_fields >= BR__UPSTREAM_MAX_HEADERS;
        if (!c->dropping) {
            struct h1_field *f = &c->fields[c->n_fields++];
            f->name_off = (uint32_t)c->resp_head.len;
            f->name_len = 0;
            f->value_off = (uint32_t)c->resp_head.len;
            f->value_len = 0;
        }
    }
    c->hdr_state = 1;
    return collect(c, at, n, true);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct h1_call *c = call_of(p);
    if (!c) {
        return -1;
    }
    if (c->hdr_state != 2 && !c->head_done && !c->dropping) {
        c->fields[c->n_fields - 1].value_off = (uint32_t)c->resp_head.len;
    }
    c->hdr_state = 2;
    return collect(c, at, n, false);
}

static int deliver_head(struct h1_conn *k, struct h1_call *c, int status)
{
    struct br_upstream_header fields[BR__UPSTREAM_MAX_HEADERS];
    const char *base = c->resp_head.ptr;
    for (size_t i = 0; i < c->n_fields; i++) {
        const struct h1_field *f = &c->fields[i];
        fields[i].name = br_slice_make(base + f->name_off, f->name_len);
        fields[i].value = br_slice_trim(br_slice_make(base + f->value_off, f->value_len));
    }
    struct br_upstream_head head = {.status = status, .headers = fields, .n_headers = c->n_fields};
    c->head_done = true;
    if (c->cb.on_head) {
        c->cb.on_head(c->user, &head);
    }
    return k->call == c ? 0 : -1; /* -1: canceled inside on_head */
}

static int on_headers_complete(llhttp_t *p)
{
    struct h1_conn *k = p->data;
    struct h1_call *c = k->call;
    if (!c) {
        return -1;
    }
    int status = p->status_code;
    c->stats.http_version = (long)p->http_major * 10 + p->http_minor;
    c->hdr_state = 0;
    if (status >= 100 && status < 200) {
        if (status == 101) {
            c->abort = BR_UPSTREAM_ERROR_PROTOCOL;
            c->abort_text = "unrequested protocol switch (101)";
            return -1;
        }
        c->in_1xx = true; /* 100 Continue, 103 Early Hints: the real head follows */
        c->head_bytes = 0;
        return 0;
    }
    bool has_body = !c->is_head && status != 204 && status != 304;
    if (has_body && (p->flags & F_CONTENT_LENGTH) && !(p->flags & F_CHUNKED) &&
        p->content_length > c->max_body) {
        c->abort = BR_UPSTREAM_ERROR_TOO_LARGE; /* announced too large: no head, no body */
        return -1;
    }
    if (deliver_head(k, c, status) != 0) {
        return -1;
    }
    return c->is_head ? 1 : 0; /* 1: no body follows */
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct h1_conn *k = p->data;
    struct h1_call *c = k->call;
    if (!c) {
        return -1;
    }
    if (n > c->max_body - c->body_bytes) {
        c->abort = BR_UPSTREAM_ERROR_TOO_LARGE;
        return -1;
    }
    c->body_bytes += n;
    if (n > 0 && c->cb.on_data) {
        c->cb.on_data(c->user, at, n);
    }
    return k->call == c ? 0 : -1; /* -1: canceled inside on_data */
}

static int on_message_complete(llhttp_t *p)
{
    struct h1_conn *k = p->data;
    struct h1_call *c = k->call;
    if (!c) {
        return -1;
    }
    if (c->in_1xx) {
        c->in_1xx = false;
        return 0;
    }
    k->complete = true;
    k->keep_alive = llhttp_should_keep_alive(p) != 0;
    return HPE_PAUSED; /* stop here: any byte after the response is not ours */
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- sending ------------------------------------------------------------------------------ */

static void retry_fresh(struct h1_call *c);

/* Writing the request failed with `err` (a libuv code). */
static void send_failed(struct h1_call *c, int err)
{
    if (c->stats.reused_connection && !c->retried && !c->got_byte) {
        retry_fresh(c); /* the pooled connection was dead */
        return;
    }
    fail(c, BR_UPSTREAM_ERROR_CLOSED, uv_strerror(err));
}

static void write_cb(uv_write_t *req, int status)
{
    struct h1_conn *k = req->data;
    k->writing = false;
    if (k->closing || !k->call || status == 0) {
        return;
    }
    send_failed(k->call, status);
}

/* Writes head + body: one sendmsg, and uv_write for whatever the socket did not take. */
static void conn_send(struct h1_conn *k, struct h1_call *c)
{
    uv_buf_t bufs[2];
    unsigned nb = 1;
    bufs[0] = uv_buf_init(c->req_head.ptr, (unsigned)c->req_head.len);
    if (c->body.len > 0) {
        bufs[1] = uv_buf_init((char *)c->body.ptr, (unsigned)c->body.len);
        nb = 2;
    }
    size_t total = c->req_head.len + c->body.len;
    size_t sent = 0;
    uv_os_fd_t fd = -1;
    if (uv_fileno((const uv_handle_t *)&k->tcp, &fd) == 0) {
        struct iovec iov[2];
        for (unsigned i = 0; i < nb; i++) {
            iov[i].iov_base = bufs[i].base;
            iov[i].iov_len = bufs[i].len;
        }
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = nb};
        ssize_t w;
        do {
            w = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        } while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            send_failed(c, uv_translate_sys_error(errno));
            return;
        }
        sent = w > 0 ? (size_t)w : 0;
    }
    if (sent == total) {
        return;
    }
    unsigned i = 0;
    while (sent >= bufs[i].len) {
        sent -= bufs[i].len;
        i++;
    }
    bufs[i].base += sent;
    bufs[i].len -= (unsigned)sent;
    int rc = uv_write(&k->write_req, (uv_stream_t *)&k->tcp, bufs + i, nb - i, write_cb);
    if (rc != 0) {
        send_failed(c, rc);
        return;
    }
    k->writing = true;
}

/* The call's connection is ready (new or reused): arm the first-byte deadline and send. */
static void conn_ready(struct h1_call *c)
{
    struct h1_conn *k = c->conn;
    llhttp_init(&k->parser, HTTP_RESPONSE, &parser_settings);
    k->parser.data = k;
    k->complete = false;
    k->keep_alive = false;
    c->phase = PHASE_FIRST_BYTE;
    uv_timer_start(&c->timer, deadline_cb, c->first_byte_ms, 0);
    conn_send(k, c);
}

/* ---- receiving -------------------------------------------------------------------------- */

/* A response byte arrived: first-byte bookkeeping; later bytes only note the time. */
static void note_byte(struct h1_call *c)
{
    c->last_byte_ms = uv_now(c->u->loop);
    if (c->got_byte) {
        return;
    }
    c->got_byte = true;
    c->stats.t_first_byte_ns = br_clock_now_ns();
    c->phase = PHASE_BODY;
    /* The deadline timer re-checks lazily; restart it only if it would fire too late. */
    if (uv_timer_get_due_in(&c->timer) > c->idle_ms) {
        uv_timer_start(&c->timer, deadline_cb, c->idle_ms, 0);
    }
}

static void conn_feed(struct h1_conn *k, struct h1_call *c, const char *data, size_t n)
{
    note_byte(c);
    llhttp_errno_t e = llhttp_execute(&k->parser, data, n);
    if (k->call != c) {
        return; /* canceled inside a callback: the connection is closing */
    }
    if (e == HPE_OK) {
        return;
    }
    if (e == HPE_PAUSED && k->complete) {
        const char *pos = llhttp_get_error_pos(&k->parser);
        if (pos && pos < data + n) {
            k->keep_alive = false; /* bytes past the response: the stream is out of step */
        }
        finish(c, BR_UPSTREAM_ERROR_NONE);
        return;
    }
    if (c->abort != BR_UPSTREAM_ERROR_NONE) {
        set_text(c, c->abort, c->abort_text);
        finish(c, c->abort);
        return;
    }
    set_text(c, BR_UPSTREAM_ERROR_PROTOCOL, llhttp_get_error_reason(&k->parser));
    finish(c, BR_UPSTREAM_ERROR_PROTOCOL);
}

/* The connection ended (EOF or error `status`) while carrying call c. */
static void conn_end(struct h1_conn *k, struct h1_call *c, ssize_t status)
{
    if (status == UV_EOF && c->head_done && llhttp_message_needs_eof(&k->parser)) {
        (void)llhttp_finish(&k->parser); /* a close-delimited body ends here */
        if (k->complete) {
            k->keep_alive = false;
            finish(c, BR_UPSTREAM_ERROR_NONE);
            return;
        }
    }
    if (status == UV_ENOBUFS) {
        fail(c, BR_UPSTREAM_ERROR_OTHER, "out of memory");
        return;
    }
    if (!c->got_byte && c->stats.reused_connection && !c->retried) {
        retry_fresh(c); /* the pooled connection died before answering */
        return;
    }
    const char *why = status != UV_EOF ? uv_strerror((int)status)
                      : c->got_byte    ? "connection closed mid-response"
                                       : "connection closed before the response";
    fail(c, BR_UPSTREAM_ERROR_CLOSED, why);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct h1_conn *k = h->data;
    (void)suggested;
    char *b = rbuf_get(k->u);
    *buf = uv_buf_init(b, b ? H1_RBUF_SIZE : 0);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct h1_conn *k = s->data;
    struct br__upstream_h1 *u = k->u;
    struct h1_call *c = k->call;
    if (nread > 0 && c) {
        conn_feed(k, c, buf->base, (size_t)nread);
    } else if (nread < 0 && c) {
        conn_end(k, c, nread);
    } else if (nread != 0) {
        conn_close(k); /* idle: EOF, error or unexpected bytes */
    }
    rbuf_put(u, buf->base);
}

/* ---- connecting ------------------------------------------------------------------------- */

static void connect_addr(struct h1_call *c, unsigned index);

static void connect_cb(uv_connect_t *req, int status)
{
    struct h1_conn *k = req->data;
    if (k->closing) {
        return;
    }
    struct h1_call *c = k->call;
    struct h1_host *h = k->host;
    if (!c) {
        conn_close(k);
        return;
    }
    if (status < 0) {
        unsigned next = (k->addr_index + 1) % (h->n_addrs ? h->n_addrs : 1);
        drop_conn(c);
        c->n_tried++;
        if (c->n_tried < h->n_addrs && status != UV_ETIMEDOUT) {
            connect_addr(c, next); /* e.g. "localhost": ::1 refused, 127.0.0.1 listens */
            return;
        }
        fail(c,
             status == UV_ETIMEDOUT ? BR_UPSTREAM_ERROR_TIMEOUT_CONNECT : BR_UPSTREAM_ERROR_CONNECT,
             uv_strerror(status));
        return;
    }
    h->good = k->addr_index;
    (void)uv_tcp_nodelay(&k->tcp, 1);
    (void)uv_tcp_keepalive(&k->tcp, 1, H1_TCP_KEEPALIVE_S);
    int rc = uv_read_start((uv_stream_t *)&k->tcp, alloc_cb, read_cb);
    if (rc != 0) {
        fail(c, BR_UPSTREAM_ERROR_CONNECT, uv_strerror(rc));
        return;
    }
    c->stats.t_connected_ns = br_clock_now_ns();
    conn_ready(c);
}

/* Opens a connection to the host's address `index`, moving on to the next on failure. */
static void connect_addr(struct h1_call *c, unsigned index)
{
    struct h1_host *h = c->host;
    int rc = 0;
    while (c->n_tried < h->n_addrs) {
        struct h1_conn *k = conn_new(c->u, h);
        if (!k) {
            fail(c, BR_UPSTREAM_ERROR_OTHER, "out of memory");
            return;
        }
        k->call = c;
        k->addr_index = index;
        c->conn = k;
        rc = uv_tcp_connect(&k->connect_req, &k->tcp, (const struct sockaddr *)&h->addrs[index],
                            connect_cb);
        if (rc == 0) {
            return;
        }
        drop_conn(c);
        c->n_tried++;
        index = (index + 1) % h->n_addrs;
    }
    fail(c, BR_UPSTREAM_ERROR_CONNECT, rc ? uv_strerror(rc) : "no address");
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct h1_gai *g = req->data;
    struct h1_host *h = g->host;
    br_free(g);
    if (!h) {
        uv_freeaddrinfo(res); /* the client is gone */
        return;
    }
    h->gai = NULL;
    h->n_addrs = 0;
    h->good = 0;
    for (const struct addrinfo *ai = status == 0 ? res : NULL; ai && h->n_addrs < H1_MAX_ADDRS;
         ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(h->addrs[0])) {
            continue;
        }
        struct sockaddr_storage *sa = &h->addrs[h->n_addrs++];
        memcpy(sa, ai->ai_addr, ai->ai_addrlen);
        if (ai->ai_family == AF_INET) {
            ((struct sockaddr_in *)sa)->sin_port = htons(h->port);
        } else {
            ((struct sockaddr_in6 *)sa)->sin6_port = htons(h->port);
        }
    }
    uv_freeaddrinfo(res);
    h->resolved_ms = uv_now(h->u->loop);
    struct h1_link todo;
    link_move(&h->waiting, &todo);
    /* The first waiting call's on_done may start or cancel others: take them one by one. */
    while (!link_empty(&todo)) {
        struct h1_call *c = H1_CONTAINER(todo.next, struct h1_call, wait_link);
        link_remove(&c->wait_link);
        if (h->n_addrs == 0) {
            fail(c, BR_UPSTREAM_ERROR_DNS, status ? uv_strerror(status) : "no usable address");
        } else {
            c->n_tried = 0;
            connect_addr(c, h->good);
        }
    }
}

static int host_resolve(struct br__upstream_h1 *u, struct h1_host *h)
{
    struct h1_gai *g = br_calloc(1, sizeof(*g));
    if (!g) {
        return UV_ENOMEM;
    }
    g->host = h;
    g->req.data = g;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(u->loop, &g->req, gai_cb, h->name, NULL, &hints);
    if (rc != 0) {
        br_free(g);
        return rc;
    }
    h->gai = g;
    return 0;
}

/* Gets the call a connection: to the cached address, or after resolving the host name. */
static void call_connect(struct h1_call *c)
{
    struct h1_host *h = c->host;
    struct br__upstream_h1 *u = c->u;
    c->n_tried = 0;
    if (!h->numeric && (h->n_addrs == 0 || uv_now(u->loop) - h->resolved_ms >= H1_DNS_TTL_MS)) {
        link_push_back(&h->waiting, &c->wait_link);
        if (!h->gai) {
            int rc = host_resolve(u, h);
            if (rc != 0) {
                link_remove(&c->wait_link);
                fail(c, BR_UPSTREAM_ERROR_DNS, uv_strerror(rc));
            }
        }
        return;
    }
    connect_addr(c, h->good);
}

/* A pooled connection turned out dead before answering: once, try again on a fresh one. */
static void retry_fresh(struct h1_call *c)
{
    drop_conn(c);
    c->retried = true;
    c->stats.reused_connection = false;
    c->stats.t_connected_ns = 0;
    c->phase = PHASE_CONNECT;
    uv_timer_start(&c->timer, deadline_cb, c->connect_ms, 0);
    call_connect(c);
}

/* ---- hosts -------------------------------------------------------------------------------- */

static void host_free(struct br__upstream_h1 *u, struct h1_host *h)
{
    while (!link_empty(&h->idle)) {
        conn_close(H1_CONTAINER(h->idle.next, struct h1_conn, idle_link));
    }
    if (h->gai) {
        h->gai->host = NULL; /* its callback frees it */
        (void)uv_cancel((uv_req_t *)&h->gai->req);
        h->gai = NULL;
    }
    link_remove(&h->link);
    u->n_hosts--;
    br_free(h);
}

struct h1_url {
    const char *host; /* without IPv6 brackets */
    size_t host_len;
    uint16_t port;
    bool ipv6;
    struct br_slice authority; /* host[:port] as written, for the Host header */
    struct br_slice target;    /* path and query; may be empty or start with '?' */
};

static struct h1_host *host_get(struct br__upstream_h1 *u, const struct h1_url *url)
{
    for (struct h1_link *l = u->hosts.next; l != &u->hosts; l = l->next) {
        struct h1_host *h = H1_CONTAINER(l, struct h1_host, link);
        if (h->port == url->port && h->name_len == url->host_len &&
            strncasecmp(h->name, url->host, url->host_len) == 0) {
            return h;
        }
    }
    if (u->n_hosts >= H1_MAX_HOSTS) {
        /* Evict the least recently added host nothing refers to. */
        for (struct h1_link *l = u->hosts.prev; l != &u->hosts; l = l->prev) {
            struct h1_host *h = H1_CONTAINER(l, struct h1_host, link);
            if (h->refs == 0 && link_empty(&h->waiting)) {
                host_free(u, h);
                break;
            }
        }
    }
    struct h1_host *h = br_calloc(1, sizeof(*h));
    if (!h) {
        return NULL;
    }
    h->u = u;
    memcpy(h->name, url->host, url->host_len);
    h->name[url->host_len] = '\0';
    h->name_len = url->host_len;
    h->port = url->port;
    link_init(&h->waiting);
    link_init(&h->idle);
    if (url->ipv6) {
        h->numeric = uv_ip6_addr(h->name, h->port, (struct sockaddr_in6 *)&h->addrs[0]) == 0;
    } else {
        h->numeric = uv_ip4_addr(h->name, h->port, (struct sockaddr_in *)&h->addrs[0]) == 0;
    }
    h->n_addrs = h->numeric ? 1 : 0;
    if (url->ipv6 && !h->numeric) {
        br_free(h);
        return NULL;
    }
    link_push_front(&u->hosts, &h->link);
    u->n_hosts++;
    return h;
}

/* ---- request ------------------------------------------------------------------------------ */

static bool host_char(unsigned char ch, bool ipv6)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
        ch == '-' || ch == '.' || ch == '_') {
        return true;
    }
    return ipv6 && (ch == ':' || ch == '%');
}

/* Host and optional port of the authority a[0..alen) ("host", "host:port", "[v6]:port");
 * *port is set to the port digits, or NULL. */
static int split_authority(const char *a, size_t alen, struct h1_url *out, const char **port)
{
    const char *end = a + alen;
    *port = NULL;
    if (a[0] == '[') {
        const char *rb = memchr(a, ']', alen);
        if (!rb) {
            return BR_ERR_INVAL;
        }
        out->ipv6 = true;
        out->host = a + 1;
        out->host_len = (size_t)(rb - a - 1);
        if (rb + 1 < end) {
            if (rb[1] != ':') {
                return BR_ERR_INVAL;
            }
            *port = rb + 2;
        }
    } else {
        const char *colon = memchr(a, ':', alen);
        out->host = a;
        out->host_len = colon ? (size_t)(colon - a) : alen;
        *port = colon ? colon + 1 : NULL;
    }
    if (out->host_len == 0 || out->host_len > H1_MAX_HOST_LEN) {
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < out->host_len; i++) {
        if (!host_char((unsigned char)out->host[i], out->ipv6)) {
            return BR_ERR_INVAL;
        }
    }
    return BR_OK;
}

/* The decimal port in [port, end): 1..65535; 80 when there is none. */
static int parse_port(const char *port, const char *end, uint16_t *out)
{
    unsigned long p = 80;
    if (port && port < end) {
        p = 0;
        for (const char *q = port; q < end; q++) {
            if (*q < '0' || *q > '9' || p > 65535) {
                return BR_ERR_INVAL;
            }
            p = p * 10 + (unsigned long)(*q - '0');
        }
        if (p == 0 || p > 65535) {
            return BR_ERR_INVAL;
        }
    }
    *out = (uint16_t)p;
    return BR_OK;
}

/* Splits "http://host[:port][/path][?query][#fragment]"; BR_ERR_INVAL when malformed. */
static int parse_url(const char *s, struct h1_url *out)
{
    memset(out, 0, sizeof(*out));
    if (strncasecmp(s, "http://", 7) != 0) {
        return BR_ERR_INVAL;
    }
    const char *a = s + 7;
    size_t alen = strcspn(a, "/?#");
    const char *end = a + alen;
    const char *port = NULL;
    if (alen == 0 || memchr(a, '@', alen)) {
        return BR_ERR_INVAL;
    }
    if (split_authority(a, alen, out, &port) != BR_OK ||
        parse_port(port, end, &out->port) != BR_OK) {
        return BR_ERR_INVAL;
    }
    out->authority = br_slice_make(a, alen);
    size_t tlen = strcspn(end, "#");
    for (size_t i = 0; i < tlen; i++) {
        unsigned char ch = (unsigned char)end[i];
        if (ch <= 0x20 || ch >= 0x7f) {
            return BR_ERR_INVAL; /* request targets are visible ASCII */
        }
    }
    out->target = br_slice_make(end, tlen);
    return BR_OK;
}

static int append_dec(struct br_buf *b, size_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    return br_buf_append(b, tmp + i, sizeof(tmp) - i);
}

/* What a caller header line means to the serializer. */
enum hdr_kind {
    HDR_PLAIN,
    HDR_SKIP, /* ours to write (framing) or meaningless here, or "Name:" with no value */
    HDR_HOST,
    HDR_USER_AGENT,
};

static int classify_header(const char *line, enum hdr_kind *kind_out)
{
    size_t len = strlen(line);
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line || strcspn(line, "\r\n") != len) {
        return BR_ERR_INVAL;
    }
    size_t nlen = (size_t)(colon - line);
    for (size_t i = 0; i < nlen; i++) {
        if (!is_tchar((unsigned char)line[i])) {
            return BR_ERR_INVAL;
        }
    }
    struct br_slice value = br_slice_trim(br_slice_make(colon + 1, len - nlen - 1));
    if (value.len == 0 || name_is(line, nlen, "content-length") ||
        name_is(line, nlen, "transfer-encoding") || name_is(line, nlen, "expect")) {
        /* curl's convention: "Name:" removes a header. Framing is ours; no 100-continue. */
        *kind_out = HDR_SKIP;
    } else if (name_is(line, nlen, "host")) {
        *kind_out = HDR_HOST;
    } else if (name_is(line, nlen, "user-agent")) {
        *kind_out = HDR_USER_AGENT;
    } else {
        *kind_out = HDR_PLAIN;
    }
    return BR_OK;
}

static int check_method(const char *method, size_t mlen)
{
    if (mlen == 0 || mlen > 32) {
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < mlen; i++) {
        if (!is_tchar((unsigned char)method[i])) {
            return BR_ERR_INVAL;
        }
    }
    return BR_OK;
}

/* Checks every caller header line and notes whether Host and User-Agent are among them. */
static int check_headers(const struct br_upstream_request *req, bool *has_host, bool *has_ua)
{
    *has_host = false;
    *has_ua = false;
    for (size_t i = 0; i < req->n_headers; i++) {
        enum hdr_kind kind;
        if (!req->headers[i] || classify_header(req->headers[i], &kind) != BR_OK) {
            return BR_ERR_INVAL;
        }
        *has_host |= kind == HDR_HOST;
        *has_ua |= kind == HDR_USER_AGENT;
    }
    return BR_OK;
}

/* The caller's header lines (already checked), without the ones the serializer owns. */
static int append_caller_headers(struct br_buf *b, const struct br_upstream_request *req)
{
    int rc = BR_OK;
    for (size_t i = 0; i < req->n_headers && rc == BR_OK; i++) {
        enum hdr_kind kind = HDR_SKIP;
        (void)classify_header(req->headers[i], &kind);
        if (kind != HDR_SKIP) {
            rc = br_buf_append_cstr(b, req->headers[i]);
            rc = rc ? rc : br_buf_append(b, "\r\n", 2);
        }
    }
    return rc;
}

static int append_request_line(struct br_buf *b, const char *method, size_t mlen,
                               const struct h1_url *url)
{
    int rc = br_buf_append(b, method, mlen);
    rc = rc ? rc : br_buf_append(b, " ", 1);
    if (url->target.len == 0 || url->target.ptr[0] != '/') {
        rc = rc ? rc : br_buf_append(b, "/", 1);
    }
    rc = rc ? rc : br_buf_append(b, url->target.ptr, url->target.len);
    return rc ? rc : br_buf_append_cstr(b, " HTTP/1.1\r\n");
}

/*
 * The request head: request line, Host, User-Agent, Content-Length (unless a bodiless GET or
 * HEAD), then the caller's headers. No Accept-Encoding: bodies arrive as identity.
 */
static int serialize_head(struct br_buf *b, const struct br_upstream_request *req,
                          const struct h1_url *url, const char *method)
{
    size_t mlen = strlen(method);
    bool has_host;
    bool has_ua;
    if (check_method(method, mlen) != BR_OK || check_headers(req, &has_host, &has_ua) != BR_OK) {
        return BR_ERR_INVAL;
    }
    bool get_like = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int rc = append_request_line(b, method, mlen, url);
    if (!has_host) {
        rc = rc ? rc : br_buf_append_cstr(b, "Host: ");
        rc = rc ? rc : br_buf_append(b, url->authority.ptr, url->authority.len);
        rc = rc ? rc : br_buf_append(b, "\r\n", 2);
    }
    if (!has_ua) {
        rc = rc ? rc : br_buf_append_cstr(b, "User-Agent: " H1_USER_AGENT "\r\n");
    }
    if (req->body.len > 0 || !get_like) {
        rc = rc ? rc : br_buf_append_cstr(b, "Content-Length: ");
        rc = rc ? rc : append_dec(b, req->body.len);
        rc = rc ? rc : br_buf_append(b, "\r\n", 2);
    }
    rc = rc ? rc : append_caller_headers(b, req);
    rc = rc ? rc : br_buf_append(b, "\r\n", 2);
    if (rc == BR_ERR_LIMIT) {
        return BR_ERR_INVAL;
    }
    return rc;
}

/* ---- public (to upstream.c) --------------------------------------------------------------- */

int br__upstream_h1_create(uv_loop_t *loop, const struct br_upstream_opts *opts,
                           struct br__upstream_h1 **out)
{
    struct br__upstream_h1 *u = br_calloc(1, sizeof(*u));
    if (!u) {
        return BR_ERR_NOMEM;
    }
    u->loop = loop;
    u->max_response_bytes = BR__UPSTREAM_DEFAULT_MAX_RESPONSE;
    u->max_idle_per_host = H1_DEFAULT_IDLE_PER_HOST;
    if (opts && opts->max_response_bytes) {
        u->max_response_bytes = opts->max_response_bytes;
    }
    if (opts && opts->max_connections_per_host > 0) {
        u->max_idle_per_host = (size_t)opts->max_connections_per_host;
    }
    link_init(&u->active);
    link_init(&u->hosts);
    u->sweep = br_malloc(sizeof(*u->sweep));
    if (!u->sweep) {
        br_free(u);
        return BR_ERR_NOMEM;
    }
    uv_timer_init(loop, u->sweep);
    u->sweep->data = u;
    uv_unref((uv_handle_t *)u->sweep);
    *out = u;
    return BR_OK;
}

void br__upstream_h1_destroy(struct br__upstream_h1 *u)
{
    if (!u) {
        return;
    }
    u->destroying = true;
    while (!link_empty(&u->active)) {
        struct h1_call *c = H1_CONTAINER(u->active.next, struct h1_call, link);
        link_remove(&c->link);
        u->n_active--;
        if (c->wait_link.next != &c->wait_link) {
            link_remove(&c->wait_link);
        }
        drop_conn(c);
        c->host->refs--;
        call_destroy(c);
    }
    while (u->free_calls) {
        struct h1_call *c = u->free_calls;
        u->free_calls = c->next_free;
        call_destroy(c);
    }
    while (!link_empty(&u->hosts)) {
        host_free(u, H1_CONTAINER(u->hosts.next, struct h1_host, link));
    }
    uv_timer_stop(u->sweep);
    uv_close((uv_handle_t *)u->sweep, free_handle_cb);
    while (u->n_rbufs > 0) {
        br_free(u->rbufs[--u->n_rbufs]);
    }
    br_free(u);
}

int br__upstream_h1_call_start(struct br__upstream_h1 *u, const struct br_upstream_request *req,
                               const struct br_upstream_callbacks *cb, void *user,
                               br_upstream_call **out)
{
    if (!u || !req || !req->url || !cb || !cb->on_done || u->destroying ||
        (req->n_headers > 0 && !req->headers) || (req->body.len > 0 && !req->body.ptr)) {
        return BR_ERR_INVAL;
    }
    struct h1_url url;
    int rc = parse_url(req->url, &url);
    if (rc != BR_OK) {
        return rc;
    }
    const char *method = req->method ? req->method : "GET";
    struct h1_call *c = call_acquire(u);
    if (!c) {
        return BR_ERR_NOMEM;
    }
    rc = serialize_head(&c->req_head, req, &url, method);
    if (rc != BR_OK) {
        goto fail_call;
    }
    struct h1_host *h = host_get(u, &url);
    if (!h) {
        rc = url.ipv6 ? BR_ERR_INVAL : BR_ERR_NOMEM;
        goto fail_call;
    }
    c->host = h;
    h->refs++;
    c->cb = *cb;
    c->user = user;
    c->body = req->body;
    c->is_head = strcmp(method, "HEAD") == 0;
    c->connect_ms =
        req->connect_timeout_ms ? req->connect_timeout_ms : BR__UPSTREAM_DEFAULT_CONNECT_MS;
    c->first_byte_ms = req->first_byte_timeout_ms ? req->first_byte_timeout_ms
                                                  : BR__UPSTREAM_DEFAULT_FIRST_BYTE_MS;
    c->idle_ms = req->idle_timeout_ms ? req->idle_timeout_ms : BR__UPSTREAM_DEFAULT_IDLE_MS;
    c->max_body = u->max_response_bytes;
    c->stats.t_start_ns = br_clock_now_ns();
    c->state = CALL_RUNNING;
    link_push_back(&u->active, &c->link);
    u->n_active++;

    u->in_start++;
    struct h1_conn *k = conn_take(h);
    if (k) {
        k->call = c;
        c->conn = k;
        c->stats.reused_connection = true;
        c->stats.t_connected_ns = c->stats.t_start_ns;
        conn_ready(c);
    } else {
        c->phase = PHASE_CONNECT;
        uv_timer_start(&c->timer, deadline_cb, c->connect_ms, 0);
        call_connect(c);
    }
    u->in_start--;
    if (out) {
        *out = &c->base;
    }
    return BR_OK;

fail_call:
    call_recycle(u, c);
    return rc;
}

void br__upstream_h1_call_cancel(br_upstream_call *bc)
{
    struct h1_call *c = (struct h1_call *)bc;
    if (c->state != CALL_RUNNING) {
        return;
    }
    struct br__upstream_h1 *u = c->u;
    uv_timer_stop(&c->timer);
    link_remove(&c->link);
    u->n_active--;
    if (c->wait_link.next != &c->wait_link) {
        link_remove(&c->wait_link);
    }
    drop_conn(c);
    c->host->refs--;
    call_recycle(u, c);
}

size_t br__upstream_h1_active(const struct br__upstream_h1 *u)
{
    return u ? u->n_active : 0;
}
