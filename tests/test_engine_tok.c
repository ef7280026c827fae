/* tests/test_engine_tok.c: tokenizers and chat templates (engine/tokenizer.c,
 * engine/unicode.c, engine/chat.c) against llama.cpp as the independent reference:
 * golden token ids, detokenized text, end-of-generation ids and every token's piece,
 * recorded by tests/ref/make_tok_golden.py through llama-cpp-python, for the real model
 * (SmolLM2, byte-level BPE, "smollm") and for small fixtures that
 * tests/ref/make_tok_fixtures.py rebuilds here byte for byte (SentencePiece with byte
 * fallback; byte-level BPE with the default, gpt-2, llama-bpe, qwen2, deepseek-r1-qwen
 * and smollm pre-tokenizers); chat templates against jinja2's rendering; and the
 * refusals: malformed metadata (GGUF images built here) and invalid UTF-8.
 * Comparisons are exact. The real-model tests skip when $MLV_MODEL_GGUF is absent. */
/* cmocka needs these three first, in this order. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/unicode.h"

static char tmpdir[4096];

static int setup_tmp(void **state)
{
    (void)state;
    make_temp_dir(tmpdir, sizeof tmpdir, "engine-tok");
    return 0;
}

static int teardown_tmp(void **state)
{
    (void)state;
    core_rm_rf(tmpdir);
    return 0;
}

/* ------------------------------------------------------------------ helpers ---- */

static bool source_available(void)
{
    const char *src = getenv("MLV_SOURCE_DIR");
    return src && *src;
}

static json_t *load_golden(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/golden/%s", getenv("MLV_SOURCE_DIR"), name);
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j) fprintf(stderr, "%s: %s (line %d)\n", path, err.text, err.line);
    assert_non_null(j);
    return j;
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s) fprintf(stderr, "golden: no string '%s'\n", key);
    assert_non_null(s);
    return s;
}

static json_int_t jint(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

/* Hex to bytes; *out owned by the caller. */
static unsigned char *unhex(const char *hex, size_t *n)
{
    size_t l = strlen(hex);
    assert_int_equal(l % 2, 0);
    unsigned char *p = malloc(l / 2 + 1);
    assert_non_null(p);
    if (l) assert_int_equal(core_unhex(p, l / 2, hex), 0);
    p[l / 2] = 0;
    *n = l / 2;
    return p;
}

static void sha256_hex(const void *p, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(p, n, md, &len, EVP_sha256(), NULL), 1);
    core_hex(out, md, 32);
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 80; i++)
        fprintf(stderr, " %" PRId32, ids[i]);
    fprintf(stderr, n > 80 ? " ...\n" : "\n");
}

