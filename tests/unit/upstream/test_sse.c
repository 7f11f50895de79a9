/* SPDX-License-Identifier: MIT */
/*
 * The text/event-stream parser: WHATWG field rules, line ends, BOM, size caps, and the same
 * events whatever the split of the input into feeds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "upstream/sse.h"

#define MAX_EVENTS 32

struct events {
    int n;
    char data[MAX_EVENTS][256];
    char event[MAX_EVENTS][64];
    char id[MAX_EVENTS][64];
    int stop_at; /* return 7 from the stop_at-th event (1-based); 0 = never */
};

static void copy(char *dst, size_t cap, struct br_slice s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n) {
        memcpy(dst, s.ptr, n);
    }
    dst[n] = '\0';
}

static int collect(void *user, const struct br_sse_event *ev)
{
    struct events *e = user;
    if (e->n < MAX_EVENTS) {
        copy(e->data[e->n], sizeof(e->data[0]), ev->data);
        copy(e->event[e->n], sizeof(e->event[0]), ev->event);
        copy(e->id[e->n], sizeof(e->id[0]), ev->id);
    }
    e->n++;
    if (e->stop_at && e->n == e->stop_at) {
        return 7;
    }
    return 0;
}

static int parse_all(const char *s, size_t n, struct events *e, int flush)
{
    struct br_sse_parser p;
    br_sse_parser_init(&p, 0);
    int rc = br_sse_parser_feed(&p, s, n, collect, e);
    if (rc == BR_OK) {
        rc = br_sse_parser_finish(&p, flush, collect, e);
    }
    br_sse_parser_cleanup(&p);
    return rc;
}

static void parse_str(const char *s, struct events *e)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(parse_all(s, strlen(s), e, 0), BR_OK);
}

static void test_basic(void **state)
{
    (void)state;
    struct events e;
    parse_str("data: hello\n\n", &e);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "hello");
    assert_string_equal(e.event[0], "");
    assert_string_equal(e.id[0], "");
}

static void test_multiline_data(void **state)
{
    (void)state;
    struct events e;
    parse_str("data: a\ndata: b\ndata:\ndata: c\n\n", &e);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "a\nb\n\nc");
}

static void test_space_rules(void **state)
{
    (void)state;
    struct events e;
    parse_str("data:x\n\ndata:  two\n\ndata\n\n", &e);
    assert_int_equal(e.n, 3);
    assert_string_equal(e.data[0], "x");
    assert_string_equal(e.data[1], " two");
    assert_string_equal(e.data[2], ""); /* a field without a colon has an empty value */
}

static void test_line_ends(void **state)
{
    (void)state;
    struct events e;
    parse_str("data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\ndata: e\r\r", &e);
    assert_int_equal(e.n, 4);
    assert_string_equal(e.data[0], "a");
    assert_string_equal(e.data[1], "b");
    assert_string_equal(e.data[2], "c");
    assert_string_equal(e.data[3], "d\ne");
}

static void test_comments_and_empty_events(void **state)
{
    (void)state;
    struct events e;
    parse_str(": keep-alive\n\n:\n\nevent: ping\n\nretry: 1000\nfoo: bar\ndata: x\n\n", &e);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "x");
    assert_string_equal(e.event[0], ""); /* the "ping" type was reset by the empty event */
}

static void test_event_type_resets(void **state)
{
    (void)state;
    struct events e;
    parse_str("event: error\ndata: boom\n\ndata: next\n\n", &e);
    assert_int_equal(e.n, 2);
    assert_string_equal(e.event[0], "error");
    assert_string_equal(e.data[0], "boom");
    assert_string_equal(e.event[1], "");
}

static void test_last_event_id_persists(void **state)
{
    (void)state;
    struct events e;
    static const char s[] = "id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: x\0y\ndata: d\n\n";
    memset(&e, 0, sizeof(e));
    assert_int_equal(parse_all(s, sizeof(s) - 1, &e, 0), BR_OK);
    assert_int_equal(e.n, 4);
    assert_string_equal(e.id[0], "1");
    assert_string_equal(e.id[1], "1");
    assert_string_equal(e.id[2], "");
    assert_string_equal(e.id[3], ""); /* an id containing NUL is ignored */
}

