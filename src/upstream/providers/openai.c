/* SPDX-License-Identifier: MIT */
/*
 * The `openai` provider: any server that speaks OpenAI's /chat/completions (OpenAI, vLLM,
 * Ollama, TGI, llama.cpp server, Groq, Together ...). The client's body goes upstream nearly
 * untouched: the raw bytes are spliced (model replaced, stream_options.include_usage forced on
 * for streams) rather than re-serialised, so unknown fields and number spellings survive.
 * Answers come back unchanged too: a non-streamed body goes to on_body as received, streamed
 * chunks go to on_chunk as received; they are validated and read for accounting on their raw
 * text (core/json), without building documents.
 *
 * The stream handling (br__openai_stream_*) is a pure function of the upstream bytes so that
 * it is unit-tested and fuzzed without sockets; the call plumbing below feeds it.
 *
 * Timing of on_begin: as late as possible (first forwarded chunk, or a validated body), so that
 * an upstream that fails before producing anything still leaves the caller free to answer with
 * an error status or to fall back to another model.
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "upstream/provider.h"
#include "upstream/providers/providers_int.h"

#define STREAM_MAX_EVENT  ((size_t)4 << 20)  /* one SSE event */
#define STREAM_MAX_ERROR  ((size_t)64 << 10) /* a mid-stream error object */
#define ERROR_BODY_MAX    ((size_t)64 << 10) /* non-2xx body kept for the client */
#define SUCCESS_BODY_MAX  ((size_t)64 << 20) /* non-streamed answer */
#define REQUEST_EXTRA_MAX ((size_t)64 << 10) /* bytes the splice may add to the client body */

/* ---- stream processor ----------------------------------------------------------------- */

void br__openai_stream_init(struct br__openai_stream *st, bool client_wants_usage,
                            void (*on_chunk)(void *user, struct br_slice json), void *user)
{
    memset(st, 0, sizeof(*st));
    br_sse_parser_init(&st->sse, STREAM_MAX_EVENT);
    st->client_wants_usage = client_wants_usage;
    st->on_chunk = on_chunk;
    st->user = user;
    br_buf_init(&st->scratch, STREAM_MAX_EVENT);
    br_buf_init(&st->error_body, STREAM_MAX_ERROR);
}

void br__openai_stream_cleanup(struct br__openai_stream *st)
{
    br_sse_parser_cleanup(&st->sse);
    br_buf_cleanup(&st->scratch);
    br_buf_cleanup(&st->error_body);
}

/* Decodes the JSON string v into dst (cap bytes), truncating on a UTF-8 boundary. */
static void copy_str(char *dst, size_t cap, struct br_slice v)
{
    size_t len = 0;
    if (br_json_string_decode(v, dst, cap, &len) == BR_ERR_LIMIT) {
        size_t n = strlen(dst);
        while (n > 0 && ((unsigned char)dst[n - 1] & 0xC0) == 0x80) {
            n--; /* drop continuation bytes of a cut sequence ... */
        }
        if (n > 0 && ((unsigned char)dst[n - 1] & 0xC0) == 0xC0) {
            n--; /* ... and its lead byte */
        }
        dst[n] = '\0';
    }
}

/* Token estimate of a string value: decoded when short (the usual delta), raw otherwise. */
static int64_t estimate_str(struct br_slice v)
{
    char buf[1024];
    size_t len = 0;
    if (br_json_string_decode(v, buf, sizeof(buf), &len) == BR_OK) {
        return br_tokens_estimate(buf, len);
    }
    return br_tokens_estimate(v.ptr + 1, v.len > 2 ? v.len - 2 : 0);
}

static void count_text(struct br__openai_stream *st, struct br_slice v, bool visible)
{
    if (br_json_type_of(v) != BR_JSON_STRING || v.len <= 2) {
        return;
    }
    st->n_deltas++;
    st->est_completion += estimate_str(v);
    if (visible && st->t_first_token_ns == 0) {
        st->t_first_token_ns = br_clock_now_ns();
    }
}

static void count_tool_calls(struct br__openai_stream *st, struct br_slice calls)
{
    struct br_json_iter it;
    struct br_slice tc;
    int rc = br_json_arr_iter_init(&it, calls);
    while (rc == BR_OK && (rc = br_json_arr_iter_next(&it, &tc)) == BR_OK) {
        struct br_slice fn = br_json_obj_get(tc, "function");
        struct br_slice name = br_json_obj_get(fn, "name");
        struct br_slice args = br_json_obj_get(fn, "arguments");
        st->n_deltas++;
        if (br_json_type_of(name) == BR_JSON_STRING) {
            st->est_completion += estimate_str(name);
        }
        if (br_json_type_of(args) == BR_JSON_STRING) {
            st->est_completion += estimate_str(args);
        }
        if (st->t_first_token_ns == 0) {
            st->t_first_token_ns = br_clock_now_ns();
        }
    }
}

