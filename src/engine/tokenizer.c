/* SPDX-License-Identifier: MIT */
/*
 * SentencePiece BPE tokenizer (llama "SPM"): vocabulary construction and validation, llama2.c's
 * tokenizer.bin loader, encode (priority queue of candidate merges over a linked list of
 * symbols, piece -> id hash map) and decode. Written from the SentencePiece BPE description
 * (highest-scoring adjacent pair first, byte fallback) and the two file layouts.
 */
#include "engine/tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/err.h"
#include "core/map.h"

/* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible space. */
static const char br__tok_space[3] = {'\xe2', '\x96', '\x81'};
#define BR__TOK_SPACE_LEN 3u

/* Most bytes of pieces in one vocabulary (offsets are 32-bit). */
#define BR__TOK_MAX_TEXT_BYTES (1u << 30)

/* Largest llama2.c tokenizer.bin accepted (the 32k vocabulary is 434 KB). */
#define BR__TOK_MAX_FILE (256u << 20)

struct br__tok {
    uint32_t off;     /* piece in t->text */
    uint32_t len;     /* piece bytes */
    uint32_t dec_off; /* decoded text in t->dec */
    uint32_t dec_len; /* decoded bytes */
    float score;
    int32_t type; /* enum br_tok_type */
};

struct br_tokenizer {
    size_t n_vocab;
    struct br__tok *tok; /* owned, n_vocab entries */
    char *text;          /* owned, every piece followed by a NUL */
    char *dec;           /* owned, decoded pieces */
    struct br_map map;   /* piece -> &tok[id]; keys borrowed from text */
    int32_t byte_id[256];
    int32_t bos;
    int32_t eos;
    int32_t unk;
};

/* ---- validation helpers ---- */

