/* SPDX-License-Identifier: MIT */
/*
 * llama model from GGUF: reads and sanity-checks the hyper-parameters, then looks up each
 * tensor by name and checks type and shape before exposing it as a struct br_tensor view.
 */
#include "engine/model.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "engine/kernels.h"

#define MAX_DIM    (1 << 20)
#define MAX_LAYERS 4096

struct ld {
    const br_gguf *g;
    const char *name;
    char *err;
    size_t err_cap;
    const struct br_llama_config *c;
};

__attribute__((format(printf, 3, 4))) static int fail(const struct ld *l, int rc, const char *fmt,
                                                      ...)
{
    if (!l->err || l->err_cap == 0) {
        return rc;
    }
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    (void)snprintf(l->err, l->err_cap, "%s: %s", l->name, what);
    return rc;
}

/* A required (or, with dflt >= 0, optional) positive integer key no larger than max. */
static int get_int(const struct ld *l, const char *key, long dflt, long max, int *out)
{
    uint64_t v = 0;
    int rc = br_gguf_get_u64(l->g, key, &v);
    if (rc == BR_ERR_NOTFOUND && dflt >= 0) {
        *out = (int)dflt;
        return BR_OK;
    }
    if (rc == BR_ERR_NOTFOUND) {
        return fail(l, BR_ERR_PARSE, "missing metadata key %s", key);
    }
    if (rc != BR_OK) {
        return fail(l, BR_ERR_PARSE, "metadata key %s is not a non-negative integer", key);
    }
    if (v == 0 || v > (uint64_t)max) {
        return fail(l, BR_ERR_PARSE, "metadata key %s = %llu is out of range 1..%ld", key,
                    (unsigned long long)v, max);
    }
    *out = (int)v;
    return BR_OK;
}

static int get_float(const struct ld *l, const char *key, float dflt, float *out)
{
    int rc = br_gguf_get_f32(l->g, key, out);
    if (rc == BR_ERR_NOTFOUND) {
        *out = dflt;
        return BR_OK;
    }
    if (rc != BR_OK || !(*out > 0.0f) || *out > 1e30f) {
        return fail(l, BR_ERR_PARSE, "metadata key %s is not a positive float", key);
    }
    return BR_OK;
}

static int check_arch(const struct ld *l)
{
    struct br_slice arch = {0};
    int rc = br_gguf_get_str(l->g, "general.architecture", &arch);
    if (rc != BR_OK) {
        return fail(l, BR_ERR_PARSE, "missing string key general.architecture");
    }
    if (!br_slice_eq_cstr(arch, "llama")) {
        return fail(l, BR_ERR_UNSUPPORTED, "architecture '%.*s' is not llama",
                    (int)(arch.len > 32 ? 32 : arch.len), arch.ptr);
    }
    return BR_OK;
}

static int read_vocab_size(const struct ld *l, struct br_llama_config *c)
{
    struct br_gguf_array tokens;
    if (br_gguf_get_array(l->g, "tokenizer.ggml.tokens", &tokens) == BR_OK) {
        if (tokens.type != BR_GGUF_TYPE_STRING || tokens.len == 0 || tokens.len > INT32_MAX) {
            return fail(l, BR_ERR_PARSE, "tokenizer.ggml.tokens is not a non-empty string array");
        }
        c->vocab_size = (int)tokens.len;
        return BR_OK;
    }
    /* No vocabulary in the file: take it from llama.vocab_size or the embedding's rows. */
    const struct br_gguf_tensor *t = br_gguf_find_tensor(l->g, "token_embd.weight");
    long from_embd = t && t->n_dims == 2 && t->dims[1] <= INT32_MAX ? (long)t->dims[1] : 0;
    if (from_embd == 0) {
        return get_int(l, "llama.vocab_size", -1, INT32_MAX, &c->vocab_size);
    }
    return get_int(l, "llama.vocab_size", from_embd, INT32_MAX, &c->vocab_size);
}

static int check_config(const struct ld *l, const struct br_llama_config *c)
{
    if (c->dim % c->n_heads != 0 || (c->dim / c->n_heads) % 2 != 0) {
        return fail(l, BR_ERR_PARSE, "embedding_length %d is not a multiple of 2 * head_count %d",
                    c->dim, c->n_heads);
    }
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0) {
        return fail(l, BR_ERR_PARSE, "head_count_kv %d does not divide head_count %d",
                    c->n_kv_heads, c->n_heads);
    }
    int rot = 0;
    int rc = get_int(l, "llama.rope.dimension_count", c->dim / c->n_heads, MAX_DIM, &rot);
    if (rc == BR_OK && rot != c->dim / c->n_heads) {
        return fail(l, BR_ERR_UNSUPPORTED,
                    "rope.dimension_count %d != head size %d (partial "
                    "RoPE)",
                    rot, c->dim / c->n_heads);
    }
    return rc;
}

