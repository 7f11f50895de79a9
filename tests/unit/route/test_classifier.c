/* SPDX-License-Identifier: MIT */
/*
 * The learned router's features and model files: features deterministic, bounded and equal
 * through both paths (buffer and dot product); answer checks on hand-made answers; model
 * write/load round trips (dense and sparse, every kind) scoring exactly as computed by hand;
 * every malformed file refused (each truncation, each flipped byte, bad magic, version, sizes,
 * checksum, non-finite weights); the N-model choice rule.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/err.h"
#include "route/classifier.h"
#include "route/features.h"

static const char binary_text[] = "\xff\xfe\x00\x01 binary \x80\x80 junk \t\t\r\n\n\n";

static const char *const texts[] = {
    "",
    "What is 2+2?",
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
    "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:",
    "def f(x):\n    return {x: x * 2}; // code `here`\n",
    "Janet\xe2\x80\x99s ducks lay 16 eggs per day. She eats three for breakfast every morning "
    "and bakes muffins for her friends every day with four. How much in dollars does she make?",
    binary_text,
};

#define N_TEXTS (sizeof(texts) / sizeof(texts[0]))

static size_t text_len(size_t i)
{
    /* the binary text contains a NUL: use its full literal length */
    return texts[i] == binary_text ? sizeof(binary_text) - 1 : strlen(texts[i]);
}

static void config_all(struct br_features_config *fc)
{
    br_features_config_default(fc);
    fc->flags = BR_FEATURES_ALL;
    fc->hash_bits = 12;
    fc->char_min = 2;
    fc->char_max = 5;
}

static void features_deterministic_and_bounded(void **state)
{
    (void)state;
    struct br_features_config fc;
    config_all(&fc);
    assert_int_equal(br_features_config_check(&fc), BR_OK);
    size_t dim = br_features_dim(&fc);
    assert_int_equal(dim, 4096 + BR_FEATURES_N_STRUCT);
    for (size_t t = 0; t < N_TEXTS; t++) {
        size_t len = text_len(t);
        size_t cap = br_features_max(&fc, len);
        struct br_feature *a = calloc(cap + 1, sizeof(*a));
        struct br_feature *b = calloc(cap + 1, sizeof(*b));
        size_t na, nb;
        assert_int_equal(br_features_extract(&fc, texts[t], len, a, cap, &na), BR_OK);
        assert_int_equal(br_features_extract(&fc, texts[t], len, b, cap, &nb), BR_OK);
        assert_int_equal(na, nb);
        assert_true(na <= cap);
        assert_memory_equal(a, b, na * sizeof(*a));
        for (size_t i = 0; i < na; i++) {
            assert_true(a[i].index < dim);
            assert_true(isfinite(a[i].value));
            assert_true(fabsf(a[i].value) <= 16.0f);
        }
        free(a);
        free(b);
    }
}

static void features_truncate_and_reject(void **state)
{
    (void)state;
    struct br_features_config fc;
    config_all(&fc);
    struct br_feature buf[4];
    size_t n = 99;
    assert_int_equal(br_features_extract(&fc, texts[2], strlen(texts[2]), buf, 4, &n),
                     BR_ERR_LIMIT);
    assert_int_equal(n, 4);
    struct br_features_config bad = fc;
    bad.hash_bits = 40;
    assert_int_equal(br_features_extract(&bad, "x", 1, buf, 4, &n), BR_ERR_INVAL);
    bad = fc;
    bad.char_min = 6;
    bad.char_max = 3;
    assert_int_equal(br_features_config_check(&bad), BR_ERR_INVAL);
    bad = fc;
    bad.flags = 0x100;
    assert_int_equal(br_features_config_check(&bad), BR_ERR_INVAL);
    assert_int_equal(br_features_extract(&fc, NULL, 3, buf, 4, &n), BR_ERR_INVAL);
    assert_int_equal(br_features_extract(&fc, NULL, 0, buf, 4, &n), BR_OK);
}

