/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the LoRA adapter loader (lora.h). Input: a GGUF file, validated as an
 * adapter against the stories260K shape (dim 64, hidden 172, 5 layers, 8 heads, 4 kv heads).
 * Invariants: open either fails with a non-empty message or succeeds; on success every pair's
 * A and B views lie inside the input with the shapes the base requires (A rank x in, B out x
 * rank, one rank), and a merged row of every pair can be computed. Nothing survives between
 * runs.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "engine/lora.h"

static const struct br_llama_config base = {.dim = 64,
                                            .hidden_dim = 172,
                                            .n_layers = 5,
                                            .n_heads = 8,
                                            .n_kv_heads = 4,
                                            .vocab_size = 512,
                                            .seq_len = 512,
                                            .rms_eps = 1e-5f,
                                            .rope_theta = 10000.0f};

static void check_inside(const uint8_t *lo, const uint8_t *hi, const struct br_tensor *t)
{
    const uint8_t *b = t->data;
    size_t n = br_tensor_row_bytes(t->type, t->cols) * t->rows;
    assert(b >= lo && b <= hi && n <= (size_t)(hi - b));
    (void)b;
    (void)n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    br_lora *l = NULL;
    char err[BR_LORA_ERR_CAP] = "";
    int rc = br_lora_open_mem(data, size, "fuzz", &base, &l, err, sizeof err);
    if (rc != BR_OK) {
        assert(l == NULL && err[0] != '\0');
        return 0;
    }
    int rank = br_lora_rank(l);
    assert(rank > 0 && rank <= BR_LORA_MAX_RANK && br_lora_n_pairs(l) > 0);
    static float row[256];
    static float tmp[BR_LORA_MAX_RANK + 256];
    for (int layer = 0; layer < base.n_layers; layer++) {
        for (int t = 0; t < BR_LORA_N_TARGETS; t++) {
            const struct br_lora_pair *p = br_lora_pair(l, layer, (enum br_lora_target)t);
            if (!p) {
                continue;
            }
            check_inside(data, data + size, &p->a);
            check_inside(data, data + size, &p->b);
            assert(p->a.rows == (size_t)rank && p->b.cols == (size_t)rank);
            assert(p->a.cols <= 256);
            memset(row, 0, sizeof row);
            rc = br_lora_merge_row(l, p, 1.0f, 0, row, tmp);
            assert(rc == BR_OK);
        }
    }
    br_lora_close(l);
    return 0;
}
