/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/chat/completions: decode and validate the OpenAI request, plan it (a catalogue model,
 * or a route decided by its policies), call the provider, and relay the answer — one JSON body,
 * or SSE events each written to the socket as it arrives. A cascade plan calls its cheap steps
 * non-streamed, judges each answer's confidence (token log-probabilities or a self-verification
 * call) and either returns it (re-chunked as SSE for a streaming client) or escalates to the next
 * step; the last step streams like any call. At the end the calls are priced from their real
 * usage (the upstream's own counts, asked for on streams too, or an estimate that is labelled as
 * one), logged with the routing decision and counted.
 *
 * Billing rules: every request to this endpoint gets one request-log row, errors included; a
 * cascade's row carries the total cost of its calls and the chain of models. A client that goes
 * away mid-answer is billed for what was produced until then (status 499).
 */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/json.h"
#include "core/log.h"
#include "cost/cost.h"
#include "route/route.h"

enum chat_state {
    CHAT_CALLING,   /* provider call running, nothing sent yet */
    CHAT_STREAMING, /* SSE headers sent */
    CHAT_FINISHED,
};

enum call_kind {
    CALL_ANSWER, /* a plan step answering the client's request */
    CALL_VERIFY, /* a cascade's self-verification of the previous answer */
};

struct chat {
    enum br_req_kind kind; /* first: req->user points here */
    struct br_worker *w;
    br_http_request *req;
    struct br_runtime *rt;             /* reference held until the request ends */
    const struct br_runtime_model *rm; /* model of the current (or last) call */
    const char *key_id;
    br_vkey *vkey;                    /* a virtual key's request, else NULL */
    struct br_keys_ticket key_ticket; /* its reservation, settled in account() */
    const char *model_requested;
    bool stream; /* the client asked for SSE */
    bool wants_usage;
    enum chat_state state;
    bool call_active;
    struct br_plan plan;
    struct br_route_req *rreq;     /* routed requests: the request's signals */
    struct br_provider_call *call; /* the current call */
    size_t step;                   /* plan step of the current answering call */
    enum call_kind call_kind;
    bool call_streams; /* the current call streams to the client */
    /* All calls so far (a cascade makes several). */
    struct br_usage usage;
    int64_t cost_nano;
    bool usage_estimated;
    uint64_t t_first_call;
    /* Cascade. */
    char chain[256];                       /* models called, "a>b" */
    char detail[192];                      /* what each judged step showed */
    double confidence;                     /* of the last judged answer; NAN when none */
    const struct br_runtime_model *judged; /* model whose answer is being verified */
    char *judged_answer;                   /* its answer (verification pending) */
    size_t judged_len;
    struct br_buf frame; /* SSE frames waiting for the batch's flush */
    struct br_buf text;  /* streamed answer text, for body logging */
    char *answer;        /* non-streamed body, copied from on_body */
    size_t answer_len;
    uint64_t t_call_start;
    uint64_t t_call_end;
    uint64_t t_first_token; /* first content written to the client */
    /* Resilience: the current call's deployment, retries and fallbacks. */
    struct br_resil_lease lease; /* valid while lease_held */
    bool lease_held;
    uint64_t tried;                    /* deployments of the current model tried (bit i) */
    struct br_resil_retry_state retry; /* retries of the current model, total wait */
    bool retry_token;                  /* holds a token of the runtime's retry budget */
    bool budget_entered;               /* counted in the retry budget's requests */
    uv_timer_t *backoff;               /* heap (outlives the arena until closed), or NULL */
    unsigned attempts;                 /* answer attempts: first, retries and fallbacks */
    const char *first_attempt;         /* deployment of the first attempt (for the chain) */
    uint64_t unavailable_until_ms;     /* every deployment unavailable: when one may be back */
    /* Overload protection (api_gate.c): the current model's in-flight slot, or a place in its
     * queue. */
    struct br__gate *slot;          /* gate of the slot held or waited for, else NULL */
    bool slot_held;                 /* a slot of `slot` is ours */
    struct br__gate_waiter *waiter; /* queued for a slot; the call starts when granted */
    size_t queued_step;             /* the plan step to start then */
    bool overloaded;                /* a model refused: in-flight limit and queue full */
};

static int start_step(struct chat *c, size_t step, enum call_kind kind);
static int start_answer(struct chat *c, size_t step);
static void unavailable(struct chat *c);
static void reject(struct chat *c, int status, const char *type, const char *code,
                   const char *param, const char *message);

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

/* Adds one finished call to the request's totals, its token and cost metrics (by the model
 * that made them) and the model's latency statistics. */
static void add_call(struct chat *c, const struct br_provider_result *res, uint64_t end_ns)
{
    struct br_gateway *g = c->w->g;
    const struct br_model_cfg *mc = c->rm->cfg;
    const struct br_usage *u = &res->usage;
    int64_t cost = br_cost_compute(&mc->price, u);
    c->usage.prompt_tokens += u->prompt_tokens;
    c->usage.completion_tokens += u->completion_tokens;
    c->usage.cached_tokens += u->cached_tokens;
    c->usage.cache_write_tokens += u->cache_write_tokens;
    c->usage.reasoning_tokens += u->reasoning_tokens;
    c->usage_estimated |= !u->reported && (u->prompt_tokens || u->completion_tokens);
    c->cost_nano += cost;
    unsigned sh = c->w->index;
    static const char *const kinds[] = {"prompt", "completion", "cached", "reasoning"};
    const int64_t counts[] = {u->prompt_tokens, u->completion_tokens, u->cached_tokens,
                              u->reasoning_tokens};
    for (size_t k = 0; k < 4; k++) {
        if (counts[k] > 0) {
            const char *l[] = {mc->name, kinds[k]};
            br_metrics_add(g->metrics, sh, g->m.tokens, l, (double)counts[k]);
        }
    }
    if (cost > 0) {
        const char *l[] = {mc->name};
        br_metrics_add(g->metrics, sh, g->m.cost, l, (double)cost / 1e9);
    }
    if (res->error_kind != BR_UPSTREAM_ERROR_NONE &&
        res->error_kind != BR_UPSTREAM_ERROR_CANCELED) {
        const char *l[] = {mc->name, br_upstream_error_name(res->error_kind)};
        br_metrics_add(g->metrics, sh, g->m.upstream_errors, l, 1);
    }
    /* Latency statistics for the latency policy: streams measure both time to first token
     * and speed; a non-streamed answer arrives whole, so it gives no time to first token, only
     * its overall speed (tokens over the whole call: a slight underestimate). */
    if (res->rc != BR_OK || !c->t_call_start) {
        return;
    }
    uint64_t first = res->t_first_token_ns ? res->t_first_token_ns : res->t_first_byte_ns;
    if (!first || first < c->t_call_start) {
        return;
    }
    double ttft_ms = (double)(first - c->t_call_start) / 1e6;
    double tps = -1;
    if (c->call && c->call->stream && u->completion_tokens > 1 && end_ns > first) {
        tps = (double)u->completion_tokens / ((double)(end_ns - first) / 1e9);
    } else if (u->completion_tokens > 0 && end_ns > c->t_call_start) {
        ttft_ms = -1;
        tps = (double)u->completion_tokens / ((double)(end_ns - c->t_call_start) / 1e9);
    } else {
        ttft_ms = -1;
    }
    br_router_observe_latency(c->rt->router, mc, ttft_ms, tps);
}

