/* SPDX-License-Identifier: MIT */
/*
 * llama-from-GGUF tests: the configurations and tensor views of stories260K (f32 and Q4_K_M)
 * and llama-2-tiny-random, the weights of the f32 GGUF equal to the llama2.c checkpoint (no
 * RoPE permutation), the vocab-only file refused for lack of tensors, and hand-made models with
 * a wrong shape, a missing tensor, another architecture or an F16 norm refused with a message.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "br_test_cli.h"
#include "core/err.h"
#include "engine/engine_cli.h"
#include "engine/forward.h"
#include "engine/kernels.h"
#include "engine/llama2c.h"
#include "engine/model.h"
#include "engine/quant.h"
#include "unit/engine/gguf_test_writer.h"

#define MODELS BR_SOURCE_DIR "/models/"

static struct br_llama_model *open_ok(const char *path)
{
    struct br_llama_model *m = NULL;
    char err[BR_GGUF_ERR_CAP];
    int rc = br_llama_model_open(path, &m, err, sizeof(err));
    if (rc != BR_OK) {
        fail_msg("%s", err);
    }
    return m;
}

static void check_stories_config(const struct br_llama_config *c)
{
    assert_int_equal(c->dim, 64);
    assert_int_equal(c->hidden_dim, 172);
    assert_int_equal(c->n_layers, 5);
    assert_int_equal(c->n_heads, 8);
    assert_int_equal(c->n_kv_heads, 4);
    assert_int_equal(c->vocab_size, 512);
    assert_int_equal(c->seq_len, 128);
    assert_float_equal(c->rms_eps, 1e-5f, 1e-9f);
    assert_float_equal(c->rope_theta, 10000.0f, 0);
    assert_int_equal(c->rope_style, BR_ROPE_ADJACENT);
}

static void check_shape(const struct br_tensor *t, size_t rows, size_t cols)
{
    assert_non_null(t->data);
    assert_int_equal(t->rows, rows);
    assert_int_equal(t->cols, cols);
}

static void check_stories_shapes(const struct br_llama_weights *w)
{
    assert_int_equal(w->n_layers, 5);
    check_shape(&w->token_embedding, 512, 64);
    check_shape(&w->final_norm, 1, 64);
    check_shape(&w->output, 512, 64);
    for (int i = 0; i < 5; i++) {
        const struct br_llama_layer *y = &w->layers[i];
        check_shape(&y->attn_norm, 1, 64);
        check_shape(&y->wq, 64, 64);
        check_shape(&y->wk, 32, 64);
        check_shape(&y->wv, 32, 64);
        check_shape(&y->wo, 64, 64);
        check_shape(&y->ffn_norm, 1, 64);
        check_shape(&y->w1, 172, 64);
        check_shape(&y->w2, 64, 172);
        check_shape(&y->w3, 172, 64);
        assert_int_equal(y->attn_norm.type, BR_TENSOR_F32);
    }
}

/* The llama2.c checkpoint's arrays, in file order after the 7-int header. */
static const float *bin_array(const uint8_t *bin, int which)
{
    const size_t d = 64;
    const size_t h = 172;
    const size_t kv = 32;
    const size_t sizes[] = {512 * d, 5 * d,     5 * d * d, 5 * kv * d, 5 * kv * d, 5 * d * d,
                            5 * d,   5 * h * d, 5 * d * h, 5 * h * d,  d};
    size_t off = 28;
    for (int i = 0; i < which; i++) {
        off += 4 * sizes[i];
    }
    return (const float *)(const void *)(bin + off);
}

