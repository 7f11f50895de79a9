/* SPDX-License-Identifier: MIT */
/*
 * GGUF v3 writer: metadata serialised into a buffer as it is added, tensor infos kept in an
 * array, the file assembled by br_gguf_writer_write. See gguf_write.h.
 */
#include "engine/gguf_write.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "engine/gguf.h"

#define MAX_META  ((size_t)1 << 30)
#define MAX_KEY   65535u
#define MAX_NAME  65535u
#define WRITE_BUF ((size_t)1 << 20)

struct wtensor {
    char *name;
    uint32_t n_dims;
    uint64_t dims[BR_GGUF_MAX_DIMS];
    enum br_tensor_type type;
    const void *data;
    uint64_t n_bytes;
    uint64_t offset;
};

struct br_gguf_writer {
    uint32_t alignment;
    br_gguf_fill_fn fill;
    void *user;
    struct br_buf kv; /* serialised pairs */
    uint64_t n_kv;
    char **keys;
    size_t n_keys;
    struct wtensor *tensors;
    size_t n_tensors;
};

uint32_t br_gguf_ggml_type_of(enum br_tensor_type type)
{
    switch (type) {
    case BR_TENSOR_F32:
        return BR_GGUF_GGML_F32;
    case BR_TENSOR_F16:
        return BR_GGUF_GGML_F16;
    case BR_TENSOR_Q4_0:
        return BR_GGUF_GGML_Q4_0;
    case BR_TENSOR_Q5_0:
        return BR_GGUF_GGML_Q5_0;
    case BR_TENSOR_Q8_0:
        return BR_GGUF_GGML_Q8_0;
    case BR_TENSOR_Q4_K:
        return BR_GGUF_GGML_Q4_K;
    case BR_TENSOR_Q6_K:
        return BR_GGUF_GGML_Q6_K;
    }
    return UINT32_MAX;
}

int br_gguf_writer_create(uint32_t alignment, br_gguf_fill_fn fill, void *user,
                          br_gguf_writer **out)
{
    *out = NULL;
    if (alignment == 0) {
        alignment = BR_GGUF_DEFAULT_ALIGN;
    }
    if (alignment < 8 || alignment > 65536 || (alignment & (alignment - 1)) != 0) {
        return BR_ERR_INVAL;
    }
    br_gguf_writer *w = br_calloc(1, sizeof *w);
    if (!w) {
        return BR_ERR_NOMEM;
    }
    w->alignment = alignment;
    w->fill = fill;
    w->user = user;
    br_buf_init(&w->kv, MAX_META);
    if (alignment != BR_GGUF_DEFAULT_ALIGN) {
        int rc = br_gguf_writer_kv_u32(w, "general.alignment", alignment);
        if (rc != BR_OK) {
            br_gguf_writer_free(w);
            return rc;
        }
    }
    *out = w;
    return BR_OK;
}

void br_gguf_writer_free(br_gguf_writer *w)
{
    if (!w) {
        return;
    }
    br_buf_cleanup(&w->kv);
    for (size_t i = 0; i < w->n_keys; i++) {
        br_free(w->keys[i]);
    }
    br_free(w->keys);
    for (size_t i = 0; i < w->n_tensors; i++) {
        br_free(w->tensors[i].name);
    }
    br_free(w->tensors);
    br_free(w);
}

static int put_u32(struct br_buf *b, uint32_t v)
{
    uint8_t le[4];
    for (int i = 0; i < 4; i++) {
        le[i] = (uint8_t)(v >> (8 * i));
    }
    return br_buf_append(b, le, sizeof le);
}

static int put_u64(struct br_buf *b, uint64_t v)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++) {
        le[i] = (uint8_t)(v >> (8 * i));
    }
    return br_buf_append(b, le, sizeof le);
}

static int put_str(struct br_buf *b, const char *p, size_t n)
{
    int rc = put_u64(b, n);
    return rc == BR_OK ? br_buf_append(b, p, n) : rc;
}

