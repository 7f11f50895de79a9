/* SPDX-License-Identifier: MIT */
/*
 * GGUF reader: a bounds-checked cursor walks the header, the metadata pairs (with an explicit
 * stack for nested arrays, no recursion) and the tensor infos; then the tensor data ranges are
 * checked for alignment, overflow, end of file and overlap. Written from the GGUF specification
 * (ggml docs/gguf.md); all multi-byte reads go through memcpy so the input may be unaligned.
 */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/err.h"

#define MIN_KV_BYTES     14u /* u64 key len, 1 key byte, u32 type, 1 value byte */
#define MIN_TENSOR_BYTES 33u /* u64 name len, 1 name byte, u32 n_dims, 1 dim, u32 type, u64 off */
#define MIN_STR_BYTES    8u
#define MIN_ARR_BYTES    12u

/* Wrappers so that sorted pointer tables have a struct element type. */
struct kv_ref {
    const struct br_gguf_kv *kv;
};

struct tensor_ref {
    const struct br_gguf_tensor *t;
};

struct br_gguf {
    const uint8_t *base;
    size_t size;
    int mapped;
    uint32_t version;
    uint32_t alignment;
    size_t data_start;
    struct br_gguf_kv *kvs;
    size_t n_kv;
    struct br_gguf_tensor *tensors;
    size_t n_tensors;
    struct kv_ref *kv_sorted;         /* by key */
    struct tensor_ref *tensor_sorted; /* by name */
};

/* Parse cursor. */
struct rd {
    const uint8_t *p;
    size_t size;
    size_t pos;
    const char *name;
    char *err;
    size_t err_cap;
};

__attribute__((format(printf, 4, 5))) static int fail(const struct rd *r, int rc, size_t at,
                                                      const char *fmt, ...)
{
    if (!r->err || r->err_cap == 0) {
        return rc;
    }
    char what[192];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    (void)snprintf(r->err, r->err_cap, "%s: %s (at byte %zu)", r->name, what, at);
    return rc;
}

static size_t left(const struct rd *r)
{
    return r->size - r->pos;
}

static uint32_t load_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t load_u64(const uint8_t *p)
{
    return (uint64_t)load_u32(p) | ((uint64_t)load_u32(p + 4) << 32);
}

static int rd_u32(struct rd *r, const char *what, uint32_t *out)
{
    if (left(r) < 4) {
        return fail(r, BR_ERR_PARSE, r->pos, "truncated: %s needs 4 bytes, %zu left", what,
                    left(r));
    }
    *out = load_u32(r->p + r->pos);
    r->pos += 4;
    return BR_OK;
}

static int rd_u64(struct rd *r, const char *what, uint64_t *out)
{
    if (left(r) < 8) {
        return fail(r, BR_ERR_PARSE, r->pos, "truncated: %s needs 8 bytes, %zu left", what,
                    left(r));
    }
    *out = load_u64(r->p + r->pos);
    r->pos += 8;
    return BR_OK;
}

static int rd_skip(struct rd *r, uint64_t n, const char *what)
{
    if (n > left(r)) {
        return fail(r, BR_ERR_PARSE, r->pos, "%s of %llu bytes runs past the end (%zu left)", what,
                    (unsigned long long)n, left(r));
    }
    r->pos += (size_t)n;
    return BR_OK;
}

static int rd_str(struct rd *r, const char *what, struct br_slice *out)
{
    size_t at = r->pos;
    uint64_t len = 0;
    int rc = rd_u64(r, what, &len);
    if (rc != BR_OK) {
        return rc;
    }
    if (len > left(r)) {
        return fail(r, BR_ERR_PARSE, at, "%s length %llu runs past the end (%zu bytes left)", what,
                    (unsigned long long)len, left(r));
    }
    if (out) {
        *out = br_slice_make((const char *)r->p + r->pos, (size_t)len);
    }
    r->pos += (size_t)len;
    return BR_OK;
}

/* Size of a fixed-size value type; 0 for string/array; -1 for an unknown type. */
static int type_size(uint32_t type)
{
    static const signed char sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type >= sizeof(sizes)) {
        return -1;
    }
    return sizes[type];
}

