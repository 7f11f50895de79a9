/* SPDX-License-Identifier: MIT */
/*
 * The Messages API stream translator: event sequences shaped like the examples in Anthropic's
 * streaming documentation (plain text, text then tool use, parallel tool calls, thinking, an
 * error event) in, chat.completion.chunk objects out; plus every order violation it refuses.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "upstream/providers/anthropic_int.h"

struct collect {
    json_t *chunks; /* array of the parsed chunks */
    int stop_after; /* emit returns -1 after this many chunks (0: never) */
};

static int collect_emit(void *user, struct br_slice chunk)
{
    struct collect *c = user;
    json_error_t e;
    json_t *j = json_loadb(chunk.ptr, chunk.len, 0, &e);
    assert_non_null(j);
    assert_true(json_is_object(j));
    json_array_append_new(c->chunks, j);
    if (c->stop_after && (int)json_array_size(c->chunks) >= c->stop_after) {
        return -1;
    }
    return 0;
}

static const char *const msg_start =
    "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\","
    "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":"
    "\"claude-3-5-sonnet-20240620\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{"
    "\"input_tokens\":25,\"output_tokens\":1}}}";

/* Feeds each data line as one event; returns the first non-OK code (or OK). */
static int feed_all(struct br__anthropic_stream *s, const char *const *events, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *type_start = strstr(events[i], "\"type\":\"");
        struct br_slice name = BR_SLICE_LIT("");
        if (type_start) {
            type_start += 8;
            name = br_slice_make(type_start, strcspn(type_start, "\""));
        }
        int rc = br__anthropic_stream_feed(s, name, br_slice_from_cstr(events[i]));
        if (rc != BR_OK) {
            return rc;
        }
    }
    return BR_OK;
}

static json_t *delta_of(const json_t *chunk)
{
    return json_object_get(json_array_get(json_object_get(chunk, "choices"), 0), "delta");
}

static const char *finish_of(const json_t *chunk)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(chunk, "choices"), 0), "finish_reason"));
}

static void assert_json_eq(const json_t *got, const char *want_text)
{
    json_t *want = json_loads(want_text, 0, NULL);
    assert_non_null(want);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
        fprintf(stderr, "got:  %s\nwant: %s\n", g, want_text);
        free(g);
        fail();
    }
    json_decref(want);
}

/* Every chunk carries the same id, object, created and model. */
static void assert_common_fields(const json_t *chunks, const char *id, const char *model)
{
    size_t i;
    const json_t *c;
    json_array_foreach(chunks, i, c)
    {
        assert_string_equal(json_string_value(json_object_get(c, "id")), id);
        assert_string_equal(json_string_value(json_object_get(c, "object")),
                            "chat.completion.chunk");
        assert_int_equal(json_integer_value(json_object_get(c, "created")), 1718000000);
        assert_string_equal(json_string_value(json_object_get(c, "model")), model);
    }
}

