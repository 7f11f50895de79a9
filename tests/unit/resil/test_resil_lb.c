/* SPDX-License-Identifier: MIT */
/*
 * resil/ balancer: the share of each policy (weighted exact, weighted random within bounds),
 * least outstanding, EWMA steering away from a slow deployment and re-measuring it once its
 * sample is stale, RPM and TPM limits with window roll-over and token correction, the 429
 * cooldown, breaker ejection and its single probe, exclusion, all-unavailable -> earliest time,
 * info, option validation, and concurrent pickers against an RPM limit.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "core/rand.h"
#include "resil/resil.h"

static const struct br_resil_lb_result RES_OK = {.health = BR_RESIL_HEALTH_OK};
static const struct br_resil_lb_result RES_FAIL = {.health = BR_RESIL_HEALTH_FAILURE};

static br_resil_lb *mk(enum br_resil_lb_policy p, const struct br_resil_deployment_opts *d,
                       size_t n)
{
    struct br_resil_lb_opts o;
    br_resil_lb *lb = NULL;

    br_resil_lb_opts_default(&o);
    o.policy = p;
    assert_int_equal(br_resil_lb_create(&o, d, n, &lb), BR_OK);
    assert_int_equal(br_resil_lb_size(lb), n);
    return lb;
}

/* acquire + release OK at now; returns the index. */
static uint32_t pick(br_resil_lb *lb, uint64_t now, struct br_rng *rng)
{
    struct br_resil_lease l;

    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, rng, &l, NULL), BR_OK);
    br_resil_lb_release(lb, &l, &RES_OK, now);
    return l.index;
}

static void test_lb_opts_and_names(void **state)
{
    struct br_resil_lb_opts o;
    struct br_resil_deployment_opts d[2] = {{.weight = 1}, {.weight = 1}};
    br_resil_lb *lb = NULL;
    enum br_resil_lb_policy p = BR_RESIL_LB_POLICY_WEIGHTED;

    (void)state;
    br_resil_lb_opts_default(&o);
    assert_int_equal(o.policy, BR_RESIL_LB_POLICY_WEIGHTED);
    assert_true(o.ewma_alpha > 0.29 && o.ewma_alpha < 0.31);
    assert_int_equal(o.window_ms, 60000);
    assert_int_equal(o.breaker.failure_threshold, 5);
    assert_int_equal(br_resil_lb_create(&o, d, 0, &lb), BR_ERR_INVAL);
    assert_int_equal(br_resil_lb_create(&o, d, BR_RESIL_LB_MAX + 1, &lb), BR_ERR_INVAL);
    d[1].weight = 0;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_ERR_INVAL);
    d[1].weight = 1;
    o.ewma_alpha = 0.0;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_ERR_INVAL);
    o.ewma_alpha = 1.5;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_ERR_INVAL);
    br_resil_lb_opts_default(&o);
    o.window_ms = 0;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_ERR_INVAL);
    br_resil_lb_opts_default(&o);
    o.breaker.failure_threshold = 0;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_ERR_INVAL);
    br_resil_lb_opts_default(&o);
    o.policy = (enum br_resil_lb_policy)17;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_ERR_INVAL);
    assert_null(lb);
    br_resil_lb_destroy(NULL);

    for (int i = 0; i <= BR_RESIL_LB_POLICY_LATENCY; i++) {
        const char *name = br_resil_lb_policy_name((enum br_resil_lb_policy)i);

        assert_int_equal(br_resil_lb_policy_parse(br_slice_from_cstr(name), &p), BR_OK);
        assert_int_equal(p, i);
    }
    assert_string_equal(br_resil_lb_policy_name(BR_RESIL_LB_POLICY_LEAST_OUTSTANDING),
                        "least_outstanding");
    assert_int_equal(br_resil_lb_policy_parse(br_slice_from_cstr("fastest"), &p), BR_ERR_INVAL);
    assert_int_equal(br_resil_lb_policy_parse(br_slice_from_cstr("weighte"), &p), BR_ERR_INVAL);
}

