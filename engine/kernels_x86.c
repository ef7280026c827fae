/* engine/kernels_x86.c: x86-64 SIMD row kernels (engine/kernels.h) — "avx2" (AVX2, FMA,
 * F16C) and "avx512" (AVX-512 F/BW/VL/DQ with VNNI) — each a variant of kernels_ref.c,
 * which defines the results and against which tests/test_engine_kernels.c checks these.
 * The project is not built with -march=native: every function carries its own target
 * attribute and a set is handed out only when cpuid and xgetbv say the CPU and the OS
 * run it (eng_kernels_x86). On other architectures this file defines no kernels.
 *
 * What is identical to the reference and what is not:
 * - Activation quantizers give the same bytes: q8_0/q8_1 use d = amax/127 and
 *   x * (1/d) rounded half away from zero, as ggml's quantize_row_q8_0_ref (ggml's own
 *   AVX2 code multiplies by 127/amax and rounds ties to even, so llama.cpp's x86 builds
 *   can differ from its reference in a last bit of a scale or a tie); q8_K rounds ties
 *   to even like the reference's nearest_int; blocks whose scale is not finite (inf or
 *   NaN input, |max| below ~1e-37) go through a scalar copy of the reference. F16 and
 *   BF16 rounding is exact, NaNs included.
 * - Dot products sum the same integers per block; only the float accumulation of the
 *   scaled block sums differs in order (several vector lanes, fused multiply-adds), so
 *   results agree with the reference to float rounding, not bit for bit. F32/F16/BF16
 *   rows accumulate in float (ggml's SIMD code does the same) where the reference uses
 *   double.
 * - mad_f16 multiplies and adds separately, bit for bit the reference.
 *
 * Activation blocks must come from the quantizers: the integer tricks below (u8 x s8
 * products, sign transfers) rely on their qs lying in [-127, 127]. The quantizers only
 * write -128 where the block's scale is 0 or its inverse overflows (subnormal inputs),
 * and such a block contributes 0 either way. Weights may hold any bytes. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "engine/kernels.h"

const eng_kernels *eng_kernels_x86(const char *name);

#if defined(__x86_64__)

#include <cpuid.h>
#include <immintrin.h>

#define TA2 __attribute__((target("avx2,fma,f16c")))
#define TA5 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

#define QK 32
#define QK_K 256

/* ------------------------------------------------------------------ scalar ---- */

static inline uint16_t ld16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline int ld32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline float ldf(const uint8_t *p)
{
    float v;
    memcpy(&v, p, 4);
    return v;
}

static inline void st16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, 2);
}

/* The reference's saturating int8 conversion and nearest_int, for the blocks the
 * vector quantizers hand back to scalar code (non-finite scales). */
static int8_t sat_i8(float r)
{
    if (r >= 127.0f) return 127;
    if (r <= -128.0f) return -128;
    if (r != r) return 0;
    return (int8_t)r;
}

static int nearest_int(float f)
{
    if (!(fabsf(f) <= 4194303.0f)) return f > 0 ? 4194303 : (f < 0 ? -4194303 : 0);
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* One q8_0 (s == NULL) or q8_1 block, scalar, given its amax: the reference's loop. */
static void q8_block_scalar(const float *x, uint8_t *y, float amax, bool with_sum)
{
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int8_t *qs = (int8_t *)(y + (with_sum ? 4 : 2));
    int sum = 0;
    st16(y, eng_fp32_to_fp16(d));
    for (int j = 0; j < QK; j++) {
        const float v = x[j] * id;
        qs[j] = sat_i8(roundf(v));
        sum += qs[j];
    }
    if (with_sum) st16(y + 2, eng_fp32_to_fp16((float)sum * d));
}

/* One q8_K block, scalar, given max (the x of largest |x|; not zero). */
static void q8k_block_scalar(const float *x, uint8_t *y, float max)
{
    const float iscale = -127.0f / max;
    int8_t *qs = (int8_t *)(y + 4);
    for (int j = 0; j < QK_K; j++) {
        const float v = iscale * x[j];
        const int q = nearest_int(v);
        qs[j] = (int8_t)(q < 127 ? (q > -128 ? q : -128) : 127);
    }
    for (int j = 0; j < 16; j++) {
        int sum = 0;
        for (int l = 0; l < 16; l++)
            sum += qs[16 * j + l];
        st16(y + 4 + QK_K + 2 * j, (uint16_t)(int16_t)sum);
    }
    const float d = 1.0f / iscale;
    memcpy(y, &d, 4);
}

/* Q4_K's scales and mins as 16 bytes: sc[0..7], m[0..7] (the 6-bit fields of the 12
 * packed bytes; see kernels_ref.c's scale_min_k4, which this unpacks word-wise). */
static inline void q4k_scales_mins(const uint8_t *packed, uint32_t out[4])
{
    uint32_t u[3];
    memcpy(u, packed, 12);
    out[0] = u[0] & 0x3f3f3f3f;                                              /* sc 0-3 */
    out[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);        /* sc 4-7 */
    out[2] = u[1] & 0x3f3f3f3f;                                              /* m 0-3 */
    out[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4); /* m 4-7 */
}

/* ================================================================== AVX2 ====== */

TA2 static inline float hsum_ps(__m256 v)
{
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

TA2 static inline int hsum_epi32(__m256i v)
{
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xb1));
    return _mm_cvtsi128_si32(r);
}

