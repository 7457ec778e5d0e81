/* libFuzzer target for the server's request parser: arbitrary bytes as the body of
 * /v1/completions, /v1/chat/completions, /tokenize and /detokenize. Every input must either
 * parse into a request whose fields respect the limits, or be rejected with a 4xx error and a
 * message; nothing may crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "server/api.h"

static void check_error(const struct kiln_api_error *err)
{
    if (err->status < 400 || err->status > 599 || !err->message[0]) abort();
    char *body = kiln_api_error_body(err);
    free(body);
}

static void check_request(const struct kiln_api_request *r, const struct kiln_api_limits *lim)
{
    if (r->n < 1 || r->n > lim->max_n) abort();
    if (r->kind == KILN_API_COMPLETION && (r->n_prompts < 1 || !r->prompts)) abort();
    if (r->kind == KILN_API_CHAT && !r->messages_json) abort();
    for (int p = 0; p < r->n_prompts; p++) {
        const struct kiln_api_prompt *q = &r->prompts[p];
        if (!q->text == !q->ids) abort();
        for (int i = 0; i < q->n_ids; i++)
            if (q->ids[i] < 0 || q->ids[i] >= lim->vocab_size) abort();
        if (q->text && !q->text_len) abort();
    }
    if (!(r->temperature >= 0.0f) || !(r->top_p > 0.0f && r->top_p <= 1.0f)) abort();
    if (r->max_tokens < 0 || r->min_tokens < 0) abort();
    if (r->logprobs < -1 || r->logprobs > KILN_API_MAX_LOGPROBS) abort();
    for (int i = 0; i < r->n_bias; i++)
        if (r->bias_ids[i] < 0 || r->bias_ids[i] >= lim->vocab_size) abort();
    for (int i = 0; i < r->n_stop; i++)
        if (!r->stop[i][0]) abort();
    /* a constraint has its text (NUL-terminated at len) and names its field; none has neither */
    const struct kiln_api_constraint *c = &r->constraint;
    if ((c->kind == KILN_CONSTRAINT_NONE) != !c->text) abort();
    if (c->text && (c->text[c->len] || !c->param || !c->param[0])) abort();
    if (c->kind > KILN_CONSTRAINT_GRAMMAR) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct kiln_api_limits lim = {
        .vocab_size = 128256, .max_n = 16, .max_choices = 128, .max_stop = 16};
    const char *body = (const char *)data;
    struct kiln_api_error err;
    for (int kind = KILN_API_COMPLETION; kind <= KILN_API_CHAT; kind++) {
        struct kiln_api_request r;
        memset(&err, 0, sizeof err);
        if (kiln_api_parse((enum kiln_api_kind)kind, body, size, &lim, &r, &err)) {
            check_error(&err);
        } else {
            check_request(&r, &lim);
            kiln_api_request_free(&r);
        }
    }
    struct kiln_api_tokenize t;
    if (kiln_api_parse_tokenize(body, size, &t, &err))
        check_error(&err);
    else
        kiln_api_tokenize_free(&t);
    struct kiln_api_detokenize d;
    if (kiln_api_parse_detokenize(body, size, &lim, &d, &err))
        check_error(&err);
    else
        kiln_api_detokenize_free(&d);
    return 0;
}
