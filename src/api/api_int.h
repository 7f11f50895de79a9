/* SPDX-License-Identifier: MIT */
/* Structures shared by the api subsystem's own files; never included from outside. */
#ifndef BR_API_INT_H
#define BR_API_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "api/api.h"
#include "config/config.h"
#include "core/rand.h"
#include "http/http.h"
#include "keys/keys.h"
#include "metrics/metrics.h"
#include "resil/resil.h"
#include "route/route.h"
#include "store/store.h"
#include "upstream/provider.h"

/* One deployment of a model: an endpoint (or key) with its provider state. */
struct br_runtime_deploy {
    const struct br_deployment_cfg *cfg;
    struct br_provider_target target; /* what the provider sees */
    void *state;                      /* ops->model_create result */
};

/* A catalogue model joined with its provider, its deployments and their balancer. */
struct br_runtime_model {
    const struct br_model_cfg *cfg;
    const struct br_provider_ops *ops;
    void *state;                       /* deployment 0's state (local models have one) */
    struct br_provider_target target;  /* deployment 0's target */
    struct br_runtime_deploy *deploys; /* cfg->n_deployments; [0] mirrors state/target */
    size_t n_deploys;
    br_resil_lb *lb;                   /* balancer and breakers over the deployments */
    struct br_resil_triggers triggers; /* what retries, what falls back */
    struct br_resil_retry_opts retry;
    struct br__gate *gate; /* max_in_flight / queue (api_gate.c); NULL = unlimited */
};

/*
 * Everything a request needs that a reload may replace: the config snapshot and the provider
 * state built from it. Immutable once built; ref-counted; requests hold a reference.
 */
struct br_runtime {
    atomic_int refs;
    struct br_config *cfg;
    struct br_runtime_model *models; /* parallel to cfg->models */
    size_t n_models;
    char *models_json; /* GET /v1/models body (models, then routes), unless models_dynamic */
    size_t models_json_len;
    bool models_dynamic; /* some model has run-time variants: build the body per request */
    int64_t created_s;   /* load time, the "created" of every model */
    br_router *router;   /* routes: policies, classifiers, live statistics */
    br_resil_budget *retry_budget; /* retries in flight vs requests in flight */
};

/* Metric family ids. */
struct br_api_metrics {
    unsigned requests;        /* counter {model, status} */
    unsigned duration;        /* histogram {model}: request total */
    unsigned overhead;        /* histogram: what brigade added */
    unsigned upstream_ttfb;   /* histogram {model} */
    unsigned ttft;            /* histogram {model}: first token to the client */
    unsigned tokens;          /* counter {model, kind} */
    unsigned cost;            /* counter {model}: USD */
    unsigned upstream_errors; /* counter {model, kind} */
    unsigned inflight;        /* gauge */
    unsigned rejected;        /* counter {status}: refused by the http layer */
    unsigned log_dropped;     /* counter: request-log rows refused because the queue was full */
    unsigned log_queue;       /* gauge */
    unsigned log_written;     /* counter */
    unsigned reloads;         /* counter {result} */
    unsigned info;            /* gauge {version} */
    unsigned route_decisions; /* counter {route, model, policy} */
    unsigned route_score;     /* histogram {route}: classifier scores */
    unsigned route_threshold; /* gauge {route}: current threshold */
    unsigned route_quality;   /* gauge {route, model, decision, stat}: feedback estimates */
    unsigned route_threshold_changes; /* counter {route} */
    unsigned cascade;                 /* counter {route, model, outcome}: accepted / escalated */
    unsigned feedback;                /* counter {route, model, result} */
    unsigned latency_est;             /* gauge {model, stat}: live ttft / tokens per second */
    unsigned deploy_state;            /* gauge {model, deployment}: breaker 0/1/2 (api_deploy.c) */
    unsigned deploy_in_flight;        /* gauge {model, deployment} */
    unsigned deploy_ttfb;             /* gauge {model, deployment}: EWMA seconds */
    unsigned deploy_ejections;        /* gauge {model, deployment} */
    unsigned deploy_failures;         /* gauge {model, deployment} */
    unsigned model_in_flight;         /* gauge {model}: calls holding a max_in_flight slot */
    unsigned model_queued;            /* gauge {model}: calls waiting for one */
};

