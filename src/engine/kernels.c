/* SPDX-License-Identifier: MIT */
/*
 * Kernels: portable C plus an AVX2+FMA dot product compiled with a target attribute and picked
 * at run time with __builtin_cpu_supports, so the binary still runs on CPUs without AVX2.
 */
#include "engine/kernels.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "engine/quant.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BR_KERNELS_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

float br_kernel_dot_f32_portable(const float *a, const float *b, size_t n)
{
    /* four partial sums: lets the compiler vectorise without -ffast-math */
    float s0 = 0.0f;
    float s1 = 0.0f;
    float s2 = 0.0f;
    float s3 = 0.0f;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) {
        s0 += a[i] * b[i];
    }
    return (s0 + s1) + (s2 + s3);
}

#ifdef BR_KERNELS_X86
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, size_t n)
{
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    }
    __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 lo = _mm256_castps256_ps128(acc);
    __m128 hi = _mm256_extractf128_ps(acc, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    float r = _mm_cvtss_f32(s);
    for (; i < n; i++) {
        r += a[i] * b[i];
    }
    return r;
}
#endif

#ifdef BR_KERNELS_X86
static int detect_avx2(void)
{
    /* F16C (CPUID.1:ECX bit 29) comes with every AVX2 CPU, but ask anyway */
    unsigned a = 0;
    unsigned b = 0;
    unsigned c = 0;
    unsigned d = 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}

/* 0 = not asked yet, 1 = no, 2 = yes. An atomic: threads that race here all store the same
 * answer (CPUID is slow, under a hypervisor it traps, so it is asked once). */
static atomic_int avx2_state;
#endif

int br_kernel_has_avx2(void)
{
#ifdef BR_KERNELS_X86
    int st = atomic_load_explicit(&avx2_state, memory_order_relaxed);
    if (st == 0) {
        st = detect_avx2() ? 2 : 1;
        atomic_store_explicit(&avx2_state, st, memory_order_relaxed);
    }
    return st == 2;
#else
    return 0;
#endif
}

float br_kernel_dot_f32(const float *a, const float *b, size_t n)
{
#ifdef BR_KERNELS_X86
    if (br_kernel_has_avx2()) {
        return dot_avx2(a, b, n);
    }
#endif
    return br_kernel_dot_f32_portable(a, b, n);
}

/* ---- activation quantization (the x side of the Q8_0/Q4_0 dots) ---- */

void br_kernel_quantize_x(const float *x, struct br_kernel_q8x *out, size_t n)
{
    for (size_t b = 0; b < n / 32; b++) {
        const float *v = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(v[j]));
        }
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)lrintf(v[j] * id);
            q = q > 127 ? 127 : (q < -127 ? -127 : q);
            out[b].q[j] = (int8_t)q;
            sum += q;
        }
        out[b].d = d;
        out[b].sum = sum;
    }
}

/* ---- portable block dots ---- */

static float half_le(const uint8_t *p)
{
    return br_quant_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

float br_kernel_dot_q8_0_portable(const void *row, const struct br_kernel_q8x *xq, size_t nb)
{
    const uint8_t *b = row;
    float acc = 0.0f;
    for (size_t i = 0; i < nb; i++, b += 34) {
        const int8_t *q = (const int8_t *)(b + 2);
        int32_t s = 0;
        for (int j = 0; j < 32; j++) {
            s += (int32_t)q[j] * (int32_t)xq[i].q[j];
        }
        acc += half_le(b) * xq[i].d * (float)s;
    }
    return acc;
}

float br_kernel_dot_q4_0_portable(const void *row, const struct br_kernel_q8x *xq, size_t nb)
{
    const uint8_t *b = row;
    float acc = 0.0f;
    for (size_t i = 0; i < nb; i++, b += 18) {
        const uint8_t *qs = b + 2;
        const int8_t *xv = xq[i].q;
        int32_t s = 0;
        for (int j = 0; j < 16; j++) {
            s += (int32_t)(qs[j] & 0x0f) * xv[j] + (int32_t)(qs[j] >> 4) * xv[j + 16];
        }
        s -= 8 * xq[i].sum; /* nibble - 8 */
        acc += half_le(b) * xq[i].d * (float)s;
    }
    return acc;
}

static float dot_f16_portable(const uint8_t *row, const float *x, size_t n)
{
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) {
        acc += half_le(row + 2 * i) * x[i];
    }
    return acc;
}

/* ---- AVX2 block dots ---- */

#ifdef BR_KERNELS_X86
#define BR_AVX2 __attribute__((target("avx2,fma,f16c")))

BR_AVX2 static float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}

