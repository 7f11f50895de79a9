/* SPDX-License-Identifier: MIT */
/*
 * LoRA adapters (lora.h, forward.h br_llama_state_set_lora, engine.h gen params): stories260K
 * with lora260K-r4.gguf at scale 1 applied at run time reproduces the merged-weights golden run
 * (models/stories260K/golden/run_greedy_once_upon_lora_r4_merged.*: ids with the near-tie rule,
 * top-2 logits within 1e-3); two adapters at once equal weights merged with both (1e-4);
 * scale 0 gives the base logits bit for bit; malformed adapters (not an adapter, missing alpha,
 * wrong shapes, inconsistent rank, layers the base lacks, half pairs) are refused with
 * messages; the forward pass with adapters allocates nothing.
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
#include "engine/engine_cli.h"
#include "engine/forward.h"
#include "engine/gguf_write.h"
#include "engine/lora.h"
#include "engine/quant.h"

#define DIR      BR_SOURCE_DIR "/models/stories260K/"
#define GGUF     DIR "stories260K-f32.gguf" /* context 128 */
#define BIN      DIR "stories260K.bin"      /* context 512: the golden run has 225 positions */
#define TOK      DIR "tok512.bin"
#define LORA_A   DIR "lora260K-r4.gguf"
#define LORA_B   DIR "lora260K-r4-b.gguf"
#define TOP2     DIR "golden/run_greedy_once_upon_lora_r4_merged.top2.txt"
#define GOLDEN   DIR "golden/run_greedy_once_upon_lora_r4_merged.txt"
#define LLAMACPP DIR "golden/llamacpp_c392e50_lora_r4_runtime_n120.txt"
#define PROMPT   "Once upon a time"
#define MAX_POS  600

struct golden_step {
    int pos;
    int top1;
    int top2;
    double logit1;
    double logit2;
    double gap;
};

static int read_top2(struct golden_step *steps)
{
    FILE *f = fopen(TOP2, "r");
    assert_non_null(f);
    char line[256];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < MAX_POS) {
        struct golden_step s;
        /* NOLINTNEXTLINE(cert-err34-c): a malformed line fails the count check */
        if (sscanf(line, "pos %d top1 %d (%lf) top2 %d (%lf) gap %lf", &s.pos, &s.top1, &s.logit1,
                   &s.top2, &s.logit2, &s.gap) == 6) {
            steps[n++] = s;
        }
    }
    (void)fclose(f);
    return n;
}

static br_engine_model *open_model_tok(const char *path, const char *tok)
{
    br_engine_model *m = NULL;
    char err[BR_ENGINE_ERR_CAP];
    if (br_engine_model_open(path, tok, &m, err, sizeof err) != BR_OK) {
        fail_msg("open %s: %s", path, err);
    }
    return m;
}

static br_engine_model *open_model(const char *path)
{
    return open_model_tok(path, NULL);
}

