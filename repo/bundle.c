/* repo/bundle.c: the air-gap bundle format (layout in repo.h, "bundles") — writing a
 * bundle from stored versions and reading one back with every check made before any
 * byte is trusted. libarchive reads and writes the tar; the zstd frame around it is
 * ours (libzstd), so that its content checksum is always written and always required,
 * and so that we count every byte the frame expands to. What to put in a bundle and
 * what an imported version means are the registry's business (registry/bundle.c). */
#include "repo/repo_internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "core/core_json.h"

#define SIG_ENTRY_MAX 4096             /* base64 of a DER ECDSA signature is ~100 bytes */
#define MANIFEST_MAX ((size_t)4 << 20) /* a manifest of 4096 files is ~500 kB */
#define SIGNATURE_MAX ((size_t)16 << 20)
#define PEM_MAX 16384
/* What one entry may add to the tar stream besides its data: a ustar header, a pax
 * header (long name, size beyond 8 GiB) with its own header, and padding to 512. */
#define ENTRY_OVERHEAD 4096
#define TAR_TAIL (10240 + 1024) /* end-of-archive blocks and record padding */
#define IO_BUF ((size_t)1 << 20)
#define ZSTD_LEVEL 3
#define ZSTD_WINDOW_LOG 21 /* see FRAME_HEADER */
#define BLOB_MAX ((uint64_t)1 << 60)

enum { ENT_MANIFEST, ENT_SIGNATURE, ENT_BLOB };

void repo_bundle_ledger_path(char *out, size_t n, const char *kind, const char *name, int version,
                             const char *what)
{
    snprintf(out, n, "ledger/%s/%s/%d/%s", strcmp(kind, "dataset") ? "models" : "datasets", name,
             version, what);
}

/* An entry name from the archive, fit for a message: printable ASCII, at most 120 chars. */
static const char *shown(const char *path, char buf[128])
{
    size_t i = 0;
    for (; path && path[i] && i < 120; i++)
        buf[i] = (path[i] >= 0x20 && path[i] < 0x7f) ? path[i] : '?';
    if (path && path[i]) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = 0;
    return buf;
}

/* ================================================================= signature ==== */

static int sign_bytes(const repo_keys *k, const char *data, size_t n, char **b64)
{
    *b64 = NULL;
    int rc = 0;
    size_t len = 0;
    unsigned char *sig = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, repo_keys_signing_pkey(k)) != 1 ||
        EVP_DigestSign(ctx, NULL, &len, (const unsigned char *)data, n) != 1 ||
        !(sig = malloc(len)) ||
        EVP_DigestSign(ctx, sig, &len, (const unsigned char *)data, n) != 1 ||
        !(*b64 = malloc(4 * ((len + 2) / 3) + 1))) {
        rc = core_err_set(MLV_ECRYPTO, "signing bundle.json failed");
        goto done;
    }
    EVP_EncodeBlock((unsigned char *)*b64, sig, (int)len);
done:
    EVP_MD_CTX_free(ctx);
    free(sig);
    return rc;
}

/* Strict base64 (standard alphabet, padded); *out malloc'd. MLV_EINTEGRITY otherwise. */
static int b64_strict(const char *in, size_t n, unsigned char **out, size_t *len)
{
    *out = NULL;
    if (n == 0 || n % 4) goto bad;
    size_t pad = in[n - 1] == '=' ? (in[n - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < n - pad; i++) {
        char c = in[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            goto bad;
    }
    if (!(*out = malloc(n / 4 * 3 + 1))) return core_err_set(MLV_ENOMEM, "out of memory");
    int got = EVP_DecodeBlock(*out, (const unsigned char *)in, (int)n);
    if (got < 0 || (size_t)got < pad) {
        free(*out);
        *out = NULL;
        goto bad;
    }
    *len = (size_t)got - pad;
    return 0;
bad:
    return core_err_set(MLV_EINTEGRITY, "bundle.sig is not base64");
}

static int verify_bytes(const char *pem, const char *data, size_t n, const char *sig_b64,
                        size_t sig_len)
{
    unsigned char *sig = NULL;
    size_t slen = 0;
    int rc = b64_strict(sig_b64, sig_len, &sig, &slen);
    if (rc) return rc;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!pk || !ctx || EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pk) != 1)
        rc = core_err_set(MLV_ECRYPTO, "bundle.sig: cannot load the sender's trusted key");
    else if (EVP_DigestVerify(ctx, sig, slen, (const unsigned char *)data, n) != 1)
        rc = core_err_set(MLV_EINTEGRITY,
                          "bundle.sig does not verify with the sender's trusted key: "
                          "bundle.json was altered, or signed by another key");
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pk);
    BIO_free(bio);
    free(sig);
    return rc;
}

/* ================================================================== writer ==== */

typedef struct zwriter {
    int fd;
    ZSTD_CCtx *z;
    unsigned char *out;
    size_t out_cap;
    EVP_MD_CTX *md; /* SHA-256 of the file as written */
    uint64_t written;
    int rc; /* first failure, message in the error slot */
} zwriter;

static int zw_push(zwriter *w, const void *in, size_t n, ZSTD_EndDirective mode)
{
    ZSTD_inBuffer ib = {in, n, 0};
    for (;;) {
        ZSTD_outBuffer ob = {w->out, w->out_cap, 0};
        size_t rem = ZSTD_compressStream2(w->z, &ob, &ib, mode);
        if (ZSTD_isError(rem))
            return core_err_set(MLV_EIO, "compressing the bundle failed: %s",
                                ZSTD_getErrorName(rem));
        if (ob.pos) {
            int rc = core_write_all(w->fd, w->out, ob.pos);
            if (rc) return core_err_wrap("writing the bundle: ");
            if (EVP_DigestUpdate(w->md, w->out, ob.pos) != 1)
                return core_err_set(MLV_ECRYPTO, "SHA-256 failed");
            w->written += ob.pos;
        }
        if (mode == ZSTD_e_end ? rem == 0 : ib.pos == ib.size) return 0;
    }
}

static la_ssize_t zw_write_cb(struct archive *a, void *ctx, const void *buf, size_t n)
{
    zwriter *w = ctx;
    if (w->rc) return -1;
    if ((w->rc = zw_push(w, buf, n, ZSTD_e_continue)) != 0) {
        archive_set_error(a, EIO, "%s", core_err_last());
        return -1;
    }
    return (la_ssize_t)n;
}

/* The integrity trailer: a zstd skippable frame (RFC 8878, 3.1.2; decoders skip it)
 * whose payload is "MLVB1SUM" and the SHA-256 of every byte of the file before it.
 * zstd's own checksum covers what the frame expands to, but not every bit of the frame:
 * a flipped bit can decode to the same output (several FSE states decode the same
 * symbol), so only a digest of the raw bytes makes every flipped byte fail. */
