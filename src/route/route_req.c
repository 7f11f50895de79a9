/* SPDX-License-Identifier: MIT */
/*
 * The routing signals of a chat request, read once from its raw body with core/json (no
 * document is built): the text of the messages, an estimate of the prompt tokens, the number
 * of turns, whether the text holds code or math, which capabilities the request uses (tools,
 * JSON mode, images), max_tokens, the metadata object and the client's hints. Everything is a
 * single pass over the bytes the gateway has already validated; the decoded text is the only
 * allocation (one arena block).
 */
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "core/json.h"
#include "route/route.h"

static const char *const hint_names[] = {
    [BR_ROUTE_HINT_MAX_LATENCY_MS] = "x-brigade-max-latency-ms",
    [BR_ROUTE_HINT_MAX_COST_USD] = "x-brigade-max-cost-usd",
    [BR_ROUTE_HINT_QUALITY] = "x-brigade-quality",
};

const char *br_route_hint_name(enum br_route_hint_kind k)
{
    return (size_t)k < sizeof(hint_names) / sizeof(hint_names[0]) ? hint_names[k] : "?";
}

/* A value quoted in an error: at most 40 bytes, printable ASCII. */
static void quote(struct br_slice v, char out[48])
{
    size_t n = v.len > 40 ? 40 : v.len;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v.ptr[i];
        out[i] = (char)(ch < 0x20 || ch >= 0x7f ? '?' : ch);
    }
    out[n] = '\0';
}

static bool ascii_case_eq(struct br_slice v, const char *s)
{
    return br_slice_case_eq_cstr(v, s);
}

int br_route_hint_set(struct br_route_hints *h, enum br_route_hint_kind k, struct br_slice value,
                      char *err, size_t errlen)
{
    struct br_slice v = br_slice_trim(value);
    char q[48];
    if (k == BR_ROUTE_HINT_MAX_LATENCY_MS) {
        unsigned long long ms = 0;
        if (br_slice_to_u64(v, 86400000ull, &ms) != BR_OK || ms == 0) {
            quote(v, q);
            (void)snprintf(err, errlen,
                           "%s must be a whole number of milliseconds from 1 to 86400000, got "
                           "'%s'.",
                           hint_names[k], q);
            return BR_ERR_INVAL;
        }
        h->max_latency_ms = (int64_t)ms;
        return BR_OK;
    }
    if (k == BR_ROUTE_HINT_MAX_COST_USD) {
        char buf[48];
        int64_t nano = 0;
        if (v.len == 0 || v.len >= sizeof(buf)) {
            nano = -1;
        } else {
            memcpy(buf, v.ptr, v.len);
            buf[v.len] = '\0';
            if (br_cost_parse_usd(buf, &nano) != BR_OK) {
                nano = -1;
            }
        }
        if (nano < 0) {
            quote(v, q);
            (void)snprintf(err, errlen,
                           "%s must be a decimal USD amount such as 0.01 (at most 9 decimals), "
                           "got '%s'.",
                           hint_names[k], q);
            return BR_ERR_INVAL;
        }
        h->max_cost_nano = nano;
        return BR_OK;
    }
    if (k == BR_ROUTE_HINT_QUALITY) {
        if (ascii_case_eq(v, "high")) {
            h->quality = BR_ROUTE_QUALITY_HIGH;
        } else if (ascii_case_eq(v, "standard")) {
            h->quality = BR_ROUTE_QUALITY_STANDARD;
        } else if (ascii_case_eq(v, "economy")) {
            h->quality = BR_ROUTE_QUALITY_ECONOMY;
        } else {
            quote(v, q);
            (void)snprintf(err, errlen, "%s must be high, standard or economy, got '%s'.",
                           hint_names[k], q);
            return BR_ERR_INVAL;
        }
        return BR_OK;
    }
    (void)snprintf(err, errlen, "unknown hint");
    return BR_ERR_INVAL;
}

/* ---------------------------------------------------------------- text signals */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool at_line_start_word(const char *p, const char *end, const char *w)
{
    size_t n = strlen(w);
    return (size_t)(end - p) >= n && memcmp(p, w, n) == 0;
}

/* LaTeX commands that mark math. */
static bool latex_at(const char *p, const char *end)
{
    static const char *const cmds[] = {"frac", "sqrt", "sum",   "int",  "cdot",  "times", "pi",
                                       "le",   "ge",   "alpha", "beta", "theta", "begin", "infty"};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        size_t n = strlen(cmds[i]);
        if ((size_t)(end - p) >= n && memcmp(p, cmds[i], n) == 0) {
            return true;
        }
    }
    return false;
}

