/* SPDX-License-Identifier: MIT */
/*
 * LoRA adapters in llama.cpp's GGUF LoRA format, validated against a base model's config, and
 * the low-rank update the forward pass adds at run time (forward.h) or `brigade lora merge`
 * folds into the weights.
 *
 * File format (as written by llama.cpp's convert_lora_to_gguf.py and read by llama.cpp):
 *   general.type = "adapter", adapter.type = "lora", adapter.lora.alpha (float; required here),
 *   general.architecture = "llama" (checked when present), and for each adapted matrix two
 *   tensors "blk.N.<name>.weight.lora_a" and "...lora_b" with <name> one of attn_q, attn_k,
 *   attn_v, attn_output, ffn_gate, ffn_down, ffn_up (wq, wk, wv, wo, w1, w2, w3).
 * Shapes, in GGML's dimension order (ne[0] innermost = columns): lora_a is [in, rank] and
 * lora_b is [rank, out]; i.e. in row-major terms A has rank rows of `in` columns and B has
 * `out` rows of `rank` columns, so that the update of y = W x (W: out x in) is
 *   y += scale * (alpha / rank) * B (A x).
 * (Checked on models/stories260K/lora260K-r4.gguf: blk.0.attn_q.weight.lora_a has dims
 * (64, 4) and lora_b (4, 64) for dim 64, rank 4; attn_v's lora_b is (4, 32) for kv dim 32.)
 * Tensor types F32 and F16 are accepted. Every adapted matrix must have the same rank, both A
 * and B must be present, the layer must exist in the base and the shapes must match the base's
 * matrix; any other tensor name is refused. Errors name the file and the tensor.
 *
 * Ownership: a br_lora owns its mapping; the tensor views point into it and stay valid until
 * br_lora_close. An open adapter is immutable and may be used by any number of forward states
 * and threads at once.
 */
#ifndef BR_ENGINE_LORA_H
#define BR_ENGINE_LORA_H

#include <stddef.h>

#include "engine/weights.h"

/* The per-layer matrices an adapter may target. */
enum br_lora_target {
    BR_LORA_WQ,
    BR_LORA_WK,
    BR_LORA_WV,
    BR_LORA_WO,
    BR_LORA_W1,
    BR_LORA_W2,
    BR_LORA_W3,
    BR_LORA_N_TARGETS
};

#define BR_LORA_MAX_RANK 4096
#define BR_LORA_ERR_CAP  320

/* The low-rank pair of one matrix. a.data == NULL: this matrix is not adapted. */
struct br_lora_pair {
    struct br_tensor a; /* (rank, in) */
    struct br_tensor b; /* (out, rank) */
};

typedef struct br_lora br_lora;

/* One adapter applied to a generation, with its user scale (0 = no effect). */
struct br_lora_use {
    const br_lora *adapter; /* borrowed */
    float scale;
};

/**
 * Opens the adapter at `path` and validates it against `base` (the model it will be applied
 * to). BR_ERR_IO (cannot read), BR_ERR_PARSE (malformed GGUF, not an adapter, missing alpha,
 * bad shapes or rank, unknown tensors), BR_ERR_UNSUPPORTED (tensor type other than F32/F16),
 * BR_ERR_NOMEM. On error *out is NULL and err (may be NULL) holds a message naming the file.
 */
int br_lora_open(const char *path, const struct br_llama_config *base, br_lora **out, char *err,
                 size_t err_cap);

/** As br_lora_open on `size` bytes at `data` (borrowed; must outlive the adapter). */
int br_lora_open_mem(const void *data, size_t size, const char *name,
                     const struct br_llama_config *base, br_lora **out, char *err, size_t err_cap);

/** Frees the adapter; NULL is a no-op. */
void br_lora_close(br_lora *l);

int br_lora_rank(const br_lora *l);
float br_lora_alpha(const br_lora *l);
int br_lora_n_layers(const br_lora *l); /* the base's layer count it was validated against */

/** Number of adapted matrices (pairs). */
size_t br_lora_n_pairs(const br_lora *l);

/** The pair of (layer, target), or NULL when that matrix is not adapted or out of range. */
const struct br_lora_pair *br_lora_pair(const br_lora *l, int layer, enum br_lora_target t);

/**
 * 1 when the adapter was validated against a config with the same shapes as `c` (dim,
 * hidden_dim, n_layers, n_heads, n_kv_heads), 0 otherwise.
 */
int br_lora_fits(const br_lora *l, const struct br_llama_config *c);

/** The GGUF name of a target ("attn_q", ...). */
const char *br_lora_target_name(enum br_lora_target t);

/**
 * Adds scale * (alpha / rank) * (B A)[row] to `out` (the `in` columns of one row of the base
 * matrix, dequantized): one row of the merged weights. tmp is scratch of rank + in floats.
 * BR_OK or BR_ERR_RANGE (row out of range).
 */
int br_lora_merge_row(const br_lora *l, const struct br_lora_pair *p, float scale, size_t row,
                      float *out, float *tmp);

#endif
