/* SPDX-License-Identifier: MIT */
/*
 * Load client for bench/resil/run.sh: keeps `conns` keep-alive connections to one HTTP/1.1
 * server and sends the same POST on each, one request at a time per connection, for
 * `seconds`; records every request's own latency (write of the request to the last byte of the
 * response, CLOCK_MONOTONIC) and prints "RESIL key value" lines: request count, non-2xx count,
 * socket errors, p50/p90/p99/p99.9/max/mean in µs over the raw samples, the same p99 after
 * wrk's coordinated-omission correction (`co_p99`, see README.md), and how many answers carried
 * each `x-brigade-attempts` value.
 *
 * Why not wrk alone: wrk 4.1 "corrects" its latency histogram (stats_correct) by adding, for
 * every sample longer than twice the mean interval between requests, synthetic samples at
 * every interval below it. At one connection and ~3,000 requests/s one 200 ms retry backoff
 * becomes ~400 samples, enough to move the p99 by itself. Both figures are printed.
 *
 * Usage: resil_client HOST PORT PATH BODY_FILE CONNS SECONDS
 * Responses must carry Content-Length (brigade's and nginx's non-streamed answers do).
 * Test tool, not part of brigade: plain libc, no src/ rules apply.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS    256
#define RESP_MAX     (1 << 20)
#define MAX_ATTEMPTS 16

struct conn {
    int fd;
    size_t sent;    /* bytes of the request written */
    char *buf;      /* response bytes read */
    size_t len;     /* bytes in buf */
    uint64_t start; /* ns, when the request's first byte was written */
};

static struct sockaddr_in addr;
static char *req;
static size_t req_len;
static uint64_t *lat; /* ns per finished request */
static size_t n_lat, cap_lat;
static uint64_t non2xx, sockerr, attempts[MAX_ATTEMPTS + 1];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int conn_open(struct conn *c)
{
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) {
        return -1;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->sent = 0;
    c->len = 0;
    c->start = 0;
    return 0;
}

static void conn_reset(struct conn *c)
{
    sockerr++;
    if (c->fd >= 0) {
        close(c->fd);
    }
    while (conn_open(c) != 0) {
        sockerr++;
        usleep(1000);
    }
}

