/* SPDX-License-Identifier: MIT */
/*
 * `brigade generate`, `brigade quantize`, `brigade lora merge` and `brigade quality`: argument
 * parsing and printing around engine.h, gguf_write.h and quality.h. See engine_cli.h.
 */
#include "engine/engine_cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "engine/engine.h"
#include "engine/forward.h"
#include "engine/gguf.h"
#include "engine/gguf_write.h"
#include "engine/lora.h"
#include "engine/quality.h"
#include "engine/quant.h"
#include "engine/tokenizer.h"

static const char usage_generate[] =
    "usage: brigade generate -m MODEL [--tokenizer FILE] [-p PROMPT] [-n N] [--temperature T]\n"
    "                        [--top-p P] [--top-k K] [--seed S] [--stop S]... [--logprobs N]\n"
    "                        [--threads N] [--lora ADAPTER[:SCALE]]...\n"
    "\n"
    "Generates a continuation of PROMPT with the embedded engine and streams the text to stdout\n"
    "as it is produced, then a newline. A summary goes to stderr: prompt and completion\n"
    "tokens, finish reason (stop: EOS or a stop string; length: -n or the context), seconds\n"
    "and tokens per second (prompt + completion over the generation time, load excluded).\n"
    "\n"
    "options:\n"
    "  -m, --model MODEL    a GGUF file (llama architecture, llama/SentencePiece vocabulary in\n"
    "                       the file) or a llama2.c checkpoint (.bin, needs --tokenizer)\n"
    "  --tokenizer FILE     llama2.c tokenizer.bin for a .bin model (not guessed; ignored for\n"
    "                       GGUF, which carries its own vocabulary)\n"
    "  -p, --prompt PROMPT  text to continue (default: empty, i.e. only the BOS token)\n"
    "  -n, --max-tokens N   stop after N generated tokens (default 0: until EOS, a stop string\n"
    "                       or a full context; prompt + completion never exceed the model's\n"
    "                       context length, which ends generation with finish=length)\n"
    "  --temperature T      sampling temperature, 0 = greedy (default 0.8)\n"
    "  --top-p P            nucleus sampling mass in (0, 1] (default 0.95)\n"
    "  --top-k K            keep the K most likely tokens, 0 = all (default 40)\n"
    "  --seed S             random seed for reproducible sampling (default 0: random)\n"
    "  --stop S             stop before the first occurrence of S (not printed); up to 4\n"
    "  --logprobs N         also print, to stderr, one line per token with its id, its\n"
    "                       log-probability and the N (0..20) most likely alternatives\n"
    "  --threads N          threads that split the forward pass's matrix-vector products,\n"
    "                       1..256 (default 1); the output is the same for any N\n"
    "  --lora ADAPTER[:SCALE]  apply a LoRA adapter (llama.cpp GGUF LoRA format, made for\n"
    "                       MODEL) at run time, without merging: every adapted matrix gives\n"
    "                       W x + SCALE * (alpha / rank) * B (A x); SCALE defaults to 1;\n"
    "                       repeat for several adapters (up to 8)\n"
    "  -h, --help           this text\n"
    "\n"
    "exit status: 0 done, 2 usage error, 1 the model cannot be loaded or generation failed\n";

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)fprintf(stderr, "brigade %s: ", cmd);
    (void)vfprintf(stderr, fmt, ap);
    (void)fprintf(stderr, "\n(brigade %s --help for usage)\n", cmd);
    va_end(ap);
    return 2;
}

