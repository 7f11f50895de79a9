/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 request parser: llhttp in strict mode (no lenient flag is ever set) wrapped with the
 * checks a gateway needs on top of it. A byte scanner runs over the head first and enforces the
 * size limits and the line grammar llhttp tolerates (obs-fold, empty names); the llhttp
 * callbacks copy the head, de-chunk the body and collect the framing headers; at the end of the
 * head the framing rules are applied (RFC 9112 section 6). Every rejection carries the status
 * and error code to answer with. The parser knows nothing about sockets, so unit tests and the
 * fuzz targets drive it directly.
 */
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "http/http_int.h"

/* Scanner states. */
enum {
    SC_LEAD = 0,    /* before the request line: empty lines are skipped */
    SC_LINE,        /* request line */
    SC_FIELD_START, /* first byte of a header line */
    SC_NAME,        /* field name, before the colon */
    SC_VALUE,       /* after the colon */
    SC_DONE,        /* head complete */
};

/* Which span callback ran last. */
enum {
    CB_NONE = 0,
    CB_METHOD,
    CB_TARGET,
    CB_FIELD,
    CB_VALUE,
};

/* Strict chunked framing, run beside llhttp (which accepts a bare LF after the last chunk). */
enum {
    CK_SIZE_START = 0,
    CK_SIZE,
    CK_EXT,
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER_START,
    CK_TRAILER_LINE,
    CK_TRAILER_LF,
    CK_END_LF,
};

/* A request body buffer larger than this is released after its request. */
#define BODY_KEEP_BYTES ((size_t)256 * 1024)
/* Longest x-request-id taken from a client. */
#define REQUEST_ID_MAX  128u

/* tchar (RFC 9110 section 5.6.2). */
static bool is_tchar(unsigned char c)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return true;
    }
    return c != 0 && strchr(extra, c) != NULL;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Bytes the scanner must look at one by one: NUL, LF and CR. */
static const unsigned char k_special[256] = {[0] = 1, ['\n'] = 1, ['\r'] = 1};

int br__http_parser_fail(struct br__http_parser *p, int status, const char *code,
                         const char *message)
{
    if (p->status == 0) {
        p->status = status;
        p->code = code;
        p->message = message;
    }
    p->phase = BR__HTTP_PHASE_ERROR;
    return BR_ERR_PARSE;
}

static int fail_bad(struct br__http_parser *p, const char *message)
{
    return br__http_parser_fail(p, 400, "bad_request", message);
}

static int fail_nomem(struct br__http_parser *p)
{
    return br__http_parser_fail(p, 503, "server_busy", "out of memory");
}

static int fail_head_too_large(struct br__http_parser *p, const char *message)
{
    return br__http_parser_fail(p, 431, "headers_too_large", message);
}

/* ---- scanner ---------------------------------------------------------------------------- */

/* Keeps the last sizeof(tail) bytes of the request line. */
static void tail_push(struct br__http_scan *s, const unsigned char *d, size_t n)
{
    size_t cap = sizeof(s->tail);
    if (n >= cap) {
        memcpy(s->tail, d + n - cap, cap);
        s->tail_len = (uint8_t)cap;
        return;
    }
    size_t keep = s->tail_len + n > cap ? cap - n : s->tail_len;
    memmove(s->tail, s->tail + s->tail_len - keep, keep);
    memcpy(s->tail + keep, d, n);
    s->tail_len = (uint8_t)(keep + n);
}

/* The request line ends in " HTTP/d.d": no HTTP/0.9 line, no RTSP or ICE on this port. */
static bool tail_is_http(const struct br__http_scan *s)
{
    const char *t = s->tail;
    return s->tail_len == sizeof(s->tail) && memcmp(t, " HTTP/", 6) == 0 && t[6] >= '0' &&
           t[6] <= '9' && t[7] == '.' && t[8] >= '0' && t[8] <= '9';
}

static int scan_line_end(struct br__http_parser *p, size_t i, size_t *head_end)
{
    struct br__http_scan *s = &p->scan;
    switch (s->state) {
    case SC_LEAD:
        /* An empty line before the request line (RFC 9112 section 2.2 allows ignoring it). */
        s->line_bytes += 2;
        if (s->line_bytes > p->lim.request_line_bytes) {
            return fail_bad(p, "too many empty lines before the request line");
        }
        return BR_AGAIN;
    case SC_LINE:
        if (!tail_is_http(s)) {
            return fail_bad(p, "the request line must end with HTTP/1.0 or HTTP/1.1");
        }
        s->state = SC_FIELD_START;
        return BR_AGAIN;
    case SC_FIELD_START:
        s->state = SC_DONE;
        *head_end = i + 1;
        return BR_OK;
    case SC_NAME:
        return fail_bad(p, "header field line without a colon");
    default:
        s->state = SC_FIELD_START;
        return BR_AGAIN;
    }
}

static int scan_count_head(struct br__http_parser *p, size_t n)
{
    p->scan.head_bytes += n;
    if (p->scan.head_bytes > p->lim.header_bytes) {
        return fail_head_too_large(p, "request header block too large");
    }
    return BR_OK;
}