/* Bytes the scan stops at (scan_stops) and what they may start. */
enum {
    SCAN_LINE = 1,  /* '\n' */
    SCAN_TICK = 2,  /* '`' */
    SCAN_SLASH = 3, /* '\\' */
    SCAN_DOLLAR = 4,
    SCAN_CARET = 5,
    SCAN_OP = 6, /* + - * / = < > % */
};

static const unsigned char scan_class[256] = {
    ['\n'] = SCAN_LINE, ['`'] = SCAN_TICK, ['\\'] = SCAN_SLASH, ['$'] = SCAN_DOLLAR,
    ['^'] = SCAN_CARET, ['+'] = SCAN_OP,   ['-'] = SCAN_OP,     ['*'] = SCAN_OP,
    ['/'] = SCAN_OP,    ['='] = SCAN_OP,   ['<'] = SCAN_OP,     ['>'] = SCAN_OP,
    ['%'] = SCAN_OP,
};

static const char scan_stops[] = "\n`\\$^+-*/=<>%";

/* An operator at p with a digit before it and one after it (spaces allowed around it). */
static bool arithmetic_around(const char *t, const char *p, const char *end)
{
    const char *l = p;
    while (l > t && l[-1] == ' ') {
        l--;
    }
    const char *r = p + 1;
    while (r < end && *r == ' ') {
        r++;
    }
    return l > t && is_digit(l[-1]) && r < end && is_digit(*r);
}

/* At the start of a line: an indented line, or a line starting with a code keyword. */
static void line_start(const char *p, const char *end, int *indented, bool *code)
{
    static const char *const line_keywords[] = {"def ",    "#include", "import ", "class ",
                                                "fn ",     "func ",    "public ", "function ",
                                                "SELECT ", "const ",   "let ",    "var "};
    if (end - p > 4 &&
        ((p[0] == '\t' && p[1] > ' ') || (memcmp(p, "    ", 4) == 0 && p[4] > ' '))) {
        (*indented)++;
    }
    for (size_t k = 0; k < sizeof(line_keywords) / sizeof(line_keywords[0]); k++) {
        if (at_line_start_word(p, end, line_keywords[k])) {
            *code = true;
            return;
        }
    }
}

/*
 * One pass: code (a ``` fence, two indented lines, two lines ending in '{', '}' or ';', or a
 * line starting with a code keyword) and math (LaTeX commands, $$, arithmetic between digits,
 * '^' before a digit or brace). The text must be NUL-terminated (embedded NULs end the scan
 * early, which only loses signals; the gateway refuses \u0000 in requests).
 */
static void scan_text(const char *t, size_t n, bool *code_out, bool *math_out)
{
    const char *end = t + n;
    int indented = 0;
    int brace_lines = 0;
    bool code = false;
    bool math = false;
    if (n > 0) {
        line_start(t, end, &indented, &code);
    }
    for (const char *p = t; p < end && !(code && math); p++) {
        /* strcspn compares 16 bytes at a time (SSE4.2 in glibc); the text ends with a NUL. */
        p += strcspn(p, scan_stops);
        if (p >= end) {
            break;
        }
        unsigned char cls = scan_class[(unsigned char)*p];
        switch (cls) {
        case SCAN_LINE:
            if (p > t && (p[-1] == '{' || p[-1] == '}' || p[-1] == ';')) {
                brace_lines++;
            }
            if (!code) {
                line_start(p + 1, end, &indented, &code);
            }
            break;
        case SCAN_TICK:
            code |= end - p >= 3 && p[1] == '`' && p[2] == '`';
            break;
        case SCAN_SLASH:
            math |= latex_at(p + 1, end);
            break;
        case SCAN_DOLLAR:
            math |= p + 1 < end && p[1] == '$';
            break;
        case SCAN_CARET:
            math |= p + 1 < end && (is_digit(p[1]) || p[1] == '{');
            break;
        default:
            math |= arithmetic_around(t, p, end);
            break;
        }
    }
    if (n > 0 && (end[-1] == '{' || end[-1] == '}' || end[-1] == ';')) {
        brace_lines++;
    }
    *code_out = code || indented >= 2 || brace_lines >= 2;
    *math_out = math;
}

/* ---------------------------------------------------------------- messages */

struct text_buf {
    char *p;
    size_t len;
    size_t cap;
};

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d;
        if (c >= '0' && c <= '9') {
            d = (unsigned)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            d = (unsigned)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            d = (unsigned)(c - 'A' + 10);
        } else {
            return BR_ERR_PARSE;
        }
        v = v * 16 + d;
    }
    *out = v;
    return BR_OK;
}

