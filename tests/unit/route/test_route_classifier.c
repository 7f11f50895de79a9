/* SPDX-License-Identifier: MIT */
/*
 * The classifier policy and the cascade's learned verifier, with tiny model files written here
 * through the classifier's own writer (route/classifier.h): weights that score a prompt high
 * when it holds a chosen word. Routes load them from a config, as the gateway does.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/arena.h"
#include "core/err.h"
#include "route/route.h"

#ifdef BR_ROUTE_HAVE_CLASSIFIER
#include "route/classifier.h"

static void small_features(struct br_features_config *fc)
{
    br_features_config_default(fc);
    fc->hash_bits = 10;
    fc->flags = BR_FEATURES_WORD1;
}

/* Weight w on every feature the word produces, for weight set `set` of n_sets. */
static void bump(const struct br_features_config *fc, float *weights, size_t n_sets, size_t set,
                 const char *word, float w)
{
    struct br_feature f[64];
    size_t n = 0;
    assert_int_equal(br_features_extract(fc, word, strlen(word), f, 64, &n), BR_OK);
    for (size_t i = 0; i < n; i++) {
        weights[(size_t)f[i].index * n_sets + set] += w / f[i].value;
    }
}

/* A model file: kind, one weight set per name, `word` pushing set i by push[i]. */
static void write_model(const char *path, enum br_classifier_kind kind, const char *const *names,
                        size_t n_sets, const char *word, const float *push, const double *bias)
{
    struct br_classifier_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.kind = kind;
    spec.combine = BR_CLASSIFIER_COMBINE_NONE;
    small_features(&spec.features);
    spec.n_sets = n_sets;
    for (size_t i = 0; i < n_sets; i++) {
        spec.sets[i].name = names[i];
        spec.sets[i].bias = bias[i];
        spec.sets[i].cost_usd = NAN;
        spec.sets[i].quality = NAN;
    }
    spec.threshold = NAN;
    size_t dim = br_classifier_dim(kind, &spec.features);
    float *w = calloc(dim * n_sets, sizeof(*w));
    for (size_t i = 0; i < n_sets; i++) {
        bump(&spec.features, w, n_sets, i, word, push[i]);
    }
    spec.weights = w;
    char err[256];
    if (br_classifier_save(&spec, path, err, sizeof(err)) != BR_OK) {
        fail_msg("save: %s", err);
    }
    free(w);
}

struct fixture {
    char dir[256];
    char path[300];
    struct br_config *cfg;
    br_router *r;
    br_arena *a;
    struct br_rng rng;
};

static void setup(struct fixture *f, const char *routes_fmt)
{
    char text[4096];
    char err[512];
    (void)snprintf(text, sizeof(text),
                   "models:\n"
                   "  - {name: small, provider: openai, price: {input: 0.1, output: 0.2}}\n"
                   "  - {name: mid, provider: openai, price: {input: 1, output: 2}}\n"
                   "  - {name: large, provider: openai, price: {input: 10, output: 30}}\n"
                   "routes:\n%s",
                   routes_fmt);
    assert_int_equal(br_config_load_string(text, strlen(text), f->dir, &f->cfg, err, sizeof(err)),
                     BR_OK);
    if (br_router_create(f->cfg, NULL, &f->r, err, sizeof(err)) != BR_OK) {
        fail_msg("router: %s", err);
    }
    assert_int_equal(br_arena_create(0, &f->a), BR_OK);
    br_rng_seed(&f->rng, 3);
}

static void teardown(struct fixture *f)
{
    br_router_destroy(f->r);
    br_config_unref(f->cfg);
    br_arena_destroy(f->a);
    f->r = NULL;
    f->cfg = NULL;
}

static void make_dir(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    (void)snprintf(f->dir, sizeof(f->dir), "%s/tmp-route-clf-XXXXXX", BR_BINARY_DIR);
    assert_non_null(mkdtemp(f->dir));
}

static void remove_dir(struct fixture *f, const char *const *files, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char p[400];
        (void)snprintf(p, sizeof(p), "%s/%s", f->dir, files[i]);
        unlink(p);
    }
    rmdir(f->dir);
}

