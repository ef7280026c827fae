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
} reg_version_row;
int reg_version_load(reg_ctx *r, int64_t id, reg_version_row *out);
void reg_version_row_clear(reg_version_row *v);
/* The ledger directory of a version: "models/NAME/V" or "datasets/NAME/V". */
void reg_version_ledger_dir(char *out, size_t n, const char *kind, const char *name, int v);

#define REG_MANIFEST_FILE "mlvault-manifest.json"
#define REG_SIGNATURE_FILE "model.sig"

#endif
