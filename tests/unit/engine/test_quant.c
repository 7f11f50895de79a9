/* SPDX-License-Identifier: MIT */
/*
 * Block format tests: half-float conversion (known values, exhaustive round trip), hand-built
 * blocks of every type decoded against values written down by hand or by an element-wise
 * restatement of the layout, Q8_0/Q4_0 quantize->dequantize within the format's error bound,
 * and the quantized tensors of stories260K-Q4_K_M.gguf against the f32 original.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "engine/gguf.h"
#include "engine/quant.h"

#define MODELS BR_SOURCE_DIR "/models/"

static void put_h(uint8_t *p, uint16_t h)
{
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static void test_f16_known(void **state)
{
    (void)state;
    assert_int_equal(br_quant_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(br_quant_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(br_quant_f32_to_f16(0.5f), 0x3800);
    assert_int_equal(br_quant_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(br_quant_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(br_quant_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(br_quant_f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(br_quant_f32_to_f16(0.1f), 0x2e66);
    assert_int_equal(br_quant_f32_to_f16(5.9604644775390625e-8f), 0x0001);
    assert_int_equal(br_quant_f32_to_f16(2.98023223876953125e-8f), 0x0000); /* tie to even */
    assert_int_equal(br_quant_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(br_quant_f32_to_f16(1.0f + 1.0f / 2048), 0x3c00); /* tie to even */
    assert_int_equal(br_quant_f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);
    assert_int_equal(br_quant_f32_to_f16(NAN) & 0x7c00, 0x7c00);
    assert_true(br_quant_f32_to_f16(NAN) & 0x3ff);
    assert_float_equal(br_quant_f16_to_f32(0x3c00), 1.0f, 0);
    assert_float_equal(br_quant_f16_to_f32(0x7bff), 65504.0f, 0);
    assert_float_equal(br_quant_f16_to_f32(0x0001), 5.9604644775390625e-8f, 0);
    assert_float_equal(br_quant_f16_to_f32(0x03ff), 6.097555160522461e-5f, 0);
    assert_true(isinf(br_quant_f16_to_f32(0xfc00)) && br_quant_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(br_quant_f16_to_f32(0x7e00)));
}

static void test_f16_round_trip_all(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = br_quant_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            continue;
        }
        assert_int_equal(br_quant_f32_to_f16(f), h);
    }
}

static void test_q8_0_block(void **state)
{
    (void)state;
    uint8_t b[34];
    put_h(b, 0x3800); /* 0.5 */
    for (int j = 0; j < 32; j++) {
        b[2 + j] = (uint8_t)(int8_t)(j - 16);
    }
    float y[32];
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q8_0, b, y, 32), BR_OK);
    for (int j = 0; j < 32; j++) {
        assert_float_equal(y[j], 0.5f * (float)(j - 16), 0);
    }
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q8_0, b, y, 31), BR_ERR_INVAL);
}

static void test_q4_0_block(void **state)
{
    (void)state;
    uint8_t b[18];
    put_h(b, 0x4000); /* 2.0 */
    for (int j = 0; j < 16; j++) {
        b[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    }
    float y[32];
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q4_0, b, y, 32), BR_OK);
    assert_float_equal(y[0], -16.0f, 0);
    assert_float_equal(y[15], 14.0f, 0);
    assert_float_equal(y[16], 14.0f, 0);
    assert_float_equal(y[31], -16.0f, 0);
    assert_float_equal(y[8], 0.0f, 0);
}

