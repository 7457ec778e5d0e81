/* Loading a tokenizer folder: tokenizer.json (model, normalizer, pre-tokenizer, added tokens,
 * post-processor, decoder), tokenizer_config.json (bos/eos strings, add_bos_token,
 * chat_template) and generation_config.json (eos ids). Anything kiln cannot reproduce exactly
 * is refused here with the JSON path of the part, never accepted and approximated. */
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "core/file.h"
#include "internal.h"

#define MAX_JSON_BYTES ((size_t)1 << 30)

/* GPT-2's byte <-> printable character map: bytes that are printable Latin-1 stand for
 * themselves, the other 68 take the code points 256.. in byte order. */
static void byte_level_map(uint32_t byte_to_cp[256])
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        byte_to_cp[b] = printable ? (uint32_t)b : next++;
    }
}

static int cp_to_byte(const uint32_t byte_to_cp[256], uint32_t cp)
{
    if (cp < 256 && byte_to_cp[cp] == cp) return (int)cp;
    if (cp >= 256 && cp < 256 + 68) {
        for (int b = 0; b < 256; b++)
            if (byte_to_cp[b] == cp) return b;
    }
    return -1;
}

/* Undoes the byte-level map: returns false (and leaves *out untouched) when some character
 * is outside it. */
static bool from_byte_level(const uint32_t byte_to_cp[256], const char *s, size_t n,
                            struct tk_buf *out)
{
    size_t start = out->n;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = tk_utf8_decode(u + i, n - i, &cp);
        int b = k > 0 ? cp_to_byte(byte_to_cp, cp) : -1;
        if (b < 0) {
            out->n = start;
            return false;
        }
        tk_buf_putc(out, (char)b);
        i += (size_t)k;
    }
    return true;
}

/* ---- hash map insertions (lookups live in util.c / here) ---- */

static enum kiln_status strmap_init(struct tk_strmap *m, uint32_t n, const char *const *keys,
                                    const uint32_t *key_len, struct kiln_error *err)
{
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)n + 2) cap *= 2;
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    m->cap = cap;
    m->count = 0;
    m->keys = keys;
    m->key_len = key_len;
    return KILN_OK;
}

/* Later entries replace earlier ones with the same key, as a JSON object read into a map. */
static void strmap_put(struct tk_strmap *m, int32_t idx)
{
    uint32_t slot;
    int32_t old = tk_strmap_find(m, m->keys[idx], m->key_len[idx], &slot);
    if (old < 0) m->count++;
    uint64_t tag = tk_hash(m->keys[idx], m->key_len[idx]) >> 32;
    m->slots[slot] = tag << 32 | ((uint32_t)idx + 1);
}

int32_t tk_token_id(const struct kiln_tokenizer *tok, const char *s, size_t n)
{
    for (size_t i = 0; i < tok->added_n; i++)
        if (tok->added[i].len == n && memcmp(tok->added[i].content, s, n) == 0)
            return tok->added[i].id;
    if (!tok->vocab.cap) return -1;
    if (tok->byte_level) {
        /* the vocabulary is keyed by raw bytes; s is a token string in GPT-2 form */
        uint32_t map[256];
        byte_level_map(map);
        struct tk_buf b = {0};
        int32_t id = -1;
        if (from_byte_level(map, s, n, &b))
            id = tk_strmap_find(&tok->vocab, b.p ? b.p : "", b.n, 0);
        free(b.p);
        return id;
    }
    return tk_strmap_find(&tok->vocab, s, n, NULL);
}

static enum kiln_status pairmap_init(struct tk_pairmap *m, size_t n, struct kiln_error *err)
{
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)n + 2) cap *= 2;
    m->slots = calloc(cap, sizeof *m->slots);
    m->cap = cap;
    if (!m->slots) return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    return KILN_OK;
}

static void pairmap_put(struct tk_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t mask = m->cap - 1;
    uint32_t i = (uint32_t)tk_mix64(key) & mask;
    while (m->slots[i].key != 0 && m->slots[i].key != key) i = (i + 1) & mask;
    m->slots[i] = (struct tk_pair_slot){key, rank, merged};
}

/* ---- JSON helpers ---- */

