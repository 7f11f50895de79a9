/* SPDX-License-Identifier: MIT */
/*
 * Prompt feature extraction for the learned router (see features.h). One pass over the text
 * tokenises words (ASCII letters and digits, any byte >= 0x80; each punctuation byte is a token
 * of its own), hashes unigrams and bigrams and counts the structural features; a second pass,
 * only when character n-grams are on, hashes a rolling window of the lower-cased text with
 * whitespace runs collapsed. Both passes go through one emitter that either writes
 * (index, value) pairs into the caller's buffer or adds weights into dot products, so that
 * training and scoring see exactly the same features.
 *
 * The second half of the file computes the dense checks of an answer for verifiers: is there
 * a final answer, does its arithmetic hold when recomputed, does it hedge, did it stop
 * mid-sentence. Its arithmetic evaluator is a bounded shunting-yard (fixed stacks of 64, no
 * recursion, no allocation); text it cannot read is skipped.
 */
#include "route/features.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

/* Byte classes. */
enum {
    C_DIGIT = 0x001,
    C_UPPER = 0x002,
    C_LOWER = 0x004,
    C_SPACE = 0x008, /* space, tab, CR, FF, VT */
    C_NL = 0x010,
    C_PUNCT = 0x020, /* printable ASCII that is neither letter, digit nor space */
    C_MATH = 0x040,  /* + - * / = ^ < > % */
    C_CODE = 0x080,  /* { } ; ` */
    C_HIGH = 0x100,  /* >= 0x80 (UTF-8 continuation or lead byte) */
    C_QUOTE = 0x200, /* " ' */
    C_TEX = 0x400,   /* \ $ */
    C_PAREN = 0x800, /* ( ) [ ] */
};

#define C_WORD (C_DIGIT | C_UPPER | C_LOWER | C_HIGH)

/* A constant expression, so that the table below is a true constant (no first-use setup). */
#define CLS(c)                                                                             \
    (((c) >= '0' && (c) <= '9'                                                 ? C_DIGIT   \
      : (c) >= 'A' && (c) <= 'Z'                                               ? C_UPPER   \
      : (c) >= 'a' && (c) <= 'z'                                               ? C_LOWER   \
      : (c) == ' ' || (c) == '\t' || (c) == '\r' || (c) == '\f' || (c) == '\v' ? C_SPACE   \
      : (c) == '\n'                                                            ? C_NL      \
      : (c) >= 0x80                                                            ? C_HIGH    \
      : (c) > 0x20 && (c) < 0x7f                                               ? C_PUNCT   \
                                                                               : 0) |                                                    \
     ((c) == '+' || (c) == '-' || (c) == '*' || (c) == '/' || (c) == '=' || (c) == '^' ||  \
              (c) == '<' || (c) == '>' || (c) == '%'                                       \
          ? C_MATH                                                                         \
          : 0) |                                                                           \
     ((c) == '{' || (c) == '}' || (c) == ';' || (c) == '`' ? C_CODE : 0) |                 \
     ((c) == '"' || (c) == '\'' ? C_QUOTE : 0) | ((c) == '\\' || (c) == '$' ? C_TEX : 0) | \
     ((c) == '(' || (c) == ')' || (c) == '[' || (c) == ']' ? C_PAREN : 0))
#define CLS4(b)   CLS(b), CLS((b) + 1), CLS((b) + 2), CLS((b) + 3)
#define CLS16(b)  CLS4(b), CLS4((b) + 4), CLS4((b) + 8), CLS4((b) + 12)
#define CLS64(b)  CLS16(b), CLS16((b) + 16), CLS16((b) + 32), CLS16((b) + 48)
#define CLS256(b) CLS64(b), CLS64((b) + 64), CLS64((b) + 128), CLS64((b) + 192)

static const uint16_t cls_table[256] = {CLS256(0)};

static inline uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

#define K_WORD1  0x9e3779b97f4a7c15ULL
#define K_WORD2  0xbf58476d1ce4e5b9ULL
#define K_CHAR   0x94d049bb133111ebULL
#define K_ANSWER 0xd6e8feb86659fd93ULL /* namespace of answer words */

enum { FAM_WORD1 = 0, FAM_WORD2 = 1, FAM_CHAR = 2, N_FAM = 3 };

#define MAX_OUT 16

/* Features emitted before their weights are added (dot mode). */
#define PEND_MAX 32

/* Where features go: a buffer (training, tests) or dot products (scoring). */
struct sink {
    uint64_t mask;
    uint64_t seed;
    /* buffer mode */
    struct br_feature *out;
    size_t cap;
    size_t n;
    int truncated;
    /* dot mode: weight rows are prefetched when a feature is emitted and added in batches, so
     * that the cache misses of a large table overlap instead of stalling one by one */
    const float *w;
    size_t n_out;
    double fam[N_FAM][MAX_OUT];
    uint32_t pend_idx[PEND_MAX];
    float pend_sign[PEND_MAX];
    uint8_t pend_fam[PEND_MAX];
    size_t n_pend;
    /* both */
    size_t count[N_FAM];
};

/* Adds the weights of the pending features, in the order they were emitted. */
static void flush_pending(struct sink *s)
{
    for (size_t i = 0; i < s->n_pend; i++) {
        const float *wi = s->w + (size_t)s->pend_idx[i] * s->n_out;
        double *acc = s->fam[s->pend_fam[i]];
        float sign = s->pend_sign[i];
        for (size_t o = 0; o < s->n_out; o++) {
            acc[o] += (double)(sign * wi[o]);
        }
    }
    s->n_pend = 0;
}

