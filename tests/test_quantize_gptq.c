/* tests/test_quantize_gptq.c: GPTQ (quantize/gptq.c) and calibration (quantize/calib.c).
 * GPTQ is judged by what it is for: on activations X with correlated inputs, the output
 * error ||(W - Q) X^T||^2 of its result (dequantized by the engine) must be clearly
 * below round-to-nearest's; on white-noise inputs it must stay near RTN's; with H = I
 * it has nothing to compensate and must give what the importance-weighted quantizer
 * gives; threads must not change a byte. Calibration runs the tiny generated models
 * (tests/ref/tiny_models.py): layer 0's attention input statistics are recomputed here
 * from the embedding and norm weights (rows of token_embd through RMSNorm), and the
 * rest is checked for shape, symmetry, agreement of imatrix and Hessian diagonal, the
 * token count of the windows, names, and refusals. */
/* cmocka needs these three first, in this order. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/engine.h"
#include "quantize/quantize.h"

static char tmpdir[4096];
static char llama_path[4200], qwen2_path[4200];
static bool have_models;

/* ------------------------------------------------------------------ helpers --- */

/* X (T, n): correlated = a rank-n/4 mixture plus a little noise, columns of different
 * scales (as real activations have); otherwise white noise. */
static float *make_x(int T, int n, bool correlated, uint64_t seed)
{
    float *X = malloc(sizeof *X * (size_t)T * n);
    assert_non_null(X);
    if (!correlated) {
        for (size_t i = 0; i < (size_t)T * n; i++)
            X[i] = (float)rng_gauss(&seed);
        return X;
    }
    const int r = n / 4;
    double *M = malloc(sizeof *M * (size_t)r * n), *scale = malloc(sizeof *scale * n);
    double *z = malloc(sizeof *z * r);
    assert_true(M && scale && z);
    for (size_t i = 0; i < (size_t)r * n; i++)
        M[i] = rng_gauss(&seed) / sqrt((double)r);
    for (int j = 0; j < n; j++)
        scale[j] = exp(0.5 * rng_gauss(&seed));
    for (int t = 0; t < T; t++) {
        for (int k = 0; k < r; k++)
            z[k] = rng_gauss(&seed);
        for (int j = 0; j < n; j++) {
            double v = 0.1 * rng_gauss(&seed);
            for (int k = 0; k < r; k++)
                v += z[k] * M[(size_t)k * n + j];
            X[(size_t)t * n + j] = (float)(v * scale[j]);
        }
    }
    free(M);
    free(scale);
    free(z);
    return X;
}

/* H = X^T X / T, as calibration gives it. */
static float *hessian_of(const float *X, int T, int n)
{
    float *H = malloc(sizeof *H * (size_t)n * n);
    assert_non_null(H);
    for (int i = 0; i < n; i++)
        for (int j = i; j < n; j++) {
            double s = 0;
            for (int t = 0; t < T; t++)
                s += (double)X[(size_t)t * n + i] * X[(size_t)t * n + j];
            H[(size_t)i * n + j] = H[(size_t)j * n + i] = (float)(s / T);
        }
    return H;
}

static float *make_w(int rows, int cols, uint64_t seed)
{
    float *W = malloc(sizeof *W * (size_t)rows * cols);
    assert_non_null(W);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        W[i] = (float)(0.02 * rng_gauss(&seed));
    return W;
}

static size_t row_bytes(int type, int cols)
{
    size_t be, bb;
    assert_int_equal(eng_type_block(type, &be, &bb), 0);
    return (size_t)cols / be * bb;
}

/* Q = the engine's dequantization of rows quantized to `type`. */
static float *dequant(int type, const uint8_t *q, int rows, int cols)
{
    float *Q = malloc(sizeof *Q * (size_t)rows * cols);
    assert_non_null(Q);
    for (int r = 0; r < rows; r++)
        assert_int_equal(eng_dequantize_row(type, q + (size_t)r * row_bytes(type, cols),
                                            Q + (size_t)r * cols, cols),
                         0);
    return Q;
}

static float *rtn(int type, const float *W, int rows, int cols)
{
    uint8_t *q = malloc(row_bytes(type, cols) * rows);
    assert_non_null(q);
    for (int r = 0; r < rows; r++)
        assert_int_equal(qnt_quantize_row(type, W + (size_t)r * cols,
                                          q + (size_t)r * row_bytes(type, cols), cols, NULL),
                         0);
    float *Q = dequant(type, q, rows, cols);
    free(q);
    return Q;
}

