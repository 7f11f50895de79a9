/* SPDX-License-Identifier: MIT */
/*
 * resil/ retry policy and budget: backoff bounds per retry number, the full-jitter
 * distribution (uniform), Retry-After as a floor, max_retries and the per-model reset, the
 * total-wait cap, determinism for one seed; the budget's floor and ratio, and concurrent
 * acquirers that never hold more tokens than the limit.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "core/rand.h"
#include "resil/resil.h"

static void test_retry_defaults(void **state)
{
    struct br_resil_retry_opts o;
    struct br_resil_budget_opts b;

    (void)state;
    br_resil_retry_opts_default(&o);
    assert_int_equal(o.max_retries, 2);
    assert_int_equal(o.base_ms, 100);
    assert_int_equal(o.cap_ms, 5000);
    assert_int_equal(o.total_wait_ms, 60000);
    br_resil_budget_opts_default(&b);
    assert_int_equal(b.min_retries, 3);
    assert_true(b.ratio > 0.19 && b.ratio < 0.21);
}

/* Retry k waits in [0, min(cap, base x 2^k)], and the whole range is used. */
static void test_retry_backoff_bounds(void **state)
{
    struct br_resil_retry_opts o = {
        .max_retries = 100, .base_ms = 100, .cap_ms = 5000, .total_wait_ms = UINT64_MAX};
    struct br_rng rng;

    (void)state;
    br_rng_seed(&rng, 1);
    for (uint32_t k = 0; k < 12; k++) {
        uint64_t ceiling = 100ull << k;
        uint64_t lo = UINT64_MAX;
        uint64_t hi = 0;
        double sum = 0;

        if (ceiling > 5000) {
            ceiling = 5000;
        }
        for (int i = 0; i < 2000; i++) {
            struct br_resil_retry_state s = {.retries = k, .waited_ms = 0};
            uint64_t d = 0;

            assert_int_equal(br_resil_retry_next(&o, &s, 0, &rng, &d), BR_OK);
            assert_true(d <= ceiling);
            assert_int_equal(s.retries, k + 1);
            assert_int_equal(s.waited_ms, d);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
            sum += (double)d;
        }
        assert_true(lo <= ceiling / 20);
        assert_true(hi >= ceiling - ceiling / 20);
        assert_true(fabs(sum / 2000.0 - (double)ceiling / 2.0) < (double)ceiling * 0.05);
    }
    /* a huge retry number does not overflow the shift */
    {
        struct br_resil_retry_state s = {.retries = 70, .waited_ms = 0};
        uint64_t d = 0;

        assert_int_equal(br_resil_retry_next(&o, &s, 0, &rng, &d), BR_OK);
        assert_true(d <= 5000);
    }
}

/* Full jitter is uniform: ten equal buckets each hold 10% +- 1.5% of 20 000 draws. */
static void test_retry_jitter_uniform(void **state)
{
    struct br_resil_retry_opts o = {
        .max_retries = 1, .base_ms = 999, .cap_ms = 999, .total_wait_ms = UINT64_MAX};
    struct br_rng rng;
    int bucket[10];

    (void)state;
    memset(bucket, 0, sizeof(bucket));
    br_rng_seed(&rng, 99);
    for (int i = 0; i < 20000; i++) {
        struct br_resil_retry_state s;
        uint64_t d = 0;

        br_resil_retry_state_init(&s);
        assert_int_equal(br_resil_retry_next(&o, &s, 0, &rng, &d), BR_OK);
        assert_true(d <= 999);
        bucket[d / 100]++;
    }
    for (int b = 0; b < 10; b++) {
        assert_true(bucket[b] > 1700 && bucket[b] < 2300);
    }
}

/* Retry-After is a floor: max(jitter, retry_after). */
static void test_retry_after_honoured(void **state)
{
    struct br_resil_retry_opts o;
    struct br_rng rng;

    (void)state;
    br_resil_retry_opts_default(&o);
    br_rng_seed(&rng, 5);
    for (int i = 0; i < 200; i++) {
        struct br_resil_retry_state s;
        uint64_t d = 0;

        br_resil_retry_state_init(&s);
        /* above the backoff ceiling (100 ms for the first retry): exactly Retry-After */
        assert_int_equal(br_resil_retry_next(&o, &s, 7000, &rng, &d), BR_OK);
        assert_int_equal(d, 7000);
        /* inside it: never less */
        br_resil_retry_state_init(&s);
        assert_int_equal(br_resil_retry_next(&o, &s, 60, &rng, &d), BR_OK);
        assert_true(d >= 60 && d <= 100);
    }
}

