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
 * - Dot products and tiles (blocks of dot products for prompts: see "tiles" below) sum
 *   the same integers per block; only the float accumulation of the scaled block sums
 *   differs in order (several vector lanes, fused multiply-adds), so results agree with
 *   the reference to float rounding, not bit for bit. F32/F16/BF16 rows accumulate in
 *   float (ggml's SIMD code does the same) where the reference uses double.
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
        qs[j] = eng_sat_i8(roundf(v));
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
        const int q = eng_nearest_int(v);
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

/* Q4_K (144 B) or Q5_K (176 B: XB == 176 ORs in the fifth bits, bit j of qh[l] for
 * element l of sub-block j, moved to bit 4 by 16-bit shifts of qh) x Q8_K (292 B):
 *   d*dy * sum_j sc_j * sum(q * qy) - dmin*dy * sum_j m_j * (bsums[2j] + bsums[2j+1]) */
#define VEC_DOT_Q4Q5_K_BODY(XB, MADD_ACC)                                                          \
    const uint8_t *x = w, *y = a;                                                                  \
    __m256 acc = _mm256_setzero_ps();                                                              \
    __m128 accm = _mm_setzero_ps();                                                                \
    const __m256i m4 = _mm256_set1_epi8(0x0f), m16 = _mm256_set1_epi8(0x10);                       \
    for (int64_t i = 0; i < n / QK_K; i++, x += XB, y += 292) {                                    \
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
        const uint8_t *q4 = x + (XB == 176 ? 48 : 16), *q8 = y + 4;                                \
        __m256i hb =                                                                               \
            XB == 176 ? _mm256_loadu_si256((const __m256i *)(x + 16)) : _mm256_setzero_si256();    \
        __m256i sumi = _mm256_setzero_si256();                                                     \
        for (int k = 0; k < 4; k++) {                                                              \
            const __m256i sl =                                                                     \
                _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * k))));    \
            const __m256i sh = _mm256_shuffle_epi8(                                                \
                sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * k + 1))));                    \
            const __m256i qb = _mm256_loadu_si256((const __m256i *)(q4 + 32 * k));                 \
            __m256i ql = _mm256_and_si256(qb, m4);                                                 \
            __m256i qh = _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4);                           \
            if (XB == 176) {                                                                       \
                ql = _mm256_or_si256(ql, _mm256_and_si256(_mm256_slli_epi16(hb, 4), m16));         \
                qh = _mm256_or_si256(qh, _mm256_and_si256(_mm256_slli_epi16(hb, 3), m16));         \
                hb = _mm256_srli_epi16(hb, 2);                                                     \
            }                                                                                      \
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
        VEC_DOT_Q4Q5_K_BODY(                                                                       \
            144, MADD_ACC)} TGT static void vec_dot_q5_k_##SFX(int64_t n, float *s, const void *w, \
                                                               const void *a){VEC_DOT_Q4Q5_K_BODY( \
        176, MADD_ACC)} TGT static void vec_dot_q6_k_##SFX(int64_t n, float *s, const void *w,     \
                                                           const void *a)                          \
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

/* ================================================================== tiles ===== *
 * Tiles (eng_tile_fn, for prompts): an nr x nc block of dot products, nr weight rows by
 * nc activation rows (both <= 16), computed in micro-tiles of rm x rn pairs whose
 * accumulators stay in registers over the whole row, so that every weight vector loaded
 * (converted, unpacked) serves rn activation rows and every activation vector rm weight
 * rows. The micro-kernels take rm and rn as arguments but are always inlined with
 * constants (TILE_LOOP), so their loops unroll and their arrays live in registers; the
 * edges of a tile (nr, nc not multiples of the micro-tile) get the smaller variants.
 * Both sets use 256-bit vectors: on Zen 4 a 512-bit FMA costs two 256-bit ones, and the
 * AVX-512 set's 32 registers already allow larger micro-tiles. */

#define AI inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

/* MK(rm, rn) with constant arguments for the runtime rm <= 4, rn <= 4. */
#define TILE_SW_RN(MK, R, rn)                                                                      \
    switch (rn) {                                                                                  \
    case 1: MK(R, 1); break;                                                                       \
    case 2: MK(R, 2); break;                                                                       \
    case 3: MK(R, 3); break;                                                                       \
    default: MK(R, 4); break;                                                                      \
    }
#define TILE_SWITCH(MK, rm, rn)                                                                    \
    switch (rm) {                                                                                  \
    case 1: TILE_SW_RN(MK, 1, rn) break;                                                           \
    case 2: TILE_SW_RN(MK, 2, rn) break;                                                           \
    case 3: TILE_SW_RN(MK, 3, rn) break;                                                           \
    default: TILE_SW_RN(MK, 4, rn) break;                                                          \
    }

/* Micro-tiles of RM x RN (<= 4) over the tile, activation rows outer (an activation
 * group stays in L1 while the weight rows pass); MK(rm, rn) sees i0 and j0. */
#define TILE_LOOP(RM, RN, nr, nc, MK)                                                              \
    for (int j0 = 0; j0 < (nc); j0 += (RN)) {                                                      \
        const int rn_ = (nc)-j0 < (RN) ? (nc)-j0 : (RN);                                           \
        for (int i0 = 0; i0 < (nr); i0 += (RM)) {                                                  \
            const int rm_ = (nr)-i0 < (RM) ? (nr)-i0 : (RM);                                       \
            TILE_SWITCH(MK, rm_, rn_)                                                              \
        }                                                                                          \
    }

