/* The server's pure parts: request parsing and validation (every 400 row of issue 7 that the
 * parser owns), the OpenAI error object, response and chunk shapes, logprobs formats, the API
 * key check and the Prometheus rendering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/api.h"
#include "server/metrics.h"
#include "server/server.h"

static const struct kiln_api_limits lim = {
    .vocab_size = 1000, .max_n = 4, .max_choices = 8, .max_stop = 4};

static struct kiln_api_request parse_ok(enum kiln_api_kind kind, const char *body)
{
    struct kiln_api_request r;
    struct kiln_api_error err = {0};
    enum kiln_status st = kiln_api_parse(kind, body, strlen(body), &lim, &r, &err);
    if (st) fail_msg("%s: rejected: %s", body, err.message);
    return r;
}

/* Expects a rejection with this status and param ("" for none). */
static void parse_bad(enum kiln_api_kind kind, const char *body, size_t len, int status,
                      const char *param)
{
    struct kiln_api_request r;
    struct kiln_api_error err = {0};
    enum kiln_status st = kiln_api_parse(kind, body, len, &lim, &r, &err);
    if (!st) fail_msg("%s: accepted", body);
    assert_int_equal(err.status, status);
    if (strcmp(err.param, param)) fail_msg("%s: param '%s', expected '%s'", body, err.param, param);
    assert_true(strlen(err.message) > 10);
    assert_string_equal(err.type, status >= 500 ? "server_error" : "invalid_request_error");
    /* r holds nothing after a failure: freeing it again must be harmless */
    kiln_api_request_free(&r);
}

#define BAD(kind, body, status, param) parse_bad(kind, body, strlen(body), status, param)
#define CMPL                           KILN_API_COMPLETION
#define CHAT                           KILN_API_CHAT

static void completion_defaults_and_fields(void **state)
{
    (void)state;
    struct kiln_api_request r = parse_ok(
        CMPL, "{\"model\":\"llama_3.1_8b_engine_fp8\",\"prompt\":\"The capital of France is\","
              "\"max_tokens\":50,\"temperature\":0.5}");
    assert_string_equal(r.model, "llama_3.1_8b_engine_fp8");
    assert_int_equal(r.n_prompts, 1);
    assert_string_equal(r.prompts[0].text, "The capital of France is");
    assert_null(r.prompts[0].ids);
    assert_int_equal(r.max_tokens, 50);
    assert_true(r.temperature == 0.5f);
    assert_true(r.top_p == 1.0f);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.logprobs, -1);
    assert_false(r.stream);
    assert_false(r.has_seed);
    assert_true(r.add_special_tokens);
    assert_true(r.skip_special_tokens);
    assert_true(r.repetition_penalty == 1.0f);
    kiln_api_request_free(&r);

    r = parse_ok(CMPL, "{\"prompt\":\"x\",\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,\"n\":2,"
                       "\"seed\":-7,\"stop\":[\"\\n\",\"END\"],\"stop_token_ids\":[5,6],"
                       "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"logprobs\":3,\"echo\":false,\"presence_penalty\":0.5,"
                       "\"frequency_penalty\":-0.5,\"repetition_penalty\":1.1,"
                       "\"logit_bias\":{\"12\":-100,\"13\":2.5},\"ignore_eos\":true,"
                       "\"min_tokens\":3,\"max_tokens\":9.0,\"user\":\"u1\"}");
    assert_true(r.top_p == 0.9f);
    assert_int_equal(r.top_k, 40);
    assert_int_equal(r.n, 2);
    assert_true(r.has_seed);
    assert_true(r.seed == (uint64_t)-7);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[0], "\n");
    assert_int_equal(r.n_stop_ids, 2);
    assert_int_equal(r.stop_ids[1], 6);
    assert_true(r.stream && r.include_usage);
    assert_int_equal(r.logprobs, 3);
    assert_int_equal(r.n_bias, 2);
    assert_true(r.ignore_eos);
    assert_int_equal(r.min_tokens, 3);
    assert_int_equal(r.max_tokens, 9);
    kiln_api_request_free(&r);
}

