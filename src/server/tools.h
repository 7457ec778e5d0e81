/* Tool calling for the chat and Responses APIs, and the other chat-template inputs of a
 * request: the request side (tools / tool_choice / parallel_tool_calls and the legacy
 * functions / function_call, validated into struct kiln_api_request), the template variables a
 * request renders with (tools, chat_template_kwargs), continue_final_message's trim of the
 * rendered prompt, the JSON Schema that constrains a required or named call, and the parser of
 * the model's output into calls (Llama 3.1's JSON format: an optional <|python_tag|>, then
 * {"name": ..., "parameters": {...}} objects separated by ';'), incremental for streaming.
 *
 * Pure functions of bytes like api_request.c: no tokenizer, no engine, no sockets, nothing
 * about HTTP or the OpenAI response shapes (generate.c and responses.c build those from the
 * parser's events). It never executes or interprets a tool call. */
#ifndef KILN_SERVER_TOOLS_H
#define KILN_SERVER_TOOLS_H

#include "api.h"

/* tools, tool_choice, parallel_tool_calls, functions, function_call of a chat body (root is the
 * parsed body object). Fills r->tools_json, n_tools, tool_choice, tool_choice_name,
 * parallel_tool_calls, legacy_functions. */
enum kiln_status kiln_api_parse_tools(const json_t *root, struct kiln_api_request *r,
                                      struct kiln_api_error *err);

/* Validates one tools array (chat form {"type":"function","function":{...}}; responses form
 * {"type":"function","name",...} when flat) into the chat form; param names the field in
 * errors. Returns a new array. */
enum kiln_status kiln_tools_normalize(const json_t *tools, bool flat, const char *param,
                                      json_t **out, struct kiln_api_error *err);

/* tool_choice (string or object) against normalized tools. */
enum kiln_status kiln_tools_choice(const json_t *choice, const json_t *tools, const char *param,
                                   struct kiln_api_request *r, struct kiln_api_error *err);

/* The extra template variables of a chat request as a JSON object string (tools, then
 * chat_template_kwargs over them, as vLLM does), or NULL in *out when there are none. */
enum kiln_status kiln_tools_template_vars(const struct kiln_api_request *r, char **out);

/* continue_final_message: cut the rendered prompt just after the last message's content
 * (transformers' rule: the content, stripped, must appear in the rendering). */
enum kiln_status kiln_tools_continue_final(const char *messages_json, char *rendered, size_t *len,
                                           struct kiln_api_error *err);

/* The constraint of a tool request as a GRAMMAR (grammar.h): each call a JSON object
 * {"name": <a declared name>, "parameters": <valid against that tool's parameters schema>}
 * (a `%json` rule per tool); required: one call, or several joined by "; " with parallel calls;
 * named: that function's call; auto: those calls or free text that does not begin with '{' or
 * whitespace, so an output that opens a call is held to a valid one. *out NULL for none / no
 * tools. malloc'ed. */
enum kiln_status kiln_tools_constraint(const struct kiln_api_request *r, char **out);

/* Sets r->constraint from the tools (kiln_api_parse, after response_format and guided_*): a
 * forced call together with another constraint is a 400. */
enum kiln_status kiln_api_tools_constraint(struct kiln_api_request *r, struct kiln_api_error *err);

/* ---- output parser ---- */

enum kiln_tool_event_kind {
    KILN_TOOL_TEXT,       /* plain content: data/len */
    KILN_TOOL_CALL_START, /* call `index` begins: data/len is the function name */
    KILN_TOOL_ARGS,       /* a fragment of call `index`'s arguments (JSON text) */
    KILN_TOOL_CALL_END,   /* call `index` is complete */
};

struct kiln_tool_event {
    enum kiln_tool_event_kind kind;
    int index;
    const char *data;
    size_t len;
};

typedef void (*kiln_tool_emit_fn)(void *ctx, const struct kiln_tool_event *ev);

struct kiln_tool_parser;
struct kiln_tool_parser *kiln_tool_parser_new(bool parallel);
void kiln_tool_parser_free(struct kiln_tool_parser *p);
/* Feeds output text; events come out as soon as they are certain (text that may still start
 * a call is held back). Concatenated ARGS of a call are the raw JSON of its parameters. */
void kiln_tool_parser_push(struct kiln_tool_parser *p, const char *text, size_t len,
                           kiln_tool_emit_fn emit, void *ctx);
/* End of output: releases what was held back. */
void kiln_tool_parser_finish(struct kiln_tool_parser *p, kiln_tool_emit_fn emit, void *ctx);
/* Calls started so far. */
int kiln_tool_parser_calls(const struct kiln_tool_parser *p);

/* Whole output -> content and calls ([{"name","arguments"(string)}...]; NULL when the output
 * is not a well-formed call list, and then *content is the whole text). */
enum kiln_status kiln_tools_parse_output(const char *text, size_t len, bool parallel,
                                         char **content, size_t *content_len, json_t **calls);

#endif
