/* tests/test_repo_bundle.c: the import key and data-key wrapping for another site
 * (repo/keys.c), blob verification at a path (repo/blob.c), and the bundle format
 * (repo/bundle.c): a writer/reader round trip between two homes, then the reader's
 * refusals — archives crafted here with libarchive's own writer and libzstd (path
 * traversal, links, devices, duplicates, undeclared or resized entries, a compression
 * bomb, truncation, byte flips, a wrong first entry, untrusted or forged signatures, a
 * bundle for another site) — each refused with a message naming the problem and
 * nothing left in HOME/tmp. */
/* cmocka needs these three first, in this order. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <zstd.h>

#include "core/core_json.h"
#include "repo/repo.h"
#include "repo/repo_internal.h"

#define N_BLOBS 3

/* ------------------------------------------------------------------ helpers ---- */

static void expect_msg(const char *needle)
{
    if (needle && !strstr(core_err_last(), needle)) {
        print_error("message '%s' lacks '%s'\n", core_err_last(), needle);
        fail();
    }
}

/* Two sites: A sends, B receives; C is a third whose key B does not trust. */
typedef struct site {
    char home[4096];
    repo_keys *keys;
    char hint[65]; /* signing key */
} site;

typedef struct fixture {
    site a, b, c;
    char dir[4096];                  /* scratch for bundle files */
    repo_staged_blob blobs[N_BLOBS]; /* stored at A */
    unsigned char *plain[N_BLOBS];
    size_t plain_len[N_BLOBS];
    char good[4200];  /* a valid bundle from A for B */
    char for_a[4200]; /* a valid bundle from A for A's own key */
    char manifest[2][200], signature[2][200];
} fixture;

static void site_init(site *s, const char *what)
{
    make_temp_dir(s->home, sizeof s->home, what);
    assert_int_equal(repo_keys_create(s->home), 0);
    assert_int_equal(repo_keys_open(&s->keys, s->home), 0);
    repo_sha256_hex(s->hint, repo_keys_public_pem(s->keys), strlen(repo_keys_public_pem(s->keys)));
}

/* The trust table of the receiving site: A only (or whatever `trusted` names). */
typedef struct trust {
    const site *trusted[2];
} trust;

static int trusted_pem(void *ctx, const char *hint, char **pem)
{
    const trust *t = ctx;
    for (int i = 0; i < 2; i++)
        if (t->trusted[i] && !strcmp(t->trusted[i]->hint, hint)) {
            *pem = strdup(repo_keys_public_pem(t->trusted[i]->keys));
            return *pem ? 0 : MLV_ENOMEM;
        }
    return core_err_set(MLV_ENOTFOUND, "not trusted");
}

/* Writes a bundle of two versions and the first n_blobs blobs from A for `recipient`. */
static void write_bundle(fixture *f, const site *recipient, const char *path, size_t n_blobs)
{
    repo_bundle b = {0};
    repo_bundle_version v[2] = {{.kind = "model", .name = "base", .version = 1},
                                {.kind = "dataset", .name = "evalset", .version = 4}};
    repo_bundle_blob bl[N_BLOBS];
    memset(bl, 0, sizeof bl);
    for (int i = 0; i < 2; i++) {
        v[i].manifest = f->manifest[i];
        v[i].manifest_len = strlen(f->manifest[i]);
        v[i].signature = f->signature[i];
        v[i].signature_len = strlen(f->signature[i]);
        repo_sha256_hex(v[i].digest, v[i].manifest, v[i].manifest_len);
        memcpy(v[i].signer, f->a.hint, 65);
    }
    unsigned char raw[REPO_X25519_LEN], master[N_BLOBS][REPO_WRAPPED_DEK_LEN];
    unsigned char wrapped[N_BLOBS][REPO_WRAPPED_DEK_LEN];
    assert_int_equal(
        repo_import_key_parse(repo_keys_import_pem(recipient->keys), raw, b.recipient_hint), 0);
    for (int i = 0; i < N_BLOBS; i++)
        memcpy(master[i], f->blobs[i].wrapped_dek, REPO_WRAPPED_DEK_LEN);
    assert_int_equal(repo_keys_rewrap_for_recipient(f->a.keys, raw,
                                                    (const unsigned char(*)[40])master, n_blobs,
                                                    b.ephemeral_key, wrapped),
                     0);
    for (size_t i = 0; i < n_blobs; i++) {
        memcpy(bl[i].sha256, f->blobs[i].sha256, 65);
        bl[i].size = f->blobs[i].size;
        memcpy(bl[i].wrapped_dek, wrapped[i], REPO_WRAPPED_DEK_LEN);
    }
    b.versions = v;
    b.n_versions = 2;
    b.blobs = bl;
    b.n_blobs = n_blobs;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    int rc = repo_bundle_write(fd, f->a.home, f->a.keys, &b);
    if (rc) print_error("write: %s\n", core_err_last());
    assert_int_equal(rc, 0);
    close(fd);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    site_init(&f->a, "bundle_a");
    site_init(&f->b, "bundle_b");
    site_init(&f->c, "bundle_c");
    make_temp_dir(f->dir, sizeof f->dir, "bundle_files");
    /* Blobs at A: empty, one byte short of a chunk, several chunks. */
    const size_t sizes[N_BLOBS] = {0, 65535, 3 * 65536 + 77};
    for (int i = 0; i < N_BLOBS; i++) {
        f->plain_len[i] = sizes[i];
        f->plain[i] = malloc(sizes[i] + 1);
        assert_non_null(f->plain[i]);
        if (sizes[i]) assert_int_equal(core_random(f->plain[i], sizes[i]), 0);
        char in[4200];
        snprintf(in, sizeof in, "%s/in-%d", f->dir, i);
        write_file(in, f->plain[i], sizes[i]);
        assert_int_equal(repo_blob_stage_file(f->a.home, f->a.keys, in, &f->blobs[i]), 0);
        assert_int_equal(repo_blob_commit(f->a.home, &f->blobs[i]), 0);
        unlink(in);
    }
    for (int i = 0; i < 2; i++) {
        snprintf(f->manifest[i], sizeof f->manifest[i], "{\"manifest\":%d}", i);
        snprintf(f->signature[i], sizeof f->signature[i], "{\"signature\":%d}", i);
    }
    snprintf(f->good, sizeof f->good, "%s/good.tar.zst", f->dir);
    snprintf(f->for_a, sizeof f->for_a, "%s/for-a.tar.zst", f->dir);
    write_bundle(f, &f->b, f->good, N_BLOBS);
    write_bundle(f, &f->a, f->for_a, N_BLOBS);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    site *s[3] = {&f->a, &f->b, &f->c};
    for (int i = 0; i < 3; i++) {
        repo_keys_free(s[i]->keys);
        core_rm_rf(s[i]->home);
    }
    for (int i = 0; i < N_BLOBS; i++)
        free(f->plain[i]);
    core_rm_rf(f->dir);
    free(f);
    return 0;
}

