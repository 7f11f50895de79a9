/* SPDX-License-Identifier: MIT */
/*
 * Write side of the request log. br_store_log copies a row into one heap block and pushes a
 * pointer onto a bounded ring (mutex + condition variables); it never touches the disk. One
 * writer thread pops up to batch_max rows at a time and inserts them with one prepared INSERT
 * inside one transaction. Rows carry a sequence number; `done_seq` says that every row up to it
 * has been committed or lost to a logged database error, which is what br_store_flush waits for.
 * See docs/internals/store.md.
 */
#define _DEFAULT_SOURCE /* syscall(SYS_gettid) for the writer's own priority */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/err.h"
#include "core/log.h"
#include "store/store.h"
#include "store/store_int.h"

#define DEFAULT_CAPACITY     65536u
#define DEFAULT_BATCH        512u
#define DEFAULT_INTERVAL_MS  50u
#define DEFAULT_BUSY_TIMEOUT 5000u
#define ERRMSG_LEN           256

/* A queued row: the row itself, then its strings in the same allocation. */
struct qrow {
    struct br_log_row row; /* string fields point into text[] */
    uint64_t seq;          /* 1, 2, ... in acceptance order */
    uint64_t enq_ns;       /* CLOCK_MONOTONIC when accepted */
    char text[];
};

struct br_store {
    /* Fixed after open. */
    size_t capacity;
    size_t batch_max;
    uint64_t interval_ns;
    sqlite3 *db;         /* used only by the writer thread once it runs */
    sqlite3_stmt *ins;   /* the one prepared INSERT */
    struct qrow **batch; /* (batch_max) rows being written; writer only */
    pthread_t thread;

    /* Protected by mu. */
    pthread_mutex_t mu;
    pthread_cond_t wake; /* writer: rows arrived, flush requested, or stop */
    pthread_cond_t done; /* flushers: done_seq advanced */
    struct qrow **ring;  /* (capacity) */
    size_t head;         /* index of the oldest queued row */
    size_t count;        /* rows in the ring */
    uint64_t last_seq;   /* seq of the newest accepted row */
    uint64_t done_seq;   /* every row with seq <= done_seq is committed or failed */
    uint64_t flush_seq;  /* a flusher waits for done_seq >= flush_seq */

    atomic_bool stopping;
    atomic_size_t depth; /* mirror of count for lock-free readers */
    atomic_uint_fast64_t queued;
    atomic_uint_fast64_t written;
    atomic_uint_fast64_t dropped;
    atomic_uint_fast64_t failed;
    atomic_uint_fast64_t transactions;
};

static uint64_t mono_ns(void)
{
    /* Not br_clock_now_ns: the condition variable waits on the real CLOCK_MONOTONIC. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the row copy ---- */

/* Length of s kept in the log: at most BR_STORE_MAX_STR bytes, cut before a UTF-8 sequence. */
static size_t kept_len(const char *s)
{
    size_t n = strnlen(s, BR_STORE_MAX_STR + 1);
    if (n <= BR_STORE_MAX_STR) {
        return n;
    }
    n = BR_STORE_MAX_STR;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) {
        n--; /* s[n] is a continuation byte: the character starting before it is dropped */
    }
    return n;
}

#define ROW_STRINGS(X) \
    X(id) X(key_id) X(model) X(provider) X(route) X(endpoint) X(error_kind) X(upstream_model)

static struct qrow *row_copy(const struct br_log_row *row)
{
    size_t total = 0;
#define ADD_LEN(f)                     \
    if (row->f) {                      \
        total += kept_len(row->f) + 1; \
    }
    ROW_STRINGS(ADD_LEN)
#undef ADD_LEN
    struct qrow *q = br_malloc(sizeof(*q) + total);
    if (!q) {
        return NULL;
    }
    q->row = *row;
    char *p = q->text;
#define COPY_STR(f)                  \
    if (row->f) {                    \
        size_t n = kept_len(row->f); \
        memcpy(p, row->f, n);        \
        p[n] = '\0';                 \
        q->row.f = p;                \
        p += n + 1;                  \
    }
    ROW_STRINGS(COPY_STR)
#undef COPY_STR
    return q;
}