static void completion_prompt_forms(void **state)
{
    (void)state;
    struct kiln_api_request r = parse_ok(CMPL, "{\"prompt\":[\"a\",\"bc\"]}");
    assert_int_equal(r.n_prompts, 2);
    assert_string_equal(r.prompts[1].text, "bc");
    kiln_api_request_free(&r);
    r = parse_ok(CMPL, "{\"prompt\":[1,2,999]}");
    assert_int_equal(r.n_prompts, 1);
    assert_int_equal(r.prompts[0].n_ids, 3);
    assert_int_equal(r.prompts[0].ids[2], 999);
    kiln_api_request_free(&r);
    r = parse_ok(CMPL, "{\"prompt\":[[1],[2,3]]}");
    assert_int_equal(r.n_prompts, 2);
    assert_int_equal(r.prompts[1].n_ids, 2);
    kiln_api_request_free(&r);
    /* NUL is valid inside a JSON string and kept with its length */
    r = parse_ok(CMPL, "{\"prompt\":\"a\\u0000b\"}");
    assert_int_equal(r.prompts[0].text_len, 3);
    kiln_api_request_free(&r);
}

static void chat_messages(void **state)
{
    (void)state;
    struct kiln_api_request r = parse_ok(
        CHAT, "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
              "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
              "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":null,"
              "\"tool_calls\":[]},{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"c1\"}],"
              "\"max_completion_tokens\":7,\"logprobs\":true,\"top_logprobs\":2}");
    assert_string_equal(r.messages_json,
                        "[{\"role\":\"system\",\"content\":\"be brief\"},"
                        "{\"role\":\"user\",\"content\":\"a\\nb\"},{\"role\":\"assistant\","
                        "\"content\":\"\"},{\"role\":\"tool\","
                        "\"content\":\"42\",\"tool_call_id\":\"c1\"}]");
    assert_int_equal(r.max_tokens, 7);
    assert_int_equal(r.logprobs, 2);
    assert_false(r.add_special_tokens); /* the template already carries BOS (vLLM) */
    assert_true(r.add_generation_prompt);
    kiln_api_request_free(&r);
    r = parse_ok(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"logprobs\":true}");
    assert_int_equal(r.logprobs, 0);
    kiln_api_request_free(&r);
}

