/* SPDX-License-Identifier: MIT */
/*
 * A learned router: scores a prompt from features that cost microseconds (hashed word and
 * character n-grams, structural features; see features.h) with a linear model trained offline
 * by `brigade train` (liblinear). Binary models give P(the strong model is needed | prompt);
 * N-model models give, per candidate model, the predicted quality, so that a route can pick the
 * cheapest model predicted good enough; verifier models judge a cheap model's answer for a
 * cascade (P(the answer should be escalated | prompt, answer)).
 *
 * Model files are brigade's own small binary format (header with magic, version, feature
 * configuration and output names, then float32 weights), validated field by field on load:
 * a truncated or malformed file is an error, never a crash. A loaded model is immutable and
 * may be shared by all worker threads; scoring allocates nothing.
 *
 * File layout (all integers little-endian u32 unless noted; docs/internals/router.md):
 *
 *     0   "BRRT"                       magic
 *     4   version (1)
 *     8   kind (1 binary, 2 n-model, 3 verifier)
 *     12  combine (0 = each set is a logistic output; 1 = binary score (1 + s0 - s1) / 2
 *         from two sets: P(strong right) and P(weak right))
 *     16  features version, 20 hash_bits, 24 flags, 28 char_min, 32 char_max,
 *     36  max_bytes, 40 seed         the feature configuration (features.h)
 *     44  n_sets (weight vectors, 1..16)
 *     48  dim (features per set: 2^hash_bits + structural block [+ answer checks])
 *     52  encoding (0 dense: dim rows; 1 sparse: rows of u32 index + weights)
 *     56  n_rows
 *     60  meta_bytes
 *     64  threshold (f32; suggested operating point, NaN if none)
 *     68  reserved (0)
 *     72  meta: per set u16 name length, name, f32 bias, f32 mean cost per prompt (USD; NaN
 *         unknown), f32 mean quality (NaN unknown); then u32 notes length and notes (UTF-8)
 *     ..  weights: rows of n_sets f32 (sparse rows start with their u32 index, increasing)
 *     end CRC-32 (IEEE) of every byte before it
 */
#ifndef BR_ROUTE_CLASSIFIER_H
#define BR_ROUTE_CLASSIFIER_H

#include <stddef.h>

#include "route/features.h"

typedef struct br_classifier br_classifier;

#define BR_CLASSIFIER_VERSION   1
#define BR_CLASSIFIER_MAX_SETS  16
#define BR_CLASSIFIER_MAX_NAME  128
#define BR_CLASSIFIER_MAX_NOTES 65536
#define BR_CLASSIFIER_MAX_FILE  ((size_t)1 << 30)

enum br_classifier_kind {
    BR_CLASSIFIER_BINARY = 1,   /* one output: P(strong needed | prompt) */
    BR_CLASSIFIER_NMODEL = 2,   /* one output per candidate: P(its answer is good | prompt) */
    BR_CLASSIFIER_VERIFIER = 3, /* one output: P(escalate | prompt, cheap model's answer) */
};

enum br_classifier_combine {
    BR_CLASSIFIER_COMBINE_NONE = 0, /* output i = sigmoid(w_i . x + b_i) */
    BR_CLASSIFIER_COMBINE_DIFF = 1, /* binary: (1 + sigmoid(z_0) - sigmoid(z_1)) / 2 */
};

/** Loads a model file. On failure writes a one-line reason (file and what is wrong). */
int br_classifier_load(const char *path, br_classifier **out, char *err, size_t errlen);

/** Loads from memory (tests, fuzzing); the bytes are copied. */
int br_classifier_load_mem(const void *data, size_t n, br_classifier **out, char *err,
                           size_t errlen);

/** Frees a model. NULL is a no-op. */
void br_classifier_free(br_classifier *c);

/** Number of outputs: 1 for a binary router, the number of candidate models otherwise. */
size_t br_classifier_n_outputs(const br_classifier *c);

