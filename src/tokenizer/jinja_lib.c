/* Jinja built-ins: the filters, tests and global functions of jinja2 3.1 that chat templates
 * use, Python string/list/dict methods, and transformers' tojson (json.dumps with
 * ensure_ascii=False). Each follows the Python definition, including its corner cases (sort and
 * unique ignore case, round is half-to-even, title splits on spaces and brackets). */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja_impl.h"

/* ---- name tables ---- */

enum filter_id {
    F_ABS,
    F_ATTR,
    F_CAPITALIZE,
    F_CENTER,
    F_COUNT,
    F_D,
    F_DEFAULT,
    F_DICTSORT,
    F_E,
    F_ESCAPE,
    F_FIRST,
    F_FLOAT,
    F_FORCEESCAPE,
    F_FORMAT,
    F_INDENT,
    F_INT,
    F_ITEMS,
    F_JOIN,
    F_LAST,
    F_LENGTH,
    F_LIST,
    F_LOWER,
    F_MAP,
    F_MAX,
    F_MIN,
    F_REJECT,
    F_REJECTATTR,
    F_REPLACE,
    F_REVERSE,
    F_ROUND,
    F_SAFE,
    F_SELECT,
    F_SELECTATTR,
    F_SORT,
    F_STRING,
    F_SUM,
    F_TITLE,
    F_TOJSON,
    F_TRIM,
    F_TRUNCATE,
    F_UNIQUE,
    F_UPPER,
    F_WORDCOUNT,
    F_COUNT_,
};
static const char *const filter_names[] = {
    "abs",        "attr",   "capitalize", "center",  "count",       "d",      "default", "dictsort",
    "e",          "escape", "first",      "float",   "forceescape", "format", "indent",  "int",
    "items",      "join",   "last",       "length",  "list",        "lower",  "map",     "max",
    "min",        "reject", "rejectattr", "replace", "reverse",     "round",  "safe",    "select",
    "selectattr", "sort",   "string",     "sum",     "title",       "tojson", "trim",    "truncate",
    "unique",     "upper",  "wordcount"};

enum test_id {
    T_BOOLEAN,
    T_CALLABLE,
    T_DEFINED,
    T_DIVISIBLEBY,
    T_EQ,
    T_EQUALTO,
    T_EQSYM,
    T_ESCAPED,
    T_EVEN,
    T_FALSE,
    T_FLOAT,
    T_GE,
    T_GESYM,
    T_GT,
    T_GTSYM,
    T_GREATERTHAN,
    T_IN,
    T_INTEGER,
    T_ITERABLE,
    T_LE,
    T_LESYM,
    T_LOWER,
    T_LT,
    T_LTSYM,
    T_LESSTHAN,
    T_MAPPING,
    T_NE,
    T_NESYM,
    T_NONE,
    T_NUMBER,
    T_ODD,
    T_SAMEAS,
    T_SEQUENCE,
    T_STRING,
    T_TRUE,
    T_UNDEFINED,
    T_UPPER,
    T_COUNT_,
};
static const char *const test_names[] = {
    "boolean",  "callable", "defined",  "divisibleby", "eq",   "equalto", "==",  "escaped",
    "even",     "false",    "float",    "ge",          ">=",   "gt",      ">",   "greaterthan",
    "in",       "integer",  "iterable", "le",          "<=",   "lower",   "lt",  "<",
    "lessthan", "mapping",  "ne",       "!=",          "none", "number",  "odd", "sameas",
    "sequence", "string",   "true",     "undefined",   "upper"};

enum global_id { G_RANGE = 1000, G_DICT, G_NAMESPACE, G_RAISE, G_STRFTIME, G_JOINER, G_END_ };
static const char *const global_names[] = {"range",           "dict",         "namespace",
                                           "raise_exception", "strftime_now", "joiner"};

enum method_id {
    M_STRIP = 2000,
    M_LSTRIP,
    M_RSTRIP,
    M_SPLIT,
    M_RSPLIT,
    M_STARTSWITH,
    M_ENDSWITH,
    M_UPPER,
    M_LOWER,
    M_TITLE,
    M_CAPITALIZE,
    M_REPLACE,
    M_FIND,
    M_RFIND,
    M_COUNT,
    M_JOIN,
    M_SPLITLINES,
    M_ISDIGIT,
    M_ISALPHA,
    M_ISALNUM,
    M_ISSPACE,
    M_ISUPPER,
    M_ISLOWER,
    M_FORMAT,
    M_INDEX,
    M_ITEMS,
    M_KEYS,
    M_VALUES,
    M_GET,
    M_CYCLE,
    M_UNSAFE, /* mutators the immutable sandbox refuses */
    M_JOINER_CALL,
};
struct method_name {
    const char *name;
    int id;
    uint8_t on; /* 1 str, 2 list, 4 dict, 8 loop */
};
static const struct method_name methods[] = {
    {"strip", M_STRIP, 1},
    {"lstrip", M_LSTRIP, 1},
    {"rstrip", M_RSTRIP, 1},
    {"split", M_SPLIT, 1},
    {"rsplit", M_RSPLIT, 1},
    {"startswith", M_STARTSWITH, 1},
    {"endswith", M_ENDSWITH, 1},
    {"upper", M_UPPER, 1},
    {"lower", M_LOWER, 1},
    {"title", M_TITLE, 1},
    {"capitalize", M_CAPITALIZE, 1},
    {"replace", M_REPLACE, 1},
    {"find", M_FIND, 1},
    {"rfind", M_RFIND, 1},
    {"count", M_COUNT, 3},
    {"join", M_JOIN, 1},
    {"splitlines", M_SPLITLINES, 1},
    {"isdigit", M_ISDIGIT, 1},
    {"isalpha", M_ISALPHA, 1},
    {"isalnum", M_ISALNUM, 1},
    {"isspace", M_ISSPACE, 1},
    {"isupper", M_ISUPPER, 1},
    {"islower", M_ISLOWER, 1},
    {"format", M_FORMAT, 1},
    {"index", M_INDEX, 3},
    {"items", M_ITEMS, 4},
    {"keys", M_KEYS, 4},
    {"values", M_VALUES, 4},
    {"get", M_GET, 4},
    {"cycle", M_CYCLE, 8},
    {"append", M_UNSAFE, 2},
    {"extend", M_UNSAFE, 2},
    {"pop", M_UNSAFE, 6},
    {"insert", M_UNSAFE, 2},
    {"remove", M_UNSAFE, 2},
    {"clear", M_UNSAFE, 6},
    {"update", M_UNSAFE, 4},
    {"setdefault", M_UNSAFE, 4},
    {"sort", M_UNSAFE, 2},
    {"reverse", M_UNSAFE, 2},
};

static int find_name(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(names[i], name)) return (int)i;
    return -1;
}

int jl_filter_id(const char *name)
{
    return find_name(filter_names, sizeof filter_names / sizeof *filter_names, name);
}

int jl_test_id(const char *name)
{
    return find_name(test_names, sizeof test_names / sizeof *test_names, name);
}

int jl_global_id(const char *name)
{
    int i = find_name(global_names, sizeof global_names / sizeof *global_names, name);
    return i < 0 ? -1 : G_RANGE + i;
}

bool jl_is_known_method(const char *name)
{
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
        if (!strcmp(methods[i].name, name)) return true;
    return false;
}

struct jv jl_method(struct jctx *c, struct jv obj, const char *name, size_t n)
{
    uint8_t on = obj.kind == JV_STR    ? 1
                 : obj.kind == JV_LIST ? 2
                 : obj.kind == JV_DICT ? 4
                 : obj.kind == JV_LOOP ? 8
                                       : 0;
    if (!on) return jx_undef(NULL);
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        if (!(methods[i].on & on) || strlen(methods[i].name) != n ||
            memcmp(methods[i].name, name, n))
            continue;
        struct jfunc *f = ja_alloc(&c->arena, sizeof *f);
        struct jv *self = ja_alloc(&c->arena, sizeof *self);
        if (!f || !self) jx_fail(c, KILN_ERR_LIMIT, "chat template: out of memory");
        *self = obj;
        f->id = methods[i].id;
        f->self = self;
        f->name = methods[i].name;
        return (struct jv){.kind = JV_FUNC, .fn = f};
    }
    return jx_undef(NULL);
}

/* ---- argument helpers ---- */

struct args {
    struct jv *v;
    size_t n;
    const char **kwn;
    struct jv *kw;
    size_t nkw;
    const char *fname;
};

