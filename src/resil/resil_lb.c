/* SPDX-License-Identifier: MIT */
/*
 * The balancer over the deployments of one model name. One mutex guards everything: a pick
 * reads every deployment's state (breaker, cooldown, window, outstanding, EWMA) and charges the
 * chosen one in the same critical section, so that concurrent workers never overshoot an RPM
 * limit or send two half-open probes. The state is a fixed array allocated at create; acquire
 * and release allocate nothing and cost O(n) for n <= BR_RESIL_LB_MAX.
 */
#include <pthread.h>

#include "core/alloc.h"
#include "core/err.h"
#include "resil/resil.h"
#include "resil/resil_int.h"

struct lb_dep {
    struct br_resil_deployment_opts o;
    struct br__resil_brk brk;
    int64_t cw;              /* smooth weighted round robin: current weight */
    uint32_t outstanding;    /* attempts in flight */
    bool has_ewma;           /* ewma_ns holds a sample */
    double ewma_ns;          /* EWMA of time to first byte, ns */
    uint64_t ewma_at_ms;     /* when the last sample arrived */
    uint64_t cooldown_until; /* after a 429, ms */
    uint64_t win_id;         /* window the counters below belong to (now_ms / window_ms) */
    uint32_t win_req;        /* requests charged to that window */
    uint64_t win_tok;        /* tokens charged to that window */
    uint64_t picks;          /* acquisitions since create */
    uint64_t failures;       /* FAILURE results since create */
};

struct br_resil_lb {
    pthread_mutex_t mu;
    struct br_resil_lb_opts o;
    size_t n;
    struct lb_dep d[]; /* (n) */
};

void br_resil_lb_opts_default(struct br_resil_lb_opts *o)
{
    o->policy = BR_RESIL_LB_POLICY_WEIGHTED;
    o->ewma_alpha = 0.3;
    o->ewma_stale_ms = 30000;
    o->window_ms = 60000;
    o->rate_limit_cooldown_ms = 1000;
    br_resil_breaker_opts_default(&o->breaker);
}

static const char *const policy_names[] = {"weighted", "random", "least_outstanding", "latency"};

const char *br_resil_lb_policy_name(enum br_resil_lb_policy p)
{
    if ((unsigned)p < sizeof(policy_names) / sizeof(policy_names[0])) {
        return policy_names[p];
    }
    return "unknown";
}

int br_resil_lb_policy_parse(struct br_slice name, enum br_resil_lb_policy *out)
{
    for (size_t i = 0; i < sizeof(policy_names) / sizeof(policy_names[0]); i++) {
        if (br_slice_eq_cstr(name, policy_names[i])) {
            *out = (enum br_resil_lb_policy)i;
            return BR_OK;
        }
    }
    return BR_ERR_INVAL;
}

static bool opts_valid(const struct br_resil_lb_opts *o)
{
    return (unsigned)o->policy <= BR_RESIL_LB_POLICY_LATENCY && o->ewma_alpha > 0.0 &&
           o->ewma_alpha <= 1.0 && o->window_ms >= 1 && br__resil_brk_opts_valid(&o->breaker);
}

int br_resil_lb_create(const struct br_resil_lb_opts *o,
                       const struct br_resil_deployment_opts *deps, size_t n, br_resil_lb **out)
{
    br_resil_lb *lb;

    *out = NULL;
    if (!o || !deps || n == 0 || n > BR_RESIL_LB_MAX || !opts_valid(o)) {
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (deps[i].weight == 0) {
            return BR_ERR_INVAL;
        }
    }
    lb = br_calloc(1, sizeof(*lb) + n * sizeof(lb->d[0]));
    if (!lb) {
        return BR_ERR_NOMEM;
    }
    if (pthread_mutex_init(&lb->mu, NULL) != 0) {
        br_free(lb);
        return BR_ERR_NOMEM;
    }
    lb->o = *o;
    lb->n = n;
    for (size_t i = 0; i < n; i++) {
        lb->d[i].o = deps[i];
        br__resil_brk_init(&lb->d[i].brk, &o->breaker);
    }
    *out = lb;
    return BR_OK;
}