static char *tmp_of(const site *s)
{
    char *p = core_path_join(s->home, "tmp");
    assert_non_null(p);
    return p;
}

/* Reads `path` on B (trusting A) and expects a refusal with `code` and `needle`, and
 * B's tmp/ left empty. */
static void expect_refused(fixture *f, const char *path, int code, const char *needle)
{
    trust t = {{&f->a, NULL}};
    repo_bundle *b = (repo_bundle *)1;
    int rc = repo_bundle_read(&b, path, f->b.home, f->b.keys, trusted_pem, &t);
    if (rc != code) print_error("%s: got %d (%s), want %d\n", path, rc, core_err_last(), code);
    assert_int_equal(rc, code);
    assert_null(b);
    expect_msg(needle);
    char *tmp = tmp_of(&f->b);
    assert_true(dir_is_empty(tmp));
    free(tmp);
}

/* ================================================================= keys ==== */

static void t_import_key_files(void **state)
{
    (void)state;
    char home[4096];
    make_temp_dir(home, sizeof home, "bundle_keys");
    assert_int_equal(repo_keys_create(home), 0);
    char *kpath = core_path_join(home, "keys/import.key"),
         *ppath = core_path_join(home, "keys/import.pub");
    struct stat st;
    assert_int_equal(stat(kpath, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    size_t n;
    char *priv = (char *)read_all(kpath, &n), *pub = (char *)read_all(ppath, &n);
    assert_non_null(strstr(priv, "-----BEGIN PRIVATE KEY-----")); /* PKCS#8 */
    assert_non_null(strstr(pub, "-----BEGIN PUBLIC KEY-----"));
    repo_keys *k = NULL;
    assert_int_equal(repo_keys_open(&k, home), 0);
    assert_string_equal(repo_keys_import_pem(k), pub);
    unsigned char raw[REPO_X25519_LEN];
    char hint[65], want[65];
    assert_int_equal(repo_import_key_parse(pub, raw, hint), 0);
    repo_sha256_hex(want, pub, strlen(pub));
    assert_string_equal(hint, want);
    assert_string_equal(repo_keys_import_hint(k), want);
    /* The signing key is not an import key; nor is garbage. */
    assert_int_equal(repo_import_key_parse(repo_keys_public_pem(k), raw, hint), MLV_EINVAL);
    assert_int_equal(repo_import_key_parse("nonsense", raw, hint), MLV_EINVAL);
    repo_keys_free(k);
    /* create refuses a home that has any key file, the import key included */
    assert_int_equal(repo_keys_create(home), MLV_EEXISTS);

    /* A loose mode on import.key is refused like the other secret keys. */
    assert_int_equal(chmod(kpath, 0640), 0);
    k = (repo_keys *)1;
    assert_int_equal(repo_keys_open(&k, home), MLV_EINVAL);
    assert_null(k);
    expect_msg("import.key");
    expect_msg("chmod 600");
    assert_int_equal(chmod(kpath, 0600), 0);

    /* An older home without the pair gets one at open, with the same modes; a lost
     * import.pub is rewritten from the private key. */
    unlink(ppath);
    assert_int_equal(repo_keys_open(&k, home), 0);
    free(pub);
    pub = (char *)read_all(ppath, &n);
    assert_string_equal(repo_keys_import_pem(k), pub);
    repo_keys_free(k);
    unlink(kpath);
    unlink(ppath);
    assert_int_equal(repo_keys_open(&k, home), 0);
    assert_int_equal(stat(kpath, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(ppath, &st), 0);
    free(pub);
    pub = (char *)read_all(ppath, &n);
    assert_string_equal(repo_keys_import_pem(k), pub);
    assert_string_not_equal(repo_keys_import_hint(k), want); /* a new key */
    char *tmp = core_path_join(home, "tmp");
    assert_true(dir_is_empty(tmp));
    repo_keys_free(k);
    /* Not a key at all. */
    write_file(kpath, "not a key\n", 10);
    assert_int_equal(repo_keys_open(&k, home), MLV_EINVAL);
    expect_msg("X25519");
    free(tmp);
    free(priv);
    free(pub);
    free(kpath);
    free(ppath);
    core_rm_rf(home);
}

static void t_wrap_for_recipient(void **state)
{
    fixture *f = *state;
    enum { N = 5 };
    unsigned char deks[N][REPO_KEY_LEN], back[N][REPO_KEY_LEN], wrapped[N][REPO_WRAPPED_DEK_LEN];
    unsigned char raw[REPO_X25519_LEN], eph[REPO_X25519_LEN], eph2[REPO_X25519_LEN];
    char hint[65];
    assert_int_equal(core_random(deks, sizeof deks), 0);
    assert_int_equal(repo_import_key_parse(repo_keys_import_pem(f->b.keys), raw, hint), 0);
    assert_int_equal(
        repo_keys_wrap_for_recipient(raw, (const unsigned char(*)[32])deks, N, eph, wrapped), 0);
    assert_int_equal(
        repo_keys_unwrap_for_import(f->b.keys, eph, (const unsigned char(*)[40])wrapped, N, back),
        0);
    assert_memory_equal(back, deks, sizeof deks);
    /* One ephemeral key per call: wrapping again gives other bytes. */
    unsigned char again[N][REPO_WRAPPED_DEK_LEN];
    assert_int_equal(
        repo_keys_wrap_for_recipient(raw, (const unsigned char(*)[32])deks, N, eph2, again), 0);
    assert_memory_not_equal(eph, eph2, sizeof eph);
    assert_memory_not_equal(again, wrapped, sizeof again);

    /* Another site's import key cannot unwrap them. */
    assert_int_equal(
        repo_keys_unwrap_for_import(f->a.keys, eph, (const unsigned char(*)[40])wrapped, N, back),
        MLV_EINTEGRITY);
    expect_msg("import key");
    /* Any flipped bit of a wrapped key or of the ephemeral key is detected. */
    for (int i = 0; i < REPO_WRAPPED_DEK_LEN; i += 7) {
        wrapped[3][i] ^= 0x20;
        memset(back, 0x5A, sizeof back);
        assert_int_equal(repo_keys_unwrap_for_import(f->b.keys, eph,
                                                     (const unsigned char(*)[40])wrapped, N, back),
                         MLV_EINTEGRITY);
        expect_msg("data key 3");
        wrapped[3][i] ^= 0x20;
    }
    for (int i = 0; i < REPO_X25519_LEN; i += 5) {
        eph[i] ^= 0x01;
        assert_int_equal(repo_keys_unwrap_for_import(f->b.keys, eph,
                                                     (const unsigned char(*)[40])wrapped, N, back),
                         MLV_EINTEGRITY);
        eph[i] ^= 0x01;
    }
    /* The rewrap from master-wrapped keys gives the same DEKs. */
    unsigned char master[N][REPO_WRAPPED_DEK_LEN];
    for (int i = 0; i < N; i++)
        assert_int_equal(repo_keys_wrap_dek(f->a.keys, deks[i], master[i]), 0);
    assert_int_equal(repo_keys_rewrap_for_recipient(
                         f->a.keys, raw, (const unsigned char(*)[40])master, N, eph, wrapped),
                     0);
    assert_int_equal(
        repo_keys_unwrap_for_import(f->b.keys, eph, (const unsigned char(*)[40])wrapped, N, back),
        0);
    assert_memory_equal(back, deks, sizeof deks);
    /* ...and refuses master-wrapped keys of another home. */
    assert_int_equal(repo_keys_rewrap_for_recipient(
                         f->b.keys, raw, (const unsigned char(*)[40])master, N, eph, wrapped),
                     MLV_EINTEGRITY);
}

static void t_verify_file(void **state)
{
    fixture *f = *state;
    const repo_staged_blob *s = &f->blobs[2];
    unsigned char dek[REPO_KEY_LEN];
    assert_int_equal(repo_keys_unwrap_dek(f->a.keys, s->wrapped_dek, dek), 0);
    char *obj = repo_blob_path(f->a.home, s->sha256), copy[4200];
    snprintf(copy, sizeof copy, "%s/copy", f->dir);
    size_t n;
    unsigned char *ct = read_all(obj, &n);
    write_file(copy, ct, n);
    assert_int_equal(repo_blob_verify_file(copy, s->sha256, s->size, dek), 0);
    assert_int_equal(repo_blob_verify_file(copy, s->sha256, s->size + 1, dek), MLV_EINTEGRITY);
    assert_int_equal(repo_blob_verify_file(copy, f->blobs[1].sha256, s->size, dek), MLV_EINTEGRITY);
    ct[n / 2] ^= 1;
    write_file(copy, ct, n);
    assert_int_equal(repo_blob_verify_file(copy, s->sha256, s->size, dek), MLV_EINTEGRITY);
    expect_msg(s->sha256);
    unsigned char other[REPO_KEY_LEN] = {1};
    ct[n / 2] ^= 1;
    write_file(copy, ct, n);
    assert_int_equal(repo_blob_verify_file(copy, s->sha256, s->size, other), MLV_EINTEGRITY);
    unlink(copy);
    assert_int_equal(repo_blob_verify_file(copy, s->sha256, s->size, dek), MLV_ENOTFOUND);
    free(ct);
    free(obj);
}

/* ============================================================ round trip ==== */

static void t_round_trip(void **state)
{
    fixture *f = *state;
    trust t = {{&f->a, NULL}};
    repo_bundle *b = NULL;
    int rc = repo_bundle_read(&b, f->good, f->b.home, f->b.keys, trusted_pem, &t);
    if (rc) print_error("read: %s\n", core_err_last());
    assert_int_equal(rc, 0);
    assert_string_equal(b->sender_hint, f->a.hint);
    assert_string_equal(b->sender_pem, repo_keys_public_pem(f->a.keys));
    assert_string_equal(b->recipient_hint, repo_keys_import_hint(f->b.keys));
    assert_int_equal(b->n_versions, 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(b->versions[i].manifest, f->manifest[i]);
        assert_string_equal(b->versions[i].signature, f->signature[i]);
        assert_string_equal(b->versions[i].signer, f->a.hint);
    }
    assert_string_equal(b->versions[1].kind, "dataset");
    assert_int_equal(b->versions[1].version, 4);
    /* The file's digest is the SHA-256 of its bytes. */
    size_t n;
    unsigned char *file = read_all(f->good, &n), md[32];
    char hex[65];
    EVP_Digest(file, n, md, NULL, EVP_sha256(), NULL);
    core_hex(hex, md, 32);
    assert_string_equal(b->file_sha256, hex);
    assert_int_equal(b->file_size, n);
    free(file);

    /* Each blob is staged byte for byte as A stores it, its DEK now wrapped by B's
     * master key: committed at B it decrypts to the original plaintext. */
    assert_int_equal(b->n_blobs, N_BLOBS);
    for (int i = 0; i < N_BLOBS; i++) {
        repo_staged_blob *s = &b->blobs[i].staged;
        assert_string_equal(s->sha256, f->blobs[i].sha256);
        assert_int_equal(s->size, f->plain_len[i]);
        char *obj = repo_blob_path(f->a.home, s->sha256);
        size_t an, sn;
        unsigned char *ac = read_all(obj, &an), *sc = read_all(s->tmp_path, &sn);
        assert_int_equal(an, sn);
        assert_memory_equal(ac, sc, an);
        free(ac);
        free(sc);
        free(obj);
        assert_int_equal(repo_blob_commit(f->b.home, s), 0);
        unsigned char *out = malloc(f->plain_len[i] + 1);
        assert_int_equal(
            repo_blob_decrypt_mem(f->b.home, f->b.keys, s->sha256, s->size, s->wrapped_dek, out),
            0);
        assert_memory_equal(out, f->plain[i], f->plain_len[i]);
        free(out);
        /* A's master key does not unwrap B's record */
        unsigned char dek[REPO_KEY_LEN];
        assert_int_equal(repo_keys_unwrap_dek(f->a.keys, s->wrapped_dek, dek), MLV_EINTEGRITY);
    }
    repo_bundle_free(b);
    char *tmp = tmp_of(&f->b);
    assert_true(dir_is_empty(tmp));
    free(tmp);

    /* Reading again and freeing without committing leaves nothing behind. */
    assert_int_equal(repo_bundle_read(&b, f->good, f->b.home, f->b.keys, trusted_pem, &t), 0);
    repo_bundle_free(b);
    tmp = tmp_of(&f->b);
    assert_true(dir_is_empty(tmp));
    free(tmp);
}

/* ======================================================== crafted archives ==== */

/* What a crafted archive holds: the tar entries, then the compression. */
typedef struct centry {
    char path[200];
    int type; /* AE_IFREG, AE_IFLNK, AE_IFCHR, or 0 for a hard link */
    unsigned char *data;
    size_t len;
    uint64_t zeros;      /* when data is NULL: this many zero bytes, streamed */
    int64_t header_size; /* >= 0: the size the header claims (data is cut or padded) */
} centry;

typedef struct crafted {
    centry e[16];
    size_t n;
} crafted;

static void crafted_free(crafted *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->e[i].data);
    c->n = 0;
}

/* The entries of a bundle, read with libzstd and libarchive (no mlvault code). */
static void unpack(const char *path, crafted *c)
{
    size_t n;
    unsigned char *z = read_all(path, &n);
    size_t cap = 64 << 20;
    unsigned char *tar = malloc(cap);
    assert_non_null(tar);
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer ib = {z, n, 0};
    ZSTD_outBuffer ob = {tar, cap, 0};
    size_t r;
    while ((r = ZSTD_decompressStream(d, &ob, &ib)) != 0)
        assert_false(ZSTD_isError(r));
    ZSTD_freeDCtx(d);
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    assert_int_equal(archive_read_open_memory(a, tar, ob.pos), ARCHIVE_OK);
    struct archive_entry *e;
    memset(c, 0, sizeof *c);
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        centry *x = &c->e[c->n++];
        snprintf(x->path, sizeof x->path, "%s", archive_entry_pathname(e));
        x->type = AE_IFREG;
        x->header_size = -1;
        x->len = (size_t)archive_entry_size(e);
        x->data = malloc(x->len + 1);
        assert_int_equal(archive_read_data(a, x->data, x->len), (la_ssize_t)x->len);
    }
    archive_read_free(a);
    free(tar);
    free(z);
}

typedef struct zout {
    FILE *fp;
    ZSTD_CCtx *z;
    bool checksum;
} zout;

static la_ssize_t zout_write(struct archive *a, void *ctx, const void *buf, size_t n)
{
    (void)a;
    zout *o = ctx;
    unsigned char out[1 << 16];
    ZSTD_inBuffer ib = {buf, n, 0};
    while (ib.pos < ib.size) {
        ZSTD_outBuffer ob = {out, sizeof out, 0};
        size_t r = ZSTD_compressStream2(o->z, &ob, &ib, ZSTD_e_continue);
        if (ZSTD_isError(r)) return -1;
        fwrite(out, 1, ob.pos, o->fp);
    }
    return (la_ssize_t)n;
}

static void zout_end(zout *o, uint64_t tail_zeros)
{
    static unsigned char zero[1 << 16];
    while (tail_zeros) {
        size_t k = tail_zeros < sizeof zero ? (size_t)tail_zeros : sizeof zero;
        zout_write(NULL, o, zero, k);
        tail_zeros -= k;
    }
    unsigned char out[1 << 16];
    size_t r;
    do {
        ZSTD_outBuffer ob = {out, sizeof out, 0};
        ZSTD_inBuffer ib = {NULL, 0, 0};
        r = ZSTD_compressStream2(o->z, &ob, &ib, ZSTD_e_end);
        assert_false(ZSTD_isError(r));
        fwrite(out, 1, ob.pos, o->fp);
    } while (r != 0);
}

/* The integrity trailer mlvault's writer appends (repo/bundle.c): a zstd skippable frame
 * with "MLVB1SUM" and the SHA-256 of every byte before it. */
static void append_trailer(const char *path)
{
    size_t n;
    unsigned char *data = read_all(path, &n), t[48] = {0x5B, 0x2A, 0x4D, 0x18, 40,  0,   0,   0,
                                                       'M',  'L',  'V',  'B',  '1', 'S', 'U', 'M'};
    EVP_Digest(data, n, t + 16, NULL, EVP_sha256(), NULL);
    FILE *fp = fopen(path, "ab");
    assert_non_null(fp);
    assert_int_equal(fwrite(t, 1, sizeof t, fp), sizeof t);
    fclose(fp);
    free(data);
}

/* Writes c as a tar (libarchive, pax) compressed with zstd into `path`, with the trailer. */
static void pack(const crafted *c, const char *path, bool checksum, uint64_t tail_zeros)
{
    zout o = {.fp = fopen(path, "wb"), .z = ZSTD_createCCtx(), .checksum = checksum};
    assert_non_null(o.fp);
    /* the frame parameters mlvault's writer uses (repo/bundle.c, FRAME_HEADER) */
    ZSTD_CCtx_setParameter(o.z, ZSTD_c_checksumFlag, checksum ? 1 : 0);
    ZSTD_CCtx_setParameter(o.z, ZSTD_c_contentSizeFlag, 0);
    ZSTD_CCtx_setParameter(o.z, ZSTD_c_windowLog, 21);
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_set_bytes_in_last_block(a, 1);
    assert_int_equal(archive_write_open(a, &o, NULL, zout_write, NULL), ARCHIVE_OK);
    static unsigned char zero[1 << 16];
    for (size_t i = 0; i < c->n; i++) {
        const centry *x = &c->e[i];
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, x->path);
        archive_entry_set_perm(e, 0644);
        uint64_t size = x->data ? x->len : x->zeros;
        if (x->header_size >= 0) size = (uint64_t)x->header_size;
        if (x->type == 0) {
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_hardlink(e, "bundle.json");
            size = 0;
        } else if (x->type == AE_IFLNK) {
            archive_entry_set_filetype(e, AE_IFLNK);
            archive_entry_set_symlink(e, "/etc/passwd");
            size = 0;
        } else if (x->type == AE_IFCHR) {
            archive_entry_set_filetype(e, AE_IFCHR);
            archive_entry_set_rdev(e, makedev(1, 3));
            size = 0;
        } else {
            archive_entry_set_filetype(e, AE_IFREG);
        }
        archive_entry_set_size(e, (la_int64_t)size);
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        archive_entry_free(e);
        if (size == 0) continue;
        if (x->data) {
            size_t k = x->len < size ? x->len : (size_t)size;
            assert_int_equal(archive_write_data(a, x->data, k), (la_ssize_t)k);
        } else {
            for (uint64_t left = size; left;) {
                size_t k = left < sizeof zero ? (size_t)left : sizeof zero;
                assert_int_equal(archive_write_data(a, zero, k), (la_ssize_t)k);
                left -= k;
            }
        }
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    zout_end(&o, tail_zeros);
    ZSTD_freeCCtx(o.z);
    fclose(o.fp);
    append_trailer(path);
}

static centry *find(crafted *c, const char *prefix)
{
    for (size_t i = 0; i < c->n; i++)
        if (!strncmp(c->e[i].path, prefix, strlen(prefix))) return &c->e[i];
    fail_msg("no entry %s", prefix);
    return NULL;
}

/* Inserts a copy of `x` at position `at`. */
static void insert(crafted *c, size_t at, centry x)
{
    assert_true(c->n < 16);
    memmove(&c->e[at + 1], &c->e[at], (c->n - at) * sizeof *c->e);
    if (x.data) {
        unsigned char *d = malloc(x.len + 1);
        memcpy(d, x.data, x.len);
        x.data = d;
    }
    c->e[at] = x;
    c->n++;
}

static void drop(crafted *c, size_t at)
{
    free(c->e[at].data);
    memmove(&c->e[at], &c->e[at + 1], (c->n - at - 1) * sizeof *c->e);
    c->n--;
}

static void craft_path(fixture *f, char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s.tar.zst", f->dir, name);
}

/* The good bundle, repacked by the test's own writer, is accepted: the crafting itself
 * does not break bundles, so each refusal below is due to its one change. */
static void t_repacked_is_accepted(void **state)
{
    fixture *f = *state;
    crafted c;
    unpack(f->good, &c);
    assert_int_equal(c.n, 2 + 4 + N_BLOBS);
    assert_string_equal(c.e[0].path, "bundle.json");
    assert_string_equal(c.e[1].path, "bundle.sig");
    assert_string_equal(c.e[2].path, "ledger/models/base/1/manifest.json");
    assert_string_equal(c.e[5].path, "ledger/datasets/evalset/4/signature");
    char p[4200];
    craft_path(f, p, sizeof p, "repacked");
    pack(&c, p, true, 0);
    trust t = {{&f->a, NULL}};
    repo_bundle *b = NULL;
    int rc = repo_bundle_read(&b, p, f->b.home, f->b.keys, trusted_pem, &t);
    if (rc) print_error("%s\n", core_err_last());
    assert_int_equal(rc, 0);
    repo_bundle_free(b);
    /* Entries in another order are fine too, as long as the first two lead. */
    centry last = c.e[c.n - 1];
    c.e[c.n - 1] = c.e[2];
    c.e[2] = last;
    pack(&c, p, true, 0);
    assert_int_equal(repo_bundle_read(&b, p, f->b.home, f->b.keys, trusted_pem, &t), 0);
    repo_bundle_free(b);
    crafted_free(&c);
}

static void t_refuses_bad_entries(void **state)
{
    fixture *f = *state;
    char p[4200];
    unsigned char x[] = "hello";
    struct {
        const char *name;
        centry e;
        size_t at;
        const char *needle;
    } cases[] = {
        {"dotdot",
         {.path = "../x", .type = AE_IFREG, .data = x, .len = 5, .header_size = -1},
         2,
         "'../x' has an unsafe path"},
        {"absolute",
         {.path = "/etc/x", .type = AE_IFREG, .data = x, .len = 5, .header_size = -1},
         3,
         "'/etc/x' has an unsafe path"},
        {"inner-dotdot",
         {.path = "blobs/../../x", .type = AE_IFREG, .data = x, .len = 5, .header_size = -1},
         4,
         "unsafe path"},
        {"symlink",
         {.path = "blobs/link", .type = AE_IFLNK, .header_size = -1},
         2,
         "'blobs/link' is a symbolic link"},
        {"hardlink",
         {.path = "blobs/hard", .type = 0, .header_size = -1},
         2,
         "'blobs/hard' is a hard link"},
        {"chardev",
         {.path = "blobs/null", .type = AE_IFCHR, .header_size = -1},
         2,
         "'blobs/null' is a character device"},
        {"undeclared",
         {.path = "blobs/extra", .type = AE_IFREG, .data = x, .len = 5, .header_size = -1},
         6,
         "'blobs/extra' is not declared"},
        {"sig-again",
         {.path = "bundle.sig", .type = AE_IFREG, .data = x, .len = 5, .header_size = -1},
         8,
         "duplicate entry 'bundle.sig'"},
        /* a compression bomb: 256 MiB of zeros, declared nowhere */
        {"bomb-undeclared",
         {.path = "ledger/models/base/1/extra",
          .type = AE_IFREG,
          .zeros = (uint64_t)256 << 20,
          .header_size = -1},
         3,
         "not declared"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        crafted c;
        unpack(f->good, &c);
        insert(&c, cases[i].at, cases[i].e);
        craft_path(f, p, sizeof p, cases[i].name);
        pack(&c, p, true, 0);
        expect_refused(f, p, MLV_EINTEGRITY, cases[i].needle);
        crafted_free(&c);
    }
}

static void t_refuses_bad_structure(void **state)
{
    fixture *f = *state;
    char p[4200];
    crafted c;

    /* a declared entry twice */
    unpack(f->good, &c);
    insert(&c, c.n, c.e[3]);
    craft_path(f, p, sizeof p, "duplicate");
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "duplicate entry 'ledger/models/base/1/signature'");
    crafted_free(&c);

    /* a blob whose header size differs from the declared one, shorter and longer */
    unpack(f->good, &c);
    centry *blob = find(&c, "blobs/");
    blob->header_size = (int64_t)blob->len - 1;
    craft_path(f, p, sizeof p, "shorter");
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "bundle.json declares");
    blob->header_size = (int64_t)blob->len + 512;
    craft_path(f, p, sizeof p, "longer");
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "bundle.json declares");
    /* the compression bomb again, as a declared name grown to 512 MiB of zeros */
    free(blob->data);
    blob->data = NULL;
    blob->zeros = (uint64_t)512 << 20;
    blob->header_size = -1;
    craft_path(f, p, sizeof p, "bomb-oversized");
    pack(&c, p, true, 0);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_true(st.st_size < (8 << 20)); /* it really is a bomb */
    expect_refused(f, p, MLV_EINTEGRITY, "bundle.json declares");
    crafted_free(&c);

    /* zeros after the archive's end beyond what bundle.json allows */
    unpack(f->good, &c);
    craft_path(f, p, sizeof p, "bomb-tail");
    pack(&c, p, true, (uint64_t)64 << 20);
    expect_refused(f, p, MLV_EINTEGRITY, "compression bomb");
    crafted_free(&c);

    /* a missing entry */
    unpack(f->good, &c);
    drop(&c, c.n - 1);
    craft_path(f, p, sizeof p, "missing");
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "is missing");
    crafted_free(&c);

    /* bundle.json not first; bundle.sig not second; no bundle.json at all */
    unpack(f->good, &c);
    centry tmp = c.e[0];
    c.e[0] = c.e[1];
    c.e[1] = tmp;
    craft_path(f, p, sizeof p, "sig-first");
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "not bundle.json");
    crafted_free(&c);
    unpack(f->good, &c);
    drop(&c, 0);
    craft_path(f, p, sizeof p, "no-json");
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "not bundle.json");
    crafted_free(&c);
    unpack(f->good, &c);
    drop(&c, 1);
    craft_path(f, p, sizeof p, "no-sig");
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "not bundle.sig");
    crafted_free(&c);

    /* a frame without its content checksum */
    unpack(f->good, &c);
    craft_path(f, p, sizeof p, "no-checksum");
    pack(&c, p, false, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "no content checksum");
    crafted_free(&c);

    /* the trailer missing, or recording another digest */
    size_t tn;
    unsigned char *whole = read_all(f->good, &tn);
    write_file(p, whole, tn - 48);
    expect_refused(f, p, MLV_EINTEGRITY, "integrity trailer is missing");
    whole[tn - 1] ^= 1;
    write_file(p, whole, tn);
    expect_refused(f, p, MLV_EINTEGRITY, "do not match the SHA-256 its trailer records");
    free(whole);

    /* not zstd at all; an empty file; data after the end */
    write_file(p, "plain text, not a bundle\n", 25);
    expect_refused(f, p, MLV_EINTEGRITY, "not a zstd-compressed file");
    write_file(p, "", 0);
    expect_refused(f, p, MLV_EINTEGRITY, "not a zstd-compressed file");
    size_t n;
    unsigned char *good = read_all(f->good, &n);
    unsigned char *more = malloc(n + 3);
    memcpy(more, good, n);
    memcpy(more + n, "xyz", 3);
    write_file(p, more, n + 3);
    expect_refused(f, p, MLV_EINTEGRITY, "data after its end");
    free(more);
    free(good);
}

