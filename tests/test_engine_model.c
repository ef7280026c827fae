/* tests/test_engine_model.c: the forward pass, generation, sampling and evaluation
 * (engine/model.c, backend_cpu.c, generate.c, sample.c, eval.c) against independent
 * references:
 *   - tiny qwen2 (QKV bias, neox RoPE, tied output) and llama (F16, untied) models made
 *     by tests/ref/tiny_models.py, against tests/ref/np_forward.py (float64 numpy);
 *   - the real SmolLM2 (Q4_1, and F16 / Q8_0 files our converter writes from it)
 *     against golden outputs of llama.cpp (tests/ref/make_llama_golden.py): top-1
 *     agreement and logit differences over 1,100 tokens, greedy continuations token for
 *     token, perplexity and accuracy of the evaluation corpus, mc_accuracy;
 *   - the reference kernels against the fast ones on the same model;
 *   - sampling: reproducible with a seed, and each filter's effect.
 * Under sanitizers (slow) the long SmolLM2 runs are shortened. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/engine.h"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

static char tmpdir[4096];

static int setup_tmp(void **state)
{
    (void)state;
    make_temp_dir(tmpdir, sizeof tmpdir, "engine-model");
    return 0;
}

static int teardown_tmp(void **state)
{
    (void)state;
    core_rm_rf(tmpdir);
    return 0;
}

static const char *model_path(void)
{
    const char *p = getenv("MLV_MODEL_GGUF");
    struct stat st;
    return p && stat(p, &st) == 0 ? p : NULL;
}

/* Runs a command (the test references are Python); fails the test when it fails. */
static void sh(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    assert_int_equal(rc, 0);
}

static const char *py(void)
{
    static char p[4096];
    snprintf(p, sizeof p, "%s/bin/python", getenv("MLV_VENV") ? getenv("MLV_VENV") : ".venv");
    return p;
}

static const char *src(void)
{
    return getenv("MLV_SOURCE_DIR") ? getenv("MLV_SOURCE_DIR") : ".";
}

/* A C-order 2-D float32/float64 .npy file as doubles (the caller frees). */
static double *read_npy(const char *path, size_t *rows, size_t *cols)
{
    size_t n;
    unsigned char *b = read_all(path, &n);
    assert_true(n > 10 && !memcmp(b, "\x93NUMPY", 6));
    size_t hl = b[8] | (size_t)b[9] << 8, off = 10;
    if (b[6] >= 2) {
        hl = b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        off = 12;
    }
    char *h = strndup((char *)b + off, hl);
    bool f8 = strstr(h, "'<f8'") != NULL;
    assert_true(f8 || strstr(h, "'<f4'"));
    assert_null(strstr(h, "'fortran_order': True"));
    char *sh_ = strstr(h, "'shape': (");
    assert_non_null(sh_);
    unsigned long r = 0, c = 0;
    assert_int_equal(sscanf(sh_, "'shape': (%lu, %lu)", &r, &c), 2);
    *rows = r;
    *cols = c;
    double *out = malloc(sizeof *out * r * c);
    const unsigned char *d = b + off + hl;
    assert_true(n >= off + hl + r * c * (f8 ? 8 : 4));
    for (size_t i = 0; i < r * c; i++) {
        if (f8) {
            memcpy(&out[i], d + 8 * i, 8);
        } else {
            float f;
            memcpy(&f, d + 4 * i, 4);
            out[i] = f;
        }
    }
    free(h);
    free(b);
    return out;
}

static eng_model *open_model(const char *path, int backend, int threads)
{
    eng_load_opts o = {threads, backend};
    eng_model *m = NULL;
    int rc = eng_model_open_file(&m, path, &o);
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);
    return m;
}

/* All logits of `ids` in one context. The caller frees. */
static float *all_logits(eng_model *m, const int32_t *ids, size_t n)
{
    eng_ctx *c;
    uint32_t nv = eng_model_hparams(m)->n_vocab;
    assert_int_equal(eng_ctx_new(&c, m, (uint32_t)n), 0);
    float *lg = malloc(sizeof *lg * n * nv);
    assert_non_null(lg);
    assert_int_equal(eng_decode(c, ids, n, lg, true), 0);
    eng_ctx_free(c);
    return lg;
}