/* Issue 7 item 5, the rows the parser answers. */
static void bad_bodies(void **state)
{
    (void)state;
    /* invalid JSON, not an object, invalid UTF-8 */
    BAD(CMPL, "{\"prompt\": \"x\",", 400, "");
    BAD(CMPL, "", 400, "");
    BAD(CMPL, "[1,2]", 400, "");
    parse_bad(CMPL, "{\"prompt\":\"\xff\xfe\"}", 14, 400, "");
    parse_bad(CMPL, "{\"prompt\":\"\xc3\"}", 13, 400, "");
    /* wrong types */
    BAD(CMPL, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "temperature");
    BAD(CMPL, "{\"prompt\":\"x\",\"max_tokens\":\"50\"}", 400, "max_tokens");
    BAD(CMPL, "{\"prompt\":\"x\",\"max_tokens\":2.5}", 400, "max_tokens");
    BAD(CMPL, "{\"prompt\":\"x\",\"stream\":\"yes\"}", 400, "stream");
    BAD(CMPL, "{\"prompt\":\"x\",\"model\":7}", 400, "model");
    BAD(CMPL, "{\"prompt\":7}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":[\"a\",1]}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":[[1],\"a\"]}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":\"x\",\"stop\":[1]}", 400, "stop");
    BAD(CMPL, "{\"prompt\":\"x\",\"stop\":\"\"}", 400, "stop");
    BAD(CMPL, "{\"prompt\":\"x\",\"seed\":\"1\"}", 400, "seed");
    BAD(CMPL, "{\"prompt\":\"x\",\"user\":5}", 400, "user");
    BAD(CMPL, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}", 400,
        "stream_options");
    /* empty prompt / messages */
    BAD(CMPL, "{}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":\"\"}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":[]}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":[[]]}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":[\"a\",\"\"]}", 400, "prompt");
    BAD(CHAT, "{\"messages\":[]}", 400, "messages");
    BAD(CHAT, "{}", 400, "messages");
    BAD(CHAT, "{\"messages\":{}}", 400, "messages");
    BAD(CHAT, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content");
    BAD(CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages[0].role");
    BAD(CHAT, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages[0].role");
    BAD(CHAT, "{\"messages\":[5]}", 400, "messages[0]");
    BAD(CHAT,
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}"
        "]}",
        400, "messages[0].content[0]");
    /* out-of-vocabulary token ids */
    BAD(CMPL, "{\"prompt\":[1,1000]}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":[-1]}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":[[1],[5000]]}", 400, "prompt");
    BAD(CMPL, "{\"prompt\":\"x\",\"stop_token_ids\":[1000]}", 400, "stop_token_ids");
    BAD(CMPL, "{\"prompt\":\"x\",\"logit_bias\":{\"1000\":1}}", 400, "logit_bias");
    BAD(CMPL, "{\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", 400, "logit_bias");
    BAD(CMPL, "{\"prompt\":\"x\",\"logit_bias\":{\"1\":101}}", 400, "logit_bias");
    /* non-finite or negative temperature: JSON has no NaN/Infinity literals, and a number
     * that overflows a double is a parse error */
    BAD(CMPL, "{\"prompt\":\"x\",\"temperature\":-0.1}", 400, "temperature");
    BAD(CMPL, "{\"prompt\":\"x\",\"temperature\":NaN}", 400, "");
    BAD(CMPL, "{\"prompt\":\"x\",\"temperature\":Infinity}", 400, "");
    BAD(CMPL, "{\"prompt\":\"x\",\"temperature\":1e999}", 400, "");
    /* top_p outside (0, 1] */
    BAD(CMPL, "{\"prompt\":\"x\",\"top_p\":0}", 400, "top_p");
    BAD(CMPL, "{\"prompt\":\"x\",\"top_p\":1.01}", 400, "top_p");
    BAD(CMPL, "{\"prompt\":\"x\",\"top_p\":-1}", 400, "top_p");
    /* n over its limit, prompts x n over the limit */
    BAD(CMPL, "{\"prompt\":\"x\",\"n\":5}", 400, "n");
    BAD(CMPL, "{\"prompt\":\"x\",\"n\":0}", 400, "n");
    BAD(CMPL, "{\"prompt\":[\"a\",\"b\",\"c\"],\"n\":3}", 400, "n");
    /* other ranges */
    BAD(CMPL, "{\"prompt\":\"x\",\"max_tokens\":0}", 400, "max_tokens");
    BAD(CMPL, "{\"prompt\":\"x\",\"max_tokens\":99999999999}", 400, "max_tokens");
    BAD(CMPL, "{\"prompt\":\"x\",\"min_tokens\":5,\"max_tokens\":2}", 400, "min_tokens");
    BAD(CMPL, "{\"prompt\":\"x\",\"logprobs\":21}", 400, "logprobs");
    BAD(CMPL, "{\"prompt\":\"x\",\"presence_penalty\":3}", 400, "presence_penalty");
    BAD(CMPL, "{\"prompt\":\"x\",\"repetition_penalty\":0}", 400, "repetition_penalty");
    BAD(CMPL, "{\"prompt\":\"x\",\"top_k\":-2}", 400, "top_k");
    BAD(CMPL, "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "stop");
    BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", 400,
        "top_logprobs");
    /* features kiln refuses rather than ignores */
    BAD(CMPL, "{\"prompt\":\"x\",\"suffix\":\"y\"}", 400, "suffix");
    BAD(CMPL, "{\"prompt\":\"x\",\"echo\":true,\"logprobs\":1}", 400, "echo");
    BAD(CMPL, "{\"prompt\":\"x\",\"best_of\":3}", 400, "best_of");
    BAD(CHAT,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\"}]"
        "}",
        400, "tools");
}

/* One structured-output form in a body: kind, text and the param it names. */
static void expect_constraint(enum kiln_api_kind kind, const char *body,
                              enum kiln_constraint_kind want, const char *text, const char *param)
{
    struct kiln_api_request r = parse_ok(kind, body);
    if (r.constraint.kind != want)
        fail_msg("%s: constraint kind %d, expected %d", body, (int)r.constraint.kind, (int)want);
    if (want != KILN_CONSTRAINT_NONE) {
        assert_non_null(r.constraint.text);
        if (strcmp(r.constraint.text, text))
            fail_msg("%s: text '%s', expected '%s'", body, r.constraint.text, text);
        assert_int_equal(r.constraint.len, strlen(text));
        assert_string_equal(r.constraint.param, param);
    } else {
        assert_null(r.constraint.text);
    }
    kiln_api_request_free(&r);
    assert_int_equal(r.constraint.kind, KILN_CONSTRAINT_NONE);
}

#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

static void constraint_forms(void **state)
{
    (void)state;
    /* none, text */
    expect_constraint(CHAT, "{" MSGS "}", KILN_CONSTRAINT_NONE, NULL, NULL);
    expect_constraint(CHAT, "{" MSGS ",\"response_format\":{\"type\":\"text\"}}",
                      KILN_CONSTRAINT_NONE, NULL, NULL);
    expect_constraint(CHAT, "{" MSGS ",\"response_format\":null,\"guided_json\":null}",
                      KILN_CONSTRAINT_NONE, NULL, NULL);
    /* response_format on both endpoints */
    expect_constraint(CHAT, "{" MSGS ",\"response_format\":{\"type\":\"json_object\"}}",
                      KILN_CONSTRAINT_JSON_OBJECT, "", "response_format");
    expect_constraint(CMPL, "{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"}}",
                      KILN_CONSTRAINT_JSON_OBJECT, "", "response_format");
    expect_constraint(CHAT,
                      "{" MSGS ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
                      "{\"name\":\"p\",\"strict\":true,\"description\":\"d\",\"schema\":"
                      "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}}}}",
                      KILN_CONSTRAINT_JSON_SCHEMA,
                      "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}",
                      "response_format.json_schema.schema");
    expect_constraint(CMPL,
                      "{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_schema\","
                      "\"json_schema\":{\"name\":\"p\",\"schema\":{\"type\":\"string\"}}}}",
                      KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\"}",
                      "response_format.json_schema.schema");
    /* no schema: any JSON value */
    expect_constraint(CHAT,
                      "{" MSGS ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
                      "{\"name\":\"p\"}}}",
                      KILN_CONSTRAINT_JSON_SCHEMA, "{}", "response_format");
    /* vLLM's guided_* */
    expect_constraint(CMPL, "{\"prompt\":\"x\",\"guided_json\":{\"type\":\"boolean\"}}",
                      KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"boolean\"}", "guided_json");
    expect_constraint(CHAT, "{" MSGS ",\"guided_json\":\"{\\\"type\\\": \\\"null\\\"}\"}",
                      KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"null\"}", "guided_json");
    expect_constraint(CHAT, "{" MSGS ",\"guided_regex\":\"[a-z]+\\\\d\"}", KILN_CONSTRAINT_REGEX,
                      "[a-z]+\\d", "guided_regex");
    expect_constraint(CMPL, "{\"prompt\":\"x\",\"guided_choice\":[\"yes\",\"no\"]}",
                      KILN_CONSTRAINT_CHOICE, "[\"yes\",\"no\"]", "guided_choice");
    expect_constraint(CHAT, "{" MSGS ",\"guided_grammar\":\"root ::= \\\"a\\\"\"}",
                      KILN_CONSTRAINT_GRAMMAR, "root ::= \"a\"", "guided_grammar");
    expect_constraint(CHAT,
                      "{" MSGS ",\"guided_regex\":\"a\",\"guided_decoding_backend\":\"xgrammar\"}",
                      KILN_CONSTRAINT_REGEX, "a", "guided_regex");
    /* structured_outputs */
    expect_constraint(CHAT, "{" MSGS ",\"structured_outputs\":{\"json\":{\"enum\":[1,2]}}}",
                      KILN_CONSTRAINT_JSON_SCHEMA, "{\"enum\":[1,2]}", "structured_outputs.json");
    expect_constraint(CHAT, "{" MSGS ",\"structured_outputs\":{\"json\":\"{}\"}}",
                      KILN_CONSTRAINT_JSON_SCHEMA, "{}", "structured_outputs.json");
    expect_constraint(CMPL, "{\"prompt\":\"x\",\"structured_outputs\":{\"regex\":\"x+\"}}",
                      KILN_CONSTRAINT_REGEX, "x+", "structured_outputs.regex");
    expect_constraint(CHAT,
                      "{" MSGS ",\"structured_outputs\":{\"choice\":[\"a\"],"
                      "\"disable_fallback\":true,\"disable_any_whitespace\":false}}",
                      KILN_CONSTRAINT_CHOICE, "[\"a\"]", "structured_outputs.choice");
    expect_constraint(CHAT, "{" MSGS ",\"structured_outputs\":{\"grammar\":\"root ::= [0-9]\"}}",
                      KILN_CONSTRAINT_GRAMMAR, "root ::= [0-9]", "structured_outputs.grammar");
    expect_constraint(CHAT, "{" MSGS ",\"structured_outputs\":{\"json_object\":true}}",
                      KILN_CONSTRAINT_JSON_OBJECT, "", "structured_outputs.json_object");
    expect_constraint(CHAT, "{" MSGS ",\"structured_outputs\":{\"json_object\":false}}",
                      KILN_CONSTRAINT_NONE, NULL, NULL);
    /* json_whitespace: compact by default, indent on request (also for a grammar's %json) */
    static const struct {
        const char *body;
        enum kiln_grammar_ws ws;
    } wcases[] = {
        {"{" MSGS ",\"guided_json\":{}}", KILN_GRAMMAR_WS_COMPACT},
        {"{" MSGS ",\"guided_json\":{},\"json_whitespace\":\"compact\"}", KILN_GRAMMAR_WS_COMPACT},
        {"{" MSGS ",\"guided_json\":{},\"json_whitespace\":\"indent\"}", KILN_GRAMMAR_WS_INDENT},
        {"{" MSGS ",\"response_format\":{\"type\":\"json_object\"},\"json_whitespace\":\"indent\"}",
         KILN_GRAMMAR_WS_INDENT},
        {"{" MSGS ",\"guided_grammar\":\"root ::= [0-9]\",\"json_whitespace\":\"indent\"}",
         KILN_GRAMMAR_WS_INDENT},
    };
    for (size_t i = 0; i < sizeof wcases / sizeof wcases[0]; i++) {
        struct kiln_api_request r = parse_ok(CHAT, wcases[i].body);
        if (r.constraint.ws != wcases[i].ws)
            fail_msg("%s: ws %d, expected %d", wcases[i].body, (int)r.constraint.ws,
                     (int)wcases[i].ws);
        kiln_api_request_free(&r);
    }
}