BR_AVX2 static float half_f16c(const uint8_t *p)
{
    uint16_t h = 0;
    memcpy(&h, p, sizeof(h));
    return _cvtsh_ss(h);
}

/* Sum over 32 byte pairs of unsigned a times signed b, as 8 float lanes. */
BR_AVX2 static __m256 madd_us8(__m256i a, __m256i b)
{
    __m256i p16 = _mm256_maddubs_epi16(a, b);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/* acc + one Q8_0 block times one activation block, as 8 float lanes scaled by d_w * d_x. */
BR_AVX2 static __m256 block_q8_0(const uint8_t *b, const struct br_kernel_q8x *xb, __m256 acc)
{
    __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(b + 2));
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xb->q);
    /* |w| * (x with w's sign): maddubs needs one unsigned operand */
    __m256 p = madd_us8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_fmadd_ps(_mm256_set1_ps(half_f16c(b) * xb->d), p, acc);
}

BR_AVX2 static float dot_q8_0_avx2(const uint8_t *b, const struct br_kernel_q8x *xq, size_t nb)
{
    /* two accumulators: consecutive blocks do not wait for each other's add */
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = block_q8_0(b + 34 * i, &xq[i], acc0);
        acc1 = block_q8_0(b + 34 * (i + 1), &xq[i + 1], acc1);
    }
    if (i < nb) {
        acc0 = block_q8_0(b + 34 * i, &xq[i], acc0);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

/* acc + one Q4_0 block times one activation block, as 8 float lanes scaled by d_w * d_x. */
BR_AVX2 static __m256 block_q4_0(const uint8_t *b, const struct br_kernel_q8x *xb, __m256 acc)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)(b + 2));
    /* lanes 0..15: low nibbles (elements 0..15); lanes 16..31: high nibbles (16..31) */
    __m256i nib = _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1),
        _mm256_set1_epi8(0x0f));
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xb->q);
    __m256i p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, x), _mm256_set1_epi16(1));
    /* the nibbles' -8: the 8 lanes together lose 8 * sum(q_x) */
    p32 = _mm256_sub_epi32(p32, _mm256_set1_epi32(xb->sum));
    return _mm256_fmadd_ps(_mm256_set1_ps(half_f16c(b) * xb->d), _mm256_cvtepi32_ps(p32), acc);
}

BR_AVX2 static float dot_q4_0_avx2(const uint8_t *b, const struct br_kernel_q8x *xq, size_t nb)
{
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = block_q4_0(b + 18 * i, &xq[i], acc0);
        acc1 = block_q4_0(b + 18 * (i + 1), &xq[i + 1], acc1);
    }
    if (i < nb) {
        acc0 = block_q4_0(b + 18 * i, &xq[i], acc0);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

BR_AVX2 static float dot_f16_avx2(const uint8_t *row, const float *x, size_t n)
{
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * i));
        __m256 w0 = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
        __m256 w1 = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
    }
    float r = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        r += half_f16c(row + 2 * i) * x[i];
    }
    return r;
}
#endif

/* ---- row dots and matvec ---- */

/* Q5_0 / Q4_K / Q6_K: dequantize 256 elements at a time (a whole number of blocks of every
 * type) into a stack buffer and use the float dot. */
static float dot_dequant(enum br_tensor_type type, const uint8_t *row, const float *x, size_t cols)
{
    float buf[256];
    size_t be = br_tensor_block_elems(type);
    size_t bb = br_tensor_block_bytes(type);
    float acc = 0.0f;
    for (size_t off = 0; off < cols; off += 256) {
        size_t n = cols - off < 256 ? cols - off : 256;
        (void)br_quant_dequantize_row(type, row + off / be * bb, buf, n);
        acc += br_kernel_dot_f32(buf, x + off, n);
    }
    return acc;
}

/* Q8_0/Q4_0 rows against a quantized x (nb blocks). */
static float dot_q_blocks(enum br_tensor_type type, const uint8_t *row,
                          const struct br_kernel_q8x *xq, size_t nb)
{
    int q8 = type == BR_TENSOR_Q8_0;
#ifdef BR_KERNELS_X86
    if (br_kernel_has_avx2()) {
        return q8 ? dot_q8_0_avx2(row, xq, nb) : dot_q4_0_avx2(row, xq, nb);
    }
#endif
    return q8 ? br_kernel_dot_q8_0_portable(row, xq, nb) : br_kernel_dot_q4_0_portable(row, xq, nb);
}

/* Q8_0/Q4_0 without a quantized x: quantize x 8 blocks at a time next to the row. */
static float dot_q_unscratched(enum br_tensor_type type, const uint8_t *row, const float *x,
                               size_t cols)
{
    struct br_kernel_q8x xq[8];
    size_t bb = br_tensor_block_bytes(type);
    float acc = 0.0f;
    for (size_t off = 0; off < cols; off += 256) {
        size_t n = cols - off < 256 ? cols - off : 256;
        br_kernel_quantize_x(x + off, xq, n);
        acc += dot_q_blocks(type, row + off / 32 * bb, xq, n / 32);
    }
    return acc;
}

