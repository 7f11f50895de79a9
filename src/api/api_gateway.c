/* SPDX-License-Identifier: MIT */
/*
 * The gateway's life cycle and request dispatch: load config and runtime, open the request log,
 * bind, start the workers, then serve until a signal says stop (SIGTERM/SIGINT: drain) or
 * reload (SIGHUP). Each worker gets its own upstream client (native HTTP/1.1 for http://
 * upstreams, libcurl for https://, both on its loop) and its own metrics shard.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/alloc.h"
#include "core/err.h"
#include "core/log.h"

/* ------------------------------------------------------------------ http handler */

/* Completions posted by other threads run here, oldest first. */
static void on_worker_async(uv_async_t *a)
{
    struct br_worker *w = a->data;
    pthread_mutex_lock(&w->done_mu);
    struct br__done *list = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->done_mu);
    struct br__done *fifo = NULL;
    while (list) {
        struct br__done *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    while (fifo) {
        struct br__done *next = fifo->next;
        fifo->complete(fifo);
        fifo = next;
    }
}

void br__worker_post(struct br_worker *w, struct br__done *d)
{
    pthread_mutex_lock(&w->done_mu);
    if (!w->async_open) {
        pthread_mutex_unlock(&w->done_mu);
        d->drop(d);
        return;
    }
    d->next = w->done;
    w->done = d;
    uv_async_send(&w->async);
    pthread_mutex_unlock(&w->done_mu);
}

static int worker_init(void *user, uv_loop_t *loop, unsigned index, void **wctx_out)
{
    struct br_gateway *g = user;
    struct br_worker *w = g->workers[index];
    w->loop = loop;
    if (uv_async_init(loop, &w->async, on_worker_async) != 0) {
        return BR_ERR_IO;
    }
    w->async.data = w;
    pthread_mutex_lock(&w->done_mu);
    w->async_open = true;
    pthread_mutex_unlock(&w->done_mu);
    struct br_upstream_opts uo = {0};
    uo.backend =
        g->rt->cfg->upstream_force_curl ? BR_UPSTREAM_BACKEND_CURL : BR_UPSTREAM_BACKEND_AUTO;
    int rc = br_upstream_create(loop, &uo, &w->upstream);
    if (rc != BR_OK) {
        br_log(BR_LOG_ERR, NULL, "event=worker_init_failed worker=%u err=%s", index,
               br_err_name(rc));
        return rc;
    }
    *wctx_out = w;
    return BR_OK;
}

static void worker_cleanup(void *wctx)
{
    struct br_worker *w = wctx;
    pthread_mutex_lock(&w->done_mu);
    w->async_open = false;
    struct br__done *left = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->done_mu);
    uv_close((uv_handle_t *)&w->async, NULL);
    while (left) {
        /* Their requests are finished (the loop only stops without connections). */
        struct br__done *next = left->next;
        left->drop(left);
        left = next;
    }
    br_upstream_destroy(w->upstream);
    w->upstream = NULL;
    /* Let the client's handles finish closing before the http layer closes the loop. */
    uv_run(w->loop, UV_RUN_NOWAIT);
}

static bool path_is(const br_http_request *req, const char *p)
{
    return br_slice_eq_cstr(req->path, p);
}

static void method_not_allowed(br_http_request *req, const char *allowed)
{
    char msg[160];
    (void)snprintf(msg, sizeof(msg), "Method %.*s is not allowed on %.*s; use %s.",
                   (int)(req->method_name.len > 16 ? 16 : req->method_name.len),
                   req->method_name.ptr, (int)(req->path.len > 64 ? 64 : req->path.len),
                   req->path.ptr, allowed);
    br_http_respond_error(req, 405, "invalid_request_error", "method_not_allowed", NULL, msg);
}

