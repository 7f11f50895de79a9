/* SPDX-License-Identifier: MIT */
/*
 * Token estimate for recorded prompts and answers that carry no counts (RouteLLM's CSVs),
 * so that they can be priced per token. The rule is the gateway's (src/upstream/tokens.c),
 * restated here because eval must not depend on upstream; a unit test checks that both give
 * the same count on real prompts. Pieces, as a GPT-style pre-tokenizer cuts them:
 *   - a letter run (bytes >= 0x80 count as letters), with one leading space or apostrophe:
 *     one token, or one per four bytes when longer than eight;
 *   - a digit run: one token per three digits;
 *   - a whitespace run: one token when it holds a newline, or when it is longer than one byte
 *     and ends the text; otherwise it folds into the next piece;
 *   - any other run of visible characters: one token.
 */
#include <stdbool.h>

#include "eval/dataset.h"

static bool letter(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}

static bool digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Each run starts at s[i], adds its tokens to *n and returns the index past it. */

static size_t word_run(const unsigned char *s, size_t len, size_t i, int64_t *n)
{
    size_t start = i++; /* a letter, or the space/apostrophe before one */
    while (i < len && letter(s[i])) {
        i++;
    }
    size_t w = i - start;
    *n += w <= 8 ? 1 : (int64_t)((w + 3) / 4);
    return i;
}

static size_t digit_run(const unsigned char *s, size_t len, size_t i, int64_t *n)
{
    size_t start = i;
    while (i < len && digit(s[i])) {
        i++;
    }
    *n += (int64_t)((i - start + 2) / 3);
    return i;
}

static size_t space_run(const unsigned char *s, size_t len, size_t i, int64_t *n)
{
    size_t start = i;
    bool newline = false;
    while (i < len && space(s[i])) {
        newline = newline || s[i] == '\n';
        i++;
    }
    if (newline || (i - start > 1 && i == len)) {
        (*n)++;
    }
    return i;
}

static size_t symbol_run(const unsigned char *s, size_t len, size_t i, int64_t *n)
{
    while (i < len && !letter(s[i]) && !digit(s[i]) && !space(s[i])) {
        i++;
    }
    (*n)++;
    return i;
}

int64_t br_eval_tokens_estimate(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    int64_t tokens = 0;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (letter(c) || ((c == ' ' || c == '\'') && i + 1 < len && letter(s[i + 1]))) {
            i = word_run(s, len, i, &tokens);
        } else if (digit(c)) {
            i = digit_run(s, len, i, &tokens);
        } else if (space(c)) {
            i = space_run(s, len, i, &tokens);
        } else {
            i = symbol_run(s, len, i, &tokens);
        }
    }
    return tokens;
}