static br_lora *open_lora(const char *path, const br_engine_model *m)
{
    br_lora *l = NULL;
    char err[BR_LORA_ERR_CAP];
    if (br_lora_open(path, br_engine_model_config(m), &l, err, sizeof err) != BR_OK) {
        fail_msg("open %s: %s", path, err);
    }
    return l;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

static void test_lora_load_shapes(void **state)
{
    (void)state;
    br_engine_model *m = open_model(GGUF);
    br_lora *l = open_lora(LORA_A, m);
    assert_int_equal(br_lora_rank(l), 4);
    assert_true(fabsf(br_lora_alpha(l) - 8.0f) < 1e-6f);
    assert_int_equal(br_lora_n_pairs(l), 10); /* 5 layers x (attn_q, attn_v) */
    const struct br_lora_pair *q = br_lora_pair(l, 0, BR_LORA_WQ);
    assert_non_null(q);
    assert_int_equal(q->a.rows, 4);
    assert_int_equal(q->a.cols, 64);
    assert_int_equal(q->b.rows, 64);
    assert_int_equal(q->b.cols, 4);
    const struct br_lora_pair *v = br_lora_pair(l, 4, BR_LORA_WV);
    assert_non_null(v);
    assert_int_equal(v->b.rows, 32);
    assert_null(br_lora_pair(l, 0, BR_LORA_WK));
    assert_null(br_lora_pair(l, 5, BR_LORA_WQ));
    br_lora_close(l);
    br_engine_model_close(m);
}

/* Feeds the prompt, then the golden top-1 ids; checks every step against the golden file. */
static void run_golden(struct br_llama_state *s, const br_engine_model *m)
{
    static struct golden_step g[MAX_POS];
    int n = read_top2(g);
    assert_true(n > 200);
    int vocab = br_engine_model_config(m)->vocab_size;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(br_tokenizer_encode(br_engine_model_tokenizer(m), PROMPT, strlen(PROMPT), true,
                                         &ids, &n_ids),
                     BR_OK);
    assert_int_equal(n_ids, 5);
    assert_int_equal(g[0].pos, 4);
    float *logits = calloc((size_t)vocab, sizeof(float));
    assert_non_null(logits);
    uint64_t count_before = br_alloc_count();
    for (size_t i = 0; i < n_ids; i++) {
        assert_int_equal(br_llama_forward(s, ids[i], (int)i, logits), BR_OK);
    }
    for (int k = 0; k < n; k++) {
        int got = argmax(logits, vocab);
        if (!(got == g[k].top1 || (g[k].gap < 1e-3 && got == g[k].top2))) {
            fail_msg("pos %d: argmax %d, golden %d (top2 %d gap %f)", g[k].pos, got, g[k].top1,
                     g[k].top2, g[k].gap);
        }
        if (fabs((double)logits[g[k].top1] - g[k].logit1) > 1e-3 ||
            fabs((double)logits[g[k].top2] - g[k].logit2) > 1e-3) {
            fail_msg("pos %d: logits %f %f, golden %f %f", g[k].pos, (double)logits[g[k].top1],
                     (double)logits[g[k].top2], g[k].logit1, g[k].logit2);
        }
        if (k + 1 < n) {
            int frc = br_llama_forward(s, g[k].top1, g[k].pos + 1, logits);
            if (frc != BR_OK) {
                fail_msg("forward at pos %d token %d: %d", g[k].pos + 1, g[k].top1, frc);
            }
        }
    }
    assert_int_equal(br_alloc_count(), count_before); /* forward with LoRA allocates nothing */
    free(logits);
    br_free(ids);
}

static void test_lora_runtime_matches_merged_golden(void **state)
{
    (void)state;
    br_engine_model *m = open_model_tok(BIN, TOK);
    br_lora *l = open_lora(LORA_A, m);
    struct br_llama_state *s = NULL;
    assert_int_equal(
        br_llama_state_create(br_engine_model_config(m), br_engine_model_weights(m), &s), BR_OK);
    struct br_lora_use use = {l, 1.0f};
    assert_int_equal(br_llama_state_set_lora(s, &use, 1), BR_OK);
    run_golden(s, m);
    br_llama_state_destroy(s);
    /* two threads: same golden */
    struct br_llama_run_config run = {.n_threads = 2};
    assert_int_equal(
        br_llama_state_create_ex(br_engine_model_config(m), br_engine_model_weights(m), &run, &s),
        BR_OK);
    assert_int_equal(br_llama_state_set_lora(s, &use, 1), BR_OK);
    run_golden(s, m);
    br_llama_state_destroy(s);
    br_lora_close(l);
    br_engine_model_close(m);
}

struct collect {
    char text[8192];
    size_t len;
};

static int on_token(void *user, const struct br_engine_token *t)
{
    struct collect *c = user;
    if (c->len + t->text.len < sizeof c->text) {
        memcpy(c->text + c->len, t->text.ptr, t->text.len);
        c->len += t->text.len;
    }
    return BR_OK;
}

static void test_lora_generate_text_matches_golden(void **state)
{
    (void)state;
    br_engine_model *m = open_model(GGUF);
    br_lora *l = open_lora(LORA_A, m);
    struct br_lora_use use = {l, 1.0f};
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    p.max_tokens = 100;
    p.lora = &use;
    p.n_lora = 1;
    static struct collect c;
    memset(&c, 0, sizeof c);
    p.on_token = on_token;
    p.user = &c;
    struct br_engine_gen_result r;
    char err[BR_ENGINE_ERR_CAP];
    assert_int_equal(br_engine_generate(m, PROMPT, strlen(PROMPT), &p, &r, err, sizeof err), BR_OK);
    FILE *f = fopen(GOLDEN, "rb");
    assert_non_null(f);
    static char gold[8192];
    size_t gn = fread(gold, 1, sizeof gold - 1, f);
    (void)fclose(f);
    gold[gn] = '\0';
    /* the golden text is prompt + continuation */
    size_t pl = strlen(PROMPT);
    assert_true(c.len > 100);
    assert_true(gn > pl + c.len);
    assert_memory_equal(gold + pl, c.text, c.len);
    br_engine_gen_result_free(&r);
    /* a bad lora list is refused */
    p.n_lora = 9;
    assert_int_not_equal(br_engine_generate(m, PROMPT, strlen(PROMPT), &p, &r, err, sizeof err),
                         BR_OK);
    br_engine_gen_result_free(&r);
    br_lora_close(l);
    br_engine_model_close(m);
}

/* llama.cpp c392e50 applying the same adapter at run time (llama-cli --lora, greedy, -n 120)
 * printed " " + prompt + continuation + newline: the same continuation. */
static void test_lora_generate_matches_llamacpp_runtime(void **state)
{
    (void)state;
    br_engine_model *m = open_model(GGUF);
    br_lora *l = open_lora(LORA_A, m);
    struct br_lora_use use = {l, 1.0f};
    struct br_engine_gen_params p;
    br_engine_gen_params_init(&p);
    p.max_tokens = 120;
    p.lora = &use;
    p.n_lora = 1;
    static struct collect c;
    memset(&c, 0, sizeof c);
    p.on_token = on_token;
    p.user = &c;
    struct br_engine_gen_result r;
    char err[BR_ENGINE_ERR_CAP];
    assert_int_equal(br_engine_generate(m, PROMPT, strlen(PROMPT), &p, &r, err, sizeof err), BR_OK);
    assert_int_equal(r.completion_tokens, 120);
    FILE *f = fopen(LLAMACPP, "rb");
    assert_non_null(f);
    static char ref[8192];
    size_t n = fread(ref, 1, sizeof ref - 1, f);
    (void)fclose(f);
    ref[n] = '\0';
    while (n > 0 && ref[n - 1] == '\n') {
        ref[--n] = '\0';
    }
    size_t skip = strlen(" " PROMPT);
    assert_true(n > skip);
    assert_int_equal(strncmp(ref, " " PROMPT, skip), 0);
    assert_int_equal(c.len, n - skip);
    assert_memory_equal(c.text, ref + skip, c.len);
    br_engine_gen_result_free(&r);
    br_lora_close(l);
    br_engine_model_close(m);
}

/* Logits of `steps` positions (prompt, then greedy) with the given weights and adapters. */
static float *run_steps(const br_engine_model *m, const struct br_llama_weights *w,
                        const struct br_lora_use *uses, int n_uses, int steps)
{
    const struct br_llama_config *cfg = br_engine_model_config(m);
    size_t vocab = (size_t)cfg->vocab_size;
    float *all = calloc(vocab * (size_t)steps, sizeof(float));
    assert_non_null(all);
    struct br_llama_state *s = NULL;
    assert_int_equal(br_llama_state_create(cfg, w, &s), BR_OK);
    assert_int_equal(br_llama_state_set_lora(s, uses, n_uses), BR_OK);
    int tok = 1;
    for (int pos = 0; pos < steps; pos++) {
        float *lg = all + (size_t)pos * vocab;
        assert_int_equal(br_llama_forward(s, tok, pos, lg), BR_OK);
        tok = argmax(lg, (int)vocab);
    }
    br_llama_state_destroy(s);
    return all;
}

static void test_lora_scale_zero_is_base(void **state)
{
    (void)state;
    br_engine_model *m = open_model(GGUF);
    br_lora *l = open_lora(LORA_A, m);
    const struct br_llama_weights *w = br_engine_model_weights(m);
    int steps = 40;
    size_t n = (size_t)br_engine_model_config(m)->vocab_size * (size_t)steps;
    float *base = run_steps(m, w, NULL, 0, steps);
    struct br_lora_use use = {l, 0.0f};
    float *zero = run_steps(m, w, &use, 1, steps);
    assert_memory_equal(base, zero, n * sizeof(float));
    use.scale = 1.0f;
    float *one = run_steps(m, w, &use, 1, steps);
    assert_true(memcmp(base, one, n * sizeof(float)) != 0);
    free(base);
    free(zero);
    free(one);
    br_lora_close(l);
    br_engine_model_close(m);
}

/* Weights with every adapted matrix replaced by an F32 merge of the adapters (test-owned). */
struct merged {
    struct br_llama_weights w;
    struct br_llama_layer *layers;
    float *bufs[64];
    int n_bufs;
};

static void merge_matrix(struct merged *mg, struct br_tensor *t, const struct br_lora_use *uses,
                         int n, int layer, enum br_lora_target target)
{
    float *out = calloc(t->rows * t->cols, sizeof(float));
    float *tmp = calloc(4096 + t->cols, sizeof(float));
    assert_true(out && tmp && mg->n_bufs < 64);
    size_t rb = br_tensor_row_bytes(t->type, t->cols);
    for (size_t r = 0; r < t->rows; r++) {
        assert_int_equal(br_quant_dequantize_row(t->type, (const char *)t->data + r * rb,
                                                 out + r * t->cols, t->cols),
                         BR_OK);
        for (int i = 0; i < n; i++) {
            const struct br_lora_pair *p = br_lora_pair(uses[i].adapter, layer, target);
            if (p) {
                assert_int_equal(
                    br_lora_merge_row(uses[i].adapter, p, uses[i].scale, r, out + r * t->cols, tmp),
                    BR_OK);
            }
        }
    }
    free(tmp);
    mg->bufs[mg->n_bufs++] = out;
    t->type = BR_TENSOR_F32;
    t->data = out;
}

static void merge_weights(struct merged *mg, const struct br_llama_weights *w,
                          const struct br_lora_use *uses, int n)
{
    memset(mg, 0, sizeof *mg);
    mg->w = *w;
    mg->layers = calloc((size_t)w->n_layers, sizeof *mg->layers);
    assert_non_null(mg->layers);
    memcpy(mg->layers, w->layers, (size_t)w->n_layers * sizeof *mg->layers);
    mg->w.layers = mg->layers;
    for (int l = 0; l < w->n_layers; l++) {
        merge_matrix(mg, &mg->layers[l].wq, uses, n, l, BR_LORA_WQ);
        merge_matrix(mg, &mg->layers[l].wv, uses, n, l, BR_LORA_WV);
    }
}

static void merged_free(struct merged *mg)
{
    for (int i = 0; i < mg->n_bufs; i++) {
        free(mg->bufs[i]);
    }
    free(mg->layers);
}

static void assert_close(const float *a, const float *b, size_t n, double tol)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        worst = d > worst ? d : worst;
    }
    if (worst > tol) {
        fail_msg("max |logit difference| %g > %g", worst, tol);
    }
}