/* Copies the request's messages and the answer text into the body log (log.bodies). */
static void log_bodies(struct chat *c, int status)
{
    struct br_gateway *g = c->w->g;
    const struct br_config *cfg = c->rt->cfg;
    if (!g->store || !cfg->log_bodies || status != 200 || !c->rm) {
        return;
    }
    struct br_slice answer = br_slice_make(c->text.ptr, c->text.len);
    if (c->answer) {
        size_t n = 0;
        char *t = br__answer_text(c->req->arena, br_slice_make(c->answer, c->answer_len), &n);
        answer = br_slice_make(t, t ? n : 0);
    }
    struct br_body_row b = {
        .request_id = c->req->id,
        .ts_ms = br_clock_wall_ms(),
        .route = c->plan.route,
        .model = c->rm->cfg->name,
        .messages = br_json_obj_get(c->req->body, "messages"),
        .answer = answer,
        .status = status,
    };
    if (br_store_body(g->store, &b, cfg->log_body_max_bytes) != BR_OK) {
        br_metrics_add(g->metrics, c->w->index, g->m.log_dropped, NULL, 1);
    }
}

/* Durations of a finished request, in microseconds. */
struct timing {
    int64_t latency_us;  /* arrival to now */
    int64_t upstream_us; /* first call to the end of the last; -1 without a call */
    int64_t overhead_us; /* latency_us - upstream_us, at least 0 */
};

static struct timing timing_at(const struct chat *c, uint64_t now)
{
    struct timing t;
    t.latency_us = us_between(c->req->t_start_ns, now);
    t.upstream_us =
        c->t_first_call ? us_between(c->t_first_call, c->t_call_end ? c->t_call_end : now) : -1;
    t.overhead_us = t.upstream_us >= 0 ? t.latency_us - t.upstream_us : t.latency_us;
    if (t.overhead_us < 0) {
        t.overhead_us = 0;
    }
    return t;
}

/* The decision's reason, with the cascade's detail appended when there is one (in the request
 * arena; the bare reason if that allocation fails). */
static const char *log_reason(const struct chat *c)
{
    if (!c->detail[0]) {
        return c->plan.reason;
    }
    const char *r = br_arena_sprintf(c->req->arena, "%s; %s", c->plan.reason, c->detail);
    return r ? r : c->plan.reason;
}

/* Writes the request-log row (and the bodies when they are logged). decided: a route made a
 * decision (plan steps), whose policy, decision and reason the row records. */
static void log_request(struct chat *c, int status, const struct br_provider_result *res,
                        const char *error_kind, const struct timing *t, bool decided)
{
    struct br_gateway *g = c->w->g;
    const struct br_model_cfg *mc = c->rm ? c->rm->cfg : NULL;
    struct br_log_row row = {
        .id = c->req->id,
        .ts_ms = br_clock_wall_ms() - t->latency_us / 1000,
        .key_id = c->key_id,
        .model = mc ? mc->name : c->model_requested,
        .provider = mc ? mc->provider : NULL,
        .route = c->plan.route,
        .endpoint = "/v1/chat/completions",
        .status = status,
        .stream = c->stream,
        .prompt_tokens = c->usage.prompt_tokens,
        .completion_tokens = c->usage.completion_tokens,
        .cached_tokens = c->usage.cached_tokens,
        .reasoning_tokens = c->usage.reasoning_tokens,
        .usage_estimated = c->usage_estimated,
        .cost_nano_usd = c->cost_nano,
        .latency_us = t->latency_us,
        .ttft_us = us_between(c->req->t_start_ns, c->t_first_token),
        .upstream_latency_us = t->upstream_us,
        .overhead_us = t->overhead_us,
        .error_kind = error_kind,
        .upstream_model = res ? res->upstream_model : NULL,
        .score = c->plan.score,
        .threshold = c->plan.threshold,
        .cascade = c->chain[0] ? c->chain : NULL,
        .confidence = c->confidence,
    };
    if (decided) {
        row.policy = c->plan.policy;
        row.decision = c->plan.decision;
        row.reason = log_reason(c);
    }
    if (br_store_log(g->store, &row) != BR_OK) {
        br_metrics_add(g->metrics, c->w->index, g->m.log_dropped, NULL, 1);
    }
    log_bodies(c, status);
}

/* The request's metrics: its count by model and status, then (for a catalogue model) the
 * latency histograms. */
static void observe_request(struct chat *c, int status, const struct br_provider_result *res,
                            const struct timing *t)
{
    struct br_worker *w = c->w;
    struct br_gateway *g = w->g;
    const struct br_model_cfg *mc = c->rm ? c->rm->cfg : NULL;
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
    br_metrics_observe(g->metrics, w->index, g->m.duration, lbl_m, (double)t->latency_us / 1e6);
    br_metrics_observe(g->metrics, w->index, g->m.overhead, NULL, (double)t->overhead_us / 1e6);
    if (res && res->t_first_byte_ns && c->t_call_start) {
        br_metrics_observe(g->metrics, w->index, g->m.upstream_ttfb, lbl_m,
                           (double)(res->t_first_byte_ns - c->t_call_start) / 1e9);
    }
    if (c->t_first_token) {
        br_metrics_observe(g->metrics, w->index, g->m.ttft, lbl_m,
                           (double)(c->t_first_token - c->req->t_start_ns) / 1e9);
    }
}

