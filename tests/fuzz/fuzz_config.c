/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the config loader (YAML parse + schema walk). Any input must either load or
 * fail with a message naming "<string>:<line>"; a loaded config must be internally consistent.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct br_config *c = NULL;
    char err[512];
    /* Secrets referenced as env:/file: must not leak host data into the fuzzer: unset env. */
    int rc = br_config_load_string((const char *)data, size, "/nonexistent", &c, err, sizeof(err));
    if (rc == BR_OK) {
        assert(c->n_models > 0);
        for (size_t i = 0; i < c->n_models; i++) {
            const struct br_model_cfg *m = &c->models[i];
            assert(m->name && m->provider && m->upstream_model);
            assert(br_config_model_find(c, m->name, strlen(m->name)) != NULL);
            assert(m->price.input_nano_usd_per_mtok >= 0);
            assert(m->price.output_nano_usd_per_mtok >= 0);
        }
        assert(c->request_line_bytes > 0 && c->body_bytes > 0);
        br_config_unref(c);
    } else {
        assert(err[0] != '\0');
        assert(strlen(err) < sizeof(err));
    }
    return 0;
}
