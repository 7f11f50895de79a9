/* SPDX-License-Identifier: MIT */
/* The small endpoints: models, health, metrics, admin. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"

#define BR_VERSION_STRING "0.1.0"

static const struct br_http_header json_ct = {BR_SLICE_LIT("content-type"),
                                              BR_SLICE_LIT("application/json")};

static bool authorized(struct br_worker *w, struct br_runtime *rt, br_http_request *req, bool admin)
{
    const char *key_id;
    enum br_auth_result r = admin ? br__auth_check(rt->cfg, req, admin, &key_id)
                                  : br__auth_client(w->g, rt->cfg, req, &key_id, NULL);
    if (r != BR_AUTH_OK) {
        br__auth_fail(req, r, admin);
        return false;
    }
    return true;
}

void br__models_list(struct br_worker *w, br_http_request *req)
{
    struct br_runtime *rt = br__worker_runtime(w);
    if (!authorized(w, rt, req, false)) {
        return;
    }
    if (rt->models_dynamic) {
        json_t *doc = br__models_json(rt);
        if (!doc) {
            br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL,
                                  "The gateway is out of memory; retry later.");
            return;
        }
        br__respond_json(req, 200, doc);
        return;
    }
    br_http_respond(req, 200, &json_ct, 1, br_slice_make(rt->models_json, rt->models_json_len));
}

void br__models_get(struct br_worker *w, br_http_request *req, struct br_slice id)
{
    struct br_runtime *rt = br__worker_runtime(w);
    if (!authorized(w, rt, req, false)) {
        return;
    }
    const char *variant = NULL;
    size_t variant_len = 0;
    const struct br_model_cfg *mc =
        br_config_model_find_variant(rt->cfg, id.ptr, id.len, &variant, &variant_len);
    if (mc && variant) {
        const struct br_runtime_model *rm = br__runtime_model(rt, mc);
        if (!br__variant_exists(rm, variant, variant_len)) {
            mc = NULL;
        }
    }
    const struct br_route_cfg *route = mc ? NULL : br_config_route_find(rt->cfg, id.ptr, id.len);
    if (route) {
        br__respond_json(req, 200,
                         json_pack("{s:s, s:s, s:I, s:s}", "id", route->name, "object", "model",
                                   "created", (json_int_t)rt->created_s, "owned_by",
                                   "brigade-route"));
        return;
    }
    if (!mc) {
        char *msg = br_arena_sprintf(req->arena, "The model `%.*s` does not exist.",
                                     (int)(id.len > 200 ? 200 : id.len), id.ptr);
        br_http_respond_error(req, 404, "invalid_request_error", "model_not_found", "model",
                              msg ? msg : "model not found");
        return;
    }
    br__respond_json(req, 200,
                     json_pack("{s:s%, s:s, s:I, s:s}", "id", id.ptr, id.len, "object", "model",
                               "created", (json_int_t)rt->created_s, "owned_by", mc->provider));
}

void br__health(struct br_worker *w, br_http_request *req)
{
    struct br_gateway *g = w->g;
    bool draining = atomic_load(&g->draining);
    struct br_runtime *rt = br__worker_runtime(w);
    br__respond_json(req, draining ? 503 : 200,
                     json_pack("{s:s, s:I}", "status", draining ? "draining" : "ok", "models",
                               (json_int_t)rt->n_models));
}

/* Gauges read from the routers' live state at scrape time. */
/* Slots taken and waiters of the models that have a max_in_flight. */
static void gate_gauges(struct br_gateway *g, struct br_runtime *rt)
{
    for (size_t i = 0; i < rt->n_models; i++) {
        if (!rt->models[i].gate) {
            continue;
        }
        uint32_t in_flight = 0;
        uint32_t queued = 0;
        br__gate_counts(rt->models[i].gate, &in_flight, &queued);
        const char *l[] = {rt->models[i].cfg->name};
        br_metrics_set(g->metrics, BR_METRICS_SHARD_ANY, g->m.model_in_flight, l,
                       (double)in_flight);
        br_metrics_set(g->metrics, BR_METRICS_SHARD_ANY, g->m.model_queued, l, (double)queued);
    }
}

