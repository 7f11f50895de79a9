/* SPDX-License-Identifier: MIT */
/*
 * The local provider: chat completions generated in-process by the embedded engine
 * (engine/engine.h) from a GGUF or llama2.c model named in the catalogue (`local: {model, ...}`).
 *
 * Threads. Each local model owns a small pool of generation threads (`threads`, default 1),
 * started when the config snapshot is loaded and joined when it is freed. A call never runs
 * the model on an event loop: call_start (on the call's loop) renders the prompt, parses the
 * sampling parameters and queues a job; a pool thread runs br_engine_generate, builds the
 * chat.completion.chunk JSON of each token itself and hands it to the loop through the job's
 * uv_async_t; the async callback (on the loop) passes the chunks to the sink. Requests beyond
 * the busy threads wait in a bounded FIFO (`queue`, default 16); when it is full the call
 * answers 503 in OpenAI's error shape. A canceled call (client gone) is taken out of the queue,
 * or its running generation is stopped at the next token (the token callback returns
 * BR_ERR_CANCELED), which frees the thread for the next job.
 *
 * Prompt templates: `raw` (default; what base models such as stories260K want) uses the text
 * of the last user message as the prompt; `simple` renders every message as "role: content\n"
 * and ends with "assistant:".
 *
 * Text completions (POST /v1/completions, api_completions.c): a request with "prompt" and no
 * "messages" is generated from the raw prompt (no template; max_tokens defaults to 16 as in
 * OpenAI's legacy endpoint) and answered with text_completion objects; the legacy logprobs
 * shape is not produced there ("logprobs": null).
 *
 * Ownership: a job is reference-counted (the loop's handle, and the queue or the thread that
 * runs it) and freed by whichever lets go last; its shared fields are guarded by job->mu, the
 * queue by the model's mu. Everything the pool thread reads from the job is fixed before the
 * job is queued.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "engine/engine.h"
#include "upstream/provider.h"
#include "upstream/providers/providers_int.h"

#define LOCAL_OUT_MAX      ((size_t)64 << 20)
#define LOCAL_PROMPT_MAX   ((size_t)1 << 20)
/* Named adapters per model (the config's own cap, BR_CONFIG_ADAPTERS_MAX, is the same). */
#define LOCAL_ADAPTERS_MAX 64

struct local_job;

/*
 * A named adapter ("model": "NAME:ADAPTER"). Reference-counted: the model's list holds one
 * reference, every job using it another, so an adapter unloaded while requests use it is
 * closed after the last of them.
 */
struct local_adapter {
    atomic_int refs;
    atomic_int in_use; /* jobs holding it */
    char *name;
    char *path;
    float scale;
    bool from_config;
    br_lora *lora;
    struct local_adapter *next; /* the model's list (adapters_mu) */
};

struct local_model {
    br_engine_model *engine;
    br_lora *lora; /* adapter applied to every generation, or NULL */
    struct br_lora_use lora_use;
    pthread_mutex_t adapters_mu; /* the adapters list */
    struct local_adapter *adapters;
    size_t n_adapters;
    bool simple_template;
    int context;   /* 0: the model's */
    int queue_cap; /* waiting jobs */
    int n_threads;
    int n_started;
    pthread_t *threads;
    pthread_mutex_t mu; /* queue, n_waiting, stopping */
    pthread_cond_t cv;
    struct local_job *head, *tail;
    int n_waiting;
    int n_running;
    bool stopping;
};

struct local_job {
    uv_async_t async; /* first: the close callback finds the job through it */
    struct local_model *lm;
    struct br_provider_call *call; /* loop side only */
    atomic_int refs;
    atomic_bool canceled;
    struct local_job *next; /* queue link (lm->mu) */
    bool queued;            /* in lm's queue (lm->mu) */

    /* fixed before queueing */
    char *prompt;
    size_t prompt_len;
    char stops[BR_ENGINE_MAX_STOP][BR_ENGINE_MAX_STOP_LEN + 1];
    struct br_engine_gen_params params;
    bool stream;
    bool logprobs;
    bool text_mode;     /* legacy /v1/completions: "prompt" in, text_completion objects out */
    struct br_buf head; /* chunk prefix up to and including "choices":[ */
    char id[48];
    const char *model; /* name in the output */
    int64_t created;
    struct local_adapter *adapter; /* "NAME:ADAPTER" requests: one reference, else NULL */
    char *model_owned;             /* "NAME:ADAPTER" requests: the name in the output */

    /* pool thread only */
    struct br_buf chunk;   /* the chunk being built */
    struct br_buf content; /* non-streamed: content so far */
    struct br_buf lp;      /* non-streamed: logprobs content entries */
    int32_t prev;          /* previous token, for piece decoding */

    /* shared (job->mu) */
    pthread_mutex_t mu;
    struct br_buf pending; /* records: uint32 length + chunk JSON */
    bool done;
    bool closed; /* the loop closed the async handle: no more sends */
    int gen_rc;
    char gen_err[BR_ENGINE_ERR_CAP];
    struct br_engine_gen_result res;
    struct br_buf body; /* non-streamed: the chat.completion */

    /* loop side */
    bool begun;
    bool ended;       /* on_done delivered or canceled */
    int early_status; /* answered without generation (queue full): status */
    uint64_t t_first_byte_ns;
    uint64_t t_first_token_ns;
    size_t completion_seen; /* tokens streamed so far (partial usage) */
    int64_t prompt_estimate;
};

/* ------------------------------------------------------------------ adapters */

static void adapter_unref(struct local_adapter *a)
{
    if (!a || atomic_fetch_sub(&a->refs, 1) != 1) {
        return;
    }
    br_lora_close(a->lora);
    br_free(a->name);
    br_free(a->path);
    br_free(a);
}

/* The adapter called name (n bytes), or NULL. Caller holds adapters_mu. */
static struct local_adapter *adapter_find_locked(struct local_model *lm, const char *name, size_t n)
{
    for (struct local_adapter *a = lm->adapters; a; a = a->next) {
        if (strlen(a->name) == n && memcmp(a->name, name, n) == 0) {
            return a;
        }
    }
    return NULL;
}

