/* Strict HTTP/1.1 request parsing: see http.h for what is refused and why this exists. */
#include "http.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static long fail(struct kiln_http_error *err, int status, const char *fmt, ...)
{
    err->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return KILN_HTTP_ERROR;
}

/* RFC 9110 §5.6.2 tchar */
static bool is_tchar(unsigned char c)
{
    if (c >= '0' && c <= '9') return true;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* field-value bytes: HTAB, SP, VCHAR, obs-text */
static bool is_value_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static bool span_eq(struct kiln_http_span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && !strncasecmp(s.p, lit, n);
}

/* Finds the CRLF ending the line at pos: 1 (line is buf[pos..*end)), 0 (partial), -1 (a bare
 * CR or LF). */
static int next_line(const char *buf, size_t len, size_t pos, size_t *end)
{
    for (size_t i = pos; i < len; i++) {
        if (buf[i] == '\n') return -1;
        if (buf[i] != '\r') continue;
        if (i + 1 == len) return 0;
        if (buf[i + 1] != '\n') return -1;
        *end = i;
        return 1;
    }
    return 0;
}

static struct kiln_http_span trim(const char *p, size_t n)
{
    while (n && (*p == ' ' || *p == '\t')) p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    return (struct kiln_http_span){p, n};
}

static long parse_request_line(const char *p, size_t n, struct kiln_http_request *req,
                               struct kiln_http_error *err)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i])) i++;
    if (!i || i == n || p[i] != ' ') return fail(err, 400, "malformed request line (method)");
    req->method = (struct kiln_http_span){p, i};
    size_t t0 = ++i;
    while (i < n && (unsigned char)p[i] > 0x20 && p[i] != 0x7f) i++;
    if (i == t0 || i == n || p[i] != ' ') return fail(err, 400, "malformed request line (target)");
    req->target = (struct kiln_http_span){p + t0, i - t0};
    const char *v = p + i + 1;
    size_t vn = n - i - 1;
    if (vn != 8 || memcmp(v, "HTTP/", 5) || v[6] != '.' || v[5] < '0' || v[5] > '9' || v[7] < '0' ||
        v[7] > '9')
        return fail(err, 400, "malformed request line (version)");
    if (v[5] != '1' || v[7] > '1')
        return fail(err, 505, "HTTP version %.8s is not supported (HTTP/1.0 and 1.1 are)", v);
    req->minor_version = v[7] - '0';
    return 0;
}

static long parse_field_line(const char *p, size_t n, struct kiln_http_request *req,
                             struct kiln_http_error *err)
{
    if (n && (p[0] == ' ' || p[0] == '\t'))
        return fail(err, 400, "obsolete line folding in the header section");
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i])) i++;
    if (!i || i == n || p[i] != ':') return fail(err, 400, "malformed header field name");
    for (size_t j = i + 1; j < n; j++)
        if (!is_value_byte((unsigned char)p[j]))
            return fail(err, 400, "control character in the value of header %.*s", (int)i, p);
    if (req->n_headers == KILN_HTTP_MAX_HEADERS)
        return fail(err, 431, "more than %d header fields", KILN_HTTP_MAX_HEADERS);
    struct kiln_http_header *h = &req->headers[req->n_headers++];
    h->name = (struct kiln_http_span){p, i};
    h->value = trim(p + i + 1, n - i - 1);
    return 0;
}

/* Splits a comma list (RFC 9110 §5.6.1) and calls fn on each non-empty trimmed element. */
static int each_element(struct kiln_http_span v, int (*fn)(struct kiln_http_span, void *),
                        void *arg)
{
    size_t start = 0;
    for (size_t i = 0; i <= v.len; i++) {
        if (i < v.len && v.p[i] != ',') continue;
        struct kiln_http_span e = trim(v.p + start, i - start);
        if (e.len) {
            int r = fn(e, arg);
            if (r) return r;
        }
        start = i + 1;
    }
    return 0;
}

struct te_state {
    int n, chunked; /* codings, how many were "chunked" */
    bool last_chunked;
};

static int te_element(struct kiln_http_span e, void *arg)
{
    struct te_state *t = arg;
    t->n++;
    t->last_chunked = span_eq(e, "chunked");
    t->chunked += t->last_chunked;
    return 0;
}

static int connection_element(struct kiln_http_span e, void *arg)
{
    struct kiln_http_request *req = arg;
    if (span_eq(e, "close")) req->keep_alive = false;
    if (span_eq(e, "keep-alive") && req->minor_version == 0) req->keep_alive = true;
    return 0;
}

