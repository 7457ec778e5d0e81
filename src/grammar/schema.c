/* JSON Schema compiler: a schema document -> grammar rules for one JSON value, compact (or
 * flexible) whitespace, properties in one order: LLGuidance's documented "stable property
 * order" (`properties` as written, then names only `required` lists, then additional ones;
 * joins merged in the order written: see join_add). Every keyword that constrains
 * instances is either enforced exactly (or more strictly, never more loosely) or refused with
 * "unsupported JSON Schema keyword 'k' at /pointer". Choice lists live here too. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

#define JS_MAX_DEPTH 64

struct js_ref {
    char *ptr;
    int rule;
};

struct js {
    struct gr_builder *b;
    json_t *root;
    struct js_ref *refs;
    int nrefs, capref;
    int depth;
    json_t *keep; /* array owning merged schemas */
    /* the root's $schema is draft 3 to 7, where keywords beside a $ref are ignored (draft
     * 2019-09 on, and schemas that name no draft, apply them too) */
    bool ref_alone;
    size_t join_steps; /* schemas and keywords merged by join_add, against JS_MAX_JOIN_STEPS */
    size_t excl_steps; /* oneOf exclusivity proof steps, against JS_MAX_EXCL_STEPS */
    /* sub-schemas compiled to rules, by their canonical text: equal ones share one rule */
    struct js_memo {
        char *text;
        int rule;
    } * memo;
    size_t nmemo, capmemo;
};

static struct gx *js_value(struct js *j, json_t *s, const char *ptr);
static bool in_list(const char *const *l, const char *k);

static struct gx *ws(struct gr_builder *b)
{
    if (b->ws == KILN_GRAMMAR_WS_COMPACT) return gx_empty(b);
    if (b->ws == KILN_GRAMMAR_WS_INDENT) {
        /* one shared rule: nothing | " " | "\n" " "{0,KILN_GRAMMAR_INDENT_MAX} */
        if (b->r_ws < 0) {
            b->r_ws = gb_rule(b, "%ws");
            if (b->r_ws < 0) return NULL;
            struct gx *nl = gx_add(b, gx_seq(b), gx_byte(b, '\n'));
            nl = gx_add(b, nl, gx_rep(b, gx_byte(b, ' '), 0, KILN_GRAMMAR_INDENT_MAX));
            struct gx *alt = gx_add(b, gx_alt(b), gx_empty(b));
            alt = gx_add(b, gx_add(b, alt, gx_byte(b, ' ')), nl);
            gb_set(b, b->r_ws, alt);
        }
        return gx_call(b, b->r_ws);
    }
    struct gx *x = gx_byte(b, ' ');
    if (x) {
        x->bits[0] |= 1u << '\t' | 1u << '\n' | 1u << '\r';
    }
    return gx_rep(b, x, 0, -1);
}

/* ws lit ws */
static struct gx *punct(struct gr_builder *b, const char *lit)
{
    return gx_add(b, gx_add(b, gx_add(b, gx_seq(b), ws(b)), gx_str(b, lit)), ws(b));
}

static struct gx *any_char(struct gr_builder *b)
{
    struct cp_set all = {0};
    cps_add(&all, 0, 0x10FFFF);
    struct gx *x = gx_json_chars(b, &all);
    cps_free(&all);
    return x;
}

static struct gx *gx_json_string(struct gr_builder *b)
{
    if (b->r_json_string < 0) {
        b->r_json_string = gb_rule(b, "%string");
        struct gx *q = gx_seq(b);
        q = gx_add(b, q, gx_byte(b, '"'));
        q = gx_add(b, q, gx_rep(b, any_char(b), 0, -1));
        q = gx_add(b, q, gx_byte(b, '"'));
        gb_set(b, b->r_json_string, q);
    }
    return gx_call(b, b->r_json_string);
}

static struct gx *digits(struct gr_builder *b, int min)
{
    return gx_rep(b, gx_range(b, '0', '9'), min, -1);
}

static struct gx *json_int(struct gr_builder *b)
{
    struct gx *nat = gx_alt2(b, gx_byte(b, '0'), gx_seq2(b, gx_range(b, '1', '9'), digits(b, 0)));
    return gx_seq2(b, gx_opt(b, gx_byte(b, '-')), nat);
}

static struct gx *json_number(struct gr_builder *b)
{
    struct gx *q = gx_seq(b);
    q = gx_add(b, q, json_int(b));
    q = gx_add(b, q, gx_opt(b, gx_seq2(b, gx_byte(b, '.'), digits(b, 1))));
    struct gx *e = gx_range(b, 'E', 'E');
    if (e) e->bits['e' >> 5] |= 1u << ('e' & 31);
    struct gx *sign = gx_byte(b, '+');
    if (sign) sign->bits['-' >> 5] |= 1u << ('-' & 31);
    q = gx_add(
        b, q,
        gx_opt(b, gx_add(b, gx_add(b, gx_add(b, gx_seq(b), e), gx_opt(b, sign)), digits(b, 1))));
    return q;
}

struct gx *gr_json_any_value(struct gr_builder *b)
{
    if (b->r_json_value < 0) {
        b->r_json_value = gb_rule(b, "%value");
        int r_obj = gb_rule(b, "%object"), r_arr = gb_rule(b, "%array");
        struct gx *v = gx_alt(b);
        v = gx_add(b, v, gx_call(b, r_obj));
        v = gx_add(b, v, gx_call(b, r_arr));
        v = gx_add(b, v, gx_json_string(b));
        v = gx_add(b, v, json_number(b));
        v = gx_add(b, v, gx_str(b, "true"));
        v = gx_add(b, v, gx_str(b, "false"));
        v = gx_add(b, v, gx_str(b, "null"));
        gb_set(b, b->r_json_value, v);
        struct gx *kv = gx_seq(b);
        kv = gx_add(b, kv, gx_json_string(b));
        kv = gx_add(b, kv, punct(b, ":"));
        kv = gx_add(b, kv, gx_call(b, b->r_json_value));
        struct gx *more = gx_rep(b, gx_seq2(b, punct(b, ","), kv), 0, -1);
        struct gx *o = gx_seq(b);
        o = gx_add(b, o, gx_byte(b, '{'));
        o = gx_add(b, o, ws(b));
        o = gx_add(b, o, gx_opt(b, gx_seq2(b, kv, more)));
        o = gx_add(b, o, gx_byte(b, '}'));
        gb_set(b, r_obj, o);
        b->r_json_object = r_obj;
        struct gx *el = gx_call(b, b->r_json_value);
        struct gx *a = gx_seq(b);
        a = gx_add(b, a, gx_byte(b, '['));
        a = gx_add(b, a, ws(b));
        a = gx_add(b, a,
                   gx_opt(b, gx_seq2(b, el, gx_rep(b, gx_seq2(b, punct(b, ","), el), 0, -1))));
        a = gx_add(b, a, gx_byte(b, ']'));
        gb_set(b, r_arr, a);
    }
    return gx_call(b, b->r_json_value);
}

static struct gx *top(struct gr_builder *b, struct gx *x)
{
    if (b->ws == KILN_GRAMMAR_WS_COMPACT) return x;
    return gx_add(b, gx_add(b, gx_add(b, gx_seq(b), ws(b)), x), ws(b));
}

struct gx *gr_json_any_object(struct gr_builder *b)
{
    gr_json_any_value(b);
    return top(b, gx_call(b, b->r_json_object));
}

/* ---- helpers ---- */

static struct gx *js_fail(struct js *j, const char *what, const char *kw, const char *ptr)
{
    return gb_fail(j->b, KILN_ERR_UNSUPPORTED, "%s JSON Schema keyword '%s' at %s", what, kw,
                   *ptr ? ptr : "/");
}

static struct gx *js_bad(struct js *j, const char *ptr, const char *msg)
{
    return gb_fail(j->b, KILN_ERR_INVALID, "invalid JSON Schema at %s: %s", *ptr ? ptr : "/", msg);
}

static void sub_ptr(char *out, size_t cap, const char *ptr, const char *key)
{
    size_t n = (size_t)snprintf(out, cap, "%s/", ptr);
    for (const char *k = key; *k && n + 3 < cap; k++) {
        if (*k == '~') {
            out[n++] = '~';
            out[n++] = '0';
        } else if (*k == '/') {
            out[n++] = '~';
            out[n++] = '1';
        } else
            out[n++] = *k;
    }
    out[n < cap ? n : cap - 1] = 0;
}

/* a JSON value as an exact literal (canonical compact form; ws between tokens if flexible) */
static struct gx *js_literal(struct js *j, json_t *v)
{
    struct gr_builder *b = j->b;
    if (json_is_object(v)) {
        struct gx *q = gx_add(b, gx_seq(b), gx_byte(b, '{'));
        q = gx_add(b, q, ws(b));
        const char *k;
        json_t *x;
        bool first = true;
        json_object_foreach(v, k, x)
        {
            if (!first) q = gx_add(b, q, punct(b, ","));
            first = false;
            json_t *ks = json_string(k);
            char *enc = json_dumps(ks, JSON_ENCODE_ANY | JSON_COMPACT);
            json_decref(ks);
            if (!enc) return gb_fail(b, KILN_ERR_NOMEM, "out of memory");
            q = gx_add(b, q, gx_str(b, enc));
            free(enc);
            q = gx_add(b, q, punct(b, ":"));
            q = gx_add(b, q, js_literal(j, x));
        }
        if (!first) q = gx_add(b, q, ws(b));
        return gx_add(b, q, gx_byte(b, '}'));
    }
    if (json_is_array(v)) {
        struct gx *q = gx_add(b, gx_seq(b), gx_byte(b, '['));
        q = gx_add(b, q, ws(b));
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            if (i) q = gx_add(b, q, punct(b, ","));
            q = gx_add(b, q, js_literal(j, x));
        }
        if (json_array_size(v)) q = gx_add(b, q, ws(b));
        return gx_add(b, q, gx_byte(b, ']'));
    }
    char *enc = NULL;
    if (json_is_real(v)) /* the shortest spelling that reads back (what JSON writers emit) */
        for (int prec = 1; prec <= 17 && !enc; prec++) {
            char *e = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(prec));
            if (e && strtod(e, NULL) == json_real_value(v))
                enc = e;
            else
                free(e);
        }
    if (!enc) enc = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!enc) return gb_fail(b, KILN_ERR_NOMEM, "out of memory");
    struct gx *x = gx_str(b, enc);
    if (json_is_integer(v) || (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
                               fabs(json_real_value(v)) < 1e15)) {
        /* 3 and 3.0 are the same number: accept both spellings */
        double d = json_number_value(v);
        char buf[64];
        snprintf(buf, sizeof buf, "%.0f", d);
        char buf2[72];
        snprintf(buf2, sizeof buf2, "%s.0", buf);
        x = gx_alt2(b, gx_str(b, buf), gx_str(b, buf2));
    }
    free(enc);
    return x;
}

/* ---- numbers with bounds ---- */

/* fixed-width decimal numbers with values in [lo, hi], d digits */
static struct gx *dec_fixed(struct gr_builder *b, uint64_t lo, uint64_t hi, int d)
{
    if (d == 1) return gx_range(b, '0' + (unsigned)lo, '0' + (unsigned)hi);
    uint64_t p = 1;
    for (int i = 1; i < d; i++) p *= 10;
    if (lo == 0 && hi == p * 10 - 1) return gx_rep(b, gx_range(b, '0', '9'), d, d);
    uint64_t lh = lo / p, hh = hi / p;
    if (lh == hh)
        return gx_seq2(b, gx_byte(b, '0' + (unsigned)lh), dec_fixed(b, lo % p, hi % p, d - 1));
    struct gx *alt = gx_alt(b);
    gx_add(b, alt, gx_seq2(b, gx_byte(b, '0' + (unsigned)lh), dec_fixed(b, lo % p, p - 1, d - 1)));
    if (hh - lh > 1)
        gx_add(b, alt,
               gx_seq2(b, gx_range(b, '0' + (unsigned)lh + 1, '0' + (unsigned)hh - 1),
                       gx_rep(b, gx_range(b, '0', '9'), d - 1, d - 1)));
    gx_add(b, alt, gx_seq2(b, gx_byte(b, '0' + (unsigned)hh), dec_fixed(b, 0, hi % p, d - 1)));
    return alt;
}

static int ndigits(uint64_t v)
{
    int d = 1;
    while (v >= 10) v /= 10, d++;
    return d;
}

/* canonical naturals (no leading zeros) in [lo, hi]; inf: no upper bound */
static struct gx *nat_range(struct gr_builder *b, uint64_t lo, uint64_t hi, bool inf)
{
    struct gx *alt = gx_alt(b);
    if (!inf && hi < lo) return alt;
    int dl = ndigits(lo), dh = inf ? 19 : ndigits(hi);
    for (int d = dl; d <= dh; d++) {
        uint64_t p = 1;
        for (int i = 1; i < d; i++) p *= 10;
        uint64_t a = d == 1 ? 0 : p, z = p * 10 - 1;
        if (a < lo) a = lo;
        if (!inf && z > hi) z = hi;
        if (a <= z) gx_add(b, alt, dec_fixed(b, a, z, d));
    }
    if (inf) /* 20 digits or more */
        gx_add(b, alt, gx_seq2(b, gx_range(b, '1', '9'), gx_rep(b, gx_range(b, '0', '9'), 19, -1)));
    return alt;
}

static struct gx *frac_any(struct gr_builder *b)
{
    return gx_seq2(b, gx_byte(b, '.'), digits(b, 1));
}
static struct gx *frac_zero(struct gr_builder *b)
{
    return gx_seq2(b, gx_byte(b, '.'), gx_rep(b, gx_byte(b, '0'), 1, -1));
}
static struct gx *frac_nonzero(struct gr_builder *b)
{
    struct gx *q = gx_seq(b);
    q = gx_add(b, q, gx_byte(b, '.'));
    q = gx_add(b, q, digits(b, 0));
    q = gx_add(b, q, gx_range(b, '1', '9'));
    return gx_add(b, q, digits(b, 0));
}