static inline void emit(struct sink *s, int fam, uint64_t h)
{
    uint32_t idx = (uint32_t)(h & s->mask);
    float sign = (h >> 63) ? -1.0f : 1.0f;
    s->count[fam]++;
    if (s->w) {
        __builtin_prefetch(s->w + (size_t)idx * s->n_out);
        s->pend_idx[s->n_pend] = idx;
        s->pend_sign[s->n_pend] = sign;
        s->pend_fam[s->n_pend] = (uint8_t)fam;
        if (++s->n_pend == PEND_MAX) {
            flush_pending(s);
        }
        return;
    }
    if (s->n >= s->cap) {
        s->truncated = 1;
        return;
    }
    /* The family is kept in the magnitude until the final scale is known (finish_buffer). */
    s->out[s->n].index = idx;
    s->out[s->n].value = sign * (float)(fam + 1);
    s->n++;
}

static double fam_scale(size_t count)
{
    return count ? 1.0 / sqrt((double)count) : 0.0;
}

/* Structural counters gathered during the word pass. */
struct counts {
    size_t bytes, digits, upper, punct, math, high, code, quote, tex, paren;
    size_t words, cap_words, word_bytes, longest_word;
    size_t lines, blank_lines, indented_lines, longest_line;
    size_t qmarks, numbers, longest_number, choices, sentences, blanks;
    int last_char;
};

/* A word being hashed: bytes folded 8 at a time. */
struct word {
    uint64_t h;
    uint64_t acc;
    unsigned fill; /* bytes in acc */
    size_t len;
    int digits_only;
};

static inline void word_reset(struct word *w)
{
    w->h = 0;
    w->acc = 0;
    w->fill = 0;
    w->len = 0;
    w->digits_only = 1;
}

static inline void word_add(struct word *w, unsigned c)
{
    w->acc |= (uint64_t)c << (8 * w->fill);
    if (++w->fill == 8) {
        w->h = fmix64(w->h ^ w->acc) + K_WORD1;
        w->acc = 0;
        w->fill = 0;
    }
    w->len++;
}

static inline uint64_t word_hash(const struct word *w)
{
    return fmix64(w->h ^ w->acc ^ ((uint64_t)w->len << 56));
}

struct word_state {
    uint64_t prev; /* hash of the previous token, 0 at the start */
};

static inline void emit_token(struct sink *s, const struct br_features_config *cfg,
                              struct word_state *ws, uint64_t h)
{
    if (cfg->flags & BR_FEATURES_WORD1) {
        emit(s, FAM_WORD1, fmix64(h ^ s->seed));
    }
    if ((cfg->flags & BR_FEATURES_WORD2) && ws->prev) {
        emit(s, FAM_WORD2, fmix64(ws->prev * K_WORD2 + h + s->seed));
    }
    ws->prev = h | 1;
}

/* Shape of a number: 'd' per digit up to 4, then '+', so that 17 and 42 hash alike. */
static uint64_t number_shape_hash(size_t n_digits)
{
    size_t k = n_digits > 5 ? 5 : n_digits;
    return fmix64(0x6e756d0000000000ULL + k);
}

static void finish_word(struct sink *s, const struct br_features_config *cfg, struct word_state *ws,
                        struct word *w, struct counts *ct)
{
    if (w->len == 0) {
        return;
    }
    ct->words++;
    ct->word_bytes += w->len;
    if (w->len > ct->longest_word) {
        ct->longest_word = w->len;
    }
    uint64_t h;
    if (w->digits_only) {
        ct->numbers++;
        if (w->len > ct->longest_number) {
            ct->longest_number = w->len;
        }
        h = (cfg->flags & BR_FEATURES_NUMS) ? number_shape_hash(w->len) : word_hash(w);
    } else {
        h = word_hash(w);
    }
    emit_token(s, cfg, ws, h);
    word_reset(w);
}

/* Line-level state for multiple-choice markers and indentation. */
struct line_state {
    size_t pos;   /* bytes since the line start */
    size_t lead;  /* leading spaces */
    int nonspace; /* saw a non-space byte */
    int marker;   /* 0 none, 1 saw [A-H] or digit, 2 saw '.' or ')' after it */
    int open_paren;
};

/* A byte of a word: folded into its hash (letters lower-cased) and counted. */
static inline void word_byte(struct word *w, struct counts *ct, unsigned c, uint16_t k)
{
    if (w->len == 0 && (k & C_UPPER)) {
        ct->cap_words++;
    }
    if (!(k & C_DIGIT)) {
        w->digits_only = 0;
    }
    word_add(w, (k & C_UPPER) ? c + 32 : c);
    if (k & C_DIGIT) {
        ct->digits++;
    } else if (k & C_UPPER) {
        ct->upper++;
    } else if (k & C_HIGH) {
        ct->high++;
    }
}

