/* SPDX-License-Identifier: MIT */
/*
 * The simple policies: `direct` (the route's default model: a route used as an alias),
 * `random` (uniform among the candidates: a baseline and A/B tool), `cost` (the best model
 * whose estimated cost fits the cap) and `latency` (the cheapest model predicted to meet the
 * latency SLA).
 */
#include <math.h>
#include <stdio.h>

#include "core/err.h"
#include "cost/cost.h"
#include "route/route_int.h"

static int direct_decide(const struct br__route_ctx *ctx, struct br__route_choice *out)
{
    const struct br_route_cfg *route = ctx->cfg;
    out->index = ctx->ok[route->default_index] ? route->default_index : br__route_strongest(ctx);
    out->decision = "default";
    (void)snprintf(out->reason, out->reason_len, "direct: the route's default model");
    return BR_OK;
}

const struct br_route_policy_ops br__policy_direct = {
    .kind = BR_ROUTE_POLICY_DIRECT,
    .decide = direct_decide,
};

static int random_decide(const struct br__route_ctx *ctx, struct br__route_choice *out)
{
    size_t n = br__route_random(ctx, &out->index);
    if (n == 0) {
        return BR_AGAIN;
    }
    out->decision = "model";
    (void)snprintf(out->reason, out->reason_len, "random: uniform among %zu candidates", n);
    return BR_OK;
}

const struct br_route_policy_ops br__policy_random = {
    .kind = BR_ROUTE_POLICY_RANDOM,
    .decide = random_decide,
};

/*
 * The cap is the smallest of the cost policy's max_usd, the route's max_cost_usd and the
 * client's hint. Candidates over the route's cap or the hint were already dropped; the
 * policy's own cap is soft: when nothing fits it, the cheapest candidate answers.
 */
static int cost_decide(const struct br__route_ctx *ctx, struct br__route_choice *out)
{
    const struct br_route_cfg *route = ctx->cfg;
    int64_t cap = route->cost_max_nano > 0 ? route->cost_max_nano : -1;
    if (route->max_cost_nano > 0 && (cap < 0 || route->max_cost_nano < cap)) {
        cap = route->max_cost_nano;
    }
    int64_t hint = ctx->req->hints.max_cost_nano;
    if (hint >= 0 && (cap < 0 || hint < cap)) {
        cap = hint;
    }
    if (cap < 0) {
        return BR_AGAIN;
    }
    char cap_usd[BR_COST_USD_STRLEN];
    char est_usd[BR_COST_USD_STRLEN];
    br_cost_format_usd(cap, cap_usd);
    for (size_t i = route->n_models; i-- > 0;) {
        if (!ctx->ok[i]) {
            continue;
        }
        int64_t c =
            br_route_estimate_cost(route->models[i], ctx->req, route->expected_output_tokens);
        if (c <= cap) {
            out->index = i;
            out->decision = "model";
            br_cost_format_usd(c, est_usd);
            (void)snprintf(out->reason, out->reason_len,
                           "cost: best model within the cap (estimated %s <= %s USD)", est_usd,
                           cap_usd);
            return BR_OK;
        }
    }
    out->index = br__route_weakest(ctx);
    out->decision = "weak";
    (void)snprintf(out->reason, out->reason_len, "cost: no model fits %s USD; the cheapest answers",
                   cap_usd);
    return BR_OK;
}

const struct br_route_policy_ops br__policy_cost = {
    .kind = BR_ROUTE_POLICY_COST,
    .decide = cost_decide,
};

/*
 * SLA: the client's max-latency hint, else the route's latency.max_latency; none: pass.
 * Predicted latency = EWMA time to first token + expected output tokens / EWMA tokens per
 * second (the priors for models without statistics).
 */
static int latency_decide(const struct br__route_ctx *ctx, struct br__route_choice *out)
{
    const struct br_route_cfg *route = ctx->cfg;
    double sla = ctx->req->hints.max_latency_ms > 0 ? (double)ctx->req->hints.max_latency_ms
                                                    : (double)route->latency.max_latency_ms;
    if (!(sla > 0)) {
        return BR_AGAIN;
    }
    size_t fastest = SIZE_MAX;
    double best = 0;
    for (size_t i = 0; i < route->n_models; i++) {
        if (!ctx->ok[i]) {
            continue;
        }
        double p = br__route_predict_ms(ctx, i);
        if (p <= sla) {
            out->index = i;
            out->decision = "model";
            out->score = p;
            out->threshold = sla;
            (void)snprintf(out->reason, out->reason_len,
                           "latency: cheapest model predicted within the SLA (%.0f <= %.0f ms)", p,
                           sla);
            return BR_OK;
        }
        if (fastest == SIZE_MAX || p < best) {
            fastest = i;
            best = p;
        }
    }
    out->index = fastest;
    out->decision = "model";
    out->score = best;
    out->threshold = sla;
    (void)snprintf(out->reason, out->reason_len,
                   "latency: no model predicted within %.0f ms; the fastest (%.0f ms) answers", sla,
                   best);
    return BR_OK;
}

const struct br_route_policy_ops br__policy_latency = {
    .kind = BR_ROUTE_POLICY_LATENCY,
    .decide = latency_decide,
};
