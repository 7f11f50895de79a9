/* SPDX-License-Identifier: MIT */
/*
 * The openai provider and the shared provider helpers: raw JSON member editing, usage, error
 * shapes, the stream processor (pure), and whole calls against a scripted server on 127.0.0.1
 * (request splicing as the server received it, streams, errors, cuts, cancel, timeouts).
 */
#include <jansson.h>
#include <stdatomic.h>
#include <string.h>

#include "br_test.h"
#include "core/arena.h"
#include "core/err.h"
#include "unit/upstream/test_server.h"
#include "upstream/provider.h"
#include "upstream/providers/providers_int.h"

static int setup(void **state)
{
    (void)state;
    return br_upstream_global_init() == BR_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    br_upstream_global_cleanup();
    return 0;
}

static json_t *parse(struct br_slice s)
{
    json_error_t err;
    return json_loadb(s.ptr, s.len, 0, &err);
}

static bool contains(struct br_slice s, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= s.len; i++) {
        if (memcmp(s.ptr + i, needle, n) == 0) {
            return true;
        }
    }
    return false;
}

/* ---- JSON text helpers ---------------------------------------------------------------- */

static void test_json_iter_members(void **state)
{
    (void)state;
    static const char obj[] = " { \"a\" : 1 ,\"b\":[1,{\"c\":\"}]\"}],\"d\\\"q\":\"x\",\"e\":null,"
                              "\"f\":{\"g\":[[],{}]},\"h\":-1.5e3}  ";
    struct br_json_iter it;
    struct br_json_member m;
    assert_int_equal(br_json_obj_iter_init(&it, BR_SLICE_LIT(obj)), BR_OK);
    const char *keys[] = {"a", "b", "d\\\"q", "e", "f", "h"};
    const char *vals[] = {"1", "[1,{\"c\":\"}]\"}]", "\"x\"", "null", "{\"g\":[[],{}]}", "-1.5e3"};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(br_json_obj_iter_next(&it, &m), BR_OK);
        assert_true(br_slice_eq_cstr(m.key, keys[i]));
        assert_true(br_slice_eq_cstr(m.value, vals[i]));
        assert_int_equal(obj[m.start], '"');
    }
    assert_int_equal(br_json_obj_iter_next(&it, &m), BR_ERR_NOTFOUND);
    assert_int_equal(br_json_obj_iter_next(&it, &m), BR_ERR_NOTFOUND);
}

static void test_json_iter_malformed(void **state)
{
    (void)state;
    /* Structure errors stop the iterator; byte-level checks (control characters, UTF-8) are
     * the validator's job (core/json, tested there), which the provider runs first. */
    static const char *const bad[] = {
        "",
        "[1]",
        "{",
        "{\"a\"",
        "{\"a\":}",
        "{\"a\":1,}",
        "{\"a\":[}",
        "{\"a\":\"x}",
        "{\"a\":1 \"b\":2}",
        "{a:1}",
        "{\"a\":{]}",
        "{\"a\":[1,2}",
        "{\"a\":\"\\",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct br_json_iter it;
        struct br_json_member m;
        int rc = br_json_obj_iter_init(&it, br_slice_from_cstr(bad[i]));
        while (rc == BR_OK) {
            rc = br_json_obj_iter_next(&it, &m);
        }
        assert_int_equal(rc, BR_ERR_PARSE);
    }
    /* Deep nesting is bounded, not recursive. */
    static char deep[6000];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof(deep), "{\"a\":");
    for (int i = 0; i < 2500; i++) {
        deep[n++] = '[';
    }
    for (int i = 0; i < 2500; i++) {
        deep[n++] = ']';
    }
    deep[n++] = '}';
    struct br_json_member m;
    assert_int_equal(br_json_obj_find(br_slice_make(deep, n), "a", &m), BR_ERR_PARSE);
    /* 2000 levels are fine. */
    n = (size_t)snprintf(deep, sizeof(deep), "{\"a\":");
    for (int i = 0; i < 2000; i++) {
        deep[n++] = '[';
    }
    for (int i = 0; i < 2000; i++) {
        deep[n++] = ']';
    }
    deep[n++] = '}';
    assert_int_equal(br_json_obj_find(br_slice_make(deep, n), "a", &m), BR_OK);
    assert_int_equal(m.value.len, 4000);
}

static void test_json_key_escapes(void **state)
{
    (void)state;
    assert_true(br_json_key_eq(BR_SLICE_LIT("model"), "model"));
    assert_true(br_json_key_eq(BR_SLICE_LIT("mod\\u0065l"), "model"));
    assert_true(br_json_key_eq(BR_SLICE_LIT("a\\/b\\n"), "a/b\n"));
    assert_true(br_json_key_eq(BR_SLICE_LIT("\\ud83d\\ude00"), "\xF0\x9F\x98\x80"));
    assert_true(br_json_key_eq(BR_SLICE_LIT("\\u00e9"), "\xC3\xA9"));
    assert_false(br_json_key_eq(BR_SLICE_LIT("models"), "model"));
    assert_false(br_json_key_eq(BR_SLICE_LIT("mode"), "model"));
    assert_false(br_json_key_eq(BR_SLICE_LIT("mod\\u00"), "model"));
    assert_false(br_json_key_eq(BR_SLICE_LIT("mod\\x"), "model"));
}

static void edit(const char *obj, const struct br__json_edit *edits, size_t n, char *out,
                 size_t cap)
{
    struct br_buf b;
    br_buf_init(&b, 1 << 20);
    assert_int_equal(br__json_edit(br_slice_from_cstr(obj), edits, n, &b), BR_OK);
    assert_true(b.len < cap);
    memcpy(out, b.ptr, b.len + 1);
    br_buf_cleanup(&b);
}

static void test_json_edit(void **state)
{
    (void)state;
    char out[1024];
    struct br__json_edit e[3] = {
        {.key = "model", .value = BR_SLICE_LIT("\"up\"")},
        {.key = "stream", .value = BR_SLICE_LIT("false"), .only_if_present = true},
        {.key = "drop", .value = {NULL, 0}},
    };
    edit("{\"model\" : \"gpt-4o\",\"temperature\":0.7,\"drop\":[1],\"n\":1e400}", e, 3, out,
         sizeof(out));
    assert_string_equal(out, "{\"model\" : \"up\",\"temperature\":0.7,\"n\":1e400}");
    /* Absent: appended; only_if_present members are not. */
    edit("{}", e, 3, out, sizeof(out));
    assert_string_equal(out, "{\"model\":\"up\"}");
    edit("{\"a\":1}", e, 3, out, sizeof(out));
    assert_string_equal(out, "{\"a\":1,\"model\":\"up\"}");
    /* Duplicates collapse into the first place; escaped spellings count. */
    edit("{\"model\":\"a\",\"x\":1,\"mod\\u0065l\":\"b\",\"stream\":true}", e, 3, out, sizeof(out));
    assert_string_equal(out, "{\"model\":\"up\",\"x\":1,\"stream\":false}");
    /* Garbage in, error out. */
    struct br_buf b;
    br_buf_init(&b, 1024);
    assert_int_equal(br__json_edit(BR_SLICE_LIT("{\"a\":"), e, 3, &b), BR_ERR_PARSE);
    assert_int_equal(br__json_edit(BR_SLICE_LIT("[]"), e, 3, &b), BR_ERR_PARSE);
    br_buf_cleanup(&b);
}

