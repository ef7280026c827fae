/* quantize/blocks.c: float rows -> llama.cpp block formats (Q8_0, Q4_0, Q4_1, Q5_0,
 * Q5_1, Q4_K, Q5_K, Q6_K), two ways:
 *   - round to nearest: the arithmetic of ggml's quantize_row_<type>_ref step for step
 *     (same float operations in the same order, fp16 rounding to nearest even), so the
 *     bytes equal llama.cpp's quantizer run without an importance matrix (Q8_0's is
 *     the engine's eng_encode_row, which the converter writes with);
 *   - importance-weighted: each block's scale (and min) searched to minimise the
 *     weighted squared rounding error, the weights from the calibration imatrix.
 * And the grid view GPTQ needs: a block unpacked to per-sub-block scale/offset and
 * integer levels, and packed back. Layouts: engine/engine.h (dequantize). */
#include <float.h>
#include <math.h>
#include <string.h>

#include "engine/kernels.h"
#include "quantize/quantize.h"

#define QK 32
#define QK_K 256
#define GROUP_MAX_EPS 1e-15f

static inline uint16_t f2h(float f)
{
    return eng_fp32_to_fp16(f);
}
static inline float h2f(uint16_t h)
{
    return eng_fp16_to_fp32(h);
}
static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static inline int imin(int a, int b)
{
    return a < b ? a : b;
}
static inline int imax(int a, int b)
{
    return a > b ? a : b;
}

bool qnt_type_supported(int type)
{
    switch (type) {
    case ENG_Q8_0:
    case ENG_Q4_0:
    case ENG_Q4_1:
    case ENG_Q5_0:
    case ENG_Q5_1:
    case ENG_Q4_K:
    case ENG_Q5_K:
    case ENG_Q6_K: return true;
    default: return false;
    }
}

/* ===================================================================== packing ===
 * Levels q[n] and the header of a grid <-> block bytes. */

/* K types' 8 six-bit scales and mins in 12 bytes (ggml's get_scale_min_k4 layout). */
static void pack_k4_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t out[12])
{
    memset(out, 0, 12);
    for (int j = 0; j < 8; j++) {
        uint8_t ls = sc[j], lm = mn[j];
        if (j < 4) {
            out[j] = ls;
            out[j + 4] = lm;
        } else {
            out[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            out[j - 4] |= (uint8_t)((ls >> 4) << 6);
            out[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
}

static void unpack_k4_scales(const uint8_t q[12], uint8_t sc[8], uint8_t mn[8])
{
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            mn[j] = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }
}

void qnt_grid_pack(const qnt_grid *g, const int16_t *q, void *dst)
{
    uint8_t *y = dst;
    switch (g->type) {
    case ENG_Q8_0:
        put16(y, g->d);
        for (int j = 0; j < QK; j++)
            y[2 + j] = (uint8_t)(int8_t)q[j];
        break;
    case ENG_Q4_0:
    case ENG_Q4_1: {
        int off = g->type == ENG_Q4_0 ? 2 : 4;
        put16(y, g->d);
        if (g->type == ENG_Q4_1) put16(y + 2, g->m);
        for (int j = 0; j < QK / 2; j++)
            y[off + j] = (uint8_t)(q[j] | q[j + QK / 2] << 4);
        break;
    }
    case ENG_Q5_0:
    case ENG_Q5_1: {
        int off = g->type == ENG_Q5_0 ? 2 : 4;
        put16(y, g->d);
        if (g->type == ENG_Q5_1) put16(y + 2, g->m);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            int a = q[j], b = q[j + QK / 2];
            y[off + 4 + j] = (uint8_t)((a & 0xF) | (b & 0xF) << 4);
            qh |= (uint32_t)((a >> 4) & 1) << j;
            qh |= (uint32_t)((b >> 4) & 1) << (j + 16);
        }
        memcpy(y + off, &qh, 4); /* little-endian hosts only, as the reader assumes */
        break;
    }
    case ENG_Q4_K:
    case ENG_Q5_K: {
        put16(y, g->d);
        put16(y + 2, g->m);
        pack_k4_scales(g->sc, g->mn, y + 4);
        uint8_t *qh = y + 16, *ql = g->type == ENG_Q4_K ? y + 16 : y + 48;
        if (g->type == ENG_Q5_K) memset(qh, 0, 32);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int a = q[64 * c + l], b = q[64 * c + 32 + l];
                if (g->type == ENG_Q5_K) {
                    qh[l] |= (uint8_t)(((a >> 4) & 1) << (2 * c) | ((b >> 4) & 1) << (2 * c + 1));
                    a &= 15;
                    b &= 15;
                }
                ql[32 * c + l] = (uint8_t)(a | b << 4);
            }
        break;
    }
    case ENG_Q6_K: {
        uint8_t *ql = y, *qh = y + 128;
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const int16_t *L = q + 128 * h;
                ql[64 * h + l] = (uint8_t)((L[l] & 0xF) | (L[l + 64] & 0xF) << 4);
                ql[64 * h + l + 32] = (uint8_t)((L[l + 32] & 0xF) | (L[l + 96] & 0xF) << 4);
                qh[32 * h + l] = (uint8_t)((L[l] >> 4) | (L[l + 32] >> 4) << 2 |
                                           (L[l + 64] >> 4) << 4 | (L[l + 96] >> 4) << 6);
            }
        for (int s = 0; s < 16; s++)
            y[192 + s] = g->sc[s];
        put16(y + 208, g->d);
        break;
    }
    }
}