struct br_gateway {
    char *config_path;
    struct br_gateway_overrides ov;

    pthread_mutex_t rt_lock;
    struct br_runtime *rt; /* current runtime (one reference), under rt_lock */
    atomic_uint_fast64_t rt_generation;

    br_http_server *http;
    br_metrics *metrics;
    struct br_api_metrics m;
    br_store *store;
    br_keys *keys;             /* virtual keys (auth.key_store), or NULL */
    br_route_live *route_live; /* routing statistics, kept across reloads */
    enum br_log_full_policy log_on_full;
    atomic_bool draining;

    unsigned n_workers;
    struct br_worker **workers;

    uv_loop_t main_loop;
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_signal_t sig_hup;
};

/* Per worker thread (the http layer's worker context). */
struct br_worker {
    struct br_gateway *g;
    unsigned index; /* also the metrics shard */
    uv_loop_t *loop;
    br_upstream *upstream;
    struct br_rng rng;
    struct br_runtime *rt; /* this worker's reference to the current runtime */
    uint_fast64_t rt_generation;
    /* Completions handed back by other threads (feedback lookups on the store writer). */
    uv_async_t async;
    pthread_mutex_t done_mu;
    struct br__done *done; /* pushed by other threads, taken by the loop */
    bool async_open;       /* under done_mu */
};

/* A job finished on another thread, to be completed on the worker's loop. */
struct br__done {
    void (*complete)(struct br__done *d); /* runs on the loop; frees d */
    void (*drop)(struct br__done *d);     /* the worker is gone: frees d without a request */
    struct br__done *next;
};

/** Hands d to worker w's loop (any thread). When the worker is gone, d->drop runs instead. */
void br__worker_post(struct br_worker *w, struct br__done *d);

/* api_gate.c: per-model overload protection (see the file's header). */
struct br__gate;
struct br__gate_waiter;

/** A gate for max_in_flight calls and max_queue waiters; *out = NULL when max_in_flight is 0
 * (unlimited). Caller destroys. BR_ERR_NOMEM. */
int br__gate_create(uint32_t max_in_flight, uint32_t max_queue, struct br__gate **out);
/** Frees the gate (no waiter may be left). NULL is a no-op. */
void br__gate_destroy(struct br__gate *g);
/**
 * Takes a slot (BR_OK; always for a NULL gate), or queues the caller (BR_AGAIN: on_grant(user)
 * runs later on w's loop with the slot held, unless *waiter_out is canceled first), or refuses
 * (BR_ERR_BUSY: every slot taken and the queue full). Any thread.
 */
int br__gate_enter(struct br__gate *g, struct br_worker *w, void (*on_grant)(void *user),
                   void *user, struct br__gate_waiter **waiter_out);
/** Gives a slot back (to the oldest waiter when there is one). NULL is a no-op. Any thread. */
void br__gate_leave(struct br__gate *g);
/** Withdraws a waiter (frees it; a slot it was already granted is handed on). On its owner's
 * loop only. NULL is a no-op. */
void br__gate_cancel(struct br__gate_waiter *wt);
/** Slots taken and waiters now (for metrics and tests). */
void br__gate_counts(struct br__gate *g, uint32_t *in_flight_out, uint32_t *queued_out);

/* api_json.c */
/** Compact JSON text of j in arena memory (NUL-terminated); NULL on OOM. */
char *br__json_dump(br_arena *a, const json_t *j, size_t *len_out);
/** Compact JSON text of j in heap memory (caller br_free()s); NULL on OOM. */
char *br__json_dump_heap(const json_t *j, size_t *len_out);
/** Serialises j (consumed; NULL means out of memory) into the request arena and responds with
 * it as application/json; 503 when it cannot. */
void br__respond_json(br_http_request *req, int status, json_t *j);
/** 405 in OpenAI's error shape, naming the allowed methods. */
void br__respond_not_allowed(br_http_request *req, const char *allowed);