/* Message body length, RFC 9112 §6.1-6.3. */
static long framing(struct kiln_http_request *req, uint64_t max_body, struct kiln_http_error *err)
{
    size_t hosts = kiln_http_header_count(req, "host");
    if (hosts > 1) return fail(err, 400, "more than one Host header");
    if (!hosts && req->minor_version == 1) return fail(err, 400, "HTTP/1.1 requires a Host header");

    req->keep_alive = req->minor_version == 1;
    req->body = KILN_HTTP_BODY_NONE;
    req->content_length = 0;
    struct te_state te = {0};
    size_t n_cl = 0, n_te = 0;
    const struct kiln_http_span *cl = NULL;
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct kiln_http_header *h = &req->headers[i];
        if (span_eq(h->name, "content-length")) {
            n_cl++;
            cl = &h->value;
        } else if (span_eq(h->name, "transfer-encoding")) {
            n_te++;
            each_element(h->value, te_element, &te);
        } else if (span_eq(h->name, "connection")) {
            each_element(h->value, connection_element, req);
        } else if (span_eq(h->name, "expect")) {
            req->expect_continue = span_eq(h->value, "100-continue");
        }
    }
    if (n_te) {
        if (n_cl) return fail(err, 400, "both Transfer-Encoding and Content-Length");
        if (req->minor_version == 0)
            return fail(err, 400, "Transfer-Encoding is not defined for HTTP/1.0");
        if (!te.n || !te.last_chunked || te.chunked > 1)
            return fail(err, 400, "Transfer-Encoding must end in exactly one \"chunked\"");
        if (te.n > 1) return fail(err, 501, "only the chunked transfer coding is supported");
        req->body = KILN_HTTP_BODY_CHUNKED;
        return 0;
    }
    if (n_cl > 1) return fail(err, 400, "more than one Content-Length header");
    if (n_cl) {
        if (!cl->len) return fail(err, 400, "empty Content-Length");
        uint64_t v = 0;
        bool big = false;
        for (size_t i = 0; i < cl->len; i++) {
            unsigned char c = (unsigned char)cl->p[i];
            if (c < '0' || c > '9')
                return fail(err, 400, "Content-Length must be a decimal number of bytes");
            if (v > (UINT64_MAX - 9) / 10) big = true;
            if (!big) v = v * 10 + (c - '0');
        }
        if (big || v > max_body)
            return fail(err, 413, "The request body exceeds %llu bytes",
                        (unsigned long long)max_body);
        req->content_length = v;
        req->body = v ? KILN_HTTP_BODY_LENGTH : KILN_HTTP_BODY_NONE;
    }
    return 0;
}

long kiln_http_parse_request(const char *buf, size_t len, size_t max_head, uint64_t max_body,
                             struct kiln_http_request *req, struct kiln_http_error *err)
{
    memset(req, 0, sizeof *req);
    size_t pos = 0;
    /* Empty lines before the request line (a client's stray CRLF after a body). */
    while (pos + 1 < len && buf[pos] == '\r' && buf[pos + 1] == '\n') pos += 2;
    size_t start = pos;
    bool first = true;
    for (;;) {
        size_t end;
        int r = next_line(buf, len, pos, &end);
        if (r < 0) return fail(err, 400, "a line of the request head does not end in CRLF");
        if (r == 0) {
            if (len - start > max_head)
                return fail(err, 431, "The request line and headers exceed %zu bytes", max_head);
            return KILN_HTTP_PARTIAL;
        }
        if (end + 2 - start > max_head)
            return fail(err, 431, "The request line and headers exceed %zu bytes", max_head);
        const char *p = buf + pos;
        size_t n = end - pos;
        pos = end + 2;
        if (first) {
            if (parse_request_line(p, n, req, err)) return KILN_HTTP_ERROR;
            first = false;
            continue;
        }
        if (!n) break;
        if (parse_field_line(p, n, req, err)) return KILN_HTTP_ERROR;
    }
    if (framing(req, max_body, err)) return KILN_HTTP_ERROR;
    return (long)pos;
}

const struct kiln_http_span *kiln_http_header(const struct kiln_http_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (span_eq(req->headers[i].name, name)) return &req->headers[i].value;
    return NULL;
}

size_t kiln_http_header_count(const struct kiln_http_request *req, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < req->n_headers; i++) n += span_eq(req->headers[i].name, name);
    return n;
}

/* ---- chunked coding (RFC 9112 §7.1) ---- */

