/* SPDX-License-Identifier: MIT */
/*
 * The quality cost of a model variant (a quantized file, typically) against a reference model
 * (typically F32) on the same tokens: teacher-forced forward passes of the reference and of
 * every candidate in lockstep over a token sequence, compared position by position.
 *
 * Per scored position (the models have seen the same context and predict the next token):
 *   - KL(P_ref || P_cand) in nats, P = softmax of the logits, computed in double from
 *     max-shifted log-softmax values (log-sum-exp), clamped at 0 against rounding;
 *   - top-1 agreement: the argmax of both logit vectors is the same id (ties: lowest id);
 *   - the negative log-likelihood of the actual next token under each model.
 * Summaries: mean and max KL, agreement count, and the perplexity exp(mean NLL) of the
 * reference and of each candidate over all positions fed so far.
 *
 * Windows (long texts). A sequence of text tokens t_0..t_{n-1} (without BOS) is cut into
 * consecutive chunks of at most W - 1 tokens, W the window length (struct
 * br_quality_params.ctx; 0 = the smallest config.seq_len of the models). Each chunk is scored in
 * a window of its own that starts from an empty KV cache at position 0 with one leading
 * context token: BOS when bos >= 0 (so every text token is scored exactly once, the first token
 * of each chunk from BOS alone), otherwise the last token of the previous chunk (the text's
 * first token is then only context and is not scored). Windows do not overlap otherwise; a
 * token never sees context from before its window, which makes the perplexity of a long text
 * somewhat higher than a sliding window would give, but every position costs one forward pass
 * per model.
 *
 * The models must have the same shape (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size); br_quality_check_vocab also compares two vocabularies piece by piece. A window
 * longer than a model's own seq_len is allowed (the state is made for W positions): the
 * stories260K GGUF files declare 128 although the model was trained on 512.
 *
 * Memory: br_quality_create allocates every buffer (one forward state per model, two logit
 * vectors and one double vector of the vocabulary size); br_quality_feed allocates nothing.
 *
 * Ownership and threads: the models (config, weights) and LoRA adapters are borrowed and must
 * outlive the br_quality object; one object must not be used by two threads at once.
 */
#ifndef BR_ENGINE_QUALITY_H
#define BR_ENGINE_QUALITY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/lora.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"

#define BR_QUALITY_MAX_CANDIDATES 16
#define BR_QUALITY_ERR_CAP        320

/* A model taking part in a comparison. Everything is borrowed. */
struct br_quality_model {
    const char *name;                       /* for messages (file name); may be NULL */
    const struct br_llama_config *config;   /* borrowed */
    const struct br_llama_weights *weights; /* borrowed */
};

/* Called after every window with the tokens of the current br_quality_feed call that have been
 * scored (done) and the call's total (total). */
typedef void (*br_quality_progress_fn)(void *user, size_t done, size_t total);

struct br_quality_params {
    int ctx;       /* window length W in tokens, >= 2; 0 = the smallest seq_len of the models */
    int n_threads; /* forward-pass threads of each model (forward.h); <= 1: the caller only */
    const struct br_lora_use *lora;  /* applied alike to the reference and every candidate */
    int n_lora;                      /* 0..BR_LLAMA_MAX_LORA */
    br_quality_progress_fn progress; /* may be NULL */
    void *user;                      /* passed to progress */
};

/* The summary of one candidate against the reference over everything fed so far. */
struct br_quality_stats {
    size_t n_positions; /* scored positions */
    size_t n_top1;      /* positions whose argmax agrees */
    double top1;        /* n_top1 / n_positions (0 when nothing was scored) */
    double mean_kl;     /* nats */
    double max_kl;      /* nats */
    double nll_ref;     /* mean negative log-likelihood of the next token, nats */
    double nll_cand;
    double ppl_ref; /* exp(nll_ref); 0 when nothing was scored */
    double ppl_cand;
};

typedef struct br_quality br_quality;

/**
 * Prepares a comparison of n_cand (1..BR_QUALITY_MAX_CANDIDATES) candidates against ref: checks
 * the shapes and allocates a forward state per model with the params' threads and adapters.
 * Errors: BR_ERR_INVAL (a shape differs from the reference's, bad ctx, n_cand out of range,
 * an adapter that does not fit, n_threads > 256), BR_ERR_LIMIT (more adapters than a state
 * takes), BR_ERR_NOMEM (also when threads cannot be started). On error *out is NULL and err
 * (may be NULL) holds a message naming the model. Caller destroys with br_quality_destroy.
 */
int br_quality_create(const struct br_quality_model *ref, const struct br_quality_model *cand,
                      int n_cand, const struct br_quality_params *params, br_quality **out,
                      char *err, size_t err_cap);

/** Frees everything; NULL is a no-op. */
void br_quality_destroy(br_quality *q);

/** The window length W in use. */
int br_quality_window(const br_quality *q);

/**
 * Scores the text tokens ids[0..n) (no BOS) in windows as described above, with `bos` as the
 * leading token of every window (bos < 0: the previous token). Accumulates into the running
 * statistics. Allocates nothing. Returns BR_OK, BR_ERR_RANGE (an id or bos outside the
 * vocabulary; nothing of this call is counted then) or BR_ERR_UNSUPPORTED (a tensor type
 * without a kernel); err (may be NULL) receives a message.
 */
int br_quality_feed(br_quality *q, const int32_t *ids, size_t n, int32_t bos, char *err,
                    size_t err_cap);

/** Windows run so far by br_quality_feed. */
size_t br_quality_windows(const br_quality *q);

/** The statistics of candidate i (0-based) so far; zeroed when i is out of range. */
void br_quality_stats(const br_quality *q, int i, struct br_quality_stats *out);

/**
 * BR_OK when both vocabularies have the same size, the same BOS id and the same piece for every
 * id that text can produce (the same text gives the same ids); control, unknown and unused
 * tokens only have to be such tokens in both (their pieces differ between formats: llama2.c's
 * tok512.bin spells BOS "\n<s>\n", a GGUF "<s>"). Otherwise BR_ERR_INVAL with a message naming
 * `name` and the first id that differs. Scores are not compared (the reference's tokenizer
 * encodes the text).
 */
int br_quality_check_vocab(const struct br_tokenizer *ref, const struct br_tokenizer *cand,
                           const char *name, char *err, size_t err_cap);

#endif
