/* SPDX-License-Identifier: MIT */
/*
 * End to end through the real gateway: OpenAI and Anthropic upstreams (the mock), streamed and
 * not, pass-through of unknown fields, replay of real recorded answers, and the cost and
 * request-log row of every answer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "common.h"

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    start_env(e, BASE_CONFIG REPLAY_MODEL);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    env_stop(*state);
    free(*state);
    return 0;
}

static long long jint(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b) {
        v = json_object_get(v, b);
    }
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

static void test_openai_nonstream(void **state)
{
    struct env *e = *state;
    const char *hdrs[] = {"x-request-id: it-nonstream-1", NULL};
    char *body = chat_body("mock-gpt", "Hello there", false, NULL);
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", hdrs, body, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    const char *content = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content"));
    assert_non_null(strstr(content, "Hello there"));
    long long p = jint(j, "usage", "prompt_tokens");
    long long c = jint(j, "usage", "completion_tokens");
    assert_true(p > 0 && c > 0);

    char *cost = http_header(&r, "x-brigade-cost-usd");
    expect_cost(cost, 150 * p + 600 * c);
    char *model = http_header(&r, "x-brigade-model");
    assert_string_equal(model, "mock-gpt");
    char *rid = http_header(&r, "x-request-id");
    assert_string_equal(rid, "it-nonstream-1");

    assert_true(db_wait_rows(e, 1));
    assert_int_equal(db_int(e, "SELECT status FROM requests WHERE id='it-nonstream-1'"), 200);
    assert_int_equal(db_int(e, "SELECT prompt_tokens FROM requests WHERE id='it-nonstream-1'"), p);
    assert_int_equal(db_int(e, "SELECT completion_tokens FROM requests WHERE id='it-nonstream-1'"),
                     c);
    assert_int_equal(db_int(e, "SELECT cost_nano_usd FROM requests WHERE id='it-nonstream-1'"),
                     150 * p + 600 * c);
    assert_int_equal(db_int(e, "SELECT usage_estimated FROM requests WHERE id='it-nonstream-1'"),
                     0);
    assert_true(db_int(e, "SELECT latency_us FROM requests WHERE id='it-nonstream-1'") > 0);
    assert_true(db_int(e, "SELECT upstream_latency_us FROM requests WHERE id='it-nonstream-1'") >
                0);
    char *um = db_text(e, "SELECT upstream_model FROM requests WHERE id='it-nonstream-1'");
    assert_string_equal(um, "gpt-4o-mini");

    /* The upstream saw the provider key and the upstream model id. */
    json_t *seen = mock_last_request(e);
    assert_string_equal(json_string_value(json_object_get(json_object_get(seen, "json"), "model")),
                        "gpt-4o-mini");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(seen, "headers"), "authorization")),
        "Bearer " PROVIDER_KEY);
    json_decref(seen);
    free(um);
    free(cost);
    free(model);
    free(rid);
    json_decref(j);
    free(body);
    http_resp_free(&r);
}

/* Streams: returns the payloads; checks the framing common to every stream. */
static char **stream(struct env *e, const char *model, const char *text, const char *extra,
                     size_t *n, struct http_resp *r)
{
    char *body = chat_body(model, text, true, extra);
    http_request(e, "POST", "/v1/chat/completions", NULL, body, r);
    free(body);
    assert_int_equal(r->status, 200);
    char *ct = http_header(r, "content-type");
    assert_non_null(ct);
    assert_non_null(strstr(ct, "text/event-stream"));
    free(ct);
    char **p = sse_payloads(r->body, n);
    assert_true(*n >= 2);
    assert_string_equal(p[*n - 1], "[DONE]");
    return p;
}

static void test_openai_stream_hides_usage_but_bills(void **state)
{
    struct env *e = *state;
    size_t n;
    struct http_resp r;
    char **p = stream(e, "mock-gpt", "one two three four [[words:5]]", NULL, &n, &r);
    size_t content_chunks = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *j = parse_json(p[i]);
        assert_string_equal(json_string_value(json_object_get(j, "object")),
                            "chat.completion.chunk");
        json_t *choices = json_object_get(j, "choices");
        /* The usage-only chunk the gateway asked for must not reach this client. */
        assert_true(json_array_size(choices) > 0);
        json_t *usage = json_object_get(j, "usage");
        assert_true(usage == NULL || json_is_null(usage));
        if (json_is_string(
                json_object_get(json_object_get(json_array_get(choices, 0), "delta"), "content"))) {
            content_chunks++;
        }
        json_decref(j);
    }
    assert_true(content_chunks >= 5);
    char *cost = http_header(&r, "x-brigade-cost-usd"); /* trailer */
    assert_non_null(cost);
    assert_true(db_wait_rows(e, 1));
    long long pt = db_int(e, "SELECT prompt_tokens FROM requests");
    long long ct = db_int(e, "SELECT completion_tokens FROM requests");
    assert_int_equal(ct, 5);
    assert_true(pt > 0);
    assert_int_equal(db_int(e, "SELECT usage_estimated FROM requests"), 0);
    assert_int_equal(db_int(e, "SELECT stream FROM requests"), 1);
    assert_true(db_int(e, "SELECT ttft_us FROM requests") > 0);
    expect_cost(cost, 150 * pt + 600 * ct);
    /* The gateway asked the upstream for usage although the client did not. */
    json_t *seen = mock_last_request(e);
    assert_true(json_is_true(json_object_get(
        json_object_get(json_object_get(seen, "json"), "stream_options"), "include_usage")));
    json_decref(seen);
    free(cost);
    sse_free(p);
    http_resp_free(&r);
}

