/* SPDX-License-Identifier: MIT */
/* Config loader: defaults, every section, secrets, and clear errors for bad input. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "config/config.h"
#include "core/err.h"

static struct br_config *load_ok(const char *text)
{
    struct br_config *c = NULL;
    char err[512];
    int rc = br_config_load_string(text, strlen(text), "/base", &c, err, sizeof(err));
    if (rc != BR_OK) {
        fail_msg("unexpected error: %s", err);
    }
    return c;
}

/* Loads text that must fail; returns the message for inspection. */
static const char *load_err(const char *text)
{
    static char err[512];
    struct br_config *c = NULL;
    int rc = br_config_load_string(text, strlen(text), "/base", &c, err, sizeof(err));
    if (rc == BR_OK) {
        br_config_unref(c);
        fail_msg("config unexpectedly loaded:\n%s", text);
    }
    assert_non_null(strstr(err, "<string>:"));
    return err;
}

#define MODEL "models:\n  - name: m\n    provider: openai\n    price: {input: 1, output: 2}\n"

static void test_minimal_defaults(void **state)
{
    (void)state;
    struct br_config *c = load_ok(MODEL);
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->listen_port, 8080);
    assert_int_equal(c->request_line_bytes, 8192);
    assert_int_equal(c->header_bytes, 32768);
    assert_int_equal(c->header_fields, 100);
    assert_int_equal(c->body_bytes, 16u << 20);
    assert_int_equal(c->header_timeout_ms, 10000);
    assert_int_equal(c->body_idle_timeout_ms, 30000);
    assert_string_equal(c->log_path, "/base/brigade.db");
    assert_false(c->has_master_key);
    assert_int_equal(c->n_keys, 0);
    assert_int_equal(c->n_models, 1);
    const struct br_model_cfg *m = br_config_model_find(c, "m", 1);
    assert_non_null(m);
    assert_string_equal(m->upstream_model, "m");
    assert_string_equal(m->base_url, "https://api.openai.com/v1");
    assert_int_equal(m->price.input_nano_usd_per_mtok, 1000000000);
    assert_int_equal(m->price.output_nano_usd_per_mtok, 2000000000);
    assert_true(m->price.cached_input_nano_usd_per_mtok < 0);
    assert_int_equal(m->connect_timeout_ms, 5000);
    assert_int_equal(m->first_byte_timeout_ms, 60000);
    assert_int_equal(m->idle_timeout_ms, 120000);
    assert_null(br_config_model_find(c, "x", 1));
    br_config_unref(c);
}

