/* Generation requests: POST /v1/completions and /v1/chat/completions.
 *
 * A request becomes one "call": its prompts are tokenized (chat: rendered with the chat
 * template first), checked against the context length, and submitted to the engine as
 * prompts x n engine requests, each a "choice" whose pointer rides in kiln_request.user. The
 * engine's events come back through generate_on_notify on the loop thread and are either
 * streamed at once (SSE) or collected until every choice has finished.
 *
 * A client that goes away (reset, hang-up, or a stream it stopped reading for --idle-timeout
 * seconds) is reported by the transport's gone callback, streaming or not; its engine requests
 * are cancelled at once, which frees their KV blocks within one engine step. */
#include <event2/buffer.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "server_impl.h"
#include "responses.h"
#include "tools.h"

struct choice {
    struct call *call;
    int index;  /* in the response's choices */
    int prompt; /* which prompt */
    uint64_t id;
    bool live; /* submitted, final event not seen yet */
    enum kiln_finish finish;
    struct evbuffer *text; /* non-streaming: the text so far */
    size_t text_bytes;     /* bytes of text so far (echo included): completions text_offset */
    json_t *logprobs;      /* non-streaming: completions object or chat content array */
    int completion_tokens, cached_tokens;
    double t_last;                  /* engine time of the previous token (inter-token latency) */
    struct kiln_tool_parser *tools; /* streaming with tools: the output's calls so far */
};

struct call {
    struct kiln_server *s;
    struct call *prev, *next;
    struct http_ctx h; /* h.req NULL once the reply is sent or the client left */
    enum kiln_api_kind kind;
    bool stream, include_usage, echo;
    int logprobs;
    char id[48];
    long long created;
    int n_prompts, n_choices, n_live;
    int *prompt_len;  /* (n_prompts,) */
    char **echo_text; /* (n_prompts,) completions echo */
    size_t *echo_len;
    struct choice *choices; /* (n_choices,) */
    bool first_token;
    bool tools;                  /* chat output is parsed for tool calls (tools.c) */
    bool parallel_tools;         /* more than one call per answer */
    bool legacy_fn;              /* legacy functions: message.function_call */
    bool failed;                 /* an engine error: 500 */
    struct kiln_responses *resp; /* POST /v1/responses: its output items (responses.c) */
    char fail_msg[256];
};

static const char *object_name(const struct call *c, bool chunk)
{
    if (c->kind == KILN_API_COMPLETION) return "text_completion";
    return chunk ? "chat.completion.chunk" : "chat.completion";
}

/* ---- lifetime ---- */

static void call_free(struct call *c)
{
    struct kiln_server *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else if (s->calls == c)
        s->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n_calls--;
    for (int i = 0; i < c->n_choices; i++) {
        if (c->choices[i].text) evbuffer_free(c->choices[i].text);
        kiln_tool_parser_free(c->choices[i].tools);
        json_decref(c->choices[i].logprobs);
    }
    for (int p = 0; c->echo_text && p < c->n_prompts; p++) free(c->echo_text[p]);
    free(c->echo_text);
    free(c->echo_len);
    free(c->prompt_len);
    free(c->choices);
    kiln_responses_free(c->resp);
    free(c);
    server_maybe_exit(s);
}

/* Stops watching the client (before the final reply, or when it is gone). */
static void call_detach(struct call *c)
{
    if (c->h.req) server_watch_client(c->h.req, NULL, NULL);
    c->h.req = NULL;
    c->s->metrics.in_flight--;
}

static void call_abandon(struct call *c)
{
    if (!c->h.req) return;
    struct kiln_server *s = c->s;
    int completion = 0;
    for (int i = 0; i < c->n_choices; i++) completion += c->choices[i].completion_tokens;
    int prompt = 0;
    for (int p = 0; p < c->n_prompts; p++) prompt += c->prompt_len[p];
    server_log_request(&c->h, 499, prompt, completion);
    call_detach(c);
    if (c->n_live) {
        s->metrics.cancelled++;
        for (int i = 0; i < c->n_choices; i++)
            if (c->choices[i].live) kiln_engine_cancel(s->m.engine, c->choices[i].id);
    } else {
        call_free(c);
    }
}

/* The transport frees the request when this returns. */
static void on_client_gone(void *arg)
{
    call_abandon(arg);
}

static void watch_client(struct call *c)
{
    server_watch_client(c->h.req, on_client_gone, c);
}

/* ---- streaming ---- */

static void send_chunk_text(struct call *c, const char *data, size_t len)
{
    if (c->h.req) server_stream_chunk(c->h.req, data, len);
}

static void send_chunk(struct call *c, json_t *obj)
{
    if (!obj) return;
    if (c->include_usage && !json_object_get(obj, "usage"))
        json_object_set_new(obj, "usage", json_null());
    size_t len;
    char *sse = kiln_api_sse(obj, &len);
    json_decref(obj);
    if (sse) send_chunk_text(c, sse, len);
    free(sse);
}

/* One choice's piece of a chunk: completions {"index","text","logprobs","finish_reason"},
 * chat {"index","delta":{...},"logprobs","finish_reason"}. text NULL: no content. */
