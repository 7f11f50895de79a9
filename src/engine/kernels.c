/* SPDX-License-Identifier: MIT */
/*
 * Kernels: portable C plus AVX2+FMA+F16C versions compiled with a target attribute and picked
 * at run time with __builtin_cpu_supports, so the binary still runs on CPUs without AVX2.
 *
 * Decode speed (one token = one matvec per weight matrix) comes from the Q8_0/Q4_0 row dots:
 * a matvec quantizes x once (vectorised, the same blocks as the portable quantizer) and keeps
 * copies of the blocks' d and sums side by side, the row loop runs inside the vector code,
 * and each step handles 8 blocks with one fp16 scale conversion, one multiply and one FMA for
 * all 8 (bench/engine/kernels_bench.c compares this with the previous one-block-per-step
 * kernels). A Q4_0 matrix with a packed copy (br_kernel_q4_0_pack) goes 8 rows at a time
 * instead: lane r of every vector is row r, so the 4-byte x broadcasts feed 8 rows, the block
 * sums need no horizontal reduction and the 8 scales are one fp16 load and conversion (about
 * twice as fast per block in cache as the row-at-a-time Q4_0 kernel, kernels_bench).
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

/* AVX-512 VNNI with 256-bit vectors (vpdpbusd on ymm needs AVX512VL too). libgcc reports
 * AVX-512 features only when the OS saves their state. */
static int detect_vnni(void)
{
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
}

/* 0 = not asked yet, else 1 + the level (BR_KERNEL_ISA_*). An atomic: threads that race here
 * all store the same answer (CPUID is slow, under a hypervisor it traps, so it is asked
 * once). */
static atomic_int isa_state;
#endif

int br_kernel_isa(void)
{
#ifdef BR_KERNELS_X86
    int st = atomic_load_explicit(&isa_state, memory_order_relaxed);
    if (st == 0) {
        int level = BR_KERNEL_ISA_PORTABLE;
        if (detect_avx2()) {
            level = detect_vnni() ? BR_KERNEL_ISA_VNNI : BR_KERNEL_ISA_AVX2;
        }
        st = 1 + level;
        atomic_store_explicit(&isa_state, st, memory_order_relaxed);
    }
    return st - 1;
#else
    return BR_KERNEL_ISA_PORTABLE;
#endif
}

int br_kernel_has_avx2(void)
{
    return br_kernel_isa() >= BR_KERNEL_ISA_AVX2;
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

void br_kernel_quantize_x_portable(const float *x, struct br_kernel_q8x *out, size_t n)
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

/* Sum over 32 byte pairs of unsigned a times signed b, as 8 int32 lanes. */
BR_AVX2 static __m256i madd_us8(__m256i a, __m256i b)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}

/* One Q8_0 block (34 bytes at b) times x's 32 int8 as 8 int32 partial sums. |w| * (x with w's
 * sign): maddubs needs one unsigned operand (w = -128 gives |w| = 128 as a byte, exact). */
BR_AVX2 static __m256i pair_q8_0(const uint8_t *b, const int8_t *xq)
{
    __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(b + 2));
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xq);
    return madd_us8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

/* One Q4_0 block (18 bytes at b) times x's 32 int8 as 8 int32 partial sums (nibbles as 0..15,
 * the -8 is the caller's). The 16 bytes go to both halves with one broadcast load; the upper
 * half is shifted right by 4: lanes 0..15 hold elements 0..15 (low nibbles), 16..31 the high. */
BR_AVX2 static __m256i pair_q4_0(const uint8_t *b, const int8_t *xq)
{
    __m256i raw =
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(b + 2)));
    __m256i nib = _mm256_and_si256(_mm256_srlv_epi64(raw, _mm256_set_epi64x(4, 4, 0, 0)),
                                   _mm256_set1_epi8(0x0f));
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xq);
    return madd_us8(nib, x);
}

/* AVX-512 VNNI (256-bit, EVEX): vpdpbusd sums the four byte products of each lane into int32
 * in one instruction, replacing maddubs + madd. Same exact integer sums as above. */
#define BR_VNNI __attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni")))

BR_VNNI static inline __m256i pair_q8_0_vnni(const uint8_t *b, const int8_t *xq)
{
    __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(b + 2));
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xq);
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w),
                               _mm256_sign_epi8(x, w));
}

