/* SPDX-License-Identifier: MIT */
/*
 * Seeded k-fold and held-out splits (folds.h). Rows are shuffled within their stratum with a
 * Fisher-Yates shuffle driven by xoshiro256** (core/rand.h, seeded with `seed`), the strata are
 * concatenated in stratum order, and the sequence is dealt round-robin: row j of it goes to
 * fold j mod k. Each stratum therefore spreads over the folds to within one row, and the fold
 * sizes to within one row.
 */
#include "eval/folds.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "core/rand.h"

#define MAX_STRATUM 1023

/* Bounded uniform integer in [0, n) without modulo bias (Lemire's rejection). */
static size_t uniform_below(struct br_rng *r, size_t n)
{
    uint64_t bound = (uint64_t)n;
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t x = br_rng_next(r);
        if (x >= threshold) {
            return (size_t)(x % bound);
        }
    }
}

/* The rows in dealing order: shuffled within each stratum, strata in ascending order. */
static int dealing_order(size_t n, uint64_t seed, const int *strata, size_t *order)
{
    struct br_rng rng;
    br_rng_seed(&rng, seed != 0 ? seed : 0x9E3779B97F4A7C15ull);
    size_t counts[MAX_STRATUM + 2];
    memset(counts, 0, sizeof(counts));
    for (size_t i = 0; i < n; i++) {
        int s = strata != NULL ? strata[i] : 0;
        if (s < 0 || s > MAX_STRATUM) {
            return BR_ERR_INVAL;
        }
        counts[s + 1]++;
    }
    for (size_t s = 1; s < MAX_STRATUM + 2; s++) {
        counts[s] += counts[s - 1]; /* counts[s] = start of stratum s */
    }
    for (size_t i = 0; i < n; i++) {
        int s = strata != NULL ? strata[i] : 0;
        order[counts[s]++] = i;
    }
    /* counts[s] is now the end of stratum s; shuffle each [start, end). */
    size_t start = 0;
    for (size_t s = 0; s <= MAX_STRATUM; s++) {
        size_t end = counts[s];
        for (size_t j = end; j > start + 1; j--) {
            size_t r = start + uniform_below(&rng, j - start);
            size_t t = order[j - 1];
            order[j - 1] = order[r];
            order[r] = t;
        }
        start = end;
    }
    return BR_OK;
}

int br_eval_folds(size_t n, unsigned k, uint64_t seed, const int *strata, int *fold_of)
{
    if (fold_of == NULL || k < 2 || (size_t)k > n) {
        return BR_ERR_INVAL;
    }
    size_t *order = br_calloc(n, sizeof(size_t));
    if (order == NULL) {
        return BR_ERR_NOMEM;
    }
    int rc = dealing_order(n, seed, strata, order);
    if (rc == BR_OK) {
        for (size_t j = 0; j < n; j++) {
            fold_of[order[j]] = (int)(j % k);
        }
    }
    br_free(order);
    return rc;
}

int br_eval_holdout(size_t n, double test_share, uint64_t seed, const int *strata, int *fold_of)
{
    if (fold_of == NULL || !(test_share > 0.0 && test_share < 1.0)) {
        return BR_ERR_INVAL;
    }
    size_t n_test = (size_t)llround((double)n * test_share);
    if (n_test == 0 || n_test >= n) {
        return BR_ERR_INVAL;
    }
    size_t *order = br_calloc(n, sizeof(size_t));
    if (order == NULL) {
        return BR_ERR_NOMEM;
    }
    int rc = dealing_order(n, seed, strata, order);
    if (rc == BR_OK) {
        /* Deal test picks evenly along the stratified order: row j is test when the running
         * quota floor((j + 1) * n_test / n) grows at j. */
        for (size_t j = 0; j < n; j++) {
            size_t before = j * n_test / n;
            size_t after = (j + 1) * n_test / n;
            fold_of[order[j]] = after > before ? 1 : 0;
        }
    }
    br_free(order);
    return rc;
}

int br_eval_outcome_stratum(double q_strong, double q_weak)
{
    return (q_strong >= 0.5 ? 2 : 0) + (q_weak >= 0.5 ? 1 : 0);
}