/* One escape at p (after the backslash; n bytes left) into out; returns bytes consumed or 0. */
static size_t unescape(const char *p, size_t n, char *out, size_t *out_len)
{
    static const char simple_in[] = "\"\\/bfnrt";
    static const char simple_out[] = "\"\\/\b\f\n\r\t";
    const char *k = n ? memchr(simple_in, p[0], sizeof(simple_in) - 1) : NULL;
    if (k) {
        out[0] = simple_out[k - simple_in];
        *out_len = 1;
        return 1;
    }
    unsigned cp;
    if (n < 5 || p[0] != 'u' || hex4(p + 1, &cp) != BR_OK) {
        return 0;
    }
    size_t used = 5;
    if (cp >= 0xd800 && cp < 0xdc00) {
        unsigned lo;
        if (n < 11 || p[5] != '\\' || p[6] != 'u' || hex4(p + 7, &lo) != BR_OK || lo < 0xdc00 ||
            lo > 0xdfff) {
            return 0;
        }
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        used = 11;
    } else if (cp >= 0xdc00 && cp <= 0xdfff) {
        return 0;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        *out_len = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        *out_len = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        *out_len = 3;
    } else {
        out[0] = (char)(0xf0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[3] = (char)(0x80 | (cp & 0x3f));
        *out_len = 4;
    }
    return used;
}

/*
 * Appends a JSON string value's decoded text: runs between escapes are copied whole (a
 * byte-at-a-time decoder costs several nanoseconds per byte, most of a decision's budget).
 * The value is the exact text of a string (quotes included) from validated JSON.
 */
static int append_string(struct text_buf *b, struct br_slice v)
{
    if (v.len < 2 || v.ptr[0] != '"' || v.ptr[v.len - 1] != '"') {
        return BR_ERR_PARSE;
    }
    const char *p = v.ptr + 1;
    const char *end = v.ptr + v.len - 1;
    while (p < end) {
        const char *q = memchr(p, '\\', (size_t)(end - p));
        size_t run = (size_t)((q ? q : end) - p);
        if (run >= b->cap - b->len) {
            return BR_ERR_LIMIT;
        }
        memcpy(b->p + b->len, p, run);
        b->len += run;
        if (!q) {
            break;
        }
        char dec[4];
        size_t dec_len = 0;
        size_t used = unescape(q + 1, (size_t)(end - q - 1), dec, &dec_len);
        if (used == 0) {
            return BR_ERR_PARSE;
        }
        if (dec_len >= b->cap - b->len) {
            return BR_ERR_LIMIT;
        }
        memcpy(b->p + b->len, dec, dec_len);
        b->len += dec_len;
        p = q + 1 + used;
    }
    return BR_OK;
}

static bool is_image_part(struct br_slice type)
{
    return br_json_key_eq(br_slice_make(type.ptr + 1, type.len >= 2 ? type.len - 2 : 0),
                          "image_url") ||
           br_json_key_eq(br_slice_make(type.ptr + 1, type.len >= 2 ? type.len - 2 : 0),
                          "input_image") ||
           br_json_key_eq(br_slice_make(type.ptr + 1, type.len >= 2 ? type.len - 2 : 0), "image");
}

/* Appends a message's content (a string, or the text of its parts joined by spaces). */
static int append_content(struct text_buf *b, struct br_slice content, struct br_route_req *out)
{
    enum br_json_type t = br_json_type_of(content);
    if (t == BR_JSON_STRING) {
        return append_string(b, content);
    }
    if (t != BR_JSON_ARRAY) {
        return BR_OK;
    }
    struct br_json_iter it;
    struct br_slice part;
    bool first = true;
    int rc = br_json_arr_iter_init(&it, content);
    while (rc == BR_OK && (rc = br_json_arr_iter_next(&it, &part)) == BR_OK) {
        if (br_json_type_of(part) != BR_JSON_OBJECT) {
            continue;
        }
        struct br_slice type = br_json_obj_get(part, "type");
        if (type.ptr && br_json_type_of(type) == BR_JSON_STRING && is_image_part(type)) {
            out->uses |= BR_MODEL_CAP_VISION;
            continue;
        }
        struct br_slice text = br_json_obj_get(part, "text");
        if (text.ptr && br_json_type_of(text) == BR_JSON_STRING) {
            if (!first && b->len < b->cap - 1) {
                b->p[b->len++] = ' ';
            }
            first = false;
            rc = append_string(b, text);
        }
    }
    return rc == BR_ERR_NOTFOUND ? BR_OK : rc;
}

static bool is_user(struct br_slice role)
{
    if (role.len == 6 && memcmp(role.ptr, "\"user\"", 6) == 0) {
        return true;
    }
    return role.len > 2 && role.ptr[0] == '"' && memchr(role.ptr, '\\', role.len) &&
           br_json_key_eq(br_slice_make(role.ptr + 1, role.len - 2), "user");
}

/* A message's role and content values in one pass (the last of duplicates, as decoders do;
 * the gateway refuses duplicates anyway). BR_ERR_PARSE when m is not an object. */
static int message_fields(struct br_slice m, struct br_slice *role, struct br_slice *content)
{
    struct br_json_iter it;
    struct br_json_member mb;
    int rc = br_json_obj_iter_init(&it, m);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &mb)) == BR_OK) {
        if (mb.key.len == 4 && memcmp(mb.key.ptr, "role", 4) == 0) {
            *role = mb.value;
        } else if (mb.key.len == 7 && memcmp(mb.key.ptr, "content", 7) == 0) {
            *content = mb.value;
        } else if (memchr(mb.key.ptr, '\\', mb.key.len)) {
            /* An escaped key ("\u0072ole") is still the same name. */
            if (br_json_key_eq(mb.key, "role")) {
                *role = mb.value;
            } else if (br_json_key_eq(mb.key, "content")) {
                *content = mb.value;
            }
        }
    }
    return rc == BR_ERR_NOTFOUND ? BR_OK : BR_ERR_PARSE;
}

