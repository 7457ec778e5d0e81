/* Request bodies -> struct kiln_api_request, with OpenAI's validation rules and errors. Every
 * rejection names the offending parameter, so a client sees which field to fix; nothing here
 * trusts the body (it is fuzzed by fuzz/fuzz_request.c). */
#include "core/json.h"
#include "api.h"
#include "tools.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kiln_status kiln_api_errorf(struct kiln_api_error *err, int status, const char *code,
                                 const char *param, const char *fmt, ...)
{
    if (!err) return status >= 500 ? KILN_ERR_INTERNAL : KILN_ERR_INVALID;
    err->status = status;
    switch (status) {
    case 429:
        err->type = "rate_limit_error";
        break;
    case 500:
    case 503:
        err->type = "server_error";
        break;
    default:
        err->type = "invalid_request_error";
        break;
    }
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return status >= 500 ? KILN_ERR_INTERNAL : KILN_ERR_INVALID;
}

char *kiln_api_error_body(const struct kiln_api_error *err)
{
    json_t *o = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", err->message, "type",
                          err->type ? err->type : "invalid_request_error", "param",
                          err->param[0] ? json_string(err->param) : json_null(), "code",
                          err->code ? json_string(err->code) : json_null());
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static enum kiln_status bad(struct kiln_api_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum kiln_status bad(struct kiln_api_error *err, const char *param, const char *fmt, ...)
{
    char msg[sizeof err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kiln_api_errorf(err, 400, NULL, param, "%s", msg);
}

static enum kiln_status nomem(struct kiln_api_error *err)
{
    return kiln_api_errorf(err, 500, NULL, NULL, "out of memory");
}

/* Field getters: an absent or null field leaves *out alone and succeeds. */

static enum kiln_status get_number(const json_t *o, const char *key, double lo, double hi,
                                   double *out, struct kiln_api_error *err)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return KILN_OK;
    if (!json_is_number(v))
        return bad(err, key, "'%s' must be a number, got %s", key, kiln_json_type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return bad(err, key, "'%s' must be between %g and %g, got %g", key, lo, hi, x);
    *out = x;
    return KILN_OK;
}

static enum kiln_status get_float(const json_t *o, const char *key, double lo, double hi,
                                  float *out, struct kiln_api_error *err)
{
    double x = *out;
    enum kiln_status st = get_number(o, key, lo, hi, &x, err);
    *out = (float)x;
    return st;
}

/* Integers may come as 50 or 50.0 (pydantic-style coercion), never as 50.5. */
static bool as_integer(const json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_real(v)) {
        double x = json_real_value(v);
        if (isfinite(x) && x == floor(x) && fabs(x) < 9.0e15) {
            *out = (long long)x;
            return true;
        }
    }
    return false;
}

static enum kiln_status get_int(const json_t *o, const char *key, long long lo, long long hi,
                                int *out, struct kiln_api_error *err)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return KILN_OK;
    long long x;
    if (!as_integer(v, &x))
        return bad(err, key, "'%s' must be an integer, got %s", key, kiln_json_type_name(v));
    if (x < lo || x > hi)
        return bad(err, key, "'%s' must be between %lld and %lld, got %lld", key, lo, hi, x);
    *out = (int)x;
    return KILN_OK;
}

static enum kiln_status get_bool(const json_t *o, const char *key, bool *out,
                                 struct kiln_api_error *err)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return KILN_OK;
    if (!json_is_boolean(v))
        return bad(err, key, "'%s' must be a boolean, got %s", key, kiln_json_type_name(v));
    *out = json_is_true(v);
    return KILN_OK;
}

static enum kiln_status get_string(const json_t *o, const char *key, char **out,
                                   struct kiln_api_error *err)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return KILN_OK;
    if (!json_is_string(v))
        return bad(err, key, "'%s' must be a string, got %s", key, kiln_json_type_name(v));
    const char *str = json_string_value(v);
    size_t len = json_string_length(v);
    /* Only "model" comes here. An embedded NUL ("m\u0000abc") must not shorten the name to a
     * served one: it is spelled out, so the name matches nothing and the 404 shows it. */
    size_t nuls = 0;
    for (size_t i = 0; i < len; i++) nuls += !str[i];
    *out = malloc(len + 5 * nuls + 1);
    if (!*out) return nomem(err);
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        if (str[i]) {
            (*out)[w++] = str[i];
        } else {
            memcpy(*out + w, "\\u0000", 6);
            w += 6;
        }
    }
    (*out)[w] = 0;
    return KILN_OK;
}

