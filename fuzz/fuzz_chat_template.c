/* libFuzzer target: the chat-template compiler and renderer. The input is a template source,
 * optionally followed by a NUL and a messages JSON array; a template that compiles is rendered
 * with those messages (or a fixed conversation) with and without add_generation_prompt and with
 * tools. Any outcome but a crash, a leak or a hang is fine. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/jinja.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fixed_messages[] =
    "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi "
    "\\u00e9\\ud83d\\ude00\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":"
    "\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1,\"b\":[true,2.5]}}}]},"
    "{\"role\":\"tool\",\"content\":\"42\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\","
    "\"text\":\"x\"}]}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *)data;
    size_t src_len = size;
    const char *nul = memchr(data, 0, size);
    json_t *msgs = NULL;
    if (nul) {
        src_len = (size_t)(nul - src);
        json_error_t je;
        msgs = json_loadb(nul + 1, size - src_len - 1, JSON_DECODE_ANY, &je);
    }
    if (!msgs) msgs = json_loads(fixed_messages, 0, NULL);
    struct kiln_jinja *t;
    struct kiln_error err = {0};
    if (kiln_jinja_compile(src, src_len, &t, &err) == KILN_OK) {
        for (int variant = 0; variant < 3; variant++) {
            json_t *vars = json_object();
            json_object_set(vars, "messages", msgs);
            json_object_set_new(vars, "add_generation_prompt", json_boolean(variant != 1));
            json_object_set_new(vars, "bos_token", json_string("<s>"));
            json_object_set_new(vars, "tools",
                                variant == 2 ? json_loads("[{\"type\":\"function\",\"function\":{"
                                                          "\"name\":\"f\",\"parameters\":{}}}]",
                                                          0, NULL)
                                             : json_null());
            char *out;
            size_t len;
            if (kiln_jinja_render(t, vars, &out, &len, &err) == KILN_OK) free(out);
            json_decref(vars);
        }
        kiln_jinja_free(t);
    }
    json_decref(msgs);
    return 0;
}
