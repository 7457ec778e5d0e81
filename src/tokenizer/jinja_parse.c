/* Jinja template -> syntax tree. The lexer applies Jinja's whitespace rules as transformers
 * sets them (trim_blocks, lstrip_blocks, "-" and "+" markers, one trailing newline dropped),
 * the parser follows jinja2's grammar and precedence (parser.py), and every name that must be a
 * built-in (filters, tests, global functions, methods) is checked here. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

/* ---- arena ---- */

struct jchunk {
    struct jchunk *next;
    size_t cap, used;
    max_align_t data[];
};

void *ja_alloc(struct jarena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (a->limit && a->used_total + n > a->limit) return NULL;
    struct jchunk *c = a->head;
    if (!c || c->used + n > c->cap) {
        size_t cap = n > 65536 ? n : 65536;
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    a->used_total += n;
    memset(p, 0, n);
    return p;
}

void ja_free(struct jarena *a)
{
    struct jchunk *c = a->head;
    while (c) {
        struct jchunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->used_total = 0;
}

/* ---- lexer: template -> items (text, {{ expr }}, {% stmt %}) ---- */

enum item_kind { IT_TEXT, IT_EXPR, IT_STMT };
struct item {
    enum item_kind kind;
    const char *p; /* text (owned, normalized) or tag content */
    size_t n;
    int line;
};

enum tok_kind { T_END, T_NAME, T_INT, T_FLOAT, T_STR, T_OP };
struct tok {
    enum tok_kind kind;
    const char *p; /* name/op text, or decoded string */
    size_t n;
    int64_t i;
    double f;
};

struct parser {
    struct kiln_jinja *t;
    struct kiln_error *err;
    jmp_buf jmp;
    struct item *items;
    size_t nitems, pos;
    /* tokens of the current tag */
    struct tok *toks;
    size_t ntoks, tpos, tcap;
    int line;
    int depth;
    const char *src;
    size_t src_len;
    /* macro names defined anywhere (calls to them are allowed) */
    const char **macros;
    size_t nmacros;
};

_Noreturn static void perr(struct parser *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void perr(struct parser *p, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kiln_errorf(p->err, KILN_ERR_UNSUPPORTED, "template line %d: %s", p->line, msg);
    longjmp(p->jmp, 1);
}

static void *palloc(struct parser *p, size_t n)
{
    void *m = ja_alloc(&p->t->arena, n);
    if (!m) {
        kiln_errorf(p->err, KILN_ERR_NOMEM, "template: out of memory");
        longjmp(p->jmp, 1);
    }
    return m;
}

static char *pdup(struct parser *p, const char *s, size_t n)
{
    char *d = palloc(p, n + 1);
    memcpy(d, s, n);
    return d;
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static void push_item(struct parser *p, struct item it, size_t *cap)
{
    if (p->nitems == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        struct item *v = palloc(p, *cap * sizeof *v);
        if (p->nitems) memcpy(v, p->items, p->nitems * sizeof *v);
        p->items = v;
    }
    p->items[p->nitems++] = it;
}

/* Text with "\r\n" and "\r" turned into "\n" (jinja2 normalizes template data). */
static void push_text(struct parser *p, const char *s, size_t n, int line, size_t *cap)
{
    if (n == 0) return;
    char *d = palloc(p, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            d[k++] = '\n';
            if (i + 1 < n && s[i + 1] == '\n') i++;
        } else {
            d[k++] = s[i];
        }
    }
    push_item(p, (struct item){IT_TEXT, d, k, line}, cap);
}

static int count_lines(const char *s, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++) c += s[i] == '\n';
    return c;
}

/* End of a tag starting at s[i] (just after the opening delimiter): the offset of the closing
 * delimiter's first character ('-', '+' or the delimiter itself), skipping string literals. */
static size_t find_tag_end(const char *s, size_t n, size_t i, char close, size_t *after)
{
    char quote = 0;
    size_t start = i;
    for (; i + 1 < n; i++) {
        char c = s[i];
        if (quote) {
            if (c == '\\')
                i++;
            else if (c == quote)
                quote = 0;
            continue;
        }
        if ((c == '\'' || c == '"') && close != '#') {
            quote = c;
            continue;
        }
        if (c == close && s[i + 1] == '}') {
            *after = i + 2;
            if (i > start && (s[i - 1] == '-' || s[i - 1] == '+')) return i - 1;
            return i;
        }
    }
    return (size_t)-1;
}

static bool tag_is(const char *s, size_t n, const char *word)
{
    while (n && is_ws(*s)) s++, n--;
    while (n && is_ws(s[n - 1])) n--;
    size_t wl = strlen(word);
    return n == wl && !memcmp(s, word, wl);
}

static void lex(struct parser *p, const char *src, size_t n)
{
    size_t cap = 0, i = 0, text_start = 0;
    int line = 1;
    bool strip_next = false; /* previous tag ended with '-' */
    bool line_start = true;  /* the pending text begins a line */
    /* keep_trailing_newline=False: one final "\n", "\r\n" or "\r" is dropped */
    if (n > 0 && src[n - 1] == '\n') {
        n--;
        if (n > 0 && src[n - 1] == '\r') n--;
    } else if (n > 0 && src[n - 1] == '\r') {
        n--;
    }
    while (i <= n) {
        size_t open = i;
        while (open + 1 < n &&
               !(src[open] == '{' &&
                 (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#')))
            open++;
        bool at_end = open + 1 >= n;
        if (at_end) open = n;
        /* text before the tag; the previous tag's "-" ate leading whitespace */
        size_t ts = text_start, te = open;
        if (strip_next) {
            while (ts < te && is_ws(src[ts])) ts++;
            line_start = ts > text_start && src[ts - 1] == '\n';
        }
        char kind = at_end ? 0 : src[open + 1];
        char mod = !at_end && open + 2 < n ? src[open + 2] : 0;
        if (!at_end) {
            if (mod == '-') {
                while (te > ts && is_ws(src[te - 1])) te--;
            } else if (mod != '+' && kind != '{') {
                /* lstrip_blocks: spaces and tabs before a block or comment on its own line */
                size_t k = te;
                while (k > ts && (src[k - 1] == ' ' || src[k - 1] == '\t')) k--;
                if ((k > ts && src[k - 1] == '\n') || (k == ts && line_start)) te = k;
            }
        }
        push_text(p, src + ts, te - ts, line, &cap);
        line += count_lines(src + text_start, open - text_start);
        if (at_end) break;
        p->line = line;
        size_t body = open + 2 + (mod == '-' || mod == '+');
        char close = kind == '{' ? '}' : kind;
        size_t after;
        size_t end = find_tag_end(src, n, body, close, &after);
        if (end == (size_t)-1) perr(p, "unclosed '{%c'", kind);
        char endmod = src[end];
        size_t content_end = end; /* the '-' / '+' marker or the closing delimiter */
        line += count_lines(src + open, after - open);
        strip_next = endmod == '-';
        line_start = false;
        if (kind != '{' && endmod != '-' && endmod != '+') {
            /* trim_blocks: drop the newline right after a block or comment */
            if (after < n && src[after] == '\n') {
                after++;
                line_start = true;
            } else if (after + 1 < n && src[after] == '\r' && src[after + 1] == '\n') {
                after += 2;
                line_start = true;
            }
        }
        if (kind == '%' && tag_is(src + body, content_end - body, "raw")) {
            /* everything up to {% endraw %} is text */
            size_t k = after;
            for (;;) {
                while (k + 1 < n && !(src[k] == '{' && src[k + 1] == '%')) k++;
                if (k + 1 >= n) perr(p, "{%% raw %%} without {%% endraw %%}");
                size_t ra;
                char rmod = k + 2 < n ? src[k + 2] : 0;
                size_t rb = k + 2 + (rmod == '-' || rmod == '+');
                size_t re = find_tag_end(src, n, rb, '%', &ra);
                if (re != (size_t)-1 && tag_is(src + rb, re - rb, "endraw")) {
                    size_t ts2 = after, te2 = k;
                    if (strip_next)
                        while (ts2 < te2 && is_ws(src[ts2])) ts2++;
                    if (rmod == '-')
                        while (te2 > ts2 && is_ws(src[te2 - 1])) te2--;
                    push_text(p, src + ts2, te2 - ts2, line, &cap);
                    line += count_lines(src + after, ra - after);
                    strip_next = src[re] == '-';
                    after = ra;
                    line_start = false;
                    if (src[re] != '-' && src[re] != '+' && after < n && src[after] == '\n') {
                        after++;
                        line_start = true;
                    }
                    break;
                }
                k += 2;
            }
        } else if (kind != '#') {
            push_item(p,
                      (struct item){kind == '{' ? IT_EXPR : IT_STMT, src + body, content_end - body,
                                    p->line},
                      &cap);
        }
        i = after;
        text_start = after;
        if (i >= n) {
            break;
        }
    }
}

/* ---- tag tokenizer ---- */

static void push_tok(struct parser *p, struct tok t)
{
    if (p->ntoks == p->tcap) {
        p->tcap = p->tcap ? p->tcap * 2 : 32;
        struct tok *v = palloc(p, p->tcap * sizeof *v);
        if (p->ntoks) memcpy(v, p->toks, p->ntoks * sizeof *v);
        p->toks = v;
    }
    p->toks[p->ntoks++] = t;
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Python "unicode-escape" decoding of a string literal body, newlines normalized. */
static void unescape(struct parser *p, const char *s, size_t n, struct tok *t)
{
    struct tk_buf b = {0};
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\r') {
            tk_buf_putc(&b, '\n');
            if (i + 1 < n && s[i + 1] == '\n') i++;
            continue;
        }
        if (c != '\\' || i + 1 >= n) {
            tk_buf_putc(&b, c);
            continue;
        }
        char d = s[++i];
        int digits = 0;
        switch (d) {
        case 'n':
            tk_buf_putc(&b, '\n');
            break;
        case 't':
            tk_buf_putc(&b, '\t');
            break;
        case 'r':
            tk_buf_putc(&b, '\r');
            break;
        case '\\':
            tk_buf_putc(&b, '\\');
            break;
        case '\'':
            tk_buf_putc(&b, '\'');
            break;
        case '"':
            tk_buf_putc(&b, '"');
            break;
        case 'a':
            tk_buf_putc(&b, '\a');
            break;
        case 'b':
            tk_buf_putc(&b, '\b');
            break;
        case 'f':
            tk_buf_putc(&b, '\f');
            break;
        case 'v':
            tk_buf_putc(&b, '\v');
            break;
        case '\n':
            break; /* line continuation */
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
        default:
            if (d >= '0' && d <= '7') {
                int v = d - '0', k = 1;
                while (k < 3 && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '7') {
                    v = v * 8 + (s[++i] - '0');
                    k++;
                }
                tk_buf_put_cp(&b, (uint32_t)v);
            } else {
                tk_buf_putc(&b, '\\');
                tk_buf_putc(&b, d);
            }
        }
        if (digits) {
            uint32_t v = 0;
            for (int k = 0; k < digits; k++) {
                int h = i + 1 < n ? hexv(s[i + 1]) : -1;
                if (h < 0) {
                    free(b.p);
                    perr(p, "bad \\%c escape in a string literal", d);
                }
                v = v * 16 + (uint32_t)h;
                i++;
            }
            if (v > 0x10FFFF || (v >= 0xD800 && v < 0xE000)) {
                free(b.p);
                perr(p, "escape \\%c%X is not a valid character", d, v);
            }
            tk_buf_put_cp(&b, v);
        }
    }
    if (b.oom) {
        free(b.p);
        perr(p, "out of memory");
    }
    t->p = pdup(p, b.p ? b.p : "", b.n);
    t->n = b.n;
    free(b.p);
}

static void tokenize(struct parser *p, const char *s, size_t n)
{
    static const char *const ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                      "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                      "]",  "{",  "}",  ",",  ".",  ":",  "|"};
    p->ntoks = 0;
    p->tpos = 0;
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (is_ws(c)) {
            i++;
            continue;
        }
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
            size_t j = i;
            while (j < n && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
                             (s[j] >= '0' && s[j] <= '9') || s[j] == '_'))
                j++;
            push_tok(p, (struct tok){T_NAME, pdup(p, s + i, j - i), j - i, 0, 0});
            i = j;
            continue;
        }
        if (c >= '0' && c <= '9') {
            char num[128];
            size_t k = 0, j = i;
            bool is_float = false;
            while (j < n && k < sizeof num - 1) {
                char d = s[j];
                if (d >= '0' && d <= '9')
                    num[k++] = d;
                else if (d == '_' && j + 1 < n && s[j + 1] >= '0' && s[j + 1] <= '9') {
                    /* digit separator */
                } else if (d == '.' && !is_float && j + 1 < n && s[j + 1] >= '0' &&
                           s[j + 1] <= '9') {
                    is_float = true;
                    num[k++] = d;
                } else if ((d == 'e' || d == 'E') && j + 1 < n &&
                           ((s[j + 1] >= '0' && s[j + 1] <= '9') ||
                            ((s[j + 1] == '+' || s[j + 1] == '-') && j + 2 < n && s[j + 2] >= '0' &&
                             s[j + 2] <= '9'))) {
                    is_float = true;
                    num[k++] = d;
                    num[k++] = s[++j];
                } else {
                    break;
                }
                j++;
            }
            num[k] = 0;
            struct tok t = {is_float ? T_FLOAT : T_INT, NULL, 0, 0, 0};
            if (is_float)
                t.f = strtod(num, NULL);
            else {
                char *endp;
                unsigned long long v = strtoull(num, &endp, 10);
                if (v > INT64_MAX || k > 19) perr(p, "integer %s is too large", num);
                t.i = (int64_t)v;
            }
            push_tok(p, t);
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != c) j += s[j] == '\\' ? 2 : 1;
            if (j >= n) perr(p, "unterminated string literal");
            struct tok t = {T_STR, NULL, 0, 0, 0};
            unescape(p, s + i + 1, j - i - 1, &t);
            push_tok(p, t);
            i = j + 1;
            continue;
        }
        bool found = false;
        for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
            size_t ol = strlen(ops[k]);
            if (i + ol <= n && !memcmp(s + i, ops[k], ol)) {
                push_tok(p, (struct tok){T_OP, ops[k], ol, 0, 0});
                i += ol;
                found = true;
                break;
            }
        }
        if (!found) perr(p, "unexpected character '%c'", c);
    }
    push_tok(p, (struct tok){T_END, "", 0, 0, 0});
}