static void route_gauges(struct br_gateway *g, struct br_runtime *rt)
{
    const struct br_config *c = rt->cfg;
    struct br_route_snapshot *snap = br_malloc(sizeof(*snap));
    if (!snap) {
        return;
    }
    for (size_t i = 0; i < c->n_routes; i++) {
        const struct br_route_cfg *route = &c->routes[i];
        br_router_snapshot(rt->router, route, snap);
        const char *lr[] = {route->name};
        if (!isnan(snap->threshold)) {
            br_metrics_set(g->metrics, BR_METRICS_SHARD_ANY, g->m.route_threshold, lr,
                           snap->threshold);
        }
        for (size_t e = 0; e < snap->n_estimates; e++) {
            const struct br_route_estimate *est = &snap->estimates[e];
            const double v[] = {est->mean, est->lo, est->hi, (double)est->n};
            static const char *const stat[] = {"mean", "lower", "upper", "count"};
            for (size_t k = 0; k < 4; k++) {
                const char *l[] = {route->name, est->model, est->decision, stat[k]};
                br_metrics_set(g->metrics, BR_METRICS_SHARD_ANY, g->m.route_quality, l, v[k]);
            }
        }
    }
    for (size_t i = 0; i < c->n_models; i++) {
        double ttft = 0;
        double tps = 0;
        if (br_router_model_latency(rt->router, &c->models[i], &ttft, &tps)) {
            const char *l1[] = {c->models[i].name, "ttft_ms"};
            const char *l2[] = {c->models[i].name, "tokens_per_s"};
            br_metrics_set(g->metrics, BR_METRICS_SHARD_ANY, g->m.latency_est, l1, ttft);
            br_metrics_set(g->metrics, BR_METRICS_SHARD_ANY, g->m.latency_est, l2, tps);
        }
    }
    gate_gauges(g, rt);
    br_free(snap);
}

void br__metrics_scrape(struct br_worker *w, br_http_request *req)
{
    struct br_gateway *g = w->g;
    struct br_runtime *rt = br__worker_runtime(w);
    if (rt->cfg->metrics_require_key && !authorized(w, rt, req, true)) {
        return;
    }
    route_gauges(g, rt);
    br__deploy_gauges(g, rt);
    if (g->store) {
        struct br_store_stats st;
        br_store_stats_get(g->store, &st);
        br_metrics_set(g->metrics, BR_METRICS_SHARD_ANY, g->m.log_queue, NULL, (double)st.depth);
        br_metrics_set(g->metrics, BR_METRICS_SHARD_ANY, g->m.log_written, NULL,
                       (double)st.written);
    }
    struct br_buf out;
    br_buf_init(&out, 64u << 20);
    int rc = br_metrics_render(g->metrics, &out);
    if (rc != BR_OK) {
        br_buf_cleanup(&out);
        br_http_respond_error(req, 503, "server_error", "metrics_unavailable", NULL,
                              "could not render metrics");
        return;
    }
    char *copy = br_arena_strndup(req->arena, out.ptr ? out.ptr : "", out.len);
    size_t len = out.len;
    br_buf_cleanup(&out);
    if (!copy) {
        br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL, "out of memory");
        return;
    }
    static const struct br_http_header ct = {BR_SLICE_LIT("content-type"),
                                             BR_SLICE_LIT("text/plain; version=0.0.4")};
    br_http_respond(req, 200, &ct, 1, br_slice_make(copy, len));
}

void br__admin_config(struct br_worker *w, br_http_request *req)
{
    struct br_runtime *rt = br__worker_runtime(w);
    if (!authorized(w, rt, req, true)) {
        return;
    }
    const struct br_config *c = rt->cfg;
    json_t *models = json_array();
    for (size_t i = 0; models && i < c->n_models; i++) {
        const struct br_model_cfg *m = &c->models[i];
        char in[BR_COST_USD_STRLEN];
        char out[BR_COST_USD_STRLEN];
        /* Prices are per million tokens; format them as USD with the cost formatter. */
        br_cost_format_usd(m->price.input_nano_usd_per_mtok, in);
        br_cost_format_usd(m->price.output_nano_usd_per_mtok, out);
        json_array_append_new(
            models, json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:{s:s, s:s}, s:I}", "name", m->name,
                              "provider", m->provider, "model", m->upstream_model, "base_url",
                              m->base_url, "api_key", m->api_key_ref, "price_per_mtok_usd", "input",
                              in, "output", out, "context_window", (json_int_t)m->context_window));
    }
    br_keys *ks = w->g->keys;
    br__respond_json(req, 200,
                     json_pack("{s:s, s:s, s:I, s:I, s:o, s:b, s:I, s:s?, s:I}", "path", c->path,
                               "listen", c->listen_host, "port", (json_int_t)c->listen_port,
                               "workers", (json_int_t)w->g->n_workers, "models", models, "auth",
                               c->has_master_key || c->n_keys > 0 || (ks && br_keys_count(ks) > 0),
                               "api_keys", (json_int_t)c->n_keys, "key_store",
                               ks ? c->key_store_path : NULL, "virtual_keys",
                               (json_int_t)(ks ? br_keys_active_count(ks) : 0)));
}

