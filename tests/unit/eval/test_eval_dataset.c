/* SPDX-License-Identifier: MIT */
/*
 * Dataset loaders: every format on small fixtures (tests/data/eval), every kind of malformed
 * input (an error naming the file and line, never a crash), contaminated rows dropped, the
 * Python list literal decoder, the token estimate (the gateway's rule), and the real RouteLLM
 * and RouterBench files (data/) loading with the right counts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "eval/dataset.h"
#include "eval/eval_int.h"
#include "upstream/provider.h"

#define FIX(name)    BR_SOURCE_DIR "/tests/data/eval/" name
#define DATA(name)   BR_SOURCE_DIR "/data/" name
#define SHARED(name) BR_SOURCE_DIR "/../shared/data/routing/" name

static struct br_dataset *load_ok(const char *path, const char *contaminated)
{
    struct br_dataset_opts o = {
        .format = BR_DATASET_FORMAT_AUTO, .contaminated = contaminated, .keep_responses = true};
    struct br_dataset *ds = NULL;
    char err[512] = "";
    int rc = br_dataset_load(path, &o, &ds, err, sizeof(err));
    if (rc != BR_OK) {
        fprintf(stderr, "load %s: %s\n", path, err);
    }
    assert_int_equal(rc, BR_OK);
    assert_non_null(ds);
    return ds;
}

static int model(const struct br_dataset *ds, const char *name)
{
    int m = br_dataset_model_index(ds, name);
    assert_true(m >= 0);
    return m;
}

/* Loads text from memory and expects an error whose message contains want. */
static void mem_fails(const char *text, size_t n, enum br_dataset_format fmt, int want_rc,
                      const char *want)
{
    struct br_dataset_opts o = {.format = fmt, .contaminated = NULL};
    struct br_dataset *ds = NULL;
    char err[512] = "";
    int rc = br_dataset_load_mem(text, n, "case.csv", &o, &ds, err, sizeof(err));
    if (rc == BR_OK || strstr(err, want) == NULL || (want_rc != 0 && rc != want_rc)) {
        fprintf(stderr, "input %.60s...: rc %d, err '%s', wanted '%s'\n", text, rc, err, want);
    }
    assert_int_not_equal(rc, BR_OK);
    assert_null(ds);
    assert_non_null(strstr(err, want));
    if (want_rc != 0) {
        assert_int_equal(rc, want_rc);
    }
}

#define FAILS(text, fmt, want) mem_fails(text, sizeof(text) - 1, fmt, BR_ERR_PARSE, want)

static void test_routellm_file(void **state)
{
    (void)state;
    /* The contaminated list beside the data is named differently: nothing dropped. */
    struct br_dataset *ds = load_ok(FIX("routellm_small.csv"), NULL);
    assert_int_equal(ds->format, BR_DATASET_FORMAT_ROUTELLM);
    assert_int_equal(ds->n_prompts, 5);
    assert_int_equal(ds->n_models, 2);
    assert_int_equal(ds->n_dropped, 0);
    assert_null(ds->contaminated_path);
    assert_string_equal(ds->name, "routellm_small.csv");
    int w = model(ds, "weak-model");
    int s = model(ds, "strong-model");
    /* A quoted prompt over three lines, kept verbatim. */
    assert_string_equal(ds->prompts[0], "What is 2+2?\nA. 3\nB. 4\nAnswer:");
    assert_string_equal(ds->prompts[2], "He said \"hello\", then left.");
    assert_true(br_dataset_quality(ds, 1, (size_t)w) == 0.0);
    assert_true(br_dataset_quality(ds, 1, (size_t)s) == 1.0);
    assert_true(br_dataset_quality(ds, 2, (size_t)s) == 0.0);
    assert_non_null(ds->responses);
    assert_string_equal(ds->responses[1 * 2 + (size_t)s], "Paris");
    assert_null(ds->responses[3 * 2 + (size_t)s]); /* empty answer */
    assert_null(ds->groups[0]);
    /* No recorded cost; tokens estimated: "Paris" is one token. */
    assert_true(isnan(ds->cost_usd[0]));
    assert_int_equal(ds->completion_tokens[1 * 2 + (size_t)s], 1);
    assert_int_equal(ds->completion_tokens[3 * 2 + (size_t)s], -1);
    assert_true(ds->prompt_tokens[0] > 0);
    br_dataset_free(ds);

    /* Given a list: its one row is dropped. */
    ds = load_ok(FIX("routellm_small.csv"), FIX("routellm_small_contaminated.jsonl"));
    assert_int_equal(ds->n_prompts, 4);
    assert_int_equal(ds->n_dropped, 1);
    assert_non_null(ds->contaminated_path);
    for (size_t i = 0; i < ds->n_prompts; i++) {
        assert_string_not_equal(ds->prompts[i], "Contaminated question?");
    }
    br_dataset_free(ds);
}

