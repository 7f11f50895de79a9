/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/completions, OpenAI's legacy text completion, for the catalogue's local models
 * (what base models such as stories260K need: {"model", "prompt": "Once upon a time",
 * "max_tokens", "temperature", "stream", ...} continues the text). The body goes to the local
 * provider as it is: a request with "prompt" and no "messages" is generated from the raw
 * prompt and answered with text_completion objects (streamed as SSE events, then
 * "data: [DONE]"). Other providers, and routes, are refused with a 400: their upstreams are
 * reached through /v1/chat/completions.
 *
 * Every request that reached a model is written to the request log (endpoint
 * "/v1/completions") with its tokens and its cost at the model's price; a non-streamed answer
 * carries x-brigade-model, x-brigade-provider and x-brigade-cost-usd. (Metrics and routing
 * statistics are the chat pipeline's; they do not count these requests.)
 *
 * Ownership: the per-request state lives in the request arena; it holds a runtime reference
 * until the request ends (answered, or aborted by the client).
 */
#include <math.h>
#include <string.h>

#include "api/api_int.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "cost/cost.h"
#include "store/store.h"

struct completion {
    enum br_req_kind kind; /* first: req->user points here */
    struct br_worker *w;
    br_http_request *req;
    struct br_runtime *rt;
    const struct br_model_cfg *mc; /* the model called */
    const char *variant;           /* "MODEL:ADAPTER": the adapter (arena), else NULL */
    const char *key_id;
    br_vkey *vkey;                    /* a virtual key's request, else NULL */
    struct br_keys_ticket key_ticket; /* its reservation, settled in log_request */
    uint64_t t_first_token_ns;
    char cost[BR_COST_USD_STRLEN];
    const struct br_provider_ops *ops;
    struct br_provider_call call;
    struct br_slice body; /* non-streamed answer (arena copy) */
    bool active;          /* the provider call runs */
    bool begun;           /* the stream's head was sent */
    /* The model's max_in_flight / queue (api_gate.c), as for chat. */
    struct br__gate *gate;          /* the model's gate, NULL when unlimited */
    bool slot_held;                 /* a slot of gate is ours */
    struct br__gate_waiter *waiter; /* queued; the call starts when granted */
};

/* One request-log row for a request that reached the model; the cost goes into c->cost. */
static void log_request(struct completion *c, int status, const struct br_provider_result *res,
                        const char *error_kind)
{
    int64_t cost = br_cost_compute(&c->mc->price, &res->usage);
    br_cost_format_usd(cost, c->cost);
    br__key_settle(c->w->g, &c->key_ticket, cost,
                   res->usage.prompt_tokens + res->usage.completion_tokens);
    br_store *store = c->w->g->store;
    if (!store) {
        return;
    }
    uint64_t now = br_clock_now_ns();
    uint64_t start = c->req->t_start_ns;
    int64_t latency_us = now > start ? (int64_t)((now - start) / 1000) : 0;
    uint64_t first = res->t_first_token_ns;
    struct br_log_row row = {
        .id = c->req->id,
        .ts_ms = br_clock_wall_ms() - latency_us / 1000,
        .key_id = c->key_id,
        .model = c->mc->name,
        .provider = c->mc->provider,
        .endpoint = "/v1/completions",
        .status = status,
        .stream = c->call.stream,
        .prompt_tokens = res->usage.prompt_tokens,
        .completion_tokens = res->usage.completion_tokens,
        .usage_estimated = !res->usage.reported,
        .cost_nano_usd = cost,
        .latency_us = latency_us,
        .ttft_us = first > start ? (int64_t)((first - start) / 1000) : 0,
        .upstream_latency_us = latency_us,
        .error_kind = error_kind,
        .upstream_model = res->upstream_model,
        .score = NAN,
        .threshold = NAN,
        .confidence = NAN,
    };
    (void)br_store_log(store, &row);
}

static void release(struct completion *c)
{
    if (c->waiter) {
        br__gate_cancel(c->waiter);
        c->waiter = NULL;
    }
    if (c->slot_held) {
        br__gate_leave(c->gate);
        c->slot_held = false;
    }
    c->req->user = NULL;
    br__runtime_unref(c->rt);
    c->rt = NULL;
}

/* Answers an error without a call: the state is released first (req is gone after). */
static void fail(struct completion *c, int status, const char *code, const char *param,
                 const char *message)
{
    br_http_request *req = c->req;
    release(c);
    br_http_respond_error(req, status, "invalid_request_error", code, param, message);
}

static void on_begin(void *user)
{
    struct completion *c = user;
    if (!c->call.stream) {
        return;
    }
    struct br_http_header h[2] = {
        {BR_SLICE_LIT("content-type"), BR_SLICE_LIT("text/event-stream")},
        {BR_SLICE_LIT("cache-control"), BR_SLICE_LIT("no-cache")},
    };
    c->begun = br_http_stream_begin(c->req, 200, h, 2) == BR_OK;
}

static void write_event(struct completion *c, struct br_slice json)
{
    struct br_buf b;
    br_buf_init(&b, json.len + 16);
    int r = br_buf_append_cstr(&b, "data: ");
    r = r == BR_OK ? br_buf_append(&b, json.ptr, json.len) : r;
    r = r == BR_OK ? br_buf_append_cstr(&b, "\n\n") : r;
    if (r == BR_OK && c->begun) {
        (void)br_http_stream_write(c->req, b.ptr, b.len);
    }
    br_buf_cleanup(&b);
}

static void on_chunk(void *user, struct br_slice json)
{
    write_event(user, json);
}

static void on_body(void *user, struct br_slice json)
{
    struct completion *c = user;
    char *copy = br_arena_alloc(c->req->arena, json.len + 1);
    if (copy) {
        memcpy(copy, json.ptr, json.len);
        copy[json.len] = '\0';
        c->body = br_slice_make(copy, json.len);
    }
}

static void on_done(void *user, const struct br_provider_result *res)
{
    struct completion *c = user;
    br_http_request *req = c->req;
    c->active = false;
    char kind[48];
    (void)snprintf(kind, sizeof(kind), "provider_error_%d", res->status);
    log_request(c, res->rc == BR_OK ? 200 : res->status, res, res->rc == BR_OK ? NULL : kind);
    release(c);
    if (c->begun) {
        if (res->rc != BR_OK && res->error_body.len) {
            write_event(c, res->error_body);
        }
        static const char done[] = "data: [DONE]\n\n";
        (void)br_http_stream_finish(req, done, sizeof(done) - 1, NULL, 0);
        return;
    }
    struct br_http_header h[2] = {
        {BR_SLICE_LIT("content-type"), BR_SLICE_LIT("application/json")},
        {BR_SLICE_LIT("retry-after"), BR_SLICE_LIT("1")},
    };
    if (res->rc == BR_OK && c->body.len) {
        struct br_http_header ok[4] = {
            h[0],
            {BR_SLICE_LIT("x-brigade-model"), br_slice_from_cstr(c->mc->name)},
            {BR_SLICE_LIT("x-brigade-provider"), BR_SLICE_LIT("local")},
            {BR_SLICE_LIT("x-brigade-cost-usd"), br_slice_from_cstr(c->cost)},
        };
        (void)br_http_respond(req, 200, ok, 4, c->body);
        return;
    }
    int status = res->status >= 400 ? res->status : 502;
    if (!res->error_body.len) {
        (void)br_http_respond_error(req, status, "server_error", "local_error", NULL,
                                    "the local model failed to answer");
        return;
    }
    (void)br_http_respond(req, status, h, status == 503 ? 2 : 1, res->error_body);
}

static const struct br_provider_sink sink = {
    .on_begin = on_begin,
    .on_chunk = on_chunk,
    .on_body = on_body,
    .on_done = on_done,
    .on_flush = NULL,
};

/* The catalogue's local model named by the body; responds and returns NULL otherwise. */
static const struct br_runtime_model *find_model(struct completion *c, const json_t *body)
{
    const json_t *model = json_object_get(body, "model");
    if (!json_is_string(model)) {
        fail(c, 400, "missing_required_parameter", "model",
             "model: a local model's name is required");
        return NULL;
    }
    const char *variant = NULL;
    size_t variant_len = 0;
    const struct br_model_cfg *mc = br_config_model_find_variant(
        c->rt->cfg, json_string_value(model), json_string_length(model), &variant, &variant_len);
    if (!mc) {
        fail(c, 404, "model_not_found", "model", "model: no such model in the catalogue");
        return NULL;
    }
    const struct br_runtime_model *rm = br__runtime_model(c->rt, mc);
    if (variant) {
        c->variant = br_arena_strndup(c->req->arena, variant, variant_len);
        if (!c->variant || !br__variant_exists(rm, variant, variant_len)) {
            fail(c, 404, "model_not_found", "model",
                 "model: no such model in the catalogue, nor an adapter of one (GET "
                 "/admin/models/MODEL/adapters lists a local model's adapters)");
            return NULL;
        }
    }
    if (strcmp(mc->provider, "local") != 0) {
        fail(c, 400, "unsupported_model", "model",
             "/v1/completions serves the catalogue's local models (provider: "
             "local); use /v1/chat/completions for this model");
        return NULL;
    }
    if (!json_object_get(body, "prompt")) {
        fail(c, 400, "missing_required_parameter", "prompt",
             "prompt: the text to continue is required");
        return NULL;
    }
    c->mc = mc;
    return rm;
}

/* The virtual key's admission check (responds and returns an error when refused). */
static int admit(struct completion *c, const json_t *body)
{
    const json_t *prompt = json_object_get(body, "prompt");
    int64_t prompt_tokens = 0;
    if (json_is_string(prompt)) {
        prompt_tokens = br_tokens_estimate(json_string_value(prompt), json_string_length(prompt));
    } else {
        size_t n = 0;
        char *text = prompt ? br__json_dump(c->req->arena, prompt, &n) : NULL;
        prompt_tokens = text ? br_tokens_estimate(text, n) : 0;
    }
    const json_t *mt = json_object_get(body, "max_tokens");
    int64_t max_tokens = json_is_integer(mt) ? (int64_t)json_integer_value(mt) : -1;
    const json_t *model = json_object_get(body, "model");
    const struct br_model_cfg *models[1] = {c->mc};
    struct br__key_deny d;
    int rc = br__key_admit(c->vkey, json_string_value(model), models, 1, prompt_tokens, max_tokens,
                           &c->key_ticket, &d);
    if (rc == BR_OK) {
        return BR_OK;
    }
    struct br_http_header h[2] = {
        {BR_SLICE_LIT("content-type"), BR_SLICE_LIT("application/json")},
        {BR_SLICE_LIT("retry-after"), br_slice_from_cstr(d.retry_after)},
    };
    json_t *e = json_pack("{s:{s:s, s:s, s:s?, s:s}}", "error", "message", d.msg, "type",
                          d.status == 429 ? "rate_limit_error" : "invalid_request_error", "param",
                          d.param, "code", d.code);
    size_t len = 0;
    char *text = e ? br__json_dump(c->req->arena, e, &len) : NULL;
    json_decref(e);
    br_http_request *req = c->req;
    release(c);
    if (!text) {
        br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL, "out of memory");
        return BR_ERR_NOMEM;
    }
    br_http_respond(req, d.status, h, d.retry_after[0] ? 2 : 1, br_slice_make(text, len));
    return rc;
}

