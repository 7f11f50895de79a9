/* SPDX-License-Identifier: MIT */
/*
 * GGML block formats (layouts in quant.h), written from the format descriptions: half-float
 * conversion by bit manipulation, one dequantizer per block type, and round-to-nearest
 * quantizers for Q8_0 and Q4_0 whose scale is the half-rounded value actually stored (so the
 * error bound holds for the decoded numbers, not only for the unrounded scale).
 */
#include "engine/quant.h"

#include <math.h>
#include <string.h>

#include "core/err.h"

float br_quant_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in float */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    uint32_t bits = exp == 31 ? (sign | 0x7f800000u | (man << 13))
                              : (sign | ((exp + 112u) << 23) | (man << 13));
    float f = 0;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* |f| below 2^-14 as a half subnormal (or zero), rounded to nearest even. */
static uint16_t f16_small(uint32_t absx)
{
    uint32_t e = absx >> 23;
    if (e < 102) {
        return 0; /* below 2^-25: rounds to zero */
    }
    uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) {
        q++;
    }
    return (uint16_t)q;
}

uint16_t br_quant_f32_to_f16(float f)
{
    uint32_t x = 0;
    memcpy(&x, &f, sizeof(x));
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) {
        return (uint16_t)(sign | 0x7e00u); /* NaN */
    }
    if (absx >= 0x47800000u) {
        return (uint16_t)(sign | 0x7c00u); /* >= 65536 (or inf): infinity */
    }
    if (absx < 0x38800000u) {
        return (uint16_t)(sign | f16_small(absx));
    }
    uint32_t h = (absx - 0x38000000u) >> 13;
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) {
        h++; /* a carry into the exponent is still correct; 65520.. becomes infinity */
    }
    return (uint16_t)(sign | h);
}