/* Endpoints at fixed paths, after the chat completions one (on_request checks it first). */
static const struct endpoint {
    const char *path;
    const char *alias; /* a second path for the same endpoint, or NULL */
    bool post;         /* POST only; otherwise GET (and HEAD) only */
    void (*handle)(struct br_worker *w, br_http_request *req);
} endpoints[] = {
    {"/v1/feedback", "/feedback", true, br__feedback_handle},
    {"/v1/models", "/models", false, br__models_list},
    {"/health", "/healthz", false, br__health},
    {"/metrics", NULL, false, br__metrics_scrape},
    {"/admin/config", NULL, false, br__admin_config},
    {"/admin/routes", NULL, false, br__admin_routes},
    {"/admin/reload", NULL, true, br__admin_reload},
    {"/admin/deployments", NULL, false, br__admin_deployments},
};

/* Calls e's handler when the method is allowed, answers 405 otherwise. */
static void dispatch(const struct endpoint *e, struct br_worker *w, br_http_request *req)
{
    enum br_http_method m = req->method;
    bool ok =
        e->post ? m == BR_HTTP_METHOD_POST : (m == BR_HTTP_METHOD_GET || m == BR_HTTP_METHOD_HEAD);
    if (!ok) {
        method_not_allowed(req, e->post ? "POST" : "GET");
        return;
    }
    e->handle(w, req);
}

static void unknown_url(br_http_request *req)
{
    char msg[200];
    (void)snprintf(msg, sizeof(msg), "Unknown request URL: %.*s %.*s.",
                   (int)(req->method_name.len > 16 ? 16 : req->method_name.len),
                   req->method_name.ptr, (int)(req->path.len > 100 ? 100 : req->path.len),
                   req->path.ptr);
    br_http_respond_error(req, 404, "invalid_request_error", "unknown_url", NULL, msg);
}

static void on_request(void *wctx, br_http_request *req)
{
    struct br_worker *w = wctx;
    enum br_http_method m = req->method;
    if (path_is(req, "/v1/chat/completions") || path_is(req, "/chat/completions")) {
        if (m != BR_HTTP_METHOD_POST) {
            method_not_allowed(req, "POST");
            return;
        }
        br__chat_handle(w, req);
        return;
    }
    if (path_is(req, "/v1/completions") || path_is(req, "/completions")) {
        if (m != BR_HTTP_METHOD_POST) {
            method_not_allowed(req, "POST");
            return;
        }
        br__completions_handle(w, req);
        return;
    }
    for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++) {
        const struct endpoint *e = &endpoints[i];
        if (path_is(req, e->path) || (e->alias && path_is(req, e->alias))) {
            dispatch(e, w, req);
            return;
        }
    }
    if (path_is(req, "/admin/keys") || br_slice_starts_with(req->path, "/admin/keys/")) {
        br__admin_keys(w, req, br_slice_make(req->path.ptr + 11, req->path.len - 11));
        return;
    }
    if (br_slice_starts_with(req->path, "/admin/models/")) {
        br__admin_adapters(w, req, br_slice_make(req->path.ptr + 14, req->path.len - 14));
        return;
    }
    if (br_slice_starts_with(req->path, "/v1/models/") && req->path.len > 11) {
        if (m != BR_HTTP_METHOD_GET && m != BR_HTTP_METHOD_HEAD) {
            method_not_allowed(req, "GET");
            return;
        }
        br__models_get(w, req, br_slice_make(req->path.ptr + 11, req->path.len - 11));
        return;
    }
    unknown_url(req);
}

static void on_abort(void *wctx, br_http_request *req)
{
    const enum br_req_kind *kind = req->user;
    if (kind && *kind == BR_REQ_KIND_COMPLETION) {
        br__completions_abort(req);
        return;
    }
    br__chat_abort(wctx, req);
}

static void on_reject(void *wctx, int status, const char *reason, const char *req_id)
{
    struct br_worker *w = wctx;
    char st[12];
    (void)snprintf(st, sizeof(st), "%d", status);
    const char *l[] = {st};
    br_metrics_add(w->g->metrics, w->index, w->g->m.rejected, l, 1);
    br_log(BR_LOG_INFO, req_id, "event=http_reject status=%d reason=\"%s\"", status,
           reason ? reason : "");
}

