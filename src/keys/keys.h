/* SPDX-License-Identifier: MIT */
/*
 * Virtual keys: API keys created at run time through the admin API, each with an optional
 * budget in nano-USD per period (day, month, total), RPM and TPM limits, an allowed-models list
 * and free metadata. Keys live in a SQLite file (WAL) and in memory; the secret itself is never
 * stored, only its SHA-256.
 *
 * Enforcement is atomic within a process: every key has its own mutex, and a request is admitted
 * (br_keys_admit) only when
 *     spent_in_period + reserved_by_requests_in_flight + estimate <= budget
 * The estimate is then reserved; br_keys_settle releases it and debits the real cost. So the
 * spend can pass the budget only by what admitted requests cost beyond their estimates: at most
 * the real cost of the requests the key has in flight when it crosses the budget.
 *
 * Durability: debits change the in-memory spend at once; one writer thread commits the spend of
 * every changed key in one transaction per flush interval (default 50 ms). A debit is
 * acknowledged when that transaction commits (br_keys_flush waits for it); a kill -9 loses at most
 * the debits of the last interval that had not committed yet. Creating, updating and revoking a
 * key commit synchronously before the call returns.
 *
 * Periods: day and month start at 00:00 UTC (the first of the month); spend resets when a new
 * period starts (checked on every admission and settlement, and at load). A request's cost counts
 * in the period in which it ends. "total" never resets.
 *
 * Thread-safety: every function may be called from any thread after br_keys_open; a br_vkey
 * pointer stays valid until br_keys_close (revoked keys stay in memory).
 */
#ifndef BR_KEYS_H
#define BR_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BR_KEYS_HASH_LEN   32 /* SHA-256 of the secret */
#define BR_KEYS_ID_LEN     19 /* "vk_" + 16 hex digits */
#define BR_KEYS_SECRET_LEN 46 /* "br-" + 43 base64url characters (32 random bytes) */
#define BR_KEYS_NAME_MAX   128
#define BR_KEYS_MODELS_MAX 64   /* names in an allowed-models list */
#define BR_KEYS_META_MAX   4096 /* bytes of metadata JSON text */

typedef struct br_keys br_keys;
typedef struct br_vkey br_vkey;

enum br_keys_period {
    BR_KEYS_PERIOD_TOTAL = 0, /* never resets */
    BR_KEYS_PERIOD_DAY,       /* 00:00 UTC */
    BR_KEYS_PERIOD_MONTH,     /* the first of the month, 00:00 UTC */
};

/* A key's settings. Strings are borrowed from the caller for the call (copied). */
struct br_keys_spec {
    const char *name;           /* or NULL */
    bool has_budget;            /* budget_nano applies */
    int64_t budget_nano;        /* >= 0 */
    enum br_keys_period period; /* of the budget and of the reported spend */
    int64_t rpm;                /* requests per minute, 0 = no limit */
    int64_t tpm;                /* tokens per minute, 0 = no limit */
    const char *const *models;  /* allowed "model" values; NULL = all */
    size_t n_models;            /* with models != NULL: 0 = none allowed */
    const char *metadata_json;  /* a JSON object's text, or NULL */
};

/* Which spec fields an update changes. */
enum br_keys_field {
    BR_KEYS_FIELD_NAME = 1u << 0,
    BR_KEYS_FIELD_BUDGET = 1u << 1, /* has_budget, budget_nano and period */
    BR_KEYS_FIELD_RPM = 1u << 2,
    BR_KEYS_FIELD_TPM = 1u << 3,
    BR_KEYS_FIELD_MODELS = 1u << 4,
    BR_KEYS_FIELD_METADATA = 1u << 5,
};

/* A snapshot of one key for the admin API. Heap strings; br_keys_info_cleanup frees them. */
struct br_keys_info {
    char id[BR_KEYS_ID_LEN + 1];
    char *name;    /* or NULL */
    char **models; /* NULL = all allowed */
    size_t n_models;
    char *metadata_json; /* or NULL */
    bool has_budget;
    int64_t budget_nano;
    enum br_keys_period period;
    int64_t rpm;
    int64_t tpm;
    int64_t created_ms;
    int64_t revoked_ms;        /* 0 = active */
    int64_t spent_nano;        /* in the current period */
    int64_t persisted_nano;    /* the part of spent_nano committed to disk (acknowledged) */
    int64_t reserved_nano;     /* estimates of the requests in flight */
    int64_t in_flight;         /* requests admitted and not settled */
    int64_t period_start_ms;   /* 0 for total */
    int64_t period_end_ms;     /* 0 for total */
    int64_t requests_last_min; /* admitted in the last 60 s */
    int64_t tokens_last_min;   /* settled in the last 60 s, plus in-flight estimates */
};

/* Why br_keys_admit refused. */
enum br_keys_deny {
    BR_KEYS_DENY_NONE = 0,
    BR_KEYS_DENY_REVOKED,
    BR_KEYS_DENY_RPM,
    BR_KEYS_DENY_TPM,
    BR_KEYS_DENY_BUDGET,
};

struct br_keys_denial {
    enum br_keys_deny why;
    int64_t retry_after_s; /* 0 = retrying cannot help (a spent total budget) */
    int64_t limit;         /* rpm, tpm or budget_nano */
    int64_t spent_nano;    /* budget: spend in the period */
    int64_t reserved_nano; /* budget: held by requests in flight */
    int64_t needed_nano;   /* budget: this request's estimate */
    enum br_keys_period period;
};