/* Starts the provider call (the model slot, if any, is held). */
static void launch(struct completion *c)
{
    br_http_request *req = c->req;
    c->active = true;
    int rc = c->ops->call_start(&c->call);
    if (rc != BR_OK) {
        c->active = false;
        br__key_settle(c->w->g, &c->key_ticket, 0, 0);
        release(c);
        br_http_respond_error(req, 500, "server_error", "local_error", NULL,
                              "the local model could not start the request");
    }
}

/* The model slot was granted (on this loop): start the queued call. */
static void slot_granted(void *user)
{
    struct completion *c = user;
    c->waiter = NULL;
    c->slot_held = true;
    launch(c);
}

static void start(struct br_worker *w, struct completion *c)
{
    br_http_request *req = c->req;
    json_error_t jerr;
    json_t *body = json_loadb(req->body.ptr, req->body.len, 0, &jerr);
    if (!json_is_object(body)) {
        json_decref(body);
        fail(c, 400, "invalid_json", NULL, "the request body is not a JSON object");
        return;
    }
    const struct br_runtime_model *rm = find_model(c, body);
    if (!rm) {
        json_decref(body);
        return;
    }
    if (c->vkey && admit(c, body) != BR_OK) {
        json_decref(body);
        return;
    }
    struct br_provider_call *call = &c->call;
    call->target = &rm->target;
    call->model_state = rm->state;
    call->loop = w->loop;
    call->upstream = w->upstream;
    call->arena = req->arena;
    call->request = NULL;
    call->raw_body = req->body;
    call->stream = json_is_true(json_object_get(body, "stream"));
    call->client_wants_usage =
        call->stream &&
        json_is_true(json_object_get(json_object_get(body, "stream_options"), "include_usage"));
    call->request_id = req->id;
    call->variant = c->variant;
    call->sink = &sink;
    call->sink_user = c;
    json_decref(body);
    c->ops = rm->ops;
    c->gate = rm->gate;
    int rc = br__gate_enter(rm->gate, w, slot_granted, c, &c->waiter);
    if (rc == BR_AGAIN) {
        return; /* queued: slot_granted launches the call */
    }
    if (rc != BR_OK) {
        br__key_settle(w->g, &c->key_ticket, 0, 0);
        release(c);
        br_http_respond_error(req, 503, "server_error", "upstream_overloaded", "model",
                              "The model has as many requests in flight and queued as it is "
                              "configured to take (max_in_flight, queue). Retry after the time "
                              "in Retry-After.");
        return;
    }
    c->slot_held = rm->gate != NULL;
    launch(c);
}

