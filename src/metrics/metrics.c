/* SPDX-License-Identifier: MIT */
/*
 * Metrics registry. Each shard holds, per family, an open-addressing table from label-value
 * tuples to series, plus a one-entry cache of the last series used (a worker usually records
 * the same labels several times in a row). A shard has its own mutex: its owning worker takes
 * it for the few nanoseconds of an update, uncontended except while a scrape copies that
 * shard, so recording never waits on other workers and scrapes are race-free. Series are never
 * freed before br_metrics_destroy, so a scrape may read their label strings after unlocking.
 * See docs/internals/metrics.md.
 */
#include "metrics/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"

#define MAX_SHARDS 4096u

struct family {
    char *name;
    char *help;
    enum br_metric_type type;
    size_t n_labels;
    char *labels[BR_METRICS_MAX_LABELS];
    size_t n_buckets;
    double bounds[BR_METRICS_MAX_BUCKETS]; /* ascending upper bounds; +Inf implicit */
};

struct series {
    uint64_t hash;
    const char *values[BR_METRICS_MAX_LABELS]; /* point into the same allocation */
    double value;                              /* counter, gauge */
    double sum;                                /* histogram */
    uint64_t count;                            /* histogram */
    uint64_t buckets[];                        /* histogram: (n_buckets + 1), not cumulative */
};

struct table {
    struct series **slots; /* (n_slots), power of two; NULL = empty */
    size_t n_slots;
    size_t n_items;
    struct series *last; /* the series used last */
};

struct shard {
    pthread_mutex_t mu;
    struct table *tables; /* (n_families) */
};

struct br_metrics {
    unsigned n_shards;       /* worker shards; shards[n_shards] is BR_METRICS_SHARD_ANY */
    struct shard **shards;   /* (n_shards + 1), separate blocks: no false sharing */
    struct family *families; /* (n_families) */
    size_t n_families;
    atomic_uint_fast64_t dropped;
};

/* ---- create / destroy ---- */

static void free_table(struct table *t)
{
    for (size_t i = 0; i < t->n_slots; i++) {
        br_free(t->slots[i]);
    }
    br_free(t->slots);
}

static void free_family(struct family *f)
{
    br_free(f->name);
    br_free(f->help);
    for (size_t i = 0; i < f->n_labels; i++) {
        br_free(f->labels[i]);
    }
}

void br_metrics_destroy(br_metrics *m)
{
    if (!m) {
        return;
    }
    if (m->shards) {
        for (unsigned i = 0; i <= m->n_shards; i++) {
            struct shard *sh = m->shards[i];
            if (!sh) {
                continue;
            }
            for (size_t f = 0; sh->tables && f < m->n_families; f++) {
                free_table(&sh->tables[f]);
            }
            br_free(sh->tables);
            pthread_mutex_destroy(&sh->mu);
            br_free(sh);
        }
    }
    for (size_t f = 0; f < m->n_families; f++) {
        free_family(&m->families[f]);
    }
    br_free(m->families);
    br_free(m->shards);
    br_free(m);
}

int br_metrics_create(unsigned n_shards, br_metrics **out)
{
    if (!out || (n_shards > MAX_SHARDS && n_shards != 0)) {
        return BR_ERR_INVAL;
    }
    br_metrics *m = br_calloc(1, sizeof(*m));
    if (!m) {
        return BR_ERR_NOMEM;
    }
    m->n_shards = n_shards;
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
    m->shards = br_calloc((size_t)n_shards + 1, sizeof(struct shard *));
    if (!m->shards) {
        goto fail;
    }
    for (unsigned i = 0; i <= n_shards; i++) {
        struct shard *sh = br_calloc(1, sizeof(*sh));
        if (!sh) {
            goto fail;
        }
        if (pthread_mutex_init(&sh->mu, NULL) != 0) {
            br_free(sh);
            goto fail;
        }
        m->shards[i] = sh;
    }
    *out = m;
    return BR_OK;

fail:
    br_metrics_destroy(m);
    return BR_ERR_NOMEM;
}

/* ---- registration ---- */

static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s) {
        return false;
    }
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok) {
            return false;
        }
    }
    return true;
}

static int check_labels(enum br_metric_type type, const char *const *label_names, size_t n_labels)
{
    if (n_labels > BR_METRICS_MAX_LABELS || (n_labels > 0 && !label_names)) {
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < n_labels; i++) {
        const char *l = label_names[i];
        if (!valid_name(l, false) || strncmp(l, "__", 2) == 0) {
            return BR_ERR_INVAL; /* names starting with __ are reserved by Prometheus */
        }
        if (type == BR_METRIC_TYPE_HISTOGRAM && strcmp(l, "le") == 0) {
            return BR_ERR_INVAL;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(l, label_names[j]) == 0) {
                return BR_ERR_INVAL;
            }
        }
    }
    return BR_OK;
}

