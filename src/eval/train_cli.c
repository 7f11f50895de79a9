/* SPDX-License-Identifier: MIT */
/*
 * `brigade train`: argument parsing, loading the datasets, cross-validation reports (binary
 * and verifier: APGR, CPT, cost at 95% of the strong model's quality; N-model: the
 * cost-quality trade-off against every single model and the oracle), and writing the model.
 */
#include "eval/train_cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/err.h"
#include "eval/dataset.h"
#include "eval/eval.h"
#include "eval/metrics.h"
#include "eval/train.h"

#define MAX_DATASETS 16

#define DEFAULT_STRONG "gpt-4-1106-preview"
#define DEFAULT_WEAK   "mistralai/Mixtral-8x7B-Instruct-v0.1,mistralai/mixtral-8x7b-chat"

static const char usage_text[] =
    "usage: brigade train DATASET... --out FILE [--strong M] [--weak M]\n"
    "                     [--label soft|gain|weak-wrong|diff] [--c C] [--folds K] [--seed S]\n"
    "                     [--n-model [--models M1,M2,...]] [--verifier] [--leave-one-out]\n"
    "                     [--bits B] [--features LIST] [--chars MIN-MAX] [--max-bytes N]\n"
    "                     [--solver lr|l1|lr-dual] [--inner-folds K] [--csv OUT]\n"
    "                     [--format auto|routellm|routerbench|jsonl] [--contaminated F|none]\n"
    "                     [--quiet]\n"
    "\n"
    "Trains the learned router with logistic regression (liblinear) on recorded outcomes and\n"
    "writes a model file for a route's classifier policy. DATASET is any file or folder\n"
    "`brigade eval` reads (RouteLLM CSV or folder, RouterBench CSV, generic JSONL); several\n"
    "datasets are concatenated into one training set (a general router). Contaminated rows are\n"
    "dropped as `brigade eval` drops them.\n"
    "\n"
    "Kinds of model:\n"
    "  (default)      binary: P(the strong model is needed | prompt), for a threshold route\n"
    "  --n-model      one output per candidate model, P(its answer is good | prompt), for\n"
    "                 routing among many models by predicted quality and price\n"
    "  --verifier     cascade verifier: P(escalate | prompt, the weak model's recorded answer);\n"
    "                 needs datasets with the weak model's answers (GSM8K, RouterBench)\n"
    "Models:\n"
    "  --strong M, --weak M   names of the pair (comma-separated alternatives, matched without\n"
    "                 regard to case; defaults: " DEFAULT_STRONG " and\n"
    "                 " DEFAULT_WEAK ")\n"
    "  --models LIST  --n-model candidates (default: every model of the first dataset)\n"
    "Training:\n"
    "  --label L      soft (default): target (1 + q_strong - q_weak) / 2, i.e. E[gain];\n"
    "                 gain: strong right and weak wrong; weak-wrong; diff: two models\n"
    "                 P(strong right) - P(weak right)\n"
    "  --c C          liblinear's C; default: chosen by an inner cross-validation on the\n"
    "                 training rows among 0.01 0.03 0.1 0.3 1 (APGR; log-likelihood for\n"
    "                 N-model outputs)\n"
    "  --inner-folds K  folds of that inner cross-validation (default 3)\n"
    "  --solver S     lr (L2-regularised, default), l1 (L1, sparse), lr-dual\n"
    "  --seed S       folds and tie-breaking (default 1)\n"
    "Features (recorded in the model file):\n"
    "  --bits B       2^B hashed buckets (default 18)\n"
    "  --features L   comma list of words, bigrams, chars, struct, nums (default\n"
    "                 words,bigrams,struct,nums)\n"
    "  --chars A-B    character n-gram lengths with 'chars' (default 3-5)\n"
    "  --max-bytes N  bytes of each text read, head and tail halves (default 4096)\n"
    "Evaluation (never on training rows):\n"
    "  --folds K      K-fold cross-validation before the final fit: every prompt is scored by a\n"
    "                 model trained on the other folds (nested: C is chosen inside each\n"
    "                 training fold). Prints APGR, CPT(50/80/95%), the cost at 95% of the\n"
    "                 strong model's quality relative to always-strong (verifiers: the cascade\n"
    "                 cost, the weak call included), per dataset and pooled; N-model: the\n"
    "                 cost-quality trade-off. The threshold reaching 95% is stored in the file.\n"
    "  --leave-one-out  with several datasets: each one scored by a model trained on the others\n"
    "  --csv OUT      the cross-validated scores, one row per prompt\n"
    "  --out FILE     the model file (required unless --no-model)\n"
    "  --no-model     evaluate only\n"
    "  --quiet        no progress on stderr\n";

