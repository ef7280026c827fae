/* tests/test_repo_sign.c: canonical manifests (repo/manifest.c) and OpenSSF
 * model-signing bundles (repo/sign.c).
 *
 * Manifests are checked against a hand-written golden document and a list of inputs
 * that must be refused. Signatures are checked three ways: our own sign → verify and
 * each kind of tampering; the reference tool `model_signing` 1.1.1 (MLV_VENV) verifying
 * a folder we signed; and our verifier accepting a folder the reference signed with a
 * key made by the openssl command line. The reference cases are skipped, with a
 * message, when MLV_VENV is unset. */
/* cmocka needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "repo/repo.h"
#include "repo/repo_internal.h"

/* ----------------------------------------------------------------- helpers -- */

static char *tmp_dir(void)
{
    const char *base = getenv("MLV_TEST_TMP");
    if (!base || !*base) base = "/tmp";
    assert_int_equal(core_mkdir_p(base, 0700), 0);
    char *t = core_path_join(base, "mlv-sign-XXXXXX");
    assert_non_null(t);
    assert_non_null(mkdtemp(t));
    return t;
}

static char *join(const char *a, const char *b)
{
    char *p = core_path_join(a, b);
    assert_non_null(p);
    return p;
}

static void write_text(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static char *read_text(const char *path, size_t *len)
{
    char *s = NULL;
    assert_int_equal(core_read_file(path, 64u << 20, &s, len), 0);
    return s;
}

/* SHA-256 straight from OpenSSL, independent of repo_sha256_hex. */
static void ref_sha256(char out[65], const void *data, size_t n)
{
    unsigned char d[32];
    unsigned int dl = 0;
    assert_int_equal(EVP_Digest(data, n, d, &dl, EVP_sha256(), NULL), 1);
    core_hex(out, d, 32);
}

static int run(const char *cmd)
{
    int st = system(cmd);
    return st == -1 ? -1 : (WIFEXITED(st) ? WEXITSTATUS(st) : 128);
}

/* For commands expected to fail: their complaint would only clutter the output. */
static int run_quiet(const char *cmd)
{
    core_buf b = {0};
    core_buf_appendf(&b, "%s >/dev/null 2>&1", cmd);
    char *c = core_buf_take(&b);
    assert_non_null(c);
    int rc = run(c);
    free(c);
    return rc;
}

static const char *venv(void)
{
    const char *v = getenv("MLV_VENV");
    return v && *v ? v : NULL;
}

static char *b64(const unsigned char *in, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    assert_non_null(out);
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    return out;
}

static unsigned char *unb64(const char *in, size_t *n)
{
    size_t l = strlen(in);
    unsigned char *out = malloc(l / 4 * 3 + 1);
    assert_non_null(out);
    int got = EVP_DecodeBlock(out, (const unsigned char *)in, (int)l);
    assert_true(got >= 0);
    size_t pad = (l && in[l - 1] == '=') + (l > 1 && in[l - 2] == '=');
    *n = (size_t)got - pad;
    return out;
}

/* ---------------------------------------------------------------- manifests -- */

#define D1 "1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "2222222222222222222222222222222222222222222222222222222222222222"
#define D3 "3333333333333333333333333333333333333333333333333333333333333333"
#define DP "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

/* Written by hand: sorted keys at every level, no spaces, UTF-8 kept as is. */
static const char GOLDEN[] =
    "{\"architecture\":\"llama\",\"created_at\":\"2026-11-29T07:48:12Z\",\"creator\":\"alice\","
    "\"files\":[{\"path\":\"model.gguf\",\"sha256\":\"" D1 "\",\"size\":1048576},"
    "{\"path\":\"sub/tokenizer.json\",\"sha256\":\"" D2 "\",\"size\":0}],"
    "\"format\":\"gguf\",\"kind\":\"model\",\"lineage\":{\"datasets\":[\"" D3 "\"],"
    "\"job\":{\"kind\":\"quantize\",\"params\":{\"bits\":4,\"type\":\"Q4_1\"}},"
    "\"mlvault_version\":\"0.1.0\",\"parents\":[{\"digest\":\"" DP "\",\"name\":\"tiny\","
    "\"version\":1}]},\"name\":\"tiny-q4\",\"note\":\"caf\xc3\xa9 \\\"q4\\\"\","
    "\"parameters\":1234567890123,\"schema\":\"mlvault.manifest/v1\","
    "\"tensor_types\":[\"F32\",\"Q4_1\"],\"version\":2}";

static char *tt[] = {"F32", "Q4_1"};
static repo_file files2[] = {{"model.gguf", 1048576, D1}, {"sub/tokenizer.json", 0, D2}};
static repo_parent parents1[] = {{"tiny", 1, DP}};
static char *datasets1[] = {D3};

static repo_manifest sample(void)
{
    repo_manifest m = {
        .kind = "model",
        .name = "tiny-q4",
        .version = 2,
        .format = "gguf",
        .architecture = "llama",
        .parameters = 1234567890123ull,
        .tensor_types = tt,
        .n_tensor_types = 2,
        .files = files2,
        .n_files = 2,
        .parents = parents1,
        .n_parents = 1,
        .job_kind = "quantize",
        .job_params =
            "{\"type\":\"Q4_1\",\"bits\":4}", /* not canonical: still embedded canonically */
        .dataset_digests = datasets1,
        .n_dataset_digests = 1,
        .creator = "alice",
        .created_at = "2026-11-29T07:48:12Z",
        .note = "caf\xc3\xa9 \"q4\"",
        .mlvault_version = "0.1.0",
    };
    return m;
}

static void t_sha256_vector(void **state)
{
    char hex[65];
    repo_sha256_hex(hex, "abc", 3);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    repo_sha256_hex(hex, "", 0);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void t_manifest_golden_round_trip(void **state)
{
    repo_manifest m = sample();
    char *json = NULL, *again = NULL;
    size_t len = 0, len2 = 0;
    assert_int_equal(repo_manifest_to_json(&m, &json, &len), 0);
    assert_int_equal(len, strlen(GOLDEN));
    assert_string_equal(json, GOLDEN);

    repo_manifest *p = NULL;
    assert_int_equal(repo_manifest_parse(&p, json, len), 0);
    assert_string_equal(p->kind, "model");
    assert_string_equal(p->name, "tiny-q4");
    assert_int_equal(p->version, 2);
    assert_string_equal(p->format, "gguf");
    assert_string_equal(p->architecture, "llama");
    assert_true(p->parameters == 1234567890123ull);
    assert_int_equal(p->n_tensor_types, 2);
    assert_string_equal(p->tensor_types[1], "Q4_1");
    assert_int_equal(p->n_files, 2);
    assert_string_equal(p->files[1].path, "sub/tokenizer.json");
    assert_true(p->files[0].size == 1048576);
    assert_string_equal(p->files[0].sha256, D1);
    assert_int_equal(p->n_parents, 1);
    assert_string_equal(p->parents[0].name, "tiny");
    assert_int_equal(p->parents[0].version, 1);
    assert_string_equal(p->parents[0].digest, DP);
    assert_string_equal(p->job_kind, "quantize");
    assert_string_equal(p->job_params, "{\"bits\":4,\"type\":\"Q4_1\"}");
    assert_int_equal(p->n_dataset_digests, 1);
    assert_string_equal(p->dataset_digests[0], D3);
    assert_string_equal(p->creator, "alice");
    assert_string_equal(p->created_at, "2026-11-29T07:48:12Z");
    assert_string_equal(p->note, "caf\xc3\xa9 \"q4\"");
    assert_string_equal(p->mlvault_version, "0.1.0");

    assert_int_equal(repo_manifest_to_json(p, &again, &len2), 0);
    assert_int_equal(len2, len);
    assert_memory_equal(again, json, len);

    /* The identity is the SHA-256 of exactly these bytes. */
    char id[65], ref[65];
    repo_sha256_hex(id, json, len);
    ref_sha256(ref, GOLDEN, strlen(GOLDEN));
    assert_string_equal(id, ref);

    repo_manifest_free(p);
    repo_manifest_free(NULL);
    free(json);
    free(again);

    /* An empty lineage and an empty note are fine too. */
    repo_manifest e = sample();
    e.n_parents = 0;
    e.parents = NULL;
    e.n_dataset_digests = 0;
    e.dataset_digests = NULL;
    e.n_tensor_types = 0;
    e.tensor_types = NULL;
    e.job_params = "{}";
    e.note = "";
    e.kind = "dataset";
    e.format = "dataset";
    e.architecture = "";
    assert_int_equal(repo_manifest_to_json(&e, &json, &len), 0);
    assert_non_null(strstr(json, "\"parents\":[]"));
    assert_non_null(strstr(json, "\"params\":{}"));
    assert_int_equal(repo_manifest_parse(&p, json, len), 0);
    assert_int_equal(p->n_parents, 0);
    assert_string_equal(p->note, "");
    repo_manifest_free(p);
    free(json);
}

/* Parses GOLDEN with the first `from` replaced by `to`; expects MLV_EINVAL and a
 * message containing `needle`. */
static void expect_parse_fails(const char *from, const char *to, const char *needle)
{
    const char *at = strstr(GOLDEN, from);
    assert_non_null(at);
    size_t pre = (size_t)(at - GOLDEN), fl = strlen(from), tl = strlen(to);
    size_t n = strlen(GOLDEN) - fl + tl;
    char *doc = malloc(n + 1);
    assert_non_null(doc);
    memcpy(doc, GOLDEN, pre);
    memcpy(doc + pre, to, tl);
    strcpy(doc + pre + tl, at + fl);
    repo_manifest *m = (repo_manifest *)1;
    int rc = repo_manifest_parse(&m, doc, n);
    if (rc != MLV_EINVAL || !strstr(core_err_last(), needle))
        fail_msg("'%s' -> '%s': rc %d, message '%s' (wanted '%s')", from, to, rc, core_err_last(),
                 needle);
    assert_null(m);
    free(doc);
}

static void t_manifest_rejects(void **state)
{
    repo_manifest *m = NULL;
    /* Not canonical: spacing, order, trailing newline, escapes jansson would not write. */
    char spaced[sizeof GOLDEN + 1] = "{ ";
    strcat(spaced, GOLDEN + 1);
    assert_int_equal(repo_manifest_parse(&m, spaced, strlen(spaced)), MLV_EINVAL);
    assert_string_equal(core_err_last(), "manifest is not canonical");
    char nl[sizeof GOLDEN + 1];
    strcpy(nl, GOLDEN);
    strcat(nl, "\n");
    assert_int_equal(repo_manifest_parse(&m, nl, strlen(nl)), MLV_EINVAL);
    assert_string_equal(core_err_last(), "manifest is not canonical");
    expect_parse_fails("{\"architecture\":\"llama\",\"created_at\":\"2026-11-29T07:48:12Z\",",
                       "{\"created_at\":\"2026-11-29T07:48:12Z\",\"architecture\":\"llama\",",
                       "not canonical");
    expect_parse_fails("\"note\":\"caf\xc3\xa9", "\"note\":\"caf\\u00e9", "not canonical");
    expect_parse_fails("\"size\":1048576", "\"size\":1048576.0", "size is not an integer");
    /* Names. */
    expect_parse_fails("\"name\":\"tiny-q4\"", "\"name\":\"../x\"", "name");
    expect_parse_fails("\"name\":\"tiny-q4\"", "\"name\":\"Tiny\"", "not a valid name");
    char longname[80] = "\"name\":\"";
    memset(longname + 8, 'a', 65);
    strcpy(longname + 8 + 65, "\"");
    expect_parse_fails("\"name\":\"tiny-q4\"", longname, "not a valid name");
    longname[8 + 64] = '"';
    longname[8 + 65] = 0; /* 64 characters is the limit, and fine */
    const char *at = strstr(GOLDEN, "\"name\":\"tiny-q4\"");
    char ok64[sizeof GOLDEN + 80];
    snprintf(ok64, sizeof ok64, "%.*s%s%s", (int)(at - GOLDEN), GOLDEN, longname,
             at + strlen("\"name\":\"tiny-q4\""));
    assert_int_equal(repo_manifest_parse(&m, ok64, strlen(ok64)), 0);
    assert_int_equal(strlen(m->name), 64);
    repo_manifest_free(m);
    m = NULL;
    expect_parse_fails("\"name\":\"tiny\"", "\"name\":\"Tiny\"", "parent name");
    expect_parse_fails("\"creator\":\"alice\"", "\"creator\":\"Alice\"", "creator");
    /* Paths. */
    expect_parse_fails("\"path\":\"model.gguf\"", "\"path\":\"../model.gguf\"", "not a safe");
    expect_parse_fails("\"path\":\"model.gguf\"", "\"path\":\"/model.gguf\"", "not a safe");
    expect_parse_fails("\"path\":\"model.gguf\"", "\"path\":\"a//model.gguf\"", "not a safe");
    expect_parse_fails("\"path\":\"model.gguf\"", "\"path\":\"a\\\\b\"", "not a safe");
    expect_parse_fails("\"path\":\"model.gguf\"", "\"path\":\"sub/tokenizer.json\"", "twice");
    expect_parse_fails("\"path\":\"model.gguf\"", "\"path\":\"zz.gguf\"", "not sorted");
    /* Hex and numbers. */
    char bad[66];
    strcpy(bad, D1);
    bad[5] = 'A';
    expect_parse_fails(D1, bad, "sha256 is not 64 lowercase hex");
    bad[63] = 0;
    expect_parse_fails(D1, bad, "not a 64-character digest");
    strcpy(bad, DP);
    bad[0] = 'g';
    expect_parse_fails(DP, bad, "parent digest");
    strcpy(bad, D3);
    bad[9] = '-';
    expect_parse_fails(D3, bad, "dataset digest");
    expect_parse_fails("\"size\":0", "\"size\":-1", "out of range");
    expect_parse_fails("\"version\":2}", "\"version\":0}", "out of range");
    expect_parse_fails("\"version\":1}", "\"version\":0}", "out of range");
    /* Shape. */
    expect_parse_fails("\"version\":2}", "\"version\":2,\"zzz\":1}", "unknown key \"zzz\"");
    expect_parse_fails("\"architecture\":\"llama\",", "", "lacks \"architecture\"");
    expect_parse_fails("\"size\":0}", "\"size\":0,\"x\":1}", "unknown key \"x\"");
    expect_parse_fails("mlvault.manifest/v1", "mlvault.manifest/v2", "schema");
    expect_parse_fails("\"kind\":\"model\"", "\"kind\":\"modle\"", "kind");
    expect_parse_fails("\"params\":{\"bits\":4,\"type\":\"Q4_1\"}", "\"params\":[]", "params");
    expect_parse_fails("\"created_at\":\"2026-11-29T07:48:12Z\"",
                       "\"created_at\":\"2026-11-29 07:48:12\"", "created_at");
    expect_parse_fails("\"tensor_types\":[\"F32\",\"Q4_1\"]", "\"tensor_types\":[\"Q4_1\",\"F32\"]",
                       "not sorted");
    expect_parse_fails("\"version\":2}", "\"version\":2,\"version\":2}", "duplicate");
    expect_parse_fails("\"files\":[{", "\"files\":[{{", "not JSON");

    assert_int_equal(repo_manifest_parse(&m, "", 0), MLV_EINVAL);
    assert_int_equal(repo_manifest_parse(&m, GOLDEN, (16u << 20) + 1), MLV_EINVAL);

    /* The writer refuses what the reader would. */
    char *json = NULL;
    size_t len;
    repo_file unsorted[] = {{"b", 1, D1}, {"a", 1, D2}};
    repo_file dup[] = {{"a", 1, D1}, {"a", 1, D2}};
    repo_manifest w = sample();
    w.files = unsorted;
    assert_int_equal(repo_manifest_to_json(&w, &json, &len), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "not sorted"));
    w.files = dup;
    assert_int_equal(repo_manifest_to_json(&w, &json, &len), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "twice"));
    w = sample();
    w.name = "../x";
    assert_int_equal(repo_manifest_to_json(&w, &json, &len), MLV_EINVAL);
    w = sample();
    w.job_params = "{\"a\":";
    assert_int_equal(repo_manifest_to_json(&w, &json, &len), MLV_EINVAL);
    w = sample();
    w.note = "\xff";
    assert_int_equal(repo_manifest_to_json(&w, &json, &len), MLV_EINVAL);
    w = sample();
    w.n_files = 0;
    assert_int_equal(repo_manifest_to_json(&w, &json, &len), MLV_EINVAL);
    assert_null(json);
}

