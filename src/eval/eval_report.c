/* SPDX-License-Identifier: MIT */
/*
 * What `brigade eval` writes: the text report (threshold table, summary, baselines), the JSON
 * summary, the per-prompt CSV and the SVG plot of the cost-quality curves. The SVG is written
 * by hand: axes, ticks, one polyline per router, the always-weak and always-strong points, the
 * random router's line between them, the oracle's point and the 95%-of-strong floor.
 */
#include <csv.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "eval/eval.h"
#include "eval/eval_int.h"
#include "eval/eval_router.h"
#include "eval/metrics.h"

#define EPS 1e-9

static bool reached(double v, double x)
{
    return !isnan(v) && v >= x - EPS * fmax(1.0, fabs(x));
}

/* Index of the first curve point whose PGR reaches x, or SIZE_MAX. */
static size_t cpt_index(const struct br_eval_result *r, double x)
{
    for (size_t i = 0; i < r->n_curve; i++) {
        if (reached(r->curve[i].pgr, x)) {
            return i;
        }
    }
    return SIZE_MAX;
}

static size_t q95_index(const struct br_eval_result *r)
{
    for (size_t i = 0; i < r->n_curve; i++) {
        if (r->curve[i].threshold == r->threshold_at_q95) {
            return i;
        }
    }
    return SIZE_MAX;
}

/* The cheapest point of highest quality (the oracle's best). */
static size_t best_index(const struct br_eval_result *r)
{
    size_t b = 0;
    for (size_t i = 1; i < r->n_curve; i++) {
        if (r->curve[i].quality > r->curve[b].quality + EPS ||
            (fabs(r->curve[i].quality - r->curve[b].quality) <= EPS &&
             r->curve[i].cost < r->curve[b].cost)) {
            b = i;
        }
    }
    return b;
}

static const char *cost_source_name(enum br_eval_cost_source s)
{
    switch (s) {
    case BR_EVAL_COST_RECORDED:
        return "recorded per prompt";
    case BR_EVAL_COST_PRICED:
        return "estimated tokens x --price";
    case BR_EVAL_COST_DEFAULT:
        return "estimated tokens x RouteLLM's blended price (default)";
    case BR_EVAL_COST_NONE:
        break;
    }
    return "unknown";
}

static void fmt_threshold(double t, char out[24])
{
    if (isinf(t)) {
        (void)snprintf(out, 24, "%s", t > 0 ? "+inf" : "-inf");
    } else {
        (void)snprintf(out, 24, "%.6g", t);
    }
}

static void fmt_pct(double v, char out[16])
{
    if (isnan(v)) {
        (void)snprintf(out, 16, "-");
    } else {
        (void)snprintf(out, 16, "%.1f%%", v * 100.0);
    }
}

/* v with `digits` decimals after an optional prefix ("$"), or "-" when NaN. */
static void fmt_num(double v, int digits, char out[24])
{
    if (isnan(v)) {
        (void)snprintf(out, 24, "-");
    } else {
        (void)snprintf(out, 24, "%.*f", digits, v);
    }
}

/* ---- text ---- */

struct trow {
    size_t idx;
    char label[40];
};

static void add_row(struct trow *rows, size_t *n, size_t cap, size_t idx, const char *label)
{
    if (idx == SIZE_MAX) {
        return;
    }
    for (size_t i = 0; i < *n; i++) {
        if (rows[i].idx == idx) {
            if (label[0] != '\0') {
                size_t k = strlen(rows[i].label);
                (void)snprintf(rows[i].label + k, sizeof(rows[i].label) - k, "%s%s", k ? " " : "",
                               label);
            }
            return;
        }
    }
    if (*n < cap) {
        rows[*n].idx = idx;
        (void)snprintf(rows[*n].label, sizeof(rows[*n].label), "%s", label);
        (*n)++;
    }
}

static int cmp_trow(const void *a, const void *b)
{
    size_t x = ((const struct trow *)a)->idx;
    size_t y = ((const struct trow *)b)->idx;
    return x < y ? -1 : (x > y);
}

