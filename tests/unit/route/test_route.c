/* SPDX-License-Identifier: MIT */
/*
 * Routing on hand-built requests: direct plans, the request signals read from raw bodies and
 * hints, each policy (rules conditions, latency with injected statistics, cost ceiling,
 * random, cascade plans), composition, hard constraints, exploration, fallbacks, and the
 * feedback estimates that re-tune a threshold.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "br_test.h"
#include "core/arena.h"
#include "core/err.h"
#include "route/route.h"

#define MODELS                                                                               \
    "models:\n"                                                                              \
    "  - {name: small, provider: openai, price: {input: 0.1, output: 0.2}, "                 \
    "context_window: 1000, capabilities: [json_mode]}\n"                                     \
    "  - {name: mid, provider: openai, price: {input: 1, output: 2}, capabilities: [tools, " \
    "json_mode]}\n"                                                                          \
    "  - {name: large, provider: openai, price: {input: 10, output: 30}, capabilities: "     \
    "[tools, json_mode, vision]}\n"

struct fixture {
    struct br_config *cfg;
    br_router *r;
    br_arena *a;
    struct br_rng rng;
};

static void setup(struct fixture *f, const char *text)
{
    char err[512];
    memset(f, 0, sizeof(*f));
    int rc = br_config_load_string(text, strlen(text), NULL, &f->cfg, err, sizeof(err));
    if (rc != BR_OK) {
        fail_msg("config: %s", err);
    }
    rc = br_router_create(f->cfg, NULL, &f->r, err, sizeof(err));
    if (rc != BR_OK) {
        fail_msg("router: %s", err);
    }
    assert_int_equal(br_arena_create(0, &f->a), BR_OK);
    br_rng_seed(&f->rng, 42);
}

static void teardown(struct fixture *f)
{
    br_router_destroy(f->r);
    br_config_unref(f->cfg);
    br_arena_destroy(f->a);
}

static void req_from(struct fixture *f, const char *body, struct br_route_req *rq)
{
    char err[256];
    int rc = br_route_req_parse(f->a, br_slice_from_cstr(body), rq, err, sizeof(err));
    if (rc != BR_OK) {
        fail_msg("req: %s", err);
    }
}

static const struct br_route_cfg *route(struct fixture *f, const char *name)
{
    const struct br_route_cfg *r = br_config_route_find(f->cfg, name, strlen(name));
    assert_non_null(r);
    return r;
}

/* Plans body on route name and returns the chosen model's name. */
static const char *pick(struct fixture *f, const char *name, const char *body, struct br_plan *p)
{
    struct br_route_req rq;
    req_from(f, body, &rq);
    struct br_route_error e;
    int rc = br_route_plan(f->r, route(f, name), &rq, &f->rng, p, &e);
    if (rc != BR_OK) {
        fail_msg("plan: %s", e.msg);
    }
    return p->steps[0].model->name;
}

static char *user(const char *text)
{
    static char buf[16384];
    (void)snprintf(buf, sizeof(buf),
                   "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", text);
    return buf;
}

static void test_direct(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS);
    struct br_plan p;
    assert_int_equal(br_route_plan_direct(f.cfg, "large", 5, &p), BR_OK);
    assert_int_equal(p.n_steps, 1);
    assert_string_equal(p.steps[0].model->name, "large");
    assert_int_equal(p.steps[0].kind, BR_PLAN_STEP_PRIMARY);
    assert_string_equal(p.policy, "direct");
    assert_null(p.route);
    assert_true(isnan(p.score));
    assert_int_equal(br_route_plan_direct(f.cfg, "larg", 4, &p), BR_ERR_NOTFOUND);
    assert_int_equal(p.n_steps, 0);
    assert_int_equal(br_route_plan_direct(f.cfg, "", 0, &p), BR_ERR_NOTFOUND);
    teardown(&f);
}