static void constraint_errors(void **state)
{
    (void)state;
    /* unknown or malformed forms name the field; more than one form: the second one named */
#define RF "{" MSGS ",\"response_format\":"
    static const struct {
        enum kiln_api_kind kind;
        const char *body, *param;
    } cases[] = {
        {CHAT, RF "{\"type\":\"structural_tag\"}}", "response_format.type"},
        {CHAT, RF "{\"type\":3}}", "response_format.type"},
        {CHAT, RF "{}}", "response_format.type"},
        {CMPL, "{\"prompt\":\"x\",\"response_format\":\"json\"}", "response_format"},
        {CHAT, RF "{\"type\":\"json_schema\"}}", "response_format.json_schema"},
        {CHAT, RF "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":[1]}}}",
         "response_format.json_schema.schema"},
        {CHAT, RF "{\"type\":\"json_schema\",\"json_schema\":{\"name\":7,\"schema\":{}}}}",
         "response_format.json_schema.name"},
        {CHAT, RF "{\"type\":\"json_schema\",\"json_schema\":{\"strict\":\"yes\",\"schema\":{}}}}",
         "response_format.json_schema.strict"},
        {CHAT, "{" MSGS ",\"guided_json\":5}", "guided_json"},
        {CHAT, "{" MSGS ",\"guided_json\":\"{not json\"}", "guided_json"},
        {CHAT, "{" MSGS ",\"guided_json\":\"[1]\"}", "guided_json"},
        {CHAT, "{" MSGS ",\"guided_regex\":[\"a\"]}", "guided_regex"},
        {CHAT, "{" MSGS ",\"guided_regex\":\"\"}", "guided_regex"},
        {CHAT, "{" MSGS ",\"guided_choice\":[]}", "guided_choice"},
        {CHAT, "{" MSGS ",\"guided_choice\":\"a\"}", "guided_choice"},
        {CHAT, "{" MSGS ",\"guided_choice\":[\"a\",1]}", "guided_choice"},
        {CHAT, "{" MSGS ",\"guided_grammar\":{}}", "guided_grammar"},
        {CHAT, "{" MSGS ",\"guided_whitespace_pattern\":\" *\"}", "guided_whitespace_pattern"},
        {CHAT, "{" MSGS ",\"guided_decoding_backend\":1}", "guided_decoding_backend"},
        {CHAT, "{" MSGS ",\"guided_json\":{},\"json_whitespace\":\"pretty\"}", "json_whitespace"},
        {CHAT, "{" MSGS ",\"guided_json\":{},\"json_whitespace\":2}", "json_whitespace"},
        {CHAT, "{" MSGS ",\"guided_regex\":\"a\",\"json_whitespace\":\"indent\"}",
         "json_whitespace"},
        {CHAT, "{" MSGS ",\"guided_choice\":[\"a\"],\"json_whitespace\":\"indent\"}",
         "json_whitespace"},
        {CHAT, "{" MSGS ",\"json_whitespace\":\"indent\"}", "json_whitespace"},
        {CHAT, "{" MSGS ",\"structured_outputs\":[]}", "structured_outputs"},
        {CHAT, "{" MSGS ",\"structured_outputs\":{\"structural_tag\":\"x\"}}",
         "structured_outputs"},
        {CHAT, "{" MSGS ",\"structured_outputs\":{\"json_object\":1}}",
         "structured_outputs.json_object"},
        {CHAT, "{" MSGS ",\"structured_outputs\":{\"disable_fallback\":1}}", "structured_outputs"},
        {CHAT, RF "{\"type\":\"json_object\"},\"guided_regex\":\"a\"}", "guided_regex"},
        {CMPL, "{\"prompt\":\"x\",\"guided_choice\":[\"a\"],\"guided_grammar\":\"g\"}",
         "guided_grammar"},
        {CHAT, "{" MSGS ",\"guided_json\":{},\"structured_outputs\":{\"json\":{}}}",
         "structured_outputs.json"},
        {CHAT, "{" MSGS ",\"structured_outputs\":{\"regex\":\"a\",\"choice\":[\"a\"]}}",
         "structured_outputs.choice"},
    };