/* ---- expression parser ---- */

static struct tok *cur(struct parser *p)
{
    return &p->toks[p->tpos];
}

static bool is_op(struct parser *p, const char *op)
{
    struct tok *t = cur(p);
    return t->kind == T_OP && t->n == strlen(op) && !memcmp(t->p, op, t->n);
}

static bool is_name(struct parser *p, const char *name)
{
    struct tok *t = cur(p);
    return t->kind == T_NAME && t->n == strlen(name) && !memcmp(t->p, name, t->n);
}

static bool accept_op(struct parser *p, const char *op)
{
    if (!is_op(p, op)) return false;
    p->tpos++;
    return true;
}

static bool accept_name(struct parser *p, const char *name)
{
    if (!is_name(p, name)) return false;
    p->tpos++;
    return true;
}

static void expect_op(struct parser *p, const char *op)
{
    if (!accept_op(p, op)) {
        struct tok *t = cur(p);
        perr(p, "expected '%s', found '%.*s'", op, (int)(t->n > 40 ? 40 : t->n),
             t->kind == T_END ? "end of tag" : t->p);
    }
}

static const char *expect_name(struct parser *p)
{
    struct tok *t = cur(p);
    if (t->kind != T_NAME) perr(p, "expected a name");
    p->tpos++;
    return t->p;
}

