/* SPDX-License-Identifier: MIT */
/*
 * OpenAI chat.completions <-> Anthropic Messages API, without any I/O: request bodies one way,
 * response and error bodies the other, plus the usage arithmetic (Anthropic reports cache reads
 * and writes beside input_tokens; OpenAI counts them inside prompt_tokens). The streamed event
 * translator lives in anthropic_stream.c. docs/internals/providers.md has the tables.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "upstream/providers/anthropic_int.h"

/* Largest JSON this module serialises into one buffer (a request body or a response). */
#define DUMP_MAX ((size_t)256 << 20)

static void set_err(struct br__anthropic_err *err, const char *param, const char *code,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void set_err(struct br__anthropic_err *err, const char *param, const char *code,
                    const char *fmt, ...)
{
    va_list ap;
    err->status = 400;
    err->type = "invalid_request_error";
    err->code = code;
    (void)snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
    va_start(ap, fmt);
    /* clang 14's analyzer loses va_start when it inlines a variadic function. */
    /* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized) */
    (void)vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
}

static int dump_cb(const char *buffer, size_t size, void *data)
{
    return br_buf_append(data, buffer, size) == BR_OK ? 0 : -1;
}

int br__anthropic_json_dump(const json_t *j, struct br_buf *out)
{
    size_t before = out->len;
    if (json_dump_callback(j, dump_cb, out, JSON_COMPACT | JSON_REAL_PRECISION(15)) != 0) {
        /* Tell a full buffer from a failed allocation by trying to grow by one byte. */
        int rc = br_buf_reserve(out, 1) == BR_ERR_LIMIT ? BR_ERR_LIMIT : BR_ERR_NOMEM;
        out->len = before;
        if (out->ptr) {
            out->ptr[before] = '\0';
        }
        return rc;
    }
    return BR_OK;
}

/* ---- errors ---- */

static const struct br__anthropic_error_kind error_kinds[] = {
    {"invalid_request_error", "invalid_request_error", NULL, 400},
    {"authentication_error", "authentication_error", "invalid_api_key", 401},
    {"permission_error", "permission_error", "permission_denied", 403},
    {"not_found_error", "not_found_error", "not_found", 404},
    {"request_too_large", "invalid_request_error", "request_too_large", 413},
    {"rate_limit_error", "rate_limit_error", "rate_limit_exceeded", 429},
    {"api_error", "server_error", "upstream_api_error", 500},
    {"timeout_error", "timeout_error", "upstream_timeout", 504},
    {"overloaded_error", "overloaded_error", "overloaded", 529},
};

static const struct br__anthropic_error_kind unknown_kind = {NULL, "upstream_error", NULL, 502};

const struct br__anthropic_error_kind *br__anthropic_error_lookup(const char *anthropic_type)
{
    if (anthropic_type) {
        for (size_t i = 0; i < sizeof(error_kinds) / sizeof(error_kinds[0]); i++) {
            if (strcmp(error_kinds[i].anthropic_type, anthropic_type) == 0) {
                return &error_kinds[i];
            }
        }
    }
    return &unknown_kind;
}

int br__anthropic_error_json(struct br_buf *out, const char *message, const char *type,
                             const char *param, const char *code)
{
    json_t *j = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message, "type", type,
                          "param", param, "code", code);
    if (!j) {
        /* json_pack fails on bad UTF-8 as well as on OOM: fall back to a fixed message. */
        j = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message",
                      "upstream error (message not valid UTF-8)", "type",
                      type ? type : "upstream_error", "param", "code");
        if (!j) {
            return BR_ERR_NOMEM;
        }
    }
    int rc = br__anthropic_json_dump(j, out);
    json_decref(j);
    return rc;
}

int br__anthropic_error_translate(int status, const char *body, size_t len, struct br_buf *out)
{
    json_t *root = json_loadb(body ? body : "", len, 0, NULL);
    const json_t *e = json_object_get(root, "error");
    const char *type = json_string_value(json_object_get(e, "type"));
    const char *message = json_string_value(json_object_get(e, "message"));
    int rc;
    if (type && message) {
        const struct br__anthropic_error_kind *k = br__anthropic_error_lookup(type);
        /* Unknown types keep their own name: it is more useful to the client than ours. */
        rc = br__anthropic_error_json(out, message, k->anthropic_type ? k->openai_type : type, NULL,
                                      k->code);
    } else {
        char msg[128];
        (void)snprintf(msg, sizeof(msg),
                       "anthropic upstream answered HTTP %d without an error object", status);
        rc = br__anthropic_error_json(out, msg, "upstream_error", NULL, "upstream_http_status");
    }
    json_decref(root);
    return rc;
}

