/* engine/backend_cpu.c: the CPU backend of the op layer (engine/backend.h) — matrix
 * products over the row kernels of engine/kernels.h (the activation rows quantized once
 * per product, then weight rows dotted with them, split by rows over a thread pool),
 * RMSNorm, RoPE, attention on the F16 KV cache, SwiGLU. The arithmetic follows
 * llama.cpp's CPU backend (ggml) where it matters for agreeing with it: double sums in
 * RMSNorm and softmax, RoPE angles by repeated multiplication, queries rounded to F16
 * against F16 keys. Not thread-safe: one op at a time per backend. */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/kernels.h"

typedef struct cpu_backend {
    eng_backend base;
    const eng_kernels *k;
    core_pool *pool;
    int nth;
    /* activation rows in the weight's paired type, grown as needed (never per token
     * once the largest product has run) */
    uint8_t *act;
    size_t act_cap;
    /* per-thread attention scratch: scores (n_keys floats) and one fp16 query row */
    float **scores;
    uint16_t **qh;
    size_t scores_cap, qh_cap;
    char name[32];
} cpu_backend;

static cpu_backend *cpu(eng_backend *b)
{
    return (cpu_backend *)b;
}

static const char *cpu_name(const eng_backend *b)
{
    return ((const cpu_backend *)b)->name;
}

static void *cpu_alloc(eng_backend *b, size_t bytes)
{
    (void)b;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    memset(p, 0, bytes);
    return p;
}

static void cpu_release(eng_backend *b, void *p)
{
    (void)b;
    free(p);
}

/* Grows a buffer to at least `need` bytes; 0 or MLV_ENOMEM. Contents are not kept. */
static int grow(void **buf, size_t *cap, size_t need)
{
    if (*cap >= need) return 0;
    size_t n = need + need / 4 + 4096;
    void *p = NULL;
    if (posix_memalign(&p, 64, n)) return core_err_set(MLV_ENOMEM, "out of memory (%zu bytes)", n);
    free(*buf);
    *buf = p;
    *cap = n;
    return 0;
}

/* [start, end) of n items for thread ith of nth, in chunks of `align` items. */
static void split(int64_t n, int ith, int nth, int64_t align, int64_t *start, int64_t *end)
{
    int64_t chunks = (n + align - 1) / align;
    int64_t per = chunks / nth, extra = chunks % nth;
    int64_t c0 = ith * per + (ith < extra ? ith : extra);
    int64_t c1 = c0 + per + (ith < extra ? 1 : 0);
    *start = c0 * align < n ? c0 * align : n;
    *end = c1 * align < n ? c1 * align : n;
}

/* ------------------------------------------------------------------ matmul ---- */

#define MAX_FUSED 3 /* weights sharing one input in one pass (q, k, v) */

/* One pass over the rows of up to MAX_FUSED weights that read the same input x: x is
 * quantized once per activation type, then the rows of all weights, taken as one
 * concatenated range, are split over the threads (one pool run instead of one per
 * weight, which matters when a decode step is hundreds of small products). */
typedef struct matmul_job {
    cpu_backend *cb;
    int n;
    float *const *ys;
    const eng_weight *const *ws;
    const float *const *biases;
    const float *x;
    int T;
    int64_t rows; /* sum of the weights' n_out */
    /* per weight: where its activation rows are (weights with the same activation
     * type share them) */
    const uint8_t *act[MAX_FUSED];
    size_t abytes[MAX_FUSED];
    /* the distinct activation types to produce */
    int n_q;
    int q_type[MAX_FUSED];
    uint8_t *q_dst[MAX_FUSED];
    size_t q_bytes[MAX_FUSED];
} matmul_job;

static void quantize_job(void *arg, int ith, int nth)
{
    matmul_job *j = arg;
    const int64_t n_in = j->ws[0]->n_in;
    int64_t t0, t1;
    split(j->T, ith, nth, 1, &t0, &t1);
    for (int q = 0; q < j->n_q; q++) {
        eng_quantize_fn fn = j->cb->k->quantize[j->q_type[q]];
        for (int64_t t = t0; t < t1; t++)
            fn(j->x + t * n_in, j->q_dst[q] + (size_t)t * j->q_bytes[q], n_in);
    }
}

/* Rows [r0, r1) of weight i: tiles of weight rows stay in L1 while every activation row
 * passes over them (prefill); each weight byte is read once per product. With a tile
 * kernel, ROW_TILE x ENG_TILE_MAX blocks of the product are computed at once. */
#define ROW_TILE 16

