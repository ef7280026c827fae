/* repo/keys.c: the data home's keys — the master key that wraps every blob's data key
 * (AES-256 key wrap, RFC 3394), the ECDSA P-256 signing key pair, the X25519 import
 * key pair that other sites wrap bundle data keys for (ECIES: X25519 + HKDF-SHA256 +
 * AES-256 key wrap), and a serving node's own X25519 key pair, which the registry wraps
 * data keys for in the same way under another HKDF info. Creates, checks
 * (ownership-only modes, regular files, sizes) and loads them. It does not sign
 * (sign.c) nor encrypt blobs (aead.c, blob.c). */
#include "repo/repo_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
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
    EVP_PKEY *import; /* X25519 */
    char *import_pem; /* its public key, SubjectPublicKeyInfo PEM */
    char import_hint[65];
};

static const char *const key_files[] = {"master.key", "signing.key", "signing.pub", "import.key",
                                        "import.pub"};
#define N_KEY_FILES 5
#define IMPORT_KEY 3
#define IMPORT_PUB 4

static int import_key_create(const char *home, const char *dir);

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
        return core_err_set(rc, "encoding a key pair failed");
    }
    return 0;
}

int repo_keys_create(const char *home)
{
    int rc = 0;
    char *dir = core_path_join(home, "keys"), *tmp = core_path_join(home, "tmp");
    char *paths[N_KEY_FILES] = {NULL};
    unsigned char master[REPO_KEY_LEN];
    EVP_PKEY *pk = NULL;
    char *priv = NULL, *pub = NULL;
    size_t priv_len = 0;
    if (!dir || !tmp) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < N_KEY_FILES; i++) {
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
    rc = import_key_create(home, dir);
done:
    OPENSSL_cleanse(master, sizeof master);
    cleanse_free(priv, priv_len);
    free(pub);
    EVP_PKEY_free(pk);
    for (int i = 0; i < N_KEY_FILES; i++)
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

/* ---------------------------------------------------------------- import key --- */

/* The public half of an X25519 key as canonical PEM, and its hint (hex SHA-256 of that
 * PEM, as for signing keys). *pem is the caller's to free. */
static int x25519_public_pem(EVP_PKEY *pk, char **pem, char hint[65])
{
    *pem = NULL;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b || PEM_write_bio_PUBKEY(b, pk) != 1 || !(*pem = bio_take_string(b))) {
        BIO_free(b);
        return core_err_set(MLV_ECRYPTO, "encoding an X25519 public key failed");
    }
    BIO_free(b);
    repo_sha256_hex(hint, *pem, strlen(*pem));
    return 0;
}

/* Writes a new secret file at `path` (mode 0600) that never replaces one: the bytes go
 * to a temp file in tmpdir, fsync'd, then link(2)ed into place (link never replaces)
 * and the folder fsync'd. *won is false when `path` already existed: nothing written. */
static int link_new_secret(const char *tmpdir, const char *path, const char *data, size_t len,
                           bool *won)
{
    int rc = 0, fd = -1;
    char tmpl[4096] = "", dir[4096];
    *won = false;
    if (snprintf(tmpl, sizeof tmpl, "%s/.key-XXXXXX", tmpdir) >= (int)sizeof tmpl) {
        tmpl[0] = 0;
        return core_err_set(MLV_EINVAL, "path too long: %s", tmpdir);
    }
    if ((fd = mkostemp(tmpl, O_CLOEXEC)) < 0) {
        tmpl[0] = 0;
        rc = core_err_set(MLV_EIO, "create temp in %s: %s", tmpdir, strerror(errno));
        goto done;
    }
    if (fchmod(fd, 0600) != 0 || (rc = core_write_all(fd, data, len)) != 0 || fsync(fd) != 0) {
        if (rc == 0) rc = core_err_set(MLV_EIO, "%s: %s", tmpl, strerror(errno));
        goto done;
    }
    close(fd);
    fd = -1;
    if (link(tmpl, path) == 0) {
        *won = true;
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        rc = core_fsync_dir(slash ? (dir[0] ? dir : "/") : ".");
    } else if (errno != EEXIST) {
        rc = core_err_set(MLV_EIO, "create %s: %s", path, strerror(errno));
    }
done:
    if (fd >= 0) close(fd);
    if (tmpl[0]) unlink(tmpl);
    return rc;
}

/* Creates keys/import.key (and import.pub) unless import.key exists. The private key is
 * linked into place (link_new_secret), so two processes opening an older home at once
 * agree on one key (the loser's is dropped). */
