/* registry/fsck.c: `mlvault fsck` — checks that the catalog, the ledger and the blob store
 * agree: every version verifies (manifest digest, ledger copies, signature, every blob
 * decrypts and hashes right), the ledger has no version the catalog lacks, trusted keys
 * are in the ledger, the audit chain holds, no ledger entry is left queued, and no stray
 * file sits in objects/ (removed only with prune). It reports; it repairs nothing else. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "registry/reg_internal.h"

typedef struct fsck_ctx {
    reg_ctx *r;
    json_t *problems;
    json_t *removed;
} fsck_ctx;

static void problem(fsck_ctx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(fsck_ctx *f, const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_array_append_new(f->problems, json_string(msg));
}

static int64_t count(reg_ctx *r, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t n = -1;
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* Every version, fully verified. */
static int check_versions(fsck_ctx *f, const reg_user *actor, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(f->r->db,
                           "SELECT a.name, v.version FROM versions v JOIN artifacts a"
                           " ON a.id = v.artifact_id ORDER BY a.name, v.version",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(f->r, "fsck");
    json_t *refs = reg_refs_from(st);
    size_t i;
    json_t *ref;
    json_array_foreach(refs, i, ref)
    {
        if (reg_verify(f->r, actor, json_string_value(ref), NULL, NULL) != 0)
            problem(f, "version %s: %s", json_string_value(ref), core_err_last());
    }
    *n = (int64_t)json_array_size(refs);
    json_decref(refs);
    return 0;
}

/* Ledger paths "models/NAME/V/manifest.json" with no catalog row. */
typedef struct ledger_walk {
    fsck_ctx *f;
    const char *kind;
} ledger_walk;

static int ledger_version(const char *path, void *ctx)
{
    ledger_walk *w = ctx;
    char name[80];
    int v;
    char tail[32];
    const char *p = strchr(path, '/');
    if (!p || sscanf(p + 1, "%64[^/]/%d/%31s", name, &v, tail) != 3 ||
        strcmp(tail, "manifest.json") != 0)
        return 0;
    char ref[96];
    snprintf(ref, sizeof ref, "%s:%d", name, v);
    int64_t id;
    if (reg_resolve(w->f->r, ref, &id, NULL, NULL) != 0)
        problem(w->f, "ledger records %s (%s) but the catalog has no such version", ref, path);
    return 0;
}

static int check_ledger(fsck_ctx *f)
{
    ledger_walk w = {f, "model"};
    int rc = repo_ledger_list(f->r->home, "models/", ledger_version, &w);
    if (rc == 0) rc = repo_ledger_list(f->r->home, "datasets/", ledger_version, &w);
    if (rc && rc != MLV_ENOTFOUND) problem(f, "ledger: %s", core_err_last());
    int64_t queued = count(f->r, "SELECT COUNT(*) FROM ledger_queue");
    if (queued > 0) problem(f, "%lld ledger entries are still queued for git", (long long)queued);

    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(f->r->db, "SELECT hint, name, pem FROM trusted_keys WHERE self = 0", -1,
                           &st, NULL) != SQLITE_OK)
        return reg_db_err(f->r, "fsck");
    while (sqlite3_step(st) == SQLITE_ROW) {
        char path[128], *led = NULL;
        size_t len;
        const char *pem = (const char *)sqlite3_column_text(st, 2);
        snprintf(path, sizeof path, "keys/trusted/%s.pem",
                 (const char *)sqlite3_column_text(st, 0));
        if (repo_ledger_read(f->r->home, path, &led, &len) != 0 || len != strlen(pem) ||
            memcmp(led, pem, len) != 0)
            problem(f, "trusted key %s: the ledger has no matching %s",
                    (const char *)sqlite3_column_text(st, 1), path);
        free(led);
    }
    sqlite3_finalize(st);
    return 0;
}

static bool blob_recorded(reg_ctx *r, const char *sha)
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(r->db, "SELECT 1 FROM blobs WHERE sha256 = ?", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
        found = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    return found;
}

static void stray(fsck_ctx *f, const char *path, bool prune)
{
    if (!prune) {
        problem(f, "stray file in the blob store: %s (mlvault fsck --prune removes it)", path);
        return;
    }
    if (core_rm_rf(path) == 0)
        json_array_append_new(f->removed, json_string(path));
    else
        problem(f, "stray file %s: cannot remove: %s", path, core_err_last());
}

/* Files in objects/ that no blobs row names. */
static int check_objects(fsck_ctx *f, bool prune, int64_t *n)
{
    char *objects = core_path_join(f->r->home, "objects");
    if (!objects) return core_err_set(MLV_ENOMEM, "out of memory");
    DIR *d = opendir(objects);
    if (!d) {
        problem(f, "%s: %s", objects, strerror(errno));
        free(objects);
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *sub = core_path_join(objects, e->d_name);
        DIR *sd = sub && core_is_hex(e->d_name, 2) ? opendir(sub) : NULL;
        if (!sd) {
            if (sub) stray(f, sub, prune);
            free(sub);
            continue;
        }
        struct dirent *b;
        while ((b = readdir(sd)) != NULL) {
            if (!strcmp(b->d_name, ".") || !strcmp(b->d_name, "..")) continue;
            char *path = core_path_join(sub, b->d_name);
            if (!path) continue;
            bool named_right = core_is_hex(b->d_name, 64) && !strncmp(b->d_name, e->d_name, 2);
            if (!named_right || !blob_recorded(f->r, b->d_name))
                stray(f, path, prune);
            else
                (*n)++;
            free(path);
        }
        closedir(sd);
        free(sub);
    }
    closedir(d);
    free(objects);
    int64_t unref = count(f->r, "SELECT COUNT(*) FROM blobs b WHERE NOT EXISTS"
                                " (SELECT 1 FROM version_files f WHERE f.blob = b.sha256)");
    if (unref > 0) problem(f, "%lld blob records belong to no version", (long long)unref);
    return 0;
}

int reg_fsck(reg_ctx *r, const reg_user *actor, bool prune, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_ADMIN);
    if (rc) return rc;
    fsck_ctx f = {r, json_array(), json_array()};
    int64_t versions = 0, blobs = 0, rows = 0;
    if ((rc = check_versions(&f, actor, &versions)) != 0) goto done;
    if ((rc = check_ledger(&f)) != 0) goto done;
    if (reg_audit_verify(r, actor, &rows) != 0) problem(&f, "audit: %s", core_err_last());
    if ((rc = check_objects(&f, prune, &blobs)) != 0) goto done;
    *out =
        json_pack("{s:b,s:o,s:o,s:{s:I,s:I,s:I}}", "ok", json_array_size(f.problems) == 0,
                  "problems", f.problems, "removed", f.removed, "checked", "versions",
                  (json_int_t)versions, "blobs", (json_int_t)blobs, "audit_rows", (json_int_t)rows);
    f.problems = f.removed = NULL;
    if (!*out) rc = core_err_set(MLV_ENOMEM, "out of memory");
    if (rc == 0 && json_array_size(json_object_get(*out, "removed")) > 0) {
        char detail[64];
        snprintf(detail, sizeof detail, "removed %zu stray files",
                 json_array_size(json_object_get(*out, "removed")));
        if ((rc = reg_begin(r)) == 0) {
            rc = reg_audit_append(r, actor->name, "fsck.prune", "objects", detail, NULL, 0);
            if (rc == 0) rc = reg_commit(r);
            if (rc)
                reg_rollback(r);
            else
                reg_ledger_settle(r);
        }
    }
done:
    json_decref(f.problems);
    json_decref(f.removed);
    return rc;
}
