/* SPDX-License-Identifier: MIT */
/*
 * engine/kernels: the row dot of every weight type against dequantize + a double-precision
 * dot (F16, Q5_0, Q4_K, Q6_K: float rounding only; Q8_0, Q4_0: exact against the quantized
 * activation, and within the activation's 8-bit rounding of the float x), AVX2 and portable
 * paths agreeing, matvecs split over a thread pool bit-identical to one thread for every type,
 * the no-scratch path equal to the scratch path, shapes that are not whole blocks refused, and
 * the pool itself (every share run once per run, many runs, create/destroy, bad sizes).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/err.h"
#include "engine/kernels.h"
#include "engine/pool.h"
#include "engine/quant.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static float rnd_float(void)
{
    return (float)(rnd() % 20001) / 10000.0f - 1.0f; /* [-1, 1] */
}

static void put_half(uint8_t *p, float v)
{
    uint16_t h = br_quant_f32_to_f16(v);
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

/* Fills `rows` rows of `cols` elements of `type` with random blocks and finite scales. */
static uint8_t *random_rows(enum br_tensor_type type, size_t rows, size_t cols)
{
    size_t rb = br_tensor_row_bytes(type, cols);
    assert_true(rb > 0 && rows > 0);
    uint8_t *buf = malloc(rb * rows + 1);
    assert_non_null(buf);
    for (size_t i = 0; i < rb * rows; i++) {
        buf[i] = (uint8_t)rnd();
    }
    size_t be = br_tensor_block_elems(type);
    size_t bb = br_tensor_block_bytes(type);
    for (size_t b = 0; b < rows * cols / be; b++) {
        uint8_t *blk = buf + b * bb;
        switch (type) {
        case BR_TENSOR_F32: {
            float v = rnd_float();
            memcpy(blk, &v, sizeof(v));
            break;
        }
        case BR_TENSOR_F16:
            put_half(blk, rnd_float());
            break;
        case BR_TENSOR_Q8_0:
        case BR_TENSOR_Q4_0:
        case BR_TENSOR_Q5_0:
            put_half(blk, rnd_float() * 0.05f);
            break;
        case BR_TENSOR_Q4_K:
            put_half(blk, rnd_float() * 0.01f);
            put_half(blk + 2, rnd_float() * 0.01f);
            break;
        case BR_TENSOR_Q6_K:
            put_half(blk + 208, rnd_float() * 0.01f);
            break;
        default:
            fail();
        }
    }
    return buf;
}

static const enum br_tensor_type ALL_TYPES[] = {BR_TENSOR_F32,  BR_TENSOR_F16,  BR_TENSOR_Q8_0,
                                                BR_TENSOR_Q4_0, BR_TENSOR_Q5_0, BR_TENSOR_Q4_K,
                                                BR_TENSOR_Q6_K};
#define N_TYPES (sizeof(ALL_TYPES) / sizeof(ALL_TYPES[0]))

/* Checks one row's dot product against dequantize + double dot. */
static void check_row_dot(enum br_tensor_type type, const uint8_t *row, const float *x, size_t cols)
{
    float *w = malloc(cols * sizeof(float));
    float *xd = malloc(cols * sizeof(float));
    struct br_kernel_q8x *xq = malloc((cols / 32 + 1) * sizeof(*xq));
    assert_non_null(w);
    assert_non_null(xd);
    assert_non_null(xq);
    assert_int_equal(br_quant_dequantize_row(type, row, w, cols), BR_OK);
    int int_dot = type == BR_TENSOR_Q8_0 || type == BR_TENSOR_Q4_0;
    if (int_dot) {
        br_kernel_quantize_x(x, xq, cols);
    }
    double want = 0;   /* with the float x */
    double want_q = 0; /* with the quantized x the integer dots see */
    double mag = 0;    /* sum |w x|: the scale of float rounding errors */
    double xerr = 0;   /* bound of the activation rounding: sum |w| * d_x / 2 */
    for (size_t i = 0; i < cols; i++) {
        want += (double)w[i] * (double)x[i];
        mag += fabs((double)w[i] * (double)x[i]);
        if (int_dot) {
            const struct br_kernel_q8x *b = &xq[i / 32];
            xd[i] = b->d * (float)b->q[i % 32];
            want_q += (double)w[i] * (double)xd[i];
            xerr += fabs((double)w[i]) * (double)b->d * 0.5;
        }
    }
    double got = br_kernel_dot_row(type, row, x, int_dot ? xq : NULL, cols);
    double tol = 1e-5 * mag + 1e-6;
    if (int_dot) {
        assert_true(fabs(got - want_q) <= tol);
        assert_true(fabs(got - want) <= xerr * 1.001 + tol);
        double port = type == BR_TENSOR_Q8_0 ? br_kernel_dot_q8_0_portable(row, xq, cols / 32)
                                             : br_kernel_dot_q4_0_portable(row, xq, cols / 32);
        assert_true(fabs(port - want_q) <= tol);
        /* without a quantized x the same blocks are quantized per row: the same numbers */
        double unscratched = br_kernel_dot_row(type, row, x, NULL, cols);
        assert_true(fabs(unscratched - want_q) <= tol);
    } else if (fabs(got - want) > tol) {
        fail_msg("%s cols %zu: got %.9g want %.9g", br_tensor_type_name(type), cols, got, want);
    }
    free(w);
    free(xd);
    free(xq);
}

static void test_row_dots_all_types(void **state)
{
    (void)state;
    static const size_t COLS[] = {256, 512, 768, 2048};
    for (size_t t = 0; t < N_TYPES; t++) {
        for (size_t c = 0; c < sizeof(COLS) / sizeof(COLS[0]); c++) {
            size_t cols = COLS[c];
            uint8_t *rows = random_rows(ALL_TYPES[t], 3, cols);
            float *x = malloc(cols * sizeof(float));
            assert_non_null(x);
            for (size_t i = 0; i < cols; i++) {
                x[i] = rnd_float() * (i % 7 == 0 ? 4.0f : 1.0f);
            }
            size_t rb = br_tensor_row_bytes(ALL_TYPES[t], cols);
            for (size_t r = 0; r < 3; r++) {
                check_row_dot(ALL_TYPES[t], rows + r * rb, x, cols);
            }
            free(x);
            free(rows);
        }
    }
}

static void test_row_dots_small_blocks(void **state)
{
    (void)state;
    /* *_0 types with rows of a few 32-blocks (not whole 256 chunks), and x with zero blocks */
    enum br_tensor_type types[] = {BR_TENSOR_Q8_0, BR_TENSOR_Q4_0, BR_TENSOR_Q5_0, BR_TENSOR_F16};
    for (size_t t = 0; t < 4; t++) {
        for (size_t cols = 32; cols <= 352; cols += 32) {
            uint8_t *row = random_rows(types[t], 1, cols);
            float x[352];
            for (size_t i = 0; i < cols; i++) {
                x[i] = (i / 32) % 3 == 1 ? 0.0f : rnd_float();
            }
            check_row_dot(types[t], row, x, cols);
            free(row);
        }
    }
}

static void test_matvec_threads_identical(void **state)
{
    (void)state;
    enum { ROWS = 301, COLS = 512 };
    struct br_pool *pools[3] = {NULL, NULL, NULL};
    assert_int_equal(br_pool_create(2, &pools[0]), BR_OK);
    assert_int_equal(br_pool_create(3, &pools[1]), BR_OK);
    assert_int_equal(br_pool_create(1, &pools[2]), BR_OK);
    struct br_kernel_scratch scratch = {0};
    assert_int_equal(br_kernel_scratch_init(&scratch, COLS), BR_OK);
    float x[COLS];
    for (size_t i = 0; i < COLS; i++) {
        x[i] = rnd_float();
    }
    for (size_t t = 0; t < N_TYPES; t++) {
        uint8_t *data = random_rows(ALL_TYPES[t], ROWS, COLS);
        struct br_tensor w = {.type = ALL_TYPES[t], .data = data, .rows = ROWS, .cols = COLS};
        float y1[ROWS];
        float yn[ROWS];
        float y0[ROWS];
        size_t live = br_alloc_live_bytes();
        uint64_t count = br_alloc_count();
        assert_int_equal(br_kernel_matvec_ex(&w, x, y1, &scratch, NULL), BR_OK);
        for (int p = 0; p < 3; p++) {
            memset(yn, 0, sizeof(yn));
            assert_int_equal(br_kernel_matvec_ex(&w, x, yn, &scratch, pools[p]), BR_OK);
            assert_memory_equal(y1, yn, sizeof(y1));
        }
        assert_int_equal(br_alloc_count(), count);
        assert_int_equal(br_alloc_live_bytes(), live);
        /* the plain matvec (no scratch: x quantized block by block per row) */
        assert_int_equal(br_kernel_matvec(&w, x, y0), BR_OK);
        for (int r = 0; r < ROWS; r++) {
            assert_true(fabsf(y0[r] - y1[r]) <= 1e-4f * (1.0f + fabsf(y1[r])));
        }
        free(data);
    }
    br_kernel_scratch_free(&scratch);
    br_kernel_scratch_free(&scratch); /* idempotent */
    for (int p = 0; p < 3; p++) {
        br_pool_destroy(pools[p]);
    }
}

static void test_matvec_rejects_partial_blocks(void **state)
{
    (void)state;
    static uint8_t data[4096];
    float x[300] = {0};
    float y[4];
    struct br_tensor w = {.type = BR_TENSOR_Q4_K, .data = data, .rows = 2, .cols = 64};
    assert_int_equal(br_kernel_matvec(&w, x, y), BR_ERR_UNSUPPORTED);
    w.type = BR_TENSOR_Q8_0;
    w.cols = 172; /* stories260K's hidden size: not whole 32-blocks */
    assert_int_equal(br_kernel_matvec(&w, x, y), BR_ERR_UNSUPPORTED);
    w.type = (enum br_tensor_type)99;
    w.cols = 32;
    assert_int_equal(br_kernel_matvec(&w, x, y), BR_ERR_UNSUPPORTED);
    /* scratch too small for the row: falls back to the per-row quantization */
    struct br_kernel_scratch small = {0};
    assert_int_equal(br_kernel_scratch_init(&small, 32), BR_OK);
    memset(data, 0, sizeof(data));
    w.type = BR_TENSOR_Q8_0;
    w.cols = 64;
    assert_int_equal(br_kernel_matvec_ex(&w, x, y, &small, NULL), BR_OK);
    assert_true(y[0] == 0.0f && y[1] == 0.0f);
    br_kernel_scratch_free(&small);
    for (uint64_t k = 1; k <= 3; k++) {
        size_t live = br_alloc_live_bytes();
        br_alloc_fail_at(k);
        assert_int_equal(br_kernel_scratch_init(&small, 64), BR_ERR_NOMEM);
        br_alloc_fail_at(0);
        assert_null(small.xq);
        assert_null(small.xd);
        assert_null(small.xs);
        assert_int_equal(br_alloc_live_bytes(), live);
    }
}

/* The AVX2 quantizer gives the portable one's blocks bit for bit (zero, tiny, huge and
 * mixed-sign blocks, values exactly halfway between two steps). */
static void test_quantize_x_paths_identical(void **state)
{
    (void)state;
    enum { N = 32 * 40 };
    static float x[N];
    static struct br_kernel_q8x a[N / 32];
    static struct br_kernel_q8x b[N / 32];
    for (int round = 0; round < 20; round++) {
        for (size_t i = 0; i < N; i++) {
            size_t blk = i / 32;
            float scale = blk % 5 == 0 ? 1e-30f : (blk % 5 == 1 ? 1e6f : 1.0f);
            x[i] = blk % 7 == 3 ? 0.0f : rnd_float() * scale;
        }
        /* a block whose values sit on the rounding boundaries: 127 * k / 254 */
        for (int j = 0; j < 32; j++) {
            x[64 + j] = (float)(j * 2 + 1) / 254.0f * (j % 2 ? 1.0f : -1.0f);
        }
        x[64] = 1.0f;
        memset(a, 0x55, sizeof(a));
        memset(b, 0xaa, sizeof(b));
        br_kernel_quantize_x(x, a, N);
        br_kernel_quantize_x_portable(x, b, N);
        for (size_t k = 0; k < N / 32; k++) {
            assert_memory_equal(a[k].q, b[k].q, 32);
            assert_true(a[k].d == b[k].d);
            assert_int_equal(a[k].sum, b[k].sum);
        }
    }
}

/* br_kernel_axpy: the same numbers as the plain loop on both paths, every tail length. */
static void test_axpy_matches_loop(void **state)
{
    (void)state;
    float x[70];
    for (int i = 0; i < 70; i++) {
        x[i] = rnd_float();
    }
    for (size_t n = 0; n <= 70; n++) {
        float y[71];
        float want[71];
        for (size_t i = 0; i <= n; i++) {
            y[i] = rnd_float();
            want[i] = y[i];
        }
        float a = rnd_float() * 3.0f;
        for (size_t i = 0; i < n; i++) {
            want[i] += a * x[i];
        }
        br_kernel_axpy(y, a, x, n);
        assert_memory_equal(y, want, (n + 1) * sizeof(float));
    }
}

/* The Q8_0/Q4_0 dots reduce 8 blocks per step plus a one-block tail: every block count from
 * 1 to 40 (groups of 8 with tails 0..7), rows long enough for the row dot's 256-block chunks,
 * and odd row counts, against the portable dot; a matvec's row equals the row dot bit for bit
 * (the same kernel on the same quantized x), whatever the thread split. */
/* One (type, nb) case of test_q_dots_groups_and_tails on `rows` rows. */
static void check_q_matvec(enum br_tensor_type type, size_t nb, size_t rows, struct br_pool *pool)
{
    size_t cols = nb * 32;
    uint8_t *data = random_rows(type, rows, cols);
    float *x = malloc(cols * sizeof(float));
    float *y = malloc(rows * sizeof(float));
    float *y2 = malloc(rows * sizeof(float));
    float *wf = malloc(cols * sizeof(float));
    struct br_kernel_q8x *xq = malloc(nb * sizeof(*xq));
    assert_true(x && y && y2 && wf && xq);
    for (size_t i = 0; i < cols; i++) {
        x[i] = (i / 32) % 5 == 2 ? 0.0f : rnd_float();
    }
    struct br_kernel_scratch scratch = {0};
    assert_int_equal(br_kernel_scratch_init(&scratch, cols), BR_OK);
    struct br_tensor w = {.type = type, .data = data, .rows = rows, .cols = cols};
    assert_int_equal(br_kernel_matvec_ex(&w, x, y, &scratch, NULL), BR_OK);
    assert_int_equal(br_kernel_matvec_ex(&w, x, y2, &scratch, pool), BR_OK);
    assert_memory_equal(y, y2, rows * sizeof(float));
    br_kernel_quantize_x(x, xq, cols);
    size_t rb = br_tensor_row_bytes(type, cols);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = data + r * rb;
        float got = br_kernel_dot_row(type, row, x, xq, cols);
        float port = type == BR_TENSOR_Q8_0 ? br_kernel_dot_q8_0_portable(row, xq, nb)
                                            : br_kernel_dot_q4_0_portable(row, xq, nb);
        /* the scale of float rounding: sum |w_i * x_i| with x as quantized */
        assert_int_equal(br_quant_dequantize_row(type, row, wf, cols), BR_OK);
        double mag = 0;
        for (size_t i = 0; i < cols; i++) {
            const struct br_kernel_q8x *xb = &xq[i / 32];
            mag += fabs((double)wf[i] * (double)xb->d * (double)xb->q[i % 32]);
        }
        double tol = 1e-5 * mag + 1e-6;
        if (fabs((double)got - (double)port) > tol) {
            fail_msg("%s nb %zu row %zu: %.9g vs portable %.9g", br_tensor_type_name(type), nb, r,
                     (double)got, (double)port);
        }
        /* up to 256 blocks the row dot and the matvec run the same kernel on the same x */
        assert_true(nb > 256 ? fabs((double)got - (double)y[r]) <= tol : got == y[r]);
    }
    br_kernel_scratch_free(&scratch);
    free(xq);
    free(wf);
    free(y2);
    free(y);
    free(x);
    free(data);
}

