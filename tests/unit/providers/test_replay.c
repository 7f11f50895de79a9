/* SPDX-License-Identifier: MIT */
/*
 * The replay provider end to end on a real libuv loop: hits and misses, whole and streamed
 * answers (chunk sequence, usage with and without include_usage), recorded versus estimated
 * usage, cancellation from inside a sink callback and before any output, long answers spread
 * over several loop iterations, and the GSM8K data the default configuration serves.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/arena.h"
#include "core/err.h"
#include "upstream/provider.h"

#define SAMPLE_CSV   BR_SOURCE_DIR "/tests/data/replay/gsm8k_sample.csv"
#define SAMPLE_JSONL BR_SOURCE_DIR "/tests/data/replay/gsm8k_sample.jsonl"
#define REPO_CSV     BR_SOURCE_DIR "/data/routellm/gsm8k/gsm8k_responses.csv"
#define SHARED_CSV   BR_SOURCE_DIR "/../shared/data/routing/routellm/gsm8k/gsm8k_responses.csv"
#define GPT4         "gpt-4-1106-preview_response"

static const char robe_q[] = "A robe takes 2 bolts of blue fiber and half that much white "
                             "fiber.  How many bolts in total does it take?";
static const char robe_gpt4[] =
    "The robe takes 2 bolts of blue fiber and half that amount of white fiber. So, for the "
    "white fiber, it takes 2 / 2 = 1 bolt.\n\nTherefore, in total, it takes 2 bolts of blue "
    "fiber + 1 bolt of white fiber = 2 + 1 = 3 bolts.";

/* ---- a recording sink ---- */

struct rec {
    int n_begin;
    json_t *chunks; /* parsed chunks */
    json_t *body;
    int n_done;
    struct br_provider_result res; /* copy; error_body points into err_copy */
    char err_copy[1024];
    bool in_start;    /* set while call_start runs: callbacks must not happen */
    int cancel_after; /* cancel from inside on_chunk after this many chunks */
    struct br_provider_call *call;
    struct br_provider_result partial;
    int iterations_with_chunks;
    int chunks_this_iteration;
};

static void rec_begin(void *user)
{
    struct rec *r = user;
    assert_false(r->in_start);
    assert_int_equal(r->n_done, 0);
    r->n_begin++;
}

static void rec_chunk(void *user, struct br_slice json)
{
    struct rec *r = user;
    assert_false(r->in_start);
    assert_int_equal(r->n_begin, 1);
    json_error_t e;
    json_t *j = json_loadb(json.ptr, json.len, 0, &e);
    assert_non_null(j);
    json_array_append_new(r->chunks, j);
    r->chunks_this_iteration++;
    if (r->cancel_after && (int)json_array_size(r->chunks) == r->cancel_after) {
        br_provider_replay.call_cancel(r->call, &r->partial);
    }
}

static void rec_body(void *user, struct br_slice json)
{
    struct rec *r = user;
    assert_false(r->in_start);
    assert_null(r->body);
    r->body = json_loadb(json.ptr, json.len, 0, NULL);
    assert_non_null(r->body);
}

static void rec_done(void *user, const struct br_provider_result *res)
{
    struct rec *r = user;
    assert_false(r->in_start);
    r->n_done++;
    r->res = *res;
    size_t n = res->error_body.len < sizeof(r->err_copy) - 1 ? res->error_body.len
                                                             : sizeof(r->err_copy) - 1;
    if (n) {
        memcpy(r->err_copy, res->error_body.ptr, n);
    }
    r->err_copy[n] = '\0';
    r->res.error_body = br_slice_make(r->err_copy, n);
}

static const struct br_provider_sink sink = {rec_begin, rec_chunk, rec_body, rec_done, NULL};

/* ---- fixture ---- */

struct fx {
    uv_loop_t loop;
    br_arena *arena;
    struct br_provider_target target;
    void *state;
    struct rec rec;
    struct br_provider_call call;
    json_t *request;
};

