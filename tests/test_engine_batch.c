/* tests/test_engine_batch.c: batched decoding (eng_decode_batch in engine/model.c) and
 * the continuous-batching scheduler (engine/batch.c), against independent references:
 *   - eng_decode_batch's logits against eng_decode's on the same sequences one at a
 *     time (tiny qwen2/llama models from tests/ref/tiny_models.py, and the real SmolLM2
 *     Q4_1 when MLV_MODEL_GGUF names it), with the reference and the fast kernels;
 *   - requests through the batcher, eight at once from eight threads, against
 *     eng_generate alone with the same prompt and sampler (greedy and seeded sampling);
 *   - the batcher's limits and stops: a full queue, n_predict, the callback, prompts
 *     that do not fit, and freeing it while requests run and wait (MLV_EBUSY);
 *   - a prompt prefilled over several steps gives eng_generate's tokens exactly;
 *   - its statistics show sequences really decoded together (mean batch > 1).
 * A throughput printout compares 1 and 8 concurrent streams (no assertion on time).
 * Under sanitizers (slow) the runs are shortened. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/engine.h"

static bool sanitized(void)
{
    const char *s = getenv("MLV_SANITIZED");
    return s && *s == '1';
}

static char tmpdir[4096];

static int setup_tmp(void **state)
{
    (void)state;
    make_temp_dir(tmpdir, sizeof tmpdir, "engine-batch");
    return 0;
}

static int teardown_tmp(void **state)
{
    (void)state;
    core_rm_rf(tmpdir);
    return 0;
}

static const char *smollm(void)
{
    const char *p = getenv("MLV_MODEL_GGUF");
    struct stat st;
    return p && stat(p, &st) == 0 ? p : NULL;
}

/* tests/ref/tiny_models.py's model of that architecture (written once per run). */
static const char *tiny(const char *arch)
{
    static char path[2][4200];
    char *p = path[!strcmp(arch, "llama")];
    snprintf(p, sizeof path[0], "%s/tiny-%s.gguf", tmpdir, arch);
    struct stat st;
    if (stat(p, &st) == 0) return p;
    char cmd[9000];
    const char *venv = getenv("MLV_VENV") ? getenv("MLV_VENV") : ".venv";
    const char *src = getenv("MLV_SOURCE_DIR") ? getenv("MLV_SOURCE_DIR") : ".";
    snprintf(cmd, sizeof cmd, "%s/bin/python %s/tests/ref/tiny_models.py %s %s", venv, src, arch,
             p);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    assert_int_equal(rc, 0);
    return p;
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

/* Deterministic token ids of a sequence: n ids below n_vocab, different per seed. */
static void some_ids(int32_t *ids, size_t n, uint32_t n_vocab, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)(rng_next(&seed) % (n_vocab > 4000 ? 4000 : n_vocab));
}

static int32_t argmax(const float *x, uint32_t n)
{
    int32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int32_t)i;
    return best;
}

/* ------------------------------------------------------- eng_decode_batch ---- */

typedef struct diff {
    double max, mean; /* |batched - one at a time| over every logit */
    double max_abs;   /* the largest |logit| */
} diff;

/* n sequences prefilled with prompts of different lengths, then `steps` tokens each
 * decoded together (eng_decode_batch) and one at a time (eng_decode) on twin contexts;
 * both follow the one-at-a-time greedy choice. */
