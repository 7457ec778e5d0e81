/* Encoding: text -> ids, the Hugging Face `tokenizers` pipeline step by step (see internal.h).
 *
 * Text moves through the steps as a list of pieces, each either a fixed token id (an added
 * token) or a byte range of one arena (the sanitized input plus whatever normalization wrote).
 * BPE merges each final piece with a binary heap of (rank, position), the same order HF's
 * Word::merge_all uses, so ties resolve identically. Thread-safe: all scratch is per call. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- added-token trie ---- */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    return x;
}

static int32_t trie_child(const struct tk_trie *t, int32_t node, unsigned char c)
{
    uint64_t key = (((uint64_t)node << 8) | c) + 1;
    uint32_t mask = t->cap - 1;
    for (uint32_t i = (uint32_t)mix(key) & mask;; i = (i + 1) & mask) {
        if (t->edge[i] == key) return t->child[i];
        if (t->edge[i] == 0) return -1;
    }
}

void tk_trie_free(struct tk_trie *t)
{
    free(t->edge);
    free(t->child);
    free(t->term);
    memset(t, 0, sizeof *t);
}

static char *normalized_copy(const struct kiln_tokenizer *tok, const char *s, size_t n,
                             size_t *out_n);

/* Tokens marked "normalized" are matched in normalized text, so HF stores them normalized (with
 * a Prepend normalizer that means a leading "▁" too); the trie does the same. */
enum kiln_status tk_trie_build(struct tk_trie *t, const struct kiln_tokenizer *tok, bool normalized,
                               struct kiln_error *err)
{
    const struct tk_added *added = tok->added;
    size_t n = tok->added_n;
    memset(t, 0, sizeof *t);
    char **content = calloc(n + 1, sizeof *content);
    size_t *clen = calloc(n + 1, sizeof *clen);
    if (!content || !clen) goto nomem;
    size_t total = 1;
    for (size_t i = 0; i < n; i++) {
        if (added[i].normalized != normalized) continue;
        if (normalized && tok->norm_n) {
            content[i] = normalized_copy(tok, added[i].content, added[i].len, &clen[i]);
            if (!content[i]) goto nomem;
        }
        total += content[i] ? clen[i] : added[i].len;
    }
    uint32_t cap = 16;
    while (cap < 2 * total + 2) cap *= 2;
    t->edge = calloc(cap, sizeof *t->edge);
    t->child = malloc(cap * sizeof *t->child);
    t->term = malloc(total * sizeof *t->term);
    if (!t->edge || !t->child || !t->term) goto nomem;
    t->cap = cap;
    t->nodes = 1;
    t->term[0] = -1;
    for (size_t i = 0; i < n; i++) {
        if (added[i].normalized != normalized) continue;
        const unsigned char *s =
            (const unsigned char *)(content[i] ? content[i] : added[i].content);
        size_t len = content[i] ? clen[i] : added[i].len;
        if (len == 0) continue;
        int32_t node = 0;
        t->first[s[0]] = true;
        for (size_t k = 0; k < len; k++) {
            int32_t c = trie_child(t, node, s[k]);
            if (c < 0) {
                c = (int32_t)t->nodes++;
                t->term[c] = -1;
                uint64_t key = (((uint64_t)node << 8) | s[k]) + 1;
                uint32_t j = (uint32_t)mix(key) & (cap - 1);
                while (t->edge[j]) j = (j + 1) & (cap - 1);
                t->edge[j] = key;
                t->child[j] = c;
            }
            node = c;
        }
        /* a later duplicate of the same content wins, as in HF's map of contents */
        t->term[node] = (int32_t)i;
    }
    for (size_t i = 0; i < n; i++) free(content[i]);
    free(content);
    free(clen);
    if (t->nodes == 1) tk_trie_free(t); /* empty: nothing to match */
    return KILN_OK;
nomem:
    for (size_t i = 0; content && i < n; i++) free(content[i]);
    free(content);
    free(clen);
    tk_trie_free(t);
    return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
}