static int parse_float(const char *s, double lo, double hi, float *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !isfinite(v) || v < lo || v > hi) {
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int parse_ull(const char *s, unsigned long long max, unsigned long long *out)
{
    if (*s < '0' || *s > '9') {
        return -1;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno != 0 || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_int(const char *s, int max, int *out)
{
    unsigned long long v = 0;
    if (parse_ull(s, (unsigned long long)max, &v) != 0) {
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* "--name value" / "--name=value" (also the short alias when given). 1 matched, 0 not, -1 no
 * value. */
static int opt_value(int argc, char **argv, int *i, const char *name, const char *alias,
                     const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) == 0 && a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (strcmp(a, name) != 0 && !(alias && strcmp(a, alias) == 0)) {
        return 0;
    }
    if (*i + 1 >= argc) {
        return -1;
    }
    *out = argv[++*i];
    return 1;
}

#define MAX_ADAPTERS BR_LLAMA_MAX_LORA

struct adapters {
    const char *spec[MAX_ADAPTERS]; /* FILE[:SCALE] as given */
    int n;
    br_lora *open[MAX_ADAPTERS];
    struct br_lora_use use[MAX_ADAPTERS];
};

static int adapters_add(struct adapters *a, const char *cmd, const char *spec)
{
    if (a->n >= MAX_ADAPTERS) {
        return usage_error(cmd, "at most %d adapters", MAX_ADAPTERS);
    }
    a->spec[a->n++] = spec;
    return 0;
}

/* Opens every FILE[:SCALE] against model m (scale 1 when absent; a suffix after the last ':'
 * that is not a number is part of the file name). 0 or 1 (message printed). */
static int adapters_open(struct adapters *a, const char *cmd, const br_engine_model *m)
{
    for (int i = 0; i < a->n; i++) {
        char path[4096];
        const char *spec = a->spec[i];
        const char *colon = strrchr(spec, ':');
        float scale = 1.0f;
        size_t len = strlen(spec);
        if (colon && parse_float(colon + 1, -1000.0, 1000.0, &scale) == 0) {
            len = (size_t)(colon - spec);
        } else {
            scale = 1.0f;
        }
        if (len == 0 || len >= sizeof path) {
            (void)fprintf(stderr, "brigade %s: bad adapter '%s'\n", cmd, spec);
            return 1;
        }
        memcpy(path, spec, len);
        path[len] = '\0';
        char err[BR_LORA_ERR_CAP];
        if (br_lora_open(path, br_engine_model_config(m), &a->open[i], err, sizeof err) != BR_OK) {
            (void)fprintf(stderr, "brigade %s: %s\n", cmd, err);
            return 1;
        }
        a->use[i].adapter = a->open[i];
        a->use[i].scale = scale;
    }
    return 0;
}

static void adapters_close(struct adapters *a)
{
    for (int i = 0; i < a->n; i++) {
        br_lora_close(a->open[i]);
        a->open[i] = NULL;
    }
}

struct gen_cli {
    const char *model;
    const char *tokenizer;
    const char *prompt;
    struct br_engine_gen_params p;
    int n_stop;
    int threads;
    struct adapters ad; /* --lora FILE[:SCALE] */
};

static int gen_number(struct gen_cli *c, const char *name, const char *v)
{
    unsigned long long seed = 0;
    int bad = 0;
    if (strcmp(name, "--max-tokens") == 0) {
        bad = parse_int(v, 1 << 24, &c->p.max_tokens);
    } else if (strcmp(name, "--temperature") == 0) {
        bad = parse_float(v, 0.0, 100.0, &c->p.sampler.temperature);
    } else if (strcmp(name, "--top-p") == 0) {
        bad = parse_float(v, 0.0, 1.0, &c->p.sampler.top_p);
        bad = bad || c->p.sampler.top_p <= 0.0f;
    } else if (strcmp(name, "--top-k") == 0) {
        bad = parse_int(v, 1 << 24, &c->p.sampler.top_k);
    } else if (strcmp(name, "--seed") == 0) {
        bad = parse_ull(v, UINT64_MAX, &seed);
        c->p.sampler.seed = (uint64_t)seed;
    } else if (strcmp(name, "--logprobs") == 0) {
        bad = parse_int(v, BR_ENGINE_MAX_TOP_LOGPROBS, &c->p.top_logprobs);
    } else if (strcmp(name, "--threads") == 0) {
        bad = parse_int(v, 256, &c->threads) || c->threads < 1;
    }
    return bad ? usage_error("generate", "invalid value for %s: '%s'", name, v) : 0;
}

static int gen_stop(struct gen_cli *c, const char *v)
{
    if (c->n_stop >= BR_ENGINE_MAX_STOP) {
        return usage_error("generate", "at most %d --stop strings", BR_ENGINE_MAX_STOP);
    }
    size_t l = strlen(v);
    if (l == 0 || l > BR_ENGINE_MAX_STOP_LEN) {
        return usage_error("generate", "a --stop string must have 1..%d bytes",
                           BR_ENGINE_MAX_STOP_LEN);
    }
    c->p.stop[c->n_stop++] = v;
    return 0;
}

static const struct {
    const char *name;
    const char *alias;
} gen_opts[] = {
    {"--model", "-m"},       {"--tokenizer", NULL}, {"--prompt", "-p"},  {"--max-tokens", "-n"},
    {"--temperature", NULL}, {"--top-p", NULL},     {"--top-k", NULL},   {"--seed", NULL},
    {"--stop", NULL},        {"--logprobs", NULL},  {"--threads", NULL}, {"--lora", NULL},
};

static int gen_option(struct gen_cli *c, const char *name, const char *v)
{
    if (strcmp(name, "--model") == 0) {
        c->model = v;
    } else if (strcmp(name, "--tokenizer") == 0) {
        c->tokenizer = v;
    } else if (strcmp(name, "--prompt") == 0) {
        c->prompt = v;
    } else if (strcmp(name, "--stop") == 0) {
        return gen_stop(c, v);
    } else if (strcmp(name, "--lora") == 0) {
        return adapters_add(&c->ad, "generate", v);
    } else {
        return gen_number(c, name, v);
    }
    return 0;
}

/* 0 parsed, 1 help printed, 2 usage error. */
static int gen_parse(struct gen_cli *c, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            (void)fputs(usage_generate, stdout);
            return 1;
        }
        int matched = 0;
        for (size_t k = 0; k < sizeof gen_opts / sizeof gen_opts[0] && !matched; k++) {
            const char *v = NULL;
            matched = opt_value(argc, argv, &i, gen_opts[k].name, gen_opts[k].alias, &v);
            if (matched < 0) {
                return usage_error("generate", "%s needs a value", a);
            }
            if (matched > 0 && gen_option(c, gen_opts[k].name, v) != 0) {
                return 2;
            }
        }
        if (!matched) {
            return usage_error("generate", "unknown argument '%s'", a);
        }
    }
    if (!c->model) {
        return usage_error("generate", "-m MODEL is required");
    }
    return 0;
}

static void print_logprobs(const struct br_engine_token *t)
{
    (void)fprintf(stderr, "logprob %d %.6f", t->token, (double)t->logprob);
    for (int i = 0; i < t->n_top; i++) {
        (void)fprintf(stderr, " | %d %.6f", t->top[i].token, (double)t->top[i].logprob);
    }
    (void)fputc('\n', stderr);
}

static int on_token(void *user, const struct br_engine_token *t)
{
    const struct gen_cli *c = user;
    if (t->text.len > 0 &&
        (fwrite(t->text.ptr, 1, t->text.len, stdout) != t->text.len || fflush(stdout) != 0)) {
        return BR_ERR_IO;
    }
    if (c->p.top_logprobs > 0 && t->token >= 0) {
        print_logprobs(t);
    }
    return BR_OK;
}

int br_generate_cli(int argc, char **argv)
{
    struct gen_cli c;
    memset(&c, 0, sizeof c);
    br_engine_gen_params_init(&c.p);
    c.p.sampler.temperature = 0.8f;
    c.p.sampler.top_p = 0.95f;
    c.p.sampler.top_k = 40;
    c.threads = 1;
    c.prompt = "";
    int rc = gen_parse(&c, argc, argv);
    if (rc != 0) {
        return rc == 1 ? 0 : rc;
    }
    char err[BR_ENGINE_ERR_CAP];
    br_engine_model *m = NULL;
    rc = br_engine_model_open(c.model, c.tokenizer, &m, err, sizeof err);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade generate: %s\n", err);
        return 1;
    }
    if (adapters_open(&c.ad, "generate", m) != 0) {
        adapters_close(&c.ad);
        br_engine_model_close(m);
        return 1;
    }
    c.p.lora = c.ad.use;
    c.p.n_lora = c.ad.n;
    c.p.on_token = on_token;
    c.p.user = &c;
    c.p.n_threads = c.threads;
    struct br_engine_gen_result res;
    uint64_t t0 = br_clock_now_ns();
    rc = br_engine_generate(m, c.prompt, strlen(c.prompt), &c.p, &res, err, sizeof err);
    double secs = (double)(br_clock_now_ns() - t0) / 1e9;
    (void)fputc('\n', stdout);
    (void)fflush(stdout);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade generate: %s\n", err[0] ? err : br_strerror(rc));
    } else {
        (void)fprintf(stderr,
                      "brigade generate: %zu prompt + %zu completion tokens, finish %s, %.3f s, "
                      "%.1f tok/s\n",
                      res.prompt_tokens, res.completion_tokens, br_engine_finish_name(res.finish),
                      secs,
                      secs > 0 ? (double)(res.prompt_tokens + res.completion_tokens) / secs : 0.0);
    }
    br_engine_gen_result_free(&res);
    adapters_close(&c.ad);
    br_engine_model_close(m);
    return rc == BR_OK ? 0 : 1;
}

/* ---- brigade quantize ---------------------------------------------------------------------- */

static const char usage_quantize[] =
    "usage: brigade quantize IN OUT --type q8_0|q4_0|f16|f32 [--tokenizer FILE]\n"
    "\n"
    "Rewrites the llama model IN (a GGUF file, or a llama2.c .bin with --tokenizer) as a\n"
    "self-contained GGUF v3 file OUT: the llama.* hyper-parameters, the vocabulary as\n"
    "tokenizer.ggml.* (tokens, scores, token types, bos/eos/unk ids, add_bos_token) and the\n"
    "weights in the requested type. OUT is written to OUT.tmp and renamed when complete.\n"
    "\n"
    "Which tensors get which type:\n"
    "  - 1-D tensors (the RMSNorm weights) always stay f32.\n"
    "  - q8_0 and q4_0 work on blocks of 32 values along a row: a matrix whose rows are not a\n"
    "    multiple of 32 long (e.g. stories260K's ffn_down, rows of 172) is written as f32.\n"
    "  - with f16 every matrix is f16; with f32 every matrix is f32.\n"
    "  A tensor already in the output type is copied unchanged (so quantizing an output again\n"
    "  gives the same bytes); others are dequantized to f32 and converted.\n"
    "\n"
    "options:\n"
    "  --type T          output type: q8_0, q4_0, f16 or f32 (required)\n"
    "  --tokenizer FILE  llama2.c tokenizer.bin for a .bin model\n"
    "  -h, --help        this text\n"
    "\n"
    "exit status: 0 done, 2 usage error, 1 the input cannot be read or OUT cannot be written\n";

