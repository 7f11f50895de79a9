/* SPDX-License-Identifier: MIT */
/*
 * store/, schema 2: the routing columns, the migration of a version-1 file, feedback looked up
 * and attributed on the writer thread, thresholds, bodies and the routing report queries.
 */
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/err.h"
#include "store/store.h"

struct tmpdb {
    char dir[512];
    char path[600];
};

static void tmpdb_make(struct tmpdb *t)
{
    (void)snprintf(t->dir, sizeof(t->dir), "%s/tmp-store-route-XXXXXX", BR_BINARY_DIR);
    assert_non_null(mkdtemp(t->dir));
    (void)snprintf(t->path, sizeof(t->path), "%s/log.db", t->dir);
}

static void tmpdb_remove(struct tmpdb *t)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    char p[700];
    for (size_t i = 0; i < 4; i++) {
        (void)snprintf(p, sizeof(p), "%s%s", t->path, suffix[i]);
        unlink(p);
    }
    rmdir(t->dir);
}

static void exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fail_msg("sql failed: %s: %s", sql, msg ? msg : "?");
    }
}

static long long query_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    long long v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* ---- routing columns ---- */

struct one_row {
    int n;
    char policy[32];
    char decision[32];
    char reason[128];
    char cascade[64];
    double score;
    double threshold;
    double confidence;
    bool policy_null;
};

static int grab(void *user, const struct br_log_row *r)
{
    struct one_row *o = user;
    if (o->n++ == 0) {
        o->policy_null = r->policy == NULL;
        (void)snprintf(o->policy, sizeof(o->policy), "%s", r->policy ? r->policy : "");
        (void)snprintf(o->decision, sizeof(o->decision), "%s", r->decision ? r->decision : "");
        (void)snprintf(o->reason, sizeof(o->reason), "%s", r->reason ? r->reason : "");
        (void)snprintf(o->cascade, sizeof(o->cascade), "%s", r->cascade ? r->cascade : "");
        o->score = r->score;
        o->threshold = r->threshold;
        o->confidence = r->confidence;
    }
    return 0;
}

static void test_routing_columns(void **state)
{
    (void)state;
    struct tmpdb t;
    tmpdb_make(&t);
    br_store *s = NULL;
    struct br_store_opts o = {.path = t.path};
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    struct br_log_row routed = {.id = "a",
                                .ts_ms = 10,
                                .model = "m",
                                .route = "auto",
                                .policy = "classifier",
                                .decision = "strong",
                                .score = 0.75,
                                .threshold = 0.5,
                                .reason = "score 0.750 >= 0.500",
                                .cascade = "x>y",
                                .confidence = -0.25};
    struct br_log_row direct = {.id = "b", .ts_ms = 20, .model = "m", .score = 0, .threshold = 0};
    assert_int_equal(br_store_log(s, &routed), BR_OK);
    assert_int_equal(br_store_log(s, &direct), BR_OK);
    assert_int_equal(br_store_flush(s), BR_OK);
    struct one_row r = {0};
    assert_int_equal(br_store_query_recent(t.path, 1, 0, grab, &r), BR_OK); /* newest: direct */
    assert_true(r.policy_null);
    assert_true(isnan(r.score) && isnan(r.threshold) && isnan(r.confidence));
    memset(&r, 0, sizeof(r));
    assert_int_equal(br_store_query_recent(t.path, 0, 0, grab, &r), BR_OK);
    assert_int_equal(r.n, 2);
    assert_int_equal(query_int(t.path, "SELECT COUNT(*) FROM requests WHERE score IS NULL"), 1);
    assert_int_equal(query_int(t.path, "SELECT score * 100 FROM requests WHERE id = 'a'"), 75);
    assert_int_equal(query_int(t.path,
                               "SELECT COUNT(*) FROM requests WHERE policy = 'classifier' AND "
                               "decision = 'strong' AND cascade = 'x>y' AND confidence = -0.25 AND "
                               "reason LIKE 'score%'"),
                     1);
    br_store_close(s);
    tmpdb_remove(&t);
}

