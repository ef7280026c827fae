/* tests/test_engine_kernels.c: the row kernels (engine/kernels_ref.c, kernels_x86.c) and
 * the thread pool (core/pool.c).
 * - The reference activation quantizers byte for byte on hand-computed blocks (scales,
 *   ties, q8_1's s, q8_K's signed scale and bsums), and their invariants on random rows.
 * - The reference dot products against an independent computation: the weight row
 *   dequantized by eng_dequantize_row (bit-exact against the gguf package, see
 *   test_engine_quant.c), the activation decoded here from its block fields, the dot
 *   taken in double.
 * - Every SIMD set this CPU runs against the reference: the same activation bytes, and
 *   dot products within a small tolerance relative to sum |w_i a_i|, on many random
 *   rows of 256..4096 elements (zeros, extremes, ties, rows at odd addresses).
 * - Every set's tiles (blocks of dot products for prompts), the reference's included,
 *   against the reference dots and the set's own: every nr and nc in 1..16 at lengths
 *   that reach each tail case of the kernels, a few shapes at long lengths; rows at odd
 *   addresses with gaps between them; the largest quants (16-bit partial sums at their
 *   limits); outputs in a sentinel-filled buffer that must stay untouched elsewhere.
 * - The pool: every index once per run, parallel sums equal to serial ones, thousands
 *   of back-to-back runs, sleeping workers woken, pools of one, create/free cycles. */
/* cmocka needs these three first, in this order. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"
#include "engine/engine.h"
#include "engine/kernels.h"

/* ------------------------------------------------------------------ helpers ---- */