static int emit(struct br__openai_stream *st, struct br_slice json)
{
    bool fold = false;
    for (size_t i = 0; i < json.len && !fold; i++) {
        fold = json.ptr[i] == '\n' || json.ptr[i] == '\r';
    }
    if (fold) {
        /* Raw newlines in valid JSON are whitespace; keep them out of the SSE framing. */
        br_buf_reset(&st->scratch);
        int rc = br_buf_append(&st->scratch, json.ptr, json.len);
        if (rc != BR_OK) {
            return rc;
        }
        for (size_t i = 0; i < st->scratch.len; i++) {
            if (st->scratch.ptr[i] == '\n' || st->scratch.ptr[i] == '\r') {
                st->scratch.ptr[i] = ' ';
            }
        }
        json = br_slice_make(st->scratch.ptr, st->scratch.len);
    }
    st->n_chunks++;
    if (st->on_chunk) {
        st->on_chunk(st->user, json);
    }
    return BR_OK;
}

/* Keeps the upstream's error for the caller: its own JSON when it is an error object. */
static int stream_error(struct br__openai_stream *st, struct br_slice data, const json_t *doc)
{
    br_buf_reset(&st->error_body);
    int rc;
    if (json_is_object(json_object_get(doc, "error"))) {
        rc = br_buf_append(&st->error_body, data.ptr, data.len);
    } else {
        const json_t *msg = json_object_get(doc, "error");
        if (!json_is_string(msg)) {
            msg = json_object_get(doc, "message");
        }
        rc = br_buf_append_cstr(&st->error_body, "{\"error\":{\"message\":");
        if (rc == BR_OK && json_is_string(msg) && json_string_length(msg) <= 1024) {
            rc = br__json_append_string(&st->error_body, json_string_value(msg),
                                        json_string_length(msg));
        } else if (rc == BR_OK) {
            rc = br_buf_append_cstr(&st->error_body, "\"the upstream reported an error\"");
        }
        if (rc == BR_OK) {
            rc = br_buf_append_cstr(&st->error_body, ",\"type\":\"upstream_error\",\"param\":null,"
                                                     "\"code\":\"upstream_stream_error\"}}");
        }
    }
    if (rc == BR_ERR_LIMIT) {
        br_buf_reset(&st->error_body);
        rc = br_buf_append_cstr(&st->error_body,
                                "{\"error\":{\"message\":\"the upstream reported an error\","
                                "\"type\":\"upstream_error\",\"param\":null,"
                                "\"code\":\"upstream_stream_error\"}}");
    }
    return rc == BR_OK ? BR_ERR_UPSTREAM : rc;
}

static struct br_slice trim_json_ws(struct br_slice s)
{
    if (!s.ptr) {
        return s;
    }
    while (s.len > 0 &&
           (s.ptr[0] == ' ' || s.ptr[0] == '\t' || s.ptr[0] == '\n' || s.ptr[0] == '\r')) {
        s.ptr++;
        s.len--;
    }
    while (s.len > 0 && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t' ||
                         s.ptr[s.len - 1] == '\n' || s.ptr[s.len - 1] == '\r')) {
        s.len--;
    }
    return s;
}

static void scan_choice_delta(struct br__openai_stream *st, struct br_slice choice)
{
    struct br_slice delta = {NULL, 0};
    struct br_slice fr = {NULL, 0};
    struct br_json_iter it;
    struct br_json_member m;
    int rc = br_json_obj_iter_init(&it, choice);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        if (br_json_key_eq(m.key, "delta")) {
            delta = m.value;
        } else if (br_json_key_eq(m.key, "finish_reason")) {
            fr = m.value;
        }
    }
    rc = br_json_obj_iter_init(&it, delta);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        if (br_json_key_eq(m.key, "content") || br_json_key_eq(m.key, "refusal")) {
            count_text(st, m.value, true);
        } else if (br_json_key_eq(m.key, "reasoning_content") ||
                   br_json_key_eq(m.key, "reasoning")) {
            count_text(st, m.value, false);
        } else if (br_json_key_eq(m.key, "tool_calls") &&
                   br_json_type_of(m.value) == BR_JSON_ARRAY) {
            count_tool_calls(st, m.value);
        }
    }
    if (br_json_type_of(fr) == BR_JSON_STRING) {
        copy_str(st->finish_reason, sizeof(st->finish_reason), fr);
        st->saw_finish = true;
    }
}

/* The members of a chunk or completion the accounting reads (last occurrence wins). */
struct top_fields {
    struct br_slice error;
    struct br_slice choices;
    struct br_slice usage;
    struct br_slice model;
};