/* Reads an array header (element type, length) and checks the length against what is left. */
static int rd_array_head(struct rd *r, uint32_t *etype, uint64_t *len)
{
    size_t at = r->pos;
    int rc = rd_u32(r, "array element type", etype);
    if (rc == BR_OK) {
        rc = rd_u64(r, "array length", len);
    }
    if (rc != BR_OK) {
        return rc;
    }
    int sz = type_size(*etype);
    if (sz < 0) {
        return fail(r, BR_ERR_PARSE, at, "unknown array element type %u", *etype);
    }
    uint64_t min =
        sz > 0 ? (uint64_t)sz : (*etype == BR_GGUF_TYPE_STRING ? MIN_STR_BYTES : MIN_ARR_BYTES);
    if (*len > left(r) / min) {
        return fail(r, BR_ERR_PARSE, at, "array length %llu cannot fit in the %zu bytes left",
                    (unsigned long long)*len, left(r));
    }
    return BR_OK;
}

struct frame {
    uint32_t etype;
    uint64_t remaining;
};

/* Skips one array whose header is at the cursor, nested arrays included (explicit stack). */
static int skip_array(struct rd *r)
{
    struct frame st[BR_GGUF_MAX_ARRAY_NEST];
    int depth = 0;
    int rc = BR_OK;
    int need_head = 1;
    while (rc == BR_OK && (need_head || depth > 0)) {
        if (need_head) {
            size_t at = r->pos;
            uint32_t et = 0;
            uint64_t n = 0;
            need_head = 0;
            if (depth == BR_GGUF_MAX_ARRAY_NEST) {
                return fail(r, BR_ERR_PARSE, at, "arrays nested deeper than %d",
                            BR_GGUF_MAX_ARRAY_NEST);
            }
            rc = rd_array_head(r, &et, &n);
            if (rc == BR_OK && type_size(et) > 0) {
                rc = rd_skip(r, n * (uint64_t)type_size(et), "array data");
            } else if (rc == BR_OK) {
                st[depth++] = (struct frame){et, n};
            }
            continue;
        }
        struct frame *top = &st[depth - 1];
        if (top->remaining == 0) {
            depth--;
            continue;
        }
        top->remaining--;
        if (top->etype == BR_GGUF_TYPE_STRING) {
            rc = rd_str(r, "array string", NULL);
        } else {
            need_head = 1;
        }
    }
    return rc;
}

/* Top-level array: records the element offsets of variable-size elements. */
static int read_top_array(struct rd *r, struct br_gguf_array *a)
{
    uint32_t et = 0;
    uint64_t n = 0;
    int rc = rd_array_head(r, &et, &n);
    if (rc != BR_OK) {
        return rc;
    }
    a->type = (enum br_gguf_type)et;
    a->len = n;
    a->data = r->p + r->pos;
    a->index = NULL;
    int sz = type_size(et);
    if (sz > 0) {
        return rd_skip(r, n * (uint64_t)sz, "array data");
    }
    uint64_t *index = br_calloc(n ? (size_t)n : 1, sizeof(*index));
    if (!index) {
        return fail(r, BR_ERR_NOMEM, r->pos, "out of memory for an array of %llu elements",
                    (unsigned long long)n);
    }
    a->index = index;
    size_t start = r->pos;
    for (uint64_t i = 0; i < n && rc == BR_OK; i++) {
        index[i] = r->pos - start;
        rc = et == BR_GGUF_TYPE_STRING ? rd_str(r, "array string", NULL) : skip_array(r);
    }
    return rc;
}

static int read_kv(struct rd *r, struct br_gguf_kv *kv)
{
    size_t at = r->pos;
    uint32_t type = 0;
    int rc = rd_str(r, "metadata key", &kv->key);
    if (rc == BR_OK) {
        rc = rd_u32(r, "metadata value type", &type);
    }
    if (rc != BR_OK) {
        return rc;
    }
    if (kv->key.len == 0) {
        return fail(r, BR_ERR_PARSE, at, "empty metadata key");
    }
    int sz = type_size(type);
    if (sz < 0) {
        return fail(r, BR_ERR_PARSE, at, "key '%.*s': unknown value type %u",
                    (int)(kv->key.len > 64 ? 64 : kv->key.len), kv->key.ptr, type);
    }
    kv->type = (enum br_gguf_type)type;
    kv->value = r->p + r->pos;
    if (sz > 0) {
        return rd_skip(r, (uint64_t)sz, "metadata value");
    }
    if (type == BR_GGUF_TYPE_STRING) {
        return rd_str(r, "metadata string", NULL);
    }
    return read_top_array(r, &kv->array);
}

