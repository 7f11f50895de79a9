/* SPDX-License-Identifier: MIT */
/*
 * Training the learned router with liblinear (see train.h): the feature matrix of a training
 * set (built once per feature configuration, in liblinear's sparse format with a bias node),
 * soft targets fitted through weighted copies, C chosen by inner cross-validation, outer k-fold
 * and leave-one-source-out cross-validation, and the `classifier` router of `brigade eval`.
 */
#include "eval/train.h"

#include <linear.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/err.h"
#include "eval/eval.h"
#include "eval/folds.h"
#include "eval/metrics.h"

/* ---- options and labels ---- */

static const char *const label_names[] = {"soft", "gain", "weak-wrong", "diff"};

void br_train_opts_default(struct br_train_opts *out)
{
    static const double grid[] = {0.01, 0.03, 0.1, 0.3, 1.0, 3.0};
    memset(out, 0, sizeof(*out));
    out->kind = BR_TRAIN_BINARY;
    out->label = BR_TRAIN_LABEL_SOFT;
    br_features_config_default(&out->features);
    out->c = 0;
    memcpy(out->c_grid, grid, sizeof(grid));
    out->n_c_grid = sizeof(grid) / sizeof(grid[0]);
    out->inner_folds = 3;
    out->solver = L2R_LR;
    out->eps = 0.01;
    out->seed = 1;
}

int br_train_label_parse(const char *s, enum br_train_label *out)
{
    for (size_t i = 0; i < sizeof(label_names) / sizeof(label_names[0]); i++) {
        if (strcmp(s, label_names[i]) == 0) {
            *out = (enum br_train_label)i;
            return BR_OK;
        }
    }
    return BR_ERR_INVAL;
}

const char *br_train_label_name(enum br_train_label l)
{
    return (size_t)l < sizeof(label_names) / sizeof(label_names[0]) ? label_names[l] : "?";
}

static void progress(const struct br_train_opts *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void progress(const struct br_train_opts *o, const char *fmt, ...)
{
    char line[512];
    if (!o->progress) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    o->progress(o->progress_user, line);
}

/* ---- training data ---- */

int br_train_data_init(struct br_train_data *d, size_t n_models, const char *const *names)
{
    memset(d, 0, sizeof(*d));
    if (n_models < 1 || n_models > BR_TRAIN_MAX_MODELS) {
        return BR_ERR_INVAL;
    }
    d->n_models = n_models;
    for (size_t m = 0; m < n_models; m++) {
        d->models[m] = br_strdup(names[m]);
        if (!d->models[m]) {
            br_train_data_cleanup(d);
            return BR_ERR_NOMEM;
        }
    }
    return BR_OK;
}

static void matrix_free(void *p);

void br_train_data_cleanup(struct br_train_data *d)
{
    if (!d) {
        return;
    }
    for (size_t m = 0; m < BR_TRAIN_MAX_MODELS; m++) {
        br_free(d->models[m]);
    }
    for (size_t s = 0; s < BR_TRAIN_MAX_SOURCES; s++) {
        br_free(d->source_names[s]);
    }
    br_free(d->prompts);
    br_free(d->answers);
    br_free(d->quality);
    br_free(d->cost);
    br_free(d->source);
    matrix_free(d->matrix);
    memset(d, 0, sizeof(*d));
}

static int data_reserve(struct br_train_data *d, size_t more)
{
    if (d->n + more <= d->cap) {
        return BR_OK;
    }
    size_t cap = d->cap ? d->cap : 1024;
    while (cap < d->n + more) {
        cap *= 2;
    }
    const char **p = br_realloc(d->prompts, cap * sizeof(*p));
    if (!p) {
        return BR_ERR_NOMEM;
    }
    d->prompts = p;
    const char **a = br_realloc(d->answers, cap * sizeof(*a));
    if (!a) {
        return BR_ERR_NOMEM;
    }
    d->answers = a;
    double *q = br_realloc(d->quality, cap * d->n_models * sizeof(*q));
    if (!q) {
        return BR_ERR_NOMEM;
    }
    d->quality = q;
    double *c = br_realloc(d->cost, cap * d->n_models * sizeof(*c));
    if (!c) {
        return BR_ERR_NOMEM;
    }
    d->cost = c;
    unsigned *s = br_realloc(d->source, cap * sizeof(*s));
    if (!s) {
        return BR_ERR_NOMEM;
    }
    d->source = s;
    d->cap = cap;
    return BR_OK;
}

static int add_source(struct br_train_data *d, const char *name, unsigned *out)
{
    if (d->n_sources >= BR_TRAIN_MAX_SOURCES) {
        return BR_ERR_LIMIT;
    }
    d->source_names[d->n_sources] = br_strdup(name ? name : "?");
    if (!d->source_names[d->n_sources]) {
        return BR_ERR_NOMEM;
    }
    *out = (unsigned)d->n_sources++;
    /* the feature cache no longer covers every row */
    matrix_free(d->matrix);
    d->matrix = NULL;
    return BR_OK;
}

/* Index in ds of the first of the comma-separated names that ds has, or -1. */
static int find_alias(const struct br_dataset *ds, const char *aliases)
{
    const char *p = aliases;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        for (size_t m = 0; m < ds->n_models; m++) {
            if (strlen(ds->models[m]) == n && strncasecmp(ds->models[m], p, n) == 0) {
                return (int)m;
            }
        }
        if (!e) {
            break;
        }
        p = e + 1;
    }
    return -1;
}