static void top_fields(struct br_slice obj, struct top_fields *f)
{
    struct br_json_iter it;
    struct br_json_member m;
    memset(f, 0, sizeof(*f));
    int rc = br_json_obj_iter_init(&it, obj);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        if (br_json_key_eq(m.key, "choices")) {
            f->choices = m.value;
        } else if (br_json_key_eq(m.key, "usage")) {
            f->usage = m.value;
        } else if (br_json_key_eq(m.key, "model")) {
            f->model = m.value;
        } else if (br_json_key_eq(m.key, "error")) {
            f->error = m.value;
        }
    }
}

static bool array_empty(struct br_slice arr)
{
    struct br_json_iter it;
    struct br_slice el;
    return br_json_arr_iter_init(&it, arr) == BR_OK &&
           br_json_arr_iter_next(&it, &el) == BR_ERR_NOTFOUND;
}

/* A valid JSON object (upstream text may carry \u0000, which is fine to pass on). */
static bool is_object(struct br_slice data)
{
    return br_json_validate(data.ptr, data.len, BR_JSON_ALLOW_NUL, NULL, NULL) == BR_OK &&
           br_json_type_of(data) == BR_JSON_OBJECT;
}

/* The error path is rare: there a document is fine. */
static int stream_error_text(struct br__openai_stream *st, struct br_slice data)
{
    json_t *doc = json_loadb(data.ptr, data.len, JSON_ALLOW_NUL, NULL);
    int rc = stream_error(st, data, doc);
    json_decref(doc);
    return rc;
}

static int payload(struct br__openai_stream *st, struct br_slice data, bool error_event)
{
    data = trim_json_ws(data);
    if (data.len == 0 && !error_event) {
        return BR_OK; /* an empty keep-alive event */
    }
    if (!error_event && br_slice_eq_cstr(data, "[DONE]")) {
        st->done = true;
        return BR_OK;
    }
    if (st->done) {
        return BR_OK; /* nothing counts after [DONE] */
    }
    if (!is_object(data)) {
        return error_event ? stream_error(st, data, NULL) : BR_ERR_PARSE;
    }
    struct top_fields f;
    top_fields(data, &f);
    enum br_json_type et = f.error.ptr ? br_json_type_of(f.error) : BR_JSON_NULL;
    if (error_event || (et != BR_JSON_NULL && !f.choices.ptr)) {
        return stream_error_text(st, data);
    }
    if (br__openai_usage_read(f.usage, &st->usage)) {
        st->have_usage = true;
    }
    enum br_json_type ct = f.choices.ptr ? br_json_type_of(f.choices) : BR_JSON_NULL;
    bool usage_only = br_json_type_of(f.usage) == BR_JSON_OBJECT &&
                      (ct == BR_JSON_NULL || (ct == BR_JSON_ARRAY && array_empty(f.choices)));
    if (ct == BR_JSON_ARRAY) {
        struct br_json_iter it;
        struct br_slice choice;
        int rc = br_json_arr_iter_init(&it, f.choices);
        while (rc == BR_OK && (rc = br_json_arr_iter_next(&it, &choice)) == BR_OK) {
            scan_choice_delta(st, choice);
        }
    }
    if (st->model[0] == '\0' && br_json_type_of(f.model) == BR_JSON_STRING) {
        copy_str(st->model, sizeof(st->model), f.model);
    }
    if (usage_only && !st->client_wants_usage) {
        return BR_OK; /* accounted, not shown: the client did not ask for usage */
    }
    return emit(st, data);
}

static int on_sse_event(void *user, const struct br_sse_event *ev)
{
    struct br__openai_stream *st = user;
    if (st->stop) {
        return 1;
    }
    bool error_event = br_slice_eq_cstr(ev->event, "error");
    if (ev->event.len > 0 && !error_event && !br_slice_eq_cstr(ev->event, "message")) {
        return BR_OK; /* a named event chat completions do not define */
    }
    int rc = payload(st, ev->data, error_event);
    if (rc == BR_OK && st->stop) {
        return 1;
    }
    return rc;
}

static int settle(struct br__openai_stream *st, int rc)
{
    if (rc > 0) {
        return BR_OK; /* stopped by the owner */
    }
    if (rc != BR_OK) {
        st->error = rc;
    }
    return rc;
}

int br__openai_stream_feed(struct br__openai_stream *st, const char *data, size_t n)
{
    if (st->error) {
        return st->error;
    }
    if (st->stop) {
        return BR_OK;
    }
    return settle(st, br_sse_parser_feed(&st->sse, data, n, on_sse_event, st));
}

int br__openai_stream_finish(struct br__openai_stream *st)
{
    if (st->error) {
        return st->error;
    }
    if (st->stop) {
        return BR_OK;
    }
    return settle(st, br_sse_parser_finish(&st->sse, 1, on_sse_event, st));
}

