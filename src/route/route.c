/* SPDX-License-Identifier: MIT */
/*
 * Planning. A catalogue model gives a one-step "direct" plan. A route is decided in four
 * stages (route.h): hard constraints on the candidates (operator restrictions, capabilities,
 * context length, cost caps), client hints, exploration, then the policies in order through
 * their ops table, with the route's default model when every policy passes. The plan then
 * gets its cascade steps and fallbacks. Nothing here allocates: a decision is a few loops
 * over at most BR_ROUTE_MAX_MODELS candidates plus whatever the deciding policy costs.
 */
#include "route/route.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "cost/cost.h"
#include "route/route_int.h"

static const struct br_route_policy_ops *const policy_table[] = {
    [BR_ROUTE_POLICY_DIRECT] = &br__policy_direct,
    [BR_ROUTE_POLICY_RULES] = &br__policy_rules,
    [BR_ROUTE_POLICY_CLASSIFIER] = &br__policy_classifier,
    [BR_ROUTE_POLICY_CASCADE] = &br__policy_cascade,
    [BR_ROUTE_POLICY_LATENCY] = &br__policy_latency,
    [BR_ROUTE_POLICY_COST] = &br__policy_cost,
    [BR_ROUTE_POLICY_RANDOM] = &br__policy_random,
};

size_t br_route_fmt3(double v, char out[BR_ROUTE_FMT3_LEN])
{
    size_t n = 0;
    if (isnan(v)) {
        memcpy(out, "nan", 4);
        return 3;
    }
    if (v < 0) {
        out[n++] = '-';
        v = -v;
    }
    if (!(v < 1e15)) {
        memcpy(out + n, "inf", 4);
        return n + 3;
    }
    uint64_t milli = (uint64_t)(v * 1000.0 + 0.5);
    if (milli == 0 && n == 1) {
        n = 0; /* no "-0.000" */
    }
    char digits[BR_FMT_I64_LEN];
    size_t k = br_fmt_i64((long long)(milli / 1000), digits);
    memcpy(out + n, digits, k);
    n += k;
    unsigned frac = (unsigned)(milli % 1000);
    out[n++] = '.';
    out[n++] = (char)('0' + frac / 100);
    out[n++] = (char)('0' + frac / 10 % 10);
    out[n++] = (char)('0' + frac % 10);
    out[n] = '\0';
    return n;
}

/* ---------------------------------------------------------------- direct */

/* Appends fallback steps (skipping the primary model). */
static void add_fallbacks(struct br_plan *out, const struct br_model_cfg *const *models, size_t n)
{
    for (size_t i = 0; i < n && out->n_steps < BR_PLAN_MAX_STEPS; i++) {
        if (models[i] == out->steps[0].model) {
            continue;
        }
        out->steps[out->n_steps].model = models[i];
        out->steps[out->n_steps].variant = NULL;
        out->steps[out->n_steps].kind = BR_PLAN_STEP_FALLBACK;
        out->steps[out->n_steps].threshold = NAN;
        out->n_steps++;
    }
}

int br_route_plan_direct(const struct br_config *cfg, const char *model, size_t n,
                         struct br_plan *out)
{
    out->requested = model;
    out->route = NULL;
    out->route_cfg = NULL;
    out->score = NAN;
    out->threshold = NAN;
    out->cascade = false;
    out->chosen = 0;
    out->n_steps = 0;
    out->decision = "model";
    const char *variant = NULL;
    size_t variant_len = 0;
    const struct br_model_cfg *m =
        br_config_model_find_variant(cfg, model, n, &variant, &variant_len);
    if (!m) {
        return BR_ERR_NOTFOUND;
    }
    out->policy = "direct";
    out->reason = "model named by the client";
    out->steps[0].model = m;
    out->steps[0].variant = variant; /* the tail of model: NUL-terminated as model is */
    out->steps[0].kind = BR_PLAN_STEP_PRIMARY;
    out->steps[0].threshold = NAN;
    out->n_steps = 1;
    if (!variant) {
        add_fallbacks(out, m->fallbacks, m->n_fallbacks); /* an adapter has no fallbacks */
    }
    return BR_OK;
}