int br_train_data_add(struct br_train_data *d, const struct br_dataset *ds,
                      const char *const *aliases, int answer_model, char *err, size_t errlen)
{
    /* add_source() and data_reserve() never change the model count: both loops use this copy,
     * so every idx[m] read below was written by the first loop. */
    const size_t n_models = d->n_models;
    int idx[BR_TRAIN_MAX_MODELS];
    unsigned src;
    for (size_t m = 0; m < n_models; m++) {
        idx[m] = find_alias(ds, aliases[m]);
        if (idx[m] < 0) {
            br_err_printf(err, errlen, "%s: no model named %s", ds->name, aliases[m]);
            return BR_ERR_NOTFOUND;
        }
    }
    if (answer_model >= 0 && ((size_t)answer_model >= n_models || !ds->responses)) {
        br_err_printf(err, errlen, "%s: no recorded answers", ds->name);
        return BR_ERR_NOTFOUND;
    }
    int rc = add_source(d, ds->name, &src);
    if (rc == BR_OK) {
        rc = data_reserve(d, ds->n_prompts);
    }
    if (rc != BR_OK) {
        return rc;
    }
    for (size_t i = 0; i < ds->n_prompts; i++) {
        size_t known = 0;
        for (size_t m = 0; m < n_models; m++) {
            known += !isnan(br_dataset_quality(ds, i, (size_t)idx[m]));
        }
        if (known == 0 || (n_models == 2 && known < 2)) {
            continue;
        }
        const char *ans = NULL;
        if (answer_model >= 0) {
            ans = ds->responses[i * ds->n_models + (size_t)idx[answer_model]];
            if (!ans) {
                continue;
            }
        }
        size_t r = d->n++;
        d->prompts[r] = ds->prompts[i];
        d->answers[r] = ans;
        d->source[r] = src;
        for (size_t m = 0; m < n_models; m++) {
            d->quality[r * n_models + m] = br_dataset_quality(ds, i, (size_t)idx[m]);
            d->cost[r * n_models + m] = ds->cost_usd[i * ds->n_models + (size_t)idx[m]];
        }
    }
    return BR_OK;
}

int br_train_data_add_task(struct br_train_data *d, const struct br_eval_task *task,
                           bool with_answers, char *err, size_t errlen)
{
    unsigned src;
    if (d->n_models != 2) {
        return BR_ERR_INVAL;
    }
    if (with_answers && !task->ds->responses) {
        br_err_printf(err, errlen, "%s: no recorded answers", task->ds->name);
        return BR_ERR_NOTFOUND;
    }
    int rc = add_source(d, task->ds->name, &src);
    if (rc == BR_OK) {
        rc = data_reserve(d, task->n);
    }
    if (rc != BR_OK) {
        return rc;
    }
    for (size_t i = 0; i < task->n; i++) {
        size_t row = task->rows[i];
        const char *ans = NULL;
        if (with_answers) {
            ans = task->ds->responses[row * task->ds->n_models + task->weak];
            if (!ans) {
                continue;
            }
        }
        size_t r = d->n++;
        d->prompts[r] = task->ds->prompts[row];
        d->answers[r] = ans;
        d->source[r] = src;
        d->quality[r * 2] = task->q_strong[i];
        d->quality[r * 2 + 1] = task->q_weak[i];
        d->cost[r * 2] = task->c_strong ? task->c_strong[i] : NAN;
        d->cost[r * 2 + 1] = task->c_weak ? task->c_weak[i] : NAN;
    }
    return BR_OK;
}

/* ---- feature matrix ---- */

struct matrix {
    struct br_features_config fc;
    enum br_train_kind kind; /* verifier rows add answer features */
    size_t n;
    size_t dim; /* features per row, excluding the bias node */
    struct feature_node *space;
    size_t *start; /* [n + 1] */
};

static void matrix_free(void *p)
{
    struct matrix *m = p;
    if (!m) {
        return;
    }
    br_free(m->space);
    br_free(m->start);
    br_free(m);
}

static int cmp_feature(const void *a, const void *b)
{
    uint32_t x = ((const struct br_feature *)a)->index;
    uint32_t y = ((const struct br_feature *)b)->index;
    return x < y ? -1 : (x > y ? 1 : 0);
}

/* Features of row i into buf (sorted, merged, zero-free); returns the count. */
static int row_features(const struct matrix *m, const struct br_train_data *d, size_t i,
                        struct br_feature *buf, size_t cap, size_t *n_out)
{
    size_t n = 0;
    size_t k = 0;
    const char *p = d->prompts[i];
    int rc = br_features_extract(&m->fc, p, strlen(p), buf, cap, &n);
    if (rc != BR_OK) {
        return rc;
    }
    if (m->kind == BR_TRAIN_VERIFIER) {
        const char *a = d->answers[i] ? d->answers[i] : "";
        rc = br_features_extract_answer(&m->fc, a, strlen(a), buf + n, cap - n, &k);
        if (rc != BR_OK) {
            return rc;
        }
        n += k;
        double checks[BR_FEATURES_N_ANSWER];
        br_features_answer_checks(p, strlen(p), a, strlen(a), checks);
        uint32_t base = (uint32_t)br_features_dim(&m->fc);
        for (uint32_t c = 0; c < BR_FEATURES_N_ANSWER; c++) {
            if (checks[c] != 0.0 && n < cap) {
                buf[n].index = base + c;
                buf[n].value = (float)checks[c];
                n++;
            }
        }
    }
    qsort(buf, n, sizeof(*buf), cmp_feature);
    k = 0;
    for (size_t j = 0; j < n; j++) {
        if (k && buf[k - 1].index == buf[j].index) {
            buf[k - 1].value += buf[j].value;
        } else {
            buf[k++] = buf[j];
        }
    }
    n = 0;
    for (size_t j = 0; j < k; j++) {
        if (buf[j].value != 0.0f) {
            buf[n++] = buf[j];
        }
    }
    *n_out = n;
    return BR_OK;
}

