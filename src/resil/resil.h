/* SPDX-License-Identifier: MIT */
/*
 * Resilience logic for the gateway's upstream calls (issue 5, parts 2-4): per-deployment
 * circuit breakers, a load balancer over the deployments of one model name (weighted, random,
 * least outstanding, latency-aware; RPM/TPM limits; exclusion), a retry policy (exponential
 * backoff with full jitter, Retry-After, a cap on the total wait, a global retry budget) and
 * the classification of an attempt's outcome into retry / fallback / fail.
 *
 * Pure logic: no I/O, no libuv, no clock reads. Time always comes in as `now_ms` (monotonic
 * milliseconds, any epoch, never decreasing for one object) and randomness from the caller's
 * struct br_rng, so that every decision is deterministic in tests. Nothing here allocates after
 * create. Semantics: docs/internals/resilience.md.
 *
 * Thread-safety: br_resil_breaker, br_resil_lb and br_resil_budget may be shared by all worker
 * threads (the breaker and the balancer hold one small mutex each; the budget uses C11
 * atomics). Options structs, leases, retry states and the classification functions are plain
 * values owned by their caller.
 */
#ifndef BR_RESIL_H
#define BR_RESIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rand.h"
#include "core/slice.h"
#include "upstream/upstream.h" /* enum br_upstream_error only (header, no link dependency) */

/* ------------------------------------------------------------------------------------------ */
/* Attempt outcome: what the gateway knows when one upstream attempt has ended.                */

/*
 * The health of a deployment as shown by one attempt; it drives the breaker, the cooldown and
 * nothing else.
 */
enum br_resil_health {
    BR_RESIL_HEALTH_OK = 0,       /* the deployment answered (2xx, or a 4xx that is the
                                     request's fault: 400, 404, 413, 422, context overflow) */
    BR_RESIL_HEALTH_FAILURE,      /* transport failure, timeout, 5xx, 401/403 (bad key), 408:
                                     counts towards ejection */
    BR_RESIL_HEALTH_RATE_LIMITED, /* 429: the deployment cools down for Retry-After (or the
                                     balancer's rate_limit_cooldown_ms); not a breaker failure */
    BR_RESIL_HEALTH_NEUTRAL,      /* no verdict on the deployment (canceled, client gone,
                                     response too large): changes no counter */
};

/** Stable lower-case name ("ok", "failure", "rate_limited", "neutral"). */
const char *br_resil_health_name(enum br_resil_health h);

/*
 * One attempt's outcome, filled from struct br_provider_result (src/upstream/provider.h) plus
 * what the gateway knows about the client side.
 */
struct br_resil_outcome {
    enum br_upstream_error error_kind; /* br_provider_result.error_kind; NONE on success */
    int status;              /* the upstream's HTTP status; read only when error_kind is NONE
                                or HTTP_STATUS (the provider's synthesized 502/504 for
                                transport failures is ignored: error_kind decides) */
    bool context_overflow;   /* the upstream refused the prompt as longer than its context
                                window (see br_resil_is_context_overflow) */
    bool client_bytes_sent;  /* any byte of the answer (status line included) reached the
                                client: then nothing is ever retried or fallen back */
    uint32_t retry_after_ms; /* br_provider_result.retry_after_ms; 0 when absent */
};

/* ------------------------------------------------------------------------------------------ */
/* Classification (part 1 of the fallback rules, part 2's retry triggers).            */

/* Non-status triggers (bits of br_resil_triggers.retry_kinds / fallback_kinds). */
#define BR_RESIL_TRIGGER_CONNECT            (1u << 0) /* DNS, CONNECT, TLS, TIMEOUT_CONNECT */
#define BR_RESIL_TRIGGER_FIRST_BYTE_TIMEOUT (1u << 1) /* TIMEOUT_FIRST_BYTE */
#define BR_RESIL_TRIGGER_IDLE_TIMEOUT       (1u << 2) /* TIMEOUT_IDLE, before client bytes */
#define BR_RESIL_TRIGGER_BROKEN                        \
    (1u << 3) /* CLOSED, PROTOCOL, BAD_RESPONSE, OTHER \
                 before client bytes */
#define BR_RESIL_TRIGGER_CONTEXT_LENGTH                 \
    (1u << 4) /* context overflow: fallback only; never \
                 a retry of the same model */

