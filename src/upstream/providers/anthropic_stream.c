/* SPDX-License-Identifier: MIT */
/*
 * Streamed Messages API events -> OpenAI chat.completion.chunk objects. A pure state machine:
 * the caller parses SSE and feeds one event at a time; chunks come out through a callback. It
 * checks the event order the API documents (message_start, then content blocks opened,
 * extended and closed one at a time, then message_delta and message_stop) and refuses anything
 * else, so that a broken or hostile upstream ends the call cleanly instead of confusing the
 * client. It is also the fuzz target's entry (tests/fuzz/fuzz_anthropic_stream.c).
 */
#include <stdio.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "upstream/providers/anthropic_int.h"

#define CHUNK_MAX ((size_t)16 << 20)

void br__anthropic_stream_init(struct br__anthropic_stream *s, const char *fallback_model,
                               int64_t created, bool include_usage,
                               int (*emit)(void *user, struct br_slice chunk), void *user)
{
    memset(s, 0, sizeof(*s));
    s->created = created;
    s->include_usage = include_usage;
    s->emit = emit;
    s->user = user;
    for (int i = 0; i < 4; i++) {
        s->usage_parts[i] = -1;
    }
    s->block_index = -1;
    (void)snprintf(s->id, sizeof(s->id), "chatcmpl-anthropic");
    (void)snprintf(s->model, sizeof(s->model), "%s", fallback_model ? fallback_model : "");
    br_buf_init(&s->out, CHUNK_MAX);
}

void br__anthropic_stream_cleanup(struct br__anthropic_stream *s)
{
    br_buf_cleanup(&s->out);
}

int64_t br__anthropic_stream_output_tokens(const struct br__anthropic_stream *s)
{
    if (s->saw_output_usage) {
        return s->usage.completion_tokens;
    }
    /* message_start's output_tokens is a placeholder (1 or 2): the deltas say more. */
    return s->est_output_tokens > s->usage.completion_tokens ? s->est_output_tokens
                                                             : s->usage.completion_tokens;
}

/* Serialises j (consumed) and hands it to emit. */
static int emit_json(struct br__anthropic_stream *s, json_t *j)
{
    if (!j) {
        return BR_ERR_NOMEM;
    }
    br_buf_reset(&s->out);
    int rc = br__anthropic_json_dump(j, &s->out);
    json_decref(j);
    if (rc != BR_OK) {
        return rc;
    }
    return s->emit(s->user, br_slice_make(s->out.ptr, s->out.len));
}

/* {id, object, created, model, choices:[{index:0, delta, logprobs:null, finish_reason}]} */
static int emit_delta(struct br__anthropic_stream *s, json_t *delta, const char *finish_reason)
{
    if (!delta) {
        return BR_ERR_NOMEM;
    }
    return emit_json(s, json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:s?}]}", "id", s->id,
                                  "object", "chat.completion.chunk", "created",
                                  (json_int_t)s->created, "model", s->model, "choices", "index", 0,
                                  "delta", delta, "logprobs", "finish_reason", finish_reason));
}

static void note_content(struct br__anthropic_stream *s, const char *text, size_t len)
{
    if (!s->saw_content) {
        s->saw_content = true;
        s->t_first_token_ns = br_clock_now_ns();
    }
    int64_t est = br_tokens_estimate(text, len);
    s->est_output_tokens += est;
}

static int get_index(const json_t *ev, int64_t *out)
{
    const json_t *v = json_object_get(ev, "index");
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return BR_ERR_PARSE;
    }
    *out = (int64_t)json_integer_value(v);
    return BR_OK;
}

static int on_message_start(struct br__anthropic_stream *s, const json_t *ev)
{
    const json_t *msg = json_object_get(ev, "message");
    const char *id = json_string_value(json_object_get(msg, "id"));
    const json_t *model = json_object_get(msg, "model");
    if (s->started || !json_is_object(msg) || !id || (model && !json_is_string(model))) {
        return BR_ERR_PARSE;
    }
    if ((size_t)snprintf(s->id, sizeof(s->id), "chatcmpl-%s", id) >= sizeof(s->id)) {
        return BR_ERR_PARSE;
    }
    if (model && (size_t)snprintf(s->model, sizeof(s->model), "%s", json_string_value(model)) >=
                     sizeof(s->model)) {
        return BR_ERR_PARSE;
    }
    br__anthropic_usage_merge(json_object_get(msg, "usage"), s->usage_parts, &s->usage);
    s->started = true;
    return emit_delta(s, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL);
}