int br__openai_stream_payload(struct br__openai_stream *st, struct br_slice data)
{
    if (st->error) {
        return st->error;
    }
    if (st->stop) {
        return BR_OK;
    }
    return settle(st, payload(st, data, false));
}

static int dump_payload(struct br__openai_stream *st, const json_t *chunk)
{
    size_t need = json_dumpb(chunk, NULL, 0, JSON_COMPACT);
    if (need == 0) {
        return settle(st, BR_ERR_NOMEM);
    }
    char *text = br_malloc(need);
    if (!text) {
        return settle(st, BR_ERR_NOMEM);
    }
    json_dumpb(chunk, text, need, JSON_COMPACT);
    int rc = br__openai_stream_payload(st, br_slice_make(text, need));
    br_free(text);
    return rc;
}

static json_t *delta_of(const json_t *message)
{
    json_t *delta = json_is_object(message) ? json_deep_copy(message) : json_object();
    json_t *calls = json_object_get(delta, "tool_calls");
    size_t i;
    json_t *tc;
    json_array_foreach(calls, i, tc)
    {
        if (json_is_object(tc) && !json_object_get(tc, "index")) {
            json_object_set_new(tc, "index", json_integer((json_int_t)i));
        }
    }
    return delta;
}

static void copy_field(json_t *dst, const json_t *src, const char *key)
{
    json_t *v = json_object_get(src, key);
    if (v) {
        json_object_set(dst, key, v);
    }
}

static json_t *chunk_header(const json_t *doc)
{
    json_t *chunk = json_object();
    copy_field(chunk, doc, "id");
    json_object_set_new(chunk, "object", json_string("chat.completion.chunk"));
    copy_field(chunk, doc, "created");
    copy_field(chunk, doc, "model");
    copy_field(chunk, doc, "system_fingerprint");
    return chunk;
}

int br__openai_stream_from_completion(struct br__openai_stream *st, struct br_slice body)
{
    if (st->error) {
        return st->error;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(body.ptr ? body.ptr : "", body.len, JSON_ALLOW_NUL, &jerr);
    const json_t *choices = json_object_get(doc, "choices");
    if (!json_is_object(doc) || !json_is_array(choices)) {
        int rc = json_is_object(json_object_get(doc, "error"))
                     ? stream_error(st, trim_json_ws(body), doc)
                     : BR_ERR_PARSE;
        json_decref(doc);
        return settle(st, rc);
    }
    int rc = BR_ERR_NOMEM;
    json_t *chunk = chunk_header(doc);
    json_t *arr = json_array();
    size_t i;
    const json_t *choice;
    json_array_foreach(choices, i, choice)
    {
        json_t *c = json_object();
        const json_t *index = json_object_get(choice, "index");
        json_object_set_new(c, "index",
                            json_is_integer(index) ? json_copy((json_t *)index)
                                                   : json_integer((json_int_t)i));
        json_object_set_new(c, "delta", delta_of(json_object_get(choice, "message")));
        const json_t *lp = json_object_get(choice, "logprobs");
        json_object_set_new(c, "logprobs", lp ? json_deep_copy(lp) : json_null());
        const json_t *fr = json_object_get(choice, "finish_reason");
        json_object_set_new(c, "finish_reason", fr ? json_copy((json_t *)fr) : json_null());
        json_array_append_new(arr, c);
    }
    if (chunk && arr && json_object_set_new(chunk, "choices", arr) == 0) {
        arr = NULL;
        rc = dump_payload(st, chunk);
    }
    json_decref(arr);
    json_decref(chunk);
    const json_t *usage = json_object_get(doc, "usage");
    if (rc == BR_OK && json_is_object(usage)) {
        json_t *uc = chunk_header(doc);
        if (uc) {
            json_object_set_new(uc, "choices", json_array());
            json_object_set(uc, "usage", (json_t *)usage);
            rc = dump_payload(st, uc);
            json_decref(uc);
        } else {
            rc = settle(st, BR_ERR_NOMEM);
        }
    }
    json_decref(doc);
    return rc;
}

void br__openai_stream_usage(const struct br__openai_stream *st, const json_t *request,
                             struct br_usage *out)
{
    if (st->have_usage) {
        *out = st->usage;
        return;
    }
    memset(out, 0, sizeof(*out));
    out->prompt_tokens = br_tokens_estimate_chat(request);
    out->completion_tokens = st->n_deltas > st->est_completion ? st->n_deltas : st->est_completion;
    out->reported = false;
}

/* One pass over a choice of a completion: finish_reason, and (only when the upstream reported
 * no usage) the estimate of the message's output. */
static void scan_choice_message(struct br__openai_stream *st, struct br_slice choice)
{
    struct br_json_iter it;
    struct br_json_member m;
    struct br_slice msg = {NULL, 0};
    int rc = br_json_obj_iter_init(&it, choice);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        if (br_json_key_eq(m.key, "message")) {
            msg = m.value;
        } else if (br_json_key_eq(m.key, "finish_reason") &&
                   br_json_type_of(m.value) == BR_JSON_STRING) {
            copy_str(st->finish_reason, sizeof(st->finish_reason), m.value);
            st->saw_finish = true;
        }
    }
    if (st->have_usage) {
        return;
    }
    rc = br_json_obj_iter_init(&it, msg);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        if (br_json_key_eq(m.key, "content") && br_json_type_of(m.value) == BR_JSON_STRING) {
            st->est_completion += estimate_str(m.value);
        } else if (br_json_key_eq(m.key, "tool_calls") &&
                   br_json_type_of(m.value) == BR_JSON_ARRAY) {
            count_tool_calls(st, m.value);
        }
    }
}

