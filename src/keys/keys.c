/* SPDX-License-Identifier: MIT */
/*
 * The virtual key store: an in-memory registry (hash table from SHA-256 to key, one mutex per
 * key for its counters and settings) backed by one SQLite table. Admin changes are written
 * synchronously; spend is written by a writer thread that wakes every flush interval (or when
 * br_keys_flush asks) and commits the spend of every key changed since its last pass in one
 * transaction. Debits carry a sequence number so that br_keys_flush can wait for its own.
 */
#include "keys/keys.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "core/map.h"
#include "core/rand.h"

#define WINDOW_S         60 /* RPM/TPM window, one bucket per second */
#define DEFAULT_FLUSH_MS 50u
#define MS_PER_DAY       86400000LL

struct bucket {
    int64_t sec; /* wall second this bucket counts */
    int64_t requests;
    int64_t tokens;
};

struct br_vkey {
    char id[BR_KEYS_ID_LEN + 1];          /* immutable */
    unsigned char hash[BR_KEYS_HASH_LEN]; /* immutable; the map's key */
    int64_t created_ms;                   /* immutable */
    pthread_mutex_t mu;                   /* everything below */
    char *name;
    char **models; /* NULL = all */
    size_t n_models;
    char *metadata_json;
    bool has_budget;
    int64_t budget_nano;
    enum br_keys_period period;
    int64_t rpm;
    int64_t tpm;
    int64_t revoked_ms;
    int64_t spent_nano;      /* in the period starting at period_start_ms */
    int64_t period_start_ms; /* 0 for total */
    int64_t period_end_ms;
    int64_t reserved_nano;
    int64_t reserved_tokens;
    int64_t in_flight;
    struct bucket win[WINDOW_S];
    bool dirty;             /* spend changed since the writer's last pass */
    int64_t persisted_nano; /* spend as last committed */
    int64_t persisted_start;
};

struct br_keys {
    pthread_rwlock_t reg_lock; /* map, list */
    struct br_map by_hash;     /* 32-byte hash -> br_vkey */
    br_vkey **list;            /* creation order */
    size_t n_list;
    size_t cap_list;
    atomic_size_t n_active;
    atomic_size_t n_all;

    pthread_mutex_t db_mu; /* the connection */
    sqlite3 *db;

    /* writer */
    pthread_mutex_t w_mu;
    pthread_cond_t w_cond;    /* wakes the writer */
    pthread_cond_t done_cond; /* wakes flush waiters */
    uint64_t debit_seq;       /* debits settled (under w_mu) */
    uint64_t done_seq;        /* debits committed */
    bool kick;
    bool stop;
    bool failed; /* the last pass could not commit */
    uint32_t flush_ms;
    pthread_t writer;
    bool writer_started;
};

/* ------------------------------------------------------------------ periods */

/* Days since 1970-01-01 of a civil date (proleptic Gregorian; Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? (unsigned)-3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

void br_keys_period_bounds(enum br_keys_period p, int64_t now_ms, int64_t *start_out,
                           int64_t *end_out)
{
    *start_out = 0;
    *end_out = 0;
    if (p == BR_KEYS_PERIOD_DAY) {
        *start_out = floor_div(now_ms, MS_PER_DAY) * MS_PER_DAY;
        *end_out = *start_out + MS_PER_DAY;
    } else if (p == BR_KEYS_PERIOD_MONTH) {
        time_t t = (time_t)floor_div(now_ms, 1000);
        struct tm tm;
        if (!gmtime_r(&t, &tm)) {
            return;
        }
        int64_t y = (int64_t)tm.tm_year + 1900;
        unsigned m = (unsigned)tm.tm_mon + 1;
        *start_out = days_from_civil(y, m, 1) * MS_PER_DAY;
        *end_out =
            (m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1)) * MS_PER_DAY;
    }
}

const char *br_keys_period_name(enum br_keys_period p)
{
    switch (p) {
    case BR_KEYS_PERIOD_DAY:
        return "day";
    case BR_KEYS_PERIOD_MONTH:
        return "month";
    case BR_KEYS_PERIOD_TOTAL:
        break;
    }
    return "total";
}

int br_keys_period_parse(const char *s, enum br_keys_period *out)
{
    if (strcmp(s, "day") == 0) {
        *out = BR_KEYS_PERIOD_DAY;
    } else if (strcmp(s, "month") == 0) {
        *out = BR_KEYS_PERIOD_MONTH;
    } else if (strcmp(s, "total") == 0) {
        *out = BR_KEYS_PERIOD_TOTAL;
    } else {
        return BR_ERR_PARSE;
    }
    return BR_OK;
}

/* Starts a new period when now_ms is past the current one (key locked). */
static void roll(br_vkey *k, int64_t now_ms)
{
    if (k->period == BR_KEYS_PERIOD_TOTAL) {
        return;
    }
    if (now_ms < k->period_end_ms) {
        return; /* the current period (or a clock that went back: periods only move forward) */
    }
    int64_t start = 0;
    int64_t end = 0;
    br_keys_period_bounds(k->period, now_ms, &start, &end);
    if (start != k->period_start_ms) {
        k->spent_nano = 0;
        k->period_start_ms = start;
        k->dirty = true;
    }
    k->period_end_ms = end;
}

/* ------------------------------------------------------------------ rate window */

