/* SPDX-License-Identifier: MIT */
/*
 * The `classifier` policy: a learned score from the prompt text (route/classifier.h). A binary
 * model gives P(the strong model is needed); the strongest candidate answers when that score
 * is at or above the route's live threshold (configured, then re-tuned by feedback), the
 * cheapest otherwise. An N-model file predicts each candidate's quality: the cheapest candidate
 * predicted within the route's margin of the best one answers. The model file is loaded once
 * per router; scoring allocates nothing and is thread-safe.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "route/classifier.h"
#include "route/route_int.h"

#ifdef BR_ROUTE_HAVE_CLASSIFIER

int br__route_classifier_load(struct br__route_rt *rt, const char *cfg_path, char *err,
                              size_t errlen)
{
    const struct br_route_cfg *route = rt->cfg;
    char why[384] = "";
    br_classifier *c = NULL;
    int rc = br_classifier_load(route->classifier.model_path, &c, why, sizeof(why));
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "%s:%d: routes[%s].classifier: %s", cfg_path,
                       route->classifier.line, route->name, why[0] ? why : br_strerror(rc));
        return rc;
    }
    if (br_classifier_kind(c) == BR_CLASSIFIER_VERIFIER) {
        (void)snprintf(err, errlen,
                       "%s:%d: routes[%s].classifier: %s is a verifier model (it judges answers): "
                       "use it as cascade.verifier_model",
                       cfg_path, route->classifier.line, route->name, route->classifier.model_path);
        br_classifier_free(c);
        return BR_ERR_INVAL;
    }
    size_t n = br_classifier_n_outputs(c);
    rt->clf = c;
    rt->clf_outputs = n;
    if (n == 1) {
        return BR_OK;
    }
    /* N-model: every candidate needs the output that predicts its quality. */
    for (size_t i = 0; i < route->n_models; i++) {
        size_t o = 0;
        while (o < n && strcmp(br_classifier_output_name(c, o), route->models[i]->name) != 0) {
            o++;
        }
        if (o == n) {
            (void)snprintf(err, errlen,
                           "%s:%d: routes[%s].classifier: the model file predicts no quality for "
                           "'%s' (its outputs name the models it was trained on)",
                           cfg_path, route->classifier.line, route->name, route->models[i]->name);
            br_classifier_free(c);
            rt->clf = NULL;
            return BR_ERR_INVAL;
        }
        rt->clf_map[i] = o;
    }
    return BR_OK;
}

void br__route_classifier_free(struct br__route_rt *rt)
{
    br_classifier_free(rt->clf);
    rt->clf = NULL;
    br_classifier_free(rt->verifier);
    rt->verifier = NULL;
}

int br__route_verifier_load(struct br__route_rt *rt, const char *cfg_path, char *err, size_t errlen)
{
    const struct br_route_cfg *route = rt->cfg;
    char why[384] = "";
    br_classifier *c = NULL;
    int rc = br_classifier_load(route->cascade.verifier_model_path, &c, why, sizeof(why));
    if (rc == BR_OK && br_classifier_kind(c) != BR_CLASSIFIER_VERIFIER) {
        (void)snprintf(why, sizeof(why), "%s is not a verifier model (trained for answers)",
                       route->cascade.verifier_model_path);
        br_classifier_free(c);
        c = NULL;
        rc = BR_ERR_INVAL;
    }
    if (rc != BR_OK) {
        (void)snprintf(err, errlen, "%s:%d: routes[%s].cascade: %s", cfg_path, route->cascade.line,
                       route->name, why[0] ? why : br_strerror(rc));
        return rc;
    }
    rt->verifier = c;
    return BR_OK;
}

int br_router_verify(const br_router *r, const struct br_route_cfg *route, const char *prompt,
                     size_t plen, const char *answer, size_t alen, double *p_ok)
{
    const struct br__route_rt *rt = br__router_rt(r, route);
    double p_escalate = NAN;
    if (!rt || !rt->verifier) {
        return BR_ERR_NOTFOUND;
    }
    int rc = br_classifier_verify(rt->verifier, prompt, plen, answer, alen, &p_escalate);
    if (rc == BR_OK) {
        *p_ok = 1.0 - p_escalate;
    }
    return rc;
}

int br__route_classifier_score(const struct br__route_rt *rt, const char *text, size_t len,
                               double *out)
{
    if (!rt->clf) {
        return BR_ERR_NOTFOUND;
    }
    if (rt->clf_outputs == 1) {
        *out = br_classifier_score(rt->clf, text, len);
        return BR_OK;
    }
    double p[BR_ROUTE_MAX_MODELS];
    int rc = br_classifier_predict(rt->clf, text, len, p, BR_ROUTE_MAX_MODELS);
    if (rc == BR_OK) {
        *out = p[0];
    }
    return rc;
}

