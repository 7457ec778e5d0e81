/* The KV block manager: allocation never hands a block out twice, prefix matches share exactly
 * the full blocks of an identical prefix, cached blocks are evicted LRU, tail of a chain first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/kvcache.h"
#include "runtime/sampler.h"

#define BS 4

static struct kiln_kv kv_new(int n_blocks, bool caching)
{
    struct kiln_kv kv;
    struct kiln_error err;
    assert_int_equal(kiln_kv_init(&kv, n_blocks, BS, caching, &err), KILN_OK);
    return kv;
}

static struct kiln_kv_seq seq_new(int cap)
{
    struct kiln_kv_seq s;
    struct kiln_error err;
    assert_int_equal(kiln_kv_seq_init(&s, cap, &err), KILN_OK);
    return s;
}

/* Reference counts equal the number of holders, the free list holds exactly the unheld blocks,
 * blocks held by several sequences are cached ones, and every cached block is in the table. */
static void check(const struct kiln_kv *kv, struct kiln_kv_seq *const *seqs, int n_seqs)
{
    int *holders = calloc((size_t)kv->n_blocks, sizeof *holders);
    assert_non_null(holders);
    for (int i = 0; i < n_seqs; i++) {
        for (int j = 0; j < seqs[i]->n; j++) {
            int b = seqs[i]->blocks[j];
            assert_true(b >= 0 && b < kv->n_blocks);
            for (int k = 0; k < j; k++) assert_int_not_equal(seqs[i]->blocks[k], b);
            holders[b]++;
        }
    }
    int n_free = 0, n_cached = 0;
    for (int b = kv->head, prev = -1; b >= 0; prev = b, b = kv->next[b]) {
        assert_int_equal(kv->prev[b], prev);
        assert_int_equal(holders[b], 0);
        n_free++;
        assert_true(n_free <= kv->n_blocks);
    }
    assert_int_equal(n_free, kv->n_free);
    for (int b = 0; b < kv->n_blocks; b++) {
        assert_int_equal(kv->ref[b], holders[b]);
        if (holders[b] > 1) assert_true(kv->cached[b]);
        n_cached += kv->cached[b];
    }
    assert_int_equal(n_cached, kv->n_cached);
    int in_table = 0;
    for (uint32_t i = 0; i <= kv->table_mask; i++) {
        int b = kv->table[i];
        if (b < 0) continue;
        assert_true(kv->cached[b]);
        in_table++;
        /* Reachable by probing from its home slot without crossing an empty one (what the
         * backward-shift deletion must preserve). */
        uint64_t h = kv->hash[b];
        uint32_t j = (uint32_t)(h ^ (h >> 32)) & kv->table_mask;
        while (kv->table[j] != b) {
            assert_true(kv->table[j] >= 0);
            j = (j + 1) & kv->table_mask;
        }
    }
    assert_int_equal(in_table, n_cached);
    free(holders);
}

static void alloc_all_or_nothing(void **state)
{
    (void)state;
    struct kiln_kv kv = kv_new(10, false);
    struct kiln_kv_seq a = seq_new(8), b = seq_new(8);
    assert_true(kiln_kv_seq_reserve(&kv, &a, 6 * BS)); /* 6 blocks */
    assert_int_equal(a.n, 6);
    assert_true(kiln_kv_seq_reserve(&kv, &a, 6 * BS)); /* already held */
    assert_int_equal(kiln_kv_available(&kv), 4);
    assert_false(kiln_kv_seq_reserve(&kv, &b, 5 * BS)); /* 5 > 4: nothing taken */
    assert_int_equal(b.n, 0);
    assert_int_equal(kiln_kv_available(&kv), 4);
    assert_true(kiln_kv_seq_reserve(&kv, &b, 3 * BS + 1)); /* 13 positions: 4 blocks */
    assert_int_equal(b.n, 4);
    assert_int_equal(kiln_kv_used(&kv), 10);
    assert_false(kiln_kv_seq_reserve(&kv, &a, 6 * BS + 1));
    assert_false(kiln_kv_seq_reserve(&kv, &b, 9 * BS)); /* over the sequence's capacity */
    struct kiln_kv_seq *all[] = {&a, &b};
    check(&kv, all, 2);
    kiln_kv_seq_release(&kv, &a);
    assert_int_equal(kiln_kv_available(&kv), 6);
    assert_true(kiln_kv_seq_reserve(&kv, &b, 8 * BS));
    check(&kv, all, 2);
    kiln_kv_seq_release(&kv, &b);
    assert_int_equal(kiln_kv_used(&kv), 0);
    /* Without prefix caching nothing matches and commit caches nothing. */
    int32_t toks[3 * BS] = {0};
    assert_true(kiln_kv_seq_reserve(&kv, &a, 3 * BS));
    kiln_kv_seq_commit(&kv, &a, toks, 3 * BS);
    assert_int_equal(kv.n_cached, 0);
    kiln_kv_seq_release(&kv, &a);
    assert_int_equal(kiln_kv_seq_match(&kv, &b, toks, 3 * BS), 0);
    kiln_kv_seq_free(&a);
    kiln_kv_seq_free(&b);
    kiln_kv_free(&kv);
}