static void test_full(void **state)
{
    (void)state;
    setenv("BR_TEST_KEY", "sk-provider-secret", 1);
    setenv("BR_TEST_CLIENT", "client-key-1", 1);
    struct br_config *c = load_ok(
        "server:\n"
        "  listen: '[::1]:9090'\n"
        "  workers: 3\n"
        "  log_level: debug\n"
        "  limits: {request_line: 4KiB, header_block: 16KiB, header_fields: 50, body: 1MiB}\n"
        "  timeouts: {header: 2s, body_idle: 500ms, keepalive: 1m, drain: 0}\n"
        "auth:\n"
        "  master_key: env:BR_TEST_CLIENT\n"
        "  keys:\n"
        "    - id: a\n"
        "      key: env:BR_TEST_CLIENT\n"
        "    - id: b\n"
        "      sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\n"
        "log: {path: /var/log.db, queue: 10, batch: 5, flush: 20ms, on_full: drop}\n"
        "metrics: {require_key: true}\n"
        "upstream: {client: curl}\n"
        "models:\n"
        "  - name: gpt\n"
        "    provider: openai\n"
        "    model: gpt-4o\n"
        "    base_url: http://127.0.0.1:1234/v1/\n"
        "    api_key: env:BR_TEST_KEY\n"
        "    price: {input: 2.5, output: 10, cached_input: 1.25}\n"
        "    context_window: 128000\n"
        "    max_tokens: 1000\n"
        "    capabilities: [tools, json_mode, vision]\n"
        "    timeouts: {connect: 1s, first_byte: 2s, idle: 3s}\n"
        "    headers: {OpenAI-Organization: org-1}\n"
        "  - name: rec\n"
        "    provider: replay\n"
        "    replay: {file: data/r.csv, prompt: q, response: a}\n"
        "    price: {input: 0, output: 0}\n");
    assert_string_equal(c->listen_host, "::1");
    assert_int_equal(c->listen_port, 9090);
    assert_int_equal(c->workers, 3);
    assert_string_equal(c->log_level, "debug");
    assert_int_equal(c->request_line_bytes, 4096);
    assert_int_equal(c->header_bytes, 16384);
    assert_int_equal(c->header_fields, 50);
    assert_int_equal(c->body_bytes, 1 << 20);
    assert_int_equal(c->header_timeout_ms, 2000);
    assert_int_equal(c->body_idle_timeout_ms, 500);
    assert_int_equal(c->keepalive_timeout_ms, 60000);
    assert_int_equal(c->drain_timeout_ms, 0);
    assert_true(c->has_master_key);
    assert_int_equal(c->n_keys, 2);
    unsigned char h[BR_CONFIG_KEY_HASH_LEN];
    br_config_hash_key("client-key-1", 12, h);
    assert_memory_equal(c->keys[0].sha256, h, sizeof(h));
    assert_memory_equal(c->master_key_sha256, h, sizeof(h));
    br_config_hash_key("test", 4, h); /* sha256("test") = 9f86d0... */
    assert_memory_equal(c->keys[1].sha256, h, sizeof(h));
    assert_string_equal(c->keys[1].id, "b");
    assert_string_equal(c->log_path, "/var/log.db");
    assert_int_equal(c->log_queue, 10);
    assert_int_equal(c->log_batch, 5);
    assert_int_equal(c->log_flush_ms, 20);
    assert_int_equal(c->log_on_full, BR_LOG_FULL_DROP);
    assert_true(c->metrics_require_key);
    assert_true(c->upstream_force_curl);
    const struct br_model_cfg *m = &c->models[0];
    assert_string_equal(m->upstream_model, "gpt-4o");
    assert_string_equal(m->base_url, "http://127.0.0.1:1234/v1");
    assert_string_equal(m->api_key, "sk-provider-secret");
    assert_string_equal(m->api_key_ref, "env:BR_TEST_KEY");
    assert_int_equal(m->price.input_nano_usd_per_mtok, 2500000000);
    assert_int_equal(m->price.cached_input_nano_usd_per_mtok, 1250000000);
    assert_int_equal(m->context_window, 128000);
    assert_int_equal(m->default_max_tokens, 1000);
    assert_int_equal(m->capabilities,
                     BR_MODEL_CAP_TOOLS | BR_MODEL_CAP_JSON_MODE | BR_MODEL_CAP_VISION);
    assert_int_equal(m->connect_timeout_ms, 1000);
    assert_int_equal(m->first_byte_timeout_ms, 2000);
    assert_int_equal(m->idle_timeout_ms, 3000);
    assert_int_equal(m->n_extra_headers, 1);
    assert_string_equal(m->extra_headers[0], "OpenAI-Organization: org-1");
    const struct br_model_cfg *r = br_config_model_find(c, "rec", 3);
    assert_string_equal(r->replay_file, "/base/data/r.csv");
    assert_string_equal(r->replay_prompt_field, "q");
    assert_string_equal(r->replay_response_field, "a");
    assert_null(r->base_url);
    br_config_unref(c);
}

