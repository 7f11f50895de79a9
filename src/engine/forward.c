/* SPDX-License-Identifier: MIT */
/*
 * Forward pass. Shapes: d = dim, hd = head_dim = d / n_heads, kv = n_kv_heads * hd,
 * group = n_heads / n_kv_heads (query heads sharing one key/value head).
 */
#include "engine/forward.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "engine/kernels.h"
#include "engine/quant.h"

static int config_ok(const struct br_llama_config *c)
{
    return c->dim > 0 && c->hidden_dim > 0 && c->n_layers > 0 && c->n_heads > 0 &&
           c->n_kv_heads > 0 && c->vocab_size > 0 && c->seq_len > 0 && c->dim % c->n_heads == 0 &&
           (c->dim / c->n_heads) % 2 == 0 && c->n_heads % c->n_kv_heads == 0;
}

static float *alloc_floats(size_t a, size_t b, int *failed)
{
    if (b != 0 && a > (size_t)-1 / b) {
        *failed = 1;
        return NULL;
    }
    float *p = br_calloc(a * b, sizeof(float));
    if (!p) {
        *failed = 1;
    }
    return p;
}

int br_llama_state_create(const struct br_llama_config *config,
                          const struct br_llama_weights *weights, struct br_llama_state **out)
{
    return br_llama_state_create_ex(config, weights, NULL, out);
}

int br_llama_state_create_ex(const struct br_llama_config *config,
                             const struct br_llama_weights *weights,
                             const struct br_llama_run_config *run, struct br_llama_state **out)
{
    *out = NULL;
    int n_threads = run && run->n_threads > 1 ? run->n_threads : 1;
    if (!config_ok(config) || weights->n_layers != config->n_layers || n_threads > 256) {
        return BR_ERR_INVAL;
    }
    struct br_llama_state *s = br_calloc(1, sizeof(*s));
    if (!s) {
        return BR_ERR_NOMEM;
    }
    s->config = config;
    s->weights = weights;
    size_t d = (size_t)config->dim;
    size_t hd = d / (size_t)config->n_heads;
    size_t kv = (size_t)config->n_kv_heads * hd;
    size_t cache_rows = (size_t)config->n_layers * (size_t)config->seq_len;
    int failed = 0;
    s->x = alloc_floats(d, 1, &failed);
    s->xb = alloc_floats(d, 1, &failed);
    s->xb2 = alloc_floats(d, 1, &failed);
    s->hb = alloc_floats((size_t)config->hidden_dim, 1, &failed);
    s->hb2 = alloc_floats((size_t)config->hidden_dim, 1, &failed);
    s->q = alloc_floats(d, 1, &failed);
    s->att = alloc_floats((size_t)config->n_heads, (size_t)config->seq_len, &failed);
    s->key_cache = alloc_floats(cache_rows, kv, &failed);
    s->value_cache = alloc_floats(cache_rows, kv, &failed);
    s->inv_freq = alloc_floats(hd / 2, 1, &failed);
    s->rope_cs = alloc_floats(hd, 1, &failed);
    size_t max_cols = d > (size_t)config->hidden_dim ? d : (size_t)config->hidden_dim;
    if (!failed && br_kernel_scratch_init(&s->scratch, max_cols) != BR_OK) {
        failed = 1;
    }
    s->n_threads = n_threads;
    if (!failed && n_threads > 1 && br_pool_create(n_threads, &s->pool) != BR_OK) {
        failed = 1;
    }
    if (failed) {
        br_llama_state_destroy(s);
        return BR_ERR_NOMEM;
    }
    for (size_t i = 0; i < hd / 2; i++) {
        /* theta^(-2i/hd), computed in double then rounded once */
        s->inv_freq[i] = (float)pow((double)config->rope_theta, -(double)(2 * i) / (double)hd);
    }
    *out = s;
    return BR_OK;
}

