/* libFuzzer target: the safetensors header parser over arbitrary bytes. A file it accepts must
 * have every tensor span inside the buffer (each byte is read back here, so ASan catches any
 * span the validation let through wrongly). */
#include <stddef.h>
#include <stdint.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kiln_st_header h;
    struct kiln_error err;
    if (kiln_st_parse(data, size, "fuzz.safetensors", &h, &err) != KILN_OK) return 0;
    volatile uint8_t sink = 0;
    uint64_t expect = 0;
    for (size_t i = 0; i < h.n; i++) {
        const struct kiln_st_tensor *t = &h.tensors[i];
        KILN_ASSERT(t->begin <= t->end && t->end <= size - h.data_offset);
        KILN_ASSERT(t->begin <= expect); /* spans tile the data section */
        if (t->end > expect) expect = t->end;
        const uint8_t *p = t->data;
        for (uint64_t j = 0; j < t->end - t->begin; j++) sink ^= p[j];
    }
    KILN_ASSERT(expect == size - h.data_offset);
    (void)sink;
    kiln_st_header_free(&h);
    return 0;
}
