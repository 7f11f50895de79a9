/* SPDX-License-Identifier: MIT */
/*
 * The evaluation driver (eval.h): two-model tasks with their costs, and running a router over
 * a task - learned routers per fold, so that no row is scored by a model trained on it.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/err.h"
#include "eval/eval.h"
#include "eval/folds.h"

/* The task and the arrays it points to, in one allocation each. */
struct task_store {
    struct br_eval_task t; /* first: br_eval_task_free casts back */
    size_t *rows;
    double *q_strong, *q_weak, *c_strong, *c_weak;
};

bool br_eval_default_price(const char *model, struct br_price *out)
{
    static const struct {
        const char *model;
        int64_t nano_usd_per_mtok;
    } defaults[] = {
        {"gpt-4-1106-preview", 24700000000LL},                 /* $24.7/M, RouteLLM blended */
        {"mistralai/Mixtral-8x7B-Instruct-v0.1", 240000000LL}, /* $0.24/M */
    };
    if (model == NULL) {
        return false;
    }
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        if (strcasecmp(model, defaults[i].model) == 0) {
            if (out != NULL) {
                out->input_nano_usd_per_mtok = defaults[i].nano_usd_per_mtok;
                out->output_nano_usd_per_mtok = defaults[i].nano_usd_per_mtok;
                out->cached_input_nano_usd_per_mtok = -1;
            }
            return true;
        }
    }
    return false;
}

int br_eval_price_parse(const char *spec, struct br_eval_price *out)
{
    if (spec == NULL || out == NULL) {
        return BR_ERR_INVAL;
    }
    const char *eq = strrchr(spec, '=');
    if (eq == NULL || eq == spec || eq[1] == '\0') {
        return BR_ERR_PARSE;
    }
    const char *v = eq + 1;
    const char *slash = strchr(v, '/');
    char in[40];
    char outp[40];
    size_t in_len = slash != NULL ? (size_t)(slash - v) : strlen(v);
    if (in_len == 0 || in_len >= sizeof(in)) {
        return BR_ERR_PARSE;
    }
    memcpy(in, v, in_len);
    in[in_len] = '\0';
    if (slash != NULL) {
        size_t out_len = strlen(slash + 1);
        if (out_len == 0 || out_len >= sizeof(outp)) {
            return BR_ERR_PARSE;
        }
        memcpy(outp, slash + 1, out_len + 1);
    } else {
        memcpy(outp, in, in_len + 1);
    }
    int64_t pin = 0;
    int64_t pout = 0;
    if (br_cost_parse_usd(in, &pin) != BR_OK || br_cost_parse_usd(outp, &pout) != BR_OK) {
        return BR_ERR_PARSE;
    }
    out->model = spec;
    out->model_len = (size_t)(eq - spec);
    out->price.input_nano_usd_per_mtok = pin;
    out->price.output_nano_usd_per_mtok = pout;
    out->price.cached_input_nano_usd_per_mtok = -1;
    return BR_OK;
}

/* The --price entry for model, or NULL. */
static const struct br_eval_price *find_price(const struct br_eval_task_opts *o, const char *model)
{
    if (o == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < o->n_prices; i++) {
        const char *name = o->prices[i].model;
        size_t len = o->prices[i].model_len;
        if (name != NULL && strlen(model) == len && strncmp(model, name, len) == 0) {
            return &o->prices[i];
        }
    }
    return NULL;
}

/* Where model m's costs come from; *price set when priced. */
static enum br_eval_cost_source cost_source(const struct br_dataset *ds, size_t m,
                                            const struct br_eval_task_opts *o, const size_t *rows,
                                            size_t n, struct br_price *price)
{
    const struct br_eval_price *p = find_price(o, ds->models[m]);
    if (p != NULL) {
        *price = p->price;
        return BR_EVAL_COST_PRICED;
    }
    bool recorded = true;
    for (size_t i = 0; i < n && recorded; i++) {
        recorded = isfinite(ds->cost_usd[rows[i] * ds->n_models + m]);
    }
    if (recorded) {
        return BR_EVAL_COST_RECORDED;
    }
    if ((o == NULL || !o->no_default_prices) && br_eval_default_price(ds->models[m], price)) {
        return BR_EVAL_COST_DEFAULT;
    }
    return BR_EVAL_COST_NONE;
}