/* Smooth weighted round robin: weights 2:1 give exactly 2/3, interleaved (never 3 in a row). */
static void test_lb_weighted_exact(void **state)
{
    struct br_resil_deployment_opts d[2] = {{.weight = 2}, {.weight = 1}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_WEIGHTED, d, 2);
    int count[2] = {0, 0};
    int run = 0;
    uint32_t prev = 9;

    (void)state;
    for (int i = 0; i < 3000; i++) {
        uint32_t k = pick(lb, 0, NULL);

        count[k]++;
        run = k == prev ? run + 1 : 1;
        prev = k;
        assert_true(run <= 2);
    }
    assert_int_equal(count[0], 2000);
    assert_int_equal(count[1], 1000);
    br_resil_lb_destroy(lb);

    /* 5:3:1:1 over 1000 picks */
    {
        struct br_resil_deployment_opts e[4] = {
            {.weight = 5}, {.weight = 3}, {.weight = 1}, {.weight = 1}};
        int c[4] = {0, 0, 0, 0};

        lb = mk(BR_RESIL_LB_POLICY_WEIGHTED, e, 4);
        for (int i = 0; i < 1000; i++) {
            c[pick(lb, 0, NULL)]++;
        }
        assert_int_equal(c[0], 500);
        assert_int_equal(c[1], 300);
        assert_int_equal(c[2], 100);
        assert_int_equal(c[3], 100);
        br_resil_lb_destroy(lb);
    }
}

/* Weighted random: 2:1 over 3000 picks is 2/3 within 0.03; the same seed repeats itself. */
static void test_lb_random_distribution(void **state)
{
    struct br_resil_deployment_opts d[2] = {{.weight = 2}, {.weight = 1}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_RANDOM, d, 2);
    struct br_rng rng;
    uint32_t seq[64];
    int count[2] = {0, 0};
    double share;

    (void)state;
    br_rng_seed(&rng, 42);
    for (int i = 0; i < 3000; i++) {
        count[pick(lb, 0, &rng)]++;
    }
    share = (double)count[0] / 3000.0;
    assert_true(share > 2.0 / 3.0 - 0.03 && share < 2.0 / 3.0 + 0.03);
    br_rng_seed(&rng, 7);
    for (int i = 0; i < 64; i++) {
        seq[i] = pick(lb, 0, &rng);
    }
    br_rng_seed(&rng, 7);
    for (int i = 0; i < 64; i++) {
        assert_int_equal(pick(lb, 0, &rng), seq[i]);
    }
    br_resil_lb_destroy(lb);
}