/* GPTQ on a copy of W; *bytes (optional) receives the packed rows. */
static float *gptq(int type, const float *W, int rows, int cols, const float *H, core_pool *pool,
                   uint8_t **bytes)
{
    float *w = malloc(sizeof *w * (size_t)rows * cols);
    uint8_t *q = malloc(row_bytes(type, cols) * rows);
    assert_true(w && q);
    memcpy(w, W, sizeof *w * (size_t)rows * cols);
    int rc = qnt_gptq(type, w, rows, cols, H, 0.0, q, pool);
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);
    float *Q = dequant(type, q, rows, cols);
    free(w);
    if (bytes)
        *bytes = q;
    else
        free(q);
    return Q;
}

/* ||(W - Q) X^T||^2 over the T activation rows. */
static double out_err(const float *W, const float *Q, int rows, int cols, const float *X, int T)
{
    double *d = malloc(sizeof *d * cols), e = 0;
    assert_non_null(d);
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < cols; j++)
            d[j] = (double)W[(size_t)r * cols + j] - Q[(size_t)r * cols + j];
        for (int t = 0; t < T; t++) {
            double s = 0;
            for (int j = 0; j < cols; j++)
                s += d[j] * X[(size_t)t * cols + j];
            e += s * s;
        }
    }
    free(d);
    return e;
}

/* The same error through a Hessian: sum_r d_r^T H d_r. */
static double h_err(const float *W, const float *Q, int rows, int cols, const float *H)
{
    double e = 0;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < cols; i++) {
            double di = (double)W[(size_t)r * cols + i] - Q[(size_t)r * cols + i];
            for (int j = 0; j < cols; j++)
                e += di * H[(size_t)i * cols + j] *
                     ((double)W[(size_t)r * cols + j] - Q[(size_t)r * cols + j]);
        }
    return e;
}

/* ------------------------------------------------------------------- GPTQ --- */

static void gptq_vs_rtn(int type, int rows, int cols, int T, bool correlated, uint64_t seed,
                        double *ratio)
{
    float *X = make_x(T, cols, correlated, seed);
    float *H = hessian_of(X, T, cols);
    float *W = make_w(rows, cols, seed + 1);
    float *Qr = rtn(type, W, rows, cols), *Qg = gptq(type, W, rows, cols, H, NULL, NULL);
    double er = out_err(W, Qr, rows, cols, X, T), eg = out_err(W, Qg, rows, cols, X, T);
    assert_true(er > 0 && isfinite(eg));
    *ratio = eg / er;
    fprintf(stderr, "  %s %dx%d %s: gptq/rtn output error %.3f\n", eng_type_name(type), rows, cols,
            correlated ? "correlated" : "white", *ratio);
    free(X);
    free(H);
    free(W);
    free(Qr);
    free(Qg);
}

static void test_gptq_beats_rtn(void **state)
{
    (void)state;
    double ratio;
    /* Correlated inputs: error compensation pays clearly (the grid fit alone, without
     * moving any error, gives about 0.85 here). */
    gptq_vs_rtn(ENG_Q4_0, 64, 128, 512, true, 11, &ratio);
    assert_true(ratio < 0.5);
    gptq_vs_rtn(ENG_Q4_K, 64, 256, 512, true, 12, &ratio);
    assert_true(ratio < 0.5);
    gptq_vs_rtn(ENG_Q4_0, 48, 64, 512, true, 13, &ratio);
    assert_true(ratio < 0.5);
    /* and for every other type it supports */
    const int others[] = {ENG_Q8_0, ENG_Q4_1, ENG_Q5_0, ENG_Q5_1, ENG_Q5_K, ENG_Q6_K};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        int cols = others[i] == ENG_Q5_K || others[i] == ENG_Q6_K ? 256 : 96;
        gptq_vs_rtn(others[i], 32, cols, 512, true, 20 + i, &ratio);
        assert_true(ratio < 0.5);
    }
}