/* roughly normal (sum of uniforms), mean 0, deviation 1 */
static double rng_normal(uint64_t *s)
{
    double t = 0;
    for (int i = 0; i < 4; i++)
        t += rng_unit(s);
    return (t - 2.0) * 1.7320508;
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static float rd_f32(const uint8_t *p)
{
    float f;
    memcpy(&f, p, 4);
    return f;
}

static double half(const uint8_t *p)
{
    return eng_fp16_to_fp32(rd16(p));
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static size_t block_elems(int type)
{
    size_t e = 0, b = 0;
    assert_int_equal(eng_type_block(type, &e, &b), 0);
    return e;
}

static size_t row_bytes(int type, int64_t n)
{
    size_t e = 0, b = 0;
    assert_int_equal(eng_type_block(type, &e, &b), 0);
    return (size_t)n / e * b;
}

static const int wtypes[] = {ENG_F32,  ENG_F16,  ENG_BF16, ENG_Q8_0, ENG_Q4_0, ENG_Q4_1,
                             ENG_Q5_0, ENG_Q5_1, ENG_Q4_K, ENG_Q5_K, ENG_Q6_K};
#define N_WTYPES (sizeof wtypes / sizeof wtypes[0])
static const int atypes[] = {ENG_F32, ENG_F16, ENG_BF16, ENG_Q8_0, ENG_Q8_1, ENG_Q8_K};
#define N_ATYPES (sizeof atypes / sizeof atypes[0])

/* ------------------------------------------------------------- test data ---- */

/* Activation rows, by kind:
 * 0 normal(0, 1)  1 normal with rare large outliers  2 wide dynamic range per block
 * 3 zeros with a few non-zero blocks  4 large (1e4..1e6)  5 tiny (1e-30 .. 1e-20, and
 * a block of subnormals)  6 exact ties for the quantizers (halves at scale 1) */
static void make_activation(float *x, int64_t n, int kind, uint64_t *rs)
{
    for (int64_t i = 0; i < n; i++) {
        double v = rng_normal(rs);
        switch (kind) {
        case 1:
            if (rng_unit(rs) < 0.01) v *= 300;
            break;
        case 2: v *= ldexp(1.0, (int)(rng_next(rs) % 30) - 15); break;
        case 3: v = ((i / 256) % 3 == 1 && (i % 7) == 0) ? v : 0.0; break;
        case 4: v *= 1e4 * (1 + 99 * rng_unit(rs)); break;
        case 5: v *= (i / 32) % 4 == 0 ? 1e-40 : 1e-25 * (1 + rng_unit(rs)); break;
        case 6: {
            /* blocks of 32 whose amax is 127: d = 1, so x * id = x and halves are ties;
             * for q8_K (max 127 over 256) the same values are ties for nearest-even */
            long k = (long)(rng_next(rs) % 253) - 126;
            v = (i % 32 == 0) ? 127.0 : (double)k + ((i & 1) ? 0.5 : 0.0);
            break;
        }
        default: break;
        }
        x[i] = (float)v;
    }
}
#define N_ACT_KINDS 7

/* A finite half with |value| about 2^lo .. 2^hi (random sign). */
static uint16_t rand_half(uint64_t *rs, int lo, int hi)
{
    float v =
        (float)(ldexp(1.0 + rng_unit(rs), lo + (int)(rng_next(rs) % (uint64_t)(hi - lo + 1))));
    if (rng_next(rs) & 1) v = -v;
    return eng_fp32_to_fp16(v);
}

/* A weight row of `type`: random bytes everywhere (every nibble, bit and scale value,
 * Q8_0's -128 included) with half-precision scales set to finite values of a sane
 * range; kind 1 uses extreme scales (up to 2^15, and some zero), kind 2 all zeros. */
static void make_weights(uint8_t *w, int type, int64_t n, int kind, uint64_t *rs)
{
    size_t bytes = row_bytes(type, n);
    for (size_t i = 0; i < bytes; i++)
        w[i] = (uint8_t)rng_next(rs);
    if (kind == 2) {
        memset(w, 0, bytes);
        return;
    }
    const int lo = kind == 1 ? -20 : -10, hi = kind == 1 ? 14 : -2;
    switch (type) {
    case ENG_F32:
        for (int64_t i = 0; i < n; i++) {
            float v =
                (float)(rng_normal(rs) * ldexp(1.0, kind == 1 ? (int)(rng_next(rs) % 40) - 20 : 0));
            memcpy(w + 4 * i, &v, 4);
        }
        break;
    case ENG_F16:
        for (int64_t i = 0; i < n; i++)
            wr16(w + 2 * i, rand_half(rs, kind == 1 ? -24 : -8, kind == 1 ? 14 : 2));
        break;
    case ENG_BF16:
        for (int64_t i = 0; i < n; i++) {
            float v =
                (float)(rng_normal(rs) * ldexp(1.0, kind == 1 ? (int)(rng_next(rs) % 60) - 30 : 0));
            uint32_t u;
            memcpy(&u, &v, 4);
            wr16(w + 2 * i, (uint16_t)(u >> 16));
        }
        break;
    default: {
        size_t be = 0, bb = 0;
        eng_type_block(type, &be, &bb);
        for (int64_t b = 0; b < n / (int64_t)be; b++) {
            uint8_t *blk = w + (size_t)b * bb;
            bool zero = kind == 1 && rng_unit(rs) < 0.1;
            uint16_t d = zero ? 0 : rand_half(rs, lo, hi);
            uint16_t m = zero ? 0 : rand_half(rs, lo, hi);
            switch (type) {
            case ENG_Q8_0:
            case ENG_Q4_0:
            case ENG_Q5_0: wr16(blk, d); break;
            case ENG_Q4_1:
            case ENG_Q5_1:
            case ENG_Q4_K:
            case ENG_Q5_K: { /* d, then m or dmin (positive for the K types) */
                const bool k = type == ENG_Q4_K || type == ENG_Q5_K;
                wr16(blk, k ? (uint16_t)(d & 0x7fff) : d);
                wr16(blk + 2, k ? (uint16_t)(m & 0x7fff) : m);
                break;
            }
            case ENG_Q6_K: wr16(blk + 208, d); break;
            default: fail();
            }
        }
    }
    }
}

/* The activation decoded from its blocks (a: row of act type `at`), n floats. For
 * q8_1 also the per-block s and d*sum(qs) (for Q4_1/Q5_1's m*s term). */
static void decode_activation(int at, const uint8_t *a, int64_t n, double *out, double *s_stored,
                              double *s_exact)
{
    switch (at) {
    case ENG_F32:
        for (int64_t i = 0; i < n; i++)
            out[i] = rd_f32(a + 4 * i);
        break;
    case ENG_F16:
        for (int64_t i = 0; i < n; i++)
            out[i] = half(a + 2 * i);
        break;
    case ENG_BF16:
        for (int64_t i = 0; i < n; i++)
            out[i] = eng_bf16_to_fp32(rd16(a + 2 * i));
        break;
    case ENG_Q8_0:
        for (int64_t b = 0; b < n / 32; b++)
            for (int j = 0; j < 32; j++)
                out[32 * b + j] = half(a + 34 * b) * (int8_t)a[34 * b + 2 + j];
        break;
    case ENG_Q8_1:
        for (int64_t b = 0; b < n / 32; b++) {
            long sum = 0;
            for (int j = 0; j < 32; j++) {
                out[32 * b + j] = half(a + 36 * b) * (int8_t)a[36 * b + 4 + j];
                sum += (int8_t)a[36 * b + 4 + j];
            }
            s_stored[b] = half(a + 36 * b + 2);
            s_exact[b] = half(a + 36 * b) * (double)sum;
        }
        break;
    case ENG_Q8_K:
        for (int64_t b = 0; b < n / 256; b++)
            for (int j = 0; j < 256; j++)
                out[256 * b + j] = (double)rd_f32(a + 292 * b) * (int8_t)a[292 * b + 4 + j];
        break;
    default: fail();
    }
}

/* The independent dot: sum(w_i * a_i) in double from the dequantized weight row and the
 * decoded activation, plus, for Q4_1 / Q5_1, llama.cpp's use of the stored s (fp16 of
 * d * sum(qs) with the unrounded d) instead of the dequantized activation's sum:
 * m * (s - d_half * sum(qs)) per block. *mag = the sum of the terms' magnitudes. */
static double independent_dot(int wt, const uint8_t *w, const uint8_t *a, int64_t n, double *mag)
{
    float *wf = xmalloc((size_t)n * sizeof(float));
    double *af = xmalloc((size_t)n * sizeof(double));
    double *ss = xmalloc((size_t)(n / 32 + 1) * sizeof(double));
    double *se = xmalloc((size_t)(n / 32 + 1) * sizeof(double));
    assert_int_equal(eng_dequantize_row(wt, w, wf, n), 0);
    decode_activation(eng_act_type(wt), a, n, af, ss, se);
    double dot = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        dot += (double)wf[i] * af[i];
        m += fabs((double)wf[i] * af[i]);
    }
    if (wt == ENG_Q4_1 || wt == ENG_Q5_1) {
        const size_t bb = wt == ENG_Q4_1 ? 20 : 24;
        for (int64_t b = 0; b < n / 32; b++) {
            const double mb = half(w + bb * (size_t)b + 2);
            dot += mb * (ss[b] - se[b]);
            m += fabs(mb * ss[b]);
        }
    }
    free(wf);
    free(af);
    free(ss);
    free(se);
    *mag = m;
    return dot;
}

static void check_close(const char *what, double got, double want, double mag, double rel)
{
    double tol = rel * mag + 1e-35;
    if (!(fabs(got - want) <= tol)) {
        fprintf(stderr, "%s: %.9g, expected %.9g (diff %.3g, allowed %.3g, magnitude %.3g)\n", what,
                got, want, got - want, tol, mag);
        fail();
    }
}

/* ------------------------------------------------------------- selection ---- */

static void t_selection(void **state)
{
    (void)state;
    const eng_kernels *ref = eng_kernels_ref();
    assert_non_null(ref);
    assert_string_equal(ref->name, "ref");
    assert_ptr_equal(eng_kernels_get("ref"), ref);
    assert_null(eng_kernels_get("sse9"));
    assert_null(eng_kernels_get(NULL));

    const char *old = getenv("MLV_KERNELS");
    char *saved = old ? strdup(old) : NULL;
    unsetenv("MLV_KERNELS");
    const eng_kernels *best = eng_kernels_best();
    assert_non_null(best);
    fprintf(stderr, "kernels: best on this CPU is %s; avx2 %s, avx512 %s\n", best->name,
            eng_kernels_get("avx2") ? "yes" : "no", eng_kernels_get("avx512") ? "yes" : "no");
    if (eng_kernels_get("avx512"))
        assert_string_equal(best->name, "avx512");
    else if (eng_kernels_get("avx2"))
        assert_string_equal(best->name, "avx2");
    setenv("MLV_KERNELS", "ref", 1);
    assert_ptr_equal(eng_kernels_best(), ref);
    setenv("MLV_KERNELS", "avx2", 1);
    assert_string_equal(eng_kernels_best()->name, eng_kernels_get("avx2") ? "avx2" : "ref");
    setenv("MLV_KERNELS", "avx512", 1);
    assert_string_equal(eng_kernels_best()->name, eng_kernels_get("avx512") ? "avx512" : "ref");
    setenv("MLV_KERNELS", "bogus", 1);
    assert_ptr_equal(eng_kernels_best(), ref);
    if (saved) {
        setenv("MLV_KERNELS", saved, 1);
        free(saved);
    } else {
        unsetenv("MLV_KERNELS");
    }

    /* every set has every kernel the reference has */
    const char *names[] = {"ref", "avx2", "avx512"};
    for (size_t k = 0; k < 3; k++) {
        const eng_kernels *ks = eng_kernels_get(names[k]);
        if (!ks) continue;
        assert_string_equal(ks->name, names[k]);
        for (size_t i = 0; i < N_WTYPES; i++)
            assert_non_null(ks->vec_dot[wtypes[i]]);
        for (size_t i = 0; i < N_ATYPES; i++)
            assert_non_null(ks->quantize[atypes[i]]);
        assert_non_null(ks->dot_f16);
        assert_non_null(ks->mad_f16);
        assert_null(ks->vec_dot[ENG_Q2_K]);
    }
}

static void t_act_types(void **state)
{
    (void)state;
    assert_int_equal(eng_act_type(ENG_F32), ENG_F32);
    assert_int_equal(eng_act_type(ENG_F16), ENG_F16);
    assert_int_equal(eng_act_type(ENG_BF16), ENG_BF16);
    assert_int_equal(eng_act_type(ENG_Q8_0), ENG_Q8_0);
    assert_int_equal(eng_act_type(ENG_Q4_0), ENG_Q8_0);
    assert_int_equal(eng_act_type(ENG_Q5_0), ENG_Q8_0);
    assert_int_equal(eng_act_type(ENG_Q4_1), ENG_Q8_1);
    assert_int_equal(eng_act_type(ENG_Q5_1), ENG_Q8_1);
    assert_int_equal(eng_act_type(ENG_Q4_K), ENG_Q8_K);
    assert_int_equal(eng_act_type(ENG_Q5_K), ENG_Q8_K);
    assert_int_equal(eng_act_type(ENG_Q6_K), ENG_Q8_K);
    assert_int_equal(eng_act_type(ENG_Q2_K), -1);
    assert_int_equal(eng_act_type(999), -1);
    assert_int_equal(eng_act_row_bytes(ENG_F32, 576), 2304);
    assert_int_equal(eng_act_row_bytes(ENG_F16, 576), 1152);
    assert_int_equal(eng_act_row_bytes(ENG_BF16, 576), 1152);
    assert_int_equal(eng_act_row_bytes(ENG_Q4_0, 576), 18 * 34);
    assert_int_equal(eng_act_row_bytes(ENG_Q8_0, 576), 18 * 34);
    assert_int_equal(eng_act_row_bytes(ENG_Q4_1, 576), 18 * 36);
    assert_int_equal(eng_act_row_bytes(ENG_Q5_1, 576), 18 * 36);
    assert_int_equal(eng_act_row_bytes(ENG_Q4_K, 1536), 6 * 292);
    assert_int_equal(eng_act_row_bytes(ENG_Q5_K, 1536), 6 * 292);
    assert_int_equal(eng_act_row_bytes(ENG_Q6_K, 1536), 6 * 292);
    assert_int_equal(eng_act_row_bytes(ENG_Q3_K, 1536), 0);
}

/* ------------------------------------------------- reference quantizers ---- */

/* One block of 32: x_j = j - 15.5 for j < 31, x_31 = 127. amax = 127, so d = 1, id = 1
 * and every x_j * id is a tie: roundf takes it away from zero. */
static void tie_block(float *x)
{
    for (int j = 0; j < 31; j++)
        x[j] = (float)j - 15.5f;
    x[31] = 127.0f;
}

static int8_t tie_block_q(int j)
{
    return (int8_t)(j == 31 ? 127 : (j <= 15 ? j - 16 : j - 15));
}

/* Whether v is within float rounding of a tie (k + 0.5): the quantizer's float
 * arithmetic, not this test, decides those. */
static bool near_tie(double v)
{
    double f = fabs(v) - floor(fabs(v));
    return fabs(f - 0.5) < 1e-4;
}

static void t_ref_q8_0_layout(void **state)
{
    (void)state;
    const eng_kernels *k = eng_kernels_ref();
    float x[96];
    uint8_t y[3 * 34];
    tie_block(x);
    memset(x + 32, 0, 32 * sizeof(float)); /* a zero block */
    for (int j = 0; j < 32; j++)           /* 0.25 .. 8: amax 8, d = 8/127 */
        x[64 + j] = 0.25f * (float)(j + 1);
    k->quantize[ENG_Q8_0](x, y, 96);

    assert_int_equal(rd16(y), 0x3c00); /* d = 1.0 */
    for (int j = 0; j < 32; j++)
        assert_int_equal((int8_t)y[2 + j], tie_block_q(j));
    for (int j = 0; j < 34; j++)
        assert_int_equal(y[34 + j], 0);
    /* d = fp16(8/127) = 0x2c08 (0.06298828); q_j = round((j+1)/4 * 127/8) */
    assert_int_equal(rd16(y + 68), eng_fp32_to_fp16(8.0f / 127.0f));
    assert_int_equal(rd16(y + 68), 0x2c08);
    for (int j = 0; j < 32; j++) {
        const double v = (j + 1) * 127.0 / 32.0; /* x / d exactly */
        if (near_tie(v)) continue;               /* float's 1/d decides */
        assert_int_equal((int8_t)y[70 + j], (int)floor(v + 0.5));
    }
    assert_int_equal((int8_t)y[70 + 31], 127);
}

static void t_ref_q8_1_layout(void **state)
{
    (void)state;
    const eng_kernels *k = eng_kernels_ref();
    float x[64];
    uint8_t y[2 * 36];
    tie_block(x);
    for (int j = 0; j < 32; j++) /* amax 4 at j = 0, all negative */
        x[32 + j] = -4.0f / (float)(j + 1);
    k->quantize[ENG_Q8_1](x, y, 64);

    assert_int_equal(rd16(y), 0x3c00);
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        assert_int_equal((int8_t)y[4 + j], tie_block_q(j));
        sum += tie_block_q(j);
    }
    assert_int_equal(sum, 111);
    assert_int_equal(rd16(y + 2), 0x56f0); /* s = fp16(111 * 1.0) */

    /* second block: s uses the float d (4/127), not its half */
    const float d = 4.0f / 127.0f;
    sum = 0;
    for (int j = 0; j < 32; j++) {
        int q = (int8_t)y[36 + 4 + j];
        const double v = 127.0 / (j + 1);
        if (!near_tie(v)) assert_int_equal(q, -(int)floor(v + 0.5));
        sum += q;
    }
    assert_int_equal(rd16(y + 36), eng_fp32_to_fp16(d));
    assert_int_equal(rd16(y + 38), eng_fp32_to_fp16((float)sum * d));
}

