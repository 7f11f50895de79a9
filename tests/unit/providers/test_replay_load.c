/* SPDX-License-Identifier: MIT */
/*
 * Replay files: the real GSM8K sample in CSV and JSONL, the full RouteLLM GSM8K file when the
 * shared data folder is there, prompt normalisation and request keys, the JSON escaper, and
 * every malformed-file case, each of which must fail with one line naming the file and line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "br_test.h"
#include "core/err.h"
#include "upstream/provider.h"
#include "upstream/providers/replay_int.h"

#define SAMPLE_CSV   BR_SOURCE_DIR "/tests/data/replay/gsm8k_sample.csv"
#define SAMPLE_JSONL BR_SOURCE_DIR "/tests/data/replay/gsm8k_sample.jsonl"
#define REPO_CSV     BR_SOURCE_DIR "/data/routellm/gsm8k/gsm8k_responses.csv"
#define SHARED_CSV   BR_SOURCE_DIR "/../shared/data/routing/routellm/gsm8k/gsm8k_responses.csv"
#define GPT4         "gpt-4-1106-preview_response"
#define MIXTRAL      "mistralai/Mixtral-8x7B-Instruct-v0.1_response"

static const char robe_q[] = "A robe takes 2 bolts of blue fiber and half that much white "
                             "fiber.  How many bolts in total does it take?";
static const char robe_gpt4[] =
    "The robe takes 2 bolts of blue fiber and half that amount of white fiber. So, for the "
    "white fiber, it takes 2 / 2 = 1 bolt.\n\nTherefore, in total, it takes 2 bolts of blue "
    "fiber + 1 bolt of white fiber = 2 + 1 = 3 bolts.";

static const struct br__replay_entry *lookup_text(const struct br__replay_model *m,
                                                  const char *text)
{
    struct br_buf k;
    br_buf_init(&k, 1 << 20);
    assert_int_equal(br__replay_normalise(text, strlen(text), &k), BR_OK);
    const struct br__replay_entry *e = br__replay_model_lookup(m, br_slice_make(k.ptr, k.len));
    br_buf_cleanup(&k);
    return e;
}

static void csv_sample_both_columns(void **state)
{
    (void)state;
    char err[256] = "";
    struct br__replay_model *m;
    assert_int_equal(br__replay_model_load(SAMPLE_CSV, "prompt", GPT4, &m, err, sizeof(err)),
                     BR_OK);
    assert_int_equal(m->n_prompts, 5);
    assert_int_equal(m->n_duplicates, 0);
    const struct br__replay_entry *e = lookup_text(m, robe_q);
    assert_non_null(e);
    assert_string_equal(e->answer, robe_gpt4);
    assert_int_equal(e->answer_len, strlen(robe_gpt4));
    assert_false(e->has_usage);
    assert_int_equal(e->completion_tokens, br_tokens_estimate(robe_gpt4, strlen(robe_gpt4)));
    assert_int_equal(e->line, 9); /* record 1 spans lines 2-8 */
    br__replay_model_free(m);

    assert_int_equal(br__replay_model_load(SAMPLE_CSV, NULL, MIXTRAL, &m, err, sizeof(err)), BR_OK);
    assert_int_equal(m->n_prompts, 5);
    e = lookup_text(m, robe_q);
    assert_non_null(e);
    /* Spaces at the start of a quoted field are data (RFC 4180); libcsv must not trim them. */
    assert_true(strncmp(e->answer, " A robe takes 2 bolts", 21) == 0);
    assert_true(strstr(e->answer, "#### 3\n\n") != NULL);
    br__replay_model_free(m);
}

static void jsonl_sample_with_usage(void **state)
{
    (void)state;
    char err[256] = "";
    struct br__replay_model *m;
    assert_int_equal(br__replay_model_load(SAMPLE_JSONL, NULL, NULL, &m, err, sizeof(err)), BR_OK);
    assert_int_equal(m->n_prompts, 4);
    const struct br__replay_entry *e = lookup_text(m, robe_q);
    assert_non_null(e);
    assert_string_equal(e->answer, robe_gpt4);
    assert_true(e->has_usage);
    assert_int_equal(e->prompt_tokens, 61);
    assert_int_equal(e->completion_tokens, 81);
    e = lookup_text(m, "James decides to run 3 sprints 3 times a week. He runs 60 meters each "
                       "sprint. How many total meters does he run a week?");
    assert_non_null(e);
    assert_false(e->has_usage);
    assert_int_equal(e->prompt_tokens, -1);
    assert_int_equal(e->line, 4);
    br__replay_model_free(m);
}

