/* SPDX-License-Identifier: MIT */
/* The routes section: every field read, and a clear file:line error for every bad one. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "br_test.h"
#include "config/config.h"
#include "core/err.h"

#define MODELS                                                                \
    "models:\n"                                                               \
    "  - {name: small, provider: openai, price: {input: 0.1, output: 0.2}}\n" \
    "  - {name: large, provider: openai, price: {input: 10, output: 30}}\n"   \
    "  - {name: other, provider: openai, price: {input: 1, output: 1}}\n"

static struct br_config *load_ok(const char *text)
{
    struct br_config *c = NULL;
    char err[512];
    if (br_config_load_string(text, strlen(text), "/base", &c, err, sizeof(err)) != BR_OK) {
        fail_msg("unexpected error: %s", err);
    }
    return c;
}

/* Loads a routes section that must fail; checks the line and a fragment of the message. */
static void expect_err(const char *routes, int line, const char *fragment)
{
    char text[4096];
    char err[512];
    (void)snprintf(text, sizeof(text), MODELS "routes:\n%s", routes);
    struct br_config *c = NULL;
    if (br_config_load_string(text, strlen(text), "/base", &c, err, sizeof(err)) == BR_OK) {
        br_config_unref(c);
        fail_msg("config unexpectedly loaded:\n%s", routes);
    }
    char want[32];
    (void)snprintf(want, sizeof(want), "<string>:%d:", line);
    if (strncmp(err, want, strlen(want)) != 0 || !strstr(err, fragment)) {
        fail_msg("for:\n%s\nexpected line %d and '%s', got: %s", routes, line, fragment, err);
    }
}

