/* SPDX-License-Identifier: MIT */
/*
 * Loads recorded model outputs for the replay provider. Two formats:
 *   JSONL: one object per line, {"<prompt field>": "...", "<response field>": "...",
 *          "usage": {"prompt_tokens": n, "completion_tokens": n}?}; blank lines are skipped.
 *          The prompt may also be an OpenAI messages array.
 *   CSV:   RFC 4180 with a header row (libcsv, strict mode: quoted fields may span lines,
 *          stray quotes are errors, no whitespace trimming).
 * Every record's prompt is normalised (see br__replay_normalise) and becomes a key of an
 * immutable map; text must be valid UTF-8. Any malformed record rejects the whole file with a
 * one-line message naming the file and the line, because a silently half-loaded replay would
 * turn into misleading "misses" at serve time.
 */
#include <csv.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/err.h"
#include "upstream/provider.h"
#include "upstream/providers/replay_int.h"

/* libcsv's parser state between records (ROW_NOT_BEGUN in csv.c); stable since libcsv 3.0. */
#define CSV_PSTATE_ROW_NOT_BEGUN 0

/* ---- text helpers ---- */

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

int br__replay_normalise(const char *s, size_t n, struct br_buf *out)
{
    size_t i = 0;
    bool first = true;
    while (i < n) {
        while (i < n && is_ws((unsigned char)s[i])) {
            i++;
        }
        size_t start = i;
        while (i < n && !is_ws((unsigned char)s[i])) {
            i++;
        }
        if (i == start) {
            break;
        }
        if (!first) {
            int rc = br_buf_append(out, " ", 1);
            if (rc != BR_OK) {
                return rc;
            }
        }
        int rc = br_buf_append(out, s + start, i - start);
        if (rc != BR_OK) {
            return rc;
        }
        first = false;
    }
    /* Make sure ptr is a NUL-terminated string even for an empty key. */
    return br_buf_append(out, "", 0);
}

/* The text parts of a content array joined with "\n" (normalised later), appended to out. */
static int join_text_parts(const json_t *content, struct br_buf *out, bool *any)
{
    size_t k;
    const json_t *part;
    *any = false;
    json_array_foreach(content, k, part)
    {
        const char *type = json_string_value(json_object_get(part, "type"));
        const json_t *text = json_object_get(part, "text");
        if (!type || strcmp(type, "text") != 0 || !json_is_string(text)) {
            continue;
        }
        int rc = *any ? br_buf_append(out, "\n", 1) : BR_OK;
        rc = rc == BR_OK ? br_buf_append(out, json_string_value(text), json_string_length(text))
                         : rc;
        if (rc != BR_OK) {
            return rc;
        }
        *any = true;
    }
    return BR_OK;
}

int br__replay_request_key(const json_t *request_or_messages, struct br_buf *out)
{
    const json_t *messages = json_is_array(request_or_messages)
                                 ? request_or_messages
                                 : json_object_get(request_or_messages, "messages");
    size_t n = json_array_size(messages);
    for (size_t i = n; i-- > 0;) {
        const json_t *m = json_array_get(messages, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role || strcmp(role, "user") != 0) {
            continue;
        }
        const json_t *content = json_object_get(m, "content");
        if (json_is_string(content)) {
            return br__replay_normalise(json_string_value(content), json_string_length(content),
                                        out);
        }
        struct br_buf joined;
        bool any;
        br_buf_init(&joined, out->max);
        int rc = join_text_parts(content, &joined, &any);
        if (rc == BR_OK && any) {
            rc = br__replay_normalise(joined.ptr, joined.len, out);
        }
        br_buf_cleanup(&joined);
        return rc == BR_OK && !any ? BR_ERR_NOTFOUND : rc;
    }
    return BR_ERR_NOTFOUND;
}

int br__replay_json_string(struct br_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int rc = br_buf_append(out, "\"", 1);
    size_t run = 0; /* start of the bytes not yet copied */
    for (size_t i = 0; i < n && rc == BR_OK; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t elen = 0;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c < 0x20) {
            static const char short_esc[] = "btnvfr"; /* \b=8 \t=9 \n=10 (11 has none) \f \r */
            esc[0] = '\\';
            if (c >= 8 && c <= 13 && c != 11) {
                esc[1] = short_esc[c - 8];
                elen = 2;
            } else {
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                elen = 6;
            }
        } else {
            continue;
        }
        rc = br_buf_append(out, s + run, i - run);
        if (rc == BR_OK) {
            rc = br_buf_append(out, esc, elen);
        }
        run = i + 1;
    }
    if (rc == BR_OK) {
        rc = br_buf_append(out, s + run, n - run);
    }
    return rc == BR_OK ? br_buf_append(out, "\"", 1) : rc;
}

