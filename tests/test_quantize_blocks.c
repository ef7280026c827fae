/* tests/test_quantize_blocks.c: the block quantizers and recipes of quantize/
 * (blocks.c, recipe.c). Byte-exactness against llama.cpp and gguf-py is checked end to
 * end in tests/integration/test_quantize.py; here: every type's grid view agrees with
 * the packed bytes and with the engine's dequantizer (an independent decoder of the
 * same layouts); importance weighting lowers the weighted error it promises to lower;
 * zero, constant and tiny blocks; the refusals; and the recipe rules (mixes, output
 * matrix, K-type fallbacks, overrides, architectures) on GGUF headers built here. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "quantize/quantize.h"

static const int TYPES[] = {ENG_Q8_0, ENG_Q4_0, ENG_Q4_1, ENG_Q5_0,
                            ENG_Q5_1, ENG_Q4_K, ENG_Q5_K, ENG_Q6_K};
#define N_TYPES (sizeof TYPES / sizeof TYPES[0])

static uint64_t rng_state = 20261129;
static double urand(void)
{
    return rng_unit(&rng_state);
}
static float nrand(void)
{
    return (float)rng_gauss(&rng_state);
}

static size_t block_of(int type, size_t *bytes)
{
    size_t be = 0;
    assert_int_equal(eng_type_block(type, &be, bytes), 0);
    return be;
}

/* Grid view == packed bytes == the engine's dequantization, for random and edge rows. */
static void test_grid_matches_bytes_and_dequantizer(void **state)
{
    (void)state;
    float x[512], deq[512], imp[512];
    uint8_t q1[1024], q2[1024];
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        int type = TYPES[ti];
        size_t bb, be = block_of(type, &bb);
        for (int trial = 0; trial < 40; trial++) {
            size_t n = be;
            for (size_t j = 0; j < n; j++) {
                x[j] = nrand() * (trial % 3 == 0 ? 100.0f : 0.05f);
                imp[j] = (float)urand() * 4;
            }
            if (trial == 1) memset(x, 0, sizeof x); /* zeros */
            if (trial == 2)
                for (size_t j = 0; j < n; j++)
                    x[j] = 0.3f; /* constant */
            if (trial == 3)
                for (size_t j = 0; j < n; j++)
                    x[j] = 1e-30f * (float)j; /* tiny */
            if (trial == 4) x[5] = 1e4f;      /* an outlier */
            const float *w = trial % 2 ? imp : NULL;
            assert_int_equal(qnt_quantize_row(type, x, q1, (int64_t)n, w), 0);
            qnt_grid g;
            int16_t q[256];
            assert_int_equal(qnt_grid_fit(type, x, w, &g, q), 0);
            qnt_grid_pack(&g, q, q2);
            assert_memory_equal(q1, q2, bb);
            assert_int_equal(eng_dequantize_row(type, q1, deq, (int64_t)n), 0);
            for (size_t j = 0; j < n; j++) {
                assert_true(q[j] >= g.qmin && q[j] <= g.qmax);
                float v = g.scale[j / g.sub] * q[j] + g.offset[j / g.sub];
                assert_true(fabsf(v - deq[j]) <= 1e-5f * (fabsf(deq[j]) + 1e-3f));
            }
            /* a grid-rounded value is its own nearest level */
            for (size_t j = 0; j < n; j++) {
                float d2;
                int lvl = qnt_grid_round(&g, (int)j, deq[j], &d2);
                if (g.scale[j / g.sub] != 0.0f) assert_int_equal(lvl, q[j]);
                assert_true(fabsf(d2 - deq[j]) <= 1e-5f * (fabsf(deq[j]) + 1e-3f));
            }
            if (trial == 1) /* zeros stay zeros */
                for (size_t j = 0; j < n; j++)
                    assert_true(deq[j] == 0.0f);
        }
    }
}

/* With importances, the weighted squared error is no worse than round to nearest's,
 * summed over many rows (per block the search includes RTN's scale or one near it). */