/* The sums of v[0..rm-1] (rm <= 4) in the first rm lanes, zeros after. */
TA2 static AI __m128 hsum4_ps(const __m256 *v, int rm)
{
    const __m256 z = _mm256_setzero_ps();
    const __m256 h01 = _mm256_hadd_ps(v[0], rm > 1 ? v[1] : z);
    const __m256 h23 = _mm256_hadd_ps(rm > 2 ? v[2] : z, rm > 3 ? v[3] : z);
    const __m256 h = _mm256_hadd_ps(h01, h23);
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* The first rm (<= 4) lanes of v to s: nothing else is written. */
TA2 static AI void store_rm(float *s, __m128 v, int rm)
{
    if (rm == 4) {
        _mm_storeu_ps(s, v);
    } else {
        float t[4];
        _mm_storeu_ps(t, v);
        for (int i = 0; i < rm; i++)
            s[i] = t[i];
    }
}

/* ---- F32, F16, BF16 ---- */

enum { FT_F32, FT_F16, FT_BF16 };

/* 8 elements of a float row at element k, as floats. */
TA2 static AI __m256 ld_float8(const uint8_t *p, int64_t k, int ft)
{
    if (ft == FT_F32) return _mm256_loadu_ps((const float *)(p + 4 * k));
    if (ft == FT_F16) return ld_f16x8(p + 2 * k);
    return ld_bf16x8(p + 2 * k);
}

TA2 static AI float ld_float1(const uint8_t *p, int64_t k, int ft)
{
    if (ft == FT_F32) return ldf(p + 4 * k);
    if (ft == FT_F16) return half_to_f32(p + 2 * k);
    return bf16_f32(p + 2 * k);
}

/* rm x rn dot products of float rows (w: rm rows ws bytes apart, a: rn rows as apart):
 * 8 elements a step, each converted once; the tail (n mod 8) in scalar code. The
 * accumulation is vec_dot's (float lanes, fused multiply-adds), in another order. */
TA2 static AI void ftile_mk(int64_t n, float *s, size_t ldc, const uint8_t *w, size_t ws,
                            const uint8_t *a, size_t as, const int rm, const int rn, const int ft)
{
    __m256 acc[4][4];
    UNROLL
    for (int j = 0; j < rn; j++) {
        UNROLL
        for (int i = 0; i < rm; i++)
            acc[j][i] = _mm256_setzero_ps();
    }
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 wv[4];
        UNROLL
        for (int i = 0; i < rm; i++)
            wv[i] = ld_float8(w + i * ws, k, ft);
        UNROLL
        for (int j = 0; j < rn; j++) {
            const __m256 av = ld_float8(a + j * as, k, ft);
            UNROLL
            for (int i = 0; i < rm; i++)
                acc[j][i] = _mm256_fmadd_ps(wv[i], av, acc[j][i]);
        }
    }
    UNROLL
    for (int j = 0; j < rn; j++) {
        __m128 r = hsum4_ps(acc[j], rm);
        if (k < n) {
            float t[4] = {0};
            for (int i = 0; i < rm; i++)
                for (int64_t l = k; l < n; l++) {
                    const float p = ld_float1(w + i * ws, l, ft) * ld_float1(a + j * as, l, ft);
                    t[i] += p;
                }
            r = _mm_add_ps(r, _mm_loadu_ps(t));
        }
        store_rm(s + j * ldc, r, rm);
    }
}

/* AVX2: 16 registers, micro-tiles of 4 x 2 (8 accumulators). AVX-512: 32, 4 x 4. */
#define DEF_FTILE(NAME, TGT, RM, RN, FT)                                                           \
    TGT static void NAME(int64_t n, int nr, int nc, float *s, size_t ldc, const void *w,           \
                         size_t ws, const void *a, size_t as)                                      \
    {                                                                                              \
        const uint8_t *wb = w, *ab = a;                                                            \
        const int ft = FT;                                                                         \
        TILE_LOOP(RM, RN, nr, nc, FTILE_MK)                                                        \
    }
#define FTILE_MK(rm, rn)                                                                           \
    ftile_mk(n, s + j0 * ldc + i0, ldc, wb + i0 * ws, ws, ab + j0 * as, as, rm, rn, ft)

DEF_FTILE(tile_f32_avx2, TA2, 4, 2, FT_F32)
DEF_FTILE(tile_f16_avx2, TA2, 4, 2, FT_F16)
DEF_FTILE(tile_bf16_avx2, TA2, 4, 2, FT_BF16)
DEF_FTILE(tile_f32_avx512, TA5, 4, 4, FT_F32)
DEF_FTILE(tile_f16_avx512, TA5, 4, 4, FT_F16)
DEF_FTILE(tile_bf16_avx512, TA5, 4, 4, FT_BF16)

/* ---- quantized tiles: prepared groups ----
 * A quantized tile first rewrites ("prepares") its nr weight rows and nc activation rows,
 * a chunk of each row at a time, into groups laid out for vertical integer products; a
 * prepared row then serves every row of the other side (up to 16), which pays for the
 * rewriting. A group has 8 lanes of 32 bits and up to 8 steps of 32 bytes; lane l of
 * every step holds 4 bytes of the same block, so an integer multiply-add over the steps
 * (VPDPBUSD; VPMADDUBSW + VPMADDWD on AVX2) leaves in each lane a part of one block's
 * integer sum, and one vector of per-lane scales (d_w * d_a) brings a whole group to
 * floats with one fused multiply-add per pair of rows (vec_dot needs one per block). A
 * group of 8 blocks gives each block one lane (8 steps: step k holds bytes 4k..4k+3 of
 * each block); the tail of a row goes in groups of 4, 2 and 1 blocks with 2, 4 and 8
 * lanes per block (4, 2, 1 steps), so no step is spent on padding. K-quant sub-blocks
 * are the blocks of their groups. The integer sums are exact (no saturation anywhere:
 * see the micro-kernels), so a tile's results differ from vec_dot's only in the order
 * of the float operations that scale and add them.
 *
 * A prepared group (QG_BYTES), each part written only for the types that use it:
 *   q[8][32]    the steps: unsigned or signed bytes, per type
 *   d[8]        float scale per lane (d of the lane's block)
 *   m[8]        float, a second product added per lane: Q4_1/Q5_1 m_w (first lane of a
 *               block only) and s_a; Q4_K/Q5_K dmin_w * m_j and -d_a * (bsums of j)
 *   init[8]     int32 added to the lane's integer sum before scaling: Q8_0 weights
 *               -128 * sum(w) (with VNNI the activation goes in as a + 128, unsigned:
 *               exact for every int8 a), Q4_0/Q5_0 and Q6_K activations -off * sum(a)
 *               (the weights go in as q, not q - off)
 *   sc[8]       int32 K-quant sub-block scale the lane's integer sum is multiplied by */
enum { QG_Q = 0, QG_D = 256, QG_M = 288, QG_I = 320, QG_SC = 352, QG_BYTES = 384 };

/* Blocks v[0..nb-1] (32 bytes each; nb = 8, 4, 2 or 1) as nb steps at q: step k holds
 * in lanes [b*L, (b+1)*L) (L = 8 / nb) bytes [4Lk, 4L(k+1)) of block b (a transpose
 * of 32-, 64- or 128-bit pieces). */