static void test_routellm_folder(void **state)
{
    (void)state;
    /* The folder holds responses/ and contaminated_prompts.jsonl, as RouteLLM's mmlu/. */
    struct br_dataset *ds = load_ok(FIX("mmlu_mini"), NULL);
    assert_int_equal(ds->n_files, 2);
    assert_int_equal(ds->n_prompts, 4);
    assert_int_equal(ds->n_dropped, 1);
    assert_string_equal(ds->name, "mmlu_mini");
    /* Files in name order; the shared "mmlu_" prefix and ".csv" are cut from the group. */
    assert_string_equal(ds->groups[0], "alpha");
    assert_string_equal(ds->groups[2], "beta_gamma");
    assert_string_equal(ds->prompts[3], "Subject B\nquestion 2");
    br_dataset_free(ds);

    /* Pointing at responses/ finds the list in the parent folder. */
    ds = load_ok(FIX("mmlu_mini/responses"), NULL);
    assert_int_equal(ds->n_prompts, 4);
    assert_int_equal(ds->n_dropped, 1);
    br_dataset_free(ds);

    /* --contaminated none keeps every row. */
    ds = load_ok(FIX("mmlu_mini"), "");
    assert_int_equal(ds->n_prompts, 5);
    assert_int_equal(ds->n_dropped, 0);
    br_dataset_free(ds);
}

static void test_routerbench_file(void **state)
{
    (void)state;
    struct br_dataset *ds = load_ok(FIX("routerbench_small.csv"), NULL);
    assert_int_equal(ds->format, BR_DATASET_FORMAT_ROUTERBENCH);
    assert_int_equal(ds->n_prompts, 4);
    assert_int_equal(ds->n_models, 2);
    size_t c = (size_t)model(ds, "cheap");
    size_t p = (size_t)model(ds, "pricey");
    assert_string_equal(ds->prompts[0], "Write a function to add two numbers.");
    /* Escapes decoded; two list items joined by a blank line. */
    assert_string_equal(ds->prompts[1],
                        "Line one\nIt's a \\ backslash\n\nSecond part \"quoted\" \xc3\xa9");
    assert_string_equal(ds->prompts[2], "It's double-quoted");
    assert_string_equal(ds->prompts[3], "Tab\there A and octal A");
    assert_string_equal(ds->groups[0], "mbpp");
    assert_string_equal(ds->groups[3], "arc");
    assert_string_equal(ds->responses[0 * 2 + p], "def add(a, b):\n    return a + b");
    assert_true(fabs(ds->cost_usd[1 * 2 + c] - 0.00015) < 1e-15);
    assert_true(fabs(ds->cost_usd[2 * 2 + p] - 0.004) < 1e-15);
    assert_true(isnan(br_dataset_quality(ds, 2, p))); /* empty cell */
    assert_true(br_dataset_quality(ds, 3, c) == 1.0);
    br_dataset_free(ds);
}

static void test_jsonl_file(void **state)
{
    (void)state;
    struct br_dataset *ds = load_ok(FIX("small.jsonl"), NULL);
    assert_int_equal(ds->format, BR_DATASET_FORMAT_JSONL);
    assert_int_equal(ds->n_prompts, 3);
    assert_int_equal(ds->n_models, 3); /* "medium" appears on line 4 only */
    size_t sm = (size_t)model(ds, "small");
    size_t big = (size_t)model(ds, "big");
    size_t med = (size_t)model(ds, "medium");
    assert_string_equal(ds->groups[0], "lang");
    assert_null(ds->groups[1]);
    assert_true(br_dataset_quality(ds, 1, sm) == 0.0);
    assert_true(br_dataset_quality(ds, 1, big) == 0.5);
    assert_true(br_dataset_quality(ds, 2, big) == 1.0);
    assert_true(isnan(br_dataset_quality(ds, 0, med)));
    assert_true(br_dataset_quality(ds, 2, med) == 1.0);
    assert_true(fabs(ds->cost_usd[0 * 3 + big] - 0.002) < 1e-15);
    assert_true(isnan(ds->cost_usd[1 * 3 + big]));
    assert_int_equal(ds->prompt_tokens[1 * 3 + big], 7);
    assert_int_equal(ds->completion_tokens[1 * 3 + big], 1200);
    assert_int_equal(ds->completion_tokens[0 * 3 + sm], 1); /* estimated from "chat" */
    assert_string_equal(ds->responses[0 * 3 + sm], "chat");
    br_dataset_free(ds);
}

