/* SPDX-License-Identifier: MIT */
/* Test harness for the http server: a recording handler and a raw-socket client. */
#include "unit/http/http_test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/arena.h"
#include "core/err.h"

struct ht_state ht;

static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ht_record records[HT_MAX_RECORDS];
static int n_records;

void ht_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

bool ht_wait_for(bool (*cond)(void), int timeout_ms)
{
    long end = now_ms() + timeout_ms;
    while (!cond()) {
        if (now_ms() > end) {
            return false;
        }
        ht_sleep_ms(5);
    }
    return true;
}

/* ---- handler ---------------------------------------------------------------------------- */

enum op_kind { OP_SLOW, OP_STREAM, OP_HOLD, OP_FLOOD };

struct op {
    uv_timer_t timer;
    br_http_request *req;
    enum op_kind kind;
    int remaining;
    int sent;
    bool finished;
    bool failed;
};

static char flood_chunk[256 * 1024];

static void op_closed(uv_handle_t *h)
{
    free(h->data);
}

static void op_finish(struct op *op, int rc)
{
    op->finished = true;
    op->req = NULL;
    atomic_fetch_add(&ht.n_finished_async, 1);
    if (rc == BR_ERR_CLOSED) {
        atomic_fetch_add(&ht.n_closed_results, 1);
    }
    uv_timer_stop(&op->timer);
    uv_close((uv_handle_t *)&op->timer, op_closed);
}

static void op_tick(uv_timer_t *t)
{
    struct op *op = t->data;
    if (op->finished) {
        return;
    }
    br_http_request *req = op->req;
    if (op->kind == OP_SLOW) {
        op_finish(op, br_http_respond(req, 200, NULL, 0, BR_SLICE_LIT("slow")));
        return;
    }
    if (op->kind == OP_FLOOD) {
        if (op->failed) {
            return;
        }
        size_t pending = br_http_stream_pending(req);
        if (pending > atomic_load(&ht.flood_max_pending)) {
            atomic_store(&ht.flood_max_pending, pending);
        }
        int rc = br_http_stream_write(req, flood_chunk, sizeof(flood_chunk));
        if (rc != BR_OK) {
            op->failed = true;
            atomic_store(&ht.flood_write_rc, rc);
        }
        return;
    }
    if (op->kind == OP_STREAM) {
        if (op->remaining > 0) {
            char line[64];
            int n = snprintf(line, sizeof(line), "data: %d\n\n", op->sent++);
            op->remaining--;
            if (br_http_stream_write(req, line, (size_t)n) == BR_OK) {
                atomic_fetch_add(&ht.n_stream_writes_ok, 1);
            }
            return;
        }
        struct br_http_header tr[] = {{BR_SLICE_LIT("x-done"), BR_SLICE_LIT("yes")}};
        op_finish(op, br_http_stream_end(req, tr, 1));
    }
}

static int worker_init(void *user, uv_loop_t *loop, unsigned worker, void **wctx_out)
{
    (void)user;
    (void)worker;
    atomic_fetch_add(&ht.n_worker_init, 1);
    *wctx_out = loop;
    return 0;
}

static void worker_cleanup(void *wctx)
{
    (void)wctx;
    atomic_fetch_add(&ht.n_worker_cleanup, 1);
}

static void record(const br_http_request *req)
{
    pthread_mutex_lock(&rec_mu);
    if (n_records < HT_MAX_RECORDS) {
        struct ht_record *r = &records[n_records++];
        memset(r, 0, sizeof(*r));
        snprintf(r->method, sizeof(r->method), "%.*s", (int)req->method_name.len,
                 req->method_name.ptr);
        snprintf(r->target, sizeof(r->target), "%.*s", (int)req->target.len, req->target.ptr);
        snprintf(r->id, sizeof(r->id), "%s", req->id);
        r->http_minor = req->http_minor;
        r->n_headers = req->n_headers;
        r->body_len = req->body.len;
        size_t k = req->body.len < sizeof(r->body) - 1 ? req->body.len : sizeof(r->body) - 1;
        memcpy(r->body, req->body.ptr, k);
        r->body[k] = '\0';
    }
    pthread_mutex_unlock(&rec_mu);
    atomic_fetch_add(&ht.n_requests, 1);
}

static int query_int(const br_http_request *req, int def)
{
    if (req->query.len == 0) {
        return def;
    }
    char tmp[32];
    snprintf(tmp, sizeof(tmp), "%.*s", (int)req->query.len, req->query.ptr);
    return atoi(tmp);
}