static void test_lora_two_adapters_equal_merge(void **state)
{
    (void)state;
    br_engine_model *m = open_model(GGUF);
    br_lora *a = open_lora(LORA_A, m);
    br_lora *b = open_lora(LORA_B, m);
    struct br_lora_use uses[2] = {{a, 1.0f}, {b, 0.5f}};
    int steps = 60;
    size_t n = (size_t)br_engine_model_config(m)->vocab_size * (size_t)steps;
    float *runtime = run_steps(m, br_engine_model_weights(m), uses, 2, steps);
    struct merged mg;
    merge_weights(&mg, br_engine_model_weights(m), uses, 2);
    float *merged = run_steps(m, &mg.w, NULL, 0, steps);
    assert_close(runtime, merged, n, 1e-4);
    /* and differs from one adapter alone */
    float *one = run_steps(m, br_engine_model_weights(m), uses, 1, steps);
    assert_true(memcmp(one, runtime, n * sizeof(float)) != 0);
    free(runtime);
    free(merged);
    free(one);
    merged_free(&mg);
    br_lora_close(a);
    br_lora_close(b);
    br_engine_model_close(m);
}

static void test_lora_merge_cli(void **state)
{
    (void)state;
    char out[512];
    (void)snprintf(out, sizeof out, "%s/lora_merge_%d.gguf", BR_BINARY_DIR, (int)getpid());
    char *argv[] = {"merge", GGUF, LORA_A, LORA_B ":0.5", "-o", out};
    assert_int_equal(br_lora_cli(6, argv), 0);
    br_engine_model *m = open_model(GGUF);
    br_engine_model *mm = open_model(out);
    br_lora *a = open_lora(LORA_A, m);
    br_lora *b = open_lora(LORA_B, m);
    struct br_lora_use uses[2] = {{a, 1.0f}, {b, 0.5f}};
    int steps = 60;
    size_t n = (size_t)br_engine_model_config(m)->vocab_size * (size_t)steps;
    float *runtime = run_steps(m, br_engine_model_weights(m), uses, 2, steps);
    float *merged = run_steps(mm, br_engine_model_weights(mm), NULL, 0, steps);
    assert_close(runtime, merged, n, 1e-4);
    free(runtime);
    free(merged);
    /* the single-adapter merge (of the 512-context .bin) reproduces the golden run */
    char *argv1[] = {"merge", BIN, "--tokenizer", TOK, LORA_A, "-o", out};
    assert_int_equal(br_lora_cli(7, argv1), 0);
    br_engine_model_close(mm);
    mm = open_model(out);
    struct br_llama_state *s = NULL;
    assert_int_equal(
        br_llama_state_create(br_engine_model_config(mm), br_engine_model_weights(mm), &s), BR_OK);
    run_golden(s, mm);
    br_llama_state_destroy(s);
    /* usage errors */
    char *bad1[] = {"merge", GGUF};
    assert_int_equal(br_lora_cli(2, bad1), 2);
    char *bad2[] = {"merge", GGUF, LORA_A ":abc", "-o", out};
    assert_int_equal(br_lora_cli(5, bad2), 1); /* "FILE:abc" is not a file */
    char *bad3[] = {"frobnicate"};
    assert_int_equal(br_lora_cli(1, bad3), 2);
    char *bad4[] = {"merge", GGUF, GGUF, "-o", out};
    assert_int_equal(br_lora_cli(5, bad4), 1); /* a model is not an adapter */
    char *help[] = {"merge", "--help"};
    assert_int_equal(br_lora_cli(2, help), 0);
    (void)unlink(out);
    br_lora_close(a);
    br_lora_close(b);
    br_engine_model_close(m);
    br_engine_model_close(mm);
}