static void window_sum(const br_vkey *k, int64_t sec, int64_t *req_out, int64_t *tok_out,
                       int64_t *oldest_out)
{
    int64_t r = 0;
    int64_t t = 0;
    int64_t oldest = sec;
    for (size_t i = 0; i < WINDOW_S; i++) {
        const struct bucket *b = &k->win[i];
        if (b->sec > sec - WINDOW_S && b->sec <= sec && (b->requests || b->tokens)) {
            r += b->requests;
            t += b->tokens;
            oldest = b->sec < oldest ? b->sec : oldest;
        }
    }
    *req_out = r;
    *tok_out = t;
    *oldest_out = oldest;
}

static struct bucket *window_at(br_vkey *k, int64_t sec)
{
    struct bucket *b = &k->win[(size_t)((sec % WINDOW_S + WINDOW_S) % WINDOW_S)];
    if (b->sec != sec) {
        b->sec = sec;
        b->requests = 0;
        b->tokens = 0;
    }
    return b;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b) {
        return INT64_MAX;
    }
    return a + b;
}

/* ------------------------------------------------------------------ admission */

/* RPM and TPM over the last 60 s (key locked); true when refused, with d filled. */
static bool rate_denied(const br_vkey *k, int64_t sec, struct br_keys_denial *d)
{
    if (k->rpm <= 0 && k->tpm <= 0) {
        return false;
    }
    int64_t reqs = 0;
    int64_t toks = 0;
    int64_t oldest = sec;
    window_sum(k, sec, &reqs, &toks, &oldest);
    int64_t wait_s = oldest + WINDOW_S - sec;
    if (k->rpm > 0 && reqs >= k->rpm) {
        d->why = BR_KEYS_DENY_RPM;
        d->limit = k->rpm;
    } else if (k->tpm > 0 && sat_add(toks, k->reserved_tokens) >= k->tpm) {
        d->why = BR_KEYS_DENY_TPM;
        d->limit = k->tpm;
    } else {
        return false;
    }
    d->retry_after_s = wait_s > 0 ? wait_s : 1;
    return true;
}

/* spent + reserved + est <= budget (key locked); true when refused, with d filled. */
static bool budget_denied(const br_vkey *k, int64_t est_nano, int64_t now_ms,
                          struct br_keys_denial *d)
{
    if (!k->has_budget ||
        sat_add(sat_add(k->spent_nano, k->reserved_nano), est_nano) <= k->budget_nano) {
        return false;
    }
    d->why = BR_KEYS_DENY_BUDGET;
    d->limit = k->budget_nano;
    d->spent_nano = k->spent_nano;
    d->reserved_nano = k->reserved_nano;
    d->needed_nano = est_nano;
    if (sat_add(k->spent_nano, est_nano) <= k->budget_nano) {
        d->retry_after_s = 1; /* requests in flight hold the rest */
    } else if (k->period != BR_KEYS_PERIOD_TOTAL) {
        int64_t s = (k->period_end_ms - now_ms + 999) / 1000;
        d->retry_after_s = s > 0 ? s : 1;
    }
    return true;
}

int br_keys_admit(br_vkey *k, int64_t est_nano, int64_t est_tokens, int64_t now_ms,
                  struct br_keys_ticket *ticket, struct br_keys_denial *denial)
{
    memset(ticket, 0, sizeof(*ticket));
    memset(denial, 0, sizeof(*denial));
    est_nano = est_nano < 0 ? 0 : est_nano;
    est_tokens = est_tokens < 0 ? 0 : est_tokens;
    int64_t sec = floor_div(now_ms, 1000);
    int rc = BR_ERR_LIMIT;
    pthread_mutex_lock(&k->mu);
    roll(k, now_ms);
    denial->period = k->period;
    if (k->revoked_ms) {
        denial->why = BR_KEYS_DENY_REVOKED;
    } else if (!rate_denied(k, sec, denial) && !budget_denied(k, est_nano, now_ms, denial)) {
        k->reserved_nano = sat_add(k->reserved_nano, est_nano);
        k->reserved_tokens = sat_add(k->reserved_tokens, est_tokens);
        k->in_flight++;
        window_at(k, sec)->requests++;
        ticket->key = k;
        ticket->reserved_nano = est_nano;
        ticket->reserved_tokens = est_tokens;
        rc = BR_OK;
    }
    pthread_mutex_unlock(&k->mu);
    return rc;
}

void br_keys_settle(br_keys *ks, struct br_keys_ticket *ticket, int64_t cost_nano, int64_t tokens,
                    int64_t now_ms)
{
    br_vkey *k = ticket->key;
    if (!k) {
        return;
    }
    ticket->key = NULL;
    cost_nano = cost_nano < 0 ? 0 : cost_nano;
    tokens = tokens < 0 ? 0 : tokens;
    pthread_mutex_lock(&k->mu);
    k->reserved_nano -= ticket->reserved_nano;
    k->reserved_tokens -= ticket->reserved_tokens;
    k->in_flight--;
    roll(k, now_ms);
    if (tokens > 0) {
        struct bucket *b = window_at(k, floor_div(now_ms, 1000));
        b->tokens = sat_add(b->tokens, tokens);
    }
    if (cost_nano > 0) {
        k->spent_nano = sat_add(k->spent_nano, cost_nano);
        k->dirty = true;
    }
    bool dirty = k->dirty;
    pthread_mutex_unlock(&k->mu);
    if (dirty) {
        pthread_mutex_lock(&ks->w_mu);
        ks->debit_seq++;
        pthread_mutex_unlock(&ks->w_mu);
    }
}

/* ------------------------------------------------------------------ registry */

static void key_free(br_vkey *k)
{
    if (!k) {
        return;
    }
    br_free(k->name);
    for (size_t i = 0; k->models && i < k->n_models; i++) {
        br_free(k->models[i]);
    }
    br_free((void *)k->models);
    br_free(k->metadata_json);
    pthread_mutex_destroy(&k->mu);
    br_free(k);
}