/* Checks the key, records it and writes it with the value type; rolls back on error. */
static int begin_kv(br_gguf_writer *w, const char *key, enum br_gguf_type type)
{
    size_t n = strlen(key);
    if (n == 0 || n > MAX_KEY) {
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < w->n_keys; i++) {
        if (strcmp(w->keys[i], key) == 0) {
            return BR_ERR_EXISTS;
        }
    }
    char **keys = br_realloc(w->keys, (w->n_keys + 1) * sizeof *keys);
    if (!keys) {
        return BR_ERR_NOMEM;
    }
    w->keys = keys;
    keys[w->n_keys] = br_strdup(key);
    if (!keys[w->n_keys]) {
        return BR_ERR_NOMEM;
    }
    size_t mark = w->kv.len;
    int rc = put_str(&w->kv, key, n);
    if (rc == BR_OK) {
        rc = put_u32(&w->kv, (uint32_t)type);
    }
    if (rc != BR_OK) {
        w->kv.len = mark;
        br_free(keys[w->n_keys]);
        return rc;
    }
    w->n_keys++;
    w->n_kv++;
    return BR_OK;
}

/* Finishes a pair: on error the bytes appended since mark are dropped and the key forgotten. */
static int end_kv(br_gguf_writer *w, size_t mark, int rc)
{
    if (rc != BR_OK) {
        w->kv.len = mark;
        w->n_keys--;
        br_free(w->keys[w->n_keys]);
        w->n_kv--;
    }
    return rc;
}

static int kv_raw(br_gguf_writer *w, const char *key, enum br_gguf_type type, const void *le,
                  size_t n)
{
    size_t mark = w->kv.len;
    int rc = begin_kv(w, key, type);
    if (rc != BR_OK) {
        return rc;
    }
    return end_kv(w, mark, br_buf_append(&w->kv, le, n));
}

int br_gguf_writer_kv_u32(br_gguf_writer *w, const char *key, uint32_t v)
{
    uint8_t le[4];
    for (int i = 0; i < 4; i++) {
        le[i] = (uint8_t)(v >> (8 * i));
    }
    return kv_raw(w, key, BR_GGUF_TYPE_UINT32, le, sizeof le);
}

int br_gguf_writer_kv_i32(br_gguf_writer *w, const char *key, int32_t v)
{
    uint32_t u = (uint32_t)v;
    uint8_t le[4];
    for (int i = 0; i < 4; i++) {
        le[i] = (uint8_t)(u >> (8 * i));
    }
    return kv_raw(w, key, BR_GGUF_TYPE_INT32, le, sizeof le);
}

int br_gguf_writer_kv_u64(br_gguf_writer *w, const char *key, uint64_t v)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++) {
        le[i] = (uint8_t)(v >> (8 * i));
    }
    return kv_raw(w, key, BR_GGUF_TYPE_UINT64, le, sizeof le);
}

int br_gguf_writer_kv_f32(br_gguf_writer *w, const char *key, float v)
{
    uint32_t u = 0;
    memcpy(&u, &v, sizeof u);
    uint8_t le[4];
    for (int i = 0; i < 4; i++) {
        le[i] = (uint8_t)(u >> (8 * i));
    }
    return kv_raw(w, key, BR_GGUF_TYPE_FLOAT32, le, sizeof le);
}

int br_gguf_writer_kv_bool(br_gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return kv_raw(w, key, BR_GGUF_TYPE_BOOL, &b, 1);
}

int br_gguf_writer_kv_str(br_gguf_writer *w, const char *key, struct br_slice v)
{
    size_t mark = w->kv.len;
    int rc = begin_kv(w, key, BR_GGUF_TYPE_STRING);
    if (rc != BR_OK) {
        return rc;
    }
    return end_kv(w, mark, put_str(&w->kv, v.ptr ? v.ptr : "", v.len));
}

/* After begin_kv: element type and count of an array value. */
static int array_head(br_gguf_writer *w, enum br_gguf_type elem, size_t n)
{
    int rc = put_u32(&w->kv, (uint32_t)elem);
    return rc == BR_OK ? put_u64(&w->kv, n) : rc;
}

