/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/chat/completions: decode and validate the OpenAI request, plan it, call the
 * provider, and relay the answer — one JSON body, or SSE events each written to the socket as
 * it arrives. At the end the call is priced from its real usage (the upstream's own counts,
 * asked for on streams too, or an estimate that is labelled as one), logged and counted.
 *
 * Billing rules: every request to this endpoint gets one request-log row, errors included. A
 * client that goes away mid-answer is billed for what was produced until then (status 499).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "cost/cost.h"
#include "route/route.h"

enum chat_state {
    CHAT_CALLING,   /* provider call running, nothing sent yet */
    CHAT_STREAMING, /* SSE headers sent */
    CHAT_FINISHED,
};

struct chat {
    enum br_req_kind kind; /* first: req->user points here */
    struct br_worker *w;
    br_http_request *req;
    struct br_runtime *rt; /* reference held until the request ends */
    const struct br_runtime_model *rm;
    const char *key_id;
    const char *model_requested;
    bool stream;
    bool wants_usage;
    enum chat_state state;
    bool call_active;
    struct br_plan plan;
    struct br_provider_call call;
    struct br_buf frame; /* SSE frames waiting for the batch's flush */
    char *answer;        /* non-streamed body, copied from on_body */
    size_t answer_len;
    uint64_t t_call_start;
    uint64_t t_call_end;
    uint64_t t_first_token; /* first content written to the client */
};

/* ------------------------------------------------------------------ errors */

/* An OpenAI-shaped error with extra headers (the http layer's helper has none). */
static void respond_error(br_http_request *req, int status, const char *type, const char *code,
                          const char *param, const char *message,
                          const struct br_http_header *extra, size_t n_extra)
{
    /* Messages may quote client bytes (a JSON parser's context): keep them printable ASCII so
     * that they are valid UTF-8 and cannot carry control characters into logs or terminals. */
    char clean[512];
    size_t k = 0;
    for (; k < sizeof(clean) - 1 && message[k]; k++) {
        unsigned char ch = (unsigned char)message[k];
        clean[k] = (char)((ch < 0x20 || ch >= 0x7f) ? '?' : ch);
    }
    clean[k] = '\0';
    message = clean;
    json_t *e = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message, "type", type,
                          "param", param, "code", code);
    size_t len = 0;
    char *text = e ? br__json_dump(req->arena, e, &len) : NULL;
    json_decref(e);
    struct br_http_header h[8];
    size_t n = 0;
    h[n++] =
        (struct br_http_header){BR_SLICE_LIT("content-type"), BR_SLICE_LIT("application/json")};
    for (size_t i = 0; i < n_extra && n < 8; i++) {
        h[n++] = extra[i];
    }
    if (!text) {
        br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL, "out of memory");
        return;
    }
    br_http_respond(req, status, h, n, br_slice_make(text, len));
}

/* ------------------------------------------------------------------ accounting */

static int64_t us_between(uint64_t from_ns, uint64_t to_ns)
{
    return (from_ns && to_ns >= from_ns) ? (int64_t)((to_ns - from_ns) / 1000) : -1;
}

static void status_str(int status, char out[BR_FMT_I64_LEN])
{
    br_fmt_i64(status, out);
}

