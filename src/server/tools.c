/* Tool calling: request validation, template variables, the call constraint and the output
 * parser (see tools.h). */
#include "tools.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"

static char *realloc_or_free(char *p, size_t n)
{
    char *q = realloc(p, n);
    if (!q) free(p);
    return q;
}

static enum kiln_status nomem(struct kiln_api_error *err)
{
    return kiln_api_errorf(err, 500, NULL, NULL, "out of memory");
}

/* OpenAI's rule for function names: 1-64 of [a-zA-Z0-9_-]. */
static bool valid_name(const char *s)
{
    size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");
    return n && n <= 64 && !s[n];
}

/* One function definition {name, description?, parameters?, strict?} -> a copy. */
static enum kiln_status check_function(const json_t *f, const char *field, const char *param,
                                       json_t **out, struct kiln_api_error *err)
{
    if (!json_is_object(f))
        return kiln_api_errorf(err, 400, NULL, field, "'%s' must be an object, got %s", param,
                               f ? kiln_json_type_name(f) : "nothing");
    const json_t *name = json_object_get(f, "name");
    if (!json_is_string(name) || !valid_name(json_string_value(name)))
        return kiln_api_errorf(err, 400, NULL, field,
                               "'%s.name' must be a string of 1-64 letters, digits, '_' or '-'",
                               param);
    const json_t *d = json_object_get(f, "description");
    if (d && !json_is_null(d) && !json_is_string(d))
        return kiln_api_errorf(err, 400, NULL, field, "'%s.description' must be a string", param);
    const json_t *p = json_object_get(f, "parameters");
    if (p && !json_is_null(p) && !json_is_object(p))
        return kiln_api_errorf(err, 400, NULL, field,
                               "'%s.parameters' must be a JSON Schema object, got %s", param,
                               kiln_json_type_name(p));
    const json_t *strict = json_object_get(f, "strict");
    if (strict && !json_is_null(strict) && !json_is_boolean(strict))
        return kiln_api_errorf(err, 400, NULL, field, "'%s.strict' must be a boolean", param);
    json_t *copy = json_object();
    if (!copy) return nomem(err);
    static const char *const keys[] = {"name", "description", "parameters", "strict"};
    for (size_t i = 0; i < 4; i++) {
        json_t *v = json_object_get(f, keys[i]);
        if (v && !json_is_null(v)) json_object_set(copy, keys[i], v);
    }
    *out = copy;
    return KILN_OK;
}

enum kiln_status kiln_tools_normalize(const json_t *tools, bool flat, const char *param,
                                      json_t **out, struct kiln_api_error *err)
{
    *out = NULL;
    if (!json_is_array(tools))
        return kiln_api_errorf(err, 400, NULL, param, "'%s' must be an array, got %s", param,
                               kiln_json_type_name(tools));
    if (json_array_size(tools) > 128)
        return kiln_api_errorf(err, 400, NULL, param, "At most 128 tools, got %zu",
                               json_array_size(tools));
    json_t *norm = json_array();
    if (!norm) return nomem(err);
    size_t i;
    const json_t *t;
    char where[64];
    json_array_foreach(tools, i, t)
    {
        snprintf(where, sizeof where, "%s[%zu]", param, i);
        const json_t *type = json_object_get(t, "type");
        if (!json_is_object(t) || !json_is_string(type) ||
            strcmp(json_string_value(type), "function")) {
            json_decref(norm);
            return kiln_api_errorf(err, 400, NULL, param,
                                   "'%s' must be {\"type\": \"function\", ...}: only function "
                                   "tools are supported",
                                   where);
        }
        json_t *fn = NULL;
        if (!flat) snprintf(where, sizeof where, "%s[%zu].function", param, i);
        if (check_function(flat ? t : json_object_get(t, "function"), param, where, &fn, err)) {
            json_decref(norm);
            return KILN_ERR_INVALID;
        }
        /* names are unique: a call names its tool */
        size_t j;
        const json_t *prev;
        json_array_foreach(norm, j, prev)
        {
            if (json_equal(json_object_get(json_object_get(prev, "function"), "name"),
                           json_object_get(fn, "name"))) {
                json_decref(fn);
                json_decref(norm);
                return kiln_api_errorf(
                    err, 400, NULL, param, "'%s': duplicate function name '%s'", param,
                    json_string_value(json_object_get(json_object_get(prev, "function"), "name")));
            }
        }
        if (json_array_append_new(norm,
                                  json_pack("{s:s,s:o}", "type", "function", "function", fn))) {
            json_decref(norm);
            return nomem(err);
        }
    }
    *out = norm;
    return KILN_OK;
}

