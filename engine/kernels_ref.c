/* engine/kernels_ref.c: the plain C reference row kernels (engine/kernels.h) — activation
 * quantizers, weight-row x activation-row dot products and tiles of them — whose results
 * define the engine's numbers, and the choice of kernel set at run time
 * (eng_kernels_best/get).
 * The arithmetic and its order are those of llama.cpp's portable CPU code: ggml-quants.c's
 * quantize_row_q8_0_ref / q8_1_ref / q8_K_ref and ggml-cpu's ggml_vec_dot_*_generic
 * (integer sums per block, then scaled), ggml_vec_dot_f32/f16/bf16 (double accumulation)
 * and GGML_FP32_TO_BF16. Readable over fast on purpose: kernels_x86.c is tested against
 * this file. Not for whole tensors (backend_cpu.c) nor weight quantization (quantize/).
 *
 * Blocks are read and written byte by byte (little-endian fields, no alignment needed).
 * Products and sums are separate statements so that no compiler fuses them into a
 * multiply-add (that would change last bits against ggml's generic code).
 *
 * Where this file departs from ggml, on purpose:
 * - q8_K of an all-zero block: ggml leaves bsums unwritten; here they are zero.
 * - Non-finite activations: ggml converts NaN/inf products to int8 (undefined in C);
 *   here they saturate (NaN -> 0), so a row with inf or NaN gives garbage but no UB. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/bytes.h"
#include "engine/kernels.h"

#define QK8_0 32
#define QK_K 256

/* ---------------------------------------------------------------- helpers ---- */

static void wr_f32(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    p[0] = (uint8_t)u;
    p[1] = (uint8_t)(u >> 8);
    p[2] = (uint8_t)(u >> 16);
    p[3] = (uint8_t)(u >> 24);
}

/* ggml's GGML_FP32_TO_BF16: round to nearest even; a NaN stays a (quiet) NaN. */
static uint16_t fp32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

/* ------------------------------------------------------- activation quantizers ----
 * Each takes x: (n,) floats, n a multiple of the block size, and writes n / block
 * blocks at dst. */

/* F32: a copy. */
static void quantize_f32(const float *x, void *dst, int64_t n)
{
    memcpy(dst, x, (size_t)n * sizeof(float));
}

/* F16: each value rounded to the nearest half (ties to even). */
static void quantize_f16(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    for (int64_t i = 0; i < n; i++)
        wr16(y + 2 * i, eng_fp32_to_fp16(x[i]));
}

/* BF16: the upper 16 bits of each float, rounded to nearest even. */
static void quantize_bf16(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    for (int64_t i = 0; i < n; i++)
        wr16(y + 2 * i, fp32_to_bf16(x[i]));
}

/* The largest |x[j]| of a block, as ggml's MAX(amax, fabsf(x)) loop finds it. */
static float block_amax(const float *x, int n)
{
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        const float v = fabsf(x[j]);
        amax = amax > v ? amax : v;
    }
    return amax;
}

/* block_q8_0 (34 B): { half d; int8 qs[32]; }  d = amax / 127, qs = round(x / d) with
 * x * (1/d) rounded half away from zero (roundf), as quantize_row_q8_0_ref. */
static void quantize_q8_0(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0, y += 34) {
        const float amax = block_amax(x, QK8_0);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        wr16(y, eng_fp32_to_fp16(d));
        for (int j = 0; j < QK8_0; j++) {
            const float v = x[j] * id;
            y[2 + j] = (uint8_t)eng_sat_i8(roundf(v));
        }
    }
}

/* block_q8_1 (36 B): { half d; half s; int8 qs[32]; }  d and qs as q8_0;
 * s = fp16(d * sum(qs)) with the float d, before its rounding to half (ggml's
 * quantize_row_q8_1_ref). */
static void quantize_q8_1(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0, y += 36) {
        const float amax = block_amax(x, QK8_0);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        wr16(y, eng_fp32_to_fp16(d));
        for (int j = 0; j < QK8_0; j++) {
            const float v = x[j] * id;
            const int8_t q = eng_sat_i8(roundf(v));
            y[4 + j] = (uint8_t)q;
            sum += q;
        }
        wr16(y + 2, eng_fp32_to_fp16((float)sum * d));
    }
}