static diff batch_vs_single(eng_model *m, int n, int steps)
{
    const uint32_t nv = eng_model_hparams(m)->n_vocab;
    eng_ctx **a = calloc((size_t)n, sizeof *a), **b = calloc((size_t)n, sizeof *b);
    int32_t *next = malloc(sizeof *next * (size_t)n);
    float *la = malloc(sizeof *la * (size_t)n * nv), *lb = malloc(sizeof *lb * nv);
    assert_true(a && b && next && la && lb);
    for (int i = 0; i < n; i++) {
        int32_t ids[64];
        const size_t len = 3 + (size_t)(i * 7) % 40; /* 3 .. 45 positions */
        some_ids(ids, len, nv, 100 + (uint64_t)i);
        assert_int_equal(eng_ctx_new(&a[i], m, 64), 0);
        assert_int_equal(eng_ctx_new(&b[i], m, 64), 0);
        assert_int_equal(eng_decode(a[i], ids, len - 1, NULL, false), 0);
        assert_int_equal(eng_decode(b[i], ids, len - 1, NULL, false), 0);
        next[i] = ids[len - 1];
    }
    diff d = {0};
    for (int s = 0; s < steps; s++) {
        assert_int_equal(eng_decode_batch(a, next, (size_t)n, la), 0);
        for (int i = 0; i < n; i++) {
            const uint32_t pos = eng_ctx_pos(b[i]);
            assert_int_equal(eng_decode(b[i], &next[i], 1, lb, false), 0);
            assert_int_equal(eng_ctx_pos(a[i]), pos + 1);
            const float *row = la + (size_t)i * nv;
            for (uint32_t v = 0; v < nv; v++) {
                const double e = fabs(row[v] - lb[v]);
                d.max = fmax(d.max, e);
                d.mean += e;
                d.max_abs = fmax(d.max_abs, fabs(lb[v]));
            }
            next[i] = argmax(lb, nv);
        }
    }
    d.mean /= (double)steps * n * nv;
    for (int i = 0; i < n; i++) {
        eng_ctx_free(a[i]);
        eng_ctx_free(b[i]);
    }
    free(a);
    free(b);
    free(next);
    free(la);
    free(lb);
    return d;
}

/* tol: the largest difference allowed, relative to max(1, the largest |logit|), and
 * tol_mean the mean one's. */
static void check_decode_batch(const char *path, int backend, double tol, double tol_mean)
{
    eng_model *m = open_model(path, backend, 2);
    const int steps = sanitized() ? 2 : 4;
    const int ns[] = {1, 3, 8};
    for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
        diff d = batch_vs_single(m, ns[k], steps);
        const double scale = fmax(1.0, d.max_abs);
        printf("%s (%s): %d sequences batched vs one at a time: logit difference max %.3g "
               "(%.2g relative) mean %.3g (max |logit| %.2f)\n",
               eng_model_hparams(m)->arch, eng_model_backend_name(m), ns[k], d.max, d.max / scale,
               d.mean, d.max_abs);
        /* One row runs exactly eng_decode's kernels; the reference kernels' tiles are
         * their dot products one by one. More rows may take the fast tile kernels,
         * whose float sums run in another order. */
        if (ns[k] == 1 || backend == ENG_BACKEND_REF) {
            assert_true(d.max == 0);
        } else {
            assert_true(d.max <= tol * scale);
            assert_true(d.mean <= tol_mean * scale);
        }
    }
    eng_model_free(m);
}

/* Measured with the AVX-512 kernels, 8 sequences, differences relative to the largest
 * logit: tiny qwen2 (F32 weights and activations) max 1.9e-5, mean 2.2e-7; tiny llama
 * (F16: activations rounded to half, so a last-bit change moves a whole half step) max
 * 4.5e-4, mean 1.7e-5; SmolLM2 Q4_1 (activations quantized to Q8_1, whose steps are
 * large on its outlier channels) max 0.022 (0.74 of 34), mean 3.3e-3 (0.11). The
 * tolerances are about four times those. */
static void test_decode_batch_tiny(void **state)
{
    (void)state;
    for (int be = ENG_BACKEND_REF; be <= ENG_BACKEND_CPU; be++) {
        check_decode_batch(tiny("qwen2"), be, 1e-4, 1e-6);
        check_decode_batch(tiny("llama"), be, 2e-3, 1e-4);
    }
}

static void test_decode_batch_smollm(void **state)
{
    (void)state;
    if (!smollm()) skip();
    check_decode_batch(smollm(), ENG_BACKEND_CPU, 0.08, 0.013);
    if (!sanitized()) check_decode_batch(smollm(), ENG_BACKEND_REF, 0, 0);
}

