/* SPDX-License-Identifier: MIT */
/*
 * Internals shared by the upstream client's front (upstream.c, which picks a backend per
 * call) and its two backends: libcurl multi on libuv (upstream_curl.c) and the native
 * HTTP/1.1 client (upstream_h1.c). Never included from outside src/upstream.
 */
#ifndef BR_UPSTREAM_INT_H
#define BR_UPSTREAM_INT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "upstream/upstream.h"

#define BR__UPSTREAM_DEFAULT_CONNECT_MS    5000u
#define BR__UPSTREAM_DEFAULT_FIRST_BYTE_MS 60000u
#define BR__UPSTREAM_DEFAULT_IDLE_MS       120000u
#define BR__UPSTREAM_DEFAULT_MAX_RESPONSE  ((size_t)64 << 20)
#define BR__UPSTREAM_MAX_HEAD_BYTES        ((size_t)64 << 10) /* header block of one response */
#define BR__UPSTREAM_MAX_HEADERS           128                /* fields handed to on_head */

enum br__upstream_kind {
    BR__UPSTREAM_KIND_CURL = 1,
    BR__UPSTREAM_KIND_H1 = 2,
};

/*
 * The first member of each backend's call struct: br_upstream_call_cancel dispatches on it.
 * Callers only ever see the pointer.
 */
struct br_upstream_call {
    uint8_t kind; /* enum br__upstream_kind */
};

/** Short fixed text for an error kind ("timed out waiting for a connection"). */
const char *br__upstream_describe(enum br_upstream_error e);

/* ---- libcurl backend (upstream_curl.c) ------------------------------------------------ */

struct br__upstream_curl;

/** As br_upstream_create; opts may be NULL. Caller destroys. */
int br__upstream_curl_create(uv_loop_t *loop, const struct br_upstream_opts *opts,
                             struct br__upstream_curl **out);
/** As br_upstream_destroy. NULL is a no-op. */
void br__upstream_curl_destroy(struct br__upstream_curl *u);
/** As br_upstream_call_start; `*out` is set on success. */
int br__upstream_curl_call_start(struct br__upstream_curl *u, const struct br_upstream_request *req,
                                 const struct br_upstream_callbacks *cb, void *user,
                                 br_upstream_call **out);
/** As br_upstream_call_cancel, for a call of kind CURL. */
void br__upstream_curl_call_cancel(br_upstream_call *c);
/** Calls in flight. */
size_t br__upstream_curl_active(const struct br__upstream_curl *u);

/* ---- native HTTP/1.1 backend (upstream_h1.c) ------------------------------------------ */

struct br__upstream_h1;

/** As br_upstream_create, for http:// URLs only; opts may be NULL. Caller destroys. */
int br__upstream_h1_create(uv_loop_t *loop, const struct br_upstream_opts *opts,
                           struct br__upstream_h1 **out);
/** As br_upstream_destroy. NULL is a no-op. */
void br__upstream_h1_destroy(struct br__upstream_h1 *u);
/** As br_upstream_call_start; BR_ERR_INVAL for a URL that is not plain http://host[:port]/. */
int br__upstream_h1_call_start(struct br__upstream_h1 *u, const struct br_upstream_request *req,
                               const struct br_upstream_callbacks *cb, void *user,
                               br_upstream_call **out);
/** As br_upstream_call_cancel, for a call of kind H1. */
void br__upstream_h1_call_cancel(br_upstream_call *c);
/** Calls in flight. */
size_t br__upstream_h1_active(const struct br__upstream_h1 *u);

#endif