void br__completions_handle(struct br_worker *w, br_http_request *req)
{
    struct completion *c = br_arena_calloc(req->arena, 1, sizeof(*c));
    if (!c) {
        br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL,
                              "The gateway is out of memory; retry later.");
        return;
    }
    c->kind = BR_REQ_KIND_COMPLETION;
    c->w = w;
    c->req = req;
    c->rt = br__worker_runtime(w);
    br__runtime_ref(c->rt);
    req->user = c;
    enum br_auth_result ar = br__auth_client(w->g, c->rt->cfg, req, &c->key_id, &c->vkey);
    if (ar != BR_AUTH_OK) {
        release(c);
        br__auth_fail(req, ar, false);
        return;
    }
    start(w, c);
}

void br__completions_abort(br_http_request *req)
{
    struct completion *c = req->user;
    if (!c || c->kind != BR_REQ_KIND_COMPLETION) {
        return;
    }
    if (c->active) {
        struct br_provider_result partial;
        c->active = false;
        c->ops->call_cancel(&c->call, &partial);
        log_request(c, 499, &partial, "client_closed");
    }
    release(c);
    /* The request still has to be finished (the bytes go nowhere). */
    if (c->begun) {
        (void)br_http_stream_end(req, NULL, 0);
    } else {
        (void)br_http_respond(req, 499, NULL, 0, BR_SLICE_LIT(""));
    }
}
