/* tests/test_engine_convert.c: engine/gguf_write.c and engine/convert.c.
 *
 * The writer: every KV type and several tensor types written and read back with
 * engine/gguf.c (identical), the same content written by gguf-py's GGUFWriter
 * (tests/ref/gguf_write_ref.py) byte for byte identical, and every bad input refused
 * with MLV_EINVAL, atomically (no file, no temp file left behind).
 * GGUF -> GGUF: the real SmolLM2 ($MLV_MODEL_GGUF) to F16, BF16 and Q8_0, each tensor
 * compared with an independent numpy conversion (tests/ref/convert_ref.py, gguf.quants)
 * by digest, metadata identical but for general.file_type.
 * HF -> GGUF: SmolLM2 exported to a Hugging Face folder by tests/ref/hf_export.py
 * (dequantized, q/k un-permuted, tokenizer files rebuilt) converts back to exactly the
 * dequantized tensors and the same tokenizer metadata; a tiny random qwen2 folder gets
 * llama.cpp's names, shapes, types and metadata; malformed folders built here are
 * refused with MLV_EINVAL naming the file and tensor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
/* cmocka.h needs the three headers above first */
#include <cmocka.h>

#include <inttypes.h>
#include <math.h>
#include <sys/stat.h>
#include <time.h>

#include "core/core.h"
#include "engine/engine.h"
#include "repo/repo.h" /* repo_sha256_hex */
#include "test_util.h"

static char tmpdir[4096];

static int setup(void **state)
{
    (void)state;
    make_temp_dir(tmpdir, sizeof tmpdir, "convert");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    core_rm_rf(tmpdir);
    return 0;
}

/* A path in the test's folder; one of 16 rotating buffers (copy what must live longer). */
static char *tpath(const char *name)
{
    static char buf[16][4400];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The venv's python and the source dir, or NULL (the caller skips). */
static const char *venv(void)
{
    const char *v = getenv("MLV_VENV"), *s = getenv("MLV_SOURCE_DIR");
    if (!v || !*v || !s || !*s) return NULL;
    char py[4200];
    snprintf(py, sizeof py, "%s/bin/python", v);
    return access(py, X_OK) == 0 ? v : NULL;
}

/* Runs `$MLV_VENV/bin/python $MLV_SOURCE_DIR/tests/ref/SCRIPT ARGS`; stdout into *out
 * (when not NULL, caller frees). Returns the exit status. */
static int run_ref(char **out, const char *script, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int run_ref(char **out, const char *script, const char *fmt, ...)
{
    char args[8192], cmd[12288];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "'%s/bin/python' '%s/tests/ref/%s' %s", getenv("MLV_VENV"),
             getenv("MLV_SOURCE_DIR"), script, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    core_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0)
        core_buf_append(&b, chunk, n);
    int st = pclose(p);
    if (st != 0) fprintf(stderr, "failed (%d): %s\n", st, cmd);
    if (out) {
        *out = core_buf_take(&b);
        if (!*out) *out = strdup("");
    }
    core_buf_free(&b);
    return st;
}

static void expect_err(int rc, int want_rc, const char *want)
{
    if (rc != want_rc || (want && !strstr(core_err_last(), want)))
        fprintf(stderr, "rc %d (wanted %d), message '%s', wanted '%s'\n", rc, want_rc,
                core_err_last(), want ? want : "");
    assert_int_equal(rc, want_rc);
    if (want) assert_non_null(strstr(core_err_last(), want));
    if (getenv("MLV_TEST_VERBOSE")) fprintf(stderr, "  refused: %s\n", core_err_last());
}

static void expect_einval(int rc, const char *want)
{
    expect_err(rc, MLV_EINVAL, want);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Only the given names (and . ..) in dir: no temp files left behind. */
static size_t count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* --------------------------------------------------------- comparing GGUFs ---- */

/* Is KV pair i of a equal (key, type, value) to KV pair j of b? */
static bool kv_equal(const eng_gguf *a, size_t i, const eng_gguf *b, size_t j)
{
    const char *k = eng_gguf_key(a, i);
    if (strcmp(k, eng_gguf_key(b, j)) || eng_gguf_kv_type(a, i) != eng_gguf_kv_type(b, j))
        return false;
    int t = eng_gguf_kv_type(a, i);
    switch (t) {
    case ENG_GGUF_STRING: {
        const char *x, *y;
        assert_int_equal(eng_gguf_get_str(a, k, &x), 0);
        assert_int_equal(eng_gguf_get_str(b, k, &y), 0);
        return !strcmp(x, y);
    }
    case ENG_GGUF_BOOL: {
        bool x, y;
        assert_int_equal(eng_gguf_get_bool(a, k, &x), 0);
        assert_int_equal(eng_gguf_get_bool(b, k, &y), 0);
        return x == y;
    }
    case ENG_GGUF_F32:
    case ENG_GGUF_F64: {
        float x, y;
        assert_int_equal(eng_gguf_get_f32(a, k, &x), 0);
        assert_int_equal(eng_gguf_get_f32(b, k, &y), 0);
        return memcmp(&x, &y, 4) == 0;
    }
    case ENG_GGUF_ARRAY: {
        int ea, eb;
        uint64_t na, nb;
        assert_int_equal(eng_gguf_arr_info(a, k, &ea, &na), 0);
        assert_int_equal(eng_gguf_arr_info(b, k, &eb, &nb), 0);
        if (ea != eb || na != nb) return false;
        if (ea == ENG_GGUF_STRING) {
            for (uint64_t e = 0; e < na; e++) {
                const char *x, *y;
                assert_int_equal(eng_gguf_arr_str(a, k, e, &x), 0);
                assert_int_equal(eng_gguf_arr_str(b, k, e, &y), 0);
                if (strcmp(x, y)) return false;
            }
            return true;
        }
        const void *da, *db;
        assert_int_equal(eng_gguf_arr_data(a, k, &ea, &na, &da), 0);
        assert_int_equal(eng_gguf_arr_data(b, k, &eb, &nb, &db), 0);
        size_t es = ea <= 1 || ea == 7 ? 1 : ea <= 3 ? 2 : ea <= 6 ? 4 : 8;
        return na == 0 || memcmp(da, db, (size_t)na * es) == 0;
    }
    default: {
        int64_t x = 0, y = 0;
        int ra = eng_gguf_get_int(a, k, &x), rb = eng_gguf_get_int(b, k, &y);
        return ra == rb && x == y;
    }
    }
}

/* The value of key in g equals (by kv_equal) the one in ref. */
static void assert_same_kv(const eng_gguf *ref, const eng_gguf *g, const char *key)
{
    int64_t i = eng_gguf_find_key(ref, key), j = eng_gguf_find_key(g, key);
    if (i < 0 || j < 0 || !kv_equal(ref, (size_t)i, g, (size_t)j)) {
        fprintf(stderr, "key %s differs (ref %" PRId64 ", out %" PRId64 ")\n", key, i, j);
        fail();
    }
}

/* The bytes of tensor `name` in a mapped GGUF image. */
static const unsigned char *tensor_bytes(const eng_gguf *g, const unsigned char *img,
                                         const char *name, eng_gguf_tensor *t)
{
    int64_t i = eng_gguf_find_tensor(g, name);
    if (i < 0) fprintf(stderr, "no tensor %s\n", name);
    assert_true(i >= 0);
    assert_int_equal(eng_gguf_tensor_info(g, (size_t)i, t), 0);
    return img + eng_gguf_data_offset(g) + t->offset;
}

/* ------------------------------------------------------------------ writer ---- */

/* A hand-built GGUF holding the scalar types the setters do not cover, to copy from. */
static void w_le(core_buf *b, uint64_t v, size_t n)
{
    unsigned char t[8];
    for (size_t i = 0; i < n; i++)
        t[i] = (unsigned char)(v >> (8 * i));
    core_buf_append(b, t, n);
}

static void w_key(core_buf *b, const char *k, uint32_t type)
{
    w_le(b, strlen(k), 8);
    core_buf_append(b, k, strlen(k));
    w_le(b, type, 4);
}

static unsigned char *source_gguf(size_t *len)
{
    core_buf b = {0};
    core_buf_append(&b, "GGUF", 4);
    w_le(&b, 3, 4);
    w_le(&b, 0, 8);
    w_le(&b, 7, 8);
    w_key(&b, "src.u8", ENG_GGUF_U8), w_le(&b, 200, 1);
    w_key(&b, "src.i8", ENG_GGUF_I8), w_le(&b, (uint8_t)-5, 1);
    w_key(&b, "src.u16", ENG_GGUF_U16), w_le(&b, 65000, 2);
    w_key(&b, "src.i16", ENG_GGUF_I16), w_le(&b, (uint16_t)-300, 2);
    w_key(&b, "src.i64", ENG_GGUF_I64), w_le(&b, (uint64_t)-1234567890123LL, 8);
    double d = -2.5;
    uint64_t db;
    memcpy(&db, &d, 8);
    w_key(&b, "src.f64", ENG_GGUF_F64), w_le(&b, db, 8);
    w_key(&b, "src.arr_u16", ENG_GGUF_ARRAY), w_le(&b, ENG_GGUF_U16, 4), w_le(&b, 2, 8);
    w_le(&b, 7, 2), w_le(&b, 65535, 2);
    while (b.len % 32)
        core_buf_append(&b, "", 1);
    *len = b.len;
    return (unsigned char *)core_buf_take(&b);
}

static unsigned char tdata[6][4096];

static const struct {
    const char *name;
    int type;
    uint32_t n_dims;
    uint64_t dims[4];
} wt[] = {
    {"token_embd.weight", ENG_F32, 2, {8, 3}},     {"blk.0.attn_norm.weight", ENG_F16, 1, {8}},
    {"blk.0.attn_q.weight", ENG_Q4_0, 2, {64, 2}}, {"blk.0.x.weight", ENG_BF16, 3, {4, 2, 3}},
    {"output.weight", ENG_Q8_0, 4, {32, 1, 2, 1}}, {"blk.0.k.weight", ENG_Q4_K, 2, {256, 2}},
};
#define N_WT (sizeof wt / sizeof wt[0])

static size_t wt_size(size_t i)
{
    size_t be, bb;
    eng_type_block(wt[i].type, &be, &bb);
    uint64_t n = 1;
    for (uint32_t d = 0; d < wt[i].n_dims; d++)
        n *= wt[i].dims[d];
    return (size_t)(n / be * bb);
}

static int fill_pattern(void *arg, uint64_t row, uint64_t n, void *dst)
{
    size_t row_bytes = *(const size_t *)arg;
    for (uint64_t r = 0; r < n; r++)
        for (size_t k = 0; k < row_bytes; k++)
            ((unsigned char *)dst)[r * row_bytes + k] = (unsigned char)((row + r) * 31 + k);
    return 0;
}

static int fill_fail(void *arg, uint64_t row, uint64_t n, void *dst)
{
    (void)arg, (void)row, (void)n, (void)dst;
    return core_err_set(MLV_EIO, "the source went away");
}

static const char *tok_strs[] = {"<s>", "</s>", "h\xc3\xa9llo", "", "w"};

/* A writer with every KV type and the tensors above (+ one fill tensor). */
static eng_gguf_writer *full_writer(const eng_gguf *src, uint32_t align, size_t *fill_row)
{
    eng_gguf_writer *w = NULL;
    assert_int_equal(eng_gguf_writer_new(&w), 0);
    assert_int_equal(eng_gguf_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(eng_gguf_set_str(w, "general.name", "first"), 0);
    assert_int_equal(eng_gguf_set_u32(w, "llama.block_count", 2), 0);
    assert_int_equal(eng_gguf_set_i32(w, "test.i32", -7), 0);
    assert_int_equal(eng_gguf_set_u64(w, "test.u64", 1ull << 40), 0);
    assert_int_equal(eng_gguf_set_f32(w, "test.f32", 0.1f), 0);
    assert_int_equal(eng_gguf_set_bool(w, "test.bool", true), 0);
    assert_int_equal(eng_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tok_strs, 5), 0);
    static const float f32s[] = {0.5f, -1.25f, 3e38f};
    static const int32_t i32s[] = {1, -3, 2147483647};
    static const uint8_t u8s[] = {0, 255, 7};
    static const int8_t i8s[] = {-128, 127};
    static const uint16_t u16s[] = {1, 65535};
    static const int16_t i16s[] = {-32768, 5};
    static const uint32_t u32s[] = {4000000000u};
    static const uint64_t u64s[] = {1, UINT64_MAX / 3};
    static const int64_t i64s[] = {-1, INT64_MIN / 7};
    static const double f64s[] = {1.0 / 3, -0.0};
    static const bool bools[] = {true, false, true};
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.f32", ENG_GGUF_F32, f32s, 3), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.i32", ENG_GGUF_I32, i32s, 3), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.u8", ENG_GGUF_U8, u8s, 3), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.i8", ENG_GGUF_I8, i8s, 2), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.u16", ENG_GGUF_U16, u16s, 2), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.i16", ENG_GGUF_I16, i16s, 2), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.u32", ENG_GGUF_U32, u32s, 1), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.u64", ENG_GGUF_U64, u64s, 2), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.i64", ENG_GGUF_I64, i64s, 2), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.f64", ENG_GGUF_F64, f64s, 2), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.bool", ENG_GGUF_BOOL, bools, 3), 0);
    assert_int_equal(eng_gguf_set_arr_data(w, "arr.empty", ENG_GGUF_U32, NULL, 0), 0);
    for (size_t i = 0; i < eng_gguf_n_kv(src); i++)
        assert_int_equal(eng_gguf_copy_kv(w, src, i), 0);
    /* setting a key again replaces its value where it was */
    assert_int_equal(eng_gguf_set_str(w, "general.name", "tiny \xe2\x9c\x93"), 0);
    if (align) assert_int_equal(eng_gguf_set_u32(w, "general.alignment", align), 0);
    for (size_t i = 0; i < N_WT; i++) {
        for (size_t k = 0; k < sizeof tdata[i]; k++)
            tdata[i][k] = (unsigned char)(k * 13 + i * 7 + 1);
        if (wt[i].type == ENG_F16 || wt[i].type == ENG_BF16) /* finite values */
            for (size_t k = 1; k < sizeof tdata[i]; k += 2)
                tdata[i][k] &= 0x3f;
        assert_int_equal(eng_gguf_add_tensor(w, wt[i].name, wt[i].type, wt[i].n_dims, wt[i].dims,
                                             tdata[i], wt_size(i)),
                         0);
    }
    *fill_row = 5 * 34;
    static const uint64_t fdims[] = {160, 3};
    assert_int_equal(
        eng_gguf_add_tensor_fill(w, "blk.1.filled", ENG_Q8_0, 2, fdims, fill_pattern, fill_row), 0);
    return w;
}

