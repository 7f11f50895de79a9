/* SPDX-License-Identifier: MIT */
/*
 * Routes through the running gateway: "model": "auto" reaching the model its policy predicts
 * (replay models over real GSM8K prompts), the decision headers, log columns and metrics,
 * client hints, cascades that escalate on low confidence and not on high (the mock returns
 * the log-probabilities a test asks for), self-verification, feedback that moves a threshold
 * (seen in /admin/routes, /metrics and the request log), malformed feedback, body logging and
 * `brigade export` / `brigade routes`.
 */
#define _DEFAULT_SOURCE /* usleep */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "common.h"
#include "core/arena.h"
#include "core/err.h"
#include "route/route.h"
#ifdef BR_ROUTE_HAVE_CLASSIFIER
#include <csv.h>

#include "route/classifier.h"
#endif

#define MASTER "sk-brigade-master-it-77"

#define MOCK_MODEL(name, path, in, out, caps)             \
    "  - name: " name "\n"                                \
    "    provider: openai\n"                              \
    "    model: " name "-upstream\n"                      \
    "    base_url: http://127.0.0.1:{MOCK}/" path "/v1\n" \
    "    api_key: env:BR_IT_PROVIDER_KEY\n"               \
    "    price: {input: " in ", output: " out "}\n"       \
    "    capabilities: " caps "\n"                        \
    "    timeouts: {connect: 1s, first_byte: 3s, idle: 3s}\n"

#define REPLAY(name, column, in, out, caps)                       \
    "  - name: " name "\n"                                        \
    "    provider: replay\n"                                      \
    "    replay:\n"                                               \
    "      file: {SRC}/data/routellm/gsm8k/gsm8k_responses.csv\n" \
    "      prompt: prompt\n"                                      \
    "      response: " column "\n"                                \
    "    price: {input: " in ", output: " out "}\n"               \
    "    capabilities: " caps "\n"

static const char config[] =
    "server:\n"
    "  workers: 1\n"
    "  timeouts: {drain: 5s}\n"
    "auth:\n"
    "  master_key: env:BR_IT_MASTER_KEY\n"
    "  keys:\n"
    "    - {id: app, key: env:BR_IT_APP_KEY}\n"
    "log:\n"
    "  path: {DIR}/requests.db\n"
    "  flush: 5ms\n"
    "  bodies: true\n"
    "models:\n" MOCK_MODEL("mock-cheap", "cheap", "0.1", "0.2", "[json_mode]")
        MOCK_MODEL("mock-strong", "strong", "10", "30", "[tools, json_mode, vision]")
            MOCK_MODEL("mock-verifier", "verify", "0.1", "0.2", "[]") REPLAY(
                "mixtral-8x7b-instruct", "mistralai/Mixtral-8x7B-Instruct-v0.1_response", "0.6",
                "0.6", "[json_mode]")
                REPLAY("gpt-4-1106-preview", "gpt-4-1106-preview_response", "10", "30",
                       "[tools, json_mode, vision]") "routes:\n"
                                                     "  - name: auto\n"
                                                     "    models: [mixtral-8x7b-instruct, "
                                                     "gpt-4-1106-preview]\n"
                                                     "    policy: rules\n"
                                                     "    rules:\n"
                                                     "      - {if: {keywords: [how many]}, then: "
                                                     "weak}\n"
                                                     "      - {then: strong}\n"
                                                     "  - name: casc\n"
                                                     "    models: [mock-cheap, mock-strong]\n"
                                                     "    policy: cascade\n"
                                                     "    cascade: {threshold: -0.5}\n"
                                                     "  - name: verify\n"
                                                     "    models: [mock-cheap, mock-strong]\n"
                                                     "    policy: cascade\n"
                                                     "    cascade: {confidence: self_verify, "
                                                     "threshold: 0.5, verifier: mock-verifier}\n"
                                                     "  - name: fb\n"
                                                     "    models: [mock-cheap, mock-strong]\n"
                                                     "    policy: cascade\n"
                                                     "    cascade: {threshold: -0.5}\n"
                                                     "    feedback: {q_min: 0.8, step: 0.1, "
                                                     "min_samples: 5, cooldown: 0s, "
                                                     "min_threshold: -3, max_threshold: 0}\n"
                                                     "  - name: pick\n"
                                                     "    models: [mock-cheap, mock-strong]\n"
                                                     "    policy: direct\n";

static const char *const AUTH[] = {"Authorization: Bearer " MASTER, NULL};

/* Real GSM8K test questions (data/routellm): two with "how many", two without. */
static const char *const gsm8k[] = {
    "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total "
    "does it take?",
    "Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in $50,000 "
    "in repairs.  This increased the value of the house by 150%.  How much profit did he make?",
    "James decides to run 3 sprints 3 times a week.  He runs 60 meters each sprint.  How many "
    "total meters does he run a week?",
    "Kylar went to the store to buy glasses for his new apartment. One glass costs $5, but every "
    "second glass costs only 60% of the price. Kylar wants to buy 16 glasses. How much does he "
    "need to pay for them?",
};

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    setenv("BR_IT_MASTER_KEY", MASTER, 1);
    setenv("BR_IT_APP_KEY", "sk-app-key-it", 1);
    start_env(e, config);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    env_stop(*state);
    free(*state);
    return 0;
}