struct cli {
    const char *datasets[MAX_DATASETS];
    size_t n_datasets;
    const char *strong, *weak, *out, *csv, *models, *contaminated;
    enum br_dataset_format format;
    struct br_train_opts opts;
    unsigned folds;
    int leave_one_out, no_model, quiet;
    char cmdline[1024];
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)fputs("brigade train: ", stderr);
    (void)vfprintf(stderr, fmt, ap);
    (void)fputs("\n(brigade train --help for usage)\n", stderr);
    va_end(ap);
    return 2;
}

static void on_progress(void *user, const char *line)
{
    const struct cli *c = user;
    if (!c->quiet) {
        (void)fprintf(stderr, "brigade train: %s\n", line);
    }
}

static int parse_double(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !isfinite(v)) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    if (*s < '0' || *s > '9') {
        return -1;
    }
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0 || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_features(const char *list, uint32_t *flags)
{
    static const struct {
        const char *name;
        uint32_t flag;
    } names[] = {{"words", BR_FEATURES_WORD1},
                 {"bigrams", BR_FEATURES_WORD2},
                 {"chars", BR_FEATURES_CHAR},
                 {"struct", BR_FEATURES_STRUCT},
                 {"nums", BR_FEATURES_NUMS}};
    uint32_t f = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        size_t k = 0;
        while (k < sizeof(names) / sizeof(names[0]) &&
               !(strlen(names[k].name) == n && strncmp(names[k].name, p, n) == 0)) {
            k++;
        }
        if (k == sizeof(names) / sizeof(names[0])) {
            return -1;
        }
        f |= names[k].flag;
        p += n;
        if (*p == ',') {
            p++;
        }
    }
    if (!(f & (BR_FEATURES_WORD1 | BR_FEATURES_WORD2 | BR_FEATURES_CHAR | BR_FEATURES_STRUCT))) {
        return -1;
    }
    *flags = f;
    return 0;
}

/* "--name value" or "--name=value". */
static int opt_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) == 0 && a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (strcmp(a, name) == 0) {
        if (*i + 1 >= argc) {
            *out = NULL;
            return -1;
        }
        *out = argv[++*i];
        return 1;
    }
    return 0;
}

/* "MIN-MAX": two decimal numbers within 1..max, MIN <= MAX. */
static int parse_range(const char *s, unsigned long max, unsigned *lo, unsigned *hi)
{
    char *end = NULL;
    if (*s < '0' || *s > '9') {
        return -1;
    }
    errno = 0;
    unsigned long a = strtoul(s, &end, 10);
    if (errno != 0 || *end != '-') {
        return -1;
    }
    unsigned long b = 0;
    if (parse_uint(end + 1, max, &b) != 0 || a < 1 || b < a) {
        return -1;
    }
    *lo = (unsigned)a;
    *hi = (unsigned)b;
    return 0;
}

/* Handlers of the options that take a value: 0, or usage_error()'s code. */
static int opt_strong(struct cli *c, const char *v)
{
    c->strong = v;
    return 0;
}

static int opt_weak(struct cli *c, const char *v)
{
    c->weak = v;
    return 0;
}

static int opt_out(struct cli *c, const char *v)
{
    c->out = v;
    return 0;
}

static int opt_csv(struct cli *c, const char *v)
{
    c->csv = v;
    return 0;
}

static int opt_models(struct cli *c, const char *v)
{
    c->models = v;
    return 0;
}

static int opt_label(struct cli *c, const char *v)
{
    if (br_train_label_parse(v, &c->opts.label) != BR_OK) {
        return usage_error("unknown label '%s' (soft, gain, weak-wrong, diff)", v);
    }
    return 0;
}

static int opt_c(struct cli *c, const char *v)
{
    if (parse_double(v, &c->opts.c) != 0 || c->opts.c <= 0 || c->opts.c > 1e6) {
        return usage_error("--c needs a positive number");
    }
    return 0;
}

static int opt_folds(struct cli *c, const char *v)
{
    unsigned long u = 0;
    if (parse_uint(v, 100, &u) != 0 || u < 2) {
        return usage_error("--folds needs a number from 2 to 100");
    }
    c->folds = (unsigned)u;
    return 0;
}

static int opt_seed(struct cli *c, const char *v)
{
    unsigned long u = 0;
    if (parse_uint(v, 0xffffffffUL, &u) != 0) {
        return usage_error("--seed needs a non-negative integer");
    }
    c->opts.seed = u;
    return 0;
}

static int opt_bits(struct cli *c, const char *v)
{
    unsigned long u = 0;
    if (parse_uint(v, BR_FEATURES_MAX_BITS, &u) != 0 || u < BR_FEATURES_MIN_BITS) {
        return usage_error("--bits needs a number from %d to %d", BR_FEATURES_MIN_BITS,
                           BR_FEATURES_MAX_BITS);
    }
    c->opts.features.hash_bits = (uint32_t)u;
    return 0;
}

