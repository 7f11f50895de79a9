/* SPDX-License-Identifier: MIT */
/*
 * store/: real SQLite files in a temporary directory. Round trips, batching (counted through
 * stats.transactions), backpressure with the writer held on a real write lock taken by another
 * connection, flush and close semantics, reopening, totals, database errors that must be
 * counted and logged, several logging threads, and a SIGKILLed child whose acknowledged rows
 * must all be on disk.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/err.h"
#include "core/log.h"
#include "store/store.h"

/* ---- fixtures ---- */

struct tmpdb {
    char dir[512];
    char path[600];
};

static void tmpdb_make(struct tmpdb *t)
{
    (void)snprintf(t->dir, sizeof(t->dir), "%s/tmp-store-XXXXXX", BR_BINARY_DIR);
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

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls until stats.written reaches want (never used for ordering, only to wait for it). */
static void wait_written(br_store *s, uint64_t want)
{
    struct br_store_stats st;
    for (int i = 0; i < 15000; i++) {
        br_store_stats_get(s, &st);
        if (st.written >= want) {
            return;
        }
        sleep_ms(1);
    }
    fail_msg("written stayed below %llu", (unsigned long long)want);
}

static void make_row(struct br_log_row *r, char *idbuf, size_t idlen, const char *prefix, int i)
{
    (void)snprintf(idbuf, idlen, "%s-%06d", prefix, i);
    memset(r, 0, sizeof(*r));
    r->id = idbuf;
    r->ts_ms = 1700000000000LL + i;
    r->model = "m";
    r->provider = "p";
    r->endpoint = "/v1/chat/completions";
    r->status = 200;
    r->prompt_tokens = i;
    r->completion_tokens = 2 * (int64_t)i;
    r->cost_nano_usd = 1000 + i;
    r->latency_us = 100;
    r->ttft_us = -1;
    r->upstream_latency_us = -1;
}

static int count_cb(void *user, const struct br_log_row *row)
{
    (void)row;
    (*(int *)user)++;
    return 0;
}

static int count_rows(const char *path)
{
    int n = 0;
    assert_int_equal(br_store_query_recent(path, 0, 0, count_cb, &n), BR_OK);
    return n;
}

/* Captured log lines (the sink runs on the writer thread). */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_text[16384];
static size_t log_len;

static void capture_sink(void *user, const char *line, unsigned long len)
{
    (void)user;
    pthread_mutex_lock(&log_mu);
    if (log_len + len < sizeof(log_text)) {
        memcpy(log_text + log_len, line, len);
        log_len += len;
        log_text[log_len] = '\0';
    }
    pthread_mutex_unlock(&log_mu);
}

static bool log_contains(const char *needle)
{
    pthread_mutex_lock(&log_mu);
    bool found = strstr(log_text, needle) != NULL;
    pthread_mutex_unlock(&log_mu);
    return found;
}

static void capture_start(void)
{
    log_len = 0;
    log_text[0] = '\0';
    br_log_set_sink(capture_sink, NULL);
}

static void exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        fail_msg("%s: %s", sql, msg ? msg : "?");
    }
}

/* ---- tests ---- */

struct collect {
    int n;
    struct br_log_row rows[4];
    char strs[4][8][64];
};

static const char *keep(struct collect *c, int slot, const char *s)
{
    if (!s) {
        return NULL;
    }
    (void)snprintf(c->strs[c->n][slot], sizeof(c->strs[0][0]), "%s", s);
    return c->strs[c->n][slot];
}

static int collect_cb(void *user, const struct br_log_row *row)
{
    struct collect *c = user;
    if (c->n >= 4) {
        return 0;
    }
    struct br_log_row *r = &c->rows[c->n];
    *r = *row;
    r->id = keep(c, 0, row->id);
    r->key_id = keep(c, 1, row->key_id);
    r->model = keep(c, 2, row->model);
    r->provider = keep(c, 3, row->provider);
    r->route = keep(c, 4, row->route);
    r->endpoint = keep(c, 5, row->endpoint);
    r->error_kind = keep(c, 6, row->error_kind);
    r->upstream_model = keep(c, 7, row->upstream_model);
    c->n++;
    return 0;
}

