/* SPDX-License-Identifier: MIT */
/*
 * GGUF reader tests: the real model files (stories260K f32 and Q4_K_M, llama-2-tiny-random,
 * the vocab-only llama SPM file) load with the right counts, values and shapes; hand-made files
 * cover every metadata value type and nested arrays; truncated, bit-flipped and absurd-count
 * copies (written to a temp dir) are refused with a message that says what and where.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "br_test.h"
#include "core/err.h"
#include "engine/gguf.h"
#include "unit/engine/gguf_test_writer.h"

#define MODELS BR_SOURCE_DIR "/models/"

static char tmpdir[256];

static int setup_dir(void **state)
{
    (void)state;
    (void)snprintf(tmpdir, sizeof(tmpdir), "/tmp/br_test_gguf_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[300];
    (void)snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static br_gguf *open_ok(const char *path)
{
    br_gguf *g = NULL;
    char err[BR_GGUF_ERR_CAP];
    int rc = br_gguf_open(path, &g, err, sizeof(err));
    if (rc != BR_OK) {
        fail_msg("%s", err);
    }
    return g;
}

/* Opens bytes through a temp file; returns the rc, the message in err. */
static int open_bytes(const void *p, size_t n, const char *name, char *err, size_t cap)
{
    char path[512];
    assert_int_equal(gw_write_file(tmpdir, name, p, n, path, sizeof(path)), 0);
    br_gguf *g = NULL;
    int rc = br_gguf_open(path, &g, err, cap);
    br_gguf_close(g);
    if (rc == BR_OK) {
        err[0] = '\0';
    }
    return rc;
}

static void expect_reject(const struct gw *w, const char *name, const char *msg)
{
    char err[BR_GGUF_ERR_CAP];
    int rc = open_bytes(w->p, w->len, name, err, sizeof(err));
    assert_int_not_equal(rc, BR_OK);
    if (!strstr(err, msg)) {
        fail_msg("expected '%s' in: %s", msg, err);
    }
    assert_non_null(strstr(err, name));
    assert_non_null(strstr(err, "at byte"));
}

static void test_stories_f32(void **state)
{
    (void)state;
    br_gguf *g = open_ok(MODELS "stories260K/stories260K-f32.gguf");
    assert_int_equal(br_gguf_version(g), 3);
    assert_int_equal(br_gguf_tensor_count(g), 48);
    assert_int_equal(br_gguf_alignment(g), 32);
    uint32_t v = 0;
    assert_int_equal(br_gguf_get_u32(g, "llama.embedding_length", &v), BR_OK);
    assert_int_equal(v, 64);
    assert_int_equal(br_gguf_get_u32(g, "llama.feed_forward_length", &v), BR_OK);
    assert_int_equal(v, 172);
    float eps = 0;
    assert_int_equal(br_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps), BR_OK);
    assert_float_equal(eps, 1e-5f, 1e-9f);
    struct br_slice s;
    assert_int_equal(br_gguf_get_str(g, "general.architecture", &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "llama"));
    assert_int_equal(br_gguf_get_u32(g, "general.architecture", &v), BR_ERR_PARSE);
    assert_int_equal(br_gguf_get_u32(g, "no.such.key", &v), BR_ERR_NOTFOUND);
    struct br_gguf_array a;
    assert_int_equal(br_gguf_get_array(g, "tokenizer.ggml.tokens", &a), BR_OK);
    assert_int_equal(a.len, 512);
    assert_int_equal(br_gguf_array_str(&a, 1, &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "<s>"));
    assert_int_equal(br_gguf_array_str(&a, 512, &s), BR_ERR_RANGE);

    const struct br_gguf_tensor *t = br_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->dims[0], 64);
    assert_int_equal(t->dims[1], 64);
    assert_int_equal(t->ggml_type, BR_GGUF_GGML_F32);
    struct br_tensor view;
    assert_int_equal(br_gguf_tensor_view(t, &view), BR_OK);
    assert_int_equal(view.rows, 64);
    assert_int_equal(view.cols, 64);

    /* The same bytes as the llama2.c checkpoint: wq of layer 0 after emb and rms_att. */
    size_t n = 0;
    uint8_t *bin = gw_read_file(MODELS "stories260K/stories260K.bin", &n);
    assert_non_null(bin);
    size_t off = 28 + 4 * (512 * 64 + 5 * 64);
    assert_true(off + 64 * 64 * 4 <= n);
    assert_memory_equal(t->data, bin + off, 64 * 64 * 4);
    assert_memory_equal(br_gguf_find_tensor(g, "token_embd.weight")->data, bin + 28, 512 * 64 * 4);
    free(bin);
    assert_null(br_gguf_find_tensor(g, "blk.5.attn_q.weight"));
    br_gguf_close(g);
}

