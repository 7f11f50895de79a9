/* SPDX-License-Identifier: MIT */
/*
 * Editing one value of a config file in place (`brigade calibrate --write` sets a route's
 * threshold): the file is parsed into the node tree, the scalar named by a path is located
 * (its exact span, from libyaml's marks), its text is replaced, and the file is rewritten
 * atomically (temporary file + rename). Every other byte — comments, order, formatting — is
 * kept, which a YAML round trip would not do.
 *
 * Paths are dotted keys; a list element is chosen by its `name` member: "routes[auto].threshold"
 * or "routes[auto].classifier.threshold".
 */
#define _XOPEN_SOURCE 700 /* mkstemp, fchmod */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "config/config_int.h"
#include "core/alloc.h"
#include "core/arena.h"
#include "core/err.h"

#define MAX_FILE_BYTES (4u << 20)

/* Byte offset of the char_index-th character of UTF-8 text (n bytes). */
static size_t byte_offset(const char *text, size_t n, size_t char_index)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) {
        if (((unsigned char)text[i] & 0xC0) != 0x80) {
            if (chars == char_index) {
                return i;
            }
            chars++;
        }
    }
    return n;
}

static const struct br_ynode *map_get(const struct br_ynode *m, const char *key, size_t klen)
{
    if (!m || m->kind != BR_YNODE_MAP) {
        return NULL;
    }
    for (size_t i = 0; i + 1 < m->n; i += 2) {
        const char *k = m->items[i]->value;
        if (strlen(k) == klen && memcmp(k, key, klen) == 0) {
            return m->items[i + 1];
        }
    }
    return NULL;
}

static const struct br_ynode *seq_by_name(const struct br_ynode *s, const char *name, size_t len)
{
    if (!s || s->kind != BR_YNODE_SEQ) {
        return NULL;
    }
    for (size_t i = 0; i < s->n; i++) {
        const struct br_ynode *nm = map_get(s->items[i], "name", 4);
        if (nm && nm->kind == BR_YNODE_SCALAR && strlen(nm->value) == len &&
            memcmp(nm->value, name, len) == 0) {
            return s->items[i];
        }
    }
    return NULL;
}

/* Follows "a.b[name].c" from root; NULL when any step is missing. */
static const struct br_ynode *follow(const struct br_ynode *root, const char *path)
{
    const struct br_ynode *n = root;
    const char *p = path;
    while (n && *p) {
        size_t klen = strcspn(p, ".[");
        n = map_get(n, p, klen);
        p += klen;
        if (n && *p == '[') {
            const char *close = strchr(p, ']');
            if (!close) {
                return NULL;
            }
            n = seq_by_name(n, p + 1, (size_t)(close - p - 1));
            p = close + 1;
        }
        if (*p == '.') {
            p++;
        }
    }
    return n;
}

static int read_all(const char *path, char **out, size_t *n_out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        (void)snprintf(err, errlen, "%s: cannot open", path);
        return br_err_from_errno(e);
    }
    char *text = br_malloc(MAX_FILE_BYTES + 1);
    size_t n = text ? fread(text, 1, MAX_FILE_BYTES + 1, f) : 0;
    int bad = ferror(f);
    (void)fclose(f);
    if (!text || bad || n > MAX_FILE_BYTES) {
        br_free(text);
        (void)snprintf(err, errlen, "%s: cannot read (or larger than 4 MiB)", path);
        return text ? BR_ERR_IO : BR_ERR_NOMEM;
    }
    text[n] = '\0';
    *out = text;
    *n_out = n;
    return BR_OK;
}

/* Writes text next to path and renames it over path, keeping path's permissions. */
static int replace_file(const char *path, const char *parts[3], const size_t lens[3], char *err,
                        size_t errlen)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp)) {
        (void)snprintf(err, errlen, "%s: path too long", path);
        return BR_ERR_INVAL;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        (void)snprintf(err, errlen, "%s: cannot create a temporary file beside it", path);
        return BR_ERR_IO;
    }
    struct stat st;
    if (stat(path, &st) == 0) {
        (void)fchmod(fd, st.st_mode & 07777);
    }
    int rc = BR_OK;
    for (int i = 0; i < 3 && rc == BR_OK; i++) {
        size_t off = 0;
        while (off < lens[i]) {
            ssize_t k = write(fd, parts[i] + off, lens[i] - off);
            if (k <= 0) {
                rc = BR_ERR_IO;
                break;
            }
            off += (size_t)k;
        }
    }
    if (rc == BR_OK && fsync(fd) != 0) {
        rc = BR_ERR_IO;
    }
    if (close(fd) != 0) {
        rc = BR_ERR_IO;
    }
    if (rc == BR_OK && rename(tmp, path) != 0) {
        rc = BR_ERR_IO;
    }
    if (rc != BR_OK) {
        (void)unlink(tmp);
        (void)snprintf(err, errlen, "%s: cannot write the new file", path);
    }
    return rc;
}

int br_config_file_set(const char *path, const char *key_path, const char *value, char *err,
                       size_t errlen)
{
    char *text = NULL;
    size_t n = 0;
    br_arena *arena = NULL;
    struct br_ynode *root = NULL;
    int rc = read_all(path, &text, &n, err, errlen);
    if (rc != BR_OK) {
        return rc;
    }
    rc = br_arena_create(0, &arena);
    if (rc == BR_OK) {
        rc = br__config_yaml_parse(arena, text, n, path, &root, err, errlen);
    }
    if (rc != BR_OK) {
        goto out;
    }
    const struct br_ynode *node = follow(root, key_path);
    if (!node || node->kind != BR_YNODE_SCALAR) {
        (void)snprintf(err, errlen, "%s: no value at %s (add it to the file first)", path,
                       key_path);
        rc = BR_ERR_NOTFOUND;
        goto out;
    }
    size_t b0 = byte_offset(text, n, node->char_start);
    size_t b1 = byte_offset(text, n, node->char_end);
    const char *parts[3] = {text, value, text + b1};
    const size_t lens[3] = {b0, strlen(value), n - b1};
    rc = replace_file(path, parts, lens, err, errlen);
out:
    br_arena_destroy(arena);
    br_free(text);
    return rc;
}