static int cmp_kv(const void *a, const void *b)
{
    const struct br_gguf_kv *x = ((const struct kv_ref *)a)->kv;
    const struct br_gguf_kv *y = ((const struct kv_ref *)b)->kv;
    size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = memcmp(x->key.ptr, y->key.ptr, n);
    if (c != 0) {
        return c;
    }
    return (x->key.len > y->key.len) - (x->key.len < y->key.len);
}

static int cmp_tensor_name(const void *a, const void *b)
{
    const struct br_gguf_tensor *x = ((const struct tensor_ref *)a)->t;
    const struct br_gguf_tensor *y = ((const struct tensor_ref *)b)->t;
    size_t n = x->name.len < y->name.len ? x->name.len : y->name.len;
    int c = memcmp(x->name.ptr, y->name.ptr, n);
    if (c != 0) {
        return c;
    }
    return (x->name.len > y->name.len) - (x->name.len < y->name.len);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const struct br_gguf_tensor *x = ((const struct tensor_ref *)a)->t;
    const struct br_gguf_tensor *y = ((const struct tensor_ref *)b)->t;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

static int read_header(struct rd *r, br_gguf *g, uint64_t *n_tensors, uint64_t *n_kv)
{
    if (r->size < 4 || memcmp(r->p, "GGUF", 4) != 0) {
        return fail(r, BR_ERR_PARSE, 0, "bad magic (not a GGUF file)");
    }
    r->pos = 4;
    int rc = rd_u32(r, "version", &g->version);
    if (rc != BR_OK) {
        return rc;
    }
    if (g->version != 2 && g->version != 3) {
        return fail(r, BR_ERR_UNSUPPORTED, 4, "GGUF version %u not supported (only 2 and 3)",
                    g->version);
    }
    rc = rd_u64(r, "tensor count", n_tensors);
    if (rc == BR_OK) {
        rc = rd_u64(r, "metadata count", n_kv);
    }
    if (rc != BR_OK) {
        return rc;
    }
    if (*n_kv > left(r) / MIN_KV_BYTES) {
        return fail(r, BR_ERR_PARSE, 16, "absurd metadata count %llu for %zu bytes left",
                    (unsigned long long)*n_kv, left(r));
    }
    if (*n_tensors > left(r) / MIN_TENSOR_BYTES) {
        return fail(r, BR_ERR_PARSE, 8, "absurd tensor count %llu for %zu bytes left",
                    (unsigned long long)*n_tensors, left(r));
    }
    return BR_OK;
}

static int read_kvs(struct rd *r, br_gguf *g)
{
    int rc = BR_OK;
    for (size_t i = 0; i < g->n_kv && rc == BR_OK; i++) {
        rc = read_kv(r, &g->kvs[i]);
    }
    if (rc != BR_OK) {
        return rc;
    }
    for (size_t i = 0; i < g->n_kv; i++) {
        g->kv_sorted[i].kv = &g->kvs[i];
    }
    if (g->n_kv > 1) {
        qsort(g->kv_sorted, g->n_kv, sizeof(*g->kv_sorted), cmp_kv);
    }
    for (size_t i = 1; i < g->n_kv; i++) {
        if (cmp_kv(&g->kv_sorted[i - 1], &g->kv_sorted[i]) == 0) {
            const struct br_slice k = g->kv_sorted[i].kv->key;
            return fail(r, BR_ERR_PARSE, (size_t)((const uint8_t *)k.ptr - r->p),
                        "duplicate metadata key '%.*s'", (int)(k.len > 64 ? 64 : k.len), k.ptr);
        }
    }
    return BR_OK;
}

static int read_alignment(struct rd *r, br_gguf *g)
{
    g->alignment = BR_GGUF_DEFAULT_ALIGN;
    const struct br_gguf_kv *kv = br_gguf_find(g, "general.alignment");
    if (!kv) {
        return BR_OK;
    }
    size_t at = (size_t)(kv->value - r->p);
    if (kv->type != BR_GGUF_TYPE_UINT32) {
        return fail(r, BR_ERR_PARSE, at, "general.alignment has type %u, not uint32", kv->type);
    }
    uint32_t a = load_u32(kv->value);
    if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20)) {
        return fail(r, BR_ERR_PARSE, at, "general.alignment %u is not a power of two <= 1 MiB", a);
    }
    g->alignment = a;
    return BR_OK;
}