bool br__replay_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i < len) {
            return false;
        }
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += len;
    }
    return true;
}

/* ---- the model ---- */

void br__replay_model_free(struct br__replay_model *m)
{
    if (!m) {
        return;
    }
    br_map_cleanup(&m->map);
    br_arena_destroy(m->arena);
    br_free(m);
}

const struct br__replay_entry *br__replay_model_lookup(const struct br__replay_model *m,
                                                       struct br_slice normalised_prompt)
{
    return br_map_get(&m->map, normalised_prompt);
}

struct loader {
    struct br__replay_model *m;
    const char *path;
    const char *prompt_field;
    const char *response_field;
    char *err;
    size_t errlen;
    struct br_buf key; /* scratch: the normalised prompt */
};

/* Adds one record. `usage_prompt` < 0 means no recorded usage. */
static int add_record(struct loader *L, size_t line, const char *answer, size_t answer_len,
                      int64_t usage_prompt, int64_t usage_completion)
{
    struct br__replay_model *m = L->m;
    if (L->key.len == 0) {
        br_err_printf(L->err, L->errlen, "%s:%zu: the prompt is empty", L->path, line);
        return BR_ERR_PARSE;
    }
    if (!br__replay_utf8_valid(L->key.ptr, L->key.len) ||
        !br__replay_utf8_valid(answer, answer_len)) {
        br_err_printf(L->err, L->errlen, "%s:%zu: text is not valid UTF-8", L->path, line);
        return BR_ERR_PARSE;
    }
    struct br_slice key = br_slice_make(L->key.ptr, L->key.len);
    if (br_map_get(&m->map, key)) {
        m->n_duplicates++;
        return BR_OK;
    }
    struct br__replay_entry *e = br_arena_calloc(m->arena, 1, sizeof(*e));
    char *k = e ? br_arena_strndup(m->arena, L->key.ptr, L->key.len) : NULL;
    char *a = k ? br_arena_strndup(m->arena, answer, answer_len) : NULL;
    if (!a) {
        br_err_printf(L->err, L->errlen, "%s:%zu: out of memory", L->path, line);
        return BR_ERR_NOMEM;
    }
    e->prompt = k;
    e->prompt_len = L->key.len;
    e->answer = a;
    e->answer_len = answer_len;
    e->has_usage = usage_prompt >= 0;
    e->prompt_tokens = usage_prompt >= 0 ? usage_prompt : -1;
    e->completion_tokens =
        usage_prompt >= 0 ? usage_completion : br_tokens_estimate(answer, answer_len);
    e->hash = br_hash_bytes(k, L->key.len);
    e->line = line;
    if (br_map_put(&m->map, br_slice_make(k, L->key.len), e) != BR_OK) {
        br_err_printf(L->err, L->errlen, "%s:%zu: out of memory", L->path, line);
        return BR_ERR_NOMEM;
    }
    m->n_prompts++;
    return BR_OK;
}

/* ---- JSONL ---- */

static int jsonl_usage(struct loader *L, size_t line, const json_t *usage, int64_t *p, int64_t *c)
{
    *p = -1;
    *c = -1;
    if (!usage || json_is_null(usage)) {
        return BR_OK;
    }
    const json_t *pt = json_object_get(usage, "prompt_tokens");
    const json_t *ct = json_object_get(usage, "completion_tokens");
    if (!json_is_object(usage) || !json_is_integer(pt) || !json_is_integer(ct) ||
        json_integer_value(pt) < 0 || json_integer_value(ct) < 0) {
        br_err_printf(
            L->err, L->errlen,
            "%s:%zu: \"usage\" must be {\"prompt_tokens\": n, \"completion_tokens\": n} with "
            "non-negative integers",
            L->path, line);
        return BR_ERR_PARSE;
    }
    *p = (int64_t)json_integer_value(pt);
    *c = (int64_t)json_integer_value(ct);
    return BR_OK;
}