static void test_lora_generate_cli(void **state)
{
    (void)state;
    char *ok[] = {"-m", GGUF,     "-p",   PROMPT,   "-n",         "8", "--temperature",
                  "0",  "--lora", LORA_A, "--lora", LORA_B ":0.5"};
    assert_int_equal(br_generate_cli(12, ok), 0);
    char *bad[] = {"-m", GGUF, "-n", "4", "--lora", GGUF};
    assert_int_equal(br_generate_cli(6, bad), 1); /* a model is not an adapter */
    char *missing[] = {"-m", GGUF, "-n", "4", "--lora", DIR "no-such-adapter.gguf:2"};
    assert_int_equal(br_generate_cli(6, missing), 1);
    char *many[20] = {"-m", GGUF};
    for (int i = 0; i < 9; i++) {
        many[2 + 2 * i] = "--lora";
        many[3 + 2 * i] = LORA_A;
    }
    assert_int_equal(br_generate_cli(20, many), 2);
    char *help[] = {"--help"};
    assert_int_equal(br_generate_cli(1, help), 0);
}

/* ---- malformed adapters ---- */

struct tdef {
    const char *name;
    uint64_t cols; /* GGML dims[0] */
    uint64_t rows; /* dims[1] */
};

static float zeros[64 * 256];