static const struct br_http_handler handler = {
    .worker_init = worker_init,
    .worker_cleanup = worker_cleanup,
    .on_request = on_request,
    .on_abort = on_abort,
    .on_reject = on_reject,
};

/* ------------------------------------------------------------------ config */

static void apply_overrides(struct br_config *c, const struct br_gateway_overrides *ov)
{
    /* The snapshot is not shared yet, so the overrides may still be written into it. */
    if (ov->has_listen) {
        c->listen_host = ov->listen_host;
        c->listen_port = ov->listen_port;
    }
    if (ov->workers) {
        c->workers = ov->workers;
    }
    if (ov->log_path) {
        c->log_path = strcmp(ov->log_path, "off") == 0 ? NULL : ov->log_path;
    }
}

static void limits_from(const struct br_config *c, struct br_http_limits *l)
{
    br_http_limits_default(l);
    l->request_line_bytes = c->request_line_bytes;
    l->header_bytes = c->header_bytes;
    l->header_fields = c->header_fields;
    l->body_bytes = c->body_bytes;
    l->write_buffer_bytes = c->stream_buffer_bytes;
    l->max_connections = c->max_connections;
    l->header_timeout_ms = c->header_timeout_ms;
    l->body_idle_timeout_ms = c->body_idle_timeout_ms;
    l->keepalive_timeout_ms = c->keepalive_timeout_ms;
    l->drain_timeout_ms = c->drain_timeout_ms;
}

static int load(const char *path, const struct br_gateway_overrides *ov, br_route_live *live,
                struct br_runtime **out, char *err, size_t errlen)
{
    struct br_config *cfg = NULL;
    int rc = br_config_load_file(path, &cfg, err, errlen);
    if (rc != BR_OK) {
        return rc;
    }
    if (ov) {
        apply_overrides(cfg, ov);
    }
    rc = br__runtime_build(cfg, live, out, err, errlen);
    br_config_unref(cfg); /* the runtime holds its own reference */
    return rc;
}

int br_gateway_check_config(const char *config_path, char *msg, size_t msglen)
{
    struct br_runtime *rt = NULL;
    int rc = load(config_path, NULL, NULL, &rt, msg, msglen);
    if (rc != BR_OK) {
        return rc;
    }
    (void)snprintf(msg, msglen,
                   "%s: ok (%zu models, %zu routes, listen %s:%u, auth %s, request log %s)",
                   config_path, rt->n_models, rt->cfg->n_routes, rt->cfg->listen_host,
                   rt->cfg->listen_port, rt->cfg->has_master_key || rt->cfg->n_keys ? "on" : "off",
                   rt->cfg->log_path ? rt->cfg->log_path : "off");
    br__runtime_unref(rt);
    return BR_OK;
}

