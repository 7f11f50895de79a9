/* SPDX-License-Identifier: MIT */
/*
 * Borrowed string views (STYLE.md rule 26): a pointer and a length into someone else's buffer,
 * never assumed NUL-terminated. The owner of the buffer decides the lifetime.
 */
#ifndef BR_CORE_SLICE_H
#define BR_CORE_SLICE_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct br_slice {
    const char *ptr; /* borrowed; may be NULL when len == 0 */
    size_t len;      /* bytes */
};

/** A slice over a string literal. */
#define BR_SLICE_LIT(s) ((struct br_slice){(s), sizeof(s) - 1})

/** A slice over n bytes at p. */
static inline struct br_slice br_slice_make(const char *p, size_t n)
{
    return (struct br_slice){p, n};
}

/** A slice over a NUL-terminated string (NULL gives the empty slice). */
static inline struct br_slice br_slice_from_cstr(const char *s)
{
    return (struct br_slice){s, s ? strlen(s) : 0};
}

/** Byte-wise equality. */
bool br_slice_eq(struct br_slice a, struct br_slice b);

/** Byte-wise equality with a NUL-terminated string. */
bool br_slice_eq_cstr(struct br_slice a, const char *s);

/** ASCII case-insensitive equality with a NUL-terminated string. */
bool br_slice_case_eq_cstr(struct br_slice a, const char *s);

/** True when a starts with the NUL-terminated prefix. */
bool br_slice_starts_with(struct br_slice a, const char *prefix);

/** a without leading and trailing spaces and tabs (OWS in RFC 9110). */
struct br_slice br_slice_trim(struct br_slice a);

/**
 * Parses a non-negative decimal integer that fills the whole slice (no sign, no spaces, no
 * leading '+'). Returns BR_OK, BR_ERR_PARSE for anything else, BR_ERR_RANGE above max.
 */
int br_slice_to_u64(struct br_slice a, unsigned long long max, unsigned long long *out);

/** Longest text br_fmt_i64 writes, NUL included. */
#define BR_FMT_I64_LEN 21

/** Writes v in decimal (NUL-terminated) into out; returns its length. No locale, no printf. */
size_t br_fmt_i64(long long v, char out[BR_FMT_I64_LEN]);

#endif