static int import_key_create(const char *home, const char *dir)
{
    int rc = 0;
    EVP_PKEY *pk = NULL;
    char *priv = NULL, *pub = NULL, *tmpdir = core_path_join(home, "tmp");
    char *kpath = core_path_join(dir, key_files[IMPORT_KEY]);
    char *ppath = core_path_join(dir, key_files[IMPORT_PUB]);
    size_t priv_len = 0;
    bool won = false;
    if (!tmpdir || !kpath || !ppath) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if (!(pk = EVP_PKEY_Q_keygen(NULL, NULL, "X25519"))) {
        rc = core_err_set(MLV_ECRYPTO, "generating the X25519 import key failed");
        goto done;
    }
    if ((rc = pem_encode(pk, &priv, &priv_len, &pub)) != 0) goto done;
    if ((rc = core_mkdir_p(tmpdir, 0700)) != 0) goto done;
    if ((rc = link_new_secret(tmpdir, kpath, priv, priv_len, &won)) != 0) goto done;
    /* The public key after the private one, as for the signing key. */
    if (won) rc = core_write_atomic(ppath, tmpdir, pub, strlen(pub), 0644);
done:
    cleanse_free(priv, priv_len);
    free(pub);
    EVP_PKEY_free(pk);
    free(tmpdir);
    free(kpath);
    free(ppath);
    return rc;
}

/* Loads keys/import.key, creating the pair first in a home made before import keys
 * existed. import.pub is rewritten from the private key when it is missing. */
static int import_key_load(repo_keys *k, const char *home, const char *dir)
{
    char *kpath = core_path_join(dir, key_files[IMPORT_KEY]);
    char *ppath = core_path_join(dir, key_files[IMPORT_PUB]);
    char *buf = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    int rc = 0;
    if (!kpath || !ppath) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    rc = read_secret_file(kpath, &buf, &len);
    if (rc == MLV_ENOTFOUND) {
        if ((rc = import_key_create(home, dir)) != 0) {
            core_err_wrap("creating the import key of an older home: ");
            goto done;
        }
        rc = read_secret_file(kpath, &buf, &len);
    }
    if (rc != 0) goto done;
    if (!(bio = BIO_new_mem_buf(buf, (int)len)) ||
        !(k->import = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)) ||
        !EVP_PKEY_is_a(k->import, "X25519")) {
        rc = core_err_set(MLV_EINVAL, "key file %s is not a PEM X25519 private key", kpath);
        goto done;
    }
    if ((rc = x25519_public_pem(k->import, &k->import_pem, k->import_hint)) != 0) goto done;
    struct stat st;
    if (lstat(ppath, &st) != 0 && errno == ENOENT) {
        char *tmpdir = core_path_join(home, "tmp");
        rc = tmpdir ? core_write_atomic(ppath, tmpdir, k->import_pem, strlen(k->import_pem), 0644)
                    : core_err_set(MLV_ENOMEM, "out of memory");
        free(tmpdir);
    }
done:
    BIO_free(bio);
    secret_free(buf, len);
    free(kpath);
    free(ppath);
    return rc;
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
    if ((rc = import_key_load(k, home, dir)) != 0) goto done;
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
    EVP_PKEY_free(k->import);
    free(k->import_pem);
    free(k);
}

/* One AES-256 key wrap (RFC 3394, default IV) in either direction under `kek`. A failed
 * unwrap is MLV_EINTEGRITY with `unwrap_msg`, and its output is cleansed. */
static int keywrap(const unsigned char kek[REPO_KEY_LEN], bool wrap, const unsigned char *in,
                   size_t in_len, unsigned char *out, size_t out_len, const char *unwrap_msg)
{
    int rc = 0, n = 0, fin = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return core_err_set(MLV_ENOMEM, "out of memory");
    EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_wrap(), NULL, kek, NULL, wrap ? 1 : 0) != 1) {
        rc = core_err_set(MLV_ECRYPTO, "AES key wrap: initialisation failed");
        goto done;
    }
    if (EVP_CipherUpdate(ctx, out, &n, in, (int)in_len) != 1 || n < 0 || (size_t)n > out_len ||
        EVP_CipherFinal_ex(ctx, out + n, &fin) != 1 || (size_t)(n + fin) != out_len) {
        rc = wrap ? core_err_set(MLV_ECRYPTO, "AES key wrap failed")
                  : core_err_set(MLV_EINTEGRITY, "%s", unwrap_msg);
        OPENSSL_cleanse(out, out_len);
    }
done:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

static const char MASTER_UNWRAP_MSG[] = "wrapped data key does not unwrap with this master key "
                                        "(altered, or wrapped by another key)";