/* The Q8_0/Q4_0 dots reduce 8 blocks per step plus a one-block tail: every block count from
 * 1 to 40 (groups of 8 with tails 0..7), rows long enough for the row dot's 256-block chunks,
 * and odd row counts, against the portable dot; a matvec's row equals the row dot bit for bit
 * (the same kernel on the same quantized x), whatever the thread split. */
static void test_q_dots_groups_and_tails(void **state)
{
    (void)state;
    static const size_t NB[] = {1,  2,  3,  5,  7,  8,  9,  15,  16,  17,  23, 24,
                                25, 31, 32, 33, 39, 40, 64, 255, 256, 257, 300};
    static const size_t ROWS[] = {1, 7, 9, 13};
    struct br_pool *pool = NULL;
    assert_int_equal(br_pool_create(2, &pool), BR_OK);
    for (size_t c = 0; c < sizeof(NB) / sizeof(NB[0]); c++) {
        size_t rows = ROWS[c % 4];
        /* enough weights that the pool splits the rows (an odd count) */
        if (rows * NB[c] * 32 < 70000) {
            rows = (70000 / (NB[c] * 32)) | 1;
        }
        check_q_matvec(BR_TENSOR_Q8_0, NB[c], rows, pool);
        check_q_matvec(BR_TENSOR_Q4_0, NB[c], ROWS[c % 4], pool);
        check_q_matvec(BR_TENSOR_Q4_0, NB[c], rows, pool);
    }
    br_pool_destroy(pool);
}

