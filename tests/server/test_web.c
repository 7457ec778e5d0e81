/* The chat page's pure parts (src/server/web.c): Accept-Encoding and If-None-Match as the
 * page's route reads them, and the generated asset table (web_assets.c) that it serves. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "server/web.h"

static void accept_encoding(void **state)
{
    (void)state;
    static const char *const yes[] = {"gzip",
                                      "GZIP",
                                      "gzip, deflate, br",
                                      "br;q=1.0, gzip;q=0.8, *;q=0.1",
                                      "x-gzip",
                                      " deflate ,gzip ; q=0.5",
                                      "*",
                                      "*;q=0.001",
                                      "gzip;q=1",
                                      "gzip;q=1.000",
                                      "gzip;Q=0.9",
                                      "gzip;q=0, gzip;q=0.5"};
    static const char *const no[] = {"",
                                     "identity",
                                     "deflate, br",
                                     "gzip;q=0",
                                     "gzip;q=0.000",
                                     "*, gzip;q=0",
                                     "*;q=0",
                                     "gzipx",
                                     "xgzip",
                                     "gzip;q=2",
                                     "gzip;q=1.5",
                                     "gzip;q=0.5x",
                                     "gzip;q=",
                                     "gzip;q=-1",
                                     ",,,",
                                     "br;q=0.5, gzip;q=0.0"};
    assert_false(kiln_web_accepts_gzip(NULL));
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        if (!kiln_web_accepts_gzip(yes[i])) fail_msg("'%s': gzip refused", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (kiln_web_accepts_gzip(no[i])) fail_msg("'%s': gzip accepted", no[i]);
}

static void if_none_match(void **state)
{
    (void)state;
    const char *etag = "\"abc123\"";
    static const char *const yes[] = {"\"abc123\"",          "*",
                                      "\"x\", \"abc123\"",   "W/\"abc123\"",
                                      "\"x\",W/\"abc123\" ", "  \"abc123\""};
    static const char *const no[] = {"",         "\"abc12\"",  "\"abc1234\"",
                                     "abc123",   "\"abc123",   "\"x\" \"y\"",
                                     "W/abc123", "\"ABC123\"", ","};
    assert_false(kiln_web_etag_matches(NULL, etag));
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        if (!kiln_web_etag_matches(yes[i], etag)) fail_msg("'%s': no match", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (kiln_web_etag_matches(no[i], etag)) fail_msg("'%s': matched", no[i]);
}

/* Every file the page names is in the table; every gzip copy is a gzip stream; ETags are
 * quoted, distinct per representation and per file. */
static void asset_table(void **state)
{
    (void)state;
    const struct kiln_web_asset *index = kiln_web_find("/");
    assert_non_null(index);
    assert_string_equal(index->content_type, "text/html; charset=utf-8");
    assert_string_equal(index->cache_control, "no-cache");
    assert_null(kiln_web_find("/index.html"));
    assert_null(kiln_web_find("/assets/"));
    assert_null(kiln_web_find(NULL));
    int named = 0;
    for (const char *p = index->plain; (p = strstr(p, "\"/assets/")) != NULL; named++) {
        const char *end = strchr(p + 1, '"');
        assert_non_null(end);
        char path[256];
        size_t len = (size_t)(end - p - 1);
        assert_true(len < sizeof path);
        memcpy(path, p + 1, len);
        path[len] = 0;
        if (!kiln_web_find(path)) fail_msg("index.html names %s, which is not served", path);
        p = end;
    }
    assert_true(named >= 4); /* icon, style, app, markdown */
    assert_true(kiln_web_n_assets >= 5);
    for (size_t i = 0; i < kiln_web_n_assets; i++) {
        const struct kiln_web_asset *a = &kiln_web_assets[i];
        assert_true(a->gzip_len > 18 && a->plain_len > 0);
        assert_memory_equal(a->gzip, "\x1f\x8b\x08", 3);
        assert_int_equal(a->etag[0], '"');
        assert_string_not_equal(a->etag, a->etag_gzip);
        for (size_t j = 0; j < i; j++) assert_string_not_equal(a->etag, kiln_web_assets[j].etag);
        assert_ptr_equal(kiln_web_find(a->path), a);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(accept_encoding),
        cmocka_unit_test(if_none_match),
        cmocka_unit_test(asset_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
