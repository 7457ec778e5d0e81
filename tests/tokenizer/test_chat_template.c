/* Chat templates rendered byte-identical to transformers.apply_chat_template (jinja2): every
 * case of tests/fixtures/tokenizer/chat_cases.json against expected/chat_expected.json, made on
 * the GPU machine. Cases where transformers raised must fail in kiln too, with the template's own
 * message for raise_exception. Also: templates kiln cannot render fail at load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/file.h"
#include "tokenizer/jinja.h"
#include "tk_util.h"

static void show_diff(const char *name, const char *got, size_t gl, const char *want, size_t wl)
{
    size_t i = 0;
    while (i < gl && i < wl && got[i] == want[i]) i++;
    size_t from = i > 60 ? i - 60 : 0;
    fprintf(stderr, "  %s: differs at byte %zu\n    kiln: \"%.*s\"\n    HF:   \"%.*s\"\n", name, i,
            (int)((gl - from) > 160 ? 160 : gl - from), got + from,
            (int)((wl - from) > 160 ? 160 : wl - from), want + from);
}

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s:%d: %s", path, je.line, je.text);
    return j;
}

/* one tokenizer per (package, template override): loading gemma3 takes a second */
struct cached {
    char key[256];
    struct kiln_tokenizer *tok;
};
static struct cached cache[16];

static struct kiln_tokenizer *get_tokenizer(const char *name, json_t *tpl)
{
    char key[256];
    snprintf(key, sizeof key, "%s+%s", name, json_is_string(tpl) ? json_string_value(tpl) : "");
    size_t i = 0;
    for (; i < 16 && cache[i].tok; i++)
        if (!strcmp(cache[i].key, key)) return cache[i].tok;
    assert_true(i < 16);
    struct kiln_tokenizer *tok = tk_test_load(name);
    if (json_is_string(tpl)) {
        char rel[256], *src;
        size_t len;
        struct kiln_error err = {0};
        snprintf(rel, sizeof rel, "templates/%s", json_string_value(tpl));
        if (kiln_file_read(tk_test_fixture(rel), 1 << 20, &src, &len, &err) ||
            kiln_tokenizer_set_chat_template(tok, src, &err))
            fail_msg("%s: %s", key, err.msg);
        free(src);
    }
    snprintf(cache[i].key, sizeof cache[i].key, "%s", key);
    cache[i].tok = tok;
    return tok;
}