static void rows_of(const matmul_job *j, int i, int64_t r0, int64_t r1)
{
    const eng_weight *w = j->ws[i];
    const float *bias = j->biases ? j->biases[i] : NULL;
    float *y = j->ys[i];
    const uint8_t *act = j->act[i];
    const size_t abytes = j->abytes[i];
    eng_vec_dot_fn dot = j->cb->k->vec_dot[w->type];
    eng_tile_fn tile = j->T >= 4 ? j->cb->k->tile[w->type] : NULL;
    for (int64_t rt = r0; rt < r1; rt += ROW_TILE) {
        int64_t re = rt + ROW_TILE < r1 ? rt + ROW_TILE : r1;
        if (tile) {
            for (int t = 0; t < j->T; t += ENG_TILE_MAX) {
                int nc = j->T - t < ENG_TILE_MAX ? j->T - t : ENG_TILE_MAX;
                tile(w->n_in, (int)(re - rt), nc, y + (size_t)t * w->n_out + rt, (size_t)w->n_out,
                     w->data + (size_t)rt * w->row_bytes, w->row_bytes, act + (size_t)t * abytes,
                     abytes);
            }
            if (bias)
                for (int t = 0; t < j->T; t++)
                    for (int64_t r = rt; r < re; r++)
                        y[(size_t)t * w->n_out + r] += bias[r];
            continue;
        }
        for (int t = 0; t < j->T; t++) {
            const uint8_t *a = act + (size_t)t * abytes;
            float *yt = y + (size_t)t * w->n_out;
            for (int64_t r = rt; r < re; r++) {
                float s;
                dot(w->n_in, &s, w->data + (size_t)r * w->row_bytes, a);
                yt[r] = bias ? s + bias[r] : s;
            }
        }
    }
}

static void matmul_rows_job(void *arg, int ith, int nth)
{
    matmul_job *j = arg;
    int64_t v0, v1, base = 0;
    split(j->rows, ith, nth, ROW_TILE, &v0, &v1);
    for (int i = 0; i < j->n && v0 < v1; i++) {
        const int64_t n_out = j->ws[i]->n_out;
        int64_t a = v0 - base, b = v1 - base;
        if (a < n_out && b > 0) rows_of(j, i, a > 0 ? a : 0, b < n_out ? b : n_out);
        base += n_out;
    }
}

static void cpu_matmul_n(eng_backend *b, int n, float *const *ys, const eng_weight *const *ws,
                         const float *const *biases, const float *x, int T)
{
    cpu_backend *cb = cpu(b);
    assert(n >= 1 && n <= MAX_FUSED);
    matmul_job j = {.cb = cb, .n = n, .ys = ys, .ws = ws, .biases = biases, .x = x, .T = T};
    size_t used = 0;
    int64_t work = 0;
    for (int i = 0; i < n; i++) {
        const int type = eng_act_type(ws[i]->type);
        j.abytes[i] = eng_act_row_bytes(ws[i]->type, ws[i]->n_in);
        j.rows += ws[i]->n_out;
        work += ws[i]->n_out * ws[i]->n_in;
        int q = 0;
        while (q < j.n_q && j.q_type[q] != type)
            q++;
        if (q == j.n_q) {
            j.q_type[q] = type;
            j.q_dst[q] = cb->act + used;
            j.q_bytes[q] = j.abytes[i];
            used += j.abytes[i] * (size_t)T;
            j.n_q++;
        }
        j.act[i] = j.q_dst[q];
    }
    assert(used <= cb->act_cap); /* sized by reserve */
    if (T >= 4 && cb->pool)
        core_pool_run(cb->pool, quantize_job, &j);
    else
        quantize_job(&j, 0, 1);
    if (cb->pool && work * T >= 32768)
        core_pool_run(cb->pool, matmul_rows_job, &j);
    else
        matmul_rows_job(&j, 0, 1);
}

static void cpu_matmul(eng_backend *b, float *y, const eng_weight *w, const float *bias,
                       const float *x, int T)
{
    cpu_matmul_n(b, 1, &y, &w, &bias, x, T);
}

/* ------------------------------------------------------- elementwise ops ---- */

static void cpu_rmsnorm(eng_backend *b, float *y, const float *x, const float *g, int T, int n,
                        float eps)
{
    (void)b;
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * n;
        float *yr = y + (size_t)t * n;
        double sum = 0.0;
        for (int i = 0; i < n; i++)
            sum += (double)(xr[i] * xr[i]);
        const float mean = (float)(sum / n);
        const float scale = 1.0f / sqrtf(mean + eps);
        for (int i = 0; i < n; i++)
            yr[i] = (xr[i] * scale) * g[i];
    }
}

