/* repo: the artifact store. Encrypted content-addressed blobs (chunked AES-256-GCM
 * streams, one data key per blob), the keys that wrap those data keys and sign
 * manifests, canonical manifests, OpenSSF model-signing bundles, and the git ledger.
 *
 * repo knows nothing of models' insides (engine/) nor of users and the catalog
 * (registry/): the registry decides what to store and records the wrapped data keys;
 * repo stores, encrypts, signs and verifies. All functions return 0 or a negative
 * MLV_E* code with the message in core_err_last(). */
#ifndef MLV_REPO_H
#define MLV_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* ======================================================================= keys ====
 * repo/keys.c. The data home's key files:
 *   keys/master.key   32 random bytes (mode 0600): wraps every blob's data key
 *   keys/signing.key  ECDSA P-256 private key, PEM (mode 0600)
 *   keys/signing.pub  its public key, PEM (SubjectPublicKeyInfo)
 *   keys/import.key   X25519 private key, PEM PKCS#8 (mode 0600): unwraps the data keys
 *                     of bundles other sites export for this one
 *   keys/import.pub   its public key, PEM: what `keys export-import-key` hands out
 * Opening refuses key files that are readable or writable by group or others, and
 * creates the import pair in a home made before it existed. */
#define REPO_KEY_LEN 32
#define REPO_WRAPPED_DEK_LEN 40 /* AES-256 key wrap (RFC 3394) of a 32-byte DEK */

typedef struct repo_keys repo_keys;
/* Creates keys/ under `home` with a fresh master key and signing key pair. Refuses
 * (MLV_EEXISTS) when any key file is already there. */
int repo_keys_create(const char *home);
/* Loads the keys of `home`; *out owned by the caller (repo_keys_free). */
int repo_keys_open(repo_keys **out, const char *home);
void repo_keys_free(repo_keys *k);
/* Wraps / unwraps a data key with the master key (AES-256 key wrap, RFC 3394;
 * unwrap fails with MLV_EINTEGRITY when the wrapped bytes were altered). */
int repo_keys_wrap_dek(const repo_keys *k, const unsigned char dek[REPO_KEY_LEN],
                       unsigned char out[REPO_WRAPPED_DEK_LEN]);
int repo_keys_unwrap_dek(const repo_keys *k, const unsigned char wrapped[REPO_WRAPPED_DEK_LEN],
                         unsigned char dek[REPO_KEY_LEN]);
/* The signing public key as PEM (borrowed, valid while k lives). */
const char *repo_keys_public_pem(const repo_keys *k);

/* Data keys for another site (bundles), ECIES-style: one ephemeral X25519 key per bundle;
 *   shared = X25519(eph, recipient)
 *   KEK    = HKDF-SHA256(shared, salt = eph_pub || recipient_pub,
 *                        info = "mlvault bundle dek wrap v1")
 * and each DEK is wrapped under KEK with AES-256 key wrap (RFC 3394). */
#define REPO_X25519_LEN 32
/* The import public key as PEM, and its hint (hex SHA-256 of that PEM); borrowed, valid
 * while k lives. */
const char *repo_keys_import_pem(const repo_keys *k);
const char *repo_keys_import_hint(const repo_keys *k);
/* Parses an import public key (PEM X25519) into its raw bytes and hint. MLV_EINVAL for
 * anything else (an ECDSA key, garbage). */
int repo_import_key_parse(const char *pem, unsigned char raw[REPO_X25519_LEN], char hint[65]);
/* Wraps n DEKs for `recipient` under a fresh ephemeral key, whose public half goes to
 * eph_pub (the private half is discarded). */
int repo_keys_wrap_for_recipient(const unsigned char recipient[REPO_X25519_LEN],
                                 const unsigned char (*deks)[REPO_KEY_LEN], size_t n,
                                 unsigned char eph_pub[REPO_X25519_LEN],
                                 unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN]);
/* The same from DEKs wrapped by k's master key, so plaintext DEKs stay inside repo. */
int repo_keys_rewrap_for_recipient(const repo_keys *k,
                                   const unsigned char recipient[REPO_X25519_LEN],
                                   const unsigned char (*master_wrapped)[REPO_WRAPPED_DEK_LEN],
                                   size_t n, unsigned char eph_pub[REPO_X25519_LEN],
                                   unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN]);