static json_t *number_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *route_json(struct br_runtime *rt, const struct br_route_cfg *route,
                          struct br_route_snapshot *snap)
{
    br_router_snapshot(rt->router, route, snap);
    json_t *models = json_array();
    json_t *policies = json_array();
    json_t *estimates = json_array();
    json_t *history = json_array();
    for (size_t i = 0; i < route->n_models; i++) {
        const struct br_model_cfg *mc = route->models[i];
        double ttft = -1;
        double tps = -1;
        bool have = br_router_model_latency(rt->router, mc, &ttft, &tps);
        json_array_append_new(
            models, json_pack("{s:s, s:b, s:I, s:o, s:o}", "name", mc->name, "allowed",
                              route->allowed[i], "decisions", (json_int_t)snap->decisions[i],
                              "ttft_ms", number_or_null(have && ttft >= 0 ? ttft : NAN),
                              "tokens_per_s", number_or_null(have && tps >= 0 ? tps : NAN)));
    }
    for (size_t i = 0; i < route->n_policies; i++) {
        json_array_append_new(policies, json_string(br_route_policy_name(route->policies[i])));
    }
    for (size_t i = 0; i < snap->n_estimates; i++) {
        const struct br_route_estimate *e = &snap->estimates[i];
        char usd[BR_COST_USD_STRLEN];
        br_cost_format_usd(e->cost_nano, usd);
        json_array_append_new(estimates,
                              json_pack("{s:s, s:s, s:I, s:f, s:f, s:f, s:s}", "model", e->model,
                                        "decision", e->decision, "n", (json_int_t)e->n, "mean",
                                        e->mean, "lower", e->lo, "upper", e->hi, "cost_usd", usd));
    }
    for (size_t i = 0; i < snap->n_history; i++) {
        const struct br_route_history_entry *h = &snap->history[i];
        json_array_append_new(history,
                              json_pack("{s:I, s:o, s:o, s:s}", "ts_ms", (json_int_t)h->ts_ms,
                                        "from", number_or_null(h->from), "to",
                                        number_or_null(h->to), "why", h->why));
    }
    char usd[BR_COST_USD_STRLEN];
    br_cost_format_usd(snap->cost_nano, usd);
    const struct br_route_feedback_cfg *f = &route->feedback;
    return json_pack(
        "{s:s, s:o, s:o, s:o, s:o, s:f, s:I, s:s, s:I, s:{s:b, s:f, s:f, s:f, s:f, "
        "s:f, s:I, s:I}, s:o, s:o}",
        "name", route->name, "models", models, "policy", policies, "threshold",
        number_or_null(snap->threshold), "config_threshold", number_or_null(snap->config_threshold),
        "exploration", route->exploration, "requests", (json_int_t)snap->requests, "cost_usd", usd,
        "feedback", (json_int_t)snap->feedback, "adapt", "adapt", f->adapt, "q_min", f->q_min,
        "confidence", f->confidence, "step", f->step, "min_threshold", f->min_threshold,
        "max_threshold", f->max_threshold, "cooldown_ms", (json_int_t)f->cooldown_ms, "min_samples",
        (json_int_t)f->min_samples, "estimates", estimates, "history", history);
}

void br__admin_routes(struct br_worker *w, br_http_request *req)
{
    struct br_runtime *rt = br__worker_runtime(w);
    if (!authorized(w, rt, req, true)) {
        return;
    }
    struct br_route_snapshot *snap = br_malloc(sizeof(*snap));
    json_t *routes = json_array();
    if (!snap || !routes) {
        br_free(snap);
        json_decref(routes);
        br__respond_json(req, 200, NULL); /* a 503 */
        return;
    }
    for (size_t i = 0; i < rt->cfg->n_routes; i++) {
        json_array_append_new(routes, route_json(rt, &rt->cfg->routes[i], snap));
    }
    br_free(snap);
    br__respond_json(req, 200, json_pack("{s:o}", "routes", routes));
}

