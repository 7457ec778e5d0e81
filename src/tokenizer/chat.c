#include "chat.h"

#include <stdlib.h>

struct tk_chat {
    int unused;
};

enum kiln_status tk_chat_load(struct kiln_tokenizer *tok, json_t *value, struct kiln_error *err)
{
    (void)tok;
    (void)value;
    (void)err;
    return KILN_OK;
}

void tk_chat_free(struct tk_chat *c)
{
    free(c);
}

bool kiln_tokenizer_has_chat_template(const struct kiln_tokenizer *tok)
{
    return tok->chat != NULL;
}

enum kiln_status kiln_tokenizer_apply_chat_template(const struct kiln_tokenizer *tok,
                                                    const char *messages_json,
                                                    bool add_generation_prompt,
                                                    const char *extra_json, char **out, size_t *len,
                                                    struct kiln_error *err)
{
    (void)tok;
    (void)messages_json;
    (void)add_generation_prompt;
    (void)extra_json;
    *out = NULL;
    *len = 0;
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "chat templates: renderer not built yet");
}

enum kiln_status kiln_tokenizer_set_chat_template(struct kiln_tokenizer *tok, const char *source,
                                                  struct kiln_error *err)
{
    (void)tok;
    (void)source;
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "chat templates: renderer not built yet");
}