static json_t *chunk_choice(struct call *c, const struct choice *ch, const char *text, size_t len,
                            json_t *logprobs, enum kiln_finish finish, bool role)
{
    if (!logprobs) logprobs = json_null();
    if (c->kind == KILN_API_COMPLETION)
        return json_pack("{s:i,s:s%,s:o,s:o}", "index", ch->index, "text", text ? text : "",
                         text ? len : 0, "logprobs", logprobs, "finish_reason",
                         kiln_api_finish_reason(finish));
    json_t *delta = json_object();
    if (delta && role) json_object_set_new(delta, "role", json_string("assistant"));
    if (delta && (text || role))
        json_object_set_new(delta, "content", json_stringn(text ? text : "", text ? len : 0));
    /* content is an array in chunks too: this token's entry alone */
    if (!json_is_null(logprobs)) logprobs = json_pack("{s:[o]}", "content", logprobs);
    return json_pack("{s:i,s:o,s:o,s:o}", "index", ch->index, "delta", delta, "logprobs", logprobs,
                     "finish_reason", kiln_api_finish_reason(finish));
}

static void send_choice(struct call *c, json_t *one)
{
    json_t *choices = json_array();
    if (!choices || !one || json_array_append_new(choices, one)) {
        json_decref(choices);
        return;
    }
    send_chunk(c, kiln_api_envelope(c->id, object_name(c, true), c->created, c->s->model_name,
                                    choices, NULL));
}

static void stream_choice(struct call *c, const struct choice *ch, const char *text, size_t len,
                          json_t *logprobs, enum kiln_finish finish, bool role)
{
    send_choice(c, chunk_choice(c, ch, text, len, logprobs, finish, role));
}

/* finish_reason of a chat choice: "tool_calls" ("function_call" for legacy functions) when the
 * model stopped after making calls. */
static json_t *chat_finish(const struct call *c, enum kiln_finish finish, int calls)
{
    if (calls && finish == KILN_FINISH_STOP)
        return json_string(c->legacy_fn ? "function_call" : "tool_calls");
    return kiln_api_finish_reason(finish);
}

/* Streaming with tools: each parser event becomes a chunk; the token's logprobs ride on the
 * first one. */
struct tool_stream {
    struct call *c;
    struct choice *ch;
    json_t *lp;
};

static void tool_chunk(void *arg, const struct kiln_tool_event *ev)
{
    struct tool_stream *ts = arg;
    struct call *c = ts->c;
    json_t *delta = NULL;
    if (ev->kind == KILN_TOOL_TEXT) {
        delta = json_pack("{s:s%}", "content", ev->data, ev->len);
    } else if (ev->kind == KILN_TOOL_CALL_START) {
        char id[48];
        server_make_id(c->s, "call_", id, sizeof id);
        json_t *fn = json_pack("{s:s%,s:s}", "name", ev->data, ev->len, "arguments", "");
        delta = c->legacy_fn ? json_pack("{s:o}", "function_call", fn)
                             : json_pack("{s:[{s:i,s:s,s:s,s:o}]}", "tool_calls", "index",
                                         ev->index, "id", id, "type", "function", "function", fn);
    } else if (ev->kind == KILN_TOOL_ARGS) {
        json_t *fn = json_pack("{s:s%}", "arguments", ev->data, ev->len);
        delta = c->legacy_fn ? json_pack("{s:o}", "function_call", fn)
                             : json_pack("{s:[{s:i,s:o}]}", "tool_calls", "index", ev->index,
                                         "function", fn);
    } else {
        return;
    }
    json_t *lp = ts->lp ? json_pack("{s:[o]}", "content", ts->lp) : json_null();
    ts->lp = NULL;
    send_choice(c, json_pack("{s:i,s:o,s:o,s:n}", "index", ts->ch->index, "delta", delta,
                             "logprobs", lp, "finish_reason"));
}

static void stream_tools(struct call *c, struct choice *ch, const char *text, size_t len,
                         json_t *lp, enum kiln_finish fin)
{
    struct tool_stream ts = {c, ch, lp};
    kiln_tool_parser_push(ch->tools, text, len, tool_chunk, &ts);
    if (fin != KILN_FINISH_NONE) kiln_tool_parser_finish(ch->tools, tool_chunk, &ts);
    if (ts.lp) /* nothing went out for this token: its logprobs alone */
        send_choice(c, json_pack("{s:i,s:{},s:{s:[o]},s:n}", "index", ch->index, "delta",
                                 "logprobs", "content", ts.lp, "finish_reason"));
    if (fin != KILN_FINISH_NONE)
        send_choice(c, json_pack("{s:i,s:{},s:n,s:o}", "index", ch->index, "delta", "logprobs",
                                 "finish_reason",
                                 chat_finish(c, fin, kiln_tool_parser_calls(ch->tools))));
}

static void stream_start(struct call *c)
{
    server_add_header(c->h.req, "Cache-Control", "no-cache");
    server_add_header(c->h.req, "X-Accel-Buffering", "no");
    server_stream_start(c->h.req, 200, "text/event-stream");
    if (c->resp) {
        kiln_responses_start(c->resp);
        return;
    }
    for (int i = 0; i < c->n_choices; i++) {
        struct choice *ch = &c->choices[i];
        if (c->kind == KILN_API_CHAT)
            stream_choice(c, ch, NULL, 0, NULL, KILN_FINISH_NONE, true);
        else if (c->echo)
            stream_choice(c, ch, c->echo_text[ch->prompt], c->echo_len[ch->prompt], NULL,
                          KILN_FINISH_NONE, false);
    }
}

/* ---- events ---- */

