/* SPDX-License-Identifier: MIT */
/*
 * `brigade calibrate`: chooses a route's threshold on labelled data. The router scores every
 * prompt (cross-validated when it is trained here, so that no prompt is scored by a model that
 * saw it); every boundary between distinct scores is a candidate threshold; the objective picks
 * one:
 *
 *   --quality-min Q      minimise E[C] = p_H·C_H + (1 − p_H)·C_L subject to Q >= Q_min
 *                        (Q absolute, or "95%" of the strong model's quality)
 *   --p-strong X         the threshold that sends a share X of prompts to the strong model
 *   --budget USD         maximise Q subject to E[C] <= USD per request
 *
 * Expected p_H, Q and E[C] at that threshold come with percentile bootstrap intervals
 * (prompts resampled with replacement, seeded), as does the threshold itself (re-chosen on each
 * resample), and the share of resamples in which the quality floor holds. With --write the
 * threshold is written into the route in the config file, everything else in the file kept.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/alloc.h"
#include "core/err.h"
#include "core/rand.h"
#include "core/slice.h"
#include "eval/calibrate_cli.h"
#include "eval/dataset.h"
#include "eval/eval.h"
#include "eval/eval_int.h"
#include "eval/eval_router.h"

#define MAX_PRICES 64

static const char usage_text[] =
    "usage: brigade calibrate DATASET --strong MODEL --weak MODEL\n"
    "                         (--quality-min Q|Q% | --p-strong SHARE | --budget USD)\n"
    "                         [--router NAME] [--model FILE] [--scores CSV] [--folds K]\n"
    "                         [--bootstrap N] [--seed S] [--price MODEL=IN/OUT ...]\n"
    "                         [--contaminated FILE|none] [--json]\n"
    "                         [-c CONFIG --route NAME [--key PATH] [--write]]\n"
    "\n"
    "Chooses the threshold of a routing policy (strong model when score >= threshold) on\n"
    "recorded outcomes (any dataset `brigade eval` reads), for one objective:\n"
    "  --quality-min Q    cheapest threshold whose quality is at least Q (0..1), or Q% of\n"
    "                     the strong model's quality (e.g. 95%): minimises\n"
    "                     E[C] = p_H*C_H + (1 - p_H)*C_L subject to Q >= Q_min\n"
    "  --p-strong SHARE   the threshold that sends SHARE (0..1) of prompts to the strong model\n"
    "  --budget USD       the best quality whose mean cost per request is at most USD\n"
    "\n"
    "The router is `classifier` with --model FILE (a model from `brigade train`) by default;\n"
    "without --model a learned router is trained and scored with K-fold cross-validation\n"
    "(--folds, default 5) so that no prompt is scored by a model that saw it. Any router of\n"
    "`brigade eval` works, e.g. --router scores --scores FILE.csv for an external router.\n"
    "Costs: recorded ones, --price MODEL=IN/OUT (USD per million tokens), or RouteLLM's\n"
    "blended defaults for GPT-4 and Mixtral (see `brigade eval --help`).\n"
    "\n"
    "The report gives the threshold, p_H, Q and E[C] at it with 95% percentile bootstrap\n"
    "intervals (--bootstrap N resamples of the prompts, default 1000; --seed S), the interval\n"
    "of the threshold itself when re-chosen on each resample, and how often the quality floor\n"
    "holds. With -c CONFIG --route NAME --write the threshold is written into the config file\n"
    "at routes[NAME].classifier.threshold (--key PATH for another place), keeping every other\n"
    "byte of the file; a running gateway picks it up on SIGHUP. With -c and --route and no\n"
    "--model, --router or --scores, the route's own classifier model file is calibrated.\n";

enum objective {
    OBJ_NONE,
    OBJ_QMIN_ABS,
    OBJ_QMIN_REL,
    OBJ_P_STRONG,
    OBJ_BUDGET,
};

struct cli {
    const char *dataset;
    const char *strong;
    const char *weak;
    const char *router;
    const char *model;
    const char *scores;
    const char *contaminated;
    const char *config;
    const char *route;
    const char *key;
    unsigned folds;
    unsigned bootstrap;
    uint64_t seed;
    enum objective obj;
    double value;
    bool write;
    bool json;
    struct br_eval_price prices[MAX_PRICES];
    size_t n_prices;
};

/* The rows of the task with what a threshold needs, sorted by score, highest first. */
struct rows {
    size_t n;
    double *score;
    double *qs;
    double *qw;
    double *cs;
    double *cw;
};