static void set_iscales(qnt_grid *g)
{
    for (int k = 0; k < g->n / g->sub; k++)
        g->iscale[k] = g->scale[k] != 0.0f ? 1.0f / g->scale[k] : 0.0f;
}

/* The grid a packed block describes, and its levels. */
static void grid_unpack(int type, const void *src, qnt_grid *g, int16_t *q)
{
    const uint8_t *y = src;
    memset(g, 0, sizeof *g);
    g->type = type;
    switch (type) {
    case ENG_Q8_0:
        g->n = g->sub = QK;
        g->qmin = -128;
        g->qmax = 127;
        g->d = get16(y);
        g->scale[0] = h2f(g->d);
        for (int j = 0; j < QK; j++)
            q[j] = (int8_t)y[2 + j];
        break;
    case ENG_Q4_0:
    case ENG_Q4_1:
    case ENG_Q5_0:
    case ENG_Q5_1: {
        bool five = type == ENG_Q5_0 || type == ENG_Q5_1;
        bool has_m = type == ENG_Q4_1 || type == ENG_Q5_1;
        int off = has_m ? 4 : 2;
        g->n = g->sub = QK;
        g->qmin = 0;
        g->qmax = five ? 31 : 15;
        g->d = get16(y);
        g->scale[0] = h2f(g->d);
        if (has_m) {
            g->m = get16(y + 2);
            g->offset[0] = h2f(g->m);
        } else {
            g->offset[0] = -(float)(five ? 16 : 8) * g->scale[0];
        }
        uint32_t qh = 0;
        if (five) memcpy(&qh, y + off, 4);
        const uint8_t *qs = y + off + (five ? 4 : 0);
        for (int j = 0; j < QK / 2; j++) {
            q[j] = (int16_t)((qs[j] & 0xF) | (five ? ((qh >> j) & 1) << 4 : 0));
            q[j + 16] = (int16_t)((qs[j] >> 4) | (five ? ((qh >> (j + 16)) & 1) << 4 : 0));
        }
        break;
    }
    case ENG_Q4_K:
    case ENG_Q5_K: {
        bool five = type == ENG_Q5_K;
        g->n = QK_K;
        g->sub = 32;
        g->qmin = 0;
        g->qmax = five ? 31 : 15;
        g->d = get16(y);
        g->m = get16(y + 2);
        unpack_k4_scales(y + 4, g->sc, g->mn);
        float d = h2f(g->d), dmin = h2f(g->m);
        for (int s = 0; s < 8; s++) {
            g->scale[s] = d * g->sc[s];
            g->offset[s] = -(dmin * g->mn[s]);
        }
        const uint8_t *qh = y + 16, *ql = five ? y + 48 : y + 16;
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int a = ql[32 * c + l] & 0xF, b = ql[32 * c + l] >> 4;
                if (five) {
                    a |= ((qh[l] >> (2 * c)) & 1) << 4;
                    b |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                }
                q[64 * c + l] = (int16_t)a;
                q[64 * c + 32 + l] = (int16_t)b;
            }
        break;
    }
    case ENG_Q6_K: {
        g->n = QK_K;
        g->sub = 16;
        g->qmin = 0;
        g->qmax = 63;
        g->d = get16(y + 208);
        float d = h2f(g->d);
        for (int s = 0; s < 16; s++) {
            g->sc[s] = y[192 + s];
            g->scale[s] = d * (float)(int8_t)g->sc[s];
            g->offset[s] = -32.0f * g->scale[s];
        }
        const uint8_t *ql = y, *qh = y + 128;
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                int16_t *L = q + 128 * h;
                uint8_t a = ql[64 * h + l], b = ql[64 * h + l + 32], c = qh[32 * h + l];
                L[l] = (int16_t)((a & 0xF) | (c & 3) << 4);
                L[l + 32] = (int16_t)((b & 0xF) | ((c >> 2) & 3) << 4);
                L[l + 64] = (int16_t)((a >> 4) | ((c >> 4) & 3) << 4);
                L[l + 96] = (int16_t)((b >> 4) | ((c >> 6) & 3) << 4);
            }
        break;
    }
    }
    set_iscales(g);
}

