/* SPDX-License-Identifier: MIT */
/*
 * `brigade generate` run in process (br_test_cli.h): greedy output of stories260K equals
 * llama2.c's golden text, --stop, --seed reproducibility, --logprobs lines, the stderr summary,
 * usage errors and unloadable models; `brigade quantize`: the tensor-type rule, values within
 * the format's error bound, greedy generation on the output, self-contained vocabulary from a
 * llama2.c .bin, byte-identical reruns (also over its own output), usage and I/O errors.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "br_test_cli.h"
#include "core/err.h"
#include "engine/engine.h"
#include "engine/engine_cli.h"
#include "engine/gguf.h"
#include "engine/quant.h"

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

static struct br_test_run quant(const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    struct br_test_run r = br_test_run_va(br_quantize_cli, first, ap);
    va_end(ap);
    return r;
}

static char *out_path(const char *tag)
{
    static char buf[6][256];
    static int k;
    char *p = buf[k++ % 6];
    (void)snprintf(p, 256, "%s/quantize_%s_%d.gguf", BR_BINARY_DIR, tag, (int)getpid());
    return p;
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    assert_true(len > 0);
    rewind(f);
    unsigned char *b = malloc((size_t)len);
    assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
    (void)fclose(f);
    *n = (size_t)len;
    return b;
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na = 0;
    size_t nb = 0;
    unsigned char *x = slurp(a, &na);
    unsigned char *y = slurp(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, na);
    free(x);
    free(y);
}

static void run_quant(const char *in, const char *out, const char *type, const char *tok)
{
    struct br_test_run r = tok ? quant(in, out, "--type", type, "--tokenizer", tok, NULL)
                               : quant(in, out, "--type", type, NULL);
    if (r.code != 0) {
        fail_msg("quantize %s -> %s: %s", in, type, r.err);
    }
    assert_non_null(strstr(r.err, "brigade quantize: wrote"));
    br_test_run_free(&r);
}

/* Every tensor of `out` has the rule's type and values within the format's bound of `ref`. */
static void check_quantized(const char *ref, const char *out, uint32_t qtype, double step_div,
                            double bound_steps)
{
    br_gguf *a = NULL;
    br_gguf *b = NULL;
    char err[BR_GGUF_ERR_CAP];
    assert_int_equal(br_gguf_open(ref, &a, err, sizeof err), BR_OK);
    assert_int_equal(br_gguf_open(out, &b, err, sizeof err), BR_OK);
    assert_int_equal(br_gguf_tensor_count(a), br_gguf_tensor_count(b));
    static float x[64 * 512];
    static float y[64 * 512];
    int n_quant = 0;
    for (size_t i = 0; i < br_gguf_tensor_count(a); i++) {
        const struct br_gguf_tensor *ta = br_gguf_tensor_at(a, i);
        char name[128];
        (void)snprintf(name, sizeof name, "%.*s", (int)ta->name.len, ta->name.ptr);
        const struct br_gguf_tensor *tb = br_gguf_find_tensor(b, name);
        assert_non_null(tb);
        assert_int_equal(ta->n_dims, tb->n_dims);
        assert_int_equal(ta->dims[0], tb->dims[0]);
        assert_int_equal(ta->dims[1], tb->dims[1]);
        bool keep = ta->n_dims == 1 || ta->dims[0] % 32 != 0;
        assert_int_equal(tb->ggml_type, keep ? BR_GGUF_GGML_F32 : qtype);
        n_quant += !keep;
        struct br_tensor va;
        struct br_tensor vb;
        assert_int_equal(br_gguf_tensor_view(ta, &va), BR_OK);
        assert_int_equal(br_gguf_tensor_view(tb, &vb), BR_OK);
        size_t n = va.rows * va.cols;
        assert_true(n <= sizeof x / sizeof x[0]);
        assert_int_equal(br_quant_dequantize_row(va.type, va.data, x, n), BR_OK);
        assert_int_equal(br_quant_dequantize_row(vb.type, vb.data, y, n), BR_OK);
        for (size_t blk = 0; blk < n; blk += 32) {
            double amax = 0;
            for (size_t k = blk; k < blk + 32 && k < n; k++) {
                amax = fmax(amax, fabs((double)x[k]));
            }
            double bound = keep ? 0.0 : bound_steps * amax / step_div + 1e-7;
            for (size_t k = blk; k < blk + 32 && k < n; k++) {
                if (fabs((double)x[k] - (double)y[k]) > bound) {
                    fail_msg("%s[%zu]: %g vs %g (bound %g)", name, k, (double)x[k], (double)y[k],
                             bound);
                }
            }
        }
    }
    assert_true(n_quant > 0);
    br_gguf_close(a);
    br_gguf_close(b);
}

static void greedy_prefix(const char *model, int n_tokens)
{
    br_engine_model *m = NULL;
    char err[BR_ENGINE_ERR_CAP];
    int rc = br_engine_model_open(model, NULL, &m, err, sizeof err);
    if (rc != BR_OK) {
        fail_msg("%s", err);
    }
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    p.max_tokens = n_tokens;
    struct br_engine_gen_result r;
    assert_int_equal(br_engine_generate(m, "Once upon a time", 16, &p, &r, err, sizeof err), BR_OK);
    assert_int_equal(r.completion_tokens, (size_t)n_tokens);
    const char *g = golden() + 16;
    if (r.text.len > strlen(g) || memcmp(r.text.ptr, g, r.text.len) != 0) {
        fail_msg("%s: greedy text differs from the golden run: %.*s", model, (int)r.text.len,
                 r.text.ptr);
    }
    br_engine_gen_result_free(&r);
    br_engine_model_close(m);
}