static bool has_tool(const json_t *tools, const char *name)
{
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t)
    {
        const json_t *n = json_object_get(json_object_get(t, "function"), "name");
        if (json_is_string(n) && !strcmp(json_string_value(n), name)) return true;
    }
    return false;
}

enum kiln_status kiln_tools_choice(const json_t *choice, const json_t *tools, const char *param,
                                   struct kiln_api_request *r, struct kiln_api_error *err)
{
    bool any = json_array_size(tools) > 0;
    r->tool_choice = any ? KILN_TOOL_CHOICE_AUTO : KILN_TOOL_CHOICE_NONE;
    if (!choice || json_is_null(choice)) return KILN_OK;
    if (!any)
        return kiln_api_errorf(err, 400, NULL, param,
                               "'%s' is only allowed when tools (or functions) are given", param);
    if (json_is_string(choice)) {
        const char *s = json_string_value(choice);
        if (!strcmp(s, "none"))
            r->tool_choice = KILN_TOOL_CHOICE_NONE;
        else if (!strcmp(s, "auto"))
            r->tool_choice = KILN_TOOL_CHOICE_AUTO;
        else if (!strcmp(s, "required") && !r->legacy_functions)
            r->tool_choice = KILN_TOOL_CHOICE_REQUIRED;
        else
            return kiln_api_errorf(err, 400, NULL, param,
                                   "'%s' must be 'none', 'auto'%s or a named function, got '%s'",
                                   param, r->legacy_functions ? "" : ", 'required'", s);
        return KILN_OK;
    }
    /* {"type":"function","function":{"name"}} (chat), {"type":"function","name"} (Responses),
     * {"name"} (legacy function_call) */
    const json_t *name = NULL;
    if (json_is_object(choice)) {
        const json_t *fn = json_object_get(choice, "function");
        name = json_object_get(json_is_object(fn) ? fn : choice, "name");
        const json_t *type = json_object_get(choice, "type");
        if (type && (!json_is_string(type) || strcmp(json_string_value(type), "function")))
            name = NULL;
    }
    if (!json_is_string(name))
        return kiln_api_errorf(err, 400, NULL, param,
                               "'%s' must be 'none', 'auto', 'required' or {\"type\": "
                               "\"function\", \"function\": {\"name\": ...}}",
                               param);
    if (!has_tool(tools, json_string_value(name)))
        return kiln_api_errorf(err, 400, NULL, param, "'%s' names '%s', which is not a given tool",
                               param, json_string_value(name));
    r->tool_choice = KILN_TOOL_CHOICE_NAMED;
    r->tool_choice_name = strdup(json_string_value(name));
    return r->tool_choice_name ? KILN_OK : nomem(err);
}