/* ---- usage ---- */

enum { PART_INPUT = 0, PART_CACHE_READ, PART_CACHE_WRITE, PART_OUTPUT };

static bool get_count(const json_t *obj, const char *key, int64_t *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return false;
    }
    *out = (int64_t)json_integer_value(v);
    return true;
}

bool br__anthropic_usage_merge(const json_t *usage, int64_t parts[4], struct br_usage *u)
{
    static const char *const keys[4] = {"input_tokens", "cache_read_input_tokens",
                                        "cache_creation_input_tokens", "output_tokens"};
    bool output = false;
    if (!json_is_object(usage)) {
        return false;
    }
    for (int i = 0; i < 4; i++) {
        int64_t v;
        if (get_count(usage, keys[i], &v)) {
            parts[i] = v;
            output |= i == PART_OUTPUT;
        }
    }
    int64_t in = 0;
    for (int i = PART_INPUT; i <= PART_CACHE_WRITE; i++) {
        /* Each part is below 2^53 in practice; cap the sum so that it can never wrap. */
        int64_t p = parts[i] > 0 ? parts[i] : 0;
        in = p > INT64_MAX / 4 - in ? INT64_MAX / 4 : in + p;
    }
    u->prompt_tokens = in;
    u->cached_tokens = parts[PART_CACHE_READ] > 0 ? parts[PART_CACHE_READ] : 0;
    u->cache_write_tokens = parts[PART_CACHE_WRITE] > 0 ? parts[PART_CACHE_WRITE] : 0;
    if (parts[PART_OUTPUT] >= 0) {
        u->completion_tokens =
            parts[PART_OUTPUT] > INT64_MAX / 4 ? INT64_MAX / 4 : parts[PART_OUTPUT];
    }
    return output;
}

json_t *br__anthropic_usage_json(const struct br_usage *u)
{
    int64_t total = u->prompt_tokens + u->completion_tokens;
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)u->prompt_tokens,
                     "completion_tokens", (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)total, "prompt_tokens_details", "cached_tokens",
                     (json_int_t)u->cached_tokens);
}

/* ---- request: OpenAI -> Anthropic ---- */

struct req_ctx {
    struct br__anthropic_err *err;
    json_t *system; /* array of text blocks */
    json_t *msgs;   /* array of {role, content: [blocks]} */
};

static int oom(void)
{
    return BR_ERR_NOMEM;
}

static int push(json_t *arr, json_t *item)
{
    return json_array_append_new(arr, item) == 0 ? BR_OK : oom();
}

static int set(json_t *obj, const char *key, json_t *v)
{
    return json_object_set_new(obj, key, v) == 0 ? BR_OK : oom();
}

static int text_block(json_t *blocks, const json_t *part_or_null, const char *text, size_t len)
{
    if (len == 0) {
        return BR_OK; /* the Messages API rejects empty text blocks */
    }
    json_t *b = json_pack("{s:s, s:s%}", "type", "text", "text", text, len);
    if (!b) {
        return oom();
    }
    const json_t *cc = json_object_get(part_or_null, "cache_control");
    if (json_is_object(cc) && json_object_set(b, "cache_control", (json_t *)cc) != 0) {
        json_decref(b);
        return oom();
    }
    return push(blocks, b);
}

/* "data:image/png;base64,AAAA" -> base64 source; http(s) URLs -> url source. */
static int image_block(json_t *blocks, const json_t *part, const char *where,
                       struct br__anthropic_err *err)
{
    const json_t *iu = json_object_get(part, "image_url");
    const json_t *url_j = json_is_string(iu) ? iu : json_object_get(iu, "url");
    if (!json_is_string(url_j)) {
        set_err(err, where, NULL, "%s: image_url.url must be a string", where);
        return BR_ERR_INVAL;
    }
    const char *url = json_string_value(url_j);
    size_t len = json_string_length(url_j);
    json_t *src;
    if (len >= 5 && strncmp(url, "data:", 5) == 0) {
        const char *comma = memchr(url, ',', len);
        const char *semi = memchr(url, ';', len);
        if (!comma || !semi || semi > comma || (size_t)(comma - semi) != 7 ||
            strncmp(semi, ";base64", 7) != 0 || semi == url + 5) {
            set_err(err, where, NULL,
                    "%s: image data URLs must look like data:<media type>;base64,<data>", where);
            return BR_ERR_INVAL;
        }
        src = json_pack("{s:s, s:s%, s:s%}", "type", "base64", "media_type", url + 5,
                        (size_t)(semi - (url + 5)), "data", comma + 1,
                        len - (size_t)(comma + 1 - url));
    } else if ((len > 7 && strncmp(url, "http://", 7) == 0) ||
               (len > 8 && strncmp(url, "https://", 8) == 0)) {
        src = json_pack("{s:s, s:s%}", "type", "url", "url", url, len);
    } else {
        set_err(err, where, NULL, "%s: image URLs must be http(s) or base64 data URLs", where);
        return BR_ERR_INVAL;
    }
    if (!src) {
        return oom();
    }
    json_t *b = json_pack("{s:s, s:o}", "type", "image", "source", src);
    return b ? push(blocks, b) : oom();
}

