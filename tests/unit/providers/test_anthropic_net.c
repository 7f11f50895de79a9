/* SPDX-License-Identifier: MIT */
/*
 * The anthropic provider over a real socket: a scripted Messages API server thread on
 * 127.0.0.1 answers through brigade's upstream client (libcurl on libuv). Checks the request
 * brigade sends (URL, headers, translated body), whole and streamed answers (including events
 * split at odd byte boundaries), upstream errors with their own status, error events before
 * and after output, streams cut short, transport failures, a request refused before any
 * network traffic, cancellation from inside a chunk callback, and secret redaction.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "br_test.h"
#include "core/arena.h"
#include "core/err.h"
#include "upstream/provider.h"
#include "upstream/upstream.h"

#define API_KEY "sk-ant-test-0123456789abcdef"

/* ---- the scripted server ---- */

struct server {
    int fd;
    unsigned short port;
    pthread_t thread;
    atomic_int stop;
    atomic_int n_conns;
    /* script */
    const char *response; /* raw bytes to send after reading the request */
    size_t piece;         /* send in pieces of this many bytes (0: all at once) */
    int piece_delay_ms;
    bool hang; /* read the request, then never answer */
    /* recorded (read after the loop is done) */
    char head[8192];
    char body[65536];
    size_t body_len;
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Case-insensitive strstr (strcasestr is a GNU extension). */
static const char *ci_find(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        if (strncasecmp(hay, needle, n) == 0) {
            return hay;
        }
    }
    return NULL;
}

/* A whole HTTP/1.1 response with a JSON (or other) body and its Content-Length; caller frees. */
static char *http_response(const char *status_line, const char *extra_headers, const char *body)
{
    size_t n = strlen(status_line) + strlen(extra_headers) + strlen(body) + 160;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "HTTP/1.1 %s\r\n%scontent-length: %zu\r\nconnection: close\r\n\r\n%s",
             status_line, extra_headers, strlen(body), body);
    return s;
}

static bool wait_readable(struct server *s, int fd)
{
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, 20);
        if (r > 0) {
            return true;
        }
    }
    return false;
}

/* Reads one request (head + Content-Length body) into s->head / s->body. */
static bool read_request(struct server *s, int fd)
{
    char buf[sizeof(s->head) + sizeof(s->body)];
    size_t len = 0;
    char *end = NULL;
    while (!end) {
        if (len == sizeof(buf) - 1 || !wait_readable(s, fd)) {
            return false;
        }
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0) {
            return false;
        }
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - buf) + 4;
    if (head_len >= sizeof(s->head)) {
        return false;
    }
    memcpy(s->head, buf, head_len);
    s->head[head_len] = '\0';
    size_t want = 0;
    for (char *p = s->head; (p = strchr(p, '\n')) != NULL;) {
        p++;
        if (strncasecmp(p, "content-length:", 15) == 0) {
            want = strtoul(p + 15, NULL, 10);
        }
        if (strncasecmp(p, "expect: 100-continue", 20) == 0) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            (void)send(fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL);
        }
    }
    if (want >= sizeof(s->body)) {
        return false;
    }
    size_t have = len - head_len;
    memcpy(s->body, buf + head_len, have);
    while (have < want) {
        if (!wait_readable(s, fd)) {
            return false;
        }
        ssize_t n = recv(fd, s->body + have, want - have, 0);
        if (n <= 0) {
            return false;
        }
        have += (size_t)n;
    }
    s->body[have] = '\0';
    s->body_len = have;
    return true;
}

static void serve_one(struct server *s, int fd)
{
    if (!read_request(s, fd)) {
        return;
    }
    if (s->hang) {
        while (!atomic_load(&s->stop)) {
            sleep_ms(10);
        }
        return;
    }
    size_t total = strlen(s->response);
    size_t step = s->piece ? s->piece : total;
    for (size_t off = 0; off < total && !atomic_load(&s->stop); off += step) {
        size_t n = total - off < step ? total - off : step;
        if (send(fd, s->response + off, n, MSG_NOSIGNAL) < 0) {
            return;
        }
        if (s->piece_delay_ms) {
            sleep_ms(s->piece_delay_ms);
        }
    }
}

static void *server_main(void *arg)
{
    struct server *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {s->fd, POLLIN, 0};
        if (poll(&p, 1, 20) <= 0) {
            continue;
        }
        int fd = accept(s->fd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        atomic_fetch_add(&s->n_conns, 1);
        serve_one(s, fd);
        shutdown(fd, SHUT_RDWR);
        close(fd);
    }
    return NULL;
}

