/* Helpers shared by the subcommands: number parsing with range checks, id lists, and the
 * backend options every command that runs a model takes (--device, --kv-dtype, ...). */
#ifndef KILN_CLI_COMMON_H
#define KILN_CLI_COMMON_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend/backend.h"
#include "model/model.h"

bool kiln_cli_int(const char *s, int lo, int hi, int *out);
bool kiln_cli_float(const char *s, float lo, float hi, float *out);
bool kiln_cli_u64(const char *s, unsigned long long *out);
/* "791,6864,315" -> malloc'ed ids */
enum kiln_status kiln_cli_parse_ids(const char *s, int32_t **ids, int *n, struct kiln_error *err);

enum kiln_cli_device { KILN_CLI_DEVICE_AUTO, KILN_CLI_DEVICE_CPU, KILN_CLI_DEVICE_CUDA };

struct kiln_cli_backend {
    enum kiln_cli_device device;
    int kv_dtype; /* -1 auto (FP8 when the checkpoint has FP8 KV scales), else enum kiln_dtype */
    int block_size;
    int threads;
    float kv_fraction;
    bool no_graphs;
    bool batch_invariant;
};

enum {
    KILN_CLI_OPT_DEVICE = 1000,
    KILN_CLI_OPT_KV_DTYPE,
    KILN_CLI_OPT_BLOCK_SIZE,
    KILN_CLI_OPT_THREADS,
    KILN_CLI_OPT_KV_FRACTION,
    KILN_CLI_OPT_NO_GRAPHS,
    KILN_CLI_OPT_BATCH_INVARIANT,
};

#define KILN_CLI_BACKEND_OPTIONS                                                                   \
    {"device", required_argument, 0, KILN_CLI_OPT_DEVICE},                                         \
        {"kv-dtype", required_argument, 0, KILN_CLI_OPT_KV_DTYPE},                                 \
        {"block-size", required_argument, 0, KILN_CLI_OPT_BLOCK_SIZE},                             \
        {"threads", required_argument, 0, KILN_CLI_OPT_THREADS},                                   \
        {"kv-cache-fraction", required_argument, 0, KILN_CLI_OPT_KV_FRACTION},                     \
        {"no-cuda-graphs", no_argument, 0, KILN_CLI_OPT_NO_GRAPHS},                                \
    {                                                                                              \
        "batch-invariant", no_argument, 0, KILN_CLI_OPT_BATCH_INVARIANT                            \
    }

#define KILN_CLI_BACKEND_HELP                                                                      \
    "  --device auto|cpu|cuda  where to run (default auto: CUDA when a GPU is visible)\n"          \
    "  --kv-dtype auto|fp8|bf16  KV cache type (auto: FP8 when the checkpoint has FP8 KV)\n"       \
    "  --block-size N        positions per KV block (default 16)\n"                                \
    "  --threads N           CPU threads (default: all cores)\n"                                   \
    "  --kv-cache-fraction F share of free GPU memory for the KV cache (default 0.9)\n"            \
    "  --no-cuda-graphs      launch decode steps without CUDA graphs\n"                            \
    "  --batch-invariant     CUDA: results independent of the batch a request runs in (slower)\n"

/* A subcommand's command line: its long options, its short ones (getopt's string; 'h' is help),
 * its usage text, and a handler for each of its own options that returns false for a bad
 * value (ctx: the command's arguments). */
struct kiln_cli_command {
    const char *name;          /* messages read "kiln NAME: ..." */
    const char *shorts;        /* "" for none */
    const struct option *opts; /* a zero entry last; "help", maybe KILN_CLI_BACKEND_OPTIONS */
    void (*usage)(FILE *f);
    bool (*option)(int id, const char *arg, void *ctx);
};

#define KILN_CLI_GO_ON (-1)

/* The option loop of every subcommand, over argv (argv[0] the subcommand's name). --help
 * prints the usage on stdout and returns 0. An unknown option or a missing argument prints the
 * usage on stderr and returns 2, as does anything but exactly one positional argument; a bad
 * value is named in the message and returns 2. The backend options go to `backend` (NULL: the
 * command takes none), the others to cmd->option. Else *positional is the positional argument
 * and the result KILN_CLI_GO_ON. */
int kiln_cli_parse(const struct kiln_cli_command *cmd, int argc, char **argv, void *ctx,
                   struct kiln_cli_backend *backend, const char **positional);

void kiln_cli_backend_defaults(struct kiln_cli_backend *b);
/* Handles one of the KILN_CLI_BACKEND_OPTIONS; returns false when c is not one of them. */
bool kiln_cli_backend_option(int c, const char *arg, struct kiln_cli_backend *b, bool *ok);
/* Backend options from the flags and the model (kv dtype, block size, threads). */
void kiln_cli_backend_options(const struct kiln_cli_backend *b, const struct kiln_model *m,
                              struct kiln_backend_options *opt);
/* On a model loaded from an engine folder (kiln build), also refuses options beyond the
 * engine's limits, another KV dtype or block size, and a GPU of another compute capability. */
enum kiln_status kiln_cli_backend_create(const struct kiln_cli_backend *b,
                                         const struct kiln_model *m,
                                         const struct kiln_backend_options *opt,
                                         struct kiln_backend **out, struct kiln_error *err);

/* Limits a command asks for (any pointer may be NULL), 0 where the user set none. For a model
 * loaded from an engine folder each 0 becomes the engine's build setting and a larger value is
 * an error that names the engine's limit; for other models nothing changes. */
enum kiln_status kiln_cli_engine_limits(const struct kiln_model *m, int *max_batch_size,
                                        int *max_num_tokens, int *max_seq_len, int *max_input_len,
                                        struct kiln_error *err);

#endif
