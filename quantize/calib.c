/* quantize/calib.c: calibration — runs the engine over text and accumulates, for every
 * (layer, site) of the forward pass (engine/engine.h, enum eng_site), the mean squared
 * activation of each input column (llama-imatrix's statistic) and, when asked, the
 * Hessian H = sum_t x_t x_t^T that GPTQ needs. Text is tokenized and windowed as
 * engine/eval.c does (BOS first when the model adds one, each window's first token
 * made BOS, as llama-perplexity and llama-imatrix do); every window starts from an
 * empty KV cache and asks for the logits of every token, so the output matrix's input
 * is seen too. Not for: choosing types (recipe.c) or quantizing (blocks.c, gptq.c).
 *
 * The Hessian update of a batch X (T, n) is a symmetric rank-T update of the upper
 * triangle, done as a packed, tiled outer-product kernel (AVX2/FMA where the CPU has it,
 * plain C otherwise), spread over a thread pool of its own: the model's forward pass
 * is paused while the observer runs. The lower triangle is filled in at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quantize/quantize.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CALIB_X86 1
#define TA2 __attribute__((target("avx2,fma")))
#endif

#define MIN_TOKENS 16  /* the shortest window we calibrate on */
#define PIECE 256      /* tokens per eng_decode call (bounds the logits buffer) */
#define PANEL 24       /* columns per packed panel of X: the kernel's tile width */
#define TILE_ROWS 4    /* rows of H per kernel tile */
#define POOL_MIN_N 256 /* narrower sites are updated on the calling thread */

typedef struct site_stats {
    int n;          /* input columns; 0 = no such site */
    uint64_t count; /* tokens seen */
    double *sum2;   /* n: sum_t x_tj^2 (freed at the end) */
    float *imat;    /* n: sum2 / count, filled at the end */
    float *H;       /* n x n: sum_t x_t x_t^T (upper triangle while running), then / count */
} site_stats;

/* C[mr x nr] += sum_t a[t*PANEL + r] * b[t*PANEL + j]: one tile of the syrk. */
typedef void (*tile_fn)(int T, const float *a, const float *b, float *c, size_t ldc, int mr,
                        int nr);

struct qnt_calib {
    uint32_t n_layer;
    bool tied;
    size_t n_tokens;
    site_stats *st; /* (n_layer + 1) * ENG_N_SITES, layer-major */
    /* while running */
    core_pool *pool;
    float *pack; /* ceil(n / PANEL) panels of (T, PANEL), zero-padded */
    size_t pack_cap;
    tile_fn tile;
    int err;
    char errmsg[160];
};

/* ------------------------------------------------------------------ the kernel --- */

static void tile_ref(int T, const float *a, const float *b, float *c, size_t ldc, int mr, int nr)
{
    float acc[TILE_ROWS][PANEL] = {{0}};
    for (int t = 0; t < T; t++) {
        const float *at = a + (size_t)t * PANEL, *bt = b + (size_t)t * PANEL;
        for (int r = 0; r < TILE_ROWS; r++)
            for (int j = 0; j < PANEL; j++)
                acc[r][j] += at[r] * bt[j];
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++)
            c[(size_t)r * ldc + j] += acc[r][j];
}

