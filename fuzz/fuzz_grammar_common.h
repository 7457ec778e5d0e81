/* Shared by the constraint-engine fuzzers: a small byte vocabulary (every single byte, some
 * JSON-ish multi-byte tokens, an EOS), and a run of the matcher over bytes that checks the mask
 * against accept at every step. */
#ifndef KILN_FUZZ_GRAMMAR_COMMON_H
#define KILN_FUZZ_GRAMMAR_COMMON_H

#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

static struct kiln_grammar_vocab *fz_vocab(void)
{
    static struct kiln_grammar_vocab *v;
    if (v) return v;
    static const char *const multi[] = {
        "{\"",   "\":", "\",\"", "\"}",      "true", "false", "null", "ab", "abc", "12", "0.", "e+",
        "\\u00", "\\n", "é",     "\xe2\x82", "\xac", "[\"",   "\"]",  ", ", ": ",  "  ", "\n"};
    enum { NM = sizeof multi / sizeof multi[0] };
    static char single[256][1];
    const char *toks[256 + NM + 1];
    size_t lens[256 + NM + 1];
    for (int b = 0; b < 256; b++) {
        single[b][0] = (char)b;
        toks[b] = single[b];
        lens[b] = 1;
    }
    for (int k = 0; k < NM; k++) {
        toks[256 + k] = multi[k];
        lens[256 + k] = strlen(multi[k]);
    }
    toks[256 + NM] = NULL;
    lens[256 + NM] = 0;
    struct kiln_error err;
    if (gr_vocab_from_strings(toks, lens, 256 + NM + 1, 256 + NM, &v, &err)) abort();
    return v;
}

/* mask == accept for every token of the vocabulary */
static void fz_check_all(struct kiln_matcher *m, const uint32_t *mask, int32_t nv)
{
    for (int32_t t = 0; t < nv; t++) {
        bool a = kiln_matcher_accept(m, t);
        KILN_ASSERT(a == (bool)(mask[t >> 5] >> (t & 31) & 1));
        if (a) kiln_matcher_rollback(m, 1);
    }
}

/* Feeds data byte by byte (as single-byte tokens) while allowed; checks mask == accept for every
 * token each step, and rollback. Twice: the second matcher starts from what the first left in
 * the grammar (per-state analyses, frame walks). */
static void fz_run(struct kiln_grammar *g, const uint8_t *data, size_t size)
{
    struct kiln_grammar_vocab *v = fz_vocab();
    int32_t nv = kiln_grammar_vocab_size(v);
    for (int pass = 0; pass < 2; pass++) {
        struct kiln_matcher *m;
        struct kiln_error err;
        if (kiln_matcher_create(g, &m, &err)) return;
        uint32_t mask[(256 + 32 + 31) / 32 + 1];
        for (size_t i = 0; i < size && i < 256; i++) {
            kiln_matcher_fill_mask(m, mask);
            fz_check_all(m, mask, nv);
            int32_t t = data[i];
            bool allowed = mask[t >> 5] >> (t & 31) & 1;
            bool acc = kiln_matcher_accept(m, t);
            KILN_ASSERT(allowed == acc);
            if (!acc) break;
        }
        bool complete = kiln_matcher_is_complete(m);
        kiln_matcher_fill_mask(m, mask);
        fz_check_all(m, mask, nv);
        KILN_ASSERT(complete == (bool)(mask[(nv - 1) >> 5] >> ((nv - 1) & 31) & 1));
        int32_t forced[8];
        kiln_matcher_forced(m, forced, 8);
        kiln_matcher_free(m);
    }
}

#endif