static void test_decode_batch_refusals(void **state)
{
    (void)state;
    eng_model *m = open_model(tiny("qwen2"), ENG_BACKEND_CPU, 1);
    eng_model *m2 = open_model(tiny("llama"), ENG_BACKEND_CPU, 1);
    eng_ctx *c[3], *other;
    for (int i = 0; i < 3; i++)
        assert_int_equal(eng_ctx_new(&c[i], m, 4), 0);
    assert_int_equal(eng_ctx_new(&other, m2, 4), 0);
    const uint32_t nv = eng_model_hparams(m)->n_vocab;
    float *lg = malloc(sizeof *lg * 3 * nv);
    int32_t ids[3] = {1, 2, 3};
    assert_int_equal(eng_decode_batch(c, ids, 0, lg), MLV_EINVAL);
    assert_int_equal(eng_decode_batch(c, ids, 257, lg), MLV_EINVAL);
    eng_ctx *mixed[2] = {c[0], other};
    assert_int_equal(eng_decode_batch(mixed, ids, 2, lg), MLV_EINVAL);
    eng_ctx *dup[3] = {c[0], c[1], c[0]};
    assert_int_equal(eng_decode_batch(dup, ids, 3, lg), MLV_EINVAL);
    int32_t bad[3] = {1, (int32_t)nv, 3};
    assert_int_equal(eng_decode_batch(c, bad, 3, lg), MLV_EINVAL);
    bad[1] = -1;
    assert_int_equal(eng_decode_batch(c, bad, 3, lg), MLV_EINVAL);
    /* a full context anywhere refuses the whole batch */
    int32_t four[4] = {5, 6, 7, 8};
    assert_int_equal(eng_decode(c[2], four, 4, NULL, false), 0);
    assert_int_equal(eng_decode_batch(c, ids, 3, lg), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "full"));
    /* nothing was decoded by the refusals */
    assert_int_equal(eng_ctx_pos(c[0]), 0);
    assert_int_equal(eng_ctx_pos(c[1]), 0);
    assert_int_equal(eng_ctx_pos(other), 0);
    assert_int_equal(eng_decode_batch(c, ids, 2, lg), 0);
    assert_int_equal(eng_ctx_pos(c[0]), 1);
    assert_int_equal(eng_ctx_pos(c[1]), 1);
    free(lg);
    for (int i = 0; i < 3; i++)
        eng_ctx_free(c[i]);
    eng_ctx_free(other);
    eng_model_free(m);
    eng_model_free(m2);
}

/* -------------------------------------------------------------- batcher ---- */

/* A greedy pick the batched products' rounding may flip on SmolLM2: its logits move by
 * 0.11 on average between batched and one-row products (0.74 at most). */
#define NEAR_TIE 0.5f

/* The real model for the batcher tests, else the tiny qwen2. */
static const char *batch_model(void)
{
    return smollm() ? smollm() : tiny("qwen2");
}

static int32_t *tokenize(eng_model *m, const char *text, size_t *n)
{
    int32_t *ids;
    assert_int_equal(eng_tokenize(eng_model_tokenizer(m), text, strlen(text), true, false, &ids, n),
                     0);
    return ids;
}

static const char *const PROMPTS[8] = {
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):",
    "Water boils at",
    "The three primary colors are",
    "In 1969, the first humans to walk on the Moon were",
    "A haiku about autumn:\n",
    "To make a cup of tea, first",
};

/* What a caller's on_token collects (and when to stop). */
typedef struct collect {
    int32_t ids[4096];
    size_t n;
    core_buf text;
    size_t stop_after; /* non-zero: the callback says stop at this many tokens */
    /* queue test: the first token is announced and the callback waits for release */
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    bool *started, *release;
} collect;

static int on_token(void *arg, int32_t id, const char *piece, size_t len)
{
    collect *c = arg;
    assert_true(c->n < sizeof c->ids / sizeof *c->ids);
    c->ids[c->n] = id;
    __atomic_store_n(&c->n, c->n + 1, __ATOMIC_RELEASE); /* read by the test's thread */
    core_buf_append(&c->text, piece, len);
    if (c->mu) {
        pthread_mutex_lock(c->mu);
        *c->started = true;
        pthread_cond_broadcast(c->cv);
        while (!*c->release)
            pthread_cond_wait(c->cv, c->mu);
        pthread_mutex_unlock(c->mu);
    }
    return c->stop_after && c->n >= c->stop_after;
}

typedef struct job {
    eng_batcher *b;
    eng_batch_req req;
    eng_batch_result res;
    collect col;
    int rc;
    char err[256];
    pthread_t th;
} job;

static void *job_main(void *arg)
{
    job *j = arg;
    j->req.on_token = on_token;
    j->req.arg = &j->col;
    j->rc = eng_batch_run(j->b, &j->req, &j->res);
    if (j->rc) snprintf(j->err, sizeof j->err, "%s", core_err_last());
    return NULL;
}

