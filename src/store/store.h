/* SPDX-License-Identifier: MIT */
/*
 * Request log in SQLite (WAL). The event loops hand rows to br_store_log, which only copies the
 * row into a bounded in-memory queue; one writer thread commits queued rows in batched
 * transactions. A row is acknowledged (counted in `written`) only after its batch commits.
 * When the queue is full the row is refused with BR_ERR_BUSY and counted as dropped: nothing is
 * lost silently, and the caller can apply backpressure (see br_store_queue_full).
 *
 * Thread-safety: br_store_log, br_store_stats_get, br_store_queue_full and br_store_flush from
 * any thread; open and close from one thread. The read-side queries are independent functions
 * that open their own read-only connection and may run in any thread or process.
 */
#ifndef BR_STORE_H
#define BR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"

typedef struct br_store br_store;

/*
 * One request. Strings are copied by br_store_log (each truncated to BR_STORE_MAX_STR bytes, on
 * a UTF-8 character boundary); NULL is stored as NULL. Integers are stored as given.
 */
struct br_log_row {
    const char *id;       /* request id */
    int64_t ts_ms;        /* wall clock at request start, ms since epoch */
    const char *key_id;   /* API key id (never the key), NULL when auth is off */
    const char *model;    /* catalogue model that answered (or was asked for) */
    const char *provider; /* provider name */
    const char *route;    /* route name, NULL for a direct model request */
    const char *endpoint; /* "/v1/chat/completions" */
    int status;           /* HTTP status sent to the client (499: client went away) */
    bool stream;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t cached_tokens;
    int64_t reasoning_tokens;
    bool usage_estimated; /* true when tokens were estimated, not reported */
    int64_t cost_nano_usd;
    int64_t latency_us;          /* request received -> response finished */
    int64_t ttft_us;             /* request received -> first token sent (-1 when none) */
    int64_t upstream_latency_us; /* upstream call start -> upstream done (-1 when none) */
    int64_t overhead_us;         /* latency minus upstream time: what brigade added */
    const char *error_kind;      /* NULL on success; e.g. "upstream_timeout_first_byte" */
    const char *upstream_model;  /* model id reported by the upstream */
    /* Routing decision (schema 2). For a direct model request policy is NULL and the numbers
     * are stored as NULL. */
    const char *policy;   /* "classifier", "rules", "cascade", "explore", ... */
    const char *decision; /* "strong", "weak", "rule", "accepted", "escalated", ... */
    double score;         /* policy score; NAN = none (NULL) */
    double threshold;     /* threshold the score was compared with; NAN = none (NULL) */
    const char *reason;   /* why, in words */
    const char *cascade;  /* models called in order, "cheap>strong"; NULL when not a cascade */
    double confidence;    /* cascade: confidence of the last answer judged; NAN = none */
};

/* Longest string kept per field, in bytes (longer ones are truncated). */
#define BR_STORE_MAX_STR 1024

/* Zero in any field selects its default. */
struct br_store_opts {
    const char *path;           /* SQLite file; created with its schema when missing; copied */
    size_t queue_capacity;      /* rows waiting for the writer (default 65536) */
    size_t batch_max;           /* rows per transaction at most (default 512; <= capacity) */
    uint32_t flush_interval_ms; /* longest a row waits before a commit (default 50) */
    uint32_t busy_timeout_ms;   /* SQLite busy timeout per attempt (default 5000) */
};

struct br_store_stats {
    uint64_t queued;       /* accepted by br_store_log */
    uint64_t written;      /* committed */
    uint64_t dropped;      /* refused: queue full (BR_ERR_BUSY) or out of memory */
    uint64_t failed;       /* lost to a database error (logged) */
    uint64_t transactions; /* batches committed */
    size_t depth;          /* rows waiting now (not counting the batch being written) */
};