/* A new reference to the adapter called name, or NULL. */
static struct local_adapter *adapter_get(struct local_model *lm, const char *name)
{
    pthread_mutex_lock(&lm->adapters_mu);
    struct local_adapter *a = adapter_find_locked(lm, name, strlen(name));
    if (a) {
        atomic_fetch_add(&a->refs, 1);
        atomic_fetch_add(&a->in_use, 1);
    }
    pthread_mutex_unlock(&lm->adapters_mu);
    return a;
}

static void adapter_put(struct local_adapter *a)
{
    if (a) {
        atomic_fetch_sub(&a->in_use, 1);
        adapter_unref(a);
    }
}

/*
 * Opens path against the model and adds it as name. The file is opened before the lock is
 * taken (it reads and checks the whole adapter), so generations never wait for it.
 */
static int adapter_add(struct local_model *lm, const char *name, const char *path, double scale,
                       bool from_config, char *err, size_t errlen)
{
    if (!*name) {
        return br_err_fail(err, errlen, BR_ERR_INVAL, "an adapter needs a name");
    }
    if (!(scale >= -16 && scale <= 16)) {
        return br_err_fail(err, errlen, BR_ERR_INVAL, "scale: expected a number from -16 to 16");
    }
    struct local_adapter *a = br_calloc(1, sizeof(*a));
    if (!a) {
        return BR_ERR_NOMEM;
    }
    atomic_init(&a->refs, 1);
    atomic_init(&a->in_use, 0);
    a->name = br_strdup(name);
    a->path = br_strdup(path);
    a->scale = (float)scale;
    a->from_config = from_config;
    char eerr[BR_ENGINE_ERR_CAP] = "";
    int rc = a->name && a->path ? BR_OK : BR_ERR_NOMEM;
    if (rc == BR_OK) {
        rc = br_lora_open(path, br_engine_model_config(lm->engine), &a->lora, eerr, sizeof(eerr));
        if (rc != BR_OK) {
            (void)snprintf(err, errlen, "%s", eerr[0] ? eerr : br_strerror(rc));
        }
    }
    if (rc == BR_OK) {
        pthread_mutex_lock(&lm->adapters_mu);
        if (adapter_find_locked(lm, name, strlen(name))) {
            rc = br_err_fail(err, errlen, BR_ERR_EXISTS, "an adapter called '%s' is loaded", name);
        } else if (lm->n_adapters >= LOCAL_ADAPTERS_MAX) {
            rc = br_err_fail(err, errlen, BR_ERR_LIMIT,
                             "the model has %d adapters, the most it may", LOCAL_ADAPTERS_MAX);
        } else {
            a->next = lm->adapters;
            lm->adapters = a;
            lm->n_adapters++;
            a = NULL;
        }
        pthread_mutex_unlock(&lm->adapters_mu);
    }
    adapter_unref(a);
    return rc;
}

static bool local_variant_exists(void *state, const char *name, size_t n)
{
    struct local_model *lm = state;
    pthread_mutex_lock(&lm->adapters_mu);
    bool found = adapter_find_locked(lm, name, n) != NULL;
    pthread_mutex_unlock(&lm->adapters_mu);
    return found;
}

static int local_variant_load(void *state, const char *name, const char *path, double scale,
                              char *err, size_t errlen)
{
    return adapter_add(state, name, path, scale, false, err, errlen);
}

static int local_variant_unload(void *state, const char *name)
{
    struct local_model *lm = state;
    struct local_adapter *gone = NULL;
    pthread_mutex_lock(&lm->adapters_mu);
    for (struct local_adapter **pp = &lm->adapters; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, name) == 0) {
            gone = *pp;
            *pp = gone->next;
            lm->n_adapters--;
            break;
        }
    }
    pthread_mutex_unlock(&lm->adapters_mu);
    adapter_unref(gone); /* jobs that hold it keep it open until they end */
    return gone ? BR_OK : BR_ERR_NOTFOUND;
}

static int local_variant_list(void *state, json_t *array)
{
    struct local_model *lm = state;
    int rc = BR_OK;
    pthread_mutex_lock(&lm->adapters_mu);
    for (struct local_adapter *a = lm->adapters; a && rc == BR_OK; a = a->next) {
        json_t *o =
            json_pack("{s:s, s:s, s:f, s:s, s:i}", "name", a->name, "path", a->path, "scale",
                      (double)a->scale, "source", a->from_config ? "config" : "admin", "in_use",
                      atomic_load(&a->in_use));
        rc = o && json_array_append_new(array, o) == 0 ? BR_OK : BR_ERR_NOMEM;
    }
    pthread_mutex_unlock(&lm->adapters_mu);
    return rc;
}

/* ------------------------------------------------------------------ jobs */

static void job_unref(struct local_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) != 1) {
        return;
    }
    adapter_put(j->adapter);
    br_free(j->model_owned);
    br_buf_cleanup(&j->head);
    br_buf_cleanup(&j->chunk);
    br_buf_cleanup(&j->content);
    br_buf_cleanup(&j->lp);
    br_buf_cleanup(&j->pending);
    br_buf_cleanup(&j->body);
    br_engine_gen_result_free(&j->res);
    pthread_mutex_destroy(&j->mu);
    br_free(j->prompt);
    br_free(j);
}

static void job_on_close(uv_handle_t *h)
{
    job_unref((struct local_job *)h);
}

/* Loop side: no more callbacks; the handle closes and drops the loop's reference. */
static void job_close(struct local_job *j)
{
    pthread_mutex_lock(&j->mu);
    j->closed = true;
    pthread_mutex_unlock(&j->mu);
    j->ended = true;
    uv_close((uv_handle_t *)&j->async, job_on_close);
}

/* Pool side: wake the loop unless it has gone. Caller holds j->mu. */
static void job_wake_locked(struct local_job *j)
{
    if (!j->closed) {
        uv_async_send(&j->async);
    }
}

/* ------------------------------------------------------------------ JSON on the pool thread */

