/* SPDX-License-Identifier: MIT */
/*
 * llama2.c checkpoint loader: header validation, a size plan computed with overflow checks and
 * compared with the file length, then tensor views laid over the read-only mapping.
 */
#include "engine/llama2c.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/err.h"

/* Reads a little-endian int32 from 4 bytes. */
static int32_t read_i32(const unsigned char *p)
{
    uint32_t v =
        (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    int32_t s;
    memcpy(&s, &v, sizeof(s));
    return s;
}

static int in_range(int32_t v, int32_t lo, int32_t hi)
{
    return v >= lo && v <= hi;
}

/* Validates the header fields and fills cfg; *shared is 1 when the classifier is shared. */
static int parse_header(const unsigned char *p, struct br_llama_config *cfg, int *shared,
                        const char *what[1])
{
    int32_t h[7];
    for (int i = 0; i < 7; i++) {
        h[i] = read_i32(p + (size_t)4 * (size_t)i);
    }
    *shared = h[5] > 0;
    int32_t vocab = h[5] < 0 ? (h[5] == INT32_MIN ? 0 : -h[5]) : h[5];
    if (!in_range(h[0], 2, BR_LLAMA2C_MAX_DIM) || !in_range(h[1], 1, 8 * BR_LLAMA2C_MAX_DIM)) {
        *what = "dim or hidden_dim out of range";
    } else if (!in_range(h[2], 1, BR_LLAMA2C_MAX_LAYERS)) {
        *what = "n_layers out of range";
    } else if (!in_range(h[3], 1, BR_LLAMA2C_MAX_HEADS) || !in_range(h[4], 1, h[3])) {
        *what = "n_heads or n_kv_heads out of range";
    } else if (h[0] % h[3] != 0 || (h[0] / h[3]) % 2 != 0 || h[3] % h[4] != 0) {
        *what = "dim must split into n_heads heads of even width, n_kv_heads must divide n_heads";
    } else if (!in_range(vocab, 1, BR_LLAMA2C_MAX_VOCAB) ||
               !in_range(h[6], 1, BR_LLAMA2C_MAX_SEQ)) {
        *what = "vocab_size or seq_len out of range";
    } else {
        *cfg = (struct br_llama_config){
            .dim = h[0],
            .hidden_dim = h[1],
            .n_layers = h[2],
            .n_heads = h[3],
            .n_kv_heads = h[4],
            .vocab_size = vocab,
            .seq_len = h[6],
            .rms_eps = 1e-5f,
            .rope_theta = 10000.0f,
            .rope_style = BR_ROPE_ADJACENT,
        };
        return BR_OK;
    }
    return BR_ERR_PARSE;
}

/* Running byte offset into the file while laying tensors out; overflow sets `bad`. */
struct cursor {
    const unsigned char *base;
    size_t len; /* bytes at base: no pointer is formed past them */
    size_t off;
    int bad;
};

static size_t mul3(size_t a, size_t b, size_t c, int *bad)
{
    /* header bounds keep each factor < 2^23, but the product of three may not fit 32 bits */
    if (a != 0 && b > SIZE_MAX / a) {
        *bad = 1;
        return 0;
    }
    size_t ab = a * b;
    if (ab != 0 && c > SIZE_MAX / ab) {
        *bad = 1;
        return 0;
    }
    return ab * c;
}

/* Reserves n_floats floats at the cursor and returns their start. */
static const unsigned char *take(struct cursor *c, size_t n_floats)
{
    const unsigned char *p = c->off <= c->len ? c->base + c->off : c->base;
    if (c->bad || n_floats > (SIZE_MAX - c->off) / 4) {
        c->bad = 1;
        return c->base;
    }
    c->off += n_floats * 4;
    return p;
}

static struct br_tensor tensor_at(const unsigned char *p, size_t rows, size_t cols)
{
    return (struct br_tensor){.type = BR_TENSOR_F32, .data = p, .rows = rows, .cols = cols};
}

/* Which per-layer tensor; its (rows, cols) follow from the config. */
enum slot { S_ATTN_NORM, S_WQ, S_WK, S_WV, S_WO, S_FFN_NORM, S_W1, S_W2, S_W3, S_COUNT };

static struct br_tensor *slot_of(struct br_llama_layer *l, enum slot s)
{
    struct br_tensor *t[S_COUNT] = {&l->attn_norm, &l->wq, &l->wk, &l->wv, &l->wo,
                                    &l->ffn_norm,  &l->w1, &l->w2, &l->w3};
    return t[s];
}

static void slot_shape(const struct br_llama_config *c, enum slot s, size_t *rows, size_t *cols)
{
    size_t d = (size_t)c->dim;
    size_t h = (size_t)c->hidden_dim;
    size_t kv = (size_t)c->n_kv_heads * (d / (size_t)c->n_heads);
    size_t shapes[S_COUNT][2] = {{1, d}, {d, d}, {kv, d}, {kv, d}, {d, d},
                                 {1, d}, {h, d}, {d, h},  {h, d}};
    *rows = shapes[s][0];
    *cols = shapes[s][1];
}

/* Lays out all tensors in file order; with layers == NULL only the cursor advances. */
static void lay_out(struct cursor *cur, const struct br_llama_config *c, int shared,
                    struct br_llama_weights *w)
{
    size_t d = (size_t)c->dim;
    size_t nl = (size_t)c->n_layers;
    const unsigned char *p = take(cur, mul3((size_t)c->vocab_size, d, 1, &cur->bad));
    w->token_embedding = tensor_at(p, (size_t)c->vocab_size, d);
    for (int s = 0; s < S_COUNT; s++) {
        size_t rows;
        size_t cols;
        slot_shape(c, (enum slot)s, &rows, &cols);
        size_t per_layer = mul3(rows, cols, 1, &cur->bad);
        p = take(cur, mul3(nl, rows, cols, &cur->bad));
        for (size_t l = 0; w->layers && l < nl && !cur->bad; l++) {
            *slot_of(&w->layers[l], (enum slot)s) = tensor_at(p + l * per_layer * 4, rows, cols);
        }
    }
    w->final_norm = tensor_at(take(cur, d), 1, d);
    size_t head_dim = d / (size_t)c->n_heads;
    (void)take(cur, mul3((size_t)c->seq_len, head_dim, 1, &cur->bad)); /* freq_cis real+imag */
    w->output = w->token_embedding;
    if (!shared) {
        w->output = tensor_at(take(cur, mul3((size_t)c->vocab_size, d, 1, &cur->bad)),
                              (size_t)c->vocab_size, d);
    }
    w->n_layers = c->n_layers;
}

static int parse(struct br_llama2c *m, const char *name, char *err, size_t err_cap)
{
    const unsigned char *b = m->base;
    if (m->len < BR_LLAMA2C_HEADER_BYTES) {
        br_err_printf(err, err_cap, "%s: truncated header: %zu bytes, need %d", name, m->len,
                      BR_LLAMA2C_HEADER_BYTES);
        return BR_ERR_PARSE;
    }
    int shared = 0;
    const char *what = NULL;
    if (parse_header(b, &m->config, &shared, &what) != BR_OK) {
        br_err_printf(err, err_cap, "%s: bad header (offset 0): %s", name, what);
        return BR_ERR_PARSE;
    }
    /* first pass: sizes only, nothing dereferenced */
    struct cursor cur = {.base = b, .len = m->len, .off = BR_LLAMA2C_HEADER_BYTES, .bad = 0};
    struct br_llama_weights probe = {0};
    lay_out(&cur, &m->config, shared, &probe);
    if (cur.bad || cur.off != m->len) {
        br_err_printf(err, err_cap, "%s: file is %zu bytes but its header implies %s%zu bytes (%s)",
                      name, m->len, cur.bad ? "more than " : "", cur.bad ? SIZE_MAX : cur.off,
                      cur.off > m->len || cur.bad ? "truncated" : "trailing bytes");
        return BR_ERR_PARSE;
    }
    m->weights.layers = br_calloc((size_t)m->config.n_layers, sizeof(*m->weights.layers));
    if (!m->weights.layers) {
        br_err_printf(err, err_cap, "%s: out of memory", name);
        return BR_ERR_NOMEM;
    }
    cur = (struct cursor){.base = b, .len = m->len, .off = BR_LLAMA2C_HEADER_BYTES, .bad = 0};
    lay_out(&cur, &m->config, shared, &m->weights);
    return BR_OK;
}

int br_llama2c_load_memory(const void *data, size_t len, const char *name, struct br_llama2c **out,
                           char *err, size_t err_cap)
{
    *out = NULL;
    name = name ? name : "<memory>";
    if (!data || ((uintptr_t)data % 4) != 0) {
        br_err_printf(err, err_cap, "%s: buffer is NULL or not 4-byte aligned", name);
        return BR_ERR_INVAL;
    }
    struct br_llama2c *m = br_calloc(1, sizeof(*m));
    if (!m) {
        br_err_printf(err, err_cap, "%s: out of memory", name);
        return BR_ERR_NOMEM;
    }
    m->base = data;
    m->len = len;
    int rc = parse(m, name, err, err_cap);
    if (rc != BR_OK) {
        br_llama2c_close(m);
        return rc;
    }
    *out = m;
    return BR_OK;
}

static int map_file(const char *path, void **base, size_t *len, char *err, size_t err_cap)
{
    int rc = BR_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = br_err_from_errno(errno);
        br_err_printf(err, err_cap, "%s: open: %s", path, br_strerror(rc));
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = br_err_from_errno(errno);
        br_err_printf(err, err_cap, "%s: stat: %s", path, br_strerror(rc));
        goto out;
    }
    if (st.st_size < BR_LLAMA2C_HEADER_BYTES) {
        br_err_printf(err, err_cap, "%s: truncated header: %lld bytes, need %d", path,
                      (long long)st.st_size, BR_LLAMA2C_HEADER_BYTES);
        rc = BR_ERR_PARSE;
        goto out;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        rc = br_err_from_errno(errno);
        br_err_printf(err, err_cap, "%s: mmap: %s", path, br_strerror(rc));
        goto out;
    }
    *base = p;
    *len = (size_t)st.st_size;
out:
    close(fd);
    return rc;
}

int br_llama2c_open(const char *path, struct br_llama2c **out, char *err, size_t err_cap)
{
    *out = NULL;
    void *base = NULL;
    size_t len = 0;
    int rc = map_file(path, &base, &len, err, err_cap);
    if (rc != BR_OK) {
        return rc;
    }
    struct br_llama2c *m = NULL;
    rc = br_llama2c_load_memory(base, len, path, &m, err, err_cap);
    if (rc != BR_OK) {
        munmap(base, len);
        return rc;
    }
    m->map = base;
    *out = m;
    return BR_OK;
}

void br_llama2c_close(struct br_llama2c *m)
{
    if (!m) {
        return;
    }
    if (m->map) {
        munmap(m->map, m->len);
    }
    br_free(m->weights.layers);
    br_free(m);
}
