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

#define BR_CONFIG_KEY_HASH_LEN     32 /* SHA-256 */
#define BR_CONFIG_ADAPTER_NAME_MAX 64 /* a LoRA adapter's name: [A-Za-z0-9._-]{1,64} */
#define BR_CONFIG_ADAPTERS_MAX     64 /* named adapters per local model, config and admin API */

enum br_model_cap {
    BR_MODEL_CAP_TOOLS = 1u << 0,
    BR_MODEL_CAP_JSON_MODE = 1u << 1,
    BR_MODEL_CAP_VISION = 1u << 2,
};

/* One catalogue entry. All strings are owned by the snapshot. */
/* ---- resilience: deployments, balancing, retries, breakers, fallbacks (issue 5) ---- */

#define BR_MODEL_MAX_DEPLOYMENTS 16 /* endpoints or keys behind one model name */

/* What makes a failed attempt try again (the same model) or fall back (the next one). */
enum br_resil_trigger {
    BR_RESIL_ON_CONNECT = 1u << 0,        /* connection refused, reset, DNS, TLS */
    BR_RESIL_ON_TIMEOUT = 1u << 1,        /* no answer before the first-byte timeout */
    BR_RESIL_ON_429 = 1u << 2,            /* rate limited upstream */
    BR_RESIL_ON_5XX = 1u << 3,            /* 500-599 */
    BR_RESIL_ON_CONTEXT_LENGTH = 1u << 4, /* the prompt does not fit: fallback only */
};

enum br_balance_policy {
    BR_BALANCE_WEIGHTED,          /* default: by weight */
    BR_BALANCE_LEAST_OUTSTANDING, /* fewest requests in flight */
    BR_BALANCE_LATENCY,           /* lowest EWMA of time to first byte */
};

struct br_deployment_cfg {
    const char *name;           /* for metrics and logs: given, else "MODEL#N" */
    const char *base_url;       /* the entry's when not given */
    const char *api_key;        /* secret (never logged); the entry's when not given */
    const char *api_key_ref;    /* as written (safe to show) */
    const char *upstream_model; /* the entry's `model` when not given */
    uint32_t weight;            /* default 1 */
    int64_t rpm;                /* requests per minute, 0 = no limit */
    int64_t tpm;                /* tokens per minute (estimated at start, real at end), 0 = none */
    int line;
};

struct br_retry_cfg {
    uint32_t attempts;       /* retries of the same model after the first try (default 2) */
    uint64_t base_ms;        /* backoff base (default 200 ms): wait random(0, base * 2^n) */
    uint64_t max_backoff_ms; /* one wait at most (default 10 s) */
    uint64_t max_wait_ms;    /* all waits of a request together at most (default 60 s) */
    unsigned on;             /* enum br_resil_trigger bits (default connect|timeout|429|5xx) */
};

struct br_breaker_cfg {
    bool enabled;          /* default true */
    uint32_t failures;     /* consecutive failures that eject a deployment (default 5) */
    uint64_t eject_ms;     /* first ejection (default 30 s); the n-th lasts n times as long */
    uint64_t max_eject_ms; /* cap (default 300 s) */
};