/* The packed Q4_0 layout (br_kernel_q4_0_pack): a block of a group of 8 rows holds the 8
 * scales, then row r's nibble bytes 4v..4v+3 at 16 + 32v + 4r; rows past the end are zero. */
static void check_q4_0_pack_layout(const uint8_t *data, size_t rows, size_t nb, const uint8_t *pk)
{
    size_t groups = (rows + 7) / 8;
    for (size_t g = 0; g < groups; g++) {
        for (size_t i = 0; i < nb; i++) {
            const uint8_t *p = pk + (g * nb + i) * BR_KERNEL_Q4_0_PACK_BLOCK_BYTES;
            for (size_t r = 0; r < 8; r++) {
                size_t row = g * 8 + r;
                uint8_t zero[18] = {0};
                const uint8_t *b = row < rows ? data + row * nb * 18 + i * 18 : zero;
                assert_memory_equal(p + 2 * r, b, 2);
                for (size_t v = 0; v < 4; v++) {
                    assert_memory_equal(p + 16 + 32 * v + 4 * r, b + 2 + 4 * v, 4);
                }
            }
        }
    }
}

/* One (nb, rows) case of test_q4_0_packed_matvec. */
static void check_q4_0_packed(size_t nb, size_t rows, struct br_pool *pool)
{
    size_t cols = nb * 32;
    uint8_t *data = random_rows(BR_TENSOR_Q4_0, rows, cols);
    size_t pk_bytes = br_kernel_q4_0_packed_bytes(rows, cols);
    assert_int_equal(pk_bytes, (rows + 7) / 8 * 8 * nb * 18);
    uint8_t *pk = malloc(pk_bytes);
    float *x = malloc(cols * sizeof(float));
    float *y = malloc(rows * sizeof(float));
    float *y2 = malloc(rows * sizeof(float));
    float *wf = malloc(cols * sizeof(float));
    struct br_kernel_q8x *xq = malloc(nb * sizeof(*xq));
    assert_true(pk && x && y && y2 && wf && xq);
    for (size_t i = 0; i < cols; i++) {
        x[i] = (i / 32) % 5 == 2 ? 0.0f : rnd_float();
    }
    struct br_tensor plain = {.type = BR_TENSOR_Q4_0, .data = data, .rows = rows, .cols = cols};
    assert_int_equal(br_kernel_q4_0_pack(&plain, pk), BR_OK);
    check_q4_0_pack_layout(data, rows, nb, pk);
    struct br_tensor w = plain;
    w.packed = pk;
    struct br_kernel_scratch scratch = {0};
    assert_int_equal(br_kernel_scratch_init(&scratch, cols), BR_OK);
    memset(y, 0xff, rows * sizeof(float));
    assert_int_equal(br_kernel_matvec_ex(&w, x, y, &scratch, NULL), BR_OK);
    /* any thread split (the pool splits odd row counts inside groups of 8): the same floats */
    memset(y2, 0xff, rows * sizeof(float));
    assert_int_equal(br_kernel_matvec_ex(&w, x, y2, &scratch, pool), BR_OK);
    assert_memory_equal(y, y2, rows * sizeof(float));
    /* AVX2 and VNNI paths of the packed kernel: the same floats too (exact integer sums) */
    for (int isa = BR_KERNEL_ISA_AVX2; isa <= br_kernel_isa() && nb <= 256; isa++) {
        memset(y2, 0xff, rows * sizeof(float));
        assert_int_equal(br_kernel_matvec_q_isa(isa, &w, x, y2), BR_OK);
        assert_memory_equal(y, y2, rows * sizeof(float));
    }
    br_kernel_quantize_x(x, xq, cols);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = data + r * nb * 18;
        float port = br_kernel_dot_q4_0_portable(row, xq, nb);
        assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q4_0, row, wf, cols), BR_OK);
        double mag = 0;
        for (size_t i = 0; i < cols; i++) {
            const struct br_kernel_q8x *xb = &xq[i / 32];
            mag += fabs((double)wf[i] * (double)xb->d * (double)xb->q[i % 32]);
        }
        double tol = 1e-5 * mag + 1e-6;
        if (fabs((double)y[r] - (double)port) > tol) {
            fail_msg("packed q4_0 nb %zu rows %zu row %zu: %.9g vs portable %.9g", nb, rows, r,
                     (double)y[r], (double)port);
        }
    }
    br_kernel_scratch_free(&scratch);
    free(xq);
    free(wf);
    free(y2);
    free(y);
    free(x);
    free(pk);
    free(data);
}