static json_t *token_logprobs(struct call *c, struct choice *ch, const struct kiln_event *ev)
{
    struct kiln_server *s = c->s;
    struct kiln_api_token_logprob t = {.logprob = ev->logprob, .n_top = 0};
    char *text = NULL, *top[KILN_MAX_LOGPROBS] = {0};
    size_t len = 0;
    if (server_token_text(s, ev->token, &text, &len)) return NULL;
    t.text = text;
    t.len = len;
    int n_top = ev->n_top < c->logprobs ? ev->n_top : c->logprobs;
    for (int i = 0; i < n_top; i++) {
        size_t tl = 0;
        if (server_token_text(s, ev->top_ids[i], &top[i], &tl)) break;
        t.top_text[i] = top[i];
        t.top_len[i] = tl;
        t.top_logprob[i] = ev->top_logprobs[i];
        t.n_top = i + 1;
    }
    json_t *out;
    if (c->kind == KILN_API_CHAT) {
        out = kiln_api_chat_logprob(&t);
    } else {
        out = kiln_api_completion_logprobs_new();
        if (out) kiln_api_completion_logprobs_add(out, &t, ch->text_bytes);
    }
    free(text);
    for (int i = 0; i < t.n_top; i++) free(top[i]);
    return out;
}

static void deliver(struct call *c, struct choice *ch, const struct kiln_event *ev)
{
    const char *text = ev->text ? ev->text : "";
    size_t len = ev->text ? ev->text_len : 0;
    json_t *lp = ev->token >= 0 && c->logprobs >= 0 ? token_logprobs(c, ch, ev) : NULL;
    enum kiln_finish fin = ev->finish == KILN_FINISH_STOP || ev->finish == KILN_FINISH_LENGTH
                               ? ev->finish
                               : KILN_FINISH_NONE;
    if (c->resp) {
        if (len) kiln_responses_text(c->resp, text, len);
        json_decref(lp);
    } else if (c->stream && ch->tools) {
        stream_tools(c, ch, text, len, lp, fin);
    } else if (c->stream) {
        if (len || lp || fin != KILN_FINISH_NONE)
            stream_choice(c, ch, len ? text : NULL, len, lp, fin, false);
        else
            json_decref(lp);
    } else {
        if (len) evbuffer_add(ch->text, text, len);
        if (lp && c->kind == KILN_API_CHAT) {
            json_array_append(ch->logprobs, lp);
        } else if (lp) {
            static const char *const keys[] = {"tokens", "token_logprobs", "top_logprobs",
                                               "text_offset"};
            for (int k = 0; k < 4; k++)
                json_array_extend(json_object_get(ch->logprobs, keys[k]),
                                  json_object_get(lp, keys[k]));
        }
        json_decref(lp);
    }
    ch->text_bytes += len;
}

/* The assistant message of a finished chat choice: with tools, its calls parsed out of the
 * text (content null when there is nothing else). */
static json_t *chat_message(struct call *c, const char *text, size_t len)
{
    char *content = NULL;
    size_t clen = 0;
    json_t *calls = NULL;
    if (!c->tools || kiln_tools_parse_output(text, len, c->parallel_tools, &content, &clen, &calls))
        return json_pack("{s:s,s:s%}", "role", "assistant", "content", text, len);
    json_t *msg = json_pack("{s:s,s:o}", "role", "assistant", "content",
                            clen || !calls ? json_stringn(content, clen) : json_null());
    free(content);
    if (!calls) return msg;
    json_t *out = json_array();
    size_t i;
    json_t *call;
    json_array_foreach(calls, i, call)
    {
        char id[48];
        server_make_id(c->s, "call_", id, sizeof id);
        json_array_append_new(
            out, json_pack("{s:s,s:s,s:O}", "id", id, "type", "function", "function", call));
    }
    if (c->legacy_fn)
        json_object_set(msg, "function_call", json_array_get(calls, 0));
    else
        json_object_set(msg, "tool_calls", out);
    json_decref(out);
    json_decref(calls);
    return msg;
}

/* The final JSON reply (body malloc'ed, taken; NULL: out of memory, a 500). */
static void reply_body(struct http_ctx *h, char *body, const struct kiln_api_usage *usage)
{
    if (body) {
        server_reply_json(h, 200, body, strlen(body), usage->prompt_tokens,
                          usage->completion_tokens);
    } else {
        struct kiln_api_error err;
        kiln_api_errorf(&err, 500, NULL, NULL, "out of memory");
        server_reply_error(h, &err);
    }
    free(body);
}