static void start_op(void *wctx, br_http_request *req, enum op_kind kind, int ms, int n)
{
    struct op *op = calloc(1, sizeof(*op));
    op->req = req;
    op->kind = kind;
    op->remaining = n;
    uv_timer_init((uv_loop_t *)wctx, &op->timer);
    op->timer.data = op;
    req->user = op;
    if (kind == OP_SLOW) {
        uv_timer_start(&op->timer, op_tick, (uint64_t)ms, 0);
    } else if (kind == OP_STREAM || kind == OP_FLOOD) {
        uv_timer_start(&op->timer, op_tick, (uint64_t)ms, (uint64_t)ms);
    }
}

static void on_request(void *wctx, br_http_request *req)
{
    record(req);
    struct br_slice p = req->path;
    if (br_slice_eq_cstr(p, "/echo")) {
        struct br_http_header h[] = {{BR_SLICE_LIT("Content-Type"), BR_SLICE_LIT("text/plain")}};
        br_http_respond(req, 200, h, 1, req->body);
    } else if (br_slice_eq_cstr(p, "/id")) {
        br_http_respond(req, 200, NULL, 0, br_slice_from_cstr(req->id));
    } else if (br_slice_eq_cstr(p, "/hdr")) {
        char name[128];
        snprintf(name, sizeof(name), "%.*s", (int)req->query.len, req->query.ptr);
        const struct br_slice *v = br_http_request_header(req, name);
        if (v) {
            br_http_respond(req, 200, NULL, 0, *v);
        } else {
            br_http_respond(req, 404, NULL, 0, BR_SLICE_LIT("absent"));
        }
    } else if (br_slice_eq_cstr(p, "/slow")) {
        start_op(wctx, req, OP_SLOW, query_int(req, 100), 0);
    } else if (br_slice_eq_cstr(p, "/hold")) {
        start_op(wctx, req, OP_HOLD, 0, 0);
    } else if (br_slice_eq_cstr(p, "/stream")) {
        int n = 3;
        int ms = 20;
        if (req->query.len) {
            char tmp[32];
            snprintf(tmp, sizeof(tmp), "%.*s", (int)req->query.len, req->query.ptr);
            sscanf(tmp, "%d,%d", &n, &ms);
        }
        struct br_http_header h[] = {
            {BR_SLICE_LIT("Content-Type"), BR_SLICE_LIT("text/event-stream")},
            {BR_SLICE_LIT("Trailer"), BR_SLICE_LIT("x-done")},
        };
        if (br_http_stream_begin(req, 200, h, 2) != BR_OK) {
            br_http_stream_end(req, NULL, 0);
            return;
        }
        start_op(wctx, req, OP_STREAM, ms, n);
    } else if (br_slice_eq_cstr(p, "/big")) {
        size_t n = (size_t)query_int(req, 1) * 1024;
        char *b = br_arena_alloc(req->arena, n);
        memset(b, 'b', n);
        br_http_respond(req, 200, NULL, 0, br_slice_make(b, n));
    } else if (br_slice_eq_cstr(p, "/flood")) {
        if (br_http_stream_begin(req, 200, NULL, 0) != BR_OK) {
            br_http_stream_end(req, NULL, 0);
            return;
        }
        start_op(wctx, req, OP_FLOOD, 1, 0);
    } else if (br_slice_eq_cstr(p, "/badheader")) {
        struct br_http_header h[] = {{BR_SLICE_LIT("X-Bad"), BR_SLICE_LIT("a\r\nInjected: yes")}};
        br_http_respond(req, 200, h, 1, BR_SLICE_LIT("never"));
    } else if (br_slice_eq_cstr(p, "/error")) {
        br_http_respond_error(req, 429, NULL, "rate_limited", "model", "slow \"down\"\n");
    } else if (br_slice_eq_cstr(p, "/head")) {
        br_http_respond(req, 200, NULL, 0, BR_SLICE_LIT("hello"));
    } else {
        br_http_respond(req, 200, NULL, 0, BR_SLICE_LIT("ok"));
    }
}

