/* SPDX-License-Identifier: MIT */
/*
 * Decoding a chat request without building a document: one strict validation pass over the
 * raw body (core/json), one pass over its top-level members (refusing duplicate names, which
 * would let the gateway and the upstream read different values), and checks of the fields the
 * gateway relies on. Everything else is the upstream's to judge; it receives the body byte for
 * byte. A jansson document is built later only for providers that translate the request.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/err.h"
#include "core/json.h"
#include "core/map.h"

#define MODEL_MAX    256
#define KEY_MAX      256
#define PAIRWISE_MAX 32 /* up to this many members, duplicates are found by comparing pairs */

static int fail(struct br__verr *e, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct br__verr *e, const char *param, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(e->msg, sizeof(e->msg), fmt, ap); /* a cut message is still the error */
    va_end(ap);
    e->param = param;
    e->code = code;
    return BR_ERR_INVAL;
}

/* The member name decoded into arena memory (most names have no escapes: no copy needed). */
static struct br_slice member_name(br_arena *a, struct br_slice raw)
{
    if (!memchr(raw.ptr, '\\', raw.len)) {
        return raw;
    }
    char *buf = br_arena_alloc(a, KEY_MAX);
    size_t len = 0;
    if (!buf || br_json_string_decode(br_slice_make(raw.ptr - 1, raw.len + 2), buf, KEY_MAX,
                                      &len) != BR_OK) {
        return br_slice_make(NULL, 0); /* unusable name: it matches no field */
    }
    return br_slice_make(buf, len);
}

static bool int_in(struct br_slice v, int64_t lo, int64_t hi)
{
    int64_t x;
    return br_json_int(v, &x) == BR_OK && x >= lo && x <= hi;
}

static bool num_in(struct br_slice v, double lo, double hi)
{
    double x;
    return br_json_type_of(v) == BR_JSON_NUMBER && br_json_number(v, &x) == BR_OK && x >= lo &&
           x <= hi;
}

static bool present(struct br_slice v)
{
    return v.ptr && br_json_type_of(v) != BR_JSON_NULL;
}

static int check_message(br_arena *a, struct br_slice m, size_t i, struct br__verr *e)
{
    static const char *const roles[] = {"system",    "developer", "user",
                                        "assistant", "tool",      "function"};
    if (br_json_type_of(m) != BR_JSON_OBJECT) {
        return fail(e, br_arena_sprintf(a, "messages[%zu]", i), "invalid_type",
                    "Each message must be a JSON object.");
    }
    char role[16] = "";
    struct br_slice rv = br_json_obj_get(m, "role");
    bool known = false;
    if (br_json_type_of(rv) == BR_JSON_STRING &&
        br_json_string_decode(rv, role, sizeof(role), NULL) == BR_OK) {
        for (size_t r = 0; r < sizeof(roles) / sizeof(roles[0]); r++) {
            known |= strcmp(role, roles[r]) == 0;
        }
    }
    if (!known) {
        return fail(e, br_arena_sprintf(a, "messages[%zu].role", i), "invalid_value",
                    "Each message needs a role: one of system, developer, user, assistant, "
                    "tool, function.");
    }
    struct br_slice content = br_json_obj_get(m, "content");
    enum br_json_type ct = content.ptr ? br_json_type_of(content) : BR_JSON_NULL;
    bool may_be_null = strcmp(role, "assistant") == 0;
    if (!(ct == BR_JSON_STRING || ct == BR_JSON_ARRAY || (may_be_null && ct == BR_JSON_NULL))) {
        return fail(e, br_arena_sprintf(a, "messages[%zu].content", i), "invalid_type",
                    "Message content must be a string or an array of parts.");
    }
    return BR_OK;
}

/* The fields the gateway reads, as raw value slices (ptr NULL when absent). */
struct fields {
    struct br_slice model;
    struct br_slice messages;
    struct br_slice stream;
    struct br_slice stream_options;
    struct br_slice max_tokens;
    struct br_slice max_completion_tokens;
    struct br_slice n;
    struct br_slice temperature;
    struct br_slice top_p;
};

