/* SPDX-License-Identifier: MIT */
/*
 * resil/ circuit breaker: every transition (closed -> open -> half-open -> closed / re-open),
 * the n x eject multiplier and its cap, the single half-open probe (also under concurrent
 * callers), reports that must not count, and option validation.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "resil/resil.h"

static br_resil_breaker *mk(uint32_t threshold, uint64_t eject, uint64_t max)
{
    struct br_resil_breaker_opts o;
    br_resil_breaker *b = NULL;

    br_resil_breaker_opts_default(&o);
    o.failure_threshold = threshold;
    o.eject_ms = eject;
    o.eject_max_ms = max;
    assert_int_equal(br_resil_breaker_create(&o, &b), BR_OK);
    return b;
}

static void fail_n(br_resil_breaker *b, int n, uint64_t now)
{
    for (int i = 0; i < n; i++) {
        assert_int_equal(br_resil_breaker_admit(b, now, NULL), BR_RESIL_ADMIT_NORMAL);
        br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_FAILURE, now);
    }
}

static void test_breaker_defaults(void **state)
{
    struct br_resil_breaker_opts o;
    struct br_resil_breaker_info in;
    br_resil_breaker *b = NULL;

    (void)state;
    br_resil_breaker_opts_default(&o);
    assert_int_equal(o.failure_threshold, 5);
    assert_int_equal(o.eject_ms, 30000);
    assert_int_equal(o.eject_max_ms, 300000);
    assert_int_equal(br_resil_breaker_create(&o, &b), BR_OK);
    br_resil_breaker_info(b, 0, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_CLOSED);
    assert_int_equal(in.consecutive_failures, 0);
    assert_int_equal(in.ejections, 0);
    assert_int_equal(in.until_ms, 0);
    assert_false(in.probe_in_flight);
    assert_string_equal(br_resil_breaker_state_name(BR_RESIL_BREAKER_STATE_HALF_OPEN), "half_open");
    assert_string_equal(br_resil_breaker_state_name(BR_RESIL_BREAKER_STATE_OPEN), "open");
    assert_string_equal(br_resil_breaker_state_name(BR_RESIL_BREAKER_STATE_CLOSED), "closed");
    br_resil_breaker_destroy(b);
    br_resil_breaker_destroy(NULL);
}

static void test_breaker_invalid_opts(void **state)
{
    struct br_resil_breaker_opts o;
    br_resil_breaker *b = (br_resil_breaker *)&o;

    (void)state;
    br_resil_breaker_opts_default(&o);
    o.failure_threshold = 0;
    assert_int_equal(br_resil_breaker_create(&o, &b), BR_ERR_INVAL);
    assert_null(b);
    br_resil_breaker_opts_default(&o);
    o.eject_ms = 0;
    assert_int_equal(br_resil_breaker_create(&o, &b), BR_ERR_INVAL);
    br_resil_breaker_opts_default(&o);
    o.eject_max_ms = o.eject_ms - 1;
    assert_int_equal(br_resil_breaker_create(&o, &b), BR_ERR_INVAL);
    assert_int_equal(br_resil_breaker_create(NULL, &b), BR_ERR_INVAL);
}

/* closed -> open exactly at the threshold; the ejection lasts eject_ms. */
static void test_breaker_opens_at_threshold(void **state)
{
    br_resil_breaker *b = mk(5, 30000, 300000);
    struct br_resil_breaker_info in;
    uint64_t until = 0;

    (void)state;
    fail_n(b, 4, 1000);
    br_resil_breaker_info(b, 1000, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_CLOSED);
    assert_int_equal(in.consecutive_failures, 4);
    fail_n(b, 1, 1000);
    br_resil_breaker_info(b, 1000, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_OPEN);
    assert_int_equal(in.ejections, 1);
    assert_int_equal(in.total_ejections, 1);
    assert_int_equal(in.until_ms, 31000);
    assert_int_equal(in.consecutive_failures, 0);
    assert_int_equal(br_resil_breaker_admit(b, 1000, &until), BR_RESIL_ADMIT_DENY);
    assert_int_equal(until, 31000);
    assert_int_equal(br_resil_breaker_admit(b, 30999, &until), BR_RESIL_ADMIT_DENY);
    /* the ejection is over: half-open */
    br_resil_breaker_info(b, 31000, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_HALF_OPEN);
    assert_int_equal(in.until_ms, 0);
    assert_false(in.probe_in_flight);
    br_resil_breaker_destroy(b);
}