struct br_resil_cfg {
    struct br_retry_cfg retry;
    struct br_breaker_cfg breaker;
    unsigned fallback_on;      /* enum br_resil_trigger bits (default all) */
    double retry_budget_ratio; /* retries in flight <= ratio x requests in flight (0.2) ... */
    uint32_t retry_budget_min; /* ... or this many (3), whichever is larger */
};

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
    const char *local_model;           /* local: absolute path (relative to the config folder) */
    const char *local_tokenizer;       /* local: tokenizer.bin of a llama2.c .bin, or NULL */
    const char *local_template;        /* local: "raw" (default) or "simple" */
    int local_threads;                 /* local: generation workers, default 1 */
    int local_context;                 /* local: context cap in tokens, 0 = the model's */
    int local_queue;                   /* local: waiting requests, default 16 */
    const char *local_lora;            /* local: LoRA adapter (GGUF) applied at run time, or NULL */
    double local_lora_scale;           /* local: the adapter's scale, default 1 */
    /* local: named adapters a request picks with "model": "NAME:ADAPTER" (`adapters:` map);
     * three parallel arrays of n_local_adapters entries */
    const char *const *local_adapter_names;
    const char *const *local_adapter_paths; /* absolute */
    const double *local_adapter_scales;
    size_t n_local_adapters;
    const char *const *extra_headers; /* "Name: value" lines */
    size_t n_extra_headers;
    struct br_price price;          /* nano-USD per million tokens */
    int64_t context_window;         /* tokens; 0 = unknown */
    unsigned capabilities;          /* enum br_model_cap bits */
    uint32_t connect_timeout_ms;    /* default 5000 */
    uint32_t first_byte_timeout_ms; /* default 60000 */
    uint32_t idle_timeout_ms;       /* default 120000 */
    int64_t default_max_tokens;     /* used when a provider needs max_tokens; default 4096 */
    /* resilience: at least one deployment (the entry itself when `deployments:` is absent) */
    const struct br_deployment_cfg *deployments;
    size_t n_deployments;
    enum br_balance_policy balance;
    const struct br_model_cfg *fallbacks[BR_MODEL_MAX_DEPLOYMENTS]; /* tried in order */
    size_t n_fallbacks;
    struct br_retry_cfg retry;     /* the `resilience:` defaults, overridden per model */
    struct br_breaker_cfg breaker; /* idem */
    uint32_t max_in_flight;        /* upstream calls in flight over all deployments and
                                      workers; 0 = unlimited (default) */
    uint32_t queue;                /* calls waiting (FIFO) when max_in_flight are in flight;
                                      past it 503 upstream_overloaded. Default 0 */
    int line;                      /* line of the entry in the file, for messages */
};

struct br_api_key_cfg {
    const char *id; /* shown in logs and the request log */
    unsigned char sha256[BR_CONFIG_KEY_HASH_LEN];
};

/* ---- routes: a name clients use as "model", and how brigade picks among its models ---- */

#define BR_ROUTE_MAX_MODELS   16 /* candidates (and fallbacks) per route */
#define BR_ROUTE_MAX_POLICIES 8  /* policies composed in one route */

enum br_route_policy_kind {
    BR_ROUTE_POLICY_DIRECT,     /* the route's default model (an alias) */
    BR_ROUTE_POLICY_RULES,      /* ordered conditions */
    BR_ROUTE_POLICY_CLASSIFIER, /* learned score vs threshold */
    BR_ROUTE_POLICY_CASCADE,    /* cheap first, escalate on low confidence */
    BR_ROUTE_POLICY_LATENCY,    /* cheapest meeting the latency SLA */
    BR_ROUTE_POLICY_COST,       /* best model within the cost cap */
    BR_ROUTE_POLICY_RANDOM,     /* uniform among candidates (A/B baselines) */
};

/* Client quality tier (x-brigade-quality or metadata). */
enum br_route_quality {
    BR_ROUTE_QUALITY_NONE = 0,
    BR_ROUTE_QUALITY_ECONOMY,
    BR_ROUTE_QUALITY_STANDARD,
    BR_ROUTE_QUALITY_HIGH,
};

enum br_route_text_scope {
    BR_ROUTE_TEXT_LAST_USER, /* the last user message (default) */
    BR_ROUTE_TEXT_ALL,       /* every message's text, joined with newlines */
};

enum br_route_target_kind {
    BR_ROUTE_TARGET_MODEL,  /* a named candidate */
    BR_ROUTE_TARGET_STRONG, /* the most expensive remaining candidate */
    BR_ROUTE_TARGET_WEAK,   /* the cheapest remaining candidate */
};

/*
 * One rule: every condition that is set must hold ("and"); unset ones are ignored. Integers
 * use -1 for unset, tri-states -1 / 0 / 1. Strings are owned by the snapshot.
 */