static void full_gsm8k_file(void **state)
{
    (void)state;
    /* The repository's copy (what the default config serves), else the shared data folder. */
    const char *full = access(REPO_CSV, R_OK) == 0 ? REPO_CSV : SHARED_CSV;
    if (access(full, R_OK) != 0) {
        skip();
    }
    char err[256] = "";
    struct br__replay_model *m;
    assert_int_equal(br__replay_model_load(full, "prompt", GPT4, &m, err, sizeof(err)), BR_OK);
    assert_int_equal(m->n_prompts, 1319);
    const struct br__replay_entry *e = lookup_text(m, robe_q);
    assert_non_null(e);
    assert_string_equal(e->answer, robe_gpt4);
    br__replay_model_free(m);
    assert_int_equal(br__replay_model_load(full, "prompt", MIXTRAL, &m, err, sizeof(err)), BR_OK);
    assert_int_equal(m->n_prompts, 1319);
    br__replay_model_free(m);
}

static void normalisation(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"  Hello   world \n", "Hello world"},
        {"a\tb\r\nc\fd\ve", "a b c d e"},
        {"\n\n", ""},
        {"", ""},
        {"x", "x"},
        {"Janet\xe2\x80\x99s  ducks", "Janet\xe2\x80\x99s ducks"},
        {"keep\xc2\xa0nbsp", "keep\xc2\xa0nbsp"}, /* only ASCII whitespace collapses */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct br_buf b;
        br_buf_init(&b, 1024);
        assert_int_equal(br__replay_normalise(cases[i][0], strlen(cases[i][0]), &b), BR_OK);
        assert_non_null(b.ptr);
        assert_string_equal(b.ptr, cases[i][1]);
        br_buf_cleanup(&b);
    }
}

static void request_keys(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"  What is 2+2? \"}]}", "What is 2+2?"},
        {"{\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\","
         "\"content\":\"first\"},{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"user\","
         "\"content\":\"second\"},{\"role\":\"assistant\",\"content\":\"prefill\"}]}",
         "second"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"line "
         "one\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x\"}},{\"type\":"
         "\"text\",\"text\":\"line two\"}]}]}",
         "line one line two"},
        {"[{\"role\":\"user\",\"content\":\"bare array\"}]", "bare array"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *req = json_loads(cases[i][0], 0, NULL);
        assert_non_null(req);
        struct br_buf b;
        br_buf_init(&b, 1024);
        assert_int_equal(br__replay_request_key(req, &b), BR_OK);
        assert_string_equal(b.ptr, cases[i][1]);
        br_buf_cleanup(&b);
        json_decref(req);
    }
    static const char *const none[] = {
        "{\"messages\":[{\"role\":\"system\",\"content\":\"only system\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
        "{}",
        "{\"messages\":\"x\"}",
    };
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        json_t *req = json_loads(none[i], 0, NULL);
        struct br_buf b;
        br_buf_init(&b, 1024);
        assert_int_equal(br__replay_request_key(req, &b), BR_ERR_NOTFOUND);
        br_buf_cleanup(&b);
        json_decref(req);
    }
}

static void json_string_escapes(void **state)
{
    (void)state;
    static const char tricky[] = "q\"b\\s/\b\f\n\r\t\x01\x1f\x0b\xc3\xa9\xe2\x80\xa8 end";
    struct br_buf b;
    br_buf_init(&b, 1024);
    assert_int_equal(br__replay_json_string(&b, tricky, sizeof(tricky) - 1), BR_OK);
    json_error_t e;
    json_t *j = json_loadb(b.ptr, b.len, JSON_DECODE_ANY, &e);
    assert_non_null(j);
    assert_int_equal(json_string_length(j), sizeof(tricky) - 1);
    assert_memory_equal(json_string_value(j), tricky, sizeof(tricky) - 1);
    json_decref(j);
    br_buf_reset(&b);
    assert_int_equal(br__replay_json_string(&b, "a\0b", 3), BR_OK);
    assert_string_equal(b.ptr, "\"a\\u0000b\"");
    br_buf_cleanup(&b);
}

