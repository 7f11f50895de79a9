/* SPDX-License-Identifier: MIT */
/*
 * Tokenizer tests: llama.cpp's SPM conformance strings (ggml-vocab-llama-spm.gguf.inp/.out)
 * encoded with llama2.c's 32k tokenizer.bin, round trips, the stories260K prompt on tok512.bin,
 * a small hand-built vocabulary (merge order, byte fallback, token types, decode rules) and
 * malformed tokenizer.bin files written into a temporary directory.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "engine/tokenizer.h"

#define TOK32K  BR_SOURCE_DIR "/models/llama2c-tokenizer32k/tokenizer.bin"
#define TOK512  BR_SOURCE_DIR "/models/stories260K/tok512.bin"
#define SPM_INP BR_SOURCE_DIR "/models/llama-spm-vocab/ggml-vocab-llama-spm.gguf.inp"
#define SPM_OUT BR_SOURCE_DIR "/models/llama-spm-vocab/ggml-vocab-llama-spm.gguf.out"

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *p;
    long n;
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    assert_int_equal(fseek(f, 0, SEEK_SET), 0);
    p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    p[n] = '\0';
    (void)fclose(f);
    *len = (size_t)n;
    return p;
}

static struct br_tokenizer *load(const char *path, size_t n_vocab)
{
    struct br_tokenizer *t = NULL;
    char err[256] = "";
    int rc = br_tokenizer_load_llama2c(path, n_vocab, &t, err, sizeof(err));
    if (rc != BR_OK) {
        (void)fprintf(stderr, "load %s: %s\n", path, err);
    }
    assert_int_equal(rc, BR_OK);
    return t;
}

/* Decodes ids into a fresh NUL-terminated string (caller frees). */
static char *decode(const struct br_tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    struct br_buf b;
    char *s;
    br_buf_init(&b, 1u << 20);
    assert_int_equal(br_tokenizer_decode(t, ids, n, &b), BR_OK);
    *len = b.len;
    s = malloc(b.len + 1);
    assert_non_null(s);
    if (b.len) {
        memcpy(s, b.ptr, b.len);
    }
    s[b.len] = '\0';
    br_buf_cleanup(&b);
    return s;
}

/* Parses one .out line of space-separated ids. */
static size_t parse_ids(const char *line, size_t len, int32_t *ids, size_t cap)
{
    size_t n = 0;
    size_t i = 0;
    while (i < len) {
        long v = 0;
        if (line[i] == ' ') {
            i++;
            continue;
        }
        while (i < len && line[i] >= '0' && line[i] <= '9') {
            v = v * 10 + (line[i] - '0');
            i++;
        }
        assert_true(n < cap);
        ids[n++] = (int32_t)v;
    }
    return n;
}

static bool contains_space_marker(const char *s, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++) {
        if (memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
            return true;
        }
    }
    return false;
}

/* Encodes one case, compares with the expected ids; returns true on an exact match. */
static bool check_case(const struct br_tokenizer *t, size_t k, const char *in, size_t in_len,
                       const char *out_line, size_t out_len)
{
    int32_t want[512];
    size_t n_want = parse_ids(out_line, out_len, want, 512);
    int32_t *ids = NULL;
    size_t n = 0;
    bool ok;
    assert_int_equal(br_tokenizer_encode(t, in, in_len, false, &ids, &n), BR_OK);
    ok = n == n_want && (n == 0 || memcmp(ids, want, n * sizeof(*ids)) == 0);
    if (!ok) {
        (void)fprintf(stderr, "case %zu: %zu ids, expected %zu:", k, n, n_want);
        for (size_t i = 0; i < n; i++) {
            (void)fprintf(stderr, " %d", (int)ids[i]);
        }
        (void)fprintf(stderr, "\n");
    }
    br_free(ids);
    return ok;
}