static void t_ref_q8_k_layout(void **state)
{
    (void)state;
    const eng_kernels *k = eng_kernels_ref();
    float x[3 * 256];
    uint8_t y[3 * 292];
    /* block 0: ones, x_5 = -2: max = -2, iscale = 63.5, ones -> 63.5 -> 64 (even),
     * -2 -> -127, d = 1/63.5 */
    for (int j = 0; j < 256; j++)
        x[j] = 1.0f;
    x[5] = -2.0f;
    /* block 1: ones, x_3 = 2 and x_7 = -2: the first gives the sign: iscale = -63.5,
     * ones -> -63.5 -> -64, 2 -> -127, -2 -> 127, d = -1/63.5 */
    for (int j = 0; j < 256; j++)
        x[256 + j] = 1.0f;
    x[256 + 3] = 2.0f;
    x[256 + 7] = -2.0f;
    /* block 2: zeros */
    for (int j = 0; j < 256; j++)
        x[512 + j] = 0.0f;
    memset(y, 0x5a, sizeof y);
    k->quantize[ENG_Q8_K](x, y, 768);

    float d0 = rd_f32(y), d1 = rd_f32(y + 292);
    assert_true(d0 == 1.0f / 63.5f);
    assert_true(d1 == -1.0f / 63.5f);
    for (int j = 0; j < 256; j++) {
        assert_int_equal((int8_t)y[4 + j], j == 5 ? -127 : 64);
        assert_int_equal((int8_t)y[292 + 4 + j], j == 3 ? -127 : (j == 7 ? 127 : -64));
    }
    for (int g = 0; g < 16; g++) {
        assert_int_equal((int16_t)rd16(y + 260 + 2 * g), g == 0 ? 15 * 64 - 127 : 16 * 64);
        assert_int_equal((int16_t)rd16(y + 292 + 260 + 2 * g),
                         g == 0 ? 14 * -64 - 127 + 127 : 16 * -64);
    }
    for (int j = 0; j < 292; j++)
        assert_int_equal(y[584 + j], 0);
}

