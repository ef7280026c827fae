/* quantize/gptq.c: GPTQ on one matrix (Frantar, Ashkboos, Hoefler and Alistarh, 2022,
 * "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
 * Algorithm 1 with lazy batch updates, and its reference code's rules for dead inputs
 * and damping). Not here: the block formats and their grids (blocks.c) or where the
 * Hessian comes from (calib.c).
 *
 *   1. H (double) gets H_ii = 1 and W[:, i] = 0 for dead inputs (H_ii == 0), then
 *      damp * mean(diag H) on the diagonal.
 *   2. U = the upper Cholesky factor of H^-1. With J the order-reversing permutation,
 *      J H J = L L^T gives H = R R^T for the upper R = J L J, so H^-1 = R^-T R^-1 and
 *      U = R^-1 = J L^-1 J: one Cholesky factorisation and one triangular inverse,
 *      both blocked, their O(n^3) parts on a tile kernel (AVX2/FMA or plain C).
 *   3. Rows are independent given U: chunks of rows go to the pool's threads. For each
 *      chunk, columns go in batches of BATCH: inside a batch every column is rounded
 *      onto its block's grid (fitted when the block starts, imp = the damped diagonal),
 *      its error err = (w - q) / U_ii spread over the batch's later columns with U's
 *      row; at the batch's end Err (rows, BATCH) . U[batch, rest] is subtracted from
 *      the remaining columns as one product (the lazy update). A block is packed with
 *      qnt_grid_pack as soon as its last column is rounded. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quantize/quantize.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GPTQ_X86 1
#define TA2 __attribute__((target("avx2,fma")))
#endif

#define NB 64    /* block size of the factorisation and the inverse */
#define BATCH 32 /* GPTQ's lazy-update batch (divides 256, a multiple of 32) */
#define CHUNK 32 /* rows a thread takes at a time */
#define MAX_COLS 32768
#define DT_R 4  /* double tile: rows */
#define DT_C 8  /* double tile: columns */
#define ST_R 4  /* float tile: rows */
#define ST_C 16 /* float tile: columns */

/* C[mr x nr] -= A[mr x K] . B[K x nr]; A row-major (lda), B row-major (ldb). */
typedef void (*dtile_fn)(int K, const double *a, size_t lda, const double *b, size_t ldb, double *c,
                         size_t ldc, int mr, int nr);
typedef void (*stile_fn)(int K, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                         size_t ldc, int mr, int nr);

static void dtile_ref(int K, const double *a, size_t lda, const double *b, size_t ldb, double *c,
                      size_t ldc, int mr, int nr)
{
    double acc[DT_R][DT_C] = {{0}};
    for (int k = 0; k < K; k++)
        for (int r = 0; r < mr; r++)
            for (int j = 0; j < nr; j++)
                acc[r][j] += a[(size_t)r * lda + k] * b[(size_t)k * ldb + j];
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++)
            c[(size_t)r * ldc + j] -= acc[r][j];
}

static void stile_ref(int K, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                      size_t ldc, int mr, int nr)
{
    float acc[ST_R][ST_C] = {{0}};
    for (int k = 0; k < K; k++)
        for (int r = 0; r < mr; r++)
            for (int j = 0; j < nr; j++)
                acc[r][j] += a[(size_t)r * lda + k] * b[(size_t)k * ldb + j];
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++)
            c[(size_t)r * ldc + j] -= acc[r][j];
}

