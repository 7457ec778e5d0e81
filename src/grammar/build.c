/* Grammar builder: expression trees (gx) in an arena, code-point sets and their UTF-8 / JSON
 * string encodings, and the compilation of rules into byte NFAs with call edges (Thompson
 * construction, then epsilon elimination), with the left-recursion check. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

struct gr_block {
    struct gr_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void gb_init(struct gr_builder *b, struct kiln_error *err)
{
    memset(b, 0, sizeof *b);
    b->err = err;
    b->r_json_value = b->r_json_string = b->r_json_object = -1;
    b->r_esc = b->r_esc_hi = b->r_string_rest = b->r_utf8_hi = b->r_esc_key = -1;
    b->r_ws = b->r_key_tail = -1;
}

void gb_free(struct gr_builder *b)
{
    for (struct gr_block *k = b->blocks, *nx; k; k = nx) {
        nx = k->next;
        free(k);
    }
    free(b->body);
    free(b->name);
    memset(b, 0, sizeof *b);
}

struct gx *gb_fail(struct gr_builder *b, enum kiln_status code, const char *fmt, ...)
{
    if (!b->failed) {
        b->failed = true;
        if (b->err) {
            va_list ap;
            va_start(ap, fmt);
            b->err->code = code;
            vsnprintf(b->err->msg, sizeof b->err->msg, fmt, ap);
            va_end(ap);
        }
    }
    return NULL;
}

void *gb_alloc(struct gr_builder *b, size_t n)
{
    if (b->failed) return NULL;
    n = (n + 15) & ~(size_t)15;
    if (b->bytes + n > GR_MAX_BYTES)
        return gb_fail(b, KILN_ERR_LIMIT, "constraint too large to compile (over %zu MiB)",
                       GR_MAX_BYTES >> 20);
    struct gr_block *k = b->blocks;
    if (!k || k->cap - k->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        k = malloc(sizeof *k + cap);
        if (!k) return gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        k->used = 0;
        k->cap = cap;
        k->next = b->blocks;
        b->blocks = k;
    }
    void *p = k->data + k->used;
    k->used += n;
    b->bytes += n;
    memset(p, 0, n);
    return p;
}

char *gb_strdup(struct gr_builder *b, const char *s, size_t n)
{
    char *p = gb_alloc(b, n + 1);
    if (p) memcpy(p, s, n);
    return p;
}

int gb_rule(struct gr_builder *b, const char *name)
{
    if (b->failed) return -1;
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 16;
        struct gx **nb = realloc(b->body, (size_t)cap * sizeof *nb);
        if (nb) b->body = nb;
        char **nn = realloc(b->name, (size_t)cap * sizeof *nn);
        if (nn) b->name = nn;
        if (!nb || !nn) {
            gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
            return -1;
        }
        b->cap = cap;
    }
    b->body[b->n] = NULL;
    b->name[b->n] = gb_strdup(b, name, strlen(name));
    return b->n++;
}

void gb_set(struct gr_builder *b, int rule, struct gx *body)
{
    if (rule >= 0 && rule < b->n) b->body[rule] = body;
}

static struct gx *node(struct gr_builder *b, enum gx_op op)
{
    struct gx *x = gb_alloc(b, sizeof *x);
    if (x) x->op = op;
    return x;
}

struct gx *gx_none(struct gr_builder *b)
{
    return node(b, GX_NONE);
}
struct gx *gx_empty(struct gr_builder *b)
{
    return node(b, GX_EMPTY);
}

struct gx *gx_range(struct gr_builder *b, unsigned lo, unsigned hi)
{
    struct gx *x = node(b, GX_BYTES);
    if (!x) return NULL;
    for (unsigned c = lo; c <= hi && c < 256; c++) x->bits[c >> 5] |= 1u << (c & 31);
    return x;
}

struct gx *gx_byte(struct gr_builder *b, unsigned c)
{
    return gx_range(b, c, c);
}

struct gx *gx_seq(struct gr_builder *b)
{
    return node(b, GX_SEQ);
}
struct gx *gx_alt(struct gr_builder *b)
{
    return node(b, GX_ALT);
}

struct gx *gx_add(struct gr_builder *b, struct gx *p, struct gx *kid)
{
    if (!p || !kid) return NULL;
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 4;
        struct gx **k = gb_alloc(b, (size_t)cap * sizeof *k);
        if (!k) return NULL;
        if (p->n) memcpy(k, p->kid, (size_t)p->n * sizeof *k);
        p->kid = k;
        p->cap = cap;
    }
    p->kid[p->n++] = kid;
    return p;
}

struct gx *gx_lit(struct gr_builder *b, const char *s, size_t n)
{
    if (n == 0) return gx_empty(b);
    if (n == 1) return gx_byte(b, (unsigned char)s[0]);
    struct gx *q = gx_seq(b);
    for (size_t i = 0; i < n && q; i++) q = gx_add(b, q, gx_byte(b, (unsigned char)s[i]));
    return q;
}

struct gx *gx_str(struct gr_builder *b, const char *s)
{
    return gx_lit(b, s, strlen(s));
}

struct gx *gx_seq2(struct gr_builder *b, struct gx *x, struct gx *y)
{
    return gx_add(b, gx_add(b, gx_seq(b), x), y);
}

struct gx *gx_alt2(struct gr_builder *b, struct gx *x, struct gx *y)
{
    return gx_add(b, gx_add(b, gx_alt(b), x), y);
}

/* about how many automaton states x emits, counted up to cap */
static size_t gx_size(const struct gx *x, size_t cap)
{
    if (!x) return 0;
    switch (x->op) {
    case GX_SEQ:
    case GX_ALT: {
        size_t n = x->op == GX_ALT ? (size_t)x->n + 1 : 0;
        for (int i = 0; i < x->n && n < cap; i++) n += gx_size(x->kid[i], cap - n);
        return n;
    }
    case GX_REP: { /* min copies, then max - min optional ones or one loop */
        size_t k = gx_size(x->kid[0], cap);
        size_t times = (size_t)(x->max < 0 ? x->min + 1 : x->max > 0 ? x->max : 1);
        return k >= cap / times ? cap : k * times + 2;
    }
    case GX_GRAPH: { /* a byte set or a call is an edge (emit) */
        size_t n = (size_t)x->min + 1;
        for (int i = 0; i < x->n && n < cap; i++)
            if (x->kid[i]->op != GX_BYTES && x->kid[i]->op != GX_RULE)
                n += gx_size(x->kid[i], cap - n) + 1;
        return n;
    }
    case GX_DFA: {
        size_t n = (size_t)x->n + 1;
        for (int i = 0; i < x->n && n < cap; i++) n += gx_size(x->kid[i], cap - n);
        return n;
    }
    default:
        return 1;
    }
}

/* A repetition whose unrolled copies would emit more than this many states calls its body as
 * a rule (two states a copy): a string's maxLength, a regex's {n,m} over a large class. */
#define GR_REP_INLINE 4096
/* Counts over this many copies of a rule are counted in blocks of GR_REP_BLOCK copies (a block
 * is a rule), recursively: x{0,32767} is about a thousand states, not 65,534. */
#define GR_REP_BLOCK 64

static struct gx *rep_node(struct gr_builder *b, struct gx *x, int min, int max)
{
    struct gx *r = node(b, GX_REP);
    if (!r || !gx_add(b, r, x)) return NULL;
    r->min = min;
    r->max = max;
    return r;
}

/* the rule of exactly GR_REP_BLOCK copies of x (a call) */
static struct gx *rep_block(struct gr_builder *b, struct gx *x)
{
    int r = gb_rule(b, "%block");
    gb_set(b, r, rep_node(b, x, GR_REP_BLOCK, GR_REP_BLOCK));
    return gx_call(b, r);
}

