/* Tool calling and the chat-template inputs of a request (src/server/tools.c): tools /
 * tool_choice / functions validation, developer and function roles, the refused fields,
 * chat_template_kwargs, continue_final_message, the call constraint (compiled by the engine
 * with the Llama 3.1 tokenizer: what it takes and refuses), and the
 * output parser, fed whole and one byte at a time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "server/tools.h"
#include "tokenizer/tk_util.h"

static const struct kiln_api_limits lim = {
    .vocab_size = 1000, .max_n = 4, .max_choices = 8, .max_stop = 4};

#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"
#define TOOL1                                                                                      \
    "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":"                \
    "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"                        \
    "\"required\":[\"city\"]}}}"
#define TOOL2 "{\"type\":\"function\",\"function\":{\"name\":\"now\"}}"

static struct kiln_api_request ok(const char *body)
{
    struct kiln_api_request r;
    struct kiln_api_error err = {0};
    if (kiln_api_parse(KILN_API_CHAT, body, strlen(body), &lim, &r, &err))
        fail_msg("%s: rejected: %s", body, err.message);
    return r;
}

static void bad(const char *body, const char *param, const char *needle)
{
    struct kiln_api_request r;
    struct kiln_api_error err = {0};
    if (!kiln_api_parse(KILN_API_CHAT, body, strlen(body), &lim, &r, &err))
        fail_msg("%s: accepted", body);
    assert_int_equal(err.status, 400);
    if (strcmp(err.param, param)) fail_msg("%s: param '%s', expected '%s'", body, err.param, param);
    if (needle && !strstr(err.message, needle))
        fail_msg("%s: message '%s' lacks '%s'", body, err.message, needle);
    kiln_api_request_free(&r);
}

static void tool_requests(void **state)
{
    (void)state;
    struct kiln_api_request r = ok("{" MSGS ",\"tools\":[" TOOL1 "," TOOL2 "]}");
    assert_int_equal(r.n_tools, 2);
    assert_int_equal(r.tool_choice, KILN_TOOL_CHOICE_AUTO);
    assert_true(r.parallel_tool_calls);
    assert_non_null(strstr(r.tools_json, "\"name\":\"get_weather\""));
    kiln_api_request_free(&r);
    r = ok("{" MSGS ",\"tools\":[" TOOL1 "],\"tool_choice\":\"required\","
           "\"parallel_tool_calls\":false}");
    assert_int_equal(r.tool_choice, KILN_TOOL_CHOICE_REQUIRED);
    assert_false(r.parallel_tool_calls);
    kiln_api_request_free(&r);
    r = ok("{" MSGS ",\"tools\":[" TOOL1 "," TOOL2 "],\"tool_choice\":{\"type\":\"function\","
           "\"function\":{\"name\":\"now\"}}}");
    assert_int_equal(r.tool_choice, KILN_TOOL_CHOICE_NAMED);
    assert_string_equal(r.tool_choice_name, "now");
    kiln_api_request_free(&r);
    r = ok("{" MSGS ",\"tools\":[" TOOL1 "],\"tool_choice\":\"none\"}");
    assert_int_equal(r.tool_choice, KILN_TOOL_CHOICE_NONE);
    assert_non_null(r.tools_json); /* still in the prompt */
    kiln_api_request_free(&r);
    /* legacy functions map onto tools */
    r = ok("{" MSGS ",\"functions\":[{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}],"
           "\"function_call\":{\"name\":\"f\"}}");
    assert_true(r.legacy_functions);
    assert_int_equal(r.tool_choice, KILN_TOOL_CHOICE_NAMED);
    assert_non_null(strstr(r.tools_json, "{\"type\":\"function\",\"function\":{\"name\":\"f\""));
    kiln_api_request_free(&r);
    r = ok("{" MSGS ",\"tools\":[]}");
    assert_null(r.tools_json);
    assert_int_equal(r.tool_choice, KILN_TOOL_CHOICE_NONE);
    kiln_api_request_free(&r);

    bad("{" MSGS ",\"tool_choice\":\"auto\"}", "tool_choice", "only allowed when tools");
    bad("{" MSGS ",\"tools\":[" TOOL1 "],\"tool_choice\":\"sometimes\"}", "tool_choice", NULL);
    bad("{" MSGS ",\"tools\":[" TOOL1 "],\"tool_choice\":{\"type\":\"function\","
        "\"function\":{\"name\":\"nope\"}}}",
        "tool_choice", "'nope'");
    bad("{" MSGS ",\"tools\":[{\"type\":\"code_interpreter\"}]}", "tools", "only function");
    bad("{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]}", "tools",
        "name");
    bad("{" MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\","
        "\"parameters\":[]}}]}",
        "tools", "parameters");
    bad("{" MSGS ",\"tools\":[" TOOL2 "," TOOL2 "]}", "tools", "duplicate");
    bad("{" MSGS ",\"tools\":[" TOOL2 "],\"functions\":[{\"name\":\"f\"}]}", "functions", NULL);
    bad("{" MSGS ",\"tools\":[" TOOL2 "],\"parallel_tool_calls\":1}", "parallel_tool_calls", NULL);
    bad("{" MSGS ",\"functions\":[{\"name\":\"f\"}],\"function_call\":\"required\"}",
        "function_call", NULL);
}

