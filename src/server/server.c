/* The HTTP side: routing, authentication, size limits, the small endpoints
 * (/health, /version, /metrics, /v1/models, /tokenize, /detokenize), the hand-over of the
 * loaded model, and graceful shutdown. Generation requests continue in generate.c. */
#include "server_impl.h"

#include <errno.h>
#include <event2/thread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

void kiln_server_options_default(struct kiln_server_options *opt)
{
    *opt = (struct kiln_server_options){.host = "127.0.0.1",
                                        .port = 8000,
                                        .max_body_bytes = 16u << 20,
                                        .max_header_bytes = 16u << 10,
                                        .max_n = 16,
                                        .max_choices = 128,
                                        .shutdown_timeout_s = 30.0,
                                        .idle_timeout_s = 60,
                                        .header_timeout_s = 60,
                                        .web_ui = true};
}

/* Compares every byte of the expected key whatever the input, so the time taken says nothing
 * about how much of a guess was right (only the key's length, which is not secret enough to
 * matter). */
bool kiln_server_auth_ok(const char *authorization, const char *key)
{
    if (!key || !*key) return true;
    if (!authorization) return false;
    static const char bearer[] = "Bearer ";
    if (strncasecmp(authorization, bearer, sizeof bearer - 1)) return false;
    const char *given = authorization + sizeof bearer - 1;
    size_t glen = strlen(given), klen = strlen(key);
    volatile unsigned char diff = glen != klen;
    for (size_t i = 0; i < klen; i++) {
        unsigned char g = i < glen ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)key[i]);
    }
    return diff == 0;
}

void server_log_request(struct http_ctx *h, int status, int prompt_tokens, int completion_tokens)
{
    struct kiln_server *s = h->s;
    double dt = kiln_now() - h->t0;
    kiln_metrics_request(&s->metrics, h->endpoint, status);
    /* The target is the client's bytes: printable ASCII and obs-text only (http.c). */
    KILN_INFO("%s %.200s %d prompt_tokens=%d completion_tokens=%d %.3fs", server_req_method(h->req),
              server_req_target(h->req), status, prompt_tokens, completion_tokens, dt);
}

/* Replies with any body: headers (name, value pairs ended by a NULL name, may be NULL) first.
 * While draining, replies carry Connection: close (the transport adds it); a HEAD request gets
 * the headers and the length GET would have (the transport leaves the body out). */
static void reply_bytes(struct http_ctx *h, int status, const char *content_type,
                        const char *const *headers, const void *body, size_t len, int prompt_tokens,
                        int completion_tokens)
{
    for (const char *const *kv = headers; kv && kv[0]; kv += 2)
        server_add_header(h->req, kv[0], kv[1]);
    server_log_request(h, status, prompt_tokens, completion_tokens);
    server_send(h->req, status, content_type, body, len);
}

/* X-Request-Id: the client's when it is a sane token (1-128 characters of [A-Za-z0-9._:-]),
 * else a fresh one, so a log line and a client report can be matched. */
