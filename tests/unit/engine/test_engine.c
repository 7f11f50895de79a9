/* SPDX-License-Identifier: MIT */
/*
 * engine.h: greedy generation on stories260K (.bin + tok512.bin, and the f32 GGUF with its own
 * vocabulary) against llama2.c's golden run (models/stories260K/golden/run_greedy_once_upon.*:
 * the text, and per position the top-2 token ids with their logit gap), stop strings (also
 * across token boundaries), streaming callback, seed reproducibility, context and usage
 * accounting, malformed inputs (also GGUF copies of stories260K with a broken vocabulary, written
 * with gguf_write.h), allocation failures, whole UTF-8 characters per streamed piece.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/err.h"
#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/gguf_write.h"

#define DIR     BR_SOURCE_DIR "/models/stories260K/"
#define BIN     DIR "stories260K.bin"
#define TOK     DIR "tok512.bin"
#define GGUF    DIR "stories260K-f32.gguf"
#define GOLDEN  DIR "golden/run_greedy_once_upon.txt"
#define TOP2    DIR "golden/run_greedy_once_upon.top2.txt"
#define PROMPT  "Once upon a time"
#define MAX_POS 600

struct golden_step {
    int top1;
    int top2;
    double gap;
};

/* Lines "pos P top1 A (x) top2 B (y) gap G": the token chosen after position P. */
static int read_top2(struct golden_step *steps, int *first_pos)
{
    FILE *f = fopen(TOP2, "r");
    assert_non_null(f);
    char line[256];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < MAX_POS) {
        int pos = 0;
        double l1 = 0;
        double l2 = 0;
        struct golden_step s;
        /* NOLINTNEXTLINE(cert-err34-c): a malformed line fails the count check below */
        if (sscanf(line, "pos %d top1 %d (%lf) top2 %d (%lf) gap %lf", &pos, &s.top1, &l1, &s.top2,
                   &l2, &s.gap) != 6) {
            continue;
        }
        if (n == 0) {
            *first_pos = pos;
        }
        steps[n++] = s;
    }
    (void)fclose(f);
    return n;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    (void)fclose(f);
    buf[n] = '\0';
    return buf;
}

struct collect {
    int ids[MAX_POS];
    int n;
    int flushes;
    size_t text_bytes;
};

static int on_token(void *user, const struct br_engine_token *t)
{
    struct collect *c = user;
    if (t->token < 0) {
        c->flushes++;
    } else if (c->n < MAX_POS) {
        c->ids[c->n++] = t->token;
    }
    c->text_bytes += t->text.len;
    assert_true(t->logprob <= 0.0f);
    return BR_OK;
}

static void check_golden_ids(const struct collect *c, int limit)
{
    static struct golden_step g[MAX_POS];
    int first = 0;
    int n = read_top2(g, &first);
    assert_true(n > 100);
    assert_int_equal(first, 4); /* BOS + 4 prompt tokens */
    int upto = limit < n ? limit : n;
    assert_true(c->n >= upto);
    for (int i = 0; i < upto; i++) {
        int ok = c->ids[i] == g[i].top1 || (g[i].gap < 1e-3 && c->ids[i] == g[i].top2);
        if (!ok) {
            fail_msg("generated token %d: got %d, golden %d (top2 %d, gap %f)", i, c->ids[i],
                     g[i].top1, g[i].top2, g[i].gap);
        }
    }
}

static br_engine_model *open_model(const char *path, const char *tok)
{
    br_engine_model *m = NULL;
    char err[BR_ENGINE_ERR_CAP];
    int rc = br_engine_model_open(path, tok, &m, err, sizeof err);
    if (rc != BR_OK) {
        fail_msg("open %s: %s", path, err);
    }
    return m;
}

