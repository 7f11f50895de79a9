/* SPDX-License-Identifier: MIT */
/*
 * Thread pool: a generation counter announces a run, `pending` counts the workers still busy.
 * Workers spin on the counter for a short while (a decode step issues dozens of small runs per
 * token, and a futex wake-up costs more than one of them), then yield, then sleep on `wake`. The
 * caller spins on `pending` the same way before sleeping on `done`. All waits re-check their
 * condition under the mutex, so no wake-up is lost.
 */
#include "engine/pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "core/alloc.h"
#include "core/err.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BR_POOL_RELAX() _mm_pause()
#else
#define BR_POOL_RELAX() ((void)0)
#endif

/* Waiting: POOL_SPIN pause instructions, then up to POOL_YIELDS sched_yield() calls (when the
 * cores are oversubscribed, spinning would keep the thread we wait for off the CPU), then the
 * condition variable. */
enum { POOL_SPIN = 2000, POOL_YIELDS = 200, POOL_MAX_THREADS = 256 };

struct pool_worker {
    struct br_pool *pool;
    int index;
    pthread_t thread;
};

struct br_pool {
    int n;                       /* participants, the caller included */
    struct pool_worker *workers; /* n - 1 entries */
    int started;                 /* workers actually started */
    pthread_mutex_t mu;
    pthread_cond_t wake; /* a new generation or stop */
    pthread_cond_t done; /* pending reached 0 */
    br_pool_task fn;     /* the current run; written before gen is bumped */
    void *ctx;
    atomic_uint gen;
    atomic_int pending;
    atomic_int stop;
};

/* Waits until gen differs from seen (or stop); returns the new generation. */
static unsigned wait_generation(struct br_pool *p, unsigned seen)
{
    for (int i = 0; i < POOL_SPIN + POOL_YIELDS; i++) {
        unsigned g = atomic_load(&p->gen);
        if (g != seen || atomic_load(&p->stop)) {
            return g;
        }
        if (i < POOL_SPIN) {
            BR_POOL_RELAX();
        } else {
            (void)sched_yield();
        }
    }
    (void)pthread_mutex_lock(&p->mu);
    unsigned g = atomic_load(&p->gen);
    while (g == seen && !atomic_load(&p->stop)) {
        (void)pthread_cond_wait(&p->wake, &p->mu);
        g = atomic_load(&p->gen);
    }
    (void)pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *arg)
{
    struct pool_worker *w = arg;
    struct br_pool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        seen = wait_generation(p, seen);
        if (atomic_load(&p->stop)) {
            return NULL;
        }
        p->fn(p->ctx, w->index, p->n);
        if (atomic_fetch_sub(&p->pending, 1) == 1) {
            (void)pthread_mutex_lock(&p->mu);
            (void)pthread_cond_signal(&p->done);
            (void)pthread_mutex_unlock(&p->mu);
        }
    }
}

int br_pool_create(int n_threads, struct br_pool **out)
{
    *out = NULL;
    if (n_threads < 1 || n_threads > POOL_MAX_THREADS) {
        return BR_ERR_INVAL;
    }
    struct br_pool *p = br_calloc(1, sizeof(*p));
    if (!p) {
        return BR_ERR_NOMEM;
    }
    p->n = n_threads;
    atomic_init(&p->gen, 0u);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        br_free(p);
        return BR_ERR_NOMEM;
    }
    (void)pthread_cond_init(&p->wake, NULL);
    (void)pthread_cond_init(&p->done, NULL);
    if (n_threads > 1) {
        p->workers = br_calloc((size_t)n_threads - 1, sizeof(*p->workers));
        if (!p->workers) {
            br_pool_destroy(p);
            return BR_ERR_NOMEM;
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        p->workers[i].pool = p;
        p->workers[i].index = i + 1;
        if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0) {
            br_pool_destroy(p);
            return BR_ERR_NOMEM;
        }
        p->started++;
    }
    *out = p;
    return BR_OK;
}

void br_pool_destroy(struct br_pool *p)
{
    if (!p) {
        return;
    }
    (void)pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    (void)pthread_cond_broadcast(&p->wake);
    (void)pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) {
        (void)pthread_join(p->workers[i].thread, NULL);
    }
    (void)pthread_cond_destroy(&p->wake);
    (void)pthread_cond_destroy(&p->done);
    (void)pthread_mutex_destroy(&p->mu);
    br_free(p->workers);
    br_free(p);
}

int br_pool_size(const struct br_pool *p)
{
    return p->n;
}

void br_pool_run(struct br_pool *p, br_pool_task fn, void *ctx)
{
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n - 1);
    (void)pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->gen, 1u);
    (void)pthread_cond_broadcast(&p->wake);
    (void)pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n);
    for (int i = 0; i < POOL_SPIN + POOL_YIELDS && atomic_load(&p->pending) > 0; i++) {
        if (i < POOL_SPIN) {
            BR_POOL_RELAX();
        } else {
            (void)sched_yield();
        }
    }
    if (atomic_load(&p->pending) > 0) {
        (void)pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0) {
            (void)pthread_cond_wait(&p->done, &p->mu);
        }
        (void)pthread_mutex_unlock(&p->mu);
    }
}