/* Records the request-log row and the metrics. Call before the http request is finished. */
static void account(struct chat *c, int status, const struct br_provider_result *res,
                    const char *error_kind)
{
    struct br_worker *w = c->w;
    struct br_gateway *g = w->g;
    uint64_t now = br_clock_now_ns();
    const struct br_model_cfg *mc = c->rm ? c->rm->cfg : NULL;
    struct br_usage u = {0};
    int64_t cost = 0;
    if (res) {
        u = res->usage;
        if (mc) {
            cost = br_cost_compute(&mc->price, &u);
        }
    }
    int64_t latency_us = us_between(c->req->t_start_ns, now);
    int64_t upstream_us =
        c->t_call_start ? us_between(c->t_call_start, c->t_call_end ? c->t_call_end : now) : -1;
    int64_t overhead_us = upstream_us >= 0 ? latency_us - upstream_us : latency_us;
    if (overhead_us < 0) {
        overhead_us = 0;
    }
    const char *model = mc ? mc->name : c->model_requested;

    if (g->store) {
        struct br_log_row row = {
            .id = c->req->id,
            .ts_ms = br_clock_wall_ms() - latency_us / 1000,
            .key_id = c->key_id,
            .model = model,
            .provider = mc ? mc->provider : NULL,
            .route = c->plan.route,
            .endpoint = "/v1/chat/completions",
            .status = status,
            .stream = c->stream,
            .prompt_tokens = u.prompt_tokens,
            .completion_tokens = u.completion_tokens,
            .cached_tokens = u.cached_tokens,
            .reasoning_tokens = u.reasoning_tokens,
            .usage_estimated = res && !u.reported && (u.prompt_tokens || u.completion_tokens),
            .cost_nano_usd = cost,
            .latency_us = latency_us,
            .ttft_us = us_between(c->req->t_start_ns, c->t_first_token),
            .upstream_latency_us = upstream_us,
            .overhead_us = overhead_us,
            .error_kind = error_kind,
            .upstream_model = res ? res->upstream_model : NULL,
        };
        if (br_store_log(g->store, &row) != BR_OK) {
            br_metrics_add(g->metrics, w->index, g->m.log_dropped, NULL, 1);
        }
    }

    char st[BR_FMT_I64_LEN];
    status_str(status, st);
    /* Label values come from the catalogue only: a client-chosen model name would let anyone
     * grow the metrics without bound. */
    const char *lbl_ms[] = {mc ? mc->name : "(none)", st};
    br_metrics_add(g->metrics, w->index, g->m.requests, lbl_ms, 1);
    if (!mc) {
        return;
    }
    const char *lbl_m[] = {mc->name};
    br_metrics_observe(g->metrics, w->index, g->m.duration, lbl_m, (double)latency_us / 1e6);
    br_metrics_observe(g->metrics, w->index, g->m.overhead, NULL, (double)overhead_us / 1e6);
    if (res && res->t_first_byte_ns && c->t_call_start) {
        br_metrics_observe(g->metrics, w->index, g->m.upstream_ttfb, lbl_m,
                           (double)(res->t_first_byte_ns - c->t_call_start) / 1e9);
    }
    if (c->t_first_token) {
        br_metrics_observe(g->metrics, w->index, g->m.ttft, lbl_m,
                           (double)(c->t_first_token - c->req->t_start_ns) / 1e9);
    }
    static const char *const kinds[] = {"prompt", "completion", "cached", "reasoning"};
    const int64_t counts[] = {u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                              u.reasoning_tokens};
    for (size_t k = 0; k < 4; k++) {
        if (counts[k] > 0) {
            const char *l[] = {mc->name, kinds[k]};
            br_metrics_add(g->metrics, w->index, g->m.tokens, l, (double)counts[k]);
        }
    }
    if (cost > 0) {
        br_metrics_add(g->metrics, w->index, g->m.cost, lbl_m, (double)cost / 1e9);
    }
    if (res && res->error_kind != BR_UPSTREAM_ERROR_NONE &&
        res->error_kind != BR_UPSTREAM_ERROR_CANCELED) {
        const char *l[] = {mc->name, br_upstream_error_name(res->error_kind)};
        br_metrics_add(g->metrics, w->index, g->m.upstream_errors, l, 1);
    }
}

static const char *error_kind_of(const struct br_provider_result *res, char *buf, size_t n)
{
    if (res->rc == BR_OK) {
        return NULL;
    }
    if (res->error_kind == BR_UPSTREAM_ERROR_NONE) {
        (void)snprintf(buf, n, "provider_error_%d", res->status);
    } else {
        (void)snprintf(buf, n, "upstream_%s", br_upstream_error_name(res->error_kind));
    }
    return buf;
}

