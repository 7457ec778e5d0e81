/* The server's HTTP/1.1 transport: the listening socket, client connections on libevent
 * bufferevents, request framing through http.c's strict parser, and replies (whole bodies with
 * Content-Length, or chunked streams).
 *
 * One request per connection at a time: the next request on a keep-alive connection is parsed
 * only once the previous reply has been written out. While a request is being answered the
 * socket keeps being read, so a peer that resets (RST), hangs up (FIN) or is dropped for not
 * reading its reply for --idle-timeout seconds is seen at once and the handler's "gone"
 * callback runs (server_watch_client); a request body is read incrementally into one buffer of
 * at most --max-body-bytes (plus one read), never held twice.
 *
 * Errors of the HTTP layer itself (framing, sizes, unknown methods) are answered through
 * server_http_error as OpenAI error objects, with Connection: close and a lingering close (the
 * rest of the client's bytes are read and dropped for up to 2 s) so the client sees the answer
 * instead of a reset.
 *
 * A request head (request line and headers) must arrive whole within --header-timeout seconds
 * of its first byte: a client that trickles a byte now and then, each within --idle-timeout,
 * is answered 408 and closed instead of holding its connection for ever (slowloris).
 *
 * Out of file descriptors, accept() pauses for 100 ms at a time instead of spinning; the
 * connections waiting meanwhile are answered 503 and closed with a spare descriptor, counted
 * as refused in /metrics, and one warning is logged per episode.
 *
 * It never parses bodies as JSON, routes, or authenticates: that is server.c. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "http.h"
#include "server_impl.h"

enum conn_state {
    CONN_HEAD,  /* waiting for (more of) a request head */
    CONN_BODY,  /* reading a request body */
    CONN_BUSY,  /* a request is being answered (c->req) */
    CONN_LINGER /* an error was answered: drop what the client still sends, then close */
};

enum req_phase { REQ_NEW, REQ_STREAMING, REQ_DONE };

/* Pending output beyond which a streaming client counts as stalled (it is also dropped when no
 * byte could be written for --idle-timeout seconds). */
#define MAX_PENDING_OUTPUT (8u << 20)
/* Pipelined bytes read ahead while a request is answered (reading then pauses). */
#define READ_AHEAD (256u << 10)
#define BODY_READ  (64u << 10)

struct http_conn {
    struct kiln_server *s;
    struct bufferevent *bev;
    struct http_conn *prev, *next;
    enum conn_state state;
    struct http_req *req;
    uint64_t need; /* Content-Length body: bytes still to come */
    bool chunked, eof, shut;
    struct kiln_http_chunked dec;
    char *body;
    size_t body_len, body_cap;
    struct event *linger;
    struct event *head_deadline; /* armed while a head is partly received (--header-timeout) */
    struct event *drop; /* a stalled reader is dropped from the loop, not inside a handler */
    /* Streaming: is the peer still taking bytes? (what the kernel got minus what it holds) */
    struct event *stall;
    uint64_t sent, acked;
    double t_progress;
};

struct http_req {
    struct kiln_server *s;
    struct http_conn *conn; /* NULL once the connection is gone */
    char *head;             /* the head, NUL-separated: method, target, names, values */
    const char *method, *target;
    char *path; /* target without query (absolute-form: without scheme and authority) */
    enum evhttp_cmd_type command;
    bool known_method;
    struct {
        const char *name, *value;
    } hdr[KILN_HTTP_MAX_HEADERS];
    size_t n_hdr;
    int minor;
    bool keep_alive, close;
    struct evbuffer *out_hdrs;
    enum req_phase phase;
    bool chunked_out; /* streaming with the chunked coding (HTTP/1.1) */
    void (*gone)(void *arg);
    void *gone_arg;
    void (*done)(void *arg);
    void *done_arg;
    char *body;
    size_t body_len;
};

static void process(struct http_conn *c);
static void on_output_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

/* ---- requests ---- */

static void req_free(struct http_req *r)
{
    if (!r) return;
    if (r->out_hdrs) evbuffer_free(r->out_hdrs);
    free(r->head);
    free(r->path);
    free(r->body);
    free(r);
}