static void prefix_share(void **state)
{
    (void)state;
    struct kiln_kv kv = kv_new(16, true);
    struct kiln_kv_seq a = seq_new(8), b = seq_new(8), c = seq_new(8);
    int32_t ta[14], tb[14];
    for (int i = 0; i < 14; i++) ta[i] = tb[i] = 100 + i;
    tb[9] = 7; /* differs in the third block */
    assert_true(kiln_kv_seq_reserve(&kv, &a, 14));
    kiln_kv_seq_commit(&kv, &a, ta, 10); /* 2 full blocks computed so far */
    assert_int_equal(kv.n_cached, 2);
    kiln_kv_seq_commit(&kv, &a, ta, 14); /* 3 full, the 4th partial */
    assert_int_equal(kv.n_cached, 3);
    assert_int_equal(a.n_hashed, 3);

    assert_int_equal(kiln_kv_seq_match(&kv, &b, tb, 14), 2);
    assert_int_equal(b.blocks[0], a.blocks[0]);
    assert_int_equal(b.blocks[1], a.blocks[1]);
    assert_int_equal(kv.ref[a.blocks[0]], 2);
    assert_int_equal(kiln_kv_seq_match(&kv, &c, ta, 3 * BS), 2); /* leaves 1 to compute */
    struct kiln_kv_seq *all[] = {&a, &b, &c};
    check(&kv, all, 3);
    /* The shared blocks outlive their first owner; they are freed only with the last. */
    int b0 = a.blocks[0];
    kiln_kv_seq_release(&kv, &a);
    assert_int_equal(kv.ref[b0], 2);
    kiln_kv_seq_release(&kv, &b);
    kiln_kv_seq_release(&kv, &c);
    assert_int_equal(kiln_kv_used(&kv), 0);
    check(&kv, all, 3);
    /* Free but cached: still matched, taken off the free list again. */
    assert_int_equal(kiln_kv_seq_match(&kv, &a, ta, 14), 3);
    assert_int_equal(kiln_kv_used(&kv), 3);
    assert_int_equal(a.blocks[0], b0);
    kiln_kv_seq_release(&kv, &a);

    /* A block is matched only under the same parent chain: same tokens after another prefix
     * is a different block. */
    int32_t tc[14];
    memcpy(tc, ta, sizeof tc);
    tc[0] = 5;
    assert_int_equal(kiln_kv_seq_match(&kv, &a, tc, 14), 0);
    kiln_kv_seq_free(&a);
    kiln_kv_seq_free(&b);
    kiln_kv_seq_free(&c);
    kiln_kv_free(&kv);
}

static void lru_eviction(void **state)
{
    (void)state;
    struct kiln_kv kv = kv_new(4, true);
    struct kiln_kv_seq a = seq_new(4), b = seq_new(4);
    int32_t ta[2 * BS];
    for (int i = 0; i < 2 * BS; i++) ta[i] = i;
    assert_true(kiln_kv_seq_reserve(&kv, &a, 2 * BS));
    kiln_kv_seq_commit(&kv, &a, ta, 2 * BS);
    int a0 = a.blocks[0], a1 = a.blocks[1];
    kiln_kv_seq_release(&kv, &a);
    /* Two never-cached blocks go first. */
    assert_true(kiln_kv_seq_reserve(&kv, &b, 2 * BS));
    assert_true(b.blocks[0] != a0 && b.blocks[0] != a1 && b.blocks[1] != a0 && b.blocks[1] != a1);
    assert_int_equal(kv.n_cached, 2);
    /* Then the chain's tail. */
    assert_true(kiln_kv_seq_reserve(&kv, &b, 3 * BS));
    assert_int_equal(b.blocks[2], a1);
    assert_int_equal(kv.n_cached, 1);
    assert_int_equal(kiln_kv_seq_match(&kv, &a, ta, 2 * BS + 1), 1);
    assert_int_equal(a.blocks[0], a0);
    assert_false(kiln_kv_seq_reserve(&kv, &b, 4 * BS)); /* a0 is held again */
    kiln_kv_seq_release(&kv, &a);
    assert_true(kiln_kv_seq_reserve(&kv, &b, 4 * BS));
    assert_int_equal(kv.n_cached, 0);
    assert_int_equal(kiln_kv_seq_match(&kv, &a, ta, 2 * BS + 1), 0);
    struct kiln_kv_seq *all[] = {&a, &b};
    check(&kv, all, 2);
    kiln_kv_seq_free(&a);
    kiln_kv_seq_free(&b);
    kiln_kv_free(&kv);
}

/* Two sequences compute the same blocks at once (neither could match the other): one copy is
 * cached, the other is freed normally. */
