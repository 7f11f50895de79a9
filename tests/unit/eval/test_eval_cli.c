/* SPDX-License-Identifier: MIT */
/*
 * `brigade eval` end to end, in process (br_eval_cli with stdout and stderr captured): exit
 * codes, --help, bad arguments, a run on a fixture writing --csv and --svg and checking both,
 * --json, the scores router fed with the CSV another run wrote, and the real GSM8K file with
 * the oracle and random routers (APGR as the closed form says, and about 0.5).
 */
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "br_test.h"
#include "br_test_cli.h"
#include "eval/eval_cli.h"

#define FIX(name)  BR_SOURCE_DIR "/tests/data/eval/" name
#define DATA(name) BR_SOURCE_DIR "/data/" name

/* cmocka 1.1 has no assert_double_equal. */
#define assert_near(a, b, eps) near_impl((a), (b), (eps), #a, __FILE__, __LINE__)

static void near_impl(double a, double b, double eps, const char *what, const char *file, int line)
{
    if (!(fabs(a - b) <= eps)) {
        fprintf(stderr, "%s:%d: %s = %.17g, expected %.17g\n", file, line, what, a, b);
    }
    assert_true(fabs(a - b) <= eps);
}

/* Runs `brigade eval args...` (NULL-terminated) with both streams captured. */
static struct br_test_run run_cli(const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    struct br_test_run r = br_test_run_va(br_eval_cli, first, ap);
    va_end(ap);
    return r;
}

static void test_help(void **state)
{
    (void)state;
    struct br_test_run r = run_cli("--help", NULL);
    assert_int_equal(r.code, 0);
    br_test_expect(r.out, "usage: brigade eval DATASET");
    br_test_expect(r.out, "\"prompt_tokens\": 12"); /* the JSONL format is documented */
    br_test_expect(r.out, "always-strong");
    br_test_expect(r.out, "oracle");
    br_test_expect(r.out, "$24.7/M");
    br_test_expect(r.out, "CPT(50/80/95%)");
    br_test_run_free(&r);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct br_test_run r = run_cli(NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "no DATASET given");
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "--bogus", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "unknown option '--bogus'");
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "--folds", "1", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "--folds wants 2..1000, got '1'");
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "--seed", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "--seed needs a value");
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "--router", "magic", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "unknown router 'magic'");
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "--price", "gpt=abc", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "--price wants MODEL=IN/OUT");
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "--format", "xml", NULL);
    assert_int_equal(r.code, 2);
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "--holdout", "1.5", NULL);
    assert_int_equal(r.code, 2);
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "--folds", "3", "--holdout", "0.2", NULL);
    assert_int_equal(r.code, 2);
    br_test_run_free(&r);
    r = run_cli(FIX("routellm_small.csv"), "other.csv", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "more than one dataset");
    br_test_run_free(&r);
    /* Model names that the dataset does not have. */
    r = run_cli(FIX("routellm_small.csv"), "--strong", "gpt-9", "--weak", "weak-model", NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "no model 'gpt-9'");
    br_test_expect(r.err, "strong-model");
    br_test_run_free(&r);
    /* Three models: the pair must be named. */
    r = run_cli(FIX("small.jsonl"), NULL);
    assert_int_equal(r.code, 2);
    br_test_expect(r.err, "the dataset has 3 models: name --strong and --weak");
    br_test_run_free(&r);
    /* Two models but only one named. */
    r = run_cli(FIX("routellm_small.csv"), "--strong", "strong-model", NULL);
    assert_int_equal(r.code, 2);
    br_test_run_free(&r);
    /* Data problems are failures (1), with the file and line. */
    r = run_cli("/nonexistent/data.csv", NULL);
    assert_int_equal(r.code, 1);
    br_test_expect(r.err, "/nonexistent/data.csv: cannot open");
    br_test_run_free(&r);
    r = run_cli(FIX("small.jsonl"), "--format", "routellm", NULL);
    assert_int_equal(r.code, 1);
    br_test_expect(r.err, "small.jsonl:1:");
    br_test_run_free(&r);
    /* The scores router without its file. */
    r = run_cli(FIX("routellm_small.csv"), "--router", "scores", NULL);
    assert_int_equal(r.code, 1);
    br_test_expect(r.err, "router scores needs --scores FILE");
    br_test_run_free(&r);
}

static void tmp_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/br_eval_cli_%d_%s", BR_BINARY_DIR, (int)getpid(), name);
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++) {
        n += *s == '\n';
    }
    return n;
}