/* Longest token starting at s[0]; returns its length and table index, or 0. */
static size_t trie_longest(const struct tk_trie *t, const char *s, size_t n, int32_t *which)
{
    int32_t node = 0;
    size_t best = 0;
    for (size_t k = 0; k < n; k++) {
        node = trie_child(t, node, (unsigned char)s[k]);
        if (node < 0) break;
        if (t->term[node] >= 0) {
            best = k + 1;
            *which = t->term[node];
        }
    }
    return best;
}

/* ---- pieces ---- */

struct piece {
    size_t off, len; /* bytes in the arena; unused when id >= 0 */
    int32_t id;      /* >= 0: a token fixed by an added token */
    bool at_start;   /* begins at offset 0 of the original input (Metaspace "first") */
};

struct plist {
    struct piece *v;
    size_t n, cap;
};

struct enc {
    const struct kiln_tokenizer *tok;
    struct tk_buf arena;
    struct plist a, b; /* current and next piece lists */
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    /* BPE scratch */
    int32_t *sym, *prev, *next;
    uint64_t *heap;
    size_t scap, hcap;
    /* output */
    int32_t *ids;
    size_t nids, idcap;
    bool oom;
};

static void push_piece(struct enc *e, struct plist *l, struct piece p)
{
    if (p.id < 0 && p.len == 0) return; /* HF drops empty splits */
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct piece *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            e->oom = true;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = p;
}

static void push_id(struct enc *e, int32_t id)
{
    if (e->nids == e->idcap) {
        size_t cap = e->idcap ? e->idcap * 2 : 256;
        int32_t *v = realloc(e->ids, cap * sizeof *v);
        if (!v) {
            e->oom = true;
            return;
        }
        e->ids = v;
        e->idcap = cap;
    }
    e->ids[e->nids++] = id;
}

static const char *piece_text(const struct enc *e, const struct piece *p)
{
    return e->arena.p + p->off;
}

static size_t char_len_at(const char *s, size_t n)
{
    uint32_t cp;
    int k = tk_utf8_decode((const unsigned char *)s, n, &cp);
    return k > 0 ? (size_t)k : 1;
}

static uint32_t last_cp(const char *s, size_t n)
{
    if (n == 0) return 0;
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    uint32_t cp = 0;
    tk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
    return cp;
}

static bool is_word_char(uint32_t cp)
{
    return (cp < 128 &&
            (cp == '_' || (cp >= '0' && cp <= '9') || ((cp | 32) >= 'a' && (cp | 32) <= 'z')));
}

/* Splits piece p on the added tokens of trie t (HF AddedVocabulary::find_matches). */
static void split_added(struct enc *e, const struct tk_trie *t, const struct piece *p,
                        struct plist *out)
{
    if (!t->nodes) {
        push_piece(e, out, *p);
        return;
    }
    const struct tk_added *added = e->tok->added;
    size_t n = p->len, start_off = 0, i = 0;
    while (i < n) {
        const char *s = piece_text(e, p);
        if (!t->first[(unsigned char)s[i]]) {
            i++;
            continue;
        }
        int32_t which = -1;
        size_t mlen = trie_longest(t, s + i, n - i, &which);
        if (mlen == 0) {
            i++;
            continue;
        }
        size_t start = i, stop = i + mlen;
        const struct tk_added *a = &added[which];
        i = stop;
        if (a->single_word) {
            bool start_space = start == 0 || !is_word_char(last_cp(s, start));
            uint32_t next_cp = 0;
            if (stop < n) tk_utf8_decode((const unsigned char *)s + stop, n - stop, &next_cp);
            bool stop_space = stop == n || !is_word_char(next_cp);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t k = ns - 1;
                while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
                uint32_t cp = 0;
                tk_utf8_decode((const unsigned char *)s + k, ns - k, &cp);
                if (!tk_is_whitespace(cp)) break;
                ns = k;
            }
            start = ns > start_off ? ns : start_off;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp = 0;
                int k = tk_utf8_decode((const unsigned char *)s + stop, n - stop, &cp);
                if (k <= 0 || !tk_is_whitespace(cp)) break;
                stop += (size_t)k;
            }
        }
        if (start_off < start)
            push_piece(e, out,
                       (struct piece){p->off + start_off, start - start_off, -1,
                                      p->at_start && start_off == 0});
        push_piece(e, out, (struct piece){0, 0, a->id, false});
        start_off = stop;
    }
    if (start_off < n)
        push_piece(
            e, out,
            (struct piece){p->off + start_off, n - start_off, -1, p->at_start && start_off == 0});
}