static void test_roundtrip_all_fields(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);

    struct br_log_row full = {
        .id = "0123456789abcdef0123456789abcdef",
        .ts_ms = 1732700000123LL,
        .key_id = "key-7",
        .model = "gpt-4o",
        .provider = "openai",
        .route = "default",
        .endpoint = "/v1/chat/completions",
        .status = 200,
        .stream = true,
        .prompt_tokens = 120,
        .completion_tokens = 250,
        .cached_tokens = 64,
        .reasoning_tokens = 17,
        .usage_estimated = true,
        .cost_nano_usd = 8700000,
        .latency_us = 1234567,
        .ttft_us = 345678,
        .upstream_latency_us = 1200000,
        .overhead_us = 34567,
        .error_kind = "upstream_timeout_first_byte",
        .upstream_model = "gpt-4o-2024-08-06",
    };
    struct br_log_row nulls = {
        .id = NULL,
        .ts_ms = 1732700000124LL,
        .status = 499,
        .prompt_tokens = INT64_MAX,
        .completion_tokens = INT64_MIN,
        .cost_nano_usd = -5,
        .ttft_us = -1,
        .upstream_latency_us = -1,
    };
    assert_int_equal(br_store_log(s, &full), BR_OK);
    assert_int_equal(br_store_log(s, &nulls), BR_OK);
    assert_int_equal(br_store_flush(s), BR_OK);

    /* Read while the writer is still open (WAL lets readers in). */
    struct collect c = {0};
    assert_int_equal(br_store_query_recent(t.path, 10, 0, collect_cb, &c), BR_OK);
    assert_int_equal(c.n, 2);
    /* Newest first. */
    const struct br_log_row *n = &c.rows[0];
    const struct br_log_row *f = &c.rows[1];
    assert_int_equal(n->ts_ms, nulls.ts_ms);
    assert_null(n->id);
    assert_null(n->key_id);
    assert_null(n->model);
    assert_null(n->provider);
    assert_null(n->route);
    assert_null(n->endpoint);
    assert_null(n->error_kind);
    assert_null(n->upstream_model);
    assert_int_equal(n->status, 499);
    assert_false(n->stream);
    assert_false(n->usage_estimated);
    assert_true(n->prompt_tokens == INT64_MAX);
    assert_true(n->completion_tokens == INT64_MIN);
    assert_int_equal(n->cost_nano_usd, -5);
    assert_int_equal(n->ttft_us, -1);

    assert_string_equal(f->id, full.id);
    assert_int_equal(f->ts_ms, full.ts_ms);
    assert_string_equal(f->key_id, full.key_id);
    assert_string_equal(f->model, full.model);
    assert_string_equal(f->provider, full.provider);
    assert_string_equal(f->route, full.route);
    assert_string_equal(f->endpoint, full.endpoint);
    assert_int_equal(f->status, full.status);
    assert_true(f->stream);
    assert_int_equal(f->prompt_tokens, full.prompt_tokens);
    assert_int_equal(f->completion_tokens, full.completion_tokens);
    assert_int_equal(f->cached_tokens, full.cached_tokens);
    assert_int_equal(f->reasoning_tokens, full.reasoning_tokens);
    assert_true(f->usage_estimated);
    assert_int_equal(f->cost_nano_usd, full.cost_nano_usd);
    assert_int_equal(f->latency_us, full.latency_us);
    assert_int_equal(f->ttft_us, full.ttft_us);
    assert_int_equal(f->upstream_latency_us, full.upstream_latency_us);
    assert_int_equal(f->overhead_us, full.overhead_us);
    assert_string_equal(f->error_kind, full.error_kind);
    assert_string_equal(f->upstream_model, full.upstream_model);

    struct br_store_stats st;
    br_store_stats_get(s, &st);
    assert_int_equal(st.queued, 2);
    assert_int_equal(st.written, 2);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.depth, 0);
    br_store_close(s);

    /* The file is in WAL mode with the documented schema version. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(q, 0), 2);
    sqlite3_finalize(q);
    sqlite3_close(db);
    tmpdb_remove(&t);
}

static void test_long_strings_truncated(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    static char ascii[2001];
    static char euro[1201]; /* 400 x U+20AC, 3 bytes each */
    memset(ascii, 'a', 2000);
    static const char euro_sign[3] = {'\xe2', '\x82', '\xac'};
    for (int i = 0; i < 400; i++) {
        memcpy(&euro[(size_t)i * 3], euro_sign, sizeof(euro_sign));
    }
    struct br_log_row r = {.id = "long", .model = ascii, .upstream_model = euro};
    assert_int_equal(br_store_log(s, &r), BR_OK);
    br_store_close(s);

    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT length(CAST(model AS BLOB)), "
                                        "length(CAST(upstream_model AS BLOB)) FROM requests",
                                        -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(q, 0), BR_STORE_MAX_STR);
    /* 1024 = 341 * 3 + 1: the 342nd character would be cut, so it is dropped whole. */
    assert_int_equal(sqlite3_column_int(q, 1), 1023);
    sqlite3_finalize(q);
    sqlite3_close(db);
    tmpdb_remove(&t);
}