static void check_full(const eng_gguf *g, const unsigned char *img, size_t len, const eng_gguf *src,
                       uint32_t align)
{
    assert_int_equal(eng_gguf_version(g), 3);
    assert_int_equal(eng_gguf_alignment(g), align ? align : 32);
    assert_int_equal(eng_gguf_n_kv(g), 20 + eng_gguf_n_kv(src) + (align ? 1 : 0));
    /* order as set; general.name still second */
    assert_string_equal(eng_gguf_key(g, 0), "general.architecture");
    assert_string_equal(eng_gguf_key(g, 1), "general.name");
    assert_string_equal(eng_gguf_key(g, 19), "arr.empty");
    const char *s;
    assert_int_equal(eng_gguf_get_str(g, "general.name", &s), 0);
    assert_string_equal(s, "tiny \xe2\x9c\x93");
    int64_t iv;
    float f;
    bool bv;
    assert_int_equal(eng_gguf_get_int(g, "llama.block_count", &iv), 0);
    assert_int_equal(iv, 2);
    assert_int_equal(eng_gguf_kv_type(g, 2), ENG_GGUF_U32);
    assert_int_equal(eng_gguf_get_int(g, "test.i32", &iv), 0);
    assert_int_equal(iv, -7);
    assert_int_equal(eng_gguf_kv_type(g, 3), ENG_GGUF_I32);
    assert_int_equal(eng_gguf_get_int(g, "test.u64", &iv), 0);
    assert_true(iv == 1ll << 40);
    assert_int_equal(eng_gguf_kv_type(g, 4), ENG_GGUF_U64);
    assert_int_equal(eng_gguf_get_f32(g, "test.f32", &f), 0);
    assert_true(f == 0.1f);
    assert_int_equal(eng_gguf_get_bool(g, "test.bool", &bv), 0);
    assert_true(bv);
    int et;
    uint64_t n;
    assert_int_equal(eng_gguf_arr_info(g, "tokenizer.ggml.tokens", &et, &n), 0);
    assert_int_equal(et, ENG_GGUF_STRING);
    assert_int_equal(n, 5);
    for (uint64_t i = 0; i < 5; i++) {
        assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &s), 0);
        assert_string_equal(s, tok_strs[i]);
    }
    struct {
        const char *k;
        int et;
        size_t n, es;
    } arrs[] = {{"arr.f32", ENG_GGUF_F32, 3, 4},  {"arr.i32", ENG_GGUF_I32, 3, 4},
                {"arr.u8", ENG_GGUF_U8, 3, 1},    {"arr.i8", ENG_GGUF_I8, 2, 1},
                {"arr.u16", ENG_GGUF_U16, 2, 2},  {"arr.i16", ENG_GGUF_I16, 2, 2},
                {"arr.u32", ENG_GGUF_U32, 1, 4},  {"arr.u64", ENG_GGUF_U64, 2, 8},
                {"arr.i64", ENG_GGUF_I64, 2, 8},  {"arr.f64", ENG_GGUF_F64, 2, 8},
                {"arr.bool", ENG_GGUF_BOOL, 3, 1}};
    static const float f32s[] = {0.5f, -1.25f, 3e38f};
    static const uint64_t u64s[] = {1, UINT64_MAX / 3};
    static const double f64s[] = {1.0 / 3, -0.0};
    static const uint8_t bools[] = {1, 0, 1};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
        const void *data;
        assert_int_equal(eng_gguf_arr_data(g, arrs[i].k, &et, &n, &data), 0);
        assert_int_equal(et, arrs[i].et);
        assert_int_equal(n, arrs[i].n);
        if (!strcmp(arrs[i].k, "arr.f32")) assert_memory_equal(data, f32s, sizeof f32s);
        if (!strcmp(arrs[i].k, "arr.u64")) assert_memory_equal(data, u64s, sizeof u64s);
        if (!strcmp(arrs[i].k, "arr.f64")) assert_memory_equal(data, f64s, sizeof f64s);
        if (!strcmp(arrs[i].k, "arr.bool")) assert_memory_equal(data, bools, sizeof bools);
    }
    assert_int_equal(eng_gguf_arr_info(g, "arr.empty", &et, &n), 0);
    assert_int_equal(n, 0);
    /* the copied pairs: same types and values as in the source */
    for (size_t i = 0; i < eng_gguf_n_kv(src); i++)
        assert_true(kv_equal(src, i, g, 20 + i));

    assert_int_equal(eng_gguf_n_tensors(g), N_WT + 1);
    uint64_t a = eng_gguf_alignment(g), end = 0;
    for (size_t i = 0; i < N_WT; i++) {
        eng_gguf_tensor t;
        const unsigned char *p = tensor_bytes(g, img, wt[i].name, &t);
        assert_int_equal(t.type, wt[i].type);
        assert_int_equal(t.n_dims, wt[i].n_dims);
        for (uint32_t d = 0; d < 4; d++)
            assert_int_equal(t.dims[d], d < wt[i].n_dims ? wt[i].dims[d] : 1);
        assert_int_equal(t.size, wt_size(i));
        assert_int_equal(t.offset % a, 0);
        assert_int_equal(t.offset, end); /* packed in order, each padded */
        assert_memory_equal(p, tdata[i], t.size);
        for (uint64_t k = t.size; k % a; k++) /* zero padding */
            assert_int_equal(p[k], 0);
        end = (t.offset + t.size + a - 1) / a * a;
    }
    eng_gguf_tensor t;
    const unsigned char *p = tensor_bytes(g, img, "blk.1.filled", &t);
    assert_int_equal(t.size, 3 * 170);
    for (uint64_t r = 0; r < 3; r++)
        for (size_t k = 0; k < 170; k++)
            assert_int_equal(p[r * 170 + k], (unsigned char)(r * 31 + k));
    /* the file ends with the last tensor's padding */
    assert_int_equal(len, eng_gguf_data_offset(g) + (t.offset + t.size + a - 1) / a * a);
}

