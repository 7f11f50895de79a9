/* SPDX-License-Identifier: MIT */
/*
 * Growable byte buffer with a hard cap (STYLE.md rule 20, after curl's dynbuf): growing past
 * `max` fails with BR_ERR_LIMIT and leaves the contents untouched. The contents are always
 * NUL-terminated (the terminator is not counted in len) so they can be handed to C APIs.
 */
#ifndef BR_CORE_BUF_H
#define BR_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct br_buf {
    char *ptr;  /* owned; NULL until the first append */
    size_t len; /* bytes in use, excluding the NUL */
    size_t cap; /* bytes allocated */
    size_t max; /* cap on len in bytes */
};

/** Initialises an empty buffer that may hold at most max bytes. */
void br_buf_init(struct br_buf *b, size_t max);

/** Frees the storage; the buffer may be reused after br_buf_init. */
void br_buf_cleanup(struct br_buf *b);

/** Makes room for extra more bytes. BR_ERR_LIMIT past max, BR_ERR_NOMEM on failure. */
int br_buf_reserve(struct br_buf *b, size_t extra);

/** Appends n bytes. Errors as br_buf_reserve; on error nothing is appended. */
int br_buf_append(struct br_buf *b, const void *p, size_t n);

/** Appends a NUL-terminated string. */
int br_buf_append_cstr(struct br_buf *b, const char *s);

/** Appends printf-formatted text. */
int br_buf_printf(struct br_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** As br_buf_printf with a va_list. */
int br_buf_vprintf(struct br_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/** Drops the first n bytes (n <= len), keeping the rest. */
void br_buf_consume(struct br_buf *b, size_t n);

/** Empties the buffer, keeping its storage. */
void br_buf_reset(struct br_buf *b);

/** Takes ownership of the storage (caller frees with br_free) and leaves b empty. */
char *br_buf_steal(struct br_buf *b);

#endif
