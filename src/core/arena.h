/* SPDX-License-Identifier: MIT */
/*
 * Request-lifetime memory (STYLE.md rules 18-20, after nginx pools): many small allocations,
 * released all at once by br_arena_destroy/br_arena_reset. Cleanup callbacks registered on the
 * arena run (newest first) when it is reset or destroyed; requests use them for fds, upstream
 * handles and other non-memory resources. An arena has a byte cap: allocations past it fail.
 * Not thread-safe: an arena belongs to one request on one event loop.
 */
#ifndef BR_CORE_ARENA_H
#define BR_CORE_ARENA_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/slice.h"

typedef struct br_arena br_arena;

/** Creates an arena that may hand out at most max_bytes (0 = no cap). Caller destroys. */
int br_arena_create(size_t max_bytes, br_arena **out);

/** Runs the cleanups, frees all memory and the arena. NULL is a no-op. */
void br_arena_destroy(br_arena *a);

/** Runs the cleanups and forgets every allocation, keeping the first block for reuse. */
void br_arena_reset(br_arena *a);

/**
 * Returns n bytes aligned to 16, valid until reset/destroy; NULL on OOM or when the cap is
 * reached (br_arena_hit_limit tells which).
 */
void *br_arena_alloc(br_arena *a, size_t n);

/** Zeroed n * size bytes; NULL on overflow, OOM or cap. */
void *br_arena_calloc(br_arena *a, size_t n, size_t size);

/** Copies n bytes and appends a NUL. */
char *br_arena_strndup(br_arena *a, const char *s, size_t n);

/** Copies a slice into NUL-terminated arena memory. */
char *br_arena_slice_dup(br_arena *a, struct br_slice s);

/** printf into arena memory. */
char *br_arena_sprintf(br_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Registers fn(data) to run at reset/destroy (newest first). BR_ERR_NOMEM on failure. */
int br_arena_cleanup_add(br_arena *a, void (*fn)(void *data), void *data);

/** Bytes handed out since creation or the last reset. */
size_t br_arena_used(const br_arena *a);

/** True when the last failed allocation failed because of the cap, not the heap. */
bool br_arena_hit_limit(const br_arena *a);

#endif
