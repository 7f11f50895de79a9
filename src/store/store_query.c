/* SPDX-License-Identifier: MIT */
/*
 * Read side of the request log, for the CLI: each call opens its own read-only connection, so
 * it works next to a running writer (WAL readers never block the writer) or on a copied file.
 */
#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "core/log.h"
#include "store/store.h"
#include "store/store_int.h"

static int open_ro(const char *path, sqlite3 **out)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        return e == ENOENT ? BR_ERR_NOTFOUND : br_err_from_errno(e);
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        br_log(BR_LOG_ERR, NULL, "event=store_open_failed path=\"%s\" mode=ro msg=\"%s\"", path,
               db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return rc == SQLITE_NOMEM ? BR_ERR_NOMEM : BR_ERR_IO;
    }
    sqlite3_busy_timeout(db, 5000);
    int version = 0;
    int brc = br__store_schema_version(db, &version);
    if (brc == BR_OK && version != BR__STORE_SCHEMA_VERSION) {
        br_log(BR_LOG_ERR, NULL, "event=store_schema_unsupported path=\"%s\" version=%d", path,
               version);
        brc = BR_ERR_UNSUPPORTED;
    }
    if (brc != BR_OK) {
        sqlite3_close(db);
        return brc;
    }
    *out = db;
    return BR_OK;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, out, NULL);
    if (rc != SQLITE_OK) {
        br_log(BR_LOG_ERR, NULL, "event=store_query_failed what=prepare msg=\"%s\"",
               sqlite3_errmsg(db));
        return br__store_err(rc) == BR_ERR_NOMEM ? BR_ERR_NOMEM : BR_ERR_IO;
    }
    return BR_OK;
}

static const char *col_text(sqlite3_stmt *st, int col)
{
    return (const char *)sqlite3_column_text(st, col);
}

/* A REAL column; NULL reads as NAN. */
static double col_real(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? NAN : sqlite3_column_double(st, col);
}

static void read_row(sqlite3_stmt *st, struct br_log_row *r)
{
    r->id = col_text(st, BR__STORE_COL_id);
    r->ts_ms = sqlite3_column_int64(st, BR__STORE_COL_ts_ms);
    r->key_id = col_text(st, BR__STORE_COL_key_id);
    r->model = col_text(st, BR__STORE_COL_model);
    r->provider = col_text(st, BR__STORE_COL_provider);
    r->route = col_text(st, BR__STORE_COL_route);
    r->endpoint = col_text(st, BR__STORE_COL_endpoint);
    r->status = sqlite3_column_int(st, BR__STORE_COL_status);
    r->stream = sqlite3_column_int(st, BR__STORE_COL_stream) != 0;
    r->prompt_tokens = sqlite3_column_int64(st, BR__STORE_COL_prompt_tokens);
    r->completion_tokens = sqlite3_column_int64(st, BR__STORE_COL_completion_tokens);
    r->cached_tokens = sqlite3_column_int64(st, BR__STORE_COL_cached_tokens);
    r->reasoning_tokens = sqlite3_column_int64(st, BR__STORE_COL_reasoning_tokens);
    r->usage_estimated = sqlite3_column_int(st, BR__STORE_COL_usage_estimated) != 0;
    r->cost_nano_usd = sqlite3_column_int64(st, BR__STORE_COL_cost_nano_usd);
    r->latency_us = sqlite3_column_int64(st, BR__STORE_COL_latency_us);
    r->ttft_us = sqlite3_column_int64(st, BR__STORE_COL_ttft_us);
    r->upstream_latency_us = sqlite3_column_int64(st, BR__STORE_COL_upstream_latency_us);
    r->overhead_us = sqlite3_column_int64(st, BR__STORE_COL_overhead_us);
    r->error_kind = col_text(st, BR__STORE_COL_error_kind);
    r->upstream_model = col_text(st, BR__STORE_COL_upstream_model);
    r->policy = col_text(st, BR__STORE_COL_policy);
    r->decision = col_text(st, BR__STORE_COL_decision);
    r->score = col_real(st, BR__STORE_COL_score);
    r->threshold = col_real(st, BR__STORE_COL_threshold);
    r->reason = col_text(st, BR__STORE_COL_reason);
    r->cascade = col_text(st, BR__STORE_COL_cascade);
    r->confidence = col_real(st, BR__STORE_COL_confidence);
}

