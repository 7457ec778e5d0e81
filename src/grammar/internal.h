/* Internals of the constraint engine: the expression trees the compilers build (gx), the
 * grammar builder that turns them into per-rule byte NFAs with call edges, and the compiled
 * grammar the matcher walks. Not part of the public API. */
#ifndef KILN_GRAMMAR_INTERNAL_H
#define KILN_GRAMMAR_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "grammar/grammar.h"

/* ---- expression trees ---- */
enum gx_op { GX_NONE, GX_EMPTY, GX_BYTES, GX_SEQ, GX_ALT, GX_REP, GX_RULE, GX_GRAPH, GX_DFA };
/* a byte edge of a GX_DFA: from state `from` over bytes lo..hi to state `to` */
struct gx_dfa_edge {
    int32_t from, to;
    uint8_t lo, hi;
};
struct gx {
    enum gx_op op;
    int n, cap;       /* SEQ / ALT children; GRAPH: edges; DFA: states */
    struct gx **kid;  /* SEQ / ALT children; REP: kid[0]; GRAPH: what edge i reads; DFA: each
                       * state's exit (GX_NONE: none) */
    uint32_t bits[8]; /* BYTES: the set of bytes */
    int min, max;     /* REP: max -1 = unbounded; GRAPH: min states (0 the start) */
    int rule;         /* RULE: the rule called; DFA: the number of edges */
    int32_t *edge;    /* GRAPH: edge i goes from state edge[2i] to edge[2i + 1]; to min: the end */
    const struct gx_dfa_edge *dedge; /* DFA: its edges (state 0 is the start) */
};

struct gr_block;
struct gr_builder {
    struct gr_block *blocks;
    size_t bytes; /* allocated so far (limit: GR_MAX_BYTES) */
    size_t work;  /* steps so far (limit: GR_MAX_WORK) */
    struct gx **body;
    char **name;
    int n, cap;
    bool failed; /* out of memory or over a limit; the message is in err */
    struct kiln_error *err;
    enum kiln_grammar_ws ws;
    int r_json_value; /* lazily created shared rules, -1 until then */
    int r_json_string, r_json_object;
    /* shared rules inside JSON strings: what follows the backslash of any escaped character,
     * of any non-ASCII one (gx_json_chars); the rest of a string after its opening quote */
    int r_esc, r_esc_hi, r_string_rest, r_utf8_hi, r_esc_key;
    int r_ws; /* the whitespace between JSON tokens under KILN_GRAMMAR_WS_INDENT */
    /* gx_json_chars spells ASCII 0x20-0x7F raw only (no \u00XX, no \/), as the keys of
     * objects with patterns are taken (schema.c): their automata need no other spellings */
    bool json_canon;
    int r_key_tail; /* a search's trailing any characters under json_canon (keydfa.c) */
};

#define GR_MAX_BYTES ((size_t)256 << 20)
/* The compile budget: a constraint is refused ("too large to compile") when its rules would
 * emit more automaton states than GR_MAX_STATES (estimated from the expressions before anything
 * is built, so that refusal costs a millisecond), or when building it would take more steps
 * than GR_MAX_WORK (epsilon closures and the left-recursion walk, quadratic at worst: a?a?a?...;
 * 15-60 ns a step on the dev machine, so that refusal takes 0.15-0.6 s). MaskBench's largest schema
 * (a 938 KB Kubernetes document) needs 759,000 states and 4.0M steps. The fuzz build lowers
 * both (CMakeLists.txt) to keep each input within libFuzzer's timeout under the sanitizers. */
#ifndef GR_MAX_STATES
#define GR_MAX_STATES 1000000
#endif
#define GR_MAX_WORK ((size_t)GR_MAX_STATES * 10)

