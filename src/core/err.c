/* SPDX-License-Identifier: MIT */
/* Error names and messages, generated from the single table in err.h. */
#include "core/err.h"

#include <errno.h>

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
