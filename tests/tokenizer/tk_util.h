/* Helpers for the tokenizer tests: where the tokenizer packages and fixtures are, reading
 * (gzip'ed) JSON-lines fixtures, and the corpus as raw bytes. */
#ifndef KILN_TESTS_TOKENIZER_TK_UTIL_H
#define KILN_TESTS_TOKENIZER_TK_UTIL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

struct tk_text {
    char *p;
    size_t n;
};

/* $KILN_TOKENIZERS/NAME (default $KILN_BINARY_DIR/tokenizers/NAME); "llama2_metaspace" is
 * made from llama2 (see make_fixtures.py). Fails the test when the package is missing. */
const char *tk_test_tokenizer_dir(const char *name);
struct kiln_tokenizer *tk_test_load(const char *name);
/* $KILN_SOURCE_DIR/tests/fixtures/tokenizer/REL */
const char *tk_test_fixture(const char *rel);
/* Every line of a JSON-lines file (gzip'ed when it ends in .gz), parsed; *n lines. */
json_t **tk_test_read_jsonl(const char *path, size_t *n);
void tk_test_free_jsonl(json_t **v, size_t n);
/* corpus.jsonl as bytes: strings as UTF-8, {"hex": ...} lines as their bytes */
struct tk_text *tk_test_corpus(size_t *n);
void tk_test_free_corpus(struct tk_text *c, size_t n);
/* the text HF sees for corpus bytes: invalid UTF-8 replaced (errors="replace") */
struct tk_text tk_test_replaced(const struct tk_text *t);

#endif