void br_llama_state_destroy(struct br_llama_state *s)
{
    if (!s) {
        return;
    }
    br_free(s->x);
    br_free(s->xb);
    br_free(s->xb2);
    br_free(s->hb);
    br_free(s->hb2);
    br_free(s->q);
    br_free(s->att);
    br_free(s->key_cache);
    br_free(s->value_cache);
    br_free(s->inv_freq);
    br_free(s->rope_cs);
    br_kernel_scratch_free(&s->scratch);
    br_free(s->lora_ax);
    br_free(s->lora_y);
    br_pool_destroy(s->pool);
    br_free(s);
}

static int lora_scratch(struct br_llama_state *s, size_t rank)
{
    if (!s->lora_y) {
        const struct br_llama_config *c = s->config;
        size_t n = (size_t)(c->dim > c->hidden_dim ? c->dim : c->hidden_dim);
        s->lora_y = br_calloc(n, sizeof(float));
        if (!s->lora_y) {
            return BR_ERR_NOMEM;
        }
    }
    if (rank > s->lora_cap) {
        float *ax = br_calloc(rank, sizeof(float));
        if (!ax) {
            return BR_ERR_NOMEM;
        }
        br_free(s->lora_ax);
        s->lora_ax = ax;
        s->lora_cap = rank;
    }
    return BR_OK;
}

int br_llama_state_set_lora(struct br_llama_state *s, const struct br_lora_use *uses, int n)
{
    if (n < 0 || n > BR_LLAMA_MAX_LORA) {
        return BR_ERR_LIMIT;
    }
    size_t max_rank = 0;
    for (int i = 0; i < n; i++) {
        if (!uses[i].adapter || !br_lora_fits(uses[i].adapter, s->config)) {
            return BR_ERR_INVAL;
        }
        size_t r = (size_t)br_lora_rank(uses[i].adapter);
        max_rank = r > max_rank ? r : max_rank;
    }
    if (n > 0) {
        int rc = lora_scratch(s, max_rank);
        if (rc != BR_OK) {
            return rc;
        }
    }
    s->n_lora = 0;
    for (int i = 0; i < n; i++) {
        if (uses[i].scale == 0.0f) {
            continue;
        }
        const br_lora *a = uses[i].adapter;
        s->lora[s->n_lora] = uses[i];
        s->lora_factor[s->n_lora] = uses[i].scale * (br_lora_alpha(a) / (float)br_lora_rank(a));
        s->n_lora++;
    }
    return BR_OK;
}

/* cos and sin of every pair's angle at position pos, once per token (every head of every
 * layer rotates by the same angles). */
static void rope_angles(const struct br_llama_state *s, int pos)
{
    size_t half = (size_t)(s->config->dim / s->config->n_heads) / 2;
    for (size_t i = 0; i < half; i++) {
        float angle = (float)pos * s->inv_freq[i];
        s->rope_cs[2 * i] = cosf(angle);
        s->rope_cs[2 * i + 1] = sinf(angle);
    }
}

/* Rotates the pairs of every head of vec (n_heads heads of hd floats) by the angles of
 * rope_angles. */
static void rope(const struct br_llama_state *s, float *vec, int n_heads)
{
    size_t hd = (size_t)(s->config->dim / s->config->n_heads);
    size_t half = hd / 2;
    int adjacent = s->config->rope_style != BR_ROPE_HALF;
    for (int h = 0; h < n_heads; h++) {
        float *v = vec + (size_t)h * hd;
        for (size_t i = 0; i < half; i++) {
            float c = s->rope_cs[2 * i];
            float sn = s->rope_cs[2 * i + 1];
            size_t a = adjacent ? 2 * i : i;
            size_t b = adjacent ? 2 * i + 1 : i + half;
            float x0 = v[a];
            float x1 = v[b];
            v[a] = x0 * c - x1 * sn;
            v[b] = x0 * sn + x1 * c;
        }
    }
}