/* The dot product path sees exactly the features the buffer path writes. */
static void features_dot_matches_extract(void **state)
{
    (void)state;
    struct br_features_config fc;
    config_all(&fc);
    size_t dim = br_features_dim(&fc);
    const size_t n_out = 3;
    float *w = calloc(dim * n_out, sizeof(float));
    unsigned seed = 7;
    for (size_t j = 0; j < dim * n_out; j++) {
        seed = seed * 1103515245u + 12345u;
        w[j] = (float)((int)(seed >> 16) % 2001 - 1000) / 1000.0f;
    }
    for (size_t t = 0; t < N_TEXTS; t++) {
        size_t len = text_len(t);
        size_t cap = br_features_max(&fc, len);
        struct br_feature *f = calloc(cap + 1, sizeof(*f));
        size_t n;
        assert_int_equal(br_features_extract(&fc, texts[t], len, f, cap, &n), BR_OK);
        double want[3] = {0, 0, 0}, got[3];
        for (size_t i = 0; i < n; i++) {
            for (size_t o = 0; o < n_out; o++) {
                want[o] += (double)f[i].value * (double)w[f[i].index * n_out + o];
            }
        }
        assert_int_equal(br_features_dot(&fc, texts[t], len, w, n_out, got), BR_OK);
        for (size_t o = 0; o < n_out; o++) {
            assert_true(fabs(got[o] - want[o]) <= 1e-5 * (1 + fabs(want[o])));
        }
        /* answers live in their own namespace */
        assert_int_equal(br_features_extract_answer(&fc, texts[t], len, f, cap, &n), BR_OK);
        memset(want, 0, sizeof(want));
        for (size_t i = 0; i < n; i++) {
            assert_true(f[i].index < (1u << fc.hash_bits));
            for (size_t o = 0; o < n_out; o++) {
                want[o] += (double)f[i].value * (double)w[f[i].index * n_out + o];
            }
        }
        assert_int_equal(br_features_dot_answer(&fc, texts[t], len, w, n_out, got), BR_OK);
        for (size_t o = 0; o < n_out; o++) {
            assert_true(fabs(got[o] - want[o]) <= 1e-5 * (1 + fabs(want[o])));
        }
        free(f);
    }
    free(w);
}

/* Structural features read what the text shows. */
static void features_structural(void **state)
{
    (void)state;
    struct br_features_config fc;
    br_features_config_default(&fc);
    fc.flags = BR_FEATURES_STRUCT;
    struct br_feature f[BR_FEATURES_N_STRUCT];
    size_t n;
    const char *mc = "Which one?\nA. red\nB) blue\n(C) green\nD. none\nAnswer:";
    assert_int_equal(br_features_extract(&fc, mc, strlen(mc), f, BR_FEATURES_N_STRUCT, &n), BR_OK);
    double v[BR_FEATURES_N_STRUCT] = {0};
    uint32_t base = 1u << fc.hash_bits;
    for (size_t i = 0; i < n; i++) {
        assert_true(f[i].index >= base && f[i].index < base + BR_FEATURES_N_STRUCT);
        v[f[i].index - base] = f[i].value;
    }
    assert_string_equal(br_features_struct_name(11), "log_choices");
    assert_true(fabs(v[11] - log1p(4.0) / 3.0) < 1e-6); /* four choice lines */
    assert_true(v[26] == 1.0);                          /* has_choices */
    assert_true(v[17] == 1.0);                          /* ends with ':' */
    assert_true(fabs(v[8] - log1p(1.0) / 3.0) < 1e-6);  /* one question mark */
    assert_null(br_features_struct_name(BR_FEATURES_N_STRUCT));
}

/* A 1 MiB prompt is read through the head and tail window only. */
static void features_long_text_window(void **state)
{
    (void)state;
    struct br_features_config fc;
    br_features_config_default(&fc);
    size_t len = 1u << 20;
    char *t = malloc(len);
    for (size_t i = 0; i < len; i++) {
        t[i] = (char)("abc def 123 "[i % 12]);
    }
    size_t cap = br_features_max(&fc, len);
    assert_true(cap <= 2 * 4096 + BR_FEATURES_N_STRUCT);
    struct br_feature *f = calloc(cap, sizeof(*f));
    size_t n;
    assert_int_equal(br_features_extract(&fc, t, len, f, cap, &n), BR_OK);
    assert_true(n > 100 && n <= cap);
    free(f);
    free(t);
}

