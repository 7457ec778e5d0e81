/* kiln serve MODEL_DIR: the OpenAI-compatible HTTP server.
 *
 * The listener comes up first (so /health answers 503 while loading); a loader thread reads
 * the model and tokenizer, creates the backend and the engine, and hands them to the server.
 * After the server returns (SIGTERM/SIGINT, or a failed load) everything is freed in reverse:
 * engine (its thread stops calling back), server, backend, tokenizer, model. */
#include <getopt.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cli.h"
#include "common.h"
#include "core/file.h"
#include "core/log.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"

struct serve_args {
    const char *model_dir;
    const char *tokenizer_dir;
    const char *chat_template;
    const char *served_name; /* --served-model-name, or NULL */
    char model_name[256];
    struct kiln_server_options srv;
    int max_batch, max_num_tokens, max_queue, max_seq_len, max_input_len, kv_blocks;
    float max_mask_ms;
    bool no_prefix_caching;
    struct kiln_cli_backend backend;
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: kiln serve MODEL_DIR [options]\n"
        "Serves MODEL_DIR (an engine from `kiln build`, a checkpoint from `kiln convert`, or a\n"
        "Hugging Face checkpoint, FP8 ModelOpt or BF16) behind an OpenAI-compatible API:\n"
        "/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics, /version,\n"
        "/tokenize, /detokenize, and a chat page at / (open http://HOST:PORT/ in a browser).\n"
        "  --host ADDR           address to listen on (default 127.0.0.1; 0.0.0.0 for all)\n"
        "  --port N              port (default 8000; 0 picks a free one, logged at start)\n"
        "  --tokenizer DIR       tokenizer.json folder (default MODEL_DIR)\n"
        "  --served-model-name NAME  the \"model\" clients send (default: MODEL_DIR's name)\n"
        "  --api-key KEY         require 'Authorization: Bearer KEY' (or env KILN_API_KEY)\n"
        "  --chat-template FILE  Jinja chat template (a file, or the template itself)\n"
        "  --max-batch-size N    sequences per engine step (default 256 CUDA, 16 CPU)\n"
        "  --max-num-tokens N    tokens per engine step (default 8192 CUDA, 2048 CPU)\n"
        "  --max-queue N         waiting requests before 429 (default 1024)\n"
        "  --max-seq-len N       prompt + completion tokens (default: the model's, at most "
        "8192)\n"
        "  --max-input-len N     prompt tokens (default: max-seq-len - 1)\n"
        "                        (serving an engine folder, its build settings are the defaults\n"
        "                        and the ceilings of the four limits above but --max-queue)\n"
        "  --kv-blocks N         KV cache blocks (default: from memory on CUDA, enough for\n"
        "                        every sequence at full length on the CPU)\n"
        "  --no-prefix-caching   do not reuse KV blocks of shared prompt prefixes\n"
        "  --max-mask-ms MS      end a structured-output request whose token masks take\n"
        "                        longer than this, 8 in a row (default 50; 0: no limit)\n"
        "  --shutdown-timeout S  on SIGTERM, let running requests finish this long (30)\n"
        "  --max-body-bytes N    larger request bodies get 413 (default 16 MiB)\n"
        "  --max-header-bytes N  larger request headers get 431 (default 16 KiB)\n"
        "  --max-n N             most choices per prompt (default 16)\n"
        "  --idle-timeout S      close keep-alive connections idle this long, and clients\n"
        "                        that stop reading a reply (default 60)\n"
        "  --header-timeout S    a request's line and headers must all arrive this long\n"
        "                        after their first byte, else 408 (default 60)\n"
        "  --no-web-ui           do not serve the chat page at / (the API "
        "only)\n" KILN_CLI_BACKEND_HELP);
}

enum {
    O_HOST = 256,
    O_PORT,
    O_TOKENIZER,
    O_NAME,
    O_KEY,
    O_TEMPLATE,
    O_BATCH,
    O_TOKENS,
    O_QUEUE,
    O_SEQ,
    O_INPUT,
    O_BLOCKS,
    O_NO_PREFIX,
    O_SHUTDOWN,
    O_BODY,
    O_HEADER,
    O_MAXN,
    O_IDLE,
    O_HEADER_TIMEOUT,
    O_NO_WEB,
    O_MASK_MS,
    O_HELP
};

