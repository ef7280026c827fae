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
 * Opening refuses key files that are readable or writable by group or others. */
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

#endif