/* a bound's decimal digits: |v| as the shortest spelling that reads back (what the schema
 * wrote, for up to 17 significant digits), its integer part and its fraction's digits without
 * trailing zeros. false from 10^17 on or past 38 fraction digits. */
struct dec {
    uint64_t ip;
    char frac[40];
};
static bool dec_of(double v, struct dec *d)
{
    v = fabs(v);
    if (!(v < 1e17)) return false;
    char buf[64];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
        if (strtod(buf, NULL) == v) break;
    }
    char digs[24];
    int nd = 0;
    const char *p = buf;
    for (; *p && *p != 'e' && nd < 20; p++)
        if (*p >= '0' && *p <= '9') digs[nd++] = *p;
    int e = *p == 'e' ? atoi(p + 1) : 0; /* digs[0] stands for 10^e */
    d->ip = 0;
    int nf = 0;
    if (e < 0 && nd - e - 1 >= (int)sizeof d->frac) return false;
    for (int q = e; q < 0 && q < -1; q++) d->frac[nf++] = '0'; /* 10^-1 .. 10^(e+1) */
    for (int i = 0; i < nd || e - i >= 0; i++) {
        int c = i < nd ? digs[i] - '0' : 0;
        if (e - i >= 0)
            d->ip = d->ip * 10 + (uint64_t)c;
        else
            d->frac[nf++] = (char)('0' + c);
    }
    while (nf && d->frac[nf - 1] == '0') nf--;
    d->frac[nf] = 0;
    return true;
}

static int dec_cmp(const struct dec *x, const struct dec *y)
{
    if (x->ip != y->ip) return x->ip < y->ip ? -1 : 1;
    return strcmp(x->frac, y->frac); /* a shorter fraction that is a prefix is less */
}

/* fraction digits F with 0.F >= 0.d (> when x); d is not empty at the first call, so F is not */
static struct gx *frac_ge(struct gr_builder *b, const char *d, bool x)
{
    if (!*d)
        return x ? gx_seq2(b, digits(b, 0), gx_seq2(b, gx_range(b, '1', '9'), digits(b, 0)))
                 : digits(b, 0);
    struct gx *alt = gx_alt(b);
    if (*d < '9') gx_add(b, alt, gx_seq2(b, gx_range(b, (unsigned)*d + 1, '9'), digits(b, 0)));
    return gx_add(b, alt, gx_seq2(b, gx_byte(b, (unsigned char)*d), frac_ge(b, d + 1, x)));
}

/* fraction digits F (at least one) with 0.F <= 0.e (< when x), and F not all zeros when nz;
 * no branch that leads nowhere */
static struct gx *frac_le(struct gr_builder *b, const char *e, bool x, bool first, bool nz)
{
    if (!*e) return gx_rep(b, gx_byte(b, '0'), 0, -1); /* e itself: only when inclusive */
    struct gx *alt = gx_alt(b);
    if (!first && !nz) gx_add(b, alt, gx_empty(b)); /* a prefix of e: less */
    if (*e > '0' && nz) {                           /* a zero here needs a nonzero digit later */
        struct gx *q = gx_seq2(b, gx_byte(b, '0'), digits(b, 0));
        gx_add(b, alt, gx_seq2(b, gx_seq2(b, q, gx_range(b, '1', '9')), digits(b, 0)));
        if (*e > '1') gx_add(b, alt, gx_seq2(b, gx_range(b, '1', (unsigned)*e - 1), digits(b, 0)));
    } else if (*e > '0')
        gx_add(b, alt, gx_seq2(b, gx_range(b, '0', (unsigned)*e - 1), digits(b, 0)));
    if (e[1] || !x)
        gx_add(b, alt,
               gx_seq2(b, gx_byte(b, (unsigned char)*e),
                       frac_le(b, e + 1, x, false, nz && *e == '0')));
    return alt;
}

static struct gx *dot(struct gr_builder *b, struct gx *f)
{
    return gx_seq2(b, gx_byte(b, '.'), f);
}

/* y >= 0 with a <(=) y <(=) z (z: inf when zinf), no exponent. frac: whether a fraction may
 * appear at all (integer type: no, and the bounds are integers). *refuse: both bounds have a
 * fraction and one integer part (0.25 to 0.75: the two digit conditions at once): not built. */
static struct gx *nonneg(struct gr_builder *b, const struct dec *a, bool ax, const struct dec *z,
                         bool zx, bool zinf, bool frac, bool *refuse)
{
    struct gx *alt = gx_alt(b);
    if (!zinf) {
        int c = dec_cmp(z, a);
        if (c < 0 || (c == 0 && (ax || zx))) return alt;
    }
    bool af = a->frac[0], zf = !zinf && z->frac[0];
    struct gx *any = frac ? gx_opt(b, frac_any(b)) : gx_empty(b);
    if (!zinf && z->ip == a->ip) { /* one integer part */
        if (af) {
            *refuse = true;
            return alt;
        }
        struct gx *f = !zf  ? (frac ? gx_opt(b, frac_zero(b)) : gx_empty(b))
                       : ax ? dot(b, frac_le(b, z->frac, zx, true, true))
                            : gx_opt(b, dot(b, frac_le(b, z->frac, zx, true, false)));
        return gx_add(b, alt, gx_seq2(b, nat_range(b, a->ip, a->ip, false), f));
    }
    /* I in (a, z) */
    if (zinf || z->ip > a->ip + 1)
        gx_add(b, alt, gx_seq2(b, nat_range(b, a->ip + 1, zinf ? 0 : z->ip - 1, zinf), any));
    /* I == a */
    if (af)
        gx_add(b, alt,
               gx_seq2(b, nat_range(b, a->ip, a->ip, false), dot(b, frac_ge(b, a->frac, ax))));
    else if (!ax)
        gx_add(b, alt, gx_seq2(b, nat_range(b, a->ip, a->ip, false), any));
    else if (frac)
        gx_add(b, alt, gx_seq2(b, nat_range(b, a->ip, a->ip, false), frac_nonzero(b)));
    /* I == z */
    if (zf)
        gx_add(b, alt,
               gx_seq2(b, nat_range(b, z->ip, z->ip, false),
                       gx_opt(b, dot(b, frac_le(b, z->frac, zx, true, false)))));
    else if (!zinf && !zx)
        gx_add(b, alt,
               gx_seq2(b, nat_range(b, z->ip, z->ip, false),
                       frac ? gx_opt(b, frac_zero(b)) : gx_empty(b)));
    return alt;
}

static bool integral(double v)
{
    return v == floor(v) && fabs(v) < 1e17;
}

/* number or integer with bounds: lo/hi may be absent (has*), exclusive flags. A number's
 * bounds may have fractions (their decimal digits compared digit by digit) */
static struct gx *bounded_number(struct js *j, bool has_lo, double lo, bool lox, bool has_hi,
                                 double hi, bool hix, bool is_int, const char *ptr)
{
    struct gr_builder *b = j->b;
    if (is_int) { /* integer bounds: round inward, then inclusive */
        if (has_lo) {
            double c = ceil(lo);
            if (lox && c == lo) c += 1;
            lo = c;
            lox = false;
        }
        if (has_hi) {
            double f = floor(hi);
            if (hix && f == hi) f -= 1;
            hi = f;
            hix = false;
        }
    }
    struct dec dl = {0}, dh = {0}, zero = {0};
    bool refuse = (has_lo && !dec_of(lo, &dl)) || (has_hi && !dec_of(hi, &dh));
    struct gx *alt = gx_alt(b);
    bool frac = !is_int;
    /* non-negative part: y in [max(lo,0), hi] */
    if (!refuse && (!has_hi || hi >= 0))
        gx_add(b, alt,
               nonneg(b, has_lo && lo >= 0 ? &dl : &zero, has_lo && lo >= 0 && lox, &dh, hix,
                      !has_hi, frac, &refuse));
    /* negative part: x = -y, y > 0, y in [max(-hi, 0), -lo]; "-0" stays out (y > 0) */
    if (!refuse && (!has_lo || lo < 0)) {
        bool below0 = has_hi && hi < 0;
        struct gx *y =
            nonneg(b, below0 ? &dh : &zero, below0 ? hix : true, &dl, lox, !has_lo, frac, &refuse);
        gx_add(b, alt, gx_seq2(b, gx_byte(b, '-'), y));
    }
    if (refuse)
        return js_fail(j, "unsupported (bounds with fractions in one integer part, or past 10^17)",
                       has_lo ? "minimum" : "maximum", ptr);
    return alt;
}

/* Multiples of m = c / 10^s (c, s from m's decimal digits: 0.25 is 25 / 10^2, 13.5 is 135 / 10):
 * x is one when x * 10^s is an integer divisible by c, i.e. at most s fraction digits (then
 * zeros) and the digits read as one integer, the fraction padded to s, 0 mod c. A digit
 * automaton mod c, one rule per (remainder, fraction digits read); no exponent (stricter) and
 * no branch that leads nowhere. is_int: no fraction. Refused past JS_MAX_MULT_RULES rules. */
#define JS_MAX_MULT_RULES 2000
static struct gx *multiple_of(struct js *j, double m, bool is_int, const char *ptr)
{
    struct gr_builder *b = j->b;
    struct dec d;
    size_t s = 0;
    uint64_t c = 0;
    bool ok = m > 0 && dec_of(m, &d) && (s = strlen(d.frac)) <= 9;
    if (ok) {
        c = d.ip;
        for (size_t i = 0; i < s; i++) c = c * 10 + (uint64_t)(d.frac[i] - '0');
        ok = c > 0 && c * (s + 1) <= JS_MAX_MULT_RULES;
    }
    if (!ok) return js_fail(j, "unsupported (a factor this fine or this large)", "multipleOf", ptr);
    uint64_t p10[10] = {1};
    for (size_t i = 1; i <= s; i++) p10[i] = p10[i - 1] * 10 % c;
    /* live[r * (s + 1) + i]: after i fraction digits at remainder r, a multiple can still end */
    bool *live = calloc(c * (s + 1), sizeof *live);
    int *rule = malloc(c * (s + 1) * sizeof *rule);
    if (!live || !rule) {
        free(live);
        free(rule);
        return gb_fail(b, KILN_ERR_NOMEM, "out of memory");
    }
    for (size_t i = s + 1; i-- > 0;)
        for (uint64_t r = 0; r < c; r++) {
            bool l = r * p10[s - i] % c == 0;
            for (int dg = 0; dg < 10 && i < s && !l; dg++)
                l = live[(r * 10 + dg) % c * (s + 1) + i + 1];
            live[r * (s + 1) + i] = l;
        }
    /* rule[r * (s + 1)]: the integer part so far at remainder r, more digits or its tail;
     * tail[r]: the end or a fraction; rule[r * (s + 1) + i], i > 0: i fraction digits read */
    int *tail = calloc(c, sizeof *tail);
    if (!tail) {
        free(live);
        free(rule);
        return gb_fail(b, KILN_ERR_NOMEM, "out of memory");
    }
    for (size_t k = 0; k < c * (s + 1); k++) rule[k] = gb_rule(b, "%multiple");
    for (uint64_t r = 0; r < c; r++) tail[r] = gb_rule(b, "%multiple_tail");
    for (uint64_t r = 0; r < c; r++) {
        struct gx *t = gx_alt(b);
        if (r * p10[s] % c == 0) gx_add(b, t, gx_empty(b));
        if (!is_int) { /* a fraction: at least one digit */
            struct gx *f = gx_alt(b);
            if (s == 0 && r == 0) gx_add(b, f, gx_rep(b, gx_byte(b, '0'), 1, -1));
            for (int dg = 0; dg < 10 && s > 0; dg++) {
                uint64_t q = (r * 10 + (uint64_t)dg) % c;
                if (live[q * (s + 1) + 1])
                    gx_add(b, f,
                           gx_seq2(b, gx_byte(b, '0' + (unsigned)dg),
                                   gx_call(b, rule[q * (s + 1) + 1])));
            }
            if (f && f->n) gx_add(b, t, gx_seq2(b, gx_byte(b, '.'), f));
        }
        gb_set(b, tail[r], t);
        for (size_t i = 0; i <= s; i++) {
            struct gx *alt = gx_alt(b);
            if (i == 0) {
                for (int dg = 0; dg < 10; dg++)
                    gx_add(b, alt,
                           gx_seq2(b, gx_byte(b, '0' + (unsigned)dg),
                                   gx_call(b, rule[(r * 10 + (uint64_t)dg) % c * (s + 1)])));
                gx_add(b, alt, gx_call(b, tail[r]));
            } else if (i == s) {
                alt = gx_rep(b, gx_byte(b, '0'), 0, -1); /* only reached at remainder 0 */
            } else {
                if (r * p10[s - i] % c == 0) gx_add(b, alt, gx_empty(b));
                for (int dg = 0; dg < 10; dg++) {
                    uint64_t q = (r * 10 + (uint64_t)dg) % c;
                    if (live[q * (s + 1) + i + 1])
                        gx_add(b, alt,
                               gx_seq2(b, gx_byte(b, '0' + (unsigned)dg),
                                       gx_call(b, rule[q * (s + 1) + i + 1])));
                }
            }
            gb_set(b, rule[r * (s + 1) + i], alt);
        }
    }
    /* -? (0 | [1-9] digits): 0 goes straight to its tail */
    struct gx *first = gx_alt(b);
    gx_add(b, first, gx_seq2(b, gx_byte(b, '0'), gx_call(b, tail[0])));
    for (int dg = 1; dg < 10; dg++)
        gx_add(b, first,
               gx_seq2(b, gx_byte(b, '0' + (unsigned)dg),
                       gx_call(b, rule[(uint64_t)dg % c * (s + 1)])));
    free(tail);
    free(live);
    free(rule);
    return gx_seq2(b, gx_opt(b, gx_byte(b, '-')), first);
}

