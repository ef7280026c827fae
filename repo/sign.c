/* repo/sign.c: signs and verifies a version's files in the OpenSSF model-signing v1.0
 * format, key-based path, exactly as the reference `model_signing` 1.1.1 (Python)
 * writes and checks it (`model_signing sign key` / `verify key`):
 *
 *   bundle (Sigstore v0.3 JSON):
 *     {"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json",
 *      "verificationMaterial":{"publicKey":{"hint":HEX(SHA-256(public key PEM))},
 *                              "tlogEntries":[]},
 *      "dsseEnvelope":{"payload":B64(STATEMENT),
 *                      "payloadType":"application/vnd.in-toto+json",
 *                      "signatures":[{"sig":B64(DER ECDSA),"keyid":""}]}}
 *   STATEMENT (in-toto v1):
 *     {"_type":"https://in-toto.io/Statement/v1",
 *      "subject":[{"name":MODEL,"digest":{"sha256":ROOT}}],
 *      "predicateType":"https://model_signing/signature/v1.0",
 *      "predicate":{"resources":[{"algorithm":"sha256","name":PATH,"digest":HEX}...],
 *                   "serialization":{"method":"files","hash_type":"sha256",
 *                                    "allow_symlinks":false,"ignore_paths":[...]}}}
 *   ROOT = SHA-256 of the raw 32-byte resource digests, concatenated in listed order;
 *   resources are listed in the reference's order (by path components).
 *   sig  = ECDSA-SHA256 (P-256; SHA-384/512 for P-384/521 keys when verifying) over
 *          DSSE PAE: "DSSEv1 28 application/vnd.in-toto+json " LEN(STATEMENT) " " STATEMENT
 *
 * ignore_paths holds "model.sig" (unless a resource has that name), as the reference
 * records it, so a folder exported with its signature as DIR/model.sig verifies both
 * with the CLI and through the reference's Python API. The keys themselves live in
 * keys.c; what to sign and when to verify is the registry's business.
 *
 * Also plain signatures over bytes (repo_sign_bytes): base64 of the DER ECDSA signature
 * over SHA-256 of the bytes, for the registry's release records. */
#include "repo.h"
#include "repo/repo_internal.h"

#include "core/core_json.h"
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

#define BUNDLE_MEDIA_TYPE "application/vnd.dev.sigstore.bundle.v0.3+json"
#define PAYLOAD_TYPE "application/vnd.in-toto+json"
#define STATEMENT_TYPE "https://in-toto.io/Statement/v1"
#define PREDICATE_TYPE "https://model_signing/signature/v1.0"
#define DEFAULT_SIG_NAME "model.sig"
#define BUNDLE_MAX_BYTES (64u << 20)
#define MAX_RESOURCES 100000
#define MODEL_NAME_MAX 256

/* ------------------------------------------------------------------- helpers -- */

/* Standard base64 with padding; caller frees. */
static char *b64_encode(const unsigned char *in, size_t n)
{
    if (n > (size_t)BUNDLE_MAX_BYTES) return NULL;
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (!out) return NULL;
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    return out;
}

static bool b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* Strict standard base64 (padded, no whitespace). *out owned by the caller. */
static int b64_decode(const char *what, const char *in, size_t n, unsigned char **out,
                      size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    size_t pad = 0;
    if (n % 4 != 0 || n > (size_t)BUNDLE_MAX_BYTES) goto bad;
    if (n >= 1 && in[n - 1] == '=') pad++;
    if (n >= 2 && in[n - 2] == '=') pad++;
    for (size_t i = 0; i < n - pad; i++)
        if (!b64_char(in[i])) goto bad;
    unsigned char *buf = malloc(n / 4 * 3 + 1);
    if (!buf) return core_err_set(MLV_ENOMEM, "signature: out of memory");
    int got = n ? EVP_DecodeBlock(buf, (const unsigned char *)in, (int)n) : 0;
    if (got < 0 || (size_t)got < pad) {
        free(buf);
        goto bad;
    }
    *out = buf;
    *outlen = (size_t)got - pad; /* EVP_DecodeBlock counts padding as zero bytes */
    return 0;
bad:
    return core_err_set(MLV_EINTEGRITY, "signature: %s is not valid base64", what);
}