static int check_buckets(enum br_metric_type type, const double *buckets, size_t n_buckets)
{
    if (type != BR_METRIC_TYPE_HISTOGRAM) {
        return n_buckets == 0 ? BR_OK : BR_ERR_INVAL;
    }
    if (n_buckets > BR_METRICS_MAX_BUCKETS || (n_buckets > 0 && !buckets)) {
        return BR_ERR_INVAL;
    }
    for (size_t i = 0; i < n_buckets; i++) {
        double b = buckets[i];
        if (!isfinite(b)) {
            return BR_ERR_INVAL; /* NaN or infinite */
        }
        if (i > 0 && !(b > buckets[i - 1])) {
            return BR_ERR_INVAL;
        }
    }
    return BR_OK;
}

/* Grows every shard's table array to n entries (registration time only). */
static int grow_tables(br_metrics *m, size_t n)
{
    for (unsigned i = 0; i <= m->n_shards; i++) {
        struct shard *sh = m->shards[i];
        pthread_mutex_lock(&sh->mu);
        struct table *t = br_realloc(sh->tables, n * sizeof(*t));
        if (t) {
            memset(&t[n - 1], 0, sizeof(*t));
            sh->tables = t;
        }
        pthread_mutex_unlock(&sh->mu);
        if (!t) {
            return BR_ERR_NOMEM; /* shards already grown keep a harmless spare entry */
        }
    }
    return BR_OK;
}

int br_metrics_register(br_metrics *m, const char *name, const char *help, enum br_metric_type type,
                        const char *const *label_names, size_t n_labels, const double *buckets,
                        size_t n_buckets, unsigned *id_out)
{
    if (!m || !id_out || !valid_name(name, true) ||
        (type != BR_METRIC_TYPE_COUNTER && type != BR_METRIC_TYPE_GAUGE &&
         type != BR_METRIC_TYPE_HISTOGRAM)) {
        return BR_ERR_INVAL;
    }
    int rc = check_labels(type, label_names, n_labels);
    if (rc == BR_OK) {
        rc = check_buckets(type, buckets, n_buckets);
    }
    if (rc != BR_OK) {
        return rc;
    }
    for (size_t i = 0; i < m->n_families; i++) {
        if (strcmp(m->families[i].name, name) == 0) {
            return BR_ERR_EXISTS;
        }
    }
    if (m->n_families >= UINT32_MAX) {
        return BR_ERR_LIMIT;
    }
    struct family f = {.type = type, .n_labels = n_labels, .n_buckets = n_buckets};
    f.name = br_strdup(name);
    f.help = br_strdup(help ? help : "");
    if (!f.name || !f.help) {
        goto fail;
    }
    for (size_t i = 0; i < n_labels; i++) {
        f.labels[i] = br_strdup(label_names[i]);
        if (!f.labels[i]) {
            f.n_labels = i;
            goto fail;
        }
    }
    if (n_buckets) {
        memcpy(f.bounds, buckets, n_buckets * sizeof(double));
    }
    struct family *fams = br_realloc(m->families, (m->n_families + 1) * sizeof(*fams));
    if (!fams) {
        goto fail;
    }
    m->families = fams;
    if (grow_tables(m, m->n_families + 1) != BR_OK) {
        goto fail;
    }
    m->families[m->n_families] = f;
    *id_out = (unsigned)m->n_families;
    m->n_families++;
    return BR_OK;

fail:
    free_family(&f);
    return BR_ERR_NOMEM;
}

uint64_t br_metrics_dropped(const br_metrics *m)
{
    return atomic_load(&m->dropped);
}

/* ---- recording ---- */

static const char *lv(const char *const *values, size_t i)
{
    return values && values[i] ? values[i] : "";
}

static uint64_t hash_values(const char *const *values, size_t n)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a over each value and its NUL */
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = (const unsigned char *)lv(values, i);
        do {
            h ^= *p;
            h *= 1099511628211ull;
        } while (*p++);
    }
    return h;
}

static bool same_values(const struct series *s, const char *const *values, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s->values[i], lv(values, i)) != 0) {
            return false;
        }
    }
    return true;
}