/* --------------------------------------------------------------- signatures -- */

typedef struct sig_fixture {
    char *dir, *home, *home2;
    repo_keys *k, *k2;
} sig_fixture;

static int sig_setup(void **state)
{
    sig_fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->dir = tmp_dir();
    f->home = join(f->dir, "home");
    f->home2 = join(f->dir, "home2");
    assert_int_equal(repo_keys_create(f->home), 0);
    assert_int_equal(repo_keys_create(f->home2), 0);
    assert_int_equal(repo_keys_open(&f->k, f->home), 0);
    assert_int_equal(repo_keys_open(&f->k2, f->home2), 0);
    *state = f;
    return 0;
}

static int sig_teardown(void **state)
{
    sig_fixture *f = *state;
    repo_keys_free(f->k);
    repo_keys_free(f->k2);
    core_rm_rf(f->dir);
    free(f->dir);
    free(f->home);
    free(f->home2);
    free(f);
    return 0;
}

static const repo_sig_resource RES[] = {
    {"weights/b.bin", D2}, {"config.json", D1}, {"weights-x.bin", D3}};
#define N_RES (sizeof RES / sizeof RES[0])

/* A bundle for `statement` signed with pk, built here by hand (so tests can forge
 * authentic bundles that say the wrong thing). Caller frees. */
