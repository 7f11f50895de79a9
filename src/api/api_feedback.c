/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/feedback {request_id, score 0..1 | thumbs "up"|"down", comment?}: a quality
 * judgement of an earlier answer. Authenticated like chat; only the key that made the request
 * (or the master key) may rate it. The lookup of the request and the write happen on the store
 * writer thread, after every request-log row queued before it (so a request answered a moment
 * ago is found), never on the event loop; the result comes back to this worker through its
 * completion queue (br__worker_post). Then the route's running estimates are updated and, when
 * the route adapts, its threshold may move (br__route_adjusted: logged, counted, persisted).
 *
 * Answers: 200 with the attribution, 404 for an unknown request id, 400 for a malformed body,
 * 503 when the request log is off or its queue is full.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/json.h"
#include "core/log.h"

#define ID_MAX            128
#define COMMENT_MAX       4096
#define FEEDBACK_NAME_MAX 256

struct fb_job {
    struct br__done done; /* first */
    struct br_worker *w;
    br_http_request *req;
    double score;
    int rc;
    bool have_attr;
    struct br_feedback_attr attr; /* strings point into the buffers below */
    char route[FEEDBACK_NAME_MAX];
    char model[FEEDBACK_NAME_MAX];
    char policy[FEEDBACK_NAME_MAX];
    char decision[FEEDBACK_NAME_MAX];
    char request_id[ID_MAX + 1];
};

static void count(struct br_worker *w, const char *route, const char *model, const char *result)
{
    const char *l[] = {route ? route : "-", model ? model : "-", result};
    br_metrics_add(w->g->metrics, w->index, w->g->m.feedback, l, 1);
}

void br__route_adjusted(struct br_gateway *g, unsigned shard, const char *route,
                        const struct br_route_adjustment *adj)
{
    if (!adj->changed) {
        return;
    }
    br_log(BR_LOG_INFO, NULL, "event=route_threshold_changed route=%s from=%.4f to=%.4f why=\"%s\"",
           route, adj->from, adj->to, adj->why);
    const char *l[] = {route};
    br_metrics_add(g->metrics, shard, g->m.route_threshold_changes, l, 1);
    if (g->store) {
        struct br_threshold_row t = {
            .route = route,
            .ts_ms = br_clock_wall_ms(),
            .config_threshold = adj->config_threshold,
            .threshold = adj->to,
            .reason = adj->why,
        };
        if (br_store_threshold(g->store, &t) != BR_OK) {
            br_log(BR_LOG_WARN, NULL, "event=route_threshold_not_persisted route=%s", route);
        }
    }
}

static void copy_name(char *dst, const char *src)
{
    (void)snprintf(dst, FEEDBACK_NAME_MAX, "%s", src ? src : ""); /* config names are short */
}

/* Store writer thread: keep the result and hand the job to the worker's loop. */
static void on_stored(void *user, int rc, const struct br_feedback_attr *attr)
{
    struct fb_job *j = user;
    j->rc = rc;
    if (rc == BR_OK && attr) {
        j->have_attr = true;
        j->attr = *attr;
        copy_name(j->route, attr->route);
        copy_name(j->model, attr->model);
        copy_name(j->policy, attr->policy);
        copy_name(j->decision, attr->decision);
        j->attr.route = attr->route ? j->route : NULL;
        j->attr.model = attr->model ? j->model : NULL;
        j->attr.policy = attr->policy ? j->policy : NULL;
        j->attr.decision = attr->decision ? j->decision : NULL;
    }
    br__worker_post(j->w, &j->done);
}