static double check(const char *prompt, const char *answer, size_t k)
{
    double v[BR_FEATURES_N_ANSWER];
    br_features_answer_checks(prompt, strlen(prompt), answer, strlen(answer), v);
    for (size_t i = 0; i < BR_FEATURES_N_ANSWER; i++) {
        assert_true(isfinite(v[i]));
    }
    return v[k];
}

static void answer_checks(void **state)
{
    (void)state;
    const char *p = "She has 16 eggs and eats 3. She sells the rest for $2 each.";
    const char *good = "16 - 3 = <<16-3=13>>13 eggs.\n13 * $2 = $<<13*2=26>>26\n#### 26";
    const char *bad = "16 - 3 = <<16-3=12>>12 eggs.\n12 * 2 = <<12*2=24>>24\n#### 24";
    const char *plain_bad = "So 16 - 3 = 14, and 14 x 2 = 28.\n#### 28";
    const char *cut = "She has 16 eggs, so she sells 16 - 3 = <<16-3=13>>13 and gets $<<13*2=2";
    assert_string_equal(br_features_answer_name(0), "has_final");
    assert_true(check(p, good, 0) == 1.0);             /* has_final */
    assert_true(check(p, good, 1) == 1.0);             /* integer final */
    assert_true(check(p, good, 7) == 0.0);             /* no bad annotation */
    assert_true(check(p, good, 16) == 0.0);            /* no bad plain equation */
    assert_true(check(p, good, 21) == 0.0);            /* final = last result */
    assert_true(check(p, bad, 7) == 1.0);              /* 16-3=12 is wrong */
    assert_true(fabs(check(p, bad, 6) - 0.5) < 1e-12); /* one of two annotations wrong */
    assert_true(check(p, plain_bad, 16) == 1.0);       /* 16 - 3 = 14 is wrong */
    assert_true(check(p, plain_bad, 0) == 1.0);
    assert_true(check(p, cut, 0) == 0.0);        /* no final answer */
    assert_true(check(p, cut, 13) == 1.0);       /* ends abruptly */
    assert_true(check(p, "#### 16", 12) == 1.0); /* final number appears in the prompt */
    assert_true(check(p, "I assume, however, that #### 7", 11) > 0.0); /* hedges */
    /* hostile inputs: deep parentheses, huge numbers, division by zero, no NULs needed */
    char deep[600];
    memset(deep, '(', 300);
    memcpy(deep + 300, "1/0=<<1/0=2>>", 13);
    deep[313] = 0;
    (void)check(deep, deep, 0);
    (void)check("", "<<99999999999999999999999999999999999999=1e400>><<", 0);
    (void)check("", "= = == <<=>> <<>> <<1+=2>> 1+ = 2 ((((", 0);
    double v[BR_FEATURES_N_ANSWER];
    br_features_answer_checks(NULL, 0, NULL, 0, v);
}

/* ---- model files ---- */

struct model_fixture {
    struct br_classifier_spec spec;
    float *w;
};

static void make_spec(struct model_fixture *m, enum br_classifier_kind kind, size_t n_sets,
                      double density)
{
    memset(m, 0, sizeof(*m));
    struct br_classifier_spec *s = &m->spec;
    s->kind = kind;
    s->combine = (kind == BR_CLASSIFIER_BINARY && n_sets == 2) ? BR_CLASSIFIER_COMBINE_DIFF
                                                               : BR_CLASSIFIER_COMBINE_NONE;
    config_all(&s->features);
    s->features.hash_bits = 10;
    s->n_sets = n_sets;
    static const char *const names[] = {"gpt-4-1106-preview", "mixtral", "claude", "llama"};
    for (size_t i = 0; i < n_sets; i++) {
        s->sets[i].name = names[i % 4];
        s->sets[i].bias = 0.25 * (double)i - 0.1;
        s->sets[i].cost_usd = 0.001 * (double)(i + 1);
        s->sets[i].quality = 0.5 + 0.1 * (double)i;
    }
    size_t dim = br_classifier_dim(kind, &s->features);
    m->w = calloc(dim * n_sets, sizeof(float));
    unsigned seed = 11;
    for (size_t j = 0; j < dim * n_sets; j++) {
        seed = seed * 1103515245u + 12345u;
        if ((double)((seed >> 8) % 1000) / 1000.0 < density) {
            m->w[j] = (float)((int)(seed >> 16) % 2001 - 1000) / 500.0f;
        }
    }
    s->weights = m->w;
    s->threshold = 0.42;
    s->notes = "unit test model";
}