static char *forge_bundle(EVP_PKEY *pk, const char *statement, const char *hint)
{
    const char *type = "application/vnd.in-toto+json";
    size_t sl = strlen(statement);
    core_buf pae = {0};
    core_buf_appendf(&pae, "DSSEv1 %zu %s %zu ", strlen(type), type, sl);
    core_buf_append(&pae, statement, sl);
    size_t pl = pae.len;
    char *msg = core_buf_take(&pae);
    assert_non_null(msg);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char sig[256];
    size_t siglen = sizeof sig;
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pk), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, (unsigned char *)msg, pl), 1);
    EVP_MD_CTX_free(ctx);
    free(msg);
    char *p64 = b64((const unsigned char *)statement, sl), *s64 = b64(sig, siglen);
    json_t *b = json_pack("{s:s, s:{s:{s:s}, s:[]}, s:{s:s, s:s, s:[{s:s, s:s}]}}", "mediaType",
                          "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial",
                          "publicKey", "hint", hint, "tlogEntries", "dsseEnvelope", "payload", p64,
                          "payloadType", type, "signatures", "sig", s64, "keyid", "");
    assert_non_null(b);
    char *out = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    free(p64);
    free(s64);
    return out;
}

/* The decoded statement and the hint of a bundle. */
static json_t *bundle_statement(const char *bundle, char hint[65])
{
    json_t *b = json_loads(bundle, 0, NULL);
    assert_non_null(b);
    const char *p64 =
        json_string_value(json_object_get(json_object_get(b, "dsseEnvelope"), "payload"));
    const char *h = json_string_value(json_object_get(
        json_object_get(json_object_get(b, "verificationMaterial"), "publicKey"), "hint"));
    assert_non_null(p64);
    assert_non_null(h);
    strcpy(hint, h);
    size_t n;
    unsigned char *payload = unb64(p64, &n);
    json_t *st = json_loadb((const char *)payload, n, 0, NULL);
    assert_non_null(st);
    free(payload);
    json_decref(b);
    return st;
}