static void job_start(job *j)
{
    assert_int_equal(pthread_create(&j->th, NULL, job_main, j), 0);
}

static void job_join(job *j)
{
    assert_int_equal(pthread_join(j->th, NULL), 0);
}

static void job_clear(job *j)
{
    core_buf_free(&j->col.text);
}

static eng_batch_stats stats(eng_batcher *b)
{
    eng_batch_stats s;
    eng_batcher_stats(b, &s);
    return s;
}

/* Where greedy tokens `got` first differ from eng_generate's `ref` (n = min of their
 * lengths when they do not); there, *gap = how far below the best logit got's token was,
 * on eng_generate's path replayed (prompt in one step, then one token at a time). */
static size_t first_split(eng_model *m, const int32_t *prompt, size_t np, const int32_t *ref,
                          const int32_t *got, size_t n, float *gap)
{
    size_t k = 0;
    while (k < n && ref[k] == got[k])
        k++;
    if (k == n) return n;
    const uint32_t nv = eng_model_hparams(m)->n_vocab;
    float *lg = malloc(sizeof *lg * nv);
    eng_ctx *c;
    assert_int_equal(eng_ctx_new(&c, m, 256), 0);
    assert_int_equal(eng_decode(c, prompt, np, lg, false), 0);
    for (size_t i = 0; i < k; i++)
        assert_int_equal(eng_decode(c, &ref[i], 1, lg, false), 0);
    assert_int_equal(argmax(lg, nv), ref[k]); /* the same path as eng_generate */
    *gap = lg[ref[k]] - lg[got[k]];
    eng_ctx_free(c);
    free(lg);
    return k;
}

/* Runs the 8 prompts concurrently through a batcher (8 threads) and each alone through
 * eng_generate with the same sampler. exact: the same token ids, to the last (kernels
 * whose batched products equal the one-row ones: the reference set). Otherwise (greedy
 * only) the same ids up to a first difference, which must be a near tie: the batcher's
 * token less than near_tie below eng_generate's best logit there, as the batched
 * products' rounding may then pick the other. */
static void check_concurrent(const char *path, int backend, const eng_sampler_params *sp,
                             const char *what, uint32_t n_predict, bool exact, float near_tie)
{
    eng_model *m = open_model(path, backend, 2);
    enum { N = 8 };
    job *jobs = calloc(N, sizeof *jobs);
    int32_t *prompt[N];
    size_t np[N];
    eng_gen_result ref[N];
    for (int i = 0; i < N; i++) {
        prompt[i] = tokenize(m, PROMPTS[i], &np[i]);
        eng_ctx *c;
        assert_int_equal(eng_ctx_new(&c, m, 256), 0);
        eng_sampler_params p = *sp;
        p.seed += (uint64_t)i;
        assert_int_equal(eng_generate(c, prompt[i], np[i], n_predict, &p, NULL, NULL, &ref[i]), 0);
        eng_ctx_free(c);
    }
    eng_batcher *b;
    eng_batcher_opts o = {.max_seqs = N, .n_ctx = 256};
    assert_int_equal(eng_batcher_new(&b, m, &o), 0);
    assert_int_equal(eng_batcher_n_ctx(b), 256);
    for (int i = 0; i < N; i++) {
        jobs[i].b = b;
        jobs[i].req = (eng_batch_req){prompt[i], np[i], n_predict, *sp, NULL, NULL};
        jobs[i].req.sp.seed += (uint64_t)i;
        job_start(&jobs[i]);
    }
    size_t total = 0, agree = 0, compared = 0;
    for (int i = 0; i < N; i++) {
        job_join(&jobs[i]);
        if (jobs[i].rc) fprintf(stderr, "request %d: %s\n", i, jobs[i].err);
        assert_int_equal(jobs[i].rc, 0);
        const eng_batch_result *r = &jobs[i].res;
        const int32_t *got = jobs[i].col.ids;
        assert_int_equal(r->n_prompt, np[i]);
        assert_int_equal(r->n_gen, jobs[i].col.n);
        const size_t n = r->n_gen < ref[i].n_gen ? r->n_gen : ref[i].n_gen;
        float gap = 0;
        const size_t k = exact ? n : first_split(m, prompt[i], np[i], ref[i].ids, got, n, &gap);
        printf("%s %d: %zu/%zu tokens as eng_generate (%s, %s)", what, i, k, ref[i].n_gen,
               r->stop_reason, ref[i].stop_reason);
        if (k < n) printf(", then a near tie: %.3f below the best logit", gap);
        printf("; queue %.3f s, first token %.3f s, total %.3f s\n", r->queue_s, r->ttft_s,
               r->total_s);
        if (k < n) {
            assert_true(gap < near_tie);
        } else {
            assert_memory_equal(got, ref[i].ids, sizeof *got * n);
            assert_int_equal(r->n_gen, ref[i].n_gen);
            assert_string_equal(r->stop_reason, ref[i].stop_reason);
            core_buf_append(&jobs[i].col.text, "", 0);
            assert_string_equal(jobs[i].col.text.data ? jobs[i].col.text.data : "", ref[i].text);
        }
        assert_true(r->queue_s >= 0 && r->ttft_s >= r->queue_s && r->total_s >= r->ttft_s);
        total += r->n_gen;
        agree += k;
        compared += ref[i].n_gen;
    }
    eng_batch_stats s = stats(b);
    printf("%s: %zu/%zu tokens as eng_generate; %llu tokens, %llu steps, mean batch %.2f\n", what,
           agree, compared, (unsigned long long)s.tokens, (unsigned long long)s.steps,
           s.steps ? (double)s.seq_sum / (double)s.steps : 0.0);
    assert_int_equal(s.tokens, total);
    assert_int_equal(s.waiting, 0);
    assert_int_equal(s.running, 0);
    assert_int_equal(s.max_seqs, N);
    assert_int_equal(s.max_queue, 64);
    assert_true(s.steps > 0);
    assert_true(s.seq_sum > s.steps); /* sequences were decoded together */
    eng_batcher_free(b);
    for (int i = 0; i < N; i++) {
        eng_gen_result_clear(&ref[i]);
        free(prompt[i]);
        job_clear(&jobs[i]);
    }
    free(jobs);
    eng_model_free(m);
}

