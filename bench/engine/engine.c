/* SPDX-License-Identifier: MIT */
/*
 * bench_engine: tokens/s of the embedded engine's forward pass for prompt processing (the
 * prompt's tokens fed one by one; the engine has no batched prompt path yet) and generation
 * (greedy decoding, each step's argmax fed back), for 1 and 2 threads and F32 / Q8_0 / Q4_0
 * weights, on stories260K (models/stories260K/stories260K.bin, quantized in memory) and on a
 * synthetic model of the llama2.c 110M shape (dim 768, 12 layers, 12 heads, 12 kv heads,
 * hidden 2048, vocab 32000, shared classifier) with random weights generated in memory.
 * Quantization rule as in brigade: a matrix whose rows are not whole 32-blocks stays F32.
 *
 * It also measures the memory read bandwidth (a streaming sum over a 512 MiB buffer, far
 * larger than the L3, 1 and 2 threads, best of 5 passes) and states decode speed as a fraction of
 * the bandwidth limit: bytes of weights read per token (every matrix once, the classifier included)
 * times tokens/s divided by the bandwidth measured with the same thread count.
 *
 * Usage: bench_engine [--runs N] [--gen N] [--prompt N] [--only stories|110m] [--lora-rank R]
 * Each figure is the median of N runs (default 3). Output: one table row per configuration.
 *
 * Modes used by run.sh (brigade and llama.cpp side by side on the same files):
 *   --write-gguf DIR [--only stories|110m]: writes stories260K-{f32,q8_0,q4_0}.gguf (the weights
 *     and vocabulary of models/stories260K/stories260K-f32.gguf) and synth110M-{f32,q8_0,q4_0}.gguf
 *     (the fixed-seed random 110M shape with the 32000-token llama SPM vocabulary of
 *     models/llama-spm-vocab) into DIR; same bytes on every run.
 *   --gguf FILE [--threads N] [--runs N] [--prompt N] [--gen N]: times FILE opened as brigade
 *     serves it (br_engine_model_open); one JSON line with the medians and every run.
 *   --bandwidth: the memory read bandwidth with 1 and 2 threads as one JSON line.
 *
 * --lora-rank R: instead of the table above, the cost of run-time LoRA (lora.h): a random
 * adapter of rank R on all attention weights (wq, wk, wv, wo of every layer; written as a GGUF
 * LoRA file in /tmp and loaded with br_lora_open) against no adapter, same model, type and
 * thread count, runs of the two interleaved (A B A B ...) so that machine load hits both alike;
 * one row per configuration with the generation tokens/s of each and the relative cost.
 */
#include "engine/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "engine/forward.h"
#include "engine/gguf.h"
#include "engine/gguf_write.h"
#include "engine/kernels.h"
#include "engine/llama2c.h"
#include "engine/quant.h"

#define MODEL_PATH      BR_SOURCE_DIR "/models/stories260K/stories260K.bin"
#define MODEL_GGUF_PATH BR_SOURCE_DIR "/models/stories260K/stories260K-f32.gguf"
#define VOCAB32K_PATH   BR_SOURCE_DIR "/models/llama-spm-vocab/ggml-vocab-llama-spm.gguf"
#define MAX_RUNS        15

struct opts {
    int runs;
    int gen;
    int prompt;
    const char *only;
    int lora_rank;         /* 0: the normal table */
    const char *write_dir; /* --write-gguf DIR: write the GGUF files and exit */
    const char *gguf;      /* --gguf FILE: time this file (JSON line) */
    int threads;           /* --threads N for --gguf (default 1) */
    int bandwidth_only;    /* --bandwidth: print the bandwidth as JSON and exit */
};