static struct jnode *node(struct parser *p, enum jn_kind kind, size_t nchildren)
{
    struct jnode *nd = palloc(p, sizeof *nd);
    nd->kind = (uint8_t)kind;
    nd->line = p->line;
    if (nchildren) nd->a = palloc(p, nchildren * sizeof *nd->a);
    nd->n = nchildren;
    return nd;
}

/* growable child list while parsing */
struct nlist {
    struct jnode **v;
    size_t n, cap;
    const char **names;
};

static void nl_push(struct parser *p, struct nlist *l, struct jnode *x, const char *name)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 8;
        struct jnode **v = palloc(p, l->cap * sizeof *v);
        const char **nm = palloc(p, l->cap * sizeof *nm);
        if (l->n) {
            memcpy(v, l->v, l->n * sizeof *v);
            memcpy(nm, l->names, l->n * sizeof *nm);
        }
        l->v = v;
        l->names = nm;
    }
    l->names[l->n] = name;
    l->v[l->n++] = x;
}

static struct jnode *parse_expr(struct parser *p);
static struct jnode *parse_or(struct parser *p);
static struct jnode *parse_unary(struct parser *p, bool with_filter);

static void enter(struct parser *p)
{
    if (++p->depth > 200) perr(p, "expression nested too deeply");
}