static void test_request_signals(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS);
    struct br_route_req rq;
    req_from(&f,
             "{\"model\":\"x\",\"max_tokens\":50,\"messages\":["
             "{\"role\":\"system\",\"content\":\"be brief\"},"
             "{\"role\":\"user\",\"content\":\"first\"},"
             "{\"role\":\"assistant\",\"content\":null},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"what is \\u00e9\"},"
             "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x\"}}]}],"
             "\"tools\":[{\"type\":\"function\"}],\"response_format\":{\"type\":\"json_object\"},"
             "\"metadata\":{\"team\":\"a\"}}",
             &rq);
    assert_string_equal(rq.last_user, "what is \xc3\xa9");
    assert_int_equal(rq.n_messages, 4);
    assert_int_equal(rq.n_turns, 2);
    assert_int_equal(rq.max_tokens, 50);
    assert_true(rq.uses & BR_MODEL_CAP_TOOLS);
    assert_true(rq.uses & BR_MODEL_CAP_JSON_MODE);
    assert_true(rq.uses & BR_MODEL_CAP_VISION);
    assert_non_null(strstr(rq.all_text, "be brief\nfirst\n\nwhat is"));
    assert_int_equal(rq.prompt_tokens, (int64_t)((rq.all_text_len + 3) / 4) + 16);
    assert_non_null(rq.metadata.ptr);
    assert_false(rq.has_code);
    assert_false(rq.has_math);

    req_from(&f, user("Fix this:\\n```\\nint main() {}\\n```"), &rq);
    assert_true(rq.has_code);
    req_from(&f, user("def f(x):\\n    return x"), &rq);
    assert_true(rq.has_code);
    req_from(&f, user("Compute \\\\frac{1}{2}"), &rq);
    assert_true(rq.has_math);
    req_from(&f, user("what is 12 * 7?"), &rq);
    assert_true(rq.has_math);
    assert_false(rq.has_code);
    req_from(&f, user("I have 3 apples and 4 pears"), &rq);
    assert_false(rq.has_math);
    teardown(&f);
}

static void test_hints(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS);
    struct br_route_req rq;
    char err[256];
    req_from(&f,
             "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
             "\"metadata\":{\"x-brigade-max-latency-ms\":\"1500\","
             "\"x-brigade-max-cost-usd\":\"0.01\",\"x-brigade-quality\":\"economy\"}}",
             &rq);
    assert_int_equal(rq.hints.max_latency_ms, 1500);
    assert_int_equal(rq.hints.max_cost_nano, 10000000);
    assert_int_equal(rq.hints.quality, BR_ROUTE_QUALITY_ECONOMY);
    /* A header replaces the metadata's value. */
    assert_int_equal(br_route_hint_set(&rq.hints, BR_ROUTE_HINT_QUALITY, BR_SLICE_LIT(" High "),
                                       err, sizeof(err)),
                     BR_OK);
    assert_int_equal(rq.hints.quality, BR_ROUTE_QUALITY_HIGH);
    assert_int_equal(br_route_hint_set(&rq.hints, BR_ROUTE_HINT_MAX_LATENCY_MS, BR_SLICE_LIT("0"),
                                       err, sizeof(err)),
                     BR_ERR_INVAL);
    assert_non_null(strstr(err, "x-brigade-max-latency-ms"));
    assert_int_equal(br_route_hint_set(&rq.hints, BR_ROUTE_HINT_MAX_LATENCY_MS,
                                       BR_SLICE_LIT("12abc"), err, sizeof(err)),
                     BR_ERR_INVAL);
    assert_int_equal(br_route_hint_set(&rq.hints, BR_ROUTE_HINT_MAX_COST_USD, BR_SLICE_LIT("-1"),
                                       err, sizeof(err)),
                     BR_ERR_INVAL);
    assert_non_null(strstr(err, "USD"));
    assert_int_equal(
        br_route_hint_set(&rq.hints, BR_ROUTE_HINT_QUALITY, BR_SLICE_LIT("best"), err, sizeof(err)),
        BR_ERR_INVAL);
    /* Bad hints in metadata are refused with the key's name. */
    assert_int_equal(br_route_req_parse(f.a,
                                        BR_SLICE_LIT("{\"messages\":[],\"metadata\":{\"x-brigade-"
                                                     "quality\":\"ultra\"}}"),
                                        &rq, err, sizeof(err)),
                     BR_ERR_INVAL);
    assert_non_null(strstr(err, "metadata.x-brigade-quality"));
    assert_int_equal(br_route_req_parse(f.a,
                                        BR_SLICE_LIT("{\"messages\":[],\"metadata\":{\"x-brigade-"
                                                     "max-latency-ms\":[1]}}"),
                                        &rq, err, sizeof(err)),
                     BR_ERR_INVAL);
    /* Numbers are accepted as metadata values too. */
    req_from(&f, "{\"messages\":[],\"metadata\":{\"x-brigade-max-latency-ms\":250}}", &rq);
    assert_int_equal(rq.hints.max_latency_ms, 250);
    teardown(&f);
}

