/* SPDX-License-Identifier: MIT */
/*
 * SentencePiece-style BPE tokenizer (llama's "SPM" vocabulary model). A tokenizer is built once
 * from a vocabulary (piece strings, float scores, token types as in GGUF's
 * tokenizer.ggml.token_type, special ids) and is immutable afterwards: encode and decode may run
 * from many threads at once.
 *
 * Encoding follows llama's SPM rules: a space is put in front of the text ("dummy prefix"),
 * every space becomes U+2581 ("▁"), the text is cut into UTF-8 characters, then adjacent symbols
 * are merged greedily, always the pair whose merged piece has the highest score (leftmost on
 * ties), as long as the merged piece is a normal or user-defined token. Symbols left without a
 * token fall back to byte tokens <0xXX> (then to a one-byte piece, then to unk). Control,
 * unknown and unused tokens are never produced from text. Invalid UTF-8 never fails: each byte
 * of an invalid sequence is a symbol of its own (llama.cpp instead takes the length from the
 * lead byte, which can swallow a following space; both agree on valid UTF-8).
 *
 * Pieces are stored in SentencePiece form ("▁" for a space). llama2.c's tokenizer.bin stores
 * spaces as ' ' instead; its loader converts them.
 *
 * Decoding turns "▁" back into spaces and byte tokens into their raw byte; control, unknown and
 * unused tokens give no text; the leading space of the first piece after BOS is dropped (the
 * dummy prefix), as llama2.c and llama.cpp do. decode(encode(s, add_bos=true)) == s for any
 * bytes s that do not contain U+2581 themselves, as long as the vocabulary has all 256 byte
 * tokens and "▁".
 */
#ifndef BR_ENGINE_TOKENIZER_H
#define BR_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/slice.h"

/* Token types, numbered as GGUF's tokenizer.ggml.token_type (llama.cpp's llama_token_type). */
enum br_tok_type {
    BR_TOK_UNDEFINED = 0,
    BR_TOK_NORMAL = 1,
    BR_TOK_UNKNOWN = 2,
    BR_TOK_CONTROL = 3,
    BR_TOK_USER_DEFINED = 4,
    BR_TOK_UNUSED = 5,
    BR_TOK_BYTE = 6,
};

/* Largest vocabulary and longest piece any loader accepts. */
#define BR_TOK_MAX_VOCAB     (1u << 22)
#define BR_TOK_MAX_PIECE_LEN 4096u
/* Longest text encode accepts (bytes). */
#define BR_TOK_MAX_TEXT      (64u << 20)

struct br_tokenizer;

/* A vocabulary given as parallel arrays (e.g. from a GGUF file). Everything is copied. */
struct br_tok_vocab {
    const struct br_slice *pieces; /* n pieces in SentencePiece form ("▁" for a space) */
    const float *scores;           /* n scores; NULL means all 0 */
    const int32_t *types;          /* n enum br_tok_type values; NULL means inferred (below) */
    size_t n;
    int32_t bos; /* -1 when absent */
    int32_t eos; /* -1 when absent */
    int32_t unk; /* -1 when absent */
};

/**
 * Builds a tokenizer from arrays. When types is NULL they are inferred as llama2.c does: unk
 * is UNKNOWN, bos and eos are CONTROL, "<0xXX>" pieces are BYTE, the rest NORMAL. Rejects
 * (BR_ERR_PARSE, message in err) n == 0 or too large, pieces longer than BR_TOK_MAX_PIECE_LEN,
 * normal/user-defined pieces that are not valid UTF-8, byte tokens whose piece is not
 * "<0xXX>", unknown type values, non-finite scores, special ids out of range. Duplicate pieces
 * are accepted (the highest id wins the text lookup). err (may be NULL) receives a
 * NUL-terminated message of at most err_cap bytes. On success *out is owned by the caller
 * (br_tokenizer_free).
 */
int br_tokenizer_from_vocab(const struct br_tok_vocab *v, struct br_tokenizer **out, char *err,
                            size_t err_cap);

/**
 * Parses llama2.c's tokenizer.bin from memory: int32 max_token_length, then per token float
 * score, int32 length, bytes (spaces become "▁"). When n_vocab is not 0 the file must hold
 * exactly that many tokens, otherwise it is read to its end. Ids 0/1/2 are unk/bos/eos.
 * Truncation, negative or absurd lengths, trailing bytes and everything
 * br_tokenizer_from_vocab rejects give BR_ERR_PARSE with "name: what at offset N" in err.
 */
int br_tokenizer_load_llama2c_mem(const void *data, size_t len, size_t n_vocab, const char *name,
                                  struct br_tokenizer **out, char *err, size_t err_cap);

/** Reads the file at path and calls br_tokenizer_load_llama2c_mem (BR_ERR_IO if unreadable). */
int br_tokenizer_load_llama2c(const char *path, size_t n_vocab, struct br_tokenizer **out,
                              char *err, size_t err_cap);

/** Frees a tokenizer; NULL is a no-op. */
void br_tokenizer_free(struct br_tokenizer *t);

size_t br_tokenizer_n_vocab(const struct br_tokenizer *t);
int32_t br_tokenizer_bos(const struct br_tokenizer *t);
int32_t br_tokenizer_eos(const struct br_tokenizer *t);
int32_t br_tokenizer_unk(const struct br_tokenizer *t);

/** Piece (SentencePiece form, borrowed from t), score and type of id; false when out of range. */
bool br_tokenizer_token(const struct br_tokenizer *t, int32_t id, struct br_slice *piece,
                        float *score, enum br_tok_type *type);

/** Id of an exact piece (SentencePiece form) of any type, or -1. */
int32_t br_tokenizer_find(const struct br_tokenizer *t, struct br_slice piece);

/**
 * Encodes len bytes of text (any bytes). Empty text gives no tokens (only BOS when add_bos).
 * *ids (allocated with br_malloc, caller br_free's it; NULL when *n_ids == 0) receives the
 * ids. BR_ERR_LIMIT above BR_TOK_MAX_TEXT bytes, BR_ERR_NOMEM, BR_ERR_UNSUPPORTED when a byte
 * has no token and there is no unk.
 */
int br_tokenizer_encode(const struct br_tokenizer *t, const char *text, size_t len, bool add_bos,
                        int32_t **ids, size_t *n_ids);

/**
 * Text of id when it follows prev (prev < 0: none): borrowed from t, never NUL-terminated.
 * BR_ERR_RANGE for an id out of range.
 */
int br_tokenizer_piece(const struct br_tokenizer *t, int32_t prev, int32_t id,
                       struct br_slice *out);

/** Appends the text of n ids to out (prev of the first is -1). BR_ERR_RANGE, BR_ERR_NOMEM. */
int br_tokenizer_decode(const struct br_tokenizer *t, const int32_t *ids, size_t n,
                        struct br_buf *out);

#endif