TA2 static inline float hmax_ps(__m256 v)
{
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

TA2 static inline float half_to_f32(const uint8_t *p)
{
    return _cvtsh_ss(ld16(p));
}

/* Eight halves at p, p + stride, ..., as floats (a block field across 8 blocks). */
TA2 static inline __m256 halves8(const uint8_t *p, size_t st)
{
    __m128i v = _mm_cvtsi32_si128(ld16(p));
    v = _mm_insert_epi16(v, ld16(p + st), 1);
    v = _mm_insert_epi16(v, ld16(p + 2 * st), 2);
    v = _mm_insert_epi16(v, ld16(p + 3 * st), 3);
    v = _mm_insert_epi16(v, ld16(p + 4 * st), 4);
    v = _mm_insert_epi16(v, ld16(p + 5 * st), 5);
    v = _mm_insert_epi16(v, ld16(p + 6 * st), 6);
    v = _mm_insert_epi16(v, ld16(p + 7 * st), 7);
    return _mm256_cvtph_ps(v);
}

/* Four 32-bit words at p, p + stride, ... */
TA2 static inline __m128i dwords4(const uint8_t *p, size_t st)
{
    __m128i v = _mm_cvtsi32_si128(ld32(p));
    v = _mm_insert_epi32(v, ld32(p + st), 1);
    v = _mm_insert_epi32(v, ld32(p + 2 * st), 2);
    return _mm_insert_epi32(v, ld32(p + 3 * st), 3);
}

/* For 8 blocks whose first 4 bytes are two halves (x: d, m; y: d, s): lo (blocks 0-3)
 * and hi (4-7) hold dx*dy of block b in lane 2b mod 8 and mx*sy in the lane after. */
TA2 static inline void pair_products8(const uint8_t *x, size_t xs, const uint8_t *y, size_t ys,
                                      __m256 *lo, __m256 *hi)
{
    *lo = _mm256_mul_ps(_mm256_cvtph_ps(dwords4(x, xs)), _mm256_cvtph_ps(dwords4(y, ys)));
    *hi = _mm256_mul_ps(_mm256_cvtph_ps(dwords4(x + 4 * xs, xs)),
                        _mm256_cvtph_ps(dwords4(y + 4 * ys, ys)));
}

/* 16 bytes of nibbles -> 32 bytes: the low nibbles, then the high ones (the 16 bytes in
 * both lanes by a broadcast load, the upper lane shifted right by 4). */
TA2 static inline __m256i nibbles32(const uint8_t *p)
{
    const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi32(t, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                            _mm256_set1_epi8(0x0f));
}

/* Lane k of v in all lanes. */
TA2 static inline __m256 lane_ps(__m256 v, int k)
{
    return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(k));
}

/* 32 bits -> 32 bytes, 0x10 where the bit is set (Q5's fifth bit). */
TA2 static inline __m256i bits32_avx2(uint32_t bits)
{
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    v = _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* The integer cores, per 32 elements: sum(u*s) in 8 i32 lanes for u in [0, 255] and
 * s in [-127, 127]; the same minus off * sum(s); and acc + sum over pairs of p16 * sc. */
TA2 static inline __m256i dot_us_avx2(__m256i u, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

TA2 static inline __m256i dot_us_off_avx2(__m256i u, __m256i s, int off)
{
    const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, s),
                                       _mm256_maddubs_epi16(_mm256_set1_epi8((char)off), s));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* sum(x*s) for x any int8, s in [-127, 127]: |x| times s with x's sign. */
TA2 static inline __m256i dot_ss_avx2(__m256i x, __m256i s)
{
    return dot_us_avx2(_mm256_sign_epi8(x, x), _mm256_sign_epi8(s, x));
}

TA2 static inline __m256i madd_acc_avx2(__m256i acc, __m256i p16, __m256i sc)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, sc));
}

/* ---- activation quantizers ---- */

/* roundf on 8 lanes: the integer part, plus one away from zero when the dropped
 * fraction (exact: v - trunc(v)) is at least a half. */
TA2 static inline __m256 round_away_avx2(__m256 v)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 ge = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f));
    return _mm256_add_ps(t, _mm256_and_ps(ge, one));
}

