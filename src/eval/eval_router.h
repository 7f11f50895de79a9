/* SPDX-License-Identifier: MIT */
/*
 * Routers as `brigade eval` sees them: a small ops table (name, create, prepare on training
 * rows, score one row, destroy). A router scores each prompt of a two-model task (higher = more
 * in need of the strong model); metrics.h turns the scores into the threshold sweep. The
 * driver (eval_run.c) calls them like this:
 *
 *     create(cfg, task, &state)                      once
 *     untrained router (prepare == NULL), or a learned one given --model FILE:
 *         score(state, task, i, &s)                  for every task row i
 *     learned router without --model (prepare != NULL):
 *         for each fold f of k (folds.h):
 *             prepare(state, task, train rows = rows not in f)
 *             score(state, task, i, &s)              for every row i in f only
 *     destroy(state)
 *
 * so that a learned router is never scored on a row it was trained on. The scores of the k
 * folds are pooled into one sweep (cross-validated predictions); the per-fold APGR is reported
 * as well.
 *
 * Built-in routers (eval_routers.c): random, always-weak, always-strong, oracle, length, scores.
 *
 * Registration point for learned routers (the `classifier` router): define
 *
 *     const struct br_eval_router_ops br_eval_router_classifier = { .name = "classifier", ... };
 *
 * in src/eval/train.c. src/eval/CMakeLists.txt compiles train.c when the file exists and then
 * defines BR_EVAL_HAVE_CLASSIFIER, which adds the router to the registry in eval_routers.c (the
 * line is marked "REGISTRATION POINT"); link dependencies of train.c (br_route's features and
 * classifier, liblinear) go in the marked block of that CMakeLists.txt. Nothing else changes.
 *
 * Ownership: the task and everything it points to are borrowed by the router for the duration
 * of each call (the same task is passed to every call of one run). Single-threaded.
 */
#ifndef BR_EVAL_EVAL_ROUTER_H
#define BR_EVAL_EVAL_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "eval/dataset.h"

/* A two-model routing task over some rows of a dataset. */
struct br_eval_task {
    const struct br_dataset *ds; /* borrowed */
    size_t strong;               /* model index in ds of the strong (expensive) model */
    size_t weak;                 /* model index in ds of the weak (cheap) model */
    size_t n;                    /* rows under evaluation */
    const size_t *rows;          /* [n] dataset row (index into ds->prompts) of task row i */
    const double *q_strong;      /* [n] quality of the strong model's answer, 0..1 */
    const double *q_weak;        /* [n] quality of the weak model's answer, 0..1 */
    const double *c_strong;      /* [n] cost of the strong model's answer, USD; NULL = unknown */
    const double *c_weak;        /* [n] cost of the weak model's answer, USD; NULL = unknown */
};

/** Prompt text (NUL-terminated) of task row i. */
static inline const char *br_eval_task_prompt(const struct br_eval_task *t, size_t i)
{
    return t->ds->prompts[t->rows[i]];
}

/* What the command line gives a router. Strings are borrowed for the router's lifetime. */
struct br_eval_router_cfg {
    uint64_t seed;           /* --seed (random router, training) */
    const char *model_path;  /* --model FILE: a trained model; NULL = train per fold */
    const char *scores_path; /* --scores CSV (the `scores` router) */
    unsigned verbose;        /* 0 = quiet; routers may print progress on stderr when > 0 */
};

/*
 * Router flags.
 * READS_OUTCOMES: scores from the recorded outcomes (the oracle): a bound, not a deployable
 *     router.
 * FIXED: decides without a threshold (always-weak, always-strong): scores 1 for strong and 0
 *     for weak, and is evaluated at its one operating point, whose PGR is also its APGR (the
 *     area under a constant PGR over shares 0..1).
 */
#define BR_EVAL_ROUTER_READS_OUTCOMES 1u
#define BR_EVAL_ROUTER_FIXED          2u

struct br_eval_router_ops {
    const char *name;    /* as given to --router */
    const char *summary; /* one line for `brigade eval --help` */
    unsigned flags;      /* BR_EVAL_ROUTER_* */

    /**
     * Makes the router's state for this task. May load files named in cfg. On failure returns
     * a BR_ERR_* code and writes a one-line reason into err. Required.
     */
    int (*create)(const struct br_eval_router_cfg *cfg, const struct br_eval_task *task,
                  void **state_out, char *err, size_t errlen);

    /**
     * Trains on task rows train[0..n_train) (indexes into the task, not the dataset),
     * replacing whatever an earlier call trained. NULL for routers that learn nothing. Not
     * called when cfg->model_path is set (the model file is used as it is).
     */
    int (*prepare)(void *state, const struct br_eval_task *task, const size_t *train,
                   size_t n_train, char *err, size_t errlen);

    /** Scores task row i into *score_out (finite; higher = send to strong). Required. */
    int (*score)(void *state, const struct br_eval_task *task, size_t i, double *score_out);

    /** Frees the state. NULL state is a no-op. Required. */
    void (*destroy)(void *state);
};

/** The router called name, or NULL. */
const struct br_eval_router_ops *br_eval_router_find(const char *name);

/** Number of registered routers; br_eval_router_at(i) for i below it walks the registry. */
size_t br_eval_router_count(void);

/** Router i of the registry (registration order), or NULL past the end. */
const struct br_eval_router_ops *br_eval_router_at(size_t i);

/* Built-in routers (eval_routers.c). */
extern const struct br_eval_router_ops br_eval_router_random;
extern const struct br_eval_router_ops br_eval_router_always_weak;
extern const struct br_eval_router_ops br_eval_router_always_strong;
extern const struct br_eval_router_ops br_eval_router_oracle;
extern const struct br_eval_router_ops br_eval_router_length;
extern const struct br_eval_router_ops br_eval_router_scores;

#ifdef BR_EVAL_HAVE_CLASSIFIER
/* Learned router, defined in src/eval/train.c (see the registration note above). */
extern const struct br_eval_router_ops br_eval_router_classifier;
#endif

#endif
