/* SPDX-License-Identifier: MIT */
/*
 * The replay provider: answers from recorded real model outputs (replay_load.c) without any
 * network, so that routing, cascades, cost accounting and load tests run on real answers.
 * A call looks up the normalised text of the last user message; a hit is delivered as a
 * chat.completion, or streamed as a role chunk, one chunk per word (with its leading
 * whitespace), a finish chunk and, when asked for, a usage chunk. Output is produced from a
 * uv_idle handle on the call's loop, a bounded batch per loop iteration, so that a long answer
 * never starves other requests and no sink callback ever runs inside call_start.
 *
 * The per-call state is heap memory that outlives the request arena until the idle handle's
 * close callback: a sink callback may cancel the call (and free the arena) while an emission
 * loop is on the stack, and the loop must still be able to see that it was canceled.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "upstream/provider.h"
#include "upstream/providers/replay_int.h"

/* Word chunks emitted per loop iteration. */
#define PIECES_PER_TICK 64
#define OUT_MAX         ((size_t)64 << 20)

struct replay_call {
    uv_idle_t idle; /* first: the close callback frees the struct through it */
    struct br_provider_call *call;
    const struct br__replay_entry *entry; /* NULL when answering with an error */
    int err_status;                       /* error answer: its status */
    struct br_buf out;                    /* chunk / body / error JSON */
    struct br_buf head;                   /* chunk prefix up to and including "choices":[ */
    char id[48];                          /* "chatcmpl-replay-<16 hex>" */
    const char *model;                    /* model named in the output */
    int64_t created;
    struct br_usage usage; /* final usage of a hit */
    int64_t prompt_tokens; /* for partial results */
    size_t pos;            /* answer bytes emitted so far */
    uint64_t t_first_byte_ns;
    uint64_t t_first_token_ns;
    bool begun;  /* on_begin (and the role chunk) sent */
    bool closed; /* the call ended (done or canceled) */
};

static const char *model_name(const struct br_provider_target *t)
{
    return t->upstream_model ? t->upstream_model : (t->name ? t->name : "replay");
}

static int replay_model_create(const struct br_provider_target *t, void **state_out, char *err,
                               size_t errlen)
{
    *state_out = NULL;
    if (!t->replay_file || !*t->replay_file) {
        (void)snprintf(err, errlen, "model %s: provider replay needs replay_file",
                       t->name ? t->name : "(unnamed)");
        return BR_ERR_INVAL;
    }
    struct br__replay_model *m;
    int rc = br__replay_model_load(t->replay_file, t->replay_prompt_field, t->replay_response_field,
                                   &m, err, errlen);
    if (rc == BR_OK) {
        *state_out = m;
    }
    return rc;
}

static void replay_model_destroy(void *state)
{
    br__replay_model_free(state);
}

static void free_on_close(uv_handle_t *h)
{
    struct replay_call *rc = (struct replay_call *)h;
    br_buf_cleanup(&rc->out);
    br_buf_cleanup(&rc->head);
    br_free(rc);
}

/* Ends the call: no more callbacks; the memory goes when the handle has closed. */
static void close_call(struct replay_call *rc)
{
    rc->closed = true;
    uv_idle_stop(&rc->idle);
    uv_close((uv_handle_t *)&rc->idle, free_on_close);
}

static int oai_error(struct br_buf *out, const char *message, const char *type, const char *param,
                     const char *code)
{
    int rc = br_buf_append_cstr(out, "{\"error\":{\"message\":");
    rc = rc == BR_OK ? br__replay_json_string(out, message, strlen(message)) : rc;
    rc = rc == BR_OK ? br_buf_append_cstr(out, ",\"type\":") : rc;
    rc = rc == BR_OK ? br__replay_json_string(out, type, strlen(type)) : rc;
    rc = rc == BR_OK ? br_buf_append_cstr(out, ",\"param\":") : rc;
    if (rc == BR_OK) {
        rc = param ? br__replay_json_string(out, param, strlen(param))
                   : br_buf_append_cstr(out, "null");
    }
    rc = rc == BR_OK ? br_buf_append_cstr(out, ",\"code\":") : rc;
    if (rc == BR_OK) {
        rc = code ? br__replay_json_string(out, code, strlen(code))
                  : br_buf_append_cstr(out, "null");
    }
    return rc == BR_OK ? br_buf_append_cstr(out, "}}") : rc;
}