BR_VNNI static inline __m256i pair_q4_0_vnni(const uint8_t *b, const int8_t *xq)
{
    __m256i raw =
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(b + 2)));
    __m256i nib = _mm256_and_si256(_mm256_srlv_epi64(raw, _mm256_set_epi64x(4, 4, 0, 0)),
                                   _mm256_set1_epi8(0x0f));
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xq);
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), nib, x);
}

/* One of the pair_* functions above: block at b times 32 int8 of x, as 8 int32 lanes. The
 * functions below take it as an argument and are always inlined, so that each caller (AVX2,
 * VNNI) gets its own copy with the pair inlined. */
typedef __m256i (*pair_fn)(const uint8_t *b, const int8_t *xq);

#define BR_INLINE __attribute__((always_inline)) inline

/* Lane k of the result = the sum of the 8 lanes of block k's partial sums p[k] (written
 * out: a loop over k would keep p in memory). */
BR_AVX2 static BR_INLINE __m256i sum8(pair_fn pair, const uint8_t *b, size_t bb,
                                      const struct br_kernel_q8x *xq)
{
    __m256i a =
        _mm256_hadd_epi32(_mm256_hadd_epi32(pair(b, xq[0].q), pair(b + bb, xq[1].q)),
                          _mm256_hadd_epi32(pair(b + 2 * bb, xq[2].q), pair(b + 3 * bb, xq[3].q)));
    __m256i c =
        _mm256_hadd_epi32(_mm256_hadd_epi32(pair(b + 4 * bb, xq[4].q), pair(b + 5 * bb, xq[5].q)),
                          _mm256_hadd_epi32(pair(b + 6 * bb, xq[6].q), pair(b + 7 * bb, xq[7].q)));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, c, 0x20),
                            _mm256_permute2x128_si256(a, c, 0x31));
}

/* The fp16 scale of the block at b (little-endian, like the x86 load). */
static inline int half_bits(const uint8_t *b)
{
    uint16_t h = 0;
    memcpy(&h, b, sizeof(h));
    return h;
}

/* The fp16 scales of 8 consecutive blocks (stride bytes apart) as 8 floats. */
BR_AVX2 static inline __m256 scales8(const uint8_t *b, size_t stride)
{
    __m128i v = _mm_cvtsi32_si128(half_bits(b));
    v = _mm_insert_epi16(v, half_bits(b + stride), 1);
    v = _mm_insert_epi16(v, half_bits(b + 2 * stride), 2);
    v = _mm_insert_epi16(v, half_bits(b + 3 * stride), 3);
    v = _mm_insert_epi16(v, half_bits(b + 4 * stride), 4);
    v = _mm_insert_epi16(v, half_bits(b + 5 * stride), 5);
    v = _mm_insert_epi16(v, half_bits(b + 6 * stride), 6);
    v = _mm_insert_epi16(v, half_bits(b + 7 * stride), 7);
    return _mm256_cvtph_ps(v);
}

/*
 * Q8_0 / Q4_0 row dots: 8 blocks per step. Each block's 32 products are summed to 8 int32
 * lanes, the 8 blocks' lanes are reduced together so that lane k holds block k's exact sum,
 * and one vector FMA adds sum_k * (d_w[k] * d_x[k]) to 8 float accumulators (lane k sums the
 * blocks i = k mod 8). So the fp16 scales are converted 8 at a time and nothing is broadcast
 * per block. A row's last nb mod 8 blocks go through one block at a time. The result depends
 * only on the row and x, never on how a matvec's rows are split.
 * xd[i] = xq[i].d, xs[i] = 8 * xq[i].sum (contiguous copies, one vector load per 8 blocks).
 */
BR_AVX2 static BR_INLINE float dot_q8_0(pair_fn pair, const uint8_t *b,
                                        const struct br_kernel_q8x *xq, const float *xd, size_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        const uint8_t *bi = b + 34 * i;
        __m256i sum = sum8(pair, bi, 34, xq + i);
        __m256 d = _mm256_mul_ps(scales8(bi, 34), _mm256_loadu_ps(xd + i));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc);
    }
    __m256 tail = _mm256_setzero_ps();
    for (; i < nb; i++) {
        const uint8_t *bi = b + 34 * i;
        __m256 d = _mm256_set1_ps(half_f16c(bi) * xd[i]);
        tail = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pair(bi, xq[i].q)), d, tail);
    }
    return hsum256(_mm256_add_ps(acc, tail));
}

