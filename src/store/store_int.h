/* SPDX-License-Identifier: MIT */
/*
 * Private to src/store: the schema (one X-macro list of the `requests` columns, so that the
 * writer's INSERT and the readers' SELECT cannot drift apart) and helpers shared by the writer
 * and the read side. Never included from outside src/store.
 */
#ifndef BR_STORE_INT_H
#define BR_STORE_INT_H

#include <sqlite3.h>

/* PRAGMA user_version of the schema this build writes and reads. */
#define BR__STORE_SCHEMA_VERSION 2

/* Columns added by schema 2 (ALTER TABLE ADD COLUMN when migrating a version-1 file). */
#define BR__STORE_V1_COLS 21

/* X(column, SQL type), in struct br_log_row order. */
#define BR__STORE_COLUMNS(X)          \
    X(id, "TEXT")                     \
    X(ts_ms, "INTEGER")               \
    X(key_id, "TEXT")                 \
    X(model, "TEXT")                  \
    X(provider, "TEXT")               \
    X(route, "TEXT")                  \
    X(endpoint, "TEXT")               \
    X(status, "INTEGER")              \
    X(stream, "INTEGER")              \
    X(prompt_tokens, "INTEGER")       \
    X(completion_tokens, "INTEGER")   \
    X(cached_tokens, "INTEGER")       \
    X(reasoning_tokens, "INTEGER")    \
    X(usage_estimated, "INTEGER")     \
    X(cost_nano_usd, "INTEGER")       \
    X(latency_us, "INTEGER")          \
    X(ttft_us, "INTEGER")             \
    X(upstream_latency_us, "INTEGER") \
    X(overhead_us, "INTEGER")         \
    X(error_kind, "TEXT")             \
    X(upstream_model, "TEXT")         \
    X(policy, "TEXT")                 \
    X(decision, "TEXT")               \
    X(score, "REAL")                  \
    X(threshold, "REAL")              \
    X(reason, "TEXT")                 \
    X(cascade, "TEXT")                \
    X(confidence, "REAL")

/* Column positions (0-based), e.g. BR__STORE_COL_model. */
enum {
#define BR__STORE_COL_ENUM(name, type) BR__STORE_COL_##name,
    BR__STORE_COLUMNS(BR__STORE_COL_ENUM)
#undef BR__STORE_COL_ENUM
        BR__STORE_N_COLS
};

/* Room for the longest SQL statement the store builds. */
#define BR__STORE_SQL_MAX 2048

/* The other tables of schema 2 (created with the schema, or by the migration from 1). */
#define BR__STORE_TABLES_V2                                                                \
    "CREATE TABLE IF NOT EXISTS feedback(request_id TEXT, ts_ms INTEGER, key_id TEXT, "    \
    "score REAL, comment TEXT, route TEXT, model TEXT, policy TEXT, decision TEXT);"       \
    "CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id);"                 \
    "CREATE TABLE IF NOT EXISTS route_thresholds(route TEXT, ts_ms INTEGER, "              \
    "config_threshold REAL, threshold REAL, reason TEXT);"                                 \
    "CREATE INDEX IF NOT EXISTS route_thresholds_route ON route_thresholds(route, ts_ms);" \
    "CREATE TABLE IF NOT EXISTS bodies(request_id TEXT, ts_ms INTEGER, route TEXT, "       \
    "model TEXT, status INTEGER, messages TEXT, answer TEXT, truncated INTEGER);"          \
    "CREATE INDEX IF NOT EXISTS bodies_request ON bodies(request_id);"

/**
 * Writes "INSERT INTO requests(<columns>) VALUES(?,...)" into out (BR__STORE_SQL_MAX bytes).
 */
void br__store_sql_insert(char out[BR__STORE_SQL_MAX]);

/** Writes "<columns>" (comma separated, in BR__STORE_COLUMNS order) into out. */
void br__store_sql_columns(char out[BR__STORE_SQL_MAX]);

/**
 * Creates the schema when the file has none (user_version 0) and checks the version otherwise.
 * BR_OK, BR_ERR_UNSUPPORTED (another version), BR_ERR_IO (logged). Runs in its own transaction.
 */
int br__store_schema_ensure(sqlite3 *db);

/** Reads PRAGMA user_version into *out. BR_OK or BR_ERR_IO. */
int br__store_schema_version(sqlite3 *db, int *out);

/** Runs one SQL statement without results; logs and returns BR_ERR_IO on failure. */
int br__store_exec(sqlite3 *db, const char *sql, const char *what);

/** Maps an SQLite result code to BR_* (BUSY/LOCKED -> BR_ERR_BUSY, NOMEM, else BR_ERR_IO). */
int br__store_err(int sqlite_rc);

#endif