/* Least outstanding: the emptier deployment wins; per unit of weight; ties by weight share. */
static void test_lb_least_outstanding(void **state)
{
    struct br_resil_deployment_opts d[3] = {{.weight = 1}, {.weight = 1}, {.weight = 1}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_LEAST_OUTSTANDING, d, 3);
    struct br_resil_lease held[9];
    int count[3] = {0, 0, 0};
    struct br_resil_deployment_info in;

    (void)state;
    /* nine concurrent leases spread 3/3/3 */
    for (int i = 0; i < 9; i++) {
        assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 0, NULL, &held[i], NULL), BR_OK);
        count[held[i].index]++;
    }
    assert_int_equal(count[0], 3);
    assert_int_equal(count[1], 3);
    assert_int_equal(count[2], 3);
    /* deployment 1 finishes two: the next two go to it */
    int freed = 0;
    for (int i = 0; i < 9 && freed < 2; i++) {
        if (held[i].index == 1) {
            br_resil_lb_release(lb, &held[i], &RES_OK, 1);
            held[i].index = 99;
            freed++;
        }
    }
    for (int k = 0; k < 2; k++) {
        struct br_resil_lease l;

        assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 2, NULL, &l, NULL), BR_OK);
        assert_int_equal(l.index, 1);
    }
    assert_int_equal(br_resil_lb_info(lb, 1, 2, &in), BR_OK);
    assert_int_equal(in.outstanding, 3);
    br_resil_lb_destroy(lb);

    /* weights 2:1 under steady load: outstanding settles 2:1 */
    {
        struct br_resil_deployment_opts e[2] = {{.weight = 2}, {.weight = 1}};
        struct br_resil_lease l[30];
        int c[2] = {0, 0};

        lb = mk(BR_RESIL_LB_POLICY_LEAST_OUTSTANDING, e, 2);
        for (int i = 0; i < 30; i++) {
            assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 0, NULL, &l[i], NULL), BR_OK);
            c[l[i].index]++;
        }
        assert_int_equal(c[0], 20);
        assert_int_equal(c[1], 10);
        for (int i = 0; i < 30; i++) {
            br_resil_lb_release(lb, &l[i], &RES_OK, 0);
        }
        /* idle: ties follow the weights */
        c[0] = 0;
        c[1] = 0;
        for (int i = 0; i < 300; i++) {
            c[pick(lb, 0, NULL)]++;
        }
        /* smooth WRR carries its current weights over from the loaded phase: +-2 */
        assert_true(c[0] >= 198 && c[0] <= 202);
        br_resil_lb_destroy(lb);
    }
}

/* Latency-aware: untried first, then the fast one takes nearly everything. */
static void test_lb_latency_steers(void **state)
{
    struct br_resil_deployment_opts d[2] = {{.weight = 1}, {.weight = 1}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_LATENCY, d, 2);
    static const uint64_t ttfb_ns[2] = {10000000, 100000000}; /* 10 ms, 100 ms */
    struct br_resil_lease a;
    struct br_resil_lease b;
    struct br_resil_deployment_info in;
    int count[2] = {0, 0};
    uint64_t now = 0;

    (void)state;
    /* both untried: the first two concurrent picks measure both */
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, NULL, &a, NULL), BR_OK);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, NULL, &b, NULL), BR_OK);
    assert_int_not_equal(a.index, b.index);
    for (int i = 0; i < 1000; i++) {
        struct br_resil_lb_result r = {.health = BR_RESIL_HEALTH_OK};
        struct br_resil_lease l;

        assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, NULL, &l, NULL), BR_OK);
        count[l.index]++;
        r.ttfb_ns = ttfb_ns[l.index];
        br_resil_lb_release(lb, &l, &r, now);
        if (i == 0) {
            /* finish the two measuring picks */
            r.ttfb_ns = ttfb_ns[a.index];
            br_resil_lb_release(lb, &a, &r, now);
            r.ttfb_ns = ttfb_ns[b.index];
            br_resil_lb_release(lb, &b, &r, now);
        }
        now += 10;
    }
    assert_true(count[0] >= 990);
    assert_int_equal(br_resil_lb_info(lb, 1, now, &in), BR_OK);
    assert_true(in.has_ewma);
    assert_true(in.ewma_ttfb_ms > 99.0 && in.ewma_ttfb_ms < 101.0);
    assert_int_equal(br_resil_lb_info(lb, 0, now, &in), BR_OK);
    assert_true(in.ewma_ttfb_ms > 9.9 && in.ewma_ttfb_ms < 10.1);
    br_resil_lb_destroy(lb);
}

/* Under load the fast deployment's (outstanding + 1) factor sends some work to the slow one;
 * a slow deployment that got fast again is found once its sample is stale. */
