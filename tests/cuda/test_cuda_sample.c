/* The GPU sampler (src/backend/cuda/sample.cu) against its CPU twin kiln_sample_row, on 2400
 * rows of random logits (vocab 128256, 1000 and 37; normal, very peaked, flat, tied, NaN, -inf,
 * wide and all-banned rows) with random parameters, a third of them with an allowed-token mask
 * (structured output: dense, sparse, one token or none allowed), then its time for 256 rows and 1
 * row of 128256. Prints a line per check and exits non-zero on any failure; exits 77 (ctest:
 * skipped) when no GPU is visible.
 *
 * What must agree, and why:
 *  - greedy tokens and the top alternatives (ids, in order): both sides compare the same floats
 *    (the kernel repeats the CPU's float operations without FMA contraction) -> identical. So are
 *    the processed logits and the top-k threshold.
 *  - sampled tokens: p_i = exp(x_i - max) / sum differs by a few ulps: CUDA's expf is within
 *    2 ulp, glibc's within 1, plus the two roundings of p = e * (1 / sum) and 1 ulp of 1 / sum
 *    (the double sums run in another order): |dp| / p <= EPS_P = 6e-7. A token may differ only
 *    where that can matter, and the test marks such rows "exempt":
 *      - the draw: where u*S lies within DRAW_SIGMAS standard deviations of the chosen id's
 *        cumulative boundaries. A rounding error common to all p (1 / sum, a bias of expf)
 *        scales S and u*S alike and cancels; what moves a boundary relative to u*S is the ids'
 *        own errors, independent of their position: sd <= EPS_P * sqrt(sum of kept p^2).
 *        (A fixed 1e-5 * S would exempt every near-flat row of 128K ids: p ~ 8e-6 each.)
 *      - thresholds: p within MARGIN_P = 3 * EPS_P (relative) of the top-p or min-p threshold,
 *        or the top-p prefix sum within MARGIN_P of top_p at the threshold, where putting those
 *        ids on the other side (recomputed here) changes the token.
 *    The test recomputes the reference's intermediate values (its own twin of steps 2-8, whose
 *    token must equal kiln_sample_row's on every row), prints the exempt rows, and fails when
 *    more than 0.5% of the rows are exempt or any other row's token differs.
 *  - log-probabilities within 1e-4 absolute (the kernel sums exp in float per thread: relative
 *    error <= ~3e-5 over 126 terms).
 *  - the logits are bit for bit unchanged after the kernel (it applies penalties in place and
 *    restores them). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cuda/kernels.h"
#include "ck.h"
#include "runtime/sampler.h"

#define EPS_P       6e-7 /* |dp| / p between the backends */
#define DRAW_SIGMAS 8.0
#define MARGIN_P    (3 * EPS_P) /* a p against a threshold (relative), a prefix sum vs top_p */
#define LP_TOL      1e-4

static int failures;

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* ---- random numbers ---- */

static uint64_t rng_counter = 12345;
static uint64_t next_u64(void)
{
    return kiln_splitmix64(rng_counter++);
}
static double unit(void)
{
    return (double)(next_u64() >> 11) * 0x1p-53;
}
static int below(int n)
{
    return (int)(next_u64() % (uint64_t)n);
}
static float gauss(void)
{
    double a = unit(), b = unit();
    return (float)(sqrt(-2.0 * log(a + 0x1p-60)) * cos(6.283185307179586 * b));
}

/* ---- rows ---- */

enum row_kind { R_NORMAL, R_PEAKED, R_FLAT, R_TIES, R_NAN, R_NEG_INF, R_WIDE, R_BANNED, R_KINDS };

static enum row_kind pick_kind(void)
{
    int r = below(20);
    return r < 8 ? R_NORMAL : (enum row_kind)(1 + (r - 8) % (R_KINDS - 1));
}

