/* SPDX-License-Identifier: MIT */
/*
 * GGUF reader (format versions 2 and 3, little-endian). A file is mapped read-only (or a caller's
 * buffer is borrowed, for the fuzzer) and validated completely at open: every count, string
 * length, array length, tensor shape and tensor data range is checked against the bytes that
 * are really there, so the accessors below never read out of bounds. A malformed file gives an
 * error return and a one-line message naming the file, what is wrong and the byte offset where
 * it was found; nothing is allocated in proportion to a count before that count has been checked
 * against the remaining bytes.
 *
 * Layout (all integers little-endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count,
 * kv_count x (string key, u32 type, value), tensor_count x (string name, u32 n_dims,
 * n_dims x u64 dims (dims[0] = innermost = columns), u32 ggml type, u64 offset), padding to
 * general.alignment (default 32), then tensor data; each tensor offset is relative to the start
 * of the data section and a multiple of the alignment. Strings are u64 length + bytes (no NUL).
 *
 * Ownership: br_gguf_open maps the file and br_gguf_close unmaps it; every slice and tensor
 * data pointer handed out points into that mapping (or the caller's buffer for
 * br_gguf_open_mem) and is valid until br_gguf_close. Thread-safety: an open br_gguf is
 * immutable; concurrent readers are fine.
 */
#ifndef BR_ENGINE_GGUF_H
#define BR_ENGINE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"
#include "engine/weights.h"

/* Metadata value types (GGUF numbering). */
enum br_gguf_type {
    BR_GGUF_TYPE_UINT8 = 0,
    BR_GGUF_TYPE_INT8 = 1,
    BR_GGUF_TYPE_UINT16 = 2,
    BR_GGUF_TYPE_INT16 = 3,
    BR_GGUF_TYPE_UINT32 = 4,
    BR_GGUF_TYPE_INT32 = 5,
    BR_GGUF_TYPE_FLOAT32 = 6,
    BR_GGUF_TYPE_BOOL = 7,
    BR_GGUF_TYPE_STRING = 8,
    BR_GGUF_TYPE_ARRAY = 9,
    BR_GGUF_TYPE_UINT64 = 10,
    BR_GGUF_TYPE_INT64 = 11,
    BR_GGUF_TYPE_FLOAT64 = 12
};

/* GGML tensor element types this reader understands (GGUF numbering). */
enum br_gguf_ggml_type {
    BR_GGUF_GGML_F32 = 0,
    BR_GGUF_GGML_F16 = 1,
    BR_GGUF_GGML_Q4_0 = 2,
    BR_GGUF_GGML_Q5_0 = 6,
    BR_GGUF_GGML_Q8_0 = 8,
    BR_GGUF_GGML_Q4_K = 12,
    BR_GGUF_GGML_Q6_K = 14
};

#define BR_GGUF_MAX_DIMS       4
#define BR_GGUF_DEFAULT_ALIGN  32
#define BR_GGUF_MAX_ARRAY_NEST 8   /* arrays of arrays deeper than this are refused */
#define BR_GGUF_ERR_CAP        256 /* enough for any message this reader writes */

typedef struct br_gguf br_gguf;

/* An array value. Elements start at `data`; for strings and nested arrays the elements have
 * variable size, so use the accessors below rather than indexing `data`. */
struct br_gguf_array {
    enum br_gguf_type type; /* element type */
    uint64_t len;           /* element count */
    const uint8_t *data;    /* borrowed; first element */
    const uint64_t *index;  /* borrowed; byte offset of each element from data for variable-size
                               elements of a top-level array, NULL otherwise */
};

/* One metadata key/value pair. */
struct br_gguf_kv {
    struct br_slice key;        /* borrowed */
    enum br_gguf_type type;     /* value type */
    const uint8_t *value;       /* borrowed; raw little-endian value bytes */
    struct br_gguf_array array; /* when type == BR_GGUF_TYPE_ARRAY */
};

/* One tensor as described by the file. */
struct br_gguf_tensor {
    struct br_slice name;            /* borrowed */
    uint32_t n_dims;                 /* 1..4 */
    uint64_t dims[BR_GGUF_MAX_DIMS]; /* dims[0] innermost (columns); unused dims are 1 */
    uint32_t ggml_type;              /* enum br_gguf_ggml_type */
    uint64_t offset;                 /* bytes from the start of the data section */
    uint64_t n_bytes;                /* size of the data */
    const void *data;                /* borrowed; inside the mapping */
};