static void test_lb_latency_load_and_stale(void **state)
{
    struct br_resil_deployment_opts d[2] = {{.weight = 1}, {.weight = 1}};
    struct br_resil_lb_opts o;
    br_resil_lb *lb = NULL;
    struct br_resil_lb_result r = {.health = BR_RESIL_HEALTH_OK};
    struct br_resil_lease l[8];
    struct br_resil_deployment_info in;
    int count[2] = {0, 0};
    uint64_t now = 0;

    (void)state;
    br_resil_lb_opts_default(&o);
    o.policy = BR_RESIL_LB_POLICY_LATENCY;
    o.ewma_stale_ms = 5000;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_OK);
    /* samples: 0 -> 10 ms, 1 -> 30 ms */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, NULL, &l[i], NULL), BR_OK);
    }
    for (int i = 0; i < 2; i++) {
        r.ttfb_ns = l[i].index == 0 ? 10000000 : 30000000;
        br_resil_lb_release(lb, &l[i], &r, now);
    }
    /* 8 in flight: 10 x (k + 1) vs 30 x (j + 1): 0 takes 6, 1 takes 2 */
    for (int i = 0; i < 8; i++) {
        assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, NULL, &l[i], NULL), BR_OK);
        count[l[i].index]++;
    }
    assert_int_equal(count[0], 6);
    assert_int_equal(count[1], 2);
    for (int i = 0; i < 8; i++) {
        r.ttfb_ns = 0; /* no sample (e.g. failed before the first byte) */
        br_resil_lb_release(lb, &l[i], &r, now);
    }
    /* keep 0 fresh at 10 ms; 1 goes stale after 5 s and gets one request to re-measure */
    now += 4000;
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, NULL, &l[0], NULL), BR_OK);
    assert_int_equal(l[0].index, 0);
    r.ttfb_ns = 10000000;
    br_resil_lb_release(lb, &l[0], &r, now);
    {
        struct br_resil_lease m;

        now += 1500; /* 1's sample is 5.5 s old, 0's 1.5 s */
        assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, NULL, &m, NULL), BR_OK);
        assert_int_equal(m.index, 1);
        r.ttfb_ns = 2000000; /* now 2 ms: replaces the stale estimate */
        br_resil_lb_release(lb, &m, &r, now);
    }
    assert_int_equal(br_resil_lb_info(lb, 1, now, &in), BR_OK);
    assert_true(in.ewma_ttfb_ms > 1.99 && in.ewma_ttfb_ms < 2.01);
    assert_int_equal(pick(lb, now, NULL), 1);
    br_resil_lb_destroy(lb);
}

/* RPM: the window fills, the next one starts empty; Retry-At is the window's end. */
static void test_lb_rpm_window(void **state)
{
    struct br_resil_deployment_opts d[1] = {{.weight = 1, .rpm = 3}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_WEIGHTED, d, 1);
    struct br_resil_lease l;
    struct br_resil_deployment_info in;
    uint64_t at = 0;

    (void)state;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pick(lb, 61000 + (uint64_t)i, NULL), 0);
    }
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 61500, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(at, 120000);
    assert_int_equal(br_resil_lb_info(lb, 0, 61500, &in), BR_OK);
    assert_int_equal(in.window_requests, 3);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 119999, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(br_resil_lb_info(lb, 0, 120000, &in), BR_OK);
    assert_int_equal(in.window_requests, 0);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 120000, NULL, &l, &at), BR_OK);
    br_resil_lb_release(lb, &l, &RES_OK, 120001);
    br_resil_lb_destroy(lb);
}

/* Workers' clock reads arrive slightly out of order: an older now_ms never rolls a window back
 * and never makes a sample look stale. */
