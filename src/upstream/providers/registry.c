/* SPDX-License-Identifier: MIT */
/* The table of built-in providers, looked up by the catalogue's `provider:` value. */
#include <string.h>

#include "upstream/provider.h"

static const struct br_provider_ops *const providers[] = {
    &br_provider_openai,
    &br_provider_anthropic,
    &br_provider_replay,
    &br_provider_local,
};

const struct br_provider_ops *br_provider_find(const char *name)
{
    for (size_t i = 0; i < sizeof(providers) / sizeof(providers[0]); i++) {
        if (strcmp(providers[i]->name, name) == 0) {
            return providers[i];
        }
    }
    return NULL;
}
