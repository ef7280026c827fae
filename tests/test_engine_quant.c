/* tests/test_engine_quant.c: dequantization and the fp16/bf16 conversions
 * (engine/quant.c). Every half value through fp32 and back; fp32 -> fp16 rounding at
 * hand-picked edges and against the compiler's _Float16 where it has one; every
 * supported block type against an independent dequantizer (tests/ref/dequant_ref.py,
 * the PyPI `gguf` package's numpy code) on deterministic random blocks; every tensor
 * of a real model against the same reference; and the refusals. Comparisons are bit
 * for bit: no type needed a tolerance. */
/* cmocka needs these three first, in this order. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <inttypes.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

static char tmpdir[4096];

static int setup_tmp(void **state)
{
    (void)state;
    make_temp_dir(tmpdir, sizeof tmpdir, "engine-quant");
    return 0;
}

static int teardown_tmp(void **state)
{
    (void)state;
    core_rm_rf(tmpdir);
    return 0;
}

/* ------------------------------------------------------------------ helpers ---- */

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static bool half_is_nan(uint16_t h)
{
    return (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
}

/* A random finite half: any sign, any exponent but 31 (so zeros, subnormals, and the
 * whole normal range, 2^-24 .. 65504). */
static uint16_t random_finite_half(uint64_t *s)
{
    for (;;) {
        uint16_t h = (uint16_t)rng_next(s);
        if ((h & 0x7c00) != 0x7c00) return h;
    }
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Whether MLV_VENV and MLV_SOURCE_DIR name the reference (tests/ref/dequant_ref.py). */
static bool ref_available(void)
{
    const char *venv = getenv("MLV_VENV"), *src = getenv("MLV_SOURCE_DIR");
    return venv && *venv && src && *src;
}

static void run_ref(const char *args)
{
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s/bin/python' '%s/tests/ref/dequant_ref.py' %s",
             getenv("MLV_VENV"), getenv("MLV_SOURCE_DIR"), args);
    int st = system(cmd);
    if (st != 0) fprintf(stderr, "dequant_ref.py failed (%d): %s\n", st, cmd);
    assert_int_equal(st, 0);
}

/* Compares n floats bit for bit; prints the first difference. */
static void assert_same_floats(const char *what, const float *ours, const float *ref, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t a = bits_of(ours[i]), b = bits_of(ref[i]);
        if (a != b) {
            fprintf(stderr,
                    "%s: element %zu differs: engine %.9g (0x%08" PRIx32
                    "), gguf-py %.9g (0x%08" PRIx32 ")\n",
                    what, i, ours[i], a, ref[i], b);
            fail();
        }
    }
}

/* ------------------------------------------------------------- fp16 / bf16 ---- */

/* The value of a half from its definition, without bit tricks. */
static double half_value(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v;
    if (exp == 0x1f)
        v = INFINITY;
    else if (exp == 0)
        v = ldexp(mant, -24);
    else
        v = ldexp(1024 + mant, exp - 25);
    return sign ? -v : v;
}

static void t_fp16_all_values(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = eng_fp16_to_fp32(h);
        if (half_is_nan(h)) {
            assert_true(isnan(f));
            assert_true(half_is_nan(eng_fp32_to_fp16(f)));
            assert_int_equal(eng_fp32_to_fp16(f), h); /* the payload survives, too */
            continue;
        }
        if ((double)f != half_value(h)) {
            fprintf(stderr, "half 0x%04x -> %.9g, expected %.9g\n", h, f, half_value(h));
            fail();
        }
        assert_int_equal(signbit(f) != 0, (h >> 15) != 0); /* -0 stays -0 */
        uint16_t back = eng_fp32_to_fp16(f);
        if (back != h) {
            fprintf(stderr, "half 0x%04x -> %.9g -> 0x%04x\n", h, f, back);
            fail();
        }
    }
}

