/* SPDX-License-Identifier: MIT */
/*
 * engine/forward: greedy decoding of stories260K from BOS reproduces the token ids and the
 * top-2 logits that llama2.c run.c recorded (models/stories260K/golden/
 * run_greedy_noprompt.top2.txt: one line per position "pos P top1 ID (LOGIT) top2 ID (LOGIT)
 * gap G"); the kernels agree with plain loops; bad arguments are refused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/err.h"
#include "engine/forward.h"
#include "engine/kernels.h"
#include "engine/llama2c.h"
#include "engine/quant.h"

#define MODEL_PATH  BR_SOURCE_DIR "/models/stories260K/stories260K.bin"
#define GOLDEN_PATH BR_SOURCE_DIR "/models/stories260K/golden/run_greedy_noprompt.top2.txt"
#define MAX_STEPS   1024

struct golden_step {
    int top1;
    int top2;
    double logit1;
    double logit2;
    double gap;
};

static int read_golden(struct golden_step *steps, int cap)
{
    FILE *f = fopen(GOLDEN_PATH, "r");
    assert_non_null(f);
    char line[256];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        int pos = 0;
        struct golden_step s;
        /* NOLINTNEXTLINE(cert-err34-c): the numbers are compared with the model's anyway */
        if (sscanf(line, "pos %d top1 %d (%lf) top2 %d (%lf) gap %lf", &pos, &s.top1, &s.logit1,
                   &s.top2, &s.logit2, &s.gap) != 6) {
            continue; /* e.g. the closing "achieved tok/s" line */
        }
        assert_int_equal(pos, n);
        assert_true(n < cap);
        steps[n++] = s;
    }
    (void)fclose(f);
    return n;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        best = x[i] > x[best] ? i : best;
    }
    return best;
}

static void check_step(const struct golden_step *g, const float *logits, int vocab, int pos)
{
    int got = argmax(logits, vocab);
    int ok = got == g->top1 || (g->gap < 1e-3 && got == g->top2);
    if (!ok) {
        fail_msg("pos %d: argmax %d (%f), golden top1 %d (%f)", pos, got, (double)logits[got],
                 g->top1, g->logit1);
    }
    if (fabs((double)logits[g->top1] - g->logit1) > 1e-3 ||
        fabs((double)logits[g->top2] - g->logit2) > 1e-3) {
        fail_msg("pos %d: logits %f %f, golden %f %f", pos, (double)logits[g->top1],
                 (double)logits[g->top2], g->logit1, g->logit2);
    }
}

