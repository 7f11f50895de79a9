/* SPDX-License-Identifier: MIT */
/*
 * The embedded engine's front door: a model handle (weights + tokenizer) opened from a file,
 * and text generation on it (prompt text in, streamed text pieces out).
 *
 * A model is opened from either
 *   - a GGUF file (model.h): the llama weights and the tokenizer built from the file's own
 *     vocabulary (tokenizer.ggml.tokens / scores / token_type, bos/eos/unk ids; the
 *     tokenizer.ggml.model must be "llama"); BOS is put in front of the prompt unless
 *     tokenizer.ggml.add_bos_token is false; or
 *   - a llama2.c checkpoint (.bin, llama2c.h) plus a llama2.c tokenizer.bin whose path the
 *     caller passes (nothing is guessed); BOS is always put in front of the prompt.
 * The format is told by the first four bytes ("GGUF").
 *
 * Generation: the prompt is encoded, run through the forward pass position by position, then
 * up to max_tokens tokens are sampled (sample.h). It stops
 *   - at the tokenizer's EOS token (not reported, not counted, finish "stop"),
 *   - when the text produced so far contains one of up to BR_ENGINE_MAX_STOP stop strings
 *     (the stop string and everything after it are not emitted, finish "stop"),
 *   - after max_tokens tokens, or when prompt + completion fill the context (config.seq_len
 *     tokens; the last sampled token is not run through the model) (finish "length").
 * Stop strings may span token boundaries: text that could still be the start of a stop string
 * is held back and released (or dropped) once the following tokens decide it. Likewise the
 * bytes of a UTF-8 character spelled by several byte tokens are held back until the character
 * is complete, so every streamed piece is whole characters (unless the model itself produces
 * invalid UTF-8, which is released as it is at the end).
 *
 * Streaming: on_token (optional) is called once per sampled token with the text released by
 * that token (possibly empty when held back, or longer when it releases earlier held text),
 * its id, its log-probability and the top-n alternatives (sample.h: log-softmax of the raw
 * logits). Held-back text that is released at the end (EOS, length) comes in one last call
 * with token -1. The callback returns BR_OK to continue or any error to stop generation, which
 * br_engine_generate then returns (BR_ERR_CANCELED is the conventional "client went away").
 *
 * Ownership: a br_engine_model owns its mapping(s), weights and tokenizer; it is immutable after
 * opening and may be used by several br_engine_generate calls at once from different threads
 * (each call allocates its own forward state, KV cache and sampler).
 */
#ifndef BR_ENGINE_ENGINE_H
#define BR_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"
#include "core/slice.h"
#include "engine/lora.h"
#include "engine/sample.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"

#define BR_ENGINE_MAX_STOP         4
#define BR_ENGINE_MAX_STOP_LEN     256 /* bytes of one stop string */
#define BR_ENGINE_MAX_TOP_LOGPROBS 20
#define BR_ENGINE_ERR_CAP          320 /* enough for any message of this module */

typedef struct br_engine_model br_engine_model;

enum br_engine_format { BR_ENGINE_FORMAT_GGUF, BR_ENGINE_FORMAT_LLAMA2C };

enum br_engine_finish { BR_ENGINE_FINISH_STOP, BR_ENGINE_FINISH_LENGTH };

/* One streamed step. Everything is borrowed for the duration of the callback only. */
struct br_engine_token {
    struct br_slice text;               /* text released now (may be empty) */
    int token;                          /* sampled id; -1 for the final flush */
    float logprob;                      /* log-probability of token (0 for the flush) */
    const struct br_token_logprob *top; /* n_top most likely alternatives */
    int n_top;
};

typedef int (*br_engine_token_fn)(void *user, const struct br_engine_token *tok);

struct br_engine_gen_params {
    struct br_sampler_params sampler;
    int max_tokens;                       /* <= 0: until EOS, a stop string or the context */
    const char *stop[BR_ENGINE_MAX_STOP]; /* NUL-terminated, non-empty; NULL entries unused */
    int top_logprobs;                     /* 0..BR_ENGINE_MAX_TOP_LOGPROBS */
    br_engine_token_fn on_token;          /* may be NULL */
    void *user;                           /* passed to on_token */
    int n_threads; /* forward-pass threads (forward.h run config); <= 1: the caller only */
    /* added: LoRA adapters applied at run time to this generation (forward.h,
     * br_llama_state_set_lora); opened with br_lora_open against this model's config. */
    const struct br_lora_use *lora; /* n_lora entries, borrowed; NULL when n_lora == 0 */
    int n_lora;                     /* 0..BR_LLAMA_MAX_LORA (8) */
};

struct br_engine_gen_result {
    size_t prompt_tokens;     /* including BOS */
    size_t completion_tokens; /* sampled tokens, EOS excluded */
    enum br_engine_finish finish;
    struct br_buf text; /* the whole emitted text; caller frees with br_engine_gen_result_free */
};

/**
 * Opens the model at `path` (GGUF, or llama2.c .bin with tokenizer_path required). Errors:
 * BR_ERR_IO / BR_ERR_NOTFOUND (file), BR_ERR_PARSE (malformed model or vocabulary),
 * BR_ERR_UNSUPPORTED (not a llama model / tokenizer), BR_ERR_INVAL (a .bin without
 * tokenizer_path, or a vocabulary size that differs from the model's), BR_ERR_NOMEM. On error
 * *out is NULL and err (may be NULL) holds a message naming the file.
 */
int br_engine_model_open(const char *path, const char *tokenizer_path, br_engine_model **out,
                         char *err, size_t err_cap);

/** Frees everything; NULL is a no-op. */
void br_engine_model_close(br_engine_model *m);

/** Borrowed views (valid until close). */
const struct br_llama_config *br_engine_model_config(const br_engine_model *m);
const struct br_llama_weights *br_engine_model_weights(const br_engine_model *m);
const struct br_tokenizer *br_engine_model_tokenizer(const br_engine_model *m);
enum br_engine_format br_engine_model_format(const br_engine_model *m);
bool br_engine_model_add_bos(const br_engine_model *m);

/** Zeroed params with greedy sampling and no limits other than the context. */
void br_engine_gen_params_init(struct br_engine_gen_params *p);

/**
 * Generates a continuation of `prompt` (len bytes, any text). *res is initialised by this call
 * (free it with br_engine_gen_result_free, also after an error). Returns BR_OK; BR_ERR_INVAL
 * (bad params: a stop string empty or longer than BR_ENGINE_MAX_STOP_LEN, top_logprobs out of
 * range); BR_ERR_LIMIT (the prompt does not leave room for one token in the context);
 * BR_ERR_UNSUPPORTED (a tensor type the forward pass has no kernel for); BR_ERR_NOMEM (also when
 * the threads cannot be started); BR_ERR_INVAL also for n_threads > 256 or an adapter that does not
 * fit the model; BR_ERR_LIMIT for more than 8 adapters; or the callback's error. err (may be NULL)
 * receives a message.
 */
int br_engine_generate(const br_engine_model *m, const char *prompt, size_t len,
                       const struct br_engine_gen_params *p, struct br_engine_gen_result *res,
                       char *err, size_t err_cap);

/** Frees the result's text; safe on a zeroed result. */
void br_engine_gen_result_free(struct br_engine_gen_result *res);

/** "stop" or "length". */
const char *br_engine_finish_name(enum br_engine_finish f);

#endif