static const char rules_cfg[] = MODELS "routes:\n"
                                       "  - name: r\n"
                                       "    models: [small, mid, large]\n"
                                       "    policy: rules\n"
                                       "    default: mid\n"
                                       "    rules:\n"
                                       "      - if: {keywords: [Prove, theorem]}\n"
                                       "        then: strong\n"
                                       "      - if: {regex: '^translate .* to (french|german)$'}\n"
                                       "        then: weak\n"
                                       "      - if: {min_prompt_tokens: 200}\n"
                                       "        then: large\n"
                                       "      - if: {code: true}\n"
                                       "        then: mid\n"
                                       "      - if: {min_turns: 3}\n"
                                       "        then: large\n"
                                       "      - if: {quality: economy}\n"
                                       "        then: small\n"
                                       "      - if: {metadata: {tier: free}}\n"
                                       "        then: weak\n"
                                       "      - if: {latency_hint_max: 500ms}\n"
                                       "        then: small\n"
                                       "      - if: {keywords: [everything], in: all}\n"
                                       "        then: strong\n"
                                       "    hints: false\n";

static void test_rules(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, rules_cfg);
    struct br_plan p;
    assert_string_equal(pick(&f, "r", user("please PROVE it"), &p), "large");
    assert_string_equal(p.policy, "rules");
    assert_string_equal(p.decision, "rule");
    assert_non_null(strstr(p.reason, "rule 1"));
    assert_string_equal(pick(&f, "r", user("Translate this to German"), &p), "small");
    assert_string_equal(pick(&f, "r", user("translate this to Spanish"), &p), "mid"); /* default */
    assert_string_equal(p.policy, "default");
    char long_text[1200];
    memset(long_text, 'a', sizeof(long_text) - 1);
    long_text[sizeof(long_text) - 1] = '\0';
    assert_string_equal(pick(&f, "r", user(long_text), &p), "large");
    assert_string_equal(pick(&f, "r", user("```x```"), &p), "mid");
    assert_string_equal(pick(&f, "r",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
                             "{\"role\":\"user\",\"content\":\"b\"},"
                             "{\"role\":\"user\",\"content\":\"c\"}]}",
                             &p),
                        "large");
    assert_string_equal(pick(&f, "r",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                             "\"metadata\":{\"x-brigade-quality\":\"economy\"}}",
                             &p),
                        "small");
    assert_string_equal(pick(&f, "r",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                             "\"metadata\":{\"tier\":\"free\"}}",
                             &p),
                        "small");
    assert_string_equal(pick(&f, "r",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                             "\"metadata\":{\"tier\":\"paid\"}}",
                             &p),
                        "mid");
    assert_string_equal(pick(&f, "r",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                             "\"metadata\":{\"x-brigade-max-latency-ms\":\"300\"}}",
                             &p),
                        "small");
    /* in: all sees the system prompt; the default scope (last user message) does not. */
    assert_string_equal(pick(&f, "r",
                             "{\"messages\":[{\"role\":\"system\",\"content\":\"explain "
                             "everything\"},{\"role\":\"user\",\"content\":\"a\"}]}",
                             &p),
                        "large");
    teardown(&f);
}

