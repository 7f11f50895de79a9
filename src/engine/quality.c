/* SPDX-License-Identifier: MIT */
/*
 * Teacher-forced comparison of candidate models against a reference: the reference and every
 * candidate run the same tokens in lockstep, one forward state each; per position the
 * reference's log-softmax is computed once (double) and each candidate's logits are compared
 * with it (KL, argmax, NLL of the next token). See quality.h for the window rule.
 */
#include "engine/quality.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "engine/forward.h"

#define MAX_WINDOW (1 << 20) /* tokens; beyond this the KV cache alone is absurd */

struct cand_acc {
    size_t n;
    size_t top1;
    double kl_sum;
    double kl_max;
    double nll_sum;
};

struct br_quality {
    int n_cand;
    int window;
    int vocab;
    struct br_llama_config configs[BR_QUALITY_MAX_CANDIDATES + 1]; /* [0] ref; seq_len = window */
    struct br_llama_state *states[BR_QUALITY_MAX_CANDIDATES + 1];  /* [0] ref */
    struct cand_acc acc[BR_QUALITY_MAX_CANDIDATES];
    double nll_ref_sum;
    size_t windows;
    float *ref_logits;  /* (vocab) */
    float *cand_logits; /* (vocab) */
    double *ref_lp;     /* (vocab) reference log-probabilities of the current position */
    br_quality_progress_fn progress;
    void *user;
};

static const char *model_name(const struct br_quality_model *m, const char *fallback)
{
    return m->name ? m->name : fallback;
}

static int same_shape(const struct br_llama_config *a, const struct br_llama_config *b)
{
    return a->dim == b->dim && a->hidden_dim == b->hidden_dim && a->n_layers == b->n_layers &&
           a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads &&
           a->vocab_size == b->vocab_size;
}

static int check_models(const struct br_quality_model *ref, const struct br_quality_model *cand,
                        int n_cand, char *err, size_t cap)
{
    if (n_cand < 1 || n_cand > BR_QUALITY_MAX_CANDIDATES) {
        return br_err_fail(err, cap, BR_ERR_INVAL, "between 1 and %d candidates, not %d",
                           BR_QUALITY_MAX_CANDIDATES, n_cand);
    }
    const struct br_llama_config *r = ref->config;
    for (int i = 0; i < n_cand; i++) {
        const struct br_llama_config *c = cand[i].config;
        if (!same_shape(r, c)) {
            return br_err_fail(err, cap, BR_ERR_INVAL,
                               "%s: not the reference's shape (dim %d, hidden %d, layers %d, "
                               "heads %d/%d, vocab %d; the reference %s has %d, %d, %d, %d/%d, %d)",
                               model_name(&cand[i], "candidate"), c->dim, c->hidden_dim,
                               c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
                               model_name(ref, "model"), r->dim, r->hidden_dim, r->n_layers,
                               r->n_heads, r->n_kv_heads, r->vocab_size);
        }
    }
    return BR_OK;
}

static int pick_window(const struct br_quality_model *ref, const struct br_quality_model *cand,
                       int n_cand, int ctx, char *err, size_t cap, int *out)
{
    if (ctx != 0 && (ctx < 2 || ctx > MAX_WINDOW)) {
        return br_err_fail(err, cap, BR_ERR_INVAL, "window of %d tokens: must be 2..%d", ctx,
                           MAX_WINDOW);
    }
    int w = ref->config->seq_len;
    for (int i = 0; i < n_cand; i++) {
        w = cand[i].config->seq_len < w ? cand[i].config->seq_len : w;
    }
    w = ctx != 0 ? ctx : w;
    if (w < 2) {
        return br_err_fail(err, cap, BR_ERR_INVAL, "a context of %d tokens scores nothing", w);
    }
    *out = w;
    return BR_OK;
}

static int make_state(br_quality *q, int k, const struct br_quality_model *m,
                      const struct br_quality_params *p, char *err, size_t cap)
{
    q->configs[k] = *m->config;
    q->configs[k].seq_len = q->window;
    struct br_llama_run_config run = {.n_threads = p->n_threads};
    int rc = br_llama_state_create_ex(&q->configs[k], m->weights, &run, &q->states[k]);
    if (rc != BR_OK) {
        return br_err_fail(err, cap, rc, "%s: cannot make a forward state for %d positions: %s",
                           model_name(m, "model"), q->window, br_strerror(rc));
    }
    if (p->n_lora > 0) {
        rc = br_llama_state_set_lora(q->states[k], p->lora, p->n_lora);
        if (rc != BR_OK) {
            return br_err_fail(err, cap, rc, "%s: cannot apply the adapters: %s",
                               model_name(m, "model"), br_strerror(rc));
        }
    }
    return BR_OK;
}

