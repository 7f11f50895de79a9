/* SPDX-License-Identifier: MIT */
/*
 * Routing: turns what a client asked for into a plan — the model that answers first and the
 * steps that may follow it (cascade escalation, fallbacks). A request that names a catalogue
 * model gets a one-step "direct" plan. A request that names a route (config `routes:`, e.g.
 * "auto") is decided by the route's policies, behind one ops table (route_int.h): rules,
 * classifier, cascade, latency, cost, random, direct; composed in order, each decides or
 * passes to the next.
 *
 * Order of a route decision (docs/internals/route.md):
 *   1. candidates: the route's models, minus those not in allowed_models, those lacking a
 *      capability the request uses (tools, JSON mode, images, context length), and those
 *      whose estimated cost exceeds the route's max_cost_usd or the client's cost hint;
 *   2. client hints (unless the route says hints: false): a latency hint drops candidates
 *      predicted too slow (keeping the fastest when none is fast enough); quality high or
 *      economy picks the strongest or cheapest candidate outright;
 *   3. exploration: a configured share of requests goes to a random candidate;
 *   4. the policies in order; when all pass, the route's default model.
 *
 * A router (br_router) is built from one config snapshot (it loads the classifiers' model
 * files) and is immutable, except for its live statistics (br_route_live: latency per model,
 * thresholds and feedback estimates per route), which are shared by every worker (atomics and
 * a mutex off the hot path) and survive reloads: a router built by a reload adopts the live
 * state of the routes and models it shares with the previous one.
 *
 * Thread-safety: br_route_req_parse and br_route_plan may run on any thread concurrently;
 * observations and feedback are thread-safe.
 */
#ifndef BR_ROUTE_H
#define BR_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/arena.h"
#include "core/rand.h"
#include "core/slice.h"

/* Fallbacks and cascade steps included. */
#define BR_PLAN_MAX_STEPS (2 * BR_ROUTE_MAX_MODELS + 1)

enum br_plan_step_kind {
    BR_PLAN_STEP_PRIMARY,  /* the first model to call */
    BR_PLAN_STEP_FALLBACK, /* called when the previous step failed before its first byte */
    BR_PLAN_STEP_CASCADE,  /* called when the previous step's answer was not confident */
};

struct br_plan_step {
    const struct br_model_cfg *model; /* borrowed from the config snapshot */
    const char *variant;              /* "MODEL:VARIANT" requests: VARIANT (borrowed from the
                                         request's model string), else NULL */
    enum br_plan_step_kind kind;
    double threshold; /* cascade: escalate below this confidence */
};

struct br_plan {
    const char *requested;                /* the client's "model" value (borrowed) */
    const char *route;                    /* route name, NULL for a direct model request */
    const struct br_route_cfg *route_cfg; /* NULL for a direct model request */
    const char *policy;   /* "direct", "rules", "classifier", "cascade", "latency", "cost",
                             "random", "explore", "hint", "default" */
    const char *decision; /* "strong", "weak", "model", ... (feedback estimates group by it) */
    const char *reason;   /* short human-readable reason (ASCII, no client text) */
    double score;         /* policy score; NAN when the policy has none */
    double threshold;     /* threshold the score was compared with; NAN when none */
    size_t chosen;        /* route candidate index of steps[0] */
    bool cascade;         /* steps after the primary are cascade escalations */
    size_t n_steps;
    struct br_plan_step steps[BR_PLAN_MAX_STEPS];
    char reason_buf[192];
};

/* ---- what a request tells the router, computed once per request ---- */

struct br_route_hints {
    int64_t max_latency_ms;        /* -1: none */
    int64_t max_cost_nano;         /* -1: none */
    enum br_route_quality quality; /* NONE: none */
};

struct br_route_req {
    const char *last_user; /* decoded text of the last user message ("" when none); arena */
    size_t last_user_len;
    const char *all_text; /* every message's text joined with '\n'; arena */
    size_t all_text_len;
    int64_t prompt_tokens; /* estimate: 1 token per 4 bytes of text + 4 per message */
    int64_t max_tokens;    /* max_completion_tokens or max_tokens; -1 when absent */
    unsigned n_messages;
    unsigned n_turns;         /* user messages */
    bool has_code;            /* fences, indented blocks or code keywords */
    bool has_math;            /* LaTeX, or digits joined by operators */
    unsigned uses;            /* enum br_model_cap bits: tools, response_format json, image parts */
    struct br_slice metadata; /* the body's "metadata" object text, or empty */
    struct br_route_hints hints;
};

