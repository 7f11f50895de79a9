/* SPDX-License-Identifier: MIT */
/*
 * engine/llama2c: the stories260K checkpoint loads with the documented shape and its tensors
 * sit where llama2.c puts them; truncated, padded and corrupt copies (written to a temporary
 * directory) and malformed in-memory buffers are rejected with BR_ERR_PARSE and a message.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "br_test.h"
#include "core/err.h"
#include "engine/llama2c.h"

#define MODEL_PATH BR_SOURCE_DIR "/models/stories260K/stories260K.bin"

struct blob {
    unsigned char *data;
    size_t len;
};

static struct blob read_model(void)
{
    struct blob b = {0};
    FILE *f = fopen(MODEL_PATH, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n > 0);
    rewind(f);
    b.len = (size_t)n;
    b.data = aligned_alloc(64, (b.len + 63) / 64 * 64);
    assert_non_null(b.data);
    assert_int_equal(fread(b.data, 1, b.len, f), b.len);
    (void)fclose(f);
    return b;
}

static void test_llama2c_loads_stories260k(void **state)
{
    (void)state;
    struct br_llama2c *m = NULL;
    char err[256] = "";
    assert_int_equal(br_llama2c_open(MODEL_PATH, &m, err, sizeof(err)), BR_OK);
    const struct br_llama_config *c = &m->config;
    assert_int_equal(c->dim, 64);
    assert_int_equal(c->hidden_dim, 172);
    assert_int_equal(c->n_layers, 5);
    assert_int_equal(c->n_heads, 8);
    assert_int_equal(c->n_kv_heads, 4);
    assert_int_equal(c->vocab_size, 512);
    assert_int_equal(c->seq_len, 512);
    assert_int_equal(c->rope_style, BR_ROPE_ADJACENT);
    const struct br_llama_weights *w = &m->weights;
    assert_int_equal(w->n_layers, 5);
    assert_ptr_equal(w->token_embedding.data, (const char *)m->base + 28);
    assert_int_equal(w->token_embedding.rows, 512);
    assert_int_equal(w->token_embedding.cols, 64);
    /* shared classifier */
    assert_ptr_equal(w->output.data, w->token_embedding.data);
    /* wk of layer 1: after embedding (512*64), attn norms (5*64), wq (5*64*64), one wk */
    size_t off = 28 + 4 * (512 * 64 + 5 * 64 + 5 * 64 * 64 + 32 * 64);
    assert_ptr_equal(w->layers[1].wk.data, (const char *)m->base + off);
    assert_int_equal(w->layers[1].wk.rows, 32);
    assert_int_equal(w->layers[1].wk.cols, 64);
    assert_int_equal(w->layers[4].w2.rows, 64);
    assert_int_equal(w->layers[4].w2.cols, 172);
    /* the final norm ends 4 * (seq_len * head_dim) bytes before the end (the RoPE tables) */
    assert_ptr_equal((const char *)w->final_norm.data + (size_t)(64 * 4 + 512 * 8 * 4),
                     (const char *)m->base + m->len);
    br_llama2c_close(m);
}

static void expect_reject(const unsigned char *data, size_t len, const char *needle)
{
    struct br_llama2c *m = (struct br_llama2c *)1;
    char err[256] = "";
    assert_int_equal(br_llama2c_load_memory(data, len, "copy.bin", &m, err, sizeof(err)),
                     BR_ERR_PARSE);
    assert_null(m);
    if (!strstr(err, needle) || !strstr(err, "copy.bin")) {
        fail_msg("message '%s' lacks '%s'", err, needle);
    }
}

static void set_i32(unsigned char *p, int idx, int32_t v)
{
    memcpy(p + (size_t)4 * (size_t)idx, &v, 4);
}