/* A success between failures resets the count; RATE_LIMITED and NEUTRAL change nothing. */
static void test_breaker_success_resets_count(void **state)
{
    br_resil_breaker *b = mk(3, 1000, 5000);
    struct br_resil_breaker_info in;

    (void)state;
    fail_n(b, 2, 0);
    assert_int_equal(br_resil_breaker_admit(b, 0, NULL), BR_RESIL_ADMIT_NORMAL);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_OK, 0);
    fail_n(b, 2, 0);
    br_resil_breaker_info(b, 0, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_CLOSED);
    assert_int_equal(in.consecutive_failures, 2);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_RATE_LIMITED, 0);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_NEUTRAL, 0);
    br_resil_breaker_info(b, 0, &in);
    assert_int_equal(in.consecutive_failures, 2);
    fail_n(b, 1, 0);
    br_resil_breaker_info(b, 0, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_OPEN);
    br_resil_breaker_destroy(b);
}

/* Half-open admits exactly one probe; the others wait (retry hint now + 1 s). */
static void test_breaker_half_open_single_probe(void **state)
{
    br_resil_breaker *b = mk(1, 1000, 10000);
    struct br_resil_breaker_info in;
    uint64_t until = 0;

    (void)state;
    fail_n(b, 1, 0);
    assert_int_equal(br_resil_breaker_admit(b, 1000, NULL), BR_RESIL_ADMIT_PROBE);
    br_resil_breaker_info(b, 1000, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_HALF_OPEN);
    assert_true(in.probe_in_flight);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(br_resil_breaker_admit(b, 1000 + (uint64_t)i, &until),
                         BR_RESIL_ADMIT_DENY);
        assert_int_equal(until, 1000 + (uint64_t)i + 1000);
    }
    /* success closes and resets n */
    br_resil_breaker_report(b, BR_RESIL_ADMIT_PROBE, BR_RESIL_HEALTH_OK, 1200);
    br_resil_breaker_info(b, 1200, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_CLOSED);
    assert_int_equal(in.ejections, 0);
    assert_int_equal(in.total_ejections, 1);
    assert_false(in.probe_in_flight);
    assert_int_equal(br_resil_breaker_admit(b, 1200, NULL), BR_RESIL_ADMIT_NORMAL);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_FAILURE, 1200);
    br_resil_breaker_info(b, 1200, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_OPEN);
    assert_int_equal(in.ejections, 1);
    assert_int_equal(in.until_ms, 2200); /* eject x 1 again, not x 2 */
    br_resil_breaker_destroy(b);
}

/* A failed probe re-opens with n + 1: eject x 1, x 2, x 3 ..., capped at eject_max. */
static void test_breaker_multiplier_and_cap(void **state)
{
    br_resil_breaker *b = mk(5, 30000, 100000);
    struct br_resil_breaker_info in;
    static const uint64_t want[] = {30000, 60000, 90000, 100000, 100000, 100000};
    uint64_t now = 0;

    (void)state;
    fail_n(b, 5, now);
    for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
        br_resil_breaker_info(b, now, &in);
        assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_OPEN);
        assert_int_equal(in.ejections, k + 1);
        assert_int_equal(in.total_ejections, k + 1);
        assert_int_equal(in.until_ms - now, want[k]);
        now = in.until_ms;
        assert_int_equal(br_resil_breaker_admit(b, now, NULL), BR_RESIL_ADMIT_PROBE);
        br_resil_breaker_report(b, BR_RESIL_ADMIT_PROBE, BR_RESIL_HEALTH_FAILURE, now);
    }
    br_resil_breaker_destroy(b);
    /* a huge n does not overflow */
    b = mk(1, UINT64_MAX / 2, UINT64_MAX / 2);
    fail_n(b, 1, 0);
    br_resil_breaker_info(b, 0, &in);
    assert_int_equal(in.until_ms, UINT64_MAX / 2);
    br_resil_breaker_destroy(b);
}

