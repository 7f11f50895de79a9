/* SPDX-License-Identifier: MIT */
/*
 * Test-only GGUF writer: builds small GGUF files byte by byte (little-endian) so the reader
 * and the llama loader can be tested on hand-made valid and malformed files. Uses malloc
 * (tests only); every function is static inline so several test files can include it.
 */
#ifndef BR_TEST_GGUF_TEST_WRITER_H
#define BR_TEST_GGUF_TEST_WRITER_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct gw {
    uint8_t *p;
    size_t len;
    size_t cap;
};

static inline void gw_bytes(struct gw *w, const void *b, size_t n)
{
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n) {
            cap *= 2;
        }
        uint8_t *p = realloc(w->p, cap);
        if (!p) {
            abort();
        }
        w->p = p;
        w->cap = cap;
    }
    if (n) {
        memcpy(w->p + w->len, b, n);
    }
    w->len += n;
}

static inline void gw_u8(struct gw *w, uint8_t v)
{
    gw_bytes(w, &v, 1);
}

static inline void gw_u32(struct gw *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    gw_bytes(w, b, 4);
}

static inline void gw_u64(struct gw *w, uint64_t v)
{
    gw_u32(w, (uint32_t)v);
    gw_u32(w, (uint32_t)(v >> 32));
}

static inline void gw_f32(struct gw *w, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    gw_u32(w, u);
}

static inline void gw_str(struct gw *w, const char *s)
{
    gw_u64(w, strlen(s));
    gw_bytes(w, s, strlen(s));
}

static inline void gw_header(struct gw *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    gw_bytes(w, "GGUF", 4);
    gw_u32(w, version);
    gw_u64(w, n_tensors);
    gw_u64(w, n_kv);
}

static inline void gw_kv_u32(struct gw *w, const char *key, uint32_t v)
{
    gw_str(w, key);
    gw_u32(w, 4);
    gw_u32(w, v);
}

static inline void gw_kv_f32(struct gw *w, const char *key, float v)
{
    gw_str(w, key);
    gw_u32(w, 6);
    gw_f32(w, v);
}

static inline void gw_kv_str(struct gw *w, const char *key, const char *v)
{
    gw_str(w, key);
    gw_u32(w, 8);
    gw_str(w, v);
}

/* n_dims dims (dims[0] innermost), ggml type, offset. */
static inline void gw_tensor(struct gw *w, const char *name, uint32_t n_dims, const uint64_t *dims,
                             uint32_t type, uint64_t offset)
{
    gw_str(w, name);
    gw_u32(w, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) {
        gw_u64(w, dims[i]);
    }
    gw_u32(w, type);
    gw_u64(w, offset);
}

static inline void gw_align(struct gw *w, size_t a)
{
    while (w->len % a) {
        gw_u8(w, 0);
    }
}

static inline void gw_zeros(struct gw *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        gw_u8(w, 0);
    }
}

static inline void gw_free(struct gw *w)
{
    free(w->p);
    w->p = NULL;
    w->len = w->cap = 0;
}

/* Writes n bytes to dir/name; returns the path in path (cap bytes). 0 on success. */
static inline int gw_write_file(const char *dir, const char *name, const void *p, size_t n,
                                char *path, size_t cap)
{
    (void)snprintf(path, cap, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        return -1;
    }
    size_t put = n ? fwrite(p, 1, n, f) : 0;
    return (fclose(f) != 0 || put != n) ? -1 : 0;
}

/* Reads a whole file into malloc'd memory; NULL on failure. */
static inline uint8_t *gw_read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    size_t cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                (void)fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            break;
        }
    }
    (void)fclose(f);
    *n = len;
    return buf;
}

#endif
