/* SPDX-License-Identifier: MIT */
/*
 * GGML block formats: IEEE half conversion, dequantization of one row of any enum
 * br_tensor_type to float, and quantization of a float row to Q8_0 and Q4_0 (used by
 * `brigade quantize`). Block layouts (all little-endian, scales are IEEE halves):
 *   Q8_0 (32 elems, 34 bytes): d, int8 q[32];                         x = d * q
 *   Q4_0 (32 elems, 18 bytes): d, u8 qs[16]; element j < 16 is the low nibble of qs[j],
 *        element j + 16 its high nibble;                               x = d * (nibble - 8)
 *   Q5_0 (32 elems, 22 bytes): d, u8 qh[4] (bit j = 5th bit of element j), u8 qs[16] as Q4_0;
 *                                                                      x = d * (q5 - 16)
 *   Q4_K (256 elems, 144 bytes): d, dmin, u8 scales[12] (8 six-bit scales and 8 six-bit mins),
 *        u8 qs[128]; sub-block s of 32 elements: x = d * sc[s] * nibble - dmin * m[s]; each group
 *        of 64 elements uses 32 bytes of qs, low nibbles first then high nibbles.
 *   Q6_K (256 elems, 210 bytes): u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), int8
 *        scales[16] (one per 16 elements), d; x = d * scale * (q6 - 32).
 * All functions are pure and thread-safe; none allocates.
 */
#ifndef BR_ENGINE_QUANT_H
#define BR_ENGINE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/weights.h"

/** IEEE half (bits) to float, exact (subnormals, infinities, NaN kept). */
float br_quant_f16_to_f32(uint16_t h);

/** Float to IEEE half bits, rounded to nearest even; overflow gives infinity. */
uint16_t br_quant_f32_to_f16(float f);

/**
 * Dequantizes `n` elements (one row, or several consecutive rows) of `type` at `src` into
 * `dst`. Returns BR_ERR_INVAL when n is not a whole number of blocks or the type is unknown.
 */
int br_quant_dequantize_row(enum br_tensor_type type, const void *src, float *dst, size_t n);

/**
 * Quantizes `n` floats (n a multiple of 32) into Q8_0 / Q4_0 blocks at dst
 * (br_tensor_row_bytes(type, n) bytes). Error bound per element: Q8_0 half a step (d / 2,
 * d = max|x| / 127); Q4_0 one step (|d|, d = -(signed extreme) / 8). BR_ERR_INVAL on a bad n.
 */
int br_quant_quantize_row_q8_0(const float *src, void *dst, size_t n);
int br_quant_quantize_row_q4_0(const float *src, void *dst, size_t n);

#endif
