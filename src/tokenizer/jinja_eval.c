/* Jinja rendering: values with Python semantics (truthiness, equality, str(), arithmetic),
 * scopes as jinja2 has them (a for loop's body is its own scope, if is not, macros see the
 * template's top level), and the statements. Errors unwind with longjmp to kiln_jinja_render;
 * every value lives in the render's arena. Steps, output size and memory are bounded so a
 * hostile template or input fails cleanly. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

#define MAX_STEPS  20000000u
#define MAX_OUTPUT ((size_t)64 << 20)
#define MAX_DEPTH  200

void jx_fail(struct jctx *c, enum kiln_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[900];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kiln_errorf(c->err, code, "%s", msg);
    longjmp(c->jmp, 1);
}

struct jbuf {
    struct tk_buf b; /* first: a tk_buf pointer is a jbuf pointer */
    struct jbuf *next_all, *next_free;
};

static void *cal(struct jctx *c, size_t n);

struct tk_buf *jx_buf(struct jctx *c)
{
    struct jbuf *j = c->free_bufs;
    if (j) {
        c->free_bufs = j->next_free;
    } else {
        j = cal(c, sizeof *j);
        j->next_all = c->bufs;
        c->bufs = j;
    }
    j->b = (struct tk_buf){0};
    return &j->b;
}

void jx_buf_free(struct jctx *c, struct tk_buf *b)
{
    struct jbuf *j = (struct jbuf *)b;
    free(b->p);
    *b = (struct tk_buf){0};
    j->next_free = c->free_bufs;
    c->free_bufs = j;
}

static void *cal(struct jctx *c, size_t n)
{
    void *p = ja_alloc(&c->arena, n);
    if (!p) jx_fail(c, KILN_ERR_LIMIT, "chat template: out of memory (render arena limit)");
    return p;
}

/* ---- constructors ---- */

struct jv jx_str(struct jctx *c, const char *s, size_t n)
{
    struct jstr *js = cal(c, sizeof *js + n + 1);
    js->n = n;
    if (n) memcpy(js->p, s, n);
    return (struct jv){.kind = JV_STR, .s = js};
}

struct jv jx_cstr(struct jctx *c, const char *s)
{
    return jx_str(c, s, strlen(s));
}

struct jv jx_int(int64_t i)
{
    return (struct jv){.kind = JV_INT, .i = i};
}

struct jv jx_float(double f)
{
    return (struct jv){.kind = JV_FLOAT, .f = f};
}

struct jv jx_bool(bool b)
{
    return (struct jv){.kind = JV_BOOL, .b = b};
}

struct jv jx_none(void)
{
    return (struct jv){.kind = JV_NONE};
}

struct jv jx_undef(const char *name)
{
    return (struct jv){.kind = JV_UNDEF, .uname = name};
}

struct jv jx_list(struct jctx *c, size_t cap, bool tuple)
{
    struct jlist *l = cal(c, sizeof *l);
    l->cap = cap ? cap : 4;
    l->v = cal(c, l->cap * sizeof *l->v);
    l->tuple = tuple;
    return (struct jv){.kind = JV_LIST, .l = l};
}

void jx_list_push(struct jctx *c, struct jv list, struct jv v)
{
    struct jlist *l = list.l;
    if (l->n == l->cap) {
        size_t cap = l->cap * 2;
        struct jv *nv = cal(c, cap * sizeof *nv);
        memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

struct jv jx_dict(struct jctx *c, size_t cap)
{
    struct jdict *d = cal(c, sizeof *d);
    d->cap = cap ? cap : 4;
    d->k = cal(c, d->cap * sizeof *d->k);
    d->v = cal(c, d->cap * sizeof *d->v);
    return (struct jv){.kind = JV_DICT, .d = d};
}

static bool hashable_equal(struct jv a, struct jv b)
{
    return jx_equal(a, b);
}

bool jx_dict_get(const struct jdict *d, struct jv k, struct jv *out)
{
    for (size_t i = 0; i < d->n; i++)
        if (hashable_equal(d->k[i], k)) {
            if (out) *out = d->v[i];
            return true;
        }
    return false;
}

void jx_dict_set(struct jctx *c, struct jdict *d, struct jv k, struct jv v)
{
    for (size_t i = 0; i < d->n; i++)
        if (hashable_equal(d->k[i], k)) {
            d->v[i] = v;
            return;
        }
    if (d->n == d->cap) {
        size_t cap = d->cap * 2;
        struct jv *nk = cal(c, cap * sizeof *nk), *nv = cal(c, cap * sizeof *nv);
        memcpy(nk, d->k, d->n * sizeof *nk);
        memcpy(nv, d->v, d->n * sizeof *nv);
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

/* ---- Python semantics ---- */

const char *jx_kind_name(struct jv v)
{
    switch (v.kind) {
    case JV_UNDEF:
        return "Undefined";
    case JV_NONE:
        return "NoneType";
    case JV_BOOL:
        return "bool";
    case JV_INT:
        return "int";
    case JV_FLOAT:
        return "float";
    case JV_STR:
        return "str";
    case JV_LIST:
        return v.l->tuple ? "tuple" : "list";
    case JV_DICT:
        return "dict";
    case JV_NS:
        return "Namespace";
    case JV_MACRO:
        return "Macro";
    case JV_FUNC:
        return "builtin_function_or_method";
    case JV_LOOP:
        return "LoopContext";
    }
    return "object";
}

bool jx_truthy(struct jv v)
{
    switch (v.kind) {
    case JV_UNDEF:
    case JV_NONE:
        return false;
    case JV_BOOL:
        return v.b;
    case JV_INT:
        return v.i != 0;
    case JV_FLOAT:
        return v.f != 0;
    case JV_STR:
        return v.s->n != 0;
    case JV_LIST:
        return v.l->n != 0;
    case JV_DICT:
        return v.d->n != 0;
    default:
        return true;
    }
}

static bool is_num(struct jv v)
{
    return v.kind == JV_INT || v.kind == JV_FLOAT || v.kind == JV_BOOL;
}

static double num_f(struct jv v)
{
    return v.kind == JV_FLOAT ? v.f : v.kind == JV_INT ? (double)v.i : (double)v.b;
}

static int64_t num_i(struct jv v)
{
    return v.kind == JV_INT ? v.i : (int64_t)v.b;
}

bool jx_equal(struct jv a, struct jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.kind == JV_FLOAT || b.kind == JV_FLOAT) return num_f(a) == num_f(b);
        return num_i(a) == num_i(b);
    }
    if (a.kind != b.kind) return false;
    switch (a.kind) {
    case JV_UNDEF:
    case JV_NONE:
        return true;
    case JV_STR:
        return a.s->n == b.s->n && !memcmp(a.s->p, b.s->p, a.s->n);
    case JV_LIST:
        if (a.l->n != b.l->n || a.l->tuple != b.l->tuple) return false;
        for (size_t i = 0; i < a.l->n; i++)
            if (!jx_equal(a.l->v[i], b.l->v[i])) return false;
        return true;
    case JV_DICT:
    case JV_NS:
        if (a.d->n != b.d->n) return false;
        for (size_t i = 0; i < a.d->n; i++) {
            struct jv o;
            if (!jx_dict_get(b.d, a.d->k[i], &o) || !jx_equal(a.d->v[i], o)) return false;
        }
        return true;
    case JV_MACRO:
        return a.macro == b.macro;
    case JV_FUNC:
        return a.fn == b.fn;
    case JV_LOOP:
        return a.loop == b.loop;
    default:
        return false;
    }
}

int jx_compare(struct jctx *c, struct jv a, struct jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.kind == JV_FLOAT || b.kind == JV_FLOAT) {
            double x = num_f(a), y = num_f(b);
            return x < y ? -1 : x > y;
        }
        int64_t x = num_i(a), y = num_i(b);
        return x < y ? -1 : x > y;
    }
    if (a.kind == JV_STR && b.kind == JV_STR) {
        size_t n = a.s->n < b.s->n ? a.s->n : b.s->n;
        int r = memcmp(a.s->p, b.s->p, n); /* UTF-8 byte order = code point order */
        if (r) return r < 0 ? -1 : 1;
        return a.s->n < b.s->n ? -1 : a.s->n > b.s->n;
    }
    if (a.kind == JV_LIST && b.kind == JV_LIST) {
        for (size_t i = 0; i < a.l->n && i < b.l->n; i++) {
            if (jx_equal(a.l->v[i], b.l->v[i])) continue;
            return jx_compare(c, a.l->v[i], b.l->v[i]);
        }
        return a.l->n < b.l->n ? -1 : a.l->n > b.l->n;
    }
    jx_fail(c, KILN_ERR_INVALID, "chat template: '<' not supported between '%s' and '%s'",
            jx_kind_name(a), jx_kind_name(b));
}