static void test_fixture_csv_svg(void **state)
{
    (void)state;
    char csv[512], svg[512];
    tmp_path(csv, sizeof(csv), "out.csv");
    tmp_path(svg, sizeof(svg), "out.svg");
    struct br_test_run r =
        run_cli(FIX("routerbench_small.csv"), "--strong", "pricey", "--weak", "cheap", "--router",
                "oracle,length,always-weak", "--csv", csv, "--svg", svg, "--thresholds", "4", NULL);
    if (r.code != 0) {
        fprintf(stderr, "%s%s", r.out, r.err);
    }
    assert_int_equal(r.code, 0);
    /* Row 2 has no quality for "pricey": skipped. */
    br_test_expect(r.out, "4 prompts; 1 without both outcomes skipped");
    br_test_expect(r.out, "recorded per prompt");
    br_test_expect(r.out, "APGR");
    br_test_expect(r.out, "CPT(50/80/95%)");
    br_test_expect(r.out, "mistakes there");
    br_test_expect(r.out, "baselines on 3 prompts");
    br_test_expect(r.out, "oracle p_H for 95% of strong quality");
    br_test_expect(r.out, "operating point  p_H 0.0%");
    br_test_run_free(&r);
    /* The CSV: a header and one line per evaluated prompt (the first router, the oracle). */
    char *c = br_test_read_file(csv);
    assert_int_equal(count_lines(c), 4);
    br_test_expect(c, "index,group,fold,score,decision,q_strong,q_weak,c_strong_usd,c_weak_usd\n");
    /* Prompt 1: only pricey right, so the oracle sends it to strong at its Q95 threshold. */
    br_test_expect(c, "\n1,\"mbpp\",,0.99999999");
    br_test_expect(c, ",strong,1,0,0.0030000000000000001,0.00014999999999999999\n");
    br_test_expect(c, "\n3,\"arc\",,");
    br_test_expect(c, ",weak,1,1,0.001,0.0001\n");
    free(c);
    char *s = br_test_read_file(svg);
    assert_int_equal(strncmp(s, "<svg xmlns=\"http://www.w3.org/2000/svg\"", 39), 0);
    br_test_expect(s, "</svg>\n");
    br_test_expect(s, "<polyline");
    br_test_expect(s, "oracle (APGR");
    br_test_expect(s, "always-strong");
    br_test_expect(s, "random (expected)");
    br_test_expect(s, "95% of strong");
    br_test_expect(s, "cost, USD per 1,000 prompts");
    free(s);
    remove(csv);
    remove(svg);
}

static void test_json_and_scores_roundtrip(void **state)
{
    (void)state;
    char csv[512];
    tmp_path(csv, sizeof(csv), "scores.csv");
    /* Length scores written to a CSV, then read back by the scores router: same APGR. */
    struct br_test_run r = run_cli(DATA("routellm/gsm8k/gsm8k_responses.csv"), "--router", "length",
                                   "--csv", csv, "--json", NULL);
    assert_int_equal(r.code, 0);
    json_error_t je;
    json_t *a = json_loads(r.out, 0, &je);
    assert_non_null(a);
    double apgr_len =
        json_real_value(json_object_get(json_array_get(json_object_get(a, "routers"), 0), "apgr"));
    assert_string_equal(json_string_value(json_object_get(a, "strong")), "gpt-4-1106-preview");
    assert_int_equal(json_integer_value(json_object_get(a, "evaluated")), 1307);
    assert_int_equal(json_integer_value(json_object_get(a, "contaminated_dropped")), 12);
    assert_true(json_is_true(json_object_get(a, "costs")));
    br_test_run_free(&r);
    r = run_cli(DATA("routellm/gsm8k/gsm8k_responses.csv"), "--router", "scores", "--scores", csv,
                "--json", NULL);
    assert_int_equal(r.code, 0);
    json_t *b = json_loads(r.out, 0, &je);
    assert_non_null(b);
    double apgr_sc =
        json_real_value(json_object_get(json_array_get(json_object_get(b, "routers"), 0), "apgr"));
    assert_near(apgr_len, apgr_sc, 1e-12);
    json_decref(a);
    json_decref(b);
    br_test_run_free(&r);
    /* A scores file that misses prompts is refused. */
    FILE *f = fopen(csv, "w");
    fputs("index,score\n0,0.5\n1,0.25\n", f);
    fclose(f);
    r = run_cli(DATA("routellm/gsm8k/gsm8k_responses.csv"), "--router", "scores", "--scores", csv,
                NULL);
    assert_int_equal(r.code, 1);
    br_test_expect(r.err, "1305 prompts have no score (the first: row 2)");
    br_test_run_free(&r);
    f = fopen(csv, "w");
    fputs("index,score\n0,high\n", f);
    fclose(f);
    r = run_cli(DATA("routellm/gsm8k/gsm8k_responses.csv"), "--router", "scores", "--scores", csv,
                NULL);
    assert_int_equal(r.code, 1);
    br_test_expect(r.err, "record 2: score 'high' is not a finite number");
    br_test_run_free(&r);
    f = fopen(csv, "w");
    fputs("index,score\n99999,1\n", f);
    fclose(f);
    r = run_cli(DATA("routellm/gsm8k/gsm8k_responses.csv"), "--router", "scores", "--scores", csv,
                NULL);
    assert_int_equal(r.code, 1);
    br_test_expect(r.err, "index '99999' is not a row of the dataset");
    br_test_run_free(&r);
    remove(csv);
}

