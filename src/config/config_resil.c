/* SPDX-License-Identifier: MIT */
/*
 * The resilience parts of the configuration: the top-level `resilience:` defaults and, per
 * catalogue model, `deployments:`, `balance:`, `fallbacks:`, `retry:` and `breaker:`.
 *
 *   resilience:
 *     retry: {attempts: 2, base: 200ms, max_backoff: 10s, max_wait: 60s,
 *             on: [connect, timeout, 429, 5xx]}
 *     breaker: {failures: 5, eject: 30s, max_eject: 300s}      # or `breaker: off`
 *     fallback_on: [connect, timeout, 429, 5xx, context_length]
 *     retry_budget: {ratio: 0.2, min: 3}
 *
 *   models:
 *     - name: gpt-4o
 *       provider: openai
 *       deployments:                       # several endpoints or keys for one model name
 *         - {base_url: https://a.example/v1, api_key: env:KEY_A, weight: 2, rpm: 500}
 *         - {api_key: env:KEY_B, tpm: 200000}
 *       balance: least_outstanding         # weighted (default) | least_outstanding | latency
 *       fallbacks: [claude-sonnet, gpt-4o-mini]
 *       retry: {attempts: 1}               # overrides the resilience: defaults, key by key
 *
 * `resilience:` is parsed before the models (parse_root looks for it first) so that a model's
 * retry:/breaker: start from the configured defaults; fallbacks name other models and are
 * resolved once the whole catalogue is known.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_int.h"
#include "core/err.h"

typedef struct br__config_loader loader;

static int errf(loader *L, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int errf(loader *L, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = br__config_verrf(L, line, fmt, ap);
    va_end(ap);
    return rc;
}

void br__config_resil_defaults(struct br_resil_cfg *r)
{
    r->retry.attempts = 2;
    r->retry.base_ms = 200;
    r->retry.max_backoff_ms = 10000;
    r->retry.max_wait_ms = 60000;
    r->retry.on = BR_RESIL_ON_CONNECT | BR_RESIL_ON_TIMEOUT | BR_RESIL_ON_429 | BR_RESIL_ON_5XX;
    r->breaker.enabled = true;
    r->breaker.failures = 5;
    r->breaker.eject_ms = 30000;
    r->breaker.max_eject_ms = 300000;
    r->fallback_on = BR_RESIL_ON_CONNECT | BR_RESIL_ON_TIMEOUT | BR_RESIL_ON_429 | BR_RESIL_ON_5XX |
                     BR_RESIL_ON_CONTEXT_LENGTH;
    r->retry_budget_ratio = 0.2;
    r->retry_budget_min = 3;
}

static int triggers(loader *L, const struct br_ynode *n, const char *what, bool allow_context,
                    unsigned *out)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {
        {"connect", BR_RESIL_ON_CONNECT},
        {"timeout", BR_RESIL_ON_TIMEOUT},
        {"429", BR_RESIL_ON_429},
        {"5xx", BR_RESIL_ON_5XX},
        {"context_length", BR_RESIL_ON_CONTEXT_LENGTH},
    };
    int rc = br__config_want(L, n, BR_YNODE_SEQ, what);
    unsigned bits = 0;
    for (size_t i = 0; rc == BR_OK && i < n->n; i++) {
        const char *s;
        rc = br__config_scalar(L, n->items[i], what, &s);
        size_t k = 0;
        while (rc == BR_OK && k < sizeof(names) / sizeof(names[0]) &&
               strcmp(s, names[k].name) != 0) {
            k++;
        }
        if (rc != BR_OK) {
            break;
        }
        if (k == sizeof(names) / sizeof(names[0]) ||
            (!allow_context && names[k].bit == BR_RESIL_ON_CONTEXT_LENGTH)) {
            return errf(L, n->items[i]->line, "%s: expected %s, got '%.60s'", what,
                        allow_context ? "connect, timeout, 429, 5xx or context_length"
                                      : "connect, timeout, 429 or 5xx (a prompt too long for "
                                        "a model is never retried on it)",
                        s);
        }
        bits |= names[k].bit;
    }
    *out = bits;
    return rc;
}

static int u32_field(loader *L, const struct br_ynode *v, const char *what, int64_t min,
                     int64_t max, uint32_t *out)
{
    int64_t n = 0;
    int rc = br__config_integer(L, v, what, min, max, &n);
    *out = rc == BR_OK ? (uint32_t)n : *out;
    return rc;
}

static int parse_retry(loader *L, const struct br_ynode *n, const char *what,
                       struct br_retry_cfg *r)
{
    int rc = br__config_want(L, n, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < n->n; i += 2) {
        const struct br_ynode *k = n->items[i];
        const struct br_ynode *v = n->items[i + 1];
        char sub[160];
        (void)snprintf(sub, sizeof(sub), "%.100s.%.40s", what, k->value);
        if (strcmp(k->value, "attempts") == 0) {
            rc = u32_field(L, v, sub, 0, 10, &r->attempts);
        } else if (strcmp(k->value, "base") == 0) {
            rc = br__config_duration(L, v, sub, 1, &r->base_ms);
        } else if (strcmp(k->value, "max_backoff") == 0) {
            rc = br__config_duration(L, v, sub, 1, &r->max_backoff_ms);
        } else if (strcmp(k->value, "max_wait") == 0) {
            rc = br__config_duration(L, v, sub, 0, &r->max_wait_ms);
        } else if (strcmp(k->value, "on") == 0) {
            rc = triggers(L, v, sub, false, &r->on);
        } else {
            rc = br__config_unknown_key(L, k, what, "attempts, base, max_backoff, max_wait, on");
        }
    }
    return rc;
}

static int parse_breaker(loader *L, const struct br_ynode *n, const char *what,
                         struct br_breaker_cfg *b)
{
    if (n->kind == BR_YNODE_SCALAR && !n->quoted &&
        (strcmp(n->value, "off") == 0 || strcmp(n->value, "false") == 0)) {
        b->enabled = false;
        return BR_OK;
    }
    int rc = br__config_want(L, n, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < n->n; i += 2) {
        const struct br_ynode *k = n->items[i];
        const struct br_ynode *v = n->items[i + 1];
        char sub[160];
        (void)snprintf(sub, sizeof(sub), "%.100s.%.40s", what, k->value);
        if (strcmp(k->value, "enabled") == 0) {
            rc = br__config_boolean(L, v, sub, &b->enabled);
        } else if (strcmp(k->value, "failures") == 0) {
            rc = u32_field(L, v, sub, 1, 1000, &b->failures);
        } else if (strcmp(k->value, "eject") == 0) {
            rc = br__config_duration(L, v, sub, 1, &b->eject_ms);
        } else if (strcmp(k->value, "max_eject") == 0) {
            rc = br__config_duration(L, v, sub, 1, &b->max_eject_ms);
        } else {
            rc = br__config_unknown_key(L, k, what, "enabled, failures, eject, max_eject");
        }
    }
    if (rc == BR_OK && b->max_eject_ms < b->eject_ms) {
        return errf(L, n->line, "%s: max_eject is shorter than eject", what);
    }
    return rc;
}

static int parse_budget(loader *L, const struct br_ynode *n, struct br_resil_cfg *r)
{
    const char *what = "resilience.retry_budget";
    int rc = br__config_want(L, n, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < n->n; i += 2) {
        const struct br_ynode *k = n->items[i];
        const struct br_ynode *v = n->items[i + 1];
        if (strcmp(k->value, "ratio") == 0) {
            const char *s;
            rc = br__config_scalar(L, v, "resilience.retry_budget.ratio", &s);
            char *end = NULL;
            double x = rc == BR_OK ? strtod(s, &end) : NAN;
            if (rc == BR_OK && (!end || *end || !(x >= 0 && x <= 10))) {
                return errf(L, v->line,
                            "resilience.retry_budget.ratio: expected a number from 0 to 10, "
                            "got '%.60s'",
                            s);
            }
            r->retry_budget_ratio = rc == BR_OK ? x : r->retry_budget_ratio;
        } else if (strcmp(k->value, "min") == 0) {
            rc = u32_field(L, v, "resilience.retry_budget.min", 0, 100000, &r->retry_budget_min);
        } else {
            rc = br__config_unknown_key(L, k, what, "ratio, min");
        }
    }
    return rc;
}

int br__config_parse_resilience(struct br__config_loader *L, const struct br_ynode *n)
{
    struct br_resil_cfg *r = &L->cfg->resil;
    int rc = br__config_want(L, n, BR_YNODE_MAP, "resilience");
    for (size_t i = 0; rc == BR_OK && i < n->n; i += 2) {
        const struct br_ynode *k = n->items[i];
        const struct br_ynode *v = n->items[i + 1];
        if (strcmp(k->value, "retry") == 0) {
            rc = parse_retry(L, v, "resilience.retry", &r->retry);
        } else if (strcmp(k->value, "breaker") == 0) {
            rc = parse_breaker(L, v, "resilience.breaker", &r->breaker);
        } else if (strcmp(k->value, "fallback_on") == 0) {
            rc = triggers(L, v, "resilience.fallback_on", true, &r->fallback_on);
        } else if (strcmp(k->value, "retry_budget") == 0) {
            rc = parse_budget(L, v, r);
        } else {
            rc = br__config_unknown_key(L, k, "resilience",
                                        "retry, breaker, fallback_on, retry_budget");
        }
    }
    return rc;
}

/* ---------------------------------------------------------------- per model */

