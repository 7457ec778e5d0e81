/* kiln subcommands: each is int kiln_cmd_NAME(int argc, char **argv) with argv[0] = NAME,
 * returning the process exit status (0 ok, 1 runtime error, 2 usage error). */
#ifndef KILN_CLI_CLI_H
#define KILN_CLI_CLI_H

int kiln_cmd_convert(int argc, char **argv);
int kiln_cmd_build(int argc, char **argv);
int kiln_cmd_generate(int argc, char **argv);
int kiln_cmd_chat(int argc, char **argv);
int kiln_cmd_serve(int argc, char **argv);
int kiln_cmd_bench(int argc, char **argv);
int kiln_cmd_mkmodel(int argc, char **argv);
int kiln_cmd_tokenize(int argc, char **argv);
int kiln_cmd_template(int argc, char **argv);

/* bench_latency.c: the latency half of `kiln bench` (decode, TTFT, batched decode). */
int kiln_bench_latency(int argc, char **argv);

/* chat_template_llama31.c: Llama 3.1 Instruct's chat template (kiln mkmodel's demo model). */
extern const char kiln_llama31_chat_template[];

/* bench_constrained.c: the latency benchmark's decode under a JSON Schema (--json-schema). */
#include <stdbool.h>

#include "backend/backend.h"
struct bench_grammar;
/* schema: a file or "builtin"; n rows; vocab: the model's. */
enum kiln_status bench_grammar_create(const char *schema, const char *tok_dir, int n, int vocab,
                                      struct bench_grammar **out, struct kiln_error *err);
void bench_grammar_free(struct bench_grammar *b);
enum kiln_status bench_grammar_reset(struct bench_grammar *b, struct kiln_error *err);
/* Fills the masks of rows 0..n into sp[i].mask (between forward and sample). */
void bench_grammar_masks(struct bench_grammar *b, struct kiln_sampling *sp, int n);
/* Accepts the sampled tokens; a complete value starts a new matcher. */
enum kiln_status bench_grammar_accept(struct bench_grammar *b, const struct kiln_sample_out *so,
                                      int n, struct kiln_error *err);
double bench_grammar_mask_us(const struct bench_grammar *b); /* per row, since the reset */
long bench_grammar_values(const struct bench_grammar *b);    /* completed since the reset */

#endif