static void t_writer_round_trip(void **state)
{
    (void)state;
    size_t slen;
    unsigned char *src_img = source_gguf(&slen);
    eng_gguf *src = NULL;
    assert_int_equal(eng_gguf_open_mem(&src, src_img, slen), 0);
    assert_int_equal(eng_gguf_n_kv(src), 7);
    static const uint32_t aligns[] = {0, 64, 8};
    for (size_t ai = 0; ai < 3; ai++) {
        size_t fill_row;
        eng_gguf_writer *w = full_writer(src, aligns[ai], &fill_row);
        void *mem;
        size_t len;
        assert_int_equal(eng_gguf_write_mem(w, &mem, &len), 0);
        const char *path = tpath("rt.gguf");
        assert_int_equal(eng_gguf_write_file(w, path), 0);
        size_t flen;
        unsigned char *file = read_all(path, &flen);
        assert_int_equal(flen, len);
        assert_memory_equal(file, mem, len);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0644);
        /* writing twice gives the same bytes */
        void *mem2;
        size_t len2;
        assert_int_equal(eng_gguf_write_mem(w, &mem2, &len2), 0);
        assert_int_equal(len2, len);
        assert_memory_equal(mem2, mem, len);
        free(mem2);
        eng_gguf *g = NULL;
        assert_int_equal(eng_gguf_open_mem(&g, mem, len), 0);
        check_full(g, mem, len, src, aligns[ai]);
        eng_gguf_free(g);
        assert_int_equal(eng_gguf_open_file(&g, path), 0);
        check_full(g, file, flen, src, aligns[ai]);
        eng_gguf_free(g);
        free(file);
        free(mem);
        eng_gguf_writer_free(w);
    }
    assert_int_equal(count_entries(tmpdir), 1);
    eng_gguf_writer_free(NULL);

    /* an empty writer is a valid, empty GGUF */
    eng_gguf_writer *w = NULL;
    assert_int_equal(eng_gguf_writer_new(&w), 0);
    void *mem;
    size_t len;
    assert_int_equal(eng_gguf_write_mem(w, &mem, &len), 0);
    assert_int_equal(len, 32);
    eng_gguf *g = NULL;
    assert_int_equal(eng_gguf_open_mem(&g, mem, len), 0);
    assert_int_equal(eng_gguf_n_kv(g), 0);
    assert_int_equal(eng_gguf_n_tensors(g), 0);
    eng_gguf_free(g);
    free(mem);
    eng_gguf_writer_free(w);
    eng_gguf_free(src);
    free(src_img);
}

/* The same content through gguf-py's GGUFWriter: byte for byte the same file. */
static void t_writer_vs_gguf_py(void **state)
{
    (void)state;
    if (!venv()) {
        fprintf(stderr, "skipped: set MLV_VENV and MLV_SOURCE_DIR to compare with gguf-py\n");
        skip();
    }
    static const uint32_t aligns[] = {0, 64};
    for (size_t ai = 0; ai < 2; ai++) {
        eng_gguf_writer *w = NULL;
        assert_int_equal(eng_gguf_writer_new(&w), 0);
        core_buf spec = {0};
        core_buf_appendf(&spec, "{\"arch\":\"llama\",\"kv\":[");
        assert_int_equal(eng_gguf_set_str(w, "general.architecture", "llama"), 0);
        if (aligns[ai]) {
            assert_int_equal(eng_gguf_set_u32(w, "general.alignment", aligns[ai]), 0);
            core_buf_appendf(&spec, "[\"general.alignment\",4,%u,null],", aligns[ai]);
        }
        assert_int_equal(eng_gguf_set_str(w, "general.name",
                                          "R\xc3\xa9"
                                          "f \"q\""),
                         0);
        core_buf_appendf(&spec, "[\"general.name\",8,\"R\\u00e9f \\\"q\\\"\",null],");
        assert_int_equal(eng_gguf_set_u32(w, "llama.block_count", 30), 0);
        core_buf_appendf(&spec, "[\"llama.block_count\",4,30,null],");
        assert_int_equal(eng_gguf_set_i32(w, "t.i32", -2), 0);
        core_buf_appendf(&spec, "[\"t.i32\",5,-2,null],");
        assert_int_equal(eng_gguf_set_u64(w, "t.u64", 1ull << 50), 0);
        core_buf_appendf(&spec, "[\"t.u64\",10,%llu,null],", 1ull << 50);
        assert_int_equal(eng_gguf_set_f32(w, "t.f32", 1e-5f), 0);
        uint32_t fb;
        float fv = 1e-5f;
        memcpy(&fb, &fv, 4);
        core_buf_appendf(&spec, "[\"t.f32\",6,\"f32:%08x\",null],", fb);
        assert_int_equal(eng_gguf_set_bool(w, "t.bool", false), 0);
        core_buf_appendf(&spec, "[\"t.bool\",7,false,null],");
        static const char *toks[] = {"a", "\xc4\xa0t", "<|im_end|>"};
        assert_int_equal(eng_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, 3), 0);
        core_buf_appendf(&spec,
                         "[\"tokenizer.ggml.tokens\",9,[\"a\",\"\\u0120t\",\"<|im_end|>\"],8],");
        static const int32_t tt[] = {1, 1, 3};
        assert_int_equal(eng_gguf_set_arr_data(w, "tokenizer.ggml.token_type", ENG_GGUF_I32, tt, 3),
                         0);
        core_buf_appendf(&spec, "[\"tokenizer.ggml.token_type\",9,[1,1,3],5],");
        static const uint16_t u16[] = {3, 60000};
        assert_int_equal(eng_gguf_set_arr_data(w, "t.u16s", ENG_GGUF_U16, u16, 2), 0);
        core_buf_appendf(&spec, "[\"t.u16s\",9,[3,60000],2],");
        static const double f64[] = {0.5, -8.25};
        assert_int_equal(eng_gguf_set_arr_data(w, "t.f64s", ENG_GGUF_F64, f64, 2), 0);
        core_buf_appendf(&spec, "[\"t.f64s\",9,[0.5,-8.25],12],");
        static const bool bl[] = {true, false};
        assert_int_equal(eng_gguf_set_arr_data(w, "t.bools", ENG_GGUF_BOOL, bl, 2), 0);
        core_buf_appendf(&spec, "[\"t.bools\",9,[true,false],7]],\"tensors\":[");
        for (size_t i = 0; i < N_WT; i++) {
            char dpath[64];
            snprintf(dpath, sizeof dpath, "t%zu.bin", i);
            for (size_t k = 0; k < sizeof tdata[i]; k++)
                tdata[i][k] = (unsigned char)(k * 11 + i);
            write_file(tpath(dpath), tdata[i], wt_size(i));
            assert_int_equal(eng_gguf_add_tensor(w, wt[i].name, wt[i].type, wt[i].n_dims,
                                                 wt[i].dims, tdata[i], wt_size(i)),
                             0);
            core_buf_appendf(&spec, "%s[\"%s\",%d,[", i ? "," : "", wt[i].name, wt[i].type);
            for (uint32_t d = 0; d < wt[i].n_dims; d++)
                core_buf_appendf(&spec, "%s%" PRIu64, d ? "," : "", wt[i].dims[d]);
            core_buf_appendf(&spec, "],\"%s\"]", tpath(dpath));
        }
        core_buf_appendf(&spec, "]}");
        char *js = core_buf_take(&spec);
        assert_non_null(js);
        write_file(tpath("spec.json"), js, strlen(js));
        free(js);
        assert_int_equal(eng_gguf_write_file(w, tpath("ours.gguf")), 0);
        assert_int_equal(run_ref(NULL, "gguf_write_ref.py", "'%s' '%s'", tpath("spec.json"),
                                 tpath("theirs.gguf")),
                         0);
        size_t la, lb;
        unsigned char *a = read_all(tpath("ours.gguf"), &la),
                      *b = read_all(tpath("theirs.gguf"), &lb);
        if (la != lb || memcmp(a, b, la)) {
            size_t k = 0;
            while (k < la && k < lb && a[k] == b[k])
                k++;
            fprintf(stderr, "files differ at byte %zu (sizes %zu, %zu)\n", k, la, lb);
            fail();
        }
        /* and gguf-py's reader sees our file as it was written */
        char *dump = NULL;
        assert_int_equal(run_ref(&dump, "gguf_dump.py", "'%s'", tpath("ours.gguf")), 0);
        char want[64];
        snprintf(want, sizeof want, "n_tensors %zu\n", N_WT);
        assert_non_null(strstr(dump, want));
        assert_non_null(strstr(dump, "kv general.name 8 52c3a96620227122\n"));
        free(dump);
        free(a);
        free(b);
        eng_gguf_writer_free(w);
    }
}

static void t_writer_invalid(void **state)
{
    (void)state;
    eng_gguf_writer *w = NULL;
    assert_int_equal(eng_gguf_writer_new(&w), 0);
    unsigned char data[4096] = {0};
    uint64_t dims[5] = {8, 2, 1, 1, 1};
    expect_einval(eng_gguf_set_u32(w, "", 1), "empty key");
    expect_einval(eng_gguf_set_u32(w, NULL, 1), "empty key");
    char *key = malloc((64u << 10) + 2);
    assert_non_null(key);
    memset(key, 'k', (64u << 10) + 1);
    key[(64u << 10) + 1] = 0;
    expect_einval(eng_gguf_set_str(w, key, "v"), "longer than 65536");
    key[64u << 10] = 0; /* exactly 64 KiB: allowed */
    assert_int_equal(eng_gguf_set_bool(w, key, true), 0);
    free(key);
    expect_einval(eng_gguf_set_str(w, "k", NULL), "no string");
    const char *bad[] = {"a", NULL};
    expect_einval(eng_gguf_set_arr_str(w, "k", bad, 2), "string 1 is NULL");
    expect_einval(eng_gguf_set_arr_str(w, "k", NULL, 2), "no strings");
    expect_einval(eng_gguf_set_arr_data(w, "k", ENG_GGUF_STRING, data, 1), "element type 8");
    expect_einval(eng_gguf_set_arr_data(w, "k", ENG_GGUF_ARRAY, data, 1), "element type 9");
    expect_einval(eng_gguf_set_arr_data(w, "k", 13, data, 1), "element type 13");
    expect_einval(eng_gguf_set_arr_data(w, "k", ENG_GGUF_U8, NULL, 1), "no data");
    expect_einval(eng_gguf_set_u32(w, "general.alignment", 48), "power of two");
    expect_einval(eng_gguf_set_u32(w, "general.alignment", 0), "power of two");
    expect_einval(eng_gguf_set_u64(w, "general.alignment", 32), "u32");

    expect_einval(eng_gguf_add_tensor(w, "", ENG_F32, 2, dims, data, 64), "empty tensor name");
    expect_einval(eng_gguf_add_tensor(w, NULL, ENG_F32, 2, dims, data, 64), "empty tensor name");
    const char *n64 = "a_name_that_is_sixty_four_bytes_long_which_ggml_cannot_store_xyz";
    assert_int_equal(strlen(n64), 64);
    expect_einval(eng_gguf_add_tensor(w, n64, ENG_F32, 2, dims, data, 64), "longer than 63");
    assert_int_equal(eng_gguf_add_tensor(w, n64 + 1, ENG_F32, 2, dims, data, 64), 0); /* 63 */
    expect_einval(eng_gguf_add_tensor(w, n64 + 1, ENG_F32, 2, dims, data, 64),
                  "duplicate tensor name");
    expect_einval(eng_gguf_add_tensor_fill(w, n64 + 1, ENG_F32, 2, dims, fill_pattern, data),
                  "duplicate tensor name");
    expect_einval(eng_gguf_add_tensor(w, "t", 4, 2, dims, data, 64), "unknown type 4");
    expect_einval(eng_gguf_add_tensor(w, "t", 99, 2, dims, data, 64), "unknown type 99");
    expect_einval(eng_gguf_add_tensor(w, "t", -1, 2, dims, data, 64), "unknown type -1");
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 0, dims, data, 64), "0 dimensions");
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 5, dims, data, 64), "5 dimensions");
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 2, NULL, data, 64), "dimensions");
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 2, dims, data, 60), "60 bytes given");
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 2, dims, data, 65), "need 64");
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 2, dims, NULL, 64), "no data");
    expect_einval(eng_gguf_add_tensor_fill(w, "t", ENG_F32, 2, dims, NULL, NULL), "no fill");
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_Q8_0, 2, dims, data, 17), "not a multiple");
    uint64_t zero[2] = {8, 0};
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 2, zero, data, 0), "dimension 1 is 0");
    uint64_t big[3] = {1ull << 32, 1ull << 32, 1};
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 2, big, data, 64), "overflows");
    uint64_t big2[4] = {1ull << 31, 1ull << 31, 4, 1};
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 3, big2, data, 64), "overflows");
    uint64_t big3[2] = {1ull << 61, 2};
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 2, big3, data, 64), "overflows");
    uint64_t big4[1] = {UINT64_MAX};
    expect_einval(eng_gguf_add_tensor(w, "t", ENG_F32, 1, big4, data, 64), "overflows");
    /* nothing refused was added */
    void *mem;
    size_t len;
    assert_int_equal(eng_gguf_write_mem(w, &mem, &len), 0);
    eng_gguf *g = NULL;
    assert_int_equal(eng_gguf_open_mem(&g, mem, len), 0);
    assert_int_equal(eng_gguf_n_kv(g), 1);
    assert_int_equal(eng_gguf_n_tensors(g), 1);
    eng_gguf_free(g);
    free(mem);

    /* a failing write leaves nothing: not the file, not a temp file */
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/atomic", tmpdir);
    assert_int_equal(core_mkdir_p(dir, 0700), 0);
    char out[4500];
    snprintf(out, sizeof out, "%s/x.gguf", dir);
    static const uint64_t fd2[] = {32, 4};
    assert_int_equal(eng_gguf_add_tensor_fill(w, "fails", ENG_F32, 2, fd2, fill_fail, NULL), 0);
    expect_err(eng_gguf_write_file(w, out), MLV_EIO, "tensor 'fails': the source went away");
    assert_false(exists(out));
    assert_int_equal(count_entries(dir), 0);
    expect_err(eng_gguf_write_mem(w, &mem, &len), MLV_EIO, "the source went away");
    assert_null(mem);
    /* an existing file is replaced only by a complete one */
    write_file(out, "old", 3);
    expect_err(eng_gguf_write_file(w, out), MLV_EIO, NULL);
    size_t ol;
    unsigned char *old = read_all(out, &ol);
    assert_int_equal(ol, 3);
    free(old);
    assert_int_equal(count_entries(dir), 1);
    expect_err(eng_gguf_write_file(w, "/nonexistent-dir/x.gguf"), MLV_EIO, "create temp file");
    expect_einval(eng_gguf_write_file(w, ""), "no output path");
    eng_gguf_writer_free(w);
}

