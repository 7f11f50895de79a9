/* SPDX-License-Identifier: MIT */
/*
 * Dataset loading: finds the files (one file, or a folder of per-subject CSV files as
 * RouteLLM ships MMLU), the contaminated-prompts list beside them, picks each file's format,
 * and lays the rows the loaders report (dataset_csv.c, dataset_jsonl.c) out as the matrices of
 * struct br_dataset. The builder, string pool and error helper used by every loader live here.
 */
#include "eval/dataset.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/err.h"
#include "eval/eval_int.h"

#define POOL_CHUNK (1u << 20)
#define POOL_ALIGN 16u

struct ds_priv {
    struct br__pool pool;
};

/* ---- string pool ---- */

static void *pool_alloc(struct br__pool *p, size_t n)
{
    size_t need = (n + POOL_ALIGN - 1) & ~(size_t)(POOL_ALIGN - 1);
    if (need < n) {
        return NULL;
    }
    struct br__pool_chunk *c = p->head;
    if (c == NULL || c->size - c->used < need) {
        size_t size = need > POOL_CHUNK ? need : POOL_CHUNK;
        size_t hdr = (sizeof(*c) + POOL_ALIGN - 1) & ~(size_t)(POOL_ALIGN - 1);
        if (size > SIZE_MAX - hdr) {
            return NULL;
        }
        c = br_malloc(hdr + size);
        if (c == NULL) {
            return NULL;
        }
        c->size = size;
        c->used = 0;
        c->next = p->head;
        p->head = c;
    }
    size_t hdr = (sizeof(*c) + POOL_ALIGN - 1) & ~(size_t)(POOL_ALIGN - 1);
    void *out = (unsigned char *)c + hdr + c->used;
    c->used += need;
    return out;
}

static void *pool_calloc(struct br__pool *p, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size) {
        return NULL;
    }
    void *out = pool_alloc(p, n * size);
    if (out != NULL) {
        memset(out, 0, n * size);
    }
    return out;
}

char *br__pool_strndup(struct br__pool *p, const char *s, size_t n)
{
    if (n == SIZE_MAX) {
        return NULL;
    }
    char *out = pool_alloc(p, n + 1);
    if (out != NULL) {
        if (n > 0) {
            memcpy(out, s, n);
        }
        out[n] = '\0';
    }
    return out;
}

void br__pool_cleanup(struct br__pool *p)
{
    struct br__pool_chunk *c = p->head;
    while (c != NULL) {
        struct br__pool_chunk *next = c->next;
        br_free(c);
        c = next;
    }
    p->head = NULL;
}

/* ---- UTF-8 ---- */

bool br__utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = u[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1Fu;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0Fu;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07u;
        } else {
            return false;
        }
        if (n - i < len) {
            return false;
        }
        for (size_t k = 1; k < len; k++) {
            if ((u[i + k] & 0xC0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (u[i + k] & 0x3Fu);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF)) {
            return false;
        }
        i += len;
    }
    return true;
}

/* ---- builder ---- */

int br__ds_fail(struct br__ds_builder *b, size_t line, int code, const char *fmt, ...)
{
    if (b->err == NULL || b->errlen == 0) {
        return code;
    }
    int k;
    const char *file = b->file != NULL ? b->file : "(input)";
    if (line > 0) {
        k = snprintf(b->err, b->errlen, "%s:%zu: ", file, line);
    } else {
        k = snprintf(b->err, b->errlen, "%s: ", file);
    }
    if (k < 0 || (size_t)k >= b->errlen) {
        return code;
    }
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(b->err + k, b->errlen - (size_t)k, fmt, ap);
    va_end(ap);
    return code;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem, size_t max)
{
    if (need <= *cap) {
        return BR_OK;
    }
    if (need > max) {
        return BR_ERR_LIMIT;
    }
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        c = c > max / 2 ? max : c * 2;
    }
    if (c > SIZE_MAX / elem) {
        return BR_ERR_NOMEM;
    }
    void *p = br_realloc(*arr, c * elem);
    if (p == NULL) {
        return BR_ERR_NOMEM;
    }
    *arr = p;
    *cap = c;
    return BR_OK;
}

