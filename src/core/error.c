#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kiln_status kiln_errorf(struct kiln_error *err, enum kiln_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

enum kiln_status kiln_error_prefix(struct kiln_error *err, const char *fmt, ...)
{
    if (!err) return KILN_ERR_INTERNAL;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", prefix, old);
    return err->code;
}

void kiln_error_clear(struct kiln_error *err)
{
    if (err) {
        err->code = KILN_OK;
        err->msg[0] = 0;
    }
}

const char *kiln_status_name(enum kiln_status code)
{
    switch (code) {
    case KILN_OK:
        return "ok";
    case KILN_ERR_IO:
        return "io";
    case KILN_ERR_FORMAT:
        return "format";
    case KILN_ERR_INVALID:
        return "invalid";
    case KILN_ERR_UNSUPPORTED:
        return "unsupported";
    case KILN_ERR_NOMEM:
        return "out of memory";
    case KILN_ERR_LIMIT:
        return "limit";
    case KILN_ERR_CUDA:
        return "cuda";
    case KILN_ERR_INTERNAL:
        return "internal";
    }
    return "unknown";
}

void kiln_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "kiln: assertion failed: %s (%s:%d)\n", what, file, line);
    abort();
}
