/* SPDX-License-Identifier: MIT */
/*
 * `brigade eval`: argument parsing, loading, running each router (eval_run.c), the metrics
 * (metrics.c) and the baselines; eval_report.c writes the table, JSON, CSV and SVG.
 */
#include "eval/eval_cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/slice.h"
#include "eval/dataset.h"
#include "eval/eval.h"
#include "eval/eval_int.h"
#include "eval/eval_router.h"
#include "eval/metrics.h"

#define MAX_PRICES  64
#define MAX_ROUTERS 16

static const char usage_text[] =
    "usage: brigade eval DATASET [--strong MODEL] [--weak MODEL] [--router NAME[,NAME...]]\n"
    "                    [--model FILE] [--scores CSV] [--folds K | --holdout SHARE]\n"
    "                    [--seed S] [--thresholds N] [--csv OUT] [--svg OUT] [--x cost|share]\n"
    "                    [--format auto|routellm|routerbench|jsonl] [--contaminated FILE|none]\n"
    "                    [--price MODEL=IN/OUT ...] [--completion-tokens N]\n"
    "                    [--no-default-prices] [--json] [--quiet | --progress]\n"
    "\n"
    "Evaluates routers offline on recorded outcomes: each router scores every prompt (higher\n"
    "= needs the strong model) and every distinct score is tried as a threshold (strong when\n"
    "score >= threshold). Prints, per threshold, the share sent to the strong model (p_H),\n"
    "quality, cost and PGR = (Q - Q_weak) / (Q_strong - Q_weak); then APGR (area under PGR\n"
    "against p_H), CPT(50/80/95%%) (the smallest p_H reaching that PGR), the cheapest cost at\n"
    "quality >= 95%% of always-strong relative to always-strong, the two kinds of mistake there\n"
    "(hard prompts sent to the weak model, easy ones sent to the strong model), and the\n"
    "always-weak, always-strong, random and oracle baselines. Prompts with equal scores move\n"
    "together (one threshold step, i.e. the expected curve of breaking the tie at random).\n"
    "\n"
    "DATASET is a file or a folder:\n"
    "  routellm     RouteLLM CSV: prompt,<model>,<model>[,<model>_response...] (True/False);\n"
    "               a folder of such files (MMLU: one per subject, the subject is the group)\n"
    "  routerbench  RouterBench CSV: prompt is a Python list literal; <model> is 0.0/1.0;\n"
    "               <model>|total_cost (USD) and <model>|model_response; eval_name = group\n"
    "  jsonl        one object per line:\n"
    "                 {\"prompt\": \"...\", \"group\": \"...\", \"models\": {\"<name>\": {\n"
    "                   \"quality\": 0..1 or true/false,        (required)\n"
    "                   \"cost_usd\": 0.0012,                   (optional, recorded cost)\n"
    "                   \"prompt_tokens\": 12, \"completion_tokens\": 80,  (optional)\n"
    "                   \"response\": \"...\"}}}                  (optional)\n"
    "               other keys are ignored; a model missing from a line is unknown there\n"
    "Rows listed in contaminated_prompts.jsonl ({\"eval_prompt\": ...} per line) beside the\n"
    "data (or in its parent folder) are dropped; --contaminated FILE names another list,\n"
    "--contaminated none keeps every row.\n"
    "\n"
    "Models:\n"
    "  --strong M, --weak M   the pair to route between (default for two-model datasets: the\n"
    "                         one with the higher mean quality is strong)\n"
    "Routers (--router, default random; a comma list evaluates several):\n"
    "%s"
    "  --model FILE           a trained model for a learned router (scored on every row: make\n"
    "                         sure it was not trained on this dataset)\n"
    "  --scores CSV           for --router scores: columns \"score\" and \"index\" (dataset row,\n"
    "                         as --csv writes it) or \"prompt\" (exact text)\n"
    "  --folds K              learned routers without --model: K-fold cross-validation, every\n"
    "                         prompt scored by the model trained on the other folds (default 5,\n"
    "                         stratified by outcome)\n"
    "  --holdout SHARE        instead: train on 1-SHARE, evaluate on the held-out SHARE only\n"
    "  --seed S               seed for random, folds and training (default 1)\n"
    "Costs: recorded per-prompt costs when the dataset has them; a --price MODEL=IN/OUT (USD\n"
    "per million input/output tokens; MODEL=P for both) overrides them; otherwise RouteLLM's\n"
    "blended defaults, $24.7/M for gpt-4-1106-preview and $0.24/M for\n"
    "mistralai/Mixtral-8x7B-Instruct-v0.1 (--no-default-prices disables them). Priced answers\n"
    "use estimated tokens: the prompt's, plus the recorded answer's when there is one, else\n"
    "--completion-tokens N (default 0).\n"
    "Output:\n"
    "  --thresholds N         table rows at p_H = 0, 1/N, ..., 1 plus the key points (default\n"
    "                         10; 0 = no table). Metrics always use every threshold.\n"
    "  --csv OUT              per prompt (first router): index, group, fold, score, decision at\n"
    "                         the Q>=95%% threshold, both qualities and both costs\n"
    "  --svg OUT              cost-quality curves with the baselines (self-contained SVG)\n"
    "  --x cost|share         the SVG's x axis (default: cost when known)\n"
    "  --json                 the summary as JSON on stdout instead of the table\n"
    "  --quiet, --progress    never / always show progress on stderr (default: on a terminal)\n"
    "Exit status: 0 success, 1 failure (unreadable or malformed data), 2 bad usage.\n";

