/* SPDX-License-Identifier: MIT */
/*
 * Virtual keys on the API surface: the admin endpoints (master key) and the admission check that
 * every upstream-bound request of a virtual key passes before its first provider call.
 *
 *   POST   /admin/keys        create: 201 with the secret ("key"), shown this once only
 *   GET    /admin/keys        list (no secrets)
 *   GET    /admin/keys/{id}   one key, with its spend in the current period
 *   PATCH  /admin/keys/{id}   change name, budget, rpm, tpm, models, metadata (null clears)
 *   DELETE /admin/keys/{id}   revoke (the key answers 401 from now on; its row stays)
 *
 * Request body fields: name (string), budget ({usd: number or decimal string, period: day |
 * month | total (default total)}), rpm, tpm (integers >= 0; 0 or null = no limit), models
 * (array of model or route names a key may ask for; null = all), metadata (an object, e.g.
 * {"team": "search", "user": "ana"}). Money is reported as decimal USD strings (exact).
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/json.h"
#include "core/log.h"
#include "cost/cost.h"

#define MODEL_NAME_MAX 256

/* ------------------------------------------------------------------ admission */

static int64_t estimate(const struct br_model_cfg *m, int64_t prompt_tokens, int64_t max_tokens,
                        int64_t *tokens_out)
{
    struct br_usage u = {0};
    u.prompt_tokens = prompt_tokens;
    u.completion_tokens = max_tokens > 0 ? max_tokens : m->default_max_tokens;
    if (u.completion_tokens < 0) {
        u.completion_tokens = 0;
    }
    *tokens_out = u.prompt_tokens + u.completion_tokens;
    return br_cost_compute(&m->price, &u);
}

static void usd(int64_t nano, char out[BR_COST_USD_STRLEN])
{
    br_cost_format_usd(nano, out);
}

static void deny_message(const struct br_keys_denial *dn, struct br__key_deny *d)
{
    d->status = 429;
    d->param = NULL;
    d->retry_after[0] = '\0';
    if (dn->retry_after_s > 0) {
        (void)snprintf(d->retry_after, sizeof(d->retry_after), "%lld",
                       (long long)dn->retry_after_s);
    }
    switch (dn->why) {
    case BR_KEYS_DENY_RPM:
        d->code = "rate_limit_exceeded";
        (void)snprintf(d->msg, sizeof(d->msg),
                       "Rate limit reached for this API key: %lld requests per minute. Retry "
                       "after %s s.",
                       (long long)dn->limit, d->retry_after);
        return;
    case BR_KEYS_DENY_TPM:
        d->code = "rate_limit_exceeded";
        (void)snprintf(d->msg, sizeof(d->msg),
                       "Rate limit reached for this API key: %lld tokens per minute. Retry after "
                       "%s s.",
                       (long long)dn->limit, d->retry_after);
        return;
    case BR_KEYS_DENY_BUDGET: {
        char b[BR_COST_USD_STRLEN];
        char s[BR_COST_USD_STRLEN];
        char r[BR_COST_USD_STRLEN];
        char n[BR_COST_USD_STRLEN];
        usd(dn->limit, b);
        usd(dn->spent_nano, s);
        usd(dn->reserved_nano, r);
        usd(dn->needed_nano, n);
        d->code = "budget_exceeded";
        (void)snprintf(d->msg, sizeof(d->msg),
                       "This API key's budget is exhausted: budget %s USD per %s, spent %s USD, "
                       "held by requests in flight %s USD, this request may cost up to %s USD "
                       "(lower max_tokens to need less).",
                       b, br_keys_period_name(dn->period), s, r, n);
        return;
    }
    case BR_KEYS_DENY_REVOKED:
    case BR_KEYS_DENY_NONE:
        break;
    }
    d->status = 401;
    d->code = "invalid_api_key";
    (void)snprintf(d->msg, sizeof(d->msg), "This API key has been revoked.");
}