static double sigmoid(double z)
{
    return 1.0 / (1.0 + exp(-z));
}

/* What a model should output for text, computed from the spec. */
static void expect(const struct br_classifier_spec *s, const char *text, double *out)
{
    double z[BR_CLASSIFIER_MAX_SETS];
    assert_int_equal(br_features_dot(&s->features, text, strlen(text), s->weights, s->n_sets, z),
                     BR_OK);
    if (s->combine == BR_CLASSIFIER_COMBINE_DIFF) {
        out[0] = 0.5 * (1.0 + sigmoid(z[0] + s->sets[0].bias) - sigmoid(z[1] + s->sets[1].bias));
        return;
    }
    for (size_t i = 0; i < s->n_sets; i++) {
        out[i] = sigmoid(z[i] + s->sets[i].bias);
    }
}

static void round_trip(enum br_classifier_kind kind, size_t n_sets, double density)
{
    struct model_fixture m;
    make_spec(&m, kind, n_sets, density);
    void *data = NULL;
    size_t n = 0;
    assert_int_equal(br_classifier_write(&m.spec, &data, &n), BR_OK);
    br_classifier *c = NULL;
    char err[256] = "";
    assert_int_equal(br_classifier_load_mem(data, n, &c, err, sizeof(err)), BR_OK);
    assert_int_equal(br_classifier_kind(c), kind);
    size_t n_out = kind == BR_CLASSIFIER_NMODEL ? n_sets : 1;
    assert_int_equal(br_classifier_n_outputs(c), n_out);
    assert_true(fabs(br_classifier_threshold(c) - 0.42) < 1e-6);
    assert_string_equal(br_classifier_notes(c), "unit test model");
    assert_memory_equal(br_classifier_features(c), &m.spec.features, sizeof(m.spec.features));
    if (kind == BR_CLASSIFIER_NMODEL) {
        assert_string_equal(br_classifier_output_name(c, 1), "mixtral");
        assert_int_equal(br_classifier_output_index(c, "mixtral"), 1);
        assert_true(fabs(br_classifier_output_cost(c, 1) - 0.002) < 1e-9);
        assert_true(fabs(br_classifier_output_quality(c, 1) - 0.6) < 1e-6);
    } else {
        assert_string_equal(br_classifier_output_name(c, 0),
                            kind == BR_CLASSIFIER_VERIFIER ? "escalate" : "strong");
        assert_true(isnan(br_classifier_output_cost(c, 0)));
    }
    assert_null(br_classifier_output_name(c, n_out));
    assert_int_equal(br_classifier_output_index(c, "nope"), -1);
    for (size_t t = 0; t < 5; t++) {
        double want[BR_CLASSIFIER_MAX_SETS], got[BR_CLASSIFIER_MAX_SETS];
        if (kind == BR_CLASSIFIER_VERIFIER) {
            double zp, za, ch[BR_FEATURES_N_ANSWER];
            const char *a = "2 + 2 = <<2+2=5>>5\n#### 5";
            assert_int_equal(
                br_features_dot(&m.spec.features, texts[t], strlen(texts[t]), m.w, 1, &zp), BR_OK);
            assert_int_equal(br_features_dot_answer(&m.spec.features, a, strlen(a), m.w, 1, &za),
                             BR_OK);
            br_features_answer_checks(texts[t], strlen(texts[t]), a, strlen(a), ch);
            double z = zp + za + m.spec.sets[0].bias;
            const float *wa = m.w + br_features_dim(&m.spec.features);
            for (size_t k = 0; k < BR_FEATURES_N_ANSWER; k++) {
                z += ch[k] * wa[k];
            }
            assert_int_equal(br_classifier_verify(c, texts[t], strlen(texts[t]), a, strlen(a), got),
                             BR_OK);
            assert_true(fabs(got[0] - sigmoid(z)) < 1e-6);
            assert_int_equal(br_classifier_predict(c, texts[t], strlen(texts[t]), got, 1),
                             BR_ERR_INVAL);
            continue;
        }
        expect(&m.spec, texts[t], want);
        assert_int_equal(br_classifier_predict(c, texts[t], strlen(texts[t]), got, n_out), BR_OK);
        for (size_t o = 0; o < n_out; o++) {
            assert_true(fabs(got[o] - want[o]) < 1e-6);
            assert_true(got[o] >= 0.0 && got[o] <= 1.0);
        }
        if (n_out == 1) {
            assert_true(fabs(br_classifier_score(c, texts[t], strlen(texts[t])) - want[0]) < 1e-6);
        } else {
            assert_true(isnan(br_classifier_score(c, texts[t], strlen(texts[t]))));
            assert_int_equal(br_classifier_predict(c, "x", 1, got, n_out - 1), BR_ERR_INVAL);
        }
        double v;
        assert_int_equal(br_classifier_verify(c, "x", 1, "y", 1, &v), BR_ERR_INVAL);
    }
    br_classifier_free(c);
    br_free(data);
    free(m.w);
}