/* ---- strings ---- */

static const char *format_regex(const char *f)
{
#define YEAR "[0-9]{4}"
#define LEAP "([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
#define DATE                                                                                       \
    "(" YEAR "-(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|" YEAR                                    \
    "-(0[469]|11)-(0[1-9]|[12][0-9]|30)|" YEAR "-02-(0[1-9]|1[0-9]|2[0-8])|" LEAP "-02-29)"
/* A leap second (:60) only at 23:59:60 UTC, written with Z or a zero offset: RFC 3339 has them
 * only there (validators such as ajv-formats check it); other offsets of the same instant are
 * refused, stricter than the RFC, never looser. */
#define TIME                                                                                       \
    "(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?(Z|z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])" \
    "|"                                                                                            \
    "23:59:60(\\.[0-9]+)?(Z|z|[+-]00:00))"
    if (!strcmp(f, "date")) return DATE;
    if (!strcmp(f, "time")) return TIME;
    if (!strcmp(f, "date-time")) return DATE "[Tt]" TIME;
    if (!strcmp(f, "ipv4")) /* dotted decimal, no leading zeros (as ajv-formats) */
        return "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|"
               "[1-9]?[0-9])){3}";
    if (!strcmp(f, "uuid"))
        return "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
    if (!strcmp(f, "email"))
        return "[a-zA-Z0-9_+-]+(\\.[a-zA-Z0-9_+-]+)*@[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
               "(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+";
    if (!strcmp(f, "uri"))
        return "[a-zA-Z][a-zA-Z0-9+.-]*:[a-zA-Z0-9\\-._~:/?#@!$&'()*+,;=%\\[\\]]*";
    return NULL;
#undef DATE
#undef YEAR
#undef LEAP
#undef TIME
}

/* the formats JSON Schema defines (draft 2020-12 and earlier); any other value is an
 * annotation that no validator checks, so it constrains nothing */
static const char *const standard_formats[] = {
    "date-time",    "date",          "time",
    "duration",     "email",         "idn-email",
    "hostname",     "idn-hostname",  "ipv4",
    "ipv6",         "uri",           "uri-reference",
    "iri",          "iri-reference", "uuid",
    "uri-template", "json-pointer",  "relative-json-pointer",
    "regex",        "color",         "host-name",
    "ip-address",   "utc-millisec",  NULL};

static struct gx *js_string(struct js *j, json_t *s, const char *ptr)
{
    struct gr_builder *b = j->b;
    json_t *minl = json_object_get(s, "minLength"), *maxl = json_object_get(s, "maxLength");
    json_t *pat = json_object_get(s, "pattern"), *fmt = json_object_get(s, "format");
    if ((minl && !json_is_integer(minl)) || (maxl && !json_is_integer(maxl)))
        return js_bad(j, ptr, "minLength/maxLength must be integers");
    long long mn = minl ? json_integer_value(minl) : 0, mx = maxl ? json_integer_value(maxl) : -1;
    if (mn < 0 || (maxl && mx < 0)) return js_bad(j, ptr, "negative string length");
    if (mn > 2147483647 || mx > 2147483647)
        return js_fail(j, "unsupported (over 2^31 - 1)",
                       mn > 2147483647 ? "minLength" : "maxLength", ptr);
    const char *re = NULL;
    char where[300];
    if (fmt && json_is_string(fmt) && !in_list(standard_formats, json_string_value(fmt)))
        fmt = NULL;
    if (fmt && json_is_string(fmt)) {
        re = format_regex(json_string_value(fmt));
        if (!re)
            return gb_fail(b, KILN_ERR_UNSUPPORTED,
                           "unsupported JSON Schema keyword 'format' (value '%s') at %s",
                           json_string_value(fmt), *ptr ? ptr : "/");
    }
    if (pat && !json_is_string(pat)) return js_bad(j, ptr, "pattern must be a string");
    struct gx *body;
    if ((re || pat) && (minl || maxl || (re && pat))) {
        /* exact: the regexes' automata times a count of code points (gr_regex_meet) */
        const char *rs[2];
        size_t rn[2];
        bool search[2];
        int k = 0;
        if (re) rs[k] = re, rn[k] = strlen(re), search[k++] = false;
        if (pat)
            rs[k] = json_string_value(pat), rn[k] = json_string_length(pat), search[k++] = true;
        snprintf(where, sizeof where, "%s at %s", pat ? "pattern" : "format", *ptr ? ptr : "/");
        body = gr_regex_meet(b, k, rs, rn, search, mn, maxl ? mx : -1, where);
    } else if (re) {
        snprintf(where, sizeof where, "format at %s", ptr);
        body = gr_regex(b, re, strlen(re), true, false, where);
    } else if (pat) {
        snprintf(where, sizeof where, "pattern at %s", *ptr ? ptr : "/");
        body = gr_regex(b, json_string_value(pat), json_string_length(pat), true, true, where);
    } else if (!minl && !maxl)
        return gx_json_string(b);
    else
        body = gx_rep(b, any_char(b), (int)mn, (int)mx);
    return gx_add(b, gx_add(b, gx_add(b, gx_seq(b), gx_byte(b, '"')), body), gx_byte(b, '"'));
}

/* ---- objects ---- */

static char *enc_key(const char *k)
{
    json_t *ks = json_string(k);
    char *e = ks ? json_dumps(ks, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    json_decref(ks);
    return e;
}

struct ktrie {
    unsigned char c;
    bool term;
    struct ktrie *kid[128];
};

static int string_rest_rule(struct gr_builder *b)
{
    if (b->r_string_rest < 0) {
        b->r_string_rest = gb_rule(b, "%string_rest");
        gb_set(b, b->r_string_rest, gx_seq2(b, gx_rep(b, any_char(b), 0, -1), gx_byte(b, '"')));
    }
    return b->r_string_rest;
}

/* the rest of a key (after the opening quote) at trie node t: any string but the names */
static struct gx *notin(struct js *j, struct ktrie *t)
{
    struct gr_builder *b = j->b;
    struct gx *alt = gx_alt(b);
    if (!t->term) gx_add(b, alt, gx_byte(b, '"'));
    for (int c = 0; c < 128; c++)
        if (t->kid[c]) gx_add(b, alt, gx_seq2(b, gx_byte(b, (unsigned)c), notin(j, t->kid[c])));
    /* any other character, then anything; a child character is only taken literally, and
     * printable ASCII only unescaped (other spellings are refused: stricter, never looser) */
    uint32_t out[4] = {0};
    for (int c = 0; c < 128; c++)
        if (t->kid[c]) out[c >> 5] |= 1u << (c & 31);
    gx_add(b, alt, gx_seq2(b, gx_json_chars_but(b, out), gx_call(b, string_rest_rule(b))));
    return alt;
}

static void ktrie_free(struct ktrie *t)
{
    if (!t) return;
    for (int c = 0; c < 128; c++) ktrie_free(t->kid[c]);
    free(t);
}

struct prop {
    const char *name;
    json_t *schema;
    bool required;
    char ptr[512];
};

/* The rule of a sub-schema's values; sub-schemas with the same text (keys in the order written:
 * the order of `properties` is the order of the output)
 * share one, so a schema written many times over (e.g. a string with a maxLength, as most
 * properties of an object) is compiled once. */
static uint64_t memo_hash(const char *key)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *c = key; *c; c++) h = (h ^ (unsigned char)*c) * 0x100000001b3ULL;
    return h;
}

/* The rule memoized under key (taken over), or a new rule named name registered under it
 * (*fresh: the caller sets its body); -1 on failure. */
static int memo_rule(struct js *j, char *key, const char *name, bool *fresh)
{
    struct gr_builder *b = j->b;
    *fresh = false;
    if (!key) return gb_fail(b, KILN_ERR_NOMEM, "out of memory"), -1;
    if (j->capmemo)
        for (size_t at = memo_hash(key) & (j->capmemo - 1); j->memo[at].text;
             at = (at + 1) & (j->capmemo - 1))
            if (!strcmp(j->memo[at].text, key)) {
                free(key);
                return j->memo[at].rule;
            }
    int rule = gb_rule(b, name);
    if (rule < 0) {
        free(key);
        return -1;
    }
    if ((j->nmemo + 1) * 2 > j->capmemo) { /* grow, rehash */
        size_t cap = j->capmemo ? j->capmemo * 2 : 64;
        struct js_memo *m = calloc(cap, sizeof *m);
        if (!m) {
            free(key);
            return gb_fail(b, KILN_ERR_NOMEM, "out of memory"), -1;
        }
        for (size_t i = 0; i < j->capmemo; i++)
            if (j->memo[i].text) {
                size_t q = memo_hash(j->memo[i].text) & (cap - 1);
                while (m[q].text) q = (q + 1) & (cap - 1);
                m[q] = j->memo[i];
            }
        free(j->memo);
        j->memo = m;
        j->capmemo = cap;
    }
    size_t at = memo_hash(key) & (j->capmemo - 1);
    while (j->memo[at].text) at = (at + 1) & (j->capmemo - 1);
    j->memo[at] = (struct js_memo){key, rule};
    j->nmemo++;
    *fresh = true;
    return rule;
}

static int js_value_rule(struct js *j, json_t *schema, const char *ptr)
{
    bool fresh;
    int rule =
        memo_rule(j, json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY), "%value_of", &fresh);
    if (fresh) gb_set(j->b, rule, js_value(j, schema, ptr));
    return rule;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The rule of a key that is none of names[0..n) (n > 0, none needs escaping), after its
 * opening quote; shared by the objects with the same set of names. */
static int js_key_not_in_rule(struct js *j, const struct prop *p, size_t n)
{
    const char **names = malloc(n * sizeof *names);
    size_t len = 2;
    for (size_t i = 0; names && i < n; i++) len += strlen(names[i] = p[i].name) + 1;
    char *key = names ? malloc(len) : NULL;
    if (!key) {
        free(names);
        return gb_fail(j->b, KILN_ERR_NOMEM, "out of memory"), -1;
    }
    qsort(names, n, sizeof *names, cmp_cstr);
    size_t at = 0;
    key[at++] = '\x02'; /* never the start of a schema's text; names hold no control bytes */
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(names[i]);
        memcpy(key + at, names[i], l);
        at += l;
        key[at++] = '\x01';
    }
    key[at] = 0;
    free(names);
    bool fresh;
    int rule = memo_rule(j, key, "%key_not_in", &fresh);
    if (!fresh) return rule;
    struct ktrie *root = calloc(1, sizeof *root);
    bool ok = root != NULL;
    for (size_t i = 0; i < n && ok; i++) {
        struct ktrie *t = root;
        for (const unsigned char *c = (const unsigned char *)p[i].name; *c && ok; c++) {
            if (!t->kid[*c]) t->kid[*c] = calloc(1, sizeof *t);
            if (!(t = t->kid[*c])) ok = false;
        }
        if (t) t->term = true;
    }
    if (ok) gb_set(j->b, rule, notin(j, root));
    ktrie_free(root);
    if (!ok) return gb_fail(j->b, KILN_ERR_NOMEM, "out of memory"), -1;
    return rule;
}

/* "name": value, the value a call of rule `value` (compiled once, used by both tails) */
static struct gx *kv(struct js *j, const char *name, int value)
{
    struct gr_builder *b = j->b;
    char *e = enc_key(name);
    if (!e) return gb_fail(b, KILN_ERR_NOMEM, "out of memory");
    struct gx *q = gx_add(b, gx_seq(b), gx_str(b, e));
    free(e);
    q = gx_add(b, q, punct(b, ":"));
    return gx_add(b, q, gx_call(b, value));
}

/* patternProperties: one automaton over the inside of a key (keydfa.c) whose components are
 * bit 0 the keys this compiler takes (any string, printable ASCII unescaped and '/' too: one
 * spelling for every listed name), bit 1 the listed names, bits 2.. the patterns (JSON Schema
 * `pattern` semantics: a search, ECMA-262 '.'). A key's value schema follows from the bits of
 * the state the key ends in: a listed name has its own chain (listed_schema); any other key
 * gets every pattern it matches, or additionalProperties where it matches none. */
#define JS_MAX_KEY_STATES 4096
struct js_pats {
    struct gr_kdfa *d;
    json_t **schema; /* [k] each pattern's schema, in the order written */
    char (*ptr)[512];
    size_t k;
};

static void pats_free(struct js_pats *P)
{
    gr_kdfa_free(P->d);
    free(P->schema);
    free(P->ptr);
}

static bool name_plain(const char *name)
{
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        if (*c >= 128 || *c < 0x20 || *c == '"' || *c == '\\') return false;
    return true;
}

