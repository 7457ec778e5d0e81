/* Jinja interpreter internals shared by jinja_parse.c, jinja_eval.c and jinja_lib.c. Values and
 * syntax nodes live in arenas: one per compiled template (nodes), one per render (values), so
 * nothing is freed piecemeal and an error can unwind with longjmp. */
#ifndef KILN_TOKENIZER_JINJA_IMPL_H
#define KILN_TOKENIZER_JINJA_IMPL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "jinja.h"

/* ---- arena ---- */
struct jarena {
    struct jchunk *head;
    size_t used_total, limit; /* bytes handed out, and the most allowed */
};
void *ja_alloc(struct jarena *a, size_t n); /* zeroed; NULL past the limit or out of memory */
void ja_free(struct jarena *a);

/* ---- values ---- */
enum jv_kind {
    JV_UNDEF,
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,  /* also tuples (l->tuple) */
    JV_DICT,  /* insertion-ordered */
    JV_NS,    /* namespace(): a dict whose attributes `set` may change */
    JV_MACRO, /* a macro defined by the template */
    JV_FUNC,  /* a built-in callable, maybe bound to a receiver (a string method...) */
    JV_LOOP,  /* the `loop` variable of a for loop */
};

struct jstr {
    size_t n;
    char p[]; /* n bytes of UTF-8, then NUL */
};
struct jv;
struct jlist {
    size_t n, cap;
    struct jv *v;
    bool tuple;
};
struct jdict {
    size_t n, cap;
    struct jv *k, *v;
};
struct jnode;
struct jloop;
struct jfunc {
    int id;           /* enum in jinja_lib.c */
    struct jv *self;  /* receiver of a method, or NULL */
    const char *name; /* for messages */
};
struct jv {
    uint8_t kind;
    union {
        bool b;
        int64_t i;
        double f;
        struct jstr *s;
        struct jlist *l;
        struct jdict *d;
        const struct jnode *macro;
        struct jfunc *fn;
        struct jloop *loop;
        const char *uname; /* JV_UNDEF: the name that was not found (may be NULL) */
    };
};
struct jloop {
    int64_t index0, length, depth0;
    struct jv prev, next; /* JV_UNDEF at the ends */
    bool has_prev, has_next;
};

/* ---- syntax ---- */
enum jn_kind {
    /* expressions */
    JN_LIT,
    JN_NAME,
    JN_LIST,
    JN_TUPLE,
    JN_DICT,   /* a[] = k0, v0, k1, v1, ... */
    JN_ATTR,   /* a[0] . s */
    JN_ITEM,   /* a[0] [ a[1] ] */
    JN_SLICE,  /* a[0] [ a[1] : a[2] : a[3] ]  (NULL parts allowed) */
    JN_CALL,   /* a[0] ( a[1..] ), the last nkw of them named by names[] */
    JN_FILTER, /* s ( a[0] = value, a[1..] args ), kwargs as in JN_CALL */
    JN_TEST,   /* a[0] is [not] s ( a[1..] ) */
    JN_NEG,
    JN_POS,
    JN_NOT,
    JN_BIN, /* a[0] op a[1]: + - * / // % ** ~ */
    JN_AND,
    JN_OR,
    JN_CMP,  /* a[0] ops[0] a[1] ops[1] a[2] ... (chained) */
    JN_COND, /* a[0] if a[1] else a[2] (a[2] may be NULL) */
    /* statements */
    JN_TEXT,
    JN_PRINT,
    JN_BODY,     /* a[] statements */
    JN_IF,       /* a[0] cond, a[1] body, a[2] else body (or NULL) */
    JN_FOR,      /* names[] targets, a[0] iterable, a[1] filter (or NULL), a[2] body, a[3] else */
    JN_SET,      /* names[0] (and names[1] = attribute for ns.attr, or names[] for unpacking) */
    JN_SETBLOCK, /* names[0] = rendered a[0] */
    JN_MACRO,    /* s name, names[] params, a[0] body, a[1..] defaults (NULL = required) */
    JN_BREAK,
    JN_CONTINUE,
    JN_FILTERBLOCK, /* a[0] filter node (value slot NULL), a[1] body */
    JN_WITH,        /* names[] = a[0..k-1] values, a[k] body */
};

enum jop {
    JOP_ADD,
    JOP_SUB,
    JOP_MUL,
    JOP_DIV,
    JOP_FLOORDIV,
    JOP_MOD,
    JOP_POW,
    JOP_CONCAT,
    JOP_EQ,
    JOP_NE,
    JOP_LT,
    JOP_LE,
    JOP_GT,
    JOP_GE,
    JOP_IN,
    JOP_NOTIN,
};