void gb_init(struct gr_builder *b, struct kiln_error *err);
void gb_free(struct gr_builder *b);
void *gb_alloc(struct gr_builder *b, size_t n); /* zeroed; NULL (and b->failed) past the limit */
char *gb_strdup(struct gr_builder *b, const char *s, size_t n);
/* Sets err (first failure wins) and b->failed; returns NULL for convenience. */
struct gx *gb_fail(struct gr_builder *b, enum kiln_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

int gb_rule(struct gr_builder *b, const char *name); /* a new rule, body unset (-1 on failure) */
void gb_set(struct gr_builder *b, int rule, struct gx *body);

struct gx *gx_none(struct gr_builder *b);
struct gx *gx_empty(struct gr_builder *b);
struct gx *gx_byte(struct gr_builder *b, unsigned c);
struct gx *gx_range(struct gr_builder *b, unsigned lo, unsigned hi);
struct gx *gx_lit(struct gr_builder *b, const char *s, size_t n);
struct gx *gx_str(struct gr_builder *b, const char *s); /* NUL-terminated literal */
struct gx *gx_seq(struct gr_builder *b);                /* empty SEQ to fill with gx_add */
struct gx *gx_alt(struct gr_builder *b);                /* empty ALT (fails) to fill */
struct gx *gx_add(struct gr_builder *b, struct gx *parent, struct gx *kid); /* returns parent */
struct gx *gx_seq2(struct gr_builder *b, struct gx *x, struct gx *y);
struct gx *gx_alt2(struct gr_builder *b, struct gx *x, struct gx *y);
struct gx *gx_rep(struct gr_builder *b, struct gx *x, int min, int max);
struct gx *gx_opt(struct gr_builder *b, struct gx *x);
struct gx *gx_call(struct gr_builder *b, int rule);
/* An automaton whose edges read expressions: nstates states (0 the start), edge i from
 * ends[2i] to ends[2i + 1] reading label[i]; an edge to state nstates ends it. An automaton
 * (a regex intersected with a length, regex.c) written without the blow-up of an expression. */
struct gx *gx_graph(struct gr_builder *b, int nstates, int nedges, const int32_t *ends,
                    struct gx *const *label);

/* A set of Unicode code points as sorted, disjoint, inclusive ranges. */
struct cp_set {
    uint32_t (*r)[2];
    int n, cap;
};
void cps_add(struct cp_set *s, uint32_t lo, uint32_t hi); /* then cps_norm */
void cps_norm(struct cp_set *s);                          /* sort + merge */
void cps_negate(struct cp_set *s);                        /* within 0..0x10FFFF minus surrogates */
void cps_free(struct cp_set *s);
bool cps_has(const struct cp_set *s, uint32_t c);
/* The UTF-8 encodings of the set's code points (surrogates never). */
struct gx *gx_utf8(struct gr_builder *b, const struct cp_set *s);
/* The set's code points (a normalized set) as characters inside a JSON string: unescaped where
 * JSON allows, escaped (\" \\ \/ \b \f \n \r \t \uXXXX) where it must or may. */
struct gx *gx_json_chars(struct gr_builder *b, const struct cp_set *s);
/* The same characters as up to three graph labels, each a byte set or a call where it can:
 * the unescaped ASCII ones (a byte set), the other unescaped ones (a rule), the escaped ones
 * (a rule: the backslash and what follows). Returns how many (0 on failure). */
int gx_json_char_parts(struct gr_builder *b, const struct cp_set *s, struct gx *part[3]);
/* Any character inside a JSON string but the ASCII ones in `out` (bit c of out[c >> 5]), which
 * are refused unescaped and escaped; printable ASCII is only taken unescaped (its \uXXXX
 * spellings are refused: stricter, never looser), so the result is small and the same
 * everywhere but for its first byte class (the keys of objects with named properties). */
struct gx *gx_json_chars_but(struct gr_builder *b, const uint32_t out[4]);

/* Key automata (keydfa.c): the subset construction of several expressions over the same bytes
 * (regular ones: calls are inlined, recursion refused), each state knowing which of them
 * accept there (bit i: comp[i]), so that a caller can give every combination its own exit.
 * comp[0] bounds them all: a state none of whose paths are still in comp[0] is dead. */
struct gr_kdfa;
/* NULL with b->failed set past max_states DFA states (the message names `where`) */
struct gr_kdfa *gr_kdfa_build(struct gr_builder *b, struct gx *const *comp, int ncomp,
                              int max_states, const char *where);
int gr_kdfa_nstates(const struct gr_kdfa *d);
uint32_t gr_kdfa_mask(const struct gr_kdfa *d, int state); /* which components accept there */
uint32_t gr_kdfa_run(const struct gr_kdfa *d, const char *s, size_t n); /* mask at the end */
/* The automaton as one GX_DFA expression: from a state, its exit (exit[state]; NULL: none) or a
 * byte on; states that reach no exit are cut, so every prefix it takes can be finished. */
struct gx *gr_kdfa_emit(struct gr_builder *b, const struct gr_kdfa *d, struct gx *const *exit);
void gr_kdfa_free(struct gr_kdfa *d);

/* Regex (see grammar.h) over code points -> expression. json: emit characters as the inside of
 * a JSON string (gx_json_chars). search: JSON Schema `pattern` semantics (unanchored ends match
 * anything). */
struct gx *gr_regex(struct gr_builder *b, const char *re, size_t n, bool json, bool search,
                    const char *where);
/* The strings inside a JSON string that match every one of nre (at most 2) regexes (search[i]:
 * `pattern` semantics, else anchored: a format's) and have min..max code points (max -1: no
 * limit), as one automaton (gx_graph): the product of the regexes' automata and a counter.
 * Refused (KILN_ERR_UNSUPPORTED) past a budget of states; an empty language is gx_none. */
struct gx *gr_regex_meet(struct gr_builder *b, int nre, const char *const *re, const size_t *len,
                         const bool *search, long long min, long long max, const char *where);
/* A regex compiled once to test many strings: NULL when refused (b failed with its error);
 * gr_regex_match: 1 or 0, -1 out of memory (b failed). */
struct gr_regex;
struct gr_regex *gr_regex_compile(struct gr_builder *b, const char *re, size_t n, bool search,
                                  const char *where);
int gr_regex_match(struct gr_builder *b, const struct gr_regex *r, const char *s, size_t len);
void gr_regex_free(struct gr_regex *r);
/* Whether the string s (UTF-8, len bytes) matches the regex (search: `pattern` semantics): 1
 * or 0; -1 when the regex is refused (b failed with its error). */
int gr_regex_test(struct gr_builder *b, const char *re, size_t n, bool search, const char *s,
                  size_t len, const char *where);
/* JSON Schema document -> expression of one JSON value (where: JSON pointer prefix for errors). */
struct gx *gr_json_schema(struct gr_builder *b, const char *text, size_t n);
struct gx *gr_json_schema_value(struct gr_builder *b, void *json_root); /* a json_t * */
struct gx *gr_json_any_object(struct gr_builder *b);
struct gx *gr_json_any_value(struct gr_builder *b);
struct gx *gr_choice(struct gr_builder *b, const char *text, size_t n);
/* Grammar text -> the start rule's expression. */
struct gx *gr_ebnf(struct gr_builder *b, const char *text, size_t n);

/* ---- compiled grammar ---- */
struct gr_edge {
    uint8_t lo, hi;
    int32_t to;
};
struct gr_calle {
    int32_t rule, to;
};
struct gr_state {
    uint32_t e0, c0;
    uint16_t ne, nc;
    bool accept;
};

struct kiln_grammar {
    atomic_int refs;
    const struct kiln_grammar_vocab *vocab;
    int32_t nstates, nrules, root;
    struct gr_state *st;
    struct gr_edge *edges;
    struct gr_calle *calls;
    int32_t *rule_start;
    char **rule_name;
    /* the matcher's per-state plain-character analysis (matcher.c), allocated on first use and
     * shared by every matcher of this grammar: 0 unknown, else a GR_FA_* code */
    _Atomic(atomic_int *) fa;
    /* the matcher's per-state frame walks (struct gr_fw, matcher.c), published once each */
    _Atomic(_Atomic(struct gr_fw *) *) fw;
    _Atomic(struct gr_fw2 *) fw2; /* frame walks of (state, caller state) pairs, matcher.c */
    atomic_size_t fw_bytes;       /* what they hold, against a per-grammar budget */
};

/* Thompson's construction of x from state `from`, returning its end state: the one walk of
 * NONE / EMPTY / BYTES / SEQ / ALT / REP behind the grammar's automaton (build.c), the key
 * automata (keydfa.c) and the length products (regex.c). Each brings its states and edges; GX_RULE,
 * GX_GRAPH and GX_DFA go to `other`; nothing more is emitted once `stopped` says so. */
struct gx_nfa_ops {
    bool (*stopped)(void *ctx);
    int32_t (*state)(void *ctx);
    void (*edge)(void *ctx, int32_t from, int32_t to, const struct gx *bytes); /* NULL: epsilon */
    int32_t (*other)(void *ctx, int32_t from, const struct gx *x);
};
int32_t gx_thompson(const struct gx_nfa_ops *o, void *ctx, int32_t from, const struct gx *x);

/* The growable arrays of the module: *p (elements of elem bytes, *cap of them) grown by doubling
 * (from 64) to at least need; false when out of memory (*p and *cap kept). */
bool gr_grow(void **p, size_t *cap, size_t need, size_t elem);

/* Builds the grammar whose start is `root` (an expression turned into a rule); frees nothing of b.
 */
enum kiln_status gb_finish(struct gr_builder *b, struct gx *root, struct kiln_grammar **out);
void gr_grammar_free(struct kiln_grammar *g);

/* ---- vocabulary ---- */
/* A byte trie of token strings in preorder; node 0 is the root. */
struct gr_trie {
    uint32_t nnodes;
    uint8_t *nbyte;   /* [nnodes] */
    uint16_t *ndepth; /* [nnodes] */
    uint32_t *nnext;  /* [nnodes] index after the subtree */
    uint32_t *ntok0;  /* [nnodes] first token in `toks` ending here */
    uint16_t *ntokn;  /* [nnodes] how many */
    int32_t *toks;    /* token ids sorted by bytes */
};

struct kiln_grammar_vocab {
    const struct kiln_tokenizer *tok; /* for forced tokens (tokenizes the forced bytes) */
    int32_t n;
    int32_t *eos;
    int neos;
    char **bytes;  /* [n] token bytes (NULL: never allowed inside a value) */
    uint32_t *len; /* [n] */
    struct gr_trie all;
    /* "plain" tokens: complete UTF-8 without '"', '\\' or control characters (the inside of a
     * JSON string); a state every plain character leads back to allows all of them at once */
    uint32_t *plain_mask;
    struct gr_trie nonplain;
    struct gr_trie notascii; /* the tokens that are not plain ASCII (non-plain ones included) */
    int maxdepth;
    /* plain tokens by length in code points: plain_le[L * words ..] has those of at most L code
     * points (L < GR_PLAIN_LE); the longer ones are plain_long, sorted by plain_long_cp */
    uint32_t *plain_le;
    int32_t *plain_long;
    uint16_t *plain_long_cp;
    int32_t nplain_long;
    int plain_maxcp; /* the longest plain token, in code points */
    /* for walks of `all` that skip subtrees every plain string stays alive in (matcher.c):
     * all_tok0[i] the index in all.toks of node i's subtree's first token ([nnodes + 1]),
     * all_np[i] the node of `nonplain` with node i's bytes (GR_NO_NODE: none), all_big[i] the
     * index in big_masks of the plain tokens of node i's subtree when they are many (else -1) */
    uint32_t *all_tok0, *all_np;
    int32_t *all_big;
    uint32_t *big_masks;
    /* each plain token's characters, for masks of the plain tokens that avoid a set of
     * characters (matcher.c, frames of a character class): pl_id[nplain] the plain tokens,
     * pl_cp their length in code points, pl_first their first character, pl_rest[2 * i ..]
     * the characters after the first as a 128-bit set; a non-ASCII character counts as
     * GR_NONASCII ('"', never in a plain token) in both */
    int32_t nplain;
    int32_t *pl_id;
    uint16_t *pl_cp;
    uint8_t *pl_first;
    uint64_t *pl_rest;
    /* masks of the plain tokens avoiding a set of characters (struct gr_xmask, matcher.c), a
     * list pushed onto lock-free, shared by every grammar of this vocabulary (a cache: the
     * vocabulary is otherwise read-only) */
    struct gr_xcache *xcache;
};
#define GR_NO_NODE  UINT32_MAX
#define GR_BIG_AT   4096 /* plain tokens under a trie node for which all_big keeps a mask */
#define GR_PLAIN_LE 24
#define GR_NONASCII '"'

/* A vocabulary from raw byte strings (tests and fuzzers; no tokenizer: no forced tokens);
 * eos: the one EOS id (its string is ignored), -1 for none. */
enum kiln_status gr_vocab_from_strings(const char *const *toks, const size_t *lens, int32_t n,
                                       int32_t eos, struct kiln_grammar_vocab **out,
                                       struct kiln_error *err);

#endif