static enum kiln_status load_object(const char *body, size_t len, json_t **out,
                                    struct kiln_api_error *err)
{
    json_error_t je;
    /* NUL inside strings is valid JSON; lengths are carried along wherever it matters. */
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &je);
    if (!root)
        return bad(err, NULL,
                   "We could not parse the JSON body of your request: %s (line %d, column %d). "
                   "The body must be a JSON object with Content-Type: application/json.",
                   je.text, je.line, je.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return bad(err, NULL, "The request body must be a JSON object");
    }
    *out = root;
    return KILN_OK;
}

/* A token id list: non-empty array of ints in [0, vocab). */
static enum kiln_status get_ids(const json_t *arr, const char *param, int32_t vocab,
                                bool allow_empty, int32_t **ids, int *n, struct kiln_api_error *err)
{
    size_t count = json_array_size(arr);
    if (!count && !allow_empty) return bad(err, param, "'%s' must not be empty", param);
    if (count > INT32_MAX / 4) return bad(err, param, "'%s' is too long", param);
    int32_t *v = malloc((count ? count : 1) * sizeof(int32_t));
    if (!v) return nomem(err);
    for (size_t i = 0; i < count; i++) {
        long long x;
        const json_t *e = json_array_get(arr, i);
        if (!as_integer(e, &x)) {
            free(v);
            return bad(err, param,
                       "'%s' must be a list of token ids (integers), got %s at index %zu", param,
                       kiln_json_type_name(e), i);
        }
        if (x < 0 || (vocab > 0 && x >= vocab)) {
            free(v);
            return bad(err, param, "token id %lld in '%s' is outside the vocabulary [0, %d)", x,
                       param, (int)vocab);
        }
        v[i] = (int32_t)x;
    }
    *ids = v;
    *n = (int)count;
    return KILN_OK;
}

static enum kiln_status add_prompt_text(struct kiln_api_request *r, const json_t *s,
                                        const char *param, struct kiln_api_error *err)
{
    size_t len = json_string_length(s);
    if (!len) return bad(err, param, "The prompt must not be empty");
    struct kiln_api_prompt *p = &r->prompts[r->n_prompts];
    p->text = malloc(len + 1);
    if (!p->text) return nomem(err);
    memcpy(p->text, json_string_value(s), len + 1);
    p->text_len = len;
    r->n_prompts++;
    return KILN_OK;
}

/* prompt: "text" | ["text", ...] | [ids] | [[ids], ...] */
static enum kiln_status parse_prompt(const json_t *root, const struct kiln_api_limits *lim,
                                     struct kiln_api_request *r, struct kiln_api_error *err)
{
    const json_t *p = json_object_get(root, "prompt");
    if (!p || json_is_null(p)) return bad(err, "prompt", "'prompt' is required");
    if (json_is_string(p)) {
        r->prompts = calloc(1, sizeof *r->prompts);
        if (!r->prompts) return nomem(err);
        return add_prompt_text(r, p, "prompt", err);
    }
    if (!json_is_array(p))
        return bad(err, "prompt",
                   "'prompt' must be a string, a list of strings, a list of token ids or a list of "
                   "lists of token ids, got %s",
                   kiln_json_type_name(p));
    size_t count = json_array_size(p);
    if (!count) return bad(err, "prompt", "The prompt must not be empty");
    const json_t *first = json_array_get(p, 0);
    long long dummy;
    if (as_integer(first, &dummy)) { /* one prompt of token ids */
        r->prompts = calloc(1, sizeof *r->prompts);
        if (!r->prompts) return nomem(err);
        if (get_ids(p, "prompt", lim->vocab_size, false, &r->prompts[0].ids, &r->prompts[0].n_ids,
                    err))
            return KILN_ERR_INVALID;
        r->n_prompts = 1;
        return KILN_OK;
    }
    if (count > (size_t)lim->max_choices)
        return bad(err, "prompt", "At most %d prompts per request, got %zu", lim->max_choices,
                   count);
    r->prompts = calloc(count, sizeof *r->prompts);
    if (!r->prompts) return nomem(err);
    for (size_t i = 0; i < count; i++) {
        const json_t *e = json_array_get(p, i);
        if (json_is_string(first) && json_is_string(e)) {
            if (add_prompt_text(r, e, "prompt", err)) return KILN_ERR_INVALID;
        } else if (json_is_array(first) && json_is_array(e)) {
            struct kiln_api_prompt *q = &r->prompts[r->n_prompts];
            if (get_ids(e, "prompt", lim->vocab_size, false, &q->ids, &q->n_ids, err))
                return KILN_ERR_INVALID;
            r->n_prompts++;
        } else {
            return bad(err, "prompt",
                       "'prompt' must be a string, a list of strings, a list of token ids or a "
                       "list of lists of token ids; element %zu is %s",
                       i, kiln_json_type_name(e));
        }
    }
    return KILN_OK;
}

