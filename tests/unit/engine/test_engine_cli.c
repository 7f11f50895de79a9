/* SPDX-License-Identifier: MIT */
/*
 * `brigade generate` run in process (br_test_cli.h): greedy output of stories260K equals
 * llama2.c's golden text, --stop, --seed reproducibility, --logprobs lines, the stderr summary,
 * usage errors and unloadable models.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "br_test_cli.h"
#include "engine/engine_cli.h"

#define DIR    BR_SOURCE_DIR "/models/stories260K/"
#define BIN    DIR "stories260K.bin"
#define TOK    DIR "tok512.bin"
#define GGUF   DIR "stories260K-f32.gguf"
#define GOLDEN DIR "golden/run_greedy_once_upon.txt"

static struct br_test_run gen(const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    struct br_test_run r = br_test_run_va(br_generate_cli, first, ap);
    va_end(ap);
    return r;
}

static char *golden(void)
{
    FILE *f = fopen(GOLDEN, "rb");
    assert_non_null(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    (void)fclose(f);
    buf[n] = '\0';
    return buf;
}

static void test_generate_help(void **state)
{
    (void)state;
    struct br_test_run r = gen("--help", NULL);
    assert_int_equal(r.code, 0);
    assert_non_null(strstr(r.out, "usage: brigade generate"));
    assert_non_null(strstr(r.out, "--stop"));
    assert_non_null(strstr(r.out, "--logprobs"));
    br_test_run_free(&r);
}

static void test_generate_greedy_golden(void **state)
{
    (void)state;
    struct br_test_run r = gen("-m", BIN, "--tokenizer", TOK, "-p", "Once upon a time", "-n", "252",
                               "--temperature", "0", NULL);
    assert_int_equal(r.code, 0);
    const char *g = golden() + strlen("Once upon a time");
    assert_string_equal(r.out, g); /* both end with one newline */
    assert_non_null(strstr(r.err, "5 prompt + 252 completion tokens, finish length"));
    assert_non_null(strstr(r.err, "tok/s"));
    br_test_run_free(&r);
}

static void test_generate_gguf_stop(void **state)
{
    (void)state;
    struct br_test_run r = gen("--model=" GGUF, "--prompt", "Once upon a time", "--temperature=0",
                               "--stop", "park", "--stop", "never-there", NULL);
    assert_int_equal(r.code, 0);
    const char *g = golden() + strlen("Once upon a time");
    size_t want = (size_t)(strstr(g, "park") - g);
    assert_int_equal(strlen(r.out), want + 1);
    assert_memory_equal(r.out, g, want);
    assert_non_null(strstr(r.err, "finish stop"));
    br_test_run_free(&r);
}

static void test_generate_seed_and_logprobs(void **state)
{
    (void)state;
    struct br_test_run a =
        gen("-m", BIN, "--tokenizer", TOK, "-p", "Once", "-n", "20", "--seed", "7", "--temperature",
            "1", "--top-k", "0", "--top-p", "1", "--logprobs", "2", "--threads", "2", NULL);
    struct br_test_run b = gen("-m", BIN, "--tokenizer", TOK, "-p", "Once", "-n", "20", "--seed",
                               "7", "--temperature", "1", "--top-k", "0", "--top-p", "1", NULL);
    assert_int_equal(a.code, 0);
    assert_int_equal(b.code, 0);
    assert_string_equal(a.out, b.out);
    int lines = 0;
    for (const char *p = a.err; (p = strstr(p, "logprob ")) != NULL; p++) {
        int id = 0;
        double lp = 0;
        int t1 = 0;
        double l1 = 0;
        int t2 = 0;
        double l2 = 0;
        /* NOLINTNEXTLINE(cert-err34-c): a malformed line fails the count check */
        assert_int_equal(
            sscanf(p, "logprob %d %lf | %d %lf | %d %lf", &id, &lp, &t1, &l1, &t2, &l2), 6);
        assert_true(lp <= 0 && l1 >= l2 && lp <= l1);
        lines++;
    }
    assert_int_equal(lines, 20);
    br_test_run_free(&a);
    br_test_run_free(&b);
}

static void test_generate_errors(void **state)
{
    (void)state;
    static const char *const bad[][4] = {
        {"-p", "x", NULL, NULL},
        {"-m", BIN, "--top-p", "0"},
        {"-m", BIN, "--temperature", "-1"},
        {"-m", BIN, "--logprobs", "21"},
        {"-m", BIN, "--threads", "0"},
        {"-m", BIN, "--threads", "257"},
        {"-m", BIN, "-n", "abc"},
        {"-m", BIN, "--stop", ""},
        {"-m", BIN, "--bogus", NULL},
        {"-m", NULL, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct br_test_run r = gen(bad[i][0], bad[i][1], bad[i][2], bad[i][3], NULL);
        assert_int_equal(r.code, 2);
        assert_non_null(strstr(r.err, "brigade generate: "));
        br_test_run_free(&r);
    }
    struct br_test_run r = gen("-m", BIN, "--stop", "a", "--stop", "b", "--stop", "c", "--stop",
                               "d", "--stop", "e", NULL);
    assert_int_equal(r.code, 2);
    br_test_run_free(&r);
    r = gen("-m", BIN, NULL); /* no --tokenizer */
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "tokenizer"));
    br_test_run_free(&r);
    r = gen("-m", DIR "missing.gguf", NULL);
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "missing.gguf"));
    br_test_run_free(&r);
    r = gen("-m", TOK, "--tokenizer", TOK, NULL); /* not a checkpoint */
    assert_int_equal(r.code, 1);
    br_test_run_free(&r);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_help),
        cmocka_unit_test(test_generate_greedy_golden),
        cmocka_unit_test(test_generate_gguf_stop),
        cmocka_unit_test(test_generate_seed_and_logprobs),
        cmocka_unit_test(test_generate_errors),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_cli", tests, NULL, NULL);
}