static void test_bom(void **state)
{
    (void)state;
    struct events e;
    parse_str("\xEF\xBB\xBF"
              "data: a\n\n",
              &e);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "a");
    /* Only at the start: later it is part of a (then unknown) field name. */
    parse_str("data: a\n\n\xEF\xBB\xBF"
              "data: b\n\n",
              &e);
    assert_int_equal(e.n, 1);
    /* BOM split over three feeds. */
    struct br_sse_parser p;
    br_sse_parser_init(&p, 0);
    memset(&e, 0, sizeof(e));
    assert_int_equal(br_sse_parser_feed(&p, "\xEF", 1, collect, &e), BR_OK);
    assert_int_equal(br_sse_parser_feed(&p, "\xBB", 1, collect, &e), BR_OK);
    assert_int_equal(br_sse_parser_feed(&p,
                                        "\xBF"
                                        "data: z\n\n",
                                        10, collect, &e),
                     BR_OK);
    br_sse_parser_cleanup(&p);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "z");
    /* A broken BOM is not skipped: its bytes start an unknown field. */
    parse_str("\xEF\xBB"
              "data: q\n\ndata: r\n\n",
              &e);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "r");
}

static void test_cr_then_lf_in_next_feed(void **state)
{
    (void)state;
    struct br_sse_parser p;
    struct events e;
    memset(&e, 0, sizeof(e));
    br_sse_parser_init(&p, 0);
    assert_int_equal(br_sse_parser_feed(&p, "data: a\r", 8, collect, &e), BR_OK);
    assert_int_equal(br_sse_parser_feed(&p, "\ndata: b\r\n\r\n", 12, collect, &e), BR_OK);
    br_sse_parser_cleanup(&p);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "a\nb");
}

static const char sample[] =
    "\xEF\xBB\xBF: hello\r\n"
    "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
    "event: message\r"
    "id: 42\r"
    "data: line one\r\n"
    "data:line two\r\r"
    ":comment\n"
    "data: {\"usage\":{\"prompt_tokens\":3}}\r\n\r\n"
    "data: [DONE]\n\n";

static void check_sample(const struct events *e)
{
    assert_int_equal(e->n, 4);
    assert_string_equal(e->data[0],
                        "{\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}");
    assert_string_equal(e->data[1], "line one\nline two");
    assert_string_equal(e->event[1], "message");
    assert_string_equal(e->id[1], "42");
    assert_string_equal(e->data[2], "{\"usage\":{\"prompt_tokens\":3}}");
    assert_string_equal(e->id[2], "42");
    assert_string_equal(e->data[3], "[DONE]");
}

static void test_every_split_position(void **state)
{
    (void)state;
    size_t n = sizeof(sample) - 1;
    struct events whole;
    memset(&whole, 0, sizeof(whole));
    assert_int_equal(parse_all(sample, n, &whole, 0), BR_OK);
    check_sample(&whole);
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            struct br_sse_parser p;
            struct events e;
            memset(&e, 0, sizeof(e));
            br_sse_parser_init(&p, 0);
            assert_int_equal(br_sse_parser_feed(&p, sample, i, collect, &e), BR_OK);
            assert_int_equal(br_sse_parser_feed(&p, sample + i, j - i, collect, &e), BR_OK);
            assert_int_equal(br_sse_parser_feed(&p, sample + j, n - j, collect, &e), BR_OK);
            assert_int_equal(br_sse_parser_finish(&p, 0, collect, &e), BR_OK);
            br_sse_parser_cleanup(&p);
            check_sample(&e);
        }
    }
}

static void test_byte_at_a_time(void **state)
{
    (void)state;
    struct br_sse_parser p;
    struct events e;
    memset(&e, 0, sizeof(e));
    br_sse_parser_init(&p, 0);
    for (size_t i = 0; i < sizeof(sample) - 1; i++) {
        assert_int_equal(br_sse_parser_feed(&p, sample + i, 1, collect, &e), BR_OK);
    }
    br_sse_parser_cleanup(&p);
    check_sample(&e);
}

