/* SPDX-License-Identifier: MIT */
/*
 * Routing metrics on small datasets whose every number is worked out by hand in the comments,
 * the folds and held-out splits, and the driver's promise that a learned router is never
 * scored on a row it was trained on.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/err.h"
#include "eval/eval.h"
#include "eval/folds.h"
#include "eval/metrics.h"

#define EPS 1e-12

/* cmocka 1.1 has no assert_double_equal. */
#define assert_near(a, b, eps) near_impl((a), (b), (eps), #a, __FILE__, __LINE__)

static void near_impl(double a, double b, double eps, const char *what, const char *file, int line)
{
    if (!(fabs(a - b) <= eps)) {
        fprintf(stderr, "%s:%d: %s = %.17g, expected %.17g\n", file, line, what, a, b);
    }
    assert_true(fabs(a - b) <= eps);
}

/*
 * The five-prompt dataset used below. Costs: strong 10, weak 1 per prompt.
 *
 *   i  score  q_strong  q_weak   kind
 *   0  0.9    1         0        hard (only strong right)
 *   1  0.7    1         1        easy (both right)       } tied scores:
 *   2  0.7    0         0        easy (both wrong)       } one threshold step
 *   3  0.4    1         0        hard
 *   4  0.1    0         1        weak better
 *
 * q_strong = 3/5 = 0.6, q_weak = 2/5 = 0.4, q_oracle = (1+1+0+1+1)/5 = 0.8;
 * cost_weak = 1, cost_strong = 10; PGR = (Q - 0.4) / 0.2.
 */
static const double S5[] = {0.9, 0.7, 0.7, 0.4, 0.1};
static const double QS5[] = {1, 1, 0, 1, 0};
static const double QW5[] = {0, 1, 0, 0, 1};
static const double CS5[] = {10, 10, 10, 10, 10};
static const double CW5[] = {1, 1, 1, 1, 1};

static void test_binary_hand_computed(void **state)
{
    (void)state;
    struct br_eval_result r;
    assert_int_equal(br_eval_binary(S5, QS5, QW5, CS5, CW5, 5, &r), BR_OK);
    assert_int_equal(r.n, 5);
    assert_near(r.q_strong, 0.6, EPS);
    assert_near(r.q_weak, 0.4, EPS);
    assert_near(r.q_oracle, 0.8, EPS);
    assert_near(r.cost_weak, 1.0, EPS);
    assert_near(r.cost_strong, 10.0, EPS);
    assert_near(r.q_random_auc, 0.5, EPS);
    /*
     * Sweep from the top (threshold, p_H, Q, cost, PGR):
     *   +inf  0.0  0.4  1                         0
     *   0.9   0.2  0.6  (5 + 9) / 5 = 2.8         1      prompt 0 (+1)
     *   0.7   0.6  0.6  (5 + 27) / 5 = 6.4        1      prompts 1, 2 together (+0, +0)
     *   0.4   0.8  0.8  (5 + 36) / 5 = 8.2        2      prompt 3 (+1)
     *   0.1   1.0  0.6  10                        1      prompt 4 (-1)
     */
    assert_int_equal(r.n_curve, 5);
    const double th[] = {INFINITY, 0.9, 0.7, 0.4, 0.1};
    const double p[] = {0.0, 0.2, 0.6, 0.8, 1.0};
    const double q[] = {0.4, 0.6, 0.6, 0.8, 0.6};
    const double c[] = {1.0, 2.8, 6.4, 8.2, 10.0};
    const double pgr[] = {0.0, 1.0, 1.0, 2.0, 1.0};
    for (size_t i = 0; i < 5; i++) {
        assert_true(r.curve[i].threshold == th[i]);
        assert_near(r.curve[i].p_strong, p[i], EPS);
        assert_near(r.curve[i].quality, q[i], EPS);
        assert_near(r.curve[i].cost, c[i], EPS);
        assert_near(r.curve[i].pgr, pgr[i], EPS);
    }
    /*
     * APGR: trapezoids of PGR over p_H:
     *   0.2 x (0 + 1)/2 = 0.1;  0.4 x (1 + 1)/2 = 0.4;  0.2 x (1 + 2)/2 = 0.3;  0.2 x (2 + 1)/2 =
     * 0.3 = 1.1
     */
    assert_near(r.apgr, 1.1, EPS);
    assert_near(br_eval_apgr(S5, QS5, QW5, 5), 1.1, EPS);
    /* CPT: PGR reaches 0.5, 0.8 and 0.95 first at p_H = 0.2. */
    assert_near(r.cpt50, 0.2, EPS);
    assert_near(r.cpt80, 0.2, EPS);
    assert_near(r.cpt95, 0.2, EPS);
    /*
     * Floor 0.95 x 0.6 = 0.57: reached at p_H 0.2, 0.6, 0.8, 1.0; the cheapest is 0.2 (cost
     * 2.8 = 0.28 x always-strong), threshold 0.9, quality 0.6. There only prompt 0 goes to
     * strong: prompt 3 is a hard prompt sent to the weak model (1), no easy prompt goes to
     * the strong model (0). Hard prompts: 0 and 3; easy: 1, 2, 4.
     */
    assert_near(r.cost_at_q95, 2.8, EPS);
    assert_near(r.cost_at_q95_ratio, 0.28, EPS);
    assert_near(r.p_strong_at_q95, 0.2, EPS);
    assert_true(r.threshold_at_q95 == 0.9);
    assert_near(r.quality_at_q95, 0.6, EPS);
    assert_int_equal(r.hard_to_weak, 1);
    assert_int_equal(r.easy_to_strong, 0);
    assert_int_equal(r.n_hard, 2);
    assert_int_equal(r.n_easy, 3);
    /* Oracle: gains 1, 1, 0, 0, -1; 2 + 1 = 3 >= 0.95 x 3 = 2.85 after one prompt: 1/5. */
    assert_near(r.oracle_p_strong_95, 0.2, EPS);
    br_eval_result_cleanup(&r);
    assert_null(r.curve);
    br_eval_result_cleanup(&r); /* twice is fine */
}