static void test_lb_clock_out_of_order(void **state)
{
    struct br_resil_deployment_opts d[2] = {{.weight = 1, .rpm = 2}, {.weight = 1}};
    struct br_resil_lb_opts o;
    br_resil_lb *lb = NULL;
    struct br_resil_lease l;
    struct br_resil_lb_result r = {.health = BR_RESIL_HEALTH_OK, .ttfb_ns = 5000000};
    struct br_resil_deployment_info in;

    (void)state;
    br_resil_lb_opts_default(&o);
    o.ewma_stale_ms = 1000;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_OK);
    assert_int_equal(br_resil_lb_acquire(lb, 0x2, 0, 60001, NULL, &l, NULL), BR_OK);
    br_resil_lb_release(lb, &l, &r, 60001);
    assert_int_equal(br_resil_lb_acquire(lb, 0x2, 0, 59999, NULL, &l, NULL), BR_OK);
    br_resil_lb_release(lb, &l, &r, 59998);
    assert_int_equal(br_resil_lb_info(lb, 0, 59999, &in), BR_OK);
    assert_int_equal(in.window_requests, 2);
    assert_int_equal(br_resil_lb_acquire(lb, 0x2, 0, 60002, NULL, &l, NULL), BR_ERR_BUSY);
    br_resil_lb_destroy(lb);

    /* latency: deployment 0 measured at 10 000; a pick stamped 9 999 still sees it fresh */
    o.policy = BR_RESIL_LB_POLICY_LATENCY;
    d[0].rpm = 0;
    assert_int_equal(br_resil_lb_create(&o, d, 2, &lb), BR_OK);
    assert_int_equal(br_resil_lb_acquire(lb, 0x2, 0, 10000, NULL, &l, NULL), BR_OK);
    br_resil_lb_release(lb, &l, &r, 10000);
    assert_int_equal(br_resil_lb_acquire(lb, 0x1, 0, 10000, NULL, &l, NULL), BR_OK);
    r.ttfb_ns = 50000000;
    br_resil_lb_release(lb, &l, &r, 10000);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 9999, NULL, &l, NULL), BR_OK);
    assert_int_equal(l.index, 0);
    br_resil_lb_release(lb, &l, &RES_OK, 9999);
    br_resil_lb_destroy(lb);
}

/* TPM: estimates are charged at start and corrected at the end; an empty window always has
 * room; a correction for a window that has rolled over is dropped. */
static void test_lb_tpm_window(void **state)
{
    struct br_resil_deployment_opts d[1] = {{.weight = 1, .tpm = 1000}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_WEIGHTED, d, 1);
    struct br_resil_lease a;
    struct br_resil_lease b;
    struct br_resil_lb_result r = {.health = BR_RESIL_HEALTH_OK, .tokens_known = true};
    struct br_resil_deployment_info in;
    uint64_t at = 0;

    (void)state;
    assert_int_equal(br_resil_lb_acquire(lb, 0, 600, 0, NULL, &a, NULL), BR_OK);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 600, 1, NULL, &b, &at), BR_ERR_BUSY);
    assert_int_equal(at, 60000);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 400, 1, NULL, &b, NULL), BR_OK);
    r.tokens = 100; /* a used far less than estimated */
    br_resil_lb_release(lb, &a, &r, 2);
    assert_int_equal(br_resil_lb_info(lb, 0, 2, &in), BR_OK);
    assert_int_equal(in.window_tokens, 500);
    r.tokens = 700; /* b used more */
    br_resil_lb_release(lb, &b, &r, 3);
    assert_int_equal(br_resil_lb_info(lb, 0, 3, &in), BR_OK);
    assert_int_equal(in.window_tokens, 800);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 300, 4, NULL, &a, &at), BR_ERR_BUSY);
    /* next window: a request bigger than the whole limit still gets through when empty */
    assert_int_equal(br_resil_lb_acquire(lb, 0, 5000, 60000, NULL, &a, NULL), BR_OK);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 1, 60001, NULL, &b, NULL), BR_ERR_BUSY);
    /* a's window rolls over before it ends: its correction is dropped */
    r.tokens = 10;
    br_resil_lb_release(lb, &a, &r, 120000);
    assert_int_equal(br_resil_lb_info(lb, 0, 120000, &in), BR_OK);
    assert_int_equal(in.window_tokens, 0);
    assert_int_equal(in.outstanding, 0);
    br_resil_lb_destroy(lb);
}