static enum br_tensor_type br_type_of(uint32_t ggml_type, int *ok)
{
    *ok = 1;
    switch (ggml_type) {
    case BR_GGUF_GGML_F32:
        return BR_TENSOR_F32;
    case BR_GGUF_GGML_F16:
        return BR_TENSOR_F16;
    case BR_GGUF_GGML_Q4_0:
        return BR_TENSOR_Q4_0;
    case BR_GGUF_GGML_Q5_0:
        return BR_TENSOR_Q5_0;
    case BR_GGUF_GGML_Q8_0:
        return BR_TENSOR_Q8_0;
    case BR_GGUF_GGML_Q4_K:
        return BR_TENSOR_Q4_K;
    case BR_GGUF_GGML_Q6_K:
        return BR_TENSOR_Q6_K;
    default:
        *ok = 0;
        return BR_TENSOR_F32;
    }
}

const char *br_gguf_ggml_type_name(uint32_t ggml_type)
{
    int ok = 0;
    enum br_tensor_type t = br_type_of(ggml_type, &ok);
    return ok ? br_tensor_type_name(t) : "unknown";
}

#define NAME_ARGS(t) (int)((t)->name.len > 64 ? 64 : (t)->name.len), (t)->name.ptr

/* Element count and byte size of a tensor from its dims and type. */
static int tensor_size(const struct rd *r, size_t at, struct br_gguf_tensor *t)
{
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (t->dims[d] == 0 || t->dims[d] > (UINT64_C(1) << 62) / n) {
            return fail(r, BR_ERR_PARSE, at, "tensor '%.*s': impossible dimension %u = %llu",
                        NAME_ARGS(t), d, (unsigned long long)t->dims[d]);
        }
        n *= t->dims[d];
    }
    int ok = 0;
    enum br_tensor_type bt = br_type_of(t->ggml_type, &ok);
    if (!ok) {
        return fail(r, BR_ERR_UNSUPPORTED, at, "tensor '%.*s': ggml type %u not supported",
                    NAME_ARGS(t), t->ggml_type);
    }
    size_t be = br_tensor_block_elems(bt);
    if (t->dims[0] % be != 0) {
        return fail(r, BR_ERR_PARSE, at,
                    "tensor '%.*s': row of %llu elements is not a whole number of %s blocks",
                    NAME_ARGS(t), (unsigned long long)t->dims[0], br_tensor_type_name(bt));
    }
    size_t bb = br_tensor_block_bytes(bt);
    if (n / be > UINT64_MAX / bb) {
        return fail(r, BR_ERR_PARSE, at, "tensor '%.*s': byte size overflows", NAME_ARGS(t));
    }
    t->n_bytes = n / be * bb;
    return BR_OK;
}

static int read_tensor_info(struct rd *r, const br_gguf *g, struct br_gguf_tensor *t)
{
    size_t at = r->pos;
    int rc = rd_str(r, "tensor name", &t->name);
    if (rc == BR_OK) {
        rc = rd_u32(r, "tensor n_dims", &t->n_dims);
    }
    if (rc != BR_OK) {
        return rc;
    }
    if (t->name.len == 0) {
        return fail(r, BR_ERR_PARSE, at, "empty tensor name");
    }
    if (t->n_dims == 0 || t->n_dims > BR_GGUF_MAX_DIMS) {
        return fail(r, BR_ERR_PARSE, at, "tensor '%.*s': n_dims %u not in 1..%d", NAME_ARGS(t),
                    t->n_dims, BR_GGUF_MAX_DIMS);
    }
    for (uint32_t d = 0; d < BR_GGUF_MAX_DIMS; d++) {
        t->dims[d] = 1;
    }
    for (uint32_t d = 0; d < t->n_dims && rc == BR_OK; d++) {
        rc = rd_u64(r, "tensor dimension", &t->dims[d]);
    }
    if (rc == BR_OK) {
        rc = rd_u32(r, "tensor type", &t->ggml_type);
    }
    if (rc == BR_OK) {
        rc = rd_u64(r, "tensor offset", &t->offset);
    }
    if (rc == BR_OK) {
        rc = tensor_size(r, at, t);
    }
    if (rc == BR_OK && t->offset % g->alignment != 0) {
        return fail(r, BR_ERR_PARSE, at, "tensor '%.*s': offset %llu not aligned to %u",
                    NAME_ARGS(t), (unsigned long long)t->offset, g->alignment);
    }
    return rc;
}

