/* SPDX-License-Identifier: MIT */
/*
 * The local provider end to end: the real `brigade serve` generating with the embedded engine.
 * stories260K (F32 GGUF) at temperature 0 continues "Once upon a time" exactly as llama2.c's
 * golden greedy run; streamed and non-streamed answers agree; usage, finish_reason, stop
 * strings, logprobs, cost; a bounded queue answers 503 when full; a client that hangs up frees
 * its generation thread; `brigade config check` refuses missing or malformed model files.
 *
 * The queue and cancellation tests need a generation that lasts long enough to be observed, so
 * they use a larger llama2.c checkpoint with random weights written by the test (dim 256, 4
 * layers, 1024 positions; the 512-token vocabulary of tok512.bin).
 */
#define _DEFAULT_SOURCE /* usleep */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "br_test.h"
#include "common.h"

#define STORIES "{SRC}/models/stories260K"

#define LOCAL_CONFIG                                                   \
    BASE_CONFIG                                                        \
    "  - name: stories260k\n"                                          \
    "    provider: local\n"                                            \
    "    local:\n"                                                     \
    "      model: " STORIES "/stories260K-f32.gguf\n"                  \
    "      threads: 2\n"                                               \
    "      adapters:\n"                                                \
    "        lora-a: " STORIES "/lora260K-r4.gguf\n"                   \
    "        half: {path: " STORIES "/lora260K-r4.gguf, scale: 0.5}\n" \
    "    price: {input: 0.01, output: 0.02}\n"                         \
    "  - name: stories-bin\n"                                          \
    "    provider: local\n"                                            \
    "    local:\n"                                                     \
    "      model: " STORIES "/stories260K.bin\n"                       \
    "      tokenizer: " STORIES "/tok512.bin\n"                        \
    "      template: simple\n"                                         \
    "    price: {input: 0.01, output: 0.02}\n"                         \
    "  - name: stories-lora\n"                                         \
    "    provider: local\n"                                            \
    "    local:\n"                                                     \
    "      model: " STORIES "/stories260K-f32.gguf\n"                  \
    "      lora: " STORIES "/lora260K-r4.gguf\n"                       \
    "    price: {input: 0.01, output: 0.02}\n"                         \
    "  - name: slow-q0\n"                                              \
    "    provider: local\n"                                            \
    "    local: {model: {DIR}/slow.bin, tokenizer: " STORIES           \
    "/tok512.bin, threads: 1, queue: 0}\n"                             \
    "    price: {input: 0, output: 0}\n"                               \
    "  - name: slow-q1\n"                                              \
    "    provider: local\n"                                            \
    "    local: {model: {DIR}/slow.bin, tokenizer: " STORIES           \
    "/tok512.bin, threads: 1, queue: 1}\n"                             \
    "    price: {input: 0, output: 0}\n"

#define MASTER_KEY "br-master-key-local-4242"

/* Headers every completion() sends: the master key in the admin test, else none. */
static const char *const *client_headers;

static char *golden; /* the continuation of "Once upon a time" in llama2.c's greedy run */

static long long now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* A llama2.c checkpoint with random weights (shared classifier): slow enough to watch. */
static void write_slow_model(const char *path)
{
    const int32_t h[7] = {256, 768, 4, 8, 8, 512, 1024}; /* dim hidden layers heads kv vocab seq */
    size_t d = 256;
    size_t floats = 512 * d + 4 * (d + 4 * d * d + d + 3 * 768 * d) + d + 1024 * (d / 8);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(h, sizeof(h), 1, f), 1);
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    float buf[4096];
    for (size_t done = 0; done < floats;) {
        size_t n = floats - done < 4096 ? floats - done : 4096;
        for (size_t i = 0; i < n; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            buf[i] = ((float)(s >> 40) / (float)(1 << 24) - 0.5F) * 0.2F;
        }
        assert_int_equal(fwrite(buf, sizeof(float), n, f), n);
        done += n;
    }
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    static const char *const args[] = {"--require-key", PROVIDER_KEY, NULL};
    struct env *e = calloc(1, sizeof(*e));
    setenv("BR_IT_PROVIDER_KEY", PROVIDER_KEY, 1);
    env_start_mock(e, args);
    char path[320];
    snprintf(path, sizeof(path), "%s/slow.bin", e->dir);
    write_slow_model(path);
    env_start_gateway(e, LOCAL_CONFIG);
    if (!golden) {
        char *g = read_file(BR_SOURCE_DIR "/models/stories260K/golden/run_greedy_once_upon.txt");
        assert_memory_equal(g, "Once upon a time", 16);
        golden = strdup(g + 16);
        free(g);
    }
    *state = e;
    return 0;
}

/* The same gateway with a master key, for the admin API. */
static int setup_admin(void **state)
{
    static const char *const args[] = {"--require-key", PROVIDER_KEY, NULL};
    struct env *e = calloc(1, sizeof(*e));
    setenv("BR_IT_PROVIDER_KEY", PROVIDER_KEY, 1);
    setenv("BR_IT_MASTER_KEY", MASTER_KEY, 1);
    env_start_mock(e, args);
    char path[320];
    snprintf(path, sizeof(path), "%s/slow.bin", e->dir);
    write_slow_model(path);
    env_start_gateway(e, LOCAL_CONFIG "auth:\n  master_key: env:BR_IT_MASTER_KEY\n");
    static const char *const with_key[] = {"Authorization: Bearer " MASTER_KEY, NULL};
    client_headers = with_key;
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    client_headers = NULL;
    env_stop(*state);
    free(*state);
    return 0;
}

