/* SPDX-License-Identifier: MIT */
/*
 * Prompt features for the learned router, cheap enough to compute on every request (a 1 KB
 * prompt takes about a microsecond): hashed word unigrams and bigrams, hashed character
 * n-grams, and a fixed block of structural features (length, digits, math and code markers,
 * question marks, lines, multiple-choice markers, non-ASCII share, ...).
 *
 * Hashed features use signed hashing (the "hashing trick" with a sign bit, so collisions
 * cancel in expectation) into 2^hash_bits buckets. Each family (words, bigrams, character
 * n-grams) is scaled by 1/sqrt(number of items emitted in that family), so that long and short
 * prompts give vectors of comparable norm; structural features lie roughly in [0, 1] and sit
 * after the hashed buckets, at indices 2^hash_bits .. 2^hash_bits + BR_FEATURES_N_STRUCT - 1.
 *
 * Text is raw bytes (UTF-8 expected, never validated: any bytes are accepted). Only the first
 * and last max_bytes / 2 bytes are read when the text is longer than max_bytes, so the cost
 * is bounded whatever the prompt.
 *
 * Nothing here allocates; every function is pure and thread-safe.
 */
#ifndef BR_ROUTE_FEATURES_H
#define BR_ROUTE_FEATURES_H

#include <stddef.h>
#include <stdint.h>

/* Version of the feature definitions; model files record it and are refused on mismatch. */
#define BR_FEATURES_VERSION 1

/* Feature families (flags). */
#define BR_FEATURES_WORD1  0x01u /* word unigrams */
#define BR_FEATURES_WORD2  0x02u /* word bigrams */
#define BR_FEATURES_CHAR   0x04u /* character n-grams, char_min..char_max */
#define BR_FEATURES_STRUCT 0x08u /* structural block */
#define BR_FEATURES_NUMS   0x10u /* hash numbers by shape ("ddd.d") instead of by value */
#define BR_FEATURES_ALL    0x1fu

#define BR_FEATURES_N_STRUCT      32 /* size of the structural block (some slots reserved) */
#define BR_FEATURES_MIN_BITS      8
#define BR_FEATURES_MAX_BITS      24
#define BR_FEATURES_MAX_CHAR      8
#define BR_FEATURES_MAX_WINDOW    (1u << 20) /* largest max_bytes accepted */
#define BR_FEATURES_DEFAULT_BYTES 4096

struct br_features_config {
    uint32_t hash_bits; /* log2 of the number of hashed buckets, 8..24 */
    uint32_t flags;     /* BR_FEATURES_* */
    uint32_t char_min;  /* shortest character n-gram, 1..8 (with BR_FEATURES_CHAR) */
    uint32_t char_max;  /* longest, char_min..8 */
    uint32_t max_bytes; /* bytes of text read (head and tail halves); 0 = default (4096) */
    uint32_t seed;      /* hash seed */
};

/* One non-zero feature. */
struct br_feature {
    uint32_t index; /* 0 .. br_features_dim() - 1 */
    float value;
};

/** The default configuration: 2^18 buckets, word 1-2 grams, structural block, numbers by shape. */
void br_features_config_default(struct br_features_config *out);

/** BR_OK when every field is in range, else BR_ERR_INVAL. */
int br_features_config_check(const struct br_features_config *cfg);

/** Dimension of the feature space: 2^hash_bits + BR_FEATURES_N_STRUCT. */
size_t br_features_dim(const struct br_features_config *cfg);

/**
 * Upper bound on the number of features br_features_extract() emits for a text of len bytes
 * (a buffer of this many entries is never truncated).
 */
size_t br_features_max(const struct br_features_config *cfg, size_t len);

/**
 * Extracts the features of text (len bytes) into out[0..cap). Duplicated indices may appear
 * (their values add up). *n_out receives the number written. If cap is too small the
 * extraction stops at cap entries and returns BR_ERR_LIMIT (out is still usable). cfg must
 * pass br_features_config_check().
 */
int br_features_extract(const struct br_features_config *cfg, const char *text, size_t len,
                        struct br_feature *out, size_t cap, size_t *n_out);

/**
 * Dot products without materialising the features: for each output o in [0, n_out),
 * acc[o] = sum over features (index i, value v) of v * w[i * n_out + o] (w is interleaved:
 * the n_out weights of one feature are adjacent, one cache line for all outputs). acc must
 * hold n_out values (1..16) and is overwritten. w has br_features_dim() * n_out floats.
 */
int br_features_dot(const struct br_features_config *cfg, const char *text, size_t len,
                    const float *w, size_t n_out, double *acc);

/** Name of structural feature k (for reports), or NULL past the used slots. */
const char *br_features_struct_name(size_t k);

/*
 * Answer features, for verifiers that judge a cheap model's answer before a cascade returns
 * it (the cheap model has been called; is its answer good enough?). Two parts:
 *
 *   - the answer's words, hashed as the prompt's are but in a namespace of their own (seed
 *     changed, no structural block): br_features_extract_answer / br_features_dot_answer;
 *   - a dense block of BR_FEATURES_N_ANSWER checks (br_features_answer_checks): a final-answer
 *     marker ("#### n") and its number, arithmetic re-checked (GSM8K-style "<<a*b=c>>"
 *     annotations and plain "a + b = c" equations recomputed), the answer's number found in
 *     the prompt, hedging ("however", "assume", "approximately", ...), an abrupt end, length.
 *
 * Arithmetic uses a bounded non-recursive evaluator (+ - * / x, parentheses, %, $ and digit
 * commas); anything it cannot read is skipped, never an error.
 */
#define BR_FEATURES_N_ANSWER 24

/** Like br_features_extract, for the answer text (index space shared with the prompt's). */
int br_features_extract_answer(const struct br_features_config *cfg, const char *answer, size_t len,
                               struct br_feature *out, size_t cap, size_t *n_out);

/** Like br_features_dot, for the answer text. */
int br_features_dot_answer(const struct br_features_config *cfg, const char *answer, size_t len,
                           const float *w, size_t n_out, double *acc);

/**
 * The dense checks of an answer to a prompt into out[BR_FEATURES_N_ANSWER] (values roughly in
 * [0, 1]). Reads at most BR_FEATURES_MAX_WINDOW bytes of each.
 */
void br_features_answer_checks(const char *prompt, size_t plen, const char *answer, size_t alen,
                               double *out);

/** Name of answer check k, or NULL past the used slots. */
const char *br_features_answer_name(size_t k);

#endif