/* ============================================================ round to nearest ===
 * ggml's reference quantizers, one block at a time. */

/* The signed value of largest magnitude (the first one on ties). */
static float signed_max(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return max;
}

/* Q4_0 (half = 8) and Q5_0 (half = 16): d = max / -half, so the extreme value lands on
 * the level -half; q = trunc(x / d + half + 0.5), capped at 2 * half - 1. */
static void rtn_q4_0_q5_0(const float *x, uint8_t *y, int half)
{
    const float d = signed_max(x, QK) / (float)-half, id = d ? 1.0f / d : 0.0f;
    const float bias = (float)half + 0.5f;
    int16_t q[QK];
    for (int j = 0; j < QK; j++)
        q[j] = (int16_t)imin(2 * half - 1, (int8_t)(x[j] * id + bias));
    qnt_grid g = {.type = half == 8 ? ENG_Q4_0 : ENG_Q5_0, .d = f2h(d)};
    qnt_grid_pack(&g, q, y);
}

/* Q4_1 (levels 15) and Q5_1 (31): d = (max - min) / levels, m = min,
 * q = trunc((x - min) / d + 0.5). */
static void rtn_q4_1_q5_1(const float *x, uint8_t *y, int levels)
{
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < QK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / (float)levels, id = d ? 1.0f / d : 0.0f;
    int16_t q[QK];
    for (int j = 0; j < QK; j++) {
        float v = (x[j] - min) * id + 0.5f;
        /* Q4_1 caps at 15 as ggml does; Q5_1's ggml code has no cap (the value cannot
         * exceed 31.5 but the conversion is to uint8 there) */
        q[j] = levels == 15 ? (int16_t)imin(15, (int8_t)v) : (int16_t)(uint8_t)v;
    }
    qnt_grid g = {.type = levels == 15 ? ENG_Q4_1 : ENG_Q5_1, .d = f2h(d), .m = f2h(min)};
    qnt_grid_pack(&g, q, y);
}

/* ggml's make_qkx2_quants: an asymmetric fit of n values (min <= 0) with levels
 * 0..nmax, trying nstep+1 scales around (nmax)/(max - min) and keeping the one of
 * least weighted squared error, with the least-squares scale and min for its levels.
 * Returns the scale; *the_min = -min. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep)
{
    float min = x[0], max = x[0];
    float sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; i++)
            L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = eng_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = diff * diff;
        float w = weights[i];
        best_error += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = eng_nearest_int(iscale * (x[i] - min));
            l = imax(0, imin(nmax, l));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                float w = weights[i];
                cur_error += w * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; i++)
                    L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Q4_K (nmax 15) and Q5_K (31): 8 sub-blocks of 32 fitted with make_qkx2_quants
 * (weights |x| + rms), their scales and mins quantized to 6 bits against the largest,
 * then every value re-rounded with the stored scales. */