#ifdef GPTQ_X86
TA2 static void dtile_avx2(int K, const double *a, size_t lda, const double *b, size_t ldb,
                           double *c, size_t ldc, int mr, int nr)
{
    if (mr != DT_R || nr != DT_C) {
        dtile_ref(K, a, lda, b, ldb, c, ldc, mr, nr);
        return;
    }
    __m256d c00 = _mm256_setzero_pd(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
            c30 = c00, c31 = c00;
    const double *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    for (int k = 0; k < K; k++) {
        const double *bk = b + (size_t)k * ldb;
        __m256d b0 = _mm256_loadu_pd(bk), b1 = _mm256_loadu_pd(bk + 4);
        __m256d x = _mm256_broadcast_sd(a0 + k);
        c00 = _mm256_fmadd_pd(x, b0, c00);
        c01 = _mm256_fmadd_pd(x, b1, c01);
        x = _mm256_broadcast_sd(a1 + k);
        c10 = _mm256_fmadd_pd(x, b0, c10);
        c11 = _mm256_fmadd_pd(x, b1, c11);
        x = _mm256_broadcast_sd(a2 + k);
        c20 = _mm256_fmadd_pd(x, b0, c20);
        c21 = _mm256_fmadd_pd(x, b1, c21);
        x = _mm256_broadcast_sd(a3 + k);
        c30 = _mm256_fmadd_pd(x, b0, c30);
        c31 = _mm256_fmadd_pd(x, b1, c31);
    }
    __m256d acc[8] = {c00, c01, c10, c11, c20, c21, c30, c31};
    for (int r = 0; r < DT_R; r++) {
        double *cr = c + (size_t)r * ldc;
        _mm256_storeu_pd(cr, _mm256_sub_pd(_mm256_loadu_pd(cr), acc[2 * r]));
        _mm256_storeu_pd(cr + 4, _mm256_sub_pd(_mm256_loadu_pd(cr + 4), acc[2 * r + 1]));
    }
}

TA2 static void stile_avx2(int K, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                           size_t ldc, int mr, int nr)
{
    if (mr != ST_R || nr != ST_C) {
        stile_ref(K, a, lda, b, ldb, c, ldc, mr, nr);
        return;
    }
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00;
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    for (int k = 0; k < K; k++) {
        const float *bk = b + (size_t)k * ldb;
        __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
        __m256 x = _mm256_broadcast_ss(a0 + k);
        c00 = _mm256_fmadd_ps(x, b0, c00);
        c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1 + k);
        c10 = _mm256_fmadd_ps(x, b0, c10);
        c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2 + k);
        c20 = _mm256_fmadd_ps(x, b0, c20);
        c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3 + k);
        c30 = _mm256_fmadd_ps(x, b0, c30);
        c31 = _mm256_fmadd_ps(x, b1, c31);
    }
    __m256 acc[8] = {c00, c01, c10, c11, c20, c21, c30, c31};
    for (int r = 0; r < ST_R; r++) {
        float *cr = c + (size_t)r * ldc;
        _mm256_storeu_ps(cr, _mm256_sub_ps(_mm256_loadu_ps(cr), acc[2 * r]));
        _mm256_storeu_ps(cr + 8, _mm256_sub_ps(_mm256_loadu_ps(cr + 8), acc[2 * r + 1]));
    }
}
#endif

typedef struct kernels {
    dtile_fn dtile;
    stile_fn stile;
} kernels;

static kernels pick_kernels(void)
{
#ifdef GPTQ_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return (kernels){dtile_avx2, stile_avx2};
#endif
    return (kernels){dtile_ref, stile_ref};
}

static void run(core_pool *pool, void (*fn)(void *, int, int), void *arg)
{
    if (pool)
        core_pool_run(pool, fn, arg);
    else
        fn(arg, 0, 1);
}

/* Whether thread ith of nth takes item i of a list whose items grow (or shrink) in
 * cost: a zigzag deal keeps the threads' shares even. */
static bool mine(int64_t i, int ith, int nth)
{
    int64_t round = i / nth, slot = i % nth;
    return (round & 1 ? nth - 1 - slot : slot) == ith;
}

/* ------------------------------------------------------ factorisation (double) --- */

typedef struct fact_job {
    double *A; /* (n, n) row-major */
    int n;
    int k0, kb; /* Cholesky: the panel's columns */
    double *P;  /* Cholesky: the panel transposed, (kb, n - k0 - kb) */
    int i0, ib; /* inverse: the block of rows being solved */
    double *T;  /* inverse: (ib, i0) */
    dtile_fn dtile;
} fact_job;