static json_t *chat(struct env *e, const char *model, bool stream, const char *extra,
                    struct http_resp *r)
{
    char *body = chat_body(model, "Once upon a time", stream, extra);
    http_request(e, "POST", "/v1/chat/completions", NULL, body, r);
    free(body);
    if (r->status != 200) {
        fail_msg("status %ld: %s", r->status, r->body);
    }
    return stream ? NULL : parse_json(r->body);
}

static const char *content_of(json_t *j)
{
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    return json_string_value(json_object_get(json_object_get(ch, "message"), "content"));
}

static const char *finish_of(json_t *j)
{
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    return json_string_value(json_object_get(ch, "finish_reason"));
}

static long long usage_of(json_t *j, const char *what)
{
    return json_integer_value(json_object_get(json_object_get(j, "usage"), what));
}

static void assert_golden_prefix(const char *text, size_t min_len)
{
    if (strlen(text) < min_len || strncmp(golden, text, strlen(text)) != 0) {
        fail_msg("not a prefix of the golden continuation: '%s'", text);
    }
}

static void test_greedy_nonstream(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    json_t *j = chat(e, "stories260k", false, "\"temperature\":0,\"max_tokens\":40", &r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "stories260k");
    assert_golden_prefix(content_of(j), 100);
    assert_string_equal(finish_of(j), "length");
    assert_int_equal(usage_of(j, "prompt_tokens"), 5); /* BOS + 4 */
    assert_int_equal(usage_of(j, "completion_tokens"), 40);
    assert_int_equal(usage_of(j, "total_tokens"), 45);
    /* 5 x 0.01 + 40 x 0.02 USD per million tokens = 850 nano-USD. */
    char *cost = http_header(&r, "x-brigade-cost-usd");
    expect_cost(cost, 850);
    free(cost);
    char *prov = http_header(&r, "x-brigade-provider");
    assert_string_equal(prov, "local");
    free(prov);
    json_decref(j);
    http_resp_free(&r);

    /* Without max_tokens the context (128 positions) ends it; still the golden text. */
    j = chat(e, "stories260k", false, "\"temperature\":0", &r);
    assert_golden_prefix(content_of(j), 250);
    assert_string_equal(finish_of(j), "length");
    assert_int_equal(usage_of(j, "prompt_tokens") + usage_of(j, "completion_tokens"), 128);
    json_decref(j);
    http_resp_free(&r);

    /* The llama2.c checkpoint with the simple template sees "user: ...\nassistant:". */
    j = chat(e, "stories-bin", false, "\"temperature\":0,\"max_tokens\":8", &r);
    assert_int_equal(usage_of(j, "completion_tokens"), 8);
    assert_true(usage_of(j, "prompt_tokens") > 5);
    json_decref(j);
    http_resp_free(&r);
    assert_true(db_wait_rows(e, 3));
    assert_int_equal(db_int(e, "SELECT cost_nano_usd FROM requests ORDER BY rowid LIMIT 1"), 850);
}

static void test_greedy_stream(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    json_t *ref = chat(e, "stories260k", false, "\"temperature\":0,\"max_tokens\":30", &r);
    char *want = strdup(content_of(ref));
    json_decref(ref);
    http_resp_free(&r);

    chat(e, "stories260k", true,
         "\"temperature\":0,\"max_tokens\":30,\"stream_options\":{\"include_usage\":true}", &r);
    size_t n = 0;
    char **ev = sse_payloads(r.body, &n);
    assert_true(n >= 4);
    assert_string_equal(ev[n - 1], "[DONE]");
    char text[4096] = "";
    const char *finish = NULL;
    json_t *usage = NULL;
    json_t *docs[256];
    size_t nd = 0;
    for (size_t i = 0; i + 1 < n && nd < 256; i++) {
        json_t *c = parse_json(ev[i]);
        docs[nd++] = c;
        assert_string_equal(json_string_value(json_object_get(c, "object")),
                            "chat.completion.chunk");
        json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
        const char *piece =
            json_string_value(json_object_get(json_object_get(ch, "delta"), "content"));
        if (piece) {
            strncat(text, piece, sizeof(text) - strlen(text) - 1);
        }
        if (json_is_string(json_object_get(ch, "finish_reason"))) {
            finish = json_string_value(json_object_get(ch, "finish_reason"));
        }
        if (json_is_object(json_object_get(c, "usage"))) {
            usage = json_object_get(c, "usage");
        }
    }
    assert_string_equal(text, want);
    assert_non_null(finish);
    assert_string_equal(finish, "length");
    assert_non_null(usage);
    assert_int_equal(json_integer_value(json_object_get(usage, "prompt_tokens")), 5);
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 30);
    for (size_t i = 0; i < nd; i++) {
        json_decref(docs[i]);
    }
    sse_free(ev);
    http_resp_free(&r);
    free(want);
    assert_true(db_wait_rows(e, 2));
    assert_int_equal(
        db_int(e, "SELECT completion_tokens FROM requests ORDER BY rowid DESC LIMIT 1"), 30);
}