/* Client hints, by header name or metadata key. */
enum br_route_hint_kind {
    BR_ROUTE_HINT_MAX_LATENCY_MS, /* x-brigade-max-latency-ms: positive integer */
    BR_ROUTE_HINT_MAX_COST_USD,   /* x-brigade-max-cost-usd: decimal USD */
    BR_ROUTE_HINT_QUALITY,        /* x-brigade-quality: high | standard | economy */
};

/** Header name (= metadata key) of a hint. */
const char *br_route_hint_name(enum br_route_hint_kind k);

/**
 * Reads the routing signals of a chat request from its raw body, which must be a validated
 * JSON object (no document is built: core/json navigation). Hints found in the body's
 * `metadata` object are read too. Strings are allocated from a. BR_ERR_INVAL with a message in
 * err (for a 400) when a hint is malformed; BR_ERR_NOMEM.
 */
int br_route_req_parse(br_arena *a, struct br_slice body, struct br_route_req *out, char *err,
                       size_t errlen);

/**
 * Sets one hint from text (a header value, or a metadata value with its quotes removed),
 * replacing what the body said: headers take precedence over metadata. BR_ERR_INVAL with a
 * message for a malformed value.
 */
int br_route_hint_set(struct br_route_hints *h, enum br_route_hint_kind k, struct br_slice value,
                      char *err, size_t errlen);

/** Longest text br_route_fmt3 writes, NUL included. */
#define BR_ROUTE_FMT3_LEN 32

/**
 * Writes v with three decimals ("0.731", "-2.500", "1200.000"; "nan", "inf") without printf,
 * which costs more than a whole rules decision. |v| >= 1e15 is written as "inf". Returns the
 * length.
 */
size_t br_route_fmt3(double v, char out[BR_ROUTE_FMT3_LEN]);

/* ---- routers ---- */

typedef struct br_router br_router;
typedef struct br_route_live br_route_live;

/** Creates an empty live-statistics registry. Caller destroys after every router using it. */
int br_route_live_create(br_route_live **out);

/** Frees the registry. NULL is a no-op. */
void br_route_live_destroy(br_route_live *l);

/**
 * Builds the router for cfg (borrowed: cfg must outlive the router): loads each classifier
 * route's model file and joins the live statistics (created when live is NULL, then owned by
 * the router). On failure writes a one-line reason with file and line.
 */
int br_router_create(const struct br_config *cfg, br_route_live *live, br_router **out, char *err,
                     size_t errlen);

/** Frees a router. NULL is a no-op. */
void br_router_destroy(br_router *r);

/** The config the router was built from. */
const struct br_config *br_router_config(const br_router *r);

/**
 * Plans a request for `model` (n bytes) when it names a catalogue model: a one-step direct
 * plan. BR_ERR_NOTFOUND otherwise.
 */
int br_route_plan_direct(const struct br_config *cfg, const char *model, size_t n,
                         struct br_plan *out);

/* Why a route could not plan a request: an OpenAI-shaped 400. */
struct br_route_error {
    const char *code;  /* e.g. "route_no_candidate" */
    const char *param; /* or NULL */
    char msg[320];
};

/**
 * Decides a route for one request. rng drives exploration and the random policy (the
 * worker's generator). BR_OK, or BR_ERR_INVAL with *err filled when no candidate can serve
 * the request (capabilities, cost cap).
 */
int br_route_plan(const br_router *r, const struct br_route_cfg *route,
                  const struct br_route_req *req, struct br_rng *rng, struct br_plan *out,
                  struct br_route_error *err);

/**
 * Estimated cost in nano-USD of req on model m: prompt tokens at the input price plus
 * max_tokens (or default_output_tokens when absent) at the output price.
 */
int64_t br_route_estimate_cost(const struct br_model_cfg *m, const struct br_route_req *req,
                               int64_t default_output_tokens);

/* ---- scores, thresholds, statistics ---- */

/**
 * The score the route's classifier gives text (binary: P(strong needed)). BR_ERR_NOTFOUND when
 * the route has no classifier. For calibration and tests.
 */
int br_router_score_text(const br_router *r, const struct br_route_cfg *route, const char *text,
                         size_t len, double *out);

/**
 * A cascade's learned verifier (confidence: verifier): P(the cheap answer is good) for a
 * prompt and the answer's text. BR_ERR_NOTFOUND when the route has no verifier. Thread-safe,
 * allocates nothing.
 */
int br_router_verify(const br_router *r, const struct br_route_cfg *route, const char *prompt,
                     size_t plen, const char *answer, size_t alen, double *p_ok);

/**
 * The route's current threshold: the classifier's (or the cascade's tau when the route has no
 * classifier). NAN when the route has neither.
 */
double br_router_threshold(const br_router *r, const struct br_route_cfg *route);

