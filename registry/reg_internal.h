/* registry internals shared by the registry's own files: the context, SQLite helpers,
 * the audit append and the ledger queue. Not for other modules. */
#ifndef MLV_REG_INTERNAL_H
#define MLV_REG_INTERNAL_H

#include <sqlite3.h>

#include "registry/registry.h"
#include "repo/repo.h"

struct reg_ctx {
    char *home;
    char *tmpdir;
    sqlite3 *db;
    repo_keys *keys;
    int lock_fd; /* shared flock on HOME/lock while open */
};

/* Maps the last SQLite error to MLV_EDB (MLV_EBUSY when locked) with context. */
int reg_db_err(reg_ctx *r, const char *what);
int reg_exec(reg_ctx *r, const char *sql);
/* BEGIN IMMEDIATE / COMMIT / ROLLBACK. */
int reg_begin(reg_ctx *r);
int reg_commit(reg_ctx *r);
void reg_rollback(reg_ctx *r);

/* Queues a ledger entry inside the current transaction. `changes` are copied. */
int reg_ledger_queue(reg_ctx *r, const char *author, const char *message,
                     const repo_ledger_change *changes, size_t n);
/* Commits every queued entry to git in order, deleting each once committed. */
int reg_ledger_flush(reg_ctx *r);
/* After a committed state change: flushes, and when git fails only warns (the change
 * is saved; reg_open commits the entry later). Always returns 0. */
int reg_ledger_settle(reg_ctx *r);

/* Appends an audit row inside the current transaction and queues its ledger commit
 * (the row itself under audit/, the chain head in audit/head.json, plus `extra`
 * changes, e.g. a version's manifest). One audit row = one ledger commit. */
int reg_audit_append(reg_ctx *r, const char *actor, const char *action, const char *target,
                     const char *detail, const repo_ledger_change *extra, size_t n_extra);

/* auth.c, inside a transaction: inserts user `name` with a fresh token (token_out, shown
 * once); reg_user_create_locked also appends its audit row "user.add". MLV_EEXISTS for a
 * taken name. */
int reg_user_insert_locked(reg_ctx *r, const char *actor, const char *name, reg_role role,
                           char token_out[REG_TOKEN_LEN + 1]);
int reg_user_create_locked(reg_ctx *r, const char *actor, const char *name, reg_role role,
                           char token_out[REG_TOKEN_LEN + 1]);
/* nodes.c: reg_node_scope for the model a reference names (NAME, NAME:V, NAME@CHANNEL). */
int reg_node_scope_ref(reg_ctx *r, const reg_user *u, const char *ref);

/* Resolves a reference to a version row id (MLV_ENOTFOUND with a clear message). */
int reg_resolve(reg_ctx *r, const char *ref, int64_t *version_id, char name[65], int *version);

/* Loads a version's stored manifest and signature (owned by the caller). */
typedef struct reg_version_row {
    int64_t id;
    char name[65];
    char kind[16];
    int version;
    char digest[65];
    char *manifest; /* canonical JSON */
    char *signature;
    char created_by[65];
    char created_at[21];
    uint64_t size;
    char signer[65]; /* hint of the signing key */
    char *origin;    /* "" or where an imported version came from */
} reg_version_row;
int reg_version_load(reg_ctx *r, int64_t id, reg_version_row *out);
void reg_version_row_clear(reg_version_row *v);
/* Steps a prepared statement whose rows are (name, version) and returns them as a JSON
 * array of "name:version" strings (owned by the caller); finalizes the statement. */
json_t *reg_refs_from(sqlite3_stmt *st);
/* The ledger directory of a version: "models/NAME/V" or "datasets/NAME/V". */
void reg_version_ledger_dir(char *out, size_t n, const char *kind, const char *name, int v);

/* ---- shared by push (vault.c) and bundle import (bundle.c) ---- */

/* Before a transaction moves staged blobs into objects/, their digests are recorded as
 * intents (in their own committed transaction). A crash between the move and the
 * commit then leaves no stray: reg_open, when it has the home to itself, deletes each
 * object whose intent has no blobs row, and the intents. */