/* A punctuation byte p[i] of p[0..n): a token of its own, and the counters it feeds. */
static inline void punct_byte(struct sink *s, const struct br_features_config *cfg,
                              struct word_state *ws, struct counts *ct, const unsigned char *p,
                              size_t n, size_t i, uint16_t k)
{
    const uint16_t *cls = cls_table;
    unsigned c = p[i];
    ct->punct++;
    emit_token(s, cfg, ws, fmix64(0x7075000000000000ULL + c));
    ct->math += (k & C_MATH) != 0;
    ct->code += (k & C_CODE) != 0;
    ct->quote += (k & C_QUOTE) != 0;
    ct->tex += (k & C_TEX) != 0;
    ct->paren += (k & C_PAREN) != 0;
    if (c == '?') {
        ct->qmarks++;
    }
    if ((c == '.' || c == '!' || c == '?') && (i + 1 == n || (cls[p[i + 1]] & (C_SPACE | C_NL)))) {
        ct->sentences++;
    }
    if (c == '_' && (i == 0 || !(cls[p[i - 1]] & C_WORD)) &&
        (i + 1 == n || !(cls[p[i + 1]] & C_WORD))) {
        ct->blanks++;
    }
}

static inline int choice_letter(unsigned c)
{
    return (c >= 'A' && c <= 'H') || (c >= 'a' && c <= 'h');
}

/* A newline: closes the line's counters and starts a new line. */
static inline void line_end(struct counts *ct, struct line_state *ls)
{
    ct->lines++;
    if (!ls->nonspace) {
        ct->blank_lines++;
    } else if (ls->lead >= 4) {
        ct->indented_lines++;
    }
    if (ls->pos > ct->longest_line) {
        ct->longest_line = ls->pos;
    }
    memset(ls, 0, sizeof(*ls));
}

/* A byte before the line's first non-space byte, or that byte itself. */
static inline void line_lead_byte(struct line_state *ls, unsigned c, uint16_t k)
{
    if (k & C_SPACE) {
        ls->lead += c == '\t' ? 4 : 1;
        return;
    }
    ls->nonspace = 1;
    if (c == '(') {
        ls->open_paren = 1;
        return;
    }
    ls->marker = choice_letter(c) ? 1 : 0;
}

/* Line-level counters of one byte other than a newline: indentation and multiple-choice
 * markers ("A. ", "b) ", "(c) " at the line start). */
static inline void line_byte(struct counts *ct, struct line_state *ls, unsigned c, uint16_t k)
{
    ls->pos++;
    if (!ls->nonspace) {
        line_lead_byte(ls, c, k);
        return;
    }
    if (ls->marker == 0 && ls->open_paren == 1 && ls->pos <= ls->lead + 2 && choice_letter(c)) {
        ls->marker = 1;
        ls->open_paren = 2;
        return;
    }
    if (ls->marker == 1) {
        ls->marker = (c == '.' || c == ')') ? 2 : -1;
        return;
    }
    if (ls->marker == 2) {
        if (k & C_SPACE) {
            ct->choices++;
        }
        ls->marker = -1;
    }
}

/*
 * After the word byte p[i]: the lower-case ASCII letters that follow in the same word, taken in
 * a tight loop when they change nothing but the word's hash and the line position (the line's
 * first byte and its choice marker are settled; such letters feed no counter). Returns the
 * index of the last byte taken. The result is the same as the byte-by-byte path.
 */
static inline size_t lower_run(struct word *w, struct line_state *ls, const unsigned char *p,
                               size_t n, size_t i)
{
    if (!ls->nonspace || ls->marker > 0 || (ls->marker == 0 && ls->open_paren == 1)) {
        return i;
    }
    size_t j = i + 1;
    while (j < n && (unsigned)(p[j] - 'a') < 26u) {
        word_add(w, p[j]);
        j++;
    }
    if (j > i + 1) {
        w->digits_only = 0;
        ls->pos += j - i - 1;
    }
    return j - 1;
}

static void word_pass(struct sink *s, const struct br_features_config *cfg, const unsigned char *p,
                      size_t n, struct counts *ct, struct word_state *ws, struct line_state *ls)
{
    const uint16_t *cls = cls_table;
    struct word w;
    word_reset(&w);
    for (size_t i = 0; i < n; i++) {
        unsigned c = p[i];
        uint16_t k = cls[c];
        if (k & C_WORD) {
            word_byte(&w, ct, c, k);
            line_byte(ct, ls, c, k);
            i = lower_run(&w, ls, p, n, i);
            continue;
        }
        finish_word(s, cfg, ws, &w, ct);
        if (k & C_PUNCT) {
            punct_byte(s, cfg, ws, ct, p, n, i, k);
        }
        if (k & C_NL) {
            line_end(ct, ls);
        } else {
            line_byte(ct, ls, c, k);
        }
    }
    finish_word(s, cfg, ws, &w, ct);
}

/* Lower-cased character stream with whitespace runs collapsed to one space. */
static void char_pass(struct sink *s, const struct br_features_config *cfg, const unsigned char *p,
                      size_t n, uint64_t *win, unsigned *fill, int *last_space)
{
    const uint16_t *cls = cls_table;
    const unsigned lo = cfg->char_min;
    const unsigned hi = cfg->char_max;
    for (size_t i = 0; i < n; i++) {
        unsigned c = p[i];
        uint16_t k = cls[c];
        if (k & (C_SPACE | C_NL)) {
            if (*last_space) {
                continue;
            }
            *last_space = 1;
            c = ' ';
        } else {
            *last_space = 0;
            if (k & C_UPPER) {
                c += 32;
            }
        }
        *win = (*win << 8) | c;
        if (*fill < 8) {
            (*fill)++;
        }
        for (unsigned g = lo; g <= hi && g <= *fill; g++) {
            uint64_t key = g == 8 ? *win : (*win & ((1ULL << (8 * g)) - 1));
            emit(s, FAM_CHAR, fmix64(key * K_CHAR + g + s->seed));
        }
    }
}