static void test_engine_greedy_bin_matches_golden(void **state)
{
    (void)state;
    br_engine_model *m = open_model(BIN, TOK);
    assert_int_equal(br_engine_model_format(m), BR_ENGINE_FORMAT_LLAMA2C);
    static struct collect c;
    memset(&c, 0, sizeof c);
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    p.max_tokens = 252; /* llama2.c ran 256 steps: 5 prompt positions, 252 sampled tokens */
    p.on_token = on_token;
    p.user = &c;
    p.top_logprobs = 2;
    struct br_engine_gen_result r;
    char err[BR_ENGINE_ERR_CAP];
    assert_int_equal(br_engine_generate(m, PROMPT, strlen(PROMPT), &p, &r, err, sizeof err), BR_OK);
    assert_int_equal(r.prompt_tokens, 5);
    assert_int_equal(r.completion_tokens, 252);
    assert_int_equal(r.finish, BR_ENGINE_FINISH_LENGTH);
    assert_int_equal(c.n, 252);
    assert_int_equal(c.text_bytes, r.text.len);
    check_golden_ids(&c, 252);
    /* The golden text is the prompt, the continuation and llama2.c's final newline. */
    const char *golden = read_text(GOLDEN);
    size_t plen = strlen(PROMPT);
    assert_memory_equal(golden, PROMPT, plen);
    size_t glen = strlen(golden) - plen - 1;
    assert_int_equal(r.text.len, glen);
    assert_memory_equal(r.text.ptr, golden + plen, glen);
    br_engine_gen_result_free(&r);
    br_engine_model_close(m);
}

static void test_engine_greedy_gguf_same_tokens(void **state)
{
    (void)state;
    br_engine_model *m = open_model(GGUF, NULL);
    assert_int_equal(br_engine_model_format(m), BR_ENGINE_FORMAT_GGUF);
    assert_true(br_engine_model_add_bos(m));
    assert_int_equal(br_engine_model_config(m)->seq_len, 128);
    static struct collect c;
    memset(&c, 0, sizeof c);
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    p.on_token = on_token;
    p.user = &c;
    p.n_threads = 2; /* the threaded forward pass gives the same logits */
    struct br_engine_gen_result r;
    char err[BR_ENGINE_ERR_CAP];
    assert_int_equal(br_engine_generate(m, PROMPT, strlen(PROMPT), &p, &r, err, sizeof err), BR_OK);
    /* The context (128) ends generation: 5 prompt tokens + 123 sampled. */
    assert_int_equal(r.prompt_tokens, 5);
    assert_int_equal(r.completion_tokens, 123);
    assert_int_equal(r.finish, BR_ENGINE_FINISH_LENGTH);
    check_golden_ids(&c, 123);
    const char *golden = read_text(GOLDEN);
    assert_memory_equal(r.text.ptr, golden + strlen(PROMPT), r.text.len);
    br_engine_gen_result_free(&r);
    br_engine_model_close(m);
}

static void generate_text(br_engine_model *m, const struct br_engine_gen_params *p,
                          struct br_engine_gen_result *r)
{
    char err[BR_ENGINE_ERR_CAP];
    int rc = br_engine_generate(m, PROMPT, strlen(PROMPT), p, r, err, sizeof err);
    if (rc != BR_OK) {
        fail_msg("generate: %s", err);
    }
}