static void test_rule_target_excluded(void **state)
{
    (void)state;
    /* A rule whose model cannot serve the request (capability) does not apply. */
    struct fixture f;
    setup(&f, MODELS "routes:\n"
                     "  - name: r\n"
                     "    models: [small, mid, large]\n"
                     "    policy: [rules, random]\n"
                     "    rules:\n"
                     "      - {if: {keywords: [tool]}, then: small}\n"
                     "      - {if: {uses: [tools]}, then: mid}\n");
    struct br_plan p;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"tool\"}],"
                       "\"tools\":[{\"type\":\"function\"}]}";
    assert_string_equal(pick(&f, "r", body, &p), "mid");
    assert_string_equal(p.policy, "rules");
    assert_non_null(strstr(p.reason, "rule 2"));
    teardown(&f);
}

static void test_hard_constraints(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS "routes:\n"
                     "  - name: r\n"
                     "    models: [small, mid, large]\n"
                     "    policy: direct\n"
                     "    default: small\n"
                     "  - name: capped\n"
                     "    models: [small, large]\n"
                     "    policy: direct\n"
                     "    max_cost_usd: 0.001\n"
                     "  - name: restricted\n"
                     "    models: [small, mid, large]\n"
                     "    allowed_models: [small, mid]\n"
                     "    policy: direct\n");
    struct br_plan p;
    /* tools: small lacks it, mid is the cheapest that has it; the default is not allowed. */
    assert_string_equal(pick(&f, "r",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                             "\"tools\":[{\"type\":\"function\"}]}",
                             &p),
                        "large");
    /* images: only large. */
    assert_string_equal(
        pick(&f, "r", "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
             &p),
        "large");
    /* More than small's 1000-token context: not small. */
    char long_text[6000];
    memset(long_text, 'b', sizeof(long_text) - 1);
    long_text[sizeof(long_text) - 1] = '\0';
    assert_string_equal(pick(&f, "r", user(long_text), &p), "large");
    /* Cost cap: large would cost 256 * $30/M = $0.00768 > $0.001. */
    assert_string_equal(pick(&f, "capped", user("hi"), &p), "small");
    /* The client's cost hint caps too; nothing fits: a clear 400. */
    struct br_route_req rq;
    req_from(&f, user("hi"), &rq);
    rq.hints.max_cost_nano = 1;
    struct br_route_error e;
    assert_int_equal(br_route_plan(f.r, route(&f, "capped"), &rq, &f.rng, &p, &e), BR_ERR_INVAL);
    assert_string_equal(e.code, "route_cost_cap");
    assert_non_null(strstr(e.msg, "max_tokens"));
    /* A capability nobody allowed has: 400 naming it. */
    req_from(&f, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
             &rq);
    assert_int_equal(br_route_plan(f.r, route(&f, "restricted"), &rq, &f.rng, &p, &e),
                     BR_ERR_INVAL);
    assert_string_equal(e.code, "route_no_candidate");
    assert_non_null(strstr(e.msg, "vision"));
    /* allowed_models: the strongest allowed is the default fallback. */
    assert_string_equal(pick(&f, "restricted", user("x"), &p), "mid");
    teardown(&f);
}

static void test_quality_hints(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS "routes:\n"
                     "  - name: r\n"
                     "    models: [small, mid, large]\n"
                     "    policy: random\n");
    struct br_plan p;
    const char *hi = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                     "\"metadata\":{\"x-brigade-quality\":\"high\"}}";
    const char *eco = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"metadata\":{\"x-brigade-quality\":\"economy\"}}";
    assert_string_equal(pick(&f, "r", hi, &p), "large");
    assert_string_equal(p.policy, "hint");
    assert_string_equal(pick(&f, "r", eco, &p), "small");
    /* standard: the policy decides (random: all three appear). */
    int seen[3] = {0};
    for (int i = 0; i < 200; i++) {
        const char *m = pick(&f, "r", user("a"), &p);
        seen[m[0] == 's' ? 0 : m[0] == 'm' ? 1 : 2]++;
        assert_string_equal(p.policy, "random");
    }
    assert_true(seen[0] > 30 && seen[1] > 30 && seen[2] > 30);
    teardown(&f);
}