/*
 * Appends the Anthropic blocks for an OpenAI `content` (NULL, string, or array of parts).
 * `images`: image parts allowed (user messages).
 */
static int content_blocks(const json_t *content, bool images, const char *where, json_t *blocks,
                          struct br__anthropic_err *err)
{
    if (!content || json_is_null(content)) {
        return BR_OK;
    }
    if (json_is_string(content)) {
        return text_block(blocks, NULL, json_string_value(content), json_string_length(content));
    }
    if (!json_is_array(content)) {
        set_err(err, where, NULL, "%s must be a string, an array of parts or null", where);
        return BR_ERR_INVAL;
    }
    size_t i;
    const json_t *part;
    json_array_foreach(content, i, part)
    {
        const char *type = json_string_value(json_object_get(part, "type"));
        const json_t *text = json_object_get(part, "text");
        int rc;
        if (type && strcmp(type, "text") == 0 && json_is_string(text)) {
            rc = text_block(blocks, part, json_string_value(text), json_string_length(text));
        } else if (type && strcmp(type, "refusal") == 0 &&
                   json_is_string(json_object_get(part, "refusal"))) {
            const json_t *r = json_object_get(part, "refusal");
            rc = text_block(blocks, NULL, json_string_value(r), json_string_length(r));
        } else if (type && strcmp(type, "image_url") == 0 && images) {
            rc = image_block(blocks, part, where, err);
        } else {
            set_err(err, where, NULL,
                    "%s: content part %zu (type %s) is not supported by the anthropic provider",
                    where, i, type ? type : "missing");
            rc = BR_ERR_INVAL;
        }
        if (rc != BR_OK) {
            return rc;
        }
    }
    return BR_OK;
}

static int tool_use_blocks(const json_t *calls, const char *where, json_t *blocks,
                           struct br__anthropic_err *err)
{
    if (!calls || json_is_null(calls)) {
        return BR_OK;
    }
    if (!json_is_array(calls)) {
        set_err(err, where, NULL, "%s.tool_calls must be an array", where);
        return BR_ERR_INVAL;
    }
    size_t i;
    const json_t *c;
    json_array_foreach(calls, i, c)
    {
        const json_t *fn = json_object_get(c, "function");
        const char *id = json_string_value(json_object_get(c, "id"));
        const char *name = json_string_value(json_object_get(fn, "name"));
        const json_t *args = json_object_get(fn, "arguments");
        if (!id || !name || (args && !json_is_string(args))) {
            set_err(err, where, NULL,
                    "%s.tool_calls[%zu] needs an id, function.name and string function.arguments",
                    where, i);
            return BR_ERR_INVAL;
        }
        json_t *input;
        if (!args || json_string_length(args) == 0) {
            input = json_object();
        } else {
            input = json_loadb(json_string_value(args), json_string_length(args), 0, NULL);
            if (input && !json_is_object(input)) {
                json_decref(input);
                input = NULL;
            }
            if (!input) {
                set_err(err, where, NULL,
                        "%s.tool_calls[%zu].function.arguments must be a JSON object", where, i);
                return BR_ERR_INVAL;
            }
        }
        json_t *b = json_pack("{s:s, s:s, s:s, s:o}", "type", "tool_use", "id", id, "name", name,
                              "input", input);
        if (!b) {
            return oom();
        }
        int rc = push(blocks, b);
        if (rc != BR_OK) {
            return rc;
        }
    }
    return BR_OK;
}

