/* Errors: every fallible function returns an enum kiln_status and, on failure, fills a
 * struct kiln_error with a message a user can act on ("model.layers.3.mlp.up_proj.weight:
 * expected F8_E4M3, got BF16"). Library code never exits; KILN_ASSERT is for broken
 * invariants only (a bug in kiln, never bad input). */
#ifndef KILN_CORE_ERROR_H
#define KILN_CORE_ERROR_H

#include <stddef.h>

enum kiln_status {
    KILN_OK = 0,
    KILN_ERR_IO,          /* file missing, unreadable, short write */
    KILN_ERR_FORMAT,      /* malformed bytes: JSON, safetensors, tokenizer */
    KILN_ERR_INVALID,     /* well-formed but inconsistent or out of range */
    KILN_ERR_UNSUPPORTED, /* valid but not something kiln handles */
    KILN_ERR_NOMEM,       /* host or device allocation failed */
    KILN_ERR_LIMIT,       /* exceeds a configured limit (context, batch, memory) */
    KILN_ERR_CUDA,        /* a CUDA / cuBLASLt call failed */
    KILN_ERR_INTERNAL,    /* invariant broken at run time, reported not aborted */
};

struct kiln_error {
    enum kiln_status code;
    char msg[1024];
};

/* Fills err (if not NULL) and returns code, so callers can write
 * `return kiln_errorf(err, KILN_ERR_IO, "%s: %s", path, strerror(errno));` */
enum kiln_status kiln_errorf(struct kiln_error *err, enum kiln_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (adds context while unwinding). */
enum kiln_status kiln_error_prefix(struct kiln_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void kiln_error_clear(struct kiln_error *err);
const char *kiln_status_name(enum kiln_status code);

/* Always on, also in release builds: prints the failed condition with file:line and aborts. */
#define KILN_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) kiln_assert_fail(#cond, __FILE__, __LINE__);                                  \
    } while (0)

_Noreturn void kiln_assert_fail(const char *what, const char *file, int line);

#endif