static void test_batching(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    /* The interval is far away: only a full batch (or a flush) makes the writer commit, so
     * 500 rows are exactly 10 transactions of 50, whatever the scheduling. */
    struct br_store_opts o = {
        .path = t.path, .queue_capacity = 1000, .batch_max = 50, .flush_interval_ms = 600000};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    char id[32];
    struct br_log_row r;
    for (int i = 0; i < 500; i++) {
        make_row(&r, id, sizeof(id), "b", i);
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    wait_written(s, 500);
    struct br_store_stats st;
    br_store_stats_get(s, &st);
    assert_int_equal(st.written, 500);
    assert_int_equal(st.transactions, 10);
    /* A partial batch waits for the interval; a flush commits it as one more transaction. */
    for (int i = 500; i < 507; i++) {
        make_row(&r, id, sizeof(id), "b", i);
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    br_store_stats_get(s, &st);
    assert_int_equal(st.written, 500);
    assert_int_equal(st.depth, 7);
    assert_int_equal(br_store_flush(s), BR_OK);
    br_store_stats_get(s, &st);
    assert_int_equal(st.written, 507);
    assert_int_equal(st.transactions, 11);
    assert_int_equal(st.depth, 0);
    br_store_close(s);
    assert_int_equal(count_rows(t.path), 507);
    tmpdb_remove(&t);
}

static void test_interval_commits_without_flush(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path, .batch_max = 512, .flush_interval_ms = 5};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    char id[32];
    struct br_log_row r;
    for (int i = 0; i < 3; i++) {
        make_row(&r, id, sizeof(id), "i", i);
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    wait_written(s, 3); /* nobody flushes: the interval alone commits the partial batch */
    assert_int_equal(count_rows(t.path), 3);
    br_store_close(s);
    tmpdb_remove(&t);
}

static void test_queue_full_busy(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path,
                              .queue_capacity = 4,
                              .batch_max = 2,
                              .flush_interval_ms = 1,
                              .busy_timeout_ms = 50};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    capture_start();

    /* Another connection takes the write lock: the writer blocks in BEGIN IMMEDIATE, retrying
     * (and logging) while it holds its batch. */
    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(t.path, &other), SQLITE_OK);
    exec_sql(other, "BEGIN IMMEDIATE");

    char id[32];
    struct br_log_row r;
    make_row(&r, id, sizeof(id), "q", 0);
    assert_int_equal(br_store_log(s, &r), BR_OK);
    struct br_store_stats st;
    for (int i = 0; i < 15000; i++) { /* wait until the writer has taken row 0 */
        br_store_stats_get(s, &st);
        if (st.depth == 0) {
            break;
        }
        sleep_ms(1);
    }
    assert_int_equal(st.depth, 0);
    assert_false(br_store_queue_full(s));
    for (int i = 1; i <= 4; i++) {
        make_row(&r, id, sizeof(id), "q", i);
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    assert_true(br_store_queue_full(s));
    for (int i = 5; i < 8; i++) {
        make_row(&r, id, sizeof(id), "q", i);
        assert_int_equal(br_store_log(s, &r), BR_ERR_BUSY);
    }
    br_store_stats_get(s, &st);
    assert_int_equal(st.queued, 5);
    assert_int_equal(st.dropped, 3);
    assert_int_equal(st.written, 0);
    assert_int_equal(st.depth, 4);

    /* The writer gives up on its first attempt after busy_timeout_ms, logs, and keeps its batch
     * for the next attempt. */
    for (int i = 0; i < 15000 && !log_contains("event=store_busy"); i++) {
        sleep_ms(1);
    }
    assert_true(log_contains("event=store_busy"));
    br_store_stats_get(s, &st);
    assert_int_equal(st.failed, 0);

    /* Release the lock: everything accepted gets written, nothing refused does. */
    exec_sql(other, "ROLLBACK");
    assert_int_equal(br_store_flush(s), BR_OK);
    br_store_stats_get(s, &st);
    assert_int_equal(st.written, 5);
    assert_int_equal(st.failed, 0);
    assert_false(br_store_queue_full(s));
    make_row(&r, id, sizeof(id), "q", 99);
    assert_int_equal(br_store_log(s, &r), BR_OK);
    br_store_close(s);
    br_log_set_sink(NULL, NULL);
    sqlite3_close(other);
    assert_int_equal(count_rows(t.path), 6);
    tmpdb_remove(&t);
}

static void test_flush_semantics(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path, .batch_max = 1000, .flush_interval_ms = 600000};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    assert_int_equal(br_store_flush(s), BR_OK); /* nothing queued: returns at once */
    char id[32];
    struct br_log_row r;
    for (int i = 0; i < 10; i++) {
        make_row(&r, id, sizeof(id), "f", i);
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    struct br_store_stats st;
    br_store_stats_get(s, &st);
    assert_int_equal(st.written, 0); /* neither a full batch nor the interval yet */
    assert_int_equal(st.depth, 10);
    assert_int_equal(br_store_flush(s), BR_OK);
    br_store_stats_get(s, &st);
    assert_int_equal(st.written, 10);
    assert_int_equal(st.transactions, 1);
    assert_int_equal(count_rows(t.path), 10);
    assert_int_equal(br_store_flush(s), BR_OK);
    br_store_close(s);
    tmpdb_remove(&t);
}

static void test_close_drains(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {
        .path = t.path, .queue_capacity = 1000, .batch_max = 64, .flush_interval_ms = 600000};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    char id[32];
    struct br_log_row r;
    for (int i = 0; i < 300; i++) {
        make_row(&r, id, sizeof(id), "c", i);
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    br_store_close(s); /* no flush: close must commit all 300 */
    assert_int_equal(count_rows(t.path), 300);
    br_store_close(NULL);
    tmpdb_remove(&t);
}

static void test_reopen_existing(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path};
    char id[32];
    struct br_log_row r;
    for (int round = 0; round < 3; round++) {
        br_store *s = NULL;
        assert_int_equal(br_store_open(&o, &s), BR_OK);
        for (int i = 0; i < 20; i++) {
            make_row(&r, id, sizeof(id), "r", round * 100 + i);
            assert_int_equal(br_store_log(s, &r), BR_OK);
        }
        br_store_close(s);
        assert_int_equal(count_rows(t.path), 20 * (round + 1));
    }
    /* A file from a newer schema is refused by the writer and the readers. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    exec_sql(db, "PRAGMA user_version=99");
    sqlite3_close(db);
    br_log_set_level(BR_LOG_ERR);
    capture_start();
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_ERR_UNSUPPORTED);
    assert_null(s);
    int n = 0;
    assert_int_equal(br_store_query_recent(t.path, 0, 0, count_cb, &n), BR_ERR_UNSUPPORTED);
    br_log_set_sink(NULL, NULL);
    br_log_set_level(BR_LOG_INFO);
    assert_true(log_contains("event=store_schema_unsupported"));
    tmpdb_remove(&t);
}

struct total_seen {
    int n;
    char group[8][32];
    struct br_store_total t[8];
};

static int totals_cb(void *user, const struct br_store_total *t)
{
    struct total_seen *ts = user;
    if (ts->n < 8) {
        (void)snprintf(ts->group[ts->n], sizeof(ts->group[0]), "%s", t->group);
        ts->t[ts->n] = *t;
        ts->t[ts->n].group = ts->group[ts->n];
        ts->n++;
    }
    return 0;
}

static void test_totals_grouping(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    /* 2024-03-01T00:00:00Z = 1709251200000 ms. */
    const int64_t day1 = 1709251200000LL;
    const int64_t day2 = day1 + 86400000LL;
    struct spec {
        const char *model;
        const char *key;
        int64_t ts;
        int status;
        int64_t pt, ct, cost, lat;
    } rows[] = {
        {"cheap", "k1", day1 + 1, 200, 10, 20, 100, 1000},
        {"cheap", "k1", day1 + 2, 500, 5, 0, 0, 3000},
        {"cheap", NULL, day2 + 5, 200, 1, 1, 50, 2000},
        {"big", "k2", day1 + 3, 200, 100, 200, 5000, 10000},
        {"big", "k1", day2 - 1, 429, 0, 0, 0, 500},
        {"mid", "k2", day2 + 7, 200, 7, 7, 700, 4000},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct br_log_row r = {.id = "x",
                               .model = rows[i].model,
                               .key_id = rows[i].key,
                               .ts_ms = rows[i].ts,
                               .status = rows[i].status,
                               .prompt_tokens = rows[i].pt,
                               .completion_tokens = rows[i].ct,
                               .cost_nano_usd = rows[i].cost,
                               .latency_us = rows[i].lat};
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    br_store_close(s);

    struct total_seen ts = {0};
    assert_int_equal(br_store_query_totals(t.path, BR_STORE_GROUP_MODEL, 0, totals_cb, &ts), BR_OK);
    assert_int_equal(ts.n, 3);
    assert_string_equal(ts.t[0].group, "big");
    assert_int_equal(ts.t[0].requests, 2);
    assert_int_equal(ts.t[0].errors, 1);
    assert_int_equal(ts.t[0].prompt_tokens, 100);
    assert_int_equal(ts.t[0].completion_tokens, 200);
    assert_int_equal(ts.t[0].cost_nano_usd, 5000);
    assert_true(ts.t[0].mean_latency_ms > 5.2499 && ts.t[0].mean_latency_ms < 5.2501);
    assert_string_equal(ts.t[1].group, "mid");
    assert_int_equal(ts.t[1].cost_nano_usd, 700);
    assert_string_equal(ts.t[2].group, "cheap");
    assert_int_equal(ts.t[2].requests, 3);
    assert_int_equal(ts.t[2].errors, 1);
    assert_int_equal(ts.t[2].prompt_tokens, 16);
    assert_int_equal(ts.t[2].completion_tokens, 21);
    assert_int_equal(ts.t[2].cost_nano_usd, 150);
    assert_true(ts.t[2].mean_latency_ms > 1.9999 && ts.t[2].mean_latency_ms < 2.0001);

    memset(&ts, 0, sizeof(ts));
    assert_int_equal(br_store_query_totals(t.path, BR_STORE_GROUP_KEY, 0, totals_cb, &ts), BR_OK);
    assert_int_equal(ts.n, 3);
    assert_string_equal(ts.t[0].group, "k2");
    assert_int_equal(ts.t[0].cost_nano_usd, 5700);
    assert_string_equal(ts.t[1].group, "k1");
    assert_int_equal(ts.t[1].requests, 3);
    assert_int_equal(ts.t[1].errors, 2);
    assert_int_equal(ts.t[1].cost_nano_usd, 100);
    assert_string_equal(ts.t[2].group, "-"); /* no key id */
    assert_int_equal(ts.t[2].cost_nano_usd, 50);

    memset(&ts, 0, sizeof(ts));
    assert_int_equal(br_store_query_totals(t.path, BR_STORE_GROUP_DAY, 0, totals_cb, &ts), BR_OK);
    assert_int_equal(ts.n, 2);
    assert_string_equal(ts.t[0].group, "2024-03-01");
    assert_int_equal(ts.t[0].requests, 4);
    assert_int_equal(ts.t[0].cost_nano_usd, 5100);
    assert_string_equal(ts.t[1].group, "2024-03-02");
    assert_int_equal(ts.t[1].requests, 2);
    assert_int_equal(ts.t[1].cost_nano_usd, 750);

    /* since_ms keeps rows at or after it. */
    memset(&ts, 0, sizeof(ts));
    assert_int_equal(br_store_query_totals(t.path, BR_STORE_GROUP_DAY, day2, totals_cb, &ts),
                     BR_OK);
    assert_int_equal(ts.n, 1);
    assert_string_equal(ts.t[0].group, "2024-03-02");

    /* Ties in cost are ordered by group name. */
    memset(&ts, 0, sizeof(ts));
    assert_int_equal(br_store_query_totals(t.path, BR_STORE_GROUP_MODEL, day2 + 6, totals_cb, &ts),
                     BR_OK);
    assert_int_equal(ts.n, 1);
    assert_string_equal(ts.t[0].group, "mid");

    assert_int_equal(br_store_query_totals(t.path, (enum br_store_group)77, 0, totals_cb, &ts),
                     BR_ERR_INVAL);
    tmpdb_remove(&t);
}

static int stop_after_two(void *user, const struct br_log_row *row)
{
    (void)row;
    int *n = user;
    return ++*n == 2 ? 42 : 0;
}

static int first_ts_cb(void *user, const struct br_log_row *row)
{
    int64_t *ts = user;
    if (*ts == 0) {
        *ts = row->ts_ms;
    }
    return 0;
}

static void test_recent_limit_since(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    char id[32];
    struct br_log_row r;
    for (int i = 0; i < 50; i++) {
        make_row(&r, id, sizeof(id), "l", i);
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    br_store_close(s);
    int n = 0;
    assert_int_equal(br_store_query_recent(t.path, 7, 0, count_cb, &n), BR_OK);
    assert_int_equal(n, 7);
    n = 0;
    assert_int_equal(br_store_query_recent(t.path, 0, 1700000000000LL + 40, count_cb, &n), BR_OK);
    assert_int_equal(n, 10);
    int64_t first = 0;
    assert_int_equal(br_store_query_recent(t.path, 3, 0, first_ts_cb, &first), BR_OK);
    assert_int_equal(first, 1700000000000LL + 49);
    n = 0;
    assert_int_equal(br_store_query_recent(t.path, 0, 0, stop_after_two, &n), 42);
    assert_int_equal(n, 2);
    tmpdb_remove(&t);
}

struct thread_arg {
    br_store *s;
    int index;
    int rows;
    int busy;
};

static void *log_thread(void *p)
{
    struct thread_arg *a = p;
    char key[16];
    char id[32];
    (void)snprintf(key, sizeof(key), "t%d", a->index);
    for (int i = 0; i < a->rows; i++) {
        struct br_log_row r;
        make_row(&r, id, sizeof(id), key, i);
        r.key_id = key;
        int rc = br_store_log(a->s, &r);
        if (rc == BR_ERR_BUSY) {
            a->busy++;
        } else if (rc != BR_OK) {
            a->busy = -1000000;
        }
        if (i % 500 == 0 && br_store_flush(a->s) != BR_OK) {
            a->busy = -1000000;
        }
    }
    return NULL;
}

static void test_concurrent_logging(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {
        .path = t.path, .queue_capacity = 20000, .batch_max = 128, .flush_interval_ms = 2};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    enum { N = 4, ROWS = 2500 };
    pthread_t th[N];
    struct thread_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct thread_arg){s, i, ROWS, 0};
        assert_int_equal(pthread_create(&th[i], NULL, log_thread, &args[i]), 0);
    }
    struct br_store_stats st;
    for (int i = 0; i < 50; i++) {
        br_store_stats_get(s, &st); /* readers of the counters race with the writers */
        (void)br_store_queue_full(s);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].busy, 0);
    }
    assert_int_equal(br_store_flush(s), BR_OK);
    br_store_stats_get(s, &st);
    assert_int_equal(st.queued, N * ROWS);
    assert_int_equal(st.written, N * ROWS);
    br_store_close(s);

    struct total_seen ts = {0};
    assert_int_equal(br_store_query_totals(t.path, BR_STORE_GROUP_KEY, 0, totals_cb, &ts), BR_OK);
    assert_int_equal(ts.n, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(ts.t[i].requests, ROWS);
    }
    tmpdb_remove(&t);
}