static size_t row_cap(const struct matrix *m, const struct br_train_data *d, size_t i)
{
    size_t cap = br_features_max(&m->fc, strlen(d->prompts[i]));
    if (m->kind == BR_TRAIN_VERIFIER) {
        cap += br_features_max(&m->fc, d->answers[i] ? strlen(d->answers[i]) : 0) +
               BR_FEATURES_N_ANSWER;
    }
    return cap;
}

/* Makes *buf hold at least cap features (at least one); the contents are not kept. */
static int row_buf_reserve(struct br_feature **buf, size_t *buf_cap, size_t cap)
{
    if (*buf && cap <= *buf_cap) {
        return BR_OK;
    }
    br_free(*buf);
    *buf_cap = cap > 0 ? cap : 1;
    *buf = br_calloc(*buf_cap, sizeof(**buf));
    return *buf ? BR_OK : BR_ERR_NOMEM;
}

/* Makes m->space hold `more` nodes after the first `used` (doubling, from 64k nodes). */
static int space_reserve(struct matrix *m, size_t *space_cap, size_t used, size_t more)
{
    if (m->space && used + more <= *space_cap) {
        return BR_OK;
    }
    size_t nc = *space_cap ? *space_cap : 65536;
    while (nc < used + more) {
        nc *= 2;
    }
    struct feature_node *s = br_realloc(m->space, nc * sizeof(*s));
    if (!s) {
        return BR_ERR_NOMEM;
    }
    m->space = s;
    *space_cap = nc;
    return BR_OK;
}

/* Writes the n features f at m->space[used] in liblinear's form (1-based indices), then the
 * bias node and the terminator; returns the new count of used nodes (used + n + 2). */
static size_t space_append_row(struct matrix *m, size_t used, const struct br_feature *f, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        m->space[used].index = (int)f[j].index + 1;
        m->space[used].value = f[j].value;
        used++;
    }
    m->space[used].index = (int)m->dim + 1; /* bias node */
    m->space[used].value = 1.0;
    used++;
    m->space[used].index = -1;
    m->space[used].value = 0;
    used++;
    return used;
}

static int matrix_build(struct br_train_data *d, const struct br_features_config *fc,
                        enum br_train_kind kind, const struct matrix **out)
{
    struct matrix *m = d->matrix;
    enum br_train_kind mk = kind == BR_TRAIN_VERIFIER ? BR_TRAIN_VERIFIER : BR_TRAIN_BINARY;
    if (m && m->n == d->n && m->kind == mk && memcmp(&m->fc, fc, sizeof(*fc)) == 0) {
        *out = m;
        return BR_OK;
    }
    matrix_free(d->matrix);
    d->matrix = NULL;
    int rc = BR_ERR_NOMEM;
    struct br_feature *buf = NULL;
    size_t buf_cap = 0;
    m = br_calloc(1, sizeof(*m));
    if (!m) {
        return BR_ERR_NOMEM;
    }
    m->fc = *fc;
    m->kind = mk;
    m->n = d->n;
    m->dim = br_classifier_dim(
        mk == BR_TRAIN_VERIFIER ? BR_CLASSIFIER_VERIFIER : BR_CLASSIFIER_BINARY, fc);
    m->start = br_calloc(d->n + 1, sizeof(size_t));
    if (!m->start) {
        goto fail;
    }
    size_t space_cap = 0;
    size_t used = 0;
    for (size_t i = 0; i < d->n; i++) {
        size_t n = 0;
        rc = row_buf_reserve(&buf, &buf_cap, row_cap(m, d, i));
        if (rc == BR_OK) {
            rc = row_features(m, d, i, buf, buf_cap, &n);
        }
        if (rc == BR_OK) {
            rc = space_reserve(m, &space_cap, used, n + 2);
        }
        if (rc != BR_OK) {
            goto fail;
        }
        m->start[i] = used;
        used = space_append_row(m, used, buf, n);
    }
    m->start[d->n] = used;
    br_free(buf);
    d->matrix = m;
    *out = m;
    return BR_OK;
fail:
    br_free(buf);
    matrix_free(m);
    return rc;
}

/* ---- fitting one logistic output ---- */

static void quiet(const char *s)
{
    (void)s;
}

static double logit(double p)
{
    p = p < 1e-4 ? 1e-4 : (p > 1 - 1e-4 ? 1 - 1e-4 : p);
    return log(p / (1 - p));
}

/*
 * Fits one logistic output on rows[0..n) with targets t[r] in [0, 1] (NaN rows skipped),
 * writing weights into w[j * stride] for j < dim and the bias into *bias.
 */
