/* SPDX-License-Identifier: MIT */
/*
 * The config walker: checks the YAML tree against the schema (unknown keys are errors, so a
 * typo never silently falls back to a default), resolves secrets, hashes client keys and
 * builds the immutable snapshot. Everything a snapshot owns lives in one arena.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include "config/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_int.h"
#include "core/alloc.h"
#include "core/err.h"
#include "core/log.h"

#define MAX_FILE_BYTES (4u << 20)

/* Snapshot storage: the arena plus the secrets to wipe on free. */
struct storage {
    br_arena *arena;
    char **secrets;
    size_t n_secrets;
};

static int errf(struct br__config_loader *L, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

int br__config_verrf(struct br__config_loader *L, int line, const char *fmt, va_list ap)
{
    int k = snprintf(L->err, L->errlen, "%s:%d: ", L->name, line);
    if (k < 0 || (size_t)k >= L->errlen) {
        return BR_ERR_INVAL;
    }
    /* A message cut at errlen is still the right error. */
    (void)vsnprintf(L->err + k, L->errlen - (size_t)k, fmt, ap);
    return BR_ERR_INVAL;
}

static int errf(struct br__config_loader *L, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = br__config_verrf(L, line, fmt, ap);
    va_end(ap);
    return rc;
}

/* errno's text; strerror() is not thread-safe and a reload runs on a worker thread. */
static const char *errno_text(int e, char *buf, size_t n)
{
    if (strerror_r(e, buf, n) != 0) {
        (void)snprintf(buf, n, "errno %d", e);
    }
    return buf;
}

static int nomem(struct br__config_loader *L)
{
    (void)snprintf(L->err, L->errlen, "%s: out of memory", L->name);
    return BR_ERR_NOMEM;
}

/* ---------------------------------------------------------------- scalar parsers */

int br_config_parse_duration_ms(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (!s || *s < '0' || *s > '9') {
        return BR_ERR_PARSE;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) {
        return BR_ERR_RANGE;
    }
    unsigned long long mul;
    if (*end == '\0' || strcmp(end, "ms") == 0) {
        mul = 1;
    } else if (strcmp(end, "s") == 0) {
        mul = 1000;
    } else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0) {
        mul = 60000;
    } else if (strcmp(end, "h") == 0) {
        mul = 3600000;
    } else {
        return BR_ERR_PARSE;
    }
    if (v > (unsigned long long)INT64_MAX / mul) {
        return BR_ERR_RANGE;
    }
    *out = v * mul;
    return BR_OK;
}

int br_config_parse_size(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (!s || *s < '0' || *s > '9') {
        return BR_ERR_PARSE;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) {
        return BR_ERR_RANGE;
    }
    unsigned long long mul;
    if (*end == '\0' || strcmp(end, "B") == 0) {
        mul = 1;
    } else if (strcmp(end, "KiB") == 0 || strcmp(end, "KB") == 0 || strcmp(end, "k") == 0) {
        mul = 1024;
    } else if (strcmp(end, "MiB") == 0 || strcmp(end, "MB") == 0 || strcmp(end, "M") == 0) {
        mul = 1024ull * 1024;
    } else if (strcmp(end, "GiB") == 0 || strcmp(end, "GB") == 0 || strcmp(end, "G") == 0) {
        mul = 1024ull * 1024 * 1024;
    } else {
        return BR_ERR_PARSE;
    }
    if (v > (unsigned long long)INT64_MAX / mul) {
        return BR_ERR_RANGE;
    }
    *out = v * mul;
    return BR_OK;
}

void br_config_hash_key(const char *key, size_t n, unsigned char out[BR_CONFIG_KEY_HASH_LEN])
{
    unsigned int len = 0;
    if (!EVP_Digest(key, n, out, &len, EVP_sha256(), NULL) || len != BR_CONFIG_KEY_HASH_LEN) {
        /* Cannot happen with a working libcrypto; fail closed with a hash nobody matches. */
        memset(out, 0xff, BR_CONFIG_KEY_HASH_LEN);
    }
}

/* ---------------------------------------------------------------- tree helpers */

static const char *kind_name(const struct br_ynode *n)
{
    return n->kind == BR_YNODE_MAP ? "a mapping" : n->kind == BR_YNODE_SEQ ? "a list" : "a value";
}

static int want(struct br__config_loader *L, const struct br_ynode *n, enum br_ynode_kind kind,
                const char *what)
{
    if (n->kind != kind) {
        return errf(L, n->line, "%s: expected %s, got %s", what,
                    kind == BR_YNODE_MAP   ? "a mapping"
                    : kind == BR_YNODE_SEQ ? "a list"
                                           : "a value",
                    kind_name(n));
    }
    return BR_OK;
}

static int scalar(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                  const char **out)
{
    int rc = want(L, n, BR_YNODE_SCALAR, what);
    if (rc == BR_OK) {
        *out = n->value;
    }
    return rc;
}

static int nonempty(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                    const char **out)
{
    int rc = scalar(L, n, what, out);
    if (rc == BR_OK && (*out)[0] == '\0') {
        return errf(L, n->line, "%s: must not be empty", what);
    }
    return rc;
}