/* ---- str() and repr() ---- */

void jl_format_float(struct tk_buf *b, double f)
{
    if (isnan(f)) {
        tk_buf_puts(b, "nan");
        return;
    }
    if (isinf(f)) {
        tk_buf_puts(b, f < 0 ? "-inf" : "inf");
        return;
    }
    /* shortest round-trip digits, then Python's repr layout */
    char digits[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(digits, sizeof digits, "%.*e", prec - 1, f);
        if (strtod(digits, NULL) == f) break;
    }
    /* digits = "-d.ddde±XX" */
    char mant[32];
    size_t mn = 0;
    const char *q = digits;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') mant[mn++] = *q;
    mant[mn] = 0;
    int exp = atoi(q + 1);
    while (mn > 1 && mant[mn - 1] == '0') mant[--mn] = 0;
    if (neg) tk_buf_putc(b, '-');
    if (exp >= 16 || exp < -4) {
        tk_buf_putc(b, mant[0]);
        if (mn > 1) {
            tk_buf_putc(b, '.');
            tk_buf_put(b, mant + 1, mn - 1);
        }
        tk_buf_printf(b, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        tk_buf_puts(b, "0.");
        for (int i = -1; i > exp; i--) tk_buf_putc(b, '0');
        tk_buf_put(b, mant, mn);
    } else {
        for (int i = 0; i <= exp; i++) tk_buf_putc(b, i < (int)mn ? mant[i] : '0');
        tk_buf_putc(b, '.');
        if ((int)mn > exp + 1)
            tk_buf_put(b, mant + exp + 1, mn - (size_t)exp - 1);
        else
            tk_buf_putc(b, '0');
    }
}

static bool py_printable(uint32_t cp)
{
    if (cp < 0x20 || cp == 0x7F) return false;
    if (cp >= 0x80 && cp <= 0xA0) return false;
    if (cp == 0xAD || (cp >= 0x200B && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202E) ||
        (cp >= 0x2060 && cp <= 0x206F) || cp == 0xFEFF || (cp >= 0xD800 && cp < 0xE000) ||
        (cp >= 0xE000 && cp <= 0xF8FF) || (cp >= 0xFFF9 && cp <= 0xFFFB) ||
        (cp >= 0x2000 && cp <= 0x200A) || cp == 0x3000 || cp == 0x1680 || cp == 0x205F)
        return false;
    return true;
}

static void repr_str(struct tk_buf *b, const char *s, size_t n)
{
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    tk_buf_putc(b, q);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (k <= 0) {
            cp = (unsigned char)s[i];
            k = 1;
        }
        if (cp == (uint32_t)q || cp == '\\') {
            tk_buf_putc(b, '\\');
            tk_buf_putc(b, (char)cp);
        } else if (cp == '\n')
            tk_buf_puts(b, "\\n");
        else if (cp == '\r')
            tk_buf_puts(b, "\\r");
        else if (cp == '\t')
            tk_buf_puts(b, "\\t");
        else if (!py_printable(cp)) {
            if (cp < 0x100)
                tk_buf_printf(b, "\\x%02x", cp);
            else if (cp < 0x10000)
                tk_buf_printf(b, "\\u%04x", cp);
            else
                tk_buf_printf(b, "\\U%08x", cp);
        } else {
            tk_buf_put(b, s + i, (size_t)k);
        }
        i += (size_t)k;
    }
    tk_buf_putc(b, q);
}

