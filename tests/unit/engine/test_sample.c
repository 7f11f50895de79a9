/* SPDX-License-Identifier: MIT */
/*
 * engine/sample: greedy is the argmax; top-k 1 and top-p 0 are greedy at any temperature; a
 * seed reproduces a sequence; the empirical distribution follows softmax(logits / T) and the
 * top-k / top-p cuts; log-probabilities are a log-softmax (their exponentials sum to 1) and the
 * top-n list is sorted. The sampler allocates nothing per call.
 */
#include <math.h>
#include <string.h>

#include "br_test.h"
#include "core/alloc.h"
#include "core/err.h"
#include "engine/sample.h"

#define V 16

static void fill_logits(float *l)
{
    for (int i = 0; i < V; i++) {
        l[i] = (float)((i * 7) % V) / 4.0f; /* a permutation: max 3.75 at i == 9 */
    }
}

static int sample_one(struct br_sampler *s, const float *logits)
{
    int tok = -1;
    assert_int_equal(br_sampler_sample(s, logits, &tok), BR_OK);
    assert_true(tok >= 0 && tok < V);
    return tok;
}

static void test_sample_greedy_is_argmax(void **state)
{
    (void)state;
    float l[V];
    fill_logits(l);
    assert_int_equal(br_sample_argmax(l, V), 9);
    const struct br_sampler_params cases[] = {
        {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 1},
        {.temperature = 5.0f, .top_k = 1, .top_p = 1.0f, .seed = 2},
        {.temperature = 5.0f, .top_k = 0, .top_p = 0.0f, .seed = 3},
        {.temperature = 5.0f, .top_k = 8, .top_p = 1e-6f, .seed = 4},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct br_sampler s;
        assert_int_equal(br_sampler_init(&s, V, &cases[c]), BR_OK);
        for (int i = 0; i < 50; i++) {
            assert_int_equal(sample_one(&s, l), 9);
        }
        br_sampler_cleanup(&s);
    }
    /* ties go to the lower id */
    float tie[4] = {1.0f, 3.0f, 3.0f, 0.0f};
    assert_int_equal(br_sample_argmax(tie, 4), 1);
}

static void run_seq(uint64_t seed, int *out, int n)
{
    float l[V];
    fill_logits(l);
    struct br_sampler_params p = {.temperature = 1.5f, .top_k = 10, .top_p = 0.9f, .seed = seed};
    struct br_sampler s;
    assert_int_equal(br_sampler_init(&s, V, &p), BR_OK);
    uint64_t allocs = br_alloc_count();
    for (int i = 0; i < n; i++) {
        out[i] = sample_one(&s, l);
    }
    assert_int_equal(br_alloc_count(), allocs);
    br_sampler_cleanup(&s);
}

static void test_sample_seed_reproduces(void **state)
{
    (void)state;
    int a[200];
    int b[200];
    int c[200];
    run_seq(42, a, 200);
    run_seq(42, b, 200);
    run_seq(43, c, 200);
    assert_memory_equal(a, b, sizeof(a));
    assert_memory_not_equal(a, c, sizeof(a));
}

/* Draws n tokens and checks each token's frequency against want[] within tol. */
static void check_distribution(const struct br_sampler_params *p, const float *logits,
                               const double *want, int n, double tol)
{
    struct br_sampler s;
    assert_int_equal(br_sampler_init(&s, V, p), BR_OK);
    int counts[V] = {0};
    for (int i = 0; i < n; i++) {
        counts[sample_one(&s, logits)]++;
    }
    for (int t = 0; t < V; t++) {
        double got = (double)counts[t] / n;
        if (fabs(got - want[t]) > tol) {
            fail_msg("token %d: frequency %f, expected %f", t, got, want[t]);
        }
    }
    br_sampler_cleanup(&s);
}