struct br_route_rule {
    int line;
    int64_t min_prompt_tokens; /* estimated prompt tokens */
    int64_t max_prompt_tokens;
    int64_t min_turns; /* user messages */
    int64_t max_turns;
    const char *const *keywords; /* lower case; any one found (ASCII case-insensitive) */
    size_t n_keywords;
    const char *regex_src;         /* POSIX ERE as written, or NULL */
    const void *regex;             /* compiled regex_t (REG_EXTENDED|REG_ICASE|REG_NOSUB) */
    enum br_route_text_scope in;   /* where keywords and regex look */
    int code;                      /* tri-state: request contains code */
    int math;                      /* tri-state: request contains math */
    unsigned uses;                 /* enum br_model_cap bits the request must use */
    enum br_route_quality quality; /* client tier equals (NONE: any) */
    int64_t latency_hint_max_ms;   /* client's max-latency hint present and <= this */
    int64_t cost_hint_max_nano;    /* client's max-cost hint present and <= this */
    const char *const *meta_keys;  /* body metadata key == value ("*": key present) */
    const char *const *meta_values;
    size_t n_meta;
    enum br_route_target_kind then;
    size_t then_index; /* candidate index for BR_ROUTE_TARGET_MODEL */
};

struct br_route_classifier_cfg {
    const char *model_path; /* absolute (relative ones resolve against the config's folder) */
    double threshold;       /* strong when score >= threshold */
    double margin;          /* N-model: cheapest within margin of the best predicted quality */
    enum br_route_text_scope text;
    int line;
};

enum br_cascade_confidence {
    BR_CASCADE_CONFIDENCE_LOGPROBS,    /* token log-probabilities of the answer */
    BR_CASCADE_CONFIDENCE_SELF_VERIFY, /* a second short call: "is this answer correct?" */
    BR_CASCADE_CONFIDENCE_VERIFIER,    /* a learned verifier (brigade train) on the answer */
};

enum br_cascade_aggregate {
    BR_CASCADE_AGGREGATE_MEAN, /* mean token log-probability */
    BR_CASCADE_AGGREGATE_MIN,  /* lowest token log-probability */
};

struct br_route_cascade_cfg {
    size_t steps[BR_ROUTE_MAX_MODELS]; /* candidate indexes, cheap -> strong */
    size_t n_steps;
    enum br_cascade_confidence confidence;
    enum br_cascade_aggregate aggregate;
    double threshold;      /* tau: escalate when confidence < tau (logprobs: a log-prob
                              <= 0, e.g. -0.3; self_verify: P(yes), 0..1) */
    bool request_logprobs; /* add "logprobs": true to OpenAI-compatible calls */
    size_t verifier_index; /* self_verify: model asked (SIZE_MAX: the step's own model) */
    const struct br_model_cfg *verifier; /* resolved verifier, NULL = the step's model */
    int64_t verify_max_tokens;
    const char *verifier_model_path; /* confidence verifier: model file (absolute) */
    int line;
};

struct br_route_latency_cfg {
    int64_t max_latency_ms;         /* route's SLA when the client gives none (0: none) */
    int64_t expected_output_tokens; /* output tokens assumed when max_tokens is absent */
    double prior_ttft_ms;           /* models without statistics */
    double prior_tokens_per_s;
    double alpha; /* EWMA weight of a new observation, 0..1 */
};

struct br_route_feedback_cfg {
    bool adapt;           /* re-tune the threshold from feedback */
    double q_min;         /* quality floor of cheap decisions, 0..1 */
    double confidence;    /* interval confidence, e.g. 0.95 */
    double step;          /* threshold change per adjustment */
    double min_threshold; /* bounds of the re-tuned threshold */
    double max_threshold;
    uint64_t cooldown_ms;     /* least time between adjustments */
    int64_t min_samples;      /* feedback needed before the first adjustment */
    int64_t target_cost_nano; /* mean cost per request above this: move towards cheap (0: off) */
};