/* (args, name=value, ...) after '(' was consumed; positional first, then keywords */
static void parse_args(struct parser *p, struct nlist *l, size_t *nkw)
{
    *nkw = 0;
    while (!is_op(p, ")")) {
        if (l->n && !accept_op(p, ",")) perr(p, "expected ',' or ')' in arguments");
        if (is_op(p, ")")) break;
        struct tok *t = cur(p);
        if (t->kind == T_NAME && p->toks[p->tpos + 1].kind == T_OP && p->toks[p->tpos + 1].n == 1 &&
            p->toks[p->tpos + 1].p[0] == '=') {
            p->tpos += 2;
            nl_push(p, l, parse_expr(p), t->p);
            (*nkw)++;
        } else {
            if (*nkw) perr(p, "positional argument after a keyword argument");
            nl_push(p, l, parse_expr(p), NULL);
        }
    }
    expect_op(p, ")");
}

static struct jnode *finish_call(struct parser *p, enum jn_kind kind, struct jnode *first,
                                 struct nlist *l, size_t nkw)
{
    size_t lead = first ? 1 : 0;
    struct jnode *nd = node(p, kind, l->n + lead);
    if (first) nd->a[0] = first;
    for (size_t i = 0; i < l->n; i++) nd->a[i + lead] = l->v[i];
    nd->nkw = nkw;
    if (nkw) {
        nd->names = palloc(p, nkw * sizeof *nd->names);
        for (size_t i = 0; i < nkw; i++) nd->names[i] = l->names[l->n - nkw + i];
        nd->nnames = nkw;
    }
    return nd;
}

static bool starts_primary(struct parser *p)
{
    struct tok *t = cur(p);
    if (t->kind == T_NAME)
        return !is_name(p, "and") && !is_name(p, "or") && !is_name(p, "else") &&
               !is_name(p, "if") && !is_name(p, "in") && !is_name(p, "is") && !is_name(p, "not");
    if (t->kind == T_INT || t->kind == T_FLOAT || t->kind == T_STR) return true;
    return is_op(p, "(") || is_op(p, "[") || is_op(p, "{") || is_op(p, "-");
}

static struct jnode *parse_filter(struct parser *p, struct jnode *value)
{
    const char *name = expect_name(p);
    while (accept_op(p, ".")) { /* dotted filter names are not built-ins: rejected below */
        expect_name(p);
        perr(p, "filter '%s.…' is not supported", name);
    }
    int id = jl_filter_id(name);
    if (id < 0) perr(p, "filter '%s' is not supported", name);
    struct nlist l = {0};
    size_t nkw = 0;
    if (accept_op(p, "(")) parse_args(p, &l, &nkw);
    struct jnode *nd = finish_call(p, JN_FILTER, value, &l, nkw);
    if (!value) { /* filter block: keep a slot for the value */
        struct jnode *v2 = node(p, JN_FILTER, nd->n + 1);
        v2->a[0] = NULL;
        for (size_t i = 0; i < nd->n; i++) v2->a[i + 1] = nd->a[i];
        v2->names = nd->names;
        v2->nnames = nd->nnames;
        v2->nkw = nd->nkw;
        nd = v2;
    }
    nd->s = name;
    nd->builtin = id;
    return nd;
}

static struct jnode *parse_test(struct parser *p, struct jnode *value)
{
    bool neg = accept_name(p, "not");
    /* a name only: "==" and friends are test names for select("==", x), not after "is" */
    if (cur(p)->kind != T_NAME) perr(p, "expected a test name after 'is'");
    const char *name = expect_name(p);
    int id = jl_test_id(name);
    if (id < 0) perr(p, "test '%s' is not supported", name);
    struct nlist l = {0};
    size_t nkw = 0;
    if (accept_op(p, "("))
        parse_args(p, &l, &nkw);
    else if (starts_primary(p) && !is_op(p, "-") && !is_name(p, "else") && !is_name(p, "and") &&
             !is_name(p, "or")) {
        /* one argument without parentheses: "is divisibleby 3", "is sameas none" */
        nl_push(p, &l, parse_unary(p, false), NULL);
    }
    struct jnode *nd = finish_call(p, JN_TEST, value, &l, nkw);
    nd->s = name;
    nd->builtin = id;
    nd->negate = neg;
    return nd;
}