enum kiln_status kiln_api_parse_tools(const json_t *root, struct kiln_api_request *r,
                                      struct kiln_api_error *err)
{
    const json_t *tools = json_object_get(root, "tools");
    const json_t *fns = json_object_get(root, "functions");
    const json_t *choice = json_object_get(root, "tool_choice");
    const json_t *fcall = json_object_get(root, "function_call");
    bool has_tools = tools && !json_is_null(tools), has_fns = fns && !json_is_null(fns);
    if (has_tools && has_fns)
        return kiln_api_errorf(err, 400, NULL, "functions",
                               "'functions' is the legacy form of 'tools': give one of them");
    if (fcall && !json_is_null(fcall) && choice && !json_is_null(choice))
        return kiln_api_errorf(err, 400, NULL, "function_call",
                               "'function_call' is the legacy form of 'tool_choice': give one");
    const json_t *ptc = json_object_get(root, "parallel_tool_calls");
    if (ptc && !json_is_null(ptc) && !json_is_boolean(ptc))
        return kiln_api_errorf(err, 400, NULL, "parallel_tool_calls",
                               "'parallel_tool_calls' must be a boolean, got %s",
                               kiln_json_type_name(ptc));
    r->parallel_tool_calls = !json_is_false(ptc);
    json_t *norm = NULL;
    enum kiln_status st = KILN_OK;
    if (has_fns) {
        r->legacy_functions = true;
        r->parallel_tool_calls = false;
        /* legacy entries are bare function definitions, without "type" */
        json_t *typed = json_array();
        size_t i;
        const json_t *f;
        json_array_foreach(fns, i, f)
        {
            json_t *t = json_is_object(f) ? json_deep_copy(f) : json_incref((json_t *)f);
            if (json_is_object(t) && !json_object_get(t, "type"))
                json_object_set_new(t, "type", json_string("function"));
            json_array_append_new(typed, t);
        }
        st = kiln_tools_normalize(json_is_array(fns) ? typed : fns, true, "functions", &norm, err);
        json_decref(typed);
    } else if (has_tools) {
        st = kiln_tools_normalize(tools, false, "tools", &norm, err);
    }
    if (!st)
        st = kiln_tools_choice(has_fns ? fcall : choice, norm,
                               has_fns ? "function_call" : "tool_choice", r, err);
    if (!st && json_array_size(norm)) {
        r->n_tools = (int)json_array_size(norm);
        r->tools_json = json_dumps(norm, JSON_COMPACT);
        if (!r->tools_json) st = nomem(err);
    }
    json_decref(norm);
    return st;
}

enum kiln_status kiln_tools_template_vars(const struct kiln_api_request *r, char **out)
{
    *out = NULL;
    if (!r->tools_json && !r->template_kwargs_json) return KILN_OK;
    json_t *vars =
        r->template_kwargs_json ? json_loads(r->template_kwargs_json, 0, NULL) : json_object();
    if (!vars) return KILN_ERR_NOMEM;
    if (r->tools_json && !json_object_get(vars, "tools")) {
        json_t *tools = json_loads(r->tools_json, 0, NULL);
        if (!tools || json_object_set_new(vars, "tools", tools)) {
            json_decref(vars);
            return KILN_ERR_NOMEM;
        }
    }
    *out = json_dumps(vars, JSON_COMPACT);
    json_decref(vars);
    return *out ? KILN_OK : KILN_ERR_NOMEM;
}

