/* SPDX-License-Identifier: MIT */
/*
 * Upstream HTTP client, libcurl backend (https://, and every URL when the client was created
 * with BR_UPSTREAM_BACKEND_CURL): libcurl's multi_socket API on a libuv loop. curl tells us which
 * sockets to watch (socket callback -> one uv_poll per socket) and when to wake it up (timer
 * callback -> one uv_timer per client); we hand readiness back with curl_multi_socket_action
 * and collect finished transfers with curl_multi_info_read. Connections live in the multi
 * handle's cache, so keep-alive and HTTP/2 multiplexing are shared by all calls of a client.
 *
 * Calls are pooled: a finished call keeps its easy handle (curl_easy_reset keeps the handle's
 * caches) and its deadline timer, and goes back to a free list. The deadline timer enforces
 * the first-byte and idle timeouts, which curl does not have; it is re-armed lazily (bytes only
 * record the time they arrived, the timer re-computes the deadline when it fires).
 *
 * curl forbids adding or removing easy handles from inside its callbacks, and user callbacks
 * (on_head, on_data) run inside curl's header/write callbacks. A call started or canceled
 * while we are inside curl_multi_socket_action is therefore queued on u->deferred and handled
 * right after socket_action returns, before finished transfers are reported.
 *
 * Memory of closed uv handles is released from their close callbacks, so the loop must run
 * once more after br_upstream_destroy (as with any libuv handle).
 */
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "upstream/upstream_int.h"

#define DEFAULT_CONNECT_MS    BR__UPSTREAM_DEFAULT_CONNECT_MS
#define DEFAULT_FIRST_BYTE_MS BR__UPSTREAM_DEFAULT_FIRST_BYTE_MS
#define DEFAULT_IDLE_MS       BR__UPSTREAM_DEFAULT_IDLE_MS
#define DEFAULT_MAX_RESPONSE  BR__UPSTREAM_DEFAULT_MAX_RESPONSE
#define MAX_HEAD_BYTES        BR__UPSTREAM_MAX_HEAD_BYTES /* all header lines of one response */
#define MAX_HEADERS           BR__UPSTREAM_MAX_HEADERS    /* header fields handed to on_head */
#define FREE_CALLS_MAX        64                          /* pooled idle calls per client */
#define MAX_CACHED_CONNS      256L /* idle + busy connections kept per client */

enum call_state {
    CALL_IDLE,        /* on the free list */
    CALL_PENDING_ADD, /* started inside a curl callback; added after socket_action */
    CALL_RUNNING,     /* in the multi handle */
    CALL_CANCELED,    /* canceled; waits on the deferred list for removal */
    CALL_DONE,        /* on_done is running */
};

enum call_phase {
    PHASE_CONNECT,    /* waiting for a connection (curl enforces the connect timeout) */
    PHASE_FIRST_BYTE, /* request sent, waiting for the first response byte */
    PHASE_BODY,       /* receiving: the idle timeout applies */
};

struct curl_call {
    struct br_upstream_call base; /* kind = CURL; first member */
    uv_timer_t timer;             /* first-byte / idle deadline; data = this call */
    struct br__upstream_curl *u;
    CURL *easy;
    struct curl_slist *headers; /* request headers, owned */
    struct br_upstream_callbacks cb;
    void *user;
    struct curl_call *prev, *next; /* u->active, or u->free_calls (next only) */
    struct curl_call *next_deferred;
    enum call_state state;
    enum call_phase phase;
    bool in_multi;
    bool on_deferred;
    bool head_done;
    bool got_byte;
    int head_status;              /* status of the response whose header lines we collect */
    enum br_upstream_error abort; /* why one of our callbacks stopped the transfer */
    uint32_t first_byte_ms;
    uint32_t idle_ms;
    uint64_t last_byte_ms; /* uv_now() when the last response byte arrived */
    size_t body_bytes;
    size_t max_body;
    struct br_buf head; /* header lines of the current response */
    struct br_upstream_stats stats;
    char errbuf[CURL_ERROR_SIZE];
    char errtext[CURL_ERROR_SIZE + 96];
};

struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct br__upstream_curl *u;
    struct sock_ctx *prev, *next;
};