/* max_retries per model; a fallback starts a new count but keeps the total wait. */
static void test_retry_max_and_next_model(void **state)
{
    struct br_resil_retry_opts o;
    struct br_resil_retry_state s;
    struct br_rng rng;
    uint64_t d = 0;
    uint64_t waited;

    (void)state;
    br_resil_retry_opts_default(&o);
    br_rng_seed(&rng, 3);
    br_resil_retry_state_init(&s);
    assert_int_equal(br_resil_retry_next(&o, &s, 0, &rng, &d), BR_OK);
    assert_int_equal(br_resil_retry_next(&o, &s, 0, &rng, &d), BR_OK);
    waited = s.waited_ms;
    assert_int_equal(br_resil_retry_next(&o, &s, 0, &rng, &d), BR_ERR_LIMIT);
    assert_int_equal(s.retries, 2);
    assert_int_equal(s.waited_ms, waited);
    br_resil_retry_state_next_model(&s);
    assert_int_equal(s.retries, 0);
    assert_int_equal(s.waited_ms, waited);
    assert_int_equal(br_resil_retry_next(&o, &s, 0, &rng, &d), BR_OK);
    /* max_retries 0: never */
    o.max_retries = 0;
    br_resil_retry_state_init(&s);
    assert_int_equal(br_resil_retry_next(&o, &s, 0, &rng, &d), BR_ERR_LIMIT);
}

/* The total wait is capped: a wait that would pass it is refused, the state unchanged. */
static void test_retry_total_cap(void **state)
{
    struct br_resil_retry_opts o = {
        .max_retries = 10, .base_ms = 1, .cap_ms = 1, .total_wait_ms = 1000};
    struct br_resil_retry_state s;
    struct br_rng rng;
    uint64_t d = 0;

    (void)state;
    br_rng_seed(&rng, 11);
    br_resil_retry_state_init(&s);
    assert_int_equal(br_resil_retry_next(&o, &s, 600, &rng, &d), BR_OK);
    assert_int_equal(d, 600);
    assert_int_equal(br_resil_retry_next(&o, &s, 600, &rng, &d), BR_ERR_LIMIT);
    assert_int_equal(s.retries, 1);
    assert_int_equal(s.waited_ms, 600);
    assert_int_equal(br_resil_retry_next(&o, &s, 400, &rng, &d), BR_OK);
    assert_int_equal(s.waited_ms, 1000);
    /* exactly used up: only a zero wait could still fit; jitter here is 0 or 1 */
    for (int i = 0; i < 50; i++) {
        int rc = br_resil_retry_next(&o, &s, 0, &rng, &d);

        assert_true(rc == BR_ERR_LIMIT || (rc == BR_OK && d == 0));
        if (s.retries >= 10) {
            break;
        }
    }
    assert_int_equal(s.waited_ms, 1000);
    /* a Retry-After longer than the whole cap: no retry at all */
    br_resil_retry_state_init(&s);
    assert_int_equal(br_resil_retry_next(&o, &s, 1001, &rng, &d), BR_ERR_LIMIT);
    /* the default cap: 60 s */
    br_resil_retry_opts_default(&o);
    br_resil_retry_state_init(&s);
    assert_int_equal(br_resil_retry_next(&o, &s, 60000, &rng, &d), BR_OK);
    assert_int_equal(br_resil_retry_next(&o, &s, 1, &rng, &d), BR_ERR_LIMIT);
}

/* Same seed, same delays. */
static void test_retry_deterministic(void **state)
{
    struct br_resil_retry_opts o;
    struct br_rng a;
    struct br_rng b;

    (void)state;
    br_resil_retry_opts_default(&o);
    o.max_retries = 8;
    br_rng_seed(&a, 77);
    br_rng_seed(&b, 77);
    for (int i = 0; i < 100; i++) {
        struct br_resil_retry_state sa;
        struct br_resil_retry_state sb;

        br_resil_retry_state_init(&sa);
        br_resil_retry_state_init(&sb);
        for (int k = 0; k < 8; k++) {
            uint64_t da = 1;
            uint64_t db = 2;

            assert_int_equal(br_resil_retry_next(&o, &sa, 0, &a, &da), BR_OK);
            assert_int_equal(br_resil_retry_next(&o, &sb, 0, &b, &db), BR_OK);
            assert_int_equal(da, db);
        }
    }
}