static int emit_text(struct br__anthropic_stream *s, const json_t *text)
{
    if (!json_is_string(text)) {
        return BR_ERR_PARSE;
    }
    size_t len = json_string_length(text);
    if (len == 0) {
        return BR_OK;
    }
    note_content(s, json_string_value(text), len);
    return emit_delta(s, json_pack("{s:O}", "content", text), NULL);
}

static int on_block_start(struct br__anthropic_stream *s, const json_t *ev)
{
    int64_t index;
    const json_t *block = json_object_get(ev, "content_block");
    const char *type = json_string_value(json_object_get(block, "type"));
    if (s->block != BR__ANTHROPIC_BLOCK_NONE || get_index(ev, &index) != BR_OK || !type) {
        return BR_ERR_PARSE;
    }
    s->block_index = index;
    if (strcmp(type, "text") == 0) {
        s->block = BR__ANTHROPIC_BLOCK_TEXT;
        const json_t *text = json_object_get(block, "text");
        return text ? emit_text(s, text) : BR_OK;
    }
    if (strcmp(type, "tool_use") != 0) {
        s->block = BR__ANTHROPIC_BLOCK_OTHER;
        return BR_OK;
    }
    const json_t *id = json_object_get(block, "id");
    const json_t *name = json_object_get(block, "name");
    if (!json_is_string(id) || !json_is_string(name)) {
        return BR_ERR_PARSE;
    }
    s->block = BR__ANTHROPIC_BLOCK_TOOL;
    s->tool_index = s->n_tools++;
    note_content(s, json_string_value(name), json_string_length(name));
    return emit_delta(s,
                      json_pack("{s:[{s:I, s:O, s:s, s:{s:O, s:s}}]}", "tool_calls", "index",
                                (json_int_t)s->tool_index, "id", id, "type", "function", "function",
                                "name", name, "arguments", ""),
                      NULL);
}

static int on_block_delta(struct br__anthropic_stream *s, const json_t *ev)
{
    int64_t index;
    const json_t *delta = json_object_get(ev, "delta");
    const char *type = json_string_value(json_object_get(delta, "type"));
    if (s->block == BR__ANTHROPIC_BLOCK_NONE || get_index(ev, &index) != BR_OK ||
        index != s->block_index || !type) {
        return BR_ERR_PARSE;
    }
    if (s->block == BR__ANTHROPIC_BLOCK_OTHER) {
        return BR_OK; /* thinking, server tool input ...: not forwarded */
    }
    if (strcmp(type, "text_delta") == 0) {
        if (s->block != BR__ANTHROPIC_BLOCK_TEXT) {
            return BR_ERR_PARSE;
        }
        return emit_text(s, json_object_get(delta, "text"));
    }
    if (strcmp(type, "input_json_delta") == 0) {
        const json_t *pj = json_object_get(delta, "partial_json");
        if (s->block != BR__ANTHROPIC_BLOCK_TOOL || !json_is_string(pj)) {
            return BR_ERR_PARSE;
        }
        size_t len = json_string_length(pj);
        if (len == 0) {
            return BR_OK;
        }
        note_content(s, json_string_value(pj), len);
        return emit_delta(s,
                          json_pack("{s:[{s:I, s:{s:O}}]}", "tool_calls", "index",
                                    (json_int_t)s->tool_index, "function", "arguments", pj),
                          NULL);
    }
    /* thinking_delta, signature_delta, citations_delta ...: nothing to forward */
    return BR_OK;
}

static int on_block_stop(struct br__anthropic_stream *s, const json_t *ev)
{
    int64_t index;
    if (s->block == BR__ANTHROPIC_BLOCK_NONE || get_index(ev, &index) != BR_OK ||
        index != s->block_index) {
        return BR_ERR_PARSE;
    }
    s->block = BR__ANTHROPIC_BLOCK_NONE;
    return BR_OK;
}

