/* tests/test_repo_blob.c: the key files, the chunked AES-256-GCM stream and the blob
 * store (repo/keys.c, repo/aead.c, repo/blob.c). Round trips at chunk and batch
 * boundaries, every kind of tampering the format promises to catch (byte flips,
 * truncation, extension, reordering, swapped blobs, wrong or altered keys), key-file
 * permission checks, no plaintext on disk, and an independent decryption of our blobs
 * by tests/ref/blob_decrypt.py (Python `cryptography`). */
/* cmocka needs these three first, in this order. */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/test_util.h"
/* clang-format on */

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "repo/repo.h"
#include "repo/repo_internal.h"

#define MiB (1024 * 1024)
#define CT_CHUNK (REPO_CHUNK + REPO_TAG) /* one full chunk on disk */

typedef struct fixture {
    char home[4096];
    repo_keys *keys;
} fixture;

/* ------------------------------------------------------------------ helpers ---- */

static unsigned char *random_bytes(size_t n)
{
    unsigned char *p = malloc(n ? n : 1);
    assert_non_null(p);
    if (n) assert_int_equal(core_random(p, n), 0);
    return p;
}

static void sha256_hex(char out[65], const void *p, size_t n)
{
    unsigned char md[32];
    assert_int_equal(EVP_Digest(p, n, md, NULL, EVP_sha256(), NULL), 1);
    core_hex(out, md, 32);
}