static const struct {
    const char *name;
    enum evhttp_cmd_type cmd;
} methods[] = {
    {"GET", EVHTTP_REQ_GET},     {"POST", EVHTTP_REQ_POST},       {"HEAD", EVHTTP_REQ_HEAD},
    {"PUT", EVHTTP_REQ_PUT},     {"DELETE", EVHTTP_REQ_DELETE},   {"OPTIONS", EVHTTP_REQ_OPTIONS},
    {"TRACE", EVHTTP_REQ_TRACE}, {"CONNECT", EVHTTP_REQ_CONNECT}, {"PATCH", EVHTTP_REQ_PATCH}};

/* A bare request for errors found before a head could be parsed. */
static struct http_req *req_bare(struct http_conn *c)
{
    struct http_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->s = c->s;
    r->conn = c;
    r->method = "-";
    r->target = "-";
    r->minor = 1;
    r->out_hdrs = evbuffer_new();
    if (!r->out_hdrs) {
        free(r);
        return NULL;
    }
    return r;
}

static struct http_req *req_from_head(struct http_conn *c, const char *p, size_t n,
                                      const struct kiln_http_request *hr)
{
    struct http_req *r = req_bare(c);
    if (!r) return NULL;
    r->head = malloc(n + 1);
    if (!r->head) {
        req_free(r);
        return NULL;
    }
    memcpy(r->head, p, n);
    r->head[n] = 0;
    /* Every span is followed by a separator byte inside the head (SP, ':', CR, OWS), so
     * ending each with a NUL in the copy makes C strings without moving anything. */
#define TERM(span) (r->head[(span).p - p + (span).len] = 0, r->head + ((span).p - p))
    r->method = TERM(hr->method);
    r->target = TERM(hr->target);
    for (size_t i = 0; i < hr->n_headers; i++) {
        r->hdr[i].name = TERM(hr->headers[i].name);
        r->hdr[i].value = TERM(hr->headers[i].value);
    }
#undef TERM
    r->n_hdr = hr->n_headers;
    r->minor = hr->minor_version;
    r->keep_alive = hr->keep_alive;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (!strcmp(r->method, methods[i].name)) {
            r->command = methods[i].cmd;
            r->known_method = true;
        }
    const char *t = r->target;
    if (!strncasecmp(t, "http://", 7) || !strncasecmp(t, "https://", 8)) {
        t = strstr(t, "://") + 3;
        t += strcspn(t, "/?");
    }
    size_t plen = strcspn(t, "?");
    r->path = plen ? strndup(t, plen) : strdup("/");
    if (!r->path) {
        req_free(r);
        return NULL;
    }
    return r;
}

struct kiln_server *server_req_server(const struct http_req *r)
{
    return r->s;
}

const char *server_req_method(const struct http_req *r)
{
    return r->method;
}

enum evhttp_cmd_type server_req_command(const struct http_req *r)
{
    return r->command;
}

const char *server_req_target(const struct http_req *r)
{
    return r->target;
}

const char *server_req_path(const struct http_req *r)
{
    return r->path;
}

const char *server_req_header(const struct http_req *r, const char *name)
{
    for (size_t i = 0; i < r->n_hdr; i++)
        if (!strcasecmp(r->hdr[i].name, name)) return r->hdr[i].value;
    return NULL;
}

const char *server_req_body(const struct http_req *r, size_t *len)
{
    *len = r->body_len;
    return r->body ? r->body : "";
}

char *server_req_take_body(struct http_req *r, size_t *len)
{
    char *b = r->body;
    *len = r->body_len;
    r->body = NULL;
    r->body_len = 0;
    return b;
}

void server_add_header(struct http_req *r, const char *name, const char *value)
{
    if (!strcasecmp(name, "Connection") && !strcasecmp(value, "close")) {
        r->close = true;
        return;
    }
    evbuffer_add_printf(r->out_hdrs, "%s: %s\r\n", name, value);
}

void server_watch_client(struct http_req *r, void (*gone)(void *arg), void *arg)
{
    r->gone = gone;
    r->gone_arg = arg;
}

void server_on_reply_done(struct http_req *r, void (*done)(void *arg), void *arg)
{
    r->done = done;
    r->done_arg = arg;
}

/* ---- connections ---- */

static void set_timeouts(struct http_conn *c)
{
    struct timeval idle = {c->s->opt.idle_timeout_s, 0};
    /* A request being answered may wait for the engine as long as it takes; the socket stays
     * read to see a hang-up, and the write timeout still drops a reader that stalls. */
    bufferevent_set_timeouts(c->bev, c->state == CONN_BUSY ? NULL : &idle, &idle);
}

