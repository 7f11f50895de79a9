/* SPDX-License-Identifier: MIT */
/* core: hash map, slices and strict integer parsing, the error table, log, clock, rng. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "core/map.h"
#include "core/rand.h"
#include "core/slice.h"

/* ---- map ---- */

static void test_map(void **state)
{
    (void)state;
    struct br_map m;
    br_map_init(&m);
    assert_null(br_map_get(&m, BR_SLICE_LIT("missing")));
    enum { N = 5000 };
    static char keys[N][16];
    for (int i = 0; i < N; i++) {
        (void)snprintf(keys[i], sizeof(keys[i]), "key%d", i);
        assert_int_equal(br_map_put(&m, br_slice_from_cstr(keys[i]), &keys[i]), BR_OK);
    }
    assert_int_equal(m.n_items, N);
    assert_true(m.n_items * 10 <= m.n_slots * 7); /* load factor kept */
    for (int i = 0; i < N; i++) {
        assert_ptr_equal(br_map_get(&m, br_slice_from_cstr(keys[i])), &keys[i]);
    }
    /* Lookups compare bytes, not pointers, and respect the length. */
    char probe[] = "key42xyz";
    assert_ptr_equal(br_map_get(&m, br_slice_make(probe, 5)), &keys[42]);
    assert_ptr_equal(br_map_get(&m, br_slice_make(probe, 4)), &keys[4]); /* "key4" */
    assert_null(br_map_get(&m, BR_SLICE_LIT("key")));
    /* Replacing keeps the count. */
    int v = 7;
    assert_int_equal(br_map_put(&m, BR_SLICE_LIT("key10"), &v), BR_OK);
    assert_int_equal(m.n_items, N);
    assert_ptr_equal(br_map_get(&m, BR_SLICE_LIT("key10")), &v);
    /* The empty key, also spelled as a NULL slice. */
    int e = 1;
    assert_int_equal(br_map_put(&m, br_slice_make(NULL, 0), &e), BR_OK);
    assert_ptr_equal(br_map_get(&m, BR_SLICE_LIT("")), &e);
    assert_ptr_equal(br_map_get(&m, br_slice_make(NULL, 0)), &e);
    /* Keys with embedded NULs are distinct by length. */
    assert_int_equal(br_map_put(&m, br_slice_make("a\0b", 3), &v), BR_OK);
    assert_null(br_map_get(&m, br_slice_make("a\0c", 3)));
    assert_ptr_equal(br_map_get(&m, br_slice_make("a\0b", 3)), &v);
    br_map_cleanup(&m);
    assert_int_equal(m.n_slots, 0);
    br_map_cleanup(&m);
}

static void test_map_alloc_failure(void **state)
{
    (void)state;
#ifdef NDEBUG
    skip();
#else
    struct br_map m;
    br_map_init(&m);
    int v = 1;
    br_alloc_fail_at(1);
    assert_int_equal(br_map_put(&m, BR_SLICE_LIT("a"), &v), BR_ERR_NOMEM);
    assert_int_equal(m.n_items, 0);
    assert_null(br_map_get(&m, BR_SLICE_LIT("a")));
    assert_int_equal(br_map_put(&m, BR_SLICE_LIT("a"), &v), BR_OK);
    br_map_cleanup(&m);
#endif
}

static void test_hash(void **state)
{
    (void)state;
    /* FNV-1a 64 reference values. */
    assert_true(br_hash_bytes("", 0) == 0xcbf29ce484222325ull);
    assert_true(br_hash_bytes("a", 1) == 0xaf63dc4c8601ec8cull);
    assert_true(br_hash_bytes("foobar", 6) == 0x85944171f73967e8ull);
}

/* ---- slices ---- */

static void test_slice_compare_trim(void **state)
{
    (void)state;
    struct br_slice s = BR_SLICE_LIT("Content-Type");
    assert_true(br_slice_eq_cstr(s, "Content-Type"));
    assert_false(br_slice_eq_cstr(s, "content-type"));
    assert_true(br_slice_case_eq_cstr(s, "content-TYPE"));
    assert_false(br_slice_case_eq_cstr(s, "content-typ"));
    assert_true(br_slice_starts_with(s, "Content"));
    assert_false(br_slice_starts_with(s, "Content-Type-X"));
    assert_true(br_slice_eq(br_slice_make(NULL, 0), BR_SLICE_LIT("")));
    assert_true(br_slice_from_cstr(NULL).len == 0);
    struct br_slice t = br_slice_trim(BR_SLICE_LIT(" \t value with space \t "));
    assert_true(br_slice_eq_cstr(t, "value with space"));
    t = br_slice_trim(BR_SLICE_LIT(" \t "));
    assert_int_equal(t.len, 0);
    t = br_slice_trim(BR_SLICE_LIT("\nx\n")); /* only SP and HTAB are OWS */
    assert_int_equal(t.len, 3);
}

