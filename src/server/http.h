/* A strict HTTP/1.1 request parser (RFC 9112): the request line and header section, the
 * message body length they imply (§6), and the chunked transfer coding (§7.1). Pure: bytes
 * in, spans and a verdict out; no I/O, no allocation, never reads past len.
 *
 * Why our own parser and not evhttp's: evhttp (libevent 2.1) lets the first of two different
 * Content-Length headers win, ignores an unknown Transfer-Encoding, accepts "+42" as a length,
 * accepts chunk data not followed by CRLF and refuses chunk extensions, and none of that can be
 * changed from outside (its chunk parser and header checks are internal). Each leniency is a
 * request-smuggling hole once a proxy sits in front. llhttp and h2o are not on the machines
 * that run kiln (only libevent, jansson and pcre2 are), and the part we need is small: this
 * file is that part, in the picohttpparser style (zero-copy spans into the caller's buffer,
 * explicit partial / error returns), fuzzed by fuzz/fuzz_http.c.
 *
 * What it refuses (each an error with the status to answer and a message): bare CR or LF as
 * a line end, whitespace before a header's colon, obs-fold, control bytes (NUL included) in
 * a target or header value, HTTP versions other than 1.0 and 1.1 (505), Content-Length that
 * is not 1*DIGIT, more than one Content-Length, Transfer-Encoding together with
 * Content-Length, Transfer-Encoding on HTTP/1.0, a coding list not ending in exactly one
 * "chunked" (400) or holding another coding (501), a missing or duplicate Host on HTTP/1.1,
 * a length over the caller's body limit (413, from the header alone), heads over the header
 * limit (431). Chunk extensions and trailer fields are accepted and ignored.
 *
 * What it never does: route, decode percent-escapes, or decide keep-alive beyond reporting
 * the Connection header and the version. */
#ifndef KILN_SERVER_HTTP_H
#define KILN_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KILN_HTTP_MAX_HEADERS 100

/* Returns of the parse functions besides a byte count (>= 0). */
#define KILN_HTTP_ERROR   (-1L)
#define KILN_HTTP_PARTIAL (-2L)

struct kiln_http_error {
    int status; /* 400, 413, 431, 501, 505 */
    char message[160];
};

struct kiln_http_span {
    const char *p;
    size_t len;
};

struct kiln_http_header {
    struct kiln_http_span name, value; /* value without surrounding whitespace */
};

enum kiln_http_body { KILN_HTTP_BODY_NONE, KILN_HTTP_BODY_LENGTH, KILN_HTTP_BODY_CHUNKED };

struct kiln_http_request {
    struct kiln_http_span method, target;
    int minor_version; /* HTTP/1.x */
    struct kiln_http_header headers[KILN_HTTP_MAX_HEADERS];
    size_t n_headers;
    enum kiln_http_body body;
    uint64_t content_length; /* KILN_HTTP_BODY_LENGTH */
    bool keep_alive;         /* the version's default adjusted by Connection */
    bool expect_continue;    /* Expect: 100-continue */
};

/* Parses the request head at the start of buf (leading empty lines skipped, as RFC 9112 §2.2
 * allows). Returns the bytes of the head including its final empty line, KILN_HTTP_PARTIAL
 * when it is not complete yet, or KILN_HTTP_ERROR with err set. max_head bounds the head
 * (431 beyond, also while partial); max_body bounds Content-Length (413). */
long kiln_http_parse_request(const char *buf, size_t len, size_t max_head, uint64_t max_body,
                             struct kiln_http_request *req, struct kiln_http_error *err);

/* The first header named name (case-insensitive), NULL when absent. */
const struct kiln_http_span *kiln_http_header(const struct kiln_http_request *req,
                                              const char *name);
/* How many headers are named name. */
size_t kiln_http_header_count(const struct kiln_http_request *req, const char *name);

/* Incremental chunked decoder. Zero it to start a body. */
struct kiln_http_chunked {
    int state;
    uint64_t size;  /* of the chunk being read (hex digits so far, then what is left) */
    uint64_t total; /* data bytes decoded so far */
    size_t line;    /* bytes of the current size or trailer line */
    size_t trailer; /* bytes of the trailer section */
    bool digits;    /* a size digit seen */
    int quote;      /* in a chunk extension: 1 inside a quoted string, 2 after its backslash */
};

/* Decodes buf[0..*len) in place: the chunk data found is moved to the front and *len becomes
 * its length. Returns the bytes consumed when the body is complete (what follows belongs to
 * the next request; data before it was moved but the tail is untouched), KILN_HTTP_PARTIAL
 * when everything was consumed and more is needed, or KILN_HTTP_ERROR (err set: 400 for bad
 * framing, 413 when the data passes max_body, 431 when a size line or the trailers pass
 * max_line). */
long kiln_http_decode_chunked(struct kiln_http_chunked *d, char *buf, size_t *len,
                              uint64_t max_body, size_t max_line, struct kiln_http_error *err);

#endif