static void test_q5_0_block(void **state)
{
    (void)state;
    uint8_t b[22];
    put_h(b, 0x3c00); /* 1.0 */
    /* qh bit j: 5th bit of element j. Set bits of elements 0, 5, 16, 31. */
    uint32_t qh = (1u << 0) | (1u << 5) | (1u << 16) | (1u << 31);
    for (int i = 0; i < 4; i++) {
        b[2 + i] = (uint8_t)(qh >> (8 * i));
    }
    for (int j = 0; j < 16; j++) {
        b[6 + j] = (uint8_t)(j | (3 << 4));
    }
    float y[32];
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q5_0, b, y, 32), BR_OK);
    assert_float_equal(y[0], 0 + 16 - 16, 0);
    assert_float_equal(y[1], 1 - 16, 0);
    assert_float_equal(y[5], 5 + 16 - 16, 0);
    assert_float_equal(y[15], 15 - 16, 0);
    assert_float_equal(y[16], 3 + 16 - 16, 0);
    assert_float_equal(y[17], 3 - 16, 0);
    assert_float_equal(y[31], 3 + 16 - 16, 0);
}

/* Q4_K element i restated element by element from the layout description. */
static float q4k_ref(const uint8_t *b, const int *sc, const int *mn, int i)
{
    float d = br_quant_f16_to_f32((uint16_t)(b[0] | (b[1] << 8)));
    float dmin = br_quant_f16_to_f32((uint16_t)(b[2] | (b[3] << 8)));
    int group = i / 64;
    int within = i % 64;
    int sub = 2 * group + within / 32;
    uint8_t byte = b[16 + 32 * group + within % 32];
    int q = within < 32 ? (byte & 15) : (byte >> 4);
    return d * (float)sc[sub] * (float)q - dmin * (float)mn[sub];
}

static void test_q4_k_block(void **state)
{
    (void)state;
    uint8_t b[144];
    int sc[8] = {1, 63, 17, 40, 33, 62, 5, 48};
    int mn[8] = {0, 9, 63, 21, 50, 3, 61, 16};
    put_h(b, 0x3400);     /* 0.25 */
    put_h(b + 2, 0x2c00); /* 0.0625 */
    for (int s = 0; s < 4; s++) {
        b[4 + s] = (uint8_t)((sc[s] & 63) | ((sc[s + 4] >> 4) << 6));
        b[8 + s] = (uint8_t)((mn[s] & 63) | ((mn[s + 4] >> 4) << 6));
        b[12 + s] = (uint8_t)((sc[s + 4] & 15) | ((mn[s + 4] & 15) << 4));
    }
    srand(7);
    for (int i = 0; i < 128; i++) {
        b[16 + i] = (uint8_t)rand();
    }
    float y[256];
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q4_K, b, y, 256), BR_OK);
    for (int i = 0; i < 256; i++) {
        assert_float_equal(y[i], q4k_ref(b, sc, mn, i), 1e-6);
    }
    /* by hand: element 240 = group 3, high nibble of qs[96 + 16], sub-block 7 */
    float want = 0.25f * 48 * (float)(b[16 + 96 + 16] >> 4) - 0.0625f * 16;
    assert_float_equal(y[240], want, 1e-6);
    /* element 200 = group 3, low nibble of qs[96 + 8], sub-block 6 */
    want = 0.25f * 5 * (float)(b[16 + 96 + 8] & 15) - 0.0625f * 61;
    assert_float_equal(y[200], want, 1e-6);
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q4_K, b, y, 128), BR_ERR_INVAL);
}

/* Q6_K element i restated element by element. */
static float q6k_ref(const uint8_t *b, int i)
{
    float d = br_quant_f16_to_f32((uint16_t)(b[208] | (b[209] << 8)));
    int half = i / 128;
    int l = i % 128;
    int quarter = l / 32;
    int pos = l % 32;
    uint8_t lo = b[64 * half + (quarter & 1) * 32 + pos];
    int low4 = quarter >= 2 ? lo >> 4 : lo & 15;
    int high2 = (b[128 + 32 * half + pos] >> (2 * quarter)) & 3;
    int scale = (int8_t)b[192 + 8 * half + 2 * quarter + pos / 16];
    return d * (float)scale * (float)((low4 | (high2 << 4)) - 32);
}