/* Every flipped byte and every truncation of the file is refused. */
static void t_refuses_flips_and_truncation(void **state)
{
    fixture *f = *state;
    size_t n;
    unsigned char *good = read_all(f->good, &n);
    char p[4200];
    craft_path(f, p, sizeof p, "damaged");
    /* Each of the first and last 300 bytes, and every 499th byte between. */
    size_t tried = 0;
    for (size_t off = 0; off < n; off += (off < 300 || off + 300 >= n) ? 1 : 499) {
        good[off] ^= 0x04;
        write_file(p, good, n);
        trust t = {{&f->a, NULL}};
        repo_bundle *b = NULL;
        int rc = repo_bundle_read(&b, p, f->b.home, f->b.keys, trusted_pem, &t);
        if (rc == 0) print_error("flip at %zu of %zu was accepted\n", off, n);
        assert_true(rc == MLV_EINTEGRITY || rc == MLV_EUNSUPPORTED || rc == MLV_EINVAL);
        good[off] ^= 0x04;
        tried++;
    }
    assert_true(tried > 600);
    char *tmp = tmp_of(&f->b);
    assert_true(dir_is_empty(tmp));
    for (size_t cut = 0; cut < n; cut += (cut < 200 || cut + 200 >= n) ? 1 : 1999) {
        write_file(p, good, cut);
        trust t = {{&f->a, NULL}};
        repo_bundle *b = NULL;
        int rc = repo_bundle_read(&b, p, f->b.home, f->b.keys, trusted_pem, &t);
        if (rc == 0) print_error("cut at %zu of %zu was accepted\n", cut, n);
        assert_int_equal(rc, MLV_EINTEGRITY);
    }
    write_file(p, good, n - 1);
    expect_refused(f, p, MLV_EINTEGRITY, "truncated or corrupt");
    assert_true(dir_is_empty(tmp));
    free(tmp);
    free(good);
}