#ifdef CALIB_X86
/* 4 x 24: twelve accumulators, 3 loads and 4 broadcasts per 12 fused multiply-adds. */
TA2 static void tile_avx2(int T, const float *a, const float *b, float *c, size_t ldc, int mr,
                          int nr)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00,
           c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    for (int t = 0; t < T; t++) {
        const float *at = a + (size_t)t * PANEL, *bt = b + (size_t)t * PANEL;
        const __m256 b0 = _mm256_load_ps(bt), b1 = _mm256_load_ps(bt + 8),
                     b2 = _mm256_load_ps(bt + 16);
        __m256 x = _mm256_broadcast_ss(at);
        c00 = _mm256_fmadd_ps(x, b0, c00);
        c01 = _mm256_fmadd_ps(x, b1, c01);
        c02 = _mm256_fmadd_ps(x, b2, c02);
        x = _mm256_broadcast_ss(at + 1);
        c10 = _mm256_fmadd_ps(x, b0, c10);
        c11 = _mm256_fmadd_ps(x, b1, c11);
        c12 = _mm256_fmadd_ps(x, b2, c12);
        x = _mm256_broadcast_ss(at + 2);
        c20 = _mm256_fmadd_ps(x, b0, c20);
        c21 = _mm256_fmadd_ps(x, b1, c21);
        c22 = _mm256_fmadd_ps(x, b2, c22);
        x = _mm256_broadcast_ss(at + 3);
        c30 = _mm256_fmadd_ps(x, b0, c30);
        c31 = _mm256_fmadd_ps(x, b1, c31);
        c32 = _mm256_fmadd_ps(x, b2, c32);
    }
    const __m256 acc[TILE_ROWS][3] = {
        {c00, c01, c02}, {c10, c11, c12}, {c20, c21, c22}, {c30, c31, c32}};
    if (mr == TILE_ROWS && nr == PANEL) {
        for (int r = 0; r < TILE_ROWS; r++) {
            float *cr = c + (size_t)r * ldc;
            for (int v = 0; v < 3; v++)
                _mm256_storeu_ps(cr + 8 * v, _mm256_add_ps(_mm256_loadu_ps(cr + 8 * v), acc[r][v]));
        }
        return;
    }
    float tmp[TILE_ROWS][PANEL];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int v = 0; v < 3; v++)
            _mm256_storeu_ps(tmp[r] + 8 * v, acc[r][v]);
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++)
            c[(size_t)r * ldc + j] += tmp[r][j];
}
#endif

static tile_fn pick_tile(void)
{
#ifdef CALIB_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return tile_avx2;
#endif
    return tile_ref;
}

typedef struct syrk_job {
    const float *P; /* packed X */
    float *H;
    int n, T, np;
    tile_fn tile;
} syrk_job;

/* Panel jp (columns PANEL * jp ..) of the upper triangle: the tiles of rows i0 <= its last
 * column. Panels go to threads in a zigzag, as their cost grows with jp. */
static void syrk_worker(void *arg, int ith, int nth)
{
    const syrk_job *J = arg;
    const size_t pstride = (size_t)J->T * PANEL;
    for (int jp = 0; jp < J->np; jp++) {
        int round = jp / nth, slot = jp % nth;
        if ((round & 1 ? nth - 1 - slot : slot) != ith) continue;
        const int j0 = jp * PANEL, nr = J->n - j0 < PANEL ? J->n - j0 : PANEL;
        const float *b = J->P + (size_t)jp * pstride;
        for (int i0 = 0; i0 < J->n && i0 < j0 + PANEL; i0 += TILE_ROWS) {
            const float *a = J->P + (size_t)(i0 / PANEL) * pstride + i0 % PANEL;
            int mr = J->n - i0 < TILE_ROWS ? J->n - i0 : TILE_ROWS;
            J->tile(J->T, a, b, J->H + (size_t)i0 * J->n + j0, (size_t)J->n, mr, nr);
        }
    }
}

/* H (upper triangle) += X^T X, X: (T, n). */
static int syrk_update(qnt_calib *c, float *H, const float *x, int T, int n)
{
    const int np = (n + PANEL - 1) / PANEL;
    const size_t need = (size_t)np * PANEL * (size_t)T;
    if (need > c->pack_cap) {
        free(c->pack);
        c->pack = NULL;
        if (posix_memalign((void **)&c->pack, 64, need * sizeof(float))) {
            c->pack_cap = 0;
            return MLV_ENOMEM;
        }
        c->pack_cap = need;
    }
    float *P = c->pack;
    for (int jp = 0; jp < np; jp++) {
        float *dst = P + (size_t)jp * PANEL * T;
        const int j0 = jp * PANEL, w = n - j0 < PANEL ? n - j0 : PANEL;
        for (int t = 0; t < T; t++) {
            memcpy(dst + (size_t)t * PANEL, x + (size_t)t * n + j0, sizeof(float) * (size_t)w);
            for (int j = w; j < PANEL; j++)
                dst[(size_t)t * PANEL + j] = 0.0f;
        }
    }
    syrk_job J = {P, H, n, T, np, c->tile};
    if (c->pool && n >= POOL_MIN_N)
        core_pool_run(c->pool, syrk_worker, &J);
    else
        syrk_worker(&J, 0, 1);
    return 0;
}