/* 4 x 8 int32 (each in int8 range) -> 32 int8 in order. */
TA2 static inline __m256i pack_i32x32_avx2(__m256i a, __m256i b, __m256i c, __m256i d)
{
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i v = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

TA2 static void q8_blocks_avx2(const float *x, uint8_t *y, int64_t nb, bool with_sum)
{
    const size_t bytes = with_sum ? 36 : 34, off = with_sum ? 4 : 2;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < nb; i++, x += QK, y += bytes) {
        __m256 v[4];
        for (int k = 0; k < 4; k++)
            v[k] = _mm256_loadu_ps(x + 8 * k);
        const __m256 m01 =
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
        const __m256 m23 =
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
        const float amax = hmax_ps(_mm256_max_ps(m01, m23));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        if (!isfinite(amax) || !isfinite(id)) {
            q8_block_scalar(x, y, amax, with_sum);
            continue;
        }
        const __m256 idv = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvttps_epi32(round_away_avx2(_mm256_mul_ps(v[k], idv)));
        st16(y, _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
        _mm256_storeu_si256((__m256i *)(y + off), pack_i32x32_avx2(q[0], q[1], q[2], q[3]));
        if (with_sum) {
            const int sum = hsum_epi32(
                _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
            st16(y + 2, _cvtss_sh((float)sum * d, _MM_FROUND_TO_NEAREST_INT));
        }
    }
}

TA2 static void quantize_q8_0_avx2(const float *x, void *dst, int64_t n)
{
    q8_blocks_avx2(x, dst, n / QK, false);
}

TA2 static void quantize_q8_1_avx2(const float *x, void *dst, int64_t n)
{
    q8_blocks_avx2(x, dst, n / QK, true);
}

TA2 static void quantize_q8_k_avx2(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, y += 292) {
        __m256 mv = _mm256_setzero_ps();
        for (int k = 0; k < QK_K; k += 8)
            mv = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)), mv);
        const float amax = hmax_ps(mv);
        if (amax == 0.0f) {
            memset(y, 0, 292);
            continue;
        }
        /* the first x with |x| == amax gives the sign */
        float max = amax;
        const __m256 av = _mm256_set1_ps(amax);
        for (int k = 0; k < QK_K; k += 8) {
            const __m256 ax = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k));
            const int m = _mm256_movemask_ps(_mm256_cmp_ps(ax, av, _CMP_EQ_OQ));
            if (m) {
                max = x[k + __builtin_ctz((unsigned)m)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        if (!isfinite(amax) || !isfinite(iscale)) {
            q8k_block_scalar(x, y, max);
            continue;
        }
        const __m256 is = _mm256_set1_ps(iscale);
        const __m256i top = _mm256_set1_epi32(127);
        for (int k = 0; k < QK_K; k += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; j++)
                q[j] = _mm256_min_epi32(
                    _mm256_cvtps_epi32(_mm256_mul_ps(is, _mm256_loadu_ps(x + k + 8 * j))), top);
            _mm256_storeu_si256((__m256i *)(y + 4 + k), pack_i32x32_avx2(q[0], q[1], q[2], q[3]));
            st16(y + 4 + QK_K + 2 * (k / 16),
                 (uint16_t)(int16_t)hsum_epi32(_mm256_add_epi32(q[0], q[1])));
            st16(y + 4 + QK_K + 2 * (k / 16 + 1),
                 (uint16_t)(int16_t)hsum_epi32(_mm256_add_epi32(q[2], q[3])));
        }
        const float d = 1.0f / iscale;
        memcpy(y, &d, 4);
    }
}

TA2 static void quantize_f32_avx2(const float *x, void *dst, int64_t n)
{
    memcpy(dst, x, (size_t)n * sizeof(float));
}

TA2 static void quantize_f16_avx2(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
            for (int j = 0; j < 8; j++) /* NaN payloads as the reference keeps them */
                st16(y + 2 * (i + j), eng_fp32_to_fp16(x[i + j]));
            continue;
        }
        _mm_storeu_si128((__m128i *)(y + 2 * i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++)
        st16(y + 2 * i, eng_fp32_to_fp16(x[i]));
}

/* GGML_FP32_TO_BF16 on 8 lanes: (u + 0x7fff + lsb) >> 16, NaN -> (u >> 16) | 64. */
TA2 static inline __m128i bf16x8_avx2(__m256 v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                           _mm256_set1_epi32(0x7f800000));
    const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
    const __m256i b = _mm256_blendv_epi8(r, q, nan);
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0x08);
    return _mm256_castsi256_si128(p);
}

TA2 static void quantize_bf16_avx2(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + 2 * i), bf16x8_avx2(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float tail[8] = {0};
        uint8_t out[16];
        memcpy(tail, x + i, (size_t)(n - i) * sizeof(float));
        _mm_storeu_si128((__m128i *)out, bf16x8_avx2(_mm256_loadu_ps(tail)));
        memcpy(y + 2 * i, out, (size_t)(n - i) * 2);
    }
}

/* ---- float dot products ---- */

/* The float rows come as void pointers at any byte offset: vector loads are unaligned
 * and scalar tails read bytes. */
TA2 static void vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)(x + 4 * (i + 8 * k))),
                                     _mm256_loadu_ps((const float *)(y + 4 * (i + 8 * k))), acc[k]);
    for (; i + 8 <= n; i += 8)
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)(x + 4 * i)),
                                 _mm256_loadu_ps((const float *)(y + 4 * i)), acc[0]);
    float sum =
        hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        const float p = ldf(x + 4 * i) * ldf(y + 4 * i);
        sum += p;
    }
    *s = sum;
}

TA2 static inline __m256 ld_f16x8(const uint8_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* x, y: n halves at any byte offset */
TA2 static void dot_f16_bytes_avx2(int64_t n, float *s, const uint8_t *x, const uint8_t *y)
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(ld_f16x8(x + 2 * (i + 8 * k)), ld_f16x8(y + 2 * (i + 8 * k)),
                                     acc[k]);
    for (; i + 8 <= n; i += 8)
        acc[0] = _mm256_fmadd_ps(ld_f16x8(x + 2 * i), ld_f16x8(y + 2 * i), acc[0]);
    float sum =
        hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        const float p = half_to_f32(x + 2 * i) * half_to_f32(y + 2 * i);
        sum += p;
    }
    *s = sum;
}

TA2 static void dot_f16_avx2(int64_t n, float *s, const uint16_t *x, const uint16_t *y)
{
    dot_f16_bytes_avx2(n, s, (const uint8_t *)x, (const uint8_t *)y);
}

TA2 static void vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *a)
{
    dot_f16_bytes_avx2(n, s, w, a);
}

