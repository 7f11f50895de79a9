/* SPDX-License-Identifier: MIT */
/*
 * A small persistent thread pool for the engine's data-parallel loops (the rows of a matvec,
 * the heads of attention). br_pool_create starts n_threads - 1 worker threads once;
 * br_pool_run_chunks then calls fn(ctx, i, n_chunks) exactly once for every i in
 * [0, n_chunks), each on whichever participant (the caller or a worker) claims it first, and
 * returns when all have finished. Chunks are claimed dynamically, so a worker that is not
 * running (other processes on the cores) delays the run only by the chunk it may hold. A run
 * allocates nothing: workers wait for the next run by spinning briefly on an atomic
 * generation counter, then sleep on a condition variable (so an idle pool costs no CPU).
 *
 * Ownership: the pool owns its threads; br_pool_destroy stops and joins them.
 * Thread-safety: runs must not be issued by two threads at once on the same pool (one pool per
 * run state), nor from inside a task.
 */
#ifndef BR_ENGINE_POOL_H
#define BR_ENGINE_POOL_H

struct br_pool;

/* One share of a parallel job: `index` in [0, count). */
typedef void (*br_pool_task)(void *ctx, int index, int count);

/**
 * Creates a pool of n_threads participants (the caller of br_pool_run plus n_threads - 1
 * workers); 1 <= n_threads <= 256. Returns BR_OK, BR_ERR_INVAL or BR_ERR_NOMEM (also when a
 * thread cannot be started); on error *out is NULL.
 */
int br_pool_create(int n_threads, struct br_pool **out);

/** Stops and joins the workers and frees the pool. NULL is a no-op. */
void br_pool_destroy(struct br_pool *p);

/** Participants of a run (n_threads given to br_pool_create). */
int br_pool_size(const struct br_pool *p);

/** Runs fn(ctx, i, size) once for every i in [0, size) in parallel and waits for all. */
void br_pool_run(struct br_pool *p, br_pool_task fn, void *ctx);

/**
 * Runs fn(ctx, i, n_chunks) once for every i in [0, n_chunks), the chunks spread dynamically
 * over the participants, and waits for all of them. A task must not depend on which thread
 * runs it. More than 65535 chunks run on the calling thread alone. Added function.
 */
void br_pool_run_chunks(struct br_pool *p, br_pool_task fn, void *ctx, int n_chunks);

#endif
