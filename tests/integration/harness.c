/* SPDX-License-Identifier: MIT */
/* Integration harness: child processes, HTTP client (libcurl), raw sockets, SQLite reads. */
#define _DEFAULT_SOURCE /* mkdtemp, usleep */
#include "harness.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "br_test.h"

static void die(const char *fmt, ...)
{
    va_list ap;
    char msg[1024];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fail_msg("%s", msg);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return strdup("");
    }
    size_t cap = 4096;
    size_t n = 0;
    char *buf = malloc(cap);
    size_t k;
    while ((k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void spawn(struct proc *p, const char *log_path, char *const argv[])
{
    snprintf(p->log_path, sizeof(p->log_path), "%s", log_path);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        die("fork: %s", strerror(errno));
    }
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    p->pid = pid;
}

static void stop(struct proc *p)
{
    if (p->pid <= 0) {
        return;
    }
    kill(p->pid, SIGTERM);
    for (int i = 0; i < 1000; i++) {
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            return;
        }
        usleep(10000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
}

void env_start_mock(struct env *e, const char *const *extra_args)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/brigade-it-XXXXXX");
    if (!mkdtemp(e->dir)) {
        die("mkdtemp: %s", strerror(errno));
    }
    char port_file[200];
    char log[200];
    snprintf(port_file, sizeof(port_file), "%s/mock.port", e->dir);
    snprintf(log, sizeof(log), "%s/mock.log", e->dir);
    char *argv[32];
    int n = 0;
    argv[n++] = BR_BINARY_DIR "/tests/mock_upstream/mock_upstream";
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = port_file;
    for (int i = 0; extra_args && extra_args[i] && n < 30; i++) {
        argv[n++] = (char *)extra_args[i];
    }
    argv[n] = NULL;
    spawn(&e->mock, log, argv);
    long long deadline = now_ms() + 10000;
    while (now_ms() < deadline) {
        char *s = read_file(port_file);
        int port = atoi(s);
        free(s);
        if (port > 0) {
            e->mock_port = (uint16_t)port;
            return;
        }
        usleep(10000);
    }
    char *l = read_file(log);
    die("mock upstream did not start: %s", l);
}

static char *expand(struct env *e, const char *tmpl)
{
    size_t cap = strlen(tmpl) * 2 + 1024;
    char *out = malloc(cap);
    size_t n = 0;
    for (const char *p = tmpl; *p;) {
        char rep[256] = "";
        if (strncmp(p, "{MOCK}", 6) == 0) {
            snprintf(rep, sizeof(rep), "%u", e->mock_port);
            p += 6;
        } else if (strncmp(p, "{DIR}", 5) == 0) {
            snprintf(rep, sizeof(rep), "%s", e->dir);
            p += 5;
        } else if (strncmp(p, "{SRC}", 5) == 0) {
            snprintf(rep, sizeof(rep), "%s", BR_SOURCE_DIR);
            p += 5;
        } else {
            rep[0] = *p++;
            rep[1] = '\0';
        }
        size_t k = strlen(rep);
        if (n + k + 1 > cap) {
            cap = (n + k + 1) * 2;
            out = realloc(out, cap);
        }
        memcpy(out + n, rep, k);
        n += k;
    }
    out[n] = '\0';
    return out;
}

void env_write_config(struct env *e, const char *tmpl)
{
    char *text = expand(e, tmpl);
    snprintf(e->config_path, sizeof(e->config_path), "%s/brigade.yaml", e->dir);
    snprintf(e->db_path, sizeof(e->db_path), "%s/requests.db", e->dir);
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", e->config_path);
    FILE *f = fopen(tmp, "w");
    fputs(text, f);
    if (!strstr(text, "\nlog:") && strncmp(text, "log:", 4) != 0) {
        fprintf(f, "\nlog:\n  path: %s\n  flush: 5ms\n", e->db_path);
    }
    fclose(f);
    rename(tmp, e->config_path);
    free(text);
}

void env_start_gateway(struct env *e, const char *tmpl)
{
    if (!e->dir[0]) {
        env_start_mock(e, NULL);
    }
    env_write_config(e, tmpl);
    char log[200];
    snprintf(log, sizeof(log), "%s/gateway.log", e->dir);
    char *argv[] = {BR_BINARY_DIR "/src/brigade",
                    "serve",
                    "-c",
                    e->config_path,
                    "--listen",
                    "127.0.0.1:0",
                    NULL};
    spawn(&e->gw, log, argv);
    long long deadline = now_ms() + 15000;
    while (now_ms() < deadline) {
        char *s = read_file(log);
        char *p = strstr(s, "event=listening addr=127.0.0.1:");
        if (p) {
            e->gw_port = (uint16_t)atoi(p + strlen("event=listening addr=127.0.0.1:"));
            free(s);
            return;
        }
        int st;
        if (waitpid(e->gw.pid, &st, WNOHANG) == e->gw.pid) {
            e->gw.pid = 0;
            die("gateway exited at start:\n%s", s);
        }
        free(s);
        usleep(10000);
    }
    char *l = read_file(log);
    die("gateway did not start:\n%s", l);
}

void env_stop(struct env *e)
{
    stop(&e->gw);
    stop(&e->mock);
    if (e->dir[0] && !getenv("BR_KEEP_TMP")) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "could not remove %s\n", e->dir);
        }
    }
}

void env_signal_gateway(struct env *e, int sig)
{
    kill(e->gw.pid, sig);
}

int env_wait_gateway(struct env *e, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline) {
        int st;
        if (waitpid(e->gw.pid, &st, WNOHANG) == e->gw.pid) {
            e->gw.pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(5000);
    }
    return -1;
}