TA2 static inline __m256 ld_bf16x8(const uint8_t *p)
{
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static inline float bf16_f32(const uint8_t *p)
{
    const uint32_t u = (uint32_t)ld16(p) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TA2 static void vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *a)
{
    const uint8_t *x = w, *y = a;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(ld_bf16x8(x + 2 * (i + 8 * k)), ld_bf16x8(y + 2 * (i + 8 * k)),
                                     acc[k]);
    for (; i + 8 <= n; i += 8)
        acc[0] = _mm256_fmadd_ps(ld_bf16x8(x + 2 * i), ld_bf16x8(y + 2 * i), acc[0]);
    float sum =
        hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        const float p = bf16_f32(x + 2 * i) * bf16_f32(y + 2 * i);
        sum += p;
    }
    *s = sum;
}

TA2 static void mad_f16_avx2(int64_t n, float *y, const uint16_t *v, float a)
{
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_add_ps(_mm256_loadu_ps(y + i),
                                       _mm256_mul_ps(ld_f16x8((const uint8_t *)(v + i)), av)));
    for (; i < n; i++) {
        const float p = _cvtsh_ss(v[i]) * a;
        y[i] += p;
    }
}

/* ---- quantized dot products ----
 * The bodies are shared by the AVX2 and AVX-512 sets; DOT_US, DOT_US_OFF, DOT_SS,
 * MADD_ACC and BITS32 name the set's integer cores (above, and the VNNI ones below).
 * With 32 elements per scale, the scales cost as much as the integer work: blocks go
 * in tiles of 8 so that their half-precision scales convert 8 at a time, and each
 * block's scale is taken from a register lane (vpermps) rather than converted alone
 * or stored and re-broadcast; the block sums are scaled into 4 rotating accumulators.
 * (On Zen 4 this doubled Q4_1's speed over per-block scalar scales.) */

/* Q8_0 (34 B) x Q8_0 (34 B) */
#define VEC_DOT_Q8_0_BODY(DOT_SS)                                                                  \
    const uint8_t *x = w, *y = a;                                                                  \
    const int64_t nb = n / QK;                                                                     \
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),                \
                     _mm256_setzero_ps()};                                                         \
    int64_t i = 0;                                                                                 \
    for (; i + 8 <= nb; i += 8, x += 8 * 34, y += 8 * 34) {                                        \
        const __m256 d = _mm256_mul_ps(halves8(x, 34), halves8(y, 34));                            \
        _Pragma("GCC unroll 8") for (int b = 0; b < 8; b++)                                        \
        {                                                                                          \
            const __m256i p = DOT_SS(_mm256_loadu_si256((const __m256i *)(x + 34 * b + 2)),        \
                                     _mm256_loadu_si256((const __m256i *)(y + 34 * b + 2)));       \
            acc[b & 3] = _mm256_fmadd_ps(lane_ps(d, b), _mm256_cvtepi32_ps(p), acc[b & 3]);        \
        }                                                                                          \
    }                                                                                              \
    for (; i < nb; i++, x += 34, y += 34) {                                                        \
        const __m256i p = DOT_SS(_mm256_loadu_si256((const __m256i *)(x + 2)),                     \
                                 _mm256_loadu_si256((const __m256i *)(y + 2)));                    \
        acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(half_to_f32(x) * half_to_f32(y)),                  \
                                 _mm256_cvtepi32_ps(p), acc[0]);                                   \
    }                                                                                              \
    *s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));

/* Q4_0 (18 B) or Q5_0 (22 B: BITS32 adds the fifth bits) x Q8_0:
 * sum((q - off) * qy) * dx * dy */
#define Q4Q5_0_SUMI(XB, QOFF, OFF, DOT_US_OFF, BITS32, xb, yb)                                     \
    DOT_US_OFF(XB == 22                                                                            \
                   ? _mm256_or_si256(nibbles32((xb) + QOFF), BITS32((uint32_t)ld32((xb) + 2)))     \
                   : nibbles32((xb) + QOFF),                                                       \
               _mm256_loadu_si256((const __m256i *)((yb) + 2)), OFF)

#define VEC_DOT_Q4Q5_0_BODY(XB, QOFF, OFF, DOT_US_OFF, BITS32)                                     \
    const uint8_t *x = w, *y = a;                                                                  \
    const int64_t nb = n / QK;                                                                     \
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),                \
                     _mm256_setzero_ps()};                                                         \
    int64_t i = 0;                                                                                 \
    for (; i + 8 <= nb; i += 8, x += 8 * XB, y += 8 * 34) {                                        \
        const __m256 d = _mm256_mul_ps(halves8(x, XB), halves8(y, 34));                            \
        _Pragma("GCC unroll 8") for (int b = 0; b < 8; b++)                                        \
        {                                                                                          \
            const __m256i p =                                                                      \
                Q4Q5_0_SUMI(XB, QOFF, OFF, DOT_US_OFF, BITS32, x + XB * b, y + 34 * b);            \
            acc[b & 3] = _mm256_fmadd_ps(lane_ps(d, b), _mm256_cvtepi32_ps(p), acc[b & 3]);        \
        }                                                                                          \
    }                                                                                              \
    for (; i < nb; i++, x += XB, y += 34) {                                                        \
        const __m256i p = Q4Q5_0_SUMI(XB, QOFF, OFF, DOT_US_OFF, BITS32, x, y);                    \
        acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(half_to_f32(x) * half_to_f32(y)),                  \
                                 _mm256_cvtepi32_ps(p), acc[0]);                                   \
    }                                                                                              \
    *s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));