static double ln1p_over(size_t x, double d)
{
    return log1p((double)x) / d;
}

static double share(size_t a, size_t b)
{
    return b ? (double)a / (double)b : 0.0;
}

static double clamp01(double x)
{
    return x < 0 ? 0 : (x > 1 ? 1 : x);
}

static const char *const struct_names[] = {
    "log_bytes",      "log_words",        "log_lines",      "digit_share",   "upper_share",
    "punct_share",    "math_share",       "nonascii_share", "log_qmarks",    "log_numbers",
    "longest_number", "log_choices",      "code_share",     "indent_share",  "log_tex",
    "mean_word_len",  "log_longest_line", "ends_colon",     "ends_qmark",    "blank_line_share",
    "quote_share",    "log_sentences",    "log_blanks",     "capword_share", "longest_word",
    "paren_share",    "has_choices",
};

#define N_STRUCT_USED (sizeof(struct_names) / sizeof(struct_names[0]))

const char *br_features_struct_name(size_t k)
{
    return k < N_STRUCT_USED ? struct_names[k] : NULL;
}

static void struct_values(const struct counts *ct, size_t full_len, double *v)
{
    size_t lines = ct->lines + 1;
    double b = (double)(ct->bytes ? ct->bytes : 1);
    memset(v, 0, sizeof(double) * BR_FEATURES_N_STRUCT);
    v[0] = ln1p_over(full_len, 10.0);
    v[1] = ln1p_over(ct->words, 8.0);
    v[2] = ln1p_over(lines, 6.0);
    v[3] = (double)ct->digits / b;
    v[4] = (double)ct->upper / b;
    v[5] = (double)ct->punct / b;
    v[6] = clamp01(10.0 * (double)ct->math / b);
    v[7] = (double)ct->high / b;
    v[8] = ln1p_over(ct->qmarks, 3.0);
    v[9] = ln1p_over(ct->numbers, 5.0);
    v[10] = (double)(ct->longest_number > 16 ? 16 : ct->longest_number) / 16.0;
    v[11] = ln1p_over(ct->choices, 3.0);
    v[12] = clamp01(10.0 * (double)ct->code / b);
    v[13] = share(ct->indented_lines, lines);
    v[14] = ln1p_over(ct->tex, 4.0);
    v[15] = clamp01(share(ct->word_bytes, ct->words) / 10.0);
    v[16] = ln1p_over(ct->longest_line, 8.0);
    v[17] = ct->last_char == ':' ? 1.0 : 0.0;
    v[18] = ct->last_char == '?' ? 1.0 : 0.0;
    v[19] = share(ct->blank_lines, lines);
    v[20] = clamp01(10.0 * (double)ct->quote / b);
    v[21] = ln1p_over(ct->sentences, 5.0);
    v[22] = ln1p_over(ct->blanks, 2.0);
    v[23] = share(ct->cap_words, ct->words);
    v[24] = (double)(ct->longest_word > 20 ? 20 : ct->longest_word) / 20.0;
    v[25] = clamp01(10.0 * (double)ct->paren / b);
    v[26] = ct->choices >= 2 ? 1.0 : 0.0;
}

void br_features_config_default(struct br_features_config *out)
{
    memset(out, 0, sizeof(*out));
    out->hash_bits = 18;
    out->flags = BR_FEATURES_WORD1 | BR_FEATURES_WORD2 | BR_FEATURES_STRUCT | BR_FEATURES_NUMS;
    out->char_min = 3;
    out->char_max = 5;
    out->max_bytes = BR_FEATURES_DEFAULT_BYTES;
    out->seed = 0x5eed;
}

int br_features_config_check(const struct br_features_config *cfg)
{
    if (!cfg || cfg->hash_bits < BR_FEATURES_MIN_BITS || cfg->hash_bits > BR_FEATURES_MAX_BITS ||
        (cfg->flags & ~BR_FEATURES_ALL) != 0 || cfg->max_bytes > BR_FEATURES_MAX_WINDOW) {
        return BR_ERR_INVAL;
    }
    if ((cfg->flags & BR_FEATURES_CHAR) && (cfg->char_min < 1 || cfg->char_max < cfg->char_min ||
                                            cfg->char_max > BR_FEATURES_MAX_CHAR)) {
        return BR_ERR_INVAL;
    }
    return BR_OK;
}

size_t br_features_dim(const struct br_features_config *cfg)
{
    return ((size_t)1 << cfg->hash_bits) + BR_FEATURES_N_STRUCT;
}

static size_t window_len(const struct br_features_config *cfg, size_t len)
{
    size_t w = cfg->max_bytes ? cfg->max_bytes : BR_FEATURES_DEFAULT_BYTES;
    return len < w ? len : w;
}

size_t br_features_max(const struct br_features_config *cfg, size_t len)
{
    size_t n = window_len(cfg, len);
    size_t per_byte = 0;
    if (cfg->flags & BR_FEATURES_WORD1) {
        per_byte += 1;
    }
    if (cfg->flags & BR_FEATURES_WORD2) {
        per_byte += 1;
    }
    size_t total = per_byte * n;
    if (cfg->flags & BR_FEATURES_CHAR) {
        total += (size_t)(cfg->char_max - cfg->char_min + 1) * (n + 1);
    }
    return total + BR_FEATURES_N_STRUCT;
}