static void test_db_errors_counted_and_logged(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path, .flush_interval_ms = 1};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    capture_start();

    /* A trigger refuses one row: that row fails on its own, the rest of its batch commits. */
    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(t.path, &other), SQLITE_OK);
    exec_sql(other, "CREATE TRIGGER no_boom BEFORE INSERT ON requests WHEN NEW.model = 'boom' "
                    "BEGIN SELECT RAISE(ABORT, 'boom refused'); END");
    char id[32];
    struct br_log_row r;
    for (int i = 0; i < 5; i++) {
        make_row(&r, id, sizeof(id), "e", i);
        r.model = i == 2 ? "boom" : "fine";
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    assert_int_equal(br_store_flush(s), BR_ERR_IO);
    struct br_store_stats st;
    br_store_stats_get(s, &st);
    assert_int_equal(st.written, 4);
    assert_int_equal(st.failed, 1);
    assert_true(log_contains("event=store_row_rejected"));
    assert_true(log_contains("boom refused"));
    assert_int_equal(count_rows(t.path), 4);

    /* The table disappears: the whole batch fails, is counted and logged. */
    exec_sql(other, "DROP TABLE requests");
    for (int i = 10; i < 13; i++) {
        make_row(&r, id, sizeof(id), "e", i);
        assert_int_equal(br_store_log(s, &r), BR_OK);
    }
    assert_int_equal(br_store_flush(s), BR_ERR_IO);
    br_store_stats_get(s, &st);
    assert_int_equal(st.written, 4);
    assert_int_equal(st.failed, 4);
    assert_true(log_contains("event=store_write_failed rows=3"));
    assert_true(log_contains("no such table")); /* SQLite's message, not ROLLBACK's */
    assert_int_equal(st.queued, st.written + st.failed);
    br_store_close(s);
    br_log_set_sink(NULL, NULL);
    sqlite3_close(other);
    tmpdb_remove(&t);
}

