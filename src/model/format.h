/* The folders kiln writes: kiln checkpoints (`kiln convert`) and engines (`kiln build`).
 *
 * A kiln checkpoint is hardware-independent: config.json (+ hf_quant_config.json,
 * generation_config.json, tokenizer files) as in the Hugging Face folder it came from, one
 * model.safetensors with q|k|v and gate|up fused under kiln's names
 *   model.layers.N.self_attn.qkv_proj.{weight,weight_scale,input_scale}   ((H + 2 Hkv) Dh, d)
 *   model.layers.N.mlp.gate_up_proj.{weight,weight_scale,input_scale}     (2 f, d)
 *   model.layers.N.self_attn.{k_scale,v_scale}                            FP8 KV cache
 * (FP8 groups requantized to their largest weight scale, exactly kiln_linear_fp8_rows; the
 * other tensors under their Hugging Face names), and kiln.json saying what was done.
 *
 * An engine is the same plus what one GPU and one set of limits need: the fused rows in the
 * order the CUDA kernels read (kiln_cuda_natural_row), the build settings the runtime enforces,
 * the memory plan, the GPU it was built on and the cuBLASLt algorithms timed there, and every
 * file's size and checksum, all in engine.json.
 *
 * Both are written into OUT.tmp-PID and renamed to OUT when complete, so OUT never names a
 * half-written folder. */
#ifndef KILN_MODEL_FORMAT_H
#define KILN_MODEL_FORMAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/thread.h"
#include "model.h"
#include "safetensors.h"

#define KILN_CHECKPOINT_JSON    "kiln.json"
#define KILN_ENGINE_JSON        "engine.json"
#define KILN_WEIGHTS_FILE       "model.safetensors"
#define KILN_CHECKPOINT_VERSION 1
#define KILN_ENGINE_VERSION     1
#define KILN_FUSED_QKV          "self_attn.qkv_proj"
#define KILN_FUSED_GATE_UP      "mlp.gate_up_proj"

/* ---- checksums ----
 * XXH3-64 as a tree so every core can verify a large file at once: the XXH3-64 of each
 * KILN_HASH_CHUNK bytes, then the XXH3-64 of those digests as little-endian u64s (an empty
 * file: of no bytes). Verifying an 8.5 GB engine from the page cache costs well under a second
 * on 16 cores; the digest guards against truncated copies and flipped bits, not attackers. */
#define KILN_HASH_CHUNK (64u << 20)

struct kiln_hasher;
struct kiln_hasher *kiln_hasher_create(void); /* NULL when out of memory */
enum kiln_status kiln_hasher_update(struct kiln_hasher *h, const void *data, size_t n,
                                    struct kiln_error *err);
uint64_t kiln_hasher_digest(struct kiln_hasher *h); /* of everything so far */
uint64_t kiln_hasher_bytes(const struct kiln_hasher *h);
void kiln_hasher_free(struct kiln_hasher *h);
/* The same digest of bytes in memory, chunks hashed by the pool (NULL: this thread). */
enum kiln_status kiln_hash_bytes(const void *data, size_t n, struct kiln_pool *pool,
                                 uint64_t *digest, struct kiln_error *err);
enum kiln_status kiln_hash_file(const char *path, struct kiln_pool *pool, uint64_t *digest,
                                uint64_t *size, struct kiln_error *err);

/* One file of a written folder, as engine.json lists it. */
struct kiln_file_record {
    char name[64];
    uint64_t bytes;
    uint64_t xxh3;
};

/* ---- output folders ---- */

struct kiln_outdir {
    char out[4096]; /* the final name */
    char tmp[4096]; /* OUT.tmp-PID, where everything is written */
    bool open;
};

/* Fails when OUT exists and is not an empty folder, unless force (and then when it is not a
 * folder): the check kiln_outdir_begin makes, for commands to make before long work. */
enum kiln_status kiln_outdir_check(const char *out, bool force, struct kiln_error *err);
/* Checks OUT as above, removes what killed runs left (OUT.tmp-PID of a process that is gone),
 * and creates OUT.tmp-PID. */
enum kiln_status kiln_outdir_begin(struct kiln_outdir *o, const char *out, bool force,
                                   struct kiln_error *err);
/* dst = tmp + "/" + name */
enum kiln_status kiln_outdir_path(const struct kiln_outdir *o, const char *name, char *dst,
                                  size_t cap, struct kiln_error *err);
/* Renames the finished folder to OUT (an existing OUT is moved aside first and deleted after). */
enum kiln_status kiln_outdir_commit(struct kiln_outdir *o, struct kiln_error *err);
/* Deletes the temporary folder (after a failure or an interruption); no-op once committed. */
void kiln_outdir_abort(struct kiln_outdir *o);

