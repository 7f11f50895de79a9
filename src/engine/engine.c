/* SPDX-License-Identifier: MIT */
/*
 * Model handle (GGUF or llama2.c + tokenizer) and text generation with streaming, stop strings
 * that may span tokens, log-probabilities and usage counts. See engine.h.
 */
#include "engine/engine.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "engine/forward.h"
#include "engine/gguf.h"
#include "engine/llama2c.h"
#include "engine/model.h"

struct br_engine_model {
    enum br_engine_format format;
    struct br_llama_model *gguf_model; /* owned, GGUF only */
    struct br_llama2c *l2c;            /* owned, llama2.c only */
    const struct br_llama_config *config;
    const struct br_llama_weights *weights;
    struct br_tokenizer *tok; /* owned */
    bool add_bos;
};

/* 1 when the file starts with "GGUF", 0 when not, an error when unreadable. */
static int is_gguf(const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int rc = br_err_from_errno(errno);
        return br_err_fail(err, cap, rc, "%s: cannot open: %s", path, br_strerror(rc));
    }
    char magic[4] = {0};
    size_t n = fread(magic, 1, sizeof magic, f);
    (void)fclose(f);
    if (n != sizeof magic) {
        return br_err_fail(err, cap, BR_ERR_PARSE, "%s: file shorter than 4 bytes", path);
    }
    return memcmp(magic, "GGUF", 4) == 0 ? 1 : 0;
}

static int vocab_id(const br_gguf *g, const char *key, int32_t *out, const char *path, char *err,
                    size_t cap)
{
    uint32_t v = 0;
    int rc = br_gguf_get_u32(g, key, &v);
    if (rc == BR_ERR_NOTFOUND) {
        *out = -1;
        return BR_OK;
    }
    if (rc != BR_OK) {
        return br_err_fail(err, cap, BR_ERR_PARSE, "%s: %s is not an unsigned integer", path, key);
    }
    *out = v > (uint32_t)INT32_MAX ? -1 : (int32_t)v; /* UINT32_MAX means "none" */
    return BR_OK;
}

/* Reads the optional scores and token_type arrays (length n) into scores/types. */
static int vocab_arrays(const br_gguf *g, size_t n, float *scores, int32_t *types, bool *has_types,
                        const char *path, char *err, size_t cap)
{
    struct br_gguf_array a;
    if (br_gguf_get_array(g, "tokenizer.ggml.scores", &a) == BR_OK) {
        if (a.len != n) {
            return br_err_fail(err, cap, BR_ERR_PARSE,
                               "%s: tokenizer.ggml.scores has %llu entries, %zu tokens", path,
                               (unsigned long long)a.len, n);
        }
        for (size_t i = 0; i < n; i++) {
            if (br_gguf_array_f32(&a, i, &scores[i]) != BR_OK) {
                return br_err_fail(err, cap, BR_ERR_PARSE,
                                   "%s: tokenizer.ggml.scores[%zu] is not a number", path, i);
            }
        }
    }
    *has_types = false;
    if (br_gguf_get_array(g, "tokenizer.ggml.token_type", &a) == BR_OK) {
        if (a.len != n) {
            return br_err_fail(err, cap, BR_ERR_PARSE,
                               "%s: tokenizer.ggml.token_type has %llu entries, %zu tokens", path,
                               (unsigned long long)a.len, n);
        }
        for (size_t i = 0; i < n; i++) {
            int64_t t = 0;
            if (br_gguf_array_i64(&a, i, &t) != BR_OK || t < 0 || t > 255) {
                return br_err_fail(err, cap, BR_ERR_PARSE,
                                   "%s: tokenizer.ggml.token_type[%zu] is not a token type", path,
                                   i);
            }
            types[i] = (int32_t)t;
        }
        *has_types = true;
    }
    return BR_OK;
}

