/* SPDX-License-Identifier: MIT */
/*
 * `brigade routes` (what the request log says about each route: decisions by model, cost,
 * feedback means with intervals, the threshold history) and `brigade export` (prompt/answer
 * pairs stored with log.bodies: true, as chat fine-tuning JSONL). Both read the SQLite file
 * through the store's read side and never need a running gateway.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api.h"
#include "api/api_int.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "cost/cost.h"
#include "route/route.h"
#include "store/store.h"

static const char usage_routes[] =
    "usage: brigade routes [-c FILE | --db PATH] [--route NAME] [--since DURATION]\n"
    "\n"
    "Reports each route from the request log: per model and decision, the requests, errors,\n"
    "cost, mean routing score and the feedback received (mean with a 95% Wilson interval),\n"
    "then the route's threshold history (re-tuned by feedback, or set by calibrate).\n"
    "The live view of a running gateway is GET /admin/routes (master key).\n"
    "\n"
    "  -c, --config FILE    read log.path from this configuration\n"
    "      --db PATH        read this SQLite request log directly\n"
    "      --route NAME     only this route\n"
    "      --since D        only requests of the last D (e.g. 30m, 24h); default: all\n";

static const char usage_export[] =
    "usage: brigade export [-c FILE | --db PATH] [--model M] [--route R] [--min-feedback X]\n"
    "                      [--since DURATION] [--out FILE]\n"
    "\n"
    "Writes the prompt/answer pairs stored with log.bodies: true as chat fine-tuning JSONL, one\n"
    "{\"messages\": [..., {\"role\": \"assistant\", \"content\": ANSWER}]} per line: the training\n"
    "set for a cheaper student model. Only successful answers whose bodies were stored whole\n"
    "are written. Pass --model with the strong model to distil it.\n"
    "\n"
    "  -c, --config FILE    read log.path from this configuration\n"
    "      --db PATH        read this SQLite request log directly\n"
    "      --model M        only answers of this model (e.g. the strong model of a route)\n"
    "      --route R        only requests of this route\n"
    "      --min-feedback X only answers whose feedback score is at least X (0..1)\n"
    "      --since D        only requests of the last D (e.g. 7d is written 168h)\n"
    "      --out FILE       write here (default: standard output)\n";

static int is_help(const char *a)
{
    return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0;
}

/* "--name value" or "--name=value"; returns 1 when matched, -1 when the value is missing. */
static int opt(int argc, char **argv, int *i, const char *lng, const char *shrt, const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(lng);
    if (strncmp(a, lng, n) == 0 && a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (strcmp(a, lng) == 0 || (shrt && strcmp(a, shrt) == 0)) {
        if (*i + 1 >= argc) {
            return -1;
        }
        *out = argv[++*i];
        return 1;
    }
    return 0;
}

/* The database to read: --db, else log.path of -c (or $BRIGADE_CONFIG). */
static int db_path(const char *cmd, const char *db, const char *config, struct br_config **cfg,
                   const char **out)
{
    if (db) {
        *out = db;
        return 0;
    }
    if (!config) {
        /* NOLINTNEXTLINE(concurrency-mt-unsafe): command-line start-up, before any thread */
        config = getenv("BRIGADE_CONFIG");
    }
    if (!config || !*config) {
        (void)fprintf(stderr, "brigade %s: pass --db PATH or -c FILE\n", cmd);
        return 2;
    }
    char err[1024];
    if (br_config_load_file(config, cfg, err, sizeof(err)) != BR_OK) {
        (void)fprintf(stderr, "brigade %s: %s\n", cmd, err);
        return 1;
    }
    if (!(*cfg)->log_path) {
        (void)fprintf(stderr, "brigade %s: the request log is off in %s\n", cmd, config);
        return 1;
    }
    *out = (*cfg)->log_path;
    return 0;
}

/* ---------------------------------------------------------------- routes */

struct routes_out {
    const char *only;
    char current[256];
};

static int print_route_total(void *user, const struct br_store_route_total *t)
{
    struct routes_out *o = user;
    if (o->only && strcmp(o->only, t->route) != 0) {
        return 0;
    }
    if (strcmp(o->current, t->route) != 0) {
        (void)snprintf(o->current, sizeof(o->current), "%s", t->route);
        printf("\nroute %s\n", t->route);
        printf("  %-28s %-10s %9s %7s %14s %8s %7s %17s %6s\n", "model", "decision", "requests",
               "errors", "cost (USD)", "feedback", "mean", "95% interval", "score");
    }
    char usd[BR_COST_USD_STRLEN];
    br_cost_format_usd(t->cost_nano_usd, usd);
    char interval[40] = "-";
    char mean[16] = "-";
    if (t->feedback > 0) {
        double lo;
        double hi;
        br_route_wilson(t->feedback_mean, (double)t->feedback, 0.95, &lo, &hi);
        (void)snprintf(interval, sizeof(interval), "[%.3f, %.3f]", lo, hi);
        (void)snprintf(mean, sizeof(mean), "%.3f", t->feedback_mean);
    }
    char score[16] = "-";
    if (!isnan(t->score_mean)) {
        (void)snprintf(score, sizeof(score), "%.3f", t->score_mean);
    }
    printf("  %-28.28s %-10.10s %9lld %7lld %14s %8lld %7s %17s %6s\n", t->model, t->decision,
           (long long)t->requests, (long long)t->errors, usd, (long long)t->feedback, mean,
           interval, score);
    return 0;
}

static void fmt_time(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(out, 32, "%Y-%m-%d %H:%M:%S", &tm) == 0) {
        (void)snprintf(out, 32, "-");
    }
}