static void text_stream_with_usage(void **state)
{
    (void)state;
    static const char *const events[] = {
        NULL, /* msg_start */
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
        "\"text\":\"\"}}",
        "{\"type\": \"ping\"}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"Hello\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"!\"}}",
        "{\"type\":\"content_block_stop\",\"index\":0}",
        "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":"
        "null},\"usage\":{\"output_tokens\":15}}",
        "{\"type\":\"message_stop\"}",
    };
    const char *ev[sizeof(events) / sizeof(events[0])];
    memcpy(ev, events, sizeof(events));
    ev[0] = msg_start;
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1718000000, true, collect_emit, &c);
    assert_int_equal(feed_all(&s, ev, sizeof(ev) / sizeof(ev[0])), BR_OK);
    assert_true(s.finished);
    assert_true(s.saw_content);
    assert_true(s.t_first_token_ns > 0);
    assert_int_equal(json_array_size(c.chunks), 5);
    assert_common_fields(c.chunks, "chatcmpl-msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                         "claude-3-5-sonnet-20240620");
    assert_json_eq(json_array_get(c.chunks, 0),
                   "{\"id\":\"chatcmpl-msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"object\":"
                   "\"chat.completion.chunk\",\"created\":1718000000,\"model\":"
                   "\"claude-3-5-sonnet-20240620\",\"choices\":[{\"index\":0,\"delta\":{"
                   "\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
                   "\"finish_reason\":null}]}");
    assert_json_eq(delta_of(json_array_get(c.chunks, 1)), "{\"content\":\"Hello\"}");
    assert_json_eq(delta_of(json_array_get(c.chunks, 2)), "{\"content\":\"!\"}");
    assert_json_eq(delta_of(json_array_get(c.chunks, 3)), "{}");
    assert_string_equal(finish_of(json_array_get(c.chunks, 3)), "stop");
    assert_json_eq(json_array_get(c.chunks, 4),
                   "{\"id\":\"chatcmpl-msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"object\":"
                   "\"chat.completion.chunk\",\"created\":1718000000,\"model\":"
                   "\"claude-3-5-sonnet-20240620\",\"choices\":[],\"usage\":{\"prompt_tokens\":"
                   "25,\"completion_tokens\":15,\"total_tokens\":40,\"prompt_tokens_details\":{"
                   "\"cached_tokens\":0}}}");
    assert_int_equal(s.usage.prompt_tokens, 25);
    assert_int_equal(s.usage.completion_tokens, 15);
    assert_true(s.saw_output_usage);
    assert_int_equal(br__anthropic_stream_output_tokens(&s), 15);
    assert_string_equal(s.finish_reason, "stop");

    /* Without include_usage: the same chunks minus the last. */
    json_t *again = json_array();
    struct collect c2 = {again, 0};
    struct br__anthropic_stream s2;
    br__anthropic_stream_init(&s2, "fallback", 1718000000, false, collect_emit, &c2);
    assert_int_equal(feed_all(&s2, ev, sizeof(ev) / sizeof(ev[0])), BR_OK);
    assert_int_equal(json_array_size(again), 4);
    br__anthropic_stream_cleanup(&s2);
    json_decref(again);
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);
}

/* The docs' tool-use stream: some text, then a tool_use block streamed as partial JSON. */
static void tool_use_stream(void **state)
{
    (void)state;
    const char *const ev[] = {
        "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\","
        "\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-3-haiku-20240307\","
        "\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2,"
        "\"cache_read_input_tokens\":128,\"cache_creation_input_tokens\":0},\"content\":[],"
        "\"stop_reason\":null}}",
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
        "\"text\":\"\"}}",
        "{\"type\": \"ping\"}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"Okay\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\", let's check the weather for San Francisco, CA:\"}}",
        "{\"type\":\"content_block_stop\",\"index\":0}",
        "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\","
        "\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}",
        "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
        "\"partial_json\":\"\"}}",
        "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
        "\"partial_json\":\"{\\\"location\\\":\"}}",
        "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
        "\"partial_json\":\" \\\"San Francisco, CA\\\"}\"}}",
        "{\"type\":\"content_block_stop\",\"index\":1}",
        "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":"
        "null},\"usage\":{\"output_tokens\":89}}",
        "{\"type\":\"message_stop\"}",
    };
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1718000000, true, collect_emit, &c);
    assert_int_equal(feed_all(&s, ev, sizeof(ev) / sizeof(ev[0])), BR_OK);
    /* role, Okay, text, tool start, 2 argument pieces (the empty one is skipped), finish, usage */
    assert_int_equal(json_array_size(c.chunks), 8);
    assert_common_fields(c.chunks, "chatcmpl-msg_014p7gG3wDgGV9EUtLvnow3U",
                         "claude-3-haiku-20240307");
    assert_json_eq(delta_of(json_array_get(c.chunks, 3)),
                   "{\"tool_calls\":[{\"index\":0,\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\","
                   "\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                   "\"arguments\":\"\"}}]}");
    assert_json_eq(delta_of(json_array_get(c.chunks, 4)),
                   "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
                   "\"{\\\"location\\\":\"}}]}");
    assert_json_eq(delta_of(json_array_get(c.chunks, 5)),
                   "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
                   "\" \\\"San Francisco, CA\\\"}\"}}]}");
    assert_string_equal(finish_of(json_array_get(c.chunks, 6)), "tool_calls");
    assert_json_eq(json_object_get(json_array_get(c.chunks, 7), "usage"),
                   "{\"prompt_tokens\":600,\"completion_tokens\":89,\"total_tokens\":689,"
                   "\"prompt_tokens_details\":{\"cached_tokens\":128}}");
    assert_int_equal(s.usage.cached_tokens, 128);
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);
}