static void model_round_trip(void **state)
{
    (void)state;
    round_trip(BR_CLASSIFIER_BINARY, 1, 1.0);  /* dense */
    round_trip(BR_CLASSIFIER_BINARY, 1, 0.05); /* sparse */
    round_trip(BR_CLASSIFIER_BINARY, 2, 0.3);  /* diff combine */
    round_trip(BR_CLASSIFIER_NMODEL, 4, 0.2);
    round_trip(BR_CLASSIFIER_NMODEL, 3, 1.0);
    round_trip(BR_CLASSIFIER_VERIFIER, 1, 0.5);
    br_classifier_free(NULL);
}

static void model_save_and_load_file(void **state)
{
    (void)state;
    struct model_fixture m;
    make_spec(&m, BR_CLASSIFIER_BINARY, 1, 0.1);
    char path[256];
    (void)snprintf(path, sizeof(path), "%s/test_classifier_%d.brr", BR_BINARY_DIR, (int)getpid());
    char err[512] = "";
    assert_int_equal(br_classifier_save(&m.spec, path, err, sizeof(err)), BR_OK);
    br_classifier *c = NULL;
    assert_int_equal(br_classifier_load(path, &c, err, sizeof(err)), BR_OK);
    double want;
    expect(&m.spec, texts[2], &want);
    assert_true(fabs(br_classifier_score(c, texts[2], strlen(texts[2])) - want) < 1e-6);
    br_classifier_free(c);
    /* a truncated file names itself and the problem */
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), 100), 0);
    fclose(f);
    assert_int_not_equal(br_classifier_load(path, &c, err, sizeof(err)), BR_OK);
    assert_null(c);
    assert_non_null(strstr(err, path));
    unlink(path);
    assert_int_equal(br_classifier_load(path, &c, err, sizeof(err)), BR_ERR_NOTFOUND);
    assert_non_null(strstr(err, path));
    /* unwritable specs */
    m.spec.n_sets = 3; /* binary with 3 sets */
    void *data;
    size_t n;
    assert_int_equal(br_classifier_write(&m.spec, &data, &n), BR_ERR_INVAL);
    m.spec.n_sets = 1;
    m.spec.sets[0].name = "";
    assert_int_equal(br_classifier_write(&m.spec, &data, &n), BR_ERR_INVAL);
    m.spec.sets[0].name = "strong";
    m.w[3] = NAN;
    assert_int_equal(br_classifier_write(&m.spec, &data, &n), BR_ERR_INVAL);
    free(m.w);
}

/* CRC-32 (IEEE), to re-seal files the tests corrupt on purpose. */
static uint32_t crc32_ref(const unsigned char *p, size_t n)
{
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) {
            crc = (crc & 1) ? 0xedb88320u ^ (crc >> 1) : crc >> 1;
        }
    }
    return crc ^ 0xffffffffu;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static void reseal(unsigned char *p, size_t n)
{
    put32(p + n - 4, crc32_ref(p, n - 4));
}

static int load_bytes(const unsigned char *p, size_t n, char *err, size_t errlen)
{
    br_classifier *c = NULL;
    int rc = br_classifier_load_mem(p, n, &c, err, errlen);
    if (rc == BR_OK) {
        br_classifier_free(c);
    } else {
        assert_null(c);
    }
    return rc;
}

