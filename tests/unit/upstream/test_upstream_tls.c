/* SPDX-License-Identifier: MIT */
/*
 * The upstream client over TLS against a real nginx (HTTP/2 over TLS, self-signed
 * certificate made with the openssl CLI at set-up): peers are verified by default, a CA file
 * makes them trusted, HTTP/2 is negotiated, and calls share the connection. Skipped when
 * nginx or openssl is not installed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "br_test.h"
#include "core/err.h"
#include "upstream/upstream.h"

struct tls_env {
    char dir[256];
    char cert[300];
    unsigned short port;
    pid_t nginx;
};

static struct tls_env env;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static unsigned short free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    return ntohs(sa.sin_port);
}

static bool port_open(unsigned short port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static bool have(const char *path)
{
    return access(path, X_OK) == 0;
}

static int setup(void **state)
{
    (void)state;
    if (br_upstream_global_init() != BR_OK) {
        return -1;
    }
    memset(&env, 0, sizeof(env));
    if (!have("/usr/sbin/nginx") || !have("/usr/bin/openssl")) {
        return 0; /* tests skip */
    }
    snprintf(env.dir, sizeof(env.dir), "%s/upstream-tls-XXXXXX", BR_BINARY_DIR);
    if (!mkdtemp(env.dir)) {
        return -1;
    }
    snprintf(env.cert, sizeof(env.cert), "%s/cert.pem", env.dir);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s -days 2 "
             "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 "
             ">/dev/null 2>&1",
             env.dir, env.cert);
    if (system(cmd) != 0) {
        return -1;
    }
    env.port = free_port();
    char conf[300];
    snprintf(conf, sizeof(conf), "%s/nginx.conf", env.dir);
    FILE *f = fopen(conf, "w");
    if (!f) {
        return -1;
    }
    fprintf(f,
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid %s/nginx.pid;\n"
            "error_log %s/error.log;\nevents { worker_connections 64; }\n"
            "http {\n access_log off;\n client_body_temp_path %s;\n proxy_temp_path %s;\n"
            " fastcgi_temp_path %s;\n uwsgi_temp_path %s;\n scgi_temp_path %s;\n"
            " server {\n  listen 127.0.0.1:%u ssl http2;\n  ssl_certificate %s;\n"
            "  ssl_certificate_key %s/key.pem;\n"
            "  location / { default_type text/plain; return 200 \"hello over h2\"; }\n }\n}\n",
            env.dir, env.dir, env.dir, env.dir, env.dir, env.dir, env.dir, env.port, env.cert,
            env.dir);
    fclose(f);
    env.nginx = fork();
    if (env.nginx == 0) {
        execl("/usr/sbin/nginx", "nginx", "-p", env.dir, "-c", conf, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && !port_open(env.port); i++) {
        sleep_ms(10);
    }
    return port_open(env.port) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (env.nginx > 0) {
        kill(env.nginx, SIGTERM);
        waitpid(env.nginx, NULL, 0);
    }
    if (env.dir[0]) {
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", env.dir);
        if (system(cmd) != 0) {
            return -1;
        }
    }
    br_upstream_global_cleanup();
    return 0;
}

struct rec {
    int status;
    char body[256];
    size_t body_len;
    struct br_upstream_stats stats;
    int n_done;
    int *pending;
    uv_loop_t *loop;
};

static void on_head(void *user, const struct br_upstream_head *head)
{
    ((struct rec *)user)->status = head->status;
}

static void on_data(void *user, const char *data, size_t n)
{
    struct rec *r = user;
    if (r->body_len + n < sizeof(r->body)) {
        memcpy(r->body + r->body_len, data, n);
        r->body_len += n;
    }
}

static void on_done(void *user, const struct br_upstream_stats *stats)
{
    struct rec *r = user;
    r->stats = *stats;
    r->stats.error_text = NULL;
    r->n_done++;
    if (--*r->pending == 0) {
        uv_stop(r->loop);
    }
}

static const struct br_upstream_callbacks cbs = {on_head, on_data, on_done};

/* Runs n calls to https://<host>:port/ concurrently on a fresh client. */
static void run_calls(const struct br_upstream_opts *opts, const char *host, struct rec *r, int n)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    br_upstream *u;
    assert_int_equal(br_upstream_create(&loop, opts, &u), BR_OK);
    char url[128];
    snprintf(url, sizeof(url), "https://%s:%u/", host, env.port);
    struct br_upstream_request req = {.method = "GET", .url = url, .connect_timeout_ms = 3000};
    int pending = n;
    for (int i = 0; i < n; i++) {
        r[i].pending = &pending;
        r[i].loop = &loop;
        assert_int_equal(br_upstream_call_start(u, &req, &cbs, &r[i], NULL), BR_OK);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(pending, 0);
    br_upstream_destroy(u);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_tls_untrusted_peer_is_rejected(void **state)
{
    (void)state;
    if (!env.nginx) {
        skip();
    }
    struct rec r = {0};
    run_calls(NULL, "127.0.0.1", &r, 1);
    assert_int_equal(r.n_done, 1);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_TLS);
}

static void test_tls_trusted_ca_and_http2(void **state)
{
    (void)state;
    if (!env.nginx) {
        skip();
    }
    struct br_upstream_opts opts = {.ca_file = env.cert};
    struct rec r[4];
    memset(r, 0, sizeof(r));
    run_calls(&opts, "localhost", r, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].stats.error, BR_UPSTREAM_ERROR_NONE);
        assert_int_equal(r[i].status, 200);
        assert_int_equal(r[i].stats.http_version, 20);
        assert_int_equal(r[i].body_len, strlen("hello over h2"));
        assert_memory_equal(r[i].body, "hello over h2", r[i].body_len);
    }
    /* Multiplexed: one transfer opened the connection, the others rode along. */
    int fresh = 0;
    for (int i = 0; i < 4; i++) {
        fresh += !r[i].stats.reused_connection;
    }
    assert_int_equal(fresh, 1);
}

static void test_tls_skip_verify(void **state)
{
    (void)state;
    if (!env.nginx) {
        skip();
    }
    struct br_upstream_opts opts = {.insecure_skip_verify = true};
    struct rec r = {0};
    run_calls(&opts, "127.0.0.1", &r, 1);
    assert_int_equal(r.stats.error, BR_UPSTREAM_ERROR_NONE);
    assert_int_equal(r.status, 200);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_untrusted_peer_is_rejected),
        cmocka_unit_test(test_tls_trusted_ca_and_http2),
        cmocka_unit_test(test_tls_skip_verify),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("upstream_tls", tests, setup, teardown);
}
