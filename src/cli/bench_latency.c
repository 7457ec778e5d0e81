/* kiln bench MODEL (latency mode): drives the backend directly, one step at a time.
 *   - batch-1 decode tok/s at each context length (the KV cache filled first), with the bytes a
 *     step reads (weights + KV) as GB/s and as a share of the measured read bandwidth;
 *   - time to first token and prefill tok/s for each prompt length, as TFLOP/s and a share of
 *     the measured FP8 GEMM peak;
 *   - decode throughput at each batch size (every sequence at context 128, or --batch-context);
 *   - device memory in use; optionally (--profile) the time per op, without CUDA graphs;
 *   - with --json-schema, each decode point again under that constraint (bench_constrained.c),
 *     as tok/s and a share of the unconstrained figure.
 * Speeds are reported against limits measured in the same run, never against datasheets. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cli.h"
#include "common.h"
#include "core/log.h"
#include "model/model.h"

#define MAX_LIST 8

struct list {
    int v[MAX_LIST], n;
};

struct lat_args {
    const char *model_dir;
    struct list contexts, prompts, batches;
    int steps, max_num_tokens, max_seq_len, max_batch, batch_ctx;
    bool json, profile;
    const char *json_schema, *tokenizer_dir;
    struct kiln_cli_backend backend;
};

static bool parse_list(const char *s, struct list *l)
{
    l->n = 0;
    if (!strcmp(s, "") || !strcmp(s, "none")) return true;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (l->n == MAX_LIST || !kiln_cli_int(tok, 1, 1 << 20, &l->v[l->n])) return false;
        l->n++;
    }
    return true;
}

static int list_max(const struct list *l, int dflt)
{
    int m = dflt;
    for (int i = 0; i < l->n; i++) m = l->v[i] > m ? l->v[i] : m;
    return m;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kiln bench MODEL [options]      (latency; see --throughput for load)\n"
               "  --contexts LIST       batch-1 decode at these contexts (default 128,2048,8192)\n"
               "  --prompts LIST        time to first token for these prompts (128,512,2048)\n"
               "  --batches LIST        decode throughput at these batch sizes (8,32,128)\n"
               "  --batch-context N     context of the batched decode sequences (default 128)\n"
               "  --steps N             decode steps timed per point (default 64)\n"
               "  --max-num-tokens N    tokens per forward, prefill chunk (default 2048)\n"
               "  --max-seq-len N       size the engine for this context (default: from lists)\n"
               "  --max-batch-size N    size the engine for this batch (default: from lists)\n"
               "  --profile             time every op (runs without CUDA graphs)\n"
               "  --json-schema FILE    also time each decode point under this JSON Schema\n"
               "                        (\"builtin\": an object with nesting, array, format;\n"
               "                        \"bounded\": every value bounded, so values end)\n"
               "  --tokenizer DIR       tokenizer for --json-schema (default: the model's)\n"
               "  --json                also print one JSON line with every "
               "figure\n" KILN_CLI_BACKEND_HELP);
}

/* One sequence's bookkeeping: identity block table from a base block. */
struct bseq {
    int32_t *table;
    int len;
};

struct bench {
    struct kiln_backend *be;
    int vocab, max_blocks;
    int32_t *tokens, *pos, *start, *kvlen, *rows, *tables;
    struct kiln_sampling *sp;
    struct kiln_sample_out *so;
    uint64_t rng;
    struct bench_grammar *grammar; /* --json-schema */
    bool constrained;              /* this pass samples under it, feeding back the tokens */
};

static int32_t rand_token(struct bench *B)
{
    B->rng = B->rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((B->rng >> 33) % (uint64_t)B->vocab);
}

/* Runs one forward over `ns` sequences, each advancing by len[i] new tokens, then samples one
 * token for each sequence (greedy). */