static void test_format_forced(void **state)
{
    (void)state;
    /* A RouteLLM-looking header read as RouterBench: its prompt is no list literal. */
    static const char text[] = "prompt,m\nplain text,True\n";
    mem_fails(text, sizeof(text) - 1, BR_DATASET_FORMAT_ROUTERBENCH, BR_ERR_PARSE,
              "case.csv:2: column 1: not a Python list literal of strings: expected '['");
    enum br_dataset_format f;
    assert_int_equal(br_dataset_format_parse("routerbench", &f), BR_OK);
    assert_int_equal(f, BR_DATASET_FORMAT_ROUTERBENCH);
    assert_int_equal(br_dataset_format_parse("csv", &f), BR_ERR_INVAL);
    assert_string_equal(br_dataset_format_name(BR_DATASET_FORMAT_JSONL), "jsonl");
}

static void test_malformed_routellm(void **state)
{
    (void)state;
    const enum br_dataset_format A = BR_DATASET_FORMAT_AUTO;
    FAILS("", A, "case.csv: empty file: no header row");
    FAILS("a,b\n1,2\n", A, "case.csv:1: no 'prompt' column");
    FAILS("prompt\nx\n", A, "case.csv:1: no model columns");
    FAILS("prompt,m,m\n", A, "case.csv:1: column 'm' appears twice");
    FAILS("prompt,m\nx,True\ny,True,extra\n", A, "case.csv:3: 3 fields, the header has 2");
    FAILS("prompt,m\nx,True\ny\n", A, "case.csv:3: 1 fields, the header has 2");
    FAILS("prompt,m\nx,maybe\n", A, "case.csv:2: column 'm': 'maybe' is not a quality");
    FAILS("prompt,m\nx,1.5\n", A, "case.csv:2: column 'm': '1.5' is not a quality");
    FAILS("prompt,m\nx,-0.1\n", A, "'-0.1' is not a quality");
    FAILS("prompt,m\nx,0x1\n", A, "'0x1' is not a quality");
    FAILS("prompt,m\nx,inf\n", A, "'inf' is not a quality");
    FAILS("prompt,m\n\"x,True\n", A, "case.csv:2: quoted field not closed");
    FAILS("prompt,m\nab\"c,True\n", A, "case.csv:2: malformed CSV");
    FAILS("prompt,m\n\"ab\"c,True\n", A, "case.csv:2: malformed CSV");
    FAILS("prompt,m,x_response\n", A, "case.csv:1: column 'x_response' names no model column");
    FAILS("prompt,m\n\xff\xfe,True\n", A, "case.csv:2: column 1: invalid UTF-8");
    FAILS("prompt,m\n\xed\xa0\x80,True\n", A, "invalid UTF-8"); /* an encoded surrogate */
    FAILS("prompt,m\n", A, "case.csv: no prompts");
    /* The line of a record after a three-line quoted field. */
    FAILS("prompt,m\n\"a\nb\nc\",True\nd,bad\n", A, "case.csv:5: column 'm': 'bad'");
    /* Blank lines are skipped and counted. */
    FAILS("prompt,m\n\nx,True\n\ny,nope\n", A, "case.csv:5:");
    static const char nul_name[] = "prompt,m\0x\nq,True\n";
    mem_fails(nul_name, sizeof(nul_name) - 1, A, BR_ERR_PARSE,
              "case.csv:1: column 2: the name is not valid UTF-8 text");
    FAILS("prompt,\xff\nq,True\n", A, "case.csv:1: column 2: the name is not valid UTF-8");
    static const char nul[] = "prompt,m\na\0b,True\n";
    mem_fails(nul, sizeof(nul) - 1, A, BR_ERR_PARSE, "case.csv:2: column 1: NUL byte in text");
}