static void test_stories_f32_equals_llama2c(void **state)
{
    (void)state;
    struct br_llama_model *m = open_ok(MODELS "stories260K/stories260K-f32.gguf");
    check_stories_config(&m->config);
    check_stories_shapes(&m->weights);
    size_t n = 0;
    uint8_t *bin = gw_read_file(MODELS "stories260K/stories260K.bin", &n);
    assert_non_null(bin);
    const struct br_llama_weights *w = &m->weights;
    assert_memory_equal(w->token_embedding.data, bin_array(bin, 0), 512 * 64 * 4);
    assert_memory_equal(w->output.data, bin_array(bin, 0), 512 * 64 * 4);
    assert_memory_equal(w->final_norm.data, bin_array(bin, 10), 64 * 4);
    for (int i = 0; i < 5; i++) {
        const struct br_llama_layer *y = &w->layers[i];
        /* wq and wk are stored unpermuted: identical rows, identical order */
        assert_memory_equal(y->wq.data, bin_array(bin, 2) + (size_t)i * 64 * 64, 64 * 64 * 4);
        assert_memory_equal(y->wk.data, bin_array(bin, 3) + (size_t)i * 32 * 64, 32 * 64 * 4);
        assert_memory_equal(y->wv.data, bin_array(bin, 4) + (size_t)i * 32 * 64, 32 * 64 * 4);
        assert_memory_equal(y->wo.data, bin_array(bin, 5) + (size_t)i * 64 * 64, 64 * 64 * 4);
        assert_memory_equal(y->attn_norm.data, bin_array(bin, 1) + (size_t)i * 64, 64 * 4);
        assert_memory_equal(y->ffn_norm.data, bin_array(bin, 6) + (size_t)i * 64, 64 * 4);
        assert_memory_equal(y->w1.data, bin_array(bin, 7) + (size_t)i * 172 * 64, 172 * 64 * 4);
        assert_memory_equal(y->w2.data, bin_array(bin, 8) + (size_t)i * 64 * 172, 64 * 172 * 4);
        assert_memory_equal(y->w3.data, bin_array(bin, 9) + (size_t)i * 172 * 64, 172 * 64 * 4);
    }
    free(bin);
    br_llama_model_close(m);
}

static void test_stories_q4km(void **state)
{
    (void)state;
    struct br_llama_model *m = open_ok(MODELS "stories260K/stories260K-Q4_K_M.gguf");
    check_stories_config(&m->config);
    check_stories_shapes(&m->weights);
    const struct br_llama_weights *w = &m->weights;
    assert_int_equal(w->layers[0].w2.type, BR_TENSOR_F16);
    assert_int_equal(w->layers[0].wq.type, BR_TENSOR_Q5_0);
    assert_int_equal(w->output.type, BR_TENSOR_Q8_0);
    /* token 7's embedding row is close to the f32 one */
    struct br_llama_model *f = open_ok(MODELS "stories260K/stories260K-f32.gguf");
    float row[64];
    size_t rb = br_tensor_row_bytes(w->token_embedding.type, 64);
    assert_int_equal(br_quant_dequantize_row(w->token_embedding.type,
                                             (const uint8_t *)w->token_embedding.data + 7 * rb, row,
                                             64),
                     BR_OK);
    const float *ref = (const float *)f->weights.token_embedding.data + 7 * 64;
    for (int j = 0; j < 64; j++) {
        assert_float_equal(row[j], ref[j], 0.05);
    }
    br_llama_model_close(f);
    br_llama_model_close(m);
}

static void test_tiny_random(void **state)
{
    (void)state;
    struct br_llama_model *m = open_ok(MODELS "llama-2-tiny-random/llama-2-tiny-random.gguf");
    const struct br_llama_config *c = &m->config;
    assert_int_equal(c->dim, 8);
    assert_int_equal(c->hidden_dim, 32);
    assert_int_equal(c->n_layers, 1);
    assert_int_equal(c->n_heads, 2);
    assert_int_equal(c->n_kv_heads, 2);
    assert_int_equal(c->vocab_size, 32000);
    assert_int_equal(c->seq_len, 4096);
    const struct br_llama_weights *w = &m->weights;
    check_shape(&w->token_embedding, 32000, 8);
    check_shape(&w->output, 32000, 8);
    assert_ptr_not_equal(w->output.data, w->token_embedding.data);
    assert_int_equal(w->token_embedding.type, BR_TENSOR_F16);
    check_shape(&w->layers[0].wk, 8, 8);
    check_shape(&w->layers[0].w2, 8, 32);
    br_llama_model_close(m);
}