static void server_start(struct server *s)
{
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 8), 0);
    socklen_t al = sizeof(a);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &al), 0);
    s->port = ntohs(a.sin_port);
    atomic_store(&s->stop, 0);
    atomic_store(&s->n_conns, 0);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_stop(struct server *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    close(s->fd);
}

/* ---- the client side ---- */

struct rec {
    int n_begin;
    json_t *chunks;
    json_t *body;
    int n_done;
    struct br_provider_result res;
    char err_copy[2048];
    bool in_start;
    int cancel_after;
    struct br_provider_call *call;
    struct br_provider_result partial;
    uv_loop_t *loop;
};

static void rec_begin(void *user)
{
    struct rec *r = user;
    assert_false(r->in_start);
    r->n_begin++;
}

static void rec_chunk(void *user, struct br_slice json)
{
    struct rec *r = user;
    assert_false(r->in_start);
    assert_int_equal(r->n_begin, 1);
    json_t *j = json_loadb(json.ptr, json.len, 0, NULL);
    assert_non_null(j);
    json_array_append_new(r->chunks, j);
    if (r->cancel_after && (int)json_array_size(r->chunks) == r->cancel_after) {
        br_provider_anthropic.call_cancel(r->call, &r->partial);
    }
}

static void rec_body(void *user, struct br_slice json)
{
    struct rec *r = user;
    assert_int_equal(r->n_begin, 1);
    r->body = json_loadb(json.ptr, json.len, 0, NULL);
    assert_non_null(r->body);
}

static void rec_done(void *user, const struct br_provider_result *res)
{
    struct rec *r = user;
    assert_false(r->in_start);
    r->n_done++;
    r->res = *res;
    size_t n = res->error_body.len < sizeof(r->err_copy) - 1 ? res->error_body.len
                                                             : sizeof(r->err_copy) - 1;
    if (n) {
        memcpy(r->err_copy, res->error_body.ptr, n);
    }
    r->err_copy[n] = '\0';
    r->res.error_body = br_slice_make(r->err_copy, n);
    r->res.upstream_model = NULL; /* arena memory; checked through the chunks/body */
}

static const struct br_provider_sink sink = {rec_begin, rec_chunk, rec_body, rec_done, NULL};

struct fx {
    struct server srv;
    uv_loop_t loop;
    br_upstream *up;
    br_arena *arena;
    struct br_provider_target target;
    char base_url[64];
    const char *extra[2];
    struct rec rec;
    struct br_provider_call call;
    json_t *request;
};

static void fx_open(struct fx *f, const char *response)
{
    memset(f, 0, sizeof(*f));
    f->srv.response = response;
    server_start(&f->srv);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(br_upstream_create(&f->loop, NULL, &f->up), BR_OK);
    assert_int_equal(br_arena_create(0, &f->arena), BR_OK);
    snprintf(f->base_url, sizeof(f->base_url), "http://127.0.0.1:%u/v1/", f->srv.port);
    f->target.name = "claude";
    f->target.upstream_model = "claude-3-5-haiku-20241022";
    f->target.base_url = f->base_url;
    f->target.api_key = API_KEY;
    f->extra[0] = "anthropic-beta: prompt-caching-2024-07-31";
    f->target.extra_headers = f->extra;
    f->target.n_extra_headers = 1;
    f->target.first_byte_timeout_ms = 5000;
    f->target.idle_timeout_ms = 5000;
    f->rec.chunks = json_array();
    f->rec.loop = &f->loop;
}