/* ---- the writer ---- */

static void bind_text(sqlite3_stmt *st, int col, const char *s)
{
    if (s) {
        sqlite3_bind_text(st, col + 1, s, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, col + 1);
    }
}

static void bind_row(sqlite3_stmt *st, const struct br_log_row *r)
{
    bind_text(st, BR__STORE_COL_id, r->id);
    sqlite3_bind_int64(st, BR__STORE_COL_ts_ms + 1, r->ts_ms);
    bind_text(st, BR__STORE_COL_key_id, r->key_id);
    bind_text(st, BR__STORE_COL_model, r->model);
    bind_text(st, BR__STORE_COL_provider, r->provider);
    bind_text(st, BR__STORE_COL_route, r->route);
    bind_text(st, BR__STORE_COL_endpoint, r->endpoint);
    sqlite3_bind_int(st, BR__STORE_COL_status + 1, r->status);
    sqlite3_bind_int(st, BR__STORE_COL_stream + 1, r->stream ? 1 : 0);
    sqlite3_bind_int64(st, BR__STORE_COL_prompt_tokens + 1, r->prompt_tokens);
    sqlite3_bind_int64(st, BR__STORE_COL_completion_tokens + 1, r->completion_tokens);
    sqlite3_bind_int64(st, BR__STORE_COL_cached_tokens + 1, r->cached_tokens);
    sqlite3_bind_int64(st, BR__STORE_COL_reasoning_tokens + 1, r->reasoning_tokens);
    sqlite3_bind_int(st, BR__STORE_COL_usage_estimated + 1, r->usage_estimated ? 1 : 0);
    sqlite3_bind_int64(st, BR__STORE_COL_cost_nano_usd + 1, r->cost_nano_usd);
    sqlite3_bind_int64(st, BR__STORE_COL_latency_us + 1, r->latency_us);
    sqlite3_bind_int64(st, BR__STORE_COL_ttft_us + 1, r->ttft_us);
    sqlite3_bind_int64(st, BR__STORE_COL_upstream_latency_us + 1, r->upstream_latency_us);
    sqlite3_bind_int64(st, BR__STORE_COL_overhead_us + 1, r->overhead_us);
    bind_text(st, BR__STORE_COL_error_kind, r->error_kind);
    bind_text(st, BR__STORE_COL_upstream_model, r->upstream_model);
}

/*
 * One attempt at writing the batch in one transaction. A row refused by a constraint (for
 * example a trigger) is dropped on its own and counted in *rejected; any other error rolls the
 * whole transaction back. Returns the SQLite code of the failure (its message copied to err,
 * before ROLLBACK replaces it), or SQLITE_OK after COMMIT.
 */
static int try_batch(br_store *s, size_t n, size_t *rejected, char err[ERRMSG_LEN])
{
    *rejected = 0;
    err[0] = '\0';
    int rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        (void)snprintf(err, ERRMSG_LEN, "%s", sqlite3_errmsg(s->db));
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        bind_row(s->ins, &s->batch[i]->row);
        rc = sqlite3_step(s->ins);
        sqlite3_reset(s->ins);
        if (rc == SQLITE_DONE) {
            continue;
        }
        if ((rc & 0xff) == SQLITE_CONSTRAINT) {
            br_log(BR_LOG_ERR, s->batch[i]->row.id,
                   "event=store_row_rejected sqlite_rc=%d msg=\"%s\"", rc, sqlite3_errmsg(s->db));
            (*rejected)++;
            continue;
        }
        goto rollback;
    }
    rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    if (rc == SQLITE_OK) {
        return SQLITE_OK;
    }