int repo_keys_wrap_dek(const repo_keys *k, const unsigned char dek[REPO_KEY_LEN],
                       unsigned char out[REPO_WRAPPED_DEK_LEN])
{
    return keywrap(k->master, true, dek, REPO_KEY_LEN, out, REPO_WRAPPED_DEK_LEN, "");
}

int repo_keys_unwrap_dek(const repo_keys *k, const unsigned char wrapped[REPO_WRAPPED_DEK_LEN],
                         unsigned char dek[REPO_KEY_LEN])
{
    return keywrap(k->master, false, wrapped, REPO_WRAPPED_DEK_LEN, dek, REPO_KEY_LEN,
                   MASTER_UNWRAP_MSG);
}

/* ------------------------------------------------- data keys for another site --- */

/* KEK = HKDF-SHA256(ikm = X25519(priv, peer), salt = eph_pub || recipient_pub, info):
 * REPO_WRAP_INFO_BUNDLE for bundles, REPO_WRAP_INFO_NODE for serving nodes, so a key
 * wrapped for one purpose never unwraps as the other. `receiving` only picks the error
 * class: on the receiving side a key that does not agree is the sender's fault. */
static int wrap_kek(EVP_PKEY *priv, EVP_PKEY *peer, const unsigned char eph[REPO_X25519_LEN],
                    const unsigned char rcpt[REPO_X25519_LEN], const char *info, bool receiving,
                    unsigned char kek[REPO_KEY_LEN])
{
    int rc = 0;
    unsigned char shared[REPO_X25519_LEN], salt[2 * REPO_X25519_LEN];
    size_t slen = sizeof shared;
    EVP_PKEY_CTX *dctx = EVP_PKEY_CTX_new_from_pkey(NULL, priv, NULL);
    EVP_KDF *kdf = NULL;
    EVP_KDF_CTX *kctx = NULL;
    bool node = !strcmp(info, REPO_WRAP_INFO_NODE);
    /* OpenSSL refuses an all-zero shared secret (a small-order peer key). */
    if (!dctx || EVP_PKEY_derive_init(dctx) != 1 || EVP_PKEY_derive_set_peer(dctx, peer) != 1 ||
        EVP_PKEY_derive(dctx, shared, &slen) != 1 || slen != sizeof shared) {
        rc = receiving ? core_err_set(MLV_EINTEGRITY,
                                      "the %s ephemeral key is not a usable X25519 "
                                      "public key",
                                      node ? "registry's" : "bundle's")
                       : core_err_set(MLV_EINVAL, "the %s key is not a usable X25519 public key",
                                      node ? "node's" : "recipient's import");
        goto done;
    }
    memcpy(salt, eph, REPO_X25519_LEN);
    memcpy(salt + REPO_X25519_LEN, rcpt, REPO_X25519_LEN);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, shared, sizeof shared),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt, sizeof salt),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (char *)info, strlen(info)),
        OSSL_PARAM_construct_end(),
    };
    if (!(kdf = EVP_KDF_fetch(NULL, "HKDF", NULL)) || !(kctx = EVP_KDF_CTX_new(kdf)) ||
        EVP_KDF_derive(kctx, kek, REPO_KEY_LEN, params) != 1)
        rc = core_err_set(MLV_ECRYPTO, "HKDF-SHA256 failed");
done:
    OPENSSL_cleanse(shared, sizeof shared);
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    EVP_PKEY_CTX_free(dctx);
    return rc;
}

int repo_import_key_parse(const char *pem, unsigned char raw[REPO_X25519_LEN], char hint[65])
{
    BIO *bio = pem ? BIO_new_mem_buf(pem, -1) : NULL;
    EVP_PKEY *pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    char *canon = NULL;
    size_t n = REPO_X25519_LEN;
    int rc = 0;
    if (!pk || !EVP_PKEY_is_a(pk, "X25519"))
        rc = core_err_set(MLV_EINVAL, "not an mlvault import key (a PEM X25519 public key, "
                                      "as `mlvault keys export-import-key` prints)");
    else if (EVP_PKEY_get_raw_public_key(pk, raw, &n) != 1 || n != REPO_X25519_LEN)
        rc = core_err_set(MLV_ECRYPTO, "reading an X25519 public key failed");
    else
        rc = x25519_public_pem(pk, &canon, hint);
    free(canon);
    EVP_PKEY_free(pk);
    BIO_free(bio);
    return rc;
}