static void fx_call(struct fx *f, const char *request, bool stream, bool usage)
{
    f->request = json_loads(request, 0, NULL);
    assert_non_null(f->request);
    f->call.target = &f->target;
    f->call.loop = &f->loop;
    f->call.upstream = f->up;
    f->call.arena = f->arena;
    f->call.request = f->request;
    f->call.stream = stream;
    f->call.client_wants_usage = usage;
    f->call.request_id = "test";
    f->call.sink = &sink;
    f->call.sink_user = &f->rec;
    f->rec.call = &f->call;
    f->rec.in_start = true;
    assert_int_equal(br_provider_anthropic.call_start(&f->call), BR_OK);
    f->rec.in_start = false;
    assert_int_equal(f->rec.n_done, 0);
    /* Until on_done (or a cancel) the loop has the call to run. */
    for (int i = 0; i < 20000 && f->rec.n_done == 0 && !f->rec.partial.rc; i++) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

static void fx_close(struct fx *f)
{
    server_stop(&f->srv);
    br_arena_destroy(f->arena); /* runs the provider's cleanup */
    br_upstream_destroy(f->up);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    json_decref(f->rec.chunks);
    json_decref(f->rec.body);
    json_decref(f->request);
}

static const json_t *choice0(const json_t *j)
{
    return json_array_get(json_object_get(j, "choices"), 0);
}

static json_t *error_of(struct fx *f)
{
    json_t *e = json_loads(f->rec.err_copy, 0, NULL);
    assert_non_null(e);
    return e;
}

static const char *err_field(json_t *e, const char *k)
{
    return json_string_value(json_object_get(json_object_get(e, "error"), k));
}

#define HELLO_REQ                                                                          \
    "{\"model\":\"claude\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"}," \
    "{\"role\":\"user\",\"content\":\"Hello\"}],\"max_tokens\":100,\"temperature\":0.5}"

static const char json_answer_body[] =
    "{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\","
    "\"content\":[{\"type\":\"text\",\"text\":\"Hi! How can I help?\"}],\"model\":"
    "\"claude-3-5-haiku-20241022\",\"stop_reason\":\"end_turn\",\"stop_sequence\":null,"
    "\"usage\":{\"input_tokens\":14,\"cache_read_input_tokens\":6,\"output_tokens\":9}}";

static void whole_answer(void **state)
{
    (void)state;
    char *resp = http_response("200 OK", "content-type: application/json\r\n", json_answer_body);
    struct fx f;
    fx_open(&f, resp);
    fx_call(&f, HELLO_REQ, false, false);
    /* What went upstream. */
    assert_non_null(strstr(f.srv.head, "POST /v1/messages HTTP/1.1\r\n"));
    assert_non_null(ci_find(f.srv.head, "\r\nx-api-key: " API_KEY "\r\n"));
    assert_non_null(ci_find(f.srv.head, "\r\nanthropic-version: 2023-06-01\r\n"));
    assert_non_null(ci_find(f.srv.head, "\r\ncontent-type: application/json\r\n"));
    assert_non_null(ci_find(f.srv.head, "\r\nanthropic-beta: prompt-caching-2024-07-31\r\n"));
    assert_null(ci_find(f.srv.head, "authorization:"));
    json_t *sent = json_loads(f.srv.body, 0, NULL);
    json_t *want = json_loads("{\"model\":\"claude-3-5-haiku-20241022\",\"system\":\"Be brief.\","
                              "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],"
                              "\"max_tokens\":100,\"temperature\":0.5}",
                              0, NULL);
    assert_true(json_equal(sent, want));
    json_decref(sent);
    json_decref(want);
    /* What the client got. */
    assert_int_equal(f.rec.n_begin, 1);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.res.rc, BR_OK);
    assert_int_equal(f.rec.res.status, 200);
    assert_string_equal(json_string_value(json_object_get(f.rec.body, "id")),
                        "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(choice0(f.rec.body), "message"), "content")),
                        "Hi! How can I help?");
    assert_true(f.rec.res.usage.reported);
    assert_int_equal(f.rec.res.usage.prompt_tokens, 20);
    assert_int_equal(f.rec.res.usage.cached_tokens, 6);
    assert_int_equal(f.rec.res.usage.completion_tokens, 9);
    assert_string_equal(f.rec.res.finish_reason, "stop");
    assert_true(f.rec.res.t_first_byte_ns > 0);
    fx_close(&f);
    free(resp);
}

static const char sse_head[] = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                               "cache-control: no-cache\r\nconnection: close\r\n\r\n";

#define EV(name, data) "event: " name "\ndata: " data "\n\n"
#define MSG_START                                                                           \
    EV("message_start",                                                                     \
       "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\","  \
       "\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-3-haiku-20240307\"," \
       "\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2},"       \
       "\"content\":[],\"stop_reason\":null}}")
#define TEXT_START                                                                               \
    EV("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":" \
                              "{\"type\":\"text\",\"text\":\"\"}}")
#define TEXT_DELTA(t)                                                                     \
    EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{" \
                              "\"type\":\"text_delta\",\"text\":\"" t "\"}}")

static char *concat(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "%s%s", a, b);
    return s;
}

