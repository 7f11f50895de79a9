/* SPDX-License-Identifier: MIT */
/*
 * Training the learned router on small synthetic datasets where the right answer is known:
 * a marker word decides which model is needed, so a working trainer must rank those prompts
 * first (cross-validated APGR near the oracle's), an N-model router must learn which model is
 * good on which topic, and a verifier must learn that a wrong arithmetic annotation means
 * escalation. Models written by training must score exactly as in training once loaded from
 * their file; `brigade train` must accept good command lines and refuse bad ones.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/err.h"
#include "eval/dataset.h"
#include "eval/eval.h"
#include "eval/metrics.h"
#include "eval/train.h"
#include "eval/train_cli.h"
#include "route/classifier.h"

static const char *const vocab[] = {"apple", "river",  "green", "seven",  "table",
                                    "cloud", "quiet",  "stone", "yellow", "north",
                                    "paper", "silver", "horse", "winter", "glass"};

static unsigned rng(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

/* Appends a JSON line: prompt of random words (+ marker), the models' qualities/answers. */
static void line(FILE *f, unsigned *seed, const char *marker, const char *const *models,
                 const double *q, const char *const *answers, size_t n_models)
{
    char prompt[256] = "";
    size_t words = 4 + rng(seed) % 6;
    for (size_t w = 0; w < words; w++) {
        strcat(prompt, vocab[rng(seed) % 15]);
        strcat(prompt, " ");
        if (w == words / 2 && marker) {
            strcat(prompt, marker);
            strcat(prompt, " ");
        }
    }
    fprintf(f, "{\"prompt\": \"%s?\", \"models\": {", prompt);
    for (size_t m = 0; m < n_models; m++) {
        fprintf(f, "%s\"%s\": {\"quality\": %g, \"cost_usd\": %g", m ? ", " : "", models[m], q[m],
                0.001 * (double)(m + 1) * (double)(m + 1));
        if (answers && answers[m]) {
            fprintf(f, ", \"response\": \"%s\"", answers[m]);
        }
        fputs("}", f);
    }
    fputs("}}\n", f);
}

/* Binary set: prompts with "hardtopic" need the strong model; others both answer. */
static char *binary_jsonl(size_t n, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    unsigned seed = 42;
    static const char *const models[] = {"strong", "weak"};
    for (size_t i = 0; i < n; i++) {
        int hard = rng(&seed) % 10 < 3;
        double q[2] = {1.0, hard ? 0.0 : 1.0};
        if (!hard && rng(&seed) % 10 == 0) {
            q[0] = 0.0; /* a few prompts only the weak model gets right */
        }
        line(f, &seed, hard ? "hardtopic" : NULL, models, q, NULL, 2);
    }
    fclose(f);
    return buf;
}

static struct br_dataset *load_mem(const char *text, size_t len, int keep)
{
    struct br_dataset *ds = NULL;
    struct br_dataset_opts o = {.format = BR_DATASET_FORMAT_JSONL, .keep_responses = keep};
    char err[256] = "";
    int rc = br_dataset_load_mem(text, len, "synthetic", &o, &ds, err, sizeof(err));
    if (rc != BR_OK) {
        fprintf(stderr, "load: %s\n", err);
    }
    assert_int_equal(rc, BR_OK);
    return ds;
}

static void binary_data(struct br_dataset **ds_out, struct br_eval_task **task_out,
                        struct br_train_data *d, int with_answers)
{
    size_t len;
    char *text = binary_jsonl(300, &len);
    struct br_dataset *ds = load_mem(text, len, with_answers);
    free(text);
    static const char *const names[2] = {"strong", "weak"};
    struct br_eval_task *task = NULL;
    char err[256];
    struct br_eval_task_opts to = {0};
    assert_int_equal(br_eval_task_make(ds, 0, 1, &to, &task, NULL, err, sizeof(err)), BR_OK);
    assert_int_equal(br_train_data_init(d, 2, names), BR_OK);
    assert_int_equal(br_train_data_add_task(d, task, with_answers, err, sizeof(err)), BR_OK);
    assert_int_equal(d->n, 300);
    *ds_out = ds;
    *task_out = task;
}

