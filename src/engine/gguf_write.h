/* SPDX-License-Identifier: MIT */
/*
 * GGUF v3 writer (the layout gguf.h reads): metadata key/value pairs of the scalar types, strings
 * and arrays of numbers or strings, tensor infos, and tensor data padded to the alignment
 * (general.alignment, written as a KV when it is not the default 32).
 *
 * Usage: br_gguf_writer_create, any number of br_gguf_writer_kv_* and br_gguf_writer_tensor
 * calls (file order = call order; duplicate keys or tensor names are refused), then
 * br_gguf_writer_write, then br_gguf_writer_free. Metadata values are copied at once. Tensor
 * bytes are not: either `data` is borrowed until br_gguf_writer_write returns, or `data` is
 * NULL and the writer's fill callback produces each tensor's bytes while the file is written
 * (so a converter never holds more than one converted tensor in memory).
 *
 * The output is written to "PATH.tmp" and renamed over PATH once complete, so a failed write
 * never leaves a truncated PATH. The bytes depend only on the calls made (deterministic).
 *
 * Thread-safety: a writer is used by one thread at a time.
 */
#ifndef BR_ENGINE_GGUF_WRITE_H
#define BR_ENGINE_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"
#include "engine/weights.h"

typedef struct br_gguf_writer br_gguf_writer;

/* Produces the n_bytes of tensor number `index` (call order) into dst. BR_OK or an error, which
 * aborts the write. */
typedef int (*br_gguf_fill_fn)(void *user, size_t index, void *dst, size_t n_bytes);

/**
 * New writer with the given data alignment (a power of two, 8..65536; 0 = 32). fill/user may
 * be NULL when every tensor is given with data. BR_ERR_INVAL, BR_ERR_NOMEM.
 */
int br_gguf_writer_create(uint32_t alignment, br_gguf_fill_fn fill, void *user,
                          br_gguf_writer **out);

void br_gguf_writer_free(br_gguf_writer *w);

/* Metadata. Keys are non-empty, at most 65535 bytes, unique (BR_ERR_EXISTS otherwise). */
int br_gguf_writer_kv_u32(br_gguf_writer *w, const char *key, uint32_t v);
int br_gguf_writer_kv_i32(br_gguf_writer *w, const char *key, int32_t v);
int br_gguf_writer_kv_u64(br_gguf_writer *w, const char *key, uint64_t v);
int br_gguf_writer_kv_f32(br_gguf_writer *w, const char *key, float v);
int br_gguf_writer_kv_bool(br_gguf_writer *w, const char *key, bool v);
int br_gguf_writer_kv_str(br_gguf_writer *w, const char *key, struct br_slice v);
int br_gguf_writer_kv_arr_str(br_gguf_writer *w, const char *key, const struct br_slice *v,
                              size_t n);
int br_gguf_writer_kv_arr_f32(br_gguf_writer *w, const char *key, const float *v, size_t n);
int br_gguf_writer_kv_arr_i32(br_gguf_writer *w, const char *key, const int32_t *v, size_t n);

/**
 * Adds a tensor of n_dims (1..4) dimensions (dims[0] = columns, innermost) of `type`. dims[0]
 * must be a whole number of the type's blocks. data (br_tensor_row_bytes(type, dims[0]) *
 * rows bytes) is borrowed, or NULL to have the fill callback produce it. BR_ERR_INVAL (bad
 * shape, type, no data and no fill callback), BR_ERR_EXISTS (name taken), BR_ERR_NOMEM.
 */
int br_gguf_writer_tensor(br_gguf_writer *w, const char *name, enum br_tensor_type type,
                          uint32_t n_dims, const uint64_t *dims, const void *data);

/**
 * Writes the file. BR_ERR_IO (cannot create/write/rename; message in err), the fill
 * callback's error, BR_ERR_NOMEM. err (may be NULL) receives a message naming the path.
 */
int br_gguf_writer_write(br_gguf_writer *w, const char *path, char *err, size_t err_cap);

/** GGUF's ggml type number of a tensor type (F32 0, F16 1, Q4_0 2, Q5_0 6, Q8_0 8, Q4_K 12,
 * Q6_K 14); UINT32_MAX for an unknown type. */
uint32_t br_gguf_ggml_type_of(enum br_tensor_type type);

#endif