static void test_gptq_white_noise(void **state)
{
    (void)state;
    /* H close to the identity: nothing much to compensate; GPTQ stays near RTN (its grid
     * fit is the importance-weighted one, which may do a little better). */
    double ratio;
    gptq_vs_rtn(ENG_Q4_0, 64, 64, 8192, false, 31, &ratio);
    assert_true(ratio > 0.6 && ratio < 1.15);
    gptq_vs_rtn(ENG_Q4_K, 16, 256, 4096, false, 32, &ratio);
    assert_true(ratio > 0.6 && ratio < 1.15);
}

/* With H = I exactly, U is diagonal and no error moves: every block is what the
 * importance-weighted quantizer gives with a constant importance. */
static void test_gptq_identity(void **state)
{
    (void)state;
    const int types[] = {ENG_Q4_0, ENG_Q8_0, ENG_Q5_1, ENG_Q4_K, ENG_Q6_K};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const int type = types[k], rows = 8, cols = 256;
        float *H = calloc((size_t)cols * cols, sizeof *H), *imp = malloc(sizeof *imp * cols);
        assert_true(H && imp);
        for (int i = 0; i < cols; i++) {
            H[(size_t)i * cols + i] = 1.0f;
            imp[i] = 1.01f; /* the damped diagonal */
        }
        float *W = make_w(rows, cols, 40 + k);
        uint8_t *qg = NULL, *qi = malloc(row_bytes(type, cols) * rows);
        assert_non_null(qi);
        float *Qg = gptq(type, W, rows, cols, H, NULL, &qg);
        for (int r = 0; r < rows; r++)
            assert_int_equal(qnt_quantize_row(type, W + (size_t)r * cols,
                                              qi + (size_t)r * row_bytes(type, cols), cols, imp),
                             0);
        float *Qi = dequant(type, qi, rows, cols);
        /* the same grids; a level may differ only where the value sits on a rounding tie */
        size_t differ = 0;
        for (size_t i = 0; i < (size_t)rows * cols; i++)
            differ += Qg[i] != Qi[i];
        if (differ) fprintf(stderr, "  %s: %zu values differ\n", eng_type_name(type), differ);
        assert_true(differ <= 2);
        free(H);
        free(imp);
        free(W);
        free(qg);
        free(qi);
        free(Qg);
        free(Qi);
    }
}

static void test_gptq_threads_and_dead(void **state)
{
    (void)state;
    const int rows = 70, cols = 160, T = 256;
    float *X = make_x(T, cols, true, 51);
    /* three dead inputs: never active */
    const int dead[] = {0, 33, 159};
    for (int t = 0; t < T; t++)
        for (size_t k = 0; k < 3; k++)
            X[(size_t)t * cols + dead[k]] = 0.0f;
    float *H = hessian_of(X, T, cols), *W = make_w(rows, cols, 52);
    core_pool *pool = NULL;
    assert_int_equal(core_pool_new(&pool, 3), 0);
    uint8_t *q1 = NULL, *q3 = NULL;
    float *Q1 = gptq(ENG_Q4_1, W, rows, cols, H, NULL, &q1);
    float *Q3 = gptq(ENG_Q4_1, W, rows, cols, H, pool, &q3);
    assert_memory_equal(q1, q3, row_bytes(ENG_Q4_1, cols) * rows);
    /* the dead columns do not matter to the output; the rest beats RTN */
    float *Qr = rtn(ENG_Q4_1, W, rows, cols);
    double er = out_err(W, Qr, rows, cols, X, T), eg = out_err(W, Q1, rows, cols, X, T);
    assert_true(eg < 0.5 * er);
    /* the compensated weights: dead columns zeroed */
    float *w = malloc(sizeof *w * rows * cols);
    uint8_t *q = malloc(row_bytes(ENG_Q4_1, cols) * rows);
    memcpy(w, W, sizeof *w * rows * cols);
    assert_int_equal(qnt_gptq(ENG_Q4_1, w, rows, cols, H, 0.05, q, NULL), 0);
    for (int r = 0; r < rows; r++)
        for (size_t k = 0; k < 3; k++)
            assert_true(w[(size_t)r * cols + dead[k]] == 0.0f);
    core_pool_free(pool);
    free(w);
    free(q);
    free(X);
    free(H);
    free(W);
    free(q1);
    free(q3);
    free(Q1);
    free(Q3);
    free(Qr);
}

