/* Stop strings on streamed text: what is emitted, what is held back, where output ends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "runtime/stop.h"

/* Streams the pieces through a matcher; returns the emitted text (static buffer) and the
 * matched index, flushing what is held back at the end when nothing matched. check_from: the
 * first piece index at which stop strings are checked (min_tokens). */
static const char *run(const char *const *stops, int n_stops, const char *const *pieces,
                       int n_pieces, int check_from, int *matched)
{
    static char out[256];
    size_t len = 0;
    struct kiln_stop s;
    struct kiln_error err;
    assert_int_equal(kiln_stop_init(&s, stops, n_stops, &err), KILN_OK);
    *matched = -1;
    for (int i = 0; i < n_pieces && *matched < 0; i++) {
        size_t ready;
        assert_int_equal(kiln_stop_push(&s, pieces[i], strlen(pieces[i]), i >= check_from, &ready,
                                        matched, &err),
                         KILN_OK);
        memcpy(out + len, s.buf, ready);
        len += ready;
        kiln_stop_consume(&s, ready);
    }
    if (*matched < 0) {
        memcpy(out + len, s.buf, s.len);
        len += s.len;
    }
    out[len] = 0;
    kiln_stop_free(&s);
    return out;
}

static void matches_across_pieces(void **state)
{
    (void)state;
    const char *stops[] = {"\n\n", "END"};
    const char *p1[] = {"Hello", " wor", "ld.\n", "\nmore"};
    int m;
    assert_string_equal(run(stops, 2, p1, 4, 0, &m), "Hello world.");
    assert_int_equal(m, 0);
    const char *p2[] = {"aE", "N", "Dz"};
    assert_string_equal(run(stops, 2, p2, 3, 0, &m), "a");
    assert_int_equal(m, 1);
    /* A false start is released once it cannot be a stop string any more. */
    const char *p3[] = {"aE", "N", "x"};
    assert_string_equal(run(stops, 2, p3, 3, 0, &m), "aENx");
    assert_int_equal(m, -1);
}

static void hold_back_exact(void **state)
{
    (void)state;
    const char *stops[] = {"STOP"};
    struct kiln_stop s;
    struct kiln_error err;
    size_t ready;
    int m;
    assert_int_equal(kiln_stop_init(&s, stops, 1, &err), KILN_OK);
    assert_int_equal(kiln_stop_push(&s, "abcST", 5, true, &ready, &m, &err), KILN_OK);
    assert_int_equal(ready, 3); /* "ST" could start "STOP" */
    kiln_stop_consume(&s, ready);
    assert_int_equal(kiln_stop_push(&s, "O", 1, true, &ready, &m, &err), KILN_OK);
    assert_int_equal(ready, 0);
    assert_int_equal(kiln_stop_push(&s, "Px", 2, true, &ready, &m, &err), KILN_OK);
    assert_int_equal(m, 0);
    assert_int_equal(ready, 0);
    kiln_stop_free(&s);
}

static void earliest_wins(void **state)
{
    (void)state;
    const char *stops[] = {"world", "lo w", ""};
    const char *p[] = {"hello world"};
    int m;
    assert_string_equal(run(stops, 3, p, 1, 0, &m), "hel");
    assert_int_equal(m, 1);
    const char *tie[] = {"ab", "abc"};
    const char *q[] = {"xabc"};
    assert_string_equal(run(tie, 2, q, 1, 0, &m), "x");
    assert_int_equal(m, 0);
}

static void unchecked_under_min_tokens(void **state)
{
    (void)state;
    const char *stops[] = {"."};
    const char *p[] = {"a.", "b.", "c"};
    int m;
    assert_string_equal(run(stops, 1, p, 3, 1, &m), "a.b");
    assert_int_equal(m, 0);
    assert_string_equal(run(stops, 1, p, 3, 5, &m), "a.b.c");
    assert_int_equal(m, -1);
}

static void no_stops_passes_through(void **state)
{
    (void)state;
    const char *p[] = {"x", "", "yz"};
    int m;
    assert_string_equal(run(NULL, 0, p, 3, 0, &m), "xyz");
    assert_int_equal(m, -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matches_across_pieces),   cmocka_unit_test(hold_back_exact),
        cmocka_unit_test(earliest_wins),           cmocka_unit_test(unchecked_under_min_tokens),
        cmocka_unit_test(no_stops_passes_through),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