static const eng_sampler_params GREEDY = {0, 0, 1, 0, 1, 64, 0};
static const eng_sampler_params SAMPLED = {0.8f, 0, 0.9f, 0, 1, 64, 1234};

/* With the reference kernels a batched product is the one-row products exactly: the
 * batcher must give eng_generate's tokens, greedy or sampled, to the last one. */
static void test_batch_exact_tiny(void **state)
{
    (void)state;
    const uint32_t n = sanitized() ? 8 : 32;
    check_concurrent(tiny("qwen2"), ENG_BACKEND_REF, &GREEDY, "tiny greedy", n, true, 0);
    check_concurrent(tiny("llama"), ENG_BACKEND_REF, &SAMPLED, "tiny sampled", n, true, 0);
}

static void test_batch_exact_smollm(void **state)
{
    (void)state;
    if (!smollm()) skip();
    if (sanitized()) skip(); /* the reference kernels under sanitizers: minutes */
    check_concurrent(smollm(), ENG_BACKEND_REF, &SAMPLED, "smollm2 ref sampled", 12, true, 0);
}

/* The fast kernels: batched products round differently (tiles), so greedy tokens agree
 * up to the first near tie. */
static void test_batch_greedy(void **state)
{
    (void)state;
    const uint32_t n = sanitized() ? 8 : 32;
    if (!smollm()) {
        check_concurrent(tiny("qwen2"), ENG_BACKEND_CPU, &GREEDY, "tiny greedy", n, false, 1e-3f);
        return;
    }
    check_concurrent(smollm(), ENG_BACKEND_CPU, &GREEDY, "smollm2 greedy", n, false, NEAR_TIE);
}