/* Status triggers cover 400..599 (bit status - 400). */
#define BR_RESIL_STATUS_MIN 400
#define BR_RESIL_STATUS_MAX 599

/*
 * Which outcomes may be retried on the same model and which may fall back to the next model
 * of the chain. Plain value; fill it with br_resil_triggers_default, then adjust.
 */
struct br_resil_triggers {
    uint32_t retry_kinds;     /* BR_RESIL_TRIGGER_* (CONTEXT_LENGTH is ignored here) */
    uint32_t fallback_kinds;  /* BR_RESIL_TRIGGER_* */
    uint64_t retry_status[4]; /* bitset of statuses 400..599 (bit status - 400) */
    uint64_t fallback_status[4];
};

/**
 * The default triggers: retry and fallback on CONNECT, FIRST_BYTE_TIMEOUT, 429, 500, 502, 503,
 * 504; fallback (only) on CONTEXT_LENGTH.
 */
void br_resil_triggers_default(struct br_resil_triggers *t);

/** Removes every trigger (retry and fallback), so that a config can list its own. */
void br_resil_triggers_clear(struct br_resil_triggers *t);

/**
 * Sets whether `status` retries and whether it falls back. BR_ERR_RANGE when status is outside
 * 400..599 (t unchanged).
 */
int br_resil_triggers_set_status(struct br_resil_triggers *t, int status, bool retry,
                                 bool fallback);

enum br_resil_action {
    BR_RESIL_ACTION_SUCCESS = 0, /* the attempt answered: nothing to do */
    BR_RESIL_ACTION_RETRY,       /* retry the same model (the balancer prefers another
                                    deployment); when no retry is possible (attempts, total
                                    wait, budget, no deployment) fall back if fallback_ok,
                                    else fail */
    BR_RESIL_ACTION_FALLBACK,    /* go to the next model of the chain at once, or fail when
                                    there is none */
    BR_RESIL_ACTION_FAIL,        /* answer the client with this attempt's error */
};

/** Stable lower-case name ("success", "retry", "fallback", "fail"). */
const char *br_resil_action_name(enum br_resil_action a);

struct br_resil_verdict {
    enum br_resil_action action;
    bool fallback_ok;            /* RETRY: a fallback is allowed when the retry is not */
    enum br_resil_health health; /* for br_resil_lb_release / br_resil_breaker_report */
};

/**
 * Classifies one attempt. Never RETRY or FALLBACK once client_bytes_sent. Pure function of its
 * arguments; any thread.
 */
void br_resil_classify(const struct br_resil_triggers *t, const struct br_resil_outcome *o,
                       struct br_resil_verdict *out);

/**
 * True when an upstream error answer (status, body) says the prompt does not fit the model's
 * context window: status 400, 413 or 422 and a body naming it (OpenAI's
 * "context_length_exceeded", "maximum context length", Anthropic's "prompt is too long",
 * "exceeds the maximum number of tokens", "context window"; case-insensitive). Borrows body.
 */
bool br_resil_is_context_overflow(int status, struct br_slice body);

/* ------------------------------------------------------------------------------------------ */
/* Circuit breaker (part 4).                                                                   */

struct br_resil_breaker_opts {
    uint32_t failure_threshold; /* consecutive failures that open it (default 5, >= 1) */
    uint64_t eject_ms;          /* ejection for the n-th consecutive opening: eject_ms * n
                                   (default 30000, >= 1) */
    uint64_t eject_max_ms;      /* cap of one ejection (default 300000, >= eject_ms) */
};

/** Fills the defaults (5, 30 s, 300 s). */
void br_resil_breaker_opts_default(struct br_resil_breaker_opts *o);

enum br_resil_breaker_state {
    BR_RESIL_BREAKER_STATE_CLOSED = 0, /* traffic flows; counting consecutive failures */
    BR_RESIL_BREAKER_STATE_OPEN,       /* ejected until until_ms */
    BR_RESIL_BREAKER_STATE_HALF_OPEN,  /* ejection over: one probe at a time decides */
};

/** Stable lower-case name ("closed", "open", "half_open"). */
const char *br_resil_breaker_state_name(enum br_resil_breaker_state s);