static int usage_json(struct br_buf *out, const struct br_usage *u)
{
    return br_buf_printf(out,
                         "{\"prompt_tokens\":%" PRId64 ",\"completion_tokens\":%" PRId64
                         ",\"total_tokens\":%" PRId64 "}",
                         u->prompt_tokens, u->completion_tokens,
                         u->prompt_tokens + u->completion_tokens);
}

static void base_result(const struct replay_call *rc, struct br_provider_result *res)
{
    memset(res, 0, sizeof(*res));
    res->upstream_model = rc->model;
    res->t_first_byte_ns = rc->t_first_byte_ns;
    res->t_first_token_ns = rc->t_first_token_ns;
}

/* Delivers the final result and ends the call. */
static void finish(struct replay_call *rc, const struct br_provider_result *res)
{
    struct br_provider_call *call = rc->call;
    close_call(rc); /* rc stays readable until the close callback, after on_done */
    call->priv = NULL;
    call->sink->on_done(call->sink_user, res);
}

static void finish_error(struct replay_call *rc)
{
    struct br_provider_result res;
    base_result(rc, &res);
    res.rc = rc->err_status == 404 ? BR_ERR_NOTFOUND : BR_ERR_INVAL;
    res.status = rc->err_status;
    res.error_body = br_slice_make(rc->out.ptr, rc->out.len);
    res.usage.reported = false;
    finish(rc, &res);
}

static void finish_ok(struct replay_call *rc)
{
    struct br_provider_result res;
    base_result(rc, &res);
    res.rc = BR_OK;
    res.status = 200;
    res.usage = rc->usage;
    res.finish_reason = "stop";
    finish(rc, &res);
}

/* Output failed to build (out of memory): the call ends with a 503-style error. */
static void finish_nomem(struct replay_call *rc)
{
    struct br_provider_result res;
    base_result(rc, &res);
    br_buf_reset(&rc->out);
    res.rc = BR_ERR_NOMEM;
    res.status = 503;
    res.partial = rc->begun;
    if (oai_error(&rc->out, "out of memory while producing the replayed answer", "server_error",
                  NULL, "out_of_memory") == BR_OK) {
        res.error_body = br_slice_make(rc->out.ptr, rc->out.len);
    }
    finish(rc, &res);
}

/* chunk = head + {"index":0,"delta":<delta>,"logprobs":null,"finish_reason":<fr>}]} */
static int emit_chunk(struct replay_call *rc, const char *delta_prefix, const char *text,
                      size_t len, const char *delta_suffix, const char *finish_reason)
{
    struct br_buf *o = &rc->out;
    br_buf_reset(o);
    int r = br_buf_append(o, rc->head.ptr, rc->head.len);
    r = r == BR_OK ? br_buf_append_cstr(o, "{\"index\":0,\"delta\":") : r;
    r = r == BR_OK ? br_buf_append_cstr(o, delta_prefix) : r;
    if (r == BR_OK && text) {
        r = br__replay_json_string(o, text, len);
    }
    r = r == BR_OK ? br_buf_append_cstr(o, delta_suffix) : r;
    r = r == BR_OK
            ? br_buf_printf(o, ",\"logprobs\":null,\"finish_reason\":%s%s%s}]}",
                            finish_reason ? "\"" : "", finish_reason ? finish_reason : "null",
                            finish_reason ? "\"" : "")
            : r;
    if (r != BR_OK) {
        return r;
    }
    rc->call->sink->on_chunk(rc->call->sink_user, br_slice_make(o->ptr, o->len));
    return rc->closed ? BR_ERR_CANCELED : BR_OK;
}

static int emit_usage_chunk(struct replay_call *rc)
{
    struct br_buf *o = &rc->out;
    br_buf_reset(o);
    int r = br_buf_append(o, rc->head.ptr, rc->head.len);
    r = r == BR_OK ? br_buf_append_cstr(o, "],\"usage\":") : r;
    r = r == BR_OK ? usage_json(o, &rc->usage) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, "}") : r;
    if (r != BR_OK) {
        return r;
    }
    rc->call->sink->on_chunk(rc->call->sink_user, br_slice_make(o->ptr, o->len));
    return rc->closed ? BR_ERR_CANCELED : BR_OK;
}