long br__ds_model_find(const struct br__ds_builder *b, const char *name, size_t len)
{
    const size_t *idx = br_map_get(&b->model_idx, br_slice_make(name, len));
    return idx == NULL ? -1 : (long)*idx;
}

int br__ds_model(struct br__ds_builder *b, const char *name, size_t len, size_t *idx_out)
{
    long found = br__ds_model_find(b, name, len);
    if (found >= 0) {
        *idx_out = (size_t)found;
        return BR_OK;
    }
    int rc = grow((void **)&b->models, &b->cap_models, b->n_models + 1, sizeof(char *),
                  BR__DS_MAX_MODELS);
    if (rc != BR_OK) {
        return rc;
    }
    char *copy = br__pool_strndup(&b->pool, name, len);
    size_t *idx = pool_alloc(&b->pool, sizeof(size_t)); /* the map's value: the index */
    if (copy == NULL || idx == NULL) {
        return BR_ERR_NOMEM;
    }
    *idx = b->n_models;
    rc = br_map_put(&b->model_idx, br_slice_make(copy, len), idx);
    if (rc != BR_OK) {
        return rc;
    }
    b->models[b->n_models] = copy;
    *idx_out = b->n_models++;
    return BR_OK;
}

int br__ds_row_begin(struct br__ds_builder *b, const char *prompt, size_t len, const char *group,
                     size_t group_len, bool *kept_out)
{
    *kept_out = false;
    b->row_open = false;
    if (b->have_contaminated && (b->cont_len_bits >> (len % 64) & 1u) != 0 &&
        br_map_get(&b->contaminated, br_slice_make(prompt, len)) != NULL) {
        b->n_dropped++;
        return BR_OK;
    }
    int rc =
        grow((void **)&b->rows, &b->cap_rows, b->n_rows + 1, sizeof(*b->rows), BR__DS_MAX_ROWS);
    if (rc != BR_OK) {
        return rc;
    }
    struct br__ds_row *r = &b->rows[b->n_rows];
    r->prompt = br__pool_strndup(&b->pool, prompt, len);
    r->group = NULL;
    if (r->prompt == NULL) {
        return BR_ERR_NOMEM;
    }
    if (group != NULL) {
        r->group = br__pool_strndup(&b->pool, group, group_len);
        if (r->group == NULL) {
            return BR_ERR_NOMEM;
        }
    }
    r->prompt_tokens_est = br_eval_tokens_estimate(prompt, len);
    b->n_rows++;
    b->row_open = true;
    *kept_out = true;
    return BR_OK;
}

int br__ds_cell_add(struct br__ds_builder *b, size_t model, double quality, double cost_usd,
                    int64_t prompt_tokens, int64_t completion_tokens, const char *response,
                    size_t response_len)
{
    if (!b->row_open) {
        return BR_OK;
    }
    int rc = grow((void **)&b->cells, &b->cap_cells, b->n_cells + 1, sizeof(*b->cells),
                  (size_t)BR__DS_MAX_ROWS * 4);
    if (rc != BR_OK) {
        return rc;
    }
    struct br__ds_cell *c = &b->cells[b->n_cells];
    c->row = (uint32_t)(b->n_rows - 1);
    c->model = (uint32_t)model;
    c->quality = quality;
    c->cost_usd = cost_usd;
    c->prompt_tokens = prompt_tokens;
    c->completion_tokens = completion_tokens;
    c->response = NULL;
    c->response_tokens = -1;
    if (response != NULL) {
        c->response_tokens = br_eval_tokens_estimate(response, response_len);
        if (b->keep_responses) {
            c->response = br__pool_strndup(&b->pool, response, response_len);
            if (c->response == NULL) {
                return BR_ERR_NOMEM;
            }
        }
    }
    b->n_cells++;
    return BR_OK;
}

void br__ds_progress(struct br__ds_builder *b, size_t n)
{
    b->bytes_done += n;
    if (b->progress != NULL) {
        b->progress(b->progress_user, b->bytes_done, b->bytes_total);
    }
}