static void print_bytes(const char *what, const void *p, size_t n)
{
    fprintf(stderr, "  %s: \"", what);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = ((const unsigned char *)p)[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fprintf(stderr, "\"\n");
}

/* ------------------------------------------------------ golden comparisons ---- */

/* Checks a tokenizer against one golden vocabulary object: n_vocab, BOS/EOS, the EOG
 * set, the digests of every piece, and every case. Returns the number of mismatches
 * (each printed). */
static int check_vocab(const eng_tokenizer *t, const json_t *v, const json_t *strings,
                       const char *label)
{
    int bad = 0;
    assert_int_equal(eng_tokenizer_n_vocab(t), jint(v, "n_vocab"));
    assert_int_equal(eng_token_bos(t), jint(v, "bos"));
    assert_int_equal(eng_token_eos(t), jint(v, "eos"));

    /* end of generation: exactly the golden ids */
    const json_t *eog = json_object_get(v, "eog");
    size_t n_vocab = eng_tokenizer_n_vocab(t), k = 0;
    for (size_t id = 0; id < n_vocab; id++) {
        bool want =
            k < json_array_size(eog) && (size_t)json_integer_value(json_array_get(eog, k)) == id;
        if (want) k++;
        if (eng_token_is_eog(t, (int32_t)id) != want) {
            fprintf(stderr, "%s: token %zu: is_eog %d, llama.cpp %d\n", label, id, !want, want);
            bad++;
        }
    }
    assert_false(eng_token_is_eog(t, -1));
    assert_false(eng_token_is_eog(t, (int32_t)n_vocab));

    /* every piece, with and without special rendering */
    for (int special = 0; special < 2; special++) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        assert_non_null(md);
        assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
        core_buf b = {0};
        for (size_t id = 0; id < n_vocab; id++) {
            b.len = 0;
            assert_int_equal(eng_token_piece(t, (int32_t)id, special, &b), 0);
            unsigned char len[4] = {(unsigned char)b.len, (unsigned char)(b.len >> 8),
                                    (unsigned char)(b.len >> 16), (unsigned char)(b.len >> 24)};
            EVP_DigestUpdate(md, len, 4);
            if (b.len) EVP_DigestUpdate(md, b.data, b.len);
        }
        core_buf_free(&b);
        unsigned char d[32];
        char hex[65];
        assert_int_equal(EVP_DigestFinal_ex(md, d, NULL), 1);
        EVP_MD_CTX_free(md);
        core_hex(hex, d, 32);
        const char *want = jstr(v, special ? "piece_special_sha256" : "piece_sha256");
        if (strcmp(hex, want) != 0) {
            fprintf(stderr, "%s: pieces (render_special %d) differ from llama.cpp's\n", label,
                    special);
            bad++;
        }
    }

    /* the cases */
    const json_t *cases = json_object_get(v, "cases");
    assert_true(json_array_size(cases) > 0);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        size_t si = (size_t)jint(c, "s"), len;
        const json_t *str = json_array_get(strings, si);
        unsigned char *text = unhex(jstr(str, "hex"), &len);
        bool add_special = json_is_true(json_object_get(c, "add_special"));
        bool parse_special = json_is_true(json_object_get(c, "parse_special"));
        const json_t *want = json_object_get(c, "ids");

        int32_t *ids = NULL;
        size_t n = 0;
        int rc = eng_tokenize(t, (const char *)text, len, add_special, parse_special, &ids, &n);
        if (rc != 0) fprintf(stderr, "%s: tokenize failed: %s\n", label, core_err_last());
        assert_int_equal(rc, 0);
        bool same = n == json_array_size(want);
        for (size_t j = 0; same && j < n; j++)
            same = ids[j] == json_integer_value(json_array_get(want, j));
        if (!same) {
            fprintf(stderr, "%s: string %zu (add_special %d, parse_special %d) differs:\n", label,
                    si, add_special, parse_special);
            print_bytes("text", text, len);
            int32_t *w = malloc((json_array_size(want) + 1) * sizeof *w);
            assert_non_null(w);
            for (size_t j = 0; j < json_array_size(want); j++)
                w[j] = (int32_t)json_integer_value(json_array_get(want, j));
            print_ids("llama.cpp", w, json_array_size(want));
            print_ids("engine   ", ids, n);
            free(w);
            bad++;
        }

        /* detokenize llama.cpp's ids, plain and with specials rendered */
        int32_t *wids = malloc((json_array_size(want) + 1) * sizeof *wids);
        assert_non_null(wids);
        for (size_t j = 0; j < json_array_size(want); j++)
            wids[j] = (int32_t)json_integer_value(json_array_get(want, j));
        size_t plain_len;
        const char *plain_hex = json_string_value(json_object_get(c, "text"));
        unsigned char *plain = plain_hex ? unhex(plain_hex, &plain_len) : NULL;
        if (!plain) {
            plain = malloc(len + 1);
            assert_non_null(plain);
            memcpy(plain, text, len);
            plain_len = len;
        }
        size_t sp_len;
        const char *sp_hex = json_string_value(json_object_get(c, "text_special"));
        unsigned char *sp = sp_hex ? unhex(sp_hex, &sp_len) : NULL;
        for (int special = 0; special < 2; special++) {
            const unsigned char *exp = special && sp ? sp : plain;
            size_t exp_len = special && sp ? sp_len : plain_len;
            core_buf b = {0};
            assert_int_equal(eng_detokenize(t, wids, json_array_size(want), special, &b), 0);
            if (b.len != exp_len || (exp_len && memcmp(b.data, exp, exp_len) != 0)) {
                fprintf(stderr, "%s: string %zu: detokenized text (render_special %d) differs:\n",
                        label, si, special);
                print_bytes("llama.cpp", exp, exp_len);
                print_bytes("engine   ", b.data, b.len);
                bad++;
            }
            core_buf_free(&b);
        }
        free(sp);
        free(plain);
        free(wids);
        free(ids);
        free(text);
    }
    return bad;
}

static eng_tokenizer *load_file(const char *path, eng_gguf **g)
{
    eng_tokenizer *t = NULL;
    int rc = eng_gguf_open_file(g, path);
    if (rc) fprintf(stderr, "%s: %s\n", path, core_err_last());
    assert_int_equal(rc, 0);
    rc = eng_tokenizer_load(&t, *g);
    if (rc) fprintf(stderr, "%s: %s\n", path, core_err_last());
    assert_int_equal(rc, 0);
    return t;
}

static const char *model_path(void)
{
    const char *p = getenv("MLV_MODEL_GGUF");
    if (!p || !*p || access(p, R_OK) != 0) return NULL;
    return p;
}

/* ---------------------------------------------------------- the real model ---- */

static void t_smollm2_golden(void **state)
{
    (void)state;
    const char *path = model_path();
    if (!path) {
        fprintf(stderr, "skipped: no model at $MLV_MODEL_GGUF (scripts/fetch-model.sh)\n");
        skip();
    }
    assert_true(source_available());
    json_t *gold = load_golden("tok_smollm2.json");
    eng_gguf *g = NULL;
    eng_tokenizer *t = load_file(path, &g);
    int bad = check_vocab(t, gold, json_object_get(gold, "strings"), "smollm2");
    assert_int_equal(bad, 0);
    eng_tokenizer_free(t);
    eng_gguf_free(g);
    json_decref(gold);
}