/* decode(encode(s, bos)) == s */
static void check_round_trip(const struct br_tokenizer *t, const char *in, size_t in_len)
{
    int32_t *ids = NULL;
    size_t n = 0;
    size_t len = 0;
    char *back;
    assert_int_equal(br_tokenizer_encode(t, in, in_len, true, &ids, &n), BR_OK);
    assert_true(n >= 1);
    assert_int_equal(ids[0], br_tokenizer_bos(t));
    back = decode(t, ids, n, &len);
    assert_int_equal(len, in_len);
    assert_memory_equal(back, in, in_len);
    free(back);
    br_free(ids);
}

static void test_spm_conformance_32k(void **state)
{
    struct br_tokenizer *t = load(TOK32K, 32000);
    size_t inp_len = 0;
    size_t out_len = 0;
    char *inp = read_all(SPM_INP, &inp_len);
    char *out = read_all(SPM_OUT, &out_len);
    const char *sep = "\n__ggml_vocab_test__\n";
    const char *p = inp;
    const char *o = out;
    size_t cases = 0;
    size_t exact = 0;
    (void)state;
    for (;;) {
        const char *end = strstr(p, sep);
        const char *eol = strchr(o, '\n');
        if (!end) {
            break;
        }
        assert_non_null(eol);
        exact += check_case(t, cases, p, (size_t)(end - p), o, (size_t)(eol - o)) ? 1 : 0;
        if (!contains_space_marker(p, (size_t)(end - p))) {
            check_round_trip(t, p, (size_t)(end - p));
        }
        cases++;
        p = end + strlen(sep);
        o = eol + 1;
    }
    (void)fprintf(stderr, "SPM conformance: %zu/%zu exact\n", exact, cases);
    assert_true(cases >= 30);
    assert_int_equal(exact, cases);
    free(inp);
    free(out);
    br_tokenizer_free(t);
}

static void test_32k_layout(void **state)
{
    struct br_tokenizer *t = load(TOK32K, 0);
    struct br_slice piece;
    float score;
    enum br_tok_type type;
    (void)state;
    assert_int_equal(br_tokenizer_n_vocab(t), 32000);
    assert_int_equal(br_tokenizer_unk(t), 0);
    assert_int_equal(br_tokenizer_bos(t), 1);
    assert_int_equal(br_tokenizer_eos(t), 2);
    assert_true(br_tokenizer_token(t, 0, &piece, &score, &type));
    assert_int_equal(type, BR_TOK_UNKNOWN);
    assert_true(br_tokenizer_token(t, 1, NULL, NULL, &type));
    assert_int_equal(type, BR_TOK_CONTROL);
    for (int32_t i = 3; i <= 258; i++) {
        char want[8];
        assert_true(br_tokenizer_token(t, i, &piece, NULL, &type));
        assert_int_equal(type, BR_TOK_BYTE);
        (void)snprintf(want, sizeof(want), "<0x%02X>", (unsigned)(i - 3));
        assert_true(br_slice_eq_cstr(piece, want));
    }
    /* tokenizer.bin stores ' '; the tokenizer holds SentencePiece's "▁". */
    assert_true(br_tokenizer_token(t, 259, &piece, &score, &type));
    assert_true(br_slice_eq_cstr(piece, "\xe2\x96\x81\xe2\x96\x81"));
    assert_true(score < -1e8f);
    assert_int_equal(br_tokenizer_find(t, BR_SLICE_LIT("\xe2\x96\x81Hello")), 15043);
    assert_false(br_tokenizer_token(t, 32000, NULL, NULL, NULL));
    assert_false(br_tokenizer_token(t, -1, NULL, NULL, NULL));
    br_tokenizer_free(t);
}

static void test_tok512_once_upon(void **state)
{
    struct br_tokenizer *t = load(TOK512, 512);
    static const int32_t want[] = {1, 403, 407, 261, 378};
    const char *prompt = "Once upon a time";
    size_t gold_len = 0;
    char *gold =
        read_all(BR_SOURCE_DIR "/models/stories260K/golden/run_greedy_once_upon.txt", &gold_len);
    int32_t *ids = NULL;
    size_t n = 0;
    size_t len = 0;
    char *back;
    (void)state;
    assert_int_equal(br_tokenizer_encode(t, prompt, strlen(prompt), true, &ids, &n), BR_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof(want));
    back = decode(t, ids, n, &len);
    assert_string_equal(back, prompt);
    assert_true(gold_len > len && memcmp(gold, back, len) == 0);
    free(back);
    free(gold);
    br_free(ids);
    /* Empty text: only BOS, or nothing. */
    assert_int_equal(br_tokenizer_encode(t, "", 0, true, &ids, &n), BR_OK);
    assert_int_equal(n, 1);
    br_free(ids);
    assert_int_equal(br_tokenizer_encode(t, "", 0, false, &ids, &n), BR_OK);
    assert_int_equal(n, 0);
    assert_null(ids);
    br_tokenizer_free(t);
}