/* The receiving side: unwraps with k's import key. MLV_EINTEGRITY when a wrapped key
 * was altered or wrapped for another site (deks is then cleansed). */
int repo_keys_unwrap_for_import(const repo_keys *k, const unsigned char eph_pub[REPO_X25519_LEN],
                                const unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN], size_t n,
                                unsigned char (*deks)[REPO_KEY_LEN]);

/* Serving nodes (DESIGN.md, Serving nodes): a node holds its own X25519 key pair in
 * files of its home (the private key PEM PKCS#8, mode 0600; the public key PEM). The
 * registry wraps the DEKs of the versions a node may pull for that key, as for bundles
 * but with its own HKDF info, so a node's wrapped keys never unwrap as a bundle's:
 *   KEK = HKDF-SHA256(X25519(eph, node), salt = eph_pub || node_pub,
 *                     info = "mlvault node dek wrap v1") */
#define REPO_WRAP_INFO_BUNDLE "mlvault bundle dek wrap v1"
#define REPO_WRAP_INFO_NODE "mlvault node dek wrap v1"
/* Creates a fresh pair: priv_path (0600, refused with MLV_EEXISTS when it exists) and
 * pub_path, each written atomically. */
int repo_node_key_create(const char *priv_path, const char *pub_path);
typedef struct repo_node_key repo_node_key;
/* Loads a private key file (refusing group/other permissions or another key type). */
int repo_node_key_load(repo_node_key **out, const char *priv_path);
void repo_node_key_free(repo_node_key *k);
/* Its public key PEM and hint (hex SHA-256 of that PEM); borrowed. */
const char *repo_node_key_public_pem(const repo_node_key *k);
const char *repo_node_key_hint(const repo_node_key *k);
/* Registry side: rewraps master-wrapped DEKs for a node's public key (raw, as
 * repo_import_key_parse gives it) under REPO_WRAP_INFO_NODE. */
int repo_keys_rewrap_for_node(const repo_keys *k, const unsigned char node_pub[REPO_X25519_LEN],
                              const unsigned char (*master_wrapped)[REPO_WRAPPED_DEK_LEN],
                              size_t n, unsigned char eph_pub[REPO_X25519_LEN],
                              unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN]);
/* Node side: unwraps them. MLV_EINTEGRITY when a key was altered or wrapped for another
 * key (deks cleansed then). */
int repo_node_key_unwrap(const repo_node_key *k, const unsigned char eph_pub[REPO_X25519_LEN],
                         const unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN], size_t n,
                         unsigned char (*deks)[REPO_KEY_LEN]);
/* Decrypts a whole blob held in memory (ciphertext: header and chunks, exactly
 * repo_aead_ciphertext_size(size) bytes) into out (size bytes) and checks the
 * plaintext's SHA-256 against sha256 (hex). MLV_EINTEGRITY naming `label` for a wrong
 * length, a failed tag or a digest mismatch. */
int repo_blob_decrypt_buf(const unsigned char dek[REPO_KEY_LEN], const void *cipher,
                          uint64_t cipher_len, const char *sha256, uint64_t size, void *out,
                          const char *label);

/* ================================================================ AEAD stream ====
 * repo/aead.c. The blob format (DESIGN.md, Encryption at rest), in the style of age's
 * STREAM construction:
 *
 *   header (64 bytes):
 *     magic   "MLVBLOB1"        8 bytes
 *     salt    random            32 bytes
 *     mac     HMAC-SHA256(hk, magic || salt), first 24 bytes
 *   then chunks: each is up to 64 KiB of plaintext encrypted with AES-256-GCM and its
 *   16-byte tag appended. The last chunk is shorter than 64 KiB or empty (so an empty
 *   plaintext is one empty chunk), and only it is flagged last.
 *
 *   keys:   hk = HKDF-SHA256(ikm=DEK, salt=salt, info="mlvault blob header")
 *           pk = HKDF-SHA256(ikm=DEK, salt=salt, info="mlvault blob payload")
 *   nonce:  11-byte big-endian chunk counter || 1 byte (0x01 on the last chunk, else 0)
 *
 * So flipping any byte, truncating, reordering or splicing chunks, or swapping in
 * another blob (different salt/DEK) all fail authentication. */
#define REPO_CHUNK 65536
#define REPO_BLOB_HEADER 64
#define REPO_TAG 16

/* Ciphertext size for a plaintext of n bytes. */
uint64_t repo_aead_ciphertext_size(uint64_t n);

