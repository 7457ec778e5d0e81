/* FP8/BF16/F16 conversions against exhaustive and hand-checked values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "core/numeric.h"

static void e4m3_roundtrip_every_code(void **state)
{
    (void)state;
    kiln_numeric_init();
    for (int b = 0; b < 256; b++) {
        float v = kiln_e4m3_to_f32((uint8_t)b);
        if (isnan(v)) {
            assert_true((b & 0x7f) == 0x7f);
            continue;
        }
        uint8_t back = kiln_f32_to_e4m3(v);
        if (v == 0.0f)
            assert_int_equal(back & 0x7f, 0); /* +0 / -0 keep their sign */
        else
            assert_int_equal(back, b);
    }
}

static void e4m3_known_values(void **state)
{
    (void)state;
    kiln_numeric_init();
    assert_true(kiln_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(kiln_e4m3_to_f32(0x01) == 0x1p-9f);
    assert_true(kiln_e4m3_to_f32(0x08) == 0x1p-6f);
    assert_int_equal(kiln_f32_to_e4m3(1000.0f), 0x7e); /* saturates */
    assert_int_equal(kiln_f32_to_e4m3(-1e30f), 0xfe);
    assert_int_equal(kiln_f32_to_e4m3(INFINITY), 0x7e);
    assert_int_equal(kiln_f32_to_e4m3(NAN) & 0x7f, 0x7f);
    /* ties to even: 1.0625 is halfway between 1.0 (man 0) and 1.125 (man 1) -> 1.0 */
    assert_true(kiln_e4m3_to_f32(kiln_f32_to_e4m3(1.0625f)) == 1.0f);
    /* 1.1875 halfway between 1.125 (man 1) and 1.25 (man 2) -> 1.25 */
    assert_true(kiln_e4m3_to_f32(kiln_f32_to_e4m3(1.1875f)) == 1.25f);
    /* subnormal tie: 1.5 * 2^-9 -> 2 * 2^-9 ; 0.5 * 2^-9 -> 0 */
    assert_true(kiln_e4m3_to_f32(kiln_f32_to_e4m3(1.5f * 0x1p-9f)) == 2 * 0x1p-9f);
    assert_true(kiln_e4m3_to_f32(kiln_f32_to_e4m3(0.5f * 0x1p-9f)) == 0.0f);
    /* 7.5 * 2^-9 (between the largest subnormal and the least normal) rounds to 2^-6 */
    assert_true(kiln_e4m3_to_f32(kiln_f32_to_e4m3(7.5f * 0x1p-9f)) == 0x1p-6f);
    assert_true(kiln_e4m3_to_f32(kiln_f32_to_e4m3(447.0f)) == 448.0f);
}

/* Every f32 maps to the nearest representable e4m3 value (ties to even), scanning a dense grid. */
static void e4m3_nearest(void **state)
{
    (void)state;
    kiln_numeric_init();
    for (float x = -460.0f; x <= 460.0f; x += 0.0371f) {
        float got = kiln_e4m3_to_f32(kiln_f32_to_e4m3(x));
        float best = NAN, bestd = INFINITY;
        for (int b = 0; b < 256; b++) {
            float v = kiln_e4m3_to_f32((uint8_t)b);
            if (isnan(v)) continue;
            float d = fabsf(v - x);
            if (d < bestd) bestd = d, best = v;
        }
        if (fabsf(x) >= 448.0f) best = x > 0 ? 448.0f : -448.0f;
        assert_true(fabsf(got - x) <= bestd * (1 + 1e-6f) && fabsf(got) == fabsf(best));
    }
}

static void bf16_f16(void **state)
{
    (void)state;
    assert_int_equal(kiln_f32_to_bf16(1.0f), 0x3f80);
    assert_true(kiln_bf16_to_f32(0xc040) == -3.0f);
    /* 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa (1.0) wins */
    assert_int_equal(kiln_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    assert_int_equal(kiln_f32_to_f16(1.0f), 0x3c00);
    assert_true(kiln_f16_to_f32(0x3555) == 0x1.554p-2f);
    assert_true(kiln_f16_to_f32(0x0001) == 0x1p-24f);
    assert_int_equal(kiln_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(kiln_f32_to_f16(1e6f), 0x7c00);
    for (int h = 0; h < 0x7c00; h++) assert_int_equal(kiln_f32_to_f16(kiln_f16_to_f32(h)), h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(e4m3_roundtrip_every_code),
        cmocka_unit_test(e4m3_known_values),
        cmocka_unit_test(e4m3_nearest),
        cmocka_unit_test(bf16_f16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
