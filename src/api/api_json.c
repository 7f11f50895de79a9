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

void br__respond_json(br_http_request *req, int status, json_t *j)
{
    static const struct br_http_header json_ct = {BR_SLICE_LIT("content-type"),
                                                  BR_SLICE_LIT("application/json")};
    size_t len = 0;
    char *text = j ? br__json_dump(req->arena, j, &len) : NULL;
    json_decref(j);
    if (!text) {
        br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL, "out of memory");
        return;
    }
    br_http_respond(req, status, &json_ct, 1, br_slice_make(text, len));
}

void br__respond_not_allowed(br_http_request *req, const char *allowed)
{
    char *msg = br_arena_sprintf(req->arena, "Method %.*s is not allowed here; use %s.",
                                 (int)(req->method_name.len > 16 ? 16 : req->method_name.len),
                                 req->method_name.ptr, allowed);
    br_http_respond_error(req, 405, "invalid_request_error", "method_not_allowed", NULL,
                          msg ? msg : "method not allowed");
}