static bool arg(const struct args *a, size_t pos, const char *name, struct jv *out)
{
    if (pos < a->n) {
        *out = a->v[pos];
        return true;
    }
    for (size_t i = 0; i < a->nkw; i++)
        if (name && !strcmp(a->kwn[i], name)) {
            *out = a->kw[i];
            return true;
        }
    return false;
}

static struct jv arg_or(const struct args *a, size_t pos, const char *name, struct jv dflt)
{
    struct jv v;
    return arg(a, pos, name, &v) ? v : dflt;
}

static int64_t arg_int(struct jctx *c, const struct args *a, size_t pos, const char *name,
                       int64_t dflt)
{
    struct jv v;
    if (!arg(a, pos, name, &v) || v.kind == JV_NONE) return dflt;
    if (v.kind == JV_INT) return v.i;
    if (v.kind == JV_BOOL) return v.b;
    jx_fail(c, KILN_ERR_INVALID, "chat template: %s(): argument '%s' must be an integer", a->fname,
            name ? name : "?");
}

static bool arg_bool(const struct args *a, size_t pos, const char *name, bool dflt)
{
    struct jv v;
    return arg(a, pos, name, &v) ? jx_truthy(v) : dflt;
}

static const struct jstr *arg_str(struct jctx *c, const struct args *a, size_t pos,
                                  const char *name, const char *dflt)
{
    struct jv v;
    if (!arg(a, pos, name, &v) || v.kind == JV_NONE) return dflt ? jx_cstr(c, dflt).s : NULL;
    if (v.kind != JV_STR)
        jx_fail(c, KILN_ERR_INVALID, "chat template: %s(): argument '%s' must be a string, not %s",
                a->fname, name ? name : "?", jx_kind_name(v));
    return v.s;
}

static struct jv need_str(struct jctx *c, struct jv v, const char *what)
{
    if (v.kind != JV_STR)
        jx_fail(c, KILN_ERR_INVALID, "chat template: %s expects a string, got %s", what,
                jx_kind_name(v));
    return v;
}

static struct jv from_buf(struct jctx *c, struct tk_buf *b)
{
    if (b->oom) jx_fail(c, KILN_ERR_NOMEM, "chat template: out of memory");
    struct jv s = jx_str(c, b->p ? b->p : "", b->n);
    jx_buf_free(c, b);
    return s;
}

/* ---- string helpers (code points, Python whitespace) ---- */

static uint32_t cp_at(const char *s, size_t n, size_t i, int *len)
{
    uint32_t cp;
    int k = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
    if (k <= 0) {
        cp = (unsigned char)s[i];
        k = 1;
    }
    *len = k;
    return cp;
}

static bool in_chars(uint32_t cp, const struct jstr *chars)
{
    if (!chars) return tk_is_py_space(cp);
    for (size_t i = 0; i < chars->n;) {
        int k;
        if (cp_at(chars->p, chars->n, i, &k) == cp) return true;
        i += (size_t)k;
    }
    return false;
}

static struct jv strip(struct jctx *c, struct jv s, const struct jstr *chars, bool left, bool right)
{
    size_t a = 0, b = s.s->n;
    while (left && a < b) {
        int k;
        if (!in_chars(cp_at(s.s->p, b, a, &k), chars)) break;
        a += (size_t)k;
    }
    while (right && b > a) {
        size_t k = b - 1;
        while (k > a && ((unsigned char)s.s->p[k] & 0xC0) == 0x80) k--;
        int l;
        if (!in_chars(cp_at(s.s->p, b, k, &l), chars)) break;
        b = k;
    }
    return jx_str(c, s.s->p + a, b - a);
}

/* simple case mapping: ASCII, Latin-1, Greek and Cyrillic (what role names and text use) */
static uint32_t to_upper(uint32_t cp)
{
    if (cp >= 'a' && cp <= 'z') return cp - 32;
    if ((cp >= 0xE0 && cp <= 0xFE && cp != 0xF7)) return cp - 32;
    if (cp >= 0x3B1 && cp <= 0x3C9 && cp != 0x3C2) return cp - 32;
    if (cp >= 0x430 && cp <= 0x44F) return cp - 32;
    if (cp >= 0x450 && cp <= 0x45F) return cp - 80;
    if (cp >= 0x100 && cp <= 0x17F && (cp & 1) && cp != 0x131 && cp != 0x138 && cp != 0x149 &&
        cp != 0x17F)
        return cp - 1;
    return cp;
}

static uint32_t to_lower(uint32_t cp)
{
    if (cp >= 'A' && cp <= 'Z') return cp + 32;
    if ((cp >= 0xC0 && cp <= 0xDE && cp != 0xD7)) return cp + 32;
    if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) return cp + 32;
    if (cp >= 0x410 && cp <= 0x42F) return cp + 32;
    if (cp >= 0x400 && cp <= 0x40F) return cp + 80;
    if (cp >= 0x100 && cp <= 0x17F && !(cp & 1) && cp != 0x130 && cp != 0x138) return cp + 1;
    return cp;
}

static bool is_cased_letter(uint32_t cp)
{
    return to_upper(cp) != cp || to_lower(cp) != cp;
}

static bool is_alpha(uint32_t cp)
{
    return (cp < 128 && isalpha((int)cp)) ||
           (cp >= 0xC0 && cp != 0xD7 && cp != 0xF7 && !tk_is_py_space(cp) && cp < 0x2000) ||
           (cp >= 0x3040 && cp < 0xA000) || (cp >= 0xAC00 && cp < 0xD7A4);
}

enum casing { UPPER, LOWER, CAPITALIZE, PY_TITLE, JINJA_TITLE };

static struct jv recase(struct jctx *c, struct jv s, enum casing how)
{
    struct tk_buf *b = jx_buf(c);
    bool prev_cased = false, word_start = true;
    for (size_t i = 0; i < s.s->n;) {
        int k;
        uint32_t cp = cp_at(s.s->p, s.s->n, i, &k);
        uint32_t o = cp;
        switch (how) {
        case UPPER:
            o = to_upper(cp);
            break;
        case LOWER:
            o = to_lower(cp);
            break;
        case CAPITALIZE:
            o = i == 0 ? to_upper(cp) : to_lower(cp);
            break;
        case PY_TITLE: /* str.title(): upper after an uncased character */
            o = prev_cased ? to_lower(cp) : to_upper(cp);
            prev_cased = is_cased_letter(cp);
            break;
        case JINJA_TITLE: /* jinja2: split on [-\s({[<]+, capitalize each piece */
            if (cp == '-' || tk_is_py_space(cp) || cp == '(' || cp == '{' || cp == '[' ||
                cp == '<') {
                word_start = true;
            } else {
                o = word_start ? to_upper(cp) : to_lower(cp);
                word_start = false;
            }
            break;
        }
        tk_buf_put_cp(b, o);
        i += (size_t)k;
    }
    return from_buf(c, b);
}