static double apgr_of(const struct br_train_data *d, const double *scores)
{
    double *qs = calloc(d->n, sizeof(double)), *qw = calloc(d->n, sizeof(double));
    for (size_t i = 0; i < d->n; i++) {
        qs[i] = d->quality[i * 2];
        qw[i] = d->quality[i * 2 + 1];
    }
    double a = br_eval_apgr(scores, qs, qw, d->n);
    /* the oracle's APGR on the same rows, for scale */
    double *o = calloc(d->n, sizeof(double));
    for (size_t i = 0; i < d->n; i++) {
        o[i] = qs[i] - qw[i];
    }
    double best = br_eval_apgr(o, qs, qw, d->n);
    free(o);
    free(qs);
    free(qw);
    return a / best;
}

static void labels_parse(void **state)
{
    (void)state;
    enum br_train_label l;
    assert_int_equal(br_train_label_parse("soft", &l), BR_OK);
    assert_int_equal(l, BR_TRAIN_LABEL_SOFT);
    assert_int_equal(br_train_label_parse("weak-wrong", &l), BR_OK);
    assert_int_equal(l, BR_TRAIN_LABEL_WEAK_WRONG);
    assert_int_equal(br_train_label_parse("diff", &l), BR_OK);
    assert_string_equal(br_train_label_name(BR_TRAIN_LABEL_GAIN), "gain");
    assert_int_equal(br_train_label_parse("nope", &l), BR_ERR_INVAL);
}

/* Every label learns the marker; cross-validated ranking is close to the oracle's. */
static void binary_learns_marker(void **state)
{
    (void)state;
    struct br_dataset *ds;
    struct br_eval_task *task;
    struct br_train_data d;
    binary_data(&ds, &task, &d, 0);
    double *scores = calloc(d.n, sizeof(double));
    for (int l = 0; l < 4; l++) {
        struct br_train_opts o;
        br_train_opts_default(&o);
        o.features.hash_bits = 12;
        o.label = (enum br_train_label)l;
        char err[256] = "";
        double fold_c[5];
        assert_int_equal(br_train_cv(&d, &o, 5, scores, fold_c, err, sizeof(err)), BR_OK);
        for (size_t i = 0; i < d.n; i++) {
            assert_true(scores[i] >= 0.0 && scores[i] <= 1.0);
        }
        double rel = apgr_of(&d, scores);
        assert_true(rel > 0.9);
        assert_true(fold_c[0] > 0);
    }
    free(scores);
    br_train_data_cleanup(&d);
    br_eval_task_free(task);
    br_dataset_free(ds);
}

/* The written file scores exactly as the in-memory model. */
static void binary_file_round_trip(void **state)
{
    (void)state;
    struct br_dataset *ds;
    struct br_eval_task *task;
    struct br_train_data d;
    binary_data(&ds, &task, &d, 0);
    for (int diff = 0; diff < 2; diff++) {
        struct br_train_opts o;
        br_train_opts_default(&o);
        o.features.hash_bits = 12;
        o.features.flags = BR_FEATURES_ALL;
        o.c = 0.3;
        o.label = diff ? BR_TRAIN_LABEL_DIFF : BR_TRAIN_LABEL_SOFT;
        struct br_train_model m;
        char err[256] = "";
        assert_int_equal(br_train_fit(&d, NULL, 0, &o, &m, err, sizeof(err)), BR_OK);
        m.threshold = 0.5;
        struct br_classifier_spec spec;
        br_train_model_spec(&m, "test notes", &spec);
        void *data;
        size_t n;
        assert_int_equal(br_classifier_write(&spec, &data, &n), BR_OK);
        br_classifier *c = NULL;
        assert_int_equal(br_classifier_load_mem(data, n, &c, err, sizeof(err)), BR_OK);
        double hard = 0, easy = 0;
        size_t n_hard = 0, n_easy = 0;
        for (size_t i = 0; i < d.n; i++) {
            double s;
            assert_int_equal(br_train_score(&m, &d, i, &s, 1), BR_OK);
            double f = br_classifier_score(c, d.prompts[i], strlen(d.prompts[i]));
            assert_true(fabs(s - f) < 1e-5);
            if (strstr(d.prompts[i], "hardtopic")) {
                hard += f;
                n_hard++;
            } else {
                easy += f;
                n_easy++;
            }
        }
        assert_true(hard / (double)n_hard > easy / (double)n_easy + 0.2);
        br_classifier_free(c);
        br_free(data);
        br_train_model_cleanup(&m);
    }
    br_train_data_cleanup(&d);
    br_eval_task_free(task);
    br_dataset_free(ds);
}