static void test_llama2c_rejects_bad_buffers(void **state)
{
    (void)state;
    struct blob b = read_model();
    expect_reject(b.data, 10, "truncated header");
    expect_reject(b.data, b.len - 4, "truncated");
    expect_reject(b.data, 1000, "truncated");
    /* a copy with trailing bytes */
    unsigned char *big = aligned_alloc(64, (b.len + 64 + 63) / 64 * 64);
    assert_non_null(big);
    memcpy(big, b.data, b.len);
    expect_reject(big, b.len + 4, "trailing");
    /* absurd headers, one field at a time */
    const int32_t bad[][2] = {{0, 0},       {0, -64},    {0, 1 << 30},   {1, 0},       {2, 0},
                              {2, 1 << 20}, {3, 0},      {3, 7},         {4, 0},       {4, 16},
                              {4, 3},       {5, 0},      {5, INT32_MIN}, {5, 1 << 30}, {6, 0},
                              {6, -1},      {6, 1 << 30}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memcpy(big, b.data, b.len);
        set_i32(big, bad[i][0], bad[i][1]);
        expect_reject(big, b.len, "");
    }
    /* a plausible header that needs more bytes than the file has */
    memcpy(big, b.data, b.len);
    set_i32(big, 1, 4096);
    expect_reject(big, b.len, "truncated");
    /* negative vocab: an unshared classifier that the file does not contain */
    memcpy(big, b.data, b.len);
    set_i32(big, 5, -512);
    expect_reject(big, b.len, "truncated");
    /* huge-but-in-range dims must not overflow the size plan */
    memcpy(big, b.data, b.len);
    set_i32(big, 0, 65536);
    set_i32(big, 1, 8 * 65536);
    set_i32(big, 2, 1024);
    set_i32(big, 3, 2);
    set_i32(big, 4, 1);
    set_i32(big, 5, 1 << 22);
    set_i32(big, 6, 1 << 20);
    expect_reject(big, b.len, "truncated");
    /* misaligned buffer */
    struct br_llama2c *m = NULL;
    assert_int_equal(br_llama2c_load_memory(big + 1, b.len, NULL, &m, NULL, 0), BR_ERR_INVAL);
    free(big);
    free(b.data);
}

/* Writes len bytes of data to dir/name and returns the path (static buffer). */
static const char *write_copy(const char *dir, const char *name, const void *data, size_t len)
{
    static char path[512];
    (void)snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    (void)fclose(f);
    return path;
}

static void expect_file_reject(const char *path, int want)
{
    struct br_llama2c *m = NULL;
    char err[256] = "";
    assert_int_equal(br_llama2c_open(path, &m, err, sizeof(err)), want);
    assert_null(m);
    assert_non_null(strstr(err, path));
}

static void test_llama2c_rejects_bad_files(void **state)
{
    (void)state;
    char dir[512];
    (void)snprintf(dir, sizeof(dir), "%s/tmp-llama2c-XXXXXX", BR_BINARY_DIR);
    assert_non_null(mkdtemp(dir));
    struct blob b = read_model();
    const char *p = write_copy(dir, "truncated.bin", b.data, b.len / 2);
    expect_file_reject(p, BR_ERR_PARSE);
    assert_int_equal(unlink(p), 0);
    p = write_copy(dir, "tiny.bin", b.data, 7);
    expect_file_reject(p, BR_ERR_PARSE);
    assert_int_equal(unlink(p), 0);
    p = write_copy(dir, "empty.bin", b.data, 0);
    expect_file_reject(p, BR_ERR_PARSE);
    assert_int_equal(unlink(p), 0);
    set_i32(b.data, 3, 5); /* 64 is not a multiple of 5 heads */
    p = write_copy(dir, "corrupt.bin", b.data, b.len);
    expect_file_reject(p, BR_ERR_PARSE);
    assert_int_equal(unlink(p), 0);
    char missing[600];
    (void)snprintf(missing, sizeof(missing), "%s/missing.bin", dir);
    expect_file_reject(missing, BR_ERR_NOTFOUND);
    assert_int_equal(rmdir(dir), 0);
    free(b.data);
}

static void test_llama2c_close_null(void **state)
{
    (void)state;
    br_llama2c_close(NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama2c_loads_stories260k),
        cmocka_unit_test(test_llama2c_rejects_bad_buffers),
        cmocka_unit_test(test_llama2c_rejects_bad_files),
        cmocka_unit_test(test_llama2c_close_null),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("engine_llama2c", tests, NULL, NULL);
}