static struct jv split(struct jctx *c, struct jv s, const struct jstr *sep, int64_t maxsplit,
                       bool from_right)
{
    struct jv out = jx_list(c, 8, false);
    const char *p = s.s->p;
    size_t n = s.s->n;
    if (!sep) { /* runs of whitespace, no empty strings */
        struct jv parts = jx_list(c, 8, false);
        size_t i = 0;
        int64_t done = 0;
        if (!from_right) {
            while (i < n) {
                int k;
                while (i < n && tk_is_py_space(cp_at(p, n, i, &k))) i += (size_t)k;
                if (i >= n) break;
                if (maxsplit >= 0 && done == maxsplit) {
                    size_t e = n;
                    while (e > i) { /* rest, right-stripped */
                        size_t q = e - 1;
                        while (q > i && ((unsigned char)p[q] & 0xC0) == 0x80) q--;
                        if (!tk_is_py_space(cp_at(p, n, q, &k))) break;
                        e = q;
                    }
                    jx_list_push(c, parts, jx_str(c, p + i, e - i));
                    break;
                }
                size_t j = i;
                while (j < n && !tk_is_py_space(cp_at(p, n, j, &k))) j += (size_t)k;
                jx_list_push(c, parts, jx_str(c, p + i, j - i));
                done++;
                i = j;
            }
            return parts;
        }
        /* rsplit without sep: split everything, then rejoin the head if maxsplit */
        struct jv all = split(c, s, NULL, -1, false);
        if (maxsplit < 0 || (int64_t)all.l->n <= maxsplit + 1) return all;
        /* head = original text up to the start of the last maxsplit words */
        size_t keep = all.l->n - (size_t)maxsplit;
        const char *start_of_tail = all.l->v[keep].s->p;
        (void)start_of_tail;
        struct tk_buf *head = jx_buf(c);
        /* find where word #keep begins in s by scanning words again */
        size_t w = 0, pos = 0;
        int k;
        while (pos < n) {
            while (pos < n && tk_is_py_space(cp_at(p, n, pos, &k))) pos += (size_t)k;
            if (w == keep) break;
            while (pos < n && !tk_is_py_space(cp_at(p, n, pos, &k))) pos += (size_t)k;
            w++;
        }
        size_t e = pos;
        while (e > 0) {
            size_t q = e - 1;
            while (q > 0 && ((unsigned char)p[q] & 0xC0) == 0x80) q--;
            if (!tk_is_py_space(cp_at(p, n, q, &k))) break;
            e = q;
        }
        size_t b0 = 0;
        while (b0 < e && tk_is_py_space(cp_at(p, n, b0, &k))) b0 += (size_t)k;
        tk_buf_put(head, p + b0, e - b0);
        jx_list_push(c, out, from_buf(c, head));
        for (size_t i2 = keep; i2 < all.l->n; i2++) jx_list_push(c, out, all.l->v[i2]);
        return out;
    }
    if (sep->n == 0) jx_fail(c, KILN_ERR_INVALID, "chat template: split(): empty separator");
    if (!from_right) {
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            const char *f =
                maxsplit >= 0 && done == maxsplit ? NULL : memmem(p + i, n - i, sep->p, sep->n);
            if (!f) {
                jx_list_push(c, out, jx_str(c, p + i, n - i));
                return out;
            }
            jx_list_push(c, out, jx_str(c, p + i, (size_t)(f - (p + i))));
            i = (size_t)(f - p) + sep->n;
            done++;
        }
    }
    /* rsplit with a separator: collect from the right, then reverse */
    struct jv rev = jx_list(c, 8, false);
    size_t e = n;
    int64_t done = 0;
    for (;;) {
        const char *f = NULL;
        if (!(maxsplit >= 0 && done == maxsplit) && e >= sep->n)
            for (size_t q = e - sep->n + 1; q-- > 0;)
                if (!memcmp(p + q, sep->p, sep->n)) {
                    f = p + q;
                    break;
                }
        if (!f) {
            jx_list_push(c, rev, jx_str(c, p, e));
            break;
        }
        jx_list_push(c, rev, jx_str(c, f + sep->n, e - (size_t)(f - p) - sep->n));
        e = (size_t)(f - p);
        done++;
    }
    for (size_t i = rev.l->n; i-- > 0;) jx_list_push(c, out, rev.l->v[i]);
    return out;
}

static struct jv replace(struct jctx *c, struct jv s, const struct jstr *old,
                         const struct jstr *new_, int64_t count)
{
    struct tk_buf *b = jx_buf(c);
    size_t i = 0, n = s.s->n;
    int64_t done = 0;
    if (old->n == 0) { /* Python inserts between every character */
        for (size_t k = 0; k <= n;) {
            if (count < 0 || done < count) {
                tk_buf_put(b, new_->p, new_->n);
                done++;
            }
            if (k == n) break;
            size_t l = 1;
            while (k + l < n && ((unsigned char)s.s->p[k + l] & 0xC0) == 0x80) l++;
            tk_buf_put(b, s.s->p + k, l);
            k += l;
        }
        return from_buf(c, b);
    }
    while (i < n) {
        const char *f =
            count >= 0 && done >= count ? NULL : memmem(s.s->p + i, n - i, old->p, old->n);
        if (!f) break;
        tk_buf_put(b, s.s->p + i, (size_t)(f - (s.s->p + i)));
        tk_buf_put(b, new_->p, new_->n);
        i = (size_t)(f - s.s->p) + old->n;
        done++;
    }
    tk_buf_put(b, s.s->p + i, n - i);
    return from_buf(c, b);
}

static int64_t find(struct jv s, const struct jstr *sub, bool from_right)
{
    if (sub->n > s.s->n) return -1;
    const char *hit = NULL;
    if (!from_right)
        hit = memmem(s.s->p, s.s->n, sub->p, sub->n);
    else
        for (size_t q = s.s->n - sub->n + 1; q-- > 0;)
            if (!memcmp(s.s->p + q, sub->p, sub->n)) {
                hit = s.s->p + q;
                break;
            }
    if (!hit) return -1;
    return (int64_t)tk_utf8_count(s.s->p, (size_t)(hit - s.s->p)); /* code point index */
}

static bool affix(struct jctx *c, struct jv s, struct jv what, bool end)
{
    if (what.kind == JV_LIST) {
        for (size_t i = 0; i < what.l->n; i++)
            if (affix(c, s, what.l->v[i], end)) return true;
        return false;
    }
    need_str(c, what, end ? "endswith()" : "startswith()");
    if (what.s->n > s.s->n) return false;
    return !memcmp(s.s->p + (end ? s.s->n - what.s->n : 0), what.s->p, what.s->n);
}

/* ---- "%s" % args and str.format ---- */

static struct jv percent_format(struct jctx *c, struct jv fmt, struct jv *args, size_t nargs)
{
    struct tk_buf *b = jx_buf(c);
    size_t ai = 0;
    const char *p = fmt.s->p;
    size_t n = fmt.s->n;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '%') {
            tk_buf_putc(b, p[i]);
            continue;
        }
        if (++i >= n) break;
        char spec[32] = "%";
        size_t sl = 1;
        while (i < n && strchr("-+ #0123456789.", p[i]) && sl < 20) spec[sl++] = p[i++];
        if (i >= n) break;
        char conv = p[i];
        if (conv == '%') {
            tk_buf_putc(b, '%');
            continue;
        }
        if (ai >= nargs) {
            jx_buf_free(c, b);
            jx_fail(c, KILN_ERR_INVALID, "chat template: not enough arguments for format string");
        }
        struct jv v = args[ai++];
        if (conv == 's' || conv == 'r') {
            struct tk_buf *t = jx_buf(c);
            if (conv == 's')
                jx_to_str(c, t, v);
            else
                jx_repr(c, t, v);
            spec[sl++] = 's';
            spec[sl] = 0;
            tk_buf_printf(b, spec, t->p ? t->p : "");
            jx_buf_free(c, t);
        } else if (conv == 'd' || conv == 'i') {
            spec[sl++] = 'l';
            spec[sl++] = 'l';
            spec[sl++] = 'd';
            spec[sl] = 0;
            double f = v.kind == JV_FLOAT ? v.f : 0;
            long long x = v.kind == JV_FLOAT  ? (long long)f
                          : v.kind == JV_INT  ? v.i
                          : v.kind == JV_BOOL ? v.b
                                              : 0;
            tk_buf_printf(b, spec, x);
        } else if (strchr("feEgGxXo", conv)) {
            spec[sl++] = conv;
            spec[sl] = 0;
            if (conv == 'x' || conv == 'X' || conv == 'o') {
                spec[sl - 1] = 'l';
                spec[sl++] = 'l';
                spec[sl++] = conv;
                spec[sl] = 0;
                tk_buf_printf(b, spec, (long long)(v.kind == JV_INT ? v.i : 0));
            } else {
                tk_buf_printf(b, spec,
                              v.kind == JV_FLOAT ? v.f : (double)(v.kind == JV_INT ? v.i : 0));
            }
        } else {
            jx_buf_free(c, b);
            jx_fail(c, KILN_ERR_INVALID, "chat template: unsupported format character '%c'", conv);
        }
    }
    return from_buf(c, b);
}

static struct jv brace_format(struct jctx *c, struct jv fmt, const struct args *a)
{
    struct tk_buf *b = jx_buf(c);
    size_t auto_i = 0;
    const char *p = fmt.s->p;
    size_t n = fmt.s->n;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '{' && i + 1 < n && p[i + 1] == '{') {
            tk_buf_putc(b, '{');
            i++;
            continue;
        }
        if (p[i] == '}' && i + 1 < n && p[i + 1] == '}') {
            tk_buf_putc(b, '}');
            i++;
            continue;
        }
        if (p[i] != '{') {
            tk_buf_putc(b, p[i]);
            continue;
        }
        size_t j = i + 1;
        while (j < n && p[j] != '}') j++;
        if (j >= n) {
            jx_buf_free(c, b);
            jx_fail(c, KILN_ERR_INVALID, "chat template: format(): unmatched '{'");
        }
        struct jv v = jx_undef(NULL);
        bool found = false;
        if (j == i + 1)
            found = arg(a, auto_i++, NULL, &v);
        else if (isdigit((unsigned char)p[i + 1]))
            found = arg(a, (size_t)atoi(p + i + 1), NULL, &v);
        else {
            char key[128];
            size_t kl = j - i - 1 < sizeof key - 1 ? j - i - 1 : sizeof key - 1;
            memcpy(key, p + i + 1, kl);
            key[kl] = 0;
            found = arg(a, (size_t)-1, key, &v);
        }
        if (!found) {
            jx_buf_free(c, b);
            jx_fail(c, KILN_ERR_INVALID, "chat template: format(): missing argument");
        }
        jx_to_str(c, b, v);
        i = j;
    }
    return from_buf(c, b);
}