/* POST /v1/chat/completions with the master key and optional extra headers. */
static void chat(struct env *e, const char *body, const char *extra_header, struct http_resp *r)
{
    const char *h[] = {AUTH[0], extra_header, NULL};
    http_request(e, "POST", "/v1/chat/completions", h, body, r);
}

static char *body_for(const char *model, const char *text, bool stream, const char *extra)
{
    return chat_body(model, text, stream, extra);
}

static void expect_header(const struct http_resp *r, const char *name, const char *fragment)
{
    char *v = http_header(r, name);
    if (!v || !strstr(v, fragment)) {
        fail_msg("header %s = '%s', wanted '%s' in it", name, v ? v : "(none)", fragment);
    }
    free(v);
}

static void expect_error(const struct http_resp *r, long status, const char *code)
{
    if (r->status != status) {
        fail_msg("status %ld, want %ld: %s", r->status, status, r->body);
    }
    json_t *j = parse_json(r->body);
    json_t *err = json_object_get(j, "error");
    assert_true(json_is_string(json_object_get(err, "message")));
    assert_string_equal(json_string_value(json_object_get(err, "code")), code);
    json_decref(j);
}

/* Polls an SQL count until it reaches want (the request log is written asynchronously). */
static long long db_wait_int(struct env *e, const char *sql, long long want)
{
    long long v = -1;
    for (int i = 0; i < 500; i++) {
        v = db_int(e, sql);
        if (v >= want) {
            break;
        }
        usleep(10000);
    }
    return v;
}

/* ------------------------------------------------------------------ M1 */

static void test_auto_reaches_predicted_model(void **state)
{
    struct env *e = *state;
    for (size_t i = 0; i < sizeof(gsm8k) / sizeof(gsm8k[0]); i++) {
        bool weak = strstr(gsm8k[i], "How many") != NULL;
        char *b = body_for("auto", gsm8k[i], false, NULL);
        struct http_resp r;
        chat(e, b, NULL, &r);
        free(b);
        if (r.status != 200) {
            fail_msg("status %ld: %s", r.status, r.body);
        }
        const char *want = weak ? "mixtral-8x7b-instruct" : "gpt-4-1106-preview";
        expect_header(&r, "x-brigade-model", want);
        expect_header(&r, "x-brigade-route", "auto; policy=rules; model=");
        expect_header(&r, "x-brigade-route", want);
        expect_header(&r, "x-brigade-route-reason", weak ? "rule 1" : "rule 2");
        /* The answer is that model's real recorded answer. */
        json_t *j = parse_json(r.body);
        const char *m = json_string_value(json_object_get(j, "model"));
        if (!strstr(m, weak ? "mixtral" : "gpt-4")) {
            fail_msg("answer of model %s", m);
        }
        json_decref(j);
        http_resp_free(&r);
    }
    assert_true(db_wait_rows(e, 4));
    assert_int_equal(db_int(e, "SELECT COUNT(*) FROM requests WHERE route = 'auto' AND policy = "
                               "'rules' AND decision = 'rule' AND reason LIKE 'rule %'"),
                     4);
    assert_int_equal(db_int(e, "SELECT COUNT(*) FROM requests WHERE model = "
                               "'mixtral-8x7b-instruct' AND route = 'auto'"),
                     2);
    /* Streams are routed the same way. */
    char *b = body_for("auto", gsm8k[0], true, NULL);
    struct http_resp r;
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mixtral-8x7b-instruct");
    expect_header(&r, "x-brigade-route", "policy=rules");
    assert_non_null(strstr(r.body, "data: [DONE]"));
    http_resp_free(&r);
}

static void test_models_list_routes(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    http_request(e, "GET", "/v1/models", AUTH, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    json_t *data = json_object_get(j, "data");
    int routes = 0;
    for (size_t i = 0; i < json_array_size(data); i++) {
        json_t *m = json_array_get(data, i);
        if (strcmp(json_string_value(json_object_get(m, "owned_by")), "brigade-route") == 0) {
            routes++;
        }
    }
    assert_int_equal(routes, 5);
    json_decref(j);
    http_resp_free(&r);
    http_request(e, "GET", "/v1/models/auto", AUTH, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"owned_by\":\"brigade-route\""));
    http_resp_free(&r);
}

