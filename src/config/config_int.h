/* SPDX-License-Identifier: MIT */
/* Structures shared by the config subsystem's own files; never included from outside. */
#ifndef BR_CONFIG_INT_H
#define BR_CONFIG_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/arena.h"

enum br_ynode_kind {
    BR_YNODE_SCALAR,
    BR_YNODE_MAP,
    BR_YNODE_SEQ,
};

struct br_ynode {
    enum br_ynode_kind kind;
    int line;                /* 1-based line in the source */
    size_t char_start;       /* scalars: libyaml's mark of the first character (a count of
                                characters, not bytes) */
    size_t char_end;         /* scalars: mark just past the text, quotes included */
    const char *value;       /* scalars: NUL-terminated text */
    bool quoted;             /* scalars: written in quotes (so "null" is a string) */
    struct br_ynode **items; /* maps: key, value, key, value ...; sequences: elements */
    size_t n;
};

/** Parses YAML text into a tree allocated from arena. Errors carry "name:line: message". */
int br__config_yaml_parse(br_arena *arena, const char *text, size_t n, const char *name,
                          struct br_ynode **root_out, char *err, size_t errlen);

/* The state of one load (config.c); the section parsers write into cfg, errors into err. */
struct br__config_loader {
    br_arena *arena;
    struct br_config *cfg;
    const char *name;     /* file name for messages */
    const char *base_dir; /* resolves relative paths; NULL = cwd */
    char *err;
    size_t errlen;
    bool key_store_set; /* auth.key_store was given (possibly "off") */
};

/*
 * Schema helpers shared by the section parsers (config.c). Each returns BR_OK or an error code
 * with a "file:line: what: problem" message in L->err.
 */
int br__config_verrf(struct br__config_loader *L, int line, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
int br__config_want(struct br__config_loader *L, const struct br_ynode *n, enum br_ynode_kind kind,
                    const char *what);
int br__config_scalar(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                      const char **out);
int br__config_nonempty(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                        const char **out);
int br__config_boolean(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                       bool *out);
int br__config_integer(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                       int64_t min, int64_t max, int64_t *out);
int br__config_duration(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                        uint64_t min_ms, uint64_t *out);
int br__config_unknown_key(struct br__config_loader *L, const struct br_ynode *key,
                           const char *section, const char *allowed);
int br__config_caps(struct br__config_loader *L, const struct br_ynode *n, const char *what,
                    unsigned *out);
int br__config_nomem(struct br__config_loader *L);

/* Model-entry helpers of config.c for the other section parsers. */
int br__config_model_base_url(struct br__config_loader *L, const struct br_ynode *v,
                              const char *what, struct br_model_cfg *mc);
int br__config_model_api_key(struct br__config_loader *L, const struct br_ynode *v,
                             const char *what, struct br_model_cfg *mc);
/** Zeroed arena memory owned by the snapshot, or NULL. */
void *br__config_alloc(struct br__config_loader *L, size_t n);
/** printf into the snapshot's arena (at most 511 bytes), or NULL. */
char *br__config_sprintf(struct br__config_loader *L, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* config_resil.c: the `resilience:` section and the per-model resilience keys. */
void br__config_resil_defaults(struct br_resil_cfg *r);
int br__config_parse_resilience(struct br__config_loader *L, const struct br_ynode *n);
/**
 * A model key that belongs to resilience (deployments, fallbacks, retry, breaker, balance):
 * parsed, or its node kept in *deployments / *fallbacks for later. BR_ERR_NOTFOUND when the key
 * is none of them.
 */
int br__config_model_resil_field(struct br__config_loader *L, const struct br_ynode *k,
                                 const struct br_ynode *v, const char *what,
                                 struct br_model_cfg *mc, const struct br_ynode **deployments,
                                 const struct br_ynode **fallbacks);
/** After the entry's own fields: its deployments (or the implicit one), names filled in. */
int br__config_model_finish_resil(struct br__config_loader *L, struct br_model_cfg *mc,
                                  const struct br_ynode *deployments, const char *what);
/** Resolves a model's fallbacks: once every model is in the catalogue. */
int br__config_model_fallbacks(struct br__config_loader *L, struct br_model_cfg *mc,
                               const struct br_ynode *n);

/** Parses the `routes:` list (config_route.c); runs after the catalogue is known. */
int br__config_parse_routes(struct br__config_loader *L, const struct br_ynode *seq);

#endif