struct br__upstream_curl {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t *timer; /* curl's timeout; heap-allocated so it can outlive the client */
    size_t max_response_bytes;
    bool insecure_skip_verify;
    char *ca_file;
    struct curl_call *active; /* started, not finished, not canceled */
    size_t n_active;
    struct curl_call *free_calls;
    size_t n_free;
    struct curl_call *deferred; /* to add or to remove once out of curl */
    struct sock_ctx *socks;
    int in_curl; /* > 0 while curl_multi_socket_action is on the stack */
    bool destroying;
};

/* ---- lists ---------------------------------------------------------------------------- */

static void active_link(struct br__upstream_curl *u, struct curl_call *c)
{
    c->prev = NULL;
    c->next = u->active;
    if (u->active) {
        u->active->prev = c;
    }
    u->active = c;
    u->n_active++;
}

static void active_unlink(struct br__upstream_curl *u, struct curl_call *c)
{
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        u->active = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    c->prev = NULL;
    c->next = NULL;
    u->n_active--;
}

static void defer(struct br__upstream_curl *u, struct curl_call *c)
{
    if (c->on_deferred) {
        return;
    }
    c->on_deferred = true;
    c->next_deferred = u->deferred;
    u->deferred = c;
}

/* ---- call pool ------------------------------------------------------------------------ */

static void free_call_cb(uv_handle_t *h)
{
    br_free(h->data);
}

/* Frees a call that is out of the multi handle and off every list. */
static void call_destroy(struct curl_call *c)
{
    uv_timer_stop(&c->timer);
    curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    br_buf_cleanup(&c->head);
    uv_close((uv_handle_t *)&c->timer, free_call_cb);
}

/* Returns a call that is out of the multi handle and off every list to the pool. */
static void call_recycle(struct br__upstream_curl *u, struct curl_call *c)
{
    uv_timer_stop(&c->timer);
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    c->state = CALL_IDLE;
    if (u->n_free >= FREE_CALLS_MAX || u->destroying) {
        call_destroy(c);
        return;
    }
    if (c->head.cap > 4096) {
        br_buf_cleanup(&c->head); /* don't pin a large header buffer in the pool */
    }
    br_buf_reset(&c->head);
    c->next = u->free_calls;
    u->free_calls = c;
    u->n_free++;
}

static struct curl_call *call_acquire(struct br__upstream_curl *u)
{
    struct curl_call *c = u->free_calls;
    if (c) {
        u->free_calls = c->next;
        u->n_free--;
        curl_easy_reset(c->easy);
    } else {
        c = br_calloc(1, sizeof(*c));
        if (!c) {
            return NULL;
        }
        c->easy = curl_easy_init();
        if (!c->easy) {
            br_free(c);
            return NULL;
        }
        c->base.kind = BR__UPSTREAM_KIND_CURL;
        uv_timer_init(u->loop, &c->timer);
        c->timer.data = c;
        br_buf_init(&c->head, MAX_HEAD_BYTES);
    }
    c->u = u;
    c->prev = NULL;
    c->next = NULL;
    c->next_deferred = NULL;
    c->headers = NULL;
    c->in_multi = false;
    c->on_deferred = false;
    c->head_done = false;
    c->got_byte = false;
    c->head_status = 0;
    c->abort = BR_UPSTREAM_ERROR_NONE;
    c->phase = PHASE_CONNECT;
    c->body_bytes = 0;
    c->last_byte_ms = 0;
    memset(&c->stats, 0, sizeof(c->stats));
    c->errbuf[0] = '\0';
    c->errtext[0] = '\0';
    return c;
}

/* ---- deadlines ------------------------------------------------------------------------ */

static void finish(struct curl_call *c, CURLcode res, enum br_upstream_error forced);