/* Three models: "small" is good on alpha, "medium" on alpha and beta, "large" on all. */
static void nmodel_learns_topics(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len;
    FILE *f = open_memstream(&buf, &len);
    unsigned seed = 5;
    static const char *const models[] = {"small", "medium", "large"};
    static const char *const topics[] = {"alphatopic", "betatopic", "gammatopic"};
    for (size_t i = 0; i < 300; i++) {
        size_t t = rng(&seed) % 3;
        double q[3] = {t == 0, t <= 1, 1.0};
        line(f, &seed, topics[t], models, q, NULL, 3);
    }
    fclose(f);
    struct br_dataset *ds = load_mem(buf, len, 0);
    free(buf);
    struct br_train_data d;
    assert_int_equal(br_train_data_init(&d, 3, models), BR_OK);
    static const char *const aliases[] = {"SMALL,x", "medium", "large"};
    char err[256] = "";
    assert_int_equal(br_train_data_add(&d, ds, aliases, -1, err, sizeof(err)), BR_OK);
    assert_int_equal(d.n, 300);
    struct br_train_opts o;
    br_train_opts_default(&o);
    o.kind = BR_TRAIN_NMODEL;
    o.features.hash_bits = 12;
    double *cv = calloc(d.n * 3, sizeof(double));
    assert_int_equal(br_train_cv(&d, &o, 3, cv, NULL, err, sizeof(err)), BR_OK);
    size_t right = 0;
    double cost[3] = {1, 4, 9};
    for (size_t i = 0; i < d.n; i++) {
        size_t pick;
        assert_int_equal(br_classifier_choose(cv + i * 3, cost, 3, 0.3, 0.0, &pick), BR_OK);
        size_t want = strstr(d.prompts[i], "alphatopic")  ? 0
                      : strstr(d.prompts[i], "betatopic") ? 1
                                                          : 2;
        right += pick == want;
    }
    assert_true(right > 270);
    struct br_train_model m;
    assert_int_equal(br_train_fit(&d, NULL, 0, &o, &m, err, sizeof(err)), BR_OK);
    assert_true(fabs(m.quality[2] - 1.0) < 1e-9); /* "large" is always right */
    assert_true(m.cost[0] < m.cost[2]);
    struct br_classifier_spec spec;
    br_train_model_spec(&m, NULL, &spec);
    void *data;
    size_t n;
    assert_int_equal(br_classifier_write(&spec, &data, &n), BR_OK);
    br_classifier *c = NULL;
    assert_int_equal(br_classifier_load_mem(data, n, &c, err, sizeof(err)), BR_OK);
    assert_int_equal(br_classifier_n_outputs(c), 3);
    assert_string_equal(br_classifier_output_name(c, 1), "medium");
    double p[3];
    const char *q = "river stone betatopic quiet?";
    assert_int_equal(br_classifier_predict(c, q, strlen(q), p, 3), BR_OK);
    assert_true(p[0] < 0.5 && p[1] > 0.5 && p[2] > 0.5);
    br_classifier_free(c);
    br_free(data);
    br_train_model_cleanup(&m);
    free(cv);
    br_train_data_cleanup(&d);
    br_dataset_free(ds);
}