static const unsigned char TRAILER_HEAD[16] = {0x5B, 0x2A, 0x4D, 0x18, 40,  0,   0,   0,
                                               'M',  'L',  'V',  'B',  '1', 'S', 'U', 'M'};
#define TRAILER_LEN 48

static int write_trailer(zwriter *w)
{
    unsigned char t[TRAILER_LEN];
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    memcpy(t, TRAILER_HEAD, sizeof TRAILER_HEAD);
    int ok = c && EVP_MD_CTX_copy_ex(c, w->md) == 1 && EVP_DigestFinal_ex(c, t + 16, NULL) == 1;
    EVP_MD_CTX_free(c);
    if (!ok || EVP_DigestUpdate(w->md, t, sizeof t) != 1)
        return core_err_set(MLV_ECRYPTO, "SHA-256 failed");
    int rc = core_write_all(w->fd, t, sizeof t);
    if (rc) return core_err_wrap("writing the bundle: ");
    w->written += sizeof t;
    return 0;
}

/* A libarchive failure while writing, or ours from inside the callback. */
static int write_fail(struct archive *a, const zwriter *w, const char *what)
{
    if (w->rc) return core_err_wrap("%s: ", what);
    return core_err_set(MLV_EIO, "writing the bundle: %s: %s", what,
                        archive_error_string(a) ? archive_error_string(a) : "failed");
}

static int write_header(struct archive *a, const zwriter *w, const char *path, uint64_t size,
                        time_t mtime)
{
    struct archive_entry *e = archive_entry_new();
    if (!e) return core_err_set(MLV_ENOMEM, "out of memory");
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, (la_int64_t)size);
    archive_entry_set_mtime(e, mtime, 0);
    int r = archive_write_header(a, e);
    archive_entry_free(e);
    return r == ARCHIVE_OK ? 0 : write_fail(a, w, path);
}