struct cli {
    const char *dataset;
    const char *strong;
    const char *weak;
    const char *routers;
    const char *model;
    const char *scores;
    const char *csv;
    const char *svg;
    const char *contaminated;
    enum br_dataset_format format;
    unsigned folds;
    double holdout;
    uint64_t seed;
    unsigned thresholds;
    int x_axis; /* -1 default, 0 share, 1 cost */
    int64_t completion_tokens;
    bool no_default_prices;
    bool json;
    int progress; /* -1 auto, 0 off, 1 on */
    struct br_eval_price prices[MAX_PRICES];
    size_t n_prices;
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    (void)fputs("brigade eval: ", stderr);
    va_start(ap, fmt);
    (void)vfprintf(stderr, fmt, ap);
    va_end(ap);
    (void)fputs(" (see 'brigade eval --help')\n", stderr);
    return 2;
}

static void print_help(void)
{
    char routers[2048];
    size_t k = 0;
    routers[0] = '\0';
    for (size_t i = 0; i < br_eval_router_count() && k < sizeof(routers); i++) {
        const struct br_eval_router_ops *o = br_eval_router_at(i);
        int w = snprintf(routers + k, sizeof(routers) - k, "  %-22s %s\n", o->name, o->summary);
        if (w < 0) {
            break;
        }
        k += (size_t)w;
    }
    (void)fprintf(stdout, usage_text, routers);
}

int br__eval_opt(int argc, char **argv, int *i, const char *name, const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) {
        return 0;
    }
    if (a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (a[n] != '\0') {
        return 0;
    }
    if (*i + 1 >= argc) {
        return -1;
    }
    *out = argv[++*i];
    return 1;
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    return br_slice_to_u64(br_slice_from_cstr(s), max, out);
}

static int parse_share(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !(v > 0.0 && v < 1.0)) {
        return BR_ERR_PARSE;
    }
    *out = v;
    return BR_OK;
}