static struct jnode *parse_primary(struct parser *p)
{
    struct tok *t = cur(p);
    struct jnode *nd;
    switch (t->kind) {
    case T_NAME:
        p->tpos++;
        if (!strcmp(t->p, "true") || !strcmp(t->p, "True")) {
            nd = node(p, JN_LIT, 0);
            nd->lit = jx_bool(true);
        } else if (!strcmp(t->p, "false") || !strcmp(t->p, "False")) {
            nd = node(p, JN_LIT, 0);
            nd->lit = jx_bool(false);
        } else if (!strcmp(t->p, "none") || !strcmp(t->p, "None")) {
            nd = node(p, JN_LIT, 0);
            nd->lit = jx_none();
        } else {
            nd = node(p, JN_NAME, 0);
            nd->s = t->p;
            nd->slen = t->n;
        }
        return nd;
    case T_INT:
        p->tpos++;
        nd = node(p, JN_LIT, 0);
        nd->lit = jx_int(t->i);
        return nd;
    case T_FLOAT:
        p->tpos++;
        nd = node(p, JN_LIT, 0);
        nd->lit = jx_float(t->f);
        return nd;
    case T_STR: {
        /* adjacent literals concatenate */
        struct tk_buf b = {0};
        while (cur(p)->kind == T_STR) {
            tk_buf_put(&b, cur(p)->p, cur(p)->n);
            p->tpos++;
        }
        if (b.oom) perr(p, "out of memory");
        nd = node(p, JN_LIT, 0);
        struct jstr *s = palloc(p, sizeof *s + b.n + 1);
        s->n = b.n;
        if (b.n) memcpy(s->p, b.p, b.n);
        free(b.p);
        nd->lit.kind = JV_STR;
        nd->lit.s = s;
        return nd;
    }
    case T_OP:
        if (accept_op(p, "(")) {
            if (accept_op(p, ")")) return node(p, JN_TUPLE, 0);
            struct jnode *e = parse_expr(p);
            if (!is_op(p, ",")) {
                expect_op(p, ")");
                return e;
            }
            struct nlist l = {0};
            nl_push(p, &l, e, NULL);
            while (accept_op(p, ",")) {
                if (is_op(p, ")")) break;
                nl_push(p, &l, parse_expr(p), NULL);
            }
            expect_op(p, ")");
            nd = node(p, JN_TUPLE, l.n);
            memcpy(nd->a, l.v, l.n * sizeof *l.v);
            return nd;
        }
        if (accept_op(p, "[")) {
            struct nlist l = {0};
            while (!is_op(p, "]")) {
                if (l.n) expect_op(p, ",");
                if (is_op(p, "]")) break;
                nl_push(p, &l, parse_expr(p), NULL);
            }
            expect_op(p, "]");
            nd = node(p, JN_LIST, l.n);
            if (l.n) memcpy(nd->a, l.v, l.n * sizeof *l.v);
            return nd;
        }
        if (accept_op(p, "{")) {
            struct nlist l = {0};
            while (!is_op(p, "}")) {
                if (l.n) expect_op(p, ",");
                if (is_op(p, "}")) break;
                nl_push(p, &l, parse_expr(p), NULL);
                expect_op(p, ":");
                nl_push(p, &l, parse_expr(p), NULL);
            }
            expect_op(p, "}");
            nd = node(p, JN_DICT, l.n);
            if (l.n) memcpy(nd->a, l.v, l.n * sizeof *l.v);
            return nd;
        }
        break;
    default:
        break;
    }
    perr(p, "unexpected '%.*s'", (int)(t->n > 40 ? 40 : t->n),
         t->kind == T_END ? "end of tag"
         : t->p           ? t->p
                          : "?");
}

static struct jnode *parse_subscript(struct parser *p, struct jnode *obj)
{
    struct jnode *parts[3] = {NULL, NULL, NULL};
    bool slice = false;
    if (!is_op(p, ":")) parts[0] = parse_expr(p);
    if (accept_op(p, ":")) {
        slice = true;
        if (!is_op(p, "]") && !is_op(p, ":")) parts[1] = parse_expr(p);
        if (accept_op(p, ":") && !is_op(p, "]")) parts[2] = parse_expr(p);
    }
    expect_op(p, "]");
    struct jnode *nd = node(p, slice ? JN_SLICE : JN_ITEM, slice ? 4 : 2);
    nd->a[0] = obj;
    nd->a[1] = parts[0];
    if (slice) {
        nd->a[2] = parts[1];
        nd->a[3] = parts[2];
    }
    return nd;
}

static void check_callee(struct parser *p, struct jnode *callee)
{
    if (callee->kind == JN_NAME) {
        if (jl_global_id(callee->s) >= 0) return;
        for (size_t i = 0; i < p->nmacros; i++)
            if (!strcmp(p->macros[i], callee->s)) return;
        perr(p, "function '%s' is not supported", callee->s);
    }
    if (callee->kind == JN_ATTR) {
        if (!jl_is_known_method(callee->s)) perr(p, "method '%s()' is not supported", callee->s);
        return;
    }
    perr(p, "this call is not supported");
}

static struct jnode *parse_postfix(struct parser *p, struct jnode *nd)
{
    for (;;) {
        if (accept_op(p, ".")) {
            struct tok *t = cur(p);
            struct jnode *a = node(p, JN_ATTR, 1);
            a->a[0] = nd;
            if (t->kind == T_NAME) {
                a->s = t->p;
                a->slen = t->n;
            } else if (t->kind == T_INT) { /* foo.0 is foo[0] */
                a->kind = JN_ITEM;
                struct jnode *k = node(p, JN_LIT, 0);
                k->lit = jx_int(t->i);
                a = node(p, JN_ITEM, 2);
                a->a[0] = nd;
                a->a[1] = k;
            } else {
                perr(p, "expected an attribute name after '.'");
            }
            p->tpos++;
            nd = a;
        } else if (accept_op(p, "[")) {
            nd = parse_subscript(p, nd);
        } else if (accept_op(p, "(")) {
            check_callee(p, nd);
            struct nlist l = {0};
            size_t nkw;
            parse_args(p, &l, &nkw);
            nd = finish_call(p, JN_CALL, nd, &l, nkw);
        } else {
            return nd;
        }
    }
}