static float half_at(const uint8_t *p)
{
    return br_quant_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

static void put_half(uint8_t *p, float v)
{
    uint16_t h = br_quant_f32_to_f16(v);
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

static void deq_f32(const uint8_t *b, float *y)
{
    memcpy(y, b, sizeof(float));
}

static void deq_f16(const uint8_t *b, float *y)
{
    y[0] = half_at(b);
}

static void deq_q8_0(const uint8_t *b, float *y)
{
    float d = half_at(b);
    for (int j = 0; j < 32; j++) {
        y[j] = d * (float)(int8_t)b[2 + j];
    }
}

static void deq_q4_0(const uint8_t *b, float *y)
{
    float d = half_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((qs[j] & 0x0f) - 8);
        y[j + 16] = d * (float)((qs[j] >> 4) - 8);
    }
}

static void deq_q5_0(const uint8_t *b, float *y)
{
    float d = half_at(b);
    uint32_t qh =
        (uint32_t)b[2] | ((uint32_t)b[3] << 8) | ((uint32_t)b[4] << 16) | ((uint32_t)b[5] << 24);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int lo = (int)((qs[j] & 0x0fu) | (((qh >> j) & 1u) << 4));
        int hi = (int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
        y[j] = d * (float)(lo - 16);
        y[j + 16] = d * (float)(hi - 16);
    }
}

/* Six-bit scale and min of sub-block s (0..7) from the 12 packed bytes of a Q4_K block. */
static void q4k_scale_min(const uint8_t *sc, int s, int *scale, int *min)
{
    if (s < 4) {
        *scale = sc[s] & 63;
        *min = sc[s + 4] & 63;
    } else {
        *scale = (sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4);
        *min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    }
}

static void deq_q4_k(const uint8_t *b, float *y)
{
    float d = half_at(b);
    float dmin = half_at(b + 2);
    const uint8_t *sc = b + 4;
    const uint8_t *qs = b + 16;
    for (size_t g = 0; g < 4; g++) { /* 4 groups of 64: two sub-blocks sharing 32 bytes of qs */
        int s0 = 0;
        int m0 = 0;
        int s1 = 0;
        int m1 = 0;
        q4k_scale_min(sc, (int)(2 * g), &s0, &m0);
        q4k_scale_min(sc, (int)(2 * g + 1), &s1, &m1);
        const uint8_t *q = qs + 32 * g;
        for (int l = 0; l < 32; l++) {
            y[64 * g + l] = d * (float)s0 * (float)(q[l] & 0x0f) - dmin * (float)m0;
            y[64 * g + 32 + l] = d * (float)s1 * (float)(q[l] >> 4) - dmin * (float)m1;
        }
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b;
    const uint8_t *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_at(b + 208);
    for (size_t h = 0; h < 2; h++) { /* two halves of 128 elements */
        const uint8_t *l4 = ql + 64 * h;
        const uint8_t *h2 = qh + 32 * h;
        const int8_t *s = sc + 8 * h;
        float *o = y + 128 * h;
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = (int)((l4[l] & 0x0f) | ((h2[l] & 3u) << 4)) - 32;
            int q2 = (int)((l4[l + 32] & 0x0f) | (((h2[l] >> 2) & 3u) << 4)) - 32;
            int q3 = (int)((l4[l] >> 4) | (((h2[l] >> 4) & 3u) << 4)) - 32;
            int q4 = (int)((l4[l + 32] >> 4) | (((h2[l] >> 6) & 3u) << 4)) - 32;
            o[l] = d * (float)s[is] * (float)q1;
            o[l + 32] = d * (float)s[is + 2] * (float)q2;
            o[l + 64] = d * (float)s[is + 4] * (float)q3;
            o[l + 96] = d * (float)s[is + 6] * (float)q4;
        }
    }
}

typedef void (*deq_fn)(const uint8_t *block, float *out);

int br_quant_dequantize_row(enum br_tensor_type type, const void *src, float *dst, size_t n)
{
    static const deq_fn fns[] = {
        [BR_TENSOR_F32] = deq_f32,   [BR_TENSOR_F16] = deq_f16,   [BR_TENSOR_Q8_0] = deq_q8_0,
        [BR_TENSOR_Q4_0] = deq_q4_0, [BR_TENSOR_Q4_K] = deq_q4_k, [BR_TENSOR_Q5_0] = deq_q5_0,
        [BR_TENSOR_Q6_K] = deq_q6_k,
    };
    size_t be = br_tensor_block_elems(type);
    size_t bb = br_tensor_block_bytes(type);
    if (be == 0 || (unsigned)type >= sizeof(fns) / sizeof(fns[0]) || n % be != 0) {
        return BR_ERR_INVAL;
    }
    const uint8_t *b = src;
    for (size_t i = 0; i < n / be; i++) {
        fns[type](b + i * bb, dst + i * be);
    }
    return BR_OK;
}

int br_quant_quantize_row_q8_0(const float *src, void *dst, size_t n)
{
    if (n % 32 != 0) {
        return BR_ERR_INVAL;
    }
    uint8_t *out = dst;
    for (size_t b = 0; b < n / 32; b++) {
        const float *x = src + 32 * b;
        uint8_t *blk = out + 34 * b;
        float amax = 0;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
        }
        put_half(blk, amax / 127.0f);
        float d = half_at(blk);
        float id = d > 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) {
            float q = fminf(127.0f, fmaxf(-127.0f, roundf(x[j] * id)));
            blk[2 + j] = (uint8_t)(int8_t)q;
        }
    }
    return BR_OK;
}

int br_quant_quantize_row_q4_0(const float *src, void *dst, size_t n)
{
    if (n % 32 != 0) {
        return BR_ERR_INVAL;
    }
    uint8_t *out = dst;
    for (size_t b = 0; b < n / 32; b++) {
        const float *x = src + 32 * b;
        uint8_t *blk = out + 18 * b;
        float ext = 0; /* the element of largest magnitude, with its sign */
        for (int j = 0; j < 32; j++) {
            if (fabsf(x[j]) > fabsf(ext)) {
                ext = x[j];
            }
        }
        put_half(blk, ext / -8.0f);
        float d = half_at(blk);
        float id = d != 0 ? 1.0f / d : 0.0f;
        uint8_t q[32];
        for (int j = 0; j < 32; j++) {
            float v = fminf(15.0f, fmaxf(0.0f, roundf(x[j] * id) + 8.0f));
            q[j] = (uint8_t)v;
        }
        for (int j = 0; j < 16; j++) {
            blk[2 + j] = (uint8_t)(q[j] | (q[j + 16] << 4));
        }
    }
    return BR_OK;
}