/* Attention of one query head over positions [0, pos]; writes hd floats to out. */
static void attend_head(const struct br_llama_state *s, int h, int pos, const float *kc,
                        const float *vc, float *out)
{
    const struct br_llama_config *c = s->config;
    size_t hd = (size_t)(c->dim / c->n_heads);
    size_t kv = (size_t)c->n_kv_heads * hd;
    size_t kvh = (size_t)(h / (c->n_heads / c->n_kv_heads)) * hd;
    const float *q = s->q + (size_t)h * hd;
    float *att = s->att + (size_t)h * (size_t)c->seq_len;
    float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t <= pos; t++) {
        att[t] = br_kernel_dot_f32(q, kc + (size_t)t * kv + kvh, hd) * scale;
    }
    br_kernel_softmax(att, (size_t)pos + 1);
    memset(out, 0, hd * sizeof(float));
    for (int t = 0; t <= pos; t++) {
        br_kernel_axpy(out, att[t], vc + (size_t)t * kv + kvh, hd);
    }
}

struct heads_job {
    const struct br_llama_state *s;
    int pos;
    const float *kc; /* (seq_len, kv) this layer's keys */
    const float *vc; /* (seq_len, kv) this layer's values */
};

/* Heads [n_heads * index / count, n_heads * (index + 1) / count): each head reads only the
 * cache and writes only its own att row and xb slice, so any split gives the same numbers. */
static void heads_run(void *ctx, int index, int count)
{
    const struct heads_job *j = ctx;
    const struct br_llama_state *s = j->s;
    int nh = s->config->n_heads;
    size_t hd = (size_t)(s->config->dim / nh);
    int h1 = (int)((long)nh * (index + 1) / count);
    for (int h = (int)((long)nh * index / count); h < h1; h++) {
        attend_head(s, h, j->pos, j->kc, j->vc, s->xb + (size_t)h * hd);
    }
}

/* Below this many cached elements read (per layer) the heads stay on the calling thread. */
enum { HEADS_PARALLEL_MIN = 16384 };

static int matvec(struct br_llama_state *s, const struct br_tensor *w, const float *x, float *y)
{
    return br_kernel_matvec_ex(w, x, y, &s->scratch, s->pool);
}

/* y += factor * B (A x) for every selected adapter that adapts (layer, t). */
static int lora_add(struct br_llama_state *s, int layer, enum br_lora_target t, const float *x,
                    float *y)
{
    int rc = BR_OK;
    for (int i = 0; i < s->n_lora && rc == BR_OK; i++) {
        const struct br_lora_pair *p = br_lora_pair(s->lora[i].adapter, layer, t);
        if (!p) {
            continue;
        }
        rc = br_kernel_matvec_ex(&p->a, x, s->lora_ax, NULL, NULL);
        float f = s->lora_factor[i];
        for (size_t k = 0; rc == BR_OK && k < p->a.rows; k++) {
            s->lora_ax[k] *= f;
        }
        rc = rc ? rc : br_kernel_matvec_ex(&p->b, s->lora_ax, s->lora_y, NULL, s->pool);
        for (size_t r = 0; rc == BR_OK && r < p->b.rows; r++) {
            y[r] += s->lora_y[r];
        }
    }
    return rc;
}

/* y = W x (+ the selected adapters' updates of matrix t of this layer). */
static int matvec_l(struct br_llama_state *s, const struct br_tensor *w, int layer,
                    enum br_lora_target t, const float *x, float *y)
{
    int rc = matvec(s, w, x, y);
    return rc == BR_OK && s->n_lora > 0 ? lora_add(s, layer, t, x, y) : rc;
}