/* The hash the reference pairs with each curve it accepts; NULL for other keys. */
static const EVP_MD *key_digest(EVP_PKEY *pk)
{
    char group[64];
    if (!pk || !EVP_PKEY_is_a(pk, "EC")) return NULL;
    if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, NULL) !=
        1)
        return NULL;
    if (!strcmp(group, "prime256v1") || !strcmp(group, "P-256")) return EVP_sha256();
    if (!strcmp(group, "secp384r1") || !strcmp(group, "P-384")) return EVP_sha384();
    if (!strcmp(group, "secp521r1") || !strcmp(group, "P-521")) return EVP_sha512();
    return NULL;
}

/* The key hint: hex SHA-256 of the public key re-encoded as SubjectPublicKeyInfo PEM
 * (what `cryptography` writes, byte for byte the same as OpenSSL's PEM). */
static int key_hint(EVP_PKEY *pk, char out[65])
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    long n;
    int rc = 0;
    if (!b || PEM_write_bio_PUBKEY(b, pk) != 1 || (n = BIO_get_mem_data(b, &data)) <= 0)
        rc = core_err_set(MLV_ECRYPTO, "signature: cannot encode the public key");
    else
        repo_sha256_hex(out, data, (size_t)n);
    BIO_free(b);
    return rc;
}

/* DSSE v1 pre-authentication encoding of an in-toto payload; caller frees. */
static unsigned char *pae(const unsigned char *payload, size_t n, size_t *outlen)
{
    core_buf b = {0};
    core_buf_appendf(&b, "DSSEv1 %zu %s %zu ", strlen(PAYLOAD_TYPE), PAYLOAD_TYPE, n);
    core_buf_append(&b, payload, n);
    size_t len = b.len;
    char *s = core_buf_take(&b);
    *outlen = s ? len : 0;
    return (unsigned char *)s;
}

/* Order of the reference's resource list: paths compared component by component
 * (Python sorts PurePosixPath objects), i.e. bytewise with '/' below every other
 * byte a safe path may hold. */
static int path_cmp(const char *a, const char *b)
{
    for (;; a++, b++) {
        unsigned ca = (unsigned char)*a, cb = (unsigned char)*b;
        if (ca == '/') ca = 1;
        if (cb == '/') cb = 1;
        if (ca != cb) return ca < cb ? -1 : 1;
        if (!ca) return 0;
    }
}

static int res_cmp_components(const void *x, const void *y)
{
    const repo_sig_resource *a = *(const repo_sig_resource *const *)x;
    const repo_sig_resource *b = *(const repo_sig_resource *const *)y;
    return path_cmp(a->name, b->name);
}

/* A JSON string, telling bad UTF-8 (EINVAL) from a failed allocation (ENOMEM). */
static int jstr(json_t **out, const char *what, const char *s)
{
    *out = json_string(s);
    if (*out) return 0;
    json_t *probe = json_string_nocheck(s);
    if (!probe) return core_err_set(MLV_ENOMEM, "signature: out of memory");
    json_decref(probe);
    return core_err_set(MLV_EINVAL, "signature: %s is not valid UTF-8", what);
}

static int put(json_t *obj, const char *key, json_t *v)
{
    if (!v || json_object_set_new(obj, key, v) != 0)
        return core_err_set(MLV_ENOMEM, "signature: out of memory");
    return 0;
}

/* ------------------------------------------------------------------- signing -- */

