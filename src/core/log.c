/* SPDX-License-Identifier: MIT */
/* Line-oriented logger with a replaceable sink. */
#include "core/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"

static atomic_int log_level = BR_LOG_INFO;
static void (*log_sink)(void *user, const char *line, unsigned long len);
static void *log_sink_user;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void br_log_set_level(enum br_log_level level)
{
    atomic_store(&log_level, (int)level);
}

enum br_log_level br_log_get_level(void)
{
    return (enum br_log_level)atomic_load(&log_level);
}

int br_log_level_parse(const char *s, enum br_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum br_log_level)i;
            return BR_OK;
        }
    }
    return BR_ERR_INVAL;
}

void br_log_set_sink(void (*fn)(void *user, const char *line, unsigned long len), void *user)
{
    log_sink = fn;
    log_sink_user = user;
}

void br__log_emit(enum br_log_level level, const char *req_id, const char *fmt, ...)
{
    if ((int)level > atomic_load_explicit(&log_level, memory_order_relaxed)) {
        return;
    }
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    int k = snprintf(line + n, sizeof(line) - n, ".%03ldZ level=%s ", ts.tv_nsec / 1000000L,
                     level_names[level]);
    n += (size_t)(k > 0 ? k : 0);
    if (req_id && *req_id) {
        k = snprintf(line + n, sizeof(line) - n, "req=%s ", req_id);
        n += (size_t)(k > 0 ? k : 0);
    }
    if (n < sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        va_end(ap);
        n += (size_t)(k > 0 ? k : 0);
    }
    if (n > sizeof(line) - 2) {
        n = sizeof(line) - 2; /* truncated line */
    }
    line[n++] = '\n';
    line[n] = '\0';
    if (log_sink) {
        log_sink(log_sink_user, line, n);
        return;
    }
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