struct qtensor {
    const struct br_tensor *src;
    enum br_tensor_type type;
    int layer;                  /* -1: not a per-layer matrix */
    enum br_lora_target target; /* which matrix of the layer */
};

/* The model writer shared by `quantize` and `lora merge`: every tensor of the model, converted
 * to its output type, with the adapters (if any) merged into the matrices they adapt. */
struct quant_job {
    struct qtensor *t;
    size_t n;
    size_t cap;
    float *row;                     /* one dequantized row */
    const struct br_lora_use *lora; /* adapters merged into the weights (lora merge) */
    int n_lora;
    float *lora_tmp; /* max rank + max cols floats */
};

static int merge_row(const struct quant_job *j, const struct qtensor *q, size_t r)
{
    int rc = BR_OK;
    for (int i = 0; i < j->n_lora && rc == BR_OK && q->layer >= 0; i++) {
        const struct br_lora_pair *p = br_lora_pair(j->lora[i].adapter, q->layer, q->target);
        if (p && j->lora[i].scale != 0.0f) {
            rc = br_lora_merge_row(j->lora[i].adapter, p, j->lora[i].scale, r, j->row, j->lora_tmp);
        }
    }
    return rc;
}

static int quant_row(const struct quant_job *j, const struct qtensor *q, size_t r,
                     const uint8_t *src, uint8_t *dst)
{
    size_t cols = q->src->cols;
    int rc = br_quant_dequantize_row(q->src->type, src, j->row, cols);
    rc = rc == BR_OK ? merge_row(j, q, r) : rc;
    if (rc != BR_OK) {
        return rc;
    }
    switch (q->type) {
    case BR_TENSOR_F32:
        memcpy(dst, j->row, cols * sizeof(float));
        return BR_OK;
    case BR_TENSOR_F16:
        for (size_t c = 0; c < cols; c++) {
            uint16_t h = br_quant_f32_to_f16(j->row[c]);
            dst[2 * c] = (uint8_t)(h & 0xff);
            dst[2 * c + 1] = (uint8_t)(h >> 8);
        }
        return BR_OK;
    case BR_TENSOR_Q8_0:
        return br_quant_quantize_row_q8_0(j->row, dst, cols);
    case BR_TENSOR_Q4_0:
        return br_quant_quantize_row_q4_0(j->row, dst, cols);
    default:
        return BR_ERR_UNSUPPORTED;
    }
}

/* 1 when an adapter of the job changes tensor q. */
static bool adapted(const struct quant_job *j, const struct qtensor *q)
{
    for (int i = 0; i < j->n_lora && q->layer >= 0; i++) {
        if (j->lora[i].scale != 0.0f && br_lora_pair(j->lora[i].adapter, q->layer, q->target)) {
            return true;
        }
    }
    return false;
}

static int quant_fill(void *user, size_t index, void *dst, size_t n_bytes)
{
    const struct quant_job *j = user;
    const struct qtensor *q = &j->t[index];
    size_t in_row = br_tensor_row_bytes(q->src->type, q->src->cols);
    size_t out_row = br_tensor_row_bytes(q->type, q->src->cols);
    if (in_row == 0 || out_row == 0 || out_row * q->src->rows != n_bytes) {
        return BR_ERR_INVAL;
    }
    const uint8_t *src = q->src->data;
    uint8_t *out = dst;
    if (q->type == q->src->type && !adapted(j, q)) {
        memcpy(out, src, n_bytes);
        return BR_OK;
    }
    for (size_t r = 0; r < q->src->rows; r++) {
        int rc = quant_row(j, q, r, src + r * in_row, out + r * out_row);
        if (rc != BR_OK) {
            return rc;
        }
    }
    return BR_OK;
}

/* The output type of a tensor under the rule in usage_quantize. */
static enum br_tensor_type quant_type(enum br_tensor_type target, const struct br_tensor *t,
                                      bool vector)
{
    if (vector) {
        return BR_TENSOR_F32;
    }
    size_t block = br_tensor_block_elems(target);
    return block > 0 && t->cols % block == 0 ? target : BR_TENSOR_F32;
}

static int add_tensor(br_gguf_writer *w, struct quant_job *j, enum br_tensor_type target,
                      const char *name, const struct br_tensor *t, bool vector)
{
    if (j->n == j->cap) {
        return BR_ERR_LIMIT;
    }
    enum br_tensor_type type = quant_type(target, t, vector);
    j->t[j->n].src = t;
    j->t[j->n].type = type;
    j->t[j->n].layer = -1;
    uint64_t dims[2] = {t->cols, t->rows};
    int rc = br_gguf_writer_tensor(w, name, type, vector ? 1 : 2, dims, NULL);
    if (rc == BR_OK) {
        j->n++;
    }
    return rc;
}

static int add_tensors(br_gguf_writer *w, struct quant_job *j, enum br_tensor_type target,
                       const struct br_llama_weights *wt)
{
    int rc = add_tensor(w, j, target, "token_embd.weight", &wt->token_embedding, false);
    if (rc == BR_OK) {
        rc = add_tensor(w, j, target, "output_norm.weight", &wt->final_norm, true);
    }
    if (rc == BR_OK && wt->output.data != wt->token_embedding.data) {
        rc = add_tensor(w, j, target, "output.weight", &wt->output, false);
    }
    for (int l = 0; l < wt->n_layers && rc == BR_OK; l++) {
        const struct br_llama_layer *ly = &wt->layers[l];
        const struct {
            const char *what;
            const struct br_tensor *t;
            int lora; /* enum br_lora_target, -1 for the norms */
        } list[] = {{"attn_norm", &ly->attn_norm, -1},    {"attn_q", &ly->wq, BR_LORA_WQ},
                    {"attn_k", &ly->wk, BR_LORA_WK},      {"attn_v", &ly->wv, BR_LORA_WV},
                    {"attn_output", &ly->wo, BR_LORA_WO}, {"ffn_norm", &ly->ffn_norm, -1},
                    {"ffn_gate", &ly->w1, BR_LORA_W1},    {"ffn_down", &ly->w2, BR_LORA_W2},
                    {"ffn_up", &ly->w3, BR_LORA_W3}};
        for (size_t k = 0; k < sizeof list / sizeof list[0] && rc == BR_OK; k++) {
            char name[64];
            (void)snprintf(name, sizeof name, "blk.%d.%s.weight", l, list[k].what);
            bool vector = list[k].lora < 0;
            rc = add_tensor(w, j, target, name, list[k].t, vector);
            if (rc == BR_OK && !vector) {
                j->t[j->n - 1].layer = l;
                j->t[j->n - 1].target = (enum br_lora_target)list[k].lora;
            }
        }
    }
    return rc;
}