static void test_json_append_string(void **state)
{
    (void)state;
    struct br_buf b;
    br_buf_init(&b, 1024);
    assert_int_equal(br__json_append_string(&b, "a\"b\\c\n\x01\xC3\xA9", 9), BR_OK);
    assert_string_equal(b.ptr, "\"a\\\"b\\\\c\\n\\u0001\xC3\xA9\"");
    json_t *j = parse(br_slice_make(b.ptr, b.len));
    assert_null(j); /* a bare string is not an object; check via a wrapper instead */
    br_buf_reset(&b);
    br_buf_append_cstr(&b, "{\"k\":");
    br__json_append_string(&b, "x\ty\x1f", 4);
    br_buf_append_cstr(&b, "}");
    j = parse(br_slice_make(b.ptr, b.len));
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "k")), "x\ty\x1f");
    json_decref(j);
    br_buf_cleanup(&b);
}

/* ---- usage, errors, retry-after ------------------------------------------------------- */

static void test_usage_read(void **state)
{
    (void)state;
    struct br_usage u;
    assert_true(br__openai_usage_read(
        BR_SLICE_LIT("{\"prompt_tokens\":120,\"completion_tokens\":30,\"total_tokens\":150,"
                     "\"prompt_tokens_details\":{\"cached_tokens\":100},"
                     "\"completion_tokens_details\":{\"reasoning_tokens\":12}}"),
        &u));
    assert_int_equal(u.prompt_tokens, 120);
    assert_int_equal(u.completion_tokens, 30);
    assert_int_equal(u.cached_tokens, 100);
    assert_int_equal(u.reasoning_tokens, 12);
    assert_int_equal(u.cache_write_tokens, 0);
    assert_true(u.reported);
    assert_true(br__openai_usage_read(
        BR_SLICE_LIT(
            "{\"prompt_tokens\":-5,\"completion_tokens\":\"7\",\"prompt_cache_hit_tokens\":4}"),
        &u));
    assert_int_equal(u.prompt_tokens, 0);
    assert_int_equal(u.completion_tokens, 0);
    assert_int_equal(u.cached_tokens, 4);
    u.prompt_tokens = 99;
    assert_false(br__openai_usage_read(BR_SLICE_LIT("null"), &u));
    assert_false(br__openai_usage_read(br_slice_make(NULL, 0), &u));
    assert_int_equal(u.prompt_tokens, 99);
}

static void check_error_shape(struct br_slice body, const char *code)
{
    json_t *j = parse(body);
    assert_non_null(j);
    json_t *e = json_object_get(j, "error");
    assert_true(json_is_object(e));
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_true(json_is_string(json_object_get(e, "type")));
    assert_true(json_is_null(json_object_get(e, "param")));
    if (code) {
        assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    }
    json_decref(j);
}

static void test_error_results(void **state)
{
    (void)state;
    br_arena *a;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    struct br_provider_result r = {0};
    br__provider_fail_transport(a, BR_UPSTREAM_ERROR_TIMEOUT_IDLE, &r);
    assert_int_equal(r.rc, BR_ERR_UPSTREAM);
    assert_int_equal(r.status, 504);
    assert_int_equal(r.error_kind, BR_UPSTREAM_ERROR_TIMEOUT_IDLE);
    check_error_shape(r.error_body, "upstream_timeout_idle");
    br__provider_fail_transport(a, BR_UPSTREAM_ERROR_CONNECT, &r);
    assert_int_equal(r.status, 502);
    check_error_shape(r.error_body, "upstream_connect");

    /* A JSON error object passes through with the upstream's status. */
    static const char j429[] =
        "{\"error\":{\"message\":\"Rate limit\",\"type\":\"requests\",\"param\":null,"
        "\"code\":\"rate_limit_exceeded\"}}";
    br__provider_fail_http(a, 429, BR_SLICE_LIT(j429), "sk-secret-123456", &r);
    assert_int_equal(r.status, 429);
    assert_int_equal(r.error_kind, BR_UPSTREAM_ERROR_HTTP_STATUS);
    assert_true(br_slice_eq_cstr(r.error_body, j429));
    assert_true(r.error_body.ptr != j429); /* copied into the arena */

    /* ...with our key redacted if the upstream echoes it. */
    static const char jkey[] = "{\"error\":{\"message\":\"Incorrect API key sk-secret-123456\"}}";
    br__provider_fail_http(a, 401, BR_SLICE_LIT(jkey), "sk-secret-123456", &r);
    assert_int_equal(r.status, 401);
    assert_false(contains(r.error_body, "sk-secret-123456"));
    assert_true(
        br_slice_eq_cstr(r.error_body, "{\"error\":{\"message\":\"Incorrect API key ***\"}}"));

    /* HTML is wrapped with a sanitized snippet. */
    br__provider_fail_http(
        a, 502, BR_SLICE_LIT("<html><head><title>502 Bad Gateway</title></head>\n<body>nginx"),
        NULL, &r);
    assert_int_equal(r.status, 502);
    check_error_shape(r.error_body, "upstream_http_502");
    assert_true(contains(r.error_body, "upstream returned HTTP 502: 502 Bad Gateway nginx"));

    /* {"error": "text"} (Ollama, TGI) and binary junk. */
    br__provider_fail_http(a, 404, BR_SLICE_LIT("{\"error\":\"model \\\"x\\\" not found\"}"), NULL,
                           &r);
    assert_int_equal(r.status, 404);
    check_error_shape(r.error_body, "upstream_http_404");
    assert_true(contains(r.error_body, "model \\\"x\\\" not found"));
    br__provider_fail_http(a, 500, BR_SLICE_LIT("\x01\xff\"\\bad"), NULL, &r);
    check_error_shape(r.error_body, "upstream_http_500");

    /* Non-error statuses never reach the client as such. */
    br__provider_fail_http(a, 302, BR_SLICE_LIT(""), NULL, &r);
    assert_int_equal(r.status, 502);
    check_error_shape(r.error_body, "upstream_http_302");

    /* A long body is cut. */
    static char longbody[5000];
    memset(longbody, 'z', sizeof(longbody) - 1);
    br__provider_fail_http(a, 500, br_slice_from_cstr(longbody), NULL, &r);
    assert_true(r.error_body.len < 400);
    check_error_shape(r.error_body, NULL);
    br_arena_destroy(a);
}