static void t_fp32_to_fp16_edges(void **state)
{
    (void)state;
    const struct {
        float f;
        uint16_t h;
    } cases[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3c00},
        {-2.0f, 0xc000},
        {0.333333343f, 0x3555},
        /* ties to even around 1 (spacing 2^-10) */
        {1.0f + 0x1p-11f, 0x3c00},            /* halfway 1 / 1+2^-10: to even (1) */
        {1.0f + 3 * 0x1p-11f, 0x3c02},        /* halfway 0x3c01 / 0x3c02: to 0x3c02 */
        {1.0f + 0x1p-11f + 0x1p-23f, 0x3c01}, /* just above halfway */
        {1.0f + 0x1p-11f - 0x1p-23f, 0x3c00}, /* just below halfway */
        {2049.0f, 0x6800},                    /* halfway 2048 / 2050: to 2048 */
        {2051.0f, 0x6802},                    /* halfway 2050 / 2052: to 2052 */
        /* top of the range and overflow */
        {65504.0f, 0x7bff},
        {65519.0f, 0x7bff},
        {65520.0f, 0x7c00}, /* halfway 65504 / 65536: the even side is inf */
        {-65520.0f, 0xfc00},
        {1e10f, 0x7c00},
        {3.4e38f, 0x7c00},
        {INFINITY, 0x7c00},
        {-INFINITY, 0xfc00},
        /* subnormals */
        {0x1p-24f, 0x0001}, /* smallest subnormal */
        {-0x1p-24f, 0x8001},
        {0x1p-25f, 0x0000}, /* halfway 0 / 2^-24: to even (0) */
        {-0x1p-25f, 0x8000},
        {0x1.000002p-25f, 0x0001}, /* just above halfway */
        {0x1p-26f, 0x0000},
        {3 * 0x1p-25f, 0x0002},       /* halfway 1 / 2 subnormal units: to 2 */
        {5 * 0x1p-25f, 0x0002},       /* halfway 2 / 3: to 2 */
        {1023 * 0x1p-24f, 0x03ff},    /* largest subnormal */
        {1023.5f * 0x1p-24f, 0x0400}, /* halfway to the smallest normal: to it (even) */
        {0x1p-14f, 0x0400},           /* smallest normal */
        {1e-45f, 0x0000},             /* a float subnormal */
        {-1e-40f, 0x8000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint16_t got = eng_fp32_to_fp16(cases[i].f);
        if (got != cases[i].h) {
            fprintf(stderr, "fp32 %a -> 0x%04x, expected 0x%04x\n", cases[i].f, got, cases[i].h);
            fail();
        }
    }
    assert_true(half_is_nan(eng_fp32_to_fp16(NAN)));
    assert_true(half_is_nan(eng_fp32_to_fp16(-NAN)));
    /* a NaN whose payload lives only in the low 13 bits must not become inf */
    assert_true(half_is_nan(eng_fp32_to_fp16(float_of(0x7f800001u))));
    assert_true(half_is_nan(eng_fp32_to_fp16(float_of(0xff800fffu))));
}

/* Against the compiler's own conversion, where it has _Float16 (GCC 12+ on x86-64,
 * aarch64): random float bit patterns, and a dense sweep of the half range. */
static void t_fp32_to_fp16_vs_compiler(void **state)
{
    (void)state;
#if defined(__FLT16_MAX__)
    uint64_t s = 7;
    for (uint32_t i = 0; i < 4000000; i++) {
        uint32_t u;
        if (i < 2000000)
            u = (uint32_t)rng_next(&s);
        else /* exponents -30 .. 17: subnormal halves through overflow */
            u = ((uint32_t)rng_next(&s) & 0x807fffffu) | ((uint32_t)(97 + i % 48) << 23);
        float f = float_of(u);
        _Float16 c = (_Float16)f;
        uint16_t want;
        memcpy(&want, &c, sizeof want);
        uint16_t got = eng_fp32_to_fp16(f);
        if (isnan(f)) {
            assert_true(half_is_nan(got));
            continue;
        }
        if (got != want) {
            fprintf(stderr, "fp32 %a (0x%08" PRIx32 ") -> 0x%04x, compiler 0x%04x\n", f, u, got,
                    want);
            fail();
        }
    }
#else
    fprintf(stderr, "skipped: the compiler has no _Float16\n");
    skip();
#endif
}

static void t_bf16(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < 65536; i++)
        assert_int_equal(bits_of(eng_bf16_to_fp32((uint16_t)i)), i << 16);
    assert_true(eng_bf16_to_fp32(0x3f80) == 1.0f);
    assert_true(eng_bf16_to_fp32(0xc040) == -3.0f);
}

/* --------------------------------------------------- blocks vs gguf-py ---- */

/* Byte offsets of the fp16 fields in one block of each quantized type: they get
 * finite halves, everything else is random bytes. */
