/* SPDX-License-Identifier: MIT */
/*
 * The learned router's model: loading and validating BRRT files (layout in classifier.h),
 * scoring prompts with the feature extractor's dot products, and writing files for
 * `brigade train`. The loader reads the whole file (at most BR_CLASSIFIER_MAX_FILE bytes),
 * checks the CRC first and then every field against its range and the exact file size, so a
 * corrupted or hostile file is refused with a reason, and expands sparse weights into one
 * dense interleaved array (scoring touches one cache line per feature for all outputs).
 */
#include "route/classifier.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"

#define HEADER_BYTES 72
#define MAX_WEIGHT   1e6f

struct br_classifier {
    enum br_classifier_kind kind;
    enum br_classifier_combine combine;
    struct br_features_config fc;
    size_t n_sets;
    size_t n_outputs;
    size_t dim;
    float *w; /* [dim * n_sets] interleaved */
    double bias[BR_CLASSIFIER_MAX_SETS];
    double cost[BR_CLASSIFIER_MAX_SETS];
    double quality[BR_CLASSIFIER_MAX_SETS];
    char *names[BR_CLASSIFIER_MAX_SETS];
    double threshold;
    char *notes;
};

/* ---- CRC-32 (IEEE 802.3, reflected), as zlib computes it ---- */

static uint32_t crc32_ieee(const unsigned char *p, size_t n)
{
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        }
        table[i] = c;
    }
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    }
    return crc ^ 0xffffffffu;
}

/* ---- reading ---- */

struct cursor {
    const unsigned char *p;
    size_t n;
    size_t pos;
};

static int need(const struct cursor *c, size_t k)
{
    return c->n - c->pos >= k;
}