static void reply_complete(struct call *c)
{
    struct kiln_server *s = c->s;
    struct kiln_api_usage usage = {0};
    for (int p = 0; p < c->n_prompts; p++) {
        usage.prompt_tokens += c->prompt_len[p];
        int cached = 0;
        for (int i = 0; i < c->n_choices; i++)
            if (c->choices[i].prompt == p && c->choices[i].cached_tokens > cached)
                cached = c->choices[i].cached_tokens;
        usage.cached_tokens += cached;
    }
    bool cancelled = false;
    for (int i = 0; i < c->n_choices; i++) {
        usage.completion_tokens += c->choices[i].completion_tokens;
        cancelled |= c->choices[i].finish == KILN_FINISH_CANCELLED;
    }
    kiln_histogram_observe(&s->metrics.latency, kiln_now() - c->h.t0);
    struct http_ctx h = c->h;
    struct kiln_api_error err = {0};
    if (c->failed)
        kiln_api_errorf(&err, 500, NULL, NULL, "generation failed: %s", c->fail_msg);
    else if (cancelled)
        kiln_api_errorf(&err, 503, "shutting_down", NULL,
                        "The server is shutting down; the request was stopped");
    if (c->stream && c->resp) {
        if (err.status)
            kiln_responses_error(c->resp, &err);
        else
            kiln_responses_finish(c->resp, c->choices[0].finish, &usage);
    } else if (c->stream) {
        if (err.status) {
            char *body = kiln_api_error_body(&err);
            char *sse = body ? malloc(strlen(body) + 9) : NULL;
            if (sse) {
                size_t n = (size_t)sprintf(sse, "data: %s\n\n", body);
                send_chunk_text(c, sse, n);
            }
            free(sse);
            free(body);
        } else if (c->include_usage) {
            send_chunk(c, kiln_api_envelope(c->id, object_name(c, true), c->created, s->model_name,
                                            json_array(), &usage));
        }
    }
    if (c->stream) {
        if (!c->resp) send_chunk_text(c, "data: [DONE]\n\n", 14);
        call_detach(c);
        server_log_request(&h, err.status ? err.status : 200, usage.prompt_tokens,
                           usage.completion_tokens);
        server_track_reply(s, h.req);
        server_stream_end(h.req);
        return;
    }
    call_detach(c);
    server_track_reply(s, h.req);
    if (err.status) {
        server_reply_error(&h, &err);
        return;
    }
    if (c->resp) {
        reply_body(&h, kiln_responses_finish(c->resp, c->choices[0].finish, &usage), &usage);
        return;
    }
    json_t *choices = json_array();
    for (int i = 0; choices && i < c->n_choices; i++) {
        struct choice *ch = &c->choices[i];
        size_t len = evbuffer_get_length(ch->text);
        const char *text = len ? (const char *)evbuffer_pullup(ch->text, -1) : "";
        json_t *lp = ch->logprobs ? json_incref(ch->logprobs) : json_null();
        json_t *one;
        if (c->kind == KILN_API_COMPLETION) {
            one = json_pack("{s:i,s:s%,s:o,s:o}", "index", ch->index, "text", text, len, "logprobs",
                            lp, "finish_reason", kiln_api_finish_reason(ch->finish));
        } else {
            if (!json_is_null(lp)) lp = json_pack("{s:o}", "content", lp);
            one = json_pack("{s:i,s:o,s:o,s:o}", "index", ch->index, "message",
                            chat_message(c, text, len), "logprobs", lp, "finish_reason",
                            kiln_api_finish_reason(ch->finish));
            if (one && ch->finish == KILN_FINISH_STOP &&
                (json_object_get(json_object_get(one, "message"), "tool_calls") ||
                 json_object_get(json_object_get(one, "message"), "function_call")))
                json_object_set_new(one, "finish_reason", chat_finish(c, ch->finish, 1));
        }
        if (!one || json_array_append_new(choices, one)) {
            json_decref(choices);
            choices = NULL;
        }
    }
    json_t *o = choices ? kiln_api_envelope(c->id, object_name(c, false), c->created, s->model_name,
                                            choices, &usage)
                        : NULL;
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    reply_body(&h, body, &usage);
}

static void on_event(struct kiln_server *s, struct kiln_event *ev)
{
    struct choice *ch = ev->user;
    struct call *c = ch->call;
    if (ev->token >= 0) {
        s->metrics.generation_tokens++;
        ch->completion_tokens++;
        if (!c->first_token) {
            c->first_token = true;
            kiln_histogram_observe(&s->metrics.ttft, ev->time - c->h.t0);
        } else if (ch->t_last > 0.0) {
            kiln_histogram_observe(&s->metrics.itl, ev->time - ch->t_last);
        }
        ch->t_last = ev->time;
    }
    if (c->h.req && !c->failed) deliver(c, ch, ev);
    if (ev->finish == KILN_FINISH_NONE) return;
    ch->live = false;
    ch->finish = ev->finish;
    ch->cached_tokens = ev->cached_tokens;
    if (ev->completion_tokens > ch->completion_tokens)
        ch->completion_tokens = ev->completion_tokens;
    if (ev->finish == KILN_FINISH_ERROR && !c->failed) {
        c->failed = true;
        snprintf(c->fail_msg, sizeof c->fail_msg, "%s", ev->error);
        KILN_ERROR("request %s: %s", c->id, ev->error);
    }
    if (--c->n_live) return;
    if (c->h.req) reply_complete(c);
    call_free(c);
}

void generate_on_notify(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kiln_server *s = arg;
    if (s->state != SERVER_READY && s->state != SERVER_DRAINING) return;
    enum { BATCH = 64, ROUNDS = 64 };
    struct kiln_event ev[BATCH];
    for (int round = 0; round < ROUNDS; round++) {
        size_t n = kiln_engine_poll(s->m.engine, ev, BATCH);
        for (size_t i = 0; i < n; i++) {
            on_event(s, &ev[i]);
            kiln_event_release(&ev[i]);
        }
        if (n < BATCH) return;
    }
    /* Still more: let sockets run first, then come back. */
    event_active(s->ev_notify, 0, 0);
}

/* ---- admission ---- */