static void rtn_k4(const float *x, uint8_t *y, int type, const float *imp)
{
    const int nmax = type == ENG_Q4_K ? 15 : 31;
    uint8_t L[QK_K], Laux[32];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            weights[l] =
                imp ? imp[32 * j + l] * sqrtf(sum_x2 / 32 + xs[l] * xs[l]) : av_x + fabsf(xs[l]);
        if (nmax == 15)
            scales[j] = make_qkx2_quants(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, -1.0f,
                                         0.1f, imp ? 40 : 20);
        else
            scales[j] = make_qkx2_quants(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, -0.5f,
                                         0.1f, imp ? 30 : 15);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    qnt_grid g = {.type = type};
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < 8; j++) {
        g.sc[j] = (uint8_t)imin(63, (uint8_t)eng_nearest_int(inv_scale * scales[j]));
        g.mn[j] = (uint8_t)imin(63, (uint8_t)eng_nearest_int(inv_min * mins[j]));
    }
    g.d = f2h(max_scale / 63.0f);
    g.m = f2h(max_min / 63.0f);
    int16_t q[QK_K];
    for (int j = 0; j < 8; j++) {
        const float d = h2f(g.d) * g.sc[j];
        const float dm = h2f(g.m) * g.mn[j];
        for (int ii = 0; ii < 32; ii++) {
            if (d) {
                int l = eng_nearest_int((x[32 * j + ii] + dm) / d);
                L[32 * j + ii] = (uint8_t)imax(0, imin(nmax, l));
            }
            q[32 * j + ii] = L[32 * j + ii];
        }
    }
    qnt_grid_pack(&g, q, y);
}

/* ggml's make_qx_quants: a symmetric fit with levels -nmax..nmax-1 (returned in L
 * offset by nmax), refined over 18 scales around -nmax / max with weights qw (or x^2
 * when qw is NULL, rmse_type 1). Returns the scale. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, const float *qw)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++)
            L[i] = 0;
        return 0.0f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = eng_nearest_int(iscale * x[i]);
        l = imax(-nmax, imin(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = eng_nearest_int(iscale * x[i]);
            l = imax(-nmax, imin(nmax - 1, l));
            float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = eng_nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q6_K: 16 sub-blocks of 16 fitted with make_qx_quants (levels -32..31), their
 * scales as int8 against the largest, every value re-rounded with the stored scales. */
static void rtn_q6_k(const float *x, uint8_t *y, const float *imp)
{
    int8_t L[QK_K];
    float scales[16], w[16];
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ib++) {
        const float *xs = x + 16 * ib;
        if (imp) {
            float s2 = 0;
            for (int l = 0; l < 16; l++)
                s2 += xs[l] * xs[l];
            for (int l = 0; l < 16; l++)
                w[l] = imp[16 * ib + l] * sqrtf(s2 / 16 + xs[l] * xs[l]);
        }
        const float scale = make_qx_quants(16, 32, xs, L + 16 * ib, imp ? w : NULL);
        scales[ib] = scale;
        const float abs_scale = fabsf(scale);
        if (abs_scale > max_abs_scale) {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    qnt_grid g = {.type = ENG_Q6_K};
    int16_t q[QK_K];
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(q, 0, sizeof q);
        qnt_grid_pack(&g, q, y);
        memset(y, 0, 210); /* ggml zeroes the whole block, d included */
        return;
    }
    float iscale = -128.0f / max_scale;
    g.d = f2h(1 / iscale);
    for (int ib = 0; ib < 16; ib++)
        g.sc[ib] = (uint8_t)(int8_t)imin(127, eng_nearest_int(iscale * scales[ib]));
    for (int j = 0; j < 16; j++) {
        const float d = h2f(g.d) * (int8_t)g.sc[j];
        for (int ii = 0; ii < 16; ii++) {
            if (d) {
                int l = eng_nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(imax(-32, imin(31, l)) + 32);
            }
            q[16 * j + ii] = L[16 * j + ii];
        }
    }
    qnt_grid_pack(&g, q, y);
}