static void test_engine_stop_strings(void **state)
{
    (void)state;
    br_engine_model *m = open_model(BIN, TOK);
    const char *golden = read_text(GOLDEN) + strlen(PROMPT);
    static const char *const stops[] = {
        "Lily",     /* inside one token or a few */
        "park.",    /* spans tokens */
        "red ball", /* spans a space */
        "play with",
    };
    for (size_t i = 0; i < sizeof stops / sizeof stops[0]; i++) {
        struct br_engine_gen_params p;
        br_engine_gen_params_init(&p);
        p.max_tokens = 200;
        p.stop[1] = "zzzz-never";
        p.stop[2] = stops[i];
        static struct collect c;
        memset(&c, 0, sizeof c);
        p.on_token = on_token;
        p.user = &c;
        struct br_engine_gen_result r;
        generate_text(m, &p, &r);
        const char *at = strstr(golden, stops[i]);
        assert_non_null(at);
        size_t want = (size_t)(at - golden);
        assert_int_equal(r.finish, BR_ENGINE_FINISH_STOP);
        assert_int_equal(r.text.len, want);
        assert_memory_equal(r.text.ptr, golden, want);
        assert_int_equal(c.text_bytes, want);
        assert_int_equal(c.flushes, 0);
        assert_true(r.completion_tokens < 200);
        br_engine_gen_result_free(&r);
    }
    /* A held-back prefix that never completes is released at the end. */
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    p.max_tokens = 30;
    p.stop[0] = "Lily!?"; /* "Lily" appears, "Lily!?" does not */
    static struct collect c;
    memset(&c, 0, sizeof c);
    p.on_token = on_token;
    p.user = &c;
    struct br_engine_gen_result r;
    generate_text(m, &p, &r);
    assert_int_equal(r.finish, BR_ENGINE_FINISH_LENGTH);
    assert_int_equal(r.completion_tokens, 30);
    assert_int_equal(c.text_bytes, r.text.len);
    assert_memory_equal(r.text.ptr, golden, r.text.len);
    br_engine_gen_result_free(&r);
    br_engine_model_close(m);
}

static void test_engine_seed_reproducible(void **state)
{
    (void)state;
    br_engine_model *m = open_model(BIN, TOK);
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    p.max_tokens = 60;
    p.sampler.temperature = 1.0f;
    p.sampler.top_p = 0.9f;
    p.sampler.seed = 42;
    struct br_engine_gen_result a;
    struct br_engine_gen_result b;
    struct br_engine_gen_result c;
    generate_text(m, &p, &a);
    generate_text(m, &p, &b);
    p.sampler.seed = 43;
    generate_text(m, &p, &c);
    assert_int_equal(a.text.len, b.text.len);
    assert_memory_equal(a.text.ptr, b.text.ptr, a.text.len);
    assert_true(a.text.len != c.text.len || memcmp(a.text.ptr, c.text.ptr, a.text.len) != 0);
    br_engine_gen_result_free(&a);
    br_engine_gen_result_free(&b);
    br_engine_gen_result_free(&c);
    br_engine_model_close(m);
}

static int cancel_after_3(void *user, const struct br_engine_token *t)
{
    (void)t;
    int *n = user;
    return ++*n >= 3 ? BR_ERR_CANCELED : BR_OK;
}