static void test_latency(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS "routes:\n"
                     "  - name: r\n"
                     "    models: [small, mid, large]\n"
                     "    policy: [latency, direct]\n"
                     "    default: large\n"
                     "    latency: {max_latency: 2s, expected_output_tokens: 100, prior_ttft: "
                     "100ms, prior_tokens_per_s: 100}\n"
                     "  - name: nosla\n"
                     "    models: [small, large]\n"
                     "    policy: [latency, direct]\n");
    struct br_plan p;
    /* Priors: 100 ms + 100 tokens at 100/s = 1100 ms <= 2 s: the cheapest. */
    assert_string_equal(pick(&f, "r", user("a"), &p), "small");
    assert_string_equal(p.policy, "latency");
    /* Injected statistics: small is slow now (5 tok/s), mid fast. */
    for (int i = 0; i < 20; i++) {
        br_router_observe_latency(f.r, &f.cfg->models[0], 300, 5);
        br_router_observe_latency(f.r, &f.cfg->models[1], 200, 200);
    }
    struct br_route_req rq;
    req_from(&f, user("a"), &rq);
    double ps = br_router_predict_latency_ms(f.r, route(&f, "r"), &f.cfg->models[0], &rq);
    assert_true(ps > 19000 && ps < 21000);
    assert_string_equal(pick(&f, "r", user("a"), &p), "mid");
    /* max_tokens caps the expected output: 10 tokens from small = 300 + 2000 ms > 2 s. */
    assert_string_equal(
        pick(&f, "r", "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}",
             &p),
        "small");
    /* The client's SLA replaces the route's: 250 ms nobody meets -> the fastest (mid). */
    const char *tight = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                        "\"metadata\":{\"x-brigade-max-latency-ms\":\"250\"}}";
    assert_string_equal(pick(&f, "r", tight, &p), "mid");
    /* No SLA anywhere: the latency policy passes. */
    assert_string_equal(pick(&f, "nosla", user("a"), &p), "large");
    assert_string_equal(p.policy, "direct");
    teardown(&f);
}

static void test_cost(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS "routes:\n"
                     "  - name: r\n"
                     "    models: [small, mid, large]\n"
                     "    policy: [cost, direct]\n"
                     "    default: small\n"
                     "    cost: {max_usd: 0.001}\n"
                     "  - name: hinted\n"
                     "    models: [small, mid, large]\n"
                     "    policy: [cost, direct]\n"
                     "    default: small\n");
    struct br_plan p;
    /* 256 output tokens: large $0.00768 > cap; mid $0.000512 + prompt fits. */
    assert_string_equal(pick(&f, "r", user("a"), &p), "mid");
    assert_string_equal(p.policy, "cost");
    /* max_tokens 10: even large fits (10 * $30/M = $0.0003). */
    assert_string_equal(
        pick(&f, "r", "{\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}",
             &p),
        "large");
    /* No cap: the cost policy passes to direct. */
    assert_string_equal(pick(&f, "hinted", user("a"), &p), "small");
    assert_string_equal(p.policy, "direct");
    /* The client's cap: the best that fits. */
    assert_string_equal(pick(&f, "hinted",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                             "\"metadata\":{\"x-brigade-max-cost-usd\":\"0.01\"}}",
                             &p),
                        "large");
    assert_string_equal(p.policy, "cost");
    int64_t c = br_route_estimate_cost(
        &f.cfg->models[2], &(struct br_route_req){.prompt_tokens = 1000, .max_tokens = -1}, 100);
    assert_int_equal(c, 13000000); /* 1000 * $10/M + 100 * $30/M = $0.013 */
    teardown(&f);
}

