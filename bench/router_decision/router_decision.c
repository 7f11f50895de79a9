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
#include <errno.h>
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
    bool nomem; /* a prompt could not be stored */
    char **prompts;
    size_t n;
    size_t cap;
};

/* Appends a copy of s[0..len) to r->prompts; false when out of memory. */
static bool add_prompt(struct csv_read *r, const void *s, size_t len)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 1024;
        char **grown = realloc(r->prompts, cap * sizeof(*grown));
        if (!grown) {
            return false;
        }
        r->prompts = grown;
        r->cap = cap;
    }
    char *p = malloc(len + 1);
    if (!p) {
        return false;
    }
    memcpy(p, s, len);
    p[len] = '\0';
    r->prompts[r->n++] = p;
    return true;
}

static void on_field(void *s, size_t len, void *user)
{
    struct csv_read *r = user;
    if (r->header) {
        if (len == strlen(r->column) && memcmp(s, r->column, len) == 0) {
            r->col = r->field;
        }
    } else if (r->field == r->col && !r->nomem && !add_prompt(r, s, len)) {
        r->nomem = true;
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

static void free_prompts(struct csv_read *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->prompts[i]);
    }
    free(r->prompts);
    r->prompts = NULL;
    r->n = 0;
    r->cap = 0;
}

static int read_prompts(const char *path, struct csv_read *r)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return BR_ERR_IO;
    }
    struct csv_parser p;
    if (csv_init(&p, CSV_APPEND_NULL) != 0) {
        (void)fclose(f); /* read only: nothing to lose */
        return BR_ERR_NOMEM;
    }
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
    if (rc == BR_OK && ferror(f)) {
        rc = BR_ERR_IO;
    }
    if (rc == BR_OK && csv_fini(&p, on_field, on_row, r) != 0) {
        rc = BR_ERR_PARSE;
    }
    csv_free(&p);
    (void)fclose(f); /* read only: nothing to lose */
    if (r->nomem) {
        return BR_ERR_NOMEM;
    }
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

/* A count option: a whole decimal number, 0 or more. */
static bool parse_count(const char *v, long *out)
{
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end != '\0' || errno == ERANGE || x < 0) {
        return false;
    }
    *out = x;
    return true;
}