static int gguf_tokenizer(const br_gguf *g, const char *path, struct br_tokenizer **out,
                          bool *add_bos, char *err, size_t cap)
{
    struct br_slice model;
    if (br_gguf_get_str(g, "tokenizer.ggml.model", &model) != BR_OK) {
        return br_err_fail(err, cap, BR_ERR_PARSE, "%s: no tokenizer.ggml.model string", path);
    }
    if (!br_slice_eq_cstr(model, "llama")) {
        return br_err_fail(err, cap, BR_ERR_UNSUPPORTED,
                           "%s: tokenizer.ggml.model \"%.*s\" is not supported (only \"llama\")",
                           path, (int)(model.len > 40 ? 40 : model.len), model.ptr);
    }
    struct br_gguf_array toks;
    if (br_gguf_get_array(g, "tokenizer.ggml.tokens", &toks) != BR_OK ||
        toks.type != BR_GGUF_TYPE_STRING || toks.len == 0 || toks.len > BR_TOK_MAX_VOCAB) {
        return br_err_fail(err, cap, BR_ERR_PARSE,
                           "%s: tokenizer.ggml.tokens is not a string array of 1..%u", path,
                           BR_TOK_MAX_VOCAB);
    }
    size_t n = (size_t)toks.len;
    struct br_slice *pieces = br_calloc(n, sizeof *pieces);
    float *scores = br_calloc(n, sizeof *scores);
    int32_t *types = br_calloc(n, sizeof *types);
    int rc = BR_ERR_NOMEM;
    if (!pieces || !scores || !types) {
        (void)br_err_fail(err, cap, rc, "%s: out of memory for the vocabulary", path);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (br_gguf_array_str(&toks, i, &pieces[i]) != BR_OK) {
            rc = br_err_fail(err, cap, BR_ERR_PARSE, "%s: tokenizer.ggml.tokens[%zu] unreadable",
                             path, i);
            goto out;
        }
    }
    bool has_types = false;
    rc = vocab_arrays(g, n, scores, types, &has_types, path, err, cap);
    if (rc != BR_OK) {
        goto out;
    }
    struct br_tok_vocab v = {
        .pieces = pieces, .scores = scores, .types = has_types ? types : NULL, .n = n};
    rc = vocab_id(g, "tokenizer.ggml.bos_token_id", &v.bos, path, err, cap);
    if (rc == BR_OK) {
        rc = vocab_id(g, "tokenizer.ggml.eos_token_id", &v.eos, path, err, cap);
    }
    if (rc == BR_OK) {
        rc = vocab_id(g, "tokenizer.ggml.unknown_token_id", &v.unk, path, err, cap);
    }
    if (rc != BR_OK) {
        goto out;
    }
    int flag = 1;
    int brc = br_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &flag);
    if (brc != BR_OK && brc != BR_ERR_NOTFOUND) {
        rc = br_err_fail(err, cap, BR_ERR_PARSE, "%s: tokenizer.ggml.add_bos_token is not a bool",
                         path);
        goto out;
    }
    *add_bos = brc == BR_ERR_NOTFOUND || flag != 0;
    char terr[256];
    rc = br_tokenizer_from_vocab(&v, out, terr, sizeof terr);
    if (rc != BR_OK) {
        (void)br_err_fail(err, cap, rc, "%s: vocabulary: %s", path, terr);
    }
out:
    br_free(pieces);
    br_free(scores);
    br_free(types);
    return rc;
}

static int open_gguf(br_engine_model *m, const char *path, char *err, size_t cap)
{
    int rc = br_llama_model_open(path, &m->gguf_model, err, cap);
    if (rc != BR_OK) {
        return rc;
    }
    m->config = &m->gguf_model->config;
    m->weights = &m->gguf_model->weights;
    return gguf_tokenizer(m->gguf_model->gguf, path, &m->tok, &m->add_bos, err, cap);
}

static int open_llama2c(br_engine_model *m, const char *path, const char *tok_path, char *err,
                        size_t cap)
{
    if (!tok_path) {
        return br_err_fail(err, cap, BR_ERR_INVAL,
                           "%s: a llama2.c checkpoint needs a tokenizer file (tokenizer.bin)",
                           path);
    }
    int rc = br_llama2c_open(path, &m->l2c, err, cap);
    if (rc != BR_OK) {
        return rc;
    }
    m->config = &m->l2c->config;
    m->weights = &m->l2c->weights;
    m->add_bos = true;
    return br_tokenizer_load_llama2c(tok_path, (size_t)m->config->vocab_size, &m->tok, err, cap);
}

