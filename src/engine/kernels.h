/* SPDX-License-Identifier: MIT */
/*
 * Numeric kernels of the forward pass: matrix-vector products over struct br_tensor rows (the
 * single dispatch point on the tensor type), RMSNorm, softmax and the SwiGLU gate. Every kernel
 * has an AVX2+FMA(+F16C) path chosen at run time when the CPU has it, otherwise portable C.
 *
 * Weight types of a matvec:
 *   F32   float dot products.
 *   F16   halves converted on the fly (F16C) and multiplied in float.
 *   Q8_0, Q4_0  integer dot products on the blocks: the activation x is quantized once per
 *         matvec to 32-element int8 blocks (struct br_kernel_q8x: x ~= d * q, q = round(x / d),
 *         d = max|x| / 127), each block pair gives an exact int32 sum that is scaled by
 *         d_w * d_x. So the result differs from dequantize + float dot by the rounding of x to
 *         8 bits (relative error about 1/254 of the block's largest |x| per element). The AVX2
 *         path reduces 8 blocks per step (lane k = block k's exact sum, one vector multiply by
 *         the 8 blocks' d_w * d_x), so it differs from the portable loop only in float
 *         summation order.
 *         A Q4_0 matrix may carry a packed copy (br_kernel_q4_0_pack: 8 rows' blocks side by
 *         side, made by the model loader on AVX2 CPUs); the AVX2/VNNI matvec then computes 8
 *         rows per step (lane r = row r, blocks summed in order), again with the same exact
 *         integer block sums, so only the float summation order differs.
 *   Q5_0, Q4_K, Q6_K  each row is dequantized 256 elements at a time into a stack buffer and
 *         multiplied with the float dot.
 * A matvec whose cols is not a whole number of the type's blocks is refused
 * (BR_ERR_UNSUPPORTED).
 *
 * Parallel matvecs: br_kernel_matvec_ex splits the rows over a struct br_pool; each row's sum is
 * computed by the same code whatever the split, so the result is bit-identical for any number
 * of threads.
 *
 * None of these allocate (except br_kernel_scratch_init); all are thread-safe (they only write
 * their output arguments and the scratch passed in). Output buffers must not alias inputs
 * unless stated.
 */
#ifndef BR_ENGINE_KERNELS_H
#define BR_ENGINE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/pool.h"
#include "engine/weights.h"

/* One 32-element block of an activation vector quantized for the Q8_0/Q4_0 integer dots:
 * x[j] ~= d * q[j]; sum = the sum of q[j] (used by the Q4_0 dot's -8 offset). */
struct br_kernel_q8x {
    float d;
    int32_t sum;
    int8_t q[32];
};

/* Caller-owned scratch of br_kernel_matvec_ex: room for the quantized activation of up to
 * `cap` input elements. Zero-initialised = no scratch (quantized matvecs then quantize x
 * block by block per row, slower but the same numbers). */
struct br_kernel_scratch {
    struct br_kernel_q8x *xq; /* cap / 32 blocks; owned (br_kernel_scratch_free) */
    size_t cap;               /* elements (a multiple of 32) */
    float *xd;                /* cap / 32: xq[b].d side by side (vector loads); owned */
    int32_t *xs;              /* cap / 32: 8 * xq[b].sum (Q4_0's nibble offset); owned */
};

/** Allocates scratch for matvecs with up to max_cols inputs. BR_OK or BR_ERR_NOMEM. */
int br_kernel_scratch_init(struct br_kernel_scratch *s, size_t max_cols);

/** Frees the scratch (zeroes it; a zeroed scratch is a no-op). */
void br_kernel_scratch_free(struct br_kernel_scratch *s);

/**
 * y = W x with optional scratch (may be NULL) and pool (may be NULL: the caller does all rows).
 * Small matrices (fewer than 64k weights: waking the pool costs more) run on the calling thread
 * only. Returns BR_OK or BR_ERR_UNSUPPORTED (unknown type, or cols not a whole number of
 * blocks). Allocates nothing.
 */
int br_kernel_matvec_ex(const struct br_tensor *w, const float *x, float *y,
                        struct br_kernel_scratch *scratch, struct br_pool *pool);

/**
 * Quantizes n floats (n a multiple of 32) into n / 32 activation blocks (the x side of the
 * Q8_0/Q4_0 dots). The AVX2 path gives bit-identical blocks to the portable one.
 */
void br_kernel_quantize_x(const float *x, struct br_kernel_q8x *out, size_t n);