/* api_runtime.c */
/** Builds a runtime; live (may be NULL: private statistics) carries routing state over. */
int br__runtime_build(struct br_config *cfg, br_route_live *live, struct br_runtime **out,
                      char *err, size_t errlen);
void br__runtime_ref(struct br_runtime *rt);
void br__runtime_unref(struct br_runtime *rt);
struct br_runtime_model *br__runtime_model(struct br_runtime *rt, const struct br_model_cfg *m);

/** The GET /v1/models document (models with their variants, then routes), or NULL. */
json_t *br__models_json(const struct br_runtime *rt);

/** True when rm serves the variant called name (n bytes): "MODEL:ADAPTER" requests. */
bool br__variant_exists(const struct br_runtime_model *rm, const char *name, size_t n);
/** The worker's current runtime, refreshed if a reload happened; borrowed. */
struct br_runtime *br__worker_runtime(struct br_worker *w);

/* api_auth.c */
enum br_auth_result {
    BR_AUTH_OK,
    BR_AUTH_MISSING,
    BR_AUTH_INVALID,
    BR_AUTH_REVOKED, /* a revoked virtual key */
};
/**
 * Checks the request's bearer key (Authorization: Bearer K, or x-api-key: K) against the
 * config in constant time. *key_id_out gets the key's id ("master" for the master key) or NULL
 * when auth is off. `admin` requires the master key.
 */
enum br_auth_result br__auth_check(const struct br_config *cfg, const br_http_request *req,
                                   bool admin, const char **key_id_out);
/**
 * br__auth_check for client endpoints, virtual keys included: *key_id_out gets the key id
 * (a virtual key's "vk_..." id) and *vkey_out (may be NULL) the virtual key, or NULL for the
 * master and configured keys. Auth is off only when no key of either kind exists (revoked
 * virtual keys count: they answer 401).
 */
enum br_auth_result br__auth_client(struct br_gateway *g, const struct br_config *cfg,
                                    const br_http_request *req, const char **key_id_out,
                                    br_vkey **vkey_out);
/** Sends the 401/403 for a failed check and finishes the request. */
void br__auth_fail(br_http_request *req, enum br_auth_result r, bool admin);

/* api_request.c */
struct br__verr {
    const char *param; /* OpenAI's "param", or NULL */
    const char *code;  /* OpenAI's "code" */
    char msg[320];
};
/* What the gateway reads from a chat request; strings live in the request arena. */
struct br__chat_request {
    const char *model; /* decoded "model" (NULL when unreadable) */
    size_t model_len;
    bool stream;
    bool wants_usage; /* stream_options.include_usage */
};
/**
 * Validates the raw body strictly and reads the fields above. On failure returns
 * BR_ERR_INVAL and fills e with the OpenAI error fields (status 400).
 */
int br__chat_request_parse(br_arena *a, struct br_slice body, struct br__chat_request *out,
                           struct br__verr *e);

/* api_chat.c */
void br__chat_handle(struct br_worker *w, br_http_request *req);
void br__chat_abort(struct br_worker *w, br_http_request *req);

/* api_misc.c */
void br__models_list(struct br_worker *w, br_http_request *req);
void br__models_get(struct br_worker *w, br_http_request *req, struct br_slice id);
void br__health(struct br_worker *w, br_http_request *req);
void br__metrics_scrape(struct br_worker *w, br_http_request *req);
void br__admin_config(struct br_worker *w, br_http_request *req);
void br__admin_reload(struct br_worker *w, br_http_request *req);

/* api_deploy.c: the deployments' balancer and breaker state. */
int br__deploy_metrics_register(br_metrics *m, struct br_api_metrics *ids);
/** Sets the deployment gauges (at scrape time). */
void br__deploy_gauges(struct br_gateway *g, const struct br_runtime *rt);
/** GET /admin/deployments (master key). */
void br__admin_deployments(struct br_worker *w, br_http_request *req);

/** /admin/models/... (rest: the path after that prefix): a local model's LoRA adapters. */
void br__admin_adapters(struct br_worker *w, br_http_request *req, struct br_slice rest);
void br__admin_routes(struct br_worker *w, br_http_request *req);
int br__metrics_register_all(br_metrics *m, struct br_api_metrics *ids);

