/* SPDX-License-Identifier: MIT */
/*
 * Upstream HTTP client front: one br_upstream per loop owns up to two backends and picks one
 * per call. With BR_UPSTREAM_BACKEND_AUTO, plain http:// URLs go to the native HTTP/1.1 client
 * (upstream_h1.c) and everything else (https://, URLs with user info) to libcurl
 * (upstream_curl.c); BR_UPSTREAM_BACKEND_CURL sends every call to libcurl. Each backend is
 * created on first use, so a gateway with only plain-HTTP upstreams never builds a curl multi
 * handle. Also home of the error names and texts both backends share.
 */
#include "upstream/upstream.h"

#include <curl/curl.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/err.h"
#include "upstream/upstream_int.h"

struct br_upstream {
    uv_loop_t *loop;
    struct br_upstream_opts opts; /* ca_file points at ca_file_copy */
    char *ca_file_copy;           /* owned */
    struct br__upstream_curl *curl;
    struct br__upstream_h1 *h1;
};

static const char *const error_names[] = {
#define BR__UPSTREAM_ERROR_NAME(name, text) text,
    BR_UPSTREAM_ERROR_MAP(BR__UPSTREAM_ERROR_NAME)
#undef BR__UPSTREAM_ERROR_NAME
};

const char *br_upstream_error_name(enum br_upstream_error e)
{
    if ((size_t)e >= sizeof(error_names) / sizeof(error_names[0])) {
        return "other";
    }
    return error_names[e];
}

const char *br__upstream_describe(enum br_upstream_error e)
{
    switch (e) {
    case BR_UPSTREAM_ERROR_TIMEOUT_CONNECT:
        return "timed out waiting for a connection";
    case BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE:
        return "timed out waiting for the first response byte";
    case BR_UPSTREAM_ERROR_TIMEOUT_IDLE:
        return "response stalled longer than the idle timeout";
    case BR_UPSTREAM_ERROR_TOO_LARGE:
        return "response exceeds the size limit";
    case BR_UPSTREAM_ERROR_PROTOCOL:
        return "invalid HTTP response";
    default:
        return br_upstream_error_name(e);
    }
}

int br_upstream_global_init(void)
{
    CURLcode cc = curl_global_init_mem(CURL_GLOBAL_DEFAULT, br_malloc, br_free, br_realloc,
                                       br_strdup, br_calloc);
    return cc == CURLE_OK ? BR_OK : (cc == CURLE_OUT_OF_MEMORY ? BR_ERR_NOMEM : BR_ERR_IO);
}

void br_upstream_global_cleanup(void)
{
    curl_global_cleanup();
}

int br_upstream_create(uv_loop_t *loop, const struct br_upstream_opts *opts, br_upstream **out)
{
    if (!loop || !out) {
        return BR_ERR_INVAL;
    }
    if (opts && opts->backend != BR_UPSTREAM_BACKEND_AUTO &&
        opts->backend != BR_UPSTREAM_BACKEND_CURL) {
        return BR_ERR_INVAL;
    }
    br_upstream *u = br_calloc(1, sizeof(*u));
    if (!u) {
        return BR_ERR_NOMEM;
    }
    int rc = BR_OK;
    u->loop = loop;
    if (opts) {
        u->opts = *opts;
        if (opts->ca_file) {
            u->ca_file_copy = br_strdup(opts->ca_file);
            if (!u->ca_file_copy) {
                rc = BR_ERR_NOMEM;
                goto fail_client;
            }
        }
    }
    u->opts.ca_file = u->ca_file_copy;
    /* The backend every call may use is made now, so that its set-up errors surface here. */
    if (u->opts.backend == BR_UPSTREAM_BACKEND_CURL) {
        rc = br__upstream_curl_create(loop, &u->opts, &u->curl);
    } else {
        rc = br__upstream_h1_create(loop, &u->opts, &u->h1);
    }
    if (rc != BR_OK) {
        goto fail_client;
    }
    *out = u;
    return BR_OK;

fail_client:
    br_free(u->ca_file_copy);
    br_free(u);
    return rc;
}

void br_upstream_destroy(br_upstream *u)
{
    if (!u) {
        return;
    }
    br__upstream_h1_destroy(u->h1);
    br__upstream_curl_destroy(u->curl);
    br_free(u->ca_file_copy);
    br_free(u);
}

/* A URL the native client takes: http:// with no user info (curl turns that into Basic auth). */
static bool native_url(const char *url)
{
    if (strncasecmp(url, "http://", 7) != 0) {
        return false;
    }
    size_t auth_len = strcspn(url + 7, "/?#");
    return memchr(url + 7, '@', auth_len) == NULL;
}

int br_upstream_call_start(br_upstream *u, const struct br_upstream_request *req,
                           const struct br_upstream_callbacks *cb, void *user,
                           br_upstream_call **out)
{
    if (!u || !req || !req->url || !cb || !cb->on_done) {
        return BR_ERR_INVAL;
    }
    if (u->opts.backend == BR_UPSTREAM_BACKEND_AUTO && native_url(req->url)) {
        return br__upstream_h1_call_start(u->h1, req, cb, user, out);
    }
    if (!u->curl) {
        int rc = br__upstream_curl_create(u->loop, &u->opts, &u->curl);
        if (rc != BR_OK) {
            return rc;
        }
    }
    return br__upstream_curl_call_start(u->curl, req, cb, user, out);
}

void br_upstream_call_cancel(br_upstream_call *c)
{
    if (!c) {
        return;
    }
    if (c->kind == BR__UPSTREAM_KIND_H1) {
        br__upstream_h1_call_cancel(c);
    } else {
        br__upstream_curl_call_cancel(c);
    }
}

size_t br_upstream_active(const br_upstream *u)
{
    if (!u) {
        return 0;
    }
    return br__upstream_h1_active(u->h1) + br__upstream_curl_active(u->curl);
}
