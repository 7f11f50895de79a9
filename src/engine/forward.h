/* SPDX-License-Identifier: MIT */
/*
 * The llama forward pass for one token at a time: embedding lookup, n_layers blocks of
 * (RMSNorm -> grouped-query attention with rotary position embeddings and a KV cache ->
 * residual, RMSNorm -> SwiGLU FFN -> residual), final RMSNorm and the classifier.
 *
 * struct br_llama_state holds every buffer the pass needs (activations, the KV cache for
 * config.seq_len positions, the quantized-activation scratch of the matvecs and the optional
 * thread pool), allocated once by br_llama_state_create; br_llama_forward allocates nothing.
 * Weight matrices and the token embedding may be of any enum br_tensor_type with a kernel
 * (kernels.h); norm weights are F32. The weights are borrowed and must outlive the state.
 *
 * Thread-safety: one state per generation context; a state must not be used by two threads at
 * once. Several states may share the same (immutable) weights.
 */
#ifndef BR_ENGINE_FORWARD_H
#define BR_ENGINE_FORWARD_H

#include <stddef.h>

#include "engine/kernels.h"
#include "engine/lora.h"
#include "engine/pool.h"
#include "engine/weights.h"

#define BR_LLAMA_MAX_LORA 8 /* adapters applied at once by one state */

/* Run-time options of a state (not part of the model). Zero-initialised = defaults. */
struct br_llama_run_config {
    int n_threads; /* matvec threads, the caller included; <= 1 means single-threaded */
};

struct br_llama_state {
    const struct br_llama_config *config;   /* borrowed */
    const struct br_llama_weights *weights; /* borrowed */
    float *x;                               /* (dim) residual stream */
    float *xb;                              /* (dim) normed input / attention output */
    float *xb2;                             /* (dim) projection output */
    float *hb;                              /* (hidden_dim) FFN gate */
    float *hb2;                             /* (hidden_dim) FFN up */
    float *q;                               /* (dim) queries of the current position */
    float *att;                             /* (n_heads, seq_len) attention scores */
    float *key_cache;                       /* (n_layers, seq_len, kv_dim) */
    float *value_cache;                     /* (n_layers, seq_len, kv_dim) */
    float *inv_freq;                        /* (head_dim / 2) RoPE inverse frequencies */
    float *rope_cs;                         /* (head_dim) cos, sin of each pair at pos */
    struct br_kernel_scratch scratch;       /* quantized activation (max(dim, hidden_dim)) */
    struct br_pool *pool;                   /* NULL when single-threaded; owned */
    int n_threads;                          /* participants of each matvec */
    /* LoRA adapters applied at run time (br_llama_state_set_lora); added fields */
    struct br_lora_use lora[BR_LLAMA_MAX_LORA]; /* adapters borrowed; scale != 0 */
    float lora_factor[BR_LLAMA_MAX_LORA];       /* scale * alpha / rank of each */
    int n_lora;
    float *lora_ax;  /* (lora_cap) A x of one adapter */
    float *lora_y;   /* (max(dim, hidden_dim)) B (A x) */
    size_t lora_cap; /* rank capacity of lora_ax */
};

/**
 * Allocates a state for the model described by config/weights (both borrowed; they must
 * outlive the state). Returns BR_OK, BR_ERR_INVAL (inconsistent config) or BR_ERR_NOMEM; on
 * error *out is NULL. Caller destroys with br_llama_state_destroy.
 */
int br_llama_state_create(const struct br_llama_config *config,
                          const struct br_llama_weights *weights, struct br_llama_state **out);

/**
 * As br_llama_state_create, with run options (NULL = defaults): run->n_threads > 1 starts a
 * thread pool of that many participants (the forward caller included) that splits the rows of
 * every large matvec; logits are bit-identical for any thread count. BR_ERR_INVAL also for
 * n_threads > 256.
 */
int br_llama_state_create_ex(const struct br_llama_config *config,
                             const struct br_llama_weights *weights,
                             const struct br_llama_run_config *run, struct br_llama_state **out);

/**
 * Selects the LoRA adapters that the following br_llama_forward calls add at run time:
 * for every adapted matrix W of layer l, y = W x + sum_i scale_i * (alpha_i / rank_i) *
 * B_i (A_i x) (lora.h). uses[0..n) are copied (the adapters stay borrowed and must outlive
 * their use); entries with scale 0 are dropped, so scale 0 gives the base model's logits
 * bit for bit. n = 0 removes every adapter. The scratch for the largest rank is (re)allocated
 * here, never in br_llama_forward. Returns BR_OK, BR_ERR_LIMIT (n > BR_LLAMA_MAX_LORA),
 * BR_ERR_INVAL (an adapter validated against another shape of model, or a NULL adapter) or
 * BR_ERR_NOMEM (the previous selection is then kept).
 */
int br_llama_state_set_lora(struct br_llama_state *s, const struct br_lora_use *uses, int n);

/** Frees the state. NULL is a no-op. */
void br_llama_state_destroy(struct br_llama_state *s);

/**
 * Runs token `token` at position `pos` (0-based; positions must be fed in order, each once per
 * sequence; the KV cache rows >= pos are overwritten) and writes vocab_size logits into
 * logits_out (caller-owned). Allocates nothing. Returns BR_OK, BR_ERR_RANGE (token or pos out
 * of range) or BR_ERR_UNSUPPORTED (a tensor type without a kernel).
 */
int br_llama_forward(struct br_llama_state *s, int token, int pos, float *logits_out);

#endif
