/* SPDX-License-Identifier: MIT */
/*
 * Live routing statistics, shared by every worker and kept across config reloads: per model,
 * exponentially weighted averages of time to first token and output speed (doubles stored as
 * bits in atomics, updated with compare-and-swap: no lock on the request path); per route, the
 * current threshold (an atomic double), decision and cost counters (atomics), and the feedback
 * estimates with the threshold history (under a mutex: feedback is rare and off the hot path).
 * Entries are found by name when a router is built and live until the registry is destroyed.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "route/route_int.h"

double br__live_load(const atomic_uint_fast64_t *a)
{
    uint64_t bits = atomic_load_explicit(a, memory_order_relaxed);
    double v;
    memcpy(&v, &bits, sizeof(v));
    return v;
}

void br__live_store(atomic_uint_fast64_t *a, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    atomic_store_explicit(a, bits, memory_order_relaxed);
}

int br_route_live_create(br_route_live **out)
{
    br_route_live *l = br_calloc(1, sizeof(*l));
    if (!l) {
        return BR_ERR_NOMEM;
    }
    if (pthread_mutex_init(&l->mu, NULL) != 0) {
        br_free(l);
        return BR_ERR_NOMEM;
    }
    *out = l;
    return BR_OK;
}

void br_route_live_destroy(br_route_live *l)
{
    if (!l) {
        return;
    }
    while (l->routes) {
        struct br__live_route *r = l->routes;
        l->routes = r->next;
        for (size_t i = 0; i < r->n_est; i++) {
            br_free(r->est[i].model);
        }
        for (size_t i = 0; i < BR_ROUTE_MAX_MODELS; i++) {
            br_free(r->decision_models[i]);
        }
        pthread_mutex_destroy(&r->mu);
        br_free(r->name);
        br_free(r);
    }
    while (l->models) {
        struct br__live_model *m = l->models;
        l->models = m->next;
        br_free(m->name);
        br_free(m);
    }
    pthread_mutex_destroy(&l->mu);
    br_free(l);
}

struct br__live_route *br__live_route_get(br_route_live *l, const char *name)
{
    pthread_mutex_lock(&l->mu);
    struct br__live_route *r = l->routes;
    while (r && strcmp(r->name, name) != 0) {
        r = r->next;
    }
    if (!r) {
        r = br_calloc(1, sizeof(*r));
        if (r && pthread_mutex_init(&r->mu, NULL) != 0) {
            br_free(r);
            r = NULL;
        }
        if (r) {
            r->name = br_strdup(name);
            if (!r->name) {
                pthread_mutex_destroy(&r->mu);
                br_free(r);
                r = NULL;
            }
        }
        if (r) {
            br__live_store(&r->threshold, NAN);
            r->config_threshold = NAN;
            r->next = l->routes;
            l->routes = r;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return r;
}

struct br__live_model *br__live_model_get(br_route_live *l, const char *name)
{
    pthread_mutex_lock(&l->mu);
    struct br__live_model *m = l->models;
    while (m && strcmp(m->name, name) != 0) {
        m = m->next;
    }
    if (!m) {
        m = br_calloc(1, sizeof(*m));
        if (m) {
            m->name = br_strdup(name);
            if (!m->name) {
                br_free(m);
                m = NULL;
            }
        }
        if (m) {
            br__live_store(&m->ttft_ms, 0.0);
            br__live_store(&m->tps, 0.0);
            m->next = l->models;
            l->models = m;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return m;
}

void br__live_history_add(struct br__live_route *lr, int64_t ts_ms, double from, double to,
                          const char *why)
{
    struct br_route_history_entry *e = &lr->hist[lr->n_hist % BR_ROUTE_MAX_HISTORY];
    e->ts_ms = ts_ms;
    e->from = from;
    e->to = to;
    /* A reason cut at the buffer (on a character boundary) is fine. */
    size_t n = strlen(why);
    if (n >= sizeof(e->why)) {
        n = sizeof(e->why) - 1;
        while (n > 0 && ((unsigned char)why[n] & 0xc0) == 0x80) {
            n--;
        }
    }
    memcpy(e->why, why, n);
    e->why[n] = '\0';
    lr->n_hist++;
}

