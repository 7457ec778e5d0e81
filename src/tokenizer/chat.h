/* Chat templates inside the tokenizer (not a public header): loading from the
 * tokenizer_config.json "chat_template" value (a string, or a list of {name, template}). */
#ifndef KILN_TOKENIZER_CHAT_H
#define KILN_TOKENIZER_CHAT_H

#include <jansson.h>

#include "internal.h"

enum kiln_status tk_chat_load(struct kiln_tokenizer *tok, json_t *value, struct kiln_error *err);

#endif
