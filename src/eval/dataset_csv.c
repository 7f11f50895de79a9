/* SPDX-License-Identifier: MIT */
/*
 * RouteLLM and RouterBench CSV files, parsed with libcsv (RFC 4180; quoted fields spanning
 * lines are common in both). The file is fed to libcsv one physical line at a time so that
 * every error names the line where the offending record starts.
 *
 * RouteLLM:    prompt, <model>... (True/False or 0..1), optional <model>_response; an empty
 *              or "Unnamed: 0" column (a pandas index) is ignored.
 * RouterBench: "", sample_id, prompt (a Python list literal of strings), eval_name (the
 *              group), <model>... (0.0/1.0), <model>|model_response (a list literal),
 *              <model>|total_cost (USD), oracle_model_to_route_to (ignored).
 */
#include <csv.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "eval/eval_int.h"

#define PROGRESS_STEP (1u << 20)

enum col_kind {
    COL_IGNORE = 0,
    COL_PROMPT,
    COL_GROUP,
    COL_QUALITY,
    COL_RESPONSE,
    COL_COST,
};

struct col {
    enum col_kind kind;
    size_t model; /* builder model index for QUALITY/RESPONSE/COST */
};

/* Per model: the columns that describe it (SIZE_MAX = none). */
struct model_cols {
    size_t model;
    size_t quality, response, cost;
};

struct csv_state {
    struct br__ds_builder *b;
    enum br_dataset_format fmt;
    const char *group;
    /* the record being collected */
    struct br_buf row;
    size_t *off;
    size_t *len;
    size_t n_fields, cap_fields;
    size_t line;     /* physical line being fed, 1-based */
    size_t row_line; /* line where the current record starts */
    bool between;    /* no record in progress */
    int rc;          /* first error */
    /* the header */
    bool have_header;
    size_t n_cols;
    struct col *cols;
    struct model_cols *mc;
    size_t n_mc;
    size_t prompt_col, group_col;
    struct br_buf scratch, scratch2;
};

static void on_field(void *s, size_t n, void *data)
{
    struct csv_state *st = data;
    if (st->rc != BR_OK) {
        return;
    }
    if (st->n_fields >= BR__DS_MAX_COLUMNS) {
        st->rc = br__ds_fail(st->b, st->row_line, BR_ERR_PARSE, "more than %u fields in a record",
                             BR__DS_MAX_COLUMNS);
        return;
    }
    if (st->n_fields == st->cap_fields) {
        size_t cap = st->cap_fields ? st->cap_fields * 2 : 64;
        size_t *o = br_realloc(st->off, cap * sizeof(size_t));
        if (o == NULL) {
            st->rc = BR_ERR_NOMEM;
            return;
        }
        st->off = o;
        size_t *l = br_realloc(st->len, cap * sizeof(size_t));
        if (l == NULL) {
            st->rc = BR_ERR_NOMEM;
            return;
        }
        st->len = l;
        st->cap_fields = cap;
    }
    st->off[st->n_fields] = st->row.len;
    st->len[st->n_fields] = n;
    int rc = br_buf_append(&st->row, s != NULL ? s : "", n);
    if (rc == BR_OK) {
        rc = br_buf_append(&st->row, "", 1); /* each field NUL-terminated */
    }
    if (rc != BR_OK) {
        st->rc = rc == BR_ERR_LIMIT ? br__ds_fail(st->b, st->row_line, BR_ERR_LIMIT,
                                                  "record longer than %u bytes", BR__DS_MAX_FIELD)
                                    : rc;
        return;
    }
    st->n_fields++;
}

static const char *field(const struct csv_state *st, size_t i)
{
    return st->row.ptr + st->off[i];
}

/* A short printable echo of a value for messages. */
static void echo(const char *s, size_t n, char out[48])
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < 40; i++) {
        unsigned char c = (unsigned char)s[i];
        out[k++] = (char)(c >= 0x20 && c < 0x7f ? c : '?');
    }
    if (n > 40) {
        out[k++] = '.';
        out[k++] = '.';
        out[k++] = '.';
    }
    out[k] = '\0';
}