static int write_data(struct archive *a, const zwriter *w, const char *path, const void *p,
                      size_t n)
{
    while (n > 0) {
        la_ssize_t r = archive_write_data(a, p, n);
        if (r <= 0) return write_fail(a, w, path);
        p = (const char *)p + r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_mem_entry(struct archive *a, const zwriter *w, const char *path, const void *p,
                           size_t n, time_t mtime)
{
    int rc = write_header(a, w, path, n, mtime);
    return rc ? rc : write_data(a, w, path, p, n);
}

/* Copies the stored (encrypted) blob into the archive, byte for byte. */
static int write_blob_entry(struct archive *a, const zwriter *w, const char *home,
                            const repo_bundle_blob *bl, unsigned char *buf, time_t mtime)
{
    char path[80];
    snprintf(path, sizeof path, "blobs/%s", bl->sha256);
    char *src = repo_blob_path(home, bl->sha256);
    if (!src) return core_err_code();
    int fd = -1;
    uint64_t size = 0, got = 0;
    int rc = core_open_regular(src, &fd, &size);
    if (rc) {
        core_err_wrap("blob %s: ", bl->sha256);
        goto done;
    }
    if (size != bl->stored) {
        rc = core_err_set(MLV_EINTEGRITY, "blob %s: truncated or extended", bl->sha256);
        goto done;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    if ((rc = write_header(a, w, path, bl->stored, mtime)) != 0) goto done;
    while (got < bl->stored) {
        size_t want = bl->stored - got < IO_BUF ? (size_t)(bl->stored - got) : IO_BUF;
        ssize_t r = read(fd, buf, want);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = r < 0 ? core_err_set(MLV_EIO, "blob %s: read: %s", bl->sha256, strerror(errno))
                       : core_err_set(MLV_EINTEGRITY, "blob %s: changed while being bundled",
                                      bl->sha256);
            goto done;
        }
        if ((rc = write_data(a, w, path, buf, (size_t)r)) != 0) goto done;
        got += (uint64_t)r;
    }
done:
    if (fd >= 0) close(fd);
    free(src);
    return rc;
}

/* bundle.json as canonical JSON; caller frees. */
static int bundle_json(const repo_bundle *b, char **out, size_t *len)
{
    *out = NULL;
    json_t *vs = json_array(), *bs = json_array(), *o = NULL;
    int rc = 0;
    for (size_t i = 0; vs && i < b->n_versions; i++) {
        const repo_bundle_version *v = &b->versions[i];
        if (json_array_append_new(vs, json_pack("{s:s,s:s,s:i,s:s,s:s,s:I,s:I,s:s}", "kind",
                                                v->kind, "name", v->name, "version", v->version,
                                                "digest", v->digest, "signer", v->signer,
                                                "manifest_size", (json_int_t)v->manifest_len,
                                                "signature_size", (json_int_t)v->signature_len,
                                                "signature_sha256", v->signature_sha256)) != 0)
            goto nomem;
    }
    for (size_t i = 0; bs && i < b->n_blobs; i++) {
        const repo_bundle_blob *bl = &b->blobs[i];
        char wrapped[2 * REPO_WRAPPED_DEK_LEN + 1];
        core_hex(wrapped, bl->wrapped_dek, REPO_WRAPPED_DEK_LEN);
        if (json_array_append_new(bs, json_pack("{s:s,s:I,s:I,s:s}", "sha256", bl->sha256, "size",
                                                (json_int_t)bl->size, "stored",
                                                (json_int_t)bl->stored, "wrapped_dek", wrapped)) !=
            0)
            goto nomem;
    }
    if (!vs || !bs) goto nomem;
    char eph[2 * REPO_X25519_LEN + 1];
    core_hex(eph, b->ephemeral_key, REPO_X25519_LEN);
    o = json_pack("{s:s,s:s,s:{s:s,s:s},s:s,s:s,s:O,s:O,s:I}", "schema", REPO_BUNDLE_SCHEMA,
                  "created_at", b->created_at, "sender", "public_key", b->sender_pem, "hint",
                  b->sender_hint, "recipient", b->recipient_hint, "ephemeral_key", eph, "versions",
                  vs, "blobs", bs, "total_bytes", (json_int_t)b->total_bytes);
    if (!o || !(*out = core_json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT))) goto nomem;
    *len = strlen(*out);
    goto done;
nomem:
    rc = core_err_set(MLV_ENOMEM, "bundle.json: out of memory");
done:
    json_decref(vs);
    json_decref(bs);
    json_decref(o);
    return rc;
}

/* Checks what the caller filled in and derives the rest of the description. */
static int writer_prepare(const repo_keys *k, repo_bundle *b)
{
    if (b->n_versions == 0 || b->n_versions > REPO_BUNDLE_MAX_VERSIONS)
        return core_err_set(MLV_EINVAL, "a bundle holds 1 to %d versions, not %zu",
                            REPO_BUNDLE_MAX_VERSIONS, b->n_versions);
    if (b->n_blobs > REPO_BUNDLE_MAX_BLOBS)
        return core_err_set(MLV_EINVAL, "a bundle holds at most %d blobs", REPO_BUNDLE_MAX_BLOBS);
    if (!core_is_hex(b->recipient_hint, 64))
        return core_err_set(MLV_EINVAL, "bundle: no recipient import key");
    core_time_iso(b->created_at);
    b->sender_pem = (char *)repo_keys_public_pem(k);
    repo_sha256_hex(b->sender_hint, b->sender_pem, strlen(b->sender_pem));
    uint64_t total = 0;
    for (size_t i = 0; i < b->n_versions; i++) {
        repo_bundle_version *v = &b->versions[i];
        if (!core_name_valid(v->name) || v->version < 1 || !core_is_hex(v->digest, 64) ||
            !core_is_hex(v->signer, 64) || (strcmp(v->kind, "model") && strcmp(v->kind, "dataset")))
            return core_err_set(MLV_EINVAL, "bundle: version %zu is not well described", i);
        if (!v->manifest || !v->signature || v->manifest_len == 0 ||
            v->manifest_len > MANIFEST_MAX || v->signature_len == 0 ||
            v->signature_len > SIGNATURE_MAX)
            return core_err_set(MLV_EINVAL,
                                "bundle: %s:%d: manifest or signature size out of range", v->name,
                                v->version);
        repo_sha256_hex(v->signature_sha256, v->signature, v->signature_len);
        total += v->manifest_len + v->signature_len;
    }
    for (size_t i = 0; i < b->n_blobs; i++) {
        repo_bundle_blob *bl = &b->blobs[i];
        if (!core_is_hex(bl->sha256, 64) || bl->size > BLOB_MAX)
            return core_err_set(MLV_EINVAL, "bundle: blob %zu is not well described", i);
        bl->stored = repo_aead_ciphertext_size(bl->size);
        total += bl->stored;
    }
    b->total_bytes = total;
    return 0;
}

int repo_bundle_write(int fd, const char *home, const repo_keys *k, repo_bundle *b)
{
    int rc = writer_prepare(k, b);
    if (rc) return rc;
    char *json = NULL, *sig = NULL;
    size_t json_len = 0;
    unsigned char *buf = NULL, digest[32];
    struct archive *a = NULL;
    zwriter w = {.fd = fd};
    time_t now = time(NULL);
    if ((rc = bundle_json(b, &json, &json_len)) != 0) goto done;
    if (json_len > REPO_BUNDLE_JSON_MAX) {
        rc = core_err_set(MLV_EINVAL, "bundle.json would exceed %zu bytes: bundle fewer versions",
                          REPO_BUNDLE_JSON_MAX);
        goto done;
    }
    if ((rc = sign_bytes(k, json, json_len, &sig)) != 0) goto done;

    w.out_cap = ZSTD_CStreamOutSize();
    if (!(w.z = ZSTD_createCCtx()) || !(w.out = malloc(w.out_cap)) || !(buf = malloc(IO_BUF)) ||
        !(w.md = EVP_MD_CTX_new()) || EVP_DigestInit_ex(w.md, EVP_sha256(), NULL) != 1 ||
        !(a = archive_write_new())) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    /* These make the frame header the reader requires (FRAME_HEADER). */
    if (ZSTD_isError(ZSTD_CCtx_setParameter(w.z, ZSTD_c_compressionLevel, ZSTD_LEVEL)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(w.z, ZSTD_c_checksumFlag, 1)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(w.z, ZSTD_c_contentSizeFlag, 0)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(w.z, ZSTD_c_windowLog, ZSTD_WINDOW_LOG))) {
        rc = core_err_set(MLV_EIO, "zstd: cannot set up the compressor");
        goto done;
    }
    /* Blobs are ciphertext and do not compress; a second thread keeps zstd off the
     * critical path where libzstd has them (an error here only means it has not). */
    (void)ZSTD_CCtx_setParameter(w.z, ZSTD_c_nbWorkers, 2);
    /* pax only where ustar cannot say it (sizes beyond 8 GiB); no padding after the end. */
    if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
        archive_write_open(a, &w, NULL, zw_write_cb, NULL) != ARCHIVE_OK) {
        rc = write_fail(a, &w, "opening");
        goto done;
    }
    if ((rc = write_mem_entry(a, &w, "bundle.json", json, json_len, now)) != 0 ||
        (rc = write_mem_entry(a, &w, "bundle.sig", sig, strlen(sig), now)) != 0)
        goto done;
    for (size_t i = 0; i < b->n_versions; i++) {
        const repo_bundle_version *v = &b->versions[i];
        char path[160];
        repo_bundle_ledger_path(path, sizeof path, v->kind, v->name, v->version, "manifest.json");
        if ((rc = write_mem_entry(a, &w, path, v->manifest, v->manifest_len, now)) != 0) goto done;
        repo_bundle_ledger_path(path, sizeof path, v->kind, v->name, v->version, "signature");
        if ((rc = write_mem_entry(a, &w, path, v->signature, v->signature_len, now)) != 0)
            goto done;
    }
    for (size_t i = 0; i < b->n_blobs; i++)
        if ((rc = write_blob_entry(a, &w, home, &b->blobs[i], buf, now)) != 0) goto done;
    if (archive_write_close(a) != ARCHIVE_OK) {
        rc = write_fail(a, &w, "closing");
        goto done;
    }
    if ((rc = zw_push(&w, NULL, 0, ZSTD_e_end)) != 0) goto done;
    if ((rc = write_trailer(&w)) != 0) goto done;
    if (fsync(fd) != 0) {
        rc = core_err_set(MLV_EIO, "fsync of the bundle: %s", strerror(errno));
        goto done;
    }
    if (EVP_DigestFinal_ex(w.md, digest, NULL) != 1) {
        rc = core_err_set(MLV_ECRYPTO, "SHA-256 failed");
        goto done;
    }
    core_hex(b->file_sha256, digest, sizeof digest);
    b->file_size = w.written;
done:
    /* After a failure this may still push the archive's tail into fd, which the caller
     * removes; zw.rc stops the callback once it has failed. */
    if (a) archive_write_free(a);
    ZSTD_freeCCtx(w.z);
    EVP_MD_CTX_free(w.md);
    free(w.out);
    free(buf);
    free(json);
    free(sig);
    return rc;
}

/* ================================================================== reader ==== */