static void builder_cleanup(struct br__ds_builder *b)
{
    br_free(b->models);
    br_free(b->rows);
    br_free(b->cells);
    br_map_cleanup(&b->model_idx);
    br_map_cleanup(&b->contaminated);
    br__pool_cleanup(&b->pool);
}

/* Moves the builder's rows into a dataset; the pool changes hands. */
static int builder_finish(struct br__ds_builder *b, const char *name, struct br_dataset **out)
{
    struct br__pool *pool = &b->pool;
    if (b->n_rows == 0) {
        return br__ds_fail(b, 0, BR_ERR_PARSE, "no prompts%s",
                           b->n_dropped ? " left after dropping contaminated ones" : "");
    }
    if (b->n_models == 0) {
        return br__ds_fail(b, 0, BR_ERR_PARSE, "no model columns");
    }
    size_t n = b->n_rows;
    size_t m = b->n_models;
    if (n > SIZE_MAX / m / sizeof(double)) {
        return BR_ERR_NOMEM;
    }
    struct br_dataset *ds = br_calloc(1, sizeof(*ds));
    struct ds_priv *priv = br_calloc(1, sizeof(*priv));
    if (ds == NULL || priv == NULL) {
        br_free(ds);
        br_free(priv);
        return BR_ERR_NOMEM;
    }
    ds->name = br__pool_strndup(pool, name, strlen(name));
    ds->models = pool_calloc(pool, m, sizeof(char *));
    ds->prompts = pool_calloc(pool, n, sizeof(char *));
    ds->groups = pool_calloc(pool, n, sizeof(char *));
    ds->quality = pool_calloc(pool, n * m, sizeof(double));
    ds->cost_usd = pool_calloc(pool, n * m, sizeof(double));
    ds->prompt_tokens = pool_calloc(pool, n * m, sizeof(int64_t));
    ds->completion_tokens = pool_calloc(pool, n * m, sizeof(int64_t));
    bool any_response = false;
    for (size_t i = 0; i < b->n_cells; i++) {
        if (b->cells[i].response != NULL) {
            any_response = true;
            break;
        }
    }
    if (any_response) {
        ds->responses = pool_calloc(pool, n * m, sizeof(char *));
    }
    if (ds->name == NULL || ds->models == NULL || ds->prompts == NULL || ds->groups == NULL ||
        ds->quality == NULL || ds->cost_usd == NULL || ds->prompt_tokens == NULL ||
        ds->completion_tokens == NULL || (any_response && ds->responses == NULL)) {
        br_free(ds);
        br_free(priv);
        return BR_ERR_NOMEM;
    }
    ds->n_prompts = n;
    ds->n_models = m;
    memcpy(ds->models, b->models, m * sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        ds->prompts[i] = b->rows[i].prompt;
        ds->groups[i] = b->rows[i].group;
        for (size_t j = 0; j < m; j++) {
            ds->quality[i * m + j] = NAN;
            ds->cost_usd[i * m + j] = NAN;
            ds->prompt_tokens[i * m + j] = b->rows[i].prompt_tokens_est;
            ds->completion_tokens[i * m + j] = -1;
        }
    }
    for (size_t i = 0; i < b->n_cells; i++) {
        const struct br__ds_cell *c = &b->cells[i];
        size_t k = (size_t)c->row * m + c->model;
        ds->quality[k] = c->quality;
        ds->cost_usd[k] = c->cost_usd;
        if (c->prompt_tokens >= 0) {
            ds->prompt_tokens[k] = c->prompt_tokens;
        }
        ds->completion_tokens[k] =
            c->completion_tokens >= 0 ? c->completion_tokens : c->response_tokens;
        if (ds->responses != NULL) {
            ds->responses[k] = c->response;
        }
    }
    ds->n_dropped = b->n_dropped;
    ds->format = b->format;
    ds->n_files = b->n_files;
    ds->contaminated_path = b->contaminated_path;
    priv->pool = b->pool;
    b->pool.head = NULL;
    ds->priv = priv;
    *out = ds;
    return BR_OK;
}

