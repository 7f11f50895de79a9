/* SPDX-License-Identifier: MIT */
/*
 * resil/ classification: the default trigger table (every upstream error kind and the
 * statuses that matter), nothing after the first client byte, the transport kind deciding over
 * a synthesized status, context overflow as fallback only, custom triggers, and the
 * context-overflow detector over real providers' error bodies.
 */
#include <stdbool.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "resil/resil.h"

#define A_SUCCESS  BR_RESIL_ACTION_SUCCESS
#define A_RETRY    BR_RESIL_ACTION_RETRY
#define A_FALLBACK BR_RESIL_ACTION_FALLBACK
#define A_FAIL     BR_RESIL_ACTION_FAIL
#define H_OK       BR_RESIL_HEALTH_OK
#define H_FAIL     BR_RESIL_HEALTH_FAILURE
#define H_RL       BR_RESIL_HEALTH_RATE_LIMITED
#define H_NEUTRAL  BR_RESIL_HEALTH_NEUTRAL

struct row {
    enum br_upstream_error kind;
    int status;
    bool overflow;
    enum br_resil_action action;
    bool fallback_ok;
    enum br_resil_health health;
};

static const struct row table[] = {
    {BR_UPSTREAM_ERROR_NONE, 200, false, A_SUCCESS, false, H_OK},
    {BR_UPSTREAM_ERROR_NONE, 0, false, A_SUCCESS, false, H_OK},
    {BR_UPSTREAM_ERROR_CONNECT, 502, false, A_RETRY, true, H_FAIL},
    {BR_UPSTREAM_ERROR_DNS, 502, false, A_RETRY, true, H_FAIL},
    {BR_UPSTREAM_ERROR_TLS, 502, false, A_RETRY, true, H_FAIL},
    {BR_UPSTREAM_ERROR_TIMEOUT_CONNECT, 504, false, A_RETRY, true, H_FAIL},
    {BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE, 504, false, A_RETRY, true, H_FAIL},
    /* not default triggers: fail (and the synthesized 502/504 does not make them one) */
    {BR_UPSTREAM_ERROR_TIMEOUT_IDLE, 504, false, A_FAIL, false, H_FAIL},
    {BR_UPSTREAM_ERROR_CLOSED, 502, false, A_FAIL, false, H_FAIL},
    {BR_UPSTREAM_ERROR_PROTOCOL, 502, false, A_FAIL, false, H_FAIL},
    {BR_UPSTREAM_ERROR_BAD_RESPONSE, 502, false, A_FAIL, false, H_FAIL},
    {BR_UPSTREAM_ERROR_OTHER, 502, false, A_FAIL, false, H_FAIL},
    {BR_UPSTREAM_ERROR_TOO_LARGE, 502, false, A_FAIL, false, H_NEUTRAL},
    {BR_UPSTREAM_ERROR_CANCELED, 0, false, A_FAIL, false, H_NEUTRAL},
    /* upstream statuses */
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 429, false, A_RETRY, true, H_RL},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 500, false, A_RETRY, true, H_FAIL},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 502, false, A_RETRY, true, H_FAIL},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 503, false, A_RETRY, true, H_FAIL},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 504, false, A_RETRY, true, H_FAIL},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 501, false, A_FAIL, false, H_FAIL},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 400, false, A_FAIL, false, H_OK},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 404, false, A_FAIL, false, H_OK},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 422, false, A_FAIL, false, H_OK},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 401, false, A_FAIL, false, H_FAIL},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 403, false, A_FAIL, false, H_FAIL},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 408, false, A_FAIL, false, H_FAIL},
    /* a status error reported with kind NONE is still judged by its status */
    {BR_UPSTREAM_ERROR_NONE, 503, false, A_RETRY, true, H_FAIL},
    /* context overflow: fallback only, never a retry; the deployment is fine */
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 400, true, A_FALLBACK, false, H_OK},
    {BR_UPSTREAM_ERROR_HTTP_STATUS, 413, true, A_FALLBACK, false, H_OK},
};