static int parse_deployment(loader *L, const struct br_ynode *n, const char *what,
                            const struct br_model_cfg *mc, struct br_deployment_cfg *d)
{
    d->line = n->line;
    d->weight = 1;
    int rc = br__config_want(L, n, BR_YNODE_MAP, what);
    struct br_model_cfg scratch; /* base_url and api_key parse into a model entry */
    memset(&scratch, 0, sizeof(scratch));
    for (size_t i = 0; rc == BR_OK && i < n->n; i += 2) {
        const struct br_ynode *k = n->items[i];
        const struct br_ynode *v = n->items[i + 1];
        char sub[160];
        (void)snprintf(sub, sizeof(sub), "%.100s.%.40s", what, k->value);
        if (strcmp(k->value, "name") == 0) {
            rc = br__config_nonempty(L, v, sub, &d->name);
        } else if (strcmp(k->value, "base_url") == 0) {
            rc = br__config_model_base_url(L, v, sub, &scratch);
        } else if (strcmp(k->value, "api_key") == 0) {
            rc = br__config_model_api_key(L, v, sub, &scratch);
        } else if (strcmp(k->value, "model") == 0) {
            rc = br__config_nonempty(L, v, sub, &d->upstream_model);
        } else if (strcmp(k->value, "weight") == 0) {
            rc = u32_field(L, v, sub, 1, 1000000, &d->weight);
        } else if (strcmp(k->value, "rpm") == 0) {
            rc = br__config_integer(L, v, sub, 1, INT64_C(1) << 40, &d->rpm);
        } else if (strcmp(k->value, "tpm") == 0) {
            rc = br__config_integer(L, v, sub, 1, INT64_C(1) << 50, &d->tpm);
        } else {
            rc = br__config_unknown_key(L, k, what,
                                        "name, base_url, api_key, model, weight, rpm, tpm");
        }
    }
    d->base_url = scratch.base_url ? scratch.base_url : mc->base_url;
    d->api_key = scratch.api_key_ref ? scratch.api_key : mc->api_key;
    d->api_key_ref = scratch.api_key_ref ? scratch.api_key_ref : mc->api_key_ref;
    return rc;
}