/* ~100 KB: every golden string, joined by blank lines, repeated (as make_tok_golden.py). */
static char *big_text(const json_t *gold, size_t *len)
{
    const json_t *strings = json_object_get(gold, "strings"), *big = json_object_get(gold, "big");
    core_buf unit = {0};
    for (size_t i = 0; i < json_array_size(strings); i++) {
        size_t n;
        unsigned char *s = unhex(jstr(json_array_get(strings, i), "hex"), &n);
        if (i) core_buf_append(&unit, "\n\n", 2);
        core_buf_append(&unit, s, n);
        free(s);
    }
    core_buf all = {0};
    for (json_int_t r = 0; r < jint(big, "repeat"); r++)
        core_buf_append(&all, unit.data, unit.len);
    core_buf_free(&unit);
    assert_false(all.failed);
    assert_int_equal(all.len, jint(big, "bytes"));
    *len = all.len;
    return core_buf_take(&all);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void t_smollm2_big_text(void **state)
{
    (void)state;
    const char *path = model_path();
    if (!path) {
        fprintf(stderr, "skipped: no model at $MLV_MODEL_GGUF\n");
        skip();
    }
    assert_true(source_available());
    json_t *gold = load_golden("tok_smollm2.json");
    eng_gguf *g = NULL;
    eng_tokenizer *t = load_file(path, &g);
    size_t len;
    char *text = big_text(gold, &len);

    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = now_s();
    assert_int_equal(eng_tokenize(t, text, len, false, false, &ids, &n), 0);
    double dt = now_s() - t0;
    /* reported, never asserted (timing belongs to bench/) */
    fprintf(stderr, "tokenized %zu bytes into %zu tokens in %.1f ms\n", len, n, dt * 1e3);

    const json_t *big = json_object_get(gold, "big");
    assert_int_equal(n, jint(big, "n_ids"));
    unsigned char *le = malloc(n * 4 + 1);
    assert_non_null(le);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++)
            le[4 * i + k] = (unsigned char)((uint32_t)ids[i] >> (8 * k));
    char hex[65];
    sha256_hex(le, n * 4, hex);
    assert_string_equal(hex, jstr(big, "ids_sha256"));

    /* smollm leaves spaces alone, so the round trip is the text */
    core_buf b = {0};
    assert_int_equal(eng_detokenize(t, ids, n, false, &b), 0);
    assert_int_equal(b.len, len);
    assert_memory_equal(b.data, text, len);
    core_buf_free(&b);

    free(le);
    free(ids);
    free(text);
    eng_tokenizer_free(t);
    eng_gguf_free(g);
    json_decref(gold);
}

/* -------------------------------------------------------------- fixtures ---- */

static void t_fixtures_golden(void **state)
{
    (void)state;
    const char *venv = getenv("MLV_VENV");
    if (!venv || !*venv || !source_available()) {
        fprintf(stderr, "skipped: set MLV_VENV and MLV_SOURCE_DIR to build the fixtures\n");
        skip();
    }
    char dir[4200], cmd[12000];
    snprintf(dir, sizeof dir, "%s/fixtures", tmpdir);
    snprintf(cmd, sizeof cmd,
             "'%s/bin/python' '%s/tests/ref/make_tok_fixtures.py' '%s' > /dev/null", venv,
             getenv("MLV_SOURCE_DIR"), dir);
    int st = system(cmd);
    if (st != 0) fprintf(stderr, "make_tok_fixtures.py failed (%d): %s\n", st, cmd);
    assert_int_equal(st, 0);

    json_t *gold = load_golden("tok_fixtures.json");
    const json_t *fixtures = json_object_get(gold, "fixtures");
    assert_true(json_array_size(fixtures) >= 8);
    int bad = 0;
    for (size_t i = 0; i < json_array_size(fixtures); i++) {
        const json_t *fx = json_array_get(fixtures, i);
        char path[8400], hex[65];
        snprintf(path, sizeof path, "%s/%s", dir, jstr(fx, "name"));
        size_t n;
        unsigned char *bytes = read_all(path, &n);
        sha256_hex(bytes, n, hex);
        free(bytes);
        if (strcmp(hex, jstr(fx, "sha256")) != 0) {
            fprintf(stderr,
                    "%s: the fixture is not the one the golden file was made from (sha256 %s, "
                    "golden %s); rerun tests/ref/make_tok_golden.py\n",
                    jstr(fx, "name"), hex, jstr(fx, "sha256"));
            fail();
        }
        eng_gguf *g = NULL;
        eng_tokenizer *t = load_file(path, &g);
        bad += check_vocab(t, fx, json_object_get(gold, "strings"), jstr(fx, "name"));
        eng_tokenizer_free(t);
        eng_gguf_free(g);
    }
    assert_int_equal(bad, 0);
    json_decref(gold);
}

/* ------------------------------------------------------ GGUF images here ---- */
/* A minimal GGUF v3 writer for metadata-only images (no tensors), so that malformed
 * metadata can be made without any other code's help. */

typedef struct gw {
    core_buf kv;
    uint64_t n;
} gw;

