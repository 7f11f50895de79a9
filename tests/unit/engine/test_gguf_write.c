/* SPDX-License-Identifier: MIT */
/*
 * gguf_write.h: files written by the writer are read back by the project's GGUF reader (every
 * metadata type, string arrays, tensors of several types given as data or produced by the fill
 * callback, non-default alignment); duplicate keys/names and bad shapes are refused; a failing
 * fill callback or an unwritable path leaves no file; the same calls give the same bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/err.h"
#include "engine/gguf.h"
#include "engine/gguf_write.h"

static char *tmp_path(const char *tag)
{
    static char buf[4][256];
    static int k;
    char *p = buf[k++ % 4];
    (void)snprintf(p, 256, "%s/gguf_write_%s_%d.gguf", BR_BINARY_DIR, tag, (int)getpid());
    return p;
}

static int fill_pattern(void *user, size_t index, void *dst, size_t n)
{
    int *calls = user;
    ++*calls;
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++) {
        d[i] = (unsigned char)(index * 31 + i);
    }
    return BR_OK;
}

static int fill_fail(void *user, size_t index, void *dst, size_t n)
{
    (void)user;
    (void)index;
    memset(dst, 0, n);
    return BR_ERR_IO;
}

static br_gguf_writer *make(uint32_t align, int *calls, const float *f32)
{
    br_gguf_writer *w = NULL;
    assert_int_equal(br_gguf_writer_create(align, fill_pattern, calls, &w), BR_OK);
    assert_int_equal(br_gguf_writer_kv_u32(w, "a.u32", 4000000000u), BR_OK);
    assert_int_equal(br_gguf_writer_kv_i32(w, "a.i32", -7), BR_OK);
    assert_int_equal(br_gguf_writer_kv_u64(w, "a.u64", 1ull << 40), BR_OK);
    assert_int_equal(br_gguf_writer_kv_f32(w, "a.f32", 0.25f), BR_OK);
    assert_int_equal(br_gguf_writer_kv_bool(w, "a.bool", true), BR_OK);
    assert_int_equal(br_gguf_writer_kv_str(w, "a.str", br_slice_from_cstr("h\xc3\xa9llo")), BR_OK);
    struct br_slice strs[3] = {br_slice_from_cstr("<unk>"), br_slice_from_cstr(""),
                               br_slice_from_cstr("\xe2\x96\x81the")};
    assert_int_equal(br_gguf_writer_kv_arr_str(w, "a.strs", strs, 3), BR_OK);
    float fl[2] = {1.5f, -2.0f};
    assert_int_equal(br_gguf_writer_kv_arr_f32(w, "a.f32s", fl, 2), BR_OK);
    int32_t il[3] = {1, -2, 3};
    assert_int_equal(br_gguf_writer_kv_arr_i32(w, "a.i32s", il, 3), BR_OK);
    uint64_t d1[1] = {5};
    assert_int_equal(br_gguf_writer_tensor(w, "vec", BR_TENSOR_F32, 1, d1, f32), BR_OK);
    uint64_t d2[2] = {64, 3};
    assert_int_equal(br_gguf_writer_tensor(w, "q8", BR_TENSOR_Q8_0, 2, d2, NULL), BR_OK);
    uint64_t d3[2] = {7, 2};
    assert_int_equal(br_gguf_writer_tensor(w, "half", BR_TENSOR_F16, 2, d3, NULL), BR_OK);
    return w;
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    assert_true(len > 0);
    rewind(f);
    unsigned char *b = malloc((size_t)len);
    assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
    (void)fclose(f);
    *n = (size_t)len;
    return b;
}

static void check_file(const char *path, uint32_t align, const float *f32)
{
    br_gguf *g = NULL;
    char err[BR_GGUF_ERR_CAP];
    int rc = br_gguf_open(path, &g, err, sizeof err);
    if (rc != BR_OK) {
        fail_msg("reopen: %s", err);
    }
    assert_int_equal(br_gguf_version(g), 3);
    assert_int_equal(br_gguf_alignment(g), align);
    uint32_t u = 0;
    assert_int_equal(br_gguf_get_u32(g, "a.u32", &u), BR_OK);
    assert_int_equal(u, 4000000000u);
    uint64_t u64 = 0;
    assert_int_equal(br_gguf_get_u64(g, "a.u64", &u64), BR_OK);
    assert_int_equal(u64, 1ull << 40);
    assert_int_equal(br_gguf_find(g, "a.i32")->type, BR_GGUF_TYPE_INT32);
    float f = 0;
    assert_int_equal(br_gguf_get_f32(g, "a.f32", &f), BR_OK);
    assert_true(f == 0.25f);
    int b = 0;
    assert_int_equal(br_gguf_get_bool(g, "a.bool", &b), BR_OK);
    assert_true(b);
    struct br_slice s;
    assert_int_equal(br_gguf_get_str(g, "a.str", &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "h\xc3\xa9llo"));
    struct br_gguf_array a;
    assert_int_equal(br_gguf_get_array(g, "a.strs", &a), BR_OK);
    assert_int_equal(a.len, 3);
    assert_int_equal(br_gguf_array_str(&a, 2, &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "\xe2\x96\x81the"));
    assert_int_equal(br_gguf_array_str(&a, 1, &s), BR_OK);
    assert_int_equal(s.len, 0);
    assert_int_equal(br_gguf_get_array(g, "a.f32s", &a), BR_OK);
    assert_int_equal(br_gguf_array_f32(&a, 1, &f), BR_OK);
    assert_true(f == -2.0f);
    assert_int_equal(br_gguf_get_array(g, "a.i32s", &a), BR_OK);
    int64_t i64 = 0;
    assert_int_equal(br_gguf_array_i64(&a, 1, &i64), BR_OK);
    assert_int_equal(i64, -2);
    assert_int_equal(br_gguf_tensor_count(g), 3);
    const struct br_gguf_tensor *t = br_gguf_find_tensor(g, "vec");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 1);
    assert_memory_equal(t->data, f32, 5 * sizeof(float));
    t = br_gguf_find_tensor(g, "q8");
    assert_int_equal(t->ggml_type, BR_GGUF_GGML_Q8_0);
    assert_int_equal(t->n_bytes, (uint64_t)3 * 2 * 34);
    assert_int_equal(t->offset % align, 0);
    const unsigned char *d = t->data;
    /* fill_pattern: byte i of tensor 1 is 1 * 31 + i */
    for (size_t i = 0; i < t->n_bytes; i++) {
        assert_int_equal(d[i], (unsigned char)(31 + i));
    }
    t = br_gguf_find_tensor(g, "half");
    assert_int_equal(t->ggml_type, BR_GGUF_GGML_F16);
    assert_int_equal(t->dims[0], 7);
    assert_int_equal(t->dims[1], 2);
    assert_int_equal(t->n_bytes, 28);
    br_gguf_close(g);
}

