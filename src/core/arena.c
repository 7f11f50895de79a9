/* SPDX-License-Identifier: MIT */
/*
 * Bump allocator over a chain of blocks. Small requests share blocks of BLOCK bytes; large ones
 * get a block of their own so that a big body does not waste a half-used standard block.
 */
#include "core/arena.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"

#define BLOCK 4096u
#define ALIGN 16u

struct block {
    struct block *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    /* payload follows, aligned to 16 by the padding below */
    unsigned char pad[8];
};

struct cleanup {
    struct cleanup *next;
    void (*fn)(void *data);
    void *data;
};

struct br_arena {
    struct block *head; /* block being filled */
    struct cleanup *cleanups;
    size_t used;      /* bytes handed out */
    size_t max_bytes; /* 0 = unlimited */
    bool hit_limit;
    _Alignas(16) struct block first; /* must be last: its payload continues into the allocation */
};

#define PAYLOAD(b) ((unsigned char *)(b) + sizeof(struct block))

_Static_assert(sizeof(struct block) % ALIGN == 0, "block header keeps payload aligned");

int br_arena_create(size_t max_bytes, br_arena **out)
{
    br_arena *a = br_malloc(sizeof(*a) + BLOCK);
    if (!a) {
        return BR_ERR_NOMEM;
    }
    memset(a, 0, sizeof(*a));
    a->max_bytes = max_bytes;
    a->first.size = BLOCK;
    a->head = &a->first;
    *out = a;
    return BR_OK;
}

static void run_cleanups(br_arena *a)
{
    while (a->cleanups) {
        struct cleanup *c = a->cleanups;
        a->cleanups = c->next;
        c->fn(c->data);
    }
}

static void free_blocks(br_arena *a)
{
    /* Every block is on the one chain from head; `first` lives inside the arena itself. */
    struct block *b = a->head;
    while (b) {
        struct block *next = b->next;
        if (b != &a->first) {
            br_free(b);
        }
        b = next;
    }
    a->head = &a->first;
    a->first.next = NULL;
    a->first.used = 0;
}

void br_arena_destroy(br_arena *a)
{
    if (!a) {
        return;
    }
    run_cleanups(a);
    free_blocks(a);
    br_free(a);
}

void br_arena_reset(br_arena *a)
{
    run_cleanups(a);
    free_blocks(a);
    a->used = 0;
    a->hit_limit = false;
}

static void *alloc_block(br_arena *a, size_t size)
{
    struct block *b = br_malloc(sizeof(struct block) + size);
    if (!b) {
        return NULL;
    }
    b->size = size;
    b->used = 0;
    b->next = a->head;
    a->head = b;
    return b;
}

void *br_arena_alloc(br_arena *a, size_t n)
{
    if (n == 0) {
        n = 1;
    }
    if (n > SIZE_MAX - ALIGN) {
        return NULL;
    }
    size_t rounded = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (a->max_bytes && (rounded > a->max_bytes || a->used > a->max_bytes - rounded)) {
        a->hit_limit = true;
        return NULL;
    }
    struct block *b = a->head;
    if (b->size - b->used < rounded) {
        if (rounded > BLOCK / 4) {
            /* A dedicated block, linked behind the head so the head keeps filling. */
            struct block *big = br_malloc(sizeof(struct block) + rounded);
            if (!big) {
                a->hit_limit = false;
                return NULL;
            }
            big->size = rounded;
            big->used = rounded;
            big->next = b->next;
            b->next = big;
            a->used += rounded;
            return PAYLOAD(big);
        }
        b = alloc_block(a, BLOCK);
        if (!b) {
            a->hit_limit = false;
            return NULL;
        }
    }
    void *p = PAYLOAD(b) + b->used;
    b->used += rounded;
    a->used += rounded;
    return p;
}

void *br_arena_calloc(br_arena *a, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size) {
        return NULL;
    }
    void *p = br_arena_alloc(a, n * size);
    if (p) {
        memset(p, 0, n * size);
    }
    return p;
}

char *br_arena_strndup(br_arena *a, const char *s, size_t n)
{
    if (n == SIZE_MAX) {
        return NULL;
    }
    char *d = br_arena_alloc(a, n + 1);
    if (!d) {
        return NULL;
    }
    if (n) {
        memcpy(d, s, n);
    }
    d[n] = '\0';
    return d;
}

char *br_arena_slice_dup(br_arena *a, struct br_slice s)
{
    return br_arena_strndup(a, s.ptr, s.len);
}

char *br_arena_sprintf(br_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return NULL;
    }
    char *d = br_arena_alloc(a, (size_t)n + 1);
    if (!d) {
        return NULL;
    }
    va_start(ap, fmt);
    (void)vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}

int br_arena_cleanup_add(br_arena *a, void (*fn)(void *data), void *data)
{
    struct cleanup *c = br_arena_alloc(a, sizeof(*c));
    if (!c) {
        return BR_ERR_NOMEM;
    }
    c->fn = fn;
    c->data = data;
    c->next = a->cleanups;
    a->cleanups = c;
    return BR_OK;
}

size_t br_arena_used(const br_arena *a)
{
    return a->used;
}

bool br_arena_hit_limit(const br_arena *a)
{
    return a->hit_limit;
}