/* A small bundle (two versions, one empty blob) with each of its bytes flipped in turn,
 * each bit pattern of a byte once every eight offsets: every one is refused. */
static void t_refuses_every_flipped_byte(void **state)
{
    fixture *f = *state;
    char small[4200], p[4200];
    craft_path(f, small, sizeof small, "small");
    write_bundle(f, &f->b, small, 1);
    size_t n;
    unsigned char *data = read_all(small, &n);
    trust t = {{&f->a, NULL}};
    repo_bundle *b = NULL;
    assert_int_equal(repo_bundle_read(&b, small, f->b.home, f->b.keys, trusted_pem, &t), 0);
    repo_bundle_free(b);
    craft_path(f, p, sizeof p, "small-flipped");
    for (size_t off = 0; off < n; off++) {
        unsigned char mask = (unsigned char)(1u << (off % 8));
        data[off] ^= mask;
        write_file(p, data, n);
        b = NULL;
        int rc = repo_bundle_read(&b, p, f->b.home, f->b.keys, trusted_pem, &t);
        if (rc == 0) print_error("flip of bit %zu at %zu of %zu was accepted\n", off % 8, off, n);
        assert_int_not_equal(rc, 0);
        data[off] ^= mask;
    }
    char *tmp = tmp_of(&f->b);
    assert_true(dir_is_empty(tmp));
    free(tmp);
    free(data);
}