/* ------------------------------------------------------------ tiny models ---- */

static void check_tiny(const char *arch)
{
    char gguf[4200], npy[4200];
    snprintf(gguf, sizeof gguf, "%s/tiny-%s.gguf", tmpdir, arch);
    snprintf(npy, sizeof npy, "%s/tiny-%s.npy", tmpdir, arch);
    sh("%s %s/tests/ref/tiny_models.py %s %s", py(), src(), arch, gguf);
    /* a sequence longer than one batch would be nice, but the tiny context is short */
    int32_t ids[40];
    char list[512] = "";
    for (int i = 0; i < 40; i++) {
        ids[i] = (int32_t)((i * 37 + 11) % 250);
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? "," : "", ids[i]);
    }
    sh("%s %s/tests/ref/np_forward.py %s --tokens %s --out %s", py(), src(), gguf, list, npy);
    size_t rows, cols;
    double *ref = read_npy(npy, &rows, &cols);
    assert_int_equal(rows, 40);
    for (int backend = ENG_BACKEND_REF; backend <= ENG_BACKEND_CPU; backend++) {
        eng_model *m = open_model(gguf, backend, 2);
        const eng_hparams *hp = eng_model_hparams(m);
        assert_int_equal(hp->n_vocab, cols);
        assert_string_equal(hp->arch, arch);
        float *lg = all_logits(m, ids, 40);
        double max_diff = 0, max_abs = 0;
        for (size_t i = 0; i < rows * cols; i++) {
            max_diff = fmax(max_diff, fabs(lg[i] - ref[i]));
            max_abs = fmax(max_abs, fabs(ref[i]));
        }
        /* Activations are quantized as llama.cpp does (F32 weights: none; F16: rounded to
         * half) and the KV cache is F16, so small differences remain. */
        printf("tiny %s (%s): max |logit - numpy| = %.5f (max |logit| %.3f)\n", arch,
               eng_model_backend_name(m), max_diff, max_abs);
        assert_true(max_diff < 0.02 * fmax(1.0, max_abs));
        /* one token at a time through the KV cache gives the same logits */
        eng_ctx *c;
        assert_int_equal(eng_ctx_new(&c, m, 64), 0);
        float *one = malloc(sizeof *one * cols);
        double inc_diff = 0;
        for (int t = 0; t < 40; t++) {
            assert_int_equal(eng_decode(c, &ids[t], 1, one, false), 0);
            for (size_t v = 0; v < cols; v++)
                inc_diff = fmax(inc_diff, fabs(one[v] - lg[t * cols + v]));
        }
        /* the same up to summation order, and the F16 rounding of K and V that a last-bit
         * difference can flip */
        printf("  one token at a time vs all at once: max difference %g\n", inc_diff);
        assert_true(inc_diff < 1e-3 * fmax(1.0, max_abs));
        free(one);
        eng_ctx_free(c);
        free(lg);
        eng_model_free(m);
    }
    free(ref);
}

static void test_tiny_qwen2(void **state)
{
    (void)state;
    check_tiny("qwen2");
}

static void test_tiny_llama(void **state)
{
    (void)state;
    check_tiny("llama");
}

/* ----------------------------------------------------------- llama.cpp goldens ---- */

static json_t *load_golden(const char *tag)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/golden/llama_%s.json", src(), tag);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j) fprintf(stderr, "%s: %s\n", path, e.text);
    assert_non_null(j);
    return j;
}

/* The SmolLM2 file for a tag: the cached Q4_1, or our converter's F16 / Q8_0 of it. */
static const char *variant(const char *tag)
{
    static char path[4200];
    if (!strcmp(tag, "q4_1")) return model_path();
    snprintf(path, sizeof path, "%s/smollm2-%s.gguf", tmpdir, tag);
    struct stat st;
    if (stat(path, &st) != 0)
        assert_int_equal(
            eng_convert_gguf(model_path(), !strcmp(tag, "f16") ? ENG_F16 : ENG_Q8_0, path), 0);
    return path;
}

