/* Logging to stderr: "2026-11-25T10:00:00.123Z kiln INFO message". The level is read once
 * from KILN_LOG (debug|info|warn|error), default info. Thread-safe (one fprintf per line). */
#ifndef KILN_CORE_LOG_H
#define KILN_CORE_LOG_H

enum kiln_log_level { KILN_LOG_DEBUG, KILN_LOG_INFO, KILN_LOG_WARN, KILN_LOG_ERROR };

void kiln_log(enum kiln_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void kiln_log_set_level(enum kiln_log_level level);
int kiln_log_enabled(enum kiln_log_level level);

#define KILN_DEBUG(...) kiln_log(KILN_LOG_DEBUG, __VA_ARGS__)
#define KILN_INFO(...)  kiln_log(KILN_LOG_INFO, __VA_ARGS__)
#define KILN_WARN(...)  kiln_log(KILN_LOG_WARN, __VA_ARGS__)
#define KILN_ERROR(...) kiln_log(KILN_LOG_ERROR, __VA_ARGS__)

/* Monotonic clock in seconds, for timings. */
double kiln_now(void);

#endif
