/* SPDX-License-Identifier: MIT */
/*
 * The engine's shared description of a llama-family model: its hyper-parameters
 * (struct br_llama_config) and views of its weight tensors (struct br_llama_weights). Loaders
 * fill these (llama2c.c from a llama2.c .bin checkpoint, model.c from GGUF); the forward pass
 * (forward.c) only reads them. A struct br_tensor never owns its bytes: `data` points into a
 * read-only mapping (or buffer) owned by the loader object that produced it and stays valid
 * until that loader object is closed. The `layers` array of struct br_llama_weights is likewise
 * allocated and freed by the loader that filled it.
 *
 * RoPE pairing: both loaders must present wq/wk so that the forward pass can rotate adjacent
 * element pairs (2i, 2i+1) of each head (the llama2.c / Meta convention, which is also what
 * llama.cpp's LLAMA_ROPE_TYPE_NORM applies to GGUF "llama" tensors); a loader whose file uses
 * the "rotate half" (NeoX / HF) pairing sets rope_style = BR_ROPE_HALF instead of permuting.
 * Checked: blk.0.attn_q/attn_k of models/stories260K/stories260K-f32.gguf are byte-identical to
 * layer 0's wq/wk in stories260K.bin (llama.cpp's llama2c converter does not permute; its HF
 * converter permutes HF's rotate-half rows into this adjacent layout), so a GGUF "llama" model
 * is loaded as-is with BR_ROPE_ADJACENT and gives the .bin's logits.
 *
 * Thread-safety: the structs are plain data; after loading they are immutable and may be read
 * from any number of threads.
 */
#ifndef BR_ENGINE_WEIGHTS_H
#define BR_ENGINE_WEIGHTS_H

#include <stddef.h>

/* Element types of a tensor. The quantized ones use GGML's block layouts:
 *   F32 4 bytes/elem, F16 2 bytes/elem (IEEE half),
 *   Q8_0 32 elems in 34 bytes, Q4_0 32 in 18, Q5_0 32 in 22,
 *   Q4_K 256 in 144, Q6_K 256 in 210. */
enum br_tensor_type {
    BR_TENSOR_F32,
    BR_TENSOR_F16,
    BR_TENSOR_Q8_0,
    BR_TENSOR_Q4_0,
    BR_TENSOR_Q4_K,
    BR_TENSOR_Q5_0,
    BR_TENSOR_Q6_K
};

/* A borrowed, row-major 2-D view. For a matmul y = W x: rows = output dim, cols = input dim.
 * Vectors (norm weights) have rows = 1, cols = length. Each row starts at
 * data + r * br_tensor_row_bytes(type, cols). */
struct br_tensor {
    enum br_tensor_type type;
    const void *data; /* borrowed; owned by the loader (usually a read-only mmap) */
    size_t rows;
    size_t cols;
    const void *packed; /* NULL, or a br_kernel_q4_0_pack copy of data (Q4_0 only) that the
                           AVX2 matvec reads instead; borrowed, owned like data */
};

/* How the query/key elements of one head are paired for rotary position embeddings. */
enum br_rope_style {
    BR_ROPE_ADJACENT = 0, /* pairs (2i, 2i+1): llama2.c .bin, GGUF llama (llama.cpp NORM) */
    BR_ROPE_HALF = 1      /* pairs (i, i + head_dim/2): NeoX / HF layout */
};

struct br_llama_config {
    int dim;        /* model (embedding) width */
    int hidden_dim; /* FFN inner width */
    int n_layers;
    int n_heads;      /* query heads; head_dim = dim / n_heads */
    int n_kv_heads;   /* key/value heads (grouped-query attention); divides n_heads */
    int vocab_size;   /* always positive here (llama2.c's negative sign is decoded by the loader) */
    int seq_len;      /* maximum context length in tokens */
    float rms_eps;    /* RMSNorm epsilon (llama2.c uses 1e-5) */
    float rope_theta; /* RoPE base frequency (10000 for llama2.c) */
    enum br_rope_style rope_style; /* added field; zero-initialised = BR_ROPE_ADJACENT */
};

/* One transformer block. Shapes use d = dim, h = hidden_dim, kv = n_kv_heads * head_dim. */
struct br_llama_layer {
    struct br_tensor attn_norm; /* (1, d) RMSNorm weight before attention */
    struct br_tensor wq;        /* (d, d) */
    struct br_tensor wk;        /* (kv, d) */
    struct br_tensor wv;        /* (kv, d) */
    struct br_tensor wo;        /* (d, d) */
    struct br_tensor ffn_norm;  /* (1, d) RMSNorm weight before the FFN */
    struct br_tensor w1;        /* (h, d) gate */
    struct br_tensor w2;        /* (d, h) down */
    struct br_tensor w3;        /* (h, d) up */
};

struct br_llama_weights {
    struct br_tensor token_embedding; /* (vocab, d); row t is token t's embedding */
    struct br_llama_layer *layers;    /* n_layers entries; owned by the loader that filled it */
    int n_layers;                     /* entries in layers (== config.n_layers) */
    struct br_tensor final_norm;      /* (1, d) */
    struct br_tensor output;          /* (vocab, d) classifier; equals token_embedding when
                                         the checkpoint shares them */
};

/** Elements per block of `type` (1 for F32/F16, 32 for *_0, 256 for *_K); 0 if unknown. */
size_t br_tensor_block_elems(enum br_tensor_type type);

/** Bytes per block of `type` (4, 2, 34, 18, 144, 22, 210); 0 if unknown. */
size_t br_tensor_block_bytes(enum br_tensor_type type);

/**
 * Bytes of one row of `cols` elements of `type`; 0 when the type is unknown or `cols` is not a
 * whole number of blocks (callers treat 0 as a malformed tensor). Pure, thread-safe.
 */
size_t br_tensor_row_bytes(enum br_tensor_type type, size_t cols);

/** Short lowercase name ("f32", "q4_k", ...); "unknown" otherwise. Never NULL. */
const char *br_tensor_type_name(enum br_tensor_type type);

#endif