/* Python's str.strip() over ASCII whitespace (what chat contents use). */
static void strip_span(const char **s, size_t *n)
{
    while (*n && isspace((unsigned char)**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && isspace((unsigned char)(*s)[*n - 1])) (*n)--;
}

static const char *rfind(const char *hay, size_t hn, const char *needle, size_t nn)
{
    if (nn > hn) return NULL;
    for (size_t i = hn - nn + 1; i-- > 0;)
        if (!memcmp(hay + i, needle, nn)) return hay + i;
    return NULL;
}

enum kiln_status kiln_tools_continue_final(const char *messages_json, char *rendered, size_t *len,
                                           struct kiln_api_error *err)
{
    json_t *msgs = json_loads(messages_json, JSON_ALLOW_NUL, NULL);
    const json_t *content =
        json_object_get(json_array_get(msgs, json_array_size(msgs) - 1), "content");
    const char *final = json_string_value(content);
    size_t flen = json_string_length(content);
    if (!final) {
        json_decref(msgs);
        return kiln_api_errorf(err, 400, NULL, "continue_final_message",
                               "'continue_final_message' needs a final message with text");
    }
    const char *stripped = final;
    size_t slen = flen;
    strip_span(&stripped, &slen);
    const char *at = rfind(rendered, *len, stripped, slen);
    if (!at) {
        json_decref(msgs);
        return kiln_api_errorf(err, 400, NULL, "continue_final_message",
                               "'continue_final_message' is set but the final message does not "
                               "appear in the chat after applying the chat template");
    }
    /* The template kept the message's trailing spacing: keep it; else cut after the text. */
    const char *lstripped = final;
    size_t llen = flen;
    while (llen && isspace((unsigned char)*lstripped)) {
        lstripped++;
        llen--;
    }
    size_t keep = (size_t)(at - rendered);
    if (keep + llen <= *len && llen == flen && !memcmp(at, final, flen))
        keep += llen;
    else
        keep += slen;
    *len = keep;
    rendered[keep] = '\0';
    json_decref(msgs);
    return KILN_OK;
}

/* {"name": <name>, "parameters": <its parameters schema>} as a JSON Schema */
static json_t *call_schema(const json_t *fn)
{
    const json_t *params = json_object_get(fn, "parameters");
    json_t *p = params ? json_deep_copy(params) : json_pack("{s:s}", "type", "object");
    return json_pack("{s:s,s:{s:{s:O},s:o},s:[s,s],s:b}", "type", "object", "properties", "name",
                     "const", json_object_get(fn, "name"), "parameters", p, "required", "name",
                     "parameters", "additionalProperties", 0);
}

enum kiln_status kiln_tools_constraint(const struct kiln_api_request *r, char **out)
{
    *out = NULL;
    if (r->tool_choice == KILN_TOOL_CHOICE_NONE || !r->tools_json) return KILN_OK;
    json_t *tools = json_loads(r->tools_json, 0, NULL);
    if (!tools) return KILN_ERR_NOMEM;
    /* rules t0, t1, ...: one call object per tool */
    size_t cap = 256, len = 0;
    char *g = malloc(cap);
    bool ok = g != NULL;
    int n = 0;
    char head[96];
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (!ok || !name ||
            (r->tool_choice == KILN_TOOL_CHOICE_NAMED && strcmp(name, r->tool_choice_name)))
            continue;
        json_t *sc = call_schema(fn);
        char *text = sc ? json_dumps(sc, JSON_COMPACT) : NULL;
        json_decref(sc);
        int hl = snprintf(head, sizeof head, "t%d ::= %%json ", n++);
        size_t need = len + (size_t)hl + (text ? strlen(text) : 0) + 2;
        if (!text || (need > cap && !(g = realloc_or_free(g, cap = need * 2)))) {
            free(text);
            ok = false;
            continue;
        }
        len += (size_t)sprintf(g + len, "%s%s\n", head, text);
        free(text);
    }
    json_decref(tools);
    /* root: one call, or calls joined by ';' as Llama 3.1 writes parallel calls; under auto the
     * alternative is free text that does not open a call (so a '{' commits to one) */
    const char *calls = r->parallel_tool_calls && r->tool_choice != KILN_TOOL_CHOICE_NAMED
                            ? "call (\"; \" call)*"
                            : "call";
    size_t need = len + (size_t)n * 8 + 160;
    if (ok && n && need > cap) g = realloc_or_free(g, cap = need);
    if (!ok || !n || !g) {
        free(g);
        return ok && n ? KILN_ERR_NOMEM : ok ? KILN_OK : KILN_ERR_NOMEM;
    }
    len += (size_t)sprintf(g + len, "call ::= t0");
    for (int k = 1; k < n; k++) len += (size_t)sprintf(g + len, " | t%d", k);
    if (r->tool_choice == KILN_TOOL_CHOICE_AUTO)
        sprintf(g + len, "\nroot ::= %s | free\nfree ::= ([^{ \\t\\n\\r] .*)?\n", calls);
    else
        sprintf(g + len, "\nroot ::= %s\n", calls);
    *out = g;
    return KILN_OK;
}