void br__admin_reload(struct br_worker *w, br_http_request *req)
{
    struct br_runtime *rt = br__worker_runtime(w);
    if (!authorized(w, rt, req, true)) {
        return;
    }
    char err[1024];
    int rc = br_gateway_reload(w->g, err, sizeof(err));
    if (rc != BR_OK) {
        br_http_respond_error(req, 400, "invalid_request_error", "invalid_config", NULL, err);
        return;
    }
    br__respond_json(req, 200, json_pack("{s:s}", "status", "reloaded"));
}

static int register_route_metrics(br_metrics *m, struct br_api_metrics *ids)
{
    static const double score_buckets[] = {0.05, 0.1, 0.2, 0.3, 0.4,  0.5,
                                           0.6,  0.7, 0.8, 0.9, 0.95, 1.0};
    static const char *const l_rmp[] = {"route", "model", "policy"};
    static const char *const l_route[] = {"route"};
    static const char *const l_rmds[] = {"route", "model", "decision", "stat"};
    static const char *const l_rmo[] = {"route", "model", "outcome"};
    static const char *const l_rmr[] = {"route", "model", "result"};
    static const char *const l_ms[] = {"model", "stat"};
    int rc = 0;
    rc |= br_metrics_register(m, "brigade_route_decisions_total",
                              "Routing decisions by route, chosen model and deciding policy.",
                              BR_METRIC_TYPE_COUNTER, l_rmp, 3, NULL, 0, &ids->route_decisions);
    rc |= br_metrics_register(m, "brigade_route_score", "Classifier scores by route.",
                              BR_METRIC_TYPE_HISTOGRAM, l_route, 1, score_buckets,
                              sizeof(score_buckets) / sizeof(score_buckets[0]), &ids->route_score);
    rc |= br_metrics_register(m, "brigade_route_threshold",
                              "Current threshold of each route (configured, re-tuned by feedback).",
                              BR_METRIC_TYPE_GAUGE, l_route, 1, NULL, 0, &ids->route_threshold);
    rc |= br_metrics_register(m, "brigade_route_quality",
                              "Feedback quality estimates per route, model and decision: mean, "
                              "interval bounds and count.",
                              BR_METRIC_TYPE_GAUGE, l_rmds, 4, NULL, 0, &ids->route_quality);
    rc |= br_metrics_register(
        m, "brigade_route_threshold_changes_total", "Threshold changes made by feedback re-tuning.",
        BR_METRIC_TYPE_COUNTER, l_route, 1, NULL, 0, &ids->route_threshold_changes);
    rc |= br_metrics_register(m, "brigade_cascade_steps_total",
                              "Cascade answers judged, by route, model and outcome (accepted, "
                              "escalated).",
                              BR_METRIC_TYPE_COUNTER, l_rmo, 3, NULL, 0, &ids->cascade);
    rc |= br_metrics_register(m, "brigade_feedback_total",
                              "Feedback received by route and model (result: recorded, "
                              "not_found, rejected).",
                              BR_METRIC_TYPE_COUNTER, l_rmr, 3, NULL, 0, &ids->feedback);
    rc |= br_metrics_register(m, "brigade_model_latency_estimate",
                              "Live latency statistics per model (EWMA): ttft_ms, tokens_per_s.",
                              BR_METRIC_TYPE_GAUGE, l_ms, 2, NULL, 0, &ids->latency_est);
    return rc;
}