/* ======================================================= importance-weighted ======
 * Blocks of 32 with one scale (Q8_0, Q4_0, Q5_0: symmetric; Q4_1, Q5_1: scale and
 * min): candidate scales around the round-to-nearest one, each with its levels and the
 * weighted least-squares scale (and min) for those levels; the best by weighted error
 * is stored (fp16) and the levels re-rounded with the stored values. */

static void block_weights(const float *x, const float *imp, int n, float *w)
{
    float s2 = 0;
    for (int j = 0; j < n; j++)
        s2 += x[j] * x[j];
    s2 /= (float)n;
    for (int j = 0; j < n; j++)
        w[j] = imp[j] * sqrtf(s2 + x[j] * x[j]);
}

static double weighted_err(const qnt_grid *g, const float *x, const float *w, int16_t *q)
{
    double e = 0;
    for (int j = 0; j < g->n; j++) {
        float deq;
        q[j] = (int16_t)qnt_grid_round(g, j, x[j], &deq);
        e += (double)w[j] * (double)(x[j] - deq) * (double)(x[j] - deq);
    }
    return e;
}

/* Stores d (and m) of a 32-block grid as fp16 and derives scale/offset from them. */
static void grid32_set(qnt_grid *g, float d, float m)
{
    g->d = f2h(d);
    g->scale[0] = h2f(g->d);
    switch (g->type) {
    case ENG_Q4_0: g->offset[0] = -8.0f * g->scale[0]; break;
    case ENG_Q5_0: g->offset[0] = -16.0f * g->scale[0]; break;
    case ENG_Q4_1:
    case ENG_Q5_1:
        g->m = f2h(m);
        g->offset[0] = h2f(g->m);
        break;
    default: g->offset[0] = 0.0f;
    }
    set_iscales(g);
}

/* Levels of x for the inverse scale `is` (and min for asym blocks), clamped. */
static inline int level(float v, float iscale, int lo, int hi)
{
    float r = v * iscale;
    if (r >= (float)hi) return hi;
    if (r <= (float)lo) return lo;
    return eng_nearest_int(r);
}

static void imp_block32(int type, const float *x, const float *imp, uint8_t *y)
{
    float w[QK];
    block_weights(x, imp, QK, w);
    const bool asym = type == ENG_Q4_1 || type == ENG_Q5_1;
    /* levels as signed values around zero (sym) or 0..qmax (asym) */
    const int half = type == ENG_Q4_0 ? 8 : type == ENG_Q5_0 ? 16 : 127;
    const int lo = asym ? 0 : type == ENG_Q8_0 ? -127 : -half;
    const int hi = asym ? (type == ENG_Q4_1 ? 15 : 31) : type == ENG_Q8_0 ? 127 : half - 1;
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < QK; j++) {
        min = fminf(min, x[j]);
        max = fmaxf(max, x[j]);
    }
    const float smax = signed_max(x, QK);
    qnt_grid g = {.type = type,
                  .n = QK,
                  .sub = QK,
                  .qmin = asym ? 0 : lo + (asym ? 0 : half),
                  .qmax = asym ? hi : hi + (type == ENG_Q8_0 ? 0 : half)};
    if (type == ENG_Q8_0) g.qmin = -128;
    int16_t q[QK];
    if ((asym && max == min) || (!asym && smax == 0.0f)) {
        grid32_set(&g, 0.0f, asym ? min : 0.0f);
        weighted_err(&g, x, w, q);
        qnt_grid_pack(&g, q, y);
        return;
    }
    /* Each candidate scale gives levels; the weighted least-squares scale (and min) for
     * those levels explains a share of sum w x^2 in closed form: keep the best. */
    double sw = 0, sx = 0;
    for (int j = 0; j < QK; j++) {
        sw += w[j];
        sx += (double)w[j] * x[j];
    }
    double best = -1, bd = 0, bm = 0;
    for (int is = -10; is <= 10; is++) {
        float iscale = asym ? ((float)hi + 0.1f * (float)is) / (max - min)
                            : -((float)half + 0.1f * (float)is) / smax;
        double sl = 0, sl2 = 0, sxl = 0;
        for (int j = 0; j < QK; j++) {
            int l = level(asym ? x[j] - min : x[j], iscale, lo, hi);
            sl += (double)w[j] * l;
            sl2 += (double)w[j] * l * l;
            sxl += (double)w[j] * x[j] * l;
        }
        double expl, d, m = 0;
        if (asym) {
            double D = sw * sl2 - sl * sl;
            if (!(D > 0)) continue;
            d = (sw * sxl - sx * sl) / D;
            m = (sl2 * sx - sl * sxl) / D;
            expl = (sl2 * sx * sx - 2 * sl * sx * sxl + sw * sxl * sxl) / D;
        } else {
            if (!(sl2 > 0)) continue;
            d = sxl / sl2;
            expl = sxl * sxl / sl2;
        }
        if (expl > best) {
            best = expl;
            bd = d;
            bm = m;
        }
    }
    if (best < 0) { /* no candidate had a fit: plain round to nearest's scale */
        bd = asym ? (max - min) / (float)hi : smax / (float)-half;
        bm = min;
    }
    grid32_set(&g, (float)bd, (float)bm);
    weighted_err(&g, x, w, q);
    qnt_grid_pack(&g, q, y);
}