/* api_keys.c: virtual keys */
/** /admin/keys and /admin/keys/{id} (rest: the path after "/admin/keys"). */
void br__admin_keys(struct br_worker *w, br_http_request *req, struct br_slice rest);

/* Why a virtual key may not start a request: an OpenAI-shaped error. */
struct br__key_deny {
    int status; /* 403 (model not allowed) or 429 (rpm, tpm, budget) */
    const char *code;
    const char *param;
    char msg[320];
    char retry_after[24]; /* Retry-After value, "" = none */
};

/**
 * The one admission check of a virtual key before any upstream call: allowed model (the
 * requested name), then RPM, TPM and budget (src/keys) with the estimate of the most expensive
 * step of the plan (prompt tokens x input price + max_tokens, or the model's
 * default_max_tokens, x output price). rreq: the routed request's signals, or NULL (the prompt
 * is estimated from the body's messages). BR_OK with the reservation in *ticket, or
 * BR_ERR_LIMIT with *d filled.
 */
int br__key_admit_chat(br_vkey *k, const char *model_requested, const struct br_plan *plan,
                       const struct br_route_req *rreq, struct br_slice body,
                       struct br_keys_ticket *ticket, struct br__key_deny *d);
/** As br__key_admit_chat for one model with known prompt tokens and max_tokens (-1: absent). */
int br__key_admit(br_vkey *k, const char *model_requested, const struct br_model_cfg *const *models,
                  size_t n_models, int64_t prompt_tokens, int64_t max_tokens,
                  struct br_keys_ticket *ticket, struct br__key_deny *d);
/** Ends a reservation: debits the request's real cost and tokens. No-op without one. */
void br__key_settle(struct br_gateway *g, struct br_keys_ticket *ticket, int64_t cost_nano,
                    int64_t tokens);

/* api_cascade.c */
/** The body with "logprobs": true (any earlier logprobs member dropped), in arena memory. */
int br__body_with_logprobs(br_arena *a, struct br_slice body, struct br_slice *out);
/** Mean or minimum token log-probability of a chat.completion; BR_ERR_NOTFOUND without any. */
int br__answer_logprob_confidence(struct br_slice answer, enum br_cascade_aggregate agg,
                                  double *out);
/** The answer with every choice's logprobs set to null (arena): the client did not ask. */
int br__answer_drop_logprobs(br_arena *a, struct br_slice answer, struct br_slice *out);
/** Decoded choices[0].message.content of a chat.completion (arena), or NULL. */
char *br__answer_text(br_arena *a, struct br_slice answer, size_t *len_out);
/** The self-verification request: the question and the proposed answer, yes or no. */
int br__verify_body(br_arena *a, const char *question, size_t qlen, struct br_slice answer,
                    int64_t max_tokens, bool logprobs, struct br_slice *out);
/** P(yes) read from a verification answer (log-probabilities when present, else its text). */
double br__verify_p_yes(struct br_slice answer);
/** Re-chunks a chat.completion as chat.completion.chunk payloads (usage chunk on request). */
int br__answer_to_chunks(struct br_slice answer, bool with_usage, const struct br_usage *u,
                         int (*emit)(void *user, const char *json, size_t n), void *user);
/** Appends the decoded delta content of a chunk to b. */
int br__chunk_text_append(struct br_buf *b, struct br_slice chunk);

/* api_feedback.c */
void br__feedback_handle(struct br_worker *w, br_http_request *req);
/** Applies a threshold change: log, metrics, persisted in the request log. */
void br__route_adjusted(struct br_gateway *g, unsigned shard, const char *route,
                        const struct br_route_adjustment *adj);

/* Per-request handler state tag stored in req->user so on_abort can dispatch. */
enum br_req_kind {
    BR_REQ_KIND_NONE = 0,
    BR_REQ_KIND_CHAT = 1,
    BR_REQ_KIND_FEEDBACK = 2,
    BR_REQ_KIND_COMPLETION = 3,
};

/* api_completions.c: POST /v1/completions (legacy text completion) for local models. */
void br__completions_handle(struct br_worker *w, br_http_request *req);
void br__completions_abort(br_http_request *req);

#endif