/**
 * Opens (creating if needed) the database in WAL mode with synchronous=NORMAL (a committed row
 * survives a crash of the process, not necessarily a power loss) and starts the writer thread.
 * Caller closes. BR_ERR_INVAL (bad opts), BR_ERR_IO (SQLite could not open or set up the file,
 * logged), BR_ERR_UNSUPPORTED (schema newer than this build), BR_ERR_NOMEM.
 */
int br_store_open(const struct br_store_opts *opts, br_store **out);

/**
 * Commits every queued row, stops the writer and closes the database. NULL is a no-op. Must not
 * race with br_store_log on other threads.
 */
void br_store_close(br_store *s);

/**
 * Queues a copy of row; never waits for the disk (only for a short mutex). BR_ERR_BUSY when the
 * queue is full, BR_ERR_NOMEM when the copy cannot be made (both counted as dropped);
 * BR_ERR_INVAL for NULL arguments.
 */
int br_store_log(br_store *s, const struct br_log_row *row);

/** True when the queue is at or above capacity (used for admission backpressure). */
bool br_store_queue_full(const br_store *s);

/** Counters; safe from any thread. */
void br_store_stats_get(const br_store *s, struct br_store_stats *out);

/**
 * Blocks until every row queued before the call has been written (committed, or failed with a
 * logged database error). BR_OK when no row failed while waiting, BR_ERR_IO otherwise.
 */
int br_store_flush(br_store *s);

/* ---- feedback, thresholds and bodies (schema 2): queued like rows, same writer ---- */

/* Feedback about one request. Strings are copied (capped like row strings). */
struct br_feedback_row {
    const char *request_id;
    int64_t ts_ms;
    const char *key_id; /* key that sent the feedback; NULL when auth is off */
    bool is_master;     /* sent with the master key: may rate any request */
    double score;       /* 0..1 (thumbs up = 1, down = 0) */
    const char *comment;
};

/* The request-log row a feedback is attributed to. Strings are borrowed for the callback. */
struct br_feedback_attr {
    const char *route;
    const char *model;
    const char *policy;
    const char *decision;
    double score;     /* routing score, NAN when none */
    double threshold; /* NAN when none */
    int64_t cost_nano_usd;
    int status;
    double previous; /* the score of an earlier feedback for the same request (replaced), or
                        NAN when this is the first */
};

/*
 * Called on the writer thread after the feedback's transaction: rc is BR_OK (attr filled),
 * BR_ERR_NOTFOUND (no request with that id, or one made with another API key), or BR_ERR_IO.
 * It must not block: hand the result to the requester's thread.
 */
typedef void (*br_store_feedback_fn)(void *user, int rc, const struct br_feedback_attr *attr);

/**
 * Queues feedback. The writer looks the request up by id (rows queued before the feedback are
 * committed first, so a request logged a moment ago is found), stores the feedback with the
 * request's route, model, policy and decision (replacing an earlier feedback for the same
 * request), then calls fn exactly once. BR_ERR_BUSY (queue full) or BR_ERR_NOMEM: fn is not
 * called.
 */
int br_store_feedback(br_store *s, const struct br_feedback_row *fb, br_store_feedback_fn fn,
                      void *user);

/* A route's threshold at a point in time (history and persistence of re-tuned values). */
struct br_threshold_row {
    const char *route;
    int64_t ts_ms;
    double config_threshold; /* the configured value this one derives from */
    double threshold;
    const char *reason;
};

/** Queues a threshold change. Errors as br_store_log. */
int br_store_threshold(br_store *s, const struct br_threshold_row *t);

/* Bodies of a request, for distillation (log.bodies: true). */
struct br_body_row {
    const char *request_id;
    int64_t ts_ms;
    const char *route;        /* or NULL */
    const char *model;        /* model that answered */
    struct br_slice messages; /* the request's "messages" JSON array text */
    struct br_slice answer;   /* the answer's text */
    int status;
};

/**
 * Queues the bodies of a request; each is cut to max_bytes (a cut messages array is stored
 * with truncated = 1 and never exported). Errors as br_store_log.
 */
