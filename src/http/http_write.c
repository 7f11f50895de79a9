/* SPDX-License-Identifier: MIT */
/*
 * Responses: status line and header formatting, complete responses with Content-Length,
 * OpenAI-shaped JSON errors (also for the layer's own rejections), and streamed bodies with
 * chunked encoding and trailers. A response head is built in the worker's scratch buffer and
 * written together with the body in one writev (uv_try_write); only what the socket does not
 * take at once is copied and queued.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/log.h"
#include "http/http.h"
#include "http/http_int.h"

#define CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

enum framing {
    FRAME_LENGTH, /* Content-Length */
    FRAME_CHUNKED,
    FRAME_NONE, /* no body, or a body delimited by close */
};

const char *br_http_status_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* ---- validation ------------------------------------------------------------------------- */

static bool is_tchar(unsigned char c)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return true;
    }
    return c != 0 && strchr(extra, c) != NULL;
}

static bool name_ok(struct br_slice n)
{
    if (n.len == 0 || !n.ptr) {
        return false;
    }
    for (size_t i = 0; i < n.len; i++) {
        if (!is_tchar((unsigned char)n.ptr[i])) {
            return false;
        }
    }
    return true;
}

static bool value_ok(struct br_slice v)
{
    if (v.len && !v.ptr) {
        return false;
    }
    for (size_t i = 0; i < v.len; i++) {
        char c = v.ptr[i];
        if (c == '\r' || c == '\n' || c == '\0') {
            return false;
        }
    }
    return true;
}

static bool headers_ok(const struct br_http_header *h, size_t n)
{
    if (n && !h) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!name_ok(h[i].name) || !value_ok(h[i].value)) {
            return false;
        }
    }
    return true;
}

/* Fields the http layer writes itself; a handler's copy is dropped. */
static bool reserved_name(struct br_slice n)
{
    switch (n.len) {
    case 4:
        return br_slice_case_eq_cstr(n, "date");
    case 10:
        return br_slice_case_eq_cstr(n, "connection");
    case 12:
        return br_slice_case_eq_cstr(n, "x-request-id");
    case 14:
        return br_slice_case_eq_cstr(n, "content-length");
    case 17:
        return br_slice_case_eq_cstr(n, "transfer-encoding");
    default:
        return false;
    }
}

static bool bodiless_status(int status)
{
    return status == 204 || status == 304;
}

/* ---- formatting ------------------------------------------------------------------------- */

static int append_lit(struct br_buf *b, const char *s)
{
    return br_buf_append(b, s, strlen(s));
}

static int append_u64(struct br_buf *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return br_buf_append(b, tmp + i, sizeof(tmp) - i);
}

int br__http_append_date(struct br__http_worker *w, struct br_buf *b)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    if ((int64_t)now != w->date_sec) {
        struct tm tm;
        if (gmtime_r(&now, &tm)) {
            int n =
                snprintf(w->date, sizeof(w->date), "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                         days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
                         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
            w->date_len = n > 0 && (size_t)n < sizeof(w->date) ? (size_t)n : 0;
            w->date_sec = (int64_t)now;
        }
    }
    return br_buf_append(b, w->date, w->date_len);
}

int br__http_json_string(struct br_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    int rc = br_buf_append(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (rc == BR_OK && *p) {
        const unsigned char *run = p;
        while (*p && *p >= 0x20 && *p != '"' && *p != '\\') {
            p++;
        }
        if (p > run) {
            rc = br_buf_append(b, run, (size_t)(p - run));
        }
        if (rc != BR_OK || !*p) {
            break;
        }
        char esc[6] = {'\\', (char)*p, 0, 0, 0, 0};
        size_t n = 2;
        if (*p == '\n') {
            esc[1] = 'n';
        } else if (*p == '\r') {
            esc[1] = 'r';
        } else if (*p == '\t') {
            esc[1] = 't';
        } else if (*p < 0x20) {
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 15];
            n = 6;
        }
        rc = br_buf_append(b, esc, n);
        p++;
    }
    if (rc == BR_OK) {
        rc = br_buf_append(b, "\"", 1);
    }
    return rc;
}

static int json_nullable(struct br_buf *b, const char *s)
{
    return s ? br__http_json_string(b, s) : append_lit(b, "null");
}

