/* Stop strings on streamed text (see stop.h). */
#include "stop.h"

#include <stdlib.h>
#include <string.h>

enum kiln_status kiln_stop_init(struct kiln_stop *s, const char *const *strs, int n,
                                struct kiln_error *err)
{
    memset(s, 0, sizeof *s);
    if (n <= 0) return KILN_OK;
    s->strs = calloc((size_t)n, sizeof *s->strs);
    s->lens = calloc((size_t)n, sizeof *s->lens);
    if (!s->strs || !s->lens) goto nomem;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(strs[i]);
        if (!len) continue; /* an empty stop string would end every output at once */
        s->strs[s->n] = malloc(len + 1);
        if (!s->strs[s->n]) goto nomem;
        memcpy(s->strs[s->n], strs[i], len + 1);
        s->lens[s->n++] = len;
    }
    return KILN_OK;
nomem:
    kiln_stop_free(s);
    return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory for stop strings");
}

void kiln_stop_free(struct kiln_stop *s)
{
    for (int i = 0; i < s->n; i++) free(s->strs[i]);
    free(s->strs);
    free(s->lens);
    free(s->buf);
    memset(s, 0, sizeof *s);
}

/* Length of the longest tail of buf[0..len) that is a proper prefix of a stop string. */
static size_t held_back(const struct kiln_stop *s)
{
    size_t hold = 0;
    for (int i = 0; i < s->n; i++) {
        size_t k = s->lens[i] - 1 < s->len ? s->lens[i] - 1 : s->len;
        for (; k > hold; k--)
            if (!memcmp(s->buf + s->len - k, s->strs[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

enum kiln_status kiln_stop_push(struct kiln_stop *s, const char *text, size_t len, bool check,
                                size_t *ready, int *matched, struct kiln_error *err)
{
    *matched = -1;
    if (s->len + len + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->len + len + 1) cap *= 2;
        char *b = realloc(s->buf, cap);
        if (!b) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory for output text");
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, text, len);
    s->len += len;
    s->buf[s->len] = 0;
    if (check) {
        size_t best = s->len;
        for (int i = 0; i < s->n; i++) {
            const char *hit = memmem(s->buf, s->len, s->strs[i], s->lens[i]);
            if (hit && (size_t)(hit - s->buf) < best) {
                best = (size_t)(hit - s->buf);
                *matched = i;
            }
        }
        if (*matched >= 0) {
            *ready = best;
            return KILN_OK;
        }
    }
    *ready = s->len - held_back(s);
    return KILN_OK;
}

void kiln_stop_consume(struct kiln_stop *s, size_t n)
{
    if (n > s->len) n = s->len;
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
    if (s->buf) s->buf[s->len] = 0;
}
