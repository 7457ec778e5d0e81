/* Matcher: the vocabulary trie, the per-sequence state (a set of call stacks over the grammar's
 * rule NFAs, hash-consed and memoized per byte), masks, accept / rollback / forced tokens, and
 * the compile entry points with their cache. */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

/* ---- vocabulary ---- */

/* the vocabulary's masks of frames of a character class (struct gr_xmask) */
struct gr_xcache {
    _Atomic(struct gr_xmask *) head;
    atomic_int n;
};
static void xcache_free(struct gr_xcache *c);

static const struct kiln_grammar_vocab *sort_vocab; /* qsort context (vocab_create only) */
static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;

static int cmp_tok(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    const struct kiln_grammar_vocab *v = sort_vocab;
    uint32_t lx = v->len[x], ly = v->len[y];
    int c = memcmp(v->bytes[x], v->bytes[y], lx < ly ? lx : ly);
    if (c) return c;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static void trie_free(struct gr_trie *t)
{
    free(t->nbyte), free(t->ndepth), free(t->nnext), free(t->ntok0), free(t->ntokn), free(t->toks);
}

void kiln_grammar_vocab_free(struct kiln_grammar_vocab *v)
{
    if (!v) return;
    if (v->bytes)
        for (int32_t i = 0; i < v->n; i++) free(v->bytes[i]);
    free(v->bytes), free(v->len), free(v->eos), free(v->plain_mask);
    free(v->plain_le), free(v->plain_long), free(v->plain_long_cp);
    free(v->all_tok0), free(v->all_np), free(v->all_big), free(v->big_masks);
    free(v->pl_id), free(v->pl_cp), free(v->pl_first), free(v->pl_rest);
    xcache_free(v->xcache);
    trie_free(&v->all);
    trie_free(&v->nonplain);
    trie_free(&v->notascii);
    free(v);
}

int32_t kiln_grammar_vocab_size(const struct kiln_grammar_vocab *v)
{
    return v->n;
}

/* toks: nt ids sorted by bytes (taken over) */
static bool trie_build(struct kiln_grammar_vocab *v, struct gr_trie *t, int32_t *toks, int32_t nt)
{
    t->toks = toks;
    size_t total = 0;
    for (int32_t i = 0; i < nt; i++) total += v->len[toks[i]];
    size_t cap = total + 1;
    t->nbyte = malloc(cap);
    t->ndepth = malloc(cap * sizeof *t->ndepth);
    t->nnext = malloc(cap * sizeof *t->nnext);
    t->ntok0 = malloc(cap * sizeof *t->ntok0);
    t->ntokn = calloc(cap, sizeof *t->ntokn);
    uint32_t *path = malloc(65537 * sizeof *path);
    if (!t->nbyte || !t->ndepth || !t->nnext || !t->ntok0 || !t->ntokn || !path) {
        free(path);
        return false;
    }
    /* path[d] is the node at depth d on the current path */
    uint32_t nn = 1;
    t->nbyte[0] = 0;
    t->ndepth[0] = 0;
    t->ntok0[0] = 0;
    path[0] = 0;
    uint32_t depth = 0;
    const char *prev = NULL;
    uint32_t prevlen = 0;
    for (int32_t i = 0; i < nt; i++) {
        int32_t id = toks[i];
        const char *s = v->bytes[id];
        uint32_t n = v->len[id];
        uint32_t l = 0;
        while (l < n && l < prevlen && prev[l] == s[l]) l++;
        while (depth > l) t->nnext[path[depth--]] = nn;
        for (uint32_t d = l; d < n; d++) {
            t->nbyte[nn] = (uint8_t)s[d];
            t->ndepth[nn] = (uint16_t)(d + 1);
            t->ntok0[nn] = 0;
            path[++depth] = nn++;
        }
        uint32_t at = path[depth];
        if (t->ntokn[at] == 0) t->ntok0[at] = (uint32_t)i;
        t->ntokn[at]++;
        if ((int)n > v->maxdepth) v->maxdepth = (int)n;
        prev = s;
        prevlen = n;
    }
    while (depth > 0) t->nnext[path[depth--]] = nn;
    t->nnext[0] = nn;
    t->nnodes = nn;
    free(path);
    return true;
}

static bool is_plain(const unsigned char *s, uint32_t n)
{
    for (uint32_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c < 0x20 || c == '"' || c == '\\') return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        int len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || i + (uint32_t)len > n) return false;
        uint32_t cp = len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
        for (int k = 1; k < len; k++) {
            if ((s[i + (uint32_t)k] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (s[i + (uint32_t)k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += (uint32_t)len;
    }
    return true;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* pl_id, pl_cp, pl_first, pl_rest, xcache (see struct kiln_grammar_vocab) */
static bool plain_chars_index(struct kiln_grammar_vocab *v)
{
    int32_t np = 0;
    for (int32_t id = 0; id < v->n; id++) np += v->plain_mask[id >> 5] >> (id & 31) & 1;
    v->pl_id = malloc(((size_t)np + 1) * sizeof *v->pl_id);
    v->pl_cp = malloc(((size_t)np + 1) * sizeof *v->pl_cp);
    v->pl_first = malloc((size_t)np + 1);
    v->pl_rest = calloc(2 * (size_t)np + 2, sizeof *v->pl_rest);
    v->xcache = calloc(1, sizeof *v->xcache);
    if (!v->pl_id || !v->pl_cp || !v->pl_first || !v->pl_rest || !v->xcache) return false;
    for (int32_t id = 0; id < v->n; id++) {
        if (!(v->plain_mask[id >> 5] >> (id & 31) & 1)) continue;
        const unsigned char *b = (const unsigned char *)v->bytes[id];
        int32_t i = v->nplain++;
        int cp = 0;
        v->pl_id[i] = id;
        v->pl_first[i] = b[0] < 0x80 ? b[0] : GR_NONASCII;
        for (uint32_t k = 0; k < v->len[id]; k++) {
            if ((b[k] & 0xC0) == 0x80) continue;
            if (cp++ == 0) continue;
            unsigned c = b[k] < 0x80 ? b[k] : GR_NONASCII;
            v->pl_rest[2 * (size_t)i + (c >> 6)] |= 1ull << (c & 63);
        }
        v->pl_cp[i] = (uint16_t)(cp > 65535 ? 65535 : cp);
    }
    return true;
}

/* the plain tokens by their length in code points (see struct kiln_grammar_vocab) */
static bool plain_by_length(struct kiln_grammar_vocab *v)
{
    size_t words = ((size_t)v->n + 31) / 32;
    v->plain_le = calloc(GR_PLAIN_LE * words + 1, sizeof *v->plain_le);
    int32_t nlong = 0;
    for (int32_t id = 0; id < v->n; id++)
        if (v->plain_mask[id >> 5] >> (id & 31) & 1) {
            int cp = 0;
            for (uint32_t i = 0; i < v->len[id]; i++)
                cp += ((unsigned char)v->bytes[id][i] & 0xC0) != 0x80;
            if (cp > v->plain_maxcp) v->plain_maxcp = cp;
            if (cp < GR_PLAIN_LE) {
                if (v->plain_le)
                    v->plain_le[(size_t)cp * words + (size_t)(id >> 5)] |= 1u << (id & 31);
            } else
                nlong++;
        }
    v->plain_long = malloc(((size_t)nlong + 1) * sizeof *v->plain_long);
    v->plain_long_cp = malloc(((size_t)nlong + 1) * sizeof *v->plain_long_cp);
    uint64_t *tmp = malloc(((size_t)nlong + 1) * sizeof *tmp);
    if (!v->plain_le || !v->plain_long || !v->plain_long_cp || !tmp) {
        free(tmp);
        return false;
    }
    for (int cp = 1; cp < GR_PLAIN_LE; cp++)
        for (size_t w = 0; w < words; w++)
            v->plain_le[(size_t)cp * words + w] |= v->plain_le[(size_t)(cp - 1) * words + w];
    for (int32_t id = 0; id < v->n; id++)
        if (v->plain_mask[id >> 5] >> (id & 31) & 1) {
            uint64_t cp = 0;
            for (uint32_t i = 0; i < v->len[id]; i++)
                cp += ((unsigned char)v->bytes[id][i] & 0xC0) != 0x80;
            if (cp >= GR_PLAIN_LE) tmp[v->nplain_long++] = cp << 32 | (uint32_t)id;
        }
    qsort(tmp, (size_t)v->nplain_long, sizeof *tmp, cmp_u64);
    if (!plain_chars_index(v)) {
        free(tmp);
        return false;
    }
    for (int32_t i = 0; i < v->nplain_long; i++) {
        v->plain_long[i] = (int32_t)(uint32_t)tmp[i];
        v->plain_long_cp[i] = (uint16_t)(tmp[i] >> 32);
    }
    free(tmp);
    return true;
}

/* all_tok0, all_np, all_big and big_masks (see struct kiln_grammar_vocab) */
static bool all_index(struct kiln_grammar_vocab *v)
{
    const struct gr_trie *t = &v->all, *np = &v->nonplain;
    size_t words = ((size_t)v->n + 31) / 32;
    v->all_tok0 = malloc(((size_t)t->nnodes + 1) * sizeof *v->all_tok0);
    v->all_np = malloc(((size_t)t->nnodes + 1) * sizeof *v->all_np);
    v->all_big = malloc(((size_t)t->nnodes + 1) * sizeof *v->all_big);
    uint32_t *nplain = malloc(((size_t)t->nnodes + 1) * sizeof *nplain); /* prefix counts */
    uint32_t *path = malloc(((size_t)v->maxdepth + 2) * sizeof *path);
    uint32_t *cursor = malloc(((size_t)v->maxdepth + 2) * sizeof *cursor);
    bool ok = v->all_tok0 && v->all_np && v->all_big && nplain && path && cursor;
    int nbig = 0;
    if (ok) {
        uint32_t tk = 0, pl = 0;
        for (uint32_t i = 0; i <= t->nnodes; i++) {
            v->all_tok0[i] = tk, nplain[i] = pl;
            if (i == t->nnodes) break;
            for (uint32_t k = 0; k < t->ntokn[i]; k++) {
                int32_t id = t->toks[t->ntok0[i] + k];
                pl += v->plain_mask[id >> 5] >> (id & 31) & 1;
            }
            tk += t->ntokn[i];
        }
        /* the same path in `nonplain`: both tries are in preorder with children by byte, so a
         * cursor per depth moves forward over the children of the matching parent */
        path[0] = 0, cursor[1] = 1, v->all_np[0] = 0;
        for (uint32_t i = 1; i < t->nnodes; i++) {
            uint32_t d = t->ndepth[i], par = path[d - 1], j = GR_NO_NODE;
            if (par != GR_NO_NODE) {
                for (j = cursor[d]; j < np->nnext[par] && np->nbyte[j] < t->nbyte[i];)
                    j = np->nnext[j];
                cursor[d] = j;
                if (j >= np->nnext[par] || np->nbyte[j] != t->nbyte[i]) j = GR_NO_NODE;
            }
            v->all_np[i] = path[d] = j;
            cursor[d + 1] = j == GR_NO_NODE ? GR_NO_NODE : j + 1;
        }
        for (uint32_t i = 0; i < t->nnodes; i++)
            v->all_big[i] = nplain[t->nnext[i]] - nplain[i] >= GR_BIG_AT ? nbig++ : -1;
        v->big_masks = calloc((size_t)nbig * words + 1, sizeof *v->big_masks);
        ok = v->big_masks;
    }
    for (uint32_t i = 0; ok && i < t->nnodes; i++)
        if (v->all_big[i] >= 0) {
            uint32_t *mk = v->big_masks + (size_t)v->all_big[i] * words;
            for (uint32_t k = v->all_tok0[i]; k < v->all_tok0[t->nnext[i]]; k++) {
                int32_t id = t->toks[k];
                mk[id >> 5] |= v->plain_mask[id >> 5] & 1u << (id & 31);
            }
        }
    free(nplain), free(path), free(cursor);
    return ok;
}

/* v->n, v->bytes and v->len filled (NULL bytes: never allowed): sorts, builds the tries */
static enum kiln_status vocab_finish(struct kiln_grammar_vocab *v, struct kiln_error *err)
{
    int32_t *toks = malloc(((size_t)v->n + 1) * sizeof *toks);
    int32_t *np = malloc(((size_t)v->n + 1) * sizeof *np);
    int32_t *na = malloc(((size_t)v->n + 1) * sizeof *na);
    v->plain_mask = calloc(((size_t)v->n + 31) / 32 + 1, sizeof *v->plain_mask);
    if (!toks || !np || !na || !v->plain_mask) {
        free(toks), free(np), free(na);
        goto oom;
    }
    int32_t nt = 0, nnp = 0, nna = 0;
    for (int32_t id = 0; id < v->n; id++)
        if (v->bytes[id]) toks[nt++] = id;
    pthread_mutex_lock(&sort_lock);
    sort_vocab = v;
    qsort(toks, (size_t)nt, sizeof *toks, cmp_tok);
    pthread_mutex_unlock(&sort_lock);
    for (int32_t i = 0; i < nt; i++) {
        int32_t id = toks[i];
        bool ascii = true;
        for (uint32_t k = 0; k < v->len[id]; k++) ascii &= (unsigned char)v->bytes[id][k] < 0x80;
        if (is_plain((const unsigned char *)v->bytes[id], v->len[id]))
            v->plain_mask[id >> 5] |= 1u << (id & 31);
        else
            np[nnp++] = id;
        if (!ascii || !(v->plain_mask[id >> 5] >> (id & 31) & 1)) na[nna++] = id;
    }
    bool ok1 = trie_build(v, &v->all, toks, nt);
    bool ok2 = trie_build(v, &v->nonplain, np, nnp);
    bool ok3 = trie_build(v, &v->notascii, na, nna);
    if (ok1 && ok2 && ok3 && plain_by_length(v) && all_index(v)) return KILN_OK;
oom:
    return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory building the vocabulary trie");
}

enum kiln_status kiln_grammar_vocab_create(const struct kiln_tokenizer *tok,
                                           struct kiln_grammar_vocab **out, struct kiln_error *err)
{
    *out = NULL;
    struct kiln_grammar_vocab *v = calloc(1, sizeof *v);
    if (!v) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory building the vocabulary trie");
    v->tok = tok;
    v->n = kiln_tokenizer_vocab_size(tok);
    const int32_t *eos;
    v->neos = kiln_tokenizer_eos(tok, &eos);
    v->eos = malloc(((size_t)v->neos + 1) * sizeof *v->eos);
    v->bytes = calloc((size_t)v->n + 1, sizeof *v->bytes);
    v->len = calloc((size_t)v->n + 1, sizeof *v->len);
    if (!v->eos || !v->bytes || !v->len) goto oom;
    if (v->neos) memcpy(v->eos, eos, (size_t)v->neos * sizeof *eos);
    for (int32_t id = 0; id < v->n; id++) {
        if (kiln_tokenizer_is_special(tok, id)) continue;
        size_t n;
        const char *s = kiln_tokenizer_token_bytes(tok, id, &n);
        if (!s || n == 0 || n > 65535) continue;
        v->bytes[id] = malloc(n);
        if (!v->bytes[id]) goto oom;
        memcpy(v->bytes[id], s, n);
        v->len[id] = (uint32_t)n;
    }
    if (vocab_finish(v, err)) {
        kiln_grammar_vocab_free(v);
        return KILN_ERR_NOMEM;
    }
    *out = v;
    return KILN_OK;
oom:
    kiln_grammar_vocab_free(v);
    return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory building the vocabulary trie");
}

enum kiln_status gr_vocab_from_strings(const char *const *toks, const size_t *lens, int32_t n,
                                       int32_t eos, struct kiln_grammar_vocab **out,
                                       struct kiln_error *err)
{
    *out = NULL;
    struct kiln_grammar_vocab *v = calloc(1, sizeof *v);
    if (!v) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    v->n = n;
    v->eos = malloc(sizeof *v->eos);
    v->bytes = calloc((size_t)n + 1, sizeof *v->bytes);
    v->len = calloc((size_t)n + 1, sizeof *v->len);
    if (!v->eos || !v->bytes || !v->len) goto oom;
    v->eos[0] = eos;
    v->neos = eos >= 0;
    for (int32_t id = 0; id < n; id++) {
        if (id == eos || !toks[id] || !lens[id] || lens[id] > 65535) continue;
        if (!(v->bytes[id] = malloc(lens[id]))) goto oom;
        memcpy(v->bytes[id], toks[id], lens[id]);
        v->len[id] = (uint32_t)lens[id];
    }
    if (vocab_finish(v, err)) {
        kiln_grammar_vocab_free(v);
        return KILN_ERR_NOMEM;
    }
    *out = v;
    return KILN_OK;
oom:
    kiln_grammar_vocab_free(v);
    return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
}

/* ---- matcher ---- */

#define MT_DEAD        (-1)
#define MT_TERMINATED  (-2)
#define MT_MAX_NODES   (8 << 20)
#define MT_MAX_CFG_LEN 4096
#define MT_MASK_CACHE  4
#define MT_UNKNOWN     (-3)
#define MT_MAX_DENSE   8192 /* dense rows per matcher (1 KiB each) */
/* (configuration, byte) steps the hash memo holds at most (12 MiB); past it the memo starts
 * over instead of doubling: it and the dense rows are caches of a function of interned ids
 * (a step recomputed interns the same configuration), and a doubling past 512k entries cost
 * 50-150 ms of page faults in one mask on the dev machine (detekt-1.22.0's 4,936-token test) */
#define MT_MAX_MEMO (1u << 20)

struct kiln_matcher {
    struct kiln_grammar *g;
    /* stack nodes (state, parent node), hash-consed */
    int32_t *nstate, *nparent;
    uint32_t *nstamp;
    int32_t nn, ncap;
    int32_t *nht;
    uint32_t nhtcap;
    /* configurations: sorted node lists + complete flag, interned */
    uint32_t *coff;
    uint16_t *clen;
    uint8_t *ccomplete;
    int32_t nc, ccap;
    int32_t *pool;
    size_t npool, poolcap;
    int32_t *cht;
    uint32_t chtcap;
    /* (configuration, byte) -> configuration */
    uint64_t *mkey;
    int32_t *mval;
    size_t mcap, mn;
    /* history: configuration after each accepted step; hist[0] is the start */
    int32_t *hist;
    int nhist, histcap;
    /* scratch */
    int32_t *work, *outn;
    size_t workcap, outcap;
    uint32_t epoch;
    int32_t *walk;
    int32_t **walk_rows; /* the dense row of walk[d] (NULL: use the hash memo) */
    bool *walk_ascii;    /* walk_trie: the path to depth d is plain ASCII characters */
    /* dense (configuration, byte) -> configuration rows for the configurations a trie walk
     * steps from (MT_UNKNOWN: not computed yet); a configuration's steps are in its row once
     * it has one, in the hash memo before */
    int32_t **dense;
    size_t densecap;
    int32_t ndense;
    /* plain-character analysis scratch: the configurations of this level and the next, and
     * the level each configuration was first reached at in run fa_epoch */
    int32_t *popc; /* parent node -> the configuration a return to it goes on from */
    size_t popcap;
    int32_t *fa_cur, *fa_next;
    size_t fa_curcap, fa_nextcap, fa_nnext;
    uint32_t *fa_mark;
    uint16_t *fa_level;
    size_t fa_markcap;
    uint32_t fa_epoch;
    /* configuration -> the one every plain character leads it to (plain_next; MT_UNKNOWN:
     * not computed yet) */
    int32_t *pnext;
    size_t pnextcap;
    /* recent masks by configuration */
    int32_t mc_cfg[MT_MASK_CACHE];
    uint32_t *mc_mask[MT_MASK_CACHE];
    int mc_next;
};

static uint32_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (uint32_t)x;
}

static bool rehash_nodes(struct kiln_matcher *m, uint32_t cap)
{
    int32_t *t = malloc(cap * sizeof *t);
    if (!t) return false;
    memset(t, 0xff, cap * sizeof *t);
    for (int32_t i = 0; i < m->nn; i++) {
        uint32_t h =
            mix((uint64_t)(uint32_t)m->nstate[i] << 32 | (uint32_t)m->nparent[i]) & (cap - 1);
        while (t[h] >= 0) h = (h + 1) & (cap - 1);
        t[h] = i;
    }
    free(m->nht);
    m->nht = t;
    m->nhtcap = cap;
    return true;
}

/* -1 when over the limit or out of memory */
static int32_t intern_node(struct kiln_matcher *m, int32_t state, int32_t parent)
{
    if ((uint32_t)m->nn * 2 >= m->nhtcap && !rehash_nodes(m, m->nhtcap ? m->nhtcap * 2 : 1024))
        return -1;
    uint32_t h = mix((uint64_t)(uint32_t)state << 32 | (uint32_t)parent) & (m->nhtcap - 1);
    while (m->nht[h] >= 0) {
        int32_t i = m->nht[h];
        if (m->nstate[i] == state && m->nparent[i] == parent) return i;
        h = (h + 1) & (m->nhtcap - 1);
    }
    if (m->nn >= MT_MAX_NODES) return -1;
    if (m->nn == m->ncap) {
        size_t cap = (size_t)m->ncap;
        size_t c1 = cap, c2 = cap, c3 = cap;
        if (!gr_grow((void **)&m->nstate, &c1, cap + 1, sizeof *m->nstate) ||
            !gr_grow((void **)&m->nparent, &c2, cap + 1, sizeof *m->nparent) ||
            !gr_grow((void **)&m->nstamp, &c3, cap + 1, sizeof *m->nstamp))
            return -1;
        for (size_t i = cap; i < c3; i++) m->nstamp[i] = 0;
        m->ncap = (int32_t)(c1 < c2 ? (c1 < c3 ? c1 : c3) : (c2 < c3 ? c2 : c3));
    }
    int32_t i = m->nn++;
    m->nstate[i] = state;
    m->nparent[i] = parent;
    m->nstamp[i] = 0;
    m->nht[h] = i;
    return i;
}

static uint32_t cfg_hash(const int32_t *n, int len, bool complete)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)complete;
    for (int i = 0; i < len; i++) h = (h ^ (uint32_t)n[i]) * 0x100000001b3ULL;
    return mix(h);
}

static bool rehash_cfgs(struct kiln_matcher *m, uint32_t cap)
{
    int32_t *t = malloc(cap * sizeof *t);
    if (!t) return false;
    memset(t, 0xff, cap * sizeof *t);
    for (int32_t i = 0; i < m->nc; i++) {
        uint32_t h = cfg_hash(m->pool + m->coff[i], m->clen[i], m->ccomplete[i]) & (cap - 1);
        while (t[h] >= 0) h = (h + 1) & (cap - 1);
        t[h] = i;
    }
    free(m->cht);
    m->cht = t;
    m->chtcap = cap;
    return true;
}

static int32_t intern_cfg(struct kiln_matcher *m, const int32_t *n, int len, bool complete)
{
    if ((uint32_t)m->nc * 2 >= m->chtcap && !rehash_cfgs(m, m->chtcap ? m->chtcap * 2 : 1024))
        return MT_DEAD;
    uint32_t h = cfg_hash(n, len, complete) & (m->chtcap - 1);
    while (m->cht[h] >= 0) {
        int32_t i = m->cht[h];
        if (m->clen[i] == len && m->ccomplete[i] == complete &&
            !memcmp(m->pool + m->coff[i], n, (size_t)len * sizeof *n))
            return i;
        h = (h + 1) & (m->chtcap - 1);
    }
    if (m->nc == m->ccap) {
        size_t cap = (size_t)m->ccap, c1 = cap, c2 = cap, c3 = cap;
        if (!gr_grow((void **)&m->coff, &c1, cap + 1, sizeof *m->coff) ||
            !gr_grow((void **)&m->clen, &c2, cap + 1, sizeof *m->clen) ||
            !gr_grow((void **)&m->ccomplete, &c3, cap + 1, sizeof *m->ccomplete))
            return MT_DEAD;
        m->ccap = (int32_t)(c1 < c2 ? (c1 < c3 ? c1 : c3) : (c2 < c3 ? c2 : c3));
    }
    if (!gr_grow((void **)&m->pool, &m->poolcap, m->npool + (size_t)len, sizeof *m->pool))
        return MT_DEAD;
    int32_t i = m->nc++;
    m->coff[i] = (uint32_t)m->npool;
    m->clen[i] = (uint16_t)len;
    m->ccomplete[i] = complete;
    memcpy(m->pool + m->npool, n, (size_t)len * sizeof *n);
    m->npool += (size_t)len;
    m->cht[h] = i;
    return i;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

static bool push_work(struct kiln_matcher *m, size_t *nw, int32_t node)
{
    if (node < 0) return false;
    if (!gr_grow((void **)&m->work, &m->workcap, *nw + 1, sizeof *m->work)) return false;
    m->work[(*nw)++] = node;
    return true;
}

/* Closes the items in m->work[0..nw) (nodes) over calls and returns, and interns the set of
 * nodes whose state reads a byte. MT_DEAD when nothing can follow and not complete. */
static int32_t closure(struct kiln_matcher *m, size_t nw)
{
    const struct kiln_grammar *g = m->g;
    if (++m->epoch == 0) {
        for (int32_t i = 0; i < m->nn; i++) m->nstamp[i] = 0;
        m->epoch = 1;
    }
    size_t no = 0;
    bool complete = false;
    while (nw) {
        int32_t n = m->work[--nw];
        if (m->nstamp[n] == m->epoch) continue;
        m->nstamp[n] = m->epoch;
        int32_t s = m->nstate[n], p = m->nparent[n];
        const struct gr_state *st = &g->st[s];
        if (st->ne) {
            if (!gr_grow((void **)&m->outn, &m->outcap, no + 1, sizeof *m->outn)) return MT_DEAD;
            m->outn[no++] = n;
        }
        for (uint32_t k = 0; k < st->nc; k++) {
            const struct gr_calle *ce = &g->calls[st->c0 + k];
            int32_t ret = intern_node(m, ce->to, p);
            if (ret < 0 || !push_work(m, &nw, intern_node(m, g->rule_start[ce->rule], ret)))
                return MT_DEAD;
        }
        if (st->accept) {
            if (p < 0)
                complete = true;
            else if (!push_work(m, &nw, p))
                return MT_DEAD;
        }
    }
    if (no == 0 && !complete) return MT_DEAD;
    if (no > MT_MAX_CFG_LEN) return MT_DEAD; /* too ambiguous: refuse rather than guess */
    qsort(m->outn, no, sizeof *m->outn, cmp_i32);
    return intern_cfg(m, m->outn, (int)no, complete);
}

/* The uint64-keyed tables (UINT64_MAX: an empty slot; linear probing from mix(key)): key[cap]
 * and val[cap] (vsize bytes each) rehashed into new arrays of new_cap slots, or false when out
 * of memory (the old arrays are kept). */
static bool u64_rehash(const uint64_t *key, const void *val, size_t vsize, size_t cap,
                       size_t new_cap, uint64_t **new_key, void **new_val)
{
    uint64_t *k = malloc(new_cap * sizeof *k);
    char *v = malloc(new_cap * vsize);
    if (!k || !v) {
        free(k), free(v);
        return false;
    }
    memset(k, 0xff, new_cap * sizeof *k);
    for (size_t i = 0; i < cap; i++)
        if (key[i] != UINT64_MAX) {
            size_t h = mix(key[i]) & (new_cap - 1);
            while (k[h] != UINT64_MAX) h = (h + 1) & (new_cap - 1);
            k[h] = key[i];
            memcpy(v + h * vsize, (const char *)val + i * vsize, vsize);
        }
    *new_key = k;
    *new_val = v;
    return true;
}

static bool memo_grow(struct kiln_matcher *m)
{
    size_t cap = m->mcap ? m->mcap * 2 : 4096;
    uint64_t *k;
    void *val;
    if (!u64_rehash(m->mkey, m->mval, sizeof *m->mval, m->mcap, cap, &k, &val)) return false;
    free(m->mkey), free(m->mval);
    m->mkey = k;
    m->mval = val;
    m->mcap = cap;
    return true;
}

static int32_t step(struct kiln_matcher *m, int32_t cfg, unsigned byte)
{
    /* a configuration with a dense row keeps its steps there only: the hash memo of a cold
     * matcher walking whole tries grew to millions of entries, and each doubling of it cost
     * 50-110 ms of page faults on the dev machine (one mask of o47199: 115 ms) */
    int32_t *row = (size_t)cfg < m->densecap ? m->dense[cfg] : NULL;
    if (row && row[byte] != MT_UNKNOWN) return row[byte];
    uint64_t key = (uint64_t)(uint32_t)cfg << 8 | byte;
    size_t h = 0;
    if (m->mcap) {
        h = mix(key) & (m->mcap - 1);
        while (m->mkey[h] != UINT64_MAX) {
            if (m->mkey[h] == key) return m->mval[h];
            h = (h + 1) & (m->mcap - 1);
        }
    }
    const struct kiln_grammar *g = m->g;
    size_t nw = 0;
    const int32_t *nodes = m->pool + m->coff[cfg];
    int len = m->clen[cfg];
    int32_t res = MT_DEAD;
    for (int i = 0; i < len; i++) {
        int32_t n = nodes[i];
        const struct gr_state *st = &g->st[m->nstate[n]];
        const struct gr_edge *e = g->edges + st->e0;
        for (uint32_t k = 0; k < st->ne; k++)
            if (byte >= e[k].lo && byte <= e[k].hi) {
                int32_t t = intern_node(m, e[k].to, m->nparent[n]);
                if (!push_work(m, &nw, t)) goto out;
                nodes = m->pool + m->coff[cfg]; /* stable: pool only grows in intern_cfg */
            }
    }
    if (nw) res = closure(m, nw);
out:
    if (row) {
        row[byte] = res;
        return res;
    }
    if ((m->mn + 1) * 2 >= m->mcap) {
        if (m->mcap >= MT_MAX_MEMO) {
            memset(m->mkey, 0xff, m->mcap * sizeof *m->mkey);
            m->mn = 0;
        } else if (!memo_grow(m))
            return res;
    }
    h = mix(key) & (m->mcap - 1);
    while (m->mkey[h] != UINT64_MAX) h = (h + 1) & (m->mcap - 1);
    m->mkey[h] = key;
    m->mval[h] = res;
    m->mn++;
    return res;
}

static int32_t cur(const struct kiln_matcher *m)
{
    return m->hist[m->nhist - 1];
}

static bool push_hist(struct kiln_matcher *m, int32_t c)
{
    if (m->nhist == m->histcap) {
        int cap = m->histcap ? m->histcap * 2 : 64;
        int32_t *p = realloc(m->hist, (size_t)cap * sizeof *p);
        if (!p) return false;
        m->hist = p;
        m->histcap = cap;
    }
    m->hist[m->nhist++] = c;
    return true;
}

void kiln_matcher_free(struct kiln_matcher *m)
{
    if (!m) return;
    kiln_grammar_unref(m->g);
    free(m->nstate), free(m->nparent), free(m->nstamp), free(m->nht), free(m->coff);
    free(m->clen), free(m->ccomplete), free(m->pool), free(m->cht), free(m->mkey), free(m->mval);
    free(m->hist), free(m->work), free(m->outn), free(m->walk);
    free(m->walk_rows), free(m->walk_ascii);
    free(m->popc);
    free(m->fa_cur), free(m->fa_next), free(m->fa_mark), free(m->fa_level);
    free(m->pnext);
    for (size_t i = 0; i < m->densecap; i++) free(m->dense[i]);
    free(m->dense);
    for (int k = 0; k < MT_MASK_CACHE; k++) free(m->mc_mask[k]);
    free(m);
}

enum kiln_status kiln_matcher_create(struct kiln_grammar *g, struct kiln_matcher **out,
                                     struct kiln_error *err)
{
    *out = NULL;
    struct kiln_matcher *m = calloc(1, sizeof *m);
    if (!m) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory creating a matcher");
    m->g = kiln_grammar_ref(g);
    for (int k = 0; k < MT_MASK_CACHE; k++) m->mc_cfg[k] = MT_DEAD;
    m->walk = malloc(((size_t)g->vocab->maxdepth + 2) * sizeof *m->walk);
    m->walk_rows = malloc(((size_t)g->vocab->maxdepth + 2) * sizeof *m->walk_rows);
    m->walk_ascii = malloc(((size_t)g->vocab->maxdepth + 2) * sizeof *m->walk_ascii);
    size_t nw = 0;
    int32_t c0 = MT_DEAD;
    if (m->walk && m->walk_rows && m->walk_ascii &&
        push_work(m, &nw, intern_node(m, g->rule_start[g->root], -1)))
        c0 = closure(m, nw);
    if (c0 == MT_DEAD || !push_hist(m, c0)) {
        kiln_matcher_free(m);
        return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory creating a matcher");
    }
    *out = m;
    return KILN_OK;
}

bool kiln_matcher_is_complete(const struct kiln_matcher *m)
{
    int32_t c = cur(m);
    return c >= 0 && m->ccomplete[c];
}

bool kiln_matcher_is_terminated(const struct kiln_matcher *m)
{
    return cur(m) == MT_TERMINATED;
}

bool kiln_matcher_is_finished(const struct kiln_matcher *m)
{
    int32_t c = cur(m);
    return c >= 0 && m->ccomplete[c] && m->clen[c] == 0;
}

/* ---- plain-character analysis ----
 * Inside a string most positions allow every "plain" token (see struct kiln_grammar_vocab), or
 * every plain token up to some length (maxLength), and walking the 128k-token trie to find that
 * out costs milliseconds. So, once per grammar state s (the result is shared by every matcher of
 * the grammar), run the stack (s) alone, its caller cut off, over plain characters, level by
 * level (a level: the configurations after k characters):
 *   GR_FA_ALL       every plain string keeps a stack inside the frame alive;
 *   GR_FA_DEPTH + D every plain string of at most D characters stays alive, every one of D + 1
 *                   dies, and no run returns from the frame on the way (so the caller cannot
 *                   matter: exact for any stack under s);
 *   GR_FA_NONE      anything else (mixed, or over the budget): the trie walk decides.
 * A configuration's plain tokens are the union over its stacks, so one ALL stack allows every
 * plain token, and stacks that are all ALL/DEPTH allow exactly the plain tokens up to the largest
 * D; the non-plain tokens are then walked on their own (much smaller) trie. Bytes are stepped one
 * per class of the configuration's edges (bytes no edge tells apart step alike). */
enum { GR_FA_UNKNOWN, GR_FA_NONE, GR_FA_ALL, GR_FA_DEPTH };
#define FA_BUDGET 1024 /* configurations one analysis may reach */

struct fa_run {
    int level;
    bool dead, pop, repeat, over;
    int budget;
};

static bool fa_mark_grow(struct kiln_matcher *m, int32_t c)
{
    if ((size_t)c < m->fa_markcap) return true;
    size_t old = m->fa_markcap, c1 = old, c2 = old;
    if (!gr_grow((void **)&m->fa_mark, &c1, (size_t)c + 1, sizeof *m->fa_mark) ||
        !gr_grow((void **)&m->fa_level, &c2, (size_t)c + 1, sizeof *m->fa_level))
        return false;
    for (size_t i = old; i < c1 && i < c2; i++) m->fa_mark[i] = 0;
    m->fa_markcap = c1 < c2 ? c1 : c2;
    return true;
}

/* y: the configuration after one more whole character */
static void fa_add(struct kiln_matcher *m, struct fa_run *r, int32_t y)
{
    if (y < 0 || m->clen[y] == 0) {
        r->dead = true;
        if (y >= 0 && m->ccomplete[y]) r->pop = true;
        return;
    }
    if (m->ccomplete[y]) r->pop = true;
    if (!fa_mark_grow(m, y)) {
        r->over = true;
        return;
    }
    if (m->fa_mark[y] == m->fa_epoch) {
        if (m->fa_level[y] != r->level + 1) r->repeat = true;
        return;
    }
    m->fa_mark[y] = m->fa_epoch;
    m->fa_level[y] = (uint16_t)(r->level + 1);
    if (--r->budget < 0 ||
        !gr_grow((void **)&m->fa_next, &m->fa_nextcap, m->fa_nnext + 1, sizeof *m->fa_next)) {
        r->over = true;
        return;
    }
    m->fa_next[m->fa_nnext++] = y;
}

/* x's byte classes: bit b of cut set where some edge of x starts or stops telling b apart */
static void fa_cuts(const struct kiln_matcher *m, int32_t x, uint32_t cut[8])
{
    const struct kiln_grammar *g = m->g;
    memset(cut, 0, 8 * sizeof *cut);
    const int32_t *nodes = m->pool + m->coff[x];
    for (int i = 0; i < m->clen[x]; i++) {
        const struct gr_state *st = &g->st[m->nstate[nodes[i]]];
        const struct gr_edge *e = g->edges + st->e0;
        for (uint32_t k = 0; k < st->ne; k++) {
            cut[e[k].lo >> 5] |= 1u << (e[k].lo & 31);
            if (e[k].hi < 255) cut[(e[k].hi + 1) >> 5] |= 1u << ((e[k].hi + 1) & 31);
        }
    }
}

/* steps x over the bytes lo..hi (one per class); need: continuation bytes after this one, the
 * first of them in c1lo..c1hi */
static void fa_bytes(struct kiln_matcher *m, struct fa_run *r, int32_t x, const uint32_t cut[8],
                     unsigned lo, unsigned hi, int need, unsigned c1lo, unsigned c1hi)
{
    for (unsigned b = lo; b <= hi && !r->over;) {
        int32_t y = step(m, x, b);
        if (need == 0)
            fa_add(m, r, y);
        else if (y < 0 || m->clen[y] == 0) {
            r->dead = true;
            if (y >= 0 && m->ccomplete[y]) r->pop = true;
        } else {
            if (m->ccomplete[y]) r->pop = true;
            uint32_t ycut[8];
            fa_cuts(m, y, ycut);
            fa_bytes(m, r, y, ycut, c1lo, c1hi, need - 1, 0x80, 0xBF);
        }
        for (b++; b <= hi && !(cut[b >> 5] >> (b & 31) & 1); b++) {
        }
    }
}

/* the plain characters as byte ranges: a first byte in lo..hi, then `need` continuation bytes,
 * the first of them in c1lo..c1hi (the UTF-8 encodings of U+0020..U+10FFFF but '"', '\\' and
 * the surrogates) */
static const struct {
    uint8_t lo, hi, need, c1lo, c1hi;
} plain_chars[] = {
    {0x20, 0x21, 0, 0, 0},       {0x23, 0x5B, 0, 0, 0},       {0x5D, 0x7F, 0, 0, 0},
    {0xC2, 0xDF, 1, 0x80, 0xBF}, {0xE0, 0xE0, 2, 0xA0, 0xBF}, {0xE1, 0xEC, 2, 0x80, 0xBF},
    {0xED, 0xED, 2, 0x80, 0x9F}, {0xEE, 0xEF, 2, 0x80, 0xBF}, {0xF0, 0xF0, 3, 0x90, 0xBF},
    {0xF1, 0xF3, 3, 0x80, 0xBF}, {0xF4, 0xF4, 3, 0x80, 0x8F}};

/* every plain character from x (a configuration at a character boundary) */
static void fa_expand(struct kiln_matcher *m, struct fa_run *r, int32_t x)
{
    uint32_t cut[8];
    fa_cuts(m, x, cut);
    for (size_t k = 0; k < sizeof plain_chars / sizeof plain_chars[0]; k++)
        fa_bytes(m, r, x, cut, plain_chars[k].lo, plain_chars[k].hi, plain_chars[k].need,
                 plain_chars[k].c1lo, plain_chars[k].c1hi);
}

/* a run over plain characters from the frame of stack node base (its parent chain ends in -1):
 * its first configuration, marked at level 0 and the only one of fa_cur; -1 when none */
static int32_t fa_start(struct kiln_matcher *m, int32_t base)
{
    size_t nw = 0;
    if (!push_work(m, &nw, base)) return -1;
    int32_t c0 = closure(m, nw);
    if (c0 < 0 || m->clen[c0] == 0 || !fa_mark_grow(m, c0)) return -1;
    if (++m->fa_epoch == 0) {
        memset(m->fa_mark, 0, m->fa_markcap * sizeof *m->fa_mark);
        m->fa_epoch = 1;
    }
    m->fa_mark[c0] = m->fa_epoch;
    m->fa_level[c0] = 0;
    if (!gr_grow((void **)&m->fa_cur, &m->fa_curcap, 1, sizeof *m->fa_cur)) return -1;
    m->fa_cur[0] = c0;
    return c0;
}

static int fa_compute(struct kiln_matcher *m, int32_t base)
{
    if (fa_start(m, base) < 0) return GR_FA_NONE;
    size_t ncur = 1;
    struct fa_run r = {.budget = FA_BUDGET};
    for (int level = 0;; level++) {
        /* every plain string of up to `level` characters lives */
        if (level >= m->g->vocab->plain_maxcp) return GR_FA_ALL;
        r.level = level;
        r.dead = false;
        m->fa_nnext = 0;
        for (size_t i = 0; i < ncur && !r.over; i++) fa_expand(m, &r, m->fa_cur[i]);
        /* a matcher out of nodes steps to DEAD where another would not: no verdict from it */
        if (r.over || m->nn >= MT_MAX_NODES) return GR_FA_NONE;
        if (r.dead)
            return !r.pop && !r.repeat && m->fa_nnext == 0 ? GR_FA_DEPTH + level : GR_FA_NONE;
        if (m->fa_nnext == 0) return GR_FA_ALL; /* every reachable configuration was expanded */
        int32_t *t = m->fa_cur;
        size_t tc = m->fa_curcap;
        m->fa_cur = m->fa_next, m->fa_curcap = m->fa_nextcap;
        m->fa_next = t, m->fa_nextcap = tc;
        ncur = m->fa_nnext;
    }
}

/* s's analysis, computed once per grammar */
static int fa_state(struct kiln_matcher *m, int32_t s)
{
    struct kiln_grammar *g = m->g;
    atomic_int *t = atomic_load_explicit(&g->fa, memory_order_acquire);
    if (!t) {
        atomic_int *fresh = calloc((size_t)g->nstates + 1, sizeof *fresh);
        if (!fresh) return GR_FA_NONE;
        atomic_int *expect = NULL;
        if (atomic_compare_exchange_strong(&g->fa, &expect, fresh))
            t = fresh;
        else {
            free(fresh);
            t = expect;
        }
    }
    int r = atomic_load_explicit(&t[s], memory_order_relaxed);
    if (r == GR_FA_UNKNOWN) {
        r = fa_compute(m, intern_node(m, s, -1));
        atomic_store_explicit(&t[s], r, memory_order_relaxed);
    }
    return r;
}

/* c's plain tokens: -1 unknown (walk them), else the longest plain string (INT_MAX: any) */
static int plain_reach(struct kiln_matcher *m, int32_t c)
{
    int best = 0;
    for (int i = 0; i < m->clen[c]; i++) {
        int r = fa_state(m, m->nstate[m->pool[m->coff[c] + (uint32_t)i]]);
        if (r == GR_FA_ALL) return INT_MAX;
        if (r == GR_FA_NONE)
            best = -1;
        else if (best >= 0 && r - GR_FA_DEPTH > best)
            best = r - GR_FA_DEPTH;
    }
    return best;
}

/* mask |= the plain tokens of at most d code points */
static void or_plain(const struct kiln_grammar_vocab *v, int d, uint32_t *mask)
{
    size_t words = ((size_t)v->n + 31) / 32;
    if (d >= v->plain_maxcp) {
        for (size_t w = 0; w < words; w++) mask[w] |= v->plain_mask[w];
        return;
    }
    const uint32_t *le = v->plain_le + (size_t)(d < GR_PLAIN_LE ? d : GR_PLAIN_LE - 1) * words;
    for (size_t w = 0; w < words; w++) mask[w] |= le[w];
    for (int32_t i = 0; i < v->nplain_long && v->plain_long_cp[i] <= d; i++)
        mask[v->plain_long[i] >> 5] |= 1u << (v->plain_long[i] & 31);
}

/* ---- plain chains ----
 * The per-state analysis above cuts each stack from its caller, so a stack that may return in
 * the middle of a plain run has no verdict (GR_FA_NONE) and its frame walk covers the whole
 * 128k-token trie: every character position of a long maxLength string (a count of 64 calls of
 * a one-character rule, counted again in blocks) is such a stack and a new grammar state, so
 * each mask there walked the trie anew (4-5 ms each, Github_medium---o82710). A configuration
 * holds every stack down to the root, so for it the question has an exact answer without
 * cutting anything: when every plain character leads configuration x to one configuration y
 * (a counting repetition does not care which character), x's plain strings of k characters
 * all lead to the k-th link of the chain x -> y -> ...; the chain ends where every plain
 * character dies (exactly the plain tokens up to that length are allowed), or loops, or
 * outlasts the longest plain token (all are allowed). Links are memoized per matcher, so the
 * next position (a later link) reuses the chain; a configuration whose plain characters go
 * different ways (after `{`, at a key of named properties) has no chain. */
#define PN_MIXED (-4)

static void pn_merge(int32_t *to, int32_t y)
{
    if (*to == MT_UNKNOWN)
        *to = y;
    else if (*to != y)
        *to = PN_MIXED;
}

/* the plain characters from x over the bytes lo..hi (one per class of x's edges) into *to;
 * need: continuation bytes after this one, the first of them in c1lo..c1hi */
static void pn_bytes(struct kiln_matcher *m, int32_t x, unsigned lo, unsigned hi, int need,
                     unsigned c1lo, unsigned c1hi, int32_t *to)
{
    uint32_t cut[8];
    fa_cuts(m, x, cut);
    for (unsigned b = lo; b <= hi && *to != PN_MIXED;) {
        int32_t y = step(m, x, b);
        if (need == 0 || y < 0)
            pn_merge(to, y < 0 ? MT_DEAD : y);
        else
            pn_bytes(m, y, c1lo, c1hi, need - 1, 0x80, 0xBF, to);
        for (b++; b <= hi && !(cut[b >> 5] >> (b & 31) & 1); b++) {
        }
    }
}

/* the configuration every plain character (ascii: every plain ASCII character) leads x to,
 * MT_DEAD when every one dies, PN_MIXED when they differ (memoized per matcher) */
static int32_t plain_next(struct kiln_matcher *m, int32_t x, bool ascii)
{
    size_t at = (size_t)x * 2 + ascii;
    if (at >= m->pnextcap) {
        size_t old = m->pnextcap;
        if (!gr_grow((void **)&m->pnext, &m->pnextcap, at + 1, sizeof *m->pnext)) return PN_MIXED;
        for (size_t i = old; i < m->pnextcap; i++) m->pnext[i] = MT_UNKNOWN;
    }
    if (m->pnext[at] != MT_UNKNOWN) return m->pnext[at];
    int32_t to = MT_UNKNOWN;
    size_t ranges = ascii ? 3 : sizeof plain_chars / sizeof plain_chars[0];
    for (size_t k = 0; k < ranges && to != PN_MIXED; k++)
        pn_bytes(m, x, plain_chars[k].lo, plain_chars[k].hi, plain_chars[k].need,
                 plain_chars[k].c1lo, plain_chars[k].c1hi, &to);
    /* a matcher out of nodes steps to DEAD where another would not: no chain through it */
    if (m->nn >= MT_MAX_NODES) to = PN_MIXED;
    m->pnext[at] = to; /* pnext is not moved by step: only this function grows it */
    return to;
}

/* c's plain tokens from its chain: -1 none (no chain), else the longest plain string (INT_MAX:
 * any). The chain is followed for GR_PLAIN_LE - 1 links at most (each link steps ~30 byte
 * classes, most of them inside multi-byte characters: 128 links cost the first mask in a
 * maxLength-255 string 1-3 ms); past them *top is the last link, where every plain token of more
 * code points is after its first GR_PLAIN_LE - 1 (chain_long decides those), else -1. *loop:
 * the chain ends in a configuration every plain character leads back to (an unbounded string:
 * the per-state frame walks are the same at every position there). */
static int chain_reach(struct kiln_matcher *m, int32_t c, bool *loop, int32_t *top)
{
    int32_t x = c;
    *loop = false;
    *top = -1;
    for (int k = 0; k < GR_PLAIN_LE - 1; k++) {
        int32_t y = plain_next(m, x, false);
        if (y == PN_MIXED) return -1;
        if (y == MT_DEAD) return k;
        if (y == x) {
            *loop = true;
            return INT_MAX;
        }
        x = y;
    }
    *top = x;
    return GR_PLAIN_LE - 1;
}

/* mask |= the plain tokens of GR_PLAIN_LE code points or more that top (the configuration after
 * any GR_PLAIN_LE - 1 plain characters) takes after their first GR_PLAIN_LE - 1: ASCII ones
 * (all but a few: runs of '-', '=', spaces) by the chain of ASCII characters from top, the rest
 * byte by byte */
static void chain_long(struct kiln_matcher *m, int32_t top, uint32_t *mask)
{
    const struct kiln_grammar_vocab *v = m->g->vocab;
    int32_t x = top;
    int links = 0; /* ASCII links verified past top */
    bool stop = false, loop = false;
    for (int32_t i = 0; i < v->nplain_long; i++) {
        int32_t id = v->plain_long[i];
        int rest = v->plain_long_cp[i] - (GR_PLAIN_LE - 1);
        const unsigned char *b = (const unsigned char *)v->bytes[id];
        if (v->len[id] == v->plain_long_cp[i]) { /* ASCII */
            while (links < rest && !stop && !loop) {
                int32_t y = plain_next(m, x, true);
                if (y < 0) {
                    stop = true; /* dead: so are all longer ones; mixed: byte by byte */
                    if (y == MT_DEAD) break;
                } else {
                    loop = y == x;
                    x = y;
                    links++;
                }
            }
            if (links >= rest || loop) {
                mask[id >> 5] |= 1u << (id & 31);
                continue;
            }
        }
        /* byte by byte from top (its first GR_PLAIN_LE - 1 code points lead there) */
        uint32_t at = 0;
        for (int cp = 0; at < v->len[id]; at++)
            if ((b[at] & 0xC0) != 0x80 && cp++ == GR_PLAIN_LE - 1) break;
        int32_t y = top;
        for (; at < v->len[id] && y >= 0; at++) y = step(m, y, b[at]);
        if (y >= 0) mask[id >> 5] |= 1u << (id & 31);
    }
}

/* c's dense row (allocated on first use), NULL past the limit or out of memory */
static int32_t *dense_row(struct kiln_matcher *m, int32_t c)
{
    if ((size_t)c >= m->densecap) {
        size_t old = m->densecap;
        if (!gr_grow((void **)&m->dense, &m->densecap, (size_t)c + 1, sizeof *m->dense)) {
            m->densecap = old;
            return NULL;
        }
        for (size_t i = old; i < m->densecap; i++) m->dense[i] = NULL;
    }
    if (!m->dense[c] && m->ndense < MT_MAX_DENSE) {
        int32_t *row = malloc(256 * sizeof *row);
        if (!row) return NULL;
        for (int b = 0; b < 256; b++) row[b] = MT_UNKNOWN;
        m->dense[c] = row;
        m->ndense++;
    }
    return m->dense[c];
}

static int32_t step_row(struct kiln_matcher *m, int32_t *row, int32_t c, unsigned byte)
{
    if (!row) return step(m, c, byte);
    int32_t x = row[byte];
    if (x == MT_UNKNOWN) row[byte] = x = step(m, c, byte);
    return x;
}

/* walks the subtree under trie node `root` from configuration c (c: after root's bytes). A walk
 * of the whole vocabulary (all from its root) skips the subtrees below a plain ASCII path where
 * every plain character leads back to the same configuration (the key of an object that takes
 * other keys, once it has left every listed name: ~120k tokens visited one by one, 2-3 ms a key
 * with 100 listed names): every plain token there is allowed (a path of plain characters and a
 * plain rest make a plain token, and every plain rest stays alive), and the subtree's non-plain
 * tokens are walked on the non-plain trie */
static void walk_trie(struct kiln_matcher *m, const struct gr_trie *t, uint32_t root, int32_t c,
                      uint32_t *mask)
{
    const struct kiln_grammar_vocab *v = m->g->vocab;
    size_t words = ((size_t)v->n + 31) / 32;
    int32_t *walk = m->walk;
    int32_t **rows = m->walk_rows;
    bool *ascii = m->walk_ascii;
    walk[t->ndepth[root]] = c;
    rows[t->ndepth[root]] = dense_row(m, c);
    ascii[t->ndepth[root]] = t == &v->all && root == 0;
    const uint8_t *nbyte = t->nbyte;
    const uint16_t *ndepth = t->ndepth;
    for (uint32_t i = root + 1; i < t->nnext[root];) {
        uint32_t d = ndepth[i] - 1u;
        unsigned b = nbyte[i];
        int32_t nx = step_row(m, rows[d], walk[d], b);
        if (nx < 0) {
            i = t->nnext[i];
            continue;
        }
        for (uint32_t k = 0; k < t->ntokn[i]; k++) {
            int32_t tk = t->toks[t->ntok0[i] + k];
            mask[tk >> 5] |= 1u << (tk & 31);
        }
        if (m->clen[nx] == 0) { /* only the end can follow: no longer token continues */
            i = t->nnext[i];
            continue;
        }
        bool a = ascii[d] && b >= 0x20 && b < 0x80 && b != '"' && b != '\\';
        if (a && i + 1 < t->nnext[i] && plain_next(m, nx, false) == nx) {
            if (v->all_big[i] >= 0) {
                const uint32_t *big = v->big_masks + (size_t)v->all_big[i] * words;
                for (size_t w = 0; w < words; w++) mask[w] |= big[w];
            } else
                for (uint32_t k = v->all_tok0[i]; k < v->all_tok0[t->nnext[i]]; k++) {
                    int32_t tk = t->toks[k];
                    mask[tk >> 5] |= v->plain_mask[tk >> 5] & 1u << (tk & 31);
                }
            if (v->all_np[i] != GR_NO_NODE) walk_trie(m, &v->nonplain, v->all_np[i], nx, mask);
            i = t->nnext[i];
            continue;
        }
        walk[ndepth[i]] = nx;
        /* a row pays off only when the node has children to step from */
        rows[ndepth[i]] = i + 1 < t->nnext[i] ? dense_row(m, nx) : NULL;
        ascii[ndepth[i]] = a;
        i++;
    }
}

/* ---- frames of a character class ----
 * A string with a pattern or format (`^[\\w\\s-]+$`, `.+:.+`, an email) has no verdict above when
 * some plain characters die in it, and its frame walk covered the whole 128k-token trie once per
 * grammar state (2-7 ms, the first mask inside each such string). Often the characters that
 * die are a fixed set at every position: so the frame is run alone over plain characters
 * again, level by level, and where the characters that die are one set d0 at the first
 * character and one set d at every later one (in every configuration of the level), the frame
 * never returns on the way, and the levels end in a loop or where every character dies at once,
 * the plain strings the frame takes are exactly those of at most `depth` characters avoiding
 * d0 then d. Their tokens come from one pass over the vocabulary's per-token character sets,
 * shared by every frame of the grammar with the same sets; only the non-plain trie is walked. */
struct gr_xkey {
    uint64_t d0[2], d[2]; /* characters that die first, later (GR_NONASCII: non-ASCII ones) */
    int depth;            /* the longest plain string that lives (INT_MAX: any) */
    bool mixed; /* some non-ASCII characters die, others live: tokens with them are walked */
};
struct gr_xmask {
    struct gr_xkey key;
    uint32_t *mask; /* the plain tokens it allows */
    struct gr_xmask *next;
};
#define XM_WIDTH                                                                                   \
    4              /* configurations a level may have: a class has one or a few; the key of an     \
                    * object with many names that takes others has one a first character, each     \
                    * of ~100 stacks (stepping them all cost up to 6 ms in one mask) */
#define XM_MAX 512 /* masks a vocabulary keeps (8 MiB for 128k tokens); past them, walks */
#define XM_MIN                                                                                     \
    16 /* first characters that live, under which the whole trie is walked: the                    \
        * walk is short (a structure position, where only spaces go on), and each                  \
        * new mask costs a pass over the vocabulary (~0.5 ms) */

struct xm_char {
    uint64_t dead[2];
    bool na_dead, na_live, back0;
    int32_t c0;
};

static void xm_set(uint64_t set[2], unsigned lo, unsigned hi)
{
    for (unsigned c = lo; c <= hi; c++) set[c >> 6] |= 1ull << (c & 63);
}

/* x over the bytes lo..hi (one per class of cut); need: continuation bytes after this one, the
 * first of them in c1lo..c1hi; ascii: a one-byte character */
static void xm_bytes(struct kiln_matcher *m, struct fa_run *r, struct xm_char *xc, int32_t x,
                     const uint32_t cut[8], unsigned lo, unsigned hi, int need, unsigned c1lo,
                     unsigned c1hi, bool ascii)
{
    for (unsigned b = lo; b <= hi && !r->over;) {
        unsigned e = b + 1; /* the class is b..e-1 */
        while (e <= hi && !(cut[e >> 5] >> (e & 31) & 1)) e++;
        int32_t y = step(m, x, b);
        if (y >= 0 && m->ccomplete[y]) r->pop = true;
        if (y < 0 || m->clen[y] == 0) {
            if (ascii)
                xm_set(xc->dead, b, e - 1);
            else
                xc->na_dead = true;
        } else if (need > 0) {
            uint32_t ycut[8];
            fa_cuts(m, y, ycut);
            xm_bytes(m, r, xc, y, ycut, c1lo, c1hi, need - 1, 0x80, 0xBF, false);
        } else {
            if (!ascii) xc->na_live = true;
            if (y == xc->c0) xc->back0 = true;
            fa_add(m, r, y);
        }
        b = e;
    }
}

/* x's dead characters; *mixed: some non-ASCII characters die and others live */
static void xm_expand(struct kiln_matcher *m, struct fa_run *r, int32_t x, int32_t c0,
                      uint64_t dead[2], bool *back0, bool *mixed)
{
    struct xm_char xc = {.c0 = c0};
    uint32_t cut[8];
    fa_cuts(m, x, cut);
    for (size_t k = 0; k < sizeof plain_chars / sizeof plain_chars[0]; k++)
        xm_bytes(m, r, &xc, x, cut, plain_chars[k].lo, plain_chars[k].hi, plain_chars[k].need,
                 plain_chars[k].c1lo, plain_chars[k].c1hi, plain_chars[k].need == 0);
    *mixed = xc.na_dead && xc.na_live;
    if (xc.na_dead) xm_set(xc.dead, GR_NONASCII, GR_NONASCII);
    dead[0] = xc.dead[0], dead[1] = xc.dead[1];
    *back0 |= xc.back0;
}

/* the verdict above for the frame from stack node base; false: none */
static bool xm_compute(struct kiln_matcher *m, int32_t base, struct gr_xkey *key)
{
    static const uint64_t full[2] = {0xffffffff00000000ull, 0xffffffffefffffffull};
    memset(key, 0, sizeof *key);
    int32_t c0 = fa_start(m, base);
    if (c0 < 0) return false;
    size_t ncur = 1;
    struct fa_run r = {.budget = FA_BUDGET};
    bool have_d = false, back0 = false;
    for (int level = 0;; level++) {
        if (level >= m->g->vocab->plain_maxcp) {
            key->depth = INT_MAX;
            break;
        }
        if (ncur > XM_WIDTH) return false;
        r.level = level;
        m->fa_nnext = 0;
        bool alldead = false, live = false;
        for (size_t i = 0; i < ncur; i++) {
            uint64_t d[2];
            bool mixed;
            xm_expand(m, &r, m->fa_cur[i], c0, d, &back0, &mixed);
            if (r.over) return false;
            key->mixed |= mixed;
            if (d[0] == full[0] && d[1] == full[1] && !mixed)
                alldead = true;
            else if (live = true, level == 0)
                key->d0[0] = d[0], key->d0[1] = d[1];
            else if (!have_d)
                key->d[0] = d[0], key->d[1] = d[1], have_d = true;
            else if (d[0] != key->d[0] || d[1] != key->d[1])
                return false;
        }
        if (level == 0) { /* few first characters: the trie walk is short */
            int live0 = 128 - __builtin_popcountll(key->d0[0] | ~full[0]) -
                        __builtin_popcountll(key->d0[1] | ~full[1]);
            bool na_live = !(key->d0[0] >> GR_NONASCII & 1) || key->mixed;
            if (live0 < XM_MIN && !na_live) return false;
        }
        /* a matcher out of nodes steps to DEAD where another would not: no verdict from it */
        if (r.pop || r.over || m->nn >= MT_MAX_NODES) return false;
        if (alldead) { /* every character dies here: the strings that live end at `level` */
            if (live || r.repeat || back0) return false;
            key->depth = level;
            break;
        }
        if (m->fa_nnext == 0) { /* every reachable configuration was expanded */
            key->depth = INT_MAX;
            break;
        }
        int32_t *t = m->fa_cur;
        size_t tc = m->fa_curcap;
        m->fa_cur = m->fa_next, m->fa_curcap = m->fa_nextcap;
        m->fa_next = t, m->fa_nextcap = tc;
        ncur = m->fa_nnext;
    }
    /* a return to the first configuration puts its characters at later positions too */
    if (back0 && have_d && (key->d0[0] != key->d[0] || key->d0[1] != key->d[1])) return false;
    if (!have_d) key->d[0] = key->d0[0], key->d[1] = key->d0[1];
    if (key->mixed) { /* the mask keeps the ASCII tokens, the walk takes the others */
        xm_set(key->d0, GR_NONASCII, GR_NONASCII);
        xm_set(key->d, GR_NONASCII, GR_NONASCII);
    }
    return true;
}

static bool xkey_eq(const struct gr_xkey *a, const struct gr_xkey *b)
{
    return a->d0[0] == b->d0[0] && a->d0[1] == b->d0[1] && a->d[0] == b->d[0] &&
           a->d[1] == b->d[1] && a->depth == b->depth && a->mixed == b->mixed;
}

/* the plain tokens key allows (computed once per vocabulary and key); NULL: over XM_MAX, or out
 * of memory */
static const uint32_t *xmask_get(const struct kiln_grammar_vocab *v, const struct gr_xkey *key)
{
    struct gr_xcache *c = v->xcache;
    for (struct gr_xmask *x = atomic_load_explicit(&c->head, memory_order_acquire); x; x = x->next)
        if (xkey_eq(&x->key, key)) return x->mask;
    /* counted before the add too, so that lookups past the limit do not wrap the count */
    if (atomic_load(&c->n) >= XM_MAX || atomic_fetch_add(&c->n, 1) >= XM_MAX) return NULL;
    struct gr_xmask *x = malloc(sizeof *x);
    uint32_t *mask = calloc(((size_t)v->n + 31) / 32 + 1, sizeof *mask);
    if (!x || !mask) {
        free(x), free(mask);
        return NULL;
    }
    for (int32_t i = 0; i < v->nplain; i++) {
        unsigned f = v->pl_first[i];
        const uint64_t *rest = v->pl_rest + 2 * (size_t)i;
        if (v->pl_cp[i] > key->depth || key->d0[f >> 6] >> (f & 63) & 1 || (rest[0] & key->d[0]) ||
            (rest[1] & key->d[1]))
            continue;
        mask[v->pl_id[i] >> 5] |= 1u << (v->pl_id[i] & 31);
    }
    x->key = *key;
    x->mask = mask;
    x->next = atomic_load_explicit(&c->head, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&c->head, &x->next, x, memory_order_release,
                                                  memory_order_relaxed)) {
    }
    return mask;
}

static void xcache_free(struct gr_xcache *c)
{
    if (!c) return;
    for (struct gr_xmask *x = atomic_load(&c->head), *next; x; x = next) {
        next = x->next;
        free(x->mask), free(x);
    }
    free(c);
}

/* ---- per-state frame walks ----
 * A configuration's mask is the union of its stacks' masks, and a stack (s, parent)'s mask splits
 * into the tokens its frame takes alone (s with the caller cut off: the same for every parent,
 * XGrammar's context-independent tokens) and the tokens that return from the frame part way, at
 * a trie node after which the frame can complete: those go on from the parent's configuration.
 * So once per grammar state (shared by every matcher of the grammar) the trie is walked from the
 * frame alone, keeping the tokens it takes and the nodes where it returns; a mask is then their
 * union plus short walks of the returned-at subtrees from each parent. Plain tokens come from
 * the plain-character analysis where it has a verdict (only the non-plain trie is walked). */
struct gr_fw {
    int plain; /* plain_reach of the frame alone: -1 (walked), else the longest plain string */
    const uint32_t *xmask; /* else the plain tokens of a frame of a character class (or NULL) */
    const struct gr_trie *t;
    int32_t nci; /* tokens the frame takes alone: ci[nci], or ci_mask when many */
    int32_t *ci;
    uint32_t *ci_mask;
    uint32_t npop; /* trie nodes (of t) after which the frame may return */
    uint32_t *pop;
};
#define FW_MASK_AT 2048               /* more taken tokens than this: a bitmask */
#define FW_BUDGET  ((size_t)16 << 20) /* bytes of frame walks one grammar keeps */
static struct gr_fw fw_none;          /* published for a state over the budget: walk configs */

static void fw_free(struct gr_fw *f)
{
    if (!f || f == &fw_none) return;
    free(f->ci), free(f->ci_mask), free(f->pop);
    free(f);
}

static bool push_u32(uint32_t **p, size_t *cap, uint32_t *n, uint32_t x)
{
    if (!gr_grow((void **)p, cap, (size_t)*n + 1, sizeof **p)) return false;
    (*p)[(*n)++] = x;
    return true;
}

/* the frame walk of state s, NULL out of memory */
static struct gr_fw *fw_compute(struct kiln_matcher *m, int32_t s, int32_t base)
{
    const struct kiln_grammar_vocab *v = m->g->vocab;
    size_t words = ((size_t)v->n + 31) / 32;
    struct gr_fw *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->plain = base < 0 ? GR_FA_NONE : m->nparent[base] < 0 ? fa_state(m, s) : fa_compute(m, base);
    f->plain = f->plain == GR_FA_ALL    ? INT_MAX
               : f->plain == GR_FA_NONE ? -1
                                        : f->plain - GR_FA_DEPTH;
    bool mixed = false;
    if (f->plain < 0 && base >= 0) {
        struct gr_xkey key;
        if (xm_compute(m, base, &key)) f->xmask = xmask_get(v, &key), mixed = key.mixed;
    }
    const struct gr_trie *t = f->t = f->plain >= 0 ? &v->nonplain
                                     : f->xmask    ? (mixed ? &v->notascii : &v->nonplain)
                                                   : &v->all;
    size_t nw = 0, cicap = 0, popcap = 0;
    uint32_t nci = 0;
    int32_t c0 = MT_DEAD;
    if (push_work(m, &nw, base)) c0 = closure(m, nw);
    if (c0 < 0) goto fail;
    int32_t *walk = m->walk;
    int32_t **rows = m->walk_rows;
    walk[0] = c0;
    rows[0] = dense_row(m, c0);
    bool ok = true;
    for (uint32_t i = 1; i < t->nnodes && ok;) {
        uint32_t d = t->ndepth[i] - 1u;
        int32_t nx = step_row(m, rows[d], walk[d], t->nbyte[i]);
        if (nx < 0) {
            i = t->nnext[i];
            continue;
        }
        if (m->ccomplete[nx]) ok = push_u32(&f->pop, &popcap, &f->npop, i);
        if (m->clen[nx] == 0) { /* only a return: the parent decides */
            i = t->nnext[i];
            continue;
        }
        for (uint32_t k = 0; k < t->ntokn[i] && ok; k++)
            ok = push_u32((uint32_t **)&f->ci, &cicap, &nci, (uint32_t)t->toks[t->ntok0[i] + k]);
        walk[t->ndepth[i]] = nx;
        rows[t->ndepth[i]] = i + 1 < t->nnext[i] ? dense_row(m, nx) : NULL;
        i++;
    }
    if (!ok || m->nn >= MT_MAX_NODES) goto fail; /* out of nodes: DEAD where others step on */
    f->nci = (int32_t)nci;
    if (nci > FW_MASK_AT) {
        if (!(f->ci_mask = calloc(words, sizeof *f->ci_mask))) goto fail;
        for (uint32_t k = 0; k < nci; k++) f->ci_mask[f->ci[k] >> 5] |= 1u << (f->ci[k] & 31);
        free(f->ci);
        f->ci = NULL;
    }
    return f;
fail:
    fw_free(f);
    return NULL;
}

/* f, or fw_none once the grammar's frame walks are over the budget (f freed); NULL stays NULL */
static struct gr_fw *fw_budget(struct kiln_grammar *g, struct gr_fw *f)
{
    if (!f) return NULL;
    size_t bytes = sizeof *f +
                   (f->ci_mask ? ((size_t)g->vocab->n + 31) / 8 : (size_t)f->nci * sizeof *f->ci) +
                   f->npop * sizeof *f->pop;
    if (atomic_fetch_add(&g->fw_bytes, bytes) + bytes <= FW_BUDGET) return f;
    fw_free(f);
    return &fw_none;
}

/* s's frame walk (computed once per grammar); NULL: walk the configuration instead */
static const struct gr_fw *fw_state(struct kiln_matcher *m, int32_t s)
{
    struct kiln_grammar *g = m->g;
    _Atomic(struct gr_fw *) *t = atomic_load_explicit(&g->fw, memory_order_acquire);
    if (!t) {
        _Atomic(struct gr_fw *) *fresh = calloc((size_t)g->nstates + 1, sizeof *fresh);
        if (!fresh) return NULL;
        _Atomic(struct gr_fw *) *expect = NULL;
        if (atomic_compare_exchange_strong(&g->fw, &expect, fresh))
            t = fresh;
        else {
            free(fresh);
            t = expect;
        }
    }
    struct gr_fw *f = atomic_load_explicit(&t[s], memory_order_acquire);
    if (!f) {
        struct gr_fw *mine = fw_budget(g, fw_compute(m, s, intern_node(m, s, -1)));
        if (!mine) return NULL;
        struct gr_fw *expect = NULL;
        if (atomic_compare_exchange_strong(&t[s], &expect, mine))
            f = mine;
        else {
            fw_free(mine);
            f = expect;
        }
    }
    return f == &fw_none ? NULL : f;
}

/* Frame walks of (state, caller's state) pairs: for a state whose own frame returns at many
 * trie nodes (a rule of one character called by a counting repetition, a maxLength string's
 * body), the frame of the caller's rule too, cut off below it. A hash table under a lock (these
 * are looked up once per such stack per mask: ~25 ns uncontended). */
struct gr_fw2 {
    pthread_mutex_t lock;
    uint64_t *key; /* state << 32 | caller state; UINT64_MAX empty */
    struct gr_fw **val;
    size_t cap, n;
};
#define FW_DEEPEN     32 /* returns in a state's own frame walk past which the pair's is used */
#define FW_MAX_STACKS 64 /* a configuration of more stacks walks as one */
#define FW_MAX_NEW    8  /* ... and one with more states whose frame walks are not done yet */

static void fw2_free(struct gr_fw2 *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->cap; i++)
        if (t->key[i] != UINT64_MAX) fw_free(t->val[i]);
    free(t->key), free(t->val);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static struct gr_fw *fw2_find(const struct gr_fw2 *t, uint64_t key)
{
    if (!t->cap) return NULL;
    for (size_t h = mix(key) & (t->cap - 1);; h = (h + 1) & (t->cap - 1)) {
        if (t->key[h] == key) return t->val[h];
        if (t->key[h] == UINT64_MAX) return NULL;
    }
}

static bool fw2_put(struct gr_fw2 *t, uint64_t key, struct gr_fw *f)
{
    if ((t->n + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        uint64_t *k;
        void *v;
        if (!u64_rehash(t->key, t->val, sizeof *t->val, t->cap, cap, &k, &v)) return false;
        free(t->key), free(t->val);
        t->key = k, t->val = v, t->cap = cap;
    }
    size_t h = mix(key) & (t->cap - 1);
    while (t->key[h] != UINT64_MAX) h = (h + 1) & (t->cap - 1);
    t->key[h] = key;
    t->val[h] = f;
    t->n++;
    return true;
}

/* the frame walk of state s under a caller in state r (computed once per grammar); NULL: none */
static const struct gr_fw *fw_pair(struct kiln_matcher *m, int32_t s, int32_t r)
{
    struct kiln_grammar *g = m->g;
    struct gr_fw2 *t = atomic_load_explicit(&g->fw2, memory_order_acquire);
    if (!t) {
        struct gr_fw2 *fresh = calloc(1, sizeof *fresh);
        if (!fresh) return NULL;
        pthread_mutex_init(&fresh->lock, NULL);
        struct gr_fw2 *expect = NULL;
        if (atomic_compare_exchange_strong(&g->fw2, &expect, fresh))
            t = fresh;
        else {
            fw2_free(fresh);
            t = expect;
        }
    }
    uint64_t key = (uint64_t)(uint32_t)s << 32 | (uint32_t)r;
    pthread_mutex_lock(&t->lock);
    struct gr_fw *f = fw2_find(t, key);
    pthread_mutex_unlock(&t->lock);
    if (!f) { /* computed outside the lock; a racing twin is dropped */
        struct gr_fw *mine = NULL;
        int32_t caller = intern_node(m, r, -1);
        if (caller >= 0) mine = fw_budget(g, fw_compute(m, s, intern_node(m, s, caller)));
        if (!mine) return NULL;
        pthread_mutex_lock(&t->lock);
        f = fw2_find(t, key);
        if (!f && fw2_put(t, key, mine))
            f = mine;
        else
            fw_free(mine);
        pthread_mutex_unlock(&t->lock);
        if (!f) return NULL;
    }
    return f == &fw_none ? NULL : f;
}

/* the configuration a return to parent node p goes on from (memoized per node) */
static int32_t pop_cfg(struct kiln_matcher *m, int32_t p)
{
    if ((size_t)p >= m->popcap) {
        size_t old = m->popcap;
        if (!gr_grow((void **)&m->popc, &m->popcap, (size_t)p + 1, sizeof *m->popc)) return MT_DEAD;
        for (size_t i = old; i < m->popcap; i++) m->popc[i] = MT_UNKNOWN;
    }
    if (m->popc[p] == MT_UNKNOWN) {
        size_t nw = 0;
        m->popc[p] = push_work(m, &nw, p) ? closure(m, nw) : MT_DEAD;
    }
    return m->popc[p];
}

/* mask |= c's tokens from its stacks' frame walks; false (mask partly written) when a stack has
 * none (over the budget, out of memory) */
static bool fill_from_frames(struct kiln_matcher *m, int32_t c, uint32_t *mask)
{
    const struct kiln_grammar_vocab *v = m->g->vocab;
    size_t words = ((size_t)v->n + 31) / 32;
    /* a configuration of many stacks, or of many states not analysed yet (an object with
     * hundreds of optional properties after a value: a walk each), is walked as one */
    if (m->clen[c] > FW_MAX_STACKS) return false;
    _Atomic(struct gr_fw *) *t = atomic_load_explicit(&m->g->fw, memory_order_acquire);
    int missing = 0;
    for (int i = 0; i < m->clen[c] && missing <= FW_MAX_NEW; i++)
        missing += !t || !atomic_load_explicit(&t[m->nstate[m->pool[m->coff[c] + (uint32_t)i]]],
                                               memory_order_relaxed);
    if (missing > FW_MAX_NEW) return false;
    int plain = -1;
    for (int i = 0; i < m->clen[c]; i++) {
        int32_t n = m->pool[m->coff[c] + (uint32_t)i];
        const struct gr_fw *f = fw_state(m, m->nstate[n]);
        if (!f) return false;
        int32_t p = m->nparent[n];
        if (f->npop > FW_DEEPEN && p >= 0) { /* the caller's frame too: returns from it go on */
            const struct gr_fw *f2 = fw_pair(m, m->nstate[n], m->nstate[p]);
            if (f2) f = f2, p = m->nparent[p];
        }
        if (f->plain > plain) plain = f->plain;
        if (f->xmask)
            for (size_t w = 0; w < words; w++) mask[w] |= f->xmask[w];
        if (f->ci_mask)
            for (size_t w = 0; w < words; w++) mask[w] |= f->ci_mask[w];
        else
            for (int32_t k = 0; k < f->nci; k++) mask[f->ci[k] >> 5] |= 1u << (f->ci[k] & 31);
        if (!f->npop) continue;
        int32_t pc = p < 0 ? MT_DEAD : pop_cfg(m, p);
        for (uint32_t k = 0; k < f->npop; k++) {
            uint32_t at = f->pop[k];
            /* a return at the root completes the output: tokens ending there are allowed */
            if (p >= 0 && pc < 0) break;
            for (uint32_t j = 0; j < f->t->ntokn[at]; j++) {
                int32_t tk = f->t->toks[f->t->ntok0[at] + j];
                mask[tk >> 5] |= 1u << (tk & 31);
            }
            if (p >= 0 && m->clen[pc] > 0 && at + 1 < f->t->nnext[at])
                walk_trie(m, f->t, at, pc, mask);
        }
    }
    if (plain >= 0) or_plain(v, plain, mask);
    return true;
}

void kiln_matcher_fill_mask(struct kiln_matcher *m, uint32_t *mask)
{
    const struct kiln_grammar_vocab *v = m->g->vocab;
    size_t words = ((size_t)v->n + 31) / 32;
    int32_t c = cur(m);
    if (c < 0) {
        memset(mask, 0, words * sizeof *mask);
        return;
    }
    for (int k = 0; k < MT_MASK_CACHE; k++)
        if (m->mc_cfg[k] == c && m->mc_mask[k]) {
            memcpy(mask, m->mc_mask[k], words * sizeof *mask);
            return;
        }
    /* the dense rows are used up (a long instance: new configurations at every position): they
     * start over, so that the walks of this position get rows again (no walk holds one here) */
    if (m->ndense >= MT_MAX_DENSE) {
        for (size_t i = 0; i < m->densecap; i++) {
            free(m->dense[i]);
            m->dense[i] = NULL;
        }
        m->ndense = 0;
    }
    memset(mask, 0, words * sizeof *mask);
    if (m->ccomplete[c])
        for (int i = 0; i < v->neos; i++)
            if (v->eos[i] >= 0 && v->eos[i] < v->n) mask[v->eos[i] >> 5] |= 1u << (v->eos[i] & 31);
    if (m->clen[c] == 0) return;
    /* a counted run of plain characters (maxLength): every position is a new grammar state, so
     * frame walks would be computed anew at each; the chain gives the plain tokens, and only
     * the non-plain trie is walked (its prefixes of k plain characters all step to the chain's
     * k-th link, whose rows the next positions reuse). Where every stack's frame walk is done
     * already (most masks: structure, unbounded strings) the chain is not looked at: its first
     * link costs ~30 steps a new configuration (p50 4.1 -> 3.5 us, avg -10%, shard 3/8) */
    bool loop = false;
    int32_t top = -1;
    int chain = -1;
    bool cached = m->clen[c] <= FW_MAX_STACKS;
    _Atomic(struct gr_fw *) *fwt = atomic_load_explicit(&m->g->fw, memory_order_acquire);
    for (int i = 0; i < m->clen[c] && cached; i++)
        cached = fwt && atomic_load_explicit(&fwt[m->nstate[m->pool[m->coff[c] + (uint32_t)i]]],
                                             memory_order_relaxed);
    if (!cached) chain = chain_reach(m, c, &loop, &top);
    if (chain >= 1 && !loop) {
        or_plain(v, chain, mask);
        if (top >= 0) chain_long(m, top, mask);
        walk_trie(m, &v->nonplain, 0, c, mask);
    } else if (!fill_from_frames(m, c, mask)) {
        memset(mask, 0, words * sizeof *mask);
        if (m->ccomplete[c])
            for (int i = 0; i < v->neos; i++)
                if (v->eos[i] >= 0 && v->eos[i] < v->n)
                    mask[v->eos[i] >> 5] |= 1u << (v->eos[i] & 31);
        int reach = plain_reach(m, c);
        if (reach < 0 && cached) chain = chain_reach(m, c, &loop, &top);
        if (reach >= 0)
            or_plain(v, reach, mask);
        else if (chain >= 0) {
            or_plain(v, chain, mask);
            if (top >= 0) chain_long(m, top, mask);
        }
        if (reach >= 0 || chain >= 0) {
            walk_trie(m, &v->nonplain, 0, c, mask);
        } else
            walk_trie(m, &v->all, 0, c, mask);
    }
    /* remember it (round robin): the same state recurs, e.g. inside a string */
    int slot = m->mc_next++ % MT_MASK_CACHE;
    if (!m->mc_mask[slot]) m->mc_mask[slot] = malloc(words * sizeof *mask);
    if (m->mc_mask[slot]) {
        memcpy(m->mc_mask[slot], mask, words * sizeof *mask);
        m->mc_cfg[slot] = c;
    }
}

bool kiln_matcher_accept_bytes(struct kiln_matcher *m, const char *s, size_t n)
{
    int32_t c = cur(m);
    if (c < 0) return false;
    for (size_t i = 0; i < n && c >= 0; i++) c = step(m, c, (unsigned char)s[i]);
    if (c < 0) return false;
    return push_hist(m, c);
}

bool kiln_matcher_accept(struct kiln_matcher *m, int32_t token)
{
    const struct kiln_grammar_vocab *v = m->g->vocab;
    int32_t c = cur(m);
    if (c < 0 || token < 0 || token >= v->n) return false;
    for (int i = 0; i < v->neos; i++)
        if (v->eos[i] == token) return m->ccomplete[c] && push_hist(m, MT_TERMINATED);
    if (!v->bytes[token]) return false;
    return kiln_matcher_accept_bytes(m, v->bytes[token], v->len[token]);
}

void kiln_matcher_rollback(struct kiln_matcher *m, int n)
{
    if (n < 0) return;
    if (n > m->nhist - 1) n = m->nhist - 1;
    m->nhist -= n;
}

int kiln_matcher_forced(struct kiln_matcher *m, int32_t *tokens, int max)
{
    /* the bytes the grammar forces (one viable byte at each step, not complete), tokenized by
     * the real tokenizer; the last token is dropped (the next bytes could merge into it) unless
     * nothing can follow. Every token returned is checked against the matcher. */
    char buf[1024];
    size_t n = 0;
    int32_t c = cur(m);
    while (n < sizeof buf && c >= 0 && !m->ccomplete[c]) {
        int count = 0, only = -1;
        int32_t next = MT_DEAD;
        for (unsigned b = 0; b < 256 && count < 2; b++) {
            int32_t x = step(m, c, b);
            if (x >= 0) {
                count++;
                only = (int)b;
                next = x;
            }
        }
        if (count != 1) break;
        buf[n++] = (char)only;
        c = next;
    }
    if (n == 0 || max <= 0 || !m->g->vocab->tok) return 0;
    bool finished = c >= 0 && m->ccomplete[c] && m->clen[c] == 0;
    int32_t *ids;
    size_t nid;
    if (kiln_tokenizer_encode(m->g->vocab->tok, buf, n, false, &ids, &nid, NULL)) return 0;
    if (!finished && nid > 0) nid--;
    int k = 0;
    while ((size_t)k < nid && k < max && kiln_matcher_accept(m, ids[k])) {
        tokens[k] = ids[k];
        k++;
    }
    kiln_matcher_rollback(m, k);
    free(ids);
    return k;
}

/* ---- compile, refs, cache ---- */

struct kiln_grammar *kiln_grammar_ref(struct kiln_grammar *g)
{
    if (g) atomic_fetch_add(&g->refs, 1);
    return g;
}

void kiln_grammar_unref(struct kiln_grammar *g)
{
    if (g && atomic_fetch_sub(&g->refs, 1) == 1) {
        free(atomic_load(&g->fa));
        fw2_free(atomic_load(&g->fw2));
        _Atomic(struct gr_fw *) *fw = atomic_load(&g->fw);
        if (fw)
            for (int32_t i = 0; i < g->nstates; i++) fw_free(atomic_load(&fw[i]));
        free(fw);
        gr_grammar_free(g);
    }
}

enum kiln_status kiln_grammar_compile_opts(const struct kiln_constraint_spec *spec,
                                           const struct kiln_grammar_vocab *v,
                                           const struct kiln_grammar_options *opts,
                                           struct kiln_grammar **out, struct kiln_error *err)
{
    *out = NULL;
    struct kiln_error local;
    if (!err) err = &local;
    kiln_error_clear(err);
    struct gr_builder b;
    gb_init(&b, err);
    b.ws = opts ? opts->whitespace : KILN_GRAMMAR_WS_COMPACT;
    const char *text = spec->text ? spec->text : "";
    size_t len = spec->text ? spec->len : 0;
    struct gx *root = NULL;
    switch (spec->kind) {
    case KILN_CONSTRAINT_JSON_OBJECT:
        root = gr_json_any_object(&b);
        break;
    case KILN_CONSTRAINT_JSON_SCHEMA:
        root = gr_json_schema(&b, text, len);
        break;
    case KILN_CONSTRAINT_REGEX:
        root = gr_regex(&b, text, len, false, false, "regex");
        break;
    case KILN_CONSTRAINT_CHOICE:
        root = gr_choice(&b, text, len);
        break;
    case KILN_CONSTRAINT_GRAMMAR:
        root = gr_ebnf(&b, text, len);
        break;
    default:
        gb_fail(&b, KILN_ERR_INVALID, "unknown constraint kind %d", (int)spec->kind);
    }
    struct kiln_grammar *g = NULL;
    enum kiln_status st = b.failed ? err->code : gb_finish(&b, root, &g);
    gb_free(&b);
    if (st) {
        if (!err->msg[0]) kiln_errorf(err, st, "cannot compile the constraint");
        return st;
    }
    g->vocab = v;
    *out = g;
    return KILN_OK;
}

enum kiln_status kiln_grammar_compile(const struct kiln_constraint_spec *spec,
                                      const struct kiln_grammar_vocab *v, struct kiln_grammar **out,
                                      struct kiln_error *err)
{
    return kiln_grammar_compile_opts(spec, v, NULL, out, err);
}

struct cache_entry {
    enum kiln_constraint_kind kind;
    enum kiln_grammar_ws ws;
    char *text;
    size_t len;
    struct kiln_grammar *g;
    uint64_t used;
};

struct kiln_grammar_cache {
    pthread_mutex_t lock;
    const struct kiln_grammar_vocab *v;
    struct cache_entry *e;
    int n, max;
    uint64_t tick;
};

struct kiln_grammar_cache *kiln_grammar_cache_create(const struct kiln_grammar_vocab *v,
                                                     int max_entries)
{
    if (max_entries < 1) max_entries = 1;
    struct kiln_grammar_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->e = calloc((size_t)max_entries, sizeof *c->e);
    if (!c->e) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->v = v;
    c->max = max_entries;
    return c;
}

void kiln_grammar_cache_free(struct kiln_grammar_cache *c)
{
    if (!c) return;
    for (int i = 0; i < c->n; i++) {
        free(c->e[i].text);
        kiln_grammar_unref(c->e[i].g);
    }
    free(c->e);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

enum kiln_status kiln_grammar_cache_get(struct kiln_grammar_cache *c,
                                        const struct kiln_constraint_spec *spec,
                                        struct kiln_grammar **out, struct kiln_error *err)
{
    return kiln_grammar_cache_get_opts(c, spec, NULL, out, err);
}

enum kiln_status kiln_grammar_cache_get_opts(struct kiln_grammar_cache *c,
                                             const struct kiln_constraint_spec *spec,
                                             const struct kiln_grammar_options *opts,
                                             struct kiln_grammar **out, struct kiln_error *err)
{
    enum kiln_grammar_ws ws = opts ? opts->whitespace : KILN_GRAMMAR_WS_COMPACT;
    size_t len = spec->text ? spec->len : 0;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->n; i++) {
        struct cache_entry *e = &c->e[i];
        if (e->kind == spec->kind && e->ws == ws && e->len == len &&
            (!len || !memcmp(e->text, spec->text, len))) {
            e->used = ++c->tick;
            *out = kiln_grammar_ref(e->g);
            pthread_mutex_unlock(&c->lock);
            return KILN_OK;
        }
    }
    pthread_mutex_unlock(&c->lock);
    /* compile outside the lock (it can take milliseconds); a racing twin is harmless */
    struct kiln_grammar *g;
    enum kiln_status st = kiln_grammar_compile_opts(spec, c->v, opts, &g, err);
    if (st) return st;
    char *copy = malloc(len + 1);
    if (!copy) {
        *out = g;
        return KILN_OK;
    }
    if (len) memcpy(copy, spec->text, len);
    pthread_mutex_lock(&c->lock);
    int slot = c->n;
    if (c->n == c->max) {
        slot = 0;
        for (int i = 1; i < c->n; i++)
            if (c->e[i].used < c->e[slot].used) slot = i;
        free(c->e[slot].text);
        kiln_grammar_unref(c->e[slot].g);
    } else
        c->n++;
    c->e[slot] = (struct cache_entry){spec->kind, ws, copy, len, kiln_grammar_ref(g), ++c->tick};
    pthread_mutex_unlock(&c->lock);
    *out = g;
    return KILN_OK;
}