static bool pats_build(struct js *j, struct js_pats *P, json_t *pp, json_t *props, json_t *req,
                       const char *ptr)
{
    struct gr_builder *b = j->b;
    char base[512], where[600];
    sub_ptr(base, sizeof base, ptr, "patternProperties");
    P->k = json_object_size(pp);
    P->schema = calloc(P->k + 1, sizeof *P->schema);
    P->ptr = calloc(P->k + 1, sizeof *P->ptr);
    struct gx **comp = calloc(P->k + 2, sizeof *comp);
    if (!P->schema || !P->ptr || !comp) {
        free(comp);
        return gb_fail(b, KILN_ERR_NOMEM, "out of memory"), false;
    }
    if (P->k > 30) {
        free(comp);
        return js_fail(j, "unsupported (over 30 patterns)", "patternProperties", ptr), false;
    }
    uint32_t slash[4] = {0};
    slash['/' >> 5] = 1u << ('/' & 31); /* '/' only unescaped, as the names are written */
    comp[0] = gx_rep(b, gx_alt2(b, gx_json_chars_but(b, slash), gx_byte(b, '/')), 0, -1);
    const char *k;
    json_t *v;
    size_t i;
    bool plain = true;
    json_object_foreach(props, k, v) plain = plain && name_plain(k);
    json_array_foreach(req, i, v) plain =
        plain && (!json_is_string(v) || name_plain(json_string_value(v)));
    if (!plain) {
        free(comp);
        return js_fail(j, "unsupported (property names that need escaping, with patterns)",
                       "patternProperties", ptr),
               false;
    }
    comp[1] = gx_alt(b);
    json_object_foreach(props, k, v) gx_add(b, comp[1], gx_str(b, k));
    json_array_foreach(req, i, v) if (json_is_string(v))
        gx_add(b, comp[1], gx_str(b, json_string_value(v)));
    i = 0;
    json_object_foreach(pp, k, v)
    {
        sub_ptr(P->ptr[i], sizeof P->ptr[i], base, k);
        snprintf(where, sizeof where, "patternProperties at %s", P->ptr[i]);
        P->schema[i] = v;
        b->json_canon = true; /* the same keys as comp[0] takes, in fewer automaton states */
        comp[2 + i] = gr_regex(b, k, strlen(k), true, true, where);
        b->json_canon = false;
        i++;
    }
    snprintf(where, sizeof where, "patternProperties at %s", base);
    if (!b->failed) P->d = gr_kdfa_build(b, comp, (int)P->k + 2, JS_MAX_KEY_STATES, where);
    free(comp);
    return P->d != NULL;
}

/* the schema of a key matching the patterns of mask S (bit i: pattern i), with `own` (a listed
 * property's schema, or NULL) first: one schema as it is, several as an allOf */
static json_t *pats_schema(struct js *j, const struct js_pats *P, uint32_t S, json_t *own,
                           const char **sptr)
{
    json_t *all = json_array();
    if (own) json_array_append(all, own);
    for (size_t i = 0; i < P->k; i++)
        if (S >> i & 1) {
            if (!own && json_array_size(all) == 0) *sptr = P->ptr[i];
            json_array_append(all, P->schema[i]);
        }
    if (json_array_size(all) == 1) {
        json_t *one = json_array_get(all, 0);
        json_decref(all);
        return one;
    }
    json_t *x = json_pack("{s:o}", "allOf", all);
    json_array_append_new(j->keep, x);
    return x;
}

static struct gx *js_object(struct js *j, json_t *s, const char *ptr)
{
    struct gr_builder *b = j->b;
    json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    json_t *addl = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props)) return js_bad(j, ptr, "properties must be an object");
    json_t *minp = json_object_get(s, "minProperties"), *maxp = json_object_get(s, "maxProperties");
    if ((minp && !json_is_integer(minp)) || (maxp && !json_is_integer(maxp)))
        return js_bad(j, ptr, "minProperties/maxProperties must be integers");
    long long pmin = minp ? json_integer_value(minp) : 0,
              pmax = maxp ? json_integer_value(maxp) : -1;
    if (pmin < 0) pmin = 0;
    if (maxp && pmax < 0) return js_bad(j, ptr, "negative maxProperties");
    if (pmin > 64 || pmax > 64)
        return js_fail(j, "unsupported (over 64)", pmin > 64 ? "minProperties" : "maxProperties",
                       ptr);
    if (pmax >= 0 && pmin > pmax) return gx_none(b);
    if (req && !json_is_array(req)) return js_bad(j, ptr, "required must be an array");
    size_t np = json_object_size(props), nreq = json_array_size(req);
    struct prop *p = calloc(np + nreq + 1, sizeof *p);
    if (!p) return gb_fail(b, KILN_ERR_NOMEM, "out of memory");
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(props, k, v)
    {
        p[n].name = k;
        p[n].schema = v;
        char pp[512];
        sub_ptr(pp, sizeof pp, ptr, "properties");
        sub_ptr(p[n].ptr, sizeof p[n].ptr, pp, k);
        n++;
    }
    bool addl_false = addl && json_is_false(addl);
    json_t *addl_schema = addl && !json_is_boolean(addl) ? addl : NULL;
    char aptr[512];
    sub_ptr(aptr, sizeof aptr, ptr, "additionalProperties");
    json_t *pp = json_object_get(s, "patternProperties");
    if (pp && !json_is_object(pp)) {
        free(p);
        return js_bad(j, ptr, "patternProperties must be an object");
    }
    struct js_pats pats = {0};
    if (json_object_size(pp) && !pats_build(j, &pats, pp, props, req, ptr)) {
        pats_free(&pats);
        free(p);
        return NULL;
    }
    for (size_t i = 0; i < n && pats.d; i++) { /* a listed name gets the patterns it matches */
        uint32_t S = gr_kdfa_run(pats.d, p[i].name, strlen(p[i].name)) >> 2;
        const char *unused;
        if (S) p[i].schema = pats_schema(j, &pats, S, p[i].schema, &unused);
    }
    for (size_t i = 0; i < nreq; i++) {
        json_t *r = json_array_get(req, i);
        if (!json_is_string(r)) {
            pats_free(&pats);
            free(p);
            return js_bad(j, ptr, "required must list strings");
        }
        size_t q = 0;
        while (q < n && strcmp(p[q].name, json_string_value(r))) q++;
        if (q == n) { /* required but not listed: a pattern's or an additional property */
            const char *name = json_string_value(r), *sptr = aptr;
            uint32_t S = pats.d ? gr_kdfa_run(pats.d, name, strlen(name)) >> 2 : 0;
            if (!S && addl_false) {
                pats_free(&pats);
                free(p);
                return gx_none(b);
            }
            p[n].name = name;
            p[n].schema = S             ? pats_schema(j, &pats, S, NULL, &sptr)
                          : addl_schema ? addl_schema
                                        : json_true();
            snprintf(p[n].ptr, sizeof p[n].ptr, "%s", sptr);
            n++;
        }
        p[q].required = true;
    }
    /* tail[i][c]: the members from property i on, c written before (counted up to nc - 1:
     * what minProperties/maxProperties need, at least "one": the next one takes a comma) */
    int nc = (int)(pmax >= 0 ? pmax : pmin) + 1;
    if (nc < 2) nc = 2;
    int *tail = malloc((n + 1) * (size_t)nc * sizeof *tail);
    if (!tail) {
        pats_free(&pats);
        free(p);
        return gb_fail(b, KILN_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i <= n; i++)
        for (int a = 0; a < nc; a++) tail[i * (size_t)nc + (size_t)a] = gb_rule(b, "%object_tail");
    /* additional members */
    struct gx *extra = NULL;
    if (pats.d) { /* the key automaton, each exit on to its value */
        int nst = gr_kdfa_nstates(pats.d);
        struct gx **exits = calloc((size_t)nst, sizeof *exits);
        struct {
            uint32_t S;
            int rule;
        } *vr = calloc((size_t)nst + 1, sizeof *vr);
        int nvr = 0;
        for (int q = 0; q < nst && exits && vr && !b->failed; q++) {
            uint32_t M = gr_kdfa_mask(pats.d, q), S = M >> 2;
            bool never = !S && addl_false; /* a value schema `false`: no such key at all */
            for (size_t i = 0; i < pats.k; i++)
                if (S >> i & 1 && json_is_false(pats.schema[i])) never = true;
            if (!(M & 1) || (M & 2) || never) continue;
            int w = 0;
            while (w < nvr && vr[w].S != S) w++;
            if (w == nvr) {
                const char *sptr = aptr;
                json_t *vs = S ? pats_schema(j, &pats, S, NULL, &sptr) : addl_schema;
                vr[nvr].S = S;
                vr[nvr++].rule = vs ? js_value_rule(j, vs, sptr) : -1;
            }
            struct gx *val = vr[w].rule >= 0 ? gx_call(b, vr[w].rule) : gr_json_any_value(b);
            exits[q] =
                gx_add(b, gx_add(b, gx_add(b, gx_seq(b), gx_byte(b, '"')), punct(b, ":")), val);
        }
        struct gx *key = exits && vr ? gr_kdfa_emit(b, pats.d, exits) : NULL;
        if (!exits || !vr) gb_fail(b, KILN_ERR_NOMEM, "out of memory");
        free(exits);
        free(vr);
        if (key && key->op != GX_NONE) {
            int r_extra = gb_rule(b, "%pattern_member");
            gb_set(b, r_extra, gx_seq2(b, gx_byte(b, '"'), key));
            extra = gx_call(b, r_extra);
        }
        pats_free(&pats);
        if (b->failed) {
            free(tail);
            free(p);
            return NULL;
        }
    } else if (!addl_false) {
        for (size_t i = 0; i < n; i++)
            for (const unsigned char *c = (const unsigned char *)p[i].name; *c; c++)
                if (*c >= 128 || *c < 0x20 || *c == '"' || *c == '\\') {
                    free(tail);
                    free(p);
                    return js_fail(j,
                                   "unsupported (property names that need escaping, with "
                                   "additional properties allowed)",
                                   "additionalProperties", ptr);
                }
        struct gx *key = n ? gx_seq2(b, gx_byte(b, '"'), gx_call(b, js_key_not_in_rule(j, p, n)))
                           : gx_json_string(b);
        struct gx *val =
            addl_schema ? gx_call(b, js_value_rule(j, addl_schema, aptr)) : gr_json_any_value(b);
        int r_extra = gb_rule(b, "%additional"); /* emitted once, called from both tails */
        gb_set(b, r_extra, gx_add(b, gx_add(b, gx_add(b, gx_seq(b), key), punct(b, ":")), val));
        extra = gx_call(b, r_extra);
    }
    /* each property's value once, as a rule both tails call */
    int *vrule = malloc((n + 1) * sizeof *vrule);
    if (!vrule) {
        free(tail);
        free(p);
        return gb_fail(b, KILN_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) vrule[i] = js_value_rule(j, p[i].schema, p[i].ptr);
    /* tails from the end */
    for (size_t i = n + 1; i-- > 0;) {
        for (int a = 0; a < nc; a++) {
            struct gx *body;
            if (i == n) { /* additional members: at least need more, at most room */
                long long need = pmin > a ? pmin - a : 0, room = pmax >= 0 ? pmax - a : -1;
                if (!extra)
                    body = need ? gx_none(b) : gx_empty(b);
                else if (room == 0)
                    body = gx_empty(b);
                else if (a) /* a comma before each */
                    body = gx_rep(b, gx_seq2(b, punct(b, ","), extra), (int)need, (int)room);
                else {
                    struct gx *more =
                        gx_rep(b, gx_seq2(b, punct(b, ","), extra), need ? (int)need - 1 : 0,
                               room > 0 ? (int)room - 1 : -1);
                    body = gx_seq2(b, extra, more);
                    if (!need) body = gx_opt(b, body);
                }
            } else if (json_is_false(p[i].schema) && !p[i].required) {
                /* never written (a key that leads nowhere would be a dead end) */
                body = gx_call(b, tail[(i + 1) * (size_t)nc + (size_t)a]);
            } else {
                int next = a + 1 < nc ? a + 1 : nc - 1;
                struct gx *m = gx_seq(b);
                if (a) m = gx_add(b, m, punct(b, ","));
                m = gx_add(b, m, kv(j, p[i].name, vrule[i]));
                m = gx_add(b, m, gx_call(b, tail[(i + 1) * (size_t)nc + (size_t)next]));
                if (pmax >= 0 && a >= pmax) m = gx_none(b); /* no room for one more */
                body = p[i].required
                           ? m
                           : gx_alt2(b, m, gx_call(b, tail[(i + 1) * (size_t)nc + (size_t)a]));
            }
            gb_set(b, tail[i * (size_t)nc + (size_t)a], body);
        }
    }
    struct gx *o = gx_seq(b);
    o = gx_add(b, o, gx_byte(b, '{'));
    o = gx_add(b, o, ws(b));
    o = gx_add(b, o, gx_call(b, tail[0]));
    o = gx_add(b, o, ws(b));
    o = gx_add(b, o, gx_byte(b, '}'));
    free(vrule);
    free(tail);
    free(p);
    return o;
}

/* ---- arrays ---- */

static struct gx *js_array(struct js *j, json_t *s, const char *ptr)
{
    struct gr_builder *b = j->b;
    json_t *items = json_object_get(s, "items"), *prefix = json_object_get(s, "prefixItems");
    json_t *addi = json_object_get(s, "additionalItems");
    json_t *mi = json_object_get(s, "minItems"), *ma = json_object_get(s, "maxItems");
    if ((mi && !json_is_integer(mi)) || (ma && !json_is_integer(ma)))
        return js_bad(j, ptr, "minItems/maxItems must be integers");
    long long mn = mi ? json_integer_value(mi) : 0, mx = ma ? json_integer_value(ma) : -1;
    if (mn < 0) mn = 0;
    if (mn > 1000 || mx > 1000)
        return js_fail(j, "unsupported (over 1000)", mn > 1000 ? "minItems" : "maxItems", ptr);
    json_t *rest = items;
    const char *restkw = "items";
    if (json_is_array(items)) { /* draft 4-7 tuple form */
        if (prefix) return js_bad(j, ptr, "items array and prefixItems together");
        prefix = items;
        rest = addi;
        restkw = "additionalItems";
    }
    if (prefix && !json_is_array(prefix)) return js_bad(j, ptr, "prefixItems must be an array");
    size_t k = json_array_size(prefix);
    char rptr[512];
    sub_ptr(rptr, sizeof rptr, ptr, restkw);
    int rrest = -1;
    if (!rest || !json_is_false(rest)) {
        if (rest)
            rrest = js_value_rule(j, rest, rptr);
        else {
            rrest = gb_rule(b, "%items");
            gb_set(b, rrest, gr_json_any_value(b));
        }
        if (rrest < 0) return NULL;
    } else if (mx < 0 || (size_t)mx > k)
        mx = (long long)k;
    if (mx >= 0 && mn > mx) return gx_none(b);
    /* position i from the end back */
    long long last = mx >= 0 ? mx : (long long)(k > (size_t)mn ? k : (size_t)mn);
    if (mx < 0 && last == 0) last = 1; /* the open tail follows a first element */
    struct gx *tail;                   /* after `last` elements */
    if (mx >= 0)
        tail = gx_empty(b);
    else
        tail = gx_rep(b, gx_seq2(b, punct(b, ","), gx_call(b, rrest)), 0, -1);
    for (long long i = last; i-- > 0;) {
        struct gx *el;
        if ((size_t)i < k) {
            char pp[512], ip[32];
            sub_ptr(pp, sizeof pp, ptr, json_is_array(items) ? "items" : "prefixItems");
            snprintf(ip, sizeof ip, "%lld", i);
            sub_ptr(pp, sizeof pp, pp, ip);
            el = js_value(j, json_array_get(prefix, (size_t)i), pp);
        } else
            el = gx_call(b, rrest);
        struct gx *m = gx_seq(b);
        if (i > 0) m = gx_add(b, m, punct(b, ","));
        m = gx_add(b, m, el);
        m = gx_add(b, m, tail);
        tail = i < mn ? m : gx_opt(b, m);
        if (b->failed) return NULL;
    }
    struct gx *a = gx_seq(b);
    a = gx_add(b, a, gx_byte(b, '['));
    a = gx_add(b, a, ws(b));
    a = gx_add(b, a, tail);
    a = gx_add(b, a, ws(b));
    return gx_add(b, a, gx_byte(b, ']'));
}

/* ---- schema dispatch ---- */

enum {
    T_NULL = 1,
    T_BOOL = 2,
    T_OBJ = 4,
    T_ARR = 8,
    T_STR = 16,
    T_NUM = 32,
    T_INT = 64,
    T_ALL = 127
};

static int type_bit(const char *t)
{
    static const char *names[] = {"null",   "boolean", "object", "array",
                                  "string", "number",  "integer"};
    for (int i = 0; i < 7; i++)
        if (!strcmp(t, names[i])) return 1 << i;
    return 0;
}

static const char *const annotations[] = {"title",
                                          "description",
                                          "examples",
                                          "example",
                                          "$schema",
                                          "$id",
                                          "id",
                                          "default",
                                          "$comment",
                                          "deprecated",
                                          "readOnly",
                                          "writeOnly",
                                          "contentMediaType",
                                          "contentEncoding",
                                          "$anchor",
                                          "discriminator",
                                          "xml",
                                          "externalDocs",
                                          "markdownDescription",
                                          "$defs",
                                          "definitions",
                                          "$vocabulary",
                                          "enumDescriptions",
                                          "markdownEnumDescriptions",
                                          "errorMessage",
                                          NULL};

static const char *const refused[] = {"propertyNames",
                                      "dependencies",
                                      "dependentRequired",
                                      "dependentSchemas",
                                      "if",
                                      "then",
                                      "else",
                                      "not",
                                      "contains",
                                      "minContains",
                                      "maxContains",
                                      "unevaluatedProperties",
                                      "unevaluatedItems",
                                      "$dynamicRef",
                                      "$recursiveRef",
                                      "contentSchema",
                                      NULL};

static bool in_list(const char *const *l, const char *k)
{
    for (; *l; l++)
        if (!strcmp(*l, k)) return true;
    return false;
}

/* The schema a local reference ("#", "#/a/b": a JSON pointer, ~0 ~1 and %XX decoded) points
 * at, or NULL */
static json_t *js_lookup(struct js *j, const char *ref)
{
    if (ref[0] != '#') return NULL;
    json_t *t = j->root;
    const char *p = ref + 1;
    char tok[512];
    while (*p && t) {
        if (*p != '/') return NULL;
        p++;
        size_t n = 0;
        while (*p && *p != '/' && n + 1 < sizeof tok) {
            if (p[0] == '~' && p[1] == '0')
                tok[n++] = '~', p += 2;
            else if (p[0] == '~' && p[1] == '1')
                tok[n++] = '/', p += 2;
            else if (p[0] == '%' && p[1] && p[2]) {
                char h[3] = {p[1], p[2], 0};
                tok[n++] = (char)strtol(h, NULL, 16);
                p += 3;
            } else
                tok[n++] = *p++;
        }
        tok[n] = 0;
        if (json_is_object(t))
            t = json_object_get(t, tok);
        else if (json_is_array(t)) {
            char *end;
            long idx = strtol(tok, &end, 10);
            t = *end || idx < 0 ? NULL : json_array_get(t, (size_t)idx);
        } else
            t = NULL;
    }
    return t;
}

static struct gx *js_ref_rule(struct js *j, const char *ref, const char *ptr)
{
    if (ref[0] != '#') return js_fail(j, "unsupported (not a local reference)", "$ref", ptr);
    for (int i = 0; i < j->nrefs; i++)
        if (!strcmp(j->refs[i].ptr, ref)) return gx_call(j->b, j->refs[i].rule);
    json_t *t = js_lookup(j, ref);
    if (!t) return js_bad(j, ptr, "$ref target not found");
    if (j->nrefs == j->capref) {
        int cap = j->capref ? j->capref * 2 : 16;
        struct js_ref *r = realloc(j->refs, (size_t)cap * sizeof *r);
        if (!r) return gb_fail(j->b, KILN_ERR_NOMEM, "out of memory");
        j->refs = r;
        j->capref = cap;
    }
    int rule = gb_rule(j->b, ref);
    char *copy = strdup(ref);
    if (!copy || rule < 0) {
        free(copy);
        return gb_fail(j->b, KILN_ERR_NOMEM, "out of memory");
    }
    j->refs[j->nrefs++] = (struct js_ref){copy, rule};
    gb_set(j->b, rule, js_value(j, t, ref + 1));
    return gx_call(j->b, rule);
}

/* Keywords without applicators (bsch: an object, or a boolean schema) merged into a, the
 * conjunction so far: properties in a's order then bsch's new ones, a name in both a merge of
 * the two (a's first), required likewise, bounds the tighter, additionalProperties both. */
static bool merge_into(struct js *j, json_t *a, json_t *bsch, const char *ptr)
{
    if (json_is_true(bsch)) return true;
    if (json_is_false(bsch)) {
        json_object_set_new(a, "enum", json_array());
        return true;
    }
    if (!json_is_object(bsch)) return js_bad(j, ptr, "allOf member is not a schema"), false;
    /* one member's additionalProperties applies to the keys its own patterns do not match: a
     * pattern of another member would widen it */
    json_t *pa = json_object_get(a, "patternProperties");
    json_t *pb = json_object_get(bsch, "patternProperties");
    json_t *aa = json_object_get(a, "additionalProperties");
    json_t *ab = json_object_get(bsch, "additionalProperties");
    if (((pb && aa && !json_is_true(aa)) || (pa && ab && !json_is_true(ab))) &&
        !json_equal(pa, pb)) {
        js_fail(j, "unsupported (allOf members with patterns and additionalProperties)",
                "patternProperties", ptr);
        return false;
    }
    const char *k;
    json_t *v;
    json_object_foreach(bsch, k, v)
    {
        if (in_list(annotations, k)) continue;
        json_t *old = json_object_get(a, k);
        if (!old) {
            json_object_set(a, k, v);
            continue;
        }
        if (json_equal(old, v)) continue;
        if (!strcmp(k, "properties") && json_is_object(old) && json_is_object(v)) {
            json_t *np = json_deep_copy(old);
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv)
            {
                json_t *o = json_object_get(np, pk);
                if (!o)
                    json_object_set(np, pk, pv);
                else if (json_is_false(pv) || json_is_true(o))
                    json_object_set(np, pk, pv);
                else if (!json_equal(o, pv) && !json_is_false(o) && !json_is_true(pv))
                    json_object_set_new(np, pk, json_pack("{s:[O,O]}", "allOf", o, pv));
            }
            json_object_set_new(a, k, np);
        } else if (!strcmp(k, "required") && json_is_array(old) && json_is_array(v)) {
            json_t *nr = json_copy(old);
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x)
            {
                bool have = false;
                size_t q;
                json_t *y;
                json_array_foreach(nr, q, y) if (json_equal(x, y)) have = true;
                if (!have) json_array_append(nr, x);
            }
            json_object_set_new(a, k, nr);
        } else if (!strcmp(k, "additionalProperties")) { /* both apply */
            if (json_is_false(v) || json_is_true(old))
                json_object_set(a, k, v);
            else if (!json_is_false(old) && !json_is_true(v))
                json_object_set_new(a, k, json_pack("{s:[O,O]}", "allOf", old, v));
        } else if (!strcmp(k, "type")) {
            int ta = 0, tb = 0;
            json_t *xs[2] = {old, v};
            int *ts[2] = {&ta, &tb};
            for (int q = 0; q < 2; q++) {
                if (json_is_string(xs[q]))
                    *ts[q] = type_bit(json_string_value(xs[q]));
                else {
                    size_t i;
                    json_t *x;
                    json_array_foreach(xs[q], i, x) if (json_is_string(x)) * ts[q] |=
                        type_bit(json_string_value(x));
                }
                if (*ts[q] & T_NUM) *ts[q] |= T_INT;
            }
            int t = ta & tb;
            json_t *arr = json_array();
            static const char *names[] = {"null",   "boolean", "object", "array",
                                          "string", "number",  "integer"};
            for (int q = 0; q < 7; q++)
                if (t & (1 << q) && !(q == 6 && (t & T_NUM)))
                    json_array_append_new(arr, json_string(names[q]));
            json_object_set_new(a, k, arr);
        } else if ((!strcmp(k, "minimum") || !strcmp(k, "minLength") || !strcmp(k, "minItems") ||
                    !strcmp(k, "minProperties")) &&
                   json_is_number(old) && json_is_number(v)) {
            if (json_number_value(v) > json_number_value(old)) json_object_set(a, k, v);
        } else if ((!strcmp(k, "maximum") || !strcmp(k, "maxLength") || !strcmp(k, "maxItems") ||
                    !strcmp(k, "maxProperties")) &&
                   json_is_number(old) && json_is_number(v)) {
            if (json_number_value(v) < json_number_value(old)) json_object_set(a, k, v);
        } else {
            js_fail(j, "unsupported (allOf members that cannot be merged)", k, ptr);
            return false;
        }
    }
    return true;
}

