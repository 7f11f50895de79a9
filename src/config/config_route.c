/* SPDX-License-Identifier: MIT */
/*
 * The `routes:` section: a route is a name clients put in "model", its candidate models
 * (catalogue names, cheapest first), the policies that choose among them (one name or an
 * ordered list: each decides or passes to the next), each policy's settings, fallbacks, and
 * the operator's restrictions. Everything is checked here, with file and line: model names
 * exist, regular expressions compile (regcomp at load, never on the hot path), numbers are in
 * range, a policy's settings are only given when the policy is used, and no policy is listed
 * after one that always decides (it could never run). Loading the classifier's model file is
 * route/'s job (br_router_create), which reports its errors with the route's line.
 */
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "config/config_int.h"
#include "core/err.h"
#include "core/log.h"

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

/* "what.key" for messages (a label cut at the buffer's end is fine). */
static const char *label(char buf[128], const char *what, const char *key)
{
    (void)snprintf(buf, 128, "%s.%s", what, key);
    return buf;
}

const char *br_route_policy_name(enum br_route_policy_kind k)
{
    switch (k) {
    case BR_ROUTE_POLICY_DIRECT:
        return "direct";
    case BR_ROUTE_POLICY_RULES:
        return "rules";
    case BR_ROUTE_POLICY_CLASSIFIER:
        return "classifier";
    case BR_ROUTE_POLICY_CASCADE:
        return "cascade";
    case BR_ROUTE_POLICY_LATENCY:
        return "latency";
    case BR_ROUTE_POLICY_COST:
        return "cost";
    case BR_ROUTE_POLICY_RANDOM:
        return "random";
    }
    return "?";
}

static int policy_from_name(const char *s, enum br_route_policy_kind *out)
{
    static const enum br_route_policy_kind all[] = {
        BR_ROUTE_POLICY_DIRECT,  BR_ROUTE_POLICY_RULES,   BR_ROUTE_POLICY_CLASSIFIER,
        BR_ROUTE_POLICY_CASCADE, BR_ROUTE_POLICY_LATENCY, BR_ROUTE_POLICY_COST,
        BR_ROUTE_POLICY_RANDOM,
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(s, br_route_policy_name(all[i])) == 0) {
            *out = all[i];
            return BR_OK;
        }
    }
    return BR_ERR_NOTFOUND;
}

/* Policies that always choose a model: nothing listed after them would ever run. */
static bool always_decides(enum br_route_policy_kind k)
{
    return k == BR_ROUTE_POLICY_DIRECT || k == BR_ROUTE_POLICY_CLASSIFIER ||
           k == BR_ROUTE_POLICY_CASCADE || k == BR_ROUTE_POLICY_RANDOM;
}

/* ---------------------------------------------------------------- scalars */

