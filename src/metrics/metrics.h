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

#define BR_METRICS_MAX_LABELS      4
#define BR_METRICS_MAX_BUCKETS     24
/* Series per family per shard; observations for further label tuples are dropped (counted). */
#define BR_METRICS_MAX_SERIES      4096
/* Longest label value in bytes; longer values are dropped (counted). */
#define BR_METRICS_MAX_LABEL_VALUE 1024

/**
 * Creates a registry with n_shards worker shards (plus the shared one; n_shards may be 0, at
 * most 4096). Caller destroys. BR_ERR_INVAL, BR_ERR_NOMEM.
 */
int br_metrics_create(unsigned n_shards, br_metrics **out);

/** Frees the registry. NULL is a no-op. */
void br_metrics_destroy(br_metrics *m);

/**
 * Registers a family. `name` must match [a-zA-Z_:][a-zA-Z0-9_:]*; label names must match
 * [a-zA-Z_][a-zA-Z0-9_]*, be distinct, not start with "__" (reserved) and not be "le" for a
 * histogram; at most BR_METRICS_MAX_LABELS. Histograms need finite, strictly ascending upper
 * bounds (+Inf is implicit), at most BR_METRICS_MAX_BUCKETS; other types take no buckets.
 * `help` may be NULL. Strings are copied. *id_out identifies the family; families render in
 * registration order. BR_ERR_INVAL, BR_ERR_EXISTS (name taken), BR_ERR_NOMEM.
 */
int br_metrics_register(br_metrics *m, const char *name, const char *help, enum br_metric_type type,
                        const char *const *label_names, size_t n_labels, const double *buckets,
                        size_t n_buckets, unsigned *id_out);

/*
 * Recording. label_values holds one value per label name (NULL entries, or a NULL array for a
 * family without labels, mean ""); the values are copied when a series is created. Recording
 * never fails loudly: an unknown shard or family, the wrong operation for the family's type,
 * a negative or NaN counter increment are ignored; a series that cannot be created (out of
 * memory, BR_METRICS_MAX_SERIES, BR_METRICS_MAX_LABEL_VALUE) drops the observation and counts
 * it in br_metrics_dropped.
 */

/** Adds v (>= 0 for counters) to a counter or gauge series of `family`. */
void br_metrics_add(br_metrics *m, unsigned shard, unsigned family, const char *const *label_values,
                    double v);

/** Sets a gauge series (shards are summed at scrape, so set only from one shard). */
void br_metrics_set(br_metrics *m, unsigned shard, unsigned family, const char *const *label_values,
                    double v);

/** Records one observation in a histogram series (NaN lands in the +Inf bucket). */
void br_metrics_observe(br_metrics *m, unsigned shard, unsigned family,
                        const char *const *label_values, double v);

/**
 * Appends the exposition text of every family (merged over shards, label values escaped,
 * series sorted by label values byte-wise) to out. An unlabelled family always shows its one
 * series (0 before any recording); HELP is omitted when empty. BR_ERR_NOMEM / BR_ERR_LIMIT
 * from the buffer, in which case out holds a partial text. Takes each shard's lock briefly.
 */
int br_metrics_render(br_metrics *m, struct br_buf *out);

/** Observations dropped because their series could not be created. Any thread. */
uint64_t br_metrics_dropped(const br_metrics *m);

#endif
