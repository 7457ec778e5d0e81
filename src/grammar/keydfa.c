/* Key automata: the subset construction of several regular expressions (gx trees over the same
 * bytes) at once, each DFA state carrying the set of expressions that accept there. The JSON
 * Schema compiler needs it for patternProperties: which value schema a key gets depends on
 * which patterns match it and whether it is a listed name, and "none of the patterns" is a
 * complement, which only a deterministic automaton gives exactly. The result goes back into
 * the grammar as one GX_DFA expression (one rule's states, not a rule per state, so a long key
 * costs no call depth). comp[0] is what every key must be: a set without any of its states is
 * dead, which keeps the states of a pattern's other spellings of a character out. Work is bounded
 * by the caller's state cap and by KD_MAX_NFA. */
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

#define KD_MAX_NFA   200000 /* Thompson states of all the components together */
#define KD_MAX_DEPTH 32     /* calls inlined in one another */

struct kd_edge {
    int32_t from, to;
    const uint32_t *bits; /* NULL: epsilon */
};

struct gr_kdfa {
    int nclass;
    uint8_t cls[256]; /* byte -> class */
    int32_t n;        /* DFA states */
    int32_t *next;    /* [n * nclass]: the next state, -1 dead */
    uint32_t *mask;   /* [n] the components accepting */
};

/* A search's trailing "any characters" (gr_regex's b->r_key_tail), entered at head: once a
 * set holds the head, every other state of the same component can go, since what may follow
 * any of them is some characters, all of which the tail takes. A search that has matched thus
 * stays one set, instead of one per state of the rest of its pattern (a word list "a|b|...":
 * thousands). */
struct kd_tail {
    int32_t head, lo, hi; /* its states: [lo, hi) */
    int comp;
};

struct kd_nfa {
    struct gr_builder *b;
    struct kd_edge *e;
    size_t ne, cap;
    int32_t ns;
    uint32_t *acc; /* [ns] accept bits, filled after the build */
    const char *where;
    int comp;                 /* the component being emitted */
    int depth;                /* calls inlined in one another at this point (KD_MAX_DEPTH) */
    int32_t clo[32], chi[32]; /* component i's states: [clo[i], chi[i]) */
    struct kd_tail *tail;
    int ntail;
    size_t captail;
    /* the subset construction's work: edges by state (CSR), visit stamps, a stack, a set */
    size_t *e0;
    struct kd_edge *es;
    uint32_t *stamp, epoch;
    int32_t *stack, *buf;
};

static int32_t kd_state(struct kd_nfa *k)
{
    if (k->ns >= KD_MAX_NFA) {
        gb_fail(k->b, KILN_ERR_UNSUPPORTED, "%s: too complex (over %d automaton states)", k->where,
                KD_MAX_NFA);
        return 0;
    }
    return k->ns++;
}

