/* SPDX-License-Identifier: MIT */
/*
 * mock_upstream: a deterministic stand-in for the OpenAI Chat Completions API and the Anthropic
 * Messages API, used by brigade's integration and SDK-compatibility tests. It answers with the
 * real response shapes (JSON and SSE streams), computes usage with a documented word-count rule,
 * and can be driven into every upstream fault a gateway must survive (error statuses, broken
 * JSON, early closes, silence, trickling, mid-stream errors, delays) by directives written into
 * the last user message, e.g. "hello [[status:503]]". Every request it receives is recorded so
 * that tests can assert what the gateway actually sent (GET /_mock/requests). It is a blocking
 * thread-per-connection server: simple, correct and deterministic, not fast. Directives and
 * endpoints are documented in tests/mock_upstream/README.md.
 */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    MAX_HEADER_BYTES = 64 * 1024,      /* request line + headers */
    MAX_BODY_BYTES = 64 * 1024 * 1024, /* request body */
    MAX_RECORDED = 10000,              /* oldest recorded requests are dropped beyond this */
    MAX_TOOLS = 8,                     /* [[tool:NAME]] directives honoured per request */
    MAX_CHOICES = 16,                  /* OpenAI "n" */
    MAX_WORDS = 100000,                /* [[words:N]] */
    TRICKLE_BYTES = 5,                 /* [[fault:trickle]]: bytes per write */
    TRICKLE_PAUSE_MS = 2,              /* [[fault:trickle]]: pause between writes */
    ARG_PIECE_BYTES = 8,               /* tool-call argument bytes per streamed delta */
    STREAM_ERROR_AFTER = 2,            /* content deltas before [[fault:stream_error]] */
    CLOSE_MID_STREAM_AFTER = 3,        /* content deltas before [[fault:close_mid_stream]] */
    INVALID_JSON_AFTER = 1,            /* content deltas before the broken data line */
    HUGE_BODY_BYTES = (64 << 20) + 1,  /* [[fault:huge_body]]: just over 64 MiB */
};

enum fault_bit {
    F_INVALID_JSON = 1u << 0,
    F_CLOSE_BEFORE_HEADERS = 1u << 1,
    F_NO_ANSWER = 1u << 2,
    F_HEADERS_THEN_SILENCE = 1u << 3,
    F_CLOSE_MID_STREAM = 1u << 4,
    F_CLOSE_MID_BODY = 1u << 5,
    F_TRICKLE = 1u << 6,
    F_STREAM_ERROR = 1u << 7,
    F_CONTEXT_LENGTH = 1u << 8,
    F_HUGE_BODY = 1u << 9,
};

static const struct {
    const char *name;
    unsigned bit;
} fault_names[] = {
    {"invalid_json", F_INVALID_JSON},
    {"close_before_headers", F_CLOSE_BEFORE_HEADERS},
    {"no_answer", F_NO_ANSWER},
    {"headers_then_silence", F_HEADERS_THEN_SILENCE},
    {"close_mid_stream", F_CLOSE_MID_STREAM},
    {"close_mid_body", F_CLOSE_MID_BODY},
    {"trickle", F_TRICKLE},
    {"stream_error", F_STREAM_ERROR},
    {"context_length", F_CONTEXT_LENGTH},
    {"huge_body", F_HUGE_BODY},
};

/* Shared state; every field but the immutable options is guarded by lock. */
static struct {
    pthread_mutex_t lock;
    json_t *requests;                     /* array of recorded requests, newest last */
    json_t *counters;                     /* directive text -> times it matched ("#N" limits) */
    unsigned long long connections;       /* TCP connections accepted */
    unsigned long long api_connections;   /* connections that carried a non-/_mock request */
    unsigned long long active;            /* connections open now */
    unsigned long long requests_total;    /* non-/_mock requests */
    unsigned long long streams_completed; /* streams that reached their terminator */
    unsigned long long streams_aborted;   /* streams cut short because the peer went away */
    unsigned long long seq;               /* id counter, never reset */
    unsigned long long next_conn_id;
    const char *require_key; /* immutable after start */
    long long fixed_created; /* immutable; -1: use the clock */
    int verbose;             /* immutable */
} g = {.lock = PTHREAD_MUTEX_INITIALIZER, .fixed_created = -1};

static volatile sig_atomic_t g_stop;

/* ---------------------------------------------------------------- small helpers */

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (!q) {
        (void)fprintf(stderr, "mock_upstream: out of memory\n");
        abort();
    }
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;

    return memcpy(xrealloc(NULL, n), s, n);
}

/* A growable, always NUL-terminated byte buffer. */
struct sbuf {
    char *p;
    size_t len;
    size_t cap;
};

static void sb_add(struct sbuf *b, const void *d, size_t n)
{
    if (b->cap - b->len <= n) { /* len < cap always holds once cap > 0 */
        size_t cap = b->cap ? b->cap : 256;

        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n) {
        memcpy(b->p + b->len, d, n);
    }
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_adds(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;

        while (cap < b->len + (size_t)n + 1) {
            cap *= 2; /* geometric: [[words:100000]] appends 100,000 times */
        }
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    va_start(ap, fmt);
    (void)vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap); /* fits: measured above */
    va_end(ap);
    b->len += (size_t)n;
}

static void sb_reset(struct sbuf *b)
{
    b->len = 0;
    if (b->p) {
        b->p[0] = '\0';
    }
}

static void sb_free(struct sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = 0;
    b->cap = 0;
}

static const char *sb_str(const struct sbuf *b)
{
    return b->p ? b->p : "";
}

static void sleep_ms(long ms)
{
    struct timespec ts;

    if (ms <= 0) {
        return;
    }
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long created_now(void)
{
    return g.fixed_created >= 0 ? g.fixed_created : (long long)time(NULL);
}

static unsigned long long next_seq(void)
{
    unsigned long long v;

    pthread_mutex_lock(&g.lock);
    v = ++g.seq;
    pthread_mutex_unlock(&g.lock);
    return v;
}

static void stat_add(unsigned long long *field)
{
    pthread_mutex_lock(&g.lock);
    (*field)++;
    pthread_mutex_unlock(&g.lock);
}

/* Parses a decimal in [lo, hi]; returns 0 on success. */
static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    long v;

    if (!s || !*s || !(isdigit((unsigned char)*s) || *s == '-')) {
        return -1;
    }
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) {
        return -1;
    }
    *out = v;
    return 0;
}

/* Whitespace-separated words, as the usage rule counts them. */
static long count_words(const char *s)
{
    long n = 0;
    int in = 0;

    for (; s && *s; s++) {
        if (isspace((unsigned char)*s)) {
            in = 0;
        } else if (!in) {
            in = 1;
            n++;
        }
    }
    return n;
}

struct words {
    char **w;
    size_t n;
    size_t cap;
};

static void words_push(struct words *ws, const char *s, size_t n)
{
    char *w = xrealloc(NULL, n + 1);

    memcpy(w, s, n);
    w[n] = '\0';
    if (ws->n == ws->cap) {
        ws->cap = ws->cap ? ws->cap * 2 : 16; /* geometric, as sb_add */
        ws->w = xrealloc(ws->w, ws->cap * sizeof(*ws->w));
    }
    ws->w[ws->n++] = w;
}

static void words_split(const char *s, struct words *ws)
{
    while (*s) {
        const char *b;

        while (*s && isspace((unsigned char)*s)) {
            s++;
        }
        b = s;
        while (*s && !isspace((unsigned char)*s)) {
            s++;
        }
        if (s > b) {
            words_push(ws, b, (size_t)(s - b));
        }
    }
}

static void words_truncate(struct words *ws, size_t n)
{
    while (ws->n > n) {
        free(ws->w[--ws->n]);
    }
}

static void words_free(struct words *ws)
{
    words_truncate(ws, 0);
    free(ws->w);
    ws->w = NULL;
    ws->cap = 0;
}

static char *words_join(const struct words *ws)
{
    struct sbuf b = {0};

    for (size_t i = 0; i < ws->n; i++) {
        if (i) {
            sb_adds(&b, " ");
        }
        sb_adds(&b, ws->w[i]);
    }
    sb_add(&b, "", 0);
    return b.p;
}

/* A JSON string from bytes that may not be UTF-8 (invalid bytes become '?'). */
static json_t *json_bytes(const char *p, size_t n)
{
    json_t *s = json_stringn(p, n);
    char *copy;

    if (s) {
        return s;
    }
    copy = xrealloc(NULL, n + 1);
    for (size_t i = 0; i < n; i++) {
        copy[i] = (char)((p[i] & 0x80) || p[i] == '\0' ? '?' : p[i]);
    }
    s = json_stringn(copy, n);
    free(copy);
    return s;
}

/* ---------------------------------------------------------------- output */

struct out {
    int fd;
    int trickle;      /* [[fault:trickle]] */
    int failed;       /* a write failed: the peer is gone */
    long chunk_delay; /* ms between stream events */
};

static int out_write(struct out *o, const void *data, size_t n)
{
    const char *p = data;

    while (n > 0 && !o->failed) {
        size_t step = o->trickle && n > TRICKLE_BYTES ? TRICKLE_BYTES : n;
        ssize_t w = send(o->fd, p, step, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            o->failed = 1;
            break;
        }
        p += w;
        n -= (size_t)w;
        if (o->trickle && n > 0) {
            sleep_ms(TRICKLE_PAUSE_MS);
        }
    }
    return o->failed ? -1 : 0;
}

/*
 * Waits ms milliseconds, watching the socket: returns -1 as soon as the peer closes it (so that
 * client-disconnect tests see the stream abort promptly), 0 when the time is up.
 */
static int wait_watching_peer(int fd, long ms)
{
    long long deadline = now_ms() + ms;

    for (;;) {
        long long left = deadline - now_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r;

        if (left <= 0) {
            return 0;
        }
        r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r == 0) {
            return 0;
        }
        if (r > 0) {
            char c;
            ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                return -1;
            }
            if (n > 0) {
                /* a pipelined request is waiting: just sleep out the rest */
                sleep_ms((long)(deadline - now_ms()));
                return 0;
            }
        }
    }
}