static void streamed_tool_use_in_odd_pieces(void **state)
{
    (void)state;
    char *resp = concat(
        sse_head,
        MSG_START TEXT_START EV("ping", "{\"type\": \"ping\"}") TEXT_DELTA("Okay") TEXT_DELTA(
            ", checking.") EV("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}")
            EV("content_block_start",
               "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":"
               "\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\","
               "\"input\":{}}}")
                EV("content_block_delta",
                   "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
                   "\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}")
                    EV("content_block_delta",
                       "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
                       "\"input_json_delta\",\"partial_json\":\"ncisco, CA\\\"}\"}}")
                        EV("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":1}")
                            EV("message_delta",
                               "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
                               "\"tool_use\",\"stop_sequence\":null},\"usage\":{"
                               "\"output_tokens\":89}}")
                                EV("message_stop", "{\"type\":\"message_stop\"}"));
    struct fx f;
    fx_open(&f, resp);
    f.srv.piece = 7; /* events and even CRLFs split across reads */
    f.srv.piece_delay_ms = 0;
    fx_call(&f,
            "{\"model\":\"claude\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
            "\"messages\":[{\"role\":\"user\",\"content\":\"Weather in SF?\"}],\"tools\":[{"
            "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{"
            "\"type\":\"object\"}}}]}",
            true, true);
    assert_non_null(ci_find(f.srv.head, "\r\naccept: text/event-stream\r\n"));
    assert_non_null(strstr(f.srv.body, "\"stream\":true"));
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.res.rc, BR_OK);
    assert_int_equal(f.rec.res.status, 200);
    assert_false(f.rec.res.partial);
    /* role, Okay, ", checking.", tool start, 2 argument pieces, finish, usage */
    assert_int_equal(json_array_size(f.rec.chunks), 8);
    char args[128] = "";
    for (size_t i = 4; i <= 5; i++) {
        const json_t *tc = json_array_get(
            json_object_get(json_object_get(choice0(json_array_get(f.rec.chunks, i)), "delta"),
                            "tool_calls"),
            0);
        strncat(args,
                json_string_value(json_object_get(json_object_get(tc, "function"), "arguments")),
                sizeof(args) - strlen(args) - 1);
    }
    assert_string_equal(args, "{\"location\": \"San Francisco, CA\"}");
    assert_string_equal(json_string_value(json_object_get(choice0(json_array_get(f.rec.chunks, 6)),
                                                          "finish_reason")),
                        "tool_calls");
    const json_t *u = json_object_get(json_array_get(f.rec.chunks, 7), "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 472 + 89);
    assert_true(f.rec.res.usage.reported);
    assert_int_equal(f.rec.res.usage.prompt_tokens, 472);
    assert_int_equal(f.rec.res.usage.completion_tokens, 89);
    assert_string_equal(f.rec.res.finish_reason, "tool_calls");
    assert_true(f.rec.res.t_first_token_ns > 0);
    fx_close(&f);
    free(resp);
}

static void stream_request_answered_with_json(void **state)
{
    (void)state;
    char *resp = http_response("200 OK", "content-type: application/json\r\n", json_answer_body);
    struct fx f;
    fx_open(&f, resp);
    fx_call(&f, HELLO_REQ, true, true);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.res.rc, BR_OK);
    assert_int_equal(f.rec.res.status, 200);
    assert_null(f.rec.body);
    /* role, text, finish, usage */
    assert_int_equal(json_array_size(f.rec.chunks), 4);
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(choice0(json_array_get(f.rec.chunks, 1)), "delta"), "content")),
        "Hi! How can I help?");
    assert_true(f.rec.res.usage.reported);
    assert_int_equal(f.rec.res.usage.prompt_tokens, 20);
    assert_int_equal(f.rec.res.usage.completion_tokens, 9);
    fx_close(&f);
    free(resp);
}