static void test_round_trip_bytes(void **state)
{
    struct br_tokenizer *t = load(TOK512, 512);
    static const char odd[] = "a\x00\xff\xc3 tab\t\xe2\x82\n\xf0\x9f\x98\x80 x\x80\xc0\xaf ";
    (void)state;
    check_round_trip(t, odd, sizeof(odd) - 1);
    check_round_trip(t, "   leading and trailing   ", 26);
    check_round_trip(t, "Lily", 4);
    br_tokenizer_free(t);
}

/* A tiny vocabulary: exercises merge order, ties, byte fallback and token types. */
static struct br_tokenizer *tiny(const int32_t *types, char *err, size_t cap, int *rc)
{
    static const struct br_slice pieces[] = {
        BR_SLICE_LIT("<unk>"),
        BR_SLICE_LIT("<s>"),
        BR_SLICE_LIT("</s>"),
        BR_SLICE_LIT("<0x61>"),
        BR_SLICE_LIT("\xe2\x96\x81"),
        BR_SLICE_LIT("a"),
        BR_SLICE_LIT("b"),
        BR_SLICE_LIT("c"),
        BR_SLICE_LIT("ab"),
        BR_SLICE_LIT("bc"),
        BR_SLICE_LIT("abc"),
        BR_SLICE_LIT("<ctl>"),
        BR_SLICE_LIT("<"),
        BR_SLICE_LIT("ctl"),
        BR_SLICE_LIT("<ctl"),
        BR_SLICE_LIT("ct"),
    };
    static const float scores[] = {0, 0, 0, 0, -1, -2, -2, -2, -5, -3, -4, 0, -9, -9, -9, -9};
    struct br_tok_vocab v = {pieces, scores, types, 16, 1, 2, 0};
    struct br_tokenizer *t = NULL;
    *rc = br_tokenizer_from_vocab(&v, &t, err, cap);
    return t;
}

static void encode_expect(const struct br_tokenizer *t, const char *s, const int32_t *want,
                          size_t n_want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(br_tokenizer_encode(t, s, strlen(s), false, &ids, &n), BR_OK);
    assert_int_equal(n, n_want);
    assert_memory_equal(ids, want, n * sizeof(*ids));
    br_free(ids);
}

static void test_tiny_vocab(void **state)
{
    static const int32_t types[] = {2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1};
    char err[256] = "";
    int rc;
    struct br_tokenizer *t = tiny(types, err, sizeof(err), &rc);
    (void)state;
    assert_int_equal(rc, BR_OK);
    /* "bc" (-3) merges before "ab" (-5); then "abc" (-4) from a + bc. */
    encode_expect(t, "abc", (const int32_t[]){4, 10}, 2);
    /* 'd' has no piece and no byte token: unk; 'a' alone stays "a" (a normal token). */
    encode_expect(t, "ad", (const int32_t[]){4, 5, 0}, 3);
    /* "<ctl>" is a control token: never produced from text. */
    encode_expect(t, "<ctl>", (const int32_t[]){4, 14, 0}, 3);
    {
        struct br_slice s;
        assert_int_equal(br_tokenizer_piece(t, -1, 4, &s), BR_OK);
        assert_true(br_slice_eq_cstr(s, " "));
        assert_int_equal(br_tokenizer_piece(t, 1, 4, &s), BR_OK);
        assert_int_equal(s.len, 0);
        assert_int_equal(br_tokenizer_piece(t, -1, 3, &s), BR_OK);
        assert_true(br_slice_eq_cstr(s, "a"));
        assert_int_equal(br_tokenizer_piece(t, -1, 11, &s), BR_OK);
        assert_int_equal(s.len, 0);
        assert_int_equal(br_tokenizer_piece(t, -1, 16, &s), BR_ERR_RANGE);
        assert_int_equal(br_tokenizer_piece(t, -1, -3, &s), BR_ERR_RANGE);
    }
    assert_int_equal(br_tokenizer_find(t, BR_SLICE_LIT("<ctl>")), 11);
    assert_int_equal(br_tokenizer_find(t, BR_SLICE_LIT("zz")), -1);
    br_tokenizer_free(t);
}