/* Wraps n DEKs for `recipient` under a fresh ephemeral key and the HKDF `info`. */
static int wrap_for(const unsigned char recipient[REPO_X25519_LEN],
                    const unsigned char (*deks)[REPO_KEY_LEN], size_t n, const char *info,
                    unsigned char eph_pub[REPO_X25519_LEN],
                    unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN])
{
    int rc = 0;
    unsigned char kek[REPO_KEY_LEN];
    size_t len = REPO_X25519_LEN;
    EVP_PKEY *eph = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
    EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, recipient, REPO_X25519_LEN);
    if (!eph || !peer || EVP_PKEY_get_raw_public_key(eph, eph_pub, &len) != 1 ||
        len != REPO_X25519_LEN) {
        rc = core_err_set(MLV_ECRYPTO, "generating an ephemeral X25519 key failed");
        goto done;
    }
    if ((rc = wrap_kek(eph, peer, eph_pub, recipient, info, false, kek)) != 0) goto done;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = keywrap(kek, true, deks[i], REPO_KEY_LEN, wrapped[i], REPO_WRAPPED_DEK_LEN, "");
done:
    OPENSSL_cleanse(kek, sizeof kek);
    EVP_PKEY_free(eph); /* the ephemeral private key is never stored */
    EVP_PKEY_free(peer);
    return rc;
}

int repo_keys_wrap_for_recipient(const unsigned char recipient[REPO_X25519_LEN],
                                 const unsigned char (*deks)[REPO_KEY_LEN], size_t n,
                                 unsigned char eph_pub[REPO_X25519_LEN],
                                 unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN])
{
    return wrap_for(recipient, deks, n, REPO_WRAP_INFO_BUNDLE, eph_pub, wrapped);
}

/* Unwraps n DEKs with the private key `mine` (`whose` names it in messages, `other` what
 * else they may have been wrapped for). */
static int unwrap_with(EVP_PKEY *mine, const char *info, const char *whose, const char *other,
                       const unsigned char eph_pub[REPO_X25519_LEN],
                       const unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN], size_t n,
                       unsigned char (*deks)[REPO_KEY_LEN])
{
    int rc = 0;
    unsigned char kek[REPO_KEY_LEN], pub[REPO_X25519_LEN];
    size_t len = sizeof pub;
    EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, eph_pub, REPO_X25519_LEN);
    if (!peer) {
        rc = core_err_set(MLV_EINTEGRITY, "the ephemeral key is not an X25519 key");
        goto done;
    }
    if (EVP_PKEY_get_raw_public_key(mine, pub, &len) != 1 || len != sizeof pub) {
        rc = core_err_set(MLV_ECRYPTO, "reading %s failed", whose);
        goto done;
    }
    if ((rc = wrap_kek(mine, peer, eph_pub, pub, info, true, kek)) != 0) goto done;
    for (size_t i = 0; i < n; i++) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "data key %zu does not unwrap with %s (altered, or wrapped for %s)", i, whose,
                 other);
        if ((rc = keywrap(kek, false, wrapped[i], REPO_WRAPPED_DEK_LEN, deks[i], REPO_KEY_LEN,
                          msg)) != 0) {
            OPENSSL_cleanse(deks, i * sizeof *deks);
            break;
        }
    }
done:
    OPENSSL_cleanse(kek, sizeof kek);
    EVP_PKEY_free(peer);
    return rc;
}

int repo_keys_unwrap_for_import(const repo_keys *k, const unsigned char eph_pub[REPO_X25519_LEN],
                                const unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN], size_t n,
                                unsigned char (*deks)[REPO_KEY_LEN])
{
    return unwrap_with(k->import, REPO_WRAP_INFO_BUNDLE, "this site's import key", "another site",
                       eph_pub, wrapped, n, deks);
}

/* Unwraps master-wrapped DEKs and wraps them for `recipient` under `info`; the plaintext
 * DEKs live in secure memory only in between. */
static int rewrap_for(const repo_keys *k, const unsigned char recipient[REPO_X25519_LEN],
                      const unsigned char (*master_wrapped)[REPO_WRAPPED_DEK_LEN], size_t n,
                      const char *info, unsigned char eph_pub[REPO_X25519_LEN],
                      unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN])
{
    unsigned char(*deks)[REPO_KEY_LEN] = OPENSSL_secure_malloc(n ? n * sizeof *deks : 1);
    if (!deks) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        if ((rc = repo_keys_unwrap_dek(k, master_wrapped[i], deks[i])) != 0)
            core_err_wrap("data key %zu: ", i);
    if (rc == 0)
        rc = wrap_for(recipient, (const unsigned char(*)[REPO_KEY_LEN])deks, n, info, eph_pub,
                      wrapped);
    OPENSSL_secure_clear_free(deks, n ? n * sizeof *deks : 1);
    return rc;
}