/* ====================================================================== public === */

int qnt_quantize_row(int type, const float *x, void *dst, int64_t n, const float *imp)
{
    size_t be = 0, bb = 0;
    if (!qnt_type_supported(type) || eng_type_block(type, &be, &bb) != 0)
        return core_err_set(MLV_EINVAL, "quantize: cannot quantize to type %s",
                            eng_type_name(type) ? eng_type_name(type) : "(unknown)");
    if (n < 0 || n % (int64_t)be)
        return core_err_set(MLV_EINVAL, "quantize: %lld elements are not whole %s blocks of %zu",
                            (long long)n, eng_type_name(type), be);
    uint8_t *y = dst;
    for (int64_t b = 0; b < n / (int64_t)be; b++, x += be, y += bb, imp = imp ? imp + be : NULL) {
        /* a block whose columns were never active has nothing to weight by */
        const float *bimp = imp;
        if (bimp) {
            float sum = 0;
            for (size_t j = 0; j < be; j++)
                sum += bimp[j];
            if (!(sum > 0)) bimp = NULL;
        }
        switch (type) {
        case ENG_Q8_0:
            if (bimp)
                imp_block32(type, x, imp, y);
            else /* the engine's, which the converter writes with too */
                eng_encode_row(ENG_Q8_0, x, y, QK);
            break;
        case ENG_Q4_0:
        case ENG_Q5_0:
            if (bimp)
                imp_block32(type, x, imp, y);
            else
                rtn_q4_0_q5_0(x, y, type == ENG_Q4_0 ? 8 : 16);
            break;
        case ENG_Q4_1:
        case ENG_Q5_1:
            if (bimp)
                imp_block32(type, x, imp, y);
            else
                rtn_q4_1_q5_1(x, y, type == ENG_Q4_1 ? 15 : 31);
            break;
        case ENG_Q4_K:
        case ENG_Q5_K: rtn_k4(x, y, type, bimp); break;
        case ENG_Q6_K: rtn_q6_k(x, y, bimp); break;
        }
    }
    return 0;
}

int qnt_grid_fit(int type, const float *x, const float *imp, qnt_grid *g, int16_t *q)
{
    size_t be = 0, bb = 0;
    if (!qnt_type_supported(type) || eng_type_block(type, &be, &bb) != 0)
        return core_err_set(MLV_EINVAL, "quantize: cannot quantize to type %s",
                            eng_type_name(type) ? eng_type_name(type) : "(unknown)");
    uint8_t block[256];
    int rc = qnt_quantize_row(type, x, block, (int64_t)be, imp);
    if (rc) return rc;
    grid_unpack(type, block, g, q);
    return 0;
}
