/* SPDX-License-Identifier: MIT */
/*
 * Sampling. Top-k uses a size-k min-heap (O(n log k)) instead of sorting the vocabulary; a
 * top-p-only cut first drops tokens that cannot be in the nucleus: with n tokens, any token
 * below (1 - top_p) / (n - 1) can be removed, because all tokens below that bound together
 * hold less than 1 - top_p of the mass.
 */
#include "engine/sample.h"

#include <math.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "core/err.h"

int br_sampler_init(struct br_sampler *s, int vocab_size, const struct br_sampler_params *params)
{
    *s = (struct br_sampler){0};
    if (vocab_size < 1) {
        return BR_ERR_INVAL;
    }
    s->vocab_size = vocab_size;
    s->params = *params;
    s->probs = br_calloc((size_t)vocab_size, sizeof(*s->probs));
    s->cands = br_calloc((size_t)vocab_size, sizeof(*s->cands));
    if (!s->probs || !s->cands) {
        br_sampler_cleanup(s);
        return BR_ERR_NOMEM;
    }
    br_rng_seed(&s->rng, params->seed);
    return BR_OK;
}

void br_sampler_cleanup(struct br_sampler *s)
{
    br_free(s->probs);
    br_free(s->cands);
    s->probs = NULL;
    s->cands = NULL;
}

int br_sample_argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    return best;
}

/* a ranks before b: more likely, or equally likely with a lower id */
static int better(const struct br__sample_cand *a, const struct br__sample_cand *b)
{
    return a->p > b->p || (a->p == b->p && a->id < b->id);
}

static int cmp_cand(const void *x, const void *y)
{
    const struct br__sample_cand *a = x;
    const struct br__sample_cand *b = y;
    return better(a, b) ? -1 : (better(b, a) ? 1 : 0);
}

/* Restores the min-heap (worst candidate at the root) below index i. */
static void sift_down(struct br__sample_cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t worst = i;
        size_t l = 2 * i + 1;
        size_t r = l + 1;
        if (l < n && better(&h[worst], &h[l])) {
            worst = l;
        }
        if (r < n && better(&h[worst], &h[r])) {
            worst = r;
        }
        if (worst == i) {
            return;
        }
        struct br__sample_cand t = h[i];
        h[i] = h[worst];
        h[worst] = t;
        i = worst;
    }
}

/* Keeps the k best of c[0..n) in c[0..k), sorted best first. */
static void select_top_k(struct br__sample_cand *c, size_t n, size_t k)
{
    for (size_t i = k / 2; i-- > 0;) {
        sift_down(c, k, i);
    }
    for (size_t i = k; i < n; i++) {
        if (better(&c[i], &c[0])) {
            c[0] = c[i];
            sift_down(c, k, 0);
        }
    }
    qsort(c, k, sizeof(*c), cmp_cand);
}

/* probs = softmax(logits / temperature); BR_ERR_INVAL on NaN. */
static int scaled_softmax(struct br_sampler *s, const float *logits)
{
    int n = s->vocab_size;
    float inv_t = 1.0f / s->params.temperature;
    float max = logits[br_sample_argmax(logits, n)];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        if (isnan(logits[i])) {
            return BR_ERR_INVAL;
        }
        s->probs[i] = expf((logits[i] - max) * inv_t);
        sum += s->probs[i];
    }
    float inv_sum = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) {
        s->probs[i] *= inv_sum;
    }
    return BR_OK;
}

/*
 * Fills the candidate list (after top-k, or after the nucleus pre-filter) and returns its size;
 * *mass_out is the probability mass the nucleus is measured against (the top-k tokens' mass, or
 * 1 when there is no top-k cut).
 */