TA2 static AI void qg_store_steps(uint8_t *q, const __m256i *v, int nb)
{
    __m256i *o = (__m256i *)q;
    if (nb == 8) {
        __m256i t[8], u[8];
        UNROLL
        for (int b = 0; b < 8; b += 2) {
            t[b] = _mm256_unpacklo_epi32(v[b], v[b + 1]);
            t[b + 1] = _mm256_unpackhi_epi32(v[b], v[b + 1]);
        }
        UNROLL
        for (int b = 0; b < 8; b += 4) {
            u[b] = _mm256_unpacklo_epi64(t[b], t[b + 2]);
            u[b + 1] = _mm256_unpackhi_epi64(t[b], t[b + 2]);
            u[b + 2] = _mm256_unpacklo_epi64(t[b + 1], t[b + 3]);
            u[b + 3] = _mm256_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        UNROLL
        for (int k = 0; k < 4; k++) {
            _mm256_store_si256(o + k, _mm256_permute2x128_si256(u[k], u[k + 4], 0x20));
            _mm256_store_si256(o + k + 4, _mm256_permute2x128_si256(u[k], u[k + 4], 0x31));
        }
    } else if (nb == 4) {
        const __m256i t0 = _mm256_unpacklo_epi64(v[0], v[1]),
                      t1 = _mm256_unpackhi_epi64(v[0], v[1]);
        const __m256i t2 = _mm256_unpacklo_epi64(v[2], v[3]),
                      t3 = _mm256_unpackhi_epi64(v[2], v[3]);
        _mm256_store_si256(o + 0, _mm256_permute2x128_si256(t0, t2, 0x20));
        _mm256_store_si256(o + 1, _mm256_permute2x128_si256(t1, t3, 0x20));
        _mm256_store_si256(o + 2, _mm256_permute2x128_si256(t0, t2, 0x31));
        _mm256_store_si256(o + 3, _mm256_permute2x128_si256(t1, t3, 0x31));
    } else if (nb == 2) {
        _mm256_store_si256(o + 0, _mm256_permute2x128_si256(v[0], v[1], 0x20));
        _mm256_store_si256(o + 1, _mm256_permute2x128_si256(v[0], v[1], 0x31));
    } else {
        _mm256_store_si256(o, v[0]);
    }
}

/* Lane l -> block l / L, for nb = 8, 4, 2, 1 blocks. */
TA2 static AI __m256i qg_lane_block(int nb)
{
    return nb == 8   ? _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
           : nb == 4 ? _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)
           : nb == 2 ? _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)
                     : _mm256_setzero_si256();
}

/* Per-block values f[0..nb-1] spread over their lanes; `first` keeps only the first
 * lane of each block (a term to be counted once per block). */
TA2 static AI __m256 qg_spread(__m256 f, int nb, bool first)
{
    if (nb == 8) return f;
    const __m256 v = _mm256_permutevar8x32_ps(f, qg_lane_block(nb));
    if (!first) return v;
    const __m256i m = nb == 4   ? _mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0)
                      : nb == 2 ? _mm256_setr_epi32(-1, 0, 0, 0, -1, 0, 0, 0)
                                : _mm256_setr_epi32(-1, 0, 0, 0, 0, 0, 0, 0);
    return _mm256_and_ps(v, _mm256_castsi256_ps(m));
}

/* The halves at p, p + st, ... (nb = 8, 4, 2 or 1 of them; nothing read past the last),
 * as floats. */
TA2 static AI __m256 qg_halves(const uint8_t *p, size_t st, int nb)
{
    if (nb == 8) return halves8(p, st);
    __m128i v = _mm_cvtsi32_si128(ld16(p)); /* (in registers: no store-to-load stall) */
    if (nb > 1) v = _mm_insert_epi16(v, ld16(p + st), 1);
    if (nb > 2) v = _mm_insert_epi16(v, ld16(p + 2 * st), 2);
    if (nb > 3) v = _mm_insert_epi16(v, ld16(p + 3 * st), 3);
    return _mm256_cvtph_ps(v);
}

/* Per lane, the sum of its signed bytes over the nsteps (<= 8) steps at q (16-bit
 * partial sums: at most 8 * 2 * 128). */
TA2 static AI __m256i qg_lane_sums(const uint8_t *q, int nsteps)
{
    __m256i acc = _mm256_setzero_si256();
    UNROLL
    for (int k = 0; k < nsteps; k++)
        acc = _mm256_add_epi16(
            acc, _mm256_maddubs_epi16(_mm256_set1_epi8(1),
                                      _mm256_load_si256((const __m256i *)(q + 32 * k))));
    return _mm256_madd_epi16(acc, _mm256_set1_epi16(1));
}

/* The two halves at the start of 8 blocks st bytes apart (d, m of Q4_1/Q5_1; d, s of
 * Q8_1) as floats, one vector each: one gather of 32-bit words instead of two of
 * halves. */
TA2 static AI void qg_half_pairs8(const uint8_t *p, size_t st, __m256 *first, __m256 *second)
{
    const __m256 lo = _mm256_cvtph_ps(dwords4(p, st));          /* d0 m0 d1 m1 | d2 m2 d3 m3 */
    const __m256 hi = _mm256_cvtph_ps(dwords4(p + 4 * st, st)); /* d4 m4 ...  */
    /* d0 d1 d4 d5 | d2 d3 d6 d7, then the middle 64-bit pieces swapped */
    *first = _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xd8));
    *second = _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xdd)), 0xd8));
}

/* 8 pieces of 16 bytes, two per vector (y[m] = pieces m and m + 4 in its low and high
 * halves), transposed: out[k] holds 32-bit word k of piece l in lane l. */
TA2 static AI void qg_transpose16(const __m256i *y, __m256i *out)
{
    const __m256i t0 = _mm256_unpacklo_epi32(y[0], y[1]), t1 = _mm256_unpackhi_epi32(y[0], y[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(y[2], y[3]), t3 = _mm256_unpackhi_epi32(y[2], y[3]);
    out[0] = _mm256_unpacklo_epi64(t0, t2);
    out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3);
    out[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* 8 blocks of 32 bytes (at p + b * st) as 8 steps at q, lane b = block b, optionally
 * with every byte's top bit flipped: two 16-byte transposes whose first stage is the
 * loads themselves (fewer shuffles than qg_store_steps's 8 x 8). */
TA2 static AI void qg_store_steps8(uint8_t *q, const uint8_t *p, size_t st, bool flip)
{
    __m256i *o = (__m256i *)q;
    UNROLL
    for (int h = 0; h < 2; h++) {
        __m256i y[4], t[4];
        UNROLL
        for (int m = 0; m < 4; m++) {
            y[m] = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p + m * st + 16 * h))),
                _mm_loadu_si128((const __m128i *)(p + (m + 4) * st + 16 * h)), 1);
            if (flip) y[m] = _mm256_xor_si256(y[m], _mm256_set1_epi8((char)0x80));
        }
        qg_transpose16(y, t);
        UNROLL
        for (int k = 0; k < 4; k++)
            _mm256_store_si256(o + 4 * h + k, t[k]);
    }
}