static int fit_output(const struct matrix *m, const size_t *rows, size_t n, const double *t,
                      double c, const struct br_train_opts *o, float *w, size_t stride,
                      double *bias)
{
    int copies = 2;
    size_t total = 0;
    size_t n_pos = 0;
    double sum_t = 0;
    for (size_t i = 0; i < n; i++) {
        double v = t[rows[i]];
        if (isnan(v)) {
            continue;
        }
        if (v * 2 != round(v * 2)) {
            copies = 4;
        }
        sum_t += v;
        total++;
    }
    for (size_t j = 0; j < m->dim; j++) {
        w[j * stride] = 0.0f;
    }
    if (total == 0) {
        *bias = 0;
        return BR_OK;
    }
    struct feature_node **x = br_calloc(total * (size_t)copies, sizeof(struct feature_node *));
    double *y = br_calloc(total * (size_t)copies, sizeof(*y));
    if (!x || !y) {
        br_free(x);
        br_free(y);
        return BR_ERR_NOMEM;
    }
    size_t l = 0;
    for (size_t i = 0; i < n; i++) {
        double v = t[rows[i]];
        if (isnan(v)) {
            continue;
        }
        v = v < 0 ? 0 : (v > 1 ? 1 : v);
        int pos = (int)lround(v * copies);
        for (int k = 0; k < copies; k++) {
            x[l] = m->space + m->start[rows[i]];
            y[l] = k < pos ? 1.0 : -1.0;
            n_pos += k < pos;
            l++;
        }
    }
    if (n_pos == 0 || n_pos == l) {
        /* one class only: a constant model */
        *bias = logit(sum_t / (double)total);
        br_free(x);
        br_free(y);
        return BR_OK;
    }
    struct problem prob = {.l = (int)l, .n = (int)m->dim + 1, .y = y, .x = x, .bias = 1.0};
    struct parameter par;
    memset(&par, 0, sizeof(par));
    par.solver_type = o->solver;
    par.eps = o->eps > 0 ? o->eps : 0.01;
    par.C = c / copies;
    set_print_string_function(quiet);
    if (check_parameter(&prob, &par) != NULL) {
        br_free(x);
        br_free(y);
        return BR_ERR_INVAL;
    }
    struct model *md = train(&prob, &par);
    br_free(x);
    br_free(y);
    if (!md) {
        return BR_ERR_NOMEM;
    }
    double sign = md->label[0] == 1 ? 1.0 : -1.0;
    for (size_t j = 0; j < m->dim; j++) {
        w[j * stride] = (float)(sign * md->w[j]);
    }
    *bias = sign * md->w[m->dim];
    free_and_destroy_model(&md);
    return BR_OK;
}

/* ---- targets ---- */

static size_t n_sets_for(const struct br_train_opts *o, const struct br_train_data *d)
{
    if (o->kind == BR_TRAIN_NMODEL) {
        return d->n_models;
    }
    return o->label == BR_TRAIN_LABEL_DIFF && o->kind == BR_TRAIN_BINARY ? 2 : 1;
}

/* Target of set s for every row of d into t[d->n]. */
static void targets(const struct br_train_opts *o, const struct br_train_data *d, size_t s,
                    double *t)
{
    for (size_t i = 0; i < d->n; i++) {
        const double *q = d->quality + i * d->n_models;
        if (o->kind == BR_TRAIN_NMODEL) {
            t[i] = q[s];
            continue;
        }
        double qs = q[0];
        double qw = q[1];
        switch (o->kind == BR_TRAIN_VERIFIER ? BR_TRAIN_LABEL_SOFT : o->label) {
        case BR_TRAIN_LABEL_SOFT:
            t[i] = 0.5 * (1.0 + qs - qw);
            break;
        case BR_TRAIN_LABEL_GAIN:
            t[i] = qs > qw ? 1.0 : 0.0;
            break;
        case BR_TRAIN_LABEL_WEAK_WRONG:
            t[i] = qw < 0.5 ? 1.0 : 0.0;
            break;
        case BR_TRAIN_LABEL_DIFF:
            t[i] = s == 0 ? qs : qw;
            break;
        }
    }
}

/* ---- models ---- */

void br_train_model_cleanup(struct br_train_model *m)
{
    if (!m) {
        return;
    }
    br_free(m->w);
    for (size_t s = 0; s < BR_TRAIN_MAX_MODELS; s++) {
        br_free(m->names[s]);
    }
    memset(m, 0, sizeof(*m));
}

static double sigmoid(double z)
{
    if (z >= 0) {
        return 1.0 / (1.0 + exp(-z));
    }
    double e = exp(z);
    return e / (1.0 + e);
}

/* Raw scores z[0..n_sets) of matrix row i. */
static void raw_scores(const struct br_train_model *m, const struct matrix *mx, size_t i, double *z)
{
    for (size_t s = 0; s < m->n_sets; s++) {
        z[s] = m->bias[s];
    }
    for (const struct feature_node *f = mx->space + mx->start[i]; f->index != -1; f++) {
        size_t j = (size_t)f->index - 1;
        if (j >= m->dim) {
            continue; /* bias node */
        }
        const float *wj = m->w + j * m->n_sets;
        for (size_t s = 0; s < m->n_sets; s++) {
            z[s] += f->value * (double)wj[s];
        }
    }
}

static void outputs(const struct br_train_model *m, const double *z, double *out)
{
    if (m->kind != BR_TRAIN_NMODEL && m->n_sets == 2) {
        out[0] = 0.5 * (1.0 + sigmoid(z[0]) - sigmoid(z[1]));
        return;
    }
    for (size_t s = 0; s < m->n_sets; s++) {
        out[s] = sigmoid(z[s]);
    }
}

static size_t n_outputs(const struct br_train_model *m)
{
    return m->kind == BR_TRAIN_NMODEL ? m->n_sets : 1;
}

/* Fits every set of the model at per-set C values c[s]. */
static int fit_sets(const struct matrix *mx, const struct br_train_data *d, const size_t *rows,
                    size_t n, const struct br_train_opts *o, const double *c,
                    struct br_train_model *out)
{
    int rc = BR_OK;
    double *t = br_calloc(d->n ? d->n : 1, sizeof(double));
    if (!t) {
        return BR_ERR_NOMEM;
    }
    for (size_t s = 0; s < out->n_sets && rc == BR_OK; s++) {
        targets(o, d, s, t);
        rc = fit_output(mx, rows, n, t, c[s], o, out->w + s, out->n_sets, &out->bias[s]);
        out->c[s] = c[s];
    }
    br_free(t);
    return rc;
}