#undef RF
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        BAD(cases[i].kind, cases[i].body, 400, cases[i].param);
    /* text plus a guided form is one form */
    expect_constraint(CHAT,
                      "{" MSGS ",\"response_format\":{\"type\":\"text\"},\"guided_regex\":\"a\"}",
                      KILN_CONSTRAINT_REGEX, "a", "guided_regex");
}

static void tokenize_bodies(void **state)
{
    (void)state;
    struct kiln_api_tokenize t;
    struct kiln_api_error err;
    const char *b = "{\"prompt\":\"hello\"}";
    assert_int_equal(kiln_api_parse_tokenize(b, strlen(b), &t, &err), KILN_OK);
    assert_string_equal(t.prompt, "hello");
    assert_true(t.add_special_tokens);
    kiln_api_tokenize_free(&t);
    b = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"add_generation_prompt\":false}";
    assert_int_equal(kiln_api_parse_tokenize(b, strlen(b), &t, &err), KILN_OK);
    assert_non_null(t.messages_json);
    assert_false(t.add_special_tokens);
    assert_false(t.add_generation_prompt);
    kiln_api_tokenize_free(&t);
    b = "{\"text\":\"hello\"}";
    assert_int_not_equal(kiln_api_parse_tokenize(b, strlen(b), &t, &err), KILN_OK);
    assert_int_equal(err.status, 400);

    struct kiln_api_detokenize d;
    b = "{\"tokens\":[1,2,3]}";
    assert_int_equal(kiln_api_parse_detokenize(b, strlen(b), &lim, &d, &err), KILN_OK);
    assert_int_equal(d.n_ids, 3);
    kiln_api_detokenize_free(&d);
    b = "{\"tokens\":[1,2,1000]}";
    assert_int_not_equal(kiln_api_parse_detokenize(b, strlen(b), &lim, &d, &err), KILN_OK);
    assert_string_equal(err.param, "tokens");
    b = "{\"tokens\":\"1 2\"}";
    assert_int_not_equal(kiln_api_parse_detokenize(b, strlen(b), &lim, &d, &err), KILN_OK);
}