/* ---- normalizers ---- */

static void normalize(struct enc *e, struct piece *p)
{
    const struct kiln_tokenizer *tok = e->tok;
    for (size_t k = 0; k < tok->norm_n; k++) {
        const struct tk_norm *nm = &tok->norm[k];
        if (p->len == 0) return;
        size_t off = e->arena.n;
        switch (nm->kind) {
        case TK_NORM_PREPEND:
            tk_buf_put(&e->arena, nm->a, nm->alen);
            tk_buf_put(&e->arena, e->arena.p + p->off, p->len);
            break;
        case TK_NORM_REPLACE:
            for (size_t i = 0; i < p->len;) {
                const char *s = e->arena.p + p->off;
                if (i + nm->alen <= p->len && !memcmp(s + i, nm->a, nm->alen)) {
                    tk_buf_put(&e->arena, nm->b, nm->blen);
                    i += nm->alen;
                } else {
                    size_t j = i + 1;
                    while (j < p->len && (unsigned char)s[j] != (unsigned char)nm->a[0]) j++;
                    tk_buf_put(&e->arena, e->arena.p + p->off + i, j - i);
                    i = j;
                }
            }
            break;
        case TK_NORM_NFC: {
            /* tk_nfc reads its input while appending: hand it a stable copy */
            char *copy = malloc(p->len);
            if (!copy) {
                e->oom = true;
                return;
            }
            memcpy(copy, e->arena.p + p->off, p->len);
            tk_nfc(&e->arena, copy, p->len);
            free(copy);
            break;
        }
        }
        if (e->arena.oom) {
            e->oom = true;
            return;
        }
        p->off = off;
        p->len = e->arena.n - off;
    }
}

static char *normalized_copy(const struct kiln_tokenizer *tok, const char *s, size_t n,
                             size_t *out_n)
{
    struct enc e = {.tok = tok};
    tk_buf_put(&e.arena, s, n);
    struct piece p = {0, e.arena.n, -1, true};
    if (!e.arena.oom) normalize(&e, &p);
    char *r = e.oom || e.arena.oom ? NULL : malloc(p.len + 1);
    if (r) {
        memcpy(r, e.arena.p + p.off, p.len);
        r[p.len] = 0;
        *out_n = p.len;
    }
    free(e.arena.p);
    return r;
}

/* ---- pre-tokenizer ---- */

struct match {
    size_t s, e;
    bool m;
};

struct mlist {
    struct match *v;
    size_t n, cap;
};

static void push_match(struct enc *e, struct mlist *l, size_t s, size_t en, bool m)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct match *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            e->oom = true;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (struct match){s, en, m};
}

static enum kiln_status regex_find(struct enc *e, const pcre2_code *re, const char *s, size_t n,
                                   struct mlist *ml, struct kiln_error *err)
{
    size_t last_end = 0, prev = 0;
    bool have_last = false;
    size_t last_match_end = 0;
    while (last_end <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK, e->md, e->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !e->jit) {
            /* rare (very long runs): retry with a larger JIT stack than the 32 KiB default */
            e->mctx = pcre2_match_context_create(NULL);
            e->jit = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
            if (!e->mctx || !e->jit) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
            pcre2_jit_stack_assign(e->mctx, NULL, e->jit);
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return kiln_errorf(err, KILN_ERR_LIMIT, "pre-tokenizer regex: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && have_last && last_match_end == me) {
            last_end += last_end < n ? char_len_at(s + last_end, n - last_end) : 1;
            continue;
        }
        last_end = me;
        last_match_end = me;
        have_last = true;
        if (prev != ms) push_match(e, ml, prev, ms, false);
        push_match(e, ml, ms, me, true);
        prev = me;
    }
    if (prev != n) push_match(e, ml, prev, n, false);
    return KILN_OK;
}