int br__key_admit(br_vkey *k, const char *model_requested, const struct br_model_cfg *const *models,
                  size_t n_models, int64_t prompt_tokens, int64_t max_tokens,
                  struct br_keys_ticket *ticket, struct br__key_deny *d)
{
    const char *name = model_requested ? model_requested : "";
    if (!br_keys_model_allowed(k, name, strlen(name))) {
        d->status = 403;
        d->code = "model_not_allowed";
        d->param = "model";
        d->retry_after[0] = '\0';
        (void)snprintf(d->msg, sizeof(d->msg),
                       "This API key is not allowed to use the model `%.200s`.", name);
        return BR_ERR_LIMIT;
    }
    int64_t est = 0;
    int64_t tokens = 0;
    for (size_t i = 0; i < n_models; i++) {
        if (!models[i]) {
            continue;
        }
        int64_t t = 0;
        int64_t e = estimate(models[i], prompt_tokens, max_tokens, &t);
        est = e > est ? e : est;
        tokens = t > tokens ? t : tokens;
    }
    struct br_keys_denial dn;
    if (br_keys_admit(k, est, tokens, br_clock_wall_ms(), ticket, &dn) == BR_OK) {
        return BR_OK;
    }
    deny_message(&dn, d);
    return BR_ERR_LIMIT;
}

int br__key_admit_chat(br_vkey *k, const char *model_requested, const struct br_plan *plan,
                       const struct br_route_req *rreq, struct br_slice body,
                       struct br_keys_ticket *ticket, struct br__key_deny *d)
{
    int64_t prompt = 0;
    int64_t max_tokens = -1;
    if (rreq) {
        prompt = rreq->prompt_tokens;
        max_tokens = rreq->max_tokens;
    } else {
        /* The messages' JSON text: its punctuation makes this an overestimate (safe side). */
        struct br_slice m = br_json_obj_get(body, "messages");
        prompt = m.ptr ? br_tokens_estimate(m.ptr, m.len) : 0;
        struct br_slice mt = br_json_obj_get(body, "max_completion_tokens");
        if (!mt.ptr) {
            mt = br_json_obj_get(body, "max_tokens");
        }
        if (mt.ptr && br_json_int(mt, &max_tokens) != BR_OK) {
            max_tokens = -1;
        }
    }
    /* "n" choices each up to max_tokens (validated: 1..128). */
    int64_t n_choices = 1;
    struct br_slice nv = br_json_obj_get(body, "n");
    if (nv.ptr && (br_json_int(nv, &n_choices) != BR_OK || n_choices < 1 || n_choices > 128)) {
        n_choices = 1;
    }
    if (n_choices > 1) {
        const struct br_model_cfg *m0 = plan->n_steps ? plan->steps[0].model : NULL;
        int64_t base = max_tokens > 0 ? max_tokens : (m0 ? m0->default_max_tokens : 0);
        max_tokens = base * n_choices;
    }
    const struct br_model_cfg *models[BR_PLAN_MAX_STEPS];
    size_t n = 0;
    for (size_t i = 0; i < plan->n_steps && n < BR_PLAN_MAX_STEPS; i++) {
        models[n++] = plan->steps[i].model;
    }
    return br__key_admit(k, model_requested, models, n, prompt, max_tokens, ticket, d);
}

void br__key_settle(struct br_gateway *g, struct br_keys_ticket *ticket, int64_t cost_nano,
                    int64_t tokens)
{
    if (ticket->key && g->keys) {
        br_keys_settle(g->keys, ticket, cost_nano, tokens, br_clock_wall_ms());
    }
}

/* ------------------------------------------------------------------ admin: JSON */

static json_t *usd_json(int64_t nano)
{
    char s[BR_COST_USD_STRLEN];
    usd(nano, s);
    return json_string(s);
}

static json_t *int_or_null(int64_t v)
{
    return v > 0 ? json_integer(v) : json_null();
}

static json_t *ms_to_s(int64_t ms)
{
    return ms > 0 ? json_integer(ms / 1000) : json_null();
}

