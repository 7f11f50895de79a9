/* SPDX-License-Identifier: MIT */
/*
 * LoRA adapter loading and validation (see lora.h): the GGUF is parsed by gguf.c, then every
 * tensor name is matched against "blk.N.<target>.weight.lora_{a,b}" and its shape checked
 * against the base config.
 */
#include "engine/lora.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "engine/gguf.h"
#include "engine/quant.h"

struct br_lora {
    br_gguf *gguf;
    struct br_llama_config base; /* the shapes it was validated against */
    struct br_lora_pair *pairs;  /* n_layers * BR_LORA_N_TARGETS */
    size_t n_pairs;
    int rank;
    float alpha;
};

static const char *const target_names[BR_LORA_N_TARGETS] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"};

const char *br_lora_target_name(enum br_lora_target t)
{
    return (unsigned)t < BR_LORA_N_TARGETS ? target_names[t] : "unknown";
}

struct lctx {
    const char *name;
    char *err;
    size_t err_cap;
};

static int fail(const struct lctx *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(const struct lctx *c, int rc, const char *fmt, ...)
{
    if (c->err && c->err_cap > 0) {
        char what[256];
        va_list ap;
        va_start(ap, fmt);
        (void)vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        (void)snprintf(c->err, c->err_cap, "%s: %s", c->name, what);
    }
    return rc;
}

/* (out, in) of a target's base matrix. */
static void target_shape(const struct br_llama_config *b, enum br_lora_target t, size_t *out,
                         size_t *in)
{
    size_t d = (size_t)b->dim;
    size_t h = (size_t)b->hidden_dim;
    size_t kv = (size_t)b->n_kv_heads * (d / (size_t)b->n_heads);
    switch (t) {
    case BR_LORA_WK:
    case BR_LORA_WV:
        *out = kv;
        *in = d;
        break;
    case BR_LORA_W1:
    case BR_LORA_W3:
        *out = h;
        *in = d;
        break;
    case BR_LORA_W2:
        *out = d;
        *in = h;
        break;
    default:
        *out = d;
        *in = d;
        break;
    }
}

/* Parses "blk.N.<target>.weight.lora_a|b". 0 ok (layer, target, is_b set), -1 otherwise. */
static int parse_name(struct br_slice n, long *layer, enum br_lora_target *t, int *is_b)
{
    char buf[96];
    if (n.len == 0 || n.len >= sizeof buf) {
        return -1;
    }
    memcpy(buf, n.ptr, n.len);
    buf[n.len] = '\0';
    if (strncmp(buf, "blk.", 4) != 0 || buf[4] < '0' || buf[4] > '9') {
        return -1;
    }
    const char *p = buf + 4;
    long v = 0;
    while (*p >= '0' && *p <= '9' && v < 1000000) {
        v = v * 10 + (*p++ - '0');
    }
    if (*p++ != '.') {
        return -1;
    }
    for (int k = 0; k < BR_LORA_N_TARGETS; k++) {
        size_t tl = strlen(target_names[k]);
        if (strncmp(p, target_names[k], tl) != 0) {
            continue;
        }
        const char *rest = p + tl;
        if (strcmp(rest, ".weight.lora_a") == 0 || strcmp(rest, ".weight.lora_b") == 0) {
            *layer = v;
            *t = (enum br_lora_target)k;
            *is_b = rest[13] == 'b';
            return 0;
        }
    }
    return -1;
}

static int check_header(br_lora *l, const struct lctx *c)
{
    struct br_slice s;
    if (br_gguf_get_str(l->gguf, "general.type", &s) != BR_OK || !br_slice_eq_cstr(s, "adapter")) {
        return fail(c, BR_ERR_PARSE, "not a LoRA adapter (general.type is not \"adapter\")");
    }
    if (br_gguf_get_str(l->gguf, "adapter.type", &s) != BR_OK || !br_slice_eq_cstr(s, "lora")) {
        return fail(c, BR_ERR_PARSE, "not a LoRA adapter (adapter.type is not \"lora\")");
    }
    if (br_gguf_get_str(l->gguf, "general.architecture", &s) == BR_OK &&
        !br_slice_eq_cstr(s, "llama")) {
        return fail(c, BR_ERR_PARSE, "adapter for architecture '%.*s', not llama", (int)s.len,
                    s.ptr);
    }
    if (br_gguf_get_f32(l->gguf, "adapter.lora.alpha", &l->alpha) != BR_OK) {
        return fail(c, BR_ERR_PARSE, "adapter.lora.alpha missing or not a number");
    }
    if (!(l->alpha > 0.0f) || l->alpha > 1e6f) {
        return fail(c, BR_ERR_PARSE, "adapter.lora.alpha %g out of range (0, 1e6]",
                    (double)l->alpha);
    }
    return BR_OK;
}

/* Records one tensor into its pair after checking type and shape. */
static int take_tensor(br_lora *l, const struct br_gguf_tensor *gt, const struct lctx *c)
{
    long layer = 0;
    enum br_lora_target t = BR_LORA_WQ;
    int is_b = 0;
    int nl = (int)gt->name.len;
    if (parse_name(gt->name, &layer, &t, &is_b) != 0) {
        return fail(c, BR_ERR_PARSE,
                    "unexpected tensor '%.*s' (not blk.N.<matrix>.weight.lora_a/b)", nl,
                    gt->name.ptr);
    }
    if (layer >= l->base.n_layers) {
        return fail(c, BR_ERR_PARSE, "tensor '%.*s': the base model has only %d layers", nl,
                    gt->name.ptr, l->base.n_layers);
    }
    struct br_tensor v;
    if (gt->n_dims != 2 || br_gguf_tensor_view(gt, &v) != BR_OK ||
        (v.type != BR_TENSOR_F32 && v.type != BR_TENSOR_F16)) {
        return fail(c, BR_ERR_UNSUPPORTED,
                    "tensor '%.*s': must be a 2-D f32 or f16 tensor, is %u-D %s", nl, gt->name.ptr,
                    gt->n_dims, br_gguf_ggml_type_name(gt->ggml_type));
    }
    size_t out = 0;
    size_t in = 0;
    target_shape(&l->base, t, &out, &in);
    size_t rank = is_b ? v.cols : v.rows;
    size_t want_rows = is_b ? out : rank;
    size_t want_cols = is_b ? rank : in;
    if (rank == 0 || rank > BR_LORA_MAX_RANK || v.rows != want_rows || v.cols != want_cols) {
        return fail(c, BR_ERR_PARSE,
                    "tensor '%.*s': GGML dims (%zu, %zu), expected (%zu, %zu) for a %zu x %zu "
                    "base matrix (lora_a is [in, rank], lora_b is [rank, out])",
                    nl, gt->name.ptr, v.cols, v.rows, want_cols, want_rows, out, in);
    }
    if (l->rank != 0 && (size_t)l->rank != rank) {
        return fail(c, BR_ERR_PARSE, "tensor '%.*s': rank %zu differs from the adapter's rank %d",
                    nl, gt->name.ptr, rank, l->rank);
    }
    l->rank = (int)rank;
    struct br_lora_pair *p = &l->pairs[(size_t)layer * BR_LORA_N_TARGETS + (size_t)t];
    struct br_tensor *slot = is_b ? &p->b : &p->a;
    if (slot->data) {
        return fail(c, BR_ERR_PARSE, "tensor '%.*s' appears twice", nl, gt->name.ptr);
    }
    *slot = v;
    return BR_OK;
}

static int check_pairs(br_lora *l, const struct lctx *c)
{
    size_t n = (size_t)l->base.n_layers * BR_LORA_N_TARGETS;
    for (size_t i = 0; i < n; i++) {
        const struct br_lora_pair *p = &l->pairs[i];
        if ((p->a.data == NULL) != (p->b.data == NULL)) {
            return fail(c, BR_ERR_PARSE, "blk.%zu.%s.weight: lora_%s without lora_%s",
                        i / BR_LORA_N_TARGETS, target_names[i % BR_LORA_N_TARGETS],
                        p->a.data ? "a" : "b", p->a.data ? "b" : "a");
        }
        l->n_pairs += p->a.data ? 1 : 0;
    }
    if (l->n_pairs == 0) {
        return fail(c, BR_ERR_PARSE, "the adapter has no lora_a/lora_b tensors");
    }
    return BR_OK;
}

static int config_ok(const struct br_llama_config *b)
{
    return b->dim > 0 && b->hidden_dim > 0 && b->n_layers > 0 && b->n_layers <= 100000 &&
           b->n_heads > 0 && b->n_kv_heads > 0 && b->dim % b->n_heads == 0;
}

static int load(br_lora *l, const struct lctx *c)
{
    int rc = check_header(l, c);
    if (rc != BR_OK) {
        return rc;
    }
    l->pairs = br_calloc((size_t)l->base.n_layers * BR_LORA_N_TARGETS, sizeof *l->pairs);
    if (!l->pairs) {
        return fail(c, BR_ERR_NOMEM, "out of memory");
    }
    size_t nt = br_gguf_tensor_count(l->gguf);
    for (size_t i = 0; i < nt && rc == BR_OK; i++) {
        rc = take_tensor(l, br_gguf_tensor_at(l->gguf, i), c);
    }
    return rc == BR_OK ? check_pairs(l, c) : rc;
}

static int open_common(br_lora *l, const struct br_llama_config *base, br_lora **out,
                       const struct lctx *c)
{
    l->base = *base;
    int rc = load(l, c);
    if (rc != BR_OK) {
        br_lora_close(l);
        return rc;
    }
    *out = l;
    return BR_OK;
}

static int start(const struct br_llama_config *base, br_lora **out, br_lora **l,
                 const struct lctx *c)
{
    *out = NULL;
    if (c->err && c->err_cap > 0) {
        c->err[0] = '\0';
    }
    if (!base || !config_ok(base)) {
        (void)fail(c, BR_ERR_INVAL, "invalid base model config");
        return BR_ERR_INVAL;
    }
    *l = br_calloc(1, sizeof **l);
    if (!*l) {
        (void)fail(c, BR_ERR_NOMEM, "out of memory");
        return BR_ERR_NOMEM;
    }
    return BR_OK;
}

int br_lora_open(const char *path, const struct br_llama_config *base, br_lora **out, char *err,
                 size_t err_cap)
{
    struct lctx c = {path, err, err_cap};
    br_lora *l = NULL;
    int rc = start(base, out, &l, &c);
    if (rc != BR_OK) {
        return rc;
    }
    rc = br_gguf_open(path, &l->gguf, err, err_cap);
    if (rc != BR_OK) {
        br_free(l);
        return rc;
    }
    return open_common(l, base, out, &c);
}

int br_lora_open_mem(const void *data, size_t size, const char *name,
                     const struct br_llama_config *base, br_lora **out, char *err, size_t err_cap)
{
    struct lctx c = {name, err, err_cap};
    br_lora *l = NULL;
    int rc = start(base, out, &l, &c);
    if (rc != BR_OK) {
        return rc;
    }
    rc = br_gguf_open_mem(data, size, name, &l->gguf, err, err_cap);
    if (rc != BR_OK) {
        br_free(l);
        return rc;
    }
    return open_common(l, base, out, &c);
}

void br_lora_close(br_lora *l)
{
    if (!l) {
        return;
    }
    br_gguf_close(l->gguf);
    br_free(l->pairs);
    br_free(l);
}

int br_lora_rank(const br_lora *l)
{
    return l->rank;
}

float br_lora_alpha(const br_lora *l)
{
    return l->alpha;
}

int br_lora_n_layers(const br_lora *l)
{
    return l->base.n_layers;
}

size_t br_lora_n_pairs(const br_lora *l)
{
    return l->n_pairs;
}

const struct br_lora_pair *br_lora_pair(const br_lora *l, int layer, enum br_lora_target t)
{
    if (layer < 0 || layer >= l->base.n_layers || (unsigned)t >= BR_LORA_N_TARGETS) {
        return NULL;
    }
    const struct br_lora_pair *p = &l->pairs[(size_t)layer * BR_LORA_N_TARGETS + (size_t)t];
    return p->a.data ? p : NULL;
}

int br_lora_fits(const br_lora *l, const struct br_llama_config *c)
{
    const struct br_llama_config *b = &l->base;
    return b->dim == c->dim && b->hidden_dim == c->hidden_dim && b->n_layers == c->n_layers &&
           b->n_heads == c->n_heads && b->n_kv_heads == c->n_kv_heads;
}

int br_lora_merge_row(const br_lora *l, const struct br_lora_pair *p, float scale, size_t row,
                      float *out, float *tmp)
{
    size_t rank = p->b.cols;
    size_t in = p->a.cols;
    if (row >= p->b.rows) {
        return BR_ERR_RANGE;
    }
    float factor = scale * (l->alpha / (float)l->rank);
    const unsigned char *brow =
        (const unsigned char *)p->b.data + row * br_tensor_row_bytes(p->b.type, rank);
    int rc = br_quant_dequantize_row(p->b.type, brow, tmp, rank);
    float *arow = tmp + rank;
    size_t ab = br_tensor_row_bytes(p->a.type, in);
    for (size_t k = 0; k < rank && rc == BR_OK; k++) {
        rc =
            br_quant_dequantize_row(p->a.type, (const unsigned char *)p->a.data + k * ab, arow, in);
        float bk = factor * tmp[k];
        for (size_t i = 0; rc == BR_OK && i < in; i++) {
            out[i] += bk * arow[i];
        }
    }
    return rc;
}