struct jnode {
    uint8_t kind;
    bool negate; /* JN_TEST: "is not"; JN_SET: attribute assignment */
    int op;      /* JN_BIN */
    int line;
    int builtin;   /* JN_FILTER / JN_TEST: resolved built-in id */
    const char *s; /* name, text, attribute, filter/test name */
    size_t slen;
    struct jnode **a;
    size_t n;
    const char **names;
    size_t nnames;
    size_t nkw; /* trailing keyword arguments in a[] (JN_CALL, JN_FILTER, JN_TEST) */
    int *ops;   /* JN_CMP */
    struct jv lit;
};

struct kiln_jinja {
    struct jarena arena;
    struct jnode *root;
};

/* ---- built-ins (jinja_lib.c) ---- */
int jl_filter_id(const char *name); /* -1 when unknown */
int jl_test_id(const char *name);   /* -1 when unknown */
int jl_global_id(const char *name); /* -1 when unknown */
bool jl_is_known_method(const char *name);

/* ---- rendering state (jinja_eval.c) ---- */
struct jscope {
    struct jscope *parent;
    size_t n, cap;
    const char **names;
    struct jv *vals;
};

struct jbuf; /* a tk_buf registered with the render, freed if an error unwinds */

struct jctx {
    struct jarena arena;
    struct tk_buf *out; /* where text goes (macros and set blocks swap it) */
    struct jbuf *bufs, *free_bufs;
    struct jscope *root; /* template top level */
    jmp_buf jmp;
    struct kiln_error *err;
    uint64_t steps;
    int depth;
    int loop_depth;
};

_Noreturn void jx_fail(struct jctx *c, enum kiln_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Temporary buffers: taken from the render, handed back with jx_buf_free; whatever an error
 * leaves behind is freed by kiln_jinja_render. */
struct tk_buf *jx_buf(struct jctx *c);
void jx_buf_free(struct jctx *c, struct tk_buf *b);
struct jv jx_str(struct jctx *c, const char *s, size_t n);
struct jv jx_cstr(struct jctx *c, const char *s);
struct jv jx_int(int64_t i);
struct jv jx_float(double f);
struct jv jx_bool(bool b);
struct jv jx_none(void);
struct jv jx_undef(const char *name);
struct jv jx_list(struct jctx *c, size_t cap, bool tuple);
void jx_list_push(struct jctx *c, struct jv list, struct jv v);
struct jv jx_dict(struct jctx *c, size_t cap);
void jx_dict_set(struct jctx *c, struct jdict *d, struct jv k, struct jv v);
bool jx_dict_get(const struct jdict *d, struct jv k, struct jv *out);
bool jx_truthy(struct jv v);
bool jx_equal(struct jv a, struct jv b);
int jx_compare(struct jctx *c, struct jv a, struct jv b); /* <0, 0, >0; fails on mixed types */
/* str(v) as Python prints it (and as {{ v }} outputs it) */
void jx_to_str(struct jctx *c, struct tk_buf *b, struct jv v);
struct jv jx_stringify(struct jctx *c, struct jv v);
void jx_repr(struct jctx *c, struct tk_buf *b, struct jv v);
const char *jx_kind_name(struct jv v);
/* iteration: lists/tuples, dict keys, string characters; undefined iterates as empty */
struct jv jx_as_list(struct jctx *c, struct jv v);
struct jv jx_getattr(struct jctx *c, struct jv obj, const char *name, size_t n);
struct jv jx_getitem(struct jctx *c, struct jv obj, struct jv key);
struct jv jx_call_macro(struct jctx *c, const struct jnode *m, struct jv *args, size_t nargs,
                        const char **kwnames, struct jv *kwargs, size_t nkw);
struct jv jx_binop(struct jctx *c, int op, struct jv a, struct jv b);

/* built-in calls (jinja_lib.c) */
struct jv jl_filter(struct jctx *c, int id, const char *name, struct jv v, struct jv *args,
                    size_t nargs, const char **kwnames, struct jv *kwargs, size_t nkw);
bool jl_test(struct jctx *c, int id, const char *name, struct jv v, struct jv *args, size_t nargs);
struct jv jl_call(struct jctx *c, struct jfunc *fn, struct jv *args, size_t nargs,
                  const char **kwnames, struct jv *kwargs, size_t nkw);
/* obj.name when obj is a string, list, dict or loop and name one of its methods; JV_UNDEF
 * otherwise */
struct jv jl_method(struct jctx *c, struct jv obj, const char *name, size_t n);
struct jl_json_opts {
    int indent;           /* -1: one line */
    const char *item_sep; /* ", " (or "," with indent) */
    const char *key_sep;  /* ": " */
    bool sort_keys;
    bool ascii; /* ensure_ascii: non-ASCII as \uXXXX */
};
void jl_tojson(struct jctx *c, struct tk_buf *b, struct jv v, const struct jl_json_opts *o,
               int level);
void jl_format_float(struct tk_buf *b, double f); /* Python repr(float) */

#endif