/* ---- tojson: Python json.dumps(ensure_ascii=False) ---- */

static void json_str(struct tk_buf *b, const char *s, size_t n, bool ascii)
{
    tk_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '"':
            tk_buf_puts(b, "\\\"");
            break;
        case '\\':
            tk_buf_puts(b, "\\\\");
            break;
        case '\n':
            tk_buf_puts(b, "\\n");
            break;
        case '\r':
            tk_buf_puts(b, "\\r");
            break;
        case '\t':
            tk_buf_puts(b, "\\t");
            break;
        case '\b':
            tk_buf_puts(b, "\\b");
            break;
        case '\f':
            tk_buf_puts(b, "\\f");
            break;
        default:
            if (ch < 0x20) {
                tk_buf_printf(b, "\\u%04x", ch);
            } else if (ch >= 0x80 && ascii) {
                int k;
                uint32_t cp = cp_at(s, n, i, &k);
                if (cp >= 0x10000) { /* UTF-16 surrogate pair, as Python writes it */
                    cp -= 0x10000;
                    tk_buf_printf(b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
                } else {
                    tk_buf_printf(b, "\\u%04x", cp);
                }
                i += (size_t)k - 1;
            } else {
                tk_buf_putc(b, (char)ch);
            }
        }
    }
    tk_buf_putc(b, '"');
}

static void newline_indent(struct tk_buf *b, int indent, int level)
{
    tk_buf_putc(b, '\n');
    for (int i = 0; i < indent * level; i++) tk_buf_putc(b, ' ');
}

void jl_tojson(struct jctx *c, struct tk_buf *b, struct jv v, const struct jl_json_opts *o,
               int level)
{
    int indent = o->indent;
    const char *item_sep = o->item_sep, *key_sep = o->key_sep;
    bool sort_keys = o->sort_keys;
    if (level > 200) jx_fail(c, KILN_ERR_LIMIT, "chat template: tojson: nested too deeply");
    switch (v.kind) {
    case JV_NONE:
        tk_buf_puts(b, "null");
        return;
    case JV_BOOL:
        tk_buf_puts(b, v.b ? "true" : "false");
        return;
    case JV_INT:
        tk_buf_printf(b, "%lld", (long long)v.i);
        return;
    case JV_FLOAT:
        if (isnan(v.f))
            tk_buf_puts(b, "NaN");
        else if (isinf(v.f))
            tk_buf_puts(b, v.f < 0 ? "-Infinity" : "Infinity");
        else
            jl_format_float(b, v.f);
        return;
    case JV_STR:
        json_str(b, v.s->p, v.s->n, o->ascii);
        return;
    case JV_LIST:
        if (v.l->n == 0) {
            tk_buf_puts(b, "[]");
            return;
        }
        tk_buf_putc(b, '[');
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) tk_buf_puts(b, item_sep);
            if (indent >= 0) newline_indent(b, indent, level + 1);
            jl_tojson(c, b, v.l->v[i], o, level + 1);
        }
        if (indent >= 0) newline_indent(b, indent, level);
        tk_buf_putc(b, ']');
        return;
    case JV_DICT:
    case JV_NS: {
        if (v.d->n == 0) {
            tk_buf_puts(b, "{}");
            return;
        }
        size_t *order = ja_alloc(&c->arena, v.d->n * sizeof *order);
        if (!order) jx_fail(c, KILN_ERR_LIMIT, "chat template: out of memory");
        for (size_t i = 0; i < v.d->n; i++) order[i] = i;
        if (sort_keys)
            for (size_t i = 1; i < v.d->n; i++)
                for (size_t j = i;
                     j > 0 && jx_compare(c, v.d->k[order[j - 1]], v.d->k[order[j]]) > 0; j--) {
                    size_t t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                }
        tk_buf_putc(b, '{');
        for (size_t k = 0; k < v.d->n; k++) {
            size_t i = order[k];
            if (k) tk_buf_puts(b, item_sep);
            if (indent >= 0) newline_indent(b, indent, level + 1);
            struct jv key = v.d->k[i];
            if (key.kind == JV_STR)
                json_str(b, key.s->p, key.s->n, o->ascii);
            else {
                /* Python turns int/float/bool/None keys into strings */
                struct tk_buf *t = jx_buf(c);
                if (key.kind == JV_NONE)
                    tk_buf_puts(t, "null");
                else if (key.kind == JV_BOOL)
                    tk_buf_puts(t, key.b ? "true" : "false");
                else
                    jl_tojson(c, t, key, o, 0);
                json_str(b, t->p ? t->p : "", t->n, o->ascii);
                jx_buf_free(c, t);
            }
            tk_buf_puts(b, key_sep);
            jl_tojson(c, b, v.d->v[i], o, level + 1);
        }
        if (indent >= 0) newline_indent(b, indent, level);
        tk_buf_putc(b, '}');
        return;
    }
    default:
        jx_fail(c, KILN_ERR_INVALID, "chat template: Object of type %s is not JSON serializable",
                jx_kind_name(v));
    }
}

/* ---- sorting and item access used by several filters ---- */

static struct jv attr_path(struct jctx *c, struct jv v, const struct jstr *path)
{
    /* "a.b.0" as jinja2's make_attrgetter: each part an attribute or an integer index */
    size_t i = 0;
    while (i <= path->n) {
        size_t j = i;
        while (j < path->n && path->p[j] != '.') j++;
        bool digits = j > i;
        for (size_t k = i; k < j; k++) digits &= isdigit((unsigned char)path->p[k]) != 0;
        if (digits)
            v = jx_getitem(c, v, jx_int(atoll(path->p + i)));
        else
            v = jx_getitem(c, v, jx_str(c, path->p + i, j - i));
        i = j + 1;
    }
    return v;
}

static struct jv lowered(struct jctx *c, struct jv v, bool case_sensitive)
{
    return (!case_sensitive && v.kind == JV_STR) ? recase(c, v, LOWER) : v;
}

static void sort_values(struct jctx *c, struct jv *v, struct jv *keys, size_t n, bool reverse)
{
    /* stable insertion sort (inputs are small); reverse keeps stability like Python */
    for (size_t i = 1; i < n; i++) {
        struct jv x = v[i], kx = keys[i];
        size_t j = i;
        while (j > 0) {
            int r = jx_compare(c, keys[j - 1], kx);
            if (reverse ? r >= 0 : r <= 0) break;
            v[j] = v[j - 1];
            keys[j] = keys[j - 1];
            j--;
        }
        v[j] = x;
        keys[j] = kx;
    }
}

static struct jv minmax(struct jctx *c, struct jv seq, const struct args *a, bool want_max)
{
    struct jv l = jx_as_list(c, seq);
    bool cs = arg_bool(a, 0, "case_sensitive", false);
    const struct jstr *attr = arg_str(c, a, 1, "attribute", NULL);
    if (l.l->n == 0) return jx_undef("min/max of an empty sequence");
    struct jv best = l.l->v[0];
    struct jv bk = lowered(c, attr ? attr_path(c, best, attr) : best, cs);
    for (size_t i = 1; i < l.l->n; i++) {
        struct jv x = l.l->v[i];
        struct jv k = lowered(c, attr ? attr_path(c, x, attr) : x, cs);
        int r = jx_compare(c, k, bk);
        if (want_max ? r > 0 : r < 0) {
            best = x;
            bk = k;
        }
    }
    return best;
}

static bool apply_test_by_name(struct jctx *c, const struct jstr *name, struct jv v,
                               struct jv *args, size_t nargs)
{
    char nm[64];
    size_t l = name->n < sizeof nm - 1 ? name->n : sizeof nm - 1;
    memcpy(nm, name->p, l);
    nm[l] = 0;
    int id = jl_test_id(nm);
    if (id < 0) jx_fail(c, KILN_ERR_INVALID, "chat template: no test named '%s'", nm);
    return jl_test(c, id, nm, v, args, nargs);
}

