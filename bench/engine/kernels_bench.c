/* SPDX-License-Identifier: MIT */
/*
 * kernels_bench: the Q8_0 / Q4_0 matvecs of src/engine/kernels.c against a copy of the kernels
 * they replaced (row at a time, one block per step, fp16 scale converted and broadcast per
 * block, activation quantized with scalar lrintf), side by side in one process on the
 * matrices of the llama2.c 110M shape (12 layers of wq wk wv wo 768x768, w1 w3 2048x768,
 * w2 768x2048, classifier 32000x768; random weights, 116 MB in Q8_0, 62 MB in Q4_0):
 *   token set   every matrix once (the matvec work of one decode step, streamed from memory);
 *   in cache    one 768x768 matrix 20 times (compute cost per block, L2-resident);
 *   quantize    the activation quantization of one 2048-element vector;
 *   lora        the F32 matvecs of a rank-16 adapter on wq wk wv wo (short rows).
 * Five variants: old, avx2 (the new kernels on the AVX2 path, br_kernel_matvec_q_isa), new
 * (br_kernel_matvec_ex: the widest path, AVX-512 VNNI where the CPU has it), and for Q4_0 the
 * packed copies (br_kernel_q4_0_pack, as the model loader makes them): pk-avx2 (AVX2 path) and
 * packed (br_kernel_matvec_ex, widest path); for Q8_0 those two repeat avx2 and new.
 * Variants alternate within each repetition; medians and minima over the repetitions.
 * usage: kernels_bench [reps (default 15)] [threads for the new matvec (default 1)]
 * Target kernels_bench in bench/engine/CMakeLists.txt (not built by default), or by hand:
 *   gcc -O2 -std=c11 -Isrc bench/engine/kernels_bench.c <rel>/src/engine/libbr_engine.a \
 *       <rel>/src/core/libbr_core.a -lm -lpthread
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/kernels.h"
#include "engine/pool.h"
#include "engine/quant.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rs = 88172645463325252ull;
static uint32_t rnd(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs >> 11);
}
static float rndf(void)
{
    return (float)(rnd() % 20001) / 10000.0f - 1.0f;
}

/* ---- baseline: the row-at-a-time kernels before this session ---- */
AVX2 static float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}
AVX2 static float half_f16c(const uint8_t *p)
{
    uint16_t h = 0;
    memcpy(&h, p, sizeof(h));
    return _cvtsh_ss(h);
}
AVX2 static __m256 madd_us8(__m256i a, __m256i b)
{
    __m256i p16 = _mm256_maddubs_epi16(a, b);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}
AVX2 static __m256 b_block_q8_0(const uint8_t *b, const struct br_kernel_q8x *xb, __m256 acc)
{
    __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(b + 2));
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xb->q);
    __m256 p = madd_us8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_fmadd_ps(_mm256_set1_ps(half_f16c(b) * xb->d), p, acc);
}
AVX2 static float b_dot_q8_0(const uint8_t *b, const struct br_kernel_q8x *xq, size_t nb)
{
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = b_block_q8_0(b + 34 * i, &xq[i], acc0);
        acc1 = b_block_q8_0(b + 34 * (i + 1), &xq[i + 1], acc1);
    }
    if (i < nb) {
        acc0 = b_block_q8_0(b + 34 * i, &xq[i], acc0);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}
AVX2 static __m256 b_block_q4_0(const uint8_t *b, const struct br_kernel_q8x *xb, __m256 acc)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)(b + 2));
    __m256i nib = _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1),
        _mm256_set1_epi8(0x0f));
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xb->q);
    __m256i p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, x), _mm256_set1_epi16(1));
    p32 = _mm256_sub_epi32(p32, _mm256_set1_epi32(xb->sum));
    return _mm256_fmadd_ps(_mm256_set1_ps(half_f16c(b) * xb->d), _mm256_cvtepi32_ps(p32), acc);
}
AVX2 static float b_dot_q4_0(const uint8_t *b, const struct br_kernel_q8x *xq, size_t nb)
{
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = b_block_q4_0(b + 18 * i, &xq[i], acc0);
        acc1 = b_block_q4_0(b + 18 * (i + 1), &xq[i + 1], acc1);
    }
    if (i < nb) {
        acc0 = b_block_q4_0(b + 18 * i, &xq[i], acc0);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}
