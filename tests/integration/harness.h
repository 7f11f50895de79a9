/* SPDX-License-Identifier: MIT */
/*
 * Integration test harness: runs the real `brigade serve` and the mock upstream as child
 * processes on free loopback ports, talks HTTP to them with libcurl and raw sockets, and reads
 * the gateway's SQLite request log.
 */
#ifndef BR_TEST_HARNESS_H
#define BR_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct proc {
    pid_t pid;
    char log_path[256]; /* the child's stdout+stderr */
};

struct env {
    char dir[128]; /* temporary folder for config, db, logs */
    struct proc mock;
    uint16_t mock_port;
    struct proc gw;
    uint16_t gw_port;
    char config_path[256];
    char db_path[256];
};

/* Creates the temp dir and starts the mock upstream (extra args may be NULL). */
void env_start_mock(struct env *e, const char *const *extra_args);

/*
 * Writes the gateway config (text may use {MOCK} for the mock's port and {DIR} for the temp
 * dir; a `log:` section is added when absent) and starts brigade. Waits until it listens.
 */
void env_start_gateway(struct env *e, const char *config_template);

/** Rewrites the config file (same substitutions) without restarting. */
void env_write_config(struct env *e, const char *config_template);

/** Stops both processes (SIGTERM, then SIGKILL after 10 s) and removes the temp dir. */
void env_stop(struct env *e);

/** Sends a signal to the gateway. */
void env_signal_gateway(struct env *e, int sig);

/** Waits for the gateway to exit; returns its exit status or -1 on timeout. */
int env_wait_gateway(struct env *e, int timeout_ms);

/** The gateway's log so far (malloc'd, caller frees). */
char *env_gateway_log(struct env *e);

/** Waits until the gateway log contains needle (true) or timeout_ms passes (false). */
bool env_wait_log(struct env *e, const char *needle, int timeout_ms);

struct http_resp {
    long status;
    char *headers; /* raw header block(s) incl. trailers, lower-cased names; malloc'd */
    char *body;    /* malloc'd, NUL-terminated */
    size_t body_len;
};

/**
 * Sends a request to the gateway. `headers` is a NULL-terminated list of "Name: value" lines
 * (may be NULL). For streamed answers the whole SSE text lands in body.
 */
void http_request(struct env *e, const char *method, const char *path, const char *const *headers,
                  const char *body, struct http_resp *out);

/** Frees a response. */
void http_resp_free(struct http_resp *r);

/** Value of header `name` (lower case) in r (malloc'd copy) or NULL; the last one wins. */
char *http_header(const struct http_resp *r, const char *name);

/** Sends raw bytes on a new connection and returns everything read until close/timeout. */
char *raw_exchange(uint16_t port, const char *data, size_t len, int timeout_ms);

/** GET from the mock (its /_mock/... endpoints); returns the body (malloc'd). */
char *mock_get(struct env *e, const char *path);

/** POST /_mock/reset. */
void mock_reset(struct env *e);

/**
 * Runs an SQL query returning one integer (or -1 when there is no row) on the request log,
 * waiting up to timeout_ms for `wait_sql` (if given) to return non-zero first.
 */
long long db_int(struct env *e, const char *sql);

/** One text value (malloc'd) or NULL. */
char *db_text(struct env *e, const char *sql);

/** Waits until the request log has at least n rows (true) or 5 s pass (false). */
bool db_wait_rows(struct env *e, long long n);

/** Builds a chat request body: model, one user message, stream flag, extra JSON members. */
char *chat_body(const char *model, const char *user_text, bool stream, const char *extra);

/** Number of occurrences of needle in hay. */
size_t count_substr(const char *hay, const char *needle);

#endif