static uint32_t file_type(enum br_tensor_type target)
{
    switch (target) {
    case BR_TENSOR_F16:
        return 1;
    case BR_TENSOR_Q4_0:
        return 2;
    case BR_TENSOR_Q8_0:
        return 7;
    default:
        return 0;
    }
}

static int add_config(br_gguf_writer *w, const struct br_llama_config *c,
                      enum br_tensor_type target)
{
    int rc = br_gguf_writer_kv_str(w, "general.architecture", br_slice_from_cstr("llama"));
    rc = rc == BR_OK ? br_gguf_writer_kv_u32(w, "general.file_type", file_type(target)) : rc;
    if (rc == BR_OK && target != BR_TENSOR_F32 && target != BR_TENSOR_F16) {
        rc = br_gguf_writer_kv_u32(w, "general.quantization_version", 2);
    }
    rc = rc == BR_OK ? br_gguf_writer_kv_u32(w, "llama.context_length", (uint32_t)c->seq_len) : rc;
    rc = rc == BR_OK ? br_gguf_writer_kv_u32(w, "llama.embedding_length", (uint32_t)c->dim) : rc;
    rc = rc == BR_OK
             ? br_gguf_writer_kv_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim)
             : rc;
    rc = rc == BR_OK ? br_gguf_writer_kv_u32(w, "llama.block_count", (uint32_t)c->n_layers) : rc;
    rc = rc == BR_OK ? br_gguf_writer_kv_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads)
                     : rc;
    rc = rc == BR_OK
             ? br_gguf_writer_kv_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads)
             : rc;
    rc = rc == BR_OK ? br_gguf_writer_kv_u32(w, "llama.rope.dimension_count",
                                             (uint32_t)(c->dim / c->n_heads))
                     : rc;
    rc = rc == BR_OK
             ? br_gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", c->rms_eps)
             : rc;
    rc = rc == BR_OK ? br_gguf_writer_kv_f32(w, "llama.rope.freq_base", c->rope_theta) : rc;
    return rc;
}

static int add_special(br_gguf_writer *w, const char *key, int32_t id)
{
    return id < 0 ? BR_OK : br_gguf_writer_kv_u32(w, key, (uint32_t)id);
}

static int add_vocab(br_gguf_writer *w, const br_engine_model *m)
{
    const struct br_tokenizer *t = br_engine_model_tokenizer(m);
    size_t n = br_tokenizer_n_vocab(t);
    struct br_slice *pieces = br_calloc(n, sizeof *pieces);
    float *scores = br_calloc(n, sizeof *scores);
    int32_t *types = br_calloc(n, sizeof *types);
    int rc = pieces && scores && types ? BR_OK : BR_ERR_NOMEM;
    for (size_t i = 0; i < n && rc == BR_OK; i++) {
        enum br_tok_type type = BR_TOK_NORMAL;
        if (!br_tokenizer_token(t, (int32_t)i, &pieces[i], &scores[i], &type)) {
            rc = BR_ERR_RANGE;
        }
        types[i] = (int32_t)type;
    }
    rc = rc == BR_OK ? br_gguf_writer_kv_str(w, "tokenizer.ggml.model", br_slice_from_cstr("llama"))
                     : rc;
    rc = rc == BR_OK ? br_gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", pieces, n) : rc;
    rc = rc == BR_OK ? br_gguf_writer_kv_arr_f32(w, "tokenizer.ggml.scores", scores, n) : rc;
    rc = rc == BR_OK ? br_gguf_writer_kv_arr_i32(w, "tokenizer.ggml.token_type", types, n) : rc;
    rc = rc == BR_OK ? add_special(w, "tokenizer.ggml.bos_token_id", br_tokenizer_bos(t)) : rc;
    rc = rc == BR_OK ? add_special(w, "tokenizer.ggml.eos_token_id", br_tokenizer_eos(t)) : rc;
    rc = rc == BR_OK ? add_special(w, "tokenizer.ggml.unknown_token_id", br_tokenizer_unk(t)) : rc;
    rc = rc == BR_OK
             ? br_gguf_writer_kv_bool(w, "tokenizer.ggml.add_bos_token", br_engine_model_add_bos(m))
             : rc;
    br_free(pieces);
    br_free(scores);
    br_free(types);
    return rc;
}

static int parse_target(const char *s, enum br_tensor_type *out)
{
    static const struct {
        const char *name;
        enum br_tensor_type type;
    } names[] = {{"q8_0", BR_TENSOR_Q8_0},
                 {"q4_0", BR_TENSOR_Q4_0},
                 {"f16", BR_TENSOR_F16},
                 {"f32", BR_TENSOR_F32}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].type;
            return 0;
        }
    }
    return -1;
}

struct quant_cli {
    const char *in;
    const char *out;
    const char *tokenizer;
    const char *type;
};

/* 0 parsed, 1 help printed, 2 usage error. */
static int quant_parse(struct quant_cli *c, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            (void)fputs(usage_quantize, stdout);
            return 1;
        }
        int m = opt_value(argc, argv, &i, "--type", NULL, &v);
        if (m == 0) {
            m = opt_value(argc, argv, &i, "--tokenizer", NULL, &v);
            if (m > 0) {
                c->tokenizer = v;
            }
        } else if (m > 0) {
            c->type = v;
        }
        if (m < 0) {
            return usage_error("quantize", "%s needs a value", a);
        }
        if (m > 0) {
            continue;
        }
        if (a[0] == '-' && a[1] != '\0') {
            return usage_error("quantize", "unknown option '%s'", a);
        }
        if (!c->in) {
            c->in = a;
        } else if (!c->out) {
            c->out = a;
        } else {
            return usage_error("quantize", "unexpected argument '%s'", a);
        }
    }
    if (!c->in || !c->out) {
        return usage_error("quantize", "IN and OUT are required");
    }
    if (!c->type) {
        return usage_error("quantize", "--type is required");
    }
    return 0;
}

static void quant_summary(const struct quant_cli *c, const struct quant_job *j)
{
    size_t counts[BR_TENSOR_Q6_K + 1] = {0};
    for (size_t i = 0; i < j->n; i++) {
        counts[j->t[i].type]++;
    }
    (void)fprintf(stderr, "brigade quantize: wrote %s (%s): %zu tensors:", c->out, c->type, j->n);
    for (int t = 0; t <= BR_TENSOR_Q6_K; t++) {
        if (counts[t] > 0) {
            (void)fprintf(stderr, " %zu %s", counts[t],
                          br_tensor_type_name((enum br_tensor_type)t));
        }
    }
    (void)fputc('\n', stderr);
}

/* Writes model m (opened from in_name) to out as GGUF with tensors of `target` type and the
 * adapters j->lora merged in; prints errors prefixed with "brigade CMD". 0 or 1. */