/* Rows below the diagonal block: A[i, k0:k0+kb] <- A[i, k0:k0+kb] L_kk^-T, also stored
 * transposed in P for the trailing update. */
static void chol_panel(void *arg, int ith, int nth)
{
    fact_job *J = arg;
    const int n = J->n, k0 = J->k0, kb = J->kb, s = k0 + kb, m = n - s;
    const int per = (m + nth - 1) / nth, lo = s + ith * per, hi = lo + per < n ? lo + per : n;
    for (int i = lo; i < hi; i++) {
        double *x = J->A + (size_t)i * n + k0;
        for (int c = 0; c < kb; c++) {
            const double *lc = J->A + (size_t)(k0 + c) * n + k0;
            double v = x[c];
            for (int p = 0; p < c; p++)
                v -= x[p] * lc[p];
            x[c] = v / lc[c];
            J->P[(size_t)c * m + (i - s)] = x[c];
        }
    }
}

/* The trailing lower triangle: A[i, j] -= A[i, panel] . A[j, panel] for s <= j <= i. */
static void chol_update(void *arg, int ith, int nth)
{
    fact_job *J = arg;
    const int n = J->n, k0 = J->k0, kb = J->kb, s = k0 + kb, m = n - s;
    for (int i0 = s, t = 0; i0 < n; i0 += DT_R, t++) {
        if (!mine(t, ith, nth)) continue;
        const int mr = n - i0 < DT_R ? n - i0 : DT_R;
        for (int j0 = s; j0 < i0 + mr; j0 += DT_C) {
            const int nr = n - j0 < DT_C ? n - j0 : DT_C;
            J->dtile(kb, J->A + (size_t)i0 * n + k0, (size_t)n, J->P + (j0 - s), (size_t)m,
                     J->A + (size_t)i0 * n + j0, (size_t)n, mr, nr);
        }
    }
}

/* In place: A (symmetric) -> its lower Cholesky factor, strict upper part zeroed.
 * MLV_EINVAL when A is not (numerically) positive definite. */
static int cholesky(double *A, int n, double *P, dtile_fn dtile, core_pool *pool)
{
    fact_job J = {.A = A, .n = n, .P = P, .dtile = dtile};
    for (int k0 = 0; k0 < n; k0 += NB) {
        const int kb = n - k0 < NB ? n - k0 : NB;
        for (int j = 0; j < kb; j++) {
            double *lj = A + (size_t)(k0 + j) * n + k0;
            double d = lj[j];
            for (int p = 0; p < j; p++)
                d -= lj[p] * lj[p];
            if (!(d > 0.0) || !isfinite(d)) return MLV_EINVAL;
            lj[j] = sqrt(d);
            for (int i = j + 1; i < kb; i++) {
                double *li = A + (size_t)(k0 + i) * n + k0;
                double v = li[j];
                for (int p = 0; p < j; p++)
                    v -= li[p] * lj[p];
                li[j] = v / lj[j];
            }
        }
        if (k0 + kb == n) break;
        J.k0 = k0;
        J.kb = kb;
        run(pool, chol_panel, &J);
        run(pool, chol_update, &J);
    }
    for (int i = 0; i < n; i++)
        memset(A + (size_t)i * n + i + 1, 0, sizeof(double) * (size_t)(n - 1 - i));
    return 0;
}

/* T = -L[i0:i0+ib, 0:i0] . X[0:i0, 0:i0], X (lower) the rows of the inverse so far. */
static void inv_rows(void *arg, int ith, int nth)
{
    fact_job *J = arg;
    const int n = J->n, i0 = J->i0, ib = J->ib;
    for (int j0 = 0, t = 0; j0 < i0; j0 += DT_C, t++) {
        if (!mine(t, ith, nth)) continue;
        const int nr = i0 - j0 < DT_C ? i0 - j0 : DT_C;
        for (int r0 = 0; r0 < ib; r0 += DT_R) {
            const int mr = ib - r0 < DT_R ? ib - r0 : DT_R;
            J->dtile(i0 - j0, J->A + (size_t)(i0 + r0) * n + j0, (size_t)n,
                     J->A + (size_t)j0 * n + j0, (size_t)n, J->T + (size_t)r0 * i0 + j0, (size_t)i0,
                     mr, nr);
        }
    }
}