/* ---- files ---- */

/* strerror is not thread-safe; the XSI strerror_r is (POSIX 2008). */
static const char *errtext(int e, char buf[96])
{
    if (strerror_r(e, buf, 96) != 0) {
        (void)snprintf(buf, 96, "errno %d", e);
    }
    return buf;
}

static int read_file(struct br__ds_builder *b, const char *path, char **data_out, size_t *n_out)
{
    int rc = BR_OK;
    char *data = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        char eb[96];
        return br__ds_fail(b, 0, br_err_from_errno(e), "cannot open: %s", errtext(e, eb));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        char eb[96];
        rc = br__ds_fail(b, 0, br_err_from_errno(e), "cannot stat: %s", errtext(e, eb));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = br__ds_fail(b, 0, BR_ERR_IO, "not a regular file");
        goto out;
    }
    if ((unsigned long long)st.st_size > BR__DS_MAX_FILE_BYTES) {
        rc = br__ds_fail(b, 0, BR_ERR_LIMIT, "file larger than %llu bytes",
                         (unsigned long long)BR__DS_MAX_FILE_BYTES);
        goto out;
    }
    size_t size = (size_t)st.st_size;
    data = br_malloc(size + 1);
    if (data == NULL) {
        rc = BR_ERR_NOMEM;
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, data + got, size - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            int e = errno;
            char eb[96];
            rc = br__ds_fail(b, 0, br_err_from_errno(e), "read failed: %s", errtext(e, eb));
            goto out;
        }
        if (r == 0) {
            break; /* the file shrank; parse what is there */
        }
        got += (size_t)r;
    }
    data[got] = '\0';
    *data_out = data;
    *n_out = got;
    data = NULL;
out:
    br_free(data);
    (void)close(fd);
    return rc;
}

enum br_dataset_format br__ds_sniff(const char *data, size_t n)
{
    size_t i = 0;
    if (n >= 3 && (unsigned char)data[0] == 0xEF && (unsigned char)data[1] == 0xBB &&
        (unsigned char)data[2] == 0xBF) {
        i = 3;
    }
    while (i < n && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n')) {
        i++;
    }
    if (i < n && data[i] == '{') {
        return BR_DATASET_FORMAT_JSONL;
    }
    /* A RouterBench header names sample_id, eval_name or `<model>|...` columns. */
    const char *nl = memchr(data, '\n', n);
    size_t hn = nl != NULL ? (size_t)(nl - data) : n;
    static const char *const marks[] = {"sample_id", "eval_name", "|total_cost", "|model_response"};
    for (size_t k = 0; k < sizeof(marks) / sizeof(marks[0]); k++) {
        size_t ml = strlen(marks[k]);
        for (size_t j = 0; j + ml <= hn; j++) {
            if (memcmp(data + j, marks[k], ml) == 0) {
                return BR_DATASET_FORMAT_ROUTERBENCH;
            }
        }
    }
    return BR_DATASET_FORMAT_ROUTELLM;
}

static int load_bytes(struct br__ds_builder *b, const char *data, size_t n,
                      enum br_dataset_format fmt, const char *group)
{
    if (fmt == BR_DATASET_FORMAT_AUTO) {
        fmt = br__ds_sniff(data, n);
    }
    if (b->format == BR_DATASET_FORMAT_AUTO) {
        b->format = fmt;
    } else if (b->format != fmt) {
        return br__ds_fail(b, 0, BR_ERR_PARSE, "format %s differs from the folder's %s",
                           br_dataset_format_name(fmt), br_dataset_format_name(b->format));
    }
    b->n_files++;
    if (fmt == BR_DATASET_FORMAT_JSONL) {
        return br__ds_load_jsonl(b, data, n);
    }
    return br__ds_load_csv(b, data, n, fmt, group);
}

static int load_one_file(struct br__ds_builder *b, const char *path, enum br_dataset_format fmt,
                         const char *group)
{
    char *data = NULL;
    size_t n = 0;
    b->file = path;
    int rc = read_file(b, path, &data, &n);
    if (rc != BR_OK) {
        return rc;
    }
    rc = load_bytes(b, data, n, fmt, group);
    br_free(data);
    return rc;
}