static int boolean(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                   bool *out)
{
    const char *s;
    int rc = scalar(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (strcmp(s, "true") == 0 || strcmp(s, "yes") == 0 || strcmp(s, "on") == 0) {
        *out = true;
    } else if (strcmp(s, "false") == 0 || strcmp(s, "no") == 0 || strcmp(s, "off") == 0) {
        *out = false;
    } else {
        return errf(L, n->line, "%s: expected true or false, got '%.60s'", what, s);
    }
    return BR_OK;
}

static int integer(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                   int64_t min, int64_t max, int64_t *out)
{
    const char *s;
    int rc = scalar(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    unsigned long long v;
    if (br_slice_to_u64(br_slice_from_cstr(s), (unsigned long long)INT64_MAX, &v) != BR_OK ||
        (int64_t)v < min || (int64_t)v > max) {
        return errf(L, n->line, "%s: expected an integer from %lld to %lld, got '%.60s'", what,
                    (long long)min, (long long)max, s);
    }
    *out = (int64_t)v;
    return BR_OK;
}

static int duration(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                    uint64_t min_ms, uint64_t *out)
{
    const char *s;
    int rc = scalar(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (br_config_parse_duration_ms(s, out) != BR_OK || *out < min_ms) {
        return errf(
            L, n->line,
            "%s: expected a duration such as 500ms, 10s or 2m (at least %llu ms), got '%.60s'",
            what, (unsigned long long)min_ms, s);
    }
    return BR_OK;
}

static int size(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                size_t *out)
{
    const char *s;
    uint64_t v;
    int rc = scalar(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (br_config_parse_size(s, &v) != BR_OK || v == 0 || v > (1ull << 32)) {
        return errf(L, n->line,
                    "%s: expected a size such as 8KiB or 16MiB (1 B to 4 GiB), got '%.60s'", what,
                    s);
    }
    *out = (size_t)v;
    return BR_OK;
}

static int unknown_key(struct br__config_loader *L, const struct br_ynode *key, const char *section,
                       const char *allowed)
{
    return errf(L, key->line, "%s: unknown key '%.60s' (allowed: %s)", section, key->value,
                allowed);
}

static char *dup(struct br__config_loader *L, const char *s)
{
    return br_arena_strndup(L->arena, s, strlen(s));
}

/* A non-empty string field copied into the snapshot. */
static int set_str(struct br__config_loader *L, const struct br_ynode *v, const char *what,
                   const char **dst)
{
    const char *s;
    int rc = nonempty(L, v, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    *dst = dup(L, s);
    return *dst ? BR_OK : nomem(L);
}

/* Non-static names of the helpers above, for config_route.c. */
int br__config_want(struct br__config_loader *L, const struct br_ynode *n, enum br_ynode_kind kind,
                    const char *what)
{
    return want(L, n, kind, what);
}

int br__config_scalar(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                      const char **out)
{
    return scalar(L, n, what, out);
}

int br__config_nonempty(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                        const char **out)
{
    return nonempty(L, n, what, out);
}

int br__config_boolean(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                       bool *out)
{
    return boolean(L, n, what, out);
}

int br__config_integer(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                       int64_t min, int64_t max, int64_t *out)
{
    return integer(L, n, what, min, max, out);
}

int br__config_duration(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                        uint64_t min_ms, uint64_t *out)
{
    return duration(L, n, what, min_ms, out);
}

int br__config_unknown_key(struct br__config_loader *L, const struct br_ynode *key,
                           const char *section, const char *allowed)
{
    return unknown_key(L, key, section, allowed);
}

int br__config_nomem(struct br__config_loader *L)
{
    return nomem(L);
}

/* ---------------------------------------------------------------- secrets */

static int remember_secret(struct br__config_loader *L, char *secret)
{
    struct storage *st = L->cfg->priv;
    char **n = br_arena_alloc(L->arena, (st->n_secrets + 1) * sizeof(*n));
    if (!n) {
        return BR_ERR_NOMEM;
    }
    if (st->n_secrets) {
        memcpy(n, st->secrets, st->n_secrets * sizeof(*n));
    }
    n[st->n_secrets++] = secret;
    st->secrets = n;
    return BR_OK;
}

/* Resolves env:NAME, file:PATH or a literal into arena memory (remembered for wiping). */
static int resolve_secret(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                          char **out)
{
    const char *ref;
    int rc = nonempty(L, n, what, &ref);
    if (rc != BR_OK) {
        return rc;
    }
    char *val = NULL;
    if (strncmp(ref, "env:", 4) == 0) {
        /* NOLINTNEXTLINE(concurrency-mt-unsafe): brigade never modifies its environment */
        const char *v = getenv(ref + 4);
        if (!v || !*v) {
            return errf(L, n->line, "%s: environment variable %.80s is not set", what, ref + 4);
        }
        val = dup(L, v);
    } else if (strncmp(ref, "file:", 5) == 0) {
        FILE *f = fopen(ref + 5, "rb");
        if (!f) {
            char why[128];
            return errf(L, n->line, "%s: cannot read %.200s: %s", what, ref + 5,
                        errno_text(errno, why, sizeof(why)));
        }
        char line[4096];
        size_t k = fread(line, 1, sizeof(line) - 1, f);
        (void)fclose(f); /* read-only: nothing to flush */
        line[k] = '\0';
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) {
            return errf(L, n->line, "%s: %.200s is empty", what, ref + 5);
        }
        val = dup(L, line);
        memset(line, 0, sizeof(line));
    } else {
        br_log(BR_LOG_WARN, NULL,
               "event=config_warning file=%s line=%d msg=\"%s is written in the config file; "
               "prefer env:NAME or file:PATH\"",
               L->name, n->line, what);
        val = dup(L, ref);
    }
    if (!val || remember_secret(L, val) != BR_OK) {
        return nomem(L);
    }
    *out = val;
    return BR_OK;
}

static int parse_hex_hash(const char *s, unsigned char out[BR_CONFIG_KEY_HASH_LEN])
{
    if (strlen(s) != 2 * (size_t)BR_CONFIG_KEY_HASH_LEN) {
        return BR_ERR_PARSE;
    }
    for (size_t i = 0; i < BR_CONFIG_KEY_HASH_LEN; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = s[2 * i + (size_t)j];
            unsigned d;
            if (c >= '0' && c <= '9') {
                d = (unsigned)(c - '0');
            } else if (c >= 'a' && c <= 'f') {
                d = (unsigned)(c - 'a' + 10);
            } else if (c >= 'A' && c <= 'F') {
                d = (unsigned)(c - 'A' + 10);
            } else {
                return BR_ERR_PARSE;
            }
            v = v * 16 + d;
        }
        out[i] = (unsigned char)v;
    }
    return BR_OK;
}

/* A key given as `key: <secret ref>` (hashed now) or `sha256: <hex>`. */
static int key_hash(struct br__config_loader *L, const struct br_ynode *n, bool is_hash,
                    const char *what, unsigned char out[BR_CONFIG_KEY_HASH_LEN])
{
    if (is_hash) {
        const char *s;
        int rc = nonempty(L, n, what, &s);
        if (rc == BR_OK && parse_hex_hash(s, out) != BR_OK) {
            return errf(L, n->line, "%s: expected 64 hex digits (SHA-256 of the key)", what);
        }
        return rc;
    }
    char *secret;
    int rc = resolve_secret(L, n, what, &secret);
    if (rc == BR_OK) {
        br_config_hash_key(secret, strlen(secret), out);
    }
    return rc;
}

/* ---------------------------------------------------------------- sections */

static int parse_listen(struct br__config_loader *L, const struct br_ynode *n)
{
    const char *s;
    int rc = nonempty(L, n, "server.listen", &s);
    if (rc != BR_OK) {
        return rc;
    }
    const char *colon = strrchr(s, ':');
    if (!colon) {
        return errf(L, n->line, "server.listen: expected HOST:PORT, got '%.80s'", s);
    }
    char host[INET6_ADDRSTRLEN + 2];
    size_t hl = (size_t)(colon - s);
    if (hl >= sizeof(host)) {
        return errf(L, n->line, "server.listen: host too long");
    }
    memcpy(host, s, hl);
    host[hl] = '\0';
    char *h = host;
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        h = host + 1;
    }
    if (strcmp(h, "localhost") == 0) {
        h = "127.0.0.1";
    } else if (h[0] == '\0' || strcmp(h, "*") == 0) {
        h = "0.0.0.0";
    }
    unsigned char addr[16];
    if (inet_pton(AF_INET, h, addr) != 1 && inet_pton(AF_INET6, h, addr) != 1) {
        return errf(L, n->line, "server.listen: '%.80s' is not a numeric IPv4/IPv6 address", h);
    }
    unsigned long long port;
    if (br_slice_to_u64(br_slice_from_cstr(colon + 1), 65535, &port) != BR_OK) {
        return errf(L, n->line, "server.listen: bad port '%.20s'", colon + 1);
    }
    L->cfg->listen_host = dup(L, h);
    L->cfg->listen_port = (uint16_t)port;
    return L->cfg->listen_host ? BR_OK : nomem(L);
}

static int parse_limits(struct br__config_loader *L, const struct br_ynode *m)
{
    int rc = want(L, m, BR_YNODE_MAP, "server.limits");
    struct br_config *c = L->cfg;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        if (strcmp(k->value, "request_line") == 0) {
            rc = size(L, v, "server.limits.request_line", &c->request_line_bytes);
        } else if (strcmp(k->value, "header_block") == 0) {
            rc = size(L, v, "server.limits.header_block", &c->header_bytes);
        } else if (strcmp(k->value, "header_fields") == 0) {
            int64_t x;
            rc = integer(L, v, "server.limits.header_fields", 1, 10000, &x);
            c->header_fields = (size_t)x;
        } else if (strcmp(k->value, "body") == 0) {
            rc = size(L, v, "server.limits.body", &c->body_bytes);
        } else if (strcmp(k->value, "stream_buffer") == 0) {
            rc = size(L, v, "server.limits.stream_buffer", &c->stream_buffer_bytes);
        } else if (strcmp(k->value, "connections") == 0) {
            int64_t x;
            rc = integer(L, v, "server.limits.connections", 0, 10000000, &x);
            c->max_connections = (size_t)x;
        } else {
            rc = unknown_key(L, k, "server.limits",
                             "request_line, header_block, header_fields, body, stream_buffer, "
                             "connections");
        }
    }
    return rc;
}

static int parse_timeouts(struct br__config_loader *L, const struct br_ynode *m)
{
    int rc = want(L, m, BR_YNODE_MAP, "server.timeouts");
    struct br_config *c = L->cfg;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        if (strcmp(k->value, "header") == 0) {
            rc = duration(L, v, "server.timeouts.header", 1, &c->header_timeout_ms);
        } else if (strcmp(k->value, "body_idle") == 0) {
            rc = duration(L, v, "server.timeouts.body_idle", 1, &c->body_idle_timeout_ms);
        } else if (strcmp(k->value, "keepalive") == 0) {
            rc = duration(L, v, "server.timeouts.keepalive", 1, &c->keepalive_timeout_ms);
        } else if (strcmp(k->value, "drain") == 0) {
            rc = duration(L, v, "server.timeouts.drain", 0, &c->drain_timeout_ms);
        } else {
            rc = unknown_key(L, k, "server.timeouts", "header, body_idle, keepalive, drain");
        }
    }
    return rc;
}