/* Exclusion: skipped deployments; everything excluded is NOTFOUND (not BUSY). */
static void test_lb_exclude(void **state)
{
    struct br_resil_deployment_opts d[3] = {{.weight = 5}, {.weight = 1}, {.weight = 1}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_WEIGHTED, d, 3);
    struct br_resil_lease l;

    (void)state;
    for (int i = 0; i < 50; i++) {
        assert_int_equal(br_resil_lb_acquire(lb, 1u << 0, 0, 0, NULL, &l, NULL), BR_OK);
        assert_true(l.index == 1 || l.index == 2);
        br_resil_lb_release(lb, &l, &RES_OK, 0);
    }
    assert_int_equal(br_resil_lb_acquire(lb, 0x5, 0, 0, NULL, &l, NULL), BR_OK);
    assert_int_equal(l.index, 1);
    br_resil_lb_release(lb, &l, &RES_OK, 0);
    assert_int_equal(br_resil_lb_acquire(lb, 0x7, 0, 0, NULL, &l, NULL), BR_ERR_NOTFOUND);
    /* bits past n are ignored */
    assert_int_equal(br_resil_lb_acquire(lb, ~0ull << 3 | 0x3, 0, 0, NULL, &l, NULL), BR_OK);
    assert_int_equal(l.index, 2);
    br_resil_lb_release(lb, &l, &RES_OK, 0);
    br_resil_lb_destroy(lb);
}

/* Breaker inside the balancer: 5 failures eject, traffic moves, one probe, success restores. */
static void test_lb_breaker_eject_and_probe(void **state)
{
    struct br_resil_deployment_opts d[2] = {{.weight = 1}, {.weight = 1}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_WEIGHTED, d, 2);
    struct br_resil_lease l;
    struct br_resil_lease probe;
    struct br_resil_deployment_info in;
    int fails = 0;

    (void)state;
    while (fails < 5) {
        assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 100, NULL, &l, NULL), BR_OK);
        if (l.index == 0) {
            br_resil_lb_release(lb, &l, &RES_FAIL, 100);
            fails++;
        } else {
            br_resil_lb_release(lb, &l, &RES_OK, 100);
        }
    }
    assert_int_equal(br_resil_lb_info(lb, 0, 100, &in), BR_OK);
    assert_int_equal(in.breaker.state, BR_RESIL_BREAKER_STATE_OPEN);
    assert_int_equal(in.breaker.until_ms, 30100);
    assert_int_equal(in.failures, 5);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(pick(lb, 200 + (uint64_t)i, NULL), 1);
    }
    /* half-open: the first pick that lands on 0 is the probe; no second one meanwhile */
    do {
        assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 30100, NULL, &probe, NULL), BR_OK);
        if (probe.index != 0) {
            br_resil_lb_release(lb, &probe, &RES_OK, 30100);
        }
    } while (probe.index != 0);
    assert_true(probe.probe);
    assert_int_equal(br_resil_lb_info(lb, 0, 30100, &in), BR_OK);
    assert_true(in.breaker.probe_in_flight);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(pick(lb, 30101, NULL), 1);
    }
    br_resil_lb_release(lb, &probe, &RES_OK, 30150);
    assert_int_equal(br_resil_lb_info(lb, 0, 30150, &in), BR_OK);
    assert_int_equal(in.breaker.state, BR_RESIL_BREAKER_STATE_CLOSED);
    {
        int c[2] = {0, 0};

        for (int i = 0; i < 20; i++) {
            c[pick(lb, 30200, NULL)]++;
        }
        assert_true(c[0] >= 9 && c[0] <= 11);
    }
    br_resil_lb_destroy(lb);
}