static void le(core_buf *b, uint64_t v, int bytes)
{
    unsigned char x[8];
    for (int i = 0; i < bytes; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    core_buf_append(b, x, (size_t)bytes);
}

static void gw_key(gw *w, const char *key, uint32_t type)
{
    le(&w->kv, strlen(key), 8);
    core_buf_append(&w->kv, key, strlen(key));
    le(&w->kv, type, 4);
    w->n++;
}

static void gw_str(gw *w, const char *key, const char *val)
{
    gw_key(w, key, ENG_GGUF_STRING);
    le(&w->kv, strlen(val), 8);
    core_buf_append(&w->kv, val, strlen(val));
}

static void gw_u32(gw *w, const char *key, uint32_t v)
{
    gw_key(w, key, ENG_GGUF_U32);
    le(&w->kv, v, 4);
}

static void gw_i32(gw *w, const char *key, int32_t v)
{
    gw_key(w, key, ENG_GGUF_I32);
    le(&w->kv, (uint32_t)v, 4);
}

static void gw_bool(gw *w, const char *key, bool v)
{
    gw_key(w, key, ENG_GGUF_BOOL);
    le(&w->kv, v, 1);
}

static void gw_arr_str(gw *w, const char *key, const char *const *vals, size_t n)
{
    gw_key(w, key, ENG_GGUF_ARRAY);
    le(&w->kv, ENG_GGUF_STRING, 4);
    le(&w->kv, n, 8);
    for (size_t i = 0; i < n; i++) {
        le(&w->kv, strlen(vals[i]), 8);
        core_buf_append(&w->kv, vals[i], strlen(vals[i]));
    }
}

static void gw_arr_i32(gw *w, const char *key, const int32_t *vals, size_t n)
{
    gw_key(w, key, ENG_GGUF_ARRAY);
    le(&w->kv, ENG_GGUF_I32, 4);
    le(&w->kv, n, 8);
    for (size_t i = 0; i < n; i++)
        le(&w->kv, (uint32_t)vals[i], 4);
}

static void gw_arr_f32(gw *w, const char *key, const float *vals, size_t n)
{
    gw_key(w, key, ENG_GGUF_ARRAY);
    le(&w->kv, ENG_GGUF_F32, 4);
    le(&w->kv, n, 8);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &vals[i], 4);
        le(&w->kv, u, 4);
    }
}

/* The image: header, the KV pairs, padding to 32. The caller frees w and the image. */
static unsigned char *gw_finish(gw *w, size_t *len)
{
    core_buf b = {0};
    core_buf_append(&b, "GGUF", 4);
    le(&b, 3, 4);
    le(&b, 0, 8);
    le(&b, w->n, 8);
    core_buf_append(&b, w->kv.data, w->kv.len);
    while (b.len % 32)
        core_buf_append(&b, "", 1);
    assert_false(b.failed || w->kv.failed);
    core_buf_free(&w->kv);
    *len = b.len;
    return (unsigned char *)core_buf_take(&b);
}

/* Loads a tokenizer from an image; the return code (the tokenizer is freed). */
static int try_load(gw *w)
{
    size_t len;
    unsigned char *img = gw_finish(w, &len);
    eng_gguf *g = NULL;
    assert_int_equal(eng_gguf_open_mem(&g, img, len), 0);
    eng_tokenizer *t = NULL;
    int rc = eng_tokenizer_load(&t, g);
    if (rc == 0) {
        assert_non_null(t);
    } else {
        assert_null(t);
        assert_non_null(strstr(core_err_last(), "tokenizer"));
    }
    eng_tokenizer_free(t);
    eng_gguf_free(g);
    free(img);
    return rc;
}

/* A small byte-level BPE vocabulary: GPT-2's 256 characters plus "he", "ll", "hell",
 * "hello", and control/user-defined specials. Options break it one way each. */
enum {
    BREAK_NONE,
    BREAK_NO_MODEL,
    BREAK_MODEL_BERT,
    BREAK_NO_TOKENS,
    BREAK_TOKENS_I32,
    BREAK_TOKENS_EMPTY,
    BREAK_NO_MERGES,
    BREAK_MERGE_UNKNOWN,
    BREAK_MERGE_NO_SPACE,
    BREAK_MERGE_RESULT,
    BREAK_BOS_RANGE,
    BREAK_EOS_NEGATIVE,
    BREAK_TYPES_SHORT,
    BREAK_TYPES_F32,
    BREAK_SCORES_LONG,
    BREAK_DUP_TOKEN,
    BREAK_PRE_UNKNOWN,
    BREAK_ADD_BOS_TYPE,
    BREAK_MERGES_I32,
    BREAK_COUNT
};

#define SMALL_N (256 + 6)