int repo_keys_rewrap_for_recipient(const repo_keys *k,
                                   const unsigned char recipient[REPO_X25519_LEN],
                                   const unsigned char (*master_wrapped)[REPO_WRAPPED_DEK_LEN],
                                   size_t n, unsigned char eph_pub[REPO_X25519_LEN],
                                   unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN])
{
    return rewrap_for(k, recipient, master_wrapped, n, REPO_WRAP_INFO_BUNDLE, eph_pub, wrapped);
}

/* ------------------------------------------------------- serving node keys --- */

struct repo_node_key {
    EVP_PKEY *pk; /* X25519 */
    char *pub_pem;
    char hint[65];
};

int repo_node_key_create(const char *priv_path, const char *pub_path)
{
    int rc = 0;
    EVP_PKEY *pk = NULL;
    char *priv = NULL, *pub = NULL, dir[4096];
    size_t priv_len = 0;
    bool won = false;
    struct stat st;
    if (!priv_path || !pub_path || snprintf(dir, sizeof dir, "%s", priv_path) >= (int)sizeof dir)
        return core_err_set(MLV_EINVAL, "node key: bad path");
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    if (lstat(priv_path, &st) == 0)
        return core_err_set(MLV_EEXISTS, "%s already exists; refusing to replace a key", priv_path);
    if (!(pk = EVP_PKEY_Q_keygen(NULL, NULL, "X25519"))) {
        rc = core_err_set(MLV_ECRYPTO, "generating the node's X25519 key failed");
        goto done;
    }
    if ((rc = pem_encode(pk, &priv, &priv_len, &pub)) != 0) goto done;
    if ((rc = link_new_secret(dir, priv_path, priv, priv_len, &won)) != 0) goto done;
    if (!won) {
        rc = core_err_set(MLV_EEXISTS, "%s already exists; refusing to replace a key", priv_path);
        goto done;
    }
    /* The public key after the private one: a crash in between leaves no public key
     * without its private half. */
    rc = core_write_atomic(pub_path, dir, pub, strlen(pub), 0644);
done:
    cleanse_free(priv, priv_len);
    free(pub);
    EVP_PKEY_free(pk);
    return rc;
}

int repo_node_key_load(repo_node_key **out, const char *priv_path)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    repo_node_key *k = calloc(1, sizeof *k);
    if (!k) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc = read_secret_file(priv_path, &buf, &len);
    if (rc) goto done;
    if (!(bio = BIO_new_mem_buf(buf, (int)len)) ||
        !(k->pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)) ||
        !EVP_PKEY_is_a(k->pk, "X25519")) {
        rc = core_err_set(MLV_EINVAL, "key file %s is not a PEM X25519 private key", priv_path);
        goto done;
    }
    if ((rc = x25519_public_pem(k->pk, &k->pub_pem, k->hint)) != 0) goto done;
    *out = k;
    k = NULL;
done:
    BIO_free(bio);
    secret_free(buf, len);
    repo_node_key_free(k);
    return rc;
}

void repo_node_key_free(repo_node_key *k)
{
    if (!k) return;
    EVP_PKEY_free(k->pk);
    free(k->pub_pem);
    free(k);
}

const char *repo_node_key_public_pem(const repo_node_key *k)
{
    return k->pub_pem;
}

const char *repo_node_key_hint(const repo_node_key *k)
{
    return k->hint;
}

int repo_keys_rewrap_for_node(const repo_keys *k, const unsigned char node_pub[REPO_X25519_LEN],
                              const unsigned char (*master_wrapped)[REPO_WRAPPED_DEK_LEN], size_t n,
                              unsigned char eph_pub[REPO_X25519_LEN],
                              unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN])
{
    return rewrap_for(k, node_pub, master_wrapped, n, REPO_WRAP_INFO_NODE, eph_pub, wrapped);
}

int repo_node_key_unwrap(const repo_node_key *k, const unsigned char eph_pub[REPO_X25519_LEN],
                         const unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN], size_t n,
                         unsigned char (*deks)[REPO_KEY_LEN])
{
    return unwrap_with(k->pk, REPO_WRAP_INFO_NODE, "this node's key", "another node", eph_pub,
                       wrapped, n, deks);
}

const char *repo_keys_import_pem(const repo_keys *k)
{
    return k->import_pem;
}

const char *repo_keys_import_hint(const repo_keys *k)
{
    return k->import_hint;
}

const char *repo_keys_public_pem(const repo_keys *k)
{
    return k->public_pem;
}

EVP_PKEY *repo_keys_signing_pkey(const repo_keys *k)
{
    return k->signing;
}