static void test_cascade_plan_and_fallbacks(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS "routes:\n"
                     "  - name: c\n"
                     "    models: [small, mid, large]\n"
                     "    policy: cascade\n"
                     "    fallbacks: [mid, large]\n"
                     "    cascade: {steps: [small, large], threshold: -0.4}\n");
    struct br_plan p;
    assert_string_equal(pick(&f, "c", user("a"), &p), "small");
    assert_string_equal(p.policy, "cascade");
    assert_true(p.cascade);
    assert_int_equal(p.n_steps, 4);
    assert_string_equal(p.steps[1].model->name, "large");
    assert_int_equal(p.steps[1].kind, BR_PLAN_STEP_CASCADE);
    assert_true(fabs(p.steps[1].threshold + 0.4) < 1e-12);
    assert_int_equal(p.steps[2].kind, BR_PLAN_STEP_FALLBACK);
    assert_string_equal(p.steps[2].model->name, "mid");
    assert_string_equal(p.steps[3].model->name, "large");
    /* With tools, small is out: the cascade starts (and ends) at large. */
    assert_string_equal(pick(&f, "c",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                             "\"tools\":[{\"type\":\"function\"}]}",
                             &p),
                        "large");
    assert_false(p.cascade);
    assert_int_equal(p.n_steps, 2); /* large, then the fallback mid */
    teardown(&f);
}

static void test_exploration(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, MODELS "routes:\n"
                     "  - name: r\n"
                     "    models: [small, large]\n"
                     "    policy: direct\n"
                     "    exploration: 0.25\n");
    struct br_plan p;
    int explored = 0;
    int small = 0;
    for (int i = 0; i < 2000; i++) {
        const char *m = pick(&f, "r", user("a"), &p);
        if (strcmp(p.policy, "explore") == 0) {
            explored++;
            assert_string_equal(p.decision, "explore");
            small += strcmp(m, "small") == 0;
        } else {
            assert_string_equal(m, "large");
        }
    }
    assert_in_range(explored, 400, 600);
    assert_in_range(small, explored / 2 - 80, explored / 2 + 80);
    teardown(&f);
}

static void test_wilson(void **state)
{
    (void)state;
    double lo;
    double hi;
    /* p = 0.5, n = 100, 95%: 0.404 .. 0.596 */
    br_route_wilson(0.5, 100, 0.95, &lo, &hi);
    assert_true(fabs(lo - 0.4038) < 0.002 && fabs(hi - 0.5962) < 0.002);
    /* p = 0.9, n = 10, 95%: 0.596 .. 0.982 */
    br_route_wilson(0.9, 10, 0.95, &lo, &hi);
    assert_true(fabs(lo - 0.5958) < 0.003 && fabs(hi - 0.9821) < 0.003);
    br_route_wilson(0.3, 0, 0.95, &lo, &hi);
    assert_true(lo == 0 && hi == 1);
}

static const char cascade_fb_cfg[] = MODELS
    "routes:\n"
    "  - name: c\n"
    "    models: [small, large]\n"
    "    policy: cascade\n"
    "    cascade: {threshold: -0.5}\n"
    "    feedback: {q_min: 0.7, step: 0.1, min_samples: 10, cooldown: 1m, min_threshold: -2, "
    "max_threshold: 0, target_cost_usd: 0.000001}\n";

static void feed(struct fixture *f, const char *decision, double q, int n, int64_t now,
                 struct br_route_adjustment *adj)
{
    for (int i = 0; i < n; i++) {
        struct br_route_feedback fb = {.route = "c",
                                       .model = "small",
                                       .decision = decision,
                                       .quality = q,
                                       .previous = NAN,
                                       .cost_nano = 100,
                                       .now_ms = now};
        br_router_feedback(f->r, &fb, adj);
        if (adj->changed) {
            return;
        }
    }
}

