/* GET and HEAD of the chat page and its assets (/, /assets/...), from the table compiled into
 * the binary (web_assets.c; nothing is read from disk, nothing is fetched from elsewhere).
 * Chooses the gzip'd copy when the client accepts it (the plain one otherwise), answers a
 * matching If-None-Match with 304, and sends a Content-Security-Policy that lets only this
 * server's own script and style files run: model output that reached the page as HTML could
 * not execute (the page also escapes and sanitizes it). Never calls libevent: replies go
 * through server_reply_bytes. */
#include <string.h>
#include <strings.h>

#include "server_impl.h"
#include "web.h"

const struct kiln_web_asset *kiln_web_find(const char *path)
{
    for (size_t i = 0; path && i < kiln_web_n_assets; i++)
        if (!strcmp(kiln_web_assets[i].path, path)) return &kiln_web_assets[i];
    return NULL;
}

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in thousandths; anything else
 * is -1 (the coding is then ignored). Advances *p past what it read. */
static int qvalue(const char **p)
{
    const char *s = *p;
    if (*s != '0' && *s != '1') return -1;
    int q = (*s++ - '0') * 1000;
    if (*s == '.') {
        s++;
        for (int scale = 100; scale && *s >= '0' && *s <= '9'; scale /= 10)
            q += (*s++ - '0') * scale;
    }
    *p = s;
    s = skip_ws(s);
    return q <= 1000 && (!*s || *s == ',' || *s == ';') ? q : -1;
}

bool kiln_web_accepts_gzip(const char *accept_encoding)
{
    if (!accept_encoding) return false;
    int gzip_q = -1, star_q = -1;
    const char *p = accept_encoding;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        const char *name = p;
        while (*p && *p != ',' && *p != ';' && *p != ' ' && *p != '\t') p++;
        size_t len = (size_t)(p - name);
        int q = 1000;
        while (*p && *p != ',') {
            if (*p++ != ';') continue;
            p = skip_ws(p);
            if ((*p == 'q' || *p == 'Q') && p[1] == '=') {
                p += 2;
                q = qvalue(&p);
            }
        }
        if ((len == 4 && !strncasecmp(name, "gzip", 4)) ||
            (len == 6 && !strncasecmp(name, "x-gzip", 6))) {
            if (q > gzip_q) gzip_q = q;
        } else if (len == 1 && *name == '*') {
            star_q = q;
        }
    }
    if (gzip_q >= 0) return gzip_q > 0;
    return star_q > 0;
}

bool kiln_web_etag_matches(const char *if_none_match, const char *etag)
{
    if (!if_none_match || !etag) return false;
    size_t elen = strlen(etag);
    const char *p = if_none_match;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) return false;
        if (*p == '*') return true;
        if (p[0] == 'W' && p[1] == '/') p += 2;
        if (*p != '"') {
            while (*p && *p != ',') p++; /* not an entity tag: skip it */
            continue;
        }
        const char *end = strchr(p + 1, '"');
        if (!end) return false;
        size_t len = (size_t)(end - p) + 1;
        if (len == elen && !memcmp(p, etag, len)) return true;
        p = end + 1;
    }
}

void web_handle(struct http_ctx *h)
{
    const struct kiln_web_asset *a = kiln_web_find(h->path);
    if (!a) {
        struct kiln_api_error err;
        kiln_api_errorf(&err, 404, "not_found", NULL, "Unknown path %.200s", h->path);
        server_reply_error(h, &err);
        return;
    }
    bool gz = kiln_web_accepts_gzip(server_request_header(h, "Accept-Encoding"));
    const char *etag = gz ? a->etag_gzip : a->etag;
    const char *headers[] = {
        "ETag",
        etag,
        "Cache-Control",
        a->cache_control,
        "Vary",
        "Accept-Encoding",
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options",
        "nosniff",
        "Referrer-Policy",
        "no-referrer",
        gz ? "Content-Encoding" : NULL,
        "gzip",
        NULL};
    if (kiln_web_etag_matches(server_request_header(h, "If-None-Match"), etag)) {
        server_reply_bytes(h, 304, NULL, headers, NULL, 0);
        return;
    }
    server_reply_bytes(h, 200, a->content_type, headers, gz ? a->gzip : a->plain,
                       gz ? a->gzip_len : a->plain_len);
}