/* ---- migration ---- */

static void test_migrates_version_1(void **state)
{
    (void)state;
    struct tmpdb t;
    tmpdb_make(&t);
    /* A file as brigade's first schema wrote it. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    exec_sql(db, "CREATE TABLE requests(id TEXT, ts_ms INTEGER, key_id TEXT, model TEXT, provider "
                 "TEXT, route TEXT, endpoint TEXT, status INTEGER, stream INTEGER, prompt_tokens "
                 "INTEGER, completion_tokens INTEGER, cached_tokens INTEGER, reasoning_tokens "
                 "INTEGER, usage_estimated INTEGER, cost_nano_usd INTEGER, latency_us INTEGER, "
                 "ttft_us INTEGER, upstream_latency_us INTEGER, overhead_us INTEGER, error_kind "
                 "TEXT, upstream_model TEXT);"
                 "CREATE INDEX requests_ts_ms ON requests(ts_ms);"
                 "CREATE INDEX requests_id ON requests(id);"
                 "INSERT INTO requests(id, ts_ms, model, status, cost_nano_usd) VALUES('old', 5, "
                 "'gpt', 200, 123);"
                 "PRAGMA user_version=1;");
    sqlite3_close(db);
    /* The readers refuse it until the writer migrated it. */
    struct one_row r = {0};
    assert_int_equal(br_store_query_recent(t.path, 0, 0, grab, &r), BR_ERR_UNSUPPORTED);
    br_store *s = NULL;
    struct br_store_opts o = {.path = t.path};
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    struct br_log_row row = {.id = "new", .ts_ms = 6, .model = "m", .policy = "rules"};
    assert_int_equal(br_store_log(s, &row), BR_OK);
    assert_int_equal(br_store_flush(s), BR_OK);
    br_store_close(s);
    assert_int_equal(query_int(t.path, "PRAGMA user_version"), 2);
    assert_int_equal(query_int(t.path, "SELECT COUNT(*) FROM requests"), 2);
    assert_int_equal(query_int(t.path,
                               "SELECT cost_nano_usd FROM requests WHERE id = 'old' AND policy IS "
                               "NULL AND score IS NULL"),
                     123);
    assert_int_equal(query_int(t.path, "SELECT COUNT(*) FROM feedback"), 0);
    assert_int_equal(query_int(t.path, "SELECT COUNT(*) FROM route_thresholds"), 0);
    assert_int_equal(query_int(t.path, "SELECT COUNT(*) FROM bodies"), 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(br_store_query_recent(t.path, 0, 0, grab, &r), BR_OK);
    assert_int_equal(r.n, 2);
    assert_string_equal(r.policy, "rules");
    /* Reopening a migrated file is a no-op. */
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    br_store_close(s);
    tmpdb_remove(&t);
}

/* ---- feedback ---- */

struct fb_result {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int rc;
    char route[32];
    char model[32];
    char decision[32];
    double score;
    double previous;
    long long cost;
};

static void on_fb(void *user, int rc, const struct br_feedback_attr *a)
{
    struct fb_result *r = user;
    pthread_mutex_lock(&r->mu);
    r->rc = rc;
    if (rc == BR_OK) {
        (void)snprintf(r->route, sizeof(r->route), "%s", a->route ? a->route : "(null)");
        (void)snprintf(r->model, sizeof(r->model), "%s", a->model ? a->model : "(null)");
        (void)snprintf(r->decision, sizeof(r->decision), "%s", a->decision ? a->decision : "");
        r->score = a->score;
        r->previous = a->previous;
        r->cost = a->cost_nano_usd;
    }
    r->done = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Sends feedback and waits for its callback; returns the result code. */
static int feedback(br_store *s, const char *id, const char *key, bool master, double score,
                    struct fb_result *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    struct br_feedback_row fb = {
        .request_id = id, .ts_ms = 99, .key_id = key, .is_master = master, .score = score};
    int rc = br_store_feedback(s, &fb, on_fb, r);
    if (rc == BR_OK) {
        pthread_mutex_lock(&r->mu);
        while (!r->done) {
            pthread_cond_wait(&r->cv, &r->mu);
        }
        pthread_mutex_unlock(&r->mu);
        rc = r->rc;
    }
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    return rc;
}

static void test_feedback(void **state)
{
    (void)state;
    struct tmpdb t;
    tmpdb_make(&t);
    br_store *s = NULL;
    struct br_store_opts o = {.path = t.path, .flush_interval_ms = 60000};
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    struct br_log_row row = {.id = "req1",
                             .ts_ms = 1,
                             .key_id = "app",
                             .model = "cheap",
                             .route = "auto",
                             .policy = "classifier",
                             .decision = "weak",
                             .score = 0.2,
                             .threshold = 0.5,
                             .cost_nano_usd = 777,
                             .status = 200};
    /* Queued just before the feedback and not yet committed (long flush interval): the
     * writer commits rows in order, so the feedback finds it. */
    assert_int_equal(br_store_log(s, &row), BR_OK);
    struct fb_result r;
    assert_int_equal(feedback(s, "req1", "app", false, 0.25, &r), BR_OK);
    assert_string_equal(r.route, "auto");
    assert_string_equal(r.model, "cheap");
    assert_string_equal(r.decision, "weak");
    assert_true(fabs(r.score - 0.2) < 1e-12);
    assert_true(isnan(r.previous));
    assert_int_equal(r.cost, 777);
    /* Unknown id; another key's request; the master key may rate anything. */
    assert_int_equal(feedback(s, "nope", "app", false, 1, &r), BR_ERR_NOTFOUND);
    assert_int_equal(feedback(s, "req1", "other", false, 1, &r), BR_ERR_NOTFOUND);
    assert_int_equal(feedback(s, "req1", NULL, false, 1, &r), BR_ERR_NOTFOUND);
    assert_int_equal(feedback(s, "req1", "master", true, 1, &r), BR_OK);
    assert_true(fabs(r.previous - 0.25) < 1e-12); /* replaced */
    /* Without auth (no key on the request) anyone may rate it. */
    struct br_log_row open_row = {.id = "req2", .ts_ms = 2, .model = "m", .status = 200};
    assert_int_equal(br_store_log(s, &open_row), BR_OK);
    assert_int_equal(feedback(s, "req2", NULL, false, 0, &r), BR_OK);
    assert_string_equal(r.route, "(null)");
    br_store_close(s);
    assert_int_equal(query_int(t.path, "SELECT COUNT(*) FROM feedback"), 2);
    assert_int_equal(query_int(t.path,
                               "SELECT score FROM feedback WHERE request_id = 'req1' AND route = "
                               "'auto' AND decision = 'weak' AND key_id = 'master'"),
                     1);
    tmpdb_remove(&t);
}

/* ---- thresholds ---- */

struct th_seen {
    int n;
    char route[4][16];
    double threshold[4];
    double config[4];
};

static int th_cb(void *user, const struct br_threshold_row *t)
{
    struct th_seen *s = user;
    if (s->n < 4) {
        (void)snprintf(s->route[s->n], sizeof(s->route[0]), "%s", t->route);
        s->threshold[s->n] = t->threshold;
        s->config[s->n] = t->config_threshold;
    }
    s->n++;
    return 0;
}

static void test_thresholds(void **state)
{
    (void)state;
    struct tmpdb t;
    tmpdb_make(&t);
    br_store *s = NULL;
    struct br_store_opts o = {.path = t.path};
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    struct br_threshold_row a1 = {
        .route = "a", .ts_ms = 10, .config_threshold = 0.5, .threshold = 0.48, .reason = "x"};
    struct br_threshold_row a2 = {
        .route = "a", .ts_ms = 20, .config_threshold = 0.5, .threshold = 0.46, .reason = "y"};
    struct br_threshold_row b1 = {
        .route = "b", .ts_ms = 15, .config_threshold = -0.5, .threshold = -0.4};
    assert_int_equal(br_store_threshold(s, &a1), BR_OK);
    assert_int_equal(br_store_threshold(s, &b1), BR_OK);
    assert_int_equal(br_store_threshold(s, &a2), BR_OK);
    assert_int_equal(br_store_flush(s), BR_OK);
    struct th_seen seen = {0};
    assert_int_equal(br_store_query_thresholds(t.path, th_cb, &seen), BR_OK);
    assert_int_equal(seen.n, 2);
    assert_string_equal(seen.route[0], "a");
    assert_true(fabs(seen.threshold[0] - 0.46) < 1e-12);
    assert_string_equal(seen.route[1], "b");
    assert_true(fabs(seen.config[1] + 0.5) < 1e-12);
    memset(&seen, 0, sizeof(seen));
    assert_int_equal(br_store_query_threshold_history(t.path, "a", th_cb, &seen), BR_OK);
    assert_int_equal(seen.n, 2);
    assert_true(fabs(seen.threshold[0] - 0.48) < 1e-12);
    br_store_close(s);
    /* Written directly, as calibrate does, next to (or without) a gateway. */
    struct br_threshold_row c = {.route = "a",
                                 .ts_ms = 30,
                                 .config_threshold = 0.5,
                                 .threshold = 0.4,
                                 .reason = "calibrate"};
    assert_int_equal(br_store_threshold_save(t.path, &c), BR_OK);
    memset(&seen, 0, sizeof(seen));
    assert_int_equal(br_store_query_thresholds(t.path, th_cb, &seen), BR_OK);
    assert_true(fabs(seen.threshold[0] - 0.4) < 1e-12);
    tmpdb_remove(&t);
    /* A new file gets the schema from the direct write too. */
    tmpdb_make(&t);
    assert_int_equal(br_store_threshold_save(t.path, &c), BR_OK);
    assert_int_equal(query_int(t.path, "PRAGMA user_version"), 2);
    tmpdb_remove(&t);
}

/* ---- bodies and the report queries ---- */

struct export_seen {
    int n;
    char ids[8][16];
    char answer[64];
};

static int export_cb(void *user, const struct br_store_export_row *r)
{
    struct export_seen *e = user;
    if (e->n < 8) {
        (void)snprintf(e->ids[e->n], sizeof(e->ids[0]), "%s", r->request_id);
    }
    if (e->n == 0) {
        (void)snprintf(e->answer, sizeof(e->answer), "%s", r->answer);
    }
    e->n++;
    return 0;
}

struct route_seen {
    int n;
    struct br_store_route_total t[8];
    char model[8][16];
    char decision[8][16];
};

static int route_cb(void *user, const struct br_store_route_total *t)
{
    struct route_seen *s = user;
    if (s->n < 8) {
        s->t[s->n] = *t;
        (void)snprintf(s->model[s->n], sizeof(s->model[0]), "%s", t->model);
        (void)snprintf(s->decision[s->n], sizeof(s->decision[0]), "%s", t->decision);
    }
    s->n++;
    return 0;
}

static void test_bodies_and_report(void **state)
{
    (void)state;
    struct tmpdb t;
    tmpdb_make(&t);
    br_store *s = NULL;
    struct br_store_opts o = {.path = t.path};
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    const char *msgs = "[{\"role\":\"user\",\"content\":\"hi\"}]";
    struct {
        const char *id;
        const char *model;
        const char *route;
        const char *decision;
        int status;
        double fb;
    } rows[] = {
        {"r1", "strong", "auto", "strong", 200, 1.0}, {"r2", "strong", "auto", "strong", 200, 0.0},
        {"r3", "cheap", "auto", "weak", 200, NAN},    {"r4", "strong", NULL, NULL, 200, NAN},
        {"r5", "strong", "auto", "strong", 500, NAN},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct br_log_row row = {.id = rows[i].id,
                                 .ts_ms = (int64_t)i,
                                 .model = rows[i].model,
                                 .route = rows[i].route,
                                 .policy = rows[i].route ? "classifier" : NULL,
                                 .decision = rows[i].decision,
                                 .score = 0.5,
                                 .status = rows[i].status,
                                 .cost_nano_usd = 100};
        assert_int_equal(br_store_log(s, &row), BR_OK);
        struct br_body_row b = {.request_id = rows[i].id,
                                .ts_ms = (int64_t)i,
                                .route = rows[i].route,
                                .model = rows[i].model,
                                .messages = br_slice_from_cstr(msgs),
                                .answer = BR_SLICE_LIT("hello there"),
                                .status = rows[i].status};
        assert_int_equal(br_store_body(s, &b, 4096), BR_OK);
        if (!isnan(rows[i].fb)) {
            struct fb_result r;
            assert_int_equal(feedback(s, rows[i].id, NULL, false, rows[i].fb, &r), BR_OK);
        }
    }
    /* A body cut at its cap is kept but never exported. */
    struct br_body_row big = {.request_id = "r6",
                              .ts_ms = 9,
                              .model = "strong",
                              .messages = br_slice_from_cstr(msgs),
                              .answer = BR_SLICE_LIT("0123456789"),
                              .status = 200};
    assert_int_equal(br_store_body(s, &big, 5), BR_OK);
    assert_int_equal(br_store_flush(s), BR_OK);
    assert_int_equal(query_int(t.path, "SELECT truncated FROM bodies WHERE request_id = 'r6'"), 1);

    struct br_store_export_filter f = {.min_feedback = NAN};
    struct export_seen e = {0};
    assert_int_equal(br_store_query_bodies(t.path, &f, export_cb, &e), BR_OK);
    assert_int_equal(e.n, 4); /* r1..r4: r5 failed, r6 truncated */
    assert_string_equal(e.answer, "hello there");
    f.model = "strong";
    memset(&e, 0, sizeof(e));
    assert_int_equal(br_store_query_bodies(t.path, &f, export_cb, &e), BR_OK);
    assert_int_equal(e.n, 3);
    f.route = "auto";
    memset(&e, 0, sizeof(e));
    assert_int_equal(br_store_query_bodies(t.path, &f, export_cb, &e), BR_OK);
    assert_int_equal(e.n, 2);
    f.min_feedback = 0.5;
    memset(&e, 0, sizeof(e));
    assert_int_equal(br_store_query_bodies(t.path, &f, export_cb, &e), BR_OK);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.ids[0], "r1");

    struct route_seen rs = {0};
    assert_int_equal(br_store_query_routes(t.path, 0, route_cb, &rs), BR_OK);
    assert_int_equal(rs.n, 2); /* auto/cheap/weak, auto/strong/strong */
    assert_string_equal(rs.model[0], "cheap");
    assert_int_equal(rs.t[0].requests, 1);
    assert_int_equal(rs.t[0].feedback, 0);
    assert_string_equal(rs.model[1], "strong");
    assert_int_equal(rs.t[1].requests, 3);
    assert_int_equal(rs.t[1].errors, 1);
    assert_int_equal(rs.t[1].cost_nano_usd, 300);
    assert_int_equal(rs.t[1].feedback, 2);
    assert_true(fabs(rs.t[1].feedback_mean - 0.5) < 1e-12);
    assert_true(fabs(rs.t[1].score_mean - 0.5) < 1e-12);
    br_store_close(s);
    tmpdb_remove(&t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing_columns),   cmocka_unit_test(test_migrates_version_1),
        cmocka_unit_test(test_feedback),          cmocka_unit_test(test_thresholds),
        cmocka_unit_test(test_bodies_and_report),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("store_route", tests, NULL, NULL);
}