static void test_invalid_args(void **state)
{
    (void)state;
    br_store *s = NULL;
    struct br_store_opts o = {0};
    assert_int_equal(br_store_open(NULL, &s), BR_ERR_INVAL);
    assert_int_equal(br_store_open(&o, &s), BR_ERR_INVAL);
    o.path = "";
    assert_int_equal(br_store_open(&o, &s), BR_ERR_INVAL);
    br_log_set_level(BR_LOG_ERR);
    capture_start();
    o.path = "/nonexistent-dir-for-brigade/x.db";
    assert_int_equal(br_store_open(&o, &s), BR_ERR_IO);
    assert_null(s);
    br_log_set_sink(NULL, NULL);
    br_log_set_level(BR_LOG_INFO);
    assert_true(log_contains("event=store_open_failed"));
    assert_int_equal(br_store_log(NULL, &(struct br_log_row){0}), BR_ERR_INVAL);
    assert_int_equal(br_store_flush(NULL), BR_ERR_INVAL);
    int n = 0;
    assert_int_equal(br_store_query_recent("/nonexistent-dir-for-brigade/x.db", 0, 0, count_cb, &n),
                     BR_ERR_NOTFOUND);
    assert_int_equal(br_store_query_totals("/nonexistent-dir-for-brigade/x.db", BR_STORE_GROUP_DAY,
                                           0, totals_cb, &n),
                     BR_ERR_NOTFOUND);
    assert_int_equal(br_store_query_recent(NULL, 0, 0, count_cb, &n), BR_ERR_INVAL);

    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    o.path = t.path;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    assert_int_equal(br_store_log(s, NULL), BR_ERR_INVAL);
    br_store_close(s);
    /* A file the process cannot write is refused at open, not at every batch (root writes
     * anyway, so this part needs an unprivileged user). */
    if (geteuid() != 0) {
        assert_int_equal(chmod(t.path, 0444), 0);
        s = NULL;
        br_log_set_level(BR_LOG_ERR);
        capture_start();
        assert_int_equal(br_store_open(&o, &s), BR_ERR_IO);
        br_log_set_sink(NULL, NULL);
        br_log_set_level(BR_LOG_INFO);
        assert_null(s);
        assert_true(log_contains("what=read_only"));
    }
    tmpdb_remove(&t);
}