static void deadline_cb(uv_timer_t *t)
{
    struct curl_call *c = t->data;
    if (c->state != CALL_RUNNING) {
        return; /* pending adds only exist inside socket_action, when timers cannot fire */
    }
    if (c->phase == PHASE_BODY) {
        uint64_t quiet = uv_now(c->u->loop) - c->last_byte_ms;
        if (quiet < c->idle_ms) {
            uv_timer_start(t, deadline_cb, c->idle_ms - quiet, 0);
            return;
        }
        finish(c, CURLE_OK, BR_UPSTREAM_ERROR_TIMEOUT_IDLE);
    } else if (c->phase == PHASE_FIRST_BYTE) {
        finish(c, CURLE_OK, BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE);
    } else {
        finish(c, CURLE_OK, BR_UPSTREAM_ERROR_TIMEOUT_CONNECT);
    }
}

/* A response byte (header or body) arrived. */
static void note_byte(struct curl_call *c)
{
    c->last_byte_ms = uv_now(c->u->loop);
    if (c->got_byte) {
        return;
    }
    c->got_byte = true;
    c->stats.t_first_byte_ns = br_clock_now_ns();
    c->phase = PHASE_BODY;
    uv_timer_start(&c->timer, deadline_cb, c->idle_ms, 0);
}

/* curl: the connection is ready (new or reused) and the request is about to be sent. The
 * non-const parameters are curl_prereqcallback's. */
static int prereq_cb(void *clientp, char *primary_ip, /* NOLINT(readability-non-const-parameter) */
                     char *local_ip,                  /* NOLINT(readability-non-const-parameter) */
                     int primary_port, int local_port)
{
    struct curl_call *c = clientp;
    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    if (c->phase == PHASE_CONNECT) {
        c->stats.t_connected_ns = br_clock_now_ns();
        c->phase = PHASE_FIRST_BYTE;
        uv_timer_start(&c->timer, deadline_cb, c->first_byte_ms, 0);
    }
    return CURL_PREREQFUNC_OK;
}

/* ---- response callbacks --------------------------------------------------------------- */

static int parse_status(const char *line, size_t len)
{
    /* "HTTP/1.1 200 OK" or "HTTP/2 200" */
    const char *sp = memchr(line, ' ', len);
    if (!sp || (size_t)(line + len - sp) < 4) {
        return 0;
    }
    int status = 0;
    for (int i = 1; i <= 3; i++) {
        if (sp[i] < '0' || sp[i] > '9') {
            return 0;
        }
        status = status * 10 + (sp[i] - '0');
    }
    return status;
}

static void deliver_head(struct curl_call *c)
{
    struct br_upstream_header fields[MAX_HEADERS];
    size_t n = 0;
    const char *p = c->head.ptr;
    const char *end = p ? p + c->head.len : NULL;
    while (p && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        size_t len = (size_t)((eol ? eol : end) - p);
        if (len > 0 && p[len - 1] == '\r') {
            len--;
        }
        const char *colon = memchr(p, ':', len);
        if (colon && colon != p && p[0] != ' ' && p[0] != '\t' && n < MAX_HEADERS) {
            fields[n].name = br_slice_make(p, (size_t)(colon - p));
            fields[n].value =
                br_slice_trim(br_slice_make(colon + 1, (size_t)(p + len - colon - 1)));
            n++;
        }
        p = next;
    }
    long code = c->head_status;
    if (code == 0) {
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
    }
    struct br_upstream_head head = {.status = (int)code, .headers = fields, .n_headers = n};
    c->head_done = true;
    if (c->cb.on_head) {
        c->cb.on_head(c->user, &head);
    }
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    struct curl_call *c = userdata;
    size_t len = size * nitems;
    if (c->state != CALL_RUNNING) {
        return 0;
    }
    note_byte(c);
    if (c->head_done) {
        return len; /* trailers */
    }
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        br_buf_reset(&c->head);
        c->head_status = parse_status(buf, len);
        return len;
    }
    if ((len == 2 && buf[0] == '\r' && buf[1] == '\n') || (len == 1 && buf[0] == '\n')) {
        if (c->head_status >= 100 && c->head_status < 200) {
            br_buf_reset(&c->head); /* 100 Continue, 103 Early Hints: the real head follows */
            c->head_status = 0;
            return len;
        }
        deliver_head(c);
        return c->state == CALL_RUNNING ? len : 0;
    }
    int rc = br_buf_append(&c->head, buf, len);
    if (rc != BR_OK) {
        c->abort = rc == BR_ERR_LIMIT ? BR_UPSTREAM_ERROR_TOO_LARGE : BR_UPSTREAM_ERROR_OTHER;
        return 0;
    }
    return len;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct curl_call *c = userdata;
    size_t len = size * nmemb;
    if (c->state != CALL_RUNNING) {
        return 0;
    }
    note_byte(c);
    if (!c->head_done) {
        deliver_head(c);
        if (c->state != CALL_RUNNING) {
            return 0;
        }
    }
    if (len > c->max_body - c->body_bytes) {
        c->abort = BR_UPSTREAM_ERROR_TOO_LARGE;
        return 0;
    }
    c->body_bytes += len;
    if (len > 0 && c->cb.on_data) {
        c->cb.on_data(c->user, ptr, len);
    }
    return c->state == CALL_RUNNING ? len : 0;
}