static void test_redact(void **state)
{
    (void)state;
    br_arena *a;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    struct br_slice in = BR_SLICE_LIT("key=abcdefgh and abcdefgh!");
    struct br_slice out = br__provider_redact(a, in, "abcdefgh");
    assert_true(br_slice_eq_cstr(out, "key=*** and ***!"));
    out = br__provider_redact(a, in, "short"); /* too short to be a key: left alone */
    assert_true(out.ptr == in.ptr);
    out = br__provider_redact(a, in, NULL);
    assert_true(out.ptr == in.ptr);
    br_arena_destroy(a);
}

static void test_retry_after(void **state)
{
    (void)state;
    struct br_upstream_header h[2];
    struct br_upstream_head head = {.status = 429, .headers = h, .n_headers = 1};
    h[0].name = BR_SLICE_LIT("Retry-After");
    h[0].value = BR_SLICE_LIT("7");
    assert_int_equal(br__provider_retry_after_ms(&head), 7000);
    h[0].value = BR_SLICE_LIT("99999999999");
    assert_int_equal(br__provider_retry_after_ms(&head), 3600000);
    h[0].value = BR_SLICE_LIT("soon");
    assert_int_equal(br__provider_retry_after_ms(&head), 0);
    h[0].value = BR_SLICE_LIT("Wed, 21 Oct 2015 07:28:00 GMT"); /* in the past */
    assert_int_equal(br__provider_retry_after_ms(&head), 0);
    h[0].value = BR_SLICE_LIT("Fri, 01 Jan 2100 00:00:00 GMT"); /* far future: capped */
    assert_int_equal(br__provider_retry_after_ms(&head), 3600000);
    h[1].name = BR_SLICE_LIT("retry-after-ms");
    h[1].value = BR_SLICE_LIT("1500.2");
    head.n_headers = 2;
    assert_int_equal(br__provider_retry_after_ms(&head), 1501);
    head.n_headers = 0;
    assert_int_equal(br__provider_retry_after_ms(&head), 0);
}

/* ---- stream processor ----------------------------------------------------------------- */

#define C_ROLE                                                                                   \
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-" \
    "4o-"                                                                                        \
    "2024\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"      \
    "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}"
#define C_HELLO                                                                                  \
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-" \
    "4o-"                                                                                        \
    "2024\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,"      \
    "\"finish_reason\":null}],\"usage\":null}"
#define C_WORLD                                                                                  \
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-" \
    "4o-"                                                                                        \
    "2024\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"logprobs\":null,"     \
    "\"finish_reason\":null}],\"usage\":null}"
#define C_STOP                                                                                     \
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-"   \
    "4o-"                                                                                          \
    "2024\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]" \
    ","                                                                                            \
    "\"usage\":null}"
#define C_USAGE                                                                                  \
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-" \
    "4o-"                                                                                        \
    "2024\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,"             \
    "\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":0},"                       \
    "\"completion_tokens_details\":{\"reasoning_tokens\":0}}}"

static const char openai_stream[] = "data: " C_ROLE "\n\n"
                                    "data: " C_HELLO "\n\n"
                                    ": keep-alive\n\n"
                                    "data: " C_WORLD "\n\n"
                                    "data: " C_STOP "\n\n"
                                    "data: " C_USAGE "\n\n"
                                    "data: [DONE]\n\n";

struct chunks {
    int n;
    char text[16][1024];
    int stop_after; /* set st->stop after this many chunks */
    struct br__openai_stream *st;
};

static void on_chunk(void *user, struct br_slice json)
{
    struct chunks *c = user;
    if (c->n < 16) {
        assert_true(json.len < sizeof(c->text[0]));
        memcpy(c->text[c->n], json.ptr, json.len);
        c->text[c->n][json.len] = '\0';
    }
    c->n++;
    if (c->stop_after && c->n == c->stop_after) {
        c->st->stop = true;
    }
}

static void test_stream_hides_usage_chunk(void **state)
{
    (void)state;
    struct chunks c = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, false, on_chunk, &c);
    assert_int_equal(br__openai_stream_feed(&st, openai_stream, sizeof(openai_stream) - 1), BR_OK);
    assert_int_equal(br__openai_stream_finish(&st), BR_OK);
    assert_int_equal(c.n, 4);
    assert_string_equal(c.text[0], C_ROLE); /* byte for byte */
    assert_string_equal(c.text[1], C_HELLO);
    assert_string_equal(c.text[2], C_WORLD);
    assert_string_equal(c.text[3], C_STOP);
    assert_true(st.done);
    assert_true(st.have_usage);
    assert_int_equal(st.usage.prompt_tokens, 11);
    assert_int_equal(st.usage.completion_tokens, 2);
    assert_string_equal(st.model, "gpt-4o-2024");
    assert_string_equal(st.finish_reason, "stop");
    assert_int_equal(st.n_deltas, 2);
    assert_true(st.t_first_token_ns > 0);
    struct br_usage u;
    br__openai_stream_usage(&st, NULL, &u);
    assert_true(u.reported);
    assert_int_equal(u.prompt_tokens, 11);
    br__openai_stream_cleanup(&st);
}

static void test_stream_shows_usage_when_asked(void **state)
{
    (void)state;
    struct chunks c = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, true, on_chunk, &c);
    assert_int_equal(br__openai_stream_feed(&st, openai_stream, sizeof(openai_stream) - 1), BR_OK);
    assert_int_equal(c.n, 5);
    assert_string_equal(c.text[4], C_USAGE);
    br__openai_stream_cleanup(&st);
}

static void test_stream_every_split(void **state)
{
    (void)state;
    size_t n = sizeof(openai_stream) - 1;
    for (size_t i = 0; i <= n; i += 3) {
        struct chunks c = {0};
        struct br__openai_stream st;
        br__openai_stream_init(&st, false, on_chunk, &c);
        assert_int_equal(br__openai_stream_feed(&st, openai_stream, i), BR_OK);
        assert_int_equal(br__openai_stream_feed(&st, openai_stream + i, n - i), BR_OK);
        assert_int_equal(br__openai_stream_finish(&st), BR_OK);
        assert_int_equal(c.n, 4);
        assert_string_equal(c.text[1], C_HELLO);
        assert_int_equal(st.usage.prompt_tokens, 11);
        br__openai_stream_cleanup(&st);
    }
}