/* The in-toto statement over `sorted` (already validated, in reference order). */
static int build_statement(const char *model_name, const repo_sig_resource *const *sorted, size_t n,
                           char **out)
{
    json_t *st = json_object(), *subjects = NULL, *subject = NULL, *digest = NULL;
    json_t *pred = NULL, *resources = NULL, *ser = NULL, *ignore = NULL, *s = NULL;
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    bool sig_is_resource = false;
    int rc = 0;
    *out = NULL;
    if (!st || !h || EVP_DigestInit_ex(h, EVP_sha256(), NULL) != 1) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }
    if ((rc = put(st, "_type", json_string(STATEMENT_TYPE))) ||
        (rc = put(st, "subject", subjects = json_array())) ||
        (rc = put(st, "predicateType", json_string(PREDICATE_TYPE))) ||
        (rc = put(st, "predicate", pred = json_object())) ||
        (rc = put(pred, "resources", resources = json_array())) ||
        (rc = put(pred, "serialization", ser = json_object())) ||
        (rc = put(ser, "method", json_string("files"))) ||
        (rc = put(ser, "hash_type", json_string("sha256"))) ||
        (rc = put(ser, "allow_symlinks", json_false())) ||
        (rc = put(ser, "ignore_paths", ignore = json_array())))
        goto done;

    for (size_t i = 0; i < n; i++) {
        unsigned char raw[32];
        json_t *r = json_object();
        if (!r || json_array_append_new(resources, r) != 0) {
            rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
            goto done;
        }
        if ((rc = put(r, "algorithm", json_string("sha256")))) goto done;
        if ((rc = jstr(&s, "a resource name", sorted[i]->name))) goto done;
        if ((rc = put(r, "name", s)) || (rc = put(r, "digest", json_string(sorted[i]->sha256))))
            goto done;
        if ((rc = core_unhex(raw, 32, sorted[i]->sha256))) goto done;
        if (EVP_DigestUpdate(h, raw, 32) != 1) {
            rc = core_err_set(MLV_ECRYPTO, "signature: SHA-256 failed");
            goto done;
        }
        if (!strcmp(sorted[i]->name, DEFAULT_SIG_NAME)) sig_is_resource = true;
    }
    if (!sig_is_resource && json_array_append_new(ignore, json_string(DEFAULT_SIG_NAME)) != 0) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }

    unsigned char root[32];
    char root_hex[65];
    unsigned int rl = 0;
    if (EVP_DigestFinal_ex(h, root, &rl) != 1 || rl != 32) {
        rc = core_err_set(MLV_ECRYPTO, "signature: SHA-256 failed");
        goto done;
    }
    core_hex(root_hex, root, 32);
    subject = json_object();
    if (!subject || json_array_append_new(subjects, subject) != 0) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }
    if ((rc = jstr(&s, "the model name", model_name)) || (rc = put(subject, "name", s)) ||
        (rc = put(subject, "digest", digest = json_object())) ||
        (rc = put(digest, "sha256", json_string(root_hex))))
        goto done;

    if (!(*out = core_json_dumps(st, JSON_SORT_KEYS | JSON_COMPACT)))
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
done:
    EVP_MD_CTX_free(h);
    json_decref(st);
    return rc;
}

