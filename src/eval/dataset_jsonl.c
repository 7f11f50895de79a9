/* SPDX-License-Identifier: MIT */
/*
 * brigade's generic JSONL dataset and RouteLLM's contaminated_prompts.jsonl, read with
 * jansson (offline, not a hot path). One JSON object per line; blank lines are skipped. The
 * dataset format (documented in docs/internals/eval.md and `brigade eval --help`):
 *
 *   {"prompt": "...", "group": "...",
 *    "models": {"<name>": {"quality": 0..1 | true | false, "cost_usd": 0.0012,
 *                          "prompt_tokens": 12, "completion_tokens": 80, "response": "..."}}}
 *
 * prompt and models are required, quality is required in each model; group, cost_usd, the
 * token counts and response are optional ("group" may be null). Other keys are ignored so that
 * files may carry ids and metadata. A model missing from a line has unknown quality there.
 */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/err.h"
#include "eval/eval_int.h"

#define PROGRESS_STEP (1u << 20)

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') {
            return false;
        }
    }
    return true;
}

static int parse_line(struct br__ds_builder *b, size_t line, const char *s, size_t n, json_t **out)
{
    json_error_t e;
    if (n > BR__DS_MAX_FIELD) {
        return br__ds_fail(b, line, BR_ERR_LIMIT, "line longer than %u bytes", BR__DS_MAX_FIELD);
    }
    json_t *v = json_loadb(s, n, JSON_REJECT_DUPLICATES, &e);
    if (v == NULL) {
        return br__ds_fail(b, line, BR_ERR_PARSE, "invalid JSON at column %d: %s", e.column,
                           e.text);
    }
    if (!json_is_object(v)) {
        json_decref(v);
        return br__ds_fail(b, line, BR_ERR_PARSE, "expected a JSON object");
    }
    *out = v;
    return BR_OK;
}

/* A non-negative integer that fits int64 (JSON integers, or reals with no fraction). */
static int get_count(const json_t *v, int64_t *out)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (int64_t)json_integer_value(v);
        return BR_OK;
    }
    return BR_ERR_PARSE;
}

/* quality: 0..1 or a boolean (required). */
static int get_quality(struct br__ds_builder *b, size_t line, const char *name, const json_t *m,
                       double *out)
{
    const json_t *q = json_object_get(m, "quality");
    if (json_is_boolean(q)) {
        *out = json_is_true(q) ? 1.0 : 0.0;
        return BR_OK;
    }
    if (!json_is_number(q)) {
        return br__ds_fail(b, line, BR_ERR_PARSE,
                           "models.\"%s\".quality is missing or not a number or boolean", name);
    }
    double v = json_number_value(q);
    if (!(v >= 0.0 && v <= 1.0)) {
        return br__ds_fail(b, line, BR_ERR_PARSE, "models.\"%s\".quality must be within 0..1",
                           name);
    }
    *out = v + 0.0;
    return BR_OK;
}

/* cost_usd: a non-negative number, or absent/null (NaN). */
static int get_cost(struct br__ds_builder *b, size_t line, const char *name, const json_t *m,
                    double *out)
{
    const json_t *c = json_object_get(m, "cost_usd");
    *out = NAN;
    if (c == NULL || json_is_null(c)) {
        return BR_OK;
    }
    double v = json_is_number(c) ? json_number_value(c) : -1.0;
    if (!(v >= 0.0) || !isfinite(v)) {
        return br__ds_fail(b, line, BR_ERR_PARSE,
                           "models.\"%s\".cost_usd must be a non-negative number", name);
    }
    *out = v + 0.0;
    return BR_OK;
}

/* A token count: a non-negative integer, or absent/null (-1). */
static int get_tokens(struct br__ds_builder *b, size_t line, const char *name, const json_t *m,
                      const char *key, int64_t *out)
{
    const json_t *t = json_object_get(m, key);
    *out = -1;
    if (t == NULL || json_is_null(t)) {
        return BR_OK;
    }
    if (get_count(t, out) != BR_OK) {
        return br__ds_fail(b, line, BR_ERR_PARSE, "models.\"%s\".%s must be a non-negative integer",
                           name, key);
    }
    return BR_OK;
}