/* Options taking a value; returns 2 on a usage error, 0 when handled, 1 when not an option. */
static int parse_valued(struct cli *c, int argc, char **argv, int *i)
{
    const char *v = NULL;
    const char *a = argv[*i];
    unsigned long long u = 0;
    static const char *const names[] = {
        "--strong",     "--weak",  "--router",  "--model",
        "--scores",     "--csv",   "--svg",     "--contaminated",
        "--format",     "--folds", "--holdout", "--seed",
        "--thresholds", "--x",     "--price",   "--completion-tokens",
    };
    size_t which = SIZE_MAX;
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]) && which == SIZE_MAX; k++) {
        int m = br__eval_opt(argc, argv, i, names[k], &v);
        if (m < 0) {
            return usage_error("%s needs a value", a);
        }
        if (m > 0) {
            which = k;
        }
    }
    switch (which) {
    case 0:
        c->strong = v;
        return 0;
    case 1:
        c->weak = v;
        return 0;
    case 2:
        c->routers = v;
        return 0;
    case 3:
        c->model = v;
        return 0;
    case 4:
        c->scores = v;
        return 0;
    case 5:
        c->csv = v;
        return 0;
    case 6:
        c->svg = v;
        return 0;
    case 7:
        c->contaminated = strcmp(v, "none") == 0 ? "" : v;
        return 0;
    case 8:
        return br_dataset_format_parse(v, &c->format) == BR_OK
                   ? 0
                   : usage_error("--format wants auto, routellm, routerbench or jsonl, got '%s'",
                                 v);
    case 9:
        if (parse_uint(v, 1000, &u) != BR_OK || u < 2) {
            return usage_error("--folds wants 2..1000, got '%s'", v);
        }
        c->folds = (unsigned)u;
        return 0;
    case 10:
        return parse_share(v, &c->holdout) == BR_OK
                   ? 0
                   : usage_error("--holdout wants a share between 0 and 1, got '%s'", v);
    case 11:
        if (parse_uint(v, UINT64_MAX, &u) != BR_OK) {
            return usage_error("--seed wants a non-negative integer, got '%s'", v);
        }
        c->seed = u;
        return 0;
    case 12:
        if (parse_uint(v, 10000, &u) != BR_OK) {
            return usage_error("--thresholds wants 0..10000, got '%s'", v);
        }
        c->thresholds = (unsigned)u;
        return 0;
    case 13:
        if (strcmp(v, "cost") != 0 && strcmp(v, "share") != 0) {
            return usage_error("--x wants cost or share, got '%s'", v);
        }
        c->x_axis = strcmp(v, "cost") == 0;
        return 0;
    case 14:
        if (c->n_prices >= MAX_PRICES) {
            return usage_error("too many --price options (at most 64)");
        }
        if (br_eval_price_parse(v, &c->prices[c->n_prices]) != BR_OK) {
            return usage_error("--price wants MODEL=IN/OUT in USD per million tokens, got '%s'", v);
        }
        c->n_prices++;
        return 0;
    case 15:
        if (parse_uint(v, 100000000, &u) != BR_OK) {
            return usage_error("--completion-tokens wants a non-negative integer, got '%s'", v);
        }
        c->completion_tokens = (int64_t)u;
        return 0;
    default:
        return 1;
    }
}

/* Returns -1 to continue, else an exit code (0 after --help). */
static int parse_args(struct cli *c, int argc, char **argv)
{
    memset(c, 0, sizeof(*c));
    c->routers = "random";
    c->seed = 1;
    c->thresholds = 10;
    c->x_axis = -1;
    c->completion_tokens = -1;
    c->progress = -1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
            print_help();
            return 0;
        }
        if (strcmp(a, "--json") == 0) {
            c->json = true;
            continue;
        }
        if (strcmp(a, "--quiet") == 0) {
            c->progress = 0;
            continue;
        }
        if (strcmp(a, "--progress") == 0) {
            c->progress = 1;
            continue;
        }
        if (strcmp(a, "--no-default-prices") == 0) {
            c->no_default_prices = true;
            continue;
        }
        int r = parse_valued(c, argc, argv, &i);
        if (r == 2) {
            return 2;
        }
        if (r == 0) {
            continue;
        }
        if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option '%s'", a);
        }
        if (c->dataset != NULL) {
            return usage_error("more than one dataset ('%s')", a);
        }
        c->dataset = a;
    }
    if (c->dataset == NULL) {
        return usage_error("no DATASET given");
    }
    if (c->folds != 0 && c->holdout > 0.0) {
        return usage_error("--folds and --holdout exclude each other");
    }
    return -1;
}

/* ---- progress on stderr ---- */

struct progress {
    bool on;
    uint64_t last_ns;
    bool shown;
};

static void progress_show(struct progress *p, const char *stage, size_t done, size_t total,
                          bool bytes)
{
    if (!p->on) {
        return;
    }
    uint64_t now = br_clock_now_ns();
    if (done < total && p->shown && now - p->last_ns < 100000000ull) {
        return;
    }
    p->last_ns = now;
    p->shown = true;
    if (bytes) {
        (void)fprintf(stderr, "\r%s %.1f / %.1f MB   ", stage, (double)done / 1e6,
                      (double)total / 1e6);
    } else {
        (void)fprintf(stderr, "\r%s %zu / %zu   ", stage, done, total);
    }
    (void)fflush(stderr);
}

static void progress_end(struct progress *p)
{
    if (p->on && p->shown) {
        (void)fputs("\n", stderr);
        p->shown = false;
    }
}

static void on_load_progress(void *user, size_t done, size_t total)
{
    progress_show(user, "loading", done, total, true);
}