static int scan_line_byte(struct br__http_parser *p, unsigned char c)
{
    struct br__http_scan *s = &p->scan;
    if (++s->line_bytes > p->lim.request_line_bytes) {
        return br__http_parser_fail(p, 414, "uri_too_long", "request line too long");
    }
    tail_push(s, &c, 1);
    if (!s->method_ended) {
        if (c == ' ') {
            s->method_ended = true;
        } else if (!is_tchar(c)) {
            s->method_token = false;
        }
    }
    return BR_OK;
}

static int scan_field_byte(struct br__http_parser *p, unsigned char c)
{
    struct br__http_scan *s = &p->scan;
    if (s->state == SC_FIELD_START) {
        if (c == ' ' || c == '\t') {
            return fail_bad(p, "obsolete line folding or whitespace before a header name");
        }
        if (c == ':') {
            return fail_bad(p, "empty header name");
        }
        if (++s->n_fields > p->lim.header_fields) {
            return fail_head_too_large(p, "too many header fields");
        }
        s->state = SC_NAME;
    } else if (s->state == SC_NAME) {
        if (c == ':') {
            s->state = SC_VALUE;
        } else if (c == ' ' || c == '\t') {
            return fail_bad(p, "whitespace before the colon of a header field");
        }
    }
    return scan_count_head(p, 1);
}

/*
 * Fast path over a run of ordinary bytes (no NUL, CR or LF) in a header value or in the
 * request line after the method. On a limit error *stop is the exact byte that crossed it.
 */
static int scan_run(struct br__http_parser *p, const unsigned char *d, size_t i, size_t j,
                    size_t *stop)
{
    struct br__http_scan *s = &p->scan;
    size_t run = j - i;
    if (s->state == SC_VALUE) {
        size_t room = p->lim.header_bytes - s->head_bytes; /* head_bytes <= limit here */
        if (run > room) {
            *stop = i + room;
            return fail_head_too_large(p, "request header block too large");
        }
        s->head_bytes += run;
        return BR_OK;
    }
    size_t room = p->lim.request_line_bytes - s->line_bytes;
    if (run > room) {
        *stop = i + room;
        return br__http_parser_fail(p, 414, "uri_too_long", "request line too long");
    }
    tail_push(s, d + i, run);
    s->line_bytes += run;
    return BR_OK;
}

/* CR, LF or NUL, or the byte after a CR. BR_AGAIN to go on, BR_OK at the end of the head. */
static int scan_special(struct br__http_parser *p, unsigned char c, size_t i, size_t *head_end)
{
    struct br__http_scan *s = &p->scan;
    if (s->cr) {
        if (c != '\n') {
            return fail_bad(p, "CR not followed by LF");
        }
        s->cr = false;
        return scan_line_end(p, i, head_end);
    }
    if (c == '\n') {
        return fail_bad(p, "bare LF as a line end");
    }
    if (c == 0) {
        return fail_bad(p, "NUL byte in the request head");
    }
    s->cr = true;
    if (s->state >= SC_FIELD_START && scan_count_head(p, 2) != BR_OK) {
        return BR_ERR_PARSE;
    }
    return BR_AGAIN;
}

/*
 * Scans head bytes. BR_AGAIN: all n bytes belong to the head and it is not complete; BR_OK:
 * the head ends at *head_end; BR_ERR_PARSE: rejected because of the byte at *stop.
 */
static int scan_head(struct br__http_parser *p, const unsigned char *d, size_t n, size_t *head_end,
                     size_t *stop)
{
    struct br__http_scan *s = &p->scan;
    int rc = BR_AGAIN;
    size_t i = 0;
    for (; i < n && rc == BR_AGAIN; i++) {
        unsigned char c = d[i];
        if (s->cr || k_special[c]) {
            rc = scan_special(p, c, i, head_end);
            continue;
        }
        if (s->state == SC_LEAD) {
            s->state = SC_LINE;
        }
        if (s->state == SC_VALUE || (s->state == SC_LINE && s->method_ended)) {
            size_t j = i;
            while (j < n && !k_special[d[j]]) {
                j++;
            }
            if (scan_run(p, d, i, j, stop) != BR_OK) {
                return BR_ERR_PARSE;
            }
            i = j - 1;
            continue;
        }
        if ((s->state == SC_LINE ? scan_line_byte(p, c) : scan_field_byte(p, c)) != BR_OK) {
            rc = BR_ERR_PARSE;
        }
    }
    /* The loop stepped past the byte that decided. */
    *stop = rc == BR_AGAIN ? i : i - 1;
    return rc;
}

/* ---- llhttp callbacks ------------------------------------------------------------------- */

static struct br__http_parser *parser_of(llhttp_t *ll)
{
    return ll->data;
}

static int append_head(struct br__http_parser *p, const char *at, size_t len)
{
    int rc = br_buf_append(&p->head, at, len);
    if (rc == BR_ERR_LIMIT) {
        fail_head_too_large(p, "request header block too large");
        return -1;
    }
    if (rc != BR_OK) {
        fail_nomem(p);
        return -1;
    }
    return 0;
}

static int on_method(llhttp_t *ll, const char *at, size_t len)
{
    struct br__http_parser *p = parser_of(ll);
    if (p->last_cb != CB_METHOD) {
        p->method_off = (uint32_t)p->head.len;
        p->method_len = 0;
    }
    p->last_cb = CB_METHOD;
    p->method_len += (uint32_t)len;
    return append_head(p, at, len);
}

