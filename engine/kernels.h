/* engine/kernels.h (internal): the row kernels under every matrix product — activation
 * quantization and dot products of one weight row with one activation row, per weight
 * type — as llama.cpp's CPU backend pairs them (its vec_dot_type): the activation row
 * is quantized to Q8_0, Q8_1 or Q8_K (integer dot products) or rounded to F16/BF16, so
 * our numbers follow llama.cpp's. kernels_ref.c is the plain C reference that defines
 * the results; kernels_x86.c has AVX2/FMA and AVX-512 (VNNI) variants chosen at run
 * time, tested against the reference. Not for whole-tensor ops (engine/backend_cpu.c).
 *
 *   weight type  activation type   activation block
 *   F32          F32               1 float
 *   F16          F16               1 half
 *   BF16         BF16              1 bf16
 *   Q8_0, Q4_0, Q5_0   Q8_0        34 B: d:half, qs[32]:int8
 *   Q4_1, Q5_1   Q8_1              36 B: d:half, s:half (= d * sum(qs)), qs[32]:int8
 *   Q4_K, Q5_K, Q6_K  Q8_K         292 B: d:float, qs[256]:int8, bsums[16]:int16
 *                                   (bsums[j] = sum of qs[16j .. 16j+15])
 */
#ifndef MLV_ENGINE_KERNELS_H
#define MLV_ENGINE_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "engine/engine.h"

#define ENG_NTYPES 40   /* type ids are below this */
#define ENG_TILE_MAX 16 /* largest nr and nc of a tile call */

/* x: n floats -> dst: n / block activation blocks (n a multiple of the block size). */
typedef void (*eng_quantize_fn)(const float *x, void *dst, int64_t n);
/* *s = dot(w, a) over n elements; w one weight row of its type, a the activation row in
 * the paired type. */
typedef void (*eng_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);

/* A tile of a matrix product, for prompts (many activation rows): for i < nr weight
 * rows and j < nc activation rows, s[j * ldc + i] = dot(w + i * w_stride,
 * a + j * a_stride) over n elements, each equal to vec_dot's result up to float
 * summation order. Each weight block loaded serves nc activation rows. nr <= 16 and
 * nc <= 16. */
typedef void (*eng_tile_fn)(int64_t n, int nr, int nc, float *s, size_t ldc, const void *w,
                            size_t w_stride, const void *a, size_t a_stride);

typedef struct eng_kernels {
    const char *name;                     /* "ref", "avx2", "avx512" */
    eng_vec_dot_fn vec_dot[ENG_NTYPES];   /* by weight type; NULL = unsupported */
    eng_tile_fn tile[ENG_NTYPES];         /* by weight type; NULL = vec_dot one by one */
    eng_quantize_fn quantize[ENG_NTYPES]; /* by activation type (F32 = copy) */
    /* Attention on the F16 KV cache: *s = dot(x, y) (x, y fp16), f32 accumulation. */
    void (*dot_f16)(int64_t n, float *s, const uint16_t *x, const uint16_t *y);
    /* y[i] += v[i] * a (v fp16, y f32). */
    void (*mad_f16)(int64_t n, float *y, const uint16_t *v, float a);
} eng_kernels;

/* The activation type paired with a weight type (see the table), -1 when none. */
int eng_act_type(int wtype);
/* Bytes of an activation row of n elements for a weight type. */
size_t eng_act_row_bytes(int wtype, int64_t n);

const eng_kernels *eng_kernels_ref(void);
/* The fastest set this CPU runs (cpuid at first call); MLV_KERNELS=ref|avx2|avx512 in
 * the environment forces one (falls back to ref if the CPU lacks it). */
const eng_kernels *eng_kernels_best(void);
/* A named set if this CPU can run it, else NULL (tests iterate over these). */
const eng_kernels *eng_kernels_get(const char *name);
/* kernels_x86.c: the SIMD sets ("avx2", "avx512") when this CPU runs them, else NULL
 * (always NULL off x86). Only the selection in kernels_ref.c calls it. */
const eng_kernels *eng_kernels_x86(const char *name);

/* Shared by the kernel files: the int8 conversion of the activation quantizers
 * (saturating; NaN -> 0 instead of ggml's undefined behaviour), and ggml's nearest_int
 * (round to nearest, ties to even, by adding 1.5 * 2^23; valid for |f| < 2^22, which
 * q8_K's |iscale * x| <= 127 satisfies). */
static inline int8_t eng_sat_i8(float r)
{
    if (r >= 127.0f) return 127;
    if (r <= -128.0f) return -128;
    if (r != r) return 0;
    return (int8_t)r;
}

static inline int eng_nearest_int(float f)
{
    if (!(fabsf(f) <= 4194303.0f)) return f > 0 ? 4194303 : (f < 0 ? -4194303 : 0);
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

#endif