static void test_hints(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    /* "how many" would go to the cheap model; quality high sends it to the strong one. */
    char *b = body_for("auto", gsm8k[0], false, NULL);
    chat(e, b, "x-brigade-quality: high", &r);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "gpt-4-1106-preview");
    expect_header(&r, "x-brigade-route", "policy=hint");
    expect_header(&r, "x-brigade-route-reason", "quality hint high");
    http_resp_free(&r);
    /* The same key in metadata; a header wins over metadata. */
    char *b2 =
        body_for("auto", gsm8k[1], false, "\"metadata\":{\"x-brigade-quality\":\"economy\"}");
    chat(e, b2, NULL, &r);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mixtral-8x7b-instruct");
    http_resp_free(&r);
    chat(e, b2, "x-brigade-quality: standard", &r);
    expect_header(&r, "x-brigade-model", "gpt-4-1106-preview");
    expect_header(&r, "x-brigade-route", "policy=rules");
    http_resp_free(&r);
    free(b2);
    /* Malformed hints: 400 in OpenAI's shape. */
    chat(e, b, "x-brigade-max-latency-ms: soon", &r);
    expect_error(&r, 400, "invalid_hint");
    assert_non_null(strstr(r.body, "x-brigade-max-latency-ms"));
    http_resp_free(&r);
    chat(e, b, "x-brigade-max-cost-usd: 1e-3", &r);
    expect_error(&r, 400, "invalid_hint");
    http_resp_free(&r);
    char *b3 = body_for("auto", gsm8k[0], false, "\"metadata\":{\"x-brigade-quality\":\"max\"}");
    chat(e, b3, NULL, &r);
    expect_error(&r, 400, "invalid_hint");
    http_resp_free(&r);
    free(b3);
    /* A cost cap nothing fits. */
    chat(e, b, "x-brigade-max-cost-usd: 0.000000001", &r);
    expect_error(&r, 400, "route_cost_cap");
    http_resp_free(&r);
    free(b);
    /* A capability only the strong model has: tools. */
    char *b4 = body_for("pick", "hi", false,
                        "\"tools\":[{\"type\":\"function\",\"function\":{"
                        "\"name\":\"f\",\"parameters\":{}}}]");
    chat(e, b4, "x-brigade-quality: economy", &r);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mock-strong");
    http_resp_free(&r);
    free(b4);
    /* Rejected requests are logged with their route. */
    assert_true(db_wait_rows(e, 7));
    assert_true(db_int(e, "SELECT COUNT(*) FROM requests WHERE route = 'auto' AND status = 400 "
                          "AND error_kind = 'rejected_400'") >= 4);
}

static void test_metrics_and_admin(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    char *b = body_for("auto", gsm8k[2], false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    http_request(e, "GET", "/metrics", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "brigade_route_decisions_total{route=\"auto\",model=\"mixtral-"
                                   "8x7b-instruct\",policy=\"rules\"} 1"));
    assert_non_null(strstr(r.body, "brigade_route_threshold{route=\"casc\"} -0.5"));
    http_resp_free(&r);
    /* /admin/routes needs the master key. */
    const char *app[] = {"Authorization: Bearer sk-app-key-it", NULL};
    http_request(e, "GET", "/admin/routes", app, NULL, &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);
    http_request(e, "GET", "/admin/routes", AUTH, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    json_t *routes = json_object_get(j, "routes");
    assert_int_equal(json_array_size(routes), 5);
    json_t *a = json_array_get(routes, 0);
    assert_string_equal(json_string_value(json_object_get(a, "name")), "auto");
    json_t *models = json_object_get(a, "models");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(models, 0), "decisions")),
                     1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(a, "policy"), 0)),
                        "rules");
    json_decref(j);
    http_resp_free(&r);
}

#ifdef BR_ROUTE_HAVE_CLASSIFIER
/* The first n prompts of the GSM8K file (the replay models answer exactly these). */
struct prompts {
    char **p;
    char **weak; /* Mixtral's recorded answers (column 3), when not NULL */
    size_t n;
    size_t max;
    long field;
    bool header;
    bool stored; /* this row's prompt was kept */
};

static void on_field(void *s, size_t len, void *user)
{
    struct prompts *ps = user;
    if (!ps->header && ps->field == 0 && ps->n < ps->max) {
        ps->p[ps->n] = strndup(s, len);
        ps->n++;
        ps->stored = true;
    }
    if (ps->stored && ps->field == 3 && ps->weak) {
        ps->weak[ps->n - 1] = strndup(s, len);
    }
    ps->field++;
}

static void on_row(int c, void *user)
{
    (void)c;
    struct prompts *ps = user;
    ps->header = false;
    ps->field = 0;
    ps->stored = false;
}

static void read_gsm8k(struct prompts *ps)
{
    FILE *f = fopen(BR_SOURCE_DIR "/data/routellm/gsm8k/gsm8k_responses.csv", "rb");
    assert_non_null(f);
    struct csv_parser p;
    csv_init(&p, CSV_APPEND_NULL);
    ps->header = true;
    char buf[65536];
    size_t k;
    while (ps->n < ps->max && (k = fread(buf, 1, sizeof(buf), f)) > 0) {
        csv_parse(&p, buf, k, on_field, on_row, ps);
    }
    csv_free(&p);
    fclose(f);
}

/* A binary router model with random weights (the shipped one may not exist in a checkout). */
static void write_router_model(const char *path)
{
    struct br_classifier_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.kind = BR_CLASSIFIER_BINARY;
    spec.combine = BR_CLASSIFIER_COMBINE_NONE;
    br_features_config_default(&spec.features);
    spec.features.hash_bits = 12;
    spec.n_sets = 1;
    spec.sets[0].name = "strong";
    spec.sets[0].cost_usd = NAN;
    spec.sets[0].quality = NAN;
    spec.threshold = NAN;
    size_t dim = br_classifier_dim(spec.kind, &spec.features);
    float *w = malloc(dim * sizeof(*w));
    srand(11);
    for (size_t i = 0; i < dim; i++) {
        w[i] = (float)((double)rand() / RAND_MAX - 0.5) * 4.0f;
    }
    spec.weights = w;
    char err[256];
    if (br_classifier_save(&spec, path, err, sizeof(err)) != BR_OK) {
        fail_msg("model: %s", err);
    }
    free(w);
}

