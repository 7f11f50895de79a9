/* SPDX-License-Identifier: MIT */
/* Kernel randomness and xoshiro256** (Blackman and Vigna, public domain algorithm). */
#include "core/rand.h"

#include <errno.h>
#include <sys/random.h>
#include <time.h>

#include "core/err.h"

int br_rand_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t k = getrandom(p, n, 0);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            return BR_ERR_IO;
        }
        p += k;
        n -= (size_t)k;
    }
    return BR_OK;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void br_rng_seed(struct br_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    if (seed == 0 && br_rand_bytes(&x, sizeof(x)) != BR_OK) {
        x = (uint64_t)(uintptr_t)r ^ 0x5deece66dull;
    }
    for (int i = 0; i < 4; i++) {
        r->s[i] = splitmix(&x);
    }
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t br_rng_next(struct br_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double br_rng_uniform(struct br_rng *r)
{
    return (double)(br_rng_next(r) >> 11) * 0x1.0p-53;
}

void br_rng_request_id(struct br_rng *r, char out[BR_REQUEST_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    for (int i = 0; i < 12; i++) {
        out[i] = hex[(ms >> (44 - 4 * i)) & 0xf];
    }
    uint64_t a = br_rng_next(r);
    uint64_t b = br_rng_next(r);
    for (int i = 0; i < 16; i++) {
        out[12 + i] = hex[(a >> (60 - 4 * i)) & 0xf];
    }
    for (int i = 0; i < 4; i++) {
        out[28 + i] = hex[(b >> (60 - 4 * i)) & 0xf];
    }
    out[BR_REQUEST_ID_LEN] = '\0';
}