static void test_stories_q4km_types(void **state)
{
    (void)state;
    br_gguf *g = open_ok(MODELS "stories260K/stories260K-Q4_K_M.gguf");
    int count[16] = {0};
    for (size_t i = 0; i < br_gguf_tensor_count(g); i++) {
        const struct br_gguf_tensor *t = br_gguf_tensor_at(g, i);
        assert_true(t->ggml_type < 16);
        count[t->ggml_type]++;
    }
    assert_null(br_gguf_tensor_at(g, br_gguf_tensor_count(g)));
    assert_int_equal(count[BR_GGUF_GGML_Q8_0], 3);
    assert_int_equal(count[BR_GGUF_GGML_Q5_0], 29);
    assert_int_equal(count[BR_GGUF_GGML_F16], 5);
    assert_int_equal(count[BR_GGUF_GGML_F32], 11);
    const struct br_gguf_tensor *t = br_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->ggml_type, BR_GGUF_GGML_F16);
    assert_int_equal(t->dims[0], 172);
    assert_int_equal(t->n_bytes, 172 * 64 * 2);
    uint32_t v = 0;
    assert_int_equal(br_gguf_get_u32(g, "tokenizer.ggml.padding_token_id", &v), BR_OK);
    assert_int_equal(v, 4294967295u);
    br_gguf_close(g);
}

static void test_tiny_random(void **state)
{
    (void)state;
    br_gguf *g = open_ok(MODELS "llama-2-tiny-random/llama-2-tiny-random.gguf");
    assert_int_equal(br_gguf_tensor_count(g), 12);
    struct br_gguf_array a;
    assert_int_equal(br_gguf_get_array(g, "tokenizer.ggml.tokens", &a), BR_OK);
    assert_int_equal(a.type, BR_GGUF_TYPE_STRING);
    assert_int_equal(a.len, 32000);
    struct br_slice s;
    assert_int_equal(br_gguf_array_str(&a, 0, &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "<unk>"));
    assert_int_equal(br_gguf_get_array(g, "tokenizer.ggml.token_type", &a), BR_OK);
    int64_t iv = 0;
    assert_int_equal(br_gguf_array_i64(&a, 1, &iv), BR_OK);
    assert_int_equal(iv, 3);
    const struct br_gguf_tensor *t = br_gguf_find_tensor(g, "token_embd.weight");
    assert_int_equal(t->ggml_type, BR_GGUF_GGML_F16);
    assert_int_equal(t->dims[0], 8);
    assert_int_equal(t->dims[1], 32000);
    br_gguf_close(g);
}

static void test_vocab_only(void **state)
{
    (void)state;
    br_gguf *g = open_ok(MODELS "llama-spm-vocab/ggml-vocab-llama-spm.gguf");
    assert_int_equal(br_gguf_tensor_count(g), 0);
    assert_int_equal(br_gguf_kv_count(g), 22);
    struct br_gguf_array a;
    assert_int_equal(br_gguf_get_array(g, "tokenizer.ggml.tokens", &a), BR_OK);
    assert_int_equal(a.len, 32000);
    struct br_slice s;
    assert_int_equal(br_gguf_array_str(&a, 31999, &s), BR_OK);
    assert_true(s.len > 0);
    assert_int_equal(br_gguf_get_array(g, "tokenizer.ggml.scores", &a), BR_OK);
    assert_int_equal(a.type, BR_GGUF_TYPE_FLOAT32);
    float f = 1;
    assert_int_equal(br_gguf_array_f32(&a, 0, &f), BR_OK);
    assert_int_equal(br_gguf_array_str(&a, 0, &s), BR_ERR_PARSE);
    int b = 0;
    assert_int_equal(br_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), BR_OK);
    assert_int_equal(b, 1);
    assert_null(br_gguf_find_tensor(g, "token_embd.weight"));
    br_gguf_close(g);
}