static void utf8_validation(void **state)
{
    (void)state;
    assert_true(br__replay_utf8_valid("plain", 5));
    assert_true(br__replay_utf8_valid("\xc3\xa9\xe2\x80\x99\xf0\x9f\x98\x80", 9));
    assert_false(br__replay_utf8_valid("\xc3", 1));             /* truncated */
    assert_false(br__replay_utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(br__replay_utf8_valid("\xe0\x80\xaf", 3));     /* overlong */
    assert_false(br__replay_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(br__replay_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(br__replay_utf8_valid("\xff", 1));
    assert_false(br__replay_utf8_valid("a\x80", 2));
}

/* ---- malformed files ---- */

static char tmpdir[64];

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/br_replay_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *content, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, len, f), len);
    fclose(f);
}

/* Loads content saved as tmpdir/name; expects rc and an error containing want (after the
 * path, which must start the message). */
static void expect_fail(const char *name, const char *content, int want_rc, const char *want)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    write_file(path, content, strlen(content));
    char err[256] = "";
    struct br__replay_model *m = (struct br__replay_model *)1;
    int rc = br__replay_model_load(path, NULL, NULL, &m, err, sizeof(err));
    if (rc != want_rc || strncmp(err, path, strlen(path)) != 0 || !strstr(err, want) ||
        strchr(err, '\n')) {
        fprintf(stderr, "%s: rc %d (want %d), err \"%s\" (want \"%s\")\n", name, rc, want_rc, err,
                want);
        fail();
    }
    assert_null(m);
    unlink(path);
}

static void malformed_csv(void **state)
{
    (void)state;
    expect_fail("empty.csv", "", BR_ERR_PARSE, ": the file is empty");
    expect_fail("header_only.csv", "prompt,response\n", BR_ERR_PARSE, ": no records");
    expect_fail("no_prompt.csv", "question,response\nq,a\n", BR_ERR_PARSE,
                ":1: the header has no column \"prompt\"");
    expect_fail("no_response.csv", "prompt,answer\nq,a\n", BR_ERR_PARSE,
                ":1: the header has no column \"response\"");
    expect_fail("dup_header.csv", "prompt,response,prompt\nq,a,b\n", BR_ERR_PARSE,
                ":1: duplicate column \"prompt\"");
    expect_fail("short_row.csv", "prompt,response\nq1,a1\nq2\n", BR_ERR_PARSE,
                ":3: the record has 1 fields, the header 2");
    expect_fail("long_row.csv", "prompt,response\nq1,a1,x\n", BR_ERR_PARSE,
                ":2: the record has 3 fields, the header 2");
    /* The bad record starts on line 4, after a record whose quoted answer spans two lines. */
    expect_fail("multiline.csv", "prompt,response\nq0,a0\nq1,\"a\nb\"\nq2,a2,extra\n", BR_ERR_PARSE,
                ":5: the record has 3 fields");
    expect_fail("unterminated.csv", "prompt,response\nq,\"never closed\n", BR_ERR_PARSE,
                "malformed CSV");
    expect_fail("stray_quote.csv", "prompt,response\nq,\"a\"b\n", BR_ERR_PARSE,
                ":2: malformed CSV");
    expect_fail("bad_utf8.csv", "prompt,response\nq,caf\xe9\n", BR_ERR_PARSE,
                ":2: text is not valid UTF-8");
    expect_fail("empty_prompt.csv", "prompt,response\n\" \",a\n", BR_ERR_PARSE,
                ":2: the prompt is empty");
}