static const char *type_of(json_t *obj)
{
    json_t *t = json_object_get(obj, "type");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

static bool get_bool(json_t *obj, const char *key, bool dflt)
{
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static char *dup_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* pattern {"String": s} or {"Regex": r}; returns 1 string, 2 regex, 0 neither */
static int pattern_of(json_t *obj, const char **s, size_t *n)
{
    json_t *p = json_object_get(obj, "pattern");
    json_t *v;
    if ((v = json_object_get(p, "String")) && json_is_string(v)) {
        *s = json_string_value(v);
        *n = json_string_length(v);
        return 1;
    }
    if ((v = json_object_get(p, "Regex")) && json_is_string(v)) {
        *s = json_string_value(v);
        *n = json_string_length(v);
        return 2;
    }
    return 0;
}

/* Oniguruma (what HF tokenizers compiles with) and PCRE2 agree on the constructs tokenizer
 * files use except one: Oniguruma's \s also matches U+0085 (NEL). Rewrite \s and \S so PCRE2
 * matches the same set. */
static void onig_to_pcre2(const char *re, size_t n, struct tk_buf *out)
{
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = re[i];
        if (c == '\\' && i + 1 < n) {
            char d = re[i + 1];
            if (d == 's')
                tk_buf_puts(out, in_class ? "\\s\\x{85}" : "[\\s\\x{85}]");
            else if (d == 'S' && !in_class)
                tk_buf_puts(out, "[^\\s\\x{85}]");
            else {
                tk_buf_putc(out, c);
                tk_buf_putc(out, d);
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            tk_buf_putc(out, c);
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && re[i + 1] == '^') tk_buf_putc(out, re[++i]);
            if (i + 1 < n && re[i + 1] == ']') tk_buf_putc(out, re[++i]);
            continue;
        }
        if (c == ']' && in_class) in_class = false;
        tk_buf_putc(out, c);
    }
}

static enum kiln_status compile_regex(const char *re, size_t n, pcre2_code **out, const char *where,
                                      struct kiln_error *err)
{
    struct tk_buf b = {0};
    onig_to_pcre2(re, n, &b);
    if (b.oom) {
        free(b.p);
        return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    }
    int code;
    PCRE2_SIZE off;
    *out =
        pcre2_compile((PCRE2_SPTR)(b.p ? b.p : ""), b.n, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    free(b.p);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "%s: regex /%.*s/ does not compile: %s",
                           where, (int)(n > 200 ? 200 : n), re, (const char *)msg);
    }
    /* JIT is an optimisation: when it is unavailable the interpreter gives the same matches */
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE);
    return KILN_OK;
}

/* ---- normalizer ---- */

static enum kiln_status add_norm(struct kiln_tokenizer *tok, json_t *n, struct kiln_error *err)
{
    if (!n || json_is_null(n)) return KILN_OK;
    const char *type = type_of(n);
    if (!type) return kiln_errorf(err, KILN_ERR_FORMAT, "normalizer: missing \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "normalizers");
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v)
        {
            enum kiln_status st = add_norm(tok, v, err);
            if (st) return st;
        }
        return KILN_OK;
    }
    struct tk_norm nm = {0};
    if (!strcmp(type, "Prepend")) {
        json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p))
            return kiln_errorf(err, KILN_ERR_FORMAT, "normalizer Prepend: missing \"prepend\"");
        nm.kind = TK_NORM_PREPEND;
        nm.alen = json_string_length(p);
        nm.a = dup_bytes(json_string_value(p), nm.alen);
    } else if (!strcmp(type, "Replace")) {
        const char *s;
        size_t len;
        json_t *c = json_object_get(n, "content");
        int kind = pattern_of(n, &s, &len);
        if (kind != 1 || !json_is_string(c) || len == 0)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "normalizer Replace: only a non-empty {\"String\": ...} pattern "
                               "is supported");
        nm.kind = TK_NORM_REPLACE;
        nm.alen = len;
        nm.a = dup_bytes(s, len);
        nm.blen = json_string_length(c);
        nm.b = dup_bytes(json_string_value(c), nm.blen);
    } else if (!strcmp(type, "NFC")) {
        nm.kind = TK_NORM_NFC;
    } else {
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "normalizer %s is not supported (kiln handles Sequence, Prepend, "
                           "Replace, NFC)",
                           type);
    }
    struct tk_norm *nv = realloc(tok->norm, (tok->norm_n + 1) * sizeof *nv);
    if (!nv || (nm.kind != TK_NORM_NFC && !nm.a) || (nm.kind == TK_NORM_REPLACE && !nm.b)) {
        free(nm.a);
        free(nm.b);
        if (nv) tok->norm = nv;
        return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    }
    tok->norm = nv;
    tok->norm[tok->norm_n++] = nm;
    return KILN_OK;
}

/* ---- pre-tokenizer ---- */

static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static enum kiln_status push_pre(struct kiln_tokenizer *tok, struct tk_pre *p,
                                 struct kiln_error *err)
{
    struct tk_pre *v = realloc(tok->pre, (tok->pre_n + 1) * sizeof *v);
    if (!v) {
        if (p->re) pcre2_code_free(p->re);
        free(p->lit);
        return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    }
    tok->pre = v;
    tok->pre[tok->pre_n++] = *p;
    return KILN_OK;
}