static enum kiln_status context_error(struct kiln_api_error *err, int limit, int prompt,
                                      int completion, bool chat)
{
    /* max_tokens may be up to INT32_MAX: the sum in 64 bits. */
    return kiln_api_errorf(
        err, 400, "context_length_exceeded", chat ? "messages" : "prompt",
        "This model's maximum context length is %d tokens. However, you requested %lld tokens (%d "
        "in the %s, %d in the completion). Please reduce the length of the %s or completion.",
        limit, (long long)prompt + completion, prompt, chat ? "messages" : "prompt", completion,
        chat ? "messages" : "prompt");
}

/* Prompt token ids of every prompt: (n_prompts,) arrays, malloc'ed. */
static enum kiln_status tokenize_prompts(struct kiln_server *s, const struct kiln_api_request *r,
                                         int32_t **ids, size_t *n, struct kiln_api_error *err)
{
    struct kiln_error e;
    enum kiln_status st = KILN_OK;
    if (r->kind == KILN_API_CHAT) {
        if (!kiln_tokenizer_has_chat_template(s->m.tok))
            return kiln_api_errorf(err, 400, NULL, "messages",
                                   "This model has no chat template; start the server with "
                                   "--chat-template FILE or use /v1/completions");
        char *text = NULL, *vars = NULL;
        size_t len = 0;
        if (kiln_tools_template_vars(r, &vars))
            return kiln_api_errorf(err, 500, NULL, NULL, "out of memory");
        st = kiln_tokenizer_apply_chat_template(s->m.tok, r->messages_json,
                                                r->add_generation_prompt, vars, &text, &len, &e);
        free(vars);
        if (!st && r->continue_final_message &&
            kiln_tools_continue_final(r->messages_json, text, &len, err)) {
            free(text);
            return KILN_ERR_INVALID;
        }
        if (!st)
            st = kiln_tokenizer_encode(s->m.tok, text, len, r->add_special_tokens, &ids[0], &n[0],
                                       &e);
        free(text);
        if (st)
            return kiln_api_errorf(err, st == KILN_ERR_NOMEM ? 500 : 400, NULL, "messages", "%s",
                                   e.msg);
        if (!n[0])
            return kiln_api_errorf(err, 400, NULL, "messages",
                                   "The messages render to an empty prompt");
        return KILN_OK;
    }
    for (int p = 0; p < r->n_prompts; p++) {
        const struct kiln_api_prompt *q = &r->prompts[p];
        if (q->ids) {
            ids[p] = malloc((size_t)q->n_ids * sizeof(int32_t));
            if (!ids[p]) return kiln_api_errorf(err, 500, NULL, NULL, "out of memory");
            memcpy(ids[p], q->ids, (size_t)q->n_ids * sizeof(int32_t));
            n[p] = (size_t)q->n_ids;
            continue;
        }
        st = kiln_tokenizer_encode(s->m.tok, q->text, q->text_len, r->add_special_tokens, &ids[p],
                                   &n[p], &e);
        if (st)
            return kiln_api_errorf(err, st == KILN_ERR_NOMEM ? 500 : 400, NULL, "prompt", "%s",
                                   e.msg);
        if (!n[p]) return kiln_api_errorf(err, 400, NULL, "prompt", "The prompt must not be empty");
    }
    return KILN_OK;
}

static void fill_request(const struct kiln_api_request *r, struct kiln_request *kr)
{
    kiln_request_defaults(kr);
    kr->min_tokens = r->min_tokens;
    kr->ignore_eos = r->ignore_eos;
    kr->temperature = r->temperature;
    kr->top_p = r->top_p;
    kr->min_p = r->min_p;
    kr->top_k = r->top_k;
    kr->presence_penalty = r->presence_penalty;
    kr->frequency_penalty = r->frequency_penalty;
    kr->repetition_penalty = r->repetition_penalty;
    kr->bias_ids = r->bias_ids;
    kr->bias_vals = r->bias_vals;
    kr->n_bias = r->n_bias;
    kr->stop = (const char *const *)r->stop;
    kr->n_stop = r->n_stop;
    kr->stop_ids = r->stop_ids;
    kr->n_stop_ids = r->n_stop_ids;
    kr->logprobs = r->logprobs;
    kr->skip_special_tokens = r->skip_special_tokens;
    kr->detokenize = true;
}

/* The request's constraint, compiled (through the cache) into *g; NULL when there is none. */
static enum kiln_status compile_constraint(struct kiln_server *s,
                                           const struct kiln_api_constraint *c,
                                           struct kiln_grammar **g, struct kiln_api_error *err)
{
    *g = NULL;
    if (c->kind == KILN_CONSTRAINT_NONE) return KILN_OK;
    if (!s->grammars)
        return kiln_api_errorf(err, 400, NULL, c->param,
                               "structured output is not available for this model's tokenizer "
                               "(see the server log)");
    struct kiln_constraint_spec spec = {.kind = c->kind, .text = c->text, .len = c->len};
    struct kiln_error e = {0};
    struct kiln_grammar_options opts = {.whitespace = c->ws};
    enum kiln_status st = kiln_grammar_cache_get_opts(s->grammars, &spec, &opts, g, &e);
    if (st) {
        *g = NULL;
        if (st == KILN_ERR_NOMEM) return kiln_api_errorf(err, 500, NULL, NULL, "%s", e.msg);
        return kiln_api_errorf(err, 400, NULL, c->param, "'%s': %s", c->param, e.msg);
    }
    return KILN_OK;
}

