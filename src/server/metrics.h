/* Server metrics in the Prometheus text format (GET /metrics). Counters and histograms are
 * updated only on the HTTP thread, so they need no locks; gauges of the engine (queue depth,
 * running requests, KV blocks) are read from kiln_engine_stats at scrape time. */
#ifndef KILN_SERVER_METRICS_H
#define KILN_SERVER_METRICS_H

#include <stdint.h>

#include "runtime/engine.h"

#define KILN_HIST_MAX_BUCKETS   24
#define KILN_METRICS_MAX_SERIES 64

struct kiln_histogram {
    int n_buckets;
    const double *bounds;                       /* (n_buckets,) upper bounds, ascending */
    uint64_t counts[KILN_HIST_MAX_BUCKETS + 1]; /* per bucket; the last is +Inf */
    double sum;
    uint64_t count;
};

struct kiln_metrics {
    struct {
        char endpoint[32];
        int status;
        uint64_t count;
    } requests[KILN_METRICS_MAX_SERIES]; /* requests by endpoint and status */
    int n_requests;
    uint64_t prompt_tokens, generation_tokens;
    uint64_t cancelled;            /* generations stopped because the client went away */
    int in_flight;                 /* generation requests being answered */
    int connections;               /* open client connections */
    uint64_t refused_connections;  /* closed unserved: out of file descriptors */
    uint64_t dropped_stalled;      /* streaming clients dropped for not reading */
    struct kiln_histogram ttft;    /* request received -> first token, seconds */
    struct kiln_histogram itl;     /* between consecutive tokens of one choice, seconds */
    struct kiln_histogram latency; /* request received -> last byte queued, seconds */
};

void kiln_metrics_init(struct kiln_metrics *m);
void kiln_histogram_observe(struct kiln_histogram *h, double v);
/* endpoint: a route such as "/v1/completions" (unknown paths are counted as "other"). */
void kiln_metrics_request(struct kiln_metrics *m, const char *endpoint, int status);
/* Renders every series; st NULL (model still loading) leaves the engine gauges at 0.
 * Returns a malloc'ed NUL-terminated string, NULL when out of memory. */
char *kiln_metrics_render(const struct kiln_metrics *m, const struct kiln_engine_stats *st,
                          const char *model_name, int loading);

#endif
