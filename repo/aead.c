/* repo/aead.c: the blob encryption format — a chunked AES-256-GCM stream in the style of
 * age's STREAM (the layout is documented in repo.h, "AEAD stream"). Encrypts and
 * decrypts one chunk at a time with contexts set up once per blob; it knows nothing of
 * files, digests or key wrapping (blob.c, keys.c). */
#include "repo/repo.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC "MLVBLOB1"
#define MAGIC_LEN 8
#define SALT_LEN 32
#define MAC_LEN 24
#define NONCE_LEN 12

_Static_assert(MAGIC_LEN + SALT_LEN + MAC_LEN == REPO_BLOB_HEADER, "header layout");

/* Shared by both directions: the GCM context keyed once with the payload key, and the
 * position in the stream. */
typedef struct stream {
    EVP_CIPHER_CTX *ctx;
    uint64_t counter;
    bool finished; /* the last chunk went through */
    bool failed;   /* a chunk did not verify: the stream is dead */
} stream;

struct repo_aead_enc {
    stream s;
};
struct repo_aead_dec {
    stream s;
};

uint64_t repo_aead_ciphertext_size(uint64_t n)
{
    /* Full chunks, then one last chunk of n % REPO_CHUNK bytes (possibly empty). */
    return REPO_BLOB_HEADER + n + (n / REPO_CHUNK + 1) * REPO_TAG;
}

static int hkdf_sha256(unsigned char out[32], const unsigned char dek[REPO_KEY_LEN],
                       const unsigned char salt[SALT_LEN], const char *info)
{
    int rc = 0;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)dek, REPO_KEY_LEN),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, SALT_LEN),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
        OSSL_PARAM_construct_end(),
    };
    if (!kctx || EVP_KDF_derive(kctx, out, 32, params) != 1)
        rc = core_err_set(MLV_ECRYPTO, "HKDF-SHA256 failed");
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return rc;
}

/* mac = HMAC-SHA256(hk, magic || salt), truncated to MAC_LEN bytes. */
static int header_mac(unsigned char mac[MAC_LEN], const unsigned char dek[REPO_KEY_LEN],
                      const unsigned char *header)
{
    unsigned char hk[32], full[32];
    unsigned int full_len = 0;
    int rc = hkdf_sha256(hk, dek, header + MAGIC_LEN, "mlvault blob header");
    if (rc == 0 &&
        !HMAC(EVP_sha256(), hk, sizeof hk, header, MAGIC_LEN + SALT_LEN, full, &full_len))
        rc = core_err_set(MLV_ECRYPTO, "HMAC-SHA256 failed");
    if (rc == 0) memcpy(mac, full, MAC_LEN);
    OPENSSL_cleanse(hk, sizeof hk);
    OPENSSL_cleanse(full, sizeof full);
    return rc;
}

static int stream_init(stream *s, const unsigned char dek[REPO_KEY_LEN],
                       const unsigned char *header, bool encrypt)
{
    unsigned char pk[32];
    int rc = hkdf_sha256(pk, dek, header + MAGIC_LEN, "mlvault blob payload");
    if (rc != 0) return rc;
    if (!(s->ctx = EVP_CIPHER_CTX_new()) ||
        EVP_CipherInit_ex(s->ctx, EVP_aes_256_gcm(), NULL, pk, NULL, encrypt ? 1 : 0) != 1)
        rc = core_err_set(MLV_ECRYPTO, "AES-256-GCM initialisation failed");
    OPENSSL_cleanse(pk, sizeof pk);
    return rc;
}

/* nonce = 11-byte big-endian chunk counter || last flag. */
static void stream_nonce(const stream *s, bool last, unsigned char nonce[NONCE_LEN])
{
    memset(nonce, 0, NONCE_LEN);
    uint64_t c = s->counter;
    for (int i = 10; i >= 3; i--, c >>= 8)
        nonce[i] = (unsigned char)c;
    nonce[11] = last ? 1 : 0;
}

/* Checks that a chunk of `n` plaintext bytes may come next: every chunk but the last
 * is full, the last is not, and nothing follows the last. */
static int stream_check(const stream *s, size_t n, bool last)
{
    if (s->failed) return core_err_set(MLV_EINTEGRITY, "stream already failed to verify");
    if (s->finished) return core_err_set(MLV_EINVAL, "chunk after the last chunk");
    if (last ? n >= REPO_CHUNK : n != REPO_CHUNK)
        return core_err_set(MLV_EINVAL, "chunk of %zu bytes %s", n,
                            last ? "cannot be the last (must be < 64 KiB)"
                                 : "must be the last (only it may be < 64 KiB)");
    return 0;
}