/* The weight types of 32-element blocks, by their prepared form. */
enum { QT_Q8_0, QT_Q4_0, QT_Q4_1, QT_Q5_0, QT_Q5_1 };

TA2 static AI int qt_wbytes(int qt)
{
    return qt == QT_Q8_0 ? 34 : qt == QT_Q4_0 ? 18 : qt == QT_Q4_1 ? 20 : qt == QT_Q5_0 ? 22 : 24;
}

/* nb weight blocks at x -> group g. The values: Q8_0 its int8 qs (signed: with VNNI
 * the activation is the unsigned side, shifted by 128, and init takes -128 * sum(w)
 * back; on AVX2 the micro-kernel moves the signs over), Q4/Q5 their unsigned q. */
TA2 static AI void qprep_w32_nb(uint8_t *g, const uint8_t *x, int nb, int qt, bool vnni)
{
    const int xb = qt_wbytes(qt);
    const bool with_m = qt == QT_Q4_1 || qt == QT_Q5_1;
    if (nb == 8 && qt == QT_Q8_0) {
        qg_store_steps8(g + QG_Q, x + 2, xb, false);
    } else if (nb == 8 && (qt == QT_Q4_0 || qt == QT_Q4_1)) {
        /* the 8 x 16 bytes of nibbles transposed as they are (half the bytes of the
         * values), then split: word k's low nibbles are step k, its high ones step k + 4 */
        const int qo = qt == QT_Q4_0 ? 2 : 4;
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        __m256i y[4], t[4];
        UNROLL
        for (int m = 0; m < 4; m++)
            y[m] = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(x + m * xb + qo))),
                _mm_loadu_si128((const __m128i *)(x + (m + 4) * xb + qo)), 1);
        qg_transpose16(y, t);
        __m256i *o = (__m256i *)(g + QG_Q);
        UNROLL
        for (int k = 0; k < 4; k++) {
            _mm256_store_si256(o + k, _mm256_and_si256(t[k], m4));
            _mm256_store_si256(o + k + 4, _mm256_and_si256(_mm256_srli_epi16(t[k], 4), m4));
        }
    } else {
        __m256i v[8] = {0}; /* (nb of them are read) */
        UNROLL
        for (int b = 0; b < nb; b++) {
            const uint8_t *p = x + b * xb;
            switch (qt) {
            case QT_Q8_0: v[b] = _mm256_loadu_si256((const __m256i *)(p + 2)); break;
            case QT_Q4_0: v[b] = nibbles32(p + 2); break;
            case QT_Q4_1: v[b] = nibbles32(p + 4); break;
            case QT_Q5_0:
                v[b] = _mm256_or_si256(nibbles32(p + 6), bits32_avx2((uint32_t)ld32(p + 2)));
                break;
            default:
                v[b] = _mm256_or_si256(nibbles32(p + 8), bits32_avx2((uint32_t)ld32(p + 4)));
                break;
            }
        }
        qg_store_steps(g + QG_Q, v, nb);
    }
    if (with_m && nb == 8) {
        __m256 d, m;
        qg_half_pairs8(x, xb, &d, &m);
        _mm256_store_ps((float *)(g + QG_D), d);
        _mm256_store_ps((float *)(g + QG_M), m);
    } else {
        _mm256_store_ps((float *)(g + QG_D), qg_spread(qg_halves(x, xb, nb), nb, false));
        if (with_m)
            _mm256_store_ps((float *)(g + QG_M), qg_spread(qg_halves(x + 2, xb, nb), nb, true));
    }
    if (qt == QT_Q8_0 && vnni)
        _mm256_store_si256((__m256i *)(g + QG_I),
                           _mm256_sub_epi32(_mm256_setzero_si256(),
                                            _mm256_slli_epi32(qg_lane_sums(g + QG_Q, nb), 7)));
}

/* nb activation blocks at y (Q8_0 for Q8_0/Q4_0/Q5_0, Q8_1 for Q4_1/Q5_1) -> group g:
 * their qs (plus 128, unsigned, for Q8_0 weights with VNNI), d, and s (Q8_1) or
 * -off * sum(qs) (Q4_0: off 8, Q5_0: 16). */
TA2 static AI void qprep_a32_nb(uint8_t *g, const uint8_t *y, int nb, int qt, bool vnni)
{
    const bool q81 = qt == QT_Q4_1 || qt == QT_Q5_1;
    const int yb = q81 ? 36 : 34, qo = q81 ? 4 : 2;
    const bool flip = qt == QT_Q8_0 && vnni;
    if (nb == 8) {
        qg_store_steps8(g + QG_Q, y + qo, yb, flip);
    } else {
        __m256i v[8] = {0};
        UNROLL
        for (int b = 0; b < nb; b++) {
            v[b] = _mm256_loadu_si256((const __m256i *)(y + b * yb + qo));
            if (flip) v[b] = _mm256_xor_si256(v[b], _mm256_set1_epi8((char)0x80));
        }
        qg_store_steps(g + QG_Q, v, nb);
    }
    if (q81 && nb == 8) {
        __m256 d, sa;
        qg_half_pairs8(y, yb, &d, &sa);
        _mm256_store_ps((float *)(g + QG_D), d);
        _mm256_store_ps((float *)(g + QG_M), sa);
    } else {
        _mm256_store_ps((float *)(g + QG_D), qg_spread(qg_halves(y, yb, nb), nb, false));
        if (q81)
            _mm256_store_ps((float *)(g + QG_M), qg_spread(qg_halves(y + 2, yb, nb), nb, false));
    }
    if (qt == QT_Q4_0 || qt == QT_Q5_0) {
        const int sh = qt == QT_Q4_0 ? 3 : 4;
        _mm256_store_si256((__m256i *)(g + QG_I),
                           _mm256_sub_epi32(_mm256_setzero_si256(),
                                            _mm256_slli_epi32(qg_lane_sums(g + QG_Q, nb), sh)));
    }
}

/* The same with nb a constant (the transposes then stay in registers). */
TA2 static AI void qprep_w32(uint8_t *g, const uint8_t *x, int nb, int qt, bool vnni)
{
    switch (nb) {
    case 8: qprep_w32_nb(g, x, 8, qt, vnni); break;
    case 4: qprep_w32_nb(g, x, 4, qt, vnni); break;
    case 2: qprep_w32_nb(g, x, 2, qt, vnni); break;
    default: qprep_w32_nb(g, x, 1, qt, vnni); break;
    }
}