static void make_logits(float *l, int vocab, enum row_kind kind)
{
    static const float sigmas[3] = {1.0f, 2.5f, 5.0f};
    float sigma = sigmas[below(3)];
    for (int i = 0; i < vocab; i++) l[i] = sigma * gauss();
    switch (kind) {
    case R_PEAKED: {
        int a = below(vocab);
        l[a] += 30.0f;
        if (below(3) == 0) l[below(vocab)] = l[a]; /* two equal peaks: the smaller id wins */
        break;
    }
    case R_FLAT: { /* all equal, or three levels 0.01 apart: ties everywhere */
        bool levels = below(2);
        for (int i = 0; i < vocab; i++) l[i] = levels ? 0.01f * (float)below(3) : 1.5f;
        break;
    }
    case R_TIES:
        for (int i = 0; i < vocab; i++) l[i] = roundf(l[i] * 4.0f) / 4.0f;
        break;
    case R_NAN:
        for (int i = 0; i < vocab; i++)
            if (below(50) == 0) l[i] = NAN;
        break;
    case R_NEG_INF:
        for (int i = 0; i < vocab; i++)
            if (below(10) < 3) l[i] = -INFINITY;
        break;
    case R_WIDE:
        for (int i = 0; i < vocab; i++) l[i] = (float)(unit() * 120.0 - 60.0);
        break;
    default:
        break;
    }
}

/* One row's parameters and the lists they point into. */
struct row_params {
    struct kiln_sampling p;
    int32_t *hist_ids, *hist_count, *bias_ids, *banned;
    uint32_t *mask;
    uint8_t *hist_prompt;
    float *bias_vals;
};

static void make_params(struct row_params *rp, int vocab, bool all_banned, uint8_t *mark)
{
    static const float temps[4] = {0.0f, 0.3f, 1.0f, 1.7f};
    static const float top_ps[4] = {1.0f, 0.9f, 0.5f, 1e-6f};
    static const int n_lps[3] = {0, 5, 20};
    const int top_ks[4] = {0, 1, 40, vocab + 5};
    struct kiln_sampling *p = &rp->p;
    *p = (struct kiln_sampling){
        .temperature = temps[below(4)],
        .top_k = top_ks[below(4)],
        .top_p = top_ps[below(4)],
        .min_p = below(2) ? 0.05f : 0.0f,
        .seed = next_u64(),
        .step = (uint64_t)below(5000),
        .repetition_penalty = 1.0f,
        .n_logprobs = n_lps[below(3)],
    };
    if (below(2)) {
        static const float pres[3] = {0.0f, 0.6f, -0.4f}, freq[2] = {0.0f, 0.3f};
        static const float rep[3] = {1.0f, 1.25f, 0.85f};
        p->presence_penalty = pres[below(3)];
        p->frequency_penalty = freq[below(2)];
        p->repetition_penalty = rep[below(3)];
    }
    /* history: distinct ids (the engine's contract), some outside the vocabulary; now and then
     * longer than a block (1024) */
    int hist_cap = below(8) == 0 ? 3000 : 300;
    int n_hist = below(vocab < hist_cap ? vocab : hist_cap);
    rp->hist_ids = xmalloc((size_t)(n_hist + 1) * 4);
    rp->hist_count = xmalloc((size_t)(n_hist + 1) * 4);
    rp->hist_prompt = xmalloc((size_t)(n_hist + 1));
    memset(mark, 0, (size_t)vocab);
    for (int h = 0; h < n_hist; h++) {
        int id;
        do id = below(vocab);
        while (mark[id]);
        mark[id] = 1;
        rp->hist_ids[h] = id;
        rp->hist_count[h] = below(4);
        rp->hist_prompt[h] = (uint8_t)below(2);
    }
    if (below(8) == 0) { /* ignored by both */
        rp->hist_ids[n_hist] = below(2) ? -1 : vocab + 2;
        rp->hist_count[n_hist] = 1;
        rp->hist_prompt[n_hist++] = 1;
    }
    p->hist_ids = rp->hist_ids;
    p->hist_out_count = rp->hist_count;
    p->hist_in_prompt = rp->hist_prompt;
    p->n_hist = n_hist;
    /* bias: repeated ids add in list order, also across the kernel's chunks of 32 entries */
    int n_bias = below(3) == 0 ? (below(4) == 0 ? 33 + below(70) : 1 + below(12)) : 0;
    rp->bias_ids = xmalloc((size_t)n_bias * 4 + 4);
    rp->bias_vals = xmalloc((size_t)n_bias * 4 + 4);
    int pool[6];
    for (int j = 0; j < 6; j++) pool[j] = below(vocab);
    for (int j = 0; j < n_bias; j++) {
        rp->bias_ids[j] = below(10) == 0 ? vocab + below(3) : pool[below(6)];
        rp->bias_vals[j] =
            below(10) == 0 ? (below(2) ? 100.0f : -100.0f) : (float)(unit() * 10.0 - 5.0);
    }
    p->bias_ids = rp->bias_ids;
    p->bias_vals = rp->bias_vals;
    p->n_bias = n_bias;
    /* banned: repeats and outsiders allowed; or the whole vocabulary */
    int n_banned = all_banned ? vocab : (below(4) == 0 ? 1 + below(4) : 0);
    rp->banned = xmalloc((size_t)n_banned * 4 + 4);
    for (int j = 0; j < n_banned; j++)
        rp->banned[j] = all_banned ? j : (below(8) == 0 ? -3 : below(vocab));
    p->banned_ids = rp->banned;
    p->n_banned = n_banned;
    /* allowed-token mask on a third of the rows: half the ids, 1 in 50, a single id, or (now
     * and then) none at all; words beyond the vocabulary's last id carry set bits too */
    rp->mask = NULL;
    p->mask = NULL;
    if (below(3) == 0) {
        int words = (vocab + 31) / 32, kind = below(10);
        rp->mask = xmalloc((size_t)words * 4);
        for (int w = 0; w < words; w++) {
            uint32_t m = 0;
            for (int b = 0; b < 32; b++)
                if (kind < 4 ? below(2) : kind < 8 ? below(50) == 0 : 0) m |= 1u << b;
            rp->mask[w] = kind == 8 ? 0 : m;
        }
        if (kind == 8) rp->mask[below(words)] = 1u << below(32); /* one id (maybe past vocab) */
        if (vocab % 32) rp->mask[words - 1] |= ~0u << (vocab % 32);
        p->mask = rp->mask;
    }
}