static int parse_server(struct br__config_loader *L, const struct br_ynode *m)
{
    int rc = want(L, m, BR_YNODE_MAP, "server");
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        if (strcmp(k->value, "listen") == 0) {
            rc = parse_listen(L, v);
        } else if (strcmp(k->value, "workers") == 0) {
            int64_t x = 0;
            rc = integer(L, v, "server.workers", 0, 256, &x);
            L->cfg->workers = (unsigned)x;
        } else if (strcmp(k->value, "limits") == 0) {
            rc = parse_limits(L, v);
        } else if (strcmp(k->value, "timeouts") == 0) {
            rc = parse_timeouts(L, v);
        } else if (strcmp(k->value, "log_level") == 0) {
            const char *s;
            enum br_log_level lvl;
            rc = scalar(L, v, "server.log_level", &s);
            if (rc == BR_OK && br_log_level_parse(s, &lvl) != BR_OK) {
                rc = errf(L, v->line, "server.log_level: expected error, warn, info or debug");
            }
            L->cfg->log_level = rc == BR_OK ? dup(L, s) : NULL;
        } else {
            rc = unknown_key(L, k, "server", "listen, workers, limits, timeouts, log_level");
        }
    }
    return rc;
}

static int parse_key_entry(struct br__config_loader *L, const struct br_ynode *m,
                           struct br_api_key_cfg *out, size_t idx)
{
    char what[64];
    (void)snprintf(what, sizeof(what), "auth.keys[%zu]", idx); /* fits: 10 + 20 digits */
    int rc = want(L, m, BR_YNODE_MAP, what);
    bool have_key = false;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        if (strcmp(k->value, "id") == 0) {
            const char *s;
            rc = nonempty(L, v, what, &s);
            if (rc == BR_OK && strlen(s) > 64) {
                rc = errf(L, v->line, "%s.id: at most 64 characters", what);
            }
            out->id = rc == BR_OK ? dup(L, s) : NULL;
        } else if (strcmp(k->value, "key") == 0 || strcmp(k->value, "sha256") == 0) {
            if (have_key) {
                rc = errf(L, k->line, "%s: give either key or sha256, not both", what);
            } else {
                rc = key_hash(L, v, k->value[0] == 's', what, out->sha256);
                have_key = true;
            }
        } else {
            rc = unknown_key(L, k, what, "id, key, sha256");
        }
    }
    if (rc == BR_OK && (!out->id || !have_key)) {
        rc = errf(L, m->line, "%s: needs an id and a key (or sha256)", what);
    }
    return rc;
}

/* auth.key_store: a path (relative to the config's folder) or `off`. */
static int parse_key_store(struct br__config_loader *L, const struct br_ynode *v)
{
    struct br_config *c = L->cfg;
    const char *s;
    int rc = nonempty(L, v, "auth.key_store", &s);
    if (rc != BR_OK) {
        return rc;
    }
    L->key_store_set = true;
    if (strcmp(s, "off") == 0 && !v->quoted) {
        c->key_store_path = NULL;
    } else if (s[0] != '/' && L->base_dir) {
        c->key_store_path = br_arena_sprintf(L->arena, "%s/%s", L->base_dir, s);
    } else {
        c->key_store_path = dup(L, s);
    }
    return c->key_store_path || strcmp(s, "off") == 0 ? BR_OK : nomem(L);
}