BR_AVX2 static BR_INLINE float dot_q4_0(pair_fn pair, const uint8_t *b,
                                        const struct br_kernel_q8x *xq, const float *xd,
                                        const int32_t *xs, size_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        const uint8_t *bi = b + 18 * i;
        /* the nibbles' -8: block k loses 8 * sum(q_x of block k) */
        __m256i s = _mm256_sub_epi32(sum8(pair, bi, 18, xq + i),
                                     _mm256_loadu_si256((const __m256i *)(const void *)(xs + i)));
        __m256 d = _mm256_mul_ps(scales8(bi, 18), _mm256_loadu_ps(xd + i));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
    }
    __m256 tail = _mm256_setzero_ps();
    for (; i < nb; i++) {
        const uint8_t *bi = b + 18 * i;
        /* 8 lanes each lose sum(q_x): 8 * sum in total */
        __m256i s = _mm256_sub_epi32(pair(bi, xq[i].q), _mm256_set1_epi32(xs[i] / 8));
        __m256 d = _mm256_set1_ps(half_f16c(bi) * xd[i]);
        tail = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, tail);
    }
    return hsum256(_mm256_add_ps(acc, tail));
}

/* y[r] for rows [r0, r1) of a Q8_0 or Q4_0 matrix (rb bytes per row): the row loop inside
 * the vector code, so a short row (768 elements: about 25 ns) pays no call or dispatch. */
BR_AVX2 static void rows_q_avx2(int q8, const uint8_t *base, size_t rb, size_t r0, size_t r1,
                                const struct br_kernel_q8x *xq, const float *xd, const int32_t *xs,
                                size_t nb, float *y)
{
    if (q8) {
        for (size_t r = r0; r < r1; r++) {
            y[r] = dot_q8_0(pair_q8_0, base + r * rb, xq, xd, nb);
        }
    } else {
        for (size_t r = r0; r < r1; r++) {
            y[r] = dot_q4_0(pair_q4_0, base + r * rb, xq, xd, xs, nb);
        }
    }
}

/* rows_q_avx2 with the VNNI block pairs: bit-identical results (the same integer sums, the
 * same float operations in the same order). */
BR_VNNI static void rows_q_vnni(int q8, const uint8_t *base, size_t rb, size_t r0, size_t r1,
                                const struct br_kernel_q8x *xq, const float *xd, const int32_t *xs,
                                size_t nb, float *y)
{
    if (q8) {
        for (size_t r = r0; r < r1; r++) {
            y[r] = dot_q8_0(pair_q8_0_vnni, base + r * rb, xq, xd, nb);
        }
    } else {
        for (size_t r = r0; r < r1; r++) {
            y[r] = dot_q4_0(pair_q4_0_vnni, base + r * rb, xq, xd, xs, nb);
        }
    }
}

/* ---- Q4_0 packed 8 rows side by side (br_kernel_q4_0_pack) ---- */

/* One packed block of 8 rows (the 128 nibble bytes at q) against x's 32 int8 (xv): lane r =
 * row r's exact sum of nibble * x, nibbles as 0..15. 32-byte vector v holds, in lane r, row r's
 * bytes 4v..4v+3: low nibbles are elements 4v..4v+3, high nibbles 16+4v..16+4v+3, so one
 * broadcast of 4 x bytes feeds all 8 rows. maddubs gives int16 pairs; 8 of them summed stay
 * within int16 (16 products of at most 15 * 127: |sum| <= 30480), then one madd to int32. */
BR_AVX2 static inline __m256i gsum_avx2(const uint8_t *q, const int8_t *xv)
{
    const __m256i m = _mm256_set1_epi8(0x0f);
    __m256i s0 = _mm256_setzero_si256();
    __m256i s1 = _mm256_setzero_si256();
    for (size_t v = 0; v < 4; v++) {
        int32_t xl = 0;
        int32_t xh = 0;
        memcpy(&xl, xv + 4 * v, 4);
        memcpy(&xh, xv + 16 + 4 * v, 4);
        __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(q + 32 * v));
        s0 = _mm256_add_epi16(s0,
                              _mm256_maddubs_epi16(_mm256_and_si256(w, m), _mm256_set1_epi32(xl)));
        s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 4), m),
                                                       _mm256_set1_epi32(xh)));
    }
    return _mm256_madd_epi16(_mm256_add_epi16(s0, s1), _mm256_set1_epi16(1));
}