static void t_sign_verify(void **state)
{
    sig_fixture *f = *state;
    char *bundle = NULL;
    assert_int_equal(repo_sign_resources(f->k, "tiny:2", RES, N_RES, &bundle), 0);
    const char *pub = repo_keys_public_pem(f->k);
    assert_int_equal(repo_sig_verify(bundle, strlen(bundle), pub, RES, N_RES), 0);
    /* Any order of `expect` is fine. */
    repo_sig_resource rev[] = {RES[2], RES[0], RES[1]};
    assert_int_equal(repo_sig_verify(bundle, strlen(bundle), pub, rev, N_RES), 0);

    /* The shape, field by field, against an independent reading of the format. */
    json_t *b = json_loads(bundle, 0, NULL);
    assert_non_null(b);
    assert_string_equal(json_string_value(json_object_get(b, "mediaType")),
                        "application/vnd.dev.sigstore.bundle.v0.3+json");
    json_t *env = json_object_get(b, "dsseEnvelope");
    assert_string_equal(json_string_value(json_object_get(env, "payloadType")),
                        "application/vnd.in-toto+json");
    assert_int_equal(json_array_size(json_object_get(env, "signatures")), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(env, "signatures"), 0), "keyid")),
                        "");
    assert_int_equal(
        json_array_size(json_object_get(json_object_get(b, "verificationMaterial"), "tlogEntries")),
        0);
    json_decref(b);

    char hint[65], want_hint[65];
    ref_sha256(want_hint, pub, strlen(pub));
    json_t *st = bundle_statement(bundle, hint);
    assert_string_equal(hint, want_hint);
    assert_string_equal(json_string_value(json_object_get(st, "_type")),
                        "https://in-toto.io/Statement/v1");
    assert_string_equal(json_string_value(json_object_get(st, "predicateType")),
                        "https://model_signing/signature/v1.0");
    json_t *pred = json_object_get(st, "predicate");
    json_t *ser = json_object_get(pred, "serialization");
    assert_string_equal(json_string_value(json_object_get(ser, "method")), "files");
    assert_string_equal(json_string_value(json_object_get(ser, "hash_type")), "sha256");
    assert_true(json_is_false(json_object_get(ser, "allow_symlinks")));
    json_t *res = json_object_get(pred, "resources");
    assert_int_equal(json_array_size(res), 3);
    /* Python's order: by path components, so "weights/b.bin" before "weights-x.bin". */
    const char *order[] = {"config.json", "weights/b.bin", "weights-x.bin"};
    const char *digs[] = {D1, D2, D3};
    unsigned char cat[96];
    for (size_t i = 0; i < 3; i++) {
        json_t *r = json_array_get(res, i);
        assert_string_equal(json_string_value(json_object_get(r, "name")), order[i]);
        assert_string_equal(json_string_value(json_object_get(r, "digest")), digs[i]);
        assert_string_equal(json_string_value(json_object_get(r, "algorithm")), "sha256");
        assert_int_equal(core_unhex(cat + 32 * i, 32, digs[i]), 0);
    }
    char root[65];
    ref_sha256(root, cat, sizeof cat);
    json_t *subj = json_array_get(json_object_get(st, "subject"), 0);
    assert_string_equal(json_string_value(json_object_get(subj, "name")), "tiny:2");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(subj, "digest"), "sha256")), root);
    json_decref(st);

    /* A bundle forged here over the same statement verifies too (format agreement). */
    json_t *st2 = bundle_statement(bundle, hint);
    char *text = json_dumps(st2, JSON_COMPACT);
    char *forged = forge_bundle(repo_keys_signing_pkey(f->k), text, hint);
    assert_int_equal(repo_sig_verify(forged, strlen(forged), pub, RES, N_RES), 0);
    free(forged);
    free(text);
    json_decref(st2);

    /* Bad input to the signer. */
    char *out = NULL;
    repo_sig_resource bad[] = {{"../x", D1}};
    assert_int_equal(repo_sign_resources(f->k, "m", bad, 1, &out), MLV_EINVAL);
    repo_sig_resource badhex[] = {{"x", "ABC"}};
    assert_int_equal(repo_sign_resources(f->k, "m", badhex, 1, &out), MLV_EINVAL);
    repo_sig_resource dup[] = {{"x", D1}, {"x", D2}};
    assert_int_equal(repo_sign_resources(f->k, "m", dup, 2, &out), MLV_EINVAL);
    assert_int_equal(repo_sign_resources(f->k, "", RES, N_RES, &out), MLV_EINVAL);
    assert_int_equal(repo_sign_resources(NULL, "m", RES, N_RES, &out), MLV_EINVAL);
    assert_null(out);
    free(bundle);
}

