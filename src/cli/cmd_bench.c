/* kiln bench MODEL --throughput: offline load like trtllm-bench's throughput mode. N requests of
 * random prompt ids (input length I, ignore_eos, max_tokens O) go through the engine, all
 * submitted at once or kept at a fixed concurrency C; it reports output tokens/s, requests/s,
 * time to first token and inter-token latency (p50/p99), and with --json one machine-readable
 * line. The latency modes (batch-1 decode, TTFT, batched decode) live in bench_latency.c and
 * run when --throughput is absent.
 *
 * Timing is what a client of the engine sees: a request's clock starts at its submit, its
 * first token counts when the engine queues the event of the step that sampled it (the event's
 * time, so a slow reader here does not skew it), and inter-token latency is the gap between
 * consecutive token events of one request. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "core/log.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

struct tp_args {
    const char *model_dir;
    int num_requests, input_len, output_len, concurrency, warmup;
    int max_batch, max_num_tokens, kv_blocks;
    unsigned long long seed;
    bool json;
    struct kiln_cli_backend backend;
};

/* One request's timeline. */
struct tp_req {
    int index;
    double t_submit, t_last;
    int n_out;
    bool done;
};

struct tp_run {
    struct kiln_engine *e;
    int vocab;
    struct tp_req *reqs;
    int32_t *prompt; /* (input_len,) reused: filled per request */
    double *ttft;    /* (n,) seconds */
    double *itl;     /* (n * (output_len - 1),) seconds */
    size_t n_itl;
    long out_tokens;
    uint64_t rng;
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: kiln bench MODEL --throughput [options]\n"
        "  --num-requests N      requests to run (default 100)\n"
        "  --input-len N         prompt tokens per request, random ids (default 128)\n"
        "  --output-len N        generated tokens per request, eos ignored (default 128)\n"
        "  --concurrency N       keep N requests in flight (default: submit all at once)\n"
        "  --warmup N            untimed requests first (default 2)\n"
        "  --max-batch-size N    sequences per step (default: min(in flight, 256))\n"
        "  --max-num-tokens N    tokens per step, prefill chunk (default 8192)\n"
        "  --kv-blocks N         KV pool size in blocks (default: from memory)\n"
        "  --seed N              prompt ids seed (default 1)\n"
        "  --json                also print one JSON line with every figure\n" KILN_CLI_BACKEND_HELP
        "without --throughput: the latency benchmark (kiln bench MODEL --help)\n");
}

enum { O_N = 1, O_IN, O_OUT, O_CONC, O_WARM, O_MBS, O_MNT, O_BLOCKS, O_SEED, O_JSON, O_TP, O_HELP };

static const struct option long_opts[] = {
    {"throughput", no_argument, 0, O_TP},
    {"num-requests", required_argument, 0, O_N},
    {"input-len", required_argument, 0, O_IN},
    {"output-len", required_argument, 0, O_OUT},
    {"concurrency", required_argument, 0, O_CONC},
    {"warmup", required_argument, 0, O_WARM},
    {"max-batch-size", required_argument, 0, O_MBS},
    {"max-num-tokens", required_argument, 0, O_MNT},
    {"kv-blocks", required_argument, 0, O_BLOCKS},
    {"seed", required_argument, 0, O_SEED},
    {"json", no_argument, 0, O_JSON},
    {"help", no_argument, 0, O_HELP},
    KILN_CLI_BACKEND_OPTIONS,
    {0, 0, 0, 0},
};