void jx_repr(struct jctx *c, struct tk_buf *b, struct jv v)
{
    if (++c->depth > MAX_DEPTH)
        jx_fail(c, KILN_ERR_LIMIT, "chat template: value nested too deeply");
    switch (v.kind) {
    case JV_STR:
        repr_str(b, v.s->p, v.s->n);
        break;
    case JV_LIST:
        tk_buf_putc(b, v.l->tuple ? '(' : '[');
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) tk_buf_puts(b, ", ");
            jx_repr(c, b, v.l->v[i]);
        }
        if (v.l->tuple && v.l->n == 1) tk_buf_putc(b, ',');
        tk_buf_putc(b, v.l->tuple ? ')' : ']');
        break;
    case JV_DICT:
    case JV_NS:
        tk_buf_puts(b, v.kind == JV_NS ? "<Namespace {" : "{");
        for (size_t i = 0; i < v.d->n; i++) {
            if (i) tk_buf_puts(b, ", ");
            jx_repr(c, b, v.d->k[i]);
            tk_buf_puts(b, ": ");
            jx_repr(c, b, v.d->v[i]);
        }
        tk_buf_puts(b, v.kind == JV_NS ? "}>" : "}");
        break;
    default:
        jx_to_str(c, b, v);
    }
    c->depth--;
}

void jx_to_str(struct jctx *c, struct tk_buf *b, struct jv v)
{
    switch (v.kind) {
    case JV_UNDEF:
        break;
    case JV_NONE:
        tk_buf_puts(b, "None");
        break;
    case JV_BOOL:
        tk_buf_puts(b, v.b ? "True" : "False");
        break;
    case JV_INT:
        tk_buf_printf(b, "%lld", (long long)v.i);
        break;
    case JV_FLOAT:
        jl_format_float(b, v.f);
        break;
    case JV_STR:
        tk_buf_put(b, v.s->p, v.s->n);
        break;
    case JV_LIST:
    case JV_DICT:
    case JV_NS:
        jx_repr(c, b, v);
        break;
    case JV_MACRO:
        tk_buf_printf(b, "<Macro '%s'>", v.macro->s);
        break;
    case JV_FUNC:
        tk_buf_printf(b, "<built-in method %s>", v.fn->name);
        break;
    case JV_LOOP:
        tk_buf_puts(b, "<LoopContext>");
        break;
    }
}

struct jv jx_stringify(struct jctx *c, struct jv v)
{
    if (v.kind == JV_STR) return v;
    struct tk_buf *b = jx_buf(c);
    jx_to_str(c, b, v);
    if (b->oom) jx_fail(c, KILN_ERR_NOMEM, "chat template: out of memory");
    struct jv s = jx_str(c, b->p ? b->p : "", b->n);
    jx_buf_free(c, b);
    return s;
}

/* ---- containers ---- */

struct jv jx_as_list(struct jctx *c, struct jv v)
{
    switch (v.kind) {
    case JV_LIST:
        return v;
    case JV_UNDEF:
        return jx_list(c, 1, false);
    case JV_DICT: {
        struct jv l = jx_list(c, v.d->n, false);
        for (size_t i = 0; i < v.d->n; i++) jx_list_push(c, l, v.d->k[i]);
        return l;
    }
    case JV_STR: {
        struct jv l = jx_list(c, v.s->n, false);
        for (size_t i = 0; i < v.s->n;) {
            size_t k = 1;
            while (i + k < v.s->n && ((unsigned char)v.s->p[i + k] & 0xC0) == 0x80) k++;
            jx_list_push(c, l, jx_str(c, v.s->p + i, k));
            i += k;
        }
        return l;
    }
    default:
        jx_fail(c, KILN_ERR_INVALID, "chat template: '%s' object is not iterable", jx_kind_name(v));
    }
}

static struct jv loop_attr(struct jctx *c, struct jloop *lp, const char *name)
{
    if (!strcmp(name, "index")) return jx_int(lp->index0 + 1);
    if (!strcmp(name, "index0")) return jx_int(lp->index0);
    if (!strcmp(name, "revindex")) return jx_int(lp->length - lp->index0);
    if (!strcmp(name, "revindex0")) return jx_int(lp->length - lp->index0 - 1);
    if (!strcmp(name, "first")) return jx_bool(lp->index0 == 0);
    if (!strcmp(name, "last")) return jx_bool(lp->index0 == lp->length - 1);
    if (!strcmp(name, "length")) return jx_int(lp->length);
    if (!strcmp(name, "depth")) return jx_int(lp->depth0 + 1);
    if (!strcmp(name, "depth0")) return jx_int(lp->depth0);
    if (!strcmp(name, "previtem")) return lp->has_prev ? lp->prev : jx_undef("previtem");
    if (!strcmp(name, "nextitem")) return lp->has_next ? lp->next : jx_undef("nextitem");
    (void)c;
    return jx_undef(name);
}

/* obj.name: attribute first (methods, loop fields), then item, as jinja2's getattr does */
struct jv jx_getattr(struct jctx *c, struct jv obj, const char *name, size_t n)
{
    if (obj.kind == JV_UNDEF)
        jx_fail(c, KILN_ERR_INVALID, "chat template: '%s' is undefined",
                obj.uname ? obj.uname : "value");
    if (obj.kind == JV_LOOP) {
        struct jv m = jl_method(c, obj, name, n);
        return m.kind != JV_UNDEF ? m : loop_attr(c, obj.loop, name);
    }
    struct jv m = jl_method(c, obj, name, n);
    if (m.kind != JV_UNDEF) return m;
    if (obj.kind == JV_DICT || obj.kind == JV_NS) {
        struct jv v;
        if (jx_dict_get(obj.d, jx_str(c, name, n), &v)) return v;
    }
    return jx_undef(name);
}

static int64_t norm_index(int64_t i, int64_t n)
{
    return i < 0 ? i + n : i;
}