static int print_threshold(void *user, const struct br_threshold_row *t)
{
    struct routes_out *o = user;
    if (o->only && strcmp(o->only, t->route) != 0) {
        return 0;
    }
    char ts[32];
    fmt_time(t->ts_ms, ts);
    printf("  %-28.28s %s  %8.4f (configured %8.4f)  %s\n", t->route, ts, t->threshold,
           t->config_threshold, t->reason ? t->reason : "");
    return 0;
}

int br_cli_routes(int argc, char **argv)
{
    const char *config = NULL;
    const char *db = NULL;
    const char *since_s = NULL;
    struct routes_out o = {0};
    for (int i = 0; i < argc; i++) {
        int m = 0;
        if (is_help(argv[i])) {
            (void)fputs(usage_routes, stdout);
            return 0;
        }
        if ((m = opt(argc, argv, &i, "--config", "-c", &config)) ||
            (m = opt(argc, argv, &i, "--db", NULL, &db)) ||
            (m = opt(argc, argv, &i, "--route", NULL, &o.only)) ||
            (m = opt(argc, argv, &i, "--since", NULL, &since_s))) {
            if (m < 0) {
                (void)fprintf(stderr, "brigade routes: %s needs a value\n", argv[i]);
                return 2;
            }
            continue;
        }
        (void)fprintf(stderr, "brigade routes: unknown argument '%s' (see --help)\n", argv[i]);
        return 2;
    }
    uint64_t since = 0;
    if (since_s && br_config_parse_duration_ms(since_s, &since) != BR_OK) {
        (void)fprintf(stderr, "brigade routes: --since wants a duration such as 30m or 24h\n");
        return 2;
    }
    struct br_config *cfg = NULL;
    const char *path = NULL;
    int code = db_path("routes", db, config, &cfg, &path);
    if (code) {
        return code;
    }
    printf("routes in %s%s\n", path, since ? " (since the given time)" : "");
    int64_t since_ms = since ? br_clock_wall_ms() - (int64_t)since : 0;
    int rc = br_store_query_routes(path, since_ms, print_route_total, &o);
    if (rc == BR_OK) {
        printf("\nthreshold history (oldest first)\n");
        rc = br_store_query_threshold_history(path, o.only, print_threshold, &o);
    }
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade routes: cannot read %s: %s\n", path, br_strerror(rc));
    }
    br_config_unref(cfg);
    return rc == BR_OK ? 0 : 1;
}

/* ---------------------------------------------------------------- export */

struct export_out {
    FILE *f;
    long written;
    long skipped;
};