static int read_messages(br_arena *a, struct br_slice msgs, struct br_route_req *out)
{
    /* Decoded text is never longer than its JSON source: one block holds all of it. */
    struct text_buf b = {.cap = msgs.len + 2};
    b.p = br_arena_alloc(a, b.cap);
    if (!b.p) {
        return BR_ERR_NOMEM;
    }
    b.p[0] = '\0';
    size_t last_start = 0;
    size_t last_end = 0;
    bool have_last = false;
    struct br_json_iter it;
    struct br_slice m;
    int rc = br_json_arr_iter_init(&it, msgs);
    while (rc == BR_OK && (rc = br_json_arr_iter_next(&it, &m)) == BR_OK) {
        struct br_slice role = {0};
        struct br_slice content = {0};
        if (message_fields(m, &role, &content) != BR_OK) {
            continue;
        }
        if (out->n_messages > 0 && b.len < b.cap - 1) {
            b.p[b.len++] = '\n';
        }
        out->n_messages++;
        size_t start = b.len;
        if (content.ptr) {
            rc = append_content(&b, content, out);
            if (rc != BR_OK) {
                break;
            }
        }
        if (is_user(role)) {
            out->n_turns++;
            last_start = start;
            last_end = b.len;
            have_last = true;
        }
    }
    if (rc != BR_ERR_NOTFOUND && rc != BR_OK) {
        return rc == BR_ERR_LIMIT ? BR_ERR_NOMEM : BR_ERR_PARSE;
    }
    b.p[b.len] = '\0';
    out->all_text = b.p;
    out->all_text_len = b.len;
    if (have_last) {
        char *last = br_arena_strndup(a, b.p + last_start, last_end - last_start);
        if (!last) {
            return BR_ERR_NOMEM;
        }
        out->last_user = last;
        out->last_user_len = last_end - last_start;
    }
    return BR_OK;
}

/* ---------------------------------------------------------------- top level */

static bool nonempty_array(struct br_slice v)
{
    struct br_json_iter it;
    struct br_slice e;
    return v.ptr && br_json_arr_iter_init(&it, v) == BR_OK &&
           br_json_arr_iter_next(&it, &e) == BR_OK;
}

static bool json_format(struct br_slice rf)
{
    if (!rf.ptr || br_json_type_of(rf) != BR_JSON_OBJECT) {
        return false;
    }
    struct br_slice t = br_json_obj_get(rf, "type");
    if (!t.ptr || br_json_type_of(t) != BR_JSON_STRING || t.len < 2) {
        return false;
    }
    struct br_slice raw = br_slice_make(t.ptr + 1, t.len - 2);
    return br_json_key_eq(raw, "json_object") || br_json_key_eq(raw, "json_schema");
}