static void test_stop_strings(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    json_t *j = chat(e, "stories260k", false,
                     "\"temperature\":0,\"max_tokens\":60,\"stop\":[\"zzz\",\"Lily\"]", &r);
    assert_string_equal(content_of(j), ", there was a little girl named ");
    assert_string_equal(finish_of(j), "stop");
    assert_true(usage_of(j, "completion_tokens") < 60);
    json_decref(j);
    http_resp_free(&r);

    /* A stop string that spans tokens, streamed. */
    chat(e, "stories260k", true, "\"temperature\":0,\"max_tokens\":60,\"stop\":\"She loved\"", &r);
    assert_non_null(strstr(r.body, "\"finish_reason\":\"stop\""));
    assert_null(strstr(r.body, "loved"));
    http_resp_free(&r);

    /* Bad parameters are the client's error. */
    char *body = chat_body("stories260k", "Once upon a time", false,
                           "\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]");
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    free(body);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "\"error\""));
    http_resp_free(&r);
    body = chat_body("stories260k", "Once upon a time", false, "\"temperature\":7");
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    free(body);
    assert_int_equal(r.status, 400);
    http_resp_free(&r);
    body = chat_body("stories260k", "Once upon a time", false, "\"n\":2");
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    free(body);
    assert_int_equal(r.status, 400);
    http_resp_free(&r);

    /* A prompt that leaves no room in the 128-token context. */
    char words[2048] = "";
    for (int i = 0; i < 150; i++) {
        strcat(words, "Once ");
    }
    body = chat_body("stories260k", words, false, NULL);
    http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
    free(body);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "\"code\":\"context_length_exceeded\""));
    http_resp_free(&r);
}

static void check_logprob_entry(json_t *entry, size_t n_top)
{
    assert_true(json_is_string(json_object_get(entry, "token")));
    assert_true(json_is_number(json_object_get(entry, "logprob")));
    assert_true(json_number_value(json_object_get(entry, "logprob")) <= 0);
    assert_true(json_is_array(json_object_get(entry, "bytes")));
    json_t *top = json_object_get(entry, "top_logprobs");
    assert_int_equal(json_array_size(top), n_top);
    if (n_top) {
        /* Greedy: the chosen token is the most likely one. */
        json_t *t0 = json_array_get(top, 0);
        assert_string_equal(json_string_value(json_object_get(t0, "token")),
                            json_string_value(json_object_get(entry, "token")));
        for (size_t i = 1; i < n_top; i++) {
            assert_true(json_number_value(json_object_get(json_array_get(top, i), "logprob")) <=
                        json_number_value(json_object_get(json_array_get(top, i - 1), "logprob")));
        }
    }
}

static void test_logprobs(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    json_t *j =
        chat(e, "stories260k", false,
             "\"temperature\":0,\"max_tokens\":12,\"logprobs\":true,\"top_logprobs\":3", &r);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    json_t *content = json_object_get(json_object_get(ch, "logprobs"), "content");
    assert_int_equal(json_array_size(content), 12);
    char text[1024] = "";
    for (size_t i = 0; i < 12; i++) {
        json_t *entry = json_array_get(content, i);
        check_logprob_entry(entry, 3);
        strncat(text, json_string_value(json_object_get(entry, "token")),
                sizeof(text) - strlen(text) - 1);
    }
    assert_string_equal(text, content_of(j));
    json_decref(j);
    http_resp_free(&r);

    /* Not asked: null. */
    j = chat(e, "stories260k", false, "\"temperature\":0,\"max_tokens\":3", &r);
    ch = json_array_get(json_object_get(j, "choices"), 0);
    assert_true(json_is_null(json_object_get(ch, "logprobs")));
    json_decref(j);
    http_resp_free(&r);

    /* Streamed: one entry per token chunk. */
    chat(e, "stories260k", true, "\"temperature\":0,\"max_tokens\":6,\"logprobs\":true", &r);
    size_t n = 0;
    char **ev = sse_payloads(r.body, &n);
    size_t entries = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *c = parse_json(ev[i]);
        json_t *c0 = json_array_get(json_object_get(c, "choices"), 0);
        json_t *lp = json_object_get(json_object_get(c0, "logprobs"), "content");
        for (size_t k = 0; k < json_array_size(lp); k++) {
            check_logprob_entry(json_array_get(lp, k), 0);
            entries++;
        }
        json_decref(c);
    }
    assert_int_equal(entries, 6);
    sse_free(ev);
    http_resp_free(&r);
}

static json_t *completion(struct env *e, const char *body, long want_status, struct http_resp *r)
{
    http_request(e, "POST", "/v1/completions", client_headers, body, r);
    if (r->status != want_status) {
        fail_msg("status %ld, want %ld: %s", r->status, want_status, r->body);
    }
    return want_status == 200 && !strstr(body, "\"stream\":true") ? parse_json(r->body) : NULL;
}

