/* Structured-output parameters of a request body -> struct kiln_api_constraint: OpenAI's
 * `response_format` and vLLM's `guided_json` / `guided_regex` / `guided_choice` /
 * `guided_grammar` and `structured_outputs`. At most one form per request; every rejection names
 * the field. This only parses and reshapes: whether a schema, regex or grammar is supported is
 * the constraint engine's answer (src/grammar/, compiled by the server), never decided here.
 * Nothing here trusts the body (fuzzed with the rest of kiln_api_parse). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "core/json.h"

/* A 400 naming param. */
#define bad(err, param, ...) kiln_api_errorf(err, 400, NULL, param, __VA_ARGS__)

static bool given(const json_t *v)
{
    return v && !json_is_null(v);
}

/* Sets the constraint (kind, a copy of text[0..len)) unless one is set already, which is the
 * "more than one form" error. */
static enum kiln_status set(struct kiln_api_constraint *c, enum kiln_constraint_kind kind,
                            const char *text, size_t len, const char *param,
                            struct kiln_api_error *err)
{
    if (c->kind != KILN_CONSTRAINT_NONE)
        return bad(err, param,
                   "'%s' and '%s' both constrain the output; give at most one of "
                   "response_format (json_object, json_schema), guided_json, guided_regex, "
                   "guided_choice, guided_grammar and structured_outputs",
                   c->param, param);
    char *copy = malloc(len + 1);
    if (!copy) return kiln_api_errorf(err, 500, NULL, NULL, "out of memory");
    if (len) memcpy(copy, text, len);
    copy[len] = 0;
    c->kind = kind;
    c->text = copy;
    c->len = len;
    c->param = param;
    return KILN_OK;
}

/* A JSON value as compact text, then set(). */
static enum kiln_status set_json(struct kiln_api_constraint *c, enum kiln_constraint_kind kind,
                                 const json_t *v, const char *param, struct kiln_api_error *err)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) return kiln_api_errorf(err, 500, NULL, NULL, "out of memory");
    enum kiln_status st = set(c, kind, text, strlen(text), param, err);
    free(text);
    return st;
}

/* A JSON Schema given as an object, a boolean schema, or a string holding one (vLLM accepts
 * guided_json as a string). */
static enum kiln_status schema(struct kiln_api_constraint *c, const json_t *v, const char *param,
                               struct kiln_api_error *err)
{
    if (json_is_object(v) || json_is_boolean(v))
        return set_json(c, KILN_CONSTRAINT_JSON_SCHEMA, v, param, err);
    if (!json_is_string(v))
        return bad(err, param, "'%s' must be a JSON Schema (an object or a string), got %s", param,
                   kiln_json_type_name(v));
    json_error_t je;
    json_t *doc = json_loadb(json_string_value(v), json_string_length(v), JSON_DECODE_ANY, &je);
    if (!doc)
        return bad(err, param, "'%s' is not valid JSON: %s (line %d, column %d)", param, je.text,
                   je.line, je.column);
    enum kiln_status st = json_is_object(doc) || json_is_boolean(doc)
                              ? set_json(c, KILN_CONSTRAINT_JSON_SCHEMA, doc, param, err)
                              : bad(err, param, "'%s' must hold a JSON Schema (an object), got %s",
                                    param, kiln_json_type_name(doc));
    json_decref(doc);
    return st;
}

static enum kiln_status text(struct kiln_api_constraint *c, enum kiln_constraint_kind kind,
                             const json_t *v, const char *param, struct kiln_api_error *err)
{
    if (!json_is_string(v))
        return bad(err, param, "'%s' must be a string, got %s", param, kiln_json_type_name(v));
    if (!json_string_length(v)) return bad(err, param, "'%s' must not be empty", param);
    return set(c, kind, json_string_value(v), json_string_length(v), param, err);
}

/* A non-empty list of strings, passed on as its JSON text. */
static enum kiln_status choice(struct kiln_api_constraint *c, const json_t *v, const char *param,
                               struct kiln_api_error *err)
{
    if (!json_is_array(v) || !json_array_size(v))
        return bad(err, param, "'%s' must be a non-empty list of strings", param);
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e))
            return bad(err, param, "'%s' must be a list of strings, got %s at index %zu", param,
                       kiln_json_type_name(e), i);
    }
    return set_json(c, KILN_CONSTRAINT_CHOICE, v, param, err);
}