_Noreturn static void die(const char *what)
{
    (void)fprintf(stderr, "bench_engine: %s\n", what);
    exit(1); /* NOLINT(concurrency-mt-unsafe): the benchmark threads are joined by then */
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- memory bandwidth ---- */

struct bw_job {
    const double *buf;
    size_t n;
    double sum;
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/* 32-byte loads into four independent sums: the loop is bound by memory, not by the adds */
__attribute__((target("avx"))) static double sum_stream(const double *p, size_t n)
{
    __m256d a0 = _mm256_setzero_pd();
    __m256d a1 = _mm256_setzero_pd();
    __m256d a2 = _mm256_setzero_pd();
    __m256d a3 = _mm256_setzero_pd();
    for (size_t i = 0; i + 16 <= n; i += 16) {
        a0 = _mm256_add_pd(a0, _mm256_loadu_pd(p + i));
        a1 = _mm256_add_pd(a1, _mm256_loadu_pd(p + i + 4));
        a2 = _mm256_add_pd(a2, _mm256_loadu_pd(p + i + 8));
        a3 = _mm256_add_pd(a3, _mm256_loadu_pd(p + i + 12));
    }
    double out[4];
    _mm256_storeu_pd(out, _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
    return out[0] + out[1] + out[2] + out[3];
}
#else
static double sum_stream(const double *p, size_t n)
{
    double s0 = 0;
    double s1 = 0;
    double s2 = 0;
    double s3 = 0;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    return s0 + s1 + s2 + s3;
}
#endif

static void *bw_read(void *arg)
{
    struct bw_job *j = arg;
    j->sum = sum_stream(j->buf, j->n);
    return NULL;
}

/* GB/s (1e9 bytes) of reading the buffer with n_threads threads: the best of `runs` passes
 * (the limit the hardware allows; a pass can only be slowed down by other load). */
static double bandwidth(const double *buf, size_t count, int n_threads, int runs)
{
    double gbs[MAX_RUNS] = {0};
    for (int r = 0; r < runs; r++) {
        struct bw_job jobs[2] = {{NULL, 0, 0.0}, {NULL, 0, 0.0}};
        pthread_t th[2];
        size_t per = count / (size_t)n_threads;
        double t0 = now_s();
        for (int t = 0; t < n_threads; t++) {
            jobs[t].buf = buf + per * (size_t)t;
            jobs[t].n = per;
            if (t > 0) {
                (void)pthread_create(&th[t], NULL, bw_read, &jobs[t]);
            }
        }
        bw_read(&jobs[0]);
        for (int t = 1; t < n_threads; t++) {
            (void)pthread_join(th[t], NULL);
        }
        double dt = now_s() - t0;
        if (jobs[0].sum == 1234.5) {
            printf("#\n"); /* keeps the sums alive */
        }
        gbs[r] = (double)(per * (size_t)n_threads * sizeof(double)) / dt / 1e9;
    }
    double best = 0;
    for (int r = 0; r < runs; r++) {
        best = gbs[r] > best ? gbs[r] : best;
    }
    return best;
}

/* ---- models ---- */

struct model {
    const char *name;
    struct br_llama_config config;
    struct br_llama_weights w;
    struct br_llama_layer *layers;
    void *bufs[512];
    int n_bufs;
};

static void *keep(struct model *m, size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p || m->n_bufs >= 512) {
        die("out of memory");
    }
    m->bufs[m->n_bufs++] = p;
    return p;
}

static void model_free(struct model *m)
{
    for (int i = 0; i < m->n_bufs; i++) {
        free(m->bufs[i]);
    }
    free(m->layers);
    m->n_bufs = 0;
    m->layers = NULL;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;

static float rnd_normalish(void)
{
    /* sum of 4 uniforms: cheap, roughly bell-shaped, mean 0, sd ~0.58 */
    float s = 0;
    for (int i = 0; i < 4; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        s += (float)(rng >> 40) / (float)(1 << 24) - 0.5f;
    }
    return s;
}

static struct br_tensor random_f32(struct model *m, size_t rows, size_t cols, float scale)
{
    float *p = keep(m, rows * cols * sizeof(float));
    for (size_t i = 0; i < rows * cols; i++) {
        p[i] = rnd_normalish() * scale;
    }
    struct br_tensor t = {.type = BR_TENSOR_F32, .data = p, .rows = rows, .cols = cols};
    return t;
}

static struct br_tensor ones(struct model *m, size_t n)
{
    float *p = keep(m, n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        p[i] = 1.0f;
    }
    struct br_tensor t = {.type = BR_TENSOR_F32, .data = p, .rows = 1, .cols = n};
    return t;
}

/* The llama2.c 110M shape with random weights (F32). */
static void make_110m(struct model *m)
{
    memset(m, 0, sizeof(*m));
    m->name = "110M-synthetic";
    struct br_llama_config c = {.dim = 768,
                                .hidden_dim = 2048,
                                .n_layers = 12,
                                .n_heads = 12,
                                .n_kv_heads = 12,
                                .vocab_size = 32000,
                                .seq_len = 1024,
                                .rms_eps = 1e-5f,
                                .rope_theta = 10000.0f};
    m->config = c;
    size_t d = 768;
    size_t h = 2048;
    float sd = 1.0f / sqrtf((float)d) * 1.7f;
    float sh = 1.0f / sqrtf((float)h) * 1.7f;
    m->layers = calloc(12, sizeof(*m->layers));
    if (!m->layers) {
        die("out of memory");
    }
    for (int l = 0; l < 12; l++) {
        struct br_llama_layer *L = &m->layers[l];
        L->attn_norm = ones(m, d);
        L->ffn_norm = ones(m, d);
        L->wq = random_f32(m, d, d, sd);
        L->wk = random_f32(m, d, d, sd);
        L->wv = random_f32(m, d, d, sd);
        L->wo = random_f32(m, d, d, sd);
        L->w1 = random_f32(m, h, d, sd);
        L->w3 = random_f32(m, h, d, sd);
        L->w2 = random_f32(m, d, h, sh);
    }
    m->w.layers = m->layers;
    m->w.n_layers = 12;
    m->w.token_embedding = random_f32(m, 32000, d, 1.0f);
    m->w.output = m->w.token_embedding;
    m->w.final_norm = ones(m, d);
}

static void quantize(struct model *m, struct br_tensor *t, enum br_tensor_type type)
{
    if (type == BR_TENSOR_F32 || t->type != BR_TENSOR_F32 || t->cols % 32 != 0) {
        return;
    }
    size_t rb = br_tensor_row_bytes(type, t->cols);
    uint8_t *q = keep(m, rb * t->rows);
    for (size_t r = 0; r < t->rows; r++) {
        const float *src = (const float *)t->data + r * t->cols;
        int rc = type == BR_TENSOR_Q8_0 ? br_quant_quantize_row_q8_0(src, q + r * rb, t->cols)
                                        : br_quant_quantize_row_q4_0(src, q + r * rb, t->cols);
        if (rc != BR_OK) {
            die("quantize");
        }
    }
    t->type = type;
    t->data = q;
    if (type == BR_TENSOR_Q4_0 && br_kernel_has_avx2()) {
        /* the packed copy the model loader makes (br_llama_model_open) */
        void *pk = keep(m, br_kernel_q4_0_packed_bytes(t->rows, t->cols));
        if (br_kernel_q4_0_pack(t, pk) != BR_OK) {
            die("pack");
        }
        t->packed = pk;
    }
}

/* A copy of src's views with every eligible matrix quantized to `type` (buffers kept in q). */
static void quantized_copy(struct model *q, const struct model *src, enum br_tensor_type type)
{
    memset(q, 0, sizeof(*q));
    q->name = src->name;
    q->config = src->config;
    q->w = src->w;
    q->layers = calloc((size_t)src->w.n_layers, sizeof(*q->layers));
    if (!q->layers) {
        die("out of memory");
    }
    for (int l = 0; l < src->w.n_layers; l++) {
        struct br_llama_layer *L = &q->layers[l];
        *L = src->w.layers[l];
        struct br_tensor *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
        for (size_t i = 0; i < sizeof(mats) / sizeof(mats[0]); i++) {
            quantize(q, mats[i], type);
        }
    }
    q->w.layers = q->layers;
    int shared = src->w.output.data == src->w.token_embedding.data;
    quantize(q, &q->w.token_embedding, type);
    if (shared) {
        q->w.output = q->w.token_embedding;
    } else {
        quantize(q, &q->w.output, type);
    }
}

static size_t tensor_bytes(const struct br_tensor *t)
{
    return br_tensor_row_bytes(t->type, t->cols) * t->rows;
}

/* Weight bytes one decode step reads: every matrix once, plus one embedding row. */
static size_t bytes_per_token(const struct br_llama_weights *w)
{
    size_t b = 0;
    for (int l = 0; l < w->n_layers; l++) {
        const struct br_llama_layer *L = &w->layers[l];
        b += tensor_bytes(&L->wq) + tensor_bytes(&L->wk) + tensor_bytes(&L->wv) +
             tensor_bytes(&L->wo) + tensor_bytes(&L->w1) + tensor_bytes(&L->w2) +
             tensor_bytes(&L->w3);
    }
    b += tensor_bytes(&w->output);
    b += br_tensor_row_bytes(w->token_embedding.type, w->token_embedding.cols);
    return b;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        best = x[i] > x[best] ? i : best;
    }
    return best;
}

struct speed {
    double pp;     /* prompt tokens/s */
    double tg;     /* generated tokens/s */
    double pp_cpu; /* process CPU seconds / wall seconds while processing the prompt */
    double tg_cpu; /* the same while generating */
};

static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static struct speed run_lora(const struct model *m, int n_threads, int n_prompt, int n_gen,
                             const struct br_lora_use *use, int n_use)
{
    struct br_llama_run_config rc = {.n_threads = n_threads};
    struct br_llama_state *s = NULL;
    struct speed sp = {0, 0, 0, 0};
    if (br_llama_state_create_ex(&m->config, &m->w, &rc, &s) != BR_OK) {
        die("cannot create the run state");
    }
    if (br_llama_state_set_lora(s, use, n_use) != BR_OK) {
        die("cannot select the adapter");
    }
    float *logits = calloc((size_t)m->config.vocab_size, sizeof(float));
    if (!logits) {
        die("out of memory");
    }
    int token = 1;
    double c0 = cpu_s();
    double t0 = now_s();
    for (int pos = 0; pos < n_prompt; pos++) {
        token = 1 + (pos * 37) % (m->config.vocab_size - 1); /* a fixed pseudo-prompt */
        (void)br_llama_forward(s, token, pos, logits);
    }
    double t1 = now_s();
    double c1 = cpu_s();
    token = argmax(logits, m->config.vocab_size);
    for (int i = 0; i < n_gen; i++) {
        (void)br_llama_forward(s, token, n_prompt + i, logits);
        token = argmax(logits, m->config.vocab_size);
    }
    double t2 = now_s();
    double c2 = cpu_s();
    sp.pp = n_prompt / (t1 - t0);
    sp.tg = n_gen / (t2 - t1);
    sp.pp_cpu = (c1 - c0) / (t1 - t0);
    sp.tg_cpu = (c2 - c1) / (t2 - t1);
    free(logits);
    br_llama_state_destroy(s);
    return sp;
}

static struct speed run_once(const struct model *m, int n_threads, int n_prompt, int n_gen)
{
    return run_lora(m, n_threads, n_prompt, n_gen, NULL, 0);
}

static void bench_model(const struct model *m, const char *type, const struct opts *o,
                        const double *bw)
{
    int n_prompt = o->prompt;
    int n_gen = o->gen;
    if (n_prompt + n_gen > m->config.seq_len) {
        n_gen = m->config.seq_len - n_prompt;
    }
    size_t bpt = bytes_per_token(&m->w);
    for (int th = 1; th <= 2; th++) {
        double pp[MAX_RUNS] = {0};
        double tg[MAX_RUNS] = {0};
        (void)run_once(m, th, n_prompt < 8 ? n_prompt : 8, 4); /* warm-up (page faults) */
        for (int r = 0; r < o->runs; r++) {
            struct speed sp = run_once(m, th, n_prompt, n_gen);
            pp[r] = sp.pp;
            tg[r] = sp.tg;
        }
        double tgm = median(tg, o->runs);
        double frac = (double)bpt * tgm / (bw[th - 1] * 1e9);
        printf("| %-15s | %-4s | %d | %9.1f | %9.1f | %8.2f | %5.1f%% |\n", m->name, type, th,
               median(pp, o->runs), tgm, (double)bpt / 1e6, 100.0 * frac);
        (void)fflush(stdout);
    }
}

static void bench_all_types(const struct model *f32, const struct opts *o, const double *bw)
{
    bench_model(f32, "F32", o, bw);
    struct model q;
    quantized_copy(&q, f32, BR_TENSOR_Q8_0);
    bench_model(&q, "Q8_0", o, bw);
    model_free(&q);
    quantized_copy(&q, f32, BR_TENSOR_Q4_0);
    bench_model(&q, "Q4_0", o, bw);
    model_free(&q);
}

/* ---- run-time LoRA cost (--lora-rank) ---- */

/* Writes a random rank-R adapter on wq/wk/wv/wo of every layer of m to path and opens it. */
static br_lora *make_adapter(struct model *m, int rank, const char *path)
{
    const struct br_llama_config *c = &m->config;
    size_t d = (size_t)c->dim;
    size_t kv = (size_t)c->n_kv_heads * (d / (size_t)c->n_heads);
    br_gguf_writer *w = NULL;
    int rc = br_gguf_writer_create(0, NULL, NULL, &w);
    rc = rc ? rc : br_gguf_writer_kv_str(w, "general.architecture", br_slice_from_cstr("llama"));
    rc = rc ? rc : br_gguf_writer_kv_str(w, "general.type", br_slice_from_cstr("adapter"));
    rc = rc ? rc : br_gguf_writer_kv_str(w, "adapter.type", br_slice_from_cstr("lora"));
    rc = rc ? rc : br_gguf_writer_kv_f32(w, "adapter.lora.alpha", (float)(2 * rank));
    static const char *const names[4] = {"attn_q", "attn_k", "attn_v", "attn_output"};
    for (int l = 0; l < c->n_layers && rc == BR_OK; l++) {
        for (int k = 0; k < 4 && rc == BR_OK; k++) {
            size_t out = k == 1 || k == 2 ? kv : d;
            char name[96];
            struct br_tensor a = random_f32(m, (size_t)rank, d, 0.02f);
            struct br_tensor b = random_f32(m, out, (size_t)rank, 0.02f);
            uint64_t da[2] = {d, (uint64_t)rank};
            uint64_t db[2] = {(uint64_t)rank, out};
            (void)snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", l, names[k]);
            rc = br_gguf_writer_tensor(w, name, BR_TENSOR_F32, 2, da, a.data);
            (void)snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", l, names[k]);
            rc = rc ? rc : br_gguf_writer_tensor(w, name, BR_TENSOR_F32, 2, db, b.data);
        }
    }
    char err[BR_LORA_ERR_CAP] = "";
    rc = rc ? rc : br_gguf_writer_write(w, path, err, sizeof err);
    br_gguf_writer_free(w);
    br_lora *ad = NULL;
    rc = rc ? rc : br_lora_open(path, c, &ad, err, sizeof err);
    (void)unlink(path);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "bench_engine: adapter: %s %s\n", br_err_name(rc), err);
        exit(1); /* NOLINT(concurrency-mt-unsafe): single-threaded here */
    }
    return ad;
}