int br_gguf_writer_kv_arr_str(br_gguf_writer *w, const char *key, const struct br_slice *v,
                              size_t n)
{
    size_t mark = w->kv.len;
    int rc = begin_kv(w, key, BR_GGUF_TYPE_ARRAY);
    if (rc != BR_OK) {
        return rc;
    }
    rc = array_head(w, BR_GGUF_TYPE_STRING, n);
    for (size_t i = 0; i < n && rc == BR_OK; i++) {
        rc = put_str(&w->kv, v[i].ptr ? v[i].ptr : "", v[i].len);
    }
    return end_kv(w, mark, rc);
}

static int kv_arr32(br_gguf_writer *w, const char *key, enum br_gguf_type elem, const void *v,
                    size_t n)
{
    size_t mark = w->kv.len;
    int rc = begin_kv(w, key, BR_GGUF_TYPE_ARRAY);
    if (rc != BR_OK) {
        return rc;
    }
    rc = array_head(w, elem, n);
    const uint8_t *p = v;
    for (size_t i = 0; i < n && rc == BR_OK; i++) {
        uint32_t u = 0;
        memcpy(&u, p + 4 * i, sizeof u);
        rc = put_u32(&w->kv, u);
    }
    return end_kv(w, mark, rc);
}

int br_gguf_writer_kv_arr_f32(br_gguf_writer *w, const char *key, const float *v, size_t n)
{
    return kv_arr32(w, key, BR_GGUF_TYPE_FLOAT32, v, n);
}

int br_gguf_writer_kv_arr_i32(br_gguf_writer *w, const char *key, const int32_t *v, size_t n)
{
    return kv_arr32(w, key, BR_GGUF_TYPE_INT32, v, n);
}

int br_gguf_writer_tensor(br_gguf_writer *w, const char *name, enum br_tensor_type type,
                          uint32_t n_dims, const uint64_t *dims, const void *data)
{
    size_t nl = strlen(name);
    if (nl == 0 || nl > MAX_NAME || n_dims == 0 || n_dims > BR_GGUF_MAX_DIMS ||
        br_gguf_ggml_type_of(type) == UINT32_MAX || (!data && !w->fill)) {
        return BR_ERR_INVAL;
    }
    size_t row = br_tensor_row_bytes(type, (size_t)dims[0]);
    if (row == 0) {
        return BR_ERR_INVAL;
    }
    uint64_t bytes = row;
    for (uint32_t d = 1; d < n_dims; d++) {
        if (dims[d] == 0 || bytes > UINT64_MAX / dims[d]) {
            return BR_ERR_INVAL;
        }
        bytes *= dims[d];
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) {
            return BR_ERR_EXISTS;
        }
    }
    struct wtensor *t = br_realloc(w->tensors, (w->n_tensors + 1) * sizeof *t);
    if (!t) {
        return BR_ERR_NOMEM;
    }
    w->tensors = t;
    struct wtensor *nt = &t[w->n_tensors];
    memset(nt, 0, sizeof *nt);
    nt->name = br_strdup(name);
    if (!nt->name) {
        return BR_ERR_NOMEM;
    }
    nt->n_dims = n_dims;
    for (uint32_t d = 0; d < n_dims; d++) {
        nt->dims[d] = dims[d];
    }
    nt->type = type;
    nt->data = data;
    nt->n_bytes = bytes;
    w->n_tensors++;
    return BR_OK;
}

static uint64_t align_up(uint64_t v, uint32_t a)
{
    return (v + a - 1) / a * a;
}

/* Header, metadata and tensor infos, padded to the alignment. */
static int build_head(br_gguf_writer *w, struct br_buf *h)
{
    int rc = br_buf_append(h, "GGUF", 4);
    rc = rc == BR_OK ? put_u32(h, 3) : rc;
    rc = rc == BR_OK ? put_u64(h, w->n_tensors) : rc;
    rc = rc == BR_OK ? put_u64(h, w->n_kv) : rc;
    rc = rc == BR_OK ? br_buf_append(h, w->kv.ptr ? w->kv.ptr : "", w->kv.len) : rc;
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_tensors && rc == BR_OK; i++) {
        struct wtensor *t = &w->tensors[i];
        t->offset = off;
        off = align_up(off + t->n_bytes, w->alignment);
        rc = put_str(h, t->name, strlen(t->name));
        rc = rc == BR_OK ? put_u32(h, t->n_dims) : rc;
        for (uint32_t d = 0; d < t->n_dims && rc == BR_OK; d++) {
            rc = put_u64(h, t->dims[d]);
        }
        rc = rc == BR_OK ? put_u32(h, br_gguf_ggml_type_of(t->type)) : rc;
        rc = rc == BR_OK ? put_u64(h, t->offset) : rc;
    }
    static const char zeros[64] = {0};
    while (rc == BR_OK && h->len % w->alignment != 0) {
        size_t pad = w->alignment - h->len % w->alignment;
        rc = br_buf_append(h, zeros, pad < sizeof zeros ? pad : sizeof zeros);
    }
    return rc;
}