/* The worker's loop: answer the client and update the route's estimates. */
static void on_complete(struct br__done *d)
{
    struct fb_job *j = (struct fb_job *)d;
    struct br_worker *w = j->w;
    br_http_request *req = j->req;
    if (j->rc == BR_ERR_NOTFOUND) {
        count(w, NULL, NULL, "not_found");
        char *msg = br_arena_sprintf(
            req->arena, "No request with id '%s' was found for this API key.", j->request_id);
        br_http_respond_error(req, 404, "invalid_request_error", "request_not_found", "request_id",
                              msg ? msg : "request not found");
        br_free(j);
        return;
    }
    if (j->rc != BR_OK || !j->have_attr) {
        count(w, NULL, NULL, "failed");
        br_http_respond_error(req, 503, "server_error", "feedback_not_stored", NULL,
                              "The feedback could not be stored; retry later.");
        br_free(j);
        return;
    }
    const struct br_feedback_attr *a = &j->attr;
    count(w, a->route, a->model, isnan(a->previous) ? "recorded" : "replaced");
    struct br_runtime *rt = br__worker_runtime(w);
    if (a->route) {
        struct br_route_feedback fb = {
            .route = a->route,
            .model = a->model,
            .policy = a->policy,
            .decision = a->decision,
            .quality = j->score,
            .previous = a->previous,
            .cost_nano = a->cost_nano_usd,
            .now_ms = br_clock_wall_ms(),
        };
        struct br_route_adjustment adj;
        br_router_feedback(rt->router, &fb, &adj);
        br__route_adjusted(w->g, w->index, a->route, &adj);
    }
    br__respond_json(req, 200,
                     json_pack("{s:s, s:s, s:f, s:s?, s:s?, s:s?, s:s?, s:b}", "object", "feedback",
                               "request_id", j->request_id, "score", j->score, "route", a->route,
                               "model", a->model, "policy", a->policy, "decision", a->decision,
                               "replaced", !isnan(a->previous)));
    br_free(j);
}

static void on_drop(struct br__done *d)
{
    br_free(d);
}

/* ---------------------------------------------------------------- body */

struct fb_body {
    char request_id[ID_MAX + 1];
    double score;
    char *comment; /* arena, or NULL */
};

static int bad(br_http_request *req, const char *param, const char *code, const char *msg)
{
    br_http_respond_error(req, 400, "invalid_request_error", code, param, msg);
    return BR_ERR_INVAL;
}

static int read_member(br_http_request *req, const struct br_json_member *m, struct fb_body *b,
                       unsigned *seen)
{
    struct br_slice v = m->value;
    enum br_json_type t = br_json_type_of(v);
    if (br_json_key_eq(m->key, "request_id")) {
        size_t len = 0;
        if (t != BR_JSON_STRING ||
            br_json_string_decode(v, b->request_id, sizeof(b->request_id), &len) != BR_OK ||
            len == 0) {
            return bad(req, "request_id", "invalid_value",
                       "request_id must be the x-request-id of an earlier request (1 to 128 "
                       "characters).");
        }
        *seen |= 1;
        return BR_OK;
    }
    if (br_json_key_eq(m->key, "score")) {
        if (t != BR_JSON_NUMBER || br_json_number(v, &b->score) != BR_OK || b->score < 0 ||
            b->score > 1) {
            return bad(req, "score", "invalid_value", "score must be a number from 0 to 1.");
        }
        *seen |= 2;
        return BR_OK;
    }
    if (br_json_key_eq(m->key, "thumbs")) {
        char s[8] = "";
        if (t != BR_JSON_STRING || br_json_string_decode(v, s, sizeof(s), NULL) != BR_OK ||
            (strcmp(s, "up") != 0 && strcmp(s, "down") != 0)) {
            return bad(req, "thumbs", "invalid_value", "thumbs must be \"up\" or \"down\".");
        }
        b->score = strcmp(s, "up") == 0 ? 1.0 : 0.0;
        *seen |= 4;
        return BR_OK;
    }
    if (br_json_key_eq(m->key, "comment")) {
        long long n = t == BR_JSON_STRING ? br_json_string_decoded_len(v) : -1;
        if (t == BR_JSON_NULL) {
            return BR_OK;
        }
        if (n < 0 || n > COMMENT_MAX) {
            return bad(req, "comment", "invalid_value",
                       "comment must be a string of at most 4096 bytes.");
        }
        b->comment = br_arena_alloc(req->arena, (size_t)n + 1);
        if (!b->comment || br_json_string_decode(v, b->comment, (size_t)n + 1, NULL) != BR_OK) {
            return bad(req, "comment", "invalid_value", "comment could not be read.");
        }
        return BR_OK;
    }
    char name[64] = "";
    (void)br_json_string_decode(br_slice_make(m->key.ptr - 1, m->key.len + 2), name, sizeof(name),
                                NULL);
    char *msg = br_arena_sprintf(
        req->arena, "Unknown parameter '%.60s' (request_id, score or thumbs, comment).", name);
    return bad(req, NULL, "unknown_parameter", msg ? msg : "unknown parameter");
}

