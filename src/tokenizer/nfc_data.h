/* Unicode tables for NFC (generated into nfc_data.c by tools/tokenizer/gen_nfc_tables.py). */
#ifndef KILN_TOKENIZER_NFC_DATA_H
#define KILN_TOKENIZER_NFC_DATA_H

#include <stdint.h>

struct tk_ccc_range {
    uint32_t first, last;
    uint8_t ccc; /* canonical combining class, non-zero */
};
struct tk_decomp {
    uint32_t cp, a, b; /* cp -> a b (b = 0: singleton), one level, sorted by cp */
};
struct tk_comp {
    uint32_t a, b, cp; /* primary composite a + b -> cp, sorted by (a, b) */
};

extern const struct tk_ccc_range tk_ccc_ranges[];
extern const unsigned tk_ccc_ranges_n;
extern const struct tk_decomp tk_decomps[];
extern const unsigned tk_decomps_n;
extern const struct tk_comp tk_comps[];
extern const unsigned tk_comps_n;

#endif