static void fx_open(struct fx *f, const char *file, const char *response_field)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(br_arena_create(0, &f->arena), BR_OK);
    f->target.name = "gpt-4";
    f->target.upstream_model = "gpt-4-1106-preview";
    f->target.replay_file = file;
    f->target.replay_response_field = response_field;
    char err[256] = "";
    int rc = br_provider_replay.model_create(&f->target, &f->state, err, sizeof(err));
    if (rc != BR_OK) {
        fprintf(stderr, "model_create: %s\n", err);
    }
    assert_int_equal(rc, BR_OK);
    f->rec.chunks = json_array();
}

/* Starts a call for the given user text (or request JSON when it starts with '{'). */
static void fx_start(struct fx *f, const char *user_text, bool stream, bool usage)
{
    if (user_text[0] == '{') {
        f->request = json_loads(user_text, 0, NULL);
    } else {
        f->request = json_pack("{s:s, s:[{s:s, s:s}]}", "model", "gpt-4", "messages", "role",
                               "user", "content", user_text);
    }
    assert_non_null(f->request);
    f->call.target = &f->target;
    f->call.model_state = f->state;
    f->call.loop = &f->loop;
    f->call.arena = f->arena;
    f->call.request = f->request;
    f->call.stream = stream;
    f->call.client_wants_usage = usage;
    f->call.request_id = "test";
    f->call.sink = &sink;
    f->call.sink_user = &f->rec;
    f->rec.call = &f->call;
    f->rec.in_start = true;
    assert_int_equal(br_provider_replay.call_start(&f->call), BR_OK);
    f->rec.in_start = false;
    /* Nothing was delivered inside call_start. */
    assert_int_equal(f->rec.n_begin, 0);
    assert_int_equal(f->rec.n_done, 0);
}

/* Runs the loop one iteration at a time until it has nothing left to do. */
static void fx_run(struct fx *f)
{
    for (int i = 0; i < 100000; i++) {
        f->rec.chunks_this_iteration = 0;
        int alive = uv_run(&f->loop, UV_RUN_ONCE);
        if (f->rec.chunks_this_iteration) {
            f->rec.iterations_with_chunks++;
        }
        if (!alive) {
            return;
        }
    }
    fail_msg("the loop did not settle");
}

static void fx_close(struct fx *f)
{
    fx_run(f);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    br_provider_replay.model_destroy(f->state);
    br_arena_destroy(f->arena);
    json_decref(f->rec.chunks);
    json_decref(f->rec.body);
    json_decref(f->request);
}

static const json_t *choice0(const json_t *j)
{
    return json_array_get(json_object_get(j, "choices"), 0);
}

/* ---- tests ---- */

static void whole_answer_hit(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, SAMPLE_CSV, GPT4);
    fx_start(&f,
             "  A robe takes 2 bolts of blue fiber and half that much white fiber.\n"
             "How many bolts in total does it take? ",
             false, false);
    fx_run(&f);
    assert_int_equal(f.rec.n_begin, 1);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(json_array_size(f.rec.chunks), 0);
    assert_non_null(f.rec.body);
    const json_t *b = f.rec.body;
    assert_true(strncmp(json_string_value(json_object_get(b, "id")), "chatcmpl-replay-", 16) == 0);
    assert_int_equal(strlen(json_string_value(json_object_get(b, "id"))), 16 + 16);
    assert_string_equal(json_string_value(json_object_get(b, "object")), "chat.completion");
    assert_true(json_integer_value(json_object_get(b, "created")) > 1600000000);
    assert_string_equal(json_string_value(json_object_get(b, "model")), "gpt-4-1106-preview");
    const json_t *c = choice0(b);
    assert_int_equal(json_integer_value(json_object_get(c, "index")), 0);
    assert_true(json_is_null(json_object_get(c, "logprobs")));
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    const json_t *m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(m, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(m, "content")), robe_gpt4);
    int64_t pt = br_tokens_estimate_chat(f.request);
    int64_t ct = br_tokens_estimate(robe_gpt4, strlen(robe_gpt4));
    const json_t *u = json_object_get(b, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), pt);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), ct);
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), pt + ct);
    assert_int_equal(f.rec.res.rc, BR_OK);
    assert_int_equal(f.rec.res.status, 200);
    assert_false(f.rec.res.usage.reported);
    assert_int_equal(f.rec.res.usage.prompt_tokens, pt);
    assert_int_equal(f.rec.res.usage.completion_tokens, ct);
    assert_string_equal(f.rec.res.finish_reason, "stop");
    assert_string_equal(f.rec.res.upstream_model, "gpt-4-1106-preview");
    assert_true(f.rec.res.t_first_byte_ns > 0);
    assert_false(f.rec.res.partial);
    fx_close(&f);
}

