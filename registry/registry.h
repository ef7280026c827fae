/* registry: the catalog (SQLite), identity and roles, the audit chain, and the flows
 * that change state — push, export, verify — joining repo/ (blobs, keys, signatures,
 * ledger) with engine/ (what a model file is). The CLI and, later, the HTTP API call
 * these; they never touch SQLite or blobs themselves.
 *
 * Every mutation: validate → stage blobs durably → one SQLite transaction that records
 * the change, its audit row and its queued ledger entry → commit the queued entry to
 * git. reg_open re-commits entries left queued by a process that died in between. */
#ifndef MLV_REGISTRY_H
#define MLV_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "core/core_json.h"

typedef struct reg_ctx reg_ctx;

/* ============================================================= home & context ==== */
/* Creates the data home (DESIGN.md: mlvault.db, objects/, ledger.git/, keys/, jobs/,
 * tmp/, config.ini), the first admin user `admin`, and writes its token (shown once)
 * into token_out. Refuses an existing home (MLV_EEXISTS). */
#define REG_TOKEN_LEN 68 /* "mlv_" + 64 hex */
int reg_home_init(const char *home, char token_out[REG_TOKEN_LEN + 1]);
/* Opens a home: keys (refusing loose permissions), catalog, pending ledger entries
 * replayed, temp files of interrupted operations swept. *out owned by the caller. */
int reg_open(reg_ctx **out, const char *home);
void reg_close(reg_ctx *r);
const char *reg_home(const reg_ctx *r);

/* ===================================================================== users ==== */
typedef enum reg_role {
    REG_ROLE_VIEWER,
    REG_ROLE_ENGINEER,
    REG_ROLE_APPROVER,
    REG_ROLE_ADMIN,
    REG_ROLE_NODE,
} reg_role;
const char *reg_role_name(reg_role r);
int reg_role_parse(const char *s, reg_role *out); /* MLV_EINVAL when unknown */

typedef struct reg_user {
    int64_t id;
    char name[65];
    reg_role role;
    bool disabled;
    char created_at[21];
} reg_user;

/* Token → user. MLV_EAUTH: no token, an unknown token, or a disabled user (distinct
 * messages). */
int reg_authenticate(reg_ctx *r, const char *token, reg_user *out);

typedef enum reg_action {
    REG_ACT_READ,     /* list, show, lineage, verify */
    REG_ACT_DOWNLOAD, /* export */
    REG_ACT_PUSH,     /* push models and datasets */
    REG_ACT_ADMIN,    /* users, keys */
    REG_ACT_AUDIT,    /* read the audit log */
} reg_action;
/* 0 when the user's role allows the action, else MLV_EFORBIDDEN with a message. */
int reg_authorize(const reg_user *u, reg_action a);

int reg_user_add(reg_ctx *r, const reg_user *actor, const char *name, reg_role role,
                 char token_out[REG_TOKEN_LEN + 1]);
int reg_user_disable(reg_ctx *r, const reg_user *actor, const char *name);
/* *out owned by the caller (free()). */
int reg_user_list(reg_ctx *r, const reg_user *actor, reg_user **out, size_t *n);

/* ================================================================= artifacts ==== */
/* A parsed reference: NAME, NAME:VERSION, NAME@CHANNEL. */
typedef struct reg_ref {
    char name[65];
    int version;      /* 0 = latest */
    char channel[65]; /* "" unless NAME@CHANNEL */
} reg_ref;
int reg_ref_parse(const char *s, reg_ref *out);

typedef struct reg_push_opts {
    const char *name;
    const char *path;
    bool dataset;         /* dataset push: any regular file */
    const char **parents; /* refs */
    size_t n_parents;
    const char *note; /* may be NULL */
    /* lineage of a derived version (NULL/0: a plain push): the job kind ("quantize"),
     * its parameters (a JSON object's text) and the refs of the datasets it used */
    const char *job_kind;
    const char *job_params;
    const char **datasets;
    size_t n_datasets;
} reg_push_opts;

