/* SPDX-License-Identifier: MIT */
/*
 * keys/: virtual keys on real SQLite files in a temporary directory. UTC period bounds, secret
 * and id format, lookup by hash, the secret never on disk, budget admission with reservations
 * (the overshoot bound), RPM/TPM windows at injected wall times, allowed models, persistence of
 * keys and spend across a reopen, a period that ended while closed, and threads racing for the
 * last reservation.
 */
#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "br_test.h"
#include "core/err.h"
#include "keys/keys.h"

struct tmp {
    char dir[512];
    char path[600];
};

static void tmp_make(struct tmp *t)
{
    (void)snprintf(t->dir, sizeof(t->dir), "%s/tmp-keys-XXXXXX", BR_BINARY_DIR);
    assert_non_null(mkdtemp(t->dir));
    (void)snprintf(t->path, sizeof(t->path), "%s/keys.db", t->dir);
}

static void tmp_remove(struct tmp *t)
{
    char cmd[700];
    (void)snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
    assert_int_equal(system(cmd), 0);
}

static void sha256(const char *s, unsigned char out[BR_KEYS_HASH_LEN])
{
    unsigned int n = 0;
    assert_true(EVP_Digest(s, strlen(s), out, &n, EVP_sha256(), NULL));
    assert_int_equal(n, BR_KEYS_HASH_LEN);
}

/* 2026-03-15T12:00:00Z */
#define T0 1773576000000LL

static void test_period_bounds(void **state)
{
    (void)state;
    int64_t s = 0;
    int64_t e = 0;
    br_keys_period_bounds(BR_KEYS_PERIOD_DAY, T0, &s, &e);
    assert_int_equal(s, 1773532800000LL); /* 2026-03-15T00:00Z */
    assert_int_equal(e, 1773532800000LL + 86400000LL);
    br_keys_period_bounds(BR_KEYS_PERIOD_MONTH, T0, &s, &e);
    assert_int_equal(s, 1772323200000LL); /* 2026-03-01 */
    assert_int_equal(e, 1775001600000LL); /* 2026-04-01 */
    /* December rolls into the next year; February of a leap year has 29 days. */
    br_keys_period_bounds(BR_KEYS_PERIOD_MONTH, 1798675200000LL, &s, &e); /* 2026-12-31 */
    assert_int_equal(s, 1796083200000LL);                                 /* 2026-12-01 */
    assert_int_equal(e, 1798761600000LL);                                 /* 2027-01-01 */
    br_keys_period_bounds(BR_KEYS_PERIOD_MONTH, 1709251199999LL, &s, &e); /* 2024-02-29 23:59 */
    assert_int_equal(s, 1706745600000LL);                                 /* 2024-02-01 */
    assert_int_equal(e, 1709251200000LL);                                 /* 2024-03-01 */
    br_keys_period_bounds(BR_KEYS_PERIOD_TOTAL, T0, &s, &e);
    assert_int_equal(s, 0);
    assert_int_equal(e, 0);
    enum br_keys_period p;
    assert_int_equal(br_keys_period_parse("day", &p), BR_OK);
    assert_int_equal(p, BR_KEYS_PERIOD_DAY);
    assert_int_equal(br_keys_period_parse("week", &p), BR_ERR_PARSE);
    assert_string_equal(br_keys_period_name(BR_KEYS_PERIOD_MONTH), "month");
}