static int model_alloc(const struct br_train_opts *o, const struct br_train_data *d,
                       const struct matrix *mx, struct br_train_model *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = o->kind;
    out->label = o->label;
    out->features = o->features;
    out->n_sets = n_sets_for(o, d);
    out->dim = mx->dim;
    out->threshold = NAN;
    out->w = br_calloc(out->dim * out->n_sets, sizeof(float));
    if (!out->w) {
        return BR_ERR_NOMEM;
    }
    for (size_t s = 0; s < out->n_sets; s++) {
        const char *nm = o->kind == BR_TRAIN_NMODEL     ? d->models[s]
                         : out->n_sets == 2             ? d->models[s]
                         : o->kind == BR_TRAIN_VERIFIER ? "escalate"
                                                        : "strong";
        out->names[s] = br_strdup(nm);
        if (!out->names[s]) {
            return BR_ERR_NOMEM;
        }
        out->cost[s] = NAN;
        out->quality[s] = NAN;
    }
    return BR_OK;
}

/* Strata of rows for stratified folds: outcome pair for two-model data, none otherwise. */
static int *make_strata(const struct br_train_data *d, const size_t *rows, size_t n)
{
    if (d->n_models != 2) {
        return NULL;
    }
    int *st = br_calloc(n ? n : 1, sizeof(int));
    if (!st) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const double *q = d->quality + rows[i] * 2;
        st[i] = br_eval_outcome_stratum(q[0], q[1]);
    }
    return st;
}

/* One inner cross-validation run of inner_score(): its inputs and scratch. */
struct inner_cv {
    const struct matrix *mx;
    const struct br_train_data *d;
    const size_t *rows; /* [n] the rows being cross-validated */
    size_t n;
    const int *fold_of; /* [n] fold of each of rows */
    const struct br_train_opts *o;
    size_t set; /* the output scored, or SIZE_MAX for the whole binary model */
    double c;
    size_t *tr;              /* [n] training rows of the current fold */
    double *sc;              /* [n] held-out scores (whole binary model) */
    double *t;               /* [d->n] targets of set (one output) */
    struct br_train_model m; /* refitted for each fold */
    double ll;               /* held-out log-likelihood of set */
    size_t n_ll;             /* rows added into ll */
};

/* Fits the model (or output cv->set) on the rows outside fold f. */
static int inner_fit(struct inner_cv *cv, unsigned f)
{
    size_t ntr = 0;
    for (size_t i = 0; i < cv->n; i++) {
        if (cv->fold_of[i] != (int)f) {
            cv->tr[ntr++] = cv->rows[i];
        }
    }
    if (cv->set != SIZE_MAX) {
        return fit_output(cv->mx, cv->tr, ntr, cv->t, cv->c, cv->o, cv->m.w + cv->set, cv->m.n_sets,
                          &cv->m.bias[cv->set]);
    }
    double cs[BR_TRAIN_MAX_MODELS];
    for (size_t s = 0; s < BR_TRAIN_MAX_MODELS; s++) {
        cs[s] = cv->c;
    }
    return fit_sets(cv->mx, cv->d, cv->tr, ntr, cv->o, cs, &cv->m);
}

/* Log-likelihood of target y under the predicted probability p (kept off 0 and 1). */
static double log_likelihood(double p, double y)
{
    p = p < 1e-6 ? 1e-6 : (p > 1 - 1e-6 ? 1 - 1e-6 : p);
    return y * log(p) + (1 - y) * log(1 - p);
}

/* Scores the rows of fold f with the model inner_fit() fitted without them. */
static void inner_eval(struct inner_cv *cv, unsigned f)
{
    for (size_t i = 0; i < cv->n; i++) {
        if (cv->fold_of[i] != (int)f) {
            continue;
        }
        size_t r = cv->rows[i];
        double z[BR_TRAIN_MAX_MODELS];
        raw_scores(&cv->m, cv->mx, r, z);
        if (cv->set == SIZE_MAX) {
            double p[BR_TRAIN_MAX_MODELS];
            outputs(&cv->m, z, p);
            cv->sc[i] = p[0];
        } else if (!isnan(cv->t[r])) {
            cv->ll += log_likelihood(sigmoid(z[cv->set]), cv->t[r]);
            cv->n_ll++;
        }
    }
}

/* The score of a finished run: APGR of the pooled held-out scores (whole binary model, with
 * qs and qw [n] as scratch), or the mean held-out log-likelihood (one output). */
static double inner_result(const struct inner_cv *cv, double *qs, double *qw)
{
    if (cv->set != SIZE_MAX) {
        return cv->n_ll ? cv->ll / (double)cv->n_ll : 0;
    }
    for (size_t i = 0; i < cv->n; i++) {
        qs[i] = cv->d->quality[cv->rows[i] * 2];
        qw[i] = cv->d->quality[cv->rows[i] * 2 + 1];
    }
    return br_eval_apgr(cv->sc, qs, qw, cv->n);
}

/*
 * Inner-CV quality of C for set s (or for the whole binary model when s == SIZE_MAX): APGR of
 * pooled held-out scores for binary kinds, mean log-likelihood for an N-model output.
 */
static int inner_score(const struct matrix *mx, const struct br_train_data *d, const size_t *rows,
                       size_t n, const int *fold_of, unsigned k, const struct br_train_opts *o,
                       size_t set, double c, double *score_out)
{
    struct inner_cv cv = {
        .mx = mx, .d = d, .rows = rows, .n = n, .fold_of = fold_of, .o = o, .set = set, .c = c};
    int rc = BR_ERR_NOMEM;
    cv.tr = br_calloc(n, sizeof(size_t));
    cv.sc = br_calloc(n, sizeof(double));
    double *qs = br_calloc(n, sizeof(double));
    double *qw = br_calloc(n, sizeof(double));
    cv.t = br_calloc(d->n, sizeof(double));
    if (!cv.tr || !cv.sc || !qs || !qw || !cv.t) {
        goto out;
    }
    rc = model_alloc(o, d, mx, &cv.m);
    if (rc != BR_OK) {
        goto out;
    }
    if (set != SIZE_MAX) {
        targets(o, d, set, cv.t);
    }
    for (unsigned f = 0; f < k && rc == BR_OK; f++) {
        rc = inner_fit(&cv, f);
        if (rc == BR_OK) {
            inner_eval(&cv, f);
        }
    }
    if (rc == BR_OK) {
        *score_out = inner_result(&cv, qs, qw);
    }
out:
    br_train_model_cleanup(&cv.m);
    br_free(cv.tr);
    br_free(cv.sc);
    br_free(qs);
    br_free(qw);
    br_free(cv.t);
    return rc;
}