static struct jv select_reject(struct jctx *c, struct jv seq, const struct args *a, bool by_attr,
                               bool keep_if)
{
    struct jv l = jx_as_list(c, seq), out = jx_list(c, 8, false);
    size_t first = 0;
    const struct jstr *attr = NULL;
    if (by_attr) {
        attr = arg_str(c, a, 0, NULL, NULL);
        if (!attr) jx_fail(c, KILN_ERR_INVALID, "chat template: selectattr needs an attribute");
        first = 1;
    }
    const struct jstr *test = a->n > first ? need_str(c, a->v[first], "test name").s : NULL;
    for (size_t i = 0; i < l.l->n; i++) {
        struct jv item = l.l->v[i];
        struct jv x = attr ? attr_path(c, item, attr) : item;
        bool r = test ? apply_test_by_name(c, test, x, a->v + first + 1, a->n - first - 1)
                      : jx_truthy(x);
        if (r == keep_if) jx_list_push(c, out, item);
    }
    return out;
}

static double py_round(double x, int64_t nd)
{
    if (nd == 0) return nearbyint(x); /* half to even, like Python's round() */
    char buf[512];
    if (nd > 300 || nd < -300) return x;
    if (nd > 0) {
        snprintf(buf, sizeof buf, "%.*f", (int)nd, x); /* correctly rounded, ties to even */
        return strtod(buf, NULL);
    }
    double p = pow(10.0, (double)-nd);
    return nearbyint(x / p) * p;
}

/* ---- filters ---- */