static void literal_find(struct enc *e, const char *lit, size_t ll, const char *s, size_t n,
                         struct mlist *ml)
{
    size_t prev = 0;
    for (size_t i = 0; i + ll <= n;) {
        if (!memcmp(s + i, lit, ll)) {
            if (prev != i) push_match(e, ml, prev, i, false);
            push_match(e, ml, i, i + ll, true);
            i += ll;
            prev = i;
        } else {
            i++;
        }
    }
    if (prev != n) push_match(e, ml, prev, n, false);
}

/* HF SplitDelimiterBehavior applied to the (range, is_match) list, then pieces pushed. */
static void apply_behavior(struct enc *e, const struct piece *p, struct mlist *ml,
                           enum tk_split_behavior beh, bool invert, struct plist *out)
{
    if (invert)
        for (size_t i = 0; i < ml->n; i++) ml->v[i].m = !ml->v[i].m;
    size_t w = 0;
    bool prevm = false;
    switch (beh) {
    case TK_SPLIT_ISOLATED:
        w = ml->n;
        break;
    case TK_SPLIT_REMOVED:
        for (size_t i = 0; i < ml->n; i++)
            if (!ml->v[i].m) ml->v[w++] = ml->v[i];
        break;
    case TK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < ml->n; i++) {
            struct match m = ml->v[i];
            if (m.m && !prevm && w > 0)
                ml->v[w - 1].e = m.e;
            else
                ml->v[w++] = m;
            prevm = m.m;
        }
        break;
    case TK_SPLIT_MERGED_NEXT: {
        /* right to left, then reversed back */
        size_t r = ml->n;
        for (size_t k = ml->n; k-- > 0;) {
            struct match m = ml->v[k];
            if (m.m && !prevm && r < ml->n)
                ml->v[r].s = m.s;
            else
                ml->v[--r] = m;
            prevm = m.m;
        }
        memmove(ml->v, ml->v + r, (ml->n - r) * sizeof *ml->v);
        w = ml->n - r;
        break;
    }
    case TK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < ml->n; i++) {
            struct match m = ml->v[i];
            if (m.m == prevm && w > 0)
                ml->v[w - 1].e = m.e;
            else
                ml->v[w++] = m;
            prevm = m.m;
        }
        break;
    }
    for (size_t i = 0; i < w; i++)
        push_piece(e, out,
                   (struct piece){p->off + ml->v[i].s, ml->v[i].e - ml->v[i].s, -1,
                                  p->at_start && ml->v[i].s == 0});
}

static enum kiln_status pre_step(struct enc *e, const struct tk_pre *st, const struct piece *p,
                                 struct plist *out, struct mlist *ml, struct kiln_error *err)
{
    ml->n = 0;
    switch (st->kind) {
    case TK_PRE_SPLIT: {
        const char *s = piece_text(e, p);
        if (st->re) {
            enum kiln_status rc = regex_find(e, st->re, s, p->len, ml, err);
            if (rc) return rc;
        } else {
            literal_find(e, st->lit, st->lit_len, s, p->len, ml);
        }
        apply_behavior(e, p, ml, st->behavior, st->invert, out);
        return KILN_OK;
    }
    case TK_PRE_BYTELEVEL_PREFIX: {
        struct piece q = *p;
        if (piece_text(e, p)[0] != ' ') {
            size_t off = e->arena.n;
            tk_buf_putc(&e->arena, ' ');
            tk_buf_put(&e->arena, e->arena.p + p->off, p->len);
            q.off = off;
            q.len = p->len + 1;
        }
        push_piece(e, out, q);
        return KILN_OK;
    }
    case TK_PRE_METASPACE: {
        size_t off = e->arena.n;
        const char *s = piece_text(e, p);
        bool starts = p->len >= st->rep_len && !memcmp(s, st->rep, st->rep_len);
        bool starts_space = p->len > 0 && s[0] == ' ';
        /* replace ' ' first; a leading space becomes the replacement, so "starts with" is
         * checked on the replaced text */
        bool prepend =
            !(starts || starts_space) && (st->prepend == 2 || (st->prepend == 1 && p->at_start));
        if (prepend) tk_buf_put(&e->arena, st->rep, st->rep_len);
        for (size_t i = 0; i < p->len; i++) {
            const char *c = e->arena.p + p->off + i;
            if (*c == ' ')
                tk_buf_put(&e->arena, st->rep, st->rep_len);
            else
                tk_buf_putc(&e->arena, *c);
        }
        struct piece q = {off, e->arena.n - off, -1, p->at_start};
        if (!st->split) {
            push_piece(e, out, q);
            return KILN_OK;
        }
        literal_find(e, st->rep, st->rep_len, e->arena.p + q.off, q.len, ml);
        apply_behavior(e, &q, ml, TK_SPLIT_MERGED_NEXT, false, out);
        return KILN_OK;
    }
    }
    return KILN_OK;
}

