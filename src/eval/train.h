/* SPDX-License-Identifier: MIT */
/*
 * Training the learned router (route/classifier.h) with liblinear's logistic regression on
 * recorded outcomes, and cross-validating it honestly.
 *
 * A training set (struct br_train_data) holds rows of prompt text (and, for verifiers, the cheap
 * model's answer) with the recorded quality of each of its models: two for a binary router or a
 * verifier ("strong", "weak"), any number for an N-model router. Rows come from datasets
 * (eval/dataset.h); several datasets may be concatenated (a general router), each row keeping
 * the index of its source so that leave-one-dataset-out evaluation is possible.
 *
 * Labels for the binary router (what "the strong model is needed" means):
 *   SOFT        target (1 + q_strong - q_weak) / 2: strong-only-right prompts are positive,
 *               weak-only-right negative, ties count half each way. The logistic model then
 *               estimates E[q_strong - q_weak | prompt], the quantity whose ranking maximises
 *               APGR. The default.
 *   GAIN        1 when q_strong > q_weak, else 0.
 *   WEAK_WRONG  1 when q_weak < 0.5.
 *   DIFF        two logistic models, P(strong right) and P(weak right); score
 *               (1 + p_s - p_w) / 2 (combine DIFF in the model file).
 * Verifiers use SOFT on (prompt, answer) features. N-model routers fit one logistic model per
 * candidate on its quality.
 *
 * liblinear 2.3 has no instance weights: soft targets are fitted exactly by giving each row
 * positive and negative copies in proportion (halves or quarters), with C divided by the number
 * of copies, so that C keeps its per-row meaning.
 *
 * C is chosen by an inner cross-validation on the training rows only (APGR for binary and
 * verifier models, log-likelihood for N-model outputs) unless fixed; evaluation folds never
 * see training of their own rows (nested cross-validation). Deterministic for a given seed.
 * Single-threaded; no global state (liblinear's print function is silenced once).
 */
#ifndef BR_EVAL_TRAIN_H
#define BR_EVAL_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eval/dataset.h"
#include "eval/eval_router.h"
#include "route/classifier.h"
#include "route/features.h"

enum br_train_kind {
    BR_TRAIN_BINARY = 0,
    BR_TRAIN_NMODEL,
    BR_TRAIN_VERIFIER,
};

enum br_train_label {
    BR_TRAIN_LABEL_SOFT = 0,
    BR_TRAIN_LABEL_GAIN,
    BR_TRAIN_LABEL_WEAK_WRONG,
    BR_TRAIN_LABEL_DIFF,
};

#define BR_TRAIN_MAX_MODELS  BR_CLASSIFIER_MAX_SETS
#define BR_TRAIN_MAX_GRID    16
#define BR_TRAIN_MAX_SOURCES 64

struct br_train_opts {
    enum br_train_kind kind;
    enum br_train_label label;
    struct br_features_config features;
    double c;                         /* > 0: fixed C; otherwise chosen from c_grid */
    double c_grid[BR_TRAIN_MAX_GRID]; /* candidate C values (default 0.01 .. 1) */
    size_t n_c_grid;
    unsigned inner_folds; /* folds of the inner cross-validation choosing C (default 3) */
    int solver;           /* liblinear solver: 0 = L2R_LR (default), 6 = L1R_LR, 7 = L2R_LR_DUAL */
    double eps;           /* liblinear stopping tolerance (default 0.01) */
    uint64_t seed;
    /* Progress lines ("fold 2/5: C=0.1 ..."), may be NULL. */
    void (*progress)(void *user, const char *line);
    void *progress_user;
};

/** Defaults: binary, SOFT, default features, C by inner 3-fold CV over 0.01..1, L2R_LR. */
void br_train_opts_default(struct br_train_opts *out);

/** Parses a label name (soft, gain, weak-wrong, diff). BR_ERR_INVAL when unknown. */
int br_train_label_parse(const char *s, enum br_train_label *out);

/** Name of a label. */
const char *br_train_label_name(enum br_train_label l);

struct br_train_data {
    size_t n;                          /* rows */
    size_t n_models;                   /* 2 (strong, weak) or the N-model candidates */
    char *models[BR_TRAIN_MAX_MODELS]; /* names written into the model file (owned) */
    const char **prompts;              /* [n] borrowed from the datasets */
    const char **answers; /* [n] cheap model's answer (verifier), borrowed; NULL entries */
    double *quality;      /* [n * n_models], NaN unknown */
    double *cost;         /* [n * n_models] USD, NaN unknown */
    unsigned *source;     /* [n] index of the dataset the row came from */
    size_t n_sources;
    char *source_names[BR_TRAIN_MAX_SOURCES]; /* dataset names (owned) */
    size_t cap;
    void *matrix; /* feature cache (train.c), owned */
};