static void error_object(void **state)
{
    (void)state;
    struct kiln_api_error err;
    assert_int_equal(kiln_api_errorf(&err, 404, "model_not_found", "model", "no model '%s'", "x"),
                     KILN_ERR_INVALID);
    char *body = kiln_api_error_body(&err);
    assert_string_equal(body, "{\"error\":{\"message\":\"no model 'x'\",\"type\":"
                              "\"invalid_request_error\",\"param\":\"model\",\"code\":"
                              "\"model_not_found\"}}");
    free(body);
    assert_int_equal(kiln_api_errorf(&err, 503, NULL, NULL, "loading"), KILN_ERR_INTERNAL);
    body = kiln_api_error_body(&err);
    assert_string_equal(body, "{\"error\":{\"message\":\"loading\",\"type\":\"server_error\","
                              "\"param\":null,\"code\":null}}");
    free(body);
    kiln_api_errorf(&err, 429, "rate_limit_exceeded", NULL, "busy");
    assert_string_equal(err.type, "rate_limit_error");
}

static void response_shapes(void **state)
{
    (void)state;
    struct kiln_api_usage u = {.prompt_tokens = 6, .completion_tokens = 50};
    json_t *choices = json_pack("[{s:i,s:s,s:n,s:o}]", "index", 0, "text", "Paris", "logprobs",
                                "finish_reason", kiln_api_finish_reason(KILN_FINISH_LENGTH));
    json_t *o = kiln_api_envelope("cmpl-1", "text_completion", 1700000000, "m", choices, &u);
    char *s = json_dumps(o, JSON_COMPACT);
    assert_string_equal(s,
                        "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":"
                        "1700000000,\"model\":\"m\",\"system_fingerprint\":\"" KILN_API_FINGERPRINT
                        "\",\"choices\":[{\"index\":0,\"text\":"
                        "\"Paris\",\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":"
                        "{\"prompt_tokens\":6,\"completion_tokens\":50,\"total_tokens\":56}}");
    free(s);
    size_t len;
    char *sse = kiln_api_sse(o, &len);
    assert_true(!strncmp(sse, "data: {\"id\":\"cmpl-1\"", 20));
    assert_int_equal(len, strlen(sse));
    assert_string_equal(sse + len - 3, "}\n\n");
    free(sse);
    json_decref(o);

    u.cached_tokens = 4;
    o = kiln_api_envelope("c", "chat.completion.chunk", 1, "m", json_array(), &u);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(o, "usage"), "prompt_tokens_details"),
                         "cached_tokens")),
                     4);
    json_decref(o);

    json_t *f = kiln_api_finish_reason(KILN_FINISH_STOP);
    assert_string_equal(json_string_value(f), "stop");
    json_decref(f);
    f = kiln_api_finish_reason(KILN_FINISH_NONE);
    assert_true(json_is_null(f));
    json_decref(f);
    f = kiln_api_logprob_value(-INFINITY);
    assert_true(json_real_value(f) == -9999.0);
    json_decref(f);
}