int br__ds_load_contaminated(struct br__ds_builder *b, const char *path)
{
    char *data = NULL;
    size_t n = 0;
    const char *saved = b->file;
    b->file = path;
    int rc = read_file(b, path, &data, &n);
    if (rc != BR_OK) {
        return rc;
    }
    rc = br__ds_contaminated_parse(b, data, n);
    br_free(data);
    if (rc == BR_OK) {
        b->have_contaminated = true;
        b->contaminated_path = br__pool_strndup(&b->pool, path, strlen(path));
        if (b->contaminated_path == NULL) {
            rc = BR_ERR_NOMEM;
        }
    }
    b->file = saved;
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s);
    size_t k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = br_malloc(n);
    if (p != NULL) {
        (void)snprintf(p, n, "%s/%s", dir, name);
    }
    return p;
}

struct name_list {
    char **v;
    size_t n, cap;
};

static void name_list_cleanup(struct name_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        br_free(l->v[i]);
    }
    br_free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* The CSV files of a folder, sorted by name. */
static int list_csv(struct br__ds_builder *b, const char *dir, struct name_list *out)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        int e = errno;
        char eb[96];
        b->file = dir;
        return br__ds_fail(b, 0, br_err_from_errno(e), "cannot open folder: %s", errtext(e, eb));
    }
    int rc = BR_OK;
    for (;;) {
        errno = 0;
        const struct dirent *de = readdir(d); /* NOLINT(concurrency-mt-unsafe): own DIR */
        if (de == NULL) {
            break;
        }
        if (de->d_name[0] == '.' || !ends_with(de->d_name, ".csv")) {
            continue;
        }
        rc = grow((void **)&out->v, &out->cap, out->n + 1, sizeof(char *), 1u << 20);
        if (rc != BR_OK) {
            break;
        }
        out->v[out->n] = br_strdup(de->d_name);
        if (out->v[out->n] == NULL) {
            rc = BR_ERR_NOMEM;
            break;
        }
        out->n++;
    }
    (void)closedir(d);
    if (rc == BR_OK && out->n > 1) {
        qsort(out->v, out->n, sizeof(char *), cmp_str);
    }
    return rc;
}

/*
 * Group of a file: its name without ".csv" and without a first "<word>_" that every file of
 * the folder shares ("mmlu_abstract_algebra.csv" -> "abstract_algebra").
 */
static size_t shared_prefix(const struct name_list *l)
{
    if (l->n < 2) {
        const char *u = l->n == 1 ? strchr(l->v[0], '_') : NULL;
        return u != NULL ? (size_t)(u - l->v[0]) + 1 : 0;
    }
    const char *u = strchr(l->v[0], '_');
    if (u == NULL) {
        return 0;
    }
    size_t k = (size_t)(u - l->v[0]) + 1;
    for (size_t i = 1; i < l->n; i++) {
        if (strncmp(l->v[i], l->v[0], k) != 0) {
            return 0;
        }
    }
    return k;
}

static int file_size(const char *path, size_t *out)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        return br_err_from_errno(errno);
    }
    *out = (size_t)st.st_size;
    return BR_OK;
}