/* Steps st to the end, calling emit for each row; a non-zero emit result stops and is returned. */
static int run(sqlite3 *db, sqlite3_stmt *st, int (*emit)(sqlite3_stmt *st, void *ctx), void *ctx)
{
    for (;;) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            return BR_OK;
        }
        if (rc != SQLITE_ROW) {
            br_log(BR_LOG_ERR, NULL, "event=store_query_failed what=step sqlite_rc=%d msg=\"%s\"",
                   rc, sqlite3_errmsg(db));
            return br__store_err(rc) == BR_ERR_NOMEM ? BR_ERR_NOMEM : BR_ERR_IO;
        }
        int urc = emit(st, ctx);
        if (urc != 0) {
            return urc;
        }
    }
}

struct recent_ctx {
    int (*fn)(void *user, const struct br_log_row *row);
    void *user;
};

static int emit_recent(sqlite3_stmt *st, void *ctx)
{
    struct recent_ctx *c = ctx;
    struct br_log_row r;
    read_row(st, &r);
    return c->fn(c->user, &r);
}

int br_store_query_recent(const char *path, int limit, int64_t since_ms,
                          int (*fn)(void *user, const struct br_log_row *row), void *user)
{
    if (!path || !fn) {
        return BR_ERR_INVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = open_ro(path, &db);
    if (rc != BR_OK) {
        return rc;
    }
    char cols[BR__STORE_SQL_MAX];
    char sql[BR__STORE_SQL_MAX + 128];
    br__store_sql_columns(cols);
    (void)snprintf(
        sql, sizeof(sql),
        "SELECT %s FROM requests WHERE ts_ms >= ?1 ORDER BY ts_ms DESC, rowid DESC LIMIT ?2", cols);
    rc = prepare(db, sql, &st);
    if (rc != BR_OK) {
        goto out;
    }
    sqlite3_bind_int64(st, 1, since_ms > 0 ? since_ms : INT64_MIN);
    sqlite3_bind_int64(st, 2, limit > 0 ? limit : -1);
    struct recent_ctx c = {fn, user};
    rc = run(db, st, emit_recent, &c);

out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

struct totals_ctx {
    int (*fn)(void *user, const struct br_store_total *t);
    void *user;
};

static int emit_total(sqlite3_stmt *st, void *ctx)
{
    struct totals_ctx *c = ctx;
    struct br_store_total t;
    t.group = col_text(st, 0);
    if (!t.group) {
        t.group = "-";
    }
    t.requests = sqlite3_column_int64(st, 1);
    t.errors = sqlite3_column_int64(st, 2);
    t.prompt_tokens = sqlite3_column_int64(st, 3);
    t.completion_tokens = sqlite3_column_int64(st, 4);
    t.cost_nano_usd = sqlite3_column_int64(st, 5);
    t.mean_latency_ms = sqlite3_column_double(st, 6);
    return c->fn(c->user, &t);
}

int br_store_query_totals(const char *path, enum br_store_group group, int64_t since_ms,
                          int (*fn)(void *user, const struct br_store_total *t), void *user)
{
    const char *expr;
    switch (group) {
    case BR_STORE_GROUP_MODEL:
        expr = "COALESCE(model, '-')";
        break;
    case BR_STORE_GROUP_KEY:
        expr = "COALESCE(key_id, '-')";
        break;
    case BR_STORE_GROUP_DAY:
        /* Floor division so that times before 1970 land on the right day too. */
        expr = "strftime('%Y-%m-%d', (ts_ms - ((ts_ms % 1000) + 1000) % 1000) / 1000, "
               "'unixepoch')";
        break;
    default:
        return BR_ERR_INVAL;
    }
    if (!path || !fn) {
        return BR_ERR_INVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = open_ro(path, &db);
    if (rc != BR_OK) {
        return rc;
    }
    char sql[512];
    (void)snprintf(sql, sizeof(sql),
                   "SELECT %s AS g, COUNT(*), COALESCE(SUM(status >= 400), 0), "
                   "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
                   "COALESCE(SUM(cost_nano_usd), 0), COALESCE(AVG(latency_us), 0) / 1000.0 "
                   "FROM requests WHERE ts_ms >= ?1 GROUP BY g ORDER BY 6 DESC, g ASC",
                   expr);
    rc = prepare(db, sql, &st);
    if (rc != BR_OK) {
        goto out;
    }
    sqlite3_bind_int64(st, 1, since_ms > 0 ? since_ms : INT64_MIN);
    struct totals_ctx c = {fn, user};
    rc = run(db, st, emit_total, &c);

out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/* ---------------------------------------------------------------- thresholds */

static int emit_threshold(sqlite3_stmt *st, void *ctx)
{
    struct {
        int (*fn)(void *user, const struct br_threshold_row *t);
        void *user;
    } *c = ctx;
    struct br_threshold_row t;
    t.route = col_text(st, 0);
    t.ts_ms = sqlite3_column_int64(st, 1);
    t.config_threshold = col_real(st, 2);
    t.threshold = col_real(st, 3);
    t.reason = col_text(st, 4);
    return c->fn(c->user, &t);
}

static int threshold_query(const char *path, const char *sql, const char *route,
                           int (*fn)(void *user, const struct br_threshold_row *t), void *user)
{
    if (!path || !fn) {
        return BR_ERR_INVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = open_ro(path, &db);
    if (rc != BR_OK) {
        return rc;
    }
    rc = prepare(db, sql, &st);
    if (rc == BR_OK) {
        if (route) {
            sqlite3_bind_text(st, 1, route, -1, SQLITE_STATIC);
        }
        struct {
            int (*fn)(void *user, const struct br_threshold_row *t);
            void *user;
        } c = {fn, user};
        rc = run(db, st, emit_threshold, &c);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

int br_store_query_thresholds(const char *path,
                              int (*fn)(void *user, const struct br_threshold_row *t), void *user)
{
    /* The newest row per route (rowid breaks ties of equal timestamps). */
    return threshold_query(path,
                           "SELECT route, ts_ms, config_threshold, threshold, reason FROM "
                           "route_thresholds t WHERE rowid = (SELECT rowid FROM route_thresholds "
                           "u WHERE u.route = t.route ORDER BY ts_ms DESC, rowid DESC LIMIT 1) "
                           "ORDER BY route",
                           NULL, fn, user);
}

int br_store_query_threshold_history(const char *path, const char *route,
                                     int (*fn)(void *user, const struct br_threshold_row *t),
                                     void *user)
{
    return threshold_query(path,
                           route ? "SELECT route, ts_ms, config_threshold, threshold, reason FROM "
                                   "route_thresholds WHERE route = ?1 ORDER BY ts_ms, rowid"
                                 : "SELECT route, ts_ms, config_threshold, threshold, reason FROM "
                                   "route_thresholds ORDER BY route, ts_ms, rowid",
                           route, fn, user);
}

int br_store_threshold_save(const char *path, const struct br_threshold_row *t)
{
    if (!path || !t || !t->route) {
        return BR_ERR_INVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_close(db);
        return BR_ERR_IO;
    }
    sqlite3_busy_timeout(db, 5000);
    int brc = br__store_schema_ensure(db);
    if (brc == BR_OK) {
        brc = prepare(db,
                      "INSERT INTO route_thresholds(route, ts_ms, config_threshold, threshold, "
                      "reason) VALUES(?1, ?2, ?3, ?4, ?5)",
                      &st);
    }
    if (brc == BR_OK) {
        sqlite3_bind_text(st, 1, t->route, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, t->ts_ms);
        sqlite3_bind_double(st, 3, t->config_threshold);
        sqlite3_bind_double(st, 4, t->threshold);
        if (t->reason) {
            sqlite3_bind_text(st, 5, t->reason, -1, SQLITE_STATIC);
        }
        rc = sqlite3_step(st);
        brc = rc == SQLITE_DONE ? BR_OK : br__store_err(rc);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return brc;
}

/* ---------------------------------------------------------------- routes report */

struct routes_ctx {
    int (*fn)(void *user, const struct br_store_route_total *t);
    void *user;
};

static int emit_route(sqlite3_stmt *st, void *ctx)
{
    struct routes_ctx *c = ctx;
    struct br_store_route_total t;
    t.route = col_text(st, 0);
    t.model = col_text(st, 1);
    t.decision = col_text(st, 2);
    t.requests = sqlite3_column_int64(st, 3);
    t.errors = sqlite3_column_int64(st, 4);
    t.cost_nano_usd = sqlite3_column_int64(st, 5);
    t.feedback = sqlite3_column_int64(st, 6);
    t.feedback_mean = sqlite3_column_double(st, 7);
    t.score_mean = col_real(st, 8);
    return c->fn(c->user, &t);
}

int br_store_query_routes(const char *path, int64_t since_ms,
                          int (*fn)(void *user, const struct br_store_route_total *t), void *user)
{
    if (!path || !fn) {
        return BR_ERR_INVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = open_ro(path, &db);
    if (rc != BR_OK) {
        return rc;
    }
    /* Feedback is joined per request (the latest one per request id counts). */
    rc = prepare(db,
                 "SELECT r.route, COALESCE(r.model, '-'), COALESCE(r.decision, '-'), COUNT(*), "
                 "COALESCE(SUM(r.status >= 400), 0), COALESCE(SUM(r.cost_nano_usd), 0), "
                 "COUNT(f.score), COALESCE(AVG(f.score), 0), AVG(r.score) "
                 "FROM requests r LEFT JOIN (SELECT request_id, score FROM feedback g WHERE "
                 "rowid = (SELECT MAX(rowid) FROM feedback h WHERE h.request_id = g.request_id)) "
                 "f ON f.request_id = r.id WHERE r.route IS NOT NULL AND r.ts_ms >= ?1 "
                 "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                 &st);
    if (rc == BR_OK) {
        sqlite3_bind_int64(st, 1, since_ms > 0 ? since_ms : INT64_MIN);
        struct routes_ctx c = {fn, user};
        rc = run(db, st, emit_route, &c);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/* ---------------------------------------------------------------- export */

struct export_ctx {
    int (*fn)(void *user, const struct br_store_export_row *r);
    void *user;
};

static int emit_export(sqlite3_stmt *st, void *ctx)
{
    struct export_ctx *c = ctx;
    struct br_store_export_row r;
    r.request_id = col_text(st, 0);
    r.ts_ms = sqlite3_column_int64(st, 1);
    r.route = col_text(st, 2);
    r.model = col_text(st, 3);
    r.messages = col_text(st, 4);
    r.answer = col_text(st, 5);
    r.feedback = col_real(st, 6);
    if (!r.messages || !r.answer) {
        return 0;
    }
    return c->fn(c->user, &r);
}

int br_store_query_bodies(const char *path, const struct br_store_export_filter *f,
                          int (*fn)(void *user, const struct br_store_export_row *r), void *user)
{
    if (!path || !fn || !f) {
        return BR_ERR_INVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = open_ro(path, &db);
    if (rc != BR_OK) {
        return rc;
    }
    rc = prepare(db,
                 "SELECT b.request_id, b.ts_ms, b.route, b.model, b.messages, b.answer, "
                 "(SELECT score FROM feedback f WHERE f.request_id = b.request_id ORDER BY "
                 "rowid DESC LIMIT 1) AS fb "
                 "FROM bodies b WHERE b.status = 200 AND b.truncated = 0 AND b.ts_ms >= ?1 "
                 "AND (?2 IS NULL OR b.model = ?2) AND (?3 IS NULL OR b.route = ?3) "
                 "AND (?4 IS NULL OR fb >= ?4) ORDER BY b.ts_ms, b.rowid",
                 &st);
    if (rc == BR_OK) {
        sqlite3_bind_int64(st, 1, f->since_ms > 0 ? f->since_ms : INT64_MIN);
        if (f->model) {
            sqlite3_bind_text(st, 2, f->model, -1, SQLITE_STATIC);
        }
        if (f->route) {
            sqlite3_bind_text(st, 3, f->route, -1, SQLITE_STATIC);
        }
        if (!isnan(f->min_feedback)) {
            sqlite3_bind_double(st, 4, f->min_feedback);
        }
        struct export_ctx c = {fn, user};
        rc = run(db, st, emit_export, &c);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}