/* A snapshot for metrics and the admin API. */
struct br_resil_breaker_info {
    enum br_resil_breaker_state state; /* OPEN whose until_ms has passed reads HALF_OPEN */
    uint32_t consecutive_failures;     /* while closed */
    uint32_t ejections;                /* n: consecutive openings without a success between */
    uint64_t total_ejections;          /* openings since create */
    uint64_t until_ms;                 /* OPEN: end of the ejection; 0 otherwise */
    bool probe_in_flight;              /* HALF_OPEN: the one probe is out */
};

/* What the breaker granted one request. */
enum br_resil_admit {
    BR_RESIL_ADMIT_DENY = 0, /* open, or half-open with the probe already out */
    BR_RESIL_ADMIT_NORMAL,   /* closed */
    BR_RESIL_ADMIT_PROBE,    /* half-open: this request is the probe; report it without fail */
};

typedef struct br_resil_breaker br_resil_breaker;

/**
 * Creates a breaker (closed). BR_ERR_INVAL for invalid opts (threshold 0, eject_ms 0,
 * eject_max_ms < eject_ms), BR_ERR_NOMEM. Caller destroys. (The balancer keeps its own breakers
 * per deployment; this standalone one is for other users.)
 */
int br_resil_breaker_create(const struct br_resil_breaker_opts *o, br_resil_breaker **out);

/** Frees the breaker; NULL is a no-op. */
void br_resil_breaker_destroy(br_resil_breaker *b);

/**
 * Asks to send one request. On DENY, *until_ms_out (may be NULL) receives the earliest time
 * worth asking again (end of the ejection; now_ms + 1000 while a probe is out). Every NORMAL or
 * PROBE admission must be reported exactly once with br_resil_breaker_report. Any thread.
 */
enum br_resil_admit br_resil_breaker_admit(br_resil_breaker *b, uint64_t now_ms,
                                           uint64_t *until_ms_out);

/**
 * Reports the end of an admitted request. PROBE: OK closes (n back to 0), FAILURE re-opens for
 * eject_ms * (n + 1) (capped), anything else frees the probe slot and stays half-open. NORMAL
 * while closed: FAILURE counts (the threshold opens it), OK resets the count; RATE_LIMITED and
 * NEUTRAL change nothing. NORMAL reports that arrive while open or half-open (requests admitted
 * before the opening) are ignored. Any thread.
 */
void br_resil_breaker_report(br_resil_breaker *b, enum br_resil_admit admitted,
                             enum br_resil_health h, uint64_t now_ms);

/** Snapshot of the state at now_ms. Any thread. */
void br_resil_breaker_info(br_resil_breaker *b, uint64_t now_ms, struct br_resil_breaker_info *out);

/* ------------------------------------------------------------------------------------------ */
/* Load balancer over the deployments of one model name (part 3).                             */

/* At most this many deployments per balancer (the exclude set is a 64-bit mask). */
#define BR_RESIL_LB_MAX 64

enum br_resil_lb_policy {
    BR_RESIL_LB_POLICY_WEIGHTED = 0,      /* smooth weighted round robin (nginx): exact
                                             shares, deterministic, no rng needed */
    BR_RESIL_LB_POLICY_RANDOM,            /* weighted random, from the caller's rng */
    BR_RESIL_LB_POLICY_LEAST_OUTSTANDING, /* fewest requests in flight per unit of weight;
                                             ties: smooth weighted round robin */
    BR_RESIL_LB_POLICY_LATENCY,           /* lowest EWMA(time to first byte) x (outstanding + 1)
                                             / weight; deployments without a (fresh) sample
                                             first; ties: smooth weighted round robin */
};

/** Stable lower-case name ("weighted", "random", "least_outstanding", "latency"). */
const char *br_resil_lb_policy_name(enum br_resil_lb_policy p);

/** Parses a policy name (the strings of br_resil_lb_policy_name). BR_ERR_INVAL if unknown. */
int br_resil_lb_policy_parse(struct br_slice name, enum br_resil_lb_policy *out);

struct br_resil_lb_opts {
    enum br_resil_lb_policy policy;  /* default WEIGHTED */
    double ewma_alpha;               /* weight of a new TTFB sample, (0, 1] (default 0.3) */
    uint64_t ewma_stale_ms;          /* a TTFB sample older than this no longer counts: the
                                        deployment is "untried" again and gets a request to
                                        re-measure it (default 30000; 0 = never stale) */
    uint64_t window_ms;              /* RPM/TPM window length (default 60000) */
    uint64_t rate_limit_cooldown_ms; /* cooldown after a 429 without Retry-After (default
                                        1000); a Retry-After is used as given, capped at
                                        breaker.eject_max_ms */
    struct br_resil_breaker_opts breaker;
};