static void conn_free(struct http_conn *c)
{
    struct kiln_server *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->metrics.connections = --s->n_conns;
    bufferevent_free(c->bev);
    if (c->linger) event_free(c->linger);
    if (c->head_deadline) event_free(c->head_deadline);
    if (c->drop) event_free(c->drop);
    if (c->stall) event_free(c->stall);
    free(c->body);
    free(c);
}

/* The peer is gone (or is dropped): tell whoever answers its request, then close. */
static void conn_gone(struct http_conn *c)
{
    struct http_req *r = c->req;
    c->req = NULL;
    if (r) {
        r->conn = NULL;
        if (r->phase == REQ_DONE) {
            if (r->done) r->done(r->done_arg);
            req_free(r);
        } else if (c->state != CONN_BUSY) {
            /* Never dispatched (its body was still arriving): nobody else holds it. */
            req_free(r);
        } else if (r->gone) {
            r->gone(r->gone_arg);
            req_free(r);
        }
        /* else: the handler still holds it and frees it with its final reply. */
    }
    conn_free(c);
}

static void finish_req(struct http_conn *c)
{
    struct http_req *r = c->req;
    c->req = NULL;
    if (c->stall) event_del(c->stall);
    bool keep = r->keep_alive && !r->close;
    if (r->done) r->done(r->done_arg);
    req_free(r);
    if (c->state == CONN_LINGER) {
        shutdown(bufferevent_getfd(c->bev), SHUT_WR);
        c->shut = true;
        struct timeval tv = {2, 0};
        if (c->linger) evtimer_add(c->linger, &tv);
        return;
    }
    if (!keep || c->eof) {
        conn_free(c);
        return;
    }
    c->state = CONN_HEAD;
    set_timeouts(c);
    bufferevent_enable(c->bev, EV_READ);
    process(c);
}

static void on_linger_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_free(arg);
}

/* An error of the HTTP layer: answer it, then close without reading further requests. */
static void early_error(struct http_conn *c, int status, const char *message)
{
    struct http_req *r = c->req ? c->req : req_bare(c);
    if (!r) {
        conn_free(c);
        return;
    }
    c->req = r;
    c->state = CONN_LINGER;
    r->close = true;
    if (!c->linger) c->linger = evtimer_new(c->s->base, on_linger_timeout, c);
    bufferevent_set_timeouts(c->bev, NULL, NULL);
    free(c->body);
    c->body = NULL;
    server_http_error(r, status, message);
}

static void dispatch(struct http_conn *c)
{
    struct http_req *r = c->req;
    r->body = c->body;
    r->body_len = c->body_len;
    c->body = NULL;
    c->body_len = c->body_cap = 0;
    c->state = CONN_BUSY;
    set_timeouts(c);
    server_dispatch(r);
}

/* Moves body bytes from the socket buffer into c->body; true once the body is complete. */
static bool read_body(struct http_conn *c)
{
    struct kiln_server *s = c->s;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!c->chunked) {
        size_t take = evbuffer_get_length(in);
        if (take > c->need) take = (size_t)c->need;
        evbuffer_remove(in, c->body + c->body_len, take);
        c->body_len += take;
        c->need -= take;
        return c->need == 0;
    }
    size_t avail;
    while ((avail = evbuffer_get_length(in)) > 0) {
        size_t k = avail < BODY_READ ? avail : BODY_READ;
        if (c->body_len + k > c->body_cap) {
            size_t cap = c->body_cap ? c->body_cap * 2 : BODY_READ;
            if (cap < c->body_len + k) cap = c->body_len + k;
            char *nb = realloc(c->body, cap);
            if (!nb) {
                early_error(c, 500, "out of memory");
                return false;
            }
            c->body = nb;
            c->body_cap = cap;
        }
        char *raw = c->body + c->body_len;
        evbuffer_remove(in, raw, k);
        size_t dl = k;
        struct kiln_http_error e;
        long r = kiln_http_decode_chunked(&c->dec, raw, &dl, s->opt.max_body_bytes,
                                          s->opt.max_header_bytes, &e);
        if (r == KILN_HTTP_ERROR) {
            early_error(c, e.status, e.message);
            return false;
        }
        if (r >= 0) evbuffer_prepend(in, raw + r, k - (size_t)r);
        c->body_len += dl;
        if (r >= 0) return true;
    }
    return false;
}