/* The role the template sees: OpenAI's "developer" is the system message, a legacy
 * "function" result is a tool result. NULL: not a role kiln takes. */
static const char *template_role(const char *role)
{
    static const char *const roles[][2] = {{"system", "system"}, {"developer", "system"},
                                           {"user", "user"},     {"assistant", "assistant"},
                                           {"tool", "tool"},     {"function", "tool"}};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        if (!strcmp(role, roles[i][0])) return roles[i][1];
    return NULL;
}

/* An assistant turn's calls as the template reads them: arguments given as a JSON string
 * (OpenAI's form) become the object they encode, as vLLM passes them; a legacy function_call
 * becomes a one-element tool_calls. */
static json_t *template_tool_calls(const json_t *m)
{
    const json_t *calls = json_object_get(m, "tool_calls");
    const json_t *legacy = json_object_get(m, "function_call");
    json_t *out;
    if (json_is_array(calls))
        out = json_deep_copy(calls);
    else if (json_is_object(legacy))
        out = json_pack("[{s:s,s:O}]", "type", "function", "function", legacy);
    else
        return NULL;
    size_t i;
    json_t *c;
    json_array_foreach(out, i, c)
    {
        json_t *fn = json_object_get(c, "function");
        json_t *args = json_object_get(fn, "arguments");
        if (!json_is_string(args)) continue;
        json_t *obj = json_loadb(json_string_value(args), json_string_length(args), 0, NULL);
        if (json_is_object(obj))
            json_object_set_new(fn, "arguments", obj);
        else
            json_decref(obj);
    }
    return out;
}

/* messages -> a normalized JSON array for the chat template (string content only). */
static enum kiln_status parse_messages(const json_t *root, char **out, struct kiln_api_error *err)
{
    const json_t *msgs = json_object_get(root, "messages");
    if (!msgs || json_is_null(msgs)) return bad(err, "messages", "'messages' is required");
    if (!json_is_array(msgs))
        return bad(err, "messages", "'messages' must be an array, got %s",
                   kiln_json_type_name(msgs));
    if (!json_array_size(msgs)) return bad(err, "messages", "'messages' must not be empty");
    json_t *norm = json_array();
    if (!norm) return nomem(err);
    char param[64];
    enum kiln_status st = KILN_OK;
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m)
    {
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) {
            st = bad(err, param, "'%s' must be an object, got %s", param, kiln_json_type_name(m));
            break;
        }
        const json_t *role = json_object_get(m, "role");
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!json_is_string(role)) {
            st = bad(err, param, "'%s' must be a string", param);
            break;
        }
        const char *trole = template_role(json_string_value(role));
        if (!trole) {
            st = bad(err, param,
                     "'%s' must be one of 'system', 'developer', 'user', 'assistant', 'tool' or "
                     "'function', got '%s'",
                     param, json_string_value(role));
            break;
        }
        const json_t *content = json_object_get(m, "content");
        snprintf(param, sizeof param, "messages[%zu].content", i);
        json_t *text = NULL;
        if (!content || json_is_null(content)) {
            /* An assistant turn that only made tool calls has no content. */
            if (strcmp(json_string_value(role), "assistant")) {
                st = bad(err, param, "'%s' is required", param);
                break;
            }
            text = json_string("");
        } else if (json_is_string(content)) {
            text = json_stringn(json_string_value(content), json_string_length(content));
        } else if (json_is_array(content)) {
            /* Text parts joined by "\n", as vLLM renders them for string-content templates. */
            size_t total = 0, j;
            const json_t *part;
            json_array_foreach(content, j, part)
            {
                const json_t *type = json_object_get(part, "type");
                const json_t *t = json_object_get(part, "text");
                if (!json_is_object(part) || !json_is_string(type) ||
                    strcmp(json_string_value(type), "text") || !json_is_string(t)) {
                    snprintf(param, sizeof param, "messages[%zu].content[%zu]", i, j);
                    st = bad(err, param,
                             "'%s' must be a text part {\"type\": \"text\", \"text\": \"...\"}; "
                             "this model takes text only",
                             param);
                    break;
                }
                total += json_string_length(t) + 1;
            }
            if (st) break;
            char *buf = malloc(total + 1);
            if (!buf) {
                st = nomem(err);
                break;
            }
            size_t off = 0;
            json_array_foreach(content, j, part)
            {
                const json_t *t = json_object_get(part, "text");
                if (j) buf[off++] = '\n';
                memcpy(buf + off, json_string_value(t), json_string_length(t));
                off += json_string_length(t);
            }
            text = json_stringn(buf, off);
            free(buf);
        } else {
            st = bad(err, param, "'%s' must be a string or a list of text parts, got %s", param,
                     kiln_json_type_name(content));
            break;
        }
        json_t *nm = json_pack("{s:s,s:o}", "role", trole, "content", text);
        if (!nm) {
            st = nomem(err);
            break;
        }
        /* Fields the Llama 3.1 template reads for tool turns, passed through when well-typed. */
        static const char *const pass[] = {"name", "tool_call_id"};
        for (size_t k = 0; k < 2; k++) {
            const json_t *v = json_object_get(m, pass[k]);
            if (json_is_string(v)) json_object_set(nm, pass[k], (json_t *)v);
        }
        json_t *calls = template_tool_calls(m);
        if (json_array_size(calls)) json_object_set(nm, "tool_calls", calls);
        json_decref(calls);
        if (json_array_append_new(norm, nm)) {
            st = nomem(err);
            break;
        }
    }
    if (!st) {
        *out = json_dumps(norm, JSON_COMPACT);
        if (!*out) st = nomem(err);
    }
    json_decref(norm);
    return st;
}