static bool option(int id, const char *arg, void *ctx)
{
    struct tp_args *a = ctx;
    switch (id) {
    case O_TP:
        return true;
    case O_N:
        return kiln_cli_int(arg, 1, 10000000, &a->num_requests);
    case O_IN:
        return kiln_cli_int(arg, 1, 1 << 22, &a->input_len);
    case O_OUT:
        return kiln_cli_int(arg, 1, 1 << 22, &a->output_len);
    case O_CONC:
        return kiln_cli_int(arg, 1, 1 << 20, &a->concurrency);
    case O_WARM:
        return kiln_cli_int(arg, 0, 1000, &a->warmup);
    case O_MBS:
        return kiln_cli_int(arg, 1, 1 << 16, &a->max_batch);
    case O_MNT:
        return kiln_cli_int(arg, 1, 1 << 22, &a->max_num_tokens);
    case O_BLOCKS:
        return kiln_cli_int(arg, 1, 1 << 28, &a->kv_blocks);
    case O_SEED:
        return kiln_cli_u64(arg, &a->seed);
    case O_JSON:
        a->json = true;
        return true;
    }
    return false;
}

static int parse(int argc, char **argv, struct tp_args *a)
{
    static const struct kiln_cli_command cmd = {"bench", "", long_opts, usage, option};
    *a = (struct tp_args){
        .num_requests = 100, .input_len = 128, .output_len = 128, .warmup = 2, .seed = 1};
    kiln_cli_backend_defaults(&a->backend);
    return kiln_cli_parse(&cmd, argc, argv, a, &a->backend, &a->model_dir);
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

/* Nearest-rank percentile of sorted v[0..n); 0 when empty. */
static double percentile(const double *v, size_t n, double p)
{
    if (!n) return 0;
    size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1) k = 1;
    return v[k > n ? n - 1 : k - 1];
}

static enum kiln_status submit_one(struct tp_run *r, struct tp_req *q, int input_len,
                                   int output_len, struct kiln_error *err)
{
    for (int i = 0; i < input_len; i++) {
        r->rng = kiln_splitmix64(r->rng);
        r->prompt[i] = (int32_t)(r->rng % (uint64_t)r->vocab);
    }
    struct kiln_request req;
    kiln_request_defaults(&req);
    req.prompt = r->prompt;
    req.n_prompt = input_len;
    req.max_tokens = output_len;
    req.ignore_eos = true;
    req.temperature = 0;
    req.user = q;
    uint64_t id;
    q->t_submit = q->t_last = kiln_now();
    return kiln_engine_submit(r->e, &req, &id, err);
}

/* Runs n requests with at most conc in flight; records timings when r->ttft is set. */
static enum kiln_status run_requests(struct tp_run *r, int n, int conc, int input_len,
                                     int output_len, struct kiln_error *err)
{
    int next = 0, finished = 0;
    enum kiln_status st;
    for (; next < n && next < conc; next++)
        if ((st = submit_one(r, &r->reqs[next], input_len, output_len, err))) return st;
    struct kiln_event ev[256];
    while (finished < n) {
        size_t got = kiln_engine_wait(r->e, ev, 256, 60.0);
        if (!got) return kiln_errorf(err, KILN_ERR_INTERNAL, "no progress for 60 s");
        int newly = 0;
        st = KILN_OK;
        for (size_t i = 0; i < got; i++) {
            struct tp_req *q = ev[i].user;
            if (ev[i].token >= 0) {
                if (r->ttft) {
                    if (q->n_out == 0)
                        r->ttft[q->index] = ev[i].time - q->t_submit;
                    else
                        r->itl[r->n_itl++] = ev[i].time - q->t_last;
                }
                q->t_last = ev[i].time;
                q->n_out++;
            }
            if (ev[i].finish) {
                if (ev[i].finish != KILN_FINISH_LENGTH && !st)
                    st = kiln_errorf(err, KILN_ERR_INTERNAL, "request %d ended early: %s", q->index,
                                     ev[i].error[0] ? ev[i].error : "cancelled");
                q->done = true;
                r->out_tokens += q->n_out;
                newly++;
            }
            kiln_event_release(&ev[i]);
        }
        if (st) return st;
        finished += newly;
        for (; newly > 0 && next < n; newly--, next++)
            if ((st = submit_one(r, &r->reqs[next], input_len, output_len, err))) return st;
    }
    return KILN_OK;
}

