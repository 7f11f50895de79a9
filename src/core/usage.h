/* SPDX-License-Identifier: MIT */
/*
 * Token usage of one model call, normalised across providers. OpenAI counts cached input inside
 * prompt_tokens and reasoning inside completion_tokens; Anthropic reports cache reads and writes
 * beside input_tokens, so its adapter adds them in. The subsets let cost/ price each kind.
 */
#ifndef BR_CORE_USAGE_H
#define BR_CORE_USAGE_H

#include <stdbool.h>
#include <stdint.h>

struct br_usage {
    int64_t prompt_tokens;      /* all input tokens, cached ones included */
    int64_t completion_tokens;  /* all output tokens, reasoning included */
    int64_t cached_tokens;      /* input tokens read from the provider's prompt cache */
    int64_t cache_write_tokens; /* input tokens written to the prompt cache (Anthropic) */
    int64_t reasoning_tokens;   /* output tokens spent on hidden reasoning */
    bool reported;              /* true: the upstream reported these; false: brigade estimated */
};

#endif