static int parse_auth(struct br__config_loader *L, const struct br_ynode *m)
{
    int rc = want(L, m, BR_YNODE_MAP, "auth");
    struct br_config *c = L->cfg;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        if (strcmp(k->value, "master_key") == 0 || strcmp(k->value, "master_key_sha256") == 0) {
            rc = key_hash(L, v, strchr(k->value, '2') != NULL, "auth.master_key",
                          c->master_key_sha256);
            c->has_master_key = rc == BR_OK;
        } else if (strcmp(k->value, "keys") == 0) {
            rc = want(L, v, BR_YNODE_SEQ, "auth.keys");
            if (rc != BR_OK) {
                break;
            }
            struct br_api_key_cfg *keys = br_arena_calloc(L->arena, v->n + 1, sizeof(*keys));
            if (!keys) {
                return nomem(L);
            }
            for (size_t j = 0; rc == BR_OK && j < v->n; j++) {
                rc = parse_key_entry(L, v->items[j], &keys[j], j);
                for (size_t q = 0; rc == BR_OK && q < j; q++) {
                    if (strcmp(keys[q].id, keys[j].id) == 0) {
                        rc = errf(L, v->items[j]->line, "auth.keys: duplicate id '%s'", keys[j].id);
                    }
                }
            }
            c->keys = keys;
            c->n_keys = v->n;
        } else if (strcmp(k->value, "key_store") == 0) {
            rc = parse_key_store(L, v);
        } else {
            rc = unknown_key(L, k, "auth", "master_key, master_key_sha256, keys, key_store");
        }
    }
    return rc;
}

static int parse_log(struct br__config_loader *L, const struct br_ynode *m)
{
    int rc = want(L, m, BR_YNODE_MAP, "log");
    struct br_config *c = L->cfg;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        int64_t x = 0;
        if (strcmp(k->value, "path") == 0) {
            const char *s;
            rc = nonempty(L, v, "log.path", &s);
            if (rc == BR_OK && strcmp(s, "off") == 0 && !v->quoted) {
                c->log_path = NULL;
            } else if (rc == BR_OK && s[0] != '/' && L->base_dir) {
                c->log_path = br_arena_sprintf(L->arena, "%s/%s", L->base_dir, s);
            } else if (rc == BR_OK) {
                c->log_path = dup(L, s);
            }
        } else if (strcmp(k->value, "queue") == 0) {
            rc = integer(L, v, "log.queue", 1, 1 << 24, &x);
            c->log_queue = (size_t)x;
        } else if (strcmp(k->value, "batch") == 0) {
            rc = integer(L, v, "log.batch", 1, 100000, &x);
            c->log_batch = (size_t)x;
        } else if (strcmp(k->value, "flush") == 0) {
            uint64_t ms = 0;
            rc = duration(L, v, "log.flush", 1, &ms);
            c->log_flush_ms = (uint32_t)(ms > 60000 ? 60000 : ms);
        } else if (strcmp(k->value, "on_full") == 0) {
            const char *s;
            rc = scalar(L, v, "log.on_full", &s);
            if (rc == BR_OK && strcmp(s, "reject") == 0) {
                c->log_on_full = BR_LOG_FULL_REJECT;
            } else if (rc == BR_OK && strcmp(s, "drop") == 0) {
                c->log_on_full = BR_LOG_FULL_DROP;
            } else if (rc == BR_OK) {
                rc = errf(L, v->line, "log.on_full: expected reject or drop");
            }
        } else if (strcmp(k->value, "bodies") == 0) {
            rc = boolean(L, v, "log.bodies", &c->log_bodies);
        } else if (strcmp(k->value, "body_max") == 0) {
            rc = size(L, v, "log.body_max", &c->log_body_max_bytes);
        } else {
            rc = unknown_key(L, k, "log", "path, queue, batch, flush, on_full, bodies, body_max");
        }
    }
    return rc;
}

static int parse_upstream(struct br__config_loader *L, const struct br_ynode *m)
{
    int rc = want(L, m, BR_YNODE_MAP, "upstream");
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        if (strcmp(k->value, "client") == 0) {
            const char *s;
            rc = scalar(L, v, "upstream.client", &s);
            if (rc == BR_OK && strcmp(s, "curl") == 0) {
                L->cfg->upstream_force_curl = true;
            } else if (rc == BR_OK && strcmp(s, "auto") == 0) {
                L->cfg->upstream_force_curl = false;
            } else if (rc == BR_OK) {
                rc = errf(L, v->line, "upstream.client: expected auto or curl");
            }
        } else {
            rc = unknown_key(L, k, "upstream", "client");
        }
    }
    return rc;
}

static int parse_metrics(struct br__config_loader *L, const struct br_ynode *m)
{
    int rc = want(L, m, BR_YNODE_MAP, "metrics");
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        if (strcmp(k->value, "require_key") == 0) {
            rc = boolean(L, m->items[i + 1], "metrics.require_key", &L->cfg->metrics_require_key);
        } else {
            rc = unknown_key(L, k, "metrics", "require_key");
        }
    }
    return rc;
}

static int parse_price(struct br__config_loader *L, const struct br_ynode *m, const char *what,
                       struct br_price *p)
{
    int rc = want(L, m, BR_YNODE_MAP, what);
    bool in = false;
    bool outp = false;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        int64_t *dst;
        if (strcmp(k->value, "input") == 0) {
            dst = &p->input_nano_usd_per_mtok;
            in = true;
        } else if (strcmp(k->value, "output") == 0) {
            dst = &p->output_nano_usd_per_mtok;
            outp = true;
        } else if (strcmp(k->value, "cached_input") == 0) {
            dst = &p->cached_input_nano_usd_per_mtok;
        } else {
            rc = unknown_key(L, k, what, "input, output, cached_input (USD per million tokens)");
            break;
        }
        const char *s;
        rc = scalar(L, v, what, &s);
        if (rc == BR_OK && br_cost_parse_usd(s, dst) != BR_OK) {
            rc = errf(L, v->line,
                      "%s.%s: expected a USD amount per million tokens such as 0.15, got '%.40s'",
                      what, k->value, s);
        }
    }
    if (rc == BR_OK && (!in || !outp)) {
        rc = errf(L, m->line, "%s: needs both input and output (USD per million tokens)", what);
    }
    return rc;
}

static int parse_caps(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                      unsigned *out)
{
    int rc = want(L, n, BR_YNODE_SEQ, what);
    for (size_t i = 0; rc == BR_OK && i < n->n; i++) {
        const char *s;
        rc = scalar(L, n->items[i], what, &s);
        if (rc != BR_OK) {
            break;
        }
        if (strcmp(s, "tools") == 0) {
            *out |= BR_MODEL_CAP_TOOLS;
        } else if (strcmp(s, "json_mode") == 0) {
            *out |= BR_MODEL_CAP_JSON_MODE;
        } else if (strcmp(s, "vision") == 0) {
            *out |= BR_MODEL_CAP_VISION;
        } else {
            rc = errf(L, n->items[i]->line,
                      "%s: unknown capability '%.40s' (tools, json_mode, vision)", what, s);
        }
    }
    return rc;
}

int br__config_caps(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                    unsigned *out)
{
    return parse_caps(L, n, what, out);
}