/* ---- completion ----------------------------------------------------------------------- */

static enum br_upstream_error map_curl(const struct curl_call *c, CURLcode res)
{
    switch (res) {
    case CURLE_OK:
        return BR_UPSTREAM_ERROR_NONE;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return BR_UPSTREAM_ERROR_DNS;
    case CURLE_COULDNT_CONNECT:
        return BR_UPSTREAM_ERROR_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        /* Only the connect timeout is set on the easy handle. */
        return c->phase == PHASE_CONNECT ? BR_UPSTREAM_ERROR_TIMEOUT_CONNECT
               : c->got_byte             ? BR_UPSTREAM_ERROR_TIMEOUT_IDLE
                                         : BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return BR_UPSTREAM_ERROR_TLS;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
        return BR_UPSTREAM_ERROR_CLOSED;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_TOO_MANY_REDIRECTS:
        return BR_UPSTREAM_ERROR_PROTOCOL;
    case CURLE_FILESIZE_EXCEEDED:
        return BR_UPSTREAM_ERROR_TOO_LARGE;
    case CURLE_WRITE_ERROR:
    case CURLE_ABORTED_BY_CALLBACK:
        return c->abort != BR_UPSTREAM_ERROR_NONE ? c->abort : BR_UPSTREAM_ERROR_OTHER;
    default:
        return BR_UPSTREAM_ERROR_OTHER;
    }
}

/*
 * Ends a running (or pending) call: takes it out of curl, fills the stats, runs on_done and
 * recycles it. `forced` overrides the curl result (our own timeouts, failed deferred adds).
 * Never runs inside a curl callback.
 */
static void finish(struct curl_call *c, CURLcode res, enum br_upstream_error forced)
{
    struct br__upstream_curl *u = c->u;
    enum br_upstream_error kind = forced != BR_UPSTREAM_ERROR_NONE ? forced : map_curl(c, res);
    if (kind == BR_UPSTREAM_ERROR_NONE && !c->head_done) {
        kind = BR_UPSTREAM_ERROR_PROTOCOL; /* a transfer without a response head */
    }
    long version = 0;
    long n_connects = 0;
    curl_easy_getinfo(c->easy, CURLINFO_HTTP_VERSION, &version);
    curl_easy_getinfo(c->easy, CURLINFO_NUM_CONNECTS, &n_connects);
    if (c->in_multi) {
        curl_multi_remove_handle(u->multi, c->easy);
        c->in_multi = false;
    }
    uv_timer_stop(&c->timer);
    active_unlink(u, c);
    c->state = CALL_DONE;

    struct br_upstream_stats *st = &c->stats;
    st->error = kind;
    st->t_done_ns = br_clock_now_ns();
    st->http_version = version == CURL_HTTP_VERSION_1_0   ? 10
                       : version == CURL_HTTP_VERSION_1_1 ? 11
                       : version == CURL_HTTP_VERSION_2_0 ? 20
                       : version == CURL_HTTP_VERSION_3   ? 30
                                                          : 0;
    st->reused_connection = n_connects == 0 && c->phase != PHASE_CONNECT;
    if (st->reused_connection || st->t_connected_ns == 0) {
        st->t_connected_ns = st->reused_connection ? st->t_start_ns : 0;
    }
    if (kind != BR_UPSTREAM_ERROR_NONE) {
        /* curl's texts name hosts and ports at most, never our request headers. */
        if (forced == BR_UPSTREAM_ERROR_NONE && res != CURLE_OK) {
            (void)snprintf(c->errtext, sizeof(c->errtext), "%s: %s%s%s",
                           br__upstream_describe(kind), curl_easy_strerror(res),
                           c->errbuf[0] ? ": " : "", c->errbuf);
        } else {
            (void)snprintf(c->errtext, sizeof(c->errtext), "%s", br__upstream_describe(kind));
        }
        st->error_text = c->errtext;
    } else {
        st->error_text = NULL;
    }
    c->cb.on_done(c->user, st);
    call_recycle(u, c);
}