static void check_golden(const char *tag)
{
    if (!model_path()) skip();
    json_t *g = load_golden(tag);
    eng_model *m = open_model(variant(tag), ENG_BACKEND_CPU, 0);
    const uint32_t nv = eng_model_hparams(m)->n_vocab;

    /* 1. logits over the corpus prefix: top-1 agreement and differences at llama.cpp's
     *    top-8 ids */
    json_t *lj = json_object_get(g, "logits"), *toks = json_object_get(lj, "tokens"),
           *top = json_object_get(lj, "top");
    size_t n = json_array_size(toks);
    if (SANITIZED && n > 96) n = 96;
    assert_true(n >= 96);
    int32_t *ids = malloc(sizeof *ids * n);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(toks, i));
    float *lg = all_logits(m, ids, n);
    size_t agree = 0, in_top8 = 0;
    double max_d = 0, sum_d = 0;
    size_t nd = 0;
    for (size_t i = 0; i < n; i++) {
        const float *row = lg + i * nv;
        int32_t best = 0;
        for (uint32_t v = 1; v < nv; v++)
            if (row[v] > row[best]) best = (int32_t)v;
        json_t *ti = json_array_get(top, i), *pair;
        size_t k;
        agree += best == json_integer_value(json_array_get(json_array_get(ti, 0), 0));
        json_array_foreach(ti, k, pair)
        {
            int64_t id = json_integer_value(json_array_get(pair, 0));
            in_top8 += id == best;
            double d = fabs(row[id] - json_number_value(json_array_get(pair, 1)));
            max_d = fmax(max_d, d);
            sum_d += d;
            nd++;
        }
    }
    printf("%s: top-1 agreement with llama.cpp %zu/%zu (%.2f%%), our top-1 in its top-8 %.2f%%, "
           "logit difference mean %.4f max %.4f\n",
           tag, agree, n, 100.0 * agree / n, 100.0 * in_top8 / n, sum_d / nd, max_d);
    /* With F16 weights both engines round activations to half precision and agree to a
     * few hundredths of a logit. With Q8 activations (Q4_1, Q8_0 files) a last-bit
     * difference anywhere moves a value by a quantization step, and SmolLM2's outlier
     * channels make steps large: llama.cpp itself, with flash attention on and off,
     * agrees on 96.0% of the top-1 tokens of this text (mean difference 0.18); ours
     * agrees on 94.8-96% depending on the kernels' summation order. Ours is held to
     * that noise floor (93%, with margin for other CPUs' kernel sets), not to 99%. */
    const bool q8act = strcmp(tag, "f16") != 0;
    /* (under sanitizers only the first 96 positions run: too few for a rate) */
    if (!SANITIZED) assert_true(agree * 100 >= n * (q8act ? 93 : 99));
    assert_true(in_top8 * 1000 >= n * 995);
    assert_true(sum_d / nd < (q8act ? (SANITIZED ? 0.3 : 0.25) : 0.03));
    assert_true(max_d < (q8act ? 2.5 : 0.3));
    free(lg);
    free(ids);

    /* 2. greedy continuations, token for token */
    json_t *gr = json_object_get(g, "greedy"), *c1;
    size_t gi, full = 0;
    json_array_foreach(gr, gi, c1)
    {
        if (SANITIZED && gi > 0) break;
        json_t *pids = json_object_get(c1, "prompt_ids"), *want = json_object_get(c1, "ids");
        size_t np = json_array_size(pids), nw = json_array_size(want);
        /* llama.cpp's list ends with the end-of-generation token when it stopped there;
         * ours stops before it (and says so) */
        const bool eog = !strcmp(json_string_value(json_object_get(c1, "stop")), "eog");
        if (eog) nw--;
        int32_t *p = malloc(sizeof *p * np);
        for (size_t i = 0; i < np; i++)
            p[i] = (int32_t)json_integer_value(json_array_get(pids, i));
        /* our tokenizer agrees with llama.cpp's on the prompt */
        const char *ptext = json_string_value(json_object_get(c1, "prompt"));
        int32_t *mine;
        size_t nm;
        assert_int_equal(
            eng_tokenize(eng_model_tokenizer(m), ptext, strlen(ptext), true, true, &mine, &nm), 0);
        assert_int_equal(nm, np);
        assert_memory_equal(mine, p, np * sizeof *p);
        free(mine);
        eng_ctx *c;
        assert_int_equal(eng_ctx_new(&c, m, (uint32_t)(np + nw + 2)), 0);
        eng_sampler_params sp = {0, 0, 1, 0, 1, 64, 0};
        eng_gen_result r;
        assert_int_equal(eng_generate(c, p, np, (uint32_t)nw + eog, &sp, NULL, NULL, &r), 0);
        size_t same = 0;
        while (same < r.n_gen && same < nw &&
               r.ids[same] == json_integer_value(json_array_get(want, same)))
            same++;
        /* Where we part from llama.cpp, its top two tokens must be a near tie. */
        double margin =
            same < nw ? json_number_value(json_array_get(json_object_get(c1, "margins"), same)) : 0;
        printf("%s greedy %zu: %zu/%zu tokens as llama.cpp%s%.3f\n", tag, gi, same, nw,
               same < nw ? ", then a near tie: llama.cpp's top-2 margin " : "", margin);
        if (same == nw && eog) assert_string_equal(r.stop_reason, "eog");
        full += same == nw || same >= 32;
        assert_true(same == nw || same >= 32 || margin < (q8act ? 0.6 : 0.05));
        eng_gen_result_clear(&r);
        eng_ctx_free(c);
        free(p);
    }
    /* several prompts agree for 32 tokens or more (all of them with F16 weights) */
    if (!SANITIZED) assert_true(full >= (q8act ? 2 : json_array_size(gr)));

    /* 3. evaluation on the corpus (release builds: it is 20,000+ tokens) */
    json_t *ev = json_object_get(g, "eval");
    if (!SANITIZED && ev && !strcmp(tag, "q4_1")) { /* 22,000 tokens: the shipped file only */
        char corpus[4200];
        snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
        struct stat st;
        if (stat(corpus, &st) != 0) sh("%s %s/tests/ref/eval_corpus.py %s", py(), src(), corpus);
        size_t len;
        unsigned char *text = read_all(corpus, &len);
        eng_eval_opts eo = {(uint32_t)json_integer_value(json_object_get(ev, "ctx")), NULL, NULL,
                            NULL};
        eng_eval_result r;
        assert_int_equal(eng_evaluate(m, ENG_METRIC_PERPLEXITY, (char *)text, len, &eo, &r), 0);
        double ppl = json_number_value(json_object_get(ev, "perplexity"));
        double acc = json_number_value(json_object_get(ev, "accuracy"));
        printf(
            "%s eval: perplexity %.4f (llama.cpp %.4f, %+.3f%%), accuracy %.4f (llama.cpp %.4f), "
            "%llu tokens scored (llama.cpp %lld), %.1f s\n",
            tag, r.perplexity, ppl, 100 * (r.perplexity / ppl - 1), r.accuracy, acc,
            (unsigned long long)r.n_samples,
            (long long)json_integer_value(json_object_get(ev, "n_scored")), r.seconds);
        assert_int_equal(r.n_samples, json_integer_value(json_object_get(ev, "n_scored")));
        assert_true(fabs(r.perplexity / ppl - 1) < 0.01);
        assert_true(fabs(r.accuracy - acc) < 0.01);
        assert_true(r.ci_low < r.value && r.value < r.ci_high);
        free(text);
    }
    /* 4. multiple choice */
    json_t *mc = json_object_get(g, "mc");
    if (!SANITIZED && mc) {
        char path[4200];
        snprintf(path, sizeof path, "%s/tests/data/mc_general.jsonl", src());
        size_t len;
        unsigned char *text = read_all(path, &len);
        eng_eval_result r;
        assert_int_equal(eng_evaluate(m, ENG_METRIC_MC_ACCURACY, (char *)text, len, NULL, &r), 0);
        double acc = json_number_value(json_object_get(mc, "accuracy"));
        printf("%s mc_accuracy %.4f over %llu questions (llama.cpp %.4f)\n", tag, r.value,
               (unsigned long long)r.n_samples, acc);
        assert_true(r.n_samples >= 50);
        assert_true(fabs(r.value - acc) <= 2.0 / r.n_samples + 1e-9);
        free(text);
    }
    eng_model_free(m);
    json_decref(g);
}

