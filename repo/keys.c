/* repo/keys.c: the data home's keys — the master key that wraps every blob's data key
 * (AES-256 key wrap, RFC 3394) and the ECDSA P-256 signing key pair. Creates, checks
 * (ownership-only modes, regular files, sizes) and loads them. It does not sign
 * (sign.c) nor encrypt blobs (aead.c, blob.c). */
#include "repo/repo_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_FILE_MAX 16384 /* a PEM P-256 key is ~250 bytes */

struct repo_keys {
    unsigned char master[REPO_KEY_LEN];
    EVP_PKEY *signing;
    char *public_pem;
};

static const char *const key_files[] = {"master.key", "signing.key", "signing.pub"};

/* The PEM text of a BIO as a fresh NUL-terminated string (caller frees). */
static char *bio_take_string(BIO *b)
{
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    if (n <= 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    memcpy(s, data, (size_t)n);
    s[n] = 0;
    return s;
}

static void cleanse_free(char *p, size_t len)
{
    if (!p) return;
    OPENSSL_cleanse(p, len);
    free(p);
}

/* Serialises the key pair: private as PKCS#8 PEM, public as SubjectPublicKeyInfo PEM.
 * Both strings are malloc'd; the caller frees *priv with cleanse_free. */
static int pem_encode(EVP_PKEY *pk, char **priv, size_t *priv_len, char **pub)
{
    int rc = MLV_ECRYPTO;
    *priv = *pub = NULL;
    BIO *bp = BIO_new(BIO_s_secmem());
    BIO *bq = BIO_new(BIO_s_mem());
    if (!bp || !bq) goto done;
    if (PEM_write_bio_PKCS8PrivateKey(bp, pk, NULL, NULL, 0, NULL, NULL) != 1) goto done;
    if (PEM_write_bio_PUBKEY(bq, pk) != 1) goto done;
    if (!(*priv = bio_take_string(bp)) || !(*pub = bio_take_string(bq))) goto done;
    *priv_len = strlen(*priv);
    rc = 0;
done:
    BIO_free(bp);
    BIO_free(bq);
    if (rc != 0) {
        if (*priv) cleanse_free(*priv, strlen(*priv));
        free(*pub);
        *priv = *pub = NULL;
        return core_err_set(rc, "encoding the signing key failed");
    }
    return 0;
}

int repo_keys_create(const char *home)
{
    int rc = 0;
    char *dir = core_path_join(home, "keys"), *tmp = core_path_join(home, "tmp");
    char *paths[3] = {NULL, NULL, NULL};
    unsigned char master[REPO_KEY_LEN];
    EVP_PKEY *pk = NULL;
    char *priv = NULL, *pub = NULL;
    size_t priv_len = 0;
    if (!dir || !tmp) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < 3; i++) {
        if (!(paths[i] = core_path_join(dir, key_files[i]))) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
        struct stat st;
        if (lstat(paths[i], &st) == 0) {
            rc =
                core_err_set(MLV_EEXISTS, "%s already exists; refusing to replace a key", paths[i]);
            goto done;
        }
    }
    if ((rc = core_mkdir_p(dir, 0700)) != 0 || (rc = core_mkdir_p(tmp, 0700)) != 0) goto done;
    if (chmod(dir, 0700) != 0) {
        rc = core_err_set(MLV_EIO, "chmod %s: %s", dir, strerror(errno));
        goto done;
    }
    if ((rc = core_random(master, sizeof master)) != 0) goto done;
    if (!(pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"))) {
        rc = core_err_set(MLV_ECRYPTO, "generating the ECDSA P-256 signing key failed");
        goto done;
    }
    if ((rc = pem_encode(pk, &priv, &priv_len, &pub)) != 0) goto done;
    /* The public key last: a crash in between leaves an incomplete set that the next
     * create refuses and open reports, never a public key without its private half. */
    if ((rc = core_write_atomic(paths[0], tmp, master, sizeof master, 0600)) != 0 ||
        (rc = core_write_atomic(paths[1], tmp, priv, priv_len, 0600)) != 0 ||
        (rc = core_write_atomic(paths[2], tmp, pub, strlen(pub), 0644)) != 0)
        goto done;
done:
    OPENSSL_cleanse(master, sizeof master);
    cleanse_free(priv, priv_len);
    free(pub);
    EVP_PKEY_free(pk);
    for (int i = 0; i < 3; i++)
        free(paths[i]);
    free(dir);
    free(tmp);
    return rc;
}

/* Reads a secret key file after checking that it is a regular file that only its owner
 * can read or write. *out (NUL-terminated) is cleansed and freed by the caller. */
static int read_secret_file(const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) return core_err_set(MLV_ENOTFOUND, "key file %s is missing", path);
        if (errno == ELOOP)
            return core_err_set(MLV_EINVAL,
                                "key file %s is a symbolic link; it must be a regular file "
                                "(mode 600, chmod 600)",
                                path);
        return core_err_set(MLV_EIO, "key file %s: %s", path, strerror(errno));
    }
    int rc = 0;
    char *buf = NULL;
    size_t cap = 0, got = 0;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = core_err_set(MLV_EIO, "key file %s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = core_err_set(MLV_EINVAL,
                          "key file %s is not a regular file (it must be one, "
                          "chmod 600)",
                          path);
        goto done;
    }
    if (st.st_mode & 077) {
        rc = core_err_set(MLV_EINVAL,
                          "key file %s has mode %03o: readable or writable by group or "
                          "others; run chmod 600 %s",
                          path, (unsigned)(st.st_mode & 0777), path);
        goto done;
    }
    if (st.st_size > KEY_FILE_MAX) {
        rc = core_err_set(MLV_EINVAL, "key file %s is too large (%lld bytes)", path,
                          (long long)st.st_size);
        goto done;
    }
    cap = (size_t)st.st_size + 1;
    if (!(buf = OPENSSL_secure_malloc(cap + 1))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    /* Reads one byte past the size fstat saw, so a file that grew is noticed. */
    while (got < cap) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = core_err_set(MLV_EIO, "read key file %s: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    buf[got] = 0;
    *out = buf;
    *len = got;
    buf = NULL;
done:
    if (buf) OPENSSL_secure_clear_free(buf, cap + 1);
    close(fd);
    return rc;
}

/* Frees a buffer from read_secret_file: `len` is what it returned, so the buffer holds
 * at least len + 1 bytes. */
static void secret_free(char *p, size_t len)
{
    if (p) OPENSSL_secure_clear_free(p, len + 1);
}

int repo_keys_open(repo_keys **out, const char *home)
{
    *out = NULL;
    int rc = 0;
    repo_keys *k = NULL;
    char *dir = core_path_join(home, "keys");
    char *mpath = dir ? core_path_join(dir, key_files[0]) : NULL;
    char *spath = dir ? core_path_join(dir, key_files[1]) : NULL;
    char *mbuf = NULL, *sbuf = NULL;
    size_t mlen = 0, slen = 0;
    BIO *bio = NULL;
    if (!dir || !mpath || !spath || !(k = calloc(1, sizeof *k))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = read_secret_file(mpath, &mbuf, &mlen)) != 0) goto done;
    if (mlen != REPO_KEY_LEN) {
        rc = core_err_set(MLV_EINVAL, "key file %s must hold exactly %d bytes, not %zu", mpath,
                          REPO_KEY_LEN, mlen);
        goto done;
    }
    memcpy(k->master, mbuf, REPO_KEY_LEN);
    if ((rc = read_secret_file(spath, &sbuf, &slen)) != 0) goto done;
    if (!(bio = BIO_new_mem_buf(sbuf, (int)slen)) ||
        !(k->signing = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL))) {
        rc = core_err_set(MLV_EINVAL, "key file %s is not a PEM private key", spath);
        goto done;
    }
    char group[64] = "";
    if (!EVP_PKEY_is_a(k->signing, "EC") ||
        EVP_PKEY_get_utf8_string_param(k->signing, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                       NULL) != 1 ||
        strcmp(group, "prime256v1") != 0) {
        rc = core_err_set(MLV_EINVAL, "key file %s is not an ECDSA P-256 key", spath);
        goto done;
    }
    /* The public PEM is derived from the private key rather than read from
     * signing.pub, so the two can never disagree. */
    BIO *pb = BIO_new(BIO_s_mem());
    if (!pb || PEM_write_bio_PUBKEY(pb, k->signing) != 1 ||
        !(k->public_pem = bio_take_string(pb))) {
        BIO_free(pb);
        rc = core_err_set(MLV_ECRYPTO, "encoding the public key of %s failed", spath);
        goto done;
    }
    BIO_free(pb);
    *out = k;
    k = NULL;