static void t_ref_float_rounding(void **state)
{
    (void)state;
    const eng_kernels *k = eng_kernels_ref();
    const float x[] = {1.0f,
                       -2.5f,
                       0x1.01p0f /* bf16 tie: to even (down) */,
                       0x1.03p0f /* tie: to even (up) */,
                       0x1.010002p0f /* above the tie */,
                       3.4e38f,
                       NAN,
                       -0.0f,
                       65520.0f,
                       1e-8f};
    const int n = sizeof x / sizeof x[0];
    uint8_t h[2 * 10], b[2 * 10], f[4 * 10];
    k->quantize[ENG_F16](x, h, n);
    k->quantize[ENG_BF16](x, b, n);
    k->quantize[ENG_F32](x, f, n);
    assert_memory_equal(f, x, sizeof x);
    for (int i = 0; i < n; i++)
        assert_int_equal(rd16(h + 2 * i), eng_fp32_to_fp16(x[i]));
    const uint16_t bf[] = {0x3f80, 0xc020, 0x3f80, 0x3f82, 0x3f81, 0x7f80 /* rounds up to inf */,
                           0x7fc0, 0x8000, 0x4780, 0x322c};
    for (int i = 0; i < n; i++) {
        if (rd16(b + 2 * i) != bf[i])
            fprintf(stderr, "bf16 of %a: 0x%04x, expected 0x%04x\n", x[i], rd16(b + 2 * i), bf[i]);
        assert_int_equal(rd16(b + 2 * i), bf[i]);
    }
}

/* Invariants of the quantizers on random rows: q8_0/q8_1 scales are fp16(amax/127),
 * every q within one step of x/d; q8_1's s; q8_K's bsums and the sign of its scale. */
static void t_ref_quantizer_invariants(void **state)
{
    (void)state;
    const eng_kernels *k = eng_kernels_ref();
    uint64_t rs = 11;
    const int64_t n = 1024;
    float x[1024];
    uint8_t y[4 * 292 + 32 * 36];
    for (int kind = 0; kind < N_ACT_KINDS; kind++) {
        make_activation(x, n, kind, &rs);
        k->quantize[ENG_Q8_1](x, y, n);
        for (int b = 0; b < n / 32; b++) {
            const uint8_t *blk = y + 36 * b;
            float amax = 0;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(x[32 * b + j]));
            const float d = amax / 127.0f;
            assert_int_equal(rd16(blk), eng_fp32_to_fp16(d));
            int sum = 0;
            for (int j = 0; j < 32; j++) {
                int q = (int8_t)blk[4 + j];
                /* (a subnormal amax/127 makes 1/d infinite: saturated q, times d = 0) */
                if (d > 0 && isfinite(1.0f / d)) {
                    assert_true(q >= -127 && q <= 127);
                    assert_true(fabs((double)x[32 * b + j] / d - q) <= 0.5 + 1e-4);
                }
                sum += q;
            }
            assert_int_equal(rd16(blk + 2), eng_fp32_to_fp16((float)sum * d));
        }
        k->quantize[ENG_Q8_K](x, y, n);
        for (int b = 0; b < n / 256; b++) {
            const uint8_t *blk = y + 292 * b;
            for (int g = 0; g < 16; g++) {
                int sum = 0;
                for (int l = 0; l < 16; l++)
                    sum += (int8_t)blk[4 + 16 * g + l];
                assert_int_equal((int16_t)rd16(blk + 260 + 2 * g), sum);
            }
            float d = rd_f32(blk);
            int j0 = 0;
            for (int j = 1; j < 256; j++)
                if (fabsf(x[256 * b + j]) > fabsf(x[256 * b + j0])) j0 = j;
            if (x[256 * b + j0] != 0 && isfinite(-127.0f / x[256 * b + j0])) {
                assert_int_equal((int8_t)blk[4 + j0], -127);
                assert_true((d < 0) == (x[256 * b + j0] > 0));
            }
        }
    }
}

/* ----------------------------------------------------- reference dots ---- */

static void t_ref_dots_independent(void **state)
{
    (void)state;
    const eng_kernels *k = eng_kernels_ref();
    uint64_t rs = 2024;
    const int64_t lens[] = {256, 512, 1536, 4096, 288, 800};
    float *x = xmalloc(4096 * sizeof(float));
    uint8_t *w = xmalloc(4096 * 4);
    uint8_t *a = xmalloc(4096 * 4);
    for (size_t t = 0; t < N_WTYPES; t++) {
        const int wt = wtypes[t], at = eng_act_type(wt);
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            const int64_t n = lens[li];
            if (n % (int64_t)block_elems(wt)) continue;
            for (int wk = 0; wk < 3; wk++)
                for (int ak = 0; ak < N_ACT_KINDS; ak++) {
                    make_weights(w, wt, n, wk, &rs);
                    make_activation(x, n, ak, &rs);
                    k->quantize[at](x, a, n);
                    float got = -1;
                    k->vec_dot[wt](n, &got, w, a);
                    double mag;
                    double want = independent_dot(wt, w, a, n, &mag);
                    char what[96];
                    snprintf(what, sizeof what, "ref %s n=%lld weights %d act %d",
                             eng_type_name(wt), (long long)n, wk, ak);
                    if (!isfinite(want) || !isfinite(mag)) continue; /* overflow by design */
                    check_close(what, got, want, mag, 1e-5);
                    if (wk == 2) assert_true(got == 0.0f);
                }
        }
    }
    free(x);
    free(w);
    free(a);
}

/* Hand-computed dots on tiny rows: a Q4_0 block of q = 9 (value 1 * d) against q8_0
 * ones; a Q4_1 block; a Q4_K and a Q5_K super-block with one sub-block set. */