static int number(loader *L, const struct br_ynode *n, const char *what, double min, double max,
                  double *out)
{
    const char *s;
    int rc = br__config_scalar(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    char *end = NULL;
    double v = strtod(s, &end);
    if (!s[0] || *end != '\0' || !isfinite(v) || v < min || v > max) {
        return errf(L, n->line, "%s: expected a number from %g to %g, got '%.60s'", what, min, max,
                    s);
    }
    *out = v;
    return BR_OK;
}

static int usd(loader *L, const struct br_ynode *n, const char *what, int64_t *out)
{
    const char *s;
    int rc = br__config_scalar(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (br_cost_parse_usd(s, out) != BR_OK) {
        return errf(L, n->line, "%s: expected a USD amount such as 0.05, got '%.40s'", what, s);
    }
    return BR_OK;
}

static int text_scope(loader *L, const struct br_ynode *n, const char *what,
                      enum br_route_text_scope *out)
{
    const char *s;
    int rc = br__config_scalar(L, n, what, &s);
    if (rc == BR_OK && strcmp(s, "last_user") == 0) {
        *out = BR_ROUTE_TEXT_LAST_USER;
    } else if (rc == BR_OK && strcmp(s, "all") == 0) {
        *out = BR_ROUTE_TEXT_ALL;
    } else if (rc == BR_OK) {
        rc = errf(L, n->line, "%s: expected last_user or all, got '%.40s'", what, s);
    }
    return rc;
}

/* Index of a catalogue model among the route's candidates. */
static int candidate(loader *L, const struct br_route_cfg *r, const struct br_ynode *n,
                     const char *what, size_t *out)
{
    const char *s;
    int rc = br__config_nonempty(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    for (size_t i = 0; i < r->n_models; i++) {
        if (strcmp(r->models[i]->name, s) == 0) {
            *out = i;
            return BR_OK;
        }
    }
    return errf(L, n->line, "%s: '%.80s' is not one of the route's models", what, s);
}

static int catalogue_model(loader *L, const struct br_ynode *n, const char *what,
                           const struct br_model_cfg **out)
{
    const char *s;
    int rc = br__config_nonempty(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    *out = br_config_model_find(L->cfg, s, strlen(s));
    if (!*out) {
        return errf(L, n->line, "%s: unknown model '%.80s' (not in models:)", what, s);
    }
    return BR_OK;
}

/* A list of catalogue model names into dst (at most BR_ROUTE_MAX_MODELS, no repeats). */
static int model_list(loader *L, const struct br_ynode *n, const char *what,
                      const struct br_model_cfg **dst, size_t *n_out)
{
    int rc = br__config_want(L, n, BR_YNODE_SEQ, what);
    if (rc != BR_OK) {
        return rc;
    }
    if (n->n > BR_ROUTE_MAX_MODELS) {
        return errf(L, n->line, "%s: at most %d models", what, BR_ROUTE_MAX_MODELS);
    }
    for (size_t i = 0; i < n->n; i++) {
        rc = catalogue_model(L, n->items[i], what, &dst[i]);
        if (rc != BR_OK) {
            return rc;
        }
        for (size_t j = 0; j < i; j++) {
            if (dst[j] == dst[i]) {
                return errf(L, n->items[i]->line, "%s: '%s' is listed twice", what, dst[i]->name);
            }
        }
    }
    *n_out = n->n;
    return BR_OK;
}

/* ---------------------------------------------------------------- rules */

static int string_list(loader *L, const struct br_ynode *n, const char *what, bool lower,
                       const char *const **out, size_t *n_out)
{
    int rc = br__config_want(L, n, BR_YNODE_SEQ, what);
    if (rc != BR_OK) {
        return rc;
    }
    if (n->n == 0) {
        return errf(L, n->line, "%s: must not be empty", what);
    }
    const char **v = br_arena_calloc(L->arena, n->n, sizeof(*v));
    if (!v) {
        return br__config_nomem(L);
    }
    for (size_t i = 0; i < n->n; i++) {
        const char *s;
        rc = br__config_nonempty(L, n->items[i], what, &s);
        if (rc != BR_OK) {
            return rc;
        }
        char *copy = br_arena_strndup(L->arena, s, strlen(s));
        if (!copy) {
            return br__config_nomem(L);
        }
        for (char *p = copy; lower && *p; p++) {
            if (*p >= 'A' && *p <= 'Z') {
                *p = (char)(*p - 'A' + 'a');
            }
        }
        v[i] = copy;
    }
    *out = v;
    *n_out = n->n;
    return BR_OK;
}

static void regex_free(void *p)
{
    regfree(p);
}

static int compile_regex(loader *L, const struct br_ynode *n, const char *what,
                         struct br_route_rule *rule)
{
    const char *s;
    int rc = br__config_nonempty(L, n, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    regex_t *re = br_arena_calloc(L->arena, 1, sizeof(*re));
    if (!re) {
        return br__config_nomem(L);
    }
    int erc = regcomp(re, s, REG_EXTENDED | REG_ICASE | REG_NOSUB);
    if (erc != 0) {
        char why[160];
        (void)regerror(erc, re, why, sizeof(why));
        return errf(L, n->line, "%s: bad regular expression '%.80s': %s", what, s, why);
    }
    if (br_arena_cleanup_add(L->arena, regex_free, re) != BR_OK) {
        regfree(re);
        return br__config_nomem(L);
    }
    rule->regex = re;
    rule->regex_src = br_arena_strndup(L->arena, s, strlen(s));
    return rule->regex_src ? BR_OK : br__config_nomem(L);
}

static int quality(loader *L, const struct br_ynode *n, const char *what,
                   enum br_route_quality *out)
{
    const char *s;
    int rc = br__config_scalar(L, n, what, &s);
    if (rc == BR_OK && strcmp(s, "high") == 0) {
        *out = BR_ROUTE_QUALITY_HIGH;
    } else if (rc == BR_OK && strcmp(s, "standard") == 0) {
        *out = BR_ROUTE_QUALITY_STANDARD;
    } else if (rc == BR_OK && strcmp(s, "economy") == 0) {
        *out = BR_ROUTE_QUALITY_ECONOMY;
    } else if (rc == BR_OK) {
        rc = errf(L, n->line, "%s: expected high, standard or economy, got '%.40s'", what, s);
    }
    return rc;
}

static int tristate(loader *L, const struct br_ynode *n, const char *what, int *out)
{
    bool b = false;
    int rc = br__config_boolean(L, n, what, &b);
    *out = b ? 1 : 0;
    return rc;
}

static int rule_metadata(loader *L, const struct br_ynode *m, const char *what,
                         struct br_route_rule *rule)
{
    int rc = br__config_want(L, m, BR_YNODE_MAP, what);
    if (rc != BR_OK) {
        return rc;
    }
    size_t n = m->n / 2;
    if (n == 0) {
        return errf(L, m->line, "%s: must not be empty", what);
    }
    const char **keys = br_arena_calloc(L->arena, n, sizeof(*keys));
    const char **vals = br_arena_calloc(L->arena, n, sizeof(*vals));
    if (!keys || !vals) {
        return br__config_nomem(L);
    }
    for (size_t i = 0; i < n; i++) {
        const char *v;
        rc = br__config_scalar(L, m->items[2 * i + 1], what, &v);
        if (rc != BR_OK) {
            return rc;
        }
        keys[i] = m->items[2 * i]->value;
        vals[i] = br_arena_strndup(L->arena, v, strlen(v));
        if (!vals[i]) {
            return br__config_nomem(L);
        }
    }
    rule->meta_keys = keys;
    rule->meta_values = vals;
    rule->n_meta = n;
    return BR_OK;
}

static int rule_cond(loader *L, const struct br_ynode *k, const struct br_ynode *v,
                     const char *what, struct br_route_rule *rule)
{
    char sub[192];
    (void)snprintf(sub, sizeof(sub), "%s.%s", what, k->value); /* a cut label is fine */
    const char *key = k->value;
    if (strcmp(key, "min_prompt_tokens") == 0) {
        return br__config_integer(L, v, sub, 0, INT64_MAX / 2, &rule->min_prompt_tokens);
    }
    if (strcmp(key, "max_prompt_tokens") == 0) {
        return br__config_integer(L, v, sub, 0, INT64_MAX / 2, &rule->max_prompt_tokens);
    }
    if (strcmp(key, "min_turns") == 0) {
        return br__config_integer(L, v, sub, 0, 1000000, &rule->min_turns);
    }
    if (strcmp(key, "max_turns") == 0) {
        return br__config_integer(L, v, sub, 0, 1000000, &rule->max_turns);
    }
    if (strcmp(key, "keywords") == 0) {
        return string_list(L, v, sub, true, &rule->keywords, &rule->n_keywords);
    }
    if (strcmp(key, "regex") == 0) {
        return compile_regex(L, v, sub, rule);
    }
    if (strcmp(key, "in") == 0) {
        return text_scope(L, v, sub, &rule->in);
    }
    if (strcmp(key, "code") == 0) {
        return tristate(L, v, sub, &rule->code);
    }
    if (strcmp(key, "math") == 0) {
        return tristate(L, v, sub, &rule->math);
    }
    if (strcmp(key, "uses") == 0) {
        return br__config_caps(L, v, sub, &rule->uses);
    }
    if (strcmp(key, "quality") == 0) {
        return quality(L, v, sub, &rule->quality);
    }
    if (strcmp(key, "latency_hint_max") == 0) {
        uint64_t ms = 0;
        int rc = br__config_duration(L, v, sub, 1, &ms);
        rule->latency_hint_max_ms = (int64_t)ms;
        return rc;
    }
    if (strcmp(key, "cost_hint_max_usd") == 0) {
        return usd(L, v, sub, &rule->cost_hint_max_nano);
    }
    if (strcmp(key, "metadata") == 0) {
        return rule_metadata(L, v, sub, rule);
    }
    return br__config_unknown_key(L, k, what,
                                  "min_prompt_tokens, max_prompt_tokens, min_turns, max_turns, "
                                  "keywords, regex, in, code, math, uses, quality, "
                                  "latency_hint_max, cost_hint_max_usd, metadata");
}

static int rule_target(loader *L, const struct br_route_cfg *r, const struct br_ynode *v,
                       const char *what, struct br_route_rule *rule)
{
    const char *s;
    int rc = br__config_nonempty(L, v, what, &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (strcmp(s, "strong") == 0) {
        rule->then = BR_ROUTE_TARGET_STRONG;
        return BR_OK;
    }
    if (strcmp(s, "weak") == 0) {
        rule->then = BR_ROUTE_TARGET_WEAK;
        return BR_OK;
    }
    rule->then = BR_ROUTE_TARGET_MODEL;
    rc = candidate(L, r, v, what, &rule->then_index);
    if (rc != BR_OK) {
        /* Say what else is accepted. */
        size_t k = strlen(L->err);
        (void)snprintf(L->err + k, L->errlen - k, " (nor strong or weak)");
    }
    return rc;
}

static int parse_rule(loader *L, const struct br_route_cfg *r, const struct br_ynode *m, size_t idx,
                      struct br_route_rule *rule)
{
    char what[96];
    (void)snprintf(what, sizeof(what), "routes[%s].rules[%zu]", r->name, idx); /* cut is fine */
    rule->line = m->line;
    rule->min_prompt_tokens = -1;
    rule->max_prompt_tokens = -1;
    rule->min_turns = -1;
    rule->max_turns = -1;
    rule->code = -1;
    rule->math = -1;
    rule->latency_hint_max_ms = -1;
    rule->cost_hint_max_nano = -1;
    int rc = br__config_want(L, m, BR_YNODE_MAP, what);
    bool have_then = false;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        if (strcmp(k->value, "if") == 0) {
            char sub[112];
            (void)snprintf(sub, sizeof(sub), "%s.if", what); /* cut is fine */
            rc = br__config_want(L, v, BR_YNODE_MAP, sub);
            for (size_t j = 0; rc == BR_OK && j < v->n; j += 2) {
                rc = rule_cond(L, v->items[j], v->items[j + 1], sub, rule);
            }
        } else if (strcmp(k->value, "then") == 0) {
            char sub[112];
            (void)snprintf(sub, sizeof(sub), "%s.then", what); /* cut is fine */
            rc = rule_target(L, r, v, sub, rule);
            have_then = true;
        } else {
            rc = br__config_unknown_key(L, k, what, "if, then");
        }
    }
    if (rc == BR_OK && !have_then) {
        rc = errf(L, m->line, "%s: needs then: <model> | strong | weak", what);
    }
    if (rc == BR_OK && rule->min_prompt_tokens >= 0 && rule->max_prompt_tokens >= 0 &&
        rule->min_prompt_tokens > rule->max_prompt_tokens) {
        rc = errf(L, m->line, "%s: min_prompt_tokens is above max_prompt_tokens", what);
    }
    if (rc == BR_OK && rule->min_turns >= 0 && rule->max_turns >= 0 &&
        rule->min_turns > rule->max_turns) {
        rc = errf(L, m->line, "%s: min_turns is above max_turns", what);
    }
    return rc;
}

static int parse_rules(loader *L, struct br_route_cfg *r, const struct br_ynode *s)
{
    char what[80];
    (void)snprintf(what, sizeof(what), "routes[%s].rules", r->name); /* cut is fine */
    int rc = br__config_want(L, s, BR_YNODE_SEQ, what);
    if (rc != BR_OK) {
        return rc;
    }
    if (s->n == 0) {
        return errf(L, s->line, "%s: must not be empty", what);
    }
    struct br_route_rule *rules = br_arena_calloc(L->arena, s->n, sizeof(*rules));
    if (!rules) {
        return br__config_nomem(L);
    }
    for (size_t i = 0; rc == BR_OK && i < s->n; i++) {
        rc = parse_rule(L, r, s->items[i], i, &rules[i]);
    }
    r->rules = rules;
    r->n_rules = s->n;
    return rc;
}

/* ---------------------------------------------------------------- policy settings */

static int parse_classifier(loader *L, struct br_route_cfg *r, const struct br_ynode *m)
{
    char what[80];
    (void)snprintf(what, sizeof(what), "routes[%s].classifier", r->name); /* cut is fine */
    struct br_route_classifier_cfg *c = &r->classifier;
    char lb[128];
    c->line = m->line;
    int rc = br__config_want(L, m, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        if (strcmp(k->value, "model") == 0) {
            const char *s;
            rc = br__config_nonempty(L, v, what, &s);
            if (rc == BR_OK && (s[0] == '/' || !L->base_dir)) {
                c->model_path = br_arena_strndup(L->arena, s, strlen(s));
            } else if (rc == BR_OK) {
                c->model_path = br_arena_sprintf(L->arena, "%s/%s", L->base_dir, s);
            }
            if (rc == BR_OK && !c->model_path) {
                rc = br__config_nomem(L);
            }
        } else if (strcmp(k->value, "threshold") == 0) {
            rc = number(L, v, label(lb, what, "threshold"), 0.0, 1.0, &c->threshold);
        } else if (strcmp(k->value, "margin") == 0) {
            rc = number(L, v, label(lb, what, "margin"), 0.0, 1.0, &c->margin);
        } else if (strcmp(k->value, "text") == 0) {
            rc = text_scope(L, v, label(lb, what, "text"), &c->text);
        } else {
            rc = br__config_unknown_key(L, k, what, "model, threshold, margin, text");
        }
    }
    if (rc == BR_OK && !c->model_path) {
        rc = errf(L, m->line, "%s: needs model: <file> (a model from `brigade train`)", what);
    }
    return rc;
}

static int cascade_steps(loader *L, struct br_route_cfg *r, const struct br_ynode *v,
                         const char *what)
{
    struct br_route_cascade_cfg *c = &r->cascade;
    char lb[128];
    int rc = br__config_want(L, v, BR_YNODE_SEQ, label(lb, what, "steps"));
    if (rc == BR_OK && (v->n < 2 || v->n > BR_ROUTE_MAX_MODELS)) {
        return errf(L, v->line, "%s.steps: needs 2 to %d of the route's models", what,
                    BR_ROUTE_MAX_MODELS);
    }
    for (size_t i = 0; rc == BR_OK && i < v->n; i++) {
        rc = candidate(L, r, v->items[i], label(lb, what, "steps"), &c->steps[i]);
        for (size_t j = 0; rc == BR_OK && j < i; j++) {
            if (c->steps[j] == c->steps[i]) {
                rc = errf(L, v->items[i]->line, "%s.steps: a model is listed twice", what);
            }
        }
    }
    c->n_steps = rc == BR_OK ? v->n : 0;
    return rc;
}

static int cascade_confidence(loader *L, struct br_route_cascade_cfg *c, const struct br_ynode *v,
                              const char *what)
{
    const char *s;
    char lb[128];
    int rc = br__config_scalar(L, v, label(lb, what, "confidence"), &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (strcmp(s, "logprobs") == 0) {
        c->confidence = BR_CASCADE_CONFIDENCE_LOGPROBS;
    } else if (strcmp(s, "self_verify") == 0) {
        c->confidence = BR_CASCADE_CONFIDENCE_SELF_VERIFY;
    } else if (strcmp(s, "verifier") == 0) {
        c->confidence = BR_CASCADE_CONFIDENCE_VERIFIER;
    } else {
        rc =
            errf(L, v->line,
                 "%s.confidence: expected logprobs, self_verify or verifier, got '%.40s'", what, s);
    }
    return rc;
}

static int cascade_aggregate(loader *L, struct br_route_cascade_cfg *c, const struct br_ynode *v,
                             const char *what)
{
    const char *s;
    char lb[128];
    int rc = br__config_scalar(L, v, label(lb, what, "aggregate"), &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (strcmp(s, "mean") == 0) {
        c->aggregate = BR_CASCADE_AGGREGATE_MEAN;
    } else if (strcmp(s, "min") == 0) {
        c->aggregate = BR_CASCADE_AGGREGATE_MIN;
    } else {
        rc = errf(L, v->line, "%s.aggregate: expected mean or min, got '%.40s'", what, s);
    }
    return rc;
}

/* verifier_model: a file, relative to the config file's folder unless absolute. */
static int cascade_verifier_model(loader *L, struct br_route_cascade_cfg *c,
                                  const struct br_ynode *v, const char *what)
{
    const char *s;
    char lb[128];
    int rc = br__config_nonempty(L, v, label(lb, what, "verifier_model"), &s);
    if (rc != BR_OK) {
        return rc;
    }
    if (s[0] == '/' || !L->base_dir) {
        c->verifier_model_path = br_arena_strndup(L->arena, s, strlen(s));
    } else {
        c->verifier_model_path = br_arena_sprintf(L->arena, "%s/%s", L->base_dir, s);
    }
    return c->verifier_model_path ? BR_OK : br__config_nomem(L);
}

static int cascade_field(loader *L, struct br_route_cfg *r, const struct br_ynode *k,
                         const struct br_ynode *v, const char *what)
{
    struct br_route_cascade_cfg *c = &r->cascade;
    char lb[128];
    if (strcmp(k->value, "steps") == 0) {
        return cascade_steps(L, r, v, what);
    }
    if (strcmp(k->value, "confidence") == 0) {
        return cascade_confidence(L, c, v, what);
    }
    if (strcmp(k->value, "aggregate") == 0) {
        return cascade_aggregate(L, c, v, what);
    }
    if (strcmp(k->value, "threshold") == 0) {
        return number(L, v, label(lb, what, "threshold"), -1000.0, 1.0, &c->threshold);
    }
    if (strcmp(k->value, "logprobs") == 0) {
        return br__config_boolean(L, v, label(lb, what, "logprobs"), &c->request_logprobs);
    }
    if (strcmp(k->value, "verifier") == 0) {
        return catalogue_model(L, v, label(lb, what, "verifier"), &c->verifier);
    }
    if (strcmp(k->value, "verifier_model") == 0) {
        return cascade_verifier_model(L, c, v, what);
    }
    if (strcmp(k->value, "verify_max_tokens") == 0) {
        return br__config_integer(L, v, label(lb, what, "verify_max_tokens"), 1, 256,
                                  &c->verify_max_tokens);
    }
    return br__config_unknown_key(L, k, what,
                                  "steps, confidence, aggregate, threshold, logprobs, verifier, "
                                  "verifier_model, verify_max_tokens");
}

static int parse_cascade(loader *L, struct br_route_cfg *r, const struct br_ynode *m)
{
    char what[80];
    (void)snprintf(what, sizeof(what), "routes[%s].cascade", r->name); /* cut is fine */
    r->cascade.line = m->line;
    int rc = br__config_want(L, m, BR_YNODE_MAP, what);
    bool have_threshold = false;
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        rc = cascade_field(L, r, m->items[i], m->items[i + 1], what);
        have_threshold |= strcmp(m->items[i]->value, "threshold") == 0;
    }
    struct br_route_cascade_cfg *c = &r->cascade;
    if (rc == BR_OK && !have_threshold && c->confidence != BR_CASCADE_CONFIDENCE_LOGPROBS) {
        c->threshold = 0.5; /* a probability; the default -0.5 is a log-probability */
    }
    if (rc == BR_OK && c->confidence == BR_CASCADE_CONFIDENCE_VERIFIER && !c->verifier_model_path) {
        return errf(L, m->line, "%s: confidence verifier needs verifier_model: <file>", what);
    }
    if (rc == BR_OK && c->confidence != BR_CASCADE_CONFIDENCE_VERIFIER && c->verifier_model_path) {
        return errf(L, m->line, "%s: verifier_model is only used with confidence: verifier", what);
    }
    if (rc != BR_OK || !have_threshold) {
        return rc;
    }
    if (c->confidence == BR_CASCADE_CONFIDENCE_LOGPROBS && c->threshold > 0) {
        return errf(L, m->line,
                    "%s.threshold: with confidence logprobs the threshold is a token "
                    "log-probability (<= 0, e.g. -0.3)",
                    what);
    }
    if (c->confidence != BR_CASCADE_CONFIDENCE_LOGPROBS && c->threshold < 0) {
        return errf(L, m->line,
                    "%s.threshold: with confidence %s the threshold is a probability, 0 to 1", what,
                    c->confidence == BR_CASCADE_CONFIDENCE_SELF_VERIFY ? "self_verify (P(yes))"
                                                                       : "verifier (P(ok))");
    }
    return BR_OK;
}

static int parse_latency(loader *L, struct br_route_cfg *r, const struct br_ynode *m)
{
    char what[80];
    (void)snprintf(what, sizeof(what), "routes[%s].latency", r->name); /* cut is fine */
    struct br_route_latency_cfg *c = &r->latency;
    char lb[128];
    int rc = br__config_want(L, m, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        const struct br_ynode *v = m->items[i + 1];
        uint64_t ms = 0;
        if (strcmp(k->value, "max_latency") == 0) {
            rc = br__config_duration(L, v, label(lb, what, "max_latency"), 1, &ms);
            c->max_latency_ms = (int64_t)ms;
        } else if (strcmp(k->value, "expected_output_tokens") == 0) {
            rc = br__config_integer(L, v, label(lb, what, "expected_output_tokens"), 1, 10000000,
                                    &c->expected_output_tokens);
        } else if (strcmp(k->value, "prior_ttft") == 0) {
            rc = br__config_duration(L, v, label(lb, what, "prior_ttft"), 0, &ms);
            c->prior_ttft_ms = (double)ms;
        } else if (strcmp(k->value, "prior_tokens_per_s") == 0) {
            rc = number(L, v, label(lb, what, "prior_tokens_per_s"), 0.001, 1e7,
                        &c->prior_tokens_per_s);
        } else if (strcmp(k->value, "alpha") == 0) {
            rc = number(L, v, label(lb, what, "alpha"), 0.001, 1.0, &c->alpha);
        } else {
            rc = br__config_unknown_key(
                L, k, what,
                "max_latency, expected_output_tokens, prior_ttft, prior_tokens_per_s, "
                "alpha");
        }
    }
    return rc;
}

static int parse_cost(loader *L, struct br_route_cfg *r, const struct br_ynode *m)
{
    char what[80];
    (void)snprintf(what, sizeof(what), "routes[%s].cost", r->name); /* cut is fine */
    char lb[128];
    int rc = br__config_want(L, m, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        if (strcmp(k->value, "max_usd") == 0) {
            rc = usd(L, m->items[i + 1], label(lb, what, "max_usd"), &r->cost_max_nano);
        } else {
            rc = br__config_unknown_key(L, k, what, "max_usd");
        }
    }
    return rc;
}

static int feedback_field(loader *L, struct br_route_feedback_cfg *f, const struct br_ynode *k,
                          const struct br_ynode *v, const char *what)
{
    char lb[128];
    if (strcmp(k->value, "adapt") == 0) {
        return br__config_boolean(L, v, label(lb, what, "adapt"), &f->adapt);
    }
    if (strcmp(k->value, "q_min") == 0) {
        return number(L, v, label(lb, what, "q_min"), 0.0, 1.0, &f->q_min);
    }
    if (strcmp(k->value, "confidence") == 0) {
        return number(L, v, label(lb, what, "confidence"), 0.5, 0.999, &f->confidence);
    }
    if (strcmp(k->value, "step") == 0) {
        return number(L, v, label(lb, what, "step"), 1e-6, 100.0, &f->step);
    }
    if (strcmp(k->value, "min_threshold") == 0) {
        return number(L, v, label(lb, what, "min_threshold"), -1000.0, 1.0, &f->min_threshold);
    }
    if (strcmp(k->value, "max_threshold") == 0) {
        return number(L, v, label(lb, what, "max_threshold"), -1000.0, 1.0, &f->max_threshold);
    }
    if (strcmp(k->value, "cooldown") == 0) {
        return br__config_duration(L, v, label(lb, what, "cooldown"), 0, &f->cooldown_ms);
    }
    if (strcmp(k->value, "min_samples") == 0) {
        return br__config_integer(L, v, label(lb, what, "min_samples"), 1, 100000000,
                                  &f->min_samples);
    }
    if (strcmp(k->value, "target_cost_usd") == 0) {
        return usd(L, v, label(lb, what, "target_cost_usd"), &f->target_cost_nano);
    }
    return br__config_unknown_key(L, k, what,
                                  "adapt, q_min, confidence, step, min_threshold, "
                                  "max_threshold, cooldown, min_samples, target_cost_usd");
}

static int parse_feedback(loader *L, struct br_route_cfg *r, const struct br_ynode *m)
{
    char what[80];
    (void)snprintf(what, sizeof(what), "routes[%s].feedback", r->name); /* cut is fine */
    int rc = br__config_want(L, m, BR_YNODE_MAP, what);
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        rc = feedback_field(L, &r->feedback, m->items[i], m->items[i + 1], what);
    }
    if (rc == BR_OK && r->feedback.min_threshold > r->feedback.max_threshold) {
        rc = errf(L, m->line, "%s: min_threshold is above max_threshold", what);
    }
    return rc;
}

/* ---------------------------------------------------------------- one route */

static int parse_policy(loader *L, struct br_route_cfg *r, const struct br_ynode *v)
{
    const struct br_ynode *const *items = &v;
    size_t n = 1;
    if (v->kind == BR_YNODE_SEQ) {
        items = (const struct br_ynode *const *)v->items;
        n = v->n;
    }
    if (n == 0 || n > BR_ROUTE_MAX_POLICIES) {
        return errf(L, v->line, "routes[%s].policy: give 1 to %d policies", r->name,
                    BR_ROUTE_MAX_POLICIES);
    }
    for (size_t i = 0; i < n; i++) {
        const char *s;
        char lb[128];
        (void)snprintf(lb, sizeof(lb), "routes[%s].policy", r->name); /* cut is fine */
        int rc = br__config_nonempty(L, items[i], lb, &s);
        if (rc != BR_OK) {
            return rc;
        }
        if (policy_from_name(s, &r->policies[i]) != BR_OK) {
            return errf(L, items[i]->line,
                        "routes[%s].policy: unknown policy '%.40s' (direct, rules, classifier, "
                        "cascade, latency, cost, random)",
                        r->name, s);
        }
        for (size_t j = 0; j < i; j++) {
            if (r->policies[j] == r->policies[i]) {
                return errf(L, items[i]->line, "routes[%s].policy: '%s' is listed twice", r->name,
                            s);
            }
            if (always_decides(r->policies[j])) {
                return errf(L, items[i]->line,
                            "routes[%s].policy: '%s' would never run: '%s' before it always "
                            "decides",
                            r->name, s, br_route_policy_name(r->policies[j]));
            }
        }
    }
    r->n_policies = n;
    return BR_OK;
}

static int parse_allowed(loader *L, struct br_route_cfg *r, const struct br_ynode *v)
{
    char what[80];
    (void)snprintf(what, sizeof(what), "routes[%s].allowed_models", r->name); /* cut is fine */
    int rc = br__config_want(L, v, BR_YNODE_SEQ, what);
    if (rc == BR_OK && v->n == 0) {
        rc = errf(L, v->line, "%s: must name at least one of the route's models", what);
    }
    for (size_t i = 0; i < BR_ROUTE_MAX_MODELS; i++) {
        r->allowed[i] = false;
    }
    for (size_t i = 0; rc == BR_OK && i < v->n; i++) {
        size_t idx = 0;
        rc = candidate(L, r, v->items[i], what, &idx);
        if (rc == BR_OK) {
            r->allowed[idx] = true;
        }
    }
    return rc;
}

/* Keys a route may carry, and the policy a settings block belongs to. */
static const struct {
    const char *key;
    enum br_route_policy_kind policy;
} settings_of[] = {
    {"rules", BR_ROUTE_POLICY_RULES},
    {"classifier", BR_ROUTE_POLICY_CLASSIFIER},
    {"cascade", BR_ROUTE_POLICY_CASCADE},
    {"cost", BR_ROUTE_POLICY_COST},
};

static int route_field(loader *L, struct br_route_cfg *r, const struct br_ynode *k,
                       const struct br_ynode *v, const char *what)
{
    const char *key = k->value;
    int64_t x = 0;
    char lb[128];
    if (strcmp(key, "name") == 0 || strcmp(key, "models") == 0) {
        return BR_OK; /* read first */
    }
    if (strcmp(key, "policy") == 0) {
        return parse_policy(L, r, v);
    }
    if (strcmp(key, "default") == 0) {
        return candidate(L, r, v, label(lb, what, "default"), &r->default_index);
    }
    if (strcmp(key, "fallbacks") == 0) {
        return model_list(L, v, "fallbacks", r->fallbacks, &r->n_fallbacks);
    }
    if (strcmp(key, "allowed_models") == 0) {
        return parse_allowed(L, r, v);
    }
    if (strcmp(key, "max_cost_usd") == 0) {
        return usd(L, v, label(lb, what, "max_cost_usd"), &r->max_cost_nano);
    }
    if (strcmp(key, "expected_output_tokens") == 0) {
        int rc = br__config_integer(L, v, "expected_output_tokens", 1, 10000000, &x);
        r->expected_output_tokens = x;
        return rc;
    }
    if (strcmp(key, "hints") == 0) {
        return br__config_boolean(L, v, label(lb, what, "hints"), &r->accept_hints);
    }
    if (strcmp(key, "exploration") == 0) {
        return number(L, v, "exploration", 0.0, 1.0, &r->exploration);
    }
    if (strcmp(key, "rules") == 0) {
        return parse_rules(L, r, v);
    }
    if (strcmp(key, "classifier") == 0) {
        return parse_classifier(L, r, v);
    }
    if (strcmp(key, "cascade") == 0) {
        return parse_cascade(L, r, v);
    }
    if (strcmp(key, "latency") == 0) {
        return parse_latency(L, r, v);
    }
    if (strcmp(key, "cost") == 0) {
        return parse_cost(L, r, v);
    }
    if (strcmp(key, "feedback") == 0) {
        return parse_feedback(L, r, v);
    }
    return br__config_unknown_key(L, k, what,
                                  "name, models, policy, default, fallbacks, allowed_models, "
                                  "max_cost_usd, expected_output_tokens, hints, exploration, "
                                  "rules, classifier, cascade, latency, cost, feedback");
}

static void route_defaults(struct br_route_cfg *r)
{
    r->expected_output_tokens = 256;
    r->accept_hints = true;
    r->policies[0] = BR_ROUTE_POLICY_DIRECT;
    r->n_policies = 0;
    for (size_t i = 0; i < BR_ROUTE_MAX_MODELS; i++) {
        r->allowed[i] = true;
    }
    r->classifier.threshold = 0.5;
    r->classifier.margin = 0.05;
    r->cascade.confidence = BR_CASCADE_CONFIDENCE_LOGPROBS;
    r->cascade.aggregate = BR_CASCADE_AGGREGATE_MEAN;
    r->cascade.threshold = -0.5;
    r->cascade.request_logprobs = true;
    r->cascade.verify_max_tokens = 2;
    r->latency.expected_output_tokens = 0; /* 0: the route's expected_output_tokens */
    r->latency.prior_ttft_ms = 1000;
    r->latency.prior_tokens_per_s = 50;
    r->latency.alpha = 0.2;
    r->feedback.adapt = true;
    r->feedback.q_min = 0.8;
    r->feedback.confidence = 0.95;
    r->feedback.step = 0.02;
    r->feedback.min_threshold = 0.0;
    r->feedback.max_threshold = 1.0;
    r->feedback.cooldown_ms = 60000;
    r->feedback.min_samples = 20;
}

/* The name and the candidates, which the other fields refer to. */
static int route_head(loader *L, struct br_route_cfg *r, const struct br_ynode *m, char *what)
{
    const struct br_ynode *models = NULL;
    for (size_t i = 0; i < m->n; i += 2) {
        const struct br_ynode *k = m->items[i];
        int rc = BR_OK;
        if (strcmp(k->value, "name") == 0) {
            const char *s;
            rc = br__config_nonempty(L, m->items[i + 1], "routes[].name", &s);
            r->name = rc == BR_OK ? br_arena_strndup(L->arena, s, strlen(s)) : NULL;
            if (rc == BR_OK && !r->name) {
                rc = br__config_nomem(L);
            }
        } else if (strcmp(k->value, "models") == 0) {
            models = m->items[i + 1];
        }
        if (rc != BR_OK) {
            return rc;
        }
    }
    if (!r->name) {
        return errf(L, m->line, "%s: needs a name (what clients send as \"model\")", what);
    }
    (void)snprintf(what, 80, "routes[%s]", r->name); /* cut is fine */
    if (br_config_model_find(L->cfg, r->name, strlen(r->name))) {
        return errf(L, m->line,
                    "%s: the name is also a model's name; a route needs a name of its own", what);
    }
    if (!models) {
        return errf(L, m->line, "%s: needs models: [cheapest, ..., strongest] (two or more)", what);
    }
    char sub[96];
    (void)snprintf(sub, sizeof(sub), "%s.models", what); /* cut is fine */
    int rc = model_list(L, models, sub, r->models, &r->n_models);
    if (rc == BR_OK && r->n_models < 2) {
        rc = errf(L, models->line, "%s: a route needs two or more models", sub);
    }
    return rc;
}

static int route_check(loader *L, struct br_route_cfg *r, const struct br_ynode *m,
                       const char *what, const bool *given)
{
    if (r->n_policies == 0) {
        return errf(L, m->line,
                    "%s: needs policy: one of direct, rules, classifier, cascade, latency, "
                    "cost, random, or a list of them",
                    what);
    }
    bool uses[BR_ROUTE_POLICY_RANDOM + 1] = {false};
    for (size_t i = 0; i < r->n_policies; i++) {
        uses[r->policies[i]] = true;
    }
    for (size_t i = 0; i < sizeof(settings_of) / sizeof(settings_of[0]); i++) {
        if (given[i] && !uses[settings_of[i].policy]) {
            return errf(L, m->line, "%s: %s settings are given but policy does not include %s",
                        what, settings_of[i].key, settings_of[i].key);
        }
        if (!given[i] && uses[settings_of[i].policy] &&
            (settings_of[i].policy == BR_ROUTE_POLICY_RULES ||
             settings_of[i].policy == BR_ROUTE_POLICY_CLASSIFIER)) {
            return errf(L, m->line, "%s: policy %s needs a %s: section", what, settings_of[i].key,
                        settings_of[i].key);
        }
    }
    bool any_allowed = false;
    for (size_t i = 0; i < r->n_models; i++) {
        any_allowed |= r->allowed[i];
    }
    if (!any_allowed) {
        return errf(L, m->line, "%s: allowed_models leaves no model", what);
    }
    struct br_route_cascade_cfg *c = &r->cascade;
    if (c->n_steps == 0) {
        for (size_t i = 0; i < r->n_models; i++) {
            c->steps[i] = i;
        }
        c->n_steps = r->n_models;
    }
    for (size_t i = 1; i < r->n_models; i++) {
        const struct br_price *a = &r->models[i - 1]->price;
        const struct br_price *b = &r->models[i]->price;
        if (a->input_nano_usd_per_mtok + a->output_nano_usd_per_mtok >
            b->input_nano_usd_per_mtok + b->output_nano_usd_per_mtok) {
            br_log(BR_LOG_WARN, NULL,
                   "event=config_warning file=%s line=%d msg=\"%s: models should be listed "
                   "cheapest first; %s costs more than %s after it (weak/strong and the cost "
                   "policy read the list order)\"",
                   L->name, m->line, what, r->models[i - 1]->name, r->models[i]->name);
        }
    }
    return BR_OK;
}

static int parse_route(loader *L, const struct br_ynode *m, size_t idx, struct br_route_cfg *r)
{
    char what[80];
    (void)snprintf(what, sizeof(what), "routes[%zu]", idx); /* fits */
    route_defaults(r);
    r->line = m->line;
    int rc = br__config_want(L, m, BR_YNODE_MAP, what);
    if (rc == BR_OK) {
        rc = route_head(L, r, m, what);
    }
    r->default_index = r->n_models ? r->n_models - 1 : 0;
    bool given[sizeof(settings_of) / sizeof(settings_of[0])] = {false};
    for (size_t i = 0; rc == BR_OK && i < m->n; i += 2) {
        rc = route_field(L, r, m->items[i], m->items[i + 1], what);
        for (size_t s = 0; s < sizeof(settings_of) / sizeof(settings_of[0]); s++) {
            given[s] |= strcmp(m->items[i]->value, settings_of[s].key) == 0;
        }
    }
    if (rc == BR_OK) {
        rc = route_check(L, r, m, what, given);
    }
    return rc;
}

int br__config_parse_routes(struct br__config_loader *L, const struct br_ynode *s)
{
    int rc = br__config_want(L, s, BR_YNODE_SEQ, "routes");
    if (rc != BR_OK) {
        return rc;
    }
    struct br_route_cfg *routes = br_arena_calloc(L->arena, s->n + 1, sizeof(*routes));
    if (!routes) {
        return br__config_nomem(L);
    }
    for (size_t i = 0; rc == BR_OK && i < s->n; i++) {
        rc = parse_route(L, s->items[i], i, &routes[i]);
        if (rc != BR_OK) {
            break;
        }
        struct br_slice name = br_slice_from_cstr(routes[i].name);
        if (br_map_get(&L->cfg->routes_by_name, name)) {
            return errf(L, s->items[i]->line, "routes[%zu]: duplicate route name '%s'", i,
                        routes[i].name);
        }
        if (br_map_put(&L->cfg->routes_by_name, name, &routes[i]) != BR_OK) {
            return br__config_nomem(L);
        }
    }
    L->cfg->routes = routes;
    L->cfg->n_routes = rc == BR_OK ? s->n : 0;
    return rc;
}