int br__metrics_register_all(br_metrics *m, struct br_api_metrics *ids)
{
    static const double latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                             0.05,   0.1,   0.25,   0.5,   1,    2.5,
                                             5,      10,    30,     60,    120,  300};
    static const double overhead_buckets[] = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025,
                                              0.0005,  0.001,    0.0025,  0.005,  0.01,
                                              0.025,   0.05,     0.1,     0.5};
    static const char *const l_model[] = {"model"};
    static const char *const l_model_status[] = {"model", "status"};
    static const char *const l_model_kind[] = {"model", "kind"};
    static const char *const l_status[] = {"status"};
    static const char *const l_result[] = {"result"};
    static const char *const l_version[] = {"version"};
    const size_t nl = sizeof(latency_buckets) / sizeof(latency_buckets[0]);
    int rc = 0;
    rc |= br_metrics_register(m, "brigade_requests_total",
                              "Chat completion requests by model and HTTP status.",
                              BR_METRIC_TYPE_COUNTER, l_model_status, 2, NULL, 0, &ids->requests);
    rc |= br_metrics_register(m, "brigade_request_duration_seconds",
                              "Total request latency, first request byte to last response byte.",
                              BR_METRIC_TYPE_HISTOGRAM, l_model, 1, latency_buckets, nl,
                              &ids->duration);
    rc |= br_metrics_register(
        m, "brigade_gateway_overhead_seconds",
        "Latency added by the gateway: total latency minus the upstream call's duration.",
        BR_METRIC_TYPE_HISTOGRAM, NULL, 0, overhead_buckets,
        sizeof(overhead_buckets) / sizeof(overhead_buckets[0]), &ids->overhead);
    rc |= br_metrics_register(
        m, "brigade_upstream_ttfb_seconds", "Upstream time to first byte, from sending the call.",
        BR_METRIC_TYPE_HISTOGRAM, l_model, 1, latency_buckets, nl, &ids->upstream_ttfb);
    rc |=
        br_metrics_register(m, "brigade_time_to_first_token_seconds",
                            "First request byte to the first answer token sent to the client.",
                            BR_METRIC_TYPE_HISTOGRAM, l_model, 1, latency_buckets, nl, &ids->ttft);
    rc |= br_metrics_register(m, "brigade_tokens_total",
                              "Tokens by model and kind (prompt, completion, cached, reasoning).",
                              BR_METRIC_TYPE_COUNTER, l_model_kind, 2, NULL, 0, &ids->tokens);
    rc |= br_metrics_register(m, "brigade_cost_usd_total",
                              "Cost in USD by model, from real token usage and list prices.",
                              BR_METRIC_TYPE_COUNTER, l_model, 1, NULL, 0, &ids->cost);
    rc |= br_metrics_register(m, "brigade_upstream_errors_total",
                              "Upstream failures by model and kind.", BR_METRIC_TYPE_COUNTER,
                              l_model_kind, 2, NULL, 0, &ids->upstream_errors);
    rc |= br_metrics_register(m, "brigade_model_in_flight",
                              "Upstream calls holding a slot of a model's max_in_flight.",
                              BR_METRIC_TYPE_GAUGE, l_model, 1, NULL, 0, &ids->model_in_flight);
    rc |= br_metrics_register(m, "brigade_model_queued",
                              "Requests waiting for a slot of a model's max_in_flight.",
                              BR_METRIC_TYPE_GAUGE, l_model, 1, NULL, 0, &ids->model_queued);
    rc |= br_metrics_register(m, "brigade_requests_in_flight",
                              "Chat completion requests being served now.", BR_METRIC_TYPE_GAUGE,
                              NULL, 0, NULL, 0, &ids->inflight);
    rc |= br_metrics_register(m, "brigade_http_rejected_total",
                              "Requests refused by the HTTP layer (framing, limits, timeouts).",
                              BR_METRIC_TYPE_COUNTER, l_status, 1, NULL, 0, &ids->rejected);
    rc |= br_metrics_register(m, "brigade_log_rows_dropped_total",
                              "Request-log rows refused because the log queue was full.",
                              BR_METRIC_TYPE_COUNTER, NULL, 0, NULL, 0, &ids->log_dropped);
    rc |= br_metrics_register(m, "brigade_log_queue_depth", "Request-log rows waiting for disk.",
                              BR_METRIC_TYPE_GAUGE, NULL, 0, NULL, 0, &ids->log_queue);
    rc |= br_metrics_register(m, "brigade_log_rows_written",
                              "Request-log rows committed to the database.", BR_METRIC_TYPE_GAUGE,
                              NULL, 0, NULL, 0, &ids->log_written);
    rc |= br_metrics_register(m, "brigade_config_reloads_total", "Config reloads by result.",
                              BR_METRIC_TYPE_COUNTER, l_result, 1, NULL, 0, &ids->reloads);
    rc |= br_metrics_register(m, "brigade_build_info", "Build information.", BR_METRIC_TYPE_GAUGE,
                              l_version, 1, NULL, 0, &ids->info);
    rc |= register_route_metrics(m, ids);
    rc |= br__deploy_metrics_register(m, ids);
    if (rc != 0) {
        return BR_ERR_NOMEM;
    }
    const char *v[] = {BR_VERSION_STRING};
    br_metrics_set(m, BR_METRICS_SHARD_ANY, ids->info, v, 1);
    return BR_OK;
}
