/* Regex compiler: an ECMAScript-like subset (see grammar.h) parsed over code points into gx
 * expressions, either as plain UTF-8 or as the inside of a JSON string. Refuses (never
 * approximates) backreferences, lookaround, word boundaries and inner anchors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

#define RX_MAX_DEPTH  200
#define RX_MAX_REPEAT 10000

struct rx {
    struct gr_builder *b;
    const unsigned char *s;
    size_t n, i;
    bool json;
    const char *where;
    int depth;
    /* gr_regex_meet's parse: each character class becomes a leaf, an empty byte set whose
     * `rule` is its index here, and the tree is walked into an automaton (never compiled) */
    struct rx_cls *cls;
};

struct rx_cls {
    struct cp_set *set;
    int n;
    size_t cap;
};

/* the index of s (normalized; taken over) in c, equal sets shared; -1 out of memory */
static int cls_put(struct rx_cls *c, struct cp_set *s)
{
    for (int i = c->n - 1; i >= 0 && i >= c->n - 256; i--)
        if (c->set[i].n == s->n && !memcmp(c->set[i].r, s->r, (size_t)s->n * sizeof *s->r)) {
            cps_free(s);
            return i;
        }
    if (!gr_grow((void **)&c->set, &c->cap, (size_t)c->n + 1, sizeof *c->set)) {
        cps_free(s);
        return -1;
    }
    c->set[c->n] = *s;
    *s = (struct cp_set){0};
    return c->n++;
}

static struct gx *rx_fail(struct rx *r, const char *what)
{
    return gb_fail(r->b, KILN_ERR_UNSUPPORTED, "%s: %s at offset %zu", r->where, what, r->i);
}

/* one UTF-8 code point; invalid bytes are an error */
static bool rx_cp(struct rx *r, uint32_t *cp)
{
    const unsigned char *s = r->s + r->i;
    size_t left = r->n - r->i;
    unsigned c = s[0];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || (size_t)len > left) return false;
    uint32_t v = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
    for (int k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) return false;
        v = v << 6 | (s[k] & 0x3F);
    }
    if ((len == 2 && v < 0x80) || (len == 3 && v < 0x800) || (len == 4 && v < 0x10000) ||
        v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return false;
    r->i += (size_t)len;
    *cp = v;
    return true;
}

static struct gx *emit_set(struct rx *r, struct cp_set *s)
{
    cps_norm(s);
    if (r->cls) {
        int k = cls_put(r->cls, s);
        struct gx *x = k < 0 ? gb_fail(r->b, KILN_ERR_NOMEM, "out of memory") : gx_byte(r->b, 0);
        if (x) x->bits[0] = 0, x->rule = k;
        return x;
    }
    struct gx *x = r->json ? gx_json_chars(r->b, s) : gx_utf8(r->b, s);
    cps_free(s);
    return x;
}