static void test_feedback_retunes(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, cascade_fb_cfg);
    const struct br_route_cfg *c = route(&f, "c");
    assert_true(fabs(br_router_threshold(f.r, c) + 0.5) < 1e-12);
    struct br_route_adjustment adj;
    /* Bad cheap answers: the cascade escalates more (tau up by one step). */
    feed(&f, "accepted", 0.0, 10, 1000000, &adj);
    assert_true(adj.changed);
    assert_true(fabs(adj.from + 0.5) < 1e-12 && fabs(adj.to + 0.4) < 1e-12);
    assert_non_null(strstr(adj.why, "below q_min"));
    assert_true(fabs(br_router_threshold(f.r, c) + 0.4) < 1e-12);
    /* Cooldown: more bad feedback within a minute changes nothing... */
    feed(&f, "accepted", 0.0, 30, 1000000 + 30000, &adj);
    assert_false(adj.changed);
    /* ...and strong answers' feedback never counts for the threshold. */
    feed(&f, "escalated", 0.0, 30, 1000000 + 30000, &adj);
    assert_false(adj.changed);
    /* After the cooldown the evidence gathered meanwhile moves it one more step. */
    feed(&f, "accepted", 0.0, 1, 1000000 + 61000, &adj);
    assert_true(adj.changed);
    assert_true(fabs(adj.to + 0.3) < 1e-9);
    /* Good cheap answers and cost above target: towards cheap (tau down). */
    for (int i = 0; i < 10; i++) {
        br_router_observe_cost(f.r, c, 5000);
    }
    feed(&f, "accepted", 1.0, 40, 1000000 + 200000, &adj);
    assert_true(adj.changed);
    assert_true(fabs(adj.to + 0.4) < 1e-9);
    assert_non_null(strstr(adj.why, "cost"));
    /* Estimates and history are visible. */
    struct br_route_snapshot *s = test_malloc(sizeof(*s));
    br_router_snapshot(f.r, c, s);
    assert_int_equal(s->n_history, 3);
    assert_true(s->feedback >= 70);
    bool found = false;
    for (size_t i = 0; i < s->n_estimates; i++) {
        if (strcmp(s->estimates[i].decision, "escalated") == 0) {
            found = true;
            assert_int_equal(s->estimates[i].n, 30);
            assert_true(s->estimates[i].mean == 0.0);
            assert_true(s->estimates[i].hi < 0.2);
        }
    }
    assert_true(found);
    test_free(s);
    /* Bounds: set clamps to [min_threshold, max_threshold]. */
    assert_int_equal(br_router_threshold_set(f.r, c, 5.0, "test"), BR_OK);
    assert_true(br_router_threshold(f.r, c) == 0.0);
    /* A persisted value is restored only for the same configured value. */
    assert_false(br_router_threshold_restore(f.r, "c", -0.7, -0.9));
    assert_true(br_router_threshold_restore(f.r, "c", -0.5, -0.9));
    assert_true(fabs(br_router_threshold(f.r, c) + 0.9) < 1e-12);
    teardown(&f);
}

static void test_feedback_replacement_counts_once(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, cascade_fb_cfg);
    const struct br_route_cfg *c = route(&f, "c");
    struct br_route_adjustment adj;
    struct br_route_feedback fb = {.route = "c",
                                   .model = "small",
                                   .decision = "accepted",
                                   .quality = 0.0,
                                   .previous = NAN,
                                   .now_ms = 5};
    br_router_feedback(f.r, &fb, &adj);
    fb.quality = 1.0;
    fb.previous = 0.0;
    br_router_feedback(f.r, &fb, &adj);
    struct br_route_snapshot *s = test_malloc(sizeof(*s));
    br_router_snapshot(f.r, c, s);
    assert_int_equal(s->feedback, 1);
    assert_int_equal(s->n_estimates, 1);
    assert_int_equal(s->estimates[0].n, 1);
    assert_true(s->estimates[0].mean == 1.0);
    test_free(s);
    teardown(&f);
}