static void test_full_route(void **state)
{
    (void)state;
    struct br_config *c =
        load_ok(MODELS "routes:\n"
                       "  - name: auto\n"
                       "    models: [small, large]\n"
                       "    policy: [rules, classifier]\n"
                       "    default: small\n"
                       "    fallbacks: [other, large]\n"
                       "    allowed_models: [small, large]\n"
                       "    max_cost_usd: 0.05\n"
                       "    expected_output_tokens: 300\n"
                       "    hints: false\n"
                       "    exploration: 0.02\n"
                       "    rules:\n"
                       "      - if: {min_prompt_tokens: 10, max_prompt_tokens: 900, "
                       "keywords: [Proof, LEMMA], regex: 'a+b', in: all, code: false, "
                       "math: true, uses: [tools], quality: high, latency_hint_max: "
                       "2s, cost_hint_max_usd: 0.5, min_turns: 1, max_turns: 4, "
                       "metadata: {team: a, any: '*'}}\n"
                       "        then: large\n"
                       "      - {then: weak}\n"
                       "    classifier: {model: models/r.brr, threshold: 0.42, "
                       "margin: 0.1, text: all}\n"
                       "    latency: {max_latency: 3s, expected_output_tokens: 100, "
                       "prior_ttft: 200ms, prior_tokens_per_s: 40, alpha: 0.3}\n"
                       "    feedback: {adapt: false, q_min: 0.9, confidence: 0.99, "
                       "step: 0.01, min_threshold: 0.2, max_threshold: 0.8, "
                       "cooldown: 10m, min_samples: 50, target_cost_usd: 0.002}\n"
                       "  - name: casc\n"
                       "    models: [small, other, large]\n"
                       "    policy: cascade\n"
                       "    cascade: {steps: [small, large], confidence: self_verify, "
                       "threshold: 0.7, logprobs: false, verifier: other, "
                       "verify_max_tokens: 3}\n");
    assert_int_equal(c->n_routes, 2);
    const struct br_route_cfg *r = br_config_route_find(c, "auto", 4);
    assert_non_null(r);
    assert_int_equal(r->n_models, 2);
    assert_string_equal(r->models[1]->name, "large");
    assert_int_equal(r->n_policies, 2);
    assert_int_equal(r->policies[0], BR_ROUTE_POLICY_RULES);
    assert_int_equal(r->policies[1], BR_ROUTE_POLICY_CLASSIFIER);
    assert_int_equal(r->default_index, 0);
    assert_int_equal(r->n_fallbacks, 2);
    assert_string_equal(r->fallbacks[0]->name, "other");
    assert_int_equal(r->max_cost_nano, 50000000);
    assert_int_equal(r->expected_output_tokens, 300);
    assert_false(r->accept_hints);
    assert_true(fabs(r->exploration - 0.02) < 1e-12);
    assert_int_equal(r->n_rules, 2);
    const struct br_route_rule *rule = &r->rules[0];
    assert_int_equal(rule->min_prompt_tokens, 10);
    assert_int_equal(rule->max_prompt_tokens, 900);
    assert_int_equal(rule->n_keywords, 2);
    assert_string_equal(rule->keywords[0], "proof"); /* lower-cased at load */
    assert_string_equal(rule->keywords[1], "lemma");
    assert_non_null(rule->regex);
    assert_string_equal(rule->regex_src, "a+b");
    assert_int_equal(rule->in, BR_ROUTE_TEXT_ALL);
    assert_int_equal(rule->code, 0);
    assert_int_equal(rule->math, 1);
    assert_int_equal(rule->uses, BR_MODEL_CAP_TOOLS);
    assert_int_equal(rule->quality, BR_ROUTE_QUALITY_HIGH);
    assert_int_equal(rule->latency_hint_max_ms, 2000);
    assert_int_equal(rule->cost_hint_max_nano, 500000000);
    assert_int_equal(rule->min_turns, 1);
    assert_int_equal(rule->max_turns, 4);
    assert_int_equal(rule->n_meta, 2);
    assert_string_equal(rule->meta_keys[1], "any");
    assert_string_equal(rule->meta_values[1], "*");
    assert_int_equal(rule->then, BR_ROUTE_TARGET_MODEL);
    assert_int_equal(rule->then_index, 1);
    assert_int_equal(r->rules[1].then, BR_ROUTE_TARGET_WEAK);
    assert_int_equal(r->rules[1].min_prompt_tokens, -1);
    assert_string_equal(r->classifier.model_path, "/base/models/r.brr");
    assert_true(fabs(r->classifier.threshold - 0.42) < 1e-12);
    assert_int_equal(r->classifier.text, BR_ROUTE_TEXT_ALL);
    assert_int_equal(r->latency.max_latency_ms, 3000);
    assert_true(r->latency.prior_ttft_ms == 200);
    assert_false(r->feedback.adapt);
    assert_int_equal(r->feedback.cooldown_ms, 600000);
    assert_int_equal(r->feedback.min_samples, 50);
    assert_int_equal(r->feedback.target_cost_nano, 2000000);
    const struct br_route_cfg *k = br_config_route_find(c, "casc", 4);
    assert_int_equal(k->cascade.n_steps, 2);
    assert_int_equal(k->cascade.steps[1], 2);
    assert_int_equal(k->cascade.confidence, BR_CASCADE_CONFIDENCE_SELF_VERIFY);
    assert_string_equal(k->cascade.verifier->name, "other");
    assert_false(k->cascade.request_logprobs);
    assert_int_equal(k->cascade.verify_max_tokens, 3);
    assert_int_equal(k->default_index, 2); /* the last model */
    assert_true(fabs(k->cascade.threshold - 0.7) < 1e-12);
    assert_null(br_config_route_find(c, "small", 5));
    br_config_unref(c);
}

static void test_defaults(void **state)
{
    (void)state;
    struct br_config *c =
        load_ok(MODELS "routes:\n"
                       "  - {name: r, models: [small, large], policy: cascade}\n");
    const struct br_route_cfg *r = &c->routes[0];
    assert_int_equal(r->cascade.n_steps, 2);
    assert_int_equal(r->cascade.confidence, BR_CASCADE_CONFIDENCE_LOGPROBS);
    assert_true(r->cascade.request_logprobs);
    assert_true(r->accept_hints);
    assert_true(r->allowed[0] && r->allowed[1]);
    assert_int_equal(r->expected_output_tokens, 256);
    assert_true(r->feedback.adapt);
    br_config_unref(c);
}