/* The compressed file as libarchive sees it: exactly one zstd frame that carries a
 * content checksum, nothing after it, and no more expanded bytes than `limit`. */
typedef struct zreader {
    int fd;
    ZSTD_DCtx *z;
    unsigned char *in, *out;
    size_t in_cap, out_cap;
    ZSTD_inBuffer ib;
    bool in_eof, header_checked, frame_done;
    EVP_MD_CTX *md; /* SHA-256 of the bytes the frame took so far, then of the file */
    uint64_t raw, expanded, limit;
    int rc; /* our failure; the message is kept in msg (libarchive sits in between) */
    char msg[512];
} zreader;

static int zr_fail(zreader *z, int rc)
{
    z->rc = rc;
    snprintf(z->msg, sizeof z->msg, "%s", core_err_last());
    return rc;
}

static int zr_fill(zreader *z)
{
    if (z->ib.pos < z->ib.size || z->in_eof) return 0;
    ssize_t r;
    while ((r = read(z->fd, z->in, z->in_cap)) < 0 && errno == EINTR) {
    }
    if (r < 0) return core_err_set(MLV_EIO, "reading the bundle: %s", strerror(errno));
    if (r == 0) z->in_eof = true;
    z->raw += (uint64_t)r;
    z->ib = (ZSTD_inBuffer){z->in, (size_t)r, 0};
    return 0;
}

/* The frame header (RFC 8878, 3.1.1) must be exactly the one our writer makes: magic
 * 28 B5 2F FD, descriptor 0x04 (content checksum; no content size, no dictionary, not
 * single-segment), window descriptor 0x58 (a 2 MiB window). One canonical header: the
 * decoder's memory is bounded, and a bundle that is not ours is refused at once. */
static const unsigned char FRAME_HEADER[6] = {0x28, 0xB5, 0x2F, 0xFD, 0x04, 0x58};

static int zr_check_header(zreader *z)
{
    int rc = zr_fill(z);
    if (rc) return rc;
    if (z->ib.size < 4 || memcmp(z->in, FRAME_HEADER, 4) != 0)
        return core_err_set(MLV_EINTEGRITY,
                            "not an mlvault bundle: not a zstd-compressed file (%llu bytes)",
                            (unsigned long long)z->ib.size);
    if (z->ib.size < sizeof FRAME_HEADER)
        return core_err_set(MLV_EINTEGRITY, "bundle is truncated or corrupt: %llu bytes",
                            (unsigned long long)z->ib.size);
    if (!(z->in[4] & 0x04))
        return core_err_set(MLV_EINTEGRITY,
                            "not an mlvault bundle: its zstd frame has no content checksum");
    if (memcmp(z->in, FRAME_HEADER, sizeof FRAME_HEADER) != 0)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle is truncated or corrupt: its zstd frame header is %02x %02x, "
                            "not 04 58 (checksum, no content size, 2 MiB window)",
                            z->in[4], z->in[5]);
    z->header_checked = true;
    return 0;
}

/* Expands the next piece of the frame into z->out; *n = 0 once the frame has ended. */
static int zr_produce(zreader *z, size_t *n)
{
    *n = 0;
    int rc;
    if (!z->header_checked && (rc = zr_check_header(z)) != 0) return rc;
    while (*n == 0 && !z->frame_done) {
        if ((rc = zr_fill(z)) != 0) return rc;
        if (z->ib.pos == z->ib.size && z->in_eof)
            return core_err_set(MLV_EINTEGRITY,
                                "bundle is truncated or corrupt: the compressed stream ends "
                                "early, after %llu bytes",
                                (unsigned long long)z->raw);
        ZSTD_outBuffer ob = {z->out, z->out_cap, 0};
        size_t from = z->ib.pos;
        size_t ret = ZSTD_decompressStream(z->z, &ob, &z->ib);
        if (EVP_DigestUpdate(z->md, z->in + from, z->ib.pos - from) != 1)
            return core_err_set(MLV_ECRYPTO, "SHA-256 failed");
        if (ZSTD_isError(ret))
            return core_err_set(MLV_EINTEGRITY, "bundle is truncated or corrupt: zstd: %s",
                                ZSTD_getErrorName(ret));
        *n = ob.pos;
        if (ret == 0) z->frame_done = true; /* the checksum has been verified */
    }
    z->expanded += *n;
    if (z->expanded > z->limit)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle expands to more than its bundle.json declares (over %llu "
                            "bytes): refused as a compression bomb",
                            (unsigned long long)z->limit);
    return 0;
}

static la_ssize_t zr_read_cb(struct archive *a, void *ctx, const void **buf)
{
    zreader *z = ctx;
    if (z->rc) return -1;
    size_t n = 0;
    int rc = zr_produce(z, &n);
    if (rc) {
        zr_fail(z, rc);
        archive_set_error(a, EIO, "%s", z->msg);
        return -1;
    }
    *buf = z->out;
    return (la_ssize_t)n;
}

/* After the tar's end: the rest of the frame may hold only zeros (record padding), the
 * frame must end (verifying its checksum), then the trailer must follow with the SHA-256
 * of every byte before it, and the file must end there. */
static int zr_finish(zreader *z)
{
    int rc;
    size_t n;
    while (!z->frame_done) {
        if ((rc = zr_produce(z, &n)) != 0) return rc;
        for (size_t i = 0; i < n; i++)
            if (z->out[i])
                return core_err_set(MLV_EINTEGRITY, "bundle has data after the end of its archive");
    }
    unsigned char t[TRAILER_LEN + 1], digest[32];
    size_t got = 0;
    while (got < sizeof t) {
        if ((rc = zr_fill(z)) != 0) return rc;
        if (z->ib.pos == z->ib.size) break; /* end of file */
        size_t k =
            z->ib.size - z->ib.pos < sizeof t - got ? z->ib.size - z->ib.pos : sizeof t - got;
        memcpy(t + got, z->in + z->ib.pos, k);
        z->ib.pos += k;
        got += k;
    }
    if (got > TRAILER_LEN) return core_err_set(MLV_EINTEGRITY, "bundle has data after its end");
    if (got < TRAILER_LEN || memcmp(t, TRAILER_HEAD, sizeof TRAILER_HEAD) != 0)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle is truncated or corrupt: its integrity trailer is missing "
                            "or damaged");
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_MD_CTX_copy_ex(c, z->md) == 1 && EVP_DigestFinal_ex(c, digest, NULL) == 1;
    EVP_MD_CTX_free(c);
    if (!ok || EVP_DigestUpdate(z->md, t, TRAILER_LEN) != 1)
        return core_err_set(MLV_ECRYPTO, "SHA-256 failed");
    if (CRYPTO_memcmp(digest, t + 16, 32) != 0)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle is corrupt: its bytes do not match the SHA-256 its trailer "
                            "records (damaged in transit?)");
    return 0;
}