/* n_predict, the callback, prompts that do not fit, bad sampler parameters. */
static void test_batch_stops(void **state)
{
    (void)state;
    eng_model *m = open_model(batch_model(), ENG_BACKEND_CPU, 2);
    eng_batcher *b;
    eng_batcher_opts o = {.max_seqs = 2, .n_ctx = 64};
    assert_int_equal(eng_batcher_new(&b, m, &o), 0);
    size_t np;
    int32_t *p = tokenize(m, "1, 2, 3, 4, 5, 6, 7, 8,", &np);
    eng_sampler_params greedy = {0, 0, 1, 0, 1, 64, 0};
    job j = {.b = b, .req = {p, np, 5, greedy, NULL, NULL}};
    job_main(&j);
    assert_int_equal(j.rc, 0);
    assert_int_equal(j.res.n_gen, 5);
    assert_string_equal(j.res.stop_reason, "length");
    job_clear(&j);
    /* the callback says stop at the third token: no fourth is delivered */
    j = (job){.b = b, .req = {p, np, 20, greedy, NULL, NULL}, .col.stop_after = 3};
    job_main(&j);
    assert_int_equal(j.rc, 0);
    assert_int_equal(j.res.n_gen, 3);
    assert_int_equal(j.col.n, 3);
    assert_string_equal(j.res.stop_reason, "callback");
    job_clear(&j);
    /* until the context is full: n_ctx - n_prompt + 1 tokens (the last is not decoded),
     * unless the model ends first */
    j = (job){.b = b, .req = {p, np, 0, greedy, NULL, NULL}};
    job_main(&j);
    assert_int_equal(j.rc, 0);
    printf("n_predict 0: %zu tokens, %s\n", j.res.n_gen, j.res.stop_reason);
    if (!strcmp(j.res.stop_reason, "context"))
        assert_int_equal(j.res.n_gen, 64 - np + 1);
    else
        assert_string_equal(j.res.stop_reason, "eog");
    job_clear(&j);
    /* refusals, with the message on this thread */
    eng_batch_result r;
    eng_batch_req q = {p, 0, 5, greedy, NULL, NULL};
    assert_int_equal(eng_batch_run(b, &q, &r), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "empty"));
    int32_t *longp = calloc(64, sizeof *longp);
    q = (eng_batch_req){longp, 64, 5, greedy, NULL, NULL};
    assert_int_equal(eng_batch_run(b, &q, &r), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "no room"));
    q.n_prompt = 63; /* one position left: one token can be generated and decoded */
    assert_int_equal(eng_batch_run(b, &q, &r), 0);
    if (strcmp(r.stop_reason, "eog")) {
        assert_string_equal(r.stop_reason, "context");
        assert_int_equal(r.n_gen, 2);
    }
    longp[0] = -5;
    assert_int_equal(eng_batch_run(b, &q, &r), MLV_EINVAL);
    eng_batch_req bad = {p, np, 5, {1.0f, 0, -1.0f, 0, 1, 64, 0}, NULL, NULL};
    assert_int_equal(eng_batch_run(b, &bad, &r), MLV_EINVAL);
    eng_batch_stats s = stats(b);
    assert_int_equal(s.waiting, 0);
    assert_int_equal(s.running, 0);
    eng_batcher_free(b);
    free(longp);
    free(p);
    eng_model_free(m);
}

/* A prompt long enough that the request holds the slot for a while (prefill and then
 * generation), so that others queue behind it. */
static int32_t *long_prompt(eng_model *m, size_t want, size_t *n)
{
    core_buf t = {0};
    for (int i = 1; t.len < want * 3; i++)
        core_buf_appendf(&t, "%d, ", i);
    core_buf_append(&t, "", 0);
    int32_t *ids = tokenize(m, t.data, n);
    core_buf_free(&t);
    if (*n > want) *n = want;
    return ids;
}

/* A prompt longer than a prefill chunk goes in over several steps; alone on the batch,
 * a request is decoded one row at a time, so it gives eng_generate's tokens exactly. */