/* Strict decimal: digits, optional fraction, optional exponent (no hex, inf, nan). */
static int parse_decimal(const char *s, size_t n, double *out)
{
    size_t i = 0;
    size_t digits = 0;
    if (i < n && (s[i] == '+' || s[i] == '-')) {
        i++;
    }
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
        digits++;
    }
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            digits++;
        }
    }
    if (digits == 0) {
        return BR_ERR_PARSE;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) {
            i++;
        }
        size_t e = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            e++;
        }
        if (e == 0) {
            return BR_ERR_PARSE;
        }
    }
    if (i != n || n > 64) {
        return BR_ERR_PARSE;
    }
    char buf[72];
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end = NULL;
    double v = strtod(buf, &end);
    if (end != buf + n || !isfinite(v)) {
        return BR_ERR_PARSE;
    }
    *out = v;
    return BR_OK;
}

static bool has_nul(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\0') {
            return true;
        }
    }
    return false;
}

static bool missing(const char *s, size_t n)
{
    return n == 0 || (n == 3 && (memcmp(s, "nan", 3) == 0 || memcmp(s, "NaN", 3) == 0));
}

/* Quality: True/False (any case of those two spellings), or a number in 0..1; "" = unknown. */
static int parse_quality(const char *s, size_t n, double *out)
{
    if (missing(s, n)) {
        *out = NAN;
        return BR_OK;
    }
    if ((n == 4 &&
         (memcmp(s, "True", 4) == 0 || memcmp(s, "true", 4) == 0 || memcmp(s, "TRUE", 4) == 0))) {
        *out = 1.0;
        return BR_OK;
    }
    if ((n == 5 && (memcmp(s, "False", 5) == 0 || memcmp(s, "false", 5) == 0 ||
                    memcmp(s, "FALSE", 5) == 0))) {
        *out = 0.0;
        return BR_OK;
    }
    double v;
    if (parse_decimal(s, n, &v) != BR_OK || v < 0.0 || v > 1.0) {
        return BR_ERR_PARSE;
    }
    *out = v + 0.0; /* -0 -> 0 */
    return BR_OK;
}

static int parse_cost(const char *s, size_t n, double *out)
{
    if (missing(s, n)) {
        *out = NAN;
        return BR_OK;
    }
    double v;
    if (parse_decimal(s, n, &v) != BR_OK || v < 0.0) {
        return BR_ERR_PARSE;
    }
    *out = v + 0.0;
    return BR_OK;
}

static bool name_is(const char *s, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    return n == k && memcmp(s, lit, k) == 0;
}

static bool has_suffix(const char *s, size_t n, const char *suf, size_t *stem)
{
    size_t k = strlen(suf);
    if (n > k && memcmp(s + n - k, suf, k) == 0) {
        *stem = n - k;
        return true;
    }
    return false;
}

/* Index of the column named name[0..n) among the header fields, or SIZE_MAX. */
static size_t find_col(const struct csv_state *st, const char *name, size_t n)
{
    for (size_t i = 0; i < st->n_fields; i++) {
        if (st->len[i] == n && memcmp(field(st, i), name, n) == 0) {
            return i;
        }
    }
    return SIZE_MAX;
}

/* What column i is, from its name alone; *stem is the model part of RESPONSE/COST names. */
static enum col_kind kind_of(const char *name, size_t n, bool rb, size_t *stem)
{
    if (n == 0 || name_is(name, n, "Unnamed: 0") ||
        (rb && (name_is(name, n, "sample_id") || name_is(name, n, "oracle_model_to_route_to")))) {
        return COL_IGNORE;
    }
    if (name_is(name, n, "prompt")) {
        return COL_PROMPT;
    }
    if (rb && name_is(name, n, "eval_name")) {
        return COL_GROUP;
    }
    if (rb && has_suffix(name, n, "|model_response", stem)) {
        return COL_RESPONSE;
    }
    if (rb && has_suffix(name, n, "|total_cost", stem)) {
        return COL_COST;
    }
    if (!rb && has_suffix(name, n, "_response", stem)) {
        return COL_RESPONSE;
    }
    return COL_QUALITY;
}

static int header_name_ok(struct csv_state *st, size_t i)
{
    const char *name = field(st, i);
    size_t n = st->len[i];
    char e[48];
    if (has_nul(name, n) || !br__utf8_valid(name, n)) {
        return br__ds_fail(st->b, st->row_line, BR_ERR_PARSE,
                           "column %zu: the name is not valid UTF-8 text", i + 1);
    }
    for (size_t j = 0; j < i; j++) {
        if (st->len[j] == n && memcmp(field(st, j), name, n) == 0) {
            echo(name, n, e);
            return br__ds_fail(st->b, st->row_line, BR_ERR_PARSE, "column '%s' appears twice", e);
        }
    }
    return BR_OK;
}