/* Header value of `name` in the head [h, h + n), or NULL. */
static const char *header(const char *h, size_t n, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *p = h, *end = h + n;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) {
            break;
        }
        if ((size_t)(eol - p) > nl + 1 && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && *v == ' ') {
                v++;
            }
            *vlen = (size_t)(eol - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* 1 when a whole response is in c->buf (then consumed and recorded), 0 when not yet, -1 bad. */
static int try_finish(struct conn *c)
{
    char *head_end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!head_end) {
        return c->len >= RESP_MAX ? -1 : 0;
    }
    size_t head = (size_t)(head_end - c->buf) + 4, vl = 0;
    const char *cl = header(c->buf, head, "content-length", &vl);
    if (!cl || c->len < 12) {
        return -1;
    }
    size_t body = strtoul(cl, NULL, 10);
    if (c->len < head + body) {
        return head + body > RESP_MAX ? -1 : 0;
    }
    uint64_t t = now_ns();
    int status = atoi(c->buf + 9);
    if (status < 200 || status > 299) {
        non2xx++;
    }
    const char *a = header(c->buf, head, "x-brigade-attempts", &vl);
    if (a) {
        long k = strtol(a, NULL, 10);
        attempts[k >= 0 && k < MAX_ATTEMPTS ? k : MAX_ATTEMPTS]++;
    }
    if (n_lat == cap_lat) {
        cap_lat = cap_lat ? cap_lat * 2 : 1 << 16;
        lat = realloc(lat, cap_lat * sizeof(*lat));
        if (!lat) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    lat[n_lat++] = t - c->start;
    const char *cn = header(c->buf, head, "connection", &vl);
    memmove(c->buf, c->buf + head + body, c->len - head - body);
    c->len -= head + body;
    c->sent = 0;
    c->start = 0;
    if (cn && vl >= 5 && strncasecmp(cn, "close", 5) == 0) {
        close(c->fd); /* the server's choice, not an error: reconnect */
        while (conn_open(c) != 0) {
            sockerr++;
            usleep(1000);
        }
    }
    return 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the sorted v[0..n). */
static uint64_t pct(const uint64_t *v, size_t n, double p)
{
    size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1) {
        k = 1;
    }
    return v[(k > n ? n : k) - 1];
}

/*
 * p99 after wrk's stats_correct: in µs buckets, every sample of n µs >= 2 x expected adds one
 * sample at n - expected, n - 2 x expected, ... while above expected.
 */
static double co_p99(const uint64_t *sorted_ns, size_t n, uint64_t expected_us)
{
    if (n == 0 || expected_us == 0) {
        return 0;
    }
    uint64_t max_us = sorted_ns[n - 1] / 1000;
    uint64_t *h = calloc(max_us + 1, sizeof(*h));
    uint64_t total = n;
    if (!h) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        h[sorted_ns[i] / 1000]++;
    }
    for (uint64_t v = expected_us * 2; v <= max_us; v++) {
        uint64_t cnt = h[v];
        int64_t m = (int64_t)v - (int64_t)expected_us;
        while (cnt && m > (int64_t)expected_us) {
            h[m] += cnt;
            total += cnt;
            m -= (int64_t)expected_us;
        }
    }
    uint64_t want = (uint64_t)(0.99 * (double)total + 0.999999), seen = 0;
    double r = (double)max_us;
    for (uint64_t v = 0; v <= max_us; v++) {
        seen += h[v];
        if (seen >= want) {
            r = (double)v;
            break;
        }
    }
    free(h);
    return r;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: resil_client HOST PORT PATH BODY_FILE CONNS SECONDS\n");
        return 2;
    }
    int conns = atoi(argv[5]);
    double seconds = atof(argv[6]);
    if (conns < 1 || conns > MAX_CONNS || seconds <= 0) {
        fprintf(stderr, "resil_client: bad CONNS or SECONDS\n");
        return 2;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "resil_client: HOST must be an IPv4 address\n");
        return 2;
    }
    FILE *f = fopen(argv[4], "rb");
    if (!f) {
        perror(argv[4]);
        return 1;
    }
    static char body[65536];
    size_t body_len = fread(body, 1, sizeof(body), f);
    fclose(f);
    req = malloc(body_len + 512);
    if (!req) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    req_len =
        (size_t)sprintf(req,
                        "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                        "Authorization: Bearer sk-bench-not-a-real-key\r\n"
                        "Content-Length: %zu\r\n\r\n",
                        argv[3], argv[1], argv[2], body_len);
    memcpy(req + req_len, body, body_len);
    req_len += body_len;

    struct conn cs[MAX_CONNS];
    struct pollfd pf[MAX_CONNS];
    for (int i = 0; i < conns; i++) {
        cs[i].fd = -1;
        cs[i].buf = malloc(RESP_MAX);
        if (!cs[i].buf || conn_open(&cs[i]) != 0) {
            perror("connect");
            return 1;
        }
    }
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(seconds * 1e9);
    while (now_ns() < deadline) {
        for (int i = 0; i < conns; i++) {
            struct conn *c = &cs[i];
            if (c->sent < req_len) {
                if (c->sent == 0) {
                    c->start = now_ns();
                }
                ssize_t w = write(c->fd, req + c->sent, req_len - c->sent);
                if (w < 0 && errno != EAGAIN) {
                    conn_reset(c);
                    continue;
                }
                if (w > 0) {
                    c->sent += (size_t)w;
                }
            }
            pf[i].fd = c->fd;
            pf[i].events = c->sent < req_len ? POLLOUT : POLLIN;
            pf[i].revents = 0;
        }
        if (poll(pf, (nfds_t)conns, 100) < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        for (int i = 0; i < conns; i++) {
            struct conn *c = &cs[i];
            if (!(pf[i].revents & (POLLIN | POLLERR | POLLHUP)) || c->sent < req_len) {
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->len, RESP_MAX - c->len);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                conn_reset(c);
                continue;
            }
            if (r > 0) {
                c->len += (size_t)r;
                int k = try_finish(c);
                if (k < 0) {
                    conn_reset(c);
                }
            }
        }
    }
    double run_s = (double)(now_ns() - t0) / 1e9;
    qsort(lat, n_lat, sizeof(*lat), cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < n_lat; i++) {
        sum += (double)lat[i];
    }
    printf("RESIL requests %zu\n", n_lat);
    printf("RESIL non2xx %llu\n", (unsigned long long)non2xx);
    printf("RESIL sockerr %llu\n", (unsigned long long)sockerr);
    printf("RESIL seconds %.3f\n", run_s);
    if (n_lat > 0) {
        printf("RESIL p50 %.1f\n", (double)pct(lat, n_lat, 50) / 1000);
        printf("RESIL p90 %.1f\n", (double)pct(lat, n_lat, 90) / 1000);
        printf("RESIL p99 %.1f\n", (double)pct(lat, n_lat, 99) / 1000);
        printf("RESIL p99.9 %.1f\n", (double)pct(lat, n_lat, 99.9) / 1000);
        printf("RESIL max %.1f\n", (double)lat[n_lat - 1] / 1000);
        printf("RESIL mean %.1f\n", sum / (double)n_lat / 1000);
        uint64_t per_conn = n_lat / (size_t)conns;
        uint64_t expected_us = per_conn ? (uint64_t)(run_s * 1e6) / per_conn : 0;
        printf("RESIL co_p99 %.1f\n", co_p99(lat, n_lat, expected_us));
    }
    for (int k = 0; k <= MAX_ATTEMPTS; k++) {
        if (attempts[k]) {
            printf("RESIL attempts_%d %llu\n", k, (unsigned long long)attempts[k]);
        }
    }
    return 0;
}