static void free_params(struct row_params *rp)
{
    free(rp->hist_ids), free(rp->hist_count), free(rp->hist_prompt);
    free(rp->bias_ids), free(rp->bias_vals), free(rp->banned), free(rp->mask);
}

/* ---- the reference's intermediate values (sampler.h steps 2, 4-8) ---- */

static int cmp_desc(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a < b) - (a > b);
}

/* A set of kept ids: p > 0, and (p >= tp or p == tp_eq), and p >= tm. */
struct keep_rule {
    float tp, tp_eq, tm;
};

static bool kept(float q, struct keep_rule k)
{
    return q > 0.0f && (q >= k.tp || q == k.tp_eq) && q >= k.tm;
}

/* Step 8 over the ids the rule keeps; *lo, *hi: the running sum before and after the token;
 * *total: S; *sq: the sum of the kept p^2. */
static int draw(const float *p, int vocab, struct keep_rule k, double u, double *lo, double *hi,
                double *total, double *sq)
{
    double s = 0.0;
    int last = -1;
    *sq = 0.0;
    for (int i = 0; i < vocab; i++)
        if (kept(p[i], k)) s += p[i], *sq += (double)p[i] * p[i], last = i;
    double target = u * s, acc = 0.0;
    *total = s;
    for (int i = 0; i < vocab; i++) {
        if (!kept(p[i], k)) continue;
        *lo = acc;
        acc += p[i];
        if (acc > target) {
            *hi = acc;
            return i;
        }
    }
    *lo = *hi = s;
    return last >= 0 ? last : 0;
}

static bool any_in(const float *p, int vocab, float a, float b) /* some p in [a, b) */
{
    for (int i = 0; i < vocab; i++)
        if (p[i] > 0.0f && p[i] >= a && p[i] < b) return true;
    return false;
}

/* For a sampled row: recomputes the reference's p and thresholds, checks that they give the
 * reference's token (*twin_ok), and says whether the GPU's few-ulp differences could change the
 * token (the row is exempt). x, p, buf: vocab floats each. */