static int parse_model_timeouts(struct br__config_loader *L, const struct br_ynode *m,
                                const char *what, struct br_model_cfg *mc)
{
    int rc = want(L, m, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        uint64_t ms = 0;
        uint32_t *dst;
        if (strcmp(k->value, "connect") == 0) {
            dst = &mc->connect_timeout_ms;
        } else if (strcmp(k->value, "first_byte") == 0) {
            dst = &mc->first_byte_timeout_ms;
        } else if (strcmp(k->value, "idle") == 0) {
            dst = &mc->idle_timeout_ms;
        } else {
            rc = unknown_key(L, k, what, "connect, first_byte, idle");
            break;
        }
        rc = duration(L, m->items[i + 1], what, 1, &ms);
        *dst = (uint32_t)(ms > 86400000u ? 86400000u : ms);
    }
    return rc;
}

static int parse_headers(struct br__config_loader *L, const struct br_ynode *m, const char *what,
                         struct br_model_cfg *mc)
{
    int rc = want(L, m, BR_YNODE_MAP, what);
    if (rc != BR_OK) {
        return rc;
    }
    const char **lines = br_arena_calloc(L->arena, m->n / 2 + 1, sizeof(*lines));
    if (!lines) {
        return nomem(L);
    }
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const char *name = m->items[i]->value;
        const char *value;
        rc = scalar(L, m->items[i + 1], what, &value);
        if (rc != BR_OK) {
            break;
        }
        for (const char *p = name; *p; p++) {
            unsigned char ch = (unsigned char)*p;
            if (ch <= 32 || ch >= 127 || ch == ':') {
                return errf(L, m->items[i]->line, "%s: bad header name '%.60s'", what, name);
            }
        }
        if (strpbrk(value, "\r\n")) {
            return errf(L, m->items[i]->line, "%s: header value contains a line break", what);
        }
        lines[i / 2] = br_arena_sprintf(L->arena, "%s: %s", name, value);
        if (!lines[i / 2]) {
            return nomem(L);
        }
    }
    mc->extra_headers = lines;
    mc->n_extra_headers = m->n / 2;
    return rc;
}

static int parse_replay(struct br__config_loader *L, const struct br_ynode *m, const char *what,
                        struct br_model_cfg *mc)
{
    int rc = want(L, m, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        const char *s;
        rc = nonempty(L, v, what, &s);
        if (rc != BR_OK) {
            break;
        }
        if (strcmp(k->value, "file") == 0) {
            if (s[0] == '/' || !L->base_dir) {
                mc->replay_file = dup(L, s);
            } else {
                mc->replay_file = br_arena_sprintf(L->arena, "%s/%s", L->base_dir, s);
            }
            rc = mc->replay_file ? BR_OK : nomem(L);
        } else if (strcmp(k->value, "prompt") == 0) {
            rc = set_str(L, v, what, &mc->replay_prompt_field);
        } else if (strcmp(k->value, "response") == 0) {
            rc = set_str(L, v, what, &mc->replay_response_field);
        } else {
            rc = unknown_key(L, k, what, "file, prompt, response");
        }
    }
    if (rc == BR_OK && !mc->replay_file) {
        rc = errf(L, m->line, "%s: needs file", what);
    }
    return rc;
}

/* A path as written, or resolved against the config file's folder when relative. */
static const char *config_path(struct br__config_loader *L, const char *s)
{
    if (s[0] == '/' || !L->base_dir) {
        return dup(L, s);
    }
    return br_arena_sprintf(L->arena, "%s/%s", L->base_dir, s);
}

static int local_int(struct br__config_loader *L, const struct br_ynode *v, const char *what,
                     int64_t min, int64_t max, int *out)
{
    int64_t n = 0;
    int rc = integer(L, v, what, min, max, &n);
    if (rc == BR_OK) {
        *out = (int)n;
    }
    return rc;
}

