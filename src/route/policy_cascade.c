/* SPDX-License-Identifier: MIT */
/*
 * The `cascade` policy plans a chain: the first step (the cheapest allowed model of
 * cascade.steps) answers first; the gateway measures its confidence (mean or minimum token
 * log-probability, or a self-verification call) and escalates to the next step when it is
 * below tau, the route's live threshold. The policy only plans; the gateway runs the chain
 * (src/api/api_chat.c). Steps that were excluded (capabilities, cost, allowed_models) are
 * skipped.
 */
#include <stdio.h>

#include "core/err.h"
#include "route/route_int.h"

static int cascade_decide(const struct br__route_ctx *ctx, struct br__route_choice *out)
{
    const struct br_route_cascade_cfg *c = &ctx->cfg->cascade;
    size_t first = SIZE_MAX;
    size_t n = 0;
    for (size_t i = 0; i < c->n_steps; i++) {
        if (ctx->ok[c->steps[i]]) {
            first = first == SIZE_MAX ? c->steps[i] : first;
            n++;
        }
    }
    if (first == SIZE_MAX) {
        return BR_AGAIN;
    }
    out->index = first;
    out->cascade = n > 1;
    out->decision = "cascade";
    out->threshold = br__live_load(&ctx->rt->live->threshold);
    const char *how = "self-verification confidence";
    if (c->confidence == BR_CASCADE_CONFIDENCE_LOGPROBS) {
        how = c->aggregate == BR_CASCADE_AGGREGATE_MIN ? "min logprob confidence"
                                                       : "mean logprob confidence";
    } else if (c->confidence == BR_CASCADE_CONFIDENCE_VERIFIER) {
        how = "verifier P(ok)";
    }
    (void)snprintf(out->reason, out->reason_len, "cascade: %zu step(s), escalate when %s < %.3f", n,
                   how, out->threshold);
    return BR_OK;
}

const struct br_route_policy_ops br__policy_cascade = {
    .kind = BR_ROUTE_POLICY_CASCADE,
    .decide = cascade_decide,
};