TA2 static AI void qprep_a32(uint8_t *g, const uint8_t *y, int nb, int qt, bool vnni)
{
    switch (nb) {
    case 8: qprep_a32_nb(g, y, 8, qt, vnni); break;
    case 4: qprep_a32_nb(g, y, 4, qt, vnni); break;
    case 2: qprep_a32_nb(g, y, 2, qt, vnni); break;
    default: qprep_a32_nb(g, y, 1, qt, vnni); break;
    }
}

/* Flags of a prepared type for the micro-kernels. */
enum {
    QF_AU = 1,    /* the activation is the unsigned side of the products (else the weight) */
    QF_WINIT = 2, /* init from the weight group */
    QF_AINIT = 4, /* init from the activation group */
    QF_M = 8,     /* add m_w * m_a per lane */
    QF_SC = 16,   /* multiply the integer lanes by the weight's sc */
    QF_SIGN = 32, /* AVX2 Q8_0: both signed; |w| times a with w's sign */
};

/* rm x rn pairs over the ng prepared groups of a chunk (gs[g] steps each): W holds rm
 * prepared weight rows, A rn activation rows, rs bytes apart. The pairs' float
 * accumulators come from fm (fm[16 j + i]; zeros when first) and go back there, or,
 * after the last chunk, summed to s[j * ldc + i]. */
#define QMK_HEAD                                                                                   \
    __m256 f[4][4];                                                                                \
    UNROLL                                                                                         \
    for (int j = 0; j < rn; j++) {                                                                 \
        UNROLL                                                                                     \
        for (int i = 0; i < rm; i++)                                                               \
            f[j][i] = first ? _mm256_setzero_ps() : fm[16 * j + i];                                \
    }

/* The group's integer lanes acc[j][i] (init included) into the float accumulators:
 * (times sc), times d_w * d_a, (plus m_w * m_a). */
#define QMK_SCALE                                                                                  \
    UNROLL                                                                                         \
    for (int j = 0; j < rn; j++) {                                                                 \
        const __m256 da = _mm256_load_ps((const float *)(ag + j * rs + QG_D));                     \
        UNROLL                                                                                     \
        for (int i = 0; i < rm; i++) {                                                             \
            __m256i iv = acc[j][i];                                                                \
            if (fl & QF_SC)                                                                        \
                iv = _mm256_mullo_epi32(                                                           \
                    iv, _mm256_load_si256((const __m256i *)(wg + i * rs + QG_SC)));                \
            const __m256 d =                                                                       \
                _mm256_mul_ps(_mm256_load_ps((const float *)(wg + i * rs + QG_D)), da);            \
            f[j][i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(iv), f[j][i]);                         \
            if (fl & QF_M)                                                                         \
                f[j][i] =                                                                          \
                    _mm256_fmadd_ps(_mm256_load_ps((const float *)(wg + i * rs + QG_M)),           \
                                    _mm256_load_ps((const float *)(ag + j * rs + QG_M)), f[j][i]); \
        }                                                                                          \
    }

/* After the last chunk the pairs' sums, else their accumulators kept for the next. */
#define QMK_TAIL                                                                                   \
    UNROLL                                                                                         \
    for (int j = 0; j < rn; j++) {                                                                 \
        if (last)                                                                                  \
            store_rm(s + j * ldc, hsum4_ps(f[j], rm), rm);                                         \
        else                                                                                       \
            UNROLL                                                                                 \
        for (int i = 0; i < rm; i++)                                                               \
            fm[16 * j + i] = f[j][i];                                                              \
    }

/* The integer start of a pair's lanes. */
#define QMK_INIT(j, i)                                                                             \
    ((fl & QF_WINIT)   ? _mm256_load_si256((const __m256i *)(wg + (i)*rs + QG_I))                  \
     : (fl & QF_AINIT) ? _mm256_load_si256((const __m256i *)(ag + (j)*rs + QG_I))                  \
                       : _mm256_setzero_si256())

/* VNNI: one VPDPBUSD per pair and step (unsigned x signed bytes, four products added
 * into each 32-bit lane, no saturation), the lanes starting from init. */
TA5 static AI void qmk_step_vnni(__m256i acc[4][4], const uint8_t *wg, const uint8_t *ag, size_t rs,
                                 int k, const int rm, const int rn, const int fl)
{
    __m256i wq[4];
    UNROLL
    for (int i = 0; i < rm; i++)
        wq[i] = _mm256_load_si256((const __m256i *)(wg + i * rs + 32 * k));
    UNROLL
    for (int j = 0; j < rn; j++) {
        const __m256i aq = _mm256_load_si256((const __m256i *)(ag + j * rs + 32 * k));
        UNROLL
        for (int i = 0; i < rm; i++)
            acc[j][i] = (fl & QF_AU) ? _mm256_dpbusd_epi32(acc[j][i], aq, wq[i])
                                     : _mm256_dpbusd_epi32(acc[j][i], wq[i], aq);
    }
}

TA5 static AI void qmk_vnni(const uint8_t *W, const uint8_t *A, size_t rs, const uint8_t *gs,
                            int ng, __m256 *fm, bool first, bool last, float *s, size_t ldc,
                            const int rm, const int rn, const int fl)
{
    QMK_HEAD
    for (int g = 0; g < ng; g++) {
        const uint8_t *wg = W + g * QG_BYTES, *ag = A + g * QG_BYTES;
        __m256i acc[4][4];
        UNROLL
        for (int j = 0; j < rn; j++) {
            UNROLL
            for (int i = 0; i < rm; i++)
                acc[j][i] = QMK_INIT(j, i);
        }
        if (gs[g] == 8) {
            UNROLL
            for (int k = 0; k < 8; k++)
                qmk_step_vnni(acc, wg, ag, rs, k, rm, rn, fl);
        } else {
            for (int k = 0; k < gs[g]; k++)
                qmk_step_vnni(acc, wg, ag, rs, k, rm, rn, fl);
        }
        QMK_SCALE
    }
    QMK_TAIL
}

/* AVX2: VPMADDUBSW per pair and step into 16-bit sums, widened (VPMADDWD) every `flush`
 * steps, before any could overflow: unsigned values up to 15 allow 8 steps, 31 four,
 * 63 two (|a| <= 128). QF_SIGN (Q8_0, both signed): |w| times a with w's sign, widened
 * every step. */