static void test_batch_long_prompt(void **state)
{
    (void)state;
    eng_model *m = open_model(batch_model(), ENG_BACKEND_CPU, 2);
    const size_t want = sanitized() ? 300 : 700;
    size_t np;
    int32_t *p = long_prompt(m, want, &np);
    assert_int_equal(np, want);
    eng_batcher *b;
    eng_batcher_opts o = {.max_seqs = 2, .n_ctx = 1024};
    assert_int_equal(eng_batcher_new(&b, m, &o), 0);
    const eng_sampler_params *sps[2] = {&GREEDY, &SAMPLED};
    for (int k = 0; k < 2; k++) {
        eng_ctx *c;
        assert_int_equal(eng_ctx_new(&c, m, 1024), 0);
        eng_gen_result ref;
        assert_int_equal(eng_generate(c, p, np, 12, sps[k], NULL, NULL, &ref), 0);
        eng_ctx_free(c);
        job j = {.b = b, .req = {p, np, 12, *sps[k], NULL, NULL}};
        job_main(&j);
        assert_int_equal(j.rc, 0);
        printf("%zu-token prompt, %s: %zu tokens (%s), eng_generate %zu (%s)\n", np,
               k ? "sampled" : "greedy", j.res.n_gen, j.res.stop_reason, ref.n_gen,
               ref.stop_reason);
        assert_int_equal(j.res.n_gen, ref.n_gen);
        assert_memory_equal(j.col.ids, ref.ids, sizeof(int32_t) * ref.n_gen);
        assert_string_equal(j.res.stop_reason, ref.stop_reason);
        job_clear(&j);
        eng_gen_result_clear(&ref);
    }
    eng_batcher_free(b);
    free(p);
    eng_model_free(m);
}

static void wait_for(eng_batcher *b, int running, int waiting)
{
    for (int i = 0; i < 200000; i++) {
        eng_batch_stats s = stats(b);
        if (s.running == running && s.waiting == waiting) return;
        usleep(100);
    }
    fail_msg("the batcher never had %d running and %d waiting", running, waiting);
}

/* max_seqs 1, max_queue 1: one running, one waiting, a third is refused at once. */
static void test_batch_queue_limit(void **state)
{
    (void)state;
    if (!smollm()) skip(); /* the tiny model runs too fast to hold a slot */
    eng_model *m = open_model(smollm(), ENG_BACKEND_CPU, 2);
    eng_batcher *b;
    eng_batcher_opts o = {.max_seqs = 1, .n_ctx = 512, .max_queue = 1};
    assert_int_equal(eng_batcher_new(&b, m, &o), 0);
    size_t np;
    int32_t *p = long_prompt(m, 400, &np);
    eng_sampler_params greedy = {0, 0, 1, 0, 1, 64, 0};
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    bool started = false, release = false;
    job *j = calloc(2, sizeof *j);
    /* the first holds the slot: its caller waits in the callback at its first token
     * while the scheduler goes on generating (up to the context) */
    j[0] = (job){.b = b, .req = {p, np, 0, greedy, NULL, NULL}};
    j[0].col.mu = &mu;
    j[0].col.cv = &cv;
    j[0].col.started = &started;
    j[0].col.release = &release;
    j[0].col.stop_after = 1;
    job_start(&j[0]);
    wait_for(b, 1, 0);
    j[1] = (job){.b = b, .req = {p, 8, 4, greedy, NULL, NULL}};
    job_start(&j[1]);
    wait_for(b, 1, 1);
    eng_batch_result r;
    eng_batch_req q = {p, 8, 4, greedy, NULL, NULL};
    double t0 = core_now_s();
    assert_int_equal(eng_batch_run(b, &q, &r), MLV_ELIMIT);
    assert_non_null(strstr(core_err_last(), "queue is full (1 waiting)"));
    printf("a full queue answered in %.6f s\n", core_now_s() - t0);
    pthread_mutex_lock(&mu);
    release = true;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    job_join(&j[0]);
    job_join(&j[1]);
    assert_true(started);
    assert_int_equal(j[0].rc, 0);
    assert_string_equal(j[0].res.stop_reason, "callback");
    assert_int_equal(j[0].res.n_gen, 1);
    assert_int_equal(j[1].rc, 0);
    assert_true(j[1].res.queue_s > 0);
    printf("the second waited %.3f s for the slot\n", j[1].res.queue_s);
    eng_batcher_free(b);
    job_clear(&j[0]);
    job_clear(&j[1]);
    free(j);
    free(p);
    eng_model_free(m);
}

