#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Buckets as vLLM chooses them for the same series, so dashboards carry over. */
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
                                     0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0};
static const double itl_bounds[] = {0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
                                    0.05,  0.075, 0.1,  0.15,  0.2,  0.3,   0.4,  0.5,
                                    0.75,  1.0,   2.5,  5.0,   7.5,  10.0,  20.0, 80.0};
static const double latency_bounds[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,   2.5,
                                        5.0,  10.0,  15.0,  20.0,  30.0,  40.0,  50.0,
                                        60.0, 120.0, 240.0, 480.0, 960.0, 1920.0};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

_Static_assert(COUNT(ttft_bounds) <= KILN_HIST_MAX_BUCKETS, "ttft buckets");
_Static_assert(COUNT(itl_bounds) <= KILN_HIST_MAX_BUCKETS, "itl buckets");
_Static_assert(COUNT(latency_bounds) <= KILN_HIST_MAX_BUCKETS, "latency buckets");

void kiln_metrics_init(struct kiln_metrics *m)
{
    memset(m, 0, sizeof *m);
    m->ttft.bounds = ttft_bounds;
    m->ttft.n_buckets = COUNT(ttft_bounds);
    m->itl.bounds = itl_bounds;
    m->itl.n_buckets = COUNT(itl_bounds);
    m->latency.bounds = latency_bounds;
    m->latency.n_buckets = COUNT(latency_bounds);
}

void kiln_histogram_observe(struct kiln_histogram *h, double v)
{
    int b = 0;
    while (b < h->n_buckets && v > h->bounds[b]) b++;
    h->counts[b]++;
    h->sum += v;
    h->count++;
}

void kiln_metrics_request(struct kiln_metrics *m, const char *endpoint, int status)
{
    for (int i = 0; i < m->n_requests; i++)
        if (m->requests[i].status == status && !strcmp(m->requests[i].endpoint, endpoint)) {
            m->requests[i].count++;
            return;
        }
    if (m->n_requests == KILN_METRICS_MAX_SERIES) {
        /* Routes x statuses are a small fixed set; fold anything beyond into the last one
         * rather than growing without bound. */
        m->requests[KILN_METRICS_MAX_SERIES - 1].count++;
        return;
    }
    int i = m->n_requests++;
    snprintf(m->requests[i].endpoint, sizeof m->requests[i].endpoint, "%s", endpoint);
    m->requests[i].status = status;
    m->requests[i].count = 1;
}

static void histogram(FILE *f, const char *name, const char *help, const struct kiln_histogram *h,
                      const char *labels)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < h->n_buckets; b++) {
        cum += h->counts[b];
        fprintf(f, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, h->bounds[b],
                (unsigned long long)cum);
    }
    cum += h->counts[h->n_buckets];
    fprintf(f, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
    fprintf(f, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, labels, h->sum, name, labels,
            (unsigned long long)h->count);
}

static void scalar(FILE *f, const char *name, const char *type, const char *help,
                   const char *labels, double v)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s{%s} %.17g\n", name, help, name, type, name, labels,
            v);
}