static void bench_lora_model(const struct model *m, const char *type, const struct opts *o,
                             const br_lora *ad)
{
    int n_prompt = o->prompt;
    int n_gen = o->gen;
    if (n_prompt + n_gen > m->config.seq_len) {
        n_gen = m->config.seq_len - n_prompt;
    }
    struct br_lora_use use = {ad, 1.0f};
    for (int th = 1; th <= 2; th++) {
        double base[MAX_RUNS] = {0};
        double with[MAX_RUNS] = {0};
        (void)run_lora(m, th, n_prompt < 8 ? n_prompt : 8, 4, &use, 1); /* warm-up */
        for (int r = 0; r < o->runs; r++) {
            base[r] = run_lora(m, th, n_prompt, n_gen, NULL, 0).tg;
            with[r] = run_lora(m, th, n_prompt, n_gen, &use, 1).tg;
        }
        double b = median(base, o->runs);
        double wl = median(with, o->runs);
        printf("| %-15s | %-4s | %d | %4d | %9.1f | %9.1f | %6.1f%% |\n", m->name, type, th,
               br_lora_rank(ad), b, wl, 100.0 * (1.0 - wl / b));
        (void)fflush(stdout);
    }
}

static void bench_lora_types(struct model *f32, const struct opts *o)
{
    char path[128];
    (void)snprintf(path, sizeof path, "/tmp/bench_engine_lora_%d.gguf", (int)getpid());
    br_lora *ad = make_adapter(f32, o->lora_rank, path);
    bench_lora_model(f32, "F32", o, ad);
    struct model q;
    quantized_copy(&q, f32, BR_TENSOR_Q8_0);
    bench_lora_model(&q, "Q8_0", o, ad);
    model_free(&q);
    quantized_copy(&q, f32, BR_TENSOR_Q4_0);
    bench_lora_model(&q, "Q4_0", o, ad);
    model_free(&q);
    br_lora_close(ad);
}