/* The node of a model's `deployments:`, parsed once the entry's own fields are known. */
static int parse_deployments(loader *L, const struct br_ynode *n, const char *what,
                             struct br_model_cfg *mc)
{
    int rc = br__config_want(L, n, BR_YNODE_SEQ, what);
    if (rc != BR_OK) {
        return rc;
    }
    if (n->n == 0 || n->n > BR_MODEL_MAX_DEPLOYMENTS) {
        return errf(L, n->line, "%s: expected 1 to %d deployments", what, BR_MODEL_MAX_DEPLOYMENTS);
    }
    struct br_deployment_cfg *d = br__config_alloc(L, n->n * sizeof(*d));
    if (!d) {
        return br__config_nomem(L);
    }
    for (size_t i = 0; rc == BR_OK && i < n->n; i++) {
        char sub[160];
        (void)snprintf(sub, sizeof(sub), "%.100s[%zu]", what, i);
        rc = parse_deployment(L, n->items[i], sub, mc, &d[i]);
        for (size_t j = 0; rc == BR_OK && d[i].name && j < i; j++) {
            if (d[j].name && strcmp(d[j].name, d[i].name) == 0) {
                return errf(L, n->items[i]->line, "%s: the name '%s' is used twice", sub,
                            d[i].name);
            }
        }
    }
    mc->deployments = d;
    mc->n_deployments = n->n;
    return rc;
}