/**
 * Initialises empty data over n_models models named names[0..n_models) (2 for binary and
 * verifier: strong first, weak second).
 */
int br_train_data_init(struct br_train_data *d, size_t n_models, const char *const *names);

/** Frees what the data owns (not the datasets). */
void br_train_data_cleanup(struct br_train_data *d);

/**
 * Appends the rows of ds whose qualities are known for every model (N-model: for at least one
 * model; unknown cells stay NaN). aliases[m] is a comma-separated list of the names model m may
 * have in ds (matched case-insensitively; the first present wins). cost[m] for rows of ds come
 * from the recorded cost, else NaN; binary callers may pass task costs afterwards. answer_model
 * >= 0 takes that model's recorded answer into answers (verifiers; ds must have been loaded with
 * keep_responses). Rows whose answer is missing are skipped when answer_model >= 0.
 * BR_ERR_NOTFOUND (with the name in err) when a model is absent from ds.
 */
int br_train_data_add(struct br_train_data *d, const struct br_dataset *ds,
                      const char *const *aliases, int answer_model, char *err, size_t errlen);

/**
 * Appends the rows of a two-model task (eval.h's br_eval_task_make: qualities and the costs
 * `brigade eval` uses) to binary or verifier data (n_models == 2). with_answers takes the weak
 * model's recorded answer (the dataset must have been loaded with keep_responses); rows without
 * one are skipped.
 */
int br_train_data_add_task(struct br_train_data *d, const struct br_eval_task *task,
                           bool with_answers, char *err, size_t errlen);

/** A trained model, ready to score rows in memory and to be written as a BRRT file. */
struct br_train_model {
    enum br_train_kind kind;
    enum br_train_label label;
    struct br_features_config features;
    size_t n_sets;
    size_t dim; /* per set, br_classifier_dim() */
    float *w;   /* [dim * n_sets] interleaved (owned) */
    double bias[BR_TRAIN_MAX_MODELS];
    double c[BR_TRAIN_MAX_MODELS]; /* C used per set */
    char *names[BR_TRAIN_MAX_MODELS];
    double cost[BR_TRAIN_MAX_MODELS];    /* mean cost of each model's rows (N-model) */
    double quality[BR_TRAIN_MAX_MODELS]; /* mean quality (N-model) */
    double threshold;                    /* suggested operating threshold or NaN */
};

/** Frees a model's arrays. */
void br_train_model_cleanup(struct br_train_model *m);

/**
 * Trains on rows[0..n_rows) of d (rows == NULL: every row). On failure writes a reason into
 * err. The model's features come from opts->features.
 */
int br_train_fit(struct br_train_data *d, const size_t *rows, size_t n_rows,
                 const struct br_train_opts *opts, struct br_train_model *out, char *err,
                 size_t errlen);

/**
 * Scores row i of d with m into out[0..n_outputs) (binary/verifier: one score in [0, 1];
 * N-model: P(good) per model), exactly as the BRRT file would score it.
 */
int br_train_score(const struct br_train_model *m, struct br_train_data *d, size_t i, double *out,
                   size_t n_out);

/** Fills spec (borrowing m's arrays) for br_classifier_write / br_classifier_save. */
void br_train_model_spec(const struct br_train_model *m, const char *notes,
                         struct br_classifier_spec *spec);

/**
 * k-fold cross-validated scores: every row of d is scored by a model trained (with C chosen
 * by an inner CV on that model's training rows) on the other folds. scores is [d->n *
 * n_outputs]. Folds are stratified by the strong/weak outcome pair for binary kinds. fold_c
 * (may be NULL) receives the C chosen in each fold (k entries, set 0 for N-model).
 */
int br_train_cv(struct br_train_data *d, const struct br_train_opts *opts, unsigned k,
                double *scores, double *fold_c, char *err, size_t errlen);

/**
 * Leave-one-source-out scores: rows of each source are scored by a model trained on every
 * other source. scores is [d->n * n_outputs]. Needs at least two sources.
 */
int br_train_cv_sources(struct br_train_data *d, const struct br_train_opts *opts, double *scores,
                        char *err, size_t errlen);

/* train.c also defines br_eval_router_classifier, the `classifier` router of `brigade eval`
 * (trained per fold with defaults); it is declared in eval_router.h, included above, under
 * BR_EVAL_HAVE_CLASSIFIER, which the build defines whenever train.c is compiled. */

#endif