/* ---- GGUF files of the benchmark models (--write-gguf DIR) and timing a file (--gguf FILE) ----
 */

/* An array value of the vocabulary file (strings, f32 or i32 elements), copied under key. */
static int copy_array(br_gguf_writer *w, const struct br_gguf_array *a, const char *key)
{
    size_t n = (size_t)a->len;
    int rc = BR_OK;
    if (a->type == BR_GGUF_TYPE_STRING) {
        struct br_slice *v = calloc(n + 1, sizeof *v);
        rc = v ? BR_OK : BR_ERR_NOMEM;
        for (size_t i = 0; i < n && rc == BR_OK; i++) {
            rc = br_gguf_array_str(a, i, &v[i]);
        }
        rc = rc ? rc : br_gguf_writer_kv_arr_str(w, key, v, n);
        free(v);
    } else if (a->type == BR_GGUF_TYPE_FLOAT32) {
        float *v = calloc(n + 1, sizeof *v);
        rc = v ? BR_OK : BR_ERR_NOMEM;
        for (size_t i = 0; i < n && rc == BR_OK; i++) {
            rc = br_gguf_array_f32(a, i, &v[i]);
        }
        rc = rc ? rc : br_gguf_writer_kv_arr_f32(w, key, v, n);
        free(v);
    } else if (a->type == BR_GGUF_TYPE_INT32) {
        int32_t *v = calloc(n + 1, sizeof *v);
        rc = v ? BR_OK : BR_ERR_NOMEM;
        for (size_t i = 0; i < n && rc == BR_OK; i++) {
            int64_t x = 0;
            rc = br_gguf_array_i64(a, i, &x);
            v[i] = (int32_t)x;
        }
        rc = rc ? rc : br_gguf_writer_kv_arr_i32(w, key, v, n);
        free(v);
    } else {
        rc = BR_ERR_UNSUPPORTED;
    }
    return rc;
}