/* gsum_avx2 with vpdpbusd: the same exact sums. */
BR_VNNI static inline __m256i gsum_vnni(const uint8_t *q, const int8_t *xv)
{
    const __m256i m = _mm256_set1_epi8(0x0f);
    __m256i s0 = _mm256_setzero_si256();
    __m256i s1 = _mm256_setzero_si256();
    for (size_t v = 0; v < 4; v++) {
        int32_t xl = 0;
        int32_t xh = 0;
        memcpy(&xl, xv + 4 * v, 4);
        memcpy(&xh, xv + 16 + 4 * v, 4);
        __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(q + 32 * v));
        s0 = _mm256_dpbusd_epi32(s0, _mm256_and_si256(w, m), _mm256_set1_epi32(xl));
        s1 = _mm256_dpbusd_epi32(s1, _mm256_and_si256(_mm256_srli_epi16(w, 4), m),
                                 _mm256_set1_epi32(xh));
    }
    return _mm256_add_epi32(s0, s1);
}

typedef __m256i (*gsum_fn)(const uint8_t *q, const int8_t *xv);

/*
 * y[r] for rows [r0, r1) of a packed Q4_0 matrix (nb blocks per row). Lane r of one
 * accumulator is row r of the group: per block one vector of exact sums minus 8 * sum(q_x),
 * times the 8 rows' scales (one fp16 conversion) times d_x, added with one FMA, blocks in
 * order. A group is always computed whole and only the rows in [r0, r1) are stored, so a row's
 * value does not depend on how a matvec's rows are split.
 */
BR_AVX2 static BR_INLINE void rows_q4_0_packed(gsum_fn gsum, const uint8_t *packed, size_t nb,
                                               size_t r0, size_t r1, const struct br_kernel_q8x *xq,
                                               const float *xd, const int32_t *xs, float *y)
{
    for (size_t g = r0 / BR_KERNEL_Q4_0_PACK_ROWS; g * BR_KERNEL_Q4_0_PACK_ROWS < r1; g++) {
        const uint8_t *p = packed + g * nb * BR_KERNEL_Q4_0_PACK_BLOCK_BYTES;
        __m256 acc = _mm256_setzero_ps();
        for (size_t i = 0; i < nb; i++, p += BR_KERNEL_Q4_0_PACK_BLOCK_BYTES) {
            __m256i s = _mm256_sub_epi32(gsum(p + 16, xq[i].q), _mm256_set1_epi32(xs[i]));
            __m256 d =
                _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p)),
                              _mm256_set1_ps(xd[i]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
        }
        size_t first = g * BR_KERNEL_Q4_0_PACK_ROWS;
        size_t a = first < r0 ? r0 : first;
        size_t b = first + BR_KERNEL_Q4_0_PACK_ROWS < r1 ? first + BR_KERNEL_Q4_0_PACK_ROWS : r1;
        if (a == first && b == first + BR_KERNEL_Q4_0_PACK_ROWS) {
            _mm256_storeu_ps(y + first, acc);
        } else {
            float t[BR_KERNEL_Q4_0_PACK_ROWS];
            _mm256_storeu_ps(t, acc);
            for (size_t r = a; r < b; r++) {
                y[r] = t[r - first];
            }
        }
    }
}

BR_AVX2 static void rows_q4_0_packed_avx2(const uint8_t *packed, size_t nb, size_t r0, size_t r1,
                                          const struct br_kernel_q8x *xq, const float *xd,
                                          const int32_t *xs, float *y)
{
    rows_q4_0_packed(gsum_avx2, packed, nb, r0, r1, xq, xd, xs, y);
}

BR_VNNI static void rows_q4_0_packed_vnni(const uint8_t *packed, size_t nb, size_t r0, size_t r1,
                                          const struct br_kernel_q8x *xq, const float *xd,
                                          const int32_t *xs, float *y)
{
    rows_q4_0_packed(gsum_vnni, packed, nb, r0, r1, xq, xd, xs, y);
}