struct pick {
    size_t k;         /* prompts sent to the strong model (the k highest scores) */
    double threshold; /* strong when score >= threshold */
    double p_strong;
    double quality;
    double cost;
    bool feasible; /* the objective's constraint holds */
};

static int usage_error(const char *msg, const char *arg)
{
    (void)fprintf(stderr, "brigade calibrate: %s%s%s (see 'brigade calibrate --help')\n", msg,
                  arg ? " " : "", arg ? arg : "");
    return 2;
}

static int parse_double(const char *s, double *out)
{
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !isfinite(v)) {
        return BR_ERR_PARSE;
    }
    *out = v;
    return BR_OK;
}

static int parse_objective(struct cli *c, const char *name, const char *v)
{
    if (c->obj != OBJ_NONE) {
        return usage_error("give one objective:", name);
    }
    size_t len = strlen(v);
    double x = 0;
    if (strcmp(name, "--quality-min") == 0 && len > 1 && v[len - 1] == '%') {
        char buf[64];
        if (len >= sizeof(buf)) {
            return usage_error("bad --quality-min", v);
        }
        memcpy(buf, v, len - 1);
        buf[len - 1] = '\0';
        if (parse_double(buf, &x) != BR_OK || x <= 0 || x > 100) {
            return usage_error("--quality-min wants 0..1 or a percentage, got", v);
        }
        c->obj = OBJ_QMIN_REL;
        c->value = x / 100.0;
        return 0;
    }
    if (parse_double(v, &x) != BR_OK) {
        return usage_error("not a number:", v);
    }
    if (strcmp(name, "--quality-min") == 0) {
        if (x < 0 || x > 1) {
            return usage_error("--quality-min wants 0..1 or a percentage, got", v);
        }
        c->obj = OBJ_QMIN_ABS;
    } else if (strcmp(name, "--p-strong") == 0) {
        if (x < 0 || x > 1) {
            return usage_error("--p-strong wants a share from 0 to 1, got", v);
        }
        c->obj = OBJ_P_STRONG;
    } else {
        if (x < 0) {
            return usage_error("--budget wants a non-negative USD amount, got", v);
        }
        c->obj = OBJ_BUDGET;
    }
    c->value = x;
    return 0;
}

static int parse_valued(struct cli *c, const char *name, const char *v)
{
    unsigned long long u = 0;
    if (strcmp(name, "--strong") == 0) {
        c->strong = v;
    } else if (strcmp(name, "--weak") == 0) {
        c->weak = v;
    } else if (strcmp(name, "--router") == 0) {
        c->router = v;
    } else if (strcmp(name, "--model") == 0) {
        c->model = v;
    } else if (strcmp(name, "--scores") == 0) {
        c->scores = v;
    } else if (strcmp(name, "--contaminated") == 0) {
        c->contaminated = v;
    } else if (strcmp(name, "-c") == 0 || strcmp(name, "--config") == 0) {
        c->config = v;
    } else if (strcmp(name, "--route") == 0) {
        c->route = v;
    } else if (strcmp(name, "--key") == 0) {
        c->key = v;
    } else if (strcmp(name, "--folds") == 0 || strcmp(name, "--bootstrap") == 0 ||
               strcmp(name, "--seed") == 0) {
        bool seed = strcmp(name, "--seed") == 0;
        if (br_slice_to_u64(br_slice_from_cstr(v), seed ? UINT64_MAX : 1000000, &u) != BR_OK ||
            (!seed && u == 0)) {
            return usage_error("bad number:", v);
        }
        if (seed) {
            c->seed = u;
        } else if (name[2] == 'f') {
            c->folds = (unsigned)u;
        } else {
            c->bootstrap = (unsigned)u;
        }
    } else if (strcmp(name, "--price") == 0) {
        if (c->n_prices == MAX_PRICES || br_eval_price_parse(v, &c->prices[c->n_prices]) != BR_OK) {
            return usage_error("bad --price (MODEL=IN/OUT in USD per million tokens):", v);
        }
        c->n_prices++;
    } else {
        return parse_objective(c, name, v);
    }
    return 0;
}