/* ------------------------------------------------------------------ finishing */

static void release(struct chat *c)
{
    struct br_gateway *g = c->w->g;
    br_metrics_add(g->metrics, c->w->index, g->m.inflight, NULL, -1);
    br_buf_cleanup(&c->frame);
    br__runtime_unref(c->rt);
    c->rt = NULL;
}

/* Response headers naming the model, provider, tokens and cost. */
static size_t brigade_headers(struct chat *c, const struct br_provider_result *res,
                              struct br_http_header *h, size_t max, bool with_cost)
{
    size_t n = 0;
    br_arena *a = c->req->arena;
    if (!c->rm || max < 5) {
        return 0;
    }
    h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-model"),
                                     br_slice_from_cstr(c->rm->cfg->name)};
    h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-provider"),
                                     br_slice_from_cstr(c->rm->cfg->provider)};
    if (with_cost && res) {
        char usd[BR_COST_USD_STRLEN];
        br_cost_format_usd(br_cost_compute(&c->rm->cfg->price, &res->usage), usd);
        char *u = br_arena_strndup(a, usd, strlen(usd));
        char *pt = br_arena_alloc(a, BR_FMT_I64_LEN);
        char *ct = br_arena_alloc(a, BR_FMT_I64_LEN);
        if (pt && ct) {
            br_fmt_i64(res->usage.prompt_tokens, pt);
            br_fmt_i64(res->usage.completion_tokens, ct);
        }
        if (u && pt && ct) {
            h[n++] =
                (struct br_http_header){BR_SLICE_LIT("x-brigade-cost-usd"), br_slice_from_cstr(u)};
            h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-prompt-tokens"),
                                             br_slice_from_cstr(pt)};
            h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-completion-tokens"),
                                             br_slice_from_cstr(ct)};
        }
        if (!res->usage.reported && n < max) {
            h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-usage-estimated"),
                                             BR_SLICE_LIT("true")};
        }
    }
    return n;
}

/* SSE frames gather in c->frame until the provider says a batch is complete (on_flush) or the
 * stream ends, then leave in one write: events that arrived together leave together. */
#define FRAME_FLUSH_BYTES (256u << 10)

static int flush_frames(struct chat *c)
{
    if (c->frame.len == 0) {
        return BR_OK;
    }
    int rc = br_http_stream_write(c->req, c->frame.ptr, c->frame.len);
    br_buf_reset(&c->frame);
    return rc;
}

static int queue_sse(struct chat *c, const char *data, size_t n)
{
    if (br_buf_append(&c->frame, "data: ", 6) != BR_OK ||
        br_buf_append(&c->frame, data, n) != BR_OK ||
        br_buf_append(&c->frame, "\n\n", 2) != BR_OK) {
        return BR_ERR_NOMEM;
    }
    return c->frame.len >= FRAME_FLUSH_BYTES ? flush_frames(c) : BR_OK;
}

/* Ends a streamed answer: [DONE] (or an error event), then the trailers. */
static void finish_stream(struct chat *c, const struct br_provider_result *res, bool client_gone,
                          const char *kind)
{
    br_http_request *req = c->req;
    if (!client_gone && res->rc == BR_OK) {
        queue_sse(c, "[DONE]", 6);
    } else if (!client_gone && res->error_body.len) {
        /* Mid-stream failure: an SSE error event in OpenAI's shape, and no [DONE]. */
        queue_sse(c, res->error_body.ptr, res->error_body.len);
    }
    /* The status line already said 200; a failure shows in error_kind. */
    account(c, client_gone ? 499 : 200, res, kind);
    struct br_http_header tr[6];
    size_t nt = brigade_headers(c, res, tr, 6, true);
    /* Only the cost and token trailers; the model went out with the headers. */
    struct br_http_header *t = nt > 2 ? tr + 2 : tr;
    size_t ntr = nt > 2 ? nt - 2 : 0;
    /* The last frames, the end of the body and the trailers leave in one write. */
    struct br_buf last = c->frame;
    br_buf_init(&c->frame, 0);
    release(c);
    br_http_stream_finish(req, client_gone ? NULL : last.ptr, client_gone ? 0 : last.len, t, ntr);
    br_buf_cleanup(&last);
}