/* {"error":{"message":...,"type":...,"param":...,"code":...}} into b. */
static int json_error(struct br_buf *b, const char *message, const char *type, const char *param,
                      const char *code)
{
    br_buf_reset(b);
    int rc = append_lit(b, "{\"error\":{\"message\":");
    rc = rc ? rc : br__http_json_string(b, message ? message : "");
    rc = rc ? rc : append_lit(b, ",\"type\":");
    rc = rc ? rc : br__http_json_string(b, type);
    rc = rc ? rc : append_lit(b, ",\"param\":");
    rc = rc ? rc : json_nullable(b, param);
    rc = rc ? rc : append_lit(b, ",\"code\":");
    rc = rc ? rc : json_nullable(b, code);
    rc = rc ? rc : append_lit(b, "}}");
    return rc;
}

static const char *default_type(int status)
{
    return status >= 500 && status != 501 && status != 505 ? "server_error"
                                                           : "invalid_request_error";
}

/* Handler fields (and one extra, may be NULL), minus the ones the layer writes itself. */
static int append_fields(struct br_buf *b, const struct br_http_header *h, size_t n,
                         const struct br_http_header *extra)
{
    int rc = BR_OK;
    for (size_t i = 0; rc == BR_OK && i < n + (extra ? 1 : 0); i++) {
        const struct br_http_header *x = i < n ? &h[i] : extra;
        if (reserved_name(x->name)) {
            continue;
        }
        rc = br_buf_append(b, x->name.ptr, x->name.len);
        rc = rc ? rc : br_buf_append(b, ": ", 2);
        rc = rc ? rc : br_buf_append(b, x->value.ptr, x->value.len);
        rc = rc ? rc : br_buf_append(b, "\r\n", 2);
    }
    return rc;
}

/* Content-Length or Transfer-Encoding, x-request-id, Connection and the empty line. */
static int append_tail(struct br__http_conn *c, struct br_buf *b, enum framing f, uint64_t length)
{
    int rc = BR_OK;
    if (f == FRAME_LENGTH) {
        rc = append_lit(b, "Content-Length: ");
        rc = rc ? rc : append_u64(b, length);
        rc = rc ? rc : br_buf_append(b, "\r\n", 2);
    } else if (f == FRAME_CHUNKED) {
        rc = append_lit(b, "Transfer-Encoding: chunked\r\n");
    }
    rc = rc ? rc : append_lit(b, "x-request-id: ");
    rc = rc ? rc : append_lit(b, c->req.id ? c->req.id : "");
    rc = rc ? rc : br_buf_append(b, "\r\n", 2);
    if (rc == BR_OK && c->close_after) {
        rc = append_lit(b, "Connection: close\r\n");
    } else if (rc == BR_OK && c->req.http_minor == 0) {
        rc = append_lit(b, "Connection: keep-alive\r\n");
    }
    return rc ? rc : br_buf_append(b, "\r\n", 2);
}

/*
 * Builds a response head in the worker's scratch buffer. Header validation happens before
 * (headers_ok); reserved fields from the handler are skipped here.
 */
static int build_head(struct br__http_conn *c, int status, const struct br_http_header *h, size_t n,
                      const struct br_http_header *extra, enum framing f, uint64_t length)
{
    struct br_buf *b = &c->w->out;
    br_buf_reset(b);
    char line[16];
    (void)snprintf(line, sizeof(line), "HTTP/1.1 %03d ", status);
    int rc = append_lit(b, line);
    rc = rc ? rc : append_lit(b, br_http_status_reason(status));
    rc = rc ? rc : br_buf_append(b, "\r\n", 2);
    rc = rc ? rc : br__http_append_date(c->w, b);
    rc = rc ? rc : append_fields(b, h, n, extra);
    return rc ? rc : append_tail(c, b, f, length);
}

/* Writes a complete response (head and body) for the request the connection serves. */
static int write_response(struct br__http_conn *c, int status, const struct br_http_header *h,
                          size_t n, const struct br_http_header *extra, struct br_slice body)
{
    if (status < 200 || status > 599 || !headers_ok(h, n) || (body.len && !body.ptr)) {
        return BR_ERR_INVAL;
    }
    bool no_body = bodiless_status(status);
    enum framing f = no_body ? FRAME_NONE : FRAME_LENGTH;
    int rc = build_head(c, status, h, n, extra, f, body.len);
    if (rc != BR_OK) {
        return rc == BR_ERR_LIMIT ? BR_ERR_INVAL : rc;
    }
    uv_buf_t bufs[2];
    bufs[0] = uv_buf_init(c->w->out.ptr, (unsigned)c->w->out.len);
    unsigned nb = 1;
    if (!no_body && !c->head_only && body.len) {
        bufs[1] = uv_buf_init((char *)body.ptr, (unsigned)body.len);
        nb = 2;
    }
    return br__http_conn_write(c, bufs, nb);
}

