/* SPDX-License-Identifier: MIT */
/*
 * Kernels: portable C plus an AVX2+FMA dot product compiled with a target attribute and picked
 * at run time with __builtin_cpu_supports, so the binary still runs on CPUs without AVX2.
 */
#include "engine/kernels.h"

#include <math.h>
#include <stdint.h>

#include "core/err.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BR_KERNELS_X86 1
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

int br_kernel_has_avx2(void)
{
#ifdef BR_KERNELS_X86
    /* no cached flag (no mutable global): libgcc/compiler-rt fill the CPU model in a
     * constructor before main, so this is two loads from read-mostly data */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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

static void matvec_f32(const struct br_tensor *w, const float *x, float *y)
{
    const float *rows = w->data;
    for (size_t r = 0; r < w->rows; r++) {
        y[r] = br_kernel_dot_f32(rows + r * w->cols, x, w->cols);
    }
}

int br_kernel_matvec(const struct br_tensor *w, const float *x, float *y)
{
    /* The dispatch point for element types: add a case per quantized row format. */
    switch (w->type) {
    case BR_TENSOR_F32:
        matvec_f32(w, x, y);
        return BR_OK;
    case BR_TENSOR_F16:
    case BR_TENSOR_Q8_0:
    case BR_TENSOR_Q4_0:
    case BR_TENSOR_Q4_K:
    case BR_TENSOR_Q5_0:
    case BR_TENSOR_Q6_K:
    default:
        return BR_ERR_UNSUPPORTED;
    }
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
