/* SPDX-License-Identifier: MIT */
/*
 * The anthropic provider: OpenAI chat.completions in, Anthropic Messages API upstream, OpenAI
 * out. This file is the network side: it builds the POST to <base_url>/messages with the
 * x-api-key and anthropic-version headers, feeds streamed answers through the SSE parser into
 * the event translator (anthropic_stream.c), translates whole answers and error bodies
 * (anthropic_translate.c), and turns every way a call can end into one br_provider_result.
 *
 * A request the Messages API cannot express (n > 1, logprobs, an unsupported content part ...)
 * is answered with a 400 in OpenAI's shape without calling upstream; the answer is delivered
 * from a zero-delay uv timer, because sink callbacks never run inside call_start.
 *
 * The sink's on_begin runs just before the first chunk, not when the 200 arrives: a stream
 * whose first event is an `error` (overloaded, rate limited) can then still be reported with
 * its real status (529, 429) instead of a 200 followed by an error event.
 *
 * Call state lives in the request arena (like the openai provider); an arena cleanup cancels
 * the upstream call and frees the buffers if the request dies first.
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "upstream/provider.h"
#include "upstream/providers/anthropic_int.h"
#include "upstream/providers/providers_int.h"
#include "upstream/sse.h"

#define SUCCESS_BODY_MAX ((size_t)64 << 20)
#define ERROR_BODY_MAX   ((size_t)64 << 10)
#define SSE_EVENT_MAX    ((size_t)4 << 20)

enum an_mode {
    MODE_NONE,  /* no response head yet */
    MODE_ERROR, /* non-2xx: collect the body for the error */
    MODE_BODY,  /* 2xx JSON: collect, translate, deliver whole */
    MODE_SSE,   /* 2xx event stream: translate event by event */
};

struct an_call {
    struct br_provider_call *call;
    br_upstream_call *up; /* NULL once the upstream call ended or was canceled */
    uv_timer_t *defer;    /* heap: delivers a translation error; NULL when unused/closed */
    enum an_mode mode;
    int status;    /* upstream HTTP status */
    bool begun;    /* sink->on_begin ran */
    bool finished; /* sink->on_done ran */
    bool canceled;
    uint64_t t_first_byte_ns;
    uint32_t retry_after_ms;
    int64_t created;          /* Unix seconds for the OpenAI objects */
    struct br_buf buf;        /* MODE_ERROR / MODE_BODY bytes */
    struct br_sse_parser sse; /* MODE_SSE */
    struct br__anthropic_stream st;
    int st_rc;                         /* first error the translator returned */
    struct br_usage body_usage;        /* MODE_BODY: from the translated answer */
    const char *body_model;            /* MODE_BODY: arena copy */
    const char *body_finish;           /* MODE_BODY: static string */
    struct br_provider_result pending; /* the deferred 400 */
};

static const char *target_model(const struct br_provider_target *t)
{
    return t->upstream_model ? t->upstream_model : (t->name ? t->name : "");
}

static void free_timer(uv_handle_t *h)
{
    br_free(h);
}

static void close_defer(struct an_call *ac)
{
    if (ac->defer) {
        uv_timer_stop(ac->defer);
        ac->defer->data = NULL;
        uv_close((uv_handle_t *)ac->defer, free_timer);
        ac->defer = NULL;
    }
}

static void an_cleanup(void *data)
{
    struct an_call *ac = data;
    if (ac->up) {
        br_upstream_call_cancel(ac->up);
        ac->up = NULL;
    }
    close_defer(ac);
    br_buf_cleanup(&ac->buf);
    br_sse_parser_cleanup(&ac->sse);
    br__anthropic_stream_cleanup(&ac->st);
}

static void begin(struct an_call *ac)
{
    if (!ac->begun) {
        ac->begun = true;
        if (ac->call->sink->on_begin) {
            ac->call->sink->on_begin(ac->call->sink_user);
        }
    }
}

