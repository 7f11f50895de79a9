/* SPDX-License-Identifier: MIT */
/*
 * The replay provider's recorded-answer store, shared by replay.c (the provider) and its unit
 * tests: loading a JSONL or CSV file of real model outputs into an immutable map from the
 * normalised prompt to the answer, the prompt normalisation itself, and the JSON string
 * escaper the provider builds its output with. Formats and normalisation:
 * docs/internals/providers.md.
 *
 * Thread-safety: a loaded model is immutable; any number of threads may look prompts up.
 */
#ifndef BR_UPSTREAM_PROVIDERS_REPLAY_INT_H
#define BR_UPSTREAM_PROVIDERS_REPLAY_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/map.h"
#include "core/slice.h"

/* Largest replay file accepted (bytes). */
#define BR__REPLAY_MAX_FILE_BYTES ((size_t)1 << 30)

struct br__replay_entry {
    const char *prompt; /* normalised prompt, NUL-terminated (the map key) */
    size_t prompt_len;
    const char *answer; /* recorded answer, NUL-terminated, valid UTF-8 */
    size_t answer_len;
    int64_t prompt_tokens;     /* recorded prompt tokens; -1 when not recorded */
    int64_t completion_tokens; /* recorded, else br_tokens_estimate of the answer */
    bool has_usage;            /* the file recorded usage for this answer */
    uint64_t hash;             /* FNV-1a of the normalised prompt (response ids) */
    size_t line;               /* line of the file the record starts on */
};

struct br__replay_model {
    br_arena *arena;     /* owns the entries, keys and answers */
    struct br_map map;   /* normalised prompt -> struct br__replay_entry * */
    size_t n_prompts;    /* distinct prompts */
    size_t n_duplicates; /* records whose prompt was already recorded (first one kept) */
};

/**
 * Loads `path` (".jsonl" or ".csv", by extension, case-insensitive) with the given field names
 * (NULL -> "prompt" / "response"). On failure writes one line naming the file and line into
 * err and returns BR_ERR_IO (unreadable), BR_ERR_PARSE (malformed), BR_ERR_LIMIT (too large),
 * BR_ERR_INVAL (unknown extension) or BR_ERR_NOMEM. Caller frees with br__replay_model_free.
 */
int br__replay_model_load(const char *path, const char *prompt_field, const char *response_field,
                          struct br__replay_model **out, char *err, size_t errlen);

/** Frees a model; NULL is a no-op. */
void br__replay_model_free(struct br__replay_model *m);

/** The entry for a normalised prompt, or NULL. */
const struct br__replay_entry *br__replay_model_lookup(const struct br__replay_model *m,
                                                       struct br_slice normalised_prompt);

/**
 * Appends the normalised form of s to out: leading and trailing whitespace removed and every
 * internal run of ASCII whitespace (space, tab, CR, LF, FF, VT) replaced by one space.
 * Returns BR_OK or the br_buf error.
 */
int br__replay_normalise(const char *s, size_t n, struct br_buf *out);

/**
 * Appends the lookup key of an OpenAI chat request (or of a bare messages array) to out: the
 * text of the last "user" message (a string, or its text parts joined with "\n"), normalised.
 * Returns BR_OK, BR_ERR_NOTFOUND when there is no user message with text, or a br_buf error.
 */
int br__replay_request_key(const json_t *request_or_messages, struct br_buf *out);

/** Appends s as a quoted JSON string (s must be valid UTF-8). Returns BR_OK or a br_buf error. */
int br__replay_json_string(struct br_buf *out, const char *s, size_t n);

/** True when the n bytes at s are well-formed UTF-8 (no overlongs, surrogates, > U+10FFFF). */
bool br__replay_utf8_valid(const char *s, size_t n);

#endif