static int write_model(const char *cmd, const br_engine_model *m, const char *in_name,
                       const char *out, enum br_tensor_type target, struct quant_job *j)
{
    char err[BR_ENGINE_ERR_CAP];
    br_gguf_writer *w = NULL;
    const struct br_llama_config *cfg = br_engine_model_config(m);
    const struct br_llama_weights *wt = br_engine_model_weights(m);
    size_t max_cols = (size_t)(cfg->dim > cfg->hidden_dim ? cfg->dim : cfg->hidden_dim);
    j->cap = 3 + (size_t)wt->n_layers * 9;
    j->t = br_calloc(j->cap, sizeof *j->t);
    j->row = br_calloc(max_cols, sizeof *j->row);
    j->lora_tmp = br_calloc(max_cols + BR_LORA_MAX_RANK, sizeof *j->lora_tmp);
    int rc =
        j->t && j->row && j->lora_tmp ? br_gguf_writer_create(0, quant_fill, j, &w) : BR_ERR_NOMEM;
    rc = rc == BR_OK ? add_config(w, cfg, target) : rc;
    rc = rc == BR_OK ? add_vocab(w, m) : rc;
    rc = rc == BR_OK ? add_tensors(w, j, target, wt) : rc;
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade %s: %s: %s\n", cmd, in_name, br_strerror(rc));
    } else {
        rc = br_gguf_writer_write(w, out, err, sizeof err);
        if (rc != BR_OK) {
            (void)fprintf(stderr, "brigade %s: %s\n", cmd, err);
        }
    }
    br_gguf_writer_free(w);
    return rc == BR_OK ? 0 : 1;
}

static void quant_job_free(struct quant_job *j)
{
    br_free(j->t);
    br_free(j->row);
    br_free(j->lora_tmp);
}

static int quant_run(const struct quant_cli *c, enum br_tensor_type target)
{
    char err[BR_ENGINE_ERR_CAP];
    br_engine_model *m = NULL;
    struct quant_job j;
    memset(&j, 0, sizeof j);
    int rc = br_engine_model_open(c->in, c->tokenizer, &m, err, sizeof err);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade quantize: %s\n", err);
        return 1;
    }
    int status = write_model("quantize", m, c->in, c->out, target, &j);
    if (status == 0) {
        quant_summary(c, &j);
    }
    quant_job_free(&j);
    br_engine_model_close(m);
    return status;
}

int br_quantize_cli(int argc, char **argv)
{
    struct quant_cli c;
    memset(&c, 0, sizeof c);
    int rc = quant_parse(&c, argc, argv);
    if (rc != 0 || !c.type) {
        return rc == 1 ? 0 : 2;
    }
    enum br_tensor_type target = BR_TENSOR_F32;
    if (parse_target(c.type, &target) != 0) {
        return usage_error("quantize", "--type must be q8_0, q4_0, f16 or f32, not '%s'", c.type);
    }
    return quant_run(&c, target);
}

/* ---- LoRA adapters: brigade lora merge, brigade generate --lora ------------------------------ */

static const char usage_lora[] =
    "usage: brigade lora merge BASE ADAPTER[:SCALE]... -o OUT [--tokenizer FILE]\n"
    "\n"
    "Merges LoRA adapters into the weights of the llama model BASE (a GGUF file, or a llama2.c\n"
    ".bin with --tokenizer) and writes a self-contained GGUF v3 model OUT (hyper-parameters and\n"
    "vocabulary as `brigade quantize` writes them). Each ADAPTER is a GGUF LoRA adapter in\n"
    "llama.cpp's format (general.type \"adapter\", adapter.type \"lora\", adapter.lora.alpha,\n"
    "blk.N.<matrix>.weight.lora_a/lora_b) made for BASE; SCALE (default 1) multiplies it:\n"
    "every adapted matrix becomes W + sum SCALE * (alpha / rank) * B A. Up to 8 adapters.\n"
    "All matrices are written as f32 (quantize OUT afterwards for a smaller file); the result\n"
    "gives the logits of `brigade generate -m BASE --lora ADAPTER[:SCALE]` (run-time LoRA)\n"
    "up to float rounding. OUT is written to OUT.tmp and renamed when complete.\n"
    "\n"
    "options:\n"
    "  -o, --output OUT  the merged model (required)\n"
    "  --tokenizer FILE  llama2.c tokenizer.bin for a .bin BASE\n"
    "  -h, --help        this text\n"
    "\n"
    "exit status: 0 done, 2 usage error, 1 an input cannot be read (or is not an adapter for\n"
    "BASE) or OUT cannot be written\n";

struct merge_cli {
    const char *base;
    const char *out;
    const char *tokenizer;
    struct adapters ad;
};

/* 0 parsed, 1 help printed, 2 usage error. */
static int merge_parse(struct merge_cli *c, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            (void)fputs(usage_lora, stdout);
            return 1;
        }
        int m = opt_value(argc, argv, &i, "--output", "-o", &v);
        if (m > 0) {
            c->out = v;
            continue;
        }
        m = m == 0 ? opt_value(argc, argv, &i, "--tokenizer", NULL, &v) : m;
        if (m < 0) {
            return usage_error("lora merge", "%s needs a value", a);
        }
        if (m > 0) {
            c->tokenizer = v;
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("lora merge", "unknown option '%s'", a);
        } else if (!c->base) {
            c->base = a;
        } else if (adapters_add(&c->ad, "lora merge", a) != 0) {
            return 2;
        }
    }
    if (!c->base || c->ad.n == 0) {
        return usage_error("lora merge", "BASE and at least one ADAPTER are required");
    }
    if (!c->out) {
        return usage_error("lora merge", "-o OUT is required");
    }
    return 0;
}

static int merge_run(struct merge_cli *c)
{
    br_engine_model *m = NULL;
    char err[BR_ENGINE_ERR_CAP];
    if (br_engine_model_open(c->base, c->tokenizer, &m, err, sizeof err) != BR_OK) {
        (void)fprintf(stderr, "brigade lora merge: %s\n", err);
        return 1;
    }
    struct quant_job j;
    memset(&j, 0, sizeof j);
    int status = adapters_open(&c->ad, "lora merge", m);
    if (status == 0) {
        j.lora = c->ad.use;
        j.n_lora = c->ad.n;
        status = write_model("lora merge", m, c->base, c->out, BR_TENSOR_F32, &j);
    }
    if (status == 0) {
        (void)fprintf(stderr, "brigade lora merge: wrote %s (%d adapter%s merged, f32)\n", c->out,
                      c->ad.n, c->ad.n == 1 ? "" : "s");
    }
    quant_job_free(&j);
    adapters_close(&c->ad);
    br_engine_model_close(m);
    return status;
}