/* Length of the valid UTF-8 character at s (n bytes left), or 0 when it is not one. */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned min;
    unsigned cp;
    if (s[0] < 0x80) {
        return 1;
    }
    if ((s[0] & 0xE0) == 0xC0) {
        len = 2, min = 0x80, cp = s[0] & 0x1Fu;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3, min = 0x800, cp = s[0] & 0x0Fu;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4, min = 0x10000, cp = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (len > n) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    bool ok = cp >= min && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    return ok ? len : 0;
}

/*
 * text as a JSON string. A model may produce bytes that are not UTF-8 (byte tokens that do not
 * form a character); each such byte becomes U+FFFD so that the output stays valid JSON (the
 * exact bytes are in the logprobs' "bytes" arrays).
 */
static int json_text(struct br_buf *o, const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len && utf8_char_len(s + i, len - i)) {
        i += utf8_char_len(s + i, len - i);
    }
    if (i == len) {
        return br__json_append_string(o, text, len);
    }
    struct br_buf clean;
    br_buf_init(&clean, LOCAL_OUT_MAX);
    int r = BR_OK;
    for (i = 0; r == BR_OK && i < len;) {
        size_t k = utf8_char_len(s + i, len - i);
        r = k ? br_buf_append(&clean, text + i, k) : br_buf_append_cstr(&clean, "\xEF\xBF\xBD");
        i += k ? k : 1;
    }
    r = r == BR_OK ? br__json_append_string(o, clean.ptr ? clean.ptr : "", clean.len) : r;
    br_buf_cleanup(&clean);
    return r;
}

static int append_piece_json(struct br_buf *o, struct br_slice text)
{
    int r = br_buf_append_cstr(o, "{\"token\":");
    r = r == BR_OK ? json_text(o, text.ptr, text.len) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, ",\"bytes\":[") : r;
    for (size_t i = 0; r == BR_OK && i < text.len; i++) {
        r = br_buf_printf(o, "%s%u", i ? "," : "", (unsigned)(unsigned char)text.ptr[i]);
    }
    return r == BR_OK ? br_buf_append_cstr(o, "]") : r;
}

static int append_logprob(struct br_buf *o, float lp)
{
    /* -inf is not JSON: OpenAI's floor is -9999. */
    double v = isfinite(lp) ? (double)lp : -9999.0;
    return br_buf_printf(o, ",\"logprob\":%.9g", v);
}

/* One entry of logprobs.content for tok. */
static int append_token_logprobs(struct local_job *j, struct br_buf *o,
                                 const struct br_engine_token *tok)
{
    const struct br_tokenizer *t = br_engine_model_tokenizer(j->lm->engine);
    struct br_slice piece = {0};
    int r = br_tokenizer_piece(t, j->prev, tok->token, &piece);
    r = r == BR_OK ? append_piece_json(o, piece) : r;
    r = r == BR_OK ? append_logprob(o, tok->logprob) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, ",\"top_logprobs\":[") : r;
    for (int i = 0; r == BR_OK && i < tok->n_top; i++) {
        struct br_slice alt = {0};
        r = br_tokenizer_piece(t, j->prev, tok->top[i].token, &alt);
        r = r == BR_OK && i ? br_buf_append_cstr(o, ",") : r;
        r = r == BR_OK ? append_piece_json(o, alt) : r;
        r = r == BR_OK ? append_logprob(o, tok->top[i].logprob) : r;
        r = r == BR_OK ? br_buf_append_cstr(o, "}") : r;
    }
    return r == BR_OK ? br_buf_append_cstr(o, "]}") : r;
}

/* Queues one chunk record for the loop. */
static int push_chunk(struct local_job *j)
{
    uint32_t n = (uint32_t)j->chunk.len;
    pthread_mutex_lock(&j->mu);
    int r = br_buf_append(&j->pending, &n, sizeof(n));
    r = r == BR_OK ? br_buf_append(&j->pending, j->chunk.ptr, j->chunk.len) : r;
    if (r == BR_OK) {
        job_wake_locked(j);
    }
    pthread_mutex_unlock(&j->mu);
    return r;
}

static int stream_token(struct local_job *j, const struct br_engine_token *tok)
{
    bool with_lp = j->logprobs && tok->token >= 0;
    if (tok->text.len == 0 && !with_lp) {
        return BR_OK;
    }
    struct br_buf *o = &j->chunk;
    br_buf_reset(o);
    int r = br_buf_append(o, j->head.ptr, j->head.len);
    if (j->text_mode) {
        r = r == BR_OK ? br_buf_append_cstr(o, "{\"text\":") : r;
        r = r == BR_OK ? json_text(o, tok->text.ptr, tok->text.len) : r;
        r = r == BR_OK ? br_buf_append_cstr(o, ",\"index\":0,\"logprobs\":null,"
                                               "\"finish_reason\":null}]}")
                       : r;
        return r == BR_OK ? push_chunk(j) : r;
    }
    r = r == BR_OK ? br_buf_append_cstr(o, "{\"index\":0,\"delta\":{\"content\":") : r;
    r = r == BR_OK ? json_text(o, tok->text.ptr, tok->text.len) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, "},\"logprobs\":") : r;
    if (r == BR_OK && with_lp) {
        r = br_buf_append_cstr(o, "{\"content\":[");
        r = r == BR_OK ? append_token_logprobs(j, o, tok) : r;
        r = r == BR_OK ? br_buf_append_cstr(o, "],\"refusal\":null}") : r;
    } else if (r == BR_OK) {
        r = br_buf_append_cstr(o, "null");
    }
    r = r == BR_OK ? br_buf_append_cstr(o, ",\"finish_reason\":null}]}") : r;
    return r == BR_OK ? push_chunk(j) : r;
}