/* Data ranges: inside the file, no two overlapping. Uses tensor_sorted as scratch. */
static int check_ranges(struct rd *r, br_gguf *g, const size_t *info_at)
{
    size_t avail = r->size - g->data_start;
    for (size_t i = 0; i < g->n_tensors; i++) {
        struct br_gguf_tensor *t = &g->tensors[i];
        if (t->offset > avail || t->n_bytes > avail - t->offset) {
            return fail(r, BR_ERR_PARSE, info_at[i],
                        "tensor '%.*s': data [%llu, +%llu) past the end of the file (%zu data "
                        "bytes from byte %zu)",
                        NAME_ARGS(t), (unsigned long long)t->offset, (unsigned long long)t->n_bytes,
                        avail, g->data_start);
        }
        t->data = r->p + g->data_start + t->offset;
        g->tensor_sorted[i].t = t;
    }
    if (g->n_tensors > 1) {
        qsort(g->tensor_sorted, g->n_tensors, sizeof(*g->tensor_sorted), cmp_tensor_offset);
    }
    for (size_t i = 1; i < g->n_tensors; i++) {
        const struct br_gguf_tensor *a = g->tensor_sorted[i - 1].t;
        const struct br_gguf_tensor *b = g->tensor_sorted[i].t;
        if (b->offset < a->offset + a->n_bytes) {
            return fail(r, BR_ERR_PARSE, info_at[b - g->tensors],
                        "tensor '%.*s' overlaps tensor '%.*s'", NAME_ARGS(b), NAME_ARGS(a));
        }
    }
    return BR_OK;
}

static int check_names(struct rd *r, br_gguf *g, const size_t *info_at)
{
    for (size_t i = 0; i < g->n_tensors; i++) {
        g->tensor_sorted[i].t = &g->tensors[i];
    }
    if (g->n_tensors > 1) {
        qsort(g->tensor_sorted, g->n_tensors, sizeof(*g->tensor_sorted), cmp_tensor_name);
    }
    for (size_t i = 1; i < g->n_tensors; i++) {
        if (cmp_tensor_name(&g->tensor_sorted[i - 1], &g->tensor_sorted[i]) == 0) {
            const struct br_gguf_tensor *t = g->tensor_sorted[i].t;
            return fail(r, BR_ERR_PARSE, info_at[t - g->tensors], "duplicate tensor name '%.*s'",
                        NAME_ARGS(t));
        }
    }
    return BR_OK;
}

static int read_tensors(struct rd *r, br_gguf *g)
{
    size_t *info_at = br_calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*info_at));
    if (!info_at) {
        return fail(r, BR_ERR_NOMEM, r->pos, "out of memory");
    }
    int rc = BR_OK;
    for (size_t i = 0; i < g->n_tensors && rc == BR_OK; i++) {
        info_at[i] = r->pos;
        rc = read_tensor_info(r, g, &g->tensors[i]);
    }
    if (rc != BR_OK) {
        goto out;
    }
    g->data_start = r->pos + (g->alignment - r->pos % g->alignment) % g->alignment;
    if (g->data_start > r->size) {
        if (g->n_tensors > 0) {
            rc = fail(r, BR_ERR_PARSE, r->pos, "data section starts at %zu, past the end (%zu)",
                      g->data_start, r->size);
            goto out;
        }
        g->data_start = r->size;
    }
    rc = check_ranges(r, g, info_at);
    if (rc == BR_OK) {
        rc = check_names(r, g, info_at);
    }
out:
    br_free(info_at);
    return rc;
}

static int alloc_tables(struct rd *r, br_gguf *g)
{
    size_t nk = g->n_kv ? g->n_kv : 1;
    size_t nt = g->n_tensors ? g->n_tensors : 1;
    g->kvs = br_calloc(nk, sizeof(*g->kvs));
    g->kv_sorted = br_calloc(nk, sizeof(*g->kv_sorted));
    g->tensors = br_calloc(nt, sizeof(*g->tensors));
    g->tensor_sorted = br_calloc(nt, sizeof(*g->tensor_sorted));
    if (!g->kvs || !g->kv_sorted || !g->tensors || !g->tensor_sorted) {
        return fail(r, BR_ERR_NOMEM, r->pos, "out of memory");
    }
    return BR_OK;
}