static const char classifier_config[] =
    "server: {workers: 1, timeouts: {drain: 5s}}\n"
    "models:\n" REPLAY("mixtral-8x7b-instruct", "mistralai/Mixtral-8x7B-Instruct-v0.1_response",
                       "0.6", "0.6", "[json_mode]")
        REPLAY("gpt-4-1106-preview", "gpt-4-1106-preview_response", "10", "30",
               "[tools, json_mode, vision]") "routes:\n"
                                             "  - name: auto\n"
                                             "    models: [mixtral-8x7b-instruct, "
                                             "gpt-4-1106-preview]\n"
                                             "    policy: classifier\n"
                                             "    classifier: {model: {DIR}/router.brr, "
                                             "threshold: 0.5}\n";

static void test_auto_classifier_matches_policy(void **state)
{
    (void)state;
    struct env e;
    env_start_mock(&e, NULL);
    char model[300];
    (void)snprintf(model, sizeof(model), "%s/router.brr", e.dir);
    write_router_model(model);
    env_start_gateway(&e, classifier_config);
    /* The policy's own prediction, from the same config file, in this process. */
    struct br_config *cfg = NULL;
    char err[512];
    assert_int_equal(br_config_load_file(e.config_path, &cfg, err, sizeof(err)), BR_OK);
    br_router *router = NULL;
    assert_int_equal(br_router_create(cfg, NULL, &router, err, sizeof(err)), BR_OK);
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    struct br_rng rng;
    br_rng_seed(&rng, 1);
    struct prompts ps = {.max = 40};
    ps.p = calloc(ps.max, sizeof(*ps.p));
    read_gsm8k(&ps);
    assert_int_equal(ps.n, 40);
    int strong = 0;
    for (size_t i = 0; i < ps.n; i++) {
        char *b = chat_body("auto", ps.p[i], false, NULL);
        struct br_route_req rq;
        struct br_route_error re;
        struct br_plan plan;
        br_arena_reset(a);
        assert_int_equal(br_route_req_parse(a, br_slice_from_cstr(b), &rq, err, sizeof(err)),
                         BR_OK);
        assert_int_equal(br_route_plan(router, &cfg->routes[0], &rq, &rng, &plan, &re), BR_OK);
        struct http_resp r;
        http_request(&e, "POST", "/v1/chat/completions", NULL, b, &r);
        free(b);
        if (r.status != 200) {
            fail_msg("prompt %zu: %ld %s", i, r.status, r.body);
        }
        expect_header(&r, "x-brigade-model", plan.steps[0].model->name);
        char score[64];
        (void)snprintf(score, sizeof(score), "policy=classifier; model=%s; score=%.3f",
                       plan.steps[0].model->name, plan.score);
        expect_header(&r, "x-brigade-route", score);
        strong += plan.chosen == 1;
        /* The real recorded answer of the model the policy chose. */
        json_t *j = parse_json(r.body);
        const char *m = json_string_value(json_object_get(j, "model"));
        assert_non_null(strstr(m, plan.chosen == 1 ? "gpt-4" : "mixtral"));
        json_decref(j);
        http_resp_free(&r);
        free(ps.p[i]);
    }
    free(ps.p);
    /* Both models were chosen: the test says something about the threshold. */
    assert_true(strong > 0 && strong < 40);
    br_arena_destroy(a);
    br_router_destroy(router);
    br_config_unref(cfg);
    env_stop(&e);
}

/* config/brigade.yaml as shipped, with its relative paths made absolute and the log in {DIR}. */
static char *default_config(void)
{
    FILE *f = fopen(BR_SOURCE_DIR "/config/brigade.yaml", "rb");
    assert_non_null(f);
    char *in = calloc(1, 65536);
    size_t n = fread(in, 1, 65535, f);
    fclose(f);
    assert_true(n > 0 && n < 65535);
    char *out = calloc(1, 2 * 65536);
    size_t k = 0;
    static const char *const from[] = {"../data/", "../models/", "path: brigade.db"};
    static const char *const to[] = {BR_SOURCE_DIR "/data/", BR_SOURCE_DIR "/models/",
                                     "path: {DIR}/requests.db"};
    for (size_t i = 0; i < n;) {
        bool done = false;
        for (size_t j = 0; j < 3 && !done; j++) {
            if (strncmp(in + i, from[j], strlen(from[j])) == 0) {
                memcpy(out + k, to[j], strlen(to[j]));
                k += strlen(to[j]);
                i += strlen(from[j]);
                done = true;
            }
        }
        if (!done) {
            out[k++] = in[i++];
        }
    }
    free(in);
    return out;
}

/*
 * The default config's routes through the running gateway on real GSM8K questions: `auto`
 * picks the model the shipped router predicts, `auto-cascade` asks Mixtral first and escalates
 * exactly when the shipped verifier's P(ok) for Mixtral's recorded answer is below the
 * threshold, paying for both calls.
 */