/* ------------------------------------------------------------ GGUF -> GGUF ---- */

/* Each tensor of out against convert_ref.py's conversion of in (type, dims, digest),
 * and the metadata: every pair of `in` in `out`, in the same order, equal but for
 * general.file_type (and general.quantization_version, which Q8_0 sets to 2). */
static void check_against_ref(const char *in, const char *out, const char *outtype,
                              uint32_t want_ftype)
{
    size_t olen;
    unsigned char *img = read_all(out, &olen);
    eng_gguf *gi = NULL, *go = NULL;
    assert_int_equal(eng_gguf_open_file(&gi, in), 0);
    assert_int_equal(eng_gguf_open_mem(&go, img, olen), 0);
    int64_t ft;
    assert_int_equal(eng_gguf_get_int(go, "general.file_type", &ft), 0);
    assert_int_equal(ft, want_ftype);
    size_t extra = 0;
    for (size_t i = 0, j = 0; i < eng_gguf_n_kv(gi); i++, j++) {
        const char *k = eng_gguf_key(gi, i);
        assert_string_equal(k, eng_gguf_key(go, j));
        if (!strcmp(k, "general.file_type") || !strcmp(k, "general.quantization_version")) continue;
        if (!kv_equal(gi, i, go, j)) {
            fprintf(stderr, "key %s differs\n", k);
            fail();
        }
    }
    if (eng_gguf_find_key(gi, "general.file_type") < 0) extra++;
    if (!strcmp(outtype, "Q8_0") && eng_gguf_find_key(gi, "general.quantization_version") < 0)
        extra++;
    assert_int_equal(eng_gguf_n_kv(go), eng_gguf_n_kv(gi) + extra);

    if (!venv()) {
        fprintf(stderr, "(no venv: tensors not compared with gguf.quants)\n");
    } else {
        char *ref = NULL;
        assert_int_equal(run_ref(&ref, "convert_ref.py", "'%s' %s", in, outtype), 0);
        assert_int_equal(eng_gguf_n_tensors(go), eng_gguf_n_tensors(gi));
        const char *line = ref;
        for (size_t i = 0; i < eng_gguf_n_tensors(go); i++) {
            eng_gguf_tensor t;
            assert_int_equal(eng_gguf_tensor_info(go, i, &t), 0);
            char digest[65], dims[128] = "", mine[512];
            repo_sha256_hex(digest, img + eng_gguf_data_offset(go) + t.offset, (size_t)t.size);
            for (uint32_t d = 0, l = 0; d < t.n_dims; d++)
                l += (uint32_t)snprintf(dims + l, sizeof dims - l, "%s%" PRIu64, d ? "," : "",
                                        t.dims[d]);
            snprintf(mine, sizeof mine, "%s %d %s %s\n", t.name, t.type, dims, digest);
            const char *nl = strchr(line, '\n');
            assert_non_null(nl);
            if (strncmp(line, mine, (size_t)(nl - line + 1))) {
                fprintf(stderr, "tensor %zu:\n  engine:   %s  gguf.quants: %.*s\n", i, mine,
                        (int)(nl - line + 1), line);
                fail();
            }
            line = nl + 1;
        }
        assert_int_equal(*line, 0);
        free(ref);
    }
    eng_gguf_free(gi);
    eng_gguf_free(go);
    free(img);
}

/* A small GGUF with a type of each kind the converter meets. */
static void small_gguf(const char *path)
{
    eng_gguf_writer *w = NULL;
    assert_int_equal(eng_gguf_writer_new(&w), 0);
    assert_int_equal(eng_gguf_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(eng_gguf_set_u32(w, "general.file_type", 2), 0);
    assert_int_equal(eng_gguf_set_str(w, "general.name", "small"), 0);
    static const char *toks[] = {"x", "y"};
    assert_int_equal(eng_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, 2), 0);
    static float f32[64 * 4], norm[64];
    static uint16_t f16[64 * 2], bf16[96 * 2];
    static unsigned char q40[2 * 18 * 2], q41[2 * 20 * 2], q80[2 * 34 * 2], q4k[144 * 2],
        q6k[210 * 2];
    srand(7);
    for (size_t i = 0; i < 256; i++)
        f32[i] = (float)(rand() % 2001 - 1000) / 997.0f;
    f32[5] = 0; /* a block with zeros and one with a tie on .5 */
    for (size_t i = 0; i < 64; i++)
        norm[i] = 1.0f + (float)i / 64;
    for (size_t i = 0; i < 128; i++)
        f16[i] = eng_fp32_to_fp16((float)(rand() % 2001 - 1000) / 333.0f);
    for (size_t i = 0; i < 192; i++)
        bf16[i] = (uint16_t)(0x3c00 + rand() % 0x800);
    unsigned char *qs[] = {q40, q41, q80, q4k, q6k};
    size_t qn[] = {sizeof q40, sizeof q41, sizeof q80, sizeof q4k, sizeof q6k};
    for (size_t k = 0; k < 5; k++)
        for (size_t i = 0; i < qn[k]; i++)
            qs[k][i] = (unsigned char)rand();
    /* sane half scales: d and m in every block of the small types */
    for (size_t b = 0; b < 4; b++) {
        uint16_t d = eng_fp32_to_fp16(0.01f * (float)(b + 1));
        memcpy(q40 + b * 18, &d, 2);
        memcpy(q41 + b * 20, &d, 2);
        memcpy(q41 + b * 20 + 2, &d, 2);
        memcpy(q80 + b * 34, &d, 2);
    }
    for (size_t b = 0; b < 2; b++) {
        uint16_t d = eng_fp32_to_fp16(0.02f);
        memcpy(q4k + b * 144, &d, 2);
        memcpy(q4k + b * 144 + 2, &d, 2);
        memcpy(q6k + b * 210 + 208, &d, 2);
    }
    uint64_t d64x4[] = {64, 4}, d64[] = {64}, d64x2[] = {64, 2}, d80x2[] = {80, 2},
             d256x2[] = {256, 2}, d64x1x2[] = {64, 1, 2};
    assert_int_equal(
        eng_gguf_add_tensor(w, "token_embd.weight", ENG_F32, 2, d64x4, f32, sizeof f32), 0);
    assert_int_equal(
        eng_gguf_add_tensor(w, "blk.0.attn_norm.weight", ENG_F32, 1, d64, norm, sizeof norm), 0);
    assert_int_equal(
        eng_gguf_add_tensor(w, "blk.0.attn_q.weight", ENG_F16, 2, d64x2, f16, sizeof f16), 0);
    assert_int_equal(
        eng_gguf_add_tensor(w, "blk.0.odd_row.weight", ENG_BF16, 2, d80x2, bf16, 160 * 2), 0);
    assert_int_equal(eng_gguf_add_tensor(w, "blk.0.attn_k.weight", ENG_Q4_0, 2, (uint64_t[]){64, 2},
                                         q40, sizeof q40),
                     0);
    assert_int_equal(
        eng_gguf_add_tensor(w, "blk.0.attn_v.weight", ENG_Q4_1, 3, d64x1x2, q41, sizeof q41), 0);
    assert_int_equal(
        eng_gguf_add_tensor(w, "blk.0.ffn_up.weight", ENG_Q8_0, 2, d64x2, q80, sizeof q80), 0);
    assert_int_equal(eng_gguf_add_tensor(w, "blk.0.ffn_down.weight", ENG_Q4_K, 2,
                                         (uint64_t[]){256, 1}, q4k, 144),
                     0);
    assert_int_equal(
        eng_gguf_add_tensor(w, "blk.0.ffn_gate.weight", ENG_Q6_K, 2, d256x2, q6k, sizeof q6k), 0);
    assert_int_equal(eng_gguf_add_tensor(w, "blk.0.norm16", ENG_F16, 1, d64, f16, 128), 0);
    assert_int_equal(eng_gguf_write_file(w, path), 0);
    eng_gguf_writer_free(w);
}