static struct jnode *parse_filter_expr(struct parser *p, struct jnode *nd)
{
    for (;;) {
        if (accept_op(p, "|"))
            nd = parse_filter(p, nd);
        else if (accept_name(p, "is"))
            nd = parse_test(p, nd);
        else if (accept_op(p, "(")) {
            check_callee(p, nd);
            struct nlist l = {0};
            size_t nkw;
            parse_args(p, &l, &nkw);
            nd = finish_call(p, JN_CALL, nd, &l, nkw);
        } else
            return nd;
    }
}

static struct jnode *parse_unary(struct parser *p, bool with_filter)
{
    enter(p);
    struct jnode *nd;
    if (accept_op(p, "-")) {
        nd = node(p, JN_NEG, 1);
        nd->a[0] = parse_unary(p, false);
    } else if (accept_op(p, "+")) {
        nd = node(p, JN_POS, 1);
        nd->a[0] = parse_unary(p, false);
    } else {
        nd = parse_primary(p);
    }
    nd = parse_postfix(p, nd);
    if (with_filter) nd = parse_filter_expr(p, nd);
    p->depth--;
    return nd;
}

static struct jnode *binary(struct parser *p, int op, struct jnode *l, struct jnode *r)
{
    struct jnode *nd = node(p, JN_BIN, 2);
    nd->op = op;
    nd->a[0] = l;
    nd->a[1] = r;
    return nd;
}

static struct jnode *parse_pow(struct parser *p)
{
    struct jnode *l = parse_unary(p, true);
    while (accept_op(p, "**")) l = binary(p, JOP_POW, l, parse_unary(p, true));
    return l;
}

static struct jnode *parse_math2(struct parser *p)
{
    struct jnode *l = parse_pow(p);
    for (;;) {
        if (accept_op(p, "*"))
            l = binary(p, JOP_MUL, l, parse_pow(p));
        else if (accept_op(p, "/"))
            l = binary(p, JOP_DIV, l, parse_pow(p));
        else if (accept_op(p, "//"))
            l = binary(p, JOP_FLOORDIV, l, parse_pow(p));
        else if (accept_op(p, "%"))
            l = binary(p, JOP_MOD, l, parse_pow(p));
        else
            return l;
    }
}

static struct jnode *parse_concat(struct parser *p)
{
    struct jnode *l = parse_math2(p);
    while (accept_op(p, "~")) l = binary(p, JOP_CONCAT, l, parse_math2(p));
    return l;
}

static struct jnode *parse_math1(struct parser *p)
{
    struct jnode *l = parse_concat(p);
    for (;;) {
        if (accept_op(p, "+"))
            l = binary(p, JOP_ADD, l, parse_concat(p));
        else if (accept_op(p, "-"))
            l = binary(p, JOP_SUB, l, parse_concat(p));
        else
            return l;
    }
}

static struct jnode *parse_compare(struct parser *p)
{
    struct jnode *first = parse_math1(p);
    struct nlist l = {0};
    int ops[64];
    size_t nops = 0;
    for (;;) {
        int op = -1;
        if (accept_op(p, "=="))
            op = JOP_EQ;
        else if (accept_op(p, "!="))
            op = JOP_NE;
        else if (accept_op(p, "<"))
            op = JOP_LT;
        else if (accept_op(p, "<="))
            op = JOP_LE;
        else if (accept_op(p, ">"))
            op = JOP_GT;
        else if (accept_op(p, ">="))
            op = JOP_GE;
        else if (accept_name(p, "in"))
            op = JOP_IN;
        else if (is_name(p, "not") && p->toks[p->tpos + 1].kind == T_NAME &&
                 !strcmp(p->toks[p->tpos + 1].p, "in")) {
            p->tpos += 2;
            op = JOP_NOTIN;
        }
        if (op < 0) break;
        if (nops == 64) perr(p, "comparison chain too long");
        ops[nops++] = op;
        nl_push(p, &l, parse_math1(p), NULL);
    }
    if (!nops) return first;
    struct jnode *nd = node(p, JN_CMP, nops + 1);
    nd->a[0] = first;
    memcpy(nd->a + 1, l.v, nops * sizeof *l.v);
    nd->ops = palloc(p, nops * sizeof *nd->ops);
    memcpy(nd->ops, ops, nops * sizeof *ops);
    return nd;
}

static struct jnode *parse_not(struct parser *p)
{
    if (accept_name(p, "not")) {
        enter(p);
        struct jnode *nd = node(p, JN_NOT, 1);
        nd->a[0] = parse_not(p);
        p->depth--;
        return nd;
    }
    return parse_compare(p);
}

static struct jnode *parse_and(struct parser *p)
{
    struct jnode *l = parse_not(p);
    while (accept_name(p, "and")) {
        struct jnode *nd = node(p, JN_AND, 2);
        nd->a[0] = l;
        nd->a[1] = parse_not(p);
        l = nd;
    }
    return l;
}

static struct jnode *parse_or(struct parser *p)
{
    struct jnode *l = parse_and(p);
    while (accept_name(p, "or")) {
        struct jnode *nd = node(p, JN_OR, 2);
        nd->a[0] = l;
        nd->a[1] = parse_and(p);
        l = nd;
    }
    return l;
}

static struct jnode *parse_expr(struct parser *p)
{
    enter(p);
    struct jnode *e = parse_or(p);
    while (accept_name(p, "if")) {
        struct jnode *nd = node(p, JN_COND, 3);
        nd->a[0] = e;
        nd->a[1] = parse_or(p);
        nd->a[2] = accept_name(p, "else") ? parse_expr(p) : NULL;
        e = nd;
    }
    p->depth--;
    return e;
}