static void test_default_config_routes(void **state)
{
    (void)state;
    if (access(BR_SOURCE_DIR "/models/router/general.brr", R_OK) != 0) {
        skip();
    }
    struct env e;
    env_start_mock(&e, NULL);
    char *tmpl = default_config();
    env_start_gateway(&e, tmpl);
    free(tmpl);
    struct br_config *cfg = NULL;
    char err[512];
    assert_int_equal(br_config_load_file(e.config_path, &cfg, err, sizeof(err)), BR_OK);
    br_router *router = NULL;
    assert_int_equal(br_router_create(cfg, NULL, &router, err, sizeof(err)), BR_OK);
    const struct br_route_cfg *rauto = br_config_route_find(cfg, "auto", 4);
    const struct br_route_cfg *rcasc = br_config_route_find(cfg, "auto-cascade", 12);
    assert_non_null(rauto);
    assert_non_null(rcasc);
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    struct br_rng rng;
    br_rng_seed(&rng, 1);
    struct prompts ps = {.max = 30};
    ps.p = calloc(ps.max, sizeof(*ps.p));
    ps.weak = calloc(ps.max, sizeof(*ps.weak));
    read_gsm8k(&ps);
    assert_int_equal(ps.n, 30);
    int strong = 0;
    int escalated = 0;
    for (size_t i = 0; i < ps.n; i++) {
        /* auto: the classifier's own decision. */
        char *b = chat_body("auto", ps.p[i], false, NULL);
        struct br_route_req rq;
        struct br_route_error re;
        struct br_plan plan;
        br_arena_reset(a);
        assert_int_equal(br_route_req_parse(a, br_slice_from_cstr(b), &rq, err, sizeof(err)),
                         BR_OK);
        assert_int_equal(br_route_plan(router, rauto, &rq, &rng, &plan, &re), BR_OK);
        struct http_resp r;
        http_request(&e, "POST", "/v1/chat/completions", NULL, b, &r);
        free(b);
        if (r.status != 200) {
            fail_msg("auto, prompt %zu: %ld %s", i, r.status, r.body);
        }
        expect_header(&r, "x-brigade-model", plan.steps[0].model->name);
        expect_header(&r, "x-brigade-route", "auto; policy=classifier");
        strong += plan.chosen == 1;
        http_resp_free(&r);
        /* auto-cascade: the verifier on Mixtral's recorded answer. */
        assert_non_null(ps.weak[i]);
        double p_ok = NAN;
        assert_int_equal(br_router_verify(router, rcasc, ps.p[i], strlen(ps.p[i]), ps.weak[i],
                                          strlen(ps.weak[i]), &p_ok),
                         BR_OK);
        bool escalate = p_ok < rcasc->cascade.threshold;
        b = chat_body("auto-cascade", ps.p[i], false, NULL);
        http_request(&e, "POST", "/v1/chat/completions", NULL, b, &r);
        free(b);
        if (r.status != 200) {
            fail_msg("auto-cascade, prompt %zu: %ld %s", i, r.status, r.body);
        }
        expect_header(&r, "x-brigade-model",
                      escalate ? "gpt-4-1106-preview" : "mixtral-8x7b-instruct");
        expect_header(&r, "x-brigade-route-reason", "verifier P(ok)");
        if (escalate) {
            expect_header(&r, "x-brigade-route",
                          "cascade=mixtral-8x7b-instruct>gpt-4-1106-preview");
        }
        escalated += escalate;
        http_resp_free(&r);
        free(ps.p[i]);
        free(ps.weak[i]);
    }
    free(ps.p);
    free(ps.weak);
    /* Both routes used both models on these 30 questions. */
    assert_true(strong > 0 && strong < 30);
    assert_true(escalated > 0 && escalated < 30);
    br_arena_destroy(a);
    br_router_destroy(router);
    br_config_unref(cfg);
    env_stop(&e);
}
#else
static void test_auto_classifier_matches_policy(void **state)
{
    (void)state;
    skip(); /* this build has no classifier */
}

static void test_default_config_routes(void **state)
{
    (void)state;
    skip(); /* this build has no classifier */
}
#endif

/* ------------------------------------------------------------------ M2: cascades */

static json_t *mock_requests(struct env *e)
{
    char *text = mock_get(e, "/_mock/requests");
    json_t *j = parse_json(text);
    free(text);
    return j;
}

static void test_cascade_accepts_confident_answer(void **state)
{
    struct env *e = *state;
    mock_reset(e);
    struct http_resp r;
    char *b = body_for("casc", "easy question [[logprob:-0.05]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mock-cheap");
    expect_header(&r, "x-brigade-route", "policy=cascade");
    expect_header(&r, "x-brigade-route", "cascade=mock-cheap");
    expect_header(&r, "x-brigade-route-reason", "mean logprob -0.050 >= -0.500");
    /* The client did not ask for logprobs: the answer carries none. */
    json_t *j = parse_json(r.body);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    assert_true(json_is_null(json_object_get(ch, "logprobs")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ch, "message"), "content")),
        "Echo: easy question");
    json_decref(j);
    http_resp_free(&r);
    /* One upstream call, non-streamed, with logprobs asked for. */
    json_t *reqs = mock_requests(e);
    assert_int_equal(json_array_size(reqs), 1);
    json_t *q = json_object_get(json_array_get(reqs, 0), "json");
    assert_true(json_is_true(json_object_get(q, "logprobs")));
    assert_string_equal(json_string_value(json_object_get(q, "model")), "mock-cheap-upstream");
    json_decref(reqs);
    assert_true(db_wait_rows(e, 1));
    assert_int_equal(db_int(e, "SELECT COUNT(*) FROM requests WHERE route = 'casc' AND decision "
                               "= 'accepted' AND cascade = 'mock-cheap' AND confidence < -0.04"),
                     1);
}