static int jsonl_line(struct loader *L, size_t line, const char *s, size_t n)
{
    json_error_t je;
    json_t *j = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
    int rc = BR_ERR_PARSE;
    if (!j) {
        br_err_printf(L->err, L->errlen, "%s:%zu: invalid JSON at column %d: %s", L->path, line,
                      je.column, je.text);
        goto out;
    }
    if (!json_is_object(j)) {
        br_err_printf(L->err, L->errlen, "%s:%zu: each line must be a JSON object", L->path, line);
        goto out;
    }
    const json_t *prompt = json_object_get(j, L->prompt_field);
    const json_t *answer = json_object_get(j, L->response_field);
    if (!json_is_string(prompt) && !json_is_array(prompt)) {
        br_err_printf(L->err, L->errlen,
                      "%s:%zu: field \"%s\" is missing or not a string (or messages array)",
                      L->path, line, L->prompt_field);
        goto out;
    }
    if (!json_is_string(answer)) {
        br_err_printf(L->err, L->errlen, "%s:%zu: field \"%s\" is missing or not a string", L->path,
                      line, L->response_field);
        goto out;
    }
    int64_t up;
    int64_t uc;
    rc = jsonl_usage(L, line, json_object_get(j, "usage"), &up, &uc);
    if (rc != BR_OK) {
        goto out;
    }
    br_buf_reset(&L->key);
    if (json_is_string(prompt)) {
        rc = br__replay_normalise(json_string_value(prompt), json_string_length(prompt), &L->key);
    } else {
        rc = br__replay_request_key(prompt, &L->key);
        if (rc == BR_ERR_NOTFOUND) {
            br_err_printf(L->err, L->errlen, "%s:%zu: the messages in \"%s\" have no user text",
                          L->path, line, L->prompt_field);
            rc = BR_ERR_PARSE;
            goto out;
        }
    }
    if (rc != BR_OK) {
        br_err_printf(L->err, L->errlen, "%s:%zu: %s", L->path, line, br_strerror(rc));
        goto out;
    }
    rc = add_record(L, line, json_string_value(answer), json_string_length(answer), up, uc);
out:
    json_decref(j);
    return rc;
}

static int load_jsonl(struct loader *L, const char *data, size_t len)
{
    size_t line = 0;
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t n = end - pos;
        line++;
        if (n > 0 && data[pos + n - 1] == '\r') {
            n--;
        }
        bool blank = true;
        for (size_t i = 0; i < n && blank; i++) {
            blank = is_ws((unsigned char)data[pos + i]);
        }
        if (!blank) {
            int rc = jsonl_line(L, line, data + pos, n);
            if (rc != BR_OK) {
                return rc;
            }
        }
        pos = end + 1;
    }
    return BR_OK;
}

/* ---- CSV ---- */

struct csv_field {
    size_t off; /* into row */
    size_t len;
};

struct csv_state {
    struct loader *L;
    int rc;             /* first error from a callback */
    size_t line;        /* line being fed */
    size_t record_line; /* line the current record started on */
    bool have_header;
    size_t n_columns;
    size_t prompt_col;
    size_t response_col;
    struct br_buf row;        /* field bytes of the current record */
    struct csv_field *fields; /* owned */
    size_t n_fields;
    size_t cap_fields;
};

static void csv_on_field(void *p, size_t len, void *data)
{
    struct csv_state *st = data;
    if (st->rc != BR_OK) {
        return;
    }
    if (st->n_fields == st->cap_fields) {
        size_t cap = st->cap_fields ? st->cap_fields * 2 : 16;
        struct csv_field *f = cap <= 65536 ? br_realloc(st->fields, cap * sizeof(*f)) : NULL;
        if (!f) {
            br_err_printf(st->L->err, st->L->errlen, "%s:%zu: too many fields", st->L->path,
                          st->record_line);
            st->rc = cap <= 65536 ? BR_ERR_NOMEM : BR_ERR_PARSE;
            return;
        }
        st->fields = f;
        st->cap_fields = cap;
    }
    st->fields[st->n_fields].off = st->row.len;
    st->fields[st->n_fields].len = len;
    int rc = br_buf_append(&st->row, p ? p : "", len);
    if (rc != BR_OK) {
        br_err_printf(st->L->err, st->L->errlen, "%s:%zu: record too large", st->L->path,
                      st->record_line);
        st->rc = rc;
        return;
    }
    st->n_fields++;
}

static struct br_slice field(const struct csv_state *st, size_t i)
{
    return br_slice_make(st->row.ptr + st->fields[i].off, st->fields[i].len);
}