static void roles_and_template_inputs(void **state)
{
    (void)state;
    struct kiln_api_request r =
        ok("{\"messages\":[{\"role\":\"developer\",\"content\":\"d\"},{\"role\":\"user\","
           "\"content\":\"u\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
           "\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
           "\"{\\\"a\\\":1}\"}}]},{\"role\":\"function\",\"name\":\"f\",\"content\":\"2\"}],"
           "\"chat_template_kwargs\":{\"date_string\":\"01 Jan 2026\"}}");
    /* developer -> system, arguments string -> object, function -> tool */
    assert_string_equal(r.messages_json,
                        "[{\"role\":\"system\",\"content\":\"d\"},{\"role\":\"user\",\"content\":"
                        "\"u\"},{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":"
                        "\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
                        "{\"a\":1}}}]},{\"role\":\"tool\",\"content\":\"2\",\"name\":\"f\"}]");
    char *vars;
    assert_int_equal(kiln_tools_template_vars(&r, &vars), KILN_OK);
    assert_string_equal(vars, "{\"date_string\":\"01 Jan 2026\"}");
    free(vars);
    kiln_api_request_free(&r);
    r = ok("{" MSGS ",\"tools\":[" TOOL2 "],\"chat_template_kwargs\":{\"tools_in_user_message\":"
           "false}}");
    assert_int_equal(kiln_tools_template_vars(&r, &vars), KILN_OK);
    assert_string_equal(vars, "{\"tools_in_user_message\":false,\"tools\":[" TOOL2 "]}");
    free(vars);
    kiln_api_request_free(&r);

    r = ok("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\","
           "\"content\":\"Once upon \"}],\"continue_final_message\":true,"
           "\"add_generation_prompt\":false}");
    assert_true(r.continue_final_message);
    assert_false(r.add_generation_prompt);
    char rendered[] = "<u>hi</u><a>Once upon</a>";
    size_t len = strlen(rendered);
    struct kiln_api_error err;
    assert_int_equal(kiln_tools_continue_final(r.messages_json, rendered, &len, &err), KILN_OK);
    assert_string_equal(rendered, "<u>hi</u><a>Once upon");
    char kept[] = "<a>Once upon </a>";
    len = strlen(kept);
    assert_int_equal(kiln_tools_continue_final(r.messages_json, kept, &len, &err), KILN_OK);
    assert_string_equal(kept, "<a>Once upon ");
    char lost[] = "<a>something else</a>";
    len = strlen(lost);
    assert_int_equal(kiln_tools_continue_final(r.messages_json, lost, &len, &err),
                     KILN_ERR_INVALID);
    kiln_api_request_free(&r);

    bad("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"continue_final_message\":true}",
        "continue_final_message", "assistant");
    bad("{\"messages\":[{\"role\":\"assistant\",\"content\":\"hi\"}],"
        "\"continue_final_message\":true,\"add_generation_prompt\":true}",
        "continue_final_message", "both");
    bad("{" MSGS ",\"chat_template_kwargs\":[1]}", "chat_template_kwargs", NULL);
    bad("{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "messages[0].role", "developer");
    /* defined by OpenAI or vLLM, not implemented: refused by name; neutral values pass */
    bad("{" MSGS ",\"store\":true}", "store", NULL);
    bad("{" MSGS ",\"use_beam_search\":true}", "use_beam_search", NULL);
    bad("{" MSGS ",\"length_penalty\":0.5}", "length_penalty", NULL);
    bad("{" MSGS ",\"modalities\":[\"text\",\"audio\"]}", "modalities", NULL);
    bad("{" MSGS ",\"prompt_logprobs\":1}", "prompt_logprobs", NULL);
    bad("{" MSGS ",\"chat_template\":\"{{x}}\"}", "chat_template", "--chat-template");
    bad("{" MSGS ",\"echo\":true}", "echo", NULL);
    bad("{" MSGS ",\"stream\":true,\"stream_options\":{\"continuous_usage_stats\":true}}",
        "stream_options", NULL);
    bad("{" MSGS ",\"documents\":{}}", "documents", NULL);
    r = ok("{" MSGS ",\"documents\":[{\"title\":\"t\",\"text\":\"x\"}]}");
    assert_int_equal(kiln_tools_template_vars(&r, &vars), KILN_OK);
    assert_string_equal(vars, "{\"documents\":[{\"title\":\"t\",\"text\":\"x\"}]}");
    free(vars);
    kiln_api_request_free(&r);
    r = ok("{" MSGS ",\"store\":false,\"use_beam_search\":false,\"length_penalty\":1.0,"
           "\"modalities\":[\"text\"],\"metadata\":{\"a\":\"b\"},\"service_tier\":\"auto\","
           "\"user\":\"u\",\"priority\":0}");
    kiln_api_request_free(&r);
}

static struct kiln_tokenizer *tok;
static struct kiln_grammar_vocab *vocab;

static int setup(void **state)
{
    (void)state;
    tok = tk_test_load("llama3_1");
    struct kiln_error err = {0};
    if (kiln_grammar_vocab_create(tok, &vocab, &err)) fail_msg("vocab: %s", err.msg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kiln_grammar_vocab_free(vocab);
    kiln_tokenizer_free(tok);
    return 0;
}

/* Does the request's constraint (compiled by the engine, flexible JSON whitespace) take text
 * whole, as a complete output? */
static bool takes(const struct kiln_api_request *r, const char *text)
{
    struct kiln_constraint_spec spec = {r->constraint.kind, r->constraint.text, r->constraint.len};
    struct kiln_grammar_options o = {KILN_GRAMMAR_WS_FLEXIBLE};
    struct kiln_grammar *g = NULL;
    struct kiln_error err = {0};
    if (kiln_grammar_compile_opts(&spec, vocab, &o, &g, &err))
        fail_msg("compile %s: %s", r->constraint.text, err.msg);
    struct kiln_matcher *m;
    assert_int_equal(kiln_matcher_create(g, &m, &err), KILN_OK);
    bool ok = kiln_matcher_accept_bytes(m, text, strlen(text)) && kiln_matcher_is_complete(m);
    kiln_matcher_free(m);
    kiln_grammar_unref(g);
    return ok;
}

static void call_constraint(void **state)
{
    (void)state;
    const char *paris = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
    const char *now = "{\"name\": \"now\", \"parameters\": {}}";
    struct kiln_api_request r =
        ok("{" MSGS ",\"tools\":[" TOOL1 "," TOOL2 "],\"tool_choice\":\"required\"}");
    assert_int_equal(r.constraint.kind, KILN_CONSTRAINT_GRAMMAR);
    assert_string_equal(r.constraint.param, "tools");
    assert_true(takes(&r, paris));
    assert_true(takes(&r, now));
    char two[256];
    snprintf(two, sizeof two, "%s; %s", paris, now);
    assert_true(takes(&r, two));                                                /* parallel calls */
    assert_false(takes(&r, "{\"name\": \"get_weather\", \"parameters\": {}}")); /* city */
    assert_false(takes(&r, "{\"name\": \"get_weather\", \"parameters\": {\"city\": 3}}"));
    assert_false(takes(&r, "{\"name\": \"other\", \"parameters\": {}}"));
    assert_false(takes(&r, "{\"name\": \"now\", \"parameters\": {}, \"x\": 1}"));
    assert_false(takes(&r, "{\"name\": \"now\"}"));
    assert_false(takes(&r, "Sure! Here is the weather."));
    assert_false(takes(&r, ""));
    kiln_api_request_free(&r);
    r = ok("{" MSGS ",\"tools\":[" TOOL1 "," TOOL2 "],\"tool_choice\":\"required\","
           "\"parallel_tool_calls\":false}");
    assert_false(takes(&r, two));
    assert_true(takes(&r, paris));
    kiln_api_request_free(&r);
    r = ok("{" MSGS ",\"tools\":[" TOOL1 "," TOOL2 "],\"tool_choice\":{\"type\":\"function\","
           "\"function\":{\"name\":\"now\"}}}");
    assert_true(takes(&r, now));
    assert_false(takes(&r, paris));
    kiln_api_request_free(&r);
    /* auto: text, or a call held to the tools once it opens */
    r = ok("{" MSGS ",\"tools\":[" TOOL1 "]}");
    assert_true(takes(&r, paris));
    assert_true(takes(&r, "It is sunny {really}.\nYes."));
    assert_true(takes(&r, ""));
    assert_false(takes(&r, "{\"name\": \"get_weather\", \"parameters\": {\"town\": 1}}"));
    assert_false(takes(&r, "{\"answer\": 42}"));
    kiln_api_request_free(&r);
    /* none: unconstrained; a forced call with response_format: refused */
    r = ok("{" MSGS ",\"tools\":[" TOOL1 "],\"tool_choice\":\"none\"}");
    assert_int_equal(r.constraint.kind, KILN_CONSTRAINT_NONE);
    kiln_api_request_free(&r);
    bad("{" MSGS ",\"tools\":[" TOOL1 "],\"tool_choice\":\"required\",\"response_format\":"
        "{\"type\":\"json_object\"}}",
        "tool_choice", "response_format");
}

/* Events rendered as text: T(...) text, S<i>(name) start, A<i>(...) args, E<i>| end. */
struct trace {
    char out[4096];
    size_t n;
};

static void trace_ev(void *ctx, const struct kiln_tool_event *ev)
{
    struct trace *t = ctx;
    static const char kinds[] = "TSAE";
    char tag[16];
    int k = snprintf(tag, sizeof tag, ev->kind == KILN_TOOL_TEXT ? "%c" : "%c%d", kinds[ev->kind],
                     ev->index);
    /* merge consecutive pieces of the same kind */
    bool merge = t->n && t->n >= (size_t)k + 1 && t->out[t->n - 1] == ')' &&
                 ev->kind != KILN_TOOL_CALL_START && ev->kind != KILN_TOOL_CALL_END;
    if (merge) {
        /* find the last tag */
        size_t open = t->n - 1;
        while (open && t->out[open] != '(') open--;
        size_t ts = open;
        while (ts && t->out[ts - 1] != ')' && t->out[ts - 1] != '|') ts--;
        merge = open - ts == (size_t)k && !memcmp(t->out + ts, tag, (size_t)k);
    }
    if (merge) {
        t->n--;
    } else {
        memcpy(t->out + t->n, tag, (size_t)k);
        t->n += (size_t)k;
        if (ev->kind == KILN_TOOL_CALL_END) {
            t->out[t->n++] = '|';
            t->out[t->n] = '\0';
            return;
        }
        t->out[t->n++] = '(';
    }
    memcpy(t->out + t->n, ev->data, ev->len);
    t->n += ev->len;
    t->out[t->n++] = ')';
    t->out[t->n] = '\0';
}

/* The same events whether the output comes at once or byte by byte. */
static void expect_events(const char *text, bool parallel, const char *want)
{
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct trace t = {.n = 0};
        struct kiln_tool_parser *p = kiln_tool_parser_new(parallel);
        size_t len = strlen(text);
        if (bytewise)
            for (size_t i = 0; i < len; i++) kiln_tool_parser_push(p, text + i, 1, trace_ev, &t);
        else
            kiln_tool_parser_push(p, text, len, trace_ev, &t);
        kiln_tool_parser_finish(p, trace_ev, &t);
        kiln_tool_parser_free(p);
        if (strcmp(t.out, want))
            fail_msg("%s (%s): got\n  %s\nwant\n  %s", text, bytewise ? "bytewise" : "whole", t.out,
                     want);
    }
}

static void output_parser(void **state)
{
    (void)state;
    expect_events("Hello there", true, "T(Hello there)");
    expect_events("  {\"name\": \"f\", \"parameters\": {\"a\": \"}\\\"\", \"b\": [1, {}]}}", true,
                  "S0(f)A0({\"a\": \"}\\\"\", \"b\": [1, {}]})E0|");
    expect_events("<|python_tag|>{\"name\": \"f\", \"arguments\": {}}", true, "S0(f)A0({})E0|");
    /* parameters before the name: sent once the name is known */
    expect_events("{\"parameters\": {\"x\": 1}, \"name\": \"g\"}", true, "S0(g)A0({\"x\": 1})E0|");
    /* no parameters: {} */
    expect_events("{\"name\": \"now\"}", true, "S0(now)A0({})E0|");
    /* parallel calls separated by ';' */
    expect_events("{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": "
                  "{\"k\": true}}",
                  true, "S0(a)A0({})E0|S1(b)A1({\"k\": true})E1|");
    /* without parallel calls the second is dropped */
    expect_events("{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {}}",
                  false, "S0(a)A0({})E0|");
    /* JSON that is not a call: text */
    expect_events("{\"answer\": 42}", true, "T({\"answer\": 42})");
    expect_events("{not json", true, "T({not json)");
    expect_events("   ", true, "T(   )");
    /* a call cut short (max_tokens) ends where it stopped */
    expect_events("{\"name\": \"f\", \"parameters\": {\"a\": 1", true, "S0(f)A0({\"a\": 1)E0|");
    /* text after a call */
    expect_events("{\"name\": \"f\", \"parameters\": {}} and more", true,
                  "S0(f)A0({})E0|T(and more)");
}

static void whole_output(void **state)
{
    (void)state;
    char *content;
    size_t clen;
    json_t *calls;
    const char *t = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
    assert_int_equal(kiln_tools_parse_output(t, strlen(t), true, &content, &clen, &calls), KILN_OK);
    assert_non_null(calls);
    assert_int_equal(clen, 0);
    char *s = json_dumps(calls, JSON_COMPACT);
    assert_string_equal(
        s, "[{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}]");
    free(s);
    free(content);
    json_decref(calls);
    /* arguments that are not a JSON object: the whole output is content */
    t = "{\"name\": \"f\", \"parameters\": {\"a\": tru}}";
    assert_int_equal(kiln_tools_parse_output(t, strlen(t), true, &content, &clen, &calls), KILN_OK);
    assert_null(calls);
    assert_string_equal(content, t);
    free(content);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tool_requests),   cmocka_unit_test(roles_and_template_inputs),
        cmocka_unit_test(call_constraint), cmocka_unit_test(output_parser),
        cmocka_unit_test(whole_output),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