static void expect_integrity(const char *bundle, const char *pub, const repo_sig_resource *exp,
                             size_t n, const char *needle)
{
    int rc = repo_sig_verify(bundle, strlen(bundle), pub, exp, n);
    if (rc != MLV_EINTEGRITY || !strstr(core_err_last(), needle))
        fail_msg("rc %d, message '%s' (wanted EINTEGRITY and '%s')", rc, core_err_last(), needle);
}

/* Replaces the first `from` (which must occur) in s by `to`, in place (same length). */
static void patch(char *s, const char *from, const char *to)
{
    char *at = strstr(s, from);
    assert_non_null(at);
    assert_int_equal(strlen(from), strlen(to));
    memcpy(at, to, strlen(to));
}

static void t_tampering(void **state)
{
    sig_fixture *f = *state;
    const char *pub = repo_keys_public_pem(f->k);
    char *bundle = NULL;
    assert_int_equal(repo_sign_resources(f->k, "tiny", RES, N_RES, &bundle), 0);
    json_t *b = json_loads(bundle, 0, NULL);
    json_t *env = json_object_get(b, "dsseEnvelope");
    json_t *sig0 = json_array_get(json_object_get(env, "signatures"), 0);

    /* One payload byte: a resource digest in the signed statement. */
    size_t n;
    unsigned char *payload = unb64(json_string_value(json_object_get(env, "payload")), &n);
    char *dig = strstr((char *)payload, D2);
    assert_non_null(dig);
    dig[10] = '9';
    char *p64 = b64(payload, n);
    json_t *b2 = json_deep_copy(b);
    json_object_set_new(json_object_get(b2, "dsseEnvelope"), "payload", json_string(p64));
    char *t = json_dumps(b2, JSON_COMPACT);
    expect_integrity(t, pub, RES, N_RES, "does not verify");
    free(t);
    json_decref(b2);
    free(p64);
    free(payload);

    /* One signature byte. */
    unsigned char *sig = unb64(json_string_value(json_object_get(sig0, "sig")), &n);
    sig[n - 1] ^= 0x01;
    char *s64 = b64(sig, n);
    b2 = json_deep_copy(b);
    json_object_set_new(
        json_array_get(json_object_get(json_object_get(b2, "dsseEnvelope"), "signatures"), 0),
        "sig", json_string(s64));
    t = json_dumps(b2, JSON_COMPACT);
    expect_integrity(t, pub, RES, N_RES, "does not verify");
    free(t);
    json_decref(b2);
    free(s64);
    free(sig);

    /* Wrong public key: refused by the hint, and by the signature without one. */
    expect_integrity(bundle, repo_keys_public_pem(f->k2), RES, N_RES, "different key");
    b2 = json_deep_copy(b);
    json_object_del(json_object_get(json_object_get(b2, "verificationMaterial"), "publicKey"),
                    "hint");
    t = json_dumps(b2, JSON_COMPACT);
    assert_int_equal(repo_sig_verify(t, strlen(t), pub, RES, N_RES), 0);
    expect_integrity(t, repo_keys_public_pem(f->k2), RES, N_RES, "does not verify");
    free(t);
    json_decref(b2);

    /* Envelope fields. */
    char *c = strdup(bundle);
    patch(c, "bundle.v0.3+json", "bundle.v0.2+json");
    expect_integrity(c, pub, RES, N_RES, "media type");
    free(c);
    c = strdup(bundle);
    patch(c, "vnd.in-toto+json", "vnd.in-toto+jsox");
    expect_integrity(c, pub, RES, N_RES, "payload type");
    free(c);
    expect_integrity("{\"mediaType\":", pub, RES, N_RES, "not a JSON object");

    /* The files differ from what was signed: digest, one missing, one extra. */
    repo_sig_resource changed[] = {RES[0], RES[1], {"weights-x.bin", D1}};
    expect_integrity(bundle, pub, changed, N_RES, "weights-x.bin: digest");
    expect_integrity(bundle, pub, RES, 2, "weights-x.bin, which the version does not have");
    repo_sig_resource more[] = {RES[0], RES[1], RES[2], {"extra.txt", D1}};
    expect_integrity(bundle, pub, more, 4, "extra.txt is not covered");
    /* ... and the same with authentic bundles over other file lists. */
    char *other = NULL;
    assert_int_equal(repo_sign_resources(f->k, "tiny", changed, N_RES, &other), 0);
    expect_integrity(other, pub, RES, N_RES, "weights-x.bin: digest");
    free(other);
    assert_int_equal(repo_sign_resources(f->k, "tiny", RES, 2, &other), 0);
    expect_integrity(other, pub, RES, N_RES, "weights-x.bin is not covered");
    free(other);
    assert_int_equal(repo_sign_resources(f->k, "tiny", more, 4, &other), 0);
    expect_integrity(other, pub, RES, N_RES, "extra.txt, which the version does not have");
    free(other);

    /* Authentic (re-signed) statements that are wrong inside. */
    char hint[65];
    json_t *st = bundle_statement(bundle, hint);
    json_t *subj_digest =
        json_object_get(json_array_get(json_object_get(st, "subject"), 0), "digest");
    json_t *saved = json_deep_copy(st);
    json_object_set_new(subj_digest, "sha256", json_string(DP));
    char *text = json_dumps(st, JSON_COMPACT);
    char *forged = forge_bundle(repo_keys_signing_pkey(f->k), text, hint);
    expect_integrity(forged, pub, RES, N_RES, "subject digest");
    free(forged);
    free(text);
    json_decref(st);

    st = json_deep_copy(saved);
    json_object_set_new(st, "predicateType", json_string("https://model_signing/Digests/v0.1"));
    text = json_dumps(st, JSON_COMPACT);
    forged = forge_bundle(repo_keys_signing_pkey(f->k), text, hint);
    expect_integrity(forged, pub, RES, N_RES, "predicate type");
    free(forged);
    free(text);
    json_decref(st);

    /* A resource listed twice (the root recomputed so that only the duplicate is wrong). */
    st = json_deep_copy(saved);
    json_t *res = json_object_get(json_object_get(st, "predicate"), "resources");
    json_array_append(res, json_array_get(res, 0));
    unsigned char cat[128];
    for (size_t i = 0; i < 4; i++)
        core_unhex(cat + 32 * i, 32,
                   json_string_value(json_object_get(json_array_get(res, i), "digest")));
    char root[65];
    ref_sha256(root, cat, sizeof cat);
    json_object_set_new(
        json_object_get(json_array_get(json_object_get(st, "subject"), 0), "digest"), "sha256",
        json_string(root));
    text = json_dumps(st, JSON_COMPACT);
    forged = forge_bundle(repo_keys_signing_pkey(f->k), text, hint);
    expect_integrity(forged, pub, RES, N_RES, "signed twice");
    free(forged);
    free(text);
    json_decref(st);
    json_decref(saved);

    /* Not a key at all. */
    assert_int_equal(repo_sig_verify(bundle, strlen(bundle), "not a key", RES, N_RES), MLV_EINVAL);
    json_decref(b);
    free(bundle);
}