static void test_q6_k_block(void **state)
{
    (void)state;
    uint8_t b[210];
    srand(11);
    for (int i = 0; i < 208; i++) {
        b[i] = (uint8_t)rand();
    }
    put_h(b + 208, 0x2400); /* 0.015625 */
    float y[512];
    uint8_t two[420];
    memcpy(two, b, 210);
    memcpy(two + 210, b, 210);
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q6_K, two, y, 512), BR_OK);
    for (int i = 0; i < 256; i++) {
        assert_float_equal(y[i], q6k_ref(b, i), 1e-6);
        assert_float_equal(y[256 + i], y[i], 0);
    }
    /* by hand: all-zero quants with scale -2 give d * -2 * -32 */
    memset(b, 0, 208);
    b[192] = (uint8_t)(int8_t)-2;
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q6_K, b, y, 256), BR_OK);
    assert_float_equal(y[0], 0.015625f * -2 * -32, 0);
    assert_float_equal(y[16], 0.0f, 0);
}

static void test_f16_f32_rows(void **state)
{
    (void)state;
    uint8_t h[4];
    put_h(h, 0x3c00);
    put_h(h + 2, 0xc000);
    float y[2];
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_F16, h, y, 2), BR_OK);
    assert_float_equal(y[0], 1.0f, 0);
    assert_float_equal(y[1], -2.0f, 0);
    float x[2] = {3.5f, -1.25f};
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_F32, x, y, 2), BR_OK);
    assert_memory_equal(x, y, sizeof(x));
    assert_int_equal(br_quant_dequantize_row((enum br_tensor_type)99, x, y, 2), BR_ERR_INVAL);
}

static void fill_random(float *x, size_t n, unsigned seed)
{
    srand(seed);
    for (size_t i = 0; i < n; i++) {
        x[i] = ((float)rand() / (float)RAND_MAX - 0.5f) * (float)(1 + (i / 32) % 7);
    }
    x[5] = 0; /* a zero block-local value and a zero block */
    for (size_t i = 64; i < 96; i++) {
        x[i] = 0;
    }
}

static void test_q8_0_round_trip(void **state)
{
    (void)state;
    enum { N = 32 * 40 };
    static float x[N];
    static float y[N];
    uint8_t q[34 * 40];
    fill_random(x, N, 3);
    assert_int_equal(br_quant_quantize_row_q8_0(x, q, N), BR_OK);
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q8_0, q, y, N), BR_OK);
    for (size_t b = 0; b < N / 32; b++) {
        float amax = 0;
        for (size_t j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(x[32 * b + j]));
        }
        float bound = amax / 127.0f * 0.5f * 1.002f + 1e-7f;
        for (size_t j = 0; j < 32; j++) {
            assert_true(fabsf(x[32 * b + j] - y[32 * b + j]) <= bound);
        }
    }
    for (size_t i = 64; i < 96; i++) {
        assert_float_equal(y[i], 0.0f, 0);
    }
    assert_int_equal(br_quant_quantize_row_q8_0(x, q, 31), BR_ERR_INVAL);
}

static void test_q4_0_round_trip(void **state)
{
    (void)state;
    enum { N = 32 * 40 };
    static float x[N];
    static float y[N];
    uint8_t q[18 * 40];
    fill_random(x, N, 4);
    assert_int_equal(br_quant_quantize_row_q4_0(x, q, N), BR_OK);
    assert_int_equal(br_quant_dequantize_row(BR_TENSOR_Q4_0, q, y, N), BR_OK);
    double sq = 0;
    for (size_t b = 0; b < N / 32; b++) {
        float amax = 0;
        for (size_t j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(x[32 * b + j]));
        }
        float step = amax / 8.0f;
        for (size_t j = 0; j < 32; j++) {
            float e = fabsf(x[32 * b + j] - y[32 * b + j]);
            assert_true(e <= step * 1.002f + 1e-7f);
            sq += (double)e * e;
        }
    }
    assert_true(sqrt(sq / N) < 0.12); /* values up to +-3.5, mean step ~ 0.25 */
    /* the extreme element itself is exact up to half rounding */
    assert_int_equal(br_quant_quantize_row_q4_0(x, q, 33), BR_ERR_INVAL);
}