static int csv_header(struct csv_state *st)
{
    struct loader *L = st->L;
    bool found_p = false;
    bool found_r = false;
    for (size_t i = 0; i < st->n_fields; i++) {
        struct br_slice f = field(st, i);
        for (size_t k = 0; k < i; k++) {
            if (br_slice_eq(f, field(st, k))) {
                br_err_printf(L->err, L->errlen, "%s:%zu: duplicate column \"%.*s\" in the header",
                              L->path, st->record_line, (int)(f.len > 80 ? 80 : f.len), f.ptr);
                return BR_ERR_PARSE;
            }
        }
        if (br_slice_eq_cstr(f, L->prompt_field)) {
            st->prompt_col = i;
            found_p = true;
        }
        if (br_slice_eq_cstr(f, L->response_field)) {
            st->response_col = i;
            found_r = true;
        }
    }
    if (!found_p || !found_r) {
        br_err_printf(L->err, L->errlen, "%s:%zu: the header has no column \"%s\" (%zu columns)",
                      L->path, st->record_line, found_p ? L->response_field : L->prompt_field,
                      st->n_fields);
        return BR_ERR_PARSE;
    }
    st->n_columns = st->n_fields;
    st->have_header = true;
    return BR_OK;
}

static void csv_on_record(int c, void *data)
{
    (void)c;
    struct csv_state *st = data;
    struct loader *L = st->L;
    if (st->rc != BR_OK) {
        return;
    }
    if (!st->have_header) {
        st->rc = csv_header(st);
    } else if (st->n_fields != st->n_columns) {
        br_err_printf(L->err, L->errlen, "%s:%zu: the record has %zu fields, the header %zu",
                      L->path, st->record_line, st->n_fields, st->n_columns);
        st->rc = BR_ERR_PARSE;
    } else {
        struct br_slice p = field(st, st->prompt_col);
        struct br_slice a = field(st, st->response_col);
        br_buf_reset(&L->key);
        st->rc = br__replay_normalise(p.ptr, p.len, &L->key);
        if (st->rc == BR_OK) {
            st->rc = add_record(L, st->record_line, a.ptr, a.len, -1, -1);
        }
    }
    st->n_fields = 0;
    br_buf_reset(&st->row);
}

static int csv_no_space(unsigned char c)
{
    (void)c;
    return 0; /* RFC 4180: spaces are part of a field */
}

static int load_csv(struct loader *L, const char *data, size_t len)
{
    struct csv_parser p;
    struct csv_state st;
    memset(&st, 0, sizeof(st));
    st.L = L;
    st.rc = BR_OK;
    br_buf_init(&st.row, BR__REPLAY_MAX_FILE_BYTES);
    if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI) != 0) {
        br_err_printf(L->err, L->errlen, "%s: out of memory", L->path);
        return BR_ERR_NOMEM;
    }
    csv_set_realloc_func(&p, br_realloc);
    csv_set_free_func(&p, br_free);
    csv_set_space_func(&p, csv_no_space);
    int rc = BR_OK;
    size_t pos = 0;
    if (len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0) {
        pos = 3; /* a UTF-8 byte order mark */
    }
    while (pos < len && st.rc == BR_OK) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (data + pos)) + 1 : len - pos;
        st.line++;
        if (st.n_fields == 0 && p.pstate == CSV_PSTATE_ROW_NOT_BEGUN) {
            st.record_line = st.line;
        }
        /* Fed one line at a time so that errors can name the line. */
        if (csv_parse(&p, data + pos, n, csv_on_field, csv_on_record, &st) != n) {
            if (st.rc == BR_OK) {
                br_err_printf(L->err, L->errlen, "%s:%zu: malformed CSV (%s)", L->path, st.line,
                              csv_strerror(csv_error(&p)));
                st.rc = csv_error(&p) == CSV_ENOMEM ? BR_ERR_NOMEM : BR_ERR_PARSE;
            }
        }
        pos += n;
    }
    if (st.rc == BR_OK && csv_fini(&p, csv_on_field, csv_on_record, &st) != 0) {
        br_err_printf(L->err, L->errlen, "%s:%zu: malformed CSV at the end of the file (%s)",
                      L->path, st.record_line, csv_strerror(csv_error(&p)));
        st.rc = BR_ERR_PARSE;
    }
    rc = st.rc;
    if (rc == BR_OK && !st.have_header) {
        br_err_printf(L->err, L->errlen, "%s: the file has no header row", L->path);
        rc = BR_ERR_PARSE;
    }
    csv_free(&p);
    br_free(st.fields);
    br_buf_cleanup(&st.row);
    return rc;
}

