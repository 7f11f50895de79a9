/* SPDX-License-Identifier: MIT */
/*
 * cost/: exact USD parsing, usage x price with the documented half-up rounding per token kind
 * (hand-computed values), saturation, and formatting.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "core/rand.h"
#include "cost/cost.h"

#define USD(x) ((int64_t)(x)*1000000000LL)

static void parse_ok(const char *s, int64_t want)
{
    int64_t v = -12345;
    int rc = br_cost_parse_usd(s, &v);
    if (rc != BR_OK || v != want) {
        print_error("parse \"%s\": rc=%d v=%lld want %lld\n", s, rc, (long long)v, (long long)want);
    }
    assert_int_equal(rc, BR_OK);
    assert_int_equal(v, want);
}

static void parse_bad(const char *s, int want_rc)
{
    int64_t v = -12345;
    int rc = br_cost_parse_usd(s, &v);
    if (rc != want_rc) {
        print_error("parse \"%s\": rc=%s want %s\n", s, br_err_name(rc), br_err_name(want_rc));
    }
    assert_int_equal(rc, want_rc);
    assert_int_equal(v, -12345); /* untouched on error */
}

static void test_parse_accepts(void **state)
{
    (void)state;
    parse_ok("24.7", 24700000000LL);
    parse_ok("0.0375", 37500000LL);
    parse_ok("10", USD(10));
    parse_ok("0", 0);
    parse_ok("0.0", 0);
    parse_ok("0.000000001", 1);
    parse_ok("0.6", 600000000LL);
    parse_ok("123.456789012", 123456789012LL);
    parse_ok("9000000000", 9000000000LL * 1000000000LL);
    parse_ok("9000000000.000000000", 9000000000LL * 1000000000LL);
    parse_ok("8999999999.999999999", 8999999999999999999LL);
}

static void test_parse_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",    " 1",   "1 ",  "+1",  "-1",           "1e3",          "1E3",  "1.",
        ".5",  "01",   "00",  "0x1", "1,5",          "1.0000000001", "1..2", "1.2.3",
        "abc", "1.5x", "inf", "nan", "1.0000000000", "\t1",          "1\n",  "-0",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        parse_bad(bad[i], BR_ERR_PARSE);
    }
    parse_bad("9000000000.000000001", BR_ERR_RANGE);
    parse_bad("9000000001", BR_ERR_RANGE);
    parse_bad("99999999999999999999999999", BR_ERR_RANGE);
    /* A malformed tail is a parse error even when the digits are out of range. */
    parse_bad("99999999999999999999999999x", BR_ERR_PARSE);
    parse_bad(NULL, BR_ERR_INVAL);
    assert_int_equal(br_cost_parse_usd("1", NULL), BR_ERR_INVAL);
}

static struct br_price price(const char *in, const char *out, const char *cached)
{
    struct br_price p = {0, 0, -1};
    assert_int_equal(br_cost_parse_usd(in, &p.input_nano_usd_per_mtok), BR_OK);
    assert_int_equal(br_cost_parse_usd(out, &p.output_nano_usd_per_mtok), BR_OK);
    if (cached) {
        assert_int_equal(br_cost_parse_usd(cached, &p.cached_input_nano_usd_per_mtok), BR_OK);
    }
    return p;
}

static void test_compute_gpt4(void **state)
{
    (void)state;
    /* $10 / $30 per million: 120 * 10 / 1e6 + 250 * 30 / 1e6 = 0.0012 + 0.0075 = 0.0087 USD. */
    struct br_price p = price("10", "30", NULL);
    struct br_usage u = {.prompt_tokens = 120, .completion_tokens = 250, .reported = true};
    assert_int_equal(br_cost_compute(&p, &u), 8700000);
}

static void test_compute_mixtral(void **state)
{
    (void)state;
    /* $0.6/M both ways: 1000 prompt -> 600,000 nano; 500 completion -> 300,000 nano. */
    struct br_price p = price("0.6", "0.6", NULL);
    struct br_usage u = {.prompt_tokens = 1000, .completion_tokens = 500};
    assert_int_equal(br_cost_compute(&p, &u), 900000);
    /* One token: 0.6 USD / 1e6 = 600 nano. */
    u = (struct br_usage){.prompt_tokens = 1};
    assert_int_equal(br_cost_compute(&p, &u), 600);
}

