/* The HTTP side: evhttp setup, routing, authentication, size limits, the small endpoints
 * (/health, /version, /metrics, /v1/models, /tokenize, /detokenize), the hand-over of the
 * loaded model, and graceful shutdown. Generation requests continue in generate.c. */
#include "server_impl.h"

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
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
                                        .idle_timeout_s = 60};
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

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    }
    return "Unknown";
}

void server_log_request(struct http_ctx *h, int status, int prompt_tokens, int completion_tokens)
{
    struct kiln_server *s = h->s;
    double dt = kiln_now() - h->t0;
    kiln_metrics_request(&s->metrics, h->endpoint, status);
    const char *method = "?";
    switch (evhttp_request_get_command(h->req)) {
    case EVHTTP_REQ_GET:
        method = "GET";
        break;
    case EVHTTP_REQ_POST:
        method = "POST";
        break;
    case EVHTTP_REQ_HEAD:
        method = "HEAD";
        break;
    case EVHTTP_REQ_PUT:
        method = "PUT";
        break;
    case EVHTTP_REQ_DELETE:
        method = "DELETE";
        break;
    case EVHTTP_REQ_OPTIONS:
        method = "OPTIONS";
        break;
    case EVHTTP_REQ_PATCH:
        method = "PATCH";
        break;
    default:
        break;
    }
    const char *uri = evhttp_request_get_uri(h->req);
    KILN_INFO("%s %.200s %d prompt_tokens=%d completion_tokens=%d %.3fs", method, uri ? uri : "-",
              status, prompt_tokens, completion_tokens, dt);
}

static void add_common_headers(struct kiln_server *s, struct evhttp_request *req)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    /* While draining, clients must not reuse the connection: it is about to close. */
    if (s->state == SERVER_DRAINING) evhttp_add_header(out, "Connection", "close");
}

void server_add_header(struct http_ctx *h, const char *key, const char *value)
{
    evhttp_add_header(evhttp_request_get_output_headers(h->req), key, value);
}

const char *server_get_header(struct http_ctx *h, const char *key)
{
    return evhttp_find_header(evhttp_request_get_input_headers(h->req), key);
}

/* X-Request-Id: the client's when it is a sane token (1-128 characters of [A-Za-z0-9._:-]),
 * else a fresh one, so a log line and a client report can be matched. */