static int on_url(llhttp_t *ll, const char *at, size_t len)
{
    struct br__http_parser *p = parser_of(ll);
    if (p->last_cb != CB_TARGET) {
        p->target_off = (uint32_t)p->head.len;
        p->target_len = 0;
    }
    p->last_cb = CB_TARGET;
    p->target_len += (uint32_t)len;
    return append_head(p, at, len);
}

/*
 * Trailer limits are checked when a name or a value is complete (not per span), so that the
 * verdict does not depend on where the input was cut: llhttp has validated the bytes by then.
 */
static int trailer_account(struct br__http_parser *p, size_t extra, bool new_field)
{
    if (new_field && ++p->n_trailer_fields > p->lim.header_fields) {
        fail_head_too_large(p, "too many trailer fields");
        return -1;
    }
    p->trailer_bytes += p->trailer_span + extra;
    p->trailer_span = 0;
    if (p->trailer_bytes > p->lim.header_bytes) {
        fail_head_too_large(p, "trailer section too large");
        return -1;
    }
    return 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t len)
{
    struct br__http_parser *p = parser_of(ll);
    bool new_field = p->last_cb != CB_FIELD;
    p->last_cb = CB_FIELD;
    if (p->in_trailers) {
        p->trailer_span += len;
        return 0;
    }
    if (new_field) {
        if (p->n_fields >= p->lim.header_fields) {
            fail_head_too_large(p, "too many header fields");
            return -1;
        }
        if (p->n_fields == p->cap_fields) {
            size_t ncap = p->cap_fields ? p->cap_fields * 2 : 16;
            struct br__http_field *nf = br_realloc(p->fields, ncap * sizeof(*nf));
            if (!nf) {
                fail_nomem(p);
                return -1;
            }
            p->fields = nf;
            p->cap_fields = ncap;
        }
        struct br__http_field *f = &p->fields[p->n_fields++];
        f->name_off = (uint32_t)p->head.len;
        f->name_len = 0;
        f->value_off = 0;
        f->value_len = 0;
    }
    p->fields[p->n_fields - 1].name_len += (uint32_t)len;
    return append_head(p, at, len);
}

static int on_header_field_complete(llhttp_t *ll)
{
    struct br__http_parser *p = parser_of(ll);
    if (p->in_trailers) {
        /* name, ": " and CRLF; OWS is not counted (it never reaches a span). */
        return trailer_account(p, 4, true);
    }
    if (p->n_fields) {
        struct br__http_field *f = &p->fields[p->n_fields - 1];
        f->value_off = (uint32_t)p->head.len;
        f->value_len = 0;
    }
    return 0;
}

/* NUL, CR or LF inside a value span: only trailers can get here (the scanner guards the head). */
static bool value_has_ctl(const char *at, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)at[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return true;
        }
    }
    return false;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t len)
{
    struct br__http_parser *p = parser_of(ll);
    if (p->last_cb == CB_VALUE && !p->value_split) {
        /*
         * A second span for the same value that did not come from the input being cut: llhttp
         * joined a folded line (obs-fold). The head scanner rejects that earlier; this catches
         * it in trailers.
         */
        fail_bad(p, "obsolete line folding");
        return -1;
    }
    p->last_cb = CB_VALUE;
    p->value_split = at + len == p->exec_end;
    if (p->in_trailers) {
        if (value_has_ctl(at, len)) {
            fail_bad(p, "control character in a trailer field");
            return -1;
        }
        p->trailer_span += len;
        return 0;
    }
    p->fields[p->n_fields - 1].value_len += (uint32_t)len;
    return append_head(p, at, len);
}

static struct br_slice field_name(const struct br__http_parser *p, const struct br__http_field *f)
{
    return br_slice_make(p->head.ptr + f->name_off, f->name_len);
}

static struct br_slice field_value(const struct br__http_parser *p, const struct br__http_field *f)
{
    if (f->value_len == 0) {
        return br_slice_make("", 0);
    }
    return br_slice_trim(br_slice_make(p->head.ptr + f->value_off, f->value_len));
}

static int on_header_value_complete(llhttp_t *ll)
{
    struct br__http_parser *p = parser_of(ll);
    p->last_cb = CB_NONE;
    p->value_split = false;
    if (p->in_trailers) {
        return trailer_account(p, 0, false);
    }
    if (p->n_fields == 0) {
        return 0;
    }
    int idx = (int)p->n_fields - 1;
    struct br_slice name = field_name(p, &p->fields[idx]);
    switch (name.len) {
    case 4:
        if (br_slice_case_eq_cstr(name, "host")) {
            p->n_host++;
        }
        break;
    case 6:
        if (br_slice_case_eq_cstr(name, "expect") && p->i_expect < 0) {
            p->i_expect = idx;
        }
        break;
    case 12:
        if (br_slice_case_eq_cstr(name, "x-request-id") && p->i_request_id < 0) {
            p->i_request_id = idx;
        }
        break;
    case 14:
        if (br_slice_case_eq_cstr(name, "content-length")) {
            p->n_content_length++;
            p->i_content_length = idx;
        }
        break;
    case 17:
        if (br_slice_case_eq_cstr(name, "transfer-encoding")) {
            p->n_transfer_encoding++;
            p->i_transfer_encoding = idx;
        }
        break;
    default:
        break;
    }
    return 0;
}

