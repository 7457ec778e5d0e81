/* libFuzzer target: encoding arbitrary bytes. The first byte picks a tokenizer (llama3_1,
 * llama2, qwen3, deepseek_v3 from $KILN_TOKENIZERS, default build/tokenizers); the rest is the
 * text. Checks what must hold for any input: ids are in the vocabulary, the streaming
 * detokenizer gives the one-shot text and only whole UTF-8 characters, and byte-level
 * tokenizers without a normalizer give the (U+FFFD-replaced) input back. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static const char *const names[] = {"llama3_1", "llama2", "qwen3", "deepseek_v3"};
static struct kiln_tokenizer *toks[4];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("KILN_TOKENIZERS");
    if (!root || !*root) root = "build/tokenizers";
    for (int i = 0; i < 4; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", root, names[i]);
        struct kiln_error err = {0};
        if (kiln_tokenizer_load(dir, &toks[i], &err)) {
            fprintf(stderr, "fuzz_tokenizer_encode: %s (run scripts/fetch-tokenizers)\n", err.msg);
            exit(1);
        }
    }
    return 0;
}

/* valid UTF-8 check, independent of the tokenizer's own code */
static bool utf8_ok(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        size_t len = c < 0x80                 ? 1
                     : c >= 0xC2 && c <= 0xDF ? 2
                     : c >= 0xE0 && c <= 0xEF ? 3
                     : c >= 0xF0 && c <= 0xF4 ? 4
                                              : 0;
        if (!len || i + len > n) return false;
        for (size_t k = 1; k < len; k++)
            if ((u[i + k] & 0xC0) != 0x80) return false;
        if ((c == 0xE0 && u[i + 1] < 0xA0) || (c == 0xED && u[i + 1] > 0x9F) ||
            (c == 0xF0 && u[i + 1] < 0x90) || (c == 0xF4 && u[i + 1] > 0x8F))
            return false;
        i += len;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    int which = data[0] % 4;
    const struct kiln_tokenizer *tok = toks[which];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    struct kiln_error err = {0};
    int32_t *ids;
    size_t n;
    if (kiln_tokenizer_encode(tok, text, len, (data[0] & 4) != 0, &ids, &n, &err)) return 0;
    for (size_t i = 0; i < n; i++)
        KILN_ASSERT(ids[i] >= 0 && ids[i] < kiln_tokenizer_vocab_size(tok));
    for (int skip = 0; skip < 2; skip++) {
        char *one;
        size_t one_len;
        KILN_ASSERT(kiln_tokenizer_decode(tok, ids, n, skip, &one, &one_len, &err) == KILN_OK);
        KILN_ASSERT(utf8_ok(one, one_len));
        struct kiln_detok *d = kiln_detok_create(tok, skip);
        KILN_ASSERT(d != NULL);
        char *acc = NULL;
        size_t acc_len = 0;
        for (size_t i = 0; i < n; i++) {
            char *delta = NULL;
            size_t dl = 0;
            KILN_ASSERT(kiln_detok_push(d, ids[i], &delta, &dl, &err) == KILN_OK);
            KILN_ASSERT(utf8_ok(delta, dl));
            acc = realloc(acc, acc_len + dl + 1);
            KILN_ASSERT(acc != NULL);
            memcpy(acc + acc_len, delta, dl);
            acc_len += dl;
            free(delta);
        }
        KILN_ASSERT(kiln_detok_flush(d, &acc, &acc_len, &err) == KILN_OK);
        KILN_ASSERT(acc_len == one_len && memcmp(acc, one, one_len) == 0);
        kiln_detok_free(d);
        free(acc);
        /* byte-level, no normalizer, nothing special in the text: the text comes back */
        if ((which == 0 || which == 3) && !skip && !(data[0] & 4) && utf8_ok(text, len) &&
            !memchr(text, '<', len))
            KILN_ASSERT(one_len == len && memcmp(one, text, len) == 0);
        free(one);
    }
    free(ids);
    return 0;
}