static void test_binary_no_costs(void **state)
{
    (void)state;
    struct br_eval_result r;
    assert_int_equal(br_eval_binary(S5, QS5, QW5, NULL, NULL, 5, &r), BR_OK);
    /* Every cost is 0: the cheapest point at the floor is the one with the fewest strong. */
    assert_near(r.cost_strong, 0.0, EPS);
    assert_true(isnan(r.cost_at_q95_ratio));
    assert_near(r.p_strong_at_q95, 0.2, EPS);
    br_eval_result_cleanup(&r);
}

static void test_oracle_apgr(void **state)
{
    (void)state;
    /*
     * The oracle scores q_strong - q_weak = 1, 0, 0, 1, -1: three steps.
     *   +inf: p 0,   Q 0.4, PGR 0
     *   1:    p 0.4, Q 0.8, PGR 2     (prompts 0 and 3)
     *   0:    p 0.8, Q 0.8, PGR 2     (prompts 1 and 2)
     *   -1:   p 1,   Q 0.6, PGR 1     (prompt 4)
     * APGR = 0.4 x 2/2 + 0.4 x 2 + 0.2 x 3/2 = 0.4 + 0.8 + 0.3 = 1.5; in closed form with
     * g = 0.4 (strong-only share), b = 0.2 (weak-only share), P = g / (q_s - q_w) = 2:
     * g P / 2 + (1 - b - g) P + b (P + 1) / 2 = 1.5.
     */
    const double gain[] = {1, 0, 0, 1, -1};
    struct br_eval_result r;
    assert_int_equal(br_eval_binary(gain, QS5, QW5, CS5, CW5, 5, &r), BR_OK);
    assert_int_equal(r.n_curve, 4);
    assert_near(r.apgr, 1.5, EPS);
    /* The oracle reaches q_oracle = 0.8 at p_H 0.4. */
    assert_near(r.curve[1].quality, r.q_oracle, EPS);
    br_eval_result_cleanup(&r);
}