static const char *kind_name(enum br_upstream_error e)
{
    static const char *const names[] = {
#define KIND_NAME(name, text) text,
        BR_UPSTREAM_ERROR_MAP(KIND_NAME)
#undef KIND_NAME
    };

    return names[e];
}

static void check(const struct br_resil_triggers *t, const struct row *r, bool sent)
{
    struct br_resil_outcome o;
    struct br_resil_verdict v;

    memset(&o, 0, sizeof(o));
    o.error_kind = r->kind;
    o.status = r->status;
    o.context_overflow = r->overflow;
    o.client_bytes_sent = sent;
    br_resil_classify(t, &o, &v);
    if (v.action != r->action || v.fallback_ok != r->fallback_ok || v.health != r->health) {
        print_error("kind %s status %d overflow %d sent %d: got %s/%d/%s\n", kind_name(r->kind),
                    r->status, r->overflow, sent, br_resil_action_name(v.action), v.fallback_ok,
                    br_resil_health_name(v.health));
    }
    assert_int_equal(v.action, r->action);
    assert_int_equal(v.fallback_ok, r->fallback_ok);
    assert_int_equal(v.health, r->health);
}

static void test_classify_default_table(void **state)
{
    struct br_resil_triggers t;

    (void)state;
    br_resil_triggers_default(&t);
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        check(&t, &table[i], false);
    }
}

/* Once a byte reached the client: success stays success, everything else fails. */
static void test_classify_after_first_byte(void **state)
{
    struct br_resil_triggers t;

    (void)state;
    br_resil_triggers_default(&t);
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        struct row r = table[i];

        if (r.action != A_SUCCESS) {
            r.action = A_FAIL;
            r.fallback_ok = false;
        }
        check(&t, &r, true);
    }
    /* even with every trigger on */
    memset(&t, 0xff, sizeof(t));
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        struct br_resil_outcome o;
        struct br_resil_verdict v;

        memset(&o, 0, sizeof(o));
        o.error_kind = table[i].kind;
        o.status = table[i].status;
        o.context_overflow = table[i].overflow;
        o.client_bytes_sent = true;
        br_resil_classify(&t, &o, &v);
        assert_true(v.action == A_SUCCESS || v.action == A_FAIL);
    }
}

/* Custom triggers: fallback-only statuses, removed triggers, opt-in kinds, range checks. */
static void test_classify_custom_triggers(void **state)
{
    struct br_resil_triggers t;
    struct br_resil_outcome o;
    struct br_resil_verdict v;

    (void)state;
    br_resil_triggers_default(&t);
    assert_int_equal(br_resil_triggers_set_status(&t, 500, false, true), BR_OK);
    assert_int_equal(br_resil_triggers_set_status(&t, 429, false, false), BR_OK);
    assert_int_equal(br_resil_triggers_set_status(&t, 529, true, false), BR_OK);
    assert_int_equal(br_resil_triggers_set_status(&t, 399, true, true), BR_ERR_RANGE);
    assert_int_equal(br_resil_triggers_set_status(&t, 600, true, true), BR_ERR_RANGE);
    assert_int_equal(br_resil_triggers_set_status(&t, 400, true, true), BR_OK);
    assert_int_equal(br_resil_triggers_set_status(&t, 599, true, true), BR_OK);
    memset(&o, 0, sizeof(o));
    o.error_kind = BR_UPSTREAM_ERROR_HTTP_STATUS;
    o.status = 500;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_FALLBACK);
    o.status = 429;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_FAIL);
    assert_int_equal(v.health, H_RL);
    o.status = 529;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_RETRY);
    assert_false(v.fallback_ok);
    o.status = 599;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_RETRY);
    assert_true(v.fallback_ok);
    o.status = 400;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_RETRY);
    /* opt-in kinds */
    t.retry_kinds |= BR_RESIL_TRIGGER_BROKEN;
    t.fallback_kinds |= BR_RESIL_TRIGGER_IDLE_TIMEOUT;
    o.error_kind = BR_UPSTREAM_ERROR_CLOSED;
    o.status = 502;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_RETRY);
    assert_false(v.fallback_ok);
    o.error_kind = BR_UPSTREAM_ERROR_TIMEOUT_IDLE;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_FALLBACK);
    /* context length is never a retry of the same model, even when asked */
    t.retry_kinds |= BR_RESIL_TRIGGER_CONTEXT_LENGTH;
    o.error_kind = BR_UPSTREAM_ERROR_HTTP_STATUS;
    o.status = 400;
    o.context_overflow = true;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_FALLBACK);
    t.fallback_kinds &= ~BR_RESIL_TRIGGER_CONTEXT_LENGTH;
    br_resil_classify(&t, &o, &v);
    assert_int_equal(v.action, A_FAIL);
    /* cleared: nothing retries or falls back */
    br_resil_triggers_clear(&t);
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        struct row r = table[i];

        if (r.action != A_SUCCESS) {
            r.action = A_FAIL;
            r.fallback_ok = false;
        }
        check(&t, &r, false);
    }
}