/* Skips optional whitespace. */
static size_t skip_ows(struct br_slice v, size_t i)
{
    while (i < v.len && (v.ptr[i] == ' ' || v.ptr[i] == '\t')) {
        i++;
    }
    return i;
}

static size_t skip_token(struct br_slice v, size_t i)
{
    while (i < v.len && is_tchar((unsigned char)v.ptr[i])) {
        i++;
    }
    return i;
}

/* quoted-string (RFC 9110 section 5.6.4); returns the index after it or 0 when malformed. */
static size_t skip_quoted(struct br_slice v, size_t i)
{
    i++; /* opening quote */
    while (i < v.len) {
        unsigned char c = (unsigned char)v.ptr[i];
        if (c == '"') {
            return i + 1;
        }
        if (c == '\\') {
            if (i + 1 >= v.len) {
                return 0;
            }
            i += 2;
            continue;
        }
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return 0;
        }
        i++;
    }
    return 0;
}

/* One transfer-coding's parameters: *( OWS ";" OWS token "=" ( token / quoted-string ) ). */
static int te_params(struct br_slice v, size_t *pi, bool *has_params)
{
    size_t i = *pi;
    for (;;) {
        size_t j = skip_ows(v, i);
        if (j >= v.len || v.ptr[j] != ';') {
            *pi = i;
            return BR_OK;
        }
        *has_params = true;
        j = skip_ows(v, j + 1);
        size_t k = skip_token(v, j);
        if (k == j) {
            return BR_ERR_PARSE;
        }
        k = skip_ows(v, k);
        if (k >= v.len || v.ptr[k] != '=') {
            return BR_ERR_PARSE;
        }
        k = skip_ows(v, k + 1);
        if (k < v.len && v.ptr[k] == '"') {
            k = skip_quoted(v, k);
            if (k == 0) {
                return BR_ERR_PARSE;
            }
        } else {
            size_t e = skip_token(v, k);
            if (e == k) {
                return BR_ERR_PARSE;
            }
            k = e;
        }
        i = k;
    }
}

/* What a Transfer-Encoding field value says. */
enum te_kind {
    TE_CHUNKED = 0, /* exactly "chunked" */
    TE_MALFORMED,   /* not a list of transfer-codings */
    TE_UNKNOWN,     /* well-formed, names a coding other than chunked */
    TE_BAD_CHUNKED, /* only chunked, but repeated or with parameters */
};

/* Classifies one Transfer-Encoding value (RFC 9112 section 6.1, RFC 9110 section 5.6.1). */
static enum te_kind te_classify(struct br_slice v)
{
    v = br_slice_trim(v);
    if (br_slice_case_eq_cstr(v, "chunked")) {
        return TE_CHUNKED;
    }
    bool unknown = false;
    bool has_params = false;
    size_t i = 0;
    for (;;) {
        i = skip_ows(v, i);
        size_t e = skip_token(v, i);
        if (e == i) {
            return TE_MALFORMED;
        }
        if (!br_slice_case_eq_cstr(br_slice_make(v.ptr + i, e - i), "chunked")) {
            unknown = true;
        }
        i = e;
        if (te_params(v, &i, &has_params) != BR_OK) {
            return TE_MALFORMED;
        }
        i = skip_ows(v, i);
        if (i == v.len) {
            break;
        }
        if (v.ptr[i] != ',') {
            return TE_MALFORMED;
        }
        i++;
    }
    return unknown ? TE_UNKNOWN : TE_BAD_CHUNKED;
}

/*
 * All Transfer-Encoding fields together (several field lines form one list): BR_OK when the
 * list is exactly "chunked", 501 when it is well-formed but names a coding we do not
 * implement, 400 otherwise (malformed, chunked twice, chunked with parameters).
 */
static int te_check(const struct br__http_parser *p)
{
    bool malformed = false;
    bool unknown = false;
    unsigned n_chunked = 0;
    for (size_t i = 0; i < p->n_fields; i++) {
        struct br_slice name = field_name(p, &p->fields[i]);
        if (name.len != 17 || !br_slice_case_eq_cstr(name, "transfer-encoding")) {
            continue;
        }
        switch (te_classify(field_value(p, &p->fields[i]))) {
        case TE_CHUNKED:
            n_chunked++;
            break;
        case TE_MALFORMED:
            malformed = true;
            break;
        case TE_UNKNOWN:
            unknown = true;
            break;
        default:
            n_chunked += 2;
            break;
        }
    }
    if (malformed) {
        return 400;
    }
    if (unknown) {
        return 501;
    }
    return n_chunked == 1 ? BR_OK : 400;
}

