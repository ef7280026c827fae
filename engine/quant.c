/* engine/quant.c: the plain C reference for dequantizing tensor data (F32, F16, BF16,
 * Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) and the fp16/bf16 conversions. Block
 * layouts as ggml's ggml-common.h; the arithmetic, and its order, as ggml-quants.c's
 * dequantize_row_*, so the results are bit for bit those of llama.cpp's reference.
 * Readable over fast on purpose: fast CPU and CUDA variants are tested against this
 * file. Not for quantizing (quantize/ owns that) nor for reading files (gguf.c).
 *
 * Bytes are read one at a time in little-endian order, so blocks need no alignment
 * and the code does not depend on the host's byte order. Multiplications and
 * additions are written as separate float operations; this file must not be built
 * with -ffp-contract=fast (a fused multiply-add would change the last bit of the
 * Q4_1, Q5_1, Q4_K and Q5_K results). */
#include <inttypes.h>
#include <stdbool.h>
#include <pthread.h>
#include <string.h>

#include "engine/bytes.h"
#include "engine/engine.h"

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK_K 256
#define K_SCALE_SIZE 12

/* ------------------------------------------------------------- fp16 / bf16 ---- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* half: s eeeee mmmmmmmmmm (bias 15); float: s eeeeeeee m*23 (bias 127). */
float eng_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;

    if (exp == 0x1f) /* inf or NaN: keep the payload */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) /* normal */
        return f32_from_bits(sign | ((exp + 127 - 15) << 23) | (mant << 13));
    if (mant == 0) return f32_from_bits(sign); /* signed zero */

    /* subnormal: mant * 2^-24; normalise so the leading 1 becomes implicit */
    int e = -14;
    while (!(mant & 0x400)) {
        mant <<= 1;
        e--;
    }
    mant &= 0x3ff;
    return f32_from_bits(sign | ((uint32_t)(e + 127) << 23) | (mant << 13));
}

uint16_t eng_fp32_to_fp16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t exp = (u >> 23) & 0xff;
    uint32_t mant = u & 0x7fffff;

    if (exp == 0xff) {
        if (mant == 0) return sign | 0x7c00; /* inf */
        uint16_t m = (uint16_t)(mant >> 13);
        return sign | 0x7c00 | (m ? m : 0x200); /* NaN stays NaN */
    }

    int e = (int)exp - 127 + 15;         /* the half's biased exponent, if normal */
    if (e >= 0x1f) return sign | 0x7c00; /* overflow */

    uint32_t m; /* significand with the implicit 1, and how far to shift it right */
    int shift;
    if (e >= 1) {
        m = mant | 0x800000;
        shift = 13;
    } else {
        /* subnormal half (or zero): value = m * 2^-24 after shifting */
        if (exp == 0) return sign;   /* float zero or subnormal: far below 2^-25 */
        shift = 14 - e;              /* 13 + (1 - e) */
        if (shift > 25) return sign; /* below half the smallest subnormal */
        m = mant | 0x800000;
        e = 0;
    }

    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++; /* nearest, ties to even */

    if (e == 0) /* q may have carried into 0x400: the smallest normal, still right */
        return sign | (uint16_t)q;
    /* q is 1.mmmmmmmmmm (0x400..0x800); a carry to 0x800 bumps the exponent */
    uint32_t r = ((uint32_t)e << 10) + (q - 0x400);
    if (r >= 0x7c00) return sign | 0x7c00;
    return sign | (uint16_t)r;
}

float eng_bf16_to_fp32(uint16_t b)
{
    return f32_from_bits((uint32_t)b << 16);
}

/* ----------------------------------------------------------- block kernels ----
 * Each takes nb blocks at src and writes nb * block_elems floats at y. */

/* F32: x (n,) */
static void deq_f32(const uint8_t *src, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = rd_f32(src + 4 * i);
}

/* F16: x (n,) halves, through a table of every half's value made with
 * eng_fp16_to_fp32 (exactly its results; F16 models are the common input of the
 * converter and the quantizer, and a lookup is several times faster). */
static float f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;
static void f16_table_init(void)
{
    for (uint32_t h = 0; h < 65536; h++)
        f16_table[h] = eng_fp16_to_fp32((uint16_t)h);
}

static void deq_f16(const uint8_t *src, float *y, int64_t n)
{
    pthread_once(&f16_once, f16_table_init);
    for (int64_t i = 0; i < n; i++)
        y[i] = f16_table[rd16(src + 2 * i)];
}

/* BF16: x (n,) bfloat16 */
static void deq_bf16(const uint8_t *src, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = eng_bf16_to_fp32(rd16(src + 2 * i));
}

