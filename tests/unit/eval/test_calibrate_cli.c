/* SPDX-License-Identifier: MIT */
/*
 * `brigade calibrate` end to end, in process (br_calibrate_cli with both streams captured):
 * --help, bad arguments, each objective on the real GSM8K outcomes (the oracle's share for a
 * 95% floor, a target p_H, a budget), the bootstrap intervals around the point estimates, and
 * --write into a config file: the route's own model file is calibrated, the threshold lands at
 * routes[auto].classifier.threshold, every other byte is kept and the file still loads.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "br_test_cli.h"
#include "config/config.h"
#include "core/err.h"
#include "eval/calibrate_cli.h"

#define GSM8K   BR_SOURCE_DIR "/data/routellm/gsm8k/gsm8k_responses.csv"
#define STRONG  "gpt-4-1106-preview"
#define WEAK    "mistralai/Mixtral-8x7B-Instruct-v0.1"
#define GENERAL BR_SOURCE_DIR "/models/router/general.brr"

static struct br_test_run cal(const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    struct br_test_run r = br_test_run_va(br_calibrate_cli, first, ap);
    va_end(ap);
    return r;
}

static json_t *parse(const struct br_test_run *r)
{
    json_error_t je;
    json_t *j = json_loads(r->out, 0, &je);
    if (!j) {
        fprintf(stderr, "not JSON (%s):\n%s\n%s\n", je.text, r->out, r->err);
    }
    assert_non_null(j);
    return j;
}

static double num(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    assert_non_null(v);
    return json_number_value(v);
}

static double ci(json_t *j, const char *key, size_t i)
{
    return json_number_value(json_array_get(json_object_get(json_object_get(j, "ci95"), key), i));
}

static void test_help(void **state)
{
    (void)state;
    struct br_test_run r = cal("--help", NULL);
    assert_int_equal(r.code, 0);
    br_test_expect(r.out, "usage: brigade calibrate DATASET");
    br_test_expect(r.out, "E[C] = p_H*C_H + (1 - p_H)*C_L subject to Q >= Q_min");
    br_test_expect(r.out, "routes[NAME].classifier.threshold");
    br_test_run_free(&r);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct br_test_run r = cal(NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "name a DATASET");
    br_test_run_free(&r);
    r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "give an objective");
    br_test_run_free(&r);
    r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, "--quality-min", "95%", "--write", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "--write needs -c CONFIG and --route NAME");
    br_test_run_free(&r);
    r = cal(GSM8K, "--strong", "gpt-9", "--weak", WEAK, "--quality-min", "95%", "--router",
            "oracle", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "name two different models");
    br_test_run_free(&r);
    r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, "--quality-min", "95%", "--router", "magic",
            NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "unknown router 'magic'");
    br_test_run_free(&r);
    r = cal("/nonexistent.csv", "--strong", STRONG, "--weak", WEAK, "--p-strong", "0.5", NULL);
    assert_int_equal(r.code, 1);
    br_test_expect(r.err, "/nonexistent.csv");
    br_test_run_free(&r);
    /* A route that the config does not have. */
    r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, "--quality-min", "95%", "-c",
            BR_SOURCE_DIR "/config/brigade.yaml", "--route", "nope", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "has no route 'nope'");
    br_test_run_free(&r);
}

/* The oracle needs about 17.7% of GSM8K's calls on GPT-4 for 95% of its quality. */
static void test_quality_floor_oracle(void **state)
{
    (void)state;
    struct br_test_run r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, "--quality-min", "95%",
                               "--router", "oracle", "--bootstrap", "200", "--json", NULL);
    assert_int_equal(r.code, 0);
    json_t *j = parse(&r);
    assert_true(json_is_true(json_object_get(j, "feasible")));
    double floor = num(j, "quality_floor");
    assert_true(fabs(floor - 0.95 * 1121.0 / 1307.0) < 1e-6);
    assert_true(num(j, "quality") >= floor - 1e-9);
    double ph = num(j, "p_strong");
    assert_true(ph > 0.17 && ph < 0.18);
    assert_true(num(j, "cost_ratio") > 0.1 && num(j, "cost_ratio") < 0.3);
    /* The intervals hold the point estimates. */
    assert_true(ci(j, "p_strong", 0) <= ph && ph <= ci(j, "p_strong", 1));
    assert_true(ci(j, "quality", 0) <= num(j, "quality") &&
                num(j, "quality") <= ci(j, "quality", 1));
    assert_true(ci(j, "cost_usd", 0) <= num(j, "cost_usd") &&
                num(j, "cost_usd") <= ci(j, "cost_usd", 1));
    assert_int_equal((int)num(j, "bootstrap"), 200);
    json_decref(j);
    br_test_run_free(&r);
    /* A floor above the strong model's quality cannot be met with these two models: exit 3. */
    r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, "--quality-min", "0.99", "--router",
            "length", "--bootstrap", "20", NULL);
    assert_int_equal(r.code, 3);
    br_test_expect(r.out, "no threshold meets the objective");
    br_test_run_free(&r);
}