static void test_importance_lowers_weighted_error(void **state)
{
    (void)state;
    enum { N = 4096 };
    float *x = malloc(N * sizeof *x), *imp = malloc(N * sizeof *imp), *d = malloc(N * 4);
    uint8_t *q = malloc(N * 2);
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        int type = TYPES[ti];
        for (int j = 0; j < N; j++) {
            x[j] = nrand() * (j % 97 == 0 ? 8.0f : 1.0f);
            float a = nrand();
            imp[j] = a * a * (j % 7 == 0 ? 20.0f : 1.0f); /* some columns matter a lot */
        }
        double err[2];
        for (int k = 0; k < 2; k++) {
            assert_int_equal(qnt_quantize_row(type, x, q, N, k ? imp : NULL), 0);
            assert_int_equal(eng_dequantize_row(type, q, d, N), 0);
            err[k] = 0;
            for (int j = 0; j < N; j++)
                err[k] += (double)imp[j] * (x[j] - d[j]) * (x[j] - d[j]);
        }
        print_message("%s weighted error: rtn %.5g, imatrix %.5g\n", eng_type_name(type), err[0],
                      err[1]);
        assert_true(err[1] < err[0]);
    }
    free(x);
    free(imp);
    free(d);
    free(q);
}

static void test_refusals(void **state)
{
    (void)state;
    float x[64] = {0};
    uint8_t y[64];
    assert_int_equal(qnt_quantize_row(ENG_Q4_0, x, y, 33, NULL), MLV_EINVAL);
    assert_int_equal(qnt_quantize_row(ENG_Q4_K, x, y, 32, NULL), MLV_EINVAL);
    assert_int_equal(qnt_quantize_row(ENG_F16, x, y, 32, NULL), MLV_EINVAL);
    assert_int_equal(qnt_quantize_row(ENG_Q2_K, x, y, 256, NULL), MLV_EINVAL);
    assert_false(qnt_type_supported(ENG_F32));
    qnt_target t;
    assert_int_equal(qnt_target_parse("q4_k_m", &t), 0);
    assert_string_equal(t.name, "Q4_K_M");
    assert_int_equal(t.file_type, 15);
    assert_int_equal(qnt_target_parse("Q3_K", &t), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "Q3_K"));
    assert_int_equal(qnt_method_parse("gptq"), QNT_GPTQ);
    assert_int_equal(qnt_method_parse("awq"), -1);
    /* the raise ladder */
    assert_int_equal(qnt_type_raise(ENG_Q4_0, 576), ENG_Q8_0);
    assert_int_equal(qnt_type_raise(ENG_Q4_0, 1536), ENG_Q6_K);
    assert_int_equal(qnt_type_raise(ENG_Q6_K, 1536), ENG_Q8_0);
    assert_int_equal(qnt_type_raise(ENG_Q8_0, 1536), ENG_F16);
    assert_int_equal(qnt_type_raise(ENG_F16, 1536), -1);
    assert_true(fabs(qnt_type_bpw(ENG_Q4_K) - 4.5) < 1e-9);
}

/* ------------------------------------------------------------------ recipes ---- */

/* A GGUF header (with zero-filled data) of a llama-like model: n_layer layers of width
 * d and ffn width ff, tied or not. */
static eng_gguf *fake_model(const char *arch, int n_layer, uint64_t d, uint64_t ff, bool tied,
                            void **img)
{
    eng_gguf_writer *w = NULL;
    assert_int_equal(eng_gguf_writer_new(&w), 0);
    char key[64];
    assert_int_equal(eng_gguf_set_str(w, "general.architecture", arch), 0);
    snprintf(key, sizeof key, "%s.block_count", arch);
    assert_int_equal(eng_gguf_set_u32(w, key, (uint32_t)n_layer), 0);
    size_t cap = 64 << 20;
    void *zeros = calloc(1, cap);
    const struct {
        const char *name;
        uint64_t in, out;
    } per[] = {{"attn_q", d, d},      {"attn_k", d, d / 2}, {"attn_v", d, d / 2},
               {"attn_output", d, d}, {"ffn_gate", d, ff},  {"ffn_up", d, ff},
               {"ffn_down", ff, d}};
    uint64_t dims[2] = {d, 100};
    assert_int_equal(eng_gguf_add_tensor(w, "token_embd.weight", ENG_F16, 2, dims, zeros, d * 200),
                     0);
    for (int l = 0; l < n_layer; l++) {
        char name[64];
        uint64_t nd[1] = {d};
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        assert_int_equal(eng_gguf_add_tensor(w, name, ENG_F32, 1, nd, zeros, d * 4), 0);
        for (size_t k = 0; k < sizeof per / sizeof per[0]; k++) {
            uint64_t td[2] = {per[k].in, per[k].out};
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, per[k].name);
            assert_int_equal(
                eng_gguf_add_tensor(w, name, ENG_F16, 2, td, zeros, per[k].in * per[k].out * 2), 0);
        }
    }
    if (!tied)
        assert_int_equal(eng_gguf_add_tensor(w, "output.weight", ENG_F16, 2, dims, zeros, d * 200),
                         0);
    size_t len = 0;
    assert_int_equal(eng_gguf_write_mem(w, img, &len), 0);
    eng_gguf_writer_free(w);
    free(zeros);
    eng_gguf *g = NULL;
    assert_int_equal(eng_gguf_open_mem(&g, *img, len), 0);
    return g;
}