static void test_engine_errors(void **state)
{
    (void)state;
    br_engine_model *m = NULL;
    char err[BR_ENGINE_ERR_CAP];
    assert_int_equal(br_engine_model_open(BIN, NULL, &m, err, sizeof err), BR_ERR_INVAL);
    assert_non_null(strstr(err, "tokenizer"));
    assert_null(m);
    assert_int_equal(br_engine_model_open(DIR "nope.gguf", NULL, &m, err, sizeof err),
                     BR_ERR_NOTFOUND);
    assert_int_not_equal(br_engine_model_open(TOK, TOK, &m, err, sizeof err), BR_OK);
    assert_null(m);
    /* A truncated GGUF. */
    char path[] = "/tmp/br_engine_trunc_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "GGUF\x03\0\0\0", 8), 8);
    close(fd);
    assert_int_equal(br_engine_model_open(path, NULL, &m, err, sizeof err), BR_ERR_PARSE);
    assert_non_null(strstr(err, path));
    unlink(path);

    m = open_model(BIN, TOK);
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    struct br_engine_gen_result r;
    p.stop[0] = "";
    assert_int_equal(br_engine_generate(m, "x", 1, &p, &r, err, sizeof err), BR_ERR_INVAL);
    br_engine_gen_result_free(&r);
    p.stop[0] = NULL;
    p.top_logprobs = BR_ENGINE_MAX_TOP_LOGPROBS + 1;
    assert_int_equal(br_engine_generate(m, "x", 1, &p, &r, err, sizeof err), BR_ERR_INVAL);
    br_engine_gen_result_free(&r);
    p.top_logprobs = 0;
    p.n_threads = 257;
    assert_int_equal(br_engine_generate(m, "x", 1, &p, &r, err, sizeof err), BR_ERR_INVAL);
    br_engine_gen_result_free(&r);
    p.n_threads = 0;
    /* A prompt that fills the context. */
    size_t big = 3000;
    char *text = malloc(big + 1);
    for (size_t i = 0; i < big; i++) {
        text[i] = (char)('a' + (i % 26));
    }
    assert_int_equal(br_engine_generate(m, text, big, &p, &r, err, sizeof err), BR_ERR_LIMIT);
    br_engine_gen_result_free(&r);
    free(text);
    /* The callback cancels. */
    int calls = 0;
    p.on_token = cancel_after_3;
    p.user = &calls;
    assert_int_equal(br_engine_generate(m, "x", 1, &p, &r, err, sizeof err), BR_ERR_CANCELED);
    assert_int_equal(calls, 3);
    br_engine_gen_result_free(&r);
    br_engine_model_close(m);
}

/* Every allocation of open + generate failed once: NOMEM (or success), never a leak. */
static void test_engine_alloc_failures(void **state)
{
    (void)state;
    static const char *const paths[2][2] = {{BIN, TOK}, {GGUF, NULL}};
    for (int f = 0; f < 2; f++) {
        size_t live = br_alloc_live_bytes();
        for (uint64_t k = 1;; k++) {
            uint64_t before = br_alloc_count();
            br_alloc_fail_at(k);
            br_engine_model *m = NULL;
            int rc = br_engine_model_open(paths[f][0], paths[f][1], &m, NULL, 0);
            if (rc == BR_OK) {
                struct br_engine_gen_params p;
                br_engine_gen_params_init(&p);
                p.max_tokens = 3;
                p.stop[0] = "xyz";
                p.n_threads = 2;
                struct br_engine_gen_result r;
                rc = br_engine_generate(m, PROMPT, strlen(PROMPT), &p, &r, NULL, 0);
                br_engine_gen_result_free(&r);
                br_engine_model_close(m);
            }
            br_alloc_fail_at(0);
            assert_true(rc == BR_OK || rc == BR_ERR_NOMEM);
            assert_int_equal(br_alloc_live_bytes(), live);
            if (rc == BR_OK && br_alloc_count() - before < k) {
                assert_true(k > 20); /* the loop really went through open and generate */
                break; /* the k-th allocation never came: every one has been failed once */
            }
        }
    }
}

static int check_utf8_piece(void *user, const struct br_engine_token *t)
{
    (void)user;
    /* Every piece ends on a character boundary: no lead byte without its continuation. */
    const unsigned char *s = (const unsigned char *)t->text.ptr;
    size_t n = t->text.len;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = s[n - back];
        if ((c & 0xC0) == 0x80) {
            continue;
        }
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        assert_true(need <= back || t->token < 0);
        break;
    }
    return BR_OK;
}

static void test_engine_streamed_pieces_whole_utf8(void **state)
{
    (void)state;
    br_engine_model *m = open_model(BIN, TOK);
    for (uint64_t seed = 1; seed <= 4; seed++) {
        struct br_engine_gen_params p;
        br_engine_gen_params_init(&p);
        p.max_tokens = 300;
        p.sampler.temperature = 2.0f;
        p.sampler.seed = seed;
        p.on_token = check_utf8_piece;
        struct br_engine_gen_result r;
        char err[BR_ENGINE_ERR_CAP];
        assert_int_equal(br_engine_generate(m, "\xc3\xa9t\xc3\xa9", 5, &p, &r, err, sizeof err),
                         BR_OK);
        br_engine_gen_result_free(&r);
    }
    br_engine_model_close(m);
}