static void write_table(FILE *f, const struct br_eval_result *r, unsigned n_rows, bool costed)
{
    size_t cap = (size_t)n_rows + 8;
    struct trow *rows = br_calloc(cap, sizeof(*rows));
    if (rows == NULL) {
        return;
    }
    size_t n = 0;
    for (unsigned j = 0; j <= n_rows; j++) {
        double target = (double)j / (double)n_rows;
        for (size_t i = 0; i < r->n_curve; i++) {
            if (r->curve[i].p_strong >= target - EPS) {
                add_row(rows, &n, cap, i, "");
                break;
            }
        }
    }
    add_row(rows, &n, cap, cpt_index(r, 0.5), "CPT(50%)");
    add_row(rows, &n, cap, cpt_index(r, 0.8), "CPT(80%)");
    add_row(rows, &n, cap, cpt_index(r, 0.95), "CPT(95%)");
    add_row(rows, &n, cap, q95_index(r), "Q>=95%");
    qsort(rows, n, sizeof(*rows), cmp_trow);
    (void)fprintf(f, "  %12s %7s %9s %13s %8s\n", "threshold", "p_H", "quality",
                  costed ? "$/1k prompts" : "cost", "PGR");
    for (size_t k = 0; k < n; k++) {
        const struct br_eval_point *p = &r->curve[rows[k].idx];
        char th[24];
        char ph[16];
        char cost[24];
        char pgr[24];
        fmt_threshold(p->threshold, th);
        fmt_pct(p->p_strong, ph);
        fmt_num(costed ? p->cost * 1000.0 : NAN, 4, cost);
        fmt_num(p->pgr, 3, pgr);
        (void)fprintf(f, "  %12s %7s %9.4f %13s %8s  %s\n", th, ph, p->quality, cost, pgr,
                      rows[k].label);
    }
    br_free(rows);
}

static void write_folds(FILE *f, const struct br__eval_router_result *r)
{
    unsigned nf = r->n_folds < 64 ? r->n_folds : 64;
    double sum = 0.0;
    double sq = 0.0;
    unsigned k = 0;
    (void)fprintf(f, "folds            %u, APGR per fold:", r->n_folds);
    for (unsigned i = 0; i < nf; i++) {
        (void)fprintf(f, " %.3f", r->fold_apgr[i]);
        if (!isnan(r->fold_apgr[i])) {
            sum += r->fold_apgr[i];
            sq += r->fold_apgr[i] * r->fold_apgr[i];
            k++;
        }
    }
    if (k > 1) {
        double mean = sum / k;
        double var = fmax(0.0, (sq - k * mean * mean) / (k - 1));
        (void)fprintf(f, " (mean %.3f, sd %.3f)", mean, sqrt(var));
    }
    (void)fputs("\n", f);
}