static void t_convert_gguf_small(void **state)
{
    (void)state;
    char in[4400];
    snprintf(in, sizeof in, "%s", tpath("small.gguf"));
    small_gguf(in);
    static const struct {
        int type;
        const char *name;
        uint32_t ftype;
    } outs[] = {
        {ENG_F32, "F32", 0}, {ENG_F16, "F16", 1}, {ENG_BF16, "BF16", 32}, {ENG_Q8_0, "Q8_0", 7}};
    for (size_t k = 0; k < 4; k++) {
        const char *out = tpath("small-out.gguf");
        int rc = eng_convert_gguf(in, outs[k].type, out);
        if (rc) fprintf(stderr, "%s\n", core_err_last());
        assert_int_equal(rc, 0);
        check_against_ref(in, out, outs[k].name, outs[k].ftype);
        /* the rule, checked here too */
        eng_gguf *g = NULL;
        assert_int_equal(eng_gguf_open_file(&g, out), 0);
        eng_gguf_tensor t;
        assert_int_equal(eng_gguf_tensor_info(g, 1, &t), 0); /* attn_norm */
        assert_int_equal(t.type, ENG_F32);
        assert_int_equal(eng_gguf_tensor_info(g, 9, &t), 0); /* 1-D F16 */
        assert_int_equal(t.type, ENG_F32);
        assert_int_equal(eng_gguf_tensor_info(g, 3, &t), 0); /* 80-element rows */
        assert_int_equal(t.type, outs[k].type == ENG_Q8_0 ? ENG_F16 : outs[k].type);
        assert_int_equal(eng_gguf_tensor_info(g, 0, &t), 0);
        assert_int_equal(t.type, outs[k].type);
        eng_gguf_free(g);
    }
    /* F32 -> F16 -> F32 by hand: the values are the halves of the inputs */
    assert_int_equal(eng_convert_gguf(in, ENG_F16, tpath("h.gguf")), 0);
    assert_int_equal(eng_convert_gguf(tpath("h.gguf"), ENG_F32, tpath("f.gguf")), 0);
    size_t la, lb;
    unsigned char *a = read_all(in, &la), *b = read_all(tpath("f.gguf"), &lb);
    eng_gguf *ga = NULL, *gb = NULL;
    assert_int_equal(eng_gguf_open_mem(&ga, a, la), 0);
    assert_int_equal(eng_gguf_open_mem(&gb, b, lb), 0);
    eng_gguf_tensor ta, tb;
    const float *x = (const float *)tensor_bytes(ga, a, "token_embd.weight", &ta);
    const float *y = (const float *)tensor_bytes(gb, b, "token_embd.weight", &tb);
    assert_int_equal(tb.type, ENG_F32);
    for (size_t i = 0; i < 256; i++)
        assert_true(y[i] == eng_fp16_to_fp32(eng_fp32_to_fp16(x[i])));
    eng_gguf_free(ga);
    eng_gguf_free(gb);
    free(a);
    free(b);

    /* refusals, and nothing written */
    const char *out = tpath("never.gguf");
    expect_einval(eng_convert_gguf(in, ENG_OUT_AUTO, out), "explicit");
    expect_einval(eng_convert_gguf(in, ENG_Q4_0, out), "not one of");
    write_file(tpath("junk.gguf"), "not a gguf file at all, really", 30);
    expect_einval(eng_convert_gguf(tpath("junk.gguf"), ENG_F16, out), "bad magic");
    expect_err(eng_convert_gguf(tpath("missing.gguf"), ENG_F16, out), MLV_ENOTFOUND, NULL);
    /* a type without a dequantizer here is refused before anything is written */
    eng_gguf_writer *w = NULL;
    assert_int_equal(eng_gguf_writer_new(&w), 0);
    static unsigned char q2k[84];
    uint64_t d256[] = {256, 1};
    assert_int_equal(eng_gguf_add_tensor(w, "blk.0.attn_q.weight", ENG_Q2_K, 2, d256, q2k, 84), 0);
    assert_int_equal(eng_gguf_write_file(w, tpath("q2k.gguf")), 0);
    eng_gguf_writer_free(w);
    expect_err(eng_convert_gguf(tpath("q2k.gguf"), ENG_F16, out), MLV_EUNSUPPORTED,
               "tensor 'blk.0.attn_q.weight'");
    assert_false(exists(out));
}

/* Loads a converted file with llama-cpp-python when it is installed (optional). */
static void llama_cpp_loads(const char *path)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s/bin/python' -c 'import llama_cpp' 2>/dev/null",
             getenv("MLV_VENV"));
    if (system(cmd) != 0) {
        fprintf(stderr, "  (llama_cpp not importable: load check skipped)\n");
        return;
    }
    snprintf(cmd, sizeof cmd,
             "'%s/bin/python' -c 'import sys, llama_cpp; "
             "m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, verbose=False); "
             "t = m.tokenize(b\"The capital of France is\"); m.eval(t); "
             "print(\"  llama_cpp loaded it: %%d prompt tokens, vocab %%d\" %% (len(t), "
             "m.n_vocab()), file=sys.stderr)' '%s'",
             getenv("MLV_VENV"), path);
    assert_int_equal(system(cmd), 0);
}

static void t_convert_real_model(void **state)
{
    (void)state;
    const char *model = getenv("MLV_MODEL_GGUF");
    if (!model || !*model || !exists(model)) {
        fprintf(stderr, "skipped: set MLV_MODEL_GGUF (SmolLM2-135M-Instruct.Q4_1.gguf)\n");
        skip();
    }
    static const struct {
        int type;
        const char *name;
        uint32_t ftype;
    } outs[] = {{ENG_F16, "F16", 1}, {ENG_Q8_0, "Q8_0", 7}, {ENG_BF16, "BF16", 32}};
    for (size_t k = 0; k < 3; k++) {
        const char *out = tpath("real.gguf");
        double t0 = now_s();
        int rc = eng_convert_gguf(model, outs[k].type, out);
        double dt = now_s() - t0;
        if (rc) fprintf(stderr, "%s\n", core_err_last());
        assert_int_equal(rc, 0);
        struct stat st;
        assert_int_equal(stat(out, &st), 0);
        fprintf(stderr, "SmolLM2 Q4_1 -> %s: %.2f s, %.1f MB\n", outs[k].name, dt,
                (double)st.st_size / 1e6);
        check_against_ref(model, out, outs[k].name, outs[k].ftype);
        if (venv() && k < 2) llama_cpp_loads(out);
        unlink(out);
    }
}

/* -------------------------------------------------------------- HF -> GGUF ---- */

static void t_hf_round_trip(void **state)
{
    (void)state;
    const char *model = getenv("MLV_MODEL_GGUF");
    if (!model || !*model || !exists(model) || !venv()) {
        fprintf(stderr, "skipped: set MLV_MODEL_GGUF, MLV_VENV and MLV_SOURCE_DIR\n");
        skip();
    }
    const char *dir = tpath("smollm2-hf"), *out = tpath("smollm2-from-hf.gguf");
    double t0 = now_s();
    assert_int_equal(run_ref(NULL, "hf_export.py", "gguf '%s' '%s'", model, dir), 0);
    double t1 = now_s();
    int rc = eng_convert_hf_dir(dir, ENG_F32, out);
    double t2 = now_s();
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);
    fprintf(stderr, "SmolLM2 HF export %.1f s; HF (F32, 2 shards) -> GGUF F32: %.2f s\n", t1 - t0,
            t2 - t1);

    size_t li, lo;
    unsigned char *in = read_all(model, &li), *img = read_all(out, &lo);
    eng_gguf *gi = NULL, *go = NULL;
    assert_int_equal(eng_gguf_open_mem(&gi, in, li), 0);
    assert_int_equal(eng_gguf_open_mem(&go, img, lo), 0);
    /* the tensors: the dequantized originals, exactly, under the same names */
    assert_int_equal(eng_gguf_n_tensors(go), eng_gguf_n_tensors(gi));
    float *ref = NULL;
    size_t ref_cap = 0;
    for (size_t i = 0; i < eng_gguf_n_tensors(gi); i++) {
        eng_gguf_tensor ti, to;
        assert_int_equal(eng_gguf_tensor_info(gi, i, &ti), 0);
        const unsigned char *pi = in + eng_gguf_data_offset(gi) + ti.offset;
        const unsigned char *po = tensor_bytes(go, img, ti.name, &to);
        assert_int_equal(to.type, ENG_F32);
        assert_int_equal(to.n_dims, ti.n_dims);
        assert_memory_equal(to.dims, ti.dims, sizeof ti.dims);
        if (ti.n_elems > ref_cap) {
            ref = realloc(ref, (size_t)ti.n_elems * sizeof *ref);
            assert_non_null(ref);
            ref_cap = (size_t)ti.n_elems;
        }
        assert_int_equal(eng_dequantize_row(ti.type, pi, ref, (int64_t)ti.n_elems), 0);
        if (memcmp(po, ref, (size_t)to.size)) {
            fprintf(stderr, "tensor %s differs from the dequantized original\n", ti.name);
            fail();
        }
    }
    free(ref);
    /* the tokenizer and the hyper-parameters, exactly */
    static const char *keys[] = {"general.architecture",
                                 "tokenizer.ggml.model",
                                 "tokenizer.ggml.pre",
                                 "tokenizer.ggml.tokens",
                                 "tokenizer.ggml.token_type",
                                 "tokenizer.ggml.merges",
                                 "tokenizer.ggml.bos_token_id",
                                 "tokenizer.ggml.eos_token_id",
                                 "tokenizer.ggml.unknown_token_id",
                                 "tokenizer.ggml.padding_token_id",
                                 "tokenizer.ggml.add_bos_token",
                                 "tokenizer.chat_template",
                                 "llama.block_count",
                                 "llama.context_length",
                                 "llama.embedding_length",
                                 "llama.feed_forward_length",
                                 "llama.attention.head_count",
                                 "llama.attention.head_count_kv",
                                 "llama.rope.freq_base",
                                 "llama.attention.layer_norm_rms_epsilon",
                                 "llama.vocab_size",
                                 "llama.rope.dimension_count",
                                 "general.quantization_version"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        assert_same_kv(gi, go, keys[k]);
    int64_t ft;
    assert_int_equal(eng_gguf_get_int(go, "general.file_type", &ft), 0);
    assert_int_equal(ft, 0);
    const char *s;
    assert_int_equal(eng_gguf_get_str(go, "general.name", &s), 0);
    assert_string_equal(s, "smollm2-hf");
    assert_int_equal(eng_gguf_find_tensor(go, "output.weight"), -1); /* tied */
    /* and gguf-py reads back the HF values from our file */
    char *okmsg = NULL;
    assert_int_equal(run_ref(&okmsg, "hf_export.py", "check '%s' '%s'", out, dir), 0);
    assert_non_null(strstr(okmsg, "ok 272"));
    free(okmsg);
    llama_cpp_loads(out);
    eng_gguf_free(gi);
    eng_gguf_free(go);
    free(in);
    free(img);
    unlink(out);
    core_rm_rf(dir);
}

