/* SPDX-License-Identifier: MIT */
/*
 * Private to src/route: the router's per-route runtime, the live statistics and the policy
 * ops table. Never included from outside src/route.
 */
#ifndef BR_ROUTE_INT_H
#define BR_ROUTE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "route/route.h"

typedef struct br_classifier br_classifier;

/* ---- live statistics (route_live.c) ---- */

/* One catalogue model's latency statistics, shared by all workers (doubles kept as bits). */
struct br__live_model {
    char *name;                   /* owned */
    atomic_uint_fast64_t ttft_ms; /* EWMA of time to first token, double bits */
    atomic_uint_fast64_t tps;     /* EWMA of output tokens per second, double bits */
    atomic_uint_fast64_t n_ttft;  /* observations */
    atomic_uint_fast64_t n_tps;
    struct br__live_model *next;
};

/* Running feedback estimate of one (model, decision) pair. */
struct br__live_est {
    char *model;          /* owned */
    const char *decision; /* static string */
    int64_t n;
    double sum;
    int64_t cost_nano;
};

/* One route's live state; created for a route name and kept across reloads. */
struct br__live_route {
    char *name;                     /* owned */
    atomic_uint_fast64_t threshold; /* double bits; current threshold */
    double config_threshold;        /* configured value the current one derives from */
    bool has_threshold;
    atomic_int_fast64_t decisions[BR_ROUTE_MAX_MODELS]; /* per candidate index */
    char *decision_models[BR_ROUTE_MAX_MODELS];         /* candidate names the counts are for */
    atomic_int_fast64_t requests;
    atomic_int_fast64_t cost_nano;
    /* Since the last adjustment, for the cost-drift check. */
    atomic_int_fast64_t window_requests;
    atomic_int_fast64_t window_cost_nano;

    pthread_mutex_t mu; /* guards everything below */
    int64_t feedback;
    size_t n_est;
    struct br__live_est est[BR_ROUTE_MAX_ESTIMATES];
    /* Cheap decisions' feedback since the last adjustment. */
    int64_t win_n;
    double win_sum;
    int64_t last_adjust_ms;
    size_t n_hist; /* entries written, ring of BR_ROUTE_MAX_HISTORY */
    struct br_route_history_entry hist[BR_ROUTE_MAX_HISTORY];
    struct br__live_route *next;
};

struct br_route_live {
    pthread_mutex_t mu; /* guards the lists (lookups at router creation only) */
    struct br__live_route *routes;
    struct br__live_model *models;
};

/** The live entry of route `name`, created when missing. NULL on OOM. */
struct br__live_route *br__live_route_get(br_route_live *l, const char *name);

/** The live entry of model `name`, created when missing. NULL on OOM. */
struct br__live_model *br__live_model_get(br_route_live *l, const char *name);

double br__live_load(const atomic_uint_fast64_t *a);
void br__live_store(atomic_uint_fast64_t *a, double v);

/** Adds a threshold change to the route's history (mu held). */
void br__live_history_add(struct br__live_route *lr, int64_t ts_ms, double from, double to,
                          const char *why);

/* ---- the router ---- */

/* Per-route runtime, parallel to cfg->routes. */
struct br__route_rt {
    const struct br_route_cfg *cfg;
    br_classifier *clf;                                 /* classifier policy, or NULL */
    br_classifier *verifier;                            /* cascade confidence verifier, or NULL */
    size_t clf_outputs;                                 /* 1: binary; else N-model */
    size_t clf_map[BR_ROUTE_MAX_MODELS];                /* N-model: output index per candidate */
    struct br__live_route *live;                        /* never NULL */
    struct br__live_model *models[BR_ROUTE_MAX_MODELS]; /* per candidate */
    bool threshold_is_cascade; /* the live threshold is the cascade's tau */
};

struct br_router {
    const struct br_config *cfg;
    br_route_live *live;
    bool owns_live;
    struct br__route_rt *routes;            /* [cfg->n_routes] */
    struct br__live_model **catalogue_live; /* [cfg->n_models] */
};

/** The runtime of route (a pointer into cfg->routes), or NULL. */
const struct br__route_rt *br__router_rt(const br_router *r, const struct br_route_cfg *route);

/* ---- policies ---- */

/* What a policy sees. */
struct br__route_ctx {
    const br_router *router;
    const struct br__route_rt *rt;
    const struct br_route_cfg *cfg;
    const struct br_route_req *req;
    const bool *ok; /* [cfg->n_models]: candidates still in play (at least one) */
    struct br_rng *rng;
};

/* What a policy decided. */
struct br__route_choice {
    size_t index;         /* candidate */
    double score;         /* NAN when none */
    double threshold;     /* NAN when none */
    const char *decision; /* static string */
    bool cascade;         /* plan the cascade steps after index */
    char *reason;         /* buffer of reason_len bytes (the plan's) */
    size_t reason_len;
};

struct br_route_policy_ops {
    enum br_route_policy_kind kind;
    /** BR_OK: decided (out filled); BR_AGAIN: passes to the next policy. */
    int (*decide)(const struct br__route_ctx *ctx, struct br__route_choice *out);
};

extern const struct br_route_policy_ops br__policy_direct;
extern const struct br_route_policy_ops br__policy_rules;
extern const struct br_route_policy_ops br__policy_classifier;
extern const struct br_route_policy_ops br__policy_cascade;
extern const struct br_route_policy_ops br__policy_latency;
extern const struct br_route_policy_ops br__policy_cost;
extern const struct br_route_policy_ops br__policy_random;

/* Candidate helpers (route.c). */
size_t br__route_strongest(const struct br__route_ctx *ctx); /* highest ok index */
size_t br__route_weakest(const struct br__route_ctx *ctx);   /* lowest ok index */
/** A candidate drawn uniformly (one draw of ctx->rng) into *index; returns the number of
 * candidates. 0 (no draw, *index untouched) cannot happen while ctx->ok holds at least one. */
size_t br__route_random(const struct br__route_ctx *ctx, size_t *index);
/** Expected output tokens of req under the route (max_tokens caps the route's guess). */
int64_t br__route_expected_output(const struct br_route_cfg *cfg, const struct br_route_req *req);
/** Predicted latency (ms) of candidate i. */
double br__route_predict_ms(const struct br__route_ctx *ctx, size_t i);

/* The classifier, when this build has it (policy_classifier.c). */
int br__route_classifier_load(struct br__route_rt *rt, const char *cfg_path, char *err,
                              size_t errlen);
void br__route_classifier_free(struct br__route_rt *rt);
int br__route_verifier_load(struct br__route_rt *rt, const char *cfg_path, char *err,
                            size_t errlen);
int br__route_classifier_score(const struct br__route_rt *rt, const char *text, size_t len,
                               double *out);

#endif
