/* SPDX-License-Identifier: MIT */
/*
 * core/json: the strict validator agrees with jansson on JSONTestSuite and on hand-picked
 * edge cases; navigation finds members, elements, strings and numbers.
 */
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "br_test.h"
#include "core/err.h"
#include "core/json.h"

static int validate(const char *s)
{
    return br_json_validate(s, strlen(s), 0, NULL, NULL);
}

static void test_accepts_and_rejects(void **state)
{
    (void)state;
    static const char *const good[] = {
        "{}",
        "[]",
        " {\"a\":1} ",
        "0",
        "-0",
        "1.5e-3",
        "-12E+4",
        "\"x\"",
        "true",
        "false",
        "null",
        "[1,[2,[3]],{\"a\":{}}]",
        "\"\\u00e9\\ud83d\\ude00\\n\\/\"",
        "\"\xc3\xa9\"",
        "\"\xf0\x9f\x98\x80\"",
        "{\"a\":\"b\",\"a\":\"c\"}",
        "[ ]",
        "{ }",
    };
    static const char *const bad[] = {
        "",
        " ",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "--1",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\x41\"",
        "\"\x01\"",
        "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xff\"",
        "tru",
        "nul",
        "[1 2]",
        "{\"a\" 1}",
        "{1:2}",
        "[1]]",
        "{} {}",
        "\xef\xbb\xbf{}",
        "[\"a\"",
        "{\"a\":}",
        "NaN",
        "Infinity",
        "'a'",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (validate(good[i]) != BR_OK) {
            fail_msg("refused good input %zu: %s", i, good[i]);
        }
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (validate(bad[i]) == BR_OK) {
            fail_msg("accepted bad input %zu: %s", i, bad[i]);
        }
    }
    size_t off = 0;
    const char *msg = NULL;
    assert_int_equal(br_json_validate("[1, 2, x]", 9, 0, &off, &msg), BR_ERR_PARSE);
    assert_int_equal(off, 7);
    assert_non_null(msg);
    assert_int_equal(br_json_validate("\"a\\u0000b\"", 10, BR_JSON_ALLOW_NUL, NULL, NULL), BR_OK);
}

static void test_depth_limit(void **state)
{
    (void)state;
    char buf[5000];
    for (int i = 0; i < 2048; i++) {
        buf[i] = '[';
        buf[4095 - i] = ']';
    }
    assert_int_equal(br_json_validate(buf, 4096, 0, NULL, NULL), BR_OK);
    memmove(buf + 1, buf, 4096);
    buf[0] = '[';
    buf[4097] = ']';
    assert_int_equal(br_json_validate(buf, 4098, 0, NULL, NULL), BR_ERR_PARSE);
}

/* The validator and jansson (default flags, any value) agree on every JSONTestSuite file. */
static void test_agrees_with_jansson_on_suite(void **state)
{
    (void)state;
    const char *dir = BR_SOURCE_DIR "/tests/data/json/JSONTestSuite/test_parsing";
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    size_t n = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        static char buf[1 << 20];
        size_t len = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        json_error_t jerr;
        json_t *j = json_loadb(buf, len, JSON_DECODE_ANY, &jerr);
        int ours = br_json_validate(buf, len, 0, NULL, NULL);
        /* Known differences: jansson refuses numbers beyond int64/double (a range choice, not
         * syntax), and it skips raw NUL bytes between tokens, which the validator refuses. */
        bool overflow = !j && (strstr(jerr.text, "too big") || strstr(jerr.text, "overflow"));
        bool raw_nul = j && ours != BR_OK && memchr(buf, '\0', len) != NULL;
        if (!overflow && !raw_nul && (ours == BR_OK) != (j != NULL)) {
            fail_msg("%s: ours %s, jansson %s (%s)", e->d_name, ours == BR_OK ? "ok" : "refused",
                     j ? "ok" : "refused", j ? "" : jerr.text);
        }
        /* y_ must parse, except \u0000, which brigade refuses on purpose (as jansson does by
         * default): a NUL inside a decoded C string would silently truncate it. */
        bool nul_escape = strcmp(e->d_name, "y_string_null_escape.json") == 0 ||
                          strcmp(e->d_name, "y_object_escaped_null_in_key.json") == 0;
        if (e->d_name[0] == 'y' && ours != BR_OK && !nul_escape) {
            fail_msg("%s must parse", e->d_name);
        } else if (e->d_name[0] == 'n') {
            assert_int_not_equal(ours, BR_OK);
        }
        json_decref(j);
        n++;
    }
    closedir(d);
    assert_int_equal(n, 318);
}

