/* SPDX-License-Identifier: MIT */
/*
 * Classification of one upstream attempt: success, retry on the same model, fallback to the
 * next model, or fail; and the deployment's health that the breaker and the balancer learn
 * from it. The transport error kind decides first (a provider's synthesized 502/504 is not an
 * upstream status); nothing is retried or fallen back once a byte has reached the client.
 */
#include <string.h>

#include "core/err.h"
#include "resil/resil.h"

const char *br_resil_health_name(enum br_resil_health h)
{
    switch (h) {
    case BR_RESIL_HEALTH_OK:
        return "ok";
    case BR_RESIL_HEALTH_FAILURE:
        return "failure";
    case BR_RESIL_HEALTH_RATE_LIMITED:
        return "rate_limited";
    case BR_RESIL_HEALTH_NEUTRAL:
        return "neutral";
    }
    return "unknown";
}

const char *br_resil_action_name(enum br_resil_action a)
{
    switch (a) {
    case BR_RESIL_ACTION_SUCCESS:
        return "success";
    case BR_RESIL_ACTION_RETRY:
        return "retry";
    case BR_RESIL_ACTION_FALLBACK:
        return "fallback";
    case BR_RESIL_ACTION_FAIL:
        return "fail";
    }
    return "unknown";
}

static void status_set(uint64_t set[4], int status, bool on)
{
    unsigned bit = (unsigned)(status - BR_RESIL_STATUS_MIN);

    if (on) {
        set[bit / 64] |= 1ull << (bit % 64);
    } else {
        set[bit / 64] &= ~(1ull << (bit % 64));
    }
}

static bool status_has(const uint64_t set[4], int status)
{
    unsigned bit;

    if (status < BR_RESIL_STATUS_MIN || status > BR_RESIL_STATUS_MAX) {
        return false;
    }
    bit = (unsigned)(status - BR_RESIL_STATUS_MIN);
    return (set[bit / 64] >> (bit % 64) & 1) != 0;
}

void br_resil_triggers_clear(struct br_resil_triggers *t)
{
    memset(t, 0, sizeof(*t));
}

void br_resil_triggers_default(struct br_resil_triggers *t)
{
    static const int statuses[] = {429, 500, 502, 503, 504};

    br_resil_triggers_clear(t);
    t->retry_kinds = BR_RESIL_TRIGGER_CONNECT | BR_RESIL_TRIGGER_FIRST_BYTE_TIMEOUT;
    t->fallback_kinds = t->retry_kinds | BR_RESIL_TRIGGER_CONTEXT_LENGTH;
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        status_set(t->retry_status, statuses[i], true);
        status_set(t->fallback_status, statuses[i], true);
    }
}

int br_resil_triggers_set_status(struct br_resil_triggers *t, int status, bool retry, bool fallback)
{
    if (status < BR_RESIL_STATUS_MIN || status > BR_RESIL_STATUS_MAX) {
        return BR_ERR_RANGE;
    }
    status_set(t->retry_status, status, retry);
    status_set(t->fallback_status, status, fallback);
    return BR_OK;
}

/* The trigger bit of a transport failure; 0 for none (and for NONE / HTTP_STATUS). */
static uint32_t kind_trigger(enum br_upstream_error e)
{
    switch (e) {
    case BR_UPSTREAM_ERROR_DNS:
    case BR_UPSTREAM_ERROR_CONNECT:
    case BR_UPSTREAM_ERROR_TLS:
    case BR_UPSTREAM_ERROR_TIMEOUT_CONNECT:
        return BR_RESIL_TRIGGER_CONNECT;
    case BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE:
        return BR_RESIL_TRIGGER_FIRST_BYTE_TIMEOUT;
    case BR_UPSTREAM_ERROR_TIMEOUT_IDLE:
        return BR_RESIL_TRIGGER_IDLE_TIMEOUT;
    case BR_UPSTREAM_ERROR_CLOSED:
    case BR_UPSTREAM_ERROR_PROTOCOL:
    case BR_UPSTREAM_ERROR_BAD_RESPONSE:
    case BR_UPSTREAM_ERROR_OTHER:
        return BR_RESIL_TRIGGER_BROKEN;
    case BR_UPSTREAM_ERROR_NONE:
    case BR_UPSTREAM_ERROR_HTTP_STATUS:
    case BR_UPSTREAM_ERROR_TOO_LARGE:
    case BR_UPSTREAM_ERROR_CANCELED:
        break;
    }
    return 0;
}