static void set_request_id(struct http_ctx *h)
{
    const char *given = server_get_header(h, "X-Request-Id");
    size_t n = given ? strspn(given, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789._:-")
                     : 0;
    char id[48];
    if (!given || !n || n > 128 || given[n]) {
        server_make_id(h->s, "req-", id, sizeof id);
        given = id;
    }
    server_add_header(h, "X-Request-Id", given);
}

void server_reply_json(struct http_ctx *h, int status, const char *body, size_t len,
                       int prompt_tokens, int completion_tokens)
{
    struct evbuffer *buf = evbuffer_new();
    struct evkeyvalq *out = evhttp_request_get_output_headers(h->req);
    evhttp_add_header(out, "Content-Type", "application/json");
    add_common_headers(h->s, h->req);
    if (buf) evbuffer_add(buf, body, len);
    server_log_request(h, status, prompt_tokens, completion_tokens);
    evhttp_send_reply(h->req, status, reason_phrase(status), buf);
    if (buf) evbuffer_free(buf);
}

void server_reply_error(struct http_ctx *h, const struct kiln_api_error *err)
{
    char *body = kiln_api_error_body(err);
    struct evkeyvalq *out = evhttp_request_get_output_headers(h->req);
    if (err->status == 429) evhttp_add_header(out, "Retry-After", "1");
    if (err->status == 401) evhttp_add_header(out, "WWW-Authenticate", "Bearer");
    if (err->status == 503 && h->s->state == SERVER_LOADING)
        evhttp_add_header(out, "Retry-After", "5");
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

static void on_reply_sent(struct evhttp_request *req, void *arg)
{
    (void)req;
    struct kiln_server *s = arg;
    s->n_sending--;
    server_maybe_exit(s);
}

void server_track_reply(struct kiln_server *s, struct evhttp_request *req)
{
    s->n_sending++;
    evhttp_request_set_on_complete_cb(req, on_reply_sent, s);
}

void server_maybe_exit(struct kiln_server *s)
{
    if (s->state != SERVER_DRAINING || s->n_calls || s->n_sending || s->closing) return;
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
    struct evbuffer *buf = evbuffer_new();
    if (!text || !buf) {
        free(text);
        if (buf) evbuffer_free(buf);
        evhttp_send_error(h->req, 500, "out of memory");
        return;
    }
    evbuffer_add(buf, text, strlen(text));
    free(text);
    evhttp_add_header(evhttp_request_get_output_headers(h->req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    add_common_headers(s, h->req);
    evhttp_send_reply(h->req, 200, "OK", buf);
    evbuffer_free(buf);
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
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(h->req));
    char *name = evhttp_uridecode(path + strlen("/v1/models/"), 0, NULL);
    struct kiln_api_error err;
    if (!name) {
        kiln_api_errorf(&err, 500, NULL, NULL, "out of memory");
        server_reply_error(h, &err);
    } else if (strcmp(name, h->s->model_name)) {
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

/* ---- routing ---- */

struct route {
    const char *path;
    enum evhttp_cmd_type method;
    bool prefix;     /* path is a prefix (GET /v1/models/{id}) */
    bool protected_; /* needs the API key */
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
};

/* Bytes of the request line and headers as they came on the wire (give or take whitespace). */
static size_t header_bytes(struct evhttp_request *req)
{
    const char *uri = evhttp_request_get_uri(req);
    size_t n = (uri ? strlen(uri) : 0) + 20;
    struct evkeyvalq *hdrs = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = hdrs->tqh_first; kv; kv = kv->next.tqe_next)
        n += strlen(kv->key) + strlen(kv->value) + 4;
    return n;
}

/* Streaming replies are many small writes: with Nagle's algorithm each SSE event after the first
 * waits for the client's delayed ACK (40 ms on Linux), which showed as a 40 ms time to first
 * token even for short prompts. */
static void set_nodelay(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    int one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct kiln_server *s = arg;
    set_nodelay(req);
    struct http_ctx h = {.s = s, .req = req, .endpoint = "other", .t0 = kiln_now()};
    struct kiln_api_error err;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path) path = "/";

    const struct route *r = NULL;
    bool path_known = false;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        bool match = routes[i].prefix ? !strncmp(path, routes[i].path, strlen(routes[i].path)) &&
                                            path[strlen(routes[i].path)]
                                      : !strcmp(path, routes[i].path);
        if (!match) continue;
        path_known = true;
        if (evhttp_request_get_command(req) == routes[i].method) r = &routes[i];
    }
    if (r) h.endpoint = r->prefix ? "/v1/models/{model}" : r->path;
    set_request_id(&h);

    if (header_bytes(req) > s->opt.max_header_bytes) {
        kiln_api_errorf(&err, 431, "request_header_fields_too_large", NULL,
                        "The request line and headers exceed %zu bytes", s->opt.max_header_bytes);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        server_reply_error(&h, &err);
        return;
    }
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
        !kiln_server_auth_ok(
            evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization"),
            s->api_key)) {
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
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > s->opt.max_body_bytes) {
        kiln_api_errorf(&err, 413, "request_too_large", NULL, "The request body exceeds %zu bytes",
                        s->opt.max_body_bytes);
        server_reply_error(&h, &err);
        return;
    }
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    r->fn(&h, body ? body : "", body ? len : 0);
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
    if (s->bound) {
        evhttp_del_accept_socket(s->http, s->bound);
        s->bound = NULL;
    }
    kiln_engine_drain(s->m.engine, s->opt.shutdown_timeout_s);
    if (!s->n_calls && !s->n_sending) {
        event_base_loopexit(s->base, NULL);
        return;
    }
    KILN_INFO("waiting up to %.0f s for %d running request(s)", s->opt.shutdown_timeout_s,
              s->n_calls);
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
    enum kiln_status st = KILN_OK;
    s->base = event_base_new();
    s->http = s->base ? evhttp_new(s->base) : NULL;
    if (!s->http) {
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
    evhttp_set_gencb(s->http, on_request, s);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    /* evhttp answers a body over its limit with an HTML 413, and header lines over its limit
     * with a bare 400 (EVREQ_HTTP_INVALID_HEADER); there is no hook to answer otherwise. So its
     * limits sit above ours and on_request answers everything in between with OpenAI's error
     * JSON (413, 431); only bodies over twice the limit and header blocks over 64 times it
     * (or 1 MiB) meet evhttp's own answers. What that costs: a request may hold up to twice
     * the body limit in memory before it is refused. */
    size_t hard_body = opt->max_body_bytes > SIZE_MAX / 2 ? SIZE_MAX : 2 * opt->max_body_bytes;
    evhttp_set_max_body_size(s->http,
                             (ev_ssize_t)(hard_body > (size_t)INT64_MAX ? INT64_MAX : hard_body));
    size_t hard = opt->max_header_bytes * 64;
    if (hard < (1u << 20)) hard = 1u << 20;
    evhttp_set_max_headers_size(s->http, (ev_ssize_t)hard);
    evhttp_set_timeout(s->http, opt->idle_timeout_s);
    /* Read (and drop) an oversized body before answering 413, so the client sees the answer
     * instead of a reset. */
    evhttp_set_flags(s->http, EVHTTP_SERVER_LINGERING_CLOSE);
    s->bound = evhttp_bind_socket_with_handle(s->http, s->host, (ev_uint16_t)opt->port);
    if (!s->bound) {
        st = kiln_errorf(err, KILN_ERR_IO, "cannot listen on %s:%d: %s", s->host, opt->port,
                         strerror(errno));
        goto fail;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    evutil_socket_t fd = evhttp_bound_socket_get_fd(s->bound);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    else
        s->port = opt->port;
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
    generate_forget_all(s);
    if (s->http) evhttp_free(s->http);
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