struct jv jl_filter(struct jctx *c, int id, const char *name, struct jv v, struct jv *argv,
                    size_t nargs, const char **kwnames, struct jv *kwargs, size_t nkw)
{
    struct args a = {argv, nargs, kwnames, kwargs, nkw, name};
    switch ((enum filter_id)id) {
    case F_ABS:
        if (v.kind == JV_INT) return jx_int(v.i < 0 ? -v.i : v.i);
        if (v.kind == JV_FLOAT) return jx_float(fabs(v.f));
        if (v.kind == JV_BOOL) return jx_int(v.b);
        break;
    case F_ATTR:
        return jx_getattr(c, v, arg_str(c, &a, 0, "name", "")->p, arg_str(c, &a, 0, "name", "")->n);
    case F_CAPITALIZE:
        return recase(c, jx_stringify(c, v), CAPITALIZE);
    case F_CENTER: {
        struct jv s = jx_stringify(c, v);
        int64_t width = arg_int(c, &a, 0, "width", 80);
        int64_t len = (int64_t)tk_utf8_count(s.s->p, s.s->n);
        if (width <= len) return s;
        int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
        struct tk_buf *b = jx_buf(c);
        for (int64_t i = 0; i < left; i++) tk_buf_putc(b, ' ');
        tk_buf_put(b, s.s->p, s.s->n);
        for (int64_t i = 0; i < pad - left; i++) tk_buf_putc(b, ' ');
        return from_buf(c, b);
    }
    case F_COUNT:
    case F_LENGTH:
        switch (v.kind) {
        case JV_STR:
            return jx_int((int64_t)tk_utf8_count(v.s->p, v.s->n));
        case JV_LIST:
            return jx_int((int64_t)v.l->n);
        case JV_DICT:
        case JV_NS:
            return jx_int((int64_t)v.d->n);
        case JV_UNDEF:
            return jx_int(0);
        default:
            break;
        }
        jx_fail(c, KILN_ERR_INVALID, "chat template: object of type '%s' has no len()",
                jx_kind_name(v));
    case F_D:
    case F_DEFAULT: {
        struct jv dflt = arg_or(&a, 0, "default_value", jx_cstr(c, ""));
        bool boolean = arg_bool(&a, 1, "boolean", false);
        if (v.kind == JV_UNDEF || (boolean && !jx_truthy(v))) return dflt;
        return v;
    }
    case F_DICTSORT: {
        if (v.kind != JV_DICT && v.kind != JV_NS) break;
        bool cs = arg_bool(&a, 0, "case_sensitive", false);
        const struct jstr *by = arg_str(c, &a, 1, "by", "key");
        bool rev = arg_bool(&a, 2, "reverse", false);
        int pos = by->n == 5 && !memcmp(by->p, "value", 5) ? 1 : 0;
        size_t n = v.d->n;
        struct jv *items = ja_alloc(&c->arena, (n + 1) * sizeof *items);
        struct jv *keys = ja_alloc(&c->arena, (n + 1) * sizeof *keys);
        if (!items || !keys) jx_fail(c, KILN_ERR_LIMIT, "chat template: out of memory");
        for (size_t i = 0; i < n; i++) {
            struct jv t = jx_list(c, 2, true);
            jx_list_push(c, t, v.d->k[i]);
            jx_list_push(c, t, v.d->v[i]);
            items[i] = t;
            keys[i] = lowered(c, pos ? v.d->v[i] : v.d->k[i], cs);
        }
        sort_values(c, items, keys, n, rev);
        struct jv out = jx_list(c, n, false);
        for (size_t i = 0; i < n; i++) jx_list_push(c, out, items[i]);
        return out;
    }
    case F_E:
    case F_ESCAPE:
    case F_FORCEESCAPE: {
        struct jv s = jx_stringify(c, v);
        struct tk_buf *b = jx_buf(c);
        for (size_t i = 0; i < s.s->n; i++) {
            switch (s.s->p[i]) {
            case '&':
                tk_buf_puts(b, "&amp;");
                break;
            case '<':
                tk_buf_puts(b, "&lt;");
                break;
            case '>':
                tk_buf_puts(b, "&gt;");
                break;
            case '"':
                tk_buf_puts(b, "&#34;");
                break;
            case '\'':
                tk_buf_puts(b, "&#39;");
                break;
            default:
                tk_buf_putc(b, s.s->p[i]);
            }
        }
        return from_buf(c, b);
    }
    case F_FIRST: {
        struct jv l = jx_as_list(c, v);
        return l.l->n ? l.l->v[0] : jx_undef("first of an empty sequence");
    }
    case F_LAST: {
        struct jv l = jx_as_list(c, v);
        return l.l->n ? l.l->v[l.l->n - 1] : jx_undef("last of an empty sequence");
    }
    case F_FLOAT: {
        struct jv dflt = arg_or(&a, 0, "default", jx_float(0));
        if (v.kind == JV_FLOAT) return v;
        if (v.kind == JV_INT || v.kind == JV_BOOL)
            return jx_float((double)(v.kind == JV_INT ? v.i : v.b));
        if (v.kind == JV_STR) {
            struct jv t = strip(c, v, NULL, true, true);
            char *end;
            double f = strtod(t.s->p, &end);
            if (t.s->n && *end == 0) return jx_float(f);
        }
        return dflt;
    }
    case F_FORMAT:
        return percent_format(c, need_str(c, v, "format"), argv, nargs);
    case F_INDENT: {
        struct jv s = jx_stringify(c, v);
        struct jv w = arg_or(&a, 0, "width", jx_int(4));
        bool first = arg_bool(&a, 1, "first", false), blank = arg_bool(&a, 2, "blank", false);
        struct tk_buf *pad = jx_buf(c);
        if (w.kind == JV_STR)
            tk_buf_put(pad, w.s->p, w.s->n);
        else
            for (int64_t i = 0; i < (w.kind == JV_INT ? w.i : 4); i++) tk_buf_putc(pad, ' ');
        struct tk_buf *b = jx_buf(c);
        const char *p = s.s->p;
        size_t n = s.s->n, i = 0;
        bool first_line = true;
        while (i <= n) {
            size_t j = i;
            while (j < n && p[j] != '\n') j++;
            bool empty = j == i;
            bool indent_it = first_line ? first : (blank || !empty);
            if (indent_it && !(first_line && empty && !blank && !first))
                tk_buf_put(b, pad->p, pad->n);
            tk_buf_put(b, p + i, j - i);
            if (j < n) tk_buf_putc(b, '\n');
            first_line = false;
            if (j >= n) break;
            i = j + 1;
        }
        jx_buf_free(c, pad);
        return from_buf(c, b);
    }
    case F_INT: {
        struct jv dflt = arg_or(&a, 0, "default", jx_int(0));
        if (v.kind == JV_INT) return v;
        if (v.kind == JV_BOOL) return jx_int(v.b);
        if (v.kind == JV_FLOAT) return isfinite(v.f) ? jx_int((int64_t)v.f) : dflt;
        if (v.kind == JV_STR) {
            struct jv t = strip(c, v, NULL, true, true);
            char *end;
            long long x = strtoll(t.s->p, &end, 10);
            if (t.s->n && *end == 0) return jx_int(x);
            double f = strtod(t.s->p, &end);
            if (t.s->n && *end == 0 && isfinite(f)) return jx_int((int64_t)f);
        }
        return dflt;
    }
    case F_ITEMS:
        if (v.kind == JV_UNDEF) return jx_list(c, 1, false);
        if (v.kind != JV_DICT && v.kind != JV_NS) break;
        {
            struct jv out = jx_list(c, v.d->n, false);
            for (size_t i = 0; i < v.d->n; i++) {
                struct jv t = jx_list(c, 2, true);
                jx_list_push(c, t, v.d->k[i]);
                jx_list_push(c, t, v.d->v[i]);
                jx_list_push(c, out, t);
            }
            return out;
        }
    case F_JOIN: {
        struct jv l = jx_as_list(c, v);
        const struct jstr *sep = arg_str(c, &a, 0, "d", "");
        const struct jstr *attr = arg_str(c, &a, 1, "attribute", NULL);
        struct tk_buf *b = jx_buf(c);
        for (size_t i = 0; i < l.l->n; i++) {
            if (i) tk_buf_put(b, sep->p, sep->n);
            jx_to_str(c, b, attr ? attr_path(c, l.l->v[i], attr) : l.l->v[i]);
        }
        return from_buf(c, b);
    }
    case F_LIST: {
        struct jv l = jx_as_list(c, v), out = jx_list(c, l.l->n, false);
        for (size_t i = 0; i < l.l->n; i++) jx_list_push(c, out, l.l->v[i]);
        return out;
    }
    case F_LOWER:
        return recase(c, jx_stringify(c, v), LOWER);
    case F_UPPER:
        return recase(c, jx_stringify(c, v), UPPER);
    case F_TITLE:
        return recase(c, jx_stringify(c, v), JINJA_TITLE);
    case F_MAP: {
        struct jv l = jx_as_list(c, v), out = jx_list(c, l.l->n, false);
        struct jv at;
        if (arg(&a, (size_t)-1, "attribute", &at)) {
            const struct jstr *path = need_str(c, at, "map(attribute=)").s;
            struct jv dflt;
            bool has_default = arg(&a, (size_t)-1, "default", &dflt);
            for (size_t i = 0; i < l.l->n; i++) {
                struct jv x = attr_path(c, l.l->v[i], path);
                jx_list_push(c, out, x.kind == JV_UNDEF && has_default ? dflt : x);
            }
            return out;
        }
        if (!nargs) jx_fail(c, KILN_ERR_INVALID, "chat template: map() needs a filter name");
        const struct jstr *fname = need_str(c, argv[0], "map()").s;
        int fid = jl_filter_id(fname->p);
        if (fid < 0) jx_fail(c, KILN_ERR_INVALID, "chat template: no filter named '%s'", fname->p);
        for (size_t i = 0; i < l.l->n; i++)
            jx_list_push(
                c, out,
                jl_filter(c, fid, fname->p, l.l->v[i], argv + 1, nargs - 1, kwnames, kwargs, nkw));
        return out;
    }
    case F_MAX:
        return minmax(c, v, &a, true);
    case F_MIN:
        return minmax(c, v, &a, false);
    case F_REJECT:
        return select_reject(c, v, &a, false, false);
    case F_REJECTATTR:
        return select_reject(c, v, &a, true, false);
    case F_SELECT:
        return select_reject(c, v, &a, false, true);
    case F_SELECTATTR:
        return select_reject(c, v, &a, true, true);
    case F_REPLACE: {
        struct jv s = jx_stringify(c, v);
        const struct jstr *old = arg_str(c, &a, 0, "old", NULL),
                          *nw = arg_str(c, &a, 1, "new", NULL);
        if (!old || !nw) jx_fail(c, KILN_ERR_INVALID, "chat template: replace() needs two strings");
        return replace(c, s, old, nw, arg_int(c, &a, 2, "count", -1));
    }
    case F_REVERSE: {
        if (v.kind == JV_STR) {
            struct jv l = jx_as_list(c, v);
            struct tk_buf *b = jx_buf(c);
            for (size_t i = l.l->n; i-- > 0;) tk_buf_put(b, l.l->v[i].s->p, l.l->v[i].s->n);
            return from_buf(c, b);
        }
        struct jv l = jx_as_list(c, v), out = jx_list(c, l.l->n, false);
        for (size_t i = l.l->n; i-- > 0;) jx_list_push(c, out, l.l->v[i]);
        return out;
    }
    case F_ROUND: {
        if (v.kind != JV_INT && v.kind != JV_FLOAT && v.kind != JV_BOOL) break;
        int64_t prec = arg_int(c, &a, 0, "precision", 0);
        const struct jstr *method = arg_str(c, &a, 1, "method", "common");
        double x = v.kind == JV_FLOAT ? v.f : (double)(v.kind == JV_INT ? v.i : v.b);
        /* Python's round(int, ndigits) stays an int (ndigits >= 0 leaves it unchanged) */
        if (!strcmp(method->p, "common") && v.kind != JV_FLOAT && prec >= 0)
            return jx_int(v.kind == JV_INT ? v.i : v.b);
        if (!strcmp(method->p, "common")) return jx_float(py_round(x, prec));
        double p = pow(10.0, (double)prec);
        if (!strcmp(method->p, "ceil")) return jx_float(ceil(x * p) / p);
        if (!strcmp(method->p, "floor")) return jx_float(floor(x * p) / p);
        jx_fail(c, KILN_ERR_INVALID,
                "chat template: round(): method must be common, ceil or floor");
    }
    case F_SAFE:
    case F_STRING:
        return v.kind == JV_STR && id == F_SAFE ? v : jx_stringify(c, v);
    case F_SORT: {
        struct jv l = jx_as_list(c, v);
        bool rev = arg_bool(&a, 0, "reverse", false), cs = arg_bool(&a, 1, "case_sensitive", false);
        const struct jstr *attr = arg_str(c, &a, 2, "attribute", NULL);
        size_t n = l.l->n;
        struct jv out = jx_list(c, n, false);
        struct jv *keys = ja_alloc(&c->arena, (n + 1) * sizeof *keys);
        if (!keys) jx_fail(c, KILN_ERR_LIMIT, "chat template: out of memory");
        for (size_t i = 0; i < n; i++) {
            jx_list_push(c, out, l.l->v[i]);
            keys[i] = lowered(c, attr ? attr_path(c, l.l->v[i], attr) : l.l->v[i], cs);
        }
        sort_values(c, out.l->v, keys, n, rev);
        return out;
    }
    case F_SUM: {
        struct jv l = jx_as_list(c, v);
        const struct jstr *attr = arg_str(c, &a, 0, "attribute", NULL);
        struct jv acc = arg_or(&a, 1, "start", jx_int(0));
        for (size_t i = 0; i < l.l->n; i++)
            acc = jx_binop(c, JOP_ADD, acc, attr ? attr_path(c, l.l->v[i], attr) : l.l->v[i]);
        return acc;
    }
    case F_TOJSON: {
        struct jv ind = arg_or(&a, (size_t)-1, "indent", jx_none());
        if (nargs > 1) ind = argv[1];
        int indent = ind.kind == JV_INT ? (int)(ind.i < 0 ? 0 : ind.i > 64 ? 64 : ind.i) : -1;
        bool sort_keys = false;
        struct jv sk;
        if (arg(&a, 3, "sort_keys", &sk)) sort_keys = jx_truthy(sk);
        const char *item_sep = indent >= 0 ? "," : ", ", *key_sep = ": ";
        struct jv seps;
        char isep[16], ksep[16];
        if (arg(&a, 2, "separators", &seps) && seps.kind == JV_LIST && seps.l->n == 2 &&
            seps.l->v[0].kind == JV_STR && seps.l->v[1].kind == JV_STR &&
            seps.l->v[0].s->n < sizeof isep && seps.l->v[1].s->n < sizeof ksep) {
            snprintf(isep, sizeof isep, "%s", seps.l->v[0].s->p);
            snprintf(ksep, sizeof ksep, "%s", seps.l->v[1].s->p);
            item_sep = isep;
            key_sep = ksep;
        }
        struct tk_buf *b = jx_buf(c);
        struct jl_json_opts o = {indent, item_sep, key_sep, sort_keys,
                                 jx_truthy(arg_or(&a, 0, "ensure_ascii", jx_bool(false)))};
        jl_tojson(c, b, v, &o, 0);
        return from_buf(c, b);
    }
    case F_TRIM: {
        const struct jstr *chars = arg_str(c, &a, 0, "chars", NULL);
        return strip(c, jx_stringify(c, v), chars, true, true);
    }
    case F_TRUNCATE: {
        struct jv s = jx_stringify(c, v);
        int64_t length = arg_int(c, &a, 0, "length", 255);
        bool killwords = arg_bool(&a, 1, "killwords", false);
        const struct jstr *end = arg_str(c, &a, 2, "end", "...");
        int64_t leeway = arg_int(c, &a, 3, "leeway", 5);
        int64_t n = (int64_t)tk_utf8_count(s.s->p, s.s->n);
        if (n <= length + leeway) return s;
        int64_t endn = (int64_t)tk_utf8_count(end->p, end->n);
        int64_t keep = length - endn < 0 ? 0 : length - endn;
        struct jv chars = jx_as_list(c, s);
        struct tk_buf *b = jx_buf(c);
        for (int64_t i = 0; i < keep; i++) tk_buf_put(b, chars.l->v[i].s->p, chars.l->v[i].s->n);
        if (!killwords) {
            /* rsplit(" ", 1)[0] */
            size_t cut = b->n;
            for (size_t q = b->n; q-- > 0;)
                if (b->p[q] == ' ') {
                    cut = q;
                    break;
                }
            b->n = cut;
        }
        tk_buf_put(b, end->p, end->n);
        return from_buf(c, b);
    }
    case F_UNIQUE: {
        struct jv l = jx_as_list(c, v), out = jx_list(c, l.l->n, false),
                  seen = jx_list(c, 8, false);
        bool cs = arg_bool(&a, 0, "case_sensitive", false);
        const struct jstr *attr = arg_str(c, &a, 1, "attribute", NULL);
        for (size_t i = 0; i < l.l->n; i++) {
            struct jv k = lowered(c, attr ? attr_path(c, l.l->v[i], attr) : l.l->v[i], cs);
            bool dup = false;
            for (size_t j = 0; j < seen.l->n && !dup; j++) dup = jx_equal(seen.l->v[j], k);
            if (dup) continue;
            jx_list_push(c, seen, k);
            jx_list_push(c, out, l.l->v[i]);
        }
        return out;
    }
    case F_WORDCOUNT: {
        struct jv s = jx_stringify(c, v);
        int64_t words = 0;
        bool in_word = false;
        for (size_t i = 0; i < s.s->n;) {
            int k;
            uint32_t cp = cp_at(s.s->p, s.s->n, i, &k);
            bool w = cp == '_' || (cp < 128 ? isalnum((int)cp) != 0 : is_alpha(cp));
            if (w && !in_word) words++;
            in_word = w;
            i += (size_t)k;
        }
        return jx_int(words);
    }
    case F_COUNT_:
        break;
    }
    jx_fail(c, KILN_ERR_INVALID, "chat template: filter '%s' cannot be applied to %s", name,
            jx_kind_name(v));
}