static void test_text_completions(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    json_t *j = completion(e,
                           "{\"model\":\"stories260k\",\"prompt\":\"Once upon a time\","
                           "\"temperature\":0,\"max_tokens\":40}",
                           200, &r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    const char *text = json_string_value(json_object_get(ch, "text"));
    assert_golden_prefix(text, 100);
    char *want = strdup(text);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")), "length");
    assert_int_equal(usage_of(j, "prompt_tokens"), 5);
    assert_int_equal(usage_of(j, "completion_tokens"), 40);
    char *cost = http_header(&r, "x-brigade-cost-usd");
    expect_cost(cost, 850);
    free(cost);
    json_decref(j);
    http_resp_free(&r);
    assert_true(db_wait_rows(e, 1));
    assert_int_equal(db_int(e, "SELECT cost_nano_usd FROM requests WHERE endpoint = "
                               "'/v1/completions' AND completion_tokens = 40 AND status = 200"),
                     850);

    /* The legacy default of 16 tokens. */
    j = completion(e,
                   "{\"model\":\"stories260k\",\"prompt\":\"Once upon a time\",\"temperature\":0}",
                   200, &r);
    assert_int_equal(usage_of(j, "completion_tokens"), 16);
    json_decref(j);
    http_resp_free(&r);

    /* Streamed: text_completion events whose texts make the same continuation. */
    completion(e,
               "{\"model\":\"stories260k\",\"prompt\":\"Once upon a time\",\"temperature\":0,"
               "\"max_tokens\":40,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
               200, &r);
    size_t n = 0;
    char **ev = sse_payloads(r.body, &n);
    assert_string_equal(ev[n - 1], "[DONE]");
    char got[4096] = "";
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *c = parse_json(ev[i]);
        assert_string_equal(json_string_value(json_object_get(c, "object")), "text_completion");
        json_t *c0 = json_array_get(json_object_get(c, "choices"), 0);
        if (c0) {
            strncat(got, json_string_value(json_object_get(c0, "text")),
                    sizeof(got) - strlen(got) - 1);
        } else {
            assert_int_equal(usage_of(c, "completion_tokens"), 40);
        }
        json_decref(c);
    }
    assert_string_equal(got, want);
    free(want);
    sse_free(ev);
    http_resp_free(&r);

    /* Only local models; the model and the prompt are required. */
    completion(e, "{\"model\":\"mock-gpt\",\"prompt\":\"x\"}", 400, &r);
    assert_non_null(strstr(r.body, "\"code\":\"unsupported_model\""));
    http_resp_free(&r);
    completion(e, "{\"model\":\"nope\",\"prompt\":\"x\"}", 404, &r);
    http_resp_free(&r);
    completion(e, "{\"model\":\"stories260k\"}", 400, &r);
    http_resp_free(&r);
    completion(e, "{\"model\":\"stories260k\",\"prompt\":7}", 400, &r);
    http_resp_free(&r);
    completion(e, "not json", 400, &r);
    http_resp_free(&r);
    http_request(e, "GET", "/v1/completions", NULL, NULL, &r);
    assert_int_equal(r.status, 405);
    http_resp_free(&r);
}

/* A catalogue entry with a LoRA adapter applied at run time: the merged-weights golden run. */
static void test_lora_variant(void **state)
{
    struct env *e = *state;
    char *g = read_file(BR_SOURCE_DIR
                        "/models/stories260K/golden/run_greedy_once_upon_lora_r4_merged.txt");
    struct http_resp r;
    json_t *j = completion(e,
                           "{\"model\":\"stories-lora\",\"prompt\":\"Once upon a time\","
                           "\"temperature\":0,\"max_tokens\":60}",
                           200, &r);
    const char *text = json_string_value(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text"));
    assert_true(strlen(text) > 150);
    if (strncmp(g + 16, text, strlen(text)) != 0) {
        fail_msg("not the LoRA golden continuation: '%s'", text);
    }
    assert_true(strncmp(golden, text, strlen(text)) != 0); /* the adapter changes the story */
    json_decref(j);
    http_resp_free(&r);
    free(g);
}

static int connect_gw(struct env *e);
static void send_completion(int fd, const char *model, int max_tokens);
static char *read_all(int fd, int timeout_ms);
static char *read_until(int fd, const char *end, int timeout_ms);

static char *completion_text(struct env *e, const char *model, int max_tokens)
{
    char body[256];
    snprintf(body, sizeof(body),
             "{\"model\":\"%s\",\"prompt\":\"Once upon a time\",\"temperature\":0,"
             "\"max_tokens\":%d}",
             model, max_tokens);
    struct http_resp r;
    json_t *j = completion(e, body, 200, &r);
    assert_string_equal(json_string_value(json_object_get(j, "model")), model);
    char *text = strdup(json_string_value(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
    json_decref(j);
    http_resp_free(&r);
    return text;
}

/* "model": "NAME:ADAPTER" picks one of a local model's named adapters per request. */
static void test_adapter_by_name(void **state)
{
    struct env *e = *state;
    char *g = read_file(BR_SOURCE_DIR
                        "/models/stories260K/golden/run_greedy_once_upon_lora_r4_merged.txt");
    char *a = completion_text(e, "stories260k:lora-a", 60);
    if (strlen(a) < 150 || strncmp(g + 16, a, strlen(a)) != 0) {
        fail_msg("not the LoRA golden continuation: '%s'", a);
    }
    char *base = completion_text(e, "stories260k", 60);
    assert_golden_prefix(base, 150); /* the base model is untouched by its adapters */
    char *half = completion_text(e, "stories260k:half", 60);
    assert_string_not_equal(half, a); /* scale 0.5 is neither the adapter nor the base */
    assert_string_not_equal(half, base);
    char *lora_entry = completion_text(e, "stories-lora", 60);
    assert_string_equal(lora_entry, a); /* same adapter, same scale, as a catalogue entry */

    /* Chat completions, streamed: the adapter's text, the requested name in every chunk. */
    struct http_resp r;
    chat(e, "stories260k:lora-a", true, "\"temperature\":0,\"max_tokens\":60", &r);
    size_t n = 0;
    char **ev = sse_payloads(r.body, &n);
    char got[4096] = "";
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *c = parse_json(ev[i]);
        assert_string_equal(json_string_value(json_object_get(c, "model")), "stories260k:lora-a");
        json_t *d = json_object_get(json_array_get(json_object_get(c, "choices"), 0), "delta");
        if (json_string_value(json_object_get(d, "content"))) {
            strncat(got, json_string_value(json_object_get(d, "content")),
                    sizeof(got) - strlen(got) - 1);
        }
        json_decref(c);
    }
    assert_string_equal(got, a);
    sse_free(ev);
    http_resp_free(&r);

    /* Unknown adapters, adapters of models that take none: 404 model_not_found. */
    static const char *const missing[] = {"stories260k:nope", "mock-gpt:lora-a",
                                          "stories260k:", ":lora-a"};
    for (size_t i = 0; i < sizeof(missing) / sizeof(missing[0]); i++) {
        char *body = chat_body(missing[i], "hi", false, NULL);
        http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
        free(body);
        assert_int_equal(r.status, 404);
        assert_non_null(strstr(r.body, "\"code\":\"model_not_found\""));
        http_resp_free(&r);
        char cbody[160];
        snprintf(cbody, sizeof(cbody), "{\"model\":\"%s\",\"prompt\":\"x\"}", missing[i]);
        completion(e, cbody, 404, &r);
        http_resp_free(&r);
    }

    /* Discovery: /v1/models lists the adapters; /v1/models/NAME:ADAPTER answers. */
    http_request(e, "GET", "/v1/models", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"id\":\"stories260k:lora-a\""));
    assert_non_null(strstr(r.body, "\"id\":\"stories260k:half\""));
    http_resp_free(&r);
    http_request(e, "GET", "/v1/models/stories260k:half", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"id\":\"stories260k:half\""));
    http_resp_free(&r);
    http_request(e, "GET", "/v1/models/stories260k:nope", NULL, NULL, &r);
    assert_int_equal(r.status, 404);
    http_resp_free(&r);

    /* The request log names the adapter's model. */
    assert_true(db_wait_rows(e, 5));
    assert_true(db_int(e, "SELECT count(*) FROM requests WHERE status = 200") >= 5);
    free(g);
    free(a);
    free(base);
    free(half);
    free(lora_entry);
}