int repo_aead_enc_new(repo_aead_enc **out, const unsigned char dek[REPO_KEY_LEN],
                      unsigned char header[REPO_BLOB_HEADER])
{
    *out = NULL;
    repo_aead_enc *e = calloc(1, sizeof *e);
    if (!e) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc;
    memcpy(header, MAGIC, MAGIC_LEN);
    if ((rc = core_random(header + MAGIC_LEN, SALT_LEN)) != 0 ||
        (rc = header_mac(header + MAGIC_LEN + SALT_LEN, dek, header)) != 0 ||
        (rc = stream_init(&e->s, dek, header, true)) != 0) {
        repo_aead_enc_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

int repo_aead_enc_chunk(repo_aead_enc *e, const unsigned char *in, size_t n, bool last,
                        unsigned char *out)
{
    stream *s = &e->s;
    int rc = stream_check(s, n, last);
    if (rc != 0) return rc;
    unsigned char nonce[NONCE_LEN];
    stream_nonce(s, last, nonce);
    int len = 0, fin = 0;
    if (EVP_EncryptInit_ex(s->ctx, NULL, NULL, NULL, nonce) != 1 ||
        (n > 0 && EVP_EncryptUpdate(s->ctx, out, &len, in, (int)n) != 1) ||
        EVP_EncryptFinal_ex(s->ctx, out + len, &fin) != 1 || (size_t)(len + fin) != n ||
        EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_GET_TAG, REPO_TAG, out + n) != 1) {
        s->failed = true;
        return core_err_set(MLV_ECRYPTO, "AES-256-GCM encryption of chunk %llu failed",
                            (unsigned long long)s->counter);
    }
    s->counter++;
    s->finished = last;
    return 0;
}

void repo_aead_enc_free(repo_aead_enc *e)
{
    if (!e) return;
    EVP_CIPHER_CTX_free(e->s.ctx);
    free(e);
}

int repo_aead_dec_new(repo_aead_dec **out, const unsigned char dek[REPO_KEY_LEN],
                      const unsigned char header[REPO_BLOB_HEADER])
{
    *out = NULL;
    if (memcmp(header, MAGIC, MAGIC_LEN) != 0)
        return core_err_set(MLV_EINTEGRITY, "not an mlvault blob (bad magic)");
    unsigned char mac[MAC_LEN];
    int rc = header_mac(mac, dek, header);
    if (rc != 0) return rc;
    if (CRYPTO_memcmp(mac, header + MAGIC_LEN + SALT_LEN, MAC_LEN) != 0)
        return core_err_set(MLV_EINTEGRITY,
                            "header does not authenticate (altered, or wrong data key)");
    repo_aead_dec *d = calloc(1, sizeof *d);
    if (!d) return core_err_set(MLV_ENOMEM, "out of memory");
    if ((rc = stream_init(&d->s, dek, header, false)) != 0) {
        repo_aead_dec_free(d);
        return rc;
    }
    *out = d;
    return 0;
}

int repo_aead_dec_chunk(repo_aead_dec *d, const unsigned char *in, size_t n, bool last,
                        unsigned char *out)
{
    stream *s = &d->s;
    if (n < REPO_TAG) {
        s->failed = true;
        return core_err_set(MLV_EINTEGRITY, "chunk %llu is shorter than its tag",
                            (unsigned long long)s->counter);
    }
    size_t pn = n - REPO_TAG;
    int rc = stream_check(s, pn, last);
    if (rc != 0) return rc;
    unsigned char nonce[NONCE_LEN];
    stream_nonce(s, last, nonce);
    int len = 0, fin = 0;
    if (EVP_DecryptInit_ex(s->ctx, NULL, NULL, NULL, nonce) != 1 ||
        (pn > 0 && EVP_DecryptUpdate(s->ctx, out, &len, in, (int)pn) != 1) ||
        EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_SET_TAG, REPO_TAG, (void *)(in + pn)) != 1) {
        s->failed = true;
        OPENSSL_cleanse(out, pn);
        return core_err_set(MLV_ECRYPTO, "AES-256-GCM decryption of chunk %llu failed",
                            (unsigned long long)s->counter);
    }
    if (EVP_DecryptFinal_ex(s->ctx, out + len, &fin) != 1 || (size_t)(len + fin) != pn) {
        s->failed = true;
        OPENSSL_cleanse(out, pn);
        return core_err_set(MLV_EINTEGRITY, "chunk %llu does not authenticate",
                            (unsigned long long)s->counter);
    }
    s->counter++;
    s->finished = last;
    return 0;
}

int repo_aead_dec_seek(repo_aead_dec *d, uint64_t chunk)
{
    if (d->s.failed) return core_err_set(MLV_EINTEGRITY, "stream already failed to verify");
    d->s.counter = chunk;
    d->s.finished = false;
    return 0;
}

void repo_aead_dec_free(repo_aead_dec *d)
{
    if (!d) return;
    EVP_CIPHER_CTX_free(d->s.ctx);
    free(d);
}