/* ------------------------------------------------------ allocation failures -- */

/* jansson's allocator, failing exactly the Nth call (SQLite-style fault injection):
 * every JSON value the manifest and signature code builds or parses goes through it. */
static long alloc_countdown = -1;
static bool alloc_failed;

static void *failing_malloc(size_t n)
{
    if (alloc_countdown >= 0 && alloc_countdown-- == 0) {
        alloc_failed = true;
        return NULL;
    }
    return malloc(n);
}

static void t_json_alloc_failures(void **state)
{
    sig_fixture *f = *state;
    const char *pub = repo_keys_public_pem(f->k);
    char *good_bundle = NULL;
    assert_int_equal(repo_sign_resources(f->k, "tiny", RES, N_RES, &good_bundle), 0);
    json_set_alloc_funcs(failing_malloc, free);
    for (int op = 0; op < 4; op++) {
        for (long nth = 0;; nth++) {
            repo_manifest m = sample(), *p = NULL;
            char *out = NULL;
            size_t len;
            int rc;
            alloc_countdown = nth;
            alloc_failed = false;
            switch (op) {
            case 0: rc = repo_manifest_to_json(&m, &out, &len); break;
            case 1: rc = repo_manifest_parse(&p, GOLDEN, strlen(GOLDEN)); break;
            case 2: rc = repo_sign_resources(f->k, "tiny", RES, N_RES, &out); break;
            default: rc = repo_sig_verify(good_bundle, strlen(good_bundle), pub, RES, N_RES); break;
            }
            alloc_countdown = -1;
            if (alloc_failed) {
                if (rc >= 0) fail_msg("op %d: allocation %ld failed unnoticed", op, nth);
                assert_null(out);
                assert_null(p);
                continue;
            }
            assert_int_equal(rc, 0);
            repo_manifest_free(p);
            free(out);
            break; /* every allocation of this operation has failed once */
        }
    }
    json_set_alloc_funcs(malloc, free);
    free(good_bundle);
}

