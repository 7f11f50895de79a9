/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the provider adapters (subsystem-private; tests may include it):
 *
 *   - JSON text tools that work on the raw bytes of a validated JSON object: a top-level
 *     member iterator and an editor that replaces, adds or drops top-level members while
 *     copying every other member byte for byte (no re-serialisation, so 0.7 stays 0.7);
 *   - OpenAI-shaped error bodies and br_provider_result fillers for transport failures and
 *     upstream HTTP errors (status rules in one place), secret redaction, Retry-After;
 *   - reading an OpenAI "usage" object;
 *   - the OpenAI stream processor (upstream SSE bytes -> chunks + usage), a pure function of
 *     its input so that it can be unit-tested and fuzzed without sockets.
 *
 * Thread-safety: none needed; everything works on caller-owned state.
 */
#ifndef BR_UPSTREAM_PROVIDERS_INT_H
#define BR_UPSTREAM_PROVIDERS_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "core/slice.h"
#include "core/usage.h"
#include "upstream/provider.h"
#include "upstream/sse.h"
#include "upstream/upstream.h"

/* ---- JSON text ------------------------------------------------------------------------ */

/**
 * Appends s as a JSON string literal (quotes included), escaping '"', '\\' and control
 * characters. Bytes >= 0x80 are copied as they are: s should be UTF-8. Errors as br_buf_append.
 */
int br__json_append_string(struct br_buf *b, const char *s, size_t n);

/* Member iteration and lookup on raw text come from core/json.h (br_json_obj_iter_*,
 * br_json_obj_find, br_json_key_eq). */

/** One change for br__json_edit. */
struct br__json_edit {
    const char *key;       /* member name (plain, unescaped) */
    struct br_slice value; /* new raw JSON value; ptr == NULL deletes the member */
    bool only_if_present;  /* replace an existing member but never add one */
};

/**
 * Writes obj with the edits applied to out (appended): an edited member keeps the place of
 * its first occurrence and later duplicates are dropped; members that were absent are added
 * at the end; all other members are copied byte for byte (whitespace between members is not
 * kept). At most 16 edits. Returns BR_OK, BR_ERR_PARSE, BR_ERR_INVAL, or a br_buf error.
 */
int br__json_edit(struct br_slice obj, const struct br__json_edit *edits, size_t n_edits,
                  struct br_buf *out);

/* ---- errors and results --------------------------------------------------------------- */

/**
 * Builds {"error":{"message":..,"type":..,"param":null,"code":..}} in arena memory. code may
 * be NULL (JSON null). BR_OK or BR_ERR_NOMEM.
 */
int br__provider_error_json(br_arena *a, const char *message, size_t message_len, const char *type,
                            const char *code, struct br_slice *out);

/**
 * Fills the failure fields of res (rc, status, error_kind, error_body) with an OpenAI error
 * of the given message/type/code. Falls back to a static body (and BR_ERR_NOMEM, 503) when
 * the arena is exhausted. Usage, timings and partial are left alone.
 */
void br__provider_fail(br_arena *a, int rc, int status, enum br_upstream_error kind,
                       const char *message, const char *type, const char *code,
                       struct br_provider_result *res);

/**
 * A transport or protocol failure: rc BR_ERR_UPSTREAM, status 504 for the timeout kinds and
 * 502 otherwise, type "upstream_error", code "upstream_<kind>" and a fixed message (never the
 * upstream's host names or the curl text, which stay in logs).
 */
void br__provider_fail_transport(br_arena *a, enum br_upstream_error kind,
                                 struct br_provider_result *res);

/**
 * An upstream non-2xx answer: rc BR_ERR_UPSTREAM, kind HTTP_STATUS, status = the upstream's
 * (only 4xx/5xx are kept; anything else becomes 502). A JSON body with an "error" object is
 * passed through (copied to the arena); anything else is wrapped as "upstream returned HTTP
 * <n>: <sanitized snippet>" with code "upstream_http_<n>". Occurrences of `secret` (the
 * upstream API key, may be NULL) are replaced by "***" in either case.
 */
void br__provider_fail_http(br_arena *a, int status, struct br_slice body, const char *secret,
                            struct br_provider_result *res);

/**
 * s with every occurrence of secret (when at least 8 bytes long) replaced by "***", copied to
 * the arena only when something was replaced. On OOM returns an empty slice.
 */
struct br_slice br__provider_redact(br_arena *a, struct br_slice s, const char *secret);

/**
 * Checks the parts of a target an HTTP provider sends upstream: base_url is http(s) (and
 * present when need_base_url), no line breaks in the key, extra headers are "Name: value"
 * lines. BR_OK, or BR_ERR_INVAL with a one-line reason in err.
 */
int br__provider_check_http_target(const struct br_provider_target *t, bool need_base_url,
                                   char *err, size_t errlen);