typedef struct qcase {
    int type;
    int n_blocks;
    int n_half;
    size_t half_at[2];
} qcase;

static const qcase qcases[] = {
    {ENG_F32, 16384, 0, {0}},   {ENG_F16, 65536, 0, {0}},    {ENG_BF16, 65536, 0, {0}},
    {ENG_Q8_0, 1024, 1, {0}},   {ENG_Q4_0, 1024, 1, {0}},    {ENG_Q4_1, 1024, 2, {0, 2}},
    {ENG_Q5_0, 1024, 1, {0}},   {ENG_Q5_1, 1024, 2, {0, 2}}, {ENG_Q4_K, 256, 2, {0, 2}},
    {ENG_Q5_K, 256, 2, {0, 2}}, {ENG_Q6_K, 256, 1, {208}},
};

/* Deterministic blocks of one type; the caller frees. */
static uint8_t *make_blocks(const qcase *c, size_t *n_bytes, int64_t *n_elems)
{
    size_t blck, bytes;
    assert_int_equal(eng_type_block(c->type, &blck, &bytes), 0);
    *n_bytes = bytes * (size_t)c->n_blocks;
    *n_elems = (int64_t)(blck * (size_t)c->n_blocks);
    uint8_t *p = malloc(*n_bytes);
    assert_non_null(p);
    uint64_t s = 1000 + (uint64_t)c->type;
    for (size_t i = 0; i < *n_bytes; i++)
        p[i] = (uint8_t)rng_next(&s);
    if (c->type == ENG_F16) /* every half, NaNs and infinities included, shuffled */
        for (uint32_t i = 0; i < 65536; i++)
            put16(p + 2 * i, (uint16_t)(i * 40503u)); /* odd multiplier: a permutation */
    if (c->type == ENG_F32) /* finite floats of any magnitude, and a few specials */
        for (size_t i = 0; i < *n_bytes / 4; i++) {
            uint32_t u = (uint32_t)rng_next(&s);
            if ((u & 0x7f800000u) == 0x7f800000u) u &= 0xbfffffffu;
            memcpy(p + 4 * i, &u, 4);
        }
    for (int b = 0; b < c->n_blocks; b++)
        for (int k = 0; k < c->n_half; k++)
            put16(p + (size_t)b * bytes + c->half_at[k], random_finite_half(&s));
    return p;
}

static void t_blocks_vs_gguf_py(void **state)
{
    (void)state;
    if (!ref_available()) {
        fprintf(stderr, "skipped: set MLV_VENV and MLV_SOURCE_DIR to compare with gguf-py\n");
        skip();
    }
    for (size_t t = 0; t < sizeof qcases / sizeof *qcases; t++) {
        const qcase *c = &qcases[t];
        const char *name = eng_type_name(c->type);
        size_t n_bytes;
        int64_t n;
        uint8_t *blocks = make_blocks(c, &n_bytes, &n);
        char in[4200], out[4200], args[9000];
        snprintf(in, sizeof in, "%s/%s.blocks", tmpdir, name);
        snprintf(out, sizeof out, "%s/%s.f32", tmpdir, name);
        write_file(in, blocks, n_bytes);
        snprintf(args, sizeof args, "blocks %d '%s' '%s'", c->type, in, out);
        run_ref(args);

        float *ours = malloc((size_t)n * sizeof *ours);
        assert_non_null(ours);
        int rc = eng_dequantize_row(c->type, blocks, ours, n);
        if (rc) fprintf(stderr, "%s\n", core_err_last());
        assert_int_equal(rc, 0);
        size_t ref_len;
        float *ref = (float *)read_all(out, &ref_len);
        assert_int_equal(ref_len, (size_t)n * sizeof(float));
        assert_same_floats(name, ours, ref, (size_t)n);

        /* Unaligned source and a row split at a block boundary give the same values. */
        uint8_t *shifted = malloc(n_bytes + 1);
        assert_non_null(shifted);
        memcpy(shifted + 1, blocks, n_bytes);
        float *again = malloc((size_t)n * sizeof *again);
        assert_non_null(again);
        size_t blck, bytes;
        eng_type_block(c->type, &blck, &bytes);
        int64_t first = (int64_t)blck * (c->n_blocks / 2);
        assert_int_equal(eng_dequantize_row(c->type, shifted + 1, again, first), 0);
        assert_int_equal(eng_dequantize_row(c->type,
                                            shifted + 1 + bytes * (size_t)(c->n_blocks / 2),
                                            again + first, n - first),
                         0);
        assert_memory_equal(again, ours, (size_t)n * sizeof(float));

        fprintf(stderr, "%-5s %7" PRId64 " values match gguf-py bit for bit\n", name, n);
        free(again);
        free(shifted);
        free(ref);
        free(ours);
        free(blocks);
    }
}