int repo_sign_resources(const repo_keys *k, const char *model_name, const repo_sig_resource *res,
                        size_t n, char **bundle_json)
{
    const repo_sig_resource **sorted = NULL;
    char *statement = NULL, *payload_b64 = NULL, *sig_b64 = NULL;
    unsigned char *msg = NULL, *sig = NULL;
    EVP_MD_CTX *ctx = NULL;
    json_t *bundle = NULL, *vm = NULL, *pk = NULL, *env = NULL, *sigs = NULL, *sig1 = NULL;
    char hint[65];
    int rc = 0;

    if (!bundle_json) return core_err_set(MLV_EINVAL, "signature: no output");
    *bundle_json = NULL;
    EVP_PKEY *key = k ? repo_keys_signing_pkey(k) : NULL;
    const EVP_MD *md = key_digest(key);
    if (!md) return core_err_set(MLV_EINVAL, "signature: no ECDSA signing key");
    size_t mn = model_name ? strlen(model_name) : 0;
    if (mn == 0 || mn > MODEL_NAME_MAX)
        return core_err_set(MLV_EINVAL, "signature: model name is empty or too long");
    for (size_t i = 0; i < mn; i++)
        if ((unsigned char)model_name[i] < 0x20 || model_name[i] == 0x7f)
            return core_err_set(MLV_EINVAL, "signature: model name has a control character");
    if (n == 0 || !res) return core_err_set(MLV_EINVAL, "signature: nothing to sign");
    if (n > MAX_RESOURCES)
        return core_err_set(MLV_EINVAL, "signature: more than %d files", MAX_RESOURCES);

    if (!(sorted = malloc(n * sizeof *sorted))) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (!res[i].name || !core_relpath_safe(res[i].name)) {
            rc =
                core_err_set(MLV_EINVAL, "signature: file name '%.80s' is not a safe relative path",
                             res[i].name ? res[i].name : "(null)");
            goto done;
        }
        if (!core_is_hex(res[i].sha256, 64)) {
            rc = core_err_set(MLV_EINVAL,
                              "signature: file %s: sha256 is not 64 lowercase hex "
                              "characters",
                              res[i].name);
            goto done;
        }
        sorted[i] = &res[i];
    }
    qsort(sorted, n, sizeof *sorted, res_cmp_components);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(sorted[i - 1]->name, sorted[i]->name)) {
            rc = core_err_set(MLV_EINVAL, "signature: file %s is listed twice", sorted[i]->name);
            goto done;
        }

    if ((rc = build_statement(model_name, sorted, n, &statement))) goto done;
    size_t slen = strlen(statement), msglen = 0, siglen = 0;
    if (!(msg = pae((const unsigned char *)statement, slen, &msglen))) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }
    if (!(ctx = EVP_MD_CTX_new()) || EVP_DigestSignInit(ctx, NULL, md, NULL, key) != 1 ||
        EVP_DigestSign(ctx, NULL, &siglen, msg, msglen) != 1 || !(sig = malloc(siglen)) ||
        EVP_DigestSign(ctx, sig, &siglen, msg, msglen) != 1) {
        rc = core_err_set(MLV_ECRYPTO, "signature: ECDSA signing failed");
        goto done;
    }
    if ((rc = key_hint(key, hint))) goto done;
    if (!(payload_b64 = b64_encode((const unsigned char *)statement, slen)) ||
        !(sig_b64 = b64_encode(sig, siglen)) || !(bundle = json_object())) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }
    /* Insertion order, as the reference writes it. */
    if ((rc = put(bundle, "mediaType", json_string(BUNDLE_MEDIA_TYPE))) ||
        (rc = put(bundle, "verificationMaterial", vm = json_object())) ||
        (rc = put(vm, "publicKey", pk = json_object())) ||
        (rc = put(pk, "hint", json_string(hint))) || (rc = put(vm, "tlogEntries", json_array())) ||
        (rc = put(bundle, "dsseEnvelope", env = json_object())) ||
        (rc = put(env, "payload", json_string(payload_b64))) ||
        (rc = put(env, "payloadType", json_string(PAYLOAD_TYPE))) ||
        (rc = put(env, "signatures", sigs = json_array())))
        goto done;
    if (!(sig1 = json_object()) || json_array_append_new(sigs, sig1) != 0) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }
    if ((rc = put(sig1, "sig", json_string(sig_b64))) || (rc = put(sig1, "keyid", json_string(""))))
        goto done;
    if (!(*bundle_json = core_json_dumps(bundle, JSON_COMPACT | JSON_PRESERVE_ORDER)))
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
done:
    json_decref(bundle);
    EVP_MD_CTX_free(ctx);
    free(sig);
    free(msg);
    free(statement);
    free(payload_b64);
    free(sig_b64);
    free(sorted);
    return rc;
}

