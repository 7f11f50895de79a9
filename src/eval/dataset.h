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
 * The exact rules of each format are in docs/internals/eval.md.
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
    char *name; /* file or folder base name */
    size_t n_prompts;
    size_t n_models;
    char **models;    /* [n_models] model names as in the source */
    char **prompts;   /* [n_prompts] prompt text (UTF-8, NUL-terminated) */
    char **groups;    /* [n_prompts] group label (subject, eval_name) or NULL entries */
    double *quality;  /* [n_prompts * n_models] row-major, 0..1; NaN when unknown */
    double *cost_usd; /* [n_prompts * n_models] recorded cost; NaN when unknown */
    char **responses; /* [n_prompts * n_models] answer text or NULL; NULL if none at all */
    size_t n_dropped; /* rows dropped as contaminated */
    void *priv;       /* storage owned by the loader */
    /* Token counts per answer, [n_prompts * n_models]; -1 when unknown. Recorded when the
     * source has them (JSONL), otherwise estimated from the text with br_eval_tokens_estimate
     * (prompt always; completion only when the answer text is recorded, even if
     * keep_responses is false). Used to price answers whose cost was not recorded. */
    int64_t *prompt_tokens;
    int64_t *completion_tokens;
    enum br_dataset_format format; /* the format actually loaded */
    size_t n_files;                /* files read (a folder: its CSV files) */
    char *contaminated_path;       /* the contaminated-prompts file applied, or NULL */
};

struct br_dataset_opts {
    enum br_dataset_format format;
    const char *contaminated; /* JSONL of {"eval_prompt": ...} rows to drop; NULL = look for
                                 contaminated_prompts.jsonl beside the data, "" = none */
    bool keep_responses;      /* load answer texts (memory) */
    void (*progress)(void *user, size_t done, size_t total); /* may be NULL */
    void *progress_user;
};

/**
 * Loads a dataset from a file or folder. On failure returns BR_ERR_PARSE / BR_ERR_IO /
 * BR_ERR_NOMEM and writes a one-line reason with file and line into err.
 */
int br_dataset_load(const char *path, const struct br_dataset_opts *opts, struct br_dataset **out,
                    char *err, size_t errlen);

/**
 * Loads a dataset from n bytes in memory (tests, fuzzing); name is used in error messages
 * and as the dataset's name (it is not opened). Contaminated prompts are dropped only when
 * opts->contaminated names a file. Otherwise as br_dataset_load.
 */
int br_dataset_load_mem(const char *data, size_t n, const char *name,
                        const struct br_dataset_opts *opts, struct br_dataset **out, char *err,
                        size_t errlen);

/** Name of a format ("auto", "routellm", "routerbench", "jsonl"). */
const char *br_dataset_format_name(enum br_dataset_format f);

/** Parses a format name; BR_ERR_INVAL when unknown. */
int br_dataset_format_parse(const char *s, enum br_dataset_format *out);

/**
 * Estimated token count of len bytes of text, by the same rule as the gateway's estimate
 * for answers without usage (src/upstream/tokens.c; eval must not depend on upstream, so the
 * rule is restated in eval_tokens.c): letter runs with one leading space or apostrophe are
 * one token (one per four bytes past eight), digits go in groups of three, each other
 * visible run is one token. Within about 10% of cl100k_base on English prose.
 */
int64_t br_eval_tokens_estimate(const char *text, size_t len);

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