static void set_request_id(struct http_ctx *h)
{
    const char *given = server_req_header(h->req, "X-Request-Id");
    size_t n = given ? strspn(given, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789._:-")
                     : 0;
    char id[48];
    if (!given || !n || n > 128 || given[n]) {
        server_make_id(h->s, "req-", id, sizeof id);
        given = id;
    }
    server_add_header(h->req, "X-Request-Id", given);
}

void server_reply_json(struct http_ctx *h, int status, const char *body, size_t len,
                       int prompt_tokens, int completion_tokens)
{
    reply_bytes(h, status, "application/json", NULL, body, len, prompt_tokens, completion_tokens);
}

void server_reply_bytes(struct http_ctx *h, int status, const char *content_type,
                        const char *const *headers, const void *body, size_t len)
{
    reply_bytes(h, status, content_type, headers, body, len, 0, 0);
}

const char *server_request_header(struct http_ctx *h, const char *name)
{
    return server_req_header(h->req, name);
}

void server_reply_error(struct http_ctx *h, const struct kiln_api_error *err)
{
    char *body = kiln_api_error_body(err);
    if (err->status == 429) server_add_header(h->req, "Retry-After", "1");
    if (err->status == 401) server_add_header(h->req, "WWW-Authenticate", "Bearer");
    if (err->status == 503 && h->s->state == SERVER_LOADING)
        server_add_header(h->req, "Retry-After", "5");
    static const char fallback[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                   "\"server_error\",\"param\":null,\"code\":null}}";
    if (body)
        server_reply_json(h, err->status, body, strlen(body), 0, 0);
    else
        server_reply_json(h, 500, fallback, sizeof fallback - 1, 0, 0);
    free(body);
}

static void reply_json_object(struct http_ctx *h, int status, json_t *o)
{
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!body) {
        struct kiln_api_error err;
        kiln_api_errorf(&err, 500, NULL, NULL, "out of memory");
        server_reply_error(h, &err);
        return;
    }
    server_reply_json(h, status, body, strlen(body), 0, 0);
    free(body);
}

static void on_reply_sent(void *arg)
{
    struct kiln_server *s = arg;
    s->n_sending--;
    server_maybe_exit(s);
}

void server_track_reply(struct kiln_server *s, struct http_req *req)
{
    s->n_sending++;
    server_on_reply_done(req, on_reply_sent, s);
}

void server_maybe_exit(struct kiln_server *s)
{
    if (s->state != SERVER_DRAINING || s->n_calls || s->n_sending || s->n_preparing || s->closing)
        return;
    KILN_INFO("all requests finished");
    event_base_loopexit(s->base, NULL);
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void server_make_id(struct kiln_server *s, const char *prefix, char *out, size_t cap)
{
    uint64_t n = ++s->id_counter;
    snprintf(out, cap, "%s%016llx%016llx", prefix,
             (unsigned long long)splitmix64(s->id_key + 2 * n),
             (unsigned long long)splitmix64(s->id_key + 2 * n + 1));
}

enum kiln_status server_check_model(struct kiln_server *s, const char *model,
                                    struct kiln_api_error *err)
{
    if (!model || !strcmp(model, s->model_name)) return KILN_OK;
    return kiln_api_errorf(err, 404, "model_not_found", "model",
                           "The model `%s` does not exist. This server serves `%s`.", model,
                           s->model_name);
}

enum kiln_status server_token_text(struct kiln_server *s, int32_t id, char **text, size_t *len)
{
    struct kiln_error err;
    return kiln_tokenizer_decode(s->m.tok, &id, 1, false, text, len, &err);
}

/* ---- small endpoints ---- */

static void h_health(struct http_ctx *h, const char *body, size_t len)
{
    (void)body;
    (void)len;
    static const char ok[] = "{\"status\":\"ok\"}";
    server_reply_json(h, 200, ok, sizeof ok - 1, 0, 0);
}

static void h_version(struct http_ctx *h, const char *body, size_t len)
{
    (void)body;
    (void)len;
    reply_json_object(h, 200, json_pack("{s:s}", "version", KILN_VERSION));
}

static void h_metrics(struct http_ctx *h, const char *body, size_t len)
{
    (void)body;
    (void)len;
    struct kiln_server *s = h->s;
    struct kiln_engine_stats st;
    bool have = s->state == SERVER_READY || s->state == SERVER_DRAINING;
    if (have) kiln_engine_stats(s->m.engine, &st);
    /* Counted before rendering so a scrape sees itself, as Prometheus clients do. */
    server_log_request(h, 200, 0, 0);
    char *text = kiln_metrics_render(&s->metrics, have ? &st : NULL, s->model_name,
                                     s->state == SERVER_LOADING);
    if (!text) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        server_send(h->req, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    server_send(h->req, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
    free(text);
}

static json_t *model_object(struct kiln_server *s)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:s,s:n,s:i}", "id", s->model_name, "object", "model",
                     "created", (json_int_t)s->started, "owned_by", "kiln", "root", s->model_name,
                     "parent", "max_model_len", s->m.max_seq_len);
}

static void h_models(struct http_ctx *h, const char *body, size_t len)
{
    (void)body;
    (void)len;
    reply_json_object(h, 200,
                      json_pack("{s:s,s:[o]}", "object", "list", "data", model_object(h->s)));
}

static void h_model(struct http_ctx *h, const char *body, size_t len)
{
    (void)body;
    (void)len;
    const char *path = server_req_path(h->req);
    size_t nlen = 0;
    char *name = evhttp_uridecode(path + strlen("/v1/models/"), 0, &nlen);
    struct kiln_api_error err;
    if (!name) {
        kiln_api_errorf(&err, 500, NULL, NULL, "out of memory");
        server_reply_error(h, &err);
    } else if (nlen != strlen(name) || strcmp(name, h->s->model_name)) {
        /* "m%00abc" decodes to "m" and more: not the model "m" (shown as it was sent). */
        if (nlen != strlen(name))
            kiln_api_errorf(&err, 404, "model_not_found", "model",
                            "The model `%.200s` does not exist. This server serves `%s`.",
                            path + strlen("/v1/models/"), h->s->model_name);
        else
            server_check_model(h->s, name, &err);
        server_reply_error(h, &err);
    } else {
        reply_json_object(h, 200, model_object(h->s));
    }
    free(name);
}

static json_t *id_array(const int32_t *ids, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_integer(ids[i]))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static void h_tokenize(struct http_ctx *h, const char *body, size_t len)
{
    struct kiln_server *s = h->s;
    struct kiln_api_tokenize t;
    struct kiln_api_error aerr;
    if (kiln_api_parse_tokenize(body, len, &t, &aerr) || server_check_model(s, t.model, &aerr)) {
        kiln_api_tokenize_free(&t);
        server_reply_error(h, &aerr);
        return;
    }
    char *rendered = NULL;
    size_t rlen = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    struct kiln_error err;
    enum kiln_status st = KILN_OK;
    const char *text = t.prompt;
    size_t text_len = t.prompt_len;
    if (t.messages_json) {
        st = kiln_tokenizer_apply_chat_template(s->m.tok, t.messages_json, t.add_generation_prompt,
                                                NULL, &rendered, &rlen, &err);
        text = rendered;
        text_len = rlen;
    }
    if (!st)
        st = kiln_tokenizer_encode(s->m.tok, text, text_len, t.add_special_tokens, &ids, &n, &err);
    if (st) {
        kiln_api_errorf(&aerr, st == KILN_ERR_NOMEM ? 500 : 400, NULL,
                        t.messages_json ? "messages" : "prompt", "%s", err.msg);
        server_reply_error(h, &aerr);
    } else {
        reply_json_object(h, 200,
                          json_pack("{s:i,s:i,s:o}", "count", (int)n, "max_model_len",
                                    s->m.max_seq_len, "tokens", id_array(ids, n)));
    }
    free(ids);
    free(rendered);
    kiln_api_tokenize_free(&t);
}

static void h_detokenize(struct http_ctx *h, const char *body, size_t len)
{
    struct kiln_server *s = h->s;
    struct kiln_api_detokenize d;
    struct kiln_api_error aerr;
    if (kiln_api_parse_detokenize(body, len, &s->limits, &d, &aerr) ||
        server_check_model(s, d.model, &aerr)) {
        kiln_api_detokenize_free(&d);
        server_reply_error(h, &aerr);
        return;
    }
    char *text = NULL;
    size_t tlen = 0;
    struct kiln_error err;
    if (kiln_tokenizer_decode(s->m.tok, d.ids, (size_t)d.n_ids, false, &text, &tlen, &err)) {
        kiln_api_errorf(&aerr, 400, NULL, "tokens", "%s", err.msg);
        server_reply_error(h, &aerr);
    } else {
        reply_json_object(h, 200, json_pack("{s:s%}", "prompt", text, tlen));
    }
    free(text);
    kiln_api_detokenize_free(&d);
}

static void h_completions(struct http_ctx *h, const char *body, size_t len)
{
    generate_handle(h, KILN_API_COMPLETION, body, len);
}

static void h_chat(struct http_ctx *h, const char *body, size_t len)
{
    generate_handle(h, KILN_API_CHAT, body, len);
}

static void h_web(struct http_ctx *h, const char *body, size_t len)
{
    (void)body;
    (void)len;
    web_handle(h);
}

/* ---- routing ---- */

struct route {
    const char *path;
    unsigned methods; /* enum evhttp_cmd_type bits */
    bool prefix;      /* path is a prefix (GET /v1/models/{id}) */
    bool protected_;  /* needs the API key */
    bool needs_model;
    void (*fn)(struct http_ctx *h, const char *body, size_t len);
};

static const struct route routes[] = {
    {"/health", EVHTTP_REQ_GET, false, false, true, h_health},
    {"/version", EVHTTP_REQ_GET, false, false, false, h_version},
    {"/metrics", EVHTTP_REQ_GET, false, false, false, h_metrics},
    {"/v1/models", EVHTTP_REQ_GET, false, true, true, h_models},
    {"/v1/models/", EVHTTP_REQ_GET, true, true, true, h_model},
    {"/v1/completions", EVHTTP_REQ_POST, false, true, true, h_completions},
    {"/v1/chat/completions", EVHTTP_REQ_POST, false, true, true, h_chat},
    {"/v1/responses", EVHTTP_REQ_POST, false, true, true, responses_handle},
    {"/tokenize", EVHTTP_REQ_POST, false, true, true, h_tokenize},
    {"/detokenize", EVHTTP_REQ_POST, false, true, true, h_detokenize},
    /* The chat page (web.c; --no-web-ui leaves these out): public, the page asks for the key. */
    {"/", EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, false, false, false, h_web},
    {"/assets/", EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, true, false, false, h_web},
};

void server_dispatch(struct http_req *req)
{
    struct kiln_server *s = server_req_server(req);
    const char *path = server_req_path(req);
    if (!*path) path = "/";
    struct http_ctx h = {.s = s, .req = req, .endpoint = "other", .path = path, .t0 = kiln_now()};
    struct kiln_api_error err;

    const struct route *r = NULL;
    bool path_known = false;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        bool match = routes[i].prefix ? !strncmp(path, routes[i].path, strlen(routes[i].path)) &&
                                            path[strlen(routes[i].path)]
                                      : !strcmp(path, routes[i].path);
        if (!match || (routes[i].fn == h_web && !s->opt.web_ui)) continue;
        path_known = true;
        if (server_req_command(req) & routes[i].methods) r = &routes[i];
    }
    if (r) h.endpoint = r->prefix && r->fn != h_web ? "/v1/models/{model}" : r->path;
    set_request_id(&h);

    if (!r) {
        if (path_known)
            kiln_api_errorf(&err, 405, "method_not_allowed", NULL, "Method not allowed for %s",
                            path);
        else
            kiln_api_errorf(&err, 404, "not_found", NULL, "Unknown path %.200s", path);
        server_reply_error(&h, &err);
        return;
    }
    if (r->protected_ &&
        !kiln_server_auth_ok(server_req_header(req, "Authorization"), s->api_key)) {
        kiln_api_errorf(&err, 401, "invalid_api_key", NULL,
                        "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.");
        server_reply_error(&h, &err);
        return;
    }
    if (r->needs_model && s->state == SERVER_LOADING) {
        kiln_api_errorf(&err, 503, "model_loading", NULL, "The model is still loading");
        server_reply_error(&h, &err);
        return;
    }
    if (r->needs_model && s->state != SERVER_READY) {
        kiln_api_errorf(&err, 503, "shutting_down", NULL, "The server is shutting down");
        server_reply_error(&h, &err);
        return;
    }
    size_t len;
    const char *body = server_req_body(req, &len);
    r->fn(&h, body, len);
}

