/* SPDX-License-Identifier: MIT */
/*
 * Error codes shared by every subsystem. Fallible functions return BR_OK (0) or a negative
 * code from this one table; names and messages come from the same X-macro so that they never
 * drift apart (as libuv does with UV_ERRNO_MAP).
 */
#ifndef BR_CORE_ERR_H
#define BR_CORE_ERR_H

#include <stddef.h>

/* X(name, message) */
#define BR_ERR_MAP(X)                       \
    X(AGAIN, "need more input; call again") \
    X(NOMEM, "out of memory")               \
    X(LIMIT, "size limit exceeded")         \
    X(INVAL, "invalid argument")            \
    X(PARSE, "malformed input")             \
    X(IO, "input/output error")             \
    X(NOTFOUND, "not found")                \
    X(EXISTS, "already exists")             \
    X(TIMEOUT, "timed out")                 \
    X(CLOSED, "connection closed")          \
    X(UPSTREAM, "upstream error")           \
    X(AUTH, "authentication failed")        \
    X(UNSUPPORTED, "not supported")         \
    X(BUSY, "resource busy")                \
    X(CANCELED, "operation canceled")       \
    X(RANGE, "value out of range")

/* Positive row numbers, generated from the table; the public codes below are their negations. */
enum {
    BR__E_NONE = 0,
#define BR__ERR_ENUM(name, msg) BR__E_##name,
    BR_ERR_MAP(BR__ERR_ENUM)
#undef BR__ERR_ENUM
        BR__E_COUNT
};

#define BR_OK              0
#define BR_AGAIN           (-BR__E_AGAIN)
#define BR_ERR_NOMEM       (-BR__E_NOMEM)
#define BR_ERR_LIMIT       (-BR__E_LIMIT)
#define BR_ERR_INVAL       (-BR__E_INVAL)
#define BR_ERR_PARSE       (-BR__E_PARSE)
#define BR_ERR_IO          (-BR__E_IO)
#define BR_ERR_NOTFOUND    (-BR__E_NOTFOUND)
#define BR_ERR_EXISTS      (-BR__E_EXISTS)
#define BR_ERR_TIMEOUT     (-BR__E_TIMEOUT)
#define BR_ERR_CLOSED      (-BR__E_CLOSED)
#define BR_ERR_UPSTREAM    (-BR__E_UPSTREAM)
#define BR_ERR_AUTH        (-BR__E_AUTH)
#define BR_ERR_UNSUPPORTED (-BR__E_UNSUPPORTED)
#define BR_ERR_BUSY        (-BR__E_BUSY)
#define BR_ERR_CANCELED    (-BR__E_CANCELED)
#define BR_ERR_RANGE       (-BR__E_RANGE)

/** Short upper-case name of a code ("BR_ERR_NOMEM"); "BR_OK" for 0, "BR_ERR_UNKNOWN" otherwise. */
const char *br_err_name(int code);

/** Human-readable message for a code; never NULL. */
const char *br_strerror(int code);

/** Maps an errno value to a BR_ERR_* code (BR_ERR_IO when there is no closer match). */
int br_err_from_errno(int errnum);

/**
 * Writes a printf-formatted message into err (cap bytes, NUL-terminated, truncated when
 * longer); does nothing when err is NULL or cap is 0. The one helper behind the err/errlen
 * parameters of the loaders and parsers.
 */
void br_err_printf(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** br_err_printf, then returns rc: `return br_err_fail(err, cap, BR_ERR_PARSE, "...", ...);`. */
int br_err_fail(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