static int opt_features(struct cli *c, const char *v)
{
    if (parse_features(v, &c->opts.features.flags) != 0) {
        return usage_error("bad --features '%s' (words, bigrams, chars, struct, nums)", v);
    }
    return 0;
}

static int opt_chars(struct cli *c, const char *v)
{
    unsigned lo = 0;
    unsigned hi = 0;
    if (parse_range(v, BR_FEATURES_MAX_CHAR, &lo, &hi) != 0) {
        return usage_error("--chars needs MIN-MAX within 1-%d", BR_FEATURES_MAX_CHAR);
    }
    c->opts.features.char_min = lo;
    c->opts.features.char_max = hi;
    return 0;
}

static int opt_max_bytes(struct cli *c, const char *v)
{
    unsigned long u = 0;
    if (parse_uint(v, BR_FEATURES_MAX_WINDOW, &u) != 0 || u < 64) {
        return usage_error("--max-bytes needs a number from 64 to %u", BR_FEATURES_MAX_WINDOW);
    }
    c->opts.features.max_bytes = (uint32_t)u;
    return 0;
}

static int opt_solver(struct cli *c, const char *v)
{
    /* liblinear's solver_type values (linear.h): L2R_LR, L1R_LR, L2R_LR_DUAL */
    static const struct {
        const char *name;
        int solver;
    } solvers[] = {{"lr", 0}, {"l1", 6}, {"lr-dual", 7}};
    for (size_t k = 0; k < sizeof(solvers) / sizeof(solvers[0]); k++) {
        if (strcmp(v, solvers[k].name) == 0) {
            c->opts.solver = solvers[k].solver;
            return 0;
        }
    }
    return usage_error("unknown solver '%s' (lr, l1, lr-dual)", v);
}

static int opt_inner_folds(struct cli *c, const char *v)
{
    unsigned long u = 0;
    if (parse_uint(v, 20, &u) != 0 || u < 2) {
        return usage_error("--inner-folds needs a number from 2 to 20");
    }
    c->opts.inner_folds = (unsigned)u;
    return 0;
}

static int opt_format(struct cli *c, const char *v)
{
    if (br_dataset_format_parse(v, &c->format) != BR_OK) {
        return usage_error("unknown format '%s'", v);
    }
    return 0;
}

static int opt_contaminated(struct cli *c, const char *v)
{
    c->contaminated = strcmp(v, "none") == 0 ? "" : v;
    return 0;
}

static const struct {
    const char *name;
    int (*set)(struct cli *c, const char *v);
} value_options[] = {
    {"--strong", opt_strong},
    {"--weak", opt_weak},
    {"--out", opt_out},
    {"--csv", opt_csv},
    {"--models", opt_models},
    {"--label", opt_label},
    {"--c", opt_c},
    {"--folds", opt_folds},
    {"--seed", opt_seed},
    {"--bits", opt_bits},
    {"--features", opt_features},
    {"--chars", opt_chars},
    {"--max-bytes", opt_max_bytes},
    {"--solver", opt_solver},
    {"--inner-folds", opt_inner_folds},
    {"--format", opt_format},
    {"--contaminated", opt_contaminated},
};

/* An option without a value: true when a is one (and it was applied). */
static bool parse_flag(struct cli *c, const char *a)
{
    if (strcmp(a, "--n-model") == 0) {
        c->opts.kind = BR_TRAIN_NMODEL;
    } else if (strcmp(a, "--verifier") == 0) {
        c->opts.kind = BR_TRAIN_VERIFIER;
    } else if (strcmp(a, "--leave-one-out") == 0) {
        c->leave_one_out = 1;
    } else if (strcmp(a, "--no-model") == 0) {
        c->no_model = 1;
    } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
        c->quiet = 1;
    } else {
        return false;
    }
    return true;
}

/* argv[*i] (with its value, which advances *i): 0, or usage_error()'s code. */
static int parse_option(struct cli *c, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    for (size_t k = 0; k < sizeof(value_options) / sizeof(value_options[0]); k++) {
        const char *v = NULL;
        int r = opt_value(argc, argv, i, value_options[k].name, &v);
        if (r < 0) {
            return usage_error("%s needs a value", value_options[k].name);
        }
        if (r > 0) {
            return value_options[k].set(c, v);
        }
    }
    if (parse_flag(c, a)) {
        return 0;
    }
    if (a[0] == '-' && a[1] != '\0') {
        return usage_error("unknown option '%s'", a);
    }
    if (c->n_datasets >= MAX_DATASETS) {
        return usage_error("at most %d datasets", MAX_DATASETS);
    }
    c->datasets[c->n_datasets++] = a;
    return 0;
}