static void on_run_progress(void *user, const char *stage, size_t done, size_t total)
{
    progress_show(user, stage, done, total, false);
}

/* ---- models ---- */

static double mean_quality(const struct br_dataset *ds, size_t m, size_t other)
{
    double s = 0.0;
    size_t n = 0;
    for (size_t i = 0; i < ds->n_prompts; i++) {
        double q = br_dataset_quality(ds, i, m);
        if (!isnan(q) && !isnan(br_dataset_quality(ds, i, other))) {
            s += q;
            n++;
        }
    }
    return n ? s / (double)n : NAN;
}

static void list_models(const struct br_dataset *ds)
{
    (void)fputs("models in the dataset:", stderr);
    for (size_t i = 0; i < ds->n_models; i++) {
        (void)fprintf(stderr, "%s %s", i ? "," : "", ds->models[i]);
    }
    (void)fputs("\n", stderr);
}

static int pick_models(const struct cli *c, const struct br_dataset *ds, size_t *strong,
                       size_t *weak)
{
    if (c->strong == NULL && c->weak == NULL && ds->n_models == 2) {
        double q0 = mean_quality(ds, 0, 1);
        double q1 = mean_quality(ds, 1, 0);
        *strong = q1 > q0 ? 1 : 0;
        *weak = 1 - *strong;
        return BR_OK;
    }
    if (c->strong == NULL || c->weak == NULL) {
        (void)fprintf(stderr,
                      "brigade eval: the dataset has %zu models: name --strong and "
                      "--weak\n",
                      ds->n_models);
        list_models(ds);
        return 2;
    }
    int s = br_dataset_model_index(ds, c->strong);
    int w = br_dataset_model_index(ds, c->weak);
    if (s < 0 || w < 0) {
        (void)fprintf(stderr, "brigade eval: no model '%s' in %s\n", s < 0 ? c->strong : c->weak,
                      ds->name);
        list_models(ds);
        return 2;
    }
    if (s == w) {
        (void)fprintf(stderr, "brigade eval: --strong and --weak name the same model\n");
        return 2;
    }
    *strong = (size_t)s;
    *weak = (size_t)w;
    return BR_OK;
}

/* ---- running one router ---- */

static void result_cleanup(struct br__eval_router_result *r)
{
    br_free(r->scores);
    br_free(r->qs);
    br_free(r->qw);
    br_free(r->cs);
    br_free(r->cw);
    br_free(r->rows);
    br_free(r->fold);
    br_eval_result_cleanup(&r->res);
}

/* Per-fold APGR: each fold's rows alone (NaN for a fold where the two models tie). */
static void fold_apgrs(struct br__eval_router_result *r)
{
    unsigned nf = r->n_folds < 64 ? r->n_folds : 64;
    double *s = br_calloc(r->n, sizeof(double));
    double *a = br_calloc(r->n, sizeof(double));
    double *b = br_calloc(r->n, sizeof(double));
    for (unsigned f = 0; f < nf; f++) {
        r->fold_apgr[f] = NAN;
        if (s == NULL || a == NULL || b == NULL) {
            continue;
        }
        size_t k = 0;
        for (size_t i = 0; i < r->n; i++) {
            if (r->fold[i] == (int)f) {
                s[k] = r->scores[i];
                a[k] = r->qs[i];
                b[k] = r->qw[i];
                k++;
            }
        }
        r->fold_apgr[f] = k ? br_eval_apgr(s, a, b, k) : NAN;
    }
    br_free(s);
    br_free(a);
    br_free(b);
}

static int gather(struct br__eval_router_result *r, const struct br_eval_task *t,
                  const struct br_eval_run_out *run)
{
    size_t n = run->n_scored;
    r->n = n;
    r->scores = br_calloc(n, sizeof(double));
    r->qs = br_calloc(n, sizeof(double));
    r->qw = br_calloc(n, sizeof(double));
    r->rows = br_calloc(n, sizeof(size_t));
    r->fold = br_calloc(n, sizeof(int));
    if (t->c_strong != NULL) {
        r->cs = br_calloc(n, sizeof(double));
        r->cw = br_calloc(n, sizeof(double));
    }
    if (r->scores == NULL || r->qs == NULL || r->qw == NULL || r->rows == NULL || r->fold == NULL ||
        (t->c_strong != NULL && (r->cs == NULL || r->cw == NULL))) {
        return BR_ERR_NOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (!run->scored[i]) {
            continue;
        }
        r->scores[k] = run->scores[i];
        r->qs[k] = t->q_strong[i];
        r->qw[k] = t->q_weak[i];
        if (r->cs != NULL) {
            r->cs[k] = t->c_strong[i];
            r->cw[k] = t->c_weak[i];
        }
        r->rows[k] = i;
        r->fold[k] = run->fold_of[i];
        k++;
    }
    return BR_OK;
}