static bool exempt_row(const float *logits, int vocab, const struct kiln_sampling *sp, int ref,
                       float *x, float *p, float *buf, bool *twin_ok)
{
    /* step 2 */
    for (int i = 0; i < vocab; i++) x[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    for (int h = 0; h < sp->n_hist; h++) {
        int id = sp->hist_ids[h], c = sp->hist_out_count[h];
        if (id < 0 || id >= vocab) continue;
        bool seen = sp->hist_in_prompt[h] || c > 0;
        if (sp->repetition_penalty != 1.0f && seen)
            x[id] = x[id] > 0 ? x[id] / sp->repetition_penalty : x[id] * sp->repetition_penalty;
        x[id] -= sp->frequency_penalty * (float)c + sp->presence_penalty * (float)(c > 0);
    }
    for (int j = 0; j < sp->n_bias; j++)
        if (sp->bias_ids[j] >= 0 && sp->bias_ids[j] < vocab) x[sp->bias_ids[j]] += sp->bias_vals[j];
    for (int j = 0; j < sp->n_banned; j++)
        if (sp->banned_ids[j] >= 0 && sp->banned_ids[j] < vocab) x[sp->banned_ids[j]] = -INFINITY;
    if (sp->mask)
        for (int i = 0; i < vocab; i++)
            if (!((sp->mask[i >> 5] >> (i & 31)) & 1u)) x[i] = -INFINITY;
    /* step 4 */
    float inv_t = 1.0f / sp->temperature, mx = -INFINITY;
    for (int i = 0; i < vocab; i++) x[i] *= inv_t;
    if (sp->top_k > 0 && sp->top_k < vocab) {
        memcpy(buf, x, (size_t)vocab * 4);
        qsort(buf, (size_t)vocab, 4, cmp_desc);
        float kth = buf[sp->top_k - 1];
        for (int i = 0; i < vocab; i++)
            if (!(x[i] >= kth)) x[i] = -INFINITY;
    }
    for (int i = 0; i < vocab; i++) mx = fmaxf(mx, x[i]);
    if (mx == -INFINITY) { /* all banned: token 0 on both, no draw */
        *twin_ok = ref == 0;
        return false;
    }
    /* step 5 */
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) sum += p[i] = expf(x[i] - mx);
    float inv_sum = (float)(1.0 / sum), pmax = 0.0f;
    for (int i = 0; i < vocab; i++) pmax = fmaxf(pmax, p[i] *= inv_sum);
    /* step 6, with the prefix sums around the threshold */
    struct keep_rule rule = {0.0f, NAN, 0.0f};
    float t_up = NAN, t_down = NAN;
    double c_before = 0.0, c_end = 0.0;
    bool crossed = false;
    if (sp->top_p < 1.0f) {
        int n = 0;
        for (int i = 0; i < vocab; i++)
            if (p[i] > 0.0f) buf[n++] = p[i];
        qsort(buf, (size_t)n, 4, cmp_desc);
        double acc = 0.0;
        int j = 0;
        for (; j < n; j++) {
            acc += buf[j];
            if (acc >= sp->top_p) break;
        }
        crossed = j < n;
        rule.tp = crossed ? buf[j] : buf[n - 1];
        if (crossed) {
            int g0 = j, g1 = j;
            while (g0 > 0 && buf[g0 - 1] == rule.tp) g0--;
            while (g1 < n && buf[g1] == rule.tp) g1++;
            c_before = 0.0;
            for (int k = 0; k < g0; k++) c_before += buf[k];
            c_end = c_before;
            for (int k = g0; k < g1; k++) c_end += buf[k];
            t_up = g0 > 0 ? buf[g0 - 1] : NAN;
            t_down = g1 < n ? buf[g1] : NAN;
        }
    }
    /* step 7 */
    if (sp->min_p > 0.0f) rule.tm = sp->min_p * pmax;
    /* step 8 */
    double u = (double)(kiln_sample_rng(sp->seed, sp->step) >> 40) * 0x1p-24, lo, hi, s, sq;
    int token = draw(p, vocab, rule, u, &lo, &hi, &s, &sq);
    *twin_ok = token == ref;
    double target = u * s, band = fmax(DRAW_SIGMAS * EPS_P * sqrt(sq), 1e-12 * s);
    if (target - lo <= band || hi - target <= band) return true;

    /* the worlds a GPU within a few ulps could be in: does any change the token? */
    struct keep_rule alt[6];
    int n_alt = 0;
    float up = 1.0f + (float)MARGIN_P, dn = 1.0f - (float)MARGIN_P;
    if (sp->top_p < 1.0f && crossed) {
        if (any_in(p, vocab, rule.tp * dn, rule.tp))
            alt[n_alt++] = (struct keep_rule){rule.tp * dn, NAN, rule.tm};
        if (any_in(p, vocab, nextafterf(rule.tp, INFINITY), rule.tp * up))
            alt[n_alt++] = (struct keep_rule){rule.tp * up, rule.tp, rule.tm};
        if (!isnan(t_up) && sp->top_p - c_before <= MARGIN_P)
            alt[n_alt++] = (struct keep_rule){t_up, NAN, rule.tm};
        if (!isnan(t_down) && c_end - sp->top_p <= MARGIN_P)
            alt[n_alt++] = (struct keep_rule){t_down, NAN, rule.tm};
    }
    if (sp->min_p > 0.0f) {
        if (any_in(p, vocab, rule.tm * dn, rule.tm))
            alt[n_alt++] = (struct keep_rule){rule.tp, NAN, rule.tm * dn};
        if (any_in(p, vocab, rule.tm, rule.tm * up))
            alt[n_alt++] = (struct keep_rule){rule.tp, NAN, rule.tm * up};
    }
    for (int a = 0; a < n_alt; a++)
        if (draw(p, vocab, alt[a], u, &lo, &hi, &s, &sq) != token) return true;
    return false;
}