static void test_constant_and_fixed(void **state)
{
    (void)state;
    /*
     * Equal scores cross every threshold together: points (0, 0.4) and (1, 0.6), the straight
     * line of the random router: APGR 0.5; RouteLLM's estimator agrees.
     */
    const double zero[] = {0, 0, 0, 0, 0};
    struct br_eval_result r;
    assert_int_equal(br_eval_binary(zero, QS5, QW5, CS5, CW5, 5, &r), BR_OK);
    assert_int_equal(r.n_curve, 2);
    assert_near(r.apgr, 0.5, EPS);
    br_eval_result_cleanup(&r);
    assert_near(br_eval_apgr_quantiles(zero, QS5, QW5, 5, 10), 0.5, EPS);
    /*
     * Always-weak as a fixed router: score 0 against threshold 0.5: p_H 0, Q 0.4, cost 1,
     * PGR 0 (its APGR). Always-strong: p_H 1, Q 0.6, cost 10, PGR 1.
     */
    struct br_eval_point pt;
    assert_int_equal(br_eval_point_at(zero, QS5, QW5, CS5, CW5, 5, 0.5, &pt), BR_OK);
    assert_near(pt.p_strong, 0.0, EPS);
    assert_near(pt.quality, 0.4, EPS);
    assert_near(pt.cost, 1.0, EPS);
    assert_near(pt.pgr, 0.0, EPS);
    const double one[] = {1, 1, 1, 1, 1};
    assert_int_equal(br_eval_point_at(one, QS5, QW5, CS5, CW5, 5, 0.5, &pt), BR_OK);
    assert_near(pt.p_strong, 1.0, EPS);
    assert_near(pt.quality, 0.6, EPS);
    assert_near(pt.cost, 10.0, EPS);
    assert_near(pt.pgr, 1.0, EPS);
    /* A middle threshold: 0.5 sends prompts 0, 1, 2: Q = (1+1+0+0+1)/5 = 0.6, cost 6.4. */
    assert_int_equal(br_eval_point_at(S5, QS5, QW5, CS5, CW5, 5, 0.5, &pt), BR_OK);
    assert_near(pt.p_strong, 0.6, EPS);
    assert_near(pt.cost, 6.4, EPS);
}

static void test_quantile_apgr(void **state)
{
    (void)state;
    /*
     * RouteLLM's estimator with 4 bins: sorted scores 0.1 0.4 0.7 0.7 0.9; quantiles at
     * 0, 1/4, 2/4, 3/4, 1 (positions 0..4) are 0.1, 0.4, 0.7, 0.7, 0.9. Points:
     *   >= 0.1: all, p 1, Q 0.6;   >= 0.4: p 0.8, Q 0.8;   >= 0.7 (twice): p 0.6, Q 0.6;
     *   > 0.9 (the last): nobody, p 0, Q 0.4.
     * Sorted by p: trapezoids 0.6 x (0.4 + 0.6)/2 = 0.3, 0, 0.2 x 1.4/2 = 0.14,
     * 0.2 x 1.4/2 = 0.14: AUC 0.58; APGR = (0.58 - 0.4) / (0.6 - 0.4) = 0.9.
     */
    assert_near(br_eval_apgr_quantiles(S5, QS5, QW5, 5, 4), 0.9, EPS);
    assert_true(isnan(br_eval_apgr_quantiles(S5, QS5, QW5, 5, 0)));
}

static void test_fractional_quality(void **state)
{
    (void)state;
    /*
     * Two prompts, graded qualities: scores 2, 1; q_strong 0.8, 0.5; q_weak 0.2, 0.6.
     * q_s = 0.65, q_w = 0.4, gap 0.25. Points: (0, 0.4, PGR 0), (0.5, (0.8 + 0.6)/2 = 0.7,
     * PGR 1.2), (1, 0.65, PGR 1). APGR = 0.5 x 1.2/2 + 0.5 x 2.2/2 = 0.3 + 0.55 = 0.85.
     * Oracle gains 0.6, -0.1: 0.95 x 0.65 x 2 = 1.235 <= 0.8 + 0.6 = 1.4 after one: 0.5.
     */
    const double s[] = {2, 1};
    const double qs[] = {0.8, 0.5};
    const double qw[] = {0.2, 0.6};
    struct br_eval_result r;
    assert_int_equal(br_eval_binary(s, qs, qw, NULL, NULL, 2, &r), BR_OK);
    assert_near(r.apgr, 0.85, EPS);
    assert_near(r.curve[1].pgr, 1.2, EPS);
    assert_near(r.oracle_p_strong_95, 0.5, EPS);
    assert_near(r.q_oracle, (0.8 + 0.6) / 2, EPS);
    br_eval_result_cleanup(&r);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    struct br_eval_result r;
    const double nan_q[] = {1, NAN, 0, 1, 0};
    const double inf_s[] = {1, INFINITY, 0, 1, 0};
    assert_int_equal(br_eval_binary(S5, QS5, QW5, NULL, NULL, 0, &r), BR_ERR_INVAL);
    assert_int_equal(br_eval_binary(S5, nan_q, QW5, NULL, NULL, 5, &r), BR_ERR_INVAL);
    assert_int_equal(br_eval_binary(inf_s, QS5, QW5, NULL, NULL, 5, &r), BR_ERR_INVAL);
    assert_int_equal(br_eval_binary(S5, QS5, QW5, nan_q, NULL, 5, &r), BR_ERR_INVAL);
    assert_int_equal(br_eval_binary(NULL, QS5, QW5, NULL, NULL, 5, &r), BR_ERR_INVAL);
    assert_true(isnan(br_eval_apgr(S5, nan_q, QW5, 5)));
    /* Both models equally good: PGR and APGR undefined. */
    assert_int_equal(br_eval_binary(S5, QS5, QS5, NULL, NULL, 5, &r), BR_OK);
    assert_true(isnan(r.apgr));
    assert_true(isnan(r.cpt50));
    br_eval_result_cleanup(&r);
    struct br_eval_point pt;
    assert_int_equal(br_eval_point_at(S5, QS5, QW5, NULL, NULL, 5, NAN, &pt), BR_ERR_INVAL);
}