/* x (a call) exactly n times, n > GR_REP_BLOCK: n / B blocks, then the rest */
static struct gx *rep_exactly(struct gr_builder *b, struct gx *x, int n)
{
    return gx_seq2(b, gx_rep(b, rep_block(b, x), n / GR_REP_BLOCK, n / GR_REP_BLOCK),
                   rep_node(b, x, n % GR_REP_BLOCK, n % GR_REP_BLOCK));
}

/* x (a call) 0 to n times, n > GR_REP_BLOCK: k = aB + c copies, either a < n / B whole blocks
 * and any c < B, or n / B blocks and c <= n % B (each count has one parse in each branch) */
static struct gx *rep_upto(struct gr_builder *b, struct gx *x, int n)
{
    int q = n / GR_REP_BLOCK, rest = n % GR_REP_BLOCK;
    struct gx *blk = rep_block(b, x);
    struct gx *fewer = gx_seq2(b, gx_rep(b, blk, 0, q - 1), rep_node(b, x, 0, GR_REP_BLOCK - 1));
    struct gx *all = gx_seq2(b, gx_rep(b, blk, q, q), rep_node(b, x, 0, rest));
    return gx_alt2(b, fewer, all);
}

/* Whether {min, max} is one of ?, * and +. */
static bool simple_quantifier(int min, int max)
{
    return (min == 0 || min == 1) && (max == 1 || max < 0) && !(min == 1 && max == 1);
}

struct gx *gx_rep(struct gr_builder *b, struct gx *x, int min, int max)
{
    if (!x) return NULL;
    if (max >= 0 && max < min) return gx_none(b);
    /* A ?, * or + of a ?, * or +: one quantifier of the same language ((R+)+ = R+, (R?)+ =
     * (R+)? = (R*)+ = R*, (R?)? = R?). Nested repetitions (a regex's "x+++++...") otherwise make
     * matcher configurations whose count grows with the depth: 30 levels cost ~40 ms a mask. */
    if (x->op == GX_REP && simple_quantifier(x->min, x->max) && simple_quantifier(min, max))
        return gx_rep(b, x->kid[0], x->min * min, x->max < 0 || max < 0 ? -1 : 1);
    size_t times = (size_t)(max < 0 ? min + 1 : max);
    if (times > 1 && x->op != GX_RULE && gx_size(x, GR_REP_INLINE) >= GR_REP_INLINE / times) {
        int r = gb_rule(b, "%repeated");
        gb_set(b, r, x);
        x = gx_call(b, r);
        if (!x) return NULL;
    }
    if (x->op == GX_RULE && (min > GR_REP_BLOCK || max > GR_REP_BLOCK)) {
        struct gx *head = min > GR_REP_BLOCK ? rep_exactly(b, x, min) : rep_node(b, x, min, min);
        struct gx *tail = max < 0                    ? rep_node(b, x, 0, -1)
                          : max - min > GR_REP_BLOCK ? rep_upto(b, x, max - min)
                                                     : rep_node(b, x, 0, max - min);
        return gx_seq2(b, head, tail);
    }
    return rep_node(b, x, min, max);
}

struct gx *gx_opt(struct gr_builder *b, struct gx *x)
{
    return gx_rep(b, x, 0, 1);
}

struct gx *gx_call(struct gr_builder *b, int rule)
{
    if (rule < 0) return NULL;
    struct gx *x = node(b, GX_RULE);
    if (x) x->rule = rule;
    return x;
}

struct gx *gx_graph(struct gr_builder *b, int nstates, int nedges, const int32_t *ends,
                    struct gx *const *label)
{
    struct gx *x = node(b, GX_GRAPH);
    if (!x) return NULL;
    x->min = nstates;
    x->n = x->cap = nedges;
    x->kid = gb_alloc(b, (size_t)nedges * sizeof *x->kid + 1);
    x->edge = gb_alloc(b, (size_t)nedges * 2 * sizeof *x->edge + 1);
    if (!x->kid || !x->edge) return NULL;
    for (int i = 0; i < nedges; i++) {
        if (!label[i]) return NULL;
        x->kid[i] = label[i];
    }
    memcpy(x->edge, ends, (size_t)nedges * 2 * sizeof *x->edge);
    return x;
}

/* ---- code-point sets ---- */

void cps_add(struct cp_set *s, uint32_t lo, uint32_t hi)
{
    if (lo > hi) return;
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 8;
        void *p = realloc(s->r, (size_t)cap * sizeof *s->r);
        if (!p) abort(); /* tiny; treated like any other allocation failure of libc */
        s->r = p;
        s->cap = cap;
    }
    s->r[s->n][0] = lo;
    s->r[s->n][1] = hi;
    s->n++;
}

static int cmp_range(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

void cps_norm(struct cp_set *s)
{
    if (s->n == 0) return;
    qsort(s->r, (size_t)s->n, sizeof *s->r, cmp_range);
    int k = 0;
    for (int i = 1; i < s->n; i++) {
        if (s->r[i][0] <= s->r[k][1] + 1) {
            if (s->r[i][1] > s->r[k][1]) s->r[k][1] = s->r[i][1];
        } else {
            k++;
            s->r[k][0] = s->r[i][0];
            s->r[k][1] = s->r[i][1];
        }
    }
    s->n = k + 1;
}

void cps_negate(struct cp_set *s)
{
    cps_norm(s);
    struct cp_set o = {0};
    uint32_t next = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->r[i][0] > next) cps_add(&o, next, s->r[i][0] - 1);
        next = s->r[i][1] + 1;
    }
    if (next <= 0x10FFFF) cps_add(&o, next, 0x10FFFF);
    free(s->r);
    *s = o;
}

void cps_free(struct cp_set *s)
{
    free(s->r);
    memset(s, 0, sizeof *s);
}

bool cps_has(const struct cp_set *s, uint32_t c)
{
    for (int i = 0; i < s->n; i++)
        if (c >= s->r[i][0] && c <= s->r[i][1]) return true;
    return false;
}

static int utf8_enc(uint32_t c, unsigned char *o)
{
    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xC0 | c >> 6);
        o[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | c >> 12);
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | c >> 18);
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* Adds to alt the UTF-8 sequences of [lo, hi] (no surrogates inside). */
static void utf8_range(struct gr_builder *b, struct gx *alt, uint32_t lo, uint32_t hi)
{
    static const uint32_t bounds[] = {0x7F, 0x7FF, 0xFFFF};
    for (int i = 0; i < 3; i++)
        if (lo <= bounds[i] && hi > bounds[i]) {
            utf8_range(b, alt, lo, bounds[i]);
            utf8_range(b, alt, bounds[i] + 1, hi);
            return;
        }
    unsigned char a[4], z[4];
    int n = utf8_enc(lo, a);
    utf8_enc(hi, z);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) {
                utf8_range(b, alt, lo, lo | m);
                utf8_range(b, alt, (lo | m) + 1, hi);
                return;
            }
            if ((hi & m) != m) {
                utf8_range(b, alt, lo, (hi & ~m) - 1);
                utf8_range(b, alt, hi & ~m, hi);
                return;
            }
        }
    }
    struct gx *q = gx_seq(b);
    for (int i = 0; i < n; i++) q = gx_add(b, q, gx_range(b, a[i], z[i]));
    gx_add(b, alt, q);
}

