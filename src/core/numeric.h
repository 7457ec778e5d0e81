/* Number formats kiln reads and writes: FP8 E4M3 (the "fn" variant of OCP FP8: no infinities,
 * 0x7f/0xff are NaN, largest finite 448), BF16 and IEEE F16. Conversions to narrow formats
 * round to nearest even; FP8 saturates to ±448 as cuda_fp8's __NV_SATFINITE does, so the CPU
 * backend rounds activations exactly as the GPU kernels do. */
#ifndef KILN_CORE_NUMERIC_H
#define KILN_CORE_NUMERIC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define KILN_FP8_MAX 448.0f

enum kiln_dtype {
    KILN_DTYPE_F32,
    KILN_DTYPE_F16,
    KILN_DTYPE_BF16,
    KILN_DTYPE_F8E4M3,
    KILN_DTYPE_I32,
    KILN_DTYPE_I64,
    KILN_DTYPE_COUNT,
};

/* Bytes per element; safetensors name ("F8_E4M3"); parse returns -1 when unknown. */
size_t kiln_dtype_size(enum kiln_dtype t);
const char *kiln_dtype_name(enum kiln_dtype t);
int kiln_dtype_parse(const char *name, enum kiln_dtype *out);

extern float kiln_e4m3_table[256]; /* filled by kiln_numeric_init(); index = byte */
void kiln_numeric_init(void);      /* idempotent, thread-safe */

static inline float kiln_e4m3_to_f32(uint8_t b)
{
    return kiln_e4m3_table[b];
}

/* Round to nearest even, saturate to ±448, NaN stays NaN (0x7f with sign). */
static inline uint8_t kiln_f32_to_e4m3(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    uint32_t mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u) return sign | 0x7f;
    if (mag >= 0x43e00000u) return sign | 0x7e; /* >= 448 (and inf): saturate */
    if (mag < 0x3c800000u) {                    /* < 2^-6: subnormal, step 2^-9 */
        float q = fabsf(f) * 512.0f;            /* exact: scaling by a power of two */
        float r = nearbyintf(q);                /* default rounding mode: nearest even */
        return sign | (uint8_t)r;               /* r == 8 encodes 2^-6, the least normal */
    }
    uint32_t exp = (mag >> 23) - 127 + 7;
    uint32_t man = (mag >> 20) & 7;
    uint32_t rest = mag & 0xfffffu;
    if (rest > 0x80000u || (rest == 0x80000u && (man & 1))) {
        if (++man == 8) {
            man = 0;
            exp++;
        }
    }
    return sign | (uint8_t)(exp << 3) | (uint8_t)man;
}

/* x / scale, saturated and rounded: the activation quantizer of every FP8 linear. */
static inline uint8_t kiln_quant_e4m3(float x, float inv_scale)
{
    return kiln_f32_to_e4m3(x * inv_scale);
}

static inline float kiln_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t kiln_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float kiln_f16_to_f32(uint16_t h);
uint16_t kiln_f32_to_f16(float f);

/* Element i of a tensor of dtype t as f32 (F32/F16/BF16/F8E4M3 only). */
static inline float kiln_load_f32(const void *p, enum kiln_dtype t, size_t i)
{
    switch (t) {
    case KILN_DTYPE_F32:
        return ((const float *)p)[i];
    case KILN_DTYPE_BF16:
        return kiln_bf16_to_f32(((const uint16_t *)p)[i]);
    case KILN_DTYPE_F16:
        return kiln_f16_to_f32(((const uint16_t *)p)[i]);
    case KILN_DTYPE_F8E4M3:
        return kiln_e4m3_to_f32(((const uint8_t *)p)[i]);
    default:
        return NAN;
    }
}

/* Converts n elements of src (dtype t) to f32. */
void kiln_convert_to_f32(float *dst, const void *src, enum kiln_dtype t, size_t n);

#endif