/* Freeing the batcher while requests run and wait: each ends with MLV_EBUSY. */
static void test_batch_free_busy(void **state)
{
    (void)state;
    if (!smollm()) skip(); /* the tiny model runs too fast to catch requests running */
    eng_model *m = open_model(smollm(), ENG_BACKEND_CPU, 2);
    eng_batcher *b;
    eng_batcher_opts o = {.max_seqs = 2, .n_ctx = 512, .max_queue = 4};
    assert_int_equal(eng_batcher_new(&b, m, &o), 0);
    size_t np;
    int32_t *p = long_prompt(m, 200, &np);
    eng_sampler_params greedy = {0, 0, 1, 0, 1, 64, 0};
    enum { N = 5 };
    job *j = calloc(N, sizeof *j);
    for (int i = 0; i < N; i++) {
        /* the first two take the slots and count on to the context's end; the rest wait */
        j[i] = (job){.b = b, .req = {p, np, 0, greedy, NULL, NULL}};
        job_start(&j[i]);
        wait_for(b, i < 2 ? i + 1 : 2, i < 2 ? 0 : i - 1);
    }
    /* the first tokens came out before the unload */
    for (int t = 0; t < 100000 && (!__atomic_load_n(&j[0].col.n, __ATOMIC_ACQUIRE) ||
                                   !__atomic_load_n(&j[1].col.n, __ATOMIC_ACQUIRE));
         t++)
        usleep(100);
    eng_batcher_free(b);
    for (int i = 0; i < N; i++) {
        job_join(&j[i]);
        printf("request %d: %s (%s) after %zu tokens\n", i, core_err_name(j[i].rc), j[i].err,
               j[i].col.n);
        assert_int_equal(j[i].rc, MLV_EBUSY);
        assert_string_equal(j[i].err, "the model is being unloaded");
        assert_true(i < 2 ? j[i].col.n > 0 : j[i].col.n == 0);
        job_clear(&j[i]);
    }
    free(j);
    free(p);
    /* an idle batcher frees at once */
    assert_int_equal(eng_batcher_new(&b, m, &o), 0);
    eng_batcher_free(b);
    eng_batcher_free(NULL);
    o.max_seqs = 300;
    assert_int_equal(eng_batcher_new(&b, m, &o), MLV_EINVAL);
    assert_null(b);
    eng_model_free(m);
}

/* ------------------------------------------------------------- throughput ---- */

/* Tokens/s summed over 1 and 8 concurrent greedy streams (printed, not asserted). */
static void test_throughput(void **state)
{
    (void)state;
    if (!smollm() || sanitized()) skip();
    eng_model *m = open_model(smollm(), ENG_BACKEND_CPU, 2);
    const uint32_t n_predict = 64;
    double rate[2];
    for (int round = 0; round < 2; round++) {
        const int n = round ? 8 : 1;
        eng_batcher *b;
        eng_batcher_opts o = {.max_seqs = 8, .n_ctx = 256};
        assert_int_equal(eng_batcher_new(&b, m, &o), 0);
        job *j = calloc((size_t)n, sizeof *j);
        int32_t *prompt[8];
        size_t np[8];
        double t0 = core_now_s();
        for (int i = 0; i < n; i++) {
            prompt[i] = tokenize(m, PROMPTS[i], &np[i]);
            j[i] = (job){.b = b, .req = {prompt[i], np[i], n_predict, {0, 0, 1, 0, 1, 64, 0}}};
            job_start(&j[i]);
        }
        size_t tokens = 0;
        for (int i = 0; i < n; i++) {
            job_join(&j[i]);
            assert_int_equal(j[i].rc, 0);
            tokens += j[i].res.n_gen;
            free(prompt[i]);
            job_clear(&j[i]);
        }
        double dt = core_now_s() - t0;
        rate[round] = (double)tokens / dt;
        eng_batch_stats s = stats(b);
        printf("{\"streams\": %d, \"tokens\": %zu, \"seconds\": %.3f, \"tokens_per_s\": %.1f, "
               "\"mean_batch\": %.2f}\n",
               n, tokens, dt, rate[round], s.steps ? (double)s.seq_sum / (double)s.steps : 0.0);
        eng_batcher_free(b);
        free(j);
    }
    printf("8 streams / 1 stream: %.2fx\n", rate[1] / rate[0]);
    eng_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_batch_tiny),   cmocka_unit_test(test_decode_batch_refusals),
        cmocka_unit_test(test_decode_batch_smollm), cmocka_unit_test(test_batch_exact_tiny),
        cmocka_unit_test(test_batch_exact_smollm),  cmocka_unit_test(test_batch_greedy),
        cmocka_unit_test(test_batch_stops),         cmocka_unit_test(test_batch_long_prompt),
        cmocka_unit_test(test_batch_queue_limit),   cmocka_unit_test(test_batch_free_busy),
        cmocka_unit_test(test_throughput),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
