/* SPDX-License-Identifier: MIT */
/*
 * The gateway: the OpenAI-compatible API surface and the request pipeline that joins the
 * subsystems (http -> api -> route -> upstream -> api -> http; then cost, store, metrics).
 *
 *   POST /v1/chat/completions   chat, non-streamed or streamed (SSE)
 *   GET  /v1/models             the catalogue;  GET /v1/models/{id}
 *   GET  /health                liveness (503 while draining)
 *   GET  /metrics               Prometheus text
 *   GET  /admin/config          catalogue and settings, secrets omitted (master key)
 *   POST /admin/reload          reload the config file (master key)
 *
 * Thread-safety: br_gateway_run owns the calling thread until the gateway stops;
 * br_gateway_reload may be called from any thread.
 */
#ifndef BR_API_H
#define BR_API_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

typedef struct br_gateway br_gateway;

/* Command-line overrides of config values; zero/NULL fields leave the config's value. */
struct br_gateway_overrides {
    const char *listen_host;
    uint16_t listen_port;
    int has_listen;
    unsigned workers;
    const char *log_path;
};

/**
 * Loads the config, builds the runtime (providers load their state, e.g. replay files), opens
 * the request log and binds the listening sockets. On failure writes a one-line reason.
 */
int br_gateway_create(const char *config_path, const struct br_gateway_overrides *ov,
                      br_gateway **out, char *err, size_t errlen);

/** The bound port (after create). */
uint16_t br_gateway_port(const br_gateway *g);

/**
 * Starts the workers and serves until SIGTERM/SIGINT (graceful drain) ; SIGHUP reloads the
 * config. Returns 0 after a clean drain.
 */
int br_gateway_run(br_gateway *g);

/**
 * Reloads the config file: a valid new config replaces the old one for requests that start
 * from now on; an invalid one is refused, the old one stays, and err says why.
 */
int br_gateway_reload(br_gateway *g, char *err, size_t errlen);

/** Frees everything (after run returned). NULL is a no-op. */
void br_gateway_destroy(br_gateway *g);

/**
 * Checks a config fully, as a reload would (providers load their files too), without serving.
 * Writes a summary or the reason for failure into msg.
 */
int br_gateway_check_config(const char *config_path, char *msg, size_t msglen);

/**
 * `brigade routes`: the routing report from the request log (argv after the command word).
 * Returns the process exit code (0, 1 failure, 2 usage).
 */
int br_cli_routes(int argc, char **argv);

/** `brigade export`: stored prompt/answer pairs as chat fine-tuning JSONL. Exit code. */
int br_cli_export(int argc, char **argv);

#endif