/* Options that take a value. */
static const char *const valued[] = {
    "--strong", "--weak",   "--router",      "--model",    "--scores", "--contaminated",
    "-c",       "--config", "--route",       "--key",      "--folds",  "--bootstrap",
    "--seed",   "--price",  "--quality-min", "--p-strong", "--budget",
};

/* argv[*i] as one of the valued options (consuming its value): *matched says whether it was
 * one; returns 0 or an exit code. */
static int parse_valued_at(struct cli *c, int argc, char **argv, int *i, bool *matched)
{
    const char *a = argv[*i];
    for (size_t k = 0; k < sizeof(valued) / sizeof(valued[0]); k++) {
        const char *v = NULL;
        int m = br__eval_opt(argc, argv, i, valued[k], &v);
        if (m < 0) {
            return usage_error("missing value after", a);
        }
        if (m > 0) {
            *matched = true;
            return parse_valued(c, valued[k], v);
        }
    }
    return 0;
}

static int parse_args(struct cli *c, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            (void)fputs(usage_text, stdout);
            return 1;
        }
        if (strcmp(a, "--write") == 0) {
            c->write = true;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            c->json = true;
            continue;
        }
        bool matched = false;
        int rc = parse_valued_at(c, argc, argv, &i, &matched);
        if (rc != 0) {
            return rc;
        }
        if (matched) {
            continue;
        }
        if (a[0] == '-' || c->dataset) {
            return usage_error("unknown argument", a);
        }
        c->dataset = a;
    }
    if (!c->dataset) {
        return usage_error("name a DATASET", NULL);
    }
    if (c->obj == OBJ_NONE) {
        return usage_error("give an objective: --quality-min, --p-strong or --budget", NULL);
    }
    if (c->write && (!c->config || !c->route)) {
        return usage_error("--write needs -c CONFIG and --route NAME", NULL);
    }
    return 0;
}

/* ---- the sweep ---- */

static const double *sort_key;

static int by_score_desc(const void *a, const void *b)
{
    double x = sort_key[*(const size_t *)a];
    double y = sort_key[*(const size_t *)b];
    return (x < y) - (x > y);
}

/* Sets p->feasible and says whether p beats best under the objective (best.k == SIZE_MAX: no
 * candidate yet). gap: |p_H - target| of best, for --p-strong. */
static bool is_better(enum objective obj, struct pick *p, const struct pick *best, double value,
                      double floor, double *gap)
{
    bool first = best->k == SIZE_MAX;
    switch (obj) {
    case OBJ_QMIN_ABS:
    case OBJ_QMIN_REL:
        p->feasible = p->quality >= floor - 1e-12;
        if (first || p->feasible != best->feasible) {
            return first || p->feasible;
        }
        if (!p->feasible) {
            return p->quality > best->quality;
        }
        return p->cost < best->cost || (p->cost == best->cost && p->quality > best->quality);
    case OBJ_BUDGET:
        p->feasible = p->cost <= value + 1e-15;
        if (first || p->feasible != best->feasible) {
            return first || p->feasible;
        }
        return p->feasible ? p->quality > best->quality : p->cost < best->cost;
    case OBJ_P_STRONG:
    default:
        p->feasible = true;
        if (fabs(p->p_strong - value) < *gap) {
            *gap = fabs(p->p_strong - value);
            return true;
        }
        return false;
    }
}

