/* SPDX-License-Identifier: MIT */
/*
 * The anthropic provider's pure translation layer, shared by anthropic.c (the network side)
 * and its unit tests and fuzz target: OpenAI chat.completions request -> Messages API request,
 * Messages API response and error bodies -> OpenAI shapes, and the streamed event translator
 * (one SSE event in, zero or more chat.completion.chunk objects out). Nothing here touches the
 * network or the event loop. Mapping tables: docs/internals/providers.md.
 *
 * Thread-safety: functions are reentrant; a stream translator belongs to one call.
 */
#ifndef BR_UPSTREAM_PROVIDERS_ANTHROPIC_INT_H
#define BR_UPSTREAM_PROVIDERS_ANTHROPIC_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/slice.h"
#include "core/usage.h"
#include "upstream/provider.h"

#define BR__ANTHROPIC_VERSION          "2023-06-01"
#define BR__ANTHROPIC_DEFAULT_BASE_URL "https://api.anthropic.com/v1"
#define BR__ANTHROPIC_DEFAULT_MAX      4096

/* A client-facing error found while translating (always delivered with `status`). */
struct br__anthropic_err {
    int status;       /* HTTP status for the client */
    const char *type; /* OpenAI error type, static string */
    char param[64];   /* offending request field ("messages[2].content"), "" for none */
    const char *code; /* static string or NULL */
    char message[320];
};

/**
 * Translates a decoded OpenAI chat.completions request into a Messages API request body.
 * `t` supplies the model (upstream_model, else name) and default_max_tokens. `stream` sets
 * "stream": true. On success *out is a new reference the caller decrefs. Returns BR_OK,
 * BR_ERR_INVAL (the request cannot be expressed or is malformed; *err says why, status 400),
 * or BR_ERR_NOMEM.
 */
int br__anthropic_request_build(const json_t *req, const struct br_provider_target *t, bool stream,
                                json_t **out, struct br__anthropic_err *err);

/** OpenAI finish_reason for an Anthropic stop_reason (NULL -> "stop"); static string. */
const char *br__anthropic_finish_reason(const char *stop_reason);

/**
 * Translates a Messages API response body (HTTP 2xx) into an OpenAI chat.completion object.
 * `fallback_model` is used when the body names none; `created` is the Unix time to report.
 * Fills *usage (reported = true) and *finish_reason (static string). *model_out (may be NULL)
 * receives the model the body names, as a NUL-terminated string owned by *out. Returns BR_OK,
 * BR_ERR_PARSE (not a Messages API message) or BR_ERR_NOMEM.
 */
int br__anthropic_response_build(const char *body, size_t len, const char *fallback_model,
                                 int64_t created, json_t **out, struct br_usage *usage,
                                 const char **finish_reason, const char **model_out);

/** The OpenAI usage object for u (prompt/completion/total, prompt_tokens_details). */
json_t *br__anthropic_usage_json(const struct br_usage *u);

/**
 * Merges an Anthropic usage object into *u field by field: input_tokens,
 * cache_read_input_tokens and cache_creation_input_tokens make up prompt_tokens (the last
 * value seen of each counts, as the API reports them cumulatively), output_tokens sets
 * completion_tokens. `parts` keeps the last seen components between calls (4 slots, -1 when
 * never seen). Negative or non-integer values are ignored. Returns true when output_tokens
 * was present.
 */
bool br__anthropic_usage_merge(const json_t *usage, int64_t parts[4], struct br_usage *u);

/** OpenAI type, code and HTTP status for an Anthropic error type (unknown -> upstream_error). */
struct br__anthropic_error_kind {
    const char *anthropic_type;
    const char *openai_type;
    const char *code; /* may be NULL */
    int status;       /* status Anthropic uses for it */
};
const struct br__anthropic_error_kind *br__anthropic_error_lookup(const char *anthropic_type);

/**
 * Writes {"error":{"message","type","param","code"}} into out (appending). NULL param/code
 * become JSON null. Returns BR_OK, BR_ERR_NOMEM or BR_ERR_LIMIT.
 */
int br__anthropic_error_json(struct br_buf *out, const char *message, const char *type,
                             const char *param, const char *code);

