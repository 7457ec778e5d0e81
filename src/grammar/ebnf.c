/* Grammar text compiler: kiln's GBNF/Lark-like syntax (documented in grammar.h) into rules.
 * Terminals are literals, code-point classes, /regex/ and `%json {schema}`; never guesses at an
 * undefined rule or a syntax error (each is an error with its line). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

struct eb_name {
    const char *p; /* in the grammar text */
    size_t n;
    int rule;
};

struct eb {
    struct gr_builder *b;
    const char *s;
    size_t n, i;
    int depth;
    struct eb_name *names; /* open addressing, by name (a linear search was quadratic) */
    size_t nnames, capnames;
};

static int line_of(const struct eb *e)
{
    int l = 1;
    for (size_t k = 0; k < e->i && k < e->n; k++) l += e->s[k] == '\n';
    return l;
}

static struct gx *eb_fail(struct eb *e, const char *msg)
{
    return gb_fail(e->b, KILN_ERR_INVALID, "grammar: %s at line %d", msg, line_of(e));
}

/* skips spaces and comments; newlines too unless stop_nl */
static void skip(struct eb *e, bool stop_nl)
{
    while (e->i < e->n) {
        char c = e->s[e->i];
        if (c == '#') {
            while (e->i < e->n && e->s[e->i] != '\n') e->i++;
        } else if (c == ' ' || c == '\t' || c == '\r' || (c == '\n' && !stop_nl))
            e->i++;
        else
            break;
    }
}

static bool is_name(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

static uint64_t name_hash(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t k = 0; k < n; k++) h = (h ^ (unsigned char)p[k]) * 0x100000001b3ULL;
    return h;
}

/* the rule named name[0..n), a new one (body unset) the first time */
static int find_rule(struct eb *e, const char *name, size_t n)
{
    struct gr_builder *b = e->b;
    if ((e->nnames + 1) * 2 > e->capnames) {
        size_t cap = e->capnames ? e->capnames * 2 : 64;
        struct eb_name *t = calloc(cap, sizeof *t);
        if (!t) return gb_fail(b, KILN_ERR_NOMEM, "out of memory"), -1;
        for (size_t k = 0; k < e->capnames; k++)
            if (e->names[k].p) {
                size_t h = name_hash(e->names[k].p, e->names[k].n) & (cap - 1);
                while (t[h].p) h = (h + 1) & (cap - 1);
                t[h] = e->names[k];
            }
        free(e->names);
        e->names = t;
        e->capnames = cap;
    }
    size_t h = name_hash(name, n) & (e->capnames - 1);
    for (; e->names[h].p; h = (h + 1) & (e->capnames - 1))
        if (e->names[h].n == n && !memcmp(e->names[h].p, name, n)) return e->names[h].rule;
    char buf[256];
    snprintf(buf, sizeof buf, "%.*s", (int)(n < 255 ? n : 255), name);
    int r = gb_rule(b, buf);
    if (r >= 0) {
        e->names[h] = (struct eb_name){name, n, r};
        e->nnames++;
    }
    return r;
}

/* is the text at i `name ::=` (start of the next rule)? */
static bool at_rule_start(struct eb *e)
{
    size_t k = e->i;
    while (k < e->n && is_name(e->s[k])) k++;
    if (k == e->i) return false;
    while (k < e->n && (e->s[k] == ' ' || e->s[k] == '\t')) k++;
    return k + 2 < e->n && e->s[k] == ':' && e->s[k + 1] == ':' && e->s[k + 2] == '=';
}

static struct gx *eb_alt(struct eb *e);

static struct gx *eb_literal(struct eb *e)
{
    /* a JSON-like string: reuse jansson's decoder for the escapes */
    size_t st = e->i++;
    while (e->i < e->n && e->s[e->i] != '"') {
        if (e->s[e->i] == '\\') e->i++;
        e->i++;
    }
    if (e->i >= e->n) return eb_fail(e, "unterminated string literal");
    e->i++;
    json_error_t je;
    json_t *v = json_loadb(e->s + st, e->i - st, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!v || !json_is_string(v)) {
        json_decref(v);
        return eb_fail(e, "bad string literal");
    }
    struct gx *x = gx_lit(e->b, json_string_value(v), json_string_length(v));
    json_decref(v);
    return x;
}