static int load_folder(struct br__ds_builder *b, const char *dir, enum br_dataset_format fmt)
{
    struct name_list files = {0};
    char *path = NULL;
    char *group = NULL;
    int rc = list_csv(b, dir, &files);
    if (rc != BR_OK) {
        goto out;
    }
    if (files.n == 0) {
        b->file = dir;
        rc = br__ds_fail(b, 0, BR_ERR_NOTFOUND, "no .csv files in the folder");
        goto out;
    }
    if (fmt == BR_DATASET_FORMAT_JSONL) {
        b->file = dir;
        rc = br__ds_fail(b, 0, BR_ERR_INVAL, "a folder holds CSV files, not JSONL");
        goto out;
    }
    for (size_t i = 0; i < files.n; i++) {
        path = path_join(dir, files.v[i]);
        if (path == NULL) {
            rc = BR_ERR_NOMEM;
            goto out;
        }
        size_t sz = 0;
        if (file_size(path, &sz) == BR_OK) {
            b->bytes_total += sz;
        }
        br_free(path);
        path = NULL;
    }
    size_t skip = shared_prefix(&files);
    for (size_t i = 0; i < files.n; i++) {
        path = path_join(dir, files.v[i]);
        const char *g = files.v[i] + skip;
        size_t gl = strlen(g) - 4; /* ".csv" */
        group = br_strndup(g, gl);
        if (path == NULL || group == NULL) {
            rc = BR_ERR_NOMEM;
            goto out;
        }
        rc = load_one_file(b, path, fmt, group);
        if (rc != BR_OK) {
            goto out;
        }
        br_free(path);
        br_free(group);
        path = NULL;
        group = NULL;
    }
out:
    b->file = dir; /* path is freed below; messages are already written */
    br_free(path);
    br_free(group);
    name_list_cleanup(&files);
    return rc;
}

/* Directory part of a path ("." when it has none); caller frees. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        return br_strdup(".");
    }
    if (slash == path) {
        return br_strdup("/");
    }
    return br_strndup(path, (size_t)(slash - path));
}

static const char *base_of(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') {
        n--;
    }
    const char *p = path + n;
    while (p > path && p[-1] != '/') {
        p--;
    }
    return p;
}

#define CONTAMINATED_NAME "contaminated_prompts.jsonl"

/* contaminated_prompts.jsonl beside the data: in the folder or file's folder, then its parent
 * (RouteLLM keeps MMLU's list beside responses/). NULL when there is none. */
static char *find_contaminated(const char *path, bool folder)
{
    char *dir = folder ? br_strdup(path) : dir_of(path);
    if (dir == NULL) {
        return NULL;
    }
    char *cand = path_join(dir, CONTAMINATED_NAME);
    if (cand != NULL && is_file(cand)) {
        br_free(dir);
        return cand;
    }
    br_free(cand);
    cand = NULL;
    if (folder) {
        char *parent = path_join(dir, "..");
        if (parent != NULL) {
            cand = path_join(parent, CONTAMINATED_NAME);
            br_free(parent);
            if (cand != NULL && !is_file(cand)) {
                br_free(cand);
                cand = NULL;
            }
        }
    }
    br_free(dir);
    return cand;
}

/*
 * RouteLLM's layout: mmlu/responses/ holds the CSV files, mmlu/ the contaminated list. When a
 * folder has no CSV file but a responses/ folder, *sub_out is that folder (caller frees).
 */
static int folder_data_path(struct br__ds_builder *b, const char *path, char **sub_out)
{
    struct name_list l = {0};
    *sub_out = NULL;
    int rc = list_csv(b, path, &l);
    size_t n_csv = l.n;
    name_list_cleanup(&l);
    if (rc != BR_OK || n_csv > 0) {
        return rc;
    }
    char *sub = path_join(path, "responses");
    if (sub == NULL) {
        return BR_ERR_NOMEM;
    }
    if (is_dir(sub)) {
        *sub_out = sub;
    } else {
        br_free(sub);
    }
    return BR_OK;
}

static void builder_init(struct br__ds_builder *b, const struct br_dataset_opts *opts, char *err,
                         size_t errlen)
{
    memset(b, 0, sizeof(*b));
    br_map_init(&b->model_idx);
    br_map_init(&b->contaminated);
    b->err = err;
    b->errlen = errlen;
    if (err != NULL && errlen > 0) {
        err[0] = '\0';
    }
    if (opts != NULL) {
        b->keep_responses = opts->keep_responses;
        b->progress = opts->progress;
        b->progress_user = opts->progress_user;
    }
}