static void test_renderings(void **state)
{
    (void)state;
    json_t *doc = load_json(tk_test_fixture("chat_cases.json"));
    json_t *expected = load_json(tk_test_fixture("expected/chat_expected.json"));
    json_t *convs = json_object_get(doc, "conversations");
    json_t *cases = json_object_get(doc, "cases");
    assert_int_equal(json_array_size(cases), json_array_size(expected));
    size_t i;
    json_t *c;
    int bad = 0, outputs = 0, errors = 0;
    json_array_foreach(cases, i, c)
    {
        json_t *want = json_array_get(expected, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        assert_string_equal(name, json_string_value(json_object_get(want, "name")));
        struct kiln_error err = {0};
        struct kiln_tokenizer *tok = get_tokenizer(
            json_string_value(json_object_get(c, "tokenizer")), json_object_get(c, "template"));
        char *msgs = json_dumps(
            json_object_get(convs, json_string_value(json_object_get(c, "conversation"))),
            JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
        char *extra = json_dumps(json_object_get(c, "extra"), JSON_PRESERVE_ORDER);
        char *out = NULL;
        size_t len = 0;
        enum kiln_status st = kiln_tokenizer_apply_chat_template(
            tok, msgs, json_is_true(json_object_get(c, "add_generation_prompt")), extra, &out, &len,
            &err);
        json_t *wo = json_object_get(want, "output");
        if (json_is_string(wo)) {
            outputs++;
            if (st) {
                fprintf(stderr, "  %s: kiln failed: %s\n", name, err.msg);
                bad++;
            } else if (len != json_string_length(wo) || memcmp(out, json_string_value(wo), len)) {
                show_diff(name, out, len, json_string_value(wo), json_string_length(wo));
                bad++;
            }
        } else {
            errors++;
            const char *type = json_string_value(json_object_get(want, "type"));
            const char *msg = json_string_value(json_object_get(want, "error"));
            if (st != KILN_ERR_INVALID) {
                fprintf(stderr, "  %s: HF raised %s (%s); kiln: %s\n", name, type, msg,
                        st ? err.msg : "rendered");
                bad++;
            } else if (!strcmp(type, "TemplateError") && strcmp(err.msg, msg)) {
                fprintf(stderr, "  %s: message \"%s\", HF \"%s\"\n", name, err.msg, msg);
                bad++;
            }
        }
        free(out);
        free(msgs);
        free(extra);
    }
    for (size_t k = 0; k < 16; k++) kiln_tokenizer_free(cache[k].tok);
    fprintf(stderr, "chat templates: %d renderings, %d expected errors, %d mismatches\n", outputs,
            errors, bad);
    json_decref(doc);
    json_decref(expected);
    assert_int_equal(bad, 0);
}

/* Corner cases of the Jinja language against jinja2 itself (jinja_cases.json, made by
 * tools/tokenizer/make_jinja_cases.py in transformers' environment). */
static void test_jinja_cases(void **state)
{
    (void)state;
    json_t *doc = load_json(tk_test_fixture("jinja_cases.json"));
    json_t *vars = json_object_get(doc, "vars");
    size_t i;
    json_t *c;
    int bad = 0;
    json_array_foreach(json_object_get(doc, "cases"), i, c)
    {
        const char *src = json_string_value(json_object_get(c, "template"));
        json_t *want = json_object_get(c, "output");
        const char *type = json_string_value(json_object_get(c, "type"));
        struct kiln_jinja *t;
        struct kiln_error err = {0};
        enum kiln_status st = kiln_jinja_compile(src, strlen(src), &t, &err);
        if (type && !strcmp(type, "TemplateSyntaxError")) {
            if (st == KILN_OK) {
                fprintf(stderr, "  case %zu: jinja2 rejects, kiln compiles: %s\n", i, src);
                bad++;
                kiln_jinja_free(t);
            }
            continue;
        }
        if (st) {
            fprintf(stderr, "  case %zu: %s\n    %s\n", i, err.msg, src);
            bad++;
            continue;
        }
        char *out = NULL;
        size_t len = 0;
        st = kiln_jinja_render(t, vars, &out, &len, &err);
        if (json_is_string(want)) {
            if (st) {
                fprintf(stderr, "  case %zu: kiln failed: %s\n    %s\n", i, err.msg, src);
                bad++;
            } else if (len != json_string_length(want) ||
                       memcmp(out, json_string_value(want), len)) {
                char name[32];
                snprintf(name, sizeof name, "case %zu", i);
                show_diff(name, out, len, json_string_value(want), json_string_length(want));
                bad++;
            }
        } else if (st != KILN_ERR_INVALID ||
                   (!strcmp(type, "TemplateError") &&
                    strcmp(err.msg, json_string_value(json_object_get(c, "error"))))) {
            fprintf(stderr, "  case %zu: jinja2 raised %s, kiln: %s\n", i, type,
                    st ? err.msg : "rendered");
            bad++;
        }
        free(out);
        kiln_jinja_free(t);
    }
    fprintf(stderr, "jinja cases: %zu, %d mismatches\n",
            json_array_size(json_object_get(doc, "cases")), bad);
    json_decref(doc);
    assert_int_equal(bad, 0);
}

/* Templates that cannot be rendered are refused when set, with the line. */
static void test_unsupported_at_load(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{% extends 'base.html' %}",
        "{{ x | no_such_filter }}",
        "{% if x is no_such_test %}{% endif %}",
        "{{ no_such_function() }}",
        "{{ x.no_such_method() }}",
        "{% for x in y %}",
        "{{ 'unterminated }}",
        "{% include 'x' %}",
        "{% if a %}{% endfor %}",
        "{{ "
        "(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
        "(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
        "(((((((((((((((((((((((((((1 }}",
    };
    struct kiln_tokenizer *tok = tk_test_load("llama3_1");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct kiln_error err = {0};
        enum kiln_status st = kiln_tokenizer_set_chat_template(tok, bad[i], &err);
        if (st == KILN_OK) fail_msg("accepted: %s", bad[i]);
        assert_true(strstr(err.msg, "line") != NULL);
    }
    /* the model's template is still there and works */
    char *out;
    size_t len;
    struct kiln_error err = {0};
    assert_int_equal(kiln_tokenizer_apply_chat_template(tok,
                                                        "[{\"role\":\"user\",\"content\":\"hi\"}]",
                                                        true, NULL, &out, &len, &err),
                     KILN_OK);
    assert_string_equal(out, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi"
                             "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    free(out);
    kiln_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_renderings),
        cmocka_unit_test(test_unsupported_at_load),
        cmocka_unit_test(test_jinja_cases),
    };
    return cmocka_run_group_tests(all, NULL, NULL);
}