typedef struct reg_pushed {
    char name[65];
    int version;
    char digest[65]; /* manifest SHA-256 */
    uint64_t size;   /* plaintext bytes over all files */
    size_t n_files;
    size_t n_new_blobs; /* blobs that were not already stored */
} reg_pushed;

int reg_push(reg_ctx *r, const reg_user *actor, const reg_push_opts *o, reg_pushed *out);

/* Verifies the version (manifest digest, ledger copy, signature, every blob decrypts
 * and hashes right) and writes its files, `mlvault-manifest.json` and `model.sig` into
 * `outdir`, which must not exist or be empty. On any failure nothing is left in outdir. */
int reg_export(reg_ctx *r, const reg_user *actor, const char *ref, const char *outdir);
/* The same checks without writing plaintext anywhere. `report` (may be NULL) receives
 * one line per file checked. */
int reg_verify(reg_ctx *r, const reg_user *actor, const char *ref,
               void (*report)(const char *line, void *ctx), void *ctx);

/* A version verified as reg_verify does and decrypted into memory (no plaintext on
 * disk), for the engine. Audited ("load"). Clear with reg_loaded_clear. */
typedef struct reg_file_mem {
    char *path; /* as in the manifest */
    void *data; /* malloc'd; a caller may take it (set to NULL) */
    uint64_t size;
} reg_file_mem;
typedef struct reg_loaded {
    char name[65], kind[16], digest[65], format[16];
    int version;
    int64_t version_id;
    reg_file_mem *files;
    size_t n_files;
} reg_loaded;
int reg_load(reg_ctx *r, const reg_user *actor, const char *ref, reg_loaded *out);
void reg_loaded_clear(reg_loaded *l);

/* ================================================================= evaluations ==== */
/* registry/evals.c: evaluation results of stored versions on stored datasets, cached by
 * (model digest, dataset digest, metric, context, baseline digest). */
typedef struct reg_eval {
    char model_ref[160]; /* "name:version" (or the file for results not stored) */
    char model_digest[65];
    char dataset_ref[160];   /* "name:version", or "file:NAME" for a file not in the vault */
    char dataset_digest[65]; /* SHA-256 of the dataset's bytes */
    char metric[32];
    double value, ci_low, ci_high;
    uint64_t n_samples;
    uint32_t n_ctx;
    char baseline_digest[65]; /* kld only, else "" */
    double accuracy, perplexity, same_top;
    double seconds;
    char engine[64]; /* "mlvault 0.1.0 cpu-avx512" */
    char created_by[65], created_at[21];
} reg_eval;
/* Records a result for a stored model version (audited). */
int reg_eval_record(reg_ctx *r, const reg_user *actor, const reg_eval *e);
/* The latest cached result with the same model, dataset, metric, context and baseline:
 * 0 and *out filled, or MLV_ENOTFOUND. */
int reg_eval_find(reg_ctx *r, const reg_user *actor, const char *model_digest,
                  const char *dataset_digest, const char *metric, uint32_t n_ctx,
                  const char *baseline_digest, reg_eval *out);
/* [{dataset, dataset_digest, metric, value, ci_low, ci_high, n_samples, ctx, ...}] of
 * one version (by catalog id), newest first; owned by the caller. */
json_t *reg_eval_list_json(reg_ctx *r, int64_t version_id);

/* ===================================================================== queries ==== */
/* JSON views shared by the CLI (--json and text) and the HTTP API. All returned json_t
 * are owned by the caller (json_decref). */
/* [{name, kind, versions, latest, latest_digest, size, format, created_at}] or, with a
 * name, [{version, digest, size, format, architecture, parameters, tensor_types,
 * created_by, created_at, note}] */
int reg_list(reg_ctx *r, const reg_user *actor, const char *name, json_t **out);
/* {name, version, digest, kind, manifest:{...}, files:[{path,size,sha256}],
 *  signature:{state:"valid"|"invalid", detail, key_hint}, parents:[ref], children:[ref],
 *  created_by, created_at} */
