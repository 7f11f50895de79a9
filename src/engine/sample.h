/* SPDX-License-Identifier: MIT */
/*
 * Token sampling from a logits vector: greedy (temperature <= 0), temperature, top-k and top-p
 * (nucleus), driven by a seeded xoshiro generator (core/rand.h) so a seed reproduces a
 * sequence; and log-probabilities for OpenAI-style `logprobs` (the chosen token's and the
 * top-n alternatives', from the log-softmax of the raw logits, i.e. temperature 1 and before any
 * top-k/top-p truncation, which is what the model assigned).
 *
 * Order of the filters: temperature scales the logits, top-k keeps the k most likely tokens,
 * top-p keeps the smallest prefix of those (most likely first) whose probability mass, relative
 * to the kept mass, reaches top_p (always at least one token, so top_p <= 0 is greedy), then
 * one token is drawn in proportion to the remaining probabilities. Ties between equal
 * probabilities go to the lower token id.
 *
 * A struct br_sampler owns its scratch buffers (allocated once by br_sampler_init);
 * br_sampler_sample allocates nothing. One sampler per generation context; not thread-safe.
 */
#ifndef BR_ENGINE_SAMPLE_H
#define BR_ENGINE_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "core/rand.h"

struct br_sampler_params {
    float temperature; /* <= 0: greedy (argmax) */
    int top_k;         /* <= 0 or >= vocab: no top-k cut */
    float top_p;       /* >= 1: no nucleus cut; <= 0: only the most likely token */
    uint64_t seed;     /* 0: seeded from the kernel CSPRNG */
};

struct br__sample_cand {
    float p;
    int id;
};

struct br_sampler {
    int vocab_size;
    struct br_sampler_params params;
    struct br_rng rng;
    float *probs;                  /* (vocab_size) scratch */
    struct br__sample_cand *cands; /* (vocab_size) scratch */
};

/** One entry of a log-probability list. */
struct br_token_logprob {
    int token;
    float logprob; /* natural log, <= 0 */
};

/**
 * Initialises s for vocabularies of vocab_size tokens (>= 1) with a copy of *params.
 * Returns BR_OK, BR_ERR_INVAL or BR_ERR_NOMEM. Release with br_sampler_cleanup.
 */
int br_sampler_init(struct br_sampler *s, int vocab_size, const struct br_sampler_params *params);

/** Frees the scratch buffers; safe on a zeroed or already cleaned-up sampler. */
void br_sampler_cleanup(struct br_sampler *s);

/**
 * Picks the next token from vocab_size logits (not modified) into *token_out. Allocates
 * nothing. Returns BR_OK, or BR_ERR_INVAL when a logit is NaN.
 */
int br_sampler_sample(struct br_sampler *s, const float *logits, int *token_out);

/** Index of the largest of n >= 1 logits (lowest index on ties). */
int br_sample_argmax(const float *logits, int n);

/**
 * Log-softmax of n logits at `token` into *chosen_out, and the top_n most likely tokens (most
 * likely first, ties to the lower id) into top[0..min(top_n, n)); top may be NULL when
 * top_n == 0. Allocates nothing; O(n * top_n). Returns BR_OK or BR_ERR_INVAL (bad token/n, NaN
 * logits).
 */
int br_sample_logprobs(const float *logits, int n, int token, struct br_token_logprob *top,
                       int top_n, float *chosen_out);

#endif
