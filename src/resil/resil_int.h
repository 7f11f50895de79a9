/* SPDX-License-Identifier: MIT */
/*
 * Private to src/resil: the breaker's state machine without a lock, shared by the standalone
 * br_resil_breaker (which wraps it in a mutex) and by the balancer (one per deployment, under
 * the balancer's mutex). Never included from outside src/resil.
 */
#ifndef BR_RESIL_INT_H
#define BR_RESIL_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "resil/resil.h"

/* How long a caller denied by an outstanding half-open probe should wait before asking again. */
#define BR__RESIL_PROBE_WAIT_MS 1000

struct br__resil_brk {
    struct br_resil_breaker_opts o;
    enum br_resil_breaker_state state; /* OPEN stays OPEN here until an admit/peek sees the
                                          ejection over (lazy transition) */
    uint32_t fails;                    /* consecutive failures while closed */
    uint32_t n;                        /* consecutive openings */
    uint64_t total;                    /* openings since init */
    uint64_t until_ms;                 /* OPEN: end of the ejection */
    bool probe_out;                    /* HALF_OPEN: the probe is in flight */
};

/** True when the options are usable (threshold >= 1, 1 <= eject_ms <= eject_max_ms). */
bool br__resil_brk_opts_valid(const struct br_resil_breaker_opts *o);

/** Closed breaker with options o (copied; must be valid). */
void br__resil_brk_init(struct br__resil_brk *k, const struct br_resil_breaker_opts *o);

/**
 * What br__resil_brk_admit would grant at now_ms, without taking anything. On DENY,
 * *until_ms_out receives the earliest time worth asking again.
 */
enum br_resil_admit br__resil_brk_peek(const struct br__resil_brk *k, uint64_t now_ms,
                                       uint64_t *until_ms_out);

/** Admits one request (takes the probe slot when half-open). */
enum br_resil_admit br__resil_brk_admit(struct br__resil_brk *k, uint64_t now_ms,
                                        uint64_t *until_ms_out);

/** The end of an admitted request (see br_resil_breaker_report). */
void br__resil_brk_report(struct br__resil_brk *k, enum br_resil_admit admitted,
                          enum br_resil_health h, uint64_t now_ms);

/** Snapshot at now_ms. */
void br__resil_brk_info(const struct br__resil_brk *k, uint64_t now_ms,
                        struct br_resil_breaker_info *out);

#endif