/* The admin view of a key; secret (may be NULL) only on creation. */
static json_t *info_json(const struct br_keys_info *in, const char *secret)
{
    json_t *models = json_null();
    if (in->models) {
        models = json_array();
        for (size_t i = 0; models && i < in->n_models; i++) {
            json_array_append_new(models, json_string(in->models[i]));
        }
    }
    json_t *meta = NULL;
    if (in->metadata_json) {
        meta = json_loads(in->metadata_json, 0, NULL);
    }
    json_t *budget = json_null();
    json_t *remaining = json_null();
    if (in->has_budget) {
        budget = json_pack("{s:o, s:s}", "usd", usd_json(in->budget_nano), "period",
                           br_keys_period_name(in->period));
        int64_t rem = in->budget_nano - in->spent_nano - in->reserved_nano;
        remaining = usd_json(rem > 0 ? rem : 0);
    }
    json_t *spend = json_pack(
        "{s:o, s:s, s:o, s:o, s:o, s:o, s:o}", "usd", usd_json(in->spent_nano), "period",
        br_keys_period_name(in->period), "period_start", ms_to_s(in->period_start_ms), "resets_at",
        ms_to_s(in->period_end_ms), "reserved_usd", usd_json(in->reserved_nano), "remaining_usd",
        remaining, "persisted_usd", usd_json(in->persisted_nano));
    json_t *j = json_pack(
        "{s:s, s:s, s:o, s:I, s:o, s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:{s:I, s:I, s:I}}", "id",
        in->id, "object", "virtual_key", "name", in->name ? json_string(in->name) : json_null(),
        "created_at", (json_int_t)(in->created_ms / 1000), "revoked_at", ms_to_s(in->revoked_ms),
        "active", in->revoked_ms == 0, "budget", budget, "spend", spend, "rpm",
        int_or_null(in->rpm), "tpm", int_or_null(in->tpm), "models", models, "metadata",
        meta ? meta : json_null(), "usage", "requests_last_minute",
        (json_int_t)in->requests_last_min, "tokens_last_minute", (json_int_t)in->tokens_last_min,
        "in_flight", (json_int_t)in->in_flight);
    if (j && secret) {
        json_object_set_new(j, "key", json_string(secret));
    }
    return j;
}

static void bad(br_http_request *req, const char *param, const char *msg)
{
    br_http_respond_error(req, 400, "invalid_request_error", "invalid_value", param, msg);
}

/* A USD amount: a JSON integer, real or decimal string, >= 0, into nano-USD. */
static int parse_usd(const json_t *v, int64_t *out)
{
    char buf[64];
    if (json_is_string(v)) {
        return br_cost_parse_usd(json_string_value(v), out);
    }
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < 0 || x > 9000000000LL) {
            return BR_ERR_RANGE;
        }
        *out = (int64_t)x * 1000000000LL;
        return BR_OK;
    }
    if (json_is_real(v)) {
        double x = json_real_value(v);
        if (!(x >= 0) || x > 9e9) {
            return BR_ERR_RANGE;
        }
        /* Nine decimals: the exact nano-USD nearest to the written number. */
        (void)snprintf(buf, sizeof(buf), "%.9f", x);
        return br_cost_parse_usd(buf, out);
    }
    return BR_ERR_PARSE;
}

/* Storage for the strings a spec borrows while a request body is parsed. */
struct spec_buf {
    const char *models[BR_KEYS_MODELS_MAX];
    char *meta; /* heap (jansson dump), freed after the call */
};

