/* SPDX-License-Identifier: MIT */
/*
 * The pieces of a cascade that look inside bodies: asking an OpenAI-compatible upstream for
 * token log-probabilities, reading an answer's confidence from them, building the
 * self-verification request and reading its yes/no, and turning an accepted non-streamed
 * answer into the SSE chunks a streaming client expects. Also the answer text for body
 * logging. These run only on routed requests that need them (a cascade already costs at least
 * one extra upstream call), so jansson documents are fine here.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/json.h"

int br__body_with_logprobs(br_arena *a, struct br_slice body, struct br_slice *out)
{
    struct br_buf b;
    br_buf_init(&b, body.len + 64);
    struct br_json_iter it;
    struct br_json_member m;
    int rc = br_buf_append_cstr(&b, "{\"logprobs\":true");
    if (rc == BR_OK) {
        rc = br_json_obj_iter_init(&it, body);
    }
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        if (br_json_key_eq(m.key, "logprobs")) {
            continue;
        }
        rc = br_buf_append(&b, ",", 1);
        if (rc == BR_OK) {
            /* The member exactly as the client wrote it, from its key to the end of its value. */
            rc = br_buf_append(&b, body.ptr + m.start, m.end - m.start);
        }
    }
    if (rc == BR_ERR_NOTFOUND) {
        rc = br_buf_append(&b, "}", 1);
    }
    if (rc == BR_OK) {
        char *copy = br_arena_strndup(a, b.ptr, b.len);
        rc = copy ? BR_OK : BR_ERR_NOMEM;
        *out = br_slice_make(copy, copy ? b.len : 0);
    }
    br_buf_cleanup(&b);
    return rc == BR_ERR_LIMIT ? BR_ERR_NOMEM : rc;
}

static json_t *first_choice(json_t *doc)
{
    return json_array_get(json_object_get(doc, "choices"), 0);
}

int br__answer_logprob_confidence(struct br_slice answer, enum br_cascade_aggregate agg,
                                  double *out)
{
    json_t *doc = json_loadb(answer.ptr, answer.len, 0, NULL);
    json_t *content = json_object_get(json_object_get(first_choice(doc), "logprobs"), "content");
    size_t n = json_array_size(content);
    double sum = 0;
    double min = 0;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *lp = json_object_get(json_array_get(content, i), "logprob");
        if (!json_is_number(lp)) {
            continue;
        }
        double v = json_number_value(lp);
        sum += v;
        min = used == 0 || v < min ? v : min;
        used++;
    }
    json_decref(doc);
    if (used == 0) {
        return BR_ERR_NOTFOUND;
    }
    *out = agg == BR_CASCADE_AGGREGATE_MIN ? min : sum / (double)used;
    return BR_OK;
}

int br__answer_drop_logprobs(br_arena *a, struct br_slice answer, struct br_slice *out)
{
    json_t *doc = json_loadb(answer.ptr, answer.len, 0, NULL);
    json_t *choices = json_object_get(doc, "choices");
    for (size_t i = 0; i < json_array_size(choices); i++) {
        json_object_set_new(json_array_get(choices, i), "logprobs", json_null());
    }
    size_t len = 0;
    char *text = doc ? br__json_dump(a, doc, &len) : NULL;
    json_decref(doc);
    if (!text) {
        return doc ? BR_ERR_NOMEM : BR_ERR_PARSE;
    }
    *out = br_slice_make(text, len);
    return BR_OK;
}

char *br__answer_text(br_arena *a, struct br_slice answer, size_t *len_out)
{
    json_t *doc = json_loadb(answer.ptr, answer.len, 0, NULL);
    json_t *content = json_object_get(json_object_get(first_choice(doc), "message"), "content");
    char *text = NULL;
    *len_out = 0;
    if (json_is_string(content)) {
        text = br_arena_strndup(a, json_string_value(content), json_string_length(content));
        *len_out = text ? json_string_length(content) : 0;
    }
    json_decref(doc);
    return text;
}