/* How copy_gguf changes the vocabulary of stories260K-f32.gguf. */
enum vocab_edit {
    EDIT_MODEL_GPT2,
    EDIT_SCORES_SHORT,
    EDIT_TYPE_BAD,
    EDIT_NO_TOKENS,
    EDIT_NO_BOS_FLAG,
    EDIT_BOS_STRING,
    EDIT_NONE
};

static int copy_array(br_gguf_writer *w, const char *key, const struct br_gguf_array *a,
                      enum vocab_edit e)
{
    size_t n = (size_t)a->len;
    int rc = BR_OK;
    if (a->type == BR_GGUF_TYPE_STRING) {
        struct br_slice *v = calloc(n, sizeof *v);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(br_gguf_array_str(a, i, &v[i]), BR_OK);
        }
        rc = br_gguf_writer_kv_arr_str(w, key, v, n);
        free(v);
    } else if (a->type == BR_GGUF_TYPE_FLOAT32) {
        float *v = calloc(n, sizeof *v);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(br_gguf_array_f32(a, i, &v[i]), BR_OK);
        }
        rc = br_gguf_writer_kv_arr_f32(w, key, v, e == EDIT_SCORES_SHORT ? n - 1 : n);
        free(v);
    } else {
        int32_t *v = calloc(n, sizeof *v);
        for (size_t i = 0; i < n; i++) {
            int64_t x = 0;
            assert_int_equal(br_gguf_array_i64(a, i, &x), BR_OK);
            v[i] = (int32_t)x;
        }
        if (e == EDIT_TYPE_BAD) {
            v[100] = 9;
        }
        rc = br_gguf_writer_kv_arr_i32(w, key, v, n);
        free(v);
    }
    return rc;
}

static void copy_kv(br_gguf_writer *w, const br_gguf *g, const struct br_gguf_kv *kv,
                    enum vocab_edit e)
{
    char key[128];
    (void)snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.ptr);
    uint32_t u = 0;
    float f = 0;
    if (e == EDIT_NO_TOKENS && strcmp(key, "tokenizer.ggml.tokens") == 0) {
        return;
    }
    if (strcmp(key, "tokenizer.ggml.bos_token_id") == 0 && e == EDIT_BOS_STRING) {
        assert_int_equal(br_gguf_writer_kv_str(w, key, br_slice_from_cstr("1")), BR_OK);
        return;
    }
    if (strcmp(key, "tokenizer.ggml.model") == 0 && e == EDIT_MODEL_GPT2) {
        assert_int_equal(br_gguf_writer_kv_str(w, key, br_slice_from_cstr("gpt2")), BR_OK);
        return;
    }
    switch (kv->type) {
    case BR_GGUF_TYPE_STRING: {
        struct br_slice sv;
        assert_int_equal(br_gguf_get_str(g, key, &sv), BR_OK);
        assert_int_equal(br_gguf_writer_kv_str(w, key, sv), BR_OK);
        break;
    }
    case BR_GGUF_TYPE_ARRAY:
        assert_int_equal(copy_array(w, key, &kv->array, e), BR_OK);
        break;
    case BR_GGUF_TYPE_UINT32:
        memcpy(&u, kv->value, 4);
        assert_int_equal(br_gguf_writer_kv_u32(w, key, u), BR_OK);
        break;
    case BR_GGUF_TYPE_FLOAT32:
        memcpy(&f, kv->value, 4);
        assert_int_equal(br_gguf_writer_kv_f32(w, key, f), BR_OK);
        break;
    default:
        fail_msg("unexpected KV type %d for %s", kv->type, key);
    }
}