/* Q4_1 (20 B) or Q5_1 (24 B) x Q8_1 (36 B): (dx*dy) * sum(q * qy) + mx * sy */
#define Q4Q5_1_SUMI(XB, QOFF, DOT_US, BITS32, xb, yb)                                              \
    DOT_US(XB == 24 ? _mm256_or_si256(nibbles32((xb) + QOFF), BITS32((uint32_t)ld32((xb) + 4)))    \
                    : nibbles32((xb) + QOFF),                                                      \
           _mm256_loadu_si256((const __m256i *)((yb) + 4)))

#define VEC_DOT_Q4Q5_1_BODY(XB, QOFF, DOT_US, BITS32)                                              \
    const uint8_t *x = w, *y = a;                                                                  \
    const int64_t nb = n / QK;                                                                     \
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),                \
                     _mm256_setzero_ps()};                                                         \
    __m256 accm = _mm256_setzero_ps();                                                             \
    float summ = 0.0f;                                                                             \
    int64_t i = 0;                                                                                 \
    for (; i + 8 <= nb; i += 8, x += 8 * XB, y += 8 * 36) {                                        \
        __m256 lo, hi;                                                                             \
        pair_products8(x, XB, y, 36, &lo, &hi);                                                    \
        accm = _mm256_add_ps(accm, _mm256_add_ps(lo, hi));                                         \
        _Pragma("GCC unroll 8") for (int b = 0; b < 8; b++)                                        \
        {                                                                                          \
            const __m256i p = Q4Q5_1_SUMI(XB, QOFF, DOT_US, BITS32, x + XB * b, y + 36 * b);       \
            acc[b & 3] = _mm256_fmadd_ps(lane_ps(b < 4 ? lo : hi, (2 * b) & 7),                    \
                                         _mm256_cvtepi32_ps(p), acc[b & 3]);                       \
        }                                                                                          \
    }                                                                                              \
    for (; i < nb; i++, x += XB, y += 36) {                                                        \
        const __m256i p = Q4Q5_1_SUMI(XB, QOFF, DOT_US, BITS32, x, y);                             \
        acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(half_to_f32(x) * half_to_f32(y)),                  \
                                 _mm256_cvtepi32_ps(p), acc[0]);                                   \
        summ += half_to_f32(x + 2) * half_to_f32(y + 2);                                           \
    }                                                                                              \
    /* the odd lanes of accm are the mx*sy terms */                                                \
    acc[0] = _mm256_add_ps(acc[0], _mm256_blend_ps(_mm256_setzero_ps(), accm, 0xaa));              \
    *s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) +    \
         summ;

/* Q4_K (144 B) x Q8_K (292 B):
 *   d*dy * sum_j sc_j * sum(q * qy) - dmin*dy * sum_j m_j * (bsums[2j] + bsums[2j+1]) */
#define VEC_DOT_Q4_K_BODY(MADD_ACC)                                                                \
    const uint8_t *x = w, *y = a;                                                                  \
    __m256 acc = _mm256_setzero_ps();                                                              \
    __m128 accm = _mm_setzero_ps();                                                                \
    const __m256i m4 = _mm256_set1_epi8(0x0f);                                                     \
    for (int64_t i = 0; i < n / QK_K; i++, x += 144, y += 292) {                                   \
        const float dy = ldf(y);                                                                   \
        const float d = half_to_f32(x) * dy, dmin = half_to_f32(x + 2) * dy;                       \
        uint32_t sm[4];                                                                            \
        q4k_scales_mins(x + 4, sm);                                                                \
        const __m256i scm = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)sm));            \
        const __m256i bs = _mm256_loadu_si256((const __m256i *)(y + 4 + QK_K));                    \
        const __m128i bs2 =                                                                        \
            _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));           \
        const __m128i pm = _mm_madd_epi16(_mm256_extracti128_si256(scm, 1), bs2);                  \
        accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(pm), accm);                         \
        const __m128i sc128 = _mm256_castsi256_si128(scm);                                         \
        const __m256i sc = _mm256_set_m128i(sc128, sc128);                                         \
        const uint8_t *q4 = x + 16, *q8 = y + 4;                                                   \
        __m256i sumi = _mm256_setzero_si256();                                                     \
        for (int k = 0; k < 4; k++) {                                                              \
            const __m256i sl =                                                                     \
                _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * k))));    \
            const __m256i sh = _mm256_shuffle_epi8(                                                \
                sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * k + 1))));                    \
            const __m256i qb = _mm256_loadu_si256((const __m256i *)(q4 + 32 * k));                 \
            const __m256i ql = _mm256_and_si256(qb, m4);                                           \
            const __m256i qh = _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4);                     \
            const __m256i pl =                                                                     \
                _mm256_maddubs_epi16(ql, _mm256_loadu_si256((const __m256i *)(q8 + 64 * k)));      \
            const __m256i ph =                                                                     \
                _mm256_maddubs_epi16(qh, _mm256_loadu_si256((const __m256i *)(q8 + 64 * k + 32))); \
            sumi = MADD_ACC(sumi, pl, sl);                                                         \
            sumi = MADD_ACC(sumi, ph, sh);                                                         \
        }                                                                                          \
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);                   \
    }                                                                                              \
    __m128 r =                                                                                     \
        _mm_sub_ps(_mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)), accm);  \
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));                                                        \
    r = _mm_add_ss(r, _mm_movehdup_ps(r));                                                         \
    *s = _mm_cvtss_f32(r);

