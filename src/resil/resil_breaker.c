/* SPDX-License-Identifier: MIT */
/*
 * The circuit breaker: closed -> (failure_threshold consecutive failures) -> open for
 * eject_ms x n (n = consecutive openings, capped at eject_max_ms) -> half-open, where one
 * probe at a time decides: success closes and resets n, failure re-opens with n + 1. The state
 * machine itself takes no lock (the balancer runs it under its own mutex); br_resil_breaker
 * wraps it in a mutex for standalone use.
 */
#include <pthread.h>

#include "core/alloc.h"
#include "core/err.h"
#include "resil/resil.h"
#include "resil/resil_int.h"

struct br_resil_breaker {
    pthread_mutex_t mu;
    struct br__resil_brk k;
};

void br_resil_breaker_opts_default(struct br_resil_breaker_opts *o)
{
    o->failure_threshold = 5;
    o->eject_ms = 30000;
    o->eject_max_ms = 300000;
}

const char *br_resil_breaker_state_name(enum br_resil_breaker_state s)
{
    switch (s) {
    case BR_RESIL_BREAKER_STATE_CLOSED:
        return "closed";
    case BR_RESIL_BREAKER_STATE_OPEN:
        return "open";
    case BR_RESIL_BREAKER_STATE_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

bool br__resil_brk_opts_valid(const struct br_resil_breaker_opts *o)
{
    return o->failure_threshold >= 1 && o->eject_ms >= 1 && o->eject_max_ms >= o->eject_ms;
}

void br__resil_brk_init(struct br__resil_brk *k, const struct br_resil_breaker_opts *o)
{
    k->o = *o;
    k->state = BR_RESIL_BREAKER_STATE_CLOSED;
    k->fails = 0;
    k->n = 0;
    k->total = 0;
    k->until_ms = 0;
    k->probe_out = false;
}

/* eject_ms x n, capped at eject_max_ms without overflowing. */
static uint64_t eject_for(const struct br_resil_breaker_opts *o, uint32_t n)
{
    if (n == 0 || o->eject_ms > o->eject_max_ms / n) {
        return o->eject_max_ms;
    }
    return o->eject_ms * n;
}

static void open_at(struct br__resil_brk *k, uint64_t now_ms)
{
    if (k->n < UINT32_MAX) {
        k->n++;
    }
    k->total++;
    k->state = BR_RESIL_BREAKER_STATE_OPEN;
    k->until_ms = now_ms + eject_for(&k->o, k->n);
    k->fails = 0;
    k->probe_out = false;
}

/* The state as seen at now_ms: an ejection that is over reads HALF_OPEN. */
static enum br_resil_breaker_state state_at(const struct br__resil_brk *k, uint64_t now_ms)
{
    if (k->state == BR_RESIL_BREAKER_STATE_OPEN && now_ms >= k->until_ms) {
        return BR_RESIL_BREAKER_STATE_HALF_OPEN;
    }
    return k->state;
}

enum br_resil_admit br__resil_brk_peek(const struct br__resil_brk *k, uint64_t now_ms,
                                       uint64_t *until_ms_out)
{
    enum br_resil_breaker_state s = state_at(k, now_ms);

    if (s == BR_RESIL_BREAKER_STATE_CLOSED) {
        return BR_RESIL_ADMIT_NORMAL;
    }
    if (s == BR_RESIL_BREAKER_STATE_OPEN) {
        if (until_ms_out) {
            *until_ms_out = k->until_ms;
        }
        return BR_RESIL_ADMIT_DENY;
    }
    /* half-open: a probe that is out keeps everyone else waiting */
    if (k->state == BR_RESIL_BREAKER_STATE_HALF_OPEN && k->probe_out) {
        if (until_ms_out) {
            *until_ms_out = now_ms + BR__RESIL_PROBE_WAIT_MS;
        }
        return BR_RESIL_ADMIT_DENY;
    }
    return BR_RESIL_ADMIT_PROBE;
}

enum br_resil_admit br__resil_brk_admit(struct br__resil_brk *k, uint64_t now_ms,
                                        uint64_t *until_ms_out)
{
    enum br_resil_admit a = br__resil_brk_peek(k, now_ms, until_ms_out);

    if (a == BR_RESIL_ADMIT_PROBE) {
        k->state = BR_RESIL_BREAKER_STATE_HALF_OPEN;
        k->probe_out = true;
    }
    return a;
}

void br__resil_brk_report(struct br__resil_brk *k, enum br_resil_admit admitted,
                          enum br_resil_health h, uint64_t now_ms)
{
    if (admitted == BR_RESIL_ADMIT_PROBE) {
        if (k->state != BR_RESIL_BREAKER_STATE_HALF_OPEN || !k->probe_out) {
            return; /* not the current probe (cannot happen with a correct caller) */
        }
        if (h == BR_RESIL_HEALTH_OK) {
            k->state = BR_RESIL_BREAKER_STATE_CLOSED;
            k->n = 0;
            k->fails = 0;
            k->until_ms = 0;
            k->probe_out = false;
        } else if (h == BR_RESIL_HEALTH_FAILURE) {
            open_at(k, now_ms);
        } else {
            k->probe_out = false; /* no verdict: the next request probes */
        }
        return;
    }
    if (admitted != BR_RESIL_ADMIT_NORMAL || k->state != BR_RESIL_BREAKER_STATE_CLOSED) {
        return; /* admitted before an opening: the probe decides now */
    }
    if (h == BR_RESIL_HEALTH_OK) {
        k->fails = 0;
    } else if (h == BR_RESIL_HEALTH_FAILURE) {
        k->fails++;
        if (k->fails >= k->o.failure_threshold) {
            open_at(k, now_ms);
        }
    }
}

void br__resil_brk_info(const struct br__resil_brk *k, uint64_t now_ms,
                        struct br_resil_breaker_info *out)
{
    out->state = state_at(k, now_ms);
    out->consecutive_failures = k->fails;
    out->ejections = k->n;
    out->total_ejections = k->total;
    out->until_ms = out->state == BR_RESIL_BREAKER_STATE_OPEN ? k->until_ms : 0;
    out->probe_in_flight = out->state == BR_RESIL_BREAKER_STATE_HALF_OPEN &&
                           k->state == BR_RESIL_BREAKER_STATE_HALF_OPEN && k->probe_out;
}

int br_resil_breaker_create(const struct br_resil_breaker_opts *o, br_resil_breaker **out)
{
    br_resil_breaker *b;

    *out = NULL;
    if (!o || !br__resil_brk_opts_valid(o)) {
        return BR_ERR_INVAL;
    }
    b = br_malloc(sizeof(*b));
    if (!b) {
        return BR_ERR_NOMEM;
    }
    if (pthread_mutex_init(&b->mu, NULL) != 0) {
        br_free(b);
        return BR_ERR_NOMEM;
    }
    br__resil_brk_init(&b->k, o);
    *out = b;
    return BR_OK;
}

void br_resil_breaker_destroy(br_resil_breaker *b)
{
    if (!b) {
        return;
    }
    pthread_mutex_destroy(&b->mu);
    br_free(b);
}

enum br_resil_admit br_resil_breaker_admit(br_resil_breaker *b, uint64_t now_ms,
                                           uint64_t *until_ms_out)
{
    enum br_resil_admit a;

    pthread_mutex_lock(&b->mu);
    a = br__resil_brk_admit(&b->k, now_ms, until_ms_out);
    pthread_mutex_unlock(&b->mu);
    return a;
}

void br_resil_breaker_report(br_resil_breaker *b, enum br_resil_admit admitted,
                             enum br_resil_health h, uint64_t now_ms)
{
    pthread_mutex_lock(&b->mu);
    br__resil_brk_report(&b->k, admitted, h, now_ms);
    pthread_mutex_unlock(&b->mu);
}

void br_resil_breaker_info(br_resil_breaker *b, uint64_t now_ms, struct br_resil_breaker_info *out)
{
    pthread_mutex_lock(&b->mu);
    br__resil_brk_info(&b->k, now_ms, out);
    pthread_mutex_unlock(&b->mu);
}
