/* SPDX-License-Identifier: MIT */
/* Error names and messages, generated from the single table in err.h. */
#include "core/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

struct err_entry {
    const char *name;
    const char *msg;
};

static const struct err_entry err_table[] = {
#define BR__ERR_ROW(name, msg) {"BR_ERR_" #name, msg},
    BR_ERR_MAP(BR__ERR_ROW)
#undef BR__ERR_ROW
};

_Static_assert(sizeof(err_table) / sizeof(err_table[0]) == BR__E_COUNT - 1, "err table size");

const char *br_err_name(int code)
{
    if (code == 0) {
        return "BR_OK";
    }
    if (code == BR_AGAIN) {
        return "BR_AGAIN"; /* not an error: the table row says BR_ERR_AGAIN */
    }
    if (code < 0 && code >= -(BR__E_COUNT - 1)) { /* not -code: -INT_MIN overflows */
        return err_table[-code - 1].name;
    }
    return "BR_ERR_UNKNOWN";
}

const char *br_strerror(int code)
{
    if (code == 0) {
        return "success";
    }
    if (code < 0 && code >= -(BR__E_COUNT - 1)) {
        return err_table[-code - 1].msg;
    }
    return "unknown error";
}

int br_err_from_errno(int errnum)
{
    switch (errnum) {
    case 0:
        return BR_OK;
    case EAGAIN:
        return BR_AGAIN;
    case ENOMEM:
        return BR_ERR_NOMEM;
    case EINVAL:
        return BR_ERR_INVAL;
    case ENOENT:
        return BR_ERR_NOTFOUND;
    case EEXIST:
    case EADDRINUSE:
        return BR_ERR_EXISTS;
    case ETIMEDOUT:
        return BR_ERR_TIMEOUT;
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN:
        return BR_ERR_CLOSED;
    case EACCES:
    case EPERM:
        return BR_ERR_AUTH;
    case ERANGE:
    case EOVERFLOW:
        return BR_ERR_RANGE;
    case EBUSY:
        return BR_ERR_BUSY;
    case ECANCELED:
        return BR_ERR_CANCELED;
    case ENOTSUP:
        return BR_ERR_UNSUPPORTED;
    default:
        return BR_ERR_IO;
    }
}

static void err_vprintf(char *err, size_t cap, const char *fmt, va_list ap)
{
    if (!err || cap == 0) {
        return;
    }
    /* clang 14's analyzer loses va_start when it inlines a variadic function. */
    /* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized) */
    (void)vsnprintf(err, cap, fmt, ap);
}

void br_err_printf(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err_vprintf(err, cap, fmt, ap);
    va_end(ap);
}

int br_err_fail(char *err, size_t cap, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err_vprintf(err, cap, fmt, ap);
    va_end(ap);
    return rc;
}