/* A few values worked out by hand from the layouts, so a shared misreading of ggml in
 * both implementations would still show. */
static void t_known_values(void **state)
{
    (void)state;
    float y[256];

    /* Q4_0: d = 0.5; qs[0] = 0x2f -> y[0] = (15-8)*0.5, y[16] = (2-8)*0.5 */
    uint8_t q40[18] = {0};
    put16(q40, 0x3800);
    q40[2] = 0x2f;
    assert_int_equal(eng_dequantize_row(ENG_Q4_0, q40, y, 32), 0);
    assert_true(y[0] == 3.5f && y[16] == -3.0f && y[1] == -4.0f);

    /* Q5_1: d = 2, m = -1; qs[3] = 0x51, qh bit 3 and bit 19 set ->
     * y[3] = (1|16)*2-1 = 33, y[19] = (5|16)*2-1 = 41 */
    uint8_t q51[24] = {0};
    put16(q51, 0x4000);
    put16(q51 + 2, 0xbc00);
    q51[4 + 0] = 0x08; /* bit 3 */
    q51[4 + 2] = 0x08; /* bit 19 */
    q51[8 + 3] = 0x51;
    assert_int_equal(eng_dequantize_row(ENG_Q5_1, q51, y, 32), 0);
    assert_true(y[3] == 33.0f && y[19] == 41.0f && y[0] == -1.0f);

    /* Q4_K: d = 1, dmin = 0.5; sub-block 5 has scale 0x2a (low 4 bits in byte 9's low
     * nibble, high 2 in byte 1's top bits) and min 0x13 (byte 9's high nibble, byte 5's
     * top bits). Sub-block 5 = elements 160..191, the high nibbles of qs[64..95]. */
    uint8_t q4k[144] = {0};
    put16(q4k, 0x3c00);
    put16(q4k + 2, 0x3800);
    uint8_t *sc = q4k + 4;
    sc[9] = (uint8_t)((0x3 << 4) | 0xa); /* min low 4 = 3, scale low 4 = 0xa */
    sc[1] = (uint8_t)(0x2 << 6);         /* scale high 2 = 2 -> 0x2a = 42 */
    sc[5] = (uint8_t)(0x1 << 6);         /* min high 2 = 1   -> 0x13 = 19 */
    q4k[16 + 64 + 7] = 0x90;             /* element 167: q = 9 */
    assert_int_equal(eng_dequantize_row(ENG_Q4_K, q4k, y, 256), 0);
    assert_true(y[167] == 42.0f * 9.0f - 0.5f * 19.0f);
    assert_true(y[160] == -0.5f * 19.0f);
    assert_true(y[0] == 0.0f);

    /* Q5_K: d = 2, dmin = 0.25; scales as the Q4_K case (sub-block 5: scale 42, min
     * 19). Sub-block 5 = elements 160..191: high nibbles of qs[64..95] (at 48 + 64),
     * fifth bits = bit 5 of qh[0..31]. Element 167: nibble 9, qh[7] bit 5 -> q = 25;
     * element 170: nibble 0, bit 5 -> q = 16; element 168: nibble 15, no bit -> 15.
     * Sub-block 0 (scale sc[0] = 1, min 0): element 3 with only qh[3] bit 0 -> q = 16;
     * qh[3] bit 1 belongs to element 35 (sub-block 1, scale 0), not to element 3. */
    uint8_t q5k[176] = {0};
    put16(q5k, 0x4000);
    put16(q5k + 2, 0x3400);
    sc = q5k + 4;
    sc[9] = (uint8_t)((0x3 << 4) | 0xa);
    sc[1] = (uint8_t)(0x2 << 6);
    sc[5] = (uint8_t)(0x1 << 6);
    sc[0] = 1;
    q5k[48 + 64 + 7] = 0x90;
    q5k[48 + 64 + 8] = 0xf0;
    q5k[16 + 7] = 1 << 5;
    q5k[16 + 10] = 1 << 5;
    q5k[16 + 3] = (1 << 0) | (1 << 1);
    assert_int_equal(eng_dequantize_row(ENG_Q5_K, q5k, y, 256), 0);
    assert_true(y[167] == 2.0f * 42.0f * 25.0f - 0.25f * 19.0f);
    assert_true(y[170] == 2.0f * 42.0f * 16.0f - 0.25f * 19.0f);
    assert_true(y[168] == 2.0f * 42.0f * 15.0f - 0.25f * 19.0f);
    assert_true(y[160] == -0.25f * 19.0f);
    assert_true(y[3] == 2.0f * 16.0f);
    assert_true(y[35] == 0.0f && y[0] == 0.0f);

    /* Q6_K: d = 0.25; element 64+128+5 = 197 is in the second half, third quarter:
     * low 4 bits = ql[64+5] high nibble, top 2 = qh[32+5] bits 4-5; scale sc[8+4]. */
    uint8_t q6k[210] = {0};
    put16(q6k + 208, 0x3400);
    q6k[64 + 5] = 0xb0;       /* 11 */
    q6k[128 + 32 + 5] = 0x30; /* 3 << 4 -> q = 11 | 48 = 59 */
    q6k[192 + 12] = (uint8_t)-3;
    assert_int_equal(eng_dequantize_row(ENG_Q6_K, q6k, y, 256), 0);
    assert_true(y[197] == 0.25f * -3.0f * (59 - 32));
    assert_true(y[0] == 0.0f); /* scale 0 */
}

