/* SPDX-License-Identifier: MIT */
/*
 * Structures shared by the eval subsystem's own files; never included from outside src/eval.
 *
 * The dataset builder: every loader (RouteLLM CSV, RouterBench CSV, JSONL) turns its rows into
 * builder calls - a row (prompt, group), then one cell per model (quality, cost, tokens,
 * answer) - and br__ds_finish lays the cells out as the row-major matrices of struct
 * br_dataset. Strings live in a chunked pool owned by the dataset. Contaminated prompts are
 * dropped at br__ds_row_begin.
 */
#ifndef BR_EVAL_EVAL_INT_H
#define BR_EVAL_EVAL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/buf.h"
#include "core/map.h"
#include "eval/dataset.h"
#include "eval/metrics.h"

/* Caps that keep hostile files from exhausting memory (errors past them, never truncation). */
#define BR__DS_MAX_COLUMNS    4096u
#define BR__DS_MAX_FIELD      (64u << 20) /* one CSV field or JSONL line, bytes */
#define BR__DS_MAX_ROWS       (16u << 20) /* prompts */
#define BR__DS_MAX_MODELS     1024u
#define BR__DS_MAX_FILE_BYTES (4ull << 30) /* one file */

/* String pool: bump allocation in big chunks, freed at once. */
struct br__pool_chunk {
    struct br__pool_chunk *next;
    size_t size;
    size_t used;
    /* payload follows */
};

struct br__pool {
    struct br__pool_chunk *head;
};

/** Copies n bytes plus a NUL into the pool. NULL on OOM. */
char *br__pool_strndup(struct br__pool *p, const char *s, size_t n);

/** Frees every chunk. */
void br__pool_cleanup(struct br__pool *p);

/* One (row, model) outcome as a loader reports it. */
struct br__ds_cell {
    uint32_t row;
    uint32_t model;
    double quality;            /* NaN = unknown */
    double cost_usd;           /* NaN = unknown */
    int64_t prompt_tokens;     /* -1 = estimate from the prompt */
    int64_t completion_tokens; /* -1 = estimate from response, else unknown */
    char *response;            /* pool string or NULL */
    int64_t response_tokens;   /* estimate from the response text (kept or not); -1 none */
};

struct br__ds_row {
    char *prompt; /* pool */
    char *group;  /* pool or NULL */
    int64_t prompt_tokens_est;
};

struct br__ds_builder {
    struct br__pool pool;
    char **models;
    size_t n_models, cap_models;
    struct br_map model_idx; /* name -> (index + 1) */
    struct br__ds_row *rows;
    size_t n_rows, cap_rows;
    struct br__ds_cell *cells;
    size_t n_cells, cap_cells;
    struct br_map contaminated; /* prompt -> non-NULL; keys in pool */
    bool have_contaminated;
    uint64_t cont_len_bits; /* bit (len % 64) set for every contaminated prompt's length:
                               most prompts skip the hash */
    size_t n_dropped;
    bool keep_responses;
    bool row_open; /* the last br__ds_row_begin kept its row */
    /* errors */
    const char *file; /* current file, for messages (borrowed) */
    char *err;
    size_t errlen;
    /* progress over all input bytes */
    void (*progress)(void *user, size_t done, size_t total);
    void *progress_user;
    size_t bytes_done, bytes_total;
    enum br_dataset_format format;
    size_t n_files;
    char *contaminated_path; /* pool */
};