int reg_show(reg_ctx *r, const reg_user *actor, const char *ref, json_t **out);
/* {root:"name:v", nodes:[{id:"name:v", name, version, kind, digest, format, size, job}],
 *  edges:[{from:"parent", to:"child"}]} over all ancestors and descendants. */
int reg_lineage(reg_ctx *r, const reg_user *actor, const char *ref, json_t **out);

/* ======================================================================= fsck ==== */
/* Checks catalog, ledger, blobs and audit chain agree (admin). *out owned by the caller:
 * {ok, problems:["..."], removed:[paths], checked:{versions, blobs, audit_rows}}. With
 * prune, stray files in objects/ are removed (and audited) instead of reported. Returns
 * 0 when the check ran, whatever it found. */
int reg_fsck(reg_ctx *r, const reg_user *actor, bool prune, json_t **out);

/* ======================================================================= keys ==== */
/* Trusts another site's signing public key (PEM, ECDSA P-256) so that its bundles
 * import; admin only; audited. hint_out: hex SHA-256 of the PEM. Trusting a key twice
 * is MLV_EEXISTS. */
int reg_key_trust(reg_ctx *r, const reg_user *actor, const char *pem, const char *name,
                  char hint_out[65]);
/* [{hint, name, added_by, added_at, self}] */
int reg_key_list(reg_ctx *r, const reg_user *actor, json_t **out);

/* ====================================================================== audit ==== */
/* [{seq, at, actor, action, target, detail, hash}] oldest first. */
int reg_audit_list(reg_ctx *r, const reg_user *actor, json_t **out);
/* Checks the hash chain and that its head matches the ledger's audit/head.json.
 * MLV_EINTEGRITY naming the first bad row. rows_out may be NULL. */
int reg_audit_verify(reg_ctx *r, const reg_user *actor, int64_t *rows_out);

/* ==================================================================== bundles ==== */
/* Air-gap bundles between sites (DESIGN.md, Bundles; the format is in repo/repo.h).
 * Export and import both need the engineer or admin role (REG_ACT_PUSH): a bundle
 * carries whole models off-site, and an import adds versions. */
typedef struct reg_bundle_export_opts {
    const char *const *refs; /* the versions to send */
    size_t n_refs;
    bool with_ancestors;       /* and every ancestor of each (lineage) */
    const char *recipient_pem; /* the receiving site's import key (keys export-import-key) */
    const char *path;          /* FILE.tar.zst; must not exist */
} reg_bundle_export_opts;
/* Verifies every version it sends as `verify` does, adds the datasets their lineage
 * names when stored here, wraps each blob's data key for the recipient, and writes the
 * bundle to a temp file beside `path`, renamed into place at the end (nothing at path on
 * failure). Audited as "bundle.export". *out (caller's, json_decref): {file, sha256,
 * bytes, recipient, versions:[{ref, kind, digest}], blobs}. */
int reg_bundle_export(reg_ctx *r, const reg_user *actor, const reg_bundle_export_opts *o,
                      json_t **out);
/* Checks everything before it changes anything — bundle.sig by a trusted key, the
 * entries, each blob (decrypted with this site's import key), each manifest and its
 * model signature by its signer's trusted key, the lineage (every parent in the bundle
 * or stored here with the same digest), no conflicting name:version — then imports the
 * new versions in one transaction, audited as "bundle.import", or nothing. Versions
 * already here with the same digest are skipped; when all are, nothing changes (no
 * audit row). *out (caller's): {file, sha256, sender, changed, versions:[{ref, kind,
 * digest, status:"imported"|"present"}], imported, present, new_blobs}. */
int reg_bundle_import(reg_ctx *r, const reg_user *actor, const char *path, json_t **out);
/* This site's import public key (PEM) and its hint; *pem owned by the caller. */
int reg_import_key(reg_ctx *r, const reg_user *actor, char **pem, char hint[65]);

#endif
