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
 * Parses a non-negative decimal USD amount ("24.7", "0.0375", "10") exactly into nano-USD.
 * Grammar (the JSON number grammar without sign and exponent): an integer part that is "0" or
 * starts with 1-9, then optionally "." and 1 to 9 fractional digits. Rejected with
 * BR_ERR_PARSE: "", " 1", "1 ", "+1", "-1", "1e3", "1.", ".5" (write "0.5"), "01",
 * "1.0000000001" (more than 9 fractional digits, even trailing zeros). Above 9,000,000,000 USD:
 * BR_ERR_RANGE. NULL arguments: BR_ERR_INVAL. *nano_usd_out is written only on BR_OK.
 */
int br_cost_parse_usd(const char *s, int64_t *nano_usd_out);

/**
 * Cost of `u` at `p` in nano-USD, the sum of three kinds, each rounded half up on its own:
 *   (prompt_tokens - cached_tokens) at the input price (cache-write tokens are part of
 *       prompt_tokens and so are priced as input),
 *   cached_tokens at the cached price (the input price when that is < 0),
 *   completion_tokens at the output price (reasoning_tokens are inside completion_tokens and
 *       are not charged again).
 * Negative token counts and negative input/output prices count as zero; cached_tokens is
 * clamped to prompt_tokens. Exact for every int64 input; saturates at INT64_MAX instead of
 * overflowing. Returns 0 when p or u is NULL.
 */
int64_t br_cost_compute(const struct br_price *p, const struct br_usage *u);

/**
 * Formats nano-USD as a decimal USD string with 9 fractional digits ("0.000123450"; negative
 * amounts get a leading '-'). Always NUL-terminates out.
 */
void br_cost_format_usd(int64_t nano_usd, char out[BR_COST_USD_STRLEN]);

#endif