rollback:
    (void)snprintf(err, ERRMSG_LEN, "%s", sqlite3_errmsg(s->db));
    /* Keep the failing code: ROLLBACK may fail harmlessly when SQLite already rolled back. */
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static void write_batch(br_store *s, size_t n)
{
    size_t rejected = 0;
    int attempts = 0;
    char msg[ERRMSG_LEN];
    int rc;
    for (;;) {
        attempts++;
        rc = try_batch(s, n, &rejected, msg);
        if (rc == SQLITE_OK) {
            break;
        }
        bool busy = br__store_err(rc) == BR_ERR_BUSY;
        if (busy && !atomic_load(&s->stopping)) {
            /* Another connection holds the write lock: keep the rows and try again. */
            br_log(BR_LOG_WARN, NULL, "event=store_busy rows=%zu attempt=%d msg=\"%s\"", n,
                   attempts, msg);
            continue;
        }
        br_log(BR_LOG_ERR, NULL, "event=store_write_failed rows=%zu sqlite_rc=%d msg=\"%s\"", n, rc,
               msg);
        atomic_fetch_add(&s->failed, n);
        goto out;
    }
    atomic_fetch_add(&s->failed, rejected);
    atomic_fetch_add(&s->written, n - rejected);
    atomic_fetch_add(&s->transactions, 1);

out:
    for (size_t i = 0; i < n; i++) {
        br_free(s->batch[i]);
        s->batch[i] = NULL;
    }
}

/* Called with mu held: true when the writer should write now rather than wait for more rows. */
static bool batch_due(br_store *s, struct timespec *deadline_out)
{
    if (s->count >= s->batch_max || atomic_load(&s->stopping) || s->flush_seq > s->done_seq) {
        return true;
    }
    uint64_t deadline = s->ring[s->head]->enq_ns + s->interval_ns;
    if (mono_ns() >= deadline) {
        return true;
    }
    deadline_out->tv_sec = (time_t)(deadline / 1000000000u);
    deadline_out->tv_nsec = (long)(deadline % 1000000000u);
    return false;
}

/* The writer yields to the event loops: nice +5 gives it about a quarter of a contended core
 * (the log needs well under a tenth at full load) and lets a loop woken by a request preempt
 * it at once, so a commit does not sit in front of a request's latency. */
static void lower_priority(void)
{
    long tid = syscall(SYS_gettid);
    if (tid > 0 && setpriority(PRIO_PROCESS, (id_t)tid, 5) != 0) {
        br_log(BR_LOG_DEBUG, NULL, "event=store_nice_failed");
    }
}

static void *writer_main(void *arg)
{
    br_store *s = arg;
    lower_priority();
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->count == 0) {
            if (atomic_load(&s->stopping)) {
                break;
            }
            pthread_cond_wait(&s->wake, &s->mu);
            continue;
        }
        struct timespec deadline;
        if (!batch_due(s, &deadline)) {
            pthread_cond_timedwait(&s->wake, &s->mu, &deadline);
            continue;
        }
        size_t n = s->count < s->batch_max ? s->count : s->batch_max;
        for (size_t i = 0; i < n; i++) {
            s->batch[i] = s->ring[s->head];
            s->ring[s->head] = NULL;
            s->head = (s->head + 1) % s->capacity;
        }
        s->count -= n;
        atomic_store(&s->depth, s->count);
        uint64_t last = s->batch[n - 1]->seq;
        pthread_mutex_unlock(&s->mu);

        write_batch(s, n);

        pthread_mutex_lock(&s->mu);
        s->done_seq = last;
        pthread_cond_broadcast(&s->done);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- public ---- */

/* journal_mode=WAL answers with the mode in effect; anything else (":memory:") is logged. */
static int set_wal(sqlite3 *db, const char *path)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_ROW) {
        br_log(BR_LOG_ERR, NULL, "event=store_open_failed path=\"%s\" what=wal msg=\"%s\"", path,
               sqlite3_errmsg(db));
        sqlite3_finalize(st);
        return BR_ERR_IO;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (!mode || strcmp(mode, "wal") != 0) {
        br_log(BR_LOG_WARN, NULL, "event=store_not_wal path=\"%s\" journal_mode=%s", path,
               mode ? mode : "?");
    }
    sqlite3_finalize(st);
    return BR_OK;
}