float br_kernel_dot_row(enum br_tensor_type type, const void *row, const float *x,
                        const struct br_kernel_q8x *xq, size_t cols)
{
    switch (type) {
    case BR_TENSOR_F32:
        return br_kernel_dot_f32(row, x, cols);
    case BR_TENSOR_F16:
#ifdef BR_KERNELS_X86
        if (br_kernel_has_avx2()) {
            return dot_f16_avx2(row, x, cols);
        }
#endif
        return dot_f16_portable(row, x, cols);
    case BR_TENSOR_Q8_0:
    case BR_TENSOR_Q4_0:
        return xq ? dot_q_blocks(type, row, xq, cols / 32) : dot_q_unscratched(type, row, x, cols);
    case BR_TENSOR_Q5_0:
    case BR_TENSOR_Q4_K:
    case BR_TENSOR_Q6_K:
        return dot_dequant(type, row, x, cols);
    default:
        return 0.0f;
    }
}

int br_kernel_scratch_init(struct br_kernel_scratch *s, size_t max_cols)
{
    size_t nb = (max_cols + 31) / 32;
    s->xq = br_calloc(nb ? nb : 1, sizeof(*s->xq));
    s->cap = s->xq ? nb * 32 : 0;
    return s->xq ? BR_OK : BR_ERR_NOMEM;
}

void br_kernel_scratch_free(struct br_kernel_scratch *s)
{
    br_free(s->xq);
    s->xq = NULL;
    s->cap = 0;
}

struct matvec_job {
    const struct br_tensor *w;
    const float *x;
    const struct br_kernel_q8x *xq;
    float *y;
    size_t row_bytes;
};

static void matvec_rows(void *ctx, int index, int count)
{
    const struct matvec_job *j = ctx;
    size_t rows = j->w->rows;
    size_t r0 = rows * (size_t)index / (size_t)count;
    size_t r1 = rows * (size_t)(index + 1) / (size_t)count;
    const uint8_t *base = j->w->data;
    for (size_t r = r0; r < r1; r++) {
        j->y[r] = br_kernel_dot_row(j->w->type, base + r * j->row_bytes, j->x, j->xq, j->w->cols);
    }
}

/* Below this many weights a matvec is not worth waking the workers for. */
enum { MATVEC_PARALLEL_MIN = 32768 };

/* NOLINTNEXTLINE(readability-non-const-parameter): y is written through the job */
int br_kernel_matvec_ex(const struct br_tensor *w, const float *x, float *y,
                        struct br_kernel_scratch *scratch, struct br_pool *pool)
{
    size_t rb = br_tensor_row_bytes(w->type, w->cols);
    if (br_tensor_block_elems(w->type) == 0 || (rb == 0 && w->cols != 0)) {
        return BR_ERR_UNSUPPORTED; /* unknown type or cols not a whole number of blocks */
    }
    struct matvec_job job = {.w = w, .x = x, .xq = NULL, .y = y, .row_bytes = rb};
    int quantized_x = w->type == BR_TENSOR_Q8_0 || w->type == BR_TENSOR_Q4_0;
    if (quantized_x && scratch && scratch->cap >= w->cols) {
        br_kernel_quantize_x(x, scratch->xq, w->cols);
        job.xq = scratch->xq;
    }
    if (pool && br_pool_size(pool) > 1 && w->rows * w->cols >= MATVEC_PARALLEL_MIN) {
        br_pool_run(pool, matvec_rows, &job);
    } else {
        matvec_rows(&job, 0, 1);
    }
    return BR_OK;
}

int br_kernel_matvec(const struct br_tensor *w, const float *x, float *y)
{
    return br_kernel_matvec_ex(w, x, y, NULL, NULL);
}

void br_kernel_rmsnorm(float *out, const float *x, const float *weight, size_t n, float eps)
{
    float ss = 0.0f;
    for (size_t i = 0; i < n; i++) {
        ss += x[i] * x[i];
    }
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (size_t i = 0; i < n; i++) {
        out[i] = weight[i] * (scale * x[i]);
    }
}

void br_kernel_softmax(float *x, size_t n)
{
    float max = x[0];
    for (size_t i = 1; i < n; i++) {
        max = x[i] > max ? x[i] : max;
    }
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    for (size_t i = 0; i < n; i++) {
        x[i] /= sum;
    }
}

void br_kernel_swiglu(float *gate, const float *up, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