static uint64_t mix_seed(uint64_t seed, int j)
{
    /* Choice 0 keeps the request's seed (n = 1 matches a single request); the others get
     * independent streams. */
    if (j == 0) return seed;
    uint64_t x = seed + 0x9e3779b97f4a7c15ull * (uint64_t)j;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int submit_status(enum kiln_submit_error why, const char **code)
{
    *code = NULL;
    switch (why) {
    case KILN_SUBMIT_INVALID:
        return 400;
    case KILN_SUBMIT_CONTEXT_LENGTH:
        *code = "context_length_exceeded";
        return 400;
    case KILN_SUBMIT_QUEUE_FULL:
        *code = "rate_limit_exceeded";
        return 429;
    case KILN_SUBMIT_SHUTTING_DOWN:
        *code = "shutting_down";
        return 503;
    default:
        return 500;
    }
}

static void resp_write(void *arg, const char *data, size_t len)
{
    send_chunk_text(arg, data, len);
}

static struct call *call_new(struct kiln_server *s, const struct http_ctx *h,
                             const struct kiln_api_request *r, json_t *echo)
{
    struct call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->s = s;
    c->h = *h;
    c->kind = r->kind;
    c->stream = r->stream;
    c->include_usage = r->include_usage;
    c->echo = r->echo;
    c->logprobs = r->logprobs;
    c->tools = r->kind == KILN_API_CHAT && r->tool_choice != KILN_TOOL_CHOICE_NONE;
    c->parallel_tools = r->parallel_tool_calls;
    c->legacy_fn = r->legacy_functions;
    c->created = (long long)time(NULL);
    server_make_id(s,
                   echo                       ? "resp_"
                   : r->kind == KILN_API_CHAT ? "chatcmpl-"
                                              : "cmpl-",
                   c->id, sizeof c->id);
    c->n_prompts = r->kind == KILN_API_CHAT ? 1 : r->n_prompts;
    c->n_choices = c->n_prompts * r->n;
    c->prompt_len = calloc((size_t)c->n_prompts, sizeof *c->prompt_len);
    c->choices = calloc((size_t)c->n_choices, sizeof *c->choices);
    bool ok = c->prompt_len && c->choices;
    if (ok && echo) {
        c->resp = kiln_responses_new(s, r, echo, c->id, c->created, s->model_name, resp_write, c);
        echo = NULL;
        c->tools = false; /* responses.c parses the calls */
        ok = c->resp != NULL;
    }
    json_decref(echo);
    if (ok && r->echo) {
        c->echo_text = calloc((size_t)c->n_prompts, sizeof *c->echo_text);
        c->echo_len = calloc((size_t)c->n_prompts, sizeof *c->echo_len);
        ok = c->echo_text && c->echo_len;
    }
    for (int i = 0; ok && i < c->n_choices; i++) {
        struct choice *ch = &c->choices[i];
        ch->call = c;
        ch->index = i;
        ch->prompt = i / r->n;
        if (r->stream && c->tools && !c->resp) {
            ch->tools = kiln_tool_parser_new(c->parallel_tools);
            ok = ch->tools != NULL;
        }
        if (!r->stream) {
            ch->text = evbuffer_new();
            ok = ch->text != NULL;
            if (ok && r->logprobs >= 0)
                ch->logprobs =
                    r->kind == KILN_API_CHAT ? json_array() : kiln_api_completion_logprobs_new();
            ok = ok && (r->logprobs < 0 || ch->logprobs);
        }
    }
    c->next = s->calls;
    if (s->calls) s->calls->prev = c;
    s->calls = c;
    s->n_calls++;
    s->metrics.in_flight++;
    if (!ok) {
        c->h.req = NULL;
        s->metrics.in_flight--;
        call_free(c);
        return NULL;
    }
    return c;
}

/* Completions echo: the prompt's text (token-id prompts decoded). */
static enum kiln_status echo_prompts(struct call *c, const struct kiln_api_request *r,
                                     int32_t **ids, const size_t *n)
{
    struct kiln_error e;
    for (int p = 0; p < c->n_prompts; p++) {
        const struct kiln_api_prompt *q = &r->prompts[p];
        if (q->text) {
            c->echo_text[p] = malloc(q->text_len + 1);
            if (!c->echo_text[p]) return KILN_ERR_NOMEM;
            memcpy(c->echo_text[p], q->text, q->text_len + 1);
            c->echo_len[p] = q->text_len;
        } else if (kiln_tokenizer_decode(c->s->m.tok, ids[p], n[p], false, &c->echo_text[p],
                                         &c->echo_len[p], &e)) {
            return KILN_ERR_NOMEM;
        }
    }
    for (int i = 0; i < c->n_choices; i++) {
        struct choice *ch = &c->choices[i];
        if (ch->text) evbuffer_add(ch->text, c->echo_text[ch->prompt], c->echo_len[ch->prompt]);
        ch->text_bytes = c->echo_len[ch->prompt];
    }
    return KILN_OK;
}

/* A request up to admission: what needs no server state but the immutable tokenizer and
 * limits (parse, model check, tokenize, fit the context), then the rest on the loop. */
struct prep {
    struct kiln_server *s;
    struct http_ctx h; /* h.req NULL when the client left while this was off the loop */
    enum kiln_api_kind kind;
    const char *body;
    size_t len;
    char *owned; /* the body, taken from the request when offloaded */
    bool parsed;
    struct kiln_api_request r;
    struct kiln_api_error err;
    enum kiln_status st;
    int n_prompts;
    int32_t **ids;                /* (n_prompts,) prompt token ids */
    size_t *n;                    /* (n_prompts,) */
    int *max_tokens;              /* (n_prompts,) */
    struct kiln_grammar *grammar; /* the request's constraint, compiled; NULL for none */
    json_t *responses_echo;       /* /v1/responses: the request as its reply echoes it */
};

/* Bodies above this are parsed and tokenized on an offload thread: a few milliseconds of the
 * loop at most for the ones below. */
#define OFFLOAD_MIN_BYTES (16u << 10)

/* The JSON tree of one request may take this many times --max-body-bytes; past it the parse
 * fails as out of memory and the request gets a 413. Every byte jansson allocates during the
 * parse counts (frees are not subtracted). Jansson needs about 1 KB per small object: the
 * issue's 14 MB body of 420,000 one-word messages takes 27 times its size, which still passes
 * at the default limit. Large bodies are parsed one at a time (one offload thread), so this is
 * also about the most that parsing holds at once. */
#define JSON_MEMORY_FACTOR 32

static _Thread_local size_t json_budget;
static _Thread_local bool json_counting, json_over;

static void *json_counting_malloc(size_t size)
{
    if (json_counting) {
        if (size > json_budget) {
            json_over = true;
            return NULL;
        }
        json_budget -= size;
    }
    return malloc(size);
}

void generate_init(void)
{
    json_set_alloc_funcs(json_counting_malloc, free);
}

static void prepare(struct prep *p)
{
    struct kiln_server *s = p->s;
    struct kiln_api_request *r = &p->r;
    struct kiln_api_error *err = &p->err;
    if (!p->parsed) { /* generate_start hands over a request already parsed */
        json_budget = s->opt.max_body_bytes * JSON_MEMORY_FACTOR;
        json_counting = true;
        json_over = false;
        p->st = kiln_api_parse(p->kind, p->body, p->len, &s->limits, r, err);
        json_counting = false;
        if (p->st) {
            if (json_over)
                kiln_api_errorf(err, 413, "request_too_large", NULL,
                                "The request body holds too many JSON values (its parse needs "
                                "over %d times --max-body-bytes of memory)",
                                JSON_MEMORY_FACTOR);
            return;
        }
        p->parsed = true;
    }
    enum kiln_api_kind kind = p->kind;
    int n_prompts = p->n_prompts = kind == KILN_API_CHAT ? 1 : r->n_prompts;
    int32_t **ids = p->ids = calloc((size_t)n_prompts, sizeof *ids);
    size_t *n = p->n = calloc((size_t)n_prompts, sizeof *n);
    int *max_tokens = p->max_tokens = calloc((size_t)n_prompts, sizeof *max_tokens);
    enum kiln_status st = KILN_OK;
    if (!ids || !n || !max_tokens) st = kiln_api_errorf(err, 500, NULL, NULL, "out of memory");
    if (!st) st = server_check_model(s, r->model, err);
    if (!st) st = compile_constraint(s, &r->constraint, &p->grammar, err);
    if (!st) st = tokenize_prompts(s, r, ids, n, err);
    for (int q = 0; !st && q < n_prompts; q++) {
        int limit = s->m.max_seq_len, prompt = (int)n[q];
        int room = limit - prompt;
        if (prompt > s->m.max_input_len || room <= 0) {
            st = context_error(err, limit, prompt, r->max_tokens ? r->max_tokens : 1,
                               kind == KILN_API_CHAT);
            if (prompt > s->m.max_input_len && room > 0)
                snprintf(err->message, sizeof err->message,
                         "This model's maximum input length is %d tokens. However, your %s has "
                         "%d tokens. Please reduce the length of the %s.",
                         s->m.max_input_len, kind == KILN_API_CHAT ? "messages" : "prompt", prompt,
                         kind == KILN_API_CHAT ? "messages" : "prompt");
            break;
        }
        if (r->max_tokens) {
            if (r->max_tokens > room) {
                st = context_error(err, limit, prompt, r->max_tokens, kind == KILN_API_CHAT);
                break;
            }
            max_tokens[q] = r->max_tokens;
        } else {
            /* OpenAI's defaults: 16 for completions, the rest of the context for chat. */
            max_tokens[q] = kind == KILN_API_COMPLETION && room > 16 ? 16 : room;
        }
        if (r->min_tokens > max_tokens[q]) {
            st = kiln_api_errorf(err, 400, NULL, "min_tokens",
                                 "'min_tokens' (%d) exceeds the tokens left for the completion "
                                 "(%d)",
                                 r->min_tokens, max_tokens[q]);
            break;
        }
    }
    p->st = st;
}

static void prep_free(struct prep *p)
{
    for (int q = 0; p->ids && q < p->n_prompts; q++) free(p->ids[q]);
    free(p->ids);
    free(p->n);
    free(p->max_tokens);
    if (p->parsed) kiln_api_request_free(&p->r);
    free(p->owned);
    json_decref(p->responses_echo);
    if (p->grammar) kiln_grammar_unref(p->grammar); /* the engine holds its own references */
    p->responses_echo = NULL;
    p->grammar = NULL;
    /* Twice is harmless (a job the offload never ran is freed again by its done). */
    p->ids = NULL;
    p->n = NULL;
    p->max_tokens = NULL;
    p->parsed = false;
    p->owned = NULL;
}

/* On the loop: create the call and submit its choices. */
static void admit(struct prep *p)
{
    struct kiln_server *s = p->s;
    struct http_ctx *h = &p->h;
    struct kiln_api_request r = p->r;
    struct kiln_api_error err = p->err;
    enum kiln_status st = p->st;
    int32_t **ids = p->ids;
    size_t *n = p->n;
    int *max_tokens = p->max_tokens;
    struct call *c = NULL;
    if (!st && s->state != SERVER_READY)
        st = kiln_api_errorf(&err, 503, "shutting_down", NULL, "The server is shutting down");
    if (!st) {
        c = call_new(s, h, &r, p->responses_echo);
        p->responses_echo = NULL;
        if (!c) st = kiln_api_errorf(&err, 500, NULL, NULL, "out of memory");
    }
    if (!st && r.echo && echo_prompts(c, &r, ids, n))
        st = kiln_api_errorf(&err, 500, NULL, NULL, "out of memory");
    for (int q = 0; !st && q < c->n_prompts; q++) c->prompt_len[q] = (int)n[q];
    for (int i = 0; !st && i < (c ? c->n_choices : 0); i++) {
        struct choice *ch = &c->choices[i];
        struct kiln_request kr;
        fill_request(&r, &kr);
        kr.prompt = ids[ch->prompt];
        kr.n_prompt = (int)n[ch->prompt];
        kr.max_tokens = max_tokens[ch->prompt];
        kr.has_seed = r.has_seed;
        kr.seed = r.has_seed ? mix_seed(r.seed, i % r.n) : 0;
        kr.grammar = p->grammar; /* each choice gets its own matcher */
        kr.user = ch;
        enum kiln_submit_error why = KILN_SUBMIT_OK;
        struct kiln_error e;
        if (kiln_engine_submit_ex(s->m.engine, &kr, &ch->id, &why, &e)) {
            const char *code;
            int status = submit_status(why, &code);
            st = kiln_api_errorf(&err, status, code,
                                 why == KILN_SUBMIT_CONTEXT_LENGTH ? "max_tokens" : NULL, "%s",
                                 e.msg);
            break;
        }
        ch->live = true;
        c->n_live++;
    }
    if (st) {
        if (c) {
            /* Choices already queued are cancelled; the call lives until their final events. */
            call_detach(c);
            for (int i = 0; i < c->n_choices; i++)
                if (c->choices[i].live) kiln_engine_cancel(s->m.engine, c->choices[i].id);
            if (!c->n_live) call_free(c);
        }
        server_reply_error(h, &err);
    } else {
        for (int q = 0; q < c->n_prompts; q++) s->metrics.prompt_tokens += (uint64_t)n[q];
        watch_client(c);
        if (c->stream) stream_start(c);
    }
}

static void prep_work(void *arg)
{
    prepare(arg);
}

static void prep_gone(void *arg)
{
    struct prep *p = arg;
    server_log_request(&p->h, 499, 0, 0);
    p->h.req = NULL;
}

/* Freeing a large request's JSON tree and token ids takes as long as building them, and
 * glibc keeps the freed pages: both on the thread, not the loop. */
static void prep_free_work(void *arg)
{
    prep_free(arg);
    malloc_trim(0);
}

static void prep_free_done(void *arg)
{
    prep_free(arg);
    free(arg);
}

static void prep_done(void *arg)
{
    struct prep *p = arg;
    struct kiln_server *s = p->s;
    s->n_preparing--;
    if (p->h.req) server_watch_client(p->h.req, NULL, NULL);
    if (p->h.req && !s->closing) admit(p);
    if (s->closing || !kiln_offload_run(s->offload, prep_free_work, prep_free_done, p)) {
        prep_free(p);
        free(p);
    }
    server_maybe_exit(s);
}

void generate_handle(struct http_ctx *h, enum kiln_api_kind kind, const char *body, size_t len)
{
    struct kiln_server *s = h->s;
    struct prep local = {.s = s, .h = *h, .kind = kind, .body = body, .len = len};
    struct prep *p = len >= OFFLOAD_MIN_BYTES && s->offload ? malloc(sizeof *p) : NULL;
    if (p) {
        *p = local;
        /* The body leaves the request: the client may go while the thread reads it. */
        p->owned = server_req_take_body(h->req, &p->len);
        p->body = p->owned;
        server_watch_client(h->req, prep_gone, p);
        if (kiln_offload_run(s->offload, prep_work, prep_done, p)) {
            s->n_preparing++;
            return;
        }
        server_watch_client(h->req, NULL, NULL);
        local = *p;
        free(p);
    }
    prepare(&local);
    admit(&local);
    prep_free(&local);
}

/* A request parsed elsewhere (/v1/responses), taken over with the echo of its reply. */
void generate_start(struct http_ctx *h, struct kiln_api_request *req, json_t *responses_echo)
{
    struct prep local = {.s = h->s,
                         .h = *h,
                         .kind = req->kind,
                         .parsed = true,
                         .r = *req,
                         .responses_echo = responses_echo};
    prepare(&local);
    admit(&local);
    prep_free(&local);
}

void generate_cancel_all(struct kiln_server *s)
{
    for (struct call *c = s->calls; c; c = c->next)
        for (int i = 0; i < c->n_choices; i++)
            if (c->choices[i].live) kiln_engine_cancel(s->m.engine, c->choices[i].id);
}

void generate_forget_all(struct kiln_server *s)
{
    while (s->calls) {
        struct call *c = s->calls;
        if (c->h.req) call_detach(c);
        call_free(c);
    }
}
