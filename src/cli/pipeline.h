/* What `kiln convert` and `kiln build` share: writing a model folder (fused weights with a
 * progress bar and checksums, config and tokenizer files, hf_quant_config.json under kiln's
 * names), interruption (Ctrl-C leaves nothing behind), and size arguments. */
#ifndef KILN_CLI_PIPELINE_H
#define KILN_CLI_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "model/format.h"
#include "model/model.h"

#define KILN_CLI_MAX_FILES 16

/* SIGINT, SIGTERM and SIGHUP from now on only set a flag, which every write checks: the
 * command then deletes its temporary folder and exits with 130. For tests,
 * KILN_TEST_INTERRUPT_AT_BYTES=N raises SIGINT once N bytes of weights are written. */
void kiln_cli_catch_interrupts(void);
bool kiln_cli_interrupted(void);

/* A folder being written: its files' records (for engine.json) and the temporary folder. */
struct kiln_cli_output {
    struct kiln_outdir dir;
    struct kiln_file_record files[KILN_CLI_MAX_FILES];
    int n_files;
    double write_seconds;
    uint64_t bytes;
};

/* Fails when out names the same folder as src (--force would delete the input) or exists
 * without force: checked before any long work. */
enum kiln_status kiln_cli_check_output(const char *src, const char *out, bool force,
                                       struct kiln_error *err);

/* Into out->dir (begun): model.safetensors (kiln_write_fused with orders of fo, progress on a
 * terminal), config.json, generation_config.json and tokenizer files of src_dir when present,
 * and hf_quant_config.json describing m under kiln's names (kv_fp8: FP8 KV cache). */
enum kiln_status kiln_cli_write_model(const struct kiln_model *m, const char *src_dir,
                                      const struct kiln_fused_options *fo, bool kv_fp8,
                                      struct kiln_cli_output *out, struct kiln_error *err);
/* Writes text as name into the folder (atomically), recorded unless rec is false. */
enum kiln_status kiln_cli_write_text(struct kiln_cli_output *out, const char *name,
                                     const char *text, bool rec, struct kiln_error *err);

/* The exit status of kiln convert / build after st: 0; 130 when interrupted (out was not
 * written); else 1, with err's message. */
int kiln_cli_pipeline_exit(const char *cmd, const char *out, enum kiln_status st,
                           const struct kiln_error *err);

/* "12GiB", "12.5G" (binary), "13GB" (decimal), "800MiB", plain bytes. */
bool kiln_cli_size(const char *s, uint64_t *out);
/* Gibibytes, for messages. */
double kiln_cli_gib(uint64_t bytes);

#endif