static int run_router(const struct cli *c, const struct br_eval_task *task,
                      const struct br_eval_router_ops *ops, struct progress *pg,
                      struct br__eval_router_result *r)
{
    struct br_eval_router_cfg cfg = {
        .seed = c->seed,
        .model_path = c->model,
        .scores_path = c->scores,
        .verbose = pg->on ? 1u : 0u,
    };
    struct br_eval_run_opts ro = {
        .folds = c->folds,
        .holdout = c->holdout,
        .seed = c->seed,
        .unstratified = false,
        .progress = on_run_progress,
        .progress_user = pg,
    };
    struct br_eval_run_out run;
    char err[512];
    r->ops = ops;
    uint64_t t0 = br_clock_now_ns();
    int rc = br_eval_run(ops, &cfg, task, &ro, &run, err, sizeof(err));
    progress_end(pg);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade eval: %s\n", err[0] ? err : br_strerror(rc));
        return 1;
    }
    r->n_folds = run.n_folds;
    rc = gather(r, task, &run);
    br_eval_run_out_cleanup(&run);
    if (rc == BR_OK) {
        r->fixed = (ops->flags & BR_EVAL_ROUTER_FIXED) != 0;
        if (r->fixed) {
            rc = br_eval_point_at(r->scores, r->qs, r->qw, r->cs, r->cw, r->n, 0.5, &r->point);
        } else {
            rc = br_eval_binary(r->scores, r->qs, r->qw, r->cs, r->cw, r->n, &r->res);
            r->have_result = rc == BR_OK;
            r->apgr_q10 = br_eval_apgr_quantiles(r->scores, r->qs, r->qw, r->n, 10);
        }
    }
    if (rc == BR_OK && r->n_folds > 1) {
        fold_apgrs(r);
    }
    r->seconds = (double)(br_clock_now_ns() - t0) / 1e9;
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade eval: router %s: metrics failed: %s\n", ops->name,
                      br_strerror(rc));
        return 1;
    }
    return 0;
}

/* The oracle over every task row, for the baselines. */
static int oracle_baseline(const struct br_eval_task *t, struct br_eval_result *out)
{
    struct br_eval_router_cfg cfg = {.seed = 1};
    struct br_eval_run_out run;
    char err[256];
    int rc = br_eval_run(&br_eval_router_oracle, &cfg, t, NULL, &run, err, sizeof(err));
    if (rc != BR_OK) {
        return rc;
    }
    rc = br_eval_binary(run.scores, t->q_strong, t->q_weak, t->c_strong, t->c_weak, t->n, out);
    br_eval_run_out_cleanup(&run);
    return rc;
}

static int split_routers(const char *list, const struct br_eval_router_ops **out, size_t *n)
{
    *n = 0;
    const char *p = list;
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        char name[64];
        if (len == 0 || len >= sizeof(name)) {
            return usage_error("bad --router list '%s'", list);
        }
        memcpy(name, p, len);
        name[len] = '\0';
        const struct br_eval_router_ops *ops = br_eval_router_find(name);
        if (ops == NULL) {
            (void)usage_error("unknown router '%s'", name);
            (void)fputs("routers:", stderr);
            for (size_t i = 0; i < br_eval_router_count(); i++) {
                (void)fprintf(stderr, " %s", br_eval_router_at(i)->name);
            }
            (void)fputs("\n", stderr);
            return 2;
        }
        if (*n >= MAX_ROUTERS) {
            return usage_error("at most 16 routers");
        }
        out[(*n)++] = ops;
        p += len;
        if (*p == ',') {
            p++;
        }
    }
    if (*n == 0) {
        return usage_error("bad --router list '%s'", list);
    }
    return 0;
}

