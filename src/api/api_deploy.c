/* SPDX-License-Identifier: MIT */
/*
 * The state of every model's deployments, from the resilience balancer (src/resil): breaker
 * state, requests in flight, EWMA of time to first byte, 429 cool-down, the RPM/TPM window.
 * Shown two ways:
 *
 *   GET /admin/deployments (master key): one object per deployment;
 *   /metrics: brigade_deployment_state{model,deployment} (0 closed, 1 open = ejected,
 *             2 half-open), brigade_deployment_in_flight, brigade_deployment_ttfb_ewma_seconds,
 *             brigade_deployment_ejections (openings since the config snapshot was built),
 *             brigade_deployment_failures (failed attempts, idem).
 *
 * Breakers and windows live with the config snapshot: a reload starts them afresh.
 */
#include <jansson.h>
#include <stdio.h>

#include "api/api_int.h"
#include "core/clock.h"
#include "core/err.h"

static const char *const l_md[] = {"model", "deployment"};

int br__deploy_metrics_register(br_metrics *m, struct br_api_metrics *ids)
{
    int rc = 0;
    rc |= br_metrics_register(m, "brigade_deployment_state",
                              "Breaker state of each deployment: 0 closed, 1 open (ejected), 2 "
                              "half-open (one probe decides).",
                              BR_METRIC_TYPE_GAUGE, l_md, 2, NULL, 0, &ids->deploy_state);
    rc |=
        br_metrics_register(m, "brigade_deployment_in_flight", "Attempts in flight per deployment.",
                            BR_METRIC_TYPE_GAUGE, l_md, 2, NULL, 0, &ids->deploy_in_flight);
    rc |= br_metrics_register(m, "brigade_deployment_ttfb_ewma_seconds",
                              "EWMA of the time to first byte per deployment (no series before "
                              "the first sample).",
                              BR_METRIC_TYPE_GAUGE, l_md, 2, NULL, 0, &ids->deploy_ttfb);
    rc |= br_metrics_register(m, "brigade_deployment_ejections",
                              "Breaker openings per deployment since the configuration was "
                              "loaded.",
                              BR_METRIC_TYPE_GAUGE, l_md, 2, NULL, 0, &ids->deploy_ejections);
    rc |= br_metrics_register(m, "brigade_deployment_failures",
                              "Failed attempts per deployment since the configuration was loaded.",
                              BR_METRIC_TYPE_GAUGE, l_md, 2, NULL, 0, &ids->deploy_failures);
    return rc ? BR_ERR_NOMEM : BR_OK;
}

static double state_number(enum br_resil_breaker_state s)
{
    return s == BR_RESIL_BREAKER_STATE_OPEN ? 1.0 : s == BR_RESIL_BREAKER_STATE_HALF_OPEN ? 2.0 : 0;
}

void br__deploy_gauges(struct br_gateway *g, const struct br_runtime *rt)
{
    uint64_t now = br_clock_now_ns() / 1000000;
    for (size_t i = 0; i < rt->n_models; i++) {
        const struct br_runtime_model *rm = &rt->models[i];
        for (size_t d = 0; d < rm->n_deploys; d++) {
            struct br_resil_deployment_info info;
            if (br_resil_lb_info(rm->lb, d, now, &info) != BR_OK) {
                continue;
            }
            const char *l[] = {rm->cfg->name, rm->deploys[d].cfg->name};
            unsigned sh = BR_METRICS_SHARD_ANY;
            br_metrics_set(g->metrics, sh, g->m.deploy_state, l, state_number(info.breaker.state));
            br_metrics_set(g->metrics, sh, g->m.deploy_in_flight, l, (double)info.outstanding);
            if (info.has_ewma) {
                br_metrics_set(g->metrics, sh, g->m.deploy_ttfb, l, info.ewma_ttfb_ms / 1000.0);
            }
            br_metrics_set(g->metrics, sh, g->m.deploy_ejections, l,
                           (double)info.breaker.total_ejections);
            br_metrics_set(g->metrics, sh, g->m.deploy_failures, l, (double)info.failures);
        }
    }
}

static json_t *deployment_json(const struct br_runtime_model *rm, size_t d, uint64_t now)
{
    struct br_resil_deployment_info info;
    if (br_resil_lb_info(rm->lb, d, now, &info) != BR_OK) {
        return NULL;
    }
    const struct br_deployment_cfg *dc = rm->deploys[d].cfg;
    uint64_t open_ms = info.breaker.until_ms > now ? info.breaker.until_ms - now : 0;
    uint64_t cool_ms = info.cooldown_until_ms > now ? info.cooldown_until_ms - now : 0;
    json_t *o = json_pack(
        "{s:s, s:s, s:s?, s:I, s:{s:s, s:I, s:I, s:I, s:I, s:b}, s:I, s:o, s:I, s:{s:I, s:I, "
        "s:I, s:I}, s:I, s:I}",
        "model", rm->cfg->name, "deployment", dc->name, "base_url", dc->base_url, "weight",
        (json_int_t)dc->weight, "breaker", "state", br_resil_breaker_state_name(info.breaker.state),
        "consecutive_failures", (json_int_t)info.breaker.consecutive_failures, "ejections",
        (json_int_t)info.breaker.ejections, "total_ejections",
        (json_int_t)info.breaker.total_ejections, "open_for_ms", (json_int_t)open_ms,
        "probe_in_flight", info.breaker.probe_in_flight, "in_flight", (json_int_t)info.outstanding,
        "ttfb_ewma_ms", info.has_ewma ? json_real(info.ewma_ttfb_ms) : json_null(), "cooldown_ms",
        (json_int_t)cool_ms, "window", "requests", (json_int_t)info.window_requests, "tokens",
        (json_int_t)info.window_tokens, "rpm", (json_int_t)dc->rpm, "tpm", (json_int_t)dc->tpm,
        "picks", (json_int_t)info.picks, "failures", (json_int_t)info.failures);
    return o;
}

void br__admin_deployments(struct br_worker *w, br_http_request *req)
{
    struct br_runtime *rt = br__worker_runtime(w);
    const char *key_id;
    enum br_auth_result ar = br__auth_check(rt->cfg, req, true, &key_id);
    if (ar != BR_AUTH_OK) {
        br__auth_fail(req, ar, true);
        return;
    }
    uint64_t now = br_clock_now_ns() / 1000000;
    json_t *data = json_array();
    int rc = data ? BR_OK : BR_ERR_NOMEM;
    for (size_t i = 0; rc == BR_OK && i < rt->n_models; i++) {
        for (size_t d = 0; rc == BR_OK && d < rt->models[i].n_deploys; d++) {
            json_t *o = deployment_json(&rt->models[i], d, now);
            rc = o && json_array_append_new(data, o) == 0 ? BR_OK : BR_ERR_NOMEM;
        }
    }
    if (rc != BR_OK) {
        json_decref(data);
        data = NULL;
    }
    br__respond_json(req, 200,
                     data ? json_pack("{s:s, s:o}", "object", "list", "data", data) : NULL);
}