static void test_stream_estimates_without_usage(void **state)
{
    (void)state;
    static const char s[] =
        "data: {\"choices\":[{\"delta\":{\"content\":\"The answer\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\" is\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":"
        "{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
        "{\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}]}}]}\n\n";
    struct chunks c = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, false, on_chunk, &c);
    assert_int_equal(br__openai_stream_feed(&st, s, sizeof(s) - 1), BR_OK);
    assert_int_equal(c.n, 4);
    assert_int_equal(st.n_deltas, 4);
    assert_false(st.have_usage);
    json_t *req =
        json_loads("{\"messages\":[{\"role\":\"user\",\"content\":\"What is it?\"}]}", 0, NULL);
    struct br_usage u;
    br__openai_stream_usage(&st, req, &u);
    assert_false(u.reported);
    assert_int_equal(u.prompt_tokens, br_tokens_estimate_chat(req));
    assert_true(u.completion_tokens >= 4);
    assert_int_equal(u.completion_tokens, st.est_completion > 4 ? st.est_completion : 4);
    json_decref(req);
    br__openai_stream_cleanup(&st);
}

static void test_stream_rejects_bad_payload(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "data: not json\n\n",
        "data: [1,2]\n\n",
        "data: \"str\"\n\n",
        "data: {\"choices\":[]\n\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct chunks c = {0};
        struct br__openai_stream st;
        br__openai_stream_init(&st, false, on_chunk, &c);
        assert_int_equal(br__openai_stream_feed(&st, bad[i], strlen(bad[i])), BR_ERR_PARSE);
        /* Sticky. */
        assert_int_equal(br__openai_stream_feed(&st, "data: {}\n\n", 10), BR_ERR_PARSE);
        assert_int_equal(br__openai_stream_finish(&st), BR_ERR_PARSE);
        assert_int_equal(c.n, 0);
        br__openai_stream_cleanup(&st);
    }
    /* Empty events are keep-alives, and nothing after [DONE] counts. */
    struct chunks c = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, false, on_chunk, &c);
    static const char ok[] = "data:\n\ndata: [DONE]\n\ndata: junk\n\n";
    assert_int_equal(br__openai_stream_feed(&st, ok, sizeof(ok) - 1), BR_OK);
    assert_int_equal(c.n, 0);
    br__openai_stream_cleanup(&st);
}

static void test_stream_error_event(void **state)
{
    (void)state;
    static const char s[] =
        "data: " C_HELLO "\n\n"
        "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
    struct chunks c = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, false, on_chunk, &c);
    assert_int_equal(br__openai_stream_feed(&st, s, sizeof(s) - 1), BR_ERR_UPSTREAM);
    assert_int_equal(c.n, 1);
    assert_string_equal(st.error_body.ptr,
                        "{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}");
    br__openai_stream_cleanup(&st);
    /* A named error event with a non-object payload is wrapped. */
    static const char s2[] = "event: error\ndata: boom\n\n";
    br__openai_stream_init(&st, false, on_chunk, &c);
    assert_int_equal(br__openai_stream_feed(&st, s2, sizeof(s2) - 1), BR_ERR_UPSTREAM);
    check_error_shape(br_slice_make(st.error_body.ptr, st.error_body.len), "upstream_stream_error");
    br__openai_stream_cleanup(&st);
    /* Other named events are ignored. */
    static const char s3[] = "event: ping\ndata: whatever\n\ndata: " C_HELLO "\n\n";
    memset(&c, 0, sizeof(c));
    br__openai_stream_init(&st, false, on_chunk, &c);
    assert_int_equal(br__openai_stream_feed(&st, s3, sizeof(s3) - 1), BR_OK);
    assert_int_equal(c.n, 1);
    br__openai_stream_cleanup(&st);
}

static void test_stream_folds_newlines(void **state)
{
    (void)state;
    static const char s[] =
        "data: {\"choices\":\ndata: [{\"delta\":{\"content\":\"a\\nb\"}}]}\r\n\r\n";
    struct chunks c = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, false, on_chunk, &c);
    assert_int_equal(br__openai_stream_feed(&st, s, sizeof(s) - 1), BR_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.text[0], "{\"choices\": [{\"delta\":{\"content\":\"a\\nb\"}}]}");
    br__openai_stream_cleanup(&st);
}

static void test_stream_stop(void **state)
{
    (void)state;
    struct chunks c = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, true, on_chunk, &c);
    c.stop_after = 2;
    c.st = &st;
    assert_int_equal(br__openai_stream_feed(&st, openai_stream, sizeof(openai_stream) - 1), BR_OK);
    assert_int_equal(c.n, 2);
    assert_int_equal(br__openai_stream_feed(&st, openai_stream, sizeof(openai_stream) - 1), BR_OK);
    assert_int_equal(c.n, 2);
    br__openai_stream_cleanup(&st);
}

static void test_stream_from_completion(void **state)
{
    (void)state;
    static const char body[] =
        "{\"id\":\"chatcmpl-9\",\"object\":\"chat.completion\",\"created\":5,\"model\":\"llama\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi there\","
        "\"tool_calls\":[{\"id\":\"t\",\"type\":\"function\",\"function\":{\"name\":\"f\","
        "\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}],"
        "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}";
    struct chunks c = {0};
    struct br__openai_stream st;
    br__openai_stream_init(&st, true, on_chunk, &c);
    assert_int_equal(br__openai_stream_from_completion(&st, BR_SLICE_LIT(body)), BR_OK);
    assert_int_equal(c.n, 2);
    json_t *j = json_loads(c.text[0], 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion.chunk");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    json_t *delta = json_object_get(ch, "delta");
    assert_string_equal(json_string_value(json_object_get(delta, "content")), "Hi there");
    json_t *tc = json_array_get(json_object_get(delta, "tool_calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(tc, "index")), 0);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")), "tool_calls");
    json_decref(j);
    j = json_loads(c.text[1], 0, NULL);
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")), 5);
    json_decref(j);
    assert_true(st.have_usage);
    assert_string_equal(st.model, "llama");
    assert_string_equal(st.finish_reason, "tool_calls");
    br__openai_stream_cleanup(&st);
    /* Usage hidden when not asked for; not a completion -> PARSE. */
    memset(&c, 0, sizeof(c));
    br__openai_stream_init(&st, false, on_chunk, &c);
    assert_int_equal(br__openai_stream_from_completion(&st, BR_SLICE_LIT(body)), BR_OK);
    assert_int_equal(c.n, 1);
    br__openai_stream_cleanup(&st);
    br__openai_stream_init(&st, false, on_chunk, &c);
    assert_int_equal(br__openai_stream_from_completion(&st, BR_SLICE_LIT("{\"x\":1}")),
                     BR_ERR_PARSE);
    br__openai_stream_cleanup(&st);
}

