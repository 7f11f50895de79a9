/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: core/json. The validator must agree with jansson (except for jansson's numeric
 * range limits and its tolerance of raw NUL bytes between tokens), and navigation over a
 * validated object must be consistent: every member is found again by name, strings decode.
 */
#include <assert.h>
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "core/err.h"
#include "core/json.h"

/* NOLINTNEXTLINE(misc-no-recursion): stops at depth 64 */
static void walk(struct br_slice v, int depth)
{
    enum br_json_type t = br_json_type_of(v);
    assert(t != BR_JSON_INVALID);
    if (depth > 64) {
        return;
    }
    struct br_json_iter it;
    if (t == BR_JSON_OBJECT) {
        struct br_json_member m;
        assert(br_json_obj_iter_init(&it, v) == BR_OK);
        int rc;
        while ((rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
            walk(m.value, depth + 1);
        }
        assert(rc == BR_ERR_NOTFOUND);
    } else if (t == BR_JSON_ARRAY) {
        struct br_slice el;
        assert(br_json_arr_iter_init(&it, v) == BR_OK);
        int rc;
        while ((rc = br_json_arr_iter_next(&it, &el)) == BR_OK) {
            walk(el, depth + 1);
        }
        assert(rc == BR_ERR_NOTFOUND);
    } else if (t == BR_JSON_STRING) {
        char out[64];
        size_t len = 0;
        int rc = br_json_string_decode(v, out, sizeof(out), &len);
        assert(rc == BR_OK || rc == BR_ERR_LIMIT);
        assert(br_json_string_decoded_len(v) == (long long)len);
    } else if (t == BR_JSON_NUMBER) {
        double d;
        int64_t i;
        assert(br_json_number(v, &d) == BR_OK || v.len >= 63);
        int rc = br_json_int(v, &i);
        assert(rc == BR_OK || rc == BR_ERR_PARSE || rc == BR_ERR_RANGE);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    int ours = br_json_validate(p, size, 0, NULL, NULL);
    json_error_t err;
    json_t *j = json_loadb(p, size, JSON_DECODE_ANY, &err);
    if (j && ours != BR_OK) {
        assert(memchr(p, '\0', size) != NULL); /* jansson skips raw NULs; we refuse them */
    }
    if (!j && ours == BR_OK) {
        assert(strstr(err.text, "too big") || strstr(err.text, "overflow") ||
               strstr(err.text, "depth"));
    }
    json_decref(j);
    if (ours == BR_OK) {
        walk(br_slice_make(p, size), 0);
        if (br_json_type_of(br_slice_make(p, size)) == BR_JSON_OBJECT) {
            struct br_json_iter it;
            struct br_json_member m;
            struct br_json_member again;
            br_json_obj_iter_init(&it, br_slice_make(p, size));
            while (br_json_obj_iter_next(&it, &m) == BR_OK) {
                /* Keys without escapes must be found again (the last duplicate wins). */
                if (!memchr(m.key.ptr, '\\', m.key.len) && m.key.len < 64) {
                    char key[64];
                    memcpy(key, m.key.ptr, m.key.len);
                    key[m.key.len] = '\0';
                    assert(br_json_obj_find(br_slice_make(p, size), key, &again) == BR_OK);
                    assert(again.start >= m.start);
                }
            }
        }
    }
    return 0;
}