static void on_head_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    if (c->state != CONN_HEAD) return;
    char msg[96];
    snprintf(msg, sizeof msg, "The request line and headers did not arrive within %d s",
             c->s->opt.header_timeout_s);
    early_error(c, 408, msg);
}

/* The clock runs from the first byte of a head (an idle keep-alive connection is the idle
 * timeout's) to its end, however the bytes are spread. */
static void arm_head_deadline(struct http_conn *c)
{
    if (!c->head_deadline) c->head_deadline = evtimer_new(c->s->base, on_head_deadline, c);
    if (!c->head_deadline || evtimer_pending(c->head_deadline, NULL)) return;
    struct timeval tv = {c->s->opt.header_timeout_s, 0};
    evtimer_add(c->head_deadline, &tv);
}

static void process(struct http_conn *c)
{
    struct kiln_server *s = c->s;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    for (;;) {
        if (c->state == CONN_HEAD) {
            size_t n = evbuffer_get_length(in);
            if (!n) return;
            size_t window = s->opt.max_header_bytes + 256;
            size_t look = n < window ? n : window;
            const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
            struct kiln_http_request hr;
            struct kiln_http_error e;
            long r = kiln_http_parse_request(p, look, s->opt.max_header_bytes,
                                             s->opt.max_body_bytes, &hr, &e);
            if (r == KILN_HTTP_PARTIAL && look == n) {
                arm_head_deadline(c);
                return;
            }
            if (c->head_deadline) evtimer_del(c->head_deadline);
            if (r == KILN_HTTP_PARTIAL) {
                e.status = 431;
                snprintf(e.message, sizeof e.message,
                         "The request line and headers exceed %zu bytes", s->opt.max_header_bytes);
            }
            if (r < 0) {
                early_error(c, e.status, e.message);
                return;
            }
            c->req = req_from_head(c, p, (size_t)r, &hr);
            evbuffer_drain(in, (size_t)r);
            if (!c->req) {
                early_error(c, 500, "out of memory");
                return;
            }
            if (!c->req->known_method || c->req->command == EVHTTP_REQ_CONNECT) {
                char msg[96];
                snprintf(msg, sizeof msg, "The method %.32s is not supported", c->req->method);
                early_error(c, 501, msg);
                return;
            }
            if (hr.body == KILN_HTTP_BODY_NONE) {
                dispatch(c);
                continue;
            }
            c->chunked = hr.body == KILN_HTTP_BODY_CHUNKED;
            c->need = hr.content_length;
            memset(&c->dec, 0, sizeof c->dec);
            c->body_len = 0;
            c->body_cap = c->chunked ? 0 : (size_t)hr.content_length;
            free(c->body);
            c->body = c->body_cap ? malloc(c->body_cap) : NULL;
            if (c->body_cap && !c->body) {
                early_error(c, 500, "out of memory");
                return;
            }
            if (hr.expect_continue && hr.minor_version == 1)
                bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
            c->state = CONN_BODY;
        }
        if (c->state == CONN_BODY) {
            if (!read_body(c)) return;
            dispatch(c);
            continue;
        }
        return;
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct http_conn *c = arg;
    if (c->state == CONN_LINGER) {
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    process(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct http_conn *c = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev))) return;
    if (c->req && c->req->phase == REQ_DONE) finish_req(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct http_conn *c = arg;
    if (c->state == CONN_LINGER && c->shut) {
        conn_free(c);
        return;
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_WRITING)) {
        /* A half-close after a complete request that is already answered: finish writing. */
        bool answered = c->req && c->req->phase == REQ_DONE;
        if (answered || c->state == CONN_LINGER) {
            c->eof = true;
            bufferevent_disable(c->bev, EV_READ);
            return;
        }
    }
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_WRITING) && c->req) {
        KILN_INFO("dropping a client that read nothing for %d s", c->s->opt.idle_timeout_s);
        c->s->metrics.dropped_stalled++;
    }
    conn_gone(c);
}

/* ---- replies ---- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    }
    return "Unknown";
}

/* A reader that stops reading (its receive window closes) stops acknowledging long before
 * our socket's send buffer (megabytes) fills and writes fail: so a stream is watched by what
 * the peer acknowledged. No progress for --idle-timeout seconds with bytes pending: dropped. */