static int model_cell(struct br__ds_builder *b, size_t line, const char *name, const json_t *m)
{
    if (!json_is_object(m)) {
        return br__ds_fail(b, line, BR_ERR_PARSE, "models.\"%s\" is not an object", name);
    }
    double quality = NAN;
    double cost = NAN;
    int64_t pt = -1;
    int64_t ct = -1;
    int rc = get_quality(b, line, name, m, &quality);
    if (rc == BR_OK) {
        rc = get_cost(b, line, name, m, &cost);
    }
    if (rc == BR_OK) {
        rc = get_tokens(b, line, name, m, "prompt_tokens", &pt);
    }
    if (rc == BR_OK) {
        rc = get_tokens(b, line, name, m, "completion_tokens", &ct);
    }
    if (rc != BR_OK) {
        return rc;
    }
    const char *resp = NULL;
    size_t rlen = 0;
    const json_t *r = json_object_get(m, "response");
    if (r != NULL && !json_is_null(r)) {
        if (!json_is_string(r)) {
            return br__ds_fail(b, line, BR_ERR_PARSE, "models.\"%s\".response must be a string",
                               name);
        }
        resp = json_string_value(r);
        rlen = json_string_length(r);
    }
    size_t idx = 0;
    rc = br__ds_model(b, name, strlen(name), &idx);
    if (rc == BR_ERR_LIMIT) {
        return br__ds_fail(b, line, rc, "more than %u models", BR__DS_MAX_MODELS);
    }
    if (rc != BR_OK) {
        return rc;
    }
    return br__ds_cell_add(b, idx, quality, cost, pt, ct, resp, rlen);
}

static int take_object(struct br__ds_builder *b, size_t line, const json_t *o)
{
    const json_t *p = json_object_get(o, "prompt");
    if (!json_is_string(p)) {
        return br__ds_fail(b, line, BR_ERR_PARSE, "\"prompt\" is missing or not a string");
    }
    const json_t *g = json_object_get(o, "group");
    if (g != NULL && !json_is_null(g) && !json_is_string(g)) {
        return br__ds_fail(b, line, BR_ERR_PARSE, "\"group\" must be a string or null");
    }
    const json_t *models = json_object_get(o, "models");
    if (!json_is_object(models) || json_object_size(models) == 0) {
        return br__ds_fail(b, line, BR_ERR_PARSE,
                           "\"models\" is missing or not a non-empty object");
    }
    /* Check the models first: a row is added only when all of it is valid. */
    const char *name;
    const json_t *m;
    json_object_foreach((json_t *)models, name, m)
    {
        if (name[0] == '\0') {
            return br__ds_fail(b, line, BR_ERR_PARSE, "empty model name");
        }
    }
    bool kept = false;
    const char *gs = json_is_string(g) ? json_string_value(g) : NULL;
    int rc = br__ds_row_begin(b, json_string_value(p), json_string_length(p), gs,
                              gs != NULL ? json_string_length(g) : 0, &kept);
    if (rc == BR_ERR_LIMIT) {
        return br__ds_fail(b, line, rc, "more than %u prompts", BR__DS_MAX_ROWS);
    }
    if (rc != BR_OK || !kept) {
        return rc;
    }
    json_object_foreach((json_t *)models, name, m)
    {
        rc = model_cell(b, line, name, m);
        if (rc != BR_OK) {
            return rc;
        }
    }
    return BR_OK;
}

typedef int (*line_fn)(struct br__ds_builder *b, size_t line, const json_t *o);

static int each_line(struct br__ds_builder *b, const char *data, size_t n, line_fn fn,
                     bool progress)
{
    size_t pos = 0;
    size_t line = 1;
    size_t since = 0;
    int rc = BR_OK;
    while (pos < n && rc == BR_OK) {
        const char *nl = memchr(data + pos, '\n', n - pos);
        size_t end = nl != NULL ? (size_t)(nl - data) : n;
        if (!blank(data + pos, end - pos)) {
            json_t *o = NULL;
            rc = parse_line(b, line, data + pos, end - pos, &o);
            if (rc == BR_OK) {
                rc = fn(b, line, o);
                json_decref(o);
            }
        }
        size_t step = (nl != NULL ? end + 1 : end) - pos;
        since += step;
        if (progress && since >= PROGRESS_STEP) {
            br__ds_progress(b, since);
            since = 0;
        }
        pos += step;
        line++;
    }
    if (progress && since > 0) {
        br__ds_progress(b, since);
    }
    return rc;
}

int br__ds_load_jsonl(struct br__ds_builder *b, const char *data, size_t n)
{
    return each_line(b, data, n, take_object, true);
}

static int take_contaminated(struct br__ds_builder *b, size_t line, const json_t *o)
{
    const json_t *p = json_object_get(o, "eval_prompt");
    if (!json_is_string(p)) {
        return br__ds_fail(b, line, BR_ERR_PARSE, "\"eval_prompt\" is missing or not a string");
    }
    size_t len = json_string_length(p);
    char *key = br__pool_strndup(&b->pool, json_string_value(p), len);
    if (key == NULL) {
        return BR_ERR_NOMEM;
    }
    b->cont_len_bits |= (uint64_t)1 << (len % 64);
    return br_map_put(&b->contaminated, br_slice_make(key, len), key);
}

int br__ds_contaminated_parse(struct br__ds_builder *b, const char *data, size_t n)
{
    return each_line(b, data, n, take_contaminated, false);
}