/* ---- files ---- */

static bool ends_with_ci(const char *s, const char *suffix)
{
    size_t n = strlen(s);
    size_t k = strlen(suffix);
    if (n < k) {
        return false;
    }
    for (size_t i = 0; i < k; i++) {
        char a = s[n - k + i];
        if (a >= 'A' && a <= 'Z') {
            a = (char)(a - 'A' + 'a');
        }
        if (a != suffix[i]) {
            return false;
        }
    }
    return true;
}

static int read_file(const char *path, char **data_out, size_t *len_out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    int rc = BR_OK;
    struct stat st;
    if (!f) {
        int e = errno;
        char why[128];
        if (strerror_r(e, why, sizeof(why)) != 0) {
            (void)snprintf(why, sizeof(why), "errno %d", e);
        }
        br_err_printf(err, errlen, "%s: cannot open: %s", path, why);
        return BR_ERR_IO;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        br_err_printf(err, errlen, "%s: not a regular file", path);
        rc = BR_ERR_IO;
        goto out;
    }
    if ((unsigned long long)st.st_size > BR__REPLAY_MAX_FILE_BYTES) {
        br_err_printf(err, errlen, "%s: file larger than %zu bytes", path,
                      BR__REPLAY_MAX_FILE_BYTES);
        rc = BR_ERR_LIMIT;
        goto out;
    }
    size_t len = (size_t)st.st_size;
    data = br_malloc(len + 1);
    if (!data) {
        br_err_printf(err, errlen, "%s: out of memory", path);
        rc = BR_ERR_NOMEM;
        goto out;
    }
    if (fread(data, 1, len, f) != len) {
        br_err_printf(err, errlen, "%s: read error", path);
        rc = BR_ERR_IO;
        goto out;
    }
    data[len] = '\0';
    *data_out = data;
    *len_out = len;
    data = NULL;
out:
    br_free(data);
    (void)fclose(f); /* read-only: nothing to lose */
    return rc;
}

int br__replay_model_load(const char *path, const char *prompt_field, const char *response_field,
                          struct br__replay_model **out, char *err, size_t errlen)
{
    struct loader L = {
        .path = path ? path : "(null)",
        .prompt_field = prompt_field && *prompt_field ? prompt_field : "prompt",
        .response_field = response_field && *response_field ? response_field : "response",
        .err = err,
        .errlen = errlen,
    };
    char *data = NULL;
    size_t len = 0;
    bool jsonl = path && (ends_with_ci(path, ".jsonl") || ends_with_ci(path, ".ndjson"));
    bool csv = path && ends_with_ci(path, ".csv");
    int rc;
    *out = NULL;
    br_buf_init(&L.key, BR__REPLAY_MAX_FILE_BYTES);
    if (!jsonl && !csv) {
        br_err_printf(err, errlen, "%s: unknown replay file type (expected .jsonl or .csv)",
                      L.path);
        return BR_ERR_INVAL;
    }
    if (strcmp(L.prompt_field, L.response_field) == 0) {
        br_err_printf(err, errlen, "%s: the prompt and response fields are both \"%s\"", L.path,
                      L.prompt_field);
        return BR_ERR_INVAL;
    }
    rc = read_file(path, &data, &len, err, errlen);
    if (rc != BR_OK) {
        return rc;
    }
    if (len == 0) {
        br_err_printf(err, errlen, "%s: the file is empty", L.path);
        rc = BR_ERR_PARSE;
        goto out;
    }
    L.m = br_calloc(1, sizeof(*L.m));
    if (!L.m || br_arena_create(0, &L.m->arena) != BR_OK) {
        br_err_printf(err, errlen, "%s: out of memory", L.path);
        rc = BR_ERR_NOMEM;
        goto out;
    }
    br_map_init(&L.m->map);
    rc = jsonl ? load_jsonl(&L, data, len) : load_csv(&L, data, len);
    if (rc == BR_OK && L.m->n_prompts == 0) {
        br_err_printf(err, errlen, "%s: no records", L.path);
        rc = BR_ERR_PARSE;
    }
out:
    br_free(data);
    br_buf_cleanup(&L.key);
    if (rc != BR_OK) {
        br__replay_model_free(L.m);
        return rc;
    }
    *out = L.m;
    return BR_OK;
}