/* Warns about the settings a reload cannot change. */
static bool path_changed(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

static void reload_notes(const struct br_config *old, const struct br_config *c)
{
    if (strcmp(old->listen_host, c->listen_host) != 0 || old->listen_port != c->listen_port ||
        old->workers != c->workers) {
        br_log(BR_LOG_WARN, NULL,
               "event=reload_note msg=\"listen address and workers change "
               "only on restart\"");
    }
    if (path_changed(old->log_path, c->log_path)) {
        br_log(BR_LOG_WARN, NULL, "event=reload_note msg=\"log.path changes only on restart\"");
    }
    if (path_changed(old->key_store_path, c->key_store_path)) {
        br_log(BR_LOG_WARN, NULL,
               "event=reload_note msg=\"auth.key_store changes only on restart\"");
    }
}

int br_gateway_reload(br_gateway *g, char *err, size_t errlen)
{
    struct br_runtime *rt = NULL;
    const char *lbl_ok[] = {"ok"};
    const char *lbl_fail[] = {"failed"};
    int rc = load(g->config_path, &g->ov, g->route_live, &rt, err, errlen);
    if (rc != BR_OK) {
        br_log(BR_LOG_ERR, NULL, "event=reload_failed msg=\"%s\" action=keeping_previous_config",
               err);
        br_metrics_add(g->metrics, BR_METRICS_SHARD_ANY, g->m.reloads, lbl_fail, 1);
        return rc;
    }
    struct br_config *c = rt->cfg;
    pthread_mutex_lock(&g->rt_lock);
    struct br_runtime *old = g->rt;
    reload_notes(old->cfg, c);
    g->rt = rt;
    g->log_on_full = c->log_on_full;
    atomic_fetch_add_explicit(&g->rt_generation, 1, memory_order_release);
    pthread_mutex_unlock(&g->rt_lock);
    br__runtime_unref(old);

    struct br_http_limits l;
    limits_from(c, &l);
    if (g->http) {
        br_http_server_set_limits(g->http, &l);
    }
    enum br_log_level lvl;
    if (br_log_level_parse(c->log_level, &lvl) == BR_OK) {
        br_log_set_level(lvl);
    }
    br_metrics_add(g->metrics, BR_METRICS_SHARD_ANY, g->m.reloads, lbl_ok, 1);
    br_log(BR_LOG_INFO, NULL, "event=reloaded path=%s models=%zu", g->config_path, rt->n_models);
    return BR_OK;
}

/* ------------------------------------------------------------------ life cycle */

static int restore_one(void *user, const struct br_threshold_row *t)
{
    struct br_gateway *g = user;
    if (t->route &&
        br_router_threshold_restore(g->rt->router, t->route, t->config_threshold, t->threshold)) {
        br_log(BR_LOG_INFO, NULL, "event=route_threshold_restored route=%s threshold=%.4f",
               t->route, t->threshold);
    }
    return 0;
}

/* Thresholds re-tuned by an earlier run come back when the configured value is unchanged. */
static void restore_thresholds(struct br_gateway *g)
{
    if (g->rt->cfg->n_routes == 0) {
        return;
    }
    int rc = br_store_query_thresholds(g->rt->cfg->log_path, restore_one, g);
    if (rc != BR_OK) {
        br_log(BR_LOG_WARN, NULL, "event=route_threshold_restore_failed err=%s", br_err_name(rc));
    }
}

/* One worker context per event loop, each holding a reference to the first runtime. */
static int create_workers(struct br_gateway *g)
{
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
    g->workers = br_calloc(g->n_workers, sizeof(*g->workers));
    if (!g->workers) {
        return BR_ERR_NOMEM;
    }
    for (unsigned i = 0; i < g->n_workers; i++) {
        struct br_worker *w = br_calloc(1, sizeof(*w));
        if (!w) {
            return BR_ERR_NOMEM;
        }
        w->g = g;
        w->index = i;
        pthread_mutex_init(&w->done_mu, NULL);
        br_rng_seed(&w->rng, 0);
        br__runtime_ref(g->rt);
        w->rt = g->rt;
        w->rt_generation = 1;
        g->workers[i] = w;
    }
    return BR_OK;
}

/* The worker count (config, or one per core), the metrics and the worker contexts. */
static int create_metrics_and_workers(struct br_gateway *g, const struct br_config *c, char *err,
                                      size_t errlen)
{
    g->n_workers = c->workers ? c->workers : (unsigned)uv_available_parallelism();
    if (g->n_workers == 0) {
        g->n_workers = 1;
    }
    int rc = br_metrics_create(g->n_workers, &g->metrics);
    if (rc == BR_OK) {
        rc = br__metrics_register_all(g->metrics, &g->m);
    }
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "metrics: %s", br_strerror(rc));
        return rc;
    }
    rc = create_workers(g);
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "out of memory");
    }
    return rc;
}

