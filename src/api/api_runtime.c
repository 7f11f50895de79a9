/* SPDX-License-Identifier: MIT */
/*
 * Runtimes: a config snapshot joined with its providers' state. Built off the hot path (at
 * start-up and on reload), immutable afterwards, and handed to workers through a generation
 * counter: a worker notices a new generation at its next request and swaps its reference on
 * its own thread, so the request path takes no lock unless a reload just happened.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api/api_int.h"
#include "core/alloc.h"
#include "core/err.h"
#include "core/log.h"

static void runtime_free(struct br_runtime *rt)
{
    if (!rt) {
        return;
    }
    for (size_t i = 0; i < rt->n_models; i++) {
        struct br_runtime_model *m = &rt->models[i];
        for (size_t d = 0; m->deploys && d < m->n_deploys; d++) {
            if (m->ops && m->deploys[d].state) {
                m->ops->model_destroy(m->deploys[d].state);
            }
        }
        br_free(m->deploys);
        br_resil_lb_destroy(m->lb);
        br__gate_destroy(m->gate);
    }
    br_resil_budget_destroy(rt->retry_budget);
    br_router_destroy(rt->router);
    br_free(rt->models);
    br_free(rt->models_json);
    br_config_unref(rt->cfg);
    br_free(rt);
}

static int append_model(json_t *data, const char *id, int64_t created, const char *owner)
{
    json_t *m = json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "model", "created",
                          (json_int_t)created, "owned_by", owner);
    return m && json_array_append_new(data, m) == 0 ? BR_OK : BR_ERR_NOMEM;
}

/* "MODEL:ADAPTER" entries for the adapters model i serves now. */
static int append_variants(const struct br_runtime *rt, size_t i, json_t *data)
{
    const struct br_runtime_model *rm = &rt->models[i];
    json_t *list = json_array();
    int rc = list ? rm->ops->variant_list(rm->state, list) : BR_ERR_NOMEM;
    size_t k;
    json_t *v;
    json_array_foreach(list, k, v)
    {
        char id[512];
        (void)snprintf(id, sizeof(id), "%s:%s", rm->cfg->name,
                       json_string_value(json_object_get(v, "name")));
        rc = rc == BR_OK ? append_model(data, id, rt->created_s, rm->cfg->provider) : rc;
    }
    json_decref(list);
    return rc;
}

json_t *br__models_json(const struct br_runtime *rt)
{
    json_t *root = json_object();
    json_t *data = json_array();
    int rc = root && data && json_object_set(root, "data", data) == 0 ? BR_OK : BR_ERR_NOMEM;
    rc = rc == BR_OK && json_object_set_new(root, "object", json_string("list")) == 0
             ? rc
             : BR_ERR_NOMEM;
    for (size_t i = 0; rc == BR_OK && i < rt->n_models; i++) {
        const struct br_runtime_model *rm = &rt->models[i];
        rc = append_model(data, rm->cfg->name, rt->created_s, rm->cfg->provider);
        if (rc == BR_OK && rm->ops->variant_list) {
            rc = append_variants(rt, i, data);
        }
    }
    /* Routes work wherever a model name does, so clients can discover them here too. */
    for (size_t i = 0; rc == BR_OK && i < rt->cfg->n_routes; i++) {
        rc = append_model(data, rt->cfg->routes[i].name, rt->created_s, "brigade-route");
    }
    json_decref(data);
    if (rc != BR_OK) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/*
 * The GET /v1/models body, built once per snapshot, unless a model has variants (LoRA
 * adapters the admin API may load and unload at any time): then every request builds it.
 */
static int build_models_json(struct br_runtime *rt)
{
    for (size_t i = 0; i < rt->n_models; i++) {
        rt->models_dynamic |= rt->models[i].ops->variant_list != NULL;
    }
    if (rt->models_dynamic) {
        return BR_OK;
    }
    json_t *root = br__models_json(rt);
    rt->models_json = root ? br__json_dump_heap(root, &rt->models_json_len) : NULL;
    json_decref(root);
    return rt->models_json ? BR_OK : BR_ERR_NOMEM;
}

/* What the provider sees for deployment d of mc. */
static void fill_target(const struct br_model_cfg *mc, const struct br_deployment_cfg *d,
                        struct br_provider_target *t)
{
    t->name = mc->name;
    t->upstream_model = d->upstream_model;
    t->base_url = d->base_url;
    t->api_key = d->api_key;
    t->replay_file = mc->replay_file;
    t->replay_prompt_field = mc->replay_prompt_field;
    t->replay_response_field = mc->replay_response_field;
    t->local_model = mc->local_model;
    t->local_tokenizer = mc->local_tokenizer;
    t->local_template = mc->local_template;
    t->local_threads = mc->local_threads;
    t->local_context = mc->local_context;
    t->local_queue = mc->local_queue;
    t->local_lora = mc->local_lora;
    t->local_lora_scale = mc->local_lora_scale;
    t->local_adapter_names = mc->local_adapter_names;
    t->local_adapter_paths = mc->local_adapter_paths;
    t->local_adapter_scales = mc->local_adapter_scales;
    t->n_local_adapters = mc->n_local_adapters;
    t->extra_headers = mc->extra_headers;
    t->n_extra_headers = mc->n_extra_headers;
    t->connect_timeout_ms = mc->connect_timeout_ms;
    t->first_byte_timeout_ms = mc->first_byte_timeout_ms;
    t->idle_timeout_ms = mc->idle_timeout_ms;
    t->default_max_tokens = mc->default_max_tokens;
}

/* The config's trigger bits as the resilience library's triggers. */
static void fill_triggers(unsigned retry_on, unsigned fallback_on, struct br_resil_triggers *t)
{
    static const struct {
        unsigned bit;
        uint32_t kinds;
    } kinds[] = {
        {BR_RESIL_ON_CONNECT, BR_RESIL_TRIGGER_CONNECT | BR_RESIL_TRIGGER_BROKEN},
        {BR_RESIL_ON_TIMEOUT, BR_RESIL_TRIGGER_FIRST_BYTE_TIMEOUT | BR_RESIL_TRIGGER_IDLE_TIMEOUT},
        {BR_RESIL_ON_CONTEXT_LENGTH, BR_RESIL_TRIGGER_CONTEXT_LENGTH},
    };
    br_resil_triggers_clear(t);
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        t->retry_kinds |= (retry_on & kinds[i].bit) ? kinds[i].kinds : 0;
        t->fallback_kinds |= (fallback_on & kinds[i].bit) ? kinds[i].kinds : 0;
    }
    t->retry_kinds &= ~BR_RESIL_TRIGGER_CONTEXT_LENGTH;
    (void)br_resil_triggers_set_status(t, 429, (retry_on & BR_RESIL_ON_429) != 0,
                                       (fallback_on & BR_RESIL_ON_429) != 0);
    for (int s = 500; s <= 599; s++) {
        (void)br_resil_triggers_set_status(t, s, (retry_on & BR_RESIL_ON_5XX) != 0,
                                           (fallback_on & BR_RESIL_ON_5XX) != 0);
    }
}