static enum br_resil_health status_health(int status)
{
    if (status == 429) {
        return BR_RESIL_HEALTH_RATE_LIMITED;
    }
    if (status >= 500 || status == 401 || status == 403 || status == 408) {
        return BR_RESIL_HEALTH_FAILURE;
    }
    return BR_RESIL_HEALTH_OK; /* the request's fault: the deployment works */
}

void br_resil_classify(const struct br_resil_triggers *t, const struct br_resil_outcome *o,
                       struct br_resil_verdict *out)
{
    bool by_status =
        o->error_kind == BR_UPSTREAM_ERROR_NONE || o->error_kind == BR_UPSTREAM_ERROR_HTTP_STATUS;
    uint32_t kind = kind_trigger(o->error_kind);
    bool retry;
    bool fallback;

    out->fallback_ok = false;
    if (by_status && o->status < 400 && !o->context_overflow) {
        out->action = BR_RESIL_ACTION_SUCCESS;
        out->health = BR_RESIL_HEALTH_OK;
        return;
    }
    if (o->context_overflow) {
        out->health = BR_RESIL_HEALTH_OK;
    } else if (by_status) {
        out->health = status_health(o->status);
    } else if (kind) {
        out->health = BR_RESIL_HEALTH_FAILURE;
    } else {
        out->health = BR_RESIL_HEALTH_NEUTRAL; /* canceled, too large */
    }
    out->action = BR_RESIL_ACTION_FAIL;
    if (o->client_bytes_sent) {
        return;
    }
    if (o->context_overflow) {
        if (t->fallback_kinds & BR_RESIL_TRIGGER_CONTEXT_LENGTH) {
            out->action = BR_RESIL_ACTION_FALLBACK;
        }
        return;
    }
    if (by_status) {
        retry = status_has(t->retry_status, o->status);
        fallback = status_has(t->fallback_status, o->status);
    } else {
        retry = (t->retry_kinds & kind & ~BR_RESIL_TRIGGER_CONTEXT_LENGTH) != 0;
        fallback = (t->fallback_kinds & kind) != 0;
    }
    if (retry) {
        out->action = BR_RESIL_ACTION_RETRY;
        out->fallback_ok = fallback;
    } else if (fallback) {
        out->action = BR_RESIL_ACTION_FALLBACK;
    }
}

/* Case-insensitive: does hay contain the lower-case ASCII needle? */
static bool contains_ci(struct br_slice hay, const char *needle)
{
    size_t n = strlen(needle);

    if (n == 0 || hay.len < n) {
        return n == 0;
    }
    for (size_t i = 0; i + n <= hay.len; i++) {
        size_t j = 0;

        while (j < n) {
            char c = hay.ptr[i + j];

            if (c >= 'A' && c <= 'Z') {
                c = (char)(c - 'A' + 'a');
            }
            if (c != needle[j]) {
                break;
            }
            j++;
        }
        if (j == n) {
            return true;
        }
    }
    return false;
}

bool br_resil_is_context_overflow(int status, struct br_slice body)
{
    static const char *const phrases[] = {
        "context_length_exceeded", "maximum context length",
        "prompt is too long",      "exceeds the maximum number of tokens",
        "context window",
    };

    if (status != 400 && status != 413 && status != 422) {
        return false;
    }
    if (!body.ptr) {
        return false;
    }
    for (size_t i = 0; i < sizeof(phrases) / sizeof(phrases[0]); i++) {
        if (contains_ci(body, phrases[i])) {
            return true;
        }
    }
    return false;
}