static double priced(const struct br_dataset *ds, size_t row, size_t m, const struct br_price *p,
                     int64_t default_completion)
{
    size_t k = row * ds->n_models + m;
    struct br_usage u;
    memset(&u, 0, sizeof(u));
    u.prompt_tokens = ds->prompt_tokens[k] > 0 ? ds->prompt_tokens[k] : 0;
    int64_t ct = ds->completion_tokens[k];
    u.completion_tokens = ct >= 0 ? ct : (default_completion > 0 ? default_completion : 0);
    return (double)br_cost_compute(p, &u) / 1e9;
}

static int fill_costs(const struct br_dataset *ds, size_t m, enum br_eval_cost_source src,
                      const struct br_price *price, const struct br_eval_task_opts *o,
                      const size_t *rows, size_t n, double *out)
{
    int64_t dc = o != NULL ? o->completion_tokens : -1;
    for (size_t i = 0; i < n; i++) {
        if (src == BR_EVAL_COST_RECORDED) {
            out[i] = ds->cost_usd[rows[i] * ds->n_models + m];
        } else {
            out[i] = priced(ds, rows[i], m, price, dc);
        }
    }
    return BR_OK;
}

int br_eval_task_make(const struct br_dataset *ds, size_t strong, size_t weak,
                      const struct br_eval_task_opts *opts, struct br_eval_task **out,
                      struct br_eval_task_info *info, char *err, size_t errlen)
{
    struct br_eval_task_info local;
    if (info == NULL) {
        info = &local;
    }
    memset(info, 0, sizeof(*info));
    if (ds == NULL || out == NULL || strong >= ds->n_models || weak >= ds->n_models ||
        strong == weak) {
        (void)snprintf(err, errlen, "invalid model pair");
        return BR_ERR_INVAL;
    }
    *out = NULL;
    size_t n = ds->n_prompts;
    struct task_store *st = br_calloc(1, sizeof(*st));
    if (st == NULL) {
        return BR_ERR_NOMEM;
    }
    st->rows = br_calloc(n, sizeof(size_t));
    st->q_strong = br_calloc(n, sizeof(double));
    st->q_weak = br_calloc(n, sizeof(double));
    st->c_strong = br_calloc(n, sizeof(double));
    st->c_weak = br_calloc(n, sizeof(double));
    if (st->rows == NULL || st->q_strong == NULL || st->q_weak == NULL || st->c_strong == NULL ||
        st->c_weak == NULL) {
        br_eval_task_free(&st->t);
        return BR_ERR_NOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        double qs = br_dataset_quality(ds, i, strong);
        double qw = br_dataset_quality(ds, i, weak);
        if (isnan(qs) || isnan(qw)) {
            info->n_skipped++;
            continue;
        }
        st->rows[k] = i;
        st->q_strong[k] = qs;
        st->q_weak[k] = qw;
        k++;
    }
    if (k == 0) {
        (void)snprintf(err, errlen, "no prompt has a known quality for both %s and %s",
                       ds->models[strong], ds->models[weak]);
        br_eval_task_free(&st->t);
        return BR_ERR_INVAL;
    }
    info->cost_strong = cost_source(ds, strong, opts, st->rows, k, &info->price_strong);
    info->cost_weak = cost_source(ds, weak, opts, st->rows, k, &info->price_weak);
    bool costed = info->cost_strong != BR_EVAL_COST_NONE && info->cost_weak != BR_EVAL_COST_NONE;
    if (costed) {
        (void)fill_costs(ds, strong, info->cost_strong, &info->price_strong, opts, st->rows, k,
                         st->c_strong);
        (void)fill_costs(ds, weak, info->cost_weak, &info->price_weak, opts, st->rows, k,
                         st->c_weak);
    } else {
        info->cost_strong = BR_EVAL_COST_NONE;
        info->cost_weak = BR_EVAL_COST_NONE;
    }
    st->t = (struct br_eval_task){
        .ds = ds,
        .strong = strong,
        .weak = weak,
        .n = k,
        .rows = st->rows,
        .q_strong = st->q_strong,
        .q_weak = st->q_weak,
        .c_strong = costed ? st->c_strong : NULL,
        .c_weak = costed ? st->c_weak : NULL,
    };
    *out = &st->t;
    return BR_OK;
}