static enum kiln_status run_step(struct bench *B, struct bseq *seqs, int ns, const int *len,
                                 bool sample, struct kiln_error *err)
{
    int t = 0;
    for (int s = 0; s < ns; s++) {
        B->start[s] = t;
        for (int i = 0; i < len[s]; i++, t++) {
            /* constrained decode feeds back the drawn tokens (B->so is per sequence) */
            B->tokens[t] = B->constrained && len[s] == 1 ? B->so[s].token : rand_token(B);
            B->pos[t] = seqs[s].len + i;
        }
        seqs[s].len += len[s];
        B->kvlen[s] = seqs[s].len;
        memcpy(B->tables + (size_t)s * B->max_blocks, seqs[s].table,
               (size_t)B->max_blocks * sizeof(int32_t));
        B->rows[s] = t - 1;
    }
    B->start[ns] = t;
    struct kiln_batch batch = {
        t,         B->tokens,     B->pos,          ns,     B->start, B->kvlen,
        B->tables, B->max_blocks, sample ? ns : 0, B->rows};
    enum kiln_status st = B->be->ops->forward(B->be, &batch, err);
    if (st || !sample) return st;
    for (int s = 0; s < ns; s++)
        B->sp[s] = (struct kiln_sampling){
            .temperature = 0, .top_p = 1, .repetition_penalty = 1, .step = (uint64_t)seqs[s].len};
    if (B->constrained) bench_grammar_masks(B->grammar, B->sp, ns);
    st = B->be->ops->sample(B->be, B->sp, ns, B->so, err);
    if (!st && B->constrained) st = bench_grammar_accept(B->grammar, B->so, ns, err);
    return st;
}

/* Prefills a sequence to `ctx` tokens in chunks of at most chunk tokens. */
static enum kiln_status fill(struct bench *B, struct bseq *q, int ctx, int chunk, bool sample_last,
                             struct kiln_error *err)
{
    while (q->len < ctx) {
        int n = ctx - q->len < chunk ? ctx - q->len : chunk;
        enum kiln_status st = run_step(B, q, 1, &n, sample_last && q->len + n == ctx, err);
        if (st) return st;
    }
    return KILN_OK;
}

static void print_profile(struct bench *B, const char *what)
{
    if (!B->be->ops->report || !B->be->opt.profile) return;
    char buf[2048];
    B->be->ops->report(B->be, buf, sizeof buf);
    printf("  per-op time, %s:\n%s", what, buf);
}

enum {
    O_CTX = 256,
    O_PROMPTS,
    O_BATCHES,
    O_STEPS,
    O_MNT,
    O_MSL,
    O_MBS,
    O_BCTX,
    O_PROFILE,
    O_JSON,
    O_SCHEMA,
    O_TOKENIZER,
    O_HELP
};

static const struct option long_opts[] = {
    {"contexts", required_argument, 0, O_CTX},
    {"prompts", required_argument, 0, O_PROMPTS},
    {"batches", required_argument, 0, O_BATCHES},
    {"steps", required_argument, 0, O_STEPS},
    {"max-num-tokens", required_argument, 0, O_MNT},
    {"max-seq-len", required_argument, 0, O_MSL},
    {"max-batch-size", required_argument, 0, O_MBS},
    {"batch-context", required_argument, 0, O_BCTX},
    {"profile", no_argument, 0, O_PROFILE},
    {"json", no_argument, 0, O_JSON},
    {"json-schema", required_argument, 0, O_SCHEMA},
    {"tokenizer", required_argument, 0, O_TOKENIZER},
    {"help", no_argument, 0, O_HELP},
    KILN_CLI_BACKEND_OPTIONS,
    {0, 0, 0, 0},
};