/* Hints in metadata: string values (as OpenAI's metadata requires) or plain numbers. */
static int metadata_hints(struct br_slice meta, struct br_route_hints *h, char *err, size_t errlen)
{
    struct br_json_iter it;
    struct br_json_member m;
    int rc = br_json_obj_iter_init(&it, meta);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        for (size_t k = 0; k < sizeof(hint_names) / sizeof(hint_names[0]); k++) {
            if (!br_json_key_eq(m.key, hint_names[k])) {
                continue;
            }
            char buf[64];
            struct br_slice v = m.value;
            enum br_json_type t = br_json_type_of(v);
            if (t == BR_JSON_STRING) {
                size_t len = 0;
                if (br_json_string_decode(v, buf, sizeof(buf), &len) != BR_OK) {
                    len = sizeof(buf) - 1; /* too long: refused by the parser below */
                }
                v = br_slice_make(buf, len);
            } else if (t != BR_JSON_NUMBER) {
                (void)snprintf(err, errlen, "metadata.%s must be a string.", hint_names[k]);
                return BR_ERR_INVAL;
            }
            char why[256];
            if (br_route_hint_set(h, (enum br_route_hint_kind)k, v, why, sizeof(why)) != BR_OK) {
                (void)snprintf(err, errlen, "metadata.%s", why);
                return BR_ERR_INVAL;
            }
        }
    }
    return rc == BR_ERR_NOTFOUND ? BR_OK : BR_ERR_PARSE;
}

static int64_t int_or(struct br_slice v, int64_t dflt)
{
    int64_t x;
    return v.ptr && br_json_int(v, &x) == BR_OK ? x : dflt;
}

/* The top-level members read after the loop over them. */
struct top_fields {
    struct br_slice messages;
    struct br_slice max_tokens;
    struct br_slice max_completion;
};

/* One member of the body: capabilities it uses go to out, the rest to f. */
static void top_member(const struct br_json_member *m, struct top_fields *f,
                       struct br_route_req *out)
{
    if (br_json_key_eq(m->key, "messages")) {
        f->messages = m->value;
    } else if (br_json_key_eq(m->key, "tools") || br_json_key_eq(m->key, "functions")) {
        if (nonempty_array(m->value)) {
            out->uses |= BR_MODEL_CAP_TOOLS;
        }
    } else if (br_json_key_eq(m->key, "response_format")) {
        if (json_format(m->value)) {
            out->uses |= BR_MODEL_CAP_JSON_MODE;
        }
    } else if (br_json_key_eq(m->key, "max_tokens")) {
        f->max_tokens = m->value;
    } else if (br_json_key_eq(m->key, "max_completion_tokens")) {
        f->max_completion = m->value;
    } else if (br_json_key_eq(m->key, "metadata")) {
        if (br_json_type_of(m->value) == BR_JSON_OBJECT) {
            out->metadata = m->value;
        }
    }
}

/* Every member of the body; BR_ERR_NOTFOUND when all were read, else the iterator's error. */
static int top_level(struct br_slice body, struct top_fields *f, struct br_route_req *out)
{
    struct br_json_iter it;
    struct br_json_member m;
    int rc = br_json_obj_iter_init(&it, body);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        top_member(&m, f, out);
    }
    return rc;
}

int br_route_req_parse(br_arena *a, struct br_slice body, struct br_route_req *out, char *err,
                       size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->last_user = "";
    out->all_text = "";
    out->max_tokens = -1;
    out->hints.max_latency_ms = -1;
    out->hints.max_cost_nano = -1;
    err[0] = '\0';

    struct top_fields f = {0};
    int rc = top_level(body, &f, out);
    if (rc != BR_ERR_NOTFOUND) {
        (void)snprintf(err, errlen, "The request body must be a JSON object.");
        return BR_ERR_INVAL;
    }
    out->max_tokens = int_or(f.max_completion, int_or(f.max_tokens, -1));
    if (f.messages.ptr && br_json_type_of(f.messages) == BR_JSON_ARRAY) {
        rc = read_messages(a, f.messages, out);
        if (rc == BR_ERR_NOMEM) {
            return rc;
        }
        if (rc != BR_OK) {
            (void)snprintf(err, errlen, "The messages could not be read.");
            return BR_ERR_INVAL;
        }
    }
    scan_text(out->all_text, out->all_text_len, &out->has_code, &out->has_math);
    out->prompt_tokens = (int64_t)((out->all_text_len + 3) / 4) + 4 * (int64_t)out->n_messages;
    if (out->metadata.ptr) {
        rc = metadata_hints(out->metadata, &out->hints, err, errlen);
        if (rc != BR_OK) {
            if (!err[0]) {
                (void)snprintf(err, errlen, "metadata must be an object.");
            }
            return BR_ERR_INVAL;
        }
    }
    return BR_OK;
}
