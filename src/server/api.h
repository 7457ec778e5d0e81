/* The OpenAI API as kiln speaks it: request bodies of POST /v1/completions and
 * /v1/chat/completions (and the vLLM-style /tokenize and /detokenize) parsed and validated
 * into plain structs, the OpenAI error object, and the JSON shapes of responses and stream
 * chunks.
 *
 * Everything here is a pure function of bytes and a few limits: no tokenizer, no engine, no
 * sockets. That keeps the parser of untrusted bodies unit-tested and fuzzed on its own
 * (fuzz/fuzz_request.c); server.c does tokenization, context-length checks and submission. */
#ifndef KILN_SERVER_API_H
#define KILN_SERVER_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "grammar/grammar.h"
#include "runtime/engine.h"

#define KILN_API_MAX_LOGPROBS KILN_MAX_LOGPROBS

/* An error answered to the client: the HTTP status and OpenAI's error object
 * {"error":{"message","type","param","code"}}. type and code point to static strings. */
struct kiln_api_error {
    int status;
    const char *type; /* "invalid_request_error", "server_error", ... */
    const char *code; /* NULL -> null */
    char param[96];   /* "" -> null */
    char message[768];
};

/* Fills err and returns KILN_ERR_INVALID (KILN_ERR_INTERNAL for 5xx), so callers can write
 * `return kiln_api_errorf(err, 400, NULL, "temperature", "...")`. type NULL picks the usual
 * one for the status. */