static int parse_args(struct cli *c, int argc, char **argv)
{
    memset(c, 0, sizeof(*c));
    br_train_opts_default(&c->opts);
    c->strong = DEFAULT_STRONG;
    c->weak = DEFAULT_WEAK;
    c->opts.progress = on_progress;
    c->opts.progress_user = c;
    size_t used = 0;
    for (int i = 0; i < argc; i++) {
        int n =
            snprintf(c->cmdline + used, sizeof(c->cmdline) - used, "%s%s", i ? " " : "", argv[i]);
        if (n > 0 && (size_t)n < sizeof(c->cmdline) - used) {
            used += (size_t)n;
        }
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            (void)fputs(usage_text, stdout);
            return 0;
        }
        int code = parse_option(c, argc, argv, &i);
        if (code != 0) {
            return code;
        }
    }
    if (c->n_datasets == 0) {
        return usage_error("no dataset given");
    }
    if (!c->out && !c->no_model) {
        return usage_error("--out FILE is required (or --no-model to evaluate only)");
    }
    if (c->leave_one_out && c->n_datasets < 2) {
        return usage_error("--leave-one-out needs at least two datasets");
    }
    if (c->opts.kind == BR_TRAIN_NMODEL && c->opts.label != BR_TRAIN_LABEL_SOFT) {
        return usage_error("--label applies to binary routers");
    }
    if (c->opts.kind == BR_TRAIN_VERIFIER && c->opts.label == BR_TRAIN_LABEL_DIFF) {
        return usage_error("verifiers use --label soft, gain or weak-wrong");
    }
    return -1;
}

/* ---- loading ---- */

struct loaded {
    struct br_dataset *ds[MAX_DATASETS];
    struct br_eval_task *task[MAX_DATASETS];
    size_t n;
};

static void loaded_free(struct loaded *l)
{
    for (size_t i = 0; i < l->n; i++) {
        br_eval_task_free(l->task[i]);
        br_dataset_free(l->ds[i]);
    }
}

/* Index in ds of the first of the comma-separated names, or -1. */
static int find_model(const struct br_dataset *ds, const char *aliases)
{
    const char *p = aliases;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        for (size_t m = 0; m < ds->n_models; m++) {
            if (strlen(ds->models[m]) == n && strncasecmp(ds->models[m], p, n) == 0) {
                return (int)m;
            }
        }
        if (!e) {
            break;
        }
        p = e + 1;
    }
    return -1;
}

static int load_binary(const struct cli *c, struct loaded *l, struct br_train_data *d)
{
    char err[512];
    static const char *const names[2] = {"strong", "weak"};
    int rc = br_train_data_init(d, 2, names);
    if (rc != BR_OK) {
        return 1;
    }
    for (size_t i = 0; i < c->n_datasets; i++) {
        struct br_dataset_opts lo = {
            .format = c->format,
            .contaminated = c->contaminated,
            .keep_responses = c->opts.kind == BR_TRAIN_VERIFIER,
        };
        err[0] = 0;
        rc = br_dataset_load(c->datasets[i], &lo, &l->ds[l->n], err, sizeof(err));
        if (rc != BR_OK) {
            (void)fprintf(stderr, "brigade train: %s\n", err[0] ? err : br_strerror(rc));
            return 1;
        }
        struct br_dataset *ds = l->ds[l->n++];
        int s = find_model(ds, c->strong);
        int w = find_model(ds, c->weak);
        if (s < 0 || w < 0 || s == w) {
            (void)fprintf(stderr, "brigade train: %s: no model named %s (models:", c->datasets[i],
                          s < 0 ? c->strong : c->weak);
            for (size_t m = 0; m < ds->n_models; m++) {
                (void)fprintf(stderr, " %s", ds->models[m]);
            }
            (void)fputs("); use --strong and --weak\n", stderr);
            return 2;
        }
        struct br_eval_task_opts to = {0};
        rc = br_eval_task_make(ds, (size_t)s, (size_t)w, &to, &l->task[l->n - 1], NULL, err,
                               sizeof(err));
        if (rc == BR_OK) {
            rc = br_train_data_add_task(d, l->task[l->n - 1], c->opts.kind == BR_TRAIN_VERIFIER,
                                        err, sizeof(err));
        }
        if (rc != BR_OK) {
            (void)fprintf(stderr, "brigade train: %s: %s\n", c->datasets[i],
                          err[0] ? err : br_strerror(rc));
            return 1;
        }
        if (!c->quiet) {
            (void)fprintf(stderr,
                          "brigade train: %s: %zu prompts (%zu contaminated dropped), "
                          "strong %s, weak %s\n",
                          ds->name, l->task[l->n - 1]->n, ds->n_dropped, ds->models[s],
                          ds->models[w]);
        }
    }
    return 0;
}