static br_vkey *key_new(void)
{
    br_vkey *k = br_calloc(1, sizeof(*k));
    if (k) {
        pthread_mutex_init(&k->mu, NULL);
    }
    return k;
}

/* Copies a list of n strings (NULL list -> NULL). */
static int strv_dup(const char *const *v, size_t n, char ***out)
{
    *out = NULL;
    if (!v) {
        return BR_OK;
    }
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
    char **c = br_calloc(n + 1, sizeof(*c));
    if (!c) {
        return BR_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        c[i] = br_strdup(v[i]);
        if (!c[i]) {
            for (size_t j = 0; j < i; j++) {
                br_free(c[j]);
            }
            br_free((void *)c);
            return BR_ERR_NOMEM;
        }
    }
    *out = c;
    return BR_OK;
}

static void strv_free(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        br_free(v[i]);
    }
    br_free((void *)v);
}

static int registry_add(br_keys *ks, br_vkey *k)
{
    int rc = BR_OK;
    pthread_rwlock_wrlock(&ks->reg_lock);
    if (ks->n_list == ks->cap_list) {
        size_t cap = ks->cap_list ? ks->cap_list * 2 : 16;
        /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
        br_vkey **l = br_realloc((void *)ks->list, cap * sizeof(*l));
        if (!l) {
            rc = BR_ERR_NOMEM;
            goto out;
        }
        ks->list = l;
        ks->cap_list = cap;
    }
    rc = br_map_put(&ks->by_hash, br_slice_make((const char *)k->hash, BR_KEYS_HASH_LEN), k);
    if (rc != BR_OK) {
        goto out;
    }
    ks->list[ks->n_list++] = k;
    atomic_fetch_add(&ks->n_all, 1);
    if (!k->revoked_ms) {
        atomic_fetch_add(&ks->n_active, 1);
    }
out:
    pthread_rwlock_unlock(&ks->reg_lock);
    return rc;
}

static br_vkey *find_id(br_keys *ks, const char *id)
{
    br_vkey *found = NULL;
    pthread_rwlock_rdlock(&ks->reg_lock);
    for (size_t i = 0; i < ks->n_list && !found; i++) {
        if (strcmp(ks->list[i]->id, id) == 0) {
            found = ks->list[i];
        }
    }
    pthread_rwlock_unlock(&ks->reg_lock);
    return found;
}

br_vkey *br_keys_find(br_keys *ks, const unsigned char hash[BR_KEYS_HASH_LEN])
{
    pthread_rwlock_rdlock(&ks->reg_lock);
    br_vkey *k = br_map_get(&ks->by_hash, br_slice_make((const char *)hash, BR_KEYS_HASH_LEN));
    pthread_rwlock_unlock(&ks->reg_lock);
    if (k && CRYPTO_memcmp(k->hash, hash, BR_KEYS_HASH_LEN) != 0) {
        k = NULL;
    }
    return k;
}

size_t br_keys_active_count(const br_keys *ks)
{
    return atomic_load(&((br_keys *)ks)->n_active);
}

size_t br_keys_count(const br_keys *ks)
{
    return atomic_load(&((br_keys *)ks)->n_all);
}

const char *br_keys_id(const br_vkey *k)
{
    return k->id;
}

bool br_keys_revoked(br_vkey *k)
{
    pthread_mutex_lock(&k->mu);
    bool r = k->revoked_ms != 0;
    pthread_mutex_unlock(&k->mu);
    return r;
}

bool br_keys_model_allowed(br_vkey *k, const char *name, size_t n)
{
    size_t base = n;
    for (size_t i = n; i-- > 0;) {
        if (name[i] == ':') {
            base = i;
            break;
        }
    }
    pthread_mutex_lock(&k->mu);
    bool ok = k->models == NULL;
    for (size_t i = 0; !ok && i < k->n_models; i++) {
        size_t len = strlen(k->models[i]);
        ok = (len == n && memcmp(k->models[i], name, n) == 0) ||
             (base < n && len == base && memcmp(k->models[i], name, base) == 0);
    }
    pthread_mutex_unlock(&k->mu);
    return ok;
}

/* ------------------------------------------------------------------ snapshots */

static int snapshot(br_vkey *k, int64_t now_ms, struct br_keys_info *out)
{
    memset(out, 0, sizeof(*out));
    int rc = BR_OK;
    int64_t sec = floor_div(now_ms, 1000);
    memcpy(out->id, k->id, sizeof(out->id));
    out->created_ms = k->created_ms;
    pthread_mutex_lock(&k->mu);
    roll(k, now_ms);
    out->has_budget = k->has_budget;
    out->budget_nano = k->budget_nano;
    out->period = k->period;
    out->rpm = k->rpm;
    out->tpm = k->tpm;
    out->revoked_ms = k->revoked_ms;
    out->spent_nano = k->spent_nano;
    out->persisted_nano = k->persisted_start == k->period_start_ms ? k->persisted_nano : 0;
    out->reserved_nano = k->reserved_nano;
    out->in_flight = k->in_flight;
    out->period_start_ms = k->period_start_ms;
    out->period_end_ms = k->period_end_ms;
    int64_t oldest = 0;
    window_sum(k, sec, &out->requests_last_min, &out->tokens_last_min, &oldest);
    out->tokens_last_min = sat_add(out->tokens_last_min, k->reserved_tokens);
    if (k->name && !(out->name = br_strdup(k->name))) {
        rc = BR_ERR_NOMEM;
    }
    if (k->metadata_json && !(out->metadata_json = br_strdup(k->metadata_json))) {
        rc = BR_ERR_NOMEM;
    }
    if (strv_dup((const char *const *)k->models, k->n_models, &out->models) != BR_OK) {
        rc = BR_ERR_NOMEM;
    }
    out->n_models = out->models ? k->n_models : 0;
    pthread_mutex_unlock(&k->mu);
    if (rc != BR_OK) {
        br_keys_info_cleanup(out);
    }
    return rc;
}

