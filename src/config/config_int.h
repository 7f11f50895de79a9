/* SPDX-License-Identifier: MIT */
/* Structures shared by the config subsystem's own files; never included from outside. */
#ifndef BR_CONFIG_INT_H
#define BR_CONFIG_INT_H

#include <stddef.h>

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

#endif