static enum kiln_status add_pre(struct kiln_tokenizer *tok, json_t *p, struct kiln_error *err)
{
    if (!p || json_is_null(p)) return KILN_OK;
    const char *type = type_of(p);
    if (!type) return kiln_errorf(err, KILN_ERR_FORMAT, "pre_tokenizer: missing \"type\"");
    enum kiln_status st;
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(p, "pretokenizers");
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v)
        {
            if ((st = add_pre(tok, v, err))) return st;
        }
        return KILN_OK;
    }
    struct tk_pre pre = {0};
    if (!strcmp(type, "Split")) {
        const char *s;
        size_t len;
        int kind = pattern_of(p, &s, &len);
        if (kind == 0)
            return kiln_errorf(err, KILN_ERR_FORMAT, "pre_tokenizer Split: missing pattern");
        json_t *b = json_object_get(p, "behavior");
        const char *beh = json_is_string(b) ? json_string_value(b) : "";
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        int found = -1;
        for (int i = 0; i < 5; i++)
            if (!strcmp(beh, names[i])) found = i;
        if (found < 0)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "pre_tokenizer Split: behavior \"%s\" is not known", beh);
        pre.kind = TK_PRE_SPLIT;
        pre.behavior = (enum tk_split_behavior)found;
        pre.invert = get_bool(p, "invert", false);
        if (kind == 2) {
            if ((st = compile_regex(s, len, &pre.re, "pre_tokenizer Split", err))) return st;
        } else {
            if (len == 0)
                return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                                   "pre_tokenizer Split: empty string pattern");
            pre.lit = dup_bytes(s, len);
            pre.lit_len = len;
            if (!pre.lit) return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
        }
        return push_pre(tok, &pre, err);
    }
    if (!strcmp(type, "ByteLevel")) {
        tok->byte_level = true;
        if (get_bool(p, "add_prefix_space", true)) {
            pre.kind = TK_PRE_BYTELEVEL_PREFIX;
            if ((st = push_pre(tok, &pre, err))) return st;
        }
        if (get_bool(p, "use_regex", true)) {
            struct tk_pre sp = {.kind = TK_PRE_SPLIT, .behavior = TK_SPLIT_ISOLATED};
            if ((st = compile_regex(gpt2_regex, sizeof gpt2_regex - 1, &sp.re,
                                    "pre_tokenizer ByteLevel", err)))
                return st;
            if ((st = push_pre(tok, &sp, err))) return st;
        }
        return KILN_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        json_t *r = json_object_get(p, "replacement");
        const char *rep = json_is_string(r) ? json_string_value(r) : "\xE2\x96\x81";
        size_t rl = strlen(rep);
        uint32_t cp;
        if (rl == 0 || rl > 4 || tk_utf8_decode((const unsigned char *)rep, rl, &cp) != (int)rl)
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "pre_tokenizer Metaspace: replacement must be one character");
        pre.kind = TK_PRE_METASPACE;
        memcpy(pre.rep, rep, rl);
        pre.rep_len = rl;
        json_t *ps = json_object_get(p, "prepend_scheme");
        if (json_is_string(ps)) {
            const char *s = json_string_value(ps);
            pre.prepend = !strcmp(s, "never") ? 0 : !strcmp(s, "first") ? 1 : 2;
        } else {
            pre.prepend = get_bool(p, "add_prefix_space", true) ? 2 : 0;
        }
        pre.split = get_bool(p, "split", true);
        return push_pre(tok, &pre, err);
    }
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                       "pre_tokenizer %s is not supported (kiln handles Sequence, Split, "
                       "ByteLevel, Metaspace)",
                       type);
}

/* ---- decoder ---- */

struct replace_rule {
    const char *a, *b;
    size_t alen, blen;
};

static enum kiln_status parse_decoder(struct kiln_tokenizer *tok, json_t *d,
                                      struct replace_rule *rules, int *nrules, bool *fused,
                                      struct kiln_error *err)
{
    struct tk_decoder *dec = &tok->decoder;
    const char *type = type_of(d);
    if (!type) return kiln_errorf(err, KILN_ERR_FORMAT, "decoder: missing \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(d, "decoders");
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v)
        {
            enum kiln_status st = parse_decoder(tok, v, rules, nrules, fused, err);
            if (st) return st;
        }
        return KILN_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        dec->byte_level = true;
        return KILN_OK;
    }
    if (!strcmp(type, "Replace")) {
        const char *s;
        size_t len;
        json_t *c = json_object_get(d, "content");
        if (pattern_of(d, &s, &len) != 1 || !json_is_string(c) || len == 0 || *nrules >= 8)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "decoder Replace: only {\"String\": ...} patterns are supported");
        if (dec->byte_fallback)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "decoder: Replace after ByteFallback is not supported");
        rules[*nrules] = (struct replace_rule){s, json_string_value(c), len, json_string_length(c)};
        (*nrules)++;
        return KILN_OK;
    }
    if (!strcmp(type, "ByteFallback")) {
        dec->byte_fallback = true;
        return KILN_OK;
    }
    if (!strcmp(type, "Fuse")) {
        *fused = true;
        return KILN_OK;
    }
    if (!strcmp(type, "Strip")) {
        json_t *c = json_object_get(d, "content");
        json_t *start = json_object_get(d, "start"), *stop = json_object_get(d, "stop");
        const char *cs = json_is_string(c) ? json_string_value(c) : "";
        uint32_t cp;
        int k = tk_utf8_decode((const unsigned char *)cs, strlen(cs), &cp);
        if (!*fused || k <= 0 || (size_t)k != strlen(cs) || json_integer_value(stop) != 0 ||
            json_integer_value(start) < 0 || json_integer_value(start) > 64)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "decoder Strip: only Strip(char, start, 0) after Fuse is "
                               "supported");
        dec->strip_char = cp;
        dec->strip_start = (int)json_integer_value(start);
        return KILN_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        json_t *r = json_object_get(d, "replacement");
        const char *rep = json_is_string(r) ? json_string_value(r) : "\xE2\x96\x81";
        if (*nrules >= 8)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "decoder: too many replacements");
        rules[*nrules] = (struct replace_rule){rep, " ", strlen(rep), 1};
        (*nrules)++;
        json_t *ps = json_object_get(d, "prepend_scheme");
        bool prepend = json_is_string(ps) ? strcmp(json_string_value(ps), "never") != 0
                                          : get_bool(d, "add_prefix_space", true);
        dec->metaspace_first = prepend;
        return KILN_OK;
    }
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                       "decoder %s is not supported (kiln handles ByteLevel, Replace, "
                       "ByteFallback, Fuse, Strip, Metaspace)",
                       type);
}