static void t_ref_dots_hand(void **state)
{
    (void)state;
    const eng_kernels *k = eng_kernels_ref();
    uint8_t w[210], a[292];
    _Static_assert(sizeof w >= 176, "a Q5_K block fits");
    float s;

    /* Q4_0: d = 0.5, all nibbles 9 (value +1 -> 0.5); Q8_0: d = 1, qs = 0..31 */
    wr16(w, eng_fp32_to_fp16(0.5f));
    memset(w + 2, 0x99, 16);
    wr16(a, 0x3c00);
    for (int j = 0; j < 32; j++)
        a[2 + j] = (uint8_t)j;
    k->vec_dot[ENG_Q4_0](32, &s, w, a);
    assert_true(s == 0.5f * 496.0f);

    /* Q4_1: d = 2, m = -1, nibbles 3 (value 5); Q8_1: d = 0.5, s = 4, qs = 1 */
    wr16(w, eng_fp32_to_fp16(2.0f));
    wr16(w + 2, eng_fp32_to_fp16(-1.0f));
    memset(w + 4, 0x33, 16);
    wr16(a, eng_fp32_to_fp16(0.5f));
    wr16(a + 2, eng_fp32_to_fp16(4.0f));
    memset(a + 4, 1, 32);
    k->vec_dot[ENG_Q4_1](32, &s, w, a);
    assert_true(s == 2.0f * 0.5f * 96.0f - 4.0f);

    /* Q4_K: d = 1, dmin = 0.5; sub-block 5 scale 3, min 7 (the high-bit packing);
     * others 0; nibbles 2 everywhere. Q8_K: d = 0.25, qs = 1, bsums = 16. */
    memset(w, 0, 144);
    wr16(w, 0x3c00);
    wr16(w + 2, eng_fp32_to_fp16(0.5f));
    w[4 + 9] = 3 | (7 << 4); /* scales 4-7's low nibbles live in bytes 8..11 */
    memset(w + 16, 0x22, 128);
    float dy = 0.25f;
    memcpy(a, &dy, 4);
    memset(a + 4, 1, 256);
    for (int g = 0; g < 16; g++)
        wr16(a + 260 + 2 * g, 16);
    k->vec_dot[ENG_Q4_K](256, &s, w, a);
    /* sub-block 5: 32 * (3 * 2 * 1) * 0.25 - 0.5 * 0.25 * 7 * 32 = 48 - 28 */
    assert_true(s == 20.0f);

    /* Q5_K: the same scales; nibbles 2 everywhere and the fifth bit (bit 5 of qh[l]:
     * sub-block 5) set for l even, so q = 18 on half of sub-block 5 and 2 on the other
     * half; the fifth bits of other sub-blocks (bits 0-4, 6, 7) set everywhere, where
     * the scale is 0. Same Q8_K.
     *   16 * 3 * (18 + 2) * 0.25 - 0.5 * 0.25 * 7 * 32 = 240 - 28 */
    memset(w, 0, 176);
    wr16(w, 0x3c00);
    wr16(w + 2, eng_fp32_to_fp16(0.5f));
    w[4 + 9] = 3 | (7 << 4);
    for (int l = 0; l < 32; l++)
        w[16 + l] = (uint8_t)(l % 2 ? 0xdf : 0xff);
    memset(w + 48, 0x22, 128);
    k->vec_dot[ENG_Q5_K](256, &s, w, a);
    assert_true(s == 212.0f);
}

static void t_ref_dot_f16_mad(void **state)
{
    (void)state;
    const eng_kernels *k = eng_kernels_ref();
    uint64_t rs = 5;
    uint16_t x[300], y[300];
    float acc[300], acc0[300];
    for (int i = 0; i < 300; i++) {
        x[i] = rand_half(&rs, -6, 4);
        y[i] = rand_half(&rs, -6, 4);
        acc[i] = acc0[i] = (float)rng_normal(&rs);
    }
    float s;
    k->dot_f16(300, &s, x, y);
    double want = 0, mag = 0;
    for (int i = 0; i < 300; i++) {
        want += (double)eng_fp16_to_fp32(x[i]) * eng_fp16_to_fp32(y[i]);
        mag += fabs((double)eng_fp16_to_fp32(x[i]) * eng_fp16_to_fp32(y[i]));
    }
    check_close("ref dot_f16", s, want, mag, 1e-7);
    k->mad_f16(300, acc, x, 0.375f);
    for (int i = 0; i < 300; i++) {
        float p = eng_fp16_to_fp32(x[i]) * 0.375f;
        float e = acc0[i] + p;
        assert_true(acc[i] == e);
    }
}

/* ------------------------------------------------------ SIMD vs reference ---- */

static void compare_set(const char *name)
{
    const eng_kernels *ks = eng_kernels_get(name), *ref = eng_kernels_ref();
    if (!ks) {
        fprintf(stderr, "kernels %s: not available on this CPU, skipped\n", name);
        skip();
    }
    uint64_t rs = 77;
    float *x = xmalloc(4096 * sizeof(float));
    /* +1: rows at odd addresses */
    uint8_t *wbuf = xmalloc(4096 * 4 + 1), *abuf = xmalloc(4096 * 4 + 1),
            *rbuf = xmalloc(4096 * 4 + 1);
    long n_dots = 0, n_quants = 0;
    double worst[ENG_NTYPES] = {0};

    for (int iter = 0; iter < 60; iter++) {
        /* lengths 256..4096: multiples of 256 mostly, of 32 for the 32-blocks */
        int64_t n = 256 * (1 + (int64_t)(rng_next(&rs) % 16));
        if (iter % 3 == 1) n = 32 * (8 + (int64_t)(rng_next(&rs) % 121));
        const int ak = iter % N_ACT_KINDS;
        const size_t off = (size_t)(iter & 1);
        make_activation(x, n, ak, &rs);

        /* quantizers: identical bytes */
        for (size_t t = 0; t < N_ATYPES; t++) {
            const int at = atypes[t];
            if (at == ENG_Q8_K && n % 256) continue;
            const size_t bytes = at == ENG_Q8_K   ? (size_t)n / 256 * 292
                                 : at == ENG_Q8_1 ? (size_t)n / 32 * 36
                                 : at == ENG_Q8_0 ? (size_t)n / 32 * 34
                                 : at == ENG_F32  ? (size_t)n * 4
                                                  : (size_t)n * 2;
            memset(abuf, 0xa5, bytes + 1);
            memset(rbuf, 0x5a, bytes + 1);
            ref->quantize[at](x, rbuf + off, n);
            ks->quantize[at](x, abuf + off, n);
            for (size_t i = 0; i < bytes; i++)
                if (abuf[off + i] != rbuf[off + i]) {
                    fprintf(stderr,
                            "%s quantize %s n=%lld kind %d: byte %zu differs: 0x%02x, ref 0x%02x\n",
                            name, eng_type_name(at), (long long)n, ak, i, abuf[off + i],
                            rbuf[off + i]);
                    fail();
                }
            n_quants++;
        }

        /* dots: within tolerance of the reference, on the reference's activation */
        for (size_t t = 0; t < N_WTYPES; t++) {
            const int wt = wtypes[t], at = eng_act_type(wt);
            if (n % (int64_t)block_elems(wt)) continue;
            ref->quantize[at](x, abuf + off, n);
            for (int wk = 0; wk < 3; wk++) {
                make_weights(wbuf + off, wt, n, wk, &rs);
                float got = -1, want = -2;
                ks->vec_dot[wt](n, &got, wbuf + off, abuf + off);
                ref->vec_dot[wt](n, &want, wbuf + off, abuf + off);
                double mag;
                double exact = independent_dot(wt, wbuf + off, abuf + off, n, &mag);
                if (!isfinite(exact) || !isfinite(mag)) continue;
                char what[96];
                snprintf(what, sizeof what, "%s %s n=%lld weights %d act %d", name,
                         eng_type_name(wt), (long long)n, wk, ak);
                const double rel = wt == ENG_F32 || wt == ENG_F16 || wt == ENG_BF16 ? 2e-5 : 1e-5;
                check_close(what, got, want, mag, rel);
                if (mag > 0) {
                    double e = fabs((double)got - want) / mag;
                    if (e > worst[wt]) worst[wt] = e;
                }
                if (wk == 2) assert_true(got == 0.0f);
                n_dots++;
            }
        }
    }

    /* attention helpers, at lengths around the vector widths */
    for (int64_t n = 1; n <= 300; n += (n < 40 ? 1 : 37)) {
        uint16_t *hx = xmalloc((size_t)n * 2), *hy = xmalloc((size_t)n * 2);
        float *y0 = xmalloc((size_t)n * 4), *y1 = xmalloc((size_t)n * 4);
        double mag = 0;
        for (int64_t i = 0; i < n; i++) {
            hx[i] = rand_half(&rs, -6, 6);
            hy[i] = rand_half(&rs, -6, 6);
            y0[i] = y1[i] = (float)rng_normal(&rs);
            mag += fabs((double)eng_fp16_to_fp32(hx[i]) * eng_fp16_to_fp32(hy[i]));
        }
        float got, want;
        ks->dot_f16(n, &got, hx, hy);
        ref->dot_f16(n, &want, hx, hy);
        check_close("dot_f16", got, want, mag, 2e-6);
        ks->mad_f16(n, y0, hx, -1.25f);
        ref->mad_f16(n, y1, hx, -1.25f);
        assert_memory_equal(y0, y1, (size_t)n * 4);
        free(hx);
        free(hy);
        free(y0);
        free(y1);
    }

    fprintf(stderr,
            "kernels %s: %ld activation rows identical, %ld dots; worst relative error:", name,
            n_quants, n_dots);
    for (size_t t = 0; t < N_WTYPES; t++)
        fprintf(stderr, " %s %.1e", eng_type_name(wtypes[t]), worst[wtypes[t]]);
    fprintf(stderr, "\n");
    free(x);
    free(wbuf);
    free(abuf);
    free(rbuf);
}

