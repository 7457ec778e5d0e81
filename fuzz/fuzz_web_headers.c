/* libFuzzer target for the chat page's request headers (src/server/web.c): arbitrary bytes as
 * an Accept-Encoding value and as an If-None-Match value (split at the first NUL). Neither
 * parser may read past the string's end; a match must really name the tag. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/web.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0;
    (void)kiln_web_accepts_gzip(s);
    static const char etag[] = "\"0123456789abcdef0123-gz\"";
    if (kiln_web_etag_matches(s, etag) && !strchr(s, '*') && !strstr(s, etag)) abort();
    free(s);
    return 0;
}