/* ---- BPE ---- */

static bool grow_scratch(struct enc *e, size_t n)
{
    if (n <= e->scap) return true;
    size_t cap = e->scap ? e->scap : 64;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(e->sym, cap * sizeof *a);
    if (a) e->sym = a;
    int32_t *b = realloc(e->prev, cap * sizeof *b);
    if (b) e->prev = b;
    int32_t *c = realloc(e->next, cap * sizeof *c);
    if (c) e->next = c;
    if (!a || !b || !c) {
        e->oom = true;
        return false;
    }
    e->scap = cap;
    return true;
}

static void heap_push(struct enc *e, size_t *hn, uint64_t v)
{
    if (*hn == e->hcap) {
        size_t cap = e->hcap ? e->hcap * 2 : 64;
        uint64_t *h = realloc(e->heap, cap * sizeof *h);
        if (!h) {
            e->oom = true;
            return;
        }
        e->heap = h;
        e->hcap = cap;
    }
    uint64_t *h = e->heap;
    size_t i = (*hn)++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static uint64_t heap_pop(struct enc *e, size_t *hn)
{
    uint64_t *h = e->heap, top = h[0], last = h[--(*hn)];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (h[c] >= last) break;
        h[i] = h[c];
        i = c;
    }
    if (n) h[i] = last;
    return top;
}

static int32_t vocab_get(const struct kiln_tokenizer *tok, const char *s, size_t n)
{
    return tk_strmap_find(&tok->vocab, s, n, NULL);
}

/* One symbol for a character (SentencePiece-style models): the vocab entry, else its bytes as
 * <0xXX> tokens (byte_fallback), else <unk> (fused when fuse_unk). */
static void add_char_symbols(struct enc *e, const char *c, size_t clen, size_t *ns,
                             int32_t *unk_pending)
{
    const struct kiln_tokenizer *tok = e->tok;
    int32_t id = vocab_get(tok, c, clen);
    if (id >= 0) {
        if (*unk_pending >= 0) {
            e->sym[(*ns)++] = *unk_pending;
            *unk_pending = -1;
        }
        e->sym[(*ns)++] = id;
        return;
    }
    if (tok->byte_fallback) {
        bool all = true;
        for (size_t k = 0; k < clen; k++)
            if (tok->byte_token[(unsigned char)c[k]] < 0) all = false;
        if (all) {
            for (size_t k = 0; k < clen; k++)
                e->sym[(*ns)++] = tok->byte_token[(unsigned char)c[k]];
            return;
        }
    }
    if (tok->unk_id >= 0) {
        if (*unk_pending >= 0 && !tok->fuse_unk) e->sym[(*ns)++] = *unk_pending;
        *unk_pending = tok->unk_id;
    }
}