static void test_share_and_budget(void **state)
{
    (void)state;
    struct br_test_run r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, "--p-strong", "0.3",
                               "--router", "length", "--bootstrap", "50", "--json", NULL);
    assert_int_equal(r.code, 0);
    json_t *j = parse(&r);
    assert_true(fabs(num(j, "p_strong") - 0.3) < 0.01);
    /* No quality floor with this objective: null, not a number. */
    assert_true(json_is_null(json_object_get(j, "quality_floor")));
    assert_true(json_is_null(json_object_get(j, "floor_holds")));
    double c30 = num(j, "cost_usd");
    json_decref(j);
    br_test_run_free(&r);
    /* A budget of that cost: no dearer than it, and at least as good as the 30% point. */
    char budget[64];
    snprintf(budget, sizeof(budget), "%.9f", c30);
    r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, "--budget", budget, "--router", "length",
            "--bootstrap", "50", "--json", NULL);
    assert_int_equal(r.code, 0);
    j = parse(&r);
    assert_true(num(j, "cost_usd") <= c30 + 1e-9);
    assert_true(num(j, "p_strong") > 0.25 && num(j, "p_strong") < 0.35);
    json_decref(j);
    br_test_run_free(&r);
}

/* --write: the route's classifier model is calibrated and its threshold written in place. */
static void test_write_into_config(void **state)
{
    (void)state;
    if (access(GENERAL, R_OK) != 0) {
        skip();
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/br_calibrate_%d.yaml", BR_BINARY_DIR, (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("# a comment that must survive\n"
          "models:\n"
          "  - name: mixtral\n"
          "    provider: replay\n"
          "    replay: {file: " GSM8K ", prompt: prompt, response: "
          "'mistralai/Mixtral-8x7B-Instruct-v0.1_response'}\n"
          "    price: {input: 0.60, output: 0.60}\n"
          "  - name: gpt-4\n"
          "    provider: replay\n"
          "    replay: {file: " GSM8K ", prompt: prompt, response: gpt-4-1106-preview_response}\n"
          "    price: {input: 10, output: 30}\n"
          "routes:\n"
          "  - name: auto   # the route\n"
          "    models: [mixtral, gpt-4]\n"
          "    policy: classifier\n"
          "    classifier:\n"
          "      model: " GENERAL "\n"
          "      threshold: 0.5   # calibrated below\n",
          f);
    fclose(f);
    struct br_test_run r = cal(GSM8K, "--strong", STRONG, "--weak", WEAK, "--quality-min", "95%",
                               "--bootstrap", "50", "-c", path, "--route", "auto", "--write", NULL);
    if (r.code != 0) {
        fprintf(stderr, "%s%s", r.out, r.err);
    }
    assert_int_equal(r.code, 0);
    br_test_expect(r.out, "route auto: classifier model " GENERAL);
    br_test_expect(r.out, "wrote routes[auto].classifier.threshold = ");
    const char *v = strstr(r.out, "threshold = ");
    assert_non_null(v);
    double want = strtod(v + strlen("threshold = "), NULL);
    br_test_run_free(&r);
    char *text = br_test_read_file(path);
    br_test_expect(text, "# a comment that must survive\n");
    br_test_expect(text, "  - name: auto   # the route\n");
    br_test_expect(text, "   # calibrated below\n");
    struct br_config *cfg = NULL;
    char err[512];
    assert_int_equal(br_config_load_file(path, &cfg, err, sizeof(err)), BR_OK);
    const struct br_route_cfg *rt = br_config_route_find(cfg, "auto", 4);
    assert_non_null(rt);
    assert_true(fabs(rt->classifier.threshold - want) < 1e-6);
    assert_true(want != 0.5);
    br_config_unref(cfg);
    free(text);
    remove(path);
}

int main(int argc, char **argv)
{
    /* One test per line: the CMake helper registers each line. */
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_quality_floor_oracle),
        cmocka_unit_test(test_share_and_budget),
        cmocka_unit_test(test_write_into_config),
    };
    /* clang-format on */
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("calibrate_cli", tests, NULL, NULL);
}