static enum kiln_status optional_type(const json_t *o, const char *key, json_type type,
                                      const char *param, struct kiln_api_error *err)
{
    const json_t *v = json_object_get(o, key);
    if (!given(v)) return KILN_OK;
    bool ok = type == JSON_TRUE ? json_is_boolean(v) : json_typeof(v) == type;
    if (!ok)
        return bad(err, param, "'%s' must be %s, got %s", param,
                   type == JSON_TRUE ? "a boolean" : "a string", kiln_json_type_name(v));
    return KILN_OK;
}

static enum kiln_status response_format(struct kiln_api_constraint *c, const json_t *v,
                                        struct kiln_api_error *err)
{
    if (!json_is_object(v))
        return bad(err, "response_format", "'response_format' must be an object, got %s",
                   kiln_json_type_name(v));
    const json_t *type = json_object_get(v, "type");
    if (!json_is_string(type))
        return bad(err, "response_format.type",
                   "'response_format.type' must be one of \"text\", \"json_object\", "
                   "\"json_schema\"");
    const char *t = json_string_value(type);
    if (!strcmp(t, "text")) return KILN_OK;
    if (!strcmp(t, "json_object"))
        return set(c, KILN_CONSTRAINT_JSON_OBJECT, "", 0, "response_format", err);
    if (strcmp(t, "json_schema"))
        return bad(err, "response_format.type",
                   "'response_format.type' \"%.64s\" is not supported; use \"text\", "
                   "\"json_object\" or \"json_schema\"",
                   t);
    const json_t *js = json_object_get(v, "json_schema");
    if (!json_is_object(js))
        return bad(err, "response_format.json_schema",
                   "'response_format.json_schema' must be an object "
                   "{\"name\", \"schema\", \"strict\", \"description\"} with type \"json_schema\"");
    enum kiln_status st =
        optional_type(js, "name", JSON_STRING, "response_format.json_schema.name", err);
    if (!st)
        st = optional_type(js, "description", JSON_STRING,
                           "response_format.json_schema.description", err);
    if (!st) st = optional_type(js, "strict", JSON_TRUE, "response_format.json_schema.strict", err);
    if (st) return st;
    const json_t *s = json_object_get(js, "schema");
    /* No schema: any JSON value (OpenAI makes the schema optional). */
    if (!given(s)) return set(c, KILN_CONSTRAINT_JSON_SCHEMA, "{}", 2, "response_format", err);
    if (!json_is_object(s) && !json_is_boolean(s))
        return bad(err, "response_format.json_schema.schema",
                   "'response_format.json_schema.schema' must be a JSON Schema object, got %s",
                   kiln_json_type_name(s));
    return set_json(c, KILN_CONSTRAINT_JSON_SCHEMA, s, "response_format.json_schema.schema", err);
}

/* vLLM's structured_outputs object: one of json, regex, choice, grammar, json_object, plus
 * flags that change nothing here. */
static enum kiln_status structured_outputs(struct kiln_api_constraint *c, const json_t *v,
                                           struct kiln_api_error *err)
{
    if (!json_is_object(v))
        return bad(err, "structured_outputs", "'structured_outputs' must be an object, got %s",
                   kiln_json_type_name(v));
    const char *key;
    const json_t *f;
    json_object_foreach((json_t *)v, key, f)
    {
        if (!given(f)) continue;
        enum kiln_status st = KILN_OK;
        if (!strcmp(key, "json")) {
            st = schema(c, f, "structured_outputs.json", err);
        } else if (!strcmp(key, "regex")) {
            st = text(c, KILN_CONSTRAINT_REGEX, f, "structured_outputs.regex", err);
        } else if (!strcmp(key, "choice")) {
            st = choice(c, f, "structured_outputs.choice", err);
        } else if (!strcmp(key, "grammar")) {
            st = text(c, KILN_CONSTRAINT_GRAMMAR, f, "structured_outputs.grammar", err);
        } else if (!strcmp(key, "json_object")) {
            if (!json_is_boolean(f))
                return bad(err, "structured_outputs.json_object",
                           "'structured_outputs.json_object' must be a boolean, got %s",
                           kiln_json_type_name(f));
            if (json_is_true(f))
                st = set(c, KILN_CONSTRAINT_JSON_OBJECT, "", 0, "structured_outputs.json_object",
                         err);
        } else if (!strcmp(key, "disable_fallback") || !strcmp(key, "disable_any_whitespace")) {
            /* kiln has one engine (nothing to fall back to) and emits compact JSON anyway */
            if (!json_is_boolean(f))
                return bad(err, "structured_outputs", "'structured_outputs.%s' must be a boolean",
                           key);
        } else {
            return bad(err, "structured_outputs",
                       "'structured_outputs.%.64s' is not supported; kiln takes json, regex, "
                       "choice, grammar and json_object",
                       key);
        }
        if (st) return st;
    }
    return KILN_OK;
}