/* obj[key]: item first, then attribute */
struct jv jx_getitem(struct jctx *c, struct jv obj, struct jv key)
{
    switch (obj.kind) {
    case JV_UNDEF:
        jx_fail(c, KILN_ERR_INVALID, "chat template: '%s' is undefined",
                obj.uname ? obj.uname : "value");
    case JV_DICT:
    case JV_NS: {
        struct jv v;
        if (jx_dict_get(obj.d, key, &v)) return v;
        break;
    }
    case JV_LIST:
        if (key.kind == JV_INT || key.kind == JV_BOOL) {
            int64_t i = norm_index(num_i(key), (int64_t)obj.l->n);
            if (i >= 0 && i < (int64_t)obj.l->n) return obj.l->v[i];
            return jx_undef("list index out of range");
        }
        break;
    case JV_STR:
        if (key.kind == JV_INT || key.kind == JV_BOOL) {
            struct jv l = jx_as_list(c, obj);
            int64_t i = norm_index(num_i(key), (int64_t)l.l->n);
            if (i >= 0 && i < (int64_t)l.l->n) return l.l->v[i];
            return jx_undef("string index out of range");
        }
        break;
    default:
        break;
    }
    if (key.kind == JV_STR) return jx_getattr(c, obj, key.s->p, key.s->n);
    return jx_undef(NULL);
}

/* Python slice semantics on a list (strings go through their characters) */
static struct jv slice(struct jctx *c, struct jv obj, struct jv *parts)
{
    bool is_str = obj.kind == JV_STR;
    if (obj.kind != JV_LIST && !is_str)
        jx_fail(c, KILN_ERR_INVALID, "chat template: '%s' object is not subscriptable",
                jx_kind_name(obj));
    struct jv l = is_str ? jx_as_list(c, obj) : obj;
    int64_t n = (int64_t)l.l->n, step = 1;
    if (parts[2].kind != JV_NONE && parts[2].kind != JV_UNDEF) {
        if (!is_num(parts[2]) || parts[2].kind == JV_FLOAT)
            jx_fail(c, KILN_ERR_INVALID, "chat template: slice step must be an integer");
        step = num_i(parts[2]);
        if (step == 0) jx_fail(c, KILN_ERR_INVALID, "chat template: slice step cannot be zero");
    }
    int64_t lo, hi;
    for (int k = 0; k < 2; k++) {
        struct jv p = parts[k];
        int64_t dflt = k == 0 ? (step > 0 ? 0 : n - 1) : (step > 0 ? n : -1);
        int64_t v = dflt;
        if (p.kind != JV_NONE && p.kind != JV_UNDEF) {
            if (!is_num(p) || p.kind == JV_FLOAT)
                jx_fail(c, KILN_ERR_INVALID, "chat template: slice indices must be integers");
            v = num_i(p);
            if (v < 0) v += n;
            if (step > 0)
                v = v < 0 ? 0 : v > n ? n : v;
            else
                v = v < -1 ? -1 : v > n - 1 ? n - 1 : v;
        }
        if (k == 0)
            lo = v;
        else
            hi = v;
    }
    struct jv out = jx_list(c, 8, l.l->tuple);
    if (step > 0)
        for (int64_t i = lo; i < hi; i += step) jx_list_push(c, out, l.l->v[i]);
    else
        for (int64_t i = lo; i > hi; i += step) jx_list_push(c, out, l.l->v[i]);
    if (!is_str) return out;
    struct tk_buf *b = jx_buf(c);
    for (size_t i = 0; i < out.l->n; i++) tk_buf_put(b, out.l->v[i].s->p, out.l->v[i].s->n);
    struct jv s = jx_str(c, b->p ? b->p : "", b->n);
    jx_buf_free(c, b);
    return s;
}

/* ---- arithmetic ---- */

static struct jv concat_str(struct jctx *c, struct jv a, struct jv b)
{
    struct jstr *s = cal(c, sizeof *s + a.s->n + b.s->n + 1);
    memcpy(s->p, a.s->p, a.s->n);
    memcpy(s->p + a.s->n, b.s->p, b.s->n);
    s->n = a.s->n + b.s->n;
    return (struct jv){.kind = JV_STR, .s = s};
}

static struct jv repeat(struct jctx *c, struct jv seq, int64_t times)
{
    if (times < 0) times = 0;
    if (seq.kind == JV_STR) {
        if (times && seq.s->n * (uint64_t)times > MAX_OUTPUT)
            jx_fail(c, KILN_ERR_LIMIT, "chat template: string repetition too large");
        struct jstr *s = cal(c, sizeof *s + seq.s->n * (size_t)times + 1);
        for (int64_t i = 0; i < times; i++) memcpy(s->p + (size_t)i * seq.s->n, seq.s->p, seq.s->n);
        s->n = seq.s->n * (size_t)times;
        return (struct jv){.kind = JV_STR, .s = s};
    }
    if (times && seq.l->n * (uint64_t)times > 10000000)
        jx_fail(c, KILN_ERR_LIMIT, "chat template: list repetition too large");
    struct jv l = jx_list(c, seq.l->n * (size_t)times, seq.l->tuple);
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < seq.l->n; k++) jx_list_push(c, l, seq.l->v[k]);
    return l;
}

_Noreturn static void bad_operands(struct jctx *c, const char *op, struct jv a, struct jv b)
{
    jx_fail(c, KILN_ERR_INVALID, "chat template: unsupported operand type(s) for %s: '%s' and '%s'",
            op, jx_kind_name(a), jx_kind_name(b));
}