static void test_live_state_survives_reload(void **state)
{
    (void)state;
    br_route_live *live = NULL;
    assert_int_equal(br_route_live_create(&live), BR_OK);
    char err[256];
    struct br_config *c1 = NULL;
    struct br_config *c2 = NULL;
    struct br_config *c3 = NULL;
    assert_int_equal(
        br_config_load_string(cascade_fb_cfg, strlen(cascade_fb_cfg), NULL, &c1, err, sizeof(err)),
        BR_OK);
    br_router *r1 = NULL;
    assert_int_equal(br_router_create(c1, live, &r1, err, sizeof(err)), BR_OK);
    const struct br_route_cfg *rc1 = br_config_route_find(c1, "c", 1);
    assert_int_equal(br_router_threshold_set(r1, rc1, -0.3, "test"), BR_OK);
    br_router_observe_latency(r1, &c1->models[0], 123, 45);
    /* Same config again: the re-tuned threshold and the statistics stay. */
    assert_int_equal(
        br_config_load_string(cascade_fb_cfg, strlen(cascade_fb_cfg), NULL, &c2, err, sizeof(err)),
        BR_OK);
    br_router *r2 = NULL;
    assert_int_equal(br_router_create(c2, live, &r2, err, sizeof(err)), BR_OK);
    const struct br_route_cfg *rc2 = br_config_route_find(c2, "c", 1);
    assert_true(fabs(br_router_threshold(r2, rc2) + 0.3) < 1e-12);
    double ttft;
    double tps;
    assert_true(br_router_model_latency(r2, &c2->models[0], &ttft, &tps));
    assert_true(ttft == 123 && tps == 45);
    /* A changed configured value wins. */
    char changed[sizeof(cascade_fb_cfg) + 8];
    (void)snprintf(changed, sizeof(changed), "%s", cascade_fb_cfg);
    char *t = strstr(changed, "threshold: -0.5");
    memcpy(t, "threshold: -0.6", 15);
    assert_int_equal(br_config_load_string(changed, strlen(changed), NULL, &c3, err, sizeof(err)),
                     BR_OK);
    br_router *r3 = NULL;
    assert_int_equal(br_router_create(c3, live, &r3, err, sizeof(err)), BR_OK);
    assert_true(fabs(br_router_threshold(r3, br_config_route_find(c3, "c", 1)) + 0.6) < 1e-12);
    br_router_destroy(r1);
    br_router_destroy(r2);
    br_router_destroy(r3);
    br_config_unref(c1);
    br_config_unref(c2);
    br_config_unref(c3);
    br_route_live_destroy(live);
}

static void test_classifier_missing_build_or_file(void **state)
{
    (void)state;
    static const char text[] = MODELS "routes:\n"
                                      "  - name: auto\n"
                                      "    models: [small, large]\n"
                                      "    policy: classifier\n"
                                      "    classifier: {model: /nonexistent/router.brr}\n";
    struct br_config *c = NULL;
    char err[512];
    assert_int_equal(br_config_load_string(text, strlen(text), NULL, &c, err, sizeof(err)), BR_OK);
    br_router *r = NULL;
    assert_int_not_equal(br_router_create(c, NULL, &r, err, sizeof(err)), BR_OK);
    assert_non_null(strstr(err, "<string>:"));
    assert_non_null(strstr(err, "routes[auto]"));
    br_config_unref(c);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct),
        cmocka_unit_test(test_request_signals),
        cmocka_unit_test(test_hints),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_rule_target_excluded),
        cmocka_unit_test(test_hard_constraints),
        cmocka_unit_test(test_quality_hints),
        cmocka_unit_test(test_latency),
        cmocka_unit_test(test_cost),
        cmocka_unit_test(test_cascade_plan_and_fallbacks),
        cmocka_unit_test(test_exploration),
        cmocka_unit_test(test_wilson),
        cmocka_unit_test(test_feedback_retunes),
        cmocka_unit_test(test_feedback_replacement_counts_once),
        cmocka_unit_test(test_live_state_survives_reload),
        cmocka_unit_test(test_classifier_missing_build_or_file),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("route", tests, NULL, NULL);
}