static void copy_gguf(const char *out, enum vocab_edit e)
{
    br_gguf *g = NULL;
    assert_int_equal(br_gguf_open(GGUF, &g, NULL, 0), BR_OK);
    br_gguf_writer *w = NULL;
    assert_int_equal(br_gguf_writer_create(0, NULL, NULL, &w), BR_OK);
    for (size_t i = 0; i < br_gguf_kv_count(g); i++) {
        copy_kv(w, g, br_gguf_kv_at(g, i), e);
    }
    if (e == EDIT_NO_BOS_FLAG) {
        assert_int_equal(br_gguf_writer_kv_bool(w, "tokenizer.ggml.add_bos_token", false), BR_OK);
    }
    for (size_t i = 0; i < br_gguf_tensor_count(g); i++) {
        const struct br_gguf_tensor *t = br_gguf_tensor_at(g, i);
        char name[128];
        (void)snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        struct br_tensor v;
        assert_int_equal(br_gguf_tensor_view(t, &v), BR_OK);
        assert_int_equal(br_gguf_writer_tensor(w, name, v.type, t->n_dims, t->dims, t->data),
                         BR_OK);
    }
    char err[256];
    assert_int_equal(br_gguf_writer_write(w, out, err, sizeof err), BR_OK);
    br_gguf_writer_free(w);
    br_gguf_close(g);
}

static void test_engine_gguf_vocab_checked(void **state)
{
    (void)state;
    char path[256];
    (void)snprintf(path, sizeof path, "%s/engine_vocab_%d.gguf", BR_BINARY_DIR, (int)getpid());
    static const struct {
        enum vocab_edit e;
        int rc;
        const char *msg;
    } cases[] = {
        {EDIT_MODEL_GPT2, BR_ERR_UNSUPPORTED, "gpt2"},
        {EDIT_SCORES_SHORT, BR_ERR_PARSE, "tokenizer.ggml.scores"},
        {EDIT_TYPE_BAD, BR_ERR_PARSE, "vocabulary"},
        {EDIT_NO_TOKENS, BR_ERR_PARSE, "tokenizer.ggml.tokens"},
        {EDIT_BOS_STRING, BR_ERR_PARSE, "bos_token_id"},
    };
    char err[BR_ENGINE_ERR_CAP];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        copy_gguf(path, cases[i].e);
        br_engine_model *m = NULL;
        assert_int_equal(br_engine_model_open(path, NULL, &m, err, sizeof err), cases[i].rc);
        assert_null(m);
        if (!strstr(err, cases[i].msg) || !strstr(err, path)) {
            fail_msg("case %zu: message '%s'", i, err);
        }
    }
    /* The unchanged copy generates like the original; add_bos_token=false drops the BOS. */
    copy_gguf(path, EDIT_NONE);
    br_engine_model *m = open_model(path, NULL);
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    p.max_tokens = 20;
    struct br_engine_gen_result r;
    generate_text(m, &p, &r);
    const char *golden = read_text(GOLDEN) + strlen(PROMPT);
    assert_memory_equal(r.text.ptr, golden, r.text.len);
    br_engine_gen_result_free(&r);
    br_engine_model_close(m);
    copy_gguf(path, EDIT_NO_BOS_FLAG);
    m = open_model(path, NULL);
    assert_false(br_engine_model_add_bos(m));
    generate_text(m, &p, &r);
    assert_int_equal(r.prompt_tokens, 4);
    br_engine_gen_result_free(&r);
    br_engine_model_close(m);
    unlink(path);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_greedy_bin_matches_golden),
        cmocka_unit_test(test_engine_greedy_gguf_same_tokens),
        cmocka_unit_test(test_engine_stop_strings),
        cmocka_unit_test(test_engine_seed_reproducible),
        cmocka_unit_test(test_engine_errors),
        cmocka_unit_test(test_engine_alloc_failures),
        cmocka_unit_test(test_engine_gguf_vocab_checked),
        cmocka_unit_test(test_engine_streamed_pieces_whole_utf8),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
