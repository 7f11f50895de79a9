/* SPDX-License-Identifier: MIT */
/* core/arena: alignment, byte caps, big allocations, reset, cleanup order, allocation failure. */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/arena.h"
#include "core/err.h"

static void test_alloc_aligned_and_usable(void **state)
{
    (void)state;
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    for (size_t n = 0; n < 300; n++) {
        unsigned char *p = br_arena_alloc(a, n);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xab, n);
    }
    int *z = br_arena_calloc(a, 100, sizeof(int));
    assert_non_null(z);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(z[i], 0);
    }
    assert_null(br_arena_calloc(a, SIZE_MAX / 2, 4));
    assert_null(br_arena_alloc(a, SIZE_MAX));
    char *s = br_arena_strndup(a, "hello world", 5);
    assert_string_equal(s, "hello");
    assert_string_equal(br_arena_strndup(a, NULL, 0), "");
    assert_string_equal(br_arena_slice_dup(a, BR_SLICE_LIT("slice")), "slice");
    assert_string_equal(br_arena_sprintf(a, "%s-%d", "x", 42), "x-42");
    char big[3000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char *bs = br_arena_sprintf(a, "<%s>", big);
    assert_int_equal(strlen(bs), sizeof(big) + 1);
    br_arena_destroy(a);
    br_arena_destroy(NULL);
}

static void test_cap(void **state)
{
    (void)state;
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(100, &a), BR_OK);
    assert_non_null(br_arena_alloc(a, 64));
    assert_non_null(br_arena_alloc(a, 20)); /* rounded to 32: 96 used */
    assert_int_equal(br_arena_used(a), 96);
    assert_false(br_arena_hit_limit(a));
    assert_null(br_arena_alloc(a, 1)); /* 16 more would be 112 > 100 */
    assert_true(br_arena_hit_limit(a));
    assert_int_equal(br_arena_used(a), 96);
    assert_null(br_arena_alloc(a, 1000));
    assert_null(br_arena_strndup(a, "x", 1));
    assert_int_equal(br_arena_cleanup_add(a, NULL, NULL), BR_ERR_NOMEM);
    /* A request larger than the whole cap fails without touching the counters. */
    assert_null(br_arena_alloc(a, SIZE_MAX - 64));
    assert_int_equal(br_arena_used(a), 96);
    br_arena_reset(a);
    assert_false(br_arena_hit_limit(a));
    assert_int_equal(br_arena_used(a), 0);
    assert_non_null(br_arena_alloc(a, 100 - 4)); /* 96 after rounding */
    br_arena_destroy(a);

    /* The cap counts dedicated big blocks as well. */
    assert_int_equal(br_arena_create(10000, &a), BR_OK);
    assert_non_null(br_arena_alloc(a, 6000));
    assert_null(br_arena_alloc(a, 6000));
    assert_true(br_arena_hit_limit(a));
    br_arena_destroy(a);
}

static void test_big_allocations(void **state)
{
    (void)state;
    size_t live0 = br_alloc_live_bytes();
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    size_t live_empty = br_alloc_live_bytes();
    unsigned char *p1 = br_arena_alloc(a, 16);
    /* Too big for what is left of the head block: it gets a block of its own ... */
    unsigned char *big = br_arena_alloc(a, 5000);
    assert_non_null(big);
    memset(big, 0x5a, 5000);
    /* ... and small allocations keep filling the head block right after p1. */
    unsigned char *p2 = br_arena_alloc(a, 16);
    assert_ptr_equal(p2, p1 + 16);
    unsigned char *huge = br_arena_alloc(a, 10u << 20);
    assert_non_null(huge);
    memset(huge, 1, 10u << 20);
    assert_int_equal(br_arena_used(a), 16 + 5008 + 16 + (10u << 20));
    /* Many standard blocks. */
    for (int i = 0; i < 1000; i++) {
        assert_non_null(br_arena_alloc(a, 1000));
    }
    /* Reset gives everything back except the first block, which is reused. */
    br_arena_reset(a);
    assert_int_equal(br_alloc_live_bytes(), live_empty);
    assert_int_equal(br_arena_used(a), 0);
    assert_ptr_equal(br_arena_alloc(a, 16), p1);
    br_arena_destroy(a);
    assert_int_equal(br_alloc_live_bytes(), live0);
}