/* In place: lower triangular L (zero strict upper part) -> L^-1, block row by block row:
 * X[I, :I] = L_II^-1 (-L[I, :I] X[:I, :I]), X[I, I] = L_II^-1. */
static void tri_inverse(double *A, int n, double *T, double *Lii, dtile_fn dtile, core_pool *pool)
{
    fact_job J = {.A = A, .n = n, .T = T, .dtile = dtile};
    for (int i0 = 0; i0 < n; i0 += NB) {
        const int ib = n - i0 < NB ? n - i0 : NB;
        memset(T, 0, sizeof(double) * (size_t)ib * (size_t)i0);
        J.i0 = i0;
        J.ib = ib;
        if (i0) run(pool, inv_rows, &J);
        for (int r = 0; r < ib; r++)
            memcpy(Lii + (size_t)r * ib, A + (size_t)(i0 + r) * n + i0, sizeof(double) * ib);
        /* forward substitution: L_II Y = [T | I] */
        for (int r = 0; r < ib; r++) {
            double *y = A + (size_t)(i0 + r) * n;
            const int len = i0 + r + 1;
            memcpy(y, T + (size_t)r * i0, sizeof(double) * (size_t)i0);
            memset(y + i0, 0, sizeof(double) * (size_t)ib);
            y[i0 + r] = 1.0;
            for (int p = 0; p < r; p++) {
                const double l = Lii[(size_t)r * ib + p];
                const double *yp = A + (size_t)(i0 + p) * n;
                for (int j = 0; j < i0 + p + 1; j++)
                    y[j] -= l * yp[j];
            }
            const double inv = 1.0 / Lii[(size_t)r * ib + r];
            for (int j = 0; j < len; j++)
                y[j] *= inv;
        }
    }
}

/* A[i][j] <-> A[n-1-i][n-1-j]. */
static void rotate(double *A, size_t n)
{
    for (size_t a = 0, b = n * n - 1; a < b; a++, b--) {
        double t = A[a];
        A[a] = A[b];
        A[b] = t;
    }
}

/* A: the damped Hessian -> U, the upper Cholesky factor of its inverse. */
static int inverse_cholesky(double *A, int n, double *scratch, double *Lii, dtile_fn dtile,
                            core_pool *pool)
{
    rotate(A, (size_t)n);
    int rc = cholesky(A, n, scratch, dtile, pool);
    if (rc) return rc;
    tri_inverse(A, n, scratch, Lii, dtile, pool);
    rotate(A, (size_t)n);
    return 0;
}

/* ------------------------------------------------------------ the GPTQ sweep --- */

typedef struct scratch {
    float *E;    /* (CHUNK, BATCH): the scaled errors of the batch */
    qnt_grid *g; /* CHUNK grids: each row's current block */
    int16_t *q;  /* (CHUNK, block): each row's levels of the current block */
} scratch;

typedef struct gptq_job {
    int type, qb;
    int64_t rows, cols;
    size_t block_bytes, row_bytes;
    float *w;
    uint8_t *dst;
    const float *U, *inv_d, *imp;
    stile_fn stile;
    scratch *scr;
    atomic_int rc;
    char msg[256];
} gptq_job;

static void job_fail(gptq_job *J, int rc)
{
    int zero = 0;
    if (atomic_compare_exchange_strong(&J->rc, &zero, rc))
        snprintf(J->msg, sizeof J->msg, "%s", core_err_last());
}

