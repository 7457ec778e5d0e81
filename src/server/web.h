/* The chat page of kiln serve (issue 17): the table of its files, generated into web_assets.c
 * by web/build.mjs from web/src/, and the two request headers the page's route reads. Pure:
 * no I/O, no libevent; web.c answers the requests through server.c's reply helper. */
#ifndef KILN_SERVER_WEB_H
#define KILN_SERVER_WEB_H

#include <stdbool.h>
#include <stddef.h>

struct kiln_web_asset {
    const char *path;          /* "/" for index.html, else "/assets/NAME" */
    const char *content_type;  /* with charset for text */
    const char *cache_control; /* hashed names: a year, immutable; the rest: no-cache */
    const char *etag;          /* strong, quoted: of the plain bytes */
    const char *etag_gzip;     /* of the gzip'd bytes (a different representation) */
    const char *plain;
    size_t plain_len;
    const char *gzip; /* gzip -n -9 of plain */
    size_t gzip_len;
};

extern const struct kiln_web_asset kiln_web_assets[];
extern const size_t kiln_web_n_assets;

/* The asset served at path, or NULL. */
const struct kiln_web_asset *kiln_web_find(const char *path);
/* Whether an Accept-Encoding value (NULL: absent) lets the reply be gzip'd: "gzip", "x-gzip" or
 * "*" with a q-value above 0, and gzip not refused by name (gzip;q=0). */
bool kiln_web_accepts_gzip(const char *accept_encoding);
/* Whether an If-None-Match value (NULL: absent) names etag (quoted, as in the table): "*", or
 * one of its comma-separated entity tags, W/ weak ones included (RFC 9110 13.1.2 compares
 * weakly). */
bool kiln_web_etag_matches(const char *if_none_match, const char *etag);

#endif
