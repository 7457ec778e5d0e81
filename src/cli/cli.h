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

#endif