/* Rows [r0, r0 + R) through every column. */
static int gptq_rows(gptq_job *J, scratch *S, int64_t r0, int R)
{
    const int64_t cols = J->cols;
    const int qb = J->qb;
    float *w = J->w + r0 * cols;
    uint8_t *dst = J->dst + (size_t)r0 * J->row_bytes;
    for (int64_t b0 = 0; b0 < cols; b0 += BATCH) {
        const int64_t b1 = b0 + BATCH < cols ? b0 + BATCH : cols;
        for (int r = 0; r < R; r++) {
            float *wr = w + (size_t)r * cols, *er = S->E + (size_t)r * BATCH;
            qnt_grid *g = &S->g[r];
            int16_t *q = S->q + (size_t)r * qb;
            for (int64_t i = b0; i < b1; i++) {
                const int j = (int)(i % qb);
                if (j == 0) {
                    int rc = qnt_grid_fit(J->type, wr + i, J->imp + i, g, q);
                    if (rc) return rc;
                }
                float deq;
                q[j] = (int16_t)qnt_grid_round(g, j, wr[i], &deq);
                const float err = (wr[i] - deq) * J->inv_d[i];
                er[i - b0] = err;
                const float *ui = J->U + (size_t)i * cols;
                for (int64_t k = i + 1; k < b1; k++)
                    wr[k] -= err * ui[k];
                if (j == qb - 1)
                    qnt_grid_pack(
                        g, q, dst + (size_t)r * J->row_bytes + (size_t)(i / qb) * J->block_bytes);
            }
        }
        /* lazy update: W[:, b1:] -= E . U[b0:b1, b1:] */
        const int K = (int)(b1 - b0);
        for (int64_t j0 = b1; j0 < cols; j0 += ST_C) {
            const int nr = cols - j0 < ST_C ? (int)(cols - j0) : ST_C;
            for (int r = 0; r < R; r += ST_R) {
                const int mr = R - r < ST_R ? R - r : ST_R;
                J->stile(K, S->E + (size_t)r * BATCH, BATCH, J->U + (size_t)b0 * cols + j0,
                         (size_t)cols, w + (size_t)r * cols + j0, (size_t)cols, mr, nr);
            }
        }
    }
    return 0;
}

static void gptq_worker(void *arg, int ith, int nth)
{
    gptq_job *J = arg;
    scratch *S = &J->scr[ith];
    const int64_t n_chunks = (J->rows + CHUNK - 1) / CHUNK;
    for (int64_t ch = ith; ch < n_chunks; ch += nth) {
        if (atomic_load(&J->rc)) return;
        const int64_t r0 = ch * CHUNK;
        const int R = J->rows - r0 < CHUNK ? (int)(J->rows - r0) : CHUNK;
        int rc = gptq_rows(J, S, r0, R);
        if (rc) {
            job_fail(J, rc);
            return;
        }
    }
}