static int on_token(void *user, const struct br_engine_token *tok)
{
    struct local_job *j = user;
    if (atomic_load(&j->canceled)) {
        return BR_ERR_CANCELED;
    }
    int r;
    if (j->stream) {
        r = stream_token(j, tok);
    } else {
        r = br_buf_append(&j->content, tok->text.ptr, tok->text.len);
        if (r == BR_OK && j->logprobs && tok->token >= 0) {
            r = j->lp.len ? br_buf_append_cstr(&j->lp, ",") : BR_OK;
            r = r == BR_OK ? append_token_logprobs(j, &j->lp, tok) : r;
        }
    }
    if (tok->token >= 0) {
        j->prev = tok->token;
    }
    return r;
}

static int usage_json(struct br_buf *o, const struct br_engine_gen_result *res)
{
    return br_buf_printf(
        o, "{\"prompt_tokens\":%zu,\"completion_tokens\":%zu,\"total_tokens\":%zu}",
        res->prompt_tokens, res->completion_tokens, res->prompt_tokens + res->completion_tokens);
}

/* The non-streamed chat.completion (into j->body; caller holds nothing). */
static int build_text_body(struct local_job *j, const struct br_engine_gen_result *res)
{
    struct br_buf *o = &j->body;
    int r = br_buf_printf(
        o,
        "{\"id\":\"%s\",\"object\":\"text_completion\",\"created\":%" PRId64 ",\"model\":", j->id,
        j->created);
    r = r == BR_OK ? br__json_append_string(o, j->model, strlen(j->model)) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, ",\"choices\":[{\"text\":") : r;
    r = r == BR_OK ? json_text(o, j->content.ptr ? j->content.ptr : "", j->content.len) : r;
    r = r == BR_OK ? br_buf_printf(o,
                                   ",\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}],"
                                   "\"usage\":",
                                   br_engine_finish_name(res->finish))
                   : r;
    r = r == BR_OK ? usage_json(o, res) : r;
    return r == BR_OK ? br_buf_append_cstr(o, "}") : r;
}

static int build_body(struct local_job *j, const struct br_engine_gen_result *res)
{
    struct br_buf *o = &j->body;
    if (j->text_mode) {
        return build_text_body(j, res);
    }
    int r = br_buf_printf(
        o,
        "{\"id\":\"%s\",\"object\":\"chat.completion\",\"created\":%" PRId64 ",\"model\":", j->id,
        j->created);
    r = r == BR_OK ? br__json_append_string(o, j->model, strlen(j->model)) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, ",\"choices\":[{\"index\":0,\"message\":{\"role\":"
                                           "\"assistant\",\"content\":")
                   : r;
    r = r == BR_OK ? json_text(o, j->content.ptr ? j->content.ptr : "", j->content.len) : r;
    r = r == BR_OK ? br_buf_append_cstr(o, ",\"refusal\":null},\"logprobs\":") : r;
    if (r == BR_OK && j->logprobs) {
        r = br_buf_append_cstr(o, "{\"content\":[");
        r = r == BR_OK ? br_buf_append(o, j->lp.ptr ? j->lp.ptr : "", j->lp.len) : r;
        r = r == BR_OK ? br_buf_append_cstr(o, "],\"refusal\":null}") : r;
    } else if (r == BR_OK) {
        r = br_buf_append_cstr(o, "null");
    }
    r = r == BR_OK
            ? br_buf_printf(
                  o, ",\"finish_reason\":\"%s\"}],\"usage\":", br_engine_finish_name(res->finish))
            : r;
    r = r == BR_OK ? usage_json(o, res) : r;
    return r == BR_OK ? br_buf_append_cstr(o, "}") : r;
}

/*
 * The configured context cap: max_tokens shrinks so that prompt + completion stay within it
 * (finish "length" when the cap is what stops generation).
 */
static int apply_context_cap(struct local_job *j, struct br_engine_gen_params *p, char *err,
                             size_t errlen)
{
    int cap = j->lm->context;
    if (cap <= 0) {
        return BR_OK;
    }
    const br_engine_model *m = j->lm->engine;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = br_tokenizer_encode(br_engine_model_tokenizer(m), j->prompt, j->prompt_len,
                                 br_engine_model_add_bos(m), &ids, &n);
    br_free(ids);
    if (rc != BR_OK) {
        return rc;
    }
    if (n >= (size_t)cap) {
        (void)snprintf(err, errlen, "the prompt has %zu tokens and the model's context is %d", n,
                       cap);
        return BR_ERR_LIMIT;
    }
    int room = cap - (int)n;
    if (p->max_tokens <= 0 || p->max_tokens > room) {
        p->max_tokens = room;
    }
    return BR_OK;
}

/* Pool thread: runs one job to its end. */
static void run_job(struct local_job *j)
{
    struct br_engine_gen_result res;
    char err[BR_ENGINE_ERR_CAP] = "";
    int rc = BR_ERR_CANCELED;
    memset(&res, 0, sizeof(res));
    struct br_engine_gen_params p = j->params;
    p.on_token = on_token;
    p.user = j;
    struct br_lora_use use[2];
    int n_use = 0;
    if (j->lm->lora && j->lm->lora_use.scale != 0.0F) {
        use[n_use++] = j->lm->lora_use;
    }
    if (j->adapter && j->adapter->scale != 0.0F) {
        use[n_use].adapter = j->adapter->lora;
        use[n_use++].scale = j->adapter->scale;
    }
    if (n_use) {
        p.lora = use;
        p.n_lora = n_use;
    }
    if (!atomic_load(&j->canceled)) {
        rc = apply_context_cap(j, &p, err, sizeof(err));
    }
    if (rc == BR_OK) {
        rc =
            br_engine_generate(j->lm->engine, j->prompt, j->prompt_len, &p, &res, err, sizeof(err));
    }
    if (rc == BR_OK && !j->stream) {
        rc = build_body(j, &res);
    }
    pthread_mutex_lock(&j->mu);
    j->gen_rc = rc;
    (void)snprintf(j->gen_err, sizeof(j->gen_err), "%s", err);
    j->res = res;
    j->done = true;
    job_wake_locked(j);
    pthread_mutex_unlock(&j->mu);
    job_unref(j);
}