/** Name of output i (the model it predicts for; "strong" for a binary router). */
const char *br_classifier_output_name(const br_classifier *c, size_t i);

/**
 * Scores text (len bytes): fills out[0..n_outputs) with probabilities in [0, 1] (binary: the
 * probability that the strong model is needed). n_out must be >= n_outputs. No allocation;
 * thread-safe on a shared model.
 */
int br_classifier_predict(const br_classifier *c, const char *text, size_t len, double *out,
                          size_t n_out);

/** Binary convenience: P(strong needed | text). */
double br_classifier_score(const br_classifier *c, const char *text, size_t len);

/* ---- additions (backward compatible) ---- */

/** The model's kind. */
enum br_classifier_kind br_classifier_kind(const br_classifier *c);

/** The feature configuration the model was trained with (borrowed; lives with c). */
const struct br_features_config *br_classifier_features(const br_classifier *c);

/** Index of the output called name (exact match), or -1. */
int br_classifier_output_index(const br_classifier *c, const char *name);

/** Mean cost per prompt of output i's model in the training data (USD), NaN if unknown. */
double br_classifier_output_cost(const br_classifier *c, size_t i);

/** Mean quality of output i's model in the training data, NaN if unknown. */
double br_classifier_output_quality(const br_classifier *c, size_t i);

/** The operating threshold suggested by training (NaN if none was recorded). */
double br_classifier_threshold(const br_classifier *c);

/** Free-text training notes (datasets, label, C, cross-validated figures); "" if none. */
const char *br_classifier_notes(const br_classifier *c);

/**
 * Verifier models: P(the cheap model's answer should be escalated | prompt, answer) into
 * *out. BR_ERR_INVAL for other kinds. No allocation; thread-safe on a shared model.
 */
int br_classifier_verify(const br_classifier *c, const char *prompt, size_t plen,
                         const char *answer, size_t alen, double *out);

/**
 * N-model choice among n candidates with predicted quality[i] and cost[i] (any unit; NaN or
 * negative = candidate not allowed): the cheapest candidate whose quality is within margin of
 * the best allowed quality, after penalising quality by lambda * cost (lambda = 0: pure
 * margin rule). Ties go to the lower index. BR_ERR_NOTFOUND when no candidate is allowed.
 */
int br_classifier_choose(const double *quality, const double *cost, size_t n, double margin,
                         double lambda, size_t *out);

/* What br_classifier_write() serialises (training side). */
struct br_classifier_set {
    const char *name; /* output / model name, 1..BR_CLASSIFIER_MAX_NAME bytes */
    double bias;
    double cost_usd; /* mean per prompt; NaN unknown */
    double quality;  /* mean; NaN unknown */
};

struct br_classifier_spec {
    enum br_classifier_kind kind;
    enum br_classifier_combine combine;
    struct br_features_config features;
    size_t n_sets;
    struct br_classifier_set sets[BR_CLASSIFIER_MAX_SETS];
    const float *weights; /* [dim * n_sets], interleaved: weights[j * n_sets + s] (borrowed) */
    double threshold;     /* NaN if none */
    const char *notes;    /* may be NULL */
};

/** Features per weight set for this kind and feature configuration. */
size_t br_classifier_dim(enum br_classifier_kind kind, const struct br_features_config *fc);

/**
 * Serialises spec into a new buffer (*data_out, freed with br_free; *n_out bytes), choosing
 * the smaller of the dense and sparse encodings. BR_ERR_INVAL when spec is not writable (the
 * loader's checks), BR_ERR_NOMEM.
 */
int br_classifier_write(const struct br_classifier_spec *spec, void **data_out, size_t *n_out);

/** Writes spec to path (through a temporary file and rename). One-line reason on failure. */
int br_classifier_save(const struct br_classifier_spec *spec, const char *path, char *err,
                       size_t errlen);

#endif