static int read_config(const struct ld *l, struct br_llama_config *c)
{
    memset(c, 0, sizeof(*c));
    int rc = check_arch(l);
    if (rc == BR_OK) {
        rc = get_int(l, "llama.embedding_length", -1, MAX_DIM, &c->dim);
    }
    if (rc == BR_OK) {
        rc = get_int(l, "llama.feed_forward_length", -1, MAX_DIM, &c->hidden_dim);
    }
    if (rc == BR_OK) {
        rc = get_int(l, "llama.block_count", -1, MAX_LAYERS, &c->n_layers);
    }
    if (rc == BR_OK) {
        rc = get_int(l, "llama.attention.head_count", -1, MAX_DIM, &c->n_heads);
    }
    if (rc == BR_OK) {
        rc = get_int(l, "llama.attention.head_count_kv", c->n_heads, MAX_DIM, &c->n_kv_heads);
    }
    if (rc == BR_OK) {
        rc = get_int(l, "llama.context_length", -1, INT32_MAX, &c->seq_len);
    }
    if (rc == BR_OK) {
        rc = get_float(l, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &c->rms_eps);
    }
    if (rc == BR_OK) {
        rc = get_float(l, "llama.rope.freq_base", 10000.0f, &c->rope_theta);
    }
    if (rc == BR_OK) {
        rc = read_vocab_size(l, c);
    }
    if (rc == BR_OK) {
        rc = check_config(l, c);
    }
    c->rope_style = BR_ROPE_ADJACENT; /* see model.h: GGUF llama tensors use adjacent pairs */
    return rc;
}

/* Tensor `name` with `rows` x `cols` (rows == 0: a vector of cols, which must be F32). */
static int get_tensor(const struct ld *l, const char *name, size_t rows, size_t cols,
                      struct br_tensor *out)
{
    const struct br_gguf_tensor *t = br_gguf_find_tensor(l->g, name);
    if (!t) {
        return fail(l, BR_ERR_PARSE, "missing tensor %s", name);
    }
    if (br_gguf_tensor_view(t, out) != BR_OK) {
        return fail(l, BR_ERR_UNSUPPORTED, "tensor %s: ggml type %u not supported", name,
                    t->ggml_type);
    }
    size_t want_rows = rows ? rows : 1;
    int bad = t->dims[0] != cols || t->dims[1] != want_rows || t->dims[2] != 1 || t->dims[3] != 1;
    if (bad) {
        return fail(
            l, BR_ERR_PARSE, "tensor %s has shape [%llu, %llu, %llu, %llu], expected [%zu, %zu]",
            name, (unsigned long long)t->dims[0], (unsigned long long)t->dims[1],
            (unsigned long long)t->dims[2], (unsigned long long)t->dims[3], cols, want_rows);
    }
    if (rows == 0 && out->type != BR_TENSOR_F32) {
        return fail(l, BR_ERR_UNSUPPORTED, "norm tensor %s is %s, expected f32", name,
                    br_tensor_type_name(out->type));
    }
    return BR_OK;
}

static int get_layer_tensor(const struct ld *l, int layer, const char *what, size_t rows,
                            size_t cols, struct br_tensor *out)
{
    char name[64];
    (void)snprintf(name, sizeof(name), "blk.%d.%s.weight", layer, what);
    return get_tensor(l, name, rows, cols, out);
}

static int load_layer(const struct ld *l, int i, struct br_llama_layer *y)
{
    const struct br_llama_config *c = l->c;
    size_t d = (size_t)c->dim;
    size_t h = (size_t)c->hidden_dim;
    size_t kv = (size_t)c->n_kv_heads * (d / (size_t)c->n_heads);
    int rc = get_layer_tensor(l, i, "attn_norm", 0, d, &y->attn_norm);
    if (rc == BR_OK) {
        rc = get_layer_tensor(l, i, "attn_q", d, d, &y->wq);
    }
    if (rc == BR_OK) {
        rc = get_layer_tensor(l, i, "attn_k", kv, d, &y->wk);
    }
    if (rc == BR_OK) {
        rc = get_layer_tensor(l, i, "attn_v", kv, d, &y->wv);
    }
    if (rc == BR_OK) {
        rc = get_layer_tensor(l, i, "attn_output", d, d, &y->wo);
    }
    if (rc == BR_OK) {
        rc = get_layer_tensor(l, i, "ffn_norm", 0, d, &y->ffn_norm);
    }
    if (rc == BR_OK) {
        rc = get_layer_tensor(l, i, "ffn_gate", h, d, &y->w1);
    }
    if (rc == BR_OK) {
        rc = get_layer_tensor(l, i, "ffn_down", d, h, &y->w2);
    }
    if (rc == BR_OK) {
        rc = get_layer_tensor(l, i, "ffn_up", h, d, &y->w3);
    }
    return rc;
}

