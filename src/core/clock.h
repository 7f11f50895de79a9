/* SPDX-License-Identifier: MIT */
/*
 * Time. Timeouts and latency use the monotonic clock, which tests may replace (STYLE.md rule
 * 35); log rows use wall-clock milliseconds since the epoch.
 */
#ifndef BR_CORE_CLOCK_H
#define BR_CORE_CLOCK_H

#include <stdint.h>

/** Monotonic nanoseconds from an arbitrary origin. */
uint64_t br_clock_now_ns(void);

/** Wall-clock milliseconds since the Unix epoch. */
int64_t br_clock_wall_ms(void);

/** Replaces the monotonic source (tests); NULL restores CLOCK_MONOTONIC. Not thread-safe. */
void br_clock_set_source(uint64_t (*fn)(void *user), void *user);

#endif