/* ---- comparison ---- */

static bool close_lp(float a, float b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b)) return a == b;
    return fabsf(a - b) <= LP_TOL;
}

/* logsumexp of the raw row, as the reference computes it */
static float row_lse(const float *l, int vocab)
{
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (l[i] > mx) mx = l[i];
    double s = 0.0;
    for (int i = 0; i < vocab; i++) s += expf(l[i] - mx);
    return mx + (float)log(s);
}

static int printed;
static void row_failure(int vocab, int r, const char *what, const struct kiln_sampling *p,
                        enum row_kind kind)
{
    failures++;
    if (printed++ >= 20) return;
    printf("  FAIL vocab %d row %d (kind %d; T %g top_k %d top_p %g min_p %g hist %d bias %d "
           "banned %d lp %d): %s\n",
           vocab, r, (int)kind, p->temperature, p->top_k, p->top_p, p->min_p, p->n_hist, p->n_bias,
           p->n_banned, p->n_logprobs, what);
}

/* Runs n rows of one vocabulary on both backends and compares; returns exempt rows. */
static int check_batch(int vocab, int n, bool split, int *n_sampled)
{
    float *l = xmalloc((size_t)n * vocab * 4), *back = xmalloc((size_t)n * vocab * 4);
    float *x = xmalloc((size_t)vocab * 4), *p = xmalloc((size_t)vocab * 4);
    float *buf = xmalloc((size_t)vocab * 4), *scratch = xmalloc((size_t)vocab * 8);
    uint8_t *mark = xmalloc((size_t)vocab);
    struct row_params *rp = xmalloc((size_t)n * sizeof *rp);
    struct kiln_sampling *sp = xmalloc((size_t)n * sizeof *sp);
    enum row_kind *kinds = xmalloc((size_t)n * sizeof *kinds);
    struct kiln_sample_out *ref = xmalloc((size_t)n * sizeof *ref);
    struct kiln_cuda_sample_out *got = xmalloc((size_t)n * sizeof *got);
    for (int r = 0; r < n; r++) {
        kinds[r] = pick_kind();
        make_logits(l + (size_t)r * vocab, vocab, kinds[r]);
        make_params(&rp[r], vocab, kinds[r] == R_BANNED, mark);
        sp[r] = rp[r].p;
        kiln_sample_row(l + (size_t)r * vocab, vocab, &sp[r], scratch, &ref[r]);
    }

    size_t bytes = kiln_cuda_sample_args_bytes(sp, n, vocab);
    void *args = xmalloc(bytes), *d_args;
    kiln_cuda_sample_pack(sp, n, vocab, args);
    float *d_l;
    struct kiln_cuda_sample_out *d_out;
    CK(cudaMalloc(&d_args, bytes));
    CK(cudaMalloc((void **)&d_l, (size_t)n * vocab * 4));
    CK(cudaMalloc((void **)&d_out, (size_t)n * sizeof *d_out));
    CK(cudaMemcpy(d_args, args, bytes, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_l, l, (size_t)n * vocab * 4, cudaMemcpyHostToDevice));
    /* the split first pass (the backend's for small steps), or one block per row */
    struct kiln_cuda_sample_part *d_parts = NULL;
    if (split)
        CK(cudaMalloc((void **)&d_parts, (size_t)n * KILN_CUDA_SAMPLE_CHUNKS * sizeof *d_parts));
    CK(kiln_cuda_sample(d_l, n, vocab, d_args, d_parts, d_out, NULL));
    CK(cudaDeviceSynchronize());
    cudaFree(d_parts);
    CK(cudaMemcpy(got, d_out, (size_t)n * sizeof *got, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(back, d_l, (size_t)n * vocab * 4, cudaMemcpyDeviceToHost));

    int exempt = 0, differ = 0, sampled = 0, start = failures;
    char what[256];
    for (int r = 0; r < n; r++) {
        const float *row = l + (size_t)r * vocab;
        const struct kiln_sample_out *w = &ref[r];
        const struct kiln_cuda_sample_out *g = &got[r];
        bool greedy = sp[r].temperature < KILN_GREEDY_TEMPERATURE, ex = false;
        if (!greedy) {
            bool twin_ok;
            sampled++;
            ex = exempt_row(row, vocab, &sp[r], w->token, x, p, buf, &twin_ok);
            if (!twin_ok)
                row_failure(vocab, r, "the test's twin disagrees with kiln_sample_row", &sp[r],
                            kinds[r]);
            if (ex) {
                exempt++;
                printf("  exempt: vocab %d row %d, tokens cpu %d gpu %d\n", vocab, r, w->token,
                       g->token);
            }
        }
        if (g->token < 0 || g->token >= vocab) {
            snprintf(what, sizeof what, "token %d outside the vocabulary", g->token);
            row_failure(vocab, r, what, &sp[r], kinds[r]);
            continue;
        }
        if (g->token != w->token) {
            differ++;
            if (!ex) {
                snprintf(what, sizeof what, "token gpu %d, cpu %d", g->token, w->token);
                row_failure(vocab, r, what, &sp[r], kinds[r]);
            }
        }
        float want_lp = g->token == w->token ? w->logprob : row[g->token] - row_lse(row, vocab);
        if (!close_lp(g->logprob, want_lp)) {
            snprintf(what, sizeof what, "logprob gpu %.7g, cpu %.7g", g->logprob, want_lp);
            row_failure(vocab, r, what, &sp[r], kinds[r]);
        }
        bool tops = g->n_top == w->n_top;
        for (int j = 0; tops && j < w->n_top; j++)
            tops =
                g->top_ids[j] == w->top_ids[j] && close_lp(g->top_logprobs[j], w->top_logprobs[j]);
        if (!tops) {
            snprintf(what, sizeof what, "top alternatives: gpu %d (first id %d), cpu %d (%d)",
                     g->n_top, g->n_top > 0 ? g->top_ids[0] : -1, w->n_top,
                     w->n_top > 0 ? w->top_ids[0] : -1);
            row_failure(vocab, r, what, &sp[r], kinds[r]);
        }
    }
    bool same = memcmp(back, l, (size_t)n * vocab * 4) == 0;
    if (!same) failures++;
    printf(
        "sample vocab=%-6d rows %3d%s (sampled %d): exempt %d, tokens differing %d, failures %d, "
        "logits restored: %s\n",
        vocab, n, split ? " split" : "", sampled, exempt, differ, failures - start,
        same ? "yes" : "NO (FAIL)");
    *n_sampled = sampled;

    cudaFree(d_args), cudaFree(d_l), cudaFree(d_out);
    for (int r = 0; r < n; r++) free_params(&rp[r]);
    free(l), free(back), free(x), free(p), free(buf), free(scratch), free(mark), free(rp);
    free(sp), free(kinds), free(ref), free(got), free(args);
    return exempt;
}

/* ---- timing ---- */

static void time_config(const char *name, float *d_l, int n, int vocab, struct kiln_sampling *sp,
                        bool split)
{
    struct kiln_cuda_sample_part *d_parts = NULL;
    if (split)
        CK(cudaMalloc((void **)&d_parts, (size_t)n * KILN_CUDA_SAMPLE_CHUNKS * sizeof *d_parts));
    size_t bytes = kiln_cuda_sample_args_bytes(sp, n, vocab);
    void *args = xmalloc(bytes), *d_args;
    struct kiln_cuda_sample_out *d_out;
    kiln_cuda_sample_pack(sp, n, vocab, args);
    CK(cudaMalloc(&d_args, bytes));
    CK(cudaMalloc((void **)&d_out, (size_t)n * sizeof *d_out));
    CK(cudaMemcpy(d_args, args, bytes, cudaMemcpyHostToDevice));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) CK(kiln_cuda_sample(d_l, n, vocab, d_args, d_parts, d_out, NULL));
    const int reps = 20;
    CK(cudaEventRecord(a, NULL));
    for (int i = 0; i < reps; i++)
        CK(kiln_cuda_sample(d_l, n, vocab, d_args, d_parts, d_out, NULL));
    CK(cudaEventRecord(b, NULL));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    ms /= reps;
    printf("sample time %-44s %3d x %d%s: %8.3f ms  (%6.1f GB/s as one read of the logits)\n", name,
           n, vocab, split ? "" : " (one block a row)", ms, (double)n * vocab * 4 / (ms * 1e6));
    cudaFree(d_parts);
    cudaEventDestroy(a), cudaEventDestroy(b);
    cudaFree(d_args), cudaFree(d_out);
    free(args);
}