static void test_golden_q4_1(void **state)
{
    (void)state;
    check_golden("q4_1");
}

static void test_golden_f16(void **state)
{
    (void)state;
    check_golden("f16");
}

static void test_golden_q8_0(void **state)
{
    (void)state;
    check_golden("q8_0");
}

/* The reference kernels and the fast ones agree on the real model. On the F16 file:
 * with Q8 activations (Q4_1, Q8_0 files) a last-bit difference in a float sum can move
 * one activation by a whole quantization step (SmolLM2 has outlier channels, so a step
 * can be most of a small value), and after 30 layers logits differ by ~0.1 on average;
 * llama.cpp with and without flash attention differs from itself the same way. Half
 * precision rounds each value to its own 11 bits, so the two stay close. The kernels
 * themselves are compared one by one in test_engine_kernels.c. */
static void test_ref_vs_fast(void **state)
{
    (void)state;
    if (!model_path()) skip();
    const char *f16 = variant("f16");
    eng_model *a = open_model(f16, ENG_BACKEND_REF, 2);
    eng_model *b = open_model(f16, ENG_BACKEND_CPU, 2);
    enum { N = SANITIZED ? 8 : 40 };
    int32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = 1000 + 97 * i;
    float *la = all_logits(a, ids, N), *lb = all_logits(b, ids, N);
    uint32_t nv = eng_model_hparams(a)->n_vocab;
    double md = 0, sum = 0;
    for (size_t i = 0; i < N * (size_t)nv; i++) {
        md = fmax(md, fabs(la[i] - lb[i]));
        sum += fabs(la[i] - lb[i]);
    }
    sum /= N * (double)nv;
    printf("F16 ref (%s) vs fast (%s): logit difference mean %.6f max %.6f\n",
           eng_model_backend_name(a), eng_model_backend_name(b), sum, md);
    assert_true(sum < 0.02); /* logits here have a standard deviation of ~6.5 */
    assert_true(md < 0.15);
    free(la);
    free(lb);
    eng_model_free(a);
    eng_model_free(b);
}