static void on_stall_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    int outq = 0;
    if (ioctl(bufferevent_getfd(c->bev), TIOCOUTQ, &outq) < 0) return;
    uint64_t acked = c->sent - (uint64_t)outq;
    size_t pending = (size_t)outq + evbuffer_get_length(bufferevent_get_output(c->bev));
    double now = kiln_now();
    if (acked != c->acked || !pending) {
        c->acked = acked;
        c->t_progress = now;
        return;
    }
    if (now - c->t_progress < c->s->opt.idle_timeout_s) return;
    KILN_INFO("dropping a streaming client that read nothing for %d s (%zu bytes pending)",
              c->s->opt.idle_timeout_s, pending);
    c->s->metrics.dropped_stalled++;
    event_del(c->stall);
    conn_gone(c);
}

static void on_drop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_gone(arg);
}

/* The request's connection, NULL (and the request freed once final) when it is gone. */
static struct http_conn *live_conn(struct http_req *r, bool final)
{
    if (r->conn) return r->conn;
    if (final) {
        if (r->done) r->done(r->done_arg);
        req_free(r);
    }
    return NULL;
}

static void write_head(struct http_req *r, int status, const char *content_type, long long length)
{
    struct http_conn *c = r->conn;
    if (c->s->state == SERVER_DRAINING || c->eof) r->close = true;
    if (!r->keep_alive) r->close = true;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
    if (content_type) evbuffer_add_printf(out, "Content-Type: %s\r\n", content_type);
    if (length >= 0)
        evbuffer_add_printf(out, "Content-Length: %lld\r\n", length);
    else if (r->chunked_out)
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    if (r->close)
        evbuffer_add(out, "Connection: close\r\n", 19);
    else
        evbuffer_add_printf(out, "Keep-Alive: timeout=%d\r\n", c->s->opt.idle_timeout_s);
    evbuffer_add_buffer(out, r->out_hdrs);
    evbuffer_add(out, "\r\n", 2);
}

void server_send(struct http_req *r, int status, const char *content_type, const char *body,
                 size_t len)
{
    struct http_conn *c = live_conn(r, true);
    if (!c || r->phase != REQ_NEW) return;
    /* A 304 has no body and no length of its own (RFC 9110 §15.4.5). */
    bool no_body = status == 304 || r->command == EVHTTP_REQ_HEAD;
    write_head(r, status, content_type, status == 304 ? -1 : (long long)len);
    if (!no_body) bufferevent_write(c->bev, body, len);
    r->phase = REQ_DONE;
}

void server_stream_start(struct http_req *r, int status, const char *content_type)
{
    struct http_conn *c = live_conn(r, false);
    if (!c || r->phase != REQ_NEW) return;
    /* HTTP/1.0 has no chunked coding: the stream ends when the connection closes. */
    r->chunked_out = r->minor == 1;
    if (!r->chunked_out) r->close = true;
    write_head(r, status, content_type, -1);
    r->phase = REQ_STREAMING;
    if (!c->stall) c->stall = event_new(c->s->base, -1, EV_PERSIST, on_stall_check, c);
    struct timeval tv = {1, 0};
    c->t_progress = kiln_now();
    if (c->stall) event_add(c->stall, &tv);
}

void server_stream_chunk(struct http_req *r, const char *data, size_t len)
{
    struct http_conn *c = live_conn(r, false);
    if (!c || r->phase != REQ_STREAMING || !len) return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (c->drop) return;
    if (evbuffer_get_length(out) > MAX_PENDING_OUTPUT) {
        KILN_INFO("dropping a streaming client %u bytes behind", MAX_PENDING_OUTPUT);
        c->s->metrics.dropped_stalled++;
        c->drop = event_new(c->s->base, -1, 0, on_drop, c);
        if (c->drop) event_active(c->drop, 0, 0);
        return;
    }
    if (r->chunked_out) evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    if (r->chunked_out) evbuffer_add(out, "\r\n", 2);
}