static void parallel_tools_and_thinking(void **state)
{
    (void)state;
    const char *const ev[] = {
        msg_start,
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\","
        "\"thinking\":\"\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\","
        "\"thinking\":\"Two cities, two calls.\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\","
        "\"signature\":\"EqQBCgIYAhIM\"}}",
        "{\"type\":\"content_block_stop\",\"index\":0}",
        "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\","
        "\"id\":\"toolu_a\",\"name\":\"w\",\"input\":{}}}",
        "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
        "\"partial_json\":\"{\\\"c\\\":\\\"SF\\\"}\"}}",
        "{\"type\":\"content_block_stop\",\"index\":1}",
        "{\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\","
        "\"id\":\"toolu_b\",\"name\":\"w\",\"input\":{}}}",
        "{\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\","
        "\"partial_json\":\"{\\\"c\\\":\\\"NYC\\\"}\"}}",
        "{\"type\":\"content_block_stop\",\"index\":2}",
        "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":"
        "{\"output_tokens\":60}}",
        "{\"type\":\"message_stop\"}",
    };
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1718000000, false, collect_emit, &c);
    assert_int_equal(feed_all(&s, ev, sizeof(ev) / sizeof(ev[0])), BR_OK);
    assert_int_equal(json_array_size(c.chunks), 6); /* role, 2 x (start, args), finish */
    assert_int_equal(
        json_integer_value(json_object_get(
            json_array_get(json_object_get(delta_of(json_array_get(c.chunks, 1)), "tool_calls"), 0),
            "index")),
        0);
    assert_json_eq(delta_of(json_array_get(c.chunks, 3)),
                   "{\"tool_calls\":[{\"index\":1,\"id\":\"toolu_b\",\"type\":\"function\","
                   "\"function\":{\"name\":\"w\",\"arguments\":\"\"}}]}");
    assert_json_eq(delta_of(json_array_get(c.chunks, 4)),
                   "{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":"
                   "\"{\\\"c\\\":\\\"NYC\\\"}\"}}]}");
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);
}

static void error_event_mid_stream(void **state)
{
    (void)state;
    const char *const ev[] = {
        msg_start,
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
        "\"text\":\"\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"The answer is\"}}",
        "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}",
    };
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1718000000, true, collect_emit, &c);
    assert_int_equal(feed_all(&s, ev, sizeof(ev) / sizeof(ev[0])), BR_ERR_UPSTREAM);
    assert_string_equal(s.error_type, "overloaded_error");
    assert_string_equal(s.error_message, "Overloaded");
    assert_false(s.finished);
    assert_false(s.saw_output_usage);
    assert_int_equal(s.usage.prompt_tokens, 25); /* real, from message_start */
    /* "The answer is": 3 words; estimated beats message_start's placeholder of 1 */
    assert_int_equal(br__anthropic_stream_output_tokens(&s), 3);
    assert_int_equal(json_array_size(c.chunks), 2);
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);

    /* An error before anything else: nothing was emitted. */
    struct collect c2 = {json_array(), 0};
    br__anthropic_stream_init(&s, "fallback", 1718000000, true, collect_emit, &c2);
    assert_int_equal(
        br__anthropic_stream_feed(&s, BR_SLICE_LIT("error"),
                                  BR_SLICE_LIT("{\"type\":\"error\",\"error\":{\"type\":"
                                               "\"rate_limit_error\",\"message\":\"slow\"}}")),
        BR_ERR_UPSTREAM);
    assert_string_equal(s.error_type, "rate_limit_error");
    assert_false(s.started);
    assert_int_equal(json_array_size(c2.chunks), 0);
    br__anthropic_stream_cleanup(&s);
    json_decref(c2.chunks);
}

static void cut_short_estimates_output(void **state)
{
    (void)state;
    const char *const ev[] = {
        msg_start,
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
        "\"text\":\"\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"one two three four five six\"}}",
    };
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1718000000, true, collect_emit, &c);
    assert_int_equal(feed_all(&s, ev, 3), BR_OK);
    assert_false(s.finished);
    assert_null(s.finish_reason);
    assert_int_equal(br__anthropic_stream_output_tokens(&s), 6);
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);
}