static int write_adapter(const char *path, const char *type, int with_alpha, const struct tdef *t,
                         int n)
{
    br_gguf_writer *w = NULL;
    int rc = br_gguf_writer_create(0, NULL, NULL, &w);
    rc = rc ? rc : br_gguf_writer_kv_str(w, "general.architecture", br_slice_from_cstr("llama"));
    rc = rc ? rc : br_gguf_writer_kv_str(w, "general.type", br_slice_from_cstr(type));
    rc = rc ? rc : br_gguf_writer_kv_str(w, "adapter.type", br_slice_from_cstr("lora"));
    if (with_alpha) {
        rc = rc ? rc : br_gguf_writer_kv_f32(w, "adapter.lora.alpha", 8.0f);
    }
    for (int i = 0; i < n && rc == BR_OK; i++) {
        uint64_t dims[2] = {t[i].cols, t[i].rows};
        rc = br_gguf_writer_tensor(w, t[i].name, BR_TENSOR_F32, 2, dims, zeros);
    }
    rc = rc ? rc : br_gguf_writer_write(w, path, NULL, 0);
    br_gguf_writer_free(w);
    return rc;
}

static void expect_refused(const br_engine_model *m, const char *type, int with_alpha,
                           const struct tdef *t, int n, const char *msg)
{
    char path[512];
    (void)snprintf(path, sizeof path, "%s/lora_bad_%d.gguf", BR_BINARY_DIR, (int)getpid());
    assert_int_equal(write_adapter(path, type, with_alpha, t, n), BR_OK);
    br_lora *l = NULL;
    char err[BR_LORA_ERR_CAP] = "";
    int rc = br_lora_open(path, br_engine_model_config(m), &l, err, sizeof err);
    (void)unlink(path);
    assert_int_not_equal(rc, BR_OK);
    assert_null(l);
    if (!strstr(err, msg) || !strstr(err, "lora_bad_")) {
        fail_msg("message '%s' lacks '%s' or the file name", err, msg);
    }
}