static void on_abort(void *wctx, br_http_request *req)
{
    (void)wctx;
    atomic_fetch_add(&ht.n_aborts, 1);
    struct op *op = req->user;
    if (!op || !atomic_load(&ht.abort_finishes)) {
        return;
    }
    if (op->kind == OP_STREAM || op->kind == OP_FLOOD) {
        op_finish(op, br_http_stream_end(req, NULL, 0));
    } else {
        op_finish(op, br_http_respond(req, 200, NULL, 0, BR_SLICE_LIT("aborted")));
    }
}

static void on_reject(void *wctx, int status, const char *reason, const char *req_id)
{
    (void)wctx;
    (void)reason;
    (void)req_id;
    atomic_fetch_add(&ht.n_rejects, 1);
    atomic_store(&ht.last_reject_status, status);
}

static const struct br_http_handler handler = {
    .worker_init = worker_init,
    .worker_cleanup = worker_cleanup,
    .on_request = on_request,
    .on_abort = on_abort,
    .on_reject = on_reject,
};

void ht_limits(struct br_http_limits *l)
{
    br_http_limits_default(l);
    l->header_timeout_ms = 200;
    l->body_idle_timeout_ms = 200;
    l->keepalive_timeout_ms = 1000;
    l->drain_timeout_ms = 2000;
}

void ht_start(const struct br_http_limits *lim, unsigned n_workers)
{
    memset(&ht, 0, sizeof(ht));
    atomic_store(&ht.abort_finishes, true);
    pthread_mutex_lock(&rec_mu);
    n_records = 0;
    pthread_mutex_unlock(&rec_mu);
    struct br_http_server_config cfg = {.host = "127.0.0.1", .port = 0, .n_workers = n_workers};
    if (lim) {
        cfg.limits = *lim;
    } else {
        ht_limits(&cfg.limits);
    }
    int rc = br_http_server_create(&cfg, &handler, NULL, &ht.s);
    if (rc != BR_OK) {
        fprintf(stderr, "server create: %s\n", br_strerror(rc));
        abort();
    }
    ht.port = br_http_server_port(ht.s);
    rc = br_http_server_start(ht.s);
    if (rc != BR_OK) {
        fprintf(stderr, "server start: %s\n", br_strerror(rc));
        abort();
    }
}

void ht_stop(void)
{
    if (!ht.s) {
        return;
    }
    br_http_server_drain(ht.s);
    br_http_server_join(ht.s);
    br_http_server_destroy(ht.s);
    ht.s = NULL;
}

int ht_n_records(void)
{
    pthread_mutex_lock(&rec_mu);
    int n = n_records;
    pthread_mutex_unlock(&rec_mu);
    return n;
}

struct ht_record ht_get_record(int i)
{
    pthread_mutex_lock(&rec_mu);
    struct ht_record r = records[i];
    pthread_mutex_unlock(&rec_mu);
    return r;
}

/* ---- client ----------------------------------------------------------------------------- */

int ht_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return -1;
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(ht.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

int ht_send(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

int ht_send_str(int fd, const char *s)
{
    return ht_send(fd, s, strlen(s));
}

void ht_conn_open(struct ht_conn *c)
{
    memset(c, 0, sizeof(*c));
    c->fd = ht_connect();
    c->cap = 1 << 16;
    c->buf = malloc(c->cap);
}

void ht_conn_close(struct ht_conn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
}

/* Reads more bytes into the buffer; 1 on data, 0 on EOF/reset, -1 on timeout. */
static int fill(struct ht_conn *c, long deadline)
{
    if (c->eof) {
        return 0;
    }
    long left = deadline - now_ms();
    if (left <= 0) {
        return -1;
    }
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int pr = poll(&pfd, 1, (int)left);
    if (pr == 0) {
        return -1;
    }
    if (c->len + 4096 > c->cap) {
        c->cap *= 2;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
    if (k <= 0) {
        c->eof = true;
        return 0;
    }
    c->len += (size_t)k;
    c->buf[c->len] = '\0';
    return 1;
}

static void consume(struct ht_conn *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static char *find_crlf(struct ht_conn *c, size_t from)
{
    for (size_t i = from; i + 1 < c->len; i++) {
        if (c->buf[i] == '\r' && c->buf[i + 1] == '\n') {
            return c->buf + i;
        }
    }
    return NULL;
}

static char *find_head_end(struct ht_conn *c)
{
    for (size_t i = 0; i + 3 < c->len; i++) {
        if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0) {
            return c->buf + i;
        }
    }
    return NULL;
}

bool ht_header(const struct ht_resp *r, const char *name, char *out, size_t out_len)
{
    size_t nl = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p && p[2]) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ' || *v == '\t') {
                v++;
            }
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (out && out_len) {
                snprintf(out, out_len, "%.*s", (int)n, v);
            }
            return true;
        }
        p = strstr(p, "\r\n");
    }
    return false;
}