static int tool_result_block(const json_t *m, const char *where, json_t *blocks,
                             struct br__anthropic_err *err)
{
    const char *id = json_string_value(json_object_get(m, "tool_call_id"));
    const json_t *content = json_object_get(m, "content");
    if (!id) {
        set_err(err, where, NULL, "%s: tool messages need a string tool_call_id", where);
        return BR_ERR_INVAL;
    }
    json_t *b = json_pack("{s:s, s:s}", "type", "tool_result", "tool_use_id", id);
    if (!b) {
        return oom();
    }
    int rc = BR_OK;
    if (json_is_string(content)) {
        rc = set(b, "content", json_copy((json_t *)content));
    } else if (json_is_array(content)) {
        json_t *parts = json_array();
        rc = parts ? content_blocks(content, true, where, parts, err) : oom();
        if (rc == BR_OK) {
            rc = set(b, "content", parts);
        } else {
            json_decref(parts);
        }
    } else if (content && !json_is_null(content)) {
        set_err(err, where, NULL, "%s.content must be a string, an array of parts or null", where);
        rc = BR_ERR_INVAL;
    }
    if (rc == BR_OK) {
        return push(blocks, b);
    }
    json_decref(b);
    return rc;
}

/* Appends blocks as a message of `role`, merged into the previous one when it has that role. */
static int add_message(json_t *msgs, const char *role, json_t *blocks)
{
    size_t n = json_array_size(msgs);
    int rc = BR_OK;
    if (json_array_size(blocks) == 0) {
        goto out; /* an empty message would be rejected; it carries nothing */
    }
    json_t *last = n ? json_array_get(msgs, n - 1) : NULL;
    if (last && strcmp(json_string_value(json_object_get(last, "role")), role) == 0) {
        rc = json_array_extend(json_object_get(last, "content"), blocks) == 0 ? BR_OK : oom();
        goto out;
    }
    json_t *m = json_pack("{s:s, s:O}", "role", role, "content", blocks);
    rc = m ? push(msgs, m) : oom();
out:
    json_decref(blocks);
    return rc;
}

static int translate_message(struct req_ctx *c, const json_t *m, size_t idx)
{
    char where[48];
    (void)snprintf(where, sizeof(where), "messages[%zu]", idx);
    const char *role = json_string_value(json_object_get(m, "role"));
    const json_t *content = json_object_get(m, "content");
    if (!role) {
        set_err(c->err, where, NULL, "%s needs a string role", where);
        return BR_ERR_INVAL;
    }
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
        return content_blocks(content, false, where, c->system, c->err);
    }
    json_t *blocks = json_array();
    if (!blocks) {
        return oom();
    }
    int rc;
    const char *as = "user";
    if (strcmp(role, "user") == 0) {
        rc = content_blocks(content, true, where, blocks, c->err);
    } else if (strcmp(role, "assistant") == 0) {
        as = "assistant";
        rc = content_blocks(content, false, where, blocks, c->err);
        if (rc == BR_OK) {
            rc = tool_use_blocks(json_object_get(m, "tool_calls"), where, blocks, c->err);
        }
    } else if (strcmp(role, "tool") == 0) {
        rc = tool_result_block(m, where, blocks, c->err);
    } else {
        set_err(c->err, where, NULL, "%s: role \"%s\" is not supported by the anthropic provider",
                where, role);
        rc = BR_ERR_INVAL;
    }
    if (rc != BR_OK) {
        json_decref(blocks);
        return rc;
    }
    return add_message(c->msgs, as, blocks);
}

/* A lone plain text block becomes a string, the form most Messages API examples use. */
static json_t *simplify(json_t *blocks)
{
    if (json_array_size(blocks) == 1) {
        json_t *b = json_array_get(blocks, 0);
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "text") == 0 && json_object_size(b) == 2) {
            return json_incref(json_object_get(b, "text"));
        }
    }
    return json_incref(blocks);
}