/* Q4_0 matrices with a packed copy (8 rows side by side): 1..40 blocks, row counts below, at
 * and around multiples of 8 (the last group padded), and matrices big enough for the pool to
 * split the rows at odd places; against the portable dot, bit-identical for any split and
 * on AVX2 and VNNI. Other types and partial blocks are refused by the packer. */
static void test_q4_0_packed_matvec(void **state)
{
    (void)state;
    static const size_t ROWS[] = {1, 3, 7, 8, 9, 13, 16, 17, 31};
    struct br_pool *pool = NULL;
    assert_int_equal(br_pool_create(2, &pool), BR_OK);
    for (size_t nb = 1; nb <= 40; nb++) {
        check_q4_0_packed(nb, ROWS[nb % 9], pool);
        check_q4_0_packed(nb, (70000 / (nb * 32)) | 1, pool);
    }
    check_q4_0_packed(300, 5, pool);
    check_q4_0_packed(300, 11, pool);
    br_pool_destroy(pool);
    uint8_t buf[64] = {0};
    struct br_tensor q8 = {.type = BR_TENSOR_Q8_0, .data = buf, .rows = 1, .cols = 32};
    assert_int_equal(br_kernel_q4_0_pack(&q8, buf), BR_ERR_UNSUPPORTED);
    struct br_tensor part = {.type = BR_TENSOR_Q4_0, .data = buf, .rows = 1, .cols = 48};
    assert_int_equal(br_kernel_q4_0_pack(&part, buf), BR_ERR_UNSUPPORTED);
}

