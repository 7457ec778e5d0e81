/* Tokenizer internals shared by the files of src/tokenizer/ (not a public header).
 *
 * Encoding runs the Hugging Face pipeline in its order: invalid UTF-8 -> U+FFFD, added tokens
 * that are not "normalized" split out, normalizer per remaining segment, "normalized" added
 * tokens split out, pre-tokenizer (a list of split steps), BPE per piece, post-processor.
 * Byte-level tokenizers keep their vocabulary keyed by raw bytes (the GPT-2 byte->char map is
 * undone once at load), so the ByteLevel pre-tokenizer costs nothing per call. */
#ifndef KILN_TOKENIZER_INTERNAL_H
#define KILN_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "tokenizer.h"

/* ---- growable byte buffer ---- */
struct tk_buf {
    char *p;
    size_t n, cap;
    bool oom; /* sticky: set when an append failed */
};
void tk_buf_put(struct tk_buf *b, const void *data, size_t n);
void tk_buf_putc(struct tk_buf *b, char c);
void tk_buf_puts(struct tk_buf *b, const char *s);
void tk_buf_printf(struct tk_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tk_buf_put_cp(struct tk_buf *b, uint32_t cp); /* UTF-8 encode one code point */
/* Hands the NUL-terminated bytes to the caller (*out) or fails with NOMEM. */
enum kiln_status tk_buf_finish(struct tk_buf *b, char **out, size_t *len, struct kiln_error *err);

/* ---- UTF-8 ---- */
/* Decodes one well-formed sequence at s[0..n); returns its length (1..4) and the code point, or
 * 0 when the bytes there are not a complete well-formed sequence. */
int tk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
/* Length of the maximal prefix of an ill-formed sequence at s (>= 1), the unit that becomes one
 * U+FFFD under Unicode's "maximal subpart" practice (Python's errors="replace", Rust's
 * from_utf8_lossy). Returns 0 when s[0..n) is a valid but incomplete prefix. */
size_t tk_utf8_bad_len(const unsigned char *s, size_t n);
/* Appends s[0..n) to b with every ill-formed part replaced by U+FFFD. */
void tk_utf8_lossy(struct tk_buf *b, const char *s, size_t n);
bool tk_utf8_valid(const char *s, size_t n);
bool tk_is_whitespace(uint32_t cp); /* Unicode White_Space (Rust char::is_whitespace) */
bool tk_is_py_space(uint32_t cp);   /* Python str.isspace() */
size_t tk_utf8_count(const char *s, size_t n);

/* ---- hash map: byte string -> int32, keys stored by the caller in a pool ---- */
struct tk_strmap {
    uint64_t *slots; /* [cap] hash tag << 32 | (entry index + 1), 0 = empty: the tag spares
                        most key comparisons (and their cache misses) */
    uint32_t cap;    /* power of two */
    uint32_t count;
    const char *const *keys; /* borrowed: keys[i], key_len[i] for entry i */
    const uint32_t *key_len;
};
uint64_t tk_hash(const void *data, size_t n);
/* the entry whose key is s[0..n), or -1; *slot (if not NULL) = where it is or would go */
int32_t tk_strmap_find(const struct tk_strmap *m, const char *s, size_t n, uint32_t *slot);
uint64_t tk_mix64(uint64_t x); /* integer key scrambler (murmur3 finalizer) */

/* ---- BPE pair map: (left id, right id) -> (rank, merged id) ---- */
struct tk_pair_slot {
    uint64_t key; /* (left << 32 | right) + 1, 0 = empty */
    uint32_t rank;
    int32_t merged;
}; /* 16 bytes: one probe touches one cache line */
struct tk_pairmap {
    struct tk_pair_slot *slots; /* [cap] */
    uint32_t cap;
};
bool tk_pairmap_get(const struct tk_pairmap *m, int32_t a, int32_t b, uint32_t *rank,
                    int32_t *merged);

/* ---- normalizers, pre-tokenizer steps, decoder ---- */
enum tk_norm_kind { TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_NFC };
struct tk_norm {
    enum tk_norm_kind kind;
    char *a, *b; /* prepend: a; replace: a -> b (string pattern) */
    size_t alen, blen;
};

enum tk_split_behavior {
    TK_SPLIT_REMOVED,
    TK_SPLIT_ISOLATED,
    TK_SPLIT_MERGED_PREV,
    TK_SPLIT_MERGED_NEXT,
    TK_SPLIT_CONTIGUOUS,
};
enum tk_pre_kind { TK_PRE_SPLIT, TK_PRE_METASPACE, TK_PRE_BYTELEVEL_PREFIX };
struct tk_pre {
    enum tk_pre_kind kind;
    enum tk_split_behavior behavior;
    bool invert;
    pcre2_code *re; /* split by regex when not NULL, else by the literal `lit` */
    char *lit;
    size_t lit_len;
    /* Metaspace: replacement character (UTF-8), prepend scheme, split on it */
    char rep[8];
    size_t rep_len;
    int prepend; /* 0 never, 1 first, 2 always */
    bool split;
};

struct tk_added {
    int32_t id;
    char *content;
    size_t len;
    bool special, lstrip, rstrip, normalized, single_word;
};

/* Trie over added-token contents for leftmost-longest matching. */
struct tk_trie {
    uint64_t *edge; /* [cap] (node << 8 | byte) + 1, 0 = empty; sparse: gemma3 has 6k tokens */
    int32_t *child; /* [cap] */
    uint32_t cap;   /* power of two */
    int32_t *term;  /* [nodes] index into the added-token table or -1 */
    uint32_t nodes, term_cap;
    bool first[256]; /* bytes that start some token: a quick skip */
};

/* Decoder, compiled from the HF decoder chain (see decode.c). */
struct tk_decoder {
    bool byte_level;      /* ByteLevel: per-token bytes, whole output via lossy UTF-8 */
    bool byte_fallback;   /* <0xXX> tokens gathered into groups, bad group -> U+FFFD per byte */
    bool metaspace_first; /* Metaspace: drop every replacement char of the first token */
    bool join_space;      /* no decoder at all: HF joins tokens with " " */
    uint32_t strip_char;  /* Strip(content, start, 0) after Fuse */
    int strip_start;
};

struct kiln_tokenizer {
    uint64_t uid; /* unique per loaded tokenizer (word caches key on it), never 0 */
    /* vocabulary: id -> token in encoder form (raw bytes for byte-level models) */
    int32_t vocab_n;        /* ids 0 .. vocab_n-1 (model + added tokens) */
    char **tok;             /* [vocab_n] encoder-form bytes (NULL when the id is unused) */
    uint32_t *tok_len;      /* [vocab_n] */
    char **dec;             /* [vocab_n] decoded bytes of the token (decoder applied per token) */
    uint32_t *dec_len;      /* [vocab_n] */
    int16_t *dec_byte;      /* [vocab_n] byte value of a <0xXX> fallback token, else -1 */
    uint8_t *dec_utf8;      /* [vocab_n] dec is whole, valid UTF-8 (the streaming fast path) */
    uint8_t *is_special;    /* [vocab_n] special added token */
    uint8_t *is_added;      /* [vocab_n] */
    struct tk_strmap vocab; /* model vocabulary (encoder form) -> id */
    struct tk_pairmap merges;
    bool byte_level;      /* ByteLevel pre-tokenizer present: encoder form is raw bytes */
    int32_t byte_id[256]; /* byte-level: id of each single byte, -1 if absent */
    bool ignore_merges, byte_fallback, fuse_unk;
    int32_t unk_id;          /* -1 when none */
    int32_t byte_token[256]; /* byte_fallback: id of "<0xXX>", -1 if absent */

    struct tk_added *added;
    size_t added_n;
    struct tk_trie trie_raw, trie_norm; /* non-normalized / normalized added tokens */

    struct tk_norm *norm;
    size_t norm_n;
    struct tk_pre *pre;
    size_t pre_n;

    int32_t *post_prefix, *post_suffix; /* ids the post-processor adds around one sequence */
    size_t post_prefix_n, post_suffix_n;
    bool has_post; /* tokenizer.json has a post_processor */

    struct tk_decoder decoder;

    int32_t bos_id;
    int32_t *eos;
    int eos_n;
    char *bos_token, *eos_token, *unk_token, *pad_token; /* strings for templates, may be NULL */

    struct tk_chat *chat; /* compiled chat template(s), NULL when none */
};

/* load.c helpers used by others */
int32_t tk_token_id(const struct kiln_tokenizer *tok, const char *s, size_t n);

/* encode.c */
enum kiln_status tk_encode(const struct kiln_tokenizer *tok, const char *text, size_t len,
                           bool add_special, int32_t **ids, size_t *n, struct kiln_error *err);
void tk_trie_free(struct tk_trie *t);
/* Trie of the added tokens whose "normalized" flag equals `normalized` (needs tok->added and
 * tok->norm). */
enum kiln_status tk_trie_build(struct tk_trie *t, const struct kiln_tokenizer *tok, bool normalized,
                               struct kiln_error *err);

/* nfc.c */
/* Appends the NFC form of s[0..n) (valid UTF-8) to b. */
void tk_nfc(struct tk_buf *b, const char *s, size_t n);

/* chat.c (declared in chat.h with the JSON types) */
struct tk_chat;
void tk_chat_free(struct tk_chat *c);

#endif