/* --------------------------------------------------- the reference tool ------ */

/* Writes a small model folder; fills res (names point into static strings). */
static const char *const MODEL_FILES[][2] = {
    {"config.json", "{\"architectures\":[\"LlamaForCausalLM\"]}\n"},
    {"weights/model.safetensors", "safetensors header and tensor bytes"},
    {"weights-extra.bin", "extra weights"},
};
#define N_MODEL_FILES 3

static char *write_model(const char *parent, repo_sig_resource res[N_MODEL_FILES])
{
    char *dir = join(parent, "model");
    char *w = join(dir, "weights");
    assert_int_equal(core_mkdir_p(w, 0700), 0);
    free(w);
    for (size_t i = 0; i < N_MODEL_FILES; i++) {
        char *p = join(dir, MODEL_FILES[i][0]);
        size_t len = strlen(MODEL_FILES[i][1]);
        write_text(p, MODEL_FILES[i][1], len);
        res[i].name = MODEL_FILES[i][0];
        ref_sha256(res[i].sha256, MODEL_FILES[i][1], len);
        free(p);
    }
    return dir;
}

static void flip_byte(const char *path)
{
    size_t len;
    char *s = read_text(path, &len);
    assert_true(len > 0);
    s[len / 2] ^= 0x20;
    write_text(path, s, len);
    free(s);
}