static void pick(struct fields *f, struct br_slice name, struct br_slice value)
{
    static const struct {
        const char *name;
        size_t off;
    } known[] = {
        {"model", offsetof(struct fields, model)},
        {"messages", offsetof(struct fields, messages)},
        {"stream", offsetof(struct fields, stream)},
        {"stream_options", offsetof(struct fields, stream_options)},
        {"max_tokens", offsetof(struct fields, max_tokens)},
        {"max_completion_tokens", offsetof(struct fields, max_completion_tokens)},
        {"n", offsetof(struct fields, n)},
        {"temperature", offsetof(struct fields, temperature)},
        {"top_p", offsetof(struct fields, top_p)},
    };
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
        if (br_slice_eq_cstr(name, known[k].name)) {
            *(struct br_slice *)((char *)f + known[k].off) = value;
            return;
        }
    }
}

/* Member names seen so far: compared pairwise up to PAIRWISE_MAX names, then kept in a hash
 * set so that hostile bodies stay linear. */
struct seen_names {
    struct br_slice names[PAIRWISE_MAX];
    size_t n;
    struct br_map set;
};

/* Remembers name; *dup says whether it was seen before. BR_ERR_NOMEM when the set cannot grow. */
static int note_name(struct seen_names *s, struct br_slice name, bool *dup)
{
    int rc = BR_OK;
    *dup = false;
    if (s->n < PAIRWISE_MAX) {
        for (size_t i = 0; i < s->n && !*dup; i++) {
            *dup = br_slice_eq(s->names[i], name);
        }
        s->names[s->n++] = name;
        if (s->n == PAIRWISE_MAX) {
            /* Many members: move to the hash set. */
            for (size_t i = 0; i < s->n && rc == BR_OK; i++) {
                rc = br_map_put(&s->set, s->names[i], &s->set);
            }
        }
        return rc;
    }
    *dup = br_map_get(&s->set, name) != NULL;
    return *dup ? BR_OK : br_map_put(&s->set, name, &s->set);
}

/* One pass over the top-level members: duplicates refused, known fields picked. */
static int scan_members(br_arena *a, struct br_slice body, struct fields *f, struct br__verr *e)
{
    struct br_json_iter it;
    struct br_json_member m;
    struct seen_names seen;
    seen.n = 0;
    br_map_init(&seen.set);
    int rc = br_json_obj_iter_init(&it, body);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        struct br_slice name = member_name(a, m.key);
        bool dup = false;
        rc = note_name(&seen, name, &dup);
        if (rc != BR_OK) {
            break;
        }
        if (dup) {
            br_map_cleanup(&seen.set);
            return fail(e, NULL, "invalid_json",
                        "We could not parse the JSON body of your request: a member name "
                        "appears twice (\"%.*s\").",
                        (int)(name.len > 64 ? 64 : name.len), name.ptr ? name.ptr : "");
        }
        pick(f, name, m.value);
    }
    br_map_cleanup(&seen.set);
    if (rc == BR_ERR_NOMEM) {
        return fail(e, NULL, "out_of_memory", "out of memory");
    }
    return BR_OK;
}

/* stream and stream_options. */
static int check_stream(const struct fields *f, struct br__chat_request *out, struct br__verr *e)
{
    enum br_json_type st = f->stream.ptr ? br_json_type_of(f->stream) : BR_JSON_NULL;
    if (st != BR_JSON_TRUE && st != BR_JSON_FALSE && st != BR_JSON_NULL) {
        return fail(e, "stream", "invalid_type", "stream must be a boolean.");
    }
    out->stream = st == BR_JSON_TRUE;
    out->wants_usage = false;
    if (present(f->stream_options)) {
        if (br_json_type_of(f->stream_options) != BR_JSON_OBJECT) {
            return fail(e, "stream_options", "invalid_type", "stream_options must be an object.");
        }
        if (!out->stream) {
            return fail(e, "stream_options", "invalid_value",
                        "The 'stream_options' parameter is only allowed when 'stream' is "
                        "enabled.");
        }
        struct br_slice iu = br_json_obj_get(f->stream_options, "include_usage");
        enum br_json_type it_type = iu.ptr ? br_json_type_of(iu) : BR_JSON_FALSE;
        if (it_type != BR_JSON_TRUE && it_type != BR_JSON_FALSE) {
            return fail(e, "stream_options.include_usage", "invalid_type",
                        "include_usage must be a boolean.");
        }
        out->wants_usage = it_type == BR_JSON_TRUE;
    }
    return BR_OK;
}