static void test_folds(void **state)
{
    (void)state;
    int f[10];
    int g[10];
    /* 10 rows in 3 folds: sizes 4, 3, 3; reproducible; another seed deals differently. */
    assert_int_equal(br_eval_folds(10, 3, 42, NULL, f), BR_OK);
    int size[3] = {0, 0, 0};
    for (int i = 0; i < 10; i++) {
        assert_true(f[i] >= 0 && f[i] < 3);
        size[f[i]]++;
    }
    assert_int_equal(size[0], 4);
    assert_int_equal(size[1], 3);
    assert_int_equal(size[2], 3);
    assert_int_equal(br_eval_folds(10, 3, 42, NULL, g), BR_OK);
    assert_memory_equal(f, g, sizeof(f));
    bool differs = false;
    for (uint64_t seed = 43; seed < 53 && !differs; seed++) {
        assert_int_equal(br_eval_folds(10, 3, seed, NULL, g), BR_OK);
        differs = memcmp(f, g, sizeof(f)) != 0;
    }
    assert_true(differs);
    /* Stratified: 6 rows of stratum 0 and 4 of stratum 2 over 2 folds: 3 + 2 in each. */
    const int strata[] = {0, 2, 0, 0, 2, 0, 0, 2, 0, 2};
    assert_int_equal(br_eval_folds(10, 2, 7, strata, f), BR_OK);
    int count[2][3] = {{0}};
    for (int i = 0; i < 10; i++) {
        count[f[i]][strata[i]]++;
    }
    assert_int_equal(count[0][0], 3);
    assert_int_equal(count[1][0], 3);
    assert_int_equal(count[0][2], 2);
    assert_int_equal(count[1][2], 2);
    /* Held out: 30% of 10 = 3 test rows, stratified 6:4 -> about 2:1. */
    assert_int_equal(br_eval_holdout(10, 0.3, 7, strata, f), BR_OK);
    int test = 0;
    for (int i = 0; i < 10; i++) {
        test += f[i];
    }
    assert_int_equal(test, 3);
    /* Bad arguments. */
    const int bad[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 5000};
    assert_int_equal(br_eval_folds(10, 1, 1, NULL, f), BR_ERR_INVAL);
    assert_int_equal(br_eval_folds(10, 11, 1, NULL, f), BR_ERR_INVAL);
    assert_int_equal(br_eval_folds(10, 2, 1, bad, f), BR_ERR_INVAL);
    assert_int_equal(br_eval_holdout(10, 0.0, 1, NULL, f), BR_ERR_INVAL);
    assert_int_equal(br_eval_holdout(10, 1.0, 1, NULL, f), BR_ERR_INVAL);
    assert_int_equal(br_eval_holdout(10, 0.01, 1, NULL, f), BR_ERR_INVAL); /* rounds to 0 */
    assert_int_equal(br_eval_outcome_stratum(1, 0), 2);
    assert_int_equal(br_eval_outcome_stratum(0, 1), 1);
    assert_int_equal(br_eval_outcome_stratum(1, 1), 3);
}

/* A learned router that refuses to score a row it was trained on. */
struct spy {
    bool trained[64];
    unsigned prepares;
    size_t scored;
};

static int spy_create(const struct br_eval_router_cfg *cfg, const struct br_eval_task *task,
                      void **state_out, char *err, size_t errlen)
{
    (void)cfg;
    (void)task;
    (void)err;
    (void)errlen;
    *state_out = calloc(1, sizeof(struct spy));
    return *state_out ? BR_OK : BR_ERR_NOMEM;
}