static void small_bpe(gw *w, int brk)
{
    static char chars[256][8];
    const char *tokens[SMALL_N + 1];
    for (int b = 0; b < 256; b++) {
        int l = uni_utf8_put(uni_byte_to_cpt((uint8_t)b), chars[b]);
        chars[b][l] = '\0';
        tokens[b] = chars[b];
    }
    tokens[256] = "he";
    tokens[257] = "ll";
    tokens[258] = "hell";
    tokens[259] = "hello";
    tokens[260] = "<|endoftext|>";
    tokens[261] = "<|ud|>";
    int32_t types[SMALL_N];
    for (int i = 0; i < SMALL_N; i++)
        types[i] = 1;
    types[260] = 3;
    types[261] = 4;
    const char *merges[] = {"h e", "l l", "he ll", "hell o"};
    size_t n_tokens = SMALL_N;

    if (brk != BREAK_NO_MODEL)
        gw_str(w, "tokenizer.ggml.model", brk == BREAK_MODEL_BERT ? "bert" : "gpt2");
    gw_str(w, "tokenizer.ggml.pre", brk == BREAK_PRE_UNKNOWN ? "no-such-pre" : "gpt-2");
    if (brk == BREAK_DUP_TOKEN) tokens[259] = "hell";
    if (brk == BREAK_TOKENS_I32)
        gw_arr_i32(w, "tokenizer.ggml.tokens", types, n_tokens);
    else if (brk == BREAK_TOKENS_EMPTY)
        gw_arr_str(w, "tokenizer.ggml.tokens", tokens, 0);
    else if (brk != BREAK_NO_TOKENS)
        gw_arr_str(w, "tokenizer.ggml.tokens", tokens, n_tokens);
    if (brk == BREAK_TYPES_F32) {
        float f[SMALL_N] = {0};
        gw_arr_f32(w, "tokenizer.ggml.token_type", f, n_tokens);
    } else {
        gw_arr_i32(w, "tokenizer.ggml.token_type", types,
                   brk == BREAK_TYPES_SHORT ? n_tokens - 1 : n_tokens);
    }
    if (brk == BREAK_SCORES_LONG) {
        float f[SMALL_N + 1] = {0};
        gw_arr_f32(w, "tokenizer.ggml.scores", f, n_tokens + 1);
    }
    if (brk == BREAK_MERGE_UNKNOWN) merges[2] = "he lx";
    if (brk == BREAK_MERGE_NO_SPACE) merges[1] = "ll";
    if (brk == BREAK_MERGE_RESULT) merges[3] = "hell l";
    if (brk == BREAK_MERGES_I32)
        gw_arr_i32(w, "tokenizer.ggml.merges", types, 4);
    else if (brk != BREAK_NO_MERGES)
        gw_arr_str(w, "tokenizer.ggml.merges", merges, 4);
    gw_u32(w, "tokenizer.ggml.bos_token_id", brk == BREAK_BOS_RANGE ? SMALL_N : 260);
    if (brk == BREAK_EOS_NEGATIVE)
        gw_i32(w, "tokenizer.ggml.eos_token_id", -5);
    else
        gw_u32(w, "tokenizer.ggml.eos_token_id", 260);
    if (brk == BREAK_ADD_BOS_TYPE)
        gw_u32(w, "tokenizer.ggml.add_bos_token", 1);
    else
        gw_bool(w, "tokenizer.ggml.add_bos_token", true);
}