static void test_malformed_routerbench(void **state)
{
    (void)state;
    const enum br_dataset_format A = BR_DATASET_FORMAT_AUTO;
    FAILS("sample_id,prompt,eval_name,m\n1,hello,e,1.0\n", A,
          "case.csv:2: column 2: not a Python list literal of strings: expected '['");
    FAILS("sample_id,prompt,eval_name,m\n1,['abc],e,1.0\n", A, "unterminated string at byte 6");
    FAILS("sample_id,prompt,eval_name,m\n1,['a\\xZZ'],e,1.0\n", A, "bad hex escape");
    FAILS("sample_id,prompt,eval_name,m\n1,['a\\u12'],e,1.0\n", A, "bad hex escape at byte 5");
    FAILS("sample_id,prompt,eval_name,m\n1,['a\\u1,e,1.0\n", A, "truncated hex escape");
    FAILS("sample_id,prompt,eval_name,m\n1,['\\ud800'],e,1.0\n", A, "surrogate code point");
    FAILS("sample_id,prompt,eval_name,m\n1,['\\U00110000'],e,1.0\n", A, "above U+10FFFF");
    FAILS("sample_id,prompt,eval_name,m\n1,['a\\0'],e,1.0\n", A, "NUL character");
    FAILS("sample_id,prompt,eval_name,m\n1,['a\\N{DASH}'],e,1.0\n", A, "\\N{...} escapes");
    FAILS("sample_id,prompt,eval_name,m\n1,['a' x],e,1.0\n", A, "expected ',' or ']' at byte 5");
    FAILS("sample_id,prompt,eval_name,m\n1,['a';],e,1.0\n", A, "expected ',' or ']'");
    FAILS("sample_id,prompt,eval_name,m\n1,['a']],e,1.0\n", A, "data after ']'");
    FAILS("sample_id,prompt,eval_name,m\n1,[1],e,1.0\n", A, "expected a string");
    FAILS("sample_id,prompt,eval_name,m\n1,\"['a\nb']\",e,1.0\n", A, "raw newline inside a string");
    FAILS("sample_id,prompt,eval_name,m,m|total_cost\n1,['a'],e,1.0,-1\n", A,
          "case.csv:2: cost of 'm': '-1' is not a non-negative number of USD");
    FAILS("sample_id,prompt,eval_name,m,m|total_cost\n1,['a'],e,1.0,cheap\n", A,
          "'cheap' is not a non-negative number");
    FAILS("sample_id,prompt,eval_name,m,m|latency\n", A,
          "case.csv:1: column 'm|latency': unknown kind");
    FAILS("sample_id,prompt,eval_name,m,x|total_cost\n", A,
          "column 'x|total_cost' names no model column");
    FAILS("sample_id,prompt,eval_name,m,m|model_response\n1,['a'],e,1.0,['unterminated]\n", A,
          "column 5: not a Python list literal");
}