static int to_u64(const char *s, unsigned long long max, unsigned long long *out)
{
    return br_slice_to_u64(br_slice_from_cstr(s), max, out);
}

static void test_slice_to_u64(void **state)
{
    (void)state;
    unsigned long long v = 0;
    assert_int_equal(to_u64("0", 10, &v), BR_OK);
    assert_int_equal(v, 0);
    assert_int_equal(to_u64("12345", ULLONG_MAX, &v), BR_OK);
    assert_int_equal(v, 12345);
    assert_int_equal(to_u64("007", 10, &v), BR_OK);
    assert_int_equal(v, 7);
    assert_int_equal(to_u64("18446744073709551615", ULLONG_MAX, &v), BR_OK);
    assert_true(v == ULLONG_MAX);
    assert_int_equal(to_u64("18446744073709551616", ULLONG_MAX, &v), BR_ERR_RANGE);
    assert_int_equal(to_u64("99999999999999999999999", ULLONG_MAX, &v), BR_ERR_RANGE);
    assert_int_equal(to_u64("100", 100, &v), BR_OK);
    assert_int_equal(to_u64("101", 100, &v), BR_ERR_RANGE);
    assert_int_equal(to_u64("19", 19, &v), BR_OK);
    assert_int_equal(to_u64("20", 19, &v), BR_ERR_RANGE);
    /* Regression: a single digit above a max below 10 was accepted (max - d wrapped). */
    assert_int_equal(to_u64("7", 5, &v), BR_ERR_RANGE);
    assert_int_equal(to_u64("1", 0, &v), BR_ERR_RANGE);
    assert_int_equal(to_u64("0", 0, &v), BR_OK);
    assert_int_equal(to_u64("5", 5, &v), BR_OK);
    assert_int_equal(v, 5);
    static const char *const bad[] = {"", "+1", "-1", " 1", "1 ", "1a", "0x10", "1.0", "１"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 99;
        assert_int_equal(to_u64(bad[i], ULLONG_MAX, &v), BR_ERR_PARSE);
        assert_int_equal(v, 99);
    }
    /* The slice length bounds the parse, not a NUL. */
    assert_int_equal(br_slice_to_u64(br_slice_make("123456", 3), 1000, &v), BR_OK);
    assert_int_equal(v, 123);
}

/* ---- errors ---- */

static void test_err_table(void **state)
{
    (void)state;
    assert_string_equal(br_err_name(BR_OK), "BR_OK");
    assert_string_equal(br_err_name(BR_AGAIN), "BR_AGAIN");
    assert_string_equal(br_err_name(BR_ERR_NOMEM), "BR_ERR_NOMEM");
    assert_string_equal(br_err_name(BR_ERR_RANGE), "BR_ERR_RANGE");
    assert_string_equal(br_strerror(BR_OK), "success");
    assert_string_equal(br_strerror(BR_ERR_LIMIT), "size limit exceeded");
    /* Every code has a distinct name and a non-empty message. */
    for (int c = -1; c > -BR__E_COUNT; c--) {
        const char *n = br_err_name(c);
        assert_true(strncmp(n, "BR_", 3) == 0);
        assert_string_not_equal(n, "BR_ERR_UNKNOWN");
        assert_true(strlen(br_strerror(c)) > 0);
        assert_string_not_equal(br_strerror(c), "unknown error");
        for (int d = c - 1; d > -BR__E_COUNT; d--) {
            assert_string_not_equal(n, br_err_name(d));
        }
    }
    /* Unknown codes, including the extremes (regression: -INT_MIN overflowed). */
    const int unknown[] = {1, 1000, -BR__E_COUNT, -1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        assert_string_equal(br_err_name(unknown[i]), "BR_ERR_UNKNOWN");
        assert_string_equal(br_strerror(unknown[i]), "unknown error");
    }
}

