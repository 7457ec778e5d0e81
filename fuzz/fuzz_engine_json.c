/* libFuzzer target: engine.json (model/format.h), the file an engine folder is trusted by. A
 * parsed engine must satisfy the limits' invariants and survive a write/parse round trip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kiln_engine_meta *e = NULL, *again = NULL;
    struct kiln_error err;
    if (kiln_engine_meta_parse((const char *)data, size, "ENGINE", &e, &err) != KILN_OK) return 0;
    KILN_ASSERT(e->max_batch_size >= 1 && e->max_num_tokens >= e->max_batch_size);
    KILN_ASSERT(e->max_input_len < e->max_seq_len && e->tokens_per_block >= 1);
    KILN_ASSERT(e->n_files >= 1 && e->n_gemms >= 0);
    for (int i = 0; i < e->n_files; i++)
        KILN_ASSERT(e->files[i].name[0] && !strchr(e->files[i].name, '/'));
    for (int i = 0; i < e->n_gemms; i++) {
        const struct kiln_gemm_algo *g = &e->gemms[i];
        KILN_ASSERT(kiln_engine_gemm_find(e, g->M, g->N, g->K, g->fp8) != NULL);
    }
    (void)kiln_engine_check_gpu(e, "ENGINE", 8, 9, "GPU", &err);
    json_t *root = kiln_engine_meta_json(e, NULL);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    KILN_ASSERT(text);
    KILN_ASSERT(kiln_engine_meta_parse(text, strlen(text), "ENGINE", &again, &err) == KILN_OK);
    KILN_ASSERT(again->max_batch_size == e->max_batch_size && again->n_files == e->n_files &&
                again->n_gemms == e->n_gemms && again->kv_dtype == e->kv_dtype &&
                again->cc_major == e->cc_major && again->qkv_order == e->qkv_order);
    for (int i = 0; i < e->n_gemms; i++)
        KILN_ASSERT(!memcmp(again->gemms[i].algo, e->gemms[i].algo, sizeof e->gemms[i].algo));
    free(text);
    kiln_engine_meta_free(again);
    kiln_engine_meta_free(e);
    return 0;
}