static void print_results(const struct tp_args *a, const struct kiln_backend *be, int conc,
                          double elapsed, struct tp_run *r, const struct kiln_engine_stats *st)
{
    size_t n = (size_t)a->num_requests;
    qsort(r->ttft, n, sizeof *r->ttft, cmp_double);
    qsort(r->itl, r->n_itl, sizeof *r->itl, cmp_double);
    double out_tps = (double)r->out_tokens / elapsed;
    double total_tps = (double)(r->out_tokens + (long)n * a->input_len) / elapsed;
    double rps = (double)n / elapsed;
    double ttft50 = 1e3 * percentile(r->ttft, n, 50), ttft99 = 1e3 * percentile(r->ttft, n, 99);
    double itl50 = 1e3 * percentile(r->itl, r->n_itl, 50);
    double itl99 = 1e3 * percentile(r->itl, r->n_itl, 99);
    printf("requests           %d (input %d, output %d tokens, concurrency %d)\n", a->num_requests,
           a->input_len, a->output_len, conc);
    printf("elapsed            %.3f s, %llu steps, %llu preemptions\n", elapsed,
           (unsigned long long)st->steps, (unsigned long long)st->preemptions);
    printf("output throughput  %.1f tok/s\n", out_tps);
    printf("total throughput   %.1f tok/s (input + output)\n", total_tps);
    printf("request throughput %.3f req/s\n", rps);
    printf("TTFT               p50 %.2f ms, p99 %.2f ms\n", ttft50, ttft99);
    printf("inter-token        p50 %.2f ms, p99 %.2f ms\n", itl50, itl99);
    double host_s = st->step_s - st->device_s;
    printf("engine thread      %.3f s in steps, %.3f s of it in forward + sample (device); "
           "host between them %.3f s = %.1f%% of the elapsed time\n",
           st->step_s, st->device_s, host_s, 100.0 * host_s / elapsed);
    if (!a->json) return;
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, "
        "s:f, s:I, s:I, s:f, s:f}",
        "mode", "throughput", "model", a->model_dir, "backend", be->ops->name, "num_requests",
        a->num_requests, "input_len", a->input_len, "output_len", a->output_len, "concurrency",
        conc, "max_batch_size", be->opt.max_seqs, "max_num_tokens", be->opt.max_tokens, "kv_blocks",
        be->opt.n_blocks, "elapsed_s", elapsed, "output_tok_s", out_tps, "total_tok_s", total_tps,
        "req_s", rps, "ttft_p50_ms", ttft50, "ttft_p99_ms", ttft99, "itl_p50_ms", itl50,
        "itl_p99_ms", itl99, "steps", (json_int_t)st->steps, "preemptions",
        (json_int_t)st->preemptions, "engine_step_s", st->step_s, "engine_device_s", st->device_s);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s) printf("%s\n", s);
    free(s);
    json_decref(j);
}

