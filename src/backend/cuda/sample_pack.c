/* The host side of the GPU sampler (sample.cu): struct kiln_sampling rows -> the one argument
 * buffer the kernel reads, so a step copies its sampling parameters to the device at once. */
#include <stddef.h>
#include <string.h>

#include "backend/backend.h"
#include "kernels.h"
#include "runtime/sampler.h"

_Static_assert(KILN_CUDA_MAX_LOGPROBS == KILN_MAX_LOGPROBS, "logprob limits differ");
_Static_assert(sizeof(struct kiln_cuda_sample_out) == sizeof(struct kiln_sample_out) &&
                   offsetof(struct kiln_cuda_sample_out, logprob) ==
                       offsetof(struct kiln_sample_out, logprob) &&
                   offsetof(struct kiln_cuda_sample_out, n_top) ==
                       offsetof(struct kiln_sample_out, n_top) &&
                   offsetof(struct kiln_cuda_sample_out, top_ids) ==
                       offsetof(struct kiln_sample_out, top_ids) &&
                   offsetof(struct kiln_cuda_sample_out, top_logprobs) ==
                       offsetof(struct kiln_sample_out, top_logprobs),
               "the kernel's results must be copyable as struct kiln_sample_out");

/* History entries the kernel needs: none when no penalty is on (then they change nothing). */
static int hist_entries(const struct kiln_sampling *p)
{
    bool on = p->repetition_penalty != 1.0f || p->frequency_penalty != 0.0f ||
              p->presence_penalty != 0.0f;
    return on && p->n_hist > 0 ? p->n_hist : 0;
}

static int entries(int n)
{
    return n > 0 ? n : 0;
}

static size_t mask_words(const struct kiln_sampling *p, int vocab)
{
    return p->mask ? (size_t)(vocab + 31) / 32 : 0;
}

static size_t list_words(const struct kiln_sampling *p, int vocab)
{
    return (size_t)hist_entries(p) * KILN_CUDA_SAMPLE_HIST_WORDS +
           (size_t)entries(p->n_bias) * KILN_CUDA_SAMPLE_BIAS_WORDS +
           (size_t)entries(p->n_banned) * KILN_CUDA_SAMPLE_BANNED_WORDS + mask_words(p, vocab);
}

size_t kiln_cuda_sample_args_bytes(const struct kiln_sampling *params, int n, int vocab)
{
    size_t words = 0;
    for (int r = 0; r < n; r++) words += list_words(&params[r], vocab);
    return (size_t)n * sizeof(struct kiln_cuda_sample_row) + words * sizeof(int32_t);
}

void kiln_cuda_sample_pack(const struct kiln_sampling *params, int n, int vocab, void *buf)
{
    struct kiln_cuda_sample_row *rows = buf;
    int32_t *words = (int32_t *)(rows + n);
    int32_t at = 0; /* the caller keeps the buffer under 2 GiB: offsets fit */
    for (int r = 0; r < n; r++) {
        const struct kiln_sampling *p = &params[r];
        int n_logprobs = p->n_logprobs < 0 ? 0 : p->n_logprobs;
        struct kiln_cuda_sample_row *w = &rows[r];
        *w = (struct kiln_cuda_sample_row){
            .seed = p->seed,
            .step = p->step,
            .temperature = p->temperature,
            .top_p = p->top_p,
            .min_p = p->min_p,
            .presence_penalty = p->presence_penalty,
            .frequency_penalty = p->frequency_penalty,
            .repetition_penalty = p->repetition_penalty,
            .greedy =
                p->temperature<KILN_GREEDY_TEMPERATURE, .top_k = p->top_k, .n_logprobs = n_logprobs>
                        KILN_MAX_LOGPROBS
                    ? KILN_MAX_LOGPROBS
                    : n_logprobs,
            .n_hist = hist_entries(p),
            .n_bias = entries(p->n_bias),
            .n_banned = entries(p->n_banned),
        };
        w->hist = at;
        for (int h = 0; h < w->n_hist; h++, at += KILN_CUDA_SAMPLE_HIST_WORDS) {
            words[at] = p->hist_ids[h];
            words[at + 1] = p->hist_out_count[h];
            words[at + 2] = p->hist_in_prompt[h] != 0;
            words[at + 3] = 0;
        }
        w->bias = at;
        for (int j = 0; j < w->n_bias; j++, at += KILN_CUDA_SAMPLE_BIAS_WORDS) {
            words[at] = p->bias_ids[j];
            memcpy(&words[at + 1], &p->bias_vals[j], sizeof(float));
            words[at + 2] = 0;
        }
        w->banned = at;
        for (int j = 0; j < w->n_banned; j++, at += KILN_CUDA_SAMPLE_BANNED_WORDS) {
            words[at] = p->banned_ids[j];
            words[at + 1] = 0;
        }
        w->mask = -1;
        if (p->mask) {
            size_t m = mask_words(p, vocab);
            w->mask = at;
            memcpy(&words[at], p->mask, m * sizeof *words);
            at += (int32_t)m;
        }
    }
}