int qnt_gptq(int type, float *w, int64_t rows, int64_t cols, const float *H, double damp, void *dst,
             core_pool *pool)
{
    size_t be = 0, bb = 0;
    const char *tn = eng_type_name(type);
    if (!qnt_type_supported(type) || eng_type_block(type, &be, &bb) != 0 || be == 0 ||
        be > QNT_MAX_BLOCK)
        return core_err_set(MLV_EINVAL, "gptq: cannot quantize to %s", tn ? tn : "an unknown type");
    if (rows < 0 || cols <= 0 || cols % (int64_t)be)
        return core_err_set(MLV_EINVAL,
                            "gptq: a %lld x %lld matrix is not a whole number of %s blocks (%zu "
                            "columns each)",
                            (long long)rows, (long long)cols, tn, be);
    if (cols > MAX_COLS)
        return core_err_set(MLV_EINVAL, "gptq: %lld columns are more than the %d supported",
                            (long long)cols, MAX_COLS);
    if (!(damp >= 0.0) || !isfinite(damp))
        return core_err_set(MLV_EINVAL, "gptq: damping %g is not a non-negative number", damp);
    if (rows == 0) return 0;
    if (!w || !H || !dst)
        return core_err_set(MLV_EINVAL, "gptq: missing weights, Hessian or output");
    if (damp == 0.0) damp = 0.01;

    const int n = (int)cols;
    const size_t nn = (size_t)n * n;
    const kernels kr = pick_kernels();
    const int nth = pool ? core_pool_size(pool) : 1;
    int rc = 0;
    double *A = malloc(sizeof *A * nn), *scr = malloc(sizeof *scr * (size_t)NB * n);
    double *Lii = malloc(sizeof *Lii * NB * NB);
    float *U = malloc(sizeof *U * nn), *inv_d = malloc(sizeof *inv_d * n);
    float *imp = malloc(sizeof *imp * n);
    bool *dead = calloc((size_t)n, sizeof *dead);
    scratch *S = calloc((size_t)nth, sizeof *S);
    gptq_job *J = calloc(1, sizeof *J);
    if (!A || !scr || !Lii || !U || !inv_d || !imp || !dead || !S || !J) goto oom;
    for (int t = 0; t < nth; t++) {
        S[t].E = malloc(sizeof(float) * CHUNK * BATCH);
        S[t].g = malloc(sizeof(qnt_grid) * CHUNK);
        S[t].q = malloc(sizeof(int16_t) * CHUNK * be);
        if (!S[t].E || !S[t].g || !S[t].q) goto oom;
    }

    /* 1. dead inputs and the mean of the diagonal */
    double mean = 0.0;
    for (int i = 0; i < n; i++) {
        const float *hr = H + (size_t)i * n;
        for (int j = 0; j < n; j++)
            if (!isfinite(hr[j])) {
                rc = core_err_set(MLV_EINVAL, "gptq: the Hessian's entry (%d, %d) is not finite", i,
                                  j);
                goto done;
            }
        if (hr[i] < 0.0f) {
            rc = core_err_set(MLV_EINVAL, "gptq: the Hessian's diagonal entry %d is negative", i);
            goto done;
        }
        dead[i] = hr[i] == 0.0f;
        mean += dead[i] ? 1.0 : hr[i];
    }
    mean /= n;
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < n; i++)
            if (dead[i]) w[r * cols + i] = 0.0f;

    /* 2. U; a Hessian that is not positive definite after damping gets ten times more */
    for (int attempt = 0;; attempt++) {
        const double add = damp * mean;
        for (int i = 0; i < n; i++) {
            const float *hr = H + (size_t)i * n;
            double *ar = A + (size_t)i * n;
            for (int j = 0; j < n; j++)
                ar[j] = dead[i] || dead[j] ? 0.0 : hr[j];
            ar[i] = (dead[i] ? 1.0 : hr[i]) + add;
            imp[i] = (float)ar[i];
        }
        rc = inverse_cholesky(A, n, scr, Lii, kr.dtile, pool);
        if (!rc) break;
        if (attempt == 3) {
            rc = core_err_set(MLV_EINVAL,
                              "gptq: the Hessian is not positive definite even with damping %g",
                              damp);
            goto done;
        }
        damp *= 10.0;
    }
    for (size_t k = 0; k < nn; k++)
        U[k] = (float)A[k];
    for (int i = 0; i < n; i++)
        inv_d[i] = (float)(1.0 / A[(size_t)i * n + i]);
    free(A);
    A = NULL;

    /* 3. the sweep */
    J->type = type;
    J->qb = (int)be;
    J->rows = rows;
    J->cols = cols;
    J->block_bytes = bb;
    J->row_bytes = (size_t)cols / be * bb;
    J->w = w;
    J->dst = dst;
    J->U = U;
    J->inv_d = inv_d;
    J->imp = imp;
    J->stile = kr.stile;
    J->scr = S;
    atomic_init(&J->rc, 0);
    run(pool, gptq_worker, J);
    rc = atomic_load(&J->rc);
    if (rc) core_err_set(rc, "gptq: %s", J->msg);
    goto done;
oom:
    rc = core_err_set(MLV_ENOMEM, "gptq: out of memory for a %lld x %lld matrix", (long long)rows,
                      (long long)cols);
done:
    if (S)
        for (int t = 0; t < nth; t++) {
            free(S[t].E);
            free(S[t].g);
            free(S[t].q);
        }
    free(S);
    free(J);
    free(dead);
    free(imp);
    free(inv_d);
    free(U);
    free(Lii);
    free(scr);
    free(A);
    return rc;
}
