/* SPDX-License-Identifier: MIT */
/* core/alloc: byte accounting, alignment, and fault injection with br_alloc_fail_at. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"

static void test_accounting(void **state)
{
    (void)state;
    size_t live0 = br_alloc_live_bytes();
    uint64_t count0 = br_alloc_count();
    char *p = br_malloc(100);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    memset(p, 1, 100);
    assert_int_equal(br_alloc_live_bytes(), live0 + 100);
    assert_true(br_alloc_peak_bytes() >= live0 + 100);
    p = br_realloc(p, 300);
    assert_non_null(p);
    assert_int_equal(p[99], 1);
    assert_int_equal(br_alloc_live_bytes(), live0 + 300);
    p = br_realloc(p, 10);
    assert_non_null(p);
    assert_int_equal(br_alloc_live_bytes(), live0 + 10);
    size_t peak = br_alloc_peak_bytes();
    assert_true(peak >= live0 + 300);
    br_free(p);
    assert_int_equal(br_alloc_live_bytes(), live0);
    assert_int_equal(br_alloc_peak_bytes(), peak); /* the peak stays */
    assert_int_equal(br_alloc_count(), count0 + 3);
    br_free(NULL);

    int *z = br_calloc(10, sizeof(int));
    assert_non_null(z);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(z[i], 0);
    }
    br_free(z);
    assert_null(br_calloc(SIZE_MAX / 2, 4)); /* n * size overflows */
    assert_null(br_malloc(SIZE_MAX - 4));    /* header would overflow */
    void *q = br_realloc(NULL, 32);          /* realloc(NULL) allocates */
    assert_non_null(q);
    br_free(q);
    void *zero = br_malloc(0);
    assert_non_null(zero);
    br_free(zero);
    assert_int_equal(br_alloc_live_bytes(), live0);
}

static void test_strdup(void **state)
{
    (void)state;
    size_t live0 = br_alloc_live_bytes();
    char *s = br_strdup("hello");
    assert_string_equal(s, "hello");
    assert_int_equal(br_alloc_live_bytes(), live0 + 6);
    char *t = br_strndup("abcdef", 3);
    assert_string_equal(t, "abc");
    char *e = br_strndup("xyz", 0);
    assert_string_equal(e, "");
    br_free(s);
    br_free(t);
    br_free(e);
    assert_int_equal(br_alloc_live_bytes(), live0);
}

static void test_fault_injection(void **state)
{
    (void)state;
#ifdef NDEBUG
    skip();
#else
    /* The n-th allocation from now fails, once. */
    br_alloc_fail_at(1);
    assert_null(br_malloc(8));
    void *p = br_malloc(8);
    assert_non_null(p);
    br_free(p);

    br_alloc_fail_at(3);
    void *a = br_malloc(8);
    void *b = br_calloc(2, 8);
    void *c = br_strdup("x");
    void *d = br_malloc(8);
    assert_non_null(a);
    assert_non_null(b);
    assert_null(c);
    assert_non_null(d);
    br_free(a);
    br_free(b);
    br_free(d);

    /* A failed realloc leaves the block valid and the accounting unchanged. */
    char *r = br_malloc(16);
    memcpy(r, "keep", 5);
    size_t live = br_alloc_live_bytes();
    br_alloc_fail_at(1);
    assert_null(br_realloc(r, 4096));
    assert_string_equal(r, "keep");
    assert_int_equal(br_alloc_live_bytes(), live);
    br_free(r);

    /* Failed attempts are counted too (the counter is what injection indexes). */
    uint64_t n0 = br_alloc_count();
    br_alloc_fail_at(1);
    assert_null(br_malloc(1));
    assert_int_equal(br_alloc_count(), n0 + 1);

    /* 0 switches injection off. */
    br_alloc_fail_at(2);
    br_alloc_fail_at(0);
    for (int i = 0; i < 5; i++) {
        void *x = br_malloc(4);
        assert_non_null(x);
        br_free(x);
    }
#endif
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accounting),
        cmocka_unit_test(test_strdup),
        cmocka_unit_test(test_fault_injection),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("core_alloc", tests, NULL, NULL);
}
