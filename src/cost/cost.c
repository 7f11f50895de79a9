/* SPDX-License-Identifier: MIT */
/*
 * Money arithmetic in integer nano-USD. Parsing is an exact decimal-to-integer conversion (no
 * strtod), and br_cost_compute splits tokens and prices into base-10^6 digits so that
 * tokens * price / 10^6 is computed exactly in 64-bit integers for every input, saturating at
 * INT64_MAX instead of overflowing.
 */
#include "cost/cost.h"

#include <stdbool.h>
#include <stddef.h>

#include "core/err.h"

#define NANO_PER_USD 1000000000LL
#define MAX_USD      9000000000LL /* largest amount br_cost_parse_usd accepts, in whole USD */
#define MTOK         1000000ULL   /* prices are per million tokens */
#define FRAC_DIGITS  9

int br_cost_parse_usd(const char *s, int64_t *nano_usd_out)
{
    if (!s || !nano_usd_out) {
        return BR_ERR_INVAL;
    }
    const char *p = s;
    /* Integer part: at least one digit; "0" alone or no leading zero (JSON number rules). */
    if (*p < '0' || *p > '9') {
        return BR_ERR_PARSE;
    }
    if (p[0] == '0' && p[1] >= '0' && p[1] <= '9') {
        return BR_ERR_PARSE;
    }
    bool too_big = false;
    int64_t whole = 0;
    while (*p >= '0' && *p <= '9') {
        if (!too_big) {
            whole = whole * 10 + (*p - '0');
            if (whole > MAX_USD) {
                too_big = true; /* keep scanning: a malformed tail is still PARSE */
            }
        }
        p++;
    }
    int64_t frac = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        while (*p >= '0' && *p <= '9') {
            if (n == FRAC_DIGITS) {
                return BR_ERR_PARSE; /* more precision than a nano-USD */
            }
            frac = frac * 10 + (*p - '0');
            n++;
            p++;
        }
        if (n == 0) {
            return BR_ERR_PARSE; /* "1." */
        }
        for (; n < FRAC_DIGITS; n++) {
            frac *= 10;
        }
    }
    if (*p != '\0') {
        return BR_ERR_PARSE;
    }
    if (too_big || (whole == MAX_USD && frac > 0)) {
        return BR_ERR_RANGE;
    }
    *nano_usd_out = whole * NANO_PER_USD + frac;
    return BR_OK;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    if (a != 0 && b > UINT64_MAX / a) {
        return UINT64_MAX;
    }
    return a * b;
}

/*
 * round_half_up(tokens * price / 10^6) exactly. With tokens = tq * 10^6 + tr and
 * price = pq * 10^6 + pr (tr, pr < 10^6):
 *     tokens * price / 10^6 = tq*pq*10^6 + tq*pr + tr*pq + tr*pr / 10^6
 * and only the last term has a fractional part; tr * pr < 10^12 never overflows.
 */
static uint64_t kind_cost(int64_t tokens, int64_t price)
{
    if (tokens <= 0 || price <= 0) {
        return 0;
    }
    uint64_t t = (uint64_t)tokens;
    uint64_t pz = (uint64_t)price;
    uint64_t tq = t / MTOK;
    uint64_t tr = t % MTOK;
    uint64_t pq = pz / MTOK;
    uint64_t pr = pz % MTOK;
    uint64_t low = tr * pr;
    uint64_t v = sat_mul(sat_mul(tq, pq), MTOK);
    v = sat_add(v, sat_mul(tq, pr));
    v = sat_add(v, sat_mul(tr, pq));
    v = sat_add(v, low / MTOK);
    if (low % MTOK >= MTOK / 2) {
        v = sat_add(v, 1);
    }
    return v;
}

static int64_t clamp0(int64_t v)
{
    return v < 0 ? 0 : v;
}

int64_t br_cost_compute(const struct br_price *p, const struct br_usage *u)
{
    if (!p || !u) {
        return 0;
    }
    /*
     * Three kinds: cache reads at the cached price, every other input token (cache writes
     * included, they are part of prompt_tokens) at the input price, and completion tokens
     * (reasoning included, so it is never charged twice) at the output price.
     */
    int64_t prompt = clamp0(u->prompt_tokens);
    int64_t cached = clamp0(u->cached_tokens);
    if (cached > prompt) {
        cached = prompt;
    }
    int64_t cached_price = p->cached_input_nano_usd_per_mtok;
    if (cached_price < 0) {
        cached_price = p->input_nano_usd_per_mtok;
    }
    uint64_t total = kind_cost(prompt - cached, p->input_nano_usd_per_mtok);
    total = sat_add(total, kind_cost(cached, cached_price));
    total = sat_add(total, kind_cost(clamp0(u->completion_tokens), p->output_nano_usd_per_mtok));
    return total > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)total;
}

void br_cost_format_usd(int64_t nano_usd, char out[BR_COST_USD_STRLEN])
{
    /* Through uint64_t so that INT64_MIN has a magnitude; no printf: this runs per request. */
    uint64_t mag = nano_usd < 0 ? 0 - (uint64_t)nano_usd : (uint64_t)nano_usd;
    uint64_t whole = mag / (uint64_t)NANO_PER_USD;
    uint64_t frac = mag % (uint64_t)NANO_PER_USD;
    char digits[24];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    size_t len = 0;
    if (nano_usd < 0) {
        out[len++] = '-';
    }
    while (n) {
        out[len++] = digits[--n];
    }
    out[len++] = '.';
    for (int i = 8; i >= 0; i--) {
        out[len + (size_t)i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    out[len + 9] = '\0';
}