/* Chooses k under the objective over rows sorted by score (highest first). floor is the
 * absolute quality floor (for the quality objectives). */
static struct pick choose(const struct rows *r, enum objective obj, double value, double floor)
{
    size_t n = r->n;
    double sum_qw = 0;
    double sum_cw = 0;
    for (size_t i = 0; i < n; i++) {
        sum_qw += r->qw[i];
        sum_cw += r->cw[i];
    }
    /* prefix: the k highest-scoring prompts go to the strong model */
    double qs = 0;
    double qw = 0;
    double cs = 0;
    double cw = 0;
    struct pick best = {.k = SIZE_MAX};
    double best_gap = INFINITY;
    for (size_t k = 0; k <= n; k++) {
        if (k > 0) {
            qs += r->qs[k - 1];
            qw += r->qw[k - 1];
            cs += r->cs[k - 1];
            cw += r->cw[k - 1];
        }
        /* only between distinct scores: equal scores cannot be split by a threshold */
        if (k > 0 && k < n && r->score[k - 1] == r->score[k]) {
            continue;
        }
        struct pick p = {
            .k = k,
            .p_strong = (double)k / (double)n,
            .quality = (qs + (sum_qw - qw)) / (double)n,
            .cost = (cs + (sum_cw - cw)) / (double)n,
        };
        bool better = is_better(obj, &p, &best, value, floor, &best_gap);
        if (better) {
            best = p;
        }
    }
    /* A threshold between the k-th and (k+1)-th scores. */
    if (best.k == 0) {
        best.threshold = n ? r->score[0] + 1e-6 : 1.0;
    } else if (best.k >= n) {
        best.threshold = r->score[n - 1] - 1e-6;
    } else {
        best.threshold = (r->score[best.k - 1] + r->score[best.k]) / 2.0;
    }
    return best;
}

/* Mean quality and cost with the given threshold over rows idx[0..m). */
static void at_threshold(const struct rows *r, const size_t *idx, size_t m, double t,
                         double *p_strong, double *quality, double *cost)
{
    double ps = 0;
    double q = 0;
    double c = 0;
    for (size_t j = 0; j < m; j++) {
        size_t i = idx[j];
        bool strong = r->score[i] >= t;
        ps += strong;
        q += strong ? r->qs[i] : r->qw[i];
        c += strong ? r->cs[i] : r->cw[i];
    }
    *p_strong = ps / (double)m;
    *quality = q / (double)m;
    *cost = c / (double)m;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a;
    size_t y = *(const size_t *)b;
    return (x > y) - (x < y);
}

static double mean(const double *v, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        s += v[i];
    }
    return n ? s / (double)n : 0;
}

struct interval {
    double lo;
    double hi;
};

/* The 2.5th and 97.5th percentiles of v[0..n) (sorts v). */
static struct interval percentile95(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    size_t lo = (size_t)floor(0.025 * (double)(n - 1) + 0.5);
    size_t hi = (size_t)floor(0.975 * (double)(n - 1) + 0.5);
    return (struct interval){v[lo], v[hi]};
}

struct boot {
    struct interval p_strong;
    struct interval quality;
    struct interval cost;
    struct interval threshold;
    double floor_holds; /* share of resamples with quality >= floor at the chosen threshold */
};

/* Percentile bootstrap over prompts at the chosen threshold, plus the threshold re-chosen on
 * each resample. */