static bool type_ok(json_t *v, int types)
{
    if (json_is_null(v)) return types & T_NULL;
    if (json_is_boolean(v)) return types & T_BOOL;
    if (json_is_object(v)) return types & T_OBJ;
    if (json_is_array(v)) return types & T_ARR;
    if (json_is_string(v)) return types & T_STR;
    if (json_is_integer(v)) return types & (T_NUM | T_INT);
    if (json_is_real(v))
        return (types & T_NUM) || ((types & T_INT) && integral(json_real_value(v)));
    return false;
}

/* ---- keywords beside enum/const: checked on each value ---- */

/* the keywords of each kind of value that enum_keeps checks exactly (others of that kind are
 * refused when a value of that kind is listed: they would need the value validated) */
static const char *const str_checked[] = {"minLength", "maxLength", "pattern", "format", NULL};
static const char *const num_checked[] = {"minimum", "maximum", "exclusiveMinimum",
                                          "exclusiveMaximum", NULL};
static const char *const arr_kw[] = {"items",    "prefixItems", "additionalItems",
                                     "minItems", "maxItems",    NULL};
static const char *const obj_kw[] = {
    "properties",        "required", "additionalProperties", "minProperties", "maxProperties",
    "patternProperties", NULL};
static const char *const num_kw[] = {"multipleOf", NULL}; /* not checked on a listed number */

/* Whether keyword k beside enum/const can be checked exactly on each of vals: a keyword of one
 * kind of value constrains nothing of the others (JSON Schema: it applies to its kind only) */
static bool enum_checked(json_t *vals, const char *k)
{
    if (in_list(str_checked, k) || in_list(num_checked, k)) return true;
    size_t i;
    json_t *x;
    json_array_foreach(vals, i, x)
    {
        if (json_is_array(x) && in_list(arr_kw, k)) return false;
        if (json_is_object(x) && in_list(obj_kw, k)) return false;
        if (json_is_number(x) && in_list(num_kw, k)) return false;
    }
    return true;
}

static size_t utf8_count(const char *v, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)v[i] & 0xC0) != 0x80;
    return c;
}

/* Whether value x of an enum/const passes the string and number keywords beside it (those
 * enum_checked let through); false also when b failed (an unsupported pattern) */