static int emit_body(struct replay_call *rc)
{
    const struct br__replay_entry *e = rc->entry;
    struct br_buf *o = &rc->out;
    br_buf_reset(o);
    int r = br_buf_printf(
        o,
        "{\"id\":\"%s\",\"object\":\"chat.completion\",\"created\":%" PRId64 ",\"model\":", rc->id,
        rc->created);
    r = r == BR_OK ? br__replay_json_string(o, rc->model, strlen(rc->model)) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, ",\"choices\":[{\"index\":0,\"message\":{\"role\":"
                                           "\"assistant\",\"content\":")
                   : r;
    r = r == BR_OK ? br__replay_json_string(o, e->answer, e->answer_len) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, ",\"refusal\":null},\"logprobs\":null,"
                                           "\"finish_reason\":\"stop\"}],\"usage\":")
                   : r;
    r = r == BR_OK ? usage_json(o, &rc->usage) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, "}") : r;
    if (r != BR_OK) {
        return r;
    }
    rc->pos = e->answer_len;
    rc->t_first_token_ns = rc->t_first_byte_ns;
    rc->call->sink->on_begin(rc->call->sink_user);
    if (rc->closed) {
        return BR_ERR_CANCELED;
    }
    rc->call->sink->on_body(rc->call->sink_user, br_slice_make(o->ptr, o->len));
    return rc->closed ? BR_ERR_CANCELED : BR_OK;
}

/* The next word: a run of whitespace and the run of non-whitespace after it. */
static size_t next_piece(const char *s, size_t len, size_t pos)
{
    size_t i = pos;
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) {
        i++;
    }
    while (i < len && !(s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) {
        i++;
    }
    return i;
}

/* One loop iteration's worth of a stream; returns BR_AGAIN while there is more to send. */
static int stream_step(struct replay_call *rc)
{
    const struct br__replay_entry *e = rc->entry;
    int r;
    if (!rc->begun) {
        rc->begun = true;
        rc->call->sink->on_begin(rc->call->sink_user);
        if (rc->closed) {
            return BR_ERR_CANCELED;
        }
        r = emit_chunk(rc, "{\"role\":\"assistant\",\"content\":\"\"}", NULL, 0, "", NULL);
        if (r != BR_OK) {
            return r;
        }
    }
    for (int n = 0; n < PIECES_PER_TICK && rc->pos < e->answer_len; n++) {
        size_t end = next_piece(e->answer, e->answer_len, rc->pos);
        if (!rc->t_first_token_ns) {
            rc->t_first_token_ns = br_clock_now_ns();
        }
        size_t start = rc->pos;
        rc->pos = end;
        r = emit_chunk(rc, "{\"content\":", e->answer + start, end - start, "}", NULL);
        if (r != BR_OK) {
            return r;
        }
    }
    if (rc->pos < e->answer_len) {
        return BR_AGAIN;
    }
    r = emit_chunk(rc, "{}", NULL, 0, "", "stop");
    if (r == BR_OK && rc->call->client_wants_usage) {
        r = emit_usage_chunk(rc);
    }
    return r;
}

static void on_idle(uv_idle_t *h)
{
    struct replay_call *rc = (struct replay_call *)h;
    int r;
    if (rc->closed) {
        return;
    }
    if (!rc->t_first_byte_ns) {
        rc->t_first_byte_ns = br_clock_now_ns();
    }
    if (!rc->entry) {
        finish_error(rc);
        return;
    }
    r = rc->call->stream ? stream_step(rc) : emit_body(rc);
    if (r == BR_AGAIN && rc->call->sink->on_flush) {
        rc->call->sink->on_flush(rc->call->sink_user); /* this iteration's batch */
    }
    if (r == BR_AGAIN || r == BR_ERR_CANCELED) {
        return; /* more next iteration, or the sink canceled the call (already closed) */
    }
    if (r != BR_OK) {
        finish_nomem(rc);
        return;
    }
    finish_ok(rc);
}

