/* SPDX-License-Identifier: MIT */
/* Monotonic and wall clocks with an injectable monotonic source. */
#include "core/clock.h"

#include <stddef.h>
#include <time.h>

static uint64_t (*clock_fn)(void *user);
static void *clock_user;

uint64_t br_clock_now_ns(void)
{
    if (clock_fn) {
        return clock_fn(clock_user);
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int64_t br_clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void br_clock_set_source(uint64_t (*fn)(void *user), void *user)
{
    clock_fn = fn;
    clock_user = user;
}
