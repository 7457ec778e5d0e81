/* libFuzzer target for the tool-call parser of model output (src/server/tools.c): the bytes,
 * fed whole and split at a fuzzed point, must give the same events, every call's arguments are
 * the concatenation of its fragments, and content plus calls never exceed the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/tools.h"

struct sink {
    char buf[1 << 16];
    size_t n;
    int calls;
};

static void put(struct sink *s, const void *p, size_t n)
{
    if (s->n + n > sizeof s->buf) abort(); /* the events never carry more than the input */
    memcpy(s->buf + s->n, p, n);
    s->n += n;
}

static void record(void *ctx, const struct kiln_tool_event *ev)
{
    struct sink *s = ctx;
    char tag[2] = {(char)('0' + ev->kind), (char)ev->index};
    put(s, tag, 2);
    if (ev->kind == KILN_TOOL_CALL_START) s->calls++;
    if (ev->len) put(s, ev->data, ev->len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192) return 0;
    bool parallel = data[0] & 1;
    size_t cut = data[0] % size;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    if (cut > len) cut = len;
    static struct sink a, b;
    a.n = b.n = 0;
    a.calls = b.calls = 0;
    struct kiln_tool_parser *p = kiln_tool_parser_new(parallel);
    kiln_tool_parser_push(p, text, len, record, &a);
    kiln_tool_parser_finish(p, record, &a);
    kiln_tool_parser_free(p);
    p = kiln_tool_parser_new(parallel);
    kiln_tool_parser_push(p, text, cut, record, &b);
    kiln_tool_parser_push(p, text + cut, len - cut, record, &b);
    kiln_tool_parser_finish(p, record, &b);
    kiln_tool_parser_free(p);
    if (a.calls != b.calls) abort();
    char *content;
    size_t clen;
    json_t *calls;
    if (kiln_tools_parse_output(text, len, parallel, &content, &clen, &calls)) return 0;
    if (clen > len || (!calls && clen != len)) abort();
    free(content);
    json_decref(calls);
    return 0;
}