int br__config_model_resil_field(struct br__config_loader *L, const struct br_ynode *k,
                                 const struct br_ynode *v, const char *what,
                                 struct br_model_cfg *mc, const struct br_ynode **deployments,
                                 const struct br_ynode **fallbacks)
{
    if (strcmp(k->value, "deployments") == 0) {
        *deployments = v; /* after the entry's base_url / api_key / model are known */
        return br__config_want(L, v, BR_YNODE_SEQ, what);
    }
    if (strcmp(k->value, "fallbacks") == 0) {
        *fallbacks = v; /* once every model is known */
        return br__config_want(L, v, BR_YNODE_SEQ, what);
    }
    if (strcmp(k->value, "retry") == 0) {
        return parse_retry(L, v, what, &mc->retry);
    }
    if (strcmp(k->value, "breaker") == 0) {
        return parse_breaker(L, v, what, &mc->breaker);
    }
    if (strcmp(k->value, "max_in_flight") == 0) {
        return u32_field(L, v, what, 0, 1000000, &mc->max_in_flight);
    }
    if (strcmp(k->value, "queue") == 0) {
        return u32_field(L, v, what, 0, 1000000, &mc->queue);
    }
    if (strcmp(k->value, "balance") == 0) {
        const char *s;
        int rc = br__config_scalar(L, v, what, &s);
        if (rc != BR_OK) {
            return rc;
        }
        if (strcmp(s, "weighted") == 0) {
            mc->balance = BR_BALANCE_WEIGHTED;
        } else if (strcmp(s, "least_outstanding") == 0) {
            mc->balance = BR_BALANCE_LEAST_OUTSTANDING;
        } else if (strcmp(s, "latency") == 0) {
            mc->balance = BR_BALANCE_LATENCY;
        } else {
            return errf(L, v->line,
                        "%s: expected weighted, least_outstanding or latency, got '%.60s'", what,
                        s);
        }
        return BR_OK;
    }
    return BR_ERR_NOTFOUND;
}

int br__config_model_finish_resil(struct br__config_loader *L, struct br_model_cfg *mc,
                                  const struct br_ynode *deployments, const char *what)
{
    char sub[160];
    (void)snprintf(sub, sizeof(sub), "%.100s.deployments", what);
    if (deployments && strcmp(mc->provider, "local") == 0) {
        return errf(L, deployments->line, "%s: a local model runs in this process (one deployment)",
                    sub);
    }
    if (deployments) {
        int rc = parse_deployments(L, deployments, sub, mc);
        if (rc != BR_OK) {
            return rc;
        }
    } else {
        struct br_deployment_cfg *d = br__config_alloc(L, sizeof(*d));
        if (!d) {
            return br__config_nomem(L);
        }
        d->base_url = mc->base_url;
        d->api_key = mc->api_key;
        d->api_key_ref = mc->api_key_ref;
        d->weight = 1;
        d->line = mc->line;
        mc->deployments = d;
        mc->n_deployments = 1;
    }
    struct br_deployment_cfg *d = (struct br_deployment_cfg *)mc->deployments;
    for (size_t i = 0; i < mc->n_deployments; i++) {
        if (!d[i].upstream_model) {
            d[i].upstream_model = mc->upstream_model;
        }
        if (!d[i].name) {
            d[i].name =
                mc->n_deployments == 1 ? mc->name : br__config_sprintf(L, "%s#%zu", mc->name, i);
            if (!d[i].name) {
                return br__config_nomem(L);
            }
        }
    }
    return BR_OK;
}

int br__config_model_fallbacks(struct br__config_loader *L, struct br_model_cfg *mc,
                               const struct br_ynode *n)
{
    char what[160];
    (void)snprintf(what, sizeof(what), "models (%.100s).fallbacks", mc->name);
    if (n->n > BR_MODEL_MAX_DEPLOYMENTS) {
        return errf(L, n->line, "%s: at most %d models", what, BR_MODEL_MAX_DEPLOYMENTS);
    }
    for (size_t i = 0; i < n->n; i++) {
        const char *s;
        int rc = br__config_scalar(L, n->items[i], what, &s);
        if (rc != BR_OK) {
            return rc;
        }
        const struct br_model_cfg *f = br_config_model_find(L->cfg, s, strlen(s));
        if (!f) {
            return errf(L, n->items[i]->line, "%s: unknown model '%.80s' (not in models:)", what,
                        s);
        }
        if (f == mc) {
            return errf(L, n->items[i]->line, "%s: a model cannot fall back to itself", what);
        }
        for (size_t j = 0; j < i; j++) {
            if (mc->fallbacks[j] == f) {
                return errf(L, n->items[i]->line, "%s: '%s' is listed twice", what, s);
            }
        }
        mc->fallbacks[i] = f;
    }
    mc->n_fallbacks = n->n;
    return BR_OK;
}