static void t_reference_verifies_ours(void **state)
{
    sig_fixture *f = *state;
    if (!venv()) {
        print_message("SKIP: MLV_VENV is unset; not checking with model_signing\n");
        skip();
    }
    char *work = join(f->dir, "ours");
    assert_int_equal(core_mkdir_p(work, 0700), 0);
    repo_sig_resource res[N_MODEL_FILES];
    char *model = write_model(work, res);
    char *bundle = NULL;
    assert_int_equal(repo_sign_resources(f->k, "model", res, N_MODEL_FILES, &bundle), 0);
    char *sigp = join(model, "model.sig"), *pubp = join(work, "pub.pem");
    write_text(sigp, bundle, strlen(bundle));
    write_text(pubp, repo_keys_public_pem(f->k), strlen(repo_keys_public_pem(f->k)));

    char cli[4096], api[4096];
    snprintf(cli, sizeof cli,
             "'%s/bin/model_signing' verify key '%s' --signature '%s' "
             "--public_key '%s'",
             venv(), model, sigp, pubp);
    /* The Python API does not ignore the signature file by itself: this checks that
     * our ignore_paths does it, as the reference signer's does. */
    snprintf(api, sizeof api,
             "'%s/bin/python' -c 'import sys, model_signing; "
             "model_signing.verifying.Config().use_elliptic_key_verifier(public_key=sys.argv[3])"
             ".verify(sys.argv[1], sys.argv[2])' '%s' '%s' '%s'",
             venv(), model, sigp, pubp);
    assert_int_equal(run(cli), 0);
    assert_int_equal(run(api), 0);

    char *victim = join(model, "weights/model.safetensors");
    flip_byte(victim);
    assert_int_not_equal(run_quiet(cli), 0);
    assert_int_not_equal(run_quiet(api), 0);
    flip_byte(victim);
    assert_int_equal(run(cli), 0);

    /* The wrong key fails too. */
    write_text(pubp, repo_keys_public_pem(f->k2), strlen(repo_keys_public_pem(f->k2)));
    assert_int_not_equal(run_quiet(cli), 0);

    free(victim);
    free(sigp);
    free(pubp);
    free(bundle);
    free(model);
    free(work);
}

static void t_we_verify_reference(void **state)
{
    sig_fixture *f = *state;
    if (!venv()) {
        print_message("SKIP: MLV_VENV is unset; not checking with model_signing\n");
        skip();
    }
    char *work = join(f->dir, "theirs");
    assert_int_equal(core_mkdir_p(work, 0700), 0);
    repo_sig_resource res[N_MODEL_FILES];
    char *model = write_model(work, res);
    char *sigp = join(model, "model.sig"), *ec = join(work, "ec.pem"), *key = join(work, "key.pem");
    char *pubp = join(work, "pub.pem");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "openssl ecparam -name prime256v1 -genkey -noout -out '%s' && "
             "openssl pkcs8 -topk8 -nocrypt -in '%s' -out '%s' && "
             "openssl pkey -in '%s' -pubout -out '%s' && "
             "'%s/bin/model_signing' sign key '%s' --private_key '%s' --signature '%s'",
             ec, ec, key, key, pubp, venv(), model, key, sigp);
    assert_int_equal(run(cmd), 0);

    size_t blen, plen;
    char *bundle = read_text(sigp, &blen), *pub = read_text(pubp, &plen);
    assert_int_equal(repo_sig_verify(bundle, blen, pub, res, N_MODEL_FILES), 0);

    /* Their resource order is ours. */
    char *mine = NULL, hint[65];
    assert_int_equal(repo_sign_resources(f->k, "model", res, N_MODEL_FILES, &mine), 0);
    json_t *a = bundle_statement(bundle, hint), *b = bundle_statement(mine, hint);
    json_t *ra = json_object_get(json_object_get(a, "predicate"), "resources");
    json_t *rb = json_object_get(json_object_get(b, "predicate"), "resources");
    assert_int_equal(json_array_size(ra), N_MODEL_FILES);
    assert_int_equal(json_array_size(rb), N_MODEL_FILES);
    for (size_t i = 0; i < N_MODEL_FILES; i++)
        assert_string_equal(json_string_value(json_object_get(json_array_get(ra, i), "name")),
                            json_string_value(json_object_get(json_array_get(rb, i), "name")));
    assert_string_equal(json_string_value(json_object_get(json_array_get(ra, 1), "name")),
                        "weights/model.safetensors");
    json_decref(a);
    json_decref(b);

    /* A file whose bytes differ from what they signed is named. */
    repo_sig_resource changed[N_MODEL_FILES];
    memcpy(changed, res, sizeof changed);
    ref_sha256(changed[0].sha256, "other", 5);
    expect_integrity(bundle, pub, changed, N_MODEL_FILES, "config.json: digest");
    /* Their bundle under our key: refused. */
    expect_integrity(bundle, repo_keys_public_pem(f->k), res, N_MODEL_FILES, "different key");

    free(mine);
    free(bundle);
    free(pub);
    free(sigp);
    free(ec);
    free(key);
    free(pubp);
    free(model);
    free(work);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_sha256_vector),
        cmocka_unit_test(t_manifest_golden_round_trip),
        cmocka_unit_test(t_manifest_rejects),
        cmocka_unit_test_setup_teardown(t_sign_verify, sig_setup, sig_teardown),
        cmocka_unit_test_setup_teardown(t_tampering, sig_setup, sig_teardown),
        cmocka_unit_test_setup_teardown(t_json_alloc_failures, sig_setup, sig_teardown),
        cmocka_unit_test_setup_teardown(t_reference_verifies_ours, sig_setup, sig_teardown),
        cmocka_unit_test_setup_teardown(t_we_verify_reference, sig_setup, sig_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