enum kiln_status kiln_api_tools_constraint(struct kiln_api_request *r, struct kiln_api_error *err)
{
    bool forced =
        r->tool_choice == KILN_TOOL_CHOICE_REQUIRED || r->tool_choice == KILN_TOOL_CHOICE_NAMED;
    if (r->constraint.kind != KILN_CONSTRAINT_NONE) {
        /* auto with response_format: the format holds, calls are still parsed if it allows */
        if (!forced) return KILN_OK;
        return kiln_api_errorf(err, 400, NULL, "tool_choice",
                               "'tool_choice' %s cannot be combined with '%s': both constrain "
                               "the whole output",
                               r->tool_choice == KILN_TOOL_CHOICE_NAMED ? "naming a function"
                                                                        : "'required'",
                               r->constraint.param ? r->constraint.param : "response_format");
    }
    char *g;
    if (kiln_tools_constraint(r, &g)) return nomem(err);
    if (!g) return KILN_OK;
    r->constraint = (struct kiln_api_constraint){KILN_CONSTRAINT_GRAMMAR, g, strlen(g), "tools",
                                                 r->constraint.ws};
    return KILN_OK;
}

/* ---- output parser ---- */

enum pstate {
    P_START,   /* deciding: whitespace and <|python_tag|> held back */
    P_CONTENT, /* plain text: passed through */
    P_KEY,     /* in a call object: a key or '}' */
    P_COLON,   /* after a key */
    P_VALUE,   /* a value, kind in `key` */
    P_AFTER,   /* after a value: ',' or '}' */
    P_BETWEEN, /* after a call: ';' or the end */
    P_NEXT,    /* after ';': the next '{' */
    P_DONE,    /* one call and no parallel calls: the rest is dropped */
};

enum keykind { K_OTHER, K_NAME, K_ARGS };

struct kiln_tool_parser {
    bool parallel;
    enum pstate st;
    char *buf;
    size_t len, cap, pos;
    size_t obj_start; /* where the current call's text begins (for a fallback to text) */
    int index;        /* current call */
    int started;      /* calls whose START went out */
    /* the current call */
    enum keykind key;
    char *name;
    bool have_args, args_done, call_started;
    size_t args_sent, args_end; /* buffer offsets in its parameters value */
    /* the value being scanned */
    bool v_begun, v_str, v_esc, v_prim;
    int v_depth;
    size_t v_start;
};

static const char python_tag[] = "<|python_tag|>";

struct kiln_tool_parser *kiln_tool_parser_new(bool parallel)
{
    struct kiln_tool_parser *p = calloc(1, sizeof *p);
    if (p) p->parallel = parallel;
    return p;
}

void kiln_tool_parser_free(struct kiln_tool_parser *p)
{
    if (!p) return;
    free(p->buf);
    free(p->name);
    free(p);
}

int kiln_tool_parser_calls(const struct kiln_tool_parser *p)
{
    return p->started;
}

static void emit_ev(kiln_tool_emit_fn emit, void *ctx, enum kiln_tool_event_kind kind, int index,
                    const char *data, size_t len)
{
    struct kiln_tool_event ev = {kind, index, data, len};
    emit(ctx, &ev);
}

static void reset_value(struct kiln_tool_parser *p)
{
    p->v_begun = p->v_str = p->v_esc = p->v_prim = false;
    p->v_depth = 0;
}

/* Scans one JSON value from pos: 1 complete (pos after it), 0 needs more, -1 malformed. Only
 * the framing is checked here (strings, nesting); arguments are validated when complete. */
static int scan_value(struct kiln_tool_parser *p, bool at_end)
{
    while (p->pos < p->len) {
        char c = p->buf[p->pos];
        if (!p->v_begun) {
            if (isspace((unsigned char)c)) {
                p->pos++;
                continue;
            }
            p->v_begun = true;
            p->v_start = p->pos;
            if (c == '{' || c == '[') {
                p->v_depth = 1;
            } else if (c == '"') {
                p->v_str = true;
            } else if (isalnum((unsigned char)c) || c == '-') {
                p->v_prim = true;
            } else {
                return -1;
            }
            p->pos++;
            continue;
        }
        if (p->v_prim) {
            if (isalnum((unsigned char)c) || c == '-' || c == '+' || c == '.') {
                p->pos++;
                continue;
            }
            return 1;
        }
        p->pos++;
        if (p->v_str) {
            if (p->v_esc)
                p->v_esc = false;
            else if (c == '\\')
                p->v_esc = true;
            else if (c == '"') {
                p->v_str = false;
                if (!p->v_depth) return 1;
            }
            continue;
        }
        if (c == '"')
            p->v_str = true;
        else if (c == '{' || c == '[')
            p->v_depth++;
        else if ((c == '}' || c == ']') && --p->v_depth == 0)
            return 1;
    }
    return at_end && p->v_prim ? 1 : 0;
}