/* ------------------------------------------------------------- real model ---- */

static void sha256_hex(char out[65], const void *p, size_t n)
{
    unsigned char md[32];
    assert_int_equal(EVP_Digest(p, n, md, NULL, EVP_sha256(), NULL), 1);
    core_hex(out, md, 32);
}

#define MODEL_PREFIX 65536 /* elements compared one by one; the rest by digest */

static void t_real_model(void **state)
{
    (void)state;
    const char *model = getenv("MLV_MODEL_GGUF");
    if (!model || !*model || !ref_available()) {
        fprintf(stderr, "skipped: set MLV_MODEL_GGUF (SmolLM2-135M-Instruct.Q4_1.gguf), "
                        "MLV_VENV and MLV_SOURCE_DIR to compare a real model with gguf-py\n");
        skip();
    }
    eng_gguf *g = NULL;
    int rc = eng_gguf_open_file(&g, model);
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);

    char outdir[4200], listing[4300], args[16384];
    snprintf(outdir, sizeof outdir, "%s/model", tmpdir);
    assert_int_equal(core_mkdir_p(outdir, 0700), 0);
    snprintf(listing, sizeof listing, "%s/model.txt", tmpdir);
    snprintf(args, sizeof args, "model '%s' '%s' %d > '%s'", model, outdir, MODEL_PREFIX, listing);
    run_ref(args);

    FILE *fm = fopen(model, "rb");
    assert_non_null(fm);
    FILE *fl = fopen(listing, "r");
    assert_non_null(fl);
    size_t n_lines = 0, per_type[64] = {0};
    char line[1024];
    while (fgets(line, sizeof line, fl)) {
        size_t idx;
        char name_hex[300], digest[65];
        int type;
        uint64_t n_elems;
        assert_int_equal(
            sscanf(line, "%zu %299s %d %" SCNu64 " %64s", &idx, name_hex, &type, &n_elems, digest),
            5);
        char name[150] = {0};
        for (size_t i = 0; name_hex[2 * i] && i < sizeof name - 1; i++) {
            unsigned v;
            assert_int_equal(sscanf(name_hex + 2 * i, "%2x", &v), 1);
            name[i] = (char)v;
        }
        int64_t ti = eng_gguf_find_tensor(g, name);
        assert_true(ti >= 0);
        eng_gguf_tensor t;
        assert_int_equal(eng_gguf_tensor_info(g, (size_t)ti, &t), 0);
        assert_int_equal(t.type, type);
        assert_int_equal(t.n_elems, n_elems);

        uint8_t *raw = malloc(t.size);
        float *ours = malloc(t.n_elems * sizeof *ours);
        assert_true(raw && ours);
        assert_int_equal(fseeko(fm, (off_t)(eng_gguf_data_offset(g) + t.offset), SEEK_SET), 0);
        assert_int_equal(fread(raw, 1, t.size, fm), t.size);
        rc = eng_dequantize_row(t.type, raw, ours, (int64_t)t.n_elems);
        if (rc) fprintf(stderr, "%s: %s\n", name, core_err_last());
        assert_int_equal(rc, 0);

        char prefix_path[4300];
        snprintf(prefix_path, sizeof prefix_path, "%s/%zu.f32", outdir, idx);
        size_t ref_len;
        float *ref = (float *)read_all(prefix_path, &ref_len);
        size_t want = t.n_elems < MODEL_PREFIX ? t.n_elems : MODEL_PREFIX;
        assert_int_equal(ref_len, want * sizeof(float));
        assert_same_floats(name, ours, ref, want);
        char ours_digest[65];
        sha256_hex(ours_digest, ours, t.n_elems * sizeof *ours);
        if (strcmp(ours_digest, digest)) {
            fprintf(stderr, "%s: digest of all %" PRIu64 " values differs\n", name, n_elems);
            fail();
        }
        if (type >= 0 && type < 64) per_type[type]++;
        n_lines++;
        free(ref);
        free(ours);
        free(raw);
    }
    fclose(fl);
    fclose(fm);
    assert_int_equal(n_lines, eng_gguf_n_tensors(g));
    fprintf(stderr, "real model: all %zu tensors match gguf-py bit for bit (", n_lines);
    for (int ty = 0; ty < 64; ty++)
        if (per_type[ty]) fprintf(stderr, " %s:%zu", eng_type_name(ty), per_type[ty]);
    fprintf(stderr, " )\n");
    eng_gguf_free(g);
}