static void test_openai_stream_with_usage(void **state)
{
    struct env *e = *state;
    size_t n;
    struct http_resp r;
    char **p = stream(e, "mock-gpt", "a b c [[words:3]]",
                      "\"stream_options\":{\"include_usage\":true}", &n, &r);
    json_t *last = parse_json(p[n - 2]);
    assert_int_equal(json_array_size(json_object_get(last, "choices")), 0);
    long long pt = jint(last, "usage", "prompt_tokens");
    long long ct = jint(last, "usage", "completion_tokens");
    assert_int_equal(ct, 3);
    char *cost = http_header(&r, "x-brigade-cost-usd");
    expect_cost(cost, 150 * pt + 600 * ct);
    free(cost);
    json_decref(last);
    sse_free(p);
    http_resp_free(&r);
}

static void test_unknown_fields_pass_through(void **state)
{
    struct env *e = *state;
    const char *extra =
        "\"temperature\":0.7,\"seed\":42,\"logprobs\":true,\"top_logprobs\":2,"
        "\"response_format\":{\"type\":\"json_object\"},"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],"
        "\"x_custom\":{\"a\":[1,2.50,\"\\u00e9\"]}";
    char *body = chat_body("mock-gpt", "pass", false, extra);
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_int_equal(r.status, 200);
    char *seen = mock_get(e, "/_mock/requests");
    json_t *arr = parse_json(seen);
    json_t *last = json_array_get(arr, json_array_size(arr) - 1);
    const char *upstream_body = json_string_value(json_object_get(last, "body"));
    assert_non_null(upstream_body);
    /* Byte for byte: numbers keep their spelling, escapes stay escapes. */
    assert_non_null(strstr(upstream_body, "\"temperature\":0.7"));
    assert_non_null(strstr(upstream_body, "\"seed\":42"));
    assert_non_null(strstr(upstream_body, "\"top_logprobs\":2"));
    assert_non_null(strstr(upstream_body, "\"response_format\":{\"type\":\"json_object\"}"));
    assert_non_null(strstr(upstream_body, "\"x_custom\":{\"a\":[1,2.50,\"\\u00e9\"]}"));
    assert_non_null(strstr(upstream_body, "\"tools\":[{\"type\":\"function\""));
    assert_non_null(strstr(upstream_body, "\"model\":\"gpt-4o-mini\""));
    assert_null(strstr(upstream_body, "mock-gpt"));
    json_decref(arr);
    free(seen);
    free(body);
    http_resp_free(&r);
}

static void test_cached_and_reasoning_tokens_priced(void **state)
{
    struct env *e = *state;
    char *body =
        chat_body("mock-gpt", "price me please now [[cached:4]] [[reasoning:2]]", false, NULL);
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    long long p = jint(j, "usage", "prompt_tokens");
    long long c = jint(j, "usage", "completion_tokens");
    char *cost = http_header(&r, "x-brigade-cost-usd");
    /* Cached input at the cached price; reasoning is part of completion, not charged twice. */
    expect_cost(cost, 150 * (p - 4) + 75 * 4 + 600 * c);
    assert_true(db_wait_rows(e, 1));
    assert_int_equal(db_int(e, "SELECT cached_tokens FROM requests"), 4);
    assert_int_equal(db_int(e, "SELECT reasoning_tokens FROM requests"), 2);
    free(cost);
    json_decref(j);
    free(body);
    http_resp_free(&r);
}

static void test_anthropic_nonstream(void **state)
{
    struct env *e = *state;
    const char *body = "{\"model\":\"mock-claude\",\"max_tokens\":50,\"messages\":["
                       "{\"role\":\"system\",\"content\":\"Be brief.\"},"
                       "{\"role\":\"user\",\"content\":\"Hello from the test\"}]}";
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "stop");
    const char *content =
        json_string_value(json_object_get(json_object_get(choice, "message"), "content"));
    assert_non_null(strstr(content, "Hello from the test"));
    long long p = jint(j, "usage", "prompt_tokens");
    long long c = jint(j, "usage", "completion_tokens");
    assert_true(p > 0 && c > 0);
    char *cost = http_header(&r, "x-brigade-cost-usd");
    expect_cost(cost, 3000 * p + 15000 * c);
    char *seen = mock_get(e, "/_mock/requests");
    assert_non_null(strstr(seen, "/v1/messages"));
    assert_non_null(strstr(seen, PROVIDER_KEY));
    assert_non_null(strstr(seen, "Be brief."));
    free(seen);
    free(cost);
    json_decref(j);
    http_resp_free(&r);
}

