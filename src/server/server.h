/* kiln serve: an OpenAI-compatible HTTP server on libevent's evhttp.
 *
 * One thread runs the event loop: it parses and validates requests, tokenizes, submits to the
 * engine, and turns engine events into JSON responses or SSE chunks. The engine thread only
 * calls kiln_server_notify (a libevent user event made active across threads); the loop then
 * drains events with kiln_engine_poll. Nothing here blocks on the engine.
 *
 * Lifecycle: kiln_server_create binds the listener at once, so /health answers 503 while the
 * caller loads the model on another thread and hands it over with kiln_server_ready (or
 * kiln_server_fail). SIGTERM/SIGINT stop accepting, let running requests finish for up to
 * shutdown_timeout seconds (then cancel them), and make kiln_server_run return 0. */
#ifndef KILN_SERVER_SERVER_H
#define KILN_SERVER_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

struct kiln_server_options {
    const char *host;          /* default 127.0.0.1 */
    int port;                  /* default 8000; 0 picks a free port (see kiln_server_port) */
    const char *model_name;    /* served model name (required) */
    const char *api_key;       /* NULL or "": no authentication */
    size_t max_body_bytes;     /* 413 beyond (default 16 MiB) */
    size_t max_header_bytes;   /* 431 beyond (default 16 KiB) */
    int max_n;                 /* most choices per prompt (default 16) */
    int max_choices;           /* most prompts x n per request (default 128) */
    double shutdown_timeout_s; /* SIGTERM: running requests get this long (default 30) */
    int idle_timeout_s;        /* keep-alive connections idle this long are closed (60) */
    int header_timeout_s;      /* a request head must arrive whole this long after its first
                                  byte, else 408 and close (60) */
    bool web_ui;               /* the chat page at GET / (default true; --no-web-ui) */
};

void kiln_server_options_default(struct kiln_server_options *opt);

/* What the server needs of a loaded model. Owned by the caller, who frees them after
 * kiln_server_run returns (engine first). */
struct kiln_server_model {
    struct kiln_engine *engine;
    struct kiln_tokenizer *tok;
    int max_seq_len;   /* prompt + completion */
    int max_input_len; /* prompt */
};

struct kiln_server;

/* Creates the event loop and binds host:port (an error when the address is taken). */
enum kiln_status kiln_server_create(const struct kiln_server_options *opt, struct kiln_server **out,
                                    struct kiln_error *err);
/* The port actually bound (useful with port 0). */
int kiln_server_port(const struct kiln_server *s);
/* The engine's notify callback (kiln_engine_options.notify, arg = the server); any thread. */
void kiln_server_notify(void *server);
/* Any thread, once: the model is ready, or loading failed (kiln_server_run then returns 1).
 * kiln_server_ready also indexes the tokenizer's vocabulary for structured output (on the
 * calling thread; the server frees it). */
void kiln_server_ready(struct kiln_server *s, const struct kiln_server_model *m);
void kiln_server_fail(struct kiln_server *s, const char *message);
/* Runs the loop on the calling thread until shutdown; returns the process exit status. */
int kiln_server_run(struct kiln_server *s);
/* Authorization header check for --api-key: "Bearer KEY", compared in constant time. A
 * NULL or empty key lets everything through. */
bool kiln_server_auth_ok(const char *authorization, const char *key);
/* Closes every connection; call after the engine is freed (no more events). */
void kiln_server_free(struct kiln_server *s);

#endif