/**
 * Sets the route's live threshold (calibration, a restored value, tests), clamped to the
 * feedback bounds. `why` is kept in the threshold history. BR_ERR_NOTFOUND when the route has
 * no threshold.
 */
int br_router_threshold_set(br_router *r, const struct br_route_cfg *route, double threshold,
                            const char *why);

/**
 * Restores a threshold persisted by an earlier run, but only when it was derived from the
 * same configured value (config_threshold): a changed config value wins. True when applied.
 */
bool br_router_threshold_restore(br_router *r, const char *route, double config_threshold,
                                 double threshold);

/** The configured (not re-tuned) threshold of a route, NAN when none. */
double br_router_config_threshold(const struct br_route_cfg *route);

/**
 * Records a finished call of model m for the latency policy: time to first token (ms) and
 * output speed (tokens/s); pass a negative value for what was not measured.
 */
void br_router_observe_latency(br_router *r, const struct br_model_cfg *m, double ttft_ms,
                               double tokens_per_s);

/**
 * The live latency statistics of model m: EWMA time to first token (ms; -1 when not measured)
 * and tokens per second (-1 when not measured). False when nothing was measured yet.
 */
bool br_router_model_latency(const br_router *r, const struct br_model_cfg *m, double *ttft_ms,
                             double *tokens_per_s);

/** Predicted latency (ms) of req on model m under route (statistics, else the priors). */
double br_router_predict_latency_ms(const br_router *r, const struct br_route_cfg *route,
                                    const struct br_model_cfg *m, const struct br_route_req *req);

/** Records the cost of one finished request of a route (for the cost-drift check). */
void br_router_observe_cost(br_router *r, const struct br_route_cfg *route, int64_t cost_nano);

/* One feedback about a routed request, attributed from its request-log row. */
struct br_route_feedback {
    const char *route;    /* route name */
    const char *model;    /* model that answered */
    const char *policy;   /* plan policy */
    const char *decision; /* plan decision */
    double quality;       /* 0..1 (thumbs up = 1, down = 0) */
    double previous;      /* quality of an earlier feedback on the same request that this one
                             replaces, or NAN */
    int64_t cost_nano;    /* cost of the request */
    int64_t now_ms;       /* wall clock */
};

/* A threshold change made by feedback. */
struct br_route_adjustment {
    bool changed;
    double from;
    double to;
    double config_threshold;
    char why[320];
};

/**
 * Adds one feedback to the route's running estimates (per model and per decision) and, when
 * the route adapts, re-tunes its threshold in bounded steps: the quality of its cheap
 * decisions is below q_min with the configured confidence (more traffic to the strong model),
 * or the mean cost per request is above the target while that quality is above q_min with
 * confidence (more to the cheap one); at most once per cooldown and after min_samples. *adj
 * says whether the threshold moved (persist it). Unknown routes are ignored.
 */
void br_router_feedback(br_router *r, const struct br_route_feedback *fb,
                        struct br_route_adjustment *adj);

/**
 * Wilson score interval for a mean quality `mean` of n observations in [0, 1] at two-sided
 * confidence `confidence` (e.g. 0.95); [0, 1] when n is 0.
 */
void br_route_wilson(double mean, double n, double confidence, double *lo, double *hi);

/* A snapshot of one route's live state, for /admin/routes and metrics. */
struct br_route_estimate {
    const char *model; /* or NULL */
    const char *decision;
    int64_t n;   /* feedback count */
    double mean; /* mean quality */
    double lo;   /* interval at the route's confidence */
    double hi;
    int64_t cost_nano; /* summed cost of the feedback's requests */
};

struct br_route_history_entry {
    int64_t ts_ms;
    double from;
    double to;
    char why[96];
};

#define BR_ROUTE_MAX_ESTIMATES 64
#define BR_ROUTE_MAX_HISTORY   32

struct br_route_snapshot {
    double threshold;                       /* current (NAN when none) */
    double config_threshold;                /* configured */
    int64_t decisions[BR_ROUTE_MAX_MODELS]; /* per candidate, since start */
    int64_t requests;                       /* since start */
    int64_t cost_nano;                      /* since start */
    int64_t feedback;                       /* feedback count */
    size_t n_estimates;
    struct br_route_estimate estimates[BR_ROUTE_MAX_ESTIMATES]; /* strings borrowed from the
                                                                   router's live state */
    size_t n_history;
    struct br_route_history_entry history[BR_ROUTE_MAX_HISTORY]; /* oldest first */
};

/** Fills out with the route's live state. */
void br_router_snapshot(const br_router *r, const struct br_route_cfg *route,
                        struct br_route_snapshot *out);

/** Counts a decision for route (called by the gateway once the plan is used). */
void br_router_count_decision(br_router *r, const struct br_route_cfg *route, size_t chosen);

#endif