/* Every instruction-set path this CPU has gives the Q8_0/Q4_0 matvec: AVX2 and VNNI the very
 * same floats as the matvec (the same integer sums, the same float operations), portable the
 * same within float rounding. Odd row counts, 1 to 40 blocks, and the 8192-column limit. */
static void test_q_matvec_isa_paths(void **state)
{
    (void)state;
    printf("# kernel isa: %d\n", br_kernel_isa());
    enum br_tensor_type types[] = {BR_TENSOR_Q8_0, BR_TENSOR_Q4_0};
    for (size_t t = 0; t < 2; t++) {
        for (size_t nb = 1; nb <= 40; nb += (nb < 10 ? 1 : 7)) {
            size_t cols = nb * 32;
            size_t rows = 2 * nb + 1;
            uint8_t *data = random_rows(types[t], rows, cols);
            float *x = malloc(cols * sizeof(float));
            float *want = malloc(rows * sizeof(float));
            float *got = malloc(rows * sizeof(float));
            assert_true(x && want && got);
            for (size_t i = 0; i < cols; i++) {
                x[i] = rnd_float();
            }
            struct br_tensor w = {.type = types[t], .data = data, .rows = rows, .cols = cols};
            struct br_kernel_scratch scratch = {0};
            assert_int_equal(br_kernel_scratch_init(&scratch, cols), BR_OK);
            assert_int_equal(br_kernel_matvec_ex(&w, x, want, &scratch, NULL), BR_OK);
            for (int isa = BR_KERNEL_ISA_PORTABLE; isa <= br_kernel_isa() + 1; isa++) {
                memset(got, 0xff, rows * sizeof(float));
                assert_int_equal(br_kernel_matvec_q_isa(isa, &w, x, got), BR_OK);
                for (size_t r = 0; r < rows && isa == BR_KERNEL_ISA_PORTABLE; r++) {
                    assert_true(fabsf(got[r] - want[r]) <= 1e-5f * (1.0f + fabsf(want[r])));
                }
                if (isa != BR_KERNEL_ISA_PORTABLE) { /* above the CPU's: clamped to the widest */
                    assert_memory_equal(got, want, rows * sizeof(float));
                }
            }
            br_kernel_scratch_free(&scratch);
            free(got);
            free(want);
            free(x);
            free(data);
        }
    }
    static float x[8224];
    float y[2];
    struct br_tensor big = {.type = BR_TENSOR_Q8_0, .data = x, .rows = 1, .cols = 8224};
    assert_int_equal(br_kernel_matvec_q_isa(BR_KERNEL_ISA_AVX2, &big, x, y), BR_ERR_UNSUPPORTED);
    big.type = BR_TENSOR_F32;
    big.cols = 32;
    assert_int_equal(br_kernel_matvec_q_isa(BR_KERNEL_ISA_AVX2, &big, x, y), BR_ERR_UNSUPPORTED);
}