static int check_version_method(struct br__http_parser *p, llhttp_t *ll)
{
    if (ll->http_major != 1 || ll->http_minor > 1) {
        if (ll->http_major == 0) {
            return fail_bad(p, "HTTP/0.9 requests are not supported");
        }
        return br__http_parser_fail(p, 505, "http_version_not_supported",
                                    "only HTTP/1.0 and HTTP/1.1 are supported on this port");
    }
    if (ll->method == HTTP_CONNECT) {
        return br__http_parser_fail(p, 501, "not_implemented", "CONNECT is not supported");
    }
    if (ll->method == HTTP_PRI) {
        return br__http_parser_fail(p, 501, "not_implemented", "PRI is not supported");
    }
    if (p->method_len == 0 || p->target_len == 0) {
        return fail_bad(p, "malformed request line");
    }
    return BR_OK;
}

static int check_framing(struct br__http_parser *p, llhttp_t *ll)
{
    if (p->n_host > 1) {
        return fail_bad(p, "more than one Host field");
    }
    if (p->n_content_length > 1) {
        return fail_bad(p, "more than one Content-Length field");
    }
    if (p->n_content_length == 1) {
        struct br_slice v = field_value(p, &p->fields[p->i_content_length]);
        unsigned long long n = 0;
        if (v.len == 0) {
            return fail_bad(p, "empty Content-Length");
        }
        if (br_slice_to_u64(v, UINT64_MAX, &n) != BR_OK || !(ll->flags & F_CONTENT_LENGTH) ||
            n != ll->content_length) {
            return fail_bad(p, "invalid Content-Length");
        }
        p->content_length = n;
    }
    if (p->n_transfer_encoding) {
        if (p->n_content_length) {
            return fail_bad(p, "Content-Length together with Transfer-Encoding");
        }
        if (ll->http_minor == 0) {
            return fail_bad(p, "Transfer-Encoding in an HTTP/1.0 request");
        }
        int st = te_check(p);
        if (st == 501) {
            return br__http_parser_fail(p, 501, "not_implemented",
                                        "unsupported transfer coding; only chunked is accepted");
        }
        if (st != BR_OK || !(ll->flags & F_CHUNKED)) {
            return fail_bad(p, "malformed Transfer-Encoding");
        }
        p->chunked = true;
        p->content_length = 0;
    }
    return BR_OK;
}

static int on_headers_complete(llhttp_t *ll)
{
    struct br__http_parser *p = parser_of(ll);
    if (check_version_method(p, ll) != BR_OK || check_framing(p, ll) != BR_OK) {
        return -1;
    }
    if (p->i_expect >= 0 && ll->http_minor == 1) {
        /* RFC 9110 section 10.1.1; an HTTP/1.0 expectation is ignored. */
        if (!br_slice_case_eq_cstr(field_value(p, &p->fields[p->i_expect]), "100-continue")) {
            br__http_parser_fail(p, 417, "expectation_failed", "unsupported expectation");
            return -1;
        }
        p->expect_continue = true;
    }
    if (p->content_length > p->lim.body_bytes) {
        br__http_parser_fail(p, 413, "request_too_large", "request body too large");
        return -1;
    }
    p->keep_alive = llhttp_should_keep_alive(ll) != 0;
    /* Protocol upgrades are not supported: the Upgrade field is ignored (RFC 9110 7.8). */
    ll->upgrade = 0;
    if (p->content_length && br_buf_reserve(&p->body, (size_t)p->content_length) != BR_OK) {
        fail_nomem(p);
        return -1;
    }
    if (p->chunked || p->content_length) {
        p->phase = BR__HTTP_PHASE_BODY;
    }
    p->last_cb = CB_NONE;
    return 0;
}

static int on_chunk_header(llhttp_t *ll)
{
    struct br__http_parser *p = parser_of(ll);
    uint64_t n = ll->content_length;
    if (n == 0) {
        p->in_trailers = true;
        p->last_cb = CB_NONE;
        return 0;
    }
    if (n > p->lim.body_bytes - p->body.len) {
        br__http_parser_fail(p, 413, "request_too_large", "request body too large");
        return -1;
    }
    return 0;
}