static int parse_budget(br_http_request *req, const json_t *v, struct br_keys_spec *s)
{
    if (json_is_null(v)) {
        s->has_budget = false;
        s->period = BR_KEYS_PERIOD_TOTAL;
        return BR_OK;
    }
    if (!json_is_object(v)) {
        bad(req, "budget", "budget must be an object {usd, period} or null.");
        return BR_ERR_INVAL;
    }
    s->period = BR_KEYS_PERIOD_TOTAL;
    const char *k;
    const json_t *x;
    bool have_usd = false;
    json_object_foreach((json_t *)v, k, x)
    {
        if (strcmp(k, "usd") == 0) {
            if (parse_usd(x, &s->budget_nano) != BR_OK) {
                bad(req, "budget.usd",
                    "budget.usd must be a non-negative amount in USD (a number or a decimal "
                    "string with at most 9 decimals).");
                return BR_ERR_INVAL;
            }
            have_usd = true;
        } else if (strcmp(k, "period") == 0) {
            if (!json_is_string(x) ||
                br_keys_period_parse(json_string_value(x), &s->period) != BR_OK) {
                bad(req, "budget.period", "budget.period must be day, month or total.");
                return BR_ERR_INVAL;
            }
        } else {
            bad(req, "budget", "budget: unknown field (allowed: usd, period).");
            return BR_ERR_INVAL;
        }
    }
    if (!have_usd) {
        bad(req, "budget.usd", "budget needs usd.");
        return BR_ERR_INVAL;
    }
    s->has_budget = true;
    return BR_OK;
}

static int parse_limit(br_http_request *req, const char *name, const json_t *v, int64_t *out)
{
    if (json_is_null(v)) {
        *out = 0;
        return BR_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > 1000000000000LL) {
        char *msg =
            br_arena_sprintf(req->arena, "%s must be a non-negative integer or null.", name);
        bad(req, name, msg ? msg : "invalid limit");
        return BR_ERR_INVAL;
    }
    *out = (int64_t)json_integer_value(v);
    return BR_OK;
}

static int parse_models(br_http_request *req, const json_t *v, struct br_keys_spec *s,
                        struct spec_buf *sb)
{
    s->models = NULL;
    s->n_models = 0;
    if (json_is_null(v)) {
        return BR_OK;
    }
    if (!json_is_array(v) || json_array_size(v) > BR_KEYS_MODELS_MAX) {
        bad(req, "models", "models must be an array of at most 64 model or route names, or null.");
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *m = json_array_get(v, i);
        const char *str = json_string_value(m);
        if (!str || json_string_length(m) == 0 || json_string_length(m) > MODEL_NAME_MAX ||
            strlen(str) != json_string_length(m) || strchr(str, '\n')) {
            bad(req, "models", "models: each entry must be a non-empty name (at most 256 bytes).");
            return BR_ERR_INVAL;
        }
        sb->models[i] = str;
    }
    s->models = sb->models;
    s->n_models = json_array_size(v);
    return BR_OK;
}

static int parse_metadata(br_http_request *req, const json_t *v, struct br_keys_spec *s,
                          struct spec_buf *sb)
{
    s->metadata_json = NULL;
    if (json_is_null(v)) {
        return BR_OK;
    }
    size_t len = 0;
    if (json_is_object(v)) {
        sb->meta = br__json_dump_heap(v, &len);
    }
    if (!json_is_object(v) || !sb->meta || len > BR_KEYS_META_MAX) {
        bad(req, "metadata", "metadata must be a JSON object of at most 4 KiB (or null).");
        return BR_ERR_INVAL;
    }
    s->metadata_json = sb->meta;
    return BR_OK;
}