/* ---------------------------------------------------------------- verifying -- */

typedef struct signed_res {
    const char *name;   /* borrowed from the statement document */
    const char *sha256; /* likewise */
} signed_res;

static int signed_cmp(const void *x, const void *y)
{
    return strcmp(((const signed_res *)x)->name, ((const signed_res *)y)->name);
}

static int expect_cmp(const void *x, const void *y)
{
    return strcmp((*(const repo_sig_resource *const *)x)->name,
                  (*(const repo_sig_resource *const *)y)->name);
}

static const char *str_at(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key)); /* NULL unless a string */
}

/* Checks the statement's shape and root digest; fills *out (borrowing from st). */
static int read_statement(const json_t *st, signed_res **out, size_t *n_out)
{
    const char *t = str_at(st, "_type");
    if (!t || strcmp(t, STATEMENT_TYPE))
        return core_err_set(MLV_EINTEGRITY, "signature: statement type is not " STATEMENT_TYPE);
    const char *pt = str_at(st, "predicateType");
    if (!pt || strcmp(pt, PREDICATE_TYPE))
        return core_err_set(MLV_EINTEGRITY, "signature: predicate type is not " PREDICATE_TYPE);
    const json_t *subjects = json_object_get(st, "subject");
    if (!json_is_array(subjects) || json_array_size(subjects) != 1)
        return core_err_set(MLV_EINTEGRITY, "signature: the statement must have one subject");
    const char *root_hex = str_at(json_object_get(json_array_get(subjects, 0), "digest"), "sha256");
    if (!root_hex || !core_is_hex(root_hex, 64))
        return core_err_set(MLV_EINTEGRITY, "signature: the subject has no sha256 digest");
    const json_t *pred = json_object_get(st, "predicate");
    const json_t *ser = json_object_get(pred, "serialization");
    const char *method = str_at(ser, "method"), *hash_type = str_at(ser, "hash_type");
    if (!method || strcmp(method, "files") || !hash_type || strcmp(hash_type, "sha256"))
        return core_err_set(MLV_EINTEGRITY, "signature: serialization is not files/sha256");
    const json_t *resources = json_object_get(pred, "resources");
    if (!json_is_array(resources) || json_array_size(resources) > MAX_RESOURCES)
        return core_err_set(MLV_EINTEGRITY, "signature: no usable resource list");

    size_t n = json_array_size(resources);
    signed_res *list = calloc(n ? n : 1, sizeof *list);
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    int rc = 0;
    if (!list || !h || EVP_DigestInit_ex(h, EVP_sha256(), NULL) != 1) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *r = json_array_get(resources, i);
        const char *alg = str_at(r, "algorithm"), *name = str_at(r, "name");
        const char *dig = str_at(r, "digest");
        unsigned char raw[32];
        if (!alg || strcmp(alg, "sha256") || !name || !dig || !core_is_hex(dig, 64)) {
            rc = core_err_set(MLV_EINTEGRITY,
                              "signature: resource %zu is not a sha256 "
                              "name/digest pair",
                              i);
            goto done;
        }
        core_unhex(raw, 32, dig);
        if (EVP_DigestUpdate(h, raw, 32) != 1) {
            rc = core_err_set(MLV_ECRYPTO, "signature: SHA-256 failed");
            goto done;
        }
        list[i].name = name;
        list[i].sha256 = dig;
    }
    unsigned char root[32];
    char got[65];
    unsigned int rl = 0;
    if (EVP_DigestFinal_ex(h, root, &rl) != 1 || rl != 32) {
        rc = core_err_set(MLV_ECRYPTO, "signature: SHA-256 failed");
        goto done;
    }
    core_hex(got, root, 32);
    if (strcmp(got, root_hex)) {
        rc = core_err_set(MLV_EINTEGRITY,
                          "signature: the subject digest %s does not match the "
                          "resources (they hash to %s)",
                          root_hex, got);
        goto done;
    }
    *out = list;
    *n_out = n;
    list = NULL;