/* ---- tests ---- */

bool jl_test(struct jctx *c, int id, const char *name, struct jv v, struct jv *args, size_t nargs)
{
    struct jv x = nargs ? args[0] : jx_undef(NULL);
    switch ((enum test_id)id) {
    case T_BOOLEAN:
        return v.kind == JV_BOOL;
    case T_CALLABLE:
        return v.kind == JV_MACRO || v.kind == JV_FUNC;
    case T_DEFINED:
        return v.kind != JV_UNDEF;
    case T_UNDEFINED:
        return v.kind == JV_UNDEF;
    case T_DIVISIBLEBY:
        if (v.kind != JV_INT || x.kind != JV_INT || x.i == 0) break;
        return v.i % x.i == 0;
    case T_EQ:
    case T_EQUALTO:
    case T_EQSYM:
        return jx_equal(v, x);
    case T_NE:
    case T_NESYM:
        return !jx_equal(v, x);
    case T_ESCAPED:
        return false;
    case T_EVEN:
    case T_ODD:
        if (v.kind != JV_INT && v.kind != JV_BOOL) break;
        return (((v.kind == JV_INT ? v.i : v.b) % 2) != 0) == (id == T_ODD);
    case T_FALSE:
        return v.kind == JV_BOOL && !v.b;
    case T_TRUE:
        return v.kind == JV_BOOL && v.b;
    case T_FLOAT:
        return v.kind == JV_FLOAT;
    case T_INTEGER:
        return v.kind == JV_INT;
    case T_NUMBER:
        return v.kind == JV_INT || v.kind == JV_FLOAT || v.kind == JV_BOOL;
    case T_GE:
    case T_GESYM:
        return jx_compare(c, v, x) >= 0;
    case T_GT:
    case T_GTSYM:
    case T_GREATERTHAN:
        return jx_compare(c, v, x) > 0;
    case T_LE:
    case T_LESYM:
        return jx_compare(c, v, x) <= 0;
    case T_LT:
    case T_LTSYM:
    case T_LESSTHAN:
        return jx_compare(c, v, x) < 0;
    case T_IN: {
        struct jv l = x.kind == JV_STR ? x : jx_as_list(c, x);
        if (l.kind == JV_STR)
            return v.kind == JV_STR && memmem(l.s->p, l.s->n, v.s->p, v.s->n) != NULL;
        for (size_t i = 0; i < l.l->n; i++)
            if (jx_equal(l.l->v[i], v)) return true;
        return false;
    }
    case T_ITERABLE:
        return v.kind == JV_STR || v.kind == JV_LIST || v.kind == JV_DICT || v.kind == JV_NS;
    case T_SEQUENCE:
        return v.kind == JV_STR || v.kind == JV_LIST || v.kind == JV_DICT;
    case T_MAPPING:
        return v.kind == JV_DICT;
    case T_NONE:
        return v.kind == JV_NONE;
    case T_STRING:
        return v.kind == JV_STR;
    case T_LOWER:
    case T_UPPER: {
        if (v.kind != JV_STR) return false;
        struct jv t = recase(c, v, id == T_LOWER ? LOWER : UPPER);
        bool cased = false;
        for (size_t i = 0; i < v.s->n; i++) cased |= isalpha((unsigned char)v.s->p[i]) != 0;
        return cased && jx_equal(t, v);
    }
    case T_SAMEAS:
        if (v.kind != x.kind) return false;
        if (v.kind == JV_NONE || v.kind == JV_UNDEF) return true;
        if (v.kind == JV_BOOL) return v.b == x.b;
        if (v.kind == JV_INT) return v.i == x.i;
        return v.s == x.s; /* same object */
    case T_COUNT_:
        break;
    }
    jx_fail(c, KILN_ERR_INVALID, "chat template: test '%s' cannot be applied to %s", name,
            jx_kind_name(v));
}

/* ---- global functions and methods ---- */