void server_http_error(struct http_req *req, int status, const char *message)
{
    struct http_ctx h = {
        .s = server_req_server(req), .req = req, .endpoint = "other", .t0 = kiln_now()};
    const char *code = status == 413   ? "request_too_large"
                       : status == 408 ? "request_timeout"
                       : status == 431 ? "request_header_fields_too_large"
                       : status == 501 ? "not_implemented"
                       : status == 505 ? "http_version_not_supported"
                       : status == 500 ? NULL
                                       : "bad_request";
    struct kiln_api_error err;
    kiln_api_errorf(&err, status, code, NULL, "%s", message);
    server_reply_error(&h, &err);
}

/* ---- lifecycle ---- */

static void on_handoff(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kiln_server *s = arg;
    pthread_mutex_lock(&s->handoff_mu);
    bool ready = s->handoff_ready, failed = s->handoff_failed;
    struct kiln_server_model m = s->handoff;
    char msg[sizeof s->fail_msg];
    memcpy(msg, s->fail_msg, sizeof msg);
    pthread_mutex_unlock(&s->handoff_mu);
    if (s->state != SERVER_LOADING) return;
    if (failed) {
        KILN_ERROR("loading failed: %s", msg);
        s->state = SERVER_FAILED;
        s->exit_status = 1;
        event_base_loopexit(s->base, NULL);
        return;
    }
    if (!ready) return;
    s->m = m;
    s->limits.vocab_size = kiln_tokenizer_vocab_size(m.tok);
    s->state = SERVER_READY;
    KILN_INFO("ready: serving '%s' (context %d tokens) on http://%s:%d", s->model_name,
              m.max_seq_len, s->host, s->port);
    /* Events the engine queued before the hand-over was seen. */
    event_active(s->ev_notify, 0, 0);
}

