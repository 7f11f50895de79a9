/* SPDX-License-Identifier: MIT */
/*
 * Routing metrics (metrics.h): sort the prompts by score, sweep the thresholds from above the
 * highest score (nobody to strong) down to the lowest (everybody), one curve point per
 * distinct score, and read PGR, APGR, CPT, the cheapest point reaching 95% of the strong
 * model's quality and its two kinds of mistake off that one sweep.
 */
#include "eval/metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"

#define REL_EPS 1e-9

struct scored {
    double score;
    size_t idx;
};

/* Descending score; the index keeps the order total (and the sort deterministic). */
static int cmp_desc(const void *a, const void *b)
{
    const struct scored *x = a;
    const struct scored *y = b;
    if (x->score > y->score) {
        return -1;
    }
    if (x->score < y->score) {
        return 1;
    }
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

static int cmp_double_desc(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return x > y ? -1 : (x < y);
}

static int cmp_double_asc(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return x < y ? -1 : (x > y);
}

static bool at_least(double v, double floor)
{
    return v >= floor - REL_EPS * fmax(1.0, fabs(floor));
}

static int check_inputs(const double *scores, const double *q_strong, const double *q_weak,
                        const double *c_strong, const double *c_weak, size_t n)
{
    if (scores == NULL || q_strong == NULL || q_weak == NULL || n == 0) {
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(scores[i]) || !isfinite(q_strong[i]) || !isfinite(q_weak[i]) ||
            (c_strong != NULL && !isfinite(c_strong[i])) ||
            (c_weak != NULL && !isfinite(c_weak[i]))) {
            return BR_ERR_INVAL;
        }
    }
    return BR_OK;
}

static double pgr_of(double q, double qw, double qs)
{
    return qs != qw ? (q - qw) / (qs - qw) : NAN;
}

/* Sorted copy of the scores with their indices; NULL on OOM. */
static struct scored *sort_scores(const double *scores, size_t n)
{
    struct scored *s = br_calloc(n, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        s[i].score = scores[i];
        s[i].idx = i;
    }
    qsort(s, n, sizeof(*s), cmp_desc);
    return s;
}

/*
 * The sweep. Writes up to (distinct + 1) points into curve when it is not NULL; returns the
 * number of points. Sums: sw = sum of weak quality, cw = sum of weak cost.
 */
static size_t sweep(const struct scored *s, const double *q_strong, const double *q_weak,
                    const double *c_strong, const double *c_weak, size_t n, double qw_mean,
                    double qs_mean, double sw, double cw, struct br_eval_point *curve,
                    double *apgr_out)
{
    double gain = 0.0;
    double extra = 0.0;
    double apgr = 0.0;
    double prev_p = 0.0;
    double prev_pgr = pgr_of(qw_mean, qw_mean, qs_mean);
    size_t k = 0;
    size_t pts = 0;
    if (curve != NULL) {
        curve[0] = (struct br_eval_point){INFINITY, 0.0, qw_mean, cw / (double)n, prev_pgr};
    }
    pts = 1;
    while (k < n) {
        double sc = s[k].score;
        while (k < n && s[k].score == sc) {
            size_t i = s[k].idx;
            gain += q_strong[i] - q_weak[i];
            if (c_strong != NULL || c_weak != NULL) {
                extra +=
                    (c_strong != NULL ? c_strong[i] : 0.0) - (c_weak != NULL ? c_weak[i] : 0.0);
            }
            k++;
        }
        double p = (double)k / (double)n;
        double q = (sw + gain) / (double)n;
        double pgr = pgr_of(q, qw_mean, qs_mean);
        apgr += (p - prev_p) * (pgr + prev_pgr) / 2.0;
        if (curve != NULL) {
            curve[pts] = (struct br_eval_point){sc, p, q, (cw + extra) / (double)n, pgr};
        }
        pts++;
        prev_p = p;
        prev_pgr = pgr;
    }
    if (apgr_out != NULL) {
        *apgr_out = apgr;
    }
    return pts;
}

/* The share of prompts an oracle must send to strong to reach floor (gains sorted desc). */
static double oracle_share(const double *gains, size_t n, double sw, double floor_sum)
{
    double acc = sw;
    if (at_least(acc, floor_sum)) {
        return 0.0;
    }
    for (size_t k = 0; k < n; k++) {
        if (gains[k] <= 0.0) {
            break;
        }
        acc += gains[k];
        if (at_least(acc, floor_sum)) {
            return (double)(k + 1) / (double)n;
        }
    }
    return NAN;
}