/*
 * C without inner CV into c_out[0..n_sets): --c when given, 0.1 without a grid, the middle of
 * the grid when rows are too few for k inner folds. False when inner CV must choose.
 */
static bool fixed_c(const struct br_train_opts *o, size_t n, unsigned k, size_t n_sets,
                    double *c_out)
{
    double c;
    if (o->c > 0) {
        c = o->c;
    } else if (o->n_c_grid == 0) {
        c = 0.1;
    } else if (n < 2 * (size_t)k) {
        c = o->c_grid[o->n_c_grid / 2];
    } else {
        return false;
    }
    for (size_t s = 0; s < n_sets; s++) {
        c_out[s] = c;
    }
    return true;
}

/* The grid C with the best inner-CV score for set (SIZE_MAX: the whole binary model); the
 * first of equal scores wins. */
static int best_grid_c(const struct matrix *mx, const struct br_train_data *d, const size_t *rows,
                       size_t n, const int *fold_of, unsigned k, const struct br_train_opts *o,
                       size_t set, double *c_out)
{
    double best = -INFINITY;
    double best_c = o->c_grid[0];
    for (size_t g = 0; g < o->n_c_grid; g++) {
        double v = -INFINITY;
        int rc = inner_score(mx, d, rows, n, fold_of, k, o, set, o->c_grid[g], &v);
        if (rc != BR_OK) {
            return rc;
        }
        if (v > best) {
            best = v;
            best_c = o->c_grid[g];
        }
    }
    *c_out = best_c;
    return BR_OK;
}

/* Chooses C per set (binary kinds: one C for the model) by inner CV on rows. */
static int choose_c(const struct matrix *mx, const struct br_train_data *d, const size_t *rows,
                    size_t n, const struct br_train_opts *o, size_t n_sets, double *c_out)
{
    unsigned k = o->inner_folds >= 2 ? o->inner_folds : 3;
    if (fixed_c(o, n, k, n_sets, c_out)) {
        return BR_OK;
    }
    int rc;
    int *fold_of = br_calloc(n, sizeof(int));
    int *strata = make_strata(d, rows, n);
    if (!fold_of || (d->n_models == 2 && !strata)) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    rc = br_eval_folds(n, k, o->seed ^ 0x1badb002u, strata, fold_of);
    bool per_set = o->kind == BR_TRAIN_NMODEL;
    for (size_t s = 0; s < (per_set ? n_sets : 1) && rc == BR_OK; s++) {
        double best_c = 0;
        rc = best_grid_c(mx, d, rows, n, fold_of, k, o, per_set ? s : SIZE_MAX, &best_c);
        if (rc != BR_OK) {
            break;
        }
        if (per_set) {
            c_out[s] = best_c;
            continue;
        }
        for (size_t t = 0; t < n_sets; t++) {
            c_out[t] = best_c;
        }
    }
out:
    br_free(fold_of);
    br_free(strata);
    return rc;
}

static void model_means(const struct br_train_data *d, const size_t *rows, size_t n,
                        struct br_train_model *m)
{
    if (m->kind != BR_TRAIN_NMODEL) {
        return;
    }
    for (size_t s = 0; s < m->n_sets; s++) {
        double sq = 0;
        double sc = 0;
        size_t nq = 0;
        size_t nc = 0;
        for (size_t i = 0; i < n; i++) {
            double q = d->quality[rows[i] * d->n_models + s];
            double c = d->cost[rows[i] * d->n_models + s];
            if (!isnan(q)) {
                sq += q;
                nq++;
            }
            if (!isnan(c)) {
                sc += c;
                nc++;
            }
        }
        m->quality[s] = nq ? sq / (double)nq : NAN;
        m->cost[s] = nc ? sc / (double)nc : NAN;
    }
}

static int check_opts(const struct br_train_data *d, const struct br_train_opts *o, char *err,
                      size_t errlen)
{
    if (br_features_config_check(&o->features) != BR_OK) {
        br_err_printf(err, errlen, "invalid feature configuration");
        return BR_ERR_INVAL;
    }
    if (o->kind != BR_TRAIN_NMODEL && d->n_models != 2) {
        br_err_printf(err, errlen, "binary and verifier training need exactly two models");
        return BR_ERR_INVAL;
    }
    if (o->kind == BR_TRAIN_VERIFIER && o->label == BR_TRAIN_LABEL_DIFF) {
        br_err_printf(err, errlen, "verifiers are trained with the soft label");
        return BR_ERR_INVAL;
    }
    if (o->solver != L2R_LR && o->solver != L1R_LR && o->solver != L2R_LR_DUAL) {
        br_err_printf(err, errlen, "solver %d is not a logistic regression", o->solver);
        return BR_ERR_INVAL;
    }
    if (d->n == 0) {
        br_err_printf(err, errlen, "no training rows");
        return BR_ERR_INVAL;
    }
    return BR_OK;
}