static void write_router(FILE *f, const struct br__eval_report *rep,
                         const struct br__eval_router_result *r)
{
    bool costed = rep->task->c_strong != NULL;
    const char *note = "";
    if (r->ops->flags & BR_EVAL_ROUTER_READS_OUTCOMES) {
        note = "  (reads the outcomes: an upper bound, not a router)";
    }
    (void)fprintf(f, "\nrouter           %s%s  [%.3f s]\n", r->ops->name, note, r->seconds);
    if (r->n != rep->task->n) {
        (void)fprintf(f, "evaluated on     %zu held-out prompts (trained on the other %zu)\n", r->n,
                      rep->task->n - r->n);
    } else if (r->n_folds > 1) {
        (void)fprintf(f, "evaluated on     all %zu prompts, %u-fold cross-validated\n", r->n,
                      r->n_folds);
    }
    if (r->fixed) {
        const struct br_eval_point *p = &r->point;
        char cost[24];
        fmt_num(costed ? p->cost * 1000.0 : NAN, 4, cost);
        (void)fprintf(f,
                      "operating point  p_H %.1f%%, quality %.4f, $%s/1k prompts, PGR %.3f = its "
                      "APGR\n",
                      p->p_strong * 100.0, p->quality, cost, p->pgr);
        return;
    }
    const struct br_eval_result *res = &r->res;
    if (rep->thresholds > 0) {
        write_table(f, res, rep->thresholds, costed);
    }
    char a[24];
    char b[24];
    fmt_num(res->apgr, 4, a);
    fmt_num(r->apgr_q10, 4, b);
    (void)fprintf(f, "APGR             %s  (every threshold; RouteLLM's 10-quantile estimate %s)\n",
                  a, b);
    char c50[16];
    char c80[16];
    char c95[16];
    fmt_pct(res->cpt50, c50);
    fmt_pct(res->cpt80, c80);
    fmt_pct(res->cpt95, c95);
    (void)fprintf(f, "CPT(50/80/95%%)   %s  %s  %s  of prompts to the strong model\n", c50, c80,
                  c95);
    char th[24];
    fmt_threshold(res->threshold_at_q95, th);
    if (costed) {
        (void)fprintf(f,
                      "Q >= 95%% strong  $%.4f/1k prompts = %.3f x always-strong (p_H %.1f%%, "
                      "quality %.4f, threshold %s)\n",
                      res->cost_at_q95 * 1000.0, res->cost_at_q95_ratio,
                      res->p_strong_at_q95 * 100.0, res->quality_at_q95, th);
    } else {
        (void)fprintf(f,
                      "Q >= 95%% strong  p_H %.1f%% (quality %.4f, threshold %s; no costs: give "
                      "--price)\n",
                      res->p_strong_at_q95 * 100.0, res->quality_at_q95, th);
    }
    (void)fprintf(f,
                  "mistakes there   %zu hard prompts sent to the weak model (of %zu hard), %zu "
                  "easy prompts sent to the strong model (of %zu easy)\n",
                  res->hard_to_weak, res->n_hard, res->easy_to_strong, res->n_easy);
    if (r->n_folds > 1) {
        write_folds(f, r);
    }
}

static void write_baselines(FILE *f, const struct br__eval_report *rep)
{
    const struct br_eval_result *o = &rep->oracle;
    bool costed = rep->task->c_strong != NULL;
    double k = 1000.0;
    char c1[24];
    char c2[24];
    char c3[24];
    char r1[48];
    char r3[48];
    fmt_num(costed ? o->cost_weak * k : NAN, 4, c1);
    fmt_num(costed ? o->cost_strong * k : NAN, 4, c2);
    size_t best = best_index(o);
    fmt_num(costed ? o->curve[best].cost * k : NAN, 4, c3);
    bool weak_ok = reached(o->q_weak, 0.95 * o->q_strong);
    if (weak_ok && costed) {
        (void)snprintf(r1, sizeof(r1), "%.3f x",
                       o->cost_strong > 0 ? o->cost_weak / o->cost_strong : NAN);
    } else {
        (void)snprintf(r1, sizeof(r1), "%s", weak_ok ? "reached" : "never");
    }
    if (costed) {
        (void)snprintf(r3, sizeof(r3), "%.3f x (p_H %.1f%%)", o->cost_at_q95_ratio,
                       o->p_strong_at_q95 * 100.0);
    } else {
        (void)snprintf(r3, sizeof(r3), "p_H %.1f%%", o->p_strong_at_q95 * 100.0);
    }
    char rr[48];
    if (costed) {
        (void)snprintf(rr, sizeof(rr), "%.3f x (p_H %.1f%%)",
                       o->cost_strong > 0 ? rep->random_cost95 / o->cost_strong : NAN,
                       rep->random_p95 * 100.0);
    } else {
        (void)snprintf(rr, sizeof(rr), "p_H %.1f%%", rep->random_p95 * 100.0);
    }
    (void)fprintf(f, "\nbaselines on %zu prompts\n", o->n);
    (void)fprintf(f, "  %-18s %7s %9s %13s %7s   %s\n", "", "p_H", "quality",
                  costed ? "$/1k prompts" : "cost", "APGR", "cost at Q >= 95% of strong");
    (void)fprintf(f, "  %-18s %7s %9.4f %13s %7.3f   %s\n", "always-weak", "0.0%", o->q_weak, c1,
                  0.0, r1);
    (void)fprintf(f, "  %-18s %7s %9.4f %13s %7.3f   %s\n", "always-strong", "100.0%", o->q_strong,
                  c2, 1.0, costed ? "1.000 x" : "p_H 100.0%");
    (void)fprintf(f, "  %-18s %7s %9s %13s %7.3f   %s\n", "random (expected)", "line", "-", "-",
                  o->q_random_auc, rr);
    char ph[16];
    fmt_pct(o->curve[best].p_strong, ph);
    (void)fprintf(f, "  %-18s %7s %9.4f %13s %7.3f   %s\n", "oracle", ph, o->q_oracle, c3, o->apgr,
                  r3);
    (void)fprintf(f, "  oracle p_H for 95%% of strong quality: %.1f%%\n",
                  o->oracle_p_strong_95 * 100.0);
}