/* First pass over the header: what each column is (models are not registered yet). */
static int classify_header(struct csv_state *st)
{
    struct br__ds_builder *b = st->b;
    bool rb = st->fmt == BR_DATASET_FORMAT_ROUTERBENCH;
    for (size_t i = 0; i < st->n_fields; i++) {
        const char *name = field(st, i);
        size_t n = st->len[i];
        char e[48];
        int rc = header_name_ok(st, i);
        if (rc != BR_OK) {
            return rc;
        }
        size_t stem = 0;
        struct col *c = &st->cols[i];
        c->kind = kind_of(name, n, rb, &stem);
        if (c->kind == COL_PROMPT) {
            st->prompt_col = i;
        } else if (c->kind == COL_GROUP) {
            st->group_col = i;
        } else if (c->kind == COL_QUALITY && rb && memchr(name, '|', n) != NULL) {
            echo(name, n, e);
            return br__ds_fail(b, st->row_line, BR_ERR_PARSE,
                               "column '%s': unknown kind (expected <model>|model_response or "
                               "<model>|total_cost)",
                               e);
        } else if (c->kind == COL_RESPONSE || c->kind == COL_COST) {
            size_t mcol = find_col(st, name, stem);
            if (mcol == SIZE_MAX || mcol == st->prompt_col) {
                echo(name, n, e);
                return br__ds_fail(b, st->row_line, BR_ERR_PARSE,
                                   "column '%s' names no model column of this file", e);
            }
            c->model = mcol; /* a column index for now */
        }
    }
    if (st->prompt_col == SIZE_MAX) {
        return br__ds_fail(b, st->row_line, BR_ERR_PARSE, "no 'prompt' column in the header");
    }
    return BR_OK;
}

/* Registers the quality columns as models (later files of a folder: the same models). */
static int register_models(struct csv_state *st)
{
    struct br__ds_builder *b = st->b;
    bool first_file = b->n_files <= 1 || b->n_models == 0;
    size_t prior_models = b->n_models;
    for (size_t i = 0; i < st->n_cols; i++) {
        if (st->cols[i].kind != COL_QUALITY) {
            continue;
        }
        const char *name = field(st, i);
        size_t n = st->len[i];
        if (!first_file && br__ds_model_find(b, name, n) < 0) {
            char e[48];
            echo(name, n, e);
            return br__ds_fail(b, st->row_line, BR_ERR_PARSE,
                               "model column '%s' is not in the folder's first file", e);
        }
        size_t m = 0;
        int rc = br__ds_model(b, name, n, &m);
        if (rc == BR_ERR_LIMIT) {
            return br__ds_fail(b, st->row_line, rc, "more than %u models", BR__DS_MAX_MODELS);
        }
        if (rc != BR_OK) {
            return rc;
        }
        st->cols[i].model = m;
        struct model_cols *mc = &st->mc[st->n_mc++];
        mc->model = m;
        mc->quality = i;
        mc->response = SIZE_MAX;
        mc->cost = SIZE_MAX;
    }
    if (st->n_mc == 0) {
        return br__ds_fail(b, st->row_line, BR_ERR_PARSE, "no model columns in the header");
    }
    if (!first_file && st->n_mc != prior_models) {
        return br__ds_fail(b, st->row_line, BR_ERR_PARSE,
                           "%zu model columns, the folder's first file has %zu", st->n_mc,
                           prior_models);
    }
    return BR_OK;
}

/* Points each model at its answer and cost columns. */
static int link_columns(struct csv_state *st)
{
    for (size_t i = 0; i < st->n_cols; i++) {
        struct col *c = &st->cols[i];
        if (c->kind != COL_RESPONSE && c->kind != COL_COST) {
            continue;
        }
        struct model_cols *hit = NULL;
        for (size_t k = 0; k < st->n_mc && hit == NULL; k++) {
            hit = st->mc[k].quality == c->model ? &st->mc[k] : NULL;
        }
        if (hit == NULL) {
            char e[48];
            echo(field(st, i), st->len[i], e);
            return br__ds_fail(st->b, st->row_line, BR_ERR_PARSE,
                               "column '%s' names no model column of this file", e);
        }
        if (c->kind == COL_RESPONSE) {
            hit->response = i;
        } else {
            hit->cost = i;
        }
        c->model = hit->model;
    }
    return BR_OK;
}

