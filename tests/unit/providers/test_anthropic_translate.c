/* SPDX-License-Identifier: MIT */
/*
 * The anthropic provider's pure translation: OpenAI request -> Messages API request, Messages
 * API response and error bodies -> OpenAI shapes, and the usage arithmetic. Expected values are
 * written out as whole JSON documents and compared structurally.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "upstream/providers/anthropic_int.h"

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j) {
        fprintf(stderr, "bad test JSON: %s: %s\n", e.text, text);
    }
    assert_non_null(j);
    return j;
}

static void assert_json_eq(const json_t *got, const char *want_text)
{
    json_t *want = J(want_text);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
        char *w = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
        fprintf(stderr, "got:  %s\nwant: %s\n", g, w);
        free(g);
        free(w);
        fail();
    }
    json_decref(want);
}

static const struct br_provider_target target = {
    .name = "claude",
    .upstream_model = "claude-3-5-haiku-20241022",
    .base_url = "https://api.anthropic.com/v1",
};

/* Builds the Anthropic request for an OpenAI request text; asserts success. */
static json_t *build_ok(const char *req_text, const struct br_provider_target *t, bool stream)
{
    json_t *req = J(req_text);
    json_t *out = NULL;
    struct br__anthropic_err err;
    int rc = br__anthropic_request_build(req, t, stream, &out, &err);
    if (rc != BR_OK) {
        fprintf(stderr, "unexpected error %d: %s (param %s)\n", rc, err.message, err.param);
    }
    assert_int_equal(rc, BR_OK);
    json_decref(req);
    return out;
}

/* Asserts that the request is refused with 400 and the given param. */
static void build_fails(const char *req_text, const char *param, const char *msg_part)
{
    json_t *req = J(req_text);
    json_t *out = (json_t *)1;
    struct br__anthropic_err err;
    assert_int_equal(br__anthropic_request_build(req, &target, false, &out, &err), BR_ERR_INVAL);
    assert_null(out);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.type, "invalid_request_error");
    assert_string_equal(err.param, param);
    if (!strstr(err.message, msg_part)) {
        fprintf(stderr, "message \"%s\" lacks \"%s\"\n", err.message, msg_part);
        fail();
    }
    json_decref(req);
}

static void request_basic(void **state)
{
    (void)state;
    json_t *out =
        build_ok("{\"model\":\"claude\",\"messages\":[{\"role\":\"system\",\"content\":\"Be "
                 "brief.\"},{\"role\":\"user\",\"content\":\"Hello\"}]}",
                 &target, false);
    assert_json_eq(out, "{\"model\":\"claude-3-5-haiku-20241022\",\"system\":\"Be brief.\","
                        "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],"
                        "\"max_tokens\":4096}");
    json_decref(out);
}

static void request_system_and_developer_joined(void **state)
{
    (void)state;
    json_t *out = build_ok(
        "{\"messages\":[{\"role\":\"system\",\"content\":\"A\"},{\"role\":\"developer\","
        "\"content\":[{\"type\":\"text\",\"text\":\"B\"}]},{\"role\":\"user\",\"content\":\"Q\"},"
        "{\"role\":\"system\",\"content\":\"C\"}]}",
        &target, true);
    assert_json_eq(out, "{\"model\":\"claude-3-5-haiku-20241022\",\"system\":[{\"type\":\"text\","
                        "\"text\":\"A\"},{\"type\":\"text\",\"text\":\"B\"},{\"type\":\"text\","
                        "\"text\":\"C\"}],\"messages\":[{\"role\":\"user\",\"content\":\"Q\"}],"
                        "\"max_tokens\":4096,\"stream\":true}");
    json_decref(out);
}

static void request_max_tokens(void **state)
{
    (void)state;
    struct br_provider_target t = target;
    t.default_max_tokens = 1000;
    t.upstream_model = NULL; /* the catalogue name is sent */
    json_t *out = build_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &t, false);
    assert_int_equal(json_integer_value(json_object_get(out, "max_tokens")), 1000);
    assert_string_equal(json_string_value(json_object_get(out, "model")), "claude");
    json_decref(out);
    out = build_ok("{\"max_tokens\":77,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &t,
                   false);
    assert_int_equal(json_integer_value(json_object_get(out, "max_tokens")), 77);
    json_decref(out);
    out = build_ok("{\"max_tokens\":77,\"max_completion_tokens\":55,\"messages\":[{\"role\":"
                   "\"user\",\"content\":\"x\"}]}",
                   &t, false);
    assert_int_equal(json_integer_value(json_object_get(out, "max_tokens")), 55);
    json_decref(out);
    build_fails("{\"max_tokens\":0,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                "max_tokens", "positive integer");
    build_fails("{\"max_completion_tokens\":\"9\",\"messages\":[{\"role\":\"user\",\"content\":"
                "\"x\"}]}",
                "max_completion_tokens", "positive integer");
}