/* Per-token decoded bytes: the decoder steps that act on each token alone, precomputed. */
static enum kiln_status build_decode_table(struct kiln_tokenizer *tok, char **raw,
                                           uint32_t *raw_len, const struct replace_rule *rules,
                                           int nrules, struct kiln_error *err)
{
    uint32_t map[256];
    byte_level_map(map);
    tok->dec = calloc((size_t)tok->vocab_n, sizeof *tok->dec);
    tok->dec_len = calloc((size_t)tok->vocab_n, sizeof *tok->dec_len);
    tok->dec_byte = malloc((size_t)tok->vocab_n * sizeof *tok->dec_byte);
    tok->dec_utf8 = calloc((size_t)tok->vocab_n, 1);
    if (!tok->dec || !tok->dec_len || !tok->dec_byte || !tok->dec_utf8)
        return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    for (int32_t id = 0; id < tok->vocab_n; id++) {
        tok->dec_byte[id] = -1;
        if (!raw[id]) continue;
        struct tk_buf b = {0};
        if (tok->decoder.byte_level) {
            if (!from_byte_level(map, raw[id], raw_len[id], &b))
                tk_buf_put(&b, raw[id], raw_len[id]);
        } else {
            tk_buf_put(&b, raw[id], raw_len[id]);
            for (int r = 0; r < nrules; r++) {
                struct tk_buf o = {0};
                for (size_t i = 0; i < b.n;) {
                    if (i + rules[r].alen <= b.n && !memcmp(b.p + i, rules[r].a, rules[r].alen)) {
                        tk_buf_put(&o, rules[r].b, rules[r].blen);
                        i += rules[r].alen;
                    } else {
                        tk_buf_putc(&o, b.p[i++]);
                    }
                }
                free(b.p);
                b = o;
            }
            if (tok->decoder.byte_fallback && b.n == 6 && !memcmp(b.p, "<0x", 3) && b.p[5] == '>') {
                char hex[3] = {b.p[3], b.p[4], 0}, *end;
                long v = strtol(hex, &end, 16);
                if (*end == 0 && hex[0] != '-' && hex[0] != ' ') tok->dec_byte[id] = (int16_t)v;
            }
        }
        if (!b.p) tk_buf_put(&b, "", 0);
        if (b.oom) {
            free(b.p);
            return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
        }
        tok->dec[id] = b.p;
        tok->dec_len[id] = (uint32_t)b.n;
        tok->dec_utf8[id] = tk_utf8_valid(b.p, b.n);
    }
    return KILN_OK;
}

/* ---- post-processor ---- */

static enum kiln_status push_post_id(struct kiln_tokenizer *tok, json_int_t id, bool prefix,
                                     struct kiln_error *err)
{
    if (id < 0 || id >= tok->vocab_n)
        return kiln_errorf(err, KILN_ERR_INVALID, "post_processor: token id %lld out of range",
                           (long long)id);
    int32_t **v = prefix ? &tok->post_prefix : &tok->post_suffix;
    size_t *n = prefix ? &tok->post_prefix_n : &tok->post_suffix_n;
    int32_t *nv = realloc(*v, (*n + 1) * sizeof *nv);
    if (!nv) return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    nv[(*n)++] = (int32_t)id;
    *v = nv;
    return KILN_OK;
}

/* A special token of a post-processor: ["<s>", 1] (Roberta/Bert) or a name looked up in the
 * template's special_tokens table, which may stand for several ids. */
static enum kiln_status post_ids(struct kiln_tokenizer *tok, json_t *pp, json_t *name_or_pair,
                                 bool prefix, struct kiln_error *err)
{
    if (json_is_array(name_or_pair) && json_is_integer(json_array_get(name_or_pair, 1)))
        return push_post_id(tok, json_integer_value(json_array_get(name_or_pair, 1)), prefix, err);
    if (!json_is_string(name_or_pair))
        return kiln_errorf(err, KILN_ERR_FORMAT, "post_processor: bad special token");
    json_t *sp =
        json_object_get(json_object_get(pp, "special_tokens"), json_string_value(name_or_pair));
    json_t *ids = json_object_get(sp, "ids");
    if (!json_is_array(ids))
        return kiln_errorf(err, KILN_ERR_FORMAT, "post_processor: special token \"%s\" has no ids",
                           json_string_value(name_or_pair));
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        enum kiln_status st = push_post_id(tok, json_integer_value(v), prefix, err);
        if (st) return st;
    }
    return KILN_OK;
}