static int fit_rows(struct br_train_data *d, const size_t *rows, size_t n,
                    const struct br_train_opts *o, struct br_train_model *out, char *err,
                    size_t errlen)
{
    const struct matrix *mx;
    /* choose_c() writes c[0..out->n_sets); a C of 0 would make liblinear refuse to train */
    double c[BR_TRAIN_MAX_MODELS] = {0};
    int rc = matrix_build(d, &o->features, o->kind, &mx);
    if (rc == BR_OK) {
        rc = model_alloc(o, d, mx, out);
    }
    if (rc == BR_OK) {
        rc = choose_c(mx, d, rows, n, o, out->n_sets, c);
    }
    if (rc == BR_OK) {
        rc = fit_sets(mx, d, rows, n, o, c, out);
    }
    if (rc != BR_OK) {
        br_err_printf(err, errlen, "training failed: %s", br_strerror(rc));
        br_train_model_cleanup(out);
        return rc;
    }
    model_means(d, rows, n, out);
    return BR_OK;
}

int br_train_fit(struct br_train_data *d, const size_t *rows, size_t n_rows,
                 const struct br_train_opts *opts, struct br_train_model *out, char *err,
                 size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int rc = check_opts(d, opts, err, errlen);
    if (rc != BR_OK) {
        return rc;
    }
    size_t *all = NULL;
    if (!rows) {
        all = br_calloc(d->n, sizeof(size_t));
        if (!all) {
            return BR_ERR_NOMEM;
        }
        for (size_t i = 0; i < d->n; i++) {
            all[i] = i;
        }
        rows = all;
        n_rows = d->n;
    }
    rc = fit_rows(d, rows, n_rows, opts, out, err, errlen);
    br_free(all);
    return rc;
}

int br_train_score(const struct br_train_model *m, struct br_train_data *d, size_t i, double *out,
                   size_t n_out)
{
    const struct matrix *mx;
    double z[BR_TRAIN_MAX_MODELS];
    if (i >= d->n || n_out < n_outputs(m)) {
        return BR_ERR_INVAL;
    }
    int rc = matrix_build(d, &m->features, m->kind, &mx);
    if (rc != BR_OK) {
        return rc;
    }
    raw_scores(m, mx, i, z);
    outputs(m, z, out);
    return BR_OK;
}

void br_train_model_spec(const struct br_train_model *m, const char *notes,
                         struct br_classifier_spec *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->kind = m->kind == BR_TRAIN_NMODEL     ? BR_CLASSIFIER_NMODEL
                 : m->kind == BR_TRAIN_VERIFIER ? BR_CLASSIFIER_VERIFIER
                                                : BR_CLASSIFIER_BINARY;
    spec->combine = (m->kind == BR_TRAIN_BINARY && m->n_sets == 2) ? BR_CLASSIFIER_COMBINE_DIFF
                                                                   : BR_CLASSIFIER_COMBINE_NONE;
    spec->features = m->features;
    spec->n_sets = m->n_sets;
    for (size_t s = 0; s < m->n_sets; s++) {
        spec->sets[s].name = m->names[s];
        spec->sets[s].bias = m->bias[s];
        spec->sets[s].cost_usd = m->cost[s];
        spec->sets[s].quality = m->quality[s];
    }
    spec->weights = m->w;
    spec->threshold = m->threshold;
    spec->notes = notes;
}

/* ---- cross-validation ---- */

/* Scores rows test[0..nt) with a model fitted on train[0..ntr). */
static int fit_and_score(struct br_train_data *d, const size_t *train, size_t ntr,
                         const size_t *test, size_t nt, const struct br_train_opts *o,
                         double *scores, double *c_out, char *err, size_t errlen)
{
    struct br_train_model m;
    int rc = fit_rows(d, train, ntr, o, &m, err, errlen);
    if (rc != BR_OK) {
        return rc;
    }
    size_t no = n_outputs(&m);
    for (size_t i = 0; i < nt && rc == BR_OK; i++) {
        rc = br_train_score(&m, d, test[i], scores + test[i] * no, no);
    }
    if (c_out) {
        *c_out = m.c[0];
    }
    br_train_model_cleanup(&m);
    return rc;
}

int br_train_cv(struct br_train_data *d, const struct br_train_opts *opts, unsigned k,
                double *scores, double *fold_c, char *err, size_t errlen)
{
    int rc = check_opts(d, opts, err, errlen);
    if (rc != BR_OK) {
        return rc;
    }
    if (k < 2 || k > d->n) {
        br_err_printf(err, errlen, "cannot make %u folds of %zu rows", k, d->n);
        return BR_ERR_INVAL;
    }
    size_t *all = br_calloc(d->n, sizeof(size_t));
    size_t *tr = br_calloc(d->n, sizeof(size_t));
    size_t *te = br_calloc(d->n, sizeof(size_t));
    int *fold_of = br_calloc(d->n, sizeof(int));
    int *strata = NULL;
    if (!all || !tr || !te || !fold_of) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < d->n; i++) {
        all[i] = i;
    }
    strata = make_strata(d, all, d->n);
    if (d->n_models == 2 && !strata) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    rc = br_eval_folds(d->n, k, opts->seed, strata, fold_of);
    if (rc != BR_OK) {
        br_err_printf(err, errlen, "cannot make folds: %s", br_strerror(rc));
        goto out;
    }
    for (unsigned f = 0; f < k; f++) {
        size_t ntr = 0;
        size_t nt = 0;
        for (size_t i = 0; i < d->n; i++) {
            if (fold_of[i] == (int)f) {
                te[nt++] = i;
            } else {
                tr[ntr++] = i;
            }
        }
        double c = 0;
        rc = fit_and_score(d, tr, ntr, te, nt, opts, scores, &c, err, errlen);
        if (rc != BR_OK) {
            goto out;
        }
        if (fold_c) {
            fold_c[f] = c;
        }
        progress(opts, "fold %u/%u: %zu training rows, C=%g", f + 1, k, ntr, c);
    }
out:
    br_free(all);
    br_free(tr);
    br_free(te);
    br_free(fold_of);
    br_free(strata);
    return rc;
}