/* ---------------------------------------------------------------- refusals ---- */

static void t_refusals(void **state)
{
    (void)state;
    uint8_t buf[512] = {0};
    float y[256];

    /* not a whole number of blocks */
    assert_int_equal(eng_dequantize_row(ENG_Q4_0, buf, y, 31), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "Q4_0"));
    assert_int_equal(eng_dequantize_row(ENG_Q8_0, buf, y, 33), MLV_EINVAL);
    assert_int_equal(eng_dequantize_row(ENG_Q4_K, buf, y, 255), MLV_EINVAL);
    assert_int_equal(eng_dequantize_row(ENG_Q5_K, buf, y, 128), MLV_EINVAL);
    assert_int_equal(eng_dequantize_row(ENG_Q6_K, buf, y, 32), MLV_EINVAL);
    assert_int_equal(eng_dequantize_row(ENG_Q4_1, buf, y, -32), MLV_EINVAL);
    assert_int_equal(eng_dequantize_row(ENG_F32, buf, y, -1), MLV_EINVAL);
    assert_int_equal(eng_dequantize_row(ENG_Q4_0, NULL, y, 32), MLV_EINVAL);
    assert_int_equal(eng_dequantize_row(ENG_Q4_0, buf, NULL, 32), MLV_EINVAL);
    /* zero elements is a valid, empty row */
    assert_int_equal(eng_dequantize_row(ENG_Q4_K, NULL, NULL, 0), 0);
    /* any count for per-element types */
    assert_int_equal(eng_dequantize_row(ENG_F16, buf, y, 7), 0);

    /* known types without a dequantizer, and unknown ids */
    const int known[] = {ENG_Q2_K, ENG_Q3_K, ENG_Q8_K, ENG_Q8_1};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        assert_int_equal(eng_dequantize_row(known[i], buf, y, 256), MLV_EUNSUPPORTED);
        assert_non_null(strstr(core_err_last(), eng_type_name(known[i])));
    }
    const int unknown[] = {99, -1, 4, 5, 16, 29, 31};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        assert_int_equal(eng_dequantize_row(unknown[i], buf, y, 32), MLV_EUNSUPPORTED);
        char id[16];
        snprintf(id, sizeof id, "%d", unknown[i]);
        assert_non_null(strstr(core_err_last(), id));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_fp16_all_values),
        cmocka_unit_test(t_fp32_to_fp16_edges),
        cmocka_unit_test(t_fp32_to_fp16_vs_compiler),
        cmocka_unit_test(t_bf16),
        cmocka_unit_test(t_known_values),
        cmocka_unit_test(t_blocks_vs_gguf_py),
        cmocka_unit_test(t_real_model),
        cmocka_unit_test(t_refusals),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
