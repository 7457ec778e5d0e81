/* Shared helpers of the model tests: temporary folders, raw files, hand-made safetensors. */
#ifndef KILN_TESTS_MODEL_HELPERS_H
#define KILN_TESTS_MODEL_HELPERS_H

#include <stddef.h>
#include <stdint.h>

/* A fresh folder under $TMPDIR (or /tmp); malloc'd path. */
char *tmpdir_make(void);
/* Removes a folder and everything below it. */
void tmpdir_remove(const char *path);
/* Writes dir/name (fails the test on error). */
void write_bytes(const char *dir, const char *name, const void *data, size_t n);
void write_text(const char *dir, const char *name, const char *text);
/* A whole safetensors file in memory: [u64 len][header][data_len bytes, byte i = i * 7]. */
uint8_t *st_build(const char *header, size_t data_len, size_t *size);
/* Reads a whole file; malloc'd, *n its size. */
uint8_t *read_all(const char *path, size_t *n);

struct kiln_model;
struct kiln_tensor;
/* a and b have the same dtype, shape and bytes. */
void assert_same_tensor(const struct kiln_tensor *a, const struct kiln_tensor *b);
/* Every view of a and b has the same dtype, shape and bytes, and every scale is equal. */
void assert_same_model(const struct kiln_model *a, const struct kiln_model *b);

#endif
