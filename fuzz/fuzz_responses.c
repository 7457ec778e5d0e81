/* libFuzzer target for POST /v1/responses bodies (src/server/responses.c): arbitrary bytes are
 * either translated into a chat request that respects the limits, with the fields the response
 * echoes, or rejected with a 4xx error and a message; nothing may crash or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/responses.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct kiln_api_limits lim = {
        .vocab_size = 128256, .max_n = 16, .max_choices = 128, .max_stop = 16};
    struct kiln_api_request r;
    struct kiln_api_error err = {0};
    json_t *echo;
    if (kiln_api_parse_responses((const char *)data, size, &lim, &r, &echo, &err)) {
        if (err.status < 400 || err.status > 599 || !err.message[0]) abort();
        return 0;
    }
    if (r.kind != KILN_API_CHAT || !r.messages_json || r.n != 1 || !json_is_object(echo)) abort();
    json_decref(echo);
    kiln_api_request_free(&r);
    return 0;
}