static void test_err_from_errno(void **state)
{
    (void)state;
    assert_int_equal(br_err_from_errno(0), BR_OK);
    assert_int_equal(br_err_from_errno(EAGAIN), BR_AGAIN);
    assert_int_equal(br_err_from_errno(ENOMEM), BR_ERR_NOMEM);
    assert_int_equal(br_err_from_errno(EINVAL), BR_ERR_INVAL);
    assert_int_equal(br_err_from_errno(ENOENT), BR_ERR_NOTFOUND);
    assert_int_equal(br_err_from_errno(EADDRINUSE), BR_ERR_EXISTS);
    assert_int_equal(br_err_from_errno(ETIMEDOUT), BR_ERR_TIMEOUT);
    assert_int_equal(br_err_from_errno(EPIPE), BR_ERR_CLOSED);
    assert_int_equal(br_err_from_errno(ECONNRESET), BR_ERR_CLOSED);
    assert_int_equal(br_err_from_errno(EACCES), BR_ERR_AUTH);
    assert_int_equal(br_err_from_errno(ERANGE), BR_ERR_RANGE);
    assert_int_equal(br_err_from_errno(EBUSY), BR_ERR_BUSY);
    assert_int_equal(br_err_from_errno(ECANCELED), BR_ERR_CANCELED);
    assert_int_equal(br_err_from_errno(ENOTSUP), BR_ERR_UNSUPPORTED);
    assert_int_equal(br_err_from_errno(EIO), BR_ERR_IO);
    assert_int_equal(br_err_from_errno(EXDEV), BR_ERR_IO);
}

/* ---- log ---- */

static char g_log[8192];
static size_t g_log_len;
static int g_log_lines;

static void sink(void *user, const char *line, unsigned long len)
{
    (void)user;
    g_log_lines++;
    if (g_log_len + len < sizeof(g_log)) {
        memcpy(g_log + g_log_len, line, len);
        g_log_len += len;
        g_log[g_log_len] = '\0';
    }
}

static void test_log(void **state)
{
    (void)state;
    enum br_log_level lvl;
    assert_int_equal(br_log_level_parse("debug", &lvl), BR_OK);
    assert_int_equal(lvl, BR_LOG_DEBUG);
    assert_int_equal(br_log_level_parse("warn", &lvl), BR_OK);
    assert_int_equal(lvl, BR_LOG_WARN);
    assert_int_equal(br_log_level_parse("WARN", &lvl), BR_ERR_INVAL);
    assert_int_equal(br_log_level_parse("", &lvl), BR_ERR_INVAL);

    g_log_len = 0;
    g_log_lines = 0;
    br_log_set_sink(sink, NULL);
    br_log_set_level(BR_LOG_INFO);
    br_log(BR_LOG_INFO, "abc123", "event=test n=%d", 5);
    br_log(BR_LOG_DEBUG, NULL, "event=hidden");
    br_log(BR_LOG_ERR, NULL, "event=bad");
    assert_int_equal(g_log_lines, 2);
    assert_non_null(strstr(g_log, "level=info req=abc123 event=test n=5\n"));
    assert_non_null(strstr(g_log, "level=error event=bad\n"));
    assert_null(strstr(g_log, "hidden"));
    /* 2026-01-01T00:00:00.000Z level=... : an ISO-8601 UTC prefix. */
    assert_int_equal(g_log[4], '-');
    assert_int_equal(g_log[10], 'T');
    assert_int_equal(g_log[23], 'Z');

    br_log_set_level(BR_LOG_WARN);
    br_log(BR_LOG_INFO, NULL, "event=filtered");
    assert_int_equal(g_log_lines, 2);
    br_log_set_level(BR_LOG_DEBUG);
    br_log(BR_LOG_DEBUG, NULL, "event=dbg");
    assert_int_equal(g_log_lines, BR_LOG_DEBUG_ENABLED ? 3 : 2);
    assert_int_equal(br_log_get_level(), BR_LOG_DEBUG);

    /* An overlong line is truncated but still one line ending in a newline. */
    static char longmsg[5000];
    memset(longmsg, 'm', sizeof(longmsg) - 1);
    g_log_len = 0;
    g_log[0] = '\0';
    br_log(BR_LOG_ERR, longmsg, "x=%s", longmsg);
    assert_true(g_log_len > 100 && g_log_len < 2048);
    assert_int_equal(g_log[g_log_len - 1], '\n');
    assert_null(memchr(g_log, '\n', g_log_len - 1));
    br_log_set_sink(NULL, NULL);
    br_log_set_level(BR_LOG_INFO);
}