static void test_refcount(void **state)
{
    (void)state;
    struct br_config *c = load_ok(MODEL);
    br_config_ref(c);
    br_config_unref(c);
    assert_int_equal(c->n_models, 1); /* still alive */
    br_config_unref(c);
    br_config_unref(NULL);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *needle;
    } cases[] = {
        {"", "empty configuration"},
        {"models: []\n", "at least one model"},
        {"server: {}\n", "at least one model"},
        {"[1, 2]\n", "expected a mapping"},
        {MODEL "bogus: 1\n", "unknown key 'bogus'"},
        {MODEL "server: {listen: nope}\n", "HOST:PORT"},
        {MODEL "server: {listen: 'example.com:80'}\n", "numeric"},
        {MODEL "server: {listen: '127.0.0.1:70000'}\n", "bad port"},
        {MODEL "server: {workers: -1}\n", "integer"},
        {MODEL "server: {limits: {body: 12 parsecs}}\n", "size"},
        {MODEL "server: {timeouts: {header: soon}}\n", "duration"},
        {MODEL "server: {log_level: loud}\n", "log_level"},
        {MODEL "auth: {keys: [{id: a}]}\n", "needs an id and a key"},
        {MODEL "auth: {keys: [{id: a, sha256: abc}]}\n", "64 hex"},
        {MODEL "auth: {keys: [{id: a, key: env:BR_DEFINITELY_UNSET_VAR}]}\n", "is not set"},
        {MODEL "auth: {master_key: file:/nonexistent/brigade-key}\n",
         "cannot read /nonexistent/brigade-key: No such file or directory"},
        {MODEL "log: {on_full: maybe}\n", "reject or drop"},
        {MODEL "upstream: {client: wget}\n", "auto or curl"},
        {"models:\n  - name: m\n    provider: openai\n", "needs price"},
        {"models:\n  - name: m\n    provider: openai\n    price: {input: 1}\n",
         "both input and output"},
        {"models:\n  - name: m\n    provider: openai\n    price: {input: -1, output: 1}\n",
         "USD amount"},
        {"models:\n  - name: m\n    provider: openai\n    price: {input: 1e3, output: 1}\n",
         "USD amount"},
        {"models:\n  - provider: openai\n    price: {input: 1, output: 1}\n",
         "needs name and provider"},
        {"models:\n  - name: m\n    provider: replay\n    price: {input: 1, output: 1}\n",
         "replay needs"},
        {"models:\n  - name: m\n    provider: openai\n    base_url: ftp://x\n    price: {input: 1, "
         "output: 1}\n",
         "http://"},
        {"models:\n  - name: m\n    provider: openai\n    capabilities: [telepathy]\n    price: "
         "{input: 1, output: 1}\n",
         "unknown capability"},
        {"models:\n  - name: m\n    provider: openai\n    headers: {'Bad Name': x}\n    price: "
         "{input: 1, output: 1}\n",
         "bad header name"},
        {MODEL "  - name: m\n    provider: openai\n    price: {input: 1, output: 2}\n",
         "duplicate model name"},
        {MODEL "models: []\n", "duplicate key"},
        {"a: &x 1\nb: *x\n", "anchors"},
        {"models: {\n", "YAML syntax error"},
        {MODEL "---\n" MODEL, "more than one document"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *err = load_err(cases[i].text);
        if (!strstr(err, cases[i].needle)) {
            fail_msg("case %zu: expected '%s' in: %s", i, cases[i].needle, err);
        }
    }
}

static void test_error_names_line(void **state)
{
    (void)state;
    const char *err = load_err(MODEL "server:\n  listen: 127.0.0.1:8080\n  workers: lots\n");
    assert_non_null(strstr(err, "<string>:7:"));
}

static void test_deep_nesting(void **state)
{
    (void)state;
    char text[512];
    size_t n = 0;
    for (int i = 0; i < 60; i++) {
        text[n++] = '[';
    }
    text[n] = '\0';
    const char *err = load_err(text);
    assert_true(strstr(err, "too deep") || strstr(err, "syntax"));
}