int br_quality_create(const struct br_quality_model *ref, const struct br_quality_model *cand,
                      int n_cand, const struct br_quality_params *params, br_quality **out,
                      char *err, size_t err_cap)
{
    static const struct br_quality_params defaults;
    const struct br_quality_params *p = params ? params : &defaults;
    *out = NULL;
    if (err && err_cap > 0) {
        err[0] = '\0';
    }
    int window = 0;
    int rc = check_models(ref, cand, n_cand, err, err_cap);
    rc = rc == BR_OK ? pick_window(ref, cand, n_cand, p->ctx, err, err_cap, &window) : rc;
    if (rc != BR_OK) {
        return rc;
    }
    br_quality *q = br_calloc(1, sizeof(*q));
    if (!q) {
        return br_err_fail(err, err_cap, BR_ERR_NOMEM, "out of memory");
    }
    q->n_cand = n_cand;
    q->window = window;
    q->vocab = ref->config->vocab_size;
    q->progress = p->progress;
    q->user = p->user;
    size_t vocab = (size_t)q->vocab;
    q->ref_logits = br_calloc(vocab, sizeof(*q->ref_logits));
    q->cand_logits = br_calloc(vocab, sizeof(*q->cand_logits));
    q->ref_lp = br_calloc(vocab, sizeof(*q->ref_lp));
    if (!q->ref_logits || !q->cand_logits || !q->ref_lp) {
        rc = br_err_fail(err, err_cap, BR_ERR_NOMEM, "out of memory");
        goto fail;
    }
    rc = make_state(q, 0, ref, p, err, err_cap);
    for (int i = 0; i < n_cand && rc == BR_OK; i++) {
        rc = make_state(q, i + 1, &cand[i], p, err, err_cap);
    }
    if (rc != BR_OK) {
        goto fail;
    }
    *out = q;
    return BR_OK;
fail:
    br_quality_destroy(q);
    return rc;
}

void br_quality_destroy(br_quality *q)
{
    if (!q) {
        return;
    }
    for (int k = 0; k <= q->n_cand; k++) {
        br_llama_state_destroy(q->states[k]);
    }
    br_free(q->ref_logits);
    br_free(q->cand_logits);
    br_free(q->ref_lp);
    br_free(q);
}

int br_quality_window(const br_quality *q)
{
    return q->window;
}

size_t br_quality_windows(const br_quality *q)
{
    return q->windows;
}

/* max and log(sum(exp(x - max))) of n logits, in double. */
static void log_norm(const float *x, int n, double *max_out, double *lse_out)
{
    double m = x[0];
    for (int i = 1; i < n; i++) {
        m = x[i] > m ? x[i] : m;
    }
    double z = 0;
    for (int i = 0; i < n; i++) {
        z += exp((double)x[i] - m);
    }
    *max_out = m;
    *lse_out = z > 0 ? log(z) : 0.0; /* z >= 1: the maximum's own term is exp(0) */
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        best = x[i] > x[best] ? i : best;
    }
    return best;
}

/* The reference's log-probabilities into ref_lp; returns its argmax. */
static int ref_prepare(br_quality *q)
{
    double m = 0;
    double lse = 0;
    log_norm(q->ref_logits, q->vocab, &m, &lse);
    for (int i = 0; i < q->vocab; i++) {
        q->ref_lp[i] = (double)q->ref_logits[i] - m - lse;
    }
    return argmax(q->ref_logits, q->vocab);
}

/* Compares cand_logits with the prepared reference; next is the actual next token. */
static void cand_score(br_quality *q, struct cand_acc *a, int ref_top, int32_t next)
{
    const float *c = q->cand_logits;
    double m = 0;
    double lse = 0;
    log_norm(c, q->vocab, &m, &lse);
    double kl = 0;
    for (int i = 0; i < q->vocab; i++) {
        /* the same expression as ref_prepare, so identical logits give exactly 0 */
        double lc = (double)c[i] - m - lse;
        kl += exp(q->ref_lp[i]) * (q->ref_lp[i] - lc);
    }
    kl = kl > 0 ? kl : 0;
    a->n++;
    a->kl_sum += kl;
    a->kl_max = kl > a->kl_max ? kl : a->kl_max;
    a->top1 += argmax(c, q->vocab) == ref_top;
    a->nll_sum -= (double)c[next] - m - lse;
}