static void admin(struct env *e, const char *method, const char *path, const char *body, long want,
                  struct http_resp *r)
{
    const char *h[] = {"Authorization: Bearer " MASTER_KEY, NULL};
    http_request(e, method, path, h, body, r);
    if (r->status != want) {
        fail_msg("%s %s: status %ld, want %ld: %s", method, path, r->status, want, r->body);
    }
}

/* Load and unload adapters through the admin API, without a restart. */
static void test_adapter_admin(void **state)
{
    struct env *e = *state;
    struct http_resp r;
    const char *path = "/admin/models/stories260k/adapters";
    admin(e, "GET", path, NULL, 200, &r);
    json_t *j = parse_json(r.body);
    assert_int_equal(json_array_size(json_object_get(j, "data")), 2);
    json_t *first = json_array_get(json_object_get(j, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(first, "id")), "stories260k:lora-a");
    assert_string_equal(json_string_value(json_object_get(first, "source")), "config");
    json_decref(j);
    http_resp_free(&r);

    /* Not before it is loaded. */
    completion(e, "{\"model\":\"stories260k:b\",\"prompt\":\"x\"}", 404, &r);
    http_resp_free(&r);

    /* Load: 201, then served at once (a relative path resolves against the config's folder). */
    char link[320];
    snprintf(link, sizeof(link), "%s/adapter-b.gguf", e->dir);
    assert_int_equal(symlink(BR_SOURCE_DIR "/models/stories260K/lora260K-r4-b.gguf", link), 0);
    admin(e, "POST", path, "{\"name\":\"b\",\"path\":\"adapter-b.gguf\",\"scale\":1}", 201, &r);
    j = parse_json(r.body);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "stories260k:b");
    json_decref(j);
    http_resp_free(&r);
    char *b = completion_text(e, "stories260k:b", 60);
    char *a = completion_text(e, "stories260k:lora-a", 60);
    char *base = completion_text(e, "stories260k", 60);
    assert_string_not_equal(b, a);
    assert_string_not_equal(b, base);
    admin(e, "GET", path, NULL, 200, &r);
    assert_non_null(strstr(r.body, "\"source\":\"admin\""));
    http_resp_free(&r);
    http_request(e, "GET", "/v1/models", client_headers, NULL, &r);
    assert_non_null(strstr(r.body, "\"id\":\"stories260k:b\""));
    http_resp_free(&r);

    /* Refused: a taken name (409), bad names, scales and files (400), a model that takes no
     * adapters or does not exist (404), no master key (401), a wrong method (405). */
    admin(e, "POST", path, "{\"name\":\"b\",\"path\":\"adapter-b.gguf\"}", 409, &r);
    assert_non_null(strstr(r.body, "adapter_exists"));
    http_resp_free(&r);
    static const char *const bad[] = {
        "{\"name\":\"has space\",\"path\":\"adapter-b.gguf\"}",
        "{\"name\":\"c\"}",
        "{\"name\":\"c\",\"path\":\"adapter-b.gguf\",\"scale\":100}",
        "{\"name\":\"c\",\"path\":\"/nonexistent/x.gguf\"}",
        "{\"name\":\"c\",\"path\":\"slow.bin\"}",
        "{\"name\":\"c\",\"path\":\"" BR_SOURCE_DIR "/models/stories260K/stories260K-f32.gguf\"}",
        "[1,2]",
        "not json",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        admin(e, "POST", path, bad[i], 400, &r);
        assert_non_null(strstr(r.body, "\"error\""));
        http_resp_free(&r);
    }
    admin(e, "POST", "/admin/models/mock-gpt/adapters", "{\"name\":\"c\",\"path\":\"x\"}", 404, &r);
    http_resp_free(&r);
    admin(e, "GET", "/admin/models/nope/adapters", NULL, 404, &r);
    http_resp_free(&r);
    admin(e, "GET", "/admin/models/stories260k", NULL, 404, &r);
    http_resp_free(&r);
    admin(e, "PUT", path, "{}", 405, &r);
    http_resp_free(&r);
    http_request(e, "GET", path, NULL, NULL, &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);
    http_request(e, "DELETE", "/admin/models/stories260k/adapters/b", NULL, NULL, &r);
    assert_int_equal(r.status, 401);
    http_resp_free(&r);

    /* Unload: 200, then gone (404 for requests and for a second delete); config ones too. */
    admin(e, "DELETE", "/admin/models/stories260k/adapters/b", NULL, 200, &r);
    assert_non_null(strstr(r.body, "\"deleted\":true"));
    http_resp_free(&r);
    completion(e, "{\"model\":\"stories260k:b\",\"prompt\":\"x\"}", 404, &r);
    http_resp_free(&r);
    admin(e, "DELETE", "/admin/models/stories260k/adapters/b", NULL, 404, &r);
    http_resp_free(&r);
    admin(e, "DELETE", "/admin/models/stories260k/adapters/half", NULL, 200, &r);
    http_resp_free(&r);
    admin(e, "GET", path, NULL, 200, &r);
    assert_null(strstr(r.body, "half"));
    http_resp_free(&r);

    /* Unloading an adapter while a request uses it: the request finishes with it. */
    for (int round = 0; round < 5; round++) {
        int fd = connect_gw(e);
        send_completion(fd, "stories260k:lora-a", 400);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&p, 1, 5000), 1); /* the stream has begun: the job holds it */
        admin(e, "DELETE", "/admin/models/stories260k/adapters/lora-a", NULL, 200, &r);
        http_resp_free(&r);
        char *all = read_until(fd, "data: [DONE]", 10000);
        close(fd);
        assert_non_null(strstr(all, "HTTP/1.1 200"));
        assert_non_null(strstr(all, "\"finish_reason\":\"length\""));
        free(all);
        completion(e, "{\"model\":\"stories260k:lora-a\",\"prompt\":\"x\"}", 404, &r);
        http_resp_free(&r);
        admin(e, "POST", path,
              "{\"name\":\"lora-a\",\"path\":\"" BR_SOURCE_DIR
              "/models/stories260K/lora260K-r4.gguf\"}",
              201, &r);
        http_resp_free(&r);
    }
    char *again = completion_text(e, "stories260k:lora-a", 60);
    assert_string_equal(again, a);

    /* A reload serves the config's adapters again (admin loads live in the snapshot). */
    admin(e, "POST", "/admin/reload", NULL, 200, &r);
    http_resp_free(&r);
    admin(e, "GET", path, NULL, 200, &r);
    assert_non_null(strstr(r.body, "\"half\""));
    assert_null(strstr(r.body, "\"source\":\"admin\""));
    http_resp_free(&r);
    free(again);
    free(a);
    free(b);
    free(base);
}

