/* Constraint engine (structured output): compiles a constraint (JSON Schema, JSON object, regex,
 * a list of choices or kiln's grammar text) into a context-free grammar over bytes, and keeps a
 * per-sequence matcher that yields the exact set of allowed next tokens as a bitmask over the
 * vocabulary, accepts tokens, rolls back and says when the output is complete.
 *
 * How: every rule of the grammar is an NFA over bytes whose edges are byte ranges or calls of
 * other rules (a recursive transition network; regex terminals are inlined as byte automata).
 * A matcher state is the set of call stacks the output so far can be in (hash-consed stack nodes,
 * interned configurations, each (configuration, byte) step memoized), so a token is allowed iff
 * walking its whole byte string keeps the set non-empty: exact by construction. Masks come from
 * per-state work done once per grammar and shared by every matcher of it (matcher.c): whether
 * every run of plain string characters keeps the state alive (or exactly those up to a length),
 * and a walk of the vocabulary's byte trie from the state with its caller cut off (the tokens it
 * takes alone, the trie nodes where it may return); a mask is their union over the state's
 * stacks plus short walks, from each caller, of the subtrees returned at. Inside a counted run
 * of characters (maxLength), where every position is a new state, a per-matcher chain of the
 * configurations each plain character leads to gives the plain tokens instead; a configuration
 * walked as one (over 64 stacks: the key of an object with many listed names) skips the trie
 * subtrees where every plain character leads back to the same configuration. Left-recursive
 * grammars are refused at compile time (the stack sets would be unbounded).
 *
 * Never: loosens a schema silently (what it cannot enforce is a compile error naming the keyword
 * and its JSON pointer), allows a special token inside a value, or allows EOS before the output
 * is complete.
 *
 * GRAMMAR text (KILN_CONSTRAINT_GRAMMAR), GBNF/Lark-like:
 *   # comment to end of line
 *   root ::= greeting " " name            the first rule (or the one named `root`) is the start
 *   greeting ::= "hello" | "hi"           "literal" with JSON/C escapes \" \\ \n \t \r \uXXXX
 *   name ::= [A-Z] [a-z]*                 [class] of code points, [^...] negated, a-z ranges
 *   num ::= /-?[0-9]+(\.[0-9]+)?/         /regex/ terminal (the regex syntax below)
 *   list ::= "[" (item ("," item)*)? "]"  ( ) grouping, | alternation, * + ? {m,n} repetition
 *   call ::= %json { "type": "object" }   a JSON Schema (one JSON value after %json) as the body
 *   .                                      any code point
 * A rule may end with `;` or a newline before the next `name ::=`. Left recursion is refused.
 *
 * Regex (KILN_CONSTRAINT_REGEX, JSON Schema `pattern`, /.../ terminals): ECMAScript subset:
 * literals, `.`, classes [a-z] [^...], escapes \d \D \w \W \s \S \t \n \r \f \v \0 \xHH \uHHHH
 * \u{H..}, groups ( ) (?: ) (?<name> ), alternation |, quantifiers * + ? {m} {m,} {m,n} (lazy
 * forms accepted: same language), ^ at the start and $ at the end. Refused with an error:
 * backreferences, lookaround, \b \B, anchors elsewhere, flags. */
#ifndef KILN_GRAMMAR_GRAMMAR_H
#define KILN_GRAMMAR_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

enum kiln_constraint_kind {
    KILN_CONSTRAINT_NONE,
    KILN_CONSTRAINT_JSON_OBJECT, /* any JSON object (response_format json_object); text unused */
    KILN_CONSTRAINT_JSON_SCHEMA, /* text: a JSON Schema document (JSON) */
    KILN_CONSTRAINT_REGEX,       /* text: a regex (the whole output matches it) */
    KILN_CONSTRAINT_CHOICE,      /* text: a JSON array of strings; output is exactly one */
    KILN_CONSTRAINT_GRAMMAR,     /* text: kiln's EBNF/GBNF-like grammar, see above;
                                    a rule body may be `%json { ...schema... }` (a JSON Schema
                                    inlined as a sub-grammar) - used by tool calling */
};

struct kiln_constraint_spec {
    enum kiln_constraint_kind kind;
    const char *text; /* may contain NUL; len bytes */
    size_t len;
};

/* The vocabulary as byte strings (a trie), built once per tokenizer; immutable, shared by
 * every thread. Special tokens are never allowed inside a constrained value; the EOS ids are
 * allowed exactly when the matcher is complete. */
struct kiln_grammar_vocab;
enum kiln_status kiln_grammar_vocab_create(const struct kiln_tokenizer *tok,
                                           struct kiln_grammar_vocab **out, struct kiln_error *err);