static enum kiln_status parse_post(struct kiln_tokenizer *tok, json_t *pp, struct kiln_error *err)
{
    if (!pp || json_is_null(pp)) return KILN_OK;
    tok->has_post = true;
    const char *type = type_of(pp);
    if (!type) return kiln_errorf(err, KILN_ERR_FORMAT, "post_processor: missing \"type\"");
    enum kiln_status st;
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(pp, "processors"), i, v)
        {
            if ((st = parse_post(tok, v, err))) return st;
        }
        return KILN_OK;
    }
    if (!strcmp(type, "ByteLevel")) return KILN_OK; /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) {
        json_t *single = json_object_get(pp, "single");
        bool seen_seq = false;
        size_t i;
        json_t *piece;
        json_array_foreach(single, i, piece)
        {
            json_t *sp = json_object_get(piece, "SpecialToken");
            if (json_object_get(piece, "Sequence")) {
                seen_seq = true;
                continue;
            }
            if (!sp) return kiln_errorf(err, KILN_ERR_FORMAT, "post_processor: bad template");
            if ((st = post_ids(tok, pp, json_object_get(sp, "id"), !seen_seq, err))) return st;
        }
        return KILN_OK;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        if ((st = post_ids(tok, pp, json_object_get(pp, "cls"), true, err))) return st;
        return post_ids(tok, pp, json_object_get(pp, "sep"), false, err);
    }
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "post_processor %s is not supported", type);
}

/* ---- tokenizer.json ---- */

