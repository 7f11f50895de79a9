/* SPDX-License-Identifier: MIT */
/*
 * bench_upstream_client: how many calls per second brigade's upstream client carries on one
 * core, with no server side at all. Keeps --concurrency calls in flight against one URL (each
 * finished call starts the next), prints calls/s every second and, at the end, the median
 * over the measured seconds and the CPU time spent per call. --backend picks the native
 * HTTP/1.1 client (auto, for http:// URLs) or libcurl; --calls N stops after N calls (for
 * counting syscalls under strace). Run it through run.sh beside this file, which starts a
 * local nginx and pins both processes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "core/clock.h"
#include "core/err.h"
#include "upstream/upstream.h"

#define MAX_SECONDS 3600

struct bench {
    uv_loop_t *loop;
    br_upstream *u;
    uv_timer_t tick;
    struct br_upstream_request req;
    int concurrency;
    int warmup_s;
    int seconds;
    long max_calls; /* 0 = run for warmup + seconds */
    long started;
    long done;
    long errors;
    long bytes;
    long last_done;
    int elapsed_s;
    bool stopping;
    double rates[MAX_SECONDS];
    int n_rates;
    long measured_calls;
    double measured_cpu_s;
    struct rusage ru_mark;
};

static double cpu_s(const struct rusage *ru)
{
    return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6 +
           (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6;
}

static void on_head(void *user, const struct br_upstream_head *head)
{
    (void)user;
    (void)head;
}

static void on_data(void *user, const char *data, size_t n)
{
    struct bench *b = user;
    (void)data;
    b->bytes += (long)n;
}

static void start_one(struct bench *b);

static void on_done(void *user, const struct br_upstream_stats *st)
{
    struct bench *b = user;
    b->done++;
    if (st->error != BR_UPSTREAM_ERROR_NONE) {
        if (b->errors++ < 5) {
            fprintf(stderr, "call failed: %s (%s)\n", br_upstream_error_name(st->error),
                    st->error_text ? st->error_text : "");
        }
    }
    if (b->max_calls > 0 && b->done >= b->max_calls) {
        uv_stop(b->loop);
        return;
    }
    if (!b->stopping) {
        start_one(b);
    } else if (br_upstream_active(b->u) == 0) {
        uv_stop(b->loop);
    }
}

static const struct br_upstream_callbacks callbacks = {on_head, on_data, on_done};

static void start_one(struct bench *b)
{
    if (b->max_calls > 0 && b->started >= b->max_calls) {
        return;
    }
    int rc = br_upstream_call_start(b->u, &b->req, &callbacks, b, NULL);
    if (rc != BR_OK) {
        fprintf(stderr, "call_start: %s\n", br_err_name(rc));
        exit(1);
    }
    b->started++;
}

static void tick_cb(uv_timer_t *t)
{
    struct bench *b = t->data;
    long n = b->done - b->last_done;
    b->last_done = b->done;
    b->elapsed_s++;
    bool measuring = b->elapsed_s > b->warmup_s;
    printf("t=%ds calls/s=%ld%s\n", b->elapsed_s, n, measuring ? "" : " (warm-up)");
    fflush(stdout);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (b->elapsed_s == b->warmup_s) {
        b->ru_mark = ru;
        b->measured_calls = b->done;
    }
    if (measuring && b->n_rates < MAX_SECONDS) {
        b->rates[b->n_rates++] = (double)n;
    }
    if (b->max_calls == 0 && b->elapsed_s >= b->warmup_s + b->seconds) {
        b->measured_calls = b->done - b->measured_calls;
        b->measured_cpu_s = cpu_s(&ru) - cpu_s(&b->ru_mark);
        b->stopping = true;
        uv_timer_stop(t);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_upstream_client --url URL [--backend auto|curl] [--concurrency 64]\n"
            "                             [--seconds 5] [--warmup 1] [--calls N] [--body N]\n");
}

int main(int argc, char **argv)
{
    static struct bench b;
    const char *url = NULL;
    const char *backend = "auto";
    long body_bytes = 120;
    b.concurrency = 64;
    b.seconds = 5;
    b.warmup_s = 1;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (strcmp(argv[i], "--url") == 0) {
            url = v;
        } else if (strcmp(argv[i], "--backend") == 0) {
            backend = v;
        } else if (strcmp(argv[i], "--concurrency") == 0) {
            b.concurrency = atoi(v);
        } else if (strcmp(argv[i], "--seconds") == 0) {
            b.seconds = atoi(v);
        } else if (strcmp(argv[i], "--warmup") == 0) {
            b.warmup_s = atoi(v);
        } else if (strcmp(argv[i], "--calls") == 0) {
            b.max_calls = atol(v);
        } else if (strcmp(argv[i], "--body") == 0) {
            body_bytes = atol(v);
        } else {
            usage();
            return 2;
        }
        i++;
    }
    bool curl = strcmp(backend, "curl") == 0;
    if (!url || (!curl && strcmp(backend, "auto") != 0 && strcmp(backend, "native") != 0) ||
        b.concurrency < 1 || b.seconds < 1 || b.seconds > MAX_SECONDS || b.warmup_s < 0 ||
        body_bytes < 0 || body_bytes > (1L << 24)) {
        usage();
        return 2;
    }
    /* A chat-completion-shaped JSON body of about body_bytes bytes. */
    char *body = malloc((size_t)body_bytes + 64);
    if (!body) {
        return 1;
    }
    int n = snprintf(body, 64, "{\"model\":\"bench\",\"messages\":[{\"content\":\"");
    long fill = body_bytes - n - 4 > 0 ? body_bytes - n - 4 : 0;
    memset(body + n, 'x', (size_t)fill);
    memcpy(body + n + fill, "\"}]}", 5);
    static const char *const headers[] = {"Content-Type: application/json",
                                          "Authorization: Bearer sk-bench-not-a-real-key"};
    b.req.method = "POST";
    b.req.url = url;
    b.req.headers = headers;
    b.req.n_headers = 2;
    b.req.body = br_slice_from_cstr(body);

    if (br_upstream_global_init() != BR_OK) {
        return 1;
    }
    b.loop = uv_default_loop();
    struct br_upstream_opts opts = {
        .backend = curl ? BR_UPSTREAM_BACKEND_CURL : BR_UPSTREAM_BACKEND_AUTO,
        .max_connections_per_host = b.concurrency,
    };
    if (br_upstream_create(b.loop, &opts, &b.u) != BR_OK) {
        fprintf(stderr, "br_upstream_create failed\n");
        return 1;
    }
    uv_timer_init(b.loop, &b.tick);
    b.tick.data = &b;
    uv_timer_start(&b.tick, tick_cb, 1000, 1000);
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t t0 = br_clock_now_ns();
    for (int i = 0; i < b.concurrency; i++) {
        start_one(&b);
    }
    uv_run(b.loop, UV_RUN_DEFAULT);
    uint64_t t1 = br_clock_now_ns();
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);

    const char *name = curl ? "curl" : "native";
    if (b.max_calls > 0) {
        double wall = (double)(t1 - t0) / 1e9;
        printf("backend=%s concurrency=%d calls=%ld errors=%ld wall_s=%.2f calls_per_s=%.0f "
               "cpu_us_per_call=%.2f\n",
               name, b.concurrency, b.done, b.errors, wall, (double)b.done / wall,
               (cpu_s(&ru1) - cpu_s(&ru0)) * 1e6 / (double)(b.done ? b.done : 1));
    } else {
        qsort(b.rates, (size_t)b.n_rates, sizeof(b.rates[0]), cmp_double);
        double median = b.n_rates ? b.rates[b.n_rates / 2] : 0;
        printf("backend=%s concurrency=%d calls=%ld errors=%ld median_calls_per_s=%.0f "
               "cpu_us_per_call=%.2f bytes_per_call=%.0f\n",
               name, b.concurrency, b.done, b.errors, median,
               b.measured_calls ? b.measured_cpu_s * 1e6 / (double)b.measured_calls : 0.0,
               b.done ? (double)b.bytes / (double)b.done : 0.0);
    }
    uv_timer_stop(&b.tick);
    uv_close((uv_handle_t *)&b.tick, NULL);
    br_upstream_destroy(b.u);
    uv_run(b.loop, UV_RUN_DEFAULT);
    uv_loop_close(b.loop);
    br_upstream_global_cleanup();
    free(body);
    return b.errors > 0 ? 1 : 0;
}