static void test_vocab_rejects(void **state)
{
    int32_t types[] = {2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1};
    static const struct br_slice bad_utf8[] = {BR_SLICE_LIT("\xff")};
    static const float nan_score[] = {NAN};
    char err[256] = "";
    int rc;
    struct br_tokenizer *t;
    struct br_tok_vocab v = {bad_utf8, NULL, NULL, 1, -1, -1, -1};
    (void)state;
    types[5] = 6; /* "a" typed as a byte token */
    t = tiny(types, err, sizeof(err), &rc);
    assert_int_equal(rc, BR_ERR_PARSE);
    assert_null(t);
    assert_non_null(strstr(err, "token 5"));
    types[5] = 9;
    t = tiny(types, err, sizeof(err), &rc);
    assert_int_equal(rc, BR_ERR_PARSE);
    assert_non_null(strstr(err, "type 9"));
    assert_int_equal(br_tokenizer_from_vocab(&v, &t, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "UTF-8"));
    v.scores = nan_score;
    v.pieces = (const struct br_slice[]){BR_SLICE_LIT("x")};
    assert_int_equal(br_tokenizer_from_vocab(&v, &t, err, sizeof(err)), BR_ERR_PARSE);
    v.scores = NULL;
    v.bos = 1;
    assert_int_equal(br_tokenizer_from_vocab(&v, &t, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "special id"));
    v.bos = -1;
    v.n = 0;
    assert_int_equal(br_tokenizer_from_vocab(&v, &t, NULL, 0), BR_ERR_PARSE);
    /* Duplicates load fine; the later id wins the lookup. */
    v.pieces = (const struct br_slice[]){BR_SLICE_LIT("x"), BR_SLICE_LIT("x")};
    v.n = 2;
    assert_int_equal(br_tokenizer_from_vocab(&v, &t, err, sizeof(err)), BR_OK);
    assert_int_equal(br_tokenizer_find(t, BR_SLICE_LIT("x")), 1);
    assert_int_equal(br_tokenizer_encode(t, "x", 1, true, &(int32_t *){NULL}, &(size_t){0}),
                     BR_ERR_UNSUPPORTED);
    br_tokenizer_free(t);
}

/* ---- malformed tokenizer.bin files ---- */

struct bin {
    unsigned char b[256];
    size_t n;
};

static void put_i32(struct bin *b, int32_t v)
{
    memcpy(b->b + b->n, &v, 4);
    b->n += 4;
}

static void put_tok(struct bin *b, float score, const char *s, int32_t len)
{
    memcpy(b->b + b->n, &score, 4);
    b->n += 4;
    put_i32(b, len);
    memcpy(b->b + b->n, s, strlen(s));
    b->n += strlen(s);
}

static struct bin good_bin(void)
{
    struct bin b = {{0}, 0};
    put_i32(&b, 8);
    put_tok(&b, 0, "<unk>", 5);
    put_tok(&b, 0, "\n<s>\n", 5);
    put_tok(&b, 0, "\n</s>\n", 6);
    put_tok(&b, -1, " a", 2);
    return b;
}

static int load_file_bytes(const char *dir, const char *name, const struct bin *b, char *err,
                           size_t cap)
{
    char path[512];
    FILE *f;
    struct br_tokenizer *t = NULL;
    int rc;
    (void)snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b->b, 1, b->n, f), b->n);
    (void)fclose(f);
    rc = br_tokenizer_load_llama2c(path, 0, &t, err, cap);
    if (rc == BR_OK) {
        assert_non_null(t);
        br_tokenizer_free(t);
    } else {
        assert_null(t);
    }
    unlink(path);
    return rc;
}