/* Copies one "tokenizer.*" key of the vocabulary file (the value types a llama vocabulary uses). */
static int copy_kv(br_gguf_writer *w, const struct br_gguf_kv *kv, const char *key)
{
    uint64_t len = 0;
    uint32_t u = 0;
    switch (kv->type) {
    case BR_GGUF_TYPE_STRING:
        memcpy(&len, kv->value, sizeof len);
        return br_gguf_writer_kv_str(
            w, key, (struct br_slice){(const char *)kv->value + sizeof len, (size_t)len});
    case BR_GGUF_TYPE_BOOL:
        return br_gguf_writer_kv_bool(w, key, kv->value[0] != 0);
    case BR_GGUF_TYPE_UINT32:
        memcpy(&u, kv->value, sizeof u);
        return br_gguf_writer_kv_u32(w, key, u);
    case BR_GGUF_TYPE_INT32:
        memcpy(&u, kv->value, sizeof u);
        return br_gguf_writer_kv_i32(w, key, (int32_t)u);
    case BR_GGUF_TYPE_ARRAY:
        return copy_array(w, &kv->array, key);
    default:
        return BR_ERR_UNSUPPORTED;
    }
}

/* Every "tokenizer.*" key of the GGUF file at vocab_path, copied into w; the vocabulary must have
 * n_vocab tokens. */
static int copy_tokenizer(br_gguf_writer *w, const char *vocab_path, int n_vocab)
{
    br_gguf *g = NULL;
    char err[BR_GGUF_ERR_CAP] = "";
    int rc = br_gguf_open(vocab_path, &g, err, sizeof err);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "bench_engine: %s\n", err);
        return rc;
    }
    struct br_gguf_array tokens;
    rc = br_gguf_get_array(g, "tokenizer.ggml.tokens", &tokens);
    if (rc == BR_OK && tokens.len != (uint64_t)n_vocab) {
        (void)fprintf(stderr, "bench_engine: %s has %llu tokens, the model %d\n", vocab_path,
                      (unsigned long long)tokens.len, n_vocab);
        rc = BR_ERR_INVAL;
    }
    for (size_t i = 0; i < br_gguf_kv_count(g) && rc == BR_OK; i++) {
        const struct br_gguf_kv *kv = br_gguf_kv_at(g, i);
        char key[128];
        if (kv->key.len >= sizeof key || kv->key.len < 10 ||
            memcmp(kv->key.ptr, "tokenizer.", 10) != 0) {
            continue;
        }
        memcpy(key, kv->key.ptr, kv->key.len);
        key[kv->key.len] = '\0';
        rc = copy_kv(w, kv, key);
        if (rc != BR_OK) {
            (void)fprintf(stderr, "bench_engine: cannot copy %s: %s\n", key, br_err_name(rc));
        }
    }
    br_gguf_close(g);
    return rc;
}