/* The weak model is wrong exactly when its arithmetic annotation is wrong. */
static void verifier_learns_bad_arithmetic(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len;
    FILE *f = open_memstream(&buf, &len);
    unsigned seed = 9;
    static const char *const models[] = {"strong", "weak"};
    for (size_t i = 0; i < 300; i++) {
        int bad = rng(&seed) % 3 == 0;
        unsigned a = rng(&seed) % 50, b = rng(&seed) % 50;
        char ans[128];
        snprintf(ans, sizeof(ans), "We add %u + %u = <<%u+%u=%u>>%u.\\n#### %u", a, b, a, b,
                 a + b + (unsigned)bad, a + b + (unsigned)bad, a + b + (unsigned)bad);
        const char *answers[2] = {"right", ans};
        double q[2] = {1.0, bad ? 0.0 : 1.0};
        line(f, &seed, NULL, models, q, answers, 2);
    }
    fclose(f);
    struct br_dataset *ds = load_mem(buf, len, 1);
    free(buf);
    struct br_eval_task *task = NULL;
    struct br_train_data d;
    char err[256] = "";
    struct br_eval_task_opts to = {0};
    assert_int_equal(br_eval_task_make(ds, 0, 1, &to, &task, NULL, err, sizeof(err)), BR_OK);
    static const char *const names[2] = {"strong", "weak"};
    assert_int_equal(br_train_data_init(&d, 2, names), BR_OK);
    assert_int_equal(br_train_data_add_task(&d, task, true, err, sizeof(err)), BR_OK);
    struct br_train_opts o;
    br_train_opts_default(&o);
    o.kind = BR_TRAIN_VERIFIER;
    o.features.hash_bits = 12;
    double *cv = calloc(d.n, sizeof(double));
    assert_int_equal(br_train_cv(&d, &o, 5, cv, NULL, err, sizeof(err)), BR_OK);
    assert_true(apgr_of(&d, cv) > 0.9);
    struct br_train_model m;
    assert_int_equal(br_train_fit(&d, NULL, 0, &o, &m, err, sizeof(err)), BR_OK);
    struct br_classifier_spec spec;
    br_train_model_spec(&m, NULL, &spec);
    void *data;
    size_t n;
    assert_int_equal(br_classifier_write(&spec, &data, &n), BR_OK);
    br_classifier *c = NULL;
    assert_int_equal(br_classifier_load_mem(data, n, &c, err, sizeof(err)), BR_OK);
    assert_int_equal(br_classifier_kind(c), BR_CLASSIFIER_VERIFIER);
    for (size_t i = 0; i < d.n; i++) {
        double s, v;
        assert_int_equal(br_train_score(&m, &d, i, &s, 1), BR_OK);
        assert_int_equal(br_classifier_verify(c, d.prompts[i], strlen(d.prompts[i]), d.answers[i],
                                              strlen(d.answers[i]), &v),
                         BR_OK);
        assert_true(fabs(s - v) < 1e-5);
    }
    const char *p = "Tom has 3 apples and gets 4 more. How many?";
    const char *good = "3 + 4 = <<3+4=7>>7\n#### 7";
    const char *wrong = "3 + 4 = <<3+4=8>>8\n#### 8";
    double vg, vw;
    assert_int_equal(br_classifier_verify(c, p, strlen(p), good, strlen(good), &vg), BR_OK);
    assert_int_equal(br_classifier_verify(c, p, strlen(p), wrong, strlen(wrong), &vw), BR_OK);
    assert_true(vw > vg);
    br_classifier_free(c);
    br_free(data);
    br_train_model_cleanup(&m);
    free(cv);
    br_train_data_cleanup(&d);
    br_eval_task_free(task);
    br_dataset_free(ds);
}

/* Leave-one-source-out scores every row with a model that never saw its source. */
static void leave_one_source_out(void **state)
{
    (void)state;
    size_t len;
    char *text = binary_jsonl(200, &len);
    struct br_dataset *a = load_mem(text, len, 0);
    struct br_dataset *b = load_mem(text, len, 0);
    free(text);
    static const char *const names[2] = {"strong", "weak"};
    static const char *const aliases[2] = {"strong", "weak"};
    struct br_train_data d;
    char err[256] = "";
    assert_int_equal(br_train_data_init(&d, 2, names), BR_OK);
    assert_int_equal(br_train_data_add(&d, a, aliases, -1, err, sizeof(err)), BR_OK);
    assert_int_equal(br_train_data_add(&d, b, aliases, -1, err, sizeof(err)), BR_OK);
    assert_int_equal(d.n_sources, 2);
    struct br_train_opts o;
    br_train_opts_default(&o);
    o.features.hash_bits = 12;
    double *s = calloc(d.n, sizeof(double));
    assert_int_equal(br_train_cv_sources(&d, &o, s, err, sizeof(err)), BR_OK);
    assert_true(apgr_of(&d, s) > 0.9);
    static const char *const missing[2] = {"strong", "nobody"};
    assert_int_equal(br_train_data_add(&d, a, missing, -1, err, sizeof(err)), BR_ERR_NOTFOUND);
    assert_non_null(strstr(err, "nobody"));
    free(s);
    br_train_data_cleanup(&d);
    br_dataset_free(a);
    br_dataset_free(b);
}