static void utf8_ranges_clip(struct gr_builder *b, struct gx *alt, uint32_t lo, uint32_t hi)
{
    if (hi > 0x10FFFF) hi = 0x10FFFF;
    if (lo > hi) return;
    if (lo < 0xD800 && hi >= 0xD800) {
        utf8_range(b, alt, lo, 0xD7FF);
        if (hi > 0xDFFF) utf8_range(b, alt, 0xE000, hi);
        return;
    }
    if (lo >= 0xD800 && lo <= 0xDFFF) {
        if (hi <= 0xDFFF) return;
        lo = 0xE000;
    }
    utf8_range(b, alt, lo, hi);
}

struct gx *gx_utf8(struct gr_builder *b, const struct cp_set *s)
{
    /* single bytes merged into one class so the NFA stays small */
    struct gx *alt = gx_alt(b);
    struct gx *ascii = NULL;
    for (int i = 0; i < s->n && alt; i++) {
        uint32_t lo = s->r[i][0], hi = s->r[i][1];
        if (lo < 0x80) {
            uint32_t h = hi < 0x7F ? hi : 0x7F;
            if (!ascii)
                ascii = gx_range(b, lo, h);
            else if (ascii)
                for (uint32_t c = lo; c <= h; c++) ascii->bits[c >> 5] |= 1u << (c & 31);
            lo = 0x80;
        }
        if (lo <= hi) utf8_ranges_clip(b, alt, lo, hi);
    }
    if (ascii) gx_add(b, alt, ascii);
    if (alt && alt->n == 1) return alt->kid[0];
    return alt;
}

/* Fixed-width hex numbers (case-insensitive digits) with values in [lo, hi]. */
static struct gx *hexdigit(struct gr_builder *b, unsigned lo, unsigned hi)
{
    struct gx *x = node(b, GX_BYTES);
    if (!x) return NULL;
    for (unsigned v = lo; v <= hi; v++) {
        unsigned c = v < 10 ? '0' + v : 'a' + v - 10;
        x->bits[c >> 5] |= 1u << (c & 31);
        if (v >= 10) {
            c = 'A' + v - 10;
            x->bits[c >> 5] |= 1u << (c & 31);
        }
    }
    return x;
}

static struct gx *hex_range(struct gr_builder *b, uint32_t lo, uint32_t hi, int d)
{
    if (d == 1) return hexdigit(b, lo, hi);
    uint32_t p = 1u << (4 * (d - 1));
    if (lo == 0 && hi == p * 16 - 1) return gx_rep(b, hexdigit(b, 0, 15), d, d);
    uint32_t lh = lo / p, hh = hi / p;
    if (lh == hh) return gx_seq2(b, hexdigit(b, lh, lh), hex_range(b, lo % p, hi % p, d - 1));
    struct gx *alt = gx_alt(b);
    gx_add(b, alt, gx_seq2(b, hexdigit(b, lh, lh), hex_range(b, lo % p, p - 1, d - 1)));
    if (hh - lh > 1)
        gx_add(b, alt, gx_seq2(b, hexdigit(b, lh + 1, hh - 1), hex_range(b, 0, p - 1, d - 1)));
    gx_add(b, alt, gx_seq2(b, hexdigit(b, hh, hh), hex_range(b, 0, hi % p, d - 1)));
    return alt;
}

/* "u" (after the backslash, bs: with it) and four hex digits in [lo, hi] */
static struct gx *u_escape(struct gr_builder *b, uint32_t lo, uint32_t hi, bool bs)
{
    return gx_seq2(b, gx_str(b, bs ? "\\u" : "u"), hex_range(b, lo, hi, 4));
}

/* What follows the backslash of the \uXXXX escapes (surrogate pairs above the BMP) of
 * [lo, hi], into alt */
static void json_u_range(struct gr_builder *b, struct gx *alt, uint32_t lo, uint32_t hi)
{
    if (lo <= 0xFFFF) {
        uint32_t h = hi < 0xFFFF ? hi : 0xFFFF;
        if (lo < 0xD800) gx_add(b, alt, u_escape(b, lo, h < 0xD7FF ? h : 0xD7FF, false));
        if (h > 0xDFFF) gx_add(b, alt, u_escape(b, lo > 0xE000 ? lo : 0xE000, h, false));
        lo = 0x10000;
    }
    if (lo > hi) return;
    uint32_t a = lo - 0x10000, z = hi - 0x10000;
    uint32_t ha = 0xD800 + (a >> 10), hz = 0xD800 + (z >> 10);
    uint32_t la = 0xDC00 + (a & 0x3FF), lz = 0xDC00 + (z & 0x3FF);
    if (ha == hz) {
        gx_add(b, alt, gx_seq2(b, u_escape(b, ha, ha, false), u_escape(b, la, lz, true)));
        return;
    }
    gx_add(b, alt, gx_seq2(b, u_escape(b, ha, ha, false), u_escape(b, la, 0xDFFF, true)));
    if (hz - ha > 1)
        gx_add(b, alt,
               gx_seq2(b, u_escape(b, ha + 1, hz - 1, false), u_escape(b, 0xDC00, 0xDFFF, true)));
    gx_add(b, alt, gx_seq2(b, u_escape(b, hz, hz, false), u_escape(b, 0xDC00, lz, true)));
}

/* whether s (normalized) holds every code point of [lo, hi], surrogates aside */
static bool cps_covers(const struct cp_set *s, uint32_t lo, uint32_t hi)
{
    uint32_t need = lo;
    for (int i = 0; i <= s->n; i++) {
        if (need >= 0xD800 && need <= 0xDFFF) need = 0xE000;
        if (need > hi) return true;
        if (i == s->n || s->r[i][0] > need) return false;
        if (s->r[i][1] >= need) need = s->r[i][1] + 1;
    }
    return false;
}

static struct gx *esc_tail(struct gr_builder *b, const struct cp_set *s);

/* the rule of what follows a backslash for every non-ASCII character ("u" and hex digits) */
static int esc_hi_rule(struct gr_builder *b)
{
    if (b->r_esc_hi < 0) {
        b->r_esc_hi = gb_rule(b, "%esc_hi");
        struct gx *alt = gx_alt(b);
        json_u_range(b, alt, 0x80, 0x10FFFF);
        gb_set(b, b->r_esc_hi, alt);
    }
    return b->r_esc_hi;
}

/* What may follow the backslash of an escaped character of s (normalized): the short escapes
 * and \uXXXX. The common sets (any character; any but a few ASCII ones) call shared rules, so
 * the escape automaton is built once per grammar, and only entered after a backslash. */
static struct gx *esc_tail(struct gr_builder *b, const struct cp_set *s)
{
    if (cps_covers(s, 0, 0x10FFFF) && !b->json_canon) {
        if (b->r_esc < 0) {
            b->r_esc = gb_rule(b, "%esc");
            struct cp_set ascii = {0};
            cps_add(&ascii, 0, 0x7F);
            struct gx *x = esc_tail(b, &ascii);
            cps_free(&ascii);
            gb_set(b, b->r_esc, gx_add(b, x, gx_call(b, esc_hi_rule(b))));
        }
        return gx_call(b, b->r_esc);
    }
    struct gx *alt = gx_alt(b);
    static const struct {
        uint32_t c;
        char esc;
    } shorts[] = {{'"', '"'}, {'\\', '\\'}, {'/', '/'}, {8, 'b'},
                  {12, 'f'},  {10, 'n'},    {13, 'r'},  {9, 't'}};
    for (size_t i = 0; i < sizeof shorts / sizeof shorts[0]; i++)
        if (cps_has(s, shorts[i].c) && !(b->json_canon && shorts[i].c == '/'))
            gx_add(b, alt, gx_byte(b, (unsigned char)shorts[i].esc));
    bool hi_all = cps_covers(s, 0x80, 0x10FFFF);
    for (int i = 0; i < s->n; i++) {
        uint32_t lo = s->r[i][0], hi = s->r[i][1];
        if (hi_all && hi > 0x7F) hi = 0x7F;
        if (b->json_canon && lo < 0x80 && hi >= 0x20) { /* no \u0020-\u007F: raw only */
            if (lo < 0x20) json_u_range(b, alt, lo, 0x1F);
            lo = 0x80;
        }
        if (lo <= hi) json_u_range(b, alt, lo, hi);
    }
    if (hi_all) gx_add(b, alt, gx_call(b, esc_hi_rule(b)));
    return alt;
}

