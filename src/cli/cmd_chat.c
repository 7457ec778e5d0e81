/* kiln chat MODEL: a conversation on the terminal. Each line on stdin is a user message; the
 * model's chat template renders the whole conversation, the engine generates the reply, and its
 * text streams to stdout as it is decoded. End with Ctrl-D. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "cli.h"
#include "common.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

struct chat_args {
    const char *model_dir, *tokenizer_dir, *system;
    int max_tokens, max_seq_len;
    float temperature, top_p;
    struct kiln_cli_backend backend;
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: kiln chat MODEL [options]      (one user message per line; Ctrl-D ends)\n"
        "  --system TEXT         a system message first\n"
        "  --max-tokens N        longest reply (default 512)\n"
        "  --temperature T       0 = greedy (default: the model's generation config, "
        "else 0.6)\n"
        "  --top-p P             (default: the model's generation config, else 0.9)\n"
        "  --tokenizer DIR       tokenizer folder (default: the model folder)\n"
        "  --max-seq-len N       conversation length limit (default 4096)\n" KILN_CLI_BACKEND_HELP);
}

/* Renders the conversation and encodes it (the template writes BOS itself). */
static enum kiln_status render(struct kiln_tokenizer *tok, json_t *messages, int32_t **ids,
                               size_t *n, struct kiln_error *err)
{
    char *js = json_dumps(messages, JSON_COMPACT);
    if (!js) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    char *text = NULL;
    size_t len = 0;
    enum kiln_status st = kiln_tokenizer_apply_chat_template(tok, js, true, NULL, &text, &len, err);
    free(js);
    if (!st) st = kiln_tokenizer_encode(tok, text, len, false, ids, n, err);
    free(text);
    return st;
}

/* Runs one reply, streaming its text; returns it (malloc'ed) for the conversation. */
static enum kiln_status reply(struct kiln_engine *e, const struct chat_args *a, const int32_t *ids,
                              size_t n, char **out, struct kiln_error *err)
{
    struct kiln_request q;
    kiln_request_defaults(&q);
    q.prompt = ids;
    q.n_prompt = (int)n;
    q.max_tokens = a->max_tokens;
    q.temperature = a->temperature;
    q.top_p = a->top_p;
    q.detokenize = true;
    uint64_t id;
    enum kiln_status st = kiln_engine_submit(e, &q, &id, err);
    if (st) return st;
    size_t cap = 256, len = 0;
    char *text = malloc(cap);
    if (!text) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    text[0] = 0;
    for (bool done = false; !done;) {
        struct kiln_event ev[16];
        size_t got = kiln_engine_wait(e, ev, 16, 1.0);
        for (size_t i = 0; i < got; i++) {
            if (ev[i].text && ev[i].text_len) {
                fwrite(ev[i].text, 1, ev[i].text_len, stdout);
                fflush(stdout);
                if (len + ev[i].text_len + 1 > cap) {
                    while (len + ev[i].text_len + 1 > cap) cap *= 2;
                    char *nt = realloc(text, cap);
                    if (!nt) {
                        free(text);
                        return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
                    }
                    text = nt;
                }
                memcpy(text + len, ev[i].text, ev[i].text_len);
                len += ev[i].text_len;
                text[len] = 0;
            }
            if (ev[i].finish == KILN_FINISH_ERROR) {
                st = kiln_errorf(err, KILN_ERR_INTERNAL, "%s", ev[i].error);
                done = true;
            } else if (ev[i].finish != KILN_FINISH_NONE) {
                done = true;
            }
            kiln_event_release(&ev[i]);
        }
    }
    printf("\n");
    if (st)
        free(text);
    else
        *out = text;
    return st;
}

enum { O_SYSTEM = 256, O_MAX, O_TEMP, O_TOPP, O_TOK, O_MSL, O_HELP };

static const struct option long_opts[] = {
    {"system", required_argument, 0, O_SYSTEM},
    {"max-tokens", required_argument, 0, O_MAX},
    {"temperature", required_argument, 0, O_TEMP},
    {"top-p", required_argument, 0, O_TOPP},
    {"tokenizer", required_argument, 0, O_TOK},
    {"max-seq-len", required_argument, 0, O_MSL},
    {"help", no_argument, 0, O_HELP},
    KILN_CLI_BACKEND_OPTIONS,
    {0, 0, 0, 0},
};