/* The request log when the config names one, with the route thresholds it kept. */
static int open_request_log(struct br_gateway *g, const struct br_config *c, char *err,
                            size_t errlen)
{
    g->log_on_full = c->log_on_full;
    if (!c->log_path) {
        return BR_OK;
    }
    struct br_store_opts so = {
        .path = c->log_path,
        .queue_capacity = c->log_queue,
        .batch_max = c->log_batch,
        .flush_interval_ms = c->log_flush_ms,
    };
    int rc = br_store_open(&so, &g->store);
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "request log %s: %s", c->log_path, br_strerror(rc));
        return rc;
    }
    restore_thresholds(g);
    return BR_OK;
}

/* The virtual key store when the config has one (auth.key_store, or a master key). */
static int open_key_store(struct br_gateway *g, const struct br_config *c, char *err, size_t errlen)
{
    if (!c->key_store_path) {
        return BR_OK;
    }
    int rc = br_keys_open(c->key_store_path, c->log_flush_ms, &g->keys);
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "key store %s: %s", c->key_store_path, br_strerror(rc));
        return rc;
    }
    br_log(BR_LOG_INFO, NULL, "event=key_store path=%s active_keys=%zu", c->key_store_path,
           br_keys_active_count(g->keys));
    return BR_OK;
}

/* The listening server; warns when it is open to other hosts without any API key. */
static int create_server(struct br_gateway *g, const struct br_config *c, char *err, size_t errlen)
{
    struct br_http_server_config hc = {
        .host = c->listen_host,
        .port = c->listen_port,
        .n_workers = g->n_workers,
    };
    limits_from(c, &hc.limits);
    int rc = br_http_server_create(&hc, &handler, g, &g->http);
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "cannot listen on %s:%u: %s", c->listen_host, c->listen_port,
                       rc == BR_ERR_EXISTS ? "address already in use" : br_strerror(rc));
        return rc;
    }
    if (!c->has_master_key && c->n_keys == 0 && strcmp(c->listen_host, "127.0.0.1") != 0 &&
        strcmp(c->listen_host, "::1") != 0) {
        br_log(BR_LOG_WARN, NULL,
               "event=auth_off msg=\"no API keys configured and listening on %s: anyone who can "
               "reach this address can spend your provider credit\"",
               c->listen_host);
    }
    return BR_OK;
}

int br_gateway_create(const char *config_path, const struct br_gateway_overrides *ov,
                      br_gateway **out, char *err, size_t errlen)
{
    int rc = BR_ERR_NOMEM;
    struct br_gateway *g = br_calloc(1, sizeof(*g));
    if (!g) {
        (void)snprintf(err, errlen, "out of memory");
        return BR_ERR_NOMEM;
    }
    pthread_mutex_init(&g->rt_lock, NULL);
    g->config_path = br_strdup(config_path);
    if (ov) {
        g->ov = *ov;
    }
    if (!g->config_path) {
        (void)snprintf(err, errlen, "out of memory");
        goto fail;
    }
    rc = br_route_live_create(&g->route_live);
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "out of memory");
        goto fail;
    }
    rc = load(config_path, &g->ov, g->route_live, &g->rt, err, errlen);
    if (rc != BR_OK) {
        goto fail;
    }
    const struct br_config *c = g->rt->cfg;
    atomic_store(&g->rt_generation, 1);
    enum br_log_level lvl;
    if (br_log_level_parse(c->log_level, &lvl) == BR_OK) {
        br_log_set_level(lvl);
    }
    rc = create_metrics_and_workers(g, c, err, errlen);
    if (rc == BR_OK) {
        rc = open_request_log(g, c, err, errlen);
    }
    if (rc == BR_OK) {
        rc = open_key_store(g, c, err, errlen);
    }
    if (rc == BR_OK) {
        rc = create_server(g, c, err, errlen);
    }
    if (rc != BR_OK) {
        goto fail;
    }
    *out = g;
    return BR_OK;