/* Sets the u32 header field at off, reseals, expects refusal with a message. */
static void refuse_field(const unsigned char *good, size_t n, size_t off, uint32_t v)
{
    unsigned char *p = malloc(n);
    memcpy(p, good, n);
    put32(p + off, v);
    reseal(p, n);
    char err[256] = "";
    assert_int_not_equal(load_bytes(p, n, err, sizeof(err)), BR_OK);
    assert_true(err[0] != 0);
    free(p);
}

static void model_malformed_rejected(void **state)
{
    (void)state;
    struct model_fixture m;
    make_spec(&m, BR_CLASSIFIER_NMODEL, 2, 0.02);
    void *data = NULL;
    size_t n = 0;
    assert_int_equal(br_classifier_write(&m.spec, &data, &n), BR_OK);
    const unsigned char *good = data;
    char err[256];
    assert_int_equal(load_bytes(good, n, err, sizeof(err)), BR_OK);
    /* every truncation */
    for (size_t k = 0; k < n; k++) {
        assert_int_not_equal(load_bytes(good, k, err, sizeof(err)), BR_OK);
    }
    /* a trailing byte */
    unsigned char *p = malloc(n + 1);
    memcpy(p, good, n);
    p[n] = 0;
    assert_int_not_equal(load_bytes(p, n + 1, err, sizeof(err)), BR_OK);
    /* every flipped byte (the checksum catches what the fields do not) */
    for (size_t k = 0; k < n; k++) {
        memcpy(p, good, n);
        p[k] ^= 0x5a;
        assert_int_not_equal(load_bytes(p, n, err, sizeof(err)), BR_OK);
    }
    /* bad magic, with a valid checksum */
    memcpy(p, good, n);
    p[0] = 'X';
    reseal(p, n);
    assert_int_equal(load_bytes(p, n, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "magic"));
    /* bad checksum alone */
    memcpy(p, good, n);
    p[n - 1] ^= 1;
    assert_int_equal(load_bytes(p, n, err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "checksum"));
    free(p);
    /* absurd or inconsistent header fields */
    refuse_field(good, n, 4, 2);            /* version */
    refuse_field(good, n, 4, 0xffffffffu);  /* version */
    refuse_field(good, n, 8, 7);            /* kind */
    refuse_field(good, n, 12, 1);           /* diff combine on an N-model */
    refuse_field(good, n, 16, 99);          /* feature version */
    refuse_field(good, n, 20, 40);          /* hash bits */
    refuse_field(good, n, 20, 11);          /* hash bits vs dim */
    refuse_field(good, n, 24, 0x8000);      /* feature flags */
    refuse_field(good, n, 28, 9);           /* char_min > char_max */
    refuse_field(good, n, 36, 0x7fffffffu); /* window */
    refuse_field(good, n, 44, 0);           /* no weight sets */
    refuse_field(good, n, 44, 1000);        /* too many */
    refuse_field(good, n, 44, 3);           /* more sets than stored */
    refuse_field(good, n, 48, 0xffffffffu); /* dim */
    refuse_field(good, n, 52, 2);           /* encoding */
    refuse_field(good, n, 56, 0xffffffffu); /* rows */
    refuse_field(good, n, 56, 1);           /* rows vs size */
    refuse_field(good, n, 60, 0xfffffff0u); /* meta length */
    refuse_field(good, n, 60, 3);           /* meta length */
    refuse_field(good, n, 68, 1);           /* reserved */
    refuse_field(good, n, 72, 0xffff);      /* first name length */
    refuse_field(good, n, 72, 0);           /* empty name */
    br_free(data);
    free(m.w);

    /* a non-finite weight and a bias out of range, each sealed with a valid checksum */
    make_spec(&m, BR_CLASSIFIER_BINARY, 1, 1.0); /* dense: weights start after meta */
    assert_int_equal(br_classifier_write(&m.spec, &data, &n), BR_OK);
    p = data;
    uint32_t meta = (uint32_t)p[60] | (uint32_t)p[61] << 8;
    size_t w0 = 72 + meta;
    unsigned char save[4];
    memcpy(save, p + w0, 4);
    put32(p + w0, 0x7fc00000u); /* NaN */
    reseal(p, n);
    assert_int_equal(load_bytes(p, n, err, sizeof(err)), BR_ERR_PARSE);
    put32(p + w0, 0x7f800000u); /* +inf */
    reseal(p, n);
    assert_int_equal(load_bytes(p, n, err, sizeof(err)), BR_ERR_PARSE);
    memcpy(p + w0, save, 4);
    size_t bias_off = 72 + 2 + strlen(m.spec.sets[0].name);
    put32(p + bias_off, 0x7f000000u); /* 1.7e38 */
    reseal(p, n);
    assert_int_equal(load_bytes(p, n, err, sizeof(err)), BR_ERR_PARSE);
    br_free(data);
    free(m.w);
    assert_int_not_equal(load_bytes(NULL, 0, err, sizeof(err)), BR_OK);
}