static bool enum_keeps(struct js *j, json_t *s, json_t *x, const char *ptr)
{
    struct gr_builder *b = j->b;
    if (json_is_string(x)) {
        const char *v = json_string_value(x);
        size_t n = json_string_length(x), cp = utf8_count(v, n);
        json_t *mn = json_object_get(s, "minLength"), *mx = json_object_get(s, "maxLength");
        if (mn && (!json_is_integer(mn) || json_integer_value(mn) < 0)) {
            js_bad(j, ptr, "minLength must be a non-negative integer");
            return false;
        }
        if (mx && (!json_is_integer(mx) || json_integer_value(mx) < 0)) {
            js_bad(j, ptr, "maxLength must be a non-negative integer");
            return false;
        }
        if (mn && (long long)cp < json_integer_value(mn)) return false;
        if (mx && (long long)cp > json_integer_value(mx)) return false;
        char where[300];
        json_t *pat = json_object_get(s, "pattern"), *fmt = json_object_get(s, "format");
        if (pat) {
            if (!json_is_string(pat)) {
                js_bad(j, ptr, "pattern must be a string");
                return false;
            }
            snprintf(where, sizeof where, "pattern at %s", *ptr ? ptr : "/");
            if (gr_regex_test(b, json_string_value(pat), json_string_length(pat), true, v, n,
                              where) != 1)
                return false;
        }
        if (fmt && json_is_string(fmt) && in_list(standard_formats, json_string_value(fmt))) {
            const char *re = format_regex(json_string_value(fmt));
            if (!re) {
                gb_fail(b, KILN_ERR_UNSUPPORTED,
                        "unsupported JSON Schema keyword 'format' (value '%s') at %s",
                        json_string_value(fmt), *ptr ? ptr : "/");
                return false;
            }
            snprintf(where, sizeof where, "format at %s", *ptr ? ptr : "/");
            if (gr_regex_test(b, re, strlen(re), false, v, n, where) != 1) return false;
        }
    }
    if (json_is_number(x)) {
        double v = json_number_value(x);
        if (json_is_integer(x) && llabs(json_integer_value(x)) > (1LL << 53)) {
            js_fail(j, "unsupported (an integer past 2^53 beside bounds)", "enum", ptr);
            return false;
        }
        json_t *mi = json_object_get(s, "minimum"), *ma = json_object_get(s, "maximum");
        json_t *emi = json_object_get(s, "exclusiveMinimum"),
               *ema = json_object_get(s, "exclusiveMaximum");
        bool lox = json_is_true(emi), hix = json_is_true(ema); /* draft 4: booleans */
        if (mi && json_is_number(mi) &&
            (lox ? v <= json_number_value(mi) : v < json_number_value(mi)))
            return false;
        if (ma && json_is_number(ma) &&
            (hix ? v >= json_number_value(ma) : v > json_number_value(ma)))
            return false;
        if (emi && json_is_number(emi) && v <= json_number_value(emi)) return false;
        if (ema && json_is_number(ema) && v >= json_number_value(ema)) return false;
    }
    return !b->failed;
}

/* ---- oneOf: alternatives proved exclusive ----
 * oneOf compiles as anyOf, which is exact only when no instance matches two alternatives (and
 * the keywords beside the oneOf). That is proved pair by pair (excl), each pair by whichever
 * rule holds for it: no type in common; every value one lists (const/enum) rejected by the
 * other; type by type, objects where a property one requires can match neither both schemas
 * (a discriminator, or a name the other forbids: "x": false, additionalProperties false),
 * numbers with disjoint ranges, strings or arrays with disjoint lengths, arrays whose items
 * cannot match both; a member of an allOf (or a $ref beside other keywords) disjoint alone.
 * A rule that cannot decide says no, and the oneOf is refused: a wrong "disjoint" would accept
 * an instance matching two alternatives. Bounded (JS_MAX_EXCL_STEPS): past it, refused. */
#define JS_MAX_EXCL_STEPS 100000
#define JS_EXCL_DEPTH     8
#define JS_MAX_ALTS       64 /* anyOf alternatives once distributed (joins), or rewritten (oneOf) */
/* kinds of value, number and integer one */
static const int excl_kinds[] = {T_NULL, T_BOOL, T_OBJ, T_ARR, T_STR, T_NUM | T_INT};

/* s with a $ref that has only annotations beside it (or drafts 3-7) followed */
static json_t *excl_resolve(struct js *j, json_t *s)
{
    for (int hops = 0; hops < 32 && json_is_object(s); hops++) {
        json_t *r = json_object_get(s, "$ref");
        if (!json_is_string(r)) return s;
        const char *k;
        json_t *v;
        if (!j->ref_alone)
            json_object_foreach(s, k,
                                v) if (strcmp(k, "$ref") && !in_list(annotations, k)) return s;
        json_t *t = js_lookup(j, json_string_value(r));
        if (!t) return s;
        s = t;
    }
    return s;
}

/* the types s's instances can have, at most (T_ALL when unsure); number and integer together */
static int excl_types(struct js *j, json_t *s)
{
    s = excl_resolve(j, s);
    if (!json_is_object(s)) return json_is_false(s) ? 0 : T_ALL;
    json_t *t = json_object_get(s, "type");
    int ty = T_ALL;
    if (json_is_string(t))
        ty = type_bit(json_string_value(t));
    else if (json_is_array(t)) {
        ty = 0;
        size_t i;
        json_t *x;
        json_array_foreach(t, i, x) if (json_is_string(x)) ty |= type_bit(json_string_value(x));
    }
    if (ty & (T_NUM | T_INT)) ty |= T_NUM | T_INT; /* 1 is both a number and an integer */
    json_t *c = json_object_get(s, "const"), *e = json_object_get(s, "enum");
    if (c || json_is_array(e)) {
        int tv = 0;
        size_t i;
        json_t *x;
        if (c) e = json_pack("[O]", c);
        json_array_foreach(e, i, x) for (int q = 0; q < 7; q++) if (type_ok(x, 1 << q)) tv |= 1
                                                                                              << q;
        if (c) json_decref(e);
        ty &= tv;
    }
    if (json_is_true(json_object_get(s, "nullable"))) ty |= T_NULL;
    return ty;
}

/* JSON Schema's equality: numbers by value (1 and 1.0 are one number) */
static bool json_same(json_t *x, json_t *y)
{
    if (json_is_integer(x) && json_is_integer(y))
        return json_integer_value(x) == json_integer_value(y);
    if (json_is_number(x) && json_is_number(y)) return json_number_value(x) == json_number_value(y);
    size_t i;
    json_t *v;
    if (json_is_array(x) && json_is_array(y)) {
        if (json_array_size(x) != json_array_size(y)) return false;
        json_array_foreach(x, i, v) if (!json_same(v, json_array_get(y, i))) return false;
        return true;
    }
    if (json_is_object(x) && json_is_object(y)) {
        if (json_object_size(x) != json_object_size(y)) return false;
        const char *k;
        json_object_foreach(x, k, v)
        {
            json_t *w = json_object_get(y, k);
            if (!w || !json_same(v, w)) return false;
        }
        return true;
    }
    return json_equal(x, y);
}

/* the values s's instances are among (a new array), or NULL when s lists none */
static json_t *excl_values(struct js *j, json_t *s)
{
    s = excl_resolve(j, s);
    if (json_is_false(s)) return json_array();
    if (!json_is_object(s)) return NULL;
    json_t *c = json_object_get(s, "const"), *e = json_object_get(s, "enum");
    json_t *v = c ? json_pack("[O]", c) : json_is_array(e) ? json_copy(e) : NULL;
    if (v && json_is_true(json_object_get(s, "nullable"))) json_array_append_new(v, json_null());
    return v;
}

/* the schema s gives a property named k (true when s does not constrain it) */
static json_t *excl_prop(json_t *s, const char *k)
{
    json_t *p = json_object_get(json_object_get(s, "properties"), k);
    if (p) return p;
    if (json_object_get(s, "patternProperties")) return json_true();
    json_t *ap = json_object_get(s, "additionalProperties");
    return ap ? ap : json_true();
}

/* minimum/maximum and their exclusive forms (numbers, or draft 4's booleans) of s */
struct num_bounds {
    bool hlo, hhi, lox, hix;
    double lo, hi;
};
static struct num_bounds num_bounds(json_t *s)
{
    struct num_bounds r = {0};
    json_t *mi = json_object_get(s, "minimum"), *ma = json_object_get(s, "maximum");
    json_t *emi = json_object_get(s, "exclusiveMinimum"),
           *ema = json_object_get(s, "exclusiveMaximum");
    if (mi && json_is_number(mi)) r.hlo = true, r.lo = json_number_value(mi);
    if (ma && json_is_number(ma)) r.hhi = true, r.hi = json_number_value(ma);
    if (emi) {
        if (json_is_true(emi))
            r.lox = r.hlo;
        else if (json_is_number(emi)) {
            double e = json_number_value(emi);
            if (!r.hlo || e >= r.lo) r.lo = e, r.lox = true;
            r.hlo = true;
        }
    }
    if (ema) {
        if (json_is_true(ema))
            r.hix = r.hhi;
        else if (json_is_number(ema)) {
            double e = json_number_value(ema);
            if (!r.hhi || e <= r.hi) r.hi = e, r.hix = true;
            r.hhi = true;
        }
    }
    return r;
}

/* no number is both above a's lower bound and below b's upper one */
static bool below(struct num_bounds b, struct num_bounds a)
{
    return a.hlo && b.hhi && (b.hi < a.lo || (b.hi == a.lo && (b.hix || a.lox)));
}

/* a's [min, max] of kw_min/kw_max (minLength, minItems) disjoint from b's */
static bool counts_disjoint(json_t *a, json_t *b, const char *kw_min, const char *kw_max)
{
    for (int o = 0; o < 2; o++) {
        json_t *mx = json_object_get(o ? b : a, kw_max), *mn = json_object_get(o ? a : b, kw_min);
        if (json_is_number(mx) && json_is_number(mn) &&
            json_number_value(mx) < json_number_value(mn))
            return true;
    }
    return false;
}

static bool excl(struct js *j, json_t *a, json_t *b, int ctx, int depth);

/* s surely rejects the value v */
static bool excl_rejects(struct js *j, json_t *s, json_t *v, int depth)
{
    if (depth > JS_EXCL_DEPTH || ++j->excl_steps > JS_MAX_EXCL_STEPS) return false;
    s = excl_resolve(j, s);
    if (json_is_false(s)) return true;
    if (!json_is_object(s)) return false;
    if (!type_ok(v, excl_types(j, s))) return true;
    json_t *vals = excl_values(j, s), *x;
    size_t i;
    if (vals) {
        bool in = false;
        json_array_foreach(vals, i, x) in = in || json_same(v, x);
        json_decref(vals);
        if (!in) return true;
    }
    if (json_is_object(v)) {
        json_array_foreach(json_object_get(s, "required"), i,
                           x) if (json_is_string(x) &&
                                  !json_object_get(v, json_string_value(x))) return true;
        const char *k;
        json_object_foreach(v, k,
                            x) if (excl_rejects(j, excl_prop(s, k), x, depth + 1)) return true;
    }
    if (json_is_number(v)) {
        struct num_bounds r = num_bounds(s);
        double d = json_number_value(v);
        if ((r.hlo && (d < r.lo || (d == r.lo && r.lox))) ||
            (r.hhi && (d > r.hi || (d == r.hi && r.hix))))
            return true;
    }
    if (json_is_string(v)) {
        size_t n = 0; /* code points */
        for (const char *p = json_string_value(v); *p; p++) n += ((unsigned char)*p & 0xC0) != 0x80;
        json_t *mn = json_object_get(s, "minLength"), *mx = json_object_get(s, "maxLength");
        if ((json_is_number(mn) && n < json_number_value(mn)) ||
            (json_is_number(mx) && n > json_number_value(mx)))
            return true;
    }
    json_array_foreach(json_object_get(s, "allOf"), i,
                       x) if (excl_rejects(j, x, v, depth + 1)) return true;
    for (int q = 0; q < 2; q++) {
        json_t *any = json_object_get(s, q ? "oneOf" : "anyOf");
        bool all = json_array_size(any) > 0;
        json_array_foreach(any, i, x) all = all && excl_rejects(j, x, v, depth + 1);
        if (all) return true;
    }
    json_t *r = json_object_get(s, "$ref"),
           *t = json_is_string(r) ? js_lookup(j, json_string_value(r)) : NULL;
    return t && excl_rejects(j, t, v, depth + 1);
}

/* objects only: a property one requires that no value can give both */
static bool excl_objects(struct js *j, json_t *a, json_t *b, int depth)
{
    for (int o = 0; o < 2; o++) {
        json_t *x = o ? b : a, *y = o ? a : b, *n;
        size_t i;
        json_array_foreach(json_object_get(x, "required"), i,
                           n) if (json_is_string(n) && excl(j, excl_prop(x, json_string_value(n)),
                                                            excl_prop(y, json_string_value(n)),
                                                            T_ALL, depth + 1)) return true;
    }
    return false;
}

/* arrays only: lengths, or a first item (both at least one long) neither items schema shares */
static bool excl_arrays(struct js *j, json_t *a, json_t *b, int depth)
{
    if (counts_disjoint(a, b, "minItems", "maxItems")) return true;
    json_t *ia = json_object_get(a, "items"), *ib = json_object_get(b, "items");
    json_t *ma = json_object_get(a, "minItems"), *mb = json_object_get(b, "minItems");
    bool nonempty = (json_is_number(ma) && json_number_value(ma) >= 1) ||
                    (json_is_number(mb) && json_number_value(mb) >= 1);
    if (!nonempty || json_object_get(a, "prefixItems") || json_object_get(b, "prefixItems"))
        return false;
    return ia && ib && !json_is_array(ia) && !json_is_array(ib) &&
           excl(j, ia, ib, T_ALL, depth + 1);
}

/* no instance of a type in ctx matches both a and b */
static bool excl(struct js *j, json_t *a, json_t *b, int ctx, int depth)
{
    if (depth > JS_EXCL_DEPTH || ++j->excl_steps > JS_MAX_EXCL_STEPS) return false;
    a = excl_resolve(j, a);
    b = excl_resolve(j, b);
    int common = excl_types(j, a) & excl_types(j, b) & ctx;
    if (!common) return true;
    int nk = 0;
    for (int q = 0; q < 6; q++) nk += (common & excl_kinds[q]) != 0;
    if (nk > 1) { /* type by type, each by its own rule */
        for (int q = 0; q < 6; q++)
            if ((common & excl_kinds[q]) && !excl(j, a, b, excl_kinds[q], depth)) return false;
        return true;
    }
    for (int o = 0; o < 2; o++) {
        json_t *x = o ? b : a, *y = o ? a : b, *m;
        size_t i;
        json_t *vals = excl_values(j, x);
        if (vals) {
            bool all = true;
            json_array_foreach(vals, i, m) all =
                all && (!type_ok(m, common) || excl_rejects(j, y, m, depth + 1));
            json_decref(vals);
            if (all) return true;
        }
        if (!json_is_object(x)) continue;
        json_array_foreach(json_object_get(x, "allOf"), i,
                           m) if (excl(j, m, y, common, depth + 1)) return true;
        for (int q = 0; q < 2; q++) {
            json_t *any = json_object_get(x, q ? "oneOf" : "anyOf");
            bool all = json_array_size(any) > 0;
            json_array_foreach(any, i, m) all = all && excl(j, m, y, common, depth + 1);
            if (all) return true;
        }
        json_t *r = json_object_get(x, "$ref");
        json_t *t = json_is_string(r) ? js_lookup(j, json_string_value(r)) : NULL;
        if (t && excl(j, t, y, common, depth + 1)) return true;
    }
    if (!json_is_object(a) || !json_is_object(b)) return false;
    if (common & T_OBJ) return excl_objects(j, a, b, depth);
    if (common & T_ARR) return excl_arrays(j, a, b, depth);
    if (common & T_STR) return counts_disjoint(a, b, "minLength", "maxLength");
    if (common & T_NUM)
        return below(num_bounds(a), num_bounds(b)) || below(num_bounds(b), num_bounds(a));
    return false;
}