fail:
    br_gateway_destroy(g);
    return rc;
}

uint16_t br_gateway_port(const br_gateway *g)
{
    return br_http_server_port(g->http);
}

static void close_cb(uv_handle_t *h)
{
    (void)h;
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
    struct br_gateway *g = s->data;
    if (atomic_exchange(&g->draining, true)) {
        br_log(BR_LOG_WARN, NULL, "event=signal signum=%d msg=\"already draining\"", signum);
        return;
    }
    br_log(BR_LOG_INFO, NULL, "event=drain signum=%d inflight=%zu", signum,
           br_http_server_inflight(g->http));
    br_http_server_drain(g->http);
    uv_close((uv_handle_t *)&g->sig_hup, close_cb);
    uv_close((uv_handle_t *)&g->sig_term, close_cb);
    uv_close((uv_handle_t *)&g->sig_int, close_cb);
}

static void on_hup(uv_signal_t *s, int signum)
{
    (void)signum;
    struct br_gateway *g = s->data;
    char err[1024];
    br_log(BR_LOG_INFO, NULL, "event=reload signal=SIGHUP path=%s", g->config_path);
    br_gateway_reload(g, err, sizeof(err));
}

int br_gateway_run(br_gateway *g)
{
    int rc = uv_loop_init(&g->main_loop);
    if (rc != 0) {
        return BR_ERR_IO;
    }
    uv_signal_init(&g->main_loop, &g->sig_term);
    uv_signal_init(&g->main_loop, &g->sig_int);
    uv_signal_init(&g->main_loop, &g->sig_hup);
    g->sig_term.data = g;
    g->sig_int.data = g;
    g->sig_hup.data = g;
    uv_signal_start(&g->sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&g->sig_int, on_stop_signal, SIGINT);
    uv_signal_start(&g->sig_hup, on_hup, SIGHUP);

    rc = br_http_server_start(g->http);
    if (rc != BR_OK) {
        br_log(BR_LOG_ERR, NULL, "event=start_failed err=%s", br_err_name(rc));
        on_stop_signal(&g->sig_term, 0);
        uv_run(&g->main_loop, UV_RUN_DEFAULT);
        uv_loop_close(&g->main_loop);
        return rc;
    }
    const struct br_config *c = g->rt->cfg;
    br_log(BR_LOG_INFO, NULL, "event=listening addr=%s:%u workers=%u models=%zu log=%s",
           c->listen_host, br_http_server_port(g->http), g->n_workers, g->rt->n_models,
           c->log_path ? c->log_path : "off");
    uv_run(&g->main_loop, UV_RUN_DEFAULT);
    br_http_server_join(g->http);
    uv_loop_close(&g->main_loop);
    if (g->store) {
        br_store_flush(g->store);
    }
    if (g->keys) {
        (void)br_keys_flush(g->keys);
    }
    br_log(BR_LOG_INFO, NULL, "event=stopped");
    return BR_OK;
}

void br_gateway_destroy(br_gateway *g)
{
    if (!g) {
        return;
    }
    br_http_server_destroy(g->http);
    /* The store goes before the workers: its writer may still hand feedback results to them
     * (they are dropped, the workers being closed). */
    br_store_close(g->store);
    br_keys_close(g->keys); /* commits the last debits: no request is running any more */
    for (unsigned i = 0; g->workers && i < g->n_workers; i++) {
        if (g->workers[i]) {
            br__runtime_unref(g->workers[i]->rt);
            pthread_mutex_destroy(&g->workers[i]->done_mu);
            br_free(g->workers[i]);
        }
    }
    br_free(g->workers);
    br_metrics_destroy(g->metrics);
    br__runtime_unref(g->rt);
    br_route_live_destroy(g->route_live);
    pthread_mutex_destroy(&g->rt_lock);
    br_free(g->config_path);
    br_free(g);
}