/* Rejects OpenAI features the Messages API cannot honour, rather than silently dropping them. */
static int check_unsupported(const json_t *req, struct br__anthropic_err *err)
{
    const json_t *v = json_object_get(req, "n");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1)) {
        set_err(err, "n", "unsupported_parameter",
                "the anthropic provider returns one choice: n must be 1");
        return BR_ERR_INVAL;
    }
    v = json_object_get(req, "logprobs");
    if (json_is_true(v)) {
        set_err(err, "logprobs", "unsupported_parameter",
                "logprobs are not available from the anthropic provider");
        return BR_ERR_INVAL;
    }
    v = json_object_get(req, "top_logprobs");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 0)) {
        set_err(err, "top_logprobs", "unsupported_parameter",
                "top_logprobs are not available from the anthropic provider");
        return BR_ERR_INVAL;
    }
    v = json_object_get(req, "logit_bias");
    if (json_object_size(v) > 0) {
        set_err(err, "logit_bias", "unsupported_parameter",
                "logit_bias is not supported by the anthropic provider");
        return BR_ERR_INVAL;
    }
    static const char *const penalties[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < 2; i++) {
        v = json_object_get(req, penalties[i]);
        if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0)) {
            set_err(err, penalties[i], "unsupported_parameter",
                    "%s is not supported by the anthropic provider (only 0)", penalties[i]);
            return BR_ERR_INVAL;
        }
    }
    v = json_object_get(req, "response_format");
    const char *rf = json_string_value(json_object_get(v, "type"));
    if (v && !json_is_null(v) && !(rf && strcmp(rf, "text") == 0)) {
        set_err(err, "response_format", "unsupported_parameter",
                "response_format %s is not supported by the anthropic provider; only text",
                rf ? rf : "(invalid)");
        return BR_ERR_INVAL;
    }
    v = json_object_get(req, "audio");
    if (v && !json_is_null(v)) {
        set_err(err, "audio", "unsupported_parameter",
                "audio output is not supported by the anthropic provider");
        return BR_ERR_INVAL;
    }
    if ((json_object_get(req, "functions") && !json_is_null(json_object_get(req, "functions"))) ||
        (json_object_get(req, "function_call") &&
         !json_is_null(json_object_get(req, "function_call")))) {
        set_err(err, "functions", "unsupported_parameter",
                "the legacy functions/function_call fields are not supported; use tools");
        return BR_ERR_INVAL;
    }
    return BR_OK;
}

/* One OpenAI function tool -> {name, description?, input_schema}. */
static int tool_entry(const json_t *t, size_t i, json_t *arr, struct br__anthropic_err *err)
{
    const char *type = json_string_value(json_object_get(t, "type"));
    const json_t *fn = json_object_get(t, "function");
    const char *name = json_string_value(json_object_get(fn, "name"));
    const json_t *desc = json_object_get(fn, "description");
    const json_t *params = json_object_get(fn, "parameters");
    if (!type || strcmp(type, "function") != 0 || !name || (desc && !json_is_string(desc)) ||
        (params && !json_is_object(params))) {
        set_err(err, "tools", NULL,
                "tools[%zu] must be {type:\"function\", function:{name, description?, "
                "parameters?}}",
                i);
        return BR_ERR_INVAL;
    }
    json_t *a = params ? json_pack("{s:s, s:O}", "name", name, "input_schema", params)
                       : json_pack("{s:s, s:{s:s, s:{}}}", "name", name, "input_schema", "type",
                                   "object", "properties");
    if (a && desc && json_object_set(a, "description", (json_t *)desc) != 0) {
        json_decref(a);
        a = NULL;
    }
    return a ? push(arr, a) : oom();
}

static int translate_tool_list(const json_t *tools, json_t *out, struct br__anthropic_err *err)
{
    json_t *arr = json_array();
    int rc = arr ? BR_OK : oom();
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t)
    {
        rc = rc == BR_OK ? tool_entry(t, i, arr, err) : rc;
    }
    if (rc != BR_OK) {
        json_decref(arr);
        return rc;
    }
    return set(out, "tools", arr);
}

/* OpenAI tool_choice -> Anthropic tool_choice (*tc_out NULL when there is none to send). */
static int translate_tool_choice(const json_t *choice, bool have_tools, json_t **tc_out,
                                 struct br__anthropic_err *err)
{
    const char *s = json_string_value(choice);
    const char *fname =
        json_string_value(json_object_get(json_object_get(choice, "function"), "name"));
    const char *otype = json_string_value(json_object_get(choice, "type"));
    json_t *tc;
    *tc_out = NULL;
    if (!choice || json_is_null(choice)) {
        return BR_OK;
    }
    if (s && strcmp(s, "none") == 0) {
        if (!have_tools) {
            return BR_OK; /* nothing to switch off */
        }
        tc = json_pack("{s:s}", "type", "none");
    } else if (s && (strcmp(s, "auto") == 0 || strcmp(s, "required") == 0)) {
        tc = json_pack("{s:s}", "type", strcmp(s, "auto") == 0 ? "auto" : "any");
    } else if (otype && strcmp(otype, "function") == 0 && fname) {
        tc = json_pack("{s:s, s:s}", "type", "tool", "name", fname);
    } else {
        set_err(err, "tool_choice", NULL,
                "tool_choice must be \"auto\", \"none\", \"required\" or "
                "{type:\"function\", function:{name}}");
        return BR_ERR_INVAL;
    }
    if (!tc) {
        return oom();
    }
    if (!have_tools) {
        json_decref(tc);
        set_err(err, "tool_choice", NULL, "tool_choice needs tools");
        return BR_ERR_INVAL;
    }
    *tc_out = tc;
    return BR_OK;
}