/* ---------------------------------------------------------------- router */

double br_router_config_threshold(const struct br_route_cfg *route)
{
    for (size_t i = 0; i < route->n_policies; i++) {
        if (route->policies[i] == BR_ROUTE_POLICY_CLASSIFIER) {
            return route->classifier.threshold;
        }
    }
    for (size_t i = 0; i < route->n_policies; i++) {
        if (route->policies[i] == BR_ROUTE_POLICY_CASCADE) {
            return route->cascade.threshold;
        }
    }
    return NAN;
}

static bool uses_policy(const struct br_route_cfg *route, enum br_route_policy_kind k)
{
    for (size_t i = 0; i < route->n_policies; i++) {
        if (route->policies[i] == k) {
            return true;
        }
    }
    return false;
}

/* Joins a route with its live state: adopts a re-tuned threshold unless the configured value
 * changed, and keeps decision counts only while the candidate list is the same. */
static int join_live(struct br__route_rt *rt, br_route_live *live)
{
    const struct br_route_cfg *route = rt->cfg;
    struct br__live_route *lr = br__live_route_get(live, route->name);
    if (!lr) {
        return BR_ERR_NOMEM;
    }
    rt->live = lr;
    rt->threshold_is_cascade = !uses_policy(route, BR_ROUTE_POLICY_CLASSIFIER) &&
                               uses_policy(route, BR_ROUTE_POLICY_CASCADE);
    double ct = br_router_config_threshold(route);
    pthread_mutex_lock(&lr->mu);
    if (isnan(ct)) {
        lr->has_threshold = false;
    } else if (!lr->has_threshold || lr->config_threshold != ct) {
        if (lr->has_threshold) {
            br__live_history_add(lr, 0, br__live_load(&lr->threshold), ct,
                                 "configured threshold changed (reload)");
        }
        lr->has_threshold = true;
        lr->config_threshold = ct;
        br__live_store(&lr->threshold, ct);
        lr->win_n = 0;
        lr->win_sum = 0;
    }
    for (size_t i = 0; i < BR_ROUTE_MAX_MODELS; i++) {
        const char *want = i < route->n_models ? route->models[i]->name : NULL;
        const char *have = lr->decision_models[i];
        if ((want == NULL) != (have == NULL) || (want && strcmp(want, have) != 0)) {
            atomic_store(&lr->decisions[i], 0);
            br_free(lr->decision_models[i]);
            lr->decision_models[i] = want ? br_strdup(want) : NULL;
        }
    }
    pthread_mutex_unlock(&lr->mu);
    return BR_OK;
}

/* The runtime of route i: its models' live statistics, its model files, its live state. */
static int route_rt_init(br_router *r, size_t i, char *err, size_t errlen)
{
    const struct br_config *cfg = r->cfg;
    struct br__route_rt *rt = &r->routes[i];
    const struct br_route_cfg *route = &cfg->routes[i];
    rt->cfg = route;
    for (size_t j = 0; j < route->n_models; j++) {
        rt->models[j] = r->catalogue_live[route->models[j] - cfg->models];
    }
    int rc = BR_OK;
    if (uses_policy(route, BR_ROUTE_POLICY_CLASSIFIER)) {
        rc = br__route_classifier_load(rt, cfg->path, err, errlen);
    }
    if (rc == BR_OK && uses_policy(route, BR_ROUTE_POLICY_CASCADE) &&
        route->cascade.confidence == BR_CASCADE_CONFIDENCE_VERIFIER) {
        rc = br__route_verifier_load(rt, cfg->path, err, errlen);
    }
    if (rc == BR_OK && join_live(rt, r->live) != BR_OK) {
        (void)snprintf(err, errlen, "out of memory");
        rc = BR_ERR_NOMEM;
    }
    return rc;
}