static void test_malformed_jsonl(void **state)
{
    (void)state;
    const enum br_dataset_format J = BR_DATASET_FORMAT_JSONL;
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":{\"quality\":1}}}\n{nope\n", J,
          "case.csv:2: invalid JSON");
    FAILS("[1]\n", J, "case.csv:1: expected a JSON object");
    FAILS("{\"models\":{\"m\":{\"quality\":1}}}\n", J, "\"prompt\" is missing or not a string");
    FAILS("{\"prompt\":3,\"models\":{\"m\":{\"quality\":1}}}\n", J, "\"prompt\" is missing");
    FAILS("{\"prompt\":\"a\"}\n", J, "\"models\" is missing or not a non-empty object");
    FAILS("{\"prompt\":\"a\",\"models\":{}}\n", J, "\"models\" is missing");
    FAILS("{\"prompt\":\"a\",\"group\":1,\"models\":{\"m\":{\"quality\":1}}}\n", J,
          "\"group\" must be a string or null");
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":1}}\n", J, "models.\"m\" is not an object");
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":{}}}\n", J,
          "models.\"m\".quality is missing or not a number or boolean");
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":{\"quality\":\"1\"}}}\n", J, ".quality is missing");
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":{\"quality\":1.01}}}\n", J,
          "models.\"m\".quality must be within 0..1");
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":{\"quality\":1,\"cost_usd\":-1}}}\n", J,
          "cost_usd must be a non-negative number");
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":{\"quality\":1,\"prompt_tokens\":-3}}}\n", J,
          "prompt_tokens must be a non-negative integer");
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":{\"quality\":1,\"completion_tokens\":2.5}}}\n", J,
          "completion_tokens must be a non-negative integer");
    FAILS("{\"prompt\":\"a\",\"models\":{\"m\":{\"quality\":1,\"response\":5}}}\n", J,
          "response must be a string");
    FAILS("{\"prompt\":\"a\",\"models\":{\"\":{\"quality\":1}}}\n", J, "empty model name");
    FAILS("{\"prompt\":\"a\",\"prompt\":\"b\",\"models\":{\"m\":{\"quality\":1}}}\n", J,
          "invalid JSON");
    FAILS("{\"prompt\":\"a\\u0000b\",\"models\":{\"m\":{\"quality\":1}}}\n", J, "invalid JSON");
    FAILS("\n\n   \n", J, "no prompts");
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_malformed_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/br_eval_ds_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char a[256], b[256], c[256], sub[256];
    snprintf(sub, sizeof(sub), "%s/folder", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(a, sizeof(a), "%s/folder/x_one.csv", dir);
    snprintf(b, sizeof(b), "%s/folder/x_two.csv", dir);
    snprintf(c, sizeof(c), "%s/cont.jsonl", dir);
    write_file(a, "prompt,m1,m2\np,True,False\n");
    write_file(b, "prompt,m1,m3\nq,True,False\n");
    struct br_dataset *ds = NULL;
    struct br_dataset_opts o = {.contaminated = ""};
    char err[512] = "";
    /* The second file of a folder names another model. */
    assert_int_equal(br_dataset_load(sub, &o, &ds, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "x_two.csv:1: model column 'm3' is not in the folder's first"));
    write_file(b, "prompt,m1\nq,True\n");
    assert_int_equal(br_dataset_load(sub, &o, &ds, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "x_two.csv:1: 1 model columns, the folder's first file has 2"));
    /* Same models in another order: fine, matched by name. */
    write_file(b, "prompt,m2,m1\nq,False,True\n");
    assert_int_equal(br_dataset_load(sub, &o, &ds, err, sizeof(err)), BR_OK);
    assert_int_equal(ds->n_prompts, 2);
    assert_true(br_dataset_quality(ds, 1, (size_t)br_dataset_model_index(ds, "m1")) == 1.0);
    assert_string_equal(ds->groups[1], "two");
    br_dataset_free(ds);
    ds = NULL;
    /* A malformed contaminated list names its own file and line. */
    write_file(c, "{\"eval_prompt\": \"p\"}\n{\"train_prompt\": \"q\"}\n");
    o.contaminated = c;
    assert_int_equal(br_dataset_load(a, &o, &ds, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "cont.jsonl:2: \"eval_prompt\" is missing or not a string"));
    /* A list given but absent. */
    o.contaminated = "/nonexistent/cont.jsonl";
    assert_int_not_equal(br_dataset_load(a, &o, &ds, err, sizeof(err)), BR_OK);
    assert_non_null(strstr(err, "/nonexistent/cont.jsonl: cannot open"));
    /* Every row contaminated. */
    write_file(c, "{\"eval_prompt\": \"p\"}\n");
    o.contaminated = c;
    assert_int_equal(br_dataset_load(a, &o, &ds, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "no prompts left after dropping contaminated ones"));
    /* Missing path, empty folder. */
    o.contaminated = "";
    assert_int_not_equal(br_dataset_load("/nonexistent/data.csv", &o, &ds, err, sizeof(err)),
                         BR_OK);
    assert_non_null(strstr(err, "/nonexistent/data.csv: cannot open"));
    remove(a);
    remove(b);
    assert_int_equal(br_dataset_load(sub, &o, &ds, err, sizeof(err)), BR_ERR_NOTFOUND);
    assert_non_null(strstr(err, "no .csv files in the folder"));
    assert_null(ds);
    remove(c);
    rmdir(sub);
    rmdir(dir);
}

static void decode(const char *lit, const char *want)
{
    struct br_buf b;
    br_buf_init(&b, 1 << 20);
    const char *what = NULL;
    size_t off = 0;
    int rc = br__pylist_decode(lit, strlen(lit), &b, &what, &off);
    if (rc != BR_OK) {
        fprintf(stderr, "%s: %s at %zu\n", lit, what, off);
    }
    assert_int_equal(rc, BR_OK);
    assert_string_equal(b.ptr != NULL ? b.ptr : "", want);
    br_buf_cleanup(&b);
}