/* Sum of the 8 lanes in the order ((0+1)+(2+3)) + ((4+5)+(6+7)): the order in which
 * rows_f32_skinny_avx2 reduces 8 rows at once, so a row gets the same float either way. */
BR_AVX2 static inline float hsum256_tree(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_hadd_ps(lo, lo);
    hi = _mm_hadd_ps(hi, hi);
    lo = _mm_hadd_ps(lo, lo);
    hi = _mm_hadd_ps(hi, hi);
    return _mm_cvtss_f32(lo) + _mm_cvtss_f32(hi);
}

/* One row of an F32 matrix with cols a multiple of 8: one FMA chain, hsum256_tree. */
BR_AVX2 static inline __m256 row_f32_acc(const float *w, const float *x, size_t cols)
{
    __m256 acc = _mm256_setzero_ps();
    for (size_t c = 0; c < cols; c += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + c), _mm256_loadu_ps(x + c), acc);
    }
    return acc;
}

/*
 * y[r] for rows [r0, r1) of a short-rowed F32 matrix (cols a multiple of 8, at most
 * SKINNY_COLS: LoRA's B, stories260K's matrices), where a call, a loop and a reduction per row
 * would cost more than the row. 8 rows per step: 8 FMA chains reduced together with hadd, so
 * lane k holds row k's sum; leftover rows get the same arithmetic one at a time, so a row's
 * value does not depend on where a chunk of rows starts.
 */
BR_AVX2 static void rows_f32_skinny_avx2(const float *w, size_t cols, size_t r0, size_t r1,
                                         const float *x, float *y)
{
    size_t r = r0;
    for (; r + 8 <= r1; r += 8) {
        const float *wr = w + r * cols;
        __m256 a = _mm256_hadd_ps(
            _mm256_hadd_ps(row_f32_acc(wr, x, cols), row_f32_acc(wr + cols, x, cols)),
            _mm256_hadd_ps(row_f32_acc(wr + 2 * cols, x, cols),
                           row_f32_acc(wr + 3 * cols, x, cols)));
        __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(row_f32_acc(wr + 4 * cols, x, cols),
                                                 row_f32_acc(wr + 5 * cols, x, cols)),
                                  _mm256_hadd_ps(row_f32_acc(wr + 6 * cols, x, cols),
                                                 row_f32_acc(wr + 7 * cols, x, cols)));
        _mm256_storeu_ps(y + r, _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20),
                                              _mm256_permute2f128_ps(a, b, 0x31)));
    }
    for (; r < r1; r++) {
        y[r] = hsum256_tree(row_f32_acc(w + r * cols, x, cols));
    }
}

/* Max of the 8 lanes. */
BR_AVX2 static float hmax256(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 0x55));
    return _mm_cvtss_f32(m);
}

/* br_kernel_quantize_x_portable with vectors: the same max, the same d and 1/d, and
 * round-to-nearest-even (lrintf under the default rounding mode) of the same products, so the
 * blocks are bit-identical for finite x. */
BR_AVX2 static void quantize_x_avx2(const float *x, struct br_kernel_q8x *out, size_t n)
{
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (size_t b = 0; b < n / 32; b++) {
        const float *v = x + 32 * b;
        __m256 v0 = _mm256_loadu_ps(v);
        __m256 v1 = _mm256_loadu_ps(v + 8);
        __m256 v2 = _mm256_loadu_ps(v + 16);
        __m256 v3 = _mm256_loadu_ps(v + 24);
        __m256 m =
            _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, abs_mask), _mm256_and_ps(v1, abs_mask)),
                          _mm256_max_ps(_mm256_and_ps(v2, abs_mask), _mm256_and_ps(v3, abs_mask)));
        float d = hmax256(m) / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        const __m256i lo = _mm256_set1_epi32(-127);
        const __m256i hi = _mm256_set1_epi32(127);
        __m256i q0 =
            _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), lo), hi);
        __m256i q1 =
            _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v1, vid)), lo), hi);
        __m256i q2 =
            _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), lo), hi);
        __m256i q3 =
            _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v3, vid)), lo), hi);
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        /* packs work per 128-bit half: the dwords come out in the order 0 4 1 5 2 6 3 7 */
        __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(void *)out[b].q, q);
        out[b].d = d;
        out[b].sum = _mm_cvtsi128_si32(s4);
    }
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