int br__eval_write_text(FILE *f, const struct br__eval_report *rep)
{
    const struct br_dataset *ds = rep->ds;
    const struct br_eval_task *t = rep->task;
    const struct br_eval_task_info *info = rep->info;
    (void)fprintf(f, "dataset          %s (%s, %zu file%s): %zu prompts", rep->path,
                  br_dataset_format_name(ds->format), ds->n_files, ds->n_files == 1 ? "" : "s",
                  ds->n_prompts);
    if (ds->contaminated_path != NULL) {
        (void)fprintf(f, "; %zu contaminated dropped (%s)", ds->n_dropped, ds->contaminated_path);
    }
    if (info->n_skipped > 0) {
        (void)fprintf(f, "; %zu without both outcomes skipped", info->n_skipped);
    }
    (void)fputs("\n", f);
    const struct br_eval_result *o = &rep->oracle;
    (void)fprintf(f, "strong           %s  quality %.4f", ds->models[t->strong], o->q_strong);
    if (t->c_strong != NULL) {
        (void)fprintf(f, "  $%.4f/1k prompts (%s)", o->cost_strong * 1000.0,
                      cost_source_name(info->cost_strong));
    }
    (void)fprintf(f, "\nweak             %s  quality %.4f", ds->models[t->weak], o->q_weak);
    if (t->c_weak != NULL) {
        (void)fprintf(f, "  $%.4f/1k prompts (%s)", o->cost_weak * 1000.0,
                      cost_source_name(info->cost_weak));
    } else {
        (void)fputs("\ncosts            unknown (no recorded costs, no --price): cost columns "
                    "empty",
                    f);
    }
    (void)fputs("\n", f);
    for (size_t i = 0; i < rep->n_routers; i++) {
        write_router(f, rep, &rep->routers[i]);
    }
    write_baselines(f, rep);
    return ferror(f) ? BR_ERR_IO : BR_OK;
}

/* ---- JSON ---- */