static void cpu_rope(eng_backend *b, float *x, int T, int n_head, int head_dim, int n_rot,
                     const int32_t *pos, float base, float freq_scale, const float *freq_factors,
                     bool neox)
{
    (void)b;
    float cs[512]; /* cos, sin pairs for n_rot <= 512 */
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    for (int t = 0; t < T; t++) {
        float theta = (float)pos[t];
        for (int i0 = 0; i0 < n_rot; i0 += 2) {
            const float ff = freq_factors ? freq_factors[i0 / 2] : 1.0f;
            const float th = freq_scale * (theta / ff);
            cs[i0] = cosf(th);
            cs[i0 + 1] = sinf(th);
            theta *= theta_scale;
        }
        for (int h = 0; h < n_head; h++) {
            float *v = x + ((size_t)t * n_head + h) * head_dim;
            for (int i0 = 0; i0 < n_rot; i0 += 2) {
                const int a = neox ? i0 / 2 : i0, c = neox ? i0 / 2 + n_rot / 2 : i0 + 1;
                const float x0 = v[a], x1 = v[c];
                v[a] = x0 * cs[i0] - x1 * cs[i0 + 1];
                v[c] = x0 * cs[i0 + 1] + x1 * cs[i0];
            }
        }
    }
}

static void cpu_store_kv(eng_backend *b, uint16_t *k_cache, uint16_t *v_cache, const float *k,
                         const float *v, int T, int pos0, int kv_dim)
{
    (void)b;
    size_t n = (size_t)T * kv_dim, off = (size_t)pos0 * kv_dim;
    for (size_t i = 0; i < n; i++) {
        k_cache[off + i] = eng_fp32_to_fp16(k[i]);
        v_cache[off + i] = eng_fp32_to_fp16(v[i]);
    }
}

static void cpu_swiglu(eng_backend *b, float *y, const float *gate, const float *up, int64_t n)
{
    (void)b;
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        y[i] = (g / (1.0f + expf(-g))) * up[i];
    }
}