static void test_quantize_help(void **state)
{
    (void)state;
    struct br_test_run r = quant("--help", NULL);
    assert_int_equal(r.code, 0);
    assert_non_null(strstr(r.out, "usage: brigade quantize IN OUT --type"));
    assert_non_null(strstr(r.out, "1-D tensors"));
    assert_non_null(strstr(r.out, "multiple of 32"));
    br_test_run_free(&r);
}

static void test_quantize_gguf_q8_0(void **state)
{
    (void)state;
    const char *q8 = out_path("q8");
    const char *q8b = out_path("q8b");
    const char *q8c = out_path("q8c");
    run_quant(GGUF, q8, "q8_0", NULL);
    /* Q8_0: d = max|x| / 127, error at most half a step (plus the f16 rounding of d). */
    check_quantized(GGUF, q8, BR_GGUF_GGML_Q8_0, 127.0, 0.6);
    greedy_prefix(q8, 40);
    run_quant(GGUF, q8b, "q8_0", NULL);
    assert_same_file(q8, q8b);
    run_quant(q8, q8c, "q8_0", NULL); /* over its own output */
    assert_same_file(q8, q8c);
    unlink(q8);
    unlink(q8b);
    unlink(q8c);
}

static void test_quantize_bin_q4_0_and_f16(void **state)
{
    (void)state;
    const char *f32 = out_path("f32");
    const char *q4 = out_path("q4");
    const char *f16 = out_path("f16");
    run_quant(BIN, f32, "f32", TOK);
    run_quant(BIN, q4, "q4_0", TOK);
    run_quant(BIN, f16, "f16", TOK);
    /* The f32 rewrite of the .bin is self-contained and generates llama2.c's golden text. */
    greedy_prefix(f32, 100);
    greedy_prefix(f16, 40);
    /* Q4_0: d = extreme / 8, error at most one step. */
    check_quantized(f32, q4, BR_GGUF_GGML_Q4_0, 8.0, 1.05);
    /* The vocabulary written from tok512.bin equals the one read from it. */
    br_engine_model *a = NULL;
    br_engine_model *b = NULL;
    char err[BR_ENGINE_ERR_CAP];
    assert_int_equal(br_engine_model_open(BIN, TOK, &a, err, sizeof err), BR_OK);
    assert_int_equal(br_engine_model_open(q4, NULL, &b, err, sizeof err), BR_OK);
    const struct br_tokenizer *ta = br_engine_model_tokenizer(a);
    const struct br_tokenizer *tb = br_engine_model_tokenizer(b);
    assert_int_equal(br_tokenizer_n_vocab(ta), br_tokenizer_n_vocab(tb));
    assert_int_equal(br_tokenizer_bos(ta), br_tokenizer_bos(tb));
    assert_int_equal(br_tokenizer_eos(ta), br_tokenizer_eos(tb));
    for (int32_t i = 0; i < (int32_t)br_tokenizer_n_vocab(ta); i++) {
        struct br_slice pa;
        struct br_slice pb;
        float sa = 0;
        float sb = 0;
        enum br_tok_type ya = BR_TOK_NORMAL;
        enum br_tok_type yb = BR_TOK_NORMAL;
        assert_true(br_tokenizer_token(ta, i, &pa, &sa, &ya));
        assert_true(br_tokenizer_token(tb, i, &pb, &sb, &yb));
        assert_true(br_slice_eq(pa, pb));
        assert_true(sa == sb);
        assert_int_equal(ya, yb);
    }
    assert_int_equal(br_engine_model_config(a)->seq_len, br_engine_model_config(b)->seq_len);
    br_engine_model_close(a);
    br_engine_model_close(b);
    unlink(f32);
    unlink(q4);
    unlink(f16);
}

static void test_quantize_errors(void **state)
{
    (void)state;
    const char *o = out_path("err");
    static const char *const bad[][4] = {
        {GGUF, NULL, NULL, NULL},           {GGUF, "x.gguf", NULL, NULL},
        {GGUF, "x.gguf", "--type", "q5_1"}, {GGUF, "x.gguf", "--type", NULL},
        {"--bogus", NULL, NULL, NULL},      {GGUF, "a", "b", "--type=f32"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct br_test_run r = quant(bad[i][0], bad[i][1], bad[i][2], bad[i][3], NULL);
        assert_int_equal(r.code, 2);
        assert_non_null(strstr(r.err, "brigade quantize: "));
        br_test_run_free(&r);
    }
    struct br_test_run r = quant(BIN, o, "--type", "q8_0", NULL); /* no tokenizer */
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "tokenizer"));
    br_test_run_free(&r);
    r = quant(TOK, o, "--type", "q8_0", "--tokenizer", TOK, NULL); /* not a model */
    assert_int_equal(r.code, 1);
    br_test_run_free(&r);
    r = quant(GGUF, "/nonexistent-dir/o.gguf", "--type", "q8_0", NULL);
    assert_int_equal(r.code, 1);
    assert_non_null(strstr(r.err, "/nonexistent-dir/o.gguf"));
    br_test_run_free(&r);
    assert_int_equal(access(o, F_OK), -1);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_help),
        cmocka_unit_test(test_generate_greedy_golden),
        cmocka_unit_test(test_generate_gguf_stop),
        cmocka_unit_test(test_generate_seed_and_logprobs),
        cmocka_unit_test(test_generate_errors),
        cmocka_unit_test(test_quantize_help),
        cmocka_unit_test(test_quantize_gguf_q8_0),
        cmocka_unit_test(test_quantize_bin_q4_0_and_f16),
        cmocka_unit_test(test_quantize_errors),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_cli", tests, NULL, NULL);
}