static int attention(struct br_llama_state *s, const struct br_llama_layer *lw, int layer, int pos)
{
    const struct br_llama_config *c = s->config;
    size_t d = (size_t)c->dim;
    size_t hd = d / (size_t)c->n_heads;
    size_t kv = (size_t)c->n_kv_heads * hd;
    float *kc = s->key_cache + (size_t)layer * (size_t)c->seq_len * kv;
    float *vc = s->value_cache + (size_t)layer * (size_t)c->seq_len * kv;
    float *k = kc + (size_t)pos * kv;
    float *v = vc + (size_t)pos * kv;
    br_kernel_rmsnorm(s->xb, s->x, lw->attn_norm.data, d, c->rms_eps);
    int rc = matvec_l(s, &lw->wq, layer, BR_LORA_WQ, s->xb, s->q);
    rc = rc ? rc : matvec_l(s, &lw->wk, layer, BR_LORA_WK, s->xb, k);
    rc = rc ? rc : matvec_l(s, &lw->wv, layer, BR_LORA_WV, s->xb, v);
    if (rc != BR_OK) {
        return rc;
    }
    rope(s, s->q, c->n_heads);
    rope(s, k, c->n_kv_heads);
    struct heads_job job = {.s = s, .pos = pos, .kc = kc, .vc = vc};
    if (s->pool && (size_t)(pos + 1) * kv >= HEADS_PARALLEL_MIN) {
        br_pool_run_chunks(s->pool, heads_run, &job, c->n_heads); /* a head per chunk */
    } else {
        heads_run(&job, 0, 1);
    }
    rc = matvec_l(s, &lw->wo, layer, BR_LORA_WO, s->xb, s->xb2);
    for (size_t i = 0; rc == BR_OK && i < d; i++) {
        s->x[i] += s->xb2[i];
    }
    return rc;
}

static int ffn(struct br_llama_state *s, const struct br_llama_layer *lw, int layer)
{
    const struct br_llama_config *c = s->config;
    size_t d = (size_t)c->dim;
    br_kernel_rmsnorm(s->xb, s->x, lw->ffn_norm.data, d, c->rms_eps);
    int rc = matvec_l(s, &lw->w1, layer, BR_LORA_W1, s->xb, s->hb);
    rc = rc ? rc : matvec_l(s, &lw->w3, layer, BR_LORA_W3, s->xb, s->hb2);
    if (rc != BR_OK) {
        return rc;
    }
    br_kernel_swiglu(s->hb, s->hb2, (size_t)c->hidden_dim);
    rc = matvec_l(s, &lw->w2, layer, BR_LORA_W2, s->hb, s->xb);
    for (size_t i = 0; rc == BR_OK && i < d; i++) {
        s->x[i] += s->xb[i];
    }
    return rc;
}

/* Copies (dequantizes) token's embedding row into s->x. */
static int embed(struct br_llama_state *s, int token)
{
    const struct br_tensor *e = &s->weights->token_embedding;
    size_t d = (size_t)s->config->dim;
    size_t rb = br_tensor_row_bytes(e->type, d);
    if (e->cols != d || rb == 0 || (size_t)token >= e->rows) {
        return BR_ERR_UNSUPPORTED;
    }
    const uint8_t *row = (const uint8_t *)e->data + (size_t)token * rb;
    return br_quant_dequantize_row(e->type, row, s->x, d) == BR_OK ? BR_OK : BR_ERR_UNSUPPORTED;
}

int br_llama_forward(struct br_llama_state *s, int token, int pos, float *logits_out)
{
    const struct br_llama_config *c = s->config;
    if (token < 0 || token >= c->vocab_size || pos < 0 || pos >= c->seq_len) {
        return BR_ERR_RANGE;
    }
    int rc = embed(s, token);
    rope_angles(s, pos);
    for (int l = 0; rc == BR_OK && l < c->n_layers; l++) {
        const struct br_llama_layer *lw = &s->weights->layers[l];
        rc = attention(s, lw, l, pos);
        rc = rc ? rc : ffn(s, lw, l);
    }
    if (rc != BR_OK) {
        return rc;
    }
    br_kernel_rmsnorm(s->x, s->x, s->weights->final_norm.data, (size_t)c->dim, c->rms_eps);
    return matvec(s, &s->weights->output, s->x, logits_out);
}