struct count_ctx {
    atomic_int hits[8];
    atomic_int total;
};

static void count_task(void *ctx, int index, int count)
{
    struct count_ctx *c = ctx;
    assert_true(index >= 0 && index < count && count <= 8);
    atomic_fetch_add(&c->hits[index], 1);
    atomic_fetch_add(&c->total, 1);
}

static void test_pool_runs_every_share(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++) {
        struct br_pool *p = NULL;
        assert_int_equal(br_pool_create(n, &p), BR_OK);
        assert_int_equal(br_pool_size(p), n);
        static struct count_ctx c;
        memset(&c, 0, sizeof(c));
        for (int run = 0; run < 2000; run++) {
            br_pool_run(p, count_task, &c);
            assert_int_equal(atomic_load(&c.total), (run + 1) * n);
        }
        for (int i = 0; i < n; i++) {
            assert_int_equal(atomic_load(&c.hits[i]), 2000);
        }
        br_pool_destroy(p);
    }
    struct br_pool *p = (struct br_pool *)1;
    assert_int_equal(br_pool_create(0, &p), BR_ERR_INVAL);
    assert_null(p);
    assert_int_equal(br_pool_create(257, &p), BR_ERR_INVAL);
    for (uint64_t k = 1; k <= 2; k++) {
        br_alloc_fail_at(k);
        assert_int_equal(br_pool_create(3, &p), BR_ERR_NOMEM);
        assert_null(p);
    }
    br_alloc_fail_at(0);
    br_pool_destroy(NULL);
}