static double cpt(const struct br_eval_point *c, size_t n_curve, double x)
{
    for (size_t i = 0; i < n_curve; i++) {
        if (!isnan(c[i].pgr) && at_least(c[i].pgr, x)) {
            return c[i].p_strong;
        }
    }
    return NAN;
}

/* The cheapest point whose quality reaches 95% of always-strong (ties: fewer strong), and the
 * mistakes made there. */
static void q95_point(const double *scores, const double *q_strong, const double *q_weak, size_t n,
                      struct br_eval_result *out)
{
    double floor_q = 0.95 * out->q_strong;
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < out->n_curve; i++) {
        if (at_least(out->curve[i].quality, floor_q) &&
            (best == SIZE_MAX || out->curve[i].cost < out->curve[best].cost)) {
            best = i;
        }
    }
    if (best == SIZE_MAX) {
        best = out->n_curve - 1; /* unreachable: p_H = 1 has quality q_strong */
    }
    const struct br_eval_point *bp = &out->curve[best];
    out->cost_at_q95 = bp->cost;
    out->cost_at_q95_ratio = out->cost_strong > 0.0 ? bp->cost / out->cost_strong : NAN;
    out->p_strong_at_q95 = bp->p_strong;
    out->threshold_at_q95 = bp->threshold;
    out->quality_at_q95 = bp->quality;
    for (size_t i = 0; i < n; i++) {
        bool strong = scores[i] >= bp->threshold;
        if (!strong && q_strong[i] > q_weak[i]) {
            out->hard_to_weak++;
        } else if (strong && q_weak[i] >= q_strong[i]) {
            out->easy_to_strong++;
        }
    }
}

int br_eval_binary(const double *scores, const double *q_strong, const double *q_weak,
                   const double *c_strong, const double *c_weak, size_t n,
                   struct br_eval_result *out)
{
    if (out == NULL) {
        return BR_ERR_INVAL;
    }
    memset(out, 0, sizeof(*out));
    int rc = check_inputs(scores, q_strong, q_weak, c_strong, c_weak, n);
    if (rc != BR_OK) {
        return rc;
    }
    struct scored *s = sort_scores(scores, n);
    double *gains = br_calloc(n, sizeof(double));
    if (s == NULL || gains == NULL) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    double sw = 0.0;
    double ss = 0.0;
    double so = 0.0;
    double cw = 0.0;
    double cs = 0.0;
    for (size_t i = 0; i < n; i++) {
        sw += q_weak[i];
        ss += q_strong[i];
        so += fmax(q_weak[i], q_strong[i]);
        cw += c_weak != NULL ? c_weak[i] : 0.0;
        cs += c_strong != NULL ? c_strong[i] : 0.0;
        gains[i] = q_strong[i] - q_weak[i];
        if (q_strong[i] > q_weak[i]) {
            out->n_hard++;
        } else {
            out->n_easy++;
        }
    }
    double dn = (double)n;
    out->n = n;
    out->q_weak = sw / dn;
    out->q_strong = ss / dn;
    out->q_oracle = so / dn;
    out->cost_weak = cw / dn;
    out->cost_strong = cs / dn;
    /* The random router's expected curve is the straight line between the two baselines. */
    out->q_random_auc = pgr_of((out->q_weak + out->q_strong) / 2.0, out->q_weak, out->q_strong);

    size_t distinct = 1;
    for (size_t k = 1; k < n; k++) {
        distinct += s[k].score != s[k - 1].score;
    }
    out->curve = br_calloc(distinct + 1, sizeof(*out->curve));
    if (out->curve == NULL) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    out->n_curve = sweep(s, q_strong, q_weak, c_strong, c_weak, n, out->q_weak, out->q_strong, sw,
                         cw, out->curve, &out->apgr);
    if (out->q_strong == out->q_weak) {
        out->apgr = NAN;
    }
    out->cpt50 = cpt(out->curve, out->n_curve, 0.5);
    out->cpt80 = cpt(out->curve, out->n_curve, 0.8);
    out->cpt95 = cpt(out->curve, out->n_curve, 0.95);

    qsort(gains, n, sizeof(double), cmp_double_desc);
    out->oracle_p_strong_95 = oracle_share(gains, n, sw, 0.95 * ss);

    q95_point(scores, q_strong, q_weak, n, out);
out:
    br_free(s);
    br_free(gains);
    if (rc != BR_OK) {
        br_eval_result_cleanup(out);
    }
    return rc;
}