int br_engine_model_open(const char *path, const char *tokenizer_path, br_engine_model **out,
                         char *err, size_t err_cap)
{
    *out = NULL;
    if (err && err_cap > 0) {
        err[0] = '\0';
    }
    int kind = is_gguf(path, err, err_cap);
    if (kind < 0) {
        return kind;
    }
    br_engine_model *m = br_calloc(1, sizeof *m);
    if (!m) {
        return br_err_fail(err, err_cap, BR_ERR_NOMEM, "%s: out of memory", path);
    }
    m->format = kind ? BR_ENGINE_FORMAT_GGUF : BR_ENGINE_FORMAT_LLAMA2C;
    int rc = kind ? open_gguf(m, path, err, err_cap)
                  : open_llama2c(m, path, tokenizer_path, err, err_cap);
    if (rc == BR_OK && br_tokenizer_n_vocab(m->tok) != (size_t)m->config->vocab_size) {
        rc = br_err_fail(err, err_cap, BR_ERR_INVAL,
                         "%s: the vocabulary has %zu tokens, the model %d", path,
                         br_tokenizer_n_vocab(m->tok), m->config->vocab_size);
    }
    if (rc != BR_OK) {
        br_engine_model_close(m);
        return rc;
    }
    *out = m;
    return BR_OK;
}

void br_engine_model_close(br_engine_model *m)
{
    if (!m) {
        return;
    }
    br_tokenizer_free(m->tok);
    br_llama_model_close(m->gguf_model);
    br_llama2c_close(m->l2c);
    br_free(m);
}

const struct br_llama_config *br_engine_model_config(const br_engine_model *m)
{
    return m->config;
}

const struct br_llama_weights *br_engine_model_weights(const br_engine_model *m)
{
    return m->weights;
}

const struct br_tokenizer *br_engine_model_tokenizer(const br_engine_model *m)
{
    return m->tok;
}

enum br_engine_format br_engine_model_format(const br_engine_model *m)
{
    return m->format;
}

bool br_engine_model_add_bos(const br_engine_model *m)
{
    return m->add_bos;
}

void br_engine_gen_params_init(struct br_engine_gen_params *p)
{
    memset(p, 0, sizeof *p);
    p->sampler.temperature = 0.0f;
    p->sampler.top_p = 1.0f;
    p->sampler.top_k = 0;
    p->sampler.seed = 0;
}

void br_engine_gen_result_free(struct br_engine_gen_result *res)
{
    br_buf_cleanup(&res->text);
}

const char *br_engine_finish_name(enum br_engine_finish f)
{
    return f == BR_ENGINE_FINISH_LENGTH ? "length" : "stop";
}

/* ---- generation ---------------------------------------------------------------------------- */

struct gen {
    const br_engine_model *m;
    const struct br_engine_gen_params *p;
    struct br_engine_gen_result *res;
    struct br_llama_state *state;
    struct br_sampler sampler;
    float *logits;
    struct br_buf pending; /* text held back because it may begin a stop string */
    struct br_token_logprob top[BR_ENGINE_MAX_TOP_LOGPROBS];
    size_t stop_len[BR_ENGINE_MAX_STOP];
    size_t max_stop;
};

/* Longest suffix of s (len n) that is a proper prefix of a stop string. */
static size_t stop_prefix_len(const struct gen *g, const char *s, size_t n)
{
    size_t best = 0;
    for (int k = 0; k < BR_ENGINE_MAX_STOP; k++) {
        const char *stop = g->p->stop[k];
        size_t sl = g->stop_len[k];
        for (size_t l = sl > 1 ? sl - 1 : 0; l > best; l--) {
            if (l <= n && memcmp(s + n - l, stop, l) == 0) {
                best = l;
                break;
            }
        }
    }
    return best;
}

/* Earliest occurrence of any stop string in s (len n), or n when none. */
static size_t stop_find(const struct gen *g, const char *s, size_t n)
{
    size_t first = n;
    for (int k = 0; k < BR_ENGINE_MAX_STOP; k++) {
        size_t sl = g->stop_len[k];
        if (sl == 0 || sl > n) {
            continue;
        }
        for (size_t i = 0; i + sl <= n && i < first; i++) {
            if (memcmp(s + i, g->p->stop[k], sl) == 0) {
                first = i;
                break;
            }
        }
    }
    return first;
}