static int br__tok_hex(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* Byte value of a "<0xXX>" piece, or -1. */
static int br__tok_byte_piece(struct br_slice p)
{
    int hi;
    int lo;
    if (p.len != 6 || memcmp(p.ptr, "<0x", 3) != 0 || p.ptr[5] != '>') {
        return -1;
    }
    hi = br__tok_hex((unsigned char)p.ptr[3]);
    lo = br__tok_hex((unsigned char)p.ptr[4]);
    if (hi < 0 || lo < 0) {
        return -1;
    }
    return hi * 16 + lo;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when invalid. */
static size_t br__tok_utf8_seq(const unsigned char *s, size_t n)
{
    size_t need;
    uint32_t cp;
    if (s[0] < 0x80) {
        return 1;
    }
    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        need = 2;
        cp = s[0] & 0x1Fu;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        need = 3;
        cp = s[0] & 0x0Fu;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        need = 4;
        cp = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (n < need) {
        return 0;
    }
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0u) != 0x80u) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if ((need == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (need == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
        return 0;
    }
    return need;
}

/* Byte offset of the first invalid UTF-8 sequence, or n when the whole slice is valid. */
static size_t br__tok_utf8_check(struct br_slice p)
{
    const unsigned char *s = (const unsigned char *)p.ptr;
    size_t i = 0;
    while (i < p.len) {
        size_t k = br__tok_utf8_seq(s + i, p.len - i);
        if (k == 0) {
            return i;
        }
        i += k;
    }
    return p.len;
}

static bool br__tok_mergeable(int32_t type)
{
    return type == BR_TOK_NORMAL || type == BR_TOK_USER_DEFINED;
}

static int32_t br__tok_infer_type(const struct br_tok_vocab *v, size_t i)
{
    if ((int64_t)i == v->unk) {
        return BR_TOK_UNKNOWN;
    }
    if ((int64_t)i == v->bos || (int64_t)i == v->eos) {
        return BR_TOK_CONTROL;
    }
    if (br__tok_byte_piece(v->pieces[i]) >= 0) {
        return BR_TOK_BYTE;
    }
    return BR_TOK_NORMAL;
}

static bool br__tok_special_ok(int32_t id, size_t n)
{
    return id >= -1 && (id < 0 || (size_t)id < n);
}

static int br__tok_check_header(const struct br_tok_vocab *v, char *err, size_t cap)
{
    if (!v || !v->pieces || v->n == 0 || v->n > BR_TOK_MAX_VOCAB) {
        br_err_printf(err, cap, "vocabulary: %zu tokens (need 1..%u)", v ? v->n : 0,
                      BR_TOK_MAX_VOCAB);
        return BR_ERR_PARSE;
    }
    if (!br__tok_special_ok(v->bos, v->n) || !br__tok_special_ok(v->eos, v->n) ||
        !br__tok_special_ok(v->unk, v->n)) {
        br_err_printf(err, cap,
                      "vocabulary: special id out of range (bos %d eos %d unk %d, %zu tokens)",
                      (int)v->bos, (int)v->eos, (int)v->unk, v->n);
        return BR_ERR_PARSE;
    }
    return BR_OK;
}

/* Checks token i; sets *type. */
static int br__tok_check_token(const struct br_tok_vocab *v, size_t i, int32_t *type, char *err,
                               size_t cap)
{
    struct br_slice p = v->pieces[i];
    size_t bad;
    *type = v->types ? v->types[i] : br__tok_infer_type(v, i);
    if (p.len > BR_TOK_MAX_PIECE_LEN || (p.len > 0 && !p.ptr)) {
        br_err_printf(err, cap, "vocabulary: token %zu: piece length %zu (max %u)", i, p.len,
                      BR_TOK_MAX_PIECE_LEN);
        return BR_ERR_PARSE;
    }
    if (*type < BR_TOK_UNDEFINED || *type > BR_TOK_BYTE) {
        br_err_printf(err, cap, "vocabulary: token %zu: unknown token type %d", i, (int)*type);
        return BR_ERR_PARSE;
    }
    if (v->scores && !isfinite(v->scores[i])) {
        br_err_printf(err, cap, "vocabulary: token %zu: score is not finite", i);
        return BR_ERR_PARSE;
    }
    if (*type == BR_TOK_BYTE && br__tok_byte_piece(p) < 0) {
        br_err_printf(err, cap, "vocabulary: token %zu: byte token is not <0xXX>", i);
        return BR_ERR_PARSE;
    }
    bad = br__tok_utf8_check(p);
    if (br__tok_mergeable(*type) && bad != p.len) {
        br_err_printf(err, cap, "vocabulary: token %zu: piece is not valid UTF-8 (byte %zu)", i,
                      bad);
        return BR_ERR_PARSE;
    }
    return BR_OK;
}

/* Writes the decoded text of a piece at dst; returns its length (never more than p.len). */
static size_t br__tok_decode_piece(struct br_slice p, int32_t type, char *dst)
{
    size_t n = 0;
    if (type == BR_TOK_BYTE) {
        dst[0] = (char)br__tok_byte_piece(p);
        return 1;
    }
    if (type == BR_TOK_USER_DEFINED) {
        if (p.len) {
            memcpy(dst, p.ptr, p.len);
        }
        return p.len;
    }
    if (type != BR_TOK_NORMAL) {
        return 0;
    }
    for (size_t i = 0; i < p.len;) {
        if (p.len - i >= BR__TOK_SPACE_LEN && memcmp(p.ptr + i, br__tok_space, 3) == 0) {
            dst[n++] = ' ';
            i += BR__TOK_SPACE_LEN;
        } else {
            dst[n++] = p.ptr[i++];
        }
    }
    return n;
}

static int br__tok_alloc(struct br_tokenizer *t, size_t n, size_t total)
{
    t->tok = br_calloc(n, sizeof(*t->tok));
    t->text = br_malloc(total + n + 1);
    t->dec = br_malloc(total + 1);
    if (!t->tok || !t->text || !t->dec) {
        return BR_ERR_NOMEM;
    }
    return BR_OK;
}

static int br__tok_fill(struct br_tokenizer *t, const struct br_tok_vocab *v, char *err, size_t cap)
{
    size_t off = 0;
    size_t dec_off = 0;
    for (size_t i = 0; i < v->n; i++) {
        struct br_slice p = v->pieces[i];
        struct br__tok *k = &t->tok[i];
        int32_t type;
        int rc = br__tok_check_token(v, i, &type, err, cap);
        if (rc != BR_OK) {
            return rc;
        }
        if (p.len) {
            memcpy(t->text + off, p.ptr, p.len);
        }
        t->text[off + p.len] = '\0';
        k->off = (uint32_t)off;
        k->len = (uint32_t)p.len;
        k->score = v->scores ? v->scores[i] : 0.0f;
        k->type = type;
        k->dec_off = (uint32_t)dec_off;
        k->dec_len = (uint32_t)br__tok_decode_piece(p, type, t->dec + dec_off);
        off += p.len + 1;
        dec_off += k->dec_len;
    }
    return BR_OK;
}

static int br__tok_index(struct br_tokenizer *t)
{
    for (size_t i = 0; i < 256; i++) {
        t->byte_id[i] = -1;
    }
    for (size_t i = 0; i < t->n_vocab; i++) {
        struct br__tok *k = &t->tok[i];
        struct br_slice key = br_slice_make(t->text + k->off, k->len);
        if (k->type == BR_TOK_BYTE) {
            t->byte_id[br__tok_byte_piece(key)] = (int32_t)i;
        }
        if (k->len > 0 && br_map_put(&t->map, key, k) != BR_OK) {
            return BR_ERR_NOMEM;
        }
    }
    return BR_OK;
}

int br_tokenizer_from_vocab(const struct br_tok_vocab *v, struct br_tokenizer **out, char *err,
                            size_t err_cap)
{
    struct br_tokenizer *t = NULL;
    size_t total = 0;
    int rc = br__tok_check_header(v, err, err_cap);
    *out = NULL;
    if (rc != BR_OK) {
        return rc;
    }
    for (size_t i = 0; i < v->n; i++) {
        total += v->pieces[i].len > BR_TOK_MAX_PIECE_LEN ? 0 : v->pieces[i].len;
    }
    if (total > BR__TOK_MAX_TEXT_BYTES) {
        br_err_printf(err, err_cap, "vocabulary: %zu bytes of pieces (max %u)", total,
                      BR__TOK_MAX_TEXT_BYTES);
        return BR_ERR_PARSE;
    }
    t = br_calloc(1, sizeof(*t));
    if (!t) {
        return BR_ERR_NOMEM;
    }
    br_map_init(&t->map);
    t->n_vocab = v->n;
    t->bos = v->bos;
    t->eos = v->eos;
    t->unk = v->unk;
    rc = br__tok_alloc(t, v->n, total);
    if (rc == BR_OK) {
        rc = br__tok_fill(t, v, err, err_cap);
    }
    if (rc == BR_OK) {
        rc = br__tok_index(t);
    }
    if (rc != BR_OK) {
        if (rc == BR_ERR_NOMEM) {
            br_err_printf(err, err_cap, "vocabulary: out of memory");
        }
        br_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return BR_OK;
}

void br_tokenizer_free(struct br_tokenizer *t)
{
    if (!t) {
        return;
    }
    br_map_cleanup(&t->map);
    br_free(t->tok);
    br_free(t->text);
    br_free(t->dec);
    br_free(t);
}

/* ---- llama2.c tokenizer.bin ---- */

struct br__tok_reader {
    const unsigned char *p;
    size_t len;
    size_t off;
    const char *name;
    char *err;
    size_t cap;
};

static int br__tok_read_i32(struct br__tok_reader *r, const char *what, int32_t *v)
{
    if (r->len - r->off < 4) {
        br_err_printf(r->err, r->cap, "%s: truncated %s at offset %zu", r->name, what, r->off);
        return BR_ERR_PARSE;
    }
    memcpy(v, r->p + r->off, 4);
    r->off += 4;
    return BR_OK;
}

/* Reads one token record; piece points into the input. */
static int br__tok_read_record(struct br__tok_reader *r, int32_t max_len, size_t idx, float *score,
                               struct br_slice *piece)
{
    int32_t len;
    size_t at;
    if (r->len - r->off < 4) {
        br_err_printf(r->err, r->cap, "%s: token %zu: truncated score at offset %zu", r->name, idx,
                      r->off);
        return BR_ERR_PARSE;
    }
    memcpy(score, r->p + r->off, 4);
    r->off += 4;
    at = r->off;
    if (br__tok_read_i32(r, "token length", &len) != BR_OK) {
        return BR_ERR_PARSE;
    }
    if (len < 0 || len > max_len) {
        br_err_printf(r->err, r->cap, "%s: token %zu: length %d at offset %zu outside 0..%d",
                      r->name, idx, (int)len, at, (int)max_len);
        return BR_ERR_PARSE;
    }
    if (r->len - r->off < (size_t)len) {
        br_err_printf(r->err, r->cap, "%s: token %zu: truncated piece at offset %zu (%d bytes)",
                      r->name, idx, r->off, (int)len);
        return BR_ERR_PARSE;
    }
    *piece = br_slice_make((const char *)r->p + r->off, (size_t)len);
    r->off += (size_t)len;
    return BR_OK;
}

/* Counts the records (validating them) and the bytes of their SentencePiece forms. */
static int br__tok_scan(struct br__tok_reader *r, int32_t max_len, size_t *n, size_t *bytes)
{
    *n = 0;
    *bytes = 0;
    while (r->off < r->len) {
        float score;
        struct br_slice piece;
        if (*n >= BR_TOK_MAX_VOCAB) {
            br_err_printf(r->err, r->cap, "%s: more than %u tokens", r->name, BR_TOK_MAX_VOCAB);
            return BR_ERR_PARSE;
        }
        if (br__tok_read_record(r, max_len, *n, &score, &piece) != BR_OK) {
            return BR_ERR_PARSE;
        }
        for (size_t i = 0; i < piece.len; i++) {
            *bytes += piece.ptr[i] == ' ' ? BR__TOK_SPACE_LEN : 1;
        }
        (*n)++;
    }
    return BR_OK;
}

/* Second pass: scores and pieces with ' ' turned into "▁" (copied into buf). */
static void br__tok_convert(struct br__tok_reader *r, int32_t max_len, size_t n, float *scores,
                            struct br_slice *pieces, char *buf)
{
    size_t off = 0;
    r->off = 4;
    for (size_t i = 0; i < n; i++) {
        struct br_slice p = {NULL, 0};
        size_t start = off;
        (void)br__tok_read_record(r, max_len, i, &scores[i], &p);
        for (size_t j = 0; j < p.len; j++) {
            if (p.ptr[j] == ' ') {
                memcpy(buf + off, br__tok_space, BR__TOK_SPACE_LEN);
                off += BR__TOK_SPACE_LEN;
            } else {
                buf[off++] = p.ptr[j];
            }
        }
        pieces[i] = br_slice_make(buf + start, off - start);
    }
}

static int br__tok_llama2c_header(struct br__tok_reader *r, int32_t *max_len)
{
    if (br__tok_read_i32(r, "max_token_length", max_len) != BR_OK) {
        return BR_ERR_PARSE;
    }
    if (*max_len <= 0 || *max_len > (int32_t)BR_TOK_MAX_PIECE_LEN) {
        br_err_printf(r->err, r->cap, "%s: max_token_length %d at offset 0 outside 1..%u", r->name,
                      (int)*max_len, BR_TOK_MAX_PIECE_LEN);
        return BR_ERR_PARSE;
    }
    return BR_OK;
}

static int br__tok_check_count(struct br__tok_reader *r, size_t n, size_t n_vocab)
{
    if (n_vocab != 0 && n != n_vocab) {
        br_err_printf(r->err, r->cap, "%s: %zu tokens, expected %zu", r->name, n, n_vocab);
        return BR_ERR_PARSE;
    }
    if (n < 3) {
        br_err_printf(r->err, r->cap, "%s: %zu tokens (need at least unk, bos, eos)", r->name, n);
        return BR_ERR_PARSE;
    }
    return BR_OK;
}

int br_tokenizer_load_llama2c_mem(const void *data, size_t len, size_t n_vocab, const char *name,
                                  struct br_tokenizer **out, char *err, size_t err_cap)
{
    struct br__tok_reader r = {data, len, 0, name ? name : "tokenizer.bin", err, err_cap};
    struct br_tok_vocab v = {0};
    float *scores = NULL;
    struct br_slice *pieces = NULL;
    char *buf = NULL;
    char sub[192] = "";
    int32_t max_len;
    size_t n;
    size_t bytes;
    int rc;
    *out = NULL;
    if (!data && len) {
        return BR_ERR_INVAL;
    }
    rc = br__tok_llama2c_header(&r, &max_len);
    if (rc == BR_OK) {
        rc = br__tok_scan(&r, max_len, &n, &bytes);
    }
    if (rc == BR_OK) {
        rc = br__tok_check_count(&r, n, n_vocab);
    }
    if (rc != BR_OK) {
        return rc;
    }
    scores = br_calloc(n, sizeof(*scores));
    pieces = br_calloc(n, sizeof(*pieces));
    buf = br_malloc(bytes + 1);
    if (!scores || !pieces || !buf) {
        br_err_printf(err, err_cap, "%s: out of memory", r.name);
        rc = BR_ERR_NOMEM;
        goto out;
    }
    br__tok_convert(&r, max_len, n, scores, pieces, buf);
    v = (struct br_tok_vocab){pieces, scores, NULL, n, 1, 2, 0};
    rc = br_tokenizer_from_vocab(&v, out, sub, sizeof(sub));
    if (rc != BR_OK) {
        br_err_printf(err, err_cap, "%s: %s", r.name, sub);
    }
out:
    br_free(scores);
    br_free(pieces);
    br_free(buf);
    return rc;
}

static int br__tok_file_size(FILE *f, const char *path, size_t *size, char *err, size_t cap)
{
    long end;
    if (fseek(f, 0, SEEK_END) != 0) {
        br_err_printf(err, cap, "%s: cannot seek (errno %d)", path, errno);
        return BR_ERR_IO;
    }
    end = ftell(f);
    if (end < 0 || fseek(f, 0, SEEK_SET) != 0) {
        br_err_printf(err, cap, "%s: cannot seek (errno %d)", path, errno);
        return BR_ERR_IO;
    }
    if ((unsigned long)end > BR__TOK_MAX_FILE) {
        br_err_printf(err, cap, "%s: %ld bytes, larger than %u", path, end, BR__TOK_MAX_FILE);
        return BR_ERR_PARSE;
    }
    *size = (size_t)end;
    return BR_OK;
}

static int br__tok_read_file(const char *path, unsigned char **data, size_t *len, char *err,
                             size_t cap)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t size = 0;
    int rc;
    if (!f) {
        br_err_printf(err, cap, "%s: cannot open (errno %d)", path, errno);
        return BR_ERR_IO;
    }
    rc = br__tok_file_size(f, path, &size, err, cap);
    if (rc != BR_OK) {
        goto out;
    }
    buf = br_malloc(size + 1);
    if (!buf) {
        br_err_printf(err, cap, "%s: out of memory", path);
        rc = BR_ERR_NOMEM;
        goto out;
    }
    if (fread(buf, 1, size, f) != size) {
        br_err_printf(err, cap, "%s: short read", path);
        rc = BR_ERR_IO;
    }
out:
    (void)fclose(f);
    if (rc != BR_OK) {
        br_free(buf);
        return rc;
    }
    *data = buf;
    *len = size;
    return BR_OK;
}

int br_tokenizer_load_llama2c(const char *path, size_t n_vocab, struct br_tokenizer **out,
                              char *err, size_t err_cap)
{
    unsigned char *data = NULL;
    size_t len = 0;
    int rc;
    *out = NULL;
    rc = br__tok_read_file(path, &data, &len, err, err_cap);
    if (rc != BR_OK) {
        return rc;
    }
    rc = br_tokenizer_load_llama2c_mem(data, len, n_vocab, path, out, err, err_cap);
    br_free(data);
    return rc;
}

/* ---- accessors ---- */

size_t br_tokenizer_n_vocab(const struct br_tokenizer *t)
{
    return t->n_vocab;
}

int32_t br_tokenizer_bos(const struct br_tokenizer *t)
{
    return t->bos;
}

int32_t br_tokenizer_eos(const struct br_tokenizer *t)
{
    return t->eos;
}

int32_t br_tokenizer_unk(const struct br_tokenizer *t)
{
    return t->unk;
}

bool br_tokenizer_token(const struct br_tokenizer *t, int32_t id, struct br_slice *piece,
                        float *score, enum br_tok_type *type)
{
    const struct br__tok *k;
    if (id < 0 || (size_t)id >= t->n_vocab) {
        return false;
    }
    k = &t->tok[id];
    if (piece) {
        *piece = br_slice_make(t->text + k->off, k->len);
    }
    if (score) {
        *score = k->score;
    }
    if (type) {
        *type = (enum br_tok_type)k->type;
    }
    return true;
}

int32_t br_tokenizer_find(const struct br_tokenizer *t, struct br_slice piece)
{
    const struct br__tok *k;
    if (piece.len == 0) {
        return -1;
    }
    k = br_map_get(&t->map, piece);
    return k ? (int32_t)(k - t->tok) : -1;
}

/* ---- encode ---- */

struct br__sym {
    uint32_t off; /* into the escaped text */
    uint32_t n;   /* bytes; 0 once merged into its left neighbour */
    int32_t prev; /* -1 at the start */
    int32_t next; /* -1 at the end */
};

struct br__bigram {
    float score;
    uint32_t left;
    uint32_t right;
    uint32_t size;
};

struct br__enc {
    const struct br_tokenizer *t;
    char *s; /* escaped text */
    size_t slen;
    struct br__sym *sym;
    size_t nsym;
    struct br__bigram *heap;
    size_t nheap;
};

/* Id of a piece that merges may produce, or -1. */
static int32_t br__tok_lookup_merge(const struct br_tokenizer *t, const char *p, size_t n)
{
    const struct br__tok *k = br_map_get(&t->map, br_slice_make(p, n));
    if (!k || !br__tok_mergeable(k->type)) {
        return -1;
    }
    return (int32_t)(k - t->tok);
}

/* a comes out of the heap before b: higher score, then leftmost. */
static bool br__tok_before(const struct br__bigram *a, const struct br__bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void br__tok_heap_push(struct br__enc *e, struct br__bigram b)
{
    size_t i = e->nheap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!br__tok_before(&b, &e->heap[parent])) {
            break;
        }
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i] = b;
}

static struct br__bigram br__tok_heap_pop(struct br__enc *e)
{
    struct br__bigram top = e->heap[0];
    struct br__bigram last = e->heap[--e->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= e->nheap) {
            break;
        }
        if (c + 1 < e->nheap && br__tok_before(&e->heap[c + 1], &e->heap[c])) {
            c++;
        }
        if (!br__tok_before(&e->heap[c], &last)) {
            break;
        }
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (e->nheap > 0) {
        e->heap[i] = last;
    }
    return top;
}

static void br__tok_try_bigram(struct br__enc *e, int32_t left, int32_t right)
{
    const struct br__sym *l;
    const struct br__sym *r;
    int32_t id;
    if (left < 0 || right < 0) {
        return;
    }
    l = &e->sym[left];
    r = &e->sym[right];
    id = br__tok_lookup_merge(e->t, e->s + l->off, (size_t)l->n + r->n);
    if (id < 0) {
        return;
    }
    br__tok_heap_push(
        e, (struct br__bigram){e->t->tok[id].score, (uint32_t)left, (uint32_t)right, l->n + r->n});
}

/* Dummy prefix and spaces -> "▁". */
static void br__tok_escape(struct br__enc *e, const char *text, size_t len)
{
    size_t n = 0;
    memcpy(e->s, br__tok_space, BR__TOK_SPACE_LEN);
    n = BR__TOK_SPACE_LEN;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(e->s + n, br__tok_space, BR__TOK_SPACE_LEN);
            n += BR__TOK_SPACE_LEN;
        } else {
            e->s[n++] = text[i];
        }
    }
    e->slen = n;
}