static void upstream_error_keeps_status(void **state)
{
    (void)state;
    static const struct {
        const char *status_line;
        const char *headers;
        const char *body;
        int status;
        const char *type;
        const char *code;
        uint32_t retry_ms;
    } cases[] = {
        {"429 Too Many Requests", "content-type: application/json\r\nretry-after: 5\r\n",
         "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Number of "
         "requests\"}}",
         429, "rate_limit_error", "rate_limit_exceeded", 5000},
        {"529 Overloaded", "content-type: application/json\r\n",
         "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}"
         "}",
         529, "overloaded_error", "overloaded", 0},
        {"400 Bad Request", "content-type: application/json\r\n",
         "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":"
         "\"max_tokens: must be positive\"}}",
         400, "invalid_request_error", NULL, 0},
        {"502 Bad Gateway", "content-type: text/html\r\n", "<html></html>", 502, "upstream_error",
         "upstream_http_status", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *resp = http_response(cases[i].status_line, cases[i].headers, cases[i].body);
        struct fx f;
        fx_open(&f, resp);
        fx_call(&f, HELLO_REQ, i % 2 == 1, false);
        assert_int_equal(f.rec.n_done, 1);
        assert_int_equal(f.rec.n_begin, 0);
        assert_int_equal(f.rec.res.rc, BR_ERR_UPSTREAM);
        assert_int_equal(f.rec.res.status, cases[i].status);
        assert_int_equal(f.rec.res.error_kind, BR_UPSTREAM_ERROR_HTTP_STATUS);
        assert_int_equal(f.rec.res.retry_after_ms, cases[i].retry_ms);
        assert_int_equal(f.rec.res.usage.prompt_tokens, 0); /* not billed */
        json_t *e = error_of(&f);
        assert_string_equal(err_field(e, "type"), cases[i].type);
        if (cases[i].code) {
            assert_string_equal(err_field(e, "code"), cases[i].code);
        }
        assert_non_null(err_field(e, "message"));
        json_decref(e);
        fx_close(&f);
        free(resp);
    }
}

static void error_event_before_output_gets_its_status(void **state)
{
    (void)state;
    char *resp = concat(sse_head, EV("error", "{\"type\":\"error\",\"error\":{\"type\":"
                                              "\"overloaded_error\",\"message\":\"Overloaded\"}}"));
    struct fx f;
    fx_open(&f, resp);
    fx_call(&f, HELLO_REQ, true, true);
    assert_int_equal(f.rec.n_begin, 0);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.res.status, 529);
    assert_false(f.rec.res.partial);
    json_t *e = error_of(&f);
    assert_string_equal(err_field(e, "type"), "overloaded_error");
    assert_string_equal(err_field(e, "message"), "Overloaded");
    json_decref(e);
    fx_close(&f);
    free(resp);
}

static void error_event_mid_stream_is_partial(void **state)
{
    (void)state;
    char *resp = concat(sse_head, MSG_START TEXT_START TEXT_DELTA("The answer is") EV(
                                      "error", "{\"type\":\"error\",\"error\":{\"type\":"
                                               "\"api_error\",\"message\":\"Internal error\"}}"));
    struct fx f;
    fx_open(&f, resp);
    fx_call(&f, HELLO_REQ, true, true);
    assert_int_equal(f.rec.n_begin, 1);
    assert_int_equal(json_array_size(f.rec.chunks), 2);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.res.rc, BR_ERR_UPSTREAM);
    assert_int_equal(f.rec.res.status, 500);
    assert_true(f.rec.res.partial);
    assert_int_equal(f.rec.res.usage.prompt_tokens, 472);
    assert_int_equal(f.rec.res.usage.completion_tokens, 3);
    assert_false(f.rec.res.usage.reported);
    json_t *e = error_of(&f);
    assert_string_equal(err_field(e, "type"), "server_error");
    json_decref(e);
    fx_close(&f);
    free(resp);
}

static void stream_cut_short(void **state)
{
    (void)state;
    /* Close-delimited body that ends before message_stop, and a chunked body whose last
     * chunk never comes: both are a cut answer. */
    char *plain = concat(sse_head, MSG_START TEXT_START TEXT_DELTA("one two three four"));
    static const char chunked_head[] = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                       "transfer-encoding: chunked\r\n\r\n";
    static const char events[] = MSG_START TEXT_START TEXT_DELTA("one two three four");
    char chunked[4096];
    snprintf(chunked, sizeof(chunked), "%s%zx\r\n%s\r\n", chunked_head, sizeof(events) - 1, events);
    const char *const responses[] = {plain, chunked};
    for (size_t i = 0; i < 2; i++) {
        struct fx f;
        fx_open(&f, responses[i]);
        fx_call(&f, HELLO_REQ, true, false);
        assert_int_equal(f.rec.n_done, 1);
        assert_int_equal(f.rec.res.rc, BR_ERR_UPSTREAM);
        assert_int_equal(f.rec.res.status, 502);
        assert_int_equal(f.rec.res.error_kind, BR_UPSTREAM_ERROR_CLOSED);
        assert_true(f.rec.res.partial);
        assert_int_equal(f.rec.res.usage.prompt_tokens, 472);
        assert_int_equal(f.rec.res.usage.completion_tokens, 4); /* estimated */
        assert_false(f.rec.res.usage.reported);
        json_t *e = error_of(&f);
        assert_string_equal(err_field(e, "type"), "upstream_error");
        assert_string_equal(err_field(e, "code"), "upstream_closed");
        json_decref(e);
        fx_close(&f);
    }
    free(plain);
}