static void test_errors(void **state)
{
    (void)state;
    expect_err("  - {models: [small, large], policy: direct}\n", 6, "needs a name");
    expect_err("  - {name: small, models: [small, large], policy: direct}\n", 6,
               "also a model's name");
    expect_err("  - {name: r, policy: direct}\n", 6, "needs models");
    expect_err("  - {name: r, models: [small], policy: direct}\n", 6, "two or more");
    expect_err("  - {name: r, models: [small, nope], policy: direct}\n", 6, "unknown model 'nope'");
    expect_err("  - {name: r, models: [small, small], policy: direct}\n", 6, "listed twice");
    expect_err("  - {name: r, models: [small, large]}\n", 6, "needs policy");
    expect_err("  - {name: r, models: [small, large], policy: magic}\n", 6,
               "unknown policy 'magic'");
    expect_err("  - {name: r, models: [small, large], policy: [random, rules]}\n", 6,
               "'rules' would never run");
    expect_err("  - {name: r, models: [small, large], policy: [cost, cost]}\n", 6, "listed twice");
    expect_err("  - {name: r, models: [small, large], policy: rules}\n", 6,
               "needs a rules: section");
    expect_err("  - {name: r, models: [small, large], policy: classifier}\n", 6,
               "needs a classifier: section");
    expect_err("  - {name: r, models: [small, large], policy: direct, rules: [{then: weak}]}\n", 6,
               "rules settings are given but policy does not include rules");
    expect_err("  - {name: r, models: [small, large], policy: direct, default: other}\n", 6,
               "not one of the route's models");
    expect_err("  - {name: r, models: [small, large], policy: direct, fallbacks: [x]}\n", 6,
               "unknown model 'x'");
    expect_err("  - {name: r, models: [small, large], policy: direct, allowed_models: []}\n", 6,
               "at least one");
    expect_err("  - {name: r, models: [small, large], policy: direct, max_cost_usd: -1}\n", 6,
               "USD amount");
    expect_err("  - {name: r, models: [small, large], policy: direct, exploration: 2}\n", 6,
               "from 0 to 1");
    expect_err("  - {name: r, models: [small, large], policy: direct, colour: red}\n", 6,
               "unknown key 'colour'");
    expect_err("  - {name: r, models: [small, large], policy: direct}\n"
               "  - {name: r, models: [small, large], policy: direct}\n",
               7, "duplicate route name");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - if: {regex: 'a(b'}\n"
               "        then: weak\n",
               10, "bad regular expression");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - if: {keywords: []}\n"
               "        then: weak\n",
               10, "must not be empty");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - if: {size: 3}\n"
               "        then: weak\n",
               10, "unknown key 'size'");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - if: {code: maybe}\n"
               "        then: weak\n",
               10, "true or false");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - if: {quality: best}\n"
               "        then: weak\n",
               10, "high, standard or economy");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - if: {uses: [telepathy]}\n"
               "        then: weak\n",
               10, "unknown capability");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - if: {min_turns: 3, max_turns: 2}\n"
               "        then: weak\n",
               10, "min_turns is above max_turns");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - if: {max_turns: 2}\n",
               10, "needs then");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: rules\n"
               "    rules:\n"
               "      - {then: other}\n",
               10, "nor strong or weak");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: classifier\n"
               "    classifier: {threshold: 0.5}\n",
               9, "needs model");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: classifier\n"
               "    classifier: {model: m.brr, threshold: 1.5}\n",
               9, "classifier.threshold: expected a number from 0 to 1");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: cascade\n"
               "    cascade: {confidence: vibes}\n",
               9, "self_verify or verifier");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: cascade\n"
               "    cascade: {threshold: 0.5}\n",
               9, "log-probability");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: cascade\n"
               "    cascade: {confidence: self_verify, threshold: -0.5}\n",
               9, "P(yes)");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: cascade\n"
               "    cascade: {confidence: verifier}\n",
               9, "needs verifier_model");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: cascade\n"
               "    cascade: {verifier_model: v.brr}\n",
               9, "only used with confidence: verifier");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: cascade\n"
               "    cascade: {steps: [small]}\n",
               9, "needs 2 to");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: cascade\n"
               "    cascade: {verifier: ghost}\n",
               9, "unknown model 'ghost'");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: latency\n"
               "    latency: {max_latency: soon}\n",
               9, "latency.max_latency");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: cost\n"
               "    cost: {max_usd: lots}\n",
               9, "cost.max_usd");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: direct\n"
               "    feedback: {min_threshold: 0.9, max_threshold: 0.1}\n",
               9, "min_threshold is above max_threshold");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: direct\n"
               "    feedback: {q_min: 2}\n",
               9, "feedback.q_min");
    expect_err("  - name: r\n"
               "    models: [small, large]\n"
               "    policy: direct\n"
               "    feedback: {cooldown: 1x}\n",
               9, "feedback.cooldown");
}

static void test_bodies_log(void **state)
{
    (void)state;
    struct br_config *c = load_ok(MODELS "log: {bodies: true, body_max: 8KiB}\n");
    assert_true(c->log_bodies);
    assert_int_equal(c->log_body_max_bytes, 8192);
    br_config_unref(c);
    c = load_ok(MODELS);
    assert_false(c->log_bodies);
    br_config_unref(c);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_route),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_bodies_log),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("route_config", tests, NULL, NULL);
}