static void timing(void)
{
    enum { n = 256, vocab = 128256, n_hist = 200 };
    float *l = xmalloc((size_t)n * vocab * 4), *d_l;
    for (size_t i = 0; i < (size_t)n * vocab; i++) l[i] = 2.5f * gauss();
    CK(cudaMalloc((void **)&d_l, (size_t)n * vocab * 4));
    CK(cudaMemcpy(d_l, l, (size_t)n * vocab * 4, cudaMemcpyHostToDevice));
    int32_t hist[n_hist], counts[n_hist];
    uint8_t prompt[n_hist];
    for (int h = 0; h < n_hist; h++) hist[h] = h * 601, counts[h] = h % 3, prompt[h] = 1;
    struct kiln_sampling *sp = xmalloc((size_t)n * sizeof *sp);
    uint32_t *mask = xmalloc((vocab + 31) / 32 * 4);
    for (int w = 0; w < (vocab + 31) / 32; w++) mask[w] = (uint32_t)next_u64();
    for (int c = 0; c < 5; c++) {
        static const char *const names[5] = {"greedy", "T 1, top_p 0.9",
                                             "T 0.7, top_k 40, top_p 0.9, min_p, penalties, 5 lp",
                                             "greedy, mask", "T 1, top_p 0.9, mask"};
        for (int r = 0; r < n; r++) {
            bool sampled = c == 1 || c == 2 || c == 4;
            sp[r] = (struct kiln_sampling){.temperature = sampled ? (c == 2 ? 0.7f : 1.0f) : 0.0f,
                                           .top_p = sampled ? 0.9f : 1.0f,
                                           .mask = c >= 3 ? mask : NULL,
                                           .repetition_penalty = 1.0f,
                                           .seed = (uint64_t)r,
                                           .step = 7};
            if (c == 2) {
                sp[r].top_k = 40;
                sp[r].min_p = 0.05f;
                sp[r].presence_penalty = 0.5f;
                sp[r].hist_ids = hist, sp[r].hist_out_count = counts;
                sp[r].hist_in_prompt = prompt, sp[r].n_hist = n_hist;
                sp[r].n_logprobs = 5;
            }
        }
        time_config(names[c], d_l, n, vocab, sp, true);
        time_config(names[c], d_l, 1, vocab, sp, true);
        if (c == 0) {
            time_config(names[c], d_l, n, vocab, sp, false);
            time_config(names[c], d_l, 1, vocab, sp, false);
        }
    }
    cudaFree(d_l);
    free(l), free(sp), free(mask);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* a hang or a kill must not eat the log */
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA GPU: skipped\n");
        return 77;
    }
    static const int vocabs[3] = {128256, 1000, 37}, rows[3] = {600, 1600, 200};
    int exempt = 0, total = 0, sampled = 0;
    for (int v = 0; v < 3; v++) {
        /* batches of up to 200 rows, one launch each, alternating with batches of up to
         * KILN_CUDA_SAMPLE_SPLIT_ROWS rows that take the split first pass */
        int b = 0;
        for (int done = 0, n; done < rows[v]; done += n, b++) {
            const bool split = b % 2 == 0;
            const int most = split ? KILN_CUDA_SAMPLE_SPLIT_ROWS : 200;
            int s;
            n = rows[v] - done < most ? rows[v] - done : most;
            exempt += check_batch(vocabs[v], n, split, &s);
            total += n;
            sampled += s;
        }
    }
    bool ok = exempt * 200 <= total; /* at most 0.5% */
    printf("sample exempt rows %d of %d (%d sampled), at most %d allowed: %s\n", exempt, total,
           sampled, total / 200, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    timing();
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