/* Copies src to dst (atomically) and records its size and checksum under name (may be NULL). */
enum kiln_status kiln_copy_file(const char *src, const char *dst, const char *name,
                                struct kiln_file_record *rec, struct kiln_error *err);

/* ---- fused weights (both formats) ---- */

struct kiln_fused_options {
    int qkv_order, gate_up_order; /* enum kiln_row_order of the fused rows; 0: natural */
    bool kv_scales;               /* write k_scale / v_scale (FP8 KV cache) */
    struct kiln_pool *pool;       /* fills rows in parallel; NULL: this thread */
    kiln_st_sink_fn sink;         /* sees every byte written (progress, checksum); may be NULL */
    void *sink_ctx;
};

/* Writes m's weights under kiln's names into one safetensors file at path. Fails when an
 * unquantized group mixes dtypes. Linears already stored as asked are written from their
 * bytes; the rest row by row, never the whole model in memory. */
enum kiln_status kiln_write_fused(const struct kiln_model *m, const char *path,
                                  const struct kiln_fused_options *o, struct kiln_error *err);
/* Bytes kiln_write_fused writes for m (header included), for a progress bar. */
uint64_t kiln_fused_bytes(const struct kiln_model *m, bool kv_scales);

/* ---- kiln checkpoints ---- */

/* Checks DIR/kiln.json: format "kiln-checkpoint" and a version this kiln reads. */
enum kiln_status kiln_checkpoint_check(const char *dir, struct kiln_error *err);

/* ---- engines ---- */

/* A cuBLASLt algorithm timed for one GEMM shape of the prefill path:
 *   D (N, M) f32 = x (N, K) . W (M, K)^T
 * N is the largest token count of the bucket it was timed for: a step of n tokens uses the
 * entry of the smallest N >= n. */
struct kiln_gemm_algo {
    int M, N, K;
    bool fp8;           /* e4m3 inputs, else bf16 */
    uint64_t algo[8];   /* cublasLtMatmulAlgo_t, opaque (valid for the recorded cuBLASLt + GPU) */
    int id;             /* CUBLASLT_ALGO_CONFIG_ID, for reading */
    float us;           /* its time */
    float heuristic_us; /* the time of cuBLASLt's first heuristic choice */
};

struct kiln_engine_meta {
    int format_version;
    char kiln_version[32];
    /* build settings: the runtime's defaults and its ceilings */
    int max_batch_size, max_input_len, max_seq_len, max_num_tokens, tokens_per_block;
    enum kiln_dtype kv_dtype;
    int qkv_order, gate_up_order; /* row orders in model.safetensors */
    /* the GPU it was built on (cc_major 0: none; GEMMs then use cuBLASLt's heuristic) */
    char gpu_name[128];
    int cc_major, cc_minor;
    uint64_t gpu_memory;
    int cublaslt_version;
    struct kiln_gemm_algo *gemms; /* [n_gemms] */
    int n_gemms;
    struct kiln_file_record *files; /* [n_files], every file of the folder but engine.json */
    int n_files;
};

/* Reads DIR/engine.json and checks the format version and every listed file's size, then its
 * checksum, with messages that say what to do ("rebuild with kiln build ..."). */
enum kiln_status kiln_engine_meta_load(const char *dir, struct kiln_engine_meta **out,
                                       struct kiln_error *err);
/* engine.json text -> meta (no file checks; the fuzz and unit-test entry point); dir names the
 * engine in messages. */
enum kiln_status kiln_engine_meta_parse(const char *json, size_t len, const char *dir,
                                        struct kiln_engine_meta **out, struct kiln_error *err);
/* meta -> engine.json's object; extra's keys (model summary, memory plan, ...) are added. */
json_t *kiln_engine_meta_json(const struct kiln_engine_meta *e, json_t *extra);
void kiln_engine_meta_free(struct kiln_engine_meta *e);

/* The recorded algorithm for a GEMM of n tokens (see struct kiln_gemm_algo), or NULL. */
const struct kiln_gemm_algo *kiln_engine_gemm_find(const struct kiln_engine_meta *e, int M, int n,
                                                   int K, bool fp8);
/* An engine built on a GPU runs only on GPUs of the same compute capability. */
enum kiln_status kiln_engine_check_gpu(const struct kiln_engine_meta *e, const char *dir,
                                       int cc_major, int cc_minor, const char *gpu_name,
                                       struct kiln_error *err);
const char *kiln_row_order_name(int order);

#endif