/* Loads every dataset into l (all models kept): 0, or 1 after printing why. */
static int load_all(const struct cli *c, struct loaded *l)
{
    char err[512];
    for (size_t i = 0; i < c->n_datasets; i++) {
        struct br_dataset_opts lo = {.format = c->format, .contaminated = c->contaminated};
        err[0] = 0;
        int rc = br_dataset_load(c->datasets[i], &lo, &l->ds[l->n], err, sizeof(err));
        if (rc != BR_OK) {
            (void)fprintf(stderr, "brigade train: %s\n", err[0] ? err : br_strerror(rc));
            return 1;
        }
        l->n++;
    }
    return 0;
}

/*
 * The N-model candidates into names[0..*n): the comma-separated --models, cut in place in
 * *list (a copy the caller frees), or every model of the first dataset. 0, 1 (out of memory)
 * or usage_error()'s code.
 */
static int nmodel_names(const struct cli *c, const struct loaded *l, char **list,
                        const char **names, size_t *n)
{
    *n = 0;
    if (!c->models) {
        const struct br_dataset *ds = l->ds[0];
        if (ds->n_models > BR_TRAIN_MAX_MODELS) {
            return usage_error("%s has %zu models; choose at most %d with --models", ds->name,
                               ds->n_models, BR_TRAIN_MAX_MODELS);
        }
        for (size_t m = 0; m < ds->n_models; m++) {
            names[(*n)++] = ds->models[m];
        }
        return 0;
    }
    *list = br_strdup(c->models);
    if (!*list) {
        return 1;
    }
    for (char *p = *list; p && *p;) {
        char *e = strchr(p, ',');
        if (e) {
            *e = 0;
        }
        if (*n >= BR_TRAIN_MAX_MODELS) {
            return usage_error("at most %d models", BR_TRAIN_MAX_MODELS);
        }
        names[(*n)++] = p;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

static int load_nmodel(const struct cli *c, struct loaded *l, struct br_train_data *d)
{
    char err[512];
    const char *names[BR_TRAIN_MAX_MODELS];
    char *list = NULL;
    size_t n = 0;
    int code = load_all(c, l);
    if (code == 0) {
        code = nmodel_names(c, l, &list, names, &n);
    }
    if (code != 0) {
        goto out;
    }
    if (n < 2) {
        code = usage_error("N-model routing needs at least two models");
        goto out;
    }
    code = 1;
    if (br_train_data_init(d, n, names) != BR_OK) {
        goto out;
    }
    for (size_t i = 0; i < l->n; i++) {
        err[0] = 0; /* out of memory leaves it unwritten */
        int rc = br_train_data_add(d, l->ds[i], names, -1, err, sizeof(err));
        if (rc != BR_OK) {
            (void)fprintf(stderr, "brigade train: %s\n", err[0] ? err : br_strerror(rc));
            goto out;
        }
    }
    code = 0;
out:
    br_free(list);
    return code;
}

/* ---- reports ---- */

static void print_binary(const char *title, const double *scores, const struct br_train_data *d,
                         const size_t *rows, size_t n, int cascade, double *thr_out)
{
    double *s = br_calloc(n ? n : 1, sizeof(double));
    double *qs = br_calloc(n ? n : 1, sizeof(double));
    double *qw = br_calloc(n ? n : 1, sizeof(double));
    double *cs = br_calloc(n ? n : 1, sizeof(double));
    double *cw = br_calloc(n ? n : 1, sizeof(double));
    int costed = 1;
    struct br_eval_result r;
    memset(&r, 0, sizeof(r));
    if (!s || !qs || !qw || !cs || !cw) {
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        size_t k = rows[i];
        s[i] = scores[k];
        qs[i] = d->quality[k * 2];
        qw[i] = d->quality[k * 2 + 1];
        cs[i] = d->cost[k * 2];
        cw[i] = d->cost[k * 2 + 1];
        if (isnan(cs[i]) || isnan(cw[i])) {
            costed = 0;
        }
    }
    if (costed && cascade) {
        for (size_t i = 0; i < n; i++) {
            cs[i] += cw[i]; /* escalation pays for both calls */
        }
    }
    if (br_eval_binary(s, qs, qw, costed ? cs : NULL, costed ? cw : NULL, n, &r) != BR_OK) {
        (void)printf("%-28s (cannot evaluate)\n", title);
        goto out;
    }
    (void)printf("%-28s %6zu  %.3f  %.3f  %.4f  %6.1f%%  %6.1f%%  %6.1f%%  %7.1f%%", title, n,
                 r.q_weak, r.q_strong, r.apgr, 100 * r.cpt50, 100 * r.cpt80, 100 * r.cpt95,
                 100 * r.p_strong_at_q95);
    if (costed) {
        (void)printf("  %.3f\n", r.cost_at_q95_ratio);
    } else {
        (void)printf("  %5s\n", "-");
    }
    if (thr_out) {
        *thr_out = r.threshold_at_q95;
    }
out:
    br_eval_result_cleanup(&r);
    br_free(s);
    br_free(qs);
    br_free(qw);
    br_free(cs);
    br_free(cw);
}

static void report_binary(const struct cli *c, const struct br_train_data *d, const double *scores,
                          const char *what, double *thr_out)
{
    size_t *rows = br_calloc(d->n ? d->n : 1, sizeof(size_t));
    if (!rows) {
        return;
    }
    int cascade = c->opts.kind == BR_TRAIN_VERIFIER;
    (void)printf("\n%s (%s%s)\n", what, cascade ? "cascade verifier, label " : "label ",
                 br_train_label_name(c->opts.label));
    (void)printf("%-28s %6s  %5s  %5s  %6s  %7s  %7s  %7s  %8s  %s\n", "dataset", "n", "Q_w", "Q_s",
                 "APGR", "CPT50", "CPT80", "CPT95", "p_H@Q95",
                 cascade ? "cascade cost@Q95/strong" : "cost@Q95/strong");
    for (size_t s = 0; s < d->n_sources; s++) {
        size_t n = 0;
        for (size_t i = 0; i < d->n; i++) {
            if (d->source[i] == s) {
                rows[n++] = i;
            }
        }
        print_binary(d->source_names[s], scores, d, rows, n, cascade,
                     d->n_sources == 1 ? thr_out : NULL);
    }
    if (d->n_sources > 1) {
        for (size_t i = 0; i < d->n; i++) {
            rows[i] = i;
        }
        print_binary("(all, pooled)", scores, d, rows, d->n, cascade, thr_out);
    }
    br_free(rows);
}

/* One operating point of an N-model policy. */
struct npoint {
    double quality;
    double cost;
};

static struct npoint nmodel_point(const struct br_train_data *d, const double *pred,
                                  const double *mean_cost, double margin, double lambda,
                                  size_t *counts)
{
    struct npoint p = {0, 0};
    size_t k = d->n_models;
    size_t n = 0;
    double q[BR_TRAIN_MAX_MODELS];
    for (size_t i = 0; i < d->n; i++) {
        for (size_t m = 0; m < k; m++) {
            /* a model whose outcome is unknown on this prompt cannot be evaluated there */
            q[m] = isnan(d->quality[i * k + m]) ? NAN : pred[i * k + m];
        }
        size_t pick;
        if (br_classifier_choose(q, mean_cost, k, margin, lambda, &pick) != BR_OK) {
            continue;
        }
        double cost = d->cost[i * k + pick];
        p.quality += d->quality[i * k + pick];
        p.cost += isnan(cost) ? mean_cost[pick] : cost;
        if (counts) {
            counts[pick]++;
        }
        n++;
    }
    if (n) {
        p.quality /= (double)n;
        p.cost /= (double)n;
    }
    return p;
}

/* Mean recorded quality and cost of model m over the rows where each is known (NaN: none). */
static struct npoint model_mean(const struct br_train_data *d, size_t m)
{
    size_t k = d->n_models;
    double sq = 0;
    double sc = 0;
    size_t nq = 0;
    size_t nc = 0;
    for (size_t i = 0; i < d->n; i++) {
        double q = d->quality[i * k + m];
        double c = d->cost[i * k + m];
        if (!isnan(q)) {
            sq += q;
            nq++;
        }
        if (!isnan(c)) {
            sc += c;
            nc++;
        }
    }
    struct npoint p = {nq ? sq / (double)nq : NAN, nc ? sc / (double)nc : NAN};
    return p;
}

/* The oracle: on each prompt, the cheapest (by mean cost) of the models with its best recorded
 * quality; averaged over all rows. */
static struct npoint oracle_point(const struct br_train_data *d, const double *mean_cost)
{
    size_t k = d->n_models;
    double oq = 0;
    double oc = 0;
    for (size_t i = 0; i < d->n; i++) {
        const double *q = d->quality + i * k;
        size_t pick = k;
        for (size_t m = 0; m < k; m++) {
            if (isnan(q[m])) {
                continue;
            }
            if (pick == k || q[m] > q[pick] ||
                (q[m] == q[pick] && mean_cost[m] < mean_cost[pick])) {
                pick = m;
            }
        }
        if (pick < k) {
            oq += q[pick];
            oc += isnan(d->cost[i * k + pick]) ? mean_cost[pick] : d->cost[i * k + pick];
        }
    }
    struct npoint p = {oq / (double)d->n, oc / (double)d->n};
    return p;
}

/* The cheapest policy point whose quality reaches the best single model's. */
struct cheapest {
    double best_q; /* the best single model's quality */
    double cost;   /* NaN until a point reaches it */
    double quality;
};

static void cheapest_see(struct cheapest *ch, struct npoint p)
{
    if (p.quality >= ch->best_q - 1e-12 && (isnan(ch->cost) || p.cost < ch->cost)) {
        ch->cost = p.cost;
        ch->quality = p.quality;
    }
}

static void report_nmodel(const struct br_train_data *d, const double *pred)
{
    size_t k = d->n_models;
    double mean_cost[BR_TRAIN_MAX_MODELS];
    double mean_q[BR_TRAIN_MAX_MODELS];
    double best_cost = 0;
    size_t best = 0;
    struct cheapest ch = {.best_q = -1, .cost = NAN, .quality = NAN};
    for (size_t m = 0; m < k; m++) {
        struct npoint mm = model_mean(d, m);
        mean_q[m] = mm.quality;
        mean_cost[m] = mm.cost;
        if (mean_q[m] > ch.best_q) {
            ch.best_q = mean_q[m];
            best_cost = mean_cost[m];
            best = m;
        }
    }
    (void)printf("\nN-model routing, cross-validated (cost: recorded USD per prompt)\n");
    (void)printf("single models:\n");
    for (size_t m = 0; m < k; m++) {
        (void)printf("  %-40s quality %.3f  cost $%.6f\n", d->models[m], mean_q[m], mean_cost[m]);
    }
    struct npoint oracle = oracle_point(d, mean_cost);
    (void)printf("  %-40s quality %.3f  cost $%.6f\n", "(oracle)", oracle.quality, oracle.cost);
    (void)printf("policy: maximise predicted quality - lambda * cost (USD per prompt)\n");
    (void)printf("  %12s  %7s  %11s  %8s\n", "lambda", "quality", "cost", "cost/best");
    for (int j = -1; j <= 40; j++) {
        double lambda = j < 0 ? 0.0 : pow(10.0, (double)j / 5.0);
        struct npoint p = nmodel_point(d, pred, mean_cost, 0.0, lambda, NULL);
        (void)printf("  %12.4g  %7.3f  $%10.6f  %8.3f\n", lambda, p.quality, p.cost,
                     p.cost / best_cost);
        cheapest_see(&ch, p);
    }
    (void)printf("policy: cheapest model predicted within a margin of the best\n");
    static const double margins[] = {0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3};
    for (size_t j = 0; j < sizeof(margins) / sizeof(margins[0]); j++) {
        size_t counts[BR_TRAIN_MAX_MODELS] = {0};
        struct npoint p = nmodel_point(d, pred, mean_cost, margins[j], 0.0, counts);
        (void)printf("  margin %.2f  quality %.3f  cost $%.6f  cost/best %.3f\n", margins[j],
                     p.quality, p.cost, p.cost / best_cost);
        cheapest_see(&ch, p);
    }
    if (!isnan(ch.cost)) {
        (void)printf("cheapest policy point with quality >= the best single model (%s, %.3f): "
                     "quality %.3f at %.3f x its cost\n",
                     d->models[best], ch.best_q, ch.quality, ch.cost / best_cost);
    } else {
        (void)printf("no policy point reaches the best single model's quality (%s, %.3f)\n",
                     d->models[best], ch.best_q);
    }
}

static int write_csv(const char *path, const struct br_train_data *d, const double *scores,
                     size_t n_out)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        (void)fprintf(stderr, "brigade train: cannot write %s\n", path);
        return 1;
    }
    (void)fputs("index,dataset", f);
    for (size_t o = 0; o < n_out; o++) {
        (void)fprintf(f, ",score_%s", n_out == 1 ? "strong" : d->models[o]);
    }
    for (size_t m = 0; m < d->n_models; m++) {
        (void)fprintf(f, ",quality_%s", d->models[m]);
    }
    (void)fputc('\n', f);
    for (size_t i = 0; i < d->n; i++) {
        (void)fprintf(f, "%zu,%s", i, d->source_names[d->source[i]]);
        for (size_t o = 0; o < n_out; o++) {
            (void)fprintf(f, ",%.6f", scores[i * n_out + o]);
        }
        for (size_t m = 0; m < d->n_models; m++) {
            (void)fprintf(f, ",%g", d->quality[i * d->n_models + m]);
        }
        (void)fputc('\n', f);
    }
    return fclose(f) == 0 ? 0 : 1;
}