/* A libarchive failure: ours from inside the read callback, or libarchive's own. */
static int read_fail(struct archive *a, zreader *z, const char *entry)
{
    if (z->rc) return core_err_set(z->rc, "%s", z->msg);
    char sb[128];
    const char *why = archive_error_string(a) ? archive_error_string(a) : "unreadable";
    if (entry)
        return core_err_set(MLV_EINTEGRITY, "bundle is truncated or corrupt: entry '%s': %s",
                            shown(entry, sb), why);
    return core_err_set(MLV_EINTEGRITY, "bundle is truncated or corrupt: %s", why);
}

/* An entry we know how to read: where it goes and what bundle.json says of it. */
typedef struct expected {
    char path[128];
    int kind;
    size_t index; /* into versions or blobs */
    uint64_t size;
    bool seen;
} expected;

static int cmp_expected(const void *a, const void *b)
{
    return strcmp(((const expected *)a)->path, ((const expected *)b)->path);
}

/* The next header, with every check that needs no data: a regular file (no link,
 * device, FIFO, directory, sparse file), a safe relative path, a size. */
static int next_entry(struct archive *a, zreader *z, size_t no, struct archive_entry **e,
                      const char **path)
{
    int r = archive_read_next_header(a, e);
    if (r == ARCHIVE_EOF) return 1;
    if (r != ARCHIVE_OK) return read_fail(a, z, NULL);
    char sb[128];
    const char *p = archive_entry_pathname(*e);
    if (!p || !*p)
        return core_err_set(MLV_EINTEGRITY, "bundle entry %zu has no usable name", no + 1);
    const char *bad = NULL;
    switch (archive_entry_filetype(*e)) {
    case AE_IFREG: break;
    case AE_IFLNK: bad = "a symbolic link"; break;
    case AE_IFDIR: bad = "a directory"; break;
    case AE_IFCHR: bad = "a character device"; break;
    case AE_IFBLK: bad = "a block device"; break;
    case AE_IFIFO: bad = "a FIFO"; break;
    case AE_IFSOCK: bad = "a socket"; break;
    default: bad = "not a regular file"; break;
    }
    if (archive_entry_hardlink(*e))
        bad = "a hard link";
    else if (archive_entry_symlink(*e))
        bad = "a symbolic link";
    else if (!bad && archive_entry_sparse_count(*e) > 0)
        bad = "a sparse file";
    if (bad)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle entry '%s' is %s; a bundle holds regular files only",
                            shown(p, sb), bad);
    if (!core_relpath_safe(p))
        return core_err_set(MLV_EINTEGRITY,
                            "bundle entry '%s' has an unsafe path (absolute, '..', or odd "
                            "characters)",
                            shown(p, sb));
    if (!archive_entry_size_is_set(*e) || archive_entry_size(*e) < 0)
        return core_err_set(MLV_EINTEGRITY, "bundle entry '%s' has no size", shown(p, sb));
    *path = p;
    return 0;
}

/* Reads the whole data of the current entry (`size` bytes) into a fresh buffer. */
static int read_entry_mem(struct archive *a, zreader *z, const char *path, size_t size, char **out)
{
    char *buf = malloc(size + 1);
    if (!buf) return core_err_set(MLV_ENOMEM, "out of memory");
    size_t got = 0;
    while (got < size) {
        la_ssize_t r = archive_read_data(a, buf + got, size - got);
        if (r <= 0) {
            free(buf);
            return r < 0 ? read_fail(a, z, path)
                         : core_err_set(MLV_EINTEGRITY,
                                        "bundle is truncated or corrupt: entry '%s' ends early",
                                        path);
        }
        got += (size_t)r;
    }
    buf[size] = 0;
    *out = buf;
    return 0;
}

/* The first two entries: bundle.json, then bundle.sig. */
static int read_head(struct archive *a, zreader *z, char **json, size_t *json_len, char **sig,
                     size_t *sig_len)
{
    static const char *const names[2] = {"bundle.json", "bundle.sig"};
    const size_t max[2] = {REPO_BUNDLE_JSON_MAX, SIG_ENTRY_MAX};
    char **outs[2] = {json, sig};
    size_t *lens[2] = {json_len, sig_len};
    for (size_t i = 0; i < 2; i++) {
        struct archive_entry *e;
        const char *path = NULL;
        char sb[128];
        int rc = next_entry(a, z, i, &e, &path);
        if (rc == 1)
            return core_err_set(MLV_EINTEGRITY, "bundle is truncated or corrupt: it ends before %s",
                                names[i]);
        if (rc) return rc;
        if (strcmp(path, names[i]) != 0)
            return core_err_set(MLV_EINTEGRITY, "not an mlvault bundle: entry %zu is '%s', not %s",
                                i + 1, shown(path, sb), names[i]);
        la_int64_t size = archive_entry_size(e);
        if ((uint64_t)size > max[i] || size == 0)
            return core_err_set(MLV_EINTEGRITY, "bundle entry %s is %lld bytes (limit %zu)",
                                names[i], (long long)size, max[i]);
        if ((rc = read_entry_mem(a, z, names[i], (size_t)size, outs[i])) != 0) return rc;
        *lens[i] = (size_t)size;
    }
    return 0;
}

/* ------------------------------------------------------------ bundle.json -- */

static int jerr(const char *what)
{
    return core_err_set(MLV_EINTEGRITY, "bundle.json: %s", what);
}

static const char *jstr(json_t *o, const char *k, size_t max)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s && strlen(s) <= max && strlen(s) == json_string_length(json_object_get(o, k)) ? s
                                                                                           : NULL;
}

static bool jsize(json_t *o, const char *k, uint64_t max, uint64_t *out)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static bool only_keys(json_t *o, const char *const *keys, size_t n)
{
    if (!json_is_object(o) || json_object_size(o) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!json_object_get(o, keys[i])) return false;
    return true;
}