static void test_forward_greedy_matches_golden(void **state)
{
    (void)state;
    static struct golden_step golden[MAX_STEPS];
    int n = read_golden(golden, MAX_STEPS);
    assert_int_equal(n, 256);
    struct br_llama2c *m = NULL;
    char err[256] = "";
    assert_int_equal(br_llama2c_open(MODEL_PATH, &m, err, sizeof(err)), BR_OK);
    struct br_llama_state *s = NULL;
    assert_int_equal(br_llama_state_create(&m->config, &m->weights, &s), BR_OK);
    float *logits = calloc((size_t)m->config.vocab_size, sizeof(float));
    assert_non_null(logits);
    size_t live_before = br_alloc_live_bytes();
    uint64_t count_before = br_alloc_count();
    struct timespec t0;
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int token = 1; /* BOS */
    for (int pos = 0; pos < n; pos++) {
        assert_int_equal(br_llama_forward(s, token, pos, logits), BR_OK);
        check_step(&golden[pos], logits, m->config.vocab_size, pos);
        token = golden[pos].top1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* the forward pass allocates nothing */
    assert_int_equal(br_alloc_count(), count_before);
    assert_int_equal(br_alloc_live_bytes(), live_before);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("# stories260K: %d tokens in %.3f s (%.0f tok/s, avx2=%d)\n", n, secs, n / secs,
           br_kernel_has_avx2());
    free(logits);
    br_llama_state_destroy(s);
    br_llama2c_close(m);
}

static void test_forward_rejects_bad_args(void **state)
{
    (void)state;
    struct br_llama2c *m = NULL;
    assert_int_equal(br_llama2c_open(MODEL_PATH, &m, NULL, 0), BR_OK);
    struct br_llama_state *s = NULL;
    assert_int_equal(br_llama_state_create(&m->config, &m->weights, &s), BR_OK);
    float logits[512];
    assert_int_equal(br_llama_forward(s, -1, 0, logits), BR_ERR_RANGE);
    assert_int_equal(br_llama_forward(s, 512, 0, logits), BR_ERR_RANGE);
    assert_int_equal(br_llama_forward(s, 1, 512, logits), BR_ERR_RANGE);
    assert_int_equal(br_llama_forward(s, 1, -1, logits), BR_ERR_RANGE);
    br_llama_state_destroy(s);
    struct br_llama_config bad = m->config;
    bad.n_kv_heads = 3;
    s = (struct br_llama_state *)1;
    assert_int_equal(br_llama_state_create(&bad, &m->weights, &s), BR_ERR_INVAL);
    assert_null(s);
    /* an unsupported tensor type is reported, not misread */
    struct br_llama_weights w = m->weights;
    struct br_llama_layer layer0 = w.layers[0];
    layer0.wq.type = BR_TENSOR_Q4_K;
    struct br_llama_layer layers[5];
    memcpy(layers, w.layers, sizeof(layers));
    layers[0] = layer0;
    w.layers = layers;
    assert_int_equal(br_llama_state_create(&m->config, &w, &s), BR_OK);
    assert_int_equal(br_llama_forward(s, 1, 0, logits), BR_ERR_UNSUPPORTED);
    br_llama_state_destroy(s);
    br_llama_state_destroy(NULL);
    br_llama2c_close(m);
}

static void test_forward_state_alloc_failure(void **state)
{
    (void)state;
    struct br_llama2c *m = NULL;
    assert_int_equal(br_llama2c_open(MODEL_PATH, &m, NULL, 0), BR_OK);
    size_t live = br_alloc_live_bytes();
    /* 12 buffers of the state (x .. rope_cs) and the kernel scratch's 3 */
    for (uint64_t k = 1; k <= 15; k++) {
        struct br_llama_state *s = NULL;
        br_alloc_fail_at(k);
        assert_int_equal(br_llama_state_create(&m->config, &m->weights, &s), BR_ERR_NOMEM);
        assert_null(s);
        assert_int_equal(br_alloc_live_bytes(), live);
    }
    br_alloc_fail_at(0);
    br_llama2c_close(m);
}

/* A random model with kv_dim 128 (8 heads of 32, 4 kv heads): from position 127 on the
 * attention heads are split over the pool too. F32 and Q8_0 / Q4_0 (the same matrices
 * quantized; Q4_0 also with packed copies), 1, 2 and 3 threads: the logits are identical bit
 * for bit. */
enum { SYN_D = 256, SYN_H = 512, SYN_L = 2, SYN_V = 64, SYN_SEQ = 150 };

static uint64_t syn_rng = 7;
static int syn_pack; /* 1: Q4_0 matrices also get a packed copy (br_kernel_q4_0_pack) */

/* Uniform in [-1, 1] (xorshift: deterministic, no global libc state). */
static float syn_rand(void)
{
    syn_rng ^= syn_rng << 13;
    syn_rng ^= syn_rng >> 7;
    syn_rng ^= syn_rng << 17;
    return (float)((syn_rng >> 11) % 20001) / 10000.0f - 1.0f;
}

static void syn_tensor(struct br_tensor *t, enum br_tensor_type type, size_t rows, size_t cols,
                       void **owned, int *n_owned)
{
    float *f = malloc(rows * cols * sizeof(float));
    assert_non_null(f);
    for (size_t i = 0; i < rows * cols; i++) {
        f[i] = syn_rand() / sqrtf((float)cols);
    }
    if (type == BR_TENSOR_F32 || rows == 1) {
        for (size_t i = 0; rows == 1 && i < cols; i++) {
            f[i] = 1.0f + f[i];
        }
        *t = (struct br_tensor){.type = BR_TENSOR_F32, .data = f, .rows = rows, .cols = cols};
        owned[(*n_owned)++] = f;
        return;
    }
    size_t rb = br_tensor_row_bytes(type, cols);
    uint8_t *q = malloc(rows * rb);
    assert_non_null(q);
    for (size_t r = 0; r < rows; r++) {
        int rc = type == BR_TENSOR_Q8_0
                     ? br_quant_quantize_row_q8_0(f + r * cols, q + r * rb, cols)
                     : br_quant_quantize_row_q4_0(f + r * cols, q + r * rb, cols);
        assert_int_equal(rc, BR_OK);
    }
    free(f);
    *t = (struct br_tensor){.type = type, .data = q, .rows = rows, .cols = cols};
    owned[(*n_owned)++] = q;
    if (syn_pack && type == BR_TENSOR_Q4_0) {
        void *pk = malloc(br_kernel_q4_0_packed_bytes(rows, cols));
        assert_non_null(pk);
        assert_int_equal(br_kernel_q4_0_pack(t, pk), BR_OK);
        t->packed = pk;
        owned[(*n_owned)++] = pk;
    }
}

static void test_forward_threads_identical(void **state)
{
    (void)state;
    struct br_llama_config c = {.dim = SYN_D,
                                .hidden_dim = SYN_H,
                                .n_layers = SYN_L,
                                .n_heads = 8,
                                .n_kv_heads = 4,
                                .vocab_size = SYN_V,
                                .seq_len = SYN_SEQ,
                                .rms_eps = 1e-5f,
                                .rope_theta = 10000.0f};
    /* the last Q4_0 run with packed copies of the matrices, as the model loader makes them */
    static const enum br_tensor_type TYPES[] = {BR_TENSOR_F32, BR_TENSOR_Q8_0, BR_TENSOR_Q4_0,
                                                BR_TENSOR_Q4_0};
    for (size_t ti = 0; ti < 4; ti++) {
        syn_rng = 7;
        syn_pack = ti == 3;
        void *owned[64];
        int n_owned = 0;
        struct br_llama_layer layers[SYN_L];
        struct br_llama_weights w = {.layers = layers, .n_layers = SYN_L};
        enum br_tensor_type t = TYPES[ti];
        syn_tensor(&w.token_embedding, BR_TENSOR_F32, SYN_V, SYN_D, owned, &n_owned);
        for (int l = 0; l < SYN_L; l++) {
            struct br_llama_layer *y = &layers[l];
            syn_tensor(&y->attn_norm, t, 1, SYN_D, owned, &n_owned);
            syn_tensor(&y->wq, t, SYN_D, SYN_D, owned, &n_owned);
            syn_tensor(&y->wk, t, 128, SYN_D, owned, &n_owned);
            syn_tensor(&y->wv, t, 128, SYN_D, owned, &n_owned);
            syn_tensor(&y->wo, t, SYN_D, SYN_D, owned, &n_owned);
            syn_tensor(&y->ffn_norm, t, 1, SYN_D, owned, &n_owned);
            syn_tensor(&y->w1, t, SYN_H, SYN_D, owned, &n_owned);
            syn_tensor(&y->w2, t, SYN_D, SYN_H, owned, &n_owned);
            syn_tensor(&y->w3, t, SYN_H, SYN_D, owned, &n_owned);
        }
        syn_tensor(&w.final_norm, t, 1, SYN_D, owned, &n_owned);
        syn_tensor(&w.output, t, SYN_V, SYN_D, owned, &n_owned);
        static float logits[3][SYN_SEQ][SYN_V];
        for (int n_threads = 1; n_threads <= 3; n_threads++) {
            struct br_llama_run_config run = {.n_threads = n_threads};
            struct br_llama_state *s = NULL;
            assert_int_equal(br_llama_state_create_ex(&c, &w, &run, &s), BR_OK);
            size_t live = br_alloc_live_bytes();
            uint64_t count = br_alloc_count();
            int token = 1;
            for (int pos = 0; pos < SYN_SEQ; pos++) {
                float *lg = logits[n_threads - 1][pos];
                assert_int_equal(br_llama_forward(s, token, pos, lg), BR_OK);
                token = argmax(lg, SYN_V);
                assert_true(isfinite(lg[token]));
            }
            assert_int_equal(br_alloc_count(), count);
            assert_int_equal(br_alloc_live_bytes(), live);
            br_llama_state_destroy(s);
        }
        assert_memory_equal(logits[0], logits[1], sizeof(logits[0]));
        assert_memory_equal(logits[0], logits[2], sizeof(logits[0]));
        /* packed or not, Q4_0 gives the same logits up to float summation order */
        static float q4_pos0[SYN_V];
        for (int i = 0; i < SYN_V && ti >= 2; i++) {
            if (ti == 2) {
                q4_pos0[i] = logits[0][0][i];
            } else {
                assert_true(fabsf(logits[0][0][i] - q4_pos0[i]) <=
                            1e-4f * (1.0f + fabsf(q4_pos0[i])));
            }
        }
        for (int i = 0; i < n_owned; i++) {
            free(owned[i]);
        }
    }
}

static void test_kernels_match_plain_loops(void **state)
{
    (void)state;
    enum { ROWS = 7, COLS = 37 };
    static float w[ROWS * COLS];
    float x[COLS];
    float y[ROWS];
    for (int i = 0; i < ROWS * COLS; i++) {
        w[i] = (float)((i * 37) % 19) / 7.0f - 1.0f;
    }
    for (int i = 0; i < COLS; i++) {
        x[i] = (float)((i * 11) % 13) / 5.0f - 1.2f;
    }
    struct br_tensor t = {.type = BR_TENSOR_F32, .data = w, .rows = ROWS, .cols = COLS};
    assert_int_equal(br_kernel_matvec(&t, x, y), BR_OK);
    for (int r = 0; r < ROWS; r++) {
        double want = 0;
        for (int c = 0; c < COLS; c++) {
            want += (double)w[r * COLS + c] * (double)x[c];
        }
        assert_true(fabs(want - (double)y[r]) < 1e-4);
    }
    float p[5] = {1.0f, 2.0f, 3.0f, 1000.0f, -1000.0f};
    br_kernel_softmax(p, 5);
    float sum = 0;
    for (int i = 0; i < 5; i++) {
        sum += p[i];
    }
    assert_true(fabsf(sum - 1.0f) < 1e-6f);
    assert_true(p[3] > 0.999f);
    float v[4] = {1, 2, 3, 4};
    float ones[4] = {1, 1, 1, 1};
    br_kernel_rmsnorm(v, v, ones, 4, 0.0f);
    assert_true(fabsf(v[3] - 4.0f / sqrtf(7.5f)) < 1e-6f);
    float g[2] = {0.0f, 2.0f};
    float u[2] = {5.0f, 3.0f};
    br_kernel_swiglu(g, u, 2);
    assert_true(fabsf(g[0]) < 1e-7f);
    assert_true(fabsf(g[1] - 2.0f / (1.0f + expf(-2.0f)) * 3.0f) < 1e-5f);
}

static void test_kernels_dot_lengths(void **state)
{
    (void)state;
    float a[70];
    float b[70];
    for (int i = 0; i < 70; i++) {
        a[i] = (float)((i * 13) % 17) / 8.0f - 1.0f;
        b[i] = (float)((i * 5) % 11) / 3.0f - 1.5f;
    }
    /* every tail length of both the 16-wide, 8-wide and scalar loops, on both paths */
    for (size_t n = 0; n <= 70; n++) {
        double want = 0.0;
        for (size_t i = 0; i < n; i++) {
            want += (double)a[i] * (double)b[i];
        }
        assert_true(fabs((double)br_kernel_dot_f32(a, b, n) - want) < 1e-4);
        assert_true(fabs((double)br_kernel_dot_f32_portable(a, b, n) - want) < 1e-4);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_greedy_matches_golden),
        cmocka_unit_test(test_forward_rejects_bad_args),
        cmocka_unit_test(test_forward_state_alloc_failure),
        cmocka_unit_test(test_kernels_match_plain_loops),
        cmocka_unit_test(test_kernels_dot_lengths),
        cmocka_unit_test(test_forward_threads_identical),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_forward", tests, NULL, NULL);
}
