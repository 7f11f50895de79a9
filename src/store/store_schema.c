/* SPDX-License-Identifier: MIT */
/*
 * The request-log schema: table `requests`, one column per field of struct br_log_row, indexes
 * for the CLI's filters (time, model, key) and for lookups by request id (feedback), plus the
 * feedback, route_thresholds and bodies tables; versioned with PRAGMA user_version. A
 * version-1 file is migrated in place (ALTER TABLE ADD COLUMN, new tables); a newer one is
 * refused.
 */
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "store/store_int.h"

int br__store_err(int sqlite_rc)
{
    switch (sqlite_rc & 0xff) {
    case SQLITE_OK:
        return BR_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return BR_ERR_BUSY;
    case SQLITE_NOMEM:
        return BR_ERR_NOMEM;
    default:
        return BR_ERR_IO;
    }
}

int br__store_exec(sqlite3 *db, const char *sql, const char *what)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        br_log(BR_LOG_ERR, NULL, "event=store_sql_failed what=%s sqlite_rc=%d msg=\"%s\"", what, rc,
               msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return br__store_err(rc) == BR_ERR_BUSY ? BR_ERR_BUSY : BR_ERR_IO;
    }
    return BR_OK;
}

int br__store_schema_version(sqlite3 *db, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_ROW) {
        br_log(BR_LOG_ERR, NULL, "event=store_sql_failed what=user_version sqlite_rc=%d msg=\"%s\"",
               rc, sqlite3_errmsg(db));
        sqlite3_finalize(st);
        return BR_ERR_IO;
    }
    *out = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return BR_OK;
}

static void append(char *out, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (*len + n < BR__STORE_SQL_MAX) {
        memcpy(out + *len, s, n + 1);
        *len += n;
    }
}

void br__store_sql_columns(char out[BR__STORE_SQL_MAX])
{
    static const char *const cols[] = {
#define BR__STORE_COL_STR(name, type) #name,
        BR__STORE_COLUMNS(BR__STORE_COL_STR)
#undef BR__STORE_COL_STR
    };
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
        if (i) {
            append(out, &len, ",");
        }
        append(out, &len, cols[i]);
    }
}

void br__store_sql_insert(char out[BR__STORE_SQL_MAX])
{
    char cols[BR__STORE_SQL_MAX];
    br__store_sql_columns(cols);
    size_t len = 0;
    out[0] = '\0';
    append(out, &len, "INSERT INTO requests(");
    append(out, &len, cols);
    append(out, &len, ") VALUES(");
    for (int i = 0; i < BR__STORE_N_COLS; i++) {
        append(out, &len, i ? ",?" : "?");
    }
    append(out, &len, ")");
}

static int create_schema(sqlite3 *db)
{
    char sql[BR__STORE_SQL_MAX * 2];
    size_t len = 0;
    static const char *const defs[] = {
#define BR__STORE_COL_DEF(name, type) #name " " type,
        BR__STORE_COLUMNS(BR__STORE_COL_DEF)
#undef BR__STORE_COL_DEF
    };
    sql[0] = '\0';
    len += (size_t)snprintf(sql + len, sizeof(sql) - len, "CREATE TABLE IF NOT EXISTS requests(");
    for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
        len += (size_t)snprintf(sql + len, sizeof(sql) - len, "%s%s", i ? "," : "", defs[i]);
    }
    (void)snprintf(sql + len, sizeof(sql) - len,
                   ");"
                   /* Two indexes only: each one costs every insert a B-tree update, and the
                    * writer shares the machine with the event loops. Time ranges and request
                    * ids (feedback, support) are looked up; per-model and per-key totals scan
                    * a time range instead. */
                   "CREATE INDEX IF NOT EXISTS requests_ts_ms ON requests(ts_ms);"
                   "CREATE INDEX IF NOT EXISTS requests_id ON requests(id);" BR__STORE_TABLES_V2
                   "PRAGMA user_version=%d;",
                   BR__STORE_SCHEMA_VERSION);
    return br__store_exec(db, sql, "create_schema");
}

/* Version 1 -> 2: the routing columns (appended, so old rows read them as NULL) and the
 * feedback, route_thresholds and bodies tables. */
static int migrate_1_to_2(sqlite3 *db)
{
    static const char *const defs[] = {
#define BR__STORE_COL_DEF(name, type) #name " " type,
        BR__STORE_COLUMNS(BR__STORE_COL_DEF)
#undef BR__STORE_COL_DEF
    };
    char sql[BR__STORE_SQL_MAX * 2];
    size_t len = 0;
    sql[0] = '\0';
    for (size_t i = BR__STORE_V1_COLS; i < sizeof(defs) / sizeof(defs[0]); i++) {
        len += (size_t)snprintf(sql + len, sizeof(sql) - len, "ALTER TABLE requests ADD COLUMN %s;",
                                defs[i]);
    }
    (void)snprintf(sql + len, sizeof(sql) - len, "%s PRAGMA user_version=2;", BR__STORE_TABLES_V2);
    int rc = br__store_exec(db, sql, "migrate_1_to_2");
    if (rc == BR_OK) {
        br_log(BR_LOG_INFO, NULL, "event=store_migrated from=1 to=2");
    }
    return rc;
}

int br__store_schema_ensure(sqlite3 *db)
{
    int version = 0;
    int rc = br__store_schema_version(db, &version);
    if (rc != BR_OK) {
        return rc;
    }
    if (version == BR__STORE_SCHEMA_VERSION) {
        return BR_OK;
    }
    if (version != 0 && version != 1) {
        goto unsupported;
    }
    /* Another process may be creating the schema at the same time: re-check under the lock. */
    rc = br__store_exec(db, "BEGIN IMMEDIATE", "begin_schema");
    if (rc != BR_OK) {
        return rc;
    }
    rc = br__store_schema_version(db, &version);
    if (rc != BR_OK) {
        goto rollback;
    }
    if (version == 0) {
        rc = create_schema(db);
        if (rc != BR_OK) {
            goto rollback;
        }
    } else if (version == 1) {
        rc = migrate_1_to_2(db);
        if (rc != BR_OK) {
            goto rollback;
        }
    } else if (version != BR__STORE_SCHEMA_VERSION) {
        br__store_exec(db, "ROLLBACK", "rollback_schema");
        goto unsupported;
    }
    rc = br__store_exec(db, "COMMIT", "commit_schema");
    if (rc != BR_OK) {
        goto rollback;
    }
    return BR_OK;

rollback:
    br__store_exec(db, "ROLLBACK", "rollback_schema");
    return rc == BR_ERR_NOMEM ? rc : BR_ERR_IO;

unsupported:
    br_log(BR_LOG_ERR, NULL, "event=store_schema_unsupported version=%d supported=%d", version,
           BR__STORE_SCHEMA_VERSION);
    return BR_ERR_UNSUPPORTED;
}
