/* OpenAI response shapes: the envelope of completions, chat completions and their stream
 * chunks, usage, finish reasons, and the two logprobs formats (legacy completions arrays and
 * chat's per-token objects). */
#include "api.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

json_t *kiln_api_envelope(const char *id, const char *object, long long created, const char *model,
                          json_t *choices, const struct kiln_api_usage *usage)
{
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:s,s:o}", "id", id, "object", object, "created",
                          (json_int_t)created, "model", model, "system_fingerprint",
                          KILN_API_FINGERPRINT, "choices", choices);
    if (!o || !usage) return o;
    json_t *u = json_pack("{s:i,s:i,s:i}", "prompt_tokens", usage->prompt_tokens,
                          "completion_tokens", usage->completion_tokens, "total_tokens",
                          usage->prompt_tokens + usage->completion_tokens);
    if (u && usage->cached_tokens > 0)
        json_object_set_new(u, "prompt_tokens_details",
                            json_pack("{s:i}", "cached_tokens", usage->cached_tokens));
    if (!u || json_object_set_new(o, "usage", u)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *kiln_api_finish_reason(enum kiln_finish finish)
{
    if (finish == KILN_FINISH_STOP) return json_string("stop");
    if (finish == KILN_FINISH_LENGTH) return json_string("length");
    return json_null();
}

json_t *kiln_api_logprob_value(float lp)
{
    return json_real(isfinite(lp) ? (double)lp : -9999.0);
}

static json_t *byte_list(const char *s, size_t len)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < len; i++)
        if (json_array_append_new(a, json_integer((unsigned char)s[i]))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

json_t *kiln_api_chat_logprob(const struct kiln_api_token_logprob *t)
{
    json_t *top = json_array();
    for (int i = 0; top && i < t->n_top; i++) {
        json_t *e = json_pack("{s:s%,s:o,s:o}", "token", t->top_text[i], t->top_len[i], "logprob",
                              kiln_api_logprob_value(t->top_logprob[i]), "bytes",
                              byte_list(t->top_text[i], t->top_len[i]));
        if (!e || json_array_append_new(top, e)) {
            json_decref(top);
            top = NULL;
        }
    }
    if (!top) return NULL;
    return json_pack("{s:s%,s:o,s:o,s:o}", "token", t->text, t->len, "logprob",
                     kiln_api_logprob_value(t->logprob), "bytes", byte_list(t->text, t->len),
                     "top_logprobs", top);
}

json_t *kiln_api_completion_logprobs_new(void)
{
    return json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

void kiln_api_completion_logprobs_add(json_t *lp, const struct kiln_api_token_logprob *t,
                                      size_t offset)
{
    json_array_append_new(json_object_get(lp, "tokens"), json_stringn(t->text, t->len));
    json_array_append_new(json_object_get(lp, "token_logprobs"),
                          kiln_api_logprob_value(t->logprob));
    json_t *top = json_object();
    for (int i = 0; top && i < t->n_top; i++) {
        /* Object keys are NUL-terminated: a token whose text holds NUL is keyed up to it. */
        char *key = strndup(t->top_text[i], t->top_len[i]);
        if (key) json_object_set_new(top, key, kiln_api_logprob_value(t->top_logprob[i]));
        free(key);
    }
    json_array_append_new(json_object_get(lp, "top_logprobs"), top ? top : json_null());
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
}

char *kiln_api_sse(const json_t *obj, size_t *len)
{
    char *body = json_dumps(obj, JSON_COMPACT);
    if (!body) return NULL;
    size_t n = strlen(body);
    char *out = malloc(n + 9);
    if (out) {
        memcpy(out, "data: ", 6);
        memcpy(out + 6, body, n);
        memcpy(out + 6 + n, "\n\n", 3);
        *len = n + 8;
    }
    free(body);
    return out;
}