static void t_simd_avx2(void **state)
{
    (void)state;
    compare_set("avx2");
}

static void t_simd_avx512(void **state)
{
    (void)state;
    compare_set("avx512");
}

/* Every half and the rounding edges through each set's F16/BF16 conversion. */
static void t_simd_float_conversions(void **state)
{
    (void)state;
    const eng_kernels *ref = eng_kernels_ref();
    const char *names[] = {"avx2", "avx512"};
    enum { N = 1 << 16 };
    float *x = xmalloc(N * sizeof(float));
    uint8_t *a = xmalloc(2 * N), *b = xmalloc(2 * N);
    uint64_t rs = 99;
    for (size_t k = 0; k < 2; k++) {
        const eng_kernels *ks = eng_kernels_get(names[k]);
        if (!ks) continue;
        for (int round = 0; round < 4; round++) {
            for (uint32_t i = 0; i < N; i++) {
                uint32_t u;
                switch (round) {
                case 0: u = (uint32_t)rng_next(&rs); break; /* any bits, NaNs included */
                case 1: /* halves and their neighbours: rounding ties */
                    x[i] = eng_fp16_to_fp32((uint16_t)i);
                    memcpy(&u, &x[i], 4);
                    u += (uint32_t)(rng_next(&rs) % 3) << 12;
                    break;
                case 2: u = ((uint32_t)i << 16) | 0x8000u; break; /* bf16 ties */
                default: u = ((uint32_t)i << 16) | (uint32_t)(rng_next(&rs) & 0xffff); break;
                }
                memcpy(&x[i], &u, 4);
            }
            for (int t = 0; t < 2; t++) {
                const int at = t ? ENG_BF16 : ENG_F16;
                const int64_t n = N - 3; /* a tail */
                ref->quantize[at](x, a, n);
                ks->quantize[at](x, b, n);
                if (memcmp(a, b, 2 * (size_t)n)) {
                    for (int64_t i = 0; i < n; i++)
                        if (rd16(a + 2 * i) != rd16(b + 2 * i)) {
                            uint32_t u;
                            memcpy(&u, &x[i], 4);
                            fprintf(stderr, "%s %s of 0x%08x: 0x%04x, ref 0x%04x\n", names[k],
                                    eng_type_name(at), u, rd16(b + 2 * i), rd16(a + 2 * i));
                            break;
                        }
                    fail();
                }
            }
        }
    }
    free(x);
    free(a);
    free(b);
}

/* ------------------------------------------------------------------- tiles ---- */

/* A pool of 16 weight rows and 16 activation rows of one type and length, at odd
 * addresses and with gaps between rows (strides longer than a row, the gaps filled
 * with garbage), and the expected dots of every pair: the reference vec_dot, the set's
 * vec_dot and the magnitude sum |w_i a_i| (from the independent dot) for tolerances. */
typedef struct tile_pool {
    int type;
    int64_t n;
    uint8_t *wbuf, *abuf, *w, *a;
    size_t ws, as;
    double ref[16][16], set[16][16], mag[16][16]; /* [weight row][activation row] */
} tile_pool;

/* Weight kind 3: the largest unsigned quants (every bit of qs, qh and scales set; Q8_0
 * -128 everywhere) with sane scales: the 16-bit partial sums of the AVX2 tiles at
 * their limits. */
static void make_weights_max(uint8_t *w, int type, int64_t n, uint64_t *rs)
{
    make_weights(w, type, n, 0, rs);
    size_t be = 0, bb = 0;
    eng_type_block(type, &be, &bb);
    if (be == 1) return; /* float rows: kind 0 */
    uint8_t *keep = xmalloc(bb);
    for (int64_t b = 0; b < n / (int64_t)be; b++) {
        uint8_t *blk = w + (size_t)b * bb;
        memcpy(keep, blk, bb);
        memset(blk, type == ENG_Q8_0 ? 0x80 : 0xff, bb);
        switch (type) { /* the scales back */
        case ENG_Q8_0:
        case ENG_Q4_0:
        case ENG_Q5_0: memcpy(blk, keep, 2); break;
        case ENG_Q4_1:
        case ENG_Q5_1: memcpy(blk, keep, 4); break;
        case ENG_Q4_K:
        case ENG_Q5_K: memcpy(blk, keep, 4); break; /* d, dmin; scales stay 63, q 15 or 31 */
        case ENG_Q6_K:
            memcpy(blk + 208, keep + 208, 2);
            memset(blk + 192, 0x7f, 16); /* sub-block scales 127 */
            break;
        default: fail();
        }
    }
    free(keep);
}

/* Activation kind 7: every element of a block the same magnitude (qs all +-127), the
 * block signs alternating. */
static void make_activation_max(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = ((i / 32) & 1) ? -3.0f : 2.0f;
}