static void test_alloc_failures(void **state)
{
    (void)state;
#ifdef NDEBUG
    skip();
#else
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    struct br_store_opts o = {.path = t.path};
    size_t live0 = br_alloc_live_bytes();
    bool opened = false;
    for (uint64_t n = 1; n < 50 && !opened; n++) {
        br_store *s = NULL;
        br_alloc_fail_at(n);
        int rc = br_store_open(&o, &s);
        br_alloc_fail_at(0);
        if (rc == BR_OK) {
            opened = true;
            /* A failed row copy is refused and counted, never half-queued. */
            struct br_log_row r = {.id = "x", .model = "m"};
            br_alloc_fail_at(1);
            assert_int_equal(br_store_log(s, &r), BR_ERR_NOMEM);
            br_alloc_fail_at(0);
            assert_int_equal(br_store_log(s, &r), BR_OK);
            struct br_store_stats st;
            br_store_flush(s);
            br_store_stats_get(s, &st);
            assert_int_equal(st.dropped, 1);
            assert_int_equal(st.written, 1);
            br_store_close(s);
        } else {
            assert_int_equal(rc, BR_ERR_NOMEM);
            assert_null(s);
        }
        assert_int_equal(br_alloc_live_bytes(), live0); /* nothing leaked on any path */
    }
    assert_true(opened);
    tmpdb_remove(&t);
#endif
}