static eng_hf_file *load_dir(const char *dir, size_t *n)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    eng_hf_file *f = calloc(16, sizeof *f);
    assert_non_null(f);
    *n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        assert_true(*n < 16);
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        size_t len;
        f[*n].data = read_all(p, &len);
        f[*n].len = len;
        f[*n].name = strdup(e->d_name);
        (*n)++;
    }
    closedir(d);
    return f;
}

static void free_files(eng_hf_file *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((void *)f[i].name);
        free((void *)f[i].data);
    }
    free(f);
}

static void t_hf_qwen2(void **state)
{
    (void)state;
    if (!venv()) {
        fprintf(stderr, "skipped: set MLV_VENV and MLV_SOURCE_DIR\n");
        skip();
    }
    const char *dir = tpath("qwen2-tiny"), *out = tpath("qwen2.gguf");
    assert_int_equal(run_ref(NULL, "hf_export.py", "tiny-qwen2 '%s'", dir), 0);
    int rc = eng_convert_hf_dir(dir, ENG_OUT_AUTO, out);
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);
    eng_gguf *g = NULL;
    assert_int_equal(eng_gguf_open_file(&g, out), 0);
    /* names, shapes (ggml order), types kept (auto) but 1-D ones F32 */
    static const struct {
        const char *name;
        int type;
        uint32_t n_dims;
        uint64_t d0, d1;
    } want[] = {
        {"token_embd.weight", ENG_BF16, 2, 64, 272},
        {"blk.0.attn_norm.weight", ENG_F32, 1, 64, 1},
        {"blk.0.attn_q.weight", ENG_BF16, 2, 64, 64},
        {"blk.0.attn_q.bias", ENG_F32, 1, 64, 1},
        {"blk.0.attn_k.weight", ENG_F16, 2, 64, 32},
        {"blk.0.attn_k.bias", ENG_F32, 1, 32, 1},
        {"blk.0.attn_v.weight", ENG_F32, 2, 64, 32},
        {"blk.0.attn_v.bias", ENG_F32, 1, 32, 1},
        {"blk.0.attn_output.weight", ENG_BF16, 2, 64, 64},
        {"blk.0.ffn_norm.weight", ENG_F32, 1, 64, 1},
        {"blk.0.ffn_gate.weight", ENG_BF16, 2, 64, 80},
        {"blk.0.ffn_up.weight", ENG_BF16, 2, 64, 80},
        {"blk.0.ffn_down.weight", ENG_BF16, 2, 80, 64},
    };
    assert_int_equal(eng_gguf_n_tensors(g), 1 + 2 * 12 + 1);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        eng_gguf_tensor t;
        assert_int_equal(eng_gguf_tensor_info(g, i, &t), 0);
        assert_string_equal(t.name, want[i].name);
        assert_int_equal(t.type, want[i].type);
        assert_int_equal(t.n_dims, want[i].n_dims);
        assert_int_equal(t.dims[0], want[i].d0);
        assert_int_equal(t.dims[1], want[i].d1);
    }
    eng_gguf_tensor t;
    assert_int_equal(eng_gguf_tensor_info(g, 25, &t), 0);
    assert_string_equal(t.name, "output_norm.weight");
    assert_int_equal(eng_gguf_find_tensor(g, "output.weight"), -1);
    assert_true(eng_gguf_find_tensor(g, "blk.1.ffn_down.weight") >= 0);
    /* metadata */
    const char *s;
    int64_t iv;
    float f;
    assert_int_equal(eng_gguf_get_str(g, "general.architecture", &s), 0);
    assert_string_equal(s, "qwen2");
    assert_string_equal(eng_gguf_key(g, 0), "general.architecture");
    struct {
        const char *k;
        int64_t v;
    } ints[] = {{"qwen2.block_count", 2},
                {"qwen2.context_length", 512},
                {"qwen2.embedding_length", 64},
                {"qwen2.feed_forward_length", 80},
                {"qwen2.attention.head_count", 4},
                {"qwen2.attention.head_count_kv", 2},
                {"general.file_type", 32},
                {"general.quantization_version", 2},
                {"tokenizer.ggml.eos_token_id", 261},
                {"tokenizer.ggml.padding_token_id", 259},
                {"tokenizer.ggml.bos_token_id", 259}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (eng_gguf_get_int(g, ints[i].k, &iv) != 0 || iv != ints[i].v) {
            fprintf(stderr, "%s: %" PRId64 ", wanted %" PRId64 "\n", ints[i].k, iv, ints[i].v);
            fail();
        }
        assert_int_equal(eng_gguf_kv_type(g, (size_t)eng_gguf_find_key(g, ints[i].k)),
                         ENG_GGUF_U32);
    }
    assert_int_equal(eng_gguf_find_key(g, "qwen2.vocab_size"), -1); /* llama.cpp writes none */
    assert_int_equal(eng_gguf_find_key(g, "qwen2.rope.dimension_count"), -1);
    assert_int_equal(eng_gguf_find_key(g, "tokenizer.ggml.add_bos_token"), -1);
    assert_int_equal(eng_gguf_find_key(g, "tokenizer.ggml.unknown_token_id"), -1);
    assert_int_equal(eng_gguf_get_f32(g, "qwen2.rope.freq_base", &f), 0);
    assert_true(f == 1000000.0f);
    assert_int_equal(eng_gguf_get_f32(g, "qwen2.attention.layer_norm_rms_epsilon", &f), 0);
    assert_true(f == 1e-6f);
    assert_int_equal(eng_gguf_get_str(g, "general.name", &s), 0);
    assert_string_equal(s, "qwen2-tiny");
    assert_int_equal(eng_gguf_get_str(g, "tokenizer.ggml.model", &s), 0);
    assert_string_equal(s, "gpt2");
    assert_int_equal(eng_gguf_get_str(g, "tokenizer.ggml.pre", &s), 0);
    assert_string_equal(s, "qwen2");
    assert_int_equal(eng_gguf_get_str(g, "tokenizer.chat_template", &s), 0);
    assert_non_null(strstr(s, "<|im_start|>{{ m['role'] }}"));
    int et;
    uint64_t n;
    const void *data;
    assert_int_equal(eng_gguf_arr_data(g, "tokenizer.ggml.token_type", &et, &n, &data), 0);
    assert_int_equal(et, ENG_GGUF_I32);
    assert_int_equal(n, 272);
    const int32_t *tt = data;
    for (size_t i = 0; i < 259; i++)
        assert_int_equal(tt[i], 1);
    assert_int_equal(tt[259], 3);
    assert_int_equal(tt[261], 3);
    assert_int_equal(tt[262], 4); /* <tool_call>: added, not special */
    assert_int_equal(tt[263], 3); /* <|fake|>: not special, but looks it */
    assert_int_equal(tt[264], 4);
    for (size_t i = 265; i < 272; i++)
        assert_int_equal(tt[i], 5);
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 0, &s), 0);
    assert_string_equal(s, "\xc4\x80"); /* byte 0 */
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 258, &s), 0);
    assert_string_equal(s, "\xc4\xa0the");
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 264, &s), 0);
    assert_string_equal(s, " hi"); /* ▁ as a space */
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 270, &s), 0);
    assert_string_equal(s, "[PAD270]");
    assert_int_equal(eng_gguf_arr_info(g, "tokenizer.ggml.merges", &et, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.merges", 2, &s), 0);
    assert_string_equal(s, "\xc4\xa0t he");
    eng_gguf_free(g);
    char *okmsg = NULL;
    assert_int_equal(run_ref(&okmsg, "hf_export.py", "check '%s' '%s'", out, dir), 0);
    assert_non_null(strstr(okmsg, "ok 26"));
    free(okmsg);
    llama_cpp_loads(out);

    /* F32 and Q8_0 (the 80-element rows of ffn_down fall back to F16) */
    assert_int_equal(eng_convert_hf_dir(dir, ENG_F32, out), 0);
    assert_int_equal(run_ref(&okmsg, "hf_export.py", "check '%s' '%s'", out, dir), 0);
    free(okmsg);
    assert_int_equal(eng_convert_hf_dir(dir, ENG_Q8_0, out), 0);
    assert_int_equal(eng_gguf_open_file(&g, out), 0);
    assert_int_equal(eng_gguf_get_int(g, "general.file_type", &iv), 0);
    assert_int_equal(iv, 7);
    eng_gguf_tensor_info(g, (size_t)eng_gguf_find_tensor(g, "blk.1.ffn_down.weight"), &t);
    assert_int_equal(t.type, ENG_F16);
    eng_gguf_tensor_info(g, (size_t)eng_gguf_find_tensor(g, "blk.1.ffn_up.weight"), &t);
    assert_int_equal(t.type, ENG_Q8_0);
    eng_gguf_tensor_info(g, (size_t)eng_gguf_find_tensor(g, "blk.1.attn_q.bias"), &t);
    assert_int_equal(t.type, ENG_F32);
    eng_gguf_free(g);

    /* the same folder from memory: the same bytes (the name comes from the folder,
     * so it is set in both through _name_or_path) */
    size_t nf;
    eng_hf_file *files = load_dir(dir, &nf);
    for (size_t i = 0; i < nf; i++)
        if (!strcmp(files[i].name, "config.json")) {
            char *cfg = strdup(files[i].data);
            char *brace = strrchr(cfg, '}');
            *brace = 0;
            core_buf nb = {0};
            core_buf_appendf(&nb, "%s, \"_name_or_path\": \"Qwen/qwen2-tiny\"}", cfg);
            free(cfg);
            free((void *)files[i].data);
            files[i].len = nb.len;
            files[i].data = core_buf_take(&nb);
            write_file(tpath("qwen2-tiny/config.json"), files[i].data, files[i].len);
        }
    void *mem;
    size_t mlen;
    assert_int_equal(eng_convert_hf_mem(files, nf, ENG_Q8_0, &mem, &mlen), 0);
    assert_int_equal(eng_convert_hf_dir(dir, ENG_Q8_0, out), 0);
    size_t flen;
    unsigned char *file = read_all(out, &flen);
    assert_int_equal(flen, mlen);
    assert_memory_equal(file, mem, mlen);
    free(file);
    free(mem);
    free_files(files, nf);
    core_rm_rf(dir);
    unlink(out);
}

/* ------------------------------------------------------ malformed HF folders ---- */

/* A tiny llama folder built here, in memory, which converts; the malformed cases are
 * variants of it. */
typedef struct st_def {
    const char *name, *dtype;
    uint32_t nd;
    uint64_t shape[4];
} st_def;

static const st_def tiny_tensors[] = {
    {"model.embed_tokens.weight", "F32", 2, {8, 32}},
    {"model.layers.0.input_layernorm.weight", "F32", 1, {32}},
    {"model.layers.0.self_attn.q_proj.weight", "F32", 2, {32, 32}},
    {"model.layers.0.self_attn.k_proj.weight", "F16", 2, {16, 32}},
    {"model.layers.0.self_attn.k_proj.bias", "BF16", 1, {16}},
    {"model.norm.weight", "BF16", 1, {32}},
    {"lm_head.weight", "F32", 2, {8, 32}},
};
#define N_TINY (sizeof tiny_tensors / sizeof tiny_tensors[0])

static size_t st_esize(const char *dt)
{
    return !strcmp(dt, "F32") ? 4 : 2;
}

/* header (padded with spaces to a multiple of 8) and data_len bytes of data (F32 q_proj
 * values row * 100 + col; halves of small integers elsewhere) */
static unsigned char *st_bytes(const char *header, size_t data_len, const void *data, size_t *len)
{
    core_buf b = {0};
    size_t hl = strlen(header), padded = (hl + 7) / 8 * 8;
    w_le(&b, padded, 8);
    core_buf_append(&b, header, hl);
    for (size_t i = hl; i < padded; i++)
        core_buf_append(&b, " ", 1);
    if (data)
        core_buf_append(&b, data, data_len);
    else
        for (size_t i = 0; i < data_len; i++)
            core_buf_append(&b, "\x01", 1);
    *len = b.len;
    return (unsigned char *)core_buf_take(&b);
}

static unsigned char *tiny_st(size_t *len)
{
    core_buf h = {0}, d = {0};
    core_buf_appendf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < N_TINY; i++) {
        const st_def *t = &tiny_tensors[i];
        uint64_t n = 1;
        for (uint32_t k = 0; k < t->nd; k++)
            n *= t->shape[k];
        size_t at = d.len;
        for (uint64_t e = 0; e < n; e++) {
            if (!strcmp(t->dtype, "F32")) {
                float v = t->nd == 2 ? (float)(e / t->shape[1] * 100 + e % t->shape[1]) : (float)e;
                core_buf_append(&d, &v, 4);
            } else {
                uint16_t h16 =
                    !strcmp(t->dtype, "F16") ? eng_fp32_to_fp16((float)e) : (uint16_t)(0x3f80 + e);
                core_buf_append(&d, &h16, 2);
            }
        }
        core_buf_appendf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, t->dtype);
        for (uint32_t k = 0; k < t->nd; k++)
            core_buf_appendf(&h, "%s%" PRIu64, k ? "," : "", t->shape[k]);
        core_buf_appendf(&h, "],\"data_offsets\":[%zu,%zu]}", at, d.len);
        assert_int_equal(d.len - at, n * st_esize(t->dtype));
    }
    core_buf_appendf(&h, "}");
    char *hs = core_buf_take(&h);
    unsigned char *r = st_bytes(hs, d.len, d.data, len);
    free(hs);
    core_buf_free(&d);
    return r;
}