static void test_cascade_escalates_low_confidence(void **state)
{
    struct env *e = *state;
    mock_reset(e);
    struct http_resp r;
    char *b = body_for("casc", "hard question [[logprob:-2.5]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mock-strong");
    expect_header(&r, "x-brigade-route", "cascade=mock-cheap>mock-strong");
    expect_header(&r, "x-brigade-route-reason", "mean logprob -2.500 < -0.500");
    /* Both calls are priced: the cheap one's tokens too. Mock usage: prompt = words + 3,
     * completion = answer words: cheap 6/3 at 0.1/0.2, strong 6/3 at 10/30. */
    char *cost = http_header(&r, "x-brigade-cost-usd");
    expect_cost(cost, 6 * 100 + 3 * 200 + 6 * 10000 + 3 * 30000);
    free(cost);
    http_resp_free(&r);
    json_t *reqs = mock_requests(e);
    assert_int_equal(json_array_size(reqs), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(reqs, 1), "path")),
                        "/strong/v1/chat/completions");
    json_t *q = json_object_get(json_array_get(reqs, 1), "json");
    assert_null(json_object_get(q, "logprobs")); /* the last step gets the client's body */
    json_decref(reqs);
    assert_true(db_wait_rows(e, 1));
    assert_int_equal(db_int(e, "SELECT cost_nano_usd FROM requests WHERE route = 'casc' AND "
                               "decision = 'escalated' AND cascade = 'mock-cheap>mock-strong'"),
                     6 * 100 + 3 * 200 + 6 * 10000 + 3 * 30000);
    assert_int_equal(db_int(e, "SELECT prompt_tokens FROM requests WHERE decision = "
                               "'escalated'"),
                     12);
}

static void test_cascade_streams(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    /* Accepted: the non-streamed cheap answer is re-chunked as SSE, usage chunk included. */
    char *b = body_for("casc", "one two three [[logprob:-0.1]]", true,
                       "\"stream_options\":{\"include_usage\":true}");
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mock-cheap");
    size_t n = 0;
    char **p = sse_payloads(r.body, &n);
    assert_true(n == 4); /* content, finish, usage, [DONE] */
    json_t *c0 = parse_json(p[0]);
    assert_string_equal(json_string_value(json_object_get(c0, "object")), "chat.completion.chunk");
    json_t *d = json_object_get(json_array_get(json_object_get(c0, "choices"), 0), "delta");
    assert_string_equal(json_string_value(json_object_get(d, "content")), "Echo: one two three");
    json_decref(c0);
    json_t *c2 = parse_json(p[2]);
    assert_int_equal(json_array_size(json_object_get(c2, "choices")), 0);
    assert_true(json_integer_value(
                    json_object_get(json_object_get(c2, "usage"), "completion_tokens")) == 4);
    json_decref(c2);
    assert_string_equal(p[3], "[DONE]");
    sse_free(p);
    expect_header(&r, "x-brigade-cost-usd", "0.");
    http_resp_free(&r);
    /* Escalated: the strong model's own stream. */
    b = body_for("casc", "a b c d [[logprob:-3]]", true, NULL);
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mock-strong");
    p = sse_payloads(r.body, &n);
    assert_true(n >= 6); /* role, 5 words, finish, [DONE] */
    assert_string_equal(p[n - 1], "[DONE]");
    sse_free(p);
    http_resp_free(&r);
}

static void test_cascade_self_verification(void **state)
{
    struct env *e = *state;
    mock_reset(e);
    struct http_resp r;
    char *b = body_for("verify", "what is up [[reply:yes@/verify]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mock-cheap");
    expect_header(&r, "x-brigade-route-reason", "P(yes)");
    http_resp_free(&r);
    json_t *reqs = mock_requests(e);
    assert_int_equal(json_array_size(reqs), 2);
    json_t *v = json_array_get(reqs, 1);
    assert_string_equal(json_string_value(json_object_get(v, "path")),
                        "/verify/v1/chat/completions");
    const char *vb = json_string_value(json_object_get(v, "body"));
    assert_non_null(strstr(vb, "Proposed answer"));
    assert_non_null(strstr(vb, "Echo: what is up")); /* the cheap answer being checked */
    json_decref(reqs);
    b = body_for("verify", "what is up [[reply:no@/verify]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mock-strong");
    expect_header(&r, "x-brigade-route", "cascade=mock-cheap>mock-strong");
    http_resp_free(&r);
    /* A failing cheap step escalates too. */
    b = body_for("casc", "boom [[status:500@/cheap]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    assert_int_equal(r.status, 200);
    expect_header(&r, "x-brigade-model", "mock-strong");
    expect_header(&r, "x-brigade-route-reason", "failed");
    http_resp_free(&r);
}

/* ------------------------------------------------------------------ M3: feedback */

static void post_feedback(struct env *e, const char *body, const char *key, struct http_resp *r)
{
    char auth[128];
    (void)snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key ? key : MASTER);
    const char *h[] = {auth, "Content-Type: application/json", NULL};
    http_request(e, "POST", "/v1/feedback", h, body, r);
}

