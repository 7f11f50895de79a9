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
#include <math.h>
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

/* What a queue entry carries. */
enum qkind {
    QK_ROW,       /* a request-log row */
    QK_FEEDBACK,  /* feedback: looked up, stored, then the callback runs */
    QK_THRESHOLD, /* a route threshold change */
    QK_BODY,      /* a request's messages and answer */
};

#define ATTR_STR 256 /* route, model, policy, decision names of an attribution */

struct qfeedback {
    struct br_feedback_row fb;
    br_store_feedback_fn fn;
    void *user;
    int result; /* set by the writer */
    struct br_feedback_attr attr;
    char route[ATTR_STR];
    char model[ATTR_STR];
    char policy[ATTR_STR];
    char decision[ATTR_STR];
};

struct qbody {
    struct br_body_row b;
    bool truncated;
};

/* A queued entry: the payload, then its strings in the same allocation. */
struct qrow {
    enum qkind kind;
    uint64_t seq;    /* 1, 2, ... in acceptance order */
    uint64_t enq_ns; /* CLOCK_MONOTONIC when accepted */
    union {
        struct br_log_row row; /* string fields point into text[] */
        struct qfeedback fb;
        struct br_threshold_row th;
        struct qbody body;
    } u;
    char text[];
};

/* The statements of the other tables. */
struct stmts {
    sqlite3_stmt *fb_lookup; /* the request a feedback is about */
    sqlite3_stmt *fb_prev;   /* an earlier feedback for it */
    sqlite3_stmt *fb_insert;
    sqlite3_stmt *fb_update;
    sqlite3_stmt *th_insert;
    sqlite3_stmt *body_insert;
};

struct br_store {
    /* Fixed after open. */
    size_t capacity;
    size_t batch_max;
    uint64_t interval_ns;
    sqlite3 *db;         /* used only by the writer thread once it runs */
    sqlite3_stmt *ins;   /* the INSERT of request-log rows */
    struct stmts st;     /* feedback, thresholds, bodies */
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

/* ---- the copies ---- */

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

/* The string fields of a row (clang-format's layout of this list is not stable). */
/* clang-format off */
#define ROW_STRINGS(X)                                                                       \
    X(id) X(key_id) X(model) X(provider) X(route) X(endpoint) X(error_kind) X(upstream_model) \
    X(policy) X(decision) X(reason) X(cascade)
/* clang-format on */

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
    q->kind = QK_ROW;
    q->u.row = *row;
    char *p = q->text;
#define COPY_STR(f)                  \
    if (row->f) {                    \
        size_t n = kept_len(row->f); \
        memcpy(p, row->f, n);        \
        p[n] = '\0';                 \
        q->u.row.f = p;              \
        p += n + 1;                  \
    }
    ROW_STRINGS(COPY_STR)
#undef COPY_STR
    return q;
}

static char *put_str(char **p, const char *s)
{
    if (!s) {
        return NULL;
    }
    size_t n = kept_len(s);
    char *out = *p;
    memcpy(out, s, n);
    out[n] = '\0';
    *p += n + 1;
    return out;
}

/* Longest prefix of s (n bytes) that fits max bytes without cutting a UTF-8 character. */
static size_t cut_utf8(const char *s, size_t n, size_t max)
{
    if (n <= max) {
        return n;
    }
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) {
        n--;
    }
    return n;
}

static size_t opt_len(const char *s)
{
    return s ? kept_len(s) + 1 : 0;
}

static struct qrow *feedback_copy(const struct br_feedback_row *fb, br_store_feedback_fn fn,
                                  void *user)
{
    struct qrow *q = br_malloc(sizeof(*q) + opt_len(fb->request_id) + opt_len(fb->key_id) +
                               opt_len(fb->comment));
    if (!q) {
        return NULL;
    }
    memset(&q->u.fb, 0, sizeof(q->u.fb));
    q->kind = QK_FEEDBACK;
    q->u.fb.fb = *fb;
    q->u.fb.fn = fn;
    q->u.fb.user = user;
    char *p = q->text;
    q->u.fb.fb.request_id = put_str(&p, fb->request_id);
    q->u.fb.fb.key_id = put_str(&p, fb->key_id);
    q->u.fb.fb.comment = put_str(&p, fb->comment);
    return q;
}

static struct qrow *threshold_copy(const struct br_threshold_row *t)
{
    struct qrow *q = br_malloc(sizeof(*q) + opt_len(t->route) + opt_len(t->reason));
    if (!q) {
        return NULL;
    }
    q->kind = QK_THRESHOLD;
    q->u.th = *t;
    char *p = q->text;
    q->u.th.route = put_str(&p, t->route);
    q->u.th.reason = put_str(&p, t->reason);
    return q;
}