/* Adds queued calls and removes queued cancellations; runs outside curl callbacks. */
static void run_deferred(struct br__upstream_curl *u)
{
    while (u->deferred) {
        struct curl_call *c = u->deferred;
        u->deferred = c->next_deferred;
        c->next_deferred = NULL;
        c->on_deferred = false;
        if (c->state == CALL_CANCELED) {
            if (c->in_multi) {
                curl_multi_remove_handle(u->multi, c->easy);
                c->in_multi = false;
            }
            call_recycle(u, c);
        } else if (c->state == CALL_PENDING_ADD) {
            if (curl_multi_add_handle(u->multi, c->easy) == CURLM_OK) {
                c->in_multi = true;
                c->state = CALL_RUNNING;
            } else {
                c->state = CALL_RUNNING; /* so that finish() reports it */
                finish(c, CURLE_OUT_OF_MEMORY, BR_UPSTREAM_ERROR_OTHER);
            }
        }
    }
}

static void read_done(struct br__upstream_curl *u)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(u->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        CURL *easy = msg->easy_handle;
        CURLcode res = msg->data.result;
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        struct curl_call *c = (struct curl_call *)(void *)priv;
        if (c && c->state == CALL_RUNNING) {
            finish(c, res, BR_UPSTREAM_ERROR_NONE);
        }
    }
}

static void drive(struct br__upstream_curl *u, curl_socket_t s, int flags)
{
    int running = 0;
    u->in_curl++;
    curl_multi_socket_action(u->multi, s, flags, &running);
    u->in_curl--;
    if (u->in_curl == 0) {
        run_deferred(u);
        read_done(u);
    }
}

/* ---- curl <-> libuv glue -------------------------------------------------------------- */

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct sock_ctx *s = h->data;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        flags |= (events & UV_READABLE) ? CURL_CSELECT_IN : 0;
        flags |= (events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0;
    }
    drive(s->u, s->fd, flags);
}

static void timeout_cb(uv_timer_t *t)
{
    drive(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static void free_handle_cb(uv_handle_t *h)
{
    br_free(h);
}

static void sock_close(struct br__upstream_curl *u, struct sock_ctx *s)
{
    if (s->prev) {
        s->prev->next = s->next;
    } else {
        u->socks = s->next;
    }
    if (s->next) {
        s->next->prev = s->prev;
    }
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, free_handle_cb); /* poll is the first member */
}

static int socket_fn(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct br__upstream_curl *u = userp;
    struct sock_ctx *s = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(u->multi, fd, NULL);
            sock_close(u, s);
        }
        return 0;
    }
    if (!s) {
        s = br_calloc(1, sizeof(*s));
        if (!s) {
            return -1;
        }
        if (uv_poll_init_socket(u->loop, &s->poll, fd) != 0) {
            br_free(s);
            return -1;
        }
        s->fd = fd;
        s->u = u;
        s->poll.data = s;
        s->next = u->socks;
        if (u->socks) {
            u->socks->prev = s;
        }
        u->socks = s;
        curl_multi_assign(u->multi, fd, s);
    }
    int events = 0;
    events |= (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ? UV_READABLE : 0;
    events |= (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ? UV_WRITABLE : 0;
    uv_poll_start(&s->poll, events, poll_cb);
    return 0;
}

static int timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    struct br__upstream_curl *u = userp;
    (void)multi;
    if (u->destroying) {
        return 0;
    }
    if (timeout_ms < 0) {
        uv_timer_stop(u->timer);
    } else {
        /* 0 means "as soon as possible": the next loop iteration, never re-entrantly. */
        uv_timer_start(u->timer, timeout_cb, (uint64_t)timeout_ms, 0);
    }
    return 0;
}