/* Every quantized tensor of the Q4_K_M file against the f32 file, block by block. */
static void check_tensor_close(const char *name, const struct br_gguf_tensor *qt,
                               const struct br_gguf_tensor *ft)
{
    struct br_tensor qv;
    assert_int_equal(br_gguf_tensor_view(qt, &qv), BR_OK);
    size_t n = qv.rows * qv.cols;
    float *y = malloc(n * sizeof(float));
    assert_non_null(y);
    assert_int_equal(br_quant_dequantize_row(qv.type, qv.data, y, n), BR_OK);
    const float *x = ft->data;
    size_t bs = qv.type == BR_TENSOR_F16 ? 1 : 32;
    for (size_t b = 0; b < n / bs; b++) {
        float amax = 0;
        for (size_t j = 0; j < bs; j++) {
            amax = fmaxf(amax, fabsf(x[b * bs + j]));
        }
        /* F16: relative 2^-11; Q8_0: half a step of amax/127 plus up to 127 half-ulps of the
         * stored scale (llama-quantize rounds with the unrounded scale); Q5_0: one step of
         * amax/16 */
        float bound = qv.type == BR_TENSOR_F16    ? amax / 2048.0f
                      : qv.type == BR_TENSOR_Q8_0 ? amax / 127.0f * 0.57f
                                                  : amax / 16.0f * 1.01f;
        for (size_t j = 0; j < bs; j++) {
            float e = fabsf(x[b * bs + j] - y[b * bs + j]);
            if (e > bound + 1e-7f) {
                fail_msg("%s type %s block %zu: error %g > bound %g (amax %g)", name,
                         br_tensor_type_name(qv.type), b, (double)e, (double)bound, (double)amax);
            }
        }
    }
    free(y);
}

static void test_q4km_against_f32(void **state)
{
    (void)state;
    br_gguf *q = NULL;
    br_gguf *f = NULL;
    assert_int_equal(br_gguf_open(MODELS "stories260K/stories260K-Q4_K_M.gguf", &q, NULL, 0),
                     BR_OK);
    assert_int_equal(br_gguf_open(MODELS "stories260K/stories260K-f32.gguf", &f, NULL, 0), BR_OK);
    int checked = 0;
    for (size_t i = 0; i < br_gguf_tensor_count(q); i++) {
        const struct br_gguf_tensor *qt = br_gguf_tensor_at(q, i);
        char name[128];
        (void)snprintf(name, sizeof(name), "%.*s", (int)qt->name.len, qt->name.ptr);
        const struct br_gguf_tensor *ft = br_gguf_find_tensor(f, name);
        assert_non_null(ft);
        assert_memory_equal(qt->dims, ft->dims, sizeof(qt->dims));
        if (qt->ggml_type != BR_GGUF_GGML_F32) {
            check_tensor_close(name, qt, ft);
            checked++;
        }
    }
    assert_int_equal(checked, 37);
    br_gguf_close(q);
    br_gguf_close(f);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_known),        cmocka_unit_test(test_f16_round_trip_all),
        cmocka_unit_test(test_q8_0_block),       cmocka_unit_test(test_q4_0_block),
        cmocka_unit_test(test_q5_0_block),       cmocka_unit_test(test_q4_k_block),
        cmocka_unit_test(test_q6_k_block),       cmocka_unit_test(test_f16_f32_rows),
        cmocka_unit_test(test_q8_0_round_trip),  cmocka_unit_test(test_q4_0_round_trip),
        cmocka_unit_test(test_q4km_against_f32),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_quant", tests, NULL, NULL);
}