static void test_navigation(void **state)
{
    (void)state;
    const char *text = "{\"model\":\"gpt\\u002d4\",\"n\":3,\"t\":0.7,\"msgs\":[{\"role\":\"user\"},"
                       "[1,2],\"x\"],\"model\":\"last\",\"neg\":-9223372036854775808,"
                       "\"big\":9223372036854775808,\"esc\\u0061pe\":true}";
    struct br_slice obj = br_slice_from_cstr(text);
    assert_int_equal(br_json_validate(text, strlen(text), 0, NULL, NULL), BR_OK);
    struct br_json_member m;
    assert_int_equal(br_json_obj_find(obj, "model", &m), BR_OK);
    char out[32];
    size_t len;
    assert_int_equal(br_json_string_decode(m.value, out, sizeof(out), &len), BR_OK);
    assert_string_equal(out, "last");
    assert_int_equal(br_json_obj_find(obj, "escape", &m), BR_OK);
    assert_int_equal(br_json_type_of(m.value), BR_JSON_TRUE);
    assert_int_equal(br_json_obj_find(obj, "nope", &m), BR_ERR_NOTFOUND);
    int64_t v;
    assert_int_equal(br_json_int(br_json_obj_get(obj, "n"), &v), BR_OK);
    assert_int_equal(v, 3);
    assert_int_equal(br_json_int(br_json_obj_get(obj, "neg"), &v), BR_OK);
    assert_true(v == INT64_MIN);
    assert_int_equal(br_json_int(br_json_obj_get(obj, "big"), &v), BR_ERR_RANGE);
    assert_int_equal(br_json_int(br_json_obj_get(obj, "t"), &v), BR_ERR_PARSE);
    double d;
    assert_int_equal(br_json_number(br_json_obj_get(obj, "t"), &d), BR_OK);
    assert_true(d > 0.69 && d < 0.71);
    assert_int_equal(br_json_number(br_json_obj_get(obj, "model"), &d), BR_ERR_PARSE);

    struct br_json_iter it;
    struct br_slice el;
    assert_int_equal(br_json_arr_iter_init(&it, br_json_obj_get(obj, "msgs")), BR_OK);
    enum br_json_type types[3];
    size_t k = 0;
    while (br_json_arr_iter_next(&it, &el) == BR_OK) {
        types[k++] = br_json_type_of(el);
    }
    assert_int_equal(k, 3);
    assert_int_equal(types[0], BR_JSON_OBJECT);
    assert_int_equal(types[1], BR_JSON_ARRAY);
    assert_int_equal(types[2], BR_JSON_STRING);
    assert_int_equal(br_json_arr_iter_init(&it, obj), BR_ERR_PARSE);

    /* The first "model" decodes with its escape; a short buffer truncates. */
    assert_int_equal(br_json_obj_iter_init(&it, obj), BR_OK);
    assert_int_equal(br_json_obj_iter_next(&it, &m), BR_OK);
    assert_true(br_json_key_eq(m.key, "model"));
    assert_int_equal(br_json_string_decode(m.value, out, sizeof(out), &len), BR_OK);
    assert_string_equal(out, "gpt-4");
    assert_int_equal(br_json_string_decoded_len(m.value), 5);
    assert_int_equal(br_json_string_decode(m.value, out, 3, &len), BR_ERR_LIMIT);
    assert_string_equal(out, "gp");
    assert_int_equal(len, 5);
}

static void test_speed_against_jansson(void **state)
{
    (void)state;
    /* A realistic 1 KB chat request; prints a comparison, asserts nothing about time. */
    const char *req =
        "{\"model\":\"bench-plain\",\"messages\":[{\"role\":\"system\",\"content\":\"You are a "
        "concise assistant for a travel company. Answer the customer's question in at most "
        "three sentences, in plain English, without markdown. If the question is about prices, "
        "give a range rather than a single figure.\"},{\"role\":\"user\",\"content\":\"Hello! My "
        "partner and I are planning a long weekend in Paris at the end of April and we would "
        "like to see the main sights without spending the whole time in queues. We land on "
        "Friday morning and fly back on Monday evening. Which three places would you visit "
        "first, roughly how much should we budget per day for food and museum tickets, and is "
        "it worth buying a museum pass for such a short stay?\"}],\"temperature\":0.7,"
        "\"max_tokens\":256,\"user\":\"bench-user-0001\"}";
    size_t n = strlen(req);
    const int iters = 20000;
    struct timespec t0;
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < iters; i++) {
        assert_int_equal(br_json_validate(req, n, 0, NULL, NULL), BR_OK);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ours =
        ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / iters;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < iters; i++) {
        json_t *j = json_loadb(req, n, JSON_REJECT_DUPLICATES, NULL);
        assert_non_null(j);
        json_decref(j);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double theirs =
        ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / iters;
    printf("json: %zu-byte request: br_json_validate %.0f ns, json_loadb %.0f ns\n", n, ours,
           theirs);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_and_rejects),          cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_agrees_with_jansson_on_suite), cmocka_unit_test(test_navigation),
        cmocka_unit_test(test_speed_against_jansson),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("core_json", tests, NULL, NULL);
}