static void test_vocab_only_refused(void **state)
{
    (void)state;
    struct br_llama_model *m = NULL;
    char err[BR_GGUF_ERR_CAP];
    int rc = br_llama_model_open(MODELS "llama-spm-vocab/ggml-vocab-llama-spm.gguf", &m, err,
                                 sizeof(err));
    assert_int_equal(rc, BR_ERR_PARSE);
    assert_null(m);
    assert_non_null(strstr(err, "missing tensor token_embd.weight"));
}

/* Mutations of a tiny valid llama model (d 4, h 8, 1 layer, 2 heads, 1 kv head, vocab 3). */
enum mutation {
    MUT_NONE,
    MUT_ARCH,
    MUT_K_SHAPE,
    MUT_NO_UP,
    MUT_F16_NORM,
    MUT_HEADS,
    MUT_NO_OUTPUT,
};

struct tdef {
    const char *name;
    uint64_t cols;
    uint64_t rows; /* 0: vector */
};

static void build_model(struct gw *w, enum mutation mut)
{
    const struct tdef defs[] = {
        {"token_embd.weight", 4, 3},     {"output_norm.weight", 4, 0},
        {"output.weight", 4, 3},         {"blk.0.attn_norm.weight", 4, 0},
        {"blk.0.attn_q.weight", 4, 4},   {"blk.0.attn_k.weight", 4, mut == MUT_K_SHAPE ? 4 : 2},
        {"blk.0.attn_v.weight", 4, 2},   {"blk.0.attn_output.weight", 4, 4},
        {"blk.0.ffn_norm.weight", 4, 0}, {"blk.0.ffn_gate.weight", 4, 8},
        {"blk.0.ffn_down.weight", 8, 4}, {"blk.0.ffn_up.weight", 4, 8},
    };
    size_t n = sizeof(defs) / sizeof(defs[0]);
    uint64_t nt = n - (mut == MUT_NO_UP || mut == MUT_NO_OUTPUT ? 1 : 0);
    gw_header(w, 3, nt, 8);
    gw_kv_str(w, "general.architecture", mut == MUT_ARCH ? "gpt2" : "llama");
    gw_kv_u32(w, "llama.embedding_length", 4);
    gw_kv_u32(w, "llama.feed_forward_length", 8);
    gw_kv_u32(w, "llama.block_count", 1);
    gw_kv_u32(w, "llama.attention.head_count", mut == MUT_HEADS ? 3 : 2);
    gw_kv_u32(w, "llama.attention.head_count_kv", 1);
    gw_kv_u32(w, "llama.context_length", 16);
    gw_kv_f32(w, "llama.rope.freq_base", 500000.0f);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if ((mut == MUT_NO_UP && i == n - 1) || (mut == MUT_NO_OUTPUT && i == 2)) {
            continue;
        }
        uint64_t dims[2] = {defs[i].cols, defs[i].rows};
        int f16 = mut == MUT_F16_NORM && i == 8;
        gw_tensor(w, defs[i].name, defs[i].rows ? 2 : 1, dims, f16 ? 1 : 0, off);
        uint64_t bytes = defs[i].cols * (defs[i].rows ? defs[i].rows : 1) * (f16 ? 2 : 4);
        off += (bytes + 31) / 32 * 32;
    }
    gw_align(w, 32);
    gw_zeros(w, (size_t)off);
}

static int load(enum mutation mut, struct br_llama_config *c, struct br_llama_weights *wt,
                char *err)
{
    struct gw w = {0};
    build_model(&w, mut);
    br_gguf *g = NULL;
    int rc = br_gguf_open_mem(w.p, w.len, "tiny", &g, err, BR_GGUF_ERR_CAP);
    assert_int_equal(rc, BR_OK);
    rc = br_llama_model_load_gguf(g, "tiny", c, wt, err, BR_GGUF_ERR_CAP);
    if (rc == BR_OK) {
        assert_int_equal(wt->n_layers, 1);
        br_llama_weights_release(wt);
    }
    br_gguf_close(g);
    gw_free(&w);
    return rc;
}

