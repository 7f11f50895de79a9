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

static bool is_op(char c)
{
    return c == '+' || c == '-' || c == '*' || c == '/' || c == '^' || c == '=' || c == '<' ||
           c == '>' || c == '%';
}

/* digit [spaces] operator [spaces] digit, starting at the digit p[0]. */
static bool arithmetic_at(const char *p, const char *end)
{
    const char *q = p + 1;
    while (q < end && *q == ' ') {
        q++;
    }
    if (q >= end || !is_op(*q)) {
        return false;
    }
    q++;
    while (q < end && *q == ' ') {
        q++;
    }
    return q < end && is_digit(*q);
}

/*
 * One pass: code (a ``` fence, two indented lines, two lines ending in '{', '}' or ';', or a
 * line starting with a code keyword) and math (LaTeX commands, $$, arithmetic between digits,
 * '^' before a digit or brace).
 */
static void scan_text(const char *t, size_t n, bool *code_out, bool *math_out)
{
    static const char *const line_keywords[] = {"def ",    "#include", "import ", "class ",
                                                "fn ",     "func ",    "public ", "function ",
                                                "SELECT ", "const ",   "let ",    "var "};
    const char *end = t + n;
    int indented = 0;
    int brace_lines = 0;
    bool code = false;
    bool math = false;
    bool line_start = true;
    for (const char *p = t; p < end; p++) {
        char c = *p;
        if (line_start && !code) {
            if ((c == '\t' || (end - p >= 5 && memcmp(p, "    ", 4) == 0)) && end - p > 4 &&
                p[c == '\t' ? 1 : 4] > ' ') {
                indented++;
            }
            for (size_t k = 0; k < sizeof(line_keywords) / sizeof(line_keywords[0]); k++) {
                if (at_line_start_word(p, end, line_keywords[k])) {
                    code = true;
                    break;
                }
            }
        }
        line_start = false;
        switch (c) {
        case '\n':
            line_start = true;
            if (p > t && (p[-1] == '{' || p[-1] == '}' || p[-1] == ';')) {
                brace_lines++;
            }
            break;
        case '`':
            code |= end - p >= 3 && p[1] == '`' && p[2] == '`';
            break;
        case '\\':
            math |= latex_at(p + 1, end);
            break;
        case '$':
            math |= p + 1 < end && p[1] == '$';
            break;
        case '^':
            math |= p + 1 < end && (is_digit(p[1]) || p[1] == '{');
            break;
        default:
            if (is_digit(c) && !math) {
                math = arithmetic_at(p, end);
            }
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

/* Appends a JSON string value's decoded text. */
static int append_string(struct text_buf *b, struct br_slice v)
{
    size_t len = 0;
    int rc = br_json_string_decode(v, b->p + b->len, b->cap - b->len, &len);
    if (rc != BR_OK) {
        return rc;
    }
    b->len += len;
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

static bool role_is(struct br_slice msg, const char *role)
{
    struct br_slice r = br_json_obj_get(msg, "role");
    return r.ptr && br_json_type_of(r) == BR_JSON_STRING && r.len >= 2 &&
           br_json_key_eq(br_slice_make(r.ptr + 1, r.len - 2), role);
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
        if (br_json_type_of(m) != BR_JSON_OBJECT) {
            continue;
        }
        if (out->n_messages > 0 && b.len < b.cap - 1) {
            b.p[b.len++] = '\n';
        }
        out->n_messages++;
        size_t start = b.len;
        struct br_slice content = br_json_obj_get(m, "content");
        if (content.ptr) {
            rc = append_content(&b, content, out);
            if (rc != BR_OK) {
                break;
            }
        }
        if (role_is(m, "user")) {
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

    struct br_slice messages = {0};
    struct br_slice max_tokens = {0};
    struct br_slice max_completion = {0};
    struct br_json_iter it;
    struct br_json_member m;
    int rc = br_json_obj_iter_init(&it, body);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        if (br_json_key_eq(m.key, "messages")) {
            messages = m.value;
        } else if (br_json_key_eq(m.key, "tools") || br_json_key_eq(m.key, "functions")) {
            if (nonempty_array(m.value)) {
                out->uses |= BR_MODEL_CAP_TOOLS;
            }
        } else if (br_json_key_eq(m.key, "response_format")) {
            if (json_format(m.value)) {
                out->uses |= BR_MODEL_CAP_JSON_MODE;
            }
        } else if (br_json_key_eq(m.key, "max_tokens")) {
            max_tokens = m.value;
        } else if (br_json_key_eq(m.key, "max_completion_tokens")) {
            max_completion = m.value;
        } else if (br_json_key_eq(m.key, "metadata")) {
            if (br_json_type_of(m.value) == BR_JSON_OBJECT) {
                out->metadata = m.value;
            }
        }
    }
    if (rc != BR_ERR_NOTFOUND) {
        (void)snprintf(err, errlen, "The request body must be a JSON object.");
        return BR_ERR_INVAL;
    }
    out->max_tokens = int_or(max_completion, int_or(max_tokens, -1));
    if (messages.ptr && br_json_type_of(messages) == BR_JSON_ARRAY) {
        rc = read_messages(a, messages, out);
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