/* ---- clock ---- */

static uint64_t fake_now(void *user)
{
    return *(uint64_t *)user;
}

static void test_clock(void **state)
{
    (void)state;
    uint64_t a = br_clock_now_ns();
    uint64_t b = br_clock_now_ns();
    assert_true(b >= a);
    assert_true(br_clock_wall_ms() > 1577836800000LL); /* after 2020-01-01 */
    uint64_t t = 12345;
    br_clock_set_source(fake_now, &t);
    assert_int_equal(br_clock_now_ns(), 12345);
    t = 99;
    assert_int_equal(br_clock_now_ns(), 99);
    br_clock_set_source(NULL, NULL);
    assert_true(br_clock_now_ns() >= b);
}

/* ---- randomness ---- */

static void test_rng_reference(void **state)
{
    (void)state;
    /* xoshiro256** reference outputs for the state {1, 2, 3, 4}. */
    struct br_rng r = {{1, 2, 3, 4}};
    assert_true(br_rng_next(&r) == 11520u);
    assert_true(br_rng_next(&r) == 0u);
    assert_true(br_rng_next(&r) == 1509978240u);
    assert_true(br_rng_next(&r) == 1215971899390074240ull);
    /* Seeding through splitmix64 is deterministic (values from an independent Python port). */
    br_rng_seed(&r, 42);
    assert_true(br_rng_next(&r) == 0x15780b2e0c2ec716ull);
    assert_true(br_rng_next(&r) == 0x6104d9866d113a7eull);
    assert_true(br_rng_next(&r) == 0xae17533239e499a1ull);
    br_rng_seed(&r, 42);
    char id[BR_REQUEST_ID_LEN + 1];
    br_rng_request_id(&r, id);
    /* 12 hex digits of wall-clock ms, then the first 80 bits of the generator's output. */
    assert_string_equal(id + 12, "15780b2e0c2ec7166104");
    unsigned long long ms = strtoull((char[13]){id[0], id[1], id[2], id[3], id[4], id[5], id[6],
                                                id[7], id[8], id[9], id[10], id[11], 0},
                                     NULL, 16);
    long long now = br_clock_wall_ms();
    assert_true((long long)ms <= now && (long long)ms > now - 60000);
}

static void test_rng_properties(void **state)
{
    (void)state;
    struct br_rng r1;
    struct br_rng r2;
    br_rng_seed(&r1, 7);
    br_rng_seed(&r2, 8);
    assert_true(br_rng_next(&r1) != br_rng_next(&r2));
    br_rng_seed(&r1, 0); /* from the kernel */
    br_rng_seed(&r2, 0);
    assert_memory_not_equal(r1.s, r2.s, sizeof(r1.s));
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = br_rng_uniform(&r1);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
    }
    assert_true(sum / 100000 > 0.49 && sum / 100000 < 0.51);
    char a[BR_REQUEST_ID_LEN + 1];
    char b[BR_REQUEST_ID_LEN + 1];
    br_rng_request_id(&r1, a);
    br_rng_request_id(&r1, b);
    assert_int_equal(strlen(a), BR_REQUEST_ID_LEN);
    assert_int_equal(strspn(a, "0123456789abcdef"), BR_REQUEST_ID_LEN);
    assert_string_not_equal(a, b);
    /* Ids made later sort later (the request log's index relies on it). */
    assert_true(memcmp(a, b, 12) <= 0);
    unsigned char buf[64] = {0};
    unsigned char zero[64] = {0};
    assert_int_equal(br_rand_bytes(buf, sizeof(buf)), BR_OK);
    assert_memory_not_equal(buf, zero, sizeof(buf));
    assert_int_equal(br_rand_bytes(buf, 0), BR_OK);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map),
        cmocka_unit_test(test_map_alloc_failure),
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_slice_compare_trim),
        cmocka_unit_test(test_slice_to_u64),
        cmocka_unit_test(test_err_table),
        cmocka_unit_test(test_err_from_errno),
        cmocka_unit_test(test_log),
        cmocka_unit_test(test_clock),
        cmocka_unit_test(test_rng_reference),
        cmocka_unit_test(test_rng_properties),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("core_misc", tests, NULL, NULL);
}