static int throughput(const struct tp_args *a)
{
    struct kiln_error err = {0};
    struct kiln_model *m = NULL;
    struct kiln_backend *be = NULL;
    struct tp_run r = {.rng = kiln_splitmix64(a->seed)};
    int rc = 1;
    int conc = a->concurrency ? a->concurrency : a->num_requests;
    if (conc > a->num_requests) conc = a->num_requests;
    if (kiln_model_load(a->model_dir, &m, &err)) goto fail;
    r.vocab = m->cfg.vocab_size;
    if (m->cfg.max_position_embeddings > 0 &&
        a->input_len + a->output_len > m->cfg.max_position_embeddings) {
        kiln_errorf(&err, KILN_ERR_INVALID,
                    "--input-len %d + --output-len %d exceeds the model's context of %d tokens",
                    a->input_len, a->output_len, m->cfg.max_position_embeddings);
        goto fail;
    }

    int max_batch = a->max_batch, max_tokens = a->max_num_tokens, max_input = a->input_len;
    if (kiln_cli_engine_limits(m, &max_batch, &max_tokens, NULL, &max_input, &err)) goto fail;
    struct kiln_backend_options bo;
    kiln_cli_backend_options(&a->backend, m, &bo);
    bo.max_seqs = max_batch ? max_batch : (conc < 256 ? conc : 256);
    bo.max_tokens = max_tokens ? max_tokens : 8192;
    if (bo.max_tokens < bo.max_seqs) bo.max_tokens = bo.max_seqs;
    bo.max_seq_len = a->input_len + a->output_len;
    if (a->kv_blocks) bo.n_blocks = a->kv_blocks;
    if (kiln_cli_backend_create(&a->backend, m, &bo, &be, &err)) goto fail;

    struct kiln_engine_options eo = {.prefix_caching = true};
    if (kiln_engine_create(be, NULL, &eo, &r.e, &err)) goto fail;
    int n = a->num_requests, warm = a->warmup;
    r.reqs = calloc((size_t)(n > warm ? n : warm), sizeof *r.reqs);
    r.prompt = malloc((size_t)a->input_len * sizeof *r.prompt);
    r.ttft = calloc((size_t)n, sizeof *r.ttft);
    r.itl = malloc((size_t)n * (size_t)(a->output_len > 1 ? a->output_len - 1 : 1) * sizeof *r.itl);
    if (!r.reqs || !r.prompt || !r.ttft || !r.itl) {
        kiln_errorf(&err, KILN_ERR_NOMEM, "out of memory for %d requests", n);
        goto fail;
    }
    printf("kiln bench --throughput: %s on %s, KV %s, %d blocks of %d, batch %d, %d tokens/step\n",
           a->model_dir, be->ops->name, kiln_dtype_name(be->opt.kv_dtype), be->opt.n_blocks,
           be->opt.block_size, be->opt.max_seqs, be->opt.max_tokens);
    fflush(stdout);

    if (warm) {
        /* Untimed: first-call costs (allocations, kernel selection, graph capture). */
        double *ttft = r.ttft;
        r.ttft = NULL;
        int wout = a->output_len < 16 ? a->output_len : 16;
        for (int i = 0; i < warm; i++) r.reqs[i] = (struct tp_req){.index = i};
        if (run_requests(&r, warm, warm, a->input_len, wout, &err)) goto fail;
        r.ttft = ttft;
        r.out_tokens = 0;
    }
    struct kiln_engine_stats before, after;
    kiln_engine_stats(r.e, &before);
    for (int i = 0; i < n; i++) r.reqs[i] = (struct tp_req){.index = i};
    double t0 = kiln_now();
    if (run_requests(&r, n, conc, a->input_len, a->output_len, &err)) goto fail;
    double elapsed = kiln_now() - t0;
    kiln_engine_stats(r.e, &after);
    after.steps -= before.steps;
    after.preemptions -= before.preemptions;
    after.step_s -= before.step_s;
    after.device_s -= before.device_s;
    print_results(a, be, conc, elapsed, &r, &after);
    rc = 0;
fail:
    if (rc) fprintf(stderr, "kiln bench: %s\n", err.msg);
    kiln_engine_free(r.e);
    kiln_backend_free(be);
    kiln_model_free(m);
    free(r.reqs);
    free(r.prompt);
    free(r.ttft);
    free(r.itl);
    return rc;
}

int kiln_cmd_bench(int argc, char **argv)
{
    bool tp = false;
    for (int i = 1; i < argc; i++) tp |= !strcmp(argv[i], "--throughput");
    if (!tp) return kiln_bench_latency(argc, argv);
    struct tp_args a;
    int rc = parse(argc, argv, &a);
    if (rc != KILN_CLI_GO_ON) return rc;
    return throughput(&a);
}
