/* SPDX-License-Identifier: MIT */
/*
 * Metrics registry with Prometheus text exposition (format 0.0.4). Families (counter, gauge,
 * histogram) are registered once at start-up; series (one per combination of label values) are
 * created on first use. Each worker records into its own shard, so recording never contends
 * with other workers; a scrape merges the shards.
 *
 * Thread-safety: registration before workers start; recording into shard i only from the
 * thread that owns shard i (or from any thread for shard BR_METRICS_SHARD_ANY, which locks);
 * br_metrics_render from any thread.
 */
#ifndef BR_METRICS_H
#define BR_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

typedef struct br_metrics br_metrics;

enum br_metric_type {
    BR_METRIC_TYPE_COUNTER,
    BR_METRIC_TYPE_GAUGE,
    BR_METRIC_TYPE_HISTOGRAM,
};

/* A shard for threads that are not workers (store writer, main thread). */
#define BR_METRICS_SHARD_ANY ((unsigned)-1)

#define BR_METRICS_MAX_LABELS  4
#define BR_METRICS_MAX_BUCKETS 24

/** Creates a registry with n_shards worker shards (plus the shared one). Caller destroys. */
int br_metrics_create(unsigned n_shards, br_metrics **out);

/** Frees the registry. NULL is a no-op. */
void br_metrics_destroy(br_metrics *m);

/**
 * Registers a family. `name` must match [a-zA-Z_:][a-zA-Z0-9_:]*; labels likewise and at most
 * BR_METRICS_MAX_LABELS. Histograms need ascending upper bounds (+Inf is implicit), at most
 * BR_METRICS_MAX_BUCKETS. Strings are copied. *id_out identifies the family.
 */
int br_metrics_register(br_metrics *m, const char *name, const char *help, enum br_metric_type type,
                        const char *const *label_names, size_t n_labels, const double *buckets,
                        size_t n_buckets, unsigned *id_out);

/** Adds v (>= 0 for counters) to the series of `family` with these label values. */
void br_metrics_add(br_metrics *m, unsigned shard, unsigned family, const char *const *label_values,
                    double v);

/** Sets a gauge series (shards are summed at scrape, so set only from one shard). */
void br_metrics_set(br_metrics *m, unsigned shard, unsigned family, const char *const *label_values,
                    double v);

/** Records one observation in a histogram series. */
void br_metrics_observe(br_metrics *m, unsigned shard, unsigned family,
                        const char *const *label_values, double v);

/**
 * Appends the exposition text of every family (merged over shards, label values escaped,
 * series in a stable order) to out. BR_ERR_NOMEM / BR_ERR_LIMIT from the buffer.
 */
int br_metrics_render(br_metrics *m, struct br_buf *out);

#endif