static void twin_commit(void **state)
{
    (void)state;
    struct kiln_kv kv = kv_new(8, true);
    struct kiln_kv_seq a = seq_new(4), b = seq_new(4), c = seq_new(4);
    int32_t t[2 * BS];
    for (int i = 0; i < 2 * BS; i++) t[i] = 3 * i;
    assert_true(kiln_kv_seq_reserve(&kv, &a, 2 * BS));
    assert_true(kiln_kv_seq_reserve(&kv, &b, 2 * BS));
    kiln_kv_seq_commit(&kv, &a, t, 2 * BS);
    kiln_kv_seq_commit(&kv, &b, t, 2 * BS);
    assert_int_equal(kv.n_cached, 2);
    assert_int_equal(b.n_hashed, 2);
    assert_int_equal(kiln_kv_seq_match(&kv, &c, t, 2 * BS + 1), 2);
    assert_int_equal(c.blocks[1], a.blocks[1]);
    struct kiln_kv_seq *all[] = {&a, &b, &c};
    check(&kv, all, 3);
    kiln_kv_seq_release(&kv, &b);
    kiln_kv_seq_release(&kv, &a);
    kiln_kv_seq_release(&kv, &c);
    assert_int_equal(kiln_kv_used(&kv), 0);
    check(&kv, all, 3);
    kiln_kv_seq_free(&a);
    kiln_kv_seq_free(&b);
    kiln_kv_seq_free(&c);
    kiln_kv_free(&kv);
}

/* Random admit / grow / commit / release over a small pool and few distinct prompts (so
 * prefixes collide often), checking every invariant after each operation. */
static void stress(void **state)
{
    (void)state;
    enum { NS = 12, CAP = 10, NB = 40 };
    struct kiln_kv kv = kv_new(NB, true);
    struct kiln_kv_seq seqs[NS];
    struct kiln_kv_seq *all[NS];
    int32_t toks[NS][CAP * BS];
    int computed[NS] = {0};
    for (int i = 0; i < NS; i++) {
        seqs[i] = seq_new(CAP);
        all[i] = &seqs[i];
    }
    bool ever[NB] = {false}; /* blocks some sequence has held */
    int n_ever = 0;
    uint64_t r = 7;
    long matched = 0;
    for (int it = 0; it < 20000; it++) {
        r = kiln_splitmix64(r);
        int i = (int)(r % NS), op = (int)((r >> 8) % 4);
        struct kiln_kv_seq *s = &seqs[i];
        if (s->n == 0) { /* admit: a prompt from 3 families that share their start */
            int family = (int)((r >> 16) % 3);
            for (int k = 0; k < CAP * BS; k++)
                toks[i][k] = k < (family + 1) * BS ? k : (int32_t)((r >> 20) % 4) * 1000 + k;
            int n_tokens = 1 + (int)((r >> 24) % (CAP * BS - 1));
            int m = kiln_kv_seq_match(&kv, s, toks[i], n_tokens);
            matched += m;
            computed[i] = m * BS;
            if (!kiln_kv_seq_reserve(&kv, s, n_tokens)) kiln_kv_seq_release(&kv, s);
        } else if (op == 0) {
            kiln_kv_seq_release(&kv, s);
        } else if (op == 1) {
            kiln_kv_seq_reserve(&kv, s, s->n * BS + 1);
        } else {
            int upto = s->n * BS;
            computed[i] += (int)((r >> 32) % (BS * 2));
            if (computed[i] > upto) computed[i] = upto;
            kiln_kv_seq_commit(&kv, s, toks[i], computed[i]);
        }
        check(&kv, all, NS);
        /* Allocation takes all or nothing, so every block taken is in a sequence now: the
         * touched mark is exactly the count of blocks ever held, and they are its prefix. */
        for (int j = 0; j < NS; j++)
            for (int k = 0; k < seqs[j].n; k++)
                if (!ever[seqs[j].blocks[k]]) {
                    ever[seqs[j].blocks[k]] = true;
                    n_ever++;
                }
        assert_int_equal(kv.n_touched, n_ever);
        for (int b = 0; b < NB; b++) assert_int_equal(ever[b], b < n_ever);
    }
    assert_int_equal(n_ever, NB); /* the pool was used up: eviction ran too */
    assert_true(matched > 100);
    for (int i = 0; i < NS; i++) {
        kiln_kv_seq_release(&kv, &seqs[i]);
        kiln_kv_seq_free(&seqs[i]);
    }
    assert_int_equal(kiln_kv_used(&kv), 0);
    kiln_kv_free(&kv);
}

static void bad_pool(void **state)
{
    (void)state;
    struct kiln_kv kv;
    struct kiln_error err;
    assert_int_equal(kiln_kv_init(&kv, 0, 16, true, &err), KILN_ERR_INVALID);
    assert_int_equal(kiln_kv_init(&kv, 10, 0, true, &err), KILN_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(alloc_all_or_nothing),
        cmocka_unit_test(prefix_share),
        cmocka_unit_test(lru_eviction),
        cmocka_unit_test(twin_commit),
        cmocka_unit_test(stress),
        cmocka_unit_test(bad_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