/* Ends the request given the call's result; exactly once. */
static void finish(struct chat *c, const struct br_provider_result *res, bool client_gone)
{
    br_http_request *req = c->req;
    char kind_buf[64];
    const char *kind =
        client_gone ? "client_closed" : error_kind_of(res, kind_buf, sizeof(kind_buf));
    enum chat_state prev = c->state;
    c->state = CHAT_FINISHED;
    if (!c->t_call_end) {
        c->t_call_end = br_clock_now_ns();
    }

    if (prev == CHAT_STREAMING) {
        finish_stream(c, res, client_gone, kind);
        return;
    }

    struct br_http_header h[8];
    size_t n = 0;
    h[n++] =
        (struct br_http_header){BR_SLICE_LIT("content-type"), BR_SLICE_LIT("application/json")};
    n += brigade_headers(c, res, h + n, 7,
                         res->rc == BR_OK || res->usage.prompt_tokens ||
                             res->usage.completion_tokens);
    if (client_gone) {
        account(c, 499, res, kind);
        release(c);
        br_http_respond(req, 499, h, n, BR_SLICE_LIT(""));
        return;
    }
    if (res->rc == BR_OK && c->answer) {
        c->t_first_token = br_clock_now_ns();
        account(c, 200, res, NULL);
        release(c);
        br_http_respond(req, 200, h, n, br_slice_make(c->answer, c->answer_len));
        return;
    }
    int status = res->status >= 400 ? res->status : 502;
    struct br_slice body = res->error_body;
    char retry[24];
    if (res->retry_after_ms && n < 8) {
        /* Whole seconds, rounded up, as HTTP's Retry-After wants. */
        (void)snprintf(retry, sizeof(retry), "%u", (unsigned)((res->retry_after_ms + 999) / 1000));
        h[n++] = (struct br_http_header){BR_SLICE_LIT("retry-after"), br_slice_from_cstr(retry)};
    }
    if (res->error_kind == BR_UPSTREAM_ERROR_HTTP_STATUS && (status == 401 || status == 403)) {
        /* The upstream refused the gateway's provider key. Its message may quote part of that
         * key, and it is not about the client's key: say what it is instead. */
        kind = "upstream_auth";
        char msg[400];
        (void)snprintf(
            msg, sizeof(msg),
            "The upstream provider of model '%s' refused the gateway's credentials (HTTP "
            "%d). This is a gateway configuration problem (the model's api_key), not your "
            "API key.",
            c->rm->cfg->name, status);
        json_t *e = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", msg, "type",
                              "upstream_error", "param", "code", "upstream_auth_failed");
        size_t len = 0;
        char *text = e ? br__json_dump(req->arena, e, &len) : NULL;
        json_decref(e);
        body = br_slice_make(text, text ? len : 0);
    }
    if (res->rc == BR_OK) {
        /* Success without a body: a provider bug, reported as such. */
        kind = "provider_no_body";
        body = BR_SLICE_LIT(
            "{\"error\":{\"message\":\"the provider returned no answer\","
            "\"type\":\"upstream_error\",\"param\":null,\"code\":\"empty_response\"}}");
    } else if (body.len == 0) {
        body = BR_SLICE_LIT(
            "{\"error\":{\"message\":\"upstream call failed\","
            "\"type\":\"upstream_error\",\"param\":null,\"code\":\"upstream_error\"}}");
    }
    account(c, status, res, kind);
    release(c);
    br_http_respond(req, status, h, n, body);
}

/* ------------------------------------------------------------------ provider sink */

