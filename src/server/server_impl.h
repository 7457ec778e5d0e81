/* Inside the server (not a public header): the server object, one generation call per
 * completions/chat request, and the helpers server.c and generate.c share. */
#ifndef KILN_SERVER_IMPL_H
#define KILN_SERVER_IMPL_H

#include <event2/event.h>
#include <event2/http.h> /* enum evhttp_cmd_type only: the transport is transport.c */
#include <pthread.h>
#include <stdbool.h>

#include "api.h"
#include "metrics.h"
#include "offload.h"
#include "server.h"

enum server_state { SERVER_LOADING, SERVER_READY, SERVER_DRAINING, SERVER_FAILED };

#define GRAMMAR_CACHE_ENTRIES 256 /* compiled constraints kept for reuse */

struct call;
struct http_conn;
struct http_req; /* one request on a client connection (transport.c) */

struct kiln_server {
    struct kiln_server_options opt; /* strings below are owned copies */
    char *host, *model_name, *api_key;
    struct event_base *base;
    struct evconnlistener *listener; /* NULL once draining (no new connections) */
    struct event *ev_accept_resume;  /* accept paused after EMFILE */
    struct http_conn *conns;         /* open client connections (doubly linked) */
    int n_conns;
    int spare_fd;    /* a reserved descriptor for answering connections when out of fds */
    bool out_of_fds; /* an accept-failure episode is under way (warned once) */
    int port;
    struct event *ev_notify;  /* engine -> loop */
    struct event *ev_handoff; /* loader -> loop (ready or failed) */
    struct event *ev_sigterm, *ev_sigint;
    struct event *ev_deadline; /* shutdown: hard stop after the drain timeout */
    enum server_state state;
    int exit_status;
    bool closing; /* kiln_server_free is tearing down */

    pthread_mutex_t handoff_mu; /* guards the three fields below */
    bool handoff_ready, handoff_failed;
    struct kiln_server_model handoff;
    char fail_msg[512];

    struct kiln_server_model m; /* valid from SERVER_READY on */
    /* structured output: the tokenizer's vocabulary for the constraint engine and the compiled
     * constraints (built by kiln_server_ready; valid from SERVER_READY on) */
    struct kiln_grammar_vocab *grammar_vocab;
    struct kiln_grammar_cache *grammars;
    struct kiln_api_limits limits;
    struct kiln_metrics metrics;
    struct call *calls; /* generation calls still alive (doubly linked) */
    int n_calls;
    int n_sending;   /* final replies queued and not yet written out */
    int n_preparing; /* generation requests parsed off the loop (offload.c) */
    struct kiln_offload *offload;
    uint64_t id_key, id_counter; /* response ids: splitmix64(id_key + counter) */
    long long started;           /* unix time, /v1/models "created" */
};

/* One HTTP request being answered (for logging and metrics). */
struct http_ctx {
    struct kiln_server *s;
    struct http_req *req;
    const char *endpoint; /* route, for metrics */
    const char *path;     /* the request's path ("/" when empty) */
    double t0;            /* kiln_now() when the request arrived */
};

/* Replies with a JSON body (takes nothing), logs the request and counts it. */
void server_reply_json(struct http_ctx *h, int status, const char *body, size_t len,
                       int prompt_tokens, int completion_tokens);
void server_reply_error(struct http_ctx *h, const struct kiln_api_error *err);
/* Replies with any body (copied; NULL for none), logs the request and counts it. headers: NULL
 * or name, value pairs ended by a NULL name. A HEAD request gets the headers and the length
 * only. content_type NULL: none (a 304). */
void server_reply_bytes(struct http_ctx *h, int status, const char *content_type,
                        const char *const *headers, const void *body, size_t len);
/* A request header's value, or NULL. */
const char *server_request_header(struct http_ctx *h, const char *name);
void server_log_request(struct http_ctx *h, int status, int prompt_tokens, int completion_tokens);
/* Counts a final reply until it is written out (or the client is gone), so a drain does not
 * exit under it. */
void server_track_reply(struct kiln_server *s, struct http_req *req);
/* Draining and nothing left to answer or write: leave the event loop. */
void server_maybe_exit(struct kiln_server *s);
/* "cmpl-<32 hex>" */
void server_make_id(struct kiln_server *s, const char *prefix, char *out, size_t cap);
/* NULL model (absent in the request) or the served name; else a 404 in err. */
enum kiln_status server_check_model(struct kiln_server *s, const char *model,
                                    struct kiln_api_error *err);

/* transport.c: connections and HTTP/1.1 framing. A handler gets a request from
 * server_dispatch and either answers it before returning or watches it (server_watch_client)
 * until it does: after the gone callback the request must not be touched. */
enum kiln_status server_listen(struct kiln_server *s, struct kiln_error *err);
void server_stop_listening(struct kiln_server *s);
void server_close_all(struct kiln_server *s);
struct kiln_server *server_req_server(const struct http_req *req);
const char *server_req_method(const struct http_req *req);
enum evhttp_cmd_type server_req_command(const struct http_req *req);
const char *server_req_target(const struct http_req *req);
const char *server_req_path(const struct http_req *req); /* target without the query */
const char *server_req_header(const struct http_req *req, const char *name); /* NULL if absent */
const char *server_req_body(const struct http_req *req, size_t *len);
/* The body, now the caller's to free (the request keeps an empty one). */
char *server_req_take_body(struct http_req *req, size_t *len);
void server_add_header(struct http_req *req, const char *name, const char *value);
/* A whole reply with Content-Length. */
void server_send(struct http_req *req, int status, const char *content_type, const char *body,
                 size_t len);
/* A streamed reply: headers now, then chunks, then the end. */
void server_stream_start(struct http_req *req, int status, const char *content_type);
void server_stream_chunk(struct http_req *req, const char *data, size_t len);
void server_stream_end(struct http_req *req);
/* gone(arg) runs once if the client resets, hangs up, or stalls past --idle-timeout before the
 * reply is complete; NULL stops watching. */
void server_watch_client(struct http_req *req, void (*gone)(void *arg), void *arg);
/* done(arg) runs once the final reply is written out or its client is gone. */
void server_on_reply_done(struct http_req *req, void (*done)(void *arg), void *arg);
/* server.c, called by the transport: a complete request, and an error of the HTTP layer. */
void server_dispatch(struct http_req *req);
void server_http_error(struct http_req *req, int status, const char *message);
/* web.c: GET/HEAD of the chat page and its assets (h->path). */
void web_handle(struct http_ctx *h);

/* generate.c */
void generate_init(void); /* once, before any request: jansson's counting allocator */
void generate_handle(struct http_ctx *h, enum kiln_api_kind kind, const char *body, size_t len);
/* A parsed request (taken: freed here) from tokenization on; responses_echo non-NULL (taken)
 * makes it a /v1/responses call whose output responses.c shapes. */
void generate_start(struct http_ctx *h, struct kiln_api_request *r, json_t *responses_echo);
/* POST /v1/responses (responses.c) */
void responses_handle(struct http_ctx *h, const char *body, size_t len);
void generate_on_notify(evutil_socket_t fd, short what, void *arg);
/* Shutdown: cancel every live generation (their clients get a 503 / an error event). */
void generate_cancel_all(struct kiln_server *s);
/* kiln_server_free: forget calls without touching the (already freed) engine. */
void generate_forget_all(struct kiln_server *s);
/* Text of one token for logprobs (malloc'ed). */
enum kiln_status server_token_text(struct kiln_server *s, int32_t id, char **text, size_t *len);

#endif
