/* Decoding: ids -> text, one-shot and streaming, both through the same state machine so the
 * streamed deltas always add up to the one-shot text.
 *
 * The HF decoder chains kiln accepts reduce to: per-token bytes (computed at load: ByteLevel's
 * char->byte map, Replace rules), then either lossy UTF-8 over the whole stream (ByteLevel:
 * String::from_utf8_lossy, maximal-subpart U+FFFD) or ByteFallback groups (a run of <0xXX>
 * tokens that is not valid UTF-8 as a whole becomes one U+FFFD per byte), then Strip of the
 * first characters of the fused text. Streaming holds back only what the next token could still
 * change: an incomplete UTF-8 tail (at most 3 bytes) or an open byte-fallback group. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct kiln_detok {
    const struct kiln_tokenizer *tok;
    bool skip_special;
    size_t ntok;         /* tokens taken so far (after skip_special) */
    struct tk_buf pend;  /* byte-level: bytes of an incomplete UTF-8 sequence */
    struct tk_buf group; /* byte-fallback: bytes of the open <0xXX> run */
    int strip_left;      /* leading strip_char characters still to drop */
    struct tk_buf out;   /* output of the current call */
};

static void detok_init(struct kiln_detok *d, const struct kiln_tokenizer *tok, bool skip_special)
{
    memset(d, 0, sizeof *d);
    d->tok = tok;
    d->skip_special = skip_special;
    d->strip_left = tok->decoder.strip_start;
}

static void detok_release(struct kiln_detok *d)
{
    free(d->pend.p);
    free(d->group.p);
    free(d->out.p);
}

/* Final text (valid UTF-8) goes through here: Strip drops leading characters. */
static void emit(struct kiln_detok *d, const char *s, size_t n)
{
    while (d->strip_left > 0 && n > 0) {
        uint32_t cp;
        int k = tk_utf8_decode((const unsigned char *)s, n, &cp);
        if (k <= 0 || cp != d->tok->decoder.strip_char) {
            d->strip_left = 0;
            break;
        }
        s += k;
        n -= (size_t)k;
        d->strip_left--;
    }
    tk_buf_put(&d->out, s, n);
}

static void close_group(struct kiln_detok *d)
{
    if (d->group.n == 0) return;
    if (tk_utf8_valid(d->group.p, d->group.n)) {
        emit(d, d->group.p, d->group.n);
    } else {
        for (size_t i = 0; i < d->group.n; i++) emit(d, "\xEF\xBF\xBD", 3);
    }
    d->group.n = 0;
}

/* Emits the complete part of the pending bytes, keeping an incomplete tail; at the end
 * (final) the tail becomes one U+FFFD. */
static void drain_pending(struct kiln_detok *d, bool final)
{
    const unsigned char *u = (const unsigned char *)d->pend.p;
    size_t n = d->pend.n, keep = n;
    if (!final) {
        /* find where a trailing incomplete sequence starts (at most 3 bytes back) */
        size_t start = n;
        for (size_t back = 1; back <= 3 && back <= n; back++) {
            unsigned char c = u[n - back];
            if ((c & 0xC0) != 0x80) {
                start = n - back;
                break;
            }
        }
        keep = n;
        if (start < n && tk_utf8_bad_len(u + start, n - start) == 0) keep = start;
    }
    if (keep > 0) {
        struct tk_buf t = {0};
        tk_utf8_lossy(&t, d->pend.p, keep);
        if (t.oom)
            d->out.oom = true;
        else
            emit(d, t.p ? t.p : "", t.n);
        free(t.p);
    }
    if (keep < n) memmove(d->pend.p, d->pend.p + keep, n - keep);
    d->pend.n = n - keep;
}