static void test_hand_made_models(void **state)
{
    (void)state;
    struct br_llama_config c;
    struct br_llama_weights w;
    char err[BR_GGUF_ERR_CAP];
    assert_int_equal(load(MUT_NONE, &c, &w, err), BR_OK);
    assert_int_equal(c.vocab_size, 3); /* no token list: from token_embd */
    assert_float_equal(c.rope_theta, 500000.0f, 0);
    assert_float_equal(c.rms_eps, 1e-5f, 0);
    assert_int_equal(load(MUT_NO_OUTPUT, &c, &w, err), BR_OK);

    assert_int_equal(load(MUT_ARCH, &c, &w, err), BR_ERR_UNSUPPORTED);
    assert_non_null(strstr(err, "tiny: architecture 'gpt2' is not llama"));
    assert_null(w.layers);
    assert_int_equal(load(MUT_K_SHAPE, &c, &w, err), BR_ERR_PARSE);
    assert_non_null(strstr(err, "blk.0.attn_k.weight has shape [4, 4, 1, 1], expected [4, 2]"));
    assert_int_equal(load(MUT_NO_UP, &c, &w, err), BR_ERR_PARSE);
    assert_non_null(strstr(err, "missing tensor blk.0.ffn_up.weight"));
    assert_int_equal(load(MUT_F16_NORM, &c, &w, err), BR_ERR_UNSUPPORTED);
    assert_non_null(strstr(err, "norm tensor blk.0.ffn_norm.weight is f16"));
    assert_int_equal(load(MUT_HEADS, &c, &w, err), BR_ERR_PARSE);
    assert_non_null(strstr(err, "head_count"));
}

static void test_shared_output(void **state)
{
    (void)state;
    struct gw w = {0};
    build_model(&w, MUT_NO_OUTPUT);
    br_gguf *g = NULL;
    assert_int_equal(br_gguf_open_mem(w.p, w.len, "tiny", &g, NULL, 0), BR_OK);
    struct br_llama_config c;
    struct br_llama_weights wt;
    assert_int_equal(br_llama_model_load_gguf(g, "tiny", &c, &wt, NULL, 0), BR_OK);
    assert_ptr_equal(wt.output.data, wt.token_embedding.data);
    check_shape(&wt.output, 3, 4);
    br_llama_weights_release(&wt);
    br_llama_weights_release(&wt); /* idempotent */
    br_gguf_close(g);
    gw_free(&w);
}

/* One matrix of test_q4_0_packed_on_open: packed when Q4_0 on an AVX2 CPU, else not; clears
 * plain's packed pointer (plain = the same views without packed copies). Returns the size. */
static size_t check_packed(const struct br_tensor *t, struct br_tensor *plain)
{
    plain->packed = NULL;
    if (t->type != BR_TENSOR_Q4_0 || !br_kernel_has_avx2()) {
        assert_null(t->packed);
        return 0;
    }
    assert_non_null(t->packed);
    return br_kernel_q4_0_packed_bytes(t->rows, t->cols);
}

/* A Q4_0 GGUF (stories260K quantized: 172-row w1/w3, not a multiple of 8) opened with
 * br_llama_model_open: on AVX2 every Q4_0 matrix of the layers and the classifier has a packed
 * copy, together packed_bytes; the logits equal those of the same views without the packed
 * copies up to float summation order. */
