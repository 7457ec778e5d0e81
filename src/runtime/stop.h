/* Stop strings on streamed text, as OpenAI and vLLM apply them: the text is searched as it
 * grows; text that could still be the start of a stop string is held back; on a match the
 * output ends just before the stop string, which is never emitted.
 *
 * Use: push each text delta; emit the first `ready` bytes of s->buf, then consume them. */
#ifndef KILN_RUNTIME_STOP_H
#define KILN_RUNTIME_STOP_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

struct kiln_stop {
    char **strs;  /* [n] copies of the stop strings (empty ones dropped) */
    size_t *lens; /* [n] */
    int n;
    char *buf; /* text not emitted yet: held back, or ready and not consumed */
    size_t len, cap;
};

/* Copies the stop strings. */
enum kiln_status kiln_stop_init(struct kiln_stop *s, const char *const *strs, int n,
                                struct kiln_error *err);
void kiln_stop_free(struct kiln_stop *s);

/* Appends text (len bytes) and returns how many bytes at the front of s->buf may be emitted.
 * With check, the earliest complete stop string (ties: the first listed) ends the output:
 * *matched is its index and the returned count ends where it starts. Without check (under
 * min_tokens) a complete stop string is emitted as text. In both cases the longest tail that
 * is a proper prefix of some stop string is held back. *matched is -1 when nothing matched. */
enum kiln_status kiln_stop_push(struct kiln_stop *s, const char *text, size_t len, bool check,
                                size_t *ready, int *matched, struct kiln_error *err);
/* Drops the first n bytes of s->buf (after emitting them). */
void kiln_stop_consume(struct kiln_stop *s, size_t n);

#endif