/* block_q8_K (292 B): { float d; int8 qs[256]; int16 bsums[16]; }
 * max = the x with the largest |x| (the first such); iscale = -127 / max;
 * qs = min(127, eng_nearest_int(iscale * x)) (ties to even); d = 1 / iscale (so d < 0 when
 * max > 0: the largest value becomes -127); bsums[j] = sum of qs[16j .. 16j+15].
 * An all-zero block gets d = 0 and zeros (ggml's quantize_row_q8_K_ref). */
static void quantize_q8_k(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, y += 292) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(y, 0, 292);
            continue;
        }
        const float iscale = -127.0f / max;
        int8_t *qs = (int8_t *)(y + 4);
        for (int j = 0; j < QK_K; j++) {
            const float v = iscale * x[j];
            const int q = eng_nearest_int(v);
            qs[j] = (int8_t)(q < 127 ? (q > -128 ? q : -128) : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += qs[16 * j + l];
            wr16(y + 4 + QK_K + 2 * j, (uint16_t)(int16_t)sum);
        }
        wr_f32(y, 1.0f / iscale);
    }
}

/* ------------------------------------------------------------ dot products ----
 * Each: *s = dot(w, a); w: (n,) one weight row, a: (n,) the activation row in the
 * paired type. Float rows accumulate in double (ggml_float), quantized rows sum
 * integers per block and scale them in float. */

static void vec_dot_f32(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float p = rd_f32(x + 4 * i) * rd_f32(y + 4 * i);
        sum += (double)p;
    }
    *s = (float)sum;
}

static void vec_dot_f16(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float p = rd_half(x + 2 * i) * rd_half(y + 2 * i);
        sum += (double)p;
    }
    *s = (float)sum;
}

static void vec_dot_bf16(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float p = eng_bf16_to_fp32(rd16(x + 2 * i)) * eng_bf16_to_fp32(rd16(y + 2 * i));
        sum += (double)p;
    }
    *s = (float)sum;
}

/* Q8_0 (34 B) x Q8_0: sumf += sumi * (dx * dy). */
static void vec_dot_q8_0(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++, x += 34, y += 34) {
        const int8_t *qx = (const int8_t *)(x + 2), *qy = (const int8_t *)(y + 2);
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++)
            sumi += qx[j] * qy[j];
        const float d = rd_half(x) * rd_half(y);
        const float p = (float)sumi * d;
        sumf += p;
    }
    *s = sumf;
}

/* Q4_0 (18 B: d, qs[16]) x Q8_0: element j in the low nibble of qs[j], j+16 in the
 * high one, value q - 8.   sumf += sumi * dx * dy (left to right). */
static void vec_dot_q4_0(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++, x += 18, y += 34) {
        const uint8_t *qx = x + 2;
        const int8_t *qy = (const int8_t *)(y + 2);
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < 16; j++) {
            sumi0 += ((qx[j] & 0x0f) - 8) * qy[j];
            sumi1 += ((qx[j] >> 4) - 8) * qy[j + 16];
        }
        const float p = (float)(sumi0 + sumi1) * rd_half(x);
        const float q = p * rd_half(y);
        sumf += q;
    }
    *s = sumf;
}

/* Q4_1 (20 B: d, m, qs[16]) x Q8_1: x = q*d + m, so
 * dot = dx*dy * sum(q*qy) + m * (dy * sum(qy)) = (dx*dy) * sumi + m * s. */
static void vec_dot_q4_1(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++, x += 20, y += 36) {
        const uint8_t *qx = x + 4;
        const int8_t *qy = (const int8_t *)(y + 4);
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < 16; j++) {
            sumi0 += (qx[j] & 0x0f) * qy[j];
            sumi1 += (qx[j] >> 4) * qy[j + 16];
        }
        const float d = rd_half(x) * rd_half(y);
        const float p = d * (float)(sumi0 + sumi1);
        const float m = rd_half(x + 2) * rd_half(y + 2);
        const float t = p + m;
        sumf += t;
    }
    *s = sumf;
}

/* The five-bit values of a Q5 block: low nibbles from qs (as Q4), bit 4 of element j
 * from bit j of the little-endian u32 qh. */
static void q5_values(uint32_t qh, const uint8_t *qs, int v[32])
{
    for (int j = 0; j < 16; j++) {
        v[j] = (qs[j] & 0x0f) | (int)(((qh >> j) << 4) & 0x10);
        v[j + 16] = (qs[j] >> 4) | (int)((qh >> (j + 12)) & 0x10);
    }
}