int br_lora_cli(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0) {
        (void)fputs(usage_lora, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    if (strcmp(argv[0], "merge") != 0) {
        return usage_error("lora", "unknown subcommand '%s' (only: merge)", argv[0]);
    }
    struct merge_cli c;
    memset(&c, 0, sizeof c);
    int rc = merge_parse(&c, argc - 1, argv + 1);
    if (rc != 0) {
        return rc == 1 ? 0 : rc;
    }
    return merge_run(&c);
}

/* ---- brigade quality ------------------------------------------------------------------------ */

static const char usage_quality[] =
    "usage: brigade quality -m REFERENCE [--tokenizer FILE] -q CANDIDATE [-q CANDIDATE]...\n"
    "                       (--text FILE | --prompt TEXT)... [--lora ADAPTER[:SCALE]]...\n"
    "                       [--threads N] [--ctx N] [--json]\n"
    "\n"
    "Reports what a model variant (a quantized file, typically) costs in quality against a\n"
    "reference (typically F32) on the same tokens. The text is encoded with the reference's\n"
    "tokenizer and run teacher-forced through the reference and every candidate in lockstep;\n"
    "at every position both predict the next token of the text, and the table gives per\n"
    "candidate: top-1 agreement (same argmax), mean and max KL(P_ref || P_cand) in nats, the\n"
    "perplexity exp(mean negative log-likelihood of the actual next token) of the reference\n"
    "and of the candidate, and the candidate's perplexity change in percent.\n"
    "\n"
    "Long texts are cut into windows of N tokens (--ctx; default the smallest context length\n"
    "of the models): each window restarts the KV cache at position 0 with BOS followed by the\n"
    "next N - 1 tokens of the text, so every token is scored once (for a model that adds no\n"
    "BOS the leading token is the previous token instead, and the text's first token is not\n"
    "scored). Every --prompt is a sequence of its own; --text and --prompt may be combined.\n"
    "There is no built-in text: give at least one (models/stories260K/eval.txt suits\n"
    "stories260K).\n"
    "\n"
    "options:\n"
    "  -m, --model REFERENCE  the reference: a GGUF file, or a llama2.c .bin with --tokenizer\n"
    "  --tokenizer FILE       llama2.c tokenizer.bin for .bin models (reference and candidates)\n"
    "  -q, --candidate FILE   a model to compare (GGUF or .bin), same shape and vocabulary as\n"
    "                         the reference; up to 16\n"
    "  --text FILE            score the text of FILE\n"
    "  --prompt TEXT          score TEXT (repeatable, up to 64)\n"
    "  --lora ADAPTER[:SCALE] apply a LoRA adapter at run time to the reference and to every\n"
    "                         candidate alike (repeatable, up to 8)\n"
    "  --threads N            forward-pass threads per model, 1..256 (default 1)\n"
    "  --ctx N                window length in tokens, 2..1048576 (may exceed what a file\n"
    "                         declares, e.g. 512 for the stories260K GGUFs that say 128)\n"
    "  --json                 one JSON object on stdout instead of the table\n"
    "  -h, --help             this text\n"
    "\n"
    "exit status: 0 done, 2 usage error, 1 a model or the text cannot be read, the models\n"
    "differ in shape or vocabulary, or the text gives no token to score\n";

#define QUAL_MAX_PROMPTS 64

struct qual_cli {
    const char *model;
    const char *tokenizer;
    const char *cand[BR_QUALITY_MAX_CANDIDATES];
    int n_cand;
    const char *text;
    const char *prompt[QUAL_MAX_PROMPTS];
    int n_prompt;
    int threads;
    int ctx;
    bool json;
    struct adapters ad;
};

static const struct {
    const char *name;
    const char *alias;
} qual_opts[] = {
    {"--model", "-m"},  {"--tokenizer", NULL}, {"--candidate", "-q"}, {"--text", NULL},
    {"--prompt", NULL}, {"--threads", NULL},   {"--ctx", NULL},       {"--lora", NULL},
};

static int qual_option(struct qual_cli *c, const char *name, const char *v)
{
    if (strcmp(name, "--model") == 0) {
        c->model = v;
    } else if (strcmp(name, "--tokenizer") == 0) {
        c->tokenizer = v;
    } else if (strcmp(name, "--candidate") == 0) {
        if (c->n_cand >= BR_QUALITY_MAX_CANDIDATES) {
            return usage_error("quality", "at most %d candidates", BR_QUALITY_MAX_CANDIDATES);
        }
        c->cand[c->n_cand++] = v;
    } else if (strcmp(name, "--text") == 0) {
        if (c->text) {
            return usage_error("quality", "--text may be given once");
        }
        c->text = v;
    } else if (strcmp(name, "--prompt") == 0) {
        if (c->n_prompt >= QUAL_MAX_PROMPTS || v[0] == '\0') {
            return usage_error("quality", "up to %d non-empty --prompt texts", QUAL_MAX_PROMPTS);
        }
        c->prompt[c->n_prompt++] = v;
    } else if (strcmp(name, "--threads") == 0) {
        if (parse_int(v, 256, &c->threads) != 0 || c->threads < 1) {
            return usage_error("quality", "invalid value for --threads: '%s'", v);
        }
    } else if (strcmp(name, "--ctx") == 0) {
        if (parse_int(v, 1 << 20, &c->ctx) != 0 || c->ctx < 2) {
            return usage_error("quality", "invalid value for --ctx: '%s' (2..1048576)", v);
        }
    } else {
        return adapters_add(&c->ad, "quality", v);
    }
    return 0;
}

/* 0 parsed, 1 help printed, 2 usage error. */
static int qual_parse(struct qual_cli *c, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            (void)fputs(usage_quality, stdout);
            return 1;
        }
        if (strcmp(a, "--json") == 0) {
            c->json = true;
            continue;
        }
        int matched = 0;
        for (size_t k = 0; k < sizeof qual_opts / sizeof qual_opts[0] && !matched; k++) {
            const char *v = NULL;
            matched = opt_value(argc, argv, &i, qual_opts[k].name, qual_opts[k].alias, &v);
            if (matched < 0) {
                return usage_error("quality", "%s needs a value", a);
            }
            if (matched > 0 && qual_option(c, qual_opts[k].name, v) != 0) {
                return 2;
            }
        }
        if (!matched) {
            return usage_error("quality", "unknown argument '%s'", a);
        }
    }
    if (!c->model) {
        return usage_error("quality", "-m REFERENCE is required");
    }
    if (c->n_cand == 0) {
        return usage_error("quality", "at least one -q CANDIDATE is required");
    }
    if (!c->text && c->n_prompt == 0) {
        return usage_error("quality", "give a text to score: --text FILE or --prompt TEXT");
    }
    return 0;
}

/* A model of the comparison and what the report says about it. */
struct qual_model {
    const char *path;
    br_engine_model *m;
    char type[24];
    long long size_bytes;
};

/* llama.cpp's general.file_type values (enum llama_ftype) that name a whole-file mix. */
static const char *ftype_name(uint32_t ft)
{
    static const char *const names[] = {"F32",    "F16",    "Q4_0",   "Q4_1",   "",
                                        "",       "",       "Q8_0",   "Q5_0",   "Q5_1",
                                        "Q2_K",   "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
                                        "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"};
    return ft < sizeof names / sizeof names[0] ? names[ft] : "";
}