static int parse_version(json_t *o, size_t i, repo_bundle_version *v, uint64_t *msize,
                         uint64_t *ssize)
{
    static const char *const keys[] = {
        "kind",   "name",          "version",        "digest",
        "signer", "manifest_size", "signature_size", "signature_sha256"};
    const char *kind = jstr(o, "kind", 15), *name = jstr(o, "name", 64);
    const char *digest = jstr(o, "digest", 64), *signer = jstr(o, "signer", 64);
    const char *ssha = jstr(o, "signature_sha256", 64);
    json_t *ver = json_object_get(o, "version");
    char msg[96];
    snprintf(msg, sizeof msg, "versions[%zu] is not well formed", i);
    if (!only_keys(o, keys, sizeof keys / sizeof *keys) || !kind ||
        (strcmp(kind, "model") && strcmp(kind, "dataset")) || !name || !core_name_valid(name) ||
        !json_is_integer(ver) || json_integer_value(ver) < 1 ||
        json_integer_value(ver) > 1000000000 || !digest || !core_is_hex(digest, 64) || !signer ||
        !core_is_hex(signer, 64) || !ssha || !core_is_hex(ssha, 64) ||
        !jsize(o, "manifest_size", MANIFEST_MAX, msize) || *msize == 0 ||
        !jsize(o, "signature_size", SIGNATURE_MAX, ssize) || *ssize == 0)
        return jerr(msg);
    snprintf(v->kind, sizeof v->kind, "%s", kind);
    snprintf(v->name, sizeof v->name, "%s", name);
    v->version = (int)json_integer_value(ver);
    memcpy(v->digest, digest, 65);
    memcpy(v->signer, signer, 65);
    memcpy(v->signature_sha256, ssha, 65);
    return 0;
}

static int parse_blob(json_t *o, size_t i, repo_bundle_blob *bl)
{
    static const char *const keys[] = {"sha256", "size", "stored", "wrapped_dek"};
    const char *sha = jstr(o, "sha256", 64);
    const char *wrapped = jstr(o, "wrapped_dek", 2 * REPO_WRAPPED_DEK_LEN);
    char msg[96];
    snprintf(msg, sizeof msg, "blobs[%zu] is not well formed", i);
    if (!only_keys(o, keys, sizeof keys / sizeof *keys) || !sha || !core_is_hex(sha, 64) ||
        !wrapped || !core_is_hex(wrapped, 2 * REPO_WRAPPED_DEK_LEN) ||
        !jsize(o, "size", BLOB_MAX, &bl->size) || !jsize(o, "stored", UINT64_MAX >> 1, &bl->stored))
        return jerr(msg);
    if (bl->stored != repo_aead_ciphertext_size(bl->size))
        return core_err_set(MLV_EINTEGRITY,
                            "bundle.json: blob %s: stored size %llu does not fit its size %llu",
                            sha, (unsigned long long)bl->stored, (unsigned long long)bl->size);
    memcpy(bl->sha256, sha, 65);
    return core_unhex(bl->wrapped_dek, REPO_WRAPPED_DEK_LEN, wrapped) ? jerr(msg) : 0;
}

/* Validates the whole (already authenticated) description into b, and builds the table
 * of the entries it declares. */
static int parse_bundle_json(json_t *root, repo_bundle *b, expected **exp, size_t *n_exp)
{
    static const char *const keys[] = {"schema",        "created_at", "sender", "recipient",
                                       "ephemeral_key", "versions",   "blobs",  "total_bytes"};
    static const char *const sender_keys[] = {"public_key", "hint"};
    if (!only_keys(root, keys, sizeof keys / sizeof *keys))
        return jerr("not a bundle description (unexpected or missing fields)");
    const char *schema = jstr(root, "schema", 64);
    if (!schema || strcmp(schema, REPO_BUNDLE_SCHEMA) != 0)
        return core_err_set(MLV_EUNSUPPORTED, "bundle.json: schema '%s' is not %s",
                            schema ? schema : "?", REPO_BUNDLE_SCHEMA);
    const char *at = jstr(root, "created_at", 20), *rcpt = jstr(root, "recipient", 64);
    const char *eph = jstr(root, "ephemeral_key", 2 * REPO_X25519_LEN);
    json_t *sender = json_object_get(root, "sender");
    const char *spem = jstr(sender, "public_key", PEM_MAX), *shint = jstr(sender, "hint", 64);
    json_t *vs = json_object_get(root, "versions"), *bs = json_object_get(root, "blobs");
    if (!at || !rcpt || !core_is_hex(rcpt, 64) || !eph || !core_is_hex(eph, 2 * REPO_X25519_LEN) ||
        !only_keys(sender, sender_keys, 2) || !spem || !shint || !core_is_hex(shint, 64) ||
        !json_is_array(vs) || !json_is_array(bs) ||
        !jsize(root, "total_bytes", UINT64_MAX >> 1, &b->total_bytes))
        return jerr("not well formed");
    char h[65];
    repo_sha256_hex(h, spem, strlen(spem));
    if (strcmp(h, shint) != 0) return jerr("the sender's key does not match its hint");
    size_t nv = json_array_size(vs), nb = json_array_size(bs);
    if (nv == 0 || nv > REPO_BUNDLE_MAX_VERSIONS || nb > REPO_BUNDLE_MAX_BLOBS)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle.json: %zu versions and %zu blobs (limits 1-%d "
                            "and %d)",
                            nv, nb, REPO_BUNDLE_MAX_VERSIONS, REPO_BUNDLE_MAX_BLOBS);
    snprintf(b->created_at, sizeof b->created_at, "%s", at);
    memcpy(b->recipient_hint, rcpt, 65);
    memcpy(b->sender_hint, shint, 65);
    core_unhex(b->ephemeral_key, REPO_X25519_LEN, eph);
    if (!(b->sender_pem = strdup(spem)) || !(b->versions = calloc(nv, sizeof *b->versions)) ||
        !(b->blobs = calloc(nb ? nb : 1, sizeof *b->blobs)) ||
        !(*exp = calloc(2 * nv + nb, sizeof **exp)))
        return core_err_set(MLV_ENOMEM, "out of memory");
    b->n_versions = nv;
    b->n_blobs = nb;
    uint64_t total = 0;
    size_t ne = 0;
    int rc;
    for (size_t i = 0; i < nv; i++) {
        repo_bundle_version *v = &b->versions[i];
        uint64_t ms = 0, ss = 0;
        if ((rc = parse_version(json_array_get(vs, i), i, v, &ms, &ss)) != 0) return rc;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(b->versions[j].name, v->name) &&
                (b->versions[j].version == v->version ||
                 !strcmp(b->versions[j].digest, v->digest) || strcmp(b->versions[j].kind, v->kind)))
                return core_err_set(MLV_EINTEGRITY, "bundle.json: %s:%d is listed twice", v->name,
                                    v->version);
        for (int w = 0; w < 2; w++) {
            expected *x = &(*exp)[ne++];
            repo_bundle_ledger_path(x->path, sizeof x->path, v->kind, v->name, v->version,
                                    w ? "signature" : "manifest.json");
            x->kind = w ? ENT_SIGNATURE : ENT_MANIFEST;
            x->index = i;
            x->size = w ? ss : ms;
        }
        total += ms + ss;
    }
    for (size_t i = 0; i < nb; i++) {
        repo_bundle_blob *bl = &b->blobs[i];
        if ((rc = parse_blob(json_array_get(bs, i), i, bl)) != 0) return rc;
        expected *x = &(*exp)[ne++];
        snprintf(x->path, sizeof x->path, "blobs/%s", bl->sha256);
        x->kind = ENT_BLOB;
        x->index = i;
        x->size = bl->stored;
        if (total + bl->stored < total) return jerr("sizes overflow");
        total += bl->stored;
    }
    qsort(*exp, ne, sizeof **exp, cmp_expected);
    for (size_t i = 1; i < ne; i++)
        if (!strcmp((*exp)[i - 1].path, (*exp)[i].path))
            return core_err_set(MLV_EINTEGRITY, "bundle.json: %s is declared twice",
                                (*exp)[i].path);
    *n_exp = ne;
    if (total != b->total_bytes)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle.json: total_bytes %llu is not the sum of its entries (%llu)",
                            (unsigned long long)b->total_bytes, (unsigned long long)total);
    return 0;
}