static size_t gather(struct br_sampler *s, double *mass_out)
{
    size_t n = (size_t)s->vocab_size;
    int k = s->params.top_k;
    float top_p = s->params.top_p;
    int nucleus_only = (k <= 0 || (size_t)k >= n) && top_p < 1.0f && n > 1;
    float cutoff = nucleus_only ? (1.0f - top_p) / (float)(n - 1) : 0.0f;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (s->probs[i] >= cutoff) {
            s->cands[m++] = (struct br__sample_cand){.p = s->probs[i], .id = (int)i};
        }
    }
    *mass_out = 1.0;
    if (m == 0) { /* only by rounding: keep the best token */
        s->cands[0] = (struct br__sample_cand){.p = 1.0f, .id = br_sample_argmax(s->probs, (int)n)};
        return 1;
    }
    if (k > 0 && (size_t)k < m) {
        select_top_k(s->cands, m, (size_t)k);
        *mass_out = 0.0;
        for (int i = 0; i < k; i++) {
            *mass_out += s->cands[i].p;
        }
        return (size_t)k;
    }
    if (top_p < 1.0f) {
        qsort(s->cands, m, sizeof(*s->cands), cmp_cand);
    }
    return m;
}

/* Shortest prefix of sorted candidates holding top_p of `mass` (at least one). */
static size_t nucleus(const struct br__sample_cand *c, size_t m, float top_p, double mass)
{
    double want = (double)top_p * mass;
    double cum = 0.0;
    for (size_t i = 0; i < m; i++) {
        cum += c[i].p;
        if (cum >= want) {
            return i + 1;
        }
    }
    return m;
}

static int draw(struct br_sampler *s, size_t m)
{
    double total = 0.0;
    for (size_t i = 0; i < m; i++) {
        total += s->cands[i].p;
    }
    double r = br_rng_uniform(&s->rng) * total;
    double cum = 0.0;
    for (size_t i = 0; i < m; i++) {
        cum += s->cands[i].p;
        if (r < cum) {
            return s->cands[i].id;
        }
    }
    return s->cands[m - 1].id; /* rounding */
}

int br_sampler_sample(struct br_sampler *s, const float *logits, int *token_out)
{
    const struct br_sampler_params *p = &s->params;
    if (p->temperature <= 0.0f || p->top_k == 1 || p->top_p <= 0.0f) {
        *token_out = br_sample_argmax(logits, s->vocab_size);
        return isnan(logits[*token_out]) ? BR_ERR_INVAL : BR_OK;
    }
    int rc = scaled_softmax(s, logits);
    if (rc != BR_OK) {
        return rc;
    }
    double mass = 1.0;
    size_t m = gather(s, &mass);
    if (p->top_p < 1.0f) {
        m = nucleus(s->cands, m, p->top_p, mass);
    }
    *token_out = draw(s, m);
    return BR_OK;
}

/* Inserts (id, lp) into the sorted list top[0..*len) capped at cap entries. */
static void insert_top(struct br_token_logprob *top, int *len, int cap, int id, float lp)
{
    int i;
    if (*len == cap) {
        if (top[cap - 1].logprob >= lp) {
            return; /* not better than the last kept one (ties keep the lower id) */
        }
        i = cap - 1;
    } else {
        i = (*len)++;
    }
    while (i > 0 && top[i - 1].logprob < lp) {
        top[i] = top[i - 1];
        i--;
    }
    top[i] = (struct br_token_logprob){.token = id, .logprob = lp};
}

int br_sample_logprobs(const float *logits, int n, int token, struct br_token_logprob *top,
                       int top_n, float *chosen_out)
{
    if (n < 1 || token < 0 || token >= n || top_n < 0 || (top_n > 0 && !top)) {
        return BR_ERR_INVAL;
    }
    float max = logits[br_sample_argmax(logits, n)];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += exp((double)logits[i] - (double)max);
    }
    if (!(sum >= 1.0)) { /* the max term alone is exp(0) = 1; less only with NaN */
        return BR_ERR_INVAL;
    }
    double lse = (double)max + log(sum);
    *chosen_out = (float)((double)logits[token] - lse);
    int cap = top_n < n ? top_n : n;
    int len = 0;
    for (int i = 0; i < n && cap > 0; i++) {
        insert_top(top, &len, cap, i, (float)((double)logits[i] - lse));
    }
    return BR_OK;
}
