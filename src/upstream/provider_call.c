/* SPDX-License-Identifier: MIT */
/* Lazy decoding of the client request for the providers that need a document. */
#include "core/err.h"
#include "upstream/provider.h"

static void json_release(void *p)
{
    json_decref(p);
}

json_t *br_provider_call_request(struct br_provider_call *call)
{
    if (call->request) {
        return call->request;
    }
    json_error_t err;
    json_t *doc = json_loadb(call->raw_body.ptr ? call->raw_body.ptr : "", call->raw_body.len,
                             JSON_REJECT_DUPLICATES, &err);
    if (!doc) {
        return NULL;
    }
    if (br_arena_cleanup_add(call->arena, json_release, doc) != BR_OK) {
        json_decref(doc);
        return NULL;
    }
    call->request = doc;
    return doc;
}