/* Q6_K (210 B) x Q8_K: d*dy * sum_j sc_j * (sum(q * qy) - 32 * bsums[j]), q in [0, 63]. */
#define VEC_DOT_Q6_K_BODY(MADD_ACC)                                                                \
    const uint8_t *x = w, *y = a;                                                                  \
    __m256 acc = _mm256_setzero_ps();                                                              \
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);                        \
    const __m256i m2h = _mm256_set1_epi8(0x0c), m30 = _mm256_set1_epi8(0x30);                      \
    for (int64_t i = 0; i < n / QK_K; i++, x += 210, y += 292) {                                   \
        const float d = half_to_f32(x + 208) * ldf(y);                                             \
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)(x + 192));                           \
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);                                            \
        const __m256i bs = _mm256_loadu_si256((const __m256i *)(y + 4 + QK_K));                    \
        /* 32 * sum_j sc_j * bsums[j], subtracted at the end */                                    \
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(),                                    \
                                        _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5));        \
        const uint8_t *ql = x, *qhp = x + 128, *q8 = y + 4;                                        \
        for (int h = 0; h < 2; h++, ql += 64, qhp += 32, q8 += 128) {                              \
            const __m256i b1 = _mm256_loadu_si256((const __m256i *)ql);                            \
            const __m256i b2 = _mm256_loadu_si256((const __m256i *)(ql + 32));                     \
            const __m256i bh = _mm256_loadu_si256((const __m256i *)qhp);                           \
            __m256i q[4];                                                                          \
            q[0] = _mm256_or_si256(_mm256_and_si256(b1, m4),                                       \
                                   _mm256_slli_epi16(_mm256_and_si256(bh, m2), 4));                \
            q[1] = _mm256_or_si256(_mm256_and_si256(b2, m4),                                       \
                                   _mm256_slli_epi16(_mm256_and_si256(bh, m2h), 2));               \
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),                 \
                                   _mm256_and_si256(bh, m30));                                     \
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),                 \
                                   _mm256_and_si256(_mm256_srli_epi16(bh, 2), m30));               \
            for (int k = 0; k < 4; k++) {                                                          \
                /* lanes 0-7: scale 8h+2k, lanes 8-15: 8h+2k+1 */                                  \
                const int j = 8 * h + 2 * k;                                                       \
                const __m256i sck = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(                         \
                    sc8, _mm_setr_epi8((char)j, (char)j, (char)j, (char)j, (char)j, (char)j,       \
                                       (char)j, (char)j, (char)(j + 1), (char)(j + 1),             \
                                       (char)(j + 1), (char)(j + 1), (char)(j + 1), (char)(j + 1), \
                                       (char)(j + 1), (char)(j + 1))));                            \
                const __m256i p = _mm256_maddubs_epi16(                                            \
                    q[k], _mm256_loadu_si256((const __m256i *)(q8 + 32 * k)));                     \
                sumi = MADD_ACC(sumi, p, sck);                                                     \
            }                                                                                      \
        }                                                                                          \
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);                   \
    }                                                                                              \
    *s = hsum_ps(acc);

#define DEF_VEC_DOTS(SFX, TGT, DOT_US, DOT_US_OFF, DOT_SS, MADD_ACC, BITS32)                       \
    TGT static void vec_dot_q8_0_##SFX(int64_t n, float *s, const void *w,                         \
                                       const void *a){VEC_DOT_Q8_0_BODY(                           \
        DOT_SS)} TGT static void vec_dot_q4_0_##SFX(int64_t n, float *s, const void *w,            \
                                                    const void *a){VEC_DOT_Q4Q5_0_BODY(            \
        18, 2, 8, DOT_US_OFF,                                                                      \
        BITS32)} TGT static void vec_dot_q5_0_##SFX(int64_t n, float *s, const void *w,            \
                                                    const void *a){VEC_DOT_Q4Q5_0_BODY(            \
        22, 6, 16, DOT_US_OFF,                                                                     \
        BITS32)} TGT static void vec_dot_q4_1_##SFX(int64_t n, float *s, const void *w,            \
                                                    const void *a){VEC_DOT_Q4Q5_1_BODY(            \
        20, 4, DOT_US,                                                                             \
        BITS32)} TGT static void vec_dot_q5_1_##SFX(int64_t n, float *s, const void *w,            \
                                                    const void *a){VEC_DOT_Q4Q5_1_BODY(            \
        24, 8, DOT_US, BITS32)} TGT static void vec_dot_q4_k_##SFX(int64_t n, float *s,            \
                                                                   const void *w, const void *a){  \
        VEC_DOT_Q4_K_BODY(MADD_ACC)} TGT static void vec_dot_q6_k_##SFX(int64_t n, float *s,       \
                                                                        const void *w,             \
                                                                        const void *a)             \
    {                                                                                              \
        VEC_DOT_Q6_K_BODY(MADD_ACC)                                                                \
    }

DEF_VEC_DOTS(avx2, TA2, dot_us_avx2, dot_us_off_avx2, dot_ss_avx2, madd_acc_avx2, bits32_avx2)

/* =============================================================== AVX-512 ====== */

TA5 static inline __m256i dot_us_vnni(__m256i u, __m256i s)
{
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

TA5 static inline __m256i dot_us_off_vnni(__m256i u, __m256i s, int off)
{
    return _mm256_sub_epi32(
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)off), s));
}

TA5 static inline __m256i dot_ss_vnni(__m256i x, __m256i s)
{
    return dot_us_vnni(_mm256_abs_epi8(x), _mm256_sign_epi8(s, x));
}