static void test_classify_context_overflow_detect(void **state)
{
    static const char *const yes[] = {
        "{\"error\":{\"message\":\"This model's maximum context length is 8192 tokens. "
        "However, your messages resulted in 9000 tokens.\",\"type\":\"invalid_request_error\","
        "\"code\":\"context_length_exceeded\"}}",
        "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
        "\"message\":\"prompt is too long: 210000 tokens > 200000 maximum\"}}",
        "{\"error\":{\"code\":400,\"message\":\"The input token count (1200000) exceeds the "
        "maximum number of tokens allowed (1048576).\"}}",
        "Input exceeds the model's CONTEXT WINDOW",
    };
    static const char *const no[] = {
        "{\"error\":{\"message\":\"Invalid value for temperature\"}}",
        "",
        "context_length_exceede",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        assert_true(br_resil_is_context_overflow(400, br_slice_from_cstr(yes[i])));
        assert_true(br_resil_is_context_overflow(413, br_slice_from_cstr(yes[i])));
        assert_true(br_resil_is_context_overflow(422, br_slice_from_cstr(yes[i])));
        assert_false(br_resil_is_context_overflow(500, br_slice_from_cstr(yes[i])));
        assert_false(br_resil_is_context_overflow(200, br_slice_from_cstr(yes[i])));
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        assert_false(br_resil_is_context_overflow(400, br_slice_from_cstr(no[i])));
    }
    assert_false(br_resil_is_context_overflow(400, br_slice_make(NULL, 0)));
    /* a slice without NUL: the phrase cut by the slice end does not match */
    assert_false(br_resil_is_context_overflow(400, br_slice_make("context window", 13)));
}

static void test_classify_names(void **state)
{
    (void)state;
    assert_string_equal(br_resil_action_name(A_SUCCESS), "success");
    assert_string_equal(br_resil_action_name(A_RETRY), "retry");
    assert_string_equal(br_resil_action_name(A_FALLBACK), "fallback");
    assert_string_equal(br_resil_action_name(A_FAIL), "fail");
    assert_string_equal(br_resil_health_name(H_OK), "ok");
    assert_string_equal(br_resil_health_name(H_FAIL), "failure");
    assert_string_equal(br_resil_health_name(H_RL), "rate_limited");
    assert_string_equal(br_resil_health_name(H_NEUTRAL), "neutral");
    assert_string_equal(br_resil_action_name((enum br_resil_action)42), "unknown");
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify_default_table),
        cmocka_unit_test(test_classify_after_first_byte),
        cmocka_unit_test(test_classify_custom_triggers),
        cmocka_unit_test(test_classify_context_overflow_detect),
        cmocka_unit_test(test_classify_names),
    };

    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("resil_classify", tests, NULL, NULL);
}