static int bootstrap(const struct rows *r, const struct cli *c, double floor, double t,
                     struct boot *out)
{
    size_t n = r->n;
    size_t b = c->bootstrap;
    int rc = BR_ERR_NOMEM;
    size_t *idx = br_calloc(n, sizeof(*idx));
    double *ps = br_calloc(b, sizeof(*ps));
    double *q = br_calloc(b, sizeof(*q));
    double *cost = br_calloc(b, sizeof(*cost));
    double *th = br_calloc(b, sizeof(*th));
    struct rows s = {.n = n};
    s.score = br_calloc(n, sizeof(double));
    s.qs = br_calloc(n, sizeof(double));
    s.qw = br_calloc(n, sizeof(double));
    s.cs = br_calloc(n, sizeof(double));
    s.cw = br_calloc(n, sizeof(double));
    if (!idx || !ps || !q || !cost || !th || !s.score || !s.qs || !s.qw || !s.cs || !s.cw) {
        goto out;
    }
    struct br_rng rng;
    br_rng_seed(&rng, c->seed ? c->seed : 1);
    size_t holds = 0;
    for (size_t k = 0; k < b; k++) {
        for (size_t j = 0; j < n; j++) {
            idx[j] = (size_t)(br_rng_uniform(&rng) * (double)n);
            if (idx[j] >= n) {
                idx[j] = n - 1;
            }
        }
        at_threshold(r, idx, n, t, &ps[k], &q[k], &cost[k]);
        holds += q[k] >= floor - 1e-12;
        /* the resample sorted by score (r is sorted, so sorting the indices keeps the order) */
        qsort(idx, n, sizeof(*idx), cmp_size);
        for (size_t j = 0; j < n; j++) {
            s.score[j] = r->score[idx[j]];
            s.qs[j] = r->qs[idx[j]];
            s.qw[j] = r->qw[idx[j]];
            s.cs[j] = r->cs[idx[j]];
            s.cw[j] = r->cw[idx[j]];
        }
        double f = c->obj == OBJ_QMIN_REL ? c->value * mean(s.qs, n) : floor;
        th[k] = choose(&s, c->obj, c->value, f).threshold;
    }
    out->p_strong = percentile95(ps, b);
    out->quality = percentile95(q, b);
    out->cost = percentile95(cost, b);
    out->threshold = percentile95(th, b);
    out->floor_holds = (double)holds / (double)b;
    rc = BR_OK;
out:
    br_free(idx);
    br_free(ps);
    br_free(q);
    br_free(cost);
    br_free(th);
    br_free(s.score);
    br_free(s.qs);
    br_free(s.qw);
    br_free(s.cs);
    br_free(s.cw);
    return rc;
}

/* ---- the command ---- */

static void rows_free(struct rows *r)
{
    br_free(r->score);
    br_free(r->qs);
    br_free(r->qw);
    br_free(r->cs);
    br_free(r->cw);
}

/* Copies the scored rows of the task into r, sorted by score (highest first). */
static int rows_make(const struct br_eval_task *t, const struct br_eval_run_out *run,
                     struct rows *r)
{
    size_t n = run->n_scored;
    size_t *order = br_calloc(n ? n : 1, sizeof(*order));
    memset(r, 0, sizeof(*r));
    r->n = n;
    r->score = br_calloc(n ? n : 1, sizeof(double));
    r->qs = br_calloc(n ? n : 1, sizeof(double));
    r->qw = br_calloc(n ? n : 1, sizeof(double));
    r->cs = br_calloc(n ? n : 1, sizeof(double));
    r->cw = br_calloc(n ? n : 1, sizeof(double));
    if (!order || !r->score || !r->qs || !r->qw || !r->cs || !r->cw) {
        br_free(order);
        rows_free(r);
        return BR_ERR_NOMEM;
    }
    size_t m = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (run->scored[i]) {
            order[m++] = i;
        }
    }
    sort_key = run->scores;
    qsort(order, m, sizeof(*order), by_score_desc);
    for (size_t j = 0; j < m; j++) {
        size_t i = order[j];
        r->score[j] = run->scores[i];
        r->qs[j] = t->q_strong[i];
        r->qw[j] = t->q_weak[i];
        r->cs[j] = t->c_strong ? t->c_strong[i] : 0;
        r->cw[j] = t->c_weak ? t->c_weak[i] : 0;
    }
    br_free(order);
    return BR_OK;
}