static void test_sample_distributions(void **state)
{
    (void)state;
    float l[V] = {0};
    l[0] = logf(4.0f); /* probabilities 4:3:2:1 over tokens 0..3, the rest ~0 */
    l[1] = logf(3.0f);
    l[2] = logf(2.0f);
    l[3] = logf(1.0f);
    for (int i = 4; i < V; i++) {
        l[i] = -100.0f;
    }
    double want[V] = {0.4, 0.3, 0.2, 0.1};
    struct br_sampler_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 7};
    check_distribution(&p, l, want, 40000, 0.01);
    /* top-k 2: renormalised 4:3 */
    p.top_k = 2;
    double want_k[V] = {4.0 / 7, 3.0 / 7};
    check_distribution(&p, l, want_k, 40000, 0.01);
    /* top-p 0.65: 0.4 + 0.3 >= 0.65, so tokens 0 and 1 */
    p.top_k = 0;
    p.top_p = 0.65f;
    check_distribution(&p, l, want_k, 40000, 0.01);
    /* top-k 3 then top-p 0.75 of the kept mass 0.9 (0.675): tokens 0, 1 */
    p.top_k = 3;
    p.top_p = 0.75f;
    check_distribution(&p, l, want_k, 40000, 0.01);
    /* temperature 2 flattens: p ~ sqrt(4:3:2:1) */
    p = (struct br_sampler_params){.temperature = 2.0f, .top_k = 0, .top_p = 1.0f, .seed = 9};
    double z = 2.0 + sqrt(3.0) + sqrt(2.0) + 1.0;
    double want_t[V] = {2.0 / z, sqrt(3.0) / z, sqrt(2.0) / z, 1.0 / z};
    check_distribution(&p, l, want_t, 40000, 0.01);
}

static void test_sample_logprobs(void **state)
{
    (void)state;
    float l[V];
    fill_logits(l);
    struct br_token_logprob top[V + 4];
    float chosen = 0.0f;
    assert_int_equal(br_sample_logprobs(l, V, 3, top, V + 4, &chosen), BR_OK);
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        sum += exp((double)top[i].logprob);
        if (i > 0) {
            assert_true(top[i - 1].logprob >= top[i].logprob);
        }
        if (top[i].token == 3) {
            assert_true(fabsf(top[i].logprob - chosen) < 1e-6f);
        }
    }
    assert_true(fabs(sum - 1.0) < 1e-5);
    assert_int_equal(top[0].token, 9);
    /* top 3 only, with a duplicate maximum: the lower id first */
    l[2] = l[9];
    assert_int_equal(br_sample_logprobs(l, V, 9, top, 3, &chosen), BR_OK);
    assert_int_equal(top[0].token, 2);
    assert_int_equal(top[1].token, 9);
    assert_true(top[2].logprob < top[1].logprob);
    assert_true(fabsf(top[1].logprob - chosen) < 1e-6f);
    /* huge logits do not overflow */
    float big[3] = {1000.0f, 999.0f, -1000.0f};
    assert_int_equal(br_sample_logprobs(big, 3, 1, NULL, 0, &chosen), BR_OK);
    assert_true(fabs((double)chosen - (-1.0 - log(1.0 + exp(-1.0)))) < 1e-5);
    assert_int_equal(br_sample_logprobs(big, 3, 3, NULL, 0, &chosen), BR_ERR_INVAL);
    assert_int_equal(br_sample_logprobs(big, 3, 0, NULL, 2, &chosen), BR_ERR_INVAL);
}

static void test_sample_errors(void **state)
{
    (void)state;
    struct br_sampler_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 1};
    struct br_sampler s;
    assert_int_equal(br_sampler_init(&s, 0, &p), BR_ERR_INVAL);
    br_alloc_fail_at(2);
    assert_int_equal(br_sampler_init(&s, V, &p), BR_ERR_NOMEM);
    br_alloc_fail_at(0);
    br_sampler_cleanup(&s);
    assert_int_equal(br_sampler_init(&s, V, &p), BR_OK);
    float l[V];
    fill_logits(l);
    l[5] = NAN;
    int tok = 0;
    assert_int_equal(br_sampler_sample(&s, l, &tok), BR_ERR_INVAL);
    float lp = 0.0f;
    assert_int_equal(br_sample_logprobs(l, V, 0, NULL, 0, &lp), BR_ERR_INVAL);
    br_sampler_cleanup(&s);
    br_sampler_cleanup(&s);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sample_greedy_is_argmax),
        cmocka_unit_test(test_sample_seed_reproduces),
        cmocka_unit_test(test_sample_distributions),
        cmocka_unit_test(test_sample_logprobs),
        cmocka_unit_test(test_sample_errors),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_sample", tests, NULL, NULL);
}