static void test_pylist(void **state)
{
    (void)state;
    decode("[]", "");
    decode(" [ 'a' , \"b\" , ] ", "a\n\nb");
    decode("['\\a\\b\\f\\n\\r\\t\\v\\\\\\'\\\"']", "\a\b\f\n\r\t\v\\'\"");
    decode("['\\x41\\101\\7\\u00e9\\U0001F600']", "AA\a\xc3\xa9\xf0\x9f\x98\x80");
    decode("['keep \\d and \\ ']", "keep \\d and \\ ");
    decode("['line\\\ncontinued']", "linecontinued");
    decode("[\"it's\"]", "it's");
    decode("['\xc3\xa9 raw utf-8']", "\xc3\xa9 raw utf-8");
}

static void test_tokens_match_gateway(void **state)
{
    (void)state;
    /* Same rule as src/upstream/tokens.c, on crafted strings and the real GSM8K prompts. */
    static const char *const samples[] = {
        "",
        "Hello, world!",
        "  leading and trailing  ",
        "numbers 1234567 and 12",
        "a\n\nb\r\n",
        "supercalifragilistic",
        "don't 'quote' me",
        "\xc3\xa9t\xc3\xa9 ...!?",
        "x  ",
        "tabs\t\tand\vvertical",
    };
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        size_t n = strlen(samples[i]);
        assert_int_equal(br_eval_tokens_estimate(samples[i], n), br_tokens_estimate(samples[i], n));
    }
    struct br_dataset *ds = load_ok(DATA("routellm/gsm8k/gsm8k_responses.csv"), NULL);
    for (size_t i = 0; i < ds->n_prompts; i++) {
        size_t n = strlen(ds->prompts[i]);
        assert_int_equal(br_eval_tokens_estimate(ds->prompts[i], n),
                         br_tokens_estimate(ds->prompts[i], n));
        assert_int_equal(ds->prompt_tokens[i * 2], br_tokens_estimate(ds->prompts[i], n));
    }
    br_dataset_free(ds);
}

static void test_real_routellm(void **state)
{
    (void)state;
    /* MMLU: 57 subjects, 14,042 prompts, 5 contaminated. */
    struct br_dataset *ds = load_ok(DATA("routellm/mmlu"), NULL);
    assert_int_equal(ds->n_files, 57);
    assert_int_equal(ds->n_prompts + ds->n_dropped, 14042);
    assert_int_equal(ds->n_dropped, 5);
    assert_int_equal(ds->n_prompts, 14037);
    assert_int_equal(ds->n_models, 2);
    assert_string_equal(ds->groups[0], "abstract_algebra");
    assert_string_equal(ds->groups[ds->n_prompts - 1], "world_religions");
    assert_true(model(ds, "gpt-4-1106-preview") >= 0);
    assert_true(model(ds, "mistralai/Mixtral-8x7B-Instruct-v0.1") >= 0);
    for (size_t i = 0; i < ds->n_prompts * 2; i++) {
        assert_false(isnan(ds->quality[i]));
    }
    br_dataset_free(ds);
    /* GSM8K: 1,319 prompts, 12 contaminated, answers recorded. */
    ds = load_ok(DATA("routellm/gsm8k/gsm8k_responses.csv"), NULL);
    assert_int_equal(ds->n_prompts, 1307);
    assert_int_equal(ds->n_dropped, 12);
    assert_non_null(ds->responses);
    size_t s = (size_t)model(ds, "gpt-4-1106-preview");
    for (size_t i = 0; i < ds->n_prompts; i++) {
        assert_true(ds->completion_tokens[i * 2 + s] > 0);
    }
    br_dataset_free(ds);
    /* Without dropping. */
    ds = load_ok(DATA("routellm/gsm8k/gsm8k_responses.csv"), "");
    assert_int_equal(ds->n_prompts, 1319);
    br_dataset_free(ds);
}