static void request_sampling_and_metadata(void **state)
{
    (void)state;
    json_t *out = build_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                           "\"temperature\":0.7,\"top_p\":0.9,\"top_k\":40,\"user\":\"u-42\","
                           "\"n\":1,\"presence_penalty\":0,\"logprobs\":false,\"seed\":7,"
                           "\"response_format\":{\"type\":\"text\"},\"stream_options\":"
                           "{\"include_usage\":true}}",
                           &target, true);
    assert_json_eq(out, "{\"model\":\"claude-3-5-haiku-20241022\",\"messages\":[{\"role\":"
                        "\"user\",\"content\":\"x\"}],\"max_tokens\":4096,\"temperature\":0.7,"
                        "\"top_p\":0.9,\"top_k\":40,\"metadata\":{\"user_id\":\"u-42\"},"
                        "\"stream\":true}");
    json_decref(out);
    /* Serialised the way it goes on the wire: reals keep their short form. */
    struct br_buf b;
    br_buf_init(&b, 1 << 20);
    out = build_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0.7}",
                   &target, false);
    assert_int_equal(br__anthropic_json_dump(out, &b), BR_OK);
    assert_non_null(strstr(b.ptr, "\"temperature\":0.7"));
    json_decref(out);
    br_buf_cleanup(&b);
}

static void request_stop(void **state)
{
    (void)state;
    json_t *out = build_ok(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":\"END\"}", &target, false);
    assert_json_eq(json_object_get(out, "stop_sequences"), "[\"END\"]");
    json_decref(out);
    out = build_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\"]}",
                   &target, false);
    assert_json_eq(json_object_get(out, "stop_sequences"), "[\"a\",\"b\"]");
    json_decref(out);
    out = build_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":null}", &target,
                   false);
    assert_null(json_object_get(out, "stop_sequences"));
    json_decref(out);
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}", "stop",
                "array of strings");
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":3}", "stop",
                "array of strings");
}

static void request_merges_consecutive_roles(void **state)
{
    (void)state;
    json_t *out =
        build_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\","
                 "\"content\":[{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\","
                 "\"content\":\"c\"},{\"role\":\"assistant\",\"content\":\"\"},{\"role\":"
                 "\"assistant\",\"content\":\"d\"},{\"role\":\"user\",\"content\":\"e\"}]}",
                 &target, false);
    assert_json_eq(json_object_get(out, "messages"),
                   "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                   "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":"
                   "[{\"type\":\"text\",\"text\":\"c\"},{\"type\":\"text\",\"text\":\"d\"}]},"
                   "{\"role\":\"user\",\"content\":\"e\"}]");
    json_decref(out);
}

static void request_tool_round_trip(void **state)
{
    (void)state;
    json_t *out = build_ok(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather in SF and NYC?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":["
        "{\"id\":\"toolu_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"arguments\":\"{\\\"location\\\":\\\"SF\\\"}\"}},"
        "{\"id\":\"toolu_2\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"arguments\":\"\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"toolu_1\",\"content\":\"15 C\"},"
        "{\"role\":\"tool\",\"tool_call_id\":\"toolu_2\",\"content\":[{\"type\":\"text\","
        "\"text\":\"20 C\"}]},"
        "{\"role\":\"user\",\"content\":\"Thanks\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"description\":\"Current weather\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{\"location\":{\"type\":\"string\"}},\"required\":[\"location\"]}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"now\"}}],"
        "\"tool_choice\":\"required\",\"parallel_tool_calls\":false}",
        &target, false);
    assert_json_eq(
        json_object_get(out, "messages"),
        "[{\"role\":\"user\",\"content\":\"Weather in SF and NYC?\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"toolu_1\","
        "\"name\":\"get_weather\",\"input\":{\"location\":\"SF\"}},{\"type\":\"tool_use\","
        "\"id\":\"toolu_2\",\"name\":\"get_weather\",\"input\":{}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\","
        "\"content\":\"15 C\"},{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_2\","
        "\"content\":[{\"type\":\"text\",\"text\":\"20 C\"}]},{\"type\":\"text\",\"text\":"
        "\"Thanks\"}]}]");
    assert_json_eq(json_object_get(out, "tools"),
                   "[{\"name\":\"get_weather\",\"description\":\"Current weather\","
                   "\"input_schema\":{\"type\":\"object\",\"properties\":{\"location\":"
                   "{\"type\":\"string\"}},\"required\":[\"location\"]}},"
                   "{\"name\":\"now\",\"input_schema\":{\"type\":\"object\",\"properties\":{}}}]");
    assert_json_eq(json_object_get(out, "tool_choice"),
                   "{\"type\":\"any\",\"disable_parallel_tool_use\":true}");
    json_decref(out);
}