static int on_message_delta(struct br__anthropic_stream *s, const json_t *ev)
{
    const json_t *delta = json_object_get(ev, "delta");
    const json_t *stop = json_object_get(delta, "stop_reason");
    if (!json_is_object(delta) || (stop && !json_is_null(stop) && !json_is_string(stop))) {
        return BR_ERR_PARSE;
    }
    if (br__anthropic_usage_merge(json_object_get(ev, "usage"), s->usage_parts, &s->usage)) {
        s->saw_output_usage = true;
    }
    s->finish_reason = br__anthropic_finish_reason(json_string_value(stop));
    return emit_delta(s, json_object(), s->finish_reason);
}

static int on_message_stop(struct br__anthropic_stream *s)
{
    int rc = BR_OK;
    if (!s->finish_reason) {
        /* No message_delta came: close the choice anyway so that the client sees an end. */
        s->finish_reason = "stop";
        rc = emit_delta(s, json_object(), s->finish_reason);
    }
    s->finished = true;
    if (rc != BR_OK || !s->include_usage) {
        return rc;
    }
    struct br_usage u = s->usage;
    u.completion_tokens = br__anthropic_stream_output_tokens(s);
    return emit_json(s,
                     json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", s->id, "object",
                               "chat.completion.chunk", "created", (json_int_t)s->created, "model",
                               s->model, "choices", "usage", br__anthropic_usage_json(&u)));
}