static void test_file_secret_and_path(void **state)
{
    (void)state;
    char dir[] = "/tmp/brigade-cfg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char keyfile[256];
    char cfgfile[256];
    snprintf(keyfile, sizeof(keyfile), "%s/key", dir);
    snprintf(cfgfile, sizeof(cfgfile), "%s/brigade.yaml", dir);
    FILE *f = fopen(keyfile, "w");
    fputs("sk-from-file\n", f);
    fclose(f);
    f = fopen(cfgfile, "w");
    fprintf(f,
            "models:\n  - name: m\n    provider: openai\n    api_key: file:%s\n"
            "    price: {input: 1, output: 2}\nlog: {path: logs.db}\n",
            keyfile);
    fclose(f);
    struct br_config *c = NULL;
    char err[512];
    assert_int_equal(br_config_load_file(cfgfile, &c, err, sizeof(err)), BR_OK);
    assert_string_equal(c->models[0].api_key, "sk-from-file");
    char want[300];
    snprintf(want, sizeof(want), "%s/logs.db", dir);
    assert_string_equal(c->log_path, want);
    assert_string_equal(c->path, cfgfile);
    br_config_unref(c);

    f = fopen(cfgfile, "w");
    fputs("models:\n  - name: m\n    provider: openai\n    price: {input: x, output: 2}\n", f);
    fclose(f);
    assert_int_not_equal(br_config_load_file(cfgfile, &c, err, sizeof(err)), BR_OK);
    assert_non_null(strstr(err, cfgfile));
    assert_non_null(strstr(err, ":4:"));
    /* The errno text comes from strerror_r (reloads run on worker threads), and the code from
     * the same saved errno. */
    assert_int_equal(br_config_load_file("/nonexistent/x.yaml", &c, err, sizeof(err)),
                     BR_ERR_NOTFOUND);
    assert_non_null(strstr(err, "/nonexistent/x.yaml: cannot open: No such file or directory"));
    unlink(keyfile);
    unlink(cfgfile);
    rmdir(dir);
}

static void test_durations_sizes(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(br_config_parse_duration_ms("250", &v), BR_OK);
    assert_int_equal(v, 250);
    assert_int_equal(br_config_parse_duration_ms("3s", &v), BR_OK);
    assert_int_equal(v, 3000);
    assert_int_equal(br_config_parse_duration_ms("2m", &v), BR_OK);
    assert_int_equal(v, 120000);
    assert_int_equal(br_config_parse_duration_ms("1h", &v), BR_OK);
    assert_int_equal(v, 3600000);
    assert_int_not_equal(br_config_parse_duration_ms("-1s", &v), BR_OK);
    assert_int_not_equal(br_config_parse_duration_ms("1 s", &v), BR_OK);
    assert_int_not_equal(br_config_parse_duration_ms("", &v), BR_OK);
    assert_int_equal(br_config_parse_size("8KiB", &v), BR_OK);
    assert_int_equal(v, 8192);
    assert_int_equal(br_config_parse_size("16MiB", &v), BR_OK);
    assert_int_equal(v, 16u << 20);
    assert_int_equal(br_config_parse_size("100", &v), BR_OK);
    assert_int_equal(v, 100);
    assert_int_not_equal(br_config_parse_size("1.5MiB", &v), BR_OK);
    assert_int_not_equal(br_config_parse_size("99999999999999999999", &v), BR_OK);
}

static void test_shipped_default_config(void **state)
{
    (void)state;
    struct br_config *c = NULL;
    char err[512];
    assert_int_equal(
        br_config_load_file(BR_SOURCE_DIR "/config/brigade.yaml", &c, err, sizeof(err)), BR_OK);
    assert_true(c->n_models >= 2);
    const struct br_model_cfg *m = br_config_model_find(c, "gpt-4-1106-preview", 18);
    assert_non_null(m);
    assert_string_equal(m->provider, "replay");
    assert_non_null(strstr(m->replay_file, "gsm8k_responses.csv"));
    assert_int_equal(access(m->replay_file, R_OK), 0);
    br_config_unref(c);
}