static void test_lora_rejects_malformed(void **state)
{
    (void)state;
    br_engine_model *m = open_model(GGUF);
    const struct tdef good[] = {{"blk.0.attn_q.weight.lora_a", 64, 4},
                                {"blk.0.attn_q.weight.lora_b", 4, 64}};
    char path[512];
    (void)snprintf(path, sizeof path, "%s/lora_good_%d.gguf", BR_BINARY_DIR, (int)getpid());
    assert_int_equal(write_adapter(path, "adapter", 1, good, 2), BR_OK);
    br_lora *l = NULL;
    assert_int_equal(br_lora_open(path, br_engine_model_config(m), &l, NULL, 0), BR_OK);
    br_lora_close(l);
    (void)unlink(path);

    expect_refused(m, "model", 1, good, 2, "not a LoRA adapter");
    expect_refused(m, "adapter", 0, good, 2, "adapter.lora.alpha missing");
    const struct tdef shape[] = {{"blk.0.attn_q.weight.lora_a", 32, 4},
                                 {"blk.0.attn_q.weight.lora_b", 4, 64}};
    expect_refused(m, "adapter", 1, shape, 2, "expected (64, 4)");
    const struct tdef bshape[] = {{"blk.0.attn_v.weight.lora_a", 64, 4},
                                  {"blk.0.attn_v.weight.lora_b", 4, 64}};
    expect_refused(m, "adapter", 1, bshape, 2, "expected (4, 32)");
    const struct tdef rank[] = {{"blk.0.attn_q.weight.lora_a", 64, 4},
                                {"blk.0.attn_q.weight.lora_b", 4, 64},
                                {"blk.1.attn_q.weight.lora_a", 64, 2},
                                {"blk.1.attn_q.weight.lora_b", 2, 64}};
    expect_refused(m, "adapter", 1, rank, 4, "rank 2 differs from the adapter's rank 4");
    const struct tdef inner[] = {{"blk.0.attn_q.weight.lora_a", 64, 4},
                                 {"blk.0.attn_q.weight.lora_b", 8, 64}};
    expect_refused(m, "adapter", 1, inner, 2, "differs from the adapter's rank");
    const struct tdef layer[] = {{"blk.5.attn_q.weight.lora_a", 64, 4},
                                 {"blk.5.attn_q.weight.lora_b", 4, 64}};
    expect_refused(m, "adapter", 1, layer, 2, "has only 5 layers");
    const struct tdef half[] = {{"blk.0.attn_q.weight.lora_a", 64, 4}};
    expect_refused(m, "adapter", 1, half, 1, "lora_a without lora_b");
    const struct tdef odd[] = {{"blk.0.attn_x.weight.lora_a", 64, 4}};
    expect_refused(m, "adapter", 1, odd, 1, "unexpected tensor");
    expect_refused(m, "adapter", 1, NULL, 0, "no lora_a/lora_b tensors");
    /* an adapter of another model shape is refused by the forward state */
    br_lora *a = open_lora(LORA_A, m);
    struct br_llama_config other = *br_engine_model_config(m);
    other.dim = 128;
    other.n_heads = 8;
    other.n_kv_heads = 4;
    assert_int_equal(br_lora_fits(a, &other), 0);
    br_lora_close(a);
    br_engine_model_close(m);
}

