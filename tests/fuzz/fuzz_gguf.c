/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the GGUF reader and the llama loader (model file header). Input: a
 * GGUF file. Invariants: open either fails with a non-empty message or succeeds; on success
 * every key, every array element (strings, nested arrays, numbers), every tensor view lies
 * inside the input, the first row of each tensor dequantizes, and the llama loader either
 * loads or refuses with a message. Nothing survives between runs.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/quant.h"

#define MAX_ELEMS 256

static const uint8_t *lo;
static const uint8_t *hi;

static void check_inside(const void *p, size_t n)
{
    const uint8_t *b = p;
    assert(n == 0 || (b >= lo && b <= hi && n <= (size_t)(hi - b)));
    (void)b;
    (void)n;
}

/* Elements of one array; nested arrays are returned through *sub (one level is walked). */
static void walk_flat(const struct br_gguf_array *a, struct br_gguf_array *sub, int *has_sub)
{
    uint64_t n = a->len < MAX_ELEMS ? a->len : MAX_ELEMS;
    for (uint64_t i = 0; i < n; i++) {
        struct br_slice s;
        float f = 0;
        int64_t v = 0;
        if (br_gguf_array_str(a, i, &s) == BR_OK) {
            check_inside(s.ptr, s.len);
        }
        if (sub && br_gguf_array_array(a, i, sub) == BR_OK) {
            check_inside(sub->data - 12, 12); /* its header */
            *has_sub = 1;
        }
        (void)br_gguf_array_f32(a, i, &f);
        (void)br_gguf_array_i64(a, i, &v);
    }
    struct br_slice s;
    assert(br_gguf_array_str(a, a->len, &s) != BR_OK);
}

static void walk_array(const struct br_gguf_array *a)
{
    struct br_gguf_array sub;
    int has_sub = 0;
    walk_flat(a, &sub, &has_sub);
    if (has_sub) {
        walk_flat(&sub, NULL, NULL); /* the last nested element, one level down */
    }
}

static void walk_kvs(const br_gguf *g)
{
    for (size_t i = 0; i < br_gguf_kv_count(g); i++) {
        const struct br_gguf_kv *kv = br_gguf_kv_at(g, i);
        char key[96];
        size_t n = kv->key.len < sizeof(key) - 1 ? kv->key.len : sizeof(key) - 1;
        memcpy(key, kv->key.ptr, n);
        key[n] = '\0';
        check_inside(kv->key.ptr, kv->key.len);
        uint32_t u = 0;
        float f = 0;
        struct br_slice s;
        (void)br_gguf_get_u32(g, key, &u);
        (void)br_gguf_get_f32(g, key, &f);
        if (br_gguf_get_str(g, key, &s) == BR_OK) {
            check_inside(s.ptr, s.len);
        }
        if (kv->type == BR_GGUF_TYPE_ARRAY) {
            walk_array(&kv->array);
        }
    }
}

static void walk_tensors(const br_gguf *g)
{
    for (size_t i = 0; i < br_gguf_tensor_count(g); i++) {
        const struct br_gguf_tensor *t = br_gguf_tensor_at(g, i);
        check_inside(t->data, (size_t)t->n_bytes);
        struct br_tensor v;
        assert(br_gguf_tensor_view(t, &v) == BR_OK);
        size_t rb = br_tensor_row_bytes(v.type, v.cols);
        assert(rb != 0 && rb <= t->n_bytes);
        if (v.cols <= 4096) {
            float row[4096];
            assert(br_quant_dequantize_row(v.type, v.data, row, v.cols) == BR_OK);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[BR_GGUF_ERR_CAP];
    br_gguf *g = NULL;
    lo = data;
    hi = data + size;
    int rc = br_gguf_open_mem(data, size, "fuzz", &g, err, sizeof(err));
    if (rc != BR_OK) {
        assert(g == NULL && err[0] != '\0');
        return 0;
    }
    walk_kvs(g);
    walk_tensors(g);
    struct br_llama_config c;
    struct br_llama_weights w;
    rc = br_llama_model_load_gguf(g, "fuzz", &c, &w, err, sizeof(err));
    if (rc == BR_OK) {
        assert(w.n_layers == c.n_layers && w.layers != NULL);
        check_inside(w.token_embedding.data, 1);
        br_llama_weights_release(&w);
    } else {
        assert(err[0] != '\0');
    }
    br_gguf_close(g);
    return 0;
}