/* expression list without brackets: "a, b" is a tuple (set / for / print) */
static struct jnode *parse_tuple_expr(struct parser *p)
{
    struct jnode *e = parse_expr(p);
    if (!is_op(p, ",")) return e;
    struct nlist l = {0};
    nl_push(p, &l, e, NULL);
    while (accept_op(p, ",")) {
        if (cur(p)->kind == T_END) break;
        nl_push(p, &l, parse_expr(p), NULL);
    }
    struct jnode *nd = node(p, JN_TUPLE, l.n);
    memcpy(nd->a, l.v, l.n * sizeof *l.v);
    return nd;
}

static void expect_end(struct parser *p)
{
    if (cur(p)->kind != T_END)
        perr(p, "unexpected '%.*s' at the end of the tag", (int)(cur(p)->n > 40 ? 40 : cur(p)->n),
             cur(p)->p);
}

/* ---- statements ---- */

static struct jnode *parse_body(struct parser *p, const char *const *ends, const char **which);

static const char *stmt_keyword(struct parser *p, size_t item)
{
    tokenize(p, p->items[item].p, p->items[item].n);
    p->line = p->items[item].line;
    if (cur(p)->kind != T_NAME) perr(p, "expected a statement");
    return cur(p)->p;
}

static void target_names(struct parser *p, struct nlist *l)
{
    bool paren = accept_op(p, "(");
    do {
        nl_push(p, l, NULL, expect_name(p));
    } while (accept_op(p, ","));
    if (paren) expect_op(p, ")");
}

static struct jnode *parse_stmt(struct parser *p)
{
    const char *kw = stmt_keyword(p, p->pos);
    p->tpos++;
    p->pos++;
    struct jnode *nd;
    if (!strcmp(kw, "if")) {
        nd = node(p, JN_IF, 3);
        nd->a[0] = parse_expr(p);
        expect_end(p);
        static const char *const ends[] = {"elif", "else", "endif", NULL};
        const char *which;
        nd->a[1] = parse_body(p, ends, &which);
        struct jnode *tail = nd;
        while (!strcmp(which, "elif")) {
            struct jnode *e = node(p, JN_IF, 3);
            e->a[0] = parse_expr(p);
            expect_end(p);
            e->a[1] = parse_body(p, ends, &which);
            tail->a[2] = e;
            tail = e;
        }
        if (!strcmp(which, "else")) {
            expect_end(p);
            static const char *const ends2[] = {"endif", NULL};
            tail->a[2] = parse_body(p, ends2, &which);
        }
        expect_end(p);
        return nd;
    }
    if (!strcmp(kw, "for")) {
        nd = node(p, JN_FOR, 4);
        struct nlist l = {0};
        target_names(p, &l);
        nd->names = l.names;
        nd->nnames = l.n;
        if (!accept_name(p, "in")) perr(p, "expected 'in' in a for loop");
        nd->a[0] = parse_or(p);
        if (is_op(p, ",")) { /* for x in a, b */
            struct nlist t = {0};
            nl_push(p, &t, nd->a[0], NULL);
            while (accept_op(p, ",")) nl_push(p, &t, parse_or(p), NULL);
            struct jnode *tup = node(p, JN_TUPLE, t.n);
            memcpy(tup->a, t.v, t.n * sizeof *t.v);
            nd->a[0] = tup;
        }
        if (accept_name(p, "if")) nd->a[1] = parse_expr(p);
        if (accept_name(p, "recursive")) perr(p, "recursive loops are not supported");
        expect_end(p);
        static const char *const ends[] = {"else", "endfor", NULL};
        const char *which;
        nd->a[2] = parse_body(p, ends, &which);
        if (!strcmp(which, "else")) {
            expect_end(p);
            static const char *const ends2[] = {"endfor", NULL};
            nd->a[3] = parse_body(p, ends2, &which);
        }
        expect_end(p);
        return nd;
    }
    if (!strcmp(kw, "set")) {
        const char *name = expect_name(p);
        if (accept_op(p, ".")) { /* ns.attr = value */
            nd = node(p, JN_SET, 1);
            nd->names = palloc(p, 2 * sizeof *nd->names);
            nd->names[0] = name;
            nd->names[1] = expect_name(p);
            nd->nnames = 2;
            nd->negate = true;
            expect_op(p, "=");
            nd->a[0] = parse_tuple_expr(p);
            expect_end(p);
            return nd;
        }
        struct nlist l = {0};
        nl_push(p, &l, NULL, name);
        while (accept_op(p, ",")) nl_push(p, &l, NULL, expect_name(p));
        if (accept_op(p, "=")) {
            nd = node(p, JN_SET, 1);
            nd->names = l.names;
            nd->nnames = l.n;
            nd->a[0] = parse_tuple_expr(p);
            expect_end(p);
            return nd;
        }
        if (l.n != 1) perr(p, "block set takes one name");
        nd = node(p, JN_SETBLOCK, 2);
        nd->names = l.names;
        nd->nnames = 1;
        if (accept_op(p, "|")) nd->a[1] = parse_filter(p, NULL);
        expect_end(p);
        static const char *const ends[] = {"endset", NULL};
        const char *which;
        nd->a[0] = parse_body(p, ends, &which);
        expect_end(p);
        return nd;
    }
    if (!strcmp(kw, "macro")) {
        const char *name = expect_name(p);
        expect_op(p, "(");
        struct nlist l = {0};
        while (!is_op(p, ")")) {
            if (l.n) expect_op(p, ",");
            const char *param = expect_name(p);
            nl_push(p, &l, accept_op(p, "=") ? parse_expr(p) : NULL, param);
        }
        expect_op(p, ")");
        expect_end(p);
        nd = node(p, JN_MACRO, l.n + 1);
        nd->s = name;
        nd->names = l.names;
        nd->nnames = l.n;
        for (size_t i = 0; i < l.n; i++) nd->a[i + 1] = l.v[i];
        static const char *const ends[] = {"endmacro", NULL};
        const char *which;
        nd->a[0] = parse_body(p, ends, &which);
        accept_name(p, name);
        expect_end(p);
        return nd;
    }
    if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
        expect_end(p);
        return node(p, kw[0] == 'b' ? JN_BREAK : JN_CONTINUE, 0);
    }
    if (!strcmp(kw, "filter")) {
        nd = node(p, JN_FILTERBLOCK, 2);
        nd->a[0] = parse_filter(p, NULL);
        while (accept_op(p, "|")) {
            /* chained: filter a|b applies a then b */
            struct jnode *outer = parse_filter(p, NULL);
            outer->a[0] = nd->a[0];
            nd->a[0] = outer;
        }
        expect_end(p);
        static const char *const ends[] = {"endfilter", NULL};
        const char *which;
        nd->a[1] = parse_body(p, ends, &which);
        expect_end(p);
        return nd;
    }
    if (!strcmp(kw, "with")) {
        struct nlist l = {0};
        while (cur(p)->kind != T_END) {
            if (l.n) expect_op(p, ",");
            const char *name = expect_name(p);
            expect_op(p, "=");
            nl_push(p, &l, parse_expr(p), name);
        }
        nd = node(p, JN_WITH, l.n + 1);
        nd->names = l.names;
        nd->nnames = l.n;
        for (size_t i = 0; i < l.n; i++) nd->a[i] = l.v[i];
        static const char *const ends[] = {"endwith", NULL};
        const char *which;
        nd->a[l.n] = parse_body(p, ends, &which);
        expect_end(p);
        return nd;
    }
    if (!strcmp(kw, "generation")) { /* transformers' assistant-mask marker: renders its body */
        expect_end(p);
        static const char *const ends[] = {"endgeneration", NULL};
        const char *which;
        return parse_body(p, ends, &which);
    }
    perr(p, "statement '%s' is not supported", kw);
}