/* ---------------------------------------------------------------- latency */

/* EWMA update by compare-and-swap; the first observation sets the value. */
static void ewma(atomic_uint_fast64_t *a, atomic_uint_fast64_t *count, double x, double alpha)
{
    uint64_t n = atomic_fetch_add_explicit(count, 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    for (;;) {
        double cur;
        memcpy(&cur, &old, sizeof(cur));
        double next = n == 0 ? x : cur + alpha * (x - cur);
        uint64_t bits;
        memcpy(&bits, &next, sizeof(bits));
        if (atomic_compare_exchange_weak_explicit(a, &old, bits, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            return;
        }
    }
}

bool br_router_model_latency(const br_router *r, const struct br_model_cfg *m, double *ttft_ms,
                             double *tokens_per_s)
{
    size_t i = (size_t)(m - r->cfg->models);
    if (i >= r->cfg->n_models || !r->catalogue_live[i]) {
        return false;
    }
    const struct br__live_model *lm = r->catalogue_live[i];
    bool t = atomic_load(&lm->n_ttft) > 0;
    bool s = atomic_load(&lm->n_tps) > 0;
    *ttft_ms = t ? br__live_load(&lm->ttft_ms) : -1;
    *tokens_per_s = s ? br__live_load(&lm->tps) : -1;
    return t || s;
}

void br_router_observe_latency(br_router *r, const struct br_model_cfg *m, double ttft_ms,
                               double tokens_per_s)
{
    size_t i = (size_t)(m - r->cfg->models);
    if (i >= r->cfg->n_models || !r->catalogue_live[i]) {
        return;
    }
    struct br__live_model *lm = r->catalogue_live[i];
    /* One smoothing factor for all routes: the statistics belong to the model. */
    const double alpha = 0.2;
    if (ttft_ms >= 0 && isfinite(ttft_ms)) {
        ewma(&lm->ttft_ms, &lm->n_ttft, ttft_ms, alpha);
    }
    if (tokens_per_s > 0 && isfinite(tokens_per_s)) {
        ewma(&lm->tps, &lm->n_tps, tokens_per_s > 1e6 ? 1e6 : tokens_per_s, alpha);
    }
}

/* ---------------------------------------------------------------- feedback */

void br_route_wilson(double mean, double n, double confidence, double *lo, double *hi)
{
    if (!(n > 0)) {
        *lo = 0.0;
        *hi = 1.0;
        return;
    }
    /* z for a two-sided interval: Acklam-free approximation good to 1e-3 over 0.5..0.999. */
    double p = 1.0 - (1.0 - confidence) / 2.0;
    double t = sqrt(-2.0 * log(1.0 - p));
    double z = t - (2.515517 + 0.802853 * t + 0.010328 * t * t) /
                       (1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t);
    double ph = mean < 0 ? 0 : mean > 1 ? 1 : mean;
    double z2 = z * z;
    double denom = 1.0 + z2 / n;
    double centre = (ph + z2 / (2.0 * n)) / denom;
    double half = z * sqrt(ph * (1.0 - ph) / n + z2 / (4.0 * n * n)) / denom;
    *lo = centre - half < 0 ? 0 : centre - half;
    *hi = centre + half > 1 ? 1 : centre + half;
}

static struct br__live_est *estimate(struct br__live_route *lr, const char *model,
                                     const char *decision)
{
    for (size_t i = 0; i < lr->n_est; i++) {
        if (strcmp(lr->est[i].model, model) == 0 && strcmp(lr->est[i].decision, decision) == 0) {
            return &lr->est[i];
        }
    }
    if (lr->n_est == BR_ROUTE_MAX_ESTIMATES) {
        return NULL;
    }
    char *copy = br_strdup(model);
    if (!copy) {
        return NULL;
    }
    struct br__live_est *e = &lr->est[lr->n_est++];
    memset(e, 0, sizeof(*e));
    e->model = copy;
    e->decision = decision;
    return e;
}

/* Decisions are stored as static strings so that estimates outlive the request. */
static const char *static_decision(const char *d)
{
    static const char *const known[] = {"strong",  "weak",    "model",    "explore",   "hint",
                                        "default", "cascade", "accepted", "escalated", "rule"};
    for (size_t i = 0; d && i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(d, known[i]) == 0) {
            return known[i];
        }
    }
    return "other";
}

/* The decisions whose quality the threshold protects: the cheap side of the threshold. */
static bool cheap_decision(const char *d)
{
    return strcmp(d, "weak") == 0 || strcmp(d, "accepted") == 0;
}

static double clamp(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/*
 * Direction of "more traffic to the strong model": the classifier sends a request to the strong
 * model when score >= threshold (lower it); a cascade escalates when confidence < tau (raise
 * it).
 */
static double towards_strong(const struct br__route_rt *rt)
{
    return rt->threshold_is_cascade ? 1.0 : -1.0;
}

/* True when the window's mean cost per request is above the target (*n requests costing
 * *cost nano-USD in all, n > 0). */
static bool over_cost_target(struct br__live_route *lr, const struct br_route_feedback_cfg *f,
                             int64_t *n, int64_t *cost)
{
    *n = atomic_load(&lr->window_requests);
    *cost = atomic_load(&lr->window_cost_nano);
    return *n > 0 && *cost / *n > f->target_cost_nano;
}

static void retune(const struct br__route_rt *rt, int64_t now_ms, struct br_route_adjustment *adj)
{
    struct br__live_route *lr = rt->live;
    const struct br_route_feedback_cfg *f = &rt->cfg->feedback;
    if (!f->adapt || !lr->has_threshold || lr->win_n < f->min_samples ||
        (lr->last_adjust_ms && now_ms - lr->last_adjust_ms < (int64_t)f->cooldown_ms)) {
        return;
    }
    double lo;
    double hi;
    double mean = lr->win_sum / (double)lr->win_n;
    br_route_wilson(mean, (double)lr->win_n, f->confidence, &lo, &hi);
    double dir;
    char why[320];
    int64_t n = 0;
    int64_t cost = 0;
    if (hi < f->q_min) {
        dir = towards_strong(rt);
        (void)snprintf(why, sizeof(why),
                       "cheap decisions' quality %.3f [%.3f, %.3f] over %lld feedback is below "
                       "q_min %.3f",
                       mean, lo, hi, (long long)lr->win_n, f->q_min);
    } else if (f->target_cost_nano > 0 && lo > f->q_min && over_cost_target(lr, f, &n, &cost)) {
        dir = -towards_strong(rt);
        (void)snprintf(why, sizeof(why),
                       "mean cost %lld nano-USD over %lld requests is above the target %lld, "
                       "quality %.3f [%.3f, %.3f] above q_min",
                       (long long)(cost / n), (long long)n, (long long)f->target_cost_nano, mean,
                       lo, hi);
    } else {
        return; /* quality and cost are within bounds: nothing to adjust */
    }
    double from = br__live_load(&lr->threshold);
    double to = clamp(from + dir * f->step, f->min_threshold, f->max_threshold);
    /* Whatever happens, the evidence was used: the next decision needs new feedback. */
    lr->win_n = 0;
    lr->win_sum = 0;
    lr->last_adjust_ms = now_ms;
    atomic_store(&lr->window_requests, 0);
    atomic_store(&lr->window_cost_nano, 0);
    if (to == from) {
        return;
    }
    br__live_store(&lr->threshold, to);
    br__live_history_add(lr, now_ms, from, to, why);
    adj->changed = true;
    adj->from = from;
    adj->to = to;
    adj->config_threshold = lr->config_threshold;
    (void)snprintf(adj->why, sizeof(adj->why), "%s", why);
}

void br_router_feedback(br_router *r, const struct br_route_feedback *fb,
                        struct br_route_adjustment *adj)
{
    memset(adj, 0, sizeof(*adj));
    if (!fb->route) {
        return;
    }
    const struct br_route_cfg *route = br_config_route_find(r->cfg, fb->route, strlen(fb->route));
    const struct br__route_rt *rt = route ? br__router_rt(r, route) : NULL;
    if (!rt) {
        return;
    }
    struct br__live_route *lr = rt->live;
    const char *decision = static_decision(fb->decision);
    double q = clamp(fb->quality, 0.0, 1.0);
    pthread_mutex_lock(&lr->mu);
    struct br__live_est *e = estimate(lr, fb->model ? fb->model : "-", decision);
    if (!isnan(fb->previous)) {
        /* A client changed its mind: the request counts once, with its latest quality. */
        if (e && e->n > 0) {
            e->sum += q - clamp(fb->previous, 0.0, 1.0);
        }
        pthread_mutex_unlock(&lr->mu);
        return;
    }
    lr->feedback++;
    if (e) {
        e->n++;
        e->sum += q;
        e->cost_nano += fb->cost_nano;
    }
    /* Exploration is not a cheap decision of the policy: it keeps the estimates unbiased
     * but does not move the threshold. */
    if (cheap_decision(decision)) {
        lr->win_n++;
        lr->win_sum += q;
    }
    retune(rt, fb->now_ms, adj);
    pthread_mutex_unlock(&lr->mu);
}

void br_router_observe_cost(br_router *r, const struct br_route_cfg *route, int64_t cost_nano)
{
    const struct br__route_rt *rt = br__router_rt(r, route);
    if (!rt) {
        return;
    }
    atomic_fetch_add_explicit(&rt->live->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&rt->live->cost_nano, cost_nano, memory_order_relaxed);
    atomic_fetch_add_explicit(&rt->live->window_requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&rt->live->window_cost_nano, cost_nano, memory_order_relaxed);
}

void br_router_count_decision(br_router *r, const struct br_route_cfg *route, size_t chosen)
{
    const struct br__route_rt *rt = br__router_rt(r, route);
    if (rt && chosen < BR_ROUTE_MAX_MODELS) {
        atomic_fetch_add_explicit(&rt->live->decisions[chosen], 1, memory_order_relaxed);
    }
}

void br_router_snapshot(const br_router *r, const struct br_route_cfg *route,
                        struct br_route_snapshot *out)
{
    memset(out, 0, sizeof(*out));
    out->threshold = NAN;
    out->config_threshold = NAN;
    const struct br__route_rt *rt = br__router_rt(r, route);
    if (!rt) {
        return;
    }
    struct br__live_route *lr = rt->live;
    out->threshold = lr->has_threshold ? br__live_load(&lr->threshold) : NAN;
    out->config_threshold = lr->has_threshold ? lr->config_threshold : NAN;
    for (size_t i = 0; i < route->n_models; i++) {
        out->decisions[i] = atomic_load(&lr->decisions[i]);
    }
    out->requests = atomic_load(&lr->requests);
    out->cost_nano = atomic_load(&lr->cost_nano);
    pthread_mutex_lock(&lr->mu);
    out->feedback = lr->feedback;
    out->n_estimates = lr->n_est;
    for (size_t i = 0; i < lr->n_est; i++) {
        const struct br__live_est *e = &lr->est[i];
        struct br_route_estimate *o = &out->estimates[i];
        o->model = e->model;
        o->decision = e->decision;
        o->n = e->n;
        o->mean = e->n ? e->sum / (double)e->n : 0;
        o->cost_nano = e->cost_nano;
        br_route_wilson(o->mean, (double)e->n, route->feedback.confidence, &o->lo, &o->hi);
    }
    size_t n = lr->n_hist < BR_ROUTE_MAX_HISTORY ? lr->n_hist : BR_ROUTE_MAX_HISTORY;
    size_t first = lr->n_hist - n;
    for (size_t i = 0; i < n; i++) {
        out->history[i] = lr->hist[(first + i) % BR_ROUTE_MAX_HISTORY];
    }
    out->n_history = n;
    pthread_mutex_unlock(&lr->mu);
}
