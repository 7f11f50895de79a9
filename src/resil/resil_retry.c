/* SPDX-License-Identifier: MIT */
/*
 * Retry timing and the global retry budget. The backoff is "full jitter" (AWS architecture
 * blog, 2015): a uniform wait in [0, min(cap, base x 2^retry)], which spreads the retries of
 * many clients instead of synchronising them; a Retry-After from the deployment is a floor;
 * the sum of a request's waits is capped. The budget bounds retries in flight to
 * max(min_retries, ratio x requests in flight), so that an outage cannot multiply the load on
 * the upstreams; it is two atomic counters and a compare-and-swap.
 */
#include <math.h>
#include <stdatomic.h>

#include "core/alloc.h"
#include "core/err.h"
#include "resil/resil.h"

struct br_resil_budget {
    struct br_resil_budget_opts o;
    _Atomic uint64_t requests; /* client requests in flight */
    _Atomic uint64_t retries;  /* retry tokens held */
};

void br_resil_retry_opts_default(struct br_resil_retry_opts *o)
{
    o->max_retries = 2;
    o->base_ms = 100;
    o->cap_ms = 5000;
    o->total_wait_ms = 60000;
}

void br_resil_retry_state_init(struct br_resil_retry_state *s)
{
    s->retries = 0;
    s->waited_ms = 0;
}

void br_resil_retry_state_next_model(struct br_resil_retry_state *s)
{
    s->retries = 0;
}

/* min(cap, base x 2^k) without overflowing. */
static uint64_t backoff_ceiling(const struct br_resil_retry_opts *o, uint32_t k)
{
    uint64_t base = o->base_ms ? o->base_ms : 1;

    if (k >= 63 || base > (o->cap_ms >> k)) {
        return o->cap_ms;
    }
    return base << k;
}

int br_resil_retry_next(const struct br_resil_retry_opts *o, struct br_resil_retry_state *s,
                        uint32_t retry_after_ms, struct br_rng *rng, uint64_t *delay_ms_out)
{
    uint64_t ceiling;
    uint64_t delay;

    if (s->retries >= o->max_retries) {
        return BR_ERR_LIMIT;
    }
    ceiling = backoff_ceiling(o, s->retries);
    delay = ceiling == UINT64_MAX ? br_rng_next(rng) : br_rng_next(rng) % (ceiling + 1);
    if (delay < retry_after_ms) {
        delay = retry_after_ms;
    }
    if (s->waited_ms > o->total_wait_ms || delay > o->total_wait_ms - s->waited_ms) {
        return BR_ERR_LIMIT;
    }
    s->retries++;
    s->waited_ms += delay;
    *delay_ms_out = delay;
    return BR_OK;
}

void br_resil_budget_opts_default(struct br_resil_budget_opts *o)
{
    o->min_retries = 3;
    o->ratio = 0.2;
}

int br_resil_budget_create(const struct br_resil_budget_opts *o, br_resil_budget **out)
{
    br_resil_budget *b;

    *out = NULL;
    if (!o || !isfinite(o->ratio) || o->ratio < 0.0) {
        return BR_ERR_INVAL;
    }
    b = br_malloc(sizeof(*b));
    if (!b) {
        return BR_ERR_NOMEM;
    }
    b->o = *o;
    atomic_init(&b->requests, 0);
    atomic_init(&b->retries, 0);
    *out = b;
    return BR_OK;
}

void br_resil_budget_destroy(br_resil_budget *b)
{
    br_free(b);
}

void br_resil_budget_request_begin(br_resil_budget *b)
{
    atomic_fetch_add_explicit(&b->requests, 1, memory_order_relaxed);
}

void br_resil_budget_request_end(br_resil_budget *b)
{
    atomic_fetch_sub_explicit(&b->requests, 1, memory_order_relaxed);
}

bool br_resil_budget_acquire(br_resil_budget *b)
{
    uint64_t held = atomic_load_explicit(&b->retries, memory_order_relaxed);

    for (;;) {
        uint64_t req = atomic_load_explicit(&b->requests, memory_order_relaxed);
        double share = b->o.ratio * (double)req;
        uint64_t limit = share >= 1.8e19 ? UINT64_MAX : (uint64_t)share;

        if (limit < b->o.min_retries) {
            limit = b->o.min_retries;
        }
        if (held >= limit) {
            return false;
        }
        /* on failure `held` is reloaded: try again against the current counts */
        if (atomic_compare_exchange_weak_explicit(&b->retries, &held, held + 1,
                                                  memory_order_acq_rel, memory_order_relaxed)) {
            return true;
        }
    }
}

void br_resil_budget_release(br_resil_budget *b)
{
    atomic_fetch_sub_explicit(&b->retries, 1, memory_order_acq_rel);
}

void br_resil_budget_counts(br_resil_budget *b, uint64_t *requests_out, uint64_t *retries_out)
{
    if (requests_out) {
        *requests_out = atomic_load_explicit(&b->requests, memory_order_relaxed);
    }
    if (retries_out) {
        *retries_out = atomic_load_explicit(&b->retries, memory_order_relaxed);
    }
}