static int lora_scale(struct br__config_loader *L, const struct br_ynode *v, const char *what,
                      double *out)
{
    const char *s;
    int rc = nonempty(L, v, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    char *end = NULL;
    double scale = strtod(s, &end);
    if (!end || *end || !(scale >= -16 && scale <= 16)) {
        return errf(L, v->line, "%s: expected a number from -16 to 16, got '%.60s'", what, s);
    }
    *out = scale;
    return BR_OK;
}

/* An adapter name: 1..64 of [A-Za-z0-9._-] (it becomes part of a model name and a URL path). */
bool br_config_adapter_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > BR_CONFIG_ADAPTER_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* One `adapters:` entry: NAME: PATH or NAME: {path: PATH, scale: S}. */
static int parse_adapter(struct br__config_loader *L, const struct br_ynode *k,
                         const struct br_ynode *v, const char *what, const char **path,
                         double *scale)
{
    if (!br_config_adapter_name_ok(k->value, strlen(k->value))) {
        return errf(L, k->line,
                    "%s.adapters: '%.60s' is not an adapter name (1-64 of A-Z a-z 0-9 . _ -)", what,
                    k->value);
    }
    char sub[160];
    (void)snprintf(sub, sizeof(sub), "%.80s.adapters.%.64s", what, k->value);
    const char *s = NULL;
    *scale = 1.0;
    if (v->kind != BR_YNODE_MAP) {
        int rc = nonempty(L, v, sub, &s);
        if (rc != BR_OK) {
            return rc;
        }
    }
    for (size_t i = 0; v->kind == BR_YNODE_MAP && i < v->n; i += 2) {
        const struct br_ynode *fk = v->items[i];
        const struct br_ynode *fv = v->items[i + 1];
        int rc;
        if (strcmp(fk->value, "path") == 0) {
            rc = nonempty(L, fv, sub, &s);
        } else if (strcmp(fk->value, "scale") == 0) {
            rc = lora_scale(L, fv, sub, scale);
        } else {
            rc = unknown_key(L, fk, sub, "path, scale");
        }
        if (rc != BR_OK) {
            return rc;
        }
    }
    if (!s) {
        return errf(L, v->line, "%s: needs path (a LoRA adapter in llama.cpp's GGUF format)", sub);
    }
    *path = config_path(L, s);
    return *path ? BR_OK : nomem(L);
}

static int parse_adapters(struct br__config_loader *L, const struct br_ynode *v, const char *what,
                          struct br_model_cfg *mc)
{
    char sub[160];
    (void)snprintf(sub, sizeof(sub), "%s.adapters", what);
    int rc = want(L, v, BR_YNODE_MAP, sub);
    size_t n = v->n / 2;
    if (rc != BR_OK || n == 0) {
        return rc;
    }
    if (n > BR_CONFIG_ADAPTERS_MAX) {
        return errf(L, v->line, "%s.adapters: at most %d adapters per model", what,
                    BR_CONFIG_ADAPTERS_MAX);
    }
    const char **names = br_arena_calloc(L->arena, n, sizeof(*names));
    const char **paths = br_arena_calloc(L->arena, n, sizeof(*paths));
    double *scales = br_arena_calloc(L->arena, n, sizeof(*scales));
    if (!names || !paths || !scales) {
        return nomem(L);
    }
    for (size_t i = 0; rc == BR_OK && i < n; i++) {
        const struct br_ynode *k = v->items[2 * i];
        for (size_t j = 0; j < i; j++) {
            if (strcmp(names[j], k->value) == 0) {
                return errf(L, k->line, "%s.adapters: '%.60s' is named twice", what, k->value);
            }
        }
        names[i] = k->value;
        rc = parse_adapter(L, k, v->items[2 * i + 1], what, &paths[i], &scales[i]);
    }
    mc->local_adapter_names = names;
    mc->local_adapter_paths = paths;
    mc->local_adapter_scales = scales;
    mc->n_local_adapters = n;
    return rc;
}

static int parse_local_field(struct br__config_loader *L, const struct br_ynode *k,
                             const struct br_ynode *v, const char *what, struct br_model_cfg *mc)
{
    const char *s;
    if (strcmp(k->value, "adapters") == 0) {
        return parse_adapters(L, v, what, mc);
    }
    if (strcmp(k->value, "lora_scale") == 0) {
        char sub[160];
        (void)snprintf(sub, sizeof(sub), "%s.lora_scale", what);
        return lora_scale(L, v, sub, &mc->local_lora_scale);
    }
    if (strcmp(k->value, "threads") == 0) {
        return local_int(L, v, what, 1, 64, &mc->local_threads);
    }
    if (strcmp(k->value, "context") == 0) {
        return local_int(L, v, what, 1, 1 << 20, &mc->local_context);
    }
    if (strcmp(k->value, "queue") == 0) {
        return local_int(L, v, what, 0, 100000, &mc->local_queue);
    }
    int rc = nonempty(L, v, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (strcmp(k->value, "model") == 0) {
        mc->local_model = config_path(L, s);
        return mc->local_model ? BR_OK : nomem(L);
    }
    if (strcmp(k->value, "tokenizer") == 0) {
        mc->local_tokenizer = config_path(L, s);
        return mc->local_tokenizer ? BR_OK : nomem(L);
    }
    if (strcmp(k->value, "lora") == 0) {
        mc->local_lora = config_path(L, s);
        return mc->local_lora ? BR_OK : nomem(L);
    }
    if (strcmp(k->value, "template") == 0) {
        if (strcmp(s, "raw") != 0 && strcmp(s, "simple") != 0) {
            return errf(L, v->line, "%s.template: expected raw or simple, got '%.60s'", what, s);
        }
        return set_str(L, v, what, &mc->local_template);
    }
    return unknown_key(L, k, what,
                       "model, tokenizer, threads, context, queue, template, lora, lora_scale, "
                       "adapters");
}

static int parse_local(struct br__config_loader *L, const struct br_ynode *m, const char *what,
                       struct br_model_cfg *mc)
{
    int rc = want(L, m, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        rc = parse_local_field(L, m->items[i], m->items[i + 1], what, mc);
    }
    if (rc == BR_OK && !mc->local_model) {
        rc = errf(L, m->line, "%s: needs model (a GGUF or llama2.c .bin file)", what);
    }
    return rc;
}

static int parse_base_url(struct br__config_loader *L, const struct br_ynode *v, const char *what,
                          struct br_model_cfg *mc)
{
    const char *s;
    int rc = nonempty(L, v, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0) {
        return errf(L, v->line, "%s: must start with http:// or https://", what);
    }
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/') {
        n--;
    }
    mc->base_url = br_arena_strndup(L->arena, s, n);
    return mc->base_url ? BR_OK : nomem(L);
}

static int parse_api_key(struct br__config_loader *L, const struct br_ynode *v, const char *what,
                         struct br_model_cfg *mc)
{
    char *secret = NULL;
    int rc = resolve_secret(L, v, what, &secret);
    if (rc != BR_OK) {
        return rc;
    }
    mc->api_key = secret;
    if (strncmp(v->value, "env:", 4) == 0 || strncmp(v->value, "file:", 5) == 0) {
        mc->api_key_ref = dup(L, v->value);
    } else {
        mc->api_key_ref = "(literal)";
    }
    return mc->api_key_ref ? BR_OK : nomem(L);
}

int br__config_model_base_url(struct br__config_loader *L, const struct br_ynode *v,
                              const char *what, struct br_model_cfg *mc)
{
    return parse_base_url(L, v, what, mc);
}

int br__config_model_api_key(struct br__config_loader *L, const struct br_ynode *v,
                             const char *what, struct br_model_cfg *mc)
{
    return parse_api_key(L, v, what, mc);
}

void *br__config_alloc(struct br__config_loader *L, size_t n)
{
    return br_arena_calloc(L->arena, 1, n);
}

char *br__config_sprintf(struct br__config_loader *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[512];
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : br_arena_strndup(L->arena, buf, strlen(buf));
}

/* Where a model's deployments: and fallbacks: nodes wait until they can be parsed. */
struct model_later {
    const struct br_ynode *deployments;
    const struct br_ynode *fallbacks;
};

static int parse_model_field(struct br__config_loader *L, const struct br_ynode *k,
                             const struct br_ynode *v, const char *what, struct br_model_cfg *mc,
                             struct model_later *later)
{
    char sub[96];
    /* A label for messages; a long unknown key is cut, which is fine. */
    (void)snprintf(sub, sizeof(sub), "%s.%s", what, k->value);
    if (strcmp(k->value, "name") == 0) {
        return set_str(L, v, sub, &mc->name);
    }
    if (strcmp(k->value, "provider") == 0) {
        return set_str(L, v, sub, &mc->provider);
    }
    if (strcmp(k->value, "model") == 0) {
        return set_str(L, v, sub, &mc->upstream_model);
    }
    if (strcmp(k->value, "base_url") == 0) {
        return parse_base_url(L, v, sub, mc);
    }
    if (strcmp(k->value, "api_key") == 0) {
        return parse_api_key(L, v, sub, mc);
    }
    if (strcmp(k->value, "replay") == 0) {
        return parse_replay(L, v, sub, mc);
    }
    if (strcmp(k->value, "local") == 0) {
        return parse_local(L, v, sub, mc);
    }
    if (strcmp(k->value, "price") == 0) {
        return parse_price(L, v, sub, &mc->price);
    }
    if (strcmp(k->value, "context_window") == 0) {
        return integer(L, v, sub, 1, 100000000, &mc->context_window);
    }
    if (strcmp(k->value, "max_tokens") == 0) {
        return integer(L, v, sub, 1, 10000000, &mc->default_max_tokens);
    }
    if (strcmp(k->value, "capabilities") == 0) {
        return parse_caps(L, v, sub, &mc->capabilities);
    }
    if (strcmp(k->value, "timeouts") == 0) {
        return parse_model_timeouts(L, v, sub, mc);
    }
    if (strcmp(k->value, "headers") == 0) {
        return parse_headers(L, v, sub, mc);
    }
    int rc = br__config_model_resil_field(L, k, v, sub, mc, &later->deployments, &later->fallbacks);
    if (rc != BR_ERR_NOTFOUND) {
        return rc;
    }
    return unknown_key(L, k, what,
                       "name, provider, model, base_url, api_key, replay, local, price, "
                       "context_window, max_tokens, capabilities, timeouts, headers, "
                       "deployments, balance, fallbacks, retry, breaker, max_in_flight, queue");
}

static int parse_model(struct br__config_loader *L, const struct br_ynode *m, size_t idx,
                       struct br_model_cfg *mc, struct model_later *later)
{
    char what[48];
    (void)snprintf(what, sizeof(what), "models[%zu]", idx); /* fits: 8 + 20 digits */
    int rc = want(L, m, BR_YNODE_MAP, what);
    mc->line = m->line;
    mc->price.cached_input_nano_usd_per_mtok = -1;
    mc->connect_timeout_ms = 5000;
    mc->first_byte_timeout_ms = 60000;
    mc->idle_timeout_ms = 120000;
    mc->default_max_tokens = 4096;
    mc->local_threads = 1;
    mc->local_queue = 16;
    mc->local_lora_scale = 1.0;
    mc->retry = L->cfg->resil.retry; /* resilience: was parsed first */
    mc->breaker = L->cfg->resil.breaker;
    bool have_price = false;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        rc = parse_model_field(L, m->items[i], m->items[i + 1], what, mc, later);
        have_price |= strcmp(m->items[i]->value, "price") == 0;
    }
    if (rc != BR_OK) {
        return rc;
    }
    if (!mc->name || !mc->provider) {
        return errf(L, m->line, "%s: needs name and provider", what);
    }
    if (!have_price) {
        return errf(L, m->line,
                    "%s (%s): needs price: {input, output} in USD per million tokens "
                    "(write 0 for free models)",
                    what, mc->name);
    }
    if (!mc->upstream_model) {
        mc->upstream_model = mc->name;
    }
    if (!mc->base_url && strcmp(mc->provider, "openai") == 0) {
        mc->base_url = "https://api.openai.com/v1";
    } else if (!mc->base_url && strcmp(mc->provider, "anthropic") == 0) {
        mc->base_url = "https://api.anthropic.com/v1";
    }
    if (strcmp(mc->provider, "replay") == 0 && !mc->replay_file) {
        return errf(L, m->line, "%s (%s): provider replay needs replay: {file: ...}", what,
                    mc->name);
    }
    if (strcmp(mc->provider, "local") == 0 && !mc->local_model) {
        return errf(L, m->line, "%s (%s): provider local needs local: {model: ...}", what,
                    mc->name);
    }
    if (!mc->local_template) {
        mc->local_template = "raw";
    }
    if (!mc->replay_prompt_field) {
        mc->replay_prompt_field = "prompt";
    }
    if (!mc->replay_response_field) {
        mc->replay_response_field = "response";
    }
    return br__config_model_finish_resil(L, mc, later->deployments, what);
}

