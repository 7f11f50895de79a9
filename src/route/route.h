/* SPDX-License-Identifier: MIT */
/*
 * Routing: turns what a client asked for into a plan — the model that answers first and the
 * steps that may follow it (fallbacks, cascade escalation). Today a request names a catalogue
 * model and the plan has that one step ("direct"); routing policies (rules, classifier,
 * cascade, latency, cost ceiling) fill the same structure, so the serving path does not change
 * when they arrive.
 *
 * Thread-safety: pure functions over an immutable config snapshot.
 */
#ifndef BR_ROUTE_H
#define BR_ROUTE_H

#include <stddef.h>

#include "config/config.h"

#define BR_PLAN_MAX_STEPS 8

enum br_plan_step_kind {
    BR_PLAN_STEP_PRIMARY,  /* the first model to call */
    BR_PLAN_STEP_FALLBACK, /* called when the previous step failed before its first byte */
    BR_PLAN_STEP_CASCADE,  /* called when the previous step's answer was not confident */
};

struct br_plan_step {
    const struct br_model_cfg *model; /* borrowed from the config snapshot */
    enum br_plan_step_kind kind;
    double threshold; /* cascade: escalate below this confidence */
};

struct br_plan {
    const char *requested; /* the client's "model" value (borrowed) */
    const char *route;     /* route name, NULL for a direct model request */
    const char *policy;    /* "direct", later "rules", "classifier", "cascade", ... */
    const char *reason;    /* short human-readable reason, for headers and the log */
    double score;          /* policy score; negative when the policy has none */
    size_t n_steps;
    struct br_plan_step steps[BR_PLAN_MAX_STEPS];
};

/**
 * Plans a request for `model` (n bytes, the client's "model" value) against cfg.
 * BR_ERR_NOTFOUND when it names neither a route nor a catalogue model.
 */
int br_route_plan(const struct br_config *cfg, const char *model, size_t n, struct br_plan *out);

#endif