static const char *tiny_config =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":32,\"num_attention_heads\":2,"
    "\"num_key_value_heads\":1,\"num_hidden_layers\":1,\"intermediate_size\":64,"
    "\"vocab_size\":8,\"max_position_embeddings\":64,\"rms_norm_eps\":1e-05,"
    "\"rope_theta\":10000,\"bos_token_id\":5}";
static const char *tiny_tokenizer =
    "{\"added_tokens\":[{\"id\":4,\"content\":\"<s>\",\"special\":true},"
    "{\"id\":6,\"content\":\"</s>\",\"special\":true}],"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
    "{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]},"
    "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c c\":3,\"<s>\":4,"
    "\"</s>\":6},\"merges\":[[\"a\",\"b\"],[\"c\",\" c\"]]}}";
static const char *tiny_tcfg = "{\"bos_token\":{\"content\":\"<s>\"},\"eos_token\":\"</s>\"}";

typedef struct tiny {
    eng_hf_file f[6];
    size_t n;
    unsigned char *st;
    size_t st_len;
} tiny;

static void tiny_make(tiny *t)
{
    memset(t, 0, sizeof *t);
    t->st = tiny_st(&t->st_len);
    t->f[0] = (eng_hf_file){"config.json", tiny_config, strlen(tiny_config)};
    t->f[1] = (eng_hf_file){"tokenizer.json", tiny_tokenizer, strlen(tiny_tokenizer)};
    t->f[2] = (eng_hf_file){"tokenizer_config.json", tiny_tcfg, strlen(tiny_tcfg)};
    t->f[3] = (eng_hf_file){"model.safetensors", t->st, t->st_len};
    t->n = 4;
}

static int tiny_convert(const tiny *t, int outtype, void **mem, size_t *len)
{
    return eng_convert_hf_mem(t->f, t->n, outtype, mem, len);
}

static void t_hf_tiny_llama(void **state)
{
    (void)state;
    tiny t;
    tiny_make(&t);
    void *mem;
    size_t len;
    int rc = tiny_convert(&t, ENG_OUT_AUTO, &mem, &len);
    if (rc) fprintf(stderr, "%s\n", core_err_last());
    assert_int_equal(rc, 0);
    eng_gguf *g = NULL;
    assert_int_equal(eng_gguf_open_mem(&g, mem, len), 0);
    const char *s;
    int64_t iv;
    assert_int_equal(eng_gguf_get_str(g, "general.name", &s), 0);
    assert_string_equal(s, "llama"); /* no folder, no _name_or_path */
    assert_int_equal(eng_gguf_get_str(g, "tokenizer.ggml.pre", &s), 0);
    assert_string_equal(s, "gpt2");
    assert_int_equal(eng_gguf_get_int(g, "llama.rope.dimension_count", &iv), 0);
    assert_int_equal(iv, 16);
    assert_int_equal(eng_gguf_get_int(g, "llama.vocab_size", &iv), 0);
    assert_int_equal(iv, 8);
    assert_int_equal(eng_gguf_get_int(g, "general.file_type", &iv), 0);
    assert_int_equal(iv, 0);
    /* tokenizer_config's {content} and string forms, then config.json's bos (ignored:
     * tokenizer_config came first); add_bos from the TemplateProcessing */
    assert_int_equal(eng_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &iv), 0);
    assert_int_equal(iv, 4);
    assert_int_equal(eng_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &iv), 0);
    assert_int_equal(iv, 6);
    bool bv;
    assert_int_equal(eng_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &bv), 0);
    assert_true(bv);
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.merges", 1, &s), 0);
    assert_string_equal(s, "c \xc4\xa0"
                           "c"); /* the space inside a part as U+0120 */
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 5, &s), 0);
    assert_string_equal(s, "[PAD5]");
    assert_int_equal(eng_gguf_arr_str(g, "tokenizer.ggml.tokens", 7, &s), 0);
    assert_string_equal(s, "[PAD7]");
    eng_gguf_tensor ti;
    const unsigned char *p = tensor_bytes(g, mem, "output.weight", &ti);
    assert_int_equal(ti.type, ENG_F32);
    /* q rows permuted for 2 heads of 16: row r <- h*16 + (r%2)*8 + (r%16)/2 */
    p = tensor_bytes(g, mem, "blk.0.attn_q.weight", &ti);
    assert_int_equal(ti.type, ENG_F32);
    for (uint64_t r = 0; r < 32; r++) {
        uint64_t src = r / 16 * 16 + (r % 2) * 8 + (r % 16) / 2;
        float v;
        memcpy(&v, p + (r * 32 + 3) * 4, 4);
        assert_true(v == (float)(src * 100 + 3));
    }
    /* k: one kv head of 16 rows, F16 kept; its BF16 bias permuted the same way, F32 */
    p = tensor_bytes(g, mem, "blk.0.attn_k.weight", &ti);
    assert_int_equal(ti.type, ENG_F16);
    for (uint64_t r = 0; r < 16; r++) {
        uint64_t src = (r % 2) * 8 + r / 2;
        uint16_t h;
        memcpy(&h, p + (r * 32 + 1) * 2, 2);
        assert_true(eng_fp16_to_fp32(h) == (float)(src * 32 + 1));
    }
    p = tensor_bytes(g, mem, "blk.0.attn_k.bias", &ti);
    assert_int_equal(ti.type, ENG_F32);
    for (uint64_t r = 0; r < 16; r++) {
        float v;
        memcpy(&v, p + r * 4, 4);
        assert_true(v == eng_bf16_to_fp32((uint16_t)(0x3f80 + (r % 2) * 8 + r / 2)));
    }
    eng_gguf_free(g);
    free(mem);

    /* tied: lm_head is dropped */
    tiny t2 = t;
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%.*s,\"tie_word_embeddings\":true}", (int)strlen(tiny_config) - 1,
             tiny_config);
    t2.f[0].data = cfg;
    t2.f[0].len = strlen(cfg);
    assert_int_equal(tiny_convert(&t2, ENG_BF16, &mem, &len), 0);
    assert_int_equal(eng_gguf_open_mem(&g, mem, len), 0);
    assert_int_equal(eng_gguf_find_tensor(g, "output.weight"), -1);
    assert_int_equal(eng_gguf_n_tensors(g), N_TINY - 1);
    assert_int_equal(eng_gguf_get_int(g, "general.file_type", &iv), 0);
    assert_int_equal(iv, 32);
    eng_gguf_free(g);
    free(mem);

    /* on disk, into a file; a bad folder writes nothing */
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/tiny-llama", tmpdir);
    assert_int_equal(core_mkdir_p(dir, 0700), 0);
    for (size_t i = 0; i < t.n; i++) {
        char p2[4500];
        snprintf(p2, sizeof p2, "%s/%s", dir, t.f[i].name);
        write_file(p2, t.f[i].data, t.f[i].len);
    }
    write_file(tpath("tiny-llama/README.md"), "ignored", 7);
    assert_int_equal(eng_convert_hf_dir(dir, ENG_F16, tpath("tl.gguf")), 0);
    assert_int_equal(eng_gguf_open_file(&g, tpath("tl.gguf")), 0);
    assert_int_equal(eng_gguf_get_str(g, "general.name", &s), 0);
    assert_string_equal(s, "tiny-llama");
    eng_gguf_free(g);
    write_file(tpath("tiny-llama/model.safetensors"), "12345678", 8);
    size_t before = count_entries(tmpdir);
    expect_einval(eng_convert_hf_dir(dir, ENG_F16, tpath("tl2.gguf")), "model.safetensors");
    assert_int_equal(count_entries(tmpdir), before);
    expect_err(eng_convert_hf_dir(tpath("no-such-dir"), ENG_F16, tpath("tl2.gguf")), MLV_ENOTFOUND,
               NULL);
    expect_einval(eng_convert_hf_dir(tpath("tl.gguf"), ENG_F16, tpath("tl2.gguf")), NULL);
    core_rm_rf(dir);
    free(t.st);
}