void br_keys_info_cleanup(struct br_keys_info *info)
{
    br_free(info->name);
    br_free(info->metadata_json);
    strv_free(info->models, info->n_models);
    info->name = NULL;
    info->metadata_json = NULL;
    info->models = NULL;
    info->n_models = 0;
}

int br_keys_get(br_keys *ks, const char *id, int64_t now_ms, struct br_keys_info *out)
{
    br_vkey *k = find_id(ks, id);
    if (!k) {
        return BR_ERR_NOTFOUND;
    }
    return snapshot(k, now_ms, out);
}

int br_keys_list(br_keys *ks, int64_t now_ms,
                 int (*fn)(void *user, const struct br_keys_info *info), void *user)
{
    pthread_rwlock_rdlock(&ks->reg_lock);
    size_t n = ks->n_list;
    pthread_rwlock_unlock(&ks->reg_lock);
    for (size_t i = 0; i < n; i++) {
        pthread_rwlock_rdlock(&ks->reg_lock);
        br_vkey *k = ks->list[i];
        pthread_rwlock_unlock(&ks->reg_lock);
        struct br_keys_info info;
        int rc = snapshot(k, now_ms, &info);
        if (rc != BR_OK) {
            return rc;
        }
        rc = fn(user, &info);
        br_keys_info_cleanup(&info);
        if (rc != 0) {
            return rc;
        }
    }
    return BR_OK;
}

/* ------------------------------------------------------------------ SQLite */

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS virtual_keys("
    "id TEXT PRIMARY KEY, key_sha256 BLOB NOT NULL UNIQUE, name TEXT, "
    "budget_nano INTEGER, period TEXT NOT NULL DEFAULT 'total', rpm INTEGER NOT NULL DEFAULT 0, "
    "tpm INTEGER NOT NULL DEFAULT 0, models TEXT, metadata TEXT, created_ms INTEGER NOT NULL, "
    "revoked_ms INTEGER, spent_nano INTEGER NOT NULL DEFAULT 0, "
    "period_start_ms INTEGER NOT NULL DEFAULT 0, updated_ms INTEGER)";

static int db_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        br_log(BR_LOG_ERR, NULL, "event=keys_db_error sql=\"%.40s\" msg=\"%s\"", sql,
               msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return BR_ERR_IO;
    }
    return BR_OK;
}

/* models as stored: names joined with '\n' (names never hold one); NULL = all. */
static char *models_join(char *const *v, size_t n)
{
    if (!v) {
        return NULL;
    }
    size_t len = 1;
    for (size_t i = 0; i < n; i++) {
        len += strlen(v[i]) + 1;
    }
    char *s = br_malloc(len);
    if (!s) {
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);
        memcpy(s + k, v[i], l);
        k += l;
        s[k++] = '\n';
    }
    s[k] = '\0';
    return s;
}

static int models_split(const char *s, char ***out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!s) {
        return BR_OK;
    }
    size_t n = 0;
    for (const char *p = s; *p; p++) {
        n += *p == '\n';
    }
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
    char **v = br_calloc(n + 1, sizeof(*v));
    if (!v) {
        return BR_ERR_NOMEM;
    }
    size_t i = 0;
    const char *p = s;
    while (*p && i < n) {
        const char *e = strchr(p, '\n');
        size_t l = (size_t)(e - p);
        v[i] = br_malloc(l + 1);
        if (!v[i]) {
            strv_free(v, i);
            return BR_ERR_NOMEM;
        }
        memcpy(v[i], p, l);
        v[i][l] = '\0';
        i++;
        p = e + 1;
    }
    *out = v;
    *n_out = n;
    return BR_OK;
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s) {
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, i);
    }
}

/* Writes the key's whole row (key locked by the caller, db_mu held). */
static int db_save(br_keys *ks, const br_vkey *k, int64_t now_ms)
{
    static const char sql[] =
        "INSERT INTO virtual_keys(id, key_sha256, name, budget_nano, period, rpm, tpm, models, "
        "metadata, created_ms, revoked_ms, spent_nano, period_start_ms, updated_ms) "
        "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14) ON CONFLICT(id) DO UPDATE SET "
        "name=?3, budget_nano=?4, period=?5, rpm=?6, tpm=?7, models=?8, metadata=?9, "
        "revoked_ms=?11, spent_nano=?12, period_start_ms=?13, updated_ms=?14";
    sqlite3_stmt *st = NULL;
    char *models = NULL;
    int rc = BR_ERR_IO;
    if (k->models && !(models = models_join(k->models, k->n_models))) {
        return BR_ERR_NOMEM;
    }
    if (sqlite3_prepare_v2(ks->db, sql, -1, &st, NULL) != SQLITE_OK) {
        goto out;
    }
    sqlite3_bind_text(st, 1, k->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, k->hash, BR_KEYS_HASH_LEN, SQLITE_TRANSIENT);
    bind_text_or_null(st, 3, k->name);
    if (k->has_budget) {
        sqlite3_bind_int64(st, 4, k->budget_nano);
    } else {
        sqlite3_bind_null(st, 4);
    }
    sqlite3_bind_text(st, 5, br_keys_period_name(k->period), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, k->rpm);
    sqlite3_bind_int64(st, 7, k->tpm);
    bind_text_or_null(st, 8, models);
    bind_text_or_null(st, 9, k->metadata_json);
    sqlite3_bind_int64(st, 10, k->created_ms);
    if (k->revoked_ms) {
        sqlite3_bind_int64(st, 11, k->revoked_ms);
    } else {
        sqlite3_bind_null(st, 11);
    }
    sqlite3_bind_int64(st, 12, k->spent_nano);
    sqlite3_bind_int64(st, 13, k->period_start_ms);
    sqlite3_bind_int64(st, 14, now_ms);
    if (sqlite3_step(st) == SQLITE_DONE) {
        rc = BR_OK;
    }
out:
    if (rc != BR_OK) {
        br_log(BR_LOG_ERR, NULL, "event=keys_db_error op=save id=%s msg=\"%s\"", k->id,
               sqlite3_errmsg(ks->db));
    }
    sqlite3_finalize(st);
    br_free(models);
    return rc;
}