static void test_body_scan(void **state)
{
    (void)state;
    struct br__openai_stream st;
    br__openai_stream_init(&st, false, NULL, NULL);
    static const char body[] =
        "{\"id\":\"x\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":"
        "{\"role\":\"assistant\",\"content\":\"Hello there, "
        "friend\"},\"finish_reason\":\"length\"}],"
        "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,"
        "\"completion_tokens_details\":{\"reasoning_tokens\":1}}}";
    assert_int_equal(br__openai_body_scan(&st, BR_SLICE_LIT(body)), BR_OK);
    assert_true(st.have_usage);
    assert_int_equal(st.usage.reasoning_tokens, 1);
    assert_string_equal(st.model, "gpt-4o-mini");
    assert_string_equal(st.finish_reason, "length");
    br__openai_stream_cleanup(&st);
    br__openai_stream_init(&st, false, NULL, NULL);
    assert_int_equal(br__openai_body_scan(&st, BR_SLICE_LIT("{\"object\":\"list\"}")),
                     BR_ERR_PARSE);
    assert_int_equal(br__openai_body_scan(&st, BR_SLICE_LIT("<html>")), BR_ERR_PARSE);
    assert_int_equal(br__openai_body_scan(&st, br_slice_make(NULL, 0)), BR_ERR_PARSE);
    br__openai_stream_cleanup(&st);
}

/* ---- whole calls ---------------------------------------------------------------------- */

struct script {
    const char *response;     /* sent whole */
    const char *const *parts; /* or: sent one by one with a pause */
    int n_parts;
    int pause_ms;
    bool close_after;
    bool wait_peer_close;
};

static void h_script(struct ts_conn *c, const struct ts_request *req, void *user)
{
    (void)req;
    const struct script *s = user;
    if (s->response) {
        ts_send_str(c, s->response);
    }
    for (int i = 0; i < s->n_parts; i++) {
        if (i > 0 && s->pause_ms) {
            ts_sleep_ms(s->pause_ms);
        }
        if (!ts_send_str(c, s->parts[i])) {
            atomic_fetch_add(&c->srv->n_peer_closed, 1);
            break;
        }
    }
    if (s->wait_peer_close) {
        ts_wait_peer_close(c, 5000);
    }
    c->close_after = s->close_after;
}

struct sink_rec {
    int n_begin;
    int n_chunks;
    char chunks[16][1024];
    char body[8192];
    size_t body_len;
    int n_body;
    int n_done;
    bool begin_before_output;
    struct br_provider_result res;
    char error_body[8192];
    char model[128];
    char finish[64];
    /* cancel */
    int cancel_at_chunk;
    struct br_provider_result partial;
    struct call_env *env;
};

struct call_env {
    uv_loop_t loop;
    uv_timer_t guard;
    br_upstream *up;
    br_arena *arena;
    json_t *request;
    struct br_provider_target target;
    struct br_provider_call call;
    struct sink_rec rec;
    char base_url[128];
    bool timed_out;
    bool stopped;
};

static void s_begin(void *user)
{
    struct sink_rec *r = user;
    r->begin_before_output = r->n_chunks == 0 && r->n_body == 0;
    r->n_begin++;
}

static void s_chunk(void *user, struct br_slice json)
{
    struct sink_rec *r = user;
    assert_int_equal(r->n_begin, 1);
    if (r->n_chunks < 16 && json.len < sizeof(r->chunks[0])) {
        memcpy(r->chunks[r->n_chunks], json.ptr, json.len);
        r->chunks[r->n_chunks][json.len] = '\0';
    }
    r->n_chunks++;
    if (r->cancel_at_chunk && r->n_chunks == r->cancel_at_chunk) {
        br_provider_openai.call_cancel(&r->env->call, &r->partial);
        r->env->stopped = true;
        uv_stop(&r->env->loop);
    }
}

static void s_body(void *user, struct br_slice json)
{
    struct sink_rec *r = user;
    assert_true(json.len < sizeof(r->body));
    memcpy(r->body, json.ptr, json.len);
    r->body_len = json.len;
    r->n_body++;
}

static void s_done(void *user, const struct br_provider_result *res)
{
    struct sink_rec *r = user;
    r->n_done++;
    r->res = *res;
    size_t n = res->error_body.len < sizeof(r->error_body) - 1 ? res->error_body.len : 0;
    memcpy(r->error_body, res->error_body.ptr ? res->error_body.ptr : "", n);
    r->error_body[n] = '\0';
    snprintf(r->model, sizeof(r->model), "%s", res->upstream_model ? res->upstream_model : "");
    snprintf(r->finish, sizeof(r->finish), "%s", res->finish_reason ? res->finish_reason : "");
    r->res.error_body = br_slice_make(NULL, 0);
    r->res.upstream_model = NULL;
    r->res.finish_reason = NULL;
    r->env->stopped = true;
    uv_stop(&r->env->loop);
}

static const struct br_provider_sink sink = {s_begin, s_chunk, s_body, s_done, NULL};

static void env_guard(uv_timer_t *t)
{
    struct call_env *env = t->data;
    env->timed_out = true;
    uv_stop(&env->loop);
}

static struct call_env *env_new(const struct test_server *srv, const char *raw_body, bool stream,
                                bool wants_usage)
{
    struct call_env *env = calloc(1, sizeof(*env));
    assert_int_equal(uv_loop_init(&env->loop), 0);
    uv_timer_init(&env->loop, &env->guard);
    env->guard.data = env;
    assert_int_equal(br_upstream_create(&env->loop, NULL, &env->up), BR_OK);
    assert_int_equal(br_arena_create(0, &env->arena), BR_OK);
    if (srv) {
        snprintf(env->base_url, sizeof(env->base_url), "http://127.0.0.1:%u/v1/", srv->port);
    } else {
        snprintf(env->base_url, sizeof(env->base_url), "http://127.0.0.1:1/v1");
    }
    env->target.name = "fast";
    env->target.upstream_model = "gpt-4o-mini";
    env->target.base_url = env->base_url;
    env->target.api_key = "sk-test-key-0123456789";
    static const char *const extra[] = {"OpenAI-Organization: org-1"};
    env->target.extra_headers = extra;
    env->target.n_extra_headers = 1;
    env->target.first_byte_timeout_ms = 3000;
    env->target.idle_timeout_ms = 3000;
    json_error_t err;
    env->request = json_loads(raw_body, JSON_DECODE_INT_AS_REAL, &err);
    assert_non_null(env->request);
    env->call.target = &env->target;
    env->call.loop = &env->loop;
    env->call.upstream = env->up;
    env->call.arena = env->arena;
    env->call.request = env->request;
    env->call.raw_body = br_slice_from_cstr(raw_body);
    env->call.stream = stream;
    env->call.client_wants_usage = wants_usage;
    env->call.request_id = "req-1";
    env->call.sink = &sink;
    env->call.sink_user = &env->rec;
    env->rec.env = env;
    return env;
}

static void env_run(struct call_env *env)
{
    assert_int_equal(br_provider_openai.call_start(&env->call), BR_OK);
    assert_int_equal(env->rec.n_done, 0); /* never inside call_start */
    uv_timer_start(&env->guard, env_guard, 8000, 0);
    while (!env->stopped && !env->timed_out) {
        uv_run(&env->loop, UV_RUN_DEFAULT);
    }
    uv_timer_stop(&env->guard);
    assert_false(env->timed_out);
}