TA2 static AI void qmk_avx2(const uint8_t *W, const uint8_t *A, size_t rs, const uint8_t *gs,
                            int ng, __m256 *fm, bool first, bool last, float *s, size_t ldc,
                            const int rm, const int rn, const int fl, const int flush)
{
    const __m256i ones = _mm256_set1_epi16(1);
    QMK_HEAD
    for (int g = 0; g < ng; g++) {
        const uint8_t *wg = W + g * QG_BYTES, *ag = A + g * QG_BYTES;
        const int ns = gs[g];
        __m256i acc[4][4];
        UNROLL
        for (int j = 0; j < rn; j++) {
            UNROLL
            for (int i = 0; i < rm; i++)
                acc[j][i] = _mm256_setzero_si256();
        }
        for (int k0 = 0; k0 < ns; k0 += flush) {
            __m256i p[4][4];
            UNROLL
            for (int j = 0; j < rn; j++) {
                UNROLL
                for (int i = 0; i < rm; i++)
                    p[j][i] = _mm256_setzero_si256();
            }
            const int k1 = k0 + flush < ns ? k0 + flush : ns;
            for (int k = k0; k < k1; k++) {
                __m256i wq[4], wa[4];
                UNROLL
                for (int i = 0; i < rm; i++) {
                    wq[i] = _mm256_load_si256((const __m256i *)(wg + i * rs + 32 * k));
                    if (fl & QF_SIGN) wa[i] = _mm256_sign_epi8(wq[i], wq[i]);
                }
                UNROLL
                for (int j = 0; j < rn; j++) {
                    const __m256i aq = _mm256_load_si256((const __m256i *)(ag + j * rs + 32 * k));
                    UNROLL
                    for (int i = 0; i < rm; i++)
                        p[j][i] = _mm256_add_epi16(
                            p[j][i], (fl & QF_SIGN)
                                         ? _mm256_maddubs_epi16(wa[i], _mm256_sign_epi8(aq, wq[i]))
                                         : _mm256_maddubs_epi16(wq[i], aq));
                }
            }
            UNROLL
            for (int j = 0; j < rn; j++) {
                UNROLL
                for (int i = 0; i < rm; i++)
                    acc[j][i] = _mm256_add_epi32(acc[j][i], _mm256_madd_epi16(p[j][i], ones));
            }
        }
        UNROLL
        for (int j = 0; j < rn; j++) {
            UNROLL
            for (int i = 0; i < rm; i++)
                acc[j][i] = _mm256_add_epi32(acc[j][i], QMK_INIT(j, i));
        }
        QMK_SCALE
    }
    QMK_TAIL
}

/* ---- K-quants: a super-block's sub-blocks are the blocks of its groups ---- */

/* Q4_K (144 B) -> one group: sub-block j (32 elements: qs[32(j/2) ..] low nibbles for
 * even j, high for odd) in lane j; sc_j as integers, d, and dmin * m_j in m. Q5_K
 * (176 B, q5): the same with qs at 48 and bit j of qh[l] as bit 4 of element l. */
TA2 static AI void qprep_w_q4k(uint8_t *g, const uint8_t *x, const bool q5)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), m16 = _mm256_set1_epi8(0x10);
    __m256i v[8], hb = q5 ? _mm256_loadu_si256((const __m256i *)(x + 16)) : _mm256_setzero_si256();
    UNROLL
    for (int k = 0; k < 4; k++) {
        const __m256i qb = _mm256_loadu_si256((const __m256i *)(x + (q5 ? 48 : 16) + 32 * k));
        v[2 * k] = _mm256_and_si256(qb, m4);
        v[2 * k + 1] = _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4);
        if (q5) {
            v[2 * k] = _mm256_or_si256(v[2 * k], _mm256_and_si256(_mm256_slli_epi16(hb, 4), m16));
            v[2 * k + 1] =
                _mm256_or_si256(v[2 * k + 1], _mm256_and_si256(_mm256_slli_epi16(hb, 3), m16));
            hb = _mm256_srli_epi16(hb, 2);
        }
    }
    qg_store_steps(g + QG_Q, v, 8);
    uint32_t sm[4];
    q4k_scales_mins(x + 4, sm);
    /* (from registers: a 16-byte load of four 4-byte stores would stall) */
    const __m128i scm = _mm_setr_epi32((int)sm[0], (int)sm[1], (int)sm[2], (int)sm[3]);
    _mm256_store_si256((__m256i *)(g + QG_SC), _mm256_cvtepu8_epi32(scm));
    const __m256 mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8)));
    _mm256_store_ps((float *)(g + QG_M), _mm256_mul_ps(_mm256_set1_ps(half_to_f32(x + 2)), mins));
    _mm256_store_ps((float *)(g + QG_D), _mm256_set1_ps(half_to_f32(x)));
}

/* Q8_K (292 B) for Q4_K and Q5_K -> one group: qs of sub-block j in lane j, d, and
 * -d * (bsums[2j] + bsums[2j+1]) in m. */
TA2 static AI void qprep_a_q4k(uint8_t *g, const uint8_t *y)
{
    __m256i v[8];
    UNROLL
    for (int j = 0; j < 8; j++)
        v[j] = _mm256_loadu_si256((const __m256i *)(y + 4 + 32 * j));
    qg_store_steps(g + QG_Q, v, 8);
    const float dy = ldf(y);
    const __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)(y + 4 + QK_K)),
                                      _mm_loadu_si128((const __m128i *)(y + 4 + QK_K + 16)));
    _mm256_store_ps(
        (float *)(g + QG_M),
        _mm256_mul_ps(_mm256_set1_ps(-dy), _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(bs))));
    _mm256_store_ps((float *)(g + QG_D), _mm256_set1_ps(dy));
}

/* Q6_K's 128 elements of a half as 4 vectors of two 16-element sub-blocks (y[k]:
 * sub-blocks 2k, 2k+1) -> 4 steps, lane order 0, 2, 4, 6, 1, 3, 5, 7 (qg_transpose16
 * with those pieces). */
TA2 static AI void qg_store_q6k(uint8_t *q, const __m256i *y)
{
    __m256i t[4];
    qg_transpose16(y, t);
    UNROLL
    for (int k = 0; k < 4; k++)
        _mm256_store_si256((__m256i *)q + k, t[k]);
}

/* Q6_K (210 B), half h (128 elements, sub-blocks 8h .. 8h+7 of 16) -> one group of 4
 * steps: the unsigned q (value q - 32; the activation's init takes 32 * bsums back),
 * sc as integers, d. */