TA5 static inline __m256i madd_acc_vnni(__m256i acc, __m256i p16, __m256i sc)
{
    return _mm256_dpwssd_epi32(acc, p16, sc);
}

TA5 static inline __m256i bits32_avx512(uint32_t bits)
{
    return _mm256_maskz_mov_epi8((__mmask32)bits, _mm256_set1_epi8(0x10));
}

DEF_VEC_DOTS(avx512, TA5, dot_us_vnni, dot_us_off_vnni, dot_ss_vnni, madd_acc_vnni, bits32_avx512)

/* ---- activation quantizers ---- */

TA5 static inline __m512 round_away_avx512(__m512 v)
{
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    const __mmask16 ge = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    return _mm512_mask_add_ps(t, ge, t, one);
}

TA5 static void q8_blocks_avx512(const float *x, uint8_t *y, int64_t nb, bool with_sum)
{
    const size_t bytes = with_sum ? 36 : 34, off = with_sum ? 4 : 2;
    for (int64_t i = 0; i < nb; i++, x += QK, y += bytes) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax =
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        if (!isfinite(amax) || !isfinite(id)) {
            q8_block_scalar(x, y, amax, with_sum);
            continue;
        }
        const __m512 idv = _mm512_set1_ps(id);
        const __m512i q0 = _mm512_cvttps_epi32(round_away_avx512(_mm512_mul_ps(v0, idv)));
        const __m512i q1 = _mm512_cvttps_epi32(round_away_avx512(_mm512_mul_ps(v1, idv)));
        st16(y, _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
        _mm_storeu_si128((__m128i *)(y + off), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(y + off + 16), _mm512_cvtsepi32_epi8(q1));
        if (with_sum) {
            const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            st16(y + 2, _cvtss_sh((float)sum * d, _MM_FROUND_TO_NEAREST_INT));
        }
    }
}

TA5 static void quantize_q8_0_avx512(const float *x, void *dst, int64_t n)
{
    q8_blocks_avx512(x, dst, n / QK, false);
}

TA5 static void quantize_q8_1_avx512(const float *x, void *dst, int64_t n)
{
    q8_blocks_avx512(x, dst, n / QK, true);
}

TA5 static void quantize_q8_k_avx512(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K, y += 292) {
        __m512 mv = _mm512_setzero_ps();
        for (int k = 0; k < QK_K; k += 16)
            mv = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + k)), mv);
        const float amax = _mm512_reduce_max_ps(mv);
        if (amax == 0.0f) {
            memset(y, 0, 292);
            continue;
        }
        float max = amax;
        const __m512 av = _mm512_set1_ps(amax);
        for (int k = 0; k < QK_K; k += 16) {
            const __mmask16 m =
                _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + k)), av, _CMP_EQ_OQ);
            if (m) {
                max = x[k + __builtin_ctz((unsigned)m)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        if (!isfinite(amax) || !isfinite(iscale)) {
            q8k_block_scalar(x, y, max);
            continue;
        }
        const __m512 is = _mm512_set1_ps(iscale);
        const __m512i top = _mm512_set1_epi32(127);
        for (int k = 0; k < QK_K; k += 16) {
            const __m512i q = _mm512_min_epi32(
                _mm512_cvtps_epi32(_mm512_mul_ps(is, _mm512_loadu_ps(x + k))), top);
            _mm_storeu_si128((__m128i *)(y + 4 + k), _mm512_cvtsepi32_epi8(q));
            st16(y + 4 + QK_K + 2 * (k / 16), (uint16_t)(int16_t)_mm512_reduce_add_epi32(q));
        }
        const float d = 1.0f / iscale;
        memcpy(y, &d, 4);
    }
}

TA5 static void quantize_f16_avx512(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)) {
            for (int j = 0; j < 16; j++)
                st16(y + 2 * (i + j), eng_fp32_to_fp16(x[i + j]));
            continue;
        }
        _mm256_storeu_si256((__m256i *)(y + 2 * i), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++)
        st16(y + 2 * i, eng_fp32_to_fp16(x[i]));
}

TA5 static inline __m256i bf16x16_avx512(__m512 v)
{
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(64));
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, nan, q));
}

TA5 static void quantize_bf16_avx512(const float *x, void *dst, int64_t n)
{
    uint8_t *y = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(y + 2 * i), bf16x16_avx512(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(y + 2 * i, m, bf16x16_avx512(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* ---- float dot products ---- */

TA5 static void vec_dot_f32_avx512(int64_t n, float *s, const void *w, const void *a)
{
    const float *x = w, *y = a;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16 * k),
                                     _mm512_loadu_ps(y + i + 16 * k), acc[k]);
    for (; i + 16 <= n; i += 16)
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc[0]);
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i),
                                 acc[1]);
    }
    *s = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

TA5 static inline __m512 ld_f16x16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

