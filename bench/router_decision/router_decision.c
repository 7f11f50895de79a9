/* SPDX-License-Identifier: MIT */
/*
 * bench_router_decision: the cost of one routing decision, alone. Real prompts (a RouteLLM or
 * other dataset, data/routellm by default) are turned into chat request bodies as a client
 * would send them; each decision then runs exactly what the gateway runs for a routed request
 * (src/api/api_chat.c): br_route_req_parse on the raw body (text, token estimate, signals,
 * hints) and br_route_plan (constraints, hints, exploration, the policies — the classifier
 * scores the prompt). Each decision is timed on its own with CLOCK_MONOTONIC; the report gives
 * the distribution (p50, p90, p99, p99.9, max) over every decision of every pass.
 *
 * The route comes from a config file (--config FILE --route NAME, e.g. the shipped `auto`
 * route), or is built here: --classifier FILE (a model from `brigade train`), --synthetic (a
 * model of the default feature configuration with random weights: the same arithmetic as a
 * trained one), or --rules (a rules-only route).
 */
#include <csv.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/arena.h"
#include "core/err.h"
#include "core/rand.h"
#include "route/route.h"
#ifdef BR_ROUTE_HAVE_CLASSIFIER
#include "core/alloc.h"
#include "route/classifier.h"
#endif

#ifndef BR_SOURCE_DIR
#define BR_SOURCE_DIR "."
#endif

static const char usage[] =
    "usage: bench_router_decision [--config FILE --route NAME | --classifier FILE | --synthetic |\n"
    "                              --rules] [--data CSV] [--column NAME] [--passes N] [--limit N]\n"
    "  --config FILE --route NAME  decide with this route of this config\n"
    "  --classifier FILE           a two-model classifier route over this model file\n"
    "  --synthetic                 the same with a random model of the default features\n"
    "  --rules                     a rules-only route (keywords, regex, length, code, math)\n"
    "  --data PATH                 a CSV of prompts with a header row\n"
    "                              (default data/routellm/gsm8k/gsm8k_responses.csv)\n"
    "  --column NAME               the prompt column (default prompt)\n"
    "  --passes N                  passes over the prompts (default 20; the first is warm-up)\n"
    "  --limit N                   use at most N prompts\n";

#define MODELS                                                              \
    "models:\n"                                                             \
    "  - {name: weak, provider: openai, price: {input: 0.6, output: 0.6}, " \
    "context_window: 32768, capabilities: [json_mode]}\n"                   \
    "  - {name: strong, provider: openai, price: {input: 10, output: 30}, " \
    "context_window: 128000, capabilities: [tools, json_mode, vision]}\n"

static const char rules_cfg[] =
    MODELS "routes:\n"
           "  - name: bench\n"
           "    models: [weak, strong]\n"
           "    policy: [rules, direct]\n"
           "    rules:\n"
           "      - {if: {keywords: [prove, derive, step by step]}, then: strong}\n"
           "      - {if: {regex: '[0-9]+ *% '}, then: strong}\n"
           "      - {if: {min_prompt_tokens: 120}, then: strong}\n"
           "      - {if: {code: true}, then: strong}\n"
           "      - {if: {math: true}, then: strong}\n"
           "      - {then: weak}\n";

/* Prompts from a CSV file with a header row: the column called `column`. */
struct csv_read {
    const char *column;
    long col;   /* index of the column, -1 until the header is read */
    long field; /* field index in the current row */
    bool header;
    char **prompts;
    size_t n;
    size_t cap;
};

static void on_field(void *s, size_t len, void *user)
{
    struct csv_read *r = user;
    if (r->header) {
        if (len == strlen(r->column) && memcmp(s, r->column, len) == 0) {
            r->col = r->field;
        }
    } else if (r->field == r->col) {
        if (r->n == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 1024;
            r->prompts = realloc(r->prompts, r->cap * sizeof(*r->prompts));
        }
        char *p = malloc(len + 1);
        memcpy(p, s, len);
        p[len] = '\0';
        r->prompts[r->n++] = p;
    }
    r->field++;
}

static void on_row(int c, void *user)
{
    (void)c;
    struct csv_read *r = user;
    r->header = false;
    r->field = 0;
}