/* stop: "s" | ["s", ...] */
static enum kiln_status parse_stop(const json_t *root, const struct kiln_api_limits *lim,
                                   struct kiln_api_request *r, struct kiln_api_error *err)
{
    const json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v)) return KILN_OK;
    size_t count = json_is_string(v) ? 1 : json_array_size(v);
    if (!json_is_string(v) && !json_is_array(v))
        return bad(err, "stop", "'stop' must be a string or a list of strings, got %s",
                   kiln_json_type_name(v));
    if (count > (size_t)lim->max_stop)
        return bad(err, "stop", "At most %d stop strings, got %zu", lim->max_stop, count);
    if (!count) return KILN_OK;
    r->stop = calloc(count, sizeof *r->stop);
    if (!r->stop) return nomem(err);
    for (size_t i = 0; i < count; i++) {
        const json_t *s = json_is_string(v) ? v : json_array_get(v, i);
        if (!json_is_string(s))
            return bad(err, "stop",
                       "'stop' must be a string or a list of strings; element %zu is %s", i,
                       kiln_json_type_name(s));
        size_t len = json_string_length(s);
        if (!len || strlen(json_string_value(s)) != len)
            return bad(err, "stop", "stop strings must be non-empty and free of NUL characters");
        r->stop[i] = strdup(json_string_value(s));
        if (!r->stop[i]) return nomem(err);
        r->n_stop++;
    }
    return KILN_OK;
}

/* logit_bias: {"token id": bias in [-100, 100]} */
static enum kiln_status parse_bias(const json_t *root, const struct kiln_api_limits *lim,
                                   struct kiln_api_request *r, struct kiln_api_error *err)
{
    const json_t *v = json_object_get(root, "logit_bias");
    if (!v || json_is_null(v)) return KILN_OK;
    if (!json_is_object(v))
        return bad(err, "logit_bias", "'logit_bias' must be an object mapping token ids to biases");
    size_t count = json_object_size(v);
    if (!count) return KILN_OK;
    if (count > 1024) return bad(err, "logit_bias", "At most 1024 logit_bias entries");
    r->bias_ids = malloc(count * sizeof(int32_t));
    r->bias_vals = malloc(count * sizeof(float));
    if (!r->bias_ids || !r->bias_vals) return nomem(err);
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)v, key, val)
    {
        char *end;
        long long id = strtoll(key, &end, 10);
        if (end == key || *end || id < 0 || (lim->vocab_size > 0 && id >= lim->vocab_size))
            return bad(err, "logit_bias",
                       "logit_bias key '%s' is not a token id in the vocabulary [0, %d)", key,
                       (int)lim->vocab_size);
        if (!json_is_number(val) || !isfinite(json_number_value(val)) ||
            fabs(json_number_value(val)) > 100.0)
            return bad(err, "logit_bias", "logit_bias values must be numbers in [-100, 100]");
        r->bias_ids[r->n_bias] = (int32_t)id;
        r->bias_vals[r->n_bias] = (float)json_number_value(val);
        r->n_bias++;
    }
    return KILN_OK;
}