/* s accepts every value of kind (an excl_kinds entry): nothing it says (but except) constrains
 * one */
static bool excl_accepts_all(struct js *j, json_t *s, int kind, const char *except)
{
    static const char *const only[][12] = {
        {"properties", "required", "additionalProperties", "patternProperties", "minProperties",
         "maxProperties", "propertyNames", "dependencies", "dependentRequired", "dependentSchemas",
         NULL},
        {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems",
         "contains", "minContains", "maxContains", NULL},
        {"minLength", "maxLength", "pattern", "format", NULL},
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", NULL}};
    static const int only_kind[] = {T_OBJ, T_ARR, T_STR, T_NUM | T_INT};
    s = excl_resolve(j, s);
    if (json_is_true(s)) return true;
    if (!json_is_object(s)) return false;
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        if (in_list(annotations, k) || !strcmp(k, "nullable") || (except && !strcmp(k, except)))
            continue;
        if (!strcmp(k, "type")) {
            int ty = json_is_string(v) ? type_bit(json_string_value(v)) : 0;
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x) if (json_is_string(x)) ty |= type_bit(json_string_value(x));
            if (!(ty & (kind == (T_NUM | T_INT) ? T_NUM : kind))) return false;
            continue;
        }
        bool other = false;
        for (int q = 0; q < 4; q++) other = other || (only_kind[q] != kind && in_list(only[q], k));
        if (!other) return false;
    }
    return true;
}

/* the names s requires, when that is all it says of objects (else NULL) */
static json_t *excl_required_only(struct js *j, json_t *s)
{
    s = excl_resolve(j, s);
    json_t *req = json_is_object(s) ? json_object_get(s, "required") : NULL, *x;
    size_t i;
    if (!json_is_array(req)) return NULL;
    json_array_foreach(req, i, x) if (!json_is_string(x)) return NULL;
    return excl_accepts_all(j, s, T_OBJ, "required") ? req : NULL;
}

static bool names_have(json_t *names, json_t *name)
{
    size_t i;
    json_t *x;
    json_array_foreach(names, i, x) if (json_equal(x, name)) return true;
    return false;
}

static json_t *kinds_but(int drop);

/* oneOf members whose open pairs (open[a * n + c]: objects not proved exclusive) only say
 * which names they require, as anyOf members: member a with, for each open partner c, one
 * name c requires and a does not absent ("x": false), one alternative per choice (a choice
 * made for one partner serves the others it covers); a partner that requires nothing more
 * leaves a no object. NULL: over JS_MAX_ALTS alternatives. */
static json_t *oneof_required_rewrite(struct js *j, json_t *arr, const bool *open)
{
    size_t n = json_array_size(arr);
    json_t *out = json_array();
    for (size_t a = 0; a < n && out; a++) {
        json_t *m = json_array_get(arr, a), *ra = excl_required_only(j, m);
        json_t *subs = json_pack("[{}]"), *f, *name;
        bool none = false;
        for (size_t c = 0; c < n && !none && subs; c++) {
            if (c == a || !open[a * n + c]) continue;
            json_t *rc = excl_required_only(j, json_array_get(arr, c)), *next = json_array();
            size_t i, q;
            none = true;
            json_array_foreach(rc, q, name) none = none && names_have(ra, name);
            json_array_foreach(subs, i, f)
            {
                bool hit = false;
                json_array_foreach(rc, q, name) hit =
                    hit || json_object_get(f, json_string_value(name));
                if (hit) {
                    json_array_append(next, f);
                    continue;
                }
                json_array_foreach(rc, q, name) if (!names_have(ra, name))
                {
                    json_t *g = json_copy(f);
                    json_object_set_new(g, json_string_value(name), json_false());
                    json_array_append_new(next, g);
                }
            }
            json_decref(subs);
            subs = next;
            if (json_array_size(subs) + json_array_size(out) > JS_MAX_ALTS) {
                json_decref(subs);
                subs = NULL;
            }
        }
        if (!subs) {
            json_decref(out);
            return NULL;
        }
        size_t i;
        if (none)
            json_array_append_new(out, json_pack("{s:[O,o]}", "allOf", m, kinds_but(T_OBJ)));
        else
            json_array_foreach(subs, i, f) json_array_append_new(
                out, json_object_size(f) ? json_pack("{s:[O,{s:O}]}", "allOf", m, "properties", f)
                                         : json_incref(m));
        json_decref(subs);
    }
    return out;
}

/* objects only: a name the keywords beside the oneOf require (so it is there) that no value
 * can give under both x's and y's schemas for it */
static bool excl_present(struct js *j, json_t *x, json_t *y, json_t *parent)
{
    x = excl_resolve(j, x);
    y = excl_resolve(j, y);
    json_t *n;
    size_t i;
    if (!json_is_object(x) || !json_is_object(y) || !json_is_object(parent)) return false;
    json_array_foreach(json_object_get(parent, "required"), i,
                       n) if (json_is_string(n) &&
                              excl(j, excl_prop(x, json_string_value(n)),
                                   excl_prop(y, json_string_value(n)), T_ALL, 1)) return true;
    return false;
}

/* whether oneOf arr (in parent, whose other keywords hold too) compiles as anyOf: by kind of
 * value, every two members exclusive, or two members that accept every value of the kind (so
 * the oneOf accepts none of it: *drop, the kinds to keep out), or, for objects, members that
 * only list required names, rewritten to exclude each other (oneof_required_rewrite).
 * *members: the anyOf members (arr, or the rewrite, kept in j->keep). */
static bool oneof_disjoint(struct js *j, json_t *arr, json_t *parent, int *drop, json_t **members)
{
    int ctx = excl_types(j, parent);
    size_t n = json_array_size(arr);
    j->excl_steps = 0;
    *drop = 0;
    *members = arr;
    bool *open = NULL, ok = true;
    for (int q = 0; q < 6 && ok; q++) {
        int kind = excl_kinds[q];
        if (!(ctx & kind)) continue;
        size_t all = 0;
        for (size_t a = 0; a < n; a++)
            all += excl_accepts_all(j, json_array_get(arr, a), kind, NULL);
        if (all >= 2) {
            *drop |= kind;
            continue;
        }
        for (size_t a = 0; a < n && ok; a++)
            for (size_t c = a + 1; c < n && ok; c++) {
                json_t *x = json_array_get(arr, a), *y = json_array_get(arr, c);
                if (excl(j, x, y, kind, 0) || (kind == T_OBJ && excl_present(j, x, y, parent)))
                    continue;
                ok = kind == T_OBJ && excl_required_only(j, x) && excl_required_only(j, y) &&
                     (open || (open = calloc(n * n, sizeof *open)));
                if (ok) open[a * n + c] = open[c * n + a] = true;
            }
    }
    if (ok && open) {
        json_t *r = oneof_required_rewrite(j, arr, open);
        ok = r && !json_array_append_new(j->keep, r);
        if (ok) *members = r;
    }
    free(open);
    return ok;
}

/* {"type": the kinds of value but those in drop} */
static json_t *kinds_but(int drop)
{
    static const char *const names[] = {"null", "boolean", "object", "array", "string", "number"};
    json_t *t = json_array();
    for (int q = 0; q < 6; q++)
        if (!(drop & excl_kinds[q])) json_array_append_new(t, json_string(names[q]));
    return json_pack("{s:o}", "type", t);
}

/* ---- joins: $ref beside other keywords, allOf, anyOf/oneOf beside other keywords ----
 * A schema with applicators is flattened into alternatives, each the conjunction of keywords
 * without applicators that one object compiles, merged in the order the schema is written
 * (LLGuidance's documented "stable property order"): each applicator where it stands among
 * the keywords around it (a $ref or allOf member before the properties beside it brings its
 * properties first), a join's properties the left's then the right's new ones, anyOf/oneOf
 * distributed over what is around it (one alternative per member, merged in its place). What
 * JSON Schema's allOf asks beyond the merge: each object's additionalProperties also
 * constrains the names the other objects of the join list (join_finish). An alternative is
 * {"s": merged keywords, "ap": [[one object's properties, its additionalProperties], ...],
 *  "took": {anyOf array's address: the member taken}}. */
/* allOf members that each $ref the next twice double the work per level without adding an
 * alternative: the joins' work is bounded too (MaskBench's largest takes 2,548 steps) */
#define JS_MAX_JOIN_STEPS (GR_MAX_STATES / 5) /* 200,000; less in the fuzz build */

static bool join_add(struct js *j, json_t *alts, json_t *x, const char *ptr, int depth);

static bool join_chunk(struct js *j, json_t *alts, json_t *chunk, const char *ptr)
{
    j->join_steps += json_array_size(alts) * (json_is_object(chunk) ? json_object_size(chunk) : 1);
    if (j->join_steps > JS_MAX_JOIN_STEPS) {
        gb_fail(j->b, KILN_ERR_LIMIT, "constraint too large to compile (joins over %d steps)",
                JS_MAX_JOIN_STEPS);
        return false;
    }
    size_t i;
    json_t *a;
    json_array_foreach(alts, i,
                       a) if (!merge_into(j, json_object_get(a, "s"), chunk, ptr)) return false;
    return true;
}

/* x's anyOf/oneOf (kw, members arr) distributed: every alternative so far times every member */
static bool join_any(struct js *j, json_t *alts, json_t *x, const char *kw, json_t *arr,
                     const char *ptr, int depth)
{
    if (!json_is_array(arr) || !json_array_size(arr))
        return js_bad(j, ptr, "anyOf/oneOf must be a non-empty array"), false;
    int drop = 0;
    json_t *members = arr;
    if (!strcmp(kw, "oneOf") && !oneof_disjoint(j, arr, x, &drop, &members))
        return js_fail(j, "unsupported (alternatives that may overlap)", "oneOf", ptr), false;
    if (drop) { /* kinds of value two members accept whole: the oneOf accepts none */
        json_t *c = kinds_but(drop);
        bool ok = c && join_chunk(j, alts, c, ptr);
        json_decref(c);
        if (!ok) return false;
    }
    /* the same anyOf met twice in one alternative (two $refs to one schema) takes the member
     * it took the first time: x1 and x2 together is within x1 alone */
    char id[32];
    snprintf(id, sizeof id, "%p", (void *)arr);
    json_t *out = json_array();
    bool ok = out != NULL;
    size_t i, q;
    json_t *a, *m;
    json_array_foreach(alts, i, a) json_array_foreach(members, q, m)
    {
        json_t *took = json_object_get(json_object_get(a, "took"), id);
        if (took && json_integer_value(took) != (json_int_t)q) continue;
        json_t *one = json_array();
        if (ok) ok = one && !json_array_append_new(one, json_deep_copy(a));
        if (ok && !took)
            json_object_set_new(json_object_get(json_array_get(one, 0), "took"), id,
                                json_integer((json_int_t)q));
        if (ok) ok = join_add(j, one, m, ptr, depth + 1);
        if (ok) json_array_extend(out, one);
        json_decref(one);
        if (ok && json_array_size(out) > JS_MAX_ALTS) {
            js_fail(j, "unsupported (over 64 alternatives once distributed)", kw, ptr);
            ok = false;
        }
    }
    if (ok) {
        json_array_clear(alts);
        json_array_extend(alts, out);
    } else if (!j->b->failed)
        gb_fail(j->b, KILN_ERR_NOMEM, "out of memory");
    json_decref(out);
    return ok;
}

/* x merged into every alternative of alts, its keywords in the order written */
static bool join_add(struct js *j, json_t *alts, json_t *x, const char *ptr, int depth)
{
    if (depth > JS_MAX_DEPTH)
        return js_fail(j, "unsupported (references nested too deeply)", "$ref", ptr), false;
    if (++j->join_steps > JS_MAX_JOIN_STEPS) {
        gb_fail(j->b, KILN_ERR_LIMIT, "constraint too large to compile (joins over %d steps)",
                JS_MAX_JOIN_STEPS);
        return false;
    }
    if (!json_is_object(x)) return join_chunk(j, alts, x, ptr);
    bool ref_only = j->ref_alone && json_object_get(x, "$ref"); /* drafts 3-7: all that counts */
    json_t *chunk = json_object();
    bool ok = chunk != NULL;
    const char *k;
    json_t *v;
    json_object_foreach(x, k, v)
    {
        if (!ok) break;
        bool rf = !strcmp(k, "$ref"), all = !strcmp(k, "allOf");
        bool any = !strcmp(k, "anyOf") || !strcmp(k, "oneOf");
        if (ref_only && !rf) continue;
        if (!rf && !all && !any) {
            if (!in_list(annotations, k)) json_object_set(chunk, k, v);
            continue;
        }
        ok = join_chunk(j, alts, chunk, ptr); /* what is written before it */
        json_object_clear(chunk);
        if (!ok) break;
        if (rf) {
            const char *r = json_string_value(v);
            json_t *t = r ? js_lookup(j, r) : NULL;
            if (!t) {
                if (r && r[0] != '#')
                    js_fail(j, "unsupported (not a local reference)", "$ref", ptr);
                else
                    js_bad(j, ptr, r ? "$ref target not found" : "$ref must be a string");
                ok = false;
            } else
                ok = join_add(j, alts, t, ptr, depth + 1);
        } else if (all) {
            if (!json_is_array(v)) {
                js_bad(j, ptr, "allOf must be an array");
                ok = false;
            }
            size_t i;
            json_t *m;
            json_array_foreach(v, i, m) if (ok) ok = join_add(j, alts, m, ptr, depth + 1);
        } else
            ok = join_any(j, alts, x, k, v, ptr, depth);
    }
    if (ok) ok = join_chunk(j, alts, chunk, ptr);
    json_decref(chunk);
    json_t *ap = json_object_get(x, "additionalProperties");
    if (ok && ap && !ref_only && !json_is_true(ap)) {
        json_t *own = json_object_get(x, "properties"),
               *pats = json_object_get(x, "patternProperties");
        size_t i;
        json_t *a;
        json_array_foreach(alts, i, a) json_array_append_new(
            json_object_get(a, "ap"), json_pack("[O,O,O]", own ? own : json_null(), ap,
                                                json_is_object(pats) ? pats : json_null()));
    }
    return ok;
}