static int connect_gw(struct env *e)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(e->gw_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void send_chat(int fd, const char *model, bool stream, int max_tokens, const char *id)
{
    char body[512];
    snprintf(body, sizeof(body),
             "{\"model\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"stream\":%s,"
             "\"messages\":[{\"role\":\"user\",\"content\":\"Once upon a time\"}]}",
             model, max_tokens, stream ? "true" : "false");
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-request-id: %s\r\n"
                     "Connection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     id, strlen(body), body);
    assert_int_equal(send(fd, req, (size_t)n, 0), n);
}

static void send_completion(int fd, const char *model, int max_tokens)
{
    char body[512];
    snprintf(body, sizeof(body),
             "{\"model\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"stream\":true,"
             "\"prompt\":\"Once upon a time\"}",
             model, max_tokens);
    char req[1024];
    int n = snprintf(
        req, sizeof(req),
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "%sContent-Length: %zu\r\n\r\n%s",
        client_headers ? "Authorization: Bearer " MASTER_KEY "\r\n" : "", strlen(body), body);
    assert_int_equal(send(fd, req, (size_t)n, 0), n);
}

/* Reads until the peer closes (or timeout); malloc'd text. */
static char *read_all(int fd, int timeout_ms)
{
    size_t cap = 1 << 20;
    size_t got = 0;
    char *buf = malloc(cap);
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline && got + 1 < cap) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            ssize_t k = recv(fd, buf + got, cap - got - 1, 0);
            if (k <= 0) {
                break;
            }
            got += (size_t)k;
        }
    }
    buf[got] = '\0';
    return buf;
}

/* Reads until the text contains end, the peer closes, or timeout; malloc'd text. */
static char *read_until(int fd, const char *end, int timeout_ms)
{
    size_t cap = 1 << 20;
    size_t got = 0;
    char *buf = calloc(1, cap);
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline && got + 1 < cap && !strstr(buf, end)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            ssize_t k = recv(fd, buf + got, cap - got - 1, 0);
            if (k <= 0) {
                break;
            }
            got += (size_t)k;
            buf[got] = '\0';
        }
    }
    return buf;
}

