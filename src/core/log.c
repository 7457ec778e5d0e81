#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int current_level = -1;

static int level_from_env(void)
{
    const char *s = getenv("KILN_LOG");
    if (!s) return KILN_LOG_INFO;
    if (!strcmp(s, "debug")) return KILN_LOG_DEBUG;
    if (!strcmp(s, "warn")) return KILN_LOG_WARN;
    if (!strcmp(s, "error")) return KILN_LOG_ERROR;
    return KILN_LOG_INFO;
}

void kiln_log_set_level(enum kiln_log_level level)
{
    current_level = (int)level;
}

int kiln_log_enabled(enum kiln_log_level level)
{
    if (current_level < 0) current_level = level_from_env();
    return (int)level >= current_level;
}

void kiln_log(enum kiln_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if (!kiln_log_enabled(level)) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ kiln %s %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            names[level], msg);
}

double kiln_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