char *kiln_metrics_render(const struct kiln_metrics *m, const struct kiln_engine_stats *st,
                          const char *model_name, int loading)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f) return NULL;
    /* Model names come from the command line; quotes and backslashes would break the label. */
    char labels[160] = "model_name=\"";
    size_t o = strlen(labels);
    for (const char *p = model_name; *p && o + 3 < sizeof labels; p++) {
        if (*p == '"' || *p == '\\') labels[o++] = '\\';
        labels[o++] = *p == '\n' ? ' ' : *p;
    }
    labels[o++] = '"';
    labels[o] = 0;

    fprintf(f, "# HELP kiln_requests_total HTTP requests answered, by endpoint and status.\n"
               "# TYPE kiln_requests_total counter\n");
    for (int i = 0; i < m->n_requests; i++)
        fprintf(f, "kiln_requests_total{%s,endpoint=\"%s\",status=\"%d\"} %llu\n", labels,
                m->requests[i].endpoint, m->requests[i].status,
                (unsigned long long)m->requests[i].count);
    scalar(f, "kiln_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", labels,
           (double)m->prompt_tokens);
    scalar(f, "kiln_generation_tokens_total", "counter", "Tokens generated.", labels,
           (double)m->generation_tokens);
    scalar(f, "kiln_requests_cancelled_total", "counter",
           "Generations stopped because the client disconnected.", labels, (double)m->cancelled);
    scalar(f, "kiln_http_connections_refused_total", "counter",
           "Connections answered 503 and closed because the server was out of file descriptors.",
           labels, (double)m->refused_connections);
    scalar(f, "kiln_http_clients_stalled_total", "counter",
           "Clients dropped for not reading their reply for --idle-timeout seconds.", labels,
           (double)m->dropped_stalled);
    scalar(f, "kiln_http_connections_open", "gauge", "Open client connections.", labels,
           m->connections);
    histogram(f, "kiln_time_to_first_token_seconds", "Request received to first token.", &m->ttft,
              labels);
    histogram(f, "kiln_inter_token_latency_seconds", "Time between consecutive tokens.", &m->itl,
              labels);
    histogram(f, "kiln_e2e_request_latency_seconds", "Request received to response complete.",
              &m->latency, labels);
    struct kiln_engine_stats zero = {0};
    if (!st) st = &zero;
    scalar(f, "kiln_model_loading", "gauge", "1 while the model is loading.", labels, loading);
    scalar(f, "kiln_http_requests_in_flight", "gauge", "Generation requests being answered.",
           labels, m->in_flight);
    scalar(f, "kiln_num_requests_waiting", "gauge", "Requests queued in the engine.", labels,
           st->waiting);
    scalar(f, "kiln_num_requests_running", "gauge", "Requests in the running batch.", labels,
           st->running);
    scalar(f, "kiln_kv_blocks_used", "gauge", "KV cache blocks in use.", labels,
           st->kv_blocks_used);
    scalar(f, "kiln_kv_blocks_total", "gauge", "KV cache blocks in the pool.", labels,
           st->kv_blocks_total);
    scalar(f, "kiln_kv_blocks_touched", "gauge",
           "KV cache blocks used at least once since start (the prefix cache keeps finished "
           "blocks and takes never-used ones first; on the CPU a block's memory is committed at "
           "its first use, so the process grows with this up to the pool's size).",
           labels, st->kv_blocks_touched);
    scalar(f, "kiln_kv_cache_bytes", "gauge", "Memory of the KV cache pool, all layers.", labels,
           (double)st->kv_bytes);
    scalar(f, "kiln_kv_cache_usage_ratio", "gauge", "KV cache blocks in use / pool size.", labels,
           st->kv_blocks_total ? (double)st->kv_blocks_used / st->kv_blocks_total : 0.0);
    scalar(f, "kiln_engine_steps_total", "counter", "Engine iterations (forward passes).", labels,
           (double)st->steps);
    scalar(f, "kiln_preemptions_total", "counter", "Requests preempted for KV space.", labels,
           (double)st->preemptions);
    scalar(f, "kiln_prefix_cache_hit_tokens_total", "counter",
           "Prompt tokens served from the prefix cache.", labels, (double)st->prefix_hits_tokens);
    scalar(f, "kiln_structured_output_masks_total", "counter",
           "Allowed-token masks computed for constrained sequences.", labels,
           (double)st->grammar_masks);
    scalar(f, "kiln_structured_output_forced_tokens_total", "counter",
           "Tokens appended without a draw (the constraint allowed them alone).", labels,
           (double)st->grammar_forced);
    scalar(f, "kiln_structured_output_seconds_total", "counter",
           "Engine-thread time spent on constraints (masks, accepts, forced tokens).", labels,
           st->grammar_s);
    if (fclose(f)) {
        free(out);
        return NULL;
    }
    return out;
}