int br_router_create(const struct br_config *cfg, br_route_live *live, br_router **out, char *err,
                     size_t errlen)
{
    br_router *r = br_calloc(1, sizeof(*r));
    int rc = BR_ERR_NOMEM;
    if (!r) {
        goto nomem;
    }
    r->cfg = cfg;
    if (!live) {
        if (br_route_live_create(&live) != BR_OK) {
            goto nomem;
        }
        r->owns_live = true;
    }
    r->live = live;
    r->routes = br_calloc(cfg->n_routes + 1, sizeof(*r->routes));
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
    r->catalogue_live = br_calloc(cfg->n_models + 1, sizeof(*r->catalogue_live));
    if (!r->routes || !r->catalogue_live) {
        goto nomem;
    }
    for (size_t i = 0; i < cfg->n_models; i++) {
        r->catalogue_live[i] = br__live_model_get(live, cfg->models[i].name);
        if (!r->catalogue_live[i]) {
            goto nomem;
        }
    }
    for (size_t i = 0; i < cfg->n_routes; i++) {
        rc = route_rt_init(r, i, err, errlen);
        if (rc != BR_OK) {
            goto fail;
        }
    }
    *out = r;
    return BR_OK;
nomem:
    rc = BR_ERR_NOMEM;
    (void)snprintf(err, errlen, "out of memory");
fail:
    br_router_destroy(r);
    return rc;
}

void br_router_destroy(br_router *r)
{
    if (!r) {
        return;
    }
    for (size_t i = 0; r->routes && i < r->cfg->n_routes; i++) {
        br__route_classifier_free(&r->routes[i]);
    }
    br_free(r->routes);
    br_free(r->catalogue_live);
    if (r->owns_live) {
        br_route_live_destroy(r->live);
    }
    br_free(r);
}

const struct br_config *br_router_config(const br_router *r)
{
    return r->cfg;
}

const struct br__route_rt *br__router_rt(const br_router *r, const struct br_route_cfg *route)
{
    if (!r || !route) {
        return NULL;
    }
    size_t i = (size_t)(route - r->cfg->routes);
    return i < r->cfg->n_routes ? &r->routes[i] : NULL;
}

int br_router_score_text(const br_router *r, const struct br_route_cfg *route, const char *text,
                         size_t len, double *out)
{
    const struct br__route_rt *rt = br__router_rt(r, route);
    if (!rt || !rt->clf) {
        return BR_ERR_NOTFOUND;
    }
    return br__route_classifier_score(rt, text, len, out);
}

double br_router_threshold(const br_router *r, const struct br_route_cfg *route)
{
    const struct br__route_rt *rt = br__router_rt(r, route);
    if (!rt || !rt->live->has_threshold) {
        return NAN;
    }
    return br__live_load(&rt->live->threshold);
}

int br_router_threshold_set(br_router *r, const struct br_route_cfg *route, double threshold,
                            const char *why)
{
    const struct br__route_rt *rt = br__router_rt(r, route);
    if (!rt || !rt->live->has_threshold || !isfinite(threshold)) {
        return BR_ERR_NOTFOUND;
    }
    const struct br_route_feedback_cfg *f = &route->feedback;
    double v = threshold < f->min_threshold   ? f->min_threshold
               : threshold > f->max_threshold ? f->max_threshold
                                              : threshold;
    struct br__live_route *lr = rt->live;
    pthread_mutex_lock(&lr->mu);
    double from = br__live_load(&lr->threshold);
    br__live_store(&lr->threshold, v);
    br__live_history_add(lr, 0, from, v, why ? why : "set");
    lr->win_n = 0;
    lr->win_sum = 0;
    pthread_mutex_unlock(&lr->mu);
    return BR_OK;
}

bool br_router_threshold_restore(br_router *r, const char *route_name, double config_threshold,
                                 double threshold)
{
    const struct br_route_cfg *route = br_config_route_find(r->cfg, route_name, strlen(route_name));
    const struct br__route_rt *rt = br__router_rt(r, route);
    if (!rt || !rt->live->has_threshold || rt->live->config_threshold != config_threshold) {
        return false;
    }
    return br_router_threshold_set(r, route, threshold, "restored from the request log") == BR_OK;
}

/* ---------------------------------------------------------------- candidate helpers */

