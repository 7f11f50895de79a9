/* SPDX-License-Identifier: MIT */
/*
 * Client authentication. Keys are never stored or compared in the clear: the presented key is
 * hashed with SHA-256 and compared with every configured hash using CRYPTO_memcmp, without
 * stopping at the first match, so timing reveals neither which key nor how much of it matched.
 * Error messages never echo the presented key.
 *
 * Virtual keys (src/keys) are looked up by the same hash after the configured keys: the hash
 * table finds the one candidate and the keys module confirms it with CRYPTO_memcmp. A revoked
 * virtual key answers 401 like an unknown one (with its own message).
 */
#include <openssl/crypto.h>
#include <string.h>

#include "api/api_int.h"

static struct br_slice presented_key(const br_http_request *req)
{
    const struct br_slice *h = br_http_request_header(req, "authorization");
    if (h) {
        struct br_slice v = *h;
        if (v.len > 7 && (memcmp(v.ptr, "Bearer ", 7) == 0 || memcmp(v.ptr, "bearer ", 7) == 0)) {
            return br_slice_trim(br_slice_make(v.ptr + 7, v.len - 7));
        }
        return br_slice_make(NULL, 0);
    }
    h = br_http_request_header(req, "x-api-key");
    return h ? br_slice_trim(*h) : br_slice_make(NULL, 0);
}

enum br_auth_result br__auth_check(const struct br_config *cfg, const br_http_request *req,
                                   bool admin, const char **key_id_out)
{
    *key_id_out = NULL;
    if (!cfg->has_master_key && cfg->n_keys == 0) {
        /* Auth is off: fine on loopback, warned about at start-up otherwise. Admin endpoints
         * stay closed without a master key. */
        return admin ? BR_AUTH_MISSING : BR_AUTH_OK;
    }
    struct br_slice key = presented_key(req);
    if (key.len == 0) {
        return BR_AUTH_MISSING;
    }
    unsigned char h[BR_CONFIG_KEY_HASH_LEN];
    br_config_hash_key(key.ptr, key.len, h);
    const char *match = NULL;
    if (cfg->has_master_key &&
        CRYPTO_memcmp(h, cfg->master_key_sha256, BR_CONFIG_KEY_HASH_LEN) == 0) {
        match = "master";
    }
    if (!admin) {
        for (size_t i = 0; i < cfg->n_keys; i++) {
            int eq = CRYPTO_memcmp(h, cfg->keys[i].sha256, BR_CONFIG_KEY_HASH_LEN) == 0;
            if (eq && !match) {
                match = cfg->keys[i].id;
            }
        }
    }
    if (!match) {
        return BR_AUTH_INVALID;
    }
    *key_id_out = match;
    return BR_AUTH_OK;
}

enum br_auth_result br__auth_client(struct br_gateway *g, const struct br_config *cfg,
                                    const br_http_request *req, const char **key_id_out,
                                    br_vkey **vkey_out)
{
    if (vkey_out) {
        *vkey_out = NULL;
    }
    if (!g->keys || br_keys_count(g->keys) == 0) {
        return br__auth_check(cfg, req, false, key_id_out);
    }
    *key_id_out = NULL;
    struct br_slice key = presented_key(req);
    if (key.len == 0) {
        return BR_AUTH_MISSING;
    }
    unsigned char h[BR_CONFIG_KEY_HASH_LEN];
    br_config_hash_key(key.ptr, key.len, h);
    const char *match = NULL;
    if (cfg->has_master_key &&
        CRYPTO_memcmp(h, cfg->master_key_sha256, BR_CONFIG_KEY_HASH_LEN) == 0) {
        match = "master";
    }
    for (size_t i = 0; i < cfg->n_keys; i++) {
        int eq = CRYPTO_memcmp(h, cfg->keys[i].sha256, BR_CONFIG_KEY_HASH_LEN) == 0;
        if (eq && !match) {
            match = cfg->keys[i].id;
        }
    }
    if (!match) {
        br_vkey *k = br_keys_find(g->keys, h);
        if (!k) {
            return BR_AUTH_INVALID;
        }
        if (br_keys_revoked(k)) {
            return BR_AUTH_REVOKED;
        }
        match = br_keys_id(k);
        if (vkey_out) {
            *vkey_out = k;
        }
    }
    *key_id_out = match;
    return BR_AUTH_OK;
}

void br__auth_fail(br_http_request *req, enum br_auth_result r, bool admin)
{
    if (admin && r == BR_AUTH_MISSING && !br_http_request_header(req, "authorization") &&
        !br_http_request_header(req, "x-api-key")) {
        br_http_respond_error(req, 401, "invalid_request_error", "missing_api_key", NULL,
                              "This endpoint needs the master key: send it as "
                              "'Authorization: Bearer <master key>' (auth.master_key in the "
                              "config; admin endpoints are closed when none is set).");
        return;
    }
    if (r == BR_AUTH_MISSING) {
        br_http_respond_error(req, 401, "invalid_request_error", "missing_api_key", NULL,
                              "You didn't provide an API key. Send it in the Authorization "
                              "header as 'Bearer <key>'.");
        return;
    }
    if (r == BR_AUTH_REVOKED) {
        br_http_respond_error(req, 401, "invalid_request_error", "invalid_api_key", NULL,
                              "This API key has been revoked.");
        return;
    }
    br_http_respond_error(req, 401, "invalid_request_error", "invalid_api_key", NULL,
                          admin ? "The key provided is not the master key."
                                : "Incorrect API key provided.");
}