static void env_free(struct call_env *env)
{
    br_arena_destroy(env->arena); /* cancels anything still running */
    br_upstream_destroy(env->up);
    uv_close((uv_handle_t *)&env->guard, NULL);
    uv_run(&env->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&env->loop), 0);
    json_decref(env->request);
    free(env);
}

static const char client_body[] =
    "{\"model\":\"fast\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello\"}],"
    "\"temperature\":0.7,\"top_p\":1.0e0,\"seed\":12345678901234567890,"
    "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"strict\":true}"
    "},"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],"
    "\"x_vendor_knob\":[1, 2.50, \"\\u00e9\"]";

static const char completion[] =
    "{\"id\":\"chatcmpl-7\",\"object\":\"chat.completion\",\"created\":1700000000,"
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
    "\"assistant\",\"content\":\"Hello!\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\"total_tokens\":12,"
    "\"prompt_tokens_details\":{\"cached_tokens\":4}},\"system_fingerprint\":\"fp_1\"}";

static void check_spliced(const struct test_server *srv, bool stream, const char *opts)
{
    const char *body = srv->last_body;
    /* Every field but the ones we own arrives exactly as the client wrote it. */
    assert_non_null(strstr(body, "\"temperature\":0.7,\"top_p\":1.0e0,"
                                 "\"seed\":12345678901234567890,"));
    assert_non_null(strstr(body, "\"x_vendor_knob\":[1, 2.50, \"\\u00e9\"]"));
    assert_non_null(strstr(body, "\"response_format\":{\"type\":\"json_schema\","
                                 "\"json_schema\":{\"name\":\"x\",\"strict\":true}}"));
    assert_non_null(strstr(body, "{\"model\":\"gpt-4o-mini\","));
    json_t *j = json_loads(body, JSON_DECODE_INT_AS_REAL, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "gpt-4o-mini");
    if (stream) {
        assert_true(json_is_true(json_object_get(j, "stream")));
        assert_non_null(strstr(body, opts));
    } else {
        assert_null(json_object_get(j, "stream_options"));
    }
    json_decref(j);
    const char *head = srv->last_head;
    assert_true(strncmp(head, "POST /v1/chat/completions HTTP/1.1\r\n", 36) == 0);
    assert_non_null(strstr(head, "\r\nAuthorization: Bearer sk-test-key-0123456789\r\n"));
    assert_non_null(strstr(head, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(head, "\r\nOpenAI-Organization: org-1\r\n"));
    assert_non_null(strstr(head, stream ? "\r\nAccept: text/event-stream\r\n"
                                        : "\r\nAccept: application/json\r\n"));
}

static void test_call_non_stream(void **state)
{
    (void)state;
    char resp[4096];
    snprintf(resp, sizeof(resp),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(completion), completion);
    struct script s = {.response = resp};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s}", client_body);
    struct call_env *env = env_new(&srv, body, false, false);
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->n_done, 1);
    assert_int_equal(r->res.rc, BR_OK);
    assert_int_equal(r->res.status, 200);
    assert_int_equal(r->n_begin, 1);
    assert_true(r->begin_before_output);
    assert_int_equal(r->n_body, 1);
    assert_int_equal(r->body_len, strlen(completion));
    assert_memory_equal(r->body, completion, r->body_len); /* unchanged */
    assert_true(r->res.usage.reported);
    assert_int_equal(r->res.usage.prompt_tokens, 10);
    assert_int_equal(r->res.usage.completion_tokens, 2);
    assert_int_equal(r->res.usage.cached_tokens, 4);
    assert_string_equal(r->model, "gpt-4o-mini-2024-07-18");
    assert_string_equal(r->finish, "stop");
    assert_true(r->res.t_first_byte_ns > 0);
    assert_false(r->res.partial);
    check_spliced(&srv, false, NULL);
    env_free(env);
    ts_stop(&srv);
}

static const char sse_head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; "
                               "charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n";

/* Builds a chunked SSE response from payload strings, one HTTP chunk each. */
static int build_sse(char out[][2048], int max, const char *const *events, int n, bool end)
{
    int k = 0;
    snprintf(out[k++], 2048, "%s", sse_head);
    for (int i = 0; i < n && k < max; i++) {
        char ev[1800];
        snprintf(ev, sizeof(ev), "data: %s\n\n", events[i]);
        snprintf(out[k++], 2048, "%zx\r\n%s\r\n", strlen(ev), ev);
    }
    if (end && k < max) {
        snprintf(out[k++], 2048, "0\r\n\r\n");
    }
    return k;
}

static void test_call_stream(void **state)
{
    (void)state;
    static char parts[8][2048];
    static const char *const events[] = {C_ROLE, C_HELLO, C_WORLD, C_STOP, C_USAGE, "[DONE]"};
    int n = build_sse(parts, 8, events, 6, true);
    const char *ptrs[8];
    for (int i = 0; i < n; i++) {
        ptrs[i] = parts[i];
    }
    struct script s = {.parts = ptrs, .n_parts = n, .pause_ms = 10};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true,\"stream_options\":{\"x_keep\":[1]}}",
             client_body);
    struct call_env *env = env_new(&srv, body, true, false);
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->n_done, 1);
    assert_int_equal(r->res.rc, BR_OK);
    assert_int_equal(r->res.status, 200);
    assert_int_equal(r->n_begin, 1);
    assert_int_equal(r->n_chunks, 4); /* the usage chunk is hidden */
    assert_string_equal(r->chunks[1], C_HELLO);
    assert_int_equal(r->n_body, 0);
    assert_true(r->res.usage.reported);
    assert_int_equal(r->res.usage.prompt_tokens, 11);
    assert_true(r->res.t_first_token_ns >= r->res.t_first_byte_ns);
    assert_string_equal(r->finish, "stop");
    check_spliced(&srv, true, "\"stream_options\":{\"x_keep\":[1],\"include_usage\":true}");
    env_free(env);
    ts_stop(&srv);
}

static void test_call_stream_usage_requested(void **state)
{
    (void)state;
    static char parts[8][2048];
    static const char *const events[] = {C_HELLO, C_STOP, C_USAGE, "[DONE]"};
    int n = build_sse(parts, 8, events, 4, true);
    const char *ptrs[8];
    for (int i = 0; i < n; i++) {
        ptrs[i] = parts[i];
    }
    struct script s = {.parts = ptrs, .n_parts = n};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             client_body);
    struct call_env *env = env_new(&srv, body, true, true);
    env_run(env);
    assert_int_equal(env->rec.res.rc, BR_OK);
    assert_int_equal(env->rec.n_chunks, 3);
    assert_string_equal(env->rec.chunks[2], C_USAGE);
    check_spliced(&srv, true, "\"stream_options\":{\"include_usage\":true}");
    env_free(env);
    ts_stop(&srv);
}