static void test_gptq_refusals(void **state)
{
    (void)state;
    const int cols = 256;
    float *H = calloc((size_t)cols * cols, sizeof *H), *w = make_w(4, cols, 60);
    uint8_t *q = malloc(4096);
    assert_true(H && q);
    for (int i = 0; i < cols; i++)
        H[(size_t)i * cols + i] = 1.0f;
    /* not a whole number of blocks */
    assert_int_equal(qnt_gptq(ENG_Q4_0, w, 4, 48, H, 0, q, NULL), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "block"));
    assert_int_equal(qnt_gptq(ENG_Q4_K, w, 4, 128, H, 0, q, NULL), MLV_EINVAL);
    assert_int_equal(qnt_gptq(ENG_Q8_0, w, 4, 0, H, 0, q, NULL), MLV_EINVAL);
    /* types it cannot quantize to */
    const int bad[] = {ENG_F32, ENG_F16, ENG_BF16, ENG_Q2_K, ENG_Q3_K, ENG_Q8_K, 99, -1};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(qnt_gptq(bad[i], w, 4, cols, H, 0, q, NULL), MLV_EINVAL);
    /* bad numbers */
    assert_int_equal(qnt_gptq(ENG_Q4_0, w, -1, cols, H, 0, q, NULL), MLV_EINVAL);
    assert_int_equal(qnt_gptq(ENG_Q4_0, w, 4, cols, H, -0.5, q, NULL), MLV_EINVAL);
    assert_int_equal(qnt_gptq(ENG_Q4_0, w, 4, cols, NULL, 0, q, NULL), MLV_EINVAL);
    H[5 * cols + 7] = NAN;
    assert_int_equal(qnt_gptq(ENG_Q4_0, w, 4, cols, H, 0, q, NULL), MLV_EINVAL);
    H[5 * cols + 7] = 0.0f;
    H[9 * cols + 9] = -1.0f;
    assert_int_equal(qnt_gptq(ENG_Q4_0, w, 4, cols, H, 0, q, NULL), MLV_EINVAL);
    /* no rows: nothing to do */
    assert_int_equal(qnt_gptq(ENG_Q4_0, w, 0, cols, H, 0, q, NULL), 0);
    free(H);
    free(w);
    free(q);
}

/* ------------------------------------------------------------- calibration --- */

static int setup(void **state)
{
    (void)state;
    make_temp_dir(tmpdir, sizeof tmpdir, "quantize-gptq");
    const char *venv = getenv("MLV_VENV"), *src = getenv("MLV_SOURCE_DIR");
    char py[4200];
    struct stat st;
    snprintf(py, sizeof py, "%s/bin/python", venv ? venv : "");
    if (!venv || !src || stat(py, &st) != 0) return 0;
    snprintf(llama_path, sizeof llama_path, "%s/llama.gguf", tmpdir);
    snprintf(qwen2_path, sizeof qwen2_path, "%s/qwen2.gguf", tmpdir);
    static char cmd[32768];
    snprintf(cmd, sizeof cmd,
             "'%s' '%s/tests/ref/tiny_models.py' llama '%s' && "
             "'%s' '%s/tests/ref/tiny_models.py' qwen2 '%s'",
             py, src, llama_path, py, src, qwen2_path);
    have_models = system(cmd) == 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    core_rm_rf(tmpdir);
    return 0;
}

static bool skip_without_models(void)
{
    if (!have_models) fprintf(stderr, "skipped: set MLV_VENV and MLV_SOURCE_DIR (tiny models)\n");
    return !have_models;
}

static eng_model *open_model(const char *path)
{
    eng_load_opts o = {2, ENG_BACKEND_AUTO};
    eng_model *m = NULL;
    int rc = eng_model_open_file(&m, path, &o);
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);
    return m;
}

static char *calib_text(size_t *len)
{
    static const char *parts[] = {
        "The quick brown fox jumps over the lazy dog. ",
        "In the beginning there was the word, and the word was with the model. ",
        "Quantization maps each weight onto a small grid of levels; ",
        "the errors it leaves are spread over the columns still to come.\n\n",
    };
    core_buf b = {0};
    for (int i = 0; i < 24; i++)
        core_buf_append(&b, parts[i % 4], strlen(parts[i % 4]));
    *len = b.len;
    return core_buf_take(&b);
}

