/* SPDX-License-Identifier: MIT */
/*
 * Splits for evaluating learned routers on rows they were not trained on: k-fold assignment
 * and a held-out split, both seeded and reproducible (the same n, k, seed and strata give the
 * same assignment on every machine: xoshiro256** from core/rand.h, Fisher-Yates shuffles).
 *
 * Stratified when strata is given: rows are shuffled within each stratum (e.g. the four
 * outcome classes strong-right/weak-right of a binary task), then dealt to the folds in turn,
 * continuing across strata, so that every fold holds each stratum's share to within one row
 * and fold sizes differ by at most one. Without strata the rows are shuffled and dealt the
 * same way. Thread-safe (no state).
 */
#ifndef BR_EVAL_FOLDS_H
#define BR_EVAL_FOLDS_H

#include <stddef.h>
#include <stdint.h>

/**
 * Assigns each of n rows a fold in 0..k-1 (fold_of[n], caller-allocated). strata may be NULL
 * (unstratified) or give each row a small non-negative class (0..1023). Returns BR_OK,
 * BR_ERR_INVAL (k < 2, k > n, a stratum out of range) or BR_ERR_NOMEM.
 */
int br_eval_folds(size_t n, unsigned k, uint64_t seed, const int *strata, int *fold_of);

/**
 * Held-out split: marks round(n * test_share) rows as test (fold_of[i] = 1) and the rest as
 * train (0), stratified as br_eval_folds when strata is given. test_share in (0, 1); both
 * sides must end up non-empty. Returns BR_OK, BR_ERR_INVAL or BR_ERR_NOMEM.
 */
int br_eval_holdout(size_t n, double test_share, uint64_t seed, const int *strata, int *fold_of);

/**
 * The stratum of a binary outcome pair: 0 both wrong, 1 weak only, 2 strong only, 3 both
 * right, with a quality counting as right when >= 0.5. For br_eval_folds' strata.
 */
int br_eval_outcome_stratum(double q_strong, double q_weak);

#endif