static enum kiln_status parse_sampling(const json_t *root, const struct kiln_api_limits *lim,
                                       struct kiln_api_request *r, struct kiln_api_error *err)
{
    const char *max_key = "max_tokens";
    if (r->kind == KILN_API_CHAT && json_is_number(json_object_get(root, "max_completion_tokens")))
        max_key = "max_completion_tokens";
    if (get_int(root, max_key, 1, INT32_MAX, &r->max_tokens, err)) return KILN_ERR_INVALID;
    if (get_int(root, "min_tokens", 0, INT32_MAX, &r->min_tokens, err)) return KILN_ERR_INVALID;
    if (r->max_tokens && r->min_tokens > r->max_tokens)
        return bad(err, "min_tokens", "'min_tokens' (%d) must not exceed '%s' (%d)", r->min_tokens,
                   max_key, r->max_tokens);
    if (get_float(root, "temperature", 0.0, 1.0e6, &r->temperature, err)) return KILN_ERR_INVALID;
    if (get_float(root, "top_p", 0.0, 1.0, &r->top_p, err)) return KILN_ERR_INVALID;
    if (r->top_p <= 0.0f) return bad(err, "top_p", "'top_p' must be in (0, 1], got 0");
    if (get_int(root, "top_k", -1, INT32_MAX, &r->top_k, err)) return KILN_ERR_INVALID;
    if (get_float(root, "min_p", 0.0, 1.0, &r->min_p, err)) return KILN_ERR_INVALID;
    if (get_int(root, "n", 1, INT32_MAX, &r->n, err)) return KILN_ERR_INVALID;
    if (r->n > lim->max_n) return bad(err, "n", "'n' must be at most %d, got %d", lim->max_n, r->n);
    const json_t *best_of = json_object_get(root, "best_of");
    long long bo;
    if (best_of && !json_is_null(best_of) && (!as_integer(best_of, &bo) || bo != r->n))
        return bad(err, "best_of", "'best_of' other than n is not supported");
    const json_t *seed = json_object_get(root, "seed");
    if (seed && !json_is_null(seed)) {
        long long s;
        if (!as_integer(seed, &s))
            return bad(err, "seed", "'seed' must be an integer, got %s", kiln_json_type_name(seed));
        r->has_seed = true;
        r->seed = (uint64_t)s;
    }
    if (get_float(root, "presence_penalty", -2.0, 2.0, &r->presence_penalty, err))
        return KILN_ERR_INVALID;
    if (get_float(root, "frequency_penalty", -2.0, 2.0, &r->frequency_penalty, err))
        return KILN_ERR_INVALID;
    if (get_float(root, "repetition_penalty", 0.0, 2.0, &r->repetition_penalty, err))
        return KILN_ERR_INVALID;
    if (r->repetition_penalty <= 0.0f)
        return bad(err, "repetition_penalty", "'repetition_penalty' must be in (0, 2]");
    if (get_bool(root, "ignore_eos", &r->ignore_eos, err)) return KILN_ERR_INVALID;
    if (get_bool(root, "skip_special_tokens", &r->skip_special_tokens, err))
        return KILN_ERR_INVALID;
    if (parse_stop(root, lim, r, err)) return KILN_ERR_INVALID;
    const json_t *sids = json_object_get(root, "stop_token_ids");
    if (sids && !json_is_null(sids)) {
        if (!json_is_array(sids))
            return bad(err, "stop_token_ids", "'stop_token_ids' must be a list of token ids");
        if (json_array_size(sids) > (size_t)lim->max_stop)
            return bad(err, "stop_token_ids", "At most %d stop token ids", lim->max_stop);
        if (get_ids(sids, "stop_token_ids", lim->vocab_size, true, &r->stop_ids, &r->n_stop_ids,
                    err))
            return KILN_ERR_INVALID;
    }
    return parse_bias(root, lim, r, err);
}

static enum kiln_status parse_stream(const json_t *root, struct kiln_api_request *r,
                                     struct kiln_api_error *err)
{
    if (get_bool(root, "stream", &r->stream, err)) return KILN_ERR_INVALID;
    const json_t *so = json_object_get(root, "stream_options");
    if (!so || json_is_null(so)) return KILN_OK;
    if (!json_is_object(so))
        return bad(err, "stream_options", "'stream_options' must be an object, got %s",
                   kiln_json_type_name(so));
    if (!r->stream)
        return bad(err, "stream_options", "'stream_options' is only allowed with stream: true");
    if (json_is_true(json_object_get(so, "continuous_usage_stats")))
        return bad(err, "stream_options",
                   "'stream_options.continuous_usage_stats' is not supported (usage comes in the "
                   "last chunk)");
    return get_bool(so, "include_usage", &r->include_usage, err);
}