static void logprob_formats(void **state)
{
    (void)state;
    struct kiln_api_token_logprob t = {.text = "\xc3\xa9t", .len = 3, .logprob = -0.5f, .n_top = 2};
    t.top_text[0] = "\xc3\xa9t";
    t.top_len[0] = 3;
    t.top_logprob[0] = -0.5f;
    t.top_text[1] = " x";
    t.top_len[1] = 2;
    t.top_logprob[1] = -1.25f;
    json_t *e = kiln_api_chat_logprob(&t);
    char *s = json_dumps(e, JSON_COMPACT);
    assert_string_equal(s,
                        "{\"token\":\"\xc3\xa9t\",\"logprob\":-0.5,\"bytes\":[195,169,116],"
                        "\"top_logprobs\":[{\"token\":\"\xc3\xa9t\",\"logprob\":-0.5,\"bytes\":"
                        "[195,169,116]},{\"token\":\" x\",\"logprob\":-1.25,\"bytes\":[32,120]}]}");
    free(s);
    json_decref(e);

    json_t *lp = kiln_api_completion_logprobs_new();
    kiln_api_completion_logprobs_add(lp, &t, 0);
    t.text = " x";
    t.len = 2;
    t.n_top = 0;
    kiln_api_completion_logprobs_add(lp, &t, 3);
    s = json_dumps(lp, JSON_COMPACT);
    assert_string_equal(s, "{\"tokens\":[\"\xc3\xa9t\",\" x\"],\"token_logprobs\":[-0.5,-0.5],"
                           "\"top_logprobs\":[{\"\xc3\xa9t\":-0.5,\" x\":-1.25},{}],"
                           "\"text_offset\":[0,3]}");
    free(s);
    json_decref(lp);
}