/* 429: the deployment cools down for Retry-After (capped at eject_max), or the default. */
static void test_lb_rate_limited_cooldown(void **state)
{
    struct br_resil_deployment_opts d[1] = {{.weight = 1}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_WEIGHTED, d, 1);
    struct br_resil_lb_result r = {.health = BR_RESIL_HEALTH_RATE_LIMITED, .retry_after_ms = 2500};
    struct br_resil_lease l;
    struct br_resil_deployment_info in;
    uint64_t at = 0;

    (void)state;
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 1000, NULL, &l, NULL), BR_OK);
    br_resil_lb_release(lb, &l, &r, 1000);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 1001, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(at, 3500);
    assert_int_equal(br_resil_lb_info(lb, 0, 1001, &in), BR_OK);
    assert_int_equal(in.cooldown_until_ms, 3500);
    assert_int_equal(in.breaker.state, BR_RESIL_BREAKER_STATE_CLOSED);
    assert_int_equal(in.breaker.consecutive_failures, 0);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 3500, NULL, &l, NULL), BR_OK);
    r.retry_after_ms = 0; /* no Retry-After: 1 s */
    br_resil_lb_release(lb, &l, &r, 3500);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 3501, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(at, 4500);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 4500, NULL, &l, NULL), BR_OK);
    r.retry_after_ms = 3600000; /* an hour: capped at eject_max (300 s) */
    br_resil_lb_release(lb, &l, &r, 4500);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, 4501, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(at, 304500);
    assert_int_equal(br_resil_lb_info(lb, 0, 304500, &in), BR_OK);
    assert_int_equal(in.cooldown_until_ms, 0);
    br_resil_lb_destroy(lb);
}