static void body_append(struct ht_resp *r, const char *p, size_t n)
{
    r->body = realloc(r->body, r->body_len + n + 1);
    memcpy(r->body + r->body_len, p, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
}

static int read_chunked(struct ht_conn *c, struct ht_resp *r, long deadline)
{
    for (;;) {
        char *e;
        while ((e = find_crlf(c, 0)) == NULL) {
            if (fill(c, deadline) <= 0) {
                return -1;
            }
        }
        size_t size = strtoul(c->buf, NULL, 16);
        consume(c, (size_t)(e - c->buf) + 2);
        if (size == 0) {
            /* trailers until an empty line */
            for (;;) {
                while ((e = find_crlf(c, 0)) == NULL) {
                    if (fill(c, deadline) <= 0) {
                        return -1;
                    }
                }
                size_t ln = (size_t)(e - c->buf);
                if (ln == 0) {
                    consume(c, 2);
                    return 0;
                }
                size_t tl = strlen(r->trailers);
                snprintf(r->trailers + tl, sizeof(r->trailers) - tl, "%.*s\r\n", (int)ln, c->buf);
                consume(c, ln + 2);
            }
        }
        while (c->len < size + 2) {
            if (fill(c, deadline) <= 0) {
                return -1;
            }
        }
        body_append(r, c->buf, size);
        r->n_chunks++;
        consume(c, size + 2);
    }
}

int ht_read_response(struct ht_conn *c, struct ht_resp *r, int timeout_ms)
{
    memset(r, 0, sizeof(*r));
    r->body = calloc(1, 1);
    long deadline = now_ms() + timeout_ms;
    char *e;
    while ((e = find_head_end(c)) == NULL) {
        if (fill(c, deadline) <= 0) {
            return -1;
        }
    }
    size_t hl = (size_t)(e - c->buf) + 2;
    snprintf(r->head, sizeof(r->head), "%.*s", (int)hl, c->buf);
    consume(c, hl + 2);
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) {
        return -1;
    }
    if (r->status < 200) {
        return 0;
    }
    char v[64];
    if (c->head_request && !ht_header(r, "Content-Length", v, sizeof(v))) {
        c->head_request = false;
        return 0;
    }
    if (ht_header(r, "Transfer-Encoding", v, sizeof(v))) {
        r->chunked = true;
        return read_chunked(c, r, deadline);
    }
    if (ht_header(r, "Content-Length", v, sizeof(v))) {
        size_t n = strtoul(v, NULL, 10);
        if (c->head_request) {
            c->head_request = false;
            n = 0;
        }
        while (c->len < n) {
            if (fill(c, deadline) <= 0) {
                return -1;
            }
        }
        body_append(r, c->buf, n);
        consume(c, n);
        return 0;
    }
    if (r->status == 204 || r->status == 304) {
        return 0;
    }
    /* delimited by close */
    for (;;) {
        int f = fill(c, deadline);
        if (f < 0) {
            return -1;
        }
        if (f == 0) {
            break;
        }
    }
    body_append(r, c->buf, c->len);
    consume(c, c->len);
    return 0;
}

void ht_resp_free(struct ht_resp *r)
{
    free(r->body);
    r->body = NULL;
}

bool ht_wait_closed(struct ht_conn *c, int timeout_ms, size_t *extra)
{
    long deadline = now_ms() + timeout_ms;
    size_t got = c->len;
    c->len = 0;
    for (;;) {
        int f = fill(c, deadline);
        if (f < 0) {
            if (extra) {
                *extra = got;
            }
            return false;
        }
        if (f == 0) {
            if (extra) {
                *extra = got;
            }
            return true;
        }
        got += c->len;
        c->len = 0;
    }
}

int ht_roundtrip(const char *raw, struct ht_resp *r)
{
    struct ht_conn c;
    ht_conn_open(&c);
    if (c.fd < 0 || ht_send_str(c.fd, raw) != 0) {
        ht_conn_close(&c);
        memset(r, 0, sizeof(*r));
        return -1;
    }
    int rc = ht_read_response(&c, r, 3000);
    ht_conn_close(&c);
    return rc == 0 ? r->status : -1;
}