size_t br__route_strongest(const struct br__route_ctx *ctx)
{
    for (size_t i = ctx->cfg->n_models; i-- > 0;) {
        if (ctx->ok[i]) {
            return i;
        }
    }
    return 0;
}

size_t br__route_weakest(const struct br__route_ctx *ctx)
{
    for (size_t i = 0; i < ctx->cfg->n_models; i++) {
        if (ctx->ok[i]) {
            return i;
        }
    }
    return 0;
}

size_t br__route_random(const struct br__route_ctx *ctx, size_t *index)
{
    size_t pick[BR_ROUTE_MAX_MODELS];
    size_t n = 0;
    for (size_t i = 0; i < ctx->cfg->n_models; i++) {
        if (ctx->ok[i]) {
            pick[n++] = i;
        }
    }
    if (n > 0) {
        *index = pick[(size_t)(br_rng_uniform(ctx->rng) * (double)n) % n];
    }
    return n;
}

int64_t br__route_expected_output(const struct br_route_cfg *cfg, const struct br_route_req *req)
{
    int64_t guess = cfg->latency.expected_output_tokens > 0 ? cfg->latency.expected_output_tokens
                                                            : cfg->expected_output_tokens;
    return req->max_tokens > 0 && req->max_tokens < guess ? req->max_tokens : guess;
}

int64_t br_route_estimate_cost(const struct br_model_cfg *m, const struct br_route_req *req,
                               int64_t default_output_tokens)
{
    struct br_usage u = {0};
    u.prompt_tokens = req->prompt_tokens;
    u.completion_tokens = req->max_tokens > 0 ? req->max_tokens : default_output_tokens;
    return br_cost_compute(&m->price, &u);
}

static double predict(const struct br_route_cfg *cfg, const struct br__live_model *lm,
                      const struct br_route_req *req)
{
    double ttft = cfg->latency.prior_ttft_ms;
    double tps = cfg->latency.prior_tokens_per_s;
    if (lm && atomic_load_explicit(&lm->n_ttft, memory_order_relaxed) > 0) {
        ttft = br__live_load(&lm->ttft_ms);
    }
    if (lm && atomic_load_explicit(&lm->n_tps, memory_order_relaxed) > 0) {
        tps = br__live_load(&lm->tps);
    }
    double out = (double)br__route_expected_output(cfg, req);
    return ttft + (tps > 0 ? out / tps * 1000.0 : 0.0);
}

double br__route_predict_ms(const struct br__route_ctx *ctx, size_t i)
{
    return predict(ctx->cfg, ctx->rt->models[i], ctx->req);
}

double br_router_predict_latency_ms(const br_router *r, const struct br_route_cfg *route,
                                    const struct br_model_cfg *m, const struct br_route_req *req)
{
    size_t i = (size_t)(m - r->cfg->models);
    return predict(route, i < r->cfg->n_models ? r->catalogue_live[i] : NULL, req);
}

/* ---------------------------------------------------------------- planning */

static void cap_names(unsigned caps, char *out, size_t n)
{
    (void)snprintf(out, n, "%s%s%s", (caps & BR_MODEL_CAP_TOOLS) ? "tools " : "",
                   (caps & BR_MODEL_CAP_JSON_MODE) ? "json_mode " : "",
                   (caps & BR_MODEL_CAP_VISION) ? "vision " : "");
    size_t k = strlen(out);
    if (k > 0) {
        out[k - 1] = '\0';
    }
}