static void test_q4_0_packed_on_open(void **state)
{
    (void)state;
    char path[512];
    (void)snprintf(path, sizeof(path), "%s/model_q4_0_%d.gguf", BR_BINARY_DIR, (int)getpid());
    char *argv[] = {(char *)MODELS "stories260K/stories260K-f32.gguf", path, (char *)"--type",
                    (char *)"q4_0", NULL};
    struct br_test_run r = br_test_run_argv(br_quantize_cli, 4, argv);
    assert_int_equal(r.code, 0);
    br_test_run_free(&r);
    struct br_llama_model *m = NULL;
    assert_int_equal(br_llama_model_open(path, &m, NULL, 0), BR_OK);
    struct br_llama_weights *w = &m->weights;
    struct br_llama_layer *layers = calloc((size_t)w->n_layers, sizeof(*layers));
    assert_non_null(layers);
    struct br_llama_weights plain = *w;
    plain.layers = layers;
    size_t want = 0;
    for (int i = 0; i < w->n_layers; i++) {
        struct br_llama_layer *y = &w->layers[i];
        layers[i] = *y;
        struct br_llama_layer *p = &layers[i];
        want += check_packed(&y->wq, &p->wq) + check_packed(&y->wk, &p->wk) +
                check_packed(&y->wv, &p->wv) + check_packed(&y->wo, &p->wo) +
                check_packed(&y->w1, &p->w1) + check_packed(&y->w2, &p->w2) +
                check_packed(&y->w3, &p->w3);
    }
    want += check_packed(&w->output, &plain.output);
    assert_int_equal(m->packed_bytes, want);
    assert_true(want > 0 || !br_kernel_has_avx2());
    struct br_llama_state *a = NULL;
    struct br_llama_state *b = NULL;
    assert_int_equal(br_llama_state_create(&m->config, w, &a), BR_OK);
    assert_int_equal(br_llama_state_create(&m->config, &plain, &b), BR_OK);
    size_t v = (size_t)m->config.vocab_size;
    float *la = malloc(v * sizeof(float));
    float *lb = malloc(v * sizeof(float));
    assert_true(la && lb);
    for (int pos = 0; pos < 8; pos++) {
        int token = 1 + 37 * pos % (int)(v - 1);
        assert_int_equal(br_llama_forward(a, token, pos, la), BR_OK);
        assert_int_equal(br_llama_forward(b, token, pos, lb), BR_OK);
        for (size_t i = 0; i < v; i++) {
            assert_true(fabsf(la[i] - lb[i]) <= 1e-3f * (1.0f + fabsf(lb[i])));
        }
    }
    free(lb);
    free(la);
    br_llama_state_destroy(b);
    br_llama_state_destroy(a);
    free(layers);
    br_llama_model_close(m);
    (void)unlink(path);
}

/* No RoPE permutation anywhere: the f32 GGUF gives the llama2.c checkpoint's logits exactly. */
static void test_gguf_logits_equal_llama2c(void **state)
{
    (void)state;
    struct br_llama2c *b = NULL;
    assert_int_equal(br_llama2c_open(MODELS "stories260K/stories260K.bin", &b, NULL, 0), BR_OK);
    struct br_llama_model *g = open_ok(MODELS "stories260K/stories260K-f32.gguf");
    struct br_llama_state *sb = NULL;
    struct br_llama_state *sg = NULL;
    assert_int_equal(br_llama_state_create(&b->config, &b->weights, &sb), BR_OK);
    assert_int_equal(br_llama_state_create(&g->config, &g->weights, &sg), BR_OK);
    static float lb[512];
    static float lg[512];
    const int toks[] = {1, 403, 407, 261, 378, 5, 90};
    for (int p = 0; p < 7; p++) {
        assert_int_equal(br_llama_forward(sb, toks[p], p, lb), BR_OK);
        assert_int_equal(br_llama_forward(sg, toks[p], p, lg), BR_OK);
        assert_memory_equal(lb, lg, sizeof(lb));
    }
    br_llama_state_destroy(sb);
    br_llama_state_destroy(sg);
    br_llama_model_close(g);
    br_llama2c_close(b);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories_f32_equals_llama2c),
        cmocka_unit_test(test_stories_q4km),
        cmocka_unit_test(test_tiny_random),
        cmocka_unit_test(test_vocab_only_refused),
        cmocka_unit_test(test_hand_made_models),
        cmocka_unit_test(test_shared_output),
        cmocka_unit_test(test_gguf_logits_equal_llama2c),
        cmocka_unit_test(test_q4_0_packed_on_open),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_model", tests, NULL, NULL);
}