/* ----------------------------------------------------------------- sampling ---- */

static void test_sampling(void **state)
{
    (void)state;
    enum { NV = 1000 };
    float base[NV], lg[NV];
    for (int i = 0; i < NV; i++)
        base[i] = (float)sin(i * 0.37) * 3.0f;
    base[7] = 9.0f; /* the favourite */
    base[3] = 8.5f;
    /* greedy */
    eng_sampler *s;
    eng_sampler_params g = {0, 0, 1, 0, 1, 64, 1};
    assert_int_equal(eng_sampler_new(&s, &g, NV), 0);
    memcpy(lg, base, sizeof lg);
    assert_int_equal(eng_sample(s, lg, NULL, 0), 7);
    /* repetition penalty on 7 makes 3 the argmax */
    eng_sampler_free(s);
    g.repeat_penalty = 1.5f;
    assert_int_equal(eng_sampler_new(&s, &g, NV), 0);
    int32_t hist[] = {7, 7};
    memcpy(lg, base, sizeof lg);
    assert_int_equal(eng_sample(s, lg, hist, 2), 3);
    eng_sampler_free(s);
    /* top-k 2: only 7 and 3 ever come out; same seed -> same sequence */
    eng_sampler_params p = {1.0f, 2, 1.0f, 0, 1, 64, 42};
    int32_t seq1[200], seq2[200];
    for (int run = 0; run < 2; run++) {
        assert_int_equal(eng_sampler_new(&s, &p, NV), 0);
        for (int i = 0; i < 200; i++) {
            memcpy(lg, base, sizeof lg);
            (run ? seq2 : seq1)[i] = eng_sample(s, lg, NULL, 0);
        }
        eng_sampler_free(s);
    }
    int n7 = 0;
    for (int i = 0; i < 200; i++) {
        assert_true(seq1[i] == 7 || seq1[i] == 3);
        n7 += seq1[i] == 7;
    }
    assert_memory_equal(seq1, seq2, sizeof seq1);
    /* p(7) = 1/(1+e^-0.5) = 0.62: 200 draws land well inside 0.45 .. 0.80 */
    assert_true(n7 > 90 && n7 < 160);
    /* min-p 0.5 with top-k off: 3 has p(3)/p(7) = 0.61 > 0.5, the rest far below */
    eng_sampler_params mp = {1.0f, 0, 1.0f, 0.5f, 1, 64, 7};
    assert_int_equal(eng_sampler_new(&s, &mp, NV), 0);
    for (int i = 0; i < 100; i++) {
        memcpy(lg, base, sizeof lg);
        int32_t t = eng_sample(s, lg, NULL, 0);
        assert_true(t == 7 || t == 3);
    }
    eng_sampler_free(s);
    /* top-p 0.4: only the favourite (p(7) = 0.45: 3 has 0.27, the 998 others 0.27) */
    eng_sampler_params tp = {1.0f, 0, 0.4f, 0, 1, 64, 9};
    assert_int_equal(eng_sampler_new(&s, &tp, NV), 0);
    for (int i = 0; i < 50; i++) {
        memcpy(lg, base, sizeof lg);
        assert_int_equal(eng_sample(s, lg, NULL, 0), 7);
    }
    eng_sampler_free(s);
    /* a very high temperature spreads the picks */
    eng_sampler_params ht = {50.0f, 0, 1.0f, 0, 1, 64, 3};
    assert_int_equal(eng_sampler_new(&s, &ht, NV), 0);
    int distinct = 0;
    static bool seen[NV];
    for (int i = 0; i < 300; i++) {
        memcpy(lg, base, sizeof lg);
        int32_t t = eng_sample(s, lg, NULL, 0);
        if (!seen[t]) distinct++, seen[t] = true;
    }
    assert_true(distinct > 100);
    eng_sampler_free(s);
    /* refusals */
    eng_sampler_params bad = {1.0f, 0, -1.0f, 0, 1, 64, 0};
    assert_int_equal(eng_sampler_new(&s, &bad, NV), MLV_EINVAL);
}