/* Every deployment unavailable for a different reason: BUSY at the earliest of their ends. */
static void test_lb_all_unavailable_earliest(void **state)
{
    struct br_resil_deployment_opts d[3] = {{.weight = 1, .rpm = 1}, {.weight = 1}, {.weight = 1}};
    br_resil_lb *lb = mk(BR_RESIL_LB_POLICY_WEIGHTED, d, 3);
    struct br_resil_lb_result rl = {.health = BR_RESIL_HEALTH_RATE_LIMITED,
                                    .retry_after_ms = 50000};
    struct br_resil_lease l;
    uint64_t at = 0;
    uint64_t now = 1000;

    (void)state;
    /* 0: its one request of this window; 1: ejected (5 failures, until now + 30 s);
     * 2: 429 with Retry-After 50 s */
    assert_int_equal(br_resil_lb_acquire(lb, 0x6, 0, now, NULL, &l, NULL), BR_OK);
    br_resil_lb_release(lb, &l, &RES_OK, now);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(br_resil_lb_acquire(lb, 0x5, 0, now, NULL, &l, NULL), BR_OK);
        br_resil_lb_release(lb, &l, &RES_FAIL, now);
    }
    assert_int_equal(br_resil_lb_acquire(lb, 0x3, 0, now, NULL, &l, NULL), BR_OK);
    br_resil_lb_release(lb, &l, &rl, now);
    assert_int_equal(br_resil_lb_acquire(lb, 0, 0, now, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(at, 31000); /* the ejection ends first */
    /* without the ejected one: the cooldown (51 s) ends before the window (60 s) */
    assert_int_equal(br_resil_lb_acquire(lb, 0x2, 0, now, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(at, 51000);
    assert_int_equal(br_resil_lb_acquire(lb, 0x6, 0, now, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(at, 60000);
    /* half-open with its probe out: ask again in a second */
    now = 31000;
    assert_int_equal(br_resil_lb_acquire(lb, 0x5, 0, now, NULL, &l, NULL), BR_OK);
    assert_true(l.probe);
    assert_int_equal(br_resil_lb_acquire(lb, 0x5, 0, now, NULL, &l, &at), BR_ERR_BUSY);
    assert_int_equal(at, 32000);
    br_resil_lb_destroy(lb);
}

/* ---- concurrency: pickers on several threads never overshoot RPM, counts stay exact ---- */

#define N_THREADS 4

struct lb_race {
    br_resil_lb *lb;
    _Atomic uint64_t granted;
    _Atomic uint64_t busy;
};

static void *lb_racer(void *arg)
{
    struct lb_race *r = arg;
    struct br_rng rng;

    br_rng_seed(&rng, (uint64_t)(uintptr_t)&rng | 1);
    for (int i = 0; i < 5000; i++) {
        struct br_resil_lease l;
        struct br_resil_lb_result res = {.health = BR_RESIL_HEALTH_OK,
                                         .ttfb_ns = 1000 + (uint64_t)i};
        uint64_t now = (uint64_t)i / 100; /* one window: window_ms is 1 000 000 */

        if (br_resil_lb_acquire(r->lb, 0, 1, now, &rng, &l, NULL) == BR_OK) {
            atomic_fetch_add(&r->granted, 1);
            if (i % 7 == 0) {
                res.health = BR_RESIL_HEALTH_FAILURE;
            }
            br_resil_lb_release(r->lb, &l, &res, now);
        } else {
            atomic_fetch_add(&r->busy, 1);
        }
    }
    return NULL;
}

static void test_lb_concurrent_rpm(void **state)
{
    struct br_resil_deployment_opts d[3] = {
        {.weight = 1, .rpm = 1000}, {.weight = 2, .rpm = 1000}, {.weight = 3, .rpm = 1000}};
    struct br_resil_lb_opts o;
    struct lb_race r;
    pthread_t th[N_THREADS];
    uint64_t picks = 0;

    (void)state;
    for (int p = 0; p <= BR_RESIL_LB_POLICY_LATENCY; p++) {
        br_resil_lb_opts_default(&o);
        o.policy = (enum br_resil_lb_policy)p;
        o.window_ms = 1000000;
        o.breaker.failure_threshold = 1000000; /* keep everything in play */
        memset(&r, 0, sizeof(r));
        atomic_init(&r.granted, 0);
        atomic_init(&r.busy, 0);
        assert_int_equal(br_resil_lb_create(&o, d, 3, &r.lb), BR_OK);
        for (int i = 0; i < N_THREADS; i++) {
            assert_int_equal(pthread_create(&th[i], NULL, lb_racer, &r), 0);
        }
        for (int i = 0; i < N_THREADS; i++) {
            pthread_join(th[i], NULL);
        }
        assert_int_equal(atomic_load(&r.granted), 3000);
        assert_int_equal(atomic_load(&r.granted) + atomic_load(&r.busy), N_THREADS * 5000);
        picks = 0;
        for (size_t i = 0; i < 3; i++) {
            struct br_resil_deployment_info in;

            assert_int_equal(br_resil_lb_info(r.lb, i, 49, &in), BR_OK);
            assert_int_equal(in.outstanding, 0);
            assert_int_equal(in.window_requests, 1000);
            assert_int_equal(in.window_tokens, 1000);
            picks += in.picks;
        }
        assert_int_equal(picks, 3000);
        br_resil_lb_destroy(r.lb);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lb_opts_and_names),
        cmocka_unit_test(test_lb_weighted_exact),
        cmocka_unit_test(test_lb_random_distribution),
        cmocka_unit_test(test_lb_least_outstanding),
        cmocka_unit_test(test_lb_latency_steers),
        cmocka_unit_test(test_lb_latency_load_and_stale),
        cmocka_unit_test(test_lb_rpm_window),
        cmocka_unit_test(test_lb_tpm_window),
        cmocka_unit_test(test_lb_clock_out_of_order),
        cmocka_unit_test(test_lb_exclude),
        cmocka_unit_test(test_lb_breaker_eject_and_probe),
        cmocka_unit_test(test_lb_rate_limited_cooldown),
        cmocka_unit_test(test_lb_all_unavailable_earliest),
        cmocka_unit_test(test_lb_concurrent_rpm),
    };

    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("resil_lb", tests, NULL, NULL);
}