static void base_matvec(const struct br_tensor *w, const struct br_kernel_q8x *xq, float *y)
{
    size_t rb = br_tensor_row_bytes(w->type, w->cols);
    const uint8_t *p = w->data;
    size_t nb = w->cols / 32;
    for (size_t r = 0; r < w->rows; r++) {
        y[r] = w->type == BR_TENSOR_Q8_0 ? b_dot_q8_0(p + r * rb, xq, nb)
                                         : b_dot_q4_0(p + r * rb, xq, nb);
    }
}

/* The old activation quantizer (scalar, lrintf per element). */
static void base_quantize_x(const float *x, struct br_kernel_q8x *out, size_t n)
{
    br_kernel_quantize_x_portable(x, out, n);
}

static void base_matvec_q(const struct br_tensor *w, const float *x, struct br_kernel_q8x *xq,
                          float *y)
{
    base_quantize_x(x, xq, w->cols);
    base_matvec(w, xq, y);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { L = 12, D = 768, H = 2048, V = 32000, MAX_REPS = 64, N_MATS = L * 7 + 1, NV = 5 };

struct bench {
    struct br_tensor mats[N_MATS];
    struct br_tensor pmats[N_MATS]; /* mats with packed copies (Q4_0) */
    float *x;
    float *y;
    struct br_kernel_q8x *xq;
    struct br_kernel_scratch sc;
    struct br_pool *pool;
};

static void make_mats(struct bench *b, enum br_tensor_type type)
{
    static const size_t SHAPES[7][2] = {{D, D}, {D, D}, {D, D}, {D, D}, {H, D}, {H, D}, {D, H}};
    float *tmp = malloc(H * sizeof(float));
    for (size_t m = 0; m < N_MATS; m++) {
        size_t rows = m < L * 7 ? SHAPES[m % 7][0] : V;
        size_t cols = m < L * 7 ? SHAPES[m % 7][1] : D;
        size_t rb = br_tensor_row_bytes(type, cols);
        uint8_t *data = malloc(rb * rows);
        for (size_t r = 0; r < rows; r++) {
            for (size_t c = 0; c < cols; c++) {
                tmp[c] = rndf() * 0.05f;
            }
            if (type == BR_TENSOR_Q8_0) {
                br_quant_quantize_row_q8_0(tmp, data + r * rb, cols);
            } else {
                br_quant_quantize_row_q4_0(tmp, data + r * rb, cols);
            }
        }
        b->mats[m] = (struct br_tensor){.type = type, .data = data, .rows = rows, .cols = cols};
        b->pmats[m] = b->mats[m];
        if (type == BR_TENSOR_Q4_0) {
            void *pk = malloc(br_kernel_q4_0_packed_bytes(rows, cols));
            br_kernel_q4_0_pack(&b->mats[m], pk);
            b->pmats[m].packed = pk;
        }
    }
    free(tmp);
}

static void run(struct bench *b, int v, const struct br_tensor *w)
{
    if (v >= 3) {
        w = &b->pmats[w - b->mats];
        v -= 2;
    }
    if (v == 0) {
        base_matvec_q(w, b->x, b->xq, b->y);
    } else if (v == 1) {
        br_kernel_matvec_q_isa(BR_KERNEL_ISA_AVX2, w, b->x, b->y);
    } else {
        br_kernel_matvec_ex(w, b->x, b->y, &b->sc, b->pool);
    }
}

static double time_set(struct bench *b, int v)
{
    double t0 = now_s();
    for (size_t m = 0; m < N_MATS; m++) {
        run(b, v, &b->mats[m]);
    }
    return now_s() - t0;
}

static double time_cache(struct bench *b, int v)
{
    run(b, v, &b->mats[0]);
    double t0 = now_s();
    for (int k = 0; k < 20; k++) {
        run(b, v, &b->mats[0]);
    }
    return (now_s() - t0) / 20;
}

static double time_quantize(struct bench *b, int v)
{
    double t0 = now_s();
    for (int k = 0; k < 100; k++) {
        if (v == 0) {
            base_quantize_x(b->x, b->xq, H);
        } else {
            br_kernel_quantize_x(b->x, b->xq, H);
        }
    }
    return (now_s() - t0) / 100;
}

/* Largest |new - old| / (1e-3 + |old|) over every row of every matrix. */
static double max_rel_diff(struct bench *b)
{
    float *yref = malloc(V * sizeof(float));
    double worst = 0;
    for (size_t m = 0; m < N_MATS; m++) {
        run(b, 0, &b->mats[m]);
        memcpy(yref, b->y, b->mats[m].rows * sizeof(float));
        run(b, 4, &b->mats[m]);
        for (size_t r = 0; r < b->mats[m].rows; r++) {
            double e = fabs((double)b->y[r] - (double)yref[r]) / (1e-3 + fabs((double)yref[r]));
            worst = e > worst ? e : worst;
        }
    }
    free(yref);
    return worst;
}

/* A rank-16 LoRA on the 4 attention matrices of 12 layers: per token 48 A (16 x 768) and 48 B
 * (768 x 16) F32 matvecs. old: one br_kernel_dot_f32 call per row (the previous matvec);
 * new: br_kernel_matvec_ex (short rows: 8 rows per step). Returns microseconds per token. */
static double time_lora(int v, const float *a, const float *bm, const float *x, float *t16,
                        float *y)
{
    struct br_tensor ta = {.type = BR_TENSOR_F32, .data = a, .rows = 16, .cols = D};
    struct br_tensor tb = {.type = BR_TENSOR_F32, .data = bm, .rows = D, .cols = 16};
    double t0 = now_s();
    for (int m = 0; m < 48; m++) {
        if (v == 0) {
            for (size_t r = 0; r < 16; r++) {
                t16[r] = br_kernel_dot_f32(a + r * D, x, D);
            }
            for (size_t r = 0; r < D; r++) {
                y[r] = br_kernel_dot_f32(bm + r * 16, t16, 16);
            }
        } else {
            br_kernel_matvec_ex(&ta, x, t16, NULL, NULL);
            br_kernel_matvec_ex(&tb, t16, y, NULL, NULL);
        }
    }
    return (now_s() - t0) * 1e6;
}

static void bench_lora(int reps)
{
    float *a = malloc(16 * D * sizeof(float));
    float *bm = malloc(16 * D * sizeof(float));
    float *x = malloc(D * sizeof(float));
    float *y = malloc(D * sizeof(float));
    float t16[16];
    for (int i = 0; i < 16 * D; i++) {
        a[i] = rndf();
        bm[i] = rndf();
    }
    for (int i = 0; i < D; i++) {
        x[i] = rndf();
    }
    double t[2][MAX_REPS];
    for (int rep = 0; rep < reps; rep++) {
        for (int v = 0; v < 2; v++) {
            t[v][rep] = time_lora(v, a, bm, x, t16, y);
        }
    }
    qsort(t[0], (size_t)reps, sizeof(double), cmp_d);
    qsort(t[1], (size_t)reps, sizeof(double), cmp_d);
    printf(
        "lora rank 16 on wq wk wv wo (48 A + 48 B F32 matvecs per token, in cache): old %.0f us, "
        "new %.0f us per token (x%.2f)\n",
        t[0][reps / 2], t[1][reps / 2], t[0][reps / 2] / t[1][reps / 2]);
    free(y);
    free(x);
    free(bm);
    free(a);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 15;
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    reps = reps < 1 ? 1 : (reps > MAX_REPS ? MAX_REPS : reps);
    struct bench b = {0};
    b.x = malloc(H * sizeof(float));
    b.y = malloc(V * sizeof(float));
    b.xq = malloc(H / 32 * sizeof(*b.xq));
    if (!b.x || !b.y || !b.xq || br_kernel_scratch_init(&b.sc, H) != 0 ||
        (threads > 1 && br_pool_create(threads, &b.pool) != 0)) {
        fprintf(stderr, "kernels_bench: out of memory\n");
        return 1;
    }
    for (int i = 0; i < H; i++) {
        b.x[i] = rndf() * (i % 7 == 0 ? 4.0f : 1.0f);
    }
    printf("# kernels_bench: isa %d (0 portable, 1 avx2, 2 avx512-vnni), new matvec on %d "
           "thread(s), median (min) of %d reps; avx2 = the new kernels limited to AVX2\n",
           br_kernel_isa(), threads, reps);
    static const char *NAMES[NV] = {"old", "avx2", "new", "pk-avx2", "packed"};
    enum br_tensor_type types[2] = {BR_TENSOR_Q8_0, BR_TENSOR_Q4_0};
    for (int t = 0; t < 2; t++) {
        make_mats(&b, types[t]);
        size_t bytes = 0;
        for (size_t m = 0; m < N_MATS; m++) {
            bytes += br_tensor_row_bytes(types[t], b.mats[m].cols) * b.mats[m].rows;
        }
        double ts[NV][MAX_REPS];
        double tc[NV][MAX_REPS];
        double tq[NV][MAX_REPS];
        for (int rep = 0; rep < reps; rep++) {
            for (int v = 0; v < NV; v++) {
                ts[v][rep] = time_set(&b, v);
                tc[v][rep] = time_cache(&b, v);
                tq[v][rep] = time_quantize(&b, v);
            }
        }
        printf("%s: %.1f MB per token set; packed vs old max relative difference %.2g\n",
               br_tensor_type_name(types[t]), (double)bytes * 1e-6, max_rel_diff(&b));
        double med[NV][3];
        for (int v = 0; v < NV; v++) {
            qsort(ts[v], (size_t)reps, sizeof(double), cmp_d);
            qsort(tc[v], (size_t)reps, sizeof(double), cmp_d);
            qsort(tq[v], (size_t)reps, sizeof(double), cmp_d);
            med[v][0] = ts[v][reps / 2];
            med[v][1] = tc[v][reps / 2];
            med[v][2] = tq[v][reps / 2];
            printf("  %s  token set %6.2f ms (min %6.2f; %5.1f GB/s, %6.1f sets/s) | "
                   "in cache %5.2f ns/block (min %5.2f) | quantize 2048 %5.2f us\n",
                   NAMES[v], med[v][0] * 1e3, ts[v][0] * 1e3, (double)bytes / med[v][0] * 1e-9,
                   1.0 / med[v][0], med[v][1] * 1e9 / (D * D / 32), tc[v][0] * 1e9 / (D * D / 32),
                   med[v][2] * 1e6);
        }
        printf("  new/old speed: token set x%.2f, in cache x%.2f, quantize x%.1f; "
               "new/avx2: token set x%.2f, in cache x%.2f\n",
               med[0][0] / med[2][0], med[0][1] / med[2][1], med[0][2] / med[2][2],
               med[1][0] / med[2][0], med[1][1] / med[2][1]);
        printf("  packed/new speed: token set x%.2f, in cache x%.2f; pk-avx2/avx2: token set "
               "x%.2f, in cache x%.2f\n",
               med[2][0] / med[4][0], med[2][1] / med[4][1], med[1][0] / med[3][0],
               med[1][1] / med[3][1]);
        for (size_t m = 0; m < N_MATS; m++) {
            free((void *)b.mats[m].data);
            free((void *)b.pmats[m].packed);
        }
    }
    bench_lora(reps);
    br_pool_destroy(b.pool);
    br_kernel_scratch_free(&b.sc);
    free(b.xq);
    free(b.y);
    free(b.x);
    return 0;
}