static json_t *num(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static int put(json_t *o, const char *k, json_t *v)
{
    return v != NULL && json_object_set_new(o, k, v) == 0 ? 0 : -1;
}

static json_t *point_json(const struct br_eval_point *p)
{
    json_t *o = json_object();
    if (o == NULL) {
        return NULL;
    }
    int bad = put(o, "threshold", num(p->threshold)) | put(o, "p_strong", num(p->p_strong)) |
              put(o, "quality", num(p->quality)) | put(o, "cost_usd", num(p->cost)) |
              put(o, "pgr", num(p->pgr));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *router_json(const struct br__eval_report *rep,
                           const struct br__eval_router_result *r)
{
    json_t *o = json_object();
    if (o == NULL) {
        return NULL;
    }
    int bad = put(o, "name", json_string(r->ops->name)) |
              put(o, "n", json_integer((json_int_t)r->n)) |
              put(o, "folds", json_integer(r->n_folds)) | put(o, "seconds", num(r->seconds));
    if (r->fixed) {
        bad |= put(o, "point", point_json(&r->point)) | put(o, "apgr", num(r->point.pgr));
    } else {
        const struct br_eval_result *s = &r->res;
        bad |= put(o, "apgr", num(s->apgr)) | put(o, "apgr_routellm_10", num(r->apgr_q10)) |
               put(o, "cpt50", num(s->cpt50)) | put(o, "cpt80", num(s->cpt80)) |
               put(o, "cpt95", num(s->cpt95)) | put(o, "q_weak", num(s->q_weak)) |
               put(o, "q_strong", num(s->q_strong)) |
               put(o, "cost_at_q95_usd", num(rep->task->c_strong ? s->cost_at_q95 : NAN)) |
               put(o, "cost_at_q95_ratio", num(s->cost_at_q95_ratio)) |
               put(o, "p_strong_at_q95", num(s->p_strong_at_q95)) |
               put(o, "threshold_at_q95", num(s->threshold_at_q95)) |
               put(o, "quality_at_q95", num(s->quality_at_q95)) |
               put(o, "hard_to_weak", json_integer((json_int_t)s->hard_to_weak)) |
               put(o, "easy_to_strong", json_integer((json_int_t)s->easy_to_strong)) |
               put(o, "n_hard", json_integer((json_int_t)s->n_hard)) |
               put(o, "n_easy", json_integer((json_int_t)s->n_easy)) |
               put(o, "n_thresholds", json_integer((json_int_t)s->n_curve));
        json_t *folds = json_array();
        unsigned nf = r->n_folds > 1 ? (r->n_folds < 64 ? r->n_folds : 64) : 0;
        for (unsigned i = 0; folds != NULL && i < nf; i++) {
            bad |= json_array_append_new(folds, num(r->fold_apgr[i]));
        }
        bad |= put(o, "fold_apgr", folds);
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int br__eval_write_json(FILE *f, const struct br__eval_report *rep)
{
    const struct br_dataset *ds = rep->ds;
    const struct br_eval_task *t = rep->task;
    const struct br_eval_result *o = &rep->oracle;
    json_t *root = json_object();
    json_t *routers = json_array();
    json_t *base = json_object();
    int bad = root == NULL || routers == NULL || base == NULL;
    if (!bad) {
        bool costed = t->c_strong != NULL;
        bad |= put(root, "dataset", json_string(rep->path)) |
               put(root, "format", json_string(br_dataset_format_name(ds->format))) |
               put(root, "prompts", json_integer((json_int_t)ds->n_prompts)) |
               put(root, "evaluated", json_integer((json_int_t)t->n)) |
               put(root, "contaminated_dropped", json_integer((json_int_t)ds->n_dropped)) |
               put(root, "skipped", json_integer((json_int_t)rep->info->n_skipped)) |
               put(root, "strong", json_string(ds->models[t->strong])) |
               put(root, "weak", json_string(ds->models[t->weak])) |
               put(root, "costs", json_boolean(costed));
        for (size_t i = 0; i < rep->n_routers && !bad; i++) {
            json_t *rj = router_json(rep, &rep->routers[i]);
            bad |= rj == NULL || json_array_append_new(routers, rj) != 0;
        }
        size_t best = best_index(o);
        bad |= put(base, "q_weak", num(o->q_weak)) | put(base, "q_strong", num(o->q_strong)) |
               put(base, "q_oracle", num(o->q_oracle)) |
               put(base, "cost_weak_usd", num(costed ? o->cost_weak : NAN)) |
               put(base, "cost_strong_usd", num(costed ? o->cost_strong : NAN)) |
               put(base, "random_apgr", num(o->q_random_auc)) |
               put(base, "random_p_strong_at_q95", num(rep->random_p95)) |
               put(base, "oracle_apgr", num(o->apgr)) |
               put(base, "oracle_p_strong", num(o->curve[best].p_strong)) |
               put(base, "oracle_p_strong_95", num(o->oracle_p_strong_95)) |
               put(base, "oracle_cost_at_q95_ratio", num(o->cost_at_q95_ratio));
        bad |= json_object_set(root, "routers", routers) | json_object_set(root, "baselines", base);
    }
    int rc = BR_OK;
    if (bad || json_dumpf(root, f, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) != 0 ||
        fputc('\n', f) == EOF) {
        rc = BR_ERR_IO;
    }
    json_decref(routers);
    json_decref(base);
    json_decref(root);
    return rc;
}

/* ---- CSV ---- */

int br__eval_write_csv(FILE *f, const struct br__eval_report *rep, size_t router)
{
    if (router >= rep->n_routers) {
        return BR_ERR_INVAL;
    }
    const struct br__eval_router_result *r = &rep->routers[router];
    const struct br_eval_task *t = rep->task;
    double thr = r->fixed ? 0.5 : r->res.threshold_at_q95;
    (void)fputs("index,group,fold,score,decision,q_strong,q_weak,c_strong_usd,c_weak_usd\n", f);
    for (size_t k = 0; k < r->n; k++) {
        size_t row = t->rows[r->rows[k]];
        const char *g = rep->ds->groups[row];
        (void)fprintf(f, "%zu,", row);
        if (g != NULL) {
            (void)csv_fwrite(f, g, strlen(g));
        }
        if (r->n_folds > 0) {
            (void)fprintf(f, ",%d", r->fold[k]);
        } else {
            (void)fputs(",", f);
        }
        (void)fprintf(f, ",%.17g,%s,%.17g,%.17g", r->scores[k],
                      r->scores[k] >= thr ? "strong" : "weak", r->qs[k], r->qw[k]);
        if (r->cs != NULL) {
            (void)fprintf(f, ",%.17g,%.17g\n", r->cs[k], r->cw[k]);
        } else {
            (void)fputs(",,\n", f);
        }
    }
    return ferror(f) ? BR_ERR_IO : BR_OK;
}

/* ---- SVG ---- */

#define SVG_W   760.0
#define SVG_H   500.0
#define SVG_L   80.0
#define SVG_R   220.0
#define SVG_T   50.0
#define SVG_B   60.0
#define SVG_MAX 1500u /* polyline points per router */

struct axes {
    double x0;
    double x1;
    double y0;
    double y1;
};

static double sx(const struct axes *a, double x)
{
    return SVG_L + (x - a->x0) / (a->x1 - a->x0) * (SVG_W - SVG_L - SVG_R);
}

static double sy(const struct axes *a, double y)
{
    return SVG_H - SVG_B - (y - a->y0) / (a->y1 - a->y0) * (SVG_H - SVG_T - SVG_B);
}

static void svg_text(FILE *f, const char *s)
{
    for (; *s != '\0'; s++) {
        switch (*s) {
        case '&':
            (void)fputs("&amp;", f);
            break;
        case '<':
            (void)fputs("&lt;", f);
            break;
        case '>':
            (void)fputs("&gt;", f);
            break;
        case '"':
            (void)fputs("&quot;", f);
            break;
        default:
            (void)fputc(*s, f);
        }
    }
}

/* A "nice" tick step (1, 2 or 5 x 10^k) giving about n ticks over span. */
static double nice_step(double span, int n)
{
    double raw = span / n;
    double mag = pow(10.0, floor(log10(raw)));
    double m = raw / mag;
    return (m < 1.5 ? 1.0 : m < 3.5 ? 2.0 : m < 7.5 ? 5.0 : 10.0) * mag;
}

static double px(const struct br__eval_report *rep, const struct br_eval_point *p)
{
    return rep->x_cost ? p->cost * 1000.0 : p->p_strong * 100.0;
}

static const char *const colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#bcbd22"};

static void svg_axes(FILE *f, const struct br__eval_report *rep, const struct axes *a)
{
    double xs = nice_step(a->x1 - a->x0, 6);
    double ys = nice_step(a->y1 - a->y0, 6);
    (void)fprintf(f, "<g font-size=\"11\" fill=\"#333\">\n");
    double x_first = ceil(a->x0 / xs) * xs;
    double y_first = ceil(a->y0 / ys) * ys;
    for (int k = 0; k < 100 && x_first + k * xs <= a->x1 + xs * 1e-9; k++) {
        double x = x_first + k * xs;
        (void)fprintf(f,
                      "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                      "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                      sx(a, x), SVG_T, sx(a, x), SVG_H - SVG_B, sx(a, x), SVG_H - SVG_B + 16,
                      fabs(x) < xs * 1e-9 ? 0.0 : x);
    }
    for (int k = 0; k < 100 && y_first + k * ys <= a->y1 + ys * 1e-9; k++) {
        double y = y_first + k * ys;
        (void)fprintf(f,
                      "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                      "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                      SVG_L, sy(a, y), SVG_W - SVG_R, sy(a, y), SVG_L - 6, sy(a, y) + 4, y);
    }
    (void)fprintf(f,
                  "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                  "stroke=\"#333\"/>\n",
                  SVG_L, SVG_T, SVG_W - SVG_L - SVG_R, SVG_H - SVG_T - SVG_B);
    (void)fprintf(
        f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\">%s</text>\n",
        (SVG_L + SVG_W - SVG_R) / 2, SVG_H - 18,
        rep->x_cost ? "cost, USD per 1,000 prompts" : "prompts sent to the strong model, %");
    (void)fprintf(f,
                  "<text transform=\"translate(20,%.1f) rotate(-90)\" text-anchor=\"middle\" "
                  "font-size=\"12\">quality (mean)</text>\n</g>\n",
                  (SVG_T + SVG_H - SVG_B) / 2);
}

static void svg_legend(FILE *f, double y, const char *colour, const char *dash, const char *name)
{
    double x = SVG_W - SVG_R + 16;
    (void)fprintf(f,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                  "stroke-width=\"2\"%s%s%s/><text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">",
                  x, y, x + 24, y, colour, dash ? " stroke-dasharray=\"" : "", dash ? dash : "",
                  dash ? "\"" : "", x + 30, y + 4);
    svg_text(f, name);
    (void)fputs("</text>\n", f);
}

static void svg_curve(FILE *f, const struct br__eval_report *rep, const struct axes *a,
                      const struct br_eval_result *r, const char *colour)
{
    size_t step = r->n_curve > SVG_MAX ? (r->n_curve + SVG_MAX - 1) / SVG_MAX : 1;
    (void)fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" points=\"",
                  colour);
    for (size_t i = 0; i < r->n_curve; i += step) {
        (void)fprintf(f, "%.1f,%.1f ", sx(a, px(rep, &r->curve[i])), sy(a, r->curve[i].quality));
    }
    const struct br_eval_point *last = &r->curve[r->n_curve - 1];
    (void)fprintf(f, "%.1f,%.1f\"/>\n", sx(a, px(rep, last)), sy(a, last->quality));
}

int br__eval_write_svg(FILE *f, const struct br__eval_report *rep)
{
    const struct br_eval_result *o = &rep->oracle;
    struct axes a = {0.0, rep->x_cost ? o->cost_strong * 1000.0 : 100.0, 1.0, 0.0};
    for (size_t i = 0; i < o->n_curve; i++) {
        a.y0 = fmin(a.y0, o->curve[i].quality);
        a.y1 = fmax(a.y1, o->curve[i].quality);
        a.x1 = fmax(a.x1, px(rep, &o->curve[i]));
    }
    for (size_t k = 0; k < rep->n_routers; k++) {
        const struct br__eval_router_result *r = &rep->routers[k];
        for (size_t i = 0; r->have_result && i < r->res.n_curve; i++) {
            a.y0 = fmin(a.y0, r->res.curve[i].quality);
            a.y1 = fmax(a.y1, r->res.curve[i].quality);
            a.x1 = fmax(a.x1, px(rep, &r->res.curve[i]));
        }
    }
    double pad = fmax(0.02, (a.y1 - a.y0) * 0.08);
    a.y0 = fmax(0.0, a.y0 - pad);
    a.y1 = fmin(1.0, a.y1 + pad);
    if (a.y1 <= a.y0) {
        a.y1 = a.y0 + 0.1;
    }
    if (a.x1 <= a.x0) {
        a.x1 = a.x0 + 1.0;
    }
    (void)fprintf(f,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                  "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
                  "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
                  "<text x=\"%.1f\" y=\"28\" font-size=\"14\" text-anchor=\"middle\">",
                  SVG_W, SVG_H, SVG_W, SVG_H, (SVG_L + SVG_W - SVG_R) / 2);
    svg_text(f, rep->ds->name);
    (void)fputs(": ", f);
    svg_text(f, rep->ds->models[rep->task->strong]);
    (void)fputs(" vs ", f);
    svg_text(f, rep->ds->models[rep->task->weak]);
    (void)fputs("</text>\n", f);
    svg_axes(f, rep, &a);
    /* Baselines: the random line between always-weak and always-strong, the 95% floor. */
    struct br_eval_point pw = {INFINITY, 0.0, o->q_weak, o->cost_weak, 0.0};
    struct br_eval_point ps = {0.0, 1.0, o->q_strong, o->cost_strong, 1.0};
    (void)fprintf(f,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" "
                  "stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\n",
                  sx(&a, px(rep, &pw)), sy(&a, pw.quality), sx(&a, px(rep, &ps)),
                  sy(&a, ps.quality));
    (void)fprintf(f,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#aaa\" "
                  "stroke-dasharray=\"2 3\"/>\n",
                  SVG_L, sy(&a, 0.95 * o->q_strong), SVG_W - SVG_R, sy(&a, 0.95 * o->q_strong));
    double ly = SVG_T + 8;
    for (size_t k = 0; k < rep->n_routers; k++) {
        const struct br__eval_router_result *r = &rep->routers[k];
        const char *col = colours[k % (sizeof(colours) / sizeof(colours[0]))];
        char name[96];
        if (r->fixed) {
            (void)fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"/>\n",
                          sx(&a, px(rep, &r->point)), sy(&a, r->point.quality), col);
            (void)snprintf(name, sizeof(name), "%s", r->ops->name);
        } else {
            svg_curve(f, rep, &a, &r->res, col);
            (void)snprintf(name, sizeof(name), "%s (APGR %.3f)", r->ops->name, r->res.apgr);
            if (!isnan(r->res.p_strong_at_q95)) {
                struct br_eval_point q = {0, r->res.p_strong_at_q95, r->res.quality_at_q95,
                                          r->res.cost_at_q95, 0};
                (void)fprintf(f,
                              "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"none\" "
                              "stroke=\"%s\" stroke-width=\"1.5\"/>\n",
                              sx(&a, px(rep, &q)), sy(&a, q.quality), col);
            }
        }
        svg_legend(f, ly, col, NULL, name);
        ly += 18;
    }
    size_t best = best_index(o);
    (void)fprintf(f,
                  "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"#444\"/>\n"
                  "<rect x=\"%.1f\" y=\"%.1f\" width=\"9\" height=\"9\" fill=\"#ff7f0e\"/>\n"
                  "<path d=\"M%.1f %.1f l6 -10 l6 10 z\" fill=\"#2ca02c\"/>\n",
                  sx(&a, px(rep, &pw)), sy(&a, pw.quality), sx(&a, px(rep, &ps)) - 4.5,
                  sy(&a, ps.quality) - 4.5, sx(&a, px(rep, &o->curve[best])) - 6,
                  sy(&a, o->curve[best].quality) + 5);
    char label[160];
    (void)snprintf(label, sizeof(label), "always-weak (%.3f)", o->q_weak);
    (void)fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"#444\"/>", SVG_W - SVG_R + 28,
                  ly);
    (void)fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">", SVG_W - SVG_R + 46, ly + 4);
    svg_text(f, label);
    (void)fputs("</text>\n", f);
    ly += 18;
    (void)snprintf(label, sizeof(label), "always-strong (%.3f)", o->q_strong);
    (void)fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"9\" height=\"9\" fill=\"#ff7f0e\"/>",
                  SVG_W - SVG_R + 23.5, ly - 4.5);
    (void)fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">", SVG_W - SVG_R + 46, ly + 4);
    svg_text(f, label);
    (void)fputs("</text>\n", f);
    ly += 18;
    svg_legend(f, ly, "#888", "6 4", "random (expected)");
    ly += 18;
    (void)snprintf(label, sizeof(label), "oracle (%.3f)", o->q_oracle);
    (void)fprintf(f, "<path d=\"M%.1f %.1f l6 -10 l6 10 z\" fill=\"#2ca02c\"/>", SVG_W - SVG_R + 22,
                  ly + 5);
    (void)fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">", SVG_W - SVG_R + 46, ly + 4);
    svg_text(f, label);
    (void)fputs("</text>\n", f);
    ly += 18;
    svg_legend(f, ly, "#aaa", "2 3", "95% of strong");
    ly += 18;
    (void)fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" fill=\"#666\">",
                  SVG_W - SVG_R + 16, ly + 8);
    (void)fprintf(f, "o = cheapest point at 95%%</text>\n");
    (void)fputs("</svg>\n", f);
    return ferror(f) ? BR_ERR_IO : BR_OK;
}
