/* Small helpers over jansson shared by the config reader and the API request parser. */
#ifndef KILN_CORE_JSON_H
#define KILN_CORE_JSON_H

#include <jansson.h>

/* "an object", "a string", "an integer", "a number", "a boolean", "null": for messages such as
 * "'max_tokens' must be an integer, got a string". */
const char *kiln_json_type_name(const json_t *v);

#endif