static int on_body(llhttp_t *ll, const char *at, size_t len)
{
    struct br__http_parser *p = parser_of(ll);
    int rc = br_buf_append(&p->body, at, len);
    if (rc == BR_ERR_LIMIT) {
        br__http_parser_fail(p, 413, "request_too_large", "request body too large");
        return -1;
    }
    if (rc != BR_OK) {
        fail_nomem(p);
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *ll)
{
    struct br__http_parser *p = parser_of(ll);
    p->phase = BR__HTTP_PHASE_DONE;
    return HPE_PAUSED;
}

static const llhttp_settings_t k_settings = {
    .on_method = on_method,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_chunk_header = on_chunk_header,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- public (subsystem) API -------------------------------------------------------------- */

void br__http_parser_init(struct br__http_parser *p)
{
    memset(p, 0, sizeof(*p));
    br_buf_init(&p->head, 0);
    br_buf_init(&p->body, 0);
    llhttp_init(&p->ll, HTTP_REQUEST, &k_settings);
    p->ll.data = p;
    p->phase = BR__HTTP_PHASE_ERROR; /* begin() must run first */
    p->i_content_length = -1;
    p->i_transfer_encoding = -1;
    p->i_expect = -1;
    p->i_request_id = -1;
}

void br__http_parser_cleanup(struct br__http_parser *p)
{
    br_buf_cleanup(&p->head);
    br_buf_cleanup(&p->body);
    br_free(p->fields);
    p->fields = NULL;
    p->cap_fields = 0;
    p->n_fields = 0;
}

void br__http_parser_begin(struct br__http_parser *p, const struct br_http_limits *lim)
{
    if (p->phase == BR__HTTP_PHASE_DONE) {
        llhttp_resume(&p->ll);
    } else {
        llhttp_init(&p->ll, HTTP_REQUEST, &k_settings);
        p->ll.data = p;
    }
    p->lim = *lim;
    memset(&p->scan, 0, sizeof(p->scan));
    p->scan.method_token = true;
    p->phase = BR__HTTP_PHASE_HEAD;
    br_buf_reset(&p->head);
    p->head.max = lim->request_line_bytes + lim->header_bytes;
    if (p->body.cap > BODY_KEEP_BYTES) {
        br_buf_cleanup(&p->body);
    }
    br_buf_reset(&p->body);
    p->body.max = lim->body_bytes;
    p->n_fields = 0;
    p->method_off = p->method_len = 0;
    p->target_off = p->target_len = 0;
    p->last_cb = CB_NONE;
    p->value_split = false;
    p->exec_end = NULL;
    p->n_content_length = 0;
    p->n_transfer_encoding = 0;
    p->n_host = 0;
    p->i_content_length = -1;
    p->i_transfer_encoding = -1;
    p->i_expect = -1;
    p->i_request_id = -1;
    p->chunked = false;
    p->keep_alive = false;
    p->expect_continue = false;
    p->in_trailers = false;
    p->method_unknown = false;
    p->content_length = 0;
    p->trailer_bytes = 0;
    p->trailer_span = 0;
    p->n_trailer_fields = 0;
    p->ck_state = CK_SIZE_START;
    p->ck_size = 0;
    p->status = 0;
    p->code = NULL;
    p->message = NULL;
}

/* A rejection, set aside while llhttp gets to look at the bytes before it. */
struct saved_error {
    int status;
    const char *code;
    const char *message;
};

static struct saved_error take_error(struct br__http_parser *p)
{
    struct saved_error e = {p->status, p->code, p->message};
    p->status = 0;
    p->code = NULL;
    p->message = NULL;
    return e;
}

static int put_error(struct br__http_parser *p, struct saved_error e)
{
    return br__http_parser_fail(p, e.status, e.code, e.message);
}

/*
 * llhttp refused the method. A well-formed token it does not know gets 501 (RFC 9110 section
 * 9.1), anything else 400; BR_AGAIN while the scanner has not yet seen the end of the method.
 */
static int method_verdict(struct br__http_parser *p)
{
    if (!p->scan.method_token) {
        return fail_bad(p, "invalid request method");
    }
    if (p->scan.method_ended) {
        return br__http_parser_fail(p, 501, "not_implemented", "unknown request method");
    }
    return BR_AGAIN;
}

/* Status for an error llhttp found on its own; BR_AGAIN when the verdict must wait. */
static int map_llhttp_error(struct br__http_parser *p, llhttp_errno_t e)
{
    switch (e) {
    case HPE_INVALID_METHOD: {
        int rc = method_verdict(p);
        if (rc == BR_AGAIN) {
            p->method_unknown = true;
        }
        return rc;
    }
    case HPE_PAUSED_H2_UPGRADE:
        return br__http_parser_fail(p, 505, "http_version_not_supported",
                                    "HTTP/2 is not supported on this port");
    case HPE_PAUSED_UPGRADE:
        return br__http_parser_fail(p, 501, "not_implemented",
                                    "protocol upgrades are not supported");
    default: {
        const char *reason = llhttp_get_error_reason(&p->ll);
        return fail_bad(p, reason && *reason ? reason : "malformed request");
    }
    }
}

static int error_rc(const struct br__http_parser *p)
{
    return p->status == 503 ? BR_ERR_NOMEM : BR_ERR_PARSE;
}

/*
 * Runs llhttp over data[0, len). BR_AGAIN: all bytes taken; BR_OK: the message is complete and
 * *used bytes belong to it; otherwise the message is rejected.
 */
static int exec_ll(struct br__http_parser *p, const char *data, size_t len, size_t *used)
{
    *used = 0;
    if (len == 0) {
        return BR_AGAIN;
    }
    p->exec_end = data + len;
    llhttp_errno_t e = llhttp_execute(&p->ll, data, len);
    if (e == HPE_OK && p->phase != BR__HTTP_PHASE_ERROR) {
        *used = len;
        return BR_AGAIN;
    }
    const char *pos = llhttp_get_error_pos(&p->ll);
    if (e == HPE_PAUSED && p->phase == BR__HTTP_PHASE_DONE) {
        *used = (size_t)(pos - data);
        return BR_OK;
    }
    if (p->status == 0 && map_llhttp_error(p, e) == BR_AGAIN) {
        *used = len;
        return BR_AGAIN;
    }
    p->phase = BR__HTTP_PHASE_ERROR;
    *used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
    return error_rc(p);
}

/*
 * One of our own checks rejected the byte at `stop`. llhttp first parses the bytes before it,
 * so that whichever error comes first in the input wins, however the input was split.
 */
static int own_error(struct br__http_parser *p, enum br__http_phase phase, const char *data,
                     size_t stop, size_t *consumed)
{
    struct saved_error se = take_error(p);
    p->phase = phase;
    size_t used = 0;
    int rc = exec_ll(p, data, stop, &used);
    if (rc == BR_AGAIN || rc == BR_OK) {
        /* llhttp found nothing wrong before that byte: our verdict stands. */
        p->status = 0;
        put_error(p, se);
        used = stop;
    }
    p->phase = BR__HTTP_PHASE_ERROR;
    *consumed = used;
    return error_rc(p);
}

/* Chunk-size line: 1*HEXDIG [ ";" ext ] CRLF (llhttp checks the extension grammar). */
static int chunk_size_byte(struct br__http_parser *p, unsigned char c)
{
    int v = hexval(c);
    switch (p->ck_state) {
    case CK_SIZE_START:
        if (v < 0) {
            return BR_ERR_PARSE;
        }
        p->ck_size = (uint64_t)v;
        p->ck_state = CK_SIZE;
        return BR_AGAIN;
    case CK_SIZE:
        if (v >= 0) {
            if (p->ck_size >> 60) {
                return BR_ERR_PARSE;
            }
            p->ck_size = p->ck_size * 16 + (uint64_t)v;
            return BR_AGAIN;
        }
        if (c != ';' && c != '\r') {
            return BR_ERR_PARSE;
        }
        p->ck_state = c == ';' ? CK_EXT : CK_SIZE_LF;
        return BR_AGAIN;
    case CK_EXT:
        if (c == '\n' || c == 0) {
            return BR_ERR_PARSE;
        }
        if (c == '\r') {
            p->ck_state = CK_SIZE_LF;
        }
        return BR_AGAIN;
    default: /* CK_SIZE_LF */
        if (c != '\n') {
            return BR_ERR_PARSE;
        }
        p->ck_state = p->ck_size ? CK_DATA : CK_TRAILER_START;
        return BR_AGAIN;
    }
}

/* Trailer section: *( field-line CRLF ) CRLF, strict line ends; BR_OK after the last LF. */
static int chunk_trailer_byte(struct br__http_parser *p, unsigned char c)
{
    switch (p->ck_state) {
    case CK_TRAILER_START:
        if (c == '\r') {
            p->ck_state = CK_END_LF;
            return BR_AGAIN;
        }
        if (c == '\n' || c == 0 || c == ' ' || c == '\t') {
            return BR_ERR_PARSE;
        }
        p->ck_state = CK_TRAILER_LINE;
        return BR_AGAIN;
    case CK_TRAILER_LINE:
        if (c == '\n' || c == 0) {
            return BR_ERR_PARSE;
        }
        if (c == '\r') {
            p->ck_state = CK_TRAILER_LF;
        }
        return BR_AGAIN;
    case CK_TRAILER_LF:
        p->ck_state = CK_TRAILER_START;
        return c == '\n' ? BR_AGAIN : BR_ERR_PARSE;
    default: /* CK_END_LF */
        return c == '\n' ? BR_OK : BR_ERR_PARSE;
    }
}

static int chunk_byte(struct br__http_parser *p, unsigned char c)
{
    switch (p->ck_state) {
    case CK_DATA_CR:
        p->ck_state = CK_DATA_LF;
        return c == '\r' ? BR_AGAIN : BR_ERR_PARSE;
    case CK_DATA_LF:
        p->ck_state = CK_SIZE_START;
        return c == '\n' ? BR_AGAIN : BR_ERR_PARSE;
    case CK_SIZE_START:
    case CK_SIZE:
    case CK_EXT:
    case CK_SIZE_LF:
        return chunk_size_byte(p, c);
    default:
        return chunk_trailer_byte(p, c);
    }
}

/*
 * BR_AGAIN: all n bytes fit the framing so far; BR_OK: the body ends after *at bytes;
 * BR_ERR_PARSE: the byte at *at breaks it.
 */
static int chunk_scan(struct br__http_parser *p, const unsigned char *d, size_t n, size_t *at)
{
    for (size_t i = 0; i < n; i++) {
        if (p->ck_state == CK_DATA) {
            size_t take = n - i < p->ck_size ? n - i : (size_t)p->ck_size;
            p->ck_size -= take;
            i += take - 1;
            if (p->ck_size == 0) {
                p->ck_state = CK_DATA_CR;
            }
            continue;
        }
        int rc = chunk_byte(p, d[i]);
        if (rc != BR_AGAIN) {
            *at = rc == BR_OK ? i + 1 : i;
            return rc;
        }
    }
    *at = n;
    return BR_AGAIN;
}

/* Body bytes of a chunked message: our framing check and llhttp must agree on its end. */
static int feed_chunked(struct br__http_parser *p, const char *data, size_t len, size_t *consumed)
{
    size_t at = 0;
    int v = chunk_scan(p, (const unsigned char *)data, len, &at);
    if (v == BR_ERR_PARSE) {
        fail_bad(p, "malformed chunked body");
        return own_error(p, BR__HTTP_PHASE_BODY, data, at, consumed);
    }
    size_t used = 0;
    int rc = exec_ll(p, data, at, &used);
    *consumed = used;
    if (rc != BR_AGAIN && rc != BR_OK) {
        return rc;
    }
    if ((v == BR_OK) != (rc == BR_OK) || used != at) {
        return fail_bad(p, "ambiguous chunked body framing");
    }
    return rc;
}

int br__http_parser_feed(struct br__http_parser *p, const char *data, size_t len, size_t *consumed)
{
    *consumed = 0;
    if (p->phase == BR__HTTP_PHASE_ERROR) {
        return error_rc(p);
    }
    if (p->phase == BR__HTTP_PHASE_DONE) {
        return BR_OK;
    }
    if (len == 0) {
        return BR_AGAIN;
    }
    size_t off = 0;
    if (p->phase == BR__HTTP_PHASE_HEAD && p->scan.state != SC_DONE) {
        size_t head_end = len;
        size_t stop = len;
        int rc = scan_head(p, (const unsigned char *)data, len, &head_end, &stop);
        if (p->method_unknown) {
            /* llhttp has given up already (at an earlier byte): the method decides. */
            struct saved_error se = take_error(p);
            int v = method_verdict(p);
            if (v == BR_AGAIN && rc == BR_ERR_PARSE) {
                v = put_error(p, se);
            }
            *consumed = len;
            p->phase = v == BR_AGAIN ? BR__HTTP_PHASE_HEAD : BR__HTTP_PHASE_ERROR;
            return v;
        }
        if (rc == BR_ERR_PARSE) {
            return own_error(p, BR__HTTP_PHASE_HEAD, data, stop, consumed);
        }
        size_t lim = rc == BR_OK ? head_end : len;
        size_t used = 0;
        rc = exec_ll(p, data, lim, &used);
        *consumed = used;
        if (rc != BR_AGAIN || p->method_unknown) {
            return rc;
        }
        if (lim == len) {
            return BR_AGAIN;
        }
        off = lim;
        if (p->phase != BR__HTTP_PHASE_BODY) {
            /* llhttp does not end the head where the scanner did: only the HTTP/2 preface
             * ("PRI * HTTP/2.0" CRLF CRLF "SM") does that; let llhttp judge the rest. */
            rc = exec_ll(p, data + off, len - off, &used);
            *consumed = off + used;
            return rc;
        }
    }
    size_t used = 0;
    int rc;
    if (p->phase == BR__HTTP_PHASE_BODY && p->chunked) {
        rc = feed_chunked(p, data + off, len - off, &used);
    } else {
        rc = exec_ll(p, data + off, len - off, &used);
    }
    *consumed = off + used;
    return rc;
}

bool br__http_parser_wants_body(const struct br__http_parser *p)
{
    return p->phase == BR__HTTP_PHASE_BODY;
}

static enum br_http_method map_method(uint8_t m)
{
    switch (m) {
    case HTTP_GET:
        return BR_HTTP_METHOD_GET;
    case HTTP_HEAD:
        return BR_HTTP_METHOD_HEAD;
    case HTTP_POST:
        return BR_HTTP_METHOD_POST;
    case HTTP_PUT:
        return BR_HTTP_METHOD_PUT;
    case HTTP_DELETE:
        return BR_HTTP_METHOD_DELETE;
    case HTTP_PATCH:
        return BR_HTTP_METHOD_PATCH;
    case HTTP_OPTIONS:
        return BR_HTTP_METHOD_OPTIONS;
    default:
        return BR_HTTP_METHOD_OTHER;
    }
}

int br__http_parser_fill(const struct br__http_parser *p, br_arena *arena,
                         struct br_http_request *req)
{
    req->method = map_method(p->ll.method);
    req->method_name = br_slice_make(p->head.ptr + p->method_off, p->method_len);
    req->target = br_slice_make(p->head.ptr + p->target_off, p->target_len);
    const char *q = memchr(req->target.ptr, '?', req->target.len);
    if (q) {
        req->path = br_slice_make(req->target.ptr, (size_t)(q - req->target.ptr));
        req->query = br_slice_make(q + 1, req->target.len - req->path.len - 1);
    } else {
        req->path = req->target;
        req->query = br_slice_make("", 0);
    }
    req->http_minor = p->ll.http_minor;
    struct br_http_header *h = NULL;
    if (p->n_fields) {
        h = br_arena_alloc(arena, p->n_fields * sizeof(*h));
        if (!h) {
            return BR_ERR_NOMEM;
        }
        for (size_t i = 0; i < p->n_fields; i++) {
            h[i].name = field_name(p, &p->fields[i]);
            h[i].value = field_value(p, &p->fields[i]);
        }
    }
    req->headers = h;
    req->n_headers = p->n_fields;
    req->body = p->body.len ? br_slice_make(p->body.ptr, p->body.len) : br_slice_make("", 0);
    return BR_OK;
}

struct br_slice br__http_parser_request_id(const struct br__http_parser *p)
{
    if (p->i_request_id < 0 || (size_t)p->i_request_id >= p->n_fields || !p->head.ptr) {
        return br_slice_make(NULL, 0);
    }
    struct br_slice v = field_value(p, &p->fields[p->i_request_id]);
    if (v.len == 0 || v.len > REQUEST_ID_MAX) {
        return br_slice_make(NULL, 0);
    }
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.ptr[i];
        if (c < 0x21 || c > 0x7e) {
            return br_slice_make(NULL, 0);
        }
    }
    return v;
}