typedef struct repo_aead_enc repo_aead_enc;
/* Starts an encryption stream; writes the header into header[REPO_BLOB_HEADER]. */
int repo_aead_enc_new(repo_aead_enc **out, const unsigned char dek[REPO_KEY_LEN],
                      unsigned char header[REPO_BLOB_HEADER]);
/* Encrypts one chunk: `n` ≤ REPO_CHUNK plaintext bytes; `last` must be set on (and
 * only on) the final chunk, which must have n < REPO_CHUNK. Writes n + REPO_TAG bytes
 * into out. */
int repo_aead_enc_chunk(repo_aead_enc *e, const unsigned char *in, size_t n, bool last,
                        unsigned char *out);
void repo_aead_enc_free(repo_aead_enc *e);

typedef struct repo_aead_dec repo_aead_dec;
/* Checks the header's MAC and starts decryption (MLV_EINTEGRITY on a bad header). */
int repo_aead_dec_new(repo_aead_dec **out, const unsigned char dek[REPO_KEY_LEN],
                      const unsigned char header[REPO_BLOB_HEADER]);
/* Decrypts one chunk of `n` ciphertext bytes (plaintext + tag); writes n - REPO_TAG
 * bytes into out. MLV_EINTEGRITY when the tag does not verify. */
int repo_aead_dec_chunk(repo_aead_dec *d, const unsigned char *in, size_t n, bool last,
                        unsigned char *out);
/* Positions the stream at chunk number `chunk` for random access: each chunk's nonce
 * holds its number, so a chunk decrypted there still authenticates its place. */
int repo_aead_dec_seek(repo_aead_dec *d, uint64_t chunk);
void repo_aead_dec_free(repo_aead_dec *d);

/* ====================================================================== blobs ====
 * repo/blob.c. Blobs live at HOME/objects/ab/<64 hex>, named by the SHA-256 of the
 * plaintext. Storing is two-phase so the caller (registry) can make it crash-safe:
 *   stage:   stream a file through SHA-256 and encryption into HOME/tmp/ (fsync'd),
 *            with a fresh random DEK, returned wrapped by the master key;
 *   commit:  rename into objects/ (replacing a stray blob of the same name) and fsync
 *            the directory — or discard when the catalog already holds that digest.
 * The wrapped DEK is kept by the caller (the catalog), not in the blob. */
typedef struct repo_staged_blob {
    char sha256[65];
    uint64_t size; /* plaintext bytes */
    unsigned char wrapped_dek[REPO_WRAPPED_DEK_LEN];
    char tmp_path[4096];
} repo_staged_blob;

/* Creates the staging file of a blob, HOME/tmp/blob-XXXXXX (named so that the start-up
 * sweep finds it), records its path in b->tmp_path and returns its fd in *fd. On failure
 * b->tmp_path is empty. */
int repo_blob_tmp_create(const char *home, repo_staged_blob *b, int *fd);
/* Encrypts `path` (a regular file) into HOME/tmp. */
int repo_blob_stage_file(const char *home, const repo_keys *k, const char *path,
                         repo_staged_blob *out);
int repo_blob_commit(const char *home, repo_staged_blob *b);
void repo_blob_discard(repo_staged_blob *b);
/* HOME/objects/ab/<hex>; caller frees. */
char *repo_blob_path(const char *home, const char *sha256);
bool repo_blob_exists(const char *home, const char *sha256);

/* Decrypts blob `sha256` and checks its size and digest. With out_fd ≥ 0 the plaintext
 * is written there as it is authenticated (the caller writes to a temp file and only
 * renames it into place on success); with out_fd = -1 it only verifies. Errors name
 * the blob and the problem (MLV_EINTEGRITY for any tampering, MLV_ENOTFOUND when the
 * blob is missing). */
int repo_blob_decrypt(const char *home, const repo_keys *k, const char *sha256, uint64_t size,
                      const unsigned char wrapped_dek[REPO_WRAPPED_DEK_LEN], int out_fd);
/* The same into a caller-provided memory buffer of exactly `size` bytes (no plaintext
 * on disk; used by serving nodes and the engine). */
int repo_blob_decrypt_mem(const char *home, const repo_keys *k, const char *sha256, uint64_t size,
                          const unsigned char wrapped_dek[REPO_WRAPPED_DEK_LEN], void *out);