static void sink_begin(void *user)
{
    struct chat *c = user;
    if (!c->stream || c->state != CHAT_CALLING) {
        return;
    }
    struct br_http_header h[8];
    size_t n = 0;
    h[n++] = (struct br_http_header){BR_SLICE_LIT("content-type"),
                                     BR_SLICE_LIT("text/event-stream; charset=utf-8")};
    h[n++] = (struct br_http_header){BR_SLICE_LIT("cache-control"), BR_SLICE_LIT("no-cache")};
    h[n++] = (struct br_http_header){
        BR_SLICE_LIT("trailer"),
        BR_SLICE_LIT("x-brigade-cost-usd, x-brigade-prompt-tokens, x-brigade-completion-tokens, "
                     "x-brigade-usage-estimated")};
    n += brigade_headers(c, NULL, h + n, 5, false);
    c->state = CHAT_STREAMING;
    br_http_stream_begin(c->req, 200, h, n);
}

static void sink_chunk(void *user, struct br_slice json)
{
    struct chat *c = user;
    if (c->state == CHAT_CALLING) {
        sink_begin(c);
    }
    if (c->state != CHAT_STREAMING) {
        return;
    }
    if (!c->t_first_token) {
        c->t_first_token = br_clock_now_ns();
    }
    if (queue_sse(c, json.ptr, json.len) != BR_OK) {
        flush_frames(c);
    }
}

static void sink_flush(void *user)
{
    struct chat *c = user;
    if (c->state == CHAT_STREAMING) {
        flush_frames(c);
    }
}

static void sink_body(void *user, struct br_slice json)
{
    struct chat *c = user;
    c->answer = br_arena_strndup(c->req->arena, json.ptr, json.len);
    c->answer_len = c->answer ? json.len : 0;
}

static void sink_done(void *user, const struct br_provider_result *res)
{
    struct chat *c = user;
    c->call_active = false;
    c->t_call_end = br_clock_now_ns();
    if (c->state == CHAT_FINISHED) {
        return;
    }
    if (res->rc != BR_OK) {
        br_log(BR_LOG_WARN, c->req->id,
               "event=upstream_error model=%s provider=%s status=%d kind=%s partial=%d",
               c->rm->cfg->name, c->rm->cfg->provider, res->status,
               br_upstream_error_name(res->error_kind), res->partial);
    }
    if (!c->answer && res->rc == BR_OK && !c->stream) {
        struct br_provider_result copy = *res;
        copy.rc = BR_ERR_UPSTREAM;
        copy.status = 502;
        finish(c, &copy, false);
        return;
    }
    finish(c, res, false);
}

static const struct br_provider_sink chat_sink = {
    .on_begin = sink_begin,
    .on_chunk = sink_chunk,
    .on_body = sink_body,
    .on_done = sink_done,
    .on_flush = sink_flush,
};

/* ------------------------------------------------------------------ entry points */

/* Ends a request that never reached a provider, with a log row. */
static void reject(struct chat *c, int status, const char *type, const char *code,
                   const char *param, const char *message)
{
    char kind[48];
    (void)snprintf(kind, sizeof(kind), "rejected_%d", status);
    c->state = CHAT_FINISHED;
    account(c, status, NULL, kind);
    struct br_http_header h[2];
    size_t n = 0;
    if (status == 503 || status == 429) {
        h[n++] = (struct br_http_header){BR_SLICE_LIT("retry-after"), BR_SLICE_LIT("1")};
    }
    br_http_request *req = c->req;
    release(c);
    respond_error(req, status, type, code, param, message, h, n);
}