static void check_stream(struct fx *f, bool with_usage)
{
    const json_t *chunks = f->rec.chunks;
    size_t n = json_array_size(chunks);
    assert_true(n >= 4);
    const json_t *first = json_array_get(chunks, 0);
    const char *id = json_string_value(json_object_get(first, "id"));
    int64_t created = json_integer_value(json_object_get(first, "created"));
    size_t i;
    const json_t *c;
    json_array_foreach(chunks, i, c)
    {
        assert_string_equal(json_string_value(json_object_get(c, "id")), id);
        assert_string_equal(json_string_value(json_object_get(c, "object")),
                            "chat.completion.chunk");
        assert_int_equal(json_integer_value(json_object_get(c, "created")), created);
        assert_string_equal(json_string_value(json_object_get(c, "model")), "gpt-4-1106-preview");
    }
    const json_t *d0 = json_object_get(choice0(first), "delta");
    assert_string_equal(json_string_value(json_object_get(d0, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(d0, "content")), "");
    size_t n_content = n - (with_usage ? 3 : 2);
    char joined[4096] = "";
    for (i = 1; i <= n_content; i++) {
        const json_t *ch = choice0(json_array_get(chunks, i));
        assert_true(json_is_null(json_object_get(ch, "finish_reason")));
        const char *piece =
            json_string_value(json_object_get(json_object_get(ch, "delta"), "content"));
        assert_non_null(piece);
        /* One word, with the whitespace before it. */
        size_t k = strspn(piece, " \t\r\n");
        assert_true(piece[k] != '\0');
        assert_null(strpbrk(piece + k, " \t\r\n"));
        strncat(joined, piece, sizeof(joined) - strlen(joined) - 1);
    }
    assert_string_equal(joined, robe_gpt4);
    const json_t *fin = json_array_get(chunks, n_content + 1);
    assert_string_equal(json_string_value(json_object_get(choice0(fin), "finish_reason")), "stop");
    assert_int_equal(json_object_size(json_object_get(choice0(fin), "delta")), 0);
    if (with_usage) {
        const json_t *last = json_array_get(chunks, n - 1);
        assert_int_equal(json_array_size(json_object_get(last, "choices")), 0);
        const json_t *u = json_object_get(last, "usage");
        assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")),
                         f->rec.res.usage.completion_tokens);
        assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")),
                         f->rec.res.usage.prompt_tokens);
    }
}

static void streamed_hit_with_usage(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, SAMPLE_CSV, GPT4);
    fx_start(&f, robe_q, true, true);
    fx_run(&f);
    assert_int_equal(f.rec.n_begin, 1);
    assert_int_equal(f.rec.n_done, 1);
    assert_null(f.rec.body);
    assert_int_equal(f.rec.res.rc, BR_OK);
    assert_true(f.rec.res.t_first_token_ns >= f.rec.res.t_first_byte_ns);
    check_stream(&f, true);
    fx_close(&f);
}

static void streamed_hit_without_usage(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, SAMPLE_CSV, GPT4);
    fx_start(&f, robe_q, true, false);
    fx_run(&f);
    assert_int_equal(f.rec.n_done, 1);
    check_stream(&f, false);
    fx_close(&f);
}

