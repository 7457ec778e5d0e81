/* kiln generate MODEL_DIR: one prompt in, generated ids (or text) out, tokens/s on stderr.
 * Drives the backend directly (one sequence, identity block table), so it doubles as the
 * simplest end-to-end check of a backend. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cli.h"
#include "common.h"
#include "core/file.h"
#include "core/log.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

struct gen_args {
    const char *model_dir;
    const char *prompt_ids;
    const char *prompt;        /* text, encoded with the model's tokenizer */
    const char *tokenizer_dir; /* default: the model folder */
    int max_tokens;
    float temperature, top_p;
    int top_k;
    unsigned long long seed;
    bool ignore_eos;
    const char *dump_logits;
    struct kiln_cli_backend backend;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: kiln generate MODEL_DIR (--prompt TEXT | --prompt-ids LIST) [options]\n"
               "  --prompt TEXT         text, encoded with the model's tokenizer (prints text)\n"
               "  --prompt-ids LIST     comma-separated token ids, e.g. 791,6864,315\n"
               "  --max-tokens N        tokens to generate (default 32)\n"
               "  --temperature T       0 = greedy (default 0)\n"
               "  --top-p P             nucleus sampling (default 1)\n"
               "  --top-k K             keep the K most likely tokens (default off)\n"
               "  --seed N              sampling seed (default 0)\n"
               "  --ignore-eos          keep going past end-of-sequence tokens\n"
               "  --dump-logits FILE    write the logits of every prompt position to FILE\n"
               "                        (f32, prompt_len x vocab, native byte "
               "order)\n" KILN_CLI_BACKEND_HELP
               "Prints the generated ids on stdout and tokens/s on stderr.\n");
}

enum {
    O_IDS = 256,
    O_MAX,
    O_TEMP,
    O_TOPP,
    O_TOPK,
    O_SEED,
    O_IGNORE,
    O_DUMP,
    O_PROMPT,
    O_TOK,
    O_HELP
};

static const struct option long_opts[] = {
    {"prompt-ids", required_argument, 0, O_IDS},
    {"prompt", required_argument, 0, O_PROMPT},
    {"tokenizer", required_argument, 0, O_TOK},
    {"max-tokens", required_argument, 0, O_MAX},
    {"temperature", required_argument, 0, O_TEMP},
    {"top-p", required_argument, 0, O_TOPP},
    {"top-k", required_argument, 0, O_TOPK},
    {"seed", required_argument, 0, O_SEED},
    {"ignore-eos", no_argument, 0, O_IGNORE},
    {"dump-logits", required_argument, 0, O_DUMP},
    {"help", no_argument, 0, O_HELP},
    KILN_CLI_BACKEND_OPTIONS,
    {0, 0, 0, 0},
};

static bool option(int id, const char *arg, void *ctx)
{
    struct gen_args *a = ctx;
    switch (id) {
    case O_IDS:
        a->prompt_ids = arg;
        return true;
    case O_PROMPT:
        a->prompt = arg;
        return true;
    case O_TOK:
        a->tokenizer_dir = arg;
        return true;
    case O_MAX:
        return kiln_cli_int(arg, 1, 1 << 20, &a->max_tokens);
    case O_TEMP:
        return kiln_cli_float(arg, 0.0f, 100.0f, &a->temperature);
    case O_TOPP:
        return kiln_cli_float(arg, 1e-6f, 1.0f, &a->top_p);
    case O_TOPK:
        return kiln_cli_int(arg, 0, 1 << 30, &a->top_k);
    case O_SEED:
        return kiln_cli_u64(arg, &a->seed);
    case O_IGNORE:
        a->ignore_eos = true;
        return true;
    case O_DUMP:
        a->dump_logits = arg;
        return true;
    }
    return false;
}