/* Q5_0 (22 B: d, qh[4], qs[16]) x Q8_0: value q - 16.  sumf += (dx*dy) * sumi. */
static void vec_dot_q5_0(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++, x += 22, y += 34) {
        const int8_t *qy = (const int8_t *)(y + 2);
        int v[32], sumi = 0;
        q5_values(rd32(x + 2), x + 6, v);
        for (int j = 0; j < 32; j++)
            sumi += (v[j] - 16) * qy[j];
        const float d = rd_half(x) * rd_half(y);
        const float p = d * (float)sumi;
        sumf += p;
    }
    *s = sumf;
}

/* Q5_1 (24 B: d, m, qh[4], qs[16]) x Q8_1: as Q4_1 with five-bit q. */
static void vec_dot_q5_1(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; i++, x += 24, y += 36) {
        const int8_t *qy = (const int8_t *)(y + 4);
        int v[32], sumi = 0;
        q5_values(rd32(x + 4), x + 8, v);
        for (int j = 0; j < 32; j++)
            sumi += v[j] * qy[j];
        const float d = rd_half(x) * rd_half(y);
        const float p = d * (float)sumi;
        const float m = rd_half(x + 2) * rd_half(y + 2);
        const float t = p + m;
        sumf += t;
    }
    *s = sumf;
}

/* Q4_K's 6-bit scale and min of sub-block j (0..7) from its 12 packed bytes: bytes 0-3
 * hold scales 0-3 (low 6 bits) and the top bits of scales 4-7, bytes 4-7 the same for
 * the mins, bytes 8-11 the low nibbles of scales 4-7 (low) and mins 4-7 (high). */
static void scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Q4_K (144 B: d, dmin, scales[12], qs[128]) x Q8_K (292 B: d:float, qs[256],
 * bsums[16]); with q5, Q5_K (below). Element 64k+l (l < 32) is the low nibble of qs[32k+l],
 * 64k+32+l the high one; sub-block j (32 elements) has scale sc_j and min m_j: x = d*sc*q - dmin*m,
 * so dot = d*dy * sum_j sc_j * sum(q*qy) - dmin*dy * sum_j m_j * (bsums[2j] + bsums[2j+1]). The
 * float accumulation is ggml's generic one: eight lanes of partial sums (element l mod 8) carried
 * across super-blocks, the mins term in sumf, the lanes added last. */
static void vec_dot_q4q5_k(int64_t n, float *s, const void *w, const void *a, bool q5)
{
    const uint8_t *x = w, *y = a;
    const size_t xb = q5 ? 176 : 144;
    float sums[8] = {0};
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++, x += xb, y += 292) {
        const uint8_t *scales = x + 4, *qh = x + 16, *q4 = x + (q5 ? 48 : 16);
        const int8_t *q8 = (const int8_t *)(y + 4);
        int8_t v[QK_K];
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) {
                v[64 * k + l] = (int8_t)(q4[32 * k + l] & 0x0f);
                v[64 * k + 32 + l] = (int8_t)(q4[32 * k + l] >> 4);
                if (q5) {
                    v[64 * k + l] |= (int8_t)(((qh[l] >> (2 * k)) & 1) << 4);
                    v[64 * k + 32 + l] |= (int8_t)(((qh[l] >> (2 * k + 1)) & 1) << 4);
                }
            }
        int sumi_mins = 0;
        int32_t lanes[8] = {0};
        for (int j = 0; j < 8; j++) {
            int sc, m;
            scale_min_k4(j, scales, &sc, &m);
            sumi_mins +=
                m * ((int16_t)rd16(y + 4 + QK_K + 4 * j) + (int16_t)rd16(y + 4 + QK_K + 4 * j + 2));
            for (int l = 0; l < 32; l++)
                lanes[l % 8] += sc * (q8[32 * j + l] * v[32 * j + l]);
        }
        const float dy = rd_f32(y);
        const float d = rd_half(x) * dy;
        for (int l = 0; l < 8; l++) {
            const float p = d * (float)lanes[l];
            sums[l] += p;
        }
        const float dmin = rd_half(x + 2) * dy;
        const float pm = dmin * (float)sumi_mins;
        sumf -= pm;
    }
    for (int l = 0; l < 8; l++)
        sumf += sums[l];
    *s = sumf;
}