/* ---- public API ----------------------------------------------------------------------- */

int br__upstream_curl_create(uv_loop_t *loop, const struct br_upstream_opts *opts,
                             struct br__upstream_curl **out)
{
    int rc = BR_ERR_NOMEM;
    struct br__upstream_curl *u = br_calloc(1, sizeof(*u));
    if (!u) {
        return BR_ERR_NOMEM;
    }
    u->loop = loop;
    u->max_response_bytes = DEFAULT_MAX_RESPONSE;
    if (opts) {
        if (opts->max_response_bytes) {
            u->max_response_bytes = opts->max_response_bytes;
        }
        u->insecure_skip_verify = opts->insecure_skip_verify;
        if (opts->ca_file) {
            u->ca_file = br_strdup(opts->ca_file);
            if (!u->ca_file) {
                goto fail_client;
            }
        }
    }
    u->timer = br_malloc(sizeof(*u->timer));
    if (!u->timer) {
        goto fail_client;
    }
    uv_timer_init(loop, u->timer);
    u->timer->data = u;
    u->multi = curl_multi_init();
    if (!u->multi) {
        goto fail_timer;
    }
    int bad = 0;
    bad |= curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, socket_fn) != CURLM_OK;
    bad |= curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u) != CURLM_OK;
    bad |= curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, timer_fn) != CURLM_OK;
    bad |= curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u) != CURLM_OK;
    bad |= curl_multi_setopt(u->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX) != CURLM_OK;
    bad |= curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, MAX_CACHED_CONNS) != CURLM_OK;
    if (opts && opts->max_connections_per_host > 0) {
        bad |= curl_multi_setopt(u->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                                 opts->max_connections_per_host) != CURLM_OK;
    }
    if (bad) {
        rc = BR_ERR_INVAL;
        goto fail_multi;
    }
    *out = u;
    return BR_OK;

fail_multi:
    curl_multi_cleanup(u->multi);
fail_timer:
    uv_close((uv_handle_t *)u->timer, free_handle_cb);
fail_client:
    br_free(u->ca_file);
    br_free(u);
    return rc;
}

void br__upstream_curl_destroy(struct br__upstream_curl *u)
{
    if (!u) {
        return;
    }
    u->destroying = true;
    /* Canceled calls still waiting for removal are on the deferred list only. */
    while (u->deferred) {
        struct curl_call *c = u->deferred;
        u->deferred = c->next_deferred;
        c->on_deferred = false;
        if (c->state == CALL_CANCELED) {
            if (c->in_multi) {
                curl_multi_remove_handle(u->multi, c->easy);
            }
            call_destroy(c);
        }
    }
    while (u->active) {
        struct curl_call *c = u->active;
        active_unlink(u, c);
        if (c->in_multi) {
            curl_multi_remove_handle(u->multi, c->easy);
        }
        call_destroy(c);
    }
    while (u->free_calls) {
        struct curl_call *c = u->free_calls;
        u->free_calls = c->next;
        call_destroy(c);
    }
    curl_multi_cleanup(u->multi);
    while (u->socks) {
        sock_close(u, u->socks);
    }
    uv_timer_stop(u->timer);
    uv_close((uv_handle_t *)u->timer, free_handle_cb);
    br_free(u->ca_file);
    br_free(u);
}