/* ---------------------------------------------------------------- entries -- */

/* Streams the current entry (a blob) into HOME/tmp, fsyncs it, then decrypts it with
 * its DEK to check size and digest, and re-wraps the DEK with the master key. */
static int stage_blob(struct archive *a, zreader *z, const char *home, const repo_keys *k,
                      const char *path, repo_bundle_blob *bl, const unsigned char dek[REPO_KEY_LEN],
                      unsigned char *buf)
{
    repo_staged_blob *s = &bl->staged;
    int fd = -1, rc = 0;
    if ((rc = repo_blob_tmp_create(home, s, &fd)) != 0) goto done;
    uint64_t got = 0;
    while (got < bl->stored) {
        size_t want = bl->stored - got < IO_BUF ? (size_t)(bl->stored - got) : IO_BUF;
        la_ssize_t r = archive_read_data(a, buf, want);
        if (r <= 0) {
            rc = r < 0
                     ? read_fail(a, z, path)
                     : core_err_set(MLV_EINTEGRITY,
                                    "bundle is truncated or corrupt: entry '%s' ends early", path);
            goto done;
        }
        if ((rc = core_write_all(fd, buf, (size_t)r)) != 0) {
            core_err_wrap("staging %s: ", path);
            goto done;
        }
        got += (uint64_t)r;
    }
    if (fsync(fd) != 0) {
        rc = core_err_set(MLV_EIO, "staging %s: fsync: %s", path, strerror(errno));
        goto done;
    }
    int closed = close(fd);
    fd = -1;
    if (closed != 0) {
        rc = core_err_set(MLV_EIO, "staging %s: close: %s", path, strerror(errno));
        goto done;
    }
    if ((rc = repo_blob_verify_file(s->tmp_path, bl->sha256, bl->size, dek)) != 0) {
        core_err_wrap("bundle entry '%s': ", path);
        goto done;
    }
    if ((rc = repo_keys_wrap_dek(k, dek, s->wrapped_dek)) != 0) goto done;
    memcpy(s->sha256, bl->sha256, 65);
    s->size = bl->size;
done:
    if (fd >= 0) close(fd);
    if (rc && s->tmp_path[0]) {
        unlink(s->tmp_path);
        s->tmp_path[0] = 0;
    }
    return rc;
}

/* Reads the entry declared as x into b, checking it against bundle.json. */
static int read_declared(struct archive *a, zreader *z, const char *home, const repo_keys *k,
                         repo_bundle *b, expected *x, unsigned char (*deks)[REPO_KEY_LEN],
                         unsigned char *buf)
{
    int rc;
    char digest[65];
    if (x->kind == ENT_BLOB)
        return stage_blob(a, z, home, k, x->path, &b->blobs[x->index], deks[x->index], buf);
    repo_bundle_version *v = &b->versions[x->index];
    char *data = NULL;
    if ((rc = read_entry_mem(a, z, x->path, (size_t)x->size, &data)) != 0) return rc;
    repo_sha256_hex(digest, data, (size_t)x->size);
    if (x->kind == ENT_MANIFEST) {
        v->manifest = data;
        v->manifest_len = (size_t)x->size;
        if (strcmp(digest, v->digest) != 0)
            return core_err_set(MLV_EINTEGRITY,
                                "bundle entry '%s': its SHA-256 is not the declared digest %.16s…",
                                x->path, v->digest);
    } else {
        v->signature = data;
        v->signature_len = (size_t)x->size;
        if (strcmp(digest, v->signature_sha256) != 0)
            return core_err_set(MLV_EINTEGRITY,
                                "bundle entry '%s': its SHA-256 is not the declared one", x->path);
    }
    return 0;
}

static int read_entries(struct archive *a, zreader *z, const char *home, const repo_keys *k,
                        repo_bundle *b, expected *exp, size_t n_exp,
                        unsigned char (*deks)[REPO_KEY_LEN], unsigned char *buf)
{
    uint64_t data_read = 0;
    char sb[128];
    for (size_t no = 2;; no++) {
        struct archive_entry *e;
        const char *path = NULL;
        int rc = next_entry(a, z, no, &e, &path);
        if (rc == 1) break;
        if (rc) return rc;
        expected key, *x;
        snprintf(key.path, sizeof key.path, "%s", path);
        x = strlen(path) < sizeof key.path ? bsearch(&key, exp, n_exp, sizeof *exp, cmp_expected)
                                           : NULL;
        if (!x && (!strcmp(path, "bundle.json") || !strcmp(path, "bundle.sig")))
            return core_err_set(MLV_EINTEGRITY, "bundle has a duplicate entry '%s'", path);
        if (!x)
            return core_err_set(MLV_EINTEGRITY,
                                "bundle entry '%s' is not declared by bundle.json; refused",
                                shown(path, sb));
        if (x->seen)
            return core_err_set(MLV_EINTEGRITY, "bundle has a duplicate entry '%s'", x->path);
        uint64_t size = (uint64_t)archive_entry_size(e);
        if (size != x->size)
            return core_err_set(MLV_EINTEGRITY,
                                "bundle entry '%s' is %llu bytes; bundle.json declares %llu",
                                x->path, (unsigned long long)size, (unsigned long long)x->size);
        if (data_read + size > b->total_bytes)
            return core_err_set(MLV_EINTEGRITY,
                                "bundle entry '%s' would take the bundle past the %llu bytes "
                                "bundle.json declares",
                                x->path, (unsigned long long)b->total_bytes);
        x->seen = true;
        if ((rc = read_declared(a, z, home, k, b, x, deks, buf)) != 0) return rc;
        data_read += size;
    }
    for (size_t i = 0; i < n_exp; i++)
        if (!exp[i].seen)
            return core_err_set(MLV_EINTEGRITY,
                                "bundle is truncated or corrupt: entry '%s' is missing",
                                exp[i].path);
    return 0;
}