/* F32 matvecs with short rows (LoRA's B, stories260K) take 8 rows per step: every row count
 * 1..21 (tails 0..7), 8 to 136 columns (the kernel's 128 limit and past it), against a double
 * dot, and bit-identical for any thread split and chunk start. */
static void test_f32_short_rows(void **state)
{
    (void)state;
    static const size_t COLS[] = {8, 16, 24, 64, 128, 136};
    struct br_pool *pool = NULL;
    assert_int_equal(br_pool_create(3, &pool), BR_OK);
    for (size_t c = 0; c < sizeof(COLS) / sizeof(COLS[0]); c++) {
        size_t cols = COLS[c];
        size_t big = 70000 / cols + 3; /* above the pool's threshold, not a multiple of 8 */
        float *w = malloc(big * cols * sizeof(float));
        float *x = malloc(cols * sizeof(float));
        float *y = malloc(big * sizeof(float));
        float *y2 = malloc(big * sizeof(float));
        assert_true(w && x && y && y2);
        for (size_t i = 0; i < big * cols; i++) {
            w[i] = rnd_float();
        }
        for (size_t i = 0; i < cols; i++) {
            x[i] = rnd_float();
        }
        for (size_t rows = 1; rows <= 21; rows++) {
            struct br_tensor t = {.type = BR_TENSOR_F32, .data = w, .rows = rows, .cols = cols};
            assert_int_equal(br_kernel_matvec(&t, x, y), BR_OK);
            for (size_t r = 0; r < rows; r++) {
                double want = 0;
                double mag = 0;
                for (size_t i = 0; i < cols; i++) {
                    want += (double)w[r * cols + i] * (double)x[i];
                    mag += fabs((double)w[r * cols + i] * (double)x[i]);
                }
                assert_true(fabs((double)y[r] - want) <= 1e-6 * mag + 1e-7);
            }
            /* the same rows as part of a matrix starting one row earlier */
            if (rows > 1) {
                struct br_tensor t1 = {
                    .type = BR_TENSOR_F32, .data = w + cols, .rows = rows - 1, .cols = cols};
                assert_int_equal(br_kernel_matvec(&t1, x, y2), BR_OK);
                assert_memory_equal(y + 1, y2, (rows - 1) * sizeof(float));
            }
        }
        struct br_tensor t = {.type = BR_TENSOR_F32, .data = w, .rows = big, .cols = cols};
        assert_int_equal(br_kernel_matvec_ex(&t, x, y, NULL, NULL), BR_OK);
        assert_int_equal(br_kernel_matvec_ex(&t, x, y2, NULL, pool), BR_OK);
        assert_memory_equal(y, y2, big * sizeof(float));
        free(y2);
        free(y);
        free(x);
        free(w);
    }
    br_pool_destroy(pool);
}

