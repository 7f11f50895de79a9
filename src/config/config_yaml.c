/* SPDX-License-Identifier: MIT */
/*
 * YAML text -> a small node tree (scalars, mappings, sequences with line numbers), built from
 * libyaml's event stream. Aliases and anchors are refused (they allow exponential documents),
 * as are multiple documents, duplicate mapping keys, deep nesting and huge node counts, so that
 * whatever reaches the config walker is small and tree-shaped.
 */
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "config/config_int.h"
#include "core/err.h"

#define MAX_DEPTH 32
#define MAX_NODES 100000

struct builder {
    br_arena *arena;
    struct br_ynode *stack[MAX_DEPTH + 1];
    size_t cap[MAX_DEPTH + 1]; /* capacity of stack[i]->items */
    int depth;
    size_t n_nodes;
    struct br_ynode *root;
    char *err;
    size_t errlen;
    const char *name;
};

static int fail(struct builder *b, int line, const char *msg)
{
    (void)snprintf(b->err, b->errlen, "%s:%d: %s", b->name, line, msg); /* cut is fine */
    return BR_ERR_PARSE;
}

static int append(struct builder *b, struct br_ynode *parent, struct br_ynode *child, size_t *cap)
{
    if (parent->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        /* NOLINTBEGIN(bugprone-sizeof-expression): an array of pointers */
        struct br_ynode **items = br_arena_calloc(b->arena, ncap, sizeof(*items));
        if (!items) {
            return BR_ERR_NOMEM;
        }
        if (parent->n) {
            memcpy(items, parent->items, parent->n * sizeof(*items));
        }
        /* NOLINTEND(bugprone-sizeof-expression) */
        parent->items = items;
        *cap = ncap;
    }
    parent->items[parent->n++] = child;
    return BR_OK;
}

/* Adds a finished node to the open container (or makes it the root). */
static int attach(struct builder *b, struct br_ynode *n)
{
    if (b->depth == 0) {
        if (b->root) {
            return fail(b, n->line, "more than one document");
        }
        b->root = n;
        return BR_OK;
    }
    struct br_ynode *parent = b->stack[b->depth];
    if (parent->kind == BR_YNODE_MAP && parent->n % 2 == 0) {
        /* n is a key: keys must be scalars and unique. */
        if (n->kind != BR_YNODE_SCALAR) {
            return fail(b, n->line, "mapping keys must be plain scalars");
        }
        for (size_t i = 0; i < parent->n; i += 2) {
            if (strcmp(parent->items[i]->value, n->value) == 0) {
                char msg[160];
                (void)snprintf(msg, sizeof(msg), "duplicate key '%.100s'", n->value);
                return fail(b, n->line, msg);
            }
        }
    }
    return append(b, parent, n, &b->cap[b->depth]);
}

static struct br_ynode *new_node(struct builder *b, enum br_ynode_kind kind, int line)
{
    if (++b->n_nodes > MAX_NODES) {
        return NULL;
    }
    struct br_ynode *n = br_arena_calloc(b->arena, 1, sizeof(*n));
    if (n) {
        n->kind = kind;
        n->line = line;
    }
    return n;
}

static int on_event(struct builder *b, const yaml_event_t *ev)
{
    int line = (int)ev->start_mark.line + 1;
    struct br_ynode *n;
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        return fail(b, line, "YAML aliases are not supported");
    case YAML_SCALAR_EVENT:
        if (ev->data.scalar.anchor) {
            return fail(b, line, "YAML anchors are not supported");
        }
        n = new_node(b, BR_YNODE_SCALAR, line);
        if (!n) {
            return b->n_nodes > MAX_NODES ? fail(b, line, "document too large") : BR_ERR_NOMEM;
        }
        n->char_start = ev->start_mark.index;
        n->char_end = ev->end_mark.index;
        n->value =
            br_arena_strndup(b->arena, (const char *)ev->data.scalar.value, ev->data.scalar.length);
        if (!n->value) {
            return BR_ERR_NOMEM;
        }
        if (strlen(n->value) != ev->data.scalar.length) {
            return fail(b, line, "NUL byte in a value");
        }
        n->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
        return attach(b, n);
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        if ((is_map && ev->data.mapping_start.anchor) ||
            (!is_map && ev->data.sequence_start.anchor)) {
            return fail(b, line, "YAML anchors are not supported");
        }
        if (b->depth >= MAX_DEPTH) {
            return fail(b, line, "nesting too deep");
        }
        n = new_node(b, is_map ? BR_YNODE_MAP : BR_YNODE_SEQ, line);
        if (!n) {
            return b->n_nodes > MAX_NODES ? fail(b, line, "document too large") : BR_ERR_NOMEM;
        }
        int rc = attach(b, n);
        if (rc != BR_OK) {
            return rc;
        }
        b->depth++;
        b->stack[b->depth] = n;
        b->cap[b->depth] = 0;
        return BR_OK;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        b->depth--;
        return BR_OK;
    default:
        return BR_OK;
    }
}

int br__config_yaml_parse(br_arena *arena, const char *text, size_t n, const char *name,
                          struct br_ynode **root_out, char *err, size_t errlen)
{
    struct builder b = {.arena = arena, .err = err, .errlen = errlen, .name = name};
    yaml_parser_t parser;
    yaml_event_t ev;
    int rc = BR_OK;
    int done = 0;

    if (!yaml_parser_initialize(&parser)) {
        return BR_ERR_NOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, n);
    while (!done) {
        if (!yaml_parser_parse(&parser, &ev)) {
            char msg[200];
            (void)snprintf(msg, sizeof(msg), "YAML syntax error: %s%s%s",
                           parser.problem ? parser.problem : "unknown", parser.context ? " " : "",
                           parser.context ? parser.context : "");
            rc = fail(&b, (int)parser.problem_mark.line + 1, msg);
            goto out;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        rc = on_event(&b, &ev);
        yaml_event_delete(&ev);
        if (rc != BR_OK) {
            goto out;
        }
    }
    if (!b.root) {
        rc = fail(&b, 1, "empty configuration");
        goto out;
    }
    *root_out = b.root;
out:
    yaml_parser_delete(&parser);
    if (rc == BR_ERR_NOMEM) {
        (void)snprintf(err, errlen, "%s: out of memory", name);
    }
    return rc;
}