static void message_stop_without_delta_still_finishes(void **state)
{
    (void)state;
    const char *const ev[] = {msg_start, "{\"type\":\"message_stop\"}",
                              "{\"type\":\"content_block_start\",\"index\":0}"};
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1718000000, false, collect_emit, &c);
    assert_int_equal(feed_all(&s, ev, 3), BR_OK); /* events after message_stop are ignored */
    assert_true(s.finished);
    assert_int_equal(json_array_size(c.chunks), 2);
    assert_string_equal(finish_of(json_array_get(c.chunks, 1)), "stop");
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);
}

static void unknown_events_are_skipped(void **state)
{
    (void)state;
    const char *const ev[] = {
        "{\"type\":\"ping\"}",
        "{\"type\":\"future_event\",\"x\":1}",
        msg_start,
        "{\"type\":\"another_future_event\"}",
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
        "\"server_tool_use\",\"id\":\"s\",\"name\":\"web_search\",\"input\":{}}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\","
        "\"partial_json\":\"{}\"}}",
        "{\"type\":\"content_block_stop\",\"index\":0}",
        "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{"
        "\"output_tokens\":3}}",
        "{\"type\":\"message_stop\"}",
    };
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1718000000, false, collect_emit, &c);
    assert_int_equal(feed_all(&s, ev, sizeof(ev) / sizeof(ev[0])), BR_OK);
    assert_int_equal(json_array_size(c.chunks), 2); /* role and finish */
    assert_string_equal(s.finish_reason, "length");
    assert_false(s.saw_content);
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);
}

static void order_violations_are_refused(void **state)
{
    (void)state;
    static const char *const text_start =
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
        "\"text\":\"\"}}";
    static const char *const tool_start =
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\","
        "\"id\":\"t\",\"name\":\"f\",\"input\":{}}}";
    const struct {
        const char *ev[3];
    } cases[] = {
        {{"{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\"}}"}},
        {{"{\"type\":\"message_delta\",\"delta\":{}}"}},
        {{"{\"type\":\"message_stop\"}"}},
        {{msg_start, msg_start}},
        {{"not json"}},
        {{"{\"no_type\":1}"}},
        {{"[1,2]"}},
        {{""}},
        {{"{\"type\":\"message_start\",\"message\":{\"type\":\"message\"}}"}},
        {{"{\"type\":\"message_start\",\"message\":{\"id\":\"a\",\"model\":7}}"}},
        {{msg_start, "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                     "\"text_delta\",\"text\":\"x\"}}"}},
        {{msg_start, text_start,
          "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\","
          "\"text\":\"x\"}}"}},
        {{msg_start, text_start,
          "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
          "\"input_json_delta\",\"partial_json\":\"{\"}}"}},
        {{msg_start, tool_start,
          "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
          "\"text\":\"x\"}}"}},
        {{msg_start, text_start,
          "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
          "\"text\":5}}"}},
        {{msg_start, text_start, text_start}},
        {{msg_start, text_start, "{\"type\":\"content_block_stop\",\"index\":3}"}},
        {{msg_start, "{\"type\":\"content_block_stop\",\"index\":0}"}},
        {{msg_start, "{\"type\":\"content_block_start\",\"index\":-1,\"content_block\":{"
                     "\"type\":\"text\"}}"}},
        {{msg_start, "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{"
                     "\"type\":\"tool_use\",\"name\":\"f\"}}"}},
        {{msg_start, "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":3}}"}},
        {{msg_start, "{\"type\":\"message_delta\"}"}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = 0;
        while (n < 3 && cases[i].ev[n]) {
            n++;
        }
        struct collect c = {json_array(), 0};
        struct br__anthropic_stream s;
        br__anthropic_stream_init(&s, "fallback", 1718000000, false, collect_emit, &c);
        int rc = feed_all(&s, cases[i].ev, n);
        if (rc != BR_ERR_PARSE) {
            fprintf(stderr, "case %zu: rc %d\n", i, rc);
            fail();
        }
        br__anthropic_stream_cleanup(&s);
        json_decref(c.chunks);
    }
    /* An oversized id is refused rather than truncated. */
    char big[600];
    memset(big, 'a', sizeof(big));
    char ev[900];
    snprintf(ev, sizeof(ev), "{\"type\":\"message_start\",\"message\":{\"id\":\"%.*s\"}}", 300,
             big);
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1, false, collect_emit, &c);
    assert_int_equal(br__anthropic_stream_feed(&s, BR_SLICE_LIT(""), br_slice_from_cstr(ev)),
                     BR_ERR_PARSE);
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);
}