static void test_call_stream_adds_stream_options(void **state)
{
    (void)state;
    static char parts[8][2048];
    static const char *const events[] = {C_STOP, "[DONE]"};
    int n = build_sse(parts, 8, events, 2, true);
    const char *ptrs[8];
    for (int i = 0; i < n; i++) {
        ptrs[i] = parts[i];
    }
    struct script s = {.parts = ptrs, .n_parts = n};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true}", client_body);
    struct call_env *env = env_new(&srv, body, true, false);
    env_run(env);
    assert_int_equal(env->rec.res.rc, BR_OK);
    check_spliced(&srv, true, "\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    /* Without usage from the upstream, usage is estimated. */
    assert_false(env->rec.res.usage.reported);
    assert_int_equal(env->rec.res.usage.prompt_tokens, br_tokens_estimate_chat(env->request));
    env_free(env);
    ts_stop(&srv);
}

static void test_call_error_passthrough(void **state)
{
    (void)state;
    static const char err[] =
        "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\","
        "\"param\":null,\"code\":\"rate_limit_exceeded\"}}";
    char resp[1024];
    snprintf(resp, sizeof(resp),
             "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
             "Retry-After: 3\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(err), err);
    struct script s = {.response = resp};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true}", client_body);
    struct call_env *env = env_new(&srv, body, true, false);
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->res.rc, BR_ERR_UPSTREAM);
    assert_int_equal(r->res.status, 429);
    assert_int_equal(r->res.error_kind, BR_UPSTREAM_ERROR_HTTP_STATUS);
    assert_string_equal(r->error_body, err);
    assert_int_equal(r->res.retry_after_ms, 3000);
    assert_int_equal(r->n_begin, 0);
    assert_int_equal(r->n_chunks, 0);
    env_free(env);
    ts_stop(&srv);
}

static void test_call_error_wrapped(void **state)
{
    (void)state;
    static const char html[] = "<html><body><h1>No capacity</h1></body></html>\r\n\r\n";
    char resp[512];
    snprintf(resp, sizeof(resp),
             "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(html), html);
    struct script s = {.response = resp};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s}", client_body);
    struct call_env *env = env_new(&srv, body, false, false);
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->res.rc, BR_ERR_UPSTREAM);
    assert_int_equal(r->res.status, 503);
    check_error_shape(br_slice_from_cstr(r->error_body), "upstream_http_503");
    assert_non_null(strstr(r->error_body, "upstream returned HTTP 503: No capacity"));
    assert_int_equal(r->n_begin, 0);
    assert_int_equal(r->n_body, 0);
    env_free(env);
    ts_stop(&srv);
}

static void test_call_invalid_json_body(void **state)
{
    (void)state;
    struct script s = {.response = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 8\r\n\r\nnot json"};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s}", client_body);
    struct call_env *env = env_new(&srv, body, false, false);
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->res.rc, BR_ERR_UPSTREAM);
    assert_int_equal(r->res.status, 502);
    assert_int_equal(r->res.error_kind, BR_UPSTREAM_ERROR_BAD_RESPONSE);
    check_error_shape(br_slice_from_cstr(r->error_body), "upstream_bad_response");
    assert_int_equal(r->n_begin, 0);
    assert_int_equal(r->n_body, 0);
    env_free(env);
    ts_stop(&srv);
}

static void test_call_stream_invalid_payload(void **state)
{
    (void)state;
    static char parts[8][2048];
    static const char *const events[] = {C_HELLO, "{broken", C_STOP, "[DONE]"};
    int n = build_sse(parts, 8, events, 4, true);
    const char *ptrs[8];
    for (int i = 0; i < n; i++) {
        ptrs[i] = parts[i];
    }
    struct script s = {.parts = ptrs, .n_parts = n};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true}", client_body);
    struct call_env *env = env_new(&srv, body, true, false);
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->res.rc, BR_ERR_UPSTREAM);
    assert_int_equal(r->res.status, 502);
    assert_int_equal(r->res.error_kind, BR_UPSTREAM_ERROR_BAD_RESPONSE);
    assert_true(r->res.partial);
    assert_int_equal(r->n_chunks, 1);
    assert_false(r->res.usage.reported);
    env_free(env);
    ts_stop(&srv);
}

static void test_call_stream_cut(void **state)
{
    (void)state;
    static char parts[8][2048];
    static const char *const events[] = {C_ROLE, C_HELLO, C_WORLD};
    int n = build_sse(parts, 8, events, 3, false); /* no final chunk: connection closes */
    const char *ptrs[8];
    for (int i = 0; i < n; i++) {
        ptrs[i] = parts[i];
    }
    struct script s = {.parts = ptrs, .n_parts = n, .close_after = true};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true}", client_body);
    struct call_env *env = env_new(&srv, body, true, false);
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->res.rc, BR_ERR_UPSTREAM);
    assert_int_equal(r->res.error_kind, BR_UPSTREAM_ERROR_CLOSED);
    assert_int_equal(r->res.status, 502);
    assert_true(r->res.partial);
    assert_int_equal(r->n_chunks, 3);
    assert_false(r->res.usage.reported);
    assert_int_equal(r->res.usage.prompt_tokens, br_tokens_estimate_chat(env->request));
    assert_true(r->res.usage.completion_tokens >= 2);
    check_error_shape(br_slice_from_cstr(r->error_body), "upstream_closed");
    env_free(env);
    ts_stop(&srv);
}

static void test_call_stream_ends_without_done(void **state)
{
    (void)state;
    static char parts[8][2048];
    static const char *const events[] = {C_HELLO, C_WORLD};
    int n = build_sse(parts, 8, events, 2, true); /* clean HTTP end, no finish, no [DONE] */
    const char *ptrs[8];
    for (int i = 0; i < n; i++) {
        ptrs[i] = parts[i];
    }
    struct script s = {.parts = ptrs, .n_parts = n};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true}", client_body);
    struct call_env *env = env_new(&srv, body, true, false);
    env_run(env);
    assert_int_equal(env->rec.res.rc, BR_ERR_UPSTREAM);
    assert_int_equal(env->rec.res.error_kind, BR_UPSTREAM_ERROR_CLOSED);
    assert_true(env->rec.res.partial);
    env_free(env);
    ts_stop(&srv);
}

static void test_call_stream_json_fallback(void **state)
{
    (void)state;
    char resp[4096];
    snprintf(resp, sizeof(resp),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(completion), completion);
    struct script s = {.response = resp};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true}", client_body);
    struct call_env *env = env_new(&srv, body, true, false);
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->res.rc, BR_OK);
    assert_int_equal(r->n_begin, 1);
    assert_int_equal(r->n_chunks, 1);
    assert_non_null(
        strstr(r->chunks[0], "\"delta\":{\"role\":\"assistant\",\"content\":\"Hello!\"}"));
    assert_true(r->res.usage.reported);
    assert_int_equal(r->res.usage.prompt_tokens, 10);
    env_free(env);
    ts_stop(&srv);
}