/* Every allocation of adapter open + a generation with it failed once: NOMEM or success,
 * never a leak. */
static void test_lora_alloc_failures(void **state)
{
    (void)state;
    br_engine_model *m = open_model(GGUF);
    size_t live = br_alloc_live_bytes();
    for (uint64_t k = 1;; k++) {
        uint64_t before = br_alloc_count();
        br_alloc_fail_at(k);
        br_lora *l = NULL;
        int rc = br_lora_open(LORA_A, br_engine_model_config(m), &l, NULL, 0);
        if (rc == BR_OK) {
            struct br_lora_use use = {l, 1.0f};
            struct br_engine_gen_params p;
            br_engine_gen_params_init(&p);
            p.max_tokens = 3;
            p.lora = &use;
            p.n_lora = 1;
            struct br_engine_gen_result r;
            rc = br_engine_generate(m, PROMPT, strlen(PROMPT), &p, &r, NULL, 0);
            br_engine_gen_result_free(&r);
            br_lora_close(l);
        }
        br_alloc_fail_at(0);
        assert_true(rc == BR_OK || rc == BR_ERR_NOMEM);
        assert_int_equal(br_alloc_live_bytes(), live);
        if (rc == BR_OK && br_alloc_count() - before < k) {
            assert_true(k > 5);
            break;
        }
    }
    br_engine_model_close(m);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_load_shapes),
        cmocka_unit_test(test_lora_runtime_matches_merged_golden),
        cmocka_unit_test(test_lora_generate_text_matches_golden),
        cmocka_unit_test(test_lora_generate_matches_llamacpp_runtime),
        cmocka_unit_test(test_lora_scale_zero_is_base),
        cmocka_unit_test(test_lora_two_adapters_equal_merge),
        cmocka_unit_test(test_lora_merge_cli),
        cmocka_unit_test(test_lora_generate_cli),
        cmocka_unit_test(test_lora_rejects_malformed),
        cmocka_unit_test(test_lora_alloc_failures),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("lora", tests, NULL, NULL);
}