/* bundle.sig against the trusted key of the sender bundle.json names. Only the sender's
 * hint is read before the signature verifies. */
static int check_signature(json_t *root, const char *json, size_t json_len, const char *sig,
                           size_t sig_len, repo_trusted_pem_fn trusted_pem, void *ctx)
{
    const char *hint = jstr(json_object_get(root, "sender"), "hint", 64);
    if (!hint || !core_is_hex(hint, 64)) return jerr("no sender key hint");
    char *pem = NULL;
    int rc = trusted_pem(ctx, hint, &pem);
    if (rc == MLV_ENOTFOUND)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle is signed by key %.16s…, which is not trusted: run mlvault "
                            "keys trust FILE.pub with the sending site's keys/signing.pub",
                            hint);
    if (rc) return rc;
    rc = verify_bytes(pem, json, json_len, sig, sig_len);
    free(pem);
    return rc;
}

int repo_bundle_read(repo_bundle **out, const char *path, const char *home, const repo_keys *k,
                     repo_trusted_pem_fn trusted_pem, void *ctx)
{
    *out = NULL;
    int rc = 0;
    repo_bundle *b = calloc(1, sizeof *b);
    zreader z = {.fd = -1};
    struct archive *a = NULL;
    char *json = NULL, *sig = NULL;
    size_t json_len = 0, sig_len = 0, n_exp = 0;
    json_t *root = NULL;
    expected *exp = NULL;
    unsigned char(*deks)[REPO_KEY_LEN] = NULL, (*wrapped)[REPO_WRAPPED_DEK_LEN] = NULL;
    unsigned char *buf = NULL, digest[32];
    size_t deks_size = 1;
    if (!b) return core_err_set(MLV_ENOMEM, "out of memory");
    if ((rc = core_open_regular(path, &z.fd, NULL)) != 0) goto done;
    posix_fadvise(z.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    z.in_cap = ZSTD_DStreamInSize();
    z.out_cap = IO_BUF;
    if (!(z.z = ZSTD_createDCtx()) || !(z.in = malloc(z.in_cap)) || !(z.out = malloc(z.out_cap)) ||
        !(buf = malloc(IO_BUF)) || !(z.md = EVP_MD_CTX_new()) ||
        EVP_DigestInit_ex(z.md, EVP_sha256(), NULL) != 1 || !(a = archive_read_new())) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    ZSTD_DCtx_setParameter(z.z, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG);
    /* Until bundle.json is read, only it and bundle.sig may come (plus what libarchive
     * asks for ahead: one output buffer, IO_BUF). */
    z.limit = REPO_BUNDLE_JSON_MAX + SIG_ENTRY_MAX + 3 * ENTRY_OVERHEAD + TAR_TAIL + IO_BUF;
    if (archive_read_support_format_tar(a) != ARCHIVE_OK ||
        archive_read_open(a, &z, NULL, zr_read_cb, NULL) != ARCHIVE_OK) {
        rc = read_fail(a, &z, NULL);
        goto done;
    }
    if ((rc = read_head(a, &z, &json, &json_len, &sig, &sig_len)) != 0) goto done;
    json_error_t je;
    if (!(root = json_loadb(json, json_len, JSON_REJECT_DUPLICATES, &je)) ||
        !json_is_object(root)) {
        rc = core_err_set(MLV_EINTEGRITY, "bundle.json is not a JSON object: %s", je.text);
        goto done;
    }
    /* Nothing else is looked at before the signature verifies with a trusted key. */
    if ((rc = check_signature(root, json, json_len, sig, sig_len, trusted_pem, ctx)) != 0)
        goto done;
    if ((rc = parse_bundle_json(root, b, &exp, &n_exp)) != 0) goto done;
    if (strcmp(b->recipient_hint, repo_keys_import_hint(k)) != 0) {
        rc = core_err_set(MLV_EINVAL,
                          "bundle is for another site: it was made for import key %.16s…, and "
                          "this site's import key is %.16s…",
                          b->recipient_hint, repo_keys_import_hint(k));
        goto done;
    }
    /* From here the frame may expand to what bundle.json declares, and no more. */
    z.limit = z.expanded + b->total_bytes + (uint64_t)n_exp * ENTRY_OVERHEAD + TAR_TAIL + IO_BUF;
    /* Every data key unwraps before any blob is read. */
    deks_size = b->n_blobs ? b->n_blobs * sizeof *deks : 1;
    if (!(deks = OPENSSL_secure_malloc(deks_size)) ||
        !(wrapped = malloc(b->n_blobs ? b->n_blobs * sizeof *wrapped : 1))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < b->n_blobs; i++)
        memcpy(wrapped[i], b->blobs[i].wrapped_dek, REPO_WRAPPED_DEK_LEN);
    if ((rc = repo_keys_unwrap_for_import(k, b->ephemeral_key,
                                          (const unsigned char(*)[REPO_WRAPPED_DEK_LEN])wrapped,
                                          b->n_blobs, deks)) != 0) {
        core_err_wrap("bundle.json: ");
        goto done;
    }
    if ((rc = read_entries(a, &z, home, k, b, exp, n_exp, deks, buf)) != 0) goto done;
    if ((rc = zr_finish(&z)) != 0) goto done;
    if (EVP_DigestFinal_ex(z.md, digest, NULL) != 1) {
        rc = core_err_set(MLV_ECRYPTO, "SHA-256 failed");
        goto done;
    }
    core_hex(b->file_sha256, digest, sizeof digest);
    b->file_size = z.raw;
    *out = b;
    b = NULL;
done:
    if (deks) OPENSSL_secure_clear_free(deks, deks_size);
    free(wrapped);
    repo_bundle_free(b);
    if (a) archive_read_free(a);
    json_decref(root);
    free(json);
    free(sig);
    free(exp);
    free(buf);
    ZSTD_freeDCtx(z.z);
    EVP_MD_CTX_free(z.md);
    free(z.in);
    free(z.out);
    if (z.fd >= 0) close(z.fd);
    return rc;
}

void repo_bundle_free(repo_bundle *b)
{
    if (!b) return;
    for (size_t i = 0; b->versions && i < b->n_versions; i++) {
        free(b->versions[i].manifest);
        free(b->versions[i].signature);
    }
    for (size_t i = 0; b->blobs && i < b->n_blobs; i++)
        repo_blob_discard(&b->blobs[i].staged);
    free(b->versions);
    free(b->blobs);
    free(b->sender_pem);
    free(b);
}