static int load_weights(const struct ld *l, struct br_llama_weights *w)
{
    const struct br_llama_config *c = l->c;
    size_t d = (size_t)c->dim;
    size_t v = (size_t)c->vocab_size;
    int rc = get_tensor(l, "token_embd.weight", v, d, &w->token_embedding);
    if (rc == BR_OK) {
        rc = get_tensor(l, "output_norm.weight", 0, d, &w->final_norm);
    }
    if (rc == BR_OK && br_gguf_find_tensor(l->g, "output.weight")) {
        rc = get_tensor(l, "output.weight", v, d, &w->output);
    } else if (rc == BR_OK) {
        w->output = w->token_embedding; /* shared classifier */
    }
    if (rc != BR_OK) {
        return rc;
    }
    w->layers = br_calloc((size_t)c->n_layers, sizeof(*w->layers));
    if (!w->layers) {
        return fail(l, BR_ERR_NOMEM, "out of memory for %d layers", c->n_layers);
    }
    w->n_layers = c->n_layers;
    for (int i = 0; i < c->n_layers && rc == BR_OK; i++) {
        rc = load_layer(l, i, &w->layers[i]);
    }
    return rc;
}

int br_llama_model_load_gguf(const br_gguf *g, const char *name, struct br_llama_config *config,
                             struct br_llama_weights *weights, char *err, size_t err_cap)
{
    struct ld l = {g, name ? name : "<gguf>", err, err_cap, config};
    if (err && err_cap) {
        err[0] = '\0';
    }
    memset(weights, 0, sizeof(*weights));
    int rc = read_config(&l, config);
    if (rc == BR_OK) {
        rc = load_weights(&l, weights);
    }
    if (rc != BR_OK) {
        br_llama_weights_release(weights);
    }
    return rc;
}

void br_llama_weights_release(struct br_llama_weights *weights)
{
    if (!weights) {
        return;
    }
    br_free(weights->layers);
    weights->layers = NULL;
    weights->n_layers = 0;
}

/* One matrix's packed copy at dst (NULL: only count). Returns its size, 0 unless Q4_0. */
static size_t pack_one(struct br_tensor *t, uint8_t *dst)
{
    if (t->type != BR_TENSOR_Q4_0) {
        return 0;
    }
    if (dst && br_kernel_q4_0_pack(t, dst) == BR_OK) {
        t->packed = dst;
    }
    return br_kernel_q4_0_packed_bytes(t->rows, t->cols);
}

/* Packs every Q4_0 matrix a decode step multiplies with (the layers' seven and the
 * classifier) one after another at dst (NULL: only count). Returns the bytes. */
static size_t pack_all(struct br_llama_weights *w, uint8_t *dst)
{
    size_t off = 0;
    for (int i = 0; i < w->n_layers; i++) {
        struct br_llama_layer *y = &w->layers[i];
        struct br_tensor *mats[7] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w1, &y->w2, &y->w3};
        for (int k = 0; k < 7; k++) {
            off += pack_one(mats[k], dst ? dst + off : NULL);
        }
    }
    off += pack_one(&w->output, dst ? dst + off : NULL);
    return off;
}

/* Packed copies of the Q4_0 matrices (AVX2 CPUs only: the portable kernels read the rows). */
static int pack_q4_0(struct br_llama_model *m, const char *path, char *err, size_t err_cap)
{
    if (!br_kernel_has_avx2()) {
        return BR_OK;
    }
    size_t total = pack_all(&m->weights, NULL);
    if (total == 0) {
        return BR_OK;
    }
    m->packed = br_malloc(total);
    if (!m->packed) {
        if (err && err_cap) {
            (void)snprintf(err, err_cap, "%s: out of memory for the packed Q4_0 matrices", path);
        }
        return BR_ERR_NOMEM;
    }
    m->packed_bytes = total;
    (void)pack_all(&m->weights, m->packed);
    return BR_OK;
}

int br_llama_model_open(const char *path, struct br_llama_model **out, char *err, size_t err_cap)
{
    *out = NULL;
    struct br_llama_model *m = br_calloc(1, sizeof(*m));
    if (!m) {
        if (err && err_cap) {
            (void)snprintf(err, err_cap, "%s: out of memory", path);
        }
        return BR_ERR_NOMEM;
    }
    int rc = br_gguf_open(path, &m->gguf, err, err_cap);
    if (rc == BR_OK) {
        rc = br_llama_model_load_gguf(m->gguf, path, &m->config, &m->weights, err, err_cap);
    }
    if (rc == BR_OK) {
        rc = pack_q4_0(m, path, err, err_cap);
    }
    if (rc != BR_OK) {
        br_llama_model_close(m);
        return rc;
    }
    *out = m;
    return BR_OK;
}

void br_llama_model_close(struct br_llama_model *m)
{
    if (!m) {
        return;
    }
    br_llama_weights_release(&m->weights);
    br_free(m->packed);
    br_gguf_close(m->gguf);
    br_free(m);
}