static bool option(int id, const char *arg, void *ctx)
{
    struct chat_args *a = ctx;
    switch (id) {
    case O_SYSTEM:
        a->system = arg;
        return true;
    case O_MAX:
        return kiln_cli_int(arg, 1, 1 << 20, &a->max_tokens);
    case O_TEMP:
        return kiln_cli_float(arg, 0.0f, 100.0f, &a->temperature);
    case O_TOPP:
        return kiln_cli_float(arg, 1e-6f, 1.0f, &a->top_p);
    case O_TOK:
        a->tokenizer_dir = arg;
        return true;
    case O_MSL:
        return kiln_cli_int(arg, 16, 1 << 22, &a->max_seq_len);
    }
    return false;
}

int kiln_cmd_chat(int argc, char **argv)
{
    static const struct kiln_cli_command cmd = {"chat", "", long_opts, usage, option};
    struct chat_args a = {.max_tokens = 512, .max_seq_len = 4096, .temperature = -1, .top_p = -1};
    kiln_cli_backend_defaults(&a.backend);
    int prc = kiln_cli_parse(&cmd, argc, argv, &a, &a.backend, &a.model_dir);
    if (prc != KILN_CLI_GO_ON) return prc;

    struct kiln_error err = {0};
    struct kiln_model *m = NULL;
    struct kiln_tokenizer *tok = NULL;
    struct kiln_backend *be = NULL;
    struct kiln_engine *e = NULL;
    json_t *messages = json_array();
    int rc = 1;
    if (!messages) goto fail;
    if (kiln_model_load(a.model_dir, &m, &err)) goto fail;
    if (kiln_tokenizer_load(a.tokenizer_dir ? a.tokenizer_dir : a.model_dir, &tok, &err)) goto fail;
    if (!kiln_tokenizer_has_chat_template(tok)) {
        kiln_errorf(&err, KILN_ERR_UNSUPPORTED,
                    "%s has no chat template: use kiln generate, or a tokenizer folder with one",
                    a.tokenizer_dir ? a.tokenizer_dir : a.model_dir);
        goto fail;
    }
    if (a.temperature < 0)
        a.temperature = m->cfg.gen_temperature >= 0 ? m->cfg.gen_temperature : 0.6f;
    if (a.top_p < 0) a.top_p = m->cfg.gen_top_p > 0 ? m->cfg.gen_top_p : 0.9f;
    struct kiln_backend_options opt;
    kiln_cli_backend_options(&a.backend, m, &opt);
    opt.max_seqs = 1;
    opt.max_seq_len = a.max_seq_len;
    opt.max_tokens = a.max_seq_len < 2048 ? a.max_seq_len : 2048;
    opt.n_blocks = (a.max_seq_len + opt.block_size - 1) / opt.block_size + 1;
    if (kiln_cli_backend_create(&a.backend, m, &opt, &be, &err)) goto fail;
    struct kiln_engine_options eo = {.prefix_caching = true};
    if (kiln_engine_create(be, tok, &eo, &e, &err)) goto fail;
    if (a.system)
        json_array_append_new(messages,
                              json_pack("{s:s,s:s}", "role", "system", "content", a.system));

    bool tty = isatty(0);
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        if (tty) fprintf(stderr, "> ");
        ssize_t got = getline(&line, &cap, stdin);
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (got == 0) continue;
        json_array_append_new(messages, json_pack("{s:s,s:s}", "role", "user", "content", line));
        int32_t *ids = NULL;
        size_t n = 0;
        char *answer = NULL;
        if (render(tok, messages, &ids, &n, &err) || reply(e, &a, ids, n, &answer, &err)) {
            free(ids);
            free(line);
            goto fail;
        }
        free(ids);
        json_array_append_new(messages,
                              json_pack("{s:s,s:s}", "role", "assistant", "content", answer));
        free(answer);
    }
    free(line);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "kiln chat: %s\n", err.msg[0] ? err.msg : "out of memory");
done:
    kiln_engine_free(e);
    kiln_backend_free(be);
    kiln_tokenizer_free(tok);
    kiln_model_free(m);
    json_decref(messages);
    return rc;
}