static int translate_tools(const json_t *req, json_t *out, struct br__anthropic_err *err)
{
    const json_t *tools = json_object_get(req, "tools");
    const json_t *parallel = json_object_get(req, "parallel_tool_calls");
    bool have_tools = json_array_size(tools) > 0;
    json_t *tc = NULL;
    int rc;
    if (tools && !json_is_null(tools) && !json_is_array(tools)) {
        set_err(err, "tools", NULL, "tools must be an array");
        return BR_ERR_INVAL;
    }
    if (parallel && !json_is_null(parallel) && !json_is_boolean(parallel)) {
        set_err(err, "parallel_tool_calls", NULL, "parallel_tool_calls must be a boolean");
        return BR_ERR_INVAL;
    }
    rc = have_tools ? translate_tool_list(tools, out, err) : BR_OK;
    rc = rc == BR_OK
             ? translate_tool_choice(json_object_get(req, "tool_choice"), have_tools, &tc, err)
             : rc;
    if (rc == BR_OK && json_is_false(parallel) && have_tools) {
        tc = tc ? tc : json_pack("{s:s}", "type", "auto");
        const char *tt = json_string_value(json_object_get(tc, "type"));
        if (!tc || (strcmp(tt, "none") != 0 &&
                    json_object_set_new(tc, "disable_parallel_tool_use", json_true()) != 0)) {
            rc = oom();
        }
    }
    if (rc != BR_OK) {
        json_decref(tc);
        return rc;
    }
    return tc ? set(out, "tool_choice", tc) : BR_OK;
}

static int translate_max_tokens(const json_t *req, const struct br_provider_target *t, json_t *out,
                                struct br__anthropic_err *err)
{
    const json_t *mt = json_object_get(req, "max_completion_tokens");
    const char *mt_name = "max_completion_tokens";
    if (!mt || json_is_null(mt)) {
        mt = json_object_get(req, "max_tokens");
        mt_name = "max_tokens";
    }
    json_int_t max_tokens =
        t->default_max_tokens > 0 ? (json_int_t)t->default_max_tokens : BR__ANTHROPIC_DEFAULT_MAX;
    if (mt && !json_is_null(mt)) {
        if (!json_is_integer(mt) || json_integer_value(mt) < 1) {
            set_err(err, mt_name, NULL, "%s must be a positive integer", mt_name);
            return BR_ERR_INVAL;
        }
        max_tokens = json_integer_value(mt);
    }
    return set(out, "max_tokens", json_integer(max_tokens));
}

/* Copies req[key] when present; `integer`: it must be a non-negative integer, else a
 * non-negative number. */
static int copy_number(const json_t *req, const char *key, bool integer, json_t *out,
                       struct br__anthropic_err *err)
{
    const json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v)) {
        return BR_OK;
    }
    bool ok = integer ? json_is_integer(v) && json_integer_value(v) >= 0
                      : json_is_number(v) && json_number_value(v) >= 0;
    if (!ok) {
        set_err(err, key, NULL, "%s must be a non-negative %s", key,
                integer ? "integer" : "number");
        return BR_ERR_INVAL;
    }
    return set(out, key, json_copy((json_t *)v));
}

/* stop (string or array of strings) -> stop_sequences. */
static int translate_stop(const json_t *stop, json_t *out, struct br__anthropic_err *err)
{
    if (!stop || json_is_null(stop)) {
        return BR_OK;
    }
    json_t *seqs = json_array();
    int rc = seqs ? BR_OK : oom();
    if (rc == BR_OK && json_is_string(stop)) {
        rc = push(seqs, json_copy((json_t *)stop));
    } else if (rc == BR_OK && json_is_array(stop)) {
        size_t i;
        const json_t *s;
        json_array_foreach(stop, i, s)
        {
            if (rc == BR_OK && !json_is_string(s)) {
                rc = BR_ERR_INVAL;
            }
            rc = rc == BR_OK ? push(seqs, json_copy((json_t *)s)) : rc;
        }
    } else if (rc == BR_OK) {
        rc = BR_ERR_INVAL;
    }
    if (rc == BR_ERR_INVAL) {
        set_err(err, "stop", NULL, "stop must be a string or an array of strings");
    }
    if (rc != BR_OK || json_array_size(seqs) == 0) {
        json_decref(seqs);
        return rc;
    }
    return set(out, "stop_sequences", seqs);
}