/* ---- main flow ---- */

/* Prints a failed step's error: err when the step wrote one, rc's name otherwise. */
static int fail(const char *err, int rc)
{
    (void)fprintf(stderr, "brigade train: %s\n", err[0] ? err : br_strerror(rc));
    return 1;
}

/*
 * --folds: k-fold scores into scores, their report and --csv; for binary kinds the threshold
 * reaching 95% of the strong model's quality goes into *threshold and the notes (notes_len
 * bytes of notes are used). 0 or 1.
 */
static int cross_validate(const struct cli *c, struct br_train_data *d, double *scores,
                          size_t n_out, char *notes, size_t notes_size, int notes_len,
                          double *threshold)
{
    char err[512] = "";
    if (!c->quiet) {
        (void)fprintf(stderr, "brigade train: %u-fold cross-validation of %zu rows\n", c->folds,
                      d->n);
    }
    int rc = br_train_cv(d, &c->opts, c->folds, scores, NULL, err, sizeof(err));
    if (rc != BR_OK) {
        return fail(err, rc);
    }
    if (c->opts.kind == BR_TRAIN_NMODEL) {
        report_nmodel(d, scores);
    } else {
        char what[64];
        (void)snprintf(what, sizeof(what), "%u-fold cross-validation", c->folds);
        report_binary(c, d, scores, what, threshold);
        if (notes_len > 0 && (size_t)notes_len < notes_size) {
            (void)snprintf(notes + notes_len, notes_size - (size_t)notes_len,
                           "cv %u folds: threshold at Q95 %.6f\n", c->folds, *threshold);
        }
    }
    if (c->csv && write_csv(c->csv, d, scores, n_out) != 0) {
        return 1;
    }
    return 0;
}