static char *path_in(const char *dir, const char *name)
{
    char *p = core_path_join(dir, name);
    assert_non_null(p);
    return p;
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* Reads, changes and writes back one byte of a file. */
static void xor_byte(const char *path, off_t at, unsigned char mask)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    unsigned char b;
    assert_int_equal(pread(fd, &b, 1, at), 1);
    b ^= mask;
    assert_int_equal(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

static bool all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

/* A stored blob: what the catalog would keep, plus the plaintext for checking. */
typedef struct stored {
    repo_staged_blob b;
    unsigned char *plain;
    size_t n;
    char *path; /* the object file */
} stored;

/* Writes `n` random bytes to a file, stages and commits it. */
static stored store_random(fixture *f, size_t n)
{
    stored s = {.n = n, .plain = random_bytes(n)};
    char *in = path_in(f->home, "input.bin");
    write_file(in, s.plain, n);
    int rc = repo_blob_stage_file(f->home, f->keys, in, &s.b);
    if (rc) print_error("stage: %s\n", core_err_last());
    assert_int_equal(rc, 0);
    assert_int_equal(repo_blob_commit(f->home, &s.b), 0);
    unlink(in);
    free(in);
    s.path = repo_blob_path(f->home, s.b.sha256);
    assert_non_null(s.path);
    return s;
}

static void stored_free(stored *s)
{
    free(s->plain);
    free(s->path);
}

/* Decrypts into memory: returns the code, and checks that a failure left only zeros. */
static int decrypt_mem(fixture *f, const stored *s)
{
    unsigned char *out = malloc(s->n ? s->n : 1);
    assert_non_null(out);
    memset(out, 0xA5, s->n);
    int rc = repo_blob_decrypt_mem(f->home, f->keys, s->b.sha256, s->n, s->b.wrapped_dek, out);
    if (rc == 0) {
        assert_memory_equal(out, s->plain, s->n);
    } else {
        assert_true(all_zero(out, s->n));
    }
    free(out);
    return rc;
}

/* Verifies (no output) and expects an integrity failure whose message has `needle`. */
static void expect_integrity(fixture *f, const stored *s, const char *needle)
{
    int rc = repo_blob_decrypt(f->home, f->keys, s->b.sha256, s->n, s->b.wrapped_dek, -1);
    assert_int_equal(rc, MLV_EINTEGRITY);
    if (needle && !strstr(core_err_last(), needle)) {
        print_error("message '%s' lacks '%s'\n", core_err_last(), needle);
        fail();
    }
    assert_non_null(strstr(core_err_last(), s->b.sha256)); /* names the blob */
    assert_int_equal(decrypt_mem(f, s), MLV_EINTEGRITY);
}

static void expect_ok(fixture *f, const stored *s)
{
    int rc = repo_blob_decrypt(f->home, f->keys, s->b.sha256, s->n, s->b.wrapped_dek, -1);
    if (rc) print_error("decrypt: %s\n", core_err_last());
    assert_int_equal(rc, 0);
}

/* ------------------------------------------------------------------ fixture ---- */

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    make_temp_dir(f->home, sizeof f->home, "repo_blob");
    if (repo_keys_create(f->home) != 0 || repo_keys_open(&f->keys, f->home) != 0) {
        print_error("keys: %s\n", core_err_last());
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    repo_keys_free(f->keys);
    core_rm_rf(f->home);
    free(f);
    return 0;
}

/* -------------------------------------------------------------------- tests ---- */

static void t_ciphertext_size(void **state)
{
    (void)state;
    assert_int_equal(repo_aead_ciphertext_size(0), 64 + 16);
    assert_int_equal(repo_aead_ciphertext_size(1), 64 + 1 + 16);
    assert_int_equal(repo_aead_ciphertext_size(65535), 64 + 65535 + 16);
    assert_int_equal(repo_aead_ciphertext_size(65536), 64 + 65536 + 2 * 16);
    assert_int_equal(repo_aead_ciphertext_size(3 * 65536 + 5), 64 + 3 * 65536 + 5 + 4 * 16);
}

static void t_round_trips(void **state)
{
    fixture *f = *state;
    /* Chunk edges, and 4 MiB batch edges of the two-thread pipeline. */
    const size_t sizes[] = {
        0,           1,       65535,       65536,           65537,          3 * 65536,
        4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 5 * MiB + 12345, 8 * MiB + 65536};
    char *tmpdir = path_in(f->home, "tmp");
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
        size_t n = sizes[t];
        unsigned char *plain = random_bytes(n);
        char want[65];
        sha256_hex(want, plain, n);
        char *in = path_in(f->home, "input.bin");
        write_file(in, plain, n);

        repo_staged_blob b;
        assert_int_equal(repo_blob_stage_file(f->home, f->keys, in, &b), 0);
        assert_string_equal(b.sha256, want);
        assert_int_equal(b.size, n);
        assert_int_equal(file_size(b.tmp_path), (off_t)repo_aead_ciphertext_size(n));
        assert_false(repo_blob_exists(f->home, b.sha256));
        char tmp_path[sizeof b.tmp_path];
        strcpy(tmp_path, b.tmp_path);
        assert_int_equal(repo_blob_commit(f->home, &b), 0);
        assert_true(repo_blob_exists(f->home, b.sha256));
        assert_int_equal(access(tmp_path, F_OK), -1);
        assert_true(dir_is_empty(tmpdir));

        char *obj = repo_blob_path(f->home, b.sha256);
        char expect_suffix[80];
        snprintf(expect_suffix, sizeof expect_suffix, "/objects/%.2s/%s", want, want);
        assert_non_null(strstr(obj, expect_suffix));
        struct stat st;
        assert_int_equal(stat(obj, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        assert_int_equal(st.st_size, (off_t)repo_aead_ciphertext_size(n));

        /* Verify only, into memory, and into a file. */
        assert_int_equal(repo_blob_decrypt(f->home, f->keys, want, n, b.wrapped_dek, -1), 0);
        unsigned char *mem = malloc(n ? n : 1);
        assert_int_equal(repo_blob_decrypt_mem(f->home, f->keys, want, n, b.wrapped_dek, mem), 0);
        assert_memory_equal(mem, plain, n);
        free(mem);
        char *outp = path_in(f->home, "out.bin");
        int fd = open(outp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(repo_blob_decrypt(f->home, f->keys, want, n, b.wrapped_dek, fd), 0);
        close(fd);
        size_t got_n = 0;
        unsigned char *got = read_all(outp, &got_n);
        assert_int_equal(got_n, n);
        assert_memory_equal(got, plain, n);
        free(got);
        unlink(outp);
        free(outp);
        free(obj);
        unlink(in);
        free(in);
        free(plain);
    }
    free(tmpdir);
}

static void t_header_flips(void **state)
{
    fixture *f = *state;
    stored s = store_random(f, 1000);
    for (off_t i = 0; i < REPO_BLOB_HEADER; i++) {
        xor_byte(s.path, i, 0x01);
        expect_integrity(f, &s, NULL);
        xor_byte(s.path, i, 0x01);
    }
    expect_ok(f, &s);
    stored_free(&s);
}

static void t_chunk_and_tag_flips(void **state)
{
    fixture *f = *state;
    /* Three full chunks and a short last one, in the second batch too (threaded path). */
    const size_t sizes[] = {3 * 65536 + 100, 5 * MiB + 7};
    for (size_t t = 0; t < 2; t++) {
        stored s = store_random(f, sizes[t]);
        off_t total = file_size(s.path);
        size_t nchunks = s.n / REPO_CHUNK + 1;
        for (size_t c = 0; c < nchunks; c++) {
            /* In a long blob: the first two, every 37th, and the last two chunks. */
            if (nchunks > 8 && c > 1 && c + 2 < nchunks && c % 37) continue;
            off_t start = REPO_BLOB_HEADER + (off_t)c * CT_CHUNK;
            off_t end = c + 1 == nchunks ? total : start + CT_CHUNK;
            const off_t spots[] = {start, start + (end - start - REPO_TAG) / 2, end - REPO_TAG - 1,
                                   end - REPO_TAG, end - 1};
            for (size_t k = 0; k < 5; k++) {
                if (spots[k] < start || spots[k] >= end) continue;
                xor_byte(s.path, spots[k], 0x80);
                expect_integrity(f, &s, "authenticate");
                xor_byte(s.path, spots[k], 0x80);
            }
        }
        expect_ok(f, &s);
        stored_free(&s);
    }
}

static void t_truncation_and_extension(void **state)
{
    fixture *f = *state;
    stored s = store_random(f, 3 * 65536 + 1000);
    size_t n = 0;
    unsigned char *orig = read_all(s.path, &n);
    const off_t cuts[] = {0,
                          10,
                          REPO_BLOB_HEADER,
                          REPO_BLOB_HEADER + 1,
                          REPO_BLOB_HEADER + CT_CHUNK,
                          REPO_BLOB_HEADER + 3 * CT_CHUNK,
                          (off_t)n - REPO_TAG,
                          (off_t)n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        assert_int_equal(truncate(s.path, cuts[i]), 0);
        expect_integrity(f, &s, "truncated or extended");
        write_file(s.path, orig, n);
    }
    /* Appended bytes: one, and a whole extra chunk. */
    unsigned char *longer = malloc(n + CT_CHUNK);
    memcpy(longer, orig, n);
    memset(longer + n, 0, CT_CHUNK);
    write_file(s.path, longer, n + 1);
    expect_integrity(f, &s, "truncated or extended");
    write_file(s.path, longer, n + CT_CHUNK);
    expect_integrity(f, &s, "truncated or extended");

    /* With a size claim that matches the altered length, the stream itself must catch
     * it: 500 bytes cut from the last chunk, or 100 appended to it. */
    stored lie = s;
    write_file(s.path, orig, n - 500);
    lie.n = s.n - 500;
    assert_int_equal(repo_blob_decrypt(f->home, f->keys, s.b.sha256, lie.n, s.b.wrapped_dek, -1),
                     MLV_EINTEGRITY);
    write_file(s.path, longer, n + 100);
    lie.n = s.n + 100;
    assert_int_equal(repo_blob_decrypt(f->home, f->keys, s.b.sha256, lie.n, s.b.wrapped_dek, -1),
                     MLV_EINTEGRITY);

    write_file(s.path, orig, n);
    expect_ok(f, &s);
    free(longer);
    free(orig);
    stored_free(&s);
}

static void t_reordered_chunks(void **state)
{
    fixture *f = *state;
    stored s = store_random(f, 3 * 65536 + 10);
    size_t n = 0;
    unsigned char *orig = read_all(s.path, &n);
    unsigned char *swapped = malloc(n);
    memcpy(swapped, orig, n);
    /* Chunks 0 and 1 exchanged (both full, so sizes still add up). */
    memcpy(swapped + REPO_BLOB_HEADER, orig + REPO_BLOB_HEADER + CT_CHUNK, CT_CHUNK);
    memcpy(swapped + REPO_BLOB_HEADER + CT_CHUNK, orig + REPO_BLOB_HEADER, CT_CHUNK);
    write_file(s.path, swapped, n);
    expect_integrity(f, &s, "authenticate");
    write_file(s.path, orig, n);
    expect_ok(f, &s);
    free(swapped);
    free(orig);
    stored_free(&s);
}

static void t_swapped_blobs(void **state)
{
    fixture *f = *state;
    stored a = store_random(f, 100000), b = store_random(f, 100000);
    assert_int_equal(rename(b.path, a.path), 0);
    /* A's catalog entry (its DEK) against B's file: the header no longer authenticates. */
    expect_integrity(f, &a, NULL);
    /* The catalog row swapped too (B's size and DEK under A's digest): everything
     * authenticates, and only the digest check can notice. */
    int rc = repo_blob_decrypt(f->home, f->keys, a.b.sha256, b.n, b.b.wrapped_dek, -1);
    assert_int_equal(rc, MLV_EINTEGRITY);
    assert_non_null(strstr(core_err_last(), "digest mismatch"));
    assert_non_null(strstr(core_err_last(), a.b.sha256));
    /* B is gone now. */
    assert_int_equal(repo_blob_decrypt(f->home, f->keys, b.b.sha256, b.n, b.b.wrapped_dek, -1),
                     MLV_ENOTFOUND);
    assert_non_null(strstr(core_err_last(), "is missing"));
    stored_free(&a);
    stored_free(&b);
}

static void t_wrong_dek(void **state)
{
    fixture *f = *state;
    stored s = store_random(f, 70000);
    unsigned char other[REPO_KEY_LEN];
    assert_int_equal(core_random(other, sizeof other), 0);
    stored wrong = s;
    assert_int_equal(repo_keys_wrap_dek(f->keys, other, wrong.b.wrapped_dek), 0);
    expect_integrity(f, &wrong, "header does not authenticate");

    /* Directly through the stream API as well. */
    unsigned char dek[REPO_KEY_LEN], header[REPO_BLOB_HEADER];
    assert_int_equal(repo_keys_unwrap_dek(f->keys, s.b.wrapped_dek, dek), 0);
    int fd = open(s.path, O_RDONLY);
    assert_int_equal(read(fd, header, sizeof header), (ssize_t)sizeof header);
    close(fd);
    repo_aead_dec *d = NULL;
    assert_int_equal(repo_aead_dec_new(&d, other, header), MLV_EINTEGRITY);
    assert_null(d);
    assert_int_equal(repo_aead_dec_new(&d, dek, header), 0);
    repo_aead_dec_free(d);
    stored_free(&s);
}

static void t_tampered_wrapped_dek(void **state)
{
    fixture *f = *state;
    unsigned char dek[REPO_KEY_LEN], wrapped[REPO_WRAPPED_DEK_LEN], back[REPO_KEY_LEN];
    assert_int_equal(core_random(dek, sizeof dek), 0);
    assert_int_equal(repo_keys_wrap_dek(f->keys, dek, wrapped), 0);
    assert_int_equal(repo_keys_unwrap_dek(f->keys, wrapped, back), 0);
    assert_memory_equal(back, dek, sizeof dek);
    for (int i = 0; i < REPO_WRAPPED_DEK_LEN; i++) {
        wrapped[i] ^= 0x10;
        memset(back, 0x5A, sizeof back);
        assert_int_equal(repo_keys_unwrap_dek(f->keys, wrapped, back), MLV_EINTEGRITY);
        assert_true(all_zero(back, sizeof back)); /* cleansed */
        wrapped[i] ^= 0x10;
    }
    /* Another home's master key cannot unwrap it either. */
    char other_home[4096];
    make_temp_dir(other_home, sizeof other_home, "repo_blob_keys");
    repo_keys *k2 = NULL;
    assert_int_equal(repo_keys_create(other_home), 0);
    assert_int_equal(repo_keys_open(&k2, other_home), 0);
    assert_int_equal(repo_keys_unwrap_dek(k2, wrapped, back), MLV_EINTEGRITY);
    repo_keys_free(k2);
    core_rm_rf(other_home);
}

static void expect_open_refused(const char *home, int code, const char *needle)
{
    repo_keys *k = (repo_keys *)1;
    assert_int_equal(repo_keys_open(&k, home), code);
    assert_null(k);
    if (needle && !strstr(core_err_last(), needle)) {
        print_error("message '%s' lacks '%s'\n", core_err_last(), needle);
        fail();
    }
}

static void t_key_files(void **state)
{
    (void)state;
    char home[4096];
    make_temp_dir(home, sizeof home, "repo_blob_keys");
    char *dir = path_in(home, "keys");
    char *master = path_in(dir, "master.key"), *signing = path_in(dir, "signing.key"),
         *pub = path_in(dir, "signing.pub");
    expect_open_refused(home, MLV_ENOTFOUND, "master.key");
    assert_int_equal(repo_keys_create(home), 0);
    assert_int_equal(repo_keys_create(home), MLV_EEXISTS);

    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(stat(master, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, REPO_KEY_LEN);
    assert_int_equal(stat(signing, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    size_t n = 0;
    char *priv_pem = (char *)read_all(signing, &n);
    assert_non_null(strstr(priv_pem, "-----BEGIN PRIVATE KEY-----")); /* PKCS#8 */
    free(priv_pem);
    char *pub_pem = (char *)read_all(pub, &n);
    repo_keys *k = NULL;
    assert_int_equal(repo_keys_open(&k, home), 0);
    assert_string_equal(repo_keys_public_pem(k), pub_pem);
    assert_non_null(strstr(pub_pem, "-----BEGIN PUBLIC KEY-----"));
    EVP_PKEY *pk = repo_keys_signing_pkey(k);
    assert_non_null(pk);
    assert_true(EVP_PKEY_is_a(pk, "EC"));
    assert_int_equal(EVP_PKEY_get_bits(pk), 256);
    repo_keys_free(k);
    free(pub_pem);

    /* Group- or other-accessible key files are refused, naming the file and the fix. */
    const mode_t bad[] = {0644, 0640, 0604, 0620, 0602, 0660};
    const char *secret[] = {master, signing};
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            assert_int_equal(chmod(secret[s], bad[i]), 0);
            expect_open_refused(home, MLV_EINVAL, "chmod 600");
            assert_non_null(strstr(core_err_last(), s ? "signing.key" : "master.key"));
        }
        assert_int_equal(chmod(secret[s], 0600), 0);
    }
    assert_int_equal(repo_keys_open(&k, home), 0);
    repo_keys_free(k);

    /* master.key of the wrong size, or not a regular file. */
    unsigned char *mk = read_all(master, &n);
    unsigned char longer[REPO_KEY_LEN + 1] = {0};
    memcpy(longer, mk, REPO_KEY_LEN);
    write_file(master, longer, sizeof longer);
    expect_open_refused(home, MLV_EINVAL, "exactly 32 bytes");
    write_file(master, mk, REPO_KEY_LEN - 1);
    expect_open_refused(home, MLV_EINVAL, "exactly 32 bytes");
    assert_int_equal(unlink(master), 0);
    char *elsewhere = path_in(home, "elsewhere.key");
    write_file(elsewhere, mk, REPO_KEY_LEN);
    assert_int_equal(symlink(elsewhere, master), 0);
    expect_open_refused(home, MLV_EINVAL, "master.key");
    assert_int_equal(unlink(master), 0);
    assert_int_equal(mkdir(master, 0700), 0);
    expect_open_refused(home, MLV_EINVAL, "not a regular file");
    assert_int_equal(rmdir(master), 0);
    write_file(master, mk, REPO_KEY_LEN);
    assert_int_equal(repo_keys_open(&k, home), 0);
    repo_keys_free(k);

    /* A signing key that is not P-256 PEM. */
    write_file(signing, "not a key\n", 10);
    expect_open_refused(home, MLV_EINVAL, "signing.key");

    free(mk);
    free(elsewhere);
    free(master);
    free(signing);
    free(pub);
    free(dir);
    core_rm_rf(home);
}

/* Every 64-byte window of the plaintext that starts at a multiple of 64 goes into a hash
 * table; then each offset of the blob is looked up. Any copy of ≥ 127 plaintext bytes in
 * the blob contains such a window, so a miss everywhere means no plaintext leaked. */
static bool contains_plain_window(const unsigned char *hay, size_t hn, const unsigned char *plain,
                                  size_t pn)
{
    const size_t W = 64, slots = 1 << 16;
    size_t *table = malloc(slots * sizeof *table);
    for (size_t i = 0; i < slots; i++)
        table[i] = SIZE_MAX;
    uint64_t key;
    for (size_t off = 0; off + W <= pn; off += W) {
        memcpy(&key, plain + off, 8);
        size_t h = (size_t)(key * 0x9E3779B97F4A7C15ull >> 48);
        while (table[h] != SIZE_MAX)
            h = (h + 1) & (slots - 1);
        table[h] = off;
    }
    bool found = false;
    for (size_t at = 0; at + W <= hn && !found; at++) {
        memcpy(&key, hay + at, 8);
        for (size_t h = (size_t)(key * 0x9E3779B97F4A7C15ull >> 48); table[h] != SIZE_MAX;
             h = (h + 1) & (slots - 1))
            if (memcmp(plain + table[h], hay + at, W) == 0) found = true;
    }
    free(table);
    return found;
}

static void t_no_plaintext_in_blob(void **state)
{
    fixture *f = *state;
    stored s = store_random(f, 2 * MiB + 333);
    size_t n = 0;
    unsigned char *blob = read_all(s.path, &n);
    /* The detector itself works: it finds plaintext planted in a copy. */
    unsigned char *planted = malloc(n);
    memcpy(planted, blob, n);
    memcpy(planted + 1000, s.plain + 70001, 130);
    assert_true(contains_plain_window(planted, n, s.plain, s.n));
    assert_false(contains_plain_window(blob, n, s.plain, s.n));
    free(planted);
    free(blob);
    stored_free(&s);
}

static void t_reference_decryptor(void **state)
{
    fixture *f = *state;
    const char *venv = getenv("MLV_VENV"), *src = getenv("MLV_SOURCE_DIR");
    if (!venv || !*venv || !src || !*src) {
        print_message("MLV_VENV or MLV_SOURCE_DIR unset: skipping the Python reference "
                      "decryption check\n");
        skip();
    }
    const size_t sizes[] = {0, 65536, 3 * 65536 + 777, 4 * MiB + 65536 + 5};
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
        stored s = store_random(f, sizes[t]);
        unsigned char dek[REPO_KEY_LEN];
        char dek_hex[2 * REPO_KEY_LEN + 1];
        assert_int_equal(repo_keys_unwrap_dek(f->keys, s.b.wrapped_dek, dek), 0);
        core_hex(dek_hex, dek, sizeof dek);
        char cmd[3 * 4096];
        snprintf(cmd, sizeof cmd, "'%s/bin/python' '%s/tests/ref/blob_decrypt.py' '%s' %s", venv,
                 src, s.path, dek_hex);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char line[128] = "";
        if (!fgets(line, sizeof line, p)) line[0] = 0;
        int status = pclose(p);
        line[strcspn(line, "\n")] = 0;
        assert_int_equal(status, 0);
        assert_string_equal(line, s.b.sha256);

        /* And the reference refuses a flipped byte in the last chunk. */
        xor_byte(s.path, file_size(s.path) - 1, 1);
        snprintf(cmd + strlen(cmd), sizeof cmd - strlen(cmd), " 2>/dev/null");
        p = popen(cmd, "r");
        assert_non_null(p);
        while (fgets(line, sizeof line, p)) {
        }
        assert_int_not_equal(pclose(p), 0);
        stored_free(&s);
    }
}

static void t_stage_refusals(void **state)
{
    fixture *f = *state;
    repo_staged_blob b;
    char *missing = path_in(f->home, "no-such-file");
    assert_int_equal(repo_blob_stage_file(f->home, f->keys, missing, &b), MLV_ENOTFOUND);
    assert_non_null(strstr(core_err_last(), "no-such-file"));
    assert_int_equal(repo_blob_stage_file(f->home, f->keys, f->home, &b), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "not a regular file"));
    char *fifo = path_in(f->home, "a-fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(repo_blob_stage_file(f->home, f->keys, fifo, &b), MLV_EINVAL);
    unlink(fifo);
    if (geteuid() != 0) { /* root reads anything */
        char *locked = path_in(f->home, "locked");
        write_file(locked, "x", 1);
        chmod(locked, 0);
        assert_int_equal(repo_blob_stage_file(f->home, f->keys, locked, &b), MLV_EIO);
        unlink(locked);
        free(locked);
    }
    char *tmpdir = path_in(f->home, "tmp");
    assert_true(dir_is_empty(tmpdir));
    free(tmpdir);
    free(fifo);
    free(missing);
}

static void t_lookups_and_bad_names(void **state)
{
    fixture *f = *state;
    const char *absent = "00000000000000000000000000000000000000000000000000000000000000ff";
    unsigned char wrapped[REPO_WRAPPED_DEK_LEN] = {0};
    assert_false(repo_blob_exists(f->home, absent));
    assert_int_equal(repo_blob_decrypt(f->home, f->keys, absent, 10, wrapped, -1), MLV_ENOTFOUND);
    assert_non_null(strstr(core_err_last(), "blob 0000"));
    assert_non_null(strstr(core_err_last(), "is missing"));
    assert_int_equal(repo_blob_decrypt(f->home, f->keys, "../../etc/passwd", 10, wrapped, -1),
                     MLV_EINVAL);
    assert_null(repo_blob_path(f->home, "ABCDEF"));
    assert_null(repo_blob_path(
        f->home, "0000000000000000000000000000000000000000000000000000000000000000/"));
}

static void t_discard_sweep_and_stray(void **state)
{
    fixture *f = *state;
    char *in = path_in(f->home, "input.bin");
    char *tmpdir = path_in(f->home, "tmp");
    unsigned char *plain = random_bytes(5000);
    write_file(in, plain, 5000);

    repo_staged_blob b;
    assert_int_equal(repo_blob_stage_file(f->home, f->keys, in, &b), 0);
    assert_int_equal(access(b.tmp_path, F_OK), 0);
    repo_blob_discard(&b);
    assert_true(dir_is_empty(tmpdir));
    assert_false(repo_blob_exists(f->home, b.sha256));

    /* An interrupted push leaves temp files (and maybe directories) behind. */
    assert_int_equal(repo_blob_stage_file(f->home, f->keys, in, &b), 0);
    char *junk = path_in(tmpdir, "junkdir");
    assert_int_equal(mkdir(junk, 0700), 0);
    char *junkfile = path_in(junk, "x");
    write_file(junkfile, "x", 1);
    assert_int_equal(repo_tmp_sweep(f->home), 0);
    assert_true(dir_is_empty(tmpdir));
    assert_int_equal(access(tmpdir, F_OK), 0);

    /* A stray (say, half-copied) object of the same name is replaced by commit. */
    assert_int_equal(repo_blob_stage_file(f->home, f->keys, in, &b), 0);
    char *obj = repo_blob_path(f->home, b.sha256);
    char *pre = strdup(obj);
    *strrchr(pre, '/') = 0;
    assert_int_equal(core_mkdir_p(pre, 0700), 0);
    write_file(obj, "garbage", 7);
    assert_int_equal(repo_blob_commit(f->home, &b), 0);
    assert_int_equal(repo_blob_decrypt(f->home, f->keys, b.sha256, 5000, b.wrapped_dek, -1), 0);
    struct stat st;
    assert_int_equal(stat(pre, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    /* A home without tmp/ is fine to sweep. */
    char empty_home[4096];
    make_temp_dir(empty_home, sizeof empty_home, "repo_blob_empty");
    assert_int_equal(repo_tmp_sweep(empty_home), 0);
    core_rm_rf(empty_home);

    free(pre);
    free(obj);
    free(junkfile);
    free(junk);
    free(plain);
    free(tmpdir);
    unlink(in);
    free(in);
}

static void t_output_write_failure(void **state)
{
    fixture *f = *state;
    stored s = store_random(f, 6 * MiB); /* threaded path: the hasher thread writes */
    int fd = open(s.path, O_RDONLY);     /* not writable */
    assert_true(fd >= 0);
    assert_int_equal(repo_blob_decrypt(f->home, f->keys, s.b.sha256, s.n, s.b.wrapped_dek, fd),
                     MLV_EIO);
    assert_non_null(strstr(core_err_last(), s.b.sha256));
    close(fd);
    expect_ok(f, &s);
    stored_free(&s);
}

static void t_stream_rules(void **state)
{
    (void)state;
    unsigned char dek[REPO_KEY_LEN], header[REPO_BLOB_HEADER];
    assert_int_equal(core_random(dek, sizeof dek), 0);
    unsigned char *plain = random_bytes(2 * REPO_CHUNK);
    unsigned char *ct = malloc(3 * CT_CHUNK), *out = malloc(2 * REPO_CHUNK);
    repo_aead_enc *e = NULL;
    assert_int_equal(repo_aead_enc_new(&e, dek, header), 0);
    assert_memory_equal(header, "MLVBLOB1", 8);
    /* Only the last chunk may be short, and it must be. */
    assert_int_equal(repo_aead_enc_chunk(e, plain, 100, false, ct), MLV_EINVAL);
    assert_int_equal(repo_aead_enc_chunk(e, plain, REPO_CHUNK, true, ct), MLV_EINVAL);
    assert_int_equal(repo_aead_enc_chunk(e, plain, REPO_CHUNK + 1, false, ct), MLV_EINVAL);
    assert_int_equal(repo_aead_enc_chunk(e, plain, REPO_CHUNK, false, ct), 0);
    assert_int_equal(repo_aead_enc_chunk(e, plain + REPO_CHUNK, REPO_CHUNK, false, ct + CT_CHUNK),
                     0);
    assert_int_equal(repo_aead_enc_chunk(e, plain, 0, true, ct + 2 * CT_CHUNK), 0);
    assert_int_equal(repo_aead_enc_chunk(e, plain, 0, true, ct), MLV_EINVAL); /* after last */
    repo_aead_enc_free(e);

    /* In order: fine. */
    repo_aead_dec *d = NULL;
    assert_int_equal(repo_aead_dec_new(&d, dek, header), 0);
    assert_int_equal(repo_aead_dec_chunk(d, ct, CT_CHUNK, false, out), 0);
    assert_int_equal(repo_aead_dec_chunk(d, ct + CT_CHUNK, CT_CHUNK, false, out + REPO_CHUNK), 0);
    assert_int_equal(repo_aead_dec_chunk(d, ct + 2 * CT_CHUNK, REPO_TAG, true, out), 0);
    assert_memory_equal(out, plain, 2 * REPO_CHUNK);
    repo_aead_dec_free(d);

    /* Out of order, or a missing last chunk claimed by a full one: refused, and the
     * refused chunk's output is wiped. */
    assert_int_equal(repo_aead_dec_new(&d, dek, header), 0);
    memset(out, 0x77, REPO_CHUNK);
    assert_int_equal(repo_aead_dec_chunk(d, ct + CT_CHUNK, CT_CHUNK, false, out), MLV_EINTEGRITY);
    assert_true(all_zero(out, REPO_CHUNK));
    assert_int_equal(repo_aead_dec_chunk(d, ct, CT_CHUNK, false, out), MLV_EINTEGRITY); /* dead */
    repo_aead_dec_free(d);
    assert_int_equal(repo_aead_dec_new(&d, dek, header), 0);
    assert_int_equal(repo_aead_dec_chunk(d, ct, CT_CHUNK, false, out), 0);
    assert_int_equal(repo_aead_dec_chunk(d, ct + CT_CHUNK, CT_CHUNK, true, out), MLV_EINVAL);
    /* A last chunk cut shorter than its tag is refused. */
    assert_int_equal(repo_aead_dec_chunk(d, ct + CT_CHUNK, CT_CHUNK, false, out), 0);
    assert_int_equal(repo_aead_dec_chunk(d, ct + 2 * CT_CHUNK, 5, true, out), MLV_EINTEGRITY);
    repo_aead_dec_free(d);

    free(plain);
    free(ct);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_ciphertext_size),
        cmocka_unit_test(t_stream_rules),
        cmocka_unit_test(t_key_files),
        cmocka_unit_test(t_round_trips),
        cmocka_unit_test(t_header_flips),
        cmocka_unit_test(t_chunk_and_tag_flips),
        cmocka_unit_test(t_truncation_and_extension),
        cmocka_unit_test(t_reordered_chunks),
        cmocka_unit_test(t_swapped_blobs),
        cmocka_unit_test(t_wrong_dek),
        cmocka_unit_test(t_tampered_wrapped_dek),
        cmocka_unit_test(t_no_plaintext_in_blob),
        cmocka_unit_test(t_reference_decryptor),
        cmocka_unit_test(t_stage_refusals),
        cmocka_unit_test(t_lookups_and_bad_names),
        cmocka_unit_test(t_discard_sweep_and_stray),
        cmocka_unit_test(t_output_write_failure),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