struct jv jx_binop(struct jctx *c, int op, struct jv a, struct jv b)
{
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**", "~"};
    if (op == JOP_CONCAT) return concat_str(c, jx_stringify(c, a), jx_stringify(c, b));
    if (a.kind == JV_UNDEF || b.kind == JV_UNDEF) {
        struct jv u = a.kind == JV_UNDEF ? a : b;
        jx_fail(c, KILN_ERR_INVALID, "chat template: '%s' is undefined",
                u.uname ? u.uname : "value");
    }
    if (op == JOP_ADD) {
        if (a.kind == JV_STR && b.kind == JV_STR) return concat_str(c, a, b);
        if (a.kind == JV_LIST && b.kind == JV_LIST && a.l->tuple == b.l->tuple) {
            struct jv l = jx_list(c, a.l->n + b.l->n, a.l->tuple);
            for (size_t i = 0; i < a.l->n; i++) jx_list_push(c, l, a.l->v[i]);
            for (size_t i = 0; i < b.l->n; i++) jx_list_push(c, l, b.l->v[i]);
            return l;
        }
    }
    if (op == JOP_MUL) {
        if ((a.kind == JV_STR || a.kind == JV_LIST) && (b.kind == JV_INT || b.kind == JV_BOOL))
            return repeat(c, a, num_i(b));
        if ((b.kind == JV_STR || b.kind == JV_LIST) && (a.kind == JV_INT || a.kind == JV_BOOL))
            return repeat(c, b, num_i(a));
    }
    if (op == JOP_MOD && a.kind == JV_STR) {
        struct jv args = b.kind == JV_LIST && b.l->tuple ? b : jx_list(c, 1, true);
        if (!(b.kind == JV_LIST && b.l->tuple)) jx_list_push(c, args, b);
        int id = jl_filter_id("format");
        return jl_filter(c, id, "format", a, args.l->v, args.l->n, NULL, NULL, 0);
    }
    if (!is_num(a) || !is_num(b)) bad_operands(c, names[op], a, b);
    bool fl = a.kind == JV_FLOAT || b.kind == JV_FLOAT;
    if (op == JOP_DIV) {
        if (num_f(b) == 0) jx_fail(c, KILN_ERR_INVALID, "chat template: division by zero");
        return jx_float(num_f(a) / num_f(b));
    }
    if (fl) {
        double x = num_f(a), y = num_f(b);
        switch (op) {
        case JOP_ADD:
            return jx_float(x + y);
        case JOP_SUB:
            return jx_float(x - y);
        case JOP_MUL:
            return jx_float(x * y);
        case JOP_POW:
            return jx_float(pow(x, y));
        case JOP_FLOORDIV:
        case JOP_MOD: {
            if (y == 0) jx_fail(c, KILN_ERR_INVALID, "chat template: division by zero");
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            if (op == JOP_MOD) return jx_float(m);
            double div = (x - m) / y, fl_div = floor(div); /* Python's float floordiv */
            if (div - fl_div > 0.5) fl_div += 1.0;
            return jx_float(fl_div);
        }
        }
    }
    int64_t x = num_i(a), y = num_i(b), r;
    switch (op) {
    case JOP_ADD:
        if (__builtin_add_overflow(x, y, &r)) break;
        return jx_int(r);
    case JOP_SUB:
        if (__builtin_sub_overflow(x, y, &r)) break;
        return jx_int(r);
    case JOP_MUL:
        if (__builtin_mul_overflow(x, y, &r)) break;
        return jx_int(r);
    case JOP_FLOORDIV:
    case JOP_MOD: {
        if (y == 0) jx_fail(c, KILN_ERR_INVALID, "chat template: integer division by zero");
        if (x == INT64_MIN && y == -1) break;
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
            q--;
            m += y;
        }
        return jx_int(op == JOP_MOD ? m : q);
    }
    case JOP_POW: {
        if (y < 0) return jx_float(pow((double)x, (double)y));
        int64_t acc = 1;
        for (int64_t i = 0; i < y; i++) {
            if (__builtin_mul_overflow(acc, x, &acc)) goto overflow;
            if (acc == 0 || acc == 1) break;
        }
        return jx_int(acc);
    }
    }
overflow:
    jx_fail(c, KILN_ERR_INVALID, "chat template: integer overflow in %s", names[op]);
}

static bool contains(struct jctx *c, struct jv hay, struct jv needle)
{
    switch (hay.kind) {
    case JV_STR:
        if (needle.kind != JV_STR)
            jx_fail(c, KILN_ERR_INVALID,
                    "chat template: 'in <string>' requires string as left operand, not %s",
                    jx_kind_name(needle));
        return needle.s->n == 0 || memmem(hay.s->p, hay.s->n, needle.s->p, needle.s->n) != NULL;
    case JV_LIST:
        for (size_t i = 0; i < hay.l->n; i++)
            if (jx_equal(hay.l->v[i], needle)) return true;
        return false;
    case JV_DICT:
    case JV_NS:
        return jx_dict_get(hay.d, needle, NULL);
    case JV_UNDEF:
        return false;
    default:
        jx_fail(c, KILN_ERR_INVALID, "chat template: argument of type '%s' is not iterable",
                jx_kind_name(hay));
    }
}

/* ---- scopes ---- */

static struct jscope *scope_new(struct jctx *c, struct jscope *parent)
{
    struct jscope *s = cal(c, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(struct jctx *c, struct jscope *s, const char *name, struct jv v)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) {
            s->vals[i] = v;
            return;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nn = cal(c, cap * sizeof *nn);
        struct jv *nv = cal(c, cap * sizeof *nv);
        if (s->n) {
            memcpy(nn, s->names, s->n * sizeof *nn);
            memcpy(nv, s->vals, s->n * sizeof *nv);
        }
        s->names = nn;
        s->vals = nv;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n++] = v;
}

static bool scope_get(struct jscope *s, const char *name, struct jv *out)
{
    for (; s; s = s->parent)
        for (size_t i = s->n; i-- > 0;)
            if (!strcmp(s->names[i], name)) {
                *out = s->vals[i];
                return true;
            }
    return false;
}

/* ---- evaluation ---- */

static struct jv eval(struct jctx *c, struct jscope *sc, const struct jnode *n);

static void step(struct jctx *c)
{
    if (++c->steps > MAX_STEPS)
        jx_fail(c, KILN_ERR_LIMIT, "chat template: too many steps (a loop that does not end?)");
}

enum flow { FLOW_NEXT, FLOW_BREAK, FLOW_CONTINUE };
static enum flow exec_body(struct jctx *c, struct jscope *sc, const struct jnode *body);

static void eval_args(struct jctx *c, struct jscope *sc, const struct jnode *n, size_t first,
                      struct jv **args, size_t *nargs, struct jv **kw)
{
    size_t total = n->n - first;
    *nargs = total - n->nkw;
    *args = cal(c, (total + 1) * sizeof **args);
    for (size_t i = 0; i < total; i++) (*args)[i] = eval(c, sc, n->a[first + i]);
    *kw = *args + *nargs;
}