static enum kiln_status load_tokenizer_json(struct kiln_tokenizer *tok, const char *path,
                                            struct kiln_error *err)
{
    char *text;
    size_t len;
    enum kiln_status st = kiln_file_read(path, MAX_JSON_BYTES, &text, &len, err);
    if (st) return st;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &je);
    free(text);
    if (!root)
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    char **raw = NULL;
    uint32_t *raw_len = NULL;
    struct replace_rule rules[8];
    int nrules = 0;
    bool fused = false;

    json_t *model = json_object_get(root, "model");
    const char *mtype = type_of(model);
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(model) || (mtype && strcmp(mtype, "BPE")) || !json_is_object(vocab) ||
        !json_is_array(merges)) {
        st = kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                         "model type %s is not supported (kiln handles BPE with a vocab object "
                         "and a merges list)",
                         mtype ? mtype : "(none)");
        goto out;
    }
    json_t *v;
    if (((v = json_object_get(model, "dropout")) && !json_is_null(v)) ||
        ((v = json_object_get(model, "continuing_subword_prefix")) && json_is_string(v) &&
         json_string_length(v)) ||
        ((v = json_object_get(model, "end_of_word_suffix")) && json_is_string(v) &&
         json_string_length(v))) {
        st = kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                         "BPE dropout, continuing_subword_prefix and end_of_word_suffix are "
                         "not supported");
        goto out;
    }
    tok->ignore_merges = get_bool(model, "ignore_merges", false);
    tok->byte_fallback = get_bool(model, "byte_fallback", false);
    tok->fuse_unk = get_bool(model, "fuse_unk", false);

    /* pipeline parts first: the ByteLevel pre-tokenizer decides the vocabulary's form */
    if ((st = add_norm(tok, json_object_get(root, "normalizer"), err))) goto out;
    if ((st = add_pre(tok, json_object_get(root, "pre_tokenizer"), err))) goto out;
    json_t *decoder = json_object_get(root, "decoder");
    if (!decoder || json_is_null(decoder))
        tok->decoder.join_space = true;
    else if ((st = parse_decoder(tok, decoder, rules, &nrules, &fused, err)))
        goto out;

    /* ids: the largest of the vocabulary and the added tokens */
    int64_t max_id = -1;
    const char *key;
    json_object_foreach(vocab, key, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= (1 << 24)) {
            st = kiln_errorf(err, KILN_ERR_FORMAT, "model.vocab[\"%s\"]: bad id", key);
            goto out;
        }
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
    }
    json_t *added = json_object_get(root, "added_tokens");
    size_t i;
    json_array_foreach(added, i, v)
    {
        json_t *id = json_object_get(v, "id"), *c = json_object_get(v, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (1 << 24) || !json_is_string(c) || !json_string_length(c)) {
            st = kiln_errorf(err, KILN_ERR_FORMAT, "added_tokens[%zu]: needs an id and content", i);
            goto out;
        }
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    tok->vocab_n = (int32_t)(max_id + 1);
    size_t nv = (size_t)tok->vocab_n;
    raw = calloc(nv, sizeof *raw);
    raw_len = calloc(nv, sizeof *raw_len);
    tok->tok = calloc(nv, sizeof *tok->tok);
    tok->tok_len = calloc(nv, sizeof *tok->tok_len);
    tok->is_special = calloc(nv, 1);
    tok->is_added = calloc(nv, 1);
    if (!raw || !raw_len || !tok->tok || !tok->tok_len || !tok->is_special || !tok->is_added) {
        st = kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
        goto out;
    }
    uint32_t map[256];
    byte_level_map(map);
    json_object_foreach(vocab, key, v)
    {
        int32_t id = (int32_t)json_integer_value(v);
        size_t klen = strlen(key); /* jansson object keys are NUL-terminated */
        free(raw[id]);
        free(tok->tok[id]);
        raw[id] = dup_bytes(key, klen);
        raw_len[id] = (uint32_t)klen;
        tok->tok[id] = NULL;
        if (tok->byte_level) {
            struct tk_buf b = {0};
            if (from_byte_level(map, key, klen, &b)) {
                if (!b.p) tk_buf_put(&b, "", 0);
                tok->tok[id] = b.p;
                tok->tok_len[id] = (uint32_t)b.n;
            } else {
                free(b.p);
            }
        } else {
            tok->tok[id] = dup_bytes(key, klen);
            tok->tok_len[id] = (uint32_t)klen;
        }
        if (!raw[id] || (!tok->tok[id] && !tok->byte_level)) {
            st = kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
            goto out;
        }
    }
    if ((st = strmap_init(&tok->vocab, (uint32_t)nv, (const char *const *)tok->tok, tok->tok_len,
                          err)))
        goto out;
    json_object_foreach(vocab, key, v)
    {
        int32_t id = (int32_t)json_integer_value(v);
        if (tok->tok[id]) strmap_put(&tok->vocab, id);
    }

    /* unk, byte ids */
    json_t *unk = json_object_get(model, "unk_token");
    tok->unk_id = -1;
    if (json_is_string(unk)) {
        json_t *uid = json_object_get(vocab, json_string_value(unk));
        if (!json_is_integer(uid)) {
            st = kiln_errorf(err, KILN_ERR_INVALID, "model.unk_token \"%s\" is not in the vocab",
                             json_string_value(unk));
            goto out;
        }
        tok->unk_id = (int32_t)json_integer_value(uid);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        json_t *bid = json_object_get(vocab, name);
        tok->byte_token[b] = json_is_integer(bid) ? (int32_t)json_integer_value(bid) : -1;
        unsigned char c = (unsigned char)b;
        tok->byte_id[b] =
            tok->byte_level ? tk_strmap_find(&tok->vocab, (const char *)&c, 1, NULL) : -1;
    }

    /* merges: "a b" strings or [a, b] pairs; rank = position */
    if ((st = pairmap_init(&tok->merges, json_array_size(merges), err))) goto out;
    json_array_foreach(merges, i, v)
    {
        const char *a, *b;
        size_t alen, blen;
        if (json_is_string(v)) {
            a = json_string_value(v);
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = kiln_errorf(err, KILN_ERR_FORMAT, "model.merges[%zu]: \"%s\" is not \"a b\"",
                                 i, a);
                goto out;
            }
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = strlen(b);
        } else if (json_is_array(v) && json_array_size(v) == 2 &&
                   json_is_string(json_array_get(v, 0)) && json_is_string(json_array_get(v, 1))) {
            a = json_string_value(json_array_get(v, 0));
            alen = json_string_length(json_array_get(v, 0));
            b = json_string_value(json_array_get(v, 1));
            blen = json_string_length(json_array_get(v, 1));
        } else {
            st = kiln_errorf(err, KILN_ERR_FORMAT, "model.merges[%zu]: not a pair", i);
            goto out;
        }
        int32_t ia, ib, im;
        struct tk_buf ab = {0};
        tk_buf_put(&ab, a, alen);
        tk_buf_put(&ab, b, blen);
        if (tok->byte_level) {
            struct tk_buf x = {0}, y = {0}, z = {0};
            bool ok = from_byte_level(map, a, alen, &x) && from_byte_level(map, b, blen, &y) &&
                      from_byte_level(map, ab.p, ab.n, &z);
            ia = ok ? tk_strmap_find(&tok->vocab, x.p, x.n, NULL) : -1;
            ib = ok ? tk_strmap_find(&tok->vocab, y.p, y.n, NULL) : -1;
            im = ok ? tk_strmap_find(&tok->vocab, z.p, z.n, NULL) : -1;
            free(x.p);
            free(y.p);
            free(z.p);
            if (!ok) { /* a merge of tokens the byte-level input can never produce */
                free(ab.p);
                continue;
            }
        } else {
            ia = tk_strmap_find(&tok->vocab, a, alen, NULL);
            ib = tk_strmap_find(&tok->vocab, b, blen, NULL);
            im = tk_strmap_find(&tok->vocab, ab.p, ab.n, NULL);
        }
        if (ia < 0 || ib < 0 || im < 0) {
            st = kiln_errorf(err, KILN_ERR_INVALID,
                             "model.merges[%zu]: \"%.*s\" + \"%.*s\" refers to a token that is "
                             "not in the vocab",
                             i, (int)alen, a, (int)blen, b);
            free(ab.p);
            goto out;
        }
        free(ab.p);
        pairmap_put(&tok->merges, ia, ib, (uint32_t)i, im);
    }

    /* added tokens */
    tok->added = calloc(json_array_size(added) + 1, sizeof *tok->added);
    if (!tok->added) {
        st = kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
        goto out;
    }
    json_array_foreach(added, i, v)
    {
        struct tk_added *a = &tok->added[tok->added_n++];
        json_t *c = json_object_get(v, "content");
        a->id = (int32_t)json_integer_value(json_object_get(v, "id"));
        a->len = json_string_length(c);
        a->content = dup_bytes(json_string_value(c), a->len);
        a->special = get_bool(v, "special", false);
        a->lstrip = get_bool(v, "lstrip", false);
        a->rstrip = get_bool(v, "rstrip", false);
        a->normalized = get_bool(v, "normalized", !a->special);
        a->single_word = get_bool(v, "single_word", false);
        if (!a->content) {
            st = kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
            goto out;
        }
        tok->is_added[a->id] = 1;
        tok->is_special[a->id] = a->special;
        if (!raw[a->id]) {
            raw[a->id] = dup_bytes(a->content, a->len);
            raw_len[a->id] = (uint32_t)a->len;
        }
        if (!raw[a->id]) {
            st = kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
            goto out;
        }
    }
    if ((st = tk_trie_build(&tok->trie_raw, tok, false, err))) goto out;
    if ((st = tk_trie_build(&tok->trie_norm, tok, true, err))) goto out;
    if ((st = build_decode_table(tok, raw, raw_len, rules, nrules, err))) goto out;
    if ((st = parse_post(tok, json_object_get(root, "post_processor"), err))) goto out;

