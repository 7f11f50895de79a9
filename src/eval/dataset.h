/* SPDX-License-Identifier: MIT */
/*
 * Datasets of recorded routing outcomes: prompts, and for each prompt and model the quality of
 * that model's answer (and, when recorded, its cost and answer text). Loaded from the formats
 * the routing literature publishes:
 *
 *   - RouteLLM CSV (`prompt,<model>,<model>,...`, booleans; optional `<model>_response`), one
 *     file (GSM8K) or a folder of such files (MMLU: one per subject, the subject becomes the
 *     prompt's group), with RouteLLM's contaminated_prompts.jsonl dropped when present;
 *   - RouterBench CSV (`sample_id,prompt,eval_name,<model>...,<model>|model_response,
 *     <model>|total_cost`; the prompt is a Python list literal of strings);
 *   - brigade's generic JSONL, one object per line:
 *       {"prompt": "...", "group": "...", "models": {"<name>": {"quality": 0..1,
 *        "cost_usd": 0.0012, "prompt_tokens": 12, "completion_tokens": 80, "response": "..."}}}
 *     (quality required; cost_usd, or tokens priced by the caller's price table, optional).
 *
 * Malformed input is an error with file and line, never a crash. Immutable after loading.
 */
#ifndef BR_EVAL_DATASET_H
#define BR_EVAL_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum br_dataset_format {
    BR_DATASET_FORMAT_AUTO = 0, /* from the header row / first line / folder */
    BR_DATASET_FORMAT_ROUTELLM,
    BR_DATASET_FORMAT_ROUTERBENCH,
    BR_DATASET_FORMAT_JSONL,
};

struct br_dataset {
    char *name;            /* file or folder base name */
    size_t n_prompts;
    size_t n_models;
    char **models;         /* [n_models] model names as in the source */
    char **prompts;        /* [n_prompts] prompt text (UTF-8, NUL-terminated) */
    char **groups;         /* [n_prompts] group label (subject, eval_name) or NULL entries */
    double *quality;       /* [n_prompts * n_models] row-major, 0..1; NaN when unknown */
    double *cost_usd;      /* [n_prompts * n_models] recorded cost; NaN when unknown */
    char **responses;      /* [n_prompts * n_models] answer text or NULL; NULL if none at all */
    size_t n_dropped;      /* rows dropped as contaminated */
    void *priv;            /* storage owned by the loader */
};

struct br_dataset_opts {
    enum br_dataset_format format;
    const char *contaminated;  /* JSONL of {"eval_prompt": ...} rows to drop; NULL = look for
                                  contaminated_prompts.jsonl beside the data, "" = none */
    bool keep_responses;       /* load answer texts (memory) */
    void (*progress)(void *user, size_t done, size_t total); /* may be NULL */
    void *progress_user;
};

/**
 * Loads a dataset from a file or folder. On failure returns BR_ERR_PARSE / BR_ERR_IO /
 * BR_ERR_NOMEM and writes a one-line reason with file and line into err.
 */
int br_dataset_load(const char *path, const struct br_dataset_opts *opts,
                    struct br_dataset **out, char *err, size_t errlen);

/** Frees a dataset. NULL is a no-op. */
void br_dataset_free(struct br_dataset *ds);

/** Index of the model called name, or -1. */
int br_dataset_model_index(const struct br_dataset *ds, const char *name);

/** Quality of model m on prompt i. */
static inline double br_dataset_quality(const struct br_dataset *ds, size_t i, size_t m)
{
    return ds->quality[i * ds->n_models + m];
}

#endif