static const char *decide(struct fixture *f, const char *text, struct br_plan *p)
{
    char body[1024];
    (void)snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
                   text);
    struct br_route_req rq;
    char err[256];
    assert_int_equal(br_route_req_parse(f->a, br_slice_from_cstr(body), &rq, err, sizeof(err)),
                     BR_OK);
    struct br_route_error e;
    const struct br_route_cfg *route = &f->cfg->routes[0];
    assert_int_equal(br_route_plan(f->r, route, &rq, &f->rng, p, &e), BR_OK);
    return p->steps[0].model->name;
}

static void test_binary_threshold(void **state)
{
    (void)state;
    struct fixture f;
    make_dir(&f);
    char path[400];
    (void)snprintf(path, sizeof(path), "%s/binary.brr", f.dir);
    const char *names[] = {"strong"};
    const float push[] = {20.0f};
    const double bias[] = {-2.0};
    write_model(path, BR_CLASSIFIER_BINARY, names, 1, "theorem", push, bias);
    setup(&f, "  - name: auto\n"
              "    models: [small, large]\n"
              "    policy: classifier\n"
              "    classifier: {model: binary.brr, threshold: 0.5}\n");
    struct br_plan p;
    assert_string_equal(decide(&f, "prove this theorem", &p), "large");
    assert_string_equal(p.policy, "classifier");
    assert_string_equal(p.decision, "strong");
    assert_true(p.score > 0.9);
    assert_true(fabs(p.threshold - 0.5) < 1e-12);
    assert_non_null(strstr(p.reason, ">= threshold 0.500"));
    assert_string_equal(decide(&f, "say hello", &p), "small");
    assert_string_equal(p.decision, "weak");
    assert_true(fabs(p.score - 1.0 / (1.0 + exp(2.0))) < 1e-3);
    /* The score the route gives any text (what calibrate and tests use). */
    double s = 0;
    const struct br_route_cfg *route = &f.cfg->routes[0];
    assert_int_equal(br_router_score_text(f.r, route, "a theorem", 9, &s), BR_OK);
    assert_true(s > 0.9);
    /* A threshold set at run time (calibration, feedback) changes the decisions. */
    assert_int_equal(br_router_threshold_set(f.r, route, 0.1, "test"), BR_OK);
    assert_string_equal(decide(&f, "say hello", &p), "large");
    teardown(&f);
    const char *files[] = {"binary.brr"};
    remove_dir(&f, files, 1);
}

static void test_n_model(void **state)
{
    (void)state;
    struct fixture f;
    make_dir(&f);
    char path[400];
    (void)snprintf(path, sizeof(path), "%s/n.brr", f.dir);
    /* "code" makes small and mid bad (quality low), large stays good. */
    const char *names[] = {"small", "mid", "large"};
    const float push[] = {-8.0f, -1.0f, 0.0f};
    const double bias[] = {2.0, 2.0, 2.5};
    write_model(path, BR_CLASSIFIER_NMODEL, names, 3, "code", push, bias);
    setup(&f, "  - name: auto\n"
              "    models: [small, mid, large]\n"
              "    policy: classifier\n"
              "    classifier: {model: n.brr, margin: 0.1}\n");
    struct br_plan p;
    /* Plain text: all predicted about equal (0.88, 0.88, 0.92): the cheapest within 0.1. */
    assert_string_equal(decide(&f, "hello there", &p), "small");
    /* "code": small 0.002, mid 0.73, large 0.92: mid is not within 0.1 of the best. */
    assert_string_equal(decide(&f, "write code", &p), "large");
    teardown(&f);
    /* A candidate the file predicts nothing for is a load error with the route's line. */
    setup(&f, "  - name: other\n"
              "    models: [small, large]\n"
              "    policy: classifier\n"
              "    classifier: {model: n.brr}\n");
    teardown(&f);
    const char *missing = "models:\n"
                          "  - {name: tiny, provider: openai, price: {input: 0.1, output: 0.2}}\n"
                          "  - {name: large, provider: openai, price: {input: 10, output: 30}}\n"
                          "routes:\n"
                          "  - name: r\n"
                          "    models: [tiny, large]\n"
                          "    policy: classifier\n"
                          "    classifier: {model: n.brr}\n";
    struct br_config *c = NULL;
    char err[512];
    assert_int_equal(br_config_load_string(missing, strlen(missing), f.dir, &c, err, sizeof(err)),
                     BR_OK);
    br_router *r = NULL;
    assert_int_not_equal(br_router_create(c, NULL, &r, err, sizeof(err)), BR_OK);
    assert_non_null(strstr(err, "<string>:8:"));
    assert_non_null(strstr(err, "'tiny'"));
    br_config_unref(c);
    const char *files[] = {"n.brr"};
    remove_dir(&f, files, 1);
}