static int on_error(struct br__anthropic_stream *s, const json_t *ev)
{
    const json_t *e = json_object_get(ev, "error");
    const char *type = json_string_value(json_object_get(e, "type"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    (void)snprintf(s->error_type, sizeof(s->error_type), "%s", type ? type : "api_error");
    (void)snprintf(s->error_message, sizeof(s->error_message), "%s",
                   msg ? msg : "the upstream stream reported an error");
    return BR_ERR_UPSTREAM;
}

int br__anthropic_stream_feed(struct br__anthropic_stream *s, struct br_slice event,
                              struct br_slice data)
{
    (void)event; /* the data's "type" is authoritative; the event name repeats it */
    int rc = BR_OK;
    json_t *ev = json_loadb(data.ptr ? data.ptr : "", data.len, 0, NULL);
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (!type) {
        rc = BR_ERR_PARSE;
        goto out;
    }
    if (strcmp(type, "error") == 0) {
        rc = on_error(s, ev);
    } else if (s->finished || strcmp(type, "ping") == 0) {
        rc = BR_OK;
    } else if (strcmp(type, "message_start") == 0) {
        rc = on_message_start(s, ev);
    } else if (!s->started) {
        /* Only ping and error may come before message_start; unknown types are ignored. */
        bool known = strcmp(type, "content_block_start") == 0 ||
                     strcmp(type, "content_block_delta") == 0 ||
                     strcmp(type, "content_block_stop") == 0 ||
                     strcmp(type, "message_delta") == 0 || strcmp(type, "message_stop") == 0;
        rc = known ? BR_ERR_PARSE : BR_OK;
    } else if (strcmp(type, "content_block_start") == 0) {
        rc = on_block_start(s, ev);
    } else if (strcmp(type, "content_block_delta") == 0) {
        rc = on_block_delta(s, ev);
    } else if (strcmp(type, "content_block_stop") == 0) {
        rc = on_block_stop(s, ev);
    } else if (strcmp(type, "message_delta") == 0) {
        rc = on_message_delta(s, ev);
    } else if (strcmp(type, "message_stop") == 0) {
        rc = on_message_stop(s);
    }
    /* Other types: the API's versioning policy allows new events; they are skipped. */
out:
    json_decref(ev);
    return rc;
}

/* Serialises ev (consumed) and feeds it as one event. */
static int feed_json(struct br__anthropic_stream *s, json_t *ev)
{
    struct br_buf b;
    if (!ev) {
        return BR_ERR_NOMEM;
    }
    br_buf_init(&b, CHUNK_MAX);
    int rc = br__anthropic_json_dump(ev, &b);
    json_decref(ev);
    if (rc == BR_OK) {
        rc = br__anthropic_stream_feed(s, BR_SLICE_LIT(""), br_slice_make(b.ptr, b.len));
    }
    br_buf_cleanup(&b);
    return rc;
}

/* content_block_start (with an empty body), one delta carrying it all, content_block_stop. */
static int feed_block(struct br__anthropic_stream *s, const json_t *block, size_t i)
{
    const char *type = json_string_value(json_object_get(block, "type"));
    json_t *start = json_deep_copy(block);
    json_t *delta = NULL;
    int rc = BR_OK;
    if (!start) {
        return BR_ERR_NOMEM;
    }
    if (type && strcmp(type, "text") == 0 && json_is_string(json_object_get(block, "text"))) {
        delta =
            json_pack("{s:s, s:O}", "type", "text_delta", "text", json_object_get(block, "text"));
        rc = json_object_set_new(start, "text", json_string("")) == 0 ? BR_OK : BR_ERR_NOMEM;
    } else if (type && strcmp(type, "tool_use") == 0) {
        struct br_buf args;
        const json_t *input = json_object_get(block, "input");
        br_buf_init(&args, CHUNK_MAX);
        rc = input ? br__anthropic_json_dump(input, &args) : br_buf_append_cstr(&args, "{}");
        if (rc == BR_OK) {
            delta = json_pack("{s:s, s:s%}", "type", "input_json_delta", "partial_json", args.ptr,
                              args.len);
            rc = json_object_set_new(start, "input", json_object()) == 0 ? BR_OK : BR_ERR_NOMEM;
        }
        br_buf_cleanup(&args);
    }
    if (rc != BR_OK) {
        json_decref(start);
        json_decref(delta);
        return rc;
    }
    rc = feed_json(s, json_pack("{s:s, s:I, s:o}", "type", "content_block_start", "index",
                                (json_int_t)i, "content_block", start));
    if (rc == BR_OK && delta) {
        rc = feed_json(s, json_pack("{s:s, s:I, s:O}", "type", "content_block_delta", "index",
                                    (json_int_t)i, "delta", delta));
    }
    json_decref(delta);
    return rc == BR_OK ? feed_json(s, json_pack("{s:s, s:I}", "type", "content_block_stop", "index",
                                                (json_int_t)i))
                       : rc;
}

int br__anthropic_stream_from_message(struct br__anthropic_stream *s, const char *body, size_t len)
{
    json_t *msg = json_loadb(body ? body : "", len, 0, NULL);
    const json_t *content = json_object_get(msg, "content");
    const char *type = json_string_value(json_object_get(msg, "type"));
    const json_t *stop = json_object_get(msg, "stop_reason");
    int rc = BR_ERR_PARSE;
    if (!json_is_array(content) || (type && strcmp(type, "message") != 0) ||
        (stop && !json_is_null(stop) && !json_is_string(stop))) {
        goto out;
    }
    json_t *head = json_copy(msg);
    if (!head || json_object_set_new(head, "content", json_array()) != 0) {
        json_decref(head);
        rc = BR_ERR_NOMEM;
        goto out;
    }
    rc = feed_json(s, json_pack("{s:s, s:o}", "type", "message_start", "message", head));
    size_t i;
    const json_t *block;
    json_array_foreach(content, i, block)
    {
        rc = rc == BR_OK ? feed_block(s, block, i) : rc;
    }
    if (rc == BR_OK) {
        const json_t *usage = json_object_get(msg, "usage");
        json_t *ev =
            json_pack("{s:s, s:{s:O?}}", "type", "message_delta", "delta", "stop_reason", stop);
        if (ev && json_is_object(usage) && json_object_set(ev, "usage", (json_t *)usage) != 0) {
            json_decref(ev);
            ev = NULL;
        }
        rc = feed_json(s, ev);
    }
    rc = rc == BR_OK ? feed_json(s, json_pack("{s:s}", "type", "message_stop")) : rc;
out:
    json_decref(msg);
    return rc;
}
