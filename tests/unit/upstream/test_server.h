/* SPDX-License-Identifier: MIT */
/*
 * A tiny scripted HTTP/1.1 server for the upstream tests: a listening socket on 127.0.0.1, an
 * accept thread, and one thread per connection with blocking sockets. Each request (head plus
 * Content-Length body) goes to the test's handler, which writes whatever bytes it wants with
 * ts_send (whole responses, pieces with pauses, broken responses) and may close the
 * connection. Counters let tests check keep-alive (accepted connections) and cancellation (the
 * peer closed). Header-only: static functions, included by the test files that use it.
 */
#ifndef BR_TEST_SERVER_H
#define BR_TEST_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TS_MAX_CONNS 512
#define TS_MAX_HEAD  16384

struct ts_request {
    char method[16];
    char path[512];
    char head[TS_MAX_HEAD]; /* request line and headers, NUL-terminated */
    char *body;             /* NUL-terminated, malloc'd by the server */
    size_t body_len;
    int index_on_conn; /* 0 for the first request of a connection */
};

struct test_server;

struct ts_conn {
    int fd;
    struct test_server *srv;
    bool close_after; /* handler: close the connection after this request */
};

typedef void (*ts_handler)(struct ts_conn *c, const struct ts_request *req, void *user);

struct test_server {
    int fd;
    unsigned short port;
    pthread_t accept_thread;
    ts_handler handler;
    void *user;
    atomic_int stop;
    atomic_int n_accepted;
    atomic_int n_requests;
    atomic_int n_peer_closed; /* times the server saw the client close (recv 0, send error in
                                 handlers that count it) */
    pthread_mutex_t mu;
    pthread_t threads[TS_MAX_CONNS];
    int fds[TS_MAX_CONNS];
    int n_threads;
    char last_head[TS_MAX_HEAD];
    char last_body[65536];
    size_t last_body_len;
};

static inline void ts_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline bool ts_send(struct ts_conn *c, const char *data, size_t n)
{
    while (n > 0) {
        ssize_t k = send(c->fd, data, n, MSG_NOSIGNAL);
        if (k <= 0) {
            if (k < 0 && errno == EINTR) {
                continue;
            }
            return false;
        }
        data += k;
        n -= (size_t)k;
    }
    return true;
}

static inline bool ts_send_str(struct ts_conn *c, const char *s)
{
    return ts_send(c, s, strlen(s));
}

/* Sends one HTTP/1.1 chunk. */
static inline bool ts_send_chunk(struct ts_conn *c, const char *data, size_t n)
{
    char head[32];
    snprintf(head, sizeof(head), "%zx\r\n", n);
    return ts_send_str(c, head) && ts_send(c, data, n) && ts_send_str(c, "\r\n");
}

/*
 * Waits until the client closes the connection (returns true) or max_ms pass (false), without
 * reading request bytes that may follow (they are discarded).
 */
static inline bool ts_wait_peer_close(struct ts_conn *c, int max_ms)
{
    int waited = 0;
    while (waited < max_ms && !atomic_load(&c->srv->stop)) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, 10);
        if (r > 0) {
            char buf[4096];
            ssize_t k = recv(c->fd, buf, sizeof(buf), 0);
            if (k <= 0) {
                atomic_fetch_add(&c->srv->n_peer_closed, 1);
                return true;
            }
        }
        waited += 10;
    }
    return false;
}

static inline size_t ts_find_head_end(const char *buf, size_t n)
{
    for (size_t i = 3; i < n; i++) {
        if (buf[i - 3] == '\r' && buf[i - 2] == '\n' && buf[i - 1] == '\r' && buf[i] == '\n') {
            return i + 1;
        }
    }
    return 0;
}

static inline size_t ts_content_length(const char *head)
{
    const char *p = head;
    while ((p = strchr(p, '\n')) != NULL) {
        p++;
        if (strncasecmp(p, "content-length:", 15) == 0) {
            return (size_t)strtoul(p + 15, NULL, 10);
        }
    }
    return 0;
}

struct ts_conn_arg {
    struct test_server *srv;
    int fd;
};