void br__chat_handle(struct br_worker *w, br_http_request *req)
{
    struct br_gateway *g = w->g;
    struct chat *c = br_arena_calloc(req->arena, 1, sizeof(*c));
    if (!c) {
        br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL,
                              "The gateway is out of memory; retry later.");
        return;
    }
    c->kind = BR_REQ_KIND_CHAT;
    c->w = w;
    c->req = req;
    c->rt = br__worker_runtime(w);
    br__runtime_ref(c->rt);
    br_buf_init(&c->frame, 16u << 20);
    req->user = c;
    br_metrics_add(g->metrics, w->index, g->m.inflight, NULL, 1);
    const struct br_config *cfg = c->rt->cfg;

    enum br_auth_result ar = br__auth_check(cfg, req, false, &c->key_id);
    if (ar != BR_AUTH_OK) {
        c->state = CHAT_FINISHED;
        account(c, 401, NULL, "auth");
        release(c);
        br__auth_fail(req, ar, false);
        return;
    }
    if (g->store && g->log_on_full == BR_LOG_FULL_REJECT && br_store_queue_full(g->store)) {
        reject(c, 503, "server_error", "log_backpressure", NULL,
               "The gateway's request log is behind; retry shortly.");
        return;
    }

    struct br__chat_request cr;
    struct br__verr ve = {0};
    if (br__chat_request_parse(req->arena, req->body, &cr, &ve) != BR_OK) {
        c->model_requested = cr.model;
        reject(c, 400, "invalid_request_error", ve.code, ve.param, ve.msg);
        return;
    }
    c->model_requested = cr.model;
    c->stream = cr.stream;
    c->wants_usage = cr.wants_usage;

    if (br_route_plan(cfg, cr.model, cr.model_len, &c->plan) != BR_OK) {
        char *msg = br_arena_sprintf(req->arena,
                                     "The model `%.200s` does not exist or you do not have access "
                                     "to it. GET /v1/models lists the models this gateway serves.",
                                     c->model_requested);
        reject(c, 404, "invalid_request_error", "model_not_found", "model",
               msg ? msg : "model not found");
        return;
    }
    c->rm = br__runtime_model(c->rt, c->plan.steps[0].model);

    struct br_provider_call *call = &c->call;
    call->target = &c->rm->target;
    call->model_state = c->rm->state;
    call->loop = w->loop;
    call->upstream = w->upstream;
    call->arena = req->arena;
    call->request = NULL; /* built only if the provider needs a document */
    call->raw_body = req->body;
    call->stream = c->stream;
    call->client_wants_usage = c->wants_usage;
    call->request_id = req->id;
    call->sink = &chat_sink;
    call->sink_user = c;
    c->state = CHAT_CALLING;
    c->t_call_start = br_clock_now_ns();
    c->call_active = true;
    int rc = c->rm->ops->call_start(call);
    if (rc == BR_ERR_PARSE) {
        /* The provider's strict body scanner refused bytes jansson tolerated (raw NULs). */
        c->call_active = false;
        reject(c, 400, "invalid_request_error", "invalid_json", NULL,
               "We could not parse the JSON body of your request.");
        return;
    }
    if (rc != BR_OK) {
        c->call_active = false;
        br_log(BR_LOG_ERR, req->id, "event=provider_start_failed model=%s err=%s", c->rm->cfg->name,
               br_err_name(rc));
        reject(c, rc == BR_ERR_NOMEM ? 503 : 502, "upstream_error", "provider_start_failed", NULL,
               "The gateway could not start the upstream call.");
    }
}

void br__chat_abort(struct br_worker *w, br_http_request *req)
{
    (void)w;
    struct chat *c = req->user;
    if (!c || c->kind != BR_REQ_KIND_CHAT || c->state == CHAT_FINISHED) {
        return;
    }
    struct br_provider_result partial;
    memset(&partial, 0, sizeof(partial));
    partial.rc = BR_ERR_CANCELED;
    partial.status = 499;
    partial.error_kind = BR_UPSTREAM_ERROR_CANCELED;
    if (c->call_active) {
        c->call_active = false;
        c->rm->ops->call_cancel(&c->call, &partial);
        partial.rc = BR_ERR_CANCELED;
        partial.status = 499;
    }
    br_log(BR_LOG_INFO, req->id,
           "event=client_closed model=%s prompt_tokens=%lld completion_tokens=%lld estimated=%d",
           c->rm ? c->rm->cfg->name : "-", (long long)partial.usage.prompt_tokens,
           (long long)partial.usage.completion_tokens, !partial.usage.reported);
    finish(c, &partial, true);
}