/* Usage and the other shared fields of every result. */
static void fill_common(struct an_call *ac, struct br_provider_result *res, bool billed)
{
    br_arena *a = ac->call->arena;
    const struct br__anthropic_stream *st = &ac->st;
    memset(&res->usage, 0, sizeof(res->usage));
    if (ac->mode == MODE_BODY && ac->body_model) {
        res->usage = ac->body_usage;
        res->upstream_model = ac->body_model;
        res->finish_reason = ac->body_finish;
    } else if (st->started) {
        res->usage = st->usage;
        res->usage.completion_tokens = br__anthropic_stream_output_tokens(st);
        res->usage.reported = st->saw_output_usage && st->usage_parts[0] >= 0;
        res->upstream_model = br_arena_strndup(a, st->model, strlen(st->model));
        res->finish_reason = st->finish_reason;
    }
    if (billed && !res->usage.reported && res->usage.prompt_tokens == 0) {
        /* No message_start (or no usage in the body): the prompt is estimated. */
        res->usage.prompt_tokens = br_tokens_estimate_chat(br_provider_call_request(ac->call));
    }
    res->t_first_byte_ns = ac->t_first_byte_ns;
    res->t_first_token_ns = st->t_first_token_ns;
    res->retry_after_ms = ac->retry_after_ms;
}

/* Hands the result to the sink. The caller must not touch ac afterwards. */
static void deliver(struct an_call *ac, struct br_provider_result *res)
{
    ac->finished = true;
    ac->call->sink->on_done(ac->call->sink_user, res);
}

static void abort_upstream(struct an_call *ac)
{
    if (ac->up) {
        br_upstream_call_cancel(ac->up);
        ac->up = NULL;
    }
}

/* An `error` event in the stream: its own status and an OpenAI-shaped body. */
static void stream_error_event(struct an_call *ac, struct br_provider_result *res)
{
    br_arena *a = ac->call->arena;
    const struct br__anthropic_error_kind *k = br__anthropic_error_lookup(ac->st.error_type);
    struct br_buf b;
    br_buf_init(&b, ERROR_BODY_MAX);
    int rc = br__anthropic_error_json(&b, ac->st.error_message,
                                      k->anthropic_type ? k->openai_type : ac->st.error_type, NULL,
                                      k->code);
    char *copy = rc == BR_OK ? br_arena_strndup(a, b.ptr, b.len) : NULL;
    br_buf_cleanup(&b);
    if (!copy) {
        br__provider_fail(a, BR_ERR_NOMEM, 503, BR_UPSTREAM_ERROR_OTHER, "out of memory",
                          "server_error", NULL, res);
        return;
    }
    res->rc = BR_ERR_UPSTREAM;
    res->status = k->status;
    res->error_kind = BR_UPSTREAM_ERROR_OTHER;
    res->error_body =
        br__provider_redact(a, br_slice_make(copy, strlen(copy)), ac->call->target->api_key);
}

/* The result for a translator / parser failure code. */
static void stream_failed(struct an_call *ac, int rc, struct br_provider_result *res)
{
    fill_common(ac, res, true);
    if (rc == BR_ERR_UPSTREAM) {
        stream_error_event(ac, res);
    } else if (rc == BR_ERR_NOMEM) {
        br__provider_fail(ac->call->arena, BR_ERR_NOMEM, 503, BR_UPSTREAM_ERROR_OTHER,
                          "out of memory", "server_error", NULL, res);
    } else if (rc == BR_ERR_LIMIT) {
        br__provider_fail_transport(ac->call->arena, BR_UPSTREAM_ERROR_TOO_LARGE, res);
    } else {
        br__provider_fail_transport(ac->call->arena, BR_UPSTREAM_ERROR_BAD_RESPONSE, res);
    }
    res->partial = ac->begun;
}

static int stream_emit(void *user, struct br_slice chunk)
{
    struct an_call *ac = user;
    begin(ac);
    if (!ac->canceled && ac->call->sink->on_chunk) {
        ac->call->sink->on_chunk(ac->call->sink_user, chunk);
    }
    return ac->canceled ? BR_ERR_CANCELED : BR_OK;
}