/* block_q8_0 (34 bytes): { half d; int8 qs[32]; }   y[j] = qs[j] * d */
static void deq_q8_0(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 34, y += QK8_0) {
        const float d = rd_half(src);
        const uint8_t *qs = src + 2;
        for (int j = 0; j < QK8_0; j++)
            y[j] = (float)(int8_t)qs[j] * d;
    }
}

/* block_q4_0 (18 bytes): { half d; uint8 qs[16]; }
 * qs[j] holds element j in its low nibble and element j+16 in its high nibble;
 * y = (q - 8) * d */
static void deq_q4_0(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 18, y += QK4_0) {
        const float d = rd_half(src);
        const uint8_t *qs = src + 2;
        for (int j = 0; j < QK4_0 / 2; j++) {
            const int x0 = (qs[j] & 0x0f) - 8;
            const int x1 = (qs[j] >> 4) - 8;
            y[j] = (float)x0 * d;
            y[j + QK4_0 / 2] = (float)x1 * d;
        }
    }
}

/* block_q4_1 (20 bytes): { half d; half m; uint8 qs[16]; }   nibbles as q4_0;
 * y = q * d + m */
static void deq_q4_1(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 20, y += QK4_1) {
        const float d = rd_half(src);
        const float m = rd_half(src + 2);
        const uint8_t *qs = src + 4;
        for (int j = 0; j < QK4_1 / 2; j++) {
            const int x0 = qs[j] & 0x0f;
            const int x1 = qs[j] >> 4;
            const float p0 = (float)x0 * d, p1 = (float)x1 * d;
            y[j] = p0 + m;
            y[j + QK4_1 / 2] = p1 + m;
        }
    }
}

/* block_q5_0 (22 bytes): { half d; uint8 qh[4]; uint8 qs[16]; }
 * qh is a little-endian u32 whose bit j is the fifth bit of element j (0..31); the low
 * four bits are the nibbles of qs as in q4_0.   y = (q - 16) * d */
static void deq_q5_0(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 22, y += QK5_0) {
        const float d = rd_half(src);
        const uint32_t qh = rd32(src + 2);
        const uint8_t *qs = src + 6;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const uint32_t h0 = ((qh >> j) << 4) & 0x10;
            const uint32_t h1 = (qh >> (j + 12)) & 0x10; /* bit j+16, moved to 0x10 */
            const int x0 = (int)((qs[j] & 0x0f) | h0) - 16;
            const int x1 = (int)((qs[j] >> 4) | h1) - 16;
            y[j] = (float)x0 * d;
            y[j + QK5_0 / 2] = (float)x1 * d;
        }
    }
}

/* block_q5_1 (24 bytes): { half d; half m; uint8 qh[4]; uint8 qs[16]; }   bits as
 * q5_0;  y = q * d + m */
static void deq_q5_1(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 24, y += QK5_1) {
        const float d = rd_half(src);
        const float m = rd_half(src + 2);
        const uint32_t qh = rd32(src + 4);
        const uint8_t *qs = src + 8;
        for (int j = 0; j < QK5_1 / 2; j++) {
            const uint32_t h0 = ((qh >> j) << 4) & 0x10;
            const uint32_t h1 = (qh >> (j + 12)) & 0x10;
            const int x0 = (int)((qs[j] & 0x0f) | h0);
            const int x1 = (int)((qs[j] >> 4) | h1);
            const float p0 = (float)x0 * d, p1 = (float)x1 * d;
            y[j] = p0 + m;
            y[j + QK5_1 / 2] = p1 + m;
        }
    }
}

/* The 6-bit scale and min of sub-block j (0..7) from Q4_K's 12 packed bytes:
 *   bytes 0-3:  scales 0-3 in the low 6 bits; top 2 bits = high bits of scales 4-7
 *   bytes 4-7:  mins 0-3 in the low 6 bits;   top 2 bits = high bits of mins 4-7
 *   bytes 8-11: low nibble = low 4 bits of scales 4-7, high nibble = of mins 4-7
 * (ggml's get_scale_min_k4). */