static void *pool_main(void *arg)
{
    struct local_model *lm = arg;
    pthread_mutex_lock(&lm->mu);
    for (;;) {
        while (!lm->head && !lm->stopping) {
            pthread_cond_wait(&lm->cv, &lm->mu);
        }
        if (lm->stopping) {
            break;
        }
        struct local_job *j = lm->head;
        lm->head = j->next;
        if (!lm->head) {
            lm->tail = NULL;
        }
        j->queued = false;
        lm->n_waiting--;
        lm->n_running++;
        pthread_mutex_unlock(&lm->mu);
        run_job(j);
        pthread_mutex_lock(&lm->mu);
        lm->n_running--;
    }
    pthread_mutex_unlock(&lm->mu);
    return NULL;
}

/* ------------------------------------------------------------------ model state */

static void local_model_destroy(void *state)
{
    struct local_model *lm = state;
    if (!lm) {
        return;
    }
    pthread_mutex_lock(&lm->mu);
    lm->stopping = true;
    pthread_cond_broadcast(&lm->cv);
    pthread_mutex_unlock(&lm->mu);
    for (int i = 0; i < lm->n_started; i++) {
        pthread_join(lm->threads[i], NULL);
    }
    /* Jobs still queued belong to calls that outlive the snapshot: cannot happen, as a call
     * holds the runtime; drop the queue's references anyway. */
    while (lm->head) {
        struct local_job *j = lm->head;
        lm->head = j->next;
        job_unref(j);
    }
    br_free(lm->threads);
    while (lm->adapters) {
        struct local_adapter *a = lm->adapters;
        lm->adapters = a->next;
        adapter_unref(a);
    }
    pthread_mutex_destroy(&lm->adapters_mu);
    br_lora_close(lm->lora);
    br_engine_model_close(lm->engine);
    pthread_cond_destroy(&lm->cv);
    pthread_mutex_destroy(&lm->mu);
    br_free(lm);
}

static int local_model_create(const struct br_provider_target *t, void **state_out, char *err,
                              size_t errlen)
{
    *state_out = NULL;
    if (!t->local_model || !*t->local_model) {
        (void)snprintf(err, errlen, "provider local needs local: {model: PATH}");
        return BR_ERR_INVAL;
    }
    struct local_model *lm = br_calloc(1, sizeof(*lm));
    if (!lm) {
        return BR_ERR_NOMEM;
    }
    pthread_mutex_init(&lm->mu, NULL);
    pthread_mutex_init(&lm->adapters_mu, NULL);
    pthread_cond_init(&lm->cv, NULL);
    lm->simple_template = t->local_template && strcmp(t->local_template, "simple") == 0;
    lm->context = t->local_context > 0 ? t->local_context : 0;
    lm->queue_cap = t->local_queue >= 0 ? t->local_queue : 16;
    lm->n_threads = t->local_threads > 0 ? t->local_threads : 1;
    char eerr[BR_ENGINE_ERR_CAP] = "";
    int rc =
        br_engine_model_open(t->local_model, t->local_tokenizer, &lm->engine, eerr, sizeof(eerr));
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "%s", eerr[0] ? eerr : br_strerror(rc));
        goto fail;
    }
    if (t->local_lora) {
        rc = br_lora_open(t->local_lora, br_engine_model_config(lm->engine), &lm->lora, eerr,
                          sizeof(eerr));
        if (rc != BR_OK) {
            (void)snprintf(err, errlen, "%s", eerr[0] ? eerr : br_strerror(rc));
            goto fail;
        }
        lm->lora_use.adapter = lm->lora;
        lm->lora_use.scale = (float)t->local_lora_scale;
    }
    /* Named adapters, in the config's order (the list is built newest first). */
    for (size_t i = t->n_local_adapters; i-- > 0;) {
        rc = adapter_add(lm, t->local_adapter_names[i], t->local_adapter_paths[i],
                         t->local_adapter_scales[i], true, eerr, sizeof(eerr));
        if (rc != BR_OK) {
            (void)snprintf(err, errlen, "adapter %s: %s", t->local_adapter_names[i], eerr);
            goto fail;
        }
    }
    lm->threads = br_calloc((size_t)lm->n_threads, sizeof(*lm->threads));
    if (!lm->threads) {
        rc = BR_ERR_NOMEM;
        goto fail;
    }
    for (int i = 0; i < lm->n_threads; i++) {
        if (pthread_create(&lm->threads[i], NULL, pool_main, lm) != 0) {
            (void)snprintf(err, errlen, "cannot start generation thread %d", i + 1);
            rc = BR_ERR_NOMEM;
            goto fail;
        }
        lm->n_started++;
    }
    *state_out = lm;
    return BR_OK;
fail:
    local_model_destroy(lm);
    return rc;
}

/* ------------------------------------------------------------------ request parsing (loop) */

static int append_text(struct br_buf *out, const json_t *content)
{
    if (json_is_string(content)) {
        return br_buf_append(out, json_string_value(content), json_string_length(content));
    }
    size_t i;
    const json_t *part;
    json_array_foreach(content, i, part)
    {
        const json_t *text = json_object_get(part, "text");
        if (json_is_string(text)) {
            int r = br_buf_append(out, json_string_value(text), json_string_length(text));
            if (r != BR_OK) {
                return r;
            }
        }
    }
    return BR_OK;
}

static int render_prompt(const struct local_model *lm, const json_t *req, struct br_buf *out)
{
    const json_t *msgs = json_object_get(req, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        return BR_ERR_INVAL;
    }
    if (!lm->simple_template) {
        for (size_t i = json_array_size(msgs); i-- > 0;) {
            const json_t *m = json_array_get(msgs, i);
            const char *role = json_string_value(json_object_get(m, "role"));
            if (role && strcmp(role, "user") == 0) {
                return append_text(out, json_object_get(m, "content"));
            }
        }
        return BR_ERR_NOTFOUND;
    }
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *role = json_string_value(json_object_get(m, "role"));
        int r = br_buf_printf(out, "%s: ", role ? role : "user");
        r = r == BR_OK ? append_text(out, json_object_get(m, "content")) : r;
        r = r == BR_OK ? br_buf_append_cstr(out, "\n") : r;
        if (r != BR_OK) {
            return r;
        }
    }
    return br_buf_append_cstr(out, "assistant:");
}