static int write_error(struct br__http_conn *c, int status, const char *type, const char *code,
                       const char *param, const char *message)
{
    static const struct br_http_header k_json = {BR_SLICE_LIT("Content-Type"),
                                                 BR_SLICE_LIT("application/json")};
    /* A 503 from the layer itself (connection limit, no memory) is worth retrying soon. */
    static const struct br_http_header k_retry = {BR_SLICE_LIT("Retry-After"), BR_SLICE_LIT("1")};
    struct br_buf *j = &c->w->json;
    int rc = json_error(j, message, type ? type : default_type(status), param, code);
    if (rc != BR_OK) {
        rc = json_error(j, "error message too long", default_type(status), NULL, code);
        if (rc != BR_OK) {
            return rc;
        }
    }
    return write_response(c, status, status == 503 ? &k_retry : NULL, status == 503 ? 1 : 0,
                          &k_json, br_slice_make(j->ptr, j->len));
}

void br__http_conn_reject(struct br__http_conn *c, int status, const char *code,
                          const char *message)
{
    struct br__http_worker *w = c->w;
    if (c->state == BR__HTTP_CONN_CLOSED) {
        return;
    }
    struct br_slice cid = br__http_parser_request_id(&c->parser);
    const char *id = NULL;
    if (cid.len) {
        id = br_arena_slice_dup(c->arena, cid);
    }
    if (!id) {
        br_rng_request_id(&w->rng, c->id_buf);
        id = c->id_buf;
    }
    memset(&c->req, 0, sizeof(c->req));
    c->req.id = id;
    c->req.http_minor = 1;
    c->req.peer = c->peer;
    c->head_only = false;
    c->close_after = true;
    br_log(BR_LOG_DEBUG, id, "event=http_reject status=%d code=%s peer=%s reason=\"%s\"", status,
           code, c->peer, message);
    if (w->s->h.on_reject) {
        w->s->h.on_reject(w->wctx, status, message, id);
    }
    if (c->state == BR__HTTP_CONN_CLOSED) {
        return;
    }
    if (write_error(c, status, NULL, code, NULL, message) != BR_OK &&
        c->state != BR__HTTP_CONN_CLOSED) {
        br__http_conn_close(c);
        return;
    }
    if (c->state != BR__HTTP_CONN_CLOSED) {
        br__http_conn_start_closing(c);
    }
}

/* ---- public API ------------------------------------------------------------------------- */

static struct br__http_conn *conn_of(br_http_request *req)
{
    return CONTAINER_OF(req, struct br__http_conn, req);
}

int br_http_respond(br_http_request *req, int status, const struct br_http_header *headers,
                    size_t n_headers, struct br_slice body)
{
    struct br__http_conn *c = conn_of(req);
    if (c->resp == BR__HTTP_RESP_STREAMING) {
        /* A handler bug: end the stream it started so the request is still finished once. */
        int rc = br_http_stream_end(req, NULL, 0);
        return rc != BR_OK ? rc : BR_ERR_INVAL;
    }
    if (c->state == BR__HTTP_CONN_CLOSED) {
        br__http_conn_finish(c);
        return BR_ERR_CLOSED;
    }
    int rc = write_response(c, status, headers, n_headers, NULL, body);
    if (rc == BR_ERR_INVAL && c->state != BR__HTTP_CONN_CLOSED) {
        br_log(BR_LOG_ERR, req->id, "event=http_bad_response status=%d", status);
        write_error(c, 500, "server_error", "internal_error", NULL,
                    "the server produced an invalid response");
    }
    if (rc == BR_OK && c->state == BR__HTTP_CONN_CLOSED) {
        rc = BR_ERR_CLOSED;
    }
    br__http_conn_finish(c);
    return rc;
}

int br_http_respond_error(br_http_request *req, int status, const char *type, const char *code,
                          const char *param, const char *message)
{
    struct br__http_conn *c = conn_of(req);
    if (c->resp == BR__HTTP_RESP_STREAMING) {
        int rc = br_http_stream_end(req, NULL, 0);
        return rc != BR_OK ? rc : BR_ERR_INVAL;
    }
    if (c->state == BR__HTTP_CONN_CLOSED) {
        br__http_conn_finish(c);
        return BR_ERR_CLOSED;
    }
    int rc = write_error(c, status, type, code, param, message);
    if (rc == BR_ERR_INVAL && c->state != BR__HTTP_CONN_CLOSED) {
        write_error(c, 500, "server_error", "internal_error", NULL,
                    "the server produced an invalid response");
    }
    if (rc == BR_OK && c->state == BR__HTTP_CONN_CLOSED) {
        rc = BR_ERR_CLOSED;
    }
    br__http_conn_finish(c);
    return rc;
}