TA2 static AI void qprep_w_q6k(uint8_t *g, const uint8_t *x, int h)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
    const __m256i m2h = _mm256_set1_epi8(0x0c), m30 = _mm256_set1_epi8(0x30);
    const uint8_t *ql = x + 64 * h, *qhp = x + 128 + 32 * h;
    const __m256i b1 = _mm256_loadu_si256((const __m256i *)ql);
    const __m256i b2 = _mm256_loadu_si256((const __m256i *)(ql + 32));
    const __m256i bh = _mm256_loadu_si256((const __m256i *)qhp);
    __m256i q[4];
    q[0] =
        _mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_slli_epi16(_mm256_and_si256(bh, m2), 4));
    q[1] =
        _mm256_or_si256(_mm256_and_si256(b2, m4), _mm256_slli_epi16(_mm256_and_si256(bh, m2h), 2));
    q[2] =
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), _mm256_and_si256(bh, m30));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                           _mm256_and_si256(_mm256_srli_epi16(bh, 2), m30));
    qg_store_q6k(g + QG_Q, q);
    const __m128i sc =
        _mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)(x + 192 + 8 * h)),
                         _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 0, 0, 0, 0, 0, 0, 0, 0));
    _mm256_store_si256((__m256i *)(g + QG_SC), _mm256_cvtepi8_epi32(sc));
    _mm256_store_ps((float *)(g + QG_D), _mm256_set1_ps(half_to_f32(x + 208)));
}

/* Q8_K for Q6_K, half h -> one group: qs, d, init -32 * bsums[j]. */
TA2 static AI void qprep_a_q6k(uint8_t *g, const uint8_t *y, int h)
{
    __m256i v[4];
    UNROLL
    for (int k = 0; k < 4; k++)
        v[k] = _mm256_loadu_si256((const __m256i *)(y + 4 + 128 * h + 32 * k));
    qg_store_q6k(g + QG_Q, v);
    const __m128i bs =
        _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(y + 4 + QK_K + 16 * h)),
                         _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
    _mm256_store_si256(
        (__m256i *)(g + QG_I),
        _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_cvtepi16_epi32(bs), 5)));
    _mm256_store_ps((float *)(g + QG_D), _mm256_set1_ps(ldf(y)));
}

/* ---- the tile driver ---- */

enum { QT_Q4_K = QT_Q5_1 + 1, QT_Q5_K, QT_Q6_K };

/* Groups of a row of n elements. */
TA2 static AI int64_t qt_ngroups(int64_t n, int qt)
{
    if (qt == QT_Q4_K || qt == QT_Q5_K) return n / QK_K;
    if (qt == QT_Q6_K) return 2 * (n / QK_K);
    const int64_t nb = n / QK;
    return nb / 8 + __builtin_popcount((unsigned)(nb & 7));
}

/* Group gi of a row of nb 32-element blocks: its blocks (8, then 4, 2, 1 for the
 * tail), the first at *b0. */
TA2 static AI int qt_group32(int64_t nb, int64_t gi, int64_t *b0)
{
    const int64_t nfull = nb / 8;
    if (gi < nfull) {
        *b0 = 8 * gi;
        return 8;
    }
    int64_t b = 8 * nfull, t = gi - nfull;
    for (int sz = 4; sz; sz >>= 1) {
        if (!(nb & sz)) continue;
        if (t == 0) {
            *b0 = b;
            return sz;
        }
        t--;
        b += sz;
    }
    *b0 = b;
    return 0;
}

/* Prepares group gi of weight row x and activation row y (given nr, nc rows). */
TA2 static AI int qt_prep(uint8_t *wg, const uint8_t *w, size_t ws, int nr, uint8_t *ag,
                          const uint8_t *a, size_t as, int nc, size_t rs, int64_t n, int64_t gi,
                          int qt, bool vnni)
{
    if (qt == QT_Q4_K || qt == QT_Q5_K) {
        const bool q5 = qt == QT_Q5_K;
        for (int i = 0; i < nr; i++)
            qprep_w_q4k(wg + i * rs, w + i * ws + gi * (q5 ? 176 : 144), q5);
        for (int j = 0; j < nc; j++)
            qprep_a_q4k(ag + j * rs, a + j * as + gi * 292);
        return 8;
    }
    if (qt == QT_Q6_K) {
        for (int i = 0; i < nr; i++)
            qprep_w_q6k(wg + i * rs, w + i * ws + (gi / 2) * 210, (int)(gi & 1));
        for (int j = 0; j < nc; j++)
            qprep_a_q6k(ag + j * rs, a + j * as + (gi / 2) * 292, (int)(gi & 1));
        return 4;
    }
    int64_t b0;
    const int nb = qt_group32(n / QK, gi, &b0);
    const size_t ab = qt == QT_Q4_1 || qt == QT_Q5_1 ? 36 : 34;
    for (int i = 0; i < nr; i++)
        qprep_w32(wg + i * rs, w + i * ws + b0 * qt_wbytes(qt), nb, qt, vnni);
    for (int j = 0; j < nc; j++)
        qprep_a32(ag + j * rs, a + j * as + b0 * ab, nb, qt, vnni);
    return nb;
}

/* A quantized tile: chunks of up to QT_CHUNK_GROUPS groups of the rows are prepared (all
 * nr weight and nc activation rows: 2 x 24 KiB on the stack, near L1) and run through
 * the micro-tiles, whose float accumulators wait in fm between chunks (a 576-element
 * row, 8 + 8 + 2 blocks, is one chunk; 1536 elements are two). */
#define QT_CHUNK_GROUPS 4
#define DEF_QTILE_DRIVER(SFX, TGT, VNNI, RM, RN, MK)                                               \
    TGT static AI void qtile_##SFX(int64_t n, int nr, int nc, float *s, size_t ldc,                \
                                   const uint8_t *w, size_t ws, const uint8_t *a, size_t as,       \
                                   const int qt, const int fl, const int flush)                    \
    {                                                                                              \
        _Alignas(32) uint8_t wp[ENG_TILE_MAX * QT_CHUNK_GROUPS * QG_BYTES];                        \
        _Alignas(32) uint8_t ap[ENG_TILE_MAX * QT_CHUNK_GROUPS * QG_BYTES];                        \
        __m256 fm[ENG_TILE_MAX * ENG_TILE_MAX];                                                    \
        uint8_t gs[QT_CHUNK_GROUPS];                                                               \
        (void)flush;                                                                               \
        const int64_t ngr = qt_ngroups(n, qt);                                                     \
        /* the rows after this tile's (the caller's next tile), prefetched into L2 a few           \
         * lines per micro-tile: the prepare step of a tile otherwise waits on memory */           \
        const uint8_t *pf = w + (size_t)nr * ws;                                                   \
        const size_t pf_lines = ((size_t)nr * ws + 63) / 64;                                       \
        const size_t pf_calls = (size_t)((nc + RN - 1) / RN) * (size_t)((nr + RM - 1) / RM) *      \
                                (size_t)((ngr + QT_CHUNK_GROUPS - 1) / QT_CHUNK_GROUPS);           \
        const size_t pf_per = pf_calls ? (pf_lines + pf_calls - 1) / pf_calls : 0;                 \
        size_t pf_next = 0;                                                                        \
        if (ngr == 0)                                                                              \
            for (int j = 0; j < nc; j++)                                                           \
                for (int i = 0; i < nr; i++)                                                       \
                    s[j * ldc + i] = 0.0f;                                                         \
        for (int64_t c0 = 0; c0 < ngr; c0 += QT_CHUNK_GROUPS) {                                    \
            const int ng = (int)(ngr - c0 < QT_CHUNK_GROUPS ? ngr - c0 : QT_CHUNK_GROUPS);         \
            const size_t rs = (size_t)ng * QG_BYTES;                                               \
            for (int g = 0; g < ng; g++)                                                           \
                gs[g] = (uint8_t)qt_prep(wp + g * QG_BYTES, w, ws, nr, ap + g * QG_BYTES, a, as,   \
                                         nc, rs, n, c0 + g, qt, VNNI);                             \
            const bool first = c0 == 0, last = c0 + ng >= ngr;                                     \
            TILE_LOOP(RM, RN, nr, nc, MK)                                                          \
        }                                                                                          \
    }