static const struct option long_opts[] = {
    {"host", required_argument, 0, O_HOST},
    {"port", required_argument, 0, O_PORT},
    {"tokenizer", required_argument, 0, O_TOKENIZER},
    {"served-model-name", required_argument, 0, O_NAME},
    {"api-key", required_argument, 0, O_KEY},
    {"chat-template", required_argument, 0, O_TEMPLATE},
    {"max-batch-size", required_argument, 0, O_BATCH},
    {"max-num-tokens", required_argument, 0, O_TOKENS},
    {"max-queue", required_argument, 0, O_QUEUE},
    {"max-seq-len", required_argument, 0, O_SEQ},
    {"max-input-len", required_argument, 0, O_INPUT},
    {"kv-blocks", required_argument, 0, O_BLOCKS},
    {"no-prefix-caching", no_argument, 0, O_NO_PREFIX},
    {"shutdown-timeout", required_argument, 0, O_SHUTDOWN},
    {"max-body-bytes", required_argument, 0, O_BODY},
    {"max-header-bytes", required_argument, 0, O_HEADER},
    {"max-n", required_argument, 0, O_MAXN},
    {"idle-timeout", required_argument, 0, O_IDLE},
    {"header-timeout", required_argument, 0, O_HEADER_TIMEOUT},
    {"no-web-ui", no_argument, 0, O_NO_WEB},
    {"max-mask-ms", required_argument, 0, O_MASK_MS},
    {"help", no_argument, 0, O_HELP},
    KILN_CLI_BACKEND_OPTIONS,
    {0, 0, 0, 0},
};

static bool option(int id, const char *arg, void *ctx)
{
    struct serve_args *a = ctx;
    int n;
    float f;
    switch (id) {
    case O_HOST:
        a->srv.host = arg;
        return true;
    case O_PORT:
        return kiln_cli_int(arg, 0, 65535, &a->srv.port);
    case O_TOKENIZER:
        a->tokenizer_dir = arg;
        return true;
    case O_NAME:
        a->served_name = arg;
        return true;
    case O_KEY:
        a->srv.api_key = arg;
        return true;
    case O_TEMPLATE:
        a->chat_template = arg;
        return true;
    case O_BATCH:
        return kiln_cli_int(arg, 1, 1 << 16, &a->max_batch);
    case O_TOKENS:
        return kiln_cli_int(arg, 1, 1 << 24, &a->max_num_tokens);
    case O_QUEUE:
        return kiln_cli_int(arg, 1, 1 << 24, &a->max_queue);
    case O_SEQ:
        return kiln_cli_int(arg, 2, 1 << 24, &a->max_seq_len);
    case O_INPUT:
        return kiln_cli_int(arg, 1, 1 << 24, &a->max_input_len);
    case O_BLOCKS:
        return kiln_cli_int(arg, 1, 1 << 30, &a->kv_blocks);
    case O_NO_PREFIX:
        a->no_prefix_caching = true;
        return true;
    case O_SHUTDOWN:
        if (!kiln_cli_float(arg, 0.0f, 86400.0f, &f)) return false;
        a->srv.shutdown_timeout_s = f;
        return true;
    case O_BODY:
        if (!kiln_cli_int(arg, 64, 1 << 30, &n)) return false;
        a->srv.max_body_bytes = (size_t)n;
        return true;
    case O_HEADER:
        if (!kiln_cli_int(arg, 256, 1 << 20, &n)) return false;
        a->srv.max_header_bytes = (size_t)n;
        return true;
    case O_MAXN:
        return kiln_cli_int(arg, 1, 1024, &a->srv.max_n);
    case O_IDLE:
        return kiln_cli_int(arg, 1, 86400, &a->srv.idle_timeout_s);
    case O_HEADER_TIMEOUT:
        return kiln_cli_int(arg, 1, 86400, &a->srv.header_timeout_s);
    case O_NO_WEB:
        a->srv.web_ui = false;
        return true;
    case O_MASK_MS:
        return kiln_cli_float(arg, 0.0f, 1e6f, &a->max_mask_ms);
    }
    return false;
}

static int parse(int argc, char **argv, struct serve_args *a)
{
    static const struct kiln_cli_command cmd = {"serve", "h", long_opts, usage, option};
    memset(a, 0, sizeof *a);
    kiln_server_options_default(&a->srv);
    a->max_queue = 1024;
    a->max_mask_ms = KILN_MAX_MASK_MS;
    kiln_cli_backend_defaults(&a->backend);
    const char *env_key = getenv("KILN_API_KEY");
    if (env_key && *env_key) a->srv.api_key = env_key;
    int rc = kiln_cli_parse(&cmd, argc, argv, a, &a->backend, &a->model_dir);
    if (rc != KILN_CLI_GO_ON) return rc;
    const char *name = a->served_name;
    char copy[1024];
    if (!name) {
        /* The folder's name, so the seed's "model": "llama_3.1_8b_engine_fp8" works when
         * serving a folder of that name. */
        snprintf(copy, sizeof copy, "%s", a->model_dir);
        size_t len = strlen(copy);
        while (len > 1 && copy[len - 1] == '/') copy[--len] = 0;
        name = basename(copy);
    }
    snprintf(a->model_name, sizeof a->model_name, "%s", name);
    a->srv.model_name = a->model_name;
    return KILN_CLI_GO_ON;
}

struct loader {
    struct serve_args *a;
    struct kiln_server *srv;
    struct kiln_model *model;
    struct kiln_tokenizer *tok;
    struct kiln_backend *be;
    struct kiln_engine *engine;
};