struct gx *gx_json_chars_but(struct gr_builder *b, const uint32_t out[4])
{
    if (b->r_utf8_hi < 0) {
        struct cp_set hi = {0};
        cps_add(&hi, 0x80, 0x10FFFF);
        b->r_utf8_hi = gb_rule(b, "%utf8_hi");
        gb_set(b, b->r_utf8_hi, gx_utf8(b, &hi));
        cps_free(&hi);
        b->r_esc_key = gb_rule(b, "%esc_key");
        struct gx *alt = gx_alt(b);
        struct gx *sh = gx_byte(b, '"');
        if (sh)
            for (const char *c = "\\bfnrt"; *c; c++) sh->bits[*c >> 5] |= 1u << (*c & 31);
        gx_add(b, alt, sh);
        gx_add(b, alt,
               gx_seq2(b, gx_str(b, "u00"), gx_seq2(b, gx_range(b, '0', '1'), hexdigit(b, 0, 15))));
        gx_add(b, alt, gx_call(b, esc_hi_rule(b)));
        gb_set(b, b->r_esc_key, alt);
    }
    struct gx *alt = gx_alt(b), *ascii = gx_range(b, 0x20, 0x7F);
    if (!ascii) return NULL;
    for (int w = 0; w < 4; w++) ascii->bits[w] &= ~out[w];
    ascii->bits['"' >> 5] &= ~(1u << ('"' & 31));
    ascii->bits['\\' >> 5] &= ~(1u << ('\\' & 31));
    gx_add(b, alt, ascii);
    gx_add(b, alt, gx_call(b, b->r_utf8_hi));
    struct gx *esc = gx_call(b, b->r_esc_key);
    if (!(out['/' >> 5] >> ('/' & 31) & 1)) esc = gx_alt2(b, esc, gx_byte(b, '/'));
    return gx_add(b, alt, gx_seq2(b, gx_byte(b, '\\'), esc));
}

/* the characters of s that JSON takes unescaped (all but '"', '\\' and controls) */
static void json_plain(const struct cp_set *s, struct cp_set *plain)
{
    for (int i = 0; i < s->n; i++) {
        uint32_t lo = s->r[i][0] < 0x20 ? 0x20 : s->r[i][0], hi = s->r[i][1];
        for (uint32_t c = lo; c <= hi;) { /* cut out '"' and '\\' */
            uint32_t e = hi;
            if (c <= '"' && e >= '"') e = '"' > c ? '"' - 1 : c;
            if (c <= '\\' && e >= '\\' && c > '"') e = '\\' > c ? '\\' - 1 : c;
            if (c != '"' && c != '\\') cps_add(plain, c, e);
            c = e + 1;
            if (e == 0x10FFFF) break;
        }
    }
    cps_norm(plain);
}

/* The characters of s (normalized) as the inside of a JSON string: unescaped where JSON allows
 * (inline: the hot path of every mask inside a string), escaped (\" \\ \/ \b \f \n \r \t
 * \uXXXX) where it must or may. */
struct gx *gx_json_chars(struct gr_builder *b, const struct cp_set *s)
{
    struct gx *alt = gx_alt(b);
    struct cp_set plain = {0};
    json_plain(s, &plain);
    if (plain.n) gx_add(b, alt, gx_utf8(b, &plain));
    cps_free(&plain);
    struct gx *esc = esc_tail(b, s);
    if (esc && (esc->op != GX_ALT || esc->n)) gx_add(b, alt, gx_seq2(b, gx_byte(b, '\\'), esc));
    return alt;
}

int gx_json_char_parts(struct gr_builder *b, const struct cp_set *s, struct gx *part[3])
{
    int n = 0;
    struct cp_set p = {0}, lo = {0}, hi = {0};
    json_plain(s, &p);
    for (int i = 0; i < p.n; i++) {
        if (p.r[i][0] < 0x80) cps_add(&lo, p.r[i][0], p.r[i][1] < 0x7F ? p.r[i][1] : 0x7F);
        if (p.r[i][1] >= 0x80) cps_add(&hi, p.r[i][0] < 0x80 ? 0x80 : p.r[i][0], p.r[i][1]);
    }
    cps_norm(&lo);
    cps_norm(&hi);
    if (lo.n) {
        struct gx *x = gx_utf8(b, &lo);
        part[n++] = x && x->op == GX_ALT && x->n == 1 ? x->kid[0] : x;
    }
    if (hi.n) {
        int r = gb_rule(b, "%chars");
        gb_set(b, r, gx_utf8(b, &hi));
        part[n++] = gx_call(b, r);
    }
    cps_free(&p), cps_free(&lo), cps_free(&hi);
    struct gx *e = esc_tail(b, s);
    if (e && (e->op != GX_ALT || e->n)) {
        int r = gb_rule(b, "%chars_esc");
        gb_set(b, r, gx_seq2(b, gx_byte(b, '\\'), e));
        part[n++] = gx_call(b, r);
    }
    return b->failed ? 0 : n;
}

/* ---- rules -> NFA ---- */

enum { TE_BYTE, TE_CALL, TE_EPS };
struct tedge {
    int32_t from, to, rule;
    uint8_t kind, lo, hi;
};

struct nfa {
    struct gr_builder *b;
    struct tedge *e;
    size_t ne, cap;
    int32_t nts;
};

static int32_t new_state(struct nfa *c)
{
    if (c->nts >= GR_MAX_STATES) {
        gb_fail(c->b, KILN_ERR_LIMIT, "constraint too large to compile (over %d states)",
                GR_MAX_STATES);
        return 0;
    }
    return c->nts++;
}