static void tile_pool_make(tile_pool *p, const eng_kernels *ks, int type, int64_t n, uint64_t *rs)
{
    const eng_kernels *ref = eng_kernels_ref();
    const int at = eng_act_type(type);
    const size_t rb = row_bytes(type, n), ab = eng_act_row_bytes(type, n);
    p->type = type;
    p->n = n;
    p->ws = rb + 3 + (size_t)(rng_next(rs) % 40);
    p->as = ab + 5 + (size_t)(rng_next(rs) % 40);
    p->wbuf = xmalloc(16 * p->ws + 1);
    p->abuf = xmalloc(16 * p->as + 1);
    for (size_t i = 0; i < 16 * p->ws + 1; i++)
        p->wbuf[i] = (uint8_t)rng_next(rs);
    for (size_t i = 0; i < 16 * p->as + 1; i++)
        p->abuf[i] = (uint8_t)rng_next(rs);
    p->w = p->wbuf + 1;
    p->a = p->abuf + 1;
    float *x = xmalloc((size_t)(n ? n : 1) * sizeof(float));
    for (int r = 0; r < 16; r++) {
        if (r % 5 == 4)
            make_weights_max(p->w + r * p->ws, type, n, rs);
        else
            make_weights(p->w + r * p->ws, type, n, r % 5 == 3 ? 2 : r % 3 == 2 ? 1 : 0, rs);
        const int kind = r % (N_ACT_KINDS + 1);
        if (kind == N_ACT_KINDS)
            make_activation_max(x, n);
        else
            make_activation(x, n, kind, rs);
        ref->quantize[at](x, p->a + r * p->as, n);
    }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            const uint8_t *w = p->w + i * p->ws, *a = p->a + j * p->as;
            float r0 = -1, r1 = -2;
            ref->vec_dot[type](n, &r0, w, a);
            ks->vec_dot[type](n, &r1, w, a);
            p->ref[i][j] = r0;
            p->set[i][j] = r1;
            independent_dot(type, w, a, n, &p->mag[i][j]);
        }
    free(x);
}

static void tile_pool_free(tile_pool *p)
{
    free(p->wbuf);
    free(p->abuf);
}

/* One tile call: rows i0 .. i0+nr-1 by j0 .. j0+nc-1 of the pool into an output with
 * row pitch ldc, surrounded by a sentinel that must stay untouched. */
static void check_tile_call(const eng_kernels *ks, const tile_pool *p, int i0, int nr, int j0,
                            int nc, size_t ldc, double *worst)
{
    enum { GUARD = 19 };
    const size_t cap = GUARD + (size_t)nc * ldc + GUARD;
    const uint32_t sentinel = 0x7fa5a5a5u; /* a NaN no kernel computes */
    uint32_t *buf = xmalloc(cap * sizeof(uint32_t));
    for (size_t i = 0; i < cap; i++)
        buf[i] = sentinel;
    float *s = (float *)(buf + GUARD);
    ks->tile[p->type](p->n, nr, nc, s, ldc, p->w + (size_t)i0 * p->ws, p->ws,
                      p->a + (size_t)j0 * p->as, p->as);
    for (size_t k = 0; k < cap; k++) {
        const bool out =
            k >= GUARD && (k - GUARD) / ldc < (size_t)nc && (k - GUARD) % ldc < (size_t)nr;
        if (!out && buf[k] != sentinel) {
            fprintf(
                stderr, "%s tile %s n=%lld nr=%d nc=%d ldc=%zu: wrote outside its outputs (%zd)\n",
                ks->name, eng_type_name(p->type), (long long)p->n, nr, nc, ldc, (ssize_t)k - GUARD);
            fail();
        }
    }
    const double rel =
        p->type == ENG_F32 || p->type == ENG_F16 || p->type == ENG_BF16 ? 2e-5 : 1e-5;
    for (int j = 0; j < nc; j++)
        for (int i = 0; i < nr; i++) {
            const double got = s[(size_t)j * ldc + i], mag = p->mag[i0 + i][j0 + j];
            const double want = p->ref[i0 + i][j0 + j], vd = p->set[i0 + i][j0 + j];
            char what[128];
            snprintf(what, sizeof what, "%s tile %s n=%lld nr=%d nc=%d (row %d, act %d)", ks->name,
                     eng_type_name(p->type), (long long)p->n, nr, nc, i0 + i, j0 + j);
            if (!isfinite(mag) || !isfinite(want)) continue; /* overflowing rows: no claim */
            check_close(what, got, want, mag, rel);
            check_close(what, got, vd, mag, rel);
            if (mag > 0 && fabs(got - want) / mag > *worst) *worst = fabs(got - want) / mag;
            if (mag == 0) assert_true(got == 0.0);
        }
    free(buf);
}

/* Every type's tile in set `name` against the reference dots and the set's own: every
 * nr and nc in 1..16 (the sub-tile taken at varying offsets of the pool, ldc tight or
 * loose) at short lengths that reach each tail case, a few shapes at long ones. */
static void check_tiles(const char *name)
{
    const eng_kernels *ks = eng_kernels_get(name);
    if (!ks) {
        fprintf(stderr, "kernels %s: not available on this CPU, skipped\n", name);
        skip();
    }
    /* 32-element blocks: 1, 3, 7 (4+2+1), 18 (8+8+2), 39 (chunks of 4 groups, then
     * 4+2+1), 72 blocks; K-quants 1, 2, 9 super-blocks; floats odd lengths too */
    static const int64_t lens_full[] = {1, 7, 9, 32, 96, 224, 256, 512, 576};
    static const int64_t lens_long[] = {1027, 1248, 2304};
    static const int shapes[][2] = {{16, 16}, {16, 13}, {11, 16}, {1, 1}, {5, 7}, {16, 1}, {2, 16}};
    uint64_t rs = 2024;
    long calls = 0;
    double worst[ENG_NTYPES] = {0};
    for (size_t t = 0; t < N_WTYPES; t++) {
        const int wt = wtypes[t];
        assert_non_null(ks->tile[wt]); /* every set tiles every type it dots */
        const int64_t be = (int64_t)block_elems(wt);
        for (size_t l = 0;
             l < sizeof lens_full / sizeof *lens_full + sizeof lens_long / sizeof *lens_long; l++) {
            const bool full = l < sizeof lens_full / sizeof *lens_full;
            const int64_t n =
                full ? lens_full[l] : lens_long[l - sizeof lens_full / sizeof *lens_full];
            if (n % be) continue;
            tile_pool p;
            tile_pool_make(&p, ks, wt, n, &rs);
            if (full) {
                for (int nr = 1; nr <= 16; nr++)
                    for (int nc = 1; nc <= 16; nc++) {
                        const int i0 = (nr * 7 + nc) % (17 - nr), j0 = (nc * 5 + nr) % (17 - nc);
                        const size_t ldc =
                            (nr + nc) % 3 == 0 ? (size_t)nr : (size_t)nr + 1 + (size_t)(nc % 5);
                        check_tile_call(ks, &p, i0, nr, j0, nc, ldc, &worst[wt]);
                        calls++;
                    }
            } else {
                for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
                    const int nr = shapes[k][0], nc = shapes[k][1];
                    check_tile_call(ks, &p, 16 - nr, nr, 0, nc, 16 + (size_t)k, &worst[wt]);
                    calls++;
                }
            }
            tile_pool_free(&p);
        }
    }
    /* a type without a row kernel has no tile either */
    assert_null(ks->tile[ENG_Q2_K]);
    fprintf(stderr, "kernels %s: %ld tile calls; worst relative error against the reference:", name,
            calls);
    for (size_t t = 0; t < N_WTYPES; t++)
        fprintf(stderr, " %s %.1e", eng_type_name(wtypes[t]), worst[wtypes[t]]);
    fprintf(stderr, "\n");
}