static enum kiln_status load_chat_template(struct kiln_tokenizer *tok, const char *arg,
                                           struct kiln_error *err)
{
    char *text = NULL;
    size_t len;
    if (kiln_file_exists(arg)) {
        if (kiln_file_read(arg, 1u << 20, &text, &len, err)) return err->code;
    }
    enum kiln_status st = kiln_tokenizer_set_chat_template(tok, text ? text : arg, err);
    free(text);
    if (st) kiln_error_prefix(err, "--chat-template");
    return st;
}

static enum kiln_status load(struct loader *l, struct kiln_error *err)
{
    struct serve_args *a = l->a;
    double t0 = kiln_now();
    if (kiln_model_load(a->model_dir, &l->model, err) ||
        kiln_cli_engine_limits(l->model, &a->max_batch, &a->max_num_tokens, &a->max_seq_len,
                               &a->max_input_len, err))
        return err->code;
    const char *tdir = a->tokenizer_dir ? a->tokenizer_dir : a->model_dir;
    if (kiln_tokenizer_load(tdir, &l->tok, err)) {
        kiln_error_prefix(err, "tokenizer (%s)", tdir);
        return err->code;
    }
    if (a->chat_template && load_chat_template(l->tok, a->chat_template, err)) return err->code;

    /* An engine folder (kiln build) brings its build settings as defaults and ceilings. */
    int max_batch = a->max_batch, max_tokens = a->max_num_tokens, max_seq = a->max_seq_len,
        max_input = a->max_input_len;
    if (kiln_cli_engine_limits(l->model, &max_batch, &max_tokens, &max_seq, &max_input, err))
        return err->code;
    struct kiln_backend_options bo;
    kiln_cli_backend_options(&a->backend, l->model, &bo);
    bool cuda = a->backend.device == KILN_CLI_DEVICE_CUDA ||
                (a->backend.device == KILN_CLI_DEVICE_AUTO && kiln_cuda_available());
    if (!max_seq) {
        max_seq = l->model->cfg.max_position_embeddings;
        if (max_seq <= 0 || max_seq > 8192) max_seq = 8192;
    }
    bo.max_seqs = max_batch ? max_batch : cuda ? 256 : 16;
    bo.max_tokens = max_tokens ? max_tokens : cuda ? 8192 : 2048;
    if (bo.max_tokens < bo.max_seqs) bo.max_tokens = bo.max_seqs;
    bo.max_seq_len = max_seq;
    bo.n_blocks = a->kv_blocks;
    if (kiln_cli_backend_create(&a->backend, l->model, &bo, &l->be, err)) return err->code;

    struct kiln_engine_options eo = {.max_batch_size = bo.max_seqs,
                                     .max_num_tokens = bo.max_tokens,
                                     .max_queue = a->max_queue,
                                     .max_seq_len = max_seq,
                                     .max_input_len = max_input ? max_input : max_seq - 1,
                                     .prefix_caching = !a->no_prefix_caching,
                                     .max_mask_ms = a->max_mask_ms > 0 ? a->max_mask_ms : -1,
                                     .notify = kiln_server_notify,
                                     .notify_arg = l->srv};
    if (eo.max_input_len >= max_seq) eo.max_input_len = max_seq - 1;
    if (kiln_engine_create(l->be, l->tok, &eo, &l->engine, err)) return err->code;
    KILN_INFO("loaded %s in %.1f s: %s backend, %d KV blocks of %d, batch %d, %d tokens/step, "
              "context %d",
              a->model_dir, kiln_now() - t0, l->be->ops->name, l->be->opt.n_blocks,
              l->be->opt.block_size, bo.max_seqs, bo.max_tokens, max_seq);
    struct kiln_server_model m = {.engine = l->engine,
                                  .tok = l->tok,
                                  .max_seq_len = max_seq,
                                  .max_input_len = eo.max_input_len};
    kiln_server_ready(l->srv, &m);
    return KILN_OK;
}

static void *loader_main(void *arg)
{
    struct loader *l = arg;
    struct kiln_error err = {0};
    if (load(l, &err)) kiln_server_fail(l->srv, err.msg);
    return NULL;
}

int kiln_cmd_serve(int argc, char **argv)
{
    struct serve_args a;
    int rc = parse(argc, argv, &a);
    if (rc != KILN_CLI_GO_ON) return rc;
    if (!kiln_dir_exists(a.model_dir)) {
        fprintf(stderr, "kiln serve: %s: not a directory\n", a.model_dir);
        return 2;
    }
    struct kiln_error err = {0};
    struct kiln_server *srv = NULL;
    if (kiln_server_create(&a.srv, &srv, &err)) {
        fprintf(stderr, "kiln serve: %s\n", err.msg);
        return 1;
    }
    struct loader l = {.a = &a, .srv = srv};
    pthread_t thread;
    if (pthread_create(&thread, NULL, loader_main, &l)) {
        fprintf(stderr, "kiln serve: cannot start the loader thread\n");
        kiln_server_free(srv);
        return 1;
    }
    rc = kiln_server_run(srv);
    pthread_join(thread, NULL);
    kiln_engine_free(l.engine);
    kiln_server_free(srv);
    kiln_backend_free(l.be);
    kiln_tokenizer_free(l.tok);
    kiln_model_free(l.model);
    return rc;
}