/* Runs both passes over the window (head and tail halves of long texts). */
static void run(const struct br_features_config *cfg, const char *text, size_t len, struct sink *s,
                double *sv, uint64_t ns)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t w = window_len(cfg, len);
    size_t n_seg = len > w ? 2 : 1;
    const unsigned char *seg[2] = {p, p};
    size_t seg_len[2] = {len, 0};
    if (n_seg == 2) {
        seg_len[0] = w / 2;
        seg[1] = p + len - (w - w / 2);
        seg_len[1] = w - w / 2;
    }
    struct counts ct;
    struct word_state ws = {0};
    struct line_state ls;
    memset(&ct, 0, sizeof(ct));
    memset(&ls, 0, sizeof(ls));
    s->mask = ((uint64_t)1 << cfg->hash_bits) - 1;
    s->seed = fmix64((uint64_t)cfg->seed + 1) ^ ns;
    for (size_t k = 0; k < n_seg; k++) {
        word_pass(s, cfg, seg[k], seg_len[k], &ct, &ws, &ls);
        ct.bytes += seg_len[k];
    }
    if (cfg->flags & BR_FEATURES_CHAR) {
        uint64_t win = 0;
        unsigned fill = 0;
        int last_space = 1;
        for (size_t k = 0; k < n_seg; k++) {
            char_pass(s, cfg, seg[k], seg_len[k], &win, &fill, &last_space);
        }
    }
    /* last non-space byte */
    ct.last_char = 0;
    for (size_t i = len; i > 0 && len - i < 64; i--) {
        unsigned char c = p[i - 1];
        if (c != ' ' && c != '\n' && c != '\t' && c != '\r') {
            ct.last_char = c;
            break;
        }
    }
    if (ls.nonspace && ls.pos > ct.longest_line) {
        ct.longest_line = ls.pos;
    }
    if (sv) {
        struct_values(&ct, len, sv);
    }
}

static int extract_ns(const struct br_features_config *cfg, const char *text, size_t len,
                      struct br_feature *out, size_t cap, size_t *n_out, uint64_t ns)
{
    struct sink s;
    double sv[BR_FEATURES_N_STRUCT];
    int with_struct = ns == 0 && (cfg->flags & BR_FEATURES_STRUCT);
    *n_out = 0;
    if (br_features_config_check(cfg) != BR_OK || (!text && len) || (!out && cap)) {
        return BR_ERR_INVAL;
    }
    memset(&s, 0, sizeof(s));
    s.out = out;
    s.cap = cap;
    run(cfg, text ? text : "", len, &s, with_struct ? sv : NULL, ns);
    assert(s.n <= cap); /* emit() stops at cap: out (NULL when cap is 0) is only read below */
    double scale[N_FAM];
    for (int f = 0; f < N_FAM; f++) {
        scale[f] = fam_scale(s.count[f]);
    }
    for (size_t i = 0; i < s.n; i++) {
        float v = out[i].value;
        int f = (int)fabsf(v) - 1;
        out[i].value = (float)((v < 0 ? -1.0 : 1.0) * scale[f]);
    }
    if (with_struct) {
        uint32_t base = (uint32_t)1 << cfg->hash_bits;
        for (uint32_t k = 0; k < N_STRUCT_USED; k++) {
            if (sv[k] == 0.0) {
                continue;
            }
            if (s.n >= cap) {
                s.truncated = 1;
                break;
            }
            out[s.n].index = base + k;
            out[s.n].value = (float)sv[k];
            s.n++;
        }
    }
    *n_out = s.n;
    return s.truncated ? BR_ERR_LIMIT : BR_OK;
}

static int dot_ns(const struct br_features_config *cfg, const char *text, size_t len,
                  const float *w, size_t n_out, double *acc, uint64_t ns)
{
    struct sink s;
    double sv[BR_FEATURES_N_STRUCT];
    int with_struct = ns == 0 && (cfg->flags & BR_FEATURES_STRUCT);
    if (br_features_config_check(cfg) != BR_OK || (!text && len) || !w || !acc || n_out == 0 ||
        n_out > MAX_OUT) {
        return BR_ERR_INVAL;
    }
    memset(&s, 0, sizeof(s));
    s.w = w;
    s.n_out = n_out;
    run(cfg, text ? text : "", len, &s, with_struct ? sv : NULL, ns);
    flush_pending(&s);
    for (size_t o = 0; o < n_out; o++) {
        double a = 0;
        for (int f = 0; f < N_FAM; f++) {
            a += s.fam[f][o] * fam_scale(s.count[f]);
        }
        acc[o] = a;
    }
    if (with_struct) {
        const float *ws = w + ((size_t)1 << cfg->hash_bits) * n_out;
        for (size_t k = 0; k < N_STRUCT_USED; k++) {
            for (size_t o = 0; o < n_out; o++) {
                acc[o] += sv[k] * (double)ws[k * n_out + o];
            }
        }
    }
    return BR_OK;
}

int br_features_extract(const struct br_features_config *cfg, const char *text, size_t len,
                        struct br_feature *out, size_t cap, size_t *n_out)
{
    return extract_ns(cfg, text, len, out, cap, n_out, 0);
}

int br_features_dot(const struct br_features_config *cfg, const char *text, size_t len,
                    const float *w, size_t n_out, double *acc)
{
    return dot_ns(cfg, text, len, w, n_out, acc, 0);
}

