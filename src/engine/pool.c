/* SPDX-License-Identifier: MIT */
/*
 * Thread pool: a run publishes its task (fn, ctx) and then bumps a generation counter; every
 * participant, the caller included, claims chunk indexes from one atomic word holding
 * (generation, n_chunks, next chunk) and runs them until none is left. The caller returns
 * when `done` reaches n_chunks. So a worker that the OS has not scheduled yet (the cores are
 * shared) delays nothing: the others take its chunks, and when it wakes it finds the word
 * exhausted or of a newer generation, and its compare-and-swap fails. A chunk is claimed
 * only by a CAS on a word of the run's own generation, and the caller does not publish the
 * next run before every claimed chunk is done, so fn/ctx read after a claim are that run's.
 * Workers spin on the generation for a short while (a decode step issues dozens of small
 * runs per token, and a futex wake-up costs more than one of them), then yield, then sleep
 * on `wake`. The caller waits for `done` the same way before sleeping on `done_cv`. All
 * waits re-check their condition under the mutex, so no wake-up is lost.
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
    pthread_cond_t wake;    /* a new generation or stop */
    pthread_cond_t done_cv; /* done reached n_chunks */
    br_pool_task fn;        /* the current run; written before gen is bumped */
    void *ctx;
    atomic_ullong work; /* run_word(): generation | n_chunks | next chunk */
    atomic_uint gen;
    atomic_int done; /* chunks of the current run finished */
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

/* The run word: generation (32 bits) | n_chunks (16) | next unclaimed chunk (16). One load
 * gives a consistent view of a run, and a claim is one CAS on it. */
enum { POOL_MAX_CHUNKS = 0xffff };

static unsigned long long run_word(unsigned g, int n_chunks)
{
    return (unsigned long long)g << 32 | (unsigned long long)n_chunks << 16;
}

/* Claims and runs chunks of generation g until none is left (or a newer run started). */
static void run_chunks(struct br_pool *p, unsigned g)
{
    unsigned long long w = atomic_load(&p->work);
    for (;;) {
        unsigned idx = (unsigned)(w & 0xffffu);
        int n_chunks = (int)((w >> 16) & 0xffffu);
        if ((unsigned)(w >> 32) != g || idx >= (unsigned)n_chunks) {
            return; /* this run is exhausted, or a newer run started */
        }
        if (!atomic_compare_exchange_weak(&p->work, &w, w + 1)) {
            continue; /* w now holds the current word */
        }
        /* fn/ctx are g's: the caller changes them only after all of g's chunks are done */
        p->fn(p->ctx, (int)idx, n_chunks);
        if (atomic_fetch_add(&p->done, 1) + 1 == n_chunks) {
            (void)pthread_mutex_lock(&p->mu);
            (void)pthread_cond_signal(&p->done_cv);
            (void)pthread_mutex_unlock(&p->mu);
        }
        w = atomic_load(&p->work);
    }
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
        run_chunks(p, seen);
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
    atomic_init(&p->work, 0ull);
    atomic_init(&p->done, 0);
    atomic_init(&p->stop, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        br_free(p);
        return BR_ERR_NOMEM;
    }
    (void)pthread_cond_init(&p->wake, NULL);
    (void)pthread_cond_init(&p->done_cv, NULL);
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
    (void)pthread_cond_destroy(&p->done_cv);
    (void)pthread_mutex_destroy(&p->mu);
    br_free(p->workers);
    br_free(p);
}

int br_pool_size(const struct br_pool *p)
{
    return p->n;
}

void br_pool_run_chunks(struct br_pool *p, br_pool_task fn, void *ctx, int n_chunks)
{
    if (p->n == 1 || n_chunks <= 1 || n_chunks > POOL_MAX_CHUNKS) {
        for (int i = 0; i < n_chunks; i++) {
            fn(ctx, i, n_chunks);
        }
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->done, 0);
    unsigned g = atomic_load(&p->gen) + 1u; /* only the caller writes gen */
    atomic_store(&p->work, run_word(g, n_chunks));
    (void)pthread_mutex_lock(&p->mu);
    atomic_store(&p->gen, g);
    (void)pthread_cond_broadcast(&p->wake);
    (void)pthread_mutex_unlock(&p->mu);
    run_chunks(p, g);
    for (int i = 0; i < POOL_SPIN + POOL_YIELDS && atomic_load(&p->done) < n_chunks; i++) {
        if (i < POOL_SPIN) {
            BR_POOL_RELAX();
        } else {
            (void)sched_yield();
        }
    }
    if (atomic_load(&p->done) < n_chunks) {
        (void)pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->done) < n_chunks) {
            (void)pthread_cond_wait(&p->done_cv, &p->mu);
        }
        (void)pthread_mutex_unlock(&p->mu);
    }
}

void br_pool_run(struct br_pool *p, br_pool_task fn, void *ctx)
{
    br_pool_run_chunks(p, fn, ctx, p->n);
}