struct jv jx_call_macro(struct jctx *c, const struct jnode *m, struct jv *args, size_t nargs,
                        const char **kwnames, struct jv *kwargs, size_t nkw)
{
    if (++c->depth > 64) jx_fail(c, KILN_ERR_LIMIT, "chat template: macro calls nested too deeply");
    struct jscope *sc = scope_new(c, c->root);
    if (nargs > m->nnames)
        jx_fail(c, KILN_ERR_INVALID, "chat template: macro '%s' takes %zu arguments, got %zu", m->s,
                m->nnames, nargs);
    for (size_t i = 0; i < m->nnames; i++) {
        struct jv v = jx_undef(m->names[i]);
        bool set = false;
        if (i < nargs) {
            v = args[i];
            set = true;
        }
        for (size_t k = 0; k < nkw; k++)
            if (!strcmp(kwnames[k], m->names[i])) {
                v = kwargs[k];
                set = true;
            }
        if (!set && m->a[i + 1]) v = eval(c, sc, m->a[i + 1]);
        scope_set(c, sc, m->names[i], v);
    }
    for (size_t k = 0; k < nkw; k++) {
        bool known = false;
        for (size_t i = 0; i < m->nnames; i++) known |= !strcmp(kwnames[k], m->names[i]);
        if (!known)
            jx_fail(c, KILN_ERR_INVALID, "chat template: macro '%s' has no argument '%s'", m->s,
                    kwnames[k]);
    }
    struct tk_buf *saved = c->out;
    c->out = jx_buf(c);
    int saved_loop = c->loop_depth;
    c->loop_depth = 0;
    exec_body(c, sc, m->a[0]);
    c->loop_depth = saved_loop;
    struct tk_buf *got = c->out;
    c->out = saved;
    if (got->oom) jx_fail(c, KILN_ERR_NOMEM, "chat template: out of memory");
    struct jv r = jx_str(c, got->p ? got->p : "", got->n);
    jx_buf_free(c, got);
    c->depth--;
    return r;
}

static struct jv eval(struct jctx *c, struct jscope *sc, const struct jnode *n)
{
    step(c);
    switch (n->kind) {
    case JN_LIT:
        return n->lit;
    case JN_NAME: {
        struct jv v;
        if (scope_get(sc, n->s, &v)) return v;
        int g = jl_global_id(n->s);
        if (g >= 0) {
            struct jfunc *f = cal(c, sizeof *f);
            f->id = g;
            f->name = n->s;
            return (struct jv){.kind = JV_FUNC, .fn = f};
        }
        return jx_undef(n->s);
    }
    case JN_LIST:
    case JN_TUPLE: {
        struct jv l = jx_list(c, n->n, n->kind == JN_TUPLE);
        for (size_t i = 0; i < n->n; i++) jx_list_push(c, l, eval(c, sc, n->a[i]));
        return l;
    }
    case JN_DICT: {
        struct jv d = jx_dict(c, n->n / 2);
        for (size_t i = 0; i + 1 < n->n; i += 2)
            jx_dict_set(c, d.d, eval(c, sc, n->a[i]), eval(c, sc, n->a[i + 1]));
        return d;
    }
    case JN_ATTR:
        return jx_getattr(c, eval(c, sc, n->a[0]), n->s, n->slen);
    case JN_ITEM:
        return jx_getitem(c, eval(c, sc, n->a[0]), eval(c, sc, n->a[1]));
    case JN_SLICE: {
        struct jv obj = eval(c, sc, n->a[0]);
        struct jv parts[3];
        for (int k = 0; k < 3; k++) parts[k] = n->a[k + 1] ? eval(c, sc, n->a[k + 1]) : jx_none();
        return slice(c, obj, parts);
    }
    case JN_CALL: {
        struct jv f = eval(c, sc, n->a[0]);
        struct jv *args, *kw;
        size_t nargs;
        eval_args(c, sc, n, 1, &args, &nargs, &kw);
        if (f.kind == JV_MACRO) return jx_call_macro(c, f.macro, args, nargs, n->names, kw, n->nkw);
        if (f.kind == JV_FUNC) return jl_call(c, f.fn, args, nargs, n->names, kw, n->nkw);
        if (f.kind == JV_UNDEF)
            jx_fail(c, KILN_ERR_INVALID, "chat template: '%s' is undefined",
                    f.uname ? f.uname : "function");
        jx_fail(c, KILN_ERR_INVALID, "chat template: '%s' object is not callable", jx_kind_name(f));
    }
    case JN_FILTER: {
        struct jv v = eval(c, sc, n->a[0]);
        struct jv *args, *kw;
        size_t nargs;
        eval_args(c, sc, n, 1, &args, &nargs, &kw);
        return jl_filter(c, n->builtin, n->s, v, args, nargs, n->names, kw, n->nkw);
    }
    case JN_TEST: {
        struct jv v;
        /* "x is defined" must not fail on an undefined attribute chain's last link */
        v = eval(c, sc, n->a[0]);
        struct jv *args, *kw;
        size_t nargs;
        eval_args(c, sc, n, 1, &args, &nargs, &kw);
        bool r = jl_test(c, n->builtin, n->s, v, args, nargs);
        return jx_bool(n->negate ? !r : r);
    }
    case JN_NEG:
    case JN_POS: {
        struct jv v = eval(c, sc, n->a[0]);
        if (!is_num(v))
            jx_fail(c, KILN_ERR_INVALID, "chat template: bad operand type for unary %c: '%s'",
                    n->kind == JN_NEG ? '-' : '+', jx_kind_name(v));
        if (n->kind == JN_POS) return v.kind == JV_BOOL ? jx_int(v.b) : v;
        if (v.kind == JV_FLOAT) return jx_float(-v.f);
        if (num_i(v) == INT64_MIN) jx_fail(c, KILN_ERR_INVALID, "chat template: integer overflow");
        return jx_int(-num_i(v));
    }
    case JN_NOT:
        return jx_bool(!jx_truthy(eval(c, sc, n->a[0])));
    case JN_AND: {
        struct jv a = eval(c, sc, n->a[0]);
        return jx_truthy(a) ? eval(c, sc, n->a[1]) : a;
    }
    case JN_OR: {
        struct jv a = eval(c, sc, n->a[0]);
        return jx_truthy(a) ? a : eval(c, sc, n->a[1]);
    }
    case JN_BIN:
        return jx_binop(c, n->op, eval(c, sc, n->a[0]), eval(c, sc, n->a[1]));
    case JN_CMP: {
        struct jv left = eval(c, sc, n->a[0]);
        for (size_t i = 1; i < n->n; i++) {
            struct jv right = eval(c, sc, n->a[i]);
            bool r;
            switch (n->ops[i - 1]) {
            case JOP_EQ:
                r = jx_equal(left, right);
                break;
            case JOP_NE:
                r = !jx_equal(left, right);
                break;
            case JOP_LT:
                r = jx_compare(c, left, right) < 0;
                break;
            case JOP_LE:
                r = jx_compare(c, left, right) <= 0;
                break;
            case JOP_GT:
                r = jx_compare(c, left, right) > 0;
                break;
            case JOP_GE:
                r = jx_compare(c, left, right) >= 0;
                break;
            case JOP_IN:
                r = contains(c, right, left);
                break;
            default:
                r = !contains(c, right, left);
                break;
            }
            if (!r) return jx_bool(false);
            left = right;
        }
        return jx_bool(true);
    }
    case JN_COND:
        if (jx_truthy(eval(c, sc, n->a[1]))) return eval(c, sc, n->a[0]);
        return n->a[2] ? eval(c, sc, n->a[2]) : jx_undef(NULL);
    default:
        break;
    }
    jx_fail(c, KILN_ERR_INTERNAL, "chat template: node %d is not an expression", n->kind);
}