static int take_header(struct csv_state *st)
{
    st->n_cols = st->n_fields;
    st->cols = br_calloc(st->n_cols, sizeof(*st->cols));
    st->mc = br_calloc(st->n_cols, sizeof(*st->mc));
    if (st->cols == NULL || st->mc == NULL) {
        return BR_ERR_NOMEM;
    }
    int rc = classify_header(st);
    if (rc == BR_OK) {
        rc = register_models(st);
    }
    if (rc == BR_OK) {
        rc = link_columns(st);
    }
    st->have_header = rc == BR_OK;
    return rc;
}

/* Text of a prompt or answer field: as it is (RouteLLM) or decoded from a list literal. */
static int field_text(struct csv_state *st, size_t col, struct br_buf *buf, const char **text,
                      size_t *n)
{
    const char *s = field(st, col);
    size_t len = st->len[col];
    const char *colname = st->fmt == BR_DATASET_FORMAT_ROUTERBENCH ? "Python list literal" : "";
    if (st->fmt == BR_DATASET_FORMAT_ROUTERBENCH && len > 0) {
        const char *what = NULL;
        size_t off = 0;
        br_buf_reset(buf);
        int rc = br__pylist_decode(s, len, buf, &what, &off);
        if (rc == BR_ERR_PARSE) {
            return br__ds_fail(st->b, st->row_line, BR_ERR_PARSE,
                               "column %zu: not a %s of strings: %s at byte %zu", col + 1, colname,
                               what != NULL ? what : "malformed", off);
        }
        if (rc != BR_OK) {
            return rc;
        }
        s = buf->ptr != NULL ? buf->ptr : "";
        len = buf->len;
    }
    if (has_nul(s, len)) {
        return br__ds_fail(st->b, st->row_line, BR_ERR_PARSE, "column %zu: NUL byte in text",
                           col + 1);
    }
    if (!br__utf8_valid(s, len)) {
        return br__ds_fail(st->b, st->row_line, BR_ERR_PARSE, "column %zu: invalid UTF-8", col + 1);
    }
    *text = s;
    *n = len;
    return BR_OK;
}

static int take_row(struct csv_state *st)
{
    struct br__ds_builder *b = st->b;
    if (st->n_fields != st->n_cols) {
        return br__ds_fail(b, st->row_line, BR_ERR_PARSE, "%zu fields, the header has %zu",
                           st->n_fields, st->n_cols);
    }
    const char *prompt = NULL;
    size_t plen = 0;
    int rc = field_text(st, st->prompt_col, &st->scratch, &prompt, &plen);
    if (rc != BR_OK) {
        return rc;
    }
    const char *group = st->group;
    size_t glen = group != NULL ? strlen(group) : 0;
    if (st->group_col != SIZE_MAX) {
        group = field(st, st->group_col);
        glen = st->len[st->group_col];
        if (has_nul(group, glen) || !br__utf8_valid(group, glen)) {
            return br__ds_fail(b, st->row_line, BR_ERR_PARSE, "group: invalid text");
        }
    }
    bool kept = false;
    rc = br__ds_row_begin(b, prompt, plen, group, glen, &kept);
    if (rc == BR_ERR_LIMIT) {
        return br__ds_fail(b, st->row_line, rc, "more than %u prompts", BR__DS_MAX_ROWS);
    }
    if (rc != BR_OK || !kept) {
        return rc;
    }
    for (size_t k = 0; k < st->n_mc; k++) {
        const struct model_cols *mc = &st->mc[k];
        double q = NAN;
        double cost = NAN;
        char e[48];
        if (parse_quality(field(st, mc->quality), st->len[mc->quality], &q) != BR_OK) {
            echo(field(st, mc->quality), st->len[mc->quality], e);
            return br__ds_fail(b, st->row_line, BR_ERR_PARSE,
                               "column '%s': '%s' is not a quality (True, False or 0..1)",
                               b->models[mc->model], e);
        }
        if (mc->cost != SIZE_MAX &&
            parse_cost(field(st, mc->cost), st->len[mc->cost], &cost) != BR_OK) {
            echo(field(st, mc->cost), st->len[mc->cost], e);
            return br__ds_fail(b, st->row_line, BR_ERR_PARSE,
                               "cost of '%s': '%s' is not a non-negative number of USD",
                               b->models[mc->model], e);
        }
        const char *resp = NULL;
        size_t rlen = 0;
        if (mc->response != SIZE_MAX && st->len[mc->response] > 0) {
            rc = field_text(st, mc->response, &st->scratch2, &resp, &rlen);
            if (rc != BR_OK) {
                return rc;
            }
        }
        rc = br__ds_cell_add(b, mc->model, q, cost, -1, -1, resp, rlen);
        if (rc != BR_OK) {
            return rc;
        }
    }
    return BR_OK;
}