static int decide_n_model(const struct br__route_ctx *ctx, const char *text, size_t len,
                          struct br__route_choice *out)
{
    const struct br_route_cfg *route = ctx->cfg;
    double p[16];
    size_t n = ctx->rt->clf_outputs;
    if (n > sizeof(p) / sizeof(p[0]) || br_classifier_predict(ctx->rt->clf, text, len, p, n)) {
        return BR_AGAIN;
    }
    double best = -1;
    for (size_t i = 0; i < route->n_models; i++) {
        if (ctx->ok[i] && p[ctx->rt->clf_map[i]] > best) {
            best = p[ctx->rt->clf_map[i]];
        }
    }
    for (size_t i = 0; i < route->n_models; i++) {
        double q = p[ctx->rt->clf_map[i]];
        if (ctx->ok[i] && q >= best - route->classifier.margin) {
            out->index = i;
            out->score = q;
            out->threshold = best - route->classifier.margin;
            out->decision = i == br__route_strongest(ctx) ? "strong" : "weak";
            (void)snprintf(out->reason, out->reason_len,
                           "classifier: cheapest model predicted within %.3f of the best quality "
                           "(%.3f >= %.3f)",
                           route->classifier.margin, q, best - route->classifier.margin);
            return BR_OK;
        }
    }
    return BR_AGAIN;
}

static int classifier_decide(const struct br__route_ctx *ctx, struct br__route_choice *out)
{
    const struct br__route_rt *rt = ctx->rt;
    if (!rt->clf) {
        return BR_AGAIN;
    }
    bool all = rt->cfg->classifier.text == BR_ROUTE_TEXT_ALL;
    const char *text = all ? ctx->req->all_text : ctx->req->last_user;
    size_t len = all ? ctx->req->all_text_len : ctx->req->last_user_len;
    if (rt->clf_outputs > 1) {
        return decide_n_model(ctx, text, len, out);
    }
    double s = br_classifier_score(rt->clf, text, len);
    if (isnan(s)) {
        return BR_AGAIN; /* the model could not score this text: the next policy decides */
    }
    double t = br__live_load(&rt->live->threshold);
    bool strong = s >= t;
    out->index = strong ? br__route_strongest(ctx) : br__route_weakest(ctx);
    out->score = s;
    out->threshold = t;
    out->decision = strong ? "strong" : "weak";
    /* Built without printf: formatting doubles costs more than the rest of the decision. */
    char ss[BR_ROUTE_FMT3_LEN];
    char ts[BR_ROUTE_FMT3_LEN];
    br_route_fmt3(s, ss);
    br_route_fmt3(t, ts);
    const char *parts[] = {"classifier: score ", ss, strong ? " >= threshold " : " < threshold ",
                           ts, strong ? ": strong model" : ": cheap model"};
    size_t k = 0;
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        size_t n = strlen(parts[i]);
        if (k + n >= out->reason_len) {
            break;
        }
        memcpy(out->reason + k, parts[i], n);
        k += n;
    }
    out->reason[k] = '\0';
    return BR_OK;
}

#else /* no classifier in this build */

int br__route_classifier_load(struct br__route_rt *rt, const char *cfg_path, char *err,
                              size_t errlen)
{
    (void)snprintf(err, errlen,
                   "%s:%d: routes[%s]: this build has no classifier (src/route/classifier.c)",
                   cfg_path, rt->cfg->classifier.line, rt->cfg->name);
    return BR_ERR_UNSUPPORTED;
}

void br__route_classifier_free(struct br__route_rt *rt)
{
    rt->clf = NULL;
    rt->verifier = NULL;
}

int br__route_verifier_load(struct br__route_rt *rt, const char *cfg_path, char *err, size_t errlen)
{
    (void)snprintf(err, errlen,
                   "%s:%d: routes[%s]: this build has no classifier (src/route/classifier.c)",
                   cfg_path, rt->cfg->cascade.line, rt->cfg->name);
    return BR_ERR_UNSUPPORTED;
}

int br_router_verify(const br_router *r, const struct br_route_cfg *route, const char *prompt,
                     size_t plen, const char *answer, size_t alen, double *p_ok)
{
    (void)r;
    (void)route;
    (void)prompt;
    (void)plen;
    (void)answer;
    (void)alen;
    *p_ok = NAN;
    return BR_ERR_NOTFOUND;
}

int br__route_classifier_score(const struct br__route_rt *rt, const char *text, size_t len,
                               double *out)
{
    (void)rt;
    (void)text;
    (void)len;
    *out = NAN;
    return BR_ERR_NOTFOUND;
}

static int classifier_decide(const struct br__route_ctx *ctx, struct br__route_choice *out)
{
    (void)ctx;
    (void)out;
    return BR_AGAIN;
}

#endif

const struct br_route_policy_ops br__policy_classifier = {
    .kind = BR_ROUTE_POLICY_CLASSIFIER,
    .decide = classifier_decide,
};