static int write_file(const char *path, const struct br__eval_report *rep,
                      int (*fn)(FILE *f, const struct br__eval_report *r, size_t router))
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        (void)fprintf(stderr, "brigade eval: cannot write %s: %s\n", path,
                      strerror(errno)); /* NOLINT(concurrency-mt-unsafe): CLI, one thread */
        return 1;
    }
    int rc = fn(f, rep, 0);
    if (fclose(f) != 0) {
        rc = BR_ERR_IO;
    }
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade eval: writing %s failed\n", path);
        return 1;
    }
    return 0;
}

static int svg_adapter(FILE *f, const struct br__eval_report *r, size_t router)
{
    (void)router;
    return br__eval_write_svg(f, r);
}

static int evaluate(const struct cli *c, struct progress *pg)
{
    struct br_dataset *ds = NULL;
    struct br_eval_task *task = NULL;
    struct br_eval_task_info info;
    struct br__eval_router_result results[MAX_ROUTERS];
    const struct br_eval_router_ops *ops[MAX_ROUTERS];
    size_t n_routers = 0;
    struct br__eval_report rep;
    char err[512];
    int code = split_routers(c->routers, ops, &n_routers);
    memset(results, 0, sizeof(results));
    memset(&rep, 0, sizeof(rep));
    if (code != 0) {
        return code;
    }
    struct br_dataset_opts lo = {
        .format = c->format,
        .contaminated = c->contaminated,
        .keep_responses = false,
        .progress = on_load_progress,
        .progress_user = pg,
    };
    int rc = br_dataset_load(c->dataset, &lo, &ds, err, sizeof(err));
    progress_end(pg);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade eval: %s\n", err[0] ? err : br_strerror(rc));
        return 1;
    }
    size_t strong = 0;
    size_t weak = 0;
    code = pick_models(c, ds, &strong, &weak);
    if (code != 0) {
        goto out;
    }
    struct br_eval_task_opts to = {
        .prices = c->prices,
        .n_prices = c->n_prices,
        .no_default_prices = c->no_default_prices,
        .completion_tokens = c->completion_tokens,
    };
    rc = br_eval_task_make(ds, strong, weak, &to, &task, &info, err, sizeof(err));
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade eval: %s\n", err[0] ? err : br_strerror(rc));
        code = 1;
        goto out;
    }
    for (size_t i = 0; i < n_routers; i++) {
        code = run_router(c, task, ops[i], pg, &results[i]);
        if (code != 0) {
            goto out;
        }
    }
    rc = oracle_baseline(task, &rep.oracle);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade eval: baselines: %s\n", br_strerror(rc));
        code = 1;
        goto out;
    }
    rep.path = c->dataset;
    rep.ds = ds;
    rep.task = task;
    rep.info = &info;
    rep.routers = results;
    rep.n_routers = n_routers;
    rep.seed = c->seed;
    rep.holdout = c->holdout;
    rep.thresholds = c->thresholds;
    rep.x_cost = c->x_axis < 0 ? task->c_strong != NULL : c->x_axis == 1;
    {
        /* The expected random router: the straight line between the two baselines. */
        const struct br_eval_result *o = &rep.oracle;
        double gap = o->q_strong - o->q_weak;
        double need = gap != 0.0 ? (0.95 * o->q_strong - o->q_weak) / gap : NAN;
        rep.random_p95 = need <= 0.0 ? 0.0 : fmin(need, 1.0);
        rep.random_cost95 = o->cost_weak + rep.random_p95 * (o->cost_strong - o->cost_weak);
    }
    rc = c->json ? br__eval_write_json(stdout, &rep) : br__eval_write_text(stdout, &rep);
    if (rc != BR_OK || fflush(stdout) != 0) {
        code = 1;
        goto out;
    }
    if (c->csv != NULL) {
        code = write_file(c->csv, &rep, br__eval_write_csv);
        if (code != 0) {
            goto out;
        }
    }
    if (c->svg != NULL) {
        code = write_file(c->svg, &rep, svg_adapter);
    }
out:
    for (size_t i = 0; i < n_routers; i++) {
        result_cleanup(&results[i]);
    }
    br_eval_result_cleanup(&rep.oracle);
    br_eval_task_free(task);
    br_dataset_free(ds);
    return code;
}

int br_eval_cli(int argc, char **argv)
{
    struct cli c;
    int code = parse_args(&c, argc, argv);
    if (code >= 0) {
        return code;
    }
    struct progress pg = {
        .on = c.progress == 1 || (c.progress < 0 && isatty(STDERR_FILENO)),
        .last_ns = 0,
        .shown = false,
    };
    return evaluate(&c, &pg);
}
