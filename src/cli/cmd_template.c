/* kiln template DIR: {"messages": [...], "add_generation_prompt": true, ...} on stdin -> the
 * rendered chat prompt on stdout, exactly (no newline added). Keys other than messages and
 * add_generation_prompt (tools, documents, date_string, enable_thinking, ...) become template
 * variables. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "core/file.h"
#include "tokenizer/tokenizer.h"

static const char usage_text[] =
    "usage: kiln template DIR [--chat-template FILE]\n"
    "  reads {\"messages\": [...], \"add_generation_prompt\": true, ...} on stdin and prints\n"
    "  the prompt the model's chat template renders (other keys become template variables)\n"
    "  --chat-template FILE  use this Jinja template instead of the model's\n";

static void usage(FILE *f)
{
    fputs(usage_text, f);
}

static const struct option opts[] = {
    {"chat-template", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};

static bool option(int id, const char *arg, void *ctx)
{
    if (id != 't') return false;
    *(const char **)ctx = arg;
    return true;
}

int kiln_cmd_template(int argc, char **argv)
{
    static const struct kiln_cli_command cmd = {"template", "h", opts, usage, option};
    const char *tpl_path = NULL, *dir;
    int prc = kiln_cli_parse(&cmd, argc, argv, &tpl_path, NULL, &dir);
    if (prc != KILN_CLI_GO_ON) return prc;
    struct kiln_tokenizer *tok;
    struct kiln_error err = {0};
    if (kiln_tokenizer_load(dir, &tok, &err)) {
        fprintf(stderr, "kiln template: %s\n", err.msg);
        return 1;
    }
    int rc = 1;
    char *src = NULL, *msgs = NULL, *extra = NULL, *out = NULL;
    json_t *in = NULL;
    if (tpl_path) {
        size_t n;
        if (kiln_file_read(tpl_path, 16u << 20, &src, &n, &err) ||
            kiln_tokenizer_set_chat_template(tok, src, &err)) {
            fprintf(stderr, "kiln template: %s\n", err.msg);
            goto done;
        }
    }
    if (!kiln_tokenizer_has_chat_template(tok)) {
        fprintf(stderr, "kiln template: %s has no chat template (pass --chat-template FILE)\n",
                dir);
        goto done;
    }
    json_error_t je;
    in = json_loadf(stdin, JSON_ALLOW_NUL, &je);
    if (!json_is_object(in) || !json_is_array(json_object_get(in, "messages"))) {
        fprintf(stderr, "kiln template: stdin: expected {\"messages\": [...]}%s%s\n",
                in ? "" : ": ", in ? "" : je.text);
        rc = 2;
        goto done;
    }
    json_t *agp = json_object_get(in, "add_generation_prompt");
    bool add_gen = json_is_true(agp);
    msgs = json_dumps(json_object_get(in, "messages"), JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    json_object_del(in, "messages");
    json_object_del(in, "add_generation_prompt");
    extra = json_dumps(in, JSON_PRESERVE_ORDER);
    size_t len;
    if (!msgs || !extra) {
        fprintf(stderr, "kiln template: out of memory\n");
        goto done;
    }
    if (kiln_tokenizer_apply_chat_template(tok, msgs, add_gen, extra, &out, &len, &err)) {
        fprintf(stderr, "kiln template: %s\n", err.msg);
        goto done;
    }
    fwrite(out, 1, len, stdout);
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    free(out);
    free(msgs);
    free(extra);
    free(src);
    json_decref(in);
    kiln_tokenizer_free(tok);
    return rc;
}