/* Decrypts the plaintext bytes [offset, offset + len) of blob `sha256` (a ranged
 * download), from the chunk holding `offset` on, handing each authenticated piece to
 * sink (a non-zero return stops with that code). Each chunk's tag authenticates its
 * bytes and its position, and the ciphertext's length is checked; the SHA-256 of the
 * whole plaintext is not (the receiver checks it against the manifest). */
typedef int (*repo_blob_sink)(void *ctx, const void *data, size_t n);
int repo_blob_decrypt_range(const char *home, const repo_keys *k, const char *sha256, uint64_t size,
                            const unsigned char wrapped_dek[REPO_WRAPPED_DEK_LEN], uint64_t offset,
                            uint64_t len, repo_blob_sink sink, void *ctx);

/* Removes the files in HOME/tmp left by an interrupted operation (called at open). */
int repo_tmp_sweep(const char *home);

/* ================================================================== manifests ====
 * repo/manifest.c. A version's manifest (DESIGN.md, Manifest) as canonical JSON:
 * sorted keys, no spaces, UTF-8 (jansson JSON_SORT_KEYS|JSON_COMPACT). Its SHA-256 is
 * the version's identity. Schema id: "mlvault.manifest/v1". */
typedef struct repo_file {
    char *path; /* relative, core_relpath_safe */
    uint64_t size;
    char sha256[65];
} repo_file;

typedef struct repo_parent {
    char *name;
    int version;
    char digest[65]; /* the parent's manifest digest */
} repo_parent;

typedef struct repo_manifest {
    char *kind; /* "model" | "dataset" */
    char *name;
    int version;
    char *format;       /* "gguf" | "safetensors" | "dataset" */
    char *architecture; /* "llama", "qwen2", ... or "" when unknown (datasets) */
    uint64_t parameters;
    char **tensor_types; /* sorted, unique: "Q4_1", "F32", ... */
    size_t n_tensor_types;
    repo_file *files; /* sorted by path */
    size_t n_files;
    repo_parent *parents;
    size_t n_parents;
    char *job_kind;         /* lineage: "push", "quantize", ... */
    char *job_params;       /* lineage: canonical JSON object text, "{}" when none */
    char **dataset_digests; /* lineage: calibration/training datasets */
    size_t n_dataset_digests;
    char *creator;
    char *created_at;
    char *note; /* may be "" */
    char *mlvault_version;
} repo_manifest;

/* Canonical JSON; *out owned by the caller (free()). */
int repo_manifest_to_json(const repo_manifest *m, char **out, size_t *len);
/* Parses and validates (schema id, names, paths, digests, sizes). *out owned by
 * the caller (repo_manifest_free). Rejects input that is not canonical. */
int repo_manifest_parse(repo_manifest **out, const char *json, size_t len);
void repo_manifest_free(repo_manifest *m);
/* SHA-256 of a byte string as 64 lowercase hex characters. */
void repo_sha256_hex(char out[65], const void *data, size_t len);

/* ================================================================= signatures ====
 * repo/sign.c. OpenSSF model-signing v1.0, key-based ECDSA P-256 path: an in-toto
 * Statement v1 whose predicate (type https://model_signing/signature/v1.0) lists the
 * resources (name = relative path, algorithm sha256, digest), sorted by name, with
 * serialization {"method":"files","hash_type":"sha256",...}; the subject is the model
 * name and SHA-256 over the concatenated raw resource digests. The statement is the
 * payload of a DSSE envelope (payloadType application/vnd.in-toto+json), signed with
 * ECDSA-SHA256 over DSSE's PAE, inside a Sigstore bundle v0.3 JSON whose
 * verificationMaterial.publicKey.hint is hex SHA-256 of the signer's public key PEM.
 * The standard `model_signing verify key` tool accepts these bundles. */
typedef struct repo_sig_resource {
    const char *name; /* relative path */
    char sha256[65];
} repo_sig_resource;

/* Signs; *bundle_json owned by the caller (free()). */
int repo_sign_resources(const repo_keys *k, const char *model_name, const repo_sig_resource *res,
                        size_t n, char **bundle_json);
/* Verifies a bundle with a public key (PEM) and checks that its resources are exactly
 * `expect` (same names and digests, any order). MLV_EINTEGRITY with a message naming
 * what differs. */
int repo_sig_verify(const char *bundle_json, size_t len, const char *public_pem,
                    const repo_sig_resource *expect, size_t n_expect);