static void request_tool_choice_variants(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"\"auto\"", "{\"type\":\"auto\"}"},
        {"\"none\"", "{\"type\":\"none\"}"},
        {"\"required\"", "{\"type\":\"any\"}"},
        {"{\"type\":\"function\",\"function\":{\"name\":\"f\"}}",
         "{\"type\":\"tool\",\"name\":\"f\"}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char req[512];
        snprintf(req, sizeof(req),
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":"
                 "\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":%s}",
                 cases[i][0]);
        json_t *out = build_ok(req, &target, false);
        assert_json_eq(json_object_get(out, "tool_choice"), cases[i][1]);
        json_decref(out);
    }
    /* parallel_tool_calls:false without tool_choice -> auto with the flag. */
    json_t *out = build_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{"
                           "\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
                           "\"parallel_tool_calls\":false}",
                           &target, false);
    assert_json_eq(json_object_get(out, "tool_choice"),
                   "{\"type\":\"auto\",\"disable_parallel_tool_use\":true}");
    json_decref(out);
    /* tool_choice none without tools is dropped; the others need tools. */
    out = build_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":"
                   "\"none\"}",
                   &target, false);
    assert_null(json_object_get(out, "tool_choice"));
    json_decref(out);
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"auto\"}",
                "tool_choice", "needs tools");
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":"
                "\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"sometimes\"}",
                "tool_choice", "tool_choice must be");
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":"
                "\"code_interpreter\"}]}",
                "tools", "tools[0]");
}

static void request_images(void **state)
{
    (void)state;
    json_t *out = build_ok(
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is "
        "this?\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,"
        "iVBORw0KGgo=\"}},{\"type\":\"image_url\",\"image_url\":{\"url\":"
        "\"https://example.com/cat.jpg\",\"detail\":\"high\"}}]}]}",
        &target, false);
    assert_json_eq(json_object_get(out, "messages"),
                   "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is "
                   "this?\"},{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":"
                   "\"image/png\",\"data\":\"iVBORw0KGgo=\"}},{\"type\":\"image\",\"source\":{"
                   "\"type\":\"url\",\"url\":\"https://example.com/cat.jpg\"}}]}]");
    json_decref(out);
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
                "\"image_url\":{\"url\":\"data:image/png,rawbytes\"}}]}]}",
                "messages[0]", "base64");
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
                "\"image_url\":{\"url\":\"ftp://x/y.png\"}}]}]}",
                "messages[0]", "http(s)");
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\","
                "\"input_audio\":{}}]}]}",
                "messages[0]", "input_audio");
    /* Images are user content only. */
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\","
                "\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://a/b\"}}]}]}",
                "messages[1]", "image_url");
}

static void request_cache_control_passes(void **state)
{
    (void)state;
    json_t *out =
        build_ok("{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"text\","
                 "\"text\":\"long context\",\"cache_control\":{\"type\":\"ephemeral\"}}]},"
                 "{\"role\":\"user\",\"content\":\"q\"}]}",
                 &target, false);
    assert_json_eq(json_object_get(out, "system"),
                   "[{\"type\":\"text\",\"text\":\"long context\",\"cache_control\":{\"type\":"
                   "\"ephemeral\"}}]");
    json_decref(out);
}