static void t_tiles_ref(void **state)
{
    (void)state;
    check_tiles("ref");
}

static void t_tiles_avx2(void **state)
{
    (void)state;
    check_tiles("avx2");
}

static void t_tiles_avx512(void **state)
{
    (void)state;
    check_tiles("avx512");
}

/* ------------------------------------------------------------------- pool ---- */

typedef struct pool_job {
    atomic_int *count; /* runs seen per index */
    int nth_seen;      /* nth as the callee saw it (all the same) */
    atomic_int bad_nth;
    pthread_t caller;
    atomic_int caller_not_zero;
    const int64_t *data;
    int64_t n;
    int64_t partial[64];
} pool_job;

static void job_fn(void *arg, int ith, int nth)
{
    pool_job *j = arg;
    atomic_fetch_add(&j->count[ith], 1);
    if (nth != j->nth_seen) atomic_fetch_add(&j->bad_nth, 1);
    if (ith == 0 && !pthread_equal(pthread_self(), j->caller))
        atomic_fetch_add(&j->caller_not_zero, 1);
    if (j->data) {
        int64_t lo = j->n * ith / nth, hi = j->n * (ith + 1) / nth, s = 0;
        for (int64_t i = lo; i < hi; i++)
            s += j->data[i];
        j->partial[ith] = s;
    }
}

static void run_pool_checks(int threads, int runs, int sleep_every)
{
    core_pool *p = NULL;
    assert_int_equal(core_pool_new(&p, threads), 0);
    const int nth = core_pool_size(p);
    if (threads > 0) assert_int_equal(nth, threads);
    atomic_int count[64];
    for (int i = 0; i < 64; i++)
        atomic_init(&count[i], 0);
    const int64_t n = 100003;
    int64_t *data = xmalloc(n * sizeof(int64_t));
    uint64_t rs = 3;
    int64_t serial = 0;
    for (int64_t i = 0; i < n; i++) {
        data[i] = (int64_t)(rng_next(&rs) % 2000001) - 1000000;
        serial += data[i];
    }
    pool_job j = {.count = count, .nth_seen = nth, .caller = pthread_self()};
    atomic_init(&j.bad_nth, 0);
    atomic_init(&j.caller_not_zero, 0);
    for (int r = 0; r < runs; r++) {
        j.data = (r % 10 == 0) ? data : NULL;
        j.n = n;
        core_pool_run(p, job_fn, &j);
        for (int i = 0; i < nth; i++)
            if (atomic_load(&count[i]) != r + 1) {
                fprintf(stderr, "pool(%d) run %d: index %d ran %d times\n", nth, r, i,
                        atomic_load(&count[i]));
                fail();
            }
        if (j.data) {
            int64_t par = 0;
            for (int i = 0; i < nth; i++)
                par += j.partial[i];
            assert_true(par == serial);
        }
        if (sleep_every && r % sleep_every == sleep_every - 1)
            usleep(1500); /* long enough for the workers to go to sleep */
    }
    for (int i = nth; i < 64; i++)
        assert_int_equal(atomic_load(&count[i]), 0);
    assert_int_equal(atomic_load(&j.bad_nth), 0);
    assert_int_equal(atomic_load(&j.caller_not_zero), 0);
    core_pool_free(p);
    free(data);
}

static void t_pool_runs(void **state)
{
    (void)state;
    run_pool_checks(2, 20000, 0); /* back to back: workers spinning */
    run_pool_checks(4, 3000, 0);  /* more threads than this machine may have cores */
    run_pool_checks(3, 200, 3);   /* workers asleep between some runs */
    if (sysconf(_SC_NPROCESSORS_ONLN) <= 64) run_pool_checks(0, 500, 0); /* every CPU */
}

static void t_pool_one(void **state)
{
    (void)state;
    core_pool *p = NULL;
    assert_int_equal(core_pool_new(&p, 1), 0);
    assert_int_equal(core_pool_size(p), 1);
    core_pool_free(p);
    run_pool_checks(1, 1000, 0);
    core_pool_free(NULL);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(core_pool_new(&p, 0), 0);
    assert_int_equal(core_pool_size(p), cpus > 0 ? cpus : 1);
    core_pool_free(p);
    assert_int_equal(core_pool_new(&p, -3), 0);
    assert_int_equal(core_pool_size(p), cpus > 0 ? cpus : 1);
    core_pool_free(p);
}

static void t_pool_create_free(void **state)
{
    (void)state;
    for (int i = 0; i < 100; i++) {
        core_pool *p = NULL;
        assert_int_equal(core_pool_new(&p, 2 + i % 4), 0);
        if (i % 2) {
            atomic_int count[64];
            for (int k = 0; k < 64; k++)
                atomic_init(&count[k], 0);
            pool_job j = {.count = count, .nth_seen = core_pool_size(p), .caller = pthread_self()};
            atomic_init(&j.bad_nth, 0);
            atomic_init(&j.caller_not_zero, 0);
            for (int r = 0; r < 5; r++)
                core_pool_run(p, job_fn, &j);
            for (int k = 0; k < core_pool_size(p); k++)
                assert_int_equal(atomic_load(&count[k]), 5);
        }
        if (i % 10 == 3) usleep(1000); /* free with sleeping workers */
        core_pool_free(p);
    }
}

/* A job much longer than the spin budget: the caller sleeps and is woken. */
static void slow_fn(void *arg, int ith, int nth)
{
    (void)nth;
    atomic_int *c = arg;
    if (ith == nth - 1) usleep(5000);
    atomic_fetch_add(c, 1);
}

static void t_pool_slow_jobs(void **state)
{
    (void)state;
    core_pool *p = NULL;
    assert_int_equal(core_pool_new(&p, 3), 0);
    atomic_int c;
    atomic_init(&c, 0);
    for (int r = 0; r < 20; r++) {
        core_pool_run(p, slow_fn, &c);
        assert_int_equal(atomic_load(&c), 3 * (r + 1));
    }
    core_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_selection),
        cmocka_unit_test(t_act_types),
        cmocka_unit_test(t_ref_q8_0_layout),
        cmocka_unit_test(t_ref_q8_1_layout),
        cmocka_unit_test(t_ref_q8_k_layout),
        cmocka_unit_test(t_ref_float_rounding),
        cmocka_unit_test(t_ref_quantizer_invariants),
        cmocka_unit_test(t_ref_dots_independent),
        cmocka_unit_test(t_ref_dots_hand),
        cmocka_unit_test(t_ref_dot_f16_mad),
        cmocka_unit_test(t_simd_avx2),
        cmocka_unit_test(t_simd_avx512),
        cmocka_unit_test(t_simd_float_conversions),
        cmocka_unit_test(t_tiles_ref),
        cmocka_unit_test(t_tiles_avx2),
        cmocka_unit_test(t_tiles_avx512),
        cmocka_unit_test(t_pool_runs),
        cmocka_unit_test(t_pool_one),
        cmocka_unit_test(t_pool_create_free),
        cmocka_unit_test(t_pool_slow_jobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