static void test_event_too_large(void **state)
{
    (void)state;
    struct br_sse_parser p;
    struct events e;
    memset(&e, 0, sizeof(e));
    char big[200];
    memset(big, 'x', sizeof(big));
    memcpy(big, "data: ", 6);
    big[sizeof(big) - 1] = '\n';
    /* One long line. */
    br_sse_parser_init(&p, 64);
    assert_int_equal(br_sse_parser_feed(&p, big, sizeof(big), collect, &e), BR_ERR_LIMIT);
    assert_int_equal(br_sse_parser_feed(&p, "data: a\n\n", 9, collect, &e), BR_ERR_LIMIT);
    assert_int_equal(br_sse_parser_finish(&p, 1, collect, &e), BR_ERR_LIMIT);
    br_sse_parser_cleanup(&p);
    /* Many short data lines adding up. */
    br_sse_parser_init(&p, 64);
    int rc = BR_OK;
    for (int i = 0; i < 20 && rc == BR_OK; i++) {
        rc = br_sse_parser_feed(&p, "data: 0123456789\n", 17, collect, &e);
    }
    assert_int_equal(rc, BR_ERR_LIMIT);
    br_sse_parser_cleanup(&p);
    /* A partial line fed in small pieces. */
    br_sse_parser_init(&p, 64);
    rc = BR_OK;
    for (int i = 0; i < 100 && rc == BR_OK; i++) {
        rc = br_sse_parser_feed(&p, "yy", 2, collect, &e);
    }
    assert_int_equal(rc, BR_ERR_LIMIT);
    br_sse_parser_cleanup(&p);
    assert_int_equal(e.n, 0);
    /* Events under the cap pass, one after the other. */
    br_sse_parser_init(&p, 64);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(br_sse_parser_feed(&p, "data: 0123456789\n\n", 18, collect, &e), BR_OK);
    }
    br_sse_parser_cleanup(&p);
    assert_int_equal(e.n, 10);
}

static void test_finish_partial(void **state)
{
    (void)state;
    struct events e;
    memset(&e, 0, sizeof(e));
    assert_int_equal(parse_all("data: a", 7, &e, 0), BR_OK);
    assert_int_equal(e.n, 0); /* the spec drops an unterminated event */
    memset(&e, 0, sizeof(e));
    assert_int_equal(parse_all("data: a", 7, &e, 1), BR_OK);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "a");
    memset(&e, 0, sizeof(e));
    assert_int_equal(parse_all("data: a\ndata: b\r", 16, &e, 1), BR_OK);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.data[0], "a\nb");
    memset(&e, 0, sizeof(e));
    assert_int_equal(parse_all("\xEF\xBB", 2, &e, 1), BR_OK);
    assert_int_equal(e.n, 0);
}

static void test_callback_stops(void **state)
{
    (void)state;
    struct events e;
    memset(&e, 0, sizeof(e));
    e.stop_at = 2;
    static const char s[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    struct br_sse_parser p;
    br_sse_parser_init(&p, 0);
    assert_int_equal(br_sse_parser_feed(&p, s, sizeof(s) - 1, collect, &e), 7);
    br_sse_parser_cleanup(&p);
    assert_int_equal(e.n, 2);
}

static void test_binary_garbage(void **state)
{
    (void)state;
    /* Arbitrary bytes never crash; NULs inside data pass through. */
    unsigned char junk[512];
    unsigned x = 12345;
    for (size_t i = 0; i < sizeof(junk); i++) {
        x = x * 1103515245u + 12345u;
        junk[i] = (unsigned char)(x >> 16);
    }
    struct events e;
    memset(&e, 0, sizeof(e));
    assert_int_equal(parse_all((const char *)junk, sizeof(junk), &e, 1), BR_OK);
    static const char s[] = "data: a\0b\n\n";
    struct br_sse_parser p;
    br_sse_parser_init(&p, 0);
    memset(&e, 0, sizeof(e));
    assert_int_equal(br_sse_parser_feed(&p, s, sizeof(s) - 1, collect, &e), BR_OK);
    br_sse_parser_cleanup(&p);
    assert_int_equal(e.n, 1);
    assert_memory_equal(e.data[0], "a\0b", 3);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_multiline_data),
        cmocka_unit_test(test_space_rules),
        cmocka_unit_test(test_line_ends),
        cmocka_unit_test(test_comments_and_empty_events),
        cmocka_unit_test(test_event_type_resets),
        cmocka_unit_test(test_last_event_id_persists),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_cr_then_lf_in_next_feed),
        cmocka_unit_test(test_every_split_position),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_event_too_large),
        cmocka_unit_test(test_finish_partial),
        cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_binary_garbage),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("sse", tests, NULL, NULL);
}