static void request_rejects_unsupported(void **state)
{
    (void)state;
#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"
    build_fails("{" MSGS ",\"n\":2}", "n", "n must be 1");
    build_fails("{" MSGS ",\"logprobs\":true}", "logprobs", "logprobs");
    build_fails("{" MSGS ",\"top_logprobs\":3}", "top_logprobs", "top_logprobs");
    build_fails("{" MSGS ",\"logit_bias\":{\"50256\":-100}}", "logit_bias", "logit_bias");
    build_fails("{" MSGS ",\"presence_penalty\":0.5}", "presence_penalty", "presence_penalty");
    build_fails("{" MSGS ",\"frequency_penalty\":-1}", "frequency_penalty", "frequency_penalty");
    build_fails("{" MSGS ",\"response_format\":{\"type\":\"json_object\"}}", "response_format",
                "json_object");
    build_fails("{" MSGS ",\"audio\":{\"voice\":\"alloy\"}}", "audio", "audio");
    build_fails("{" MSGS ",\"functions\":[]}", "functions", "use tools");
    build_fails("{" MSGS ",\"temperature\":\"hot\"}", "temperature", "number");
    build_fails("{" MSGS ",\"top_k\":1.5}", "top_k", "integer");
    build_fails("{" MSGS ",\"user\":5}", "user", "string");
#undef MSGS
}

static void request_rejects_malformed(void **state)
{
    (void)state;
    build_fails("{}", "messages", "non-empty array");
    build_fails("{\"messages\":[]}", "messages", "non-empty array");
    build_fails("{\"messages\":[5]}", "messages", "must be an object");
    build_fails("{\"messages\":[{\"content\":\"x\"}]}", "messages[0]", "role");
    build_fails("{\"messages\":[{\"role\":\"function\",\"content\":\"x\"}]}", "messages[0]",
                "function");
    build_fails("{\"messages\":[{\"role\":\"system\",\"content\":\"only system\"}]}", "messages",
                "at least one");
    build_fails("{\"messages\":[{\"role\":\"user\",\"content\":7}]}", "messages[0]",
                "must be a string");
    build_fails("{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0]",
                "tool_call_id");
    build_fails("{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"t\","
                "\"function\":{\"name\":\"f\",\"arguments\":\"{not json\"}}]}]}",
                "messages[0]", "JSON object");
    build_fails("{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"t\","
                "\"function\":{\"name\":\"f\",\"arguments\":\"[1,2]\"}}]}]}",
                "messages[0]", "JSON object");
    build_fails("{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{}}]}]}",
                "messages[0]", "needs an id");

    json_t *req = json_string("not an object");
    json_t *out;
    struct br__anthropic_err err;
    assert_int_equal(br__anthropic_request_build(req, &target, false, &out, &err), BR_ERR_INVAL);
    json_decref(req);
}

/* ---- responses ---- */

static void response_text_with_cache_usage(void **state)
{
    (void)state;
    static const char body[] =
        "{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\","
        "\"content\":[{\"type\":\"text\",\"text\":\"Hello\"},{\"type\":\"text\",\"text\":\"!\"}],"
        "\"model\":\"claude-3-5-haiku-20241022\",\"stop_reason\":\"end_turn\","
        "\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":"
        "100,\"cache_read_input_tokens\":2000,\"output_tokens\":6}}";
    json_t *out;
    struct br_usage u;
    const char *fr;
    const char *model;
    assert_int_equal(br__anthropic_response_build(body, sizeof(body) - 1, "fallback", 1700000000,
                                                  &out, &u, &fr, &model),
                     BR_OK);
    assert_json_eq(out, "{\"id\":\"chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL\",\"object\":"
                        "\"chat.completion\",\"created\":1700000000,\"model\":"
                        "\"claude-3-5-haiku-20241022\",\"choices\":[{\"index\":0,\"message\":{"
                        "\"role\":\"assistant\",\"content\":\"Hello!\",\"refusal\":null},"
                        "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{"
                        "\"prompt_tokens\":2112,\"completion_tokens\":6,\"total_tokens\":2118,"
                        "\"prompt_tokens_details\":{\"cached_tokens\":2000}}}");
    assert_string_equal(fr, "stop");
    assert_string_equal(model, "claude-3-5-haiku-20241022");
    assert_true(u.reported);
    assert_int_equal(u.prompt_tokens, 2112);
    assert_int_equal(u.completion_tokens, 6);
    assert_int_equal(u.cached_tokens, 2000);
    assert_int_equal(u.cache_write_tokens, 100);
    json_decref(out);
}