static void test_compute_cached(void **state)
{
    (void)state;
    /* in $0.15/M, cached $0.0375/M, out $0.6/M. prompt 1001 of which 3 cached, 1 completion:
     * 998 * 150 = 149,700; 3 * 37.5 = 112.5 -> 113 (half up); 1 * 600 = 600. */
    struct br_price p = price("0.15", "0.6", "0.0375");
    struct br_usage u = {.prompt_tokens = 1001, .cached_tokens = 3, .completion_tokens = 1};
    assert_int_equal(br_cost_compute(&p, &u), 149700 + 113 + 600);
    /* 1 cached token: 37.5 -> 38; 2: 75 exactly. */
    u = (struct br_usage){.prompt_tokens = 1, .cached_tokens = 1};
    assert_int_equal(br_cost_compute(&p, &u), 38);
    u = (struct br_usage){.prompt_tokens = 2, .cached_tokens = 2};
    assert_int_equal(br_cost_compute(&p, &u), 75);
    /* No cached price (< 0): cached tokens cost the input price. */
    p.cached_input_nano_usd_per_mtok = -1;
    u = (struct br_usage){.prompt_tokens = 1001, .cached_tokens = 3, .completion_tokens = 1};
    assert_int_equal(br_cost_compute(&p, &u), 1001 * 150 + 600);
    /* A cached price of 0 is a real price: cache reads are free. */
    p.cached_input_nano_usd_per_mtok = 0;
    assert_int_equal(br_cost_compute(&p, &u), 998 * 150 + 600);
    /* More cached than prompt tokens (a confused upstream) is clamped to the prompt. */
    p.cached_input_nano_usd_per_mtok = 37500000;
    u = (struct br_usage){.prompt_tokens = 2, .cached_tokens = 10};
    assert_int_equal(br_cost_compute(&p, &u), 75);
}

static void test_compute_cache_write_and_reasoning(void **state)
{
    (void)state;
    /* Anthropic-style: prompt 1000 = 500 plain + 200 cache writes + 300 cache reads.
     * in $3/M, cached $0.3/M, out $15/M. Writes priced as input: 700 * 3000 = 2,100,000;
     * reads 300 * 300 = 90,000; output 100 (40 of them reasoning) * 15000 = 1,500,000. */
    struct br_price p = price("3", "15", "0.3");
    struct br_usage u = {.prompt_tokens = 1000,
                         .cache_write_tokens = 200,
                         .cached_tokens = 300,
                         .completion_tokens = 100,
                         .reasoning_tokens = 40};
    assert_int_equal(br_cost_compute(&p, &u), 2100000 + 90000 + 1500000);
    /* Reasoning tokens are never charged on top of completion tokens. */
    struct br_usage u2 = u;
    u2.reasoning_tokens = 0;
    assert_int_equal(br_cost_compute(&p, &u), br_cost_compute(&p, &u2));
}

static void test_compute_rounding_half_up(void **state)
{
    (void)state;
    /* 500,000 nano-USD per million tokens = half a nano-USD per token. */
    struct br_price p = {500000, 500000, -1};
    struct br_usage u = {.prompt_tokens = 1};
    assert_int_equal(br_cost_compute(&p, &u), 1); /* 0.5 -> 1 */
    u.prompt_tokens = 3;
    assert_int_equal(br_cost_compute(&p, &u), 2); /* 1.5 -> 2 */
    u.prompt_tokens = 2;
    assert_int_equal(br_cost_compute(&p, &u), 1); /* exact */
    /* Each kind is rounded on its own: 0.5 + 0.5 -> 1 + 1 = 2, not round(1.0) = 1. */
    u = (struct br_usage){.prompt_tokens = 1, .completion_tokens = 1};
    assert_int_equal(br_cost_compute(&p, &u), 2);
    /* Just below half rounds down, just above rounds up. */
    p = (struct br_price){499999, 500001, -1};
    u = (struct br_usage){.prompt_tokens = 1};
    assert_int_equal(br_cost_compute(&p, &u), 0);
    u = (struct br_usage){.completion_tokens = 1};
    assert_int_equal(br_cost_compute(&p, &u), 1);
    /* 1,500,000 tokens at 1 nano per million: 1.5 -> 2. */
    p = (struct br_price){1, 1, -1};
    u = (struct br_usage){.prompt_tokens = 1500000};
    assert_int_equal(br_cost_compute(&p, &u), 2);
    /* 999,999 tokens at 999,999 nano/M: 999,998.000001 -> 999,998. */
    p = (struct br_price){999999, 0, -1};
    u = (struct br_usage){.prompt_tokens = 999999};
    assert_int_equal(br_cost_compute(&p, &u), 999998);
    /* 1,000,001 tokens at 1,000,001 nano/M: 1,000,002.000001 -> 1,000,002. */
    p = (struct br_price){1000001, 0, -1};
    u = (struct br_usage){.prompt_tokens = 1000001};
    assert_int_equal(br_cost_compute(&p, &u), 1000002);
}