/* Bytes at the end of s (len n) that begin a UTF-8 sequence not yet complete (0..3). */
static size_t utf8_incomplete_tail(const char *s, size_t n)
{
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xC0) == 0x80) {
            continue; /* continuation byte: look further back */
        }
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back && c < 0xF8 ? back : 0;
    }
    return 0;
}

static int emit(struct gen *g, const char *text, size_t n, int token, float logprob, int n_top)
{
    int rc = br_buf_append(&g->res->text, text, n);
    if (rc != BR_OK || !g->p->on_token) {
        return rc;
    }
    struct br_engine_token t = {.text = br_slice_make(text, n),
                                .token = token,
                                .logprob = logprob,
                                .top = g->top,
                                .n_top = n_top};
    return g->p->on_token(g->p->user, &t);
}

/* Adds a token's piece; releases what can no longer start a stop string and is not an
 * incomplete UTF-8 sequence (byte-fallback tokens spell a character over several tokens).
 * Sets *stopped. */
static int push_piece(struct gen *g, struct br_slice piece, int token, float logprob, int n_top,
                      bool *stopped)
{
    int rc = br_buf_append(&g->pending, piece.ptr, piece.len);
    if (rc != BR_OK) {
        return rc;
    }
    const char *s = g->pending.ptr ? g->pending.ptr : "";
    size_t n = g->pending.len;
    size_t at = stop_find(g, s, n);
    if (at < n) {
        *stopped = true;
        rc = emit(g, s, at, token, logprob, n_top);
        br_buf_reset(&g->pending);
        return rc;
    }
    size_t keep = stop_prefix_len(g, s, n);
    size_t partial = utf8_incomplete_tail(s, n);
    keep = partial > keep ? partial : keep;
    rc = emit(g, s, n - keep, token, logprob, n_top);
    br_buf_consume(&g->pending, n - keep);
    return rc;
}

static int check_params(struct gen *g, char *err, size_t cap)
{
    const struct br_engine_gen_params *p = g->p;
    if (p->top_logprobs < 0 || p->top_logprobs > BR_ENGINE_MAX_TOP_LOGPROBS) {
        return br_err_fail(err, cap, BR_ERR_INVAL, "top_logprobs %d is outside 0..%d",
                           p->top_logprobs, BR_ENGINE_MAX_TOP_LOGPROBS);
    }
    for (int k = 0; k < BR_ENGINE_MAX_STOP; k++) {
        if (!p->stop[k]) {
            continue;
        }
        size_t l = strlen(p->stop[k]);
        if (l == 0 || l > BR_ENGINE_MAX_STOP_LEN) {
            return br_err_fail(err, cap, BR_ERR_INVAL, "stop string %d must be 1..%d bytes", k + 1,
                               BR_ENGINE_MAX_STOP_LEN);
        }
        g->stop_len[k] = l;
    }
    return BR_OK;
}

/* Runs the prompt; leaves the logits of its last position in g->logits. */
static int run_prompt(struct gen *g, const int32_t *ids, size_t n, char *err, size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        int rc = br_llama_forward(g->state, ids[i], (int)i, g->logits);
        if (rc != BR_OK) {
            return br_err_fail(err, cap, rc, "forward pass failed at prompt position %zu: %s", i,
                               br_err_name(rc));
        }
    }
    return BR_OK;
}