static void response_tool_use(void **state)
{
    (void)state;
    static const char body[] =
        "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\","
        "\"content\":[{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"x\"},"
        "{\"type\":\"tool_use\",\"id\":\"toolu_01A\",\"name\":\"get_weather\",\"input\":"
        "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}}],\"stop_reason\":"
        "\"tool_use\",\"usage\":{\"input_tokens\":300,\"output_tokens\":40}}";
    json_t *out;
    struct br_usage u;
    const char *fr;
    assert_int_equal(
        br__anthropic_response_build(body, sizeof(body) - 1, NULL, 1, &out, &u, &fr, NULL), BR_OK);
    assert_string_equal(fr, "tool_calls");
    json_t *msg = json_object_get(json_array_get(json_object_get(out, "choices"), 0), "message");
    assert_json_eq(msg, "{\"role\":\"assistant\",\"content\":null,\"refusal\":null,"
                        "\"tool_calls\":[{\"id\":\"toolu_01A\",\"type\":\"function\","
                        "\"function\":{\"name\":\"get_weather\",\"arguments\":"
                        "\"{\\\"location\\\":\\\"San Francisco, CA\\\",\\\"unit\\\":"
                        "\\\"celsius\\\"}\"}}]}");
    assert_int_equal(u.prompt_tokens, 300);
    assert_int_equal(u.cached_tokens, 0);
    json_decref(out);
}

static void response_finish_reasons(void **state)
{
    (void)state;
    assert_string_equal(br__anthropic_finish_reason("end_turn"), "stop");
    assert_string_equal(br__anthropic_finish_reason("stop_sequence"), "stop");
    assert_string_equal(br__anthropic_finish_reason("max_tokens"), "length");
    assert_string_equal(br__anthropic_finish_reason("tool_use"), "tool_calls");
    assert_string_equal(br__anthropic_finish_reason("refusal"), "content_filter");
    assert_string_equal(br__anthropic_finish_reason("pause_turn"), "stop");
    assert_string_equal(br__anthropic_finish_reason(NULL), "stop");

    static const char body[] = "{\"id\":\"m\",\"type\":\"message\",\"content\":[{\"type\":"
                               "\"text\",\"text\":\"cut\"}],\"stop_reason\":\"max_tokens\"}";
    json_t *out;
    struct br_usage u;
    const char *fr;
    assert_int_equal(
        br__anthropic_response_build(body, sizeof(body) - 1, "fb", 1, &out, &u, &fr, NULL), BR_OK);
    assert_string_equal(fr, "length");
    assert_false(u.reported); /* no usage object in the body */
    assert_string_equal(json_string_value(json_object_get(out, "model")), "fb");
    json_decref(out);
}

static void response_rejects_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "not json",
        "[]",
        "{\"type\":\"message\"}",
        "{\"type\":\"error\",\"content\":[]}",
        "{\"content\":[{\"type\":\"text\"}]}",
        "{\"content\":[{\"text\":\"x\"}]}",
        "{\"content\":[{\"type\":\"tool_use\",\"name\":\"f\"}]}",
        "{\"content\":[],\"stop_reason\":5}",
        "{\"content\":[],\"id\":5}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *out = (json_t *)1;
        struct br_usage u;
        const char *fr;
        assert_int_equal(
            br__anthropic_response_build(bad[i], strlen(bad[i]), "m", 1, &out, &u, &fr, NULL),
            BR_ERR_PARSE);
        assert_null(out);
    }
}

/* ---- errors and usage ---- */