static int read_prompts(const char *path, struct csv_read *r)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return BR_ERR_IO;
    }
    struct csv_parser p;
    csv_init(&p, CSV_APPEND_NULL);
    r->col = -1;
    r->header = true;
    char buf[65536];
    size_t k;
    int rc = BR_OK;
    while ((k = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (csv_parse(&p, buf, k, on_field, on_row, r) != k) {
            rc = BR_ERR_PARSE;
            break;
        }
    }
    csv_fini(&p, on_field, on_row, r);
    csv_free(&p);
    fclose(f);
    return rc == BR_OK && r->col >= 0 && r->n > 0 ? BR_OK : BR_ERR_PARSE;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A client's request body for prompt p (JSON-escaped), as the gateway receives it. */
static char *request_body(const char *p)
{
    size_t n = strlen(p);
    char *b = malloc(n * 6 + 256);
    if (!b) {
        return NULL;
    }
    size_t k = (size_t)sprintf(b, "{\"model\":\"auto\",\"messages\":[{\"role\":\"user\","
                                  "\"content\":\"");
    for (const unsigned char *s = (const unsigned char *)p; *s; s++) {
        if (*s == '"' || *s == '\\') {
            b[k++] = '\\';
            b[k++] = (char)*s;
        } else if (*s < 0x20) {
            k += (size_t)sprintf(b + k, "\\u%04x", *s);
        } else {
            b[k++] = (char)*s;
        }
    }
    k += (size_t)sprintf(b + k, "\"}],\"temperature\":0.2,\"max_tokens\":512}");
    b[k] = '\0';
    return b;
}

#ifdef BR_ROUTE_HAVE_CLASSIFIER
/* A binary model with the default features and random weights, written to path. */
static int write_synthetic(const char *path)
{
    struct br_classifier_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.kind = BR_CLASSIFIER_BINARY;
    spec.combine = BR_CLASSIFIER_COMBINE_NONE;
    br_features_config_default(&spec.features);
    spec.n_sets = 1;
    spec.sets[0].name = "strong";
    spec.sets[0].bias = 0;
    spec.sets[0].cost_usd = NAN;
    spec.sets[0].quality = NAN;
    spec.threshold = NAN;
    size_t dim = br_classifier_dim(spec.kind, &spec.features);
    float *w = malloc(dim * sizeof(*w));
    if (!w) {
        return BR_ERR_NOMEM;
    }
    struct br_rng rng;
    br_rng_seed(&rng, 7);
    for (size_t i = 0; i < dim; i++) {
        w[i] = (float)(br_rng_uniform(&rng) - 0.5);
    }
    spec.weights = w;
    char err[256];
    int rc = br_classifier_save(&spec, path, err, sizeof(err));
    if (rc != BR_OK) {
        (void)fprintf(stderr, "synthetic model: %s\n", err);
    }
    free(w);
    return rc;
}
#endif

struct opts {
    const char *config;
    const char *route;
    const char *classifier;
    const char *data;
    const char *column;
    bool synthetic;
    bool rules;
    long passes;
    long limit;
};

static int parse_args(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--config") == 0 && v) {
            o->config = v;
        } else if (strcmp(a, "--route") == 0 && v) {
            o->route = v;
        } else if (strcmp(a, "--classifier") == 0 && v) {
            o->classifier = v;
        } else if (strcmp(a, "--data") == 0 && v) {
            o->data = v;
        } else if (strcmp(a, "--column") == 0 && v) {
            o->column = v;
        } else if (strcmp(a, "--passes") == 0 && v) {
            o->passes = atol(v);
        } else if (strcmp(a, "--limit") == 0 && v) {
            o->limit = atol(v);
        } else if (strcmp(a, "--synthetic") == 0) {
            o->synthetic = true;
            continue;
        } else if (strcmp(a, "--rules") == 0) {
            o->rules = true;
            continue;
        } else {
            (void)fputs(usage, strcmp(a, "--help") == 0 ? stdout : stderr);
            return strcmp(a, "--help") == 0 ? 0 : 2;
        }
        i++;
    }
    if (o->passes < 2) {
        o->passes = 2;
    }
    return -1;
}