static void get_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* block_q4_K (144 bytes): { half d; half dmin; uint8 scales[12]; uint8 qs[128]; }
 * A super-block of 256 = 8 sub-blocks of 32, each with a 6-bit scale sc and min m.
 * Each 32 bytes of qs hold two sub-blocks: low nibbles the first, high the second.
 * y = (d * sc) * q - (dmin * m)
 * block_q5_K (176 bytes): { half d; half dmin; uint8 scales[12]; uint8 qh[32];
 * uint8 qs[128]; }  Scales, mins and nibbles as Q4_K; the fifth bit of element l of
 * sub-block j (l < 32) is bit j of qh[l] (so per 64 elements: bits u1 = 1 << 2k and
 * u2 = 2 << 2k, as ggml's loop shifts them); q in [0, 31]. Both as ggml's loops. */
static void deq_k4(const uint8_t *src, float *y, int64_t nb, bool five)
{
    const size_t bb = five ? 176 : 144;
    for (int64_t i = 0; i < nb; i++, src += bb) {
        const float d = rd_half(src);
        const float dmin = rd_half(src + 2);
        const uint8_t *scales = src + 4;
        const uint8_t *qh = src + 4 + K_SCALE_SIZE; /* Q5_K only */
        const uint8_t *q = five ? qh + QK_K / 8 : qh;
        int is = 0;
        unsigned u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            uint8_t sc, m;
            get_scale_min_k4(is + 0, scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            get_scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                const int h = five && (qh[l] & u1) ? 16 : 0;
                const float p = d1 * (float)((q[l] & 0x0f) + h);
                *y++ = p - m1;
            }
            for (int l = 0; l < 32; l++) {
                const int h = five && (qh[l] & u2) ? 16 : 0;
                const float p = d2 * (float)((q[l] >> 4) + h);
                *y++ = p - m2;
            }
            q += 32;
            is += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

static void deq_q4_k(const uint8_t *src, float *y, int64_t nb)
{
    deq_k4(src, y, nb, false);
}

static void deq_q5_k(const uint8_t *src, float *y, int64_t nb)
{
    deq_k4(src, y, nb, true);
}

/* block_q6_K (210 bytes): { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; }
 * A super-block of 256 = 16 sub-blocks of 16, each with an int8 scale. Per half
 * (128 elements: 64 bytes of ql, 32 of qh, 8 scales), element l (0..31) of each
 * quarter takes its low 4 bits from:
 *   y[l]: ql[l] low,  y[l+32]: ql[l+32] low,  y[l+64]: ql[l] high,  y[l+96]: ql[l+32] high
 * and its top 2 bits from qh[l] bits 0-1, 2-3, 4-5, 6-7 respectively.
 * y = (d * sc) * (q - 32) */
static void deq_q6_k(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 210) {
        const uint8_t *ql = src;
        const uint8_t *qh = src + QK_K / 2;
        const int8_t *sc = (const int8_t *)(src + QK_K / 2 + QK_K / 4);
        const float d = rd_half(src + QK_K / 2 + QK_K / 4 + QK_K / 16);
        for (int n = 0; n < QK_K; n += 128) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int)((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * (float)sc[is + 0] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* -------------------------------------------------------------- dispatch ---- */

int eng_dequantize_row(int type, const void *src, float *dst, int64_t n)
{
    const char *name = eng_type_name(type);
    size_t blck = 0, bytes = 0;
    void (*fn)(const uint8_t *, float *, int64_t) = NULL;
    bool per_element = false; /* fn takes elements, not blocks */

    switch (type) {
    case ENG_F32: fn = deq_f32, per_element = true; break;
    case ENG_F16: fn = deq_f16, per_element = true; break;
    case ENG_BF16: fn = deq_bf16, per_element = true; break;
    case ENG_Q8_0: fn = deq_q8_0; break;
    case ENG_Q4_0: fn = deq_q4_0; break;
    case ENG_Q4_1: fn = deq_q4_1; break;
    case ENG_Q5_0: fn = deq_q5_0; break;
    case ENG_Q5_1: fn = deq_q5_1; break;
    case ENG_Q4_K: fn = deq_q4_k; break;
    case ENG_Q5_K: fn = deq_q5_k; break;
    case ENG_Q6_K: fn = deq_q6_k; break;
    default: break;
    }
    if (!fn) {
        if (name)
            return core_err_set(MLV_EUNSUPPORTED,
                                "dequantize: tensor type %s (%d) is not supported", name, type);
        return core_err_set(MLV_EUNSUPPORTED, "dequantize: unknown tensor type %d", type);
    }
    eng_type_block(type, &blck, &bytes);
    if (n < 0 || (uint64_t)n % blck)
        return core_err_set(MLV_EINVAL,
                            "dequantize %s: %" PRId64 " elements is not a multiple of the "
                            "block size %zu",
                            name, n, blck);
    if (n == 0) return 0;
    if (!src || !dst) return core_err_set(MLV_EINVAL, "dequantize %s: NULL buffer", name);
    fn((const uint8_t *)src, dst, per_element ? n : n / (int64_t)blck);
    return 0;
}