/**
 * Maps `path` read-only and parses it. On success *out is the reader (caller closes it with
 * br_gguf_close). On failure returns BR_ERR_IO (cannot open/map), BR_ERR_PARSE (malformed),
 * BR_ERR_UNSUPPORTED (version or tensor type not handled) or BR_ERR_NOMEM, and writes a
 * NUL-terminated message into err (err may be NULL; err_cap bytes at most).
 */
int br_gguf_open(const char *path, br_gguf **out, char *err, size_t err_cap);

/**
 * Parses `size` bytes at `data` (borrowed: must outlive the reader) as a GGUF file; `name` is
 * used in messages. Same errors as br_gguf_open. The data pointer need not be aligned.
 */
int br_gguf_open_mem(const void *data, size_t size, const char *name, br_gguf **out, char *err,
                     size_t err_cap);

/** Unmaps and frees; NULL is a no-op. */
void br_gguf_close(br_gguf *g);

/** File format version (2 or 3). */
uint32_t br_gguf_version(const br_gguf *g);

/** Alignment of tensor data (general.alignment or 32). */
uint32_t br_gguf_alignment(const br_gguf *g);

/** Number of metadata pairs / tensors. */
size_t br_gguf_kv_count(const br_gguf *g);
size_t br_gguf_tensor_count(const br_gguf *g);

/** Pair / tensor number i (< count), in file order; NULL when out of range. Borrowed. */
const struct br_gguf_kv *br_gguf_kv_at(const br_gguf *g, size_t i);
const struct br_gguf_tensor *br_gguf_tensor_at(const br_gguf *g, size_t i);

/** The pair with this key, or NULL. Borrowed. */
const struct br_gguf_kv *br_gguf_find(const br_gguf *g, const char *key);

/** The tensor with this name, or NULL. Borrowed. */
const struct br_gguf_tensor *br_gguf_find_tensor(const br_gguf *g, const char *name);

/**
 * Typed getters. Return BR_OK, BR_ERR_NOTFOUND (no such key), BR_ERR_PARSE (the value has
 * another type) or BR_ERR_RANGE (an integer that does not fit).
 * get_u32 accepts any integer type whose value fits in uint32_t; get_u64 likewise for
 * non-negative values; get_f32 accepts float32 and float64; get_bool accepts bool.
 */
int br_gguf_get_u32(const br_gguf *g, const char *key, uint32_t *out);
int br_gguf_get_u64(const br_gguf *g, const char *key, uint64_t *out);
int br_gguf_get_f32(const br_gguf *g, const char *key, float *out);
int br_gguf_get_bool(const br_gguf *g, const char *key, int *out);
int br_gguf_get_str(const br_gguf *g, const char *key, struct br_slice *out);
int br_gguf_get_array(const br_gguf *g, const char *key, struct br_gguf_array *out);

/** Element i of a string array (BR_ERR_PARSE if not a string array, BR_ERR_RANGE if i >= len). */
int br_gguf_array_str(const struct br_gguf_array *a, uint64_t i, struct br_slice *out);

/** Element i of an array of arrays (its own `index` is NULL). Same errors. */
int br_gguf_array_array(const struct br_gguf_array *a, uint64_t i, struct br_gguf_array *out);

/** Element i of a numeric array converted to float (int/uint/float/bool types). Same errors. */
int br_gguf_array_f32(const struct br_gguf_array *a, uint64_t i, float *out);

/** Element i of an integer array as int64 (uint64 values above INT64_MAX: BR_ERR_RANGE). */
int br_gguf_array_i64(const struct br_gguf_array *a, uint64_t i, int64_t *out);

/**
 * A 2-D view of tensor `t`: cols = dims[0], rows = product of the others. Returns
 * BR_ERR_UNSUPPORTED when the ggml type has no enum br_tensor_type.
 */
int br_gguf_tensor_view(const struct br_gguf_tensor *t, struct br_tensor *out);

/** Short name of a ggml type number ("f32", "q4_k", ...) or "unknown". Never NULL. */
const char *br_gguf_ggml_type_name(uint32_t ggml_type);

#endif
