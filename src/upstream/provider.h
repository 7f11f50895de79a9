/* SPDX-License-Identifier: MIT */
/*
 * Providers: the adapters between brigade's OpenAI-shaped requests and a model backend, behind
 * one ops table (as curl does for TLS backends). `openai` speaks to any OpenAI-compatible server
 * (OpenAI, vLLM, Ollama, TGI, llama.cpp server ...), `anthropic` translates to and from the
 * Messages API, `replay` answers from recorded real outputs without any network.
 *
 * Every provider produces OpenAI output: a chat.completion JSON for non-streamed calls, and a
 * sequence of chat.completion.chunk JSON objects for streamed calls (the caller frames them as
 * SSE and adds "data: [DONE]"). Usage is always extracted field by field and returned in the
 * result, so that cost is right for streams too.
 */
#ifndef BR_UPSTREAM_PROVIDER_H
#define BR_UPSTREAM_PROVIDER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/arena.h"
#include "core/slice.h"
#include "core/usage.h"
#include "upstream/upstream.h"

/* One catalogue model as a provider sees it. Strings are owned by the config snapshot. */
struct br_provider_target {
    const char *name;                  /* catalogue name the client uses */
    const char *upstream_model;        /* model id sent upstream (defaults to name) */
    const char *base_url;              /* e.g. "https://api.openai.com/v1", no trailing '/' */
    const char *api_key;               /* secret or NULL; never logged or echoed */
    const char *replay_file;           /* replay: absolute path of the recorded answers, either
                                          JSONL ({"prompt","response","usage"?} per line) or CSV
                                          (RFC 4180 with a header row) */
    const char *replay_prompt_field;   /* replay: JSON key / CSV column of the prompt
                                          (default "prompt") */
    const char *replay_response_field; /* replay: JSON key / CSV column of the answer
                                          (default "response") */
    const char *const *extra_headers;  /* "Name: value" lines added to every upstream call */
    size_t n_extra_headers;
    const char *local_model;     /* local: absolute path of the GGUF or llama2.c .bin file */
    const char *local_tokenizer; /* local: tokenizer.bin for a .bin model, else NULL */
    const char *local_template;  /* local: "raw" or "simple" (NULL: "raw") */
    int local_threads;           /* local: generation worker threads (<= 0: 1) */
    int local_context;           /* local: cap on prompt + completion tokens (0: the model's) */
    int local_queue;             /* local: requests waiting beyond the workers (< 0: 16) */
    const char *local_lora;      /* local: absolute path of a LoRA adapter (GGUF), or NULL */
    double local_lora_scale;     /* local: its scale (y = Wx + scale*alpha/rank*B(Ax)) */
    const char *const *local_adapter_names; /* local: named adapters ("model": "NAME:ADAPTER") */
    const char *const *local_adapter_paths; /* absolute paths, parallel to the names */
    const double *local_adapter_scales;
    size_t n_local_adapters;
    uint32_t connect_timeout_ms;    /* default 5000 */
    uint32_t first_byte_timeout_ms; /* default 60000 */
    uint32_t idle_timeout_ms;       /* between SSE events; default 120000 */
    int64_t default_max_tokens;     /* anthropic needs max_tokens; used when absent */
};

struct br_provider_result {
    int rc;                            /* BR_OK, or the failure */
    int status;                        /* status for the client: 200, the upstream's own error
                                          status, 502 for transport/protocol failures, 504 for
                                          upstream timeouts, 404 for a replay miss */
    enum br_upstream_error error_kind; /* NONE on success */
    struct br_slice error_body;        /* rc != BR_OK: OpenAI-shaped error JSON for the client */
    struct br_usage usage;             /* tokens; usage.reported false when estimated */
    const char *upstream_model;        /* model named in the upstream's response, or NULL */
    const char *finish_reason;         /* last finish_reason seen, or NULL */
    uint64_t t_first_byte_ns;          /* monotonic: first upstream response byte, 0 if none */
    uint64_t t_first_token_ns;         /* monotonic: first content delta (streams), 0 if none */
    bool partial;                      /* a stream ended early (error or cancel) after output */
    uint32_t retry_after_ms;           /* upstream 429/503 Retry-After (or retry-after-ms),
                                          capped at 1 h; 0 when absent */
};