static int setup_easy(struct br__upstream_curl *u, struct curl_call *c,
                      const struct br_upstream_request *req)
{
    CURL *e = c->easy;
    uint32_t connect_ms = req->connect_timeout_ms ? req->connect_timeout_ms : DEFAULT_CONNECT_MS;
    const char *method = req->method ? req->method : "GET";
    int bad = 0;

    /* Disable "Expect: 100-continue": it costs a round trip on large prompts. */
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    for (size_t i = 0; h && i < req->n_headers; i++) {
        struct curl_slist *n = curl_slist_append(h, req->headers[i]);
        if (!n) {
            curl_slist_free_all(h);
            h = NULL;
        }
        h = n;
    }
    if (!h) {
        return BR_ERR_NOMEM;
    }
    c->headers = h;

    bad |= curl_easy_setopt(e, CURLOPT_URL, req->url) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, h) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)c) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, "brigade/0.1") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)u->max_response_bytes) !=
           CURLE_OK;
    bad |=
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, u->insecure_skip_verify ? 0L : 1L) != CURLE_OK;
    bad |=
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, u->insecure_skip_verify ? 0L : 2L) != CURLE_OK;
    if (u->ca_file) {
        bad |= curl_easy_setopt(e, CURLOPT_CAINFO, u->ca_file) != CURLE_OK;
    }
    bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, c) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, c) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, prereq_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PREREQDATA, c) != CURLE_OK;

    if (strcmp(method, "GET") == 0 && req->body.len == 0) {
        bad |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK;
    } else {
        /* POSTFIELDS borrows the body, which the caller keeps until on_done. */
        bad |=
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body.len) != CURLE_OK;
        bad |=
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body.len ? req->body.ptr : "") != CURLE_OK;
        if (strcmp(method, "POST") != 0) {
            bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK;
        }
    }
    return bad ? BR_ERR_INVAL : BR_OK;
}

int br__upstream_curl_call_start(struct br__upstream_curl *u, const struct br_upstream_request *req,
                                 const struct br_upstream_callbacks *cb, void *user,
                                 br_upstream_call **out)
{
    if (!u || !req || !req->url || !cb || !cb->on_done || u->destroying) {
        return BR_ERR_INVAL;
    }
    struct curl_call *c = call_acquire(u);
    if (!c) {
        return BR_ERR_NOMEM;
    }
    int rc = setup_easy(u, c, req);
    if (rc != BR_OK) {
        goto fail_call;
    }
    c->cb = *cb;
    c->user = user;
    c->first_byte_ms =
        req->first_byte_timeout_ms ? req->first_byte_timeout_ms : DEFAULT_FIRST_BYTE_MS;
    c->idle_ms = req->idle_timeout_ms ? req->idle_timeout_ms : DEFAULT_IDLE_MS;
    c->max_body = u->max_response_bytes;
    c->stats.t_start_ns = br_clock_now_ns();
    if (u->in_curl) {
        /* Inside a curl callback: curl refuses re-entrant adds, so add once it returns. */
        c->state = CALL_PENDING_ADD;
        defer(u, c);
    } else {
        if (curl_multi_add_handle(u->multi, c->easy) != CURLM_OK) {
            rc = BR_ERR_NOMEM;
            goto fail_call;
        }
        c->in_multi = true;
        c->state = CALL_RUNNING;
    }
    active_link(u, c);
    /* Until the request is sent: connect time plus the first-byte allowance, which also
     * bounds a wait for a free connection when the per-host cap is reached. */
    uint32_t connect_ms = req->connect_timeout_ms ? req->connect_timeout_ms : DEFAULT_CONNECT_MS;
    uv_timer_start(&c->timer, deadline_cb, (uint64_t)connect_ms + c->first_byte_ms, 0);
    if (out) {
        *out = &c->base;
    }
    return BR_OK;

fail_call:
    call_recycle(u, c);
    return rc;
}

void br__upstream_curl_call_cancel(br_upstream_call *bc)
{
    struct curl_call *c = (struct curl_call *)bc;
    if (!c || (c->state != CALL_RUNNING && c->state != CALL_PENDING_ADD)) {
        return;
    }
    struct br__upstream_curl *u = c->u;
    uv_timer_stop(&c->timer);
    active_unlink(u, c);
    c->state = CALL_CANCELED;
    if (u->in_curl || c->on_deferred) {
        defer(u, c);
        return;
    }
    if (c->in_multi) {
        curl_multi_remove_handle(u->multi, c->easy);
        c->in_multi = false;
    }
    call_recycle(u, c);
}

size_t br__upstream_curl_active(const struct br__upstream_curl *u)
{
    return u ? u->n_active : 0;
}