static int parse_stop(struct local_job *j, const json_t *stop, const char **why)
{
    size_t n = 0;
    const json_t *one[1] = {stop};
    const json_t *const *items = one;
    size_t count = 1;
    if (!stop || json_is_null(stop)) {
        return BR_OK;
    }
    if (json_is_array(stop)) {
        count = json_array_size(stop);
        items = NULL;
    }
    if (count > BR_ENGINE_MAX_STOP) {
        *why = "stop: at most 4 strings";
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < count; i++) {
        const json_t *s = items ? items[i] : json_array_get(stop, i);
        if (!json_is_string(s) || json_string_length(s) == 0 ||
            json_string_length(s) > BR_ENGINE_MAX_STOP_LEN) {
            *why = "stop: expected a non-empty string (at most 256 bytes) or an array of them";
            return BR_ERR_INVAL;
        }
        memcpy(j->stops[n], json_string_value(s), json_string_length(s) + 1);
        j->params.stop[n] = j->stops[n];
        n++;
    }
    return BR_OK;
}

static int number_in(const json_t *v, double lo, double hi, double *out)
{
    if (!v || json_is_null(v)) {
        return BR_ERR_NOTFOUND;
    }
    if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi) {
        return BR_ERR_INVAL;
    }
    *out = json_number_value(v);
    return BR_OK;
}

/* Sampling parameters from the request; *why names the bad one. */
static int parse_params(struct local_job *j, const json_t *req, const char **why)
{
    struct br_engine_gen_params *p = &j->params;
    double v;
    int r = number_in(json_object_get(req, "temperature"), 0, 2, &v);
    if (r == BR_OK) {
        p->sampler.temperature = (float)v;
    } else if (r == BR_ERR_NOTFOUND) {
        p->sampler.temperature = 1.0F;
    } else {
        *why = "temperature: expected a number from 0 to 2";
        return r;
    }
    r = number_in(json_object_get(req, "top_p"), 0, 1, &v);
    if (r == BR_OK) {
        p->sampler.top_p = (float)v;
    } else if (r != BR_ERR_NOTFOUND) {
        *why = "top_p: expected a number from 0 to 1";
        return r;
    }
    r = number_in(json_object_get(req, "seed"), -9.2e18, 9.2e18, &v);
    if (r == BR_OK) {
        p->sampler.seed = (uint64_t)(int64_t)v;
    } else if (r != BR_ERR_NOTFOUND) {
        *why = "seed: expected an integer";
        return r;
    }
    const json_t *mt = json_object_get(req, "max_completion_tokens");
    if (!mt || json_is_null(mt)) {
        mt = json_object_get(req, "max_tokens");
    }
    r = number_in(mt, 1, 1e9, &v);
    if (r == BR_OK) {
        p->max_tokens = (int)v;
    } else if (r != BR_ERR_NOTFOUND) {
        *why = "max_tokens: expected a positive integer";
        return r;
    }
    r = number_in(json_object_get(req, "n"), 1, 1, &v);
    if (r != BR_OK && r != BR_ERR_NOTFOUND) {
        *why = "n: a local model generates one choice per request";
        return r;
    }
    j->logprobs = json_is_true(json_object_get(req, "logprobs"));
    r = number_in(json_object_get(req, "top_logprobs"), 0, BR_ENGINE_MAX_TOP_LOGPROBS, &v);
    if (r == BR_OK) {
        p->top_logprobs = j->logprobs ? (int)v : 0;
    } else if (r != BR_ERR_NOTFOUND) {
        *why = "top_logprobs: expected an integer from 0 to 20";
        return r;
    }
    return parse_stop(j, json_object_get(req, "stop"), why);
}

/* ------------------------------------------------------------------ loop side */

static void base_result(const struct local_job *j, struct br_provider_result *res)
{
    memset(res, 0, sizeof(*res));
    res->upstream_model = j->model;
    res->t_first_byte_ns = j->t_first_byte_ns;
    res->t_first_token_ns = j->t_first_token_ns;
}

static void deliver_done(struct local_job *j, const struct br_provider_result *res)
{
    struct br_provider_call *call = j->call;
    job_close(j);
    call->priv = NULL;
    call->sink->on_done(call->sink_user, res);
}

static void fail_call(struct local_job *j, int rc, int status, const char *msg, const char *type,
                      const char *code)
{
    struct br_provider_result res;
    base_result(j, &res);
    res.partial = j->begun;
    br__provider_fail(j->call->arena, rc, status, BR_UPSTREAM_ERROR_NONE, msg, type, code, &res);
    if (status == 503) {
        res.retry_after_ms = 1000;
    }
    deliver_done(j, &res);
}

/* Streams the chunk records in buf; false when the call was canceled meanwhile. */
static bool emit_records(struct local_job *j, const struct br_buf *buf)
{
    size_t pos = 0;
    while (pos + sizeof(uint32_t) <= buf->len) {
        uint32_t n;
        memcpy(&n, buf->ptr + pos, sizeof(n));
        pos += sizeof(n);
        if (!j->t_first_token_ns) {
            j->t_first_token_ns = br_clock_now_ns();
        }
        j->completion_seen++;
        j->call->sink->on_chunk(j->call->sink_user, br_slice_make(buf->ptr + pos, n));
        pos += n;
        if (j->ended) {
            return false;
        }
    }
    return true;
}

/* Role chunk, then the final chunk and the usage chunk, from head. */
static bool emit_simple_chunk(struct local_job *j, const char *tail)
{
    struct br_buf o;
    br_buf_init(&o, LOCAL_OUT_MAX);
    int r = br_buf_append(&o, j->head.ptr, j->head.len);
    r = r == BR_OK ? br_buf_append_cstr(&o, tail) : r;
    if (r == BR_OK) {
        j->call->sink->on_chunk(j->call->sink_user, br_slice_make(o.ptr, o.len));
    }
    br_buf_cleanup(&o);
    return r == BR_OK && !j->ended;
}