int br_features_extract_answer(const struct br_features_config *cfg, const char *answer, size_t len,
                               struct br_feature *out, size_t cap, size_t *n_out)
{
    return extract_ns(cfg, answer, len, out, cap, n_out, K_ANSWER);
}

int br_features_dot_answer(const struct br_features_config *cfg, const char *answer, size_t len,
                           const float *w, size_t n_out, double *acc)
{
    return dot_ns(cfg, answer, len, w, n_out, acc, K_ANSWER);
}

#define MAX_STACK 64
#define MAX_NUM   48

static const char *const answer_names[] = {
    "has_final",
    "final_integer",
    "final_negative",
    "final_decimal",
    "log_final",
    "log_annotations",
    "bad_annotation_share",
    "any_bad_annotation",
    "annotation_text_mismatch",
    "log_answer_bytes",
    "answer_prompt_ratio",
    "log_hedges",
    "final_in_prompt",
    "abrupt_end",
    "log_answer_lines",
    "log_equations",
    "any_bad_equation",
    "text_after_final",
    "several_finals",
    "final_not_number",
    "bad_equation_share",
    "final_not_last_result",
    "fractional_result_share",
    "no_final_no_work",
};

#define N_ANSWER_USED (sizeof(answer_names) / sizeof(answer_names[0]))