/* kiln's json_whitespace: "compact" (the default) or "indent" (bounded indentation, see
 * KILN_GRAMMAR_WS_INDENT) for the JSON a constraint produces: a JSON constraint, a grammar's
 * %json rules, or the calls of tools; with a regex, a choice or nothing to apply to, a 400. */
static enum kiln_status whitespace(const json_t *root, struct kiln_api_constraint *c,
                                   const json_t *v, struct kiln_api_error *err)
{
    const char *s = json_string_value(v);
    if (s && !strcmp(s, "compact")) {
        c->ws = KILN_GRAMMAR_WS_COMPACT;
    } else if (s && !strcmp(s, "indent")) {
        c->ws = KILN_GRAMMAR_WS_INDENT;
    } else {
        return bad(err, "json_whitespace", "'json_whitespace' must be \"compact\" or \"indent\"");
    }
    if (c->kind == KILN_CONSTRAINT_REGEX || c->kind == KILN_CONSTRAINT_CHOICE)
        return bad(err, "json_whitespace",
                   "'json_whitespace' applies to JSON output; '%s' constrains to a %s", c->param,
                   c->kind == KILN_CONSTRAINT_REGEX ? "regex" : "choice");
    if (c->kind == KILN_CONSTRAINT_NONE && !given(json_object_get(root, "tools")) &&
        !given(json_object_get(root, "functions")))
        return bad(err, "json_whitespace",
                   "'json_whitespace' needs JSON output to apply to: response_format "
                   "(json_object or json_schema), guided_json, structured_outputs.json or tools");
    return KILN_OK;
}

enum kiln_status kiln_api_parse_constraint(const json_t *root, struct kiln_api_constraint *c,
                                           struct kiln_api_error *err)
{
    *c = (struct kiln_api_constraint){.kind = KILN_CONSTRAINT_NONE};
    const json_t *v;
    enum kiln_status st = KILN_OK;
    if (given(v = json_object_get(root, "response_format"))) st = response_format(c, v, err);
    if (!st && given(v = json_object_get(root, "guided_json")))
        st = schema(c, v, "guided_json", err);
    if (!st && given(v = json_object_get(root, "guided_regex")))
        st = text(c, KILN_CONSTRAINT_REGEX, v, "guided_regex", err);
    if (!st && given(v = json_object_get(root, "guided_choice")))
        st = choice(c, v, "guided_choice", err);
    if (!st && given(v = json_object_get(root, "guided_grammar")))
        st = text(c, KILN_CONSTRAINT_GRAMMAR, v, "guided_grammar", err);
    if (!st && given(v = json_object_get(root, "structured_outputs")))
        st = structured_outputs(c, v, err);
    if (!st && given(v = json_object_get(root, "guided_whitespace_pattern")))
        st = bad(err, "guided_whitespace_pattern",
                 "'guided_whitespace_pattern' is not supported (JSON output is compact; kiln's "
                 "'json_whitespace': \"indent\" gives bounded indentation)");
    if (!st && given(v = json_object_get(root, "json_whitespace")))
        st = whitespace(root, c, v, err);
    if (!st && given(v = json_object_get(root, "guided_decoding_backend")) && !json_is_string(v))
        st = bad(err, "guided_decoding_backend", "'guided_decoding_backend' must be a string");
    if (st) kiln_api_constraint_free(c);
    return st;
}

void kiln_api_constraint_free(struct kiln_api_constraint *c)
{
    free(c->text);
    *c = (struct kiln_api_constraint){.kind = KILN_CONSTRAINT_NONE};
}
