/* SPDX-License-Identifier: MIT */
/*
 * The built-in routers of `brigade eval` (eval_router.h) and the registry --router looks in:
 *
 *   random         a seeded uniform score per prompt (the expected random router is the
 *                  straight line between the baselines; this one samples it)
 *   always-weak    every prompt to the weak model (one operating point)
 *   always-strong  every prompt to the strong model (one operating point)
 *   oracle         reads the outcomes: score = q_strong - q_weak, ties broken towards the
 *                  cheaper extra cost (by 1e-9 of the score, so the oracle reaches a quality
 *                  floor with its cheapest prompts), then by row (1e-13), so that no scores
 *                  tie; an upper bound, not a router
 *   length         prompt length in bytes: the trivial "long prompts are hard" baseline
 *   scores         precomputed scores from a CSV (--scores FILE) so that any external router
 *                  can be evaluated: a "score" column and an "index" column (the dataset row,
 *                  as `brigade eval --csv` writes it) or a "prompt" column (the exact text)
 */
#include <csv.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/map.h"
#include "core/rand.h"
#include "eval/eval_int.h"
#include "eval/eval_router.h"

/* Callbacks that cannot fail still take the ops table's error buffer. */
static void no_error(char *err, size_t errlen)
{
    if (err != NULL && errlen > 0) {
        err[0] = '\0';
    }
}

/* ---- random ---- */

struct random_state {
    double *scores;
};

static int random_create(const struct br_eval_router_cfg *cfg, const struct br_eval_task *task,
                         void **state_out, char *err, size_t errlen)
{
    no_error(err, errlen);
    struct random_state *st = br_calloc(1, sizeof(*st));
    if (st == NULL) {
        return BR_ERR_NOMEM;
    }
    st->scores = br_calloc(task->n, sizeof(double));
    if (st->scores == NULL) {
        br_free(st);
        return BR_ERR_NOMEM;
    }
    struct br_rng rng;
    br_rng_seed(&rng, cfg->seed != 0 ? cfg->seed : 1);
    for (size_t i = 0; i < task->n; i++) {
        st->scores[i] = br_rng_uniform(&rng);
    }
    *state_out = st;
    return BR_OK;
}

static int random_score(void *state, const struct br_eval_task *task, size_t i, double *out)
{
    (void)task;
    *out = ((struct random_state *)state)->scores[i];
    return BR_OK;
}

static void random_destroy(void *state)
{
    struct random_state *st = state;
    if (st != NULL) {
        br_free(st->scores);
        br_free(st);
    }
}

const struct br_eval_router_ops br_eval_router_random = {
    .name = "random",
    .summary = "uniform random score per prompt (seeded by --seed)",
    .flags = 0,
    .create = random_create,
    .prepare = NULL,
    .score = random_score,
    .destroy = random_destroy,
};

/* ---- routers without state ---- */

static int none_create(const struct br_eval_router_cfg *cfg, const struct br_eval_task *task,
                       void **state_out, char *err, size_t errlen)
{
    (void)cfg;
    (void)task;
    no_error(err, errlen);
    *state_out = NULL;
    return BR_OK;
}

static void none_destroy(void *state)
{
    (void)state;
}

static int weak_score(void *state, const struct br_eval_task *task, size_t i, double *out)
{
    (void)state;
    (void)task;
    (void)i;
    *out = 0.0;
    return BR_OK;
}

static int strong_score(void *state, const struct br_eval_task *task, size_t i, double *out)
{
    (void)state;
    (void)task;
    (void)i;
    *out = 1.0;
    return BR_OK;
}

static int length_score(void *state, const struct br_eval_task *task, size_t i, double *out)
{
    (void)state;
    *out = (double)strlen(br_eval_task_prompt(task, i));
    return BR_OK;
}

const struct br_eval_router_ops br_eval_router_always_weak = {
    .name = "always-weak",
    .summary = "every prompt to the weak model",
    .flags = BR_EVAL_ROUTER_FIXED,
    .create = none_create,
    .prepare = NULL,
    .score = weak_score,
    .destroy = none_destroy,
};

const struct br_eval_router_ops br_eval_router_always_strong = {
    .name = "always-strong",
    .summary = "every prompt to the strong model",
    .flags = BR_EVAL_ROUTER_FIXED,
    .create = none_create,
    .prepare = NULL,
    .score = strong_score,
    .destroy = none_destroy,
};