done:
    EVP_MD_CTX_free(h);
    free(list);
    return rc;
}

/* The signed resources must be exactly `expect`. */
static int compare_resources(signed_res *got, size_t n_got, const repo_sig_resource *expect,
                             size_t n_expect)
{
    const repo_sig_resource **want = NULL;
    int rc = 0;
    if (n_expect && !(want = malloc(n_expect * sizeof *want)))
        return core_err_set(MLV_ENOMEM, "signature: out of memory");
    for (size_t i = 0; i < n_expect; i++) {
        if (!expect[i].name || !core_is_hex(expect[i].sha256, 64)) {
            rc = core_err_set(MLV_EINVAL, "signature: expected file %zu has no name or digest", i);
            goto done;
        }
        want[i] = &expect[i];
    }
    if (n_expect) qsort(want, n_expect, sizeof *want, expect_cmp);
    if (n_got) qsort(got, n_got, sizeof *got, signed_cmp);
    for (size_t i = 1; i < n_expect; i++)
        if (!strcmp(want[i - 1]->name, want[i]->name)) {
            rc = core_err_set(MLV_EINVAL, "signature: expected file %s is listed twice",
                              want[i]->name);
            goto done;
        }
    for (size_t i = 1; i < n_got; i++)
        if (!strcmp(got[i - 1].name, got[i].name)) {
            rc =
                core_err_set(MLV_EINTEGRITY, "signature: file %.200s is signed twice", got[i].name);
            goto done;
        }
    size_t i = 0, j = 0;
    while (i < n_expect || j < n_got) {
        int c = i == n_expect ? 1 : j == n_got ? -1 : strcmp(want[i]->name, got[j].name);
        if (c < 0) {
            rc = core_err_set(MLV_EINTEGRITY, "signature: file %s is not covered by the signature",
                              want[i]->name);
            goto done;
        }
        if (c > 0) {
            rc = core_err_set(MLV_EINTEGRITY,
                              "signature: it covers file %.200s, which the version "
                              "does not have",
                              got[j].name);
            goto done;
        }
        if (strcmp(want[i]->sha256, got[j].sha256)) {
            rc = core_err_set(MLV_EINTEGRITY,
                              "signature: file %s: digest %s differs from the "
                              "signed %s",
                              want[i]->name, want[i]->sha256, got[j].sha256);
            goto done;
        }
        i++;
        j++;
    }
done:
    free(want);
    return rc;
}