static int parse_models(struct br__config_loader *L, const struct br_ynode *s)
{
    int rc = want(L, s, BR_YNODE_SEQ, "models");
    if (rc != BR_OK) {
        return rc;
    }
    struct br_model_cfg *models = br_arena_calloc(L->arena, s->n + 1, sizeof(*models));
    struct model_later *later = br_arena_calloc(L->arena, s->n + 1, sizeof(*later));
    if (!models || !later) {
        return nomem(L);
    }
    for (size_t i = 0; rc == BR_OK && i < s->n; i++) {
        rc = parse_model(L, s->items[i], i, &models[i], &later[i]);
        if (rc == BR_OK &&
            br_map_get(&L->cfg->models_by_name, br_slice_from_cstr(models[i].name))) {
            return errf(L, s->items[i]->line, "models[%zu]: duplicate model name '%s'", i,
                        models[i].name);
        }
        if (rc == BR_OK && br_map_put(&L->cfg->models_by_name, br_slice_from_cstr(models[i].name),
                                      &models[i]) != BR_OK) {
            return nomem(L);
        }
    }
    /* Fallbacks name other models: resolved once every name is known. */
    for (size_t i = 0; rc == BR_OK && i < s->n; i++) {
        if (later[i].fallbacks) {
            rc = br__config_model_fallbacks(L, &models[i], later[i].fallbacks);
        }
    }
    L->cfg->models = models;
    L->cfg->n_models = s->n;
    return rc;
}

static int parse_root(struct br__config_loader *L, const struct br_ynode *root)
{
    int rc = want(L, root, BR_YNODE_MAP, "configuration");
    bool have_models = false;
    const struct br_ynode *routes = NULL;
    /* resilience: first, wherever it is written: the models' retry:/breaker: start from it. */
    for (size_t i = 0; rc == BR_OK && i < root->n; i += 2) {
        if (strcmp(root->items[i]->value, "resilience") == 0) {
            rc = br__config_parse_resilience(L, root->items[i + 1]);
        }
    }
    for (size_t i = 0; rc == BR_OK && i < root->n; i += 2) {
        const struct br_ynode *k = root->items[i];
        const struct br_ynode *v = root->items[i + 1];
        if (strcmp(k->value, "resilience") == 0) {
            continue; /* parsed above */
        }
        if (strcmp(k->value, "server") == 0) {
            rc = parse_server(L, v);
        } else if (strcmp(k->value, "auth") == 0) {
            rc = parse_auth(L, v);
        } else if (strcmp(k->value, "log") == 0) {
            rc = parse_log(L, v);
        } else if (strcmp(k->value, "metrics") == 0) {
            rc = parse_metrics(L, v);
        } else if (strcmp(k->value, "upstream") == 0) {
            rc = parse_upstream(L, v);
        } else if (strcmp(k->value, "models") == 0) {
            rc = parse_models(L, v);
            have_models = true;
        } else if (strcmp(k->value, "routes") == 0) {
            routes = v; /* parsed once the catalogue is known: routes name its models */
        } else {
            rc = unknown_key(L, k, "configuration",
                             "server, auth, log, metrics, upstream, resilience, models, routes");
        }
    }
    if (rc == BR_OK && (!have_models || L->cfg->n_models == 0)) {
        rc = errf(L, root->line, "models: the catalogue needs at least one model");
    }
    if (rc == BR_OK && routes) {
        rc = br__config_parse_routes(L, routes);
    }
    return rc;
}

static void set_defaults(struct br_config *c)
{
    br__config_resil_defaults(&c->resil);
    c->listen_host = "127.0.0.1";
    c->listen_port = 8080;
    c->workers = 0;
    c->request_line_bytes = (size_t)8 * 1024;
    c->header_bytes = (size_t)32 * 1024;
    c->header_fields = 100;
    c->body_bytes = (size_t)16 * 1024 * 1024;
    c->stream_buffer_bytes = (size_t)256 * 1024;
    c->max_connections = 0;
    c->header_timeout_ms = 10000;
    c->body_idle_timeout_ms = 30000;
    c->keepalive_timeout_ms = 75000;
    c->drain_timeout_ms = 30000;
    c->log_level = "info";
    c->log_path = "brigade.db";
    c->log_queue = 65536;
    c->log_batch = 512;
    c->log_flush_ms = 50;
    c->log_on_full = BR_LOG_FULL_REJECT;
    c->log_bodies = false;
    c->log_body_max_bytes = (size_t)64 * 1024;
}