TA5 static inline __m512 ld_f16x16_tail(const uint16_t *p, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

/* Attention rows are short (head_dim 64..128): two accumulators, 32 halves a step. */
TA5 static void dot_f16_avx512(int64_t n, float *s, const uint16_t *x, const uint16_t *y)
{
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(ld_f16x16(x + i), ld_f16x16(y + i), acc0);
        acc1 = _mm512_fmadd_ps(ld_f16x16(x + i + 16), ld_f16x16(y + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(ld_f16x16(x + i), ld_f16x16(y + i), acc0);
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        acc1 = _mm512_fmadd_ps(ld_f16x16_tail(x + i, m), ld_f16x16_tail(y + i, m), acc1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* Weight rows are long: four accumulators, 64 halves a step. */
TA5 static void vec_dot_f16_avx512(int64_t n, float *s, const void *w, const void *a)
{
    const uint16_t *x = w, *y = a;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm512_fmadd_ps(ld_f16x16(x + i + 16 * k), ld_f16x16(y + i + 16 * k), acc[k]);
    float rest;
    dot_f16_avx512(n - i, &rest, x + i, y + i);
    *s = _mm512_reduce_add_ps(
             _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]))) +
         rest;
}

TA5 static inline __m512 ld_bf16x16(const uint16_t *p, __mmask16 m)
{
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

TA5 static void vec_dot_bf16_avx512(int64_t n, float *s, const void *w, const void *a)
{
    const uint16_t *x = w, *y = a;
    const __mmask16 all = 0xffff;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm512_fmadd_ps(ld_bf16x16(x + i + 16 * k, all),
                                     ld_bf16x16(y + i + 16 * k, all), acc[k]);
    for (; i + 16 <= n; i += 16)
        acc[0] = _mm512_fmadd_ps(ld_bf16x16(x + i, all), ld_bf16x16(y + i, all), acc[0]);
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        acc[1] = _mm512_fmadd_ps(ld_bf16x16(x + i, m), ld_bf16x16(y + i, m), acc[1]);
    }
    *s = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

/* ================================================================= tables ===== */

static const eng_kernels avx2_kernels = {
    .name = "avx2",
    .vec_dot =
        {
            [ENG_F32] = vec_dot_f32_avx2,
            [ENG_F16] = vec_dot_f16_avx2,
            [ENG_BF16] = vec_dot_bf16_avx2,
            [ENG_Q8_0] = vec_dot_q8_0_avx2,
            [ENG_Q4_0] = vec_dot_q4_0_avx2,
            [ENG_Q4_1] = vec_dot_q4_1_avx2,
            [ENG_Q5_0] = vec_dot_q5_0_avx2,
            [ENG_Q5_1] = vec_dot_q5_1_avx2,
            [ENG_Q4_K] = vec_dot_q4_k_avx2,
            [ENG_Q6_K] = vec_dot_q6_k_avx2,
        },
    .quantize =
        {
            [ENG_F32] = quantize_f32_avx2,
            [ENG_F16] = quantize_f16_avx2,
            [ENG_BF16] = quantize_bf16_avx2,
            [ENG_Q8_0] = quantize_q8_0_avx2,
            [ENG_Q8_1] = quantize_q8_1_avx2,
            [ENG_Q8_K] = quantize_q8_k_avx2,
        },
    .dot_f16 = dot_f16_avx2,
    .mad_f16 = mad_f16_avx2,
};

static const eng_kernels avx512_kernels = {
    .name = "avx512",
    .vec_dot =
        {
            [ENG_F32] = vec_dot_f32_avx512,
            [ENG_F16] = vec_dot_f16_avx512,
            [ENG_BF16] = vec_dot_bf16_avx512,
            [ENG_Q8_0] = vec_dot_q8_0_avx512,
            [ENG_Q4_0] = vec_dot_q4_0_avx512,
            [ENG_Q4_1] = vec_dot_q4_1_avx512,
            [ENG_Q5_0] = vec_dot_q5_0_avx512,
            [ENG_Q5_1] = vec_dot_q5_1_avx512,
            [ENG_Q4_K] = vec_dot_q4_k_avx512,
            [ENG_Q6_K] = vec_dot_q6_k_avx512,
        },
    .quantize =
        {
            [ENG_F32] = quantize_f32_avx2,
            [ENG_F16] = quantize_f16_avx512,
            [ENG_BF16] = quantize_bf16_avx512,
            [ENG_Q8_0] = quantize_q8_0_avx512,
            [ENG_Q8_1] = quantize_q8_1_avx512,
            [ENG_Q8_K] = quantize_q8_k_avx512,
        },
    .dot_f16 = dot_f16_avx512,
    /* consecutive calls update the same y (attention accumulates over positions): the
     * 256-bit version forwards its stores to the next call's loads faster on Zen 4 */
    .mad_f16 = mad_f16_avx2,
};

/* What the CPU and the OS support, from cpuid and xgetbv (the OS must save the YMM
 * state for AVX and the opmask/ZMM state for AVX-512). */
typedef struct cpu_feats {
    bool avx2, avx512;
} cpu_feats;

static cpu_feats cpu_detect(void)
{
    cpu_feats f = {false, false};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
               f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    uint32_t xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 0x6) != 0x6) return f; /* XMM and YMM state */
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b & (1u << 5)) && fma && f16c;
    const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) &&
                        (b & (1u << 31)) && (c & (1u << 11)); /* F, DQ, BW, VL, VNNI */
    f.avx512 = f.avx2 && avx512 && (xlo & 0xe0) == 0xe0;      /* opmask, ZMM_Hi256, Hi16_ZMM */
    return f;
}

const eng_kernels *eng_kernels_x86(const char *name)
{
    if (!name) return NULL;
    const cpu_feats f = cpu_detect();
    if (!strcmp(name, "avx2")) return f.avx2 ? &avx2_kernels : NULL;
    if (!strcmp(name, "avx512")) return f.avx512 ? &avx512_kernels : NULL;
    return NULL;
}

#else /* not x86-64: no SIMD sets here */

const eng_kernels *eng_kernels_x86(const char *name)
{
    (void)name;
    return NULL;
}

#endif