int repo_sig_verify(const char *bundle_json, size_t len, const char *public_pem,
                    const repo_sig_resource *expect, size_t n_expect)
{
    EVP_PKEY *key = NULL;
    BIO *bio = NULL;
    EVP_MD_CTX *ctx = NULL;
    json_t *bundle = NULL, *st = NULL;
    unsigned char *payload = NULL, *sig = NULL, *msg = NULL;
    signed_res *got = NULL;
    size_t payload_len = 0, sig_len = 0, msg_len = 0, n_got = 0;
    char hint[65];
    json_error_t jerr;
    int rc = 0;

    if (!bundle_json || !public_pem || (n_expect && !expect))
        return core_err_set(MLV_EINVAL, "signature: missing argument");
    if (len > BUNDLE_MAX_BYTES)
        return core_err_set(MLV_EINTEGRITY, "signature: bundle of %zu bytes is over the limit",
                            len);

    const EVP_MD *md = NULL;
    if (!(bio = BIO_new_mem_buf(public_pem, -1)) ||
        !(key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL))) {
        rc = core_err_set(MLV_EINVAL, "signature: the public key is not a PEM public key");
        goto done;
    }
    if (!(md = key_digest(key))) {
        rc = core_err_set(MLV_EINVAL, "signature: the public key is not ECDSA P-256/384/521");
        goto done;
    }
    if ((rc = key_hint(key, hint))) goto done;

    if (!(bundle = json_loadb(bundle_json, len, JSON_REJECT_DUPLICATES, &jerr)) ||
        !json_is_object(bundle)) {
        rc = core_err_set(MLV_EINTEGRITY, "signature: the bundle is not a JSON object%s%s",
                          bundle ? "" : ": ", bundle ? "" : jerr.text);
        goto done;
    }
    const char *media = str_at(bundle, "mediaType");
    if (!media || strcmp(media, BUNDLE_MEDIA_TYPE)) {
        rc = core_err_set(MLV_EINTEGRITY, "signature: media type is not " BUNDLE_MEDIA_TYPE);
        goto done;
    }
    const json_t *pk =
        json_object_get(json_object_get(bundle, "verificationMaterial"), "publicKey");
    if (!json_is_object(pk)) {
        rc = core_err_set(MLV_EINTEGRITY, "signature: the bundle is not signed with a public key");
        goto done;
    }
    /* Like the reference: an empty or absent hint is allowed, a different one is not. */
    const char *their_hint = str_at(pk, "hint");
    if (their_hint && their_hint[0] && strcmp(their_hint, hint)) {
        rc = core_err_set(MLV_EINTEGRITY,
                          "signature: made with a different key (hint %.64s, "
                          "ours %s)",
                          their_hint, hint);
        goto done;
    }
    const json_t *env = json_object_get(bundle, "dsseEnvelope");
    const char *ptype = str_at(env, "payloadType");
    if (!ptype || strcmp(ptype, PAYLOAD_TYPE)) {
        rc = core_err_set(MLV_EINTEGRITY, "signature: payload type is not " PAYLOAD_TYPE);
        goto done;
    }
    const json_t *sigs = json_object_get(env, "signatures");
    const json_t *p64 = json_object_get(env, "payload");
    const json_t *s64 = json_object_get(json_array_get(sigs, 0), "sig");
    if (!json_is_array(sigs) || json_array_size(sigs) != 1 || !json_is_string(p64) ||
        !json_is_string(s64)) {
        rc = core_err_set(MLV_EINTEGRITY,
                          "signature: the envelope needs a payload and one signature");
        goto done;
    }
    if ((rc = b64_decode("the payload", json_string_value(p64), json_string_length(p64), &payload,
                         &payload_len)) ||
        (rc = b64_decode("the signature", json_string_value(s64), json_string_length(s64), &sig,
                         &sig_len)))
        goto done;

    if (!(msg = pae(payload, payload_len, &msg_len))) {
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
        goto done;
    }
    if (!(ctx = EVP_MD_CTX_new()) || EVP_DigestVerifyInit(ctx, NULL, md, NULL, key) != 1) {
        rc = core_err_set(MLV_ECRYPTO, "signature: cannot start ECDSA verification");
        goto done;
    }
    if (EVP_DigestVerify(ctx, sig, sig_len, msg, msg_len) != 1) {
        rc = core_err_set(MLV_EINTEGRITY, "signature: the ECDSA signature does not verify with "
                                          "this public key");
        goto done;
    }

    /* Authentic from here on; now check that it says what we expect. */
    if (!(st = json_loadb((const char *)payload, payload_len, JSON_REJECT_DUPLICATES, &jerr)) ||
        !json_is_object(st)) {
        rc = core_err_set(MLV_EINTEGRITY, "signature: the payload is not a JSON object");
        goto done;
    }
    if ((rc = read_statement(st, &got, &n_got))) goto done;
    rc = compare_resources(got, n_got, expect, n_expect);
done:
    free(got);
    json_decref(st);
    free(msg);
    free(sig);
    free(payload);
    EVP_MD_CTX_free(ctx);
    json_decref(bundle);
    EVP_PKEY_free(key);
    BIO_free(bio);
    return rc;
}