void server_stream_end(struct http_req *r)
{
    struct http_conn *c = live_conn(r, true);
    if (!c || r->phase != REQ_STREAMING) return;
    if (r->chunked_out) bufferevent_write(c->bev, "0\r\n\r\n", 5);
    r->phase = REQ_DONE;
    /* Nothing left to write (HTTP/1.0): on_write finishes it from the loop, not from here. */
    if (!evbuffer_get_length(bufferevent_get_output(c->bev)))
        bufferevent_trigger(c->bev, EV_WRITE,
                            BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* ---- listening ---- */

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    (void)lev;
    (void)sa;
    (void)socklen;
    struct kiln_server *s = arg;
    if (s->out_of_fds) {
        s->out_of_fds = false;
        KILN_INFO("accepting connections again");
    }
    /* Streaming replies are many small writes: with Nagle's algorithm each SSE event after
     * the first waits for the client's delayed ACK (40 ms on Linux). */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct http_conn *c = calloc(1, sizeof *c);
    struct bufferevent *bev = c ? bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
    if (!bev) {
        free(c);
        evutil_closesocket(fd);
        return;
    }
    c->s = s;
    c->bev = bev;
    c->state = CONN_HEAD;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->metrics.connections = ++s->n_conns;
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    evbuffer_add_cb(bufferevent_get_output(bev), on_output_drained, c);
    bufferevent_setwatermark(bev, EV_READ, 0, READ_AHEAD);
    set_timeouts(c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void on_output_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    struct http_conn *c = arg;
    c->sent += info->n_deleted;
}

static const char refused_reply[] =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    "Connection: close\r\nContent-Length: 122\r\n\r\n"
    "{\"error\":{\"message\":\"The server is out of file descriptors\",\"type\":\"server_error\","
    "\"param\":null,\"code\":\"server_overloaded\"}}";

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    struct kiln_server *s = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (!s->out_of_fds) {
        KILN_WARN("accept: %s: pausing new connections (%d open)", strerror(e), s->n_conns);
        s->out_of_fds = true;
    }
    /* The spare descriptor lets the connections already waiting get an answer and a close
     * instead of hanging in the backlog. */
    if (e == EMFILE || e == ENFILE) {
        if (s->spare_fd >= 0) close(s->spare_fd);
        s->spare_fd = -1;
        for (int i = 0; i < 64; i++) {
            int fd = accept4(evconnlistener_get_fd(lev), NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) break;
            ssize_t w = write(fd, refused_reply, sizeof refused_reply - 1);
            (void)w;
            close(fd);
            s->metrics.refused_connections++;
        }
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    evconnlistener_disable(lev);
    struct timeval tv = {0, 100000};
    evtimer_add(s->ev_accept_resume, &tv);
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kiln_server *s = arg;
    if (s->listener) evconnlistener_enable(s->listener);
}

enum kiln_status server_listen(struct kiln_server *s, struct kiln_error *err)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->opt.port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(s->host, port, &hints, &ai);
    if (gai)
        return kiln_errorf(err, KILN_ERR_IO, "cannot listen on %s:%d: %s", s->host, s->opt.port,
                           gai_strerror(gai));
    s->ev_accept_resume = evtimer_new(s->base, on_accept_resume, s);
    s->listener = s->ev_accept_resume
                      ? evconnlistener_new_bind(s->base, on_accept, s,
                                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                                    LEV_OPT_CLOSE_ON_EXEC,
                                                -1, ai->ai_addr, (int)ai->ai_addrlen)
                      : NULL;
    int e = errno;
    freeaddrinfo(ai);
    if (!s->listener)
        return kiln_errorf(err, KILN_ERR_IO, "cannot listen on %s:%d: %s", s->host, s->opt.port,
                           strerror(e));
    evconnlistener_set_error_cb(s->listener, on_accept_error);
    s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(evconnlistener_get_fd(s->listener), (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    else
        s->port = s->opt.port;
    return KILN_OK;
}

void server_stop_listening(struct kiln_server *s)
{
    if (s->listener) evconnlistener_free(s->listener);
    s->listener = NULL;
    if (s->ev_accept_resume) evtimer_del(s->ev_accept_resume);
}

void server_close_all(struct kiln_server *s)
{
    server_stop_listening(s);
    while (s->conns) {
        struct http_conn *c = s->conns;
        struct http_req *r = c->req;
        c->req = NULL;
        if (r) {
            r->conn = NULL;
            if (r->phase == REQ_DONE && r->done) r->done(r->done_arg);
            req_free(r);
        }
        conn_free(c);
    }
    if (s->ev_accept_resume) event_free(s->ev_accept_resume);
    s->ev_accept_resume = NULL;
    if (s->spare_fd >= 0) close(s->spare_fd);
    s->spare_fd = -1;
}