void br_resil_lb_destroy(br_resil_lb *lb)
{
    if (!lb) {
        return;
    }
    pthread_mutex_destroy(&lb->mu);
    br_free(lb);
}

size_t br_resil_lb_size(const br_resil_lb *lb)
{
    return lb->n;
}

/*
 * Moves d's counters to the window of now_ms. Only forwards: workers read the clock on their
 * own, so a caller's now_ms may be a little older than one already seen; it counts in the
 * current window instead of rolling it back.
 */
static void window_roll(const br_resil_lb *lb, struct lb_dep *d, uint64_t now_ms)
{
    uint64_t id = now_ms / lb->o.window_ms;

    if (id > d->win_id) {
        d->win_id = id;
        d->win_req = 0;
        d->win_tok = 0;
    }
}

/*
 * Whether d can take a request of est_tokens at now_ms; if not, *at_ms = the earliest time
 * every reason that blocks it is over.
 */
static bool dep_available(const br_resil_lb *lb, struct lb_dep *d, uint64_t est_tokens,
                          uint64_t now_ms, uint64_t *at_ms)
{
    uint64_t until = 0;
    bool ok = true;

    window_roll(lb, d, now_ms);
    if (br__resil_brk_peek(&d->brk, now_ms, &until) == BR_RESIL_ADMIT_DENY) {
        ok = false;
    }
    if (d->cooldown_until > now_ms) {
        ok = false;
        until = until > d->cooldown_until ? until : d->cooldown_until;
    }
    if ((d->o.rpm && d->win_req >= d->o.rpm) ||
        (d->o.tpm && d->win_tok > 0 && d->win_tok + est_tokens > d->o.tpm)) {
        uint64_t next = (d->win_id + 1) * lb->o.window_ms;

        ok = false;
        until = until > next ? until : next;
    }
    *at_ms = until;
    return ok;
}

/*
 * Smooth weighted round robin over the set `mask` (nginx): every member gains its weight, the
 * largest current weight wins and pays the set's total. Exact shares over any run of picks.
 */
static size_t swrr(br_resil_lb *lb, uint64_t mask)
{
    int64_t total = 0;
    size_t best = lb->n;

    for (size_t i = 0; i < lb->n; i++) {
        struct lb_dep *d = &lb->d[i];

        if (!(mask >> i & 1)) {
            continue;
        }
        d->cw += d->o.weight;
        total += d->o.weight;
        if (best == lb->n || d->cw > lb->d[best].cw) {
            best = i;
        }
    }
    lb->d[best].cw -= total;
    return best;
}

static size_t pick_random(const br_resil_lb *lb, uint64_t mask, struct br_rng *rng)
{
    uint64_t total = 0;
    uint64_t r;
    size_t last = lb->n;

    for (size_t i = 0; i < lb->n; i++) {
        if (mask >> i & 1) {
            total += lb->d[i].o.weight;
        }
    }
    r = rng ? br_rng_next(rng) % total : 0;
    for (size_t i = 0; i < lb->n; i++) {
        if (!(mask >> i & 1)) {
            continue;
        }
        last = i;
        if (r < lb->d[i].o.weight) {
            return i;
        }
        r -= lb->d[i].o.weight;
    }
    return last;
}

/* Fewest outstanding per unit of weight (o_i / w_i, compared by cross-multiplying). */
static size_t pick_least(br_resil_lb *lb, uint64_t mask)
{
    uint64_t tied = 0;
    size_t best = lb->n;

    for (size_t i = 0; i < lb->n; i++) {
        const struct lb_dep *d = &lb->d[i];
        uint64_t lhs;
        uint64_t rhs;

        if (!(mask >> i & 1)) {
            continue;
        }
        if (best == lb->n) {
            best = i;
            tied = 1ull << i;
            continue;
        }
        lhs = (uint64_t)d->outstanding * lb->d[best].o.weight;
        rhs = (uint64_t)lb->d[best].outstanding * d->o.weight;
        if (lhs < rhs) {
            best = i;
            tied = 1ull << i;
        } else if (lhs == rhs) {
            tied |= 1ull << i;
        }
    }
    return swrr(lb, tied);
}