static enum kiln_status take(struct kiln_detok *d, int32_t id, struct kiln_error *err)
{
    const struct kiln_tokenizer *tok = d->tok;
    if (id < 0 || id >= tok->vocab_n || !tok->dec[id])
        return kiln_errorf(err, KILN_ERR_INVALID, "token id %d is not in the vocabulary (%d ids)",
                           id, tok->vocab_n);
    if (d->skip_special && tok->is_special[id]) return KILN_OK;
    bool first = d->ntok++ == 0;
    const struct tk_decoder *dc = &tok->decoder;
    if (dc->byte_fallback && tok->dec_byte[id] >= 0) {
        tk_buf_putc(&d->group, (char)tok->dec_byte[id]);
        return KILN_OK;
    }
    close_group(d);
    const char *s = tok->dec[id];
    size_t n = tok->dec_len[id];
    if (dc->byte_level) {
        if (d->pend.n == 0 && tok->dec_utf8[id]) { /* most tokens: whole characters */
            emit(d, s, n);
            return KILN_OK;
        }
        tk_buf_put(&d->pend, s, n);
        drain_pending(d, false);
        return KILN_OK;
    }
    if (dc->join_space && !first) emit(d, " ", 1);
    if (dc->metaspace_first && first) {
        /* HF's Metaspace decoder drops every replacement character of the first token */
        for (size_t i = 0; i < n;) {
            size_t j = i;
            while (j < n && s[j] != ' ') j++;
            emit(d, s + i, j - i);
            i = j < n ? j + 1 : j;
        }
        return KILN_OK;
    }
    /* token strings of non-byte-level models are UTF-8 from the JSON file */
    emit(d, s, n);
    return KILN_OK;
}

static void finish(struct kiln_detok *d)
{
    close_group(d);
    drain_pending(d, true);
}

static enum kiln_status hand_out(struct kiln_detok *d, char **out, size_t *len,
                                 struct kiln_error *err)
{
    /* append to the caller's buffer (NULL starts a new one) */
    size_t have = *out ? *len : 0;
    if (d->out.oom || d->pend.oom || d->group.oom) {
        d->out.n = 0;
        d->out.oom = d->pend.oom = d->group.oom = false;
        return kiln_errorf(err, KILN_ERR_NOMEM, "detokenizer: out of memory");
    }
    char *p = realloc(*out, have + d->out.n + 1);
    if (!p) {
        d->out.n = 0;
        return kiln_errorf(err, KILN_ERR_NOMEM, "detokenizer: out of memory");
    }
    if (d->out.n) memcpy(p + have, d->out.p, d->out.n);
    p[have + d->out.n] = 0;
    *out = p;
    *len = have + d->out.n;
    d->out.n = 0;
    return KILN_OK;
}

struct kiln_detok *kiln_detok_create(const struct kiln_tokenizer *tok, bool skip_special)
{
    struct kiln_detok *d = malloc(sizeof *d);
    if (d) detok_init(d, tok, skip_special);
    return d;
}

void kiln_detok_free(struct kiln_detok *d)
{
    if (!d) return;
    detok_release(d);
    free(d);
}

enum kiln_status kiln_detok_push(struct kiln_detok *d, int32_t id, char **out, size_t *len,
                                 struct kiln_error *err)
{
    enum kiln_status st = take(d, id, err);
    if (st) return st;
    return hand_out(d, out, len, err);
}

enum kiln_status kiln_detok_flush(struct kiln_detok *d, char **out, size_t *len,
                                  struct kiln_error *err)
{
    finish(d);
    return hand_out(d, out, len, err);
}

enum kiln_status kiln_tokenizer_decode(const struct kiln_tokenizer *tok, const int32_t *ids,
                                       size_t n, bool skip_special, char **text, size_t *len,
                                       struct kiln_error *err)
{
    struct kiln_detok d;
    detok_init(&d, tok, skip_special);
    *text = NULL;
    *len = 0;
    enum kiln_status st = KILN_OK;
    for (size_t i = 0; i < n && !st; i++) st = take(&d, ids[i], err);
    if (!st) {
        finish(&d);
        st = hand_out(&d, text, len, err);
    }
    if (st) {
        free(*text);
        *text = NULL;
        *len = 0;
    }
    detok_release(&d);
    return st;
}

const char *kiln_tokenizer_token_bytes(const struct kiln_tokenizer *tok, int32_t id, size_t *len)
{
    static const unsigned char bytes[256] = {
#define B4(i)  (i), (i) + 1, (i) + 2, (i) + 3
#define B16(i) B4(i), B4((i) + 4), B4((i) + 8), B4((i) + 12)
#define B64(i) B16(i), B16((i) + 16), B16((i) + 32), B16((i) + 48)
        B64(0), B64(64), B64(128), B64(192)
#undef B64
#undef B16
#undef B4
    };
    *len = 0;
    if (id < 0 || id >= tok->vocab_n || !tok->dec[id]) return NULL;
    if (tok->decoder.byte_fallback && tok->dec_byte[id] >= 0) {
        *len = 1;
        return (const char *)&bytes[tok->dec_byte[id]];
    }
    *len = tok->dec_len[id];
    return tok->dec[id];
}