static void expect_reject(const char *dir, const char *name, const struct bin *b, const char *msg)
{
    char err[256] = "";
    assert_int_equal(load_file_bytes(dir, name, b, err, sizeof(err)), BR_ERR_PARSE);
    (void)fprintf(stderr, "%s: %s\n", name, err);
    assert_non_null(strstr(err, name));
    assert_non_null(strstr(err, msg));
}

static void test_malformed_files(void **state)
{
    char dir[] = "/tmp/br_tok_XXXXXX";
    char err[256] = "";
    struct bin b = good_bin();
    struct br_tokenizer *t = NULL;
    (void)state;
    assert_non_null(mkdtemp(dir));
    assert_int_equal(load_file_bytes(dir, "good.bin", &b, err, sizeof(err)), BR_OK);
    b.n -= 1;
    expect_reject(dir, "truncated.bin", &b, "truncated piece");
    b.n -= 3;
    expect_reject(dir, "trunc_len.bin", &b, "truncated token length");
    b.n = 2;
    expect_reject(dir, "short.bin", &b, "truncated max_token_length");
    b.n = 0;
    expect_reject(dir, "empty.bin", &b, "truncated");
    b = good_bin();
    memcpy(b.b + 8, &(int32_t){-5}, 4);
    expect_reject(dir, "negative.bin", &b, "length -5");
    memcpy(b.b + 8, &(int32_t){0x7fffffff}, 4);
    expect_reject(dir, "huge.bin", &b, "outside 0..8");
    b = good_bin();
    memcpy(b.b, &(int32_t){-1}, 4);
    expect_reject(dir, "maxlen.bin", &b, "max_token_length -1");
    b = good_bin();
    put_tok(&b, 0, "\xc3(", 2);
    expect_reject(dir, "utf8.bin", &b, "UTF-8");
    b = good_bin();
    memcpy(b.b + b.n - 10, &(float){INFINITY}, 4);
    expect_reject(dir, "inf.bin", &b, "not finite");
    b.n = 0;
    put_i32(&b, 8);
    put_tok(&b, 0, "<unk>", 5);
    expect_reject(dir, "two.bin", &b, "need at least");
    assert_int_equal(br_tokenizer_load_llama2c(TOK512, 511, &t, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "expected 511"));
    assert_int_equal(br_tokenizer_load_llama2c("/nonexistent/tok.bin", 0, &t, err, sizeof(err)),
                     BR_ERR_IO);
    assert_null(t);
    rmdir(dir);
}

/* Every allocation failing once: clean error, no leak (ASan), no crash. */
static void test_alloc_failures(void **state)
{
    size_t len = 0;
    char *data = read_all(TOK512, &len);
    (void)state;
    for (uint64_t k = 1; k < 40; k++) {
        struct br_tokenizer *t = NULL;
        int32_t *ids = NULL;
        size_t n = 0;
        int rc;
        br_alloc_fail_at(k);
        rc = br_tokenizer_load_llama2c_mem(data, len, 512, "tok512", &t, NULL, 0);
        if (rc == BR_OK) {
            rc = br_tokenizer_encode(t, "Once upon", 9, true, &ids, &n);
            assert_true(rc == BR_OK || rc == BR_ERR_NOMEM);
            br_free(ids);
        } else {
            assert_int_equal(rc, BR_ERR_NOMEM);
        }
        br_tokenizer_free(t);
    }
    br_alloc_fail_at(0);
    free(data);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spm_conformance_32k), cmocka_unit_test(test_32k_layout),
        cmocka_unit_test(test_tok512_once_upon),    cmocka_unit_test(test_round_trip_bytes),
        cmocka_unit_test(test_tiny_vocab),          cmocka_unit_test(test_vocab_rejects),
        cmocka_unit_test(test_malformed_files),     cmocka_unit_test(test_alloc_failures),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_tokenizer", tests, NULL, NULL);
}