static int write_all(FILE *f, const void *p, size_t n)
{
    return n == 0 || fwrite(p, 1, n, f) == n ? BR_OK : BR_ERR_IO;
}

static int write_pad(FILE *f, uint64_t n)
{
    static const char zeros[64] = {0};
    while (n > 0) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (write_all(f, zeros, k) != BR_OK) {
            return BR_ERR_IO;
        }
        n -= k;
    }
    return BR_OK;
}

/* Tensor data, each padded to the alignment. */
static int write_data(br_gguf_writer *w, FILE *f)
{
    void *scratch = NULL;
    size_t scratch_cap = 0;
    int rc = BR_OK;
    for (size_t i = 0; i < w->n_tensors && rc == BR_OK; i++) {
        const struct wtensor *t = &w->tensors[i];
        const void *src = t->data;
        if (!src) {
            if (t->n_bytes > SIZE_MAX) {
                rc = BR_ERR_NOMEM;
                break;
            }
            if (scratch_cap < t->n_bytes) {
                br_free(scratch);
                scratch_cap = (size_t)t->n_bytes;
                scratch = br_malloc(scratch_cap);
                if (!scratch) {
                    rc = BR_ERR_NOMEM;
                    break;
                }
            }
            rc = w->fill(w->user, i, scratch, (size_t)t->n_bytes);
            src = scratch;
        }
        if (rc == BR_OK) {
            rc = write_all(f, src, (size_t)t->n_bytes);
        }
        if (rc == BR_OK) {
            rc = write_pad(f, align_up(t->n_bytes, w->alignment) - t->n_bytes);
        }
    }
    br_free(scratch);
    return rc;
}

int br_gguf_writer_write(br_gguf_writer *w, const char *path, char *err, size_t err_cap)
{
    struct br_buf head;
    br_buf_init(&head, MAX_META + ((size_t)1 << 30));
    struct br_buf tmp;
    br_buf_init(&tmp, 8192);
    FILE *f = NULL;
    int rc = br_buf_printf(&tmp, "%s.tmp", path);
    if (rc != BR_OK) {
        rc = br_err_fail(err, err_cap, rc, "%s: path too long", path);
        goto out;
    }
    rc = build_head(w, &head);
    if (rc != BR_OK) {
        rc =
            br_err_fail(err, err_cap, rc, "%s: cannot build the header: %s", path, br_strerror(rc));
        goto out;
    }
    f = fopen(tmp.ptr, "wb");
    if (!f) {
        int e = br_err_from_errno(errno);
        rc = br_err_fail(err, err_cap, BR_ERR_IO, "%s: cannot create: %s", tmp.ptr, br_strerror(e));
        goto out;
    }
    rc = write_all(f, head.ptr, head.len);
    if (rc == BR_OK) {
        rc = write_data(w, f);
    }
    int closed = fclose(f);
    f = NULL;
    if (rc == BR_OK && closed != 0) {
        rc = BR_ERR_IO;
    }
    if (rc == BR_OK && rename(tmp.ptr, path) != 0) {
        rc = BR_ERR_IO;
    }
    if (rc != BR_OK) {
        (void)remove(tmp.ptr);
        rc = br_err_fail(err, err_cap, rc, "%s: cannot write: %s", path, br_strerror(rc));
    }
out:
    br_buf_cleanup(&head);
    br_buf_cleanup(&tmp);
    return rc;
}