const char *br_features_answer_name(size_t k)
{
    return k < N_ANSWER_USED ? answer_names[k] : NULL;
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int is_space(int c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* First occurrence of needle (NUL-terminated, non-empty) in h[0..n), or NULL. */
static const char *find(const char *h, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    if (m == 0 || m > n) {
        return NULL;
    }
    for (size_t i = 0; i + m <= n; i++) {
        if (h[i] == needle[0] && memcmp(h + i, needle, m) == 0) {
            return h + i;
        }
    }
    return NULL;
}

/* Case-insensitive find; needle is lower case. */
static int contains_ci(const char *h, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    if (m == 0 || m > n) {
        return 0;
    }
    for (size_t i = 0; i + m <= n; i++) {
        size_t k = 0;
        while (k < m && lower((unsigned char)h[i + k]) == needle[k]) {
            k++;
        }
        if (k == m) {
            return 1;
        }
    }
    return 0;
}

/* Reads a number (digits, one '.', digit-grouping commas) at s[*i..n); 0 on success. */
static int read_number(const char *s, size_t n, size_t *i, double *out)
{
    char buf[MAX_NUM + 1];
    size_t k = 0;
    int dot = 0;
    int digits = 0;
    if (*i < n && s[*i] == '-') {
        buf[k++] = '-';
        (*i)++;
    }
    while (*i < n && k < MAX_NUM) {
        char c = s[*i];
        if (is_digit((unsigned char)c)) {
            buf[k++] = c;
            digits++;
        } else if (c == '.' && !dot && *i + 1 < n && is_digit((unsigned char)s[*i + 1])) {
            buf[k++] = c;
            dot = 1;
        } else if (c == ',' && digits && *i + 1 < n && is_digit((unsigned char)s[*i + 1])) {
            /* digit grouping: skip */
        } else {
            break;
        }
        (*i)++;
    }
    if (!digits) {
        return -1;
    }
    buf[k] = 0;
    char *end = NULL;
    *out = strtod(buf, &end);
    return end == buf ? -1 : 0;
}

static int prec(int op)
{
    return (op == '+' || op == '-') ? 1 : 2;
}

/* The evaluator's stacks: values and pending operators ('(' included). */
struct calc {
    double vs[MAX_STACK];
    int ops[MAX_STACK];
    size_t nv;
    size_t no;
};

/* Pops two values and pushes a op b. */
static int apply(struct calc *k, int op)
{
    if (k->nv < 2) {
        return -1;
    }
    double b = k->vs[--k->nv];
    double a = k->vs[k->nv - 1];
    double r;
    switch (op) {
    case '+':
        r = a + b;
        break;
    case '-':
        r = a - b;
        break;
    case '*':
        r = a * b;
        break;
    case '/':
        if (b == 0) {
            return -1;
        }
        r = a / b;
        break;
    default:
        return -1;
    }
    k->vs[k->nv - 1] = r;
    return 0;
}

/* Where an operand is expected at s[*i] (not a space): '(' or a number with an optional '%'.
 * *done is set when a number was pushed (an operator comes next). */
static int calc_operand(struct calc *k, const char *s, size_t n, size_t *i, int *done)
{
    if (s[*i] == '(') {
        if (k->no >= MAX_STACK) {
            return -1;
        }
        k->ops[k->no++] = '(';
        (*i)++;
        return 0;
    }
    double v;
    if (read_number(s, n, i, &v) != 0) {
        return -1;
    }
    if (*i < n && s[*i] == '%') {
        v /= 100.0;
        (*i)++;
    }
    if (k->nv >= MAX_STACK) {
        return -1;
    }
    k->vs[k->nv++] = v;
    *done = 1;
    return 0;
}

/* ')': applies the operators back to the matching '('. */
static int calc_close(struct calc *k)
{
    while (k->no && k->ops[k->no - 1] != '(') {
        if (apply(k, k->ops[--k->no]) != 0) {
            return -1;
        }
    }
    if (!k->no) {
        return -1;
    }
    k->no--;
    return 0;
}

/* A binary operator: applies the pending ones of higher or equal precedence, then waits. */
static int calc_operator(struct calc *k, int op)
{
    if (op != '+' && op != '-' && op != '*' && op != '/') {
        return -1;
    }
    while (k->no && k->ops[k->no - 1] != '(' && prec(k->ops[k->no - 1]) >= prec(op)) {
        if (apply(k, k->ops[--k->no]) != 0) {
            return -1;
        }
    }
    if (k->no >= MAX_STACK) {
        return -1;
    }
    k->ops[k->no++] = op;
    return 0;
}

/* End of input: applies what is pending; one finite value must remain. */
static int calc_finish(struct calc *k, double *out)
{
    while (k->no) {
        if (k->ops[k->no - 1] == '(' || apply(k, k->ops[--k->no]) != 0) {
            return -1;
        }
    }
    if (k->nv != 1 || !isfinite(k->vs[0])) {
        return -1;
    }
    *out = k->vs[0];
    return 0;
}

/*
 * Evaluates s[0..n) (+ - * / x, parentheses, %, '$', spaces, digit commas). *n_ops receives
 * the number of binary operators. 0 on success, -1 when it is not such an expression.
 */
static int eval_expr(const char *s, size_t n, double *out, int *n_ops)
{
    struct calc k;
    k.nv = 0;
    k.no = 0;
    int expect_num = 1;
    *n_ops = 0;
    for (size_t i = 0; i < n;) {
        int c = (unsigned char)s[i];
        if (c == ' ' || c == '$') {
            i++;
            continue;
        }
        if (expect_num) {
            int pushed = 0;
            if (calc_operand(&k, s, n, &i, &pushed) != 0) {
                return -1;
            }
            expect_num = !pushed;
            continue;
        }
        if (c == ')') {
            if (calc_close(&k) != 0) {
                return -1;
            }
        } else {
            if (calc_operator(&k, c == 'x' ? '*' : c) != 0) {
                return -1;
            }
            (*n_ops)++;
            expect_num = 1;
        }
        i++;
    }
    if (expect_num) {
        return -1;
    }
    return calc_finish(&k, out);
}

/* Different beyond rounding (relative 1e-4, or an absolute cent). */
static int differ(double a, double b)
{
    double tol = 1e-4 * fmax(1.0, fmax(fabs(a), fabs(b)));
    return fabs(a - b) > tol && fabs(a - b) >= 0.01;
}

static double lg(double x, double d)
{
    return log1p(x) / d;
}

static int is_expr_char(int c)
{
    return is_digit(c) || c == '.' || c == ',' || c == '+' || c == '-' || c == '*' || c == '/' ||
           c == '(' || c == ')' || c == ' ' || c == '$' || c == 'x' || c == '%';
}

static const char *const hedges[] = {
    "however",
    "assum",
    "approximately",
    "not possible",
    "cannot",
    "can't",
    "round",
    "actually",
    "wait",
    "mistake",
    "not enough information",
    "unclear",
    "doesn't make sense",
    "does not make sense",
    "not a whole",
    "incorrect",
    "we don't know",
    "impossible",
};

struct final_answer {
    const char *marker; /* "####" or NULL */
    double value;       /* NaN when none */
};

static void read_final(const char *a, size_t n, struct final_answer *f, double *v)
{
    f->marker = find(a, n, "####");
    f->value = NAN;
    if (!f->marker) {
        return;
    }
    v[0] = 1.0;
    size_t i = (size_t)(f->marker - a) + 4;
    while (i < n && (a[i] == ' ' || a[i] == '$')) {
        i++;
    }
    double x;
    if (read_number(a, n, &i, &x) == 0) {
        f->value = x;
    } else {
        v[19] = 1.0;
    }
    while (i < n && a[i] == ' ') {
        i++;
    }
    if (i < n && a[i] != '\n' && a[i] != '\r') {
        v[17] = 1.0;
    }
    size_t after = (size_t)(f->marker - a) + 4;
    if (find(a + after, n - after, "####")) {
        v[18] = 1.0;
    }
}

/* GSM8K-style "<<expr=value>>value" annotations. */
static void check_annotations(const char *a, size_t n, double *last_result, double *v)
{
    size_t n_ann = 0;
    size_t n_bad = 0;
    size_t n_mismatch = 0;
    size_t n_frac = 0;
    size_t i = 0;
    while (i + 1 < n) {
        const char *open = find(a + i, n - i, "<<");
        if (!open) {
            break;
        }
        size_t o = (size_t)(open - a) + 2;
        const char *close = find(a + o, n - o, ">>");
        if (!close) {
            break;
        }
        size_t c = (size_t)(close - a);
        size_t eq = c;
        while (eq > o && a[eq - 1] != '=') {
            eq--;
        }
        i = c + 2;
        if (eq == o) {
            continue;
        }
        eq--; /* the '=' */
        n_ann++;
        double lhs;
        double rhs;
        int ops;
        if (eval_expr(a + o, eq - o, &lhs, &ops) != 0 ||
            eval_expr(a + eq + 1, c - eq - 1, &rhs, &ops) != 0) {
            continue;
        }
        if (differ(lhs, rhs)) {
            n_bad++;
        }
        *last_result = rhs;
        if (fabs(rhs - round(rhs)) > 1e-9) {
            n_frac++;
        }
        size_t k = i;
        double shown;
        if (k < n && is_digit((unsigned char)a[k]) && read_number(a, n, &k, &shown) == 0 &&
            differ(shown, rhs)) {
            n_mismatch++;
        }
    }
    v[5] = lg((double)n_ann, 3.0);
    v[6] = n_ann ? (double)n_bad / (double)n_ann : 0.0;
    v[7] = n_bad ? 1.0 : 0.0;
    v[8] = n_mismatch ? 1.0 : 0.0;
    v[22] = n_ann ? (double)n_frac / (double)n_ann : 0.0;
    v[23] = n_ann == 0 ? 1.0 : 0.0; /* completed with the final marker below */
}

/* The "a op b = c" equation around the '=' at a[i] (each side at most 120 expression
 * characters, trimmed to start and end like a number): 1 when both sides evaluate and there
 * is at least one operator, with their values in *x and *y. */
static int equation_at(const char *a, size_t n, size_t i, double *x, double *y)
{
    size_t lo = i;
    while (lo > 0 && i - lo < 120 && is_expr_char((unsigned char)a[lo - 1])) {
        lo--;
    }
    while (lo < i && !(is_digit((unsigned char)a[lo]) || a[lo] == '(' || a[lo] == '$')) {
        lo++;
    }
    size_t hi = i + 1;
    while (hi < n && hi - i < 120 && is_expr_char((unsigned char)a[hi])) {
        hi++;
    }
    while (hi > i + 1 &&
           !(is_digit((unsigned char)a[hi - 1]) || a[hi - 1] == ')' || a[hi - 1] == '%')) {
        hi--;
    }
    int o1;
    int o2;
    return lo < i && hi > i + 1 && eval_expr(a + lo, i - lo, x, &o1) == 0 &&
           eval_expr(a + i + 1, hi - i - 1, y, &o2) == 0 && o1 + o2 > 0;
}

/* Plain "a op b = c" equations outside annotations. */
static void check_equations(const char *a, size_t n, double *v)
{
    size_t n_eq = 0;
    size_t n_bad = 0;
    int inside = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && a[i] == '<' && a[i + 1] == '<') {
            inside = 1;
        } else if (i + 1 < n && a[i] == '>' && a[i + 1] == '>') {
            inside = 0;
        }
        if (a[i] != '=' || inside) {
            continue;
        }
        double x;
        double y;
        if (equation_at(a, n, i, &x, &y)) {
            n_eq++;
            if (differ(x, y)) {
                n_bad++;
            }
        }
    }
    v[15] = lg((double)n_eq, 3.0);
    v[16] = n_bad ? 1.0 : 0.0;
    v[20] = n_eq ? (double)n_bad / (double)n_eq : 0.0;
}

