/* SPDX-License-Identifier: MIT */
/*
 * Randomness. br_rand_bytes reads the kernel CSPRNG (keys, nonces). struct br_rng is a fast
 * per-thread generator (xoshiro256**) seeded from it, for request ids, jitter and sampling.
 */
#ifndef BR_CORE_RAND_H
#define BR_CORE_RAND_H

#include <stddef.h>
#include <stdint.h>

/** Fills buf with n bytes from getrandom(2). Returns BR_OK or BR_ERR_IO. */
int br_rand_bytes(void *buf, size_t n);

struct br_rng {
    uint64_t s[4];
};

/** Seeds from the kernel CSPRNG, or from `seed` when it is non-zero (tests). */
void br_rng_seed(struct br_rng *r, uint64_t seed);

/** Next 64 random bits. */
uint64_t br_rng_next(struct br_rng *r);

/** Uniform double in [0, 1). */
double br_rng_uniform(struct br_rng *r);

/** Length of a request id without the NUL. */
#define BR_REQUEST_ID_LEN 32

/**
 * Writes a fresh request id as 32 lowercase hex digits plus NUL: 48 bits of wall-clock
 * milliseconds followed by 80 random bits. Ids sort by time (like UUIDv7/ULID), so the request
 * log's index on them grows at its end instead of being rewritten at random pages.
 */
void br_rng_request_id(struct br_rng *r, char out[BR_REQUEST_ID_LEN + 1]);

#endif