static void balancer_opts(const struct br_model_cfg *mc, struct br_resil_lb_opts *lo)
{
    br_resil_lb_opts_default(lo);
    lo->policy = mc->balance == BR_BALANCE_LEAST_OUTSTANDING ? BR_RESIL_LB_POLICY_LEAST_OUTSTANDING
                 : mc->balance == BR_BALANCE_LATENCY         ? BR_RESIL_LB_POLICY_LATENCY
                                                             : BR_RESIL_LB_POLICY_WEIGHTED;
    lo->breaker.failure_threshold = mc->breaker.failures;
    lo->breaker.eject_ms = mc->breaker.eject_ms;
    lo->breaker.eject_max_ms = mc->breaker.max_eject_ms;
    if (!mc->breaker.enabled) {
        /* `breaker: off`: never reached (and the chat path reports no health at all). */
        lo->breaker.failure_threshold = UINT32_MAX;
    }
}

/* Opens every deployment of mc and builds its balancer. */
static int model_deploys(const struct br_config *cfg, const struct br_model_cfg *mc,
                         struct br_runtime_model *m, char *err, size_t errlen)
{
    m->deploys = br_calloc(mc->n_deployments, sizeof(*m->deploys));
    if (!m->deploys) {
        return br_err_fail(err, errlen, BR_ERR_NOMEM, "out of memory");
    }
    m->n_deploys = mc->n_deployments;
    struct br_resil_deployment_opts dopts[BR_MODEL_MAX_DEPLOYMENTS];
    for (size_t d = 0; d < mc->n_deployments; d++) {
        const struct br_deployment_cfg *dc = &mc->deployments[d];
        struct br_runtime_deploy *rd = &m->deploys[d];
        rd->cfg = dc;
        fill_target(mc, dc, &rd->target);
        char perr[512] = "";
        int rc = m->ops->model_create(&rd->target, &rd->state, perr, sizeof(perr));
        if (rc != BR_OK) {
            rd->state = NULL;
            return br_err_fail(err, errlen, rc, "%s:%d: model '%s' (%s): %s", cfg->path, dc->line,
                               dc->name, mc->provider, perr[0] ? perr : br_strerror(rc));
        }
        dopts[d] = (struct br_resil_deployment_opts){
            .weight = dc->weight, .rpm = (uint32_t)dc->rpm, .tpm = (uint64_t)dc->tpm};
    }
    m->target = m->deploys[0].target;
    m->state = m->deploys[0].state;
    struct br_resil_lb_opts lo;
    balancer_opts(mc, &lo);
    if (br_resil_lb_create(&lo, dopts, mc->n_deployments, &m->lb) != BR_OK) {
        return br_err_fail(err, errlen, BR_ERR_NOMEM, "out of memory");
    }
    if (br__gate_create(mc->max_in_flight, mc->queue, &m->gate) != BR_OK) {
        return br_err_fail(err, errlen, BR_ERR_NOMEM, "out of memory");
    }
    fill_triggers(mc->retry.on, cfg->resil.fallback_on, &m->triggers);
    m->retry = (struct br_resil_retry_opts){.max_retries = mc->retry.attempts,
                                            .base_ms = mc->retry.base_ms,
                                            .cap_ms = mc->retry.max_backoff_ms,
                                            .total_wait_ms = mc->retry.max_wait_ms};
    if (m->retry.cap_ms < m->retry.base_ms) {
        m->retry.cap_ms = m->retry.base_ms;
    }
    return BR_OK;
}