int br__verify_body(br_arena *a, const char *question, size_t qlen, struct br_slice answer,
                    int64_t max_tokens, bool logprobs, struct br_slice *out)
{
    size_t alen = 0;
    char *atext = br__answer_text(a, answer, &alen);
    json_t *q = json_stringn(question, qlen);
    json_t *ans = json_stringn(atext ? atext : "", alen);
    char *prompt = NULL;
    int rc = BR_ERR_NOMEM;
    if (!q || !ans) {
        goto out;
    }
    prompt = br_arena_sprintf(a,
                              "Question:\n%s\n\nProposed answer:\n%s\n\nIs the proposed answer "
                              "correct and complete? Reply with one word: yes or no.",
                              json_string_value(q), json_string_value(ans));
    if (!prompt) {
        goto out;
    }
    json_t *body = json_pack(
        "{s:s, s:[{s:s, s:s}, {s:s, s:s}], s:I, s:i}", "model", "verifier", "messages", "role",
        "system", "content", "You check answers. Reply with exactly one word: yes or no.", "role",
        "user", "content", prompt, "max_tokens", (json_int_t)max_tokens, "temperature", 0);
    if (body && logprobs) {
        json_object_set_new(body, "logprobs", json_true());
        json_object_set_new(body, "top_logprobs", json_integer(5));
    }
    size_t len = 0;
    char *text = body ? br__json_dump(a, body, &len) : NULL;
    json_decref(body);
    if (text) {
        *out = br_slice_make(text, len);
        rc = BR_OK;
    }
out:
    json_decref(q);
    json_decref(ans);
    return rc;
}

/* "yes" / "no" / neither (-1), from a token or the start of the text. */
static int yes_no(const char *s)
{
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '"' || *s == '*') {
        s++;
    }
    if ((s[0] == 'y' || s[0] == 'Y') && (s[1] == 'e' || s[1] == 'E') &&
        (s[2] == 's' || s[2] == 'S')) {
        return 1;
    }
    if ((s[0] == 'n' || s[0] == 'N') && (s[1] == 'o' || s[1] == 'O')) {
        return 0;
    }
    return -1;
}

double br__verify_p_yes(struct br_slice answer)
{
    json_t *doc = json_loadb(answer.ptr, answer.len, 0, NULL);
    json_t *choice = first_choice(doc);
    json_t *content = json_object_get(json_object_get(choice, "message"), "content");
    json_t *first =
        json_array_get(json_object_get(json_object_get(choice, "logprobs"), "content"), 0);
    double p = 0.5; /* neither yes nor no: undecided */
    int said = json_is_string(content) ? yes_no(json_string_value(content)) : -1;
    if (said >= 0) {
        p = said;
    }
    /* With log-probabilities, P(yes) / (P(yes) + P(no)) over the first token's alternatives. */
    json_t *tops = json_object_get(first, "top_logprobs");
    double py = 0;
    double pn = 0;
    for (size_t i = 0; i < json_array_size(tops); i++) {
        json_t *t = json_array_get(tops, i);
        json_t *tok = json_object_get(t, "token");
        json_t *lp = json_object_get(t, "logprob");
        if (!json_is_string(tok) || !json_is_number(lp)) {
            continue;
        }
        int yn = yes_no(json_string_value(tok));
        if (yn == 1) {
            py += exp(json_number_value(lp));
        } else if (yn == 0) {
            pn += exp(json_number_value(lp));
        }
    }
    if (py + pn > 0) {
        p = py / (py + pn);
    } else if (said >= 0 && json_is_number(json_object_get(first, "logprob"))) {
        /* Only the chosen token: its probability, for "yes", or one minus it for "no". */
        double pt = exp(json_number_value(json_object_get(first, "logprob")));
        p = said ? pt : 1.0 - pt;
    }
    json_decref(doc);
    return p;
}

/* Serialises j (consumed) and hands it to emit. */
static int emit_json(json_t *j, int (*emit)(void *user, const char *json, size_t n), void *user)
{
    if (!j) {
        return BR_ERR_NOMEM;
    }
    size_t len = 0;
    char *text = br__json_dump_heap(j, &len);
    json_decref(j);
    if (!text) {
        return BR_ERR_NOMEM;
    }
    int rc = emit(user, text, len);
    br_free(text);
    return rc;
}