static struct series *new_series(const struct family *f, const char *const *values, uint64_t h)
{
    size_t nb = f->type == BR_METRIC_TYPE_HISTOGRAM ? f->n_buckets + 1 : 0;
    size_t lens[BR_METRICS_MAX_LABELS];
    size_t size = sizeof(struct series) + nb * sizeof(uint64_t);
    for (size_t i = 0; i < f->n_labels; i++) {
        lens[i] = strlen(lv(values, i));
        if (lens[i] > BR_METRICS_MAX_LABEL_VALUE) {
            return NULL; /* counted as dropped by the caller */
        }
        size += lens[i] + 1;
    }
    struct series *s = br_calloc(1, size);
    if (!s) {
        return NULL;
    }
    s->hash = h;
    char *p = (char *)&s->buckets[nb];
    for (size_t i = 0; i < f->n_labels; i++) {
        memcpy(p, lv(values, i), lens[i] + 1);
        s->values[i] = p;
        p += lens[i] + 1;
    }
    return s;
}

static bool table_grow(struct table *t)
{
    size_t n = t->n_slots ? t->n_slots * 2 : 8;
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
    struct series **slots = br_calloc(n, sizeof(struct series *));
    if (!slots) {
        return false;
    }
    for (size_t i = 0; i < t->n_slots; i++) {
        struct series *s = t->slots[i];
        if (s) {
            size_t j = (size_t)s->hash & (n - 1);
            while (slots[j]) {
                j = (j + 1) & (n - 1);
            }
            slots[j] = s;
        }
    }
    br_free(t->slots);
    t->slots = slots;
    t->n_slots = n;
    return true;
}

/* With the shard locked: the series for values, created on first use; NULL when dropped. */
static struct series *find_series(br_metrics *m, struct table *t, const struct family *f,
                                  const char *const *values)
{
    if (t->last && same_values(t->last, values, f->n_labels)) {
        return t->last;
    }
    uint64_t h = hash_values(values, f->n_labels);
    if (t->n_slots) {
        size_t mask = t->n_slots - 1;
        for (size_t i = (size_t)h & mask; t->slots[i]; i = (i + 1) & mask) {
            struct series *s = t->slots[i];
            if (s->hash == h && same_values(s, values, f->n_labels)) {
                t->last = s;
                return s;
            }
        }
    }
    if (t->n_items >= BR_METRICS_MAX_SERIES) {
        goto drop;
    }
    if ((t->n_items + 1) * 2 > t->n_slots && !table_grow(t)) {
        goto drop;
    }
    struct series *s = new_series(f, values, h);
    if (!s) {
        goto drop;
    }
    size_t mask = t->n_slots - 1;
    size_t i = (size_t)h & mask;
    while (t->slots[i]) {
        i = (i + 1) & mask;
    }
    t->slots[i] = s;
    t->n_items++;
    t->last = s;
    return s;

drop:
    atomic_fetch_add_explicit(&m->dropped, 1, memory_order_relaxed);
    return NULL;
}

static struct shard *get_shard(br_metrics *m, unsigned shard)
{
    if (shard == BR_METRICS_SHARD_ANY) {
        return m->shards[m->n_shards];
    }
    return shard < m->n_shards ? m->shards[shard] : NULL;
}

enum op { OP_ADD, OP_SET, OP_OBSERVE };

static void record(br_metrics *m, unsigned shard, unsigned family, const char *const *values,
                   double v, enum op op)
{
    if (!m || family >= m->n_families) {
        return;
    }
    const struct family *f = &m->families[family];
    bool type_ok = (op == OP_ADD && f->type != BR_METRIC_TYPE_HISTOGRAM) ||
                   (op == OP_SET && f->type == BR_METRIC_TYPE_GAUGE) ||
                   (op == OP_OBSERVE && f->type == BR_METRIC_TYPE_HISTOGRAM);
    /* Counters only go up: negative and NaN increments are refused (!(v >= 0) catches NaN). */
    if (!type_ok || (op == OP_ADD && f->type == BR_METRIC_TYPE_COUNTER && !(v >= 0))) {
        return;
    }
    struct shard *sh = get_shard(m, shard);
    if (!sh) {
        return;
    }
    pthread_mutex_lock(&sh->mu);
    struct series *s = find_series(m, &sh->tables[family], f, values);
    if (s) {
        switch (op) {
        case OP_ADD:
            s->value += v;
            break;
        case OP_SET:
            s->value = v;
            break;
        case OP_OBSERVE: {
            size_t b = 0;
            while (b < f->n_buckets && !(v <= f->bounds[b])) {
                b++; /* NaN lands in +Inf, as in the Prometheus client libraries */
            }
            s->buckets[b]++;
            s->count++;
            s->sum += v;
            break;
        }
        }
    }
    pthread_mutex_unlock(&sh->mu);
}