/* The type holding most of the matrices' elements, uppercase ("F32", "Q8_0"). */
static void dominant_type(const struct br_llama_weights *w, char *out, size_t cap)
{
    size_t elems[BR_TENSOR_Q6_K + 1] = {0};
    elems[w->token_embedding.type] += w->token_embedding.rows * w->token_embedding.cols;
    if (w->output.data != w->token_embedding.data) {
        elems[w->output.type] += w->output.rows * w->output.cols;
    }
    for (int l = 0; l < w->n_layers; l++) {
        const struct br_llama_layer *y = &w->layers[l];
        const struct br_tensor *m[] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w1, &y->w2, &y->w3};
        for (size_t k = 0; k < sizeof m / sizeof m[0]; k++) {
            elems[m[k]->type] += m[k]->rows * m[k]->cols;
        }
    }
    int best = 0;
    for (int t = 1; t <= BR_TENSOR_Q6_K; t++) {
        best = elems[t] > elems[best] ? t : best;
    }
    const char *name = br_tensor_type_name((enum br_tensor_type)best);
    size_t i = 0;
    for (; name[i] != '\0' && i + 1 < cap; i++) {
        out[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 'a' + 'A' : name[i]);
    }
    out[i] = '\0';
}

/* type: the GGUF's general.file_type when it names one, else the dominant matrix type. */
static void describe_model(struct qual_model *q)
{
    struct stat st;
    q->size_bytes = stat(q->path, &st) == 0 ? (long long)st.st_size : -1;
    if (br_engine_model_format(q->m) == BR_ENGINE_FORMAT_GGUF) {
        br_gguf *g = NULL;
        uint32_t ft = 0;
        if (br_gguf_open(q->path, &g, NULL, 0) == BR_OK &&
            br_gguf_get_u32(g, "general.file_type", &ft) == BR_OK && ftype_name(ft)[0] != '\0') {
            (void)snprintf(q->type, sizeof q->type, "%s", ftype_name(ft));
            br_gguf_close(g);
            return;
        }
        br_gguf_close(g);
    }
    dominant_type(br_engine_model_weights(q->m), q->type, sizeof q->type);
}

/* Opens a model; candidates must have the reference's vocabulary. 0 or 1 (message printed). */
static int qual_open(struct qual_model *q, const char *tokenizer, const br_engine_model *ref)
{
    char err[BR_ENGINE_ERR_CAP];
    if (br_engine_model_open(q->path, tokenizer, &q->m, err, sizeof err) != BR_OK) {
        (void)fprintf(stderr, "brigade quality: %s\n", err);
        return 1;
    }
    if (ref &&
        br_quality_check_vocab(br_engine_model_tokenizer(ref), br_engine_model_tokenizer(q->m),
                               q->path, err, sizeof err) != BR_OK) {
        (void)fprintf(stderr, "brigade quality: %s\n", err);
        return 1;
    }
    describe_model(q);
    return 0;
}

/* A token sequence to score: a --text file or a --prompt. */
struct qual_seq {
    int32_t *ids;
    size_t n;
};

/* Reads the whole file (at most BR_TOK_MAX_TEXT bytes) into *out (br_free it). 0 or 1. */
static int read_text(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;
    size_t cap = 0;
    int status = 1;
    if (!f) {
        char why[128] = "cannot open";
        (void)strerror_r(errno, why, sizeof why);
        (void)fprintf(stderr, "brigade quality: %s: %s\n", path, why);
        return 1;
    }
    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nb = ncap <= (size_t)BR_TOK_MAX_TEXT + 1 ? br_realloc(buf, ncap) : NULL;
            if (!nb) {
                (void)fprintf(stderr, "brigade quality: %s: longer than %u bytes\n", path,
                              (unsigned)BR_TOK_MAX_TEXT);
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            break;
        }
    }
    if (ferror(f)) {
        (void)fprintf(stderr, "brigade quality: %s: read error\n", path);
        goto out;
    }
    *out = buf;
    *len = n;
    buf = NULL;
    status = 0;
out:
    br_free(buf);
    (void)fclose(f);
    return status;
}

static int encode(const br_engine_model *m, const char *text, size_t len, struct qual_seq *s)
{
    int rc = br_tokenizer_encode(br_engine_model_tokenizer(m), text, len, false, &s->ids, &s->n);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade quality: cannot encode the text: %s\n", br_strerror(rc));
        return 1;
    }
    return 0;
}

/* seq[0] the --text (may be empty), then the prompts. 0 or 1. */
static int qual_encode(const struct qual_cli *c, const br_engine_model *ref, struct qual_seq *seq)
{
    if (c->text) {
        char *text = NULL;
        size_t len = 0;
        if (read_text(c->text, &text, &len) != 0) {
            return 1;
        }
        int status = encode(ref, text, len, &seq[0]);
        br_free(text);
        if (status != 0) {
            return 1;
        }
    }
    for (int i = 0; i < c->n_prompt; i++) {
        if (encode(ref, c->prompt[i], strlen(c->prompt[i]), &seq[i + 1]) != 0) {
            return 1;
        }
    }
    return 0;
}

struct qual_progress {
    bool on;
    bool tty;
    size_t base;  /* tokens of the sequences before this one */
    size_t total; /* tokens of all sequences */
    int last_pct;
};

static void on_progress(void *user, size_t done, size_t total)
{
    struct qual_progress *p = user;
    (void)total;
    if (!p->on || p->total == 0) {
        return;
    }
    size_t all = p->base + done;
    int pct = (int)(100.0 * (double)all / (double)p->total);
    if (p->tty) {
        (void)fprintf(stderr, "\rbrigade quality: %zu/%zu tokens", all, p->total);
    } else if (pct / 10 > p->last_pct / 10 || all == p->total) {
        (void)fprintf(stderr, "brigade quality: %zu/%zu tokens (%d%%)\n", all, p->total, pct);
    }
    p->last_pct = pct;
}

/* Writes s as a JSON string. */
static void json_str(const char *s)
{
    (void)fputc('"', stdout);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\') {
            (void)printf("\\%c", *p);
        } else if (*p < 0x20) {
            (void)printf("\\u%04x", *p);
        } else {
            (void)fputc(*p, stdout);
        }
    }
    (void)fputc('"', stdout);
}

/* A finite number, or null. */
static void json_num(const char *key, double v, const char *sep)
{
    if (isfinite(v)) {
        (void)printf("\"%s\": %.9g%s", key, v, sep);
    } else {
        (void)printf("\"%s\": null%s", key, sep);
    }
}

static double delta_pct(const struct br_quality_stats *s)
{
    return s->ppl_ref > 0 ? 100.0 * (s->ppl_cand - s->ppl_ref) / s->ppl_ref : 0.0;
}

struct qual_report {
    const struct qual_model *ref;
    const struct qual_model *cand;
    int n_cand;
    const br_quality *q;
    size_t tokens;
};