enum kiln_status kiln_api_errorf(struct kiln_api_error *err, int status, const char *code,
                                 const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* {"error":{...}} as a malloc'ed JSON string (NULL when out of memory). */
char *kiln_api_error_body(const struct kiln_api_error *err);

enum kiln_api_kind { KILN_API_COMPLETION, KILN_API_CHAT };

/* What the parser checks against (from the model and the server options). */
struct kiln_api_limits {
    int32_t vocab_size; /* token ids must lie in [0, vocab_size) */
    int max_n;          /* most choices per prompt */
    int max_choices;    /* most prompts x n per request */
    int max_stop;       /* most stop strings and stop token ids, each */
};

/* One completions prompt: text or token ids. */
struct kiln_api_prompt {
    char *text; /* NUL-terminated, may contain NUL (text_len); NULL for ids */
    size_t text_len;
    int32_t *ids; /* (n_ids,) when given as token ids */
    int n_ids;
};

/* tool_choice (chat), function_call (legacy), tool_choice (Responses). */
enum kiln_api_tool_choice {
    KILN_TOOL_CHOICE_NONE,     /* tools (if any) in the prompt, output never parsed as calls */
    KILN_TOOL_CHOICE_AUTO,     /* the model chooses; output parsed as calls when it is one */
    KILN_TOOL_CHOICE_REQUIRED, /* at least one call, constrained to the declared tools */
    KILN_TOOL_CHOICE_NAMED,    /* exactly the named function, constrained */
};

/* Structured output asked for (api_constraint.c): kind and text as the constraint engine takes
 * them (struct kiln_constraint_spec; text is NUL-terminated, len bytes). param names the
 * request field it came from (a static string such as "guided_json"), for the 400 a compile
 * error gets. Tool calling sets it too (the server compiles it the same way). */
struct kiln_api_constraint {
    enum kiln_constraint_kind kind; /* KILN_CONSTRAINT_NONE: unconstrained */
    char *text;
    size_t len;
    const char *param;
    enum kiln_grammar_ws ws; /* json_whitespace: compact (default) or indent */
};

struct kiln_api_request {
    enum kiln_api_kind kind;
    char *model; /* NULL when absent */
    /* completions */
    struct kiln_api_prompt *prompts; /* (n_prompts,) */
    int n_prompts;
    bool echo;
    /* chat: messages normalized for the chat template: [{"role","content"[,"name"]...}] with
     * string content (text parts joined by "\n") */
    char *messages_json;
    bool add_generation_prompt;
    bool continue_final_message; /* render without closing the last (assistant) message */
    char *template_kwargs_json;  /* chat_template_kwargs: a JSON object, or NULL */
    /* chat: tool calling (tools.c); tools_json NULL without tools */
    char *tools_json; /* [{"type":"function","function":{"name",...}}...] as the template sees */
    int n_tools;
    enum kiln_api_tool_choice tool_choice;
    char *tool_choice_name; /* KILN_TOOL_CHOICE_NAMED */
    bool parallel_tool_calls;
    bool legacy_functions; /* functions/function_call: answer with message.function_call */
    /* both */
    int max_tokens; /* 0: not given (completions: 16; chat: the rest of the context) */
    int min_tokens;
    float temperature, top_p, min_p;
    int top_k; /* <= 0: off */
    int n;
    bool has_seed;
    uint64_t seed;
    char **stop; /* (n_stop,) non-empty strings */
    int n_stop;
    int32_t *stop_ids; /* (n_stop_ids,) */
    int n_stop_ids;
    bool stream, include_usage;
    int logprobs; /* -1: none; else alternatives per token (chat: top_logprobs) */
    float presence_penalty, frequency_penalty, repetition_penalty;
    int32_t *bias_ids; /* (n_bias,) logit_bias */
    float *bias_vals;
    int n_bias;
    bool ignore_eos, skip_special_tokens;
    bool add_special_tokens; /* tokenize with BOS: completions true, chat false (as vLLM) */
    struct kiln_api_constraint constraint;
};

/* body (len bytes, untrusted) -> *out. On failure err says what to answer (always a 4xx for
 * bad input) and *out holds nothing to free. */
enum kiln_status kiln_api_parse(enum kiln_api_kind kind, const char *body, size_t len,
                                const struct kiln_api_limits *lim, struct kiln_api_request *out,
                                struct kiln_api_error *err);
void kiln_api_request_free(struct kiln_api_request *r);

/* The structured-output fields of a request body (response_format, guided_*,
 * structured_outputs) -> *c; more than one form, an unknown type or a malformed value is a 400
 * naming the field. On failure *c holds nothing to free. */
enum kiln_status kiln_api_parse_constraint(const json_t *root, struct kiln_api_constraint *c,
                                           struct kiln_api_error *err);
void kiln_api_constraint_free(struct kiln_api_constraint *c);

/* POST /tokenize: {"prompt": "..."} or {"messages": [...]}, plus add_special_tokens
 * (default true for a prompt, false for messages) and add_generation_prompt (default true). */
struct kiln_api_tokenize {
    char *model;
    char *prompt; /* NULL with messages */
    size_t prompt_len;
    char *messages_json; /* normalized like kiln_api_request.messages_json */
    bool add_special_tokens, add_generation_prompt;
};
enum kiln_status kiln_api_parse_tokenize(const char *body, size_t len,
                                         struct kiln_api_tokenize *out, struct kiln_api_error *err);
void kiln_api_tokenize_free(struct kiln_api_tokenize *t);

/* POST /detokenize: {"tokens": [ids]} */
struct kiln_api_detokenize {
    char *model;
    int32_t *ids;
    int n_ids;
};
enum kiln_status kiln_api_parse_detokenize(const char *body, size_t len,
                                           const struct kiln_api_limits *lim,
                                           struct kiln_api_detokenize *out,
                                           struct kiln_api_error *err);
void kiln_api_detokenize_free(struct kiln_api_detokenize *d);

/* ---- Responses (api_response.c) ---- */

struct kiln_api_usage {
    int prompt_tokens, completion_tokens, cached_tokens;
};

/* system_fingerprint of every response and chunk: the kiln version (the backend configuration
 * that affects determinism is the same for every request of one server). */
#define KILN_API_FINGERPRINT "fp_kiln_" KILN_VERSION

/* The envelope shared by responses and chunks:
 * {"id","object","created","model","system_fingerprint","choices":choices[,"usage"]}. Steals
 * choices. */
json_t *kiln_api_envelope(const char *id, const char *object, long long created, const char *model,
                          json_t *choices, const struct kiln_api_usage *usage);

/* "stop", "length", or null while running (and for cancelled or failed choices, which never
 * reach a client as a normal finish). */
json_t *kiln_api_finish_reason(enum kiln_finish finish);

/* Logprobs of one generated token: its text, logprob, and the alternatives. */
struct kiln_api_token_logprob {
    const char *text;
    size_t len;
    float logprob;
    int n_top;
    const char *top_text[KILN_API_MAX_LOGPROBS];
    size_t top_len[KILN_API_MAX_LOGPROBS];
    float top_logprob[KILN_API_MAX_LOGPROBS];
};

/* Chat: one entry of choices[].logprobs.content:
 * {"token","logprob","bytes":[...],"top_logprobs":[{"token","logprob","bytes"}...]} */
json_t *kiln_api_chat_logprob(const struct kiln_api_token_logprob *t);

/* Completions: choices[].logprobs = {"tokens","token_logprobs","top_logprobs","text_offset"};
 * kiln_api_completion_logprobs_new makes the empty object, _add appends one token generated
 * at text offset `offset` of the choice's text. */
json_t *kiln_api_completion_logprobs_new(void);
void kiln_api_completion_logprobs_add(json_t *lp, const struct kiln_api_token_logprob *t,
                                      size_t offset);

/* JSON number for a logprob: -inf (a token with zero probability) becomes -9999.0, the value
 * vLLM reports, since JSON has no infinities. */
json_t *kiln_api_logprob_value(float lp);

/* Server-sent events: "data: <json>\n\n". Returns a malloc'ed string (NULL when out of
 * memory); json_dumps flags compact. */
char *kiln_api_sse(const json_t *obj, size_t *len);

#endif