int repo_pubkey_canonical(const char *pem, char **canon_pem, char hint[65])
{
    *canon_pem = NULL;
    BIO *in = BIO_new_mem_buf(pem, -1), *out = NULL;
    EVP_PKEY *key = in ? PEM_read_bio_PUBKEY(in, NULL, NULL, NULL) : NULL;
    int rc = 0;
    char *data;
    long n;
    if (!key)
        rc = core_err_set(MLV_EINVAL, "not a PEM public key");
    else if (!key_digest(key))
        rc = core_err_set(MLV_EINVAL, "not an ECDSA P-256/384/521 key");
    else if (!(out = BIO_new(BIO_s_mem())) || PEM_write_bio_PUBKEY(out, key) != 1 ||
             (n = BIO_get_mem_data(out, &data)) <= 0)
        rc = core_err_set(MLV_ECRYPTO, "cannot encode the public key");
    else if (!(*canon_pem = strndup(data, (size_t)n)))
        rc = core_err_set(MLV_ENOMEM, "out of memory");
    else
        repo_sha256_hex(hint, *canon_pem, (size_t)n);
    EVP_PKEY_free(key);
    BIO_free(in);
    BIO_free(out);
    return rc;
}

/* ------------------------------------------------------ signatures over bytes -- */
/* Release records are signed as plain bytes, not as model-signing bundles: a serving
 * node or `openssl dgst -verify` checks them with nothing but the public key. */

int repo_sign_bytes(const repo_keys *k, const void *data, size_t len, char **sig_b64)
{
    if (!sig_b64) return core_err_set(MLV_EINVAL, "signature: no output");
    *sig_b64 = NULL;
    EVP_PKEY *key = k ? repo_keys_signing_pkey(k) : NULL;
    const EVP_MD *md = key_digest(key);
    if (!md) return core_err_set(MLV_EINVAL, "signature: no ECDSA signing key");
    if (!data && len) return core_err_set(MLV_EINVAL, "signature: no data");
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char *sig = NULL;
    size_t siglen = 0;
    int rc = 0;
    if (!ctx || EVP_DigestSignInit(ctx, NULL, md, NULL, key) != 1 ||
        EVP_DigestSign(ctx, NULL, &siglen, data, len) != 1 || !(sig = malloc(siglen)) ||
        EVP_DigestSign(ctx, sig, &siglen, data, len) != 1) {
        rc = core_err_set(MLV_ECRYPTO, "signature: ECDSA signing failed");
        goto done;
    }
    if (!(*sig_b64 = b64_encode(sig, siglen)))
        rc = core_err_set(MLV_ENOMEM, "signature: out of memory");
done:
    free(sig);
    EVP_MD_CTX_free(ctx);
    return rc;
}

int repo_verify_bytes(const char *public_pem, const void *data, size_t len, const char *sig_b64)
{
    if (!public_pem || !sig_b64 || (!data && len))
        return core_err_set(MLV_EINVAL, "signature: missing argument");
    BIO *bio = BIO_new_mem_buf(public_pem, -1);
    EVP_PKEY *key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    EVP_MD_CTX *ctx = NULL;
    unsigned char *sig = NULL;
    size_t siglen = 0;
    const EVP_MD *md = key_digest(key);
    int rc = 0;
    if (!md) {
        rc = core_err_set(MLV_EINVAL, "signature: the public key is not an ECDSA P-256/384/521 "
                                      "PEM public key");
        goto done;
    }
    if ((rc = b64_decode("the signature", sig_b64, strlen(sig_b64), &sig, &siglen))) goto done;
    if (!(ctx = EVP_MD_CTX_new()) || EVP_DigestVerifyInit(ctx, NULL, md, NULL, key) != 1) {
        rc = core_err_set(MLV_ECRYPTO, "signature: cannot start ECDSA verification");
        goto done;
    }
    if (EVP_DigestVerify(ctx, sig, siglen, data, len) != 1)
        rc = core_err_set(MLV_EINTEGRITY,
                          "signature: the ECDSA signature does not verify with this public key");
done:
    free(sig);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    BIO_free(bio);
    return rc;
}