static int on_sse_event(void *user, const struct br_sse_event *ev)
{
    struct an_call *ac = user;
    int rc = br__anthropic_stream_feed(&ac->st, ev->event, ev->data);
    if (rc != BR_OK && ac->st_rc == BR_OK) {
        ac->st_rc = rc;
    }
    return rc;
}

static bool has_json_type(struct br_slice ct)
{
    for (size_t i = 0; i + 4 <= ct.len; i++) {
        if (br_slice_case_eq_cstr(br_slice_make(ct.ptr + i, 4), "json")) {
            return true;
        }
    }
    return false;
}

static void up_on_head(void *user, const struct br_upstream_head *head)
{
    struct an_call *ac = user;
    ac->status = head->status;
    ac->t_first_byte_ns = br_clock_now_ns();
    br_buf_cleanup(&ac->buf);
    if (head->status >= 200 && head->status <= 299) {
        /* A JSON answer to a stream request is collected and replayed as events. */
        bool json = has_json_type(br__provider_header(head, "content-type"));
        ac->mode = ac->call->stream && !json ? MODE_SSE : MODE_BODY;
        br_buf_init(&ac->buf, SUCCESS_BODY_MAX);
    } else {
        ac->mode = MODE_ERROR;
        br_buf_init(&ac->buf, ERROR_BODY_MAX);
        if (head->status == 429 || head->status == 503 || head->status == 529) {
            ac->retry_after_ms = br__provider_retry_after_ms(head);
        }
    }
}

static void up_on_data(void *user, const char *data, size_t n)
{
    struct an_call *ac = user;
    struct br_provider_result res = {0};
    int rc;
    if (ac->canceled || ac->finished) {
        return;
    }
    switch (ac->mode) {
    case MODE_ERROR:
        if (ac->buf.len < ac->buf.max) {
            size_t room = ac->buf.max - ac->buf.len;
            (void)br_buf_append(&ac->buf, data, n < room ? n : room); /* the rest is dropped */
        }
        return;
    case MODE_BODY:
        rc = br_buf_append(&ac->buf, data, n);
        if (rc != BR_OK) {
            stream_failed(ac, rc, &res);
            abort_upstream(ac);
            deliver(ac, &res);
        }
        return;
    case MODE_SSE:
        rc = br_sse_parser_feed(&ac->sse, data, n, on_sse_event, ac);
        if (ac->canceled) {
            return;
        }
        if (rc != BR_OK) {
            stream_failed(ac, ac->st_rc != BR_OK ? ac->st_rc : rc, &res);
            abort_upstream(ac);
            deliver(ac, &res);
            return;
        }
        if (ac->begun && ac->call->sink->on_flush) {
            ac->call->sink->on_flush(ac->call->sink_user);
        }
        return;
    case MODE_NONE:
    default:
        return;
    }
}

/* A stream request answered with a whole message: the same chunks a stream would give. */
static void finish_body_as_stream(struct an_call *ac, struct br_provider_result *res)
{
    int rc = br__anthropic_stream_from_message(&ac->st, ac->buf.ptr, ac->buf.len);
    if (ac->canceled) {
        return;
    }
    if (rc != BR_OK) {
        stream_failed(ac, rc, res);
        return;
    }
    fill_common(ac, res, true);
    res->rc = BR_OK;
    res->status = 200;
    res->error_kind = BR_UPSTREAM_ERROR_NONE;
}