int br_dataset_load(const char *path, const struct br_dataset_opts *opts, struct br_dataset **out,
                    char *err, size_t errlen)
{
    struct br__ds_builder b;
    char *cont = NULL;
    char *sub = NULL;
    builder_init(&b, opts, err, errlen);
    if (path == NULL || out == NULL) {
        return BR_ERR_INVAL;
    }
    *out = NULL;
    enum br_dataset_format fmt = opts != NULL ? opts->format : BR_DATASET_FORMAT_AUTO;
    const char *given = opts != NULL ? opts->contaminated : NULL;
    int rc = BR_OK;
    bool folder = is_dir(path);
    const char *data_path = path;
    if (folder) {
        rc = folder_data_path(&b, path, &sub);
        if (rc != BR_OK) {
            goto out;
        }
        data_path = sub != NULL ? sub : path;
    }
    if (given == NULL) {
        cont = find_contaminated(path, folder);
    } else if (given[0] != '\0') {
        cont = br_strdup(given);
        if (cont == NULL) {
            rc = BR_ERR_NOMEM;
            goto out;
        }
    }
    if (cont != NULL) {
        rc = br__ds_load_contaminated(&b, cont);
        if (rc != BR_OK) {
            goto out;
        }
    }
    if (folder) {
        rc = load_folder(&b, data_path, fmt);
    } else {
        size_t sz = 0;
        if (file_size(path, &sz) == BR_OK) {
            b.bytes_total = sz;
        }
        rc = load_one_file(&b, path, fmt, NULL);
    }
    if (rc != BR_OK) {
        goto out;
    }
    b.file = path;
    rc = builder_finish(&b, base_of(path), out);
out:
    br_free(cont);
    br_free(sub);
    builder_cleanup(&b);
    return rc;
}

int br_dataset_load_mem(const char *data, size_t n, const char *name,
                        const struct br_dataset_opts *opts, struct br_dataset **out, char *err,
                        size_t errlen)
{
    struct br__ds_builder b;
    builder_init(&b, opts, err, errlen);
    if ((data == NULL && n > 0) || out == NULL) {
        return BR_ERR_INVAL;
    }
    *out = NULL;
    if (name == NULL) {
        name = "(memory)";
    }
    int rc = BR_OK;
    const char *given = opts != NULL ? opts->contaminated : NULL;
    if (given != NULL && given[0] != '\0') {
        rc = br__ds_load_contaminated(&b, given);
        if (rc != BR_OK) {
            goto out;
        }
    }
    b.file = name;
    b.bytes_total = n;
    rc = load_bytes(&b, data != NULL ? data : "", n,
                    opts != NULL ? opts->format : BR_DATASET_FORMAT_AUTO, NULL);
    if (rc != BR_OK) {
        goto out;
    }
    rc = builder_finish(&b, name, out);
out:
    builder_cleanup(&b);
    return rc;
}

void br_dataset_free(struct br_dataset *ds)
{
    if (ds == NULL) {
        return;
    }
    struct ds_priv *priv = ds->priv;
    if (priv != NULL) {
        br__pool_cleanup(&priv->pool);
        br_free(priv);
    }
    br_free(ds);
}

int br_dataset_model_index(const struct br_dataset *ds, const char *name)
{
    if (ds == NULL || name == NULL) {
        return -1;
    }
    for (size_t i = 0; i < ds->n_models; i++) {
        if (strcmp(ds->models[i], name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

const char *br_dataset_format_name(enum br_dataset_format f)
{
    switch (f) {
    case BR_DATASET_FORMAT_AUTO:
        return "auto";
    case BR_DATASET_FORMAT_ROUTELLM:
        return "routellm";
    case BR_DATASET_FORMAT_ROUTERBENCH:
        return "routerbench";
    case BR_DATASET_FORMAT_JSONL:
        return "jsonl";
    }
    return "?";
}

int br_dataset_format_parse(const char *s, enum br_dataset_format *out)
{
    static const enum br_dataset_format all[] = {BR_DATASET_FORMAT_AUTO, BR_DATASET_FORMAT_ROUTELLM,
                                                 BR_DATASET_FORMAT_ROUTERBENCH,
                                                 BR_DATASET_FORMAT_JSONL};
    if (s == NULL) {
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(s, br_dataset_format_name(all[i])) == 0) {
            *out = all[i];
            return BR_OK;
        }
    }
    return BR_ERR_INVAL;
}