/* Prepares the 404/400 answer for a request the recording cannot serve. */
static int prepare_error(struct replay_call *rc, const struct br__replay_model *m, int key_rc)
{
    char msg[512];
    if (key_rc == BR_ERR_NOTFOUND) {
        rc->err_status = 400;
        (void)snprintf(msg, sizeof(msg),
                       "replay model \"%s\" answers the last user message, and this request has no "
                       "user message with text",
                       rc->model);
        return oai_error(&rc->out, msg, "invalid_request_error", "messages", "replay_no_prompt");
    }
    rc->err_status = 404;
    (void)snprintf(
        msg, sizeof(msg),
        "replay model \"%s\" has no recorded answer for this prompt (it holds %zu recorded "
        "prompts)",
        rc->model, m->n_prompts);
    return oai_error(&rc->out, msg, "invalid_request_error", "messages", "replay_miss");
}

static int replay_call_start(struct br_provider_call *call)
{
    const struct br__replay_model *m = call->model_state;
    struct br_buf key;
    int r;
    if (!m || !call->sink || !call->loop) {
        return BR_ERR_INVAL;
    }
    struct replay_call *rc = br_calloc(1, sizeof(*rc));
    if (!rc) {
        return BR_ERR_NOMEM;
    }
    rc->call = call;
    rc->model = model_name(call->target);
    rc->created = br_clock_wall_ms() / 1000;
    br_buf_init(&rc->out, OUT_MAX);
    br_buf_init(&rc->head, 4096 + strlen(rc->model) * 6);
    br_buf_init(&key, OUT_MAX);

    int key_rc = br__replay_request_key(br_provider_call_request(call), &key);
    if (key_rc == BR_OK) {
        rc->entry = br__replay_model_lookup(m, br_slice_make(key.ptr, key.len));
    }
    if (key_rc != BR_OK && key_rc != BR_ERR_NOTFOUND) {
        r = key_rc;
        goto fail;
    }
    if (!rc->entry) {
        r = prepare_error(rc, m, key_rc);
    } else {
        const struct br__replay_entry *e = rc->entry;
        (void)snprintf(rc->id, sizeof(rc->id), "chatcmpl-replay-%016" PRIx64, e->hash);
        rc->prompt_tokens = e->has_usage ? e->prompt_tokens
                                         : br_tokens_estimate_chat(br_provider_call_request(call));
        rc->usage.prompt_tokens = rc->prompt_tokens;
        rc->usage.completion_tokens = e->completion_tokens;
        rc->usage.reported = e->has_usage;
        r = br_buf_printf(&rc->head,
                          "{\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":%" PRId64
                          ",\"model\":",
                          rc->id, rc->created);
        r = r == BR_OK ? br__replay_json_string(&rc->head, rc->model, strlen(rc->model)) : r;
        r = r == BR_OK ? br_buf_append_cstr(&rc->head, ",\"choices\":[") : r;
    }
    if (r != BR_OK) {
        goto fail;
    }
    r = uv_idle_init(call->loop, &rc->idle);
    if (r != 0) {
        r = BR_ERR_IO;
        goto fail;
    }
    call->priv = rc;
    br_buf_cleanup(&key);
    /* Output starts on the next loop iteration, never inside call_start. */
    uv_idle_start(&rc->idle, on_idle);
    return BR_OK;

fail:
    br_buf_cleanup(&key);
    br_buf_cleanup(&rc->out);
    br_buf_cleanup(&rc->head);
    br_free(rc);
    return r;
}

static void replay_call_cancel(struct br_provider_call *call, struct br_provider_result *partial)
{
    struct replay_call *rc = call->priv;
    bool live = rc && !rc->closed;
    if (live) {
        base_result(rc, partial);
    } else {
        memset(partial, 0, sizeof(*partial));
    }
    partial->rc = BR_ERR_CANCELED;
    partial->status = 499; /* client closed request */
    partial->error_kind = BR_UPSTREAM_ERROR_CANCELED;
    partial->partial = true;
    if (live && rc->entry) {
        /* What was sent so far, estimated; the recorded prompt count stays exact. */
        partial->usage.prompt_tokens = rc->prompt_tokens;
        partial->usage.completion_tokens = br_tokens_estimate(rc->entry->answer, rc->pos);
        partial->usage.reported = false;
    }
    if (live) {
        close_call(rc);
    }
    call->priv = NULL;
}

const struct br_provider_ops br_provider_replay = {
    .name = "replay",
    .model_create = replay_model_create,
    .model_destroy = replay_model_destroy,
    .call_start = replay_call_start,
    .call_cancel = replay_call_cancel,
};