static double last_frac;
static int n_progress;
static void on_progress(void *arg, double frac, const char *msg)
{
    (void)arg;
    assert_non_null(msg);
    assert_true(frac > last_frac && frac <= 1.0);
    last_frac = frac;
    n_progress++;
}

/* A float tensor from the model's GGUF (dequantized), n elements. */
static float *tensor_f32(const char *path, const char *name, size_t *n)
{
    size_t len;
    unsigned char *img = read_all(path, &len);
    eng_gguf *g = NULL;
    assert_int_equal(eng_gguf_open_mem(&g, img, len), 0);
    int64_t i = eng_gguf_find_tensor(g, name);
    assert_true(i >= 0);
    eng_gguf_tensor t;
    assert_int_equal(eng_gguf_tensor_info(g, (size_t)i, &t), 0);
    float *out = malloc(sizeof *out * t.n_elems);
    assert_non_null(out);
    assert_int_equal(eng_dequantize_row(t.type, img + eng_gguf_data_offset(g) + t.offset, out,
                                        (int64_t)t.n_elems),
                     0);
    *n = t.n_elems;
    eng_gguf_free(g);
    free(img);
    return out;
}

static void test_calib_llama(void **state)
{
    (void)state;
    if (skip_without_models()) return;
    eng_model *m = open_model(llama_path);
    const eng_hparams *hp = eng_model_hparams(m);
    size_t len;
    char *text = calib_text(&len);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(eng_tokenize(eng_model_tokenizer(m), text, len, true, false, &ids, &n_ids), 0);
    const uint32_t n_ctx = 64;
    assert_true(n_ids > 3 * n_ctx);
    const size_t rest = n_ids % n_ctx, n_full = n_ids / n_ctx;
    const size_t expect = n_full * n_ctx + (rest >= 16 ? rest : 0);

    qnt_calib_opts o = {.n_ctx = n_ctx, .hessian = true, .progress = on_progress};
    qnt_calib *c = NULL;
    last_frac = 0;
    n_progress = 0;
    int rc = qnt_calib_run(&c, m, text, len, &o);
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);
    assert_int_equal(qnt_calib_tokens(c), expect);
    assert_true(n_progress >= 3 && last_frac == 1.0);

    /* every matrix of every layer, at its input width; one pointer per site */
    static const struct {
        const char *name;
        int site;
    } mats[] = {{"attn_q", 0},   {"attn_k", 0}, {"attn_v", 0},  {"attn_output", 1},
                {"ffn_gate", 2}, {"ffn_up", 2}, {"ffn_down", 3}};
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const float *site_ptr[4] = {0};
        for (size_t k = 0; k < sizeof mats / sizeof mats[0]; k++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%u.%s.weight", l, mats[k].name);
            int64_t n = 0, nh = 0;
            const float *im = qnt_calib_imatrix(c, name, &n);
            const float *H = qnt_calib_hessian(c, name, &nh);
            assert_non_null(im);
            assert_non_null(H);
            int64_t want = mats[k].site == 3   ? hp->n_ff
                           : mats[k].site == 1 ? (int64_t)hp->n_head * hp->head_dim
                                               : hp->n_embd;
            assert_int_equal(n, want);
            assert_int_equal(nh, want);
            if (site_ptr[mats[k].site]) assert_ptr_equal(site_ptr[mats[k].site], im);
            site_ptr[mats[k].site] = im;
            for (int64_t i = 0; i < n; i++) {
                assert_true(im[i] >= 0.0f && isfinite(im[i]));
                assert_true(fabsf(H[i * n + i] - im[i]) <= 1e-4f * im[i] + 1e-12f);
                for (int64_t j = 0; j < n; j++) {
                    assert_true(H[i * n + j] == H[j * n + i]);
                    /* a Gram matrix: |H_ij| <= sqrt(H_ii H_jj) */
                    assert_true(fabs(H[i * n + j]) <=
                                sqrt((double)H[i * n + i] * H[j * n + j]) * (1 + 1e-5) + 1e-12);
                }
            }
        }
        assert_true(site_ptr[0] != site_ptr[2]);
    }
    int64_t n = 0;
    assert_non_null(qnt_calib_imatrix(c, "output.weight", &n));
    assert_int_equal(n, hp->n_embd);
    /* names no product reads, or that do not exist */
    const char *none[] = {"token_embd.weight",   "output_norm.weight", "blk.0.attn_norm.weight",
                          "blk.2.attn_q.weight", "blk.0.attn_q.bias",  "blk.00.attn_q.weight",
                          "blk.x.attn_q.weight", "attn_q.weight"};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        assert_null(qnt_calib_imatrix(c, none[i], &n));
        assert_int_equal(n, 0);
        assert_null(qnt_calib_hessian(c, none[i], NULL));
    }

    /* Layer 0's attention input, recomputed: x = RMSNorm(token_embd[id]) * attn_norm, for
     * every token of the windows (each window's first token made BOS). */
    size_t ne, nn;
    float *emb = tensor_f32(llama_path, "token_embd.weight", &ne);
    float *g = tensor_f32(llama_path, "blk.0.attn_norm.weight", &nn);
    const int d = (int)hp->n_embd;
    assert_int_equal(nn, d);
    double *s1 = calloc(d, sizeof *s1), *s2 = calloc((size_t)d * d, sizeof *s2),
           *x = malloc(sizeof *x * d);
    assert_true(s1 && s2 && x);
    const int32_t bos = eng_token_bos(eng_model_tokenizer(m));
    assert_true(bos >= 0 && ids[0] == bos);
    for (size_t t = 0; t < expect; t++) {
        int32_t id = t % n_ctx == 0 ? bos : ids[t];
        const float *e = emb + (size_t)id * d;
        double ms = 0;
        for (int j = 0; j < d; j++)
            ms += (double)e[j] * e[j];
        double inv = 1.0 / sqrt(ms / d + hp->rms_eps);
        for (int j = 0; j < d; j++)
            x[j] = e[j] * inv * g[j];
        for (int i = 0; i < d; i++) {
            s1[i] += x[i] * x[i];
            for (int j = 0; j < d; j++)
                s2[(size_t)i * d + j] += x[i] * x[j];
        }
    }
    const float *im = qnt_calib_imatrix(c, "blk.0.attn_k.weight", NULL);
    const float *H = qnt_calib_hessian(c, "blk.0.attn_k.weight", NULL);
    double scale = 0;
    for (int i = 0; i < d; i++)
        scale = fmax(scale, s1[i] / expect);
    for (int i = 0; i < d; i++) {
        assert_true(fabs(im[i] - s1[i] / expect) <= 1e-4 * s1[i] / expect + 1e-9);
        for (int j = 0; j < d; j++)
            assert_true(fabs(H[(size_t)i * d + j] - s2[(size_t)i * d + j] / expect) <=
                        1e-4 * scale);
    }
    free(s1);
    free(s2);
    free(x);
    free(emb);
    free(g);

    /* GPTQ on a real matrix with the Hessian its input had: ffn_down (160 columns) */
    size_t nw;
    float *W = tensor_f32(llama_path, "blk.1.ffn_down.weight", &nw);
    int64_t cols = 0;
    const float *Hd = qnt_calib_hessian(c, "blk.1.ffn_down.weight", &cols);
    const int rows = (int)(nw / (size_t)cols);
    float *Qr = rtn(ENG_Q4_0, W, rows, (int)cols);
    float *Qg = gptq(ENG_Q4_0, W, rows, (int)cols, Hd, NULL, NULL);
    double er = h_err(W, Qr, rows, (int)cols, Hd), eg = h_err(W, Qg, rows, (int)cols, Hd);
    fprintf(stderr, "  tiny llama blk.1.ffn_down Q4_0: gptq/rtn output error %.3f\n", eg / er);
    assert_true(eg < er);
    free(W);
    free(Qr);
    free(Qg);
    qnt_calib_free(c);

    /* max_tokens: windows of 16 from the first 40 tokens -> two whole windows (the last 8
     * tokens are too few for a third); without the Hessian */
    o = (qnt_calib_opts){.n_ctx = 16, .max_tokens = 40};
    assert_int_equal(qnt_calib_run(&c, m, text, len, &o), 0);
    assert_int_equal(qnt_calib_tokens(c), 32);
    assert_non_null(qnt_calib_imatrix(c, "blk.1.ffn_up.weight", &n));
    assert_null(qnt_calib_hessian(c, "blk.1.ffn_up.weight", &n));
    assert_int_equal(n, 0);
    qnt_calib_free(c);
    qnt_calib_free(NULL);

    free(ids);
    free(text);
    eng_model_free(m);
}

