/* SPDX-License-Identifier: MIT */
/*
 * Torture of routing (STYLE.md rule 44): loading a config with routes (regexes, rules,
 * feedback settings), building a router with its live state, reading a request's signals,
 * deciding, and feedback, each run once to count its allocations and then once per
 * allocation with that allocation failing. Every run must end in success or a clean error:
 * no crash, no leak (LeakSanitizer), no half-built state.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "br_test.h"
#include "config/config.h"
#include "core/alloc.h"
#include "core/arena.h"
#include "core/err.h"
#include "route/route.h"

static const char cfg_text[] =
    "models:\n"
    "  - {name: a, provider: openai, price: {input: 0.1, output: 0.2}}\n"
    "  - {name: b, provider: openai, price: {input: 10, output: 30}, capabilities: [tools]}\n"
    "routes:\n"
    "  - name: r\n"
    "    models: [a, b]\n"
    "    policy: [rules, latency, cascade]\n"
    "    fallbacks: [b]\n"
    "    exploration: 0.1\n"
    "    latency: {max_latency: 1s}\n"
    "    rules:\n"
    "      - {if: {keywords: [Prove, lemma], regex: 'x+y', in: all}, then: strong}\n"
    "      - {if: {metadata: {tier: free}, code: true}, then: a}\n"
    "    cascade: {threshold: -0.4}\n"
    "    feedback: {min_samples: 1, cooldown: 0s, step: 0.1, min_threshold: -2, "
    "max_threshold: 0}\n"
    "  - name: s\n"
    "    models: [a, b]\n"
    "    policy: cost\n"
    "    cost: {max_usd: 0.01}\n";

static const char body[] =
    "{\"model\":\"r\",\"messages\":[{\"role\":\"system\",\"content\":\"prove \\u00e9\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"x+y=2\\n```code```\"}]}],"
    "\"metadata\":{\"tier\":\"free\",\"x-brigade-max-latency-ms\":\"800\"},\"max_tokens\":10}";

static void torture(const char *name, int (*fn)(void))
{
    br_alloc_fail_at(0);
    uint64_t before = br_alloc_count();
    assert_int_equal(fn(), BR_OK);
    uint64_t n = br_alloc_count() - before;
    size_t clean = 0;
    for (uint64_t i = 1; i <= n; i++) {
        br_alloc_fail_at(i);
        int rc = fn();
        br_alloc_fail_at(0);
        clean += rc != BR_OK;
    }
    printf("torture: %s: %llu allocations, each failed once: %zu clean errors\n", name,
           (unsigned long long)n, clean);
}

static int run_route(void)
{
    struct br_config *c = NULL;
    br_router *r = NULL;
    br_arena *a = NULL;
    char err[512];
    int rc = br_config_load_string(cfg_text, sizeof(cfg_text) - 1, NULL, &c, err, sizeof(err));
    if (rc != BR_OK) {
        assert_true(err[0] != '\0');
        return rc;
    }
    rc = br_router_create(c, NULL, &r, err, sizeof(err));
    if (rc != BR_OK) {
        assert_true(err[0] != '\0');
        goto out;
    }
    rc = br_arena_create(0, &a);
    if (rc != BR_OK) {
        goto out;
    }
    struct br_route_req rq;
    rc = br_route_req_parse(a, BR_SLICE_LIT(body), &rq, err, sizeof(err));
    if (rc != BR_OK) {
        assert_int_equal(rc, BR_ERR_NOMEM);
        goto out;
    }
    struct br_rng rng;
    br_rng_seed(&rng, 5);
    struct br_plan plan;
    struct br_route_error e;
    rc = br_route_plan(r, &c->routes[0], &rq, &rng, &plan, &e);
    assert_int_equal(rc, BR_OK);
    assert_true(plan.n_steps >= 1);
    rc = br_route_plan(r, &c->routes[1], &rq, &rng, &plan, &e);
    assert_int_equal(rc, BR_OK);
    struct br_route_feedback fb = {.route = "r",
                                   .model = "a",
                                   .decision = "accepted",
                                   .quality = 0,
                                   .previous = NAN,
                                   .now_ms = 1};
    struct br_route_adjustment adj;
    br_router_feedback(r, &fb, &adj);
    struct br_route_snapshot *snap = br_malloc(sizeof(*snap));
    if (snap) {
        br_router_snapshot(r, &c->routes[0], snap);
        assert_true(snap->feedback <= 1);
        br_free(snap);
    }
out:
    br_arena_destroy(a);
    br_router_destroy(r);
    br_config_unref(c);
    return rc;
}

static void test_route_torture(void **state)
{
    (void)state;
    torture("routes: config, router, signals, decisions, feedback", run_route);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_torture),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("route_torture", tests, NULL, NULL);
}