/** First header called name (ASCII case-insensitive), or an empty slice with ptr NULL. */
struct br_slice br__provider_header(const struct br_upstream_head *head, const char *name);

/**
 * Delay asked for by "retry-after-ms" or "Retry-After" (seconds or an HTTP date), in ms,
 * capped at one hour; 0 when absent or unparsable.
 */
uint32_t br__provider_retry_after_ms(const struct br_upstream_head *head);

/* ---- OpenAI --------------------------------------------------------------------------- */

/**
 * Reads an OpenAI usage object field by field: prompt_tokens, completion_tokens,
 * prompt_tokens_details.cached_tokens (or DeepSeek's prompt_cache_hit_tokens),
 * completion_tokens_details.reasoning_tokens. Missing or non-integer fields read as 0,
 * negatives as 0. Returns false (and leaves out alone) when usage is not an object.
 */
bool br__openai_usage_read(struct br_slice usage, struct br_usage *out);

/*
 * The OpenAI stream processor: fed the bytes of a streamed chat completion (SSE), it hands
 * every chat.completion.chunk payload to on_chunk unchanged (newlines, which can only be JSON
 * whitespace there, become spaces so that the caller's SSE framing stays intact), hides the
 * usage-only chunk when the client did not ask for usage, and keeps the accounting: usage
 * from whichever chunk carries one, a count and token estimate of the output deltas, model,
 * finish_reason and the time of the first content/tool-call delta.
 */
struct br__openai_stream {
    struct br_sse_parser sse;
    bool client_wants_usage;
    void (*on_chunk)(void *user, struct br_slice json); /* may set `stop` */
    void *user;
    bool stop;             /* set by the owner to drop everything after this point */
    int error;             /* sticky: first error returned by feed/finish */
    struct br_usage usage; /* as reported, when have_usage */
    bool have_usage;
    int64_t n_deltas;       /* content / refusal / reasoning / tool-call deltas */
    int64_t est_completion; /* br_tokens_estimate of their text, summed */
    int64_t n_chunks;       /* chunks handed to on_chunk */
    bool done;              /* "data: [DONE]" seen */
    bool saw_finish;        /* a non-null finish_reason seen */
    uint64_t t_first_token_ns;
    char model[256];          /* "model" of the first chunk naming one, truncated */
    char finish_reason[64];   /* last non-null finish_reason, truncated */
    struct br_buf scratch;    /* payload copy when it needs newline folding */
    struct br_buf error_body; /* the upstream's mid-stream error JSON (rc BR_ERR_UPSTREAM) */
};

/** Initialises st (events may be at most 4 MiB). Nothing to undo on failure. */
void br__openai_stream_init(struct br__openai_stream *st, bool client_wants_usage,
                            void (*on_chunk)(void *user, struct br_slice json), void *user);

/** Frees st's buffers. */
void br__openai_stream_cleanup(struct br__openai_stream *st);

/**
 * Feeds upstream body bytes. Returns BR_OK; BR_ERR_PARSE when a data payload other than
 * [DONE] is not a JSON object; BR_ERR_LIMIT for an oversized event; BR_ERR_UPSTREAM when the
 * upstream sent an error object mid-stream (its JSON is in st->error_body); BR_ERR_NOMEM.
 * Errors are sticky. Returns BR_OK without doing anything once `stop` is set.
 */
int br__openai_stream_feed(struct br__openai_stream *st, const char *data, size_t n);

/** End of the upstream body: processes a last event that lacked its blank line. As feed. */
int br__openai_stream_finish(struct br__openai_stream *st);

/**
 * Processes one complete chat.completion.chunk payload as if it had arrived in the stream
 * (used for JSON fallbacks). As feed.
 */
int br__openai_stream_payload(struct br__openai_stream *st, struct br_slice data);

/**
 * A whole chat.completion (an upstream that answered a stream request with JSON) turned into
 * chunks: one chunk carrying every choice's message as its delta, then a usage chunk when
 * usage is present. BR_ERR_PARSE when body is not a JSON object with a "choices" array,
 * otherwise as feed.
 */
int br__openai_stream_from_completion(struct br__openai_stream *st, struct br_slice body);

/**
 * Usage for the result: the reported one, or an estimate (prompt from request via
 * br_tokens_estimate_chat, completion = max(delta count, text estimate), reported = false).
 */
void br__openai_stream_usage(const struct br__openai_stream *st, const json_t *request,
                             struct br_usage *out);

/**
 * Checks a non-streamed chat.completion body and reads usage, model and finish_reason into st
 * (have_usage, usage, model, finish_reason). BR_ERR_PARSE unless body is a JSON object with a
 * "choices" array.
 */
int br__openai_body_scan(struct br__openai_stream *st, struct br_slice body);

#endif