const struct br_eval_router_ops br_eval_router_length = {
    .name = "length",
    .summary = "prompt length in bytes (longer = strong): a trivial baseline",
    .flags = 0,
    .create = none_create,
    .prepare = NULL,
    .score = length_score,
    .destroy = none_destroy,
};

/* ---- oracle ---- */

struct oracle_state {
    double scale; /* 1 / largest |extra cost| (or prompt length without costs) */
};

static double oracle_extra(const struct br_eval_task *task, size_t i)
{
    if (task->c_strong != NULL && task->c_weak != NULL) {
        return task->c_strong[i] - task->c_weak[i];
    }
    return (double)strlen(br_eval_task_prompt(task, i));
}

static int oracle_create(const struct br_eval_router_cfg *cfg, const struct br_eval_task *task,
                         void **state_out, char *err, size_t errlen)
{
    (void)cfg;
    no_error(err, errlen);
    struct oracle_state *st = br_calloc(1, sizeof(*st));
    if (st == NULL) {
        return BR_ERR_NOMEM;
    }
    double max = 0.0;
    for (size_t i = 0; i < task->n; i++) {
        max = fmax(max, fabs(oracle_extra(task, i)));
    }
    st->scale = max > 0.0 ? 1.0 / max : 0.0;
    *state_out = st;
    return BR_OK;
}

static int oracle_score(void *state, const struct br_eval_task *task, size_t i, double *out)
{
    const struct oracle_state *st = state;
    /* Gain first; then the cheaper extra cost; then the row, so that no two scores tie. */
    *out = task->q_strong[i] - task->q_weak[i] - 1e-9 * oracle_extra(task, i) * st->scale -
           1e-13 * (double)i / (double)task->n;
    return BR_OK;
}

static void oracle_destroy(void *state)
{
    br_free(state);
}

const struct br_eval_router_ops br_eval_router_oracle = {
    .name = "oracle",
    .summary = "reads the outcomes (q_strong - q_weak): the upper bound",
    .flags = BR_EVAL_ROUTER_READS_OUTCOMES,
    .create = oracle_create,
    .prepare = NULL,
    .score = oracle_score,
    .destroy = oracle_destroy,
};

/* ---- scores from a CSV ---- */

struct scores_state {
    double *scores; /* [ds->n_prompts] */
    bool *have;
};

struct scores_csv {
    const struct br_eval_task *task;
    struct scores_state *st;
    const char *path;
    char *err;
    size_t errlen;
    int rc;
    size_t line; /* record number, header = 1 (records, not physical lines) */
    /* current record */
    struct br_buf row;
    size_t off[64];
    size_t len[64];
    size_t n_fields;
    /* header */
    bool have_header;
    size_t n_cols;
    size_t key_col, score_col;
    bool by_prompt;
    struct br_map prompt_rows; /* prompt -> &ds->prompts[first row with that prompt] */
    size_t *next_same;         /* [n_prompts] next row with the same prompt + 1, 0 = none */
};