int br_store_body(br_store *s, const struct br_body_row *b, size_t max_bytes);

/* ---- read side, for the CLI (opens the file read-only; independent of a running writer) ---- */

enum br_store_group {
    BR_STORE_GROUP_MODEL,
    BR_STORE_GROUP_KEY,
    BR_STORE_GROUP_DAY,
};

struct br_store_total {
    const char *group; /* model name, key id or YYYY-MM-DD (UTC) */
    int64_t requests;
    int64_t errors; /* status >= 400 */
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t cost_nano_usd;
    double mean_latency_ms;
};

/*
 * Read side errors: BR_ERR_NOTFOUND (no such file), BR_ERR_UNSUPPORTED (not a brigade store of
 * this schema version), BR_ERR_IO (SQLite error, logged), BR_ERR_INVAL. A callback returning
 * non-zero stops the iteration, and that value is returned.
 */

/**
 * Calls fn for the `limit` most recent rows (limit <= 0: all) with ts_ms >= since_ms (since_ms
 * <= 0: all), newest first. The row and its strings are borrowed until fn returns.
 */
int br_store_query_recent(const char *path, int limit, int64_t since_ms,
                          int (*fn)(void *user, const struct br_log_row *row), void *user);

/**
 * Calls fn for each group's totals over rows with ts_ms >= since_ms (<= 0: all), largest cost
 * first, then by group name. A missing model or key id is grouped as "-". t is borrowed until
 * fn returns.
 */
int br_store_query_totals(const char *path, enum br_store_group group, int64_t since_ms,
                          int (*fn)(void *user, const struct br_store_total *t), void *user);

/**
 * Calls fn for the latest threshold of each route (persisted re-tuned values), route order.
 * A file without the table (or without any row) calls nothing. Errors as the other queries.
 */
int br_store_query_thresholds(const char *path,
                              int (*fn)(void *user, const struct br_threshold_row *t), void *user);

/** Calls fn for every threshold change of route (NULL: all routes), oldest first. */
int br_store_query_threshold_history(const char *path, const char *route,
                                     int (*fn)(void *user, const struct br_threshold_row *t),
                                     void *user);

/**
 * Writes one threshold row directly (synchronously, its own connection): for `brigade
 * calibrate`, which runs without a gateway. A running gateway picks the value up at its next
 * start (when the configured value still matches) — or reload the config with the new value.
 */
int br_store_threshold_save(const char *path, const struct br_threshold_row *t);

/* Per route and model: what the request log and the feedback say. */
struct br_store_route_total {
    const char *route;
    const char *model;
    const char *decision; /* NULL when grouped over decisions */
    int64_t requests;
    int64_t errors;
    int64_t cost_nano_usd;
    int64_t feedback;     /* feedback rows */
    double feedback_mean; /* mean score, 0 when none */
    double score_mean;    /* mean routing score (NAN when none) */
};

/**
 * Calls fn for each (route, model, decision) of routed requests with ts_ms >= since_ms, route
 * then model then decision order.
 */
int br_store_query_routes(const char *path, int64_t since_ms,
                          int (*fn)(void *user, const struct br_store_route_total *t), void *user);

/* One prompt/answer pair for export. Strings borrowed for the callback. */
struct br_store_export_row {
    const char *request_id;
    int64_t ts_ms;
    const char *route;
    const char *model;
    const char *messages; /* JSON array text */
    const char *answer;
    double feedback; /* NAN when none */
};

struct br_store_export_filter {
    const char *model;   /* only this model (NULL: any) */
    const char *route;   /* only this route (NULL: any) */
    double min_feedback; /* only rows with feedback >= this (NAN: no filter) */
    int64_t since_ms;    /* <= 0: all */
};

/**
 * Calls fn for each stored successful (status 200), untruncated body pair matching the
 * filter, oldest first.
 */
int br_store_query_bodies(const char *path, const struct br_store_export_filter *f,
                          int (*fn)(void *user, const struct br_store_export_row *r), void *user);

#endif
