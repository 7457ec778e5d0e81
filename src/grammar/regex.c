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
};

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

struct gx *gr_regex(struct gr_builder *b, const char *re, size_t n, bool json, bool search,
                    const char *where)
{
    /* a search's anchors belong to their own alternative: ^a|b$ is (^a)|(b$) */
    size_t bar = search ? top_bar(re, n) : n;
    if (bar < n)
        return gx_alt2(b, gr_regex(b, re, bar, json, true, where),
                       gr_regex(b, re + bar + 1, n - bar - 1, json, true, where));
    struct rx r = {b, (const unsigned char *)re, n, 0, json, where, 0};
    bool start_anchor = n > 0 && re[0] == '^';
    if (start_anchor) r.i = 1;
    struct gx *x = rx_alt(&r);
    if (!x) return NULL;
    if (r.i != r.n) return rx_fail(&r, r.s[r.i] == ')' ? "unmatched )" : "unexpected character");
    bool end_anchor = n > 0 && re[n - 1] == '$' && (n < 2 || re[n - 2] != '\\');
    if (!search) return x;
    /* JSON Schema `pattern`: the regex may match anywhere in the string */
    struct cp_set all = {0};
    cps_add(&all, 0, 0x10FFFF);
    struct gx *any = gx_rep(b, json ? gx_json_chars(b, &all) : gx_utf8(b, &all), 0, -1);
    cps_free(&all);
    struct gx *q = gx_seq(b);
    if (!start_anchor) q = gx_add(b, q, any);
    q = gx_add(b, q, x);
    if (!end_anchor && json && b->json_canon) { /* one rule: keydfa.c knows its loop */
        if (b->r_key_tail < 0) {
            b->r_key_tail = gb_rule(b, "%key_tail");
            gb_set(b, b->r_key_tail, any);
        }
        any = gx_call(b, b->r_key_tail);
    }
    if (!end_anchor) q = gx_add(b, q, any);
    return q;
}