static int translate_sampling(const json_t *req, const struct br_provider_target *t, json_t *out,
                              struct br__anthropic_err *err)
{
    int rc = translate_max_tokens(req, t, out, err);
    rc = rc == BR_OK ? copy_number(req, "temperature", false, out, err) : rc;
    rc = rc == BR_OK ? copy_number(req, "top_p", false, out, err) : rc;
    rc = rc == BR_OK ? copy_number(req, "top_k", true, out, err) : rc;
    return rc == BR_OK ? translate_stop(json_object_get(req, "stop"), out, err) : rc;
}

static int translate_messages(struct req_ctx *c, const json_t *req)
{
    const json_t *messages = json_object_get(req, "messages");
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        set_err(c->err, "messages", NULL, "messages must be a non-empty array");
        return BR_ERR_INVAL;
    }
    size_t i;
    const json_t *m;
    json_array_foreach(messages, i, m)
    {
        if (!json_is_object(m)) {
            set_err(c->err, "messages", NULL, "messages[%zu] must be an object", i);
            return BR_ERR_INVAL;
        }
        int rc = translate_message(c, m, i);
        if (rc != BR_OK) {
            return rc;
        }
    }
    if (json_array_size(c->msgs) == 0) {
        set_err(c->err, "messages", NULL,
                "messages must contain at least one non-empty user or assistant message");
        return BR_ERR_INVAL;
    }
    /* A lone plain text block goes out as a string. */
    json_array_foreach(c->msgs, i, m)
    {
        if (set((json_t *)m, "content", simplify(json_object_get(m, "content"))) != BR_OK) {
            return oom();
        }
    }
    return BR_OK;
}

static int translate_user(const json_t *req, json_t *body, struct br__anthropic_err *err)
{
    const json_t *user = json_object_get(req, "user");
    if (!user || json_is_null(user)) {
        return BR_OK;
    }
    if (!json_is_string(user)) {
        set_err(err, "user", NULL, "user must be a string");
        return BR_ERR_INVAL;
    }
    return set(body, "metadata", json_pack("{s:O}", "user_id", user));
}

int br__anthropic_request_build(const json_t *req, const struct br_provider_target *t, bool stream,
                                json_t **out, struct br__anthropic_err *err)
{
    struct req_ctx c = {err, json_array(), json_array()};
    json_t *body = json_object();
    int rc = BR_OK;
    memset(err, 0, sizeof(*err));
    if (!c.system || !c.msgs || !body) {
        rc = oom();
        goto out;
    }
    if (!json_is_object(req)) {
        set_err(err, NULL, NULL, "the request body must be a JSON object");
        rc = BR_ERR_INVAL;
        goto out;
    }
    rc = check_unsupported(req, err);
    rc = rc == BR_OK ? translate_messages(&c, req) : rc;
    if (rc != BR_OK) {
        goto out;
    }
    const char *model = t->upstream_model ? t->upstream_model : t->name;
    rc = set(body, "model", json_string(model ? model : ""));
    if (rc == BR_OK && json_array_size(c.system) > 0) {
        rc = set(body, "system", simplify(c.system));
    }
    rc = rc == BR_OK ? set(body, "messages", json_incref(c.msgs)) : rc;
    rc = rc == BR_OK ? translate_sampling(req, t, body, err) : rc;
    rc = rc == BR_OK ? translate_tools(req, body, err) : rc;
    rc = rc == BR_OK ? translate_user(req, body, err) : rc;
    if (rc == BR_OK && stream) {
        rc = set(body, "stream", json_true());
    }
out:
    json_decref(c.system);
    json_decref(c.msgs);
    if (rc != BR_OK) {
        json_decref(body);
        body = NULL;
    }
    *out = body;
    return rc;
}

/* ---- response: Anthropic -> OpenAI ---- */

const char *br__anthropic_finish_reason(const char *stop_reason)
{
    if (!stop_reason) {
        return "stop";
    }
    if (strcmp(stop_reason, "max_tokens") == 0 ||
        strcmp(stop_reason, "model_context_window_exceeded") == 0) {
        return "length";
    }
    if (strcmp(stop_reason, "tool_use") == 0) {
        return "tool_calls";
    }
    if (strcmp(stop_reason, "refusal") == 0) {
        return "content_filter";
    }
    return "stop"; /* end_turn, stop_sequence, pause_turn and anything newer */
}