/* Sparse rows must be strictly increasing and inside the dimension. */
static void model_sparse_rows_checked(void **state)
{
    (void)state;
    struct model_fixture m;
    make_spec(&m, BR_CLASSIFIER_BINARY, 1, 0.0);
    m.w[5] = 1.0f;
    m.w[9] = -1.0f;
    void *data;
    size_t n;
    assert_int_equal(br_classifier_write(&m.spec, &data, &n), BR_OK);
    unsigned char *p = data;
    assert_int_equal(p[52], 1); /* sparse */
    assert_int_equal(p[56], 2); /* two rows */
    size_t rows = n - 4 - 16;   /* two rows of (u32 index, f32 weight) */
    char err[256];
    put32(p + rows + 8, 5); /* second row index = first */
    reseal(p, n);
    assert_int_equal(load_bytes(p, n, err, sizeof(err)), BR_ERR_PARSE);
    put32(p + rows + 8, 1u << 20); /* beyond dim */
    reseal(p, n);
    assert_int_equal(load_bytes(p, n, err, sizeof(err)), BR_ERR_PARSE);
    put32(p + rows + 8, 9);
    reseal(p, n);
    assert_int_equal(load_bytes(p, n, err, sizeof(err)), BR_OK);
    br_free(data);
    free(m.w);
}

static void choose_rule(void **state)
{
    (void)state;
    double q[4] = {0.90, 0.85, 0.60, NAN};
    double c[4] = {10.0, 1.0, 0.1, 0.01};
    size_t pick;
    assert_int_equal(br_classifier_choose(q, c, 4, 0.0, 0.0, &pick), BR_OK);
    assert_int_equal(pick, 0); /* the best */
    assert_int_equal(br_classifier_choose(q, c, 4, 0.05, 0.0, &pick), BR_OK);
    assert_int_equal(pick, 1); /* 0.85 within 0.05 of 0.90, cheaper */
    assert_int_equal(br_classifier_choose(q, c, 4, 0.5, 0.0, &pick), BR_OK);
    assert_int_equal(pick, 2); /* NaN quality is never chosen */
    assert_int_equal(br_classifier_choose(q, c, 4, 0.0, 0.1, &pick), BR_OK);
    assert_int_equal(pick, 1); /* utilities: -0.1, 0.75, 0.59 */
    double none[2] = {NAN, NAN};
    assert_int_equal(br_classifier_choose(none, c, 2, 0.0, 0.0, &pick), BR_ERR_NOTFOUND);
    double neg[2] = {-1.0, 5.0};
    assert_int_equal(br_classifier_choose(q, neg, 2, 0.0, 0.0, &pick), BR_OK);
    assert_int_equal(pick, 1); /* negative cost = not allowed */
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(features_deterministic_and_bounded),
        cmocka_unit_test(features_truncate_and_reject),
        cmocka_unit_test(features_dot_matches_extract),
        cmocka_unit_test(features_structural),
        cmocka_unit_test(features_long_text_window),
        cmocka_unit_test(answer_checks),
        cmocka_unit_test(model_round_trip),
        cmocka_unit_test(model_save_and_load_file),
        cmocka_unit_test(model_malformed_rejected),
        cmocka_unit_test(model_sparse_rows_checked),
        cmocka_unit_test(choose_rule),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("classifier", tests, NULL, NULL);
}