/* Reads and discards until the peer closes the connection. */
static void drain_until_close(int fd)
{
    char buf[4096];

    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
    }
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 529:
        return "Site Overloaded";
    default:
        return status >= 500 ? "Server Error" : status >= 400 ? "Client Error" : "Unknown";
    }
}

/* content_length < 0 means Transfer-Encoding: chunked. extra holds "Name: value\r\n" lines. */
static int send_head(struct out *o, int status, const char *ctype, const char *extra,
                     long long content_length, int keep_alive)
{
    struct sbuf b = {0};
    int rc;

    sb_printf(&b, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
    sb_printf(&b, "Content-Type: %s\r\n", ctype);
    if (content_length >= 0) {
        sb_printf(&b, "Content-Length: %lld\r\n", content_length);
    } else {
        sb_adds(&b, "Transfer-Encoding: chunked\r\n");
    }
    sb_adds(&b, keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    if (extra) {
        sb_adds(&b, extra);
    }
    sb_adds(&b, "\r\n");
    rc = out_write(o, b.p, b.len);
    sb_free(&b);
    return rc;
}

static int send_chunk(struct out *o, const char *data, size_t n)
{
    struct sbuf b = {0};
    int rc;

    sb_printf(&b, "%zx\r\n", n);
    sb_add(&b, data, n);
    sb_adds(&b, "\r\n");
    rc = out_write(o, b.p, b.len);
    sb_free(&b);
    return rc;
}

static int send_last_chunk(struct out *o)
{
    return out_write(o, "0\r\n\r\n", 5);
}

/* A full response with a body. */
static int send_full(struct out *o, int status, const char *ctype, const char *extra,
                     const char *body, size_t n, int keep_alive)
{
    if (send_head(o, status, ctype, extra, (long long)n, keep_alive) != 0) {
        return -1;
    }
    return out_write(o, body, n);
}

static char *dump_json(const json_t *j, int pretty)
{
    char *s = json_dumps(j, pretty ? JSON_INDENT(2) : JSON_COMPACT);

    if (!s) {
        (void)fprintf(stderr, "mock_upstream: json_dumps failed\n");
        abort();
    }
    return s;
}

static int send_json(struct out *o, int status, const char *extra, json_t *body, int pretty,
                     int keep_alive)
{
    char *s = dump_json(body, pretty);
    int rc = send_full(o, status, "application/json", extra, s, strlen(s), keep_alive);

    free(s);
    json_decref(body);
    return rc;
}

/* ---------------------------------------------------------------- provider error shapes */

enum provider {
    P_OPENAI,
    P_ANTHROPIC,
};

static json_t *openai_error(const char *message, const char *type, const char *param,
                            const char *code)
{
    json_t *err = json_object();
    json_t *top = json_object();

    json_object_set_new(err, "message", json_string(message));
    json_object_set_new(err, "type", json_string(type));
    json_object_set_new(err, "param", param ? json_string(param) : json_null());
    json_object_set_new(err, "code", code ? json_string(code) : json_null());
    json_object_set_new(top, "error", err);
    return top;
}

static json_t *anthropic_error(const char *type, const char *message)
{
    json_t *top = json_object();
    json_t *err = json_object();

    json_object_set_new(top, "type", json_string("error"));
    json_object_set_new(err, "type", json_string(type));
    json_object_set_new(err, "message", json_string(message));
    json_object_set_new(top, "error", err);
    return top;
}

static json_t *status_error_body(enum provider prov, int status, const char *model)
{
    char msg[256];

    if (prov == P_ANTHROPIC) {
        switch (status) {
        case 400:
            return anthropic_error("invalid_request_error", "Invalid request (mock status 400)");
        case 401:
            return anthropic_error("authentication_error", "invalid x-api-key");
        case 403:
            return anthropic_error("permission_error",
                                   "Your API key does not have permission to use the specified "
                                   "resource.");
        case 404:
            (void)snprintf(msg, sizeof(msg), "model: %s", model ? model : "");
            return anthropic_error("not_found_error", msg);
        case 413:
            return anthropic_error("request_too_large", "Request exceeds the maximum allowed "
                                                        "number of bytes.");
        case 429:
            return anthropic_error("rate_limit_error",
                                   "Number of request tokens has exceeded your per-minute rate "
                                   "limit");
        case 529:
            return anthropic_error("overloaded_error", "Overloaded");
        default:
            (void)snprintf(msg, sizeof(msg), "Mock error status %d", status);
            return anthropic_error(status >= 500 ? "api_error" : "invalid_request_error", msg);
        }
    }
    switch (status) {
    case 401:
        return openai_error("Incorrect API key provided: sk-mo***ock. You can find your API key at "
                            "https://platform.openai.com/account/api-keys.",
                            "invalid_request_error", NULL, "invalid_api_key");
    case 403:
        return openai_error("You are not allowed to sample from this model",
                            "invalid_request_error", NULL, NULL);
    case 404:
        (void)snprintf(msg, sizeof(msg),
                       "The model `%s` does not exist or you do not have access to it.",
                       model ? model : "");
        return openai_error(msg, "invalid_request_error", NULL, "model_not_found");
    case 429:
        return openai_error("Rate limit reached for requests", "requests", NULL,
                            "rate_limit_exceeded");
    case 500:
        return openai_error("The server had an error while processing your request. Sorry about "
                            "that!",
                            "server_error", NULL, NULL);
    case 503:
        return openai_error("The engine is currently overloaded, please try again later.",
                            "server_error", NULL, NULL);
    default:
        (void)snprintf(msg, sizeof(msg), "Mock error status %d", status);
        return openai_error(msg, status >= 500 ? "server_error" : "invalid_request_error", NULL,
                            NULL);
    }
}

static const char *provider_extra(enum provider prov, int status)
{
    if (status == 429 || status == 503) {
        return prov == P_ANTHROPIC ? "request-id: req_mock\r\nRetry-After: 1\r\n"
                                   : "x-request-id: req_mock\r\nRetry-After: 1\r\n";
    }
    return prov == P_ANTHROPIC ? "request-id: req_mock\r\n" : "x-request-id: req_mock\r\n";
}

static int send_provider_error(struct out *o, enum provider prov, int status, json_t *body,
                               int keep_alive)
{
    return send_json(o, status, provider_extra(prov, status), body, prov == P_OPENAI, keep_alive);
}

/* ---------------------------------------------------------------- requests */

struct conn {
    int fd;
    unsigned long long id;
    int api_used; /* has carried a non-/_mock request */
    llhttp_t parser;
    llhttp_settings_t settings;
    struct sbuf url;
    struct sbuf body;
    struct sbuf field;
    struct sbuf value;
    json_t *headers; /* lower-case name -> value (repeats joined with ", ") */
    size_t header_bytes;
    int err_status; /* 413 or 431 when a limit stopped the parser */
    int keep_alive;
    int complete;
};

struct req {
    struct conn *c;
    const char *method;
    const char *target; /* request-target as sent */
    char *path;         /* target without the query */
    json_t *headers;    /* borrowed from conn */
    const char *body;
    size_t body_len;
    int keep_alive;
};

static const char *req_header(const struct req *r, const char *name)
{
    return json_string_value(json_object_get(r->headers, name));
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s);
    size_t m = strlen(suffix);

    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void record_request(const struct req *r)
{
    json_t *o = json_object();
    json_t *parsed = json_loadb(r->body, r->body_len, 0, NULL);

    pthread_mutex_lock(&g.lock);
    json_object_set_new(o, "seq", json_integer((json_int_t)g.requests_total + 1));
    json_object_set_new(o, "connection", json_integer((json_int_t)r->c->id));
    json_object_set_new(o, "method", json_string(r->method));
    json_object_set_new(o, "path", json_bytes(r->path, strlen(r->path)));
    json_object_set_new(o, "target", json_bytes(r->target, strlen(r->target)));
    json_object_set_new(o, "headers", json_deep_copy(r->headers));
    json_object_set_new(o, "body", json_bytes(r->body, r->body_len));
    json_object_set_new(o, "json", parsed ? parsed : json_null());
    json_array_append_new(g.requests, o);
    while (json_array_size(g.requests) > MAX_RECORDED) {
        json_array_remove(g.requests, 0);
    }
    g.requests_total++;
    if (!r->c->api_used) {
        r->c->api_used = 1;
        g.api_connections++;
    }
    pthread_mutex_unlock(&g.lock);
}

/* ---------------------------------------------------------------- directives */

struct directives {
    int status;       /* [[status:N]], 0 if none */
    unsigned faults;  /* enum fault_bit */
    long delay_ms;    /* [[delay:MS]] */
    long chunk_delay; /* [[chunk_delay:MS]] */
    long words;       /* [[words:N]], -1 if none */
    int usage_none;   /* [[usage:none]] */
    long cached;      /* [[cached:N]] */
    long reasoning;   /* [[reasoning:N]] */
    int n_tools;
    char *tools[MAX_TOOLS]; /* [[tool:NAME]] */
    int has_logprob;        /* [[logprob:X]] given */
    double logprob;         /* every token's log-probability */
    char *reply;            /* [[reply:TEXT]], '_' read as a space, or NULL */
    char *clean;            /* last user text without directives, words joined by one space */
};

static void directives_free(struct directives *d)
{
    for (int i = 0; i < d->n_tools; i++) {
        free(d->tools[i]);
    }
    free(d->reply);
    free(d->clean);
    memset(d, 0, sizeof(*d));
}

static int scope_matches(const char *scope, const char *path, const char *model)
{
    if (scope[0] == '/') {
        return strncmp(path, scope, strlen(scope)) == 0;
    }
    return model && strcmp(model, scope) == 0;
}

/* Counts a match of a "#N"-limited directive; returns 1 while it is still within its limit. */
static int counter_allows(const char *key, long limit)
{
    json_int_t seen;

    pthread_mutex_lock(&g.lock);
    seen = json_integer_value(json_object_get(g.counters, key)) + 1;
    json_object_set_new(g.counters, key, json_integer(seen));
    pthread_mutex_unlock(&g.lock);
    return seen <= limit;
}

static const char *const directive_names[] = {
    "status", "fault",     "delay", "chunk_delay", "words", "usage",
    "cached", "reasoning", "tool",  "logprob",     "reply",
};

static int is_directive_name(const char *name)
{
    for (size_t i = 0; i < sizeof(directive_names) / sizeof(directive_names[0]); i++) {
        if (strcmp(name, directive_names[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* [[fault:NAME]]; returns 0 for an unknown fault. */
static int set_fault(const char *arg, struct directives *d)
{
    for (size_t i = 0; i < sizeof(fault_names) / sizeof(fault_names[0]); i++) {
        if (strcmp(arg, fault_names[i].name) == 0) {
            d->faults |= fault_names[i].bit;
            return 1;
        }
    }
    return 0;
}

/* The directives whose argument is a number: delay, chunk_delay, words, cached, reasoning. */
static int set_number(const char *name, const char *arg, struct directives *d)
{
    long hi = strcmp(name, "words") == 0 ? MAX_WORDS : 100000000L;
    long v;

    if (parse_long(arg, 0, hi, &v) != 0) {
        return 0;
    }
    if (strcmp(name, "delay") == 0) {
        d->delay_ms = v;
    } else if (strcmp(name, "chunk_delay") == 0) {
        d->chunk_delay = v;
    } else if (strcmp(name, "words") == 0) {
        d->words = v;
    } else if (strcmp(name, "cached") == 0) {
        d->cached = v;
    } else {
        d->reasoning = v;
    }
    return 1;
}

/* Applies directive name:arg (scope and limit already handled); 0 when arg is not valid. */
static int set_directive(const char *name, const char *arg, struct directives *d)
{
    long v;

    if (strcmp(name, "status") == 0) {
        if (parse_long(arg, 100, 599, &v) != 0) {
            return 0;
        }
        d->status = (int)v;
        return 1;
    }
    if (strcmp(name, "fault") == 0) {
        return set_fault(arg, d);
    }
    if (strcmp(name, "usage") == 0) {
        if (strcmp(arg, "none") != 0) {
            return 0;
        }
        d->usage_none = 1;
        return 1;
    }
    if (strcmp(name, "logprob") == 0) {
        char *end = NULL;
        double x = strtod(arg, &end);
        if (!*arg || *end || !(x <= 0) || x < -100) {
            return 0;
        }
        d->has_logprob = 1;
        d->logprob = x;
        return 1;
    }
    if (strcmp(name, "reply") == 0) {
        if (!*arg) {
            return 0;
        }
        free(d->reply);
        d->reply = xstrdup(arg);
        for (char *p = d->reply; *p; p++) {
            if (*p == '_') {
                *p = ' ';
            }
        }
        return 1;
    }
    if (strcmp(name, "tool") == 0) {
        if (!*arg) {
            return 0;
        }
        if (d->n_tools < MAX_TOOLS) {
            d->tools[d->n_tools++] = xstrdup(arg);
        }
        return 1;
    }
    return set_number(name, arg, d);
}

/*
 * Interprets the text between "[[" and "]]". Returns 1 when it is a directive (it is then removed
 * from the echoed text, applied or not), 0 when it is ordinary text.
 */
static int apply_directive(const char *inner, size_t n, const char *path, const char *model,
                           struct directives *d)
{
    char buf[256];
    char *arg;
    char *scope;
    char *hash;
    long limit = -1;

    if (n == 0 || n >= sizeof(buf)) {
        return 0;
    }
    memcpy(buf, inner, n);
    buf[n] = '\0';
    arg = strchr(buf, ':');
    if (!arg) {
        return 0;
    }
    *arg++ = '\0';
    if (!is_directive_name(buf)) {
        return 0;
    }
    hash = strrchr(arg, '#');
    if (hash) {
        if (parse_long(hash + 1, 0, 1000000000L, &limit) != 0) {
            return 0;
        }
        *hash = '\0';
    }
    scope = strchr(arg, '@');
    if (scope) {
        *scope++ = '\0';
        if (!*scope || !scope_matches(scope, path, model)) {
            return 1;
        }
    }
    if (limit >= 0) {
        char key[256];

        memcpy(key, inner, n);
        key[n] = '\0';
        if (!counter_allows(key, limit)) {
            return 1;
        }
    }
    return set_directive(buf, arg, d);
}

static void parse_directives(const char *text, const char *path, const char *model,
                             struct directives *d)
{
    struct sbuf rest = {0};
    struct words ws = {0};
    const char *p = text ? text : "";

    memset(d, 0, sizeof(*d));
    d->words = -1;
    for (;;) {
        const char *open = strstr(p, "[[");
        const char *close = open ? strstr(open + 2, "]]") : NULL;

        if (!open || !close) {
            sb_adds(&rest, p);
            break;
        }
        sb_add(&rest, p, (size_t)(open - p));
        if (apply_directive(open + 2, (size_t)(close - open - 2), path, model, d)) {
            sb_adds(&rest, " ");
        } else {
            sb_add(&rest, open, (size_t)(close + 2 - open));
        }
        p = close + 2;
    }
    words_split(sb_str(&rest), &ws);
    d->clean = words_join(&ws);
    words_free(&ws);
    sb_free(&rest);
}

/* ---------------------------------------------------------------- message text */

/* Text of an OpenAI or Anthropic message content: a string or an array of typed parts. */
/* NOLINTNEXTLINE(misc-no-recursion): jansson parsed the body, its depth is at most 2048 */
static void content_text(const json_t *content, struct sbuf *out, int with_tool_input)
{
    size_t i;
    const json_t *part;

    if (json_is_string(content)) {
        sb_adds(out, json_string_value(content));
        return;
    }
    if (!json_is_array(content)) {
        return;
    }
    json_array_foreach(content, i, part)
    {
        const char *type = json_string_value(json_object_get(part, "type"));
        const json_t *text = json_object_get(part, "text");

        if (json_is_string(text)) {
            if (out->len) {
                sb_adds(out, " ");
            }
            sb_adds(out, json_string_value(text));
        } else if (type && strcmp(type, "tool_result") == 0) {
            if (out->len) {
                sb_adds(out, " ");
            }
            content_text(json_object_get(part, "content"), out, with_tool_input);
        } else if (with_tool_input && type && strcmp(type, "tool_use") == 0) {
            char *s = dump_json(
                json_object_get(part, "input") ? json_object_get(part, "input") : json_null(), 0);

            if (out->len) {
                sb_adds(out, " ");
            }
            sb_adds(out, s);
            free(s);
        }
    }
}

/* Text of the last message whose role is "user" (a new string; "" if there is none). */
static char *last_user_text(const json_t *messages)
{
    struct sbuf b = {0};

    for (size_t i = json_array_size(messages); i > 0; i--) {
        const json_t *m = json_array_get(messages, i - 1);
        const char *role = json_string_value(json_object_get(m, "role"));

        if (role && strcmp(role, "user") == 0) {
            content_text(json_object_get(m, "content"), &b, 0);
            break;
        }
    }
    sb_add(&b, "", 0);
    return b.p;
}

/* ---------------------------------------------------------------- the answer */

struct answer {
    struct words words;   /* answer text, split */
    const char *finish;   /* provider-neutral: "stop", "length", "stop_sequence", "tool_calls" */
    const char *stop_seq; /* matched stop sequence (borrowed from the request) */
    int tool_mode;
    char *args;      /* tool-call arguments (JSON text), same for every call */
    long completion; /* output tokens, before reasoning */
};

static void answer_free(struct answer *a)
{
    words_free(&a->words);
    free(a->args);
}

/* Cuts the text before the earliest of the stop strings; returns the one that matched. */
static const char *cut_at_stop(char *text, const json_t *stops)
{
    const char *best = NULL;
    char *best_at = NULL;
    size_t i;
    const json_t *s;

    if (json_is_string(stops)) {
        const char *v = json_string_value(stops);
        char *at = *v ? strstr(text, v) : NULL;

        if (at) {
            *at = '\0';
            return v;
        }
        return NULL;
    }
    json_array_foreach(stops, i, s)
    {
        const char *v = json_string_value(s);
        char *at = v && *v ? strstr(text, v) : NULL;

        if (at && (!best_at || at < best_at)) {
            best_at = at;
            best = v;
        }
    }
    if (best_at) {
        *best_at = '\0';
    }
    return best;
}

static void build_answer(const struct directives *d, const json_t *tools, const json_t *stops,
                         long max_tokens, struct answer *a)
{
    struct sbuf text = {0};

    memset(a, 0, sizeof(*a));
    a->finish = "stop";
    if (d->n_tools > 0 && json_array_size(tools) > 0) {
        json_t *args = json_object();

        json_object_set_new(args, "text", json_string(d->clean));
        a->tool_mode = 1;
        a->args = dump_json(args, 0);
        json_decref(args);
        a->finish = "tool_calls";
        a->completion = count_words(a->args) * d->n_tools;
        return;
    }
    if (d->reply) {
        sb_adds(&text, d->reply);
    } else if (d->words >= 0) {
        for (long i = 1; i <= d->words; i++) {
            sb_printf(&text, i > 1 ? " w%ld" : "w%ld", i);
        }
    } else {
        sb_adds(&text, "Echo:");
        if (*d->clean) {
            sb_adds(&text, " ");
            sb_adds(&text, d->clean);
        }
    }
    sb_add(&text, "", 0);
    if (stops) {
        a->stop_seq = cut_at_stop(text.p, stops);
        if (a->stop_seq) {
            a->finish = "stop_sequence";
        }
    }
    words_split(text.p, &a->words);
    if (max_tokens >= 0 && a->words.n > (size_t)max_tokens) {
        words_truncate(&a->words, (size_t)max_tokens);
        a->finish = "length";
        a->stop_seq = NULL;
    }
    a->completion = (long)a->words.n;
    sb_free(&text);
}

/* The i-th streamed token of the answer: the word, with a leading space after the first. */
static char *answer_token(const struct answer *a, size_t i)
{
    struct sbuf b = {0};

    if (i > 0) {
        sb_adds(&b, " ");
    }
    sb_adds(&b, a->words.w[i]);
    return b.p;
}

static char *answer_text(const struct answer *a)
{
    return words_join(&a->words);
}

/* Splits s into pieces of about ARG_PIECE_BYTES without cutting a UTF-8 sequence. */
static size_t next_piece(const char *s, size_t off, size_t len)
{
    size_t end = off + ARG_PIECE_BYTES;

    if (end >= len) {
        return len;
    }
    while (end < len && ((unsigned char)s[end] & 0xC0) == 0x80) {
        end++;
    }
    return end;
}

/* ---------------------------------------------------------------- streaming with faults */

struct sse_event {
    char *event; /* "event:" line, or NULL */
    char *data;  /* "data:" payload */
    int content; /* a content delta (counts for the mid-stream faults) */
    int tail;    /* after the last content delta */
};

struct sse_list {
    struct sse_event *ev;
    size_t n;
    size_t cap;
};

static void sse_push(struct sse_list *l, const char *event, char *data, int content)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16; /* geometric: one event per word */
        l->ev = xrealloc(l->ev, l->cap * sizeof(*l->ev));
    }
    l->ev[l->n].event = event ? xstrdup(event) : NULL;
    l->ev[l->n].data = data;
    l->ev[l->n].content = content;
    l->ev[l->n].tail = 0;
    l->n++;
}

static void sse_push_json(struct sse_list *l, const char *event, json_t *data, int content)
{
    sse_push(l, event, dump_json(data, 0), content);
    json_decref(data);
}

static void sse_mark_tail(struct sse_list *l)
{
    size_t last = 0;
    int any = 0;

    for (size_t i = 0; i < l->n; i++) {
        if (l->ev[i].content) {
            last = i;
            any = 1;
        }
    }
    for (size_t i = any ? last + 1 : 0; i < l->n; i++) {
        l->ev[i].tail = 1;
    }
    if (!any) {
        /* no content at all: everything after the opening events is the tail */
        for (size_t i = 0; i < l->n; i++) {
            l->ev[i].tail = i > 0;
        }
    }
}

static void sse_free(struct sse_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->ev[i].event);
        free(l->ev[i].data);
    }
    free(l->ev);
}

struct stream_faults {
    unsigned faults;
    const char *error_event; /* event name of the mid-stream error, or NULL */
    const char *error_data;
    const char *bad_event; /* event name of the non-JSON data line, or NULL */
    const char *bad_data;
};

static int emit_event(struct out *o, const char *event, const char *data, int first)
{
    struct sbuf b = {0};
    int rc;

    if (!first && o->chunk_delay > 0 && wait_watching_peer(o->fd, o->chunk_delay) != 0) {
        o->failed = 1;
        return -1;
    }
    if (event) {
        sb_printf(&b, "event: %s\n", event);
    }
    sb_printf(&b, "data: %s\n\n", data);
    rc = send_chunk(o, b.p, b.len);
    sb_free(&b);
    return rc;
}

/* Sends the events of a stream (headers already sent). Returns 1 to keep the connection. */
static int emit_stream(struct out *o, const struct sse_list *l, const struct stream_faults *sf,
                       int keep_alive)
{
    size_t content_sent = 0;
    int first = 1;
    int bad_done = 0;

    for (size_t i = 0; i < l->n; i++) {
        const struct sse_event *e = &l->ev[i];

        if ((sf->faults & F_INVALID_JSON) && !bad_done &&
            (content_sent == INVALID_JSON_AFTER || e->tail)) {
            bad_done = 1;
            if (emit_event(o, sf->bad_event, sf->bad_data, first) != 0) {
                goto aborted;
            }
            first = 0;
        }
        if ((sf->faults & F_STREAM_ERROR) && (content_sent == STREAM_ERROR_AFTER || e->tail)) {
            if (emit_event(o, sf->error_event, sf->error_data, first) != 0 ||
                send_last_chunk(o) != 0) {
                goto aborted;
            }
            stat_add(&g.streams_completed);
            return keep_alive;
        }
        if ((sf->faults & F_CLOSE_MID_STREAM) &&
            (content_sent == CLOSE_MID_STREAM_AFTER || e->tail)) {
            return 0;
        }
        if (emit_event(o, e->event, e->data, first) != 0) {
            goto aborted;
        }
        first = 0;
        content_sent += e->content ? 1 : 0;
    }
    if (send_last_chunk(o) != 0) {
        goto aborted;
    }
    stat_add(&g.streams_completed);
    return keep_alive;
aborted:
    stat_add(&g.streams_aborted);
    return 0;
}

/* ---------------------------------------------------------------- OpenAI */

struct oa_req {
    const char *id;
    const char *model;
    long long created;
    int n;             /* choices */
    int include_usage; /* stream_options.include_usage and not [[usage:none]] */
    int obfuscation;   /* stream_options.include_obfuscation (default true) */
    int logprobs;
    long top_logprobs;
    json_t *usage; /* NULL with [[usage:none]] */
};

static json_t *oa_usage(long prompt, long completion, long cached, long reasoning)
{
    json_t *u = json_object();
    json_t *pd = json_object();
    json_t *cd = json_object();

    json_object_set_new(u, "prompt_tokens", json_integer(prompt));
    json_object_set_new(u, "completion_tokens", json_integer(completion));
    json_object_set_new(u, "total_tokens", json_integer(prompt + completion));
    json_object_set_new(pd, "cached_tokens", json_integer(cached));
    json_object_set_new(pd, "audio_tokens", json_integer(0));
    json_object_set_new(u, "prompt_tokens_details", pd);
    json_object_set_new(cd, "reasoning_tokens", json_integer(reasoning));
    json_object_set_new(cd, "audio_tokens", json_integer(0));
    json_object_set_new(cd, "accepted_prediction_tokens", json_integer(0));
    json_object_set_new(cd, "rejected_prediction_tokens", json_integer(0));
    json_object_set_new(u, "completion_tokens_details", cd);
    return u;
}

static json_t *oa_token_logprob(const char *tok, size_t i, long top, const struct directives *d)
{
    json_t *o = json_object();
    json_t *bytes = json_array();
    json_t *tops = json_array();
    double lp = d->has_logprob ? d->logprob : -0.01 * (double)((i % 50) + 1);

    for (const unsigned char *p = (const unsigned char *)tok; *p; p++) {
        json_array_append_new(bytes, json_integer(*p));
    }
    for (long k = 0; k < top; k++) {
        json_t *t = json_object();
        char alt[32];

        if (k == 0) {
            json_object_set_new(t, "token", json_string(tok));
            json_object_set_new(t, "logprob", json_real(lp));
            json_object_set_new(t, "bytes", json_deep_copy(bytes));
        } else {
            (void)snprintf(alt, sizeof(alt), " alt%ld", k);
            json_object_set_new(t, "token", json_string(alt));
            json_object_set_new(t, "logprob", json_real(lp - (double)k));
            json_object_set_new(t, "bytes", json_null());
        }
        json_array_append_new(tops, t);
    }
    json_object_set_new(o, "token", json_string(tok));
    json_object_set_new(o, "logprob", json_real(lp));
    json_object_set_new(o, "bytes", bytes);
    json_object_set_new(o, "top_logprobs", tops);
    return o;
}

static json_t *oa_logprobs(json_t *content)
{
    json_t *o = json_object();

    json_object_set_new(o, "content", content);
    json_object_set_new(o, "refusal", json_null());
    return o;
}

static json_t *oa_tool_call(const struct oa_req *q, int t, const char *name, const char *args,
                            int with_index)
{
    json_t *call = json_object();
    json_t *fn = json_object();
    char id[64];

    (void)snprintf(id, sizeof(id), "call_%s_%d", q->id + strlen("chatcmpl-"), t);
    if (with_index) {
        json_object_set_new(call, "index", json_integer(t));
    }
    json_object_set_new(call, "id", json_string(id));
    json_object_set_new(call, "type", json_string("function"));
    json_object_set_new(fn, "name", json_string(name));
    json_object_set_new(fn, "arguments", json_string(args));
    json_object_set_new(call, "function", fn);
    return call;
}

static json_t *oa_response(const struct oa_req *q, const struct answer *a,
                           const struct directives *d)
{
    json_t *resp = json_object();
    json_t *choices = json_array();
    char *text = answer_text(a);

    for (int c = 0; c < q->n; c++) {
        json_t *choice = json_object();
        json_t *msg = json_object();

        json_object_set_new(choice, "index", json_integer(c));
        json_object_set_new(msg, "role", json_string("assistant"));
        if (a->tool_mode) {
            json_t *calls = json_array();

            for (int t = 0; t < d->n_tools; t++) {
                json_array_append_new(calls, oa_tool_call(q, t, d->tools[t], a->args, 0));
            }
            json_object_set_new(msg, "content", json_null());
            json_object_set_new(msg, "tool_calls", calls);
        } else {
            json_object_set_new(msg, "content", json_string(text));
        }
        json_object_set_new(msg, "refusal", json_null());
        json_object_set_new(msg, "annotations", json_array());
        json_object_set_new(choice, "message", msg);
        if (q->logprobs && !a->tool_mode) {
            json_t *content = json_array();

            for (size_t i = 0; i < a->words.n; i++) {
                char *tok = answer_token(a, i);

                json_array_append_new(content, oa_token_logprob(tok, i, q->top_logprobs, d));
                free(tok);
            }
            json_object_set_new(choice, "logprobs", oa_logprobs(content));
        } else {
            json_object_set_new(choice, "logprobs", json_null());
        }
        json_object_set_new(
            choice, "finish_reason",
            json_string(strcmp(a->finish, "stop_sequence") == 0 ? "stop" : a->finish));
        json_array_append_new(choices, choice);
    }
    json_object_set_new(resp, "id", json_string(q->id));
    json_object_set_new(resp, "object", json_string("chat.completion"));
    json_object_set_new(resp, "created", json_integer(q->created));
    json_object_set_new(resp, "model", json_string(q->model));
    json_object_set_new(resp, "choices", choices);
    if (q->usage) {
        json_object_set_new(resp, "usage", json_deep_copy(q->usage));
    }
    json_object_set_new(resp, "service_tier", json_string("default"));
    json_object_set_new(resp, "system_fingerprint", json_string("fp_mock"));
    free(text);
    return resp;
}

static json_t *oa_chunk(const struct oa_req *q, json_t *choices, json_t *usage, size_t seq)
{
    json_t *o = json_object();

    json_object_set_new(o, "id", json_string(q->id));
    json_object_set_new(o, "object", json_string("chat.completion.chunk"));
    json_object_set_new(o, "created", json_integer(q->created));
    json_object_set_new(o, "model", json_string(q->model));
    json_object_set_new(o, "service_tier", json_string("default"));
    json_object_set_new(o, "system_fingerprint", json_string("fp_mock"));
    json_object_set_new(o, "choices", choices);
    if (q->include_usage) {
        json_object_set_new(o, "usage", usage ? usage : json_null());
    } else if (usage) {
        json_decref(usage);
    }
    if (q->obfuscation) {
        static const char alphabet[] = "aZ3kQ9xWm2PfLr7Tb";
        char pad[16];
        size_t len = 1 + (seq * 7) % 12;

        for (size_t i = 0; i < len; i++) {
            pad[i] = alphabet[(seq + i * 5) % (sizeof(alphabet) - 1)];
        }
        pad[len] = '\0';
        json_object_set_new(o, "obfuscation", json_string(pad));
    }
    return o;
}

static json_t *oa_choice(int index, json_t *delta, json_t *logprobs, const char *finish)
{
    json_t *c = json_object();

    json_object_set_new(c, "index", json_integer(index));
    json_object_set_new(c, "delta", delta);
    json_object_set_new(c, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    return c;
}

/* One chunk per choice for a delta (delta and logprobs are copied for each choice). */
static void oa_push_delta(struct sse_list *l, const struct oa_req *q, const json_t *delta,
                          const json_t *logprobs, const char *finish, int content)
{
    for (int c = 0; c < q->n; c++) {
        json_t *choices = json_array();

        json_array_append_new(choices,
                              oa_choice(c, json_deep_copy(delta),
                                        logprobs ? json_deep_copy(logprobs) : NULL, finish));
        sse_push_json(l, NULL, oa_chunk(q, choices, NULL, l->n), content);
    }
}

static void oa_build_stream(const struct oa_req *q, const struct answer *a,
                            const struct directives *d, struct sse_list *l)
{
    json_t *delta = json_object();
    const char *finish = strcmp(a->finish, "stop_sequence") == 0 ? "stop" : a->finish;

    json_object_set_new(delta, "role", json_string("assistant"));
    if (a->tool_mode) {
        size_t len = strlen(a->args);

        for (int t = 0; t < d->n_tools; t++) {
            json_t *calls = json_array();

            json_array_append_new(calls, oa_tool_call(q, t, d->tools[t], "", 1));
            if (t == 0) {
                json_object_set_new(delta, "content", json_null());
                json_object_set_new(delta, "tool_calls", calls);
                json_object_set_new(delta, "refusal", json_null());
            } else {
                delta = json_object();
                json_object_set_new(delta, "tool_calls", calls);
            }
            oa_push_delta(l, q, delta, NULL, NULL, 0);
            json_decref(delta);
            for (size_t off = 0; off < len;) {
                size_t end = next_piece(a->args, off, len);
                json_t *call = json_object();
                json_t *fn = json_object();

                delta = json_object();
                calls = json_array();
                json_object_set_new(call, "index", json_integer(t));
                json_object_set_new(fn, "arguments", json_stringn(a->args + off, end - off));
                json_object_set_new(call, "function", fn);
                json_array_append_new(calls, call);
                json_object_set_new(delta, "tool_calls", calls);
                oa_push_delta(l, q, delta, NULL, NULL, 1);
                json_decref(delta);
                off = end;
            }
        }
    } else {
        json_object_set_new(delta, "content", json_string(""));
        json_object_set_new(delta, "refusal", json_null());
        oa_push_delta(l, q, delta, NULL, NULL, 0);
        json_decref(delta);
        for (size_t i = 0; i < a->words.n; i++) {
            char *tok = answer_token(a, i);
            json_t *lp = NULL;

            delta = json_object();
            json_object_set_new(delta, "content", json_string(tok));
            if (q->logprobs) {
                json_t *content = json_array();

                json_array_append_new(content, oa_token_logprob(tok, i, q->top_logprobs, d));
                lp = oa_logprobs(content);
            }
            oa_push_delta(l, q, delta, lp, NULL, 1);
            json_decref(delta);
            json_decref(lp);
            free(tok);
        }
    }
    delta = json_object();
    oa_push_delta(l, q, delta, NULL, finish, 0);
    json_decref(delta);
    if (q->include_usage && q->usage) {
        sse_push_json(l, NULL, oa_chunk(q, json_array(), json_deep_copy(q->usage), l->n), 0);
    }
    sse_push(l, NULL, xstrdup("[DONE]"), 0);
    sse_mark_tail(l);
}

static long oa_prompt_tokens(const json_t *messages)
{
    long n = 0;
    size_t i;
    const json_t *m;

    json_array_foreach(messages, i, m)
    {
        struct sbuf b = {0};

        content_text(json_object_get(m, "content"), &b, 0);
        n += count_words(sb_str(&b)) + 3;
        sb_free(&b);
    }
    return n;
}

static int check_bearer(const struct req *r)
{
    const char *auth = req_header(r, "authorization");

    if (!g.require_key) {
        return 1;
    }
    return auth && strncmp(auth, "Bearer ", 7) == 0 && strcmp(auth + 7, g.require_key) == 0;
}

static int send_openai_auth_error(struct out *o, int keep_alive)
{
    return send_provider_error(o, P_OPENAI, 401, status_error_body(P_OPENAI, 401, NULL),
                               keep_alive);
}

/* Delay, early faults and [[status:N]]. Returns -2 to go on, else the handler's result. */
static int pre_answer_faults(struct out *o, enum provider prov, const struct directives *d,
                             const char *model, int keep_alive)
{
    if (d->delay_ms > 0 && wait_watching_peer(o->fd, d->delay_ms) != 0) {
        return 0;
    }
    if (d->faults & F_CLOSE_BEFORE_HEADERS) {
        return 0;
    }
    if (d->faults & F_NO_ANSWER) {
        drain_until_close(o->fd);
        return 0;
    }
    if (d->faults & F_CONTEXT_LENGTH) {
        /* The providers' own words for a prompt longer than the model's context window. */
        json_t *e =
            prov == P_ANTHROPIC
                ? anthropic_error("invalid_request_error",
                                  "prompt is too long: 210000 tokens > 200000 maximum")
                : openai_error("This model's maximum context length is 8192 tokens. "
                               "However, your messages resulted in 9000 tokens. Please "
                               "reduce the length of the messages.",
                               "invalid_request_error", "messages", "context_length_exceeded");
        send_provider_error(o, prov, 400, e, keep_alive);
        return o->failed ? 0 : keep_alive;
    }
    if (d->status >= 400) {
        send_provider_error(o, prov, d->status, status_error_body(prov, d->status, model),
                            keep_alive);
        return o->failed ? 0 : keep_alive;
    }
    return -2;
}

/* Sends a complete non-streamed body, honouring the body faults. Returns 1 to keep alive. */
/* [[fault:huge_body]]: the answer followed by whitespace up to HUGE_BODY_BYTES (still valid
 * JSON), announced in Content-Length; stops at the first failed write. Closes. */
static int send_huge_body(struct out *o, const char *extra, const char *body, size_t n)
{
    char pad[1 << 14];
    size_t total = n > HUGE_BODY_BYTES ? n : HUGE_BODY_BYTES;

    if (send_head(o, 200, "application/json", extra, (long long)total, 0) != 0 ||
        out_write(o, body, n) != 0) {
        return 0;
    }
    memset(pad, ' ', sizeof(pad));
    for (size_t left = total - n; left;) {
        size_t k = left < sizeof(pad) ? left : sizeof(pad);

        if (out_write(o, pad, k) != 0) {
            return 0;
        }
        left -= k;
    }
    return 0;
}

static int send_answer_body(struct out *o, const char *extra, const char *body,
                            const struct directives *d, int keep_alive)
{
    static const char broken[] = "{\"id\": \"mock-broken\", \"object\": <this is not JSON>";
    size_t n = strlen(body);

    if (d->faults & F_INVALID_JSON) {
        body = broken;
        n = sizeof(broken) - 1;
    }
    if (d->faults & F_HUGE_BODY) {
        return send_huge_body(o, extra, body, n);
    }
    if (send_head(o, 200, "application/json", extra, (long long)n, keep_alive) != 0) {
        return 0;
    }
    if (d->faults & F_HEADERS_THEN_SILENCE) {
        drain_until_close(o->fd);
        return 0;
    }
    if (d->faults & (F_CLOSE_MID_BODY | F_CLOSE_MID_STREAM)) {
        out_write(o, body, n / 2);
        return 0;
    }
    if (out_write(o, body, n) != 0) {
        return 0;
    }
    return keep_alive;
}

static int send_stream(struct out *o, const char *extra, const struct sse_list *l,
                       const struct stream_faults *sf, const struct directives *d, int keep_alive)
{
    if (send_head(o, 200, "text/event-stream; charset=utf-8", extra, -1, keep_alive) != 0) {
        stat_add(&g.streams_aborted);
        return 0;
    }
    if (d->faults & F_HEADERS_THEN_SILENCE) {
        drain_until_close(o->fd);
        return 0;
    }
    return emit_stream(o, l, sf, keep_alive);
}

/* The 400 error for a request the API refuses (no model, no messages, a bad n), or NULL; *n is
 * the number of choices asked for. */
static json_t *oa_check_request(const json_t *body, int *n)
{
    const json_t *messages = json_object_get(body, "messages");
    const json_t *nj = json_object_get(body, "n");

    *n = 1;
    if (!json_string_value(json_object_get(body, "model"))) {
        return openai_error("you must provide a model parameter", "invalid_request_error", NULL,
                            NULL);
    }
    if (!json_is_array(messages)) {
        return openai_error("Missing required parameter: 'messages'.", "invalid_request_error",
                            "messages", "missing_required_parameter");
    }
    if (json_array_size(messages) == 0) {
        return openai_error("Invalid 'messages': empty array. Expected an array with minimum "
                            "length 1, but got an empty array instead.",
                            "invalid_request_error", "messages", "empty_array");
    }
    if (nj) {
        json_int_t v = json_integer_value(nj);

        if (!json_is_integer(nj) || v < 1 || v > MAX_CHOICES) {
            return openai_error("Invalid 'n': must be an integer between 1 and 16.",
                                "invalid_request_error", "n", "invalid_value");
        }
        *n = (int)v;
    }
    return NULL;
}

static int oa_send_stream(struct out *o, const json_t *so, struct oa_req *q, const struct answer *a,
                          const struct directives *d, int keep_alive)
{
    struct sse_list l = {0};
    char bad[128];
    struct stream_faults sf = {
        .faults = d->faults,
        .error_data = "{\"error\":{\"message\":\"The server had an error while processing your "
                      "request. Sorry about that!\",\"type\":\"server_error\",\"param\":null,"
                      "\"code\":null}}",
        .bad_data = bad,
    };
    int rc;

    q->include_usage = json_is_true(json_object_get(so, "include_usage")) && q->usage;
    q->obfuscation = !json_is_false(json_object_get(so, "include_obfuscation"));
    /* the id is chatcmpl-mock and 12 digits: the line fits */
    (void)snprintf(
        bad, sizeof(bad),
        "{\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":", q->id);
    oa_build_stream(q, a, d, &l);
    rc = send_stream(o, "x-request-id: req_mock\r\nopenai-processing-ms: 1\r\n", &l, &sf, d,
                     keep_alive);
    sse_free(&l);
    return rc;
}

static int handle_openai_chat(const struct req *r, struct out *o)
{
    json_t *body = NULL;
    json_t *invalid;
    json_t *messages;
    const char *model;
    char *user = NULL;
    struct directives d = {0};
    struct answer a = {0};
    struct oa_req q = {0};
    char id[64];
    long max_tokens = -1;
    long prompt;
    int stream;
    int rc;

    if (!check_bearer(r)) {
        return send_openai_auth_error(o, r->keep_alive) == 0 ? r->keep_alive : 0;
    }
    body = json_loadb(r->body, r->body_len, 0, NULL);
    if (!json_is_object(body)) {
        json_decref(body);
        send_provider_error(
            o, P_OPENAI, 400,
            openai_error("We could not parse the JSON body of your request. (HINT: This likely "
                         "means you aren't using your HTTP library correctly. The OpenAI API "
                         "expects a JSON payload, but what was sent was not valid JSON.)",
                         "invalid_request_error", NULL, NULL),
            r->keep_alive);
        return o->failed ? 0 : r->keep_alive;
    }
    model = json_string_value(json_object_get(body, "model"));
    messages = json_object_get(body, "messages");
    invalid = oa_check_request(body, &q.n);
    if (invalid) {
        send_provider_error(o, P_OPENAI, 400, invalid, r->keep_alive);
        rc = o->failed ? 0 : r->keep_alive;
        goto out;
    }
    user = last_user_text(messages);
    parse_directives(user, r->path, model, &d);
    rc = pre_answer_faults(o, P_OPENAI, &d, model, r->keep_alive);
    if (rc != -2) {
        goto out;
    }
    if (json_is_integer(json_object_get(body, "max_completion_tokens"))) {
        max_tokens = (long)json_integer_value(json_object_get(body, "max_completion_tokens"));
    } else if (json_is_integer(json_object_get(body, "max_tokens"))) {
        max_tokens = (long)json_integer_value(json_object_get(body, "max_tokens"));
    }
    build_answer(&d, json_object_get(body, "tools"), json_object_get(body, "stop"), max_tokens, &a);
    if (strcmp(a.finish, "stop_sequence") == 0) {
        a.finish = "stop";
    }
    (void)snprintf(id, sizeof(id), "chatcmpl-mock%012llu", next_seq());
    q.id = id;
    q.model = model;
    q.created = created_now();
    q.logprobs = json_is_true(json_object_get(body, "logprobs"));
    q.top_logprobs = json_is_integer(json_object_get(body, "top_logprobs"))
                         ? (long)json_integer_value(json_object_get(body, "top_logprobs"))
                         : 0;
    if (q.top_logprobs < 0 || q.top_logprobs > 20) {
        q.top_logprobs = 0;
    }
    prompt = oa_prompt_tokens(messages);
    if (!d.usage_none) {
        q.usage = oa_usage(prompt, (a.completion + d.reasoning) * q.n,
                           d.cached < prompt ? d.cached : prompt, d.reasoning * q.n);
    }
    stream = json_is_true(json_object_get(body, "stream"));
    o->trickle = (d.faults & F_TRICKLE) != 0;
    o->chunk_delay = d.chunk_delay;
    if (stream) {
        rc = oa_send_stream(o, json_object_get(body, "stream_options"), &q, &a, &d, r->keep_alive);
    } else {
        json_t *resp = oa_response(&q, &a, &d);
        char *s = dump_json(resp, 1);

        rc = send_answer_body(o, "x-request-id: req_mock\r\nopenai-processing-ms: 1\r\n", s, &d,
                              r->keep_alive);
        free(s);
        json_decref(resp);
    }
out:
    json_decref(q.usage);
    answer_free(&a);
    directives_free(&d);
    free(user);
    json_decref(body);
    return rc;
}

static int handle_openai_models(const struct req *r, struct out *o)
{
    static const char *const ids[] = {"gpt-4o-mini", "gpt-4o", "gpt-4.1-nano", "o3-mini",
                                      "mock-model"};
    const char *slash = strstr(r->path, "/models/");
    json_t *body;

    if (!check_bearer(r)) {
        return send_openai_auth_error(o, r->keep_alive) == 0 ? r->keep_alive : 0;
    }
    if (slash && slash[strlen("/models/")]) {
        body = json_object();
        json_object_set_new(body, "id", json_string(slash + strlen("/models/")));
        json_object_set_new(body, "object", json_string("model"));
        json_object_set_new(body, "created", json_integer(1700000000));
        json_object_set_new(body, "owned_by", json_string("system"));
    } else {
        json_t *data = json_array();

        for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
            json_t *m = json_object();

            json_object_set_new(m, "id", json_string(ids[i]));
            json_object_set_new(m, "object", json_string("model"));
            json_object_set_new(m, "created", json_integer(1700000000 + (json_int_t)i));
            json_object_set_new(m, "owned_by", json_string("system"));
            json_array_append_new(data, m);
        }
        body = json_object();
        json_object_set_new(body, "object", json_string("list"));
        json_object_set_new(body, "data", data);
    }
    send_json(o, 200, "x-request-id: req_mock\r\n", body, 1, r->keep_alive);
    return o->failed ? 0 : r->keep_alive;
}

/* ---------------------------------------------------------------- Anthropic */

struct an_req {
    const char *id;
    const char *model;
    long input;
    long cache_read;
    int usage_none;
};

static json_t *an_usage(const struct an_req *q, long output)
{
    json_t *u = json_object();

    json_object_set_new(u, "input_tokens", json_integer(q->input));
    json_object_set_new(u, "cache_creation_input_tokens", json_integer(0));
    json_object_set_new(u, "cache_read_input_tokens", json_integer(q->cache_read));
    json_object_set_new(u, "output_tokens", json_integer(output));
    return u;
}

static const char *an_stop_reason(const struct answer *a)
{
    if (a->tool_mode) {
        return "tool_use";
    }
    if (strcmp(a->finish, "length") == 0) {
        return "max_tokens";
    }
    if (strcmp(a->finish, "stop_sequence") == 0) {
        return "stop_sequence";
    }
    return "end_turn";
}

static json_t *an_tool_block(const struct an_req *q, int t, const char *name, json_t *input)
{
    json_t *b = json_object();
    char id[64];

    (void)snprintf(id, sizeof(id), "toolu_%s_%d", q->id + strlen("msg_"), t);
    json_object_set_new(b, "type", json_string("tool_use"));
    json_object_set_new(b, "id", json_string(id));
    json_object_set_new(b, "name", json_string(name));
    json_object_set_new(b, "input", input);
    return b;
}

static json_t *an_message(const struct an_req *q, const struct answer *a,
                          const struct directives *d, json_t *content, long output)
{
    json_t *m = json_object();

    json_object_set_new(m, "id", json_string(q->id));
    json_object_set_new(m, "type", json_string("message"));
    json_object_set_new(m, "role", json_string("assistant"));
    json_object_set_new(m, "model", json_string(q->model));
    json_object_set_new(m, "content", content);
    json_object_set_new(m, "stop_reason", a ? json_string(an_stop_reason(a)) : json_null());
    json_object_set_new(m, "stop_sequence",
                        a && a->stop_seq ? json_string(a->stop_seq) : json_null());
    if (!d->usage_none) {
        json_object_set_new(m, "usage", an_usage(q, output));
    }
    return m;
}

static json_t *an_event(const char *type)
{
    json_t *e = json_object();

    json_object_set_new(e, "type", json_string(type));
    return e;
}

static void an_build_stream(const struct an_req *q, const struct answer *a,
                            const struct directives *d, struct sse_list *l)
{
    json_t *e = an_event("message_start");
    json_t *delta;
    int blocks = a->tool_mode ? d->n_tools : 1;

    json_object_set_new(e, "message", an_message(q, NULL, d, json_array(), 1));
    sse_push_json(l, "message_start", e, 0);
    for (int b = 0; b < blocks; b++) {
        json_t *block;

        e = an_event("content_block_start");
        json_object_set_new(e, "index", json_integer(b));
        if (a->tool_mode) {
            block = an_tool_block(q, b, d->tools[b], json_object());
        } else {
            block = json_object();
            json_object_set_new(block, "type", json_string("text"));
            json_object_set_new(block, "text", json_string(""));
        }
        json_object_set_new(e, "content_block", block);
        sse_push_json(l, "content_block_start", e, 0);
        if (b == 0) {
            sse_push(l, "ping", xstrdup("{\"type\": \"ping\"}"), 0);
        }
        if (a->tool_mode) {
            size_t len = strlen(a->args);

            /* the real API opens every tool_use block with an empty partial_json */
            for (size_t off = 0, first = 1; off < len || first; first = 0) {
                size_t end = first ? 0 : next_piece(a->args, off, len);

                e = an_event("content_block_delta");
                delta = json_object();
                json_object_set_new(e, "index", json_integer(b));
                json_object_set_new(delta, "type", json_string("input_json_delta"));
                json_object_set_new(delta, "partial_json", json_stringn(a->args + off, end - off));
                json_object_set_new(e, "delta", delta);
                sse_push_json(l, "content_block_delta", e, 1);
                off = end;
            }
        } else {
            for (size_t i = 0; i < a->words.n; i++) {
                char *tok = answer_token(a, i);

                e = an_event("content_block_delta");
                delta = json_object();
                json_object_set_new(e, "index", json_integer(b));
                json_object_set_new(delta, "type", json_string("text_delta"));
                json_object_set_new(delta, "text", json_string(tok));
                json_object_set_new(e, "delta", delta);
                sse_push_json(l, "content_block_delta", e, 1);
                free(tok);
            }
        }
        e = an_event("content_block_stop");
        json_object_set_new(e, "index", json_integer(b));
        sse_push_json(l, "content_block_stop", e, 0);
    }
    e = an_event("message_delta");
    delta = json_object();
    json_object_set_new(delta, "stop_reason", json_string(an_stop_reason(a)));
    json_object_set_new(delta, "stop_sequence",
                        a->stop_seq ? json_string(a->stop_seq) : json_null());
    json_object_set_new(e, "delta", delta);
    if (!d->usage_none) {
        json_t *u = json_object();

        json_object_set_new(u, "output_tokens", json_integer(a->completion));
        json_object_set_new(e, "usage", u);
    }
    sse_push_json(l, "message_delta", e, 0);
    sse_push_json(l, "message_stop", an_event("message_stop"), 0);
    sse_mark_tail(l);
}

static long an_input_tokens(const json_t *system, const json_t *messages)
{
    struct sbuf b = {0};
    long n;
    size_t i;
    const json_t *m;

    content_text(system, &b, 1);
    n = count_words(sb_str(&b));
    json_array_foreach(messages, i, m)
    {
        sb_reset(&b);
        content_text(json_object_get(m, "content"), &b, 1);
        n += count_words(sb_str(&b));
    }
    sb_free(&b);
    return n;
}

static int an_invalid(struct out *o, const char *message, int keep_alive)
{
    send_provider_error(o, P_ANTHROPIC, 400, anthropic_error("invalid_request_error", message),
                        keep_alive);
    return o->failed ? 0 : keep_alive;
}

/* The message of the 400 error for a body the API refuses, or NULL. */
static const char *an_check_body(const json_t *body)
{
    const json_t *max_tokens_j = json_object_get(body, "max_tokens");
    const json_t *messages = json_object_get(body, "messages");

    if (!json_string_value(json_object_get(body, "model"))) {
        return "model: Field required";
    }
    if (!max_tokens_j) {
        return "max_tokens: Field required";
    }
    if (!json_is_integer(max_tokens_j) || json_integer_value(max_tokens_j) < 1) {
        return "max_tokens: Input should be a valid integer greater than or equal to 1";
    }
    if (!json_is_array(messages)) {
        return "messages: Field required";
    }
    if (json_array_size(messages) == 0) {
        return "messages: at least one message is required";
    }
    return NULL;
}

static int handle_anthropic_messages(const struct req *r, struct out *o)
{
    const char *invalid;
    json_t *body = NULL;
    json_t *messages;
    const json_t *max_tokens_j;
    const char *model;
    const char *key = req_header(r, "x-api-key");
    char *user = NULL;
    struct directives d = {0};
    struct answer a = {0};
    struct an_req q = {0};
    char id[64];
    int rc;

    /* current Anthropic SDKs send the API key as a bearer token: accept either header */
    if (g.require_key && !(key && strcmp(key, g.require_key) == 0) && !check_bearer(r)) {
        send_provider_error(o, P_ANTHROPIC, 401,
                            anthropic_error("authentication_error", "invalid x-api-key"),
                            r->keep_alive);
        return o->failed ? 0 : r->keep_alive;
    }
    if (!req_header(r, "anthropic-version")) {
        return an_invalid(o, "anthropic-version: header is required", r->keep_alive);
    }
    body = json_loadb(r->body, r->body_len, 0, NULL);
    if (!json_is_object(body)) {
        json_decref(body);
        return an_invalid(o, "There was an error parsing the body of your request as JSON",
                          r->keep_alive);
    }
    model = json_string_value(json_object_get(body, "model"));
    messages = json_object_get(body, "messages");
    max_tokens_j = json_object_get(body, "max_tokens");
    invalid = an_check_body(body);
    if (invalid) {
        rc = an_invalid(o, invalid, r->keep_alive);
        goto out;
    }
    user = last_user_text(messages);
    parse_directives(user, r->path, model, &d);
    rc = pre_answer_faults(o, P_ANTHROPIC, &d, model, r->keep_alive);
    if (rc != -2) {
        goto out;
    }
    build_answer(&d, json_object_get(body, "tools"), json_object_get(body, "stop_sequences"),
                 (long)json_integer_value(max_tokens_j), &a);
    (void)snprintf(id, sizeof(id), "msg_mock%012llu", next_seq());
    q.id = id;
    q.model = model;
    q.input = an_input_tokens(json_object_get(body, "system"), messages);
    q.cache_read = d.cached < q.input ? d.cached : q.input;
    q.input -= q.cache_read;
    q.usage_none = d.usage_none;
    o->trickle = (d.faults & F_TRICKLE) != 0;
    o->chunk_delay = d.chunk_delay;
    if (json_is_true(json_object_get(body, "stream"))) {
        struct sse_list l = {0};
        struct stream_faults sf = {
            .faults = d.faults,
            .error_event = "error",
            .error_data = "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
                          "\"message\":\"Overloaded\"}}",
            .bad_event = "content_block_delta",
            .bad_data = "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{",
        };

        an_build_stream(&q, &a, &d, &l);
        rc = send_stream(o, "request-id: req_mock\r\ncache-control: no-cache\r\n", &l, &sf, &d,
                         r->keep_alive);
        sse_free(&l);
    } else {
        json_t *content = json_array();
        json_t *msg;
        char *s;

        if (a.tool_mode) {
            for (int t = 0; t < d.n_tools; t++) {
                json_array_append_new(
                    content, an_tool_block(&q, t, d.tools[t], json_loads(a.args, 0, NULL)));
            }
        } else {
            json_t *block = json_object();
            char *text = answer_text(&a);

            json_object_set_new(block, "type", json_string("text"));
            json_object_set_new(block, "text", json_string(text));
            json_array_append_new(content, block);
            free(text);
        }
        msg = an_message(&q, &a, &d, content, a.completion);
        s = dump_json(msg, 0);
        rc = send_answer_body(o, "request-id: req_mock\r\n", s, &d, r->keep_alive);
        free(s);
        json_decref(msg);
    }
out:
    answer_free(&a);
    directives_free(&d);
    free(user);
    json_decref(body);
    return rc;
}

/* ---------------------------------------------------------------- /_mock */

static int handle_mock(const struct req *r, struct out *o)
{
    json_t *body = NULL;

    if (strcmp(r->path, "/_mock/requests") == 0 && strcmp(r->method, "GET") == 0) {
        pthread_mutex_lock(&g.lock);
        body = json_deep_copy(g.requests);
        pthread_mutex_unlock(&g.lock);
    } else if (strcmp(r->path, "/_mock/reset") == 0 && strcmp(r->method, "POST") == 0) {
        pthread_mutex_lock(&g.lock);
        json_array_clear(g.requests);
        json_object_clear(g.counters);
        g.connections = 0;
        g.api_connections = 0;
        g.requests_total = 0;
        g.streams_completed = 0;
        g.streams_aborted = 0;
        pthread_mutex_unlock(&g.lock);
        body = json_pack("{s:b}", "ok", 1);
    } else if (strcmp(r->path, "/_mock/stats") == 0 && strcmp(r->method, "GET") == 0) {
        pthread_mutex_lock(&g.lock);
        body = json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I}", "connections_accepted", (json_int_t)g.connections,
            "api_connections", (json_int_t)g.api_connections, "active_connections",
            (json_int_t)g.active, "requests", (json_int_t)g.requests_total, "streams_completed",
            (json_int_t)g.streams_completed, "streams_aborted", (json_int_t)g.streams_aborted);
        pthread_mutex_unlock(&g.lock);
    } else {
        send_json(o, 404, NULL,
                  openai_error("Unknown mock endpoint", "invalid_request_error", NULL, NULL), 1,
                  r->keep_alive);
        return o->failed ? 0 : r->keep_alive;
    }
    send_json(o, 200, NULL, body, 0, r->keep_alive);
    return o->failed ? 0 : r->keep_alive;
}

/* Routes one complete request. Returns 1 to keep the connection open. */
static int handle_request(struct conn *c)
{
    struct req r = {0};
    struct out o = {.fd = c->fd};
    const char *q;
    int keep;

    r.c = c;
    r.method = llhttp_method_name((llhttp_method_t)c->parser.method);
    r.target = sb_str(&c->url);
    q = strchr(r.target, '?');
    r.path = q ? strndup(r.target, (size_t)(q - r.target)) : xstrdup(r.target);
    if (!r.path) {
        abort();
    }
    r.headers = c->headers;
    r.body = sb_str(&c->body);
    r.body_len = c->body.len;
    r.keep_alive = c->keep_alive;
    if (strncmp(r.path, "/_mock/", 7) == 0) {
        keep = handle_mock(&r, &o);
        goto out;
    }
    record_request(&r);
    if (has_suffix(r.path, "/chat/completions")) {
        keep = strcmp(r.method, "POST") == 0 ? handle_openai_chat(&r, &o) : -1;
    } else if (has_suffix(r.path, "/messages")) {
        keep = strcmp(r.method, "POST") == 0 ? handle_anthropic_messages(&r, &o) : -1;
    } else if (has_suffix(r.path, "/models") || strstr(r.path, "/models/")) {
        keep = strcmp(r.method, "GET") == 0 ? handle_openai_models(&r, &o) : -1;
    } else {
        char msg[512];

        (void)snprintf(msg, sizeof(msg), "Invalid URL (%s %.400s)", r.method, r.path);
        send_json(&o, 404, NULL, openai_error(msg, "invalid_request_error", NULL, NULL), 1,
                  r.keep_alive);
        keep = o.failed ? 0 : r.keep_alive;
    }
    if (keep < 0) {
        char msg[512];

        (void)snprintf(msg, sizeof(msg), "Invalid method for URL (%s %.400s)", r.method, r.path);
        send_json(&o, 405, NULL, openai_error(msg, "invalid_request_error", NULL, NULL), 1,
                  r.keep_alive);
        keep = o.failed ? 0 : r.keep_alive;
    }
out:
    if (g.verbose) {
        (void)fprintf(stderr, "mock_upstream: conn=%llu %s %s keep=%d\n", c->id, r.method, r.target,
                      keep);
    }
    free(r.path);
    return keep && !o.failed;
}

/* ---------------------------------------------------------------- HTTP parsing */

static struct conn *conn_of(llhttp_t *p)
{
    return p->data;
}

static int add_header_bytes(struct conn *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > MAX_HEADER_BYTES) {
        c->err_status = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = conn_of(p);

    sb_reset(&c->url);
    sb_reset(&c->body);
    sb_reset(&c->field);
    sb_reset(&c->value);
    json_object_clear(c->headers);
    c->header_bytes = 0;
    c->complete = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);

    if (add_header_bytes(c, n) != 0) {
        return -1;
    }
    sb_add(&c->url, at, n);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);

    if (add_header_bytes(c, n) != 0) {
        return -1;
    }
    sb_add(&c->field, at, n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);

    if (add_header_bytes(c, n) != 0) {
        return -1;
    }
    sb_add(&c->value, at, n);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    const char *old;
    json_t *v;

    sb_add(&c->field, "", 0);
    sb_add(&c->value, "", 0);
    for (char *s = c->field.p; *s; s++) {
        *s = (char)tolower((unsigned char)*s);
    }
    old = json_string_value(json_object_get(c->headers, c->field.p));
    if (old) {
        struct sbuf j = {0};

        sb_printf(&j, "%s, %s", old, c->value.p);
        v = json_bytes(j.p, j.len);
        sb_free(&j);
    } else {
        v = json_bytes(c->value.p, c->value.len);
    }
    json_object_set_new(c->headers, c->field.p, v);
    sb_reset(&c->field);
    sb_reset(&c->value);
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    const char *expect = json_string_value(json_object_get(c->headers, "expect"));

    if (p->content_length > MAX_BODY_BYTES &&
        json_object_get(c->headers, "content-length") != NULL) {
        c->err_status = 413;
        return -1;
    }
    if (expect && strcasecmp(expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

        if (send(c->fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL) < 0) {
            return -1;
        }
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);

    if (c->body.len + n > MAX_BODY_BYTES) {
        c->err_status = 413;
        return -1;
    }
    sb_add(&c->body, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);

    c->keep_alive = llhttp_should_keep_alive(p);
    c->complete = 1;
    return HPE_PAUSED;
}

static void send_parse_error(struct conn *c)
{
    struct out o = {.fd = c->fd};
    int status = c->err_status ? c->err_status : 400;
    char msg[128];

    (void)snprintf(msg, sizeof(msg), "Malformed HTTP request (%s)",
                   c->err_status ? reason_phrase(status) : llhttp_get_error_reason(&c->parser));
    send_json(&o, status, NULL, openai_error(msg, "invalid_request_error", NULL, NULL), 1, 0);
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    char buf[16384];

    llhttp_settings_init(&c->settings);
    c->settings.on_message_begin = on_message_begin;
    c->settings.on_url = on_url;
    c->settings.on_header_field = on_header_field;
    c->settings.on_header_value = on_header_value;
    c->settings.on_header_value_complete = on_header_value_complete;
    c->settings.on_headers_complete = on_headers_complete;
    c->settings.on_body = on_body;
    c->settings.on_message_complete = on_message_complete;
    llhttp_init(&c->parser, HTTP_REQUEST, &c->settings);
    c->parser.data = c;
    c->headers = json_object();
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        const char *p = buf;
        size_t left;

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        left = (size_t)n;
        while (left > 0) {
            llhttp_errno_t e = llhttp_execute(&c->parser, p, left);

            if (e == HPE_OK) {
                break;
            }
            if (e == HPE_PAUSED && c->complete) {
                const char *pos = llhttp_get_error_pos(&c->parser);

                left -= (size_t)(pos - p);
                p = pos;
                llhttp_resume(&c->parser);
                c->complete = 0;
                if (!handle_request(c)) {
                    goto done;
                }
                continue;
            }
            send_parse_error(c);
            goto done;
        }
    }
done:
    close(c->fd);
    pthread_mutex_lock(&g.lock);
    g.active--;
    pthread_mutex_unlock(&g.lock);
    json_decref(c->headers);
    sb_free(&c->url);
    sb_free(&c->body);
    sb_free(&c->field);
    sb_free(&c->value);
    free(c);
    return NULL;
}