static struct jv str_method(struct jctx *c, int id, struct jv s, const struct args *a)
{
    switch (id) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        const struct jstr *chars = arg_str(c, a, 0, "chars", NULL);
        return strip(c, s, chars, id != M_RSTRIP, id != M_LSTRIP);
    }
    case M_SPLIT:
    case M_RSPLIT:
        return split(c, s, arg_str(c, a, 0, "sep", NULL), arg_int(c, a, 1, "maxsplit", -1),
                     id == M_RSPLIT);
    case M_STARTSWITH:
    case M_ENDSWITH: {
        struct jv w;
        if (!arg(a, 0, NULL, &w))
            jx_fail(c, KILN_ERR_INVALID, "chat template: %s() needs an argument", a->fname);
        return jx_bool(affix(c, s, w, id == M_ENDSWITH));
    }
    case M_UPPER:
        return recase(c, s, UPPER);
    case M_LOWER:
        return recase(c, s, LOWER);
    case M_TITLE:
        return recase(c, s, PY_TITLE);
    case M_CAPITALIZE:
        return recase(c, s, CAPITALIZE);
    case M_REPLACE: {
        const struct jstr *old = arg_str(c, a, 0, NULL, NULL), *nw = arg_str(c, a, 1, NULL, NULL);
        if (!old || !nw) jx_fail(c, KILN_ERR_INVALID, "chat template: replace() needs two strings");
        return replace(c, s, old, nw, arg_int(c, a, 2, "count", -1));
    }
    case M_FIND:
    case M_RFIND:
    case M_INDEX: {
        const struct jstr *sub = arg_str(c, a, 0, NULL, NULL);
        if (!sub) jx_fail(c, KILN_ERR_INVALID, "chat template: %s() needs a string", a->fname);
        int64_t r = find(s, sub, id == M_RFIND);
        if (id == M_INDEX && r < 0)
            jx_fail(c, KILN_ERR_INVALID, "chat template: substring not found");
        return jx_int(r);
    }
    case M_COUNT: {
        const struct jstr *sub = arg_str(c, a, 0, NULL, NULL);
        if (!sub) jx_fail(c, KILN_ERR_INVALID, "chat template: count() needs a string");
        if (sub->n == 0) return jx_int((int64_t)tk_utf8_count(s.s->p, s.s->n) + 1);
        int64_t k = 0;
        for (const char *p = s.s->p, *e = s.s->p + s.s->n;
             (p = memmem(p, (size_t)(e - p), sub->p, sub->n)) != NULL; p += sub->n)
            k++;
        return jx_int(k);
    }
    case M_JOIN: {
        struct jv items;
        if (!arg(a, 0, NULL, &items))
            jx_fail(c, KILN_ERR_INVALID, "chat template: join() needs a list");
        struct jv l = jx_as_list(c, items);
        struct tk_buf *b = jx_buf(c);
        for (size_t i = 0; i < l.l->n; i++) {
            if (i) tk_buf_put(b, s.s->p, s.s->n);
            tk_buf_put(b, need_str(c, l.l->v[i], "join()").s->p, l.l->v[i].s->n);
        }
        return from_buf(c, b);
    }
    case M_SPLITLINES: {
        struct jv out = jx_list(c, 8, false);
        bool keep = arg_bool(a, 0, "keepends", false);
        size_t i = 0, n = s.s->n;
        const char *p = s.s->p;
        while (i < n) {
            size_t j = i;
            while (j < n && p[j] != '\n' && p[j] != '\r') j++;
            size_t e = j;
            if (j < n) e = (p[j] == '\r' && j + 1 < n && p[j + 1] == '\n') ? j + 2 : j + 1;
            jx_list_push(c, out, jx_str(c, p + i, (keep ? e : j) - i));
            i = e;
        }
        return out;
    }
    case M_ISDIGIT:
    case M_ISALPHA:
    case M_ISALNUM:
    case M_ISSPACE: {
        if (s.s->n == 0) return jx_bool(false);
        for (size_t i = 0; i < s.s->n;) {
            int k;
            uint32_t cp = cp_at(s.s->p, s.s->n, i, &k);
            bool ok = id == M_ISDIGIT   ? (cp >= '0' && cp <= '9')
                      : id == M_ISALPHA ? is_alpha(cp)
                      : id == M_ISALNUM ? (is_alpha(cp) || (cp >= '0' && cp <= '9'))
                                        : tk_is_py_space(cp);
            if (!ok) return jx_bool(false);
            i += (size_t)k;
        }
        return jx_bool(true);
    }
    case M_ISUPPER:
    case M_ISLOWER:
        return jx_bool(jl_test(c, id == M_ISUPPER ? T_UPPER : T_LOWER, "", s, NULL, 0));
    case M_FORMAT:
        return brace_format(c, s, a);
    }
    jx_fail(c, KILN_ERR_INVALID, "chat template: str has no method %s()", a->fname);
}

static struct jv range(struct jctx *c, const struct args *a)
{
    int64_t start = 0, stop, stepv = 1;
    if (a->n == 1)
        stop = arg_int(c, a, 0, NULL, 0);
    else {
        start = arg_int(c, a, 0, NULL, 0);
        stop = arg_int(c, a, 1, NULL, 0);
        stepv = arg_int(c, a, 2, NULL, 1);
    }
    if (a->n == 0) jx_fail(c, KILN_ERR_INVALID, "chat template: range() needs arguments");
    if (stepv == 0) jx_fail(c, KILN_ERR_INVALID, "chat template: range() step must not be zero");
    double count = ceil(((double)stop - (double)start) / (double)stepv);
    if (count > 1000000)
        jx_fail(c, KILN_ERR_LIMIT, "chat template: range() of more than 1,000,000 items");
    struct jv out = jx_list(c, count > 0 ? (size_t)count : 1, false);
    for (int64_t i = start; stepv > 0 ? i < stop : i > stop; i += stepv)
        jx_list_push(c, out, jx_int(i));
    return out;
}

struct jv jl_call(struct jctx *c, struct jfunc *fn, struct jv *argv, size_t nargs,
                  const char **kwnames, struct jv *kwargs, size_t nkw)
{
    struct args a = {argv, nargs, kwnames, kwargs, nkw, fn->name};
    switch (fn->id) {
    case G_RANGE:
        return range(c, &a);
    case G_DICT:
    case G_NAMESPACE: {
        struct jv d = jx_dict(c, nkw + 4);
        if (nargs == 1 && (argv[0].kind == JV_DICT || argv[0].kind == JV_NS))
            for (size_t i = 0; i < argv[0].d->n; i++)
                jx_dict_set(c, d.d, argv[0].d->k[i], argv[0].d->v[i]);
        for (size_t i = 0; i < nkw; i++) jx_dict_set(c, d.d, jx_cstr(c, kwnames[i]), kwargs[i]);
        if (fn->id == G_NAMESPACE) d.kind = JV_NS;
        return d;
    }
    case G_RAISE: {
        struct tk_buf *b = jx_buf(c);
        if (nargs) jx_to_str(c, b, argv[0]);
        char msg[800];
        snprintf(msg, sizeof msg, "%.*s", (int)(b->n > 700 ? 700 : b->n), b->p ? b->p : "");
        jx_buf_free(c, b);
        jx_fail(c, KILN_ERR_INVALID, "%s", msg);
    }
    case G_STRFTIME: {
        const struct jstr *f = arg_str(c, &a, 0, "format", "%Y-%m-%d");
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        char out[256];
        size_t n = strftime(out, sizeof out, f->p, &tmv);
        return jx_str(c, out, n);
    }
    case G_JOINER: {
        struct jfunc *j = ja_alloc(&c->arena, sizeof *j);
        struct jv *state = ja_alloc(&c->arena, 2 * sizeof *state);
        if (!j || !state) jx_fail(c, KILN_ERR_LIMIT, "chat template: out of memory");
        state[0] = nargs ? argv[0] : jx_cstr(c, ", ");
        state[1] = jx_bool(false);
        j->id = M_JOINER_CALL;
        j->self = state;
        j->name = "joiner";
        return (struct jv){.kind = JV_FUNC, .fn = j};
    }
    case M_JOINER_CALL:
        if (!jx_truthy(fn->self[1])) {
            fn->self[1] = jx_bool(true);
            return jx_cstr(c, "");
        }
        return fn->self[0];
    case M_UNSAFE:
        jx_fail(c, KILN_ERR_INVALID,
                "chat template: access to attribute '%s' of '%s' object is unsafe.", fn->name,
                jx_kind_name(*fn->self));
    default:
        break;
    }
    struct jv self = fn->self ? *fn->self : jx_none();
    if (self.kind == JV_STR) return str_method(c, fn->id, self, &a);
    if (self.kind == JV_LIST) {
        struct jv x;
        if (!arg(&a, 0, NULL, &x))
            jx_fail(c, KILN_ERR_INVALID, "chat template: %s() needs an argument", fn->name);
        int64_t k = 0;
        for (size_t i = 0; i < self.l->n; i++) {
            if (!jx_equal(self.l->v[i], x)) continue;
            if (fn->id == M_INDEX) return jx_int((int64_t)i);
            k++;
        }
        if (fn->id == M_INDEX) jx_fail(c, KILN_ERR_INVALID, "chat template: value is not in list");
        return jx_int(k);
    }
    if (self.kind == JV_DICT) {
        switch (fn->id) {
        case M_ITEMS:
            return jl_filter(c, F_ITEMS, "items", self, NULL, 0, NULL, NULL, 0);
        case M_KEYS:
            return jx_as_list(c, self);
        case M_VALUES: {
            struct jv out = jx_list(c, self.d->n, false);
            for (size_t i = 0; i < self.d->n; i++) jx_list_push(c, out, self.d->v[i]);
            return out;
        }
        case M_GET: {
            struct jv k, v;
            if (!arg(&a, 0, NULL, &k))
                jx_fail(c, KILN_ERR_INVALID, "chat template: get() needs a key");
            if (jx_dict_get(self.d, k, &v)) return v;
            return arg_or(&a, 1, "default", jx_none());
        }
        }
    }
    if (self.kind == JV_LOOP && fn->id == M_CYCLE) {
        if (!nargs) jx_fail(c, KILN_ERR_INVALID, "chat template: loop.cycle() needs arguments");
        return argv[self.loop->index0 % (int64_t)nargs];
    }
    jx_fail(c, KILN_ERR_INVALID, "chat template: cannot call %s() here", fn->name);
}