static void on_row(int c, void *data)
{
    (void)c;
    struct csv_state *st = data;
    if (st->rc == BR_OK) {
        st->rc = st->have_header ? take_row(st) : take_header(st);
    }
    br_buf_reset(&st->row);
    st->n_fields = 0;
    st->between = true;
}

static int no_space(unsigned char c)
{
    (void)c;
    return 0; /* keep spaces around unquoted fields, as pandas does */
}

static bool blank_line(const char *s, size_t n)
{
    return n == 0 || (n == 1 && (s[0] == '\n' || s[0] == '\r')) ||
           (n == 2 && s[0] == '\r' && s[1] == '\n');
}

static int feed(struct csv_state *st, struct csv_parser *p, const char *data, size_t n)
{
    size_t pos = 0;
    size_t since = 0;
    while (pos < n && st->rc == BR_OK) {
        const char *nl = memchr(data + pos, '\n', n - pos);
        size_t end = nl != NULL ? (size_t)(nl - data) + 1 : n;
        size_t len = end - pos;
        if (st->between && !blank_line(data + pos, len)) {
            st->row_line = st->line;
            st->between = false;
        }
        if (csv_parse(p, data + pos, len, on_field, on_row, st) != len && st->rc == BR_OK) {
            int e = csv_error(p);
            st->rc = e == CSV_ENOMEM ? BR_ERR_NOMEM
                                     : br__ds_fail(st->b, st->line, BR_ERR_PARSE,
                                                   "malformed CSV: %s (a stray or unbalanced "
                                                   "quote?)",
                                                   csv_strerror(e));
            break;
        }
        if (csv_get_buffer_size(p) > BR__DS_MAX_FIELD && st->rc == BR_OK) {
            st->rc = br__ds_fail(st->b, st->row_line, BR_ERR_LIMIT, "field longer than %u bytes",
                                 BR__DS_MAX_FIELD);
            break;
        }
        since += len;
        if (since >= PROGRESS_STEP) {
            br__ds_progress(st->b, since);
            since = 0;
        }
        pos = end;
        st->line++;
    }
    if (since > 0) {
        br__ds_progress(st->b, since);
    }
    return st->rc;
}

int br__ds_load_csv(struct br__ds_builder *b, const char *data, size_t n,
                    enum br_dataset_format format, const char *group)
{
    struct csv_state st;
    struct csv_parser p;
    memset(&st, 0, sizeof(st));
    st.b = b;
    st.fmt = format;
    st.group = group;
    st.line = 1;
    st.row_line = 1;
    st.between = true;
    st.prompt_col = SIZE_MAX;
    st.group_col = SIZE_MAX;
    br_buf_init(&st.row, BR__DS_MAX_FIELD);
    br_buf_init(&st.scratch, BR__DS_MAX_FIELD);
    br_buf_init(&st.scratch2, BR__DS_MAX_FIELD);
    if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL) != 0) {
        return BR_ERR_NOMEM;
    }
    csv_set_realloc_func(&p, br_realloc);
    csv_set_free_func(&p, br_free);
    csv_set_space_func(&p, no_space);
    if (n >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) {
        data += 3; /* UTF-8 byte order mark */
        n -= 3;
    }
    int rc = feed(&st, &p, data, n);
    if (rc == BR_OK) {
        if (csv_fini(&p, on_field, on_row, &st) != 0 && st.rc == BR_OK) {
            st.rc = br__ds_fail(b, st.row_line, BR_ERR_PARSE,
                                "quoted field not closed before the end of the file");
        }
        rc = st.rc;
    }
    if (rc == BR_OK && !st.have_header) {
        rc = br__ds_fail(b, 0, BR_ERR_PARSE, "empty file: no header row");
    }
    csv_free(&p);
    br_buf_cleanup(&st.row);
    br_buf_cleanup(&st.scratch);
    br_buf_cleanup(&st.scratch2);
    br_free(st.off);
    br_free(st.len);
    br_free(st.cols);
    br_free(st.mc);
    return rc;
}