struct br_route_cfg {
    const char *name;
    int line;
    const struct br_model_cfg *models[BR_ROUTE_MAX_MODELS]; /* cheapest first */
    size_t n_models;
    enum br_route_policy_kind policies[BR_ROUTE_MAX_POLICIES]; /* tried in order */
    size_t n_policies;
    size_t default_index;              /* when every policy passes; default: the last (strongest) */
    bool allowed[BR_ROUTE_MAX_MODELS]; /* allowed_models (all true when not given) */
    const struct br_model_cfg *fallbacks[BR_ROUTE_MAX_MODELS];
    size_t n_fallbacks;
    int64_t max_cost_nano;          /* per request, estimated (0: no cap) */
    int64_t expected_output_tokens; /* for estimates when max_tokens is absent (default 256) */
    bool accept_hints;              /* honour client hints (default true) */
    double exploration;             /* share of traffic sent to a random candidate */
    const struct br_route_rule *rules;
    size_t n_rules;
    struct br_route_classifier_cfg classifier;
    struct br_route_cascade_cfg cascade;
    struct br_route_latency_cfg latency;
    int64_t cost_max_nano; /* cost policy's own cap (0: the request's or route's cap) */
    struct br_route_feedback_cfg feedback;
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
    unsigned workers;           /* 0 = one per core */
    size_t request_line_bytes;  /* 414 above */
    size_t header_bytes;        /* 431 above */
    size_t header_fields;       /* 431 above */
    size_t body_bytes;          /* 413 above */
    size_t stream_buffer_bytes; /* unread streamed bytes per client; past it the client is
                                   dropped and the upstream call canceled. Default 256 KiB */
    size_t max_connections;     /* open client connections; past it 503 at once. 0 = no limit */
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
    /* auth.key_store: the virtual keys' SQLite file (absolute); NULL = no virtual keys. Default:
     * brigade-keys.db in the config's folder when a master key is set; "off" disables it. */
    const char *key_store_path;

    /* upstream HTTP */
    bool upstream_force_curl; /* upstream.client: curl (default auto: native HTTP/1.1 for
                                 http://, libcurl for https://) */

    /* request log */
    const char *log_path; /* SQLite file; NULL when logging is off */
    size_t log_queue;
    size_t log_batch;
    uint32_t log_flush_ms;
    enum br_log_full_policy log_on_full;
    bool log_bodies;           /* log.bodies: store prompts and answers (off by default) */
    size_t log_body_max_bytes; /* per stored body field; longer ones are cut */

    /* catalogue */
    const struct br_model_cfg *models;
    size_t n_models;
    struct br_map models_by_name; /* name -> const struct br_model_cfg * */

    /* resilience defaults (`resilience:`), fallback triggers and the global retry budget */
    struct br_resil_cfg resil;

    /* routes */
    const struct br_route_cfg *routes;
    size_t n_routes;
    struct br_map routes_by_name; /* name -> const struct br_route_cfg * */

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

/**
 * The catalogue entry a request's "model" names: the entry called name exactly, or else, for
 * "BASE:VARIANT" (split at the last ':'), the entry called BASE, with *variant_out pointing at
 * VARIANT inside name (*variant_len_out bytes; 0 and NULL for an exact match). Whether BASE
 * serves that variant (a LoRA adapter of a local model) is the provider's to say. NULL when
 * neither matches.
 */
const struct br_model_cfg *br_config_model_find_variant(const struct br_config *c, const char *name,
                                                        size_t n, const char **variant_out,
                                                        size_t *variant_len_out);

/** True when s (n bytes) is a valid adapter name: 1..64 of [A-Za-z0-9._-]. */
bool br_config_adapter_name_ok(const char *s, size_t n);

/** The route called name (n bytes), or NULL. */
const struct br_route_cfg *br_config_route_find(const struct br_config *c, const char *name,
                                                size_t n);

/** Name of a policy kind ("rules", "classifier", ...). */
const char *br_route_policy_name(enum br_route_policy_kind k);

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
