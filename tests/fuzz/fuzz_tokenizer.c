/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the SentencePiece tokenizer. Input: one byte k, k bytes of text, then a
 * llama2.c tokenizer.bin (the whole input is also tried as a tokenizer.bin). When a tokenizer
 * loads: encoding the text (with and without BOS) succeeds with ids in range, decoding them
 * succeeds, and decode(encode(text, BOS)) == text whenever the text holds no U+2581, "▁" is a
 * normal token and every id produced is a normal or byte token. The same pieces are also
 * rebuilt with token types taken from the input (some invalid) through the array entry point.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "engine/tokenizer.h"

static const char space_marker[] = "\xe2\x96\x81";

static int has_marker(const char *s, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++) {
        if (memcmp(s + i, space_marker, 3) == 0) {
            return 1;
        }
    }
    return 0;
}

/* True when every id after the first `skip` is a normal or byte token. */
static int plain_ids(const struct br_tokenizer *t, const int32_t *ids, size_t n, size_t skip)
{
    for (size_t i = skip; i < n; i++) {
        enum br_tok_type type = BR_TOK_UNDEFINED;
        assert(br_tokenizer_token(t, ids[i], NULL, NULL, &type));
        if (type != BR_TOK_NORMAL && type != BR_TOK_BYTE) {
            return 0;
        }
    }
    return 1;
}

static int space_is_normal(const struct br_tokenizer *t)
{
    enum br_tok_type type = BR_TOK_UNDEFINED;
    int32_t id = br_tokenizer_find(t, br_slice_make(space_marker, 3));
    return id >= 0 && br_tokenizer_token(t, id, NULL, NULL, &type) && type == BR_TOK_NORMAL;
}

static void check_encode(const struct br_tokenizer *t, const char *text, size_t len, int bos,
                         int round_trip)
{
    int32_t *ids = NULL;
    size_t n = 0;
    struct br_buf out;
    int rc = br_tokenizer_encode(t, text, len, bos != 0, &ids, &n);
    if (rc != BR_OK) {
        assert(rc == BR_ERR_UNSUPPORTED);
        assert(ids == NULL && n == 0);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        assert(ids[i] >= 0 && (size_t)ids[i] < br_tokenizer_n_vocab(t));
    }
    br_buf_init(&out, 1u << 24);
    rc = br_tokenizer_decode(t, ids, n, &out);
    assert(rc == BR_OK);
    if (round_trip && bos && !has_marker(text, len) && space_is_normal(t) &&
        plain_ids(t, ids, n, 1)) {
        assert(out.len == len);
        assert(len == 0 || memcmp(out.ptr, text, len) == 0);
    }
    br_buf_cleanup(&out);
    br_free(ids);
}

/* The pieces of t again, with types from the input, through br_tokenizer_from_vocab. */
static void check_typed(const struct br_tokenizer *t, const uint8_t *data, size_t size,
                        const char *text, size_t len)
{
    size_t n = br_tokenizer_n_vocab(t);
    struct br_slice *pieces = calloc(n, sizeof(*pieces));
    int32_t *types = calloc(n, sizeof(*types));
    struct br_tokenizer *u = NULL;
    struct br_tok_vocab v;
    if (!pieces || !types) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        assert(br_tokenizer_token(t, (int32_t)i, &pieces[i], NULL, NULL));
        types[i] = data[i % size] % 8;
    }
    v = (struct br_tok_vocab){pieces, NULL, types, n, data[0] % 4 == 0 ? -1 : 1, 2, 0};
    if (br_tokenizer_from_vocab(&v, &u, NULL, 0) == BR_OK) {
        check_encode(u, text, len, 0, 0);
        check_encode(u, text, len, 1, 0);
        br_tokenizer_free(u);
    } else {
        assert(u == NULL);
    }
    free(pieces);
    free(types);
}

static void run(const uint8_t *bin, size_t bin_len, const char *text, size_t len,
                const uint8_t *data, size_t size)
{
    struct br_tokenizer *t = NULL;
    char err[256];
    int rc = br_tokenizer_load_llama2c_mem(bin, bin_len, 0, "fuzz", &t, err, sizeof(err));
    if (rc != BR_OK) {
        assert(rc == BR_ERR_PARSE || rc == BR_ERR_NOMEM);
        assert(t == NULL);
        assert(strlen(err) > 0);
        return;
    }
    check_encode(t, text, len, 0, 0);
    check_encode(t, text, len, 1, 1);
    check_typed(t, data, size, text, len);
    br_tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t k;
    if (size == 0) {
        return 0;
    }
    k = data[0];
    if (k > size - 1) {
        k = size - 1;
    }
    run(data + 1 + k, size - 1 - k, (const char *)data + 1, k, data, size);
    run(data, size, (const char *)data, size < 64 ? size : 64, data, size);
    return 0;
}