struct chunk_ctx {
    atomic_int hits[1000];
    atomic_int total;
    int expect_count;
    atomic_int bad;
};

static void chunk_task(void *ctx, int index, int count)
{
    struct chunk_ctx *c = ctx;
    if (count != c->expect_count || index < 0 || index >= count || index >= 1000) {
        atomic_fetch_add(&c->bad, 1);
        return;
    }
    if (index == 0 && count > 1) {
        /* a slow chunk: the run must still wait for it */
        for (volatile int spin = 0; spin < 20000; spin = spin + 1) {
        }
    }
    atomic_fetch_add(&c->hits[index], 1);
    atomic_fetch_add(&c->total, 1);
}

/* br_pool_run_chunks runs every chunk exactly once per run and returns only when all are done,
 * for chunk counts below, equal to and far above the thread count, back to back. */
static void test_pool_run_chunks(void **state)
{
    (void)state;
    static const int COUNTS[] = {0, 1, 2, 3, 7, 64, 999};
    static struct chunk_ctx c;
    for (int n = 1; n <= 3; n++) {
        struct br_pool *p = NULL;
        assert_int_equal(br_pool_create(n, &p), BR_OK);
        for (size_t k = 0; k < sizeof(COUNTS) / sizeof(COUNTS[0]); k++) {
            memset(&c, 0, sizeof(c));
            c.expect_count = COUNTS[k];
            for (int run = 0; run < 200; run++) {
                br_pool_run_chunks(p, chunk_task, &c, COUNTS[k]);
                assert_int_equal(atomic_load(&c.total), (run + 1) * COUNTS[k]);
            }
            assert_int_equal(atomic_load(&c.bad), 0);
            for (int i = 0; i < COUNTS[k]; i++) {
                assert_int_equal(atomic_load(&c.hits[i]), 200);
            }
        }
        br_pool_destroy(p);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_dots_all_types),
        cmocka_unit_test(test_row_dots_small_blocks),
        cmocka_unit_test(test_matvec_threads_identical),
        cmocka_unit_test(test_matvec_rejects_partial_blocks),
        cmocka_unit_test(test_pool_runs_every_share),
        cmocka_unit_test(test_quantize_x_paths_identical),
        cmocka_unit_test(test_axpy_matches_loop),
        cmocka_unit_test(test_q_dots_groups_and_tails),
        cmocka_unit_test(test_q_matvec_isa_paths),
        cmocka_unit_test(test_q4_0_packed_matvec),
        cmocka_unit_test(test_pool_run_chunks),
        cmocka_unit_test(test_f32_short_rows),
    };
    printf("# avx2 path: %d\n", br_kernel_has_avx2());
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_kernels", tests, NULL, NULL);
}