struct order {
    int seen[8];
    int n;
};

static struct order g_order;
static int g_ids[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};

static void note(void *data)
{
    g_order.seen[g_order.n++] = *(int *)data;
}

static void test_cleanup_order(void **state)
{
    (void)state;
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    memset(&g_order, 0, sizeof(g_order));
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(br_arena_cleanup_add(a, note, &g_ids[i]), BR_OK);
    }
    br_arena_reset(a); /* newest first */
    assert_int_equal(g_order.n, 3);
    assert_int_equal(g_order.seen[0], 3);
    assert_int_equal(g_order.seen[1], 2);
    assert_int_equal(g_order.seen[2], 1);
    /* They ran once: destroy after reset runs only what was added since. */
    assert_int_equal(br_arena_cleanup_add(a, note, &g_ids[7]), BR_OK);
    assert_int_equal(br_arena_cleanup_add(a, note, &g_ids[8]), BR_OK);
    br_arena_destroy(a);
    assert_int_equal(g_order.n, 5);
    assert_int_equal(g_order.seen[3], 8);
    assert_int_equal(g_order.seen[4], 7);
}

static void *g_seen_mem;
static bool g_mem_ok;

static void check_mem(void *data)
{
    /* Cleanups run before the memory goes: the arena memory is still readable. */
    g_mem_ok = memcmp(data, "alive", 6) == 0;
    g_seen_mem = data;
}

static void test_cleanup_runs_before_free(void **state)
{
    (void)state;
    br_arena *a = NULL;
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    char *s = br_arena_strndup(a, "alive", 5);
    (void)br_arena_alloc(a, 8000); /* a dedicated block, freed after the cleanup */
    assert_int_equal(br_arena_cleanup_add(a, check_mem, s), BR_OK);
    g_mem_ok = false;
    br_arena_destroy(a);
    assert_true(g_mem_ok);
    assert_ptr_equal(g_seen_mem, s);
}

static void test_alloc_failures(void **state)
{
    (void)state;
#ifdef NDEBUG
    skip();
#else
    size_t live0 = br_alloc_live_bytes();
    br_arena *a = NULL;
    br_alloc_fail_at(1);
    assert_int_equal(br_arena_create(0, &a), BR_ERR_NOMEM);
    assert_int_equal(br_arena_create(0, &a), BR_OK);
    /* The first block is inside the arena: filling it needs no heap. */
    assert_non_null(br_arena_alloc(a, 1024));
    assert_non_null(br_arena_alloc(a, 1024));
    assert_non_null(br_arena_alloc(a, 1024));
    assert_non_null(br_arena_alloc(a, 1024));
    br_alloc_fail_at(1);
    assert_null(br_arena_alloc(a, 16));  /* needs a new block */
    assert_false(br_arena_hit_limit(a)); /* heap, not cap */
    assert_non_null(br_arena_alloc(a, 16));
    br_alloc_fail_at(1);
    assert_null(br_arena_alloc(a, 9000)); /* dedicated block */
    assert_false(br_arena_hit_limit(a));
    br_arena_destroy(a);
    assert_int_equal(br_alloc_live_bytes(), live0);
#endif
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_aligned_and_usable), cmocka_unit_test(test_cap),
        cmocka_unit_test(test_big_allocations),          cmocka_unit_test(test_cleanup_order),
        cmocka_unit_test(test_cleanup_runs_before_free), cmocka_unit_test(test_alloc_failures),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("core_arena", tests, NULL, NULL);
}