void kiln_server_notify(void *server)
{
    struct kiln_server *s = server;
    event_active(s->ev_notify, 0, 0);
}

void kiln_server_ready(struct kiln_server *s, const struct kiln_server_model *m)
{
    /* The constraint engine's view of the vocabulary, once per model, on the loading thread.
     * Without it the model is still served; constrained requests then get a 400. */
    struct kiln_grammar_vocab *v = NULL;
    struct kiln_grammar_cache *c = NULL;
    struct kiln_error err;
    double t0 = kiln_now();
    if (kiln_grammar_vocab_create(m->tok, &v, &err)) {
        KILN_WARN("structured output disabled: %s", err.msg);
        v = NULL;
    } else if (!(c = kiln_grammar_cache_create(v, GRAMMAR_CACHE_ENTRIES))) {
        KILN_WARN("structured output disabled: out of memory for the grammar cache");
        kiln_grammar_vocab_free(v);
        v = NULL;
    } else {
        KILN_INFO("structured output: vocabulary of %d tokens indexed in %.0f ms",
                  kiln_grammar_vocab_size(v), (kiln_now() - t0) * 1e3);
    }
    pthread_mutex_lock(&s->handoff_mu);
    s->grammar_vocab = v;
    s->grammars = c;
    s->handoff = *m;
    s->handoff_ready = true;
    pthread_mutex_unlock(&s->handoff_mu);
    event_active(s->ev_handoff, 0, 0);
}