static int sc_fail(struct scores_csv *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int sc_fail(struct scores_csv *c, const char *fmt, ...)
{
    (void)snprintf(c->err, c->errlen, "%s: record %zu: ", c->path, c->line);
    size_t k = strlen(c->err);
    if (k < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        (void)vsnprintf(c->err + k, c->errlen - k, fmt, ap);
        va_end(ap);
    }
    return BR_ERR_PARSE;
}

static void sc_field(void *s, size_t n, void *data)
{
    struct scores_csv *c = data;
    if (c->rc != BR_OK) {
        return;
    }
    if (c->n_fields >= 64) {
        c->rc = sc_fail(c, "more than 64 fields");
        return;
    }
    c->off[c->n_fields] = c->row.len;
    c->len[c->n_fields] = n;
    if (br_buf_append(&c->row, s != NULL ? s : "", n) != BR_OK ||
        br_buf_append(&c->row, "", 1) != BR_OK) {
        c->rc = sc_fail(c, "record too long");
        return;
    }
    c->n_fields++;
}

static int sc_header(struct scores_csv *c)
{
    c->key_col = SIZE_MAX;
    c->score_col = SIZE_MAX;
    for (size_t i = 0; i < c->n_fields; i++) {
        const char *f = c->row.ptr + c->off[i];
        if (strcmp(f, "score") == 0) {
            c->score_col = i;
        } else if (strcmp(f, "index") == 0 && c->key_col == SIZE_MAX) {
            c->key_col = i;
        } else if (strcmp(f, "prompt") == 0 && c->key_col == SIZE_MAX) {
            c->key_col = i;
            c->by_prompt = true;
        }
    }
    if (c->score_col == SIZE_MAX || c->key_col == SIZE_MAX) {
        return sc_fail(c, "the header needs a \"score\" column and an \"index\" or \"prompt\" "
                          "column");
    }
    c->n_cols = c->n_fields;
    if (c->by_prompt) {
        const struct br_dataset *ds = c->task->ds;
        c->next_same = br_calloc(ds->n_prompts, sizeof(size_t));
        if (c->next_same == NULL) {
            return BR_ERR_NOMEM;
        }
        for (size_t r = ds->n_prompts; r > 0; r--) {
            struct br_slice key = br_slice_from_cstr(ds->prompts[r - 1]);
            char *const *later = br_map_get(&c->prompt_rows, key);
            c->next_same[r - 1] = later != NULL ? (size_t)(later - ds->prompts) + 1 : 0;
            if (br_map_put(&c->prompt_rows, key, &ds->prompts[r - 1]) != BR_OK) {
                return BR_ERR_NOMEM;
            }
        }
    }
    c->have_header = true;
    return BR_OK;
}

static int sc_set(struct scores_csv *c, size_t row, double v)
{
    if (c->st->have[row] && c->st->scores[row] != v) {
        return sc_fail(c, "a second, different score for the same prompt");
    }
    c->st->scores[row] = v;
    c->st->have[row] = true;
    return BR_OK;
}

static int sc_record(struct scores_csv *c)
{
    const struct br_dataset *ds = c->task->ds;
    if (c->n_fields != c->n_cols) {
        return sc_fail(c, "wrong number of fields");
    }
    const char *sf = c->row.ptr + c->off[c->score_col];
    char *end = NULL;
    double v = strtod(sf, &end);
    if (end == sf || *end != '\0' || !isfinite(v)) {
        return sc_fail(c, "score '%.40s' is not a finite number", sf);
    }
    const char *key = c->row.ptr + c->off[c->key_col];
    if (c->by_prompt) {
        char *const *hit = br_map_get(&c->prompt_rows, br_slice_make(key, c->len[c->key_col]));
        if (hit == NULL) {
            return BR_OK; /* a prompt of another dataset (or dropped as contaminated) */
        }
        /* Every copy of a repeated prompt gets the score. */
        for (size_t r1 = (size_t)(hit - ds->prompts) + 1; r1 != 0; r1 = c->next_same[r1 - 1]) {
            int rc = sc_set(c, r1 - 1, v);
            if (rc != BR_OK) {
                return rc;
            }
        }
        return BR_OK;
    }
    unsigned long long idx = 0;
    if (br_slice_to_u64(br_slice_make(key, c->len[c->key_col]), ds->n_prompts - 1, &idx) != BR_OK) {
        return sc_fail(c, "index '%.40s' is not a row of the dataset", key);
    }
    return sc_set(c, (size_t)idx, v);
}

static void sc_row(int ch, void *data)
{
    (void)ch;
    struct scores_csv *c = data;
    if (c->rc == BR_OK) {
        c->rc = c->have_header ? sc_record(c) : sc_header(c);
    }
    c->line++;
    c->n_fields = 0;
    br_buf_reset(&c->row);
}

static int scores_read(struct scores_csv *c, FILE *f)
{
    struct csv_parser p;
    if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL) != 0) {
        return BR_ERR_NOMEM;
    }
    csv_set_realloc_func(&p, br_realloc);
    csv_set_free_func(&p, br_free);
    char buf[65536];
    size_t got;
    while (c->rc == BR_OK && (got = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (csv_parse(&p, buf, got, sc_field, sc_row, c) != got && c->rc == BR_OK) {
            c->rc = sc_fail(c, "malformed CSV: %s", csv_strerror(csv_error(&p)));
        }
    }
    if (c->rc == BR_OK && ferror(f)) {
        c->rc = sc_fail(c, "read error");
    }
    if (c->rc == BR_OK && csv_fini(&p, sc_field, sc_row, c) != 0 && c->rc == BR_OK) {
        c->rc = sc_fail(c, "quoted field not closed");
    }
    if (c->rc == BR_OK && !c->have_header) {
        c->rc = sc_fail(c, "empty file");
    }
    csv_free(&p);
    return c->rc;
}