out:
    if (raw)
        for (size_t k = 0; k < (size_t)tok->vocab_n; k++) free(raw[k]);
    free(raw);
    free(raw_len);
    json_decref(root);
    if (st) kiln_error_prefix(err, "%s", path);
    return st;
}

/* ---- tokenizer_config.json / generation_config.json ---- */

/* "bos_token": "<s>" or {"content": "<s>", ...} (AddedToken form); NULL when absent. */
static char *token_string(json_t *v)
{
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? dup_bytes(json_string_value(v), json_string_length(v)) : NULL;
}

static enum kiln_status add_eos(struct kiln_tokenizer *tok, int64_t id, struct kiln_error *err)
{
    if (id < 0 || id >= tok->vocab_n)
        return kiln_errorf(err, KILN_ERR_INVALID, "eos id %lld is outside the vocabulary (%d)",
                           (long long)id, tok->vocab_n);
    for (int i = 0; i < tok->eos_n; i++)
        if (tok->eos[i] == id) return KILN_OK;
    int32_t *nv = realloc(tok->eos, (size_t)(tok->eos_n + 1) * sizeof *nv);
    if (!nv) return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    nv[tok->eos_n++] = (int32_t)id;
    tok->eos = nv;
    return KILN_OK;
}

static enum kiln_status load_configs(struct kiln_tokenizer *tok, const char *dir,
                                     struct kiln_error *err)
{
    char path[4096];
    enum kiln_status st;
    json_t *cfg = NULL, *gen = NULL;
    json_error_t je;
    tok->bos_id = -1;
    if ((st = kiln_path_join(path, sizeof path, dir, "generation_config.json", err))) return st;
    if (kiln_file_exists(path)) {
        gen = json_load_file(path, 0, &je);
        if (!gen)
            return kiln_errorf(err, KILN_ERR_FORMAT, "%s:%d:%d: %s", path, je.line, je.column,
                               je.text);
        json_t *e = json_object_get(gen, "eos_token_id");
        if (json_is_integer(e) && (st = add_eos(tok, json_integer_value(e), err))) goto fail_gen;
        size_t i;
        json_t *v;
        json_array_foreach(e, i, v)
        {
            if (!json_is_integer(v)) continue;
            if ((st = add_eos(tok, json_integer_value(v), err))) goto fail_gen;
        }
        json_t *b = json_object_get(gen, "bos_token_id");
        if (json_is_integer(b) && json_integer_value(b) >= 0 &&
            json_integer_value(b) < tok->vocab_n)
            tok->bos_id = (int32_t)json_integer_value(b);
    }
    if ((st = kiln_path_join(path, sizeof path, dir, "tokenizer_config.json", err))) goto fail;
    if (kiln_file_exists(path)) {
        /* reals: model_max_length is often 1e30, beyond jansson's integers */
        cfg = json_load_file(path, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
        if (!cfg) {
            st = kiln_errorf(err, KILN_ERR_FORMAT, "%s:%d:%d: %s", path, je.line, je.column,
                             je.text);
            goto fail;
        }
        tok->bos_token = token_string(json_object_get(cfg, "bos_token"));
        tok->eos_token = token_string(json_object_get(cfg, "eos_token"));
        tok->unk_token = token_string(json_object_get(cfg, "unk_token"));
        tok->pad_token = token_string(json_object_get(cfg, "pad_token"));
        int32_t bos =
            tok->bos_token ? tk_token_id(tok, tok->bos_token, strlen(tok->bos_token)) : -1;
        int32_t eos =
            tok->eos_token ? tk_token_id(tok, tok->eos_token, strlen(tok->eos_token)) : -1;
        if (bos >= 0 && tok->bos_id < 0) tok->bos_id = bos;
        if (eos >= 0 && (st = add_eos(tok, eos, err))) goto fail;
        /* add_bos_token / add_eos_token matter only when tokenizer.json has no
         * post-processor (files converted from SentencePiece models): HF tokenizers and
         * transformers 5 both follow the post-processor when there is one (deepseek_v3 says
         * add_bos_token: true, and neither adds BOS) */
        json_t *ab = json_object_get(cfg, "add_bos_token"),
               *ae = json_object_get(cfg, "add_eos_token");
        if (!tok->has_post) {
            if (json_is_true(ab) && bos >= 0) {
                tok->post_prefix = malloc(sizeof(int32_t));
                if (!tok->post_prefix) goto nomem;
                tok->post_prefix[tok->post_prefix_n++] = bos;
            }
            if (json_is_true(ae) && eos >= 0) {
                tok->post_suffix = malloc(sizeof(int32_t));
                if (!tok->post_suffix) goto nomem;
                tok->post_suffix[tok->post_suffix_n++] = eos;
            }
        }
        json_t *tpl = json_object_get(cfg, "chat_template");
        if (tpl && !json_is_null(tpl) && (st = tk_chat_load(tok, tpl, err))) {
            kiln_error_prefix(err, "%s: chat_template", path);
            goto fail;
        }
    }
    if (tok->bos_id < 0 && tok->post_prefix_n > 0) tok->bos_id = tok->post_prefix[0];
    json_decref(cfg);
    json_decref(gen);
    return KILN_OK;
nomem:
    st = kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
fail:
    json_decref(cfg);
fail_gen:
    json_decref(gen);
    return st;
}

enum kiln_status kiln_tokenizer_load(const char *dir, struct kiln_tokenizer **out,
                                     struct kiln_error *err)
{
    *out = NULL;
    char path[4096];
    enum kiln_status st = kiln_path_join(path, sizeof path, dir, "tokenizer.json", err);
    if (st) return st;
    if (!kiln_file_exists(path))
        return kiln_errorf(err, KILN_ERR_IO,
                           "%s: no tokenizer.json here (a model or tokenizer folder has one)", dir);
    struct kiln_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return kiln_errorf(err, KILN_ERR_NOMEM, "tokenizer: out of memory");
    static _Atomic uint64_t next_uid = 1;
    tok->uid = atomic_fetch_add(&next_uid, 1);
    if ((st = load_tokenizer_json(tok, path, err)) || (st = load_configs(tok, dir, err))) {
        kiln_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return KILN_OK;
}

void kiln_tokenizer_free(struct kiln_tokenizer *tok)
{
    if (!tok) return;
    for (int32_t i = 0; i < tok->vocab_n; i++) {
        if (tok->tok) free(tok->tok[i]);
        if (tok->dec) free(tok->dec[i]);
    }
    free(tok->tok);
    free(tok->tok_len);
    free(tok->dec);
    free(tok->dec_len);
    free(tok->dec_byte);
    free(tok->dec_utf8);
    free(tok->is_special);
    free(tok->is_added);
    free(tok->vocab.slots);
    free(tok->merges.slots);
    for (size_t i = 0; i < tok->added_n; i++) free(tok->added[i].content);
    free(tok->added);
    tk_trie_free(&tok->trie_raw);
    tk_trie_free(&tok->trie_norm);
    for (size_t i = 0; i < tok->norm_n; i++) {
        free(tok->norm[i].a);
        free(tok->norm[i].b);
    }
    free(tok->norm);
    for (size_t i = 0; i < tok->pre_n; i++) {
        if (tok->pre[i].re) pcre2_code_free(tok->pre[i].re);
        free(tok->pre[i].lit);
    }
    free(tok->pre);
    free(tok->post_prefix);
    free(tok->post_suffix);
    free(tok->eos);
    free(tok->bos_token);
    free(tok->eos_token);
    free(tok->unk_token);
    free(tok->pad_token);
    tk_chat_free(tok->chat);
    free(tok);
}

int32_t kiln_tokenizer_vocab_size(const struct kiln_tokenizer *tok)
{
    return tok->vocab_n;
}

int32_t kiln_tokenizer_bos(const struct kiln_tokenizer *tok)
{
    return tok->bos_id;
}

int kiln_tokenizer_eos(const struct kiln_tokenizer *tok, const int32_t **ids)
{
    *ids = tok->eos;
    return tok->eos_n;
}

int32_t kiln_tokenizer_token_id(const struct kiln_tokenizer *tok, const char *token)
{
    return tk_token_id(tok, token, strlen(token));
}

bool kiln_tokenizer_is_special(const struct kiln_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->vocab_n && tok->is_special[id];
}