static int spy_prepare(void *state, const struct br_eval_task *task, const size_t *train,
                       size_t n_train, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct spy *s = state;
    memset(s->trained, 0, sizeof(s->trained));
    for (size_t i = 0; i < n_train; i++) {
        assert_true(train[i] < task->n);
        s->trained[train[i]] = true;
    }
    s->prepares++;
    return BR_OK;
}

static int spy_score(void *state, const struct br_eval_task *task, size_t i, double *out)
{
    struct spy *s = state;
    if (s->trained[i]) {
        return BR_ERR_INVAL; /* would be scoring on its own training data */
    }
    s->scored++;
    *out = task->q_strong[i] - task->q_weak[i];
    return BR_OK;
}

static void spy_destroy(void *state)
{
    struct spy *s = state;
    assert_true(s->prepares == 4 || s->prepares == 1);
    free(s);
}

static const struct br_eval_router_ops spy_ops = {
    .name = "spy",
    .summary = "test",
    .create = spy_create,
    .prepare = spy_prepare,
    .score = spy_score,
    .destroy = spy_destroy,
};

static void test_learned_never_scores_training_rows(void **state)
{
    (void)state;
    static double qs[40], qw[40];
    static size_t rows[40];
    for (size_t i = 0; i < 40; i++) {
        qs[i] = (double)(i % 3 != 0);
        qw[i] = (double)(i % 2);
        rows[i] = i;
    }
    struct br_eval_task task = {.n = 40, .rows = rows, .q_strong = qs, .q_weak = qw};
    struct br_eval_router_cfg cfg = {.seed = 3};
    struct br_eval_run_opts o = {.folds = 4, .seed = 9};
    struct br_eval_run_out out;
    char err[256] = "";
    assert_int_equal(br_eval_run(&spy_ops, &cfg, &task, &o, &out, err, sizeof(err)), BR_OK);
    assert_int_equal(out.n_scored, 40);
    assert_int_equal(out.n_folds, 4);
    for (size_t i = 0; i < 40; i++) {
        assert_true(out.scored[i]);
        assert_true(out.fold_of[i] >= 0 && out.fold_of[i] < 4);
        assert_near(out.scores[i], qs[i] - qw[i], EPS);
    }
    br_eval_run_out_cleanup(&out);
    /* Held out: only the test quarter is scored. */
    o.folds = 0;
    o.holdout = 0.25;
    assert_int_equal(br_eval_run(&spy_ops, &cfg, &task, &o, &out, err, sizeof(err)), BR_OK);
    assert_int_equal(out.n_scored, 10);
    br_eval_run_out_cleanup(&out);
}

static void test_allocation_failures(void **state)
{
    (void)state;
#ifdef NDEBUG
    skip();
#else
    /* Each allocation of the metrics fails once: BR_ERR_NOMEM, nothing leaked. */
    size_t live = br_alloc_live_bytes();
    for (uint64_t i = 1; i <= 3; i++) {
        struct br_eval_result r;
        br_alloc_fail_at(i);
        int rc = br_eval_binary(S5, QS5, QW5, CS5, CW5, 5, &r);
        br_alloc_fail_at(0);
        assert_int_equal(rc, BR_ERR_NOMEM);
        assert_null(r.curve);
        assert_int_equal(br_alloc_live_bytes(), live);
    }
    br_alloc_fail_at(1);
    assert_true(isnan(br_eval_apgr(S5, QS5, QW5, 5)));
    br_alloc_fail_at(0);
    int f[10];
    br_alloc_fail_at(1);
    assert_int_equal(br_eval_folds(10, 2, 1, NULL, f), BR_ERR_NOMEM);
    br_alloc_fail_at(0);
    assert_int_equal(br_alloc_live_bytes(), live);
#endif
}

int main(int argc, char **argv)
{
    /* One test per line: the CMake helper registers each line. */
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_binary_hand_computed),
        cmocka_unit_test(test_binary_no_costs),
        cmocka_unit_test(test_oracle_apgr),
        cmocka_unit_test(test_constant_and_fixed),
        cmocka_unit_test(test_quantile_apgr),
        cmocka_unit_test(test_fractional_quality),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_folds),
        cmocka_unit_test(test_learned_never_scores_training_rows),
        cmocka_unit_test(test_allocation_failures),
    };
    /* clang-format on */
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("eval_metrics", tests, NULL, NULL);
}