/* Fills o; returns -1 to go on, else the exit code (0 after --help, 2 on a bad argument). */
static int parse_args(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        const char *v = has_value ? argv[i + 1] : "";
        bool ok = true;
        if (strcmp(a, "--config") == 0 && has_value) {
            o->config = v;
        } else if (strcmp(a, "--route") == 0 && has_value) {
            o->route = v;
        } else if (strcmp(a, "--classifier") == 0 && has_value) {
            o->classifier = v;
        } else if (strcmp(a, "--data") == 0 && has_value) {
            o->data = v;
        } else if (strcmp(a, "--column") == 0 && has_value) {
            o->column = v;
        } else if (strcmp(a, "--passes") == 0 && has_value) {
            ok = parse_count(v, &o->passes);
        } else if (strcmp(a, "--limit") == 0 && has_value) {
            ok = parse_count(v, &o->limit);
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
        if (!ok) {
            (void)fprintf(stderr, "%s: expected a number of 0 or more, got '%s'\n", a, v);
            return 2;
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

/* Everything a run holds; bench_free releases what is set. */
struct bench {
    struct br_config *cfg;
    br_router *router;
    const struct br_route_cfg *route;
    const char *route_name;
    struct csv_read ds;
    char **bodies; /* [n] */
    size_t n;
    size_t total_bytes;
    br_arena *arena;
    uint64_t *ns; /* [measured] */
    size_t measured;
    struct br_plan *plan;
};

static void bench_free(struct bench *b)
{
    free(b->plan);
    free(b->ns);
    for (size_t i = 0; b->bodies && i < b->n; i++) {
        free(b->bodies[i]);
    }
    free(b->bodies);
    br_arena_destroy(b->arena);
    free_prompts(&b->ds);
    br_router_destroy(b->router);
    br_config_unref(b->cfg);
}

/* The router and its route (the model file of --synthetic is removed once loaded). */
static int setup_router(const struct opts *o, struct bench *b)
{
    char tmp_model[] = "/tmp/bench-router-XXXXXX";
    int fd = mkstemp(tmp_model);
    if (fd < 0) {
        (void)fprintf(stderr, "cannot create a temporary file\n");
        return 1;
    }
    (void)close(fd);
    char err[1024];
    int rc = load_route(o, tmp_model, &b->cfg, &b->route_name);
    if (rc == BR_OK) {
        rc = br_router_create(b->cfg, NULL, &b->router, err, sizeof(err));
        if (rc != BR_OK) {
            (void)fprintf(stderr, "router: %s\n", err);
        }
    }
    (void)unlink(tmp_model);
    if (rc != BR_OK) {
        return 1;
    }
    b->route = br_config_route_find(b->cfg, b->route_name, strlen(b->route_name));
    if (!b->route) {
        (void)fprintf(stderr, "no route '%s' in the config\n", b->route_name);
        return 1;
    }
    return 0;
}

/* The prompts, their request bodies and the buffers of the measurement. */
static int setup_data(const struct opts *o, struct bench *b)
{
    b->ds.column = o->column;
    int rc = read_prompts(o->data, &b->ds);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "data: cannot read column '%s' of %s (%s)\n", o->column, o->data,
                      br_strerror(rc));
        return 1;
    }
    size_t n = b->ds.n;
    if (o->limit > 0 && (size_t)o->limit < n) {
        n = (size_t)o->limit;
    }
    b->bodies = calloc(n, sizeof(*b->bodies));
    if (!b->bodies) {
        goto nomem;
    }
    b->n = n;
    for (size_t i = 0; i < n; i++) {
        b->bodies[i] = request_body(b->ds.prompts[i]);
        if (!b->bodies[i]) {
            goto nomem;
        }
        b->total_bytes += strlen(b->ds.prompts[i]);
    }
    b->measured = n * (size_t)(o->passes - 1);
    b->ns = malloc(b->measured * sizeof(*b->ns));
    b->plan = malloc(sizeof(*b->plan));
    if (!b->ns || !b->plan || br_arena_create(0, &b->arena) != BR_OK) {
        goto nomem;
    }
    return 0;
nomem:
    (void)fprintf(stderr, "out of memory\n");
    return 1;
}

/* Every pass over the prompts, the first as a warm-up; *strong counts the decisions for the
 * route's last (strongest) model. */
static int measure(const struct opts *o, struct bench *b, size_t *strong)
{
    struct br_rng rng;
    br_rng_seed(&rng, 1);
    char err[1024];
    size_t k = 0;
    for (long pass = 0; pass < o->passes; pass++) {
        for (size_t i = 0; i < b->n; i++) {
            br_arena_reset(b->arena);
            uint64_t t0 = now_ns();
            struct br_route_req rq;
            struct br_route_error re;
            int rc = br_route_req_parse(b->arena, br_slice_from_cstr(b->bodies[i]), &rq, err,
                                        sizeof(err));
            if (rc == BR_OK) {
                rc = br_route_plan(b->router, b->route, &rq, &rng, b->plan, &re);
            }
            uint64_t t1 = now_ns();
            if (rc != BR_OK) {
                (void)fprintf(stderr, "decision failed on prompt %zu\n", i);
                return 1;
            }
            if (pass > 0) {
                b->ns[k++] = t1 - t0;
                *strong += b->plan->chosen == b->route->n_models - 1;
            }
        }
    }
    return 0;
}

static void report(const struct opts *o, const struct bench *b, size_t strong)
{
    uint64_t *ns = b->ns;
    size_t k = b->measured;
    qsort(ns, k, sizeof(*ns), cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < k; i++) {
        sum += (double)ns[i];
    }
    printf("route %s (policy %s), %zu prompts of %s (mean %zu bytes), %ld passes\n", b->route_name,
           br_route_policy_name(b->route->policies[0]), b->n, o->data, b->total_bytes / b->n,
           o->passes - 1);
    printf("decisions %zu  strong %.1f%%\n", k, 100.0 * (double)strong / (double)k);
    printf("decision ns: mean %.0f  p50 %llu  p90 %llu  p99 %llu  p99.9 %llu  max %llu\n",
           sum / (double)k, (unsigned long long)ns[k / 2], (unsigned long long)ns[k * 90 / 100],
           (unsigned long long)ns[k * 99 / 100], (unsigned long long)ns[k * 999 / 1000],
           (unsigned long long)ns[k - 1]);
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
    struct bench b;
    memset(&b, 0, sizeof(b));
    size_t strong = 0;
    code = setup_router(&o, &b);
    if (code == 0) {
        code = setup_data(&o, &b);
    }
    if (code == 0) {
        code = measure(&o, &b, &strong);
    }
    if (code == 0) {
        report(&o, &b, strong);
    }
    bench_free(&b);
    return code;
}