static int type_of(const qnt_plan *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (!strcmp(p->t[i].name, name)) return p->t[i].type;
    fail_msg("no tensor %s", name);
    return -1;
}

static void test_recipes(void **state)
{
    (void)state;
    void *img = NULL;
    /* 576-wide rows (SmolLM2): K types fall back; the tied embedding is the output */
    eng_gguf *g = fake_model("llama", 30, 576, 1536, true, &img);
    qnt_target t;
    qnt_plan p;
    assert_int_equal(qnt_target_parse("Q4_K_M", &t), 0);
    assert_int_equal(qnt_plan_make(&p, g, &t, NULL, 0), 0);
    assert_int_equal(type_of(&p, "token_embd.weight"), ENG_Q8_0);   /* Q6_K, 576 wide */
    assert_int_equal(type_of(&p, "blk.0.attn_q.weight"), ENG_Q5_0); /* Q4_K fallback */
    assert_int_equal(type_of(&p, "blk.0.ffn_down.weight"), ENG_Q6_K);
    assert_int_equal(type_of(&p, "blk.4.ffn_down.weight"), ENG_Q4_K);
    assert_int_equal(type_of(&p, "blk.5.ffn_down.weight"), ENG_Q6_K);
    assert_int_equal(type_of(&p, "blk.29.ffn_down.weight"), ENG_Q6_K);
    assert_int_equal(type_of(&p, "blk.4.attn_v.weight"), ENG_Q5_0);
    assert_int_equal(type_of(&p, "blk.5.attn_v.weight"), ENG_Q8_0);
    assert_int_equal(type_of(&p, "blk.0.attn_norm.weight"), ENG_F32);
    assert_false(p.input_quantized);
    qnt_plan_clear(&p);
    /* overrides: the last match wins; patterns are anchored */
    qnt_override ov[] = {{"blk\\.[0-9]+\\.attn_.*", ENG_Q8_0},
                         {"blk\\.1\\.attn_q\\.weight", ENG_F16}};
    assert_int_equal(qnt_target_parse("Q4_0", &t), 0);
    assert_int_equal(qnt_plan_make(&p, g, &t, ov, 2), 0);
    assert_int_equal(type_of(&p, "blk.0.attn_q.weight"), ENG_Q8_0);
    assert_int_equal(type_of(&p, "blk.1.attn_q.weight"), ENG_F16);
    assert_int_equal(type_of(&p, "blk.1.ffn_up.weight"), ENG_Q4_0);
    qnt_plan_clear(&p);
    qnt_override none[] = {{"attn_q", ENG_Q8_0}}; /* anchored: matches nothing */
    assert_int_equal(qnt_plan_make(&p, g, &t, none, 1), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "matches no weight matrix"));
    qnt_override bad[] = {{"blk.(", ENG_Q8_0}};
    assert_int_equal(qnt_plan_make(&p, g, &t, bad, 1), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "not a valid pattern"));
    eng_gguf_free(g);
    free(img);

    /* 256-multiple rows, untied: K types stay; output at Q6_K; embedding at the base */
    g = fake_model("qwen2", 8, 512, 1024, false, &img);
    assert_int_equal(qnt_target_parse("Q4_K", &t), 0);
    assert_int_equal(qnt_plan_make(&p, g, &t, NULL, 0), 0);
    assert_int_equal(type_of(&p, "output.weight"), ENG_Q6_K);
    assert_int_equal(type_of(&p, "token_embd.weight"), ENG_Q4_K);
    assert_int_equal(type_of(&p, "blk.3.attn_v.weight"), ENG_Q4_K);
    qnt_plan_clear(&p);
    assert_int_equal(qnt_target_parse("Q8_0", &t), 0);
    assert_int_equal(qnt_plan_make(&p, g, &t, NULL, 0), 0);
    assert_int_equal(type_of(&p, "output.weight"), ENG_Q8_0);
    qnt_plan_clear(&p);
    eng_gguf_free(g);
    free(img);

    g = fake_model("gpt2", 2, 256, 512, true, &img);
    assert_int_equal(qnt_plan_make(&p, g, &t, NULL, 0), MLV_EUNSUPPORTED);
    assert_non_null(strstr(core_err_last(), "gpt2"));
    eng_gguf_free(g);
    free(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid_matches_bytes_and_dequantizer),
        cmocka_unit_test(test_importance_lowers_weighted_error),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_recipes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