/* A tool_use block -> {id, type:function, function:{name, arguments: JSON text}}. */
static int tool_call_of(const json_t *b, json_t *calls)
{
    const char *id = json_string_value(json_object_get(b, "id"));
    const char *name = json_string_value(json_object_get(b, "name"));
    const json_t *input = json_object_get(b, "input");
    if (!id || !name) {
        return BR_ERR_PARSE;
    }
    struct br_buf args;
    br_buf_init(&args, DUMP_MAX);
    int rc = input ? br__anthropic_json_dump(input, &args) : br_buf_append_cstr(&args, "{}");
    if (rc == BR_OK) {
        json_t *call = json_pack("{s:s, s:s, s:{s:s, s:s%}}", "id", id, "type", "function",
                                 "function", "name", name, "arguments", args.ptr, args.len);
        rc = call ? push(calls, call) : oom();
    }
    br_buf_cleanup(&args);
    return rc;
}

/* Appends the text of the text blocks to text and one tool call per tool_use block to calls. */
static int response_content(const json_t *content, struct br_buf *text, bool *have_text,
                            json_t *calls)
{
    size_t i;
    const json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        const json_t *t = json_object_get(b, "text");
        int rc = BR_OK;
        if (!type) {
            rc = BR_ERR_PARSE;
        } else if (strcmp(type, "text") == 0) {
            *have_text = true;
            rc = json_is_string(t)
                     ? br_buf_append(text, json_string_value(t), json_string_length(t))
                     : BR_ERR_PARSE;
        } else if (strcmp(type, "tool_use") == 0) {
            rc = tool_call_of(b, calls);
        }
        /* thinking, redacted_thinking and server tool blocks have no chat.completion form */
        if (rc != BR_OK) {
            return rc;
        }
    }
    return BR_OK;
}

int br__anthropic_response_build(const char *body, size_t len, const char *fallback_model,
                                 int64_t created, json_t **out, struct br_usage *usage,
                                 const char **finish_reason, const char **model_out)
{
    json_t *root = json_loadb(body ? body : "", len, 0, NULL);
    json_t *calls = json_array();
    json_t *res = NULL;
    struct br_buf text;
    bool have_text = false;
    int rc = BR_ERR_PARSE;
    br_buf_init(&text, DUMP_MAX);
    memset(usage, 0, sizeof(*usage));
    *finish_reason = "stop";
    if (model_out) {
        *model_out = NULL;
    }
    if (!calls) {
        rc = oom();
        goto out;
    }
    const json_t *content = json_object_get(root, "content");
    const json_t *id = json_object_get(root, "id");
    const json_t *model = json_object_get(root, "model");
    const json_t *stop = json_object_get(root, "stop_reason");
    const char *type = json_string_value(json_object_get(root, "type"));
    if (!json_is_array(content) || (type && strcmp(type, "message") != 0) ||
        (id && !json_is_string(id)) || (model && !json_is_string(model)) ||
        (stop && !json_is_null(stop) && !json_is_string(stop))) {
        goto out;
    }
    rc = response_content(content, &text, &have_text, calls);
    if (rc != BR_OK) {
        goto out;
    }
    int64_t parts[4] = {-1, -1, -1, -1};
    const json_t *u = json_object_get(root, "usage");
    br__anthropic_usage_merge(u, parts, usage);
    usage->reported = json_is_object(u) && parts[0] >= 0 && parts[3] >= 0;
    *finish_reason = br__anthropic_finish_reason(json_string_value(stop));

    char idbuf[BR__ANTHROPIC_ID_MAX];
    (void)snprintf(idbuf, sizeof(idbuf), "chatcmpl-%s", id ? json_string_value(id) : "anthropic");
    json_t *msg = json_pack("{s:s, s:s%, s:n}", "role", "assistant", "content",
                            text.ptr ? text.ptr : "", text.len, "refusal");
    if (msg && !have_text) {
        json_object_set_new(msg, "content", json_null());
    }
    if (msg && json_array_size(calls) > 0) {
        json_object_set(msg, "tool_calls", calls);
    }
    json_t *uj = br__anthropic_usage_json(usage);
    res = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:s}], s:o}", "id", idbuf, "object",
                    "chat.completion", "created", (json_int_t)created, "model",
                    model ? json_string_value(model) : (fallback_model ? fallback_model : ""),
                    "choices", "index", 0, "message", msg, "logprobs", "finish_reason",
                    *finish_reason, "usage", uj);
    rc = res ? BR_OK : oom();
    if (res && model_out) {
        *model_out = json_string_value(json_object_get(res, "model"));
    }
out:
    br_buf_cleanup(&text);
    json_decref(calls);
    json_decref(root);
    *out = res;
    return rc;
}