void br_metrics_add(br_metrics *m, unsigned shard, unsigned family, const char *const *label_values,
                    double v)
{
    record(m, shard, family, label_values, v, OP_ADD);
}

void br_metrics_set(br_metrics *m, unsigned shard, unsigned family, const char *const *label_values,
                    double v)
{
    record(m, shard, family, label_values, v, OP_SET);
}

void br_metrics_observe(br_metrics *m, unsigned shard, unsigned family,
                        const char *const *label_values, double v)
{
    record(m, shard, family, label_values, v, OP_OBSERVE);
}

/* ---- rendering ---- */

/* A copy of one series taken under its shard lock. */
struct snap {
    const struct series *s; /* for the label values, which never change */
    size_t n_labels;
    double value;
    double sum;
    uint64_t count;
    uint64_t buckets[BR_METRICS_MAX_BUCKETS + 1];
};

static int cmp_snap(const void *a, const void *b)
{
    const struct snap *x = a;
    const struct snap *y = b;
    for (size_t i = 0; i < x->n_labels; i++) {
        int c = strcmp(x->s->values[i], y->s->values[i]);
        if (c != 0) {
            return c;
        }
    }
    return 0;
}

/*
 * Formats v so that Prometheus (Go's strconv.ParseFloat) reads back exactly v: integers
 * without exponent or fraction, other values in the shortest %g form that round-trips, and
 * the spellings NaN, +Inf, -Inf. Assumes the "C" numeric locale (brigade never calls
 * setlocale).
 */
static void format_double(double v, char out[40])
{
    if (isnan(v)) {
        memcpy(out, "NaN", 4);
        return;
    }
    if (isinf(v)) {
        memcpy(out, v > 0 ? "+Inf" : "-Inf", 5);
        return;
    }
    if (v > -1e17 && v < 1e17 && v == (double)(long long)v) {
        (void)snprintf(out, 40, "%lld", (long long)v); /* -0.0 prints as 0 */
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        (void)snprintf(out, 40, "%.*g", prec, v);
        if (strtod(out, NULL) == v) {
            return;
        }
    }
}

struct out {
    struct br_buf *b;
    int rc;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->rc == BR_OK) {
        o->rc = br_buf_append(o->b, s, n);
    }
}

static void put_str(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_escaped(struct out *o, const char *s, bool quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = NULL;
        if (*s == '\\') {
            esc = "\\\\";
        } else if (*s == '\n') {
            esc = "\\n";
        } else if (quote && *s == '"') {
            esc = "\\\"";
        }
        if (esc) {
            put(o, run, (size_t)(s - run));
            put_str(o, esc);
            run = s + 1;
        }
    }
    put(o, run, (size_t)(s - run));
}

static void put_double(struct out *o, double v)
{
    char num[40];
    format_double(v, num);
    put_str(o, num);
}

static void put_u64(struct out *o, uint64_t v)
{
    char num[24];
    (void)snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    put_str(o, num);
}

/* name{l1="v1",...[,le="x"]} with the given suffix on the name. */
static void put_series_name(struct out *o, const struct family *f, const char *suffix,
                            const struct snap *sn, const char *le)
{
    put_str(o, f->name);
    put_str(o, suffix);
    if (f->n_labels == 0 && !le) {
        return;
    }
    put_str(o, "{");
    for (size_t i = 0; i < f->n_labels; i++) {
        if (i) {
            put_str(o, ",");
        }
        put_str(o, f->labels[i]);
        put_str(o, "=\"");
        put_escaped(o, sn->s ? sn->s->values[i] : "", true);
        put_str(o, "\"");
    }
    if (le) {
        put_str(o, f->n_labels ? ",le=\"" : "le=\"");
        put_str(o, le);
        put_str(o, "\"");
    }
    put_str(o, "}");
}

static void put_samples(struct out *o, const struct family *f, const struct snap *sn)
{
    if (f->type != BR_METRIC_TYPE_HISTOGRAM) {
        put_series_name(o, f, "", sn, NULL);
        put_str(o, " ");
        put_double(o, sn->value);
        put_str(o, "\n");
        return;
    }
    uint64_t cum = 0;
    char le[40];
    for (size_t b = 0; b <= f->n_buckets; b++) {
        cum += sn->buckets[b];
        if (b < f->n_buckets) {
            format_double(f->bounds[b], le);
        } else {
            memcpy(le, "+Inf", 5);
        }
        put_series_name(o, f, "_bucket", sn, le);
        put_str(o, " ");
        put_u64(o, cum);
        put_str(o, "\n");
    }
    put_series_name(o, f, "_sum", sn, NULL);
    put_str(o, " ");
    put_double(o, sn->sum);
    put_str(o, "\n");
    put_series_name(o, f, "_count", sn, NULL);
    put_str(o, " ");
    put_u64(o, sn->count);
    put_str(o, "\n");
}