static void bpe_merge(struct enc *e, const char *s, size_t n)
{
    const struct kiln_tokenizer *tok = e->tok;
    /* at most 4 symbols per byte (byte fallback of a 4-byte character) */
    if (!grow_scratch(e, 4 * n + 1)) return;
    size_t ns = 0;
    if (tok->byte_level) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = tok->byte_id[(unsigned char)s[i]];
            if (id >= 0)
                e->sym[ns++] = id;
            else if (tok->unk_id >= 0)
                e->sym[ns++] = tok->unk_id;
        }
    } else {
        int32_t unk = -1;
        for (size_t i = 0; i < n;) {
            size_t cl = char_len_at(s + i, n - i);
            add_char_symbols(e, s + i, cl, &ns, &unk);
            i += cl;
        }
        if (unk >= 0) e->sym[ns++] = unk;
    }
    if (ns == 0) return;
    int32_t *sym = e->sym, *prev = e->prev, *next = e->next;
    size_t hn = 0;
    for (size_t i = 0; i < ns; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    uint32_t rank;
    int32_t merged;
    for (size_t i = 0; i + 1 < ns; i++)
        if (tk_pairmap_get(&tok->merges, sym[i], sym[i + 1], &rank, &merged))
            heap_push(e, &hn, ((uint64_t)rank << 32) | i);
    while (hn > 0 && !e->oom) {
        uint64_t top = heap_pop(e, &hn);
        uint32_t r = (uint32_t)(top >> 32);
        int32_t pos = (int32_t)(uint32_t)top;
        if (sym[pos] < 0 || next[pos] < 0) continue;
        int32_t nx = next[pos];
        if (!tk_pairmap_get(&tok->merges, sym[pos], sym[nx], &rank, &merged) || rank != r)
            continue; /* stale entry */
        sym[pos] = merged;
        sym[nx] = -1;
        next[pos] = next[nx];
        if (next[nx] >= 0) prev[next[nx]] = pos;
        if (prev[pos] >= 0 &&
            tk_pairmap_get(&tok->merges, sym[prev[pos]], sym[pos], &rank, &merged))
            heap_push(e, &hn, ((uint64_t)rank << 32) | (uint32_t)prev[pos]);
        if (next[pos] >= 0 &&
            tk_pairmap_get(&tok->merges, sym[pos], sym[next[pos]], &rank, &merged))
            heap_push(e, &hn, ((uint64_t)rank << 32) | (uint32_t)pos);
    }
    for (int32_t i = 0; i >= 0; i = next[i]) push_id(e, sym[i]);
}

/* ---- word cache ----
 * Words that need merges repeat (identifiers, inflected and non-English words); HF keeps a
 * cache of merged words, and so does kiln, one per thread so encoding stays lock-free. A
 * direct-mapped table of short words: a slot remembers which tokenizer filled it (uid), so
 * several tokenizers can share a thread. 8192 slots x 80 bytes per thread, freed at thread
 * exit. */
#define WC_SLOTS 8192
#define WC_KEY   24
#define WC_IDS   8

struct wc_slot {
    uint64_t uid; /* tokenizer that filled it; 0 = empty */
    uint8_t klen, nids;
    char key[WC_KEY];
    int32_t ids[WC_IDS];
};

static pthread_key_t wc_key;
static pthread_once_t wc_once = PTHREAD_ONCE_INIT;
static bool wc_ok;
static _Thread_local struct wc_slot *wc_table;

static void wc_init(void)
{
    wc_ok = pthread_key_create(&wc_key, free) == 0;
}

static struct wc_slot *wc_get(void)
{
    if (wc_table) return wc_table;
    pthread_once(&wc_once, wc_init);
    if (!wc_ok) return NULL;
    wc_table = calloc(WC_SLOTS, sizeof *wc_table);
    if (wc_table && pthread_setspecific(wc_key, wc_table) != 0) {
        free(wc_table);
        wc_table = NULL;
    }
    return wc_table;
}

static void bpe(struct enc *e, const char *s, size_t n)
{
    const struct kiln_tokenizer *tok = e->tok;
    if (tok->ignore_merges) {
        int32_t id = vocab_get(tok, s, n);
        if (id >= 0) {
            push_id(e, id);
            return;
        }
    }
    struct wc_slot *table = n <= WC_KEY ? wc_get() : NULL;
    if (!table) {
        bpe_merge(e, s, n);
        return;
    }
    struct wc_slot *sl = &table[tk_hash(s, n) & (WC_SLOTS - 1)];
    if (sl->uid == tok->uid && sl->klen == n && !memcmp(sl->key, s, n)) {
        for (int i = 0; i < sl->nids; i++) push_id(e, sl->ids[i]);
        return;
    }
    size_t start = e->nids;
    bpe_merge(e, s, n);
    size_t got = e->nids - start;
    if (e->oom || got > WC_IDS) return;
    sl->uid = tok->uid;
    sl->klen = (uint8_t)n;
    sl->nids = (uint8_t)got;
    memcpy(sl->key, s, n);
    memcpy(sl->ids, e->ids + start, got * sizeof *sl->ids);
}