void br_kernel_quantize_x(const float *x, struct br_kernel_q8x *out, size_t n)
{
#ifdef BR_KERNELS_X86
    if (br_kernel_has_avx2()) {
        quantize_x_avx2(x, out, n);
        return;
    }
#endif
    br_kernel_quantize_x_portable(x, out, n);
}

/* The contiguous copies of the blocks' d and 8 * sum that the AVX2 dots load 8 at a time. */
static void split_scales(const struct br_kernel_q8x *xq, size_t nb, float *xd, int32_t *xs)
{
    for (size_t i = 0; i < nb; i++) {
        xd[i] = xq[i].d;
        xs[i] = 8 * xq[i].sum;
    }
}

/* y[r] for rows [r0, r1) of a Q8_0/Q4_0 matrix against a quantized x (nb blocks; xd/xs from
 * split_scales) on path isa (at most br_kernel_isa()). */
static void rows_q(int isa, enum br_tensor_type type, const uint8_t *base, size_t rb, size_t r0,
                   size_t r1, const struct br_kernel_q8x *xq, const float *xd, const int32_t *xs,
                   size_t nb, float *y)
{
    int q8 = type == BR_TENSOR_Q8_0;
#ifdef BR_KERNELS_X86
    if (isa == BR_KERNEL_ISA_VNNI) {
        rows_q_vnni(q8, base, rb, r0, r1, xq, xd, xs, nb, y);
        return;
    }
    if (isa == BR_KERNEL_ISA_AVX2) {
        rows_q_avx2(q8, base, rb, r0, r1, xq, xd, xs, nb, y);
        return;
    }
#else
    (void)isa;
    (void)xd;
    (void)xs;
#endif
    for (size_t r = r0; r < r1; r++) {
        const uint8_t *row = base + r * rb;
        y[r] = q8 ? br_kernel_dot_q8_0_portable(row, xq, nb)
                  : br_kernel_dot_q4_0_portable(row, xq, nb);
    }
}

/* rows_q for a matrix with a packed copy (w->packed): the packed kernels on AVX2 and VNNI,
 * the row-major data on the portable path. */
static void rows_q_w(int isa, const struct br_tensor *w, size_t rb, size_t r0, size_t r1,
                     const struct br_kernel_q8x *xq, const float *xd, const int32_t *xs, float *y)
{
    size_t nb = w->cols / 32;
#ifdef BR_KERNELS_X86
    if (w->packed && w->type == BR_TENSOR_Q4_0 && isa == BR_KERNEL_ISA_VNNI) {
        rows_q4_0_packed_vnni(w->packed, nb, r0, r1, xq, xd, xs, y);
        return;
    }
    if (w->packed && w->type == BR_TENSOR_Q4_0 && isa == BR_KERNEL_ISA_AVX2) {
        rows_q4_0_packed_avx2(w->packed, nb, r0, r1, xq, xd, xs, y);
        return;
    }
#endif
    rows_q(isa, w->type, w->data, rb, r0, r1, xq, xd, xs, nb, y);
}

size_t br_kernel_q4_0_packed_bytes(size_t rows, size_t cols)
{
    size_t groups = (rows + BR_KERNEL_Q4_0_PACK_ROWS - 1) / BR_KERNEL_Q4_0_PACK_ROWS;
    return groups * (cols / 32) * BR_KERNEL_Q4_0_PACK_BLOCK_BYTES;
}

int br_kernel_q4_0_pack(const struct br_tensor *w, void *dst)
{
    if (w->type != BR_TENSOR_Q4_0 || w->cols % 32 != 0) {
        return BR_ERR_UNSUPPORTED;
    }
    size_t nb = w->cols / 32;
    size_t rb = nb * 18;
    size_t groups = (w->rows + BR_KERNEL_Q4_0_PACK_ROWS - 1) / BR_KERNEL_Q4_0_PACK_ROWS;
    const uint8_t *src = w->data;
    uint8_t *p = dst;
    for (size_t g = 0; g < groups; g++) {
        for (size_t i = 0; i < nb; i++, p += BR_KERNEL_Q4_0_PACK_BLOCK_BYTES) {
            memset(p, 0, BR_KERNEL_Q4_0_PACK_BLOCK_BYTES); /* missing rows: scale 0, nibbles 0 */
            for (size_t r = 0; r < BR_KERNEL_Q4_0_PACK_ROWS; r++) {
                size_t row = g * BR_KERNEL_Q4_0_PACK_ROWS + r;
                if (row >= w->rows) {
                    break;
                }
                const uint8_t *b = src + row * rb + i * 18;
                memcpy(p + 2 * r, b, 2);
                for (size_t v = 0; v < 4; v++) {
                    memcpy(p + 16 + 32 * v + 4 * r, b + 2 + 4 * v, 4);
                }
            }
        }
    }
    return BR_OK;
}