static void test_create_find_revoke(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    br_keys *ks = NULL;
    assert_int_equal(br_keys_open(t.path, 10, &ks), BR_OK);
    const char *models[] = {"gpt", "local"};
    struct br_keys_spec spec = {.name = "team a",
                                .has_budget = true,
                                .budget_nano = 5000,
                                .period = BR_KEYS_PERIOD_DAY,
                                .rpm = 10,
                                .models = models,
                                .n_models = 2,
                                .metadata_json = "{\"team\":\"a\"}"};
    char secret[BR_KEYS_SECRET_LEN + 1];
    struct br_keys_info info;
    assert_int_equal(br_keys_create(ks, &spec, T0, secret, &info), BR_OK);
    assert_int_equal(strlen(secret), BR_KEYS_SECRET_LEN);
    assert_memory_equal(secret, "br-", 3);
    assert_int_equal(strlen(info.id), BR_KEYS_ID_LEN);
    assert_memory_equal(info.id, "vk_", 3);
    assert_string_equal(info.name, "team a");
    assert_int_equal(info.n_models, 2);
    assert_int_equal(br_keys_active_count(ks), 1);

    unsigned char h[BR_KEYS_HASH_LEN];
    sha256(secret, h);
    br_vkey *k = br_keys_find(ks, h);
    assert_non_null(k);
    assert_string_equal(br_keys_id(k), info.id);
    h[0] ^= 1;
    assert_null(br_keys_find(ks, h));

    assert_true(br_keys_model_allowed(k, "gpt", 3));
    assert_true(br_keys_model_allowed(k, "local:lora-a", 12));
    assert_false(br_keys_model_allowed(k, "gp", 2));
    assert_false(br_keys_model_allowed(k, "claude", 6));

    /* The secret is nowhere in the file, the WAL included. */
    assert_int_equal(br_keys_flush(ks), BR_OK);
    char cmd[800];
    (void)snprintf(cmd, sizeof(cmd), "cat '%s'/keys.db* | grep -c -a -F '%s' >/dev/null", t.dir,
                   secret + 3);
    assert_int_not_equal(system(cmd), 0);

    struct br_keys_info r;
    assert_int_equal(br_keys_revoke(ks, info.id, T0 + 1000, &r), BR_OK);
    assert_int_equal(r.revoked_ms, T0 + 1000);
    assert_true(br_keys_revoked(k));
    assert_int_equal(br_keys_active_count(ks), 0);
    assert_int_equal(br_keys_count(ks), 1);
    struct br_keys_ticket tk;
    struct br_keys_denial dn;
    assert_int_equal(br_keys_admit(k, 1, 1, T0 + 2000, &tk, &dn), BR_ERR_LIMIT);
    assert_int_equal(dn.why, BR_KEYS_DENY_REVOKED);
    assert_int_equal(br_keys_revoke(ks, "vk_0000000000000000", T0, NULL), BR_ERR_NOTFOUND);
    br_keys_info_cleanup(&r);
    br_keys_info_cleanup(&info);
    br_keys_close(ks);
    tmp_remove(&t);
}

static void test_budget_reservations(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    br_keys *ks = NULL;
    assert_int_equal(br_keys_open(t.path, 10, &ks), BR_OK);
    struct br_keys_spec spec = {
        .has_budget = true, .budget_nano = 1000, .period = BR_KEYS_PERIOD_DAY};
    char secret[BR_KEYS_SECRET_LEN + 1];
    assert_int_equal(br_keys_create(ks, &spec, T0, secret, NULL), BR_OK);
    unsigned char h[BR_KEYS_HASH_LEN];
    sha256(secret, h);
    br_vkey *k = br_keys_find(ks, h);
    struct br_keys_ticket a;
    struct br_keys_ticket b;
    struct br_keys_ticket c;
    struct br_keys_denial dn;
    /* 600 reserved: a second 600 does not fit, 400 does. */
    assert_int_equal(br_keys_admit(k, 600, 10, T0, &a, &dn), BR_OK);
    assert_int_equal(br_keys_admit(k, 600, 10, T0, &b, &dn), BR_ERR_LIMIT);
    assert_int_equal(dn.why, BR_KEYS_DENY_BUDGET);
    assert_int_equal(dn.reserved_nano, 600);
    assert_int_equal(dn.retry_after_s, 1); /* the in-flight request holds the rest */
    assert_int_equal(br_keys_admit(k, 400, 10, T0, &b, &dn), BR_OK);
    assert_int_equal(br_keys_admit(k, 1, 10, T0, &c, &dn), BR_ERR_LIMIT);
    /* a costs more than its estimate (700 > 600): the overshoot is bounded by what was in
     * flight, here 700 + 450 - 1000 = 150 <= 700 + 450. */
    br_keys_settle(ks, &a, 700, 100, T0 + 10);
    br_keys_settle(ks, &a, 700, 100, T0 + 10); /* a second settle is a no-op */
    br_keys_settle(ks, &b, 450, 100, T0 + 20);
    struct br_keys_info info;
    assert_int_equal(br_keys_get(ks, br_keys_id(k), T0 + 30, &info), BR_OK);
    assert_int_equal(info.spent_nano, 1150);
    assert_int_equal(info.reserved_nano, 0);
    assert_int_equal(info.in_flight, 0);
    br_keys_info_cleanup(&info);
    /* Spent: nothing more starts today; Retry-After points at midnight UTC. */
    assert_int_equal(br_keys_admit(k, 0, 0, T0 + 1000, &c, &dn), BR_ERR_LIMIT);
    assert_int_equal(dn.why, BR_KEYS_DENY_BUDGET);
    assert_int_equal(dn.retry_after_s, 12 * 3600 - 1);
    /* A wall clock that goes back a day does not start a period afresh. */
    assert_int_equal(br_keys_admit(k, 0, 0, T0 - 86400000LL, &c, &dn), BR_ERR_LIMIT);
    assert_int_equal(dn.spent_nano, 1150);
    /* The next day starts at zero. */
    assert_int_equal(br_keys_admit(k, 1000, 0, T0 + 12 * 3600 * 1000LL, &c, &dn), BR_OK);
    br_keys_settle(ks, &c, 0, 0, T0 + 12 * 3600 * 1000LL);

    /* A total budget that is spent cannot be retried. */
    struct br_keys_spec tot = {
        .has_budget = true, .budget_nano = 10, .period = BR_KEYS_PERIOD_TOTAL};
    assert_int_equal(br_keys_update(ks, br_keys_id(k), &tot, BR_KEYS_FIELD_BUDGET, T0, NULL),
                     BR_OK);
    assert_int_equal(br_keys_admit(k, 11, 0, T0, &c, &dn), BR_ERR_LIMIT);
    assert_int_equal(dn.retry_after_s, 0);
    br_keys_close(ks);
    tmp_remove(&t);
}