/* One row of the table into a new key. */
static int load_row(sqlite3_stmt *st, int64_t now_ms, br_vkey **out)
{
    br_vkey *k = key_new();
    if (!k) {
        return BR_ERR_NOMEM;
    }
    int rc = BR_OK;
    const unsigned char *id = sqlite3_column_text(st, 0);
    const void *hash = sqlite3_column_blob(st, 1);
    if (!id || strlen((const char *)id) != BR_KEYS_ID_LEN || !hash ||
        sqlite3_column_bytes(st, 1) != BR_KEYS_HASH_LEN) {
        rc = BR_ERR_PARSE;
        goto fail;
    }
    memcpy(k->id, id, BR_KEYS_ID_LEN + 1);
    memcpy(k->hash, hash, BR_KEYS_HASH_LEN);
    const unsigned char *name = sqlite3_column_text(st, 2);
    if (name && !(k->name = br_strdup((const char *)name))) {
        rc = BR_ERR_NOMEM;
        goto fail;
    }
    k->has_budget = sqlite3_column_type(st, 3) != SQLITE_NULL;
    k->budget_nano = sqlite3_column_int64(st, 3);
    const unsigned char *period = sqlite3_column_text(st, 4);
    if (!period || br_keys_period_parse((const char *)period, &k->period) != BR_OK) {
        rc = BR_ERR_PARSE;
        goto fail;
    }
    k->rpm = sqlite3_column_int64(st, 5);
    k->tpm = sqlite3_column_int64(st, 6);
    rc = models_split((const char *)sqlite3_column_text(st, 7), &k->models, &k->n_models);
    const unsigned char *meta = sqlite3_column_text(st, 8);
    if (rc == BR_OK && meta && !(k->metadata_json = br_strdup((const char *)meta))) {
        rc = BR_ERR_NOMEM;
    }
    if (rc != BR_OK) {
        goto fail;
    }
    k->created_ms = sqlite3_column_int64(st, 9);
    k->revoked_ms = sqlite3_column_int64(st, 10);
    k->spent_nano = sqlite3_column_int64(st, 11);
    k->period_start_ms = sqlite3_column_int64(st, 12);
    k->persisted_nano = k->spent_nano;
    k->persisted_start = k->period_start_ms;
    /* A period that ended while the gateway was down starts afresh. */
    if (k->period != BR_KEYS_PERIOD_TOTAL) {
        int64_t s = 0;
        br_keys_period_bounds(k->period, k->period_start_ms, &s, &k->period_end_ms);
        roll(k, now_ms);
    }
    *out = k;
    return BR_OK;
fail:
    key_free(k);
    return rc;
}

/* The current row into the registry; a malformed row is skipped (logged). */
static int load_one(br_keys *ks, sqlite3_stmt *st, int64_t now_ms)
{
    br_vkey *k = NULL;
    int rc = load_row(st, now_ms, &k);
    if (rc == BR_ERR_PARSE) {
        br_log(BR_LOG_WARN, NULL, "event=keys_row_skipped msg=\"malformed row\"");
        return BR_OK;
    }
    if (rc == BR_OK) {
        rc = registry_add(ks, k);
        if (rc != BR_OK) {
            key_free(k);
        }
    }
    return rc;
}

static int db_load(br_keys *ks, int64_t now_ms)
{
    static const char sql[] =
        "SELECT id, key_sha256, name, budget_nano, period, rpm, tpm, models, metadata, "
        "created_ms, revoked_ms, spent_nano, period_start_ms FROM virtual_keys ORDER BY "
        "created_ms, rowid";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(ks->db, sql, -1, &st, NULL) != SQLITE_OK) {
        br_log(BR_LOG_ERR, NULL, "event=keys_db_error op=load msg=\"%s\"", sqlite3_errmsg(ks->db));
        return BR_ERR_IO;
    }
    int rc = BR_OK;
    int s = SQLITE_DONE;
    while (rc == BR_OK && (s = sqlite3_step(st)) == SQLITE_ROW) {
        rc = load_one(ks, st, now_ms);
    }
    if (rc == BR_OK && s != SQLITE_DONE) {
        br_log(BR_LOG_ERR, NULL, "event=keys_db_error op=load msg=\"%s\"", sqlite3_errmsg(ks->db));
        rc = BR_ERR_IO;
    }
    sqlite3_finalize(st);
    return rc;
}

/* ------------------------------------------------------------------ writer */