static bool ewma_fresh(const br_resil_lb *lb, const struct lb_dep *d, uint64_t now_ms)
{
    /* (a now_ms older than the sample, from another worker's clock read, is fresh) */
    return d->has_ewma && (lb->o.ewma_stale_ms == 0 || now_ms < d->ewma_at_ms ||
                           now_ms - d->ewma_at_ms < lb->o.ewma_stale_ms);
}

/*
 * Latency-aware: score = EWMA(TTFB) x (outstanding + 1) / weight, lowest wins. A deployment
 * without a fresh sample and with nothing in flight goes first (to measure it); one without a
 * fresh sample but with requests in flight is scored with the best known EWMA (optimistic).
 * Ties go to smooth weighted round robin.
 */
static size_t pick_latency(br_resil_lb *lb, uint64_t mask, uint64_t now_ms)
{
    double best_known = 0.0;
    bool any_known = false;
    uint64_t untried = 0;
    uint64_t tied = 0;
    double best = 0.0;

    for (size_t i = 0; i < lb->n; i++) {
        const struct lb_dep *d = &lb->d[i];

        if (!(mask >> i & 1)) {
            continue;
        }
        if (ewma_fresh(lb, d, now_ms)) {
            if (!any_known || d->ewma_ns < best_known) {
                best_known = d->ewma_ns;
            }
            any_known = true;
        } else if (d->outstanding == 0) {
            untried |= 1ull << i;
        }
    }
    if (untried) {
        return swrr(lb, untried);
    }
    if (!any_known || best_known < 1.0) {
        best_known = 1.0;
    }
    for (size_t i = 0; i < lb->n; i++) {
        const struct lb_dep *d = &lb->d[i];
        double e;
        double score;

        if (!(mask >> i & 1)) {
            continue;
        }
        e = ewma_fresh(lb, d, now_ms) ? d->ewma_ns : best_known;
        if (e < 1.0) {
            e = 1.0;
        }
        score = e * (double)(d->outstanding + 1) / (double)d->o.weight;
        if (!tied || score < best) {
            best = score;
            tied = 1ull << i;
        } else if (score == best) { /* exact ties: same EWMA, load and weight */
            tied |= 1ull << i;
        }
    }
    return swrr(lb, tied);
}

int br_resil_lb_acquire(br_resil_lb *lb, uint64_t exclude, uint64_t est_tokens, uint64_t now_ms,
                        struct br_rng *rng, struct br_resil_lease *out, uint64_t *retry_at_ms_out)
{
    uint64_t avail = 0;
    uint64_t earliest = UINT64_MAX;
    size_t considered = 0;
    size_t i;
    struct lb_dep *d;
    int rc = BR_OK;

    pthread_mutex_lock(&lb->mu);
    for (i = 0; i < lb->n; i++) {
        uint64_t at = 0;

        if (exclude >> i & 1) {
            continue;
        }
        considered++;
        if (dep_available(lb, &lb->d[i], est_tokens, now_ms, &at)) {
            avail |= 1ull << i;
        } else if (at < earliest) {
            earliest = at;
        }
    }
    if (considered == 0) {
        rc = BR_ERR_NOTFOUND;
        goto out;
    }
    if (!avail) {
        if (retry_at_ms_out) {
            *retry_at_ms_out = earliest;
        }
        rc = BR_ERR_BUSY;
        goto out;
    }
    switch (lb->o.policy) {
    case BR_RESIL_LB_POLICY_RANDOM:
        i = pick_random(lb, avail, rng);
        break;
    case BR_RESIL_LB_POLICY_LEAST_OUTSTANDING:
        i = pick_least(lb, avail);
        break;
    case BR_RESIL_LB_POLICY_LATENCY:
        i = pick_latency(lb, avail, now_ms);
        break;
    case BR_RESIL_LB_POLICY_WEIGHTED:
    default:
        i = swrr(lb, avail);
        break;
    }
    d = &lb->d[i];
    out->index = (uint32_t)i;
    out->probe = br__resil_brk_admit(&d->brk, now_ms, NULL) == BR_RESIL_ADMIT_PROBE;
    out->start_ms = now_ms;
    out->window_id = d->win_id;
    out->est_tokens = est_tokens;
    d->win_req++;
    d->win_tok += est_tokens;
    d->outstanding++;
    d->picks++;
out:
    pthread_mutex_unlock(&lb->mu);
    return rc;
}