static void bad_responses_are_502(void **state)
{
    (void)state;
    char *bad_sse = concat(sse_head, MSG_START "data: {not json\n\n");
    char *bad_json = http_response("200 OK", "content-type: application/json\r\n", "not json!");
    const char *const responses[] = {bad_sse, bad_json};
    for (size_t i = 0; i < 2; i++) {
        struct fx f;
        fx_open(&f, responses[i]);
        fx_call(&f, HELLO_REQ, i == 0, false);
        assert_int_equal(f.rec.n_done, 1);
        assert_int_equal(f.rec.res.status, 502);
        assert_int_equal(f.rec.res.error_kind, BR_UPSTREAM_ERROR_BAD_RESPONSE);
        json_t *e = error_of(&f);
        assert_string_equal(err_field(e, "code"), "upstream_bad_response");
        json_decref(e);
        fx_close(&f);
    }
    free(bad_sse);
    free(bad_json);
}

static void transport_failures(void **state)
{
    (void)state;
    /* Nothing listens: connect fails. */
    struct fx f;
    fx_open(&f, "");
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t al = sizeof(a);
    getsockname(s, (struct sockaddr *)&a, &al);
    snprintf(f.base_url, sizeof(f.base_url), "http://127.0.0.1:%u/v1", ntohs(a.sin_port));
    fx_call(&f, HELLO_REQ, false, false);
    close(s);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.res.status, 502);
    assert_int_equal(f.rec.res.error_kind, BR_UPSTREAM_ERROR_CONNECT);
    json_t *e = error_of(&f);
    assert_string_equal(err_field(e, "type"), "upstream_error");
    assert_string_equal(err_field(e, "code"), "upstream_connect");
    json_decref(e);
    fx_close(&f);

    /* The server reads the request and never answers: first-byte timeout, 504. */
    fx_open(&f, "");
    f.srv.hang = true;
    f.target.first_byte_timeout_ms = 200;
    fx_call(&f, HELLO_REQ, true, false);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.res.status, 504);
    assert_int_equal(f.rec.res.error_kind, BR_UPSTREAM_ERROR_TIMEOUT_FIRST_BYTE);
    e = error_of(&f);
    assert_string_equal(err_field(e, "code"), "upstream_timeout_first_byte");
    json_decref(e);
    fx_close(&f);
}