/* ------------------------------------------------------------------ refusals ---- */

/* The sampler sorts a whole vocabulary's candidates with a radix sort and a top-k few with
 * qsort: both must give the same order (logit descending, lower id first on ties, -0 equal
 * to +0), so the same seed draws the same tokens either way. top_k = N - 1 drops only a
 * token too unlikely to matter and takes the qsort path; top_k off takes the radix one. */
static void test_sampling_sort_paths(void **state)
{
    (void)state;
    enum { N = 5000 };
    float *base = malloc(sizeof *base * N), *lg = malloc(sizeof *lg * N);
    assert_non_null(base);
    assert_non_null(lg);
    uint64_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int r = (int)(x >> 33) % 10;
        /* mostly +0 and -0 (which must tie), then tied and distinct values */
        base[i] = r < 4    ? 0.0f
                  : r < 8  ? -0.0f
                  : r == 8 ? -1.0f
                           : (float)((x >> 20) % 1000) / 500.0f;
    }
    base[17] = -36.0f; /* a candidate (within 40 nats) too unlikely to matter (~e^-38) */
    for (int mode = 0; mode < 3; mode++) {
        eng_sampler_params pa = {1.0f, 0, 1.0f, 0, 1, 64, 99}, pb = pa;
        pb.top_k = N - 1;
        if (mode == 1) pa.top_p = pb.top_p = 0.9f;
        if (mode == 2) pa.min_p = pb.min_p = 0.05f;
        eng_sampler *a, *b;
        assert_int_equal(eng_sampler_new(&a, &pa, N), 0);
        assert_int_equal(eng_sampler_new(&b, &pb, N), 0);
        for (int k = 0; k < 200; k++) {
            memcpy(lg, base, sizeof *lg * N);
            int32_t ta = eng_sample(a, lg, NULL, 0);
            memcpy(lg, base, sizeof *lg * N);
            assert_int_equal(eng_sample(b, lg, NULL, 0), ta);
        }
        eng_sampler_free(a);
        eng_sampler_free(b);
    }
    free(base);
    free(lg);
}