/* The journal mode, the pragmas and the schema of a freshly opened database. */
static int configure_db(sqlite3 *db, const char *path)
{
    int brc = set_wal(db, path);
    if (brc == BR_OK) {
        brc = br__store_exec(db, "PRAGMA synchronous=NORMAL", "synchronous");
    }
    if (brc == BR_OK) {
        /* 8 MiB of page cache keeps the indexes' hot pages in memory, so that inserting a
         * batch costs writes to the WAL, not reads. */
        brc = br__store_exec(db, "PRAGMA cache_size=-8192", "cache_size");
    }
    if (brc == BR_OK) {
        brc = br__store_schema_ensure(db);
    }
    if (brc != BR_OK) {
        return brc == BR_ERR_UNSUPPORTED || brc == BR_ERR_NOMEM ? brc : BR_ERR_IO;
    }
    return BR_OK;
}

static int open_db(br_store *s, const char *path, uint32_t busy_timeout_ms)
{
    int rc = sqlite3_open_v2(
        path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        br_log(BR_LOG_ERR, NULL, "event=store_open_failed path=\"%s\" sqlite_rc=%d msg=\"%s\"",
               path, rc, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        return rc == SQLITE_NOMEM ? BR_ERR_NOMEM : BR_ERR_IO;
    }
    sqlite3_busy_timeout(s->db, (int)busy_timeout_ms);
    sqlite3_extended_result_codes(s->db, 1);
    if (sqlite3_db_readonly(s->db, "main") == 1) {
        /* SQLite falls back to read-only on a file it cannot write: refuse now rather than
         * failing every batch later. */
        br_log(BR_LOG_ERR, NULL, "event=store_open_failed path=\"%s\" what=read_only", path);
        return BR_ERR_IO;
    }

    int brc = configure_db(s->db, path);
    if (brc != BR_OK) {
        return brc;
    }

    char sql[BR__STORE_SQL_MAX];
    br__store_sql_insert(sql);
    rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->ins, NULL);
    if (rc != SQLITE_OK) {
        br_log(BR_LOG_ERR, NULL, "event=store_open_failed path=\"%s\" what=prepare msg=\"%s\"",
               path, sqlite3_errmsg(s->db));
        return BR_ERR_IO;
    }
    return BR_OK;
}

static int init_sync(br_store *s)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        return BR_ERR_NOMEM;
    }
    int rc = BR_ERR_NOMEM;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        goto out;
    }
    if (pthread_cond_init(&s->wake, &ca) != 0) {
        goto fail_mutex;
    }
    if (pthread_cond_init(&s->done, NULL) != 0) {
        goto fail_wake;
    }
    rc = BR_OK;
    goto out;

fail_wake:
    pthread_cond_destroy(&s->wake);
fail_mutex:
    pthread_mutex_destroy(&s->mu);
out:
    pthread_condattr_destroy(&ca);
    return rc;
}

static void free_store(br_store *s, bool sync_ready)
{
    if (s->ring) {
        for (size_t i = 0; i < s->capacity; i++) {
            br_free(s->ring[i]);
        }
    }
    sqlite3_finalize(s->ins);
    if (s->db) {
        int rc = sqlite3_close(s->db);
        if (rc != SQLITE_OK) {
            br_log(BR_LOG_ERR, NULL, "event=store_close_failed sqlite_rc=%d", rc);
        }
    }
    if (sync_ready) {
        pthread_cond_destroy(&s->done);
        pthread_cond_destroy(&s->wake);
        pthread_mutex_destroy(&s->mu);
    }
    br_free(s->batch);
    br_free(s->ring);
    br_free(s);
}

