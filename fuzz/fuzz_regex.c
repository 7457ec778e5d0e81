/* libFuzzer target: the regex compiler (whole-output regex constraints; also the grammar-text
 * compiler when the input starts with "G:"), and the matcher over what it compiles. The input
 * is the regex, then optionally a NUL and bytes to feed the matcher. */
#include <stdint.h>
#include <string.h>

#include "fuzz_grammar_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t slen = nul ? (size_t)(nul - data) : size;
    struct kiln_constraint_spec spec = {KILN_CONSTRAINT_REGEX, (const char *)data, slen};
    if (slen >= 2 && data[0] == 'G' && data[1] == ':') {
        spec.kind = KILN_CONSTRAINT_GRAMMAR;
        spec.text += 2;
        spec.len -= 2;
    }
    struct kiln_grammar *g;
    struct kiln_error err;
    if (kiln_grammar_compile(&spec, fz_vocab(), &g, &err) == KILN_OK) {
        if (nul) fz_run(g, nul + 1, size - slen - 1);
        kiln_grammar_unref(g);
    } else
        KILN_ASSERT(err.msg[0] != 0);
    return 0;
}