/**
 * Translates a non-2xx upstream body into the OpenAI error shape (appending to out). A body
 * that is not an Anthropic error object gives type "upstream_error", code
 * "upstream_http_status" and a message naming the status. Returns as br__anthropic_error_json.
 */
int br__anthropic_error_translate(int status, const char *body, size_t len, struct br_buf *out);

/** Serialises j compactly, appending to out. Returns BR_OK, BR_ERR_NOMEM or BR_ERR_LIMIT. */
int br__anthropic_json_dump(const json_t *j, struct br_buf *out);

/* ---- streamed responses ---- */

enum br__anthropic_block {
    BR__ANTHROPIC_BLOCK_NONE = 0,
    BR__ANTHROPIC_BLOCK_TEXT,
    BR__ANTHROPIC_BLOCK_TOOL,
    BR__ANTHROPIC_BLOCK_OTHER, /* thinking, server tools ...: not forwarded */
};

#define BR__ANTHROPIC_ID_MAX 160

/*
 * Stream translator state. Chunks go to emit(); usage and ids are kept for the final result.
 * Initialise with br__anthropic_stream_init, free with br__anthropic_stream_cleanup.
 */
struct br__anthropic_stream {
    /* in (set by init) */
    int64_t created;    /* Unix seconds shared by all chunks */
    bool include_usage; /* emit the final usage chunk (stream_options.include_usage) */
    int (*emit)(void *user, struct br_slice chunk); /* non-zero return stops the feed */
    void *user;
    /* out */
    bool started;                     /* message_start seen */
    bool finished;                    /* message_stop seen */
    bool saw_output_usage;            /* a message_delta reported output_tokens */
    bool saw_content;                 /* a text or tool delta was emitted */
    struct br_usage usage;            /* merged from message_start and message_delta */
    int64_t usage_parts[4];           /* see br__anthropic_usage_merge */
    int64_t est_output_tokens;        /* estimate from the deltas seen (for cut-short streams) */
    const char *finish_reason;        /* static string, NULL until message_delta */
    uint64_t t_first_token_ns;        /* monotonic time of the first content delta, 0 if none */
    char id[BR__ANTHROPIC_ID_MAX];    /* "chatcmpl-" + message id */
    char model[BR__ANTHROPIC_ID_MAX]; /* model named by message_start */
    char error_type[64];              /* after an `error` event: Anthropic error type */
    char error_message[512];          /* after an `error` event: its message */
    /* private */
    enum br__anthropic_block block; /* kind of the open content block */
    int64_t block_index;            /* index of the open content block, -1 when none */
    int64_t tool_index;             /* OpenAI tool_calls index of the open tool block */
    int64_t n_tools;                /* tool_use blocks seen */
    struct br_buf out;              /* scratch for chunk JSON */
};

/** Initialises a translator; `fallback_model` names the model until message_start does. */
void br__anthropic_stream_init(struct br__anthropic_stream *s, const char *fallback_model,
                               int64_t created, bool include_usage,
                               int (*emit)(void *user, struct br_slice chunk), void *user);

/** Frees the translator's buffer. */
void br__anthropic_stream_cleanup(struct br__anthropic_stream *s);

/**
 * Feeds one SSE event (its `event:` name, which may be empty, and its data). The type is read
 * from the data's "type" field. Returns BR_OK; BR_ERR_UPSTREAM after an `error` event
 * (error_type/error_message filled); BR_ERR_PARSE when the event is not valid Messages API
 * streaming JSON or breaks the event order; BR_ERR_NOMEM/BR_ERR_LIMIT; or emit's non-zero
 * return. Events after message_stop are ignored.
 */
int br__anthropic_stream_feed(struct br__anthropic_stream *s, struct br_slice event,
                              struct br_slice data);

/** completion_tokens to bill for a stream that stopped early: reported, else estimated. */
int64_t br__anthropic_stream_output_tokens(const struct br__anthropic_stream *s);

/**
 * Replays a whole Messages API message (an upstream that answered a stream request with JSON)
 * through the translator as the events a stream of it would have had, so that the client gets
 * the same chunks. Returns as br__anthropic_stream_feed; BR_ERR_PARSE when body is not a
 * message.
 */
int br__anthropic_stream_from_message(struct br__anthropic_stream *s, const char *body, size_t len);

#endif