/* Each object's additionalProperties on the properties of the join its object does not list:
 * a name one of that object's patternProperties matches gets those patterns' schemas instead
 * (JSON Schema: additionalProperties is for the names neither listed nor matched). NULL when a
 * pattern is refused (j->b failed). */
static json_t *join_finish(struct js *j, json_t *a, const char *ptr)
{
    json_t *s = json_object_get(a, "s"), *props = json_object_get(s, "properties");
    json_t *aps = json_object_get(a, "ap");
    if (!json_is_object(props) || !json_array_size(aps)) return s;
    props = json_copy(props); /* its values may be the schema's own */
    json_object_set_new(s, "properties", props);
    size_t i;
    json_t *r;
    char where[300];
    snprintf(where, sizeof where, "patternProperties at %s", *ptr ? ptr : "/");
    json_array_foreach(aps, i, r)
    {
        json_t *own = json_array_get(r, 0), *ap = json_array_get(r, 1),
               *pats = json_array_get(r, 2);
        /* the member's patterns, each compiled once (at its first name) for all the names */
        size_t np = json_object_size(pats), c;
        struct gr_regex **re = calloc(np ? np : 1, sizeof *re);
        const char *pk, *k;
        json_t *pv, *v;
        bool ok = re != NULL;
        if (!ok) gb_fail(j->b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        json_object_foreach(props, k, v)
        {
            if (!ok) break;
            if (json_object_get(own, k)) continue;
            json_t *all = json_pack("[O]", v);
            c = 0;
            json_object_foreach(pats, pk, pv)
            {
                if (!re[c] && !(re[c] = gr_regex_compile(j->b, pk, strlen(pk), true, where))) {
                    ok = false;
                    break;
                }
                int m = gr_regex_match(j->b, re[c++], k, strlen(k));
                if (m < 0) {
                    ok = false;
                    break;
                }
                if (m) json_array_append(all, pv);
            }
            if (json_array_size(all) == 1) json_array_append(all, ap);
            if (ok)
                json_object_set_new(props, k, json_pack("{s:o}", "allOf", all));
            else
                json_decref(all);
        }
        for (size_t p = 0; re && p < np; p++) gr_regex_free(re[p]);
        free(re);
        if (!ok) return NULL;
    }
    return s;
}

static struct gx *js_value(struct js *j, json_t *s, const char *ptr)
{
    struct gr_builder *b = j->b;
    if (b->failed) return NULL;
    if (json_is_true(s)) return gr_json_any_value(b);
    if (json_is_false(s)) return gx_none(b);
    if (!json_is_object(s)) return js_bad(j, ptr, "a schema must be an object or a boolean");
    if (++j->depth > JS_MAX_DEPTH)
        return js_fail(j, "unsupported (nested too deeply)", "properties", ptr);
    struct gx *res = NULL;
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        if (in_list(refused, k)) {
            res = js_fail(j, "unsupported", k, ptr);
            goto out;
        }
        if (!strcmp(k, "uniqueItems") && json_is_true(v)) {
            res = js_fail(j, "unsupported", k, ptr);
            goto out;
        }
    }
    /* $ref alone; $ref with siblings, allOf, anyOf/oneOf with siblings: joined (join_add);
     * anyOf/oneOf alone: each alternative compiled as written */
    json_t *ref = json_object_get(s, "$ref"), *allof = json_object_get(s, "allOf");
    json_t *anyof = json_object_get(s, "anyOf"), *oneof = json_object_get(s, "oneOf");
    size_t constraining = 0;
    json_object_foreach(s, k, v) if (!in_list(annotations, k)) constraining++;
    if (ref && (constraining == 1 || j->ref_alone)) {
        if (!json_is_string(ref)) {
            res = js_bad(j, ptr, "$ref must be a string");
            goto out;
        }
        res = js_ref_rule(j, json_string_value(ref), ptr);
        goto out;
    }
    json_t *arr = anyof ? anyof : oneof;
    const char *kw = anyof ? "anyOf" : "oneOf";
    if (anyof && oneof) {
        res = js_fail(j, "unsupported (together with anyOf)", "oneOf", ptr);
        goto out;
    }
    if (ref || allof || (arr && constraining > 1)) {
        json_t *alts = json_pack("[{s:{},s:[],s:{}}]", "s", "ap", "took");
        if (!alts) {
            res = gb_fail(b, KILN_ERR_NOMEM, "out of memory");
            goto out;
        }
        json_array_append_new(j->keep, alts);
        if (!join_add(j, alts, s, ptr, 0)) goto out;
        if (json_array_size(alts) == 1) {
            json_t *one = join_finish(j, json_array_get(alts, 0), ptr);
            res = one ? js_value(j, one, ptr) : NULL;
            goto out;
        }
        struct gx *alt = gx_alt(b);
        size_t i;
        json_t *a;
        json_array_foreach(alts, i, a)
        {
            json_t *one = join_finish(j, a, ptr);
            gx_add(b, alt, one ? js_value(j, one, ptr) : NULL);
        }
        res = alt;
        goto out;
    }
    if (arr) {
        if (!json_is_array(arr) || !json_array_size(arr)) {
            res = js_bad(j, ptr, "anyOf/oneOf must be a non-empty array");
            goto out;
        }
        int drop = 0;
        json_t *members = arr;
        if (oneof && !oneof_disjoint(j, arr, s, &drop, &members)) {
            res = js_fail(j, "unsupported (alternatives that may overlap)", "oneOf", ptr);
            goto out;
        }
        if (drop || members != arr) { /* joined with the kinds of value left, or rewritten */
            json_t *c = kinds_but(drop);
            if (c) json_object_update_missing(c, s);
            if (c && members != arr) {
                json_object_del(c, "oneOf");
                json_object_set(c, "anyOf", members);
            }
            if (!c || json_array_append_new(j->keep, c)) {
                res = gb_fail(b, KILN_ERR_NOMEM, "out of memory");
                goto out;
            }
            res = js_value(j, c, ptr);
            goto out;
        }
        struct gx *alt = gx_alt(b);
        size_t i;
        json_t *x;
        json_array_foreach(arr, i, x)
        {
            char pp[512], ip[32];
            sub_ptr(pp, sizeof pp, ptr, kw);
            snprintf(ip, sizeof ip, "%zu", i);
            sub_ptr(pp, sizeof pp, pp, ip);
            gx_add(b, alt, js_value(j, x, pp));
        }
        res = alt;
        goto out;
    }
    /* types */
    json_t *type = json_object_get(s, "type");
    int types = 0;
    if (!type)
        types = T_ALL & ~T_INT;
    else if (json_is_string(type)) {
        types = type_bit(json_string_value(type));
        if (!types) {
            res = js_bad(j, ptr, "unknown type");
            goto out;
        }
    } else if (json_is_array(type)) {
        size_t i;
        json_t *x;
        json_array_foreach(type, i, x)
        {
            int t = json_is_string(x) ? type_bit(json_string_value(x)) : 0;
            if (!t) {
                res = js_bad(j, ptr, "unknown type");
                goto out;
            }
            types |= t;
        }
    } else {
        res = js_bad(j, ptr, "type must be a string or an array");
        goto out;
    }
    if (json_is_true(json_object_get(s, "nullable"))) types |= T_NULL;
    if ((types & T_NUM) && (types & T_INT)) types &= ~T_INT;
    json_t *en = json_object_get(s, "enum"), *cn = json_object_get(s, "const");
    if (en || cn) {
        json_t *vals = cn ? json_pack("[O]", cn) : json_incref(en);
        if (!json_is_array(vals)) {
            json_decref(vals);
            res = js_bad(j, ptr, "enum must be an array");
            goto out;
        }
        static const char *const allowed[] = {"type", "enum", "const", "nullable", NULL};
        json_object_foreach(s, k, v) if (!in_list(annotations, k) && !in_list(allowed, k) && !res)
        {
            static const char *const known[] = {"properties",
                                                "required",
                                                "additionalProperties",
                                                "patternProperties",
                                                "items",
                                                "prefixItems",
                                                "additionalItems",
                                                "minItems",
                                                "maxItems",
                                                "minLength",
                                                "maxLength",
                                                "pattern",
                                                "format",
                                                "minimum",
                                                "maximum",
                                                "exclusiveMinimum",
                                                "exclusiveMaximum",
                                                "multipleOf",
                                                "minProperties",
                                                "maxProperties",
                                                NULL};
            if (in_list(known, k) && !enum_checked(vals, k))
                res = js_fail(j, "unsupported (together with enum/const)", k, ptr);
        }
        if (res || b->failed) {
            json_decref(vals);
            res = NULL;
            goto out;
        }
        struct gx *alt = gx_alt(b);
        size_t i;
        json_t *x;
        json_array_foreach(vals, i, x) if (type_ok(x, types) && enum_keeps(j, s, x, ptr))
            gx_add(b, alt, js_literal(j, x));
        if (cn && json_is_true(json_object_get(s, "nullable")) && !json_is_null(cn))
            gx_add(b, alt, gx_str(b, "null"));
        json_decref(vals);
        res = alt;
        goto out;
    }
    struct gx *alt = gx_alt(b);
    if (types & T_NULL) gx_add(b, alt, gx_str(b, "null"));
    if (types & T_BOOL) gx_add(b, alt, gx_alt2(b, gx_str(b, "true"), gx_str(b, "false")));
    if (types & T_STR) gx_add(b, alt, js_string(j, s, ptr));
    if (types & (T_NUM | T_INT)) {
        struct num_bounds r = num_bounds(s);
        bool is_int = !(types & T_NUM);
        json_t *mult = json_object_get(s, "multipleOf");
        if (mult && !json_is_number(mult)) {
            res = js_bad(j, ptr, "multipleOf must be a number");
            goto out;
        }
        if (mult && (r.hlo || r.hhi)) {
            res = js_fail(j, "unsupported (with minimum/maximum)", "multipleOf", ptr);
            goto out;
        }
        if (mult)
            gx_add(b, alt, multiple_of(j, json_number_value(mult), is_int, ptr));
        else if (!r.hlo && !r.hhi)
            gx_add(b, alt, is_int ? json_int(b) : json_number(b));
        else
            gx_add(b, alt, bounded_number(j, r.hlo, r.lo, r.lox, r.hhi, r.hi, r.hix, is_int, ptr));
    }
    if (types & T_OBJ) gx_add(b, alt, js_object(j, s, ptr));
    if (types & T_ARR) gx_add(b, alt, js_array(j, s, ptr));
    res = alt;
out:
    j->depth--;
    return b->failed ? NULL : res;
}

struct gx *gr_json_schema_value(struct gr_builder *b, void *json_root)
{
    struct js j = {.b = b, .root = json_root, .keep = json_array()};
    const char *dialect = json_string_value(json_object_get(json_root, "$schema"));
    if (dialect)
        for (int d = 3; d <= 7; d++) {
            char name[16];
            snprintf(name, sizeof name, "draft-0%d/", d);
            if (strstr(dialect, name)) j.ref_alone = true;
        }
    struct gx *x = js_value(&j, json_root, "");
    for (int i = 0; i < j.nrefs; i++) free(j.refs[i].ptr);
    free(j.refs);
    for (size_t i = 0; i < j.capmemo; i++) free(j.memo[i].text);
    free(j.memo);
    json_decref(j.keep);
    return x;
}

struct gx *gr_json_schema(struct gr_builder *b, const char *text, size_t n)
{
    json_error_t je;
    json_t *root =
        json_loadb(text, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!root)
        return gb_fail(b, KILN_ERR_INVALID,
                       "JSON Schema is not valid JSON: %s (line %d, column %d)", je.text, je.line,
                       je.column);
    struct gx *x = top(b, gr_json_schema_value(b, root));
    json_decref(root);
    return x;
}

struct gx *gr_choice(struct gr_builder *b, const char *text, size_t n)
{
    json_error_t je;
    json_t *root = json_loadb(text, n, 0, &je);
    if (!root) return gb_fail(b, KILN_ERR_INVALID, "choice is not valid JSON: %s", je.text);
    if (!json_is_array(root) || json_array_size(root) == 0) {
        json_decref(root);
        return gb_fail(b, KILN_ERR_INVALID, "choice must be a non-empty JSON array of strings");
    }
    struct gx *alt = gx_alt(b);
    size_t i;
    json_t *x;
    json_array_foreach(root, i, x)
    {
        if (!json_is_string(x)) {
            json_decref(root);
            return gb_fail(b, KILN_ERR_INVALID, "choice[%zu] is not a string", i);
        }
        gx_add(b, alt, gx_lit(b, json_string_value(x), json_string_length(x)));
    }
    json_decref(root);
    return alt;
}