static struct jnode *parse_body(struct parser *p, const char *const *ends, const char **which)
{
    struct nlist l = {0};
    if (++p->depth > 200) perr(p, "blocks nested too deeply");
    for (;;) {
        if (p->pos >= p->nitems) {
            if (ends) perr(p, "missing {%% %s %%}", ends[0] ? ends[0] : "end");
            break;
        }
        struct item *it = &p->items[p->pos];
        p->line = it->line;
        if (it->kind == IT_TEXT) {
            struct jnode *t = node(p, JN_TEXT, 0);
            t->s = it->p;
            t->slen = it->n;
            nl_push(p, &l, t, NULL);
            p->pos++;
            continue;
        }
        if (it->kind == IT_EXPR) {
            tokenize(p, it->p, it->n);
            struct jnode *e = node(p, JN_PRINT, 1);
            e->a[0] = parse_tuple_expr(p);
            expect_end(p);
            nl_push(p, &l, e, NULL);
            p->pos++;
            continue;
        }
        const char *kw = stmt_keyword(p, p->pos);
        bool is_end = false;
        for (size_t k = 0; ends && ends[k]; k++)
            if (!strcmp(kw, ends[k])) {
                *which = ends[k];
                is_end = true;
            }
        if (is_end) {
            p->tpos++;
            p->pos++;
            break;
        }
        if (!strncmp(kw, "end", 3) || !strcmp(kw, "elif") || !strcmp(kw, "else"))
            perr(p, "unexpected {%% %s %%}", kw);
        nl_push(p, &l, parse_stmt(p), NULL);
    }
    p->depth--;
    struct jnode *b = node(p, JN_BODY, l.n);
    if (l.n) memcpy(b->a, l.v, l.n * sizeof *l.v);
    return b;
}

/* Names a call may use besides the built-ins: macros (a call may come before the definition)
 * and variables a template assigns, which may hold a callable (joiner(), a macro). */
static void collect_macros(struct parser *p)
{
    for (size_t i = 0; i < p->nitems; i++) {
        if (p->items[i].kind != IT_STMT) continue;
        tokenize(p, p->items[i].p, p->items[i].n);
        if (!is_name(p, "macro") && !is_name(p, "set")) continue;
        p->tpos++;
        if (cur(p)->kind != T_NAME) continue;
        const char **v = palloc(p, (p->nmacros + 1) * sizeof *v);
        if (p->nmacros) memcpy(v, p->macros, p->nmacros * sizeof *v);
        v[p->nmacros++] = cur(p)->p;
        p->macros = v;
    }
}

enum kiln_status kiln_jinja_compile(const char *src, size_t len, struct kiln_jinja **out,
                                    struct kiln_error *err)
{
    *out = NULL;
    struct kiln_jinja *t = calloc(1, sizeof *t);
    if (!t) return kiln_errorf(err, KILN_ERR_NOMEM, "template: out of memory");
    t->arena.limit = (size_t)256 << 20;
    struct parser p = {.t = t, .err = err, .line = 1, .src = src, .src_len = len};
    if (setjmp(p.jmp)) {
        kiln_jinja_free(p.t);
        return err ? err->code : KILN_ERR_UNSUPPORTED;
    }
    if (!tk_utf8_valid(p.src, p.src_len)) perr(&p, "the template is not valid UTF-8");
    lex(&p, p.src, p.src_len);
    collect_macros(&p);
    p.pos = 0;
    t->root = parse_body(&p, NULL, NULL);
    *out = t;
    return KILN_OK;
}

void kiln_jinja_free(struct kiln_jinja *t)
{
    if (!t) return;
    ja_free(&t->arena);
    free(t);
}