static void api_key(void **state)
{
    (void)state;
    assert_true(kiln_server_auth_ok(NULL, NULL));
    assert_true(kiln_server_auth_ok("anything", ""));
    assert_true(kiln_server_auth_ok("Bearer s3cret", "s3cret"));
    assert_true(kiln_server_auth_ok("bearer s3cret", "s3cret"));
    assert_false(kiln_server_auth_ok(NULL, "s3cret"));
    assert_false(kiln_server_auth_ok("Bearer s3cre", "s3cret"));
    assert_false(kiln_server_auth_ok("Bearer s3cret!", "s3cret"));
    assert_false(kiln_server_auth_ok("Bearer S3cret", "s3cret"));
    assert_false(kiln_server_auth_ok("s3cret", "s3cret"));
    assert_false(kiln_server_auth_ok("Bearer ", "s3cret"));
    assert_false(kiln_server_auth_ok("Basic s3cret", "s3cret"));
}

static void metrics_text(void **state)
{
    (void)state;
    struct kiln_metrics m;
    kiln_metrics_init(&m);
    kiln_metrics_request(&m, "/v1/completions", 200);
    kiln_metrics_request(&m, "/v1/completions", 200);
    kiln_metrics_request(&m, "/v1/completions", 400);
    m.prompt_tokens = 12;
    m.generation_tokens = 34;
    kiln_histogram_observe(&m.ttft, 0.003);
    kiln_histogram_observe(&m.ttft, 0.2);
    kiln_histogram_observe(&m.ttft, 1000.0);
    struct kiln_engine_stats st = {.running = 2,
                                   .waiting = 3,
                                   .kv_blocks_used = 10,
                                   .kv_blocks_total = 40,
                                   .kv_blocks_touched = 17,
                                   .kv_bytes = 5368709120};
    char *text = kiln_metrics_render(&m, &st, "my\"model", 0);
    assert_non_null(text);
    const char *want[] = {
        "kiln_requests_total{model_name=\"my\\\"model\",endpoint=\"/v1/"
        "completions\",status=\"200\"} 2\n",
        "kiln_requests_total{model_name=\"my\\\"model\",endpoint=\"/v1/"
        "completions\",status=\"400\"} 1\n",
        "kiln_prompt_tokens_total{model_name=\"my\\\"model\"} 12\n",
        "kiln_generation_tokens_total{model_name=\"my\\\"model\"} 34\n",
        "kiln_time_to_first_token_seconds_bucket{model_name=\"my\\\"model\",le=\"0.001\"} 0\n",
        "kiln_time_to_first_token_seconds_bucket{model_name=\"my\\\"model\",le=\"0.005\"} 1\n",
        "kiln_time_to_first_token_seconds_bucket{model_name=\"my\\\"model\",le=\"0.25\"} 2\n",
        "kiln_time_to_first_token_seconds_bucket{model_name=\"my\\\"model\",le=\"160\"} 2\n",
        "kiln_time_to_first_token_seconds_bucket{model_name=\"my\\\"model\",le=\"+Inf\"} 3\n",
        "kiln_time_to_first_token_seconds_count{model_name=\"my\\\"model\"} 3\n",
        "kiln_num_requests_waiting{model_name=\"my\\\"model\"} 3\n",
        "kiln_num_requests_running{model_name=\"my\\\"model\"} 2\n",
        "kiln_kv_blocks_used{model_name=\"my\\\"model\"} 10\n",
        "kiln_kv_cache_usage_ratio{model_name=\"my\\\"model\"} 0.25\n",
        "kiln_kv_blocks_touched{model_name=\"my\\\"model\"} 17\n",
        "kiln_kv_cache_bytes{model_name=\"my\\\"model\"} 5368709120\n",
        "# TYPE kiln_inter_token_latency_seconds histogram\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i])) fail_msg("missing: %s\nin:\n%s", want[i], text);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(completion_defaults_and_fields),
        cmocka_unit_test(completion_prompt_forms),
        cmocka_unit_test(chat_messages),
        cmocka_unit_test(bad_bodies),
        cmocka_unit_test(tokenize_bodies),
        cmocka_unit_test(error_object),
        cmocka_unit_test(response_shapes),
        cmocka_unit_test(logprob_formats),
        cmocka_unit_test(api_key),
        cmocka_unit_test(metrics_text),
        cmocka_unit_test(constraint_forms),
        cmocka_unit_test(constraint_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