static const char *objective_text(const struct cli *c, double floor, char *buf, size_t n)
{
    switch (c->obj) {
    case OBJ_QMIN_REL:
        (void)snprintf(buf, n, "minimise E[C] subject to Q >= %.4f (%.4g%% of the strong model)",
                       floor, c->value * 100);
        break;
    case OBJ_QMIN_ABS:
        (void)snprintf(buf, n, "minimise E[C] subject to Q >= %.4f", floor);
        break;
    case OBJ_P_STRONG:
        (void)snprintf(buf, n, "send a share %.4f of prompts to the strong model", c->value);
        break;
    case OBJ_BUDGET:
    default:
        (void)snprintf(buf, n, "maximise Q subject to E[C] <= $%.6f per request", c->value);
        break;
    }
    return buf;
}

/* A number, or null when it is not finite (JSON has no NaN). */
static json_t *jnum(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *jpair(double lo, double hi)
{
    return json_pack("[o, o]", jnum(lo), jnum(hi));
}

/* --json: one object on stdout; names are escaped by jansson. */
static void report_json(const struct cli *c, const struct br_eval_task *t, const struct rows *r,
                        const struct pick *p, const struct boot *b, double floor, double ratio)
{
    bool has_floor = c->obj == OBJ_QMIN_ABS || c->obj == OBJ_QMIN_REL;
    json_t *ci =
        json_pack("{s:o, s:o, s:o, s:o}", "threshold", jpair(b->threshold.lo, b->threshold.hi),
                  "p_strong", jpair(b->p_strong.lo, b->p_strong.hi), "quality",
                  jpair(b->quality.lo, b->quality.hi), "cost_usd", jpair(b->cost.lo, b->cost.hi));
    json_t *o =
        json_pack("{s:s, s:I, s:s, s:s, s:o, s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I}",
                  "dataset", t->ds->name, "prompts", (json_int_t)r->n, "strong",
                  t->ds->models[t->strong], "weak", t->ds->models[t->weak], "threshold",
                  jnum(p->threshold), "feasible", (int)p->feasible, "p_strong", jnum(p->p_strong),
                  "quality", jnum(p->quality), "cost_usd", jnum(p->cost), "cost_ratio", jnum(ratio),
                  "quality_floor", jnum(has_floor ? floor : NAN), "ci95", ci, "floor_holds",
                  jnum(has_floor ? b->floor_holds : NAN), "bootstrap", (json_int_t)c->bootstrap);
    if (!o || json_dumpf(o, stdout, JSON_COMPACT) != 0) {
        (void)fprintf(stderr, "brigade calibrate: cannot write the JSON report\n");
    } else {
        (void)fputc('\n', stdout);
    }
    json_decref(o);
}

static void report(const struct cli *c, const struct br_eval_task *t, const struct rows *r,
                   const struct pick *p, const struct boot *b, double floor, double q_strong,
                   double cost_strong)
{
    char obj[160];
    objective_text(c, floor, obj, sizeof(obj));
    const char *strong = t->ds->models[t->strong];
    const char *weak = t->ds->models[t->weak];
    double ratio = cost_strong > 0 ? p->cost / cost_strong : NAN;
    if (c->json) {
        report_json(c, t, r, p, b, floor, ratio);
        return;
    }
    (void)printf("calibrating on %s: %zu prompts, strong %s (Q %.4f), weak %s\n", t->ds->name, r->n,
                 strong, q_strong, weak);
    (void)printf("objective: %s\n", obj);
    if (!p->feasible) {
        (void)printf("NOTE: no threshold meets the objective; the closest one is shown\n");
    }
    (void)printf("\n%-10s %-10s  95%% interval (%u bootstrap resamples)\n", "", "value",
                 c->bootstrap);
    (void)printf("%-10s %-10.4f  [%.4f, %.4f]  (re-chosen on each resample)\n", "threshold",
                 p->threshold, b->threshold.lo, b->threshold.hi);
    (void)printf("%-10s %-10.4f  [%.4f, %.4f]\n", "p_H", p->p_strong, b->p_strong.lo,
                 b->p_strong.hi);
    (void)printf("%-10s %-10.4f  [%.4f, %.4f]\n", "Q", p->quality, b->quality.lo, b->quality.hi);
    (void)printf("%-10s $%-9.6f  [%.6f, %.6f] per request", "E[C]", p->cost, b->cost.lo,
                 b->cost.hi);
    if (isfinite(ratio)) {
        (void)printf(" = %.3fx always-strong", ratio);
    }
    (void)printf("\n");
    if (c->obj == OBJ_QMIN_ABS || c->obj == OBJ_QMIN_REL) {
        (void)printf("the floor Q >= %.4f holds in %.1f%% of the resamples at this threshold\n",
                     floor, b->floor_holds * 100);
    }
}

/*
 * -c CONFIG --route NAME without --model/--router/--scores: the route's classifier model file,
 * copied into path (the config is loaded, so a broken file or unknown route is reported here).
 */
static int route_model(const struct cli *c, char *path, size_t n)
{
    struct br_config *cfg = NULL;
    char err[512];
    if (br_config_load_file(c->config, &cfg, err, sizeof(err)) != BR_OK) {
        (void)fprintf(stderr, "brigade calibrate: %s\n", err);
        return 1;
    }
    int rc = 0;
    const struct br_route_cfg *rt = br_config_route_find(cfg, c->route, strlen(c->route));
    if (!rt) {
        (void)fprintf(stderr, "brigade calibrate: %s has no route '%s'\n", c->config, c->route);
        rc = 2;
    } else if (!rt->classifier.model_path) {
        (void)fprintf(stderr,
                      "brigade calibrate: route '%s' has no classifier model; name one with "
                      "--model FILE\n",
                      c->route);
        rc = 2;
    } else if ((size_t)snprintf(path, n, "%s", rt->classifier.model_path) >= n) {
        (void)fprintf(stderr, "brigade calibrate: model path too long\n");
        rc = 2;
    }
    br_config_unref(cfg);
    return rc;
}

/* Loads the dataset and makes the strong/weak task; returns 0 or an exit code. */
static int load_task(const struct cli *c, struct br_dataset **ds, struct br_eval_task **task)
{
    char err[512];
    struct br_dataset_opts dopts = {.contaminated = c->contaminated};
    if (c->contaminated && strcmp(c->contaminated, "none") == 0) {
        dopts.contaminated = "";
    }
    if (br_dataset_load(c->dataset, &dopts, ds, err, sizeof(err)) != BR_OK) {
        (void)fprintf(stderr, "brigade calibrate: %s\n", err);
        return 1;
    }
    int s = c->strong ? br_dataset_model_index(*ds, c->strong) : -1;
    int w = c->weak ? br_dataset_model_index(*ds, c->weak) : -1;
    if (s < 0 || w < 0 || s == w) {
        (void)fprintf(stderr,
                      "brigade calibrate: name two different models of %s with --strong "
                      "and --weak; it has:",
                      (*ds)->name);
        for (size_t i = 0; i < (*ds)->n_models; i++) {
            (void)fprintf(stderr, "%s %s", i ? "," : "", (*ds)->models[i]);
        }
        (void)fprintf(stderr, "\n");
        return 2;
    }
    struct br_eval_task_opts topts = {.prices = c->prices, .n_prices = c->n_prices};
    struct br_eval_task_info info;
    if (br_eval_task_make(*ds, (size_t)s, (size_t)w, &topts, task, &info, err, sizeof(err)) !=
        BR_OK) {
        (void)fprintf(stderr, "brigade calibrate: %s\n", err);
        return 1;
    }
    return 0;
}

/* Scores every prompt with the chosen router into r; returns 0 or an exit code. */
static int score(const struct cli *c, const struct br_eval_task *task, struct br_eval_run_out *out,
                 struct rows *r)
{
    char err[512];
    const char *rname = c->router ? c->router : (c->scores ? "scores" : "classifier");
    const struct br_eval_router_ops *ops = br_eval_router_find(rname);
    if (!ops) {
        (void)fprintf(stderr, "brigade calibrate: unknown router '%s' (see brigade eval --help)\n",
                      rname);
        return 2;
    }
    char cfg_model[4096];
    const char *model = c->model;
    if (!model && !c->router && !c->scores && c->config && c->route) {
        int rc = route_model(c, cfg_model, sizeof(cfg_model));
        if (rc != 0) {
            return rc;
        }
        model = cfg_model;
        if (!c->json) {
            (void)printf("route %s: classifier model %s\n", c->route, model);
        }
    }
    struct br_eval_router_cfg rcfg = {
        .seed = c->seed, .model_path = model, .scores_path = c->scores};
    struct br_eval_run_opts ropts = {.folds = c->folds, .seed = c->seed};
    if (br_eval_run(ops, &rcfg, task, &ropts, out, err, sizeof(err)) != BR_OK) {
        (void)fprintf(stderr, "brigade calibrate: %s\n", err);
        return 1;
    }
    if (out->n_scored == 0 || rows_make(task, out, r) != BR_OK) {
        (void)fprintf(stderr, "brigade calibrate: nothing scored\n");
        return 1;
    }
    return 0;
}

/* --write: the chosen threshold into the config file; returns 0 or 1. */
static int write_threshold(const struct cli *c, double threshold)
{
    char key[512];
    char value[64];
    char err[512];
    if (c->key) {
        (void)snprintf(key, sizeof(key), "%s", c->key);
    } else {
        (void)snprintf(key, sizeof(key), "routes[%s].classifier.threshold", c->route);
    }
    (void)snprintf(value, sizeof(value), "%.6f", threshold);
    if (br_config_file_set(c->config, key, value, err, sizeof(err)) != BR_OK) {
        (void)fprintf(stderr, "brigade calibrate: %s\n", err);
        return 1;
    }
    if (!c->json) {
        (void)printf("wrote %s = %s to %s\n", key, value, c->config);
    }
    return 0;
}

static int run(const struct cli *c)
{
    struct br_dataset *ds = NULL;
    struct br_eval_task *task = NULL;
    struct br_eval_run_out out;
    struct rows r;
    memset(&out, 0, sizeof(out));
    memset(&r, 0, sizeof(r));
    int rc = load_task(c, &ds, &task);
    if (rc == 0) {
        rc = score(c, task, &out, &r);
    }
    if (rc != 0) {
        goto out;
    }
    double q_strong = mean(r.qs, r.n);
    double cost_strong = mean(r.cs, r.n);
    double floor = c->obj == OBJ_QMIN_REL ? c->value * q_strong : c->value;
    struct pick p = choose(&r, c->obj, c->value, floor);
    struct boot b;
    memset(&b, 0, sizeof(b));
    if (bootstrap(&r, c, floor, p.threshold, &b) != BR_OK) {
        (void)fprintf(stderr, "brigade calibrate: out of memory\n");
        rc = 1;
        goto out;
    }
    report(c, task, &r, &p, &b, floor, q_strong, cost_strong);
    rc = p.feasible ? 0 : 3;
    if (c->write && write_threshold(c, p.threshold) != 0) {
        rc = 1;
    }
out:
    rows_free(&r);
    br_eval_run_out_cleanup(&out);
    br_eval_task_free(task);
    br_dataset_free(ds);
    return rc;
}

int br_calibrate_cli(int argc, char **argv)
{
    struct cli c;
    memset(&c, 0, sizeof(c));
    c.bootstrap = 1000;
    c.seed = 1;
    int rc = parse_args(&c, argc, argv);
    if (rc != 0) {
        return rc == 1 ? 0 : rc;
    }
    return run(&c);
}
