/* kiln: convert, build and serve FP8 Llama models. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "core/numeric.h"

static int cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("kiln %s\n", KILN_VERSION);
    return 0;
}

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"version", cmd_version, "print the version"},
    {"convert", kiln_cmd_convert, "Hugging Face checkpoint -> kiln checkpoint (--fp8 quantizes)"},
    {"build", kiln_cmd_build, "checkpoint -> engine for this GPU and these limits"},
    {"serve", kiln_cmd_serve, "OpenAI-compatible HTTP server for a model"},
    {"bench", kiln_cmd_bench, "benchmark: --throughput under load, else latency"},
    {"generate", kiln_cmd_generate, "generate tokens from a prompt (greedy or sampled)"},
    {"chat", kiln_cmd_chat, "a conversation on the terminal (the model's chat template)"},
    {"mkmodel", kiln_cmd_mkmodel, "write a random-weight test checkpoint (HF ModelOpt FP8)"},
    {"tokenize", kiln_cmd_tokenize, "text on stdin -> token ids (JSON)"},
    {"template", kiln_cmd_template, "render a chat template for messages on stdin"},

};

static void usage(FILE *f)
{
    fprintf(f,
            "kiln %s: LLM inference engine and OpenAI-compatible server\n\n"
            "usage: kiln COMMAND [options]   (kiln COMMAND --help for its options)\n\n",
            KILN_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    kiln_numeric_init();
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) return cmd_version(0, NULL);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "kiln: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
