/* SPDX-License-Identifier: MIT */
/*
 * Torture (STYLE.md rule 44, after curl's torture tests and SQLite's fault tests): every parser
 * that takes outside input runs once to count its allocations, then again once per allocation
 * with that allocation failing. Each run must end in success or a clean error — never a crash,
 * a hang, a leak (LeakSanitizer checks at exit) or an inconsistent result.
 */
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "br_test.h"
#include "config/config.h"
#include "core/alloc.h"
#include "core/arena.h"
#include "core/err.h"
#include "http/http_int.h"
#include "upstream/providers/providers_int.h"

/* Runs fn once clean (it must succeed) and then with each of its allocations failing. */
static void torture(const char *name, int (*fn)(void))
{
    br_alloc_fail_at(0);
    uint64_t before = br_alloc_count();
    assert_int_equal(fn(), BR_OK);
    uint64_t n = br_alloc_count() - before;
    size_t clean_failures = 0;
    for (uint64_t i = 1; i <= n; i++) {
        br_alloc_fail_at(i);
        int rc = fn();
        br_alloc_fail_at(0);
        if (rc != BR_OK) {
            clean_failures++;
        }
    }
    printf("torture: %s: %llu allocations, each failed once: %zu clean errors, no crash\n", name,
           (unsigned long long)n, clean_failures);
}

static int run_config(void)
{
    static const char text[] =
        "server: {listen: '127.0.0.1:9000', workers: 2, limits: {body: 1MiB}}\n"
        "auth: {keys: [{id: a, sha256: "
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}]}\n"
        "models:\n"
        "  - {name: a, provider: openai, base_url: 'http://127.0.0.1:1/v1', "
        "price: {input: 0.15, output: 0.6}, headers: {X-A: b}, capabilities: [tools]}\n"
        "  - {name: b, provider: anthropic, price: {input: 3, output: 15, cached_input: 0.3}}\n";
    struct br_config *c = NULL;
    char err[256];
    int rc = br_config_load_string(text, sizeof(text) - 1, "/tmp", &c, err, sizeof(err));
    if (rc == BR_OK) {
        assert_int_equal(c->n_models, 2);
        br_config_unref(c);
    } else {
        assert_true(err[0] != '\0');
    }
    return rc;
}

static int run_chat_request(void)
{
    static const char body[] =
        "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":\"Hello\"}],\"stream\":true,\"stream_options\":"
        "{\"include_usage\":true},\"a1\":1,\"a2\":2,\"a3\":3,\"a4\":4,\"a5\":5,\"a6\":6,\"a7\":7,"
        "\"a8\":8,\"a9\":9,\"b1\":1,\"b2\":2,\"b3\":3,\"b4\":4,\"b5\":5,\"b6\":6,\"b7\":7,\"b8\":8,"
        "\"b9\":9,\"c1\":1,\"c2\":2,\"c3\":3,\"c4\":4,\"c5\":5,\"c6\":6,\"c7\":7,\"c8\":8,\"c9\":9,"
        "\"d1\":1,\"d2\":2,\"d3\":3,\"d4\":4,\"d\\u0035\":5}";
    br_arena *a = NULL;
    int rc = br_arena_create(0, &a);
    if (rc != BR_OK) {
        return rc;
    }
    struct br__chat_request cr;
    struct br__verr e;
    rc = br__chat_request_parse(a, br_slice_make(body, sizeof(body) - 1), &cr, &e);
    if (rc == BR_OK) {
        assert_string_equal(cr.model, "gpt-4o-mini");
        assert_true(cr.stream && cr.wants_usage);
    } else {
        /* The only acceptable failure under allocation faults is running out of memory. */
        assert_true(strcmp(e.code, "out_of_memory") == 0 || strcmp(e.code, "invalid_value") == 0);
        rc = BR_ERR_NOMEM;
    }
    br_arena_destroy(a);
    return rc;
}

static int run_http_parse(void)
{
    static const char req[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                              "Transfer-Encoding: chunked\r\nx-request-id: abc\r\n\r\n"
                              "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    struct br__http_parser p;
    struct br_http_limits lim;
    br_http_limits_default(&lim);
    br__http_parser_init(&p);
    br__http_parser_begin(&p, &lim);
    size_t used = 0;
    int rc = br__http_parser_feed(&p, req, sizeof(req) - 1, &used);
    if (rc == BR_OK) {
        br_arena *a = NULL;
        rc = br_arena_create(0, &a);
        struct br_http_request r;
        memset(&r, 0, sizeof(r));
        if (rc == BR_OK) {
            rc = br__http_parser_fill(&p, a, &r);
        }
        if (rc == BR_OK) {
            assert_true(br_slice_eq_cstr(r.body, "hello world"));
        }
        br_arena_destroy(a);
    } else {
        assert_true(rc == BR_ERR_NOMEM || rc == BR_ERR_PARSE);
        rc = BR_ERR_NOMEM;
    }
    br__http_parser_cleanup(&p);
    return rc;
}

static void on_chunk(void *user, struct br_slice json)
{
    (*(size_t *)user)++;
    (void)json;
}

static int run_openai_stream(void)
{
    static const char sse[] =
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
        "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
        "\"delta\":{\"content\":\"Hello\\nworld\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
        "\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":"
        "{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
    size_t n = 0;
    struct br__openai_stream st;
    br__openai_stream_init(&st, false, on_chunk, &n);
    int rc = br__openai_stream_feed(&st, sse, sizeof(sse) - 1);
    if (rc == BR_OK) {
        rc = br__openai_stream_finish(&st);
    }
    if (rc == BR_OK) {
        assert_true(st.have_usage && st.done);
        assert_int_equal(st.usage.completion_tokens, 2);
        assert_int_equal(n, 3); /* the usage-only chunk is hidden */
    } else {
        assert_int_equal(rc, BR_ERR_NOMEM);
    }
    br__openai_stream_cleanup(&st);
    return rc;
}

static void test_parsers_survive_every_allocation_failure(void **state)
{
    (void)state;
    torture("config", run_config);
    torture("chat request", run_chat_request);
    torture("http request", run_http_parse);
    torture("openai stream", run_openai_stream);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parsers_survive_every_allocation_failure),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("torture", tests, NULL, NULL);
}
