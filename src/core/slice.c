/* SPDX-License-Identifier: MIT */
/* Slice comparisons and strict number parsing. */
#include "core/slice.h"

#include "core/err.h"

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

bool br_slice_eq(struct br_slice a, struct br_slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

bool br_slice_eq_cstr(struct br_slice a, const char *s)
{
    return br_slice_eq(a, br_slice_from_cstr(s));
}

bool br_slice_case_eq_cstr(struct br_slice a, const char *s)
{
    size_t n = strlen(s);
    if (n != a.len) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (lower((unsigned char)a.ptr[i]) != lower((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

bool br_slice_starts_with(struct br_slice a, const char *prefix)
{
    size_t n = strlen(prefix);
    return a.len >= n && memcmp(a.ptr, prefix, n) == 0;
}

struct br_slice br_slice_trim(struct br_slice a)
{
    while (a.len && (a.ptr[0] == ' ' || a.ptr[0] == '\t')) {
        a.ptr++;
        a.len--;
    }
    while (a.len && (a.ptr[a.len - 1] == ' ' || a.ptr[a.len - 1] == '\t')) {
        a.len--;
    }
    return a;
}

int br_slice_to_u64(struct br_slice a, unsigned long long max, unsigned long long *out)
{
    unsigned long long v = 0;
    if (a.len == 0) {
        return BR_ERR_PARSE;
    }
    for (size_t i = 0; i < a.len; i++) {
        unsigned d = (unsigned char)a.ptr[i] - '0';
        if (d > 9) {
            return BR_ERR_PARSE;
        }
        if (d > max || v > (max - d) / 10) { /* d > max first: max - d would wrap */
            return BR_ERR_RANGE;
        }
        v = v * 10 + d;
    }
    *out = v;
    return BR_OK;
}

size_t br_fmt_i64(long long v, char out[BR_FMT_I64_LEN])
{
    char tmp[BR_FMT_I64_LEN];
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0) {
        out[len++] = '-';
    }
    while (n) {
        out[len++] = tmp[--n];
    }
    out[len] = '\0';
    return len;
}
