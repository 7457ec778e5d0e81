/* Small pieces the tokenizer files share: a growable buffer, UTF-8 decoding with the
 * replacement rules HF uses, Unicode whitespace sets, and two open-addressing hash maps
 * (token bytes -> id, id pair -> merge) sized to a load factor of at most 1/2. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

static bool buf_reserve(struct tk_buf *b, size_t extra)
{
    if (b->oom) return false;
    if (b->n + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void tk_buf_put(struct tk_buf *b, const void *data, size_t n)
{
    /* data may point into b itself (normalizers copy arena text to the arena's end) */
    /* As integers: gcc 12 -O3 reads the comparison after buf_reserve as a use after realloc. */
    uintptr_t d = (uintptr_t)data, base = (uintptr_t)b->p;
    if (b->p && d >= base && d < base + b->cap) {
        size_t off = (size_t)(d - base);
        if (!buf_reserve(b, n)) return;
        data = b->p + off;
    }
    if (!buf_reserve(b, n)) return;
    if (n) memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = 0;
}

void tk_buf_putc(struct tk_buf *b, char c)
{
    tk_buf_put(b, &c, 1);
}

void tk_buf_puts(struct tk_buf *b, const char *s)
{
    tk_buf_put(b, s, strlen(s));
}

void tk_buf_printf(struct tk_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

void tk_buf_put_cp(struct tk_buf *b, uint32_t cp)
{
    char s[4];
    size_t n;
    if (cp < 0x80) {
        s[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        s[0] = (char)(0xE0 | (cp >> 12));
        s[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        s[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        s[0] = (char)(0xF0 | (cp >> 18));
        s[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        s[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        s[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    tk_buf_put(b, s, n);
}

enum kiln_status tk_buf_finish(struct tk_buf *b, char **out, size_t *len, struct kiln_error *err)
{
    if (!b->oom && !b->p) buf_reserve(b, 0);
    if (b->oom) {
        free(b->p);
        *b = (struct tk_buf){0};
        *out = NULL;
        if (len) *len = 0;
        return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    }
    b->p[b->n] = 0;
    *out = b->p;
    if (len) *len = b->n;
    *b = (struct tk_buf){0};
    return KILN_OK;
}

/* Well-formed UTF-8 per Unicode table 3-7: second-byte ranges depend on the lead byte. */
static void second_range(unsigned char c, unsigned char *lo, unsigned char *hi, int *len)
{
    *lo = 0x80;
    *hi = 0xBF;
    *len = 0;
    if (c >= 0xC2 && c <= 0xDF)
        *len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        *len = 3;
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        *len = 4;
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
    }
}

int tk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (n == 0) return 0;
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    unsigned char lo, hi;
    int len;
    second_range(c, &lo, &hi, &len);
    if (len == 0 || (size_t)len > n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (len == 2)
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
    else if (len == 3)
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    else
        *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
              ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return len;
}

size_t tk_utf8_bad_len(const unsigned char *s, size_t n)
{
    unsigned char lo, hi;
    int len;
    second_range(s[0], &lo, &hi, &len);
    if (len == 0) return 1;
    size_t i = 1;
    if (i < n) {
        if (s[1] < lo || s[1] > hi) return 1;
        i = 2;
        while (i < (size_t)len && i < n) {
            if ((s[i] & 0xC0) != 0x80) return i;
            i++;
        }
    }
    return i < (size_t)len ? 0 : i; /* 0: a valid prefix cut short by the end */
}

/* Length of the longest well-formed prefix of s[0..n). */
static size_t valid_prefix(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        int k = tk_utf8_decode(u + i, n - i, &cp);
        if (k == 0) break;
        i += (size_t)k;
    }
    return i;
}

void tk_utf8_lossy(struct tk_buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t ok = valid_prefix(s + i, n - i);
        tk_buf_put(b, s + i, ok);
        i += ok;
        if (i >= n) break;
        size_t bad = tk_utf8_bad_len(u + i, n - i);
        if (bad == 0) bad = n - i; /* incomplete at the very end: one U+FFFD */
        tk_buf_put(b, "\xEF\xBF\xBD", 3);
        i += bad;
    }
}

bool tk_utf8_valid(const char *s, size_t n)
{
    return valid_prefix(s, n) == n;
}

size_t tk_utf8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

bool tk_is_whitespace(uint32_t cp)
{
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

bool tk_is_py_space(uint32_t cp)
{
    /* Python adds the information separators U+001C..U+001F (bidi class B/S) */
    return tk_is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F);
}

/* FNV-1a, 64-bit: short keys (tokens average under 8 bytes) make anything fancier pointless. */
uint64_t tk_hash(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

uint64_t tk_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

bool tk_pairmap_get(const struct tk_pairmap *m, int32_t a, int32_t b, uint32_t *rank,
                    int32_t *merged)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t mask = m->cap - 1;
    for (uint32_t i = (uint32_t)tk_mix64(key) & mask;; i = (i + 1) & mask) {
        const struct tk_pair_slot *sl = &m->slots[i];
        if (sl->key == key) {
            *rank = sl->rank;
            *merged = sl->merged;
            return true;
        }
        if (sl->key == 0) return false;
    }
}

int32_t tk_strmap_find(const struct tk_strmap *m, const char *s, size_t n, uint32_t *slot)
{
    uint64_t h = tk_hash(s, n);
    uint64_t tag = h >> 32;
    uint32_t mask = m->cap - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        uint64_t e = m->slots[i];
        if (e == 0) {
            if (slot) *slot = i;
            return -1;
        }
        uint32_t idx = (uint32_t)e - 1;
        if ((e >> 32) == tag && m->key_len[idx] == n && memcmp(m->keys[idx], s, n) == 0) {
            if (slot) *slot = i;
            return (int32_t)idx;
        }
    }
}