/* The config and route to decide with. */
static int load_route(const struct opts *o, char *tmp_model, struct br_config **cfg,
                      const char **route)
{
    char err[1024];
    char text[2048];
    int rc;
    if (o->config) {
        rc = br_config_load_file(o->config, cfg, err, sizeof(err));
        *route = o->route ? o->route : "auto";
    } else if (o->rules || (!o->classifier && !o->synthetic)) {
        rc = br_config_load_string(rules_cfg, strlen(rules_cfg), NULL, cfg, err, sizeof(err));
        *route = "bench";
    } else {
        const char *model = o->classifier;
#ifdef BR_ROUTE_HAVE_CLASSIFIER
        if (o->synthetic) {
            rc = write_synthetic(tmp_model);
            if (rc != BR_OK) {
                return rc;
            }
            model = tmp_model;
        }
#else
        (void)tmp_model;
        (void)fprintf(stderr, "this build has no classifier\n");
        return BR_ERR_UNSUPPORTED;
#endif
        (void)snprintf(text, sizeof(text),
                       MODELS "routes:\n  - name: bench\n    models: [weak, strong]\n"
                              "    policy: classifier\n    classifier: {model: %s, threshold: "
                              "0.5}\n",
                       model);
        rc = br_config_load_string(text, strlen(text), NULL, cfg, err, sizeof(err));
        *route = "bench";
    }
    if (rc != BR_OK) {
        (void)fprintf(stderr, "config: %s\n", err);
    }
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o = {.data = BR_SOURCE_DIR "/data/routellm/gsm8k/gsm8k_responses.csv",
                     .column = "prompt",
                     .passes = 20};
    int code = parse_args(argc, argv, &o);
    if (code >= 0) {
        return code;
    }
    char tmp_model[] = "/tmp/bench-router-XXXXXX";
    int fd = mkstemp(tmp_model);
    if (fd < 0) {
        return 1;
    }
    close(fd);
    struct br_config *cfg = NULL;
    const char *route_name = NULL;
    if (load_route(&o, tmp_model, &cfg, &route_name) != BR_OK) {
        unlink(tmp_model);
        return 1;
    }
    char err[1024];
    br_router *r = NULL;
    if (br_router_create(cfg, NULL, &r, err, sizeof(err)) != BR_OK) {
        (void)fprintf(stderr, "router: %s\n", err);
        unlink(tmp_model);
        return 1;
    }
    unlink(tmp_model);
    const struct br_route_cfg *route = br_config_route_find(cfg, route_name, strlen(route_name));
    if (!route) {
        (void)fprintf(stderr, "no route '%s' in the config\n", route_name);
        return 1;
    }
    struct csv_read ds = {.column = o.column};
    if (read_prompts(o.data, &ds) != BR_OK) {
        (void)fprintf(stderr, "data: cannot read column '%s' of %s\n", o.column, o.data);
        return 1;
    }
    size_t n = ds.n;
    if (o.limit > 0 && (size_t)o.limit < n) {
        n = (size_t)o.limit;
    }
    char **bodies = calloc(n, sizeof(*bodies));
    size_t total_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        bodies[i] = request_body(ds.prompts[i]);
        total_bytes += strlen(ds.prompts[i]);
    }
    br_arena *a = NULL;
    br_arena_create(0, &a);
    struct br_rng rng;
    br_rng_seed(&rng, 1);
    size_t measured = n * (size_t)(o.passes - 1);
    uint64_t *ns = malloc(measured * sizeof(*ns));
    size_t k = 0;
    size_t strong = 0;
    struct br_plan *plan = malloc(sizeof(*plan));
    for (long pass = 0; pass < o.passes; pass++) {
        for (size_t i = 0; i < n; i++) {
            br_arena_reset(a);
            uint64_t t0 = now_ns();
            struct br_route_req rq;
            struct br_route_error re;
            int rc = br_route_req_parse(a, br_slice_from_cstr(bodies[i]), &rq, err, sizeof(err));
            if (rc == BR_OK) {
                rc = br_route_plan(r, route, &rq, &rng, plan, &re);
            }
            uint64_t t1 = now_ns();
            if (rc != BR_OK) {
                (void)fprintf(stderr, "decision failed on prompt %zu\n", i);
                return 1;
            }
            if (pass > 0) {
                ns[k++] = t1 - t0;
                strong += plan->chosen == route->n_models - 1;
            }
        }
    }
    qsort(ns, k, sizeof(*ns), cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < k; i++) {
        sum += (double)ns[i];
    }
    printf("route %s (policy %s), %zu prompts of %s (mean %zu bytes), %ld passes\n", route_name,
           br_route_policy_name(route->policies[0]), n, o.data, n ? total_bytes / n : 0,
           o.passes - 1);
    printf("decisions %zu  strong %.1f%%\n", k, 100.0 * (double)strong / (double)k);
    printf("decision ns: mean %.0f  p50 %llu  p90 %llu  p99 %llu  p99.9 %llu  max %llu\n",
           sum / (double)k, (unsigned long long)ns[k / 2], (unsigned long long)ns[k * 90 / 100],
           (unsigned long long)ns[k * 99 / 100], (unsigned long long)ns[k * 999 / 1000],
           (unsigned long long)ns[k - 1]);
    free(plan);
    free(ns);
    for (size_t i = 0; i < n; i++) {
        free(bodies[i]);
    }
    free(bodies);
    br_arena_destroy(a);
    for (size_t i = 0; i < ds.n; i++) {
        free(ds.prompts[i]);
    }
    free(ds.prompts);
    br_router_destroy(r);
    br_config_unref(cfg);
    return 0;
}
