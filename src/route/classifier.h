/* SPDX-License-Identifier: MIT */
/*
 * A learned router: scores a prompt from features that cost microseconds (hashed word and
 * character n-grams, structural features; see features.h) with a linear model trained offline
 * by `brigade train` (liblinear). Binary models give P(the strong model is needed | prompt);
 * N-model models give, per candidate model, the predicted quality, so that a route can pick the
 * cheapest model predicted good enough.
 *
 * Model files are brigade's own small binary format (header with magic, version, feature
 * configuration and output names, then float32 weights), validated field by field on load:
 * a truncated or malformed file is an error, never a crash. A loaded model is immutable and
 * may be shared by all worker threads; scoring allocates nothing.
 */
#ifndef BR_ROUTE_CLASSIFIER_H
#define BR_ROUTE_CLASSIFIER_H

#include <stddef.h>

typedef struct br_classifier br_classifier;

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

#endif