static void finish_body(struct an_call *ac, struct br_provider_result *res)
{
    if (ac->call->stream) {
        finish_body_as_stream(ac, res);
        return;
    }
    json_t *out = NULL;
    const char *model = NULL;
    struct br_buf b;
    br_buf_init(&b, SUCCESS_BODY_MAX);
    int rc =
        br__anthropic_response_build(ac->buf.ptr, ac->buf.len, target_model(ac->call->target),
                                     ac->created, &out, &ac->body_usage, &ac->body_finish, &model);
    if (rc == BR_OK) {
        ac->body_model = br_arena_strndup(ac->call->arena, model, strlen(model));
        rc = ac->body_model ? br__anthropic_json_dump(out, &b) : BR_ERR_NOMEM;
    }
    json_decref(out);
    if (rc != BR_OK) {
        br_buf_cleanup(&b);
        stream_failed(ac, rc == BR_ERR_PARSE ? BR_ERR_PARSE : BR_ERR_NOMEM, res);
        return;
    }
    fill_common(ac, res, true);
    begin(ac);
    if (!ac->canceled && ac->call->sink->on_body) {
        ac->call->sink->on_body(ac->call->sink_user, br_slice_make(b.ptr, b.len));
    }
    br_buf_cleanup(&b);
    res->rc = BR_OK;
    res->status = 200;
    res->error_kind = BR_UPSTREAM_ERROR_NONE;
}

static void finish_error_status(struct an_call *ac, struct br_provider_result *res)
{
    br_arena *a = ac->call->arena;
    struct br_buf b;
    br_buf_init(&b, ERROR_BODY_MAX * 2);
    int rc = br__anthropic_error_translate(ac->status, ac->buf.ptr, ac->buf.len, &b);
    char *copy = rc == BR_OK ? br_arena_strndup(a, b.ptr, b.len) : NULL;
    fill_common(ac, res, false);
    if (!copy) {
        br__provider_fail(a, BR_ERR_NOMEM, 503, BR_UPSTREAM_ERROR_OTHER, "out of memory",
                          "server_error", NULL, res);
    } else {
        res->rc = BR_ERR_UPSTREAM;
        /* The upstream's own status, never 200; anything outside 4xx/5xx becomes 502. */
        res->status = ac->status >= 400 && ac->status <= 599 ? ac->status : 502;
        res->error_kind = BR_UPSTREAM_ERROR_HTTP_STATUS;
        res->error_body =
            br__provider_redact(a, br_slice_make(copy, b.len), ac->call->target->api_key);
    }
    br_buf_cleanup(&b);
}

static void up_on_done(void *user, const struct br_upstream_stats *stats)
{
    struct an_call *ac = user;
    struct br_provider_result res = {0};
    ac->up = NULL;
    if (ac->canceled || ac->finished) {
        return;
    }
    if (stats->t_first_byte_ns && !ac->t_first_byte_ns) {
        ac->t_first_byte_ns = stats->t_first_byte_ns;
    }
    if (ac->mode == MODE_SSE && stats->error == BR_UPSTREAM_ERROR_NONE) {
        /* A last event without its blank line still counts. */
        int rc = br_sse_parser_finish(&ac->sse, 1, on_sse_event, ac);
        if (ac->canceled) {
            return;
        }
        if (rc != BR_OK) {
            stream_failed(ac, ac->st_rc != BR_OK ? ac->st_rc : rc, &res);
            deliver(ac, &res);
            return;
        }
    }
    if (ac->mode == MODE_SSE && ac->st.finished) {
        /* message_stop arrived: a transport error after it (an idle timeout on a connection
         * the server left open) does not spoil a complete answer. */
        fill_common(ac, &res, true);
        begin(ac);
        res.rc = BR_OK;
        res.status = 200;
    } else if (stats->error != BR_UPSTREAM_ERROR_NONE) {
        fill_common(ac, &res, true);
        br__provider_fail_transport(ac->call->arena, stats->error, &res);
        res.partial = ac->begun;
    } else if (ac->mode == MODE_ERROR) {
        finish_error_status(ac, &res);
    } else if (ac->mode == MODE_BODY) {
        finish_body(ac, &res);
        if (ac->canceled) {
            return;
        }
    } else {
        /* The body ended before message_stop: the answer was cut short. */
        fill_common(ac, &res, true);
        br__provider_fail_transport(ac->call->arena, BR_UPSTREAM_ERROR_CLOSED, &res);
        res.partial = ac->begun;
    }
    deliver(ac, &res);
}

