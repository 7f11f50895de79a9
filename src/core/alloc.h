/* SPDX-License-Identifier: MIT */
/*
 * The one gateway to the heap. Every allocation in src/ goes through these functions, which keep
 * byte accounting (live bytes, peak) and, in Debug builds, fault injection: the N-th allocation
 * fails when BR_FAIL_ALLOC_AT=N is set in the environment or br_alloc_fail_at(N) was called.
 * Thread-safe.
 */
#ifndef BR_CORE_ALLOC_H
#define BR_CORE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

/** Allocates n bytes (16-byte aligned). Returns NULL on failure or injected fault. */
void *br_malloc(size_t n);

/** Allocates n * size zeroed bytes; NULL when the product overflows or on failure. */
void *br_calloc(size_t n, size_t size);

/** Resizes p (which may be NULL) to n bytes; on failure returns NULL and p stays valid. */
void *br_realloc(void *p, size_t n);

/** Frees memory from br_malloc/br_calloc/br_realloc/br_strdup; NULL is a no-op. */
void br_free(void *p);

/** Copies a NUL-terminated string; caller frees with br_free. NULL on failure. */
char *br_strdup(const char *s);

/** Copies n bytes of s and NUL-terminates; caller frees with br_free. NULL on failure. */
char *br_strndup(const char *s, size_t n);

/** Bytes currently allocated through this module (payload only). */
size_t br_alloc_live_bytes(void);

/** Highest value br_alloc_live_bytes() has reached. */
size_t br_alloc_peak_bytes(void);

/** Number of allocations made so far (successful or not); the counter fault injection uses. */
uint64_t br_alloc_count(void);

/**
 * Makes the n-th allocation from now fail once (n >= 1); 0 switches injection off.
 * Only effective in builds without NDEBUG.
 */
void br_alloc_fail_at(uint64_t n);

#endif
