/* SPDX-License-Identifier: MIT */
/*
 * Offline evaluation of a router on a dataset of recorded outcomes: building the two-model
 * task (qualities and per-prompt costs, recorded or priced per token) and running a router
 * over it - learned routers only ever scored on rows they were not trained on (k-fold cross-
 * validation or a held-out split, folds.h). The metrics are metrics.h; `brigade eval` is
 * eval_cli.h. Single-threaded; nothing global.
 */
#ifndef BR_EVAL_EVAL_H
#define BR_EVAL_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cost/cost.h"
#include "eval/dataset.h"
#include "eval/eval_router.h"

/* A per-token price for one model (from --price MODEL=IN/OUT). */
struct br_eval_price {
    const char *model; /* borrowed; the name is model[0..model_len) */
    size_t model_len;
    struct br_price price;
};

enum br_eval_cost_source {
    BR_EVAL_COST_NONE = 0, /* unknown: metrics see zero cost, ratios are NaN */
    BR_EVAL_COST_RECORDED, /* the dataset's per-prompt cost (RouterBench, JSONL cost_usd) */
    BR_EVAL_COST_PRICED,   /* tokens x a --price given for the model */
    BR_EVAL_COST_DEFAULT,  /* tokens x RouteLLM's blended price (GPT-4 / Mixtral defaults) */
};

struct br_eval_task_opts {
    const struct br_eval_price *prices; /* override recorded costs for these models */
    size_t n_prices;
    bool no_default_prices;    /* do not fall back to RouteLLM's blended prices */
    int64_t completion_tokens; /* answer tokens assumed when none are recorded or
                                  estimable; < 0 = 0 */
};

struct br_eval_task_info {
    size_t n_skipped;                     /* rows with unknown quality for either model */
    enum br_eval_cost_source cost_strong; /* where each model's costs come from */
    enum br_eval_cost_source cost_weak;
    struct br_price price_strong; /* the price used when PRICED or DEFAULT */
    struct br_price price_weak;
};

/**
 * RouteLLM's blended prices, used when a dataset records no cost and no --price is given:
 * gpt-4-1106-preview $24.7 per million tokens (input and output alike) and
 * mistralai/Mixtral-8x7B-Instruct-v0.1 $0.24 per million (names compared case-insensitively).
 * Returns false for any other model.
 */
bool br_eval_default_price(const char *model, struct br_price *out);

/**
 * Parses "MODEL=IN/OUT" or "MODEL=PRICE" (USD per million tokens, br_cost_parse_usd's
 * grammar; the model is everything before the last '='). out->model points into spec.
 * BR_ERR_PARSE on malformed text.
 */
int br_eval_price_parse(const char *spec, struct br_eval_price *out);

/**
 * Builds the task for models strong and weak of ds: the rows where both qualities are known,
 * and per-row costs: a --price for the model (tokens x price, exact nano-USD by br_cost),
 * else the recorded cost, else the default price, else none (both models then get none, so
 * the two sides are always priced alike). Caller frees with br_eval_task_free.
 */
int br_eval_task_make(const struct br_dataset *ds, size_t strong, size_t weak,
                      const struct br_eval_task_opts *opts, struct br_eval_task **out,
                      struct br_eval_task_info *info, char *err, size_t errlen);

/** Frees a task from br_eval_task_make. NULL is a no-op. */
void br_eval_task_free(struct br_eval_task *t);

struct br_eval_run_opts {
    unsigned folds;    /* k for learned routers without a model file (default 5 when 0) */
    double holdout;    /* in (0, 1): held-out test share instead of k folds; 0 = k-fold */
    uint64_t seed;     /* fold assignment */
    bool unstratified; /* default: stratified by the outcome pair (br_eval_outcome_stratum) */
    void (*progress)(void *user, const char *stage, size_t done, size_t total); /* may be NULL */
    void *progress_user;
};

struct br_eval_run_out {
    double *scores; /* [task->n] owned; meaningful where scored[i] */
    bool *scored;   /* [task->n] owned; false for the training rows of a held-out split */
    int *fold_of;   /* [task->n] owned; the fold a row was scored in (0 without folds) */
    size_t n_scored;
    unsigned n_folds; /* 0 when the router was not trained here */
};

/**
 * Runs a router over the task as eval_router.h describes (create, [prepare per fold], score,
 * destroy). On failure writes a one-line reason into err.
 */
int br_eval_run(const struct br_eval_router_ops *ops, const struct br_eval_router_cfg *cfg,
                const struct br_eval_task *task, const struct br_eval_run_opts *opts,
                struct br_eval_run_out *out, char *err, size_t errlen);

/** Frees the arrays of a run. */
void br_eval_run_out_cleanup(struct br_eval_run_out *out);

#endif
