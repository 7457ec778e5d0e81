#include "numeric.h"

#include <pthread.h>

float kiln_e4m3_table[256];

static void build_table(void)
{
    for (int b = 0; b < 256; b++) {
        int sign = b & 0x80, exp = (b >> 3) & 15, man = b & 7;
        float v;
        if (exp == 15 && man == 7)
            v = NAN;
        else if (exp == 0)
            v = ldexpf((float)man, -9);
        else
            v = ldexpf(1.0f + man / 8.0f, exp - 7);
        kiln_e4m3_table[b] = sign ? -v : v;
    }
}

void kiln_numeric_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, build_table);
}

static const struct {
    const char *name;
    size_t size;
} dtype_info[KILN_DTYPE_COUNT] = {
    [KILN_DTYPE_F32] = {"F32", 4},   [KILN_DTYPE_F16] = {"F16", 2},
    [KILN_DTYPE_BF16] = {"BF16", 2}, [KILN_DTYPE_F8E4M3] = {"F8_E4M3", 1},
    [KILN_DTYPE_I32] = {"I32", 4},   [KILN_DTYPE_I64] = {"I64", 8},
};

size_t kiln_dtype_size(enum kiln_dtype t)
{
    return (unsigned)t < KILN_DTYPE_COUNT ? dtype_info[t].size : 0;
}

const char *kiln_dtype_name(enum kiln_dtype t)
{
    return (unsigned)t < KILN_DTYPE_COUNT ? dtype_info[t].name : "?";
}

int kiln_dtype_parse(const char *name, enum kiln_dtype *out)
{
    for (int t = 0; t < KILN_DTYPE_COUNT; t++) {
        if (strcmp(name, dtype_info[t].name) == 0) {
            *out = (enum kiln_dtype)t;
            return 0;
        }
    }
    return -1;
}

float kiln_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 0x3ff, u;
    if (exp == 0) {
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    if (exp == 31)
        u = sign | 0x7f800000u | (man << 13);
    else
        u = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kiln_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u) return sign | 0x7e00;
    if (mag >= 0x477ff000u) return sign | 0x7c00; /* rounds to >= 65520: inf */
    if (mag < 0x38800000u) {                      /* < 2^-14: subnormal, step 2^-24 */
        float r = nearbyintf(fabsf(f) * 16777216.0f);
        return sign | (uint16_t)r;
    }
    uint32_t exp = (mag >> 23) - 127 + 15, man = (mag >> 13) & 0x3ff, rest = mag & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (man & 1))) {
        if (++man == 0x400) {
            man = 0;
            exp++;
        }
    }
    return sign | (uint16_t)(exp << 10) | (uint16_t)man;
}

void kiln_convert_to_f32(float *dst, const void *src, enum kiln_dtype t, size_t n)
{
    switch (t) {
    case KILN_DTYPE_F32:
        memcpy(dst, src, n * 4);
        break;
    case KILN_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = kiln_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case KILN_DTYPE_F16:
        for (size_t i = 0; i < n; i++) dst[i] = kiln_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    case KILN_DTYPE_F8E4M3:
        for (size_t i = 0; i < n; i++) dst[i] = kiln_e4m3_table[((const uint8_t *)src)[i]];
        break;
    default:
        for (size_t i = 0; i < n; i++) dst[i] = NAN;
    }
}