static void print_json(const struct qual_report *r)
{
    struct br_quality_stats s0;
    br_quality_stats(r->q, 0, &s0);
    (void)printf("{\"reference\": {\"file\": ");
    json_str(r->ref->path);
    (void)printf(", \"type\": ");
    json_str(r->ref->type);
    (void)printf(", \"size_bytes\": %lld, ", r->ref->size_bytes);
    json_num("ppl", s0.ppl_ref, "}, ");
    (void)printf("\"window\": %d, \"windows\": %zu, \"tokens\": %zu, \"positions\": %zu, "
                 "\"candidates\": [",
                 br_quality_window(r->q), br_quality_windows(r->q), r->tokens, s0.n_positions);
    for (int i = 0; i < r->n_cand; i++) {
        struct br_quality_stats s;
        br_quality_stats(r->q, i, &s);
        (void)printf("%s{\"file\": ", i ? ", " : "");
        json_str(r->cand[i].path);
        (void)printf(", \"type\": ");
        json_str(r->cand[i].type);
        (void)printf(", \"size_bytes\": %lld, \"positions\": %zu, \"top1_agree\": %zu, ",
                     r->cand[i].size_bytes, s.n_positions, s.n_top1);
        json_num("top1", s.top1, ", ");
        json_num("mean_kl", s.mean_kl, ", ");
        json_num("max_kl", s.max_kl, ", ");
        json_num("ppl_ref", s.ppl_ref, ", ");
        json_num("ppl_cand", s.ppl_cand, ", ");
        json_num("delta_ppl_pct", delta_pct(&s), "}");
    }
    (void)printf("]}\n");
}

static double size_mb(long long bytes)
{
    return bytes < 0 ? 0.0 : (double)bytes / 1e6;
}

static void print_table(const struct qual_report *r)
{
    struct br_quality_stats s0;
    br_quality_stats(r->q, 0, &s0);
    (void)printf("reference %s (%s, %.3f MB): %zu tokens, %zu positions scored in %zu windows "
                 "of <= %d tokens\n",
                 r->ref->path, r->ref->type, size_mb(r->ref->size_bytes), r->tokens, s0.n_positions,
                 br_quality_windows(r->q), br_quality_window(r->q));
    int w = 4;
    for (int i = 0; i < r->n_cand; i++) {
        int l = r->cand[i].path ? (int)strlen(r->cand[i].path) : 0;
        w = l > w ? l : w;
    }
    /* "ΔPPL %" is 7 bytes for 6 columns: %8s right-aligns it in 7 */
    (void)printf("%-*s  %-6s  %8s  %7s  %9s  %9s  %9s  %9s  %8s\n", w, "file", "type", "size MB",
                 "top-1 %", "mean KL", "max KL", "PPL ref", "PPL cand", "\xce\x94PPL %");
    for (int i = 0; i < r->n_cand; i++) {
        struct br_quality_stats s;
        br_quality_stats(r->q, i, &s);
        (void)printf("%-*s  %-6s  %8.3f  %7.2f  %9.6f  %9.6f  %9.4f  %9.4f  %+7.2f\n", w,
                     r->cand[i].path, r->cand[i].type, size_mb(r->cand[i].size_bytes),
                     100.0 * s.top1, s.mean_kl, s.max_kl, s.ppl_ref, s.ppl_cand, delta_pct(&s));
    }
}

/* Feeds every sequence. 0 or 1. */
static int qual_score(br_quality *q, const br_engine_model *ref, const struct qual_seq *seq,
                      int n_seq, struct qual_progress *pg)
{
    const struct br_tokenizer *t = br_engine_model_tokenizer(ref);
    int32_t bos = br_engine_model_add_bos(ref) ? br_tokenizer_bos(t) : -1;
    char err[BR_QUALITY_ERR_CAP];
    for (int i = 0; i < n_seq; i++) {
        if (br_quality_feed(q, seq[i].ids, seq[i].n, bos, err, sizeof err) != BR_OK) {
            (void)fprintf(stderr, "brigade quality: %s\n", err);
            return 1;
        }
        pg->base += seq[i].n - (seq[i].n > 0 && bos < 0);
    }
    if (pg->on && pg->tty) {
        (void)fputc('\n', stderr);
    }
    struct br_quality_stats s;
    br_quality_stats(q, 0, &s);
    if (s.n_positions == 0) {
        (void)fprintf(stderr, "brigade quality: the text gives no token to score\n");
        return 1;
    }
    return 0;
}

/* Opened models and sequences: compare and print. 0 or 1. */
static int qual_compare(const struct qual_cli *c, const struct qual_model *ref,
                        const struct qual_model *cand, const struct qual_seq *seq)
{
    struct br_quality_model qm[BR_QUALITY_MAX_CANDIDATES + 1];
    for (int i = 0; i <= c->n_cand; i++) {
        const struct qual_model *m = i == 0 ? ref : &cand[i - 1];
        qm[i].name = m->path;
        qm[i].config = br_engine_model_config(m->m);
        qm[i].weights = br_engine_model_weights(m->m);
    }
    struct qual_progress pg = {.tty = isatty(2) != 0, .last_pct = -1};
    int32_t bos = br_engine_model_add_bos(ref->m) ? 0 : -1;
    size_t tokens = 0;
    for (int i = 0; i <= c->n_prompt; i++) {
        tokens += seq[i].n;
        pg.total += seq[i].n - (seq[i].n > 0 && bos < 0);
    }
    pg.on = pg.tty || pg.total >= 16384;
    struct br_quality_params p = {.ctx = c->ctx,
                                  .n_threads = c->threads,
                                  .lora = c->ad.use,
                                  .n_lora = c->ad.n,
                                  .progress = on_progress,
                                  .user = &pg};
    br_quality *q = NULL;
    char err[BR_QUALITY_ERR_CAP];
    if (br_quality_create(&qm[0], &qm[1], c->n_cand, &p, &q, err, sizeof err) != BR_OK) {
        (void)fprintf(stderr, "brigade quality: %s\n", err);
        return 1;
    }
    int status = qual_score(q, ref->m, seq, c->n_prompt + 1, &pg);
    if (status == 0) {
        struct qual_report r = {ref, cand, c->n_cand, q, tokens};
        if (c->json) {
            print_json(&r);
        } else {
            print_table(&r);
        }
    }
    br_quality_destroy(q);
    return status;
}

int br_quality_cli(int argc, char **argv)
{
    struct qual_cli c;
    memset(&c, 0, sizeof c);
    c.threads = 1;
    int rc = qual_parse(&c, argc, argv);
    if (rc != 0) {
        return rc == 1 ? 0 : rc;
    }
    struct qual_model ref = {.path = c.model};
    struct qual_model cand[BR_QUALITY_MAX_CANDIDATES];
    struct qual_seq seq[QUAL_MAX_PROMPTS + 1];
    memset(cand, 0, sizeof cand);
    memset(seq, 0, sizeof seq);
    int status = qual_open(&ref, c.tokenizer, NULL);
    for (int i = 0; i < c.n_cand && status == 0; i++) {
        cand[i].path = c.cand[i];
        status = qual_open(&cand[i], c.tokenizer, ref.m);
    }
    status = status == 0 ? adapters_open(&c.ad, "quality", ref.m) : status;
    status = status == 0 ? qual_encode(&c, ref.m, seq) : status;
    status = status == 0 ? qual_compare(&c, &ref, cand, seq) : status;
    for (int i = 0; i <= QUAL_MAX_PROMPTS; i++) {
        br_free(seq[i].ids);
    }
    adapters_close(&c.ad);
    for (int i = 0; i < c.n_cand; i++) {
        br_engine_model_close(cand[i].m);
    }
    br_engine_model_close(ref.m);
    return status;
}