/* --leave-one-out: scores of each dataset by a model trained on the others, and their report.
 * 0 or 1. */
static int leave_one_out(const struct cli *c, struct br_train_data *d, double *scores)
{
    char err[512] = "";
    int rc = br_train_cv_sources(d, &c->opts, scores, err, sizeof(err));
    if (rc != BR_OK) {
        return fail(err, rc);
    }
    if (c->opts.kind == BR_TRAIN_NMODEL) {
        report_nmodel(d, scores);
    } else {
        report_binary(c, d, scores,
                      "leave-one-dataset-out (each scored by a model trained "
                      "on the others)",
                      NULL);
    }
    return 0;
}

/* Fits the final model on every row and writes it to --out with the notes. 0 or 1. */
static int save_model(const struct cli *c, struct br_train_data *d, const char *notes,
                      double threshold)
{
    char err[512] = "";
    struct br_train_model m;
    if (!c->quiet) {
        (void)fprintf(stderr, "brigade train: fitting the final model on all %zu rows\n", d->n);
    }
    /* br_train_fit() zeroes m first: it can be cleaned up on every path */
    int rc = br_train_fit(d, NULL, 0, &c->opts, &m, err, sizeof(err));
    if (rc == BR_OK) {
        m.threshold = threshold;
        struct br_classifier_spec spec;
        br_train_model_spec(&m, notes, &spec);
        rc = br_classifier_save(&spec, c->out, err, sizeof(err));
    }
    if (rc != BR_OK) {
        br_train_model_cleanup(&m);
        return fail(err, rc);
    }
    (void)printf("\nwrote %s (%s, %zu weight set%s, C=%g, 2^%u buckets)\n", c->out,
                 c->opts.kind == BR_TRAIN_NMODEL     ? "n-model"
                 : c->opts.kind == BR_TRAIN_VERIFIER ? "verifier"
                                                     : "binary",
                 m.n_sets, m.n_sets == 1 ? "" : "s", m.c[0], c->opts.features.hash_bits);
    br_train_model_cleanup(&m);
    return 0;
}

