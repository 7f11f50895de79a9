/* SPDX-License-Identifier: MIT */
/*
 * Routing metrics on recorded outcomes, as RouteLLM's evaluate.py defines them, for a router
 * that scores each prompt (higher = more in need of the strong model) and sends the prompts
 * scoring at or above a threshold to the strong model:
 *
 *   p_H      share of prompts sent to the strong model
 *   Q        mean quality of the answers the routed models gave
 *   PGR      (Q - Q_weak) / (Q_strong - Q_weak): the share of the quality gap recovered
 *   APGR     area under PGR against p_H from 0 to 1 (trapezoids over every distinct
 *            threshold), i.e. 0.5 for a random router and near 1 for the oracle
 *   CPT(x)   the smallest p_H whose PGR reaches x
 *
 * plus cost per prompt, E[C] at the cheapest threshold whose quality reaches a floor, and the
 * two kinds of mistake counted separately. One sort, then one linear sweep: 14,042 prompts
 * take about a millisecond. Thread-safe (no state).
 *
 * Ties: prompts with equal scores cross every threshold together, so they form one step of
 * the sweep (one curve point), and the trapezoid across that step is exactly the expected
 * curve of breaking the tie at random. A constant-score router is therefore a random router
 * (APGR 0.5), and an oracle scoring 1/0/-1 has four points. Comparisons against PGR and
 * quality floors allow a relative 1e-9 for rounding.
 */
#ifndef BR_EVAL_METRICS_H
#define BR_EVAL_METRICS_H

#include <stddef.h>

/* One threshold of a sweep. */
struct br_eval_point {
    double threshold; /* route to strong when score >= threshold */
    double p_strong;  /* share of prompts sent to the strong model */
    double quality;   /* mean quality */
    double cost;      /* mean cost per prompt, USD */
    double pgr;       /* (quality - q_weak) / (q_strong - q_weak) */
};

struct br_eval_result {
    size_t n;            /* prompts */
    double q_weak;       /* always-weak quality */
    double q_strong;     /* always-strong quality */
    double q_oracle;     /* best of both per prompt */
    double q_random_auc; /* random router's APGR (0.5 by construction, computed) */
    double cost_weak;    /* always-weak mean cost, USD */
    double cost_strong;  /* always-strong mean cost, USD */
    double apgr;
    double cpt50, cpt80, cpt95;  /* p_H needed for PGR 0.5 / 0.8 / 0.95 */
    double oracle_p_strong_95;   /* p_H the oracle needs for 95% of q_strong */
    double cost_at_q95;          /* mean cost at the cheapest threshold with
                                    quality >= 0.95 * q_strong (USD) */
    double cost_at_q95_ratio;    /* cost_at_q95 / cost_strong */
    double p_strong_at_q95;      /* p_H at that threshold */
    size_t hard_to_weak;         /* at that threshold: prompts sent to the weak model
                                    that only the strong one answered well */
    size_t easy_to_strong;       /* ... sent to the strong model although the weak one
                                    answered as well */
    double threshold_at_q95;     /* that threshold (+inf: nothing to strong) */
    double quality_at_q95;       /* quality there */
    size_t n_hard;               /* prompts the strong model answered better */
    size_t n_easy;               /* prompts the weak model answered as well */
    struct br_eval_point *curve; /* [n_curve] one point per distinct threshold,
                                    p_strong ascending; owned by the result */
    size_t n_curve;
};

/**
 * Evaluates a binary router. scores[i] is the router's score of prompt i; q_strong/q_weak the
 * recorded qualities (0..1); c_strong/c_weak the costs (USD; may be NULL for zero). A cascade
 * is evaluated by passing its total costs (weak + strong when escalated) in c_strong.
 * Returns BR_OK, BR_ERR_INVAL (n == 0, NaN quality) or BR_ERR_NOMEM.
 */
int br_eval_binary(const double *scores, const double *q_strong, const double *q_weak,
                   const double *c_strong, const double *c_weak, size_t n,
                   struct br_eval_result *out);

/**
 * Evaluates one threshold (strong when scores[i] >= threshold) into *out (pgr NaN when
 * q_strong == q_weak on these rows). Costs may be NULL. BR_ERR_INVAL on n == 0 or NaN.
 */
int br_eval_point_at(const double *scores, const double *q_strong, const double *q_weak,
                     const double *c_strong, const double *c_weak, size_t n, double threshold,
                     struct br_eval_point *out);

/**
 * APGR as RouteLLM's evaluate.py estimates it: `bins` + 1 thresholds at the quantiles 0,
 * 1/bins, ..., 1 of the scores (linear interpolation, as pandas.qcut), strong when score >=
 * threshold except at the last (score > max, nobody), trapezoids over the resulting points
 * sorted by p_H, normalised between always-weak and always-strong. Coarser than br_eval_apgr
 * (every distinct threshold); reported beside it so that numbers compare with published ones.
 * NaN on error.
 */
double br_eval_apgr_quantiles(const double *scores, const double *q_strong, const double *q_weak,
                              size_t n, unsigned bins);

/** Frees the curve. */
void br_eval_result_cleanup(struct br_eval_result *r);

/** APGR alone (no allocation beyond a sort buffer); NaN on error. For search loops. */
double br_eval_apgr(const double *scores, const double *q_strong, const double *q_weak, size_t n);

#endif