struct pending {
    br_vkey *k;
    int64_t spent;
    int64_t start;
};

/* Takes the spend of every dirty key (clearing the flags) into a heap array (*n_out entries;
 * NULL when none). BR_ERR_NOMEM leaves the flags set. */
static int collect_dirty(br_keys *ks, struct pending **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    int rc = BR_OK;
    pthread_rwlock_rdlock(&ks->reg_lock);
    size_t n = ks->n_list;
    struct pending *p = n ? br_calloc(n, sizeof(*p)) : NULL;
    if (n && !p) {
        rc = BR_ERR_NOMEM;
        n = 0;
    }
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
        br_vkey *k = ks->list[i];
        pthread_mutex_lock(&k->mu);
        if (k->dirty) {
            k->dirty = false;
            p[np++] = (struct pending){k, k->spent_nano, k->period_start_ms};
        }
        pthread_mutex_unlock(&k->mu);
    }
    pthread_rwlock_unlock(&ks->reg_lock);
    *out = p;
    *n_out = np;
    return rc;
}

/* One transaction updating the spend of the np keys in p. */
static int commit_pending(br_keys *ks, const struct pending *p, size_t np)
{
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&ks->db_mu);
    int rc = db_exec(ks->db, "BEGIN IMMEDIATE");
    if (rc == BR_OK &&
        sqlite3_prepare_v2(ks->db,
                           "UPDATE virtual_keys SET spent_nano=?1, period_start_ms=?2 WHERE id=?3",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = BR_ERR_IO;
    }
    for (size_t i = 0; rc == BR_OK && i < np; i++) {
        sqlite3_bind_int64(st, 1, p[i].spent);
        sqlite3_bind_int64(st, 2, p[i].start);
        sqlite3_bind_text(st, 3, p[i].k->id, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? BR_OK : BR_ERR_IO;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (rc == BR_OK) {
        rc = db_exec(ks->db, "COMMIT");
    }
    if (rc != BR_OK) {
        br_log(BR_LOG_ERR, NULL, "event=keys_spend_write_failed keys=%zu msg=\"%s\"", np,
               sqlite3_errmsg(ks->db));
        (void)sqlite3_exec(ks->db, "ROLLBACK", NULL, NULL, NULL);
    }
    pthread_mutex_unlock(&ks->db_mu);
    return rc;
}

/* Commits the spend of every dirty key; BR_OK, or BR_ERR_IO (the keys stay dirty). */
static int write_pass(br_keys *ks)
{
    struct pending *p = NULL;
    size_t np = 0;
    int rc = collect_dirty(ks, &p, &np);
    if (rc != BR_OK || np == 0) {
        br_free(p);
        return rc;
    }
    rc = commit_pending(ks, p, np);
    for (size_t i = 0; i < np; i++) {
        br_vkey *k = p[i].k;
        pthread_mutex_lock(&k->mu);
        if (rc == BR_OK) {
            k->persisted_nano = p[i].spent;
            k->persisted_start = p[i].start;
        } else {
            k->dirty = true;
        }
        pthread_mutex_unlock(&k->mu);
    }
    br_free(p);
    return rc;
}

static void *writer_main(void *arg)
{
    br_keys *ks = arg;
    pthread_mutex_lock(&ks->w_mu);
    for (;;) {
        if (!ks->kick && !ks->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)ks->flush_ms * 1000000u;
            ts.tv_sec += (time_t)(ns / 1000000000u);
            ts.tv_nsec = (long)(ns % 1000000000u);
            (void)pthread_cond_timedwait(&ks->w_cond, &ks->w_mu, &ts);
        }
        bool stop = ks->stop;
        ks->kick = false;
        uint64_t target = ks->debit_seq;
        pthread_mutex_unlock(&ks->w_mu);
        int rc = write_pass(ks);
        pthread_mutex_lock(&ks->w_mu);
        ks->failed = rc != BR_OK;
        if (rc == BR_OK && target > ks->done_seq) {
            ks->done_seq = target;
        }
        pthread_cond_broadcast(&ks->done_cond);
        if (stop) {
            break;
        }
    }
    pthread_mutex_unlock(&ks->w_mu);
    return NULL;
}

int br_keys_flush(br_keys *ks)
{
    pthread_mutex_lock(&ks->w_mu);
    uint64_t target = ks->debit_seq;
    int rc = BR_OK;
    while (ks->done_seq < target) {
        ks->kick = true;
        pthread_cond_signal(&ks->w_cond);
        pthread_cond_wait(&ks->done_cond, &ks->w_mu);
        if (ks->failed) {
            rc = BR_ERR_IO;
            break;
        }
    }
    pthread_mutex_unlock(&ks->w_mu);
    return rc;
}

/* ------------------------------------------------------------------ admin changes */

static int spec_check(const struct br_keys_spec *s, unsigned mask)
{
    if ((mask & BR_KEYS_FIELD_NAME) && s->name && strlen(s->name) > BR_KEYS_NAME_MAX) {
        return BR_ERR_INVAL;
    }
    if ((mask & BR_KEYS_FIELD_BUDGET) && s->has_budget && s->budget_nano < 0) {
        return BR_ERR_INVAL;
    }
    if (((mask & BR_KEYS_FIELD_RPM) && s->rpm < 0) || ((mask & BR_KEYS_FIELD_TPM) && s->tpm < 0)) {
        return BR_ERR_INVAL;
    }
    if ((mask & BR_KEYS_FIELD_MODELS) && s->models) {
        if (s->n_models > BR_KEYS_MODELS_MAX) {
            return BR_ERR_INVAL;
        }
        for (size_t i = 0; i < s->n_models; i++) {
            if (!s->models[i] || !s->models[i][0] || strchr(s->models[i], '\n')) {
                return BR_ERR_INVAL;
            }
        }
    }
    if ((mask & BR_KEYS_FIELD_METADATA) && s->metadata_json &&
        strlen(s->metadata_json) > BR_KEYS_META_MAX) {
        return BR_ERR_INVAL;
    }
    return BR_OK;
}

/* Applies the masked fields of s to k (key locked). Strings are copied first, so a failed
 * copy changes nothing. */
static int apply(br_vkey *k, const struct br_keys_spec *s, unsigned mask, int64_t now_ms)
{
    char *name = NULL;
    char *meta = NULL;
    char **models = NULL;
    if ((mask & BR_KEYS_FIELD_NAME) && s->name && !(name = br_strdup(s->name))) {
        return BR_ERR_NOMEM;
    }
    if ((mask & BR_KEYS_FIELD_METADATA) && s->metadata_json &&
        !(meta = br_strdup(s->metadata_json))) {
        br_free(name);
        return BR_ERR_NOMEM;
    }
    if ((mask & BR_KEYS_FIELD_MODELS) && strv_dup(s->models, s->n_models, &models) != BR_OK) {
        br_free(name);
        br_free(meta);
        return BR_ERR_NOMEM;
    }
    if (mask & BR_KEYS_FIELD_NAME) {
        br_free(k->name);
        k->name = name;
    }
    if (mask & BR_KEYS_FIELD_METADATA) {
        br_free(k->metadata_json);
        k->metadata_json = meta;
    }
    if (mask & BR_KEYS_FIELD_MODELS) {
        strv_free(k->models, k->n_models);
        k->models = models;
        k->n_models = models ? s->n_models : 0;
    }
    if (mask & BR_KEYS_FIELD_RPM) {
        k->rpm = s->rpm;
    }
    if (mask & BR_KEYS_FIELD_TPM) {
        k->tpm = s->tpm;
    }
    if (mask & BR_KEYS_FIELD_BUDGET) {
        k->has_budget = s->has_budget;
        k->budget_nano = s->has_budget ? s->budget_nano : 0;
        if (s->has_budget && s->period != k->period) {
            k->period = s->period;
            k->spent_nano = 0;
            br_keys_period_bounds(k->period, now_ms, &k->period_start_ms, &k->period_end_ms);
            k->dirty = true;
        }
    }
    return BR_OK;
}

/* "br-" + base64url (no padding) of 32 random bytes, and its id "vk_" + 16 hex digits. */
static int new_secret(char secret[BR_KEYS_SECRET_LEN + 1], char id[BR_KEYS_ID_LEN + 1])
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    static const char hex[] = "0123456789abcdef";
    unsigned char r[33] = {0};
    unsigned char idb[8];
    if (br_rand_bytes(r, 32) != BR_OK || br_rand_bytes(idb, sizeof(idb)) != BR_OK) {
        return BR_ERR_IO;
    }
    memcpy(secret, "br-", 3);
    size_t o = 3;
    for (size_t i = 0; i < 33; i += 3) {
        uint32_t v = ((uint32_t)r[i] << 16) | ((uint32_t)r[i + 1] << 8) | r[i + 2];
        for (int j = 3; j >= 0 && o < BR_KEYS_SECRET_LEN; j--) {
            secret[o++] = b64[(v >> (6 * j)) & 63];
        }
    }
    secret[BR_KEYS_SECRET_LEN] = '\0';
    memcpy(id, "vk_", 3);
    for (size_t i = 0; i < sizeof(idb); i++) {
        id[3 + 2 * i] = hex[idb[i] >> 4];
        id[4 + 2 * i] = hex[idb[i] & 15];
    }
    id[BR_KEYS_ID_LEN] = '\0';
    return BR_OK;
}