static void emit_failure_stops_feed(void **state)
{
    (void)state;
    const char *const ev[] = {
        msg_start,
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
        "\"text\":\"\"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"x\"}}",
    };
    struct collect c = {json_array(), 2};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1, false, collect_emit, &c);
    assert_int_equal(feed_all(&s, ev, 3), -1);
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);
}

static void whole_message_replayed_as_stream(void **state)
{
    (void)state;
    static const char body[] =
        "{\"id\":\"msg_9\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m-1\","
        "\"content\":[{\"type\":\"thinking\",\"thinking\":\"hm\",\"signature\":\"s\"},"
        "{\"type\":\"text\",\"text\":\"Let me check.\"},{\"type\":\"tool_use\",\"id\":"
        "\"toolu_9\",\"name\":\"get_weather\",\"input\":{\"city\":\"Paris\"}}],"
        "\"stop_reason\":\"tool_use\",\"usage\":{\"input_tokens\":30,"
        "\"cache_read_input_tokens\":10,\"output_tokens\":12}}";
    struct collect c = {json_array(), 0};
    struct br__anthropic_stream s;
    br__anthropic_stream_init(&s, "fallback", 1718000000, true, collect_emit, &c);
    assert_int_equal(br__anthropic_stream_from_message(&s, body, sizeof(body) - 1), BR_OK);
    assert_true(s.finished);
    /* role, text, tool start, tool arguments, finish, usage */
    assert_int_equal(json_array_size(c.chunks), 6);
    assert_common_fields(c.chunks, "chatcmpl-msg_9", "m-1");
    assert_json_eq(delta_of(json_array_get(c.chunks, 1)), "{\"content\":\"Let me check.\"}");
    assert_json_eq(delta_of(json_array_get(c.chunks, 3)),
                   "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
                   "\"{\\\"city\\\":\\\"Paris\\\"}\"}}]}");
    assert_string_equal(finish_of(json_array_get(c.chunks, 4)), "tool_calls");
    assert_json_eq(json_object_get(json_array_get(c.chunks, 5), "usage"),
                   "{\"prompt_tokens\":40,\"completion_tokens\":12,\"total_tokens\":52,"
                   "\"prompt_tokens_details\":{\"cached_tokens\":10}}");
    assert_true(s.saw_output_usage);
    br__anthropic_stream_cleanup(&s);
    json_decref(c.chunks);

    static const char *const bad[] = {"", "[]", "{\"type\":\"error\",\"content\":[]}",
                                      "{\"content\":{}}", "{\"content\":[],\"stop_reason\":1}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct collect c2 = {json_array(), 0};
        br__anthropic_stream_init(&s, "fallback", 1, false, collect_emit, &c2);
        assert_int_equal(br__anthropic_stream_from_message(&s, bad[i], strlen(bad[i])),
                         BR_ERR_PARSE);
        assert_int_equal(json_array_size(c2.chunks), 0);
        br__anthropic_stream_cleanup(&s);
        json_decref(c2.chunks);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(text_stream_with_usage),
        cmocka_unit_test(tool_use_stream),
        cmocka_unit_test(parallel_tools_and_thinking),
        cmocka_unit_test(error_event_mid_stream),
        cmocka_unit_test(cut_short_estimates_output),
        cmocka_unit_test(message_stop_without_delta_still_finishes),
        cmocka_unit_test(unknown_events_are_skipped),
        cmocka_unit_test(order_violations_are_refused),
        cmocka_unit_test(emit_failure_stops_feed),
        cmocka_unit_test(whole_message_replayed_as_stream),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("anthropic_stream", tests, NULL, NULL);
}
