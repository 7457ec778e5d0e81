/* A small Jinja2 interpreter for chat templates: the subset real Hugging Face templates use,
 * rendering byte-identical to jinja2 as transformers configures it (ImmutableSandboxedEnvironment,
 * trim_blocks, lstrip_blocks, loopcontrols, its own tojson). Compiling checks everything that
 * can be checked without data (syntax, every filter, test, statement and global function name),
 * so a template kiln cannot render fails at load, not at request time. */
#ifndef KILN_TOKENIZER_JINJA_H
#define KILN_TOKENIZER_JINJA_H

#include <jansson.h>
#include <stddef.h>

#include "core/error.h"

struct kiln_jinja;

enum kiln_status kiln_jinja_compile(const char *src, size_t len, struct kiln_jinja **out,
                                    struct kiln_error *err);
void kiln_jinja_free(struct kiln_jinja *t);
/* vars: a JSON object of template variables (messages, tools, add_generation_prompt, ...).
 * raise_exception("msg") in the template fails with KILN_ERR_INVALID and that message; other
 * run-time errors (undefined attribute, wrong types) are KILN_ERR_INVALID too. */
enum kiln_status kiln_jinja_render(const struct kiln_jinja *t, json_t *vars, char **out,
                                   size_t *len, struct kiln_error *err);

#endif