int br__openai_body_scan(struct br__openai_stream *st, struct br_slice body)
{
    if (!body.ptr || !is_object(body)) {
        return BR_ERR_PARSE;
    }
    struct top_fields f;
    top_fields(body, &f);
    if (br_json_type_of(f.choices) != BR_JSON_ARRAY) {
        return BR_ERR_PARSE;
    }
    if (br__openai_usage_read(f.usage, &st->usage)) {
        st->have_usage = true;
    }
    if (br_json_type_of(f.model) == BR_JSON_STRING) {
        copy_str(st->model, sizeof(st->model), f.model);
    }
    struct br_json_iter it;
    struct br_slice choice;
    int rc = br_json_arr_iter_init(&it, f.choices);
    while (rc == BR_OK && (rc = br_json_arr_iter_next(&it, &choice)) == BR_OK) {
        scan_choice_message(st, choice);
    }
    return BR_OK;
}

/* ---- the call ------------------------------------------------------------------------- */

enum oa_mode {
    MODE_NONE,  /* no response head yet */
    MODE_ERROR, /* non-2xx: collect the body for the error */
    MODE_BODY,  /* 2xx JSON: collect, check, deliver whole */
    MODE_SSE,   /* 2xx event stream: chunks as they arrive */
};

struct oa_call {
    struct br_provider_call *call;
    br_upstream_call *up; /* NULL once the upstream call ended or was canceled */
    enum oa_mode mode;
    int status;
    bool begun;    /* sink->on_begin ran */
    bool finished; /* sink->on_done ran */
    bool canceled;
    uint64_t t_first_byte_ns;
    uint32_t retry_after_ms;
    struct br_buf buf;           /* MODE_ERROR / MODE_BODY bytes */
    struct br__openai_stream st; /* MODE_SSE, and the accounting for every mode */
};

static void oa_cleanup(void *data)
{
    struct oa_call *oc = data;
    if (oc->up) {
        br_upstream_call_cancel(oc->up);
        oc->up = NULL;
    }
    br_buf_cleanup(&oc->buf);
    br__openai_stream_cleanup(&oc->st);
}

static void begin(struct oa_call *oc)
{
    if (!oc->begun) {
        oc->begun = true;
        if (oc->call->sink->on_begin) {
            oc->call->sink->on_begin(oc->call->sink_user);
        }
    }
}

static void stream_chunk(void *user, struct br_slice json)
{
    struct oa_call *oc = user;
    begin(oc);
    if (!oc->canceled && oc->call->sink->on_chunk) {
        oc->call->sink->on_chunk(oc->call->sink_user, json);
    }
    if (oc->canceled) {
        oc->st.stop = true;
    }
}

static void fill_common(struct oa_call *oc, struct br_provider_result *res)
{
    br_arena *a = oc->call->arena;
    /* The request document is only needed (and only built) for an estimate. */
    br__openai_stream_usage(&oc->st, oc->st.have_usage ? NULL : br_provider_call_request(oc->call),
                            &res->usage);
    res->upstream_model =
        oc->st.model[0] ? br_arena_strndup(a, oc->st.model, strlen(oc->st.model)) : NULL;
    res->finish_reason = oc->st.finish_reason[0] ? br_arena_strndup(a, oc->st.finish_reason,
                                                                    strlen(oc->st.finish_reason))
                                                 : NULL;
    res->t_first_byte_ns = oc->t_first_byte_ns;
    res->t_first_token_ns = oc->st.t_first_token_ns;
    res->retry_after_ms = oc->retry_after_ms;
}

/* Hands the result to the sink. The caller must not touch oc afterwards. */
static void deliver(struct oa_call *oc, struct br_provider_result *res)
{
    fill_common(oc, res);
    oc->finished = true;
    oc->call->sink->on_done(oc->call->sink_user, res);
}