/** Fills the defaults above. */
void br_resil_lb_opts_default(struct br_resil_lb_opts *o);

struct br_resil_deployment_opts {
    uint32_t weight; /* relative share, >= 1 (default 1) */
    uint32_t rpm;    /* requests started per window; 0 = unlimited */
    uint64_t tpm;    /* tokens per window (estimated at start, corrected at end);
                        0 = unlimited */
};

typedef struct br_resil_lb br_resil_lb;

/**
 * Creates a balancer over n deployments (1..BR_RESIL_LB_MAX); deps is copied, index i of deps
 * is deployment i in every call below. BR_ERR_INVAL for bad options (n, weight 0, alpha outside
 * (0, 1], window 0, bad breaker opts), BR_ERR_NOMEM. Caller destroys.
 */
int br_resil_lb_create(const struct br_resil_lb_opts *o,
                       const struct br_resil_deployment_opts *deps, size_t n, br_resil_lb **out);

/** Frees the balancer; NULL is a no-op. No lease may be outstanding. */
void br_resil_lb_destroy(br_resil_lb *lb);

/** Number of deployments. */
size_t br_resil_lb_size(const br_resil_lb *lb);

/*
 * One granted attempt on one deployment. Plain value held by the request between acquire and
 * release; its fields are read-only for the caller.
 */
struct br_resil_lease {
    uint32_t index;      /* the chosen deployment */
    bool probe;          /* this attempt is the breaker's half-open probe */
    uint64_t start_ms;   /* now_ms at acquire */
    uint64_t window_id;  /* RPM/TPM window the estimate was charged to */
    uint64_t est_tokens; /* tokens charged at acquire */
};

/**
 * Picks a deployment by the policy among those that are not in `exclude` (bit i = deployment i,
 * e.g. those already tried for this request), not ejected by their breaker (half-open ones admit
 * one probe at a time), not cooling down after a 429, under their RPM limit and with room for
 * est_tokens under their TPM limit (a deployment with nothing charged in the window always has
 * room). Then charges it atomically: one request and est_tokens to its window, one outstanding
 * request. rng is used by the RANDOM policy only (may be NULL for the others).
 *
 * Returns BR_OK and fills *out; BR_ERR_BUSY when every non-excluded deployment is unavailable,
 * with *retry_at_ms_out (may be NULL) = the earliest time one of them becomes available (for
 * Retry-After); BR_ERR_NOTFOUND when every deployment is excluded (nothing left to try: fall
 * back). Every BR_OK must be followed by exactly one br_resil_lb_release. Any thread; allocates
 * nothing.
 */
int br_resil_lb_acquire(br_resil_lb *lb, uint64_t exclude, uint64_t est_tokens, uint64_t now_ms,
                        struct br_rng *rng, struct br_resil_lease *out, uint64_t *retry_at_ms_out);

/* How an attempt ended, for br_resil_lb_release. */
struct br_resil_lb_result {
    enum br_resil_health health; /* from br_resil_classify */
    uint64_t ttfb_ns;            /* time to first byte (first token for streams, at the
                                    caller's choice, consistently); 0 = no sample */
    bool tokens_known;           /* the real token count is known (usage reported or
                                    counted) */
    uint64_t tokens;             /* real tokens (prompt + completion) when tokens_known: the
                                    window is corrected by tokens - est_tokens if the lease's
                                    window is still the current one */
    uint32_t retry_after_ms;     /* RATE_LIMITED: the upstream's Retry-After, 0 if absent */
};

/**
 * Ends an attempt: outstanding count, EWMA (when ttfb_ns > 0), TPM correction, the breaker
 * (FAILURE counts; a probe's result closes or re-opens it), the cooldown (RATE_LIMITED). Any
 * thread; allocates nothing.
 */
void br_resil_lb_release(br_resil_lb *lb, const struct br_resil_lease *lease,
                         const struct br_resil_lb_result *r, uint64_t now_ms);