static void test_real_routerbench(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        size_t n;
        const char *group;
    } sets[] = {
        {SHARED("routerbench/arc_challenge_train.csv"), 1039, "arc-challenge"},
        {SHARED("routerbench/winograde_train.csv"), 887, "winogrande"},
        {SHARED("routerbench/mbpp_train.csv"), 299, "mbpp"},
    };
    /* RouterBench declares no licence, so it is not copied into the repository: read the
     * team's shared copy when it is there, skip otherwise. */
    if (access(sets[0].file, R_OK) != 0) {
        skip();
    }
    for (size_t k = 0; k < 3; k++) {
        struct br_dataset *ds = load_ok(sets[k].file, NULL);
        assert_int_equal(ds->format, BR_DATASET_FORMAT_ROUTERBENCH);
        assert_int_equal(ds->n_prompts, sets[k].n);
        assert_int_equal(ds->n_models, 11);
        assert_string_equal(ds->groups[0], sets[k].group);
        size_t g = (size_t)model(ds, "gpt-4-1106-preview");
        for (size_t i = 0; i < ds->n_prompts; i++) {
            assert_true(ds->cost_usd[i * 11 + g] > 0.0);
            assert_true(strlen(ds->prompts[i]) > 0);
            assert_non_null(ds->responses[i * 11 + g]);
        }
        br_dataset_free(ds);
    }
}

static void on_progress(void *user, size_t done, size_t total)
{
    size_t *calls = user;
    calls[0]++;
    assert_true(done <= total);
    calls[1] = done;
    calls[2] = total;
}

static void test_progress(void **state)
{
    (void)state;
    size_t calls[3] = {0, 0, 0};
    struct br_dataset_opts o = {.progress = on_progress, .progress_user = calls};
    struct br_dataset *ds = NULL;
    char err[256];
    assert_int_equal(br_dataset_load(DATA("routellm/mmlu"), &o, &ds, err, sizeof(err)), BR_OK);
    assert_true(calls[0] >= 57);
    assert_int_equal(calls[1], calls[2]); /* the last call reports everything read */
    assert_true(calls[2] > 6000000);
    br_dataset_free(ds);
    br_dataset_free(NULL);
}

#ifndef NDEBUG
/* Fails every allocation of a load once: each run ends in success or BR_ERR_NOMEM, and the
 * heap is back where it was. */
static void torture_load(const char *path, const char *contaminated)
{
    struct br_dataset_opts o = {.contaminated = contaminated, .keep_responses = true};
    struct br_dataset *ds = NULL;
    char err[512];
    size_t live = br_alloc_live_bytes();
    uint64_t c0 = br_alloc_count();
    assert_int_equal(br_dataset_load(path, &o, &ds, err, sizeof(err)), BR_OK);
    br_dataset_free(ds);
    uint64_t total = br_alloc_count() - c0;
    assert_int_equal(br_alloc_live_bytes(), live);
    for (uint64_t i = 1; i <= total; i++) {
        ds = NULL;
        br_alloc_fail_at(i);
        int rc = br_dataset_load(path, &o, &ds, err, sizeof(err));
        br_alloc_fail_at(0);
        if (rc != BR_OK && rc != BR_ERR_NOMEM) {
            fprintf(stderr, "%s: allocation %llu failed: rc %d, %s\n", path, (unsigned long long)i,
                    rc, err);
        }
        assert_true(rc == BR_OK || rc == BR_ERR_NOMEM);
        assert_true(rc == BR_OK || ds == NULL);
        br_dataset_free(ds);
        assert_int_equal(br_alloc_live_bytes(), live);
    }
}
#endif

static void test_allocation_failures(void **state)
{
    (void)state;
#ifdef NDEBUG
    skip(); /* fault injection exists only in builds without NDEBUG */
#else
    torture_load(FIX("routellm_small.csv"), FIX("routellm_small_contaminated.jsonl"));
    torture_load(FIX("mmlu_mini"), NULL);
    torture_load(FIX("routerbench_small.csv"), NULL);
    torture_load(FIX("small.jsonl"), NULL);
#endif
}

int main(int argc, char **argv)
{
    /* One test per line: the CMake helper registers each line. */
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routellm_file),
        cmocka_unit_test(test_routellm_folder),
        cmocka_unit_test(test_routerbench_file),
        cmocka_unit_test(test_jsonl_file),
        cmocka_unit_test(test_format_forced),
        cmocka_unit_test(test_malformed_routellm),
        cmocka_unit_test(test_malformed_routerbench),
        cmocka_unit_test(test_malformed_jsonl),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_pylist),
        cmocka_unit_test(test_tokens_match_gateway),
        cmocka_unit_test(test_real_routellm),
        cmocka_unit_test(test_real_routerbench),
        cmocka_unit_test(test_progress),
        cmocka_unit_test(test_allocation_failures),
    };
    /* clang-format on */
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("eval_dataset", tests, NULL, NULL);
}