/* A failure of the stream processor, as a result. */
static void stream_failed(struct oa_call *oc, int rc, struct br_provider_result *res)
{
    br_arena *a = oc->call->arena;
    if (rc == BR_ERR_UPSTREAM) {
        struct br_slice body = br_slice_make(oc->st.error_body.ptr, oc->st.error_body.len);
        struct br_slice clean = br__provider_redact(a, body, oc->call->target->api_key);
        char *owned = clean.ptr == body.ptr ? br_arena_strndup(a, body.ptr, body.len) : NULL;
        if (clean.ptr == body.ptr) {
            clean = owned ? br_slice_make(owned, body.len) : (struct br_slice){NULL, 0};
        }
        if (clean.ptr) {
            res->rc = BR_ERR_UPSTREAM;
            res->status = 502;
            res->error_kind = BR_UPSTREAM_ERROR_OTHER;
            res->error_body = clean;
        } else {
            br__provider_fail(a, BR_ERR_NOMEM, 503, BR_UPSTREAM_ERROR_OTHER, "out of memory",
                              "server_error", NULL, res);
        }
    } else if (rc == BR_ERR_NOMEM) {
        br__provider_fail(a, BR_ERR_NOMEM, 503, BR_UPSTREAM_ERROR_OTHER, "out of memory",
                          "server_error", NULL, res);
    } else {
        br__provider_fail_transport(a, BR_UPSTREAM_ERROR_BAD_RESPONSE, res);
    }
    res->partial = oc->st.n_chunks > 0;
}

/* Stops the upstream call from inside its callbacks and reports the failure. */
static void abort_call(struct oa_call *oc, struct br_provider_result *res)
{
    if (oc->up) {
        br_upstream_call_cancel(oc->up);
        oc->up = NULL;
    }
    deliver(oc, res);
}

static bool has_json_type(struct br_slice ct)
{
    static const char needle[] = "json";
    for (size_t i = 0; i + 4 <= ct.len; i++) {
        bool eq = true;
        for (size_t k = 0; k < 4 && eq; k++) {
            int c = (unsigned char)ct.ptr[i + k];
            if (c >= 'A' && c <= 'Z') {
                c += 'a' - 'A';
            }
            eq = c == needle[k];
        }
        if (eq) {
            return true;
        }
    }
    return false;
}

static void up_on_head(void *user, const struct br_upstream_head *head)
{
    struct oa_call *oc = user;
    oc->status = head->status;
    oc->t_first_byte_ns = br_clock_now_ns();
    if (head->status >= 200 && head->status <= 299) {
        bool json = has_json_type(br__provider_header(head, "content-type"));
        oc->mode = oc->call->stream && !json ? MODE_SSE : MODE_BODY;
        br_buf_init(&oc->buf, SUCCESS_BODY_MAX);
    } else {
        oc->mode = MODE_ERROR;
        br_buf_init(&oc->buf, ERROR_BODY_MAX);
        if (head->status == 429 || head->status == 503) {
            oc->retry_after_ms = br__provider_retry_after_ms(head);
        }
    }
}

static void up_on_data(void *user, const char *data, size_t n)
{
    struct oa_call *oc = user;
    if (oc->canceled || oc->finished) {
        return;
    }
    struct br_provider_result res = {0};
    int rc;
    switch (oc->mode) {
    case MODE_ERROR:
        if (oc->buf.len < oc->buf.max) {
            size_t room = oc->buf.max - oc->buf.len;
            (void)br_buf_append(&oc->buf, data, n < room ? n : room); /* the rest is dropped */
        }
        return;
    case MODE_BODY:
        rc = br_buf_append(&oc->buf, data, n);
        if (rc != BR_OK) {
            if (rc == BR_ERR_LIMIT) {
                br__provider_fail_transport(oc->call->arena, BR_UPSTREAM_ERROR_TOO_LARGE, &res);
            } else {
                stream_failed(oc, rc, &res);
            }
            abort_call(oc, &res);
        }
        return;
    case MODE_SSE:
        rc = br__openai_stream_feed(&oc->st, data, n);
        if (oc->canceled) {
            return;
        }
        if (rc != BR_OK) {
            stream_failed(oc, rc, &res);
            abort_call(oc, &res);
            return;
        }
        if (oc->begun && oc->call->sink->on_flush) {
            oc->call->sink->on_flush(oc->call->sink_user);
        }
        return;
    case MODE_NONE:
    default:
        return;
    }
}