/* Runs `token` at `pos` in every model and scores the prediction of `next`. */
static int step(br_quality *q, int32_t token, int pos, int32_t next, char *err, size_t cap)
{
    int rc = br_llama_forward(q->states[0], token, pos, q->ref_logits);
    if (rc != BR_OK) {
        return br_err_fail(err, cap, rc, "reference forward pass at position %d: %s", pos,
                           br_strerror(rc));
    }
    int ref_top = ref_prepare(q);
    q->nll_ref_sum -= q->ref_lp[next];
    for (int i = 0; i < q->n_cand; i++) {
        rc = br_llama_forward(q->states[i + 1], token, pos, q->cand_logits);
        if (rc != BR_OK) {
            return br_err_fail(err, cap, rc, "candidate %d forward pass at position %d: %s", i + 1,
                               pos, br_strerror(rc));
        }
        cand_score(q, &q->acc[i], ref_top, next);
    }
    return BR_OK;
}

int br_quality_feed(br_quality *q, const int32_t *ids, size_t n, int32_t bos, char *err,
                    size_t err_cap)
{
    if (err && err_cap > 0) {
        err[0] = '\0';
    }
    if (bos >= q->vocab) {
        return br_err_fail(err, err_cap, BR_ERR_RANGE, "BOS id %d outside the vocabulary (%d)",
                           (int)bos, q->vocab);
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= q->vocab) {
            return br_err_fail(err, err_cap, BR_ERR_RANGE,
                               "token %zu: id %d outside the vocabulary (%d)", i, (int)ids[i],
                               q->vocab);
        }
    }
    size_t next = bos >= 0 ? 0 : 1; /* index of the next token to score */
    size_t total = n - (n > 0 && bos < 0);
    size_t per_window = (size_t)q->window - 1;
    int32_t lead = bos >= 0 ? bos : (n > 0 ? ids[0] : 0);
    while (next < n) {
        size_t m = n - next < per_window ? n - next : per_window;
        int32_t tok = lead;
        for (size_t k = 0; k < m; k++) {
            int rc = step(q, tok, (int)k, ids[next + k], err, err_cap);
            if (rc != BR_OK) {
                return rc;
            }
            tok = ids[next + k];
        }
        lead = bos >= 0 ? bos : tok;
        next += m;
        q->windows++;
        if (q->progress) {
            q->progress(q->user, next - (bos < 0), total);
        }
    }
    return BR_OK;
}

void br_quality_stats(const br_quality *q, int i, struct br_quality_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (i < 0 || i >= q->n_cand || q->acc[i].n == 0) {
        return;
    }
    const struct cand_acc *a = &q->acc[i];
    double n = (double)a->n;
    out->n_positions = a->n;
    out->n_top1 = a->top1;
    out->top1 = (double)a->top1 / n;
    out->mean_kl = a->kl_sum / n;
    out->max_kl = a->kl_max;
    out->nll_ref = q->nll_ref_sum / n;
    out->nll_cand = a->nll_sum / n;
    out->ppl_ref = exp(out->nll_ref);
    out->ppl_cand = exp(out->nll_cand);
}

/* Control, unknown and unused tokens never come from text; their pieces differ between formats
 * (llama2.c's tok512 spells BOS "\n<s>\n", a GGUF "<s>"). */
static int special(enum br_tok_type t)
{
    return t == BR_TOK_CONTROL || t == BR_TOK_UNKNOWN || t == BR_TOK_UNUSED;
}

static int same_token(const struct br_tokenizer *ref, const struct br_tokenizer *cand, int32_t id)
{
    struct br_slice a = {"", 0};
    struct br_slice b = {"", 0};
    float score = 0;
    enum br_tok_type ta = BR_TOK_NORMAL;
    enum br_tok_type tb = BR_TOK_NORMAL;
    (void)br_tokenizer_token(ref, id, &a, &score, &ta);
    (void)br_tokenizer_token(cand, id, &b, &score, &tb);
    if (special(ta) || special(tb)) {
        return special(ta) && special(tb);
    }
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

int br_quality_check_vocab(const struct br_tokenizer *ref, const struct br_tokenizer *cand,
                           const char *name, char *err, size_t err_cap)
{
    const char *who = name ? name : "candidate";
    size_t n = br_tokenizer_n_vocab(ref);
    if (br_tokenizer_n_vocab(cand) != n) {
        return br_err_fail(err, err_cap, BR_ERR_INVAL,
                           "%s: vocabulary of %zu tokens, the reference's has %zu", who,
                           br_tokenizer_n_vocab(cand), n);
    }
    if (br_tokenizer_bos(ref) != br_tokenizer_bos(cand)) {
        return br_err_fail(err, err_cap, BR_ERR_INVAL, "%s: BOS is token %d, the reference's is %d",
                           who, (int)br_tokenizer_bos(cand), (int)br_tokenizer_bos(ref));
    }
    for (size_t i = 0; i < n; i++) {
        if (!same_token(ref, cand, (int32_t)i)) {
            return br_err_fail(err, err_cap, BR_ERR_INVAL,
                               "%s: token %zu differs from the reference's (another vocabulary)",
                               who, i);
        }
    }
    return BR_OK;
}
