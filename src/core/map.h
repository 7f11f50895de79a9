/* SPDX-License-Identifier: MIT */
/*
 * String-keyed hash map (open addressing, linear probing, FNV-1a). Keys are borrowed: the
 * caller keeps the key bytes alive as long as the entry exists (they usually live in the same
 * immutable object as the map). Values are opaque pointers. Not thread-safe; immutable maps may
 * be read from many threads.
 */
#ifndef BR_CORE_MAP_H
#define BR_CORE_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"

struct br_map_entry {
    struct br_slice key; /* borrowed; ptr == NULL marks an empty slot */
    uint64_t hash;
    void *value;
};

struct br_map {
    struct br_map_entry *slots; /* owned; n_slots is a power of two */
    size_t n_slots;
    size_t n_items;
};

/** Initialises an empty map. */
void br_map_init(struct br_map *m);

/** Frees the slot array (not the keys or values). */
void br_map_cleanup(struct br_map *m);

/** Inserts or replaces key -> value. BR_ERR_NOMEM on failure (map unchanged). */
int br_map_put(struct br_map *m, struct br_slice key, void *value);

/** Value for key, or NULL. */
void *br_map_get(const struct br_map *m, struct br_slice key);

/** 64-bit FNV-1a of n bytes. */
uint64_t br_hash_bytes(const void *p, size_t n);

#endif