static struct qrow *body_copy(const struct br_body_row *b, size_t max_bytes)
{
    size_t nm = b->messages.ptr ? cut_utf8(b->messages.ptr, b->messages.len, max_bytes) : 0;
    size_t na = b->answer.ptr ? cut_utf8(b->answer.ptr, b->answer.len, max_bytes) : 0;
    struct qrow *q = br_malloc(sizeof(*q) + opt_len(b->request_id) + opt_len(b->route) +
                               opt_len(b->model) + nm + na + 2);
    if (!q) {
        return NULL;
    }
    q->kind = QK_BODY;
    q->u.body.b = *b;
    q->u.body.truncated = nm < b->messages.len || na < b->answer.len;
    char *p = q->text;
    q->u.body.b.request_id = put_str(&p, b->request_id);
    q->u.body.b.route = put_str(&p, b->route);
    q->u.body.b.model = put_str(&p, b->model);
    memcpy(p, b->messages.ptr ? b->messages.ptr : "", nm);
    p[nm] = '\0';
    q->u.body.b.messages = br_slice_make(p, nm);
    p += nm + 1;
    memcpy(p, b->answer.ptr ? b->answer.ptr : "", na);
    p[na] = '\0';
    q->u.body.b.answer = br_slice_make(p, na);
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

/* A double, or NULL for NAN and infinities (SQLite has no NaN). */
static void bind_real(sqlite3_stmt *st, int col, double v)
{
    if (isfinite(v)) {
        sqlite3_bind_double(st, col + 1, v);
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
    bind_text(st, BR__STORE_COL_policy, r->policy);
    bind_text(st, BR__STORE_COL_decision, r->decision);
    bind_real(st, BR__STORE_COL_score, r->policy ? r->score : NAN);
    bind_real(st, BR__STORE_COL_threshold, r->policy ? r->threshold : NAN);
    bind_text(st, BR__STORE_COL_reason, r->reason);
    bind_text(st, BR__STORE_COL_cascade, r->cascade);
    bind_real(st, BR__STORE_COL_confidence, r->cascade ? r->confidence : NAN);
}

static void copy_attr(char *dst, const unsigned char *src)
{
    (void)snprintf(dst, ATTR_STR, "%s", src ? (const char *)src : ""); /* names are short */
}

/* Looks up the request of a feedback and stores the feedback; the result goes to fb->result. */
static int write_feedback(br_store *s, struct qfeedback *fb)
{
    sqlite3_stmt *q = s->st.fb_lookup;
    sqlite3_bind_text(q, 1, fb->fb.request_id ? fb->fb.request_id : "", -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    fb->result = BR_ERR_NOTFOUND;
    if (rc == SQLITE_ROW) {
        const unsigned char *key = sqlite3_column_text(q, 8);
        /* Only the key that made the request (or the master key) may rate it; anyone else
         * is told it does not exist, so request ids of other keys cannot be probed. */
        bool allowed = fb->fb.is_master || !key ||
                       (fb->fb.key_id && strcmp((const char *)key, fb->fb.key_id) == 0);
        if (allowed) {
            copy_attr(fb->route, sqlite3_column_text(q, 0));
            copy_attr(fb->model, sqlite3_column_text(q, 1));
            copy_attr(fb->policy, sqlite3_column_text(q, 2));
            copy_attr(fb->decision, sqlite3_column_text(q, 3));
            struct br_feedback_attr *at = &fb->attr;
            at->route = sqlite3_column_type(q, 0) == SQLITE_NULL ? NULL : fb->route;
            at->model = fb->model;
            at->policy = sqlite3_column_type(q, 2) == SQLITE_NULL ? NULL : fb->policy;
            at->decision = sqlite3_column_type(q, 3) == SQLITE_NULL ? NULL : fb->decision;
            at->score =
                sqlite3_column_type(q, 4) == SQLITE_NULL ? NAN : sqlite3_column_double(q, 4);
            at->threshold =
                sqlite3_column_type(q, 5) == SQLITE_NULL ? NAN : sqlite3_column_double(q, 5);
            at->cost_nano_usd = sqlite3_column_int64(q, 6);
            at->status = sqlite3_column_int(q, 7);
            at->previous = NAN;
            fb->result = BR_OK;
        }
        rc = SQLITE_DONE;
    }
    sqlite3_reset(q);
    if (rc != SQLITE_DONE || fb->result != BR_OK) {
        return rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    q = s->st.fb_prev;
    sqlite3_bind_text(q, 1, fb->fb.request_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(q);
    bool replace = rc == SQLITE_ROW;
    if (replace) {
        fb->attr.previous = sqlite3_column_double(q, 0);
        rc = SQLITE_DONE;
    }
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) {
        return rc;
    }
    q = replace ? s->st.fb_update : s->st.fb_insert;
    sqlite3_bind_text(q, 1, fb->fb.request_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, fb->fb.ts_ms);
    bind_text(q, 2, fb->fb.key_id);
    sqlite3_bind_double(q, 4, fb->fb.score);
    bind_text(q, 4, fb->fb.comment);
    bind_text(q, 5, fb->attr.route);
    bind_text(q, 6, fb->attr.model);
    bind_text(q, 7, fb->attr.policy);
    bind_text(q, 8, fb->attr.decision);
    rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int write_threshold(br_store *s, const struct br_threshold_row *t)
{
    sqlite3_stmt *q = s->st.th_insert;
    bind_text(q, 0, t->route);
    sqlite3_bind_int64(q, 2, t->ts_ms);
    bind_real(q, 2, t->config_threshold);
    bind_real(q, 3, t->threshold);
    bind_text(q, 4, t->reason);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int write_body(br_store *s, const struct qbody *b)
{
    sqlite3_stmt *q = s->st.body_insert;
    bind_text(q, 0, b->b.request_id);
    sqlite3_bind_int64(q, 2, b->b.ts_ms);
    bind_text(q, 2, b->b.route);
    bind_text(q, 3, b->b.model);
    sqlite3_bind_int(q, 5, b->b.status);
    sqlite3_bind_text(q, 6, b->b.messages.ptr, (int)b->b.messages.len, SQLITE_STATIC);
    sqlite3_bind_text(q, 7, b->b.answer.ptr, (int)b->b.answer.len, SQLITE_STATIC);
    sqlite3_bind_int(q, 8, b->truncated ? 1 : 0);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* One queue entry inside the batch's transaction: SQLITE_OK/DONE, or the failure. */
static int write_one(br_store *s, struct qrow *q)
{
    int rc;
    switch (q->kind) {
    case QK_ROW:
        bind_row(s->ins, &q->u.row);
        rc = sqlite3_step(s->ins);
        sqlite3_reset(s->ins);
        return rc == SQLITE_DONE ? SQLITE_OK : rc;
    case QK_FEEDBACK:
        return write_feedback(s, &q->u.fb);
    case QK_THRESHOLD:
        return write_threshold(s, &q->u.th);
    case QK_BODY:
        return write_body(s, &q->u.body);
    }
    return SQLITE_MISUSE;
}

static const char *entry_id(const struct qrow *q)
{
    switch (q->kind) {
    case QK_ROW:
        return q->u.row.id;
    case QK_FEEDBACK:
        return q->u.fb.fb.request_id;
    case QK_BODY:
        return q->u.body.b.request_id;
    case QK_THRESHOLD:
        return NULL;
    }
    return NULL;
}

/*
 * One attempt at writing the batch in one transaction. An entry refused by a constraint (for
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
        struct qrow *q = s->batch[i];
        rc = write_one(s, q);
        if (rc == SQLITE_OK) {
            continue;
        }
        if ((rc & 0xff) == SQLITE_CONSTRAINT) {
            br_log(BR_LOG_ERR, entry_id(q), "event=store_row_rejected sqlite_rc=%d msg=\"%s\"", rc,
                   sqlite3_errmsg(s->db));
            if (q->kind == QK_FEEDBACK) {
                q->u.fb.result = BR_ERR_IO;
            }
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

/* Writes the batch, trying again while another connection holds the write lock (unless the
 * store is stopping). True when it was committed (*rejected: entries refused on their own). */
static bool write_until_done(br_store *s, size_t n, size_t *rejected)
{
    char msg[ERRMSG_LEN];
    for (int attempts = 1;; attempts++) {
        int rc = try_batch(s, n, rejected, msg);
        if (rc == SQLITE_OK) {
            return true;
        }
        if (br__store_err(rc) == BR_ERR_BUSY && !atomic_load(&s->stopping)) {
            /* Another connection holds the write lock: keep the rows and try again. */
            br_log(BR_LOG_WARN, NULL, "event=store_busy rows=%zu attempt=%d msg=\"%s\"", n,
                   attempts, msg);
            continue;
        }
        br_log(BR_LOG_ERR, NULL, "event=store_write_failed rows=%zu sqlite_rc=%d msg=\"%s\"", n, rc,
               msg);
        return false;
    }
}

static void write_batch(br_store *s, size_t n)
{
    size_t rejected = 0;
    bool ok = write_until_done(s, n, &rejected);
    if (ok) {
        atomic_fetch_add(&s->failed, rejected);
        atomic_fetch_add(&s->written, n - rejected);
        atomic_fetch_add(&s->transactions, 1);
    } else {
        atomic_fetch_add(&s->failed, n);
    }
    for (size_t i = 0; i < n; i++) {
        struct qrow *q = s->batch[i];
        if (q->kind == QK_FEEDBACK && q->u.fb.fn) {
            struct qfeedback *fb = &q->u.fb;
            int result = ok ? fb->result : BR_ERR_IO;
            fb->fn(fb->user, result, result == BR_OK ? &fb->attr : NULL);
        }
        br_free(q);
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

/* The persistent statements of the writer. */
static int prepare_statements(br_store *s, const char *path)
{
    char sql[BR__STORE_SQL_MAX];
    br__store_sql_insert(sql);
    const struct {
        const char *sql;
        sqlite3_stmt **st;
    } stmts[] = {
        {sql, &s->ins},
        {"SELECT route, model, policy, decision, score, threshold, cost_nano_usd, status, key_id "
         "FROM requests WHERE id = ?1 ORDER BY rowid DESC LIMIT 1",
         &s->st.fb_lookup},
        {"SELECT score FROM feedback WHERE request_id = ?1 ORDER BY rowid DESC LIMIT 1",
         &s->st.fb_prev},
        {"INSERT INTO feedback(request_id, ts_ms, key_id, score, comment, route, model, policy, "
         "decision) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
         &s->st.fb_insert},
        {"UPDATE feedback SET ts_ms = ?2, key_id = ?3, score = ?4, comment = ?5, route = ?6, "
         "model = ?7, policy = ?8, decision = ?9 WHERE request_id = ?1",
         &s->st.fb_update},
        {"INSERT INTO route_thresholds(route, ts_ms, config_threshold, threshold, reason) "
         "VALUES(?1, ?2, ?3, ?4, ?5)",
         &s->st.th_insert},
        {"INSERT INTO bodies(request_id, ts_ms, route, model, status, messages, answer, "
         "truncated) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
         &s->st.body_insert},
    };
    for (size_t i = 0; i < sizeof(stmts) / sizeof(stmts[0]); i++) {
        int rc = sqlite3_prepare_v3(s->db, stmts[i].sql, -1, SQLITE_PREPARE_PERSISTENT, stmts[i].st,
                                    NULL);
        if (rc != SQLITE_OK) {
            br_log(BR_LOG_ERR, NULL, "event=store_open_failed path=\"%s\" what=prepare msg=\"%s\"",
                   path, sqlite3_errmsg(s->db));
            return BR_ERR_IO;
        }
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
    return prepare_statements(s, path);
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
    sqlite3_finalize(s->st.fb_lookup);
    sqlite3_finalize(s->st.fb_prev);
    sqlite3_finalize(s->st.fb_insert);
    sqlite3_finalize(s->st.fb_update);
    sqlite3_finalize(s->st.th_insert);
    sqlite3_finalize(s->st.body_insert);
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

/* Pushes a copied entry (NULL: the copy failed) onto the queue; frees it when refused. */
static int enqueue(br_store *s, struct qrow *q)
{
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
     * a full batch is ready); other arrivals need no signal. Feedback waits for an answer:
     * it is written at once. */
    if (s->count == 1 || s->count == s->batch_max || q->kind == QK_FEEDBACK) {
        if (q->kind == QK_FEEDBACK && s->flush_seq < q->seq) {
            s->flush_seq = q->seq;
        }
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->mu);
    return BR_OK;
}

/* Cheap early refusal without copying when the queue is visibly full. */
static bool visibly_full(br_store *s)
{
    if (atomic_load_explicit(&s->depth, memory_order_relaxed) >= s->capacity) {
        atomic_fetch_add(&s->dropped, 1);
        return true;
    }
    return false;
}

int br_store_log(br_store *s, const struct br_log_row *row)
{
    if (!s || !row) {
        return BR_ERR_INVAL;
    }
    return visibly_full(s) ? BR_ERR_BUSY : enqueue(s, row_copy(row));
}

int br_store_feedback(br_store *s, const struct br_feedback_row *fb, br_store_feedback_fn fn,
                      void *user)
{
    if (!s || !fb || !fb->request_id || !fn) {
        return BR_ERR_INVAL;
    }
    return visibly_full(s) ? BR_ERR_BUSY : enqueue(s, feedback_copy(fb, fn, user));
}

int br_store_threshold(br_store *s, const struct br_threshold_row *t)
{
    if (!s || !t || !t->route) {
        return BR_ERR_INVAL;
    }
    return visibly_full(s) ? BR_ERR_BUSY : enqueue(s, threshold_copy(t));
}

int br_store_body(br_store *s, const struct br_body_row *b, size_t max_bytes)
{
    if (!s || !b || max_bytes == 0) {
        return BR_ERR_INVAL;
    }
    return visibly_full(s) ? BR_ERR_BUSY : enqueue(s, body_copy(b, max_bytes));
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