/* Samples until a stop condition; pos is the position of the next token to run. */
static int decode_loop(struct gen *g, int32_t prev, int pos, char *err, size_t cap)
{
    const struct br_llama_config *c = g->m->config;
    int32_t eos = br_tokenizer_eos(g->m->tok);
    int n_top = g->p->top_logprobs;
    g->res->finish = BR_ENGINE_FINISH_LENGTH;
    for (;;) {
        if (g->p->max_tokens > 0 && g->res->completion_tokens >= (size_t)g->p->max_tokens) {
            return BR_OK;
        }
        int tok = 0;
        int rc = br_sampler_sample(&g->sampler, g->logits, &tok);
        float lp = 0.0f;
        if (rc == BR_OK) {
            rc = br_sample_logprobs(g->logits, c->vocab_size, tok, g->top, n_top, &lp);
        }
        if (rc != BR_OK) {
            return br_err_fail(err, cap, rc, "sampling failed: %s", br_err_name(rc));
        }
        if (tok == eos) {
            g->res->finish = BR_ENGINE_FINISH_STOP;
            return BR_OK;
        }
        g->res->completion_tokens++;
        struct br_slice piece;
        rc = br_tokenizer_piece(g->m->tok, prev, tok, &piece);
        bool stopped = false;
        if (rc == BR_OK) {
            rc = push_piece(g, piece, tok, lp, n_top, &stopped);
        }
        if (rc != BR_OK || stopped) {
            g->res->finish = BR_ENGINE_FINISH_STOP;
            return rc;
        }
        prev = tok;
        if (pos + 1 >= c->seq_len) {
            return BR_OK; /* tok took the last position of the context: finish "length" */
        }
        rc = br_llama_forward(g->state, tok, pos, g->logits);
        if (rc != BR_OK) {
            return br_err_fail(err, cap, rc, "forward pass failed at position %d: %s", pos,
                               br_err_name(rc));
        }
        pos++;
    }
}

int br_engine_generate(const br_engine_model *m, const char *prompt, size_t len,
                       const struct br_engine_gen_params *p, struct br_engine_gen_result *res,
                       char *err, size_t err_cap)
{
    memset(res, 0, sizeof *res);
    br_buf_init(&res->text, (size_t)64 << 20);
    if (err && err_cap > 0) {
        err[0] = '\0';
    }
    struct gen g;
    memset(&g, 0, sizeof g);
    g.m = m;
    g.p = p;
    g.res = res;
    br_buf_init(&g.pending, (size_t)64 << 20);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = check_params(&g, err, err_cap);
    if (rc != BR_OK) {
        goto out;
    }
    rc = br_tokenizer_encode(m->tok, prompt, len, m->add_bos, &ids, &n_ids);
    if (rc != BR_OK) {
        (void)br_err_fail(err, err_cap, rc, "cannot tokenize the prompt: %s", br_err_name(rc));
        goto out;
    }
    res->prompt_tokens = n_ids;
    if (n_ids == 0 || n_ids >= (size_t)m->config->seq_len) {
        rc = br_err_fail(
            err, err_cap, n_ids == 0 ? BR_ERR_INVAL : BR_ERR_LIMIT,
            "the prompt has %zu tokens; the context holds %d (at least one must be left)", n_ids,
            m->config->seq_len);
        goto out;
    }
    g.logits = br_malloc((size_t)m->config->vocab_size * sizeof *g.logits);
    struct br_llama_run_config run = {.n_threads = p->n_threads > 1 ? p->n_threads : 1};
    rc = g.logits ? br_llama_state_create_ex(m->config, m->weights, &run, &g.state) : BR_ERR_NOMEM;
    if (rc == BR_OK && p->n_lora != 0) {
        rc = p->n_lora < 0 || !p->lora ? BR_ERR_INVAL
                                       : br_llama_state_set_lora(g.state, p->lora, p->n_lora);
    }
    if (rc == BR_OK) {
        rc = br_sampler_init(&g.sampler, m->config->vocab_size, &p->sampler);
    }
    if (rc != BR_OK) {
        (void)br_err_fail(err, err_cap, rc, "cannot set up generation: %s", br_err_name(rc));
        goto out;
    }
    rc = run_prompt(&g, ids, n_ids, err, err_cap);
    if (rc == BR_OK) {
        rc = decode_loop(&g, ids[n_ids - 1], (int)n_ids, err, err_cap);
    }
    if (rc == BR_OK && g.pending.len > 0) {
        rc = emit(&g, g.pending.ptr, g.pending.len, -1, 0.0f, 0);
    }
out:
    br_buf_cleanup(&g.pending);
    br_sampler_cleanup(&g.sampler);
    br_llama_state_destroy(g.state);
    br_free(g.logits);
    br_free(ids);
    return rc;
}
