/* Files: whole-file reads, read-only mappings, and atomic writes (write to "PATH.tmp-PID",
 * fsync, rename) so a crash never leaves a half-written output under the final name. */
#ifndef KILN_CORE_FILE_H
#define KILN_CORE_FILE_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

struct kiln_mapping {
    void *data;  /* read-only; NULL when size == 0 */
    size_t size; /* bytes */
};

enum kiln_status kiln_file_map(const char *path, struct kiln_mapping *out, struct kiln_error *err);
void kiln_file_unmap(struct kiln_mapping *m);

/* Reads a whole file into a NUL-terminated heap buffer (max_size guards against surprises). */
enum kiln_status kiln_file_read(const char *path, size_t max_size, char **out, size_t *len,
                                struct kiln_error *err);
enum kiln_status kiln_file_write_atomic(const char *path, const void *data, size_t len,
                                        struct kiln_error *err);
bool kiln_file_exists(const char *path);
bool kiln_dir_exists(const char *path);

/* dst = dir + "/" + name; returns an error when it does not fit. */
enum kiln_status kiln_path_join(char *dst, size_t cap, const char *dir, const char *name,
                                struct kiln_error *err);

#endif