void br_eval_task_free(struct br_eval_task *t)
{
    if (t == NULL) {
        return;
    }
    struct task_store *st = (struct task_store *)t;
    br_free(st->rows);
    br_free(st->q_strong);
    br_free(st->q_weak);
    br_free(st->c_strong);
    br_free(st->c_weak);
    br_free(st);
}

/* ---- running a router ---- */

#define PROGRESS_EVERY 1024u

static int score_rows(const struct br_eval_router_ops *ops, void *state,
                      const struct br_eval_task *task, const struct br_eval_run_opts *o,
                      const int *fold_of, int fold, struct br_eval_run_out *out, size_t *done,
                      char *err, size_t errlen)
{
    for (size_t i = 0; i < task->n; i++) {
        if (fold_of != NULL && fold_of[i] != fold) {
            continue;
        }
        double s = 0.0;
        int rc = ops->score(state, task, i, &s);
        if (rc != BR_OK) {
            (void)snprintf(err, errlen, "router %s: scoring prompt %zu failed: %s", ops->name,
                           task->rows[i], br_strerror(rc));
            return rc;
        }
        if (!isfinite(s)) {
            (void)snprintf(err, errlen, "router %s: score of prompt %zu is not finite", ops->name,
                           task->rows[i]);
            return BR_ERR_RANGE;
        }
        out->scores[i] = s;
        out->scored[i] = true;
        out->fold_of[i] = fold_of != NULL ? fold : 0;
        out->n_scored++;
        (*done)++;
        if (o != NULL && o->progress != NULL && *done % PROGRESS_EVERY == 0) {
            o->progress(o->progress_user, "scoring", *done, task->n);
        }
    }
    return BR_OK;
}

/* Trains on the rows whose fold_of differs from fold (holdout: fold 1 is the test side). */
static int train_fold(const struct br_eval_router_ops *ops, void *state,
                      const struct br_eval_task *task, const int *fold_of, int fold, size_t *train,
                      char *err, size_t errlen)
{
    size_t n_train = 0;
    for (size_t i = 0; i < task->n; i++) {
        if (fold_of[i] != fold) {
            train[n_train++] = i;
        }
    }
    int rc = ops->prepare(state, task, train, n_train, err, errlen);
    if (rc != BR_OK && err != NULL && errlen > 0 && err[0] == '\0') {
        (void)snprintf(err, errlen, "router %s: training failed: %s", ops->name, br_strerror(rc));
    }
    return rc;
}