/* One member of a create/update body into spec s; mask gets its field bit. */
static int parse_member(br_http_request *req, const char *k, const json_t *v,
                        struct br_keys_spec *s, struct spec_buf *sb, unsigned *mask)
{
    if (strcmp(k, "name") == 0) {
        if (!json_is_null(v) && (!json_is_string(v) || json_string_length(v) > BR_KEYS_NAME_MAX ||
                                 strlen(json_string_value(v)) != json_string_length(v))) {
            bad(req, "name", "name must be a string of at most 128 bytes, or null.");
            return BR_ERR_INVAL;
        }
        s->name = json_string_value(v);
        *mask |= BR_KEYS_FIELD_NAME;
        return BR_OK;
    }
    if (strcmp(k, "budget") == 0) {
        *mask |= BR_KEYS_FIELD_BUDGET;
        return parse_budget(req, v, s);
    }
    if (strcmp(k, "rpm") == 0) {
        *mask |= BR_KEYS_FIELD_RPM;
        return parse_limit(req, "rpm", v, &s->rpm);
    }
    if (strcmp(k, "tpm") == 0) {
        *mask |= BR_KEYS_FIELD_TPM;
        return parse_limit(req, "tpm", v, &s->tpm);
    }
    if (strcmp(k, "models") == 0) {
        *mask |= BR_KEYS_FIELD_MODELS;
        return parse_models(req, v, s, sb);
    }
    if (strcmp(k, "metadata") == 0) {
        *mask |= BR_KEYS_FIELD_METADATA;
        return parse_metadata(req, v, s, sb);
    }
    char *msg = br_arena_sprintf(req->arena,
                                 "Unknown field '%.60s' (allowed: name, budget, rpm, tpm, "
                                 "models, metadata).",
                                 k);
    br_http_respond_error(req, 400, "invalid_request_error", "unknown_parameter", NULL,
                          msg ? msg : "unknown field");
    return BR_ERR_INVAL;
}

/* Parses the body into spec; responds 400 and returns an error when it is not valid. An empty
 * body is an empty object. */
static int parse_spec(br_http_request *req, struct br_keys_spec *s, struct spec_buf *sb,
                      unsigned *mask)
{
    memset(s, 0, sizeof(*s));
    *mask = 0;
    if (req->body.len == 0) {
        return BR_OK;
    }
    json_error_t jerr;
    json_t *body = json_loadb(req->body.ptr, req->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(body)) {
        json_decref(body);
        br_http_respond_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                              "The body must be a JSON object.");
        return BR_ERR_PARSE;
    }
    int rc = BR_OK;
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v)
    {
        rc = parse_member(req, k, v, s, sb, mask);
        if (rc != BR_OK) {
            break;
        }
    }
    if (rc == BR_OK) {
        /* The strings must outlive the document: copy them to the request arena. */
        if (s->name && !(s->name = br_arena_strndup(req->arena, s->name, strlen(s->name)))) {
            rc = BR_ERR_NOMEM;
        }
        for (size_t i = 0; rc == BR_OK && s->models && i < s->n_models; i++) {
            const char *m = sb->models[i];
            sb->models[i] = m ? br_arena_strndup(req->arena, m, strlen(m)) : NULL;
            rc = sb->models[i] ? BR_OK : BR_ERR_NOMEM;
        }
        if (rc != BR_OK) {
            br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL, "out of memory");
        }
    }
    json_decref(body);
    return rc;
}

static void store_error(br_http_request *req, int rc)
{
    if (rc == BR_ERR_NOTFOUND) {
        br_http_respond_error(req, 404, "invalid_request_error", "key_not_found", NULL,
                              "No virtual key with this id.");
    } else if (rc == BR_ERR_INVAL) {
        bad(req, NULL, "A value is out of range.");
    } else if (rc == BR_ERR_NOMEM) {
        br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL, "out of memory");
    } else {
        br_http_respond_error(req, 500, "server_error", "key_store_error", NULL,
                              "The key store could not be written (see the gateway log).");
    }
}

/* ------------------------------------------------------------------ admin: endpoints */

static void create(br_keys *ks, br_http_request *req)
{
    struct br_keys_spec s;
    struct spec_buf sb = {0};
    unsigned mask = 0;
    if (parse_spec(req, &s, &sb, &mask) != BR_OK) {
        br_free(sb.meta);
        return;
    }
    char secret[BR_KEYS_SECRET_LEN + 1];
    struct br_keys_info info;
    int rc = br_keys_create(ks, &s, br_clock_wall_ms(), secret, &info);
    br_free(sb.meta);
    if (rc != BR_OK) {
        store_error(req, rc);
        return;
    }
    json_t *j = info_json(&info, secret);
    br_keys_info_cleanup(&info);
    memset(secret, 0, sizeof(secret));
    br__respond_json(req, 201, j);
}