static void t_malformed_metadata(void **state)
{
    (void)state;
    static const struct {
        int brk, rc;
    } want[] = {
        {BREAK_NONE, 0},
        {BREAK_NO_MODEL, MLV_EINVAL},
        {BREAK_MODEL_BERT, MLV_EUNSUPPORTED},
        {BREAK_NO_TOKENS, MLV_EINVAL},
        {BREAK_TOKENS_I32, MLV_EINVAL},
        {BREAK_TOKENS_EMPTY, MLV_EINVAL},
        {BREAK_NO_MERGES, MLV_EINVAL},
        {BREAK_MERGE_UNKNOWN, MLV_EINVAL},
        {BREAK_MERGE_NO_SPACE, MLV_EINVAL},
        {BREAK_MERGE_RESULT, MLV_EINVAL},
        {BREAK_BOS_RANGE, MLV_EINVAL},
        {BREAK_EOS_NEGATIVE, MLV_EINVAL},
        {BREAK_TYPES_SHORT, MLV_EINVAL},
        {BREAK_TYPES_F32, MLV_EINVAL},
        {BREAK_SCORES_LONG, MLV_EINVAL},
        {BREAK_DUP_TOKEN, MLV_EINVAL},
        {BREAK_PRE_UNKNOWN, MLV_EUNSUPPORTED},
        {BREAK_ADD_BOS_TYPE, MLV_EINVAL},
        {BREAK_MERGES_I32, MLV_EINVAL},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        gw w = {0};
        small_bpe(&w, want[i].brk);
        int rc = try_load(&w);
        if (rc != want[i].rc)
            fprintf(stderr, "case %d: rc %d (%s), want %d\n", want[i].brk, rc,
                    rc ? core_err_last() : "", want[i].rc);
        assert_int_equal(rc, want[i].rc);
    }

    /* SentencePiece: add_bos_token with the default BOS (1) outside a 1-token vocab */
    {
        gw w = {0};
        const char *tok[] = {"<unk>"};
        gw_str(&w, "tokenizer.ggml.model", "llama");
        gw_arr_str(&w, "tokenizer.ggml.tokens", tok, 1);
        assert_int_equal(try_load(&w), MLV_EINVAL);
    }
    /* SentencePiece: a byte token that is not <0xNN> */
    {
        gw w = {0};
        const char *tok[] = {"<unk>", "<s>", "</s>", "<0"};
        int32_t types[] = {2, 3, 3, 6};
        gw_str(&w, "tokenizer.ggml.model", "llama");
        gw_arr_str(&w, "tokenizer.ggml.tokens", tok, 4);
        gw_arr_i32(&w, "tokenizer.ggml.token_type", types, 4);
        assert_int_equal(try_load(&w), MLV_EINVAL);
    }
    /* the smallest SentencePiece vocabulary that loads; an unknown character has no byte
     * token to fall back on */
    {
        gw w = {0};
        const char *tok[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a"};
        int32_t types[] = {2, 3, 3, 1, 1};
        gw_str(&w, "tokenizer.ggml.model", "llama");
        gw_arr_str(&w, "tokenizer.ggml.tokens", tok, 5);
        gw_arr_i32(&w, "tokenizer.ggml.token_type", types, 5);
        size_t len;
        unsigned char *img = gw_finish(&w, &len);
        eng_gguf *g = NULL;
        eng_tokenizer *t = NULL;
        assert_int_equal(eng_gguf_open_mem(&g, img, len), 0);
        assert_int_equal(eng_tokenizer_load(&t, g), 0);
        int32_t *ids = NULL;
        size_t n = 0;
        assert_int_equal(eng_tokenize(t, "a a", 3, true, false, &ids, &n), 0);
        int32_t want_ids[] = {1, 3, 4, 3, 4};
        assert_int_equal(n, 5);
        assert_memory_equal(ids, want_ids, sizeof want_ids);
        free(ids);
        assert_int_equal(eng_tokenize(t, "ab", 2, false, false, &ids, &n), MLV_EINVAL);
        assert_non_null(strstr(core_err_last(), "byte"));
        assert_null(ids);
        eng_tokenizer_free(t);
        eng_gguf_free(g);
        free(img);
    }
}

/* Invalid UTF-8, bad ids and NULL arguments, on the small BPE vocabulary. */
static void t_refusals(void **state)
{
    (void)state;
    gw w = {0};
    small_bpe(&w, BREAK_NONE);
    size_t len;
    unsigned char *img = gw_finish(&w, &len);
    eng_gguf *g = NULL;
    eng_tokenizer *t = NULL;
    assert_int_equal(eng_gguf_open_mem(&g, img, len), 0);
    assert_int_equal(eng_tokenizer_load(&t, g), 0);

    /* it works: BOS (add_bos_token), "hello" merged, the user-defined token cut out even
     * without parse_special, the control one only with it */
    int32_t *ids = NULL;
    size_t n = 0;
    const char *s = "hello<|ud|><|endoftext|>";
    assert_int_equal(eng_tokenize(t, s, strlen(s), true, false, &ids, &n), 0);
    assert_true(n > 3);
    assert_int_equal(ids[0], 260);
    assert_int_equal(ids[1], 259);
    assert_int_equal(ids[2], 261);
    assert_int_not_equal(ids[3], 260);
    free(ids);
    assert_int_equal(eng_tokenize(t, s, strlen(s), false, true, &ids, &n), 0);
    int32_t special[] = {259, 261, 260};
    assert_int_equal(n, 3);
    assert_memory_equal(ids, special, sizeof special);
    free(ids);

    static const struct {
        const char *bytes;
        size_t len, at;
    } invalid[] = {
        {"ok\xff", 3, 2},           /* never in UTF-8 */
        {"\xc3", 1, 0},             /* truncated */
        {"a\xc0\xaf", 3, 1},        /* overlong '/' */
        {"\xe0\x80\xaf", 3, 0},     /* overlong, 3 bytes */
        {"\xed\xa0\x80", 3, 0},     /* a surrogate */
        {"\xf4\x90\x80\x80", 4, 0}, /* above U+10FFFF */
        {"ab\x80", 3, 2},           /* a lone continuation byte */
        {"\xe2\x82", 2, 0},         /* truncated, 3 bytes */
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        static int32_t sentinel;
        ids = &sentinel; /* must come back NULL */
        assert_int_equal(eng_tokenize(t, invalid[i].bytes, invalid[i].len, false, false, &ids, &n),
                         MLV_EINVAL);
        assert_null(ids);
        assert_non_null(strstr(core_err_last(), "UTF-8"));
        char where[64];
        snprintf(where, sizeof where, "offset %zu", invalid[i].at);
        assert_non_null(strstr(core_err_last(), where));
    }
    /* valid edge cases: U+0000, U+10FFFF, the last 2- and 3-byte code points */
    assert_int_equal(
        eng_tokenize(t, "\0\xf4\x8f\xbf\xbf\xdf\xbf\xef\xbf\xbf", 10, false, false, &ids, &n), 0);
    free(ids);
    /* empty: nothing, or just BOS */
    assert_int_equal(eng_tokenize(t, NULL, 0, false, false, &ids, &n), 0);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(eng_tokenize(t, "", 0, true, false, &ids, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 260);
    free(ids);

    core_buf b = {0};
    assert_int_equal(eng_token_piece(t, -1, false, &b), MLV_EINVAL);
    assert_int_equal(eng_token_piece(t, SMALL_N, false, &b), MLV_EINVAL);
    assert_int_equal(eng_token_piece(t, 259, false, &b), 0);
    assert_int_equal(eng_token_piece(t, 260, false, &b), 0); /* control, not rendered */
    assert_int_equal(eng_token_piece(t, 261, false, &b), 0); /* user-defined: always */
    assert_int_equal(eng_token_piece(t, 260, true, &b), 0);
    assert_int_equal(b.len, strlen("hello<|ud|><|endoftext|>"));
    assert_memory_equal(b.data, "hello<|ud|><|endoftext|>", b.len);
    int32_t bad_ids[] = {259, SMALL_N};
    assert_int_equal(eng_detokenize(t, bad_ids, 2, false, &b), MLV_EINVAL);
    core_buf_free(&b);
    assert_int_equal(eng_tokenize(t, NULL, 1, false, false, &ids, &n), MLV_EINVAL);
    assert_int_equal(eng_tokenize(NULL, "a", 1, false, false, &ids, &n), MLV_EINVAL);
    assert_int_equal(eng_tokenizer_load(NULL, g), MLV_EINVAL);
    eng_tokenizer_free(NULL);

    eng_tokenizer_free(t);
    eng_gguf_free(g);
    free(img);
}

/* The internal Unicode pieces: GPT-2's alphabet is a bijection onto printable code
 * points, and the class table agrees with what the pre-tokenizers rely on. */
static void t_unicode(void **state)
{
    (void)state;
    bool seen[0x144] = {0};
    for (int b = 0; b < 256; b++) {
        uint32_t c = uni_byte_to_cpt((uint8_t)b);
        assert_true(c < 0x144);
        assert_false(seen[c]);
        seen[c] = true;
        assert_int_equal(uni_cpt_to_byte(c), b);
        assert_false(uni_flags(c) & (UNI_WHITESPACE | UNI_CONTROL));
    }
    assert_int_equal(uni_cpt_to_byte(0x144), -1);
    assert_int_equal(uni_cpt_to_byte(0x20), -1);
    assert_int_equal(uni_byte_to_cpt(' '), 0x120);  /* 'Ġ' */
    assert_int_equal(uni_byte_to_cpt('\n'), 0x10A); /* 'Ċ' */

    assert_true(uni_flags('a') & UNI_LETTER);
    assert_true(uni_flags('7') & UNI_NUMBER);
    assert_true(uni_flags(' ') & UNI_WHITESPACE);
    assert_true(uni_flags(0x3000) & UNI_WHITESPACE);
    assert_false(uni_flags(0x1C) & UNI_WHITESPACE); /* not White_Space, unlike isspace() */
    assert_true(uni_flags(0x4E2D) & UNI_LETTER);    /* 中 */
    assert_true(uni_flags(0x0661) & UNI_NUMBER);    /* Arabic-Indic one */
    assert_true(uni_flags(0x0301) & UNI_ACCENT_MARK);
    assert_true(uni_flags(0x1F600) & UNI_SYMBOL);
    assert_true(uni_flags(0xE000) & UNI_CONTROL); /* private use */
    assert_true(uni_flags(0x0378) & UNI_CONTROL); /* unassigned */
    assert_int_equal(uni_flags(0x110000), 0);
    assert_non_null(uni_tables_version());

    /* the pre-tokenizers' words, as llama.cpp cuts them */
    static const struct {
        int kind;
        const char *text;
        const char *words; /* joined by '|' */
    } cases[] = {
        {UNI_PRE_GPT2, "Hello world's  end 123\n", "Hello| world|'s| | end| 123|\n"},
        {UNI_PRE_LLAMA3, "HELLO'S 12345  x\n\n y", "HELLO|'S| |123|45| | x|\n\n| y"},
        {UNI_PRE_QWEN2, "a 12 b", "a| |1|2| b"},
        {UNI_PRE_SMOLLM, "x 12 y", "x| |1|2| y"},
        {UNI_PRE_DEFAULT, "a...b 1234567 c", "a|...|b| |123|456|7| c"},
    };
    uni_words words = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t cpts[64];
        size_t n = 0;
        for (const char *p = cases[i].text; *p; p++)
            cpts[n++] = (unsigned char)*p;
        assert_int_equal(uni_pretokenize(cases[i].kind, cpts, n, &words), 0);
        char got[256];
        size_t k = 0, at = 0;
        for (size_t w = 0; w < words.n; w++) {
            if (w) got[k++] = '|';
            for (size_t j = 0; j < words.len[w]; j++)
                got[k++] = (char)cpts[at++];
        }
        got[k] = '\0';
        assert_int_equal(at, n);
        assert_string_equal(got, cases[i].words);
    }
    assert_int_equal(uni_pretokenize(0, NULL, 0, &words), MLV_EINVAL);
    uni_words_free(&words);
}

/* ----------------------------------------------------------- chat templates ---- */

static eng_gguf *gguf_with_template(const char *tmpl, unsigned char **img)
{
    gw w = {0};
    gw_str(&w, "general.architecture", "llama");
    if (tmpl) gw_str(&w, "tokenizer.chat_template", tmpl);
    size_t len;
    *img = gw_finish(&w, &len);
    eng_gguf *g = NULL;
    assert_int_equal(eng_gguf_open_mem(&g, *img, len), 0);
    return g;
}

static void check_chat_cases(int kind, const char *default_system, const json_t *cases,
                             const char *name)
{
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i), *msgs = json_object_get(c, "messages");
        eng_chat_msg m[16];
        size_t n = json_array_size(msgs);
        assert_true(n <= 16);
        for (size_t j = 0; j < n; j++) {
            m[j].role = jstr(json_array_get(msgs, j), "role");
            m[j].content = jstr(json_array_get(msgs, j), "content");
        }
        char *out = NULL;
        assert_int_equal(eng_chat_apply(kind, default_system, m, n,
                                        json_is_true(json_object_get(c, "add_generation_prompt")),
                                        &out),
                         0);
        const char *want = jstr(c, "rendered");
        if (strcmp(out, want) != 0) {
            fprintf(stderr, "%s: conversation %zu differs\n", name, i);
            print_bytes("jinja2", want, strlen(want));
            print_bytes("engine", out, strlen(out));
            fail();
        }
        free(out);
    }
}