/** The portable C quantizer (the fallback path; exposed so tests compare the two). */
void br_kernel_quantize_x_portable(const float *x, struct br_kernel_q8x *out, size_t n);

/**
 * Dot product of one weight row of `type` (cols elements, a whole number of blocks) with x.
 * xq: x quantized with br_kernel_quantize_x, required for Q8_0/Q4_0 (ignored otherwise).
 */
float br_kernel_dot_row(enum br_tensor_type type, const void *row, const float *x,
                        const struct br_kernel_q8x *xq, size_t cols);

/** The portable C block dots (exposed so tests cover the fallback on any CPU). */
float br_kernel_dot_q8_0_portable(const void *row, const struct br_kernel_q8x *xq, size_t nb);
float br_kernel_dot_q4_0_portable(const void *row, const struct br_kernel_q8x *xq, size_t nb);

/**
 * y[r] = dot(row r of w, x) for r in [0, w->rows): x has w->cols floats, y has w->rows.
 * Single-threaded, no scratch (br_kernel_matvec_ex(w, x, y, NULL, NULL)). Returns BR_OK, or
 * BR_ERR_UNSUPPORTED (unknown type, or cols not a whole number of blocks).
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

/**
 * y[i] += a * x[i] for i < n, multiply then add (two roundings, no FMA), so the AVX2 and
 * portable paths give identical results.
 */
void br_kernel_axpy(float *y, float a, const float *x, size_t n);

/** In-place softmax of x[0..n) (max-subtracted for stability); n >= 1. */
void br_kernel_softmax(float *x, size_t n);

/** In place: gate[i] = silu(gate[i]) * up[i] for i < n (the SwiGLU FFN activation). */
void br_kernel_swiglu(float *gate, const float *up, size_t n);

/** 1 when the AVX2+FMA+F16C path is in use (for logs and tests). */
int br_kernel_has_avx2(void);

/* Instruction-set paths of the kernels, narrowest first. VNNI: AVX2 plus AVX-512 VNNI on
 * 256-bit vectors (AVX512VL), used by the Q8_0/Q4_0 block dots (the same integer sums as AVX2,
 * so bit-identical results). */
enum br_kernel_isa { BR_KERNEL_ISA_PORTABLE = 0, BR_KERNEL_ISA_AVX2 = 1, BR_KERNEL_ISA_VNNI = 2 };

/** The widest path this CPU runs (the one every kernel uses); detected once, thread-safe. */
int br_kernel_isa(void);

/**
 * y = W x for a Q8_0 or Q4_0 matrix with at most 8192 columns on path `isa` (clamped to
 * br_kernel_isa()), x quantized here: lets tests and benchmarks compare the paths on one CPU.
 * Single-threaded, allocates nothing. BR_OK or BR_ERR_UNSUPPORTED (other type, more columns,
 * cols not whole blocks).
 */
int br_kernel_matvec_q_isa(int isa, const struct br_tensor *w, const float *x, float *y);

/*
 * Q4_0 packed for the AVX2/VNNI matvec: rows in groups of BR_KERNEL_Q4_0_PACK_ROWS (the last
 * group padded with zero rows), each group stored block by block; one block of a group is
 * BR_KERNEL_Q4_0_PACK_BLOCK_BYTES: the 8 rows' fp16 scales (16 bytes), then 4 x 32 bytes where
 * bytes [32v + 4r, 32v + 4r + 4) are row r's nibble bytes 4v..4v+3 unchanged. The same size as
 * the Q4_0 rows (8 x 18 bytes per group block), so a packed copy costs the matrix's size again.
 * A struct br_tensor whose `packed` points to such a copy of its data is multiplied from the
 * copy on AVX2 and VNNI (8 rows per step: one x load feeds 8 rows, no horizontal sums, one
 * scale conversion per 8 rows); the portable path uses `data`.
 */
enum { BR_KERNEL_Q4_0_PACK_ROWS = 8, BR_KERNEL_Q4_0_PACK_BLOCK_BYTES = 144 };

/** Bytes of the packed copy of a Q4_0 (rows, cols) matrix (cols a multiple of 32). */
size_t br_kernel_q4_0_packed_bytes(size_t rows, size_t cols);

/**
 * Writes the packed copy of w (Q4_0, cols a multiple of 32) to dst
 * (br_kernel_q4_0_packed_bytes(w->rows, w->cols) bytes, caller-owned). Does not set
 * w->packed. BR_OK or BR_ERR_UNSUPPORTED (other type, cols not whole blocks).
 */
int br_kernel_q4_0_pack(const struct br_tensor *w, void *dst);

#endif