static void ewma_add(const br_resil_lb *lb, struct lb_dep *d, uint64_t ttfb_ns, uint64_t now_ms)
{
    double x = (double)ttfb_ns;

    if (!ewma_fresh(lb, d, now_ms)) {
        d->ewma_ns = x; /* first or stale: the new sample is the estimate */
    } else {
        d->ewma_ns = lb->o.ewma_alpha * x + (1.0 - lb->o.ewma_alpha) * d->ewma_ns;
    }
    d->has_ewma = true;
    d->ewma_at_ms = now_ms;
}

void br_resil_lb_release(br_resil_lb *lb, const struct br_resil_lease *lease,
                         const struct br_resil_lb_result *r, uint64_t now_ms)
{
    struct lb_dep *d;

    if (lease->index >= lb->n) {
        return;
    }
    d = &lb->d[lease->index];
    pthread_mutex_lock(&lb->mu);
    if (d->outstanding > 0) {
        d->outstanding--;
    }
    if (r->ttfb_ns > 0) {
        ewma_add(lb, d, r->ttfb_ns, now_ms);
    }
    window_roll(lb, d, now_ms);
    if (r->tokens_known && lease->window_id == d->win_id) {
        if (r->tokens >= lease->est_tokens) {
            d->win_tok += r->tokens - lease->est_tokens;
        } else {
            uint64_t less = lease->est_tokens - r->tokens;

            d->win_tok = d->win_tok > less ? d->win_tok - less : 0;
        }
    }
    if (r->health == BR_RESIL_HEALTH_FAILURE) {
        d->failures++;
    } else if (r->health == BR_RESIL_HEALTH_RATE_LIMITED) {
        uint64_t cool = r->retry_after_ms ? r->retry_after_ms : lb->o.rate_limit_cooldown_ms;
        uint64_t until;

        if (cool > lb->o.breaker.eject_max_ms) {
            cool = lb->o.breaker.eject_max_ms;
        }
        until = now_ms + cool;
        if (until > d->cooldown_until) {
            d->cooldown_until = until;
        }
    }
    br__resil_brk_report(&d->brk, lease->probe ? BR_RESIL_ADMIT_PROBE : BR_RESIL_ADMIT_NORMAL,
                         r->health, now_ms);
    pthread_mutex_unlock(&lb->mu);
}

int br_resil_lb_info(br_resil_lb *lb, size_t i, uint64_t now_ms,
                     struct br_resil_deployment_info *out)
{
    const struct lb_dep *d;

    if (i >= lb->n) {
        return BR_ERR_RANGE;
    }
    d = &lb->d[i];
    pthread_mutex_lock(&lb->mu);
    br__resil_brk_info(&d->brk, now_ms, &out->breaker);
    out->outstanding = d->outstanding;
    out->has_ewma = d->has_ewma;
    out->ewma_ttfb_ms = d->has_ewma ? d->ewma_ns / 1e6 : 0.0;
    out->cooldown_until_ms = d->cooldown_until > now_ms ? d->cooldown_until : 0;
    if (d->win_id >= now_ms / lb->o.window_ms) {
        out->window_requests = d->win_req;
        out->window_tokens = d->win_tok;
    } else {
        out->window_requests = 0;
        out->window_tokens = 0;
    }
    out->picks = d->picks;
    out->failures = d->failures;
    pthread_mutex_unlock(&lb->mu);
    return BR_OK;
}