/* The tiny folder with file `name` replaced by `data` (NULL: removed). */
static int tiny_variant(const char *name, const void *data, size_t len)
{
    tiny t;
    tiny_make(&t);
    size_t n = 0;
    eng_hf_file f[6];
    bool replaced = false;
    for (size_t i = 0; i < t.n; i++) {
        if (!strcmp(t.f[i].name, name)) {
            replaced = true;
            if (!data) continue;
            f[n++] = (eng_hf_file){name, data, len};
        } else {
            f[n++] = t.f[i];
        }
    }
    if (!replaced) f[n++] = (eng_hf_file){name, data, len};
    void *mem = (void *)1;
    size_t ml = 1;
    int rc = eng_convert_hf_mem(f, n, ENG_F16, &mem, &ml);
    if (rc) assert_null(mem);
    free(mem);
    free(t.st);
    return rc;
}

static void expect_st_invalid(const char *header, size_t data_len, const char *want)
{
    size_t len;
    unsigned char *b = st_bytes(header, data_len, NULL, &len);
    expect_einval(tiny_variant("model.safetensors", b, len), want);
    free(b);
}

static void t_hf_malformed(void **state)
{
    (void)state;
    const char *w =
        "\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[32],\"data_offsets\":[0,128]}";
    char h[2048];
    /* the header length */
    unsigned char raw[16] = {0};
    expect_einval(tiny_variant("model.safetensors", raw, 5), "model.safetensors: shorter than");
    raw[0] = 100; /* 100 header bytes, 8 there */
    expect_einval(tiny_variant("model.safetensors", raw, 16), "header length 100 exceeds");
    memset(raw, 0xff, 8);
    expect_einval(tiny_variant("model.safetensors", raw, 16), "header length");
    memset(raw, 0, 8);
    raw[3] = 0x10; /* 256 MiB */
    expect_einval(tiny_variant("model.safetensors", raw, 16), "100 MiB");
    /* the JSON */
    expect_st_invalid("{\"a\":", 0, "header is not valid JSON");
    expect_st_invalid("[1,2]", 0, "not a JSON object");
    snprintf(h, sizeof h, "{%s,%s}", w, w);
    expect_st_invalid(h, 128, "not valid JSON"); /* a duplicate key */
    expect_st_invalid("{\"model.norm.weight\":[1]}", 128,
                      "model.safetensors: tensor 'model.norm.weight': needs dtype");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[32]}}", 128,
                      "data_offsets");
    /* dtypes */
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"I64\",\"shape\":[16],"
                      "\"data_offsets\":[0,128]}}",
                      128, "tensor 'model.norm.weight': dtype 'I64' is not supported");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F64\",\"shape\":[16],"
                      "\"data_offsets\":[0,128]}}",
                      128, "dtype 'F64'");
    expect_st_invalid("{\"x\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8,
                      "F8_E4M3");
    /* shapes */
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[],"
                      "\"data_offsets\":[0,4]}}",
                      4, "0 dimensions");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,32],"
                      "\"data_offsets\":[0,128]}}",
                      128, "5 dimensions");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[0,32],"
                      "\"data_offsets\":[0,0]}}",
                      0, "positive integers");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[-32],"
                      "\"data_offsets\":[0,128]}}",
                      128, "positive integers");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[\"32\"],"
                      "\"data_offsets\":[0,128]}}",
                      128, "positive integers");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4294967296,"
                      "4294967296],\"data_offsets\":[0,128]}}",
                      128, "overflows");
    /* offsets */
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[32],"
                      "\"data_offsets\":[0,128]}}",
                      64, "data_offsets [0, 128] are past the 64 data bytes");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[32],"
                      "\"data_offsets\":[128,0]}}",
                      128, "bad data_offsets");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[32],"
                      "\"data_offsets\":[-1,127]}}",
                      128, "bad data_offsets");
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[32],"
                      "\"data_offsets\":[0,18446744073709551615]}}",
                      128, NULL);
    expect_st_invalid("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[32],"
                      "\"data_offsets\":[0,124]}}",
                      124, "124 bytes for a F32 tensor of 32 elements");
    snprintf(h, sizeof h,
             "{%s,\"lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[1,32],"
             "\"data_offsets\":[64,192]}}",
             w);
    expect_st_invalid(h, 192, "tensor 'lm_head.weight' overlaps tensor 'model.norm.weight'");
    snprintf(h, sizeof h,
             "{%s,\"lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[1,32],"
             "\"data_offsets\":[136,264]}}",
             w);
    expect_st_invalid(h, 264, "unindexed bytes before tensor 'lm_head.weight'");
    snprintf(h, sizeof h, "{%s}", w);
    expect_st_invalid(h, 130, "130 data bytes but the tensors cover 128");

    /* folder level */
    expect_einval(tiny_variant("config.json", NULL, 0), "no config.json");
    expect_einval(tiny_variant("tokenizer.json", NULL, 0), "no tokenizer.json");
    expect_einval(tiny_variant("model.safetensors", NULL, 0), "no *.safetensors");
    const char *c1 = "{\"architectures\":[\"MistralForCausalLM\"],\"hidden_size\":32}";
    expect_einval(tiny_variant("config.json", c1, strlen(c1)),
                  "architecture 'MistralForCausalLM' is not supported");
    const char *c2 = "{\"model_type\":\"llama\"}";
    expect_einval(tiny_variant("config.json", c2, strlen(c2)), "architectures");
    expect_einval(tiny_variant("config.json", "{", 1), "config.json: not valid JSON");
    expect_einval(tiny_variant("config.json", "[]", 2), "not a JSON object");
    const char *c3 = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":32,"
                     "\"num_attention_heads\":2,\"num_hidden_layers\":1}";
    expect_einval(tiny_variant("config.json", c3, strlen(c3)), "'vocab_size' is missing");
    const char *c4 = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":-32,"
                     "\"num_attention_heads\":2,\"num_hidden_layers\":1,\"vocab_size\":8}";
    expect_einval(tiny_variant("config.json", c4, strlen(c4)), "'hidden_size' is not a positive");
    const char *c5 = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":32,"
                     "\"num_attention_heads\":3,\"num_hidden_layers\":1,\"vocab_size\":8}";
    expect_einval(tiny_variant("config.json", c5, strlen(c5)), "not a multiple");
    const char *c6 = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":32,"
                     "\"num_attention_heads\":2,\"num_hidden_layers\":1,\"vocab_size\":4}";
    expect_einval(tiny_variant("config.json", c6, strlen(c6)), "not below vocab_size 4");
    const char *c7 = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":32,"
                     "\"num_attention_heads\":32,\"num_hidden_layers\":1,\"vocab_size\":8}";
    expect_einval(tiny_variant("config.json", c7, strlen(c7)), "rotary heads");
    /* a layer index past num_hidden_layers, an unknown name */
    size_t len;
    unsigned char *b = st_bytes("{\"model.layers.1.input_layernorm.weight\":{\"dtype\":\"F32\","
                                "\"shape\":[2],\"data_offsets\":[0,8]}}",
                                8, NULL, &len);
    expect_einval(tiny_variant("model.safetensors", b, len),
                  "cannot map tensor 'model.layers.1.input_layernorm.weight'");
    free(b);
    b = st_bytes("{\"vision.tower\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                 NULL, &len);
    expect_einval(tiny_variant("model.safetensors", b, len), "cannot map tensor 'vision.tower'");
    free(b);
    /* the same tensor in two shards; an index that disagrees */
    b = st_bytes("{\"lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}}",
                 8, NULL, &len);
    expect_einval(tiny_variant("model-extra.safetensors", b, len),
                  "tensor 'lm_head.weight' is in both model-extra.safetensors and "
                  "model.safetensors");
    free(b);
    const char *ix = "{\"weight_map\":{\"model.norm.weight\":\"model.safetensors\"}}";
    expect_einval(tiny_variant("model.safetensors.index.json", ix, strlen(ix)), "lists 1 tensors");
    const char *ix2 = "{\"weight_map\":{\"model.norm.weight\":\"model-2.safetensors\"}}";
    expect_einval(tiny_variant("model.safetensors.index.json", ix2, strlen(ix2)), "another file");
    const char *ix3 = "{\"weight_map\":{\"nope\":\"model.safetensors\"}}";
    expect_einval(tiny_variant("model.safetensors.index.json", ix3, strlen(ix3)),
                  "lists tensor 'nope'");
    /* tokenizer problems */
    const char *t1 = "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}";
    expect_err(tiny_variant("tokenizer.json", t1, strlen(t1)), MLV_EUNSUPPORTED, "BPE");
    const char *t2 = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1}}}";
    expect_einval(tiny_variant("tokenizer.json", t2, strlen(t2)), "bad id");
    const char *t3 = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\"]]},"
                     "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}";
    expect_einval(tiny_variant("tokenizer.json", t3, strlen(t3)), "merge 0");
    const char *t4 = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}},"
                     "\"pre_tokenizer\":{\"type\":\"Whitespace\"}}";
    expect_err(tiny_variant("tokenizer.json", t4, strlen(t4)), MLV_EUNSUPPORTED,
               "pre-tokenizer not recognised");
    const char *t5 = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}},"
                     "\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"added_tokens\":[{\"id\":9,"
                     "\"content\":\"x\"}]}";
    expect_einval(tiny_variant("tokenizer.json", t5, strlen(t5)), "not below vocab_size");
    const char *tc = "{\"eos_token\":\"</s>\",\"pad_token\":\"<s>\"}";
    assert_int_equal(tiny_variant("tokenizer_config.json", tc, strlen(tc)), 0);
    const char *c8 = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":32,"
                     "\"num_attention_heads\":2,\"num_hidden_layers\":1,\"vocab_size\":8,"
                     "\"mask_token_id\":8}";
    expect_einval(tiny_variant("config.json", c8, strlen(c8)), "mask token id 8");
    /* argument checks */
    void *mem;
    size_t ml;
    tiny t;
    tiny_make(&t);
    expect_einval(eng_convert_hf_mem(t.f, t.n, ENG_Q4_0, &mem, &ml), "out-type");
    eng_hf_file dup[5];
    memcpy(dup, t.f, sizeof(eng_hf_file) * 4);
    dup[4] = t.f[0];
    expect_einval(eng_convert_hf_mem(dup, 5, ENG_F32, &mem, &ml), "given twice");
    expect_einval(eng_convert_hf_mem(NULL, 1, ENG_F32, &mem, &ml), "no files");
    free(t.st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_writer_round_trip), cmocka_unit_test(t_writer_vs_gguf_py),
        cmocka_unit_test(t_writer_invalid),    cmocka_unit_test(t_convert_gguf_small),
        cmocka_unit_test(t_hf_tiny_llama),     cmocka_unit_test(t_hf_malformed),
        cmocka_unit_test(t_hf_qwen2),          cmocka_unit_test(t_convert_real_model),
        cmocka_unit_test(t_hf_round_trip),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
