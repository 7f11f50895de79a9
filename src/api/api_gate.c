/* SPDX-License-Identifier: MIT */
/*
 * Overload protection per catalogue model: at most `max_in_flight` upstream calls of the model
 * at once, over all its deployments and all worker threads, and at most `queue` calls waiting
 * for a slot (FIFO). One gate per runtime model, shared by the workers under a small mutex; a
 * freed slot goes straight to the oldest waiter (the count never drops in between, so a new
 * caller cannot jump the queue) and the waiter is woken on its own worker's loop through
 * br__worker_post. The mutex is held only for counter and list updates, never across a call.
 */
#include <pthread.h>

#include "api/api_int.h"
#include "core/alloc.h"
#include "core/err.h"

enum waiter_state {
    WAITER_QUEUED,   /* in the gate's list */
    WAITER_GRANTED,  /* owns a slot; its completion is posted to the owner's loop */
    WAITER_CANCELED, /* granted, then the request went away: the completion only frees it */
};

struct br__gate {
    pthread_mutex_t mu;
    uint32_t max_in_flight; /* 0 = unlimited */
    uint32_t max_queue;
    uint32_t in_flight;
    uint32_t queued;
    struct br__gate_waiter *head, *tail; /* FIFO */
};

/*
 * A request waiting for a slot. Heap-allocated, because the grant may still sit in the owner's
 * completion list when the request ends: whoever sees it last frees it.
 */
struct br__gate_waiter {
    struct br__done done; /* first: the completion posted to the owner's loop */
    struct br__gate *gate;
    struct br__gate_waiter *prev, *next;
    struct br_worker *w;
    enum waiter_state state;      /* under gate->mu while queued */
    void (*on_grant)(void *user); /* runs on the owner's loop with the slot held */
    void *user;
};

int br__gate_create(uint32_t max_in_flight, uint32_t max_queue, struct br__gate **out)
{
    *out = NULL;
    if (max_in_flight == 0) {
        return BR_OK; /* unlimited: no gate at all */
    }
    struct br__gate *g = br_calloc(1, sizeof(*g));
    if (!g) {
        return BR_ERR_NOMEM;
    }
    if (pthread_mutex_init(&g->mu, NULL) != 0) {
        br_free(g);
        return BR_ERR_NOMEM;
    }
    g->max_in_flight = max_in_flight;
    g->max_queue = max_queue;
    *out = g;
    return BR_OK;
}

void br__gate_destroy(struct br__gate *g)
{
    if (!g) {
        return;
    }
    pthread_mutex_destroy(&g->mu);
    br_free(g);
}

static void waiter_complete(struct br__done *d)
{
    struct br__gate_waiter *wt = (struct br__gate_waiter *)(void *)d;
    if (wt->state == WAITER_GRANTED) {
        wt->on_grant(wt->user);
    }
    br_free(wt);
}

static void waiter_drop(struct br__done *d)
{
    struct br__gate_waiter *wt = (struct br__gate_waiter *)(void *)d;
    if (wt->state == WAITER_GRANTED) {
        br__gate_leave(wt->gate); /* the owner is gone: hand the slot on */
    }
    br_free(wt);
}

int br__gate_enter(struct br__gate *g, struct br_worker *w, void (*on_grant)(void *user),
                   void *user, struct br__gate_waiter **waiter_out)
{
    *waiter_out = NULL;
    if (!g) {
        return BR_OK;
    }
    struct br__gate_waiter *wt = NULL;
    if (g->max_queue) {
        wt = br_calloc(1, sizeof(*wt)); /* before the lock; freed when not needed */
    }
    int rc = BR_OK;
    pthread_mutex_lock(&g->mu);
    if (g->in_flight < g->max_in_flight) {
        g->in_flight++;
    } else if (g->queued < g->max_queue && wt) {
        wt->done.complete = waiter_complete;
        wt->done.drop = waiter_drop;
        wt->gate = g;
        wt->w = w;
        wt->on_grant = on_grant;
        wt->user = user;
        wt->state = WAITER_QUEUED;
        wt->prev = g->tail;
        if (g->tail) {
            g->tail->next = wt;
        } else {
            g->head = wt;
        }
        g->tail = wt;
        g->queued++;
        *waiter_out = wt;
        wt = NULL;
        rc = BR_AGAIN;
    } else {
        rc = BR_ERR_BUSY;
    }
    pthread_mutex_unlock(&g->mu);
    br_free(wt);
    return rc;
}

void br__gate_leave(struct br__gate *g)
{
    if (!g) {
        return;
    }
    pthread_mutex_lock(&g->mu);
    struct br__gate_waiter *wt = g->head;
    if (wt) {
        /* The slot passes to the oldest waiter: in_flight stays as it is. */
        g->head = wt->next;
        if (g->head) {
            g->head->prev = NULL;
        } else {
            g->tail = NULL;
        }
        g->queued--;
        wt->next = wt->prev = NULL;
        wt->state = WAITER_GRANTED;
    } else if (g->in_flight) {
        g->in_flight--;
    }
    pthread_mutex_unlock(&g->mu);
    if (wt) {
        br__worker_post(wt->w, &wt->done);
    }
}

void br__gate_cancel(struct br__gate_waiter *wt)
{
    if (!wt) {
        return;
    }
    struct br__gate *g = wt->gate;
    pthread_mutex_lock(&g->mu);
    bool queued = wt->state == WAITER_QUEUED;
    if (queued) {
        if (wt->prev) {
            wt->prev->next = wt->next;
        } else {
            g->head = wt->next;
        }
        if (wt->next) {
            wt->next->prev = wt->prev;
        } else {
            g->tail = wt->prev;
        }
        g->queued--;
    } else {
        /* Granted, and the completion is on its way to this (the owner's) loop: it will only
         * free the waiter. The slot it carries is handed on now. */
        wt->state = WAITER_CANCELED;
    }
    pthread_mutex_unlock(&g->mu);
    if (queued) {
        br_free(wt);
    } else {
        br__gate_leave(g);
    }
}

void br__gate_counts(struct br__gate *g, uint32_t *in_flight_out, uint32_t *queued_out)
{
    *in_flight_out = 0;
    *queued_out = 0;
    if (!g) {
        return;
    }
    pthread_mutex_lock(&g->mu);
    *in_flight_out = g->in_flight;
    *queued_out = g->queued;
    pthread_mutex_unlock(&g->mu);
}