static void skip_ws(struct kiln_tool_parser *p)
{
    while (p->pos < p->len && isspace((unsigned char)p->buf[p->pos])) p->pos++;
}

/* ARGS for what was scanned of the parameters value and not sent yet (once the name is known). */
static void send_args(struct kiln_tool_parser *p, kiln_tool_emit_fn emit, void *ctx)
{
    if (!p->call_started || !p->have_args) return;
    size_t upto = p->args_done ? p->args_end : p->pos;
    if (upto > p->args_sent)
        emit_ev(emit, ctx, KILN_TOOL_ARGS, p->index, p->buf + p->args_sent, upto - p->args_sent);
    p->args_sent = upto;
}

static void start_call(struct kiln_tool_parser *p, kiln_tool_emit_fn emit, void *ctx)
{
    p->call_started = true;
    p->started++;
    emit_ev(emit, ctx, KILN_TOOL_CALL_START, p->index, p->name, strlen(p->name));
}

/* Not a call after all: what the current call consumed goes out as text, and so does the rest. */
static void fail(struct kiln_tool_parser *p, kiln_tool_emit_fn emit, void *ctx)
{
    size_t from = p->obj_start;
    if (p->call_started) {
        emit_ev(emit, ctx, KILN_TOOL_CALL_END, p->index, NULL, 0);
        from = p->pos;
    }
    if (p->len > from) emit_ev(emit, ctx, KILN_TOOL_TEXT, 0, p->buf + from, p->len - from);
    p->st = P_CONTENT;
}

static void new_call(struct kiln_tool_parser *p, size_t obj_start)
{
    free(p->name);
    p->name = NULL;
    p->have_args = p->args_done = p->call_started = false;
    p->args_sent = p->args_end = 0;
    p->obj_start = obj_start;
    p->st = P_KEY;
}