static int parse(int argc, char **argv, struct gen_args *a)
{
    static const struct kiln_cli_command cmd = {"generate", "", long_opts, usage, option};
    *a = (struct gen_args){.max_tokens = 32, .top_p = 1.0f};
    kiln_cli_backend_defaults(&a->backend);
    int rc = kiln_cli_parse(&cmd, argc, argv, a, &a->backend, &a->model_dir);
    if (rc != KILN_CLI_GO_ON) return rc;
    if (!a->prompt_ids == !a->prompt) {
        fprintf(stderr, "kiln generate: give --prompt TEXT or --prompt-ids LIST\n");
        return 2;
    }
    return KILN_CLI_GO_ON;
}

static enum kiln_status write_logits(struct kiln_backend *be, const char *path, int rows,
                                     struct kiln_error *err)
{
    size_t n = (size_t)rows * (size_t)be->model->cfg.vocab_size;
    float *l = malloc(n * sizeof(float));
    if (!l) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory for %d rows of logits", rows);
    enum kiln_status st = be->ops->read_logits(be, l, err);
    if (!st) st = kiln_file_write_atomic(path, l, n * sizeof(float), err);
    free(l);
    return st;
}

int kiln_cmd_generate(int argc, char **argv)
{
    struct gen_args a;
    int rc = parse(argc, argv, &a);
    if (rc != KILN_CLI_GO_ON) return rc;

    struct kiln_error err = {0};
    int32_t *prompt = NULL;
    int n_prompt = 0;
    struct kiln_tokenizer *tok = NULL;
    struct kiln_detok *detok = NULL;
    if (a.prompt) {
        size_t n = 0;
        if (kiln_tokenizer_load(a.tokenizer_dir ? a.tokenizer_dir : a.model_dir, &tok, &err) ||
            kiln_tokenizer_encode(tok, a.prompt, strlen(a.prompt), true, &prompt, &n, &err)) {
            fprintf(stderr, "kiln generate: %s\n", err.msg);
            kiln_tokenizer_free(tok);
            return 1;
        }
        n_prompt = (int)n;
        detok = kiln_detok_create(tok, true);
        if (n_prompt == 0 || !detok) {
            fprintf(stderr, "kiln generate: %s\n", n_prompt ? "out of memory" : "empty prompt");
            kiln_detok_free(detok);
            kiln_tokenizer_free(tok);
            free(prompt);
            return 1;
        }
    } else if (kiln_cli_parse_ids(a.prompt_ids, &prompt, &n_prompt, &err)) {
        fprintf(stderr, "kiln generate: --prompt-ids: %s\n", err.msg);
        return 2;
    }
    struct kiln_model *model = NULL;
    struct kiln_backend *be = NULL;
    int32_t *ids = NULL, *table = NULL, *rows = NULL;
    struct kiln_sampling *sps = NULL;
    struct kiln_sample_out *outs = NULL;
    rc = 1;
    int total = n_prompt + a.max_tokens, n_seqs = a.dump_logits ? n_prompt : 1;
    if (kiln_model_load(a.model_dir, &model, &err)) goto fail;
    if (kiln_cli_engine_limits(model, &n_seqs, &n_prompt, &total, &n_prompt, &err)) {
        kiln_error_prefix(&err, "prompt of %d tokens, %d to generate", n_prompt, a.max_tokens);
        goto fail;
    }
    struct kiln_backend_options opt;
    kiln_cli_backend_options(&a.backend, model, &opt);
    opt.max_seqs = a.dump_logits ? n_prompt : 1;
    opt.max_tokens = n_prompt;
    opt.max_seq_len = total;
    opt.n_blocks = (total + opt.block_size - 1) / opt.block_size;
    if (kiln_cli_backend_create(&a.backend, model, &opt, &be, &err)) goto fail;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= model->cfg.vocab_size) {
            kiln_errorf(&err, KILN_ERR_INVALID, "prompt id %d outside the vocabulary (%d)",
                        prompt[i], model->cfg.vocab_size);
            goto fail;
        }

    ids = malloc((size_t)total * sizeof(int32_t));
    rows = malloc((size_t)n_prompt * sizeof(int32_t));
    sps = malloc((size_t)n_prompt * sizeof *sps);
    outs = malloc((size_t)n_prompt * sizeof *outs);
    table = malloc((size_t)be->opt.n_blocks * sizeof(int32_t));
    int32_t *pos = malloc((size_t)total * sizeof(int32_t));
    if (!ids || !table || !pos || !rows || !sps || !outs) {
        free(pos);
        kiln_errorf(&err, KILN_ERR_NOMEM, "out of memory");
        goto fail;
    }
    memcpy(ids, prompt, (size_t)n_prompt * sizeof(int32_t));
    for (int i = 0; i < be->opt.n_blocks; i++) table[i] = i;
    for (int i = 0; i < total; i++) pos[i] = i;

    struct kiln_sampling sp = {.temperature = a.temperature,
                               .top_k = a.top_k,
                               .top_p = a.top_p,
                               .seed = a.seed,
                               .repetition_penalty = 1.0f};
    int n = n_prompt, generated = 0;
    double t0 = kiln_now(), t_first = 0;
    while (generated < a.max_tokens) {
        /* first step: the whole prompt; then one token at a time */
        int start = generated == 0 ? 0 : n - 1, count = n - start;
        int32_t seq_start[2] = {0, count}, kv_len = n, out_row = count - 1;
        struct kiln_batch batch = {.n_tokens = count,
                                   .tokens = ids + start,
                                   .positions = pos + start,
                                   .n_seqs = 1,
                                   .seq_start = seq_start,
                                   .kv_len = &kv_len,
                                   .block_table = table,
                                   .max_blocks = be->opt.n_blocks,
                                   .n_out = 1,
                                   .out_rows = &out_row};
        struct kiln_sample_out so;
        sp.step = (uint64_t)generated;
        bool dump = generated == 0 && a.dump_logits;
        if (dump) { /* every prompt row: logits out, then the last row's token */
            for (int i = 0; i < count; i++) rows[i] = i;
            batch.n_out = count;
            batch.out_rows = rows;
        }
        if (be->ops->forward(be, &batch, &err)) {
            free(pos);
            goto fail;
        }
        if (dump && write_logits(be, a.dump_logits, count, &err)) {
            free(pos);
            goto fail;
        }
        for (int i = 0; i < batch.n_out; i++) sps[i] = sp;
        if (be->ops->sample(be, sps, batch.n_out, outs, &err)) {
            free(pos);
            goto fail;
        }
        so = outs[batch.n_out - 1];
        if (generated == 0) t_first = kiln_now();
        ids[n++] = so.token;
        generated++;
        if (detok && !kiln_config_is_eos(&model->cfg, so.token)) { /* stream the text */
            char *text = NULL;
            size_t tl = 0;
            if (kiln_detok_push(detok, so.token, &text, &tl, &err)) {
                free(pos);
                goto fail;
            }
            fwrite(text, 1, tl, stdout);
            fflush(stdout);
            free(text);
        }
        if (!a.ignore_eos && kiln_config_is_eos(&model->cfg, so.token)) break;
    }
    double t1 = kiln_now();
    free(pos);
    if (detok) {
        char *text = NULL;
        size_t tl = 0;
        if (kiln_detok_flush(detok, &text, &tl, &err)) goto fail;
        fwrite(text, 1, tl, stdout);
        free(text);
    } else {
        for (int i = n_prompt; i < n; i++) printf("%s%d", i > n_prompt ? "," : "", ids[i]);
    }
    printf("\n");
    fprintf(stderr,
            "kiln generate: %s backend, prompt %d tokens in %.1f ms, %d tokens generated, "
            "%.2f tok/s decode\n",
            be->ops->name, n_prompt, (t_first - t0) * 1e3, generated,
            generated > 1 ? (generated - 1) / (t1 - t_first) : 0.0);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "kiln generate: %s\n", err.msg);
done:
    free(ids);
    free(table);
    free(rows);
    free(sps);
    free(outs);
    kiln_backend_free(be);
    kiln_model_free(model);
    kiln_detok_free(detok);
    kiln_tokenizer_free(tok);
    free(prompt);
    return rc;
}
