/* SPDX-License-Identifier: MIT */
/*
 * The `rules` policy: ordered rules, the first whose conditions all hold decides; when none
 * matches, the next policy decides. Conditions read the request's precomputed signals
 * (route.h: struct br_route_req), so a rule costs a few comparisons; keywords are ASCII
 * case-insensitive substring searches and regular expressions were compiled at config load.
 * A rule whose target model was excluded (capabilities, cost cap, allowed_models, latency
 * hint) does not apply: the search goes on with the next rule.
 */
#include <regex.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "core/json.h"
#include "route/route_int.h"

static char lower(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return (char)(c - 'A' + 'a');
    }
    return c;
}

/* needle is lower case already (config). ASCII case-insensitive; UTF-8 bytes compare as they
 * are. The first byte is tested with one OR for letters, so most positions cost a compare. */
static bool contains_nocase(const char *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    if (m == 0 || m > n) {
        return m == 0;
    }
    unsigned char first = (unsigned char)needle[0];
    bool letter = first >= 'a' && first <= 'z';
    const unsigned char *h = (const unsigned char *)hay;
    for (size_t i = 0; i + m <= n; i++) {
        unsigned char c = h[i];
        if ((letter ? (unsigned char)(c | 0x20) : c) != first) {
            continue;
        }
        size_t j = 1;
        while (j < m && lower(hay[i + j]) == needle[j]) {
            j++;
        }
        if (j == m) {
            return true;
        }
    }
    return false;
}

static bool metadata_match(struct br_slice meta, const char *key, const char *want)
{
    if (!meta.ptr) {
        return false;
    }
    struct br_slice v = br_json_obj_get(meta, key);
    if (!v.ptr) {
        return false;
    }
    if (strcmp(want, "*") == 0) {
        return true;
    }
    char buf[256];
    size_t len = 0;
    enum br_json_type t = br_json_type_of(v);
    if (t == BR_JSON_STRING) {
        if (br_json_string_decode(v, buf, sizeof(buf), &len) != BR_OK) {
            return false;
        }
        return len == strlen(want) && memcmp(buf, want, len) == 0;
    }
    /* Numbers and booleans compare as written. */
    return v.len == strlen(want) && memcmp(v.ptr, want, v.len) == 0;
}

static bool text_conditions(const struct br_route_rule *rule, const struct br_route_req *req)
{
    const char *text = rule->in == BR_ROUTE_TEXT_ALL ? req->all_text : req->last_user;
    size_t len = rule->in == BR_ROUTE_TEXT_ALL ? req->all_text_len : req->last_user_len;
    if (rule->n_keywords) {
        bool any = false;
        for (size_t i = 0; i < rule->n_keywords && !any; i++) {
            any = contains_nocase(text, len, rule->keywords[i]);
        }
        if (!any) {
            return false;
        }
    }
    /* regexec stops at the first NUL; the decoded text has none before its end unless the
     * client sent \u0000, which the gateway refuses. */
    return !rule->regex || regexec(rule->regex, text, 0, NULL, 0) == 0;
}

static bool between(int64_t v, int64_t lo, int64_t hi)
{
    return (lo < 0 || v >= lo) && (hi < 0 || v <= hi);
}

static bool tri(int want, bool have)
{
    return want < 0 || (want == 1) == have;
}

static bool rule_matches(const struct br_route_rule *rule, const struct br_route_req *req)
{
    if (!between(req->prompt_tokens, rule->min_prompt_tokens, rule->max_prompt_tokens) ||
        !between((int64_t)req->n_turns, rule->min_turns, rule->max_turns) ||
        !tri(rule->code, req->has_code) || !tri(rule->math, req->has_math) ||
        (req->uses & rule->uses) != rule->uses) {
        return false;
    }
    if (rule->quality != BR_ROUTE_QUALITY_NONE && req->hints.quality != rule->quality) {
        return false;
    }
    if (rule->latency_hint_max_ms >= 0 &&
        !(req->hints.max_latency_ms > 0 &&
          req->hints.max_latency_ms <= rule->latency_hint_max_ms)) {
        return false;
    }
    if (rule->cost_hint_max_nano >= 0 &&
        !(req->hints.max_cost_nano >= 0 && req->hints.max_cost_nano <= rule->cost_hint_max_nano)) {
        return false;
    }
    for (size_t i = 0; i < rule->n_meta; i++) {
        if (!metadata_match(req->metadata, rule->meta_keys[i], rule->meta_values[i])) {
            return false;
        }
    }
    return text_conditions(rule, req);
}

static int rules_decide(const struct br__route_ctx *ctx, struct br__route_choice *out)
{
    const struct br_route_cfg *route = ctx->cfg;
    for (size_t i = 0; i < route->n_rules; i++) {
        const struct br_route_rule *rule = &route->rules[i];
        if (!rule_matches(rule, ctx->req)) {
            continue;
        }
        size_t idx;
        if (rule->then == BR_ROUTE_TARGET_STRONG) {
            idx = br__route_strongest(ctx);
        } else if (rule->then == BR_ROUTE_TARGET_WEAK) {
            idx = br__route_weakest(ctx);
        } else {
            idx = rule->then_index;
            if (!ctx->ok[idx]) {
                continue;
            }
        }
        out->index = idx;
        out->decision = "rule"; /* not a threshold decision: feedback does not re-tune it */
        (void)snprintf(out->reason, out->reason_len, "rule %zu (config line %d) matched", i + 1,
                       rule->line);
        return BR_OK;
    }
    return BR_AGAIN;
}

const struct br_route_policy_ops br__policy_rules = {
    .kind = BR_ROUTE_POLICY_RULES,
    .decide = rules_decide,
};