static enum kiln_status parse_logprobs(const json_t *root, struct kiln_api_request *r,
                                       struct kiln_api_error *err)
{
    if (r->kind == KILN_API_COMPLETION)
        return get_int(root, "logprobs", 0, KILN_API_MAX_LOGPROBS, &r->logprobs, err);
    bool want = false;
    int top = 0;
    if (get_bool(root, "logprobs", &want, err)) return KILN_ERR_INVALID;
    if (get_int(root, "top_logprobs", 0, KILN_API_MAX_LOGPROBS, &top, err)) return KILN_ERR_INVALID;
    const json_t *t = json_object_get(root, "top_logprobs");
    if (t && !json_is_null(t) && !want)
        return bad(err, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    if (want) r->logprobs = top;
    return KILN_OK;
}

/* The request fields OpenAI and vLLM define that kiln does not implement. Each is refused
 * (400 naming it) unless absent, null or equal to its neutral value; docs/serving.md lists
 * them next to the accepted no-ops (user, metadata, store: false, service_tier, ...). */
struct refused_field {
    const char *name;
    const char *neutral; /* JSON of the value that changes nothing, or NULL: none */
    unsigned kinds;      /* 1: completions, 2: chat */
    const char *why;
};

static const struct refused_field refused_fields[] = {
    {"store", "false", 3, "kiln keeps no stored completions"},
    {"audio", NULL, 2, "this model has no audio output"},
    {"modalities", "[\"text\"]", 2, "this model outputs text only"},
    {"prediction", NULL, 2, "predicted outputs are not implemented"},
    {"web_search_options", NULL, 2, "kiln has no web search"},
    {"use_beam_search", "false", 3, "beam search is not implemented"},
    {"length_penalty", "1", 3, "length_penalty applies to beam search, which is not implemented"},
    {"include_stop_str_in_output", "false", 3, "stop strings are always left out of the output"},
    {"spaces_between_special_tokens", "true", 3, "special tokens are always joined with spaces"},
    {"truncate_prompt_tokens", NULL, 3, "prompts are never truncated; shorten the prompt"},
    {"prompt_logprobs", NULL, 3, "prompt logprobs are not implemented"},
    {"allowed_token_ids", NULL, 3, "use logit_bias instead"},
    {"bad_words", NULL, 3, "bad_words is not implemented"},
    {"logits_processors", NULL, 3, "custom logits processors are not implemented"},
    {"return_tokens_as_token_ids", "false", 3, "not implemented"},
    {"return_token_ids", "false", 3, "not implemented"},
    {"priority", "0", 3, "requests are scheduled first come, first served"},
    {"cache_salt", NULL, 3, "the prefix cache is shared by every request"},
    {"kv_transfer_params", NULL, 3, "disaggregated serving is not implemented"},
    {"vllm_xargs", NULL, 3, "not implemented"},
    {"mm_processor_kwargs", NULL, 3, "this model takes text only"},
    {"chat_template", NULL, 2, "set the template with `kiln serve --chat-template FILE`"},
    {"structural_tag", NULL, 2, "use response_format or tools"},
    {"prompt_embeds", NULL, 1, "prompt embeddings are not accepted"},
    {"echo", "false", 2, "the chat API does not echo the last message"},
};

/* value equals the neutral JSON (numbers by value: 1 == 1.0) */
static bool neutral_value(const json_t *v, const char *neutral)
{
    if (!neutral) return false;
    json_t *n = json_loads(neutral, JSON_DECODE_ANY, NULL);
    bool same = json_is_number(v) && json_is_number(n)
                    ? json_number_value(v) == json_number_value(n)
                    : json_equal(v, n);
    json_decref(n);
    return same;
}

static enum kiln_status refuse_fields(const json_t *root, struct kiln_api_request *r,
                                      struct kiln_api_error *err)
{
    unsigned kind = r->kind == KILN_API_COMPLETION ? 1 : 2;
    for (size_t i = 0; i < sizeof refused_fields / sizeof refused_fields[0]; i++) {
        const struct refused_field *f = &refused_fields[i];
        const json_t *v = json_object_get(root, f->name);
        if (!(f->kinds & kind) || !v || json_is_null(v) || neutral_value(v, f->neutral)) continue;
        if (f->neutral)
            return bad(err, f->name, "'%s' other than %s is not supported: %s", f->name, f->neutral,
                       f->why);
        return bad(err, f->name, "'%s' is not supported: %s", f->name, f->why);
    }
    return KILN_OK;
}

/* chat_template_kwargs (an object of template variables) and continue_final_message, with
 * vLLM's meaning: the last message, an assistant's, is rendered open so the model continues
 * it; it excludes add_generation_prompt. */
static enum kiln_status parse_template_options(const json_t *root, struct kiln_api_request *r,
                                               struct kiln_api_error *err)
{
    if (get_bool(root, "continue_final_message", &r->continue_final_message, err))
        return KILN_ERR_INVALID;
    const json_t *ag = json_object_get(root, "add_generation_prompt");
    if (r->continue_final_message) {
        if (json_is_true(ag))
            return bad(err, "continue_final_message",
                       "Cannot set both 'continue_final_message' and 'add_generation_prompt' to "
                       "true");
        r->add_generation_prompt = false;
        json_t *msgs = json_loads(r->messages_json, 0, NULL);
        const json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
        bool ok = json_is_string(json_object_get(last, "role")) &&
                  !strcmp(json_string_value(json_object_get(last, "role")), "assistant");
        json_decref(msgs);
        if (!ok)
            return bad(err, "continue_final_message",
                       "'continue_final_message' needs an assistant message last");
    }
    const json_t *kw = json_object_get(root, "chat_template_kwargs");
    const json_t *docs = json_object_get(root, "documents");
    if (docs && !json_is_null(docs) && !json_is_array(docs))
        return bad(err, "documents", "'documents' must be a list of objects, got %s",
                   kiln_json_type_name(docs));
    if ((!kw || json_is_null(kw)) && !json_is_array(docs)) return KILN_OK;
    if (kw && !json_is_null(kw) && !json_is_object(kw))
        return bad(err, "chat_template_kwargs", "'chat_template_kwargs' must be an object, got %s",
                   kiln_json_type_name(kw));
    /* vLLM's documents (RAG templates) are one more template variable */
    json_t *vars = json_is_object(kw) ? json_deep_copy(kw) : json_object();
    if (vars && json_is_array(docs) && !json_object_get(vars, "documents"))
        json_object_set(vars, "documents", (json_t *)docs);
    r->template_kwargs_json = vars ? json_dumps(vars, JSON_COMPACT) : NULL;
    json_decref(vars);
    return r->template_kwargs_json ? KILN_OK : nomem(err);
}

/* Parameters kiln does not implement are refused rather than silently ignored. */
static enum kiln_status refuse_unsupported(const json_t *root, struct kiln_api_request *r,
                                           struct kiln_api_error *err)
{
    const json_t *v;
    if (r->kind == KILN_API_COMPLETION) {
        v = json_object_get(root, "suffix");
        if (v && !json_is_null(v) && !(json_is_string(v) && !json_string_length(v)))
            return bad(err, "suffix", "'suffix' is not supported");
        if (r->echo && r->logprobs >= 0)
            return bad(err, "echo", "'echo' together with 'logprobs' is not supported");
    }
    return KILN_OK;
}

static void request_defaults(enum kiln_api_kind kind, struct kiln_api_request *r)
{
    *r = (struct kiln_api_request){.kind = kind,
                                   .temperature = 1.0f,
                                   .top_p = 1.0f,
                                   .n = 1,
                                   .logprobs = -1,
                                   .repetition_penalty = 1.0f,
                                   .skip_special_tokens = true,
                                   .add_generation_prompt = true,
                                   .add_special_tokens = kind == KILN_API_COMPLETION};
}

enum kiln_status kiln_api_parse(enum kiln_api_kind kind, const char *body, size_t len,
                                const struct kiln_api_limits *lim, struct kiln_api_request *out,
                                struct kiln_api_error *err)
{
    request_defaults(kind, out);
    json_t *root;
    if (load_object(body, len, &root, err)) return KILN_ERR_INVALID;
    struct kiln_api_request *r = out;
    enum kiln_status st = get_string(root, "model", &r->model, err);
    if (!st && kind == KILN_API_COMPLETION) {
        st = parse_prompt(root, lim, r, err);
        if (!st) st = get_bool(root, "echo", &r->echo, err);
    }
    if (!st && kind == KILN_API_CHAT) {
        st = parse_messages(root, &r->messages_json, err);
        if (!st) st = get_bool(root, "add_generation_prompt", &r->add_generation_prompt, err);
        if (!st) st = parse_template_options(root, r, err);
        if (!st) st = kiln_api_parse_tools(root, r, err);
    }
    if (!st) st = get_bool(root, "add_special_tokens", &r->add_special_tokens, err);
    if (!st) st = parse_sampling(root, lim, r, err);
    if (!st) st = parse_stream(root, r, err);
    if (!st) st = parse_logprobs(root, r, err);
    if (!st) st = refuse_unsupported(root, r, err);
    if (!st) st = refuse_fields(root, r, err);
    if (!st) st = kiln_api_parse_constraint(root, &r->constraint, err);
    if (!st && kind == KILN_API_CHAT) st = kiln_api_tools_constraint(r, err);
    if (!st && (long long)r->n * (r->n_prompts ? r->n_prompts : 1) > lim->max_choices)
        st = bad(err, "n", "prompts x n must be at most %d", lim->max_choices);
    const json_t *user = json_object_get(root, "user");
    if (!st && user && !json_is_null(user) && !json_is_string(user))
        st = bad(err, "user", "'user' must be a string, got %s", kiln_json_type_name(user));
    json_decref(root);
    if (st) kiln_api_request_free(r);
    return st;
}

void kiln_api_request_free(struct kiln_api_request *r)
{
    free(r->model);
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    free(r->messages_json);
    free(r->template_kwargs_json);
    free(r->tools_json);
    free(r->tool_choice_name);
    if (r->stop)
        for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->stop_ids);
    free(r->bias_ids);
    free(r->bias_vals);
    kiln_api_constraint_free(&r->constraint);
    request_defaults(r->kind, r);
}

