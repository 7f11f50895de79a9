/* SPDX-License-Identifier: MIT */
/*
 * Numeric kernels of the forward pass: matrix-vector products over struct br_tensor rows (the
 * single dispatch point on the tensor type), RMSNorm, softmax and the SwiGLU gate. F32 rows use
 * an AVX2+FMA path chosen at run time when the CPU has it, otherwise portable C. Quantized
 * types are not implemented yet: br_kernel_matvec returns BR_ERR_UNSUPPORTED for them.
 *
 * None of these allocate; all are thread-safe (they only write their output arguments).
 * Output buffers must not alias inputs unless stated.
 */
#ifndef BR_ENGINE_KERNELS_H
#define BR_ENGINE_KERNELS_H

#include <stddef.h>

#include "engine/weights.h"

/**
 * y[r] = dot(row r of w, x) for r in [0, w->rows): x has w->cols floats, y has w->rows.
 * Returns BR_OK, or BR_ERR_UNSUPPORTED when w->type has no kernel yet.
 */
int br_kernel_matvec(const struct br_tensor *w, const float *x, float *y);

/** Dot product of n floats (dispatches to AVX2+FMA when available). */
float br_kernel_dot_f32(const float *a, const float *b, size_t n);

/** The portable C dot product (the fallback path; exposed so tests cover it on any CPU). */
float br_kernel_dot_f32_portable(const float *a, const float *b, size_t n);

/**
 * out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i] for i < n; `weight` is an F32 (1, n)
 * tensor's data. out may equal x.
 */
void br_kernel_rmsnorm(float *out, const float *x, const float *weight, size_t n, float eps);

/** In-place softmax of x[0..n) (max-subtracted for stability); n >= 1. */
void br_kernel_softmax(float *x, size_t n);

/** In place: gate[i] = silu(gate[i]) * up[i] for i < n (the SwiGLU FFN activation). */
void br_kernel_swiglu(float *gate, const float *up, size_t n);

/** 1 when the AVX2+FMA path is in use (for logs and tests). */
int br_kernel_has_avx2(void);

#endif