int reg_blob_intents_add(reg_ctx *r, repo_staged_blob *const *blobs, size_t n);
/* Inside a transaction: each staged blob is discarded when its digest is already
 * stored, else moved into objects/ and recorded with its wrapped DEK. Clears the
 * intents of these digests. *n_new counts the blobs moved. */
int reg_blobs_store(reg_ctx *r, repo_staged_blob *const *blobs, size_t n, size_t *n_new);
/* Inside a transaction: the artifact's id, created when new; MLV_EINVAL when the name
 * is of the other kind (model vs dataset). */
int reg_artifact_id(reg_ctx *r, const char *name, const char *kind, int64_t *id);

typedef struct reg_new_version {
    int64_t artifact_id;
    const repo_manifest *m;    /* version number, files (path -> blob sha256), parents */
    const char *digest;        /* SHA-256 of `manifest` */
    const char *manifest;      /* canonical JSON */
    const char *signature;     /* the model-signing bundle */
    const char *signer;        /* hint (hex SHA-256 of the PEM) of the key that signed */
    const char *origin;        /* "" for local versions; "bundle ..." when imported */
    uint64_t size;             /* plaintext bytes over all files */
    const int64_t *parent_ids; /* m->n_parents version row ids, in manifest order */
} reg_new_version;
/* Inside a transaction: the version row, its files and lineage edges. MLV_EEXISTS when
 * the name already has that version number or the manifest digest is stored. */
int reg_version_insert(reg_ctx *r, const reg_new_version *nv, int64_t *vid);

/* The PEM of a trusted signing key by hint (this registry's own key is trusted as
 * "self"); *pem owned by the caller. MLV_ENOTFOUND for an unknown key. */
int reg_trusted_pem(reg_ctx *r, const char *hint, char **pem);
/* What a version's signature covers: its files and the manifest itself (REG_MANIFEST_FILE
 * by `digest`), m->n_files + 1 entries borrowing m's strings. Caller frees; NULL on
 * ENOMEM. */
repo_sig_resource *reg_version_resources(const repo_manifest *m, const char *digest);
/* Verifies a version's signature: signed by the trusted key `signer`, covering exactly
 * the manifest's files and the manifest itself (REG_MANIFEST_FILE, by `digest`). */
int reg_signature_check(reg_ctx *r, const char *signer, const repo_manifest *m, const char *digest,
                        const char *signature);
/* Hint of a public key PEM: hex SHA-256 of the PEM text (as model-signing's hint). */
void reg_key_hint(char out[65], const char *pem);

/* push_files.c: the files a push of `path` sends, sorted by their path inside the
 * version: one .gguf (or, with `dataset`, one regular file), or a Hugging Face folder's
 * visible regular files (*is_dir) — refusing links, nested folders, reserved and unsafe
 * names. *out owned by the caller (reg_push_sources_free). */
typedef struct reg_push_src {
    char *rel;  /* path inside the version */
    char *full; /* path on disk */
} reg_push_src;
int reg_push_sources(const char *path, bool dataset, reg_push_src **out, size_t *n, bool *is_dir);
void reg_push_sources_free(reg_push_src *s, size_t n);
/* vault.c: checks an export's destination before anything is fetched: `outdir` must not
 * exist or be an empty folder (*exists), in an existing folder; pdir and leaf receive
 * that folder and outdir's last component (a staging folder goes beside it). */
int reg_export_target(const char *outdir, bool *exists, char pdir[4096], char leaf[4096]);
/* vault.c: out->files sized from the manifest, each buffer allocated (not filled) — for
 * reg_load (decrypting) and reg_client_load (downloading). */
int reg_loaded_alloc(reg_loaded *out, const repo_manifest *m, const char *ref);
/* Moves a complete staging folder to outdir (replacing the empty folder that was there
 * when out_exists) and makes the rename durable (fsync of pdir). */
int reg_export_place(const char *staging, const char *outdir, bool out_exists, const char *pdir);

/* promote.c: rejects every request still "gating" whose gate job failed or was
 * cancelled, with the job's error (called by the job scheduler when a job ends). */
int reg_promote_sweep_failed_gates(reg_ctx *r);

#define REG_MANIFEST_FILE "mlvault-manifest.json"
#define REG_SIGNATURE_FILE "model.sig"

#endif