static bool begin(struct local_job *j)
{
    if (j->begun) {
        return true;
    }
    j->begun = true;
    j->call->sink->on_begin(j->call->sink_user);
    if (j->ended) {
        return false;
    }
    if (!j->stream || j->text_mode) {
        return true;
    }
    return emit_simple_chunk(j, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                                "\"logprobs\":null,\"finish_reason\":null}]}");
}

static void finish_stream(struct local_job *j, const struct br_engine_gen_result *g)
{
    char tail[160];
    (void)snprintf(tail, sizeof(tail),
                   j->text_mode
                       ? "{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}]}"
                       : "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"%s\"}]}",
                   br_engine_finish_name(g->finish));
    if (!emit_simple_chunk(j, tail)) {
        return;
    }
    if (j->call->client_wants_usage) {
        char u[160];
        (void)snprintf(u, sizeof(u),
                       "],\"usage\":{\"prompt_tokens\":%zu,\"completion_tokens\":%zu,"
                       "\"total_tokens\":%zu}}",
                       g->prompt_tokens, g->completion_tokens,
                       g->prompt_tokens + g->completion_tokens);
        if (!emit_simple_chunk(j, u)) {
            return;
        }
    }
}

static void finish_generation(struct local_job *j)
{
    struct br_engine_gen_result *g = &j->res;
    if (j->gen_rc == BR_ERR_NOTFOUND) {
        fail_call(j, j->gen_rc, 404, j->gen_err, "invalid_request_error", "model_not_found");
        return;
    }
    if (j->gen_rc == BR_ERR_LIMIT || j->gen_rc == BR_ERR_INVAL) {
        fail_call(j, j->gen_rc, 400, j->gen_err[0] ? j->gen_err : "the prompt is too long",
                  "invalid_request_error",
                  j->gen_rc == BR_ERR_LIMIT ? "context_length_exceeded" : "invalid_value");
        return;
    }
    if (j->gen_rc != BR_OK) {
        fail_call(j, j->gen_rc, j->gen_rc == BR_ERR_NOMEM ? 503 : 500,
                  j->gen_err[0] ? j->gen_err : br_strerror(j->gen_rc), "server_error",
                  "local_generation_failed");
        return;
    }
    if (!begin(j)) {
        return;
    }
    if (j->stream) {
        finish_stream(j, g);
    } else {
        if (!j->t_first_token_ns) {
            j->t_first_token_ns = br_clock_now_ns();
        }
        j->call->sink->on_body(j->call->sink_user, br_slice_make(j->body.ptr, j->body.len));
    }
    if (j->ended) {
        return;
    }
    struct br_provider_result res;
    base_result(j, &res);
    res.rc = BR_OK;
    res.status = 200;
    res.usage.prompt_tokens = (int64_t)g->prompt_tokens;
    res.usage.completion_tokens = (int64_t)g->completion_tokens;
    res.usage.reported = true;
    res.finish_reason = br_engine_finish_name(g->finish);
    deliver_done(j, &res);
}

static void on_async(uv_async_t *a)
{
    struct local_job *j = (struct local_job *)a;
    if (j->ended) {
        return;
    }
    if (!j->t_first_byte_ns) {
        j->t_first_byte_ns = br_clock_now_ns();
    }
    if (j->early_status) {
        fail_call(j, BR_ERR_BUSY, j->early_status,
                  "the local model is busy: every generation thread is working and the queue of "
                  "waiting requests is full; retry later",
                  "server_error", "local_queue_full");
        return;
    }
    struct br_buf got;
    pthread_mutex_lock(&j->mu);
    got = j->pending;
    br_buf_init(&j->pending, LOCAL_OUT_MAX);
    bool done = j->done;
    pthread_mutex_unlock(&j->mu);
    bool live = true;
    if (got.len) {
        live = begin(j) && emit_records(j, &got);
        if (live && j->call->sink->on_flush) {
            j->call->sink->on_flush(j->call->sink_user);
            live = !j->ended;
        }
    }
    br_buf_cleanup(&got);
    if (live && done) {
        finish_generation(j);
    }
}

static int build_head(struct local_job *j)
{
    int r = br_buf_printf(
        &j->head, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%" PRId64 ",\"model\":", j->id,
        j->text_mode ? "text_completion" : "chat.completion.chunk", j->created);
    r = r == BR_OK ? br__json_append_string(&j->head, j->model, strlen(j->model)) : r;
    return r == BR_OK ? br_buf_append_cstr(&j->head, ",\"choices\":[") : r;
}

static struct local_job *job_new(struct br_provider_call *call, struct local_model *lm)
{
    struct local_job *j = br_calloc(1, sizeof(*j));
    if (!j) {
        return NULL;
    }
    j->lm = lm;
    j->call = call;
    atomic_init(&j->refs, 1);
    atomic_init(&j->canceled, false);
    pthread_mutex_init(&j->mu, NULL);
    br_buf_init(&j->head, 4096);
    br_buf_init(&j->chunk, LOCAL_OUT_MAX);
    br_buf_init(&j->content, LOCAL_OUT_MAX);
    br_buf_init(&j->lp, LOCAL_OUT_MAX);
    br_buf_init(&j->pending, LOCAL_OUT_MAX);
    br_buf_init(&j->body, LOCAL_OUT_MAX);
    j->prev = -1;
    j->stream = call->stream;
    j->model = call->target->name ? call->target->name : "local";
    j->created = br_clock_wall_ms() / 1000;
    br_engine_gen_params_init(&j->params);
    j->params.n_threads = 1;
    return j;
}