static void wipe(volatile char *p)
{
    while (*p) {
        *p++ = '\0';
    }
}

static void storage_free(struct br_config *c)
{
    struct storage *st = c->priv;
    br_map_cleanup(&c->models_by_name);
    br_map_cleanup(&c->routes_by_name);
    if (!st) {
        br_free(c);
        return;
    }
    for (size_t i = 0; i < st->n_secrets; i++) {
        wipe(st->secrets[i]);
    }
    br_arena *a = st->arena;
    br_free(c);
    br_arena_destroy(a); /* st lives in the arena */
}

int br_config_load_string(const char *text, size_t n, const char *base_dir, struct br_config **out,
                          char *err, size_t errlen)
{
    struct br__config_loader L = {
        .name = "<string>", .base_dir = base_dir, .err = err, .errlen = errlen};
    struct br_ynode *root = NULL;
    br_arena *arena = NULL;
    int rc;

    err[0] = '\0';
    if (n > MAX_FILE_BYTES) {
        (void)snprintf(err, errlen, "configuration larger than %u bytes", MAX_FILE_BYTES);
        return BR_ERR_LIMIT;
    }
    rc = br_arena_create(0, &arena);
    if (rc != BR_OK) {
        return nomem(&L);
    }
    struct br_config *c = br_calloc(1, sizeof(*c));
    struct storage *st = br_arena_calloc(arena, 1, sizeof(*st));
    if (!c || !st) {
        br_free(c);
        br_arena_destroy(arena);
        return nomem(&L);
    }
    st->arena = arena;
    c->priv = st;
    atomic_init(&c->refs, 1);
    br_map_init(&c->models_by_name);
    br_map_init(&c->routes_by_name);
    set_defaults(c);
    c->path = "<string>";
    L.arena = arena;
    L.cfg = c;

    rc = br__config_yaml_parse(arena, text, n, L.name, &root, err, errlen);
    if (rc != BR_OK) {
        goto fail;
    }
    rc = parse_root(&L, root);
    if (rc != BR_OK) {
        goto fail;
    }
    if (!L.key_store_set && c->has_master_key) {
        /* Virtual keys need the master key to be created: the store exists with it. */
        c->key_store_path =
            base_dir ? br_arena_sprintf(arena, "%s/brigade-keys.db", base_dir) : "brigade-keys.db";
        if (!c->key_store_path) {
            rc = nomem(&L);
            goto fail;
        }
    }
    if (c->log_path && c->log_path[0] != '/' && base_dir) {
        c->log_path = br_arena_sprintf(arena, "%s/%s", base_dir, c->log_path);
        if (!c->log_path) {
            rc = nomem(&L);
            goto fail;
        }
    }
    *out = c;
    return BR_OK;
fail:
    storage_free(c);
    return rc;
}

int br_config_load_file(const char *path, struct br_config **out, char *err, size_t errlen)
{
    int rc;
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        char why[128];
        (void)snprintf(err, errlen, "%s: cannot open: %s", path, errno_text(e, why, sizeof(why)));
        return br_err_from_errno(e);
    }
    text = br_malloc(MAX_FILE_BYTES + 1);
    if (!text) {
        (void)fclose(f);
        (void)snprintf(err, errlen, "%s: out of memory", path);
        return BR_ERR_NOMEM;
    }
    size_t n = fread(text, 1, MAX_FILE_BYTES + 1, f);
    int read_err = ferror(f);
    (void)fclose(f); /* read-only: nothing to flush */
    if (read_err) {
        (void)snprintf(err, errlen, "%s: read error", path);
        rc = BR_ERR_IO;
        goto out;
    }
    if (n > MAX_FILE_BYTES) {
        (void)snprintf(err, errlen, "%s: larger than %u bytes", path, MAX_FILE_BYTES);
        rc = BR_ERR_LIMIT;
        goto out;
    }

    /* Relative paths in the file resolve against the file's own folder. */
    char dir[PATH_MAX];
    char *resolved = realpath(path, NULL); /* NOLINT: libc allocation, freed below */
    if (!resolved) {
        (void)snprintf(err, errlen, "%s: cannot resolve path", path);
        rc = BR_ERR_IO;
        goto out;
    }
    int dn = snprintf(dir, sizeof(dir), "%s", resolved);
    free(resolved); /* NOLINT: realpath() allocates with malloc */
    if (dn < 0 || (size_t)dn >= sizeof(dir)) {
        (void)snprintf(err, errlen, "%s: path too long", path);
        rc = BR_ERR_LIMIT;
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash) {
        *(slash == dir ? slash + 1 : slash) = '\0';
    }

    rc = br_config_load_string(text, n, dir, out, err, errlen);
    if (rc == BR_OK) {
        struct storage *st = (*out)->priv;
        (*out)->path = br_arena_strndup(st->arena, path, strlen(path));
    } else if (strncmp(err, "<string>", 8) == 0) {
        /* Name the file in messages instead of "<string>". */
        char tmp[1024];
        (void)snprintf(tmp, sizeof(tmp), "%s%s", path, err + 8);
        (void)snprintf(err, errlen, "%s", tmp); /* a cut message is still the error */
    }
out:
    br_free(text);
    return rc;
}

void br_config_ref(struct br_config *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void br_config_unref(struct br_config *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        storage_free(c);
    }
}

const struct br_model_cfg *br_config_model_find(const struct br_config *c, const char *name,
                                                size_t n)
{
    return br_map_get(&c->models_by_name, br_slice_make(name, n));
}

const struct br_model_cfg *br_config_model_find_variant(const struct br_config *c, const char *name,
                                                        size_t n, const char **variant_out,
                                                        size_t *variant_len_out)
{
    *variant_out = NULL;
    *variant_len_out = 0;
    const struct br_model_cfg *m = br_config_model_find(c, name, n);
    if (m) {
        return m;
    }
    size_t colon = n;
    while (colon > 0 && name[colon - 1] != ':') {
        colon--;
    }
    if (colon < 2 || colon == n) {
        return NULL; /* no ':', or nothing before or after it */
    }
    m = br_config_model_find(c, name, colon - 1);
    if (m) {
        *variant_out = name + colon;
        *variant_len_out = n - colon;
    }
    return m;
}

const struct br_route_cfg *br_config_route_find(const struct br_config *c, const char *name,
                                                size_t n)
{
    return br_map_get(&c->routes_by_name, br_slice_make(name, n));
}
