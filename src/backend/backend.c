#include "backend.h"

void kiln_backend_options_default(struct kiln_backend_options *opt)
{
    *opt = (struct kiln_backend_options){
        .kv_dtype = KILN_DTYPE_BF16,
        .block_size = 16,
        .n_blocks = 0,
        .kv_memory_fraction = 0.90f,
        .max_tokens = 2048,
        .max_seqs = 8,
        .max_seq_len = 2560,
        .n_threads = 0,
        .device = 0,
        .cuda_graphs = true,
    };
}