int br_store_open(const struct br_store_opts *opts, br_store **out)
{
    if (!opts || !opts->path || !*opts->path || !out) {
        return BR_ERR_INVAL;
    }
    br_store *s = br_calloc(1, sizeof(*s));
    if (!s) {
        return BR_ERR_NOMEM;
    }
    s->capacity = opts->queue_capacity ? opts->queue_capacity : DEFAULT_CAPACITY;
    s->batch_max = opts->batch_max ? opts->batch_max : DEFAULT_BATCH;
    if (s->batch_max > s->capacity) {
        s->batch_max = s->capacity;
    }
    uint32_t interval_ms = opts->flush_interval_ms ? opts->flush_interval_ms : DEFAULT_INTERVAL_MS;
    s->interval_ns = (uint64_t)interval_ms * 1000000u;
    uint32_t busy_ms = opts->busy_timeout_ms ? opts->busy_timeout_ms : DEFAULT_BUSY_TIMEOUT;
    if (busy_ms > INT32_MAX) {
        busy_ms = INT32_MAX;
    }
    bool sync_ready = false;
    int rc = BR_ERR_NOMEM;
    /* NOLINTBEGIN(bugprone-sizeof-expression): arrays of pointers */
    s->ring = br_calloc(s->capacity, sizeof(struct qrow *));
    s->batch = br_calloc(s->batch_max, sizeof(struct qrow *));
    /* NOLINTEND(bugprone-sizeof-expression) */
    if (!s->ring || !s->batch) {
        goto fail;
    }
    rc = init_sync(s);
    if (rc != BR_OK) {
        goto fail;
    }
    sync_ready = true;
    rc = open_db(s, opts->path, busy_ms);
    if (rc != BR_OK) {
        goto fail;
    }
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
        br_log(BR_LOG_ERR, NULL, "event=store_thread_failed");
        rc = BR_ERR_NOMEM;
        goto fail;
    }
    *out = s;
    return BR_OK;

fail:
    free_store(s, sync_ready);
    return rc;
}

void br_store_close(br_store *s)
{
    if (!s) {
        return;
    }
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->stopping, true);
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    free_store(s, true);
}

int br_store_log(br_store *s, const struct br_log_row *row)
{
    if (!s || !row) {
        return BR_ERR_INVAL;
    }
    /* Cheap early refusal without copying when the queue is visibly full. */
    if (atomic_load_explicit(&s->depth, memory_order_relaxed) >= s->capacity) {
        atomic_fetch_add(&s->dropped, 1);
        return BR_ERR_BUSY;
    }
    struct qrow *q = row_copy(row);
    if (!q) {
        atomic_fetch_add(&s->dropped, 1);
        return BR_ERR_NOMEM;
    }
    q->enq_ns = mono_ns();
    pthread_mutex_lock(&s->mu);
    if (s->count >= s->capacity) {
        pthread_mutex_unlock(&s->mu);
        br_free(q);
        atomic_fetch_add(&s->dropped, 1);
        return BR_ERR_BUSY;
    }
    q->seq = ++s->last_seq;
    s->ring[(s->head + s->count) % s->capacity] = q;
    s->count++;
    atomic_store(&s->depth, s->count);
    atomic_fetch_add(&s->queued, 1);
    /* The writer sleeps either with no rows (wake on the first) or until a deadline (wake when
     * a full batch is ready); other arrivals need no signal. */
    if (s->count == 1 || s->count == s->batch_max) {
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->mu);
    return BR_OK;
}

bool br_store_queue_full(const br_store *s)
{
    return atomic_load(&s->depth) >= s->capacity;
}

void br_store_stats_get(const br_store *s, struct br_store_stats *out)
{
    out->queued = atomic_load(&s->queued);
    out->written = atomic_load(&s->written);
    out->dropped = atomic_load(&s->dropped);
    out->failed = atomic_load(&s->failed);
    out->transactions = atomic_load(&s->transactions);
    out->depth = atomic_load(&s->depth);
}

int br_store_flush(br_store *s)
{
    if (!s) {
        return BR_ERR_INVAL;
    }
    uint64_t failed_before = atomic_load(&s->failed);
    pthread_mutex_lock(&s->mu);
    uint64_t target = s->last_seq;
    if (s->flush_seq < target) {
        s->flush_seq = target;
        pthread_cond_signal(&s->wake);
    }
    while (s->done_seq < target) {
        pthread_cond_wait(&s->done, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return atomic_load(&s->failed) == failed_before ? BR_OK : BR_ERR_IO;
}