static void test_compute_large_exact(void **state)
{
    (void)state;
    /* 123,456,789,012 tokens at 987,654,321 nano/M = 121,932,631,124,487.120852 nano. */
    struct br_price p = {987654321, 0, -1};
    struct br_usage u = {.prompt_tokens = 123456789012LL};
    assert_int_equal(br_cost_compute(&p, &u), 121932631124487LL);
    /* 10^12 tokens at $9000/M = 9e18 nano-USD, still exact. */
    p = (struct br_price){0, USD(9000), -1};
    u = (struct br_usage){.completion_tokens = 1000000000000LL};
    assert_int_equal(br_cost_compute(&p, &u), 9000000000000000000LL);
    /* 10^12 tokens at the largest parseable price saturates instead of overflowing. */
    p = (struct br_price){0, 9000000000LL * 1000000000LL, -1};
    assert_int_equal(br_cost_compute(&p, &u), INT64_MAX);
    /* Sum of kinds saturates too. */
    p = (struct br_price){INT64_MAX, INT64_MAX, INT64_MAX};
    u = (struct br_usage){.prompt_tokens = INT64_MAX, .cached_tokens = 5, .completion_tokens = 7};
    assert_int_equal(br_cost_compute(&p, &u), INT64_MAX);
}

static void test_compute_matches_wide_reference(void **state)
{
    (void)state;
    /* Random cross-check against 128-bit arithmetic (tests may use compiler extensions). */
    struct br_rng r;
    br_rng_seed(&r, 42);
    for (int i = 0; i < 200000; i++) {
        int64_t t = (int64_t)(br_rng_next(&r) % 1000000000001ULL);
        int64_t pr = (int64_t)(br_rng_next(&r) % 9000000000000000001ULL);
        if (i % 3 == 0) {
            pr %= 100000000000LL; /* realistic prices too, not only huge ones */
        }
        __extension__ unsigned __int128 prod = (unsigned __int128)t * (unsigned __int128)pr;
        __extension__ unsigned __int128 q = prod / 1000000;
        if (prod % 1000000 >= 500000) {
            q++;
        }
        int64_t want = q > (unsigned __int128)INT64_MAX ? INT64_MAX : (int64_t)q;
        struct br_price p = {pr, 0, -1};
        struct br_usage u = {.prompt_tokens = t};
        assert_int_equal(br_cost_compute(&p, &u), want);
    }
}

static void test_compute_negative_and_null(void **state)
{
    (void)state;
    struct br_price p = price("10", "30", NULL);
    struct br_usage u = {.prompt_tokens = -5, .completion_tokens = -1, .cached_tokens = -3};
    assert_int_equal(br_cost_compute(&p, &u), 0);
    struct br_price neg = {-1000, -1000, -1};
    u = (struct br_usage){.prompt_tokens = 100, .completion_tokens = 100};
    assert_int_equal(br_cost_compute(&neg, &u), 0);
    assert_int_equal(br_cost_compute(NULL, &u), 0);
    assert_int_equal(br_cost_compute(&p, NULL), 0);
    struct br_usage zero = {0};
    assert_int_equal(br_cost_compute(&p, &zero), 0);
}

static void format_is(int64_t v, const char *want)
{
    char out[BR_COST_USD_STRLEN];
    memset(out, 'x', sizeof(out));
    br_cost_format_usd(v, out);
    assert_string_equal(out, want);
}

static void test_format(void **state)
{
    (void)state;
    format_is(0, "0.000000000");
    format_is(1, "0.000000001");
    format_is(8700000, "0.008700000");
    format_is(123450, "0.000123450");
    format_is(24700000000LL, "24.700000000");
    format_is(-1, "-0.000000001");
    format_is(-USD(3), "-3.000000000");
    format_is(INT64_MAX, "9223372036.854775807");
    format_is(INT64_MIN, "-9223372036.854775808");
    /* Round trip through the parser for non-negative amounts. */
    int64_t vals[] = {0, 1, 37500000, 8700000, 24700000000LL, 9000000000LL * 1000000000LL};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        char out[BR_COST_USD_STRLEN];
        int64_t back = -1;
        br_cost_format_usd(vals[i], out);
        assert_int_equal(br_cost_parse_usd(out, &back), BR_OK);
        assert_int_equal(back, vals[i]);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_accepts),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_compute_gpt4),
        cmocka_unit_test(test_compute_mixtral),
        cmocka_unit_test(test_compute_cached),
        cmocka_unit_test(test_compute_cache_write_and_reasoning),
        cmocka_unit_test(test_compute_rounding_half_up),
        cmocka_unit_test(test_compute_large_exact),
        cmocka_unit_test(test_compute_matches_wide_reference),
        cmocka_unit_test(test_compute_negative_and_null),
        cmocka_unit_test(test_format),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("cost", tests, NULL, NULL);
}