done:
    BIO_free(bio);
    secret_free(mbuf, mlen);
    secret_free(sbuf, slen);
    repo_keys_free(k);
    free(dir);
    free(mpath);
    free(spath);
    return rc;
}

void repo_keys_free(repo_keys *k)
{
    if (!k) return;
    OPENSSL_cleanse(k->master, sizeof k->master);
    EVP_PKEY_free(k->signing);
    free(k->public_pem);
    free(k);
}

/* One AES-256 key wrap (RFC 3394, default IV) in either direction. The output of a
 * failed unwrap is cleansed. */
static int keywrap(const repo_keys *k, bool wrap, const unsigned char *in, size_t in_len,
                   unsigned char *out, size_t out_len)
{
    int rc = 0, n = 0, fin = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return core_err_set(MLV_ENOMEM, "out of memory");
    EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_wrap(), NULL, k->master, NULL, wrap ? 1 : 0) != 1) {
        rc = core_err_set(MLV_ECRYPTO, "AES key wrap: initialisation failed");
        goto done;
    }
    if (EVP_CipherUpdate(ctx, out, &n, in, (int)in_len) != 1 || n < 0 || (size_t)n > out_len ||
        EVP_CipherFinal_ex(ctx, out + n, &fin) != 1 || (size_t)(n + fin) != out_len) {
        rc = wrap ? core_err_set(MLV_ECRYPTO, "AES key wrap failed")
                  : core_err_set(MLV_EINTEGRITY,
                                 "wrapped data key does not unwrap with this master key "
                                 "(altered, or wrapped by another key)");
        OPENSSL_cleanse(out, out_len);
    }
done:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int repo_keys_wrap_dek(const repo_keys *k, const unsigned char dek[REPO_KEY_LEN],
                       unsigned char out[REPO_WRAPPED_DEK_LEN])
{
    return keywrap(k, true, dek, REPO_KEY_LEN, out, REPO_WRAPPED_DEK_LEN);
}

int repo_keys_unwrap_dek(const repo_keys *k, const unsigned char wrapped[REPO_WRAPPED_DEK_LEN],
                         unsigned char dek[REPO_KEY_LEN])
{
    return keywrap(k, false, wrapped, REPO_WRAPPED_DEK_LEN, dek, REPO_KEY_LEN);
}

const char *repo_keys_public_pem(const repo_keys *k)
{
    return k->public_pem;
}

EVP_PKEY *repo_keys_signing_pkey(const repo_keys *k)
{
    return k->signing;
}