static int run_learned(const struct br_eval_router_ops *ops, void *state,
                       const struct br_eval_task *task, const struct br_eval_run_opts *o,
                       struct br_eval_run_out *out, char *err, size_t errlen)
{
    int *strata = NULL;
    int *fold_of = br_calloc(task->n, sizeof(int));
    size_t *train = br_calloc(task->n, sizeof(size_t));
    int rc = BR_OK;
    if (fold_of == NULL || train == NULL) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    if (!o->unstratified) {
        strata = br_calloc(task->n, sizeof(int));
        if (strata == NULL) {
            rc = BR_ERR_NOMEM;
            goto out;
        }
        for (size_t i = 0; i < task->n; i++) {
            strata[i] = br_eval_outcome_stratum(task->q_strong[i], task->q_weak[i]);
        }
    }
    size_t done = 0;
    if (o->holdout > 0.0) {
        rc = br_eval_holdout(task->n, o->holdout, o->seed, strata, fold_of);
        if (rc != BR_OK) {
            (void)snprintf(err, errlen, "cannot hold out %.3g of %zu prompts", o->holdout, task->n);
            goto out;
        }
        rc = train_fold(ops, state, task, fold_of, 1, train, err, errlen);
        if (rc == BR_OK) {
            rc = score_rows(ops, state, task, o, fold_of, 1, out, &done, err, errlen);
        }
        out->n_folds = 1;
        goto out;
    }
    unsigned k = o->folds != 0 ? o->folds : 5;
    rc = br_eval_folds(task->n, k, o->seed, strata, fold_of);
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "cannot split %zu prompts into %u folds", task->n, k);
        goto out;
    }
    for (unsigned f = 0; f < k && rc == BR_OK; f++) {
        if (o->progress != NULL) {
            o->progress(o->progress_user, "training", f, k);
        }
        rc = train_fold(ops, state, task, fold_of, (int)f, train, err, errlen);
        if (rc == BR_OK) {
            rc = score_rows(ops, state, task, o, fold_of, (int)f, out, &done, err, errlen);
        }
    }
    out->n_folds = k;
out:
    br_free(strata);
    br_free(fold_of);
    br_free(train);
    return rc;
}

int br_eval_run(const struct br_eval_router_ops *ops, const struct br_eval_router_cfg *cfg,
                const struct br_eval_task *task, const struct br_eval_run_opts *opts,
                struct br_eval_run_out *out, char *err, size_t errlen)
{
    struct br_eval_run_opts defaults;
    memset(&defaults, 0, sizeof(defaults));
    const struct br_eval_run_opts *o = opts != NULL ? opts : &defaults;
    if (err != NULL && errlen > 0) {
        err[0] = '\0';
    }
    if (ops == NULL || cfg == NULL || task == NULL || out == NULL || ops->create == NULL ||
        ops->score == NULL || ops->destroy == NULL) {
        return BR_ERR_INVAL;
    }
    memset(out, 0, sizeof(*out));
    if (o->holdout < 0.0 || o->holdout >= 1.0) {
        (void)snprintf(err, errlen, "held-out share must be in (0, 1)");
        return BR_ERR_INVAL;
    }
    out->scores = br_calloc(task->n, sizeof(double));
    out->scored = br_calloc(task->n, sizeof(bool));
    out->fold_of = br_calloc(task->n, sizeof(int));
    if (out->scores == NULL || out->scored == NULL || out->fold_of == NULL) {
        br_eval_run_out_cleanup(out);
        return BR_ERR_NOMEM;
    }
    void *state = NULL;
    int rc = ops->create(cfg, task, &state, err, errlen);
    if (rc != BR_OK) {
        if (err != NULL && errlen > 0 && err[0] == '\0') {
            (void)snprintf(err, errlen, "router %s: %s", ops->name, br_strerror(rc));
        }
        br_eval_run_out_cleanup(out);
        return rc;
    }
    if (ops->prepare != NULL && cfg->model_path == NULL) {
        rc = run_learned(ops, state, task, o, out, err, errlen);
    } else {
        size_t done = 0;
        rc = score_rows(ops, state, task, o, NULL, 0, out, &done, err, errlen);
    }
    if (rc == BR_OK && o->progress != NULL) {
        o->progress(o->progress_user, "scoring", task->n, task->n);
    }
    ops->destroy(state);
    if (rc != BR_OK) {
        br_eval_run_out_cleanup(out);
    }
    return rc;
}

void br_eval_run_out_cleanup(struct br_eval_run_out *out)
{
    if (out == NULL) {
        return;
    }
    br_free(out->scores);
    br_free(out->scored);
    br_free(out->fold_of);
    memset(out, 0, sizeof(*out));
}