static struct gx *eb_atom(struct eb *e)
{
    skip(e, false);
    if (e->i >= e->n) return eb_fail(e, "unexpected end");
    char c = e->s[e->i];
    if (c == '"') return eb_literal(e);
    if (c == '(') {
        e->i++;
        if (++e->depth > 100) return eb_fail(e, "nested too deeply");
        struct gx *x = eb_alt(e);
        e->depth--;
        skip(e, false);
        if (!x) return NULL;
        if (e->i >= e->n || e->s[e->i] != ')') return eb_fail(e, "missing )");
        e->i++;
        return x;
    }
    if (c == '[') { /* a class: the regex syntax */
        size_t st = e->i++;
        while (e->i < e->n && e->s[e->i] != ']') {
            if (e->s[e->i] == '\\') e->i++;
            e->i++;
        }
        if (e->i >= e->n) return eb_fail(e, "unterminated character class");
        e->i++;
        return gr_regex(e->b, e->s + st, e->i - st, false, false, "grammar class");
    }
    if (c == '/') {
        size_t st = ++e->i;
        while (e->i < e->n && e->s[e->i] != '/') {
            if (e->s[e->i] == '\\') e->i++;
            e->i++;
        }
        if (e->i >= e->n) return eb_fail(e, "unterminated /regex/");
        struct gx *x = gr_regex(e->b, e->s + st, e->i - st, false, false, "grammar regex");
        e->i++;
        return x;
    }
    if (c == '.') {
        e->i++;
        return gr_regex(e->b, "[^]", 3, false, false, "grammar");
    }
    if (c == '%') {
        if (e->n - e->i < 5 || memcmp(e->s + e->i, "%json", 5))
            return eb_fail(e, "unknown % directive");
        e->i += 5;
        skip(e, false);
        json_error_t je;
        json_t *v =
            json_loadb(e->s + e->i, e->n - e->i, JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY, &je);
        if (!v) return eb_fail(e, "bad JSON Schema after %json");
        e->i += je.position;
        struct gx *x = gr_json_schema_value(e->b, v);
        json_decref(v);
        return x;
    }
    if (is_name(c)) {
        size_t st = e->i;
        while (e->i < e->n && is_name(e->s[e->i])) e->i++;
        return gx_call(e->b, find_rule(e, e->s + st, e->i - st));
    }
    return eb_fail(e, "unexpected character");
}

static struct gx *eb_piece(struct eb *e)
{
    struct gx *x = eb_atom(e);
    for (;;) {
        skip(e, true);
        if (!x || e->i >= e->n) return x;
        char c = e->s[e->i];
        if (c == '*')
            x = gx_rep(e->b, x, 0, -1);
        else if (c == '+')
            x = gx_rep(e->b, x, 1, -1);
        else if (c == '?')
            x = gx_rep(e->b, x, 0, 1);
        else if (c == '{') {
            int mn = 0, mx;
            e->i++;
            while (e->i < e->n && e->s[e->i] >= '0' && e->s[e->i] <= '9' && mn < 100000)
                mn = mn * 10 + e->s[e->i++] - '0';
            mx = mn;
            if (e->i < e->n && e->s[e->i] == ',') {
                e->i++;
                mx = -1;
                if (e->i < e->n && e->s[e->i] >= '0' && e->s[e->i] <= '9') {
                    mx = 0;
                    while (e->i < e->n && e->s[e->i] >= '0' && e->s[e->i] <= '9' && mx < 100000)
                        mx = mx * 10 + e->s[e->i++] - '0';
                }
            }
            if (e->i >= e->n || e->s[e->i] != '}') return eb_fail(e, "bad {m,n} repetition");
            if (mn > 10000 || mx > 10000) return eb_fail(e, "repetition count too large");
            x = gx_rep(e->b, x, mn, mx);
        } else
            return x;
        e->i++;
    }
}

static struct gx *eb_seq(struct eb *e)
{
    struct gx *q = gx_seq(e->b);
    for (;;) {
        skip(e, true);
        if (e->i >= e->n) break;
        char c = e->s[e->i];
        if (c == '\n') {
            /* a newline continues the body unless the next line starts a rule */
            size_t save = e->i;
            skip(e, false);
            if (e->i >= e->n || at_rule_start(e) || e->s[e->i] == ';') {
                e->i = save;
                break;
            }
            continue;
        }
        if (c == '|' || c == ')' || c == ';') break;
        q = gx_add(e->b, q, eb_piece(e));
        if (!q) return NULL;
    }
    return q;
}

static struct gx *eb_alt(struct eb *e)
{
    struct gx *a = gx_add(e->b, gx_alt(e->b), eb_seq(e));
    for (;;) {
        skip(e, true);
        if (!a || e->i >= e->n || e->s[e->i] != '|') break;
        e->i++;
        a = gx_add(e->b, a, eb_seq(e));
    }
    if (a && a->n == 1) return a->kid[0];
    return a;
}

static struct gx *ebnf_rules(struct eb *e)
{
    struct gr_builder *b = e->b;
    int first = -1;
    for (;;) {
        skip(e, false);
        while (e->i < e->n && e->s[e->i] == ';') {
            e->i++;
            skip(e, false);
        }
        if (e->i >= e->n) break;
        size_t st = e->i;
        while (e->i < e->n && is_name(e->s[e->i])) e->i++;
        if (e->i == st) return eb_fail(e, "expected a rule name");
        int r = find_rule(e, e->s + st, e->i - st);
        if (r < 0) return NULL;
        if (b->body[r]) return eb_fail(e, "rule defined twice");
        skip(e, true);
        if (e->n - e->i < 3 || memcmp(e->s + e->i, "::=", 3)) return eb_fail(e, "expected ::=");
        e->i += 3;
        struct gx *body = eb_alt(e);
        if (!body) return NULL;
        skip(e, true);
        if (e->i < e->n && e->s[e->i] != '\n' && e->s[e->i] != ';')
            return eb_fail(e, "unexpected character");
        gb_set(b, r, body);
        if (first < 0) first = r;
    }
    if (first < 0) return eb_fail(e, "no rules");
    for (int r = 0; r < b->n; r++)
        if (b->name[r] && !strcmp(b->name[r], "root") && b->body[r]) first = r;
    return gx_call(b, first);
}

struct gx *gr_ebnf(struct gr_builder *b, const char *text, size_t n)
{
    struct eb e = {b, text, n, 0, 0, NULL, 0, 0};
    struct gx *x = ebnf_rules(&e);
    free(e.names);
    return x;
}
