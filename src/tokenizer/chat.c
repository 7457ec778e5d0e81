/* Chat templates of a tokenizer: compiled once at load (a template kiln cannot render is a load
 * error), rendered per request with the variables transformers' apply_chat_template passes:
 * messages, tools, documents, add_generation_prompt, the special-token strings, then the
 * caller's extra variables. */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

#include "jinja.h"

struct tk_chat {
    size_t n;
    char **names;            /* [n] "default", "tool_use", ... */
    struct kiln_jinja **tpl; /* [n] */
};

void tk_chat_free(struct tk_chat *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->names[i]);
        kiln_jinja_free(c->tpl[i]);
    }
    free(c->names);
    free(c->tpl);
    free(c);
}

static enum kiln_status chat_add(struct tk_chat *c, const char *name, const char *src, size_t len,
                                 struct kiln_error *err)
{
    char **nn = realloc(c->names, (c->n + 1) * sizeof *nn);
    if (nn) c->names = nn;
    struct kiln_jinja **nt = realloc(c->tpl, (c->n + 1) * sizeof *nt);
    if (nt) c->tpl = nt;
    char *nm = strdup(name);
    if (!nn || !nt || !nm) {
        free(nm);
        return kiln_errorf(err, KILN_ERR_NOMEM, "chat template: out of memory");
    }
    enum kiln_status st = kiln_jinja_compile(src, len, &c->tpl[c->n], err);
    if (st) {
        free(nm);
        return kiln_error_prefix(err, "chat template \"%s\"", name);
    }
    c->names[c->n++] = nm;
    return KILN_OK;
}

enum kiln_status tk_chat_load(struct kiln_tokenizer *tok, json_t *value, struct kiln_error *err)
{
    struct tk_chat *c = calloc(1, sizeof *c);
    if (!c) return kiln_errorf(err, KILN_ERR_NOMEM, "chat template: out of memory");
    enum kiln_status st = KILN_OK;
    if (json_is_string(value)) {
        st = chat_add(c, "default", json_string_value(value), json_string_length(value), err);
    } else if (json_is_array(value)) {
        size_t i;
        json_t *v;
        json_array_foreach(value, i, v)
        {
            json_t *name = json_object_get(v, "name"), *tpl = json_object_get(v, "template");
            if (!json_is_string(name) || !json_is_string(tpl)) {
                st = kiln_errorf(err, KILN_ERR_FORMAT,
                                 "chat_template[%zu]: expected {\"name\": ..., \"template\": ...}",
                                 i);
                break;
            }
            if ((st = chat_add(c, json_string_value(name), json_string_value(tpl),
                               json_string_length(tpl), err)))
                break;
        }
        if (!st && c->n == 0) st = kiln_errorf(err, KILN_ERR_FORMAT, "chat_template: empty list");
    } else {
        st = kiln_errorf(err, KILN_ERR_FORMAT, "chat_template: expected a string or a list");
    }
    if (st) {
        tk_chat_free(c);
        return st;
    }
    tk_chat_free(tok->chat);
    tok->chat = c;
    return KILN_OK;
}

bool kiln_tokenizer_has_chat_template(const struct kiln_tokenizer *tok)
{
    return tok->chat != NULL;
}

enum kiln_status kiln_tokenizer_set_chat_template(struct kiln_tokenizer *tok, const char *source,
                                                  struct kiln_error *err)
{
    json_t *s = json_stringn(source, strlen(source));
    if (!s)
        return kiln_errorf(err, KILN_ERR_FORMAT, "chat template: the source is not valid UTF-8");
    enum kiln_status st = tk_chat_load(tok, s, err);
    json_decref(s);
    return st;
}

static const struct kiln_jinja *pick(const struct tk_chat *c, bool has_tools)
{
    const struct kiln_jinja *dflt = c->tpl[0];
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->names[i], "default")) dflt = c->tpl[i];
    if (has_tools)
        for (size_t i = 0; i < c->n; i++)
            if (!strcmp(c->names[i], "tool_use")) return c->tpl[i];
    return dflt;
}

static void set_token(json_t *vars, const char *key, const char *value)
{
    if (value) json_object_set_new(vars, key, json_string(value));
}

enum kiln_status kiln_tokenizer_apply_chat_template(const struct kiln_tokenizer *tok,
                                                    const char *messages_json,
                                                    bool add_generation_prompt,
                                                    const char *extra_json, char **out, size_t *len,
                                                    struct kiln_error *err)
{
    *out = NULL;
    *len = 0;
    if (!tok->chat)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "this model has no chat template (tokenizer_config.json has no "
                           "chat_template; pass one with --chat-template)");
    json_error_t je;
    json_t *msgs = json_loads(messages_json ? messages_json : "", JSON_ALLOW_NUL, &je);
    if (!json_is_array(msgs)) {
        json_decref(msgs);
        return kiln_errorf(err, KILN_ERR_INVALID, "messages: expected a JSON array%s%s",
                           msgs ? "" : ": ", msgs ? "" : je.text);
    }
    if (json_array_size(msgs) == 0) {
        json_decref(msgs);
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "Cannot apply chat template to an empty conversation. Provide at least "
                           "one message.");
    }
    json_t *extra = NULL;
    if (extra_json && *extra_json) {
        extra = json_loads(extra_json, JSON_ALLOW_NUL, &je);
        if (!json_is_object(extra)) {
            json_decref(msgs);
            json_decref(extra);
            return kiln_errorf(err, KILN_ERR_INVALID,
                               "chat template variables: expected a JSON "
                               "object");
        }
    }
    json_t *vars = json_object();
    json_t *tools = extra ? json_object_get(extra, "tools") : NULL;
    json_t *docs = extra ? json_object_get(extra, "documents") : NULL;
    json_object_set_new(vars, "tools", tools ? json_incref(tools) : json_null());
    json_object_set_new(vars, "documents", docs ? json_incref(docs) : json_null());
    set_token(vars, "bos_token", tok->bos_token);
    set_token(vars, "eos_token", tok->eos_token);
    set_token(vars, "unk_token", tok->unk_token);
    set_token(vars, "pad_token", tok->pad_token);
    if (extra) json_object_update(vars, extra);
    json_object_set(vars, "messages", msgs);
    json_object_set_new(vars, "add_generation_prompt", json_boolean(add_generation_prompt));
    bool has_tools = tools && !json_is_null(tools);
    enum kiln_status st = kiln_jinja_render(pick(tok->chat, has_tools), vars, out, len, err);
    json_decref(vars);
    json_decref(msgs);
    json_decref(extra);
    return st;
}