/** Writes "file:line: message" into b->err (line 0: "file: message") and returns code. */
int br__ds_fail(struct br__ds_builder *b, size_t line, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/** Index of model name (added when new). BR_ERR_LIMIT past BR__DS_MAX_MODELS. */
int br__ds_model(struct br__ds_builder *b, const char *name, size_t len, size_t *idx_out);

/** Looks a model up without adding it; -1 when unknown. */
long br__ds_model_find(const struct br__ds_builder *b, const char *name, size_t len);

/**
 * Starts a row. The prompt is copied; a contaminated prompt is counted and the row skipped
 * (*kept_out = false; cells added before the next row are ignored). group may be NULL.
 */
int br__ds_row_begin(struct br__ds_builder *b, const char *prompt, size_t len, const char *group,
                     size_t group_len, bool *kept_out);

/** Adds a cell to the open row (ignored when the row was dropped). response is copied. */
int br__ds_cell_add(struct br__ds_builder *b, size_t model, double quality, double cost_usd,
                    int64_t prompt_tokens, int64_t completion_tokens, const char *response,
                    size_t response_len);

/** Reports progress: n more input bytes consumed. */
void br__ds_progress(struct br__ds_builder *b, size_t n);

/* Loaders over one file's bytes (path for messages; group for every row, may be NULL). */
int br__ds_load_csv(struct br__ds_builder *b, const char *data, size_t n,
                    enum br_dataset_format format, const char *group);
int br__ds_load_jsonl(struct br__ds_builder *b, const char *data, size_t n);

/** Reads the contaminated-prompts JSONL (field "eval_prompt") into b->contaminated. */
int br__ds_load_contaminated(struct br__ds_builder *b, const char *path);

/** Parses a contaminated-prompts JSONL (one object per line with a string "eval_prompt"). */
int br__ds_contaminated_parse(struct br__ds_builder *b, const char *data, size_t n);

/** Format of a file from its first bytes (JSONL when it starts with '{', else by header). */
enum br_dataset_format br__ds_sniff(const char *data, size_t n);

/**
 * Decodes a Python list literal of string literals (RouterBench's prompt and answer
 * columns) into out, joining the strings with "\n\n". Accepts '...' and "..." strings with
 * Python's escapes (\\ \' \" \a \b \f \n \r \t \v, octal \ooo, \xhh, \uhhhh, \Uhhhhhhhh,
 * backslash-newline; an unknown escape keeps its backslash, as Python does), a trailing
 * comma, whitespace between items. Rejects anything else, NUL bytes, surrogates, and raw
 * newlines inside a string. On BR_ERR_PARSE, *what (may be NULL) is a static reason and
 * *off the byte offset of the problem.
 */
int br__pylist_decode(const char *s, size_t n, struct br_buf *out, const char **what, size_t *off);

/** True when s[0..n) is valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF). */
bool br__utf8_valid(const char *s, size_t n);

/* ---- `brigade eval` report (eval_cli.c computes, eval_report.c writes) ---- */

struct br_eval_task;
struct br_eval_task_info;
struct br_eval_router_ops;

struct br__eval_router_result {
    const struct br_eval_router_ops *ops;
    double *scores;   /* [n] scores of the evaluated rows */
    double *qs, *qw;  /* [n] */
    double *cs, *cw;  /* [n] or NULL */
    size_t *rows;     /* [n] task row of each evaluated row */
    int *fold;        /* [n] fold each row was scored in */
    size_t n;         /* rows evaluated (all, or the held-out ones) */
    bool fixed;       /* BR_EVAL_ROUTER_FIXED: one operating point */
    bool have_result; /* res holds a sweep */
    struct br_eval_result res;
    struct br_eval_point point; /* fixed routers: the operating point */
    double apgr_q10;            /* RouteLLM's 10-quantile estimate */
    unsigned n_folds;
    double fold_apgr[64]; /* per fold (first 64) */
    double seconds;       /* wall time of create + train + score */
};

struct br__eval_report {
    const char *path;
    const struct br_dataset *ds;
    const struct br_eval_task *task;
    const struct br_eval_task_info *info;
    struct br__eval_router_result *routers;
    size_t n_routers;
    struct br_eval_result oracle; /* the oracle over every task row (baselines) */
    double random_p95;            /* share the expected random router needs for Q95 */
    double random_cost95;         /* its mean cost there */
    uint64_t seed;
    double holdout;
    unsigned thresholds; /* table rows: shares 0, 1/N, ..., 1 */
    bool x_cost;         /* SVG x axis: cost per prompt (else p_H) */
};

/* Writers; each returns BR_OK or BR_ERR_IO. */
int br__eval_write_text(FILE *f, const struct br__eval_report *r);
int br__eval_write_json(FILE *f, const struct br__eval_report *r);
int br__eval_write_csv(FILE *f, const struct br__eval_report *r, size_t router);
int br__eval_write_svg(FILE *f, const struct br__eval_report *r);

/*
 * Command-line option "--name value" or "--name=value" at argv[*i] (the eval, calibrate CLIs):
 * 1 = matched (value in *out, *i advanced past a separate value), 0 = not this option,
 * -1 = missing value.
 */
int br__eval_opt(int argc, char **argv, int *i, const char *name, const char **out);

#endif