static void cpu_add(eng_backend *b, float *y, const float *x, int64_t n)
{
    (void)b;
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

static void cpu_get_rows(eng_backend *b, float *y, const eng_weight *w, const int32_t *ids, int T)
{
    (void)b;
    for (int t = 0; t < T; t++)
        eng_dequantize_row(w->type, w->data + (size_t)ids[t] * w->row_bytes,
                           y + (size_t)t * w->n_in, w->n_in);
}

/* --------------------------------------------------------------- attention ---- */

typedef struct attn_job {
    cpu_backend *cb;
    float *out;
    const float *q;
    const uint16_t *k, *v;
    int T, pos0, n_head, n_kv, hd;
    float scale;
} attn_job;

/* One query's attention output from its raw scores sc[0..n_keys) (Q . K, unscaled):
 * o (hd) = softmax(sc * scale) . V, V rows at v (fp16, kv_dim apart). sc is clobbered. */
static void softmax_v(const eng_kernels *k, float *sc, int n_keys, float scale, const uint16_t *v,
                      int kv_dim, int hd, float *o)
{
    float mx = -INFINITY;
    for (int p = 0; p < n_keys; p++) {
        sc[p] *= scale;
        if (sc[p] > mx) mx = sc[p];
    }
    double sum = 0.0;
    for (int p = 0; p < n_keys; p++) {
        sc[p] = expf(sc[p] - mx);
        sum += sc[p];
    }
    const float inv = (float)(1.0 / sum);
    memset(o, 0, sizeof *o * hd);
    for (int p = 0; p < n_keys; p++)
        k->mad_f16(hd, o, v + (size_t)p * kv_dim, sc[p] * inv);
}

/* One query row of one head against n_keys cache rows: o (hd) from qr (hd). */
static void attn_one(const eng_kernels *k, float *sc, uint16_t *qh, const float *qr,
                     const uint16_t *kc, const uint16_t *vc, int n_keys, int g, int kv_dim, int hd,
                     float scale, float *o)
{
    for (int i = 0; i < hd; i++)
        qh[i] = eng_fp32_to_fp16(qr[i]);
    for (int p = 0; p < n_keys; p++)
        k->dot_f16(hd, &sc[p], kc + (size_t)p * kv_dim + (size_t)g * hd, qh);
    softmax_v(k, sc, n_keys, scale, vc + (size_t)g * hd, kv_dim, hd, o);
}

static void attn_rows_job(void *arg, int ith, int nth)
{
    attn_job *j = arg;
    const int kv_dim = j->n_kv * j->hd, group = j->n_head / j->n_kv;
    int64_t u0, u1;
    split((int64_t)j->T * j->n_head, ith, nth, 1, &u0, &u1);
    for (int64_t u = u0; u < u1; u++) {
        const int t = (int)(u / j->n_head), h = (int)(u % j->n_head);
        attn_one(j->cb->k, j->cb->scores[ith], j->cb->qh[ith], j->q + (size_t)u * j->hd, j->k, j->v,
                 j->pos0 + t + 1, h / group, kv_dim, j->hd, j->scale, j->out + (size_t)u * j->hd);
    }
}

typedef struct attn_seqs_job {
    cpu_backend *cb;
    float *out;
    const float *q;
    const uint16_t *const *k, *const *v;
    const int32_t *pos;
    int n, n_head, n_kv, hd;
    float scale;
} attn_seqs_job;

static void attn_seqs_rows_job(void *arg, int ith, int nth)
{
    attn_seqs_job *j = arg;
    const int kv_dim = j->n_kv * j->hd, group = j->n_head / j->n_kv;
    int64_t u0, u1;
    split((int64_t)j->n * j->n_head, ith, nth, 1, &u0, &u1);
    for (int64_t u = u0; u < u1; u++) {
        const int i = (int)(u / j->n_head), h = (int)(u % j->n_head);
        attn_one(j->cb->k, j->cb->scores[ith], j->cb->qh[ith], j->q + (size_t)u * j->hd, j->k[i],
                 j->v[i], j->pos[i] + 1, h / group, kv_dim, j->hd, j->scale,
                 j->out + (size_t)u * j->hd);
    }
}

static void cpu_attention_seqs(eng_backend *b, int n, float *out, const float *q,
                               const uint16_t *const *k_caches, const uint16_t *const *v_caches,
                               const int32_t *pos, int n_head, int n_kv, int hd, float scale)
{
    cpu_backend *cb = cpu(b);
    attn_seqs_job j = {cb, out, q, k_caches, v_caches, pos, n, n_head, n_kv, hd, scale};
    int64_t work = 0;
    for (int i = 0; i < n; i++) {
        assert((size_t)pos[i] + 1 <= cb->scores_cap && (size_t)hd <= cb->qh_cap); /* reserve */
        work += (int64_t)n_head * (pos[i] + 1);
    }
    if (cb->pool && work >= 4096)
        core_pool_run(cb->pool, attn_seqs_rows_job, &j);
    else
        attn_seqs_rows_job(&j, 0, 1);
}

/* Prompts: per (head, block of up to 16 queries), Q K^T comes from the F16 tile kernel
 * (each key row loaded once for the whole block), then each query row is masked to its
 * own position, soft-maxed and multiplied by V as above. */
static void attn_tiles_job(void *arg, int ith, int nth)
{
    attn_job *j = arg;
    const eng_kernels *k = j->cb->k;
    const eng_tile_fn tile = k->tile[ENG_F16];
    const int kv_dim = j->n_kv * j->hd, group = j->n_head / j->n_kv;
    const size_t ldc = j->cb->scores_cap;
    float *S = j->cb->scores[ith];
    uint16_t *qh = j->cb->qh[ith];
    const int n_tb = (j->T + ENG_TILE_MAX - 1) / ENG_TILE_MAX;
    int64_t u0, u1;
    split((int64_t)n_tb * j->n_head, ith, nth, 1, &u0, &u1);
    for (int64_t u = u0; u < u1; u++) {
        const int h = (int)(u % j->n_head), g = h / group, t0 = (int)(u / j->n_head) * ENG_TILE_MAX;
        const int nc = j->T - t0 < ENG_TILE_MAX ? j->T - t0 : ENG_TILE_MAX;
        for (int c = 0; c < nc; c++) {
            const float *qr = j->q + ((size_t)(t0 + c) * j->n_head + h) * j->hd;
            for (int i = 0; i < j->hd; i++)
                qh[(size_t)c * j->hd + i] = eng_fp32_to_fp16(qr[i]);
        }
        const int n_keys_max = j->pos0 + t0 + nc;
        for (int k0 = 0; k0 < n_keys_max; k0 += ENG_TILE_MAX) {
            const int nr = n_keys_max - k0 < ENG_TILE_MAX ? n_keys_max - k0 : ENG_TILE_MAX;
            tile(j->hd, nr, nc, S + k0, ldc, j->k + (size_t)k0 * kv_dim + (size_t)g * j->hd,
                 sizeof(uint16_t) * kv_dim, qh, sizeof(uint16_t) * j->hd);
        }
        for (int c = 0; c < nc; c++) /* each query masked to its own position */
            softmax_v(k, S + (size_t)c * ldc, j->pos0 + t0 + c + 1, j->scale,
                      j->v + (size_t)g * j->hd, kv_dim, j->hd,
                      j->out + ((size_t)(t0 + c) * j->n_head + h) * j->hd);
    }
}

static void cpu_attention(eng_backend *b, float *out, const float *q, const uint16_t *k_cache,
                          const uint16_t *v_cache, int T, int pos0, int n_head, int n_kv, int hd,
                          float scale)
{
    cpu_backend *cb = cpu(b);
    attn_job j = {cb, out, q, k_cache, v_cache, T, pos0, n_head, n_kv, hd, scale};
    assert((size_t)(pos0 + T) <= cb->scores_cap && (size_t)hd <= cb->qh_cap); /* reserve */
    void (*job)(void *, int, int) = T >= 4 && cb->k->tile[ENG_F16] ? attn_tiles_job : attn_rows_job;
    if (cb->pool && (int64_t)T * n_head * (pos0 + T) >= 4096)
        core_pool_run(cb->pool, job, &j);
    else
        job(&j, 0, 1);
}

/* ---------------------------------------------------------------- lifetime ---- */

static void cpu_free(eng_backend *b)
{
    cpu_backend *cb = cpu(b);
    if (!cb) return;
    core_pool_free(cb->pool);
    for (int i = 0; i < cb->nth; i++) {
        if (cb->scores) free(cb->scores[i]);
        if (cb->qh) free(cb->qh[i]);
    }
    free(cb->scores);
    free(cb->qh);
    free(cb->act);
    free(cb);
}

static int cpu_reserve(eng_backend *b, size_t max_act_bytes, int max_T, int n_ctx, int hd)
{
    cpu_backend *cb = cpu(b);
    int rc = grow((void **)&cb->act, &cb->act_cap, MAX_FUSED * max_act_bytes * (size_t)max_T);
    if (rc || ((size_t)n_ctx <= cb->scores_cap && (size_t)hd <= cb->qh_cap)) return rc;
    size_t ns = (size_t)n_ctx > cb->scores_cap ? (size_t)n_ctx : cb->scores_cap;
    size_t nq = (size_t)hd > cb->qh_cap ? (size_t)hd : cb->qh_cap;
    for (int i = 0; i < cb->nth; i++) {
        free(cb->scores[i]);
        free(cb->qh[i]);
        /* up to ENG_TILE_MAX query rows at once (attn_tiles_job) */
        cb->scores[i] = malloc(sizeof(float) * ns * ENG_TILE_MAX);
        cb->qh[i] = malloc(sizeof(uint16_t) * nq * ENG_TILE_MAX);
        if (!cb->scores[i] || !cb->qh[i]) {
            cb->scores_cap = cb->qh_cap = 0;
            return core_err_set(MLV_ENOMEM, "out of memory (attention scratch)");
        }
    }
    cb->scores_cap = ns;
    cb->qh_cap = nq;
    return 0;
}

static const eng_backend_ops CPU_OPS = {
    .name = cpu_name,
    .free = cpu_free,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .reserve = cpu_reserve,
    .matmul = cpu_matmul,
    .matmul_n = cpu_matmul_n,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .store_kv = cpu_store_kv,
    .attention = cpu_attention,
    .attention_seqs = cpu_attention_seqs,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .get_rows = cpu_get_rows,
};

int eng_backend_cpu_new(eng_backend **out, int kind, int threads)
{
    *out = NULL;
    const eng_kernels *k = kind == ENG_BACKEND_REF ? eng_kernels_ref() : eng_kernels_best();
    cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb) return core_err_set(MLV_ENOMEM, "out of memory");
    cb->base.ops = &CPU_OPS;
    cb->k = k;
    int rc = core_pool_new(&cb->pool, threads);
    if (rc) {
        free(cb);
        return rc;
    }
    cb->nth = core_pool_size(cb->pool);
    cb->scores = calloc((size_t)cb->nth, sizeof *cb->scores);
    cb->qh = calloc((size_t)cb->nth, sizeof *cb->qh);
    if (!cb->scores || !cb->qh) {
        cpu_free(&cb->base);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    snprintf(cb->name, sizeof cb->name, "cpu-%s", k->name);
    *out = &cb->base;
    return 0;
}