/* ---------------------------------------------------------------- the observer --- */

static void fail(qnt_calib *c, int code, const char *msg)
{
    if (c->err) return;
    c->err = code;
    snprintf(c->errmsg, sizeof c->errmsg, "%s", msg);
}

static void observe(void *arg, uint32_t layer, int site, const float *x, int T, int n)
{
    qnt_calib *c = arg;
    if (c->err || T <= 0) return;
    if (site < 0 || site >= ENG_N_SITES || layer > c->n_layer) {
        fail(c, MLV_EINVAL, "calibration: the engine reported an unknown site");
        return;
    }
    site_stats *s = &c->st[(size_t)layer * ENG_N_SITES + site];
    if (s->n == 0 || n != s->n) {
        char msg[160];
        snprintf(msg, sizeof msg, "calibration: layer %u site %d has %d input columns, expected %d",
                 layer, site, n, s->n);
        fail(c, MLV_EINVAL, msg);
        return;
    }
    double *sum2 = s->sum2;
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        for (int j = 0; j < n; j++)
            sum2[j] += (double)xt[j] * (double)xt[j];
    }
    s->count += (uint64_t)T;
    if (s->H && syrk_update(c, s->H, x, T, n))
        fail(c, MLV_ENOMEM, "calibration: out of memory for the Hessian update");
}

/* ------------------------------------------------------------------------ run --- */

static size_t site_width(const eng_hparams *hp, int site)
{
    switch (site) {
    case ENG_SITE_QKV:
    case ENG_SITE_FFN_IN:
    case ENG_SITE_OUTPUT: return hp->n_embd;
    case ENG_SITE_ATTN_OUT: return (size_t)hp->n_head * hp->head_dim;
    case ENG_SITE_FFN_DOWN: return hp->n_ff;
    default: return 0;
    }
}

void qnt_calib_free(qnt_calib *c)
{
    if (!c) return;
    if (c->st) {
        for (size_t i = 0; i < ((size_t)c->n_layer + 1) * ENG_N_SITES; i++) {
            free(c->st[i].sum2);
            free(c->st[i].imat);
            free(c->st[i].H);
        }
        free(c->st);
    }
    core_pool_free(c->pool);
    free(c->pack);
    free(c);
}

/* Hessians for layers [h0, h1) (the output site is layer n_layer). */
static int calib_alloc(qnt_calib **out, const eng_hparams *hp, bool hessian, uint32_t h0,
                       uint32_t h1)
{
    qnt_calib *c = calloc(1, sizeof *c);
    if (!c) return core_err_set(MLV_ENOMEM, "calibration: out of memory");
    c->n_layer = hp->n_layer;
    c->tied = hp->tied_output;
    c->tile = pick_tile();
    const size_t n_st = ((size_t)hp->n_layer + 1) * ENG_N_SITES;
    if (hessian) {
        /* All Hessians live at once (one forward pass feeds them): refuse up front, with
         * the numbers, what would not fit in half of this machine's memory. */
        double need = 0;
        for (uint32_t l = h0; l < h1 && l <= hp->n_layer; l++)
            for (int s = 0; s < ENG_N_SITES; s++) {
                if ((s == ENG_SITE_OUTPUT) != (l == hp->n_layer)) continue;
                double n = (double)site_width(hp, s);
                need += n * n * 4.0;
            }
        double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
        if (ram > 0 && need > ram / 2) {
            free(c);
            return core_err_set(MLV_EINVAL,
                                "calibration: GPTQ's Hessians for this model need %.1f GB, more "
                                "than half of this machine's %.1f GB; use --method imatrix",
                                need / 1e9, ram / 1e9);
        }
    }
    c->st = calloc(n_st, sizeof *c->st);
    if (!c->st) goto oom;
    for (uint32_t l = 0; l <= hp->n_layer; l++) {
        for (int s = 0; s < ENG_N_SITES; s++) {
            if ((s == ENG_SITE_OUTPUT) != (l == hp->n_layer)) continue;
            site_stats *st = &c->st[(size_t)l * ENG_N_SITES + s];
            size_t n = site_width(hp, s);
            if (n == 0 || n > (1u << 20)) continue;
            st->n = (int)n;
            st->sum2 = calloc(n, sizeof *st->sum2);
            st->imat = calloc(n, sizeof *st->imat);
            if (!st->sum2 || !st->imat) goto oom;
            if (hessian && l >= h0 && l < h1) {
                st->H = calloc(n * n, sizeof *st->H);
                if (!st->H) goto oom;
            }
        }
    }
    *out = c;
    return 0;
oom:
    qnt_calib_free(c);
    return core_err_set(MLV_ENOMEM, "calibration: out of memory for the statistics%s",
                        hessian ? " (Hessians)" : "");
}