static void add_class(struct cp_set *s, char k)
{
    switch (k) {
    case 'd':
        cps_add(s, '0', '9');
        break;
    case 'w':
        cps_add(s, '0', '9');
        cps_add(s, 'A', 'Z');
        cps_add(s, 'a', 'z');
        cps_add(s, '_', '_');
        break;
    case 's': /* ECMAScript WhiteSpace + LineTerminator */
        cps_add(s, 9, 13);
        cps_add(s, ' ', ' ');
        cps_add(s, 0xA0, 0xA0);
        cps_add(s, 0x1680, 0x1680);
        cps_add(s, 0x2000, 0x200A);
        cps_add(s, 0x2028, 0x2029);
        cps_add(s, 0x202F, 0x202F);
        cps_add(s, 0x205F, 0x205F);
        cps_add(s, 0x3000, 0x3000);
        cps_add(s, 0xFEFF, 0xFEFF);
        break;
    }
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* After a backslash: a class escape into *set (returns 1), a single code point (returns 0) or
 * an error (-1). */
static int rx_escape(struct rx *r, struct cp_set *set, uint32_t *cp, bool in_class)
{
    if (r->i >= r->n) return rx_fail(r, "trailing backslash"), -1;
    unsigned char c = r->s[r->i++];
    switch (c) {
    case 'd':
    case 'w':
    case 's':
        add_class(set, (char)c);
        return 1;
    case 'D':
    case 'W':
    case 'S': {
        struct cp_set t = {0};
        add_class(&t, (char)(c + 32));
        cps_negate(&t);
        for (int i = 0; i < t.n; i++) cps_add(set, t.r[i][0], t.r[i][1]);
        cps_free(&t);
        return 1;
    }
    case 't':
        *cp = 9;
        return 0;
    case 'n':
        *cp = 10;
        return 0;
    case 'v':
        *cp = 11;
        return 0;
    case 'f':
        *cp = 12;
        return 0;
    case 'r':
        *cp = 13;
        return 0;
    case '0':
        if (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
            return rx_fail(r, "octal escapes are not supported"), -1;
        *cp = 0;
        return 0;
    case 'b':
        if (in_class) {
            *cp = 8;
            return 0;
        }
        return rx_fail(r, "word boundary \\b is not supported"), -1;
    case 'B':
        return rx_fail(r, "\\B is not supported"), -1;
    case 'x': {
        if (r->i + 2 > r->n || hexval(r->s[r->i]) < 0 || hexval(r->s[r->i + 1]) < 0)
            return rx_fail(r, "bad \\x escape"), -1;
        *cp = (uint32_t)(hexval(r->s[r->i]) * 16 + hexval(r->s[r->i + 1]));
        r->i += 2;
        return 0;
    }
    case 'u': {
        uint32_t v = 0;
        if (r->i < r->n && r->s[r->i] == '{') {
            r->i++;
            int k = 0;
            while (r->i < r->n && hexval(r->s[r->i]) >= 0 && k < 7)
                v = v * 16 + (uint32_t)hexval(r->s[r->i++]), k++;
            if (!k || r->i >= r->n || r->s[r->i] != '}' || v > 0x10FFFF)
                return rx_fail(r, "bad \\u{...} escape"), -1;
            r->i++;
        } else {
            if (r->i + 4 > r->n) return rx_fail(r, "bad \\u escape"), -1;
            for (int k = 0; k < 4; k++) {
                int h = hexval(r->s[r->i + (size_t)k]);
                if (h < 0) return rx_fail(r, "bad \\u escape"), -1;
                v = v * 16 + (uint32_t)h;
            }
            r->i += 4;
            if (v >= 0xD800 && v <= 0xDBFF && r->i + 6 <= r->n && r->s[r->i] == '\\' &&
                r->s[r->i + 1] == 'u') {
                uint32_t lo = 0;
                bool ok = true;
                for (int k = 0; k < 4; k++) {
                    int h = hexval(r->s[r->i + 2 + (size_t)k]);
                    if (h < 0) ok = false;
                    lo = lo * 16 + (uint32_t)(h < 0 ? 0 : h);
                }
                if (ok && lo >= 0xDC00 && lo <= 0xDFFF) {
                    v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
                    r->i += 6;
                }
            }
        }
        if (v >= 0xD800 && v <= 0xDFFF) return rx_fail(r, "lone surrogate escape"), -1;
        *cp = v;
        return 0;
    }
    case 'c':
        if (r->i < r->n && ((r->s[r->i] | 32) >= 'a' && (r->s[r->i] | 32) <= 'z')) {
            *cp = (uint32_t)(r->s[r->i++] & 31);
            return 0;
        }
        return rx_fail(r, "bad \\c escape"), -1;
    case 'k':
        return rx_fail(r, "named backreferences are not supported"), -1;
    case 'p':
    case 'P':
        return rx_fail(r, "Unicode property escapes are not supported"), -1;
    default:
        if (c >= '1' && c <= '9') return rx_fail(r, "backreferences are not supported"), -1;
        if ((c | 32) >= 'a' && (c | 32) <= 'z') return rx_fail(r, "unknown escape"), -1;
        r->i--;
        if (!rx_cp(r, cp)) return rx_fail(r, "invalid UTF-8"), -1;
        return 0;
    }
}

static struct gx *rx_class(struct rx *r)
{
    /* at '[' + 1 */
    struct cp_set s = {0};
    bool neg = false;
    if (r->i < r->n && r->s[r->i] == '^') {
        neg = true;
        r->i++;
    }
    bool first = true;
    for (;;) {
        if (r->i >= r->n) {
            cps_free(&s);
            return rx_fail(r, "unterminated character class");
        }
        if (r->s[r->i] == ']' && !first) {
            r->i++;
            break;
        }
        if (r->s[r->i] == ']' && first) { /* ECMAScript: [] matches nothing, [^] anything */
            r->i++;
            break;
        }
        first = false;
        uint32_t lo;
        int k;
        if (r->s[r->i] == '\\') {
            r->i++;
            k = rx_escape(r, &s, &lo, true);
        } else {
            k = rx_cp(r, &lo) ? 0 : (rx_fail(r, "invalid UTF-8"), -1);
        }
        if (k < 0) {
            cps_free(&s);
            return NULL;
        }
        if (k == 1) continue;
        if (r->i + 1 < r->n && r->s[r->i] == '-' && r->s[r->i + 1] != ']') {
            r->i++;
            uint32_t hi;
            int k2;
            if (r->s[r->i] == '\\') {
                r->i++;
                k2 = rx_escape(r, &s, &hi, true);
            } else
                k2 = rx_cp(r, &hi) ? 0 : (rx_fail(r, "invalid UTF-8"), -1);
            if (k2 < 0) {
                cps_free(&s);
                return NULL;
            }
            if (k2 == 1) { /* [a-\d]: '-' is literal */
                cps_add(&s, lo, lo);
                cps_add(&s, '-', '-');
                continue;
            }
            if (hi < lo) {
                cps_free(&s);
                return rx_fail(r, "character class range out of order");
            }
            cps_add(&s, lo, hi);
        } else
            cps_add(&s, lo, lo);
    }
    cps_norm(&s);
    if (neg) cps_negate(&s);
    return emit_set(r, &s);
}

static struct gx *rx_alt(struct rx *r);

static bool rx_int(struct rx *r, int *v)
{
    if (r->i >= r->n || r->s[r->i] < '0' || r->s[r->i] > '9') return false;
    long x = 0;
    while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9') {
        x = x * 10 + (r->s[r->i++] - '0');
        if (x > 1000000) x = 1000000;
    }
    *v = (int)x;
    return true;
}

static struct gx *rx_atom(struct rx *r)
{
    unsigned char c = r->s[r->i];
    struct cp_set s = {0};
    uint32_t cp;
    switch (c) {
    case '(': {
        r->i++;
        if (r->i < r->n && r->s[r->i] == '?') {
            if (r->i + 1 < r->n && r->s[r->i + 1] == ':')
                r->i += 2;
            else if (r->i + 2 < r->n && r->s[r->i + 1] == '<' && r->s[r->i + 2] != '=' &&
                     r->s[r->i + 2] != '!') {
                while (r->i < r->n && r->s[r->i] != '>') r->i++;
                if (r->i >= r->n) return rx_fail(r, "unterminated group name");
                r->i++;
            } else if (r->i + 1 < r->n &&
                       (r->s[r->i + 1] == '=' || r->s[r->i + 1] == '!' || r->s[r->i + 1] == '<'))
                return rx_fail(r, "lookaround is not supported");
            else
                return rx_fail(r, "unsupported group syntax");
        }
        if (++r->depth > RX_MAX_DEPTH) return rx_fail(r, "groups nested too deeply");
        struct gx *x = rx_alt(r);
        r->depth--;
        if (!x) return NULL;
        if (r->i >= r->n || r->s[r->i] != ')') return rx_fail(r, "missing )");
        r->i++;
        return x;
    }
    case '[':
        r->i++;
        return rx_class(r);
    case '.':
        r->i++;
        cps_add(&s, 10, 10);
        cps_add(&s, 13, 13);
        cps_add(&s, 0x2028, 0x2029);
        cps_negate(&s);
        return emit_set(r, &s);
    case '\\': {
        r->i++;
        int k = rx_escape(r, &s, &cp, false);
        if (k < 0) {
            cps_free(&s);
            return NULL;
        }
        if (k == 0) cps_add(&s, cp, cp);
        return emit_set(r, &s);
    }
    case '^':
        return rx_fail(r, "'^' is only supported at the start");
    case '$':
        return rx_fail(r, "'$' is only supported at the end");
    case '*':
    case '+':
    case '?':
        return rx_fail(r, "nothing to repeat");
    case ')':
        return rx_fail(r, "unmatched )");
    default:
        if (c == '{') {
            size_t save = r->i;
            r->i++;
            int v;
            if (rx_int(r, &v)) {
                r->i = save;
                return rx_fail(r, "nothing to repeat");
            }
            r->i = save;
        }
        if (!rx_cp(r, &cp)) return rx_fail(r, "invalid UTF-8");
        cps_add(&s, cp, cp);
        return emit_set(r, &s);
    }
}

static struct gx *rx_piece(struct rx *r)
{
    struct gx *x = rx_atom(r);
    while (x && r->i < r->n) {
        unsigned char c = r->s[r->i];
        int min, max;
        if (c == '*')
            min = 0, max = -1, r->i++;
        else if (c == '+')
            min = 1, max = -1, r->i++;
        else if (c == '?')
            min = 0, max = 1, r->i++;
        else if (c == '{') {
            size_t save = r->i;
            r->i++;
            if (!rx_int(r, &min)) {
                r->i = save; /* a literal '{' (ECMAScript annex B) */
                break;
            }
            max = min;
            if (r->i < r->n && r->s[r->i] == ',') {
                r->i++;
                if (!rx_int(r, &max)) max = -1;
            }
            if (r->i >= r->n || r->s[r->i] != '}') {
                r->i = save;
                break;
            }
            r->i++;
            if (max >= 0 && max < min) return rx_fail(r, "numbers out of order in {} quantifier");
            if (min > RX_MAX_REPEAT || max > RX_MAX_REPEAT)
                return rx_fail(r, "repetition count too large");
        } else
            break;
        if (r->i < r->n && r->s[r->i] == '?') r->i++; /* lazy: same language */
        x = gx_rep(r->b, x, min, max);
    }
    return x;
}

static bool at_end_anchor(struct rx *r)
{
    return r->s[r->i] == '$' &&
           (r->i + 1 == r->n || r->s[r->i + 1] == ')' || r->s[r->i + 1] == '|');
}

static struct gx *rx_seq(struct rx *r)
{
    struct gx *q = gx_seq(r->b);
    while (q && r->i < r->n && r->s[r->i] != '|' && r->s[r->i] != ')') {
        if (at_end_anchor(r) && r->depth == 0) {
            r->i++;
            if (r->i != r->n) return rx_fail(r, "'$' is only supported at the end");
            break;
        }
        q = gx_add(r->b, q, rx_piece(r));
    }
    return q;
}

static struct gx *rx_alt(struct rx *r)
{
    struct gx *a = gx_alt(r->b);
    a = gx_add(r->b, a, rx_seq(r));
    while (a && r->i < r->n && r->s[r->i] == '|') {
        r->i++;
        a = gx_add(r->b, a, rx_seq(r));
    }
    if (a && a->n == 1) return a->kid[0];
    return a;
}

/* the offset of re's first '|' outside groups and classes (n: none) */
static size_t top_bar(const char *re, size_t n)
{
    int depth = 0;
    bool cls = false;
    for (size_t i = 0; i < n; i++) {
        if (re[i] == '\\')
            i++;
        else if (cls)
            cls = re[i] != ']';
        else if (re[i] == '[')
            cls = true;
        else if (re[i] == '(')
            depth++;
        else if (re[i] == ')')
            depth--;
        else if (re[i] == '|' && depth == 0)
            return i;
    }
    return n;
}

/* the regex with JSON Schema `pattern` semantics if search (unanchored ends match anything; a
 * search's anchors belong to their own alternative: ^a|b$ is (^a)|(b$)) */
static struct gx *rx_top(struct rx *r, bool search)
{
    const char *re = (const char *)r->s;
    size_t n = r->n;
    size_t bar = search ? top_bar(re, n) : n;
    if (bar < n) {
        struct rx left = *r, right = *r;
        left.n = bar;
        left.i = 0;
        right.s = r->s + bar + 1;
        right.n = n - bar - 1;
        right.i = 0;
        struct gx *x = rx_top(&left, true), *y = x ? rx_top(&right, true) : NULL;
        return y ? gx_alt2(r->b, x, y) : NULL;
    }
    bool start_anchor = n > 0 && re[0] == '^';
    if (start_anchor) r->i = 1;
    struct gx *x = rx_alt(r);
    if (!x) return NULL;
    if (r->i != r->n) return rx_fail(r, r->s[r->i] == ')' ? "unmatched )" : "unexpected character");
    bool end_anchor = n > 0 && re[n - 1] == '$' && (n < 2 || re[n - 2] != '\\');
    if (!search) return x;
    struct cp_set all = {0};
    cps_add(&all, 0, 0x10FFFF);
    struct gx *any = gx_rep(r->b, emit_set(r, &all), 0, -1);
    struct gx *q = gx_seq(r->b);
    if (!start_anchor) q = gx_add(r->b, q, any);
    q = gx_add(r->b, q, x);
    if (!end_anchor && r->json && !r->cls &&
        r->b->json_canon) { /* one rule: keydfa.c knows its loop */
        if (r->b->r_key_tail < 0) {
            r->b->r_key_tail = gb_rule(r->b, "%key_tail");
            gb_set(r->b, r->b->r_key_tail, any);
        }
        any = gx_call(r->b, r->b->r_key_tail);
    }
    if (!end_anchor) q = gx_add(r->b, q, any);
    return q;
}

struct gx *gr_regex(struct gr_builder *b, const char *re, size_t n, bool json, bool search,
                    const char *where)
{
    struct rx r = {b, (const unsigned char *)re, n, 0, json, where, 0, NULL};
    return rx_top(&r, search);
}

/* ---- intersections: regexes and a length in code points, as one automaton ---- */

/* The budget of gr_regex_meet: each regex's automaton, and the product (its states are a state
 * of each and a count): over it the constraint is refused. A graph state costs the builder
 * about one state per label (gx_json_char_parts). The product's cap is what keeps compiling and
 * masks fast: at 400,000, email with maxLength 1024 (136,000 states) compiled in 0.5 s and
 * `^(?:\S+\s+){0,49}\S+$` with maxLength 500 made masks of up to ~100 ms (every character moves
 * the count, so no plain-character shortcut applies); MaskBench's compile p99 passed 20 ms. */
#define RM_MAX_STATES  50000
#define RM_MAX_PRODUCT 50000
#define RM_MAX_EDGES   2000000

/* a regex as an automaton over character classes: edges (from, to, class; -1 epsilon), then
 * for each state the class edges its epsilon closure leaves by, and whether it reaches the end */
struct rm_nfa {
    struct gr_builder *b; /* the parse's rules */
    int32_t nst, end;
    int32_t (*e)[3];
    size_t ne, cap;
    int32_t *out0;     /* [nst + 1] into out */
    int32_t (*out)[2]; /* (class, to) */
    bool *acc;
    bool over;
};

static int32_t rm_state(struct rm_nfa *a)
{
    if (a->nst >= RM_MAX_STATES) {
        a->over = true;
        return 0;
    }
    return a->nst++;
}

static void rm_edge(struct rm_nfa *a, int32_t from, int32_t to, int32_t cls)
{
    if (a->over) return;
    if (!gr_grow((void **)&a->e, &a->cap, a->ne + 1, sizeof *a->e)) {
        a->over = true;
        return;
    }
    a->e[a->ne][0] = from, a->e[a->ne][1] = to, a->e[a->ne][2] = cls;
    a->ne++;
}

/* the parse tree (leaves: classes, whose index is their `rule`; rules: gx_rep's blocks, inlined)
 * through gx_thompson */
static bool rm_stopped(void *ctx)
{
    return ((struct rm_nfa *)ctx)->over;
}

static int32_t rm_new_state(void *ctx)
{
    return rm_state(ctx);
}

static void rm_new_edge(void *ctx, int32_t from, int32_t to, const struct gx *cls)
{
    rm_edge(ctx, from, to, cls ? cls->rule : -1);
}

static int32_t rm_other(void *ctx, int32_t from, const struct gx *x);
static const struct gx_nfa_ops rm_ops = {rm_stopped, rm_new_state, rm_new_edge, rm_other};

static int32_t rm_other(void *ctx, int32_t from, const struct gx *x)
{
    struct rm_nfa *a = ctx;
    if (x->op == GX_RULE) return gx_thompson(&rm_ops, a, from, a->b->body[x->rule]);
    return rm_state(a); /* never in a parse tree: a state nothing leaves */
}

/* out / acc: what each state's epsilon closure reads and whether it holds the end */
static bool rm_close(struct rm_nfa *a)
{
    int32_t n = a->nst;
    int32_t *e0 = calloc((size_t)n + 1, sizeof *e0), *stk = malloc((size_t)n * sizeof *stk);
    int32_t *seen = malloc((size_t)n * sizeof *seen), (*ord)[3] = NULL;
    a->out0 = calloc((size_t)n + 1, sizeof *a->out0);
    a->acc = calloc((size_t)n, sizeof *a->acc);
    size_t nout = 0, capout = 0;
    bool ok = e0 && stk && seen && a->out0 && a->acc;
    if (ok) ord = malloc((a->ne + 1) * sizeof *ord);
    ok = ok && ord;
    if (ok) { /* edges by source */
        for (size_t i = 0; i < a->ne; i++) e0[a->e[i][0] + 1]++;
        for (int32_t s = 0; s < n; s++) e0[s + 1] += e0[s];
        int32_t *fill = stk;
        for (int32_t s = 0; s < n; s++) fill[s] = e0[s];
        for (size_t i = 0; i < a->ne; i++) memcpy(ord[fill[a->e[i][0]]++], a->e[i], sizeof *ord);
        for (int32_t s = 0; s < n; s++) seen[s] = -1;
    }
    for (int32_t s = 0; ok && s < n; s++) {
        int sp = 0;
        stk[sp++] = s;
        seen[s] = s;
        a->out0[s] = (int32_t)nout;
        while (sp && ok) {
            int32_t u = stk[--sp];
            if (u == a->end) a->acc[s] = true;
            for (int32_t k = e0[u]; k < e0[u + 1]; k++) {
                int32_t to = ord[k][1], c = ord[k][2];
                if (c < 0) {
                    if (seen[to] != s) seen[to] = s, stk[sp++] = to;
                    continue;
                }
                if (nout == capout) {
                    capout = capout ? capout * 2 : 1024;
                    void *p =
                        capout <= RM_MAX_EDGES ? realloc(a->out, capout * sizeof *a->out) : NULL;
                    if (!p) {
                        ok = false;
                        break;
                    }
                    a->out = p;
                }
                a->out[nout][0] = c, a->out[nout][1] = to;
                nout++;
            }
        }
    }
    if (ok) a->out0[n] = (int32_t)nout;
    free(e0), free(stk), free(seen), free(ord);
    return ok;
}

static void rm_free(struct rm_nfa *a)
{
    free(a->e), free(a->out0), free(a->out), free(a->acc);
}

/* a regex's automaton (false: over the budget, or b failed: the regex's error) */
static bool rm_build(struct gr_builder *b, struct rx_cls *cls, struct rm_nfa *a, const char *re,
                     size_t n, bool search, const char *where)
{
    int n0 = b->n; /* the parse's rules (gx_rep's blocks) are dropped after the walk */
    struct rx r = {b, (const unsigned char *)re, n, 0, true, where, 0, cls};
    struct gx *x = rx_top(&r, search);
    if (!x) return false;
    int32_t s0 = rm_state(a);
    a->b = b;
    a->end = gx_thompson(&rm_ops, a, s0, x);
    b->n = n0;
    return !a->over && rm_close(a);
}

struct gr_regex {
    struct rx_cls cls;
    struct rm_nfa a;
};

struct gr_regex *gr_regex_compile(struct gr_builder *b, const char *re, size_t n, bool search,
                                  const char *where)
{
    struct gr_regex *r = calloc(1, sizeof *r);
    if (!r) {
        gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        return NULL;
    }
    if (!rm_build(b, &r->cls, &r->a, re, n, search, where)) {
        if (!b->failed)
            gb_fail(b, KILN_ERR_UNSUPPORTED, "%s: unsupported (over %d automaton states)", where,
                    RM_MAX_STATES);
        gr_regex_free(r);
        return NULL;
    }
    return r;
}

void gr_regex_free(struct gr_regex *r)
{
    if (!r) return;
    for (int i = 0; i < r->cls.n; i++) cps_free(&r->cls.set[i]);
    free(r->cls.set);
    rm_free(&r->a);
    free(r);
}

int gr_regex_match(struct gr_builder *b, const struct gr_regex *r, const char *s, size_t len)
{
    const struct rm_nfa *a = &r->a;
    int res = -1;
    bool *cur = calloc((size_t)a->nst, 1), *nxt = calloc((size_t)a->nst, 1);
    if (!cur || !nxt) {
        gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        goto out;
    }
    cur[0] = true;
    struct rx v = {.s = (const unsigned char *)s, .n = len};
    while (v.i < v.n) {
        uint32_t cp;
        if (!rx_cp(&v, &cp)) { /* not UTF-8: not a JSON string's value */
            res = 0;
            goto out;
        }
        memset(nxt, 0, (size_t)a->nst);
        for (int32_t q = 0; q < a->nst; q++)
            if (cur[q])
                for (int32_t k = a->out0[q]; k < a->out0[q + 1]; k++)
                    if (cps_has(&r->cls.set[a->out[k][0]], cp)) nxt[a->out[k][1]] = true;
        bool *t = cur;
        cur = nxt, nxt = t;
    }
    res = 0;
    for (int32_t q = 0; q < a->nst; q++)
        if (cur[q] && a->acc[q]) res = 1;
out:
    free(cur), free(nxt);
    return res;
}

int gr_regex_test(struct gr_builder *b, const char *re, size_t n, bool search, const char *s,
                  size_t len, const char *where)
{
    struct gr_regex *r = gr_regex_compile(b, re, n, search, where);
    if (!r) return -1;
    int res = gr_regex_match(b, r, s, len);
    gr_regex_free(r);
    return res;
}

/* uint64 -> int32 open addressing (keys never UINT64_MAX) */
struct rm_map {
    uint64_t *k;
    int32_t *v;
    size_t cap, n;
};

static int32_t *rm_slot(struct rm_map *m, uint64_t key, bool *fresh)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        uint64_t *k = malloc(cap * sizeof *k);
        int32_t *v = malloc(cap * sizeof *v);
        if (!k || !v) {
            free(k), free(v);
            return NULL;
        }
        memset(k, 0xFF, cap * sizeof *k);
        for (size_t i = 0; i < m->cap; i++)
            if (m->k[i] != UINT64_MAX) {
                size_t h = (size_t)(m->k[i] * 0x9E3779B97F4A7C15ULL >> 20) & (cap - 1);
                while (k[h] != UINT64_MAX) h = (h + 1) & (cap - 1);
                k[h] = m->k[i], v[h] = m->v[i];
            }
        free(m->k), free(m->v);
        m->k = k, m->v = v, m->cap = cap;
    }
    size_t h = (size_t)(key * 0x9E3779B97F4A7C15ULL >> 20) & (m->cap - 1);
    while (m->k[h] != UINT64_MAX && m->k[h] != key) h = (h + 1) & (m->cap - 1);
    *fresh = m->k[h] == UINT64_MAX;
    if (*fresh) m->k[h] = key, m->n++;
    return &m->v[h];
}