/* Stage 1: the candidates that may serve the request at all. */
static int hard_constraints(const struct br_route_cfg *route, const struct br_route_req *req,
                            bool *ok, struct br_route_error *err)
{
    int64_t cap = route->max_cost_nano > 0 ? route->max_cost_nano : -1;
    if (req->hints.max_cost_nano >= 0 && (cap < 0 || req->hints.max_cost_nano < cap)) {
        cap = req->hints.max_cost_nano;
    }
    size_t n_ok = 0;
    unsigned missing = 0;
    int64_t cheapest = -1;
    bool context = false;
    for (size_t i = 0; i < route->n_models; i++) {
        const struct br_model_cfg *m = route->models[i];
        ok[i] = route->allowed[i];
        if (ok[i] && (req->uses & ~m->capabilities) != 0) {
            missing |= req->uses & ~m->capabilities;
            ok[i] = false;
        }
        if (ok[i] && m->context_window > 0 &&
            req->prompt_tokens + (req->max_tokens > 0 ? req->max_tokens : 0) > m->context_window) {
            context = true;
            ok[i] = false;
        }
        if (ok[i] && cap >= 0) {
            int64_t c = br_route_estimate_cost(m, req, route->expected_output_tokens);
            if (c > cap) {
                cheapest = cheapest < 0 || c < cheapest ? c : cheapest;
                ok[i] = false;
            }
        }
        n_ok += ok[i];
    }
    if (n_ok > 0) {
        return BR_OK;
    }
    char caps[48];
    cap_names(missing, caps, sizeof(caps));
    char cap_usd[BR_COST_USD_STRLEN];
    char est_usd[BR_COST_USD_STRLEN];
    br_cost_format_usd(cap, cap_usd);
    br_cost_format_usd(cheapest, est_usd);
    err->param = NULL;
    err->code = "route_no_candidate";
    if (cheapest >= 0) {
        err->param = "max_tokens";
        err->code = "route_cost_cap";
        (void)snprintf(err->msg, sizeof(err->msg),
                       "No model of route '%s' fits the cost cap of %s USD: the cheapest "
                       "allowed one would cost an estimated %s USD (prompt tokens, plus "
                       "max_tokens or %lld output tokens). Lower max_tokens or raise the cap.",
                       route->name, cap_usd, est_usd, (long long)route->expected_output_tokens);
    } else if (missing) {
        (void)snprintf(err->msg, sizeof(err->msg),
                       "No allowed model of route '%s' supports what this request uses (%s).",
                       route->name, caps);
    } else if (context) {
        (void)snprintf(err->msg, sizeof(err->msg),
                       "No allowed model of route '%s' has a context window for this request "
                       "(about %lld prompt tokens plus max_tokens).",
                       route->name, (long long)req->prompt_tokens);
    } else {
        (void)snprintf(err->msg, sizeof(err->msg), "Route '%s' allows no model.", route->name);
    }
    return BR_ERR_INVAL;
}

/* Stage 2: hints. Returns true when a quality tier decided. */
static bool apply_hints(const struct br__route_ctx *ctx, bool *ok, struct br__route_choice *out)
{
    const struct br_route_req *req = ctx->req;
    const struct br_route_cfg *route = ctx->cfg;
    if (req->hints.max_latency_ms > 0) {
        double sla = (double)req->hints.max_latency_ms;
        size_t fastest = SIZE_MAX;
        double best = 0;
        size_t meeting = 0;
        double pred[BR_ROUTE_MAX_MODELS];
        for (size_t i = 0; i < route->n_models; i++) {
            if (!ok[i]) {
                continue;
            }
            pred[i] = br__route_predict_ms(ctx, i);
            meeting += pred[i] <= sla;
            if (fastest == SIZE_MAX || pred[i] < best) {
                fastest = i;
                best = pred[i];
            }
        }
        for (size_t i = 0; i < route->n_models; i++) {
            if (ok[i] && (meeting ? pred[i] > sla : i != fastest)) {
                ok[i] = false;
            }
        }
    }
    if (req->hints.quality == BR_ROUTE_QUALITY_HIGH ||
        req->hints.quality == BR_ROUTE_QUALITY_ECONOMY) {
        bool high = req->hints.quality == BR_ROUTE_QUALITY_HIGH;
        out->index = high ? br__route_strongest(ctx) : br__route_weakest(ctx);
        out->decision = high ? "strong" : "weak";
        (void)snprintf(out->reason, out->reason_len, "client quality hint %s",
                       high ? "high: strongest allowed model" : "economy: cheapest allowed model");
        return true;
    }
    return false;
}