/* An admitted request's reservation; settle exactly once (a second settle is a no-op). */
struct br_keys_ticket {
    br_vkey *key; /* NULL: nothing reserved */
    int64_t reserved_nano;
    int64_t reserved_tokens;
};

/**
 * Opens (creating when missing) the key store at path and loads every key; starts the spend
 * writer (flush_ms: longest a debit waits for its commit; 0 = 50). Caller closes.
 * BR_ERR_IO (SQLite could not open or set up the file; logged), BR_ERR_NOMEM, BR_ERR_INVAL.
 */
int br_keys_open(const char *path, uint32_t flush_ms, br_keys **out);

/** Commits pending debits, stops the writer and frees everything. NULL is a no-op. */
void br_keys_close(br_keys *ks);

/** Number of keys that are not revoked. */
size_t br_keys_active_count(const br_keys *ks);

/** Number of keys, revoked ones included. */
size_t br_keys_count(const br_keys *ks);

/**
 * The key whose secret hashes to hash (revoked keys included), or NULL. The candidate found by
 * the hash table is confirmed with a constant-time comparison.
 */
br_vkey *br_keys_find(br_keys *ks, const unsigned char hash[BR_KEYS_HASH_LEN]);

/** The key's id ("vk_..."); valid until br_keys_close. */
const char *br_keys_id(const br_vkey *k);

/** True once the key is revoked. */
bool br_keys_revoked(br_vkey *k);

/**
 * True when the key may use the model (or route) name (n bytes): no list, the name listed, or
 * "BASE:VARIANT" with BASE listed.
 */
bool br_keys_model_allowed(br_vkey *k, const char *name, size_t n);

/**
 * Admits a request with estimated cost est_nano and estimated tokens est_tokens (prompt plus
 * maximum output) at wall time now_ms: checks revocation, RPM, TPM and budget, then reserves.
 * BR_OK (ticket filled) or BR_ERR_LIMIT (denial filled, nothing reserved).
 *
 * RPM: fewer than rpm requests admitted in the last 60 s. TPM: the tokens settled in the last
 * 60 s plus the estimates of requests in flight are below tpm. Budget: as the file comment says.
 */
int br_keys_admit(br_vkey *k, int64_t est_nano, int64_t est_tokens, int64_t now_ms,
                  struct br_keys_ticket *ticket, struct br_keys_denial *denial);

/**
 * Ends an admitted request: releases its reservation, debits cost_nano (in the period current
 * at now_ms) and counts tokens in the TPM window. The debit is queued for the writer.
 */
void br_keys_settle(br_keys *ks, struct br_keys_ticket *ticket, int64_t cost_nano, int64_t tokens,
                    int64_t now_ms);

/**
 * Creates a key: a fresh secret from the kernel CSPRNG (written to secret_out, shown once, never
 * stored), committed before returning. info_out (may be NULL) gets the new key's snapshot.
 * BR_ERR_INVAL (spec out of range), BR_ERR_IO, BR_ERR_NOMEM.
 */
int br_keys_create(br_keys *ks, const struct br_keys_spec *spec, int64_t now_ms,
                   char secret_out[BR_KEYS_SECRET_LEN + 1], struct br_keys_info *info_out);

/**
 * Changes the fields in mask (enum br_keys_field bits), committed before returning. A change of
 * the budget's period starts a new period with zero spend; changing only the amount keeps the
 * spend. BR_ERR_NOTFOUND (no such id), BR_ERR_INVAL, BR_ERR_IO, BR_ERR_NOMEM.
 */
int br_keys_update(br_keys *ks, const char *id, const struct br_keys_spec *spec, unsigned mask,
                   int64_t now_ms, struct br_keys_info *info_out);

/** Revokes a key (committed before returning; idempotent). BR_ERR_NOTFOUND, BR_ERR_IO. */
int br_keys_revoke(br_keys *ks, const char *id, int64_t now_ms, struct br_keys_info *info_out);

/** Snapshot of key id. BR_ERR_NOTFOUND, BR_ERR_NOMEM. */
int br_keys_get(br_keys *ks, const char *id, int64_t now_ms, struct br_keys_info *out);

/**
 * Calls fn with a snapshot of every key, in creation order; a non-zero return stops and is
 * returned. BR_ERR_NOMEM when a snapshot cannot be made. info is borrowed for the call.
 */
int br_keys_list(br_keys *ks, int64_t now_ms,
                 int (*fn)(void *user, const struct br_keys_info *info), void *user);

/** Frees a snapshot's strings. */
void br_keys_info_cleanup(struct br_keys_info *info);

/**
 * Blocks until every debit settled before the call is committed. BR_OK, or BR_ERR_IO when a
 * commit failed (logged; the debits stay queued and are retried).
 */
int br_keys_flush(br_keys *ks);

/** "day", "month" or "total". */
const char *br_keys_period_name(enum br_keys_period p);

/** Parses a period name. BR_ERR_PARSE for anything else. */
int br_keys_period_parse(const char *s, enum br_keys_period *out);

/**
 * The period containing now_ms (ms since the epoch, UTC): its start and its end (exclusive);
 * both 0 for total.
 */
void br_keys_period_bounds(enum br_keys_period p, int64_t now_ms, int64_t *start_out,
                           int64_t *end_out);

#endif
