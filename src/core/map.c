/* SPDX-License-Identifier: MIT */
/* Open-addressing hash map with borrowed string keys; grows at 70% load. */
#include "core/map.h"

#include <string.h>

#include "core/alloc.h"
#include "core/err.h"

uint64_t br_hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

void br_map_init(struct br_map *m)
{
    m->slots = NULL;
    m->n_slots = 0;
    m->n_items = 0;
}

void br_map_cleanup(struct br_map *m)
{
    br_free(m->slots);
    br_map_init(m);
}

static struct br_map_entry *find_slot(struct br_map_entry *slots, size_t n_slots,
                                      struct br_slice key, uint64_t h)
{
    size_t mask = n_slots - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        struct br_map_entry *e = &slots[i];
        if (!e->key.ptr || (e->hash == h && br_slice_eq(e->key, key))) {
            return e;
        }
    }
}

static int grow(struct br_map *m)
{
    size_t n = m->n_slots ? m->n_slots * 2 : 16;
    struct br_map_entry *slots = br_calloc(n, sizeof(*slots));
    if (!slots) {
        return BR_ERR_NOMEM;
    }
    for (size_t i = 0; i < m->n_slots; i++) {
        struct br_map_entry *e = &m->slots[i];
        if (e->key.ptr) {
            *find_slot(slots, n, e->key, e->hash) = *e;
        }
    }
    br_free(m->slots);
    m->slots = slots;
    m->n_slots = n;
    return BR_OK;
}

int br_map_put(struct br_map *m, struct br_slice key, void *value)
{
    static const char empty_key[1] = "";
    if (!key.ptr) {
        key = br_slice_make(empty_key, 0); /* NULL marks empty slots; a NULL key is empty */
    }
    if ((m->n_items + 1) * 10 > m->n_slots * 7) {
        int rc = grow(m);
        if (rc != BR_OK) {
            return rc;
        }
    }
    uint64_t h = br_hash_bytes(key.ptr, key.len);
    struct br_map_entry *e = find_slot(m->slots, m->n_slots, key, h);
    if (!e->key.ptr) {
        m->n_items++;
    }
    e->key = key;
    e->hash = h;
    e->value = value;
    return BR_OK;
}

void *br_map_get(const struct br_map *m, struct br_slice key)
{
    static const char empty_key[1] = "";
    if (m->n_slots == 0) {
        return NULL;
    }
    if (!key.ptr) {
        key = br_slice_make(empty_key, 0);
    }
    uint64_t h = br_hash_bytes(key.ptr, key.len);
    struct br_map_entry *e = find_slot(m->slots, m->n_slots, key, h);
    return e->key.ptr ? e->value : NULL;
}