void kiln_grammar_vocab_free(struct kiln_grammar_vocab *v);
int32_t kiln_grammar_vocab_size(const struct kiln_grammar_vocab *v);

/* A compiled constraint: immutable, reference counted, safe to share between threads. On
 * failure err->msg names what is unsupported/invalid and where, e.g.
 * "unsupported JSON Schema keyword 'patternProperties' at /properties/a" (callers answer it as
 * a 400). */
struct kiln_grammar;
enum kiln_status kiln_grammar_compile(const struct kiln_constraint_spec *spec,
                                      const struct kiln_grammar_vocab *v, struct kiln_grammar **out,
                                      struct kiln_error *err);
struct kiln_grammar *kiln_grammar_ref(struct kiln_grammar *g);
void kiln_grammar_unref(struct kiln_grammar *g);

/* Extra compile options (kiln_grammar_compile uses the defaults: all zero). */
enum kiln_grammar_ws {
    KILN_GRAMMAR_WS_COMPACT = 0, /* JSON without any whitespace between tokens */
    KILN_GRAMMAR_WS_FLEXIBLE,    /* any JSON whitespace ([ \t\n\r]*) between tokens */
    KILN_GRAMMAR_WS_INDENT,      /* indented JSON, bounded: between tokens nothing, one space,
                                    or a newline and at most KILN_GRAMMAR_INDENT_MAX spaces
                                    (json.dumps(indent=2) to depth 16, indent=4 to depth 8) */
};
#define KILN_GRAMMAR_INDENT_MAX 32
struct kiln_grammar_options {
    enum kiln_grammar_ws whitespace;
};
enum kiln_status kiln_grammar_compile_opts(const struct kiln_constraint_spec *spec,
                                           const struct kiln_grammar_vocab *v,
                                           const struct kiln_grammar_options *opts,
                                           struct kiln_grammar **out, struct kiln_error *err);

/* A thread-safe cache of compiled grammars keyed by (kind, text, options) with a bounded size. */
struct kiln_grammar_cache;
struct kiln_grammar_cache *kiln_grammar_cache_create(const struct kiln_grammar_vocab *v,
                                                     int max_entries);
void kiln_grammar_cache_free(struct kiln_grammar_cache *c);
/* Returns a new reference (caller unrefs). */
enum kiln_status kiln_grammar_cache_get(struct kiln_grammar_cache *c,
                                        const struct kiln_constraint_spec *spec,
                                        struct kiln_grammar **out, struct kiln_error *err);
/* The same with compile options (NULL: the defaults). */
enum kiln_status kiln_grammar_cache_get_opts(struct kiln_grammar_cache *c,
                                             const struct kiln_constraint_spec *spec,
                                             const struct kiln_grammar_options *opts,
                                             struct kiln_grammar **out, struct kiln_error *err);

/* Per-sequence matcher state. Not thread safe; one per sequence. */
struct kiln_matcher;
enum kiln_status kiln_matcher_create(struct kiln_grammar *g, struct kiln_matcher **out,
                                     struct kiln_error *err); /* takes its own ref on g */
void kiln_matcher_free(struct kiln_matcher *m);
/* mask has (vocab_size + 31) / 32 words; bit (t & 31) of word t >> 5 set <=> token t allowed.
 * Every word is written. When the matcher is complete, the EOS ids are allowed (and only they,
 * if the grammar cannot continue). */
void kiln_matcher_fill_mask(struct kiln_matcher *m, uint32_t *mask);
/* Advances by one token; false (state unchanged) when the token is not allowed. Accepting an
 * EOS id is allowed only when complete and moves to the terminated state. */
bool kiln_matcher_accept(struct kiln_matcher *m, int32_t token);
/* Undoes the last n accepted tokens (stop strings, preemption); n <= tokens accepted. */
void kiln_matcher_rollback(struct kiln_matcher *m, int n);
/* The output so far is a complete value (EOS allowed). */
bool kiln_matcher_is_complete(const struct kiln_matcher *m);
/* Tokens the grammar forces from here (only one choice at each step, exact): up to max
 * written, returns the count (0 when the next token is not forced). The matcher's state is
 * unchanged (the caller accepts the tokens it uses). */
int kiln_matcher_forced(struct kiln_matcher *m, int32_t *tokens, int max);

/* Extras. */
/* Accepts raw bytes (not a token): false (state unchanged) when they do not keep the output a
 * viable prefix. Counts as one step for kiln_matcher_rollback. */
bool kiln_matcher_accept_bytes(struct kiln_matcher *m, const char *s, size_t n);
/* True once EOS was accepted. */
bool kiln_matcher_is_terminated(const struct kiln_matcher *m);
/* Nothing but EOS can follow (complete and the grammar cannot continue). */
bool kiln_matcher_is_finished(const struct kiln_matcher *m);

#endif