static void t_chat_templates(void **state)
{
    (void)state;
    if (!source_available()) {
        fprintf(stderr, "skipped: set MLV_SOURCE_DIR for the golden files\n");
        skip();
    }
    json_t *gold = load_golden("chat_templates.json");
    const json_t *templates = json_object_get(gold, "templates");
    assert_true(json_array_size(templates) >= 4);
    for (size_t i = 0; i < json_array_size(templates); i++) {
        const json_t *tp = json_array_get(templates, i);
        unsigned char *img;
        eng_gguf *g = gguf_with_template(jstr(tp, "template"), &img);
        char def[512];
        int kind = eng_chat_template_of(g, def);
        int want = strcmp(jstr(tp, "kind"), "llama3") == 0 ? ENG_CHAT_LLAMA3 : ENG_CHAT_CHATML;
        assert_int_equal(kind, want);
        assert_string_equal(def, jstr(tp, "default_system"));
        check_chat_cases(kind, def, json_object_get(tp, "cases"), jstr(tp, "name"));
        eng_gguf_free(g);
        free(img);
    }

    /* the real model's own template names the same default system prompt */
    const char *path = model_path();
    if (path) {
        eng_gguf *g = NULL;
        assert_int_equal(eng_gguf_open_file(&g, path), 0);
        char def[512];
        assert_int_equal(eng_chat_template_of(g, def), ENG_CHAT_CHATML);
        assert_string_equal(def, jstr(json_array_get(templates, 0), "default_system"));
        eng_gguf_free(g);
    }

    /* a default inside a double-quoted literal may hold an apostrophe; an expression after
     * the marker is no default */
    {
        unsigned char *img2;
        char def2[512];
        eng_gguf *g2 = gguf_with_template(
            "{% if messages[0]['role'] != 'system' %}{{ \"<|im_start|>system\\nYou're "
            "\\\"Bot\\\".<|im_end|>\\n\" }}{% endif %}",
            &img2);
        assert_int_equal(eng_chat_template_of(g2, def2), ENG_CHAT_CHATML);
        assert_string_equal(def2, "You're \"Bot\".");
        eng_gguf_free(g2);
        free(img2);
        g2 = gguf_with_template("{{ '<|im_start|>system\\n' + messages[0]['content'] + "
                                "'<|im_end|>' }}",
                                &img2);
        assert_int_equal(eng_chat_template_of(g2, def2), ENG_CHAT_CHATML);
        assert_string_equal(def2, "");
        eng_gguf_free(g2);
        free(img2);
    }

    /* no template: ChatML without a default; an unknown one is refused */
    unsigned char *img;
    eng_gguf *g = gguf_with_template(NULL, &img);
    char def[512] = "x";
    assert_int_equal(eng_chat_template_of(g, def), ENG_CHAT_CHATML);
    assert_string_equal(def, "");
    eng_gguf_free(g);
    free(img);
    g = gguf_with_template("{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]"
                           "{% endfor %}",
                           &img);
    assert_int_equal(eng_chat_template_of(g, def), MLV_EUNSUPPORTED);
    eng_gguf_free(g);
    free(img);

    eng_chat_msg bad[] = {{"user", "hi"}, {"tool", "x"}};
    char *out = NULL;
    assert_int_equal(eng_chat_apply(ENG_CHAT_CHATML, NULL, bad, 2, true, &out), MLV_EINVAL);
    assert_null(out);
    eng_chat_msg nocontent[] = {{"user", NULL}};
    assert_int_equal(eng_chat_apply(ENG_CHAT_LLAMA3, NULL, nocontent, 1, true, &out), MLV_EINVAL);
    assert_int_equal(eng_chat_apply(99, NULL, bad, 1, true, &out), MLV_EINVAL);
    json_decref(gold);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_unicode),
        cmocka_unit_test(t_smollm2_golden),
        cmocka_unit_test(t_smollm2_big_text),
        cmocka_unit_test(t_fixtures_golden),
        cmocka_unit_test(t_malformed_metadata),
        cmocka_unit_test(t_refusals),
        cmocka_unit_test(t_chat_templates),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