/* ---------------------------------------------------------------- main */

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void usage(void)
{
    (void)fprintf(stderr, "usage: mock_upstream [--host 127.0.0.1] [--port 0] [--port-file PATH]\n"
                          "                     [--require-key KEY] [--created UNIX_TIME] [-v]\n");
}

static int write_port_file(const char *path, int port)
{
    struct sbuf tmp = {0};
    FILE *f;
    int rc = -1;

    sb_printf(&tmp, "%s.tmp", path);
    f = fopen(tmp.p, "w");
    if (!f) {
        goto out;
    }
    if (fprintf(f, "%d\n", port) < 0) {
        (void)fclose(f);
        goto out;
    }
    if (fclose(f) != 0) {
        goto out;
    }
    rc = rename(tmp.p, path);
out:
    sb_free(&tmp);
    return rc;
}

static int open_listener(const char *host, const char *port, int *port_out)
{
    struct addrinfo hints = {0};
    struct addrinfo *res = NULL;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = -1;
    int one = 1;
    int rc;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        (void)fprintf(stderr, "mock_upstream: %s:%s: %s\n", host, port, gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (fd < 0) {
        goto fail;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
        goto fail;
    }
    *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    freeaddrinfo(res);
    return fd;
fail:
    (void)fprintf(stderr, "mock_upstream: cannot listen on %s:%s: %s\n", host, port,
                  strerror(errno)); /* NOLINT(concurrency-mt-unsafe): start-up, no threads yet */
    if (fd >= 0) {
        close(fd);
    }
    freeaddrinfo(res);
    return -1;
}

static void accept_loop(int lfd)
{
    pthread_attr_t attr;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (!g_stop) {
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        struct conn *c;
        pthread_t th;
        int fd;
        int one = 1;

        if (poll(&pfd, 1, 200) <= 0) {
            continue;
        }
        fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c = xrealloc(NULL, sizeof(*c));
        memset(c, 0, sizeof(*c));
        c->fd = fd;
        pthread_mutex_lock(&g.lock);
        g.connections++;
        g.active++;
        c->id = ++g.next_conn_id;
        pthread_mutex_unlock(&g.lock);
        if (pthread_create(&th, &attr, conn_main, c) != 0) {
            pthread_mutex_lock(&g.lock);
            g.active--;
            pthread_mutex_unlock(&g.lock);
            close(fd);
            free(c);
        }
    }
    pthread_attr_destroy(&attr);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    const char *port = "0";
    const char *port_file = NULL;
    struct sigaction sa = {0};
    int lfd;
    int bound_port = 0;

    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0) {
            g.verbose = 1;
            continue;
        }
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage();
            return 0;
        }
        if (!v) {
            usage();
            return 2;
        }
        if (strcmp(argv[i], "--host") == 0) {
            host = v;
        } else if (strcmp(argv[i], "--port") == 0) {
            port = v;
        } else if (strcmp(argv[i], "--port-file") == 0) {
            port_file = v;
        } else if (strcmp(argv[i], "--require-key") == 0) {
            g.require_key = v;
        } else if (strcmp(argv[i], "--created") == 0) {
            long t;

            if (parse_long(v, 0, 4000000000L, &t) != 0) {
                usage();
                return 2;
            }
            g.fixed_created = t;
        } else {
            usage();
            return 2;
        }
        i++;
    }
    g.requests = json_array();
    g.counters = json_object();
    (void)signal(SIGPIPE, SIG_IGN); /* cannot fail for a valid signal number */
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    lfd = open_listener(host, port, &bound_port);
    if (lfd < 0) {
        return 1;
    }
    if (port_file && write_port_file(port_file, bound_port) != 0) {
        /* NOLINTNEXTLINE(concurrency-mt-unsafe): start-up, before the first connection thread */
        (void)fprintf(stderr, "mock_upstream: cannot write %s: %s\n", port_file, strerror(errno));
        close(lfd);
        return 1;
    }
    printf("listening on %s:%d\n", host, bound_port);
    (void)fflush(stdout);
    accept_loop(lfd);
    close(lfd);
    if (g.verbose) {
        (void)fprintf(stderr, "mock_upstream: stopping\n");
    }
    return 0;
}