static void miss_is_404(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, SAMPLE_CSV, GPT4);
    fx_start(&f, "What is the capital of France?", true, true);
    fx_run(&f);
    assert_int_equal(f.rec.n_begin, 0);
    assert_int_equal(json_array_size(f.rec.chunks), 0);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_not_equal(f.rec.res.rc, BR_OK);
    assert_int_equal(f.rec.res.status, 404);
    json_t *e = json_loads(f.rec.err_copy, 0, NULL);
    assert_non_null(e);
    const json_t *err = json_object_get(e, "error");
    assert_string_equal(json_string_value(json_object_get(err, "type")), "invalid_request_error");
    assert_string_equal(json_string_value(json_object_get(err, "param")), "messages");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "replay_miss");
    const char *msg = json_string_value(json_object_get(err, "message"));
    assert_non_null(strstr(msg, "\"gpt-4-1106-preview\""));
    assert_non_null(strstr(msg, "5 recorded prompts"));
    json_decref(e);
    fx_close(&f);
}

static void no_user_message_is_400(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, SAMPLE_CSV, GPT4);
    fx_start(&f, "{\"messages\":[{\"role\":\"system\",\"content\":\"hi\"}]}", false, false);
    fx_run(&f);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.res.status, 400);
    assert_non_null(strstr(f.rec.err_copy, "\"param\":\"messages\""));
    fx_close(&f);
}

static void recorded_usage_is_reported(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, SAMPLE_JSONL, NULL);
    fx_start(&f, robe_q, false, false);
    fx_run(&f);
    assert_int_equal(f.rec.n_done, 1);
    assert_true(f.rec.res.usage.reported);
    assert_int_equal(f.rec.res.usage.prompt_tokens, 61);
    assert_int_equal(f.rec.res.usage.completion_tokens, 81);
    const json_t *u = json_object_get(f.rec.body, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 142);
    fx_close(&f);
}

static void cancel_inside_chunk_callback(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, SAMPLE_CSV, GPT4);
    f.rec.cancel_after = 4; /* role chunk + 3 words */
    fx_start(&f, robe_q, true, true);
    fx_run(&f);
    assert_int_equal(f.rec.n_done, 0);
    assert_int_equal(json_array_size(f.rec.chunks), 4);
    const struct br_provider_result *p = &f.rec.partial;
    assert_int_equal(p->rc, BR_ERR_CANCELED);
    assert_int_equal(p->error_kind, BR_UPSTREAM_ERROR_CANCELED);
    assert_true(p->partial);
    assert_false(p->usage.reported);
    assert_int_equal(p->usage.completion_tokens, br_tokens_estimate("The robe takes", 14));
    assert_int_equal(p->usage.prompt_tokens, br_tokens_estimate_chat(f.request));
    assert_true(p->t_first_token_ns > 0);
    fx_close(&f);
}

static void cancel_before_output(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, SAMPLE_CSV, GPT4);
    fx_start(&f, robe_q, false, false);
    struct br_provider_result p;
    br_provider_replay.call_cancel(&f.call, &p);
    fx_run(&f);
    assert_int_equal(f.rec.n_begin, 0);
    assert_int_equal(f.rec.n_done, 0);
    assert_null(f.rec.body);
    assert_int_equal(p.rc, BR_ERR_CANCELED);
    assert_int_equal(p.usage.completion_tokens, 0);
    assert_true(p.partial);
    /* A second cancel is harmless. */
    br_provider_replay.call_cancel(&f.call, &p);
    fx_close(&f);
}