/* Signs `json` with site s's signing key, as a forger holding that key would. */
static char *sign_as(const site *s, const char *json)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t len = 0;
    assert_int_equal(
        EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, repo_keys_signing_pkey(s->keys)), 1);
    assert_int_equal(EVP_DigestSign(ctx, NULL, &len, (const unsigned char *)json, strlen(json)), 1);
    unsigned char *sig = malloc(len);
    assert_int_equal(EVP_DigestSign(ctx, sig, &len, (const unsigned char *)json, strlen(json)), 1);
    char *b64 = malloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)b64, sig, (int)len);
    EVP_MD_CTX_free(ctx);
    free(sig);
    return b64;
}

static void set_entry(centry *x, const char *text)
{
    free(x->data);
    x->data = (unsigned char *)strdup(text);
    x->len = strlen(text);
}

static void t_refuses_untrusted_and_forged(void **state)
{
    fixture *f = *state;
    char p[4200];
    trust none = {{NULL, NULL}}, only_c = {{&f->c, NULL}};
    repo_bundle *b = (repo_bundle *)1;

    /* The sender is not trusted at B. */
    assert_int_equal(repo_bundle_read(&b, f->good, f->b.home, f->b.keys, trusted_pem, &none),
                     MLV_EINTEGRITY);
    expect_msg("not trusted: run mlvault keys trust");
    assert_int_equal(repo_bundle_read(&b, f->good, f->b.home, f->b.keys, trusted_pem, &only_c),
                     MLV_EINTEGRITY);
    expect_msg("not trusted");

    /* A bundle made for another site's import key. */
    expect_refused(f, f->for_a, MLV_EINVAL, "bundle is for another site");

    /* bundle.json tampered (a blob's size grown), the signature kept: refused. */
    crafted c;
    unpack(f->good, &c);
    json_error_t je;
    json_t *j = json_loadb((const char *)c.e[0].data, c.e[0].len, 0, &je);
    assert_non_null(j);
    json_t *v0 = json_array_get(json_object_get(j, "versions"), 0);
    json_object_set_new(v0, "name", json_string("mallory"));
    char *edited = core_json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    set_entry(&c.e[0], edited);
    craft_path(f, p, sizeof p, "edited");
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "bundle.sig does not verify");

    /* ...re-signed by C with A still named as the sender: does not verify with A's key. */
    char *sig = sign_as(&f->c, edited);
    set_entry(&c.e[1], sig);
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "bundle.sig does not verify");
    free(sig);

    /* ...re-signed by C naming C as the sender: C is not trusted at B. */
    const char *cpem = repo_keys_public_pem(f->c.keys);
    json_object_set_new(json_object_get(j, "sender"), "public_key", json_string(cpem));
    json_object_set_new(json_object_get(j, "sender"), "hint", json_string(f->c.hint));
    free(edited);
    edited = core_json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    set_entry(&c.e[0], edited);
    sig = sign_as(&f->c, edited);
    set_entry(&c.e[1], sig);
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "not trusted");
    free(sig);

    /* A validly signed description that lies is still caught entry by entry: signed by
     * A (trusted) but declaring a manifest digest the entry does not have. */
    json_decref(j);
    crafted_free(&c);
    unpack(f->good, &c);
    j = json_loadb((const char *)c.e[0].data, c.e[0].len, 0, &je);
    v0 = json_array_get(json_object_get(j, "versions"), 0);
    json_object_set_new(v0, "digest",
                        json_string("00000000000000000000000000000000000000000000"
                                    "00000000000000000000"));
    free(edited);
    edited = core_json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    set_entry(&c.e[0], edited);
    sig = sign_as(&f->a, edited);
    set_entry(&c.e[1], sig);
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "not the declared digest");
    free(sig);

    /* ...or a total_bytes that is not the sum of its entries. */
    crafted_free(&c);
    unpack(f->good, &c);
    json_decref(j);
    j = json_loadb((const char *)c.e[0].data, c.e[0].len, 0, &je);
    json_object_set_new(j, "total_bytes", json_integer(1));
    free(edited);
    edited = core_json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    set_entry(&c.e[0], edited);
    sig = sign_as(&f->a, edited);
    set_entry(&c.e[1], sig);
    pack(&c, p, true, 0);
    expect_refused(f, p, MLV_EINTEGRITY, "total_bytes");
    free(sig);
    free(edited);
    json_decref(j);
    crafted_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_import_key_files),
        cmocka_unit_test(t_wrap_for_recipient),
        cmocka_unit_test(t_verify_file),
        cmocka_unit_test(t_round_trip),
        cmocka_unit_test(t_repacked_is_accepted),
        cmocka_unit_test(t_refuses_bad_entries),
        cmocka_unit_test(t_refuses_bad_structure),
        cmocka_unit_test(t_refuses_flips_and_truncation),
        cmocka_unit_test(t_refuses_every_flipped_byte),
        cmocka_unit_test(t_refuses_untrusted_and_forged),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
