/* SPDX-License-Identifier: MIT */
/*
 * Loader for llama2.c checkpoints (.bin): a header of seven little-endian int32 (dim,
 * hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means
 * the classifier is stored separately) followed by F32 tensors in this order: token embedding,
 * attention RMS weights, wq, wk, wv, wo, FFN RMS weights, w1, w2, w3, final RMS weight, the
 * RoPE frequency tables (real then imaginary, seq_len * head_dim / 2 floats each; skipped), and
 * the classifier when it is not shared. Every tensor is a row-major (out, in) matrix per layer.
 *
 * The file is mmap'd read-only; the tensors of the filled struct br_llama_weights point into it.
 * Every size is validated against the file length before any tensor is touched: a truncated
 * file, a file with trailing bytes, or an absurd header is rejected with BR_ERR_PARSE and a
 * message naming the file, what is wrong and where. RoPE pairing is BR_ROPE_ADJACENT.
 *
 * Thread-safety: a loaded struct br_llama2c is immutable and may be read from any thread;
 * br_llama2c_close must not race with readers.
 */
#ifndef BR_ENGINE_LLAMA2C_H
#define BR_ENGINE_LLAMA2C_H

#include <stddef.h>

#include "engine/weights.h"

/* Upper bounds on header fields; larger values are rejected as absurd. */
#define BR_LLAMA2C_MAX_DIM    65536
#define BR_LLAMA2C_MAX_LAYERS 1024
#define BR_LLAMA2C_MAX_HEADS  1024
#define BR_LLAMA2C_MAX_VOCAB  (1 << 22)
#define BR_LLAMA2C_MAX_SEQ    (1 << 20)

/* Bytes of the header. */
#define BR_LLAMA2C_HEADER_BYTES 28

struct br_llama2c {
    struct br_llama_config config;
    struct br_llama_weights weights; /* tensors borrow from the mapping below */
    const void *base;                /* start of the checkpoint bytes (mapping or caller buffer) */
    size_t len;                      /* bytes at base */
    void *map; /* our own mmap of the file (== base), unmapped on close; NULL for a caller buffer */
};

/**
 * Maps the checkpoint at `path` and fills a new loader object into *out (caller closes with
 * br_llama2c_close). Errors: BR_ERR_IO / BR_ERR_NOTFOUND (open/stat/mmap), BR_ERR_PARSE
 * (malformed file), BR_ERR_NOMEM. On error *out is NULL and, when err is non-NULL, a
 * NUL-terminated message of at most err_cap bytes describes the problem.
 */
int br_llama2c_open(const char *path, struct br_llama2c **out, char *err, size_t err_cap);

/**
 * Like br_llama2c_open but parses `len` bytes at `data` (borrowed: they must stay valid and
 * unchanged until br_llama2c_close). `data` must be 4-byte aligned (BR_ERR_INVAL otherwise).
 * `name` is used in error messages only (may be NULL).
 */
int br_llama2c_load_memory(const void *data, size_t len, const char *name, struct br_llama2c **out,
                           char *err, size_t err_cap);

/** Releases the object, its layer array and its mapping. NULL is a no-op. */
void br_llama2c_close(struct br_llama2c *m);

#endif