static void test_rate_limits(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    br_keys *ks = NULL;
    assert_int_equal(br_keys_open(t.path, 10, &ks), BR_OK);
    struct br_keys_spec spec = {.rpm = 3, .tpm = 1000};
    char secret[BR_KEYS_SECRET_LEN + 1];
    assert_int_equal(br_keys_create(ks, &spec, T0, secret, NULL), BR_OK);
    unsigned char h[BR_KEYS_HASH_LEN];
    sha256(secret, h);
    br_vkey *k = br_keys_find(ks, h);
    struct br_keys_ticket tk;
    struct br_keys_denial dn;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(br_keys_admit(k, 0, 10, T0 + i * 10000LL, &tk, &dn), BR_OK);
        br_keys_settle(ks, &tk, 0, 10, T0 + i * 10000LL);
    }
    assert_int_equal(br_keys_admit(k, 0, 10, T0 + 30000, &tk, &dn), BR_ERR_LIMIT);
    assert_int_equal(dn.why, BR_KEYS_DENY_RPM);
    assert_int_equal(dn.limit, 3);
    assert_int_equal(dn.retry_after_s, 30); /* the first request leaves the window at T0+60s */
    /* 60 s after the first request there is room again. */
    assert_int_equal(br_keys_admit(k, 0, 10, T0 + 60000, &tk, &dn), BR_OK);
    br_keys_settle(ks, &tk, 0, 995, T0 + 60000);
    /* TPM: 10 + 10 + 995 = 1015 tokens in the window. */
    struct br_keys_spec more = {.rpm = 100};
    assert_int_equal(br_keys_update(ks, br_keys_id(k), &more, BR_KEYS_FIELD_RPM, T0, NULL), BR_OK);
    assert_int_equal(br_keys_admit(k, 0, 10, T0 + 61000, &tk, &dn), BR_ERR_LIMIT);
    assert_int_equal(dn.why, BR_KEYS_DENY_TPM);
    assert_true(dn.retry_after_s >= 1 && dn.retry_after_s <= 60);
    assert_int_equal(br_keys_admit(k, 0, 10, T0 + 121000, &tk, &dn), BR_OK);
    br_keys_settle(ks, &tk, 0, 0, T0 + 121000);
    br_keys_close(ks);
    tmp_remove(&t);
}