static void *ts_conn_main(void *arg)
{
    struct ts_conn_arg a = *(struct ts_conn_arg *)arg;
    free(arg);
    struct ts_conn c = {.fd = a.fd, .srv = a.srv};
    char *buf = malloc(TS_MAX_HEAD + 65536);
    size_t have = 0;
    int index = 0;
    while (buf && !atomic_load(&a.srv->stop)) {
        size_t head_len = ts_find_head_end(buf, have);
        if (head_len == 0) {
            if (have >= TS_MAX_HEAD) {
                break;
            }
            ssize_t k = recv(c.fd, buf + have, TS_MAX_HEAD - have, 0);
            if (k <= 0) {
                if (k == 0) {
                    atomic_fetch_add(&a.srv->n_peer_closed, 1);
                }
                break;
            }
            have += (size_t)k;
            continue;
        }
        struct ts_request *req = calloc(1, sizeof(*req));
        if (!req) {
            break;
        }
        memcpy(req->head, buf, head_len);
        req->head[head_len] = '\0';
        sscanf(req->head, "%15s %511s", req->method, req->path);
        req->body_len = ts_content_length(req->head);
        if (req->body_len > 65536) {
            free(req);
            break;
        }
        req->body = malloc(req->body_len + 1);
        size_t from_buf = have - head_len < req->body_len ? have - head_len : req->body_len;
        memcpy(req->body, buf + head_len, from_buf);
        size_t got = from_buf;
        while (got < req->body_len) {
            ssize_t k = recv(c.fd, req->body + got, req->body_len - got, 0);
            if (k <= 0) {
                break;
            }
            got += (size_t)k;
        }
        req->body[got] = '\0';
        size_t used = head_len + from_buf;
        memmove(buf, buf + used, have - used);
        have -= used;
        req->index_on_conn = index++;
        pthread_mutex_lock(&a.srv->mu);
        snprintf(a.srv->last_head, sizeof(a.srv->last_head), "%s", req->head);
        memcpy(a.srv->last_body, req->body, got < sizeof(a.srv->last_body) ? got : 0);
        a.srv->last_body_len = got;
        pthread_mutex_unlock(&a.srv->mu);
        atomic_fetch_add(&a.srv->n_requests, 1);
        c.close_after = false;
        a.srv->handler(&c, req, a.srv->user);
        free(req->body);
        free(req);
        if (c.close_after) {
            break;
        }
    }
    free(buf);
    shutdown(c.fd, SHUT_RDWR);
    return NULL;
}

static void *ts_accept_main(void *arg)
{
    struct test_server *srv = arg;
    while (!atomic_load(&srv->stop)) {
        struct pollfd p = {.fd = srv->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0) {
            continue;
        }
        int fd = accept(srv->fd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        atomic_fetch_add(&srv->n_accepted, 1);
        pthread_mutex_lock(&srv->mu);
        if (srv->n_threads == TS_MAX_CONNS) {
            pthread_mutex_unlock(&srv->mu);
            close(fd);
            continue;
        }
        struct ts_conn_arg *a = malloc(sizeof(*a));
        a->srv = srv;
        a->fd = fd;
        srv->fds[srv->n_threads] = fd;
        pthread_create(&srv->threads[srv->n_threads], NULL, ts_conn_main, a);
        srv->n_threads++;
        pthread_mutex_unlock(&srv->mu);
    }
    return NULL;
}

/* Starts a server on an ephemeral 127.0.0.1 port. */
static inline int ts_start(struct test_server *srv, ts_handler handler, void *user)
{
    memset(srv, 0, sizeof(*srv));
    srv->handler = handler;
    srv->user = user;
    pthread_mutex_init(&srv->mu, NULL);
    srv->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(srv->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(srv->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(srv->fd, 512) != 0) {
        return -1;
    }
    socklen_t len = sizeof(sa);
    getsockname(srv->fd, (struct sockaddr *)&sa, &len);
    srv->port = ntohs(sa.sin_port);
    return pthread_create(&srv->accept_thread, NULL, ts_accept_main, srv);
}

/* Stops accepting, unblocks and joins every connection thread. */
static inline void ts_stop(struct test_server *srv)
{
    atomic_store(&srv->stop, 1);
    pthread_join(srv->accept_thread, NULL);
    pthread_mutex_lock(&srv->mu);
    for (int i = 0; i < srv->n_threads; i++) {
        shutdown(srv->fds[i], SHUT_RDWR);
    }
    pthread_mutex_unlock(&srv->mu);
    for (int i = 0; i < srv->n_threads; i++) {
        pthread_join(srv->threads[i], NULL);
        close(srv->fds[i]);
    }
    close(srv->fd);
    pthread_mutex_destroy(&srv->mu);
}

/* "http://127.0.0.1:<port><path>" into buf. */
static inline const char *ts_url(const struct test_server *srv, const char *path, char *buf,
                                 size_t n)
{
    snprintf(buf, n, "http://127.0.0.1:%u%s", srv->port, path);
    return buf;
}

#endif