char *env_gateway_log(struct env *e)
{
    return read_file(e->gw.log_path);
}

bool env_wait_log(struct env *e, const char *needle, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    do {
        char *s = env_gateway_log(e);
        bool found = strstr(s, needle) != NULL;
        free(s);
        if (found) {
            return true;
        }
        usleep(10000);
    } while (now_ms() < deadline);
    return false;
}

/* ------------------------------------------------------------------ HTTP */

struct sink {
    char *p;
    size_t n;
};

static size_t on_bytes(char *data, size_t size, size_t nmemb, void *user)
{
    struct sink *s = user;
    size_t k = size * nmemb;
    s->p = realloc(s->p, s->n + k + 1);
    memcpy(s->p + s->n, data, k);
    s->n += k;
    s->p[s->n] = '\0';
    return k;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *user)
{
    size_t k = size * nmemb;
    char *line = malloc(k + 1);
    memcpy(line, data, k);
    line[k] = '\0';
    /* Lower-case the name so lookups are simple. */
    for (char *c = line; *c && *c != ':'; c++) {
        if (*c >= 'A' && *c <= 'Z') {
            *c = (char)(*c + 32);
        }
    }
    on_bytes(line, 1, k, user);
    free(line);
    return k;
}

static void do_request(uint16_t port, const char *method, const char *path,
                       const char *const *headers, const char *body, struct http_resp *out)
{
    memset(out, 0, sizeof(*out));
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", port, path);
    struct curl_slist *hl = NULL;
    for (size_t i = 0; headers && headers[i]; i++) {
        hl = curl_slist_append(hl, headers[i]);
    }
    if (body) {
        hl = curl_slist_append(hl, "Content-Type: application/json");
        hl = curl_slist_append(hl, "Expect:");
    }
    struct sink b = {0};
    struct sink h = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_bytes);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK && rc != CURLE_PARTIAL_FILE && rc != CURLE_RECV_ERROR) {
        die("%s %s: curl error %s", method, path, curl_easy_strerror(rc));
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    out->headers = h.p ? h.p : strdup("");
    out->body = b.p ? b.p : strdup("");
    out->body_len = b.n;
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
}

void http_request(struct env *e, const char *method, const char *path, const char *const *headers,
                  const char *body, struct http_resp *out)
{
    do_request(e->gw_port, method, path, headers, body, out);
}

void http_resp_free(struct http_resp *r)
{
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

char *http_header(const struct http_resp *r, const char *name)
{
    char *found = NULL;
    size_t n = strlen(name);
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > n && strncmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ') {
                v++;
            }
            free(found);
            found = strndup(v, (size_t)(p + len - v));
        }
        p += len + (eol ? 2 : 0);
    }
    return found;
}

char *raw_exchange(uint16_t port, const char *data, size_t len, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        die("connect: %s", strerror(errno));
    }
    size_t off = 0;
    while (off < len) {
        ssize_t k = send(fd, data + off, len - off, MSG_NOSIGNAL);
        if (k <= 0) {
            break;
        }
        off += (size_t)k;
    }
    struct sink s = {0};
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) <= 0) {
            break;
        }
        char buf[4096];
        ssize_t k = recv(fd, buf, sizeof(buf), 0);
        if (k <= 0) {
            break;
        }
        on_bytes(buf, 1, (size_t)k, &s);
    }
    close(fd);
    return s.p ? s.p : strdup("");
}

char *mock_get(struct env *e, const char *path)
{
    struct http_resp r;
    do_request(e->mock_port, "GET", path, NULL, NULL, &r);
    free(r.headers);
    return r.body;
}

void mock_reset(struct env *e)
{
    struct http_resp r;
    do_request(e->mock_port, "POST", "/_mock/reset", NULL, "{}", &r);
    http_resp_free(&r);
}

/* ------------------------------------------------------------------ SQLite */

static sqlite3 *db_open(struct env *e)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(e->db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 2000);
    return db;
}

long long db_int(struct env *e, const char *sql)
{
    sqlite3 *db = db_open(e);
    if (!db) {
        die("cannot open %s", e->db_path);
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        die("sql %s: %s", sql, sqlite3_errmsg(db));
    }
    long long v = -1;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

char *db_text(struct env *e, const char *sql)
{
    sqlite3 *db = db_open(e);
    if (!db) {
        die("cannot open %s", e->db_path);
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        die("sql %s: %s", sql, sqlite3_errmsg(db));
    }
    char *v = NULL;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        v = strdup((const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

bool db_wait_rows(struct env *e, long long n)
{
    long long deadline = now_ms() + 5000;
    while (now_ms() < deadline) {
        if (access(e->db_path, R_OK) == 0 && db_int(e, "SELECT count(*) FROM requests") >= n) {
            return true;
        }
        usleep(10000);
    }
    return false;
}

char *chat_body(const char *model, const char *user_text, bool stream, const char *extra)
{
    size_t cap = strlen(model) + strlen(user_text) + (extra ? strlen(extra) : 0) + 256;
    char *b = malloc(cap);
    snprintf(
        b, cap, "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]%s%s%s}",
        model, user_text, stream ? ",\"stream\":true" : "", extra ? "," : "", extra ? extra : "");
    return b;
}

size_t count_substr(const char *hay, const char *needle)
{
    size_t n = 0;
    size_t k = strlen(needle);
    for (const char *p = strstr(hay, needle); p; p = strstr(p + k, needle)) {
        n++;
    }
    return n;
}