static void update(br_keys *ks, br_http_request *req, const char *id)
{
    struct br_keys_spec s;
    struct spec_buf sb = {0};
    unsigned mask = 0;
    if (parse_spec(req, &s, &sb, &mask) != BR_OK) {
        br_free(sb.meta);
        return;
    }
    struct br_keys_info info;
    int rc = br_keys_update(ks, id, &s, mask, br_clock_wall_ms(), &info);
    br_free(sb.meta);
    if (rc != BR_OK) {
        store_error(req, rc);
        return;
    }
    json_t *j = info_json(&info, NULL);
    br_keys_info_cleanup(&info);
    br__respond_json(req, 200, j);
}

static int list_one(void *user, const struct br_keys_info *info)
{
    json_t *arr = user;
    json_t *j = info_json(info, NULL);
    return j ? json_array_append_new(arr, j) : -1;
}

static void list(br_keys *ks, br_http_request *req)
{
    json_t *arr = json_array();
    if (!arr || br_keys_list(ks, br_clock_wall_ms(), list_one, arr) != BR_OK) {
        json_decref(arr);
        store_error(req, BR_ERR_NOMEM);
        return;
    }
    br__respond_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", arr));
}

static void get_or_revoke(br_keys *ks, br_http_request *req, const char *id, bool revoke)
{
    struct br_keys_info info;
    int64_t now = br_clock_wall_ms();
    int rc = revoke ? br_keys_revoke(ks, id, now, &info) : br_keys_get(ks, id, now, &info);
    if (rc != BR_OK) {
        store_error(req, rc);
        return;
    }
    json_t *j = info_json(&info, NULL);
    br_keys_info_cleanup(&info);
    br__respond_json(req, 200, j);
}

void br__admin_keys(struct br_worker *w, br_http_request *req, struct br_slice rest)
{
    struct br_runtime *rt = br__worker_runtime(w);
    const char *key_id;
    enum br_auth_result ar = br__auth_check(rt->cfg, req, true, &key_id);
    if (ar != BR_AUTH_OK) {
        br__auth_fail(req, ar, true);
        return;
    }
    br_keys *ks = w->g->keys;
    if (!ks) {
        br_http_respond_error(req, 404, "invalid_request_error", "key_store_off", NULL,
                              "Virtual keys are off: auth.key_store is off in the config.");
        return;
    }
    enum br_http_method m = req->method;
    if (rest.len == 0 || (rest.len == 1 && rest.ptr[0] == '/')) {
        if (m == BR_HTTP_METHOD_POST) {
            create(ks, req);
        } else if (m == BR_HTTP_METHOD_GET || m == BR_HTTP_METHOD_HEAD) {
            list(ks, req);
        } else {
            br__respond_not_allowed(req, "GET or POST");
        }
        return;
    }
    if (rest.ptr[0] != '/' || rest.len - 1 != BR_KEYS_ID_LEN) {
        br_http_respond_error(req, 404, "invalid_request_error", "key_not_found", NULL,
                              "No virtual key with this id.");
        return;
    }
    char id[BR_KEYS_ID_LEN + 1];
    memcpy(id, rest.ptr + 1, BR_KEYS_ID_LEN);
    id[BR_KEYS_ID_LEN] = '\0';
    if (m == BR_HTTP_METHOD_GET || m == BR_HTTP_METHOD_HEAD) {
        get_or_revoke(ks, req, id, false);
    } else if (m == BR_HTTP_METHOD_PATCH) {
        update(ks, req, id);
    } else if (m == BR_HTTP_METHOD_DELETE) {
        get_or_revoke(ks, req, id, true);
    } else {
        br__respond_not_allowed(req, "GET, PATCH or DELETE");
    }
}