static void test_calib_tied_and_refusals(void **state)
{
    (void)state;
    if (skip_without_models()) return;
    eng_model *m = open_model(qwen2_path);
    assert_true(eng_model_hparams(m)->tied_output);
    size_t len;
    char *text = calib_text(&len);
    qnt_calib *c = NULL;
    qnt_calib_opts o = {.n_ctx = 128};
    assert_int_equal(qnt_calib_run(&c, m, text, len, &o), 0);
    int64_t n1 = 0, n2 = 0;
    const float *a = qnt_calib_imatrix(c, "token_embd.weight", &n1);
    assert_non_null(a);
    assert_ptr_equal(a, qnt_calib_imatrix(c, "output.weight", &n2));
    assert_int_equal(n1, eng_model_hparams(m)->n_embd);
    assert_int_equal(n1, n2);
    qnt_calib_free(c);

    /* invalid UTF-8, named by its offset */
    char bad[] = "valid text, then \xC3\x28 an invalid pair and more text to pass the length";
    c = (qnt_calib *)1;
    assert_int_equal(qnt_calib_run(&c, m, bad, sizeof bad - 1, NULL), MLV_EINVAL);
    assert_null(c);
    assert_non_null(strstr(core_err_last(), "offset 17"));
    const char *bads[] = {"\xED\xA0\x80 surrogate", "\xC0\xAF overlong", "\xF4\x90\x80\x80 big",
                          "cut short \xE2\x82"};
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++)
        assert_int_equal(qnt_calib_run(&c, m, bads[i], strlen(bads[i]), NULL), MLV_EINVAL);
    /* too short for a window of 16 tokens */
    assert_int_equal(qnt_calib_run(&c, m, "hi", 2, NULL), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "16"));
    assert_int_equal(qnt_calib_run(&c, m, "", 0, NULL), MLV_EINVAL);
    o = (qnt_calib_opts){.max_tokens = 10};
    assert_int_equal(qnt_calib_run(&c, m, text, len, &o), MLV_EINVAL);
    o = (qnt_calib_opts){.n_ctx = 8};
    assert_int_equal(qnt_calib_run(&c, m, text, len, &o), MLV_EINVAL);
    free(text);
    eng_model_free(m);
}