/* ---- the pipeline ---- */

static void swap_lists(struct enc *e)
{
    struct plist t = e->a;
    e->a = e->b;
    e->b = t;
    e->b.n = 0;
}

enum kiln_status tk_encode(const struct kiln_tokenizer *tok, const char *text, size_t len,
                           bool add_special, int32_t **ids, size_t *n, struct kiln_error *err)
{
    *ids = NULL;
    *n = 0;
    struct enc e = {.tok = tok};
    struct mlist ml = {0};
    enum kiln_status st = KILN_OK;
    e.md = pcre2_match_data_create(1, NULL);
    if (!e.md) e.oom = true;
    if (add_special)
        for (size_t i = 0; i < tok->post_prefix_n; i++) push_id(&e, tok->post_prefix[i]);

    tk_utf8_lossy(&e.arena, text ? text : "", text ? len : 0);
    if (e.arena.oom) e.oom = true;
    struct piece whole = {0, e.arena.n, -1, true};
    if (!e.oom) split_added(&e, &tok->trie_raw, &whole, &e.b);
    swap_lists(&e);

    if (tok->norm_n || tok->trie_norm.nodes) {
        for (size_t i = 0; i < e.a.n && !e.oom; i++) {
            struct piece p = e.a.v[i];
            if (p.id >= 0) {
                push_piece(&e, &e.b, p);
                continue;
            }
            normalize(&e, &p);
            split_added(&e, &tok->trie_norm, &p, &e.b);
        }
        swap_lists(&e);
    }
    /* all pre-tokenizer steps but the last run over the whole list; the last one runs piece
     * by piece straight into BPE, so the list never holds every word of a long text */
    size_t last = tok->pre_n ? tok->pre_n - 1 : 0;
    for (size_t k = 0; k < last && !e.oom && !st; k++) {
        for (size_t i = 0; i < e.a.n && !e.oom && !st; i++) {
            struct piece p = e.a.v[i];
            if (p.id >= 0)
                push_piece(&e, &e.b, p);
            else
                st = pre_step(&e, &tok->pre[k], &p, &e.b, &ml, err);
        }
        swap_lists(&e);
        if (e.arena.oom) e.oom = true;
    }
    for (size_t i = 0; i < e.a.n && !e.oom && !st; i++) {
        struct piece p = e.a.v[i];
        if (p.id >= 0) {
            push_id(&e, p.id);
            continue;
        }
        e.b.n = 0;
        if (tok->pre_n)
            st = pre_step(&e, &tok->pre[last], &p, &e.b, &ml, err);
        else
            push_piece(&e, &e.b, p);
        if (e.arena.oom) e.oom = true;
        for (size_t k = 0; k < e.b.n && !e.oom && !st; k++) {
            const struct piece *q = &e.b.v[k];
            if (q->id >= 0)
                push_id(&e, q->id);
            else
                bpe(&e, piece_text(&e, q), q->len);
        }
    }
    if (add_special)
        for (size_t i = 0; i < tok->post_suffix_n; i++) push_id(&e, tok->post_suffix[i]);

    if (!st && e.oom) st = kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    if (!st) {
        *ids = e.ids ? e.ids : malloc(sizeof(int32_t));
        *n = e.nids;
        if (!*ids) st = kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    } else {
        free(e.ids);
    }
    free(ml.v);
    free(e.arena.p);
    free(e.a.v);
    free(e.b.v);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    pcre2_match_data_free(e.md);
    if (e.mctx) pcre2_match_context_free(e.mctx);
    if (e.jit) pcre2_jit_stack_free(e.jit);
    return st;
}

enum kiln_status kiln_tokenizer_encode(const struct kiln_tokenizer *tok, const char *text,
                                       size_t len, bool add_special, int32_t **ids, size_t *n,
                                       struct kiln_error *err)
{
    return tk_encode(tok, text, len, add_special, ids, n, err);
}