/* The llama.* hyper-parameters, as `brigade quantize` writes them. */
static int add_hparams(br_gguf_writer *w, const struct br_llama_config *c, const char *name,
                       enum br_tensor_type type)
{
    /* general.file_type: LLAMA_FTYPE_ALL_F32 0, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7 */
    uint32_t ftype = type == BR_TENSOR_Q8_0 ? 7 : type == BR_TENSOR_Q4_0 ? 2 : 0;
    int rc = br_gguf_writer_kv_str(w, "general.architecture", br_slice_from_cstr("llama"));
    rc = rc ? rc : br_gguf_writer_kv_str(w, "general.name", br_slice_from_cstr(name));
    rc = rc ? rc : br_gguf_writer_kv_u32(w, "general.file_type", ftype);
    if (rc == BR_OK && type != BR_TENSOR_F32) {
        rc = br_gguf_writer_kv_u32(w, "general.quantization_version", 2);
    }
    rc = rc ? rc : br_gguf_writer_kv_u32(w, "llama.context_length", (uint32_t)c->seq_len);
    rc = rc ? rc : br_gguf_writer_kv_u32(w, "llama.embedding_length", (uint32_t)c->dim);
    rc = rc ? rc : br_gguf_writer_kv_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim);
    rc = rc ? rc : br_gguf_writer_kv_u32(w, "llama.block_count", (uint32_t)c->n_layers);
    rc = rc ? rc : br_gguf_writer_kv_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads);
    rc = rc ? rc
            : br_gguf_writer_kv_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads);
    rc = rc ? rc
            : br_gguf_writer_kv_u32(w, "llama.rope.dimension_count",
                                    (uint32_t)(c->dim / c->n_heads));
    rc = rc ? rc : br_gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", c->rms_eps);
    rc = rc ? rc : br_gguf_writer_kv_f32(w, "llama.rope.freq_base", c->rope_theta);
    rc = rc ? rc : br_gguf_writer_kv_u32(w, "llama.vocab_size", (uint32_t)c->vocab_size);
    return rc;
}

static int add_tensor(br_gguf_writer *w, const char *name, const struct br_tensor *t, int vector)
{
    uint64_t dims[2] = {t->cols, t->rows};
    return br_gguf_writer_tensor(w, name, t->type, vector ? 1 : 2, dims, t->data);
}

/* Tensors under llama.cpp's names (as `brigade quantize` writes them); no output.weight when the
 * classifier is the embedding (llama.cpp then uses token_embd.weight for both). */
static int add_weights(br_gguf_writer *w, const struct br_llama_weights *wt)
{
    int rc = add_tensor(w, "token_embd.weight", &wt->token_embedding, 0);
    rc = rc ? rc : add_tensor(w, "output_norm.weight", &wt->final_norm, 1);
    if (rc == BR_OK && wt->output.data != wt->token_embedding.data) {
        rc = add_tensor(w, "output.weight", &wt->output, 0);
    }
    for (int l = 0; l < wt->n_layers && rc == BR_OK; l++) {
        const struct br_llama_layer *ly = &wt->layers[l];
        const struct {
            const char *what;
            const struct br_tensor *t;
            int vector;
        } list[] = {{"attn_norm", &ly->attn_norm, 1},
                    {"attn_q", &ly->wq, 0},
                    {"attn_k", &ly->wk, 0},
                    {"attn_v", &ly->wv, 0},
                    {"attn_output", &ly->wo, 0},
                    {"ffn_norm", &ly->ffn_norm, 1},
                    {"ffn_gate", &ly->w1, 0},
                    {"ffn_down", &ly->w2, 0},
                    {"ffn_up", &ly->w3, 0}};
        for (size_t k = 0; k < sizeof list / sizeof list[0] && rc == BR_OK; k++) {
            char name[64];
            (void)snprintf(name, sizeof name, "blk.%d.%s.weight", l, list[k].what);
            rc = add_tensor(w, name, list[k].t, list[k].vector);
        }
    }
    return rc;
}

/* Writes m (its tensors in the types they have) with the vocabulary of vocab_path as
 * DIR/<stem>-<type>.gguf. */
static void write_one(const struct model *m, const char *vocab_path, const char *dir,
                      const char *stem, enum br_tensor_type type)
{
    char path[4096];
    (void)snprintf(path, sizeof path, "%s/%s-%s.gguf", dir, stem, br_tensor_type_name(type));
    br_gguf_writer *w = NULL;
    char err[BR_GGUF_ERR_CAP + 64] = "";
    int rc = br_gguf_writer_create(0, NULL, NULL, &w);
    rc = rc ? rc : add_hparams(w, &m->config, m->name, type);
    rc = rc ? rc : copy_tokenizer(w, vocab_path, m->config.vocab_size);
    rc = rc ? rc : add_weights(w, &m->w);
    rc = rc ? rc : br_gguf_writer_write(w, path, err, sizeof err);
    br_gguf_writer_free(w);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "bench_engine: cannot write %s: %s %s\n", path, br_err_name(rc), err);
        exit(1); /* NOLINT(concurrency-mt-unsafe): single-threaded here */
    }
    printf("wrote %s (%.1f MB of weights read per token)\n", path,
           (double)bytes_per_token(&m->w) / 1e6);
    (void)fflush(stdout);
}