/* Stage 4: the policies in order; the default model when all pass. */
static void run_policies(const struct br__route_ctx *ctx, const char **policy,
                         struct br__route_choice *out)
{
    const struct br_route_cfg *route = ctx->cfg;
    for (size_t i = 0; i < route->n_policies; i++) {
        const struct br_route_policy_ops *ops = policy_table[route->policies[i]];
        if (ops->decide(ctx, out) == BR_OK) {
            *policy = br_route_policy_name(route->policies[i]);
            return;
        }
    }
    out->index = ctx->ok[route->default_index] ? route->default_index : br__route_strongest(ctx);
    out->decision = "default";
    out->score = NAN;
    out->threshold = NAN;
    *policy = "default";
    (void)snprintf(out->reason, out->reason_len, "every policy passed: the route's default model");
}

static void add_steps(const struct br_route_cfg *route, const bool *ok,
                      const struct br__route_choice *ch, struct br_plan *out)
{
    out->steps[0].model = route->models[ch->index];
    out->steps[0].variant = NULL;
    out->steps[0].kind = BR_PLAN_STEP_PRIMARY;
    out->steps[0].threshold = NAN;
    out->n_steps = 1;
    if (ch->cascade) {
        const struct br_route_cascade_cfg *c = &route->cascade;
        bool after = false;
        for (size_t i = 0; i < c->n_steps; i++) {
            size_t idx = c->steps[i];
            if (idx == ch->index) {
                after = true;
                out->steps[0].threshold = ch->threshold;
                continue;
            }
            if (after && ok[idx] && out->n_steps < BR_PLAN_MAX_STEPS) {
                out->steps[out->n_steps].model = route->models[idx];
                out->steps[out->n_steps].variant = NULL;
                out->steps[out->n_steps].kind = BR_PLAN_STEP_CASCADE;
                out->steps[out->n_steps].threshold = ch->threshold;
                out->n_steps++;
            }
        }
    }
    /* The route's fallbacks; without any, the chosen model's own. */
    if (route->n_fallbacks) {
        add_fallbacks(out, route->fallbacks, route->n_fallbacks);
    } else {
        add_fallbacks(out, out->steps[0].model->fallbacks, out->steps[0].model->n_fallbacks);
    }
}

int br_route_plan(const br_router *r, const struct br_route_cfg *route,
                  const struct br_route_req *req, struct br_rng *rng, struct br_plan *out,
                  struct br_route_error *err)
{
    out->requested = route->name;
    out->route = route->name;
    out->route_cfg = route;
    out->n_steps = 0;
    out->cascade = false;
    out->reason_buf[0] = '\0';
    out->reason = out->reason_buf;
    const struct br__route_rt *rt = br__router_rt(r, route);
    if (!rt) {
        (void)snprintf(err->msg, sizeof(err->msg), "route not loaded");
        err->code = "route_unavailable";
        err->param = NULL;
        return BR_ERR_NOTFOUND;
    }
    bool ok[BR_ROUTE_MAX_MODELS];
    int rc = hard_constraints(route, req, ok, err);
    if (rc != BR_OK) {
        return rc;
    }
    struct br__route_ctx ctx = {
        .router = r, .rt = rt, .cfg = route, .req = req, .ok = ok, .rng = rng};
    struct br__route_choice ch = {.score = NAN,
                                  .threshold = NAN,
                                  .decision = "model",
                                  .reason = out->reason_buf,
                                  .reason_len = sizeof(out->reason_buf)};
    const char *policy = "hint";
    if (!(route->accept_hints && apply_hints(&ctx, ok, &ch))) {
        if (route->exploration > 0 && br_rng_uniform(rng) < route->exploration &&
            br__route_random(&ctx, &ch.index) > 0) {
            ch.decision = "explore";
            policy = "explore";
            (void)snprintf(out->reason_buf, sizeof(out->reason_buf),
                           "exploration (%.3g of traffic): random candidate", route->exploration);
        } else {
            run_policies(&ctx, &policy, &ch);
        }
    }
    out->policy = policy;
    out->decision = ch.decision;
    out->score = ch.score;
    out->threshold = ch.threshold;
    out->chosen = ch.index;
    out->cascade = ch.cascade;
    add_steps(route, ok, &ch, out);
    return BR_OK;
}