/* The real model (when cached): sites of 576 and 1536 columns, whose Hessian updates
 * run on the calibration's own thread pool. */
static void test_calib_real_model(void **state)
{
    (void)state;
    const char *path = getenv("MLV_MODEL_GGUF");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        fprintf(stderr, "skipped: set MLV_MODEL_GGUF to the cached SmolLM2\n");
        return;
    }
    eng_model *m = open_model(path);
    size_t len;
    char *text = calib_text(&len);
    qnt_calib *c = NULL;
    qnt_calib_opts o = {.n_ctx = 64, .max_tokens = 64, .hessian = true};
    int rc = qnt_calib_run(&c, m, text, len, &o);
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);
    assert_int_equal(qnt_calib_tokens(c), 64);
    const char *names[] = {"blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"};
    for (size_t k = 0; k < 3; k++) {
        int64_t n = 0;
        const float *im = qnt_calib_imatrix(c, names[k], &n);
        const float *H = qnt_calib_hessian(c, names[k], NULL);
        assert_non_null(im);
        assert_non_null(H);
        assert_true(n == 576 || n == 1536);
        for (int64_t i = 0; i < n; i++) {
            assert_true(fabsf(H[i * n + i] - im[i]) <= 1e-4f * im[i] + 1e-12f);
            for (int64_t j = i + 1; j < n; j++) {
                assert_true(H[i * n + j] == H[j * n + i]);
                assert_true(fabs(H[i * n + j]) <=
                            sqrt((double)H[i * n + i] * H[j * n + j]) * (1 + 1e-5) + 1e-12);
            }
        }
    }
    qnt_calib_free(c);
    free(text);
    eng_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gptq_beats_rtn),
        cmocka_unit_test(test_gptq_white_noise),
        cmocka_unit_test(test_gptq_identity),
        cmocka_unit_test(test_gptq_threads_and_dead),
        cmocka_unit_test(test_gptq_refusals),
        cmocka_unit_test(test_calib_llama),
        cmocka_unit_test(test_calib_tied_and_refusals),
        cmocka_unit_test(test_calib_real_model),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