/* Records the request-log row and the metrics. Call before the http request is finished. */
static void account(struct chat *c, int status, const struct br_provider_result *res,
                    const char *error_kind)
{
    struct timing t = timing_at(c, br_clock_now_ns());
    bool decided = c->plan.route != NULL && c->plan.n_steps;
    /* A virtual key's reservation ends here, on every path (answered, failed, 499). */
    br__key_settle(c->w->g, &c->key_ticket, c->cost_nano,
                   c->usage.prompt_tokens + c->usage.completion_tokens);
    if (c->w->g->store) {
        log_request(c, status, res, error_kind, &t, decided);
    }
    if (decided) {
        br_router_observe_cost(c->rt->router, c->plan.route_cfg, c->cost_nano);
    }
    observe_request(c, status, res, &t);
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

static void backoff_closed(uv_handle_t *h)
{
    br_free(h);
}

/* Gives back the model slot held, or the place in its queue. */
static void slot_end(struct chat *c)
{
    if (c->waiter) {
        br__gate_cancel(c->waiter);
        c->waiter = NULL;
    }
    if (c->slot_held) {
        br__gate_leave(c->slot);
    }
    c->slot_held = false;
    c->slot = NULL;
}

/* Ends the current deployment lease with the attempt's health. */
static void lease_end(struct chat *c, enum br_resil_health health,
                      const struct br_provider_result *res)
{
    if (!c->lease_held) {
        return;
    }
    c->lease_held = false;
    uint64_t first = res && res->t_first_byte_ns ? res->t_first_byte_ns : 0;
    struct br_resil_lb_result r = {
        .health = health,
        .ttfb_ns = first > c->t_call_start && c->t_call_start ? first - c->t_call_start : 0,
        .tokens_known = res && res->usage.reported,
        .tokens = res ? (uint64_t)(res->usage.prompt_tokens + res->usage.completion_tokens) : 0,
        .retry_after_ms = res ? res->retry_after_ms : 0,
    };
    br_resil_lb_release(c->rm->lb, &c->lease, &r, br_clock_now_ns() / 1000000);
    slot_end(c);
}

/* Everything the request holds of the resilience machinery. */
static void resil_release(struct chat *c)
{
    lease_end(c, BR_RESIL_HEALTH_NEUTRAL, NULL);
    slot_end(c);
    if (c->backoff) {
        c->backoff->data = NULL;
        uv_timer_stop(c->backoff);
        uv_close((uv_handle_t *)c->backoff, backoff_closed);
        c->backoff = NULL;
    }
    if (c->retry_token) {
        br_resil_budget_release(c->rt->retry_budget);
        c->retry_token = false;
    }
    if (c->budget_entered) {
        br_resil_budget_request_end(c->rt->retry_budget);
        c->budget_entered = false;
    }
}

static void release(struct chat *c)
{
    struct br_gateway *g = c->w->g;
    resil_release(c);
    br_metrics_add(g->metrics, c->w->index, g->m.inflight, NULL, -1);
    br_buf_cleanup(&c->frame);
    br_buf_cleanup(&c->text);
    br__runtime_unref(c->rt);
    c->rt = NULL;
}

/* A header value made only of visible ASCII (names from the config may hold anything). */
static char *header_safe(br_arena *a, const char *s)
{
    size_t n = strlen(s) > 400 ? 400 : strlen(s);
    char *out = br_arena_alloc(a, n + 1);
    if (!out) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[i] = (char)(ch < 0x20 || ch >= 0x7f ? '?' : ch);
    }
    out[n] = '\0';
    return out;
}

/* "auto; policy=classifier; model=m; score=0.731; threshold=0.500[; cascade=a>b; ...]" */
static char *route_header(struct chat *c)
{
    br_arena *a = c->req->arena;
    const struct br_plan *p = &c->plan;
    /* Numbers without printf (it costs more than a routing decision). */
    char nums[160] = "";
    size_t k = 0;
    const struct {
        const char *name;
        double v;
        bool show;
    } fields[] = {
        {"; score=", p->score, !isnan(p->score)},
        {"; threshold=", p->threshold, !isnan(p->threshold)},
        {"; confidence=", c->confidence, c->chain[0] != '\0'},
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (!fields[i].show) {
            continue;
        }
        size_t n = strlen(fields[i].name);
        memcpy(nums + k, fields[i].name, n);
        k += n;
        k += br_route_fmt3(fields[i].v, nums + k);
    }
    char *v =
        br_arena_sprintf(a, "%s; policy=%s; model=%s%s%s%s", p->route, p->policy, c->rm->cfg->name,
                         nums, c->chain[0] ? "; cascade=" : "", c->chain[0] ? c->chain : "");
    return v ? header_safe(a, v) : NULL;
}

/* Response headers naming the model, provider and, for routes, the decision and its reason. */
static size_t head_headers(struct chat *c, struct br_http_header *h, size_t max)
{
    size_t n = 0;
    if (!c->rm || max < 4) {
        return 0;
    }
    h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-model"),
                                     br_slice_from_cstr(c->rm->cfg->name)};
    h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-provider"),
                                     br_slice_from_cstr(c->rm->cfg->provider)};
    const char *attempts =
        c->attempts > 1 ? br_arena_sprintf(c->req->arena, "%u", c->attempts) : "1";
    if (attempts && n + 3 <= max) {
        h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-attempts"),
                                         br_slice_from_cstr(attempts)};
    }
    if (c->plan.route && c->plan.n_steps) {
        char *route = route_header(c);
        char *why = c->detail[0]
                        ? br_arena_sprintf(c->req->arena, "%s; %s", c->plan.reason, c->detail)
                        : (char *)c->plan.reason;
        why = why ? header_safe(c->req->arena, why) : NULL;
        if (route && why) {
            h[n++] =
                (struct br_http_header){BR_SLICE_LIT("x-brigade-route"), br_slice_from_cstr(route)};
            h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-route-reason"),
                                             br_slice_from_cstr(why)};
        }
    }
    return n;
}