/* Where a call delivers its output; implemented by the API layer. */
struct br_provider_sink {
    /** The backend accepted the call (2xx): output follows. For streams, send headers now. */
    void (*on_begin)(void *user);
    /** Streamed call: one chat.completion.chunk JSON object (no SSE framing). */
    void (*on_chunk)(void *user, struct br_slice json);
    /** Non-streamed call: the whole chat.completion JSON. */
    void (*on_body)(void *user, struct br_slice json);
    /** Exactly once per call unless canceled; `res` and its slices are valid during the call. */
    void (*on_done)(void *user, const struct br_provider_result *res);
    /**
     * Streamed call, optional (may be NULL): every chunk the provider can produce right now has
     * been handed to on_chunk (the end of one upstream read, or of one batch), so a caller that
     * gathers chunks should send them now. Events that arrive together leave together, in one
     * write; none waits for later input.
     */
    void (*on_flush)(void *user);
};

/* One model call. The caller fills the "in" part; the provider owns `priv`. */
struct br_provider_call {
    /* in */
    const struct br_provider_target *target;
    void *model_state;        /* from ops->model_create */
    uv_loop_t *loop;          /* the worker loop the call runs on */
    br_upstream *upstream;    /* this worker's HTTP client */
    br_arena *arena;          /* request arena: the provider allocates from it */
    json_t *request;          /* decoded client body, or NULL until someone needs it:
                                 read it through br_provider_call_request() */
    struct br_slice raw_body; /* the client body as received */
    bool stream;              /* the client asked for SSE */
    bool client_wants_usage;  /* stream_options.include_usage was true */
    const char *request_id;   /* for logs */
    const char *variant;      /* "BASE:VARIANT" requests: VARIANT (NUL-terminated; a LoRA
                                 adapter of a local model), else NULL */
    const struct br_provider_sink *sink;
    void *sink_user;
    /* provider-private */
    void *priv;
};

struct br_provider_ops {
    const char *name; /* the `provider:` value in the catalogue */
    /* Answers in this process (one deployment; a busy queue is load, not ill health): the
     * gateway never retries it on itself and never ejects it. */
    bool in_process;
    /**
     * Builds per-model state when a config snapshot is loaded (replay loads its file here).
     * Runs on the loading thread. On error writes a one-line reason into err.
     */
    int (*model_create)(const struct br_provider_target *t, void **state_out, char *err,
                        size_t errlen);
    /** Frees per-model state (may be NULL state). */
    void (*model_destroy)(void *state);
    /**
     * Starts a call. Sink callbacks run later on call->loop, never inside call_start. On a
     * non-zero return no callback will run.
     */
    int (*call_start)(struct br_provider_call *call);
    /**
     * Stops a call that has not finished (the client went away): no further sink callbacks.
     * Fills *partial with what is known so far: usage (reported, or estimated from the output
     * already produced and the prompt), timings, partial = true.
     */
    void (*call_cancel)(struct br_provider_call *call, struct br_provider_result *partial);

    /*
     * Optional: named variants of a model (the local provider's LoRA adapters), chosen per
     * request as "BASE:VARIANT" and managed at run time through the admin API. Any thread;
     * the provider locks. A call holds its variant until it ends, so unloading one that is in
     * use takes effect for new requests at once and frees it after the last call.
     */
    /** True when state serves the variant called name (n bytes). */
    bool (*variant_exists)(void *state, const char *name, size_t n);
    /**
     * Loads a variant from path with the given scale. BR_ERR_EXISTS when the name is taken,
     * BR_ERR_LIMIT when the model has its maximum, other errors with a reason in err.
     */
    int (*variant_load)(void *state, const char *name, const char *path, double scale, char *err,
                        size_t errlen);
    /** Unloads the variant called name: BR_OK or BR_ERR_NOTFOUND. */
    int (*variant_unload)(void *state, const char *name);
    /** Appends one JSON object per variant (name, path, scale, source, in_use) to array. */
    int (*variant_list)(void *state, json_t *array);
};

/**
 * The client's request as a jansson document, parsed from raw_body on first use and cached in
 * call->request (released with the arena). Providers that pass bytes through never pay for
 * the parse. NULL when the body does not parse or memory runs out. The provider may modify it.
 */
json_t *br_provider_call_request(struct br_provider_call *call);

extern const struct br_provider_ops br_provider_openai;
extern const struct br_provider_ops br_provider_anthropic;
extern const struct br_provider_ops br_provider_replay;
extern const struct br_provider_ops br_provider_local;

/** The built-in provider called `name`, or NULL. */
const struct br_provider_ops *br_provider_find(const char *name);

/**
 * Rough token count of text for estimates (when an upstream reports no usage): pieces as a
 * GPT-style pre-tokenizer splits them (letters, digit groups of up to 3, punctuation runs),
 * long words counted per 4 characters. Documented as an estimate wherever it is used.
 */
int64_t br_tokens_estimate(const char *text, size_t len);

/** Estimated prompt tokens of an OpenAI chat request (messages, with per-message overhead). */
int64_t br_tokens_estimate_chat(const json_t *request);

#endif