/* Parses and validates the body; on failure the 400 has been sent. */
static int parse_body(br_http_request *req, struct fb_body *b)
{
    size_t off = 0;
    const char *why = NULL;
    memset(b, 0, sizeof(*b));
    static const char not_object[] =
        "The body must be a JSON object: {\"request_id\": ..., \"score\": 0..1} or "
        "{\"request_id\": ..., \"thumbs\": \"up\"|\"down\"}.";
    if (br_json_validate(req->body.ptr, req->body.len, 0, &off, &why) != BR_OK ||
        br_json_type_of(req->body) != BR_JSON_OBJECT) {
        return bad(req, NULL, "invalid_json", not_object);
    }
    struct br_json_iter it;
    struct br_json_member m;
    unsigned seen = 0;
    int rc = br_json_obj_iter_init(&it, req->body);
    while (rc == BR_OK && (rc = br_json_obj_iter_next(&it, &m)) == BR_OK) {
        rc = read_member(req, &m, b, &seen);
        if (rc != BR_OK) {
            return rc;
        }
    }
    /* The members end with BR_ERR_NOTFOUND; anything else is text the iterator could not read
     * (the body was validated above, so this does not happen, but it is never taken as the
     * end of the members). */
    if (rc != BR_ERR_NOTFOUND) {
        return bad(req, NULL, "invalid_json", not_object);
    }
    if (!(seen & 1)) {
        return bad(req, "request_id", "missing_required_parameter",
                   "request_id is required: the x-request-id of the answer you rate.");
    }
    if ((seen & 6) == 0) {
        return bad(req, "score", "missing_required_parameter",
                   "Give a score from 0 to 1 or thumbs \"up\" / \"down\".");
    }
    if ((seen & 6) == 6) {
        return bad(req, "score", "invalid_value", "Give either score or thumbs, not both.");
    }
    return BR_OK;
}

void br__feedback_handle(struct br_worker *w, br_http_request *req)
{
    struct br_gateway *g = w->g;
    struct br_runtime *rt = br__worker_runtime(w);
    const char *key_id = NULL;
    enum br_auth_result ar = br__auth_client(w->g, rt->cfg, req, &key_id, NULL);
    if (ar != BR_AUTH_OK) {
        br__auth_fail(req, ar, false);
        return;
    }
    struct fb_body b;
    if (parse_body(req, &b) != BR_OK) {
        count(w, NULL, NULL, "rejected");
        return;
    }
    if (!g->store) {
        br_http_respond_error(req, 503, "server_error", "feedback_unavailable", NULL,
                              "Feedback needs the request log (log.path in the config).");
        return;
    }
    struct fb_job *j = br_calloc(1, sizeof(*j));
    if (!j) {
        br_http_respond_error(req, 503, "server_error", "out_of_memory", NULL, "out of memory");
        return;
    }
    j->done.complete = on_complete;
    j->done.drop = on_drop;
    j->w = w;
    j->req = req;
    j->score = b.score;
    memcpy(j->request_id, b.request_id, sizeof(j->request_id));
    struct br_feedback_row row = {
        .request_id = j->request_id,
        .ts_ms = br_clock_wall_ms(),
        .key_id = key_id,
        .is_master = key_id && strcmp(key_id, "master") == 0,
        .score = b.score,
        .comment = b.comment,
    };
    int rc = br_store_feedback(g->store, &row, on_stored, j);
    if (rc != BR_OK) {
        br_free(j);
        br_http_respond_error(req, 503, "server_error", "log_backpressure", NULL,
                              "The gateway's request log is behind; retry shortly.");
    }
}