/* Means from the sums; the Hessian's lower triangle mirrored from the upper. */
static void calib_finish(qnt_calib *c)
{
    for (size_t i = 0; i < ((size_t)c->n_layer + 1) * ENG_N_SITES; i++) {
        site_stats *s = &c->st[i];
        if (s->n == 0) continue;
        const double inv = s->count ? 1.0 / (double)s->count : 0.0;
        for (int j = 0; j < s->n; j++)
            s->imat[j] = (float)(s->sum2[j] * inv);
        free(s->sum2);
        s->sum2 = NULL;
        if (!s->H) continue;
        const size_t n = (size_t)s->n;
        const float fi = (float)inv;
        for (size_t r = 0; r < n; r++) {
            float *hr = s->H + r * n;
            for (size_t j = r; j < n; j++) {
                hr[j] *= fi;
                s->H[j * n + r] = hr[j];
            }
        }
    }
}

int qnt_calib_run(qnt_calib **out, eng_model *m, const char *text, size_t len,
                  const qnt_calib_opts *o)
{
    if (!out || !m || (!text && len))
        return core_err_set(MLV_EINVAL, "calibration: missing model or text");
    *out = NULL;
    const uint32_t n_ctx = o && o->n_ctx ? o->n_ctx : 512;
    if (n_ctx < MIN_TOKENS)
        return core_err_set(MLV_EINVAL,
                            "calibration: a window of %u tokens is too short (%d at least)", n_ctx,
                            MIN_TOKENS);
    size_t bad = eng_utf8_check(text, len);
    if (bad < len)
        return core_err_set(MLV_EINVAL,
                            "calibration text: invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                            (unsigned)(unsigned char)text[bad]);

    const eng_hparams *hp = eng_model_hparams(m);
    const eng_tokenizer *tok = eng_model_tokenizer(m);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    qnt_calib *c = NULL;
    eng_ctx *ctx = NULL;
    float *logits = NULL;
    int rc = eng_tokenize(tok, text ? text : "", len, true, false, &ids, &n_ids);
    if (rc) return core_err_wrap("calibration: ");
    if (o && o->max_tokens && n_ids > o->max_tokens) n_ids = o->max_tokens;

    /* whole windows, and a last partial one when it has MIN_TOKENS or more */
    const size_t n_full = n_ids / n_ctx, rest = n_ids % n_ctx;
    const size_t total = n_full * n_ctx + (rest >= MIN_TOKENS ? rest : 0);
    if (total == 0) {
        rc = core_err_set(MLV_EINVAL, "calibration: %zu tokens%s are fewer than one window of %d",
                          n_ids, o && o->max_tokens ? " (text or max_tokens)" : " of text",
                          MIN_TOKENS);
        goto done;
    }
    const size_t n_win = n_full + (rest >= MIN_TOKENS ? 1 : 0);
    const uint32_t win_max = n_full ? n_ctx : (uint32_t)rest;
    const bool hessian = o && o->hessian;
    const uint32_t h0 = o ? o->hessian_first : 0;
    const uint32_t h1 = o && o->hessian_count ? h0 + o->hessian_count : hp->n_layer + 1;
    if ((rc = calib_alloc(&c, hp, hessian, h0, h1))) goto done;
    if ((rc = eng_ctx_new(&ctx, m, win_max))) goto done;
    const size_t piece = win_max < PIECE ? win_max : PIECE;
    logits = malloc(sizeof *logits * piece * hp->n_vocab);
    if (!logits) {
        rc = core_err_set(MLV_ENOMEM, "calibration: out of memory for %zu x %u logits", piece,
                          hp->n_vocab);
        goto done;
    }
    long n_cpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (n_cpu > 32) n_cpu = 32; /* a site has at most a few dozen panels */
    if (hessian && n_cpu > 1 && (rc = core_pool_new(&c->pool, (int)n_cpu))) goto done;

    const int32_t bos = eng_token_bos(tok);
    const bool add_bos = bos >= 0 && ids[0] == bos;
    eng_ctx_set_observer(ctx, observe, c);
    size_t done_tokens = 0;
    for (size_t w = 0; w < n_win && !rc; w++) {
        int32_t *win = ids + w * n_ctx;
        const size_t wl = w < n_full ? n_ctx : rest;
        const int32_t first = win[0];
        if (add_bos) win[0] = bos;
        eng_ctx_truncate(ctx, 0);
        for (size_t i = 0; i < wl && !rc; i += piece) {
            size_t k = wl - i < piece ? wl - i : piece;
            rc = eng_decode(ctx, win + i, k, logits, true);
            if (!rc && c->err) rc = core_err_set(c->err, "%s", c->errmsg);
            done_tokens += k;
            if (!rc && o && o->progress) {
                char msg[96];
                snprintf(msg, sizeof msg, "calibration: %zu / %zu tokens", done_tokens, total);
                o->progress(o->progress_arg, (double)done_tokens / (double)total, msg);
            }
        }
        win[0] = first;
    }
    eng_ctx_set_observer(ctx, NULL, NULL);
    if (rc) goto done;
    c->n_tokens = total;
    calib_finish(c);
    core_pool_free(c->pool);
    c->pool = NULL;
    free(c->pack);
    c->pack = NULL;
    c->pack_cap = 0;
    *out = c;
    c = NULL;
done:
    qnt_calib_free(c);
    eng_ctx_free(ctx);
    free(logits);
    free(ids);
    return rc;
}

size_t qnt_calib_tokens(const qnt_calib *c)
{
    return c ? c->n_tokens : 0;
}

/* The statistics read by a tensor, from its GGUF name; NULL for any other name. */
static const site_stats *lookup(const qnt_calib *c, const char *name)
{
    if (!c || !name) return NULL;
    uint32_t layer = c->n_layer;
    int site = -1;
    if (!strcmp(name, "output.weight") || (c->tied && !strcmp(name, "token_embd.weight"))) {
        site = ENG_SITE_OUTPUT;
    } else if (!strncmp(name, "blk.", 4) && name[4] >= '0' && name[4] <= '9') {
        char *end;
        unsigned long l = strtoul(name + 4, &end, 10);
        if (*end != '.' || l >= c->n_layer || (end - (name + 4) > 1 && name[4] == '0')) return NULL;
        static const struct {
            const char *suffix;
            int site;
        } map[] = {
            {".attn_q.weight", ENG_SITE_QKV},        {".attn_k.weight", ENG_SITE_QKV},
            {".attn_v.weight", ENG_SITE_QKV},        {".attn_output.weight", ENG_SITE_ATTN_OUT},
            {".ffn_gate.weight", ENG_SITE_FFN_IN},   {".ffn_up.weight", ENG_SITE_FFN_IN},
            {".ffn_down.weight", ENG_SITE_FFN_DOWN},
        };
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (!strcmp(end, map[i].suffix)) site = map[i].site;
        layer = (uint32_t)l;
    }
    if (site < 0) return NULL;
    const site_stats *s = &c->st[(size_t)layer * ENG_N_SITES + site];
    return s->n && s->count ? s : NULL;
}

const float *qnt_calib_imatrix(const qnt_calib *c, const char *tensor, int64_t *n_in)
{
    const site_stats *s = lookup(c, tensor);
    if (n_in) *n_in = s ? s->n : 0;
    return s ? s->imat : NULL;
}

const float *qnt_calib_hessian(const qnt_calib *c, const char *tensor, int64_t *n_in)
{
    const site_stats *s = lookup(c, tensor);
    if (n_in) *n_in = s && s->H ? s->n : 0;
    return s ? s->H : NULL;
}