static double router_field(json_t *root, size_t i, const char *key)
{
    return json_number_value(
        json_object_get(json_array_get(json_object_get(root, "routers"), i), key));
}

static void test_gsm8k_oracle_and_random(void **state)
{
    (void)state;
    struct br_test_run r = run_cli(DATA("routellm/gsm8k/gsm8k_responses.csv"), "--router",
                                   "oracle,random", "--seed", "7", "--json", NULL);
    assert_int_equal(r.code, 0);
    json_error_t je;
    json_t *j = json_loads(r.out, 0, &je);
    assert_non_null(j);
    json_t *base = json_object_get(j, "baselines");
    double qs = json_number_value(json_object_get(base, "q_strong"));
    double qw = json_number_value(json_object_get(base, "q_weak"));
    double qo = json_number_value(json_object_get(base, "q_oracle"));
    /* RouteLLM's GSM8K numbers: GPT-4 85.8%, Mixtral 63.7% on the 1,307 clean prompts. */
    assert_near(qs, 1121.0 / 1307.0, 1e-12);
    assert_near(qw, 833.0 / 1307.0, 1e-12);
    /*
     * The oracle's APGR in closed form: with g = q_oracle - q_weak (only strong right),
     * b = q_oracle - q_strong (only weak right) and P = g / (q_strong - q_weak), its PGR
     * rises linearly to P over the first g, stays there, and falls to 1 over the last b:
     * APGR = g P / 2 + (1 - g - b) P + b (P + 1) / 2, about 1.12 (> 1: it beats GPT-4).
     */
    double g = qo - qw;
    double b = qo - qs;
    double p = g / (qs - qw);
    double want = g * p / 2 + (1 - g - b) * p + b * (p + 1) / 2;
    assert_near(router_field(j, 0, "apgr"), want, 1e-6);
    assert_true(want > 1.1 && want < 1.15);
    /* A random router: about 0.5. */
    double rnd = router_field(j, 1, "apgr");
    assert_true(fabs(rnd - 0.5) < 0.05);
    assert_near(json_number_value(json_object_get(base, "random_apgr")), 0.5, 1e-12);
    /* The oracle reaches 95% of GPT-4 with about 17.7% of the calls (RouteLLM: 17.6%). */
    double o95 = json_number_value(json_object_get(base, "oracle_p_strong_95"));
    assert_true(o95 > 0.17 && o95 < 0.18);
    json_decref(j);
    br_test_run_free(&r);
}

static void test_progress_mmlu(void **state)
{
    (void)state;
    struct br_test_run r = run_cli(DATA("routellm/mmlu"), "--router", "random", "--progress",
                                   "--thresholds", "0", NULL);
    assert_int_equal(r.code, 0);
    br_test_expect(r.err, "loading");
    br_test_expect(r.out, "57 files): 14037 prompts; 5 contaminated dropped");
    br_test_expect(r.out, "APGR");
    br_test_run_free(&r);
}

/* The real binary, when it is built: `brigade eval` reaches the same command. */
static void test_brigade_binary(void **state)
{
    (void)state;
    const char *bin = BR_BINARY_DIR "/src/brigade";
    if (access(bin, X_OK) != 0) {
        skip();
    }
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s eval --help", bin);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char buf[256] = "";
    assert_non_null(fgets(buf, sizeof(buf), p));
    char rest[4096];
    while (fread(rest, 1, sizeof(rest), p) > 0) {
        /* read it all: closing early would kill the writer with SIGPIPE */
    }
    assert_int_equal(pclose(p), 0);
    br_test_expect(buf, "usage: brigade eval DATASET");
    snprintf(cmd, sizeof(cmd), "%s eval %s --router oracle --quiet --json > /dev/null", bin,
             DATA("routellm/gsm8k/gsm8k_responses.csv"));
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "%s eval 2> /dev/null", bin);
    int st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
}

int main(int argc, char **argv)
{
    /* One test per line: the CMake helper registers each line. */
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_fixture_csv_svg),
        cmocka_unit_test(test_json_and_scores_roundtrip),
        cmocka_unit_test(test_gsm8k_oracle_and_random),
        cmocka_unit_test(test_progress_mmlu),
        cmocka_unit_test(test_brigade_binary),
    };
    /* clang-format on */
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("eval_cli", tests, NULL, NULL);
}