/* A file with one pair of every value type, nested arrays and two tensors. */
static void build_all_types(struct gw *w)
{
    gw_header(w, 3, 2, 16);
    const char *keys[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool"};
    const uint8_t vals[][4] = {{200},
                               {0xfe},
                               {0x34, 0x12},
                               {0xfe, 0xff},
                               {1, 0, 1, 0},
                               {0xff, 0xff, 0xff, 0xff},
                               {0, 0, 0xc0, 0x3f},
                               {1}};
    const int sizes[] = {1, 1, 2, 2, 4, 4, 4, 1};
    for (uint32_t i = 0; i < 8; i++) {
        gw_str(w, keys[i]);
        gw_u32(w, i);
        gw_bytes(w, vals[i], (size_t)sizes[i]);
    }
    gw_kv_str(w, "str", "hello");
    gw_str(w, "u64");
    gw_u32(w, 10);
    gw_u64(w, UINT64_C(1) << 40);
    gw_str(w, "i64");
    gw_u32(w, 11);
    gw_u64(w, (uint64_t)-5);
    gw_str(w, "f64");
    gw_u32(w, 12);
    double d = 2.25;
    gw_bytes(w, &d, 8);
    gw_str(w, "arr.i16"); /* [-1, 7] */
    gw_u32(w, 9);
    gw_u32(w, 3);
    gw_u64(w, 2);
    gw_bytes(w, "\xff\xff\x07\x00", 4);
    gw_str(w, "arr.str");
    gw_u32(w, 9);
    gw_u32(w, 8);
    gw_u64(w, 3);
    gw_str(w, "a");
    gw_str(w, "");
    gw_str(w, "ccc");
    gw_str(w, "arr.nested"); /* [["x", "yy"], [], ["zzz"]] */
    gw_u32(w, 9);
    gw_u32(w, 9);
    gw_u64(w, 3);
    gw_u32(w, 8);
    gw_u64(w, 2);
    gw_str(w, "x");
    gw_str(w, "yy");
    gw_u32(w, 8);
    gw_u64(w, 0);
    gw_u32(w, 8);
    gw_u64(w, 1);
    gw_str(w, "zzz");
    gw_kv_u32(w, "general.alignment", 64);
    uint64_t d1[2] = {32, 2};
    gw_tensor(w, "q8", 2, d1, BR_GGUF_GGML_Q8_0, 0);
    uint64_t d2[1] = {3};
    gw_tensor(w, "v", 1, d2, BR_GGUF_GGML_F32, 128);
    gw_align(w, 64);
    gw_zeros(w, 128 + 12);
}

static void test_all_value_types(void **state)
{
    (void)state;
    struct gw w = {0};
    build_all_types(&w);
    br_gguf *g = NULL;
    char err[BR_GGUF_ERR_CAP];
    int rc = br_gguf_open_mem(w.p, w.len, "all", &g, err, sizeof(err));
    if (rc != BR_OK) {
        fail_msg("%s", err);
    }
    uint64_t u = 0;
    assert_int_equal(br_gguf_get_u64(g, "u8", &u), BR_OK);
    assert_int_equal(u, 200);
    assert_int_equal(br_gguf_get_u64(g, "i8", &u), BR_ERR_RANGE); /* -2 */
    assert_int_equal(br_gguf_get_u64(g, "u16", &u), BR_OK);
    assert_int_equal(u, 0x1234);
    assert_int_equal(br_gguf_get_u64(g, "u32", &u), BR_OK);
    assert_int_equal(u, 0x10001);
    assert_int_equal(br_gguf_get_u64(g, "u64", &u), BR_OK);
    assert_int_equal(u, UINT64_C(1) << 40);
    uint32_t u32 = 0;
    assert_int_equal(br_gguf_get_u32(g, "u64", &u32), BR_ERR_RANGE);
    assert_int_equal(br_gguf_get_u32(g, "i32", &u32), BR_ERR_RANGE);
    assert_int_equal(br_gguf_get_u32(g, "i64", &u32), BR_ERR_RANGE);
    float f = 0;
    assert_int_equal(br_gguf_get_f32(g, "f32", &f), BR_OK);
    assert_float_equal(f, 1.5f, 0);
    assert_int_equal(br_gguf_get_f32(g, "f64", &f), BR_OK);
    assert_float_equal(f, 2.25f, 0);
    int b = 0;
    assert_int_equal(br_gguf_get_bool(g, "bool", &b), BR_OK);
    assert_int_equal(b, 1);
    struct br_slice s;
    assert_int_equal(br_gguf_get_str(g, "str", &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "hello"));
    struct br_gguf_array a;
    assert_int_equal(br_gguf_get_array(g, "arr.i16", &a), BR_OK);
    int64_t iv = 0;
    assert_int_equal(br_gguf_array_i64(&a, 0, &iv), BR_OK);
    assert_int_equal(iv, -1);
    assert_int_equal(br_gguf_array_f32(&a, 1, &f), BR_OK);
    assert_float_equal(f, 7.0f, 0);
    assert_int_equal(br_gguf_get_array(g, "arr.str", &a), BR_OK);
    assert_int_equal(br_gguf_array_str(&a, 2, &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "ccc"));
    assert_int_equal(br_gguf_array_str(&a, 1, &s), BR_OK);
    assert_int_equal(s.len, 0);
    assert_int_equal(br_gguf_get_array(g, "arr.nested", &a), BR_OK);
    struct br_gguf_array sub;
    assert_int_equal(br_gguf_array_array(&a, 2, &sub), BR_OK);
    assert_int_equal(sub.len, 1);
    assert_int_equal(br_gguf_array_str(&sub, 0, &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "zzz"));
    assert_int_equal(br_gguf_array_array(&a, 0, &sub), BR_OK);
    assert_int_equal(br_gguf_array_str(&sub, 1, &s), BR_OK);
    assert_true(br_slice_eq_cstr(s, "yy"));
    assert_int_equal(br_gguf_array_array(&a, 1, &sub), BR_OK);
    assert_int_equal(sub.len, 0);
    assert_int_equal(br_gguf_alignment(g), 64);
    const struct br_gguf_tensor *t = br_gguf_find_tensor(g, "v");
    assert_non_null(t);
    assert_int_equal(t->n_bytes, 12);
    assert_int_equal(((const uint8_t *)t->data - w.p) % 64, 0);
    assert_ptr_equal(t->data, (const uint8_t *)br_gguf_find_tensor(g, "q8")->data + 128);
    br_gguf_close(g);
    gw_free(&w);
}

static void test_version2_accepted_version1_refused(void **state)
{
    (void)state;
    struct gw w = {0};
    gw_header(&w, 2, 0, 1);
    gw_kv_u32(&w, "k", 1);
    br_gguf *g = NULL;
    assert_int_equal(br_gguf_open_mem(w.p, w.len, "v2", &g, NULL, 0), BR_OK);
    assert_int_equal(br_gguf_version(g), 2);
    br_gguf_close(g);
    w.p[4] = 1;
    char err[BR_GGUF_ERR_CAP];
    assert_int_equal(open_bytes(w.p, w.len, "v1.gguf", err, sizeof(err)), BR_ERR_UNSUPPORTED);
    assert_non_null(strstr(err, "version 1 not supported"));
    gw_free(&w);
}

static void test_rejects_hand_made(void **state)
{
    (void)state;
    struct gw w = {0};
    gw_bytes(&w, "GGUX", 4);
    gw_u32(&w, 3);
    expect_reject(&w, "magic.gguf", "bad magic");
    gw_free(&w);

    gw_header(&w, 3, 0, UINT64_C(1) << 60);
    expect_reject(&w, "kvcount.gguf", "absurd metadata count");
    gw_free(&w);

    gw_header(&w, 3, 1000000, 0);
    expect_reject(&w, "tcount.gguf", "absurd tensor count");
    gw_free(&w);

    gw_header(&w, 3, 0, 1);
    gw_u64(&w, UINT64_C(1) << 62);
    gw_zeros(&w, 32);
    expect_reject(&w, "keylen.gguf", "metadata key length");
    gw_free(&w);

    gw_header(&w, 3, 0, 1);
    gw_str(&w, "k");
    gw_u32(&w, 13);
    gw_u32(&w, 0);
    expect_reject(&w, "vtype.gguf", "unknown value type 13");
    gw_free(&w);

    gw_header(&w, 3, 0, 1);
    gw_str(&w, "k");
    gw_u32(&w, 9);
    gw_u32(&w, 8);
    gw_u64(&w, 1000000000);
    expect_reject(&w, "arrlen.gguf", "array length 1000000000 cannot fit");
    gw_free(&w);

    gw_header(&w, 3, 0, 2);
    gw_kv_u32(&w, "dup", 1);
    gw_kv_u32(&w, "dup", 2);
    expect_reject(&w, "dupkey.gguf", "duplicate metadata key 'dup'");
    gw_free(&w);

    gw_header(&w, 3, 0, 1);
    gw_kv_u32(&w, "general.alignment", 24);
    expect_reject(&w, "align.gguf", "not a power of two");
    gw_free(&w);
}

static void test_rejects_nesting(void **state)
{
    (void)state;
    struct gw w = {0};
    gw_header(&w, 3, 0, 1);
    gw_str(&w, "deep");
    gw_u32(&w, 9);
    for (int i = 0; i < 12; i++) {
        gw_u32(&w, 9);
        gw_u64(&w, 1);
    }
    gw_u32(&w, 0);
    gw_u64(&w, 0);
    gw_zeros(&w, 64);
    expect_reject(&w, "deep.gguf", "nested deeper");
    gw_free(&w);
}

/* One tensor `t` with n_dims/dims/type/offset, data section of data_len bytes. */
static void one_tensor(struct gw *w, uint32_t n_dims, const uint64_t *dims, uint32_t type,
                       uint64_t off, size_t data_len)
{
    gw_header(w, 3, 1, 0);
    gw_tensor(w, "t", n_dims, dims, type, off);
    gw_align(w, 32);
    gw_zeros(w, data_len);
}

static void test_rejects_tensors(void **state)
{
    (void)state;
    struct gw w = {0};
    uint64_t dims[5] = {32, 2, 1, 1, 1};
    one_tensor(&w, 5, dims, 0, 0, 256);
    expect_reject(&w, "ndims.gguf", "n_dims 5 not in 1..4");
    gw_free(&w);
    uint64_t zero[2] = {32, 0};
    one_tensor(&w, 2, zero, 0, 0, 256);
    expect_reject(&w, "zerodim.gguf", "impossible dimension 1 = 0");
    gw_free(&w);
    uint64_t huge[2] = {UINT64_C(1) << 40, UINT64_C(1) << 40};
    one_tensor(&w, 2, huge, 0, 0, 256);
    expect_reject(&w, "huge.gguf", "impossible dimension");
    gw_free(&w);
    uint64_t big[1] = {UINT64_C(1) << 62}; /* 2^62 f32 = 2^64 bytes: must not wrap to 0 */
    one_tensor(&w, 1, big, 0, 0, 256);
    expect_reject(&w, "wrap.gguf", "byte size overflows");
    gw_free(&w);
    uint64_t big2[2] = {UINT64_C(1) << 31, UINT64_C(1) << 31};
    one_tensor(&w, 2, big2, 0, 0, 256);
    expect_reject(&w, "wrap2.gguf", "byte size overflows");
    gw_free(&w);
    uint64_t odd[1] = {33};
    one_tensor(&w, 1, odd, BR_GGUF_GGML_Q8_0, 0, 256);
    expect_reject(&w, "blocks.gguf", "not a whole number of q8_0 blocks");
    gw_free(&w);
    one_tensor(&w, 1, dims, 3 /* Q4_1 */, 0, 256);
    expect_reject(&w, "q41.gguf", "ggml type 3 not supported");
    gw_free(&w);
    one_tensor(&w, 1, dims, 0, 16, 256);
    expect_reject(&w, "misalign.gguf", "offset 16 not aligned to 32");
    gw_free(&w);
    one_tensor(&w, 1, dims, 0, 0, 127);
    expect_reject(&w, "short.gguf", "past the end of the file");
    gw_free(&w);
    one_tensor(&w, 1, dims, 0, UINT64_C(1) << 63, 128);
    expect_reject(&w, "faroff.gguf", "past the end of the file");
    gw_free(&w);

    gw_header(&w, 3, 2, 0);
    gw_tensor(&w, "a", 1, dims, 0, 0);
    gw_tensor(&w, "b", 2, dims, 0, 96); /* a is [0,128), b [96, 352) */
    gw_align(&w, 32);
    gw_zeros(&w, 512);
    expect_reject(&w, "overlap.gguf", "tensor 'b' overlaps tensor 'a'");
    gw_free(&w);

    gw_header(&w, 3, 2, 0);
    gw_tensor(&w, "a", 1, dims, 0, 0);
    gw_tensor(&w, "a", 1, dims, 0, 128);
    gw_align(&w, 32);
    gw_zeros(&w, 256);
    expect_reject(&w, "dupname.gguf", "duplicate tensor name 'a'");
    gw_free(&w);
}

static void test_truncated_real_file(void **state)
{
    (void)state;
    size_t n = 0;
    uint8_t *f = gw_read_file(MODELS "stories260K/stories260K-Q4_K_M.gguf", &n);
    assert_non_null(f);
    char err[BR_GGUF_ERR_CAP];
    /* The last tensor ends 16 bytes before the end of the file (padding).
     * Inside the header/metadata: "truncated" or a length that runs past the end. */
    const size_t cuts[] = {0, 3, 7, 20, 100, 5000, 14000, 14229, 200000, n - 17};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        int rc = open_bytes(f, cuts[i], "trunc.gguf", err, sizeof(err));
        assert_int_not_equal(rc, BR_OK);
        assert_true(strstr(err, "truncated") || strstr(err, "past the end") ||
                    strstr(err, "cannot fit") || strstr(err, "bad magic") ||
                    strstr(err, "absurd") || strstr(err, "empty file"));
    }
    assert_int_equal(open_bytes(f, n - 17, "trunc.gguf", err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "past the end of the file"));
    /* every prefix of the metadata region fails cleanly, in memory */
    for (size_t cut = 0; cut < 14300; cut += 7) {
        br_gguf *g = NULL;
        assert_int_not_equal(br_gguf_open_mem(f, cut, "m", &g, err, sizeof(err)), BR_OK);
        assert_null(g);
        assert_true(err[0] != '\0');
    }
    free(f);
}