/* F32, Q8_0 and Q4_0 files of f32 (quantized with the rule of quantized_copy). */
static void write_all_types(const struct model *f32, const char *vocab_path, const char *dir,
                            const char *stem)
{
    write_one(f32, vocab_path, dir, stem, BR_TENSOR_F32);
    struct model q;
    quantized_copy(&q, f32, BR_TENSOR_Q8_0);
    write_one(&q, vocab_path, dir, stem, BR_TENSOR_Q8_0);
    model_free(&q);
    quantized_copy(&q, f32, BR_TENSOR_Q4_0);
    write_one(&q, vocab_path, dir, stem, BR_TENSOR_Q4_0);
    model_free(&q);
}

/*
 * --write-gguf DIR: stories260K-{f32,q8_0,q4_0}.gguf from models/stories260K/stories260K-f32.gguf
 * (its weights and vocabulary; llama.context_length 512, the checkpoint's seq_len, where
 * llama.cpp's converter wrote 128) and synth110M-{f32,q8_0,q4_0}.gguf (make_110m's fixed-seed
 * random weights with the 32000-token llama SPM vocabulary of models/llama-spm-vocab). The bytes
 * depend only on this program, so reruns give identical files.
 */
static int main_write(const struct opts *o)
{
    if (!o->only || strcmp(o->only, "stories") == 0) {
        br_engine_model *em = NULL;
        char err[BR_ENGINE_ERR_CAP] = "";
        if (br_engine_model_open(MODEL_GGUF_PATH, NULL, &em, err, sizeof err) != BR_OK) {
            (void)fprintf(stderr, "bench_engine: %s\n", err);
            return 1;
        }
        struct model m;
        memset(&m, 0, sizeof(m));
        m.name = "stories260K";
        m.config = *br_engine_model_config(em);
        m.config.seq_len = m.config.seq_len < 512 ? 512 : m.config.seq_len;
        m.w = *br_engine_model_weights(em);
        write_all_types(&m, MODEL_GGUF_PATH, o->write_dir, "stories260K");
        br_engine_model_close(em);
    }
    if (!o->only || strcmp(o->only, "110m") == 0) {
        struct model m;
        make_110m(&m);
        write_all_types(&m, VOCAB32K_PATH, o->write_dir, "synth110M");
        model_free(&m);
    }
    return 0;
}

static void print_runs(const char *key, const double *v, int n)
{
    printf(",\"%s\":[", key);
    for (int i = 0; i < n; i++) {
        printf("%s%.2f", i ? "," : "", v[i]);
    }
    printf("]");
}

/* --gguf FILE: the file opened as brigade serves it (br_engine_model_open), one warm-up run and
 * --runs timed runs with --threads threads; one JSON line. */
static int main_gguf(const struct opts *o)
{
    br_engine_model *em = NULL;
    char err[BR_ENGINE_ERR_CAP] = "";
    if (br_engine_model_open(o->gguf, NULL, &em, err, sizeof err) != BR_OK) {
        (void)fprintf(stderr, "bench_engine: %s\n", err);
        return 1;
    }
    struct model m;
    memset(&m, 0, sizeof(m));
    m.name = o->gguf;
    m.config = *br_engine_model_config(em);
    m.w = *br_engine_model_weights(em);
    int n_prompt = o->prompt;
    int n_gen = o->gen;
    if (n_prompt + n_gen > m.config.seq_len) {
        n_gen = m.config.seq_len - n_prompt;
    }
    double pp[MAX_RUNS] = {0};
    double tg[MAX_RUNS] = {0};
    double ppc[MAX_RUNS] = {0};
    double tgc[MAX_RUNS] = {0};
    (void)run_once(&m, o->threads, n_prompt < 8 ? n_prompt : 8, 4); /* warm-up (page faults) */
    for (int r = 0; r < o->runs; r++) {
        struct speed sp = run_once(&m, o->threads, n_prompt, n_gen);
        pp[r] = sp.pp;
        tg[r] = sp.tg;
        ppc[r] = sp.pp_cpu;
        tgc[r] = sp.tg_cpu;
    }
    static const char *const isa[] = {"portable", "avx2", "avx2+avx512vnni"};
    int k = br_kernel_isa();
    printf("{\"engine\":\"brigade\",\"model\":\"%s\",\"threads\":%d,\"prompt\":%d,\"gen\":%d,"
           "\"runs\":%d,\"kernels\":\"%s\",\"q4_0_packed\":%s,\"mb_per_token\":%.3f",
           o->gguf, o->threads, n_prompt, n_gen, o->runs, k >= 0 && k <= 2 ? isa[k] : "?",
           m.w.output.packed ? "true" : "false", (double)bytes_per_token(&m.w) / 1e6);
    print_runs("pp_runs", pp, o->runs);
    print_runs("gen_runs", tg, o->runs);
    printf(",\"pp_cpu_per_wall\":%.2f,\"gen_cpu_per_wall\":%.2f", median(ppc, o->runs),
           median(tgc, o->runs));
    printf(",\"pp_tok_s\":%.3f,\"gen_tok_s\":%.3f}\n", median(pp, o->runs), median(tg, o->runs));
    br_engine_model_close(em);
    return 0;
}

/* A positive int, or -1. */
static int parse_int(const char *v)
{
    char *end = NULL;
    long n = strtol(v, &end, 10);
    return end != v && *end == '\0' && n > 0 && n < 1000000 ? (int)n : -1;
}