/* Tool calls of a message as stream deltas carry their index. */
static json_t *indexed_tool_calls(json_t *calls)
{
    json_t *out = json_array();
    for (size_t i = 0; out && i < json_array_size(calls); i++) {
        json_t *c = json_deep_copy(json_array_get(calls, i));
        if (c) {
            json_object_set_new(c, "index", json_integer((json_int_t)i));
            json_array_append_new(out, c);
        }
    }
    return out;
}

int br__answer_to_chunks(struct br_slice answer, bool with_usage, const struct br_usage *u,
                         int (*emit)(void *user, const char *json, size_t n), void *user)
{
    json_t *doc = json_loadb(answer.ptr, answer.len, 0, NULL);
    if (!doc) {
        return BR_ERR_PARSE;
    }
    json_t *id = json_object_get(doc, "id");
    json_t *created = json_object_get(doc, "created");
    json_t *model = json_object_get(doc, "model");
    json_t *choices = json_object_get(doc, "choices");
    int rc = BR_OK;
    for (size_t i = 0; rc == BR_OK && i < json_array_size(choices); i++) {
        json_t *ch = json_array_get(choices, i);
        json_t *msg = json_object_get(ch, "message");
        json_t *delta = json_object();
        json_object_set_new(delta, "role", json_string("assistant"));
        json_t *content = json_object_get(msg, "content");
        json_object_set(delta, "content", content ? content : json_null());
        json_t *calls = json_object_get(msg, "tool_calls");
        if (json_array_size(calls) > 0) {
            json_object_set_new(delta, "tool_calls", indexed_tool_calls(calls));
        }
        json_t *chunk = json_pack("{s:O?, s:s, s:O?, s:O?, s:[{s:O, s:o, s:n, s:n}]}", "id", id,
                                  "object", "chat.completion.chunk", "created", created, "model",
                                  model, "choices", "index", json_object_get(ch, "index"), "delta",
                                  delta, "logprobs", "finish_reason");
        rc = emit_json(chunk, emit, user);
        if (rc != BR_OK) {
            break;
        }
        json_t *fin = json_object_get(ch, "finish_reason");
        chunk = json_pack("{s:O?, s:s, s:O?, s:O?, s:[{s:O, s:{}, s:n, s:O?}]}", "id", id, "object",
                          "chat.completion.chunk", "created", created, "model", model, "choices",
                          "index", json_object_get(ch, "index"), "delta", "logprobs",
                          "finish_reason", fin);
        rc = emit_json(chunk, emit, user);
    }
    if (rc == BR_OK && with_usage) {
        json_t *chunk =
            json_pack("{s:O?, s:s, s:O?, s:O?, s:[], s:{s:I, s:I, s:I}}", "id", id, "object",
                      "chat.completion.chunk", "created", created, "model", model, "choices",
                      "usage", "prompt_tokens", (json_int_t)u->prompt_tokens, "completion_tokens",
                      (json_int_t)u->completion_tokens, "total_tokens",
                      (json_int_t)u->prompt_tokens + (json_int_t)u->completion_tokens);
        rc = emit_json(chunk, emit, user);
    }
    json_decref(doc);
    return rc;
}

int br__chunk_text_append(struct br_buf *b, struct br_slice chunk)
{
    struct br_slice choices = br_json_obj_get(chunk, "choices");
    struct br_json_iter it;
    struct br_slice ch;
    if (!choices.ptr || br_json_arr_iter_init(&it, choices) != BR_OK ||
        br_json_arr_iter_next(&it, &ch) != BR_OK) {
        return BR_OK;
    }
    struct br_slice delta = br_json_obj_get(ch, "delta");
    struct br_slice content = delta.ptr ? br_json_obj_get(delta, "content") : delta;
    if (!content.ptr || br_json_type_of(content) != BR_JSON_STRING) {
        return BR_OK;
    }
    long long n = br_json_string_decoded_len(content);
    if (n < 0 || br_buf_reserve(b, (size_t)n + 1) != BR_OK) {
        return BR_ERR_LIMIT;
    }
    size_t len = 0;
    if (br_json_string_decode(content, b->ptr + b->len, b->cap - b->len, &len) == BR_OK) {
        b->len += len;
    }
    return BR_OK;
}