/* Advances over the buffer; returns false when it needs more input. */
static bool step(struct kiln_tool_parser *p, bool at_end, kiln_tool_emit_fn emit, void *ctx)
{
    switch (p->st) {
    case P_START: {
        skip_ws(p);
        size_t rest = p->len - p->pos, tag = sizeof python_tag - 1;
        if (!rest) return false;
        if (!memcmp(p->buf + p->pos, python_tag, rest < tag ? rest : tag)) {
            if (rest < tag) {
                if (at_end) fail(p, emit, ctx);
                return at_end;
            }
            p->pos += tag;
            return true;
        }
        if (p->buf[p->pos] != '{') {
            fail(p, emit, ctx);
            return true;
        }
        new_call(p, 0);
        p->pos++;
        return true;
    }
    case P_KEY: {
        skip_ws(p);
        if (p->pos >= p->len) return false;
        if (p->buf[p->pos] == '}') {
            p->pos++;
            if (!p->name) {
                fail(p, emit, ctx);
                return true;
            }
            if (!p->call_started) start_call(p, emit, ctx);
            if (!p->have_args) emit_ev(emit, ctx, KILN_TOOL_ARGS, p->index, "{}", 2);
            emit_ev(emit, ctx, KILN_TOOL_CALL_END, p->index, NULL, 0);
            p->call_started = false;
            p->index++;
            p->st = p->parallel ? P_BETWEEN : P_DONE;
            return true;
        }
        if (p->buf[p->pos] != '"') {
            fail(p, emit, ctx);
            return true;
        }
        reset_value(p);
        size_t key_at = p->pos;
        int r = scan_value(p, at_end);
        if (r < 0 || (r == 0 && at_end)) {
            fail(p, emit, ctx);
            return true;
        }
        if (r == 0) { /* the key is cut: scan it again with more text */
            p->pos = key_at;
            return false;
        }
        size_t klen = p->pos - p->v_start;
        const char *k = p->buf + p->v_start;
        p->key = K_OTHER;
        if (klen == 6 && !memcmp(k, "\"name\"", 6)) p->key = K_NAME;
        if ((klen == 12 && !memcmp(k, "\"parameters\"", 12)) ||
            (klen == 11 && !memcmp(k, "\"arguments\"", 11)))
            p->key = K_ARGS;
        p->st = P_COLON;
        return true;
    }
    case P_COLON:
        skip_ws(p);
        if (p->pos >= p->len) return false;
        if (p->buf[p->pos] != ':') {
            fail(p, emit, ctx);
            return true;
        }
        p->pos++;
        reset_value(p);
        p->st = P_VALUE;
        return true;
    case P_VALUE: {
        int r = scan_value(p, at_end);
        if (r < 0 || (p->key == K_ARGS && p->v_begun && p->buf[p->v_start] != '{') ||
            (p->key == K_NAME && p->v_begun && p->buf[p->v_start] != '"')) {
            fail(p, emit, ctx);
            return true;
        }
        if (p->key == K_ARGS && p->v_begun) {
            if (!p->have_args) {
                p->have_args = true;
                p->args_sent = p->v_start;
            }
            send_args(p, emit, ctx);
        }
        if (r == 0) {
            if (at_end) fail(p, emit, ctx);
            return at_end;
        }
        if (p->key == K_NAME) {
            json_t *s = json_loadb(p->buf + p->v_start, p->pos - p->v_start, JSON_DECODE_ANY, NULL);
            const char *n = json_string_value(s);
            if (!n || p->name || !valid_name(n)) {
                json_decref(s);
                fail(p, emit, ctx);
                return true;
            }
            p->name = strdup(n);
            json_decref(s);
            if (!p->name) {
                fail(p, emit, ctx);
                return true;
            }
            if (!p->call_started) start_call(p, emit, ctx);
            send_args(p, emit, ctx);
        } else if (p->key == K_ARGS) {
            p->args_done = true;
            p->args_end = p->pos;
        }
        p->st = P_AFTER;
        return true;
    }
    case P_AFTER:
        skip_ws(p);
        if (p->pos >= p->len) return false;
        if (p->buf[p->pos] == ',') {
            p->pos++;
            p->st = P_KEY;
        } else if (p->buf[p->pos] == '}') {
            p->st = P_KEY; /* P_KEY closes the call */
        } else {
            fail(p, emit, ctx);
        }
        return true;
    case P_BETWEEN:
        skip_ws(p);
        if (p->pos >= p->len) return false;
        if (p->buf[p->pos] == ';') {
            p->pos++;
            p->st = P_NEXT;
        } else {
            p->obj_start = p->pos;
            fail(p, emit, ctx);
        }
        return true;
    case P_NEXT:
        skip_ws(p);
        if (p->pos >= p->len) return false;
        if (p->buf[p->pos] == '{') {
            new_call(p, p->pos);
            p->pos++;
        } else {
            p->obj_start = p->pos;
            fail(p, emit, ctx);
        }
        return true;
    case P_CONTENT:
    case P_DONE:
        return false;
    }
    return false;
}

static void run(struct kiln_tool_parser *p, bool at_end, kiln_tool_emit_fn emit, void *ctx)
{
    while (p->st != P_CONTENT && p->st != P_DONE && step(p, at_end, emit, ctx)) {
    }
}

void kiln_tool_parser_push(struct kiln_tool_parser *p, const char *text, size_t len,
                           kiln_tool_emit_fn emit, void *ctx)
{
    if (!len) return;
    if (p->st == P_DONE) return;
    if (p->st == P_CONTENT) {
        emit_ev(emit, ctx, KILN_TOOL_TEXT, 0, text, len);
        return;
    }
    if (p->len + len + 1 > p->cap) {
        size_t cap = (p->len + len + 1) * 2;
        char *nb = realloc(p->buf, cap);
        if (!nb) { /* out of memory: give the text up as content */
            fail(p, emit, ctx);
            emit_ev(emit, ctx, KILN_TOOL_TEXT, 0, text, len);
            return;
        }
        p->buf = nb;
        p->cap = cap;
    }
    memcpy(p->buf + p->len, text, len);
    p->len += len;
    p->buf[p->len] = '\0';
    run(p, false, emit, ctx);
}