int br_http_stream_begin(br_http_request *req, int status, const struct br_http_header *headers,
                         size_t n_headers)
{
    struct br__http_conn *c = conn_of(req);
    if (c->resp != BR__HTTP_RESP_NONE || status < 200 || status > 599 ||
        !headers_ok(headers, n_headers)) {
        return BR_ERR_INVAL;
    }
    if (c->state == BR__HTTP_CONN_CLOSED) {
        return BR_ERR_CLOSED;
    }
    enum framing f = FRAME_NONE;
    c->stream_chunked = false;
    if (bodiless_status(status)) {
        c->head_only = true;
    } else if (req->http_minor >= 1) {
        f = FRAME_CHUNKED;
        c->stream_chunked = !c->head_only;
    } else if (!c->head_only) {
        /* HTTP/1.0: the body ends when the connection closes. */
        c->close_after = true;
    }
    int rc = build_head(c, status, headers, n_headers, NULL, f, 0);
    if (rc != BR_OK) {
        return rc == BR_ERR_LIMIT ? BR_ERR_INVAL : rc;
    }
    c->resp = BR__HTTP_RESP_STREAMING;
    /* The head waits for the body's first bytes (or the end) and leaves with them in one
     * write: one syscall and one packet fewer per streamed response. */
    br_buf_reset(&c->held);
    rc = br_buf_append(&c->held, c->w->out.ptr, c->w->out.len);
    if (rc != BR_OK) {
        uv_buf_t b = uv_buf_init(c->w->out.ptr, (unsigned)c->w->out.len);
        return br__http_conn_write(c, &b, 1);
    }
    return BR_OK;
}

/* Writes bufs[1..n) preceded by the held head, if any, in one write. bufs[0] is free for it. */
static int write_with_held(struct br__http_conn *c, uv_buf_t *bufs, unsigned n)
{
    if (c->held.len == 0) {
        return br__http_conn_write(c, bufs + 1, n - 1);
    }
    bufs[0] = uv_buf_init(c->held.ptr, (unsigned)c->held.len);
    int rc = br__http_conn_write(c, bufs, n);
    br_buf_reset(&c->held);
    return rc;
}

/* "<hex size>\r\n" for a chunk of n bytes; returns its length. */
static size_t chunk_size_line(size_t n, char out[24])
{
    static const char hex[] = "0123456789abcdef";
    char tmp[20];
    size_t k = 0;
    do {
        tmp[k++] = hex[n & 15];
        n >>= 4;
    } while (n);
    size_t len = 0;
    while (k) {
        out[len++] = tmp[--k];
    }
    out[len++] = '\r';
    out[len++] = '\n';
    return len;
}

int br_http_stream_write(br_http_request *req, const void *data, size_t n)
{
    struct br__http_conn *c = conn_of(req);
    if (c->resp != BR__HTTP_RESP_STREAMING || (n && !data)) {
        return BR_ERR_INVAL;
    }
    if (c->state == BR__HTTP_CONN_CLOSED) {
        return BR_ERR_CLOSED;
    }
    if (c->head_only) {
        return BR_OK;
    }
    if (n == 0) {
        if (c->held.len) {
            uv_buf_t none[1];
            return write_with_held(c, none, 1); /* an explicit empty write sends the head */
        }
        return BR_OK;
    }
    if (c->wq_bytes > c->w->lim.write_buffer_bytes) {
        /* The client does not read: drop it rather than buffer without bound. */
        br_log(BR_LOG_WARN, req->id, "event=http_slow_client peer=%s pending=%zu", c->peer,
               c->wq_bytes);
        c->overflowed = true;
        br__http_conn_close(c);
        return BR_ERR_CLOSED;
    }
    if (!c->stream_chunked) {
        uv_buf_t b[2];
        b[1] = uv_buf_init((char *)data, (unsigned)n);
        return write_with_held(c, b, 2);
    }
    char size_line[24];
    size_t k = chunk_size_line(n, size_line);
    uv_buf_t bufs[4];
    bufs[1] = uv_buf_init(size_line, (unsigned)k);
    bufs[2] = uv_buf_init((char *)data, (unsigned)n);
    bufs[3] = uv_buf_init((char *)"\r\n", 2);
    return write_with_held(c, bufs, 4);
}