static void on_defer(uv_timer_t *t)
{
    struct an_call *ac = t->data;
    if (!ac) {
        return;
    }
    close_defer(ac);
    if (ac->canceled || ac->finished) {
        return;
    }
    deliver(ac, &ac->pending);
}

/* Schedules the 400 for a request that cannot be translated. */
static int defer_client_error(struct an_call *ac, const struct br__anthropic_err *err)
{
    struct br_provider_call *call = ac->call;
    struct br_buf b;
    br_buf_init(&b, 4096);
    int rc = br__anthropic_error_json(&b, err->message, err->type,
                                      err->param[0] ? err->param : NULL, err->code);
    char *body = rc == BR_OK ? br_arena_strndup(call->arena, b.ptr, b.len) : NULL;
    br_buf_cleanup(&b);
    if (!body) {
        return BR_ERR_NOMEM;
    }
    memset(&ac->pending, 0, sizeof(ac->pending));
    ac->pending.rc = BR_ERR_INVAL;
    ac->pending.status = err->status;
    ac->pending.error_kind = BR_UPSTREAM_ERROR_NONE;
    ac->pending.error_body = br_slice_make(body, strlen(body));
    ac->defer = br_malloc(sizeof(*ac->defer));
    if (!ac->defer) {
        return BR_ERR_NOMEM;
    }
    if (uv_timer_init(call->loop, ac->defer) != 0) {
        br_free(ac->defer);
        ac->defer = NULL;
        return BR_ERR_IO;
    }
    ac->defer->data = ac;
    uv_timer_start(ac->defer, on_defer, 0, 0);
    return BR_OK;
}

static bool has_header(const struct br_provider_target *t, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < t->n_extra_headers; i++) {
        const char *h = t->extra_headers[i];
        const char *colon = strchr(h, ':');
        if (colon && (size_t)(colon - h) == n && br_slice_case_eq_cstr(br_slice_make(h, n), name)) {
            return true;
        }
    }
    return false;
}

static int build_headers(struct an_call *ac, const char ***out, size_t *n_out)
{
    const struct br_provider_target *t = ac->call->target;
    br_arena *a = ac->call->arena;
    size_t n = 0;
    const char **h = br_arena_calloc(a, 4 + t->n_extra_headers, sizeof(*h));
    if (!h) {
        return BR_ERR_NOMEM;
    }
    h[n++] = "Content-Type: application/json";
    h[n++] = ac->call->stream ? "Accept: text/event-stream" : "Accept: application/json";
    if (!has_header(t, "anthropic-version")) {
        h[n++] = "anthropic-version: " BR__ANTHROPIC_VERSION;
    }
    if (t->api_key && t->api_key[0]) {
        h[n] = br_arena_sprintf(a, "x-api-key: %s", t->api_key);
        if (!h[n++]) {
            return BR_ERR_NOMEM;
        }
    }
    for (size_t i = 0; i < t->n_extra_headers; i++) {
        h[n++] = t->extra_headers[i];
    }
    *out = h;
    *n_out = n;
    return BR_OK;
}