static int write_pair(void *user, const struct br_store_export_row *r)
{
    struct export_out *o = user;
    json_t *msgs = json_loads(r->messages, 0, NULL);
    /* An answer jansson cannot take (not UTF-8) skips the pair: a conversation without its
     * answer is no training example. */
    if (!json_is_array(msgs) ||
        json_array_append_new(
            msgs, json_pack("{s:s, s:s}", "role", "assistant", "content", r->answer)) != 0) {
        json_decref(msgs);
        o->skipped++;
        return 0;
    }
    json_t *line = json_pack("{s:o}", "messages", msgs);
    size_t len = 0;
    char *text = line ? br__json_dump_heap(line, &len) : NULL;
    json_decref(line);
    if (!text) {
        o->skipped++;
        return 0;
    }
    int bad = fwrite(text, 1, len, o->f) != len || fputc('\n', o->f) == EOF;
    br_free(text);
    if (bad) {
        return BR_ERR_IO;
    }
    o->written++;
    return 0;
}

/* The arguments of `brigade export`. */
struct export_args {
    const char *config;
    const char *db;
    const char *out_path;
    struct br_store_export_filter f;
};

/* Parses the arguments into a: -1 to go on, otherwise the exit code (0 after --help). */
static int export_parse(int argc, char **argv, struct export_args *a)
{
    const char *since_s = NULL;
    const char *min_s = NULL;
    for (int i = 0; i < argc; i++) {
        int m = 0;
        if (is_help(argv[i])) {
            (void)fputs(usage_export, stdout);
            return 0;
        }
        if ((m = opt(argc, argv, &i, "--config", "-c", &a->config)) ||
            (m = opt(argc, argv, &i, "--db", NULL, &a->db)) ||
            (m = opt(argc, argv, &i, "--model", NULL, &a->f.model)) ||
            (m = opt(argc, argv, &i, "--route", NULL, &a->f.route)) ||
            (m = opt(argc, argv, &i, "--min-feedback", NULL, &min_s)) ||
            (m = opt(argc, argv, &i, "--since", NULL, &since_s)) ||
            (m = opt(argc, argv, &i, "--out", "-o", &a->out_path))) {
            if (m < 0) {
                (void)fprintf(stderr, "brigade export: %s needs a value\n", argv[i]);
                return 2;
            }
            continue;
        }
        (void)fprintf(stderr, "brigade export: unknown argument '%s' (see --help)\n", argv[i]);
        return 2;
    }
    if (min_s) {
        char *end = NULL;
        a->f.min_feedback = strtod(min_s, &end);
        if (!*min_s || *end || !(a->f.min_feedback >= 0 && a->f.min_feedback <= 1)) {
            (void)fprintf(stderr, "brigade export: --min-feedback wants a number from 0 to 1\n");
            return 2;
        }
    }
    uint64_t since = 0;
    if (since_s && br_config_parse_duration_ms(since_s, &since) != BR_OK) {
        (void)fprintf(stderr, "brigade export: --since wants a duration such as 30m or 24h\n");
        return 2;
    }
    a->f.since_ms = since ? br_clock_wall_ms() - (int64_t)since : 0;
    return -1;
}

/* What a successful export wrote, on stderr. */
static void export_summary(const struct export_out *o)
{
    (void)fprintf(stderr, "brigade export: %ld pairs written%s", o->written,
                  o->skipped ? "" : "\n");
    if (o->skipped) {
        (void)fprintf(stderr, ", %ld skipped (unreadable messages)\n", o->skipped);
    }
    if (o->written == 0) {
        (void)fprintf(stderr, "brigade export: none found: is log.bodies on?\n");
    }
}

int br_cli_export(int argc, char **argv)
{
    struct export_args a = {.f = {.min_feedback = NAN}};
    int code = export_parse(argc, argv, &a);
    if (code >= 0) {
        return code;
    }
    struct br_config *cfg = NULL;
    const char *path = NULL;
    code = db_path("export", a.db, a.config, &cfg, &path);
    if (code) {
        return code;
    }
    struct export_out o = {.f = stdout};
    if (a.out_path) {
        o.f = fopen(a.out_path, "w");
        if (!o.f) {
            (void)fprintf(stderr, "brigade export: cannot write %s\n", a.out_path);
            br_config_unref(cfg);
            return 1;
        }
    }
    int rc = br_store_query_bodies(path, &a.f, write_pair, &o);
    if (a.out_path && fclose(o.f) != 0 && rc == BR_OK) {
        rc = BR_ERR_IO;
    }
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade export: %s: %s\n", path, br_strerror(rc));
    } else {
        export_summary(&o);
    }
    br_config_unref(cfg);
    return rc == BR_OK ? 0 : 1;
}