static void vec_dot_q4_k(int64_t n, float *s, const void *w, const void *a)
{
    vec_dot_q4q5_k(n, s, w, a, false);
}

/* Q5_K (176 B: d, dmin, scales[12], qh[32], qs[128]) x Q8_K: as Q4_K with q in
 * [0, 31], its fifth bit (element l < 32 of sub-block j) bit j of qh[l] (ggml's
 * ggml_vec_dot_q5_K_q8_K_generic; the same sums in the same order). */
static void vec_dot_q5_k(int64_t n, float *s, const void *w, const void *a)
{
    vec_dot_q4q5_k(n, s, w, a, true);
}

/* Q6_K (210 B: ql[128], qh[64], scales[16]:int8, d) x Q8_K. Per 128 elements (64 B of
 * ql, 32 of qh), element l (< 32) of each quarter takes its low four bits from
 * ql[l] low, ql[l+32] low, ql[l] high, ql[l+32] high and its top two from qh[l] bits
 * 0-1, 2-3, 4-5, 6-7; value q - 32; sub-block j (16 elements) has scale sc_j.
 *   dot = d*dy * sum_j sc_j * sum((q-32)*qy), accumulated as Q4_K's. */
static void vec_dot_q6_k(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    float sums[8] = {0};
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++, x += 210, y += 292) {
        const uint8_t *ql = x, *qh = x + 128;
        const int8_t *sc = (const int8_t *)(x + 192);
        const int8_t *q8 = (const int8_t *)(y + 4);
        int8_t v[QK_K];
        for (int h = 0; h < 2; h++, ql += 64, qh += 32)
            for (int l = 0; l < 32; l++) {
                int8_t *o = v + 128 * h + l;
                o[0] = (int8_t)(((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32);
                o[32] = (int8_t)(((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        int32_t lanes[8] = {0};
        for (int j = 0; j < 16; j++)
            for (int l = 0; l < 16; l++)
                lanes[l % 8] += sc[j] * (q8[16 * j + l] * v[16 * j + l]);
        const float d = rd_half(x + 208) * rd_f32(y);
        for (int l = 0; l < 8; l++) {
            const float p = d * (float)lanes[l];
            sums[l] += p;
        }
    }
    for (int l = 0; l < 8; l++)
        sumf += sums[l];
    *s = sumf;
}

/* ------------------------------------------------------------------- tiles ----
 * A tile of a product (kernels.h's eng_tile_fn): s[j * ldc + i] = dot(weight row i,
 * activation row j) for i < nr, j < nc, each by the row kernel above — the reference
 * defines a tile as its dot products. */
#define DEF_TILE(NAME, DOT)                                                                        \
    static void NAME(int64_t n, int nr, int nc, float *s, size_t ldc, const void *w,               \
                     size_t w_stride, const void *a, size_t a_stride)                              \
    {                                                                                              \
        for (int j = 0; j < nc; j++)                                                               \
            for (int i = 0; i < nr; i++)                                                           \
                DOT(n, s + (size_t)j * ldc + i, (const uint8_t *)w + (size_t)i * w_stride,         \
                    (const uint8_t *)a + (size_t)j * a_stride);                                    \
    }

DEF_TILE(tile_f32, vec_dot_f32)
DEF_TILE(tile_f16, vec_dot_f16)
DEF_TILE(tile_bf16, vec_dot_bf16)
DEF_TILE(tile_q8_0, vec_dot_q8_0)
DEF_TILE(tile_q4_0, vec_dot_q4_0)
DEF_TILE(tile_q4_1, vec_dot_q4_1)
DEF_TILE(tile_q5_0, vec_dot_q5_0)
DEF_TILE(tile_q5_1, vec_dot_q5_1)
DEF_TILE(tile_q4_k, vec_dot_q4_k)
DEF_TILE(tile_q5_k, vec_dot_q5_k)
DEF_TILE(tile_q6_k, vec_dot_q6_k)

/* ----------------------------------------------------- attention on F16 KV ---- */

/* x, y: (n,) halves; f32 products, double accumulation (as vec_dot_f16). */
static void dot_f16(int64_t n, float *s, const uint16_t *x, const uint16_t *y)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float p = eng_fp16_to_fp32(x[i]) * eng_fp16_to_fp32(y[i]);
        sum += (double)p;
    }
    *s = (float)sum;
}

/* y: (n,) floats += v: (n,) halves * a; a product, then a sum (no fused multiply-add). */
static void mad_f16(int64_t n, float *y, const uint16_t *v, float a)
{
    for (int64_t i = 0; i < n; i++) {
        const float p = eng_fp16_to_fp32(v[i]) * a;
        y[i] += p;
    }
}

/* ------------------------------------------------------------------ tables ---- */

static const eng_kernels ref_kernels = {
    .name = "ref",
    .vec_dot =
        {
            [ENG_F32] = vec_dot_f32,
            [ENG_F16] = vec_dot_f16,
            [ENG_BF16] = vec_dot_bf16,
            [ENG_Q8_0] = vec_dot_q8_0,
            [ENG_Q4_0] = vec_dot_q4_0,
            [ENG_Q4_1] = vec_dot_q4_1,
            [ENG_Q5_0] = vec_dot_q5_0,
            [ENG_Q5_1] = vec_dot_q5_1,
            [ENG_Q4_K] = vec_dot_q4_k,
            [ENG_Q5_K] = vec_dot_q5_k,
            [ENG_Q6_K] = vec_dot_q6_k,
        },
    .tile =
        {
            [ENG_F32] = tile_f32,
            [ENG_F16] = tile_f16,
            [ENG_BF16] = tile_bf16,
            [ENG_Q8_0] = tile_q8_0,
            [ENG_Q4_0] = tile_q4_0,
            [ENG_Q4_1] = tile_q4_1,
            [ENG_Q5_0] = tile_q5_0,
            [ENG_Q5_1] = tile_q5_1,
            [ENG_Q4_K] = tile_q4_k,
            [ENG_Q5_K] = tile_q5_k,
            [ENG_Q6_K] = tile_q6_k,
        },
    .quantize =
        {
            [ENG_F32] = quantize_f32,
            [ENG_F16] = quantize_f16,
            [ENG_BF16] = quantize_bf16,
            [ENG_Q8_0] = quantize_q8_0,
            [ENG_Q8_1] = quantize_q8_1,
            [ENG_Q8_K] = quantize_q8_k,
        },
    .dot_f16 = dot_f16,
    .mad_f16 = mad_f16,
};

int eng_act_type(int wtype)
{
    switch (wtype) {
    case ENG_F32: return ENG_F32;
    case ENG_F16: return ENG_F16;
    case ENG_BF16: return ENG_BF16;
    case ENG_Q8_0:
    case ENG_Q4_0:
    case ENG_Q5_0: return ENG_Q8_0;
    case ENG_Q4_1:
    case ENG_Q5_1: return ENG_Q8_1;
    case ENG_Q4_K:
    case ENG_Q5_K:
    case ENG_Q6_K: return ENG_Q8_K;
    default: return -1;
    }
}

size_t eng_act_row_bytes(int wtype, int64_t n)
{
    if (n < 0) return 0;
    switch (eng_act_type(wtype)) {
    case ENG_F32: return (size_t)n * 4;
    case ENG_F16:
    case ENG_BF16: return (size_t)n * 2;
    case ENG_Q8_0: return (size_t)(n / QK8_0) * 34;
    case ENG_Q8_1: return (size_t)(n / QK8_0) * 36;
    case ENG_Q8_K: return (size_t)(n / QK_K) * 292;
    default: return 0;
    }
}

const eng_kernels *eng_kernels_ref(void)
{
    return &ref_kernels;
}

const eng_kernels *eng_kernels_get(const char *name)
{
    if (!name) return NULL;
    if (!strcmp(name, "ref")) return &ref_kernels;
    return eng_kernels_x86(name);
}

const eng_kernels *eng_kernels_best(void)
{
    const char *force = getenv("MLV_KERNELS");
    if (force && *force) {
        const eng_kernels *k = eng_kernels_get(force);
        if (!k) {
            core_log(CORE_LOG_WARN, "MLV_KERNELS=%s: not available on this CPU; using ref", force);
            return &ref_kernels;
        }
        return k;
    }
    const eng_kernels *k = eng_kernels_x86("avx512");
    if (!k) k = eng_kernels_x86("avx2");
    return k ? k : &ref_kernels;
}