/* The child logs, waits for the flush acknowledgement, reports it, and keeps logging until it
 * is killed; every acknowledged row must be in the file afterwards. */
static void durability_child(const char *path, int ack_fd)
{
    struct br_store_opts o = {.path = path, .batch_max = 64, .flush_interval_ms = 1};
    br_store *s = NULL;
    if (br_store_open(&o, &s) != BR_OK) {
        _exit(2);
    }
    char id[32];
    struct br_log_row r;
    for (int i = 0; i < 300; i++) {
        make_row(&r, id, sizeof(id), "ack", i);
        if (br_store_log(s, &r) != BR_OK) {
            _exit(3);
        }
    }
    if (br_store_flush(s) != BR_OK) {
        _exit(4);
    }
    if (write(ack_fd, "A", 1) != 1) {
        _exit(5);
    }
    for (int i = 0;; i++) {
        make_row(&r, id, sizeof(id), "unack", i);
        (void)br_store_log(s, &r);
        if (i % 50 == 0) {
            sleep_ms(1);
        }
    }
}

struct ack_count {
    int ack;
    int other;
};

static int ack_cb(void *user, const struct br_log_row *row)
{
    struct ack_count *c = user;
    if (row->id && strncmp(row->id, "ack-", 4) == 0) {
        c->ack++;
    } else {
        c->other++;
    }
    return 0;
}