static int an_call_start(struct br_provider_call *call)
{
    if (!call || !call->target || !call->arena || !call->sink || !call->sink->on_done ||
        !call->loop) {
        return BR_ERR_INVAL;
    }
    br_arena *a = call->arena;
    struct an_call *ac = br_arena_calloc(a, 1, sizeof(*ac));
    if (!ac) {
        return BR_ERR_NOMEM;
    }
    ac->call = call;
    ac->created = br_clock_wall_ms() / 1000;
    br_buf_init(&ac->buf, SUCCESS_BODY_MAX);
    br_sse_parser_init(&ac->sse, SSE_EVENT_MAX);
    br__anthropic_stream_init(&ac->st, target_model(call->target), ac->created,
                              call->client_wants_usage, stream_emit, ac);
    if (br_arena_cleanup_add(a, an_cleanup, ac) != BR_OK) {
        an_cleanup(ac);
        return BR_ERR_NOMEM;
    }

    json_t *body_json = NULL;
    struct br__anthropic_err terr = {0};
    int rc = br__anthropic_request_build(br_provider_call_request(call), call->target, call->stream,
                                         &body_json, &terr);
    if (rc == BR_ERR_INVAL) {
        rc = defer_client_error(ac, &terr);
        if (rc == BR_OK) {
            call->priv = ac;
        }
        return rc;
    }
    if (rc != BR_OK) {
        return rc;
    }
    struct br_buf b;
    br_buf_init(&b, SUCCESS_BODY_MAX);
    rc = br__anthropic_json_dump(body_json, &b);
    json_decref(body_json);
    char *body = rc == BR_OK ? br_arena_strndup(a, b.ptr, b.len) : NULL;
    size_t body_len = b.len;
    br_buf_cleanup(&b);
    if (!body) {
        return BR_ERR_NOMEM;
    }

    const char *base =
        call->target->base_url ? call->target->base_url : BR__ANTHROPIC_DEFAULT_BASE_URL;
    size_t base_len = strlen(base);
    while (base_len > 0 && base[base_len - 1] == '/') {
        base_len--;
    }
    char *url = br_arena_sprintf(a, "%.*s/messages", (int)base_len, base);
    const char **headers = NULL;
    size_t n_headers = 0;
    if (!url) {
        return BR_ERR_NOMEM;
    }
    rc = build_headers(ac, &headers, &n_headers);
    if (rc != BR_OK) {
        return rc;
    }
    if (!call->upstream) {
        return BR_ERR_INVAL;
    }
    struct br_upstream_request req = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .n_headers = n_headers,
        .body = br_slice_make(body, body_len),
        .connect_timeout_ms = call->target->connect_timeout_ms,
        .first_byte_timeout_ms = call->target->first_byte_timeout_ms,
        .idle_timeout_ms = call->target->idle_timeout_ms,
    };
    static const struct br_upstream_callbacks cbs = {
        .on_head = up_on_head,
        .on_data = up_on_data,
        .on_done = up_on_done,
    };
    rc = br_upstream_call_start(call->upstream, &req, &cbs, ac, &ac->up);
    if (rc != BR_OK) {
        ac->up = NULL;
        return rc;
    }
    call->priv = ac;
    return BR_OK;
}

static void an_call_cancel(struct br_provider_call *call, struct br_provider_result *partial)
{
    struct an_call *ac = call ? call->priv : NULL;
    memset(partial, 0, sizeof(*partial));
    if (ac) {
        if (!ac->finished && !ac->canceled) {
            ac->canceled = true;
            abort_upstream(ac);
            close_defer(ac);
        }
        /* Input tokens from message_start are real; output is estimated from the deltas. */
        fill_common(ac, partial, ac->mode != MODE_ERROR && ac->pending.status == 0);
        partial->usage.reported = false;
    }
    partial->rc = BR_ERR_CANCELED;
    partial->status = 499; /* client closed request */
    partial->error_kind = BR_UPSTREAM_ERROR_CANCELED;
    partial->partial = true;
}

static int an_model_create(const struct br_provider_target *t, void **state_out, char *err,
                           size_t errlen)
{
    *state_out = NULL;
    if (t->default_max_tokens < 0) {
        if (err && errlen) {
            (void)snprintf(err, errlen, "max_tokens must be positive");
        }
        return BR_ERR_INVAL;
    }
    return br__provider_check_http_target(t, false, err, errlen);
}

static void an_model_destroy(void *state)
{
    (void)state;
}

const struct br_provider_ops br_provider_anthropic = {
    .name = "anthropic",
    .model_create = an_model_create,
    .model_destroy = an_model_destroy,
    .call_start = an_call_start,
    .call_cancel = an_call_cancel,
};
