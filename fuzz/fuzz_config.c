/* libFuzzer target: config.json, hf_quant_config.json and generation_config.json parsing.
 * The input is up to three NUL-separated documents: config, quant config, generation config
 * (the later ones absent when there are fewer NULs). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    const char *parts[3] = {buf, NULL, NULL};
    size_t at = strlen(buf);
    for (int k = 1; k < 3 && at < size; k++) {
        parts[k] = buf + at + 1;
        at += 1 + strlen(parts[k]);
    }
    struct kiln_config cfg;
    struct kiln_error err;
    if (kiln_config_parse(parts[0], parts[1], parts[2], &cfg, &err) == KILN_OK) {
        KILN_ASSERT(cfg.hidden_size > 0 && cfg.n_heads > 0 && cfg.n_kv_heads > 0);
        KILN_ASSERT(cfg.n_heads % cfg.n_kv_heads == 0 && cfg.head_dim % 2 == 0);
        KILN_ASSERT(cfg.n_eos >= 0 && cfg.n_eos <= KILN_MAX_EOS);
        static const char *const modules[] = {"lm_head", "model.layers.0.self_attn.q_proj",
                                              "model.layers.31.mlp.down_proj", ""};
        for (int i = 0; i < 4; i++) (void)kiln_config_excluded(&cfg, modules[i]);
        (void)kiln_config_is_eos(&cfg, 128009);
        kiln_config_free(&cfg);
    }
    free(buf);
    return 0;
}