int br_keys_create(br_keys *ks, const struct br_keys_spec *spec, int64_t now_ms,
                   char secret_out[BR_KEYS_SECRET_LEN + 1], struct br_keys_info *info_out)
{
    const unsigned all = BR_KEYS_FIELD_NAME | BR_KEYS_FIELD_BUDGET | BR_KEYS_FIELD_RPM |
                         BR_KEYS_FIELD_TPM | BR_KEYS_FIELD_MODELS | BR_KEYS_FIELD_METADATA;
    int rc = spec_check(spec, all);
    if (rc != BR_OK) {
        return rc;
    }
    br_vkey *k = key_new();
    if (!k) {
        return BR_ERR_NOMEM;
    }
    char secret[BR_KEYS_SECRET_LEN + 1];
    rc = new_secret(secret, k->id);
    if (rc != BR_OK) {
        goto fail;
    }
    unsigned int hl = 0;
    if (!EVP_Digest(secret, BR_KEYS_SECRET_LEN, k->hash, &hl, EVP_sha256(), NULL) ||
        hl != BR_KEYS_HASH_LEN) {
        rc = BR_ERR_IO;
        goto fail;
    }
    k->created_ms = now_ms;
    k->period = spec->period;
    br_keys_period_bounds(k->period, now_ms, &k->period_start_ms, &k->period_end_ms);
    rc = apply(k, spec, all, now_ms);
    if (rc != BR_OK) {
        goto fail;
    }
    k->dirty = false;
    pthread_mutex_lock(&ks->db_mu);
    rc = db_save(ks, k, now_ms);
    pthread_mutex_unlock(&ks->db_mu);
    if (rc == BR_OK) {
        rc = registry_add(ks, k);
    }
    if (rc != BR_OK) {
        goto fail;
    }
    memcpy(secret_out, secret, sizeof(secret));
    OPENSSL_cleanse(secret, sizeof(secret));
    br_log(BR_LOG_INFO, NULL, "event=key_created id=%s", k->id);
    return info_out ? snapshot(k, now_ms, info_out) : BR_OK;
fail:
    OPENSSL_cleanse(secret, sizeof(secret));
    key_free(k);
    return rc;
}