static void test_anthropic_stream_usage_merged(void **state)
{
    struct env *e = *state;
    size_t n;
    struct http_resp r;
    char **p = stream(e, "mock-claude", "w [[words:4]] [[cached:2]]",
                      "\"max_tokens\":100,\"stream_options\":{\"include_usage\":true}", &n, &r);
    json_t *last = parse_json(p[n - 2]);
    assert_int_equal(json_array_size(json_object_get(last, "choices")), 0);
    long long pt = jint(last, "usage", "prompt_tokens");
    long long ct = jint(last, "usage", "completion_tokens");
    assert_int_equal(ct, 4); /* from message_delta, merged with message_start's input side */
    assert_true(pt >= 2);
    char *cost = http_header(&r, "x-brigade-cost-usd");
    expect_cost(cost, 3000 * (pt - 2) + 300 * 2 + 15000 * ct);
    /* Some chunk said finish_reason stop. */
    bool stop = false;
    for (size_t i = 0; i + 1 < n; i++) {
        stop |= strstr(p[i], "\"finish_reason\":\"stop\"") != NULL;
    }
    assert_true(stop);
    free(cost);
    json_decref(last);
    sse_free(p);
    http_resp_free(&r);
}

static void test_anthropic_tool_call(void **state)
{
    struct env *e = *state;
    const char *body =
        "{\"model\":\"mock-claude\",\"max_tokens\":100,"
        "\"messages\":[{\"role\":\"user\",\"content\":\"weather in Paris? [[tool:get_weather]]\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"description\":\"weather\",\"parameters\":{\"type\":\"object\",\"properties\":"
        "{\"city\":{\"type\":\"string\"}}}}}]}";
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "tool_calls");
    json_t *call =
        json_array_get(json_object_get(json_object_get(choice, "message"), "tool_calls"), 0);
    assert_string_equal(json_string_value(json_object_get(call, "type")), "function");
    json_t *fn = json_object_get(call, "function");
    assert_string_equal(json_string_value(json_object_get(fn, "name")), "get_weather");
    json_t *args = parse_json(json_string_value(json_object_get(fn, "arguments")));
    assert_true(json_is_object(args));
    json_decref(args);
    json_decref(j);
    http_resp_free(&r);
}

static const char janet[] =
    "Janet\xe2\x80\x99s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
    "bakes muffins for her friends every day with four. She sells the remainder at the farmers' "
    "market daily for $2 per fresh duck egg. How much in dollars does she make every day at the "
    "farmers' market?";

static void test_replay_real_answer(void **state)
{
    struct env *e = *state;
    char *body = chat_body("gpt-4-1106-preview", janet, false, NULL);
    struct http_resp r;
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_int_equal(r.status, 200);
    json_t *j = parse_json(r.body);
    const char *content = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content"));
    assert_non_null(content);
    assert_true(strncmp(content, "Janet uses 3 eggs for breakfast", 31) == 0);
    assert_non_null(strstr(content, "$18 every day"));
    long long p = jint(j, "usage", "prompt_tokens");
    long long c = jint(j, "usage", "completion_tokens");
    assert_true(p > 40 && c > 40);
    char *cost = http_header(&r, "x-brigade-cost-usd");
    expect_cost(cost, 10000 * p + 30000 * c);
    char *est = http_header(&r, "x-brigade-usage-estimated");
    assert_non_null(est);
    free(est);
    free(cost);
    json_decref(j);
    free(body);
    http_resp_free(&r);
}

static void test_replay_stream_and_miss(void **state)
{
    struct env *e = *state;
    size_t n;
    struct http_resp r;
    char **p = stream(e, "gpt-4-1106-preview", janet, NULL, &n, &r);
    size_t cap = 1 << 16;
    char *text = calloc(1, cap);
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *j = parse_json(p[i]);
        json_t *c = json_object_get(
            json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta"), "content");
        if (json_is_string(c)) {
            strncat(text, json_string_value(c), cap - strlen(text) - 1);
        }
        json_decref(j);
    }
    assert_true(strncmp(text, "Janet uses 3 eggs for breakfast", 31) == 0);
    assert_non_null(strstr(text, "$18 every day"));
    free(text);
    sse_free(p);
    http_resp_free(&r);

    char *body = chat_body("gpt-4-1106-preview", "What is the capital of France?", false, NULL);
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    assert_int_equal(r.status, 404);
    json_t *j = parse_json(r.body);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                        "replay_miss");
    json_decref(j);
    free(body);
    http_resp_free(&r);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_openai_nonstream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_openai_stream_hides_usage_but_bills, setup, teardown),
        cmocka_unit_test_setup_teardown(test_openai_stream_with_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_fields_pass_through, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cached_and_reasoning_tokens_priced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_anthropic_nonstream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_anthropic_stream_usage_merged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_anthropic_tool_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_real_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_stream_and_miss, setup, teardown),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("integration_chat", tests, NULL, NULL);
}
