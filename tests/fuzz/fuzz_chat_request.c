/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the chat request decoder (api_request.c) — strict validation, duplicate-name
 * refusal and field checks on arbitrary bodies. Invariants: it never crashes or leaks; an
 * accepted request has a non-empty model and, when it asks for usage, streams; every refusal
 * carries an OpenAI error code and message.
 */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "api/api_int.h"
#include "core/arena.h"
#include "core/err.h"
#include "core/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    br_arena *a = NULL;
    if (br_arena_create(1u << 20, &a) != BR_OK) {
        return 0;
    }
    struct br__chat_request cr;
    struct br__verr e;
    memset(&e, 0, sizeof(e));
    int rc = br__chat_request_parse(a, br_slice_make((const char *)data, size), &cr, &e);
    if (rc == BR_OK) {
        assert(cr.model && cr.model_len > 0 && strlen(cr.model) <= cr.model_len);
        assert(!cr.wants_usage || cr.stream);
        assert(br_json_validate((const char *)data, size, 0, NULL, NULL) == BR_OK);
    } else {
        assert(rc == BR_ERR_INVAL);
        assert(e.code && e.msg[0]);
    }
    br_arena_destroy(a);
    return 0;
}