static void test_gguf_write_roundtrip(void **state)
{
    (void)state;
    static const float f32[5] = {1, 2, 3, -4, 0.5f};
    static const uint32_t aligns[2] = {0, 64};
    for (int k = 0; k < 2; k++) {
        int calls = 0;
        br_gguf_writer *w = make(aligns[k], &calls, f32);
        const char *p1 = tmp_path("a");
        const char *p2 = tmp_path("b");
        char err[256];
        assert_int_equal(br_gguf_writer_write(w, p1, err, sizeof err), BR_OK);
        assert_int_equal(calls, 2);
        br_gguf_writer_free(w);
        uint32_t align = aligns[k] ? aligns[k] : 32;
        check_file(p1, align, f32);
        w = make(aligns[k], &calls, f32);
        assert_int_equal(br_gguf_writer_write(w, p2, err, sizeof err), BR_OK);
        br_gguf_writer_free(w);
        size_t n1 = 0;
        size_t n2 = 0;
        unsigned char *b1 = slurp(p1, &n1);
        unsigned char *b2 = slurp(p2, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(b1, b2, n1);
        assert_int_equal(n1 % align, 0);
        free(b1);
        free(b2);
        unlink(p1);
        unlink(p2);
    }
}

static void test_gguf_write_refuses(void **state)
{
    (void)state;
    br_gguf_writer *w = NULL;
    assert_int_equal(br_gguf_writer_create(3, NULL, NULL, &w), BR_ERR_INVAL);
    assert_int_equal(br_gguf_writer_create(4, NULL, NULL, &w), BR_ERR_INVAL);
    assert_null(w);
    assert_int_equal(br_gguf_writer_create(0, NULL, NULL, &w), BR_OK);
    assert_int_equal(br_gguf_writer_kv_u32(w, "k", 1), BR_OK);
    assert_int_equal(br_gguf_writer_kv_u32(w, "k", 2), BR_ERR_EXISTS);
    assert_int_equal(br_gguf_writer_kv_str(w, "k", br_slice_from_cstr("x")), BR_ERR_EXISTS);
    assert_int_equal(br_gguf_writer_kv_u32(w, "", 2), BR_ERR_INVAL);
    float data[64] = {0};
    uint64_t bad_cols[2] = {33, 1};
    assert_int_equal(br_gguf_writer_tensor(w, "t", BR_TENSOR_Q8_0, 2, bad_cols, data),
                     BR_ERR_INVAL);
    uint64_t dims[2] = {32, 1};
    assert_int_equal(br_gguf_writer_tensor(w, "t", BR_TENSOR_Q8_0, 2, dims, NULL),
                     BR_ERR_INVAL); /* no data and no fill callback */
    assert_int_equal(br_gguf_writer_tensor(w, "t", BR_TENSOR_F32, 0, dims, data), BR_ERR_INVAL);
    assert_int_equal(br_gguf_writer_tensor(w, "t", BR_TENSOR_F32, 5, dims, data), BR_ERR_INVAL);
    assert_int_equal(br_gguf_writer_tensor(w, "t", (enum br_tensor_type)99, 2, dims, data),
                     BR_ERR_INVAL);
    uint64_t zero[2] = {32, 0};
    assert_int_equal(br_gguf_writer_tensor(w, "t", BR_TENSOR_F32, 2, zero, data), BR_ERR_INVAL);
    assert_int_equal(br_gguf_writer_tensor(w, "t", BR_TENSOR_F32, 2, dims, data), BR_OK);
    assert_int_equal(br_gguf_writer_tensor(w, "t", BR_TENSOR_F32, 2, dims, data), BR_ERR_EXISTS);
    char err[256];
    assert_int_equal(br_gguf_writer_write(w, "/nonexistent-dir/x.gguf", err, sizeof err),
                     BR_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent-dir/x.gguf"));
    /* Still a valid file after the refusals. */
    const char *p = tmp_path("r");
    assert_int_equal(br_gguf_writer_write(w, p, err, sizeof err), BR_OK);
    br_gguf_writer_free(w);
    br_gguf *g = NULL;
    assert_int_equal(br_gguf_open(p, &g, err, sizeof err), BR_OK);
    assert_int_equal(br_gguf_kv_count(g), 1);
    assert_int_equal(br_gguf_tensor_count(g), 1);
    br_gguf_close(g);
    unlink(p);
}

static void test_gguf_write_fill_error(void **state)
{
    (void)state;
    br_gguf_writer *w = NULL;
    assert_int_equal(br_gguf_writer_create(0, fill_fail, NULL, &w), BR_OK);
    uint64_t dims[2] = {32, 2};
    assert_int_equal(br_gguf_writer_tensor(w, "t", BR_TENSOR_Q4_0, 2, dims, NULL), BR_OK);
    const char *p = tmp_path("f");
    char err[256];
    assert_int_equal(br_gguf_writer_write(w, p, err, sizeof err), BR_ERR_IO);
    assert_int_equal(access(p, F_OK), -1);
    char tmp[300];
    (void)snprintf(tmp, sizeof tmp, "%s.tmp", p);
    assert_int_equal(access(tmp, F_OK), -1);
    br_gguf_writer_free(w);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_write_roundtrip),
        cmocka_unit_test(test_gguf_write_refuses),
        cmocka_unit_test(test_gguf_write_fill_error),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("gguf_write", tests, NULL, NULL);
}
