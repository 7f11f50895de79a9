/* SPDX-License-Identifier: MIT */
/* Planning: the direct policy (the client named a catalogue model). */
#include "route/route.h"

#include <string.h>

#include "core/err.h"

int br_route_plan(const struct br_config *cfg, const char *model, size_t n, struct br_plan *out)
{
    memset(out, 0, sizeof(*out));
    out->requested = model;
    out->score = -1.0;
    const struct br_model_cfg *m = br_config_model_find(cfg, model, n);
    if (!m) {
        return BR_ERR_NOTFOUND;
    }
    out->policy = "direct";
    out->reason = "model named by the client";
    out->steps[0].model = m;
    out->steps[0].kind = BR_PLAN_STEP_PRIMARY;
    out->n_steps = 1;
    return BR_OK;
}