static void test_feedback_moves_threshold(void **state)
{
    struct env *e = *state;
    char ids[6][64];
    for (int i = 0; i < 6; i++) {
        char text[64];
        (void)snprintf(text, sizeof(text), "question %d [[logprob:-0.01]]", i);
        char *b = body_for("fb", text, false, NULL);
        struct http_resp r;
        chat(e, b, NULL, &r);
        free(b);
        assert_int_equal(r.status, 200);
        expect_header(&r, "x-brigade-model", "mock-cheap");
        char *id = http_header(&r, "x-request-id");
        (void)snprintf(ids[i], sizeof(ids[i]), "%s", id);
        free(id);
        http_resp_free(&r);
    }
    /* The answers were bad: thumbs down. Feedback sent right after the request is found. */
    for (int i = 0; i < 5; i++) {
        char body[160];
        (void)snprintf(body, sizeof(body), "{\"request_id\":\"%s\",\"thumbs\":\"down\"%s}", ids[i],
                       i == 0 ? ",\"comment\":\"wrong sum\"" : "");
        struct http_resp r;
        post_feedback(e, body, NULL, &r);
        if (r.status != 200) {
            fail_msg("feedback %d: %ld %s", i, r.status, r.body);
        }
        json_t *j = parse_json(r.body);
        assert_string_equal(json_string_value(json_object_get(j, "route")), "fb");
        assert_string_equal(json_string_value(json_object_get(j, "model")), "mock-cheap");
        assert_string_equal(json_string_value(json_object_get(j, "decision")), "accepted");
        json_decref(j);
        http_resp_free(&r);
    }
    /* Five cheap answers rated 0 with q_min 0.8: tau moves up one step, -0.5 -> -0.4. */
    struct http_resp r;
    http_request(e, "GET", "/admin/routes", AUTH, NULL, &r);
    json_t *j = parse_json(r.body);
    json_t *fb = NULL;
    json_t *routes = json_object_get(j, "routes");
    for (size_t i = 0; i < json_array_size(routes); i++) {
        if (strcmp(json_string_value(json_object_get(json_array_get(routes, i), "name")), "fb") ==
            0) {
            fb = json_array_get(routes, i);
        }
    }
    assert_non_null(fb);
    assert_true(fabs(json_real_value(json_object_get(fb, "threshold")) + 0.4) < 1e-9);
    assert_true(fabs(json_real_value(json_object_get(fb, "config_threshold")) + 0.5) < 1e-9);
    assert_int_equal(json_integer_value(json_object_get(fb, "feedback")), 5);
    json_t *hist = json_object_get(fb, "history");
    assert_int_equal(json_array_size(hist), 1);
    assert_non_null(
        strstr(json_string_value(json_object_get(json_array_get(hist, 0), "why")), "below q_min"));
    json_t *est = json_array_get(json_object_get(fb, "estimates"), 0);
    assert_string_equal(json_string_value(json_object_get(est, "decision")), "accepted");
    assert_int_equal(json_integer_value(json_object_get(est, "n")), 5);
    json_decref(j);
    http_resp_free(&r);
    http_request(e, "GET", "/metrics", NULL, NULL, &r);
    assert_non_null(strstr(r.body, "brigade_route_threshold{route=\"fb\"} -0.4"));
    assert_non_null(strstr(r.body, "brigade_route_threshold_changes_total{route=\"fb\"} 1"));
    assert_non_null(strstr(r.body, "brigade_feedback_total{route=\"fb\",model=\"mock-cheap\","
                                   "result=\"recorded\"} 5"));
    assert_non_null(strstr(r.body, "brigade_route_quality{route=\"fb\",model=\"mock-cheap\","
                                   "decision=\"accepted\",stat=\"mean\"} 0"));
    http_resp_free(&r);
    /* The new threshold is used, and persisted. */
    char *b = body_for("fb", "next [[logprob:-0.45]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    expect_header(&r, "x-brigade-route", "threshold=-0.400");
    expect_header(&r, "x-brigade-model", "mock-strong"); /* -0.45 < -0.4 now */
    http_resp_free(&r);
    assert_int_equal(db_wait_int(e,
                                 "SELECT COUNT(*) FROM route_thresholds WHERE route = 'fb' AND "
                                 "abs(threshold + 0.4) < 1e-9 AND abs(config_threshold + 0.5) < "
                                 "1e-9",
                                 1),
                     1);
    assert_int_equal(db_int(e, "SELECT COUNT(*) FROM feedback WHERE route = 'fb' AND score = 0 "
                               "AND decision = 'accepted'"),
                     5);
    assert_int_equal(db_int(e, "SELECT COUNT(*) FROM feedback WHERE comment = 'wrong sum'"), 1);
    /* A restart keeps the re-tuned value (the configured one did not change). */
    env_signal_gateway(e, SIGTERM);
    assert_int_equal(env_wait_gateway(e, 10000), 0);
    char log[300];
    (void)snprintf(log, sizeof(log), "%s/gateway.log", e->dir);
    unlink(log); /* the harness finds the port in the log: not the old one */
    env_start_gateway(e, config);
    b = body_for("fb", "again [[logprob:-0.45]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    expect_header(&r, "x-brigade-route", "threshold=-0.400");
    http_resp_free(&r);
}

static void test_feedback_rejects_malformed(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    char *b = body_for("casc", "rate me [[logprob:-0.01]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    char *id = http_header(&r, "x-request-id");
    http_resp_free(&r);
    static const struct {
        const char *body;
        const char *code;
    } bad[] = {
        {"not json", "invalid_json"},
        {"[1]", "invalid_json"},
        {"{\"thumbs\":\"up\"}", "missing_required_parameter"},
        {"{\"request_id\":\"x\"}", "missing_required_parameter"},
        {"{\"request_id\":\"x\",\"score\":1.5}", "invalid_value"},
        {"{\"request_id\":\"x\",\"score\":\"high\"}", "invalid_value"},
        {"{\"request_id\":\"x\",\"thumbs\":\"sideways\"}", "invalid_value"},
        {"{\"request_id\":\"x\",\"score\":1,\"thumbs\":\"up\"}", "invalid_value"},
        {"{\"request_id\":\"x\",\"score\":1,\"stars\":5}", "unknown_parameter"},
        {"{\"request_id\":\"\",\"score\":1}", "invalid_value"},
        {"{\"request_id\":7,\"score\":1}", "invalid_value"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        post_feedback(e, bad[i].body, NULL, &r);
        expect_error(&r, 400, bad[i].code);
        http_resp_free(&r);
    }
    post_feedback(e, "{\"request_id\":\"no-such-request\",\"score\":1}", NULL, &r);
    expect_error(&r, 404, "request_not_found");
    http_resp_free(&r);
    /* Another key cannot rate (or probe) the master key's request. */
    char body[200];
    (void)snprintf(body, sizeof(body), "{\"request_id\":\"%s\",\"score\":0.5}", id);
    post_feedback(e, body, "sk-app-key-it", &r);
    expect_error(&r, 404, "request_not_found");
    http_resp_free(&r);
    post_feedback(e, body, "wrong-key", &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);
    http_request(e, "GET", "/v1/feedback", AUTH, NULL, &r);
    assert_int_equal(r.status, 405);
    http_resp_free(&r);
    post_feedback(e, body, NULL, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    free(id);
}

/* ------------------------------------------------------------------ M4: bodies, CLI */

static char *run_cli(const char *args)
{
    char cmd[1024];
    (void)snprintf(cmd, sizeof(cmd), "%s/src/brigade %s 2>&1", BR_BINARY_DIR, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16;
    size_t n = 0;
    char *out = malloc(cap);
    size_t k;
    while ((k = fread(out + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (n + 1 >= cap) {
            cap *= 2;
            out = realloc(out, cap);
        }
    }
    out[n] = '\0';
    int st = pclose(p);
    if (st != 0) {
        fail_msg("%s exited with %d: %s", cmd, st, out);
    }
    return out;
}

static void test_bodies_export_and_report(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    /* Two strong answers (one streamed), one cheap one. */
    char *b = body_for("pick", "tell me a story", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    char *good_id = http_header(&r, "x-request-id");
    http_resp_free(&r);
    b = body_for("pick", "streamed story", true, NULL);
    chat(e, b, NULL, &r);
    free(b);
    char *bad_id = http_header(&r, "x-request-id");
    http_resp_free(&r);
    b = body_for("casc", "cheap one [[logprob:-0.01]]", false, NULL);
    chat(e, b, NULL, &r);
    free(b);
    http_resp_free(&r);
    char fb[200];
    (void)snprintf(fb, sizeof(fb), "{\"request_id\":\"%s\",\"score\":0.9}", good_id);
    post_feedback(e, fb, NULL, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    (void)snprintf(fb, sizeof(fb), "{\"request_id\":\"%s\",\"score\":0.1}", bad_id);
    post_feedback(e, fb, NULL, &r);
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
    assert_true(db_wait_rows(e, 3));
    for (int i = 0; i < 200 && db_int(e, "SELECT COUNT(*) FROM bodies") < 3; i++) {
        usleep(10000);
    }
    assert_int_equal(db_int(e, "SELECT COUNT(*) FROM bodies WHERE answer = 'Echo: streamed "
                               "story'"),
                     1);

    char args[700];
    char out_path[300];
    (void)snprintf(out_path, sizeof(out_path), "%s/export.jsonl", e->dir);
    (void)snprintf(args, sizeof(args), "export --db %s --model mock-strong --out %s", e->db_path,
                   out_path);
    free(run_cli(args));
    FILE *f = fopen(out_path, "r");
    assert_non_null(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        json_t *j = parse_json(line);
        json_t *msgs = json_object_get(j, "messages");
        assert_int_equal(json_array_size(msgs), 2);
        json_t *last = json_array_get(msgs, 1);
        assert_string_equal(json_string_value(json_object_get(last, "role")), "assistant");
        assert_non_null(strstr(json_string_value(json_object_get(last, "content")), "Echo:"));
        json_decref(j);
        n++;
    }
    fclose(f);
    assert_int_equal(n, 2);
    /* Only well-rated answers. */
    (void)snprintf(args, sizeof(args), "export --db %s --min-feedback 0.5", e->db_path);
    char *out = run_cli(args);
    assert_int_equal(count_substr(out, "\"messages\""), 1);
    assert_non_null(strstr(out, "tell me a story"));
    free(out);
    out = run_cli("export --help");
    assert_non_null(strstr(out, "--min-feedback"));
    free(out);
    /* The routes report from the same file. */
    (void)snprintf(args, sizeof(args), "routes --db %s", e->db_path);
    out = run_cli(args);
    assert_non_null(strstr(out, "casc"));
    assert_non_null(strstr(out, "mock-cheap"));
    free(out);
    free(good_id);
    free(bad_id);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_auto_reaches_predicted_model, setup, teardown),
        cmocka_unit_test_setup_teardown(test_models_list_routes, setup, teardown),
        cmocka_unit_test(test_auto_classifier_matches_policy),
        cmocka_unit_test(test_default_config_routes),
        cmocka_unit_test_setup_teardown(test_hints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_and_admin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cascade_accepts_confident_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cascade_escalates_low_confidence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cascade_streams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cascade_self_verification, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feedback_moves_threshold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feedback_rejects_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bodies_export_and_report, setup, teardown),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("it_routes", tests, NULL, NULL);
}
