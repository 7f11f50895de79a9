/* SPDX-License-Identifier: MIT */
/*
 * A llama-architecture model read from a GGUF file: hyper-parameters from the llama.* metadata
 * into struct br_llama_config, tensor views into struct br_llama_weights (weights.h), with every
 * tensor's presence, type and shape checked against the configuration.
 *
 * Tensor names and GGUF shapes (dims[0] = columns): token_embd (d, vocab);
 * blk.N.attn_norm (d); blk.N.attn_q (d, d); blk.N.attn_k, attn_v (d, kv); blk.N.attn_output
 * (d, d); blk.N.ffn_norm (d); blk.N.ffn_gate, ffn_up (d, h); blk.N.ffn_down (h, d);
 * output_norm (d); output (d, vocab), absent when the classifier is shared with token_embd.
 * Norm weights must be F32; matrices may be any enum br_tensor_type.
 *
 * RoPE pairing: GGUF "llama" tensors are stored in the original Meta / llama2.c row order
 * (rotate adjacent pairs 2i, 2i+1 of each head; llama.cpp's LLAMA_ROPE_TYPE_NORM). llama.cpp's
 * HF converter permutes q/k rows only to undo the HF "rotate half" permutation, and the
 * llama2.c converter copies wq/wk verbatim (checked: stories260K-f32.gguf attn_q/attn_k are
 * bit-identical to stories260K.bin wq/wk). So the loader sets rope_style = BR_ROPE_ADJACENT
 * and does not permute anything.
 *
 * Ownership: br_llama_model_open owns the GGUF mapping and the layers array; all tensor data
 * pointers are valid until br_llama_model_close. Immutable after loading; thread-safe to read.
 */
#ifndef BR_ENGINE_MODEL_H
#define BR_ENGINE_MODEL_H

#include <stddef.h>

#include "engine/gguf.h"
#include "engine/weights.h"

struct br_llama_model {
    br_gguf *gguf;                   /* owned; the mapping the tensors point into */
    struct br_llama_config config;   /* from the llama.* metadata */
    struct br_llama_weights weights; /* views into gguf; layers array owned */
    void *packed;        /* owned; the Q4_0 matrices' packed copies (tensor.packed points
                            here), NULL when there are none or the CPU has no AVX2 */
    size_t packed_bytes; /* size of packed (as much again as the packed matrices' data) */
};

/**
 * Fills config and weights from an open GGUF file (borrowed; must outlive the weights). `name`
 * is used in messages. On success weights->layers is allocated (free with
 * br_llama_weights_release). Errors: BR_ERR_PARSE (missing/invalid key or tensor, wrong shape),
 * BR_ERR_UNSUPPORTED (not a llama model, partial RoPE), BR_ERR_NOMEM; message in err.
 */
int br_llama_model_load_gguf(const br_gguf *g, const char *name, struct br_llama_config *config,
                             struct br_llama_weights *weights, char *err, size_t err_cap);

/** Frees the layers array filled by br_llama_model_load_gguf (NULL-safe, idempotent). */
void br_llama_weights_release(struct br_llama_weights *weights);

/**
 * Maps the GGUF file at `path` and loads it. When the CPU has AVX2, every Q4_0 matrix used in a
 * matvec (the layers' seven and the classifier) also gets a packed copy
 * (br_kernel_q4_0_pack) in one heap block owned by the model: faster decode, at the cost of
 * memory equal to those matrices' Q4_0 size. *out is owned by the caller (br_llama_model_close).
 * Errors as br_gguf_open and br_llama_model_load_gguf.
 */
int br_llama_model_open(const char *path, struct br_llama_model **out, char *err, size_t err_cap);

/** Frees everything; NULL is a no-op. */
void br_llama_model_close(struct br_llama_model *m);

#endif