/* The cost and token headers (trailers of a stream): totals over every call. */
static size_t cost_headers(struct chat *c, struct br_http_header *h, size_t max)
{
    size_t n = 0;
    br_arena *a = c->req->arena;
    if (!c->rm || max < 4) {
        return 0;
    }
    char usd[BR_COST_USD_STRLEN];
    br_cost_format_usd(c->cost_nano, usd);
    char *u = br_arena_strndup(a, usd, strlen(usd));
    char *pt = br_arena_alloc(a, BR_FMT_I64_LEN);
    char *ct = br_arena_alloc(a, BR_FMT_I64_LEN);
    if (!u || !pt || !ct) {
        return 0;
    }
    br_fmt_i64(c->usage.prompt_tokens, pt);
    br_fmt_i64(c->usage.completion_tokens, ct);
    h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-cost-usd"), br_slice_from_cstr(u)};
    h[n++] =
        (struct br_http_header){BR_SLICE_LIT("x-brigade-prompt-tokens"), br_slice_from_cstr(pt)};
    h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-completion-tokens"),
                                     br_slice_from_cstr(ct)};
    if (c->usage_estimated) {
        h[n++] = (struct br_http_header){BR_SLICE_LIT("x-brigade-usage-estimated"),
                                         BR_SLICE_LIT("true")};
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
    struct br_http_header t[6];
    /* Only the cost and token trailers; the model went out with the headers. */
    size_t ntr = cost_headers(c, t, 6);
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
    const char *kind = error_kind_of(res, kind_buf, sizeof(kind_buf));
    if (client_gone) {
        /* A client dropped for not reading (the stream buffer cap) is an abort of ours. */
        kind = br_http_stream_overflowed(req) ? "aborted_slow_client" : "client_closed";
    }
    enum chat_state prev = c->state;
    c->state = CHAT_FINISHED;
    if (!c->t_call_end) {
        c->t_call_end = br_clock_now_ns();
    }

    if (prev == CHAT_STREAMING) {
        finish_stream(c, res, client_gone, kind);
        return;
    }

    struct br_http_header h[16];
    size_t n = 0;
    h[n++] =
        (struct br_http_header){BR_SLICE_LIT("content-type"), BR_SLICE_LIT("application/json")};
    n += head_headers(c, h + n, 8);
    if (res->rc == BR_OK || c->usage.prompt_tokens || c->usage.completion_tokens) {
        n += cost_headers(c, h + n, 5);
    }
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
    if (res->retry_after_ms && n < 16) {
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

static void begin_stream(struct chat *c)
{
    struct br_http_header h[12];
    size_t n = 0;
    h[n++] = (struct br_http_header){BR_SLICE_LIT("content-type"),
                                     BR_SLICE_LIT("text/event-stream; charset=utf-8")};
    h[n++] = (struct br_http_header){BR_SLICE_LIT("cache-control"), BR_SLICE_LIT("no-cache")};
    h[n++] = (struct br_http_header){
        BR_SLICE_LIT("trailer"),
        BR_SLICE_LIT("x-brigade-cost-usd, x-brigade-prompt-tokens, x-brigade-completion-tokens, "
                     "x-brigade-usage-estimated")};
    n += head_headers(c, h + n, 8);
    c->state = CHAT_STREAMING;
    br_http_stream_begin(c->req, 200, h, n);
}

static void sink_begin(void *user)
{
    struct chat *c = user;
    if (!c->call_streams || c->state != CHAT_CALLING) {
        return;
    }
    begin_stream(c);
}

static void sink_chunk(void *user, struct br_slice json)
{
    struct chat *c = user;
    if (!c->call_streams) {
        return;
    }
    if (c->state == CHAT_CALLING) {
        sink_begin(c);
    }
    if (c->state != CHAT_STREAMING) {
        return;
    }
    if (!c->t_first_token) {
        c->t_first_token = br_clock_now_ns();
    }
    if (c->rt->cfg->log_bodies) {
        (void)br__chunk_text_append(&c->text, json); /* a body cut at its cap is still logged */
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

/* ------------------------------------------------------------------ cascade */

static void chain_add(struct chat *c, const char *model)
{
    size_t k = strlen(c->chain);
    (void)snprintf(c->chain + k, sizeof(c->chain) - k, "%s%s", k ? ">" : "", model);
}

static void detail_add(struct chat *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void detail_add(struct chat *c, const char *fmt, ...)
{
    size_t k = strlen(c->detail);
    if (k && k + 2 < sizeof(c->detail)) {
        c->detail[k++] = ';';
        c->detail[k++] = ' ';
        c->detail[k] = '\0';
    }
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(c->detail + k, sizeof(c->detail) - k, fmt, ap); /* a cut detail is fine */
    va_end(ap);
}

/* The plan step that would answer after `step`, or SIZE_MAX when step is the last. */
static size_t next_cascade_step(const struct chat *c, size_t step)
{
    if (!c->plan.cascade) {
        return SIZE_MAX;
    }
    for (size_t i = step + 1; i < c->plan.n_steps; i++) {
        if (c->plan.steps[i].kind == BR_PLAN_STEP_CASCADE) {
            return i;
        }
    }
    return SIZE_MAX;
}

static void count_cascade(struct chat *c, const char *model, const char *outcome)
{
    struct br_gateway *g = c->w->g;
    const char *l[] = {c->plan.route, model, outcome};
    br_metrics_add(g->metrics, c->w->index, g->m.cascade, l, 1);
}

static int emit_chunk(void *user, const char *json, size_t n)
{
    struct chat *c = user;
    if (c->rt->cfg->log_bodies) {
        (void)br__chunk_text_append(&c->text, br_slice_make(json, n));
    }
    return queue_sse(c, json, n);
}

/* The cheap answer is good enough: it is the client's answer (as SSE for a streaming client). */
static void accept_answer(struct chat *c, const struct br_runtime_model *rm, char *answer,
                          size_t len, const struct br_provider_result *res)
{
    count_cascade(c, rm->cfg->name, "accepted");
    c->plan.decision = "accepted";
    c->rm = rm;
    c->answer = answer;
    c->answer_len = len;
    if (!c->stream) {
        /* The gateway asked for the log-probabilities, not the client. */
        struct br_slice clean;
        struct br_slice lp = br_json_obj_get(c->req->body, "logprobs");
        if (!(lp.ptr && br_json_type_of(lp) == BR_JSON_TRUE) &&
            br__answer_drop_logprobs(c->req->arena, br_slice_make(answer, len), &clean) == BR_OK) {
            c->answer = (char *)clean.ptr;
            c->answer_len = clean.len;
        }
        finish(c, res, false);
        return;
    }
    begin_stream(c);
    c->t_first_token = br_clock_now_ns();
    int rc =
        br__answer_to_chunks(br_slice_make(answer, len), c->wants_usage, &c->usage, emit_chunk, c);
    struct br_provider_result r = *res;
    if (rc != BR_OK) {
        r.rc = rc;
        r.error_body =
            BR_SLICE_LIT("{\"error\":{\"message\":\"the answer could not be streamed\","
                         "\"type\":\"server_error\",\"param\":null,\"code\":\"rechunk_failed\"}}");
    }
    c->answer = NULL; /* streamed: the body log reads the streamed text */
    finish(c, &r, false);
}

/* The answer of cascade step c->step is not good enough (or failed): the next step answers. */
static void escalate(struct chat *c, size_t next, const struct br_provider_result *res)
{
    count_cascade(c, c->plan.steps[c->step].model->name, "escalated");
    c->plan.decision = "escalated";
    c->answer = NULL;
    c->answer_len = 0;
    c->tried = 0;
    br_resil_retry_state_next_model(&c->retry);
    int rc = start_answer(c, next);
    if (rc != BR_OK) {
        struct br_provider_result r = *res;
        r.rc = rc;
        r.status = rc == BR_ERR_NOMEM ? 503 : 502;
        r.error_body = BR_SLICE_LIT(
            "{\"error\":{\"message\":\"The gateway could not start the next cascade step.\","
            "\"type\":\"upstream_error\",\"param\":null,\"code\":\"provider_start_failed\"}}");
        finish(c, &r, false);
    }
}

/* Decides on the answer of a cascade step given its confidence. */
static void judge(struct chat *c, const struct br_runtime_model *rm, char *answer, size_t len,
                  double confidence, const char *how, const struct br_provider_result *res)
{
    double tau = c->plan.steps[c->step].threshold;
    size_t next = next_cascade_step(c, c->step);
    c->confidence = confidence;
    bool ok = !isnan(confidence) && confidence >= tau;
    detail_add(c, "%s %s %.3f %s %.3f", rm->cfg->name, how, confidence, ok ? ">=" : "<", tau);
    if (ok || next == SIZE_MAX) {
        accept_answer(c, rm, answer, len, res);
    } else {
        escalate(c, next, res);
    }
}

/* A non-final cascade step finished. */
static void step_answered(struct chat *c, const struct br_provider_result *res)
{
    const struct br_route_cascade_cfg *cc = &c->plan.route_cfg->cascade;
    size_t next = next_cascade_step(c, c->step);
    if (res->rc != BR_OK || !c->answer) {
        detail_add(c, "%s failed (%s)", c->rm->cfg->name,
                   res->rc != BR_OK ? br_upstream_error_name(res->error_kind) : "no answer");
        escalate(c, next, res);
        return;
    }
    struct br_slice ans = br_slice_make(c->answer, c->answer_len);
    if (cc->confidence == BR_CASCADE_CONFIDENCE_LOGPROBS) {
        double conf = NAN;
        if (br__answer_logprob_confidence(ans, cc->aggregate, &conf) != BR_OK) {
            detail_add(c, "%s returned no logprobs", c->rm->cfg->name);
            escalate(c, next, res);
            return;
        }
        judge(c, c->rm, c->answer, c->answer_len, conf,
              cc->aggregate == BR_CASCADE_AGGREGATE_MIN ? "min logprob" : "mean logprob", res);
        return;
    }
    if (cc->confidence == BR_CASCADE_CONFIDENCE_VERIFIER) {
        size_t alen = 0;
        char *atext = br__answer_text(c->req->arena, ans, &alen);
        double p_ok = NAN;
        if (!atext || br_router_verify(c->rt->router, c->plan.route_cfg, c->rreq->last_user,
                                       c->rreq->last_user_len, atext, alen, &p_ok) != BR_OK) {
            detail_add(c, "%s: the verifier could not judge the answer", c->rm->cfg->name);
            escalate(c, next, res);
            return;
        }
        judge(c, c->rm, c->answer, c->answer_len, p_ok, "verifier P(ok)", res);
        return;
    }
    /* Self-verification: ask the verifier (or the same model) whether the answer is right. */
    c->judged = c->rm;
    c->judged_answer = c->answer;
    c->judged_len = c->answer_len;
    c->answer = NULL;
    if (start_step(c, c->step, CALL_VERIFY) != BR_OK) {
        detail_add(c, "verification could not start");
        escalate(c, next, res);
    }
}

/* The self-verification call of a cascade step finished. */
static void verify_answered(struct chat *c, const struct br_provider_result *res)
{
    size_t next = next_cascade_step(c, c->step);
    if (res->rc != BR_OK || !c->answer) {
        detail_add(c, "verification by %s failed", c->rm->cfg->name);
        c->rm = c->judged;
        escalate(c, next, res);
        return;
    }
    double p = br__verify_p_yes(br_slice_make(c->answer, c->answer_len));
    judge(c, c->judged, c->judged_answer, c->judged_len, p, "P(yes)", res);
}

/* True when a deployment of the current model is left that this request has not tried. */
static bool untried_left(const struct chat *c)
{
    size_t n = c->rm->n_deploys;
    uint64_t all = n >= 64 ? UINT64_MAX : (UINT64_C(1) << n) - 1;
    return (c->tried & all) != all;
}

/* The first fallback step after step, or SIZE_MAX. */
static size_t next_fallback_step(const struct chat *c, size_t step)
{
    for (size_t i = step + 1; i < c->plan.n_steps; i++) {
        if (c->plan.steps[i].kind == BR_PLAN_STEP_FALLBACK) {
            return i;
        }
    }
    return SIZE_MAX;
}

/*
 * Starts the answering call of step; when every deployment of its model is unavailable
 * (breakers open, rate limits) moves on to the next fallback step. BR_ERR_BUSY when none is
 * left (c->unavailable_until_ms says when one may be back).
 */
static int start_answer(struct chat *c, size_t step)
{
    for (;;) {
        int rc = start_step(c, step, CALL_ANSWER);
        if (rc != BR_ERR_BUSY) {
            return rc;
        }
        size_t next = next_fallback_step(c, step);
        detail_add(c, "%s unavailable", c->plan.steps[step].model->name);
        if (next == SIZE_MAX) {
            return BR_ERR_BUSY;
        }
        step = next;
        c->tried = 0;
        br_resil_retry_state_next_model(&c->retry);
    }
}

static void backoff_fire(uv_timer_t *t)
{
    struct chat *c = t->data;
    uv_close((uv_handle_t *)t, backoff_closed);
    if (!c) {
        return; /* the request ended meanwhile */
    }
    c->backoff = NULL;
    int rc = start_answer(c, c->step);
    if (rc != BR_OK) {
        struct br_provider_result r;
        memset(&r, 0, sizeof(r));
        r.rc = rc;
        r.status = 503;
        r.retry_after_ms = 1000;
        r.error_body = BR_SLICE_LIT(
            "{\"error\":{\"message\":\"Every deployment of the model and its fallbacks is "
            "unavailable (failing, ejected or at its rate limit); retry later.\",\"type\":"
            "\"server_error\",\"param\":null,\"code\":\"model_unavailable\"}}");
        finish(c, &r, false);
    }
}

/* Waits delay_ms, then tries the current step again (another deployment when one is left). */
static bool schedule_retry(struct chat *c, uint64_t delay_ms)
{
    uv_timer_t *t = br_malloc(sizeof(*t));
    if (!t) {
        return false;
    }
    if (uv_timer_init(c->w->loop, t) != 0) {
        br_free(t);
        return false;
    }
    t->data = c;
    c->backoff = t;
    (void)uv_timer_start(t, backoff_fire, delay_ms, 0);
    return true;
}

/* A retry of the current model, when the policy, the wait cap and the budget allow one. */
static bool try_retry(struct chat *c, const struct br_provider_result *res)
{
    const struct br_runtime_model *rm = c->rm;
    bool elsewhere = untried_left(c);
    uint64_t delay = 0;
    struct br_resil_retry_state saved = c->retry;
    if (br_resil_retry_next(&rm->retry, &c->retry, elsewhere ? 0 : res->retry_after_ms, &c->w->rng,
                            &delay) != BR_OK) {
        return false;
    }
    if (elsewhere) {
        /* Failing over to a deployment this request has not tried: at once, and outside the
         * retry budget. The backoff and the budget protect a struggling upstream from being
         * hammered again; this retry goes to another one (breakers keep a failing one out). */
        c->retry.waited_ms = saved.waited_ms;
        br_log(BR_LOG_INFO, c->req->id, "event=retry model=%s attempt=%u delay_ms=0 failover=1",
               rm->cfg->name, c->attempts + 1);
        if (start_answer(c, c->step) == BR_OK) {
            return true;
        }
        c->retry = saved;
        return false;
    }
    if (!br_resil_budget_acquire(c->rt->retry_budget)) {
        c->retry = saved;
        detail_add(c, "retry budget exhausted");
        br_log(BR_LOG_WARN, c->req->id, "event=retry_budget_exhausted model=%s", rm->cfg->name);
        return false;
    }
    c->retry_token = true;
    if (!schedule_retry(c, delay)) {
        br_resil_budget_release(c->rt->retry_budget);
        c->retry_token = false;
        return false;
    }
    br_log(BR_LOG_INFO, c->req->id, "event=retry model=%s attempt=%u delay_ms=%llu", rm->cfg->name,
           c->attempts + 1, (unsigned long long)delay);
    return true;
}

/*
 * After a failed answer that sent nothing to the client: retry the model, or fall back to the
 * next model of the chain. True when another attempt is under way.
 */
static bool recover(struct chat *c, const struct br_provider_result *res,
                    const struct br_resil_verdict *v)
{
    if (v->action == BR_RESIL_ACTION_RETRY && try_retry(c, res)) {
        return true;
    }
    bool fall = v->action == BR_RESIL_ACTION_FALLBACK ||
                (v->action == BR_RESIL_ACTION_RETRY && v->fallback_ok);
    size_t next = fall ? next_fallback_step(c, c->step) : SIZE_MAX;
    if (next == SIZE_MAX) {
        return false;
    }
    detail_add(c, "%s failed (%s): fell back", c->rm->cfg->name,
               br_upstream_error_name(res->error_kind));
    br_log(BR_LOG_INFO, c->req->id, "event=fallback from=%s to=%s kind=%s status=%d",
           c->rm->cfg->name, c->plan.steps[next].model->name,
           br_upstream_error_name(res->error_kind), res->status);
    c->tried = 0;
    br_resil_retry_state_next_model(&c->retry);
    c->answer = NULL;
    c->answer_len = 0;
    return start_answer(c, next) == BR_OK;
}

/* Classifies the attempt that just ended and ends its lease with the verdict's health. */
static void judge_attempt(struct chat *c, const struct br_provider_result *res,
                          struct br_resil_verdict *v)
{
    struct br_resil_outcome o = {
        .error_kind = res->rc == BR_OK ? BR_UPSTREAM_ERROR_NONE : res->error_kind,
        .status = res->rc == BR_OK ? 200 : res->status,
        .context_overflow =
            res->rc != BR_OK && br_resil_is_context_overflow(res->status, res->error_body),
        .client_bytes_sent = c->state == CHAT_STREAMING,
        .retry_after_ms = res->retry_after_ms,
    };
    if (res->rc != BR_OK && res->error_kind == BR_UPSTREAM_ERROR_NONE) {
        o.error_kind = BR_UPSTREAM_ERROR_HTTP_STATUS; /* a provider's own error status */
    }
    if (res->rc == BR_ERR_CANCELED) {
        o.error_kind = BR_UPSTREAM_ERROR_CANCELED;
    }
    br_resil_classify(&c->rm->triggers, &o, v);
    if (!c->rm->cfg->breaker.enabled) {
        v->health = BR_RESIL_HEALTH_NEUTRAL; /* `breaker: off`: no ejection, no 429 cool-down */
    }
    if (v->health == BR_RESIL_HEALTH_RATE_LIMITED && c->rm->n_deploys == 1) {
        /* A 429 cools a deployment down so that its siblings take the traffic; with no
         * sibling, later requests go upstream (and a retry of this one honours Retry-After). */
        v->health = BR_RESIL_HEALTH_NEUTRAL;
    }
    if (c->rm->ops->in_process) {
        /* In-process: one deployment, and a full queue is load, not ill health. Never eject
         * it; fall back (when configured) rather than retry into the same queue. */
        v->health = BR_RESIL_HEALTH_NEUTRAL;
        if (v->action == BR_RESIL_ACTION_RETRY) {
            v->action = v->fallback_ok ? BR_RESIL_ACTION_FALLBACK : BR_RESIL_ACTION_FAIL;
        }
    }
    lease_end(c, v->health, res);
    if (c->retry_token) {
        /* The retry that held the token has ended. */
        br_resil_budget_release(c->rt->retry_budget);
        c->retry_token = false;
    }
}

static void sink_done(void *user, const struct br_provider_result *res)
{
    struct chat *c = user;
    c->call_active = false;
    c->t_call_end = br_clock_now_ns();
    if (c->state == CHAT_FINISHED) {
        return;
    }
    add_call(c, res, c->t_call_end);
    struct br_resil_verdict v;
    judge_attempt(c, res, &v);
    if (res->rc != BR_OK) {
        br_log(BR_LOG_WARN, c->req->id,
               "event=upstream_error model=%s provider=%s status=%d kind=%s partial=%d action=%s",
               c->rm->cfg->name, c->rm->cfg->provider, res->status,
               br_upstream_error_name(res->error_kind), res->partial,
               br_resil_action_name(v.action));
    }
    if (c->call_kind == CALL_VERIFY) {
        verify_answered(c, res);
        return;
    }
    if (next_cascade_step(c, c->step) != SIZE_MAX) {
        step_answered(c, res);
        return;
    }
    if (res->rc != BR_OK && recover(c, res, &v)) {
        return;
    }
    if (!c->answer && res->rc == BR_OK && !c->call_streams) {
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

/* The model slot was granted (on this loop): start the queued call. */
static void slot_granted(void *user)
{
    struct chat *c = user;
    c->waiter = NULL;
    c->slot_held = true;
    int rc = start_answer(c, c->queued_step);
    if (rc == BR_ERR_BUSY) {
        unavailable(c);
    } else if (rc != BR_OK) {
        reject(c, rc == BR_ERR_NOMEM ? 503 : 502, "upstream_error", "provider_start_failed", NULL,
               "The gateway could not start the upstream call.");
    }
}

/*
 * A slot of c->rm's in-flight limit for an answering call: BR_OK (held), BR_AGAIN (queued:
 * slot_granted starts the step later) or BR_ERR_BUSY (limit and queue full).
 */
static int take_slot(struct chat *c, size_t step)
{
    struct br__gate *g = c->rm->gate;
    if (c->slot_held && c->slot == g) {
        return BR_OK;
    }
    slot_end(c);
    int rc = br__gate_enter(g, c->w, slot_granted, c, &c->waiter);
    if (rc == BR_OK) {
        c->slot = g;
        c->slot_held = g != NULL;
    } else if (rc == BR_AGAIN) {
        c->slot = g;
        c->queued_step = step;
    } else {
        c->overloaded = true;
    }
    return rc;
}

/*
 * Leases a deployment of c->rm for the call: not one this request already tried on this model
 * while others are left. NULL when every deployment is unavailable (c->unavailable_until_ms
 * then says when one may be back).
 */
static const struct br_runtime_deploy *acquire_deployment(struct chat *c, enum call_kind kind)
{
    const struct br_runtime_model *rm = c->rm;
    uint64_t exclude = kind == CALL_ANSWER && untried_left(c) ? c->tried : 0;
    uint64_t est = c->req->body.len / 4 + 256; /* tokens, for TPM limits: prompt + answer */
    uint64_t retry_at = 0;
    if (br_resil_lb_acquire(rm->lb, exclude, est, br_clock_now_ns() / 1000000, &c->w->rng,
                            &c->lease, &retry_at) != BR_OK) {
        if (!c->unavailable_until_ms || (retry_at && retry_at < c->unavailable_until_ms)) {
            c->unavailable_until_ms = retry_at;
        }
        return NULL;
    }
    c->lease_held = true;
    if (kind == CALL_ANSWER) {
        c->tried |= UINT64_C(1) << c->lease.index;
        c->attempts++;
    }
    return &rm->deploys[c->lease.index];
}

/* Records an answering attempt in the chain ("a>b"): every cascade step, and every attempt of
 * a request that needed more than one. */
static void chain_attempt(struct chat *c, const struct br_model_cfg *mc,
                          const struct br_runtime_deploy *dep)
{
    if (c->plan.cascade) {
        chain_add(c, mc->name);
    } else if (c->attempts == 1) {
        c->first_attempt = dep->cfg->name;
    } else {
        if (c->attempts == 2) {
            chain_add(c, c->first_attempt);
        }
        chain_add(c, dep->cfg->name);
    }
}

/*
 * Starts the call of plan step `step`: its answer (streamed to a streaming client only when no
 * cascade step may follow) or, for CALL_VERIFY, the self-verification of the answer being
 * judged. BR_OK, or the provider's start error (no callback follows).
 */
static int start_step(struct chat *c, size_t step, enum call_kind kind)
{
    br_arena *a = c->req->arena;
    const struct br_route_cascade_cfg *cc = c->plan.route_cfg ? &c->plan.route_cfg->cascade : NULL;
    bool judged_later = kind == CALL_ANSWER && next_cascade_step(c, step) != SIZE_MAX;
    const struct br_model_cfg *mc = c->plan.steps[step].model;
    if (kind == CALL_VERIFY && cc->verifier) {
        mc = cc->verifier;
    }
    struct br_provider_call *call = br_arena_calloc(a, 1, sizeof(*call));
    if (!call) {
        return BR_ERR_NOMEM;
    }
    c->rm = br__runtime_model(c->rt, mc);
    if (kind == CALL_ANSWER) {
        int grc = take_slot(c, step);
        if (grc != BR_OK) {
            return grc == BR_AGAIN ? BR_OK : grc; /* queued: the call starts when granted */
        }
    }
    const struct br_runtime_deploy *dep = acquire_deployment(c, kind);
    if (!dep) {
        return BR_ERR_BUSY;
    }
    c->step = step;
    c->call_kind = kind;
    c->call = call;
    c->call_streams = c->stream && !judged_later && kind == CALL_ANSWER;
    bool logprobs = cc && cc->request_logprobs && strcmp(mc->provider, "openai") == 0;
    struct br_slice body = c->req->body;
    int rc = BR_OK;
    if (kind == CALL_VERIFY) {
        rc = br__verify_body(a, c->rreq->last_user, c->rreq->last_user_len,
                             br_slice_make(c->judged_answer, c->judged_len), cc->verify_max_tokens,
                             logprobs, &body);
    } else if (judged_later && logprobs && cc->confidence == BR_CASCADE_CONFIDENCE_LOGPROBS) {
        rc = br__body_with_logprobs(a, c->req->body, &body);
    }
    if (rc != BR_OK) {
        return rc;
    }
    if (kind == CALL_ANSWER) {
        chain_attempt(c, mc, dep);
    }
    call->target = &dep->target;
    call->model_state = dep->state;
    call->loop = c->w->loop;
    call->upstream = c->w->upstream;
    call->arena = a;
    call->request = NULL; /* built only if the provider needs a document */
    call->raw_body = body;
    call->stream = c->call_streams;
    call->client_wants_usage = c->call_streams && c->wants_usage;
    call->request_id = c->req->id;
    call->variant = kind == CALL_VERIFY ? NULL : c->plan.steps[step].variant;
    call->sink = &chat_sink;
    call->sink_user = c;
    c->state = CHAT_CALLING;
    c->t_call_start = br_clock_now_ns();
    if (!c->t_first_call) {
        c->t_first_call = c->t_call_start;
    }
    c->call_active = true;
    rc = c->rm->ops->call_start(call);
    if (rc != BR_OK) {
        c->call_active = false;
    }
    return rc;
}

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

/* True when no deployment of rm is ejected: only rate limits (its own or the upstream's 429
 * cool-down) hold it back. */
static bool only_rate_limited(const struct br_runtime_model *rm)
{
    uint64_t now = br_clock_now_ns() / 1000000;
    for (size_t i = 0; i < rm->n_deploys; i++) {
        struct br_resil_deployment_info d;
        if (br_resil_lb_info(rm->lb, i, now, &d) != BR_OK ||
            d.breaker.state != BR_RESIL_BREAKER_STATE_CLOSED) {
            return false;
        }
    }
    return true;
}

/*
 * Nothing to call: every deployment of the model and of its fallbacks is ejected or at a rate
 * limit. Answered at once with Retry-After: 429 when rate limits alone are the reason, else 503.
 */
static void unavailable(struct chat *c)
{
    br_http_request *req = c->req;
    uint64_t now = br_clock_now_ns() / 1000000;
    uint64_t wait_s =
        c->unavailable_until_ms > now ? (c->unavailable_until_ms - now + 999) / 1000 : 1;
    char *ra = br_arena_sprintf(req->arena, "%llu", (unsigned long long)wait_s);
    struct br_http_header h[] = {{BR_SLICE_LIT("retry-after"), br_slice_from_cstr(ra)}};
    bool over = c->overloaded;
    bool rate = !over && only_rate_limited(br__runtime_model(c->rt, c->plan.steps[0].model));
    int status = rate ? 429 : 503;
    const char *code = rate ? "rate_limit_exceeded" : "model_unavailable";
    const char *msg = rate ? "Every deployment of the model is at its rate limit (or cooling down "
                             "after the upstream's 429). Retry after the time in Retry-After."
                           : "Every deployment of the model (and of its fallbacks) is unavailable: "
                             "failing and ejected, or at its rate limit. Retry after the time in "
                             "Retry-After.";
    if (over) {
        code = "upstream_overloaded";
        msg = "The model (and its fallbacks) has as many requests in flight and queued as it is "
              "configured to take (max_in_flight, queue). Retry after the time in Retry-After.";
    }
    c->state = CHAT_FINISHED;
    account(c, status, NULL, rate ? "rate_limited" : code);
    release(c);
    respond_error(req, status, rate ? "rate_limit_error" : "server_error", code, "model", msg, h,
                  ra ? 1 : 0);
}

/* Ends a request that a virtual key may not start (model, RPM, TPM, budget), with a log row. */
static void key_denied(struct chat *c, const struct br__key_deny *d)
{
    c->state = CHAT_FINISHED;
    account(c, d->status, NULL, d->code);
    struct br_http_header h[1];
    size_t n = 0;
    if (d->retry_after[0]) {
        h[n++] = (struct br_http_header){BR_SLICE_LIT("retry-after"),
                                         br_slice_from_cstr(d->retry_after)};
    }
    br_http_request *req = c->req;
    release(c);
    respond_error(req, d->status, d->status == 429 ? "rate_limit_error" : "invalid_request_error",
                  d->code, d->param, d->msg, h, n);
}

/* Reads the routing signals and hints (headers win over metadata) and decides the route. */
static int plan_route(struct chat *c, const struct br_route_cfg *route)
{
    br_http_request *req = c->req;
    char why[320];
    c->plan.route = route->name; /* logged with the row even when the request is refused */
    c->rreq = br_arena_alloc(req->arena, sizeof(*c->rreq));
    if (!c->rreq) {
        reject(c, 503, "server_error", "out_of_memory", NULL, "out of memory");
        return BR_ERR_NOMEM;
    }
    int rc = br_route_req_parse(req->arena, req->body, c->rreq, why, sizeof(why));
    if (rc == BR_ERR_NOMEM) {
        reject(c, 503, "server_error", "out_of_memory", NULL, "out of memory");
        return rc;
    }
    if (rc != BR_OK) {
        reject(c, 400, "invalid_request_error", "invalid_hint", "metadata", why);
        return rc;
    }
    for (int k = BR_ROUTE_HINT_MAX_LATENCY_MS; k <= BR_ROUTE_HINT_QUALITY; k++) {
        const struct br_slice *v =
            br_http_request_header(req, br_route_hint_name((enum br_route_hint_kind)k));
        if (v && br_route_hint_set(&c->rreq->hints, (enum br_route_hint_kind)k, *v, why,
                                   sizeof(why)) != BR_OK) {
            reject(c, 400, "invalid_request_error", "invalid_hint", NULL, why);
            return BR_ERR_INVAL;
        }
    }
    struct br_route_error re;
    rc = br_route_plan(c->rt->router, route, c->rreq, &c->w->rng, &c->plan, &re);
    if (rc != BR_OK) {
        reject(c, 400, "invalid_request_error", re.code, re.param, re.msg);
        return rc;
    }
    /* The decision is counted once, whatever happens to the call. */
    struct br_gateway *g = c->w->g;
    const char *l[] = {route->name, c->plan.steps[0].model->name, c->plan.policy};
    br_metrics_add(g->metrics, c->w->index, g->m.route_decisions, l, 1);
    if (strcmp(c->plan.policy, "classifier") == 0 && !isnan(c->plan.score)) {
        const char *lr[] = {route->name};
        br_metrics_observe(g->metrics, c->w->index, g->m.route_score, lr, c->plan.score);
    }
    br_router_count_decision(c->rt->router, route, c->plan.chosen);
    return BR_OK;
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
    br_buf_init(&c->text, c->rt->cfg->log_body_max_bytes);
    c->confidence = NAN;
    c->plan.score = NAN;
    c->plan.threshold = NAN;
    req->user = c;
    br_metrics_add(g->metrics, w->index, g->m.inflight, NULL, 1);
    const struct br_config *cfg = c->rt->cfg;

    enum br_auth_result ar = br__auth_client(g, cfg, req, &c->key_id, &c->vkey);
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

    const struct br_route_cfg *route = br_config_route_find(cfg, cr.model, cr.model_len);
    if (route) {
        if (plan_route(c, route) != BR_OK) {
            return;
        }
    } else if (br_route_plan_direct(cfg, cr.model, cr.model_len, &c->plan) != BR_OK) {
        char *msg = br_arena_sprintf(req->arena,
                                     "The model `%.200s` does not exist or you do not have access "
                                     "to it. GET /v1/models lists the models and routes this "
                                     "gateway serves.",
                                     c->model_requested);
        reject(c, 404, "invalid_request_error", "model_not_found", "model",
               msg ? msg : "model not found");
        return;
    }
    const char *variant = c->plan.steps[0].variant;
    if (variant && !br__variant_exists(br__runtime_model(c->rt, c->plan.steps[0].model), variant,
                                       strlen(variant))) {
        char *msg = br_arena_sprintf(req->arena,
                                     "The model `%.200s` does not exist: `%s` has no adapter "
                                     "called `%s`. GET /admin/models/%s/adapters lists them.",
                                     c->model_requested, c->plan.steps[0].model->name,
                                     c->plan.steps[0].variant, c->plan.steps[0].model->name);
        reject(c, 404, "invalid_request_error", "model_not_found", "model",
               msg ? msg : "model not found");
        return;
    }

    struct br__key_deny kd;
    if (c->vkey && br__key_admit_chat(c->vkey, c->model_requested, &c->plan, c->rreq, req->body,
                                      &c->key_ticket, &kd) != BR_OK) {
        key_denied(c, &kd);
        return;
    }
    br_resil_budget_request_begin(c->rt->retry_budget);
    c->budget_entered = true;
    int rc = start_answer(c, 0);
    if (rc == BR_ERR_BUSY) {
        unavailable(c);
        return;
    }
    if (rc == BR_ERR_PARSE) {
        /* The provider's strict body scanner refused bytes jansson tolerated (raw NULs). */
        reject(c, 400, "invalid_request_error", "invalid_json", NULL,
               "We could not parse the JSON body of your request.");
        return;
    }
    if (rc != BR_OK) {
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
        c->rm->ops->call_cancel(c->call, &partial);
        partial.rc = BR_ERR_CANCELED;
        partial.status = 499;
        c->t_call_end = br_clock_now_ns();
        add_call(c, &partial, c->t_call_end);
    }
    br_log(BR_LOG_INFO, req->id,
           "event=%s model=%s prompt_tokens=%lld completion_tokens=%lld estimated=%d",
           br_http_stream_overflowed(req) ? "slow_client" : "client_closed",
           c->rm ? c->rm->cfg->name : "-", (long long)partial.usage.prompt_tokens,
           (long long)partial.usage.completion_tokens, !partial.usage.reported);
    finish(c, &partial, true);
}