void br_eval_result_cleanup(struct br_eval_result *r)
{
    if (r == NULL) {
        return;
    }
    br_free(r->curve);
    r->curve = NULL;
    r->n_curve = 0;
}

double br_eval_apgr(const double *scores, const double *q_strong, const double *q_weak, size_t n)
{
    if (check_inputs(scores, q_strong, q_weak, NULL, NULL, n) != BR_OK) {
        return NAN;
    }
    struct scored *s = sort_scores(scores, n);
    if (s == NULL) {
        return NAN;
    }
    double sw = 0.0;
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) {
        sw += q_weak[i];
        ss += q_strong[i];
    }
    double apgr = NAN;
    (void)sweep(s, q_strong, q_weak, NULL, NULL, n, sw / (double)n, ss / (double)n, sw, 0.0, NULL,
                &apgr);
    br_free(s);
    return sw == ss ? NAN : apgr;
}

int br_eval_point_at(const double *scores, const double *q_strong, const double *q_weak,
                     const double *c_strong, const double *c_weak, size_t n, double threshold,
                     struct br_eval_point *out)
{
    if (out == NULL || isnan(threshold)) {
        return BR_ERR_INVAL;
    }
    int rc = check_inputs(scores, q_strong, q_weak, c_strong, c_weak, n);
    if (rc != BR_OK) {
        return rc;
    }
    double sw = 0.0;
    double ss = 0.0;
    double q = 0.0;
    double c = 0.0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool strong = scores[i] >= threshold;
        sw += q_weak[i];
        ss += q_strong[i];
        q += strong ? q_strong[i] : q_weak[i];
        if (strong) {
            c += c_strong != NULL ? c_strong[i] : 0.0;
        } else {
            c += c_weak != NULL ? c_weak[i] : 0.0;
        }
        k += strong;
    }
    double dn = (double)n;
    *out = (struct br_eval_point){threshold, (double)k / dn, q / dn, c / dn,
                                  pgr_of(q / dn, sw / dn, ss / dn)};
    return BR_OK;
}

/* numpy's default ('linear') quantile of sorted values. */
static double quantile(const double *sorted, size_t n, double q)
{
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)floor(pos);
    if (lo >= n - 1) {
        return sorted[n - 1];
    }
    double frac = pos - (double)lo;
    return sorted[lo] + (sorted[lo + 1] - sorted[lo]) * frac;
}

struct pq {
    double p;
    double q;
};

static int cmp_pq(const void *a, const void *b)
{
    const struct pq *x = a;
    const struct pq *y = b;
    return x->p < y->p ? -1 : (x->p > y->p);
}

double br_eval_apgr_quantiles(const double *scores, const double *q_strong, const double *q_weak,
                              size_t n, unsigned bins)
{
    if (bins == 0 || bins > 100000 ||
        check_inputs(scores, q_strong, q_weak, NULL, NULL, n) != BR_OK) {
        return NAN;
    }
    double *sorted = br_calloc(n, sizeof(double));
    struct pq *pts = br_calloc((size_t)bins + 1, sizeof(*pts));
    double result = NAN;
    if (sorted == NULL || pts == NULL) {
        goto out;
    }
    memcpy(sorted, scores, n * sizeof(double));
    qsort(sorted, n, sizeof(double), cmp_double_asc);
    double sw = 0.0;
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) {
        sw += q_weak[i];
        ss += q_strong[i];
    }
    for (unsigned j = 0; j <= bins; j++) {
        double t = quantile(sorted, n, (double)j / (double)bins);
        double q = 0.0;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            bool strong = j < bins ? scores[i] >= t : scores[i] > t;
            q += strong ? q_strong[i] : q_weak[i];
            k += strong;
        }
        pts[j].p = (double)k / (double)n;
        pts[j].q = q / (double)n;
    }
    qsort(pts, (size_t)bins + 1, sizeof(*pts), cmp_pq);
    double auc = 0.0;
    for (unsigned j = 1; j <= bins; j++) {
        auc += (pts[j].p - pts[j - 1].p) * (pts[j].q + pts[j - 1].q) / 2.0;
    }
    double span = pts[bins].p - pts[0].p;
    double qw = sw / (double)n;
    double qs = ss / (double)n;
    if (span > 0.0 && qs != qw) {
        result = (auc - qw * span) / ((qs - qw) * span);
    }
out:
    br_free(sorted);
    br_free(pts);
    return result;
}