/* Plain signatures over bytes (release records, docs/api.md): ECDSA with the registry's
 * P-256 key over SHA-256 of `data`; *sig_b64 is standard base64 (padded) of the DER
 * signature, owned by the caller (free()). Checkable with `openssl dgst -sha256 -verify
 * signing.pub -signature SIG.der DATA`. */
int repo_sign_bytes(const repo_keys *k, const void *data, size_t len, char **sig_b64);
/* Verifies such a signature with a public key (PEM; P-256/384/521 with SHA-256/384/512):
 * 0, MLV_EINTEGRITY when it does not verify or is not base64, MLV_EINVAL for a bad key. */
int repo_verify_bytes(const char *public_pem, const void *data, size_t len, const char *sig_b64);

/* Parses a PEM public key (ECDSA P-256/384/521) and re-encodes it as SubjectPublicKeyInfo
 * PEM, the form whose SHA-256 is the key's model-signing hint. *canon_pem owned by the
 * caller (free()). MLV_EINVAL for anything else. */
int repo_pubkey_canonical(const char *pem, char **canon_pem, char hint[65]);

/* ===================================================================== ledger ====
 * repo/ledger.c (libgit2). HOME/ledger.git is a bare repository; each state change is
 * one commit on refs/heads/main that writes or removes files in the tree, authored by
 * the acting user. Commits are durable (libgit2's fsync option is on). */
typedef struct repo_ledger_change {
    const char *path;    /* "models/NAME/3/manifest.json": validated, relative */
    const char *content; /* NULL removes the path */
    size_t len;
} repo_ledger_change;

int repo_ledger_init(const char *home);
/* Commits the changes on top of main (creating main on the first commit). Author and
 * committer are `author` <author@mlvault>. oid_hex (41 bytes) may be NULL. When the
 * changes leave the tree as it is, no commit is made and oid_hex is main's head. */
int repo_ledger_commit(const char *home, const char *author, const char *message,
                       const repo_ledger_change *changes, size_t n, char *oid_hex);
/* Reads a file from main's head; *out owned by the caller (free()); MLV_ENOTFOUND when
 * absent. */
int repo_ledger_read(const char *home, const char *path, char **out, size_t *len);
/* Calls fn for each file path under `prefix` in main's head (e.g. "models/"). */
int repo_ledger_list(const char *home, const char *prefix, int (*fn)(const char *path, void *ctx),
                     void *ctx);

/* ==================================================================== bundles ====
 * repo/bundle.c (libarchive for tar, libzstd for the compression). A bundle carries
 * versions from one site to another (DESIGN.md, Bundles): one tar, compressed as a
 * single zstd frame with its content checksum, holding in this order
 *
 *   bundle.json   canonical JSON (sorted keys, no spaces):
 *                 {"schema":"mlvault.bundle/v1", "created_at":RFC3339,
 *                  "sender":{"public_key":PEM, "hint":HEX}, "recipient":HINT,
 *                  "ephemeral_key":HEX(raw X25519 public key),
 *                  "versions":[{"kind","name","version","digest","signer",
 *                               "manifest_size","signature_size","signature_sha256"}],
 *                  "blobs":[{"sha256","size","stored","wrapped_dek"}],
 *                  "total_bytes":N}
 *                 `size` is plaintext bytes, `stored` the ciphertext bytes
 *                 (repo_aead_ciphertext_size(size)), wrapped_dek the blob's data key
 *                 wrapped for the recipient (keys, "Data keys for another site"), and
 *                 total_bytes the sum of the sizes of every entry after bundle.sig.
 *   bundle.sig    base64 of the DER ECDSA-P256-SHA256 signature of the sender's signing
 *                 key over the exact bytes of bundle.json
 *   ledger/models/NAME/V/manifest.json and .../signature (datasets under
 *                 ledger/datasets/), for each version
 *   blobs/SHA256  each encrypted blob as stored, byte for byte
 *
 * and after the zstd frame, a zstd skippable frame (magic 0x184D2A5B, 40 bytes) holding
 * "MLVB1SUM" and the SHA-256 of every byte before it: standard tools skip it, and with
 * it every flipped byte of the file is caught, not only those that change what the
 * frame expands to.
 *
 * The reader trusts nothing before bundle.sig verifies with a key the caller trusts;
 * every entry must be a regular file at a declared path with its declared size; the
 * bytes it expands to are bounded by what bundle.json declares; any flipped byte fails
 * the trailer's digest, and most fail earlier (zstd, tar, a digest, an AEAD tag). */