/* The budget: at least min_retries, else floor(ratio x requests in flight). */
static void test_budget_limits(void **state)
{
    struct br_resil_budget_opts o;
    br_resil_budget *b = NULL;
    uint64_t req = 9;
    uint64_t ret = 9;

    (void)state;
    br_resil_budget_opts_default(&o);
    assert_int_equal(br_resil_budget_create(&o, &b), BR_OK);
    for (int i = 0; i < 3; i++) {
        assert_true(br_resil_budget_acquire(b));
    }
    assert_false(br_resil_budget_acquire(b));
    br_resil_budget_counts(b, &req, &ret);
    assert_int_equal(req, 0);
    assert_int_equal(ret, 3);
    for (int i = 0; i < 100; i++) {
        br_resil_budget_request_begin(b);
    }
    for (int i = 0; i < 17; i++) {
        assert_true(br_resil_budget_acquire(b));
    }
    assert_false(br_resil_budget_acquire(b)); /* 20 = 0.2 x 100 */
    for (int i = 0; i < 50; i++) {
        br_resil_budget_request_end(b);
    }
    /* 20 held, limit now 10: nothing new until enough are released */
    assert_false(br_resil_budget_acquire(b));
    for (int i = 0; i < 11; i++) {
        br_resil_budget_release(b);
    }
    assert_true(br_resil_budget_acquire(b));
    assert_false(br_resil_budget_acquire(b));
    br_resil_budget_counts(b, &req, &ret);
    assert_int_equal(req, 50);
    assert_int_equal(ret, 10);
    br_resil_budget_destroy(b);
    br_resil_budget_destroy(NULL);

    o.ratio = -0.1;
    assert_int_equal(br_resil_budget_create(&o, &b), BR_ERR_INVAL);
    o.ratio = NAN;
    assert_int_equal(br_resil_budget_create(&o, &b), BR_ERR_INVAL);
    o.ratio = 0.0;
    o.min_retries = 0;
    assert_int_equal(br_resil_budget_create(&o, &b), BR_OK);
    br_resil_budget_request_begin(b);
    assert_false(br_resil_budget_acquire(b)); /* retries disabled */
    br_resil_budget_destroy(b);
}

#define N_THREADS 8

struct budget_race {
    br_resil_budget *b;
    _Atomic int held;
    _Atomic int max_held;
    _Atomic int granted;
};

static void *budget_racer(void *arg)
{
    struct budget_race *r = arg;

    for (int i = 0; i < 20000; i++) {
        br_resil_budget_request_begin(r->b);
        if (br_resil_budget_acquire(r->b)) {
            int h = atomic_fetch_add(&r->held, 1) + 1;
            int m = atomic_load(&r->max_held);

            while (h > m && !atomic_compare_exchange_weak(&r->max_held, &m, h)) {
            }
            atomic_fetch_add(&r->granted, 1);
            atomic_fetch_sub(&r->held, 1);
            br_resil_budget_release(r->b);
        }
        br_resil_budget_request_end(r->b);
    }
    return NULL;
}

/* Threads with one request each in flight: never more than max(3, 0.2 x 8) = 3 tokens held. */
static void test_budget_concurrent(void **state)
{
    struct br_resil_budget_opts o;
    struct budget_race r;
    pthread_t th[N_THREADS];
    uint64_t req = 1;
    uint64_t ret = 1;

    (void)state;
    memset(&r, 0, sizeof(r));
    br_resil_budget_opts_default(&o);
    assert_int_equal(br_resil_budget_create(&o, &r.b), BR_OK);
    atomic_init(&r.held, 0);
    atomic_init(&r.max_held, 0);
    atomic_init(&r.granted, 0);
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, budget_racer, &r), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    assert_true(atomic_load(&r.max_held) <= 3);
    assert_true(atomic_load(&r.granted) > 0);
    br_resil_budget_counts(r.b, &req, &ret);
    assert_int_equal(req, 0);
    assert_int_equal(ret, 0);
    br_resil_budget_destroy(r.b);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_defaults),
        cmocka_unit_test(test_retry_backoff_bounds),
        cmocka_unit_test(test_retry_jitter_uniform),
        cmocka_unit_test(test_retry_after_honoured),
        cmocka_unit_test(test_retry_max_and_next_model),
        cmocka_unit_test(test_retry_total_cap),
        cmocka_unit_test(test_retry_deterministic),
        cmocka_unit_test(test_budget_limits),
        cmocka_unit_test(test_budget_concurrent),
    };

    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("resil_retry", tests, NULL, NULL);
}