int br_train_cv_sources(struct br_train_data *d, const struct br_train_opts *opts, double *scores,
                        char *err, size_t errlen)
{
    int rc = check_opts(d, opts, err, errlen);
    if (rc != BR_OK) {
        return rc;
    }
    if (d->n_sources < 2) {
        br_err_printf(err, errlen, "leave-one-dataset-out needs at least two datasets");
        return BR_ERR_INVAL;
    }
    size_t *tr = br_calloc(d->n, sizeof(size_t));
    size_t *te = br_calloc(d->n, sizeof(size_t));
    if (!tr || !te) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    for (size_t s = 0; s < d->n_sources; s++) {
        size_t ntr = 0;
        size_t nt = 0;
        for (size_t i = 0; i < d->n; i++) {
            if (d->source[i] == s) {
                te[nt++] = i;
            } else {
                tr[ntr++] = i;
            }
        }
        if (nt == 0 || ntr == 0) {
            continue;
        }
        double c = 0;
        rc = fit_and_score(d, tr, ntr, te, nt, opts, scores, &c, err, errlen);
        if (rc != BR_OK) {
            goto out;
        }
        progress(opts, "held out %s: trained on %zu rows of the others, C=%g", d->source_names[s],
                 ntr, c);
    }
out:
    br_free(tr);
    br_free(te);
    return rc;
}

/* ---- the `classifier` router of brigade eval ---- */

struct router_state {
    br_classifier *loaded;     /* --model FILE */
    int strong_out, weak_out;  /* N-model file: outputs of the task's models */
    struct br_train_data data; /* the task's rows */
    struct br_train_model model;
    int trained;
    struct br_train_opts opts;
};

static void router_destroy(void *state)
{
    struct router_state *st = state;
    if (!st) {
        return;
    }
    br_classifier_free(st->loaded);
    br_train_model_cleanup(&st->model);
    br_train_data_cleanup(&st->data);
    br_free(st);
}

static int router_load(struct router_state *st, const struct br_eval_router_cfg *cfg,
                       const struct br_eval_task *task, char *err, size_t errlen)
{
    int rc = br_classifier_load(cfg->model_path, &st->loaded, err, errlen);
    if (rc != BR_OK) {
        return rc;
    }
    switch (br_classifier_kind(st->loaded)) {
    case BR_CLASSIFIER_BINARY:
        return BR_OK;
    case BR_CLASSIFIER_NMODEL:
        st->strong_out = br_classifier_output_index(st->loaded, task->ds->models[task->strong]);
        st->weak_out = br_classifier_output_index(st->loaded, task->ds->models[task->weak]);
        if (st->strong_out < 0 || st->weak_out < 0) {
            br_err_printf(err, errlen, "%s: the N-model file predicts no quality for %s or %s",
                          cfg->model_path, task->ds->models[task->strong],
                          task->ds->models[task->weak]);
            return BR_ERR_NOTFOUND;
        }
        return BR_OK;
    case BR_CLASSIFIER_VERIFIER:
    default:
        br_err_printf(err, errlen,
                      "%s: a verifier judges the cheap model's answers; evaluate it with `brigade "
                      "train --verifier --folds K`",
                      cfg->model_path);
        return BR_ERR_UNSUPPORTED;
    }
}

static int router_create(const struct br_eval_router_cfg *cfg, const struct br_eval_task *task,
                         void **state_out, char *err, size_t errlen)
{
    static const char *const names[2] = {"strong", "weak"};
    struct router_state *st = br_calloc(1, sizeof(*st));
    int rc;
    if (!st) {
        return BR_ERR_NOMEM;
    }
    br_train_opts_default(&st->opts);
    st->opts.seed = cfg->seed;
    if (cfg->model_path) {
        rc = router_load(st, cfg, task, err, errlen);
    } else {
        rc = br_train_data_init(&st->data, 2, names);
        if (rc == BR_OK) {
            rc = br_train_data_add_task(&st->data, task, false, err, errlen);
        }
    }
    if (rc != BR_OK) {
        router_destroy(st);
        return rc;
    }
    *state_out = st;
    return BR_OK;
}

static int router_prepare(void *state, const struct br_eval_task *task, const size_t *train,
                          size_t n_train, char *err, size_t errlen)
{
    struct router_state *st = state;
    (void)task;
    br_train_model_cleanup(&st->model);
    st->trained = 0;
    /* task rows are data rows one to one (every task row was added, in order) */
    int rc = br_train_fit(&st->data, train, n_train, &st->opts, &st->model, err, errlen);
    if (rc == BR_OK) {
        st->trained = 1;
    }
    return rc;
}

static int router_score(void *state, const struct br_eval_task *task, size_t i, double *score_out)
{
    struct router_state *st = state;
    if (st->loaded) {
        const char *p = br_eval_task_prompt(task, i);
        double out[BR_CLASSIFIER_MAX_SETS];
        int rc = br_classifier_predict(st->loaded, p, strlen(p), out, BR_CLASSIFIER_MAX_SETS);
        if (rc != BR_OK) {
            return rc;
        }
        *score_out = br_classifier_kind(st->loaded) == BR_CLASSIFIER_NMODEL
                         ? 0.5 * (1.0 + out[st->strong_out] - out[st->weak_out])
                         : out[0];
        return BR_OK;
    }
    if (!st->trained) {
        return BR_ERR_INVAL;
    }
    return br_train_score(&st->model, &st->data, i, score_out, 1);
}

const struct br_eval_router_ops br_eval_router_classifier = {
    .name = "classifier",
    .summary = "logistic regression on hashed n-grams (trained per fold, or --model FILE)",
    .flags = 0,
    .create = router_create,
    .prepare = router_prepare,
    .score = router_score,
    .destroy = router_destroy,
};