/* Appends one (uninitialised) slot to the snapshot array; NULL when out of memory. */
static struct snap *snap_push(struct snap **snaps, size_t *n, size_t *cap)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct snap *p = br_realloc(*snaps, ncap * sizeof(*p));
        if (!p) {
            return NULL;
        }
        *snaps = p;
        *cap = ncap;
    }
    return &(*snaps)[(*n)++];
}

/* Copies every shard's series of family fi into *snaps_out (caller frees), unsorted. */
static int snapshot(br_metrics *m, size_t fi, struct snap **snaps_out, size_t *n_out)
{
    const struct family *f = &m->families[fi];
    struct snap *snaps = NULL;
    size_t n = 0;
    size_t cap = 0;
    int rc = BR_OK;
    for (unsigned i = 0; i <= m->n_shards && rc == BR_OK; i++) {
        struct shard *sh = m->shards[i];
        pthread_mutex_lock(&sh->mu);
        const struct table *t = &sh->tables[fi];
        for (size_t j = 0; j < t->n_slots; j++) {
            const struct series *s = t->slots[j];
            if (!s) {
                continue;
            }
            struct snap *sn = snap_push(&snaps, &n, &cap);
            if (!sn) {
                rc = BR_ERR_NOMEM;
                break;
            }
            sn->s = s;
            sn->n_labels = f->n_labels;
            sn->value = s->value;
            sn->sum = s->sum;
            sn->count = s->count;
            if (f->type == BR_METRIC_TYPE_HISTOGRAM) {
                memcpy(sn->buckets, s->buckets, (f->n_buckets + 1) * sizeof(uint64_t));
            }
        }
        pthread_mutex_unlock(&sh->mu);
    }
    if (rc != BR_OK) {
        br_free(snaps);
        return rc;
    }
    *snaps_out = snaps;
    *n_out = n;
    return BR_OK;
}

/* Sums snaps[from, to) (equal label values) into snaps[from]. */
static void merge_run(const struct family *f, struct snap *snaps, size_t from, size_t to)
{
    struct snap *d = &snaps[from];
    for (size_t k = from + 1; k < to; k++) {
        d->value += snaps[k].value;
        d->sum += snaps[k].sum;
        d->count += snaps[k].count;
        for (size_t b = 0; f->type == BR_METRIC_TYPE_HISTOGRAM && b <= f->n_buckets; b++) {
            d->buckets[b] += snaps[k].buckets[b];
        }
    }
}

static const char *type_name(enum br_metric_type t)
{
    switch (t) {
    case BR_METRIC_TYPE_COUNTER:
        return "counter";
    case BR_METRIC_TYPE_GAUGE:
        return "gauge";
    default:
        return "histogram";
    }
}

static int render_family(br_metrics *m, size_t fi, struct out *o)
{
    const struct family *f = &m->families[fi];
    struct snap *snaps = NULL;
    size_t n = 0;
    int rc = snapshot(m, fi, &snaps, &n);
    if (rc != BR_OK) {
        return rc;
    }
    if (*f->help) {
        put_str(o, "# HELP ");
        put_str(o, f->name);
        put_str(o, " ");
        put_escaped(o, f->help, false);
        put_str(o, "\n");
    }
    put_str(o, "# TYPE ");
    put_str(o, f->name);
    put_str(o, " ");
    put_str(o, type_name(f->type));
    put_str(o, "\n");
    if (n == 0 && f->n_labels == 0) {
        /* An unlabelled family has exactly one series, which exists from the start. */
        struct snap zero = {0};
        put_samples(o, f, &zero);
    }
    if (n > 1) {
        qsort(snaps, n, sizeof(*snaps), cmp_snap);
    }
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && cmp_snap(&snaps[i], &snaps[j]) == 0) {
            j++;
        }
        merge_run(f, snaps, i, j);
        put_samples(o, f, &snaps[i]);
        i = j;
    }
    br_free(snaps);
    return o->rc;
}

int br_metrics_render(br_metrics *m, struct br_buf *out)
{
    if (!m || !out) {
        return BR_ERR_INVAL;
    }
    struct out o = {out, BR_OK};
    for (size_t fi = 0; fi < m->n_families && o.rc == BR_OK; fi++) {
        int rc = render_family(m, fi, &o);
        if (rc != BR_OK) {
            return rc;
        }
    }
    return o.rc;
}