static bool option(int id, const char *arg, void *ctx)
{
    struct lat_args *a = ctx;
    if (id == O_SCHEMA || id == O_TOKENIZER) {
        *(id == O_SCHEMA ? &a->json_schema : &a->tokenizer_dir) = arg;
        return true;
    }
    switch (id) {
    case O_CTX:
        return parse_list(arg, &a->contexts);
    case O_PROMPTS:
        return parse_list(arg, &a->prompts);
    case O_BATCHES:
        return parse_list(arg, &a->batches);
    case O_STEPS:
        return kiln_cli_int(arg, 1, 100000, &a->steps);
    case O_MNT:
        return kiln_cli_int(arg, 1, 1 << 20, &a->max_num_tokens);
    case O_MSL:
        return kiln_cli_int(arg, 1, 1 << 22, &a->max_seq_len);
    case O_MBS:
        return kiln_cli_int(arg, 1, 4096, &a->max_batch);
    case O_BCTX:
        return kiln_cli_int(arg, 1, 1 << 20, &a->batch_ctx);
    case O_PROFILE:
        a->profile = true;
        return true;
    case O_JSON:
        a->json = true;
        return true;
    }
    return false;
}

int kiln_bench_latency(int argc, char **argv)
{
    static const struct kiln_cli_command cmd = {"bench", "", long_opts, usage, option};
    struct lat_args a = {.steps = 64, .max_num_tokens = 2048, .batch_ctx = 128};
    parse_list("128,2048,8192", &a.contexts);
    parse_list("128,512,2048", &a.prompts);
    parse_list("8,32,128", &a.batches);
    kiln_cli_backend_defaults(&a.backend);
    int prc = kiln_cli_parse(&cmd, argc, argv, &a, &a.backend, &a.model_dir);
    if (prc != KILN_CLI_GO_ON) return prc;

    struct kiln_error err = {0};
    struct kiln_model *m = NULL;
    struct bench B = {.rng = 42};
    int32_t *all_tables = NULL;
    struct bseq *seqs = NULL;
    int rc = 1;
    bool cuda = a.backend.device == KILN_CLI_DEVICE_CUDA ||
                (a.backend.device == KILN_CLI_DEVICE_AUTO && kiln_cuda_available());
    double read_gbs = 0, peak_tflops = 0;
    if (cuda && kiln_cuda_measure_limits(0, &read_gbs, &peak_tflops, &err)) goto fail;
    if (kiln_model_load(a.model_dir, &m, &err) ||
        kiln_cli_engine_limits(m, &a.max_batch, NULL, &a.max_seq_len, NULL, &err))
        goto fail;
    const struct kiln_config *cfg = &m->cfg;
    B.vocab = cfg->vocab_size;

    int steps = a.steps, chunk = a.max_num_tokens;
    int max_ctx = list_max(&a.contexts, 128) + steps + 8;
    if (a.batches.n && a.batch_ctx + steps + 8 > max_ctx) max_ctx = a.batch_ctx + steps + 8;
    int max_prompt = list_max(&a.prompts, 1) + 1;
    int max_batch = list_max(&a.batches, 1);
    int bctx = a.batch_ctx + steps + 8; /* contexts of the batched decode sequences */
    struct kiln_backend_options opt;
    kiln_cli_backend_options(&a.backend, m, &opt);
    opt.max_seq_len = a.max_seq_len ? a.max_seq_len : (max_ctx > max_prompt ? max_ctx : max_prompt);
    opt.max_seqs = a.max_batch ? a.max_batch : max_batch;
    opt.max_tokens = chunk > opt.max_seqs ? chunk : opt.max_seqs;
    opt.profile = a.profile;
    if (a.profile) opt.cuda_graphs = false;
    int bs = opt.block_size;
    B.max_blocks = (opt.max_seq_len + bs - 1) / bs;
    int per_bseq = (bctx + bs - 1) / bs;
    int need_batch = a.batches.n ? max_batch * per_bseq : 0;
    opt.n_blocks = B.max_blocks > need_batch ? B.max_blocks : need_batch;
    if (kiln_cli_backend_create(&a.backend, m, &opt, &B.be, &err)) goto fail;

    int S = opt.max_seqs, T = opt.max_tokens;
    B.tokens = malloc((size_t)T * 4);
    B.pos = malloc((size_t)T * 4);
    B.start = malloc((size_t)(S + 1) * 4);
    B.kvlen = malloc((size_t)S * 4);
    B.rows = malloc((size_t)S * 4);
    B.tables = malloc((size_t)S * B.max_blocks * 4);
    B.sp = calloc((size_t)S, sizeof *B.sp);
    B.so = calloc((size_t)S, sizeof *B.so);
    all_tables = malloc((size_t)S * B.max_blocks * 4);
    seqs = calloc((size_t)S, sizeof *seqs);
    if (!B.tokens || !B.pos || !B.start || !B.kvlen || !B.rows || !B.tables || !B.sp || !B.so ||
        !all_tables || !seqs) {
        kiln_errorf(&err, KILN_ERR_NOMEM, "out of memory");
        goto fail;
    }

    if (a.json_schema &&
        bench_grammar_create(a.json_schema, a.tokenizer_dir ? a.tokenizer_dir : a.model_dir, S,
                             B.vocab, &B.grammar, &err))
        goto fail;

    uint64_t wbytes = kiln_model_weight_bytes(m);
    size_t kv_elem = B.be->opt.kv_dtype == KILN_DTYPE_F8E4M3 ? 1 : 2;
    double kv_per_pos = 2.0 * cfg->n_layers * cfg->n_kv_heads * cfg->head_dim * (double)kv_elem;
    /* linear FLOPs per token: 2 * (parameters of every linear, lm_head included) */
    double lin_params = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        const struct kiln_layer_weights *w = &m->layers[l];
        lin_params += (double)w->qkv.out * w->qkv.in + (double)w->o.out * w->o.in +
                      (double)w->gate_up.out * w->gate_up.in + (double)w->down.out * w->down.in;
    }
    lin_params += (double)m->lm_head.out * m->lm_head.in;

    printf("kiln bench: %s on %s, %.2f GB read per decode step (weights), KV %s\n", a.model_dir,
           B.be->ops->name, (double)wbytes / 1e9, kiln_dtype_name(B.be->opt.kv_dtype));
    if (cuda)
        printf("measured limits: read bandwidth %.0f GB/s, FP8 GEMM %.0f TFLOP/s\n", read_gbs,
               peak_tflops);
    char json[8192];
    int jn =
        snprintf(json, sizeof json,
                 "{\"model\":\"%s\",\"backend\":\"%s\",\"read_gbs\":%.1f,\"fp8_tflops\":%.1f,"
                 "\"weight_bytes\":%llu",
                 a.model_dir, B.be->ops->name, read_gbs, peak_tflops, (unsigned long long)wbytes);

    /* batch-1 decode (pass 1: the same under --json-schema) */
    for (int i = 0; i < a.contexts.n; i++) {
        int ctx = a.contexts.v[i];
        double free_dt = 0;
        for (int pass = 0; pass < (B.grammar ? 2 : 1); pass++) {
            for (int k = 0; k < B.max_blocks; k++) all_tables[k] = k;
            struct bseq q = {all_tables, 0};
            if (fill(&B, &q, ctx, chunk, true, &err)) goto fail;
            int one = 1;
            if (pass && bench_grammar_reset(B.grammar, &err)) goto fail;
            B.constrained = pass == 1;
            for (int w = 0; w < 4; w++)
                if (run_step(&B, &q, 1, &one, true, &err)) goto fail;
            print_profile(&B, "warm-up (discarded)");
            int timed = steps;
            if (q.len + timed > opt.max_seq_len) timed = opt.max_seq_len - q.len;
            if (pass && bench_grammar_reset(B.grammar, &err)) goto fail;
            double t0 = kiln_now();
            for (int s = 0; s < timed; s++)
                if (run_step(&B, &q, 1, &one, true, &err)) goto fail;
            double dt = (kiln_now() - t0) / timed;
            B.constrained = false;
            if (pass) {
                printf("decode  batch 1, context %5d, json schema: %7.1f tok/s  %6.3f ms/token  "
                       "(%.1f%% of unconstrained; masks %.1f us each, %ld values)\n",
                       ctx, 1.0 / dt, dt * 1e3, 100 * free_dt / dt,
                       bench_grammar_mask_us(B.grammar), bench_grammar_values(B.grammar));
                jn += snprintf(json + jn, sizeof json - (size_t)jn,
                               ",\"decode_b1_ctx%d_json\":{\"tok_s\":%.2f,\"ratio\":%.4f,"
                               "\"mask_us\":%.2f}",
                               ctx, 1.0 / dt, free_dt / dt, bench_grammar_mask_us(B.grammar));
                continue;
            }
            free_dt = dt;
            double bytes = (double)wbytes + kv_per_pos * (ctx + timed / 2.0);
            double gbs = bytes / dt / 1e9;
            printf("decode  batch 1, context %5d: %7.1f tok/s  %6.3f ms/token  %6.0f GB/s", ctx,
                   1.0 / dt, dt * 1e3, gbs);
            if (read_gbs > 0) printf("  (%.0f%% of %.0f GB/s)", 100 * gbs / read_gbs, read_gbs);
            printf("\n");
            print_profile(&B, "decode");
            jn +=
                snprintf(json + jn, sizeof json - (size_t)jn,
                         ",\"decode_b1_ctx%d\":{\"tok_s\":%.2f,\"gbs\":%.1f}", ctx, 1.0 / dt, gbs);
        }
    }

    /* time to first token */
    for (int i = 0; i < a.prompts.n; i++) {
        int p = a.prompts.v[i];
        double best[3];
        for (int rep = 0; rep < 4; rep++) {
            for (int k = 0; k < B.max_blocks; k++) all_tables[k] = k;
            struct bseq q = {all_tables, 0};
            double t0 = kiln_now();
            if (fill(&B, &q, p, chunk, true, &err)) goto fail;
            double dt = kiln_now() - t0;
            if (rep > 0) best[rep - 1] = dt; /* rep 0 warms up (algorithm choice, caches) */
            if (rep == 0) print_profile(&B, "warm-up (discarded)");
        }
        /* median of three */
        double lo = best[0] < best[1] ? best[0] : best[1],
               hi = best[0] < best[1] ? best[1] : best[0];
        double med = best[2] < lo ? lo : (best[2] > hi ? hi : best[2]);
        double flops = 2.0 * lin_params * p +
                       4.0 * cfg->n_layers * cfg->n_heads * cfg->head_dim * (double)p * p / 2.0;
        double tflops = flops / med / 1e12;
        printf("prefill prompt %5d: TTFT %8.2f ms  %8.0f tok/s  %6.0f TFLOP/s", p, med * 1e3,
               p / med, tflops);
        if (peak_tflops > 0) printf("  (%.0f%% of %.0f)", 100 * tflops / peak_tflops, peak_tflops);
        printf("\n");
        print_profile(&B, "3 prefills");
        jn += snprintf(json + jn, sizeof json - (size_t)jn,
                       ",\"ttft_p%d\":{\"ms\":%.3f,\"tok_s\":%.1f,\"tflops\":%.1f}", p, med * 1e3,
                       p / med, tflops);
    }

    /* batched decode (pass 1: the same under --json-schema) */
    for (int i = 0; i < a.batches.n; i++) {
        int nb = a.batches.v[i];
        if (nb > S) continue;
        double free_dt = 0;
        for (int pass = 0; pass < (B.grammar ? 2 : 1); pass++) {
            for (int s = 0; s < nb; s++) {
                for (int k = 0; k < B.max_blocks; k++)
                    all_tables[(size_t)s * B.max_blocks + k] = k < per_bseq ? s * per_bseq + k : 0;
                seqs[s] = (struct bseq){all_tables + (size_t)s * B.max_blocks, 0};
            }
            /* prefill all sequences to the batch context, as many per step as the token budget
             * allows (one sequence in chunks when a context is longer than the budget) */
            int bc = a.batch_ctx;
            int per_step = chunk / bc > 0 ? chunk / bc : 1;
            for (int s0 = 0; s0 < nb; s0 += per_step) {
                int cnt = nb - s0 < per_step ? nb - s0 : per_step;
                if (bc > chunk) {
                    if (fill(&B, &seqs[s0], bc, chunk, false, &err)) goto fail;
                    continue;
                }
                int lens[4096];
                for (int s = 0; s < cnt; s++) lens[s] = bc;
                if (run_step(&B, seqs + s0, cnt, lens, false, &err)) goto fail;
            }
            int ones[4096];
            for (int s = 0; s < nb; s++) ones[s] = 1;
            if (pass && bench_grammar_reset(B.grammar, &err)) goto fail;
            B.constrained = pass == 1;
            for (int w = 0; w < 3; w++)
                if (run_step(&B, seqs, nb, ones, true, &err)) goto fail;
            print_profile(&B, "warm-up (discarded)");
            int timed = steps;
            if (pass && bench_grammar_reset(B.grammar, &err)) goto fail;
            double t0 = kiln_now();
            for (int st = 0; st < timed; st++)
                if (run_step(&B, seqs, nb, ones, true, &err)) goto fail;
            double dt = (kiln_now() - t0) / timed;
            B.constrained = false;
            if (pass) {
                printf("decode  batch %3d, context %d, json schema: %8.0f tok/s  %6.3f ms/step  "
                       "(%.1f%% of unconstrained; masks %.1f us each, %ld values)\n",
                       nb, a.batch_ctx, nb / dt, dt * 1e3, 100 * free_dt / dt,
                       bench_grammar_mask_us(B.grammar), bench_grammar_values(B.grammar));
                jn += snprintf(json + jn, sizeof json - (size_t)jn,
                               ",\"decode_b%d_json\":{\"tok_s\":%.1f,\"ratio\":%.4f,"
                               "\"mask_us\":%.2f}",
                               nb, nb / dt, free_dt / dt, bench_grammar_mask_us(B.grammar));
                continue;
            }
            free_dt = dt;
            double bytes = (double)wbytes + nb * kv_per_pos * (bc + 3 + timed / 2.0);
            printf("decode  batch %3d, context %d: %8.0f tok/s  %6.3f ms/step  %6.0f GB/s\n", nb,
                   bc, nb / dt, dt * 1e3, bytes / dt / 1e9);
            print_profile(&B, "batched decode");
            jn += snprintf(json + jn, sizeof json - (size_t)jn,
                           ",\"decode_b%d\":{\"tok_s\":%.1f,\"ms_step\":%.3f}", nb, nb / dt,
                           dt * 1e3);
        }
    }

    if (cuda) {
        uint64_t used = 0, total = 0;
        if (kiln_cuda_memory(0, &used, &total, &err)) goto fail;
        printf("device memory in use: %.2f GiB of %.2f GiB (max_seq_len %d, max_batch %d, "
               "max_num_tokens %d, KV pool %.2f GiB)\n",
               used / 1073741824.0, total / 1073741824.0, opt.max_seq_len, opt.max_seqs,
               opt.max_tokens, B.be->kv_bytes / 1073741824.0);
        jn += snprintf(json + jn, sizeof json - (size_t)jn, ",\"device_mem_gib\":%.3f",
                       used / 1073741824.0);
    }
    if (a.json) printf("%s}\n", json);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "kiln bench: %s\n", err.msg);
done:
    bench_grammar_free(B.grammar);
    kiln_backend_free(B.be);
    kiln_model_free(m);
    free(B.tokens), free(B.pos), free(B.start), free(B.kvlen), free(B.rows), free(B.tables);
    free(B.sp), free(B.so), free(all_tables), free(seqs);
    return rc;
}