static int parse(struct rd *r, br_gguf *g)
{
    uint64_t nt = 0;
    uint64_t nk = 0;
    int rc = read_header(r, g, &nt, &nk);
    if (rc != BR_OK) {
        return rc;
    }
    g->n_kv = (size_t)nk;
    g->n_tensors = (size_t)nt;
    rc = alloc_tables(r, g);
    if (rc == BR_OK) {
        rc = read_kvs(r, g);
    }
    if (rc == BR_OK) {
        rc = read_alignment(r, g);
    }
    if (rc == BR_OK) {
        rc = read_tensors(r, g);
    }
    return rc;
}

static int open_common(const uint8_t *p, size_t size, int mapped, const char *name, br_gguf **out,
                       char *err, size_t err_cap)
{
    struct rd r = {p, size, 0, name ? name : "<memory>", err, err_cap};
    *out = NULL;
    if (err && err_cap) {
        err[0] = '\0';
    }
    br_gguf *g = br_calloc(1, sizeof(*g));
    if (!g) {
        return fail(&r, BR_ERR_NOMEM, 0, "out of memory");
    }
    g->base = p;
    g->size = size;
    g->mapped = mapped;
    int rc = parse(&r, g);
    if (rc != BR_OK) {
        g->mapped = 0; /* the caller unmaps on failure */
        br_gguf_close(g);
        return rc;
    }
    *out = g;
    return BR_OK;
}

int br_gguf_open_mem(const void *data, size_t size, const char *name, br_gguf **out, char *err,
                     size_t err_cap)
{
    return open_common(data, size, 0, name, out, err, err_cap);
}

int br_gguf_open(const char *path, br_gguf **out, char *err, size_t err_cap)
{
    struct rd r = {NULL, 0, 0, path, err, err_cap};
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = br_err_from_errno(errno);
        return fail(&r, e, 0, "cannot open: %s", br_strerror(e));
    }
    struct stat st;
    int rc = BR_OK;
    if (fstat(fd, &st) != 0) {
        rc = br_err_from_errno(errno);
        rc = fail(&r, rc, 0, "cannot stat: %s", br_strerror(rc));
        goto out_close;
    }
    if (st.st_size <= 0) {
        rc = fail(&r, BR_ERR_PARSE, 0, "empty file (not a GGUF file)");
        goto out_close;
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = br_err_from_errno(errno);
        rc = fail(&r, rc, 0, "cannot mmap: %s", br_strerror(rc));
        goto out_close;
    }
    rc = open_common(map, size, 1, path, out, err, err_cap);
    if (rc != BR_OK) {
        (void)munmap(map, size);
    }
out_close:
    (void)close(fd);
    return rc;
}

void br_gguf_close(br_gguf *g)
{
    if (!g) {
        return;
    }
    for (size_t i = 0; g->kvs && i < g->n_kv; i++) {
        br_free((void *)g->kvs[i].array.index);
    }
    br_free(g->kvs);
    br_free(g->kv_sorted);
    br_free(g->tensors);
    br_free(g->tensor_sorted);
    if (g->mapped) {
        (void)munmap((void *)g->base, g->size);
    }
    br_free(g);
}

uint32_t br_gguf_version(const br_gguf *g)
{
    return g->version;
}

uint32_t br_gguf_alignment(const br_gguf *g)
{
    return g->alignment;
}

size_t br_gguf_kv_count(const br_gguf *g)
{
    return g->n_kv;
}

size_t br_gguf_tensor_count(const br_gguf *g)
{
    return g->n_tensors;
}

const struct br_gguf_kv *br_gguf_kv_at(const br_gguf *g, size_t i)
{
    return i < g->n_kv ? &g->kvs[i] : NULL;
}