bool gr_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static void add_edge(struct nfa *c, int32_t from, int32_t to, int kind, int lo, int hi, int rule)
{
    if (c->b->failed) return;
    if (!gr_grow((void **)&c->e, &c->cap, c->ne + 1, sizeof *c->e)) {
        gb_fail(c->b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        return;
    }
    c->e[c->ne++] = (struct tedge){from, to, rule, (uint8_t)kind, (uint8_t)lo, (uint8_t)hi};
}

static void byte_edges(struct nfa *c, int32_t from, int32_t to, const struct gx *x)
{
    for (int lo = 0; lo < 256;) {
        if (!(x->bits[lo >> 5] >> (lo & 31) & 1)) {
            lo++;
            continue;
        }
        int hi = lo;
        while (hi + 1 < 256 && (x->bits[(hi + 1) >> 5] >> ((hi + 1) & 31) & 1)) hi++;
        add_edge(c, from, to, TE_BYTE, lo, hi, 0);
        lo = hi + 1;
    }
}

int32_t gx_thompson(const struct gx_nfa_ops *o, void *ctx, int32_t from, const struct gx *x)
{
    if (o->stopped(ctx) || !x) return from;
    switch (x->op) {
    case GX_NONE:
        return o->state(ctx);
    case GX_EMPTY:
        return from;
    case GX_BYTES: {
        int32_t t = o->state(ctx);
        o->edge(ctx, from, t, x);
        return t;
    }
    case GX_SEQ: {
        int32_t cur = from;
        for (int i = 0; i < x->n; i++) cur = gx_thompson(o, ctx, cur, x->kid[i]);
        return cur;
    }
    case GX_ALT: {
        int32_t t = o->state(ctx);
        for (int i = 0; i < x->n; i++) {
            int32_t s = o->state(ctx);
            o->edge(ctx, from, s, NULL);
            o->edge(ctx, gx_thompson(o, ctx, s, x->kid[i]), t, NULL);
        }
        return t;
    }
    case GX_REP: {
        int32_t cur = from;
        for (int i = 0; i < x->min && !o->stopped(ctx); i++)
            cur = gx_thompson(o, ctx, cur, x->kid[0]);
        if (x->max < 0) {
            int32_t s = o->state(ctx);
            o->edge(ctx, cur, s, NULL);
            o->edge(ctx, gx_thompson(o, ctx, s, x->kid[0]), s, NULL);
            return s;
        }
        int32_t end = o->state(ctx);
        o->edge(ctx, cur, end, NULL);
        for (int i = x->min; i < x->max && !o->stopped(ctx); i++) {
            int32_t s = o->state(ctx);
            o->edge(ctx, cur, s, NULL);
            cur = gx_thompson(o, ctx, s, x->kid[0]);
            o->edge(ctx, cur, end, NULL);
        }
        return end;
    }
    case GX_RULE:
    case GX_GRAPH:
    case GX_DFA:
        return o->other(ctx, from, x);
    }
    return from;
}

static bool nfa_stopped(void *ctx)
{
    return ((struct nfa *)ctx)->b->failed;
}

static int32_t nfa_state(void *ctx)
{
    return new_state(ctx);
}

static void nfa_edge(void *ctx, int32_t from, int32_t to, const struct gx *bytes)
{
    if (bytes)
        byte_edges(ctx, from, to, bytes);
    else
        add_edge(ctx, from, to, TE_EPS, 0, 0, 0);
}

static int32_t emit(struct nfa *c, int32_t from, const struct gx *x);

/* a call is an edge; GX_GRAPH's and GX_DFA's states go in as they are */
static int32_t nfa_other(void *ctx, int32_t from, const struct gx *x)
{
    struct nfa *c = ctx;
    switch (x->op) {
    case GX_RULE: {
        int32_t t = new_state(c);
        add_edge(c, from, t, TE_CALL, 0, 0, x->rule);
        return t;
    }
    case GX_GRAPH: { /* a byte set or a call goes straight between its states */
        int32_t *st = malloc(((size_t)x->min + 1) * sizeof *st);
        if (!st) {
            gb_fail(c->b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
            return from;
        }
        st[0] = new_state(c); /* min >= 0: the start (-O3 cannot see that the loop writes it) */
        for (int i = 1; i <= x->min; i++) st[i] = new_state(c);
        add_edge(c, from, st[0], TE_EPS, 0, 0, 0);
        for (int i = 0; i < x->n && !c->b->failed; i++) {
            int32_t a = st[x->edge[2 * i]], z = st[x->edge[2 * i + 1]];
            const struct gx *k = x->kid[i];
            if (k->op == GX_RULE)
                add_edge(c, a, z, TE_CALL, 0, 0, k->rule);
            else if (k->op == GX_BYTES)
                byte_edges(c, a, z, k);
            else {
                int32_t s = new_state(c);
                add_edge(c, a, s, TE_EPS, 0, 0, 0);
                add_edge(c, emit(c, s, k), z, TE_EPS, 0, 0, 0);
            }
        }
        int32_t end = st[x->min];
        free(st);
        return end;
    }
    case GX_DFA: { /* its states as they are, each exit on to one end */
        int32_t s0 = c->nts, t;
        for (int i = 0; i < x->n; i++) new_state(c);
        t = new_state(c);
        if (c->b->failed) return from;
        add_edge(c, from, s0, TE_EPS, 0, 0, 0);
        for (int k = 0; k < x->rule; k++) {
            const struct gx_dfa_edge *e = &x->dedge[k];
            add_edge(c, s0 + e->from, s0 + e->to, TE_BYTE, e->lo, e->hi, 0);
        }
        for (int i = 0; i < x->n; i++)
            if (x->kid[i]->op != GX_NONE)
                add_edge(c, emit(c, s0 + i, x->kid[i]), t, TE_EPS, 0, 0, 0);
        return t;
    }
    default:
        return from;
    }
}

static const struct gx_nfa_ops nfa_ops = {nfa_stopped, nfa_state, nfa_edge, nfa_other};

static int32_t emit(struct nfa *c, int32_t from, const struct gx *x)
{
    return gx_thompson(&nfa_ops, c, from, x);
}

static int cmp_edge(const void *a, const void *b)
{
    const struct gr_edge *x = a, *y = b;
    if (x->to != y->to) return x->to < y->to ? -1 : 1;
    return (int)x->lo - (int)y->lo;
}

void gr_grammar_free(struct kiln_grammar *g)
{
    if (!g) return;
    free(g->st);
    free(g->edges);
    free(g->calls);
    free(g->rule_start);
    if (g->rule_name)
        for (int i = 0; i < g->nrules; i++) free(g->rule_name[i]);
    free(g->rule_name);
    free(g);
}

/* Walks rule r from its start over the calls of nullable rules (what can be reached without
 * reading a byte): appends each rule called on the way to *row (once per walk, when row is not
 * NULL) and returns whether an accepting state is reached, i.e. whether r is nullable given the
 * nullable set so far. seen/rseen are stamps (epoch: this walk), so a walk costs what it visits. */
struct lr_walk {
    uint32_t *seen, *rseen, epoch;
    int32_t *stack;
    int32_t *adj; /* callee lists, appended */
    size_t nadj, capadj;
    bool oom;
    size_t work;
};

static bool left_walk(const struct kiln_grammar *g, int r, const bool *nullable, struct lr_walk *w,
                      bool row)
{
    uint32_t ep = ++w->epoch;
    int sp = 0;
    bool accept = false;
    w->stack[sp++] = g->rule_start[r];
    w->seen[g->rule_start[r]] = ep;
    while (sp) {
        const struct gr_state *st = &g->st[w->stack[--sp]];
        w->work += (size_t)st->nc + 1;
        for (uint32_t k = 0; k < st->nc; k++) {
            const struct gr_calle *ce = &g->calls[st->c0 + k];
            if (row && w->rseen[ce->rule] != ep) {
                w->rseen[ce->rule] = ep;
                if (w->nadj == w->capadj) {
                    size_t cap = w->capadj ? w->capadj * 2 : 256;
                    int32_t *p = realloc(w->adj, cap * sizeof *p);
                    if (!p) {
                        w->oom = true;
                        return false;
                    }
                    w->adj = p;
                    w->capadj = cap;
                }
                w->adj[w->nadj++] = ce->rule;
            }
            if (nullable[ce->rule] && w->seen[ce->to] != ep) {
                w->seen[ce->to] = ep;
                w->stack[sp++] = ce->to;
            }
        }
        accept |= st->accept;
    }
    return accept;
}

/* nullable rules, then the "calls at a nullable prefix" graph must be acyclic */
static enum kiln_status check_left_recursion(struct gr_builder *b, struct kiln_grammar *g)
{
    int nr = g->nrules;
    struct lr_walk w = {0};
    bool *nullable = calloc((size_t)nr, 1);
    w.seen = calloc((size_t)g->nstates, sizeof *w.seen);
    w.rseen = calloc((size_t)nr, sizeof *w.rseen);
    w.stack = malloc(((size_t)g->nstates + 1) * sizeof *w.stack);
    size_t *a0 = malloc(((size_t)nr + 1) * sizeof *a0); /* rule r's callees: adj[a0[r]..a0[r+1]) */
    int *indeg = calloc((size_t)nr, sizeof *indeg), *queue = malloc((size_t)nr * sizeof *queue);
    enum kiln_status rc = KILN_OK;
    if (!nullable || !w.seen || !w.rseen || !w.stack || !a0 || !indeg || !queue) {
        rc = KILN_ERR_NOMEM;
        goto out;
    }
    w.work = b->work;
    for (bool changed = true; changed;) {
        changed = false;
        if (w.work > GR_MAX_WORK) {
            rc = KILN_ERR_LIMIT;
            goto out;
        }
        /* callees usually come after their callers: from the last rule back, few passes */
        for (int r = nr; r-- > 0;)
            if (!nullable[r] && left_walk(g, r, nullable, &w, false)) {
                nullable[r] = true;
                changed = true;
            }
    }
    /* every call at a nullable prefix, now that nullable is final */
    for (int r = 0; r < nr && !w.oom; r++) {
        a0[r] = w.nadj;
        left_walk(g, r, nullable, &w, true);
    }
    a0[nr] = w.nadj;
    if (w.oom) {
        rc = KILN_ERR_NOMEM;
        goto out;
    }
    /* Kahn on the reversed graph: a rule is done once every rule it calls first is done */
    for (int r = 0; r < nr; r++) indeg[r] = (int)(a0[r + 1] - a0[r]);
    /* callers of q: reverse lists */
    size_t *c0 = calloc((size_t)nr + 1, sizeof *c0);
    int32_t *callers = malloc((w.nadj + 1) * sizeof *callers);
    if (!c0 || !callers) {
        free(c0), free(callers);
        rc = KILN_ERR_NOMEM;
        goto out;
    }
    for (size_t k = 0; k < w.nadj; k++) c0[w.adj[k] + 1]++;
    for (int r = 0; r < nr; r++) c0[r + 1] += c0[r];
    for (int r = 0; r < nr; r++)
        for (size_t k = a0[r]; k < a0[r + 1]; k++) callers[c0[w.adj[k]]++] = r;
    for (int r = nr; r > 0; r--) c0[r] = c0[r - 1];
    c0[0] = 0;
    int qh = 0, qt = 0;
    for (int r = 0; r < nr; r++)
        if (indeg[r] == 0) queue[qt++] = r;
    while (qh < qt) {
        int q = queue[qh++];
        for (size_t k = c0[q]; k < c0[q + 1]; k++)
            if (--indeg[callers[k]] == 0) queue[qt++] = callers[k];
    }
    free(c0), free(callers);
    for (int r = 0; r < nr; r++)
        if (indeg[r] > 0) {
            gb_fail(b, KILN_ERR_UNSUPPORTED, "grammar rule '%s' is left-recursive",
                    g->rule_name[r]);
            rc = KILN_ERR_UNSUPPORTED;
            break;
        }
out:
    if (rc == KILN_ERR_NOMEM) gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
    if (rc == KILN_ERR_LIMIT)
        gb_fail(b, KILN_ERR_LIMIT, "constraint too large to compile (over %zu steps)", GR_MAX_WORK);
    b->work = w.work;
    free(nullable), free(w.seen), free(w.rseen), free(w.stack), free(w.adj), free(a0), free(indeg);
    free(queue);
    return rc;
}

/* Whether rule r reaches an accepting state from its start over its byte edges and the calls of
 * rules already known to produce a string (the stack and stamps of struct lr_walk). */
static bool produce_walk(const struct kiln_grammar *g, int r, const bool *produces,
                         struct lr_walk *w)
{
    uint32_t ep = ++w->epoch;
    int sp = 0;
    w->stack[sp++] = g->rule_start[r];
    w->seen[g->rule_start[r]] = ep;
    while (sp) {
        const struct gr_state *st = &g->st[w->stack[--sp]];
        if (st->accept) return true;
        w->work += (size_t)st->ne + st->nc + 1;
        for (uint32_t k = 0; k < st->ne; k++) {
            int32_t to = g->edges[st->e0 + k].to;
            if (w->seen[to] != ep) {
                w->seen[to] = ep;
                w->stack[sp++] = to;
            }
        }
        for (uint32_t k = 0; k < st->nc; k++) {
            const struct gr_calle *ce = &g->calls[st->c0 + k];
            if (produces[ce->rule] && w->seen[ce->to] != ep) {
                w->seen[ce->to] = ep;
                w->stack[sp++] = ce->to;
            }
        }
    }
    return false;
}

/* A grammar whose start produces no string at all (a schema whose keywords contradict each
 * other: {"const": 0, "exclusiveMinimum": 0}) is refused here, with a message that says so,
 * rather than by the first matcher. Fixpoint over the rules, as the nullable one. */
static enum kiln_status check_produces(struct gr_builder *b, struct kiln_grammar *g)
{
    int nr = g->nrules;
    struct lr_walk w = {0};
    bool *produces = calloc((size_t)nr, 1);
    w.seen = calloc((size_t)g->nstates, sizeof *w.seen);
    w.stack = malloc(((size_t)g->nstates + 1) * sizeof *w.stack);
    enum kiln_status rc = KILN_OK;
    if (!produces || !w.seen || !w.stack) {
        gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        rc = KILN_ERR_NOMEM;
        goto out;
    }
    w.work = b->work;
    for (bool changed = true; changed && !produces[g->root];) {
        changed = false;
        if (w.work > GR_MAX_WORK) {
            gb_fail(b, KILN_ERR_LIMIT, "constraint too large to compile (over %zu steps)",
                    GR_MAX_WORK);
            rc = KILN_ERR_LIMIT;
            goto out;
        }
        for (int r = nr; r-- > 0;)
            if (!produces[r] && produce_walk(g, r, produces, &w)) {
                produces[r] = true;
                changed = true;
            }
    }
    if (!produces[g->root]) {
        gb_fail(b, KILN_ERR_INVALID,
                "the constraint accepts no output at all (its conditions contradict each other)");
        rc = KILN_ERR_INVALID;
    }
    b->work = w.work;
out:
    free(produces), free(w.seen), free(w.stack);
    return rc;
}

static int cmp_edge_lo(const void *a, const void *b)
{
    const struct gr_edge *x = a, *y = b;
    if (x->lo != y->lo) return (int)x->lo - (int)y->lo;
    if (x->hi != y->hi) return (int)x->hi - (int)y->hi;
    return x->to < y->to ? -1 : x->to > y->to;
}

static uint64_t state_hash(const struct kiln_grammar *g, int32_t s)
{
    const struct gr_state *st = &g->st[s];
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)st->accept;
    for (uint32_t k = 0; k < st->ne; k++) {
        const struct gr_edge *e = &g->edges[st->e0 + k];
        h = (h ^ ((uint64_t)e->lo << 40 | (uint64_t)e->hi << 32 | (uint32_t)e->to)) *
            0x100000001b3ULL;
    }
    for (uint32_t k = 0; k < st->nc; k++) {
        const struct gr_calle *c = &g->calls[st->c0 + k];
        h = (h ^ ((uint64_t)(uint32_t)c->rule << 32 | (uint32_t)c->to)) * 0x100000001b3ULL;
    }
    return h ^ (uint64_t)st->ne << 48 ^ (uint64_t)st->nc << 56;
}

static bool state_eq(const struct kiln_grammar *g, int32_t a, int32_t b)
{
    const struct gr_state *x = &g->st[a], *y = &g->st[b];
    if (x->accept != y->accept || x->ne != y->ne || x->nc != y->nc) return false;
    for (uint32_t k = 0; k < x->ne; k++) {
        const struct gr_edge *p = &g->edges[x->e0 + k], *q = &g->edges[y->e0 + k];
        if (p->lo != q->lo || p->hi != q->hi || p->to != q->to) return false;
    }
    for (uint32_t k = 0; k < x->nc; k++) {
        const struct gr_calle *p = &g->calls[x->c0 + k], *q = &g->calls[y->c0 + k];
        if (p->rule != q->rule || p->to != q->to) return false;
    }
    return true;
}

/* Sorts a state's byte edges (lo, hi, to) and drops duplicates: the canonical form. */
static void canon_edges(struct kiln_grammar *g, int32_t s)
{
    struct gr_state *st = &g->st[s];
    if (st->ne < 2) return;
    bool sorted = true;
    for (uint32_t k = 1; k < st->ne && sorted; k++)
        sorted = cmp_edge_lo(&g->edges[st->e0 + k - 1], &g->edges[st->e0 + k]) < 0;
    if (sorted) return;
    qsort(g->edges + st->e0, st->ne, sizeof *g->edges, cmp_edge_lo);
    uint32_t w = 0;
    for (uint32_t k = 0; k < st->ne; k++) {
        struct gr_edge e = g->edges[st->e0 + k];
        if (w > 0) {
            struct gr_edge *p = &g->edges[st->e0 + w - 1];
            if (p->lo == e.lo && p->hi == e.hi && p->to == e.to) continue;
        }
        g->edges[st->e0 + w++] = e;
    }
    st->ne = (uint16_t)w;
}

/* Merges states with the same edges, calls and acceptance (e.g. the ends of the UTF-8
 * alternatives of a character class inside a loop) up to the fixpoint: equal states give
 * equal matcher configurations, so loops come back to the very same configuration. A
 * worklist: when a state merges, only its predecessors (their targets rewritten) are looked
 * at again, each taken out of the table of canonical states first. */
static bool merge_states(struct kiln_grammar *g)
{
    int32_t n = g->nstates;
    if (n == 0) return true;
    size_t npe = 0;
    for (int32_t s = 0; s < n; s++) npe += (size_t)g->st[s].ne + g->st[s].nc;
    uint32_t cap = 1;
    while (cap < (uint32_t)n * 4u) cap <<= 1;
    int32_t *rep = malloc((size_t)n * sizeof *rep);
    int32_t *phead = malloc((size_t)n * sizeof *phead), *ptail = malloc((size_t)n * sizeof *ptail);
    int32_t *pfrom = malloc((npe + 1) * sizeof *pfrom), *pnext = malloc((npe + 1) * sizeof *pnext);
    int32_t *work = malloc((size_t)n * sizeof *work);
    uint32_t *slot = malloc((size_t)n * sizeof *slot); /* its slot in ht, UINT32_MAX: none */
    uint8_t *queued = malloc((size_t)n);
    int32_t *ht = malloc((size_t)cap * sizeof *ht); /* -1 empty, -2 removed */
    bool ok = rep && phead && ptail && pfrom && pnext && work && slot && queued && ht;
    if (!ok) goto out;
    memset(ht, 0xff, (size_t)cap * sizeof *ht);
    for (int32_t s = 0; s < n; s++) rep[s] = s, phead[s] = ptail[s] = -1, slot[s] = UINT32_MAX;
    /* predecessor lists (chains, so a merged state's list is appended to its representative's) */
    size_t np = 0;
    for (int32_t s = 0; s < n; s++) {
        const struct gr_state *st = &g->st[s];
        for (uint32_t k = 0; k < (uint32_t)st->ne + st->nc; k++) {
            int32_t t = k < st->ne ? g->edges[st->e0 + k].to : g->calls[st->c0 + k - st->ne].to;
            pfrom[np] = s;
            pnext[np] = -1;
            if (ptail[t] < 0)
                phead[t] = (int32_t)np;
            else
                pnext[ptail[t]] = (int32_t)np;
            ptail[t] = (int32_t)np++;
        }
    }
    int32_t nw = 0, used = 0;
    /* successors (mostly numbered after their predecessors) first: fewer states queued again */
    for (int32_t s = 0; s < n; s++) work[nw++] = s, queued[s] = 1;
    while (nw) {
        int32_t s = work[--nw];
        queued[s] = 0;
        if (rep[s] != s) continue;
        canon_edges(g, s);
        uint32_t h = (uint32_t)(state_hash(g, s) * 0x9e3779b97f4a7c15ULL >> 32) & (cap - 1);
        int32_t r = -1;
        uint32_t free_at = UINT32_MAX;
        while (ht[h] != -1) {
            if (ht[h] == -2) {
                if (free_at == UINT32_MAX) free_at = h;
            } else if (ht[h] != s && state_eq(g, ht[h], s)) {
                r = ht[h];
                break;
            }
            h = (h + 1) & (cap - 1);
        }
        if (r < 0) {
            slot[s] = free_at != UINT32_MAX ? free_at : h;
            if (free_at == UINT32_MAX) used++;
            ht[slot[s]] = s;
            if ((uint32_t)used * 2 > cap) { /* too many removed slots: rebuild */
                memset(ht, 0xff, (size_t)cap * sizeof *ht);
                used = 0;
                for (int32_t q = 0; q < n; q++) {
                    if (slot[q] == UINT32_MAX) continue;
                    uint32_t hq =
                        (uint32_t)(state_hash(g, q) * 0x9e3779b97f4a7c15ULL >> 32) & (cap - 1);
                    while (ht[hq] != -1) hq = (hq + 1) & (cap - 1);
                    ht[hq] = q;
                    slot[q] = hq;
                    used++;
                }
            }
            continue;
        }
        /* s merges into r: its predecessors point to r now and are looked at again */
        rep[s] = r;
        for (int32_t pe = phead[s]; pe >= 0; pe = pnext[pe]) {
            int32_t p = pfrom[pe];
            if (rep[p] != p) continue;
            struct gr_state *st = &g->st[p];
            for (uint32_t k = 0; k < st->ne; k++)
                if (g->edges[st->e0 + k].to == s) g->edges[st->e0 + k].to = r;
            for (uint32_t k = 0; k < st->nc; k++)
                if (g->calls[st->c0 + k].to == s) g->calls[st->c0 + k].to = r;
            if (slot[p] != UINT32_MAX) {
                ht[slot[p]] = -2;
                slot[p] = UINT32_MAX;
            }
            if (!queued[p]) work[nw++] = p, queued[p] = 1;
        }
        if (phead[s] >= 0) {
            if (ptail[r] < 0)
                phead[r] = phead[s];
            else
                pnext[ptail[r]] = phead[s];
            ptail[r] = ptail[s];
        }
    }
    for (int32_t r = 0; r < g->nrules; r++) {
        int32_t x = g->rule_start[r];
        while (rep[x] != x) x = rep[x];
        g->rule_start[r] = x;
    }
out:
    free(rep), free(phead), free(ptail), free(pfrom), free(pnext), free(work), free(slot);
    free(queued), free(ht);
    return ok;
}

enum kiln_status gb_finish(struct gr_builder *b, struct gx *root, struct kiln_grammar **out)
{
    *out = NULL;
    int rroot = gb_rule(b, "root");
    gb_set(b, rroot, root);
    if (b->failed || !root) {
        if (!b->failed) gb_fail(b, KILN_ERR_INTERNAL, "constraint compiled to nothing");
        return b->err ? b->err->code : KILN_ERR_INVALID;
    }
    for (int r = 0; r < b->n; r++)
        if (!b->body[r])
            return gb_fail(b, KILN_ERR_INVALID, "grammar rule '%s' is used but not defined",
                           b->name[r]),
                   KILN_ERR_INVALID;
    struct nfa c = {.b = b};
    int nr = b->n;
    /* the budget, before anything is built */
    size_t est = (size_t)nr;
    for (int r = 0; r < nr && est <= GR_MAX_STATES; r++)
        est += gx_size(b->body[r], (size_t)GR_MAX_STATES + 1);
    if (est > GR_MAX_STATES)
        return gb_fail(b, KILN_ERR_LIMIT,
                       "constraint too large to compile (over %d automaton states)", GR_MAX_STATES),
               KILN_ERR_LIMIT;
    int32_t *start = malloc((size_t)nr * sizeof *start), *fin = malloc((size_t)nr * sizeof *fin);
    if (!start || !fin) {
        free(start), free(fin);
        return gb_fail(b, KILN_ERR_NOMEM, "out of memory"), KILN_ERR_NOMEM;
    }
    for (int r = 0; r < nr; r++) {
        start[r] = new_state(&c);
        fin[r] = emit(&c, start[r], b->body[r]);
    }
    struct kiln_grammar *g = NULL;
    int32_t *first = NULL, *newid = NULL, *order = NULL, *stk = NULL;
    uint32_t *stamp = NULL;
    uint8_t *isfin = NULL;
    struct gr_edge *eb = NULL;
    size_t neb = 0, eb_cap = 0;
    struct gr_calle *cb = NULL;
    size_t ncb = 0, cb_cap = 0;
    if (b->failed) goto done;
    int32_t n = c.nts;
    first = calloc((size_t)n + 1, sizeof *first);
    newid = malloc((size_t)n * sizeof *newid);
    order = malloc((size_t)n * sizeof *order);
    stk = malloc(((size_t)n + 1) * sizeof *stk);
    stamp = calloc((size_t)n, sizeof *stamp);
    isfin = calloc((size_t)n, 1);
    g = calloc(1, sizeof *g);
    if (!first || !newid || !order || !stk || !stamp || !isfin || !g) {
        gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        goto done;
    }
    /* edges grouped by source state: a stable counting sort */
    for (size_t i = 0; i < c.ne; i++) first[c.e[i].from + 1]++;
    for (int32_t s = 0; s < n; s++) first[s + 1] += first[s];
    {
        struct tedge *sorted = malloc((c.ne + 1) * sizeof *sorted);
        if (!sorted) {
            gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
            goto done;
        }
        for (size_t i = 0; i < c.ne; i++) sorted[first[c.e[i].from]++] = c.e[i];
        for (int32_t s = n; s > 0; s--) first[s] = first[s - 1];
        first[0] = 0;
        free(c.e);
        c.e = sorted;
    }
    for (int r = 0; r < nr; r++) isfin[fin[r]] = 1;
    /* keep: rule starts and targets of byte/call edges reachable from the root */
    for (int32_t s = 0; s < n; s++) newid[s] = -1;
    int32_t kept = 0, head = 0;
    for (int r = 0; r < nr; r++) {
        newid[start[r]] = kept;
        order[kept++] = start[r];
    }
    uint32_t epoch = 0;
    g->st = calloc((size_t)n, sizeof *g->st);
    if (!g->st) {
        gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        goto done;
    }
    while (head < kept) {
        int32_t s0 = order[head];
        int32_t me = head++;
        epoch++;
        int sp = 0;
        stk[sp++] = s0;
        stamp[s0] = epoch;
        size_t e_begin = neb, c_begin = ncb;
        bool accept = false;
        while (sp) {
            int32_t s = stk[--sp];
            if (isfin[s]) accept = true;
            b->work += (size_t)(first[s + 1] - first[s]) + 1;
            for (int32_t k = first[s]; k < first[s + 1]; k++) {
                const struct tedge *e = &c.e[k];
                if (e->kind == TE_EPS) {
                    if (stamp[e->to] != epoch) {
                        stamp[e->to] = epoch;
                        stk[sp++] = e->to;
                    }
                    continue;
                }
                if (newid[e->to] < 0) {
                    newid[e->to] = kept;
                    order[kept++] = e->to;
                }
                if (e->kind == TE_BYTE) {
                    if (neb == eb_cap) {
                        eb_cap = eb_cap ? eb_cap * 2 : 1024;
                        void *p = realloc(eb, eb_cap * sizeof *eb);
                        if (!p) goto oom;
                        eb = p;
                    }
                    eb[neb++] = (struct gr_edge){e->lo, e->hi, newid[e->to]};
                } else {
                    if (ncb == cb_cap) {
                        cb_cap = cb_cap ? cb_cap * 2 : 256;
                        void *p = realloc(cb, cb_cap * sizeof *cb);
                        if (!p) goto oom;
                        cb = p;
                    }
                    bool dup = false;
                    for (size_t q = c_begin; q < ncb; q++)
                        if (cb[q].rule == e->rule && cb[q].to == newid[e->to]) dup = true;
                    if (!dup) cb[ncb++] = (struct gr_calle){e->rule, newid[e->to]};
                }
            }
        }
        if (b->work > GR_MAX_WORK) {
            gb_fail(b, KILN_ERR_LIMIT, "constraint too large to compile (over %zu steps)",
                    GR_MAX_WORK);
            goto done;
        }
        /* merge byte edges to the same target */
        if (neb > e_begin) qsort(eb + e_begin, neb - e_begin, sizeof *eb, cmp_edge);
        size_t w = e_begin;
        for (size_t q = e_begin; q < neb; q++) {
            if (w > e_begin && eb[w - 1].to == eb[q].to && eb[q].lo <= eb[w - 1].hi + 1) {
                if (eb[q].hi > eb[w - 1].hi) eb[w - 1].hi = eb[q].hi;
            } else
                eb[w++] = eb[q];
        }
        neb = w;
        if (neb - e_begin > 65535 || ncb - c_begin > 65535) {
            gb_fail(b, KILN_ERR_LIMIT,
                    "constraint too large to compile (a state with over 65535 "
                    "edges)");
            goto done;
        }
        g->st[me] = (struct gr_state){(uint32_t)e_begin, (uint32_t)c_begin,
                                      (uint16_t)(neb - e_begin), (uint16_t)(ncb - c_begin), accept};
    }
    g->nstates = kept;
    g->edges = eb;
    g->calls = cb;
    eb = NULL;
    cb = NULL;
    g->nrules = nr;
    g->root = rroot;
    g->rule_start = malloc((size_t)nr * sizeof *g->rule_start);
    g->rule_name = calloc((size_t)nr, sizeof *g->rule_name);
    if (!g->rule_start || !g->rule_name) goto oom;
    for (int r = 0; r < nr; r++) {
        g->rule_start[r] = newid[start[r]];
        g->rule_name[r] = strdup(b->name[r] ? b->name[r] : "?");
        if (!g->rule_name[r]) goto oom;
    }
    atomic_init(&g->refs, 1);
    if (!merge_states(g)) goto oom;
    if (check_left_recursion(b, g) || check_produces(b, g)) goto done;
    *out = g;
    g = NULL;
    goto done;
oom:
    gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
done:
    gr_grammar_free(g);
    free(eb), free(cb), free(c.e), free(start), free(fin), free(first), free(newid), free(order);
    free(stk), free(stamp), free(isfin);
    if (b->failed) return b->err ? b->err->code : KILN_ERR_INVALID;
    return KILN_OK;
}
