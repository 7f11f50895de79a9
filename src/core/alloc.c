/* SPDX-License-Identifier: MIT */
/*
 * Heap wrappers with accounting and fault injection (STYLE.md rules 24 and 44). Each block
 * carries a 16-byte header holding its size so that live bytes can be tracked without
 * malloc_usable_size(); the header keeps the payload 16-byte aligned.
 */
#include "core/alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define HDR 16u

static atomic_size_t live_bytes;
static atomic_size_t peak_bytes;
static atomic_uint_fast64_t n_allocs;
static atomic_uint_fast64_t fail_at; /* absolute allocation number that fails; 0 = never */
#ifndef NDEBUG
static atomic_int env_checked; /* BR_FAIL_ALLOC_AT read (Debug builds only) */
#endif

static void check_env(void)
{
#ifndef NDEBUG
    if (atomic_load_explicit(&env_checked, memory_order_acquire)) {
        return;
    }
    /* getenv is safe here: nothing in brigade calls setenv after start-up. */
    const char *s = getenv("BR_FAIL_ALLOC_AT"); /* NOLINT(concurrency-mt-unsafe) */
    if (s && *s) {
        char *end = NULL;
        unsigned long long v = strtoull(s, &end, 10);
        if (end && *end == '\0' && v > 0) {
            atomic_store(&fail_at, (uint_fast64_t)v);
        }
    }
    atomic_store_explicit(&env_checked, 1, memory_order_release);
#endif
}

static int should_fail(void)
{
    uint_fast64_t n = atomic_fetch_add_explicit(&n_allocs, 1, memory_order_relaxed) + 1;
#ifndef NDEBUG
    check_env();
    uint_fast64_t f = atomic_load_explicit(&fail_at, memory_order_relaxed);
    if (f != 0 && n == f) {
        return 1;
    }
#else
    (void)n;
#endif
    return 0;
}

static void account(size_t add, size_t sub)
{
    size_t now;
    if (add) {
        now = atomic_fetch_add_explicit(&live_bytes, add, memory_order_relaxed) + add;
        size_t peak = atomic_load_explicit(&peak_bytes, memory_order_relaxed);
        while (now > peak &&
               !atomic_compare_exchange_weak_explicit(&peak_bytes, &peak, now, memory_order_relaxed,
                                                      memory_order_relaxed)) {
        }
    }
    if (sub) {
        atomic_fetch_sub_explicit(&live_bytes, sub, memory_order_relaxed);
    }
}

void *br_malloc(size_t n)
{
    if (should_fail() || n > SIZE_MAX - HDR) {
        return NULL;
    }
    unsigned char *p = malloc(n + HDR); /* the one allowed raw malloc */
    if (!p) {
        return NULL;
    }
    memcpy(p, &n, sizeof(n));
    account(n, 0);
    return p + HDR;
}

void *br_calloc(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size) {
        return NULL;
    }
    void *p = br_malloc(n * size);
    if (p) {
        memset(p, 0, n * size);
    }
    return p;
}

void *br_realloc(void *p, size_t n)
{
    if (!p) {
        return br_malloc(n);
    }
    if (should_fail() || n > SIZE_MAX - HDR) {
        return NULL;
    }
    unsigned char *base = (unsigned char *)p - HDR;
    size_t old;
    memcpy(&old, base, sizeof(old));
    unsigned char *q = realloc(base, n + HDR);
    if (!q) {
        return NULL;
    }
    memcpy(q, &n, sizeof(n));
    if (n > old) {
        account(n - old, 0);
    } else {
        account(0, old - n);
    }
    return q + HDR;
}

void br_free(void *p)
{
    if (!p) {
        return;
    }
    unsigned char *base = (unsigned char *)p - HDR;
    size_t n;
    memcpy(&n, base, sizeof(n));
    account(0, n);
    free(base);
}

char *br_strdup(const char *s)
{
    return br_strndup(s, strlen(s));
}

char *br_strndup(const char *s, size_t n)
{
    char *d = br_malloc(n + 1);
    if (!d) {
        return NULL;
    }
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

size_t br_alloc_live_bytes(void)
{
    return atomic_load_explicit(&live_bytes, memory_order_relaxed);
}

size_t br_alloc_peak_bytes(void)
{
    return atomic_load_explicit(&peak_bytes, memory_order_relaxed);
}

uint64_t br_alloc_count(void)
{
    return atomic_load_explicit(&n_allocs, memory_order_relaxed);
}

void br_alloc_fail_at(uint64_t n)
{
    check_env();
    uint_fast64_t base = atomic_load_explicit(&n_allocs, memory_order_relaxed);
    atomic_store(&fail_at, n ? base + n : 0);
}