static uint32_t get_u32(struct cursor *c)
{
    const unsigned char *b = c->p + c->pos;
    c->pos += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint16_t get_u16(struct cursor *c)
{
    const unsigned char *b = c->p + c->pos;
    c->pos += 2;
    return (uint16_t)(b[0] | b[1] << 8);
}

static float get_f32(struct cursor *c)
{
    uint32_t u = get_u32(c);
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

size_t br_classifier_dim(enum br_classifier_kind kind, const struct br_features_config *fc)
{
    size_t d = br_features_dim(fc);
    return kind == BR_CLASSIFIER_VERIFIER ? d + BR_FEATURES_N_ANSWER : d;
}

static int valid_name(const unsigned char *s, size_t n)
{
    if (n == 0 || n > BR_CLASSIFIER_MAX_NAME) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* Number of outputs a kind/combine pair gives for n_sets sets, 0 when the pair is invalid. */
static size_t outputs_for(uint32_t kind, uint32_t combine, size_t n_sets)
{
    switch (kind) {
    case BR_CLASSIFIER_BINARY:
        if (combine == BR_CLASSIFIER_COMBINE_NONE && n_sets == 1) {
            return 1;
        }
        if (combine == BR_CLASSIFIER_COMBINE_DIFF && n_sets == 2) {
            return 1;
        }
        return 0;
    case BR_CLASSIFIER_NMODEL:
        return combine == BR_CLASSIFIER_COMBINE_NONE && n_sets >= 1 ? n_sets : 0;
    case BR_CLASSIFIER_VERIFIER:
        return combine == BR_CLASSIFIER_COMBINE_NONE && n_sets == 1 ? 1 : 0;
    default:
        return 0;
    }
}

struct header {
    uint32_t version, kind, combine, fversion, encoding, n_rows, meta_bytes, reserved;
    size_t n_sets, dim;
    float threshold;
};

static int read_header(struct cursor *cur, struct br_classifier *c, struct header *h, char *err,
                       size_t errlen)
{
    if (memcmp(cur->p, "BRRT", 4) != 0) {
        br_err_printf(err, errlen, "not a brigade router model (bad magic)");
        return BR_ERR_PARSE;
    }
    cur->pos = 4;
    h->version = get_u32(cur);
    h->kind = get_u32(cur);
    h->combine = get_u32(cur);
    h->fversion = get_u32(cur);
    c->fc.hash_bits = get_u32(cur);
    c->fc.flags = get_u32(cur);
    c->fc.char_min = get_u32(cur);
    c->fc.char_max = get_u32(cur);
    c->fc.max_bytes = get_u32(cur);
    c->fc.seed = get_u32(cur);
    h->n_sets = get_u32(cur);
    h->dim = get_u32(cur);
    h->encoding = get_u32(cur);
    h->n_rows = get_u32(cur);
    h->meta_bytes = get_u32(cur);
    h->threshold = get_f32(cur);
    h->reserved = get_u32(cur);
    if (h->version != BR_CLASSIFIER_VERSION) {
        br_err_printf(err, errlen, "unsupported model version %u (this brigade reads %d)",
                      (unsigned)h->version, BR_CLASSIFIER_VERSION);
        return BR_ERR_UNSUPPORTED;
    }
    if (h->fversion != BR_FEATURES_VERSION) {
        br_err_printf(err, errlen, "model uses feature version %u, this brigade computes %d",
                      (unsigned)h->fversion, BR_FEATURES_VERSION);
        return BR_ERR_UNSUPPORTED;
    }
    if (br_features_config_check(&c->fc) != BR_OK) {
        br_err_printf(err, errlen,
                      "invalid feature configuration (hash bits %u, flags 0x%x, n-grams %u-%u)",
                      (unsigned)c->fc.hash_bits, (unsigned)c->fc.flags, (unsigned)c->fc.char_min,
                      (unsigned)c->fc.char_max);
        return BR_ERR_PARSE;
    }
    if (h->n_sets < 1 || h->n_sets > BR_CLASSIFIER_MAX_SETS) {
        br_err_printf(err, errlen, "invalid number of weight sets %zu (1..%d)", h->n_sets,
                      BR_CLASSIFIER_MAX_SETS);
        return BR_ERR_PARSE;
    }
    c->n_outputs = outputs_for(h->kind, h->combine, h->n_sets);
    if (c->n_outputs == 0) {
        br_err_printf(err, errlen, "invalid kind %u / combine %u with %zu weight sets",
                      (unsigned)h->kind, (unsigned)h->combine, h->n_sets);
        return BR_ERR_PARSE;
    }
    c->kind = (enum br_classifier_kind)h->kind;
    c->combine = (enum br_classifier_combine)h->combine;
    c->n_sets = h->n_sets;
    c->dim = br_classifier_dim(c->kind, &c->fc);
    if (h->dim != c->dim) {
        br_err_printf(err, errlen, "dimension %zu does not match the feature configuration (%zu)",
                      h->dim, c->dim);
        return BR_ERR_PARSE;
    }
    if (h->encoding > 1 || (h->encoding == 0 && h->n_rows != h->dim) || h->n_rows > h->dim) {
        br_err_printf(err, errlen, "invalid weight encoding %u with %u rows", (unsigned)h->encoding,
                      (unsigned)h->n_rows);
        return BR_ERR_PARSE;
    }
    if (h->reserved != 0) {
        br_err_printf(err, errlen, "reserved header field is not zero");
        return BR_ERR_PARSE;
    }
    c->threshold = (double)h->threshold;
    return BR_OK;
}

static int read_meta(struct cursor *cur, struct br_classifier *c, const struct header *h, char *err,
                     size_t errlen)
{
    size_t end = cur->pos + h->meta_bytes;
    for (size_t s = 0; s < c->n_sets; s++) {
        if (cur->pos + 2 > end) {
            br_err_printf(err, errlen, "metadata truncated at weight set %zu", s);
            return BR_ERR_PARSE;
        }
        size_t len = get_u16(cur);
        if (cur->pos + len + 12 > end || !valid_name(cur->p + cur->pos, len)) {
            br_err_printf(err, errlen, "invalid name of weight set %zu", s);
            return BR_ERR_PARSE;
        }
        c->names[s] = br_strndup((const char *)cur->p + cur->pos, len);
        if (!c->names[s]) {
            return BR_ERR_NOMEM;
        }
        cur->pos += len;
        float b = get_f32(cur);
        float cost = get_f32(cur);
        float q = get_f32(cur);
        if (!isfinite(b) || fabsf(b) > MAX_WEIGHT || (!isnan(cost) && !isfinite(cost)) ||
            (!isnan(q) && !isfinite(q))) {
            br_err_printf(err, errlen, "invalid bias, cost or quality of weight set %zu", s);
            return BR_ERR_PARSE;
        }
        c->bias[s] = (double)b;
        c->cost[s] = (double)cost;
        c->quality[s] = (double)q;
    }
    if (cur->pos + 4 > end) {
        br_err_printf(err, errlen, "metadata truncated before the notes");
        return BR_ERR_PARSE;
    }
    size_t nl = get_u32(cur);
    if (nl > BR_CLASSIFIER_MAX_NOTES || cur->pos + nl != end ||
        memchr(cur->p + cur->pos, 0, nl) != NULL) {
        br_err_printf(err, errlen, "invalid notes (%zu bytes)", nl);
        return BR_ERR_PARSE;
    }
    c->notes = br_strndup((const char *)cur->p + cur->pos, nl);
    if (!c->notes) {
        return BR_ERR_NOMEM;
    }
    cur->pos = end;
    return BR_OK;
}

static int read_weights(struct cursor *cur, struct br_classifier *c, const struct header *h,
                        char *err, size_t errlen)
{
    size_t ns = c->n_sets;
    size_t row_bytes = ns * 4 + (h->encoding == 1 ? 4 : 0);
    if ((cur->n - cur->pos - 4) / row_bytes < h->n_rows ||
        cur->pos + (size_t)h->n_rows * row_bytes + 4 != cur->n) {
        br_err_printf(err, errlen, "file size does not match %u weight rows of %zu bytes",
                      (unsigned)h->n_rows, row_bytes);
        return BR_ERR_PARSE;
    }
    c->w = br_calloc(c->dim * ns, sizeof(float));
    if (!c->w) {
        return BR_ERR_NOMEM;
    }
    uint64_t next = 0;
    for (size_t r = 0; r < h->n_rows; r++) {
        uint64_t row = r;
        if (h->encoding == 1) {
            row = get_u32(cur);
            if (row < next || row >= c->dim) {
                br_err_printf(err, errlen,
                              "sparse weight row %zu: index %llu out of order or range", r,
                              (unsigned long long)row);
                return BR_ERR_PARSE;
            }
            next = row + 1;
        }
        for (size_t s = 0; s < ns; s++) {
            float v = get_f32(cur);
            if (!isfinite(v) || fabsf(v) > MAX_WEIGHT) {
                br_err_printf(err, errlen,
                              "weight %llu of set %zu is not a finite number below 1e6",
                              (unsigned long long)row, s);
                return BR_ERR_PARSE;
            }
            c->w[row * ns + s] = v;
        }
    }
    return BR_OK;
}

static int parse(const unsigned char *p, size_t n, br_classifier **out, char *err, size_t errlen)
{
    int rc;
    struct header h;
    struct cursor cur = {p, n, 0};
    struct br_classifier *c = NULL;
    *out = NULL;
    if (n < HEADER_BYTES + 8) {
        br_err_printf(err, errlen, "truncated model (%zu bytes)", n);
        return BR_ERR_PARSE;
    }
    if (n > BR_CLASSIFIER_MAX_FILE) {
        br_err_printf(err, errlen, "model too large (%zu bytes)", n);
        return BR_ERR_LIMIT;
    }
    c = br_calloc(1, sizeof(*c));
    if (!c) {
        return BR_ERR_NOMEM;
    }
    rc = read_header(&cur, c, &h, err, errlen);
    if (rc != BR_OK) {
        goto fail;
    }
    {
        struct cursor tail = {p, n, n - 4};
        uint32_t want = get_u32(&tail);
        if (crc32_ieee(p, n - 4) != want) {
            br_err_printf(err, errlen, "checksum mismatch (corrupted or truncated model)");
            rc = BR_ERR_PARSE;
            goto fail;
        }
    }
    if (h.meta_bytes > n - HEADER_BYTES - 4) {
        br_err_printf(err, errlen, "metadata length %u beyond the end of the file",
                      (unsigned)h.meta_bytes);
        rc = BR_ERR_PARSE;
        goto fail;
    }
    rc = read_meta(&cur, c, &h, err, errlen);
    if (rc != BR_OK) {
        goto fail;
    }
    if (!need(&cur, 4)) {
        rc = BR_ERR_PARSE;
        goto fail;
    }
    rc = read_weights(&cur, c, &h, err, errlen);
    if (rc != BR_OK) {
        goto fail;
    }
    *out = c;
    return BR_OK;
fail:
    if (rc == BR_ERR_NOMEM) {
        br_err_printf(err, errlen, "out of memory");
    }
    br_classifier_free(c);
    return rc;
}

int br_classifier_load_mem(const void *data, size_t n, br_classifier **out, char *err,
                           size_t errlen)
{
    if (!out || (!data && n)) {
        return BR_ERR_INVAL;
    }
    /* Parsing reads straight from the caller's bytes and copies what it keeps. */
    return parse(data, n, out, err, errlen);
}

int br_classifier_load(const char *path, br_classifier **out, char *err, size_t errlen)
{
    int rc;
    unsigned char *buf = NULL;
    char why[192] = "";
    long size;
    FILE *f;
    *out = NULL;
    f = fopen(path, "rb");
    if (!f) {
        rc = br_err_from_errno(errno);
        br_err_printf(err, errlen, "%s: %s", path, br_strerror(rc));
        return rc;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        br_err_printf(err, errlen, "%s: cannot determine the file size", path);
        rc = BR_ERR_IO;
        goto out;
    }
    if ((size_t)size > BR_CLASSIFIER_MAX_FILE) {
        br_err_printf(err, errlen, "%s: model too large (%ld bytes)", path, size);
        rc = BR_ERR_LIMIT;
        goto out;
    }
    buf = br_malloc(size ? (size_t)size : 1);
    if (!buf) {
        br_err_printf(err, errlen, "%s: out of memory", path);
        rc = BR_ERR_NOMEM;
        goto out;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        br_err_printf(err, errlen, "%s: read error", path);
        rc = BR_ERR_IO;
        goto out;
    }
    rc = parse(buf, (size_t)size, out, why, sizeof(why));
    if (rc != BR_OK) {
        br_err_printf(err, errlen, "%s: %s", path, why);
    }
out:
    br_free(buf);
    (void)fclose(f);
    return rc;
}

void br_classifier_free(br_classifier *c)
{
    if (!c) {
        return;
    }
    for (size_t s = 0; s < BR_CLASSIFIER_MAX_SETS; s++) {
        br_free(c->names[s]);
    }
    br_free(c->notes);
    br_free(c->w);
    br_free(c);
}

/* ---- accessors ---- */

size_t br_classifier_n_outputs(const br_classifier *c)
{
    return c->n_outputs;
}

const char *br_classifier_output_name(const br_classifier *c, size_t i)
{
    if (i >= c->n_outputs) {
        return NULL;
    }
    if (c->kind == BR_CLASSIFIER_BINARY) {
        return "strong";
    }
    if (c->kind == BR_CLASSIFIER_VERIFIER) {
        return "escalate";
    }
    return c->names[i];
}

enum br_classifier_kind br_classifier_kind(const br_classifier *c)
{
    return c->kind;
}

const struct br_features_config *br_classifier_features(const br_classifier *c)
{
    return &c->fc;
}

int br_classifier_output_index(const br_classifier *c, const char *name)
{
    for (size_t i = 0; i < c->n_outputs; i++) {
        const char *o = br_classifier_output_name(c, i);
        if (o && strcmp(o, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

double br_classifier_output_cost(const br_classifier *c, size_t i)
{
    return (i < c->n_outputs && c->kind == BR_CLASSIFIER_NMODEL) ? c->cost[i] : NAN;
}

double br_classifier_output_quality(const br_classifier *c, size_t i)
{
    return (i < c->n_outputs && c->kind == BR_CLASSIFIER_NMODEL) ? c->quality[i] : NAN;
}

double br_classifier_threshold(const br_classifier *c)
{
    return c->threshold;
}

const char *br_classifier_notes(const br_classifier *c)
{
    return c->notes ? c->notes : "";
}

/* ---- scoring ---- */

static double sigmoid(double z)
{
    if (z >= 0) {
        return 1.0 / (1.0 + exp(-z));
    }
    double e = exp(z);
    return e / (1.0 + e);
}

static void finish(const br_classifier *c, const double *z, double *out)
{
    if (c->combine == BR_CLASSIFIER_COMBINE_DIFF) {
        out[0] = 0.5 * (1.0 + sigmoid(z[0] + c->bias[0]) - sigmoid(z[1] + c->bias[1]));
        return;
    }
    for (size_t s = 0; s < c->n_sets; s++) {
        out[s] = sigmoid(z[s] + c->bias[s]);
    }
}

int br_classifier_predict(const br_classifier *c, const char *text, size_t len, double *out,
                          size_t n_out)
{
    double z[BR_CLASSIFIER_MAX_SETS];
    if (!c || !out || n_out < c->n_outputs || c->kind == BR_CLASSIFIER_VERIFIER) {
        return BR_ERR_INVAL;
    }
    int rc = br_features_dot(&c->fc, text, len, c->w, c->n_sets, z);
    if (rc != BR_OK) {
        return rc;
    }
    finish(c, z, out);
    return BR_OK;
}

double br_classifier_score(const br_classifier *c, const char *text, size_t len)
{
    double p = NAN;
    if (!c || c->n_outputs != 1 || br_classifier_predict(c, text, len, &p, 1) != BR_OK) {
        return NAN;
    }
    return p;
}

int br_classifier_verify(const br_classifier *c, const char *prompt, size_t plen,
                         const char *answer, size_t alen, double *out)
{
    double zp;
    double za;
    double checks[BR_FEATURES_N_ANSWER];
    if (!c || !out || c->kind != BR_CLASSIFIER_VERIFIER) {
        return BR_ERR_INVAL;
    }
    int rc = br_features_dot(&c->fc, prompt, plen, c->w, 1, &zp);
    if (rc == BR_OK) {
        rc = br_features_dot_answer(&c->fc, answer, alen, c->w, 1, &za);
    }
    if (rc != BR_OK) {
        return rc;
    }
    br_features_answer_checks(prompt, plen, answer, alen, checks);
    const float *wa = c->w + br_features_dim(&c->fc);
    double z = zp + za;
    for (size_t k = 0; k < BR_FEATURES_N_ANSWER; k++) {
        z += checks[k] * (double)wa[k];
    }
    *out = sigmoid(z + c->bias[0]);
    return BR_OK;
}

int br_classifier_choose(const double *quality, const double *cost, size_t n, double margin,
                         double lambda, size_t *out)
{
    double best = -INFINITY;
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(quality[i]) || isnan(cost[i]) || cost[i] < 0) {
            continue;
        }
        double u = quality[i] - lambda * cost[i];
        if (u > best) {
            best = u;
        }
        any = 1;
    }
    if (!any) {
        return BR_ERR_NOTFOUND;
    }
    size_t pick = n;
    for (size_t i = 0; i < n; i++) {
        if (isnan(quality[i]) || isnan(cost[i]) || cost[i] < 0) {
            continue;
        }
        double u = quality[i] - lambda * cost[i];
        if (u >= best - margin && (pick == n || cost[i] < cost[pick])) {
            pick = i;
        }
    }
    *out = pick;
    return BR_OK;
}

/* ---- writing ---- */

struct wbuf {
    unsigned char *p;
    size_t n;
    size_t cap;
};

static void put_u32(struct wbuf *b, uint32_t v)
{
    unsigned char *q = b->p + b->n;
    q[0] = (unsigned char)v;
    q[1] = (unsigned char)(v >> 8);
    q[2] = (unsigned char)(v >> 16);
    q[3] = (unsigned char)(v >> 24);
    b->n += 4;
}

static void put_f32(struct wbuf *b, double v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    put_u32(b, u);
}

static int spec_check(const struct br_classifier_spec *s, size_t *meta_out)
{
    if (!s || br_features_config_check(&s->features) != BR_OK || !s->weights ||
        outputs_for((uint32_t)s->kind, (uint32_t)s->combine, s->n_sets) == 0 ||
        s->n_sets > BR_CLASSIFIER_MAX_SETS) {
        return BR_ERR_INVAL;
    }
    size_t meta = 4;
    for (size_t i = 0; i < s->n_sets; i++) {
        const char *nm = s->sets[i].name;
        if (!nm || !valid_name((const unsigned char *)nm, strlen(nm)) ||
            !isfinite(s->sets[i].bias) || fabs(s->sets[i].bias) > MAX_WEIGHT) {
            return BR_ERR_INVAL;
        }
        meta += 2 + strlen(nm) + 12;
    }
    size_t nl = s->notes ? strlen(s->notes) : 0;
    if (nl > BR_CLASSIFIER_MAX_NOTES) {
        return BR_ERR_INVAL;
    }
    *meta_out = meta + nl;
    size_t total = br_classifier_dim(s->kind, &s->features) * s->n_sets;
    for (size_t j = 0; j < total; j++) {
        if (!isfinite(s->weights[j]) || fabsf(s->weights[j]) > MAX_WEIGHT) {
            return BR_ERR_INVAL;
        }
    }
    return BR_OK;
}

int br_classifier_write(const struct br_classifier_spec *spec, void **data_out, size_t *n_out)
{
    size_t meta;
    int rc = spec_check(spec, &meta);
    if (rc != BR_OK) {
        return rc;
    }
    const size_t ns = spec->n_sets;
    const size_t dim = br_classifier_dim(spec->kind, &spec->features);
    size_t nz_rows = 0;
    for (size_t j = 0; j < dim; j++) {
        for (size_t s = 0; s < ns; s++) {
            if (spec->weights[j * ns + s] != 0.0f) {
                nz_rows++;
                break;
            }
        }
    }
    int sparse = nz_rows * (ns * 4 + 4) < dim * ns * 4;
    size_t rows = sparse ? nz_rows : dim;
    size_t row_bytes = ns * 4 + (sparse ? 4 : 0);
    struct wbuf b = {0};
    b.cap = HEADER_BYTES + meta + rows * row_bytes + 4;
    b.p = br_malloc(b.cap);
    if (!b.p) {
        return BR_ERR_NOMEM;
    }
    memcpy(b.p, "BRRT", 4);
    b.n = 4;
    put_u32(&b, BR_CLASSIFIER_VERSION);
    put_u32(&b, (uint32_t)spec->kind);
    put_u32(&b, (uint32_t)spec->combine);
    put_u32(&b, BR_FEATURES_VERSION);
    put_u32(&b, spec->features.hash_bits);
    put_u32(&b, spec->features.flags);
    put_u32(&b, spec->features.char_min);
    put_u32(&b, spec->features.char_max);
    put_u32(&b, spec->features.max_bytes);
    put_u32(&b, spec->features.seed);
    put_u32(&b, (uint32_t)ns);
    put_u32(&b, (uint32_t)dim);
    put_u32(&b, sparse ? 1u : 0u);
    put_u32(&b, (uint32_t)rows);
    put_u32(&b, (uint32_t)meta);
    put_f32(&b, spec->threshold);
    put_u32(&b, 0);
    for (size_t s = 0; s < ns; s++) {
        size_t len = strlen(spec->sets[s].name);
        b.p[b.n++] = (unsigned char)len;
        b.p[b.n++] = (unsigned char)(len >> 8);
        memcpy(b.p + b.n, spec->sets[s].name, len);
        b.n += len;
        put_f32(&b, spec->sets[s].bias);
        put_f32(&b, spec->sets[s].cost_usd);
        put_f32(&b, spec->sets[s].quality);
    }
    size_t nl = spec->notes ? strlen(spec->notes) : 0;
    put_u32(&b, (uint32_t)nl);
    if (nl) {
        memcpy(b.p + b.n, spec->notes, nl);
        b.n += nl;
    }
    for (size_t j = 0; j < dim; j++) {
        const float *row = spec->weights + j * ns;
        if (sparse) {
            int nz = 0;
            for (size_t s = 0; s < ns; s++) {
                nz |= row[s] != 0.0f;
            }
            if (!nz) {
                continue;
            }
            put_u32(&b, (uint32_t)j);
        }
        for (size_t s = 0; s < ns; s++) {
            put_f32(&b, row[s]);
        }
    }
    put_u32(&b, crc32_ieee(b.p, b.n));
    *data_out = b.p;
    *n_out = b.n;
    return BR_OK;
}

int br_classifier_save(const struct br_classifier_spec *spec, const char *path, char *err,
                       size_t errlen)
{
    void *data = NULL;
    size_t n = 0;
    char tmp[4096];
    int rc = br_classifier_write(spec, &data, &n);
    if (rc != BR_OK) {
        br_err_printf(err, errlen, "%s: cannot serialise the model: %s", path, br_strerror(rc));
        return rc;
    }
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        br_free(data);
        br_err_printf(err, errlen, "%s: path too long", path);
        return BR_ERR_INVAL;
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = br_err_from_errno(errno);
        br_err_printf(err, errlen, "%s: %s", tmp, br_strerror(rc));
        br_free(data);
        return rc;
    }
    int ok = fwrite(data, 1, n, f) == n;
    ok = (fclose(f) == 0) && ok;
    br_free(data);
    if (!ok || rename(tmp, path) != 0) {
        rc = br_err_from_errno(errno);
        br_err_printf(err, errlen, "%s: write failed: %s", path, br_strerror(rc));
        (void)remove(tmp);
        return rc;
    }
    return BR_OK;
}