/* Sends n requests at once to model and counts the 200 and 503 answers. */
static void burst(struct env *e, const char *model, int n, int *ok, int *busy)
{
    int fds[8];
    *ok = 0;
    *busy = 0;
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "%s-%d", model, i);
        fds[i] = connect_gw(e);
        send_chat(fds[i], model, false, 300, id);
    }
    for (int i = 0; i < n; i++) {
        char *out = read_all(fds[i], 60000);
        close(fds[i]);
        if (strncmp(out, "HTTP/1.1 200", 12) == 0) {
            (*ok)++;
            assert_non_null(strstr(out, "\"completion_tokens\":300"));
        } else if (strncmp(out, "HTTP/1.1 503", 12) == 0) {
            (*busy)++;
            assert_non_null(strstr(out, "\"code\":\"local_queue_full\""));
            assert_non_null(strstr(out, "\"type\":\"server_error\""));
            assert_non_null(strstr(out, "\"message\":"));
            assert_non_null(strstr(out, "retry-after:"));
        } else {
            fail_msg("unexpected answer: %.300s", out);
        }
        free(out);
    }
}

static void test_queue_full(void **state)
{
    struct env *e = *state;
    /* Time one generation: the burst below must land well within it. */
    long long t0 = now_ms();
    struct http_resp r;
    json_t *j = chat(e, "slow-q0", false, "\"temperature\":0,\"max_tokens\":300", &r);
    long long took = now_ms() - t0;
    assert_int_equal(usage_of(j, "completion_tokens"), 300);
    json_decref(j);
    http_resp_free(&r);
    print_message("one 300-token generation of the slow model: %lld ms\n", took);
    assert_true(took >= 100);

    int ok;
    int busy;
    burst(e, "slow-q0", 4, &ok, &busy); /* one thread, no queue: one runs, three refused */
    assert_int_equal(ok, 1);
    assert_int_equal(busy, 3);
    burst(e, "slow-q1", 4, &ok, &busy); /* one runs, one waits */
    assert_int_equal(ok, 2);
    assert_int_equal(busy, 2);
    assert_true(db_wait_rows(e, 9));
    assert_int_equal(db_int(e, "SELECT count(*) FROM requests WHERE status = 503"), 5);
}

static void test_disconnect_frees_slot(void **state)
{
    struct env *e = *state;
    long long t0 = now_ms();
    struct http_resp r;
    json_t *j = chat(e, "slow-q0", false, "\"temperature\":0,\"max_tokens\":1000", &r);
    long long full = now_ms() - t0;
    json_decref(j);
    http_resp_free(&r);

    int fd = connect_gw(e);
    send_chat(fd, "slow-q0", true, 1000, "gone-local");
    char buf[65536] = "";
    size_t got = 0;
    long long deadline = now_ms() + 10000;
    while (now_ms() < deadline && count_substr(buf, "data: ") < 4) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            ssize_t k = recv(fd, buf + got, sizeof(buf) - got - 1, 0);
            if (k <= 0) {
                break;
            }
            got += (size_t)k;
            buf[got] = '\0';
        }
    }
    assert_true(count_substr(buf, "data: ") >= 4);
    t0 = now_ms();
    close(fd);
    /* The slot frees at the next token: a following request (no queue) is served long before
     * the abandoned generation would have ended. */
    long long status = 0;
    while (now_ms() - t0 < full) {
        char *body = chat_body("slow-q0", "Once upon a time", false, "\"max_tokens\":5");
        http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
        free(body);
        status = r.status;
        http_resp_free(&r);
        if (status == 200) {
            break;
        }
        assert_int_equal(status, 503);
        usleep(10000);
    }
    assert_int_equal(status, 200);
    print_message("full generation %lld ms, slot free after %lld ms\n", full, now_ms() - t0);
    assert_true(now_ms() - t0 < full / 2 + 200);
    assert_true(db_wait_rows(e, 3));
    assert_int_equal(db_int(e, "SELECT status FROM requests WHERE id='gone-local'"), 499);
    assert_true(db_int(e, "SELECT completion_tokens FROM requests WHERE id='gone-local'") < 1000);

    /* The same for a streamed /v1/completions request. */
    fd = connect_gw(e);
    send_completion(fd, "slow-q0", 1000);
    got = 0;
    buf[0] = '\0';
    deadline = now_ms() + 10000;
    while (now_ms() < deadline && count_substr(buf, "data: ") < 4) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            ssize_t k = recv(fd, buf + got, sizeof(buf) - got - 1, 0);
            if (k <= 0) {
                break;
            }
            got += (size_t)k;
            buf[got] = '\0';
        }
    }
    assert_true(count_substr(buf, "\"object\":\"text_completion\"") >= 3);
    t0 = now_ms();
    close(fd);
    status = 0;
    while (now_ms() - t0 < full) {
        char *body = chat_body("slow-q0", "Once upon a time", false, "\"max_tokens\":5");
        http_request(e, "POST", "/v1/chat/completions", NULL, body, &r);
        free(body);
        status = r.status;
        http_resp_free(&r);
        if (status == 200) {
            break;
        }
        usleep(10000);
    }
    assert_int_equal(status, 200);
    assert_true(now_ms() - t0 < full / 2 + 200);
}

