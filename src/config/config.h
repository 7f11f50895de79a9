/* SPDX-License-Identifier: MIT */
/*
 * Configuration: a YAML file turned into an immutable, ref-counted snapshot. Nothing in a
 * snapshot changes after load; a reload (SIGHUP, POST /admin/reload) builds a new snapshot and
 * swaps it in, and requests in flight keep the one they started with.
 *
 * Secrets are written as references: `env:NAME` (environment variable), `file:PATH` (first
 * line of a file) or, discouraged, a literal. Client API keys and the master key are hashed
 * with SHA-256 at load and only the hashes are kept.
 *
 * Thread-safety: loading is re-entrant; a loaded snapshot may be read from any thread;
 * br_config_ref/unref are atomic.
 */
#ifndef BR_CONFIG_H
#define BR_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/map.h"
#include "cost/cost.h"

#define BR_CONFIG_KEY_HASH_LEN 32 /* SHA-256 */

enum br_model_cap {
    BR_MODEL_CAP_TOOLS = 1u << 0,
    BR_MODEL_CAP_JSON_MODE = 1u << 1,
    BR_MODEL_CAP_VISION = 1u << 2,
};

/* One catalogue entry. All strings are owned by the snapshot. */
struct br_model_cfg {
    const char *name;                  /* what clients put in "model" */
    const char *provider;              /* "openai", "anthropic", "replay", ... */
    const char *upstream_model;        /* id sent upstream; defaults to name */
    const char *base_url;              /* no trailing '/'; provider default when omitted */
    const char *api_key;               /* resolved secret or NULL; never logged */
    const char *api_key_ref;           /* as written, e.g. "env:OPENAI_API_KEY" (safe to show) */
    const char *replay_file;           /* absolute path (relative ones resolve against the
                                          config file's folder) */
    const char *replay_prompt_field;   /* default "prompt" */
    const char *replay_response_field; /* default "response" */
    const char *const *extra_headers;  /* "Name: value" lines */
    size_t n_extra_headers;
    struct br_price price;          /* nano-USD per million tokens */
    int64_t context_window;         /* tokens; 0 = unknown */
    unsigned capabilities;          /* enum br_model_cap bits */
    uint32_t connect_timeout_ms;    /* default 5000 */
    uint32_t first_byte_timeout_ms; /* default 60000 */
    uint32_t idle_timeout_ms;       /* default 120000 */
    int64_t default_max_tokens;     /* used when a provider needs max_tokens; default 4096 */
    int line;                       /* line of the entry in the file, for messages */
};

struct br_api_key_cfg {
    const char *id; /* shown in logs and the request log */
    unsigned char sha256[BR_CONFIG_KEY_HASH_LEN];
};

enum br_log_full_policy {
    BR_LOG_FULL_REJECT, /* answer 503 to new requests while the log queue is full */
    BR_LOG_FULL_DROP,   /* serve, drop the row, count it in brigade_log_rows_dropped_total */
};

struct br_config {
    atomic_int refs;
    const char *path; /* file it came from, or "<string>" */

    /* server */
    const char *listen_host; /* numeric address */
    uint16_t listen_port;
    unsigned workers;          /* 0 = one per core */
    size_t request_line_bytes; /* 414 above */
    size_t header_bytes;       /* 431 above */
    size_t header_fields;      /* 431 above */
    size_t body_bytes;         /* 413 above */
    uint64_t header_timeout_ms;
    uint64_t body_idle_timeout_ms;
    uint64_t keepalive_timeout_ms;
    uint64_t drain_timeout_ms;
    const char *log_level; /* "error", "warn", "info", "debug" */

    /* auth: when no key is configured, auth is off (fine on loopback; warned otherwise) */
    bool has_master_key;
    unsigned char master_key_sha256[BR_CONFIG_KEY_HASH_LEN];
    const struct br_api_key_cfg *keys;
    size_t n_keys;
    bool metrics_require_key; /* /metrics needs the master key */

    /* upstream HTTP */
    bool upstream_force_curl; /* upstream.client: curl (default auto: native HTTP/1.1 for
                                 http://, libcurl for https://) */

    /* request log */
    const char *log_path; /* SQLite file; NULL when logging is off */
    size_t log_queue;
    size_t log_batch;
    uint32_t log_flush_ms;
    enum br_log_full_policy log_on_full;

    /* catalogue */
    const struct br_model_cfg *models;
    size_t n_models;
    struct br_map models_by_name; /* name -> const struct br_model_cfg * */

    void *priv; /* storage owned by the loader */
};

/**
 * Loads a YAML config file. On failure returns an error code and writes a one-line message
 * with file and line into err (always NUL-terminated).
 */
int br_config_load_file(const char *path, struct br_config **out, char *err, size_t errlen);

/**
 * Loads config text (n bytes). base_dir resolves relative file paths (NULL = cwd). As
 * br_config_load_file otherwise; used by tests and the fuzz target.
 */
int br_config_load_string(const char *text, size_t n, const char *base_dir, struct br_config **out,
                          char *err, size_t errlen);

/** Takes a reference. */
void br_config_ref(struct br_config *c);

/** Drops a reference; the snapshot is freed with the last one. NULL is a no-op. */
void br_config_unref(struct br_config *c);

/** The catalogue entry called name (n bytes), or NULL. */
const struct br_model_cfg *br_config_model_find(const struct br_config *c, const char *name,
                                                size_t n);

/** SHA-256 of n bytes into out (used for key hashes). */
void br_config_hash_key(const char *key, size_t n, unsigned char out[BR_CONFIG_KEY_HASH_LEN]);

/** Parses "10s", "500ms", "2m", "1h" or a plain number of milliseconds. */
int br_config_parse_duration_ms(const char *s, uint64_t *out);

/** Parses "8KiB", "16MiB", "1GiB", "512B" or a plain number of bytes. */
int br_config_parse_size(const char *s, uint64_t *out);

/**
 * Replaces one scalar value of a config file in place, keeping every other byte (comments,
 * order, formatting), and rewrites the file atomically. key_path is dotted, with list elements
 * chosen by their `name`: "routes[auto].classifier.threshold". The value is written as given
 * (plain YAML). BR_ERR_NOTFOUND when the path names no scalar; err says why.
 */
int br_config_file_set(const char *path, const char *key_path, const char *value, char *err,
                       size_t errlen);

#endif
