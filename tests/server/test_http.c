/* The strict HTTP/1.1 parser (src/server/http.c), case by case: RFC 9112 message body length
 * (§6) and the chunked coding (§7.1), what must be refused and with which status, what must
 * still be taken, and the chunked decoder fed in every split. Runs under ASan in CI. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/http.h"

#define MAX_HEAD 4096
#define MAX_BODY 1000

static long parse(const char *text, struct kiln_http_request *req, struct kiln_http_error *err)
{
    return kiln_http_parse_request(text, strlen(text), MAX_HEAD, MAX_BODY, req, err);
}

static void heads(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        int status; /* 0: parses */
    } cases[] = {
        {"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 0},
        {"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\n\r\n", 0},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\n\r\n", 0},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 042\r\n\r\n", 0},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nHost: x\r\nX-Obs: caf\xc3\xa9\r\n\r\n", 0},
        /* framing */
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\nContent-Length: 5\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\nContent-Length: 42\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 42, 42\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +42\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4 2\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n", 413},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked"
         "\r\n\r\n",
         501},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
         400},
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        /* Host */
        {"GET / HTTP/1.1\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400},
        {"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        /* syntax */
        {"GARBAGE\r\n\r\n", 400},
        {"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
        {"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
        {"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
        {"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505},
        {"GET / HTTPS/1.1\r\nHost: x\r\n\r\n", 400},
        {"GET / HTTP/1.1\nHost: x\n\n", 400},
        {"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\x01z\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nX: \x7f\r\n\r\n", 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct kiln_http_request req;
        struct kiln_http_error err = {0};
        long n = parse(cases[i].head, &req, &err);
        if (cases[i].status == 0) {
            if (n != (long)strlen(cases[i].head)) fail_msg("case %zu: %s", i, err.message);
        } else {
            if (n != KILN_HTTP_ERROR || err.status != cases[i].status)
                fail_msg("case %zu: got %ld status %d, want %d", i, n, err.status, cases[i].status);
            assert_true(err.message[0] != 0);
        }
    }
}

static void head_details(void **state)
{
    (void)state;
    struct kiln_http_request req;
    struct kiln_http_error err;
    /* A NUL inside a header value: refused, never read as the end of the value. */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s\0junk\r\n\r\n";
    assert_int_equal(kiln_http_parse_request(nul, sizeof nul - 1, MAX_HEAD, MAX_BODY, &req, &err),
                     KILN_HTTP_ERROR);
    assert_int_equal(err.status, 400);

    const char *h = "POST /v1/x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n"
                    "Connection: close\r\nExpect: 100-continue\r\nX-Pad:   v  \r\n\r\nbody...";
    long n = parse(h, &req, &err);
    assert_int_equal(n, (long)(strstr(h, "\r\n\r\n") + 4 - h));
    assert_int_equal(req.body, KILN_HTTP_BODY_LENGTH);
    assert_int_equal(req.content_length, 7);
    assert_false(req.keep_alive);
    assert_true(req.expect_continue);
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.target.len, strlen("/v1/x?y=1"));
    const struct kiln_http_span *pad = kiln_http_header(&req, "x-pad");
    assert_non_null(pad);
    assert_int_equal(pad->len, 1);
    assert_memory_equal(pad->p, "v", 1);

    assert_int_equal(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &req, &err), 42);
    assert_true(req.keep_alive);
    parse("GET / HTTP/1.0\r\n\r\n", &req, &err);
    assert_false(req.keep_alive);

    /* Every prefix of a valid head is partial; a head over the limit is 431 even unfinished. */
    const char *full = "GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n";
    for (size_t k = 0; k < strlen(full); k++)
        assert_int_equal(kiln_http_parse_request(full, k, MAX_HEAD, MAX_BODY, &req, &err),
                         KILN_HTTP_PARTIAL);
    char big[300];
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5);
    assert_int_equal(kiln_http_parse_request(big, sizeof big, 100, MAX_BODY, &req, &err),
                     KILN_HTTP_ERROR);
    assert_int_equal(err.status, 431);
}

/* Decodes text in pieces of step bytes; returns the verdict and the data. */
static long chunked(const char *text, size_t step, char *out, size_t *out_len, size_t *consumed,
                    struct kiln_http_error *err)
{
    struct kiln_http_chunked d = {0};
    size_t len = strlen(text), pos = 0;
    *out_len = 0;
    while (pos < len) {
        size_t k = len - pos < step ? len - pos : step;
        char piece[256];
        memcpy(piece, text + pos, k);
        size_t dl = k;
        long r = kiln_http_decode_chunked(&d, piece, &dl, MAX_BODY, 64, err);
        if (r == KILN_HTTP_ERROR) return r;
        memcpy(out + *out_len, piece, dl);
        *out_len += dl;
        if (r >= 0) {
            *consumed = pos + (size_t)r;
            return r;
        }
        pos += k;
    }
    return KILN_HTTP_PARTIAL;
}

static void chunked_bodies(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *data; /* NULL: an error with status */
        int status;
        size_t tail; /* bytes left after the body */
    } cases[] = {
        {"5\r\nhello\r\n0\r\n\r\n", "hello", 0, 0},
        {"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET", "hello world", 0, 3},
        {"5;foo=bar\r\nhello\r\n0\r\n\r\n", "hello", 0, 0},
        {"5 ; a ; b=\"x;\\\"y\"\r\nhello\r\n000;z\r\n\r\n", "hello", 0, 0},
        {"A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n", "0123456789", 0, 0},
        {"5\r\nhelloXX0\r\n\r\n", NULL, 400, 0},
        {"5\r\nhello\n0\r\n\r\n", NULL, 400, 0},
        {"5\r\nhelloX\n0\r\n\r\n", NULL, 400, 0},
        {"5\nhello\r\n0\r\n\r\n", NULL, 400, 0},
        {"\r\nhello\r\n0\r\n\r\n", NULL, 400, 0},
        {"-5\r\nhello\r\n0\r\n\r\n", NULL, 400, 0},
        {"0x5\r\nhello\r\n0\r\n\r\n", NULL, 400, 0},
        {"5;a\x01\r\nhello\r\n0\r\n\r\n", NULL, 400, 0},
        {"3E9\r\n", NULL, 413, 0},
        {"ffffffffffffffffff\r\n", NULL, 413, 0},
        {"1F4\r\n", NULL, 0, 0}, /* 500 bytes: fine so far (partial) */
        {"0\r\nX\x01: 1\r\n\r\n", NULL, 400, 0},
        {"0\r\n folded: 1\r\n\r\n", NULL, 400, 0},
        {"0\r\n\r\r", NULL, 400, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t step = 1; step <= strlen(cases[i].body); step++) {
            char out[256];
            size_t len, consumed = 0;
            struct kiln_http_error err = {0};
            long r = chunked(cases[i].body, step, out, &len, &consumed, &err);
            if (cases[i].data) {
                if (r < 0) fail_msg("case %zu step %zu: %s", i, step, err.message);
                assert_int_equal(len, strlen(cases[i].data));
                assert_memory_equal(out, cases[i].data, len);
                assert_int_equal(strlen(cases[i].body) - consumed, cases[i].tail);
            } else if (cases[i].status) {
                if (r != KILN_HTTP_ERROR || err.status != cases[i].status)
                    fail_msg("case %zu step %zu: got %ld/%d, want %d", i, step, r, err.status,
                             cases[i].status);
            } else {
                assert_int_equal(r, KILN_HTTP_PARTIAL);
            }
        }
    }
    /* The body limit counts data across chunks: 500 bytes, then a chunk of 101 over 600. */
    char body[600];
    size_t o = (size_t)sprintf(body, "1F4\r\n");
    memset(body + o, 'a', 500);
    o += 500;
    o += (size_t)sprintf(body + o, "\r\n65\r\n");
    struct kiln_http_chunked d = {0};
    struct kiln_http_error err;
    assert_int_equal(kiln_http_decode_chunked(&d, body, &o, 600, 64, &err), KILN_HTTP_ERROR);
    assert_int_equal(err.status, 413);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(heads),
        cmocka_unit_test(head_details),
        cmocka_unit_test(chunked_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