/* A probe without a verdict (canceled, 429) frees the slot and stays half-open. */
static void test_breaker_probe_neutral_frees_slot(void **state)
{
    br_resil_breaker *b = mk(1, 1000, 10000);
    struct br_resil_breaker_info in;

    (void)state;
    fail_n(b, 1, 0);
    assert_int_equal(br_resil_breaker_admit(b, 1000, NULL), BR_RESIL_ADMIT_PROBE);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_PROBE, BR_RESIL_HEALTH_NEUTRAL, 1001);
    br_resil_breaker_info(b, 1001, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_HALF_OPEN);
    assert_false(in.probe_in_flight);
    assert_int_equal(br_resil_breaker_admit(b, 1002, NULL), BR_RESIL_ADMIT_PROBE);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_PROBE, BR_RESIL_HEALTH_RATE_LIMITED, 1003);
    assert_int_equal(br_resil_breaker_admit(b, 1004, NULL), BR_RESIL_ADMIT_PROBE);
    assert_int_equal(br_resil_breaker_admit(b, 1004, NULL), BR_RESIL_ADMIT_DENY);
    br_resil_breaker_destroy(b);
}

/* Reports of requests admitted before the opening do not move an open or half-open breaker. */
static void test_breaker_ignores_stale_reports(void **state)
{
    br_resil_breaker *b = mk(2, 1000, 10000);
    struct br_resil_breaker_info in;

    (void)state;
    /* three requests in flight while closed */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(br_resil_breaker_admit(b, 0, NULL), BR_RESIL_ADMIT_NORMAL);
    }
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_FAILURE, 10);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_FAILURE, 10);
    br_resil_breaker_info(b, 10, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_OPEN);
    assert_int_equal(in.until_ms, 1010);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_FAILURE, 20);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_OK, 20);
    br_resil_breaker_info(b, 20, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_OPEN);
    assert_int_equal(in.until_ms, 1010);
    assert_int_equal(in.ejections, 1);
    /* half-open: a stale success does not close it, a stale failure does not re-open it */
    assert_int_equal(br_resil_breaker_admit(b, 1010, NULL), BR_RESIL_ADMIT_PROBE);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_OK, 1011);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_NORMAL, BR_RESIL_HEALTH_FAILURE, 1011);
    br_resil_breaker_info(b, 1011, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_HALF_OPEN);
    assert_true(in.probe_in_flight);
    /* a second probe report (caller bug) is ignored once the first closed it */
    br_resil_breaker_report(b, BR_RESIL_ADMIT_PROBE, BR_RESIL_HEALTH_OK, 1012);
    br_resil_breaker_report(b, BR_RESIL_ADMIT_PROBE, BR_RESIL_HEALTH_FAILURE, 1013);
    br_resil_breaker_info(b, 1013, &in);
    assert_int_equal(in.state, BR_RESIL_BREAKER_STATE_CLOSED);
    br_resil_breaker_destroy(b);
}

/* ---- concurrency ---- */

#define N_THREADS 8
#define N_ROUNDS  50

struct probe_race {
    br_resil_breaker *b;
    pthread_barrier_t start;
    pthread_barrier_t done;
    _Atomic uint64_t now;
    _Atomic int probes; /* PROBE grants in the current round */
};

static void *probe_racer(void *arg)
{
    struct probe_race *r = arg;

    for (int round = 0; round < N_ROUNDS; round++) {
        pthread_barrier_wait(&r->start);
        for (int i = 0; i < 200; i++) {
            uint64_t now = atomic_load(&r->now);

            if (br_resil_breaker_admit(r->b, now, NULL) == BR_RESIL_ADMIT_PROBE) {
                atomic_fetch_add(&r->probes, 1);
            }
        }
        pthread_barrier_wait(&r->done);
    }
    return NULL;
}