static void test_file_set_keeps_the_rest(void **state)
{
    (void)state;
    char dir[] = "/tmp/brigade-cfg-edit-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/brigade.yaml", dir);
    static const char before[] =
        "# caf\xc3\xa9 \xe2\x80\x94 a comment with UTF-8 before the value\n"
        "server:\n"
        "  listen: 127.0.0.1:8080   # keep me\n"
        "routes:\n"
        "  - name: other\n"
        "    threshold: 0.9\n"
        "  - name: auto\n"
        "    classifier: {model: a.brr, threshold: 0.5}  # inline\n"
        "    limit: '7'\n";
    FILE *f = fopen(path, "w");
    fputs(before, f);
    fclose(f);
    char err[256];
    assert_int_equal(
        br_config_file_set(path, "routes[auto].classifier.threshold", "0.4375", err, sizeof(err)),
        BR_OK);
    assert_int_equal(br_config_file_set(path, "routes[auto].limit", "8", err, sizeof(err)), BR_OK);
    f = fopen(path, "r");
    char after[1024];
    size_t n = fread(after, 1, sizeof(after) - 1, f);
    fclose(f);
    after[n] = '\0';
    static const char want[] = "# caf\xc3\xa9 \xe2\x80\x94 a comment with UTF-8 before the value\n"
                               "server:\n"
                               "  listen: 127.0.0.1:8080   # keep me\n"
                               "routes:\n"
                               "  - name: other\n"
                               "    threshold: 0.9\n"
                               "  - name: auto\n"
                               "    classifier: {model: a.brr, threshold: 0.4375}  # inline\n"
                               "    limit: 8\n";
    assert_string_equal(after, want);
    assert_int_equal(br_config_file_set(path, "routes[missing].threshold", "1", err, sizeof(err)),
                     BR_ERR_NOTFOUND);
    assert_non_null(strstr(err, "routes[missing].threshold"));
    assert_int_equal(br_config_file_set(path, "routes[auto].classifier", "1", err, sizeof(err)),
                     BR_ERR_NOTFOUND);
    unlink(path);
    rmdir(dir);
}

/* auth.key_store: default with a master key, relative to the config folder, off. */
/* Overload protection: connection limit, stream buffer, per-model in-flight limit and queue. */
static void test_overload_limits(void **state)
{
    (void)state;
    struct br_config *c = load_ok(MODEL);
    assert_int_equal(c->stream_buffer_bytes, 256u << 10);
    assert_int_equal(c->max_connections, 0);
    assert_int_equal(c->models[0].max_in_flight, 0);
    assert_int_equal(c->models[0].queue, 0);
    br_config_unref(c);
    c = load_ok("server: {limits: {stream_buffer: 64KiB, connections: 1000}}\n" MODEL
                "    max_in_flight: 8\n    queue: 32\n");
    assert_int_equal(c->stream_buffer_bytes, 64u << 10);
    assert_int_equal(c->max_connections, 1000);
    assert_int_equal(c->models[0].max_in_flight, 8);
    assert_int_equal(c->models[0].queue, 32);
    br_config_unref(c);
    assert_non_null(strstr(load_err(MODEL "    max_in_flight: -1\n"), "max_in_flight"));
    assert_non_null(strstr(load_err(MODEL "    queue: lots\n"), "queue"));
    assert_non_null(strstr(load_err("server: {limits: {connections: -5}}\n" MODEL), "connections"));
    assert_non_null(
        strstr(load_err("server: {limits: {stream_buffer: 0}}\n" MODEL), "stream_buffer"));
}

static void test_key_store(void **state)
{
    (void)state;
    struct br_config *c = load_ok(MODEL);
    assert_null(c->key_store_path); /* no master key: no virtual keys */
    br_config_unref(c);
    c = load_ok(MODEL "auth: {master_key: mk}\n");
    assert_string_equal(c->key_store_path, "/base/brigade-keys.db");
    br_config_unref(c);
    c = load_ok(MODEL "auth: {master_key: mk, key_store: data/keys.db}\n");
    assert_string_equal(c->key_store_path, "/base/data/keys.db");
    br_config_unref(c);
    c = load_ok(MODEL "auth: {master_key: mk, key_store: /var/k.db}\n");
    assert_string_equal(c->key_store_path, "/var/k.db");
    br_config_unref(c);
    c = load_ok(MODEL "auth: {master_key: mk, key_store: off}\n");
    assert_null(c->key_store_path);
    br_config_unref(c);
    c = load_ok(MODEL "auth: {key_store: k.db}\n");
    assert_string_equal(c->key_store_path, "/base/k.db");
    br_config_unref(c);
    const char *err = load_err(MODEL "auth: {key_stor: k.db}\n");
    assert_non_null(strstr(err, "key_store"));
    err = load_err(MODEL "auth: {key_store: \"\"}\n");
    assert_non_null(strstr(err, "auth.key_store"));
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_error_names_line),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_file_secret_and_path),
        cmocka_unit_test(test_durations_sizes),
        cmocka_unit_test(test_shipped_default_config),
        cmocka_unit_test(test_file_set_keeps_the_rest),
        cmocka_unit_test(test_key_store),
        cmocka_unit_test(test_overload_limits),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