static void test_call_cancel_mid_stream(void **state)
{
    (void)state;
    static char parts[8][2048];
    static const char *const events[] = {C_ROLE, C_HELLO, C_WORLD, C_STOP, "[DONE]"};
    int n = build_sse(parts, 8, events, 5, true);
    const char *ptrs[8];
    for (int i = 0; i < n; i++) {
        ptrs[i] = parts[i];
    }
    struct script s = {.parts = ptrs, .n_parts = n, .pause_ms = 300};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    char body[2048];
    snprintf(body, sizeof(body), "%s,\"stream\":true}", client_body);
    struct call_env *env = env_new(&srv, body, true, false);
    env->rec.cancel_at_chunk = 2;
    env_run(env);
    struct sink_rec *r = &env->rec;
    assert_int_equal(r->n_chunks, 2);
    assert_int_equal(r->n_done, 0);
    assert_int_equal(r->partial.rc, BR_ERR_CANCELED);
    assert_int_equal(r->partial.error_kind, BR_UPSTREAM_ERROR_CANCELED);
    assert_true(r->partial.partial);
    assert_false(r->partial.usage.reported);
    assert_int_equal(r->partial.usage.prompt_tokens, br_tokens_estimate_chat(env->request));
    assert_true(r->partial.usage.completion_tokens >= 1);
    assert_string_equal(r->partial.upstream_model, "gpt-4o-2024");
    assert_true(r->partial.t_first_token_ns > 0);
    /* Nothing more arrives, and the upstream connection is gone. */
    uv_run(&env->loop, UV_RUN_NOWAIT);
    assert_int_equal(r->n_chunks, 2);
    assert_int_equal(r->n_done, 0);
    for (int i = 0; i < 300 && atomic_load(&srv.n_peer_closed) == 0; i++) {
        ts_sleep_ms(10);
    }
    assert_true(atomic_load(&srv.n_peer_closed) >= 1);
    env_free(env);
    ts_stop(&srv);
}

static void test_call_transport_errors(void **state)
{
    (void)state;
    char body[2048];
    snprintf(body, sizeof(body), "%s}", client_body);
    struct call_env *env = env_new(NULL, body, false, false);
    env_run(env);
    assert_int_equal(env->rec.res.rc, BR_ERR_UPSTREAM);
    assert_int_equal(env->rec.res.status, 502);
    assert_int_equal(env->rec.res.error_kind, BR_UPSTREAM_ERROR_CONNECT);
    check_error_shape(br_slice_from_cstr(env->rec.error_body), "upstream_connect");
    assert_null(strstr(env->rec.error_body, "127.0.0.1")); /* no infrastructure details */
    env_free(env);

    struct script s = {.wait_peer_close = true, .close_after = true};
    struct test_server srv;
    assert_int_equal(ts_start(&srv, h_script, &s), 0);
    env = env_new(&srv, body, false, false);
    env->target.first_byte_timeout_ms = 150;
    env_run(env);
    assert_int_equal(env->rec.res.status, 504);
    assert_int_equal(env->rec.res.error_kind, BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE);
    check_error_shape(br_slice_from_cstr(env->rec.error_body), "upstream_timeout_first_byte");
    env_free(env);
    ts_stop(&srv);
}

static void test_call_start_errors(void **state)
{
    (void)state;
    struct call_env *env = env_new(NULL, "{\"model\":\"x\",\"messages\":[]}", false, false);
    env->call.raw_body = BR_SLICE_LIT("[not an object]");
    assert_int_equal(br_provider_openai.call_start(&env->call), BR_ERR_PARSE);
    env->call.sink = NULL;
    assert_int_equal(br_provider_openai.call_start(&env->call), BR_ERR_INVAL);
    uv_run(&env->loop, UV_RUN_NOWAIT);
    assert_int_equal(env->rec.n_done, 0);
    env_free(env);
}

static void test_model_create(void **state)
{
    (void)state;
    char err[128];
    void *st = (void *)1;
    struct br_provider_target t = {.name = "m", .base_url = "https://api.openai.com/v1"};
    assert_int_equal(br_provider_openai.model_create(&t, &st, err, sizeof(err)), BR_OK);
    assert_null(st);
    br_provider_openai.model_destroy(st);
    t.base_url = "ftp://x";
    assert_int_equal(br_provider_openai.model_create(&t, &st, err, sizeof(err)), BR_ERR_INVAL);
    assert_non_null(strstr(err, "base_url"));
    t.base_url = "http://localhost:8000/v1";
    t.api_key = "sk-abc\r\nX-Evil: 1";
    assert_int_equal(br_provider_openai.model_create(&t, &st, err, sizeof(err)), BR_ERR_INVAL);
    assert_null(strstr(err, "sk-abc")); /* never echo the key */
    t.api_key = NULL;
    const char *bad[] = {"NoColonHere"};
    t.extra_headers = bad;
    t.n_extra_headers = 1;
    assert_int_equal(br_provider_openai.model_create(&t, &st, err, sizeof(err)), BR_ERR_INVAL);
    assert_string_equal(br_provider_openai.name, "openai");
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_iter_members),
        cmocka_unit_test(test_json_iter_malformed),
        cmocka_unit_test(test_json_key_escapes),
        cmocka_unit_test(test_json_edit),
        cmocka_unit_test(test_json_append_string),
        cmocka_unit_test(test_usage_read),
        cmocka_unit_test(test_error_results),
        cmocka_unit_test(test_redact),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_stream_hides_usage_chunk),
        cmocka_unit_test(test_stream_shows_usage_when_asked),
        cmocka_unit_test(test_stream_every_split),
        cmocka_unit_test(test_stream_estimates_without_usage),
        cmocka_unit_test(test_stream_rejects_bad_payload),
        cmocka_unit_test(test_stream_error_event),
        cmocka_unit_test(test_stream_folds_newlines),
        cmocka_unit_test(test_stream_stop),
        cmocka_unit_test(test_stream_from_completion),
        cmocka_unit_test(test_body_scan),
        cmocka_unit_test(test_call_non_stream),
        cmocka_unit_test(test_call_stream),
        cmocka_unit_test(test_call_stream_usage_requested),
        cmocka_unit_test(test_call_stream_adds_stream_options),
        cmocka_unit_test(test_call_error_passthrough),
        cmocka_unit_test(test_call_error_wrapped),
        cmocka_unit_test(test_call_invalid_json_body),
        cmocka_unit_test(test_call_stream_invalid_payload),
        cmocka_unit_test(test_call_stream_cut),
        cmocka_unit_test(test_call_stream_ends_without_done),
        cmocka_unit_test(test_call_stream_json_fallback),
        cmocka_unit_test(test_call_cancel_mid_stream),
        cmocka_unit_test(test_call_transport_errors),
        cmocka_unit_test(test_call_start_errors),
        cmocka_unit_test(test_model_create),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("openai", tests, setup, teardown);
}