static int number_in(const char *p, size_t n, double x)
{
    size_t i = 0;
    while (i < n) {
        if (is_digit((unsigned char)p[i]) && (i == 0 || !is_digit((unsigned char)p[i - 1]))) {
            double y;
            size_t k = i;
            if (read_number(p, n, &k, &y) == 0 && fabs(y - x) < 1e-9) {
                return 1;
            }
            i = k > i ? k : i + 1;
        } else {
            i++;
        }
    }
    return 0;
}

void br_features_answer_checks(const char *prompt, size_t plen, const char *answer, size_t alen,
                               double *out)
{
    double *v = out;
    memset(v, 0, sizeof(double) * BR_FEATURES_N_ANSWER);
    if (!answer) {
        alen = 0;
        answer = "";
    }
    if (!prompt) {
        plen = 0;
        prompt = "";
    }
    size_t n = alen < BR_FEATURES_MAX_WINDOW ? alen : BR_FEATURES_MAX_WINDOW;
    size_t pn = plen < BR_FEATURES_MAX_WINDOW ? plen : BR_FEATURES_MAX_WINDOW;
    const char *a = answer;

    struct final_answer fin;
    read_final(a, n, &fin, v);
    if (!isnan(fin.value)) {
        int integer = fabs(fin.value - round(fin.value)) < 1e-9;
        v[1] = integer ? 1.0 : 0.0;
        v[2] = fin.value < 0 ? 1.0 : 0.0;
        v[3] = integer ? 0.0 : 1.0;
        v[4] = lg(fabs(fin.value), 10.0);
        v[12] = number_in(prompt, pn, fin.value) ? 1.0 : 0.0;
    }
    double last_result = NAN;
    check_annotations(a, n, &last_result, v);
    if (fin.marker) {
        v[23] = 0.0;
    }
    if (!isnan(fin.value) && !isnan(last_result)) {
        v[21] = differ(fin.value, last_result) ? 1.0 : 0.0;
    }
    v[9] = lg((double)n, 8.0);
    v[10] = log(((double)n + 10.0) / ((double)pn + 10.0)) / 3.0;
    size_t n_hedges = 0;
    for (size_t h = 0; h < sizeof(hedges) / sizeof(hedges[0]); h++) {
        n_hedges += (size_t)contains_ci(a, n < 8192 ? n : 8192, hedges[h]);
    }
    v[11] = lg((double)n_hedges, 2.0);
    size_t end = n;
    while (end && is_space((unsigned char)a[end - 1])) {
        end--;
    }
    if (!fin.marker && end && a[end - 1] != '.') {
        v[13] = 1.0;
    }
    size_t lines = 0;
    for (size_t i = 0; i < n; i++) {
        lines += a[i] == '\n';
    }
    v[14] = lg((double)lines, 4.0);
    check_equations(a, n, v);
}