static void finish_success(struct oa_call *oc, struct br_provider_result *res)
{
    struct br_slice body = br_slice_make(oc->buf.ptr, oc->buf.len);
    int rc;
    if (oc->mode == MODE_BODY && oc->call->stream) {
        /* The server ignored "stream": replay its answer as chunks. */
        rc = br__openai_stream_from_completion(&oc->st, body);
    } else if (oc->mode == MODE_BODY) {
        rc = br__openai_body_scan(&oc->st, body);
        if (rc == BR_OK) {
            begin(oc);
            if (!oc->canceled && oc->call->sink->on_body) {
                oc->call->sink->on_body(oc->call->sink_user, body);
            }
        }
    } else {
        rc = br__openai_stream_finish(&oc->st);
    }
    if (oc->canceled) {
        return;
    }
    if (rc != BR_OK) {
        stream_failed(oc, rc, res);
        return;
    }
    if (oc->mode == MODE_SSE && !oc->st.done && !oc->st.saw_finish) {
        /* A clean HTTP end without [DONE] or any finish_reason: the answer was cut. */
        br__provider_fail_transport(oc->call->arena, BR_UPSTREAM_ERROR_CLOSED, res);
        res->partial = oc->st.n_chunks > 0;
        return;
    }
    begin(oc); /* an empty but complete stream */
    res->rc = BR_OK;
    res->status = 200;
    res->error_kind = BR_UPSTREAM_ERROR_NONE;
}

static void up_on_done(void *user, const struct br_upstream_stats *stats)
{
    struct oa_call *oc = user;
    oc->up = NULL;
    if (oc->canceled || oc->finished) {
        return;
    }
    struct br_provider_result res = {0};
    if (stats->error != BR_UPSTREAM_ERROR_NONE) {
        br__provider_fail_transport(oc->call->arena, stats->error, &res);
        res.partial = oc->st.n_chunks > 0;
    } else if (oc->mode == MODE_ERROR) {
        struct br_slice body = br_slice_make(oc->buf.ptr, oc->buf.len);
        br__provider_fail_http(oc->call->arena, oc->status, body, oc->call->target->api_key, &res);
    } else {
        finish_success(oc, &res);
        if (oc->canceled) {
            return;
        }
    }
    if (stats->t_first_byte_ns && !oc->t_first_byte_ns) {
        oc->t_first_byte_ns = stats->t_first_byte_ns;
    }
    deliver(oc, &res);
}

/* The body sent upstream: the client's bytes with model / stream / stream_options set. */
static int build_body(struct oa_call *oc, struct br_slice *out)
{
    const struct br_provider_call *call = oc->call;
    const char *model =
        call->target->upstream_model ? call->target->upstream_model : call->target->name;
    struct br_slice raw = call->raw_body;
    struct br_buf model_json;
    struct br_buf opts;
    struct br_buf body;
    br_buf_init(&model_json, REQUEST_EXTRA_MAX);
    br_buf_init(&opts, REQUEST_EXTRA_MAX);
    br_buf_init(&body, raw.len + REQUEST_EXTRA_MAX);
    char *dumped = NULL;
    int rc = BR_OK;
    if (raw.len == 0 && call->request) {
        /* No raw body (a request built internally): serialise the decoded one. */
        size_t need = json_dumpb(call->request, NULL, 0, JSON_COMPACT);
        dumped = need ? br_malloc(need) : NULL;
        if (!dumped) {
            rc = BR_ERR_NOMEM;
            goto out;
        }
        json_dumpb(call->request, dumped, need, JSON_COMPACT);
        raw = br_slice_make(dumped, need);
        br_buf_cleanup(&body);
        br_buf_init(&body, raw.len + REQUEST_EXTRA_MAX);
    }
    rc = br__json_append_string(&model_json, model ? model : "", model ? strlen(model) : 0);
    if (rc != BR_OK) {
        goto out;
    }
    struct br__json_edit edits[3] = {
        {.key = "model", .value = br_slice_make(model_json.ptr, model_json.len)},
        {.key = "stream", .value = BR_SLICE_LIT("false"), .only_if_present = true},
        {.key = "stream_options", .value = {NULL, 0}, .only_if_present = true},
    };
    size_t n_edits = 2;
    if (call->stream) {
        edits[1].value = BR_SLICE_LIT("true");
        edits[1].only_if_present = false;
        struct br_json_member m;
        static const char force[] = "{\"include_usage\":true}";
        rc = br_json_obj_find(raw, "stream_options", &m);
        if (rc == BR_OK && m.value.len > 0 && m.value.ptr[0] == '{') {
            struct br__json_edit usage_on = {.key = "include_usage", .value = BR_SLICE_LIT("true")};
            rc = br__json_edit(m.value, &usage_on, 1, &opts);
            edits[2].value = br_slice_make(opts.ptr, opts.len);
        } else if (rc == BR_OK || rc == BR_ERR_NOTFOUND) {
            rc = BR_OK;
            edits[2].value = BR_SLICE_LIT(force);
        }
        edits[2].only_if_present = false;
        n_edits = 3;
        if (rc != BR_OK) {
            goto out;
        }
    }
    rc = br__json_edit(raw, edits, n_edits, &body);
    if (rc != BR_OK) {
        goto out;
    }
    char *copy = br_arena_strndup(call->arena, body.ptr, body.len);
    if (!copy) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    *out = br_slice_make(copy, body.len);

out:
    br_free(dumped);
    br_buf_cleanup(&body);
    br_buf_cleanup(&opts);
    br_buf_cleanup(&model_json);
    return rc == BR_ERR_LIMIT ? BR_ERR_NOMEM : rc;
}