static void test_persist_reopen(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    br_keys *ks = NULL;
    assert_int_equal(br_keys_open(t.path, 10, &ks), BR_OK);
    struct br_keys_spec spec = {.name = "p",
                                .has_budget = true,
                                .budget_nano = 1000000,
                                .period = BR_KEYS_PERIOD_TOTAL,
                                .tpm = 7};
    struct br_keys_spec daily = {
        .name = "d", .has_budget = true, .budget_nano = 1000000, .period = BR_KEYS_PERIOD_DAY};
    char s1[BR_KEYS_SECRET_LEN + 1];
    char s2[BR_KEYS_SECRET_LEN + 1];
    struct br_keys_info i1;
    struct br_keys_info i2;
    int64_t now = 0;
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now = (int64_t)ts.tv_sec * 1000;
    }
    assert_int_equal(br_keys_create(ks, &spec, now, s1, &i1), BR_OK);
    assert_int_equal(br_keys_create(ks, &daily, now, s2, &i2), BR_OK);
    unsigned char h1[BR_KEYS_HASH_LEN];
    unsigned char h2[BR_KEYS_HASH_LEN];
    sha256(s1, h1);
    sha256(s2, h2);
    struct br_keys_ticket tk;
    struct br_keys_denial dn;
    assert_int_equal(br_keys_admit(br_keys_find(ks, h1), 100, 1, now, &tk, &dn), BR_OK);
    br_keys_settle(ks, &tk, 1234, 1, now);
    assert_int_equal(br_keys_admit(br_keys_find(ks, h2), 100, 1, now, &tk, &dn), BR_OK);
    br_keys_settle(ks, &tk, 777, 1, now);
    assert_int_equal(br_keys_flush(ks), BR_OK);
    struct br_keys_info g;
    assert_int_equal(br_keys_get(ks, i1.id, now, &g), BR_OK);
    assert_int_equal(g.persisted_nano, 1234); /* acknowledged */
    br_keys_info_cleanup(&g);
    br_keys_close(ks);

    /* The daily key's period ended while the store was closed (moved back a day on disk). */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    char sql[200];
    (void)snprintf(sql, sizeof(sql),
                   "UPDATE virtual_keys SET period_start_ms = period_start_ms - 86400000 WHERE "
                   "id = '%s'",
                   i2.id);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    assert_int_equal(br_keys_open(t.path, 10, &ks), BR_OK);
    assert_int_equal(br_keys_count(ks), 2);
    br_vkey *k1 = br_keys_find(ks, h1);
    assert_non_null(k1);
    assert_int_equal(br_keys_get(ks, i1.id, now, &g), BR_OK);
    assert_string_equal(g.name, "p");
    assert_int_equal(g.spent_nano, 1234);
    assert_int_equal(g.tpm, 7);
    assert_true(g.has_budget);
    br_keys_info_cleanup(&g);
    assert_int_equal(br_keys_get(ks, i2.id, now, &g), BR_OK);
    assert_int_equal(g.spent_nano, 0);
    br_keys_info_cleanup(&g);
    br_keys_info_cleanup(&i1);
    br_keys_info_cleanup(&i2);
    br_keys_close(ks);
    tmp_remove(&t);
}

/* ---- threads racing for the budget ---- */

#define N_THREADS  8
#define PER_THREAD 200

struct race {
    br_keys *ks;
    br_vkey *k;
    int admitted;
};

static void *race_main(void *arg)
{
    struct race *r = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        struct br_keys_ticket tk;
        struct br_keys_denial dn;
        if (br_keys_admit(r->k, 10, 1, T0, &tk, &dn) == BR_OK) {
            r->admitted++;
            br_keys_settle(r->ks, &tk, 10, 1, T0);
        }
    }
    return NULL;
}