/* Token limits and sampling parameters: only their ranges are checked here. */
static int check_sampling(const struct fields *f, struct br__verr *e)
{
    if (present(f->max_tokens) && !int_in(f->max_tokens, 1, 100000000)) {
        return fail(e, "max_tokens", "invalid_value", "must be a positive integer.");
    }
    if (present(f->max_completion_tokens) && !int_in(f->max_completion_tokens, 1, 100000000)) {
        return fail(e, "max_completion_tokens", "invalid_value", "must be a positive integer.");
    }
    if (present(f->n) && !int_in(f->n, 1, 128)) {
        return fail(e, "n", "invalid_value", "n must be an integer from 1 to 128.");
    }
    if (present(f->temperature) && !num_in(f->temperature, 0.0, 2.0)) {
        return fail(e, "temperature", "invalid_value", "temperature must be a number from 0 to 2.");
    }
    if (present(f->top_p) && !num_in(f->top_p, 0.0, 1.0)) {
        return fail(e, "top_p", "invalid_value", "top_p must be a number from 0 to 1.");
    }
    return BR_OK;
}

static int check_fields(br_arena *a, const struct fields *f, struct br__chat_request *out,
                        struct br__verr *e)
{
    if (br_json_type_of(f->model) != BR_JSON_STRING) {
        return fail(e, "model", "missing_required_parameter",
                    "You must provide a model parameter (a string naming a catalogue model).");
    }
    char *model = br_arena_alloc(a, MODEL_MAX);
    size_t model_len = 0;
    if (!model || br_json_string_decode(f->model, model, MODEL_MAX, &model_len) != BR_OK ||
        model_len == 0) {
        return fail(e, "model", "invalid_value",
                    "model must be a non-empty string of at most %d bytes.", MODEL_MAX - 1);
    }
    out->model = model;
    out->model_len = model_len;

    struct br_json_iter it;
    struct br_slice m;
    size_t n_messages = 0;
    int rc = br_json_arr_iter_init(&it, f->messages);
    while (rc == BR_OK && (rc = br_json_arr_iter_next(&it, &m)) == BR_OK) {
        rc = check_message(a, m, n_messages++, e);
        if (rc != BR_OK) {
            return rc;
        }
    }
    if (!f->messages.ptr || rc != BR_ERR_NOTFOUND || n_messages == 0) {
        return fail(e, "messages", "missing_required_parameter",
                    "You must provide messages: a non-empty array of message objects.");
    }
    rc = check_stream(f, out, e);
    return rc != BR_OK ? rc : check_sampling(f, e);
}

int br__chat_request_parse(br_arena *a, struct br_slice body, struct br__chat_request *out,
                           struct br__verr *e)
{
    size_t off = 0;
    const char *why = NULL;
    memset(out, 0, sizeof(*out));
    if (br_json_validate(body.ptr, body.len, 0, &off, &why) != BR_OK) {
        return fail(e, NULL, "invalid_json",
                    "We could not parse the JSON body of your request: %s at byte %zu.",
                    why ? why : "malformed JSON", off);
    }
    if (br_json_type_of(body) != BR_JSON_OBJECT) {
        return fail(e, NULL, "invalid_type", "The request body must be a JSON object.");
    }
    struct fields f;
    memset(&f, 0, sizeof(f));
    int rc = scan_members(a, body, &f, e);
    if (rc == BR_OK) {
        rc = check_fields(a, &f, out, e);
    }
    if (rc != BR_OK && !out->model && br_json_type_of(f.model) == BR_JSON_STRING) {
        /* Keep the model name for the log row of a rejected request when it is readable. */
        char *model = br_arena_alloc(a, MODEL_MAX);
        if (model && br_json_string_decode(f.model, model, MODEL_MAX, NULL) == BR_OK) {
            out->model = model;
        }
    }
    return rc;
}