void kiln_server_fail(struct kiln_server *s, const char *message)
{
    pthread_mutex_lock(&s->handoff_mu);
    snprintf(s->fail_msg, sizeof s->fail_msg, "%s", message);
    s->handoff_failed = true;
    pthread_mutex_unlock(&s->handoff_mu);
    event_active(s->ev_handoff, 0, 0);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kiln_server *s = arg;
    if (s->n_calls) {
        KILN_WARN("shutdown: %d request(s) still running after %.0f s: cancelling them", s->n_calls,
                  s->opt.shutdown_timeout_s);
        generate_cancel_all(s);
    }
    /* Cancelled requests answer within an engine step or two; whatever is still open a
     * second later is cut off. */
    struct timeval tv = {1, 0};
    event_base_loopexit(s->base, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct kiln_server *s = arg;
    if (s->state == SERVER_DRAINING) {
        KILN_WARN("second signal: exiting now");
        event_base_loopexit(s->base, NULL);
        return;
    }
    KILN_INFO("%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    if (s->state != SERVER_READY) {
        event_base_loopexit(s->base, NULL);
        return;
    }
    s->state = SERVER_DRAINING;
    server_stop_listening(s);
    kiln_engine_drain(s->m.engine, s->opt.shutdown_timeout_s);
    if (!s->n_calls && !s->n_sending && !s->n_preparing) {
        event_base_loopexit(s->base, NULL);
        return;
    }
    KILN_INFO("waiting up to %.0f s for %d running request(s)", s->opt.shutdown_timeout_s,
              s->n_calls + s->n_preparing);
    double t = s->opt.shutdown_timeout_s;
    struct timeval tv = {(time_t)t, (suseconds_t)((t - (double)(time_t)t) * 1e6)};
    evtimer_add(s->ev_deadline, &tv);
}

enum kiln_status kiln_server_create(const struct kiln_server_options *opt, struct kiln_server **out,
                                    struct kiln_error *err)
{
    *out = NULL;
    if (!opt->model_name || !*opt->model_name)
        return kiln_errorf(err, KILN_ERR_INVALID, "the served model name is empty");
    /* Before the first event_base: makes event_active safe from the engine thread. */
    if (evthread_use_pthreads())
        return kiln_errorf(err, KILN_ERR_INTERNAL, "libevent: no pthreads support");
    struct kiln_server *s = calloc(1, sizeof *s);
    if (!s) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    s->opt = *opt;
    s->host = strdup(opt->host ? opt->host : "127.0.0.1");
    s->model_name = strdup(opt->model_name);
    s->api_key = opt->api_key && *opt->api_key ? strdup(opt->api_key) : NULL;
    pthread_mutex_init(&s->handoff_mu, NULL);
    kiln_metrics_init(&s->metrics);
    s->limits = (struct kiln_api_limits){
        .vocab_size = 0, .max_n = opt->max_n, .max_choices = opt->max_choices, .max_stop = 16};
    s->started = (long long)time(NULL);
    if (getrandom(&s->id_key, sizeof s->id_key, 0) != (ssize_t)sizeof s->id_key)
        s->id_key = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
    s->spare_fd = -1;
    enum kiln_status st = KILN_OK;
    s->base = event_base_new();
    if (!s->base) {
        st = kiln_errorf(err, KILN_ERR_NOMEM, "libevent: cannot create the event loop");
        goto fail;
    }
    s->ev_notify = event_new(s->base, -1, 0, generate_on_notify, s);
    s->ev_handoff = event_new(s->base, -1, 0, on_handoff, s);
    s->ev_sigterm = evsignal_new(s->base, SIGTERM, on_signal, s);
    s->ev_sigint = evsignal_new(s->base, SIGINT, on_signal, s);
    s->ev_deadline = evtimer_new(s->base, on_deadline, s);
    if (!s->ev_notify || !s->ev_handoff || !s->ev_sigterm || !s->ev_sigint || !s->ev_deadline) {
        st = kiln_errorf(err, KILN_ERR_NOMEM, "libevent: out of memory");
        goto fail;
    }
    generate_init();
    s->offload = kiln_offload_create(s->base, 1);
    if (!s->offload) {
        st = kiln_errorf(err, KILN_ERR_NOMEM, "cannot start the request parsing thread");
        goto fail;
    }
    st = server_listen(s, err);
    if (st) goto fail;
    *out = s;
    return KILN_OK;
fail:
    kiln_server_free(s);
    return st;
}

int kiln_server_port(const struct kiln_server *s)
{
    return s->port;
}

int kiln_server_run(struct kiln_server *s)
{
    /* A client that disconnects mid-reply must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);
    evsignal_add(s->ev_sigterm, NULL);
    evsignal_add(s->ev_sigint, NULL);
    KILN_INFO("listening on http://%s:%d (model '%s' loading)", s->host, s->port, s->model_name);
    event_base_dispatch(s->base);
    evsignal_del(s->ev_sigterm);
    evsignal_del(s->ev_sigint);
    if (s->state == SERVER_DRAINING) KILN_INFO("shut down");
    return s->exit_status;
}

void kiln_server_free(struct kiln_server *s)
{
    if (!s) return;
    s->closing = true;
    kiln_offload_free(s->offload); /* its jobs see s->closing and only free themselves */
    generate_forget_all(s);
    if (s->base) server_close_all(s);
    if (s->ev_notify) event_free(s->ev_notify);
    if (s->ev_handoff) event_free(s->ev_handoff);
    if (s->ev_sigterm) event_free(s->ev_sigterm);
    if (s->ev_sigint) event_free(s->ev_sigint);
    if (s->ev_deadline) event_free(s->ev_deadline);
    if (s->base) event_base_free(s->base);
    pthread_mutex_destroy(&s->handoff_mu);
    /* the engine (and its matchers) is gone already */
    if (s->grammars) kiln_grammar_cache_free(s->grammars);
    if (s->grammar_vocab) kiln_grammar_vocab_free(s->grammar_vocab);
    free(s->host);
    free(s->model_name);
    free(s->api_key);
    free(s);
}
