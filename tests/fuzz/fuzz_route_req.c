/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the routing signals of a chat request (route_req.c) and a decision over a rules
 * route (keywords, regex, metadata, hints), on arbitrary bodies that pass the gateway's strict
 * JSON validation, as the gateway only hands it those. Invariants: no crash or leak; the
 * decoded texts are within their lengths and the last user message is no longer than all the
 * text; hints are in range; a plan names one of the route's models.
 */
#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/arena.h"
#include "core/err.h"
#include "core/json.h"
#include "route/route.h"

static const char cfg_text[] =
    "models:\n"
    "  - {name: a, provider: openai, price: {input: 0.1, output: 0.2}, context_window: 500}\n"
    "  - {name: b, provider: openai, price: {input: 10, output: 30}, capabilities: [tools, "
    "json_mode, vision]}\n"
    "routes:\n"
    "  - name: r\n"
    "    models: [a, b]\n"
    "    policy: [rules, latency, cost, random]\n"
    "    max_cost_usd: 0.5\n"
    "    exploration: 0.1\n"
    "    rules:\n"
    "      - {if: {keywords: [prove, 'step by step'], in: all}, then: strong}\n"
    "      - {if: {regex: '([0-9]+ *[-+*/] *)+[0-9]+', code: false}, then: weak}\n"
    "      - {if: {metadata: {tier: free, any: '*'}}, then: weak}\n"
    "      - {if: {quality: high, latency_hint_max: 1s}, then: b}\n"
    "      - {if: {min_turns: 2, max_prompt_tokens: 100, math: true}, then: a}\n";

static struct br_config *cfg;
static br_router *router;

/* The route and router, built on the first input; false when they cannot be. */
static bool setup(void)
{
    char err[512];
    if (cfg) {
        return true;
    }
    if (br_config_load_string(cfg_text, strlen(cfg_text), NULL, &cfg, err, sizeof(err)) != BR_OK ||
        br_router_create(cfg, NULL, &router, err, sizeof(err)) != BR_OK) {
        assert(!"fuzz config");
        return false;
    }
    return true;
}

/* The signals of a body of size bytes that parsed. */
static void check_req(const struct br_route_req *rq, size_t size)
{
    assert(strlen(rq->all_text) <= rq->all_text_len);
    assert(strlen(rq->last_user) <= rq->last_user_len);
    assert(rq->last_user_len <= rq->all_text_len);
    assert(rq->all_text_len <= size);
    assert(rq->prompt_tokens >= 0);
    assert(rq->n_turns <= rq->n_messages);
    assert(rq->hints.max_latency_ms == -1 ||
           (rq->hints.max_latency_ms >= 1 && rq->hints.max_latency_ms <= 86400000));
    assert(rq->hints.max_cost_nano >= -1);
}

/* A decision over the rules route: a plan of one of its models, or a described refusal. */
static void check_plan(const struct br_route_req *rq, size_t size)
{
    struct br_rng rng;
    br_rng_seed(&rng, size + 1);
    struct br_plan plan;
    struct br_route_error e;
    int rc = br_route_plan(router, &cfg->routes[0], rq, &rng, &plan, &e);
    if (rc == BR_OK) {
        assert(plan.n_steps >= 1 && plan.chosen < 2);
        assert(plan.steps[0].model == cfg->routes[0].models[plan.chosen]);
        assert(plan.policy && plan.reason);
    } else {
        assert(rc == BR_ERR_INVAL && e.code && e.msg[0]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!setup()) {
        return 0;
    }
    const char *text = (const char *)data;
    if (br_json_validate(text, size, 0, NULL, NULL) != BR_OK ||
        br_json_type_of(br_slice_make(text, size)) != BR_JSON_OBJECT) {
        return 0;
    }
    br_arena *a = NULL;
    if (br_arena_create(4u << 20, &a) != BR_OK) {
        return 0;
    }
    char err[512];
    struct br_route_req rq;
    int rc = br_route_req_parse(a, br_slice_make(text, size), &rq, err, sizeof(err));
    if (rc == BR_OK) {
        check_req(&rq, size);
        check_plan(&rq, size);
    } else {
        assert((rc == BR_ERR_INVAL && err[0]) || rc == BR_ERR_NOMEM);
    }
    br_arena_destroy(a);
    return 0;
}
