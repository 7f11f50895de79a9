/* SPDX-License-Identifier: MIT */
/* core/buf: appends, printf, the byte cap, consume/reset/steal, allocation failure. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"

static void test_append_and_printf(void **state)
{
    (void)state;
    struct br_buf b;
    br_buf_init(&b, 1 << 20);
    assert_null(b.ptr);
    assert_int_equal(br_buf_append(&b, "", 0), BR_OK);
    assert_string_equal(b.ptr, "");
    assert_int_equal(br_buf_append_cstr(&b, "hello"), BR_OK);
    assert_int_equal(br_buf_append(&b, ", world", 7), BR_OK);
    assert_int_equal(b.len, 12);
    assert_string_equal(b.ptr, "hello, world");
    assert_int_equal(br_buf_printf(&b, " %d-%s", 42, "x"), BR_OK);
    assert_string_equal(b.ptr, "hello, world 42-x");
    /* Longer than the 256-byte fast path of br_buf_vprintf. */
    char big[1000];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    size_t before = b.len;
    assert_int_equal(br_buf_printf(&b, "[%s]", big), BR_OK);
    assert_int_equal(b.len, before + 1001);
    assert_int_equal(b.ptr[b.len], '\0');
    assert_int_equal(b.ptr[before], '[');
    assert_int_equal(b.ptr[b.len - 1], ']');
    br_buf_cleanup(&b);
    assert_null(b.ptr);
    assert_int_equal(b.len, 0);
}

static void test_cap(void **state)
{
    (void)state;
    struct br_buf b;
    br_buf_init(&b, 10);
    assert_int_equal(br_buf_append(&b, "0123456789", 10), BR_OK);
    assert_int_equal(br_buf_append(&b, "x", 1), BR_ERR_LIMIT);
    assert_int_equal(b.len, 10);
    assert_string_equal(b.ptr, "0123456789"); /* untouched by the failed append */
    assert_int_equal(br_buf_printf(&b, "%d", 1), BR_ERR_LIMIT);
    assert_string_equal(b.ptr, "0123456789");
    assert_true(b.cap <= 11); /* never allocates past max + NUL */
    br_buf_consume(&b, 4);
    assert_string_equal(b.ptr, "456789");
    assert_int_equal(br_buf_append(&b, "abcd", 4), BR_OK);
    assert_string_equal(b.ptr, "456789abcd");
    assert_int_equal(br_buf_reserve(&b, SIZE_MAX), BR_ERR_LIMIT);
    br_buf_cleanup(&b);

    br_buf_init(&b, 0);
    assert_int_equal(br_buf_append(&b, "", 0), BR_OK);
    assert_int_equal(br_buf_append(&b, "a", 1), BR_ERR_LIMIT);
    br_buf_cleanup(&b);
}

static void test_unlimited_max(void **state)
{
    (void)state;
    /* Regression: with max == SIZE_MAX the growth clamp computed max + 1 == 0 and shrank the
     * allocation to nothing, so the next append wrote past the end. */
    struct br_buf b;
    br_buf_init(&b, SIZE_MAX);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(br_buf_append_cstr(&b, "0123456789"), BR_OK);
    }
    assert_int_equal(b.len, 1000);
    assert_true(b.cap > b.len);
    assert_int_equal(b.ptr[1000], '\0');
    /* A length that can never be allocated fails cleanly. */
    assert_int_equal(br_buf_reserve(&b, SIZE_MAX - 1000), BR_ERR_LIMIT);
    assert_int_equal(b.len, 1000);
    br_buf_cleanup(&b);
}

static void test_consume_reset_steal(void **state)
{
    (void)state;
    struct br_buf b;
    br_buf_init(&b, 100);
    assert_int_equal(br_buf_append_cstr(&b, "abcdef"), BR_OK);
    br_buf_consume(&b, 2);
    assert_string_equal(b.ptr, "cdef");
    br_buf_consume(&b, 10); /* more than len empties */
    assert_int_equal(b.len, 0);
    assert_string_equal(b.ptr, "");
    assert_int_equal(br_buf_append_cstr(&b, "xyz"), BR_OK);
    size_t cap = b.cap;
    br_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap);
    assert_string_equal(b.ptr, "");
    assert_int_equal(br_buf_append_cstr(&b, "kept"), BR_OK);
    char *s = br_buf_steal(&b);
    assert_string_equal(s, "kept");
    assert_null(b.ptr);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    br_free(s);
    br_buf_reset(&b); /* on an empty buffer */
    br_buf_cleanup(&b);
}

static void test_alloc_failure(void **state)
{
    (void)state;
#ifdef NDEBUG
    skip();
#else
    struct br_buf b;
    br_buf_init(&b, 1 << 20);
    assert_int_equal(br_buf_append_cstr(&b, "abc"), BR_OK);
    br_alloc_fail_at(1);
    char big[200];
    memset(big, 'x', sizeof(big));
    assert_int_equal(br_buf_append(&b, big, sizeof(big)), BR_ERR_NOMEM);
    assert_string_equal(b.ptr, "abc");
    assert_int_equal(b.len, 3);
    assert_int_equal(br_buf_append(&b, big, sizeof(big)), BR_OK);
    br_buf_cleanup(&b);
#endif
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_printf), cmocka_unit_test(test_cap),
        cmocka_unit_test(test_unlimited_max),     cmocka_unit_test(test_consume_reset_steal),
        cmocka_unit_test(test_alloc_failure),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("core_buf", tests, NULL, NULL);
}
