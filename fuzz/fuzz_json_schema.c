/* libFuzzer target: the JSON Schema compiler (and the matcher over what it compiles). The
 * input is a schema, then optionally a NUL and bytes to feed the matcher. */
#include <stdint.h>
#include <string.h>

#include "fuzz_grammar_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t slen = nul ? (size_t)(nul - data) : size;
    struct kiln_constraint_spec spec = {KILN_CONSTRAINT_JSON_SCHEMA, (const char *)data, slen};
    struct kiln_grammar_options o = {size & 1 ? KILN_GRAMMAR_WS_FLEXIBLE : KILN_GRAMMAR_WS_COMPACT};
    struct kiln_grammar *g;
    struct kiln_error err;
    if (kiln_grammar_compile_opts(&spec, fz_vocab(), &o, &g, &err) == KILN_OK) {
        if (nul) fz_run(g, nul + 1, size - slen - 1);
        kiln_grammar_unref(g);
    } else
        KILN_ASSERT(err.msg[0] != 0);
    return 0;
}