static void scores_destroy(void *state)
{
    struct scores_state *st = state;
    if (st != NULL) {
        br_free(st->scores);
        br_free(st->have);
        br_free(st);
    }
}

static int scores_create(const struct br_eval_router_cfg *cfg, const struct br_eval_task *task,
                         void **state_out, char *err, size_t errlen)
{
    if (cfg->scores_path == NULL) {
        (void)snprintf(err, errlen, "router scores needs --scores FILE");
        return BR_ERR_INVAL;
    }
    const struct br_dataset *ds = task->ds;
    struct scores_state *st = br_calloc(1, sizeof(*st));
    if (st == NULL) {
        return BR_ERR_NOMEM;
    }
    st->scores = br_calloc(ds->n_prompts, sizeof(double));
    st->have = br_calloc(ds->n_prompts, sizeof(bool));
    if (st->scores == NULL || st->have == NULL) {
        scores_destroy(st);
        return BR_ERR_NOMEM;
    }
    FILE *f = fopen(cfg->scores_path, "rb");
    if (f == NULL) {
        (void)snprintf(err, errlen, "%s: cannot open", cfg->scores_path);
        scores_destroy(st);
        return BR_ERR_IO;
    }
    struct scores_csv c;
    memset(&c, 0, sizeof(c));
    c.task = task;
    c.st = st;
    c.path = cfg->scores_path;
    c.err = err;
    c.errlen = errlen;
    c.line = 1;
    br_buf_init(&c.row, 1u << 24);
    br_map_init(&c.prompt_rows);
    int rc = scores_read(&c, f);
    (void)fclose(f);
    br_buf_cleanup(&c.row);
    br_map_cleanup(&c.prompt_rows);
    br_free(c.next_same);
    if (rc == BR_OK) {
        size_t missing = 0;
        size_t first = 0;
        for (size_t i = 0; i < task->n; i++) {
            if (!st->have[task->rows[i]]) {
                first = missing == 0 ? task->rows[i] : first;
                missing++;
            }
        }
        if (missing > 0) {
            (void)snprintf(err, errlen, "%s: %zu prompts have no score (the first: row %zu)",
                           cfg->scores_path, missing, first);
            rc = BR_ERR_PARSE;
        }
    }
    if (rc != BR_OK) {
        scores_destroy(st);
        return rc;
    }
    *state_out = st;
    return BR_OK;
}

static int scores_score(void *state, const struct br_eval_task *task, size_t i, double *out)
{
    *out = ((struct scores_state *)state)->scores[task->rows[i]];
    return BR_OK;
}

const struct br_eval_router_ops br_eval_router_scores = {
    .name = "scores",
    .summary = "precomputed scores from --scores CSV (columns index|prompt, score)",
    .flags = 0,
    .create = scores_create,
    .prepare = NULL,
    .score = scores_score,
    .destroy = scores_destroy,
};

/* ---- registry ---- */

static const struct br_eval_router_ops *const registry[] = {
    &br_eval_router_random,     &br_eval_router_always_weak, &br_eval_router_always_strong,
    &br_eval_router_oracle,     &br_eval_router_length,      &br_eval_router_scores,
/* REGISTRATION POINT: learned routers. src/eval/CMakeLists.txt defines
 * BR_EVAL_HAVE_CLASSIFIER when src/eval/train.c exists; train.c defines
 * br_eval_router_classifier (see eval_router.h). */
#ifdef BR_EVAL_HAVE_CLASSIFIER
    &br_eval_router_classifier,
#endif
};

size_t br_eval_router_count(void)
{
    return sizeof(registry) / sizeof(registry[0]);
}

const struct br_eval_router_ops *br_eval_router_at(size_t i)
{
    return i < br_eval_router_count() ? registry[i] : NULL;
}

const struct br_eval_router_ops *br_eval_router_find(const char *name)
{
    if (name == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < br_eval_router_count(); i++) {
        if (strcmp(registry[i]->name, name) == 0) {
            return registry[i];
        }
    }
    return NULL;
}