static int build_headers(struct oa_call *oc, const char ***out, size_t *n_out)
{
    const struct br_provider_target *t = oc->call->target;
    br_arena *a = oc->call->arena;
    size_t n = 0;
    const char **h = br_arena_calloc(a, 3 + t->n_extra_headers, sizeof(*h));
    if (!h) {
        return BR_ERR_NOMEM;
    }
    h[n++] = "Content-Type: application/json";
    h[n++] = oc->call->stream ? "Accept: text/event-stream" : "Accept: application/json";
    if (t->api_key && t->api_key[0]) {
        h[n] = br_arena_sprintf(a, "Authorization: Bearer %s", t->api_key);
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

static int oa_call_start(struct br_provider_call *call)
{
    if (!call || !call->target || !call->target->base_url || !call->arena || !call->sink ||
        !call->sink->on_done || !call->upstream) {
        return BR_ERR_INVAL;
    }
    br_arena *a = call->arena;
    struct oa_call *oc = br_arena_calloc(a, 1, sizeof(*oc));
    if (!oc) {
        return BR_ERR_NOMEM;
    }
    oc->call = call;
    br_buf_init(&oc->buf, SUCCESS_BODY_MAX);
    br__openai_stream_init(&oc->st, call->client_wants_usage, stream_chunk, oc);
    if (br_arena_cleanup_add(a, oa_cleanup, oc) != BR_OK) {
        br__openai_stream_cleanup(&oc->st);
        return BR_ERR_NOMEM;
    }
    const char *base = call->target->base_url;
    size_t base_len = strlen(base);
    while (base_len > 0 && base[base_len - 1] == '/') {
        base_len--;
    }
    char *url = br_arena_sprintf(a, "%.*s/chat/completions", (int)base_len, base);
    if (!url) {
        return BR_ERR_NOMEM;
    }
    const char **headers = NULL;
    size_t n_headers = 0;
    int rc = build_headers(oc, &headers, &n_headers);
    if (rc != BR_OK) {
        return rc;
    }
    struct br_slice body;
    rc = build_body(oc, &body);
    if (rc != BR_OK) {
        return rc;
    }
    struct br_upstream_request req = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .n_headers = n_headers,
        .body = body,
        .connect_timeout_ms = call->target->connect_timeout_ms,
        .first_byte_timeout_ms = call->target->first_byte_timeout_ms,
        .idle_timeout_ms = call->target->idle_timeout_ms,
    };
    static const struct br_upstream_callbacks cbs = {
        .on_head = up_on_head,
        .on_data = up_on_data,
        .on_done = up_on_done,
    };
    rc = br_upstream_call_start(call->upstream, &req, &cbs, oc, &oc->up);
    if (rc != BR_OK) {
        oc->up = NULL;
        return rc;
    }
    call->priv = oc;
    return BR_OK;
}

static void oa_call_cancel(struct br_provider_call *call, struct br_provider_result *partial)
{
    memset(partial, 0, sizeof(*partial));
    partial->rc = BR_ERR_CANCELED;
    partial->status = 499;
    partial->error_kind = BR_UPSTREAM_ERROR_CANCELED;
    partial->partial = true;
    struct oa_call *oc = call ? call->priv : NULL;
    if (!oc) {
        return;
    }
    if (!oc->finished && !oc->canceled) {
        oc->canceled = true;
        oc->st.stop = true;
        if (oc->up) {
            br_upstream_call_cancel(oc->up);
            oc->up = NULL;
        }
    }
    fill_common(oc, partial);
}

static int oa_model_create(const struct br_provider_target *t, void **state_out, char *err,
                           size_t errlen)
{
    *state_out = NULL;
    return br__provider_check_http_target(t, true, err, errlen);
}

static void oa_model_destroy(void *state)
{
    (void)state;
}

const struct br_provider_ops br_provider_openai = {
    .name = "openai",
    .model_create = oa_model_create,
    .model_destroy = oa_model_destroy,
    .call_start = oa_call_start,
    .call_cancel = oa_call_cancel,
};