static void test_refusals(void **state)
{
    (void)state;
    char path[4200];
    snprintf(path, sizeof path, "%s/tiny-qwen2.gguf", tmpdir);
    struct stat st;
    if (stat(path, &st) != 0) sh("%s %s/tests/ref/tiny_models.py qwen2 %s", py(), src(), path);
    eng_model *m = open_model(path, ENG_BACKEND_CPU, 1);
    eng_ctx *c;
    assert_int_equal(eng_ctx_new(&c, m, 8), 0);
    int32_t bad = (int32_t)eng_model_hparams(m)->n_vocab;
    assert_int_equal(eng_decode(c, &bad, 1, NULL, false), MLV_EINVAL);
    int32_t ids[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    assert_int_equal(eng_decode(c, ids, 9, NULL, false), MLV_EINVAL); /* context full */
    assert_int_equal(eng_decode(c, ids, 8, NULL, false), 0);
    assert_int_equal(eng_ctx_pos(c), 8);
    eng_ctx_free(c);
    /* evaluation: a text shorter than one window, bad JSONL, unknown metric */
    eng_eval_result r;
    eng_eval_opts eo = {64, NULL, NULL, NULL};
    assert_int_equal(eng_evaluate(m, ENG_METRIC_PERPLEXITY, "ab", 2, &eo, &r), MLV_EINVAL);
    const char *jl = "{\"context\": \"a\", \"choices\": [\" b\"], \"answer\": 0}\n";
    assert_int_equal(eng_evaluate(m, ENG_METRIC_MC_ACCURACY, jl, strlen(jl), &eo, &r), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "line 1"));
    assert_int_equal(eng_evaluate(m, ENG_METRIC_KLD, "abc", 3, &eo, &r), MLV_EINVAL);
    assert_int_equal(eng_evaluate(m, 99, "abc", 3, &eo, &r), MLV_EINVAL);
    eng_model_free(m);
    /* not a model: a GGUF with an unsupported architecture */
    char other[4200];
    snprintf(other, sizeof other, "%s/gpt2.gguf", tmpdir);
    sh("%s -c \"import gguf,numpy as np; w=gguf.GGUFWriter('%s','gpt2'); "
       "w.add_tensor('token_embd.weight', np.zeros((4,8),np.float32)); w.write_header_to_file(); "
       "w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()\"",
       py(), other);
    eng_model *x = NULL;
    eng_load_opts o = {1, ENG_BACKEND_CPU};
    assert_int_equal(eng_model_open_file(&x, other, &o), MLV_EUNSUPPORTED);
    assert_non_null(strstr(core_err_last(), "gpt2"));
    assert_null(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sampling),    cmocka_unit_test(test_sampling_sort_paths),
        cmocka_unit_test(test_tiny_qwen2),  cmocka_unit_test(test_tiny_llama),
        cmocka_unit_test(test_refusals),    cmocka_unit_test(test_ref_vs_fast),
        cmocka_unit_test(test_golden_q4_1), cmocka_unit_test(test_golden_f16),
        cmocka_unit_test(test_golden_q8_0),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