#define QT_PREFETCH                                                                                \
    for (size_t q_ = 0; q_ < pf_per && pf_next < pf_lines; q_++, pf_next++)                        \
        _mm_prefetch((const char *)pf + 64 * pf_next, _MM_HINT_T1);
#define QMK_VNNI(rm, rn)                                                                           \
    qmk_vnni(wp + i0 * rs, ap + j0 * rs, rs, gs, ng, fm + 16 * j0 + i0, first, last,               \
             s + j0 * ldc + i0, ldc, rm, rn, fl);                                                  \
    QT_PREFETCH
#define QMK_AVX2(rm, rn)                                                                           \
    qmk_avx2(wp + i0 * rs, ap + j0 * rs, rs, gs, ng, fm + 16 * j0 + i0, first, last,               \
             s + j0 * ldc + i0, ldc, rm, rn, fl, flush);                                           \
    QT_PREFETCH

/* AVX-512 (32 registers): 4 x 3 pairs, 12 integer and 12 float accumulators. AVX2 (16):
 * 2 x 3, with 16-bit, 32-bit and float accumulators per pair (some spilled: still the
 * fastest shape measured). */
DEF_QTILE_DRIVER(vnni, TA5, true, 4, 3, QMK_VNNI)
DEF_QTILE_DRIVER(avx2, TA2, false, 2, 3, QMK_AVX2)

#define DEF_QTILE(NAME, SFX, TGT, QT, FL, FLUSH)                                                   \
    TGT static void NAME(int64_t n, int nr, int nc, float *s, size_t ldc, const void *w,           \
                         size_t ws, const void *a, size_t as)                                      \
    {                                                                                              \
        qtile_##SFX(n, nr, nc, s, ldc, w, ws, a, as, QT, FL, FLUSH);                               \
    }

DEF_QTILE(tile_q8_0_avx2, avx2, TA2, QT_Q8_0, QF_SIGN, 1)
DEF_QTILE(tile_q4_0_avx2, avx2, TA2, QT_Q4_0, QF_AINIT, 8)
DEF_QTILE(tile_q4_1_avx2, avx2, TA2, QT_Q4_1, QF_M, 8)
DEF_QTILE(tile_q5_0_avx2, avx2, TA2, QT_Q5_0, QF_AINIT, 4)
DEF_QTILE(tile_q5_1_avx2, avx2, TA2, QT_Q5_1, QF_M, 4)
DEF_QTILE(tile_q4_k_avx2, avx2, TA2, QT_Q4_K, QF_SC | QF_M, 8)
DEF_QTILE(tile_q5_k_avx2, avx2, TA2, QT_Q5_K, QF_SC | QF_M, 4)
DEF_QTILE(tile_q6_k_avx2, avx2, TA2, QT_Q6_K, QF_SC | QF_AINIT, 2)
DEF_QTILE(tile_q8_0_avx512, vnni, TA5, QT_Q8_0, QF_AU | QF_WINIT, 0)
DEF_QTILE(tile_q4_0_avx512, vnni, TA5, QT_Q4_0, QF_AINIT, 0)
DEF_QTILE(tile_q4_1_avx512, vnni, TA5, QT_Q4_1, QF_M, 0)
DEF_QTILE(tile_q5_0_avx512, vnni, TA5, QT_Q5_0, QF_AINIT, 0)
DEF_QTILE(tile_q5_1_avx512, vnni, TA5, QT_Q5_1, QF_M, 0)
DEF_QTILE(tile_q4_k_avx512, vnni, TA5, QT_Q4_K, QF_SC | QF_M, 0)
DEF_QTILE(tile_q5_k_avx512, vnni, TA5, QT_Q5_K, QF_SC | QF_M, 0)
DEF_QTILE(tile_q6_k_avx512, vnni, TA5, QT_Q6_K, QF_SC | QF_AINIT, 0)

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
            [ENG_Q5_K] = vec_dot_q5_k_avx2,
            [ENG_Q6_K] = vec_dot_q6_k_avx2,
        },
    .tile =
        {
            [ENG_F32] = tile_f32_avx2,
            [ENG_F16] = tile_f16_avx2,
            [ENG_BF16] = tile_bf16_avx2,
            [ENG_Q8_0] = tile_q8_0_avx2,
            [ENG_Q4_0] = tile_q4_0_avx2,
            [ENG_Q4_1] = tile_q4_1_avx2,
            [ENG_Q5_0] = tile_q5_0_avx2,
            [ENG_Q5_1] = tile_q5_1_avx2,
            [ENG_Q4_K] = tile_q4_k_avx2,
            [ENG_Q5_K] = tile_q5_k_avx2,
            [ENG_Q6_K] = tile_q6_k_avx2,
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
            [ENG_Q5_K] = vec_dot_q5_k_avx512,
            [ENG_Q6_K] = vec_dot_q6_k_avx512,
        },
    .tile =
        {
            [ENG_F32] = tile_f32_avx512,
            [ENG_F16] = tile_f16_avx512,
            [ENG_BF16] = tile_bf16_avx512,
            [ENG_Q8_0] = tile_q8_0_avx512,
            [ENG_Q4_0] = tile_q4_0_avx512,
            [ENG_Q4_1] = tile_q4_1_avx512,
            [ENG_Q5_0] = tile_q5_0_avx512,
            [ENG_Q5_1] = tile_q5_1_avx512,
            [ENG_Q4_K] = tile_q4_k_avx512,
            [ENG_Q5_K] = tile_q5_k_avx512,
            [ENG_Q6_K] = tile_q6_k_avx512,
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