int br_keys_update(br_keys *ks, const char *id, const struct br_keys_spec *spec, unsigned mask,
                   int64_t now_ms, struct br_keys_info *info_out)
{
    int rc = spec_check(spec, mask);
    if (rc != BR_OK) {
        return rc;
    }
    br_vkey *k = find_id(ks, id);
    if (!k) {
        return BR_ERR_NOTFOUND;
    }
    pthread_mutex_lock(&ks->db_mu);
    pthread_mutex_lock(&k->mu);
    roll(k, now_ms);
    rc = apply(k, spec, mask, now_ms);
    if (rc == BR_OK) {
        rc = db_save(ks, k, now_ms);
    }
    if (rc == BR_OK) {
        k->dirty = false;
        k->persisted_nano = k->spent_nano;
        k->persisted_start = k->period_start_ms;
    }
    pthread_mutex_unlock(&k->mu);
    pthread_mutex_unlock(&ks->db_mu);
    if (rc != BR_OK) {
        return rc;
    }
    br_log(BR_LOG_INFO, NULL, "event=key_updated id=%s", k->id);
    return info_out ? snapshot(k, now_ms, info_out) : BR_OK;
}

int br_keys_revoke(br_keys *ks, const char *id, int64_t now_ms, struct br_keys_info *info_out)
{
    br_vkey *k = find_id(ks, id);
    if (!k) {
        return BR_ERR_NOTFOUND;
    }
    int rc = BR_OK;
    pthread_mutex_lock(&ks->db_mu);
    pthread_mutex_lock(&k->mu);
    bool was = k->revoked_ms != 0;
    if (!was) {
        k->revoked_ms = now_ms > 0 ? now_ms : 1;
        rc = db_save(ks, k, now_ms);
        if (rc != BR_OK) {
            k->revoked_ms = 0;
        } else {
            k->dirty = false;
            k->persisted_nano = k->spent_nano;
            k->persisted_start = k->period_start_ms;
        }
    }
    pthread_mutex_unlock(&k->mu);
    pthread_mutex_unlock(&ks->db_mu);
    if (rc != BR_OK) {
        return rc;
    }
    if (!was) {
        atomic_fetch_sub(&ks->n_active, 1);
        br_log(BR_LOG_INFO, NULL, "event=key_revoked id=%s", k->id);
    }
    return info_out ? snapshot(k, now_ms, info_out) : BR_OK;
}

/* ------------------------------------------------------------------ life cycle */

int br_keys_open(const char *path, uint32_t flush_ms, br_keys **out)
{
    if (!path || !out) {
        return BR_ERR_INVAL;
    }
    br_keys *ks = br_calloc(1, sizeof(*ks));
    if (!ks) {
        return BR_ERR_NOMEM;
    }
    pthread_rwlock_init(&ks->reg_lock, NULL);
    pthread_mutex_init(&ks->db_mu, NULL);
    pthread_mutex_init(&ks->w_mu, NULL);
    pthread_cond_init(&ks->w_cond, NULL);
    pthread_cond_init(&ks->done_cond, NULL);
    br_map_init(&ks->by_hash);
    ks->flush_ms = flush_ms ? flush_ms : DEFAULT_FLUSH_MS;
    int rc = BR_ERR_IO;
    if (sqlite3_open_v2(path, &ks->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        br_log(BR_LOG_ERR, NULL, "event=keys_open_failed path=%s msg=\"%s\"", path,
               ks->db ? sqlite3_errmsg(ks->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(ks->db, 5000);
    rc = db_exec(ks->db, "PRAGMA journal_mode=WAL");
    rc = rc == BR_OK ? db_exec(ks->db, "PRAGMA synchronous=NORMAL") : rc;
    rc = rc == BR_OK ? db_exec(ks->db, schema_sql) : rc;
    rc = rc == BR_OK ? db_load(ks, br_clock_wall_ms()) : rc;
    if (rc != BR_OK) {
        goto fail;
    }
    if (pthread_create(&ks->writer, NULL, writer_main, ks) != 0) {
        rc = BR_ERR_NOMEM;
        goto fail;
    }
    ks->writer_started = true;
    *out = ks;
    return BR_OK;
fail:
    br_keys_close(ks);
    return rc;
}

void br_keys_close(br_keys *ks)
{
    if (!ks) {
        return;
    }
    if (ks->writer_started) {
        pthread_mutex_lock(&ks->w_mu);
        ks->stop = true;
        pthread_cond_signal(&ks->w_cond);
        pthread_mutex_unlock(&ks->w_mu);
        pthread_join(ks->writer, NULL);
    }
    for (size_t i = 0; i < ks->n_list; i++) {
        key_free(ks->list[i]);
    }
    br_free((void *)ks->list);
    br_map_cleanup(&ks->by_hash);
    sqlite3_close(ks->db);
    pthread_cond_destroy(&ks->done_cond);
    pthread_cond_destroy(&ks->w_cond);
    pthread_mutex_destroy(&ks->w_mu);
    pthread_mutex_destroy(&ks->db_mu);
    pthread_rwlock_destroy(&ks->reg_lock);
    br_free(ks);
}