/* the class of the characters of both (-1: none in common) */
static int32_t rm_meet(struct rx_cls *c, struct rm_map *memo, int32_t x, int32_t y)
{
    if (y < 0) return x;
    bool fresh;
    int32_t *v = rm_slot(memo, (uint64_t)x << 32 | (uint32_t)y, &fresh);
    if (!v) return -2;
    if (!fresh) return *v;
    struct cp_set s = {0};
    const struct cp_set *a = &c->set[x], *b = &c->set[y];
    for (int i = 0, j = 0; i < a->n && j < b->n;) {
        uint32_t lo = a->r[i][0] > b->r[j][0] ? a->r[i][0] : b->r[j][0];
        uint32_t hi = a->r[i][1] < b->r[j][1] ? a->r[i][1] : b->r[j][1];
        if (lo <= hi) cps_add(&s, lo, hi);
        if (a->r[i][1] < b->r[j][1])
            i++;
        else
            j++;
    }
    if (!s.n) {
        cps_free(&s);
        return *v = -1;
    }
    int32_t k = cls_put(c, &s);
    return k < 0 ? -2 : (*v = k);
}

struct gx *gr_regex_meet(struct gr_builder *b, int nre, const char *const *re, const size_t *len,
                         const bool *search, long long min, long long max, const char *where)
{
    struct rx_cls cls = {0};
    struct rm_nfa a[2] = {{0}, {0}};
    struct rm_map states = {0}, meets = {0};
    int32_t(*pe)[3] = NULL; /* product edges (from, to, class; -1: to the end) */
    uint64_t *key = NULL;   /* product states */
    size_t npe = 0, cappe = 0, nkey = 0, capkey = 0;
    int32_t *live = NULL, *r0 = NULL, *rl = NULL;
    struct gx *res = NULL, **labels = NULL;
    int32_t *ends = NULL;
    bool over = false, nomem = false;
    /* the counter: 0..max, or 0..min where "min" stands for "min or more" */
    long long top = max >= 0 ? max : min;
    for (int i = 0; i < nre && !b->failed && !over; i++)
        over = !rm_build(b, &cls, &a[i], re[i], len[i], search[i], where);
    if (b->failed || over) goto out;
    /* the product, breadth first: state (q0, q1, count) */
    for (size_t at = 0;; at++) {
        if (at == 0) {
            bool fresh;
            int32_t *v = rm_slot(&states, 0, &fresh);
            if (!v || !(key = malloc(1024 * sizeof *key))) goto nomem;
            capkey = 1024;
            *v = 0;
            key[nkey++] = 0;
        }
        if (at >= nkey) break;
        uint64_t k = key[at];
        int32_t q0 = (int32_t)(k >> 40), q1 = (int32_t)(k >> 20 & 0xFFFFF);
        long long cnt = (long long)(k & 0xFFFFF);
        int32_t from = (int32_t)at;
        bool acc = a[0].acc[q0] && (nre < 2 || a[1].acc[q1]) && cnt >= min;
        long long next = cnt + 1;
        if (next > top) next = max >= 0 ? -1 : top;
        for (int32_t i = a[0].out0[q0]; i < a[0].out0[q0 + 1] + (acc ? 1 : 0); i++) {
            bool fin = i == a[0].out0[q0 + 1];
            int32_t j0 = nre < 2 || fin ? 0 : a[1].out0[q1],
                    j1 = nre < 2 || fin ? 1 : a[1].out0[q1 + 1];
            for (int32_t j = j0; j < j1; j++) {
                int32_t to = -1, c = -1;
                if (!fin) {
                    if (next < 0) break;
                    c = rm_meet(&cls, &meets, a[0].out[i][0], nre < 2 ? -1 : a[1].out[j][0]);
                    if (c == -2) goto nomem;
                    if (c < 0) continue;
                    uint64_t nk = (uint64_t)a[0].out[i][1] << 40 |
                                  (uint64_t)(nre < 2 ? 0 : a[1].out[j][1]) << 20 | (uint64_t)next;
                    bool fresh;
                    int32_t *v = rm_slot(&states, nk, &fresh);
                    if (!v) goto nomem;
                    if (fresh) {
                        if (nkey >= RM_MAX_PRODUCT) {
                            over = true;
                            goto out;
                        }
                        if (nkey == capkey) {
                            void *p = realloc(key, capkey * 2 * sizeof *key);
                            if (!p) goto nomem;
                            key = p, capkey *= 2;
                        }
                        *v = (int32_t)nkey;
                        key[nkey++] = nk;
                    }
                    to = *v;
                }
                if (npe == cappe) {
                    cappe = cappe ? cappe * 2 : 1024;
                    void *p = cappe <= RM_MAX_EDGES * 2 ? realloc(pe, cappe * sizeof *pe) : NULL;
                    if (!p && cappe > RM_MAX_EDGES * 2) {
                        over = true;
                        goto out;
                    }
                    if (!p) goto nomem;
                    pe = p;
                }
                pe[npe][0] = from, pe[npe][1] = to, pe[npe][2] = c;
                npe++;
            }
        }
    }
    {
        /* keep the states that reach the end: edges by target, walked back from it */
        int32_t n = (int32_t)nkey;
        live = malloc(((size_t)n + 1) * sizeof *live);
        r0 = calloc((size_t)n + 2, sizeof *r0);
        rl = malloc((npe + 1) * sizeof *rl);
        if (!live || !r0 || !rl) goto nomem;
        for (size_t i = 0; i < npe; i++) r0[(pe[i][1] < 0 ? n : pe[i][1]) + 1]++;
        for (int32_t s = 0; s <= n; s++) r0[s + 1] += r0[s];
        int32_t *fill = live;
        for (int32_t s = 0; s <= n; s++) fill[s] = r0[s];
        for (size_t i = 0; i < npe; i++) rl[fill[pe[i][1] < 0 ? n : pe[i][1]]++] = pe[i][0];
        int32_t *stk = fill, sp = 0; /* reuses fill: a state is pushed once */
        bool *ok = calloc((size_t)n + 1, 1);
        if (!ok) goto nomem;
        for (int32_t k = r0[n]; k < r0[n + 1]; k++)
            if (!ok[rl[k]]) ok[rl[k]] = true, stk[sp++] = rl[k];
        while (sp) {
            int32_t u = stk[--sp];
            for (int32_t k = r0[u]; k < r0[u + 1]; k++)
                if (!ok[rl[k]]) ok[rl[k]] = true, stk[sp++] = rl[k];
        }
        int32_t m = 0;
        for (int32_t s = 0; s < n; s++) live[s] = ok[s] ? m++ : -1;
        free(ok);
        if (!n || live[0] < 0) { /* no string of those lengths matches */
            res = gx_none(b);
            goto out;
        }
        /* each class as up to three labels, made once */
        struct gx *(*part)[3] = calloc((size_t)cls.n, sizeof *part);
        int8_t *npart = calloc((size_t)cls.n, 1);
        size_t nl = 0;
        for (size_t i = 0; i < npe && part && npart; i++)
            if (live[pe[i][0]] >= 0 && (pe[i][1] < 0 || live[pe[i][1]] >= 0)) {
                int32_t c = pe[i][2];
                if (c >= 0 && !npart[c])
                    npart[c] = (int8_t)(1 + gx_json_char_parts(b, &cls.set[c], part[c]));
                nl += c < 0 ? 1 : (size_t)npart[c] - 1;
            }
        labels = part && npart ? malloc((nl + 1) * sizeof *labels) : NULL;
        ends = labels ? malloc((nl + 1) * 2 * sizeof *ends) : NULL;
        if (ends && !b->failed) {
            size_t k = 0;
            struct gx *eps = gx_empty(b);
            for (size_t i = 0; i < npe; i++) {
                if (live[pe[i][0]] < 0 || (pe[i][1] >= 0 && live[pe[i][1]] < 0)) continue;
                int32_t c = pe[i][2], z = pe[i][1] < 0 ? m : live[pe[i][1]];
                for (int p = 0; p < (c < 0 ? 1 : npart[c] - 1); p++) {
                    labels[k] = c < 0 ? eps : part[c][p];
                    ends[2 * k] = live[pe[i][0]], ends[2 * k + 1] = z;
                    k++;
                }
            }
            res = gx_graph(b, m, (int)k, ends, labels);
        }
        bool mem = !(part && npart && labels && ends);
        free(part), free(npart);
        if (mem) goto nomem;
    }
    goto out;
nomem:
    nomem = true;
out:
    if (nomem) gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
    if (over && !b->failed)
        gb_fail(b, KILN_ERR_UNSUPPORTED,
                "%s: unsupported (with the string's other keywords, over %d automaton states)",
                where, RM_MAX_PRODUCT);
    for (int i = 0; i < cls.n; i++) cps_free(&cls.set[i]);
    free(cls.set);
    rm_free(&a[0]), rm_free(&a[1]);
    free(states.k), free(states.v), free(meets.k), free(meets.v);
    free(pe), free(key), free(live), free(r0), free(rl), free(labels), free(ends);
    return b->failed ? NULL : res;
}