static void error_translation(void **state)
{
    (void)state;
    static const struct {
        const char *type;
        const char *openai_type;
        const char *code; /* NULL -> JSON null */
        int status;
    } cases[] = {
        {"invalid_request_error", "invalid_request_error", NULL, 400},
        {"authentication_error", "authentication_error", "invalid_api_key", 401},
        {"permission_error", "permission_error", "permission_denied", 403},
        {"not_found_error", "not_found_error", "not_found", 404},
        {"request_too_large", "invalid_request_error", "request_too_large", 413},
        {"rate_limit_error", "rate_limit_error", "rate_limit_exceeded", 429},
        {"api_error", "server_error", "upstream_api_error", 500},
        {"overloaded_error", "overloaded_error", "overloaded", 529},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char body[256];
        snprintf(body, sizeof(body),
                 "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"msg %zu\"}}",
                 cases[i].type, i);
        struct br_buf b;
        br_buf_init(&b, 4096);
        assert_int_equal(br__anthropic_error_translate(cases[i].status, body, strlen(body), &b),
                         BR_OK);
        json_t *got = J(b.ptr);
        json_t *e = json_object_get(got, "error");
        char msg[32];
        snprintf(msg, sizeof(msg), "msg %zu", i);
        assert_string_equal(json_string_value(json_object_get(e, "message")), msg);
        assert_string_equal(json_string_value(json_object_get(e, "type")), cases[i].openai_type);
        assert_true(json_is_null(json_object_get(e, "param")));
        if (cases[i].code) {
            assert_string_equal(json_string_value(json_object_get(e, "code")), cases[i].code);
        } else {
            assert_true(json_is_null(json_object_get(e, "code")));
        }
        assert_int_equal(br__anthropic_error_lookup(cases[i].type)->status, cases[i].status);
        json_decref(got);
        br_buf_cleanup(&b);
    }
    /* Unknown type keeps its name; a non-JSON body names the status. */
    struct br_buf b;
    br_buf_init(&b, 4096);
    static const char odd[] = "{\"type\":\"error\",\"error\":{\"type\":\"new_error\","
                              "\"message\":\"m\"}}";
    assert_int_equal(br__anthropic_error_translate(418, odd, sizeof(odd) - 1, &b), BR_OK);
    json_t *odd_j = J(b.ptr);
    assert_json_eq(odd_j, "{\"error\":{\"message\":\"m\",\"type\":\"new_error\",\"param\":null,"
                          "\"code\":null}}");
    json_decref(odd_j);
    br_buf_reset(&b);
    assert_int_equal(br__anthropic_error_translate(503, "<html>busy</html>", 17, &b), BR_OK);
    json_t *got = J(b.ptr);
    json_t *e = json_object_get(got, "error");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "upstream_error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "upstream_http_status");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "503"));
    json_decref(got);
    br_buf_cleanup(&b);
}

static void usage_merge_field_by_field(void **state)
{
    (void)state;
    int64_t parts[4] = {-1, -1, -1, -1};
    struct br_usage u = {0};
    json_t *start = J("{\"input_tokens\":25,\"cache_read_input_tokens\":5,"
                      "\"cache_creation_input_tokens\":0,\"output_tokens\":1}");
    assert_true(br__anthropic_usage_merge(start, parts, &u));
    assert_int_equal(u.prompt_tokens, 30);
    assert_int_equal(u.completion_tokens, 1);
    /* message_delta: cumulative output, and (newer API) repeated input fields. */
    json_t *delta = J("{\"output_tokens\":15}");
    assert_true(br__anthropic_usage_merge(delta, parts, &u));
    assert_int_equal(u.prompt_tokens, 30);
    assert_int_equal(u.completion_tokens, 15);
    assert_int_equal(u.cached_tokens, 5);
    json_t *delta2 = J("{\"input_tokens\":25,\"cache_creation_input_tokens\":7,"
                       "\"output_tokens\":-3,\"cache_read_input_tokens\":\"x\"}");
    assert_false(br__anthropic_usage_merge(delta2, parts, &u));
    assert_int_equal(u.prompt_tokens, 37);
    assert_int_equal(u.cache_write_tokens, 7);
    assert_int_equal(u.completion_tokens, 15);
    assert_false(br__anthropic_usage_merge(NULL, parts, &u));
    json_decref(start);
    json_decref(delta);
    json_decref(delta2);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(request_basic),
        cmocka_unit_test(request_system_and_developer_joined),
        cmocka_unit_test(request_max_tokens),
        cmocka_unit_test(request_sampling_and_metadata),
        cmocka_unit_test(request_stop),
        cmocka_unit_test(request_merges_consecutive_roles),
        cmocka_unit_test(request_tool_round_trip),
        cmocka_unit_test(request_tool_choice_variants),
        cmocka_unit_test(request_images),
        cmocka_unit_test(request_cache_control_passes),
        cmocka_unit_test(request_rejects_unsupported),
        cmocka_unit_test(request_rejects_malformed),
        cmocka_unit_test(response_text_with_cache_usage),
        cmocka_unit_test(response_tool_use),
        cmocka_unit_test(response_finish_reasons),
        cmocka_unit_test(response_rejects_malformed),
        cmocka_unit_test(error_translation),
        cmocka_unit_test(usage_merge_field_by_field),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("anthropic_translate", tests, NULL, NULL);
}