/* One Q8_0/Q4_0 row against a quantized x on the widest path. */
static float dot_q_blocks(enum br_tensor_type type, const uint8_t *row,
                          const struct br_kernel_q8x *xq, const float *xd, const int32_t *xs,
                          size_t nb)
{
    float y = 0.0f;
    rows_q(br_kernel_isa(), type, row, 0, 0, 1, xq, xd, xs, nb, &y);
    return y;
}

/* Chunk of a row handled with stack copies of the scales: 256 blocks = 8192 elements. */
enum { DOT_CHUNK_BLOCKS = 256 };

/* Q8_0/Q4_0 against an already quantized x without scale copies: make them on the stack. */
static float dot_q_xq(enum br_tensor_type type, const uint8_t *row, const struct br_kernel_q8x *xq,
                      size_t nb)
{
    float xd[DOT_CHUNK_BLOCKS];
    int32_t xs[DOT_CHUNK_BLOCKS];
    size_t bb = br_tensor_block_bytes(type);
    float acc = 0.0f;
    for (size_t off = 0; off < nb; off += DOT_CHUNK_BLOCKS) {
        size_t n = nb - off < DOT_CHUNK_BLOCKS ? nb - off : DOT_CHUNK_BLOCKS;
        split_scales(xq + off, n, xd, xs);
        acc += dot_q_blocks(type, row + off * bb, xq + off, xd, xs, n);
    }
    return acc;
}