static int run(struct cli *c)
{
    struct loaded l;
    struct br_train_data d;
    char notes[4096];
    double *scores = NULL;
    double threshold = NAN;
    int code;
    memset(&l, 0, sizeof(l));
    memset(&d, 0, sizeof(d));
    code = c->opts.kind == BR_TRAIN_NMODEL ? load_nmodel(c, &l, &d) : load_binary(c, &l, &d);
    if (code != 0) {
        goto out;
    }
    size_t n_out = c->opts.kind == BR_TRAIN_NMODEL ? d.n_models : 1;
    scores = br_calloc(d.n * n_out + 1, sizeof(double));
    if (!scores) {
        code = 1;
        goto out;
    }
    int notes_len = snprintf(notes, sizeof(notes), "brigade train %s\nrows %zu\n", c->cmdline, d.n);
    if (c->folds) {
        code = cross_validate(c, &d, scores, n_out, notes, sizeof(notes), notes_len, &threshold);
    }
    if (code == 0 && c->leave_one_out) {
        code = leave_one_out(c, &d, scores);
    }
    if (code == 0 && !c->no_model) {
        code = save_model(c, &d, notes, threshold);
    }
out:
    br_train_data_cleanup(&d);
    loaded_free(&l);
    br_free(scores);
    return code;
}

int br_train_cli(int argc, char **argv)
{
    struct cli *c = br_calloc(1, sizeof(*c));
    if (!c) {
        (void)fputs("brigade train: out of memory\n", stderr);
        return 1;
    }
    int code = parse_args(c, argc, argv);
    if (code < 0) {
        code = run(c);
    }
    br_free(c);
    return code;
}
