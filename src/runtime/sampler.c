/* The sampler (see sampler.h for the algorithm, step by step). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

uint64_t kiln_splitmix64(uint64_t x)
{
    uint64_t z = x + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t kiln_sample_rng(uint64_t seed, uint64_t step)
{
    return kiln_splitmix64(seed ^ kiln_splitmix64(step));
}

/* Step 1's alternatives: the n largest raw logits (ties: smaller id), kept sorted in top_ids /
 * top_logprobs by insertion; most ids fail the first comparison, so this is ~O(vocab). */
static void top_alternatives(const float *x, int vocab, int n, float lse,
                             struct kiln_sample_out *out)
{
    int have = 0;
    float vals[KILN_MAX_LOGPROBS];
    for (int i = 0; i < vocab; i++) {
        float v = x[i];
        if (isnan(v)) continue;
        if (have == n && !(v > vals[n - 1])) continue; /* equal loses: larger id */
        int j = have < n ? have++ : n - 1;
        while (j > 0 && v > vals[j - 1]) {
            vals[j] = vals[j - 1];
            out->top_ids[j] = out->top_ids[j - 1];
            j--;
        }
        vals[j] = v;
        out->top_ids[j] = i;
    }
    out->n_top = have;
    for (int j = 0; j < have; j++) out->top_logprobs[j] = vals[j] - lse;
}

static int argmax(const float *x, int vocab)
{
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The k-th largest of a[0..n) (k in 1..n), reordering a: quickselect with a three-way partition
 * so runs of equal values (banned ids at -inf, flat logits) cost O(n), not O(n^2). */
static float kth_largest(float *a, int n, int k)
{
    int lo = 0, hi = n; /* the answer is at index k - 1 of a descending order of a[lo..hi) */
    int want = k - 1;
    for (;;) {
        if (hi - lo == 1) return a[lo];
        float x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
        float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        /* [lo, gt) > pivot, [gt, i) == pivot, [lt, hi) < pivot */
        int gt = lo, i = lo, lt = hi;
        while (i < lt) {
            float v = a[i];
            if (v > pivot) {
                a[i++] = a[gt];
                a[gt++] = v;
            } else if (v < pivot) {
                a[i] = a[--lt];
                a[lt] = v;
            } else {
                i++;
            }
        }
        if (want < gt)
            hi = gt;
        else if (want < lt)
            return pivot;
        else
            lo = lt;
    }
}

static int cmp_desc(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a < b) - (a > b);
}

/* Step 6: the threshold t of the smallest descending prefix whose sum reaches top_p. */
static float top_p_threshold(const float *prob, int vocab, float top_p, float *buf)
{
    int n = 0;
    for (int i = 0; i < vocab; i++)
        if (prob[i] > 0.0f) buf[n++] = prob[i];
    qsort(buf, (size_t)n, sizeof *buf, cmp_desc);
    double acc = 0.0;
    for (int j = 0; j < n; j++) {
        acc += buf[j];
        if (acc >= top_p) return buf[j];
    }
    return n ? buf[n - 1] : 0.0f;
}

static void process_logits(float *x, const float *logits, int vocab, const struct kiln_sampling *p)
{
    for (int i = 0; i < vocab; i++) x[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    float rp = p->repetition_penalty;
    for (int h = 0; h < p->n_hist; h++) {
        int32_t id = p->hist_ids[h];
        if (id < 0 || id >= vocab) continue;
        int32_t count = p->hist_out_count[h];
        float v = x[id];
        if (rp != 1.0f && (p->hist_in_prompt[h] || count > 0)) v = v > 0 ? v / rp : v * rp;
        v -= p->frequency_penalty * (float)count + p->presence_penalty * (float)(count > 0);
        x[id] = v;
    }
    for (int j = 0; j < p->n_bias; j++) {
        int32_t id = p->bias_ids[j];
        if (id >= 0 && id < vocab) x[id] += p->bias_vals[j];
    }
    for (int j = 0; j < p->n_banned; j++) {
        int32_t id = p->banned_ids[j];
        if (id >= 0 && id < vocab) x[id] = -INFINITY;
    }
    if (p->mask) {
        for (int i = 0; i < vocab; i++)
            if (!((p->mask[i >> 5] >> (i & 31)) & 1u)) x[i] = -INFINITY;
    }
}

/* Steps 4-8 on the processed logits x, which become the kept probabilities. */
static int draw(float *x, int vocab, const struct kiln_sampling *p, float *buf)
{
    float inv_t = 1.0f / p->temperature;
    for (int i = 0; i < vocab; i++) x[i] *= inv_t;
    if (p->top_k > 0 && p->top_k < vocab) {
        for (int i = 0; i < vocab; i++) buf[i] = x[i];
        float kth = kth_largest(buf, vocab, p->top_k);
        for (int i = 0; i < vocab; i++)
            if (!(x[i] >= kth)) x[i] = -INFINITY;
    }
    float mx = x[argmax(x, vocab)];
    if (mx == -INFINITY) return argmax(x, vocab); /* everything banned: no distribution left */
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) {
        float e = expf(x[i] - mx);
        x[i] = e;
        sum += e;
    }
    float inv_sum = (float)(1.0 / sum);
    float pmax = 0.0f;
    for (int i = 0; i < vocab; i++) {
        x[i] *= inv_sum;
        if (x[i] > pmax) pmax = x[i];
    }
    if (p->top_p < 1.0f) {
        float t = top_p_threshold(x, vocab, p->top_p, buf);
        for (int i = 0; i < vocab; i++)
            if (x[i] < t) x[i] = 0.0f;
    }
    if (p->min_p > 0.0f) {
        float t = p->min_p * pmax;
        for (int i = 0; i < vocab; i++)
            if (x[i] < t) x[i] = 0.0f;
    }
    double total = 0.0;
    int last = -1;
    for (int i = 0; i < vocab; i++) {
        if (x[i] > 0.0f) {
            total += x[i];
            last = i;
        }
    }
    double u = (double)(kiln_sample_rng(p->seed, p->step) >> 40) * 0x1p-24;
    double target = u * total, acc = 0.0;
    for (int i = 0; i < vocab; i++) {
        if (!(x[i] > 0.0f)) continue;
        acc += x[i];
        if (acc > target) return i;
    }
    return last >= 0 ? last : argmax(x, vocab);
}

void kiln_sample_row(const float *logits, int vocab, const struct kiln_sampling *p, float *scratch,
                     struct kiln_sample_out *out)
{
    /* Step 1 on the raw logits. */
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double s = 0.0;
    for (int i = 0; i < vocab; i++) s += expf(logits[i] - mx); /* exp(nan) = nan: not skipped */
    float lse = mx + (float)log(s);
    int n_top = p->n_logprobs < 0 ? 0 : p->n_logprobs;
    if (n_top > KILN_MAX_LOGPROBS) n_top = KILN_MAX_LOGPROBS;
    out->n_top = 0;
    if (n_top > 0) top_alternatives(logits, vocab, n_top, lse, out);

    float *x = scratch, *buf = scratch + vocab;
    process_logits(x, logits, vocab, p);
    int token =
        p->temperature < KILN_GREEDY_TEMPERATURE ? argmax(x, vocab) : draw(x, vocab, p, buf);
    out->token = token;
    out->logprob = logits[token] - lse;
}