/* Parses the request into j; on a client error fills *status and *why. */
static int prepare(struct local_job *j, struct br_provider_call *call, const char **why)
{
    const json_t *req = br_provider_call_request(call);
    if (!req) {
        *why = "the request body is not a JSON object";
        return BR_ERR_INVAL;
    }
    int r = parse_params(j, req, why);
    if (r != BR_OK) {
        return r;
    }
    struct br_buf prompt;
    br_buf_init(&prompt, LOCAL_PROMPT_MAX);
    const json_t *text = json_object_get(req, "prompt");
    j->text_mode = text && !json_object_get(req, "messages");
    if (j->text_mode) {
        j->logprobs = false; /* the legacy logprobs shape is not produced */
        j->params.top_logprobs = 0;
        if (!json_object_get(req, "max_tokens")) {
            j->params.max_tokens = 16; /* the legacy endpoint's default */
        }
        r = json_is_string(text)
                ? br_buf_append(&prompt, json_string_value(text), json_string_length(text))
                : BR_ERR_PARSE;
        if (r == BR_ERR_PARSE) {
            *why = "prompt: expected a string";
            r = BR_ERR_INVAL;
        }
    } else {
        r = render_prompt(j->lm, req, &prompt);
    }
    if (!*why && (r == BR_ERR_NOTFOUND || r == BR_ERR_INVAL)) {
        *why = "messages: the local model's raw template needs a user message with text";
    } else if (r == BR_ERR_LIMIT) {
        *why = "messages: the prompt is longer than 1 MiB";
        r = BR_ERR_INVAL;
    }
    j->prompt = prompt.ptr;
    j->prompt_len = prompt.len;
    if (!j->prompt) {
        j->prompt = br_strdup("");
    }
    uint64_t h = br_clock_now_ns() ^ (uint64_t)(uintptr_t)j;
    (void)snprintf(j->id, sizeof(j->id), "%s-local-%016" PRIx64, j->text_mode ? "cmpl" : "chatcmpl",
                   h);
    r = r == BR_OK && !j->prompt ? BR_ERR_NOMEM : r;
    return r == BR_OK ? build_head(j) : r;
}

/* Queues j, or answers 503 when the queue is full. */
static void submit(struct local_model *lm, struct local_job *j)
{
    pthread_mutex_lock(&lm->mu);
    bool accept = lm->n_waiting + lm->n_running < lm->n_threads + lm->queue_cap;
    if (accept) {
        atomic_fetch_add(&j->refs, 1);
        j->queued = true;
        if (lm->tail) {
            lm->tail->next = j;
        } else {
            lm->head = j;
        }
        lm->tail = j;
        lm->n_waiting++;
        pthread_cond_signal(&lm->cv);
    }
    pthread_mutex_unlock(&lm->mu);
    if (!accept) {
        j->early_status = 503;
        uv_async_send(&j->async);
    }
}

static int local_call_start(struct br_provider_call *call)
{
    struct local_model *lm = call->model_state;
    if (!lm || !call->sink || !call->loop) {
        return BR_ERR_INVAL;
    }
    struct local_job *j = job_new(call, lm);
    if (!j) {
        return BR_ERR_NOMEM;
    }
    const char *why = NULL;
    int why_rc = BR_ERR_INVAL;
    int r = BR_OK;
    if (call->variant) {
        j->adapter = adapter_get(lm, call->variant);
        j->model_owned = br_malloc(strlen(j->model) + strlen(call->variant) + 2);
        if (!j->model_owned) {
            job_unref(j);
            return BR_ERR_NOMEM;
        }
        (void)sprintf(j->model_owned, "%s:%s", j->model, call->variant);
        j->model = j->model_owned;
    }
    r = prepare(j, call, &why);
    if (r != BR_OK && !why) {
        job_unref(j);
        return r;
    }
    if (call->variant && !j->adapter) {
        why = "model: this local model has no adapter by that name (GET "
              "/admin/models/MODEL/adapters lists them)";
        why_rc = BR_ERR_NOTFOUND;
    }
    if (uv_async_init(call->loop, &j->async, on_async) != 0) {
        job_unref(j);
        return BR_ERR_IO;
    }
    call->priv = j;
    if (why) {
        /* Answered from the loop on the next iteration, with the reason. */
        j->gen_rc = why_rc;
        (void)snprintf(j->gen_err, sizeof(j->gen_err), "%s", why);
        pthread_mutex_lock(&j->mu);
        j->done = true;
        pthread_mutex_unlock(&j->mu);
        uv_async_send(&j->async);
        return BR_OK;
    }
    submit(lm, j);
    return BR_OK;
}

static void local_call_cancel(struct br_provider_call *call, struct br_provider_result *partial)
{
    struct local_job *j = call->priv;
    bool live = j && !j->ended;
    if (live) {
        base_result(j, partial);
    } else {
        memset(partial, 0, sizeof(*partial));
    }
    partial->rc = BR_ERR_CANCELED;
    partial->status = 499;
    partial->error_kind = BR_UPSTREAM_ERROR_CANCELED;
    partial->partial = true;
    if (live) {
        partial->usage.prompt_tokens = br_tokens_estimate(j->prompt, j->prompt_len);
        partial->usage.completion_tokens = (int64_t)j->completion_seen;
        partial->usage.reported = false;
        atomic_store(&j->canceled, true);
        struct local_model *lm = j->lm;
        bool dequeued = false;
        pthread_mutex_lock(&lm->mu);
        if (j->queued) {
            struct local_job **pp = &lm->head;
            while (*pp && *pp != j) {
                pp = &(*pp)->next;
            }
            if (*pp) {
                *pp = j->next;
                if (lm->tail == j) {
                    lm->tail = NULL;
                    for (struct local_job *q = lm->head; q; q = q->next) {
                        lm->tail = q;
                    }
                }
                lm->n_waiting--;
                j->queued = false;
                dequeued = true;
            }
        }
        pthread_mutex_unlock(&lm->mu);
        if (dequeued) {
            job_unref(j);
        }
        job_close(j);
    }
    call->priv = NULL;
}

const struct br_provider_ops br_provider_local = {
    .name = "local",
    .in_process = true,
    .model_create = local_model_create,
    .model_destroy = local_model_destroy,
    .call_start = local_call_start,
    .call_cancel = local_call_cancel,
    .variant_exists = local_variant_exists,
    .variant_load = local_variant_load,
    .variant_unload = local_variant_unload,
    .variant_list = local_variant_list,
};