/* The `classifier` router of brigade eval, trained per fold by the eval driver. */
static void eval_router_per_fold(void **state)
{
    (void)state;
    size_t len;
    char *text = binary_jsonl(200, &len);
    struct br_dataset *ds = load_mem(text, len, 0);
    free(text);
    struct br_eval_task *task = NULL;
    char err[256] = "";
    struct br_eval_task_opts to = {0};
    assert_int_equal(br_eval_task_make(ds, 0, 1, &to, &task, NULL, err, sizeof(err)), BR_OK);
    const struct br_eval_router_ops *ops = br_eval_router_find("classifier");
    assert_non_null(ops);
    struct br_eval_router_cfg cfg = {.seed = 3};
    struct br_eval_run_opts ro = {.folds = 4, .seed = 3};
    struct br_eval_run_out out;
    memset(&out, 0, sizeof(out));
    assert_int_equal(br_eval_run(ops, &cfg, task, &ro, &out, err, sizeof(err)), BR_OK);
    assert_int_equal(out.n_scored, task->n);
    double a = br_eval_apgr(out.scores, task->q_strong, task->q_weak, task->n);
    assert_true(a > 0.75);
    br_eval_run_out_cleanup(&out);
    br_eval_task_free(task);
    br_dataset_free(ds);
}

static int run_cli(const char *const *args)
{
    char *argv[32];
    int argc = 0;
    while (args[argc]) {
        argv[argc] = (char *)args[argc];
        argc++;
    }
    return br_train_cli(argc, argv);
}

static void cli_end_to_end(void **state)
{
    (void)state;
    char data_path[512], model_path[512], csv_path[512];
    snprintf(data_path, sizeof(data_path), "%s/test_train_%d.jsonl", BR_BINARY_DIR, (int)getpid());
    snprintf(model_path, sizeof(model_path), "%s/test_train_%d.brr", BR_BINARY_DIR, (int)getpid());
    snprintf(csv_path, sizeof(csv_path), "%s/test_train_%d.csv", BR_BINARY_DIR, (int)getpid());
    size_t len;
    char *text = binary_jsonl(120, &len);
    FILE *f = fopen(data_path, "w");
    assert_non_null(f);
    fwrite(text, 1, len, f);
    fclose(f);
    free(text);
    const char *train[] = {data_path, "--strong", "strong",  "--weak",  "weak",
                           "--out",   model_path, "--folds", "3",       "--bits",
                           "12",      "--csv",    csv_path,  "--quiet", NULL};
    assert_int_equal(run_cli(train), 0);
    br_classifier *c = NULL;
    char err[256] = "";
    assert_int_equal(br_classifier_load(model_path, &c, err, sizeof(err)), BR_OK);
    assert_false(isnan(br_classifier_threshold(c))); /* from the cross-validation */
    assert_non_null(strstr(br_classifier_notes(c), "--folds 3"));
    br_classifier_free(c);
    f = fopen(csv_path, "r");
    assert_non_null(f);
    char head[256];
    assert_non_null(fgets(head, sizeof(head), f));
    assert_non_null(strstr(head, "score_strong"));
    fclose(f);
    const char *help[] = {"--help", NULL};
    assert_int_equal(run_cli(help), 0);
    const char *no_out[] = {data_path, NULL};
    assert_int_equal(run_cli(no_out), 2);
    const char *bad_opt[] = {data_path, "--out", model_path, "--frobnicate", NULL};
    assert_int_equal(run_cli(bad_opt), 2);
    const char *bad_c[] = {data_path, "--out", model_path, "--c", "-1", NULL};
    assert_int_equal(run_cli(bad_c), 2);
    const char *bad_model[] = {data_path, "--out", model_path, "--strong", "gpt-9", NULL};
    assert_int_equal(run_cli(bad_model), 2);
    const char *missing[] = {"/nonexistent/data.jsonl", "--out", model_path, NULL};
    assert_int_equal(run_cli(missing), 1);
    const char *loo_one[] = {data_path, "--no-model", "--leave-one-out", NULL};
    assert_int_equal(run_cli(loo_one), 2);
    unlink(data_path);
    unlink(model_path);
    unlink(csv_path);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(labels_parse),
        cmocka_unit_test(binary_learns_marker),
        cmocka_unit_test(binary_file_round_trip),
        cmocka_unit_test(nmodel_learns_topics),
        cmocka_unit_test(verifier_learns_bad_arithmetic),
        cmocka_unit_test(leave_one_source_out),
        cmocka_unit_test(eval_router_per_fold),
        cmocka_unit_test(cli_end_to_end),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("train", tests, NULL, NULL);
}
