/* SPDX-License-Identifier: MIT */
/* JSON serialisation into brigade's memory (arena or br_malloc), independent of jansson's
 * allocator settings. */
#include <jansson.h>

#include "api/api_int.h"
#include "core/alloc.h"

char *br__json_dump(br_arena *a, const json_t *j, size_t *len_out)
{
    size_t n = json_dumpb(j, NULL, 0, JSON_COMPACT);
    if (n == 0) {
        return NULL;
    }
    char *buf = br_arena_alloc(a, n + 1);
    if (!buf || json_dumpb(j, buf, n, JSON_COMPACT) != n) {
        return NULL;
    }
    buf[n] = '\0';
    *len_out = n;
    return buf;
}

char *br__json_dump_heap(const json_t *j, size_t *len_out)
{
    size_t n = json_dumpb(j, NULL, 0, JSON_COMPACT);
    if (n == 0) {
        return NULL;
    }
    char *buf = br_malloc(n + 1);
    if (buf && json_dumpb(j, buf, n, JSON_COMPACT) != n) {
        br_free(buf);
        buf = NULL;
    }
    if (buf) {
        buf[n] = '\0';
        *len_out = n;
    }
    return buf;
}