/* A deployment's state for metrics and the admin API. */
struct br_resil_deployment_info {
    struct br_resil_breaker_info breaker;
    uint32_t outstanding;       /* attempts in flight */
    bool has_ewma;              /* a TTFB sample exists (it may be stale) */
    double ewma_ttfb_ms;        /* EWMA of time to first byte, ms */
    uint64_t cooldown_until_ms; /* after a 429; 0 when not cooling down */
    uint32_t window_requests;   /* requests charged to the current window */
    uint64_t window_tokens;     /* tokens charged to the current window */
    uint64_t picks;             /* acquisitions since create */
    uint64_t failures;          /* FAILURE results since create */
};

/** Snapshot of deployment i at now_ms. BR_ERR_RANGE when i >= size. Any thread. */
int br_resil_lb_info(br_resil_lb *lb, size_t i, uint64_t now_ms,
                     struct br_resil_deployment_info *out);

/* ------------------------------------------------------------------------------------------ */
/* Retry policy (part 2).                                                                      */

struct br_resil_retry_opts {
    uint32_t max_retries;   /* retries per model per request, after the first attempt
                               (default 2; 0 = never retry, fall back at once) */
    uint64_t base_ms;       /* backoff base (default 100, >= 1) */
    uint64_t cap_ms;        /* cap of one backoff before jitter (default 5000, >= base_ms) */
    uint64_t total_wait_ms; /* cap on the sum of all waits of one request (default 60000) */
};

/** Fills the defaults above. */
void br_resil_retry_opts_default(struct br_resil_retry_opts *o);

/* Per-request retry state (a plain value in the request; zero it, or call _init). */
struct br_resil_retry_state {
    uint32_t retries;   /* retries granted on the current model */
    uint64_t waited_ms; /* sum of all waits granted to this request (all models) */
};

/** Zeroes the state (start of a request). */
void br_resil_retry_state_init(struct br_resil_retry_state *s);

/** A fallback to the next model: its retry count starts again; the total wait does not. */
void br_resil_retry_state_next_model(struct br_resil_retry_state *s);

/**
 * Decides the wait before retry number s->retries + 1 of the current model:
 * jitter = uniform integer in [0, min(cap_ms, base_ms * 2^retries)] (full jitter), and
 * delay = max(jitter, retry_after_ms) (pass the Retry-After of the deployment the retry will go
 * to, 0 when it goes elsewhere). Returns BR_OK with *delay_ms_out and counts the retry and its
 * wait in s; BR_ERR_LIMIT when max_retries are used up or delay would take the request's total
 * wait past total_wait_ms (s unchanged: do not retry). Does not touch the retry budget. rng must
 * not be NULL. Allocates nothing.
 */
int br_resil_retry_next(const struct br_resil_retry_opts *o, struct br_resil_retry_state *s,
                        uint32_t retry_after_ms, struct br_rng *rng, uint64_t *delay_ms_out);

/* ------------------------------------------------------------------------------------------ */
/* Global retry budget (part 2): retries in flight <= max(min_retries, ratio x requests in     */
/* flight).                                                                                    */

struct br_resil_budget_opts {
    uint32_t min_retries; /* retries always allowed in flight (default 3) */
    double ratio;         /* share of requests in flight (default 0.2, >= 0) */
};

/** Fills the defaults above. */
void br_resil_budget_opts_default(struct br_resil_budget_opts *o);

typedef struct br_resil_budget br_resil_budget;

/** Creates a budget. BR_ERR_INVAL (ratio < 0 or not finite), BR_ERR_NOMEM. Caller destroys. */
int br_resil_budget_create(const struct br_resil_budget_opts *o, br_resil_budget **out);

/** Frees the budget; NULL is a no-op. */
void br_resil_budget_destroy(br_resil_budget *b);

/** A client request enters (call once per request that may reach an upstream). Lock-free. */
void br_resil_budget_request_begin(br_resil_budget *b);

/** That request ends (exactly once per request_begin). Lock-free. */
void br_resil_budget_request_end(br_resil_budget *b);

/**
 * Takes one retry token: true when retries in flight + 1 <= max(min_retries, floor(ratio x
 * requests in flight)), false (nothing taken) otherwise. Hold the token from the decision to
 * retry (the backoff wait included) until that retry attempt ends, then release it. Lock-free.
 */
bool br_resil_budget_acquire(br_resil_budget *b);

/** Returns one retry token. Lock-free. */
void br_resil_budget_release(br_resil_budget *b);

/** Current counts, for metrics (either pointer may be NULL). */
void br_resil_budget_counts(br_resil_budget *b, uint64_t *requests_out, uint64_t *retries_out);

#endif
