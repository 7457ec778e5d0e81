/* libFuzzer target for the strict HTTP/1.1 parser (src/server/http.c): arbitrary bytes as a
 * request head, and what follows it as a chunked body fed in pieces of every size. The head
 * either parses (every span inside the input, framing consistent with the headers) or is
 * refused with a 4xx/5xx and a message; the chunked decoder gives the same data whether the
 * body comes at once or split, never more than the body limit, and never reads out of
 * bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/http.h"

static void check_span(struct kiln_http_span s, const char *buf, size_t len)
{
    if (s.p < buf || s.p + s.len > buf + len) abort();
}

/* Decodes body[0..n) in pieces of `step` bytes; returns the verdict, data in out. */
static long decode(const uint8_t *body, size_t n, size_t step, uint64_t max_body, char *out,
                   size_t *out_len, size_t *consumed)
{
    struct kiln_http_chunked d = {0};
    struct kiln_http_error e;
    size_t pos = 0;
    *out_len = 0;
    while (pos < n) {
        size_t k = n - pos < step ? n - pos : step;
        char *piece = malloc(k);
        if (!piece) abort();
        memcpy(piece, body + pos, k);
        size_t dl = k;
        long r = kiln_http_decode_chunked(&d, piece, &dl, max_body, 256, &e);
        if (r == KILN_HTTP_ERROR) {
            free(piece);
            if (e.status < 400 || !e.message[0]) abort();
            return r;
        }
        if (dl > k || (r >= 0 && (size_t)r > k)) abort();
        memcpy(out + *out_len, piece, dl);
        *out_len += dl;
        free(piece);
        if (*out_len > max_body) abort();
        if (r >= 0) {
            *consumed = pos + (size_t)r;
            return r;
        }
        pos += k;
    }
    return KILN_HTTP_PARTIAL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t max_head = 64 + data[0] * 16;
    uint64_t max_body = data[1] * 64u;
    data += 2;
    size -= 2;
    char *buf = malloc(size ? size : 1);
    if (!buf) abort();
    memcpy(buf, data, size);
    struct kiln_http_request req;
    struct kiln_http_error err;
    long n = kiln_http_parse_request(buf, size, max_head, max_body, &req, &err);
    if (n == KILN_HTTP_ERROR) {
        if (err.status < 400 || err.status > 599 || !err.message[0]) abort();
    } else if (n >= 0) {
        if ((size_t)n > size || req.n_headers > KILN_HTTP_MAX_HEADERS) abort();
        check_span(req.method, buf, (size_t)n);
        check_span(req.target, buf, (size_t)n);
        for (size_t i = 0; i < req.n_headers; i++) {
            check_span(req.headers[i].name, buf, (size_t)n);
            check_span(req.headers[i].value, buf, (size_t)n);
            for (size_t j = 0; j < req.headers[i].value.len; j++)
                if (!req.headers[i].value.p[j] || req.headers[i].value.p[j] == '\r') abort();
        }
        if (req.body == KILN_HTTP_BODY_LENGTH && req.content_length > max_body) abort();
        if (req.minor_version == 1 && kiln_http_header_count(&req, "host") != 1) abort();
        if (req.body == KILN_HTTP_BODY_CHUNKED && kiln_http_header(&req, "content-length"))
            abort();
    } else if (n != KILN_HTTP_PARTIAL) {
        abort();
    }
    /* The rest (or everything) as a chunked body: whole, and byte by byte. */
    size_t off = n > 0 ? (size_t)n : 0;
    const uint8_t *body = data + off;
    size_t blen = size - off;
    char *a = malloc(blen + 1), *b = malloc(blen + 1);
    if (!a || !b) abort();
    size_t la, lb, ca = 0, cb = 0;
    long ra = decode(body, blen, blen ? blen : 1, max_body, a, &la, &ca);
    long rb = decode(body, blen, 1, max_body, b, &lb, &cb);
    if (ra != KILN_HTTP_ERROR && rb != KILN_HTTP_ERROR) {
        if ((ra >= 0) != (rb >= 0)) abort();
        if (ra >= 0 && ca != cb) abort();
        if (la != lb || memcmp(a, b, la)) abort();
    } else if ((ra == KILN_HTTP_ERROR) != (rb == KILN_HTTP_ERROR)) {
        abort();
    }
    free(a);
    free(b);
    free(buf);
    return 0;
}
