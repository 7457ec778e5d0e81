/* kiln_loadgen: the HTTP load generator of issue 7's serving benchmark. C clients, each on
 * its own keep-alive connection, send streaming /v1/completions requests (random token-id
 * prompts of I tokens, max_tokens O, ignore_eos, greedy) back to back until N requests are
 * done; every SSE event is timestamped as it arrives. Reports output tokens/s, time to first
 * token and inter-token latency percentiles (the same definitions as vLLM's
 * benchmark_serving: TTFT from sending the request to the first content event; ITL the gaps
 * between content events, pooled over requests).
 *
 *   kiln_loadgen --url http://127.0.0.1:8000 --concurrency 64 --requests 256 \
 *                --input-len 128 --output-len 128 [--model NAME] [--json]
 *
 * It uses libevent's HTTP client, so it runs wherever kiln does (the GPU machine has
 * libevent and no Node.js or Python HTTP stack worth timing with). */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

struct samples {
    double *v;
    size_t n, cap;
};

static bool push(struct samples *s, double x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        double *v = realloc(s->v, cap * sizeof *v);
        if (!v) return false;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return true;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples; 0 when there are none. */
static double pct(const struct samples *s, double p)
{
    if (!s->n) return 0.0;
    size_t i = (size_t)(p / 100.0 * (double)(s->n - 1) + 0.5);
    return s->v[i < s->n ? i : s->n - 1];
}

struct opts {
    char host[256];
    int port;
    const char *model;
    int concurrency, requests, input_len, output_len;
    unsigned long long seed;
    bool json;
};

struct lg;

struct client {
    struct lg *lg;
    struct evhttp_connection *conn;
    struct evbuffer *sse; /* bytes of an event not complete yet */
    double t_sent, t_last;
    int events, tokens;
    bool ok;
};

struct lg {
    struct opts o;
    struct event_base *base;
    struct client *clients;
    int started, finished, failed;
    long long out_tokens, in_tokens;
    uint64_t rng;
    struct samples ttft, itl, e2e;
    double t0, t_end;
    char first_error[256];
};

static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void send_next(struct client *c);

/* One complete SSE event (without the trailing blank line). */
static void on_sse_event(struct client *c, const char *ev, size_t len)
{
    if (len < 6 || memcmp(ev, "data: ", 6)) return;
    ev += 6;
    len -= 6;
    if (len == 6 && !memcmp(ev, "[DONE]", 6)) return;
    double now = kiln_now();
    json_t *o = json_loadb(ev, len, 0, NULL);
    if (!o) return;
    json_t *choices = json_object_get(o, "choices");
    json_t *usage = json_object_get(o, "usage");
    if (json_is_object(usage)) {
        c->tokens = (int)json_integer_value(json_object_get(usage, "completion_tokens"));
    }
    if (json_array_size(choices) > 0) {
        json_t *text = json_object_get(json_array_get(choices, 0), "text");
        if (json_is_string(text) && json_string_length(text) > 0) {
            if (!c->events++)
                push(&c->lg->ttft, now - c->t_sent);
            else
                push(&c->lg->itl, now - c->t_last);
            c->t_last = now;
        }
    }
    if (json_object_get(o, "error")) c->ok = false;
    json_decref(o);
}

static void on_chunk(struct evhttp_request *req, void *arg)
{
    struct client *c = arg;
    evbuffer_add_buffer(c->sse, evhttp_request_get_input_buffer(req));
    for (;;) {
        struct evbuffer_ptr p = evbuffer_search(c->sse, "\n\n", 2, NULL);
        if (p.pos < 0) break;
        size_t n = (size_t)p.pos;
        char *ev = (char *)evbuffer_pullup(c->sse, (ev_ssize_t)(n + 2));
        on_sse_event(c, ev, n);
        evbuffer_drain(c->sse, n + 2);
    }
}

static void on_done(struct evhttp_request *req, void *arg)
{
    struct client *c = arg;
    struct lg *lg = c->lg;
    double now = kiln_now();
    int status = req ? evhttp_request_get_response_code(req) : 0;
    if (req && evbuffer_get_length(evhttp_request_get_input_buffer(req))) on_chunk(req, c);
    if (status != 200 || !c->ok || c->tokens <= 0) {
        lg->failed++;
        if (!lg->first_error[0])
            snprintf(lg->first_error, sizeof lg->first_error, "HTTP %d, %d tokens", status,
                     c->tokens);
    } else {
        push(&lg->e2e, now - c->t_sent);
        lg->out_tokens += c->tokens;
        lg->in_tokens += lg->o.input_len;
    }
    lg->finished++;
    lg->t_end = now;
    if (lg->started < lg->o.requests) {
        send_next(c);
    } else if (lg->finished == lg->o.requests) {
        event_base_loopexit(lg->base, NULL);
    }
}

static void send_next(struct client *c)
{
    struct lg *lg = c->lg;
    lg->started++;
    c->events = 0;
    c->tokens = 0;
    c->ok = true;
    evbuffer_drain(c->sse, evbuffer_get_length(c->sse));
    struct evhttp_request *req = evhttp_request_new(on_done, c);
    if (!req) {
        KILN_ERROR("out of memory");
        event_base_loopbreak(lg->base);
        return;
    }
    evhttp_request_set_chunked_cb(req, on_chunk);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", lg->o.host);
    evhttp_add_header(h, "Content-Type", "application/json");
    struct evbuffer *body = evhttp_request_get_output_buffer(req);
    /* Random ids well inside the Llama 3 vocabulary, away from the special tokens. */
    evbuffer_add_printf(body, "{");
    if (lg->o.model) evbuffer_add_printf(body, "\"model\":\"%s\",", lg->o.model);
    evbuffer_add_printf(body, "\"prompt\":[");
    for (int i = 0; i < lg->o.input_len; i++)
        evbuffer_add_printf(body, "%s%d", i ? "," : "", 1000 + (int)(next_rand(&lg->rng) % 100000));
    evbuffer_add_printf(body,
                        "],\"max_tokens\":%d,\"ignore_eos\":true,\"temperature\":0,"
                        "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                        lg->o.output_len);
    c->t_sent = kiln_now();
    if (evhttp_make_request(c->conn, req, EVHTTP_REQ_POST, "/v1/completions")) {
        KILN_ERROR("cannot send a request to %s:%d", lg->o.host, lg->o.port);
        event_base_loopbreak(lg->base);
    }
}

static int parse(int argc, char **argv, struct opts *o)
{
    static const struct option long_opts[] = {
        {"url", required_argument, 0, 'u'},
        {"model", required_argument, 0, 'm'},
        {"concurrency", required_argument, 0, 'c'},
        {"requests", required_argument, 0, 'n'},
        {"input-len", required_argument, 0, 'i'},
        {"output-len", required_argument, 0, 'o'},
        {"seed", required_argument, 0, 's'},
        {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    *o = (struct opts){.port = 8000,
                       .concurrency = 1,
                       .requests = 0,
                       .input_len = 128,
                       .output_len = 128,
                       .seed = 1};
    snprintf(o->host, sizeof o->host, "127.0.0.1");
    int c;
    while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        switch (c) {
        case 'u': {
            const char *u = optarg;
            if (!strncmp(u, "http://", 7)) u += 7;
            const char *colon = strrchr(u, ':');
            size_t hl = colon ? (size_t)(colon - u) : strcspn(u, "/");
            if (!hl || hl >= sizeof o->host) return 2;
            memcpy(o->host, u, hl);
            o->host[hl] = 0;
            if (colon) o->port = atoi(colon + 1);
            if (o->port <= 0 || o->port > 65535) return 2;
            break;
        }
        case 'm':
            o->model = optarg;
            break;
        case 'c':
            o->concurrency = atoi(optarg);
            break;
        case 'n':
            o->requests = atoi(optarg);
            break;
        case 'i':
            o->input_len = atoi(optarg);
            break;
        case 'o':
            o->output_len = atoi(optarg);
            break;
        case 's':
            o->seed = strtoull(optarg, NULL, 10);
            break;
        case 'j':
            o->json = true;
            break;
        case 'h':
        default:
            fprintf(c == 'h' ? stdout : stderr,
                    "usage: kiln_loadgen --url http://HOST:PORT [--model NAME] [--concurrency C]\n"
                    "       [--requests N (default 4 C)] [--input-len I (128)] [--output-len O "
                    "(128)] [--seed S] [--json]\n");
            return c == 'h' ? -1 : 2;
        }
    }
    if (!o->requests) o->requests = 4 * o->concurrency;
    if (o->concurrency < 1 || o->concurrency > 65536 || o->requests < 1 || o->input_len < 1 ||
        o->output_len < 1) {
        fprintf(stderr, "kiln_loadgen: concurrency, requests and lengths must be positive\n");
        return 2;
    }
    if (o->concurrency > o->requests) o->concurrency = o->requests;
    return 0;
}

int main(int argc, char **argv)
{
    struct lg lg = {0};
    int rc = parse(argc, argv, &lg.o);
    if (rc) return rc < 0 ? 0 : rc;
    lg.rng = lg.o.seed;
    lg.base = event_base_new();
    lg.clients = calloc((size_t)lg.o.concurrency, sizeof *lg.clients);
    if (!lg.base || !lg.clients) return 1;
    for (int i = 0; i < lg.o.concurrency; i++) {
        struct client *c = &lg.clients[i];
        c->lg = &lg;
        c->sse = evbuffer_new();
        c->conn = evhttp_connection_base_new(lg.base, NULL, lg.o.host, (ev_uint16_t)lg.o.port);
        if (!c->sse || !c->conn) return 1;
        evhttp_connection_set_timeout(c->conn, 3600);
    }
    lg.t0 = kiln_now();
    for (int i = 0; i < lg.o.concurrency; i++) send_next(&lg.clients[i]);
    event_base_dispatch(lg.base);
    double wall = lg.t_end - lg.t0;
    qsort(lg.ttft.v, lg.ttft.n, sizeof(double), cmp_double);
    qsort(lg.itl.v, lg.itl.n, sizeof(double), cmp_double);
    qsort(lg.e2e.v, lg.e2e.n, sizeof(double), cmp_double);
    int ok = lg.finished - lg.failed;
    double out_tps = wall > 0 ? (double)lg.out_tokens / wall : 0.0;
    if (lg.o.json) {
        printf("{\"concurrency\":%d,\"requests\":%d,\"completed\":%d,\"failed\":%d,"
               "\"input_len\":%d,\"output_len\":%d,\"duration_s\":%.4f,\"output_tokens\":%lld,"
               "\"output_tok_s\":%.2f,\"total_tok_s\":%.2f,\"requests_s\":%.3f,"
               "\"ttft_ms_p50\":%.3f,\"ttft_ms_p90\":%.3f,\"ttft_ms_p99\":%.3f,"
               "\"itl_ms_p50\":%.3f,\"itl_ms_p90\":%.3f,\"itl_ms_p99\":%.3f,"
               "\"e2e_s_p50\":%.4f,\"e2e_s_p99\":%.4f}\n",
               lg.o.concurrency, lg.o.requests, ok, lg.failed, lg.o.input_len, lg.o.output_len,
               wall, lg.out_tokens, out_tps,
               wall > 0 ? (double)(lg.out_tokens + lg.in_tokens) / wall : 0.0,
               wall > 0 ? ok / wall : 0.0, 1e3 * pct(&lg.ttft, 50), 1e3 * pct(&lg.ttft, 90),
               1e3 * pct(&lg.ttft, 99), 1e3 * pct(&lg.itl, 50), 1e3 * pct(&lg.itl, 90),
               1e3 * pct(&lg.itl, 99), pct(&lg.e2e, 50), pct(&lg.e2e, 99));
    } else {
        printf("concurrency %d, %d requests (%d failed), ISL/OSL %d/%d, %.2f s\n"
               "  output %.1f tok/s, %.2f requests/s\n"
               "  TTFT p50 %.2f ms, p99 %.2f ms\n"
               "  ITL  p50 %.2f ms, p99 %.2f ms\n",
               lg.o.concurrency, lg.o.requests, lg.failed, lg.o.input_len, lg.o.output_len, wall,
               out_tps, wall > 0 ? ok / wall : 0.0, 1e3 * pct(&lg.ttft, 50),
               1e3 * pct(&lg.ttft, 99), 1e3 * pct(&lg.itl, 50), 1e3 * pct(&lg.itl, 99));
    }
    if (lg.failed)
        fprintf(stderr, "kiln_loadgen: %d failed (first: %s)\n", lg.failed, lg.first_error);
    for (int i = 0; i < lg.o.concurrency; i++) {
        evhttp_connection_free(lg.clients[i].conn);
        evbuffer_free(lg.clients[i].sse);
    }
    free(lg.clients);
    free(lg.ttft.v);
    free(lg.itl.v);
    free(lg.e2e.v);
    event_base_free(lg.base);
    return lg.failed ? 1 : 0;
}
