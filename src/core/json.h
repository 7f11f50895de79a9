/* SPDX-License-Identifier: MIT */
/*
 * JSON on raw text, without building a tree: a strict RFC 8259 validator and navigation
 * (object members, array elements, strings, numbers) over text that has been validated.
 * Nothing allocates; nothing recurses (nesting is tracked with a bit stack), so hostile input
 * costs bounded time and memory.
 *
 * Why not jansson here: on this machine jansson needs about 11 us to parse a 1 KB chat request
 * (and as much for the upstream's answer), a fifth of the gateway's whole per-request budget;
 * validating and reading the few fields the gateway needs from the text takes about 1 us.
 * jansson remains the tool wherever a document must be built or transformed.
 */
#ifndef BR_CORE_JSON_H
#define BR_CORE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/slice.h"

/* Deepest nesting accepted (jansson's limit too). */
#define BR_JSON_MAX_DEPTH 2048

enum br_json_type {
    BR_JSON_INVALID = 0,
    BR_JSON_OBJECT,
    BR_JSON_ARRAY,
    BR_JSON_STRING,
    BR_JSON_NUMBER,
    BR_JSON_TRUE,
    BR_JSON_FALSE,
    BR_JSON_NULL,
};

/* Flags for br_json_validate. */
#define BR_JSON_ALLOW_NUL 1u /* accept \u0000 escapes (upstream answers may carry them) */

/**
 * Checks that text is exactly one JSON value with optional surrounding whitespace, per RFC
 * 8259: strict number grammar, strings of valid UTF-8 (no overlong forms, no encoded
 * surrogates) with valid escapes (unpaired surrogate escapes are refused, and \u0000 too
 * unless BR_JSON_ALLOW_NUL: a NUL in a decoded C string would silently truncate it), no
 * control characters, nesting at most BR_JSON_MAX_DEPTH. Returns BR_OK or BR_ERR_PARSE; on
 * error *err_off (may be NULL) is the offset of the first bad byte and *err_msg (may be NULL)
 * a short static reason.
 */
int br_json_validate(const char *text, size_t n, unsigned flags, size_t *err_off,
                     const char **err_msg);

/** Type of the value that starts at v.ptr (leading whitespace skipped); INVALID if none. */
enum br_json_type br_json_type_of(struct br_slice v);

/** One object member: slices into the object's text. */
struct br_json_member {
    struct br_slice key;   /* raw key between the quotes; escapes not decoded */
    struct br_slice value; /* the value's text exactly as written */
    size_t start;          /* offset (in the object's text) of the key's opening quote */
    size_t end;            /* offset just past the value */
};

/* Iterator over an object's members or an array's elements; fields are private. */
struct br_json_iter {
    const char *p;
    size_t len;
    size_t pos;
    int state;
    bool array;
};

/**
 * Starts iterating over the members of the object text `obj` (leading whitespace allowed).
 * BR_OK, or BR_ERR_PARSE when obj does not start with '{'. The text is borrowed.
 */
int br_json_obj_iter_init(struct br_json_iter *it, struct br_slice obj);

/**
 * Next member: BR_OK, BR_ERR_NOTFOUND after the last one, BR_ERR_PARSE on malformed text.
 * Nested values are skipped by bracket matching, not validated: validate first, but any
 * input is handled safely.
 */
int br_json_obj_iter_next(struct br_json_iter *it, struct br_json_member *m);

/** Starts iterating over the elements of the array text `arr`. As br_json_obj_iter_init. */
int br_json_arr_iter_init(struct br_json_iter *it, struct br_slice arr);

/** Next element's text: BR_OK, BR_ERR_NOTFOUND after the last one, BR_ERR_PARSE. */
int br_json_arr_iter_next(struct br_json_iter *it, struct br_slice *elem);

/** True when the raw (escaped) key equals the key_len bytes of key once its escapes are
 * decoded. */
bool br_json_key_eqn(struct br_slice raw_key, const char *key, size_t key_len);

/** br_json_key_eqn for a NUL-terminated key (its length folds to a constant for literals). */
static inline bool br_json_key_eq(struct br_slice raw_key, const char *key)
{
    return br_json_key_eqn(raw_key, key, strlen(key));
}

/**
 * The LAST member named key (the one a decoder keeps): BR_OK, BR_ERR_NOTFOUND, or
 * BR_ERR_PARSE when obj is not an object.
 */
int br_json_obj_find(struct br_slice obj, const char *key, struct br_json_member *out);

/** Value of member key when present, else an empty slice (ptr NULL). */
struct br_slice br_json_obj_get(struct br_slice obj, const char *key);

/**
 * Decodes the string value v (with its quotes) into out (cap bytes, NUL-terminated). Returns
 * BR_OK, BR_ERR_PARSE (not a valid string) or BR_ERR_LIMIT (does not fit; out holds a
 * truncated prefix). *len_out (may be NULL) gets the decoded length.
 */
int br_json_string_decode(struct br_slice v, char *out, size_t cap, size_t *len_out);

/** Length of v's decoded string, or BR_ERR_PARSE as a negative value. */
long long br_json_string_decoded_len(struct br_slice v);

/**
 * Reads v as an integer (no fraction or exponent) within int64. BR_OK, BR_ERR_PARSE (not an
 * integer) or BR_ERR_RANGE.
 */
int br_json_int(struct br_slice v, int64_t *out);

/** Reads v as a number (any JSON number form). BR_OK or BR_ERR_PARSE. */
int br_json_number(struct br_slice v, double *out);

#endif