static void malformed_jsonl(void **state)
{
    (void)state;
    expect_fail("empty.jsonl", "", BR_ERR_PARSE, ": the file is empty");
    expect_fail("blank.jsonl", "\n  \n\n", BR_ERR_PARSE, ": no records");
    expect_fail("bad_json.jsonl", "{\"prompt\":\"q\",\"response\":\"a\"}\n{\"prompt\":\n",
                BR_ERR_PARSE, ":2: invalid JSON");
    expect_fail("not_object.jsonl", "[\"q\",\"a\"]\n", BR_ERR_PARSE, ":1: each line must be");
    expect_fail("no_prompt.jsonl", "\n{\"response\":\"a\"}\n", BR_ERR_PARSE,
                ":2: field \"prompt\" is missing");
    expect_fail("num_prompt.jsonl", "{\"prompt\":5,\"response\":\"a\"}\n", BR_ERR_PARSE,
                ":1: field \"prompt\"");
    expect_fail("no_response.jsonl", "{\"prompt\":\"q\"}\n", BR_ERR_PARSE,
                ":1: field \"response\" is missing");
    expect_fail("bad_usage.jsonl",
                "{\"prompt\":\"q\",\"response\":\"a\",\"usage\":{\"prompt_tokens\":-1,"
                "\"completion_tokens\":2}}\n",
                BR_ERR_PARSE, ":1: \"usage\" must be");
    expect_fail("half_usage.jsonl",
                "{\"prompt\":\"q\",\"response\":\"a\",\"usage\":{\"prompt_tokens\":1}}\n",
                BR_ERR_PARSE, ":1: \"usage\" must be");
    expect_fail("dup_key.jsonl", "{\"prompt\":\"q\",\"prompt\":\"r\",\"response\":\"a\"}\n",
                BR_ERR_PARSE, ":1: invalid JSON");
    expect_fail("no_user.jsonl",
                "{\"prompt\":[{\"role\":\"system\",\"content\":\"s\"}],\"response\":\"a\"}\n",
                BR_ERR_PARSE, ":1: the messages in \"prompt\" have no user text");
    expect_fail("blank_prompt.jsonl", "{\"prompt\":\"\\n \",\"response\":\"a\"}\n", BR_ERR_PARSE,
                ":1: the prompt is empty");
}

static void bad_paths_and_fields(void **state)
{
    (void)state;
    char err[256];
    struct br__replay_model *m;
    assert_int_equal(br__replay_model_load("/nonexistent/x.csv", NULL, NULL, &m, err, sizeof(err)),
                     BR_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent/x.csv: cannot open"));
    assert_int_equal(br__replay_model_load(SAMPLE_CSV ".txt", NULL, NULL, &m, err, sizeof(err)),
                     BR_ERR_INVAL);
    assert_non_null(strstr(err, "unknown replay file type"));
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/dir.csv", tmpdir);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(br__replay_model_load(dir, NULL, NULL, &m, err, sizeof(err)), BR_ERR_IO);
    assert_non_null(strstr(err, "not a regular file"));
    rmdir(dir);
    assert_int_equal(br__replay_model_load(SAMPLE_CSV, "prompt", "prompt", &m, err, sizeof(err)),
                     BR_ERR_INVAL);
}

static void duplicates_keep_first_and_crlf(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/dups.CSV", tmpdir);
    static const char text[] = "\xef\xbb\xbfprompt,response\r\n\"What  is\r\nit?\",first\r\n"
                               "What is it?,second\r\nOther,\"x,\"\"y\"\"\"\r\n";
    write_file(path, text, sizeof(text) - 1);
    char err[256] = "";
    struct br__replay_model *m;
    assert_int_equal(br__replay_model_load(path, NULL, NULL, &m, err, sizeof(err)), BR_OK);
    assert_int_equal(m->n_prompts, 2);
    assert_int_equal(m->n_duplicates, 1);
    assert_string_equal(lookup_text(m, "What is it?")->answer, "first");
    assert_string_equal(lookup_text(m, "Other")->answer, "x,\"y\"");
    assert_null(lookup_text(m, "what is it?")); /* case matters */
    br__replay_model_free(m);
    unlink(path);

    snprintf(path, sizeof(path), "%s/msgs.ndjson", tmpdir);
    static const char jl[] = "{\"prompt\":[{\"role\":\"user\",\"content\":\"hi  there\"}],"
                             "\"response\":\"hello\"}\r\n";
    write_file(path, jl, sizeof(jl) - 1);
    assert_int_equal(br__replay_model_load(path, NULL, NULL, &m, err, sizeof(err)), BR_OK);
    assert_string_equal(lookup_text(m, "hi there")->answer, "hello");
    br__replay_model_free(m);
    unlink(path);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(csv_sample_both_columns),
        cmocka_unit_test(jsonl_sample_with_usage),
        cmocka_unit_test(full_gsm8k_file),
        cmocka_unit_test(normalisation),
        cmocka_unit_test(request_keys),
        cmocka_unit_test(json_string_escapes),
        cmocka_unit_test(utf8_validation),
        cmocka_unit_test(malformed_csv),
        cmocka_unit_test(malformed_jsonl),
        cmocka_unit_test(bad_paths_and_fields),
        cmocka_unit_test(duplicates_keep_first_and_crlf),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("replay_load", tests, make_tmpdir, remove_tmpdir);
}