static void test_threads_race(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    br_keys *ks = NULL;
    assert_int_equal(br_keys_open(t.path, 1, &ks), BR_OK);
    /* Room for exactly 500 requests of 10 among 1600 attempts. */
    struct br_keys_spec spec = {
        .has_budget = true, .budget_nano = 5000, .period = BR_KEYS_PERIOD_TOTAL};
    char secret[BR_KEYS_SECRET_LEN + 1];
    struct br_keys_info info;
    assert_int_equal(br_keys_create(ks, &spec, T0, secret, &info), BR_OK);
    unsigned char h[BR_KEYS_HASH_LEN];
    sha256(secret, h);
    struct race r[N_THREADS];
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        r[i] = (struct race){ks, br_keys_find(ks, h), 0};
        assert_int_equal(pthread_create(&th[i], NULL, race_main, &r[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        total += r[i].admitted;
    }
    assert_int_equal(total, 500);
    struct br_keys_info g;
    assert_int_equal(br_keys_get(ks, info.id, T0, &g), BR_OK);
    assert_int_equal(g.spent_nano, 5000);
    assert_int_equal(g.reserved_nano, 0);
    br_keys_info_cleanup(&g);
    br_keys_info_cleanup(&info);
    assert_int_equal(br_keys_flush(ks), BR_OK);
    br_keys_close(ks);
    tmp_remove(&t);
}

static int count_one(void *user, const struct br_keys_info *info)
{
    assert_memory_equal(info->id, "vk_", 3);
    (*(int *)user)++;
    return 0;
}

static void test_update_and_list(void **state)
{
    (void)state;
    struct tmp t;
    tmp_make(&t);
    br_keys *ks = NULL;
    assert_int_equal(br_keys_open(t.path, 10, &ks), BR_OK);
    struct br_keys_spec spec = {
        .name = "a", .has_budget = true, .budget_nano = 100, .period = BR_KEYS_PERIOD_MONTH};
    char secret[BR_KEYS_SECRET_LEN + 1];
    struct br_keys_info info;
    assert_int_equal(br_keys_create(ks, &spec, T0, secret, &info), BR_OK);
    assert_int_equal(br_keys_create(ks, &spec, T0, secret, NULL), BR_OK);
    unsigned char h[BR_KEYS_HASH_LEN];
    sha256(secret, h);
    struct br_keys_ticket tk;
    struct br_keys_denial dn;
    br_vkey *k = br_keys_find(ks, h);
    assert_int_equal(br_keys_admit(k, 50, 0, T0, &tk, &dn), BR_OK);
    br_keys_settle(ks, &tk, 60, 0, T0);
    /* A new amount keeps the spend; a new period restarts it; no budget keeps it. */
    struct br_keys_spec u = {
        .has_budget = true, .budget_nano = 200, .period = BR_KEYS_PERIOD_MONTH};
    struct br_keys_info g;
    assert_int_equal(br_keys_update(ks, br_keys_id(k), &u, BR_KEYS_FIELD_BUDGET, T0, &g), BR_OK);
    assert_int_equal(g.spent_nano, 60);
    assert_int_equal(g.budget_nano, 200);
    br_keys_info_cleanup(&g);
    u.has_budget = false;
    assert_int_equal(br_keys_update(ks, br_keys_id(k), &u, BR_KEYS_FIELD_BUDGET, T0, &g), BR_OK);
    assert_int_equal(g.spent_nano, 60);
    assert_false(g.has_budget);
    br_keys_info_cleanup(&g);
    u.has_budget = true;
    u.period = BR_KEYS_PERIOD_DAY;
    const char *none[] = {NULL};
    u.models = none;
    u.n_models = 0;
    assert_int_equal(
        br_keys_update(ks, br_keys_id(k), &u, BR_KEYS_FIELD_BUDGET | BR_KEYS_FIELD_MODELS, T0, &g),
        BR_OK);
    assert_int_equal(g.spent_nano, 0);
    assert_int_equal(g.period, BR_KEYS_PERIOD_DAY);
    assert_non_null(g.models);
    assert_int_equal(g.n_models, 0);
    assert_false(br_keys_model_allowed(k, "any", 3));
    br_keys_info_cleanup(&g);
    /* Out-of-range values are refused. */
    struct br_keys_spec badspec = {.rpm = -1};
    assert_int_equal(br_keys_update(ks, br_keys_id(k), &badspec, BR_KEYS_FIELD_RPM, T0, NULL),
                     BR_ERR_INVAL);
    assert_int_equal(br_keys_update(ks, "vk_nope", &u, BR_KEYS_FIELD_RPM, T0, NULL),
                     BR_ERR_NOTFOUND);
    int n = 0;
    assert_int_equal(br_keys_list(ks, T0, count_one, &n), BR_OK);
    assert_int_equal(n, 2);
    br_keys_info_cleanup(&info);
    br_keys_close(ks);
    tmp_remove(&t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_period_bounds),       cmocka_unit_test(test_create_find_revoke),
        cmocka_unit_test(test_budget_reservations), cmocka_unit_test(test_rate_limits),
        cmocka_unit_test(test_persist_reopen),      cmocka_unit_test(test_threads_race),
        cmocka_unit_test(test_update_and_list),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("keys", tests, NULL, NULL);
}