static void kd_edge(struct kd_nfa *k, int32_t from, int32_t to, const uint32_t *bits)
{
    if (k->b->failed) return;
    if (!gr_grow((void **)&k->e, &k->cap, k->ne + 1, sizeof *k->e)) {
        gb_fail(k->b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
        return;
    }
    k->e[k->ne++] = (struct kd_edge){from, to, bits};
}

/* Thompson construction (gx_thompson), calls inlined */
static bool kd_stopped(void *ctx)
{
    return ((struct kd_nfa *)ctx)->b->failed;
}

static int32_t kd_new_state(void *ctx)
{
    return kd_state(ctx);
}

static void kd_new_edge(void *ctx, int32_t from, int32_t to, const struct gx *bytes)
{
    kd_edge(ctx, from, to, bytes ? bytes->bits : NULL);
}

static int32_t kd_other(void *ctx, int32_t from, const struct gx *x);
static const struct gx_nfa_ops kd_ops = {kd_stopped, kd_new_state, kd_new_edge, kd_other};

/* a rule's body inlined one call deeper */
static int32_t kd_inline(struct kd_nfa *k, int32_t from, const struct gx *body)
{
    k->depth++;
    int32_t end = gx_thompson(&kd_ops, k, from, body);
    k->depth--;
    return end;
}

static int32_t kd_other(void *ctx, int32_t from, const struct gx *x)
{
    struct kd_nfa *k = ctx;
    if (x->op != GX_RULE) { /* gr_regex_meet's automata (strings with lengths) are never keys */
        gb_fail(k->b, KILN_ERR_UNSUPPORTED, "%s: not a regular language", k->where);
        return from;
    }
    const struct gx *body = x->rule == k->b->r_key_tail ? k->b->body[x->rule] : NULL;
    if (body && body->op == GX_REP && body->min == 0 && body->max < 0) {
        /* as GX_REP's loop, its head remembered */
        int32_t s = kd_state(k);
        kd_edge(k, from, s, NULL);
        kd_edge(k, kd_inline(k, s, body->kid[0]), s, NULL);
        if (!gr_grow((void **)&k->tail, &k->captail, (size_t)k->ntail + 1, sizeof *k->tail)) {
            gb_fail(k->b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
            return s;
        }
        k->tail[k->ntail++] = (struct kd_tail){s, s, k->ns, k->comp};
        return s;
    }
    if (k->depth >= KD_MAX_DEPTH || x->rule < 0 || x->rule >= k->b->n || !k->b->body[x->rule]) {
        gb_fail(k->b, KILN_ERR_UNSUPPORTED, "%s: not a regular language", k->where);
        return from;
    }
    return kd_inline(k, from, k->b->body[x->rule]);
}

/* interned state sets */
struct kd_sets {
    int32_t *pool;
    size_t npool, cappool;
    size_t *off; /* [n + 1] */
    int32_t n, cap;
    int32_t *ht; /* open addressing, -1 empty */
    uint32_t htcap;
};

/* a set's hash, whatever the order of its states (sets are not sorted: sorting each one was
 * most of the construction's time) */
static uint64_t set_hash(const int32_t *s, size_t n)
{
    uint64_t h = n * 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < n; i++) {
        uint64_t x = (uint64_t)(uint32_t)s[i] + 0x9e3779b97f4a7c15ULL;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        h += x ^ (x >> 31);
    }
    return h;
}

/* the id of set s[0..n), new ones appended; -2 out of memory. The set's states, and only they,
 * are stamped with epoch (kd_closure), so a stored set of the same size is it when each of its
 * states is stamped. */
static int32_t set_id(struct kd_sets *t, const int32_t *s, size_t n, bool *fresh,
                      const uint32_t *stamp, uint32_t epoch)
{
    *fresh = false;
    if ((uint32_t)(t->n + 1) * 2 > t->htcap) {
        uint32_t cap = t->htcap ? t->htcap * 2 : 256;
        int32_t *ht = malloc(cap * sizeof *ht);
        if (!ht) return -2;
        memset(ht, 0xff, cap * sizeof *ht);
        for (int32_t i = 0; i < t->n; i++) {
            uint32_t at = (uint32_t)set_hash(t->pool + t->off[i], t->off[i + 1] - t->off[i]);
            while (ht[at & (cap - 1)] >= 0) at++;
            ht[at & (cap - 1)] = i;
        }
        free(t->ht);
        t->ht = ht;
        t->htcap = cap;
    }
    uint32_t at = (uint32_t)set_hash(s, n);
    for (;; at++) {
        int32_t id = t->ht[at & (t->htcap - 1)];
        if (id < 0) break;
        size_t len = t->off[id + 1] - t->off[id];
        if (len != n) continue;
        const int32_t *q = t->pool + t->off[id];
        size_t i = 0;
        while (i < n && stamp[q[i]] == epoch) i++;
        if (i == n) return id;
    }
    if (t->n + 1 >= t->cap) {
        int32_t cap = t->cap ? t->cap * 2 : 64;
        size_t *o = realloc(t->off, ((size_t)cap + 1) * sizeof *o);
        if (!o) return -2;
        t->off = o;
        t->cap = cap;
    }
    if (!gr_grow((void **)&t->pool, &t->cappool, t->npool + n, sizeof *t->pool)) return -2;
    if (t->n == 0) t->off[0] = 0;
    memcpy(t->pool + t->npool, s, n * sizeof *s);
    t->npool += n;
    t->off[t->n + 1] = t->npool;
    t->ht[at & (t->htcap - 1)] = t->n;
    *fresh = true;
    return t->n++;
}

/* The epsilon closure of the stamped states on the stack (sp of them) into k->buf, less what
 * the trailing tails reached make redundant (struct kd_tail, unstamped); returns its size. */
static size_t kd_closure(struct kd_nfa *k, size_t sp)
{
    size_t nb = 0;
    while (sp) {
        int32_t q = k->stack[--sp];
        k->buf[nb++] = q;
        for (size_t i = k->e0[q]; i < k->e0[q + 1]; i++)
            if (!k->es[i].bits && k->stamp[k->es[i].to] != k->epoch) {
                k->stamp[k->es[i].to] = k->epoch;
                k->stack[sp++] = k->es[i].to;
            }
    }
    uint32_t done = 0;
    for (int t = 0; t < k->ntail; t++) {
        const struct kd_tail *u = &k->tail[t];
        if (k->stamp[u->head] != k->epoch || (done >> u->comp & 1)) continue;
        done |= 1u << u->comp;
        size_t w = 0;
        for (size_t i = 0; i < nb; i++) {
            int32_t q = k->buf[i];
            bool other = q >= k->clo[u->comp] && q < k->chi[u->comp] && (q < u->lo || q >= u->hi) &&
                         !k->acc[q]; /* the end: it accepts */
            if (!other)
                k->buf[w++] = q;
            else
                k->stamp[q] = 0; /* out of the set: set_id compares by stamps */
        }
        nb = w;
    }
    return nb;
}

struct gr_kdfa *gr_kdfa_build(struct gr_builder *b, struct gx *const *comp, int ncomp,
                              int max_states, const char *where)
{
    if (b->failed) return NULL;
    if (ncomp > 32) {
        gb_fail(b, KILN_ERR_UNSUPPORTED, "%s: over 30 patterns", where);
        return NULL;
    }
    struct kd_nfa k = {.b = b, .where = where};
    int32_t start = kd_state(&k);
    int32_t ends[32];
    for (int i = 0; i < ncomp; i++) {
        int32_t s = kd_state(&k);
        kd_edge(&k, start, s, NULL);
        k.comp = i;
        k.clo[i] = s;
        ends[i] = gx_thompson(&kd_ops, &k, s, comp[i]);
        k.chi[i] = k.ns;
    }
    int32_t lo0 = k.clo[0], hi0 = k.chi[0];
    struct gr_kdfa *d = calloc(1, sizeof *d);
    struct kd_sets sets = {0};
    /* per NFA state: its edges (CSR by from) */
    size_t *e0 = k.e0 = calloc((size_t)k.ns + 1, sizeof *e0);
    struct kd_edge *es = k.es = malloc((k.ne + 1) * sizeof *es);
    k.acc = calloc((size_t)k.ns, sizeof *k.acc);
    uint32_t *stamp = k.stamp = calloc((size_t)k.ns, sizeof *stamp);
    int32_t *stack = k.stack = malloc(((size_t)k.ns + 1) * sizeof *stack);
    int32_t *buf = k.buf = malloc(((size_t)k.ns + 1) * sizeof *buf);
    size_t capnext = 0;
    bool ok = !b->failed && d && e0 && es && k.acc && stamp && stack && buf;
    if (!ok) goto out;
    for (int i = 0; i < ncomp; i++) k.acc[ends[i]] |= 1u << i;
    for (size_t i = 0; i < k.ne; i++) e0[k.e[i].from + 1]++;
    for (int32_t s = 0; s < k.ns; s++) e0[s + 1] += e0[s];
    {
        size_t *fill = malloc(((size_t)k.ns + 1) * sizeof *fill);
        if (!fill) {
            ok = false;
            goto out;
        }
        memcpy(fill, e0, ((size_t)k.ns + 1) * sizeof *fill);
        for (size_t i = 0; i < k.ne; i++) es[fill[k.e[i].from]++] = k.e[i];
        free(fill);
    }
    /* byte classes: bytes no edge tells apart share one */
    {
        int map[512];
        d->nclass = 1;
        memset(d->cls, 0, sizeof d->cls);
        for (size_t i = 0; i < k.ne; i++) {
            const uint32_t *bits = k.e[i].bits;
            if (!bits) continue;
            for (int q = 0; q < 2 * d->nclass; q++) map[q] = -1;
            int nc = 0;
            for (int c = 0; c < 256; c++) {
                int key = d->cls[c] * 2 + (int)(bits[c >> 5] >> (c & 31) & 1);
                if (map[key] < 0) map[key] = nc++;
                d->cls[c] = (uint8_t)map[key];
            }
            d->nclass = nc;
        }
    }
    int rep[256]; /* a byte of each class */
    for (int c = 255; c >= 0; c--) rep[d->cls[c]] = c;
    /* the start set, then the worklist: set ids in creation order */
    k.epoch++;
    stack[0] = start;
    stamp[start] = k.epoch;
    size_t nb = kd_closure(&k, 1);
    bool fresh;
    if (set_id(&sets, buf, nb, &fresh, stamp, k.epoch) < 0) {
        ok = false;
        goto out;
    }
    for (int32_t cur = 0; cur < sets.n && ok; cur++) {
        if ((size_t)(cur + 1) * (size_t)d->nclass > capnext) {
            size_t cap = capnext ? capnext * 2 : (size_t)d->nclass * 64;
            int32_t *p = realloc(d->next, cap * sizeof *p);
            uint32_t *m = realloc(d->mask, cap / (size_t)d->nclass * sizeof *m);
            if (p) d->next = p;
            if (m) d->mask = m;
            if (!p || !m) {
                ok = false;
                break;
            }
            capnext = cap;
        }
        uint32_t acc = 0;
        for (size_t i = sets.off[cur]; i < sets.off[cur + 1]; i++) acc |= k.acc[sets.pool[i]];
        d->mask[cur] = acc;
        for (int c = 0; c < d->nclass && ok; c++) {
            int byte = rep[c];
            k.epoch++;
            size_t sp = 0;
            for (size_t i = sets.off[cur]; i < sets.off[cur + 1]; i++) {
                int32_t q = sets.pool[i];
                for (size_t x = e0[q]; x < e0[q + 1]; x++)
                    if (es[x].bits && (es[x].bits[byte >> 5] >> (byte & 31) & 1) &&
                        stamp[es[x].to] != k.epoch) {
                        stamp[es[x].to] = k.epoch;
                        stack[sp++] = es[x].to;
                    }
            }
            b->work += sets.off[cur + 1] - sets.off[cur];
            nb = kd_closure(&k, sp);
            int32_t to = -1;
            bool in0 = false; /* a set without comp[0] is a dead end: no exit is ever taken */
            for (size_t i = 0; i < nb && !in0; i++) in0 = buf[i] >= lo0 && buf[i] < hi0;
            if (in0) {
                to = set_id(&sets, buf, nb, &fresh, stamp, k.epoch);
                if (to == -2) ok = false;
                if (sets.n > max_states || b->work > GR_MAX_WORK) {
                    gb_fail(b, KILN_ERR_UNSUPPORTED, "%s: too complex (over %d key states)", where,
                            max_states);
                    ok = false;
                }
            }
            d->next[(size_t)cur * (size_t)d->nclass + (size_t)c] = to;
        }
    }
    d->n = sets.n;
out:
    if (!ok && !b->failed) gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
    free(k.e), free(k.acc), free(k.tail), free(e0), free(es), free(stamp), free(stack), free(buf);
    free(sets.pool), free(sets.off), free(sets.ht);
    if (!ok) {
        gr_kdfa_free(d);
        return NULL;
    }
    return d;
}

int gr_kdfa_nstates(const struct gr_kdfa *d)
{
    return d->n;
}

uint32_t gr_kdfa_mask(const struct gr_kdfa *d, int state)
{
    return d->mask[state];
}

uint32_t gr_kdfa_run(const struct gr_kdfa *d, const char *s, size_t n)
{
    int32_t q = 0;
    for (size_t i = 0; i < n && q >= 0; i++)
        q = d->next[(size_t)q * (size_t)d->nclass + d->cls[(unsigned char)s[i]]];
    return q >= 0 ? d->mask[q] : 0;
}

struct gx *gr_kdfa_emit(struct gr_builder *b, const struct gr_kdfa *d, struct gx *const *exit)
{
    /* live: an exit is reachable (backwards from the exits over reversed edges, to a fixpoint) */
    bool *live = calloc((size_t)d->n, 1);
    int32_t *id = malloc((size_t)d->n * sizeof *id);
    if (!live || !id) {
        free(live), free(id);
        return gb_fail(b, KILN_ERR_NOMEM, "out of memory compiling a constraint");
    }
    for (int32_t s = 0; s < d->n; s++) live[s] = exit[s] != NULL;
    for (bool changed = true; changed;) {
        changed = false;
        for (int32_t s = d->n; s-- > 0;)
            for (int c = 0; c < d->nclass && !live[s]; c++) {
                int32_t t = d->next[(size_t)s * (size_t)d->nclass + (size_t)c];
                if (t >= 0 && live[t]) live[s] = changed = true;
            }
    }
    if (!live[0]) {
        free(live), free(id);
        return gx_none(b);
    }
    int32_t n = 0;
    for (int32_t s = 0; s < d->n; s++) id[s] = live[s] ? n++ : -1;
    struct gx *x = gx_seq(b); /* a node to fill in as GX_DFA */
    size_t ne = 0, cap = 0;
    struct gx_dfa_edge *e = NULL;
    for (int32_t s = 0; s < d->n && x; s++) {
        if (!live[s]) continue;
        gx_add(b, x, exit[s] ? exit[s] : gx_none(b));
        for (int lo = 0; lo < 256;) {
            int32_t t = d->next[(size_t)s * (size_t)d->nclass + d->cls[lo]];
            int hi = lo;
            while (hi + 1 < 256 && d->next[(size_t)s * (size_t)d->nclass + d->cls[hi + 1]] == t)
                hi++;
            if (t >= 0 && live[t]) {
                if (ne == cap) {
                    cap = cap ? cap * 2 : 64;
                    struct gx_dfa_edge *p = gb_alloc(b, cap * sizeof *p);
                    if (!p) break;
                    if (ne) memcpy(p, e, ne * sizeof *p);
                    e = p;
                }
                e[ne++] = (struct gx_dfa_edge){id[s], id[t], (uint8_t)lo, (uint8_t)hi};
            }
            lo = hi + 1;
        }
    }
    free(live), free(id);
    if (!x || b->failed) return NULL;
    x->op = GX_DFA;
    x->rule = (int)ne;
    x->dedge = e;
    return x;
}

void gr_kdfa_free(struct gr_kdfa *d)
{
    if (!d) return;
    free(d->next), free(d->mask);
    free(d);
}