int br__runtime_build(struct br_config *cfg, br_route_live *live, struct br_runtime **out,
                      char *err, size_t errlen)
{
    int rc = BR_ERR_NOMEM;
    struct br_runtime *rt = br_calloc(1, sizeof(*rt));
    if (!rt) {
        (void)snprintf(err, errlen, "out of memory");
        return BR_ERR_NOMEM;
    }
    atomic_init(&rt->refs, 1);
    br_config_ref(cfg);
    rt->cfg = cfg;
    rt->created_s = (int64_t)time(NULL);
    rt->models = br_calloc(cfg->n_models, sizeof(*rt->models));
    if (!rt->models) {
        (void)snprintf(err, errlen, "out of memory");
        goto fail;
    }
    rt->n_models = cfg->n_models;
    for (size_t i = 0; i < cfg->n_models; i++) {
        const struct br_model_cfg *mc = &cfg->models[i];
        struct br_runtime_model *m = &rt->models[i];
        m->cfg = mc;
        m->ops = br_provider_find(mc->provider);
        if (!m->ops) {
            (void)snprintf(err, errlen,
                           "%s:%d: model '%s': unknown provider '%s' (known: openai, anthropic, "
                           "replay, local)",
                           cfg->path, mc->line, mc->name, mc->provider);
            rc = BR_ERR_INVAL;
            goto fail;
        }
        rc = model_deploys(cfg, mc, m, err, errlen);
        if (rc != BR_OK) {
            goto fail;
        }
    }
    struct br_resil_budget_opts bo = {.min_retries = cfg->resil.retry_budget_min,
                                      .ratio = cfg->resil.retry_budget_ratio};
    if (br_resil_budget_create(&bo, &rt->retry_budget) != BR_OK) {
        (void)snprintf(err, errlen, "out of memory");
        rc = BR_ERR_NOMEM;
        goto fail;
    }
    rc = br_router_create(cfg, live, &rt->router, err, errlen);
    if (rc != BR_OK) {
        goto fail;
    }
    rc = build_models_json(rt);
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "out of memory");
        goto fail;
    }
    *out = rt;
    return BR_OK;
fail:
    runtime_free(rt);
    return rc;
}

void br__runtime_ref(struct br_runtime *rt)
{
    atomic_fetch_add_explicit(&rt->refs, 1, memory_order_relaxed);
}

void br__runtime_unref(struct br_runtime *rt)
{
    if (rt && atomic_fetch_sub_explicit(&rt->refs, 1, memory_order_acq_rel) == 1) {
        runtime_free(rt);
    }
}

struct br_runtime_model *br__runtime_model(struct br_runtime *rt, const struct br_model_cfg *m)
{
    size_t i = (size_t)(m - rt->cfg->models);
    return i < rt->n_models ? &rt->models[i] : NULL;
}

struct br_runtime *br__worker_runtime(struct br_worker *w)
{
    struct br_gateway *g = w->g;
    if (atomic_load_explicit(&g->rt_generation, memory_order_acquire) != w->rt_generation) {
        pthread_mutex_lock(&g->rt_lock);
        struct br_runtime *rt = g->rt;
        br__runtime_ref(rt);
        w->rt_generation = atomic_load_explicit(&g->rt_generation, memory_order_relaxed);
        pthread_mutex_unlock(&g->rt_lock);
        br__runtime_unref(w->rt);
        w->rt = rt;
    }
    return w->rt;
}

bool br__variant_exists(const struct br_runtime_model *rm, const char *name, size_t n)
{
    return rm && rm->ops->variant_exists && rm->ops->variant_exists(rm->state, name, n);
}