static void test_bad_files(void **state)
{
    (void)state;
    struct fixture f;
    make_dir(&f);
    char path[400];
    (void)snprintf(path, sizeof(path), "%s/junk.brr", f.dir);
    FILE *fp = fopen(path, "w");
    fputs("BRRT but not really a model", fp);
    fclose(fp);
    const char *text = "models:\n"
                       "  - {name: a, provider: openai, price: {input: 0.1, output: 0.2}}\n"
                       "  - {name: b, provider: openai, price: {input: 10, output: 30}}\n"
                       "routes:\n"
                       "  - name: r\n"
                       "    models: [a, b]\n"
                       "    policy: classifier\n"
                       "    classifier: {model: junk.brr}\n";
    struct br_config *c = NULL;
    char err[512];
    assert_int_equal(br_config_load_string(text, strlen(text), f.dir, &c, err, sizeof(err)), BR_OK);
    br_router *r = NULL;
    assert_int_not_equal(br_router_create(c, NULL, &r, err, sizeof(err)), BR_OK);
    assert_non_null(strstr(err, "<string>:8: routes[r].classifier:"));
    br_config_unref(c);
    const char *files[] = {"junk.brr"};
    remove_dir(&f, files, 1);
}

static void test_verifier(void **state)
{
    (void)state;
    struct fixture f;
    make_dir(&f);
    char path[400];
    (void)snprintf(path, sizeof(path), "%s/v.brr", f.dir);
    const char *names[] = {"escalate"};
    const float push[] = {20.0f};
    const double bias[] = {-3.0};
    write_model(path, BR_CLASSIFIER_VERIFIER, names, 1, "integral", push, bias);
    setup(&f, "  - name: c\n"
              "    models: [small, large]\n"
              "    policy: cascade\n"
              "    cascade: {confidence: verifier, verifier_model: v.brr, threshold: 0.6}\n");
    const struct br_route_cfg *route = &f.cfg->routes[0];
    double ok = 0;
    assert_int_equal(br_router_verify(f.r, route, "hi", 2, "hello", 5, &ok), BR_OK);
    assert_true(ok > 0.9);
    assert_int_equal(br_router_verify(f.r, route, "solve the integral", 18, "42", 2, &ok), BR_OK);
    assert_true(ok < 0.1);
    struct br_plan p;
    assert_string_equal(decide(&f, "anything", &p), "small");
    assert_true(p.cascade);
    assert_true(fabs(p.steps[1].threshold - 0.6) < 1e-12);
    teardown(&f);
    /* A verifier is not a router, and a router is not a verifier. */
    const char *as_router = "models:\n"
                            "  - {name: a, provider: openai, price: {input: 0.1, output: 0.2}}\n"
                            "  - {name: b, provider: openai, price: {input: 10, output: 30}}\n"
                            "routes:\n"
                            "  - name: r\n"
                            "    models: [a, b]\n"
                            "    policy: classifier\n"
                            "    classifier: {model: v.brr}\n";
    struct br_config *c = NULL;
    char err[512];
    assert_int_equal(
        br_config_load_string(as_router, strlen(as_router), f.dir, &c, err, sizeof(err)), BR_OK);
    br_router *r = NULL;
    assert_int_not_equal(br_router_create(c, NULL, &r, err, sizeof(err)), BR_OK);
    assert_non_null(strstr(err, "verifier model"));
    br_config_unref(c);
    const char *files[] = {"v.brr"};
    remove_dir(&f, files, 1);
}

#else

static void test_binary_threshold(void **state)
{
    (void)state;
    skip(); /* this build has no classifier (src/route/classifier.c) */
}

static void test_n_model(void **state)
{
    (void)state;
    skip();
}

static void test_bad_files(void **state)
{
    (void)state;
    skip();
}

static void test_verifier(void **state)
{
    (void)state;
    skip();
}

#endif

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_binary_threshold),
        cmocka_unit_test(test_n_model),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_verifier),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("route_classifier", tests, NULL, NULL);
}