/* brigade config check on a config text; returns the exit status and the output. */
static int config_check(struct env *e, const char *text, char **out)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/check.yaml", e->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/src/brigade config check -c %s 2>&1", BR_BINARY_DIR, path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    *out = calloc(1, 8192);
    size_t n = fread(*out, 1, 8191, p);
    (*out)[n] = '\0';
    return pclose(p);
}

static void test_config_errors(void **state)
{
    struct env *e = *state;
    char cfg[2048];
    char *out;
    snprintf(cfg, sizeof(cfg),
             "models:\n  - name: m\n    provider: local\n    local: {model: %s/slow.bin, "
             "tokenizer: %s/models/stories260K/tok512.bin}\n    price: {input: 0, output: 0}\n",
             e->dir, BR_SOURCE_DIR);
    assert_int_equal(config_check(e, cfg, &out), 0);
    free(out);

    /* Missing file: the line of the entry and the path. */
    assert_int_not_equal(config_check(e,
                                      "models:\n  - name: m\n    provider: local\n"
                                      "    local: {model: nope.gguf}\n"
                                      "    price: {input: 0, output: 0}\n",
                                      &out),
                         0);
    assert_non_null(strstr(out, "check.yaml:2"));
    assert_non_null(strstr(out, "nope.gguf"));
    free(out);

    /* Malformed model file. */
    char bad[320];
    snprintf(bad, sizeof(bad), "%s/bad.gguf", e->dir);
    FILE *f = fopen(bad, "w");
    fputs("GGUF this is not a model at all", f);
    fclose(f);
    assert_int_not_equal(config_check(e,
                                      "models:\n  - name: m\n    provider: local\n"
                                      "    local: {model: bad.gguf}\n"
                                      "    price: {input: 0, output: 0}\n",
                                      &out),
                         0);
    assert_non_null(strstr(out, "bad.gguf"));
    free(out);

    /* A .bin without its tokenizer, no model, a bad template, an unknown key. */
    static const char *const broken[] = {
        "    local: {model: slow.bin}\n",
        "    local: {threads: 2}\n",
        "    local: {model: slow.bin, template: chatml}\n",
        "    local: {model: slow.bin, wat: 1}\n",
        "    local: {model: slow.bin, threads: 0}\n",
        "    local: {model: slow.bin, tokenizer: slow.bin, lora: nope.gguf}\n",
        "    local: {model: slow.bin, lora_scale: big}\n",
    };
    for (size_t i = 0; i < sizeof(broken) / sizeof(broken[0]); i++) {
        snprintf(cfg, sizeof(cfg),
                 "models:\n  - name: m\n    provider: local\n%s    price: {input: 0, output: 0}\n",
                 broken[i]);
        int st = config_check(e, cfg, &out);
        if (st == 0) {
            fail_msg("accepted: %s", broken[i]);
        }
        assert_non_null(strstr(out, "check.yaml:"));
        free(out);
    }
    /* Named adapters: each refusal names the problem and the line. */
    static const struct {
        const char *adapters;
        const char *says;
    } bad_adapters[] = {
        {"{\"bad name\": a.gguf}", "not an adapter name"},
        {"{a: {scale: 1}}", "needs path"},
        {"{a: {path: a.gguf, scale: 99}}", "from -16 to 16"},
        {"{a: {path: a.gguf, rank: 4}}", "unknown key"},
        {"{a: nope.gguf}", "nope.gguf"},
        {NULL, "adapter a"}, /* a model file, not an adapter */
        {"[a.gguf]", "adapters"},
    };
    for (size_t i = 0; i < sizeof(bad_adapters) / sizeof(bad_adapters[0]); i++) {
        char ad[512];
        if (bad_adapters[i].adapters) {
            snprintf(ad, sizeof(ad), "%s", bad_adapters[i].adapters);
        } else {
            snprintf(ad, sizeof(ad), "{a: %s/models/stories260K/stories260K-f32.gguf}",
                     BR_SOURCE_DIR);
        }
        snprintf(cfg, sizeof(cfg),
                 "models:\n  - name: m\n    provider: local\n    local:\n      model: "
                 "%s/models/stories260K/stories260K-f32.gguf\n      adapters: %s\n"
                 "    price: {input: 0, output: 0}\n",
                 BR_SOURCE_DIR, ad);
        int st = config_check(e, cfg, &out);
        if (st == 0 || !strstr(out, bad_adapters[i].says) || !strstr(out, "check.yaml:")) {
            fail_msg("adapters %s: status %d, output: %s", ad, st, out);
        }
        free(out);
    }
    snprintf(cfg, sizeof(cfg),
             "models:\n  - name: m\n    provider: local\n    local:\n      model: "
             "%s/models/stories260K/stories260K-f32.gguf\n      adapters:\n        a: "
             "%s/models/stories260K/lora260K-r4.gguf\n        a: x.gguf\n"
             "    price: {input: 0, output: 0}\n",
             BR_SOURCE_DIR, BR_SOURCE_DIR);
    assert_int_not_equal(config_check(e, cfg, &out), 0);
    free(out);

    /* provider local without local: */
    assert_int_not_equal(config_check(e,
                                      "models:\n  - name: m\n    provider: local\n"
                                      "    price: {input: 0, output: 0}\n",
                                      &out),
                         0);
    assert_non_null(strstr(out, "provider local needs local"));
    free(out);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_greedy_nonstream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_greedy_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_strings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logprobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_completions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lora_variant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adapter_by_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adapter_admin, setup_admin, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_frees_slot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("integration_local", tests, NULL, NULL);
}
