/* SPDX-License-Identifier: MIT */
/*
 * Money. Prices are integers in nano-USD per million tokens, costs are integers in nano-USD
 * (1e-9 USD); floats never touch money (STYLE.md rule 36).
 *
 * Rounding rule (the only one): the cost of one token kind is
 *     round_half_up(tokens * price_nano_usd_per_mtok / 1e6)
 * computed exactly in integers; a request's cost is the sum over its kinds.
 */
#ifndef BR_COST_H
#define BR_COST_H

#include <stdint.h>

#include "core/usage.h"

struct br_price {
    int64_t input_nano_usd_per_mtok;        /* uncached input tokens */
    int64_t output_nano_usd_per_mtok;       /* output tokens, reasoning included */
    int64_t cached_input_nano_usd_per_mtok; /* cache-read input tokens; < 0 = same as input */
};

/** Longest text br_cost_format_usd writes, NUL included. */
#define BR_COST_USD_STRLEN 32

/**
 * Parses a non-negative decimal USD amount ("24.7", "0.0375", "10") exactly into nano-USD:
 * at most 9 fractional digits, no sign, no exponent, at most 9,000,000,000 USD.
 * Returns BR_OK, BR_ERR_PARSE or BR_ERR_RANGE.
 */
int br_cost_parse_usd(const char *s, int64_t *nano_usd_out);

/**
 * Cost of `u` at `p` in nano-USD. Cache-write tokens are priced as input. Negative token counts
 * count as zero. Saturates at INT64_MAX instead of overflowing.
 */
int64_t br_cost_compute(const struct br_price *p, const struct br_usage *u);

/** Formats nano-USD as a decimal USD string with 9 fractional digits ("0.000123450"). */
void br_cost_format_usd(int64_t nano_usd, char out[BR_COST_USD_STRLEN]);

#endif