#define REPO_BUNDLE_SCHEMA "mlvault.bundle/v1"
#define REPO_BUNDLE_JSON_MAX ((size_t)16 << 20)
#define REPO_BUNDLE_MAX_VERSIONS 4096
#define REPO_BUNDLE_MAX_BLOBS 65536

typedef struct repo_bundle_version {
    char kind[16]; /* "model" | "dataset" */
    char name[65];
    int version;
    char digest[65]; /* SHA-256 of the manifest */
    char signer[65]; /* hint of the key that signed the version */
    char *manifest;  /* canonical JSON (writer: borrowed from the caller; reader: owned) */
    size_t manifest_len;
    char *signature; /* the model-signing bundle (same ownership as manifest) */
    size_t signature_len;
    char signature_sha256[65];
} repo_bundle_version;

typedef struct repo_bundle_blob {
    char sha256[65];                                 /* of the plaintext */
    uint64_t size;                                   /* plaintext bytes */
    uint64_t stored;                                 /* ciphertext bytes */
    unsigned char wrapped_dek[REPO_WRAPPED_DEK_LEN]; /* for the recipient */
    /* Reader: the verified ciphertext, staged in HOME/tmp with its DEK re-wrapped by
     * this home's master key, ready for repo_blob_commit (or discard). */
    repo_staged_blob staged;
} repo_bundle_blob;

typedef struct repo_bundle {
    char created_at[21];
    char *sender_pem; /* the sender's signing public key (canonical PEM) */
    char sender_hint[65];
    char recipient_hint[65]; /* hint of the recipient's import key */
    unsigned char ephemeral_key[REPO_X25519_LEN];
    repo_bundle_version *versions;
    size_t n_versions;
    repo_bundle_blob *blobs;
    size_t n_blobs;
    uint64_t total_bytes;
    char file_sha256[65]; /* SHA-256 of the whole bundle file */
    uint64_t file_size;
} repo_bundle;

/* Writer. The caller fills recipient_hint, ephemeral_key, versions (manifest and
 * signature texts with their lengths) and blobs (sha256, size, wrapped_dek);
 * repo_bundle_write sets the rest (created_at, sender — sender_pem borrowed from k —,
 * signature_sha256, stored, total_bytes, file_sha256, file_size), signs bundle.json with
 * k's signing key, writes the bundle to fd, copying each blob from HOME/objects (its
 * size checked against `stored`), and fsyncs fd. The caller owns fd and b. */
int repo_bundle_write(int fd, const char *home, const repo_keys *k, repo_bundle *b);

/* Reader. Asks trusted_pem for the PEM of the sender's key by hint (MLV_ENOTFOUND when
 * not trusted; *pem freed by repo); refuses bundles for another import key than k's;
 * stages each blob into HOME/tmp (fsync'd), decrypts it with its DEK to check size and
 * digest, and re-wraps the DEK with k's master key. Checks each manifest's SHA-256 and
 * each signature's against bundle.json; what they say is the caller's to check.
 * *out owned by the caller (repo_bundle_free, which discards staged blobs not
 * committed). On any failure nothing is left in HOME/tmp and the message names the
 * entry. */
typedef int (*repo_trusted_pem_fn)(void *ctx, const char *hint, char **pem);
int repo_bundle_read(repo_bundle **out, const char *path, const char *home, const repo_keys *k,
                     repo_trusted_pem_fn trusted_pem, void *ctx);
/* Frees a bundle from repo_bundle_read (and discards staged blobs); NULL is a no-op. */
void repo_bundle_free(repo_bundle *b);
/* The path of a version's ledger entry inside a bundle, e.g.
 * "ledger/models/NAME/3/manifest.json" (`what`: "manifest.json" or "signature"). */
void repo_bundle_ledger_path(char *out, size_t n, const char *kind, const char *name, int version,
                             const char *what);

/* Verifies a ciphertext file at `path` (blob.c): decrypts it with a raw DEK and checks
 * its size and SHA-256, writing nothing. Errors as repo_blob_decrypt's. */
int repo_blob_verify_file(const char *path, const char *sha256, uint64_t size,
                          const unsigned char dek[REPO_KEY_LEN]);

#endif