/* One option with its value; 0 or -1 (unknown option or bad value). */
static int parse_opt(const char *a, const char *v, struct opts *o)
{
    if (strcmp(a, "--runs") == 0) {
        o->runs = parse_int(v);
    } else if (strcmp(a, "--gen") == 0) {
        o->gen = parse_int(v);
    } else if (strcmp(a, "--prompt") == 0) {
        o->prompt = parse_int(v);
    } else if (strcmp(a, "--only") == 0) {
        o->only = v;
    } else if (strcmp(a, "--write-gguf") == 0) {
        o->write_dir = v;
    } else if (strcmp(a, "--gguf") == 0) {
        o->gguf = v;
    } else if (strcmp(a, "--threads") == 0) {
        o->threads = parse_int(v);
        return o->threads >= 1 && o->threads <= 256 ? 0 : -1;
    } else if (strcmp(a, "--lora-rank") == 0) {
        o->lora_rank = parse_int(v);
        return o->lora_rank >= 1 && o->lora_rank <= BR_LORA_MAX_RANK ? 0 : -1;
    } else {
        return -1;
    }
    return 0;
}

static int parse(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bandwidth") == 0) {
            o->bandwidth_only = 1;
            continue;
        }
        if (i + 1 >= argc || parse_opt(argv[i], argv[i + 1], o) != 0) {
            return -1;
        }
        i++;
    }
    return o->runs >= 1 && o->runs <= MAX_RUNS && o->gen >= 1 && o->prompt >= 1 ? 0 : -1;
}

static int main_lora(const struct opts *o)
{
    printf("# run-time LoRA, rank %d on wq/wk/wv/wo of every layer, scale 1; generation tok/s "
           "without and with the adapter (runs interleaved); median of %d runs, prompt %d, "
           "generation %d tokens\n",
           o->lora_rank, o->runs, o->prompt, o->gen);
    printf("| model           | type | threads | rank | no LoRA | with LoRA | cost |\n");
    printf("|-----------------|------|---|------|-----------|-----------|---------|\n");
    if (!o->only || strcmp(o->only, "stories") == 0) {
        struct br_llama2c *c = NULL;
        char err[256] = "";
        if (br_llama2c_open(MODEL_PATH, &c, err, sizeof(err)) != BR_OK) {
            (void)fprintf(stderr, "bench_engine: %s\n", err);
            return 1;
        }
        struct model m;
        memset(&m, 0, sizeof(m));
        m.name = "stories260K";
        m.config = c->config;
        m.w = c->weights;
        bench_lora_types(&m, o);
        model_free(&m);
        br_llama2c_close(c);
    }
    if (!o->only || strcmp(o->only, "110m") == 0) {
        struct model m;
        make_110m(&m);
        bench_lora_types(&m, o);
        model_free(&m);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o = {.runs = 3, .gen = 128, .prompt = 64, .only = NULL, .threads = 1};
    if (parse(argc, argv, &o) != 0) {
        (void)fprintf(stderr, "usage: bench_engine [--runs N<=15] [--gen N] [--prompt N] "
                              "[--only stories|110m] [--lora-rank R]\n"
                              "       bench_engine --write-gguf DIR [--only stories|110m]\n"
                              "       bench_engine --gguf FILE [--threads N] [--runs N] "
                              "[--gen N] [--prompt N]\n"
                              "       bench_engine --bandwidth\n");
        return 2;
    }
    if (o.write_dir) {
        return main_write(&o);
    }
    if (o.gguf) {
        return main_gguf(&o);
    }
    if (o.lora_rank > 0) {
        return main_lora(&o);
    }
    size_t count = (size_t)512 << 20 >> 3; /* 512 MiB of doubles */
    double *buf = malloc(count * sizeof(double));
    if (!buf) {
        return 1;
    }
    for (size_t i = 0; i < count; i++) {
        buf[i] = (double)(i & 7);
    }
    double bw[2];
    bw[0] = bandwidth(buf, count, 1, 5);
    bw[1] = bandwidth(buf, count, 2, 5);
    free(buf);
    if (o.bandwidth_only) {
        printf("{\"bw_gbs\":[%.2f,%.2f]}\n", bw[0], bw[1]);
        return 0;
    }
    printf("# avx2 kernels: %d; memory read bandwidth: %.1f GB/s (1 thread), %.1f GB/s "
           "(2 threads); median of %d runs, prompt %d tokens, generation %d tokens\n",
           br_kernel_has_avx2(), bw[0], bw[1], o.runs, o.prompt, o.gen);
    printf("| model           | type | threads | pp tok/s | gen tok/s | MB/token | of BW |\n");
    printf("|-----------------|------|---|-----------|-----------|----------|--------|\n");
    if (!o.only || strcmp(o.only, "stories") == 0) {
        struct br_llama2c *c = NULL;
        char err[256] = "";
        if (br_llama2c_open(MODEL_PATH, &c, err, sizeof(err)) != BR_OK) {
            (void)fprintf(stderr, "bench_engine: %s\n", err);
            return 1;
        }
        struct model m;
        memset(&m, 0, sizeof(m));
        m.name = "stories260K";
        m.config = c->config;
        m.w = c->weights;
        bench_all_types(&m, &o, bw);
        br_llama2c_close(c);
    }
    if (!o.only || strcmp(o.only, "110m") == 0) {
        struct model m;
        make_110m(&m);
        bench_all_types(&m, &o, bw);
        model_free(&m);
    }
    return 0;
}
