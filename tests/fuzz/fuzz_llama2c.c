/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: engine/llama2c. Any bytes are fed to the in-memory checkpoint loader; a
 * rejected input must come with a message, an accepted one must have every tensor inside the
 * buffer, and when the model is small it is run for a few positions (forward pass and
 * sampler) to shake out shape mistakes on arbitrary weights.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "engine/forward.h"
#include "engine/llama2c.h"
#include "engine/sample.h"

static void check_inside(const struct br_llama2c *m, const struct br_tensor *t)
{
    const unsigned char *lo = m->base;
    const unsigned char *p = t->data;
    size_t bytes = t->rows * br_tensor_row_bytes(t->type, t->cols);
    assert(t->type == BR_TENSOR_F32);
    assert(p >= lo && (size_t)(p - lo) <= m->len && bytes <= m->len - (size_t)(p - lo));
}

static void check_layout(const struct br_llama2c *m)
{
    const struct br_llama_weights *w = &m->weights;
    assert(w->n_layers == m->config.n_layers);
    check_inside(m, &w->token_embedding);
    check_inside(m, &w->final_norm);
    check_inside(m, &w->output);
    for (int l = 0; l < w->n_layers; l++) {
        const struct br_llama_layer *x = &w->layers[l];
        const struct br_tensor *ts[] = {&x->attn_norm, &x->wq, &x->wk, &x->wv, &x->wo,
                                        &x->ffn_norm,  &x->w1, &x->w2, &x->w3};
        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
            check_inside(m, ts[i]);
        }
    }
}

static void run_small(const struct br_llama2c *m)
{
    const struct br_llama_config *c = &m->config;
    if (c->seq_len > 16 || c->vocab_size > 4096 || c->n_layers > 8) {
        return;
    }
    struct br_llama_state *s = NULL;
    float *logits = calloc((size_t)c->vocab_size, sizeof(float));
    struct br_sampler_params p = {.temperature = 0.8f, .top_k = 3, .top_p = 0.9f, .seed = 1};
    struct br_sampler sm;
    int rc_s = br_sampler_init(&sm, c->vocab_size, &p);
    if (logits && rc_s == BR_OK && br_llama_state_create(c, &m->weights, &s) == BR_OK) {
        int tok = 1 % c->vocab_size;
        for (int pos = 0; pos < c->seq_len && pos < 4; pos++) {
            assert(br_llama_forward(s, tok, pos, logits) == BR_OK);
            if (br_sampler_sample(&sm, logits, &tok) != BR_OK) {
                break; /* NaN logits from arbitrary weights */
            }
        }
    }
    br_llama_state_destroy(s);
    br_sampler_cleanup(&sm);
    free(logits);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the loader wants 4-byte aligned floats: copy into a malloc'd (16-aligned) buffer */
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
        return 0;
    }
    if (size) {
        memcpy(buf, data, size);
    }
    struct br_llama2c *m = NULL;
    char err[256] = "";
    int rc = br_llama2c_load_memory(buf, size, "fuzz.bin", &m, err, sizeof(err));
    if (rc != BR_OK) {
        assert(m == NULL);
        assert(rc == BR_ERR_PARSE || rc == BR_ERR_NOMEM);
        assert(strstr(err, "fuzz.bin") != NULL);
    } else {
        check_layout(m);
        run_small(m);
        br_llama2c_close(m);
    }
    free(buf);
    return 0;
}