enum {
    C_SIZE,     /* chunk-size hex digits */
    C_EXT,      /* after the size: BWS and chunk-ext up to CR */
    C_SIZE_LF,  /* CR of the size line seen */
    C_DATA,     /* chunk-data */
    C_DATA_CR,  /* chunk-data done: CR must follow */
    C_DATA_LF,  /* ... then LF */
    C_TRAILER0, /* start of a trailer field line, or the final CRLF */
    C_TRAILER,  /* inside a trailer field line */
    C_TRAILER_LF /* CR of a trailer line seen */,
    C_END_LF, /* CR of the final line seen */
};

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

long kiln_http_decode_chunked(struct kiln_http_chunked *d, char *buf, size_t *len,
                              uint64_t max_body, size_t max_line, struct kiln_http_error *err)
{
    size_t n = *len, out = 0, i = 0;
    long ret = KILN_HTTP_PARTIAL;
    while (i < n) {
        unsigned char c = (unsigned char)buf[i];
        if (d->state == C_DATA) {
            size_t take = n - i;
            if ((uint64_t)take > d->size) take = (size_t)d->size;
            memmove(buf + out, buf + i, take);
            out += take;
            i += take;
            d->size -= take;
            d->total += take;
            if (!d->size) d->state = C_DATA_CR;
            continue;
        }
        i++;
        switch (d->state) {
        case C_SIZE: {
            int v = hex_value(c);
            if (v >= 0) {
                if (d->size > (UINT64_MAX >> 4) || ++d->line > max_line)
                    return fail(err, 413, "chunk size too large");
                d->size = d->size * 16 + (uint64_t)v;
                d->digits = true;
                break;
            }
            if (!d->digits) return fail(err, 400, "malformed chunk size");
            if (d->size > max_body - d->total)
                return fail(err, 413, "The request body exceeds %llu bytes",
                            (unsigned long long)max_body);
            if (c == '\r') {
                d->state = C_SIZE_LF;
            } else if (c == ';' || c == ' ' || c == '\t') {
                d->state = C_EXT;
                d->quote = 0;
            } else {
                return fail(err, 400, "malformed chunk size");
            }
            break;
        }
        case C_EXT:
            if (++d->line > max_line) return fail(err, 400, "chunk extension too long");
            if (d->quote == 2) {
                if (!is_value_byte(c)) return fail(err, 400, "malformed chunk extension");
                d->quote = 1;
            } else if (d->quote) {
                if (c == '"')
                    d->quote = 0;
                else if (c == '\\')
                    d->quote = 2;
                else if (!is_value_byte(c))
                    return fail(err, 400, "control character in a chunk extension");
            } else if (c == '\r') {
                d->state = C_SIZE_LF;
            } else if (c == '"') {
                d->quote = 1;
            } else if (!is_tchar(c) && c != ';' && c != '=' && c != ' ' && c != '\t') {
                return fail(err, 400, "malformed chunk extension");
            }
            break;
        case C_SIZE_LF:
            if (c != '\n') return fail(err, 400, "chunk size line does not end in CRLF");
            d->state = d->size ? C_DATA : C_TRAILER0;
            break;
        case C_DATA_CR:
            if (c != '\r') return fail(err, 400, "chunk data not followed by CRLF");
            d->state = C_DATA_LF;
            break;
        case C_DATA_LF:
            if (c != '\n') return fail(err, 400, "chunk data not followed by CRLF");
            d->state = C_SIZE;
            d->size = 0;
            d->line = 0;
            d->digits = false;
            break;
        case C_TRAILER0:
        case C_TRAILER:
            if (++d->trailer > max_line) return fail(err, 431, "trailer section too long");
            if (c == '\r') {
                d->state = d->state == C_TRAILER0 ? C_END_LF : C_TRAILER_LF;
            } else if (d->state == C_TRAILER0 && (c == ' ' || c == '\t' || c == ':')) {
                return fail(err, 400, "malformed trailer field");
            } else if (!is_value_byte(c)) {
                return fail(err, 400, "control character in a trailer field");
            } else {
                d->state = C_TRAILER;
            }
            break;
        case C_TRAILER_LF:
            if (c != '\n') return fail(err, 400, "trailer line does not end in CRLF");
            d->state = C_TRAILER0;
            break;
        case C_END_LF:
            if (c != '\n') return fail(err, 400, "chunked body does not end in CRLF");
            ret = (long)i;
            goto done;
        }
    }
done:
    *len = out;
    return ret;
}
