/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: eval datasets (RouteLLM / RouterBench CSV through libcsv, the Python list
 * literal decoder, JSONL through jansson). The first byte picks the format (auto, routellm,
 * routerbench, jsonl); the rest is the file. Invariants: a load either fails with a message
 * naming the input, or gives a dataset whose every prompt is valid NUL-free UTF-8, whose
 * qualities are NaN or within 0..1, costs NaN or >= 0, token counts -1 or >= 0; the metrics
 * run on its first two models without error when they have known outcomes. The list decoder
 * never reads past its input and yields valid UTF-8.
 */
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "eval/dataset.h"
#include "eval/eval_int.h"
#include "eval/metrics.h"

static void check_cells(const struct br_dataset *ds)
{
    size_t m = ds->n_models;
    for (size_t j = 0; j < m; j++) {
        assert(ds->models[j] != NULL && ds->models[j][0] != '\0');
    }
    for (size_t i = 0; i < ds->n_prompts; i++) {
        const char *p = ds->prompts[i];
        assert(p != NULL && br__utf8_valid(p, strlen(p)));
        for (size_t j = 0; j < m; j++) {
            double q = ds->quality[i * m + j];
            double c = ds->cost_usd[i * m + j];
            assert(isnan(q) || (q >= 0.0 && q <= 1.0));
            assert(isnan(c) || c >= 0.0);
            assert(ds->prompt_tokens[i * m + j] >= 0);
            assert(ds->completion_tokens[i * m + j] >= -1);
        }
    }
}

/* The metrics on models 0 and 1, scored by prompt length. */
static void check_metrics(const struct br_dataset *ds)
{
    size_t m = ds->n_models;
    double *s = calloc(ds->n_prompts, sizeof(double));
    double *a = calloc(ds->n_prompts, sizeof(double));
    double *b = calloc(ds->n_prompts, sizeof(double));
    size_t n = 0;
    for (size_t i = 0; s != NULL && a != NULL && b != NULL && i < ds->n_prompts; i++) {
        double q0 = ds->quality[i * m];
        double q1 = ds->quality[i * m + 1];
        if (!isnan(q0) && !isnan(q1)) {
            s[n] = (double)strlen(ds->prompts[i]);
            a[n] = q0;
            b[n] = q1;
            n++;
        }
    }
    struct br_eval_result r;
    int rc = n > 0 ? br_eval_binary(s, a, b, NULL, NULL, n, &r) : BR_ERR_INVAL;
    assert(rc == BR_OK || rc == BR_ERR_NOMEM || n == 0);
    if (rc == BR_OK) {
        assert(r.n_curve >= 2 && r.curve[0].p_strong == 0.0);
        assert(r.curve[r.n_curve - 1].p_strong == 1.0);
        br_eval_result_cleanup(&r);
    }
    free(s);
    free(a);
    free(b);
}

static void check(const struct br_dataset *ds)
{
    assert(ds->n_prompts > 0 && ds->n_models > 0);
    check_cells(ds);
    if (ds->n_models >= 2) {
        check_metrics(ds);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    static const enum br_dataset_format formats[] = {
        BR_DATASET_FORMAT_AUTO, BR_DATASET_FORMAT_ROUTELLM, BR_DATASET_FORMAT_ROUTERBENCH,
        BR_DATASET_FORMAT_JSONL};
    struct br_dataset_opts o = {.format = formats[data[0] % 4], .keep_responses = data[0] & 4};
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    struct br_dataset *ds = NULL;
    char err[256] = "";
    int rc = br_dataset_load_mem(text, n, "fuzz.csv", &o, &ds, err, sizeof(err));
    if (rc == BR_OK) {
        check(ds);
        br_dataset_free(ds);
    } else {
        assert(ds == NULL);
        assert(rc == BR_ERR_NOMEM || strncmp(err, "fuzz.csv", 8) == 0);
    }
    struct br_buf out;
    br_buf_init(&out, 1u << 24);
    const char *what = NULL;
    size_t off = 0;
    rc = br__pylist_decode(text, n, &out, &what, &off);
    assert(off <= n);
    if (rc == BR_OK) {
        assert(out.len == 0 || memchr(out.ptr, '\0', out.len) == NULL);
    } else {
        assert(rc == BR_ERR_PARSE || rc == BR_ERR_NOMEM);
    }
    br_buf_cleanup(&out);
    return 0;
}