static void unsupported_request_never_reaches_upstream(void **state)
{
    (void)state;
    char *resp = http_response("200 OK", "content-type: application/json\r\n", json_answer_body);
    struct fx f;
    fx_open(&f, resp);
    fx_call(&f,
            "{\"model\":\"claude\",\"n\":3,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            false, false);
    assert_int_equal(f.rec.n_done, 1);
    assert_int_equal(f.rec.n_begin, 0);
    assert_int_equal(f.rec.res.status, 400);
    assert_int_equal(atomic_load(&f.srv.n_conns), 0);
    json_t *e = error_of(&f);
    assert_string_equal(err_field(e, "type"), "invalid_request_error");
    assert_string_equal(err_field(e, "param"), "n");
    assert_string_equal(err_field(e, "code"), "unsupported_parameter");
    json_decref(e);
    fx_close(&f);

    /* Canceled before the deferred answer runs: nothing at all is delivered. */
    fx_open(&f, resp);
    f.request = json_loads("{\"messages\":[]}", 0, NULL);
    f.call.target = &f.target;
    f.call.loop = &f.loop;
    f.call.upstream = f.up;
    f.call.arena = f.arena;
    f.call.request = f.request;
    f.call.sink = &sink;
    f.call.sink_user = &f.rec;
    assert_int_equal(br_provider_anthropic.call_start(&f.call), BR_OK);
    struct br_provider_result p;
    br_provider_anthropic.call_cancel(&f.call, &p);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_int_equal(f.rec.n_done, 0);
    assert_int_equal(p.rc, BR_ERR_CANCELED);
    fx_close(&f);
    free(resp);
}

static void cancel_inside_chunk(void **state)
{
    (void)state;
    char *resp = concat(sse_head, MSG_START TEXT_START TEXT_DELTA("alpha beta") TEXT_DELTA(" gamma")
                                      TEXT_DELTA(" delta"));
    struct fx f;
    fx_open(&f, resp);
    f.srv.piece = 40;
    f.srv.piece_delay_ms = 2;
    f.rec.cancel_after = 2; /* role chunk, "alpha beta" */
    fx_call(&f, HELLO_REQ, true, false);
    assert_int_equal(f.rec.n_done, 0);
    assert_int_equal(json_array_size(f.rec.chunks), 2);
    const struct br_provider_result *p = &f.rec.partial;
    assert_int_equal(p->rc, BR_ERR_CANCELED);
    assert_int_equal(p->status, 499);
    assert_true(p->partial);
    assert_int_equal(p->usage.prompt_tokens, 472);   /* real, from message_start */
    assert_int_equal(p->usage.completion_tokens, 2); /* estimated: "alpha beta" */
    assert_false(p->usage.reported);
    /* Let the loop run on: no callback may come after the cancel. */
    for (int i = 0; i < 50; i++) {
        uv_run(&f.loop, UV_RUN_NOWAIT);
        sleep_ms(1);
    }
    assert_int_equal(f.rec.n_done, 0);
    assert_int_equal(json_array_size(f.rec.chunks), 2);
    fx_close(&f);
    free(resp);
}

static void secret_is_redacted(void **state)
{
    (void)state;
    char *resp = http_response("401 Unauthorized", "content-type: application/json\r\n",
                               "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
                               "\"message\":\"bad key " API_KEY "\"}}");
    struct fx f;
    fx_open(&f, resp);
    fx_call(&f, HELLO_REQ, false, false);
    assert_int_equal(f.rec.res.status, 401);
    assert_null(strstr(f.rec.err_copy, API_KEY));
    json_t *e = error_of(&f);
    assert_string_equal(err_field(e, "message"), "bad key ***");
    assert_string_equal(err_field(e, "code"), "invalid_api_key");
    json_decref(e);
    fx_close(&f);
    free(resp);
}

static void model_create_checks(void **state)
{
    (void)state;
    const char *bad_hdr[] = {"no colon here"};
    struct br_provider_target t = {.name = "c", .base_url = "ftp://x"};
    void *st = (void *)1;
    char err[128] = "";
    assert_int_equal(br_provider_anthropic.model_create(&t, &st, err, sizeof(err)), BR_ERR_INVAL);
    assert_null(st);
    t.base_url = NULL; /* the public API */
    assert_int_equal(br_provider_anthropic.model_create(&t, &st, err, sizeof(err)), BR_OK);
    t.api_key = "sk\r\nX: y";
    assert_int_equal(br_provider_anthropic.model_create(&t, &st, err, sizeof(err)), BR_ERR_INVAL);
    t.api_key = "k";
    t.extra_headers = bad_hdr;
    t.n_extra_headers = 1;
    assert_int_equal(br_provider_anthropic.model_create(&t, &st, err, sizeof(err)), BR_ERR_INVAL);
    assert_ptr_equal(br_provider_find("anthropic"), &br_provider_anthropic);
}

static int group_setup(void **state)
{
    (void)state;
    return br_upstream_global_init() == BR_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    br_upstream_global_cleanup();
    return 0;
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(whole_answer),
        cmocka_unit_test(streamed_tool_use_in_odd_pieces),
        cmocka_unit_test(stream_request_answered_with_json),
        cmocka_unit_test(upstream_error_keeps_status),
        cmocka_unit_test(error_event_before_output_gets_its_status),
        cmocka_unit_test(error_event_mid_stream_is_partial),
        cmocka_unit_test(stream_cut_short),
        cmocka_unit_test(bad_responses_are_502),
        cmocka_unit_test(transport_failures),
        cmocka_unit_test(unsupported_request_never_reaches_upstream),
        cmocka_unit_test(cancel_inside_chunk),
        cmocka_unit_test(secret_is_redacted),
        cmocka_unit_test(model_create_checks),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("anthropic_net", tests, group_setup, group_teardown);
}