void kiln_tool_parser_finish(struct kiln_tool_parser *p, kiln_tool_emit_fn emit, void *ctx)
{
    if (p->st == P_START) {
        if (p->len) emit_ev(emit, ctx, KILN_TOOL_TEXT, 0, p->buf, p->len);
        p->st = P_CONTENT;
        return;
    }
    run(p, true, emit, ctx);
    if (p->st == P_KEY || p->st == P_COLON || p->st == P_VALUE || p->st == P_AFTER)
        fail(p, emit, ctx);
}

/* ---- whole output ---- */

struct collect {
    json_t *calls; /* [{"name","arguments"}] with arguments gathered as text */
    char *text;
    size_t text_len;
    bool broken;
};

static void collect_ev(void *ctx, const struct kiln_tool_event *ev)
{
    struct collect *c = ctx;
    switch (ev->kind) {
    case KILN_TOOL_TEXT: {
        char *t = realloc(c->text, c->text_len + ev->len + 1);
        if (!t) {
            c->broken = true;
            return;
        }
        memcpy(t + c->text_len, ev->data, ev->len);
        c->text = t;
        c->text_len += ev->len;
        c->text[c->text_len] = '\0';
        break;
    }
    case KILN_TOOL_CALL_START:
        if (json_array_append_new(
                c->calls, json_pack("{s:s%,s:s}", "name", ev->data, ev->len, "arguments", "")))
            c->broken = true;
        break;
    case KILN_TOOL_ARGS: {
        json_t *call = json_array_get(c->calls, (size_t)ev->index);
        const json_t *a = json_object_get(call, "arguments");
        size_t n = json_string_length(a);
        char *t = malloc(n + ev->len + 1);
        if (!call || !t) {
            free(t);
            c->broken = true;
            return;
        }
        memcpy(t, json_string_value(a), n);
        memcpy(t + n, ev->data, ev->len);
        json_object_set_new(call, "arguments", json_stringn(t, n + ev->len));
        free(t);
        break;
    }
    case KILN_TOOL_CALL_END:
        break;
    }
}

enum kiln_status kiln_tools_parse_output(const char *text, size_t len, bool parallel,
                                         char **content, size_t *content_len, json_t **calls)
{
    *content = NULL;
    *content_len = 0;
    *calls = NULL;
    struct kiln_tool_parser *p = kiln_tool_parser_new(parallel);
    struct collect c = {.calls = json_array()};
    if (!p || !c.calls) {
        kiln_tool_parser_free(p);
        json_decref(c.calls);
        return KILN_ERR_NOMEM;
    }
    kiln_tool_parser_push(p, text, len, collect_ev, &c);
    kiln_tool_parser_finish(p, collect_ev, &c);
    kiln_tool_parser_free(p);
    /* every call's arguments must be a JSON object, else the output is text */
    bool ok = !c.broken && json_array_size(c.calls) > 0;
    size_t i;
    json_t *call;
    json_array_foreach(c.calls, i, call)
    {
        const json_t *a = json_object_get(call, "arguments");
        json_t *v = json_loadb(json_string_value(a), json_string_length(a), 0, NULL);
        ok = ok && json_is_object(v);
        json_decref(v);
    }
    if (!ok) {
        json_decref(c.calls);
        free(c.text);
        *content = malloc(len + 1);
        if (!*content) return KILN_ERR_NOMEM;
        memcpy(*content, text, len);
        (*content)[len] = '\0';
        *content_len = len;
        return KILN_OK;
    }
    *calls = c.calls;
    *content = c.text;
    *content_len = c.text_len;
    return KILN_OK;
}