static void br__tok_split(struct br__enc *e)
{
    size_t i = 0;
    e->nsym = 0;
    while (i < e->slen) {
        /* Whole UTF-8 characters; each byte of an invalid sequence is a symbol of its own. */
        size_t k = br__tok_utf8_seq((const unsigned char *)e->s + i, e->slen - i);
        struct br__sym *y = &e->sym[e->nsym];
        if (k == 0) {
            k = 1;
        }
        y->off = (uint32_t)i;
        y->n = (uint32_t)k;
        y->prev = (int32_t)e->nsym - 1;
        y->next = (int32_t)e->nsym + 1;
        e->nsym++;
        i += k;
    }
    e->sym[e->nsym - 1].next = -1;
}

static void br__tok_merge_all(struct br__enc *e)
{
    for (size_t i = 0; i + 1 < e->nsym; i++) {
        br__tok_try_bigram(e, (int32_t)i, (int32_t)i + 1);
    }
    while (e->nheap > 0) {
        struct br__bigram b = br__tok_heap_pop(e);
        struct br__sym *l = &e->sym[b.left];
        struct br__sym *r = &e->sym[b.right];
        /* Stale entry: one side was merged away or grew since the pair was queued. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size || l->next != (int32_t)b.right) {
            continue;
        }
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) {
            e->sym[r->next].prev = (int32_t)b.left;
        }
        br__tok_try_bigram(e, l->prev, (int32_t)b.left);
        br__tok_try_bigram(e, (int32_t)b.left, l->next);
    }
}

/* Token for one byte with no piece of its own. */
static int32_t br__tok_byte_token(const struct br_tokenizer *t, unsigned char c)
{
    const struct br__tok *k;
    char one = (char)c;
    if (t->byte_id[c] >= 0) {
        return t->byte_id[c];
    }
    k = br_map_get(&t->map, br_slice_make(&one, 1));
    if (k && br__tok_mergeable(k->type)) {
        return (int32_t)(k - t->tok);
    }
    return t->unk;
}

static int br__tok_emit(const struct br__enc *e, int32_t *ids, size_t *n)
{
    for (int32_t i = 0; i >= 0; i = e->sym[i].next) {
        const struct br__sym *y = &e->sym[i];
        int32_t id = br__tok_lookup_merge(e->t, e->s + y->off, y->n);
        if (id >= 0) {
            ids[(*n)++] = id;
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) {
            id = br__tok_byte_token(e->t, (unsigned char)e->s[y->off + j]);
            if (id < 0) {
                return BR_ERR_UNSUPPORTED;
            }
            ids[(*n)++] = id;
        }
    }
    return BR_OK;
}

static int br__tok_encode_alloc(struct br__enc *e, size_t len, int32_t **ids)
{
    size_t cap = BR__TOK_SPACE_LEN * (len + 1);
    e->s = br_malloc(cap);
    /* Nothing is read before it is written: no zeroing (cap <= 3 * BR_TOK_MAX_TEXT + 3). */
    e->sym = br_malloc(cap * sizeof(*e->sym));
    e->heap = br_malloc(3 * cap * sizeof(*e->heap));
    *ids = br_malloc((cap + 1) * sizeof(**ids));
    if (!e->s || !e->sym || !e->heap || !*ids) {
        return BR_ERR_NOMEM;
    }
    return BR_OK;
}

int br_tokenizer_encode(const struct br_tokenizer *t, const char *text, size_t len, bool add_bos,
                        int32_t **ids, size_t *n_ids)
{
    struct br__enc e = {t, NULL, 0, NULL, 0, NULL, 0};
    size_t n = 0;
    int rc = BR_OK;
    *ids = NULL;
    *n_ids = 0;
    if (len > BR_TOK_MAX_TEXT) {
        return BR_ERR_LIMIT;
    }
    if (add_bos && t->bos < 0) {
        return BR_ERR_UNSUPPORTED;
    }
    rc = br__tok_encode_alloc(&e, len, ids);
    if (rc != BR_OK) {
        goto out;
    }
    if (add_bos) {
        (*ids)[n++] = t->bos;
    }
    if (len > 0) {
        br__tok_escape(&e, text, len);
        br__tok_split(&e);
        br__tok_merge_all(&e);
        rc = br__tok_emit(&e, *ids, &n);
    }
out:
    br_free(e.s);
    br_free(e.sym);
    br_free(e.heap);
    if (rc != BR_OK || n == 0) {
        br_free(*ids);
        *ids = NULL;
        n = 0;
    }
    *n_ids = n;
    return rc;
}

/* ---- decode ---- */

int br_tokenizer_piece(const struct br_tokenizer *t, int32_t prev, int32_t id, struct br_slice *out)
{
    const struct br__tok *k;
    struct br_slice s;
    if (id < 0 || (size_t)id >= t->n_vocab) {
        *out = br_slice_make(NULL, 0);
        return BR_ERR_RANGE;
    }
    k = &t->tok[id];
    s = br_slice_make(t->dec + k->dec_off, k->dec_len);
    /* The dummy prefix: the first piece after BOS loses its leading space. */
    if (t->bos >= 0 && prev == t->bos && k->type == BR_TOK_NORMAL && s.len > 0 && s.ptr[0] == ' ') {
        s.ptr++;
        s.len--;
    }
    *out = s;
    return BR_OK;
}

int br_tokenizer_decode(const struct br_tokenizer *t, const int32_t *ids, size_t n,
                        struct br_buf *out)
{
    int32_t prev = -1;
    for (size_t i = 0; i < n; i++) {
        struct br_slice s;
        int rc = br_tokenizer_piece(t, prev, ids[i], &s);
        if (rc != BR_OK) {
            return rc;
        }
        if (s.len > 0) {
            rc = br_buf_append(out, s.ptr, s.len);
            if (rc != BR_OK) {
                return rc;
            }
        }
        prev = ids[i];
    }
    return BR_OK;
}