/* ---- statements ---- */

static enum flow exec(struct jctx *c, struct jscope *sc, const struct jnode *n);

static void emit(struct jctx *c, const char *s, size_t n)
{
    tk_buf_put(c->out, s, n);
    if (c->out->oom) jx_fail(c, KILN_ERR_NOMEM, "chat template: out of memory");
    if (c->out->n > MAX_OUTPUT) jx_fail(c, KILN_ERR_LIMIT, "chat template: output over 64 MiB");
}

static enum flow exec_body(struct jctx *c, struct jscope *sc, const struct jnode *body)
{
    for (size_t i = 0; i < body->n; i++) {
        enum flow f = exec(c, sc, body->a[i]);
        if (f != FLOW_NEXT) return f;
    }
    return FLOW_NEXT;
}

static void assign_targets(struct jctx *c, struct jscope *sc, const char **names, size_t n,
                           struct jv v)
{
    if (n == 1) {
        scope_set(c, sc, names[0], v);
        return;
    }
    struct jv l = jx_as_list(c, v);
    if (l.l->n != n)
        jx_fail(c, KILN_ERR_INVALID, "chat template: cannot unpack %zu values into %zu names",
                l.l->n, n);
    for (size_t i = 0; i < n; i++) scope_set(c, sc, names[i], l.l->v[i]);
}

static enum flow exec_for(struct jctx *c, struct jscope *sc, const struct jnode *n)
{
    struct jv seq = eval(c, sc, n->a[0]);
    struct jv items = jx_as_list(c, seq);
    if (seq.kind == JV_DICT) items = jx_as_list(c, seq); /* keys, as Python iterates dicts */
    /* the optional "if" filters before loop.* is computed */
    struct jv list = items;
    if (n->a[1]) {
        list = jx_list(c, items.l->n, false);
        for (size_t i = 0; i < items.l->n; i++) {
            struct jscope *fs = scope_new(c, sc);
            assign_targets(c, fs, n->names, n->nnames, items.l->v[i]);
            if (jx_truthy(eval(c, fs, n->a[1]))) jx_list_push(c, list, items.l->v[i]);
        }
    }
    if (list.l->n == 0) {
        if (n->a[3]) return exec_body(c, sc, n->a[3]);
        return FLOW_NEXT;
    }
    struct jloop *lp = cal(c, sizeof *lp);
    lp->length = (int64_t)list.l->n;
    lp->depth0 = 0; /* depth counts recursive loops only, which kiln does not have */
    c->loop_depth++;
    struct jv loopv = {.kind = JV_LOOP, .loop = lp};
    for (size_t i = 0; i < list.l->n; i++) {
        step(c);
        lp->index0 = (int64_t)i;
        lp->has_prev = i > 0;
        lp->has_next = i + 1 < list.l->n;
        if (lp->has_prev) lp->prev = list.l->v[i - 1];
        if (lp->has_next) lp->next = list.l->v[i + 1];
        struct jscope *body = scope_new(c, sc);
        scope_set(c, body, "loop", loopv);
        assign_targets(c, body, n->names, n->nnames, list.l->v[i]);
        enum flow f = exec_body(c, body, n->a[2]);
        if (f == FLOW_BREAK) break;
    }
    c->loop_depth--;
    return FLOW_NEXT;
}