static void long_answer_spans_iterations(void **state)
{
    (void)state;
    char dir[] = "/tmp/br_replay_long_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof(path), "%s/long.jsonl", dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("{\"prompt\":\"count\",\"response\":\"", fp);
    for (int i = 0; i < 1000; i++) {
        fprintf(fp, "%sw%d", i ? (i % 10 ? " " : "\\n") : "", i);
    }
    fputs("\"}\n", fp);
    fclose(fp);
    struct fx f;
    fx_open(&f, path, NULL);
    fx_start(&f, "count", true, false);
    fx_run(&f);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(json_array_size(f.rec.chunks), 1 + 1000 + 1);
    assert_true(f.rec.iterations_with_chunks > 1); /* other requests get their turn */
    const char *w999 = json_string_value(json_object_get(
        json_object_get(choice0(json_array_get(f.rec.chunks, 1000)), "delta"), "content"));
    assert_string_equal(w999, " w999");
    const char *w10 = json_string_value(json_object_get(
        json_object_get(choice0(json_array_get(f.rec.chunks, 11)), "delta"), "content"));
    assert_string_equal(w10, "\nw10");
    fx_close(&f);
    unlink(path);
    rmdir(dir);
}

static void gsm8k_question_gets_recorded_gpt4_answer(void **state)
{
    (void)state;
    const char *file = access(REPO_CSV, R_OK) == 0 ? REPO_CSV : SHARED_CSV;
    if (access(file, R_OK) != 0) {
        skip();
    }
    struct fx f;
    fx_open(&f, file, GPT4);
    /* A question from the middle of the test set, as a client would send it. */
    fx_start(&f,
             "{\"model\":\"gpt-4-1106-preview\",\"messages\":[{\"role\":\"system\","
             "\"content\":\"Solve the problem.\"},{\"role\":\"user\",\"content\":[{\"type\":"
             "\"text\",\"text\":\"Janet\\u2019s ducks lay 16 eggs per day. She eats three for "
             "breakfast every morning and bakes muffins for her friends every day with four. "
             "She sells the remainder at the farmers' market daily for $2 per fresh duck "
             "egg. How much in dollars does she make every day at the farmers' "
             "market?\"}]}]}",
             false, false);
    fx_run(&f);
    assert_int_equal(f.rec.res.status, 200);
    const char *content = json_string_value(
        json_object_get(json_object_get(choice0(f.rec.body), "message"), "content"));
    assert_true(strncmp(content, "Janet uses 3 eggs for breakfast and 4 for baking muffins", 56) ==
                0);
    assert_non_null(strstr(content, "she makes 9 * $2 = $18 every day"));
    fx_close(&f);

    /* The same question misses on a different wording. */
    fx_open(&f, file, GPT4);
    fx_start(&f, "Janet's ducks lay 16 eggs per day.", false, false);
    fx_run(&f);
    assert_int_equal(f.rec.res.status, 404);
    assert_non_null(strstr(f.rec.err_copy, "1319 recorded prompts"));
    fx_close(&f);
}

static void model_create_errors(void **state)
{
    (void)state;
    struct br_provider_target t = {.name = "r"};
    void *st = (void *)1;
    char err[256] = "";
    assert_int_equal(br_provider_replay.model_create(&t, &st, err, sizeof(err)), BR_ERR_INVAL);
    assert_null(st);
    assert_non_null(strstr(err, "replay_file"));
    t.replay_file = SAMPLE_CSV;
    t.replay_response_field = "no_such_column";
    assert_int_equal(br_provider_replay.model_create(&t, &st, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "gsm8k_sample.csv:1: the header has no column \"no_such_column\""));
    br_provider_replay.model_destroy(NULL);
    assert_ptr_equal(br_provider_find("replay"), &br_provider_replay);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(whole_answer_hit),
        cmocka_unit_test(streamed_hit_with_usage),
        cmocka_unit_test(streamed_hit_without_usage),
        cmocka_unit_test(miss_is_404),
        cmocka_unit_test(no_user_message_is_400),
        cmocka_unit_test(recorded_usage_is_reported),
        cmocka_unit_test(cancel_inside_chunk_callback),
        cmocka_unit_test(cancel_before_output),
        cmocka_unit_test(long_answer_spans_iterations),
        cmocka_unit_test(gsm8k_question_gets_recorded_gpt4_answer),
        cmocka_unit_test(model_create_errors),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("replay", tests, NULL, NULL);
}