enum kiln_status kiln_api_parse_tokenize(const char *body, size_t len,
                                         struct kiln_api_tokenize *out, struct kiln_api_error *err)
{
    *out = (struct kiln_api_tokenize){.add_generation_prompt = true};
    json_t *root;
    if (load_object(body, len, &root, err)) return KILN_ERR_INVALID;
    enum kiln_status st = get_string(root, "model", &out->model, err);
    const json_t *prompt = json_object_get(root, "prompt");
    const json_t *msgs = json_object_get(root, "messages");
    if (!st && prompt && !json_is_null(prompt)) {
        if (!json_is_string(prompt)) {
            st = bad(err, "prompt", "'prompt' must be a string, got %s",
                     kiln_json_type_name(prompt));
        } else {
            out->prompt_len = json_string_length(prompt);
            out->prompt = malloc(out->prompt_len + 1);
            if (!out->prompt)
                st = nomem(err);
            else
                memcpy(out->prompt, json_string_value(prompt), out->prompt_len + 1);
        }
        out->add_special_tokens = true;
    } else if (!st && msgs && !json_is_null(msgs)) {
        st = parse_messages(root, &out->messages_json, err);
    } else if (!st) {
        st = bad(err, "prompt", "either 'prompt' or 'messages' is required");
    }
    if (!st) st = get_bool(root, "add_special_tokens", &out->add_special_tokens, err);
    if (!st) st = get_bool(root, "add_generation_prompt", &out->add_generation_prompt, err);
    json_decref(root);
    if (st) kiln_api_tokenize_free(out);
    return st;
}

void kiln_api_tokenize_free(struct kiln_api_tokenize *t)
{
    free(t->model);
    free(t->prompt);
    free(t->messages_json);
    *t = (struct kiln_api_tokenize){0};
}

enum kiln_status kiln_api_parse_detokenize(const char *body, size_t len,
                                           const struct kiln_api_limits *lim,
                                           struct kiln_api_detokenize *out,
                                           struct kiln_api_error *err)
{
    *out = (struct kiln_api_detokenize){0};
    json_t *root;
    if (load_object(body, len, &root, err)) return KILN_ERR_INVALID;
    enum kiln_status st = get_string(root, "model", &out->model, err);
    const json_t *toks = json_object_get(root, "tokens");
    if (!st && !json_is_array(toks))
        st = bad(err, "tokens", "'tokens' must be a list of token ids");
    if (!st) st = get_ids(toks, "tokens", lim->vocab_size, true, &out->ids, &out->n_ids, err);
    json_decref(root);
    if (st) kiln_api_detokenize_free(out);
    return st;
}

void kiln_api_detokenize_free(struct kiln_api_detokenize *d)
{
    free(d->model);
    free(d->ids);
    *d = (struct kiln_api_detokenize){0};
}