/* Q8_0/Q4_0 without a quantized x: quantize x 8 blocks at a time next to the row. */
static float dot_q_unscratched(enum br_tensor_type type, const uint8_t *row, const float *x,
                               size_t cols)
{
    struct br_kernel_q8x xq[8];
    float xd[8];
    int32_t xs[8];
    size_t bb = br_tensor_block_bytes(type);
    float acc = 0.0f;
    for (size_t off = 0; off < cols; off += 256) {
        size_t n = cols - off < 256 ? cols - off : 256;
        br_kernel_quantize_x(x + off, xq, n);
        split_scales(xq, n / 32, xd, xs);
        acc += dot_q_blocks(type, row + off / 32 * bb, xq, xd, xs, n / 32);
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
        return xq ? dot_q_xq(type, row, xq, cols / 32) : dot_q_unscratched(type, row, x, cols);
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
    nb = nb ? nb : 1;
    s->xq = br_calloc(nb, sizeof(*s->xq));
    s->xd = s->xq ? br_calloc(nb, sizeof(*s->xd)) : NULL;
    s->xs = s->xd ? br_calloc(nb, sizeof(*s->xs)) : NULL;
    if (!s->xs) {
        br_kernel_scratch_free(s);
        return BR_ERR_NOMEM;
    }
    s->cap = nb * 32;
    return BR_OK;
}

void br_kernel_scratch_free(struct br_kernel_scratch *s)
{
    br_free(s->xq);
    br_free(s->xd);
    br_free(s->xs);
    s->xq = NULL;
    s->xd = NULL;
    s->xs = NULL;
    s->cap = 0;
}

/* F32 matrices with at most this many columns use rows_f32_skinny_avx2 in a matvec. */
enum { SKINNY_COLS = 128 };

struct matvec_job {
    const struct br_tensor *w;
    const float *x;
    const struct br_kernel_q8x *xq; /* NULL: x is quantized per row */
    const float *xd;
    const int32_t *xs;
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
    if (j->xq) {
        rows_q_w(br_kernel_isa(), j->w, j->row_bytes, r0, r1, j->xq, j->xd, j->xs, j->y);
        return;
    }
#ifdef BR_KERNELS_X86
    size_t cols = j->w->cols;
    if (j->w->type == BR_TENSOR_F32 && cols % 8 == 0 && cols <= SKINNY_COLS &&
        br_kernel_has_avx2()) {
        rows_f32_skinny_avx2(j->w->data, cols, r0, r1, j->x, j->y);
        return;
    }
#endif
    for (size_t r = r0; r < r1; r++) {
        j->y[r] = br_kernel_dot_row(j->w->type, base + r * j->row_bytes, j->x, NULL, j->w->cols);
    }
}

/* Below this many weights a matvec is not worth waking the workers for. */
enum { MATVEC_PARALLEL_MIN = 65536, MATVEC_CHUNK_ROWS = 64 };

/* NOLINTNEXTLINE(readability-non-const-parameter): y is written through the job */
int br_kernel_matvec_ex(const struct br_tensor *w, const float *x, float *y,
                        struct br_kernel_scratch *scratch, struct br_pool *pool)
{
    size_t rb = br_tensor_row_bytes(w->type, w->cols);
    if (br_tensor_block_elems(w->type) == 0 || (rb == 0 && w->cols != 0)) {
        return BR_ERR_UNSUPPORTED; /* unknown type or cols not a whole number of blocks */
    }
    struct matvec_job job = {.w = w, .x = x, .y = y, .row_bytes = rb};
    int quantized_x = w->type == BR_TENSOR_Q8_0 || w->type == BR_TENSOR_Q4_0;
    if (quantized_x && scratch && scratch->cap >= w->cols) {
        br_kernel_quantize_x(x, scratch->xq, w->cols);
        split_scales(scratch->xq, w->cols / 32, scratch->xd, scratch->xs);
        job.xq = scratch->xq;
        job.xd = scratch->xd;
        job.xs = scratch->xs;
    }
    if (pool && br_pool_size(pool) > 1 && w->rows * w->cols >= MATVEC_PARALLEL_MIN) {
        /* chunks of about MATVEC_CHUNK_ROWS rows, at least one per thread, claimed dynamically
         * (a thread that is not running does not hold the others up); each row's value does
         * not depend on its chunk */
        size_t n = (size_t)br_pool_size(pool);
        size_t chunks = w->rows / MATVEC_CHUNK_ROWS;
        chunks = chunks < n ? n : (chunks > 16 * n ? 16 * n : chunks);
        br_pool_run_chunks(pool, matvec_rows, &job, (int)chunks);
    } else {
        matvec_rows(&job, 0, 1);
    }
    return BR_OK;
}

int br_kernel_matvec_q_isa(int isa, const struct br_tensor *w, const float *x, float *y)
{
    struct br_kernel_q8x xq[DOT_CHUNK_BLOCKS];
    float xd[DOT_CHUNK_BLOCKS];
    int32_t xs[DOT_CHUNK_BLOCKS];
    size_t rb = br_tensor_row_bytes(w->type, w->cols);
    int quantized = w->type == BR_TENSOR_Q8_0 || w->type == BR_TENSOR_Q4_0;
    if (!quantized || rb == 0 || w->cols / 32 > DOT_CHUNK_BLOCKS) {
        return BR_ERR_UNSUPPORTED;
    }
    int widest = br_kernel_isa();
    isa = isa < BR_KERNEL_ISA_PORTABLE ? BR_KERNEL_ISA_PORTABLE : (isa > widest ? widest : isa);
    br_kernel_quantize_x(x, xq, w->cols);
    split_scales(xq, w->cols / 32, xd, xs);
    rows_q_w(isa, w, rb, 0, w->rows, xq, xd, xs, y);
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

#ifdef BR_KERNELS_X86
BR_AVX2 static void axpy_avx2(float *y, float a, const float *x, size_t n)
{
    __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 p = _mm256_mul_ps(va, _mm256_loadu_ps(x + i));
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), p));
    }
    for (; i < n; i++) {
        y[i] += a * x[i];
    }
}
#endif

void br_kernel_axpy(float *y, float a, const float *x, size_t n)
{
#ifdef BR_KERNELS_X86
    if (br_kernel_has_avx2()) {
        axpy_avx2(y, a, x, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) {
        y[i] += a * x[i];
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