static void test_absurd_counts_real_file(void **state)
{
    (void)state;
    size_t n = 0;
    uint8_t *f = gw_read_file(MODELS "stories260K/stories260K-f32.gguf", &n);
    assert_non_null(f);
    if (!f || n <= 64) { /* (cmocka's asserts are not noreturn: keeps gcc's bounds check quiet) */
        fail();
        return;
    }
    char err[BR_GGUF_ERR_CAP];
    memset(f + 8, 0xff, 8); /* tensor count 2^64-1 */
    assert_int_equal(open_bytes(f, n, "tcount.gguf", err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "absurd tensor count 18446744073709551615"));
    assert_non_null(strstr(err, "at byte 8"));
    memset(f + 8, 0, 8);
    f[8] = 48;
    f[16] = 0xff; /* kv count 255: runs into the tensor infos */
    f[17] = 0x7f;
    assert_int_not_equal(open_bytes(f, n, "kvcount.gguf", err, sizeof(err)), BR_OK);
    assert_true(err[0] != '\0');
    free(f);
}

static void test_bit_flips(void **state)
{
    (void)state;
    size_t n = 0;
    uint8_t *f = gw_read_file(MODELS "stories260K/stories260K-Q4_K_M.gguf", &n);
    assert_non_null(f);
    uint8_t *c = malloc(n);
    assert_non_null(c);
    srand(12345);
    int rejected = 0;
    for (int i = 0; i < 3000; i++) {
        memcpy(c, f, n);
        size_t pos = (size_t)rand() % 14300; /* header, metadata and tensor infos */
        c[pos] ^= (uint8_t)(1u << (rand() % 8));
        br_gguf *g = NULL;
        char err[BR_GGUF_ERR_CAP];
        int rc = br_gguf_open_mem(c, n, "flip", &g, err, sizeof(err));
        if (rc != BR_OK) {
            assert_true(strncmp(err, "flip: ", 6) == 0);
            rejected++;
        }
        br_gguf_close(g);
    }
    assert_true(rejected > 100);
    /* and one flipped copy through a real file */
    memcpy(c, f, n);
    c[0] ^= 0x01;
    char err[BR_GGUF_ERR_CAP];
    assert_int_equal(open_bytes(c, n, "flipped.gguf", err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "bad magic"));
    free(c);
    free(f);
}

static void test_missing_and_empty_file(void **state)
{
    (void)state;
    br_gguf *g = NULL;
    char err[BR_GGUF_ERR_CAP];
    assert_int_not_equal(br_gguf_open("/nonexistent/x.gguf", &g, err, sizeof(err)), BR_OK);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(open_bytes("", 0, "empty.gguf", err, sizeof(err)), BR_ERR_PARSE);
    assert_non_null(strstr(err, "empty file"));
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories_f32),
        cmocka_unit_test(test_stories_q4km_types),
        cmocka_unit_test(test_tiny_random),
        cmocka_unit_test(test_vocab_only),
        cmocka_unit_test(test_all_value_types),
        cmocka_unit_test(test_version2_accepted_version1_refused),
        cmocka_unit_test(test_rejects_hand_made),
        cmocka_unit_test(test_rejects_nesting),
        cmocka_unit_test(test_rejects_tensors),
        cmocka_unit_test(test_truncated_real_file),
        cmocka_unit_test(test_absurd_counts_real_file),
        cmocka_unit_test(test_bit_flips),
        cmocka_unit_test(test_missing_and_empty_file),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_gguf", tests, setup_dir, teardown_dir);
}