bool br_http_stream_overflowed(const br_http_request *req)
{
    const struct br__http_conn *c =
        (const struct br__http_conn *)(const void *)((const char *)req -
                                                     offsetof(struct br__http_conn, req));
    return c->overflowed;
}

size_t br_http_stream_pending(const br_http_request *req)
{
    const struct br__http_conn *c =
        (const struct br__http_conn *)(const void *)((const char *)req -
                                                     offsetof(struct br__http_conn, req));
    return c->wq_bytes;
}

/* The terminal chunk and the trailers, built in the worker's output buffer. Invalid or too
 * large trailers are dropped (BR_ERR_INVAL) and the body still ends cleanly. */
static int last_chunk(struct br__http_conn *c, const struct br_http_header *trailers,
                      size_t n_trailers, uv_buf_t *out)
{
    int rc = BR_OK;
    if (!headers_ok(trailers, n_trailers)) {
        rc = BR_ERR_INVAL;
        n_trailers = 0;
    }
    struct br_buf *b = &c->w->out;
    br_buf_reset(b);
    int frc = br_buf_append(b, "0\r\n", 3);
    for (size_t i = 0; frc == BR_OK && i < n_trailers; i++) {
        if (reserved_name(trailers[i].name)) {
            continue;
        }
        frc = br_buf_append(b, trailers[i].name.ptr, trailers[i].name.len);
        frc = frc ? frc : br_buf_append(b, ": ", 2);
        frc = frc ? frc : br_buf_append(b, trailers[i].value.ptr, trailers[i].value.len);
        frc = frc ? frc : br_buf_append(b, "\r\n", 2);
    }
    if (frc != BR_OK) {
        /* Trailers too large: drop them, end the body cleanly. */
        rc = BR_ERR_INVAL;
        br_buf_reset(b);
        br_buf_append(b, "0\r\n", 3);
    }
    br_buf_append(b, "\r\n", 2);
    *out = uv_buf_init(b->ptr, (unsigned)b->len);
    return rc;
}

int br_http_stream_finish(br_http_request *req, const void *data, size_t n,
                          const struct br_http_header *trailers, size_t n_trailers)
{
    struct br__http_conn *c = conn_of(req);
    int rc = BR_OK;
    if (c->resp != BR__HTTP_RESP_STREAMING || (n && !data)) {
        /* Never begun: answer with an error so that the request still ends. */
        if (c->resp != BR__HTTP_RESP_STREAMING && c->state != BR__HTTP_CONN_CLOSED) {
            write_error(c, 500, "server_error", "internal_error", NULL,
                        "the server ended a response it never started");
        }
        br__http_conn_finish(c);
        return BR_ERR_INVAL;
    }
    if (c->state == BR__HTTP_CONN_CLOSED) {
        br__http_conn_finish(c);
        return BR_ERR_CLOSED;
    }
    if (c->head_only) {
        n = 0;
    }
    /* held head, last data chunk, terminal chunk and trailers: one write */
    uv_buf_t bufs[5];
    unsigned nb = 1;
    char size_line[24];
    if (!c->stream_chunked) {
        if (n) {
            bufs[nb++] = uv_buf_init((char *)data, (unsigned)n);
        }
    } else {
        if (n) {
            size_t k = chunk_size_line(n, size_line);
            bufs[nb++] = uv_buf_init(size_line, (unsigned)k);
            bufs[nb++] = uv_buf_init((char *)data, (unsigned)n);
            bufs[nb++] = uv_buf_init((char *)"\r\n", 2);
        }
        rc = last_chunk(c, trailers, n_trailers, &bufs[nb++]);
    }
    if (nb > 1 || c->held.len) {
        int wrc = write_with_held(c, bufs, nb);
        if (rc == BR_OK) {
            rc = wrc;
        }
    }
    if (rc == BR_OK && c->state == BR__HTTP_CONN_CLOSED) {
        rc = BR_ERR_CLOSED;
    }
    br__http_conn_finish(c);
    return rc;
}

int br_http_stream_end(br_http_request *req, const struct br_http_header *trailers,
                       size_t n_trailers)
{
    return br_http_stream_finish(req, NULL, 0, trailers, n_trailers);
}