static enum flow exec(struct jctx *c, struct jscope *sc, const struct jnode *n)
{
    step(c);
    switch (n->kind) {
    case JN_TEXT:
        emit(c, n->s, n->slen);
        return FLOW_NEXT;
    case JN_PRINT: {
        struct jv v = eval(c, sc, n->a[0]);
        if (v.kind == JV_STR)
            emit(c, v.s->p, v.s->n);
        else {
            struct tk_buf *b = jx_buf(c);
            jx_to_str(c, b, v);
            emit(c, b->p ? b->p : "", b->n);
            jx_buf_free(c, b);
        }
        return FLOW_NEXT;
    }
    case JN_BODY:
        return exec_body(c, sc, n);
    case JN_IF:
        if (jx_truthy(eval(c, sc, n->a[0]))) return exec_body(c, sc, n->a[1]);
        if (!n->a[2]) return FLOW_NEXT;
        return n->a[2]->kind == JN_IF ? exec(c, sc, n->a[2]) : exec_body(c, sc, n->a[2]);
    case JN_FOR:
        return exec_for(c, sc, n);
    case JN_SET: {
        struct jv v = eval(c, sc, n->a[0]);
        if (n->negate) { /* ns.attr = v */
            struct jv ns;
            if (!scope_get(sc, n->names[0], &ns) || ns.kind != JV_NS)
                jx_fail(c, KILN_ERR_INVALID,
                        "chat template: cannot assign attribute on non-namespace object '%s'",
                        n->names[0]);
            jx_dict_set(c, ns.d, jx_cstr(c, n->names[1]), v);
            return FLOW_NEXT;
        }
        assign_targets(c, sc, n->names, n->nnames, v);
        return FLOW_NEXT;
    }
    case JN_SETBLOCK: {
        struct tk_buf *saved = c->out;
        c->out = jx_buf(c);
        exec_body(c, sc, n->a[0]);
        struct tk_buf *got = c->out;
        c->out = saved;
        struct jv v = jx_str(c, got->p ? got->p : "", got->n);
        jx_buf_free(c, got);
        if (n->a[1]) {
            const struct jnode *f = n->a[1];
            struct jv *args, *kw;
            size_t nargs;
            eval_args(c, sc, f, 1, &args, &nargs, &kw);
            v = jl_filter(c, f->builtin, f->s, v, args, nargs, f->names, kw, f->nkw);
        }
        scope_set(c, sc, n->names[0], v);
        return FLOW_NEXT;
    }
    case JN_MACRO:
        scope_set(c, sc, n->s, (struct jv){.kind = JV_MACRO, .macro = n});
        return FLOW_NEXT;
    case JN_BREAK:
        if (!c->loop_depth) jx_fail(c, KILN_ERR_INVALID, "chat template: break outside a loop");
        return FLOW_BREAK;
    case JN_CONTINUE:
        if (!c->loop_depth) jx_fail(c, KILN_ERR_INVALID, "chat template: continue outside a loop");
        return FLOW_CONTINUE;
    case JN_FILTERBLOCK: {
        struct tk_buf *saved = c->out;
        c->out = jx_buf(c);
        enum flow fl = exec_body(c, sc, n->a[1]);
        struct tk_buf *got = c->out;
        c->out = saved;
        struct jv v = jx_str(c, got->p ? got->p : "", got->n);
        jx_buf_free(c, got);
        /* innermost filter first */
        const struct jnode *chain[32];
        size_t depth = 0;
        for (const struct jnode *f = n->a[0]; f && depth < 32; f = f->a[0]) chain[depth++] = f;
        for (size_t i = depth; i-- > 0;) {
            const struct jnode *f = chain[i];
            struct jv *args, *kw;
            size_t nargs;
            eval_args(c, sc, f, 1, &args, &nargs, &kw);
            v = jl_filter(c, f->builtin, f->s, v, args, nargs, f->names, kw, f->nkw);
        }
        struct jv s = jx_stringify(c, v);
        emit(c, s.s->p, s.s->n);
        return fl;
    }
    case JN_WITH: {
        struct jscope *inner = scope_new(c, sc);
        for (size_t i = 0; i < n->nnames; i++)
            scope_set(c, inner, n->names[i], eval(c, sc, n->a[i]));
        return exec_body(c, inner, n->a[n->nnames]);
    }
    default:
        break;
    }
    eval(c, sc, n);
    return FLOW_NEXT;
}

/* ---- JSON -> values ---- */

static struct jv from_json(struct jctx *c, json_t *j, int depth)
{
    if (depth > MAX_DEPTH) jx_fail(c, KILN_ERR_LIMIT, "chat template: input nested too deeply");
    switch (json_typeof(j)) {
    case JSON_STRING:
        return jx_str(c, json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        return jx_int(json_integer_value(j));
    case JSON_REAL:
        return jx_float(json_real_value(j));
    case JSON_TRUE:
        return jx_bool(true);
    case JSON_FALSE:
        return jx_bool(false);
    case JSON_NULL:
        return jx_none();
    case JSON_ARRAY: {
        struct jv l = jx_list(c, json_array_size(j), false);
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) jx_list_push(c, l, from_json(c, v, depth + 1));
        return l;
    }
    case JSON_OBJECT: {
        struct jv d = jx_dict(c, json_object_size(j) + 1);
        const char *k;
        size_t klen;
        json_t *v;
        size_t i = 0;
        json_object_keylen_foreach(j, k, klen, v)
        {
            /* JSON object keys are unique: append without jx_dict_set's linear check, so a
             * large object costs O(n) */
            d.d->k[i] = jx_str(c, k, klen);
            d.d->v[i] = from_json(c, v, depth + 1);
            d.d->n = ++i;
        }
        return d;
    }
    }
    return jx_none();
}

static void release(struct jctx *c)
{
    for (struct jbuf *j = c->bufs; j; j = j->next_all) free(j->b.p);
    ja_free(&c->arena);
    free(c);
}

enum kiln_status kiln_jinja_render(const struct kiln_jinja *t, json_t *vars, char **out,
                                   size_t *len, struct kiln_error *err)
{
    *out = NULL;
    if (len) *len = 0;
    struct jctx *c = calloc(1, sizeof *c);
    if (!c) return kiln_errorf(err, KILN_ERR_NOMEM, "chat template: out of memory");
    c->err = err;
    c->arena.limit = (size_t)1 << 30;
    if (setjmp(c->jmp)) {
        release(c);
        return err ? err->code : KILN_ERR_INVALID;
    }
    c->out = jx_buf(c);
    c->root = scope_new(c, NULL);
    const char *k;
    json_t *v;
    json_object_foreach(vars, k, v)
    {
        scope_set(c, c->root, jx_cstr(c, k).s->p, from_json(c, v, 0));
    }
    exec_body(c, c->root, t->root);
    if (c->out->oom) jx_fail(c, KILN_ERR_NOMEM, "chat template: out of memory");
    /* hand the output buffer over; release() frees the rest */
    enum kiln_status st = tk_buf_finish(c->out, out, len, err);
    release(c);
    return st;
}
