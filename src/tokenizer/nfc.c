/* Unicode NFC (Qwen's normalizer): canonical decomposition, canonical ordering, canonical
 * composition, with Hangul done arithmetically. Text below U+0300 is already NFC and never
 * composes with anything before it, so such runs are copied as they are. */
#include <stdlib.h>

#include "internal.h"
#include "nfc_data.h"

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7 };
enum { LCOUNT = 19, VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static int ccc_of(uint32_t cp)
{
    if (cp < 0x300) return 0;
    unsigned lo = 0, hi = tk_ccc_ranges_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < tk_ccc_ranges[mid].first)
            hi = mid;
        else if (cp > tk_ccc_ranges[mid].last)
            lo = mid + 1;
        else
            return tk_ccc_ranges[mid].ccc;
    }
    return 0;
}

static const struct tk_decomp *decomp_of(uint32_t cp)
{
    unsigned lo = 0, hi = tk_decomps_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < tk_decomps[mid].cp)
            hi = mid;
        else if (cp > tk_decomps[mid].cp)
            lo = mid + 1;
        else
            return &tk_decomps[mid];
    }
    return NULL;
}

static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
        b < TBASE + TCOUNT)
        return a + (b - TBASE);
    unsigned lo = 0, hi = tk_comps_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        const struct tk_comp *c = &tk_comps[mid];
        if (a < c->a || (a == c->a && b < c->b))
            hi = mid;
        else if (a > c->a || b > c->b)
            lo = mid + 1;
        else
            return c->cp;
    }
    return 0;
}

struct cps {
    uint32_t *v;
    size_t n, cap;
    bool oom;
};

static void cps_push(struct cps *c, uint32_t cp)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        uint32_t *v = realloc(c->v, cap * sizeof *v);
        if (!v) {
            c->oom = true;
            return;
        }
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = cp;
}

static void decompose(struct cps *c, uint32_t cp, int depth)
{
    if (cp >= SBASE && cp < SBASE + SCOUNT) {
        uint32_t s = cp - SBASE;
        cps_push(c, LBASE + s / NCOUNT);
        cps_push(c, VBASE + (s % NCOUNT) / TCOUNT);
        if (s % TCOUNT) cps_push(c, TBASE + s % TCOUNT);
        return;
    }
    const struct tk_decomp *d = cp >= 0xC0 && depth < 8 ? decomp_of(cp) : NULL;
    if (!d) {
        cps_push(c, cp);
        return;
    }
    decompose(c, d->a, depth + 1);
    if (d->b) decompose(c, d->b, depth + 1);
}

static void nfc_run(struct tk_buf *b, const char *s, size_t n)
{
    struct cps c = {0};
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = tk_utf8_decode(u + i, n - i, &cp);
        if (k <= 0) { /* not reached: input is sanitized; keep the byte's U+FFFD */
            cp = 0xFFFD;
            k = 1;
        }
        decompose(&c, cp, 0);
        i += (size_t)k;
    }
    /* canonical ordering: stable insertion sort inside each run of non-starters */
    for (size_t i = 1; i < c.n; i++) {
        int ci = ccc_of(c.v[i]);
        if (ci == 0) continue;
        size_t j = i;
        uint32_t x = c.v[i];
        while (j > 0 && ccc_of(c.v[j - 1]) > ci) {
            c.v[j] = c.v[j - 1];
            j--;
        }
        c.v[j] = x;
    }
    /* composition: a character joins the last starter unless something between them is a
     * starter or has a combining class >= its own (canonical order makes the last one the
     * largest) */
    size_t w = 0;
    long starter = -1;
    int last_ccc = 0;
    for (size_t i = 0; i < c.n; i++) {
        uint32_t cp = c.v[i];
        int cc = ccc_of(cp);
        if (starter >= 0) {
            bool adjacent = w == (size_t)starter + 1;
            if (adjacent || (last_ccc != 0 && last_ccc < cc)) {
                uint32_t comp = compose(c.v[starter], cp);
                if (comp) {
                    c.v[starter] = comp;
                    continue;
                }
            }
        }
        if (cc == 0) starter = (long)w;
        last_ccc = cc;
        c.v[w++] = cp;
    }
    if (c.oom) b->oom = true;
    for (size_t i = 0; i < w; i++) tk_buf_put_cp(b, c.v[i]);
    free(c.v);
}

void tk_nfc(struct tk_buf *b, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        /* copy the run of characters below U+0300 (lead bytes < 0xCC) */
        size_t j = i;
        while (j < n && (unsigned char)s[j] < 0xCC) {
            j++;
            while (j < n && ((unsigned char)s[j] & 0xC0) == 0x80) j++;
        }
        /* the last of that run may compose with what follows: leave it to nfc_run */
        size_t k = j;
        if (j < n && j > i) {
            k = j - 1;
            while (k > i && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        }
        tk_buf_put(b, s + i, k - i);
        if (j >= n) {
            tk_buf_put(b, s + k, j - k);
            return;
        }
        /* the rest up to the next character below U+0300 that is followed by another */
        size_t e = j;
        while (e < n && (unsigned char)s[e] >= 0xCC) {
            e++;
            while (e < n && ((unsigned char)s[e] & 0xC0) == 0x80) e++;
        }
        nfc_run(b, s + k, e - k);
        i = e;
    }
}