static void test_durability_sigkill(void **state)
{
    (void)state;
    struct tmpdb t = {{0}, {0}};
    tmpdb_make(&t);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        durability_child(t.path, fds[1]);
        _exit(1);
    }
    close(fds[1]);
    char c = 0;
    ssize_t k;
    do {
        k = read(fds[0], &c, 1);
    } while (k < 0 && errno == EINTR);
    close(fds[0]);
    sleep_ms(20); /* let the child be in the middle of later batches when it dies */
    kill(pid, SIGKILL);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(k, 1);
    assert_int_equal(c, 'A');
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    struct ack_count cnt = {0};
    assert_int_equal(br_store_query_recent(t.path, 0, 0, ack_cb, &cnt), BR_OK);
    assert_int_equal(cnt.ack, 300);
    /* And the file is usable again by a new writer. */
    struct br_store_opts o = {.path = t.path};
    br_store *s = NULL;
    assert_int_equal(br_store_open(&o, &s), BR_OK);
    struct br_log_row r = {.id = "after", .ts_ms = 1};
    assert_int_equal(br_store_log(s, &r), BR_OK);
    br_store_close(s);
    struct ack_count cnt2 = {0};
    assert_int_equal(br_store_query_recent(t.path, 0, 0, ack_cb, &cnt2), BR_OK);
    assert_int_equal(cnt2.ack, 300);
    assert_int_equal(cnt2.other, cnt.other + 1);
    tmpdb_remove(&t);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_all_fields),
        cmocka_unit_test(test_long_strings_truncated),
        cmocka_unit_test(test_batching),
        cmocka_unit_test(test_interval_commits_without_flush),
        cmocka_unit_test(test_queue_full_busy),
        cmocka_unit_test(test_flush_semantics),
        cmocka_unit_test(test_close_drains),
        cmocka_unit_test(test_reopen_existing),
        cmocka_unit_test(test_totals_grouping),
        cmocka_unit_test(test_recent_limit_since),
        cmocka_unit_test(test_concurrent_logging),
        cmocka_unit_test(test_db_errors_counted_and_logged),
        cmocka_unit_test(test_invalid_args),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_durability_sigkill),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
