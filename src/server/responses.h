/* POST /v1/responses (responses.c): the request translated into a chat request, and the
 * output items and stream events built from the generated text. Stateless: nothing is stored.
 * Nothing here touches sockets: events go out through the send callback (generate.c's stream
 * writer). */
#ifndef KILN_SERVER_RESPONSES_H
#define KILN_SERVER_RESPONSES_H

#include "server_impl.h"

/* A Responses body -> the chat request it means (*out, free with kiln_api_request_free) and
 * the request fields the response object echoes (*echo, a new reference). */
enum kiln_status kiln_api_parse_responses(const char *body, size_t len,
                                          const struct kiln_api_limits *lim,
                                          struct kiln_api_request *out, json_t **echo,
                                          struct kiln_api_error *err);

typedef void (*kiln_responses_send_fn)(void *ctx, const char *data, size_t len);

/* One response being generated (n = 1). Steals echo. */
struct kiln_responses;
struct kiln_responses *kiln_responses_new(struct kiln_server *s, const struct kiln_api_request *r,
                                          json_t *echo, const char *id, long long created,
                                          const char *model, kiln_responses_send_fn send,
                                          void *send_ctx);
void kiln_responses_free(struct kiln_responses *x);
/* Streaming: response.created and response.in_progress. */
void kiln_responses_start(struct kiln_responses *x);
/* Generated text (tool calls parsed out when tools are on). */
void kiln_responses_text(struct kiln_responses *x, const char *text, size_t len);
/* The end: streaming sends the closing events and response.completed (or .incomplete) and
 * returns NULL; otherwise returns the response object's JSON (malloc'ed). */
char *kiln_responses_finish(struct kiln_responses *x, enum kiln_finish finish,
                            const struct kiln_api_usage *usage);
/* Streaming: an "error" event. */
void kiln_responses_error(struct kiln_responses *x, const struct kiln_api_error *err);

#endif