/* N threads hammer a half-open breaker: exactly one of them gets the probe, every round. */
static void test_breaker_concurrent_single_probe(void **state)
{
    struct probe_race r;
    pthread_t th[N_THREADS];
    struct br_resil_breaker_info in;

    (void)state;
    memset(&r, 0, sizeof(r));
    r.b = mk(1, 1000, 1000);
    atomic_init(&r.now, 0);
    atomic_init(&r.probes, 0);
    assert_int_equal(pthread_barrier_init(&r.start, NULL, N_THREADS + 1), 0);
    assert_int_equal(pthread_barrier_init(&r.done, NULL, N_THREADS + 1), 0);
    fail_n(r.b, 1, 0);
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, probe_racer, &r), 0);
    }
    for (int round = 0; round < N_ROUNDS; round++) {
        br_resil_breaker_info(r.b, atomic_load(&r.now), &in);
        atomic_store(&r.now, in.until_ms); /* the ejection is over for this round */
        atomic_store(&r.probes, 0);
        pthread_barrier_wait(&r.start);
        pthread_barrier_wait(&r.done);
        assert_int_equal(atomic_load(&r.probes), 1);
        /* the probe failed: re-open (n + 1, capped at 1 s) */
        br_resil_breaker_report(r.b, BR_RESIL_ADMIT_PROBE, BR_RESIL_HEALTH_FAILURE,
                                atomic_load(&r.now));
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    br_resil_breaker_info(r.b, atomic_load(&r.now), &in);
    assert_int_equal(in.total_ejections, N_ROUNDS + 1);
    pthread_barrier_destroy(&r.start);
    pthread_barrier_destroy(&r.done);
    br_resil_breaker_destroy(r.b);
}

struct mixed_race {
    br_resil_breaker *b;
    _Atomic uint64_t clock;
    _Atomic int probes_out; /* probes granted and not yet reported */
    _Atomic int violations;
};

static void *mixed_racer(void *arg)
{
    struct mixed_race *r = arg;
    unsigned x = 12345;

    for (int i = 0; i < 20000; i++) {
        uint64_t now = atomic_fetch_add(&r->clock, 1);
        enum br_resil_admit a = br_resil_breaker_admit(r->b, now, NULL);
        enum br_resil_health h;

        x = x * 1103515245u + 12345u;
        h = (x >> 16) % 3 == 0 ? BR_RESIL_HEALTH_OK : BR_RESIL_HEALTH_FAILURE;
        if (a == BR_RESIL_ADMIT_PROBE) {
            if (atomic_fetch_add(&r->probes_out, 1) != 0) {
                atomic_fetch_add(&r->violations, 1);
            }
        }
        if (a != BR_RESIL_ADMIT_DENY) {
            /* the probe is out until the report: nobody else may hold one until then */
            if (a == BR_RESIL_ADMIT_PROBE) {
                atomic_fetch_sub(&r->probes_out, 1);
            }
            br_resil_breaker_report(r->b, a, h, atomic_load(&r->clock));
        }
    }
    return NULL;
}

/* Admit/report from many threads with a moving clock: never two probes out at once. */
static void test_breaker_concurrent_mixed(void **state)
{
    struct mixed_race r;
    pthread_t th[N_THREADS];
    struct br_resil_breaker_info in;

    (void)state;
    memset(&r, 0, sizeof(r));
    r.b = mk(3, 50, 400);
    atomic_init(&r.clock, 0);
    atomic_init(&r.probes_out, 0);
    atomic_init(&r.violations, 0);
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, mixed_racer, &r), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    assert_int_equal(atomic_load(&r.violations), 0);
    br_resil_breaker_info(r.b, atomic_load(&r.clock), &in);
    assert_true(in.total_ejections > 0);
    br_resil_breaker_destroy(r.b);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breaker_defaults),
        cmocka_unit_test(test_breaker_invalid_opts),
        cmocka_unit_test(test_breaker_opens_at_threshold),
        cmocka_unit_test(test_breaker_success_resets_count),
        cmocka_unit_test(test_breaker_half_open_single_probe),
        cmocka_unit_test(test_breaker_multiplier_and_cap),
        cmocka_unit_test(test_breaker_probe_neutral_frees_slot),
        cmocka_unit_test(test_breaker_ignores_stale_reports),
        cmocka_unit_test(test_breaker_concurrent_single_probe),
        cmocka_unit_test(test_breaker_concurrent_mixed),
    };

    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("resil_breaker", tests, NULL, NULL);
}