const struct br_gguf_tensor *br_gguf_tensor_at(const br_gguf *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct br_gguf_kv *br_gguf_find(const br_gguf *g, const char *key)
{
    struct br_gguf_kv probe = {.key = br_slice_from_cstr(key)};
    struct kv_ref pp = {&probe};
    const struct kv_ref *hit =
        g->n_kv ? bsearch(&pp, g->kv_sorted, g->n_kv, sizeof(*g->kv_sorted), cmp_kv) : NULL;
    return hit ? hit->kv : NULL;
}

const struct br_gguf_tensor *br_gguf_find_tensor(const br_gguf *g, const char *name)
{
    struct br_gguf_tensor probe = {.name = br_slice_from_cstr(name)};
    struct tensor_ref pp = {&probe};
    const struct tensor_ref *hit = g->n_tensors
                                       ? bsearch(&pp, g->tensor_sorted, g->n_tensors,
                                                 sizeof(*g->tensor_sorted), cmp_tensor_name)
                                       : NULL;
    return hit ? hit->t : NULL;
}

/* An integer value as sign + magnitude; BR_ERR_PARSE when `type` is not an integer type. */
static int int_value(uint32_t type, const uint8_t *p, int *neg, uint64_t *mag)
{
    int64_t s = 0;
    *neg = 0;
    switch (type) {
    case BR_GGUF_TYPE_UINT8:
        *mag = p[0];
        return BR_OK;
    case BR_GGUF_TYPE_UINT16:
        *mag = (uint64_t)p[0] | ((uint64_t)p[1] << 8);
        return BR_OK;
    case BR_GGUF_TYPE_UINT32:
        *mag = load_u32(p);
        return BR_OK;
    case BR_GGUF_TYPE_UINT64:
        *mag = load_u64(p);
        return BR_OK;
    case BR_GGUF_TYPE_INT8:
        s = (int64_t)p[0] - ((p[0] & 0x80u) ? 256 : 0);
        break;
    case BR_GGUF_TYPE_INT16:
        s = (int16_t)(uint16_t)((unsigned)p[0] | ((unsigned)p[1] << 8));
        break;
    case BR_GGUF_TYPE_INT32:
        s = (int32_t)load_u32(p);
        break;
    case BR_GGUF_TYPE_INT64:
        s = (int64_t)load_u64(p);
        break;
    default:
        return BR_ERR_PARSE;
    }
    *neg = s < 0;
    *mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    return BR_OK;
}

int br_gguf_get_u64(const br_gguf *g, const char *key, uint64_t *out)
{
    const struct br_gguf_kv *kv = br_gguf_find(g, key);
    if (!kv) {
        return BR_ERR_NOTFOUND;
    }
    int neg = 0;
    uint64_t mag = 0;
    int rc = int_value(kv->type, kv->value, &neg, &mag);
    if (rc != BR_OK) {
        return rc;
    }
    if (neg) {
        return BR_ERR_RANGE;
    }
    *out = mag;
    return BR_OK;
}

int br_gguf_get_u32(const br_gguf *g, const char *key, uint32_t *out)
{
    uint64_t v = 0;
    int rc = br_gguf_get_u64(g, key, &v);
    if (rc != BR_OK) {
        return rc;
    }
    if (v > UINT32_MAX) {
        return BR_ERR_RANGE;
    }
    *out = (uint32_t)v;
    return BR_OK;
}

static float load_f32(const uint8_t *p)
{
    uint32_t u = load_u32(p);
    float f = 0;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static double load_f64(const uint8_t *p)
{
    uint64_t u = load_u64(p);
    double f = 0;
    memcpy(&f, &u, sizeof(f));
    return f;
}

int br_gguf_get_f32(const br_gguf *g, const char *key, float *out)
{
    const struct br_gguf_kv *kv = br_gguf_find(g, key);
    if (!kv) {
        return BR_ERR_NOTFOUND;
    }
    if (kv->type == BR_GGUF_TYPE_FLOAT32) {
        *out = load_f32(kv->value);
        return BR_OK;
    }
    if (kv->type == BR_GGUF_TYPE_FLOAT64) {
        *out = (float)load_f64(kv->value);
        return BR_OK;
    }
    return BR_ERR_PARSE;
}

int br_gguf_get_bool(const br_gguf *g, const char *key, int *out)
{
    const struct br_gguf_kv *kv = br_gguf_find(g, key);
    if (!kv) {
        return BR_ERR_NOTFOUND;
    }
    if (kv->type != BR_GGUF_TYPE_BOOL) {
        return BR_ERR_PARSE;
    }
    *out = kv->value[0] != 0;
    return BR_OK;
}

/* A string at p whose length prefix has already been validated by the parser. */
static struct br_slice load_str(const uint8_t *p)
{
    return br_slice_make((const char *)p + 8, (size_t)load_u64(p));
}

int br_gguf_get_str(const br_gguf *g, const char *key, struct br_slice *out)
{
    const struct br_gguf_kv *kv = br_gguf_find(g, key);
    if (!kv) {
        return BR_ERR_NOTFOUND;
    }
    if (kv->type != BR_GGUF_TYPE_STRING) {
        return BR_ERR_PARSE;
    }
    *out = load_str(kv->value);
    return BR_OK;
}

int br_gguf_get_array(const br_gguf *g, const char *key, struct br_gguf_array *out)
{
    const struct br_gguf_kv *kv = br_gguf_find(g, key);
    if (!kv) {
        return BR_ERR_NOTFOUND;
    }
    if (kv->type != BR_GGUF_TYPE_ARRAY) {
        return BR_ERR_PARSE;
    }
    *out = kv->array;
    return BR_OK;
}

/* Byte size of a validated nested array whose header is at p (walks it; no recursion). */
static size_t nested_array_size(const uint8_t *p)
{
    /* The parser validated these bytes, so an unbounded cursor is safe here. */
    struct rd r = {p, SIZE_MAX, 0, "", NULL, 0};
    (void)skip_array(&r);
    return r.pos;
}

/* Byte offset of element i of a validated array of variable-size elements. */
static size_t element_offset(const struct br_gguf_array *a, uint64_t i)
{
    if (a->index) {
        return (size_t)a->index[i];
    }
    size_t off = 0;
    for (uint64_t k = 0; k < i; k++) {
        const uint8_t *e = a->data + off;
        off += a->type == BR_GGUF_TYPE_STRING ? 8 + (size_t)load_u64(e) : nested_array_size(e);
    }
    return off;
}

int br_gguf_array_str(const struct br_gguf_array *a, uint64_t i, struct br_slice *out)
{
    if (a->type != BR_GGUF_TYPE_STRING) {
        return BR_ERR_PARSE;
    }
    if (i >= a->len) {
        return BR_ERR_RANGE;
    }
    *out = load_str(a->data + element_offset(a, i));
    return BR_OK;
}

int br_gguf_array_array(const struct br_gguf_array *a, uint64_t i, struct br_gguf_array *out)
{
    if (a->type != BR_GGUF_TYPE_ARRAY) {
        return BR_ERR_PARSE;
    }
    if (i >= a->len) {
        return BR_ERR_RANGE;
    }
    const uint8_t *e = a->data + element_offset(a, i);
    out->type = (enum br_gguf_type)load_u32(e);
    out->len = load_u64(e + 4);
    out->data = e + 12;
    out->index = NULL;
    return BR_OK;
}

int br_gguf_array_i64(const struct br_gguf_array *a, uint64_t i, int64_t *out)
{
    if (i >= a->len) {
        return BR_ERR_RANGE;
    }
    int sz = type_size(a->type);
    int neg = 0;
    uint64_t mag = 0;
    int rc = sz > 0 ? int_value(a->type, a->data + i * (uint64_t)sz, &neg, &mag) : BR_ERR_PARSE;
    if (rc != BR_OK) {
        return rc;
    }
    if (!neg && mag > INT64_MAX) {
        return BR_ERR_RANGE;
    }
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return BR_OK;
}

int br_gguf_array_f32(const struct br_gguf_array *a, uint64_t i, float *out)
{
    if (i >= a->len) {
        return BR_ERR_RANGE;
    }
    int sz = type_size(a->type);
    if (sz <= 0) {
        return BR_ERR_PARSE;
    }
    const uint8_t *e = a->data + i * (uint64_t)sz;
    if (a->type == BR_GGUF_TYPE_FLOAT32) {
        *out = load_f32(e);
        return BR_OK;
    }
    if (a->type == BR_GGUF_TYPE_FLOAT64) {
        *out = (float)load_f64(e);
        return BR_OK;
    }
    if (a->type == BR_GGUF_TYPE_BOOL) {
        *out = e[0] ? 1.0f : 0.0f;
        return BR_OK;
    }
    int neg = 0;
    uint64_t mag = 0;
    int rc = int_value(a->type, e, &neg, &mag);
    if (rc == BR_OK) {
        *out = neg ? -(float)mag : (float)mag;
    }
    return rc;
}

int br_gguf_tensor_view(const struct br_gguf_tensor *t, struct br_tensor *out)
{
    int ok = 0;
    enum br_tensor_type bt = br_type_of(t->ggml_type, &ok);
    if (!ok) {
        return BR_ERR_UNSUPPORTED;
    }
    out->type = bt;
    out->data = t->data;
    out->cols = (size_t)t->dims[0];
    out->rows = (size_t)(t->dims[1] * t->dims[2] * t->dims[3]);
    return BR_OK;
}
