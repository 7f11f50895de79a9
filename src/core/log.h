/* SPDX-License-Identifier: MIT */
/*
 * Logging: one key=value line per event, prefixed with time, level and the request id when
 * there is one (STYLE.md rule 34). DEBUG lines compile out of NDEBUG builds. Never log API keys;
 * prompts only at DEBUG. The sink is the one mutable global besides the config pointer; it is
 * set at start-up before threads exist. Thread-safe: each line is written with one write(2).
 */
#ifndef BR_CORE_LOG_H
#define BR_CORE_LOG_H

enum br_log_level {
    BR_LOG_ERR = 0,
    BR_LOG_WARN = 1,
    BR_LOG_INFO = 2,
    BR_LOG_DEBUG = 3,
};

#ifdef NDEBUG
#define BR_LOG_DEBUG_ENABLED 0
#else
#define BR_LOG_DEBUG_ENABLED 1
#endif

/** Lines above this level are dropped (default BR_LOG_INFO). */
void br_log_set_level(enum br_log_level level);

/** Current level. */
enum br_log_level br_log_get_level(void);

/** Parses "error", "warn", "info" or "debug". Returns BR_OK or BR_ERR_INVAL. */
int br_log_level_parse(const char *s, enum br_log_level *out);

/**
 * Replaces the sink (default: stderr). fn receives one complete line including '\n'.
 * Pass NULL to restore stderr. Call before starting threads.
 */
void br_log_set_sink(void (*fn)(void *user, const char *line, unsigned long len), void *user);

/** Emits one line; use the br_log macro instead. req_id may be NULL. */
void br__log_emit(enum br_log_level level, const char *req_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** br_log(BR_LOG_INFO, req_id_or_NULL, "event=listen addr=%s", addr) */
#define br_log(level, req_id, ...)                             \
    do {                                                       \
        if ((level) != BR_LOG_DEBUG || BR_LOG_DEBUG_ENABLED) { \
            br__log_emit((level), (req_id), __VA_ARGS__);      \
        }                                                      \
    } while (0)

#endif
