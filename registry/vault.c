/* registry/vault.c: the flows that move artifact bytes — push (stage blobs, manifest,
 * signature, one transaction, ledger), export and verify (every check before any
 * plaintext is trusted). Queries that only read rows live in query.c. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine.h"
#include "registry/reg_internal.h"

#define MAX_NOTE 4096
#define REG_MAX_PUSH_DATASETS 16

typedef struct push_file {
    char *rel;  /* path inside the version */
    char *full; /* path on disk */
    repo_staged_blob blob;
} push_file;

/* Decides what PATH is (push_files.c) and describes it. */
static int collect(const reg_push_opts *o, push_file **fs, size_t *n, eng_model_info *info)
{
    reg_push_src *src = NULL;
    size_t ns = 0;
    bool dir;
    int rc = reg_push_sources(o->path, o->dataset, &src, &ns, &dir);
    if (rc) return rc;
    if (o->dataset)
        snprintf(info->format, sizeof info->format, "dataset");
    else if (dir)
        rc = eng_describe_hf_dir(o->path, info);
    else if (access(o->path, R_OK) != 0)
        rc = core_err_set(MLV_EIO, "%s: %s", o->path, strerror(errno));
    else if ((rc = eng_describe_gguf(o->path, info)) != 0)
        core_err_wrap("%s: ", o->path);
    if (rc == 0 && !(*fs = calloc(ns, sizeof **fs))) rc = core_err_set(MLV_ENOMEM, "out of memory");
    if (rc) {
        reg_push_sources_free(src, ns);
        return rc;
    }
    for (size_t i = 0; i < ns; i++) {
        (*fs)[i].rel = src[i].rel;
        (*fs)[i].full = src[i].full;
    }
    *n = ns;
    free(src); /* the strings now belong to *fs */
    return 0;
}

static int blob_known(reg_ctx *r, const char *sha, bool *known)
{
    sqlite3_stmt *st = NULL;
    *known = false;
    if (sqlite3_prepare_v2(r->db, "SELECT 1 FROM blobs WHERE sha256 = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "blobs");
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    *known = step == SQLITE_ROW;
    sqlite3_finalize(st);
    return (step == SQLITE_ROW || step == SQLITE_DONE) ? 0 : reg_db_err(r, "blobs");
}

int reg_blob_intents_add(reg_ctx *r, repo_staged_blob *const *blobs, size_t n)
{
    char at[21];
    core_time_iso(at);
    int rc = reg_begin(r);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(r->db,
                               "INSERT OR IGNORE INTO blob_intents(sha256, created_at) VALUES(?,?)",
                               -1, &st, NULL) != SQLITE_OK) {
            rc = reg_db_err(r, "blob intents");
            break;
        }
        sqlite3_bind_text(st, 1, blobs[i]->sha256, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, at, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) rc = reg_db_err(r, "blob intents");
        sqlite3_finalize(st);
    }
    if (rc == 0) rc = reg_commit(r);
    if (rc) reg_rollback(r);
    return rc;
}

int reg_blobs_store(reg_ctx *r, repo_staged_blob *const *blobs, size_t n, size_t *n_new)
{
    char at[21];
    core_time_iso(at);
    for (size_t i = 0; i < n; i++) {
        repo_staged_blob *b = blobs[i];
        bool known = false;
        int rc = blob_known(r, b->sha256, &known);
        if (rc) return rc;
        if (known) {
            repo_blob_discard(b);
            continue;
        }
        if ((rc = repo_blob_commit(r->home, b)) != 0) return rc;
        char wrapped[2 * REPO_WRAPPED_DEK_LEN + 1];
        core_hex(wrapped, b->wrapped_dek, REPO_WRAPPED_DEK_LEN);
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(r->db,
                               "INSERT INTO blobs(sha256, size, wrapped_dek, created_at)"
                               " VALUES(?,?,?,?)",
                               -1, &st, NULL) != SQLITE_OK)
            return reg_db_err(r, "blobs");
        sqlite3_bind_text(st, 1, b->sha256, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)b->size);
        sqlite3_bind_text(st, 3, wrapped, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, at, -1, SQLITE_STATIC);
        int step = sqlite3_step(st);
        sqlite3_finalize(st);
        if (step != SQLITE_DONE) return reg_db_err(r, "blobs");
        if (sqlite3_prepare_v2(r->db, "DELETE FROM blob_intents WHERE sha256 = ?", -1, &st, NULL) !=
            SQLITE_OK)
            return reg_db_err(r, "blob intents");
        sqlite3_bind_text(st, 1, b->sha256, -1, SQLITE_STATIC);
        step = sqlite3_step(st);
        sqlite3_finalize(st);
        if (step != SQLITE_DONE) return reg_db_err(r, "blob intents");
        (*n_new)++;
    }
    return 0;
}

int reg_artifact_id(reg_ctx *r, const char *name, const char *kind, int64_t *id)
{
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_prepare_v2(r->db, "SELECT id, kind FROM artifacts WHERE name = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "artifacts");
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        const char *k = (const char *)sqlite3_column_text(st, 1);
        if (strcmp(k, kind) != 0)
            rc = core_err_set(MLV_EINVAL, "%s is a %s, not a %s", name, k, kind);
        sqlite3_finalize(st);
        return rc;
    }
    sqlite3_finalize(st);
    if (step != SQLITE_DONE) return reg_db_err(r, "artifacts");
    char at[21];
    core_time_iso(at);
    if (sqlite3_prepare_v2(r->db, "INSERT INTO artifacts(name, kind, created_at) VALUES(?,?,?)", -1,
                           &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "artifacts");
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, at, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = reg_db_err(r, "artifacts");
    *id = sqlite3_last_insert_rowid(r->db);
    sqlite3_finalize(st);
    return rc;
}

static int next_version(reg_ctx *r, int64_t art, int *v)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT COALESCE(MAX(version), 0) FROM versions"
                           " WHERE artifact_id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "versions");
    sqlite3_bind_int64(st, 1, art);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : reg_db_err(r, "versions");
    *v = sqlite3_column_int(st, 0) + 1;
    sqlite3_finalize(st);
    return rc;
}

int reg_version_insert(reg_ctx *r, const reg_new_version *nv, int64_t *vid)
{
    const repo_manifest *m = nv->m;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO versions(artifact_id, version, manifest_digest, manifest,"
                           " signature, size, created_by, created_at, signer, origin)"
                           " VALUES(?,?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "versions");
    sqlite3_bind_int64(st, 1, nv->artifact_id);
    sqlite3_bind_int(st, 2, m->version);
    sqlite3_bind_text(st, 3, nv->digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, nv->manifest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, nv->signature, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)nv->size);
    sqlite3_bind_text(st, 7, m->creator, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, m->created_at, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, nv->signer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, nv->origin ? nv->origin : "", -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    if (step == SQLITE_CONSTRAINT)
        return core_err_set(MLV_EEXISTS, "%s:%d or manifest %.12s already exists", m->name,
                            m->version, nv->digest);
    if (step != SQLITE_DONE) return reg_db_err(r, "versions");
    *vid = sqlite3_last_insert_rowid(r->db);
    for (size_t i = 0; i < m->n_files; i++) {
        const repo_file *f = &m->files[i];
        if (sqlite3_prepare_v2(r->db,
                               "INSERT INTO version_files(version_id, path, blob, size)"
                               " VALUES(?,?,?,?)",
                               -1, &st, NULL) != SQLITE_OK)
            return reg_db_err(r, "version files");
        sqlite3_bind_int64(st, 1, *vid);
        sqlite3_bind_text(st, 2, f->path, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, f->sha256, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)f->size);
        step = sqlite3_step(st);
        sqlite3_finalize(st);
        if (step != SQLITE_DONE) return reg_db_err(r, "version files");
    }
    for (size_t i = 0; i < m->n_parents; i++) {
        if (sqlite3_prepare_v2(r->db, "INSERT INTO lineage(child_id, parent_id) VALUES(?,?)", -1,
                               &st, NULL) != SQLITE_OK)
            return reg_db_err(r, "lineage");
        sqlite3_bind_int64(st, 1, *vid);
        sqlite3_bind_int64(st, 2, nv->parent_ids[i]);
        step = sqlite3_step(st);
        sqlite3_finalize(st);
        if (step != SQLITE_DONE) return reg_db_err(r, "lineage");
    }
    return 0;
}

/* Signs the files and the manifest itself, so the exported folder verifies as a whole. */
static int sign_version(reg_ctx *r, const repo_manifest *m, const char *digest, char **sig)
{
    repo_sig_resource *res = reg_version_resources(m, digest);
    if (!res) return core_err_code();
    int rc = repo_sign_resources(r->keys, m->name, res, m->n_files + 1, sig);
    free(res);
    return rc;
}

int reg_push(reg_ctx *r, const reg_user *actor, const reg_push_opts *o, reg_pushed *out)
{
    memset(out, 0, sizeof *out);
    int rc = reg_authorize(actor, REG_ACT_PUSH);
    if (rc) return rc;
    if (!core_name_valid(o->name))
        return core_err_set(MLV_EINVAL, "invalid name '%s': use [a-z0-9][a-z0-9._-]{0,63}",
                            o->name);
    if (o->note && strlen(o->note) > MAX_NOTE)
        return core_err_set(MLV_EINVAL, "note longer than %d bytes", MAX_NOTE);
    if (o->n_datasets > REG_MAX_PUSH_DATASETS)
        return core_err_set(MLV_EINVAL, "more than %d datasets", REG_MAX_PUSH_DATASETS);

    push_file *fs = NULL;
    size_t nf = 0;
    eng_model_info info = {0};
    repo_manifest m = {0};
    repo_parent *parents = NULL;
    int64_t *parent_ids = NULL;
    repo_file *mfiles = NULL;
    repo_staged_blob **staged = NULL;
    struct {
        char hex[65];
    } *dataset_digests = NULL;
    char *manifest = NULL, *sig = NULL;
    bool in_tx = false;
    const char *kind = o->dataset ? "dataset" : "model";

    if ((rc = collect(o, &fs, &nf, &info)) != 0) goto done;

    parents = calloc(o->n_parents + 1, sizeof *parents);
    parent_ids = calloc(o->n_parents + 1, sizeof *parent_ids);
    mfiles = calloc(nf, sizeof *mfiles);
    staged = calloc(nf, sizeof *staged);
    if (!parents || !parent_ids || !mfiles || !staged) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < o->n_parents; i++) {
        reg_version_row pv = {0};
        if ((rc = reg_resolve(r, o->parents[i], &parent_ids[i], NULL, NULL)) != 0) {
            core_err_wrap("parent: ");
            goto done;
        }
        for (size_t j = 0; j < i; j++)
            if (parent_ids[j] == parent_ids[i]) {
                rc = core_err_set(MLV_EINVAL, "parent %s given twice", o->parents[i]);
                goto done;
            }
        if ((rc = reg_version_load(r, parent_ids[i], &pv)) != 0) goto done;
        parents[i].name = strdup(pv.name);
        parents[i].version = pv.version;
        memcpy(parents[i].digest, pv.digest, 65);
        reg_version_row_clear(&pv);
        if (!parents[i].name) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
    }

    if (o->n_datasets && !(dataset_digests = calloc(o->n_datasets, sizeof *dataset_digests))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < o->n_datasets; i++) {
        reg_version_row dv = {0};
        int64_t did = 0;
        if ((rc = reg_resolve(r, o->datasets[i], &did, NULL, NULL)) != 0 ||
            (rc = reg_version_load(r, did, &dv)) != 0) {
            core_err_wrap("dataset: ");
            goto done;
        }
        bool is_dataset = !strcmp(dv.kind, "dataset");
        memcpy(dataset_digests[i].hex, dv.digest, 65);
        reg_version_row_clear(&dv);
        if (!is_dataset) {
            rc = core_err_set(MLV_EINVAL, "%s is not a dataset", o->datasets[i]);
            goto done;
        }
    }

    /* The heavy part, outside any transaction: hash and encrypt every file into tmp/. */
    for (size_t i = 0; i < nf; i++) {
        if ((rc = repo_blob_stage_file(r->home, r->keys, fs[i].full, &fs[i].blob)) != 0) goto done;
        staged[i] = &fs[i].blob;
        mfiles[i].path = fs[i].rel;
        mfiles[i].size = fs[i].blob.size;
        memcpy(mfiles[i].sha256, fs[i].blob.sha256, 65);
        out->size += fs[i].blob.size;
    }

    if ((rc = reg_blob_intents_add(r, staged, nf)) != 0) goto done;
    if ((rc = reg_begin(r)) != 0) goto done;
    in_tx = true;
    int64_t art = 0, vid = 0;
    int version = 0;
    if ((rc = reg_artifact_id(r, o->name, kind, &art)) != 0) goto done;
    if ((rc = next_version(r, art, &version)) != 0) goto done;

    char at[21];
    core_time_iso(at);
    m.kind = (char *)kind;
    m.name = (char *)o->name;
    m.version = version;
    m.format = info.format;
    m.architecture = info.architecture;
    m.parameters = info.parameters;
    m.tensor_types = info.tensor_types;
    m.n_tensor_types = info.n_tensor_types;
    m.files = mfiles;
    m.n_files = nf;
    m.parents = parents;
    m.n_parents = o->n_parents;
    m.job_kind = (char *)(o->job_kind ? o->job_kind : "push");
    m.job_params = (char *)(o->job_params ? o->job_params : "{}");
    char *dptrs[REG_MAX_PUSH_DATASETS];
    for (size_t i = 0; i < o->n_datasets; i++)
        dptrs[i] = dataset_digests[i].hex;
    m.dataset_digests = dptrs;
    m.n_dataset_digests = o->n_datasets;
    m.creator = (char *)actor->name;
    m.created_at = at;
    m.note = (char *)(o->note ? o->note : "");
    m.mlvault_version = MLV_VERSION;
    size_t mlen;
    if ((rc = repo_manifest_to_json(&m, &manifest, &mlen)) != 0) goto done;
    repo_sha256_hex(out->digest, manifest, mlen);
    if ((rc = sign_version(r, &m, out->digest, &sig)) != 0) goto done;
    if ((rc = reg_blobs_store(r, staged, nf, &out->n_new_blobs)) != 0) goto done;
    char signer[65];
    reg_key_hint(signer, repo_keys_public_pem(r->keys));
    reg_new_version nv = {.artifact_id = art,
                          .m = &m,
                          .digest = out->digest,
                          .manifest = manifest,
                          .signature = sig,
                          .signer = signer,
                          .origin = "",
                          .size = out->size,
                          .parent_ids = parent_ids};
    if ((rc = reg_version_insert(r, &nv, &vid)) != 0) goto done;

    char dir[160], mpath[200], spath[200], target[80], detail[160];
    reg_version_ledger_dir(dir, sizeof dir, kind, o->name, version);
    snprintf(mpath, sizeof mpath, "%s/manifest.json", dir);
    snprintf(spath, sizeof spath, "%s/signature", dir);
    snprintf(target, sizeof target, "%s:%d", o->name, version);
    snprintf(detail, sizeof detail, "manifest %s", out->digest);
    repo_ledger_change ch[2] = {{mpath, manifest, mlen}, {spath, sig, strlen(sig)}};
    if ((rc = reg_audit_append(r, actor->name, o->dataset ? "dataset.push" : "push", target, detail,
                               ch, 2)) != 0)
        goto done;
    if ((rc = reg_commit(r)) != 0) goto done;
    in_tx = false;
    snprintf(out->name, sizeof out->name, "%s", o->name);
    out->version = version;
    out->n_files = nf;
    rc = reg_ledger_settle(r);
done:
    if (in_tx) reg_rollback(r);
    for (size_t i = 0; i < nf; i++) {
        repo_blob_discard(&fs[i].blob);
        free(fs[i].rel);
        free(fs[i].full);
    }
    free(fs);
    for (size_t i = 0; parents && i < o->n_parents; i++)
        free(parents[i].name);
    free(parents);
    free(parent_ids);
    free(dataset_digests);
    free(mfiles);
    free(staged);
    free(manifest);
    free(sig);
    eng_model_info_clear(&info);
    return rc;
}

/* ------------------------------------------------------------------ read path --- */

typedef struct checked_version {
    reg_version_row row;
    repo_manifest *m;
    unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN]; /* one per manifest file */
} checked_version;

static void checked_clear(checked_version *c)
{
    reg_version_row_clear(&c->row);
    repo_manifest_free(c->m);
    free(c->wrapped);
    memset(c, 0, sizeof *c);
}

static int load_wrapped(reg_ctx *r, checked_version *c)
{
    c->wrapped = calloc(c->m->n_files ? c->m->n_files : 1, sizeof *c->wrapped);
    if (!c->wrapped) return core_err_set(MLV_ENOMEM, "out of memory");
    for (size_t i = 0; i < c->m->n_files; i++) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(r->db, "SELECT wrapped_dek FROM blobs WHERE sha256 = ?", -1, &st,
                               NULL) != SQLITE_OK)
            return reg_db_err(r, "blobs");
        sqlite3_bind_text(st, 1, c->m->files[i].sha256, -1, SQLITE_STATIC);
        int rc = 0;
        if (sqlite3_step(st) != SQLITE_ROW)
            rc = core_err_set(MLV_EINTEGRITY, "%s: no data key recorded for blob %s",
                              c->m->files[i].path, c->m->files[i].sha256);
        else if (core_unhex(c->wrapped[i], REPO_WRAPPED_DEK_LEN,
                            (const char *)sqlite3_column_text(st, 0)) != 0)
            rc =
                core_err_set(MLV_EINTEGRITY, "%s: data key record is corrupt", c->m->files[i].path);
        sqlite3_finalize(st);
        if (rc) return rc;
    }
    return 0;
}

/* Everything short of decrypting blobs: the manifest's digest, the ledger's copy of the
 * manifest and signature, the signature over files + manifest, the data keys. */
static int check_version(reg_ctx *r, const char *ref, checked_version *c)
{
    memset(c, 0, sizeof *c);
    int64_t id;
    int rc = reg_resolve(r, ref, &id, NULL, NULL);
    if (rc == 0) rc = reg_version_load(r, id, &c->row);
    if (rc) return rc;
    const char *label = ref;
    char digest[65];
    repo_sha256_hex(digest, c->row.manifest, strlen(c->row.manifest));
    if (strcmp(digest, c->row.digest) != 0)
        return core_err_set(MLV_EINTEGRITY,
                            "%s: manifest was altered (digest %.12s, expected %.12s)", label,
                            digest, c->row.digest);

    char dir[160], path[200];
    reg_version_ledger_dir(dir, sizeof dir, c->row.kind, c->row.name, c->row.version);
    const char *what[2] = {"manifest.json", "signature"};
    const char *mine[2] = {c->row.manifest, c->row.signature};
    for (int i = 0; i < 2; i++) {
        char *led = NULL;
        size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, what[i]);
        rc = repo_ledger_read(r->home, path, &led, &len);
        /* A change another process saved a moment ago may still be queued for git. */
        if (rc == MLV_ENOTFOUND && reg_ledger_flush(r) == 0)
            rc = repo_ledger_read(r->home, path, &led, &len);
        if (rc != 0) return core_err_set(MLV_EINTEGRITY, "%s: the ledger has no %s", label, path);
        bool same = len == strlen(mine[i]) && !memcmp(led, mine[i], len);
        free(led);
        if (!same)
            return core_err_set(MLV_EINTEGRITY, "%s: catalog and ledger disagree on the %s", label,
                                what[i]);
    }
    if ((rc = repo_manifest_parse(&c->m, c->row.manifest, strlen(c->row.manifest))) != 0)
        return core_err_wrap("%s: manifest: ", label);
    if (strcmp(c->m->name, c->row.name) != 0 || c->m->version != c->row.version)
        return core_err_set(MLV_EINTEGRITY, "%s: manifest names %s:%d", label, c->m->name,
                            c->m->version);

    rc = reg_signature_check(r, c->row.signer, c->m, c->row.digest, c->row.signature);
    if (rc) return core_err_wrap("%s: signature: ", label);
    return load_wrapped(r, c);
}

int reg_verify(reg_ctx *r, const reg_user *actor, const char *ref,
               void (*report)(const char *line, void *ctx), void *ctx)
{
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    checked_version c;
    if ((rc = check_version(r, ref, &c)) != 0) goto done;
    char line[512];
    if (report) {
        snprintf(line, sizeof line, "ok  signature and manifest %s", c.row.digest);
        report(line, ctx);
    }
    for (size_t i = 0; i < c.m->n_files; i++) {
        const repo_file *f = &c.m->files[i];
        if ((rc = repo_blob_decrypt(r->home, r->keys, f->sha256, f->size, c.wrapped[i], -1)) != 0) {
            core_err_wrap("%s: %s: ", ref, f->path);
            goto done;
        }
        if (report) {
            snprintf(line, sizeof line, "ok  %s  %llu bytes  sha256 %s", f->path,
                     (unsigned long long)f->size, f->sha256);
            report(line, ctx);
        }
    }
done:
    checked_clear(&c);
    return rc;
}

void reg_loaded_clear(reg_loaded *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n_files; i++) {
        free(l->files[i].path);
        free(l->files[i].data);
    }
    free(l->files);
    memset(l, 0, sizeof *l);
}

int reg_loaded_alloc(reg_loaded *out, const repo_manifest *m, const char *ref)
{
    out->files = calloc(m->n_files ? m->n_files : 1, sizeof *out->files);
    if (!out->files) return core_err_set(MLV_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->n_files; i++) {
        const repo_file *f = &m->files[i];
        reg_file_mem *fm = &out->files[out->n_files++];
        fm->size = f->size;
        fm->path = strdup(f->path);
        fm->data = f->size <= SIZE_MAX ? malloc(f->size ? (size_t)f->size : 1) : NULL;
        if (!fm->path || !fm->data)
            return core_err_set(MLV_ENOMEM, "%s: %s: out of memory for %llu bytes", ref, f->path,
                                (unsigned long long)f->size);
    }
    return 0;
}

int reg_load(reg_ctx *r, const reg_user *actor, const char *ref, reg_loaded *out)
{
    memset(out, 0, sizeof *out);
    int rc = reg_authorize(actor, REG_ACT_DOWNLOAD);
    if (rc) return rc;
    checked_version c;
    if ((rc = check_version(r, ref, &c)) != 0) goto done;
    if ((rc = reg_loaded_alloc(out, c.m, ref)) != 0) goto done;
    for (size_t i = 0; i < c.m->n_files; i++) {
        const repo_file *f = &c.m->files[i];
        reg_file_mem *fm = &out->files[i];
        if ((rc = repo_blob_decrypt_mem(r->home, r->keys, f->sha256, f->size, c.wrapped[i],
                                        fm->data)) != 0) {
            core_err_wrap("%s: %s: ", ref, f->path);
            goto done;
        }
    }
    snprintf(out->name, sizeof out->name, "%s", c.row.name);
    snprintf(out->kind, sizeof out->kind, "%s", c.row.kind);
    snprintf(out->digest, sizeof out->digest, "%s", c.row.digest);
    snprintf(out->format, sizeof out->format, "%s", c.m->format);
    out->version = c.row.version;
    out->version_id = c.row.id;
    char target[96];
    snprintf(target, sizeof target, "%s:%d", c.row.name, c.row.version);
    if ((rc = reg_begin(r)) != 0) goto done;
    if ((rc = reg_audit_append(r, actor->name, "load", target, "decrypted into memory", NULL, 0)) ||
        (rc = reg_commit(r))) {
        reg_rollback(r);
        goto done;
    }
    reg_ledger_settle(r);
done:
    checked_clear(&c);
    if (rc) reg_loaded_clear(out);
    return rc;
}

static int write_small(const char *dir, const char *name, const char *data)
{
    char *p = core_path_join(dir, name);
    if (!p) return core_err_set(MLV_ENOMEM, "out of memory");
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int rc = fd < 0 ? core_err_set(MLV_EIO, "%s: %s", p, strerror(errno))
                    : core_write_all(fd, data, strlen(data));
    if (rc == 0 && fsync(fd) != 0) rc = core_err_set(MLV_EIO, "fsync %s: %s", p, strerror(errno));
    if (fd >= 0) close(fd);
    free(p);
    return rc;
}

int reg_export_target(const char *outdir, bool *exists, char pdir[4096], char leaf[4096])
{
    *exists = false;
    struct stat st;
    if (lstat(outdir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return core_err_set(MLV_EEXISTS, "%s exists and is not a directory", outdir);
        DIR *d = opendir(outdir);
        if (!d) return core_err_set(MLV_EIO, "%s: %s", outdir, strerror(errno));
        struct dirent *e;
        bool empty = true;
        while ((e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = false;
        closedir(d);
        if (!empty) return core_err_set(MLV_EEXISTS, "%s exists and is not empty", outdir);
        *exists = true;
    }
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s", outdir);
    snprintf(b, sizeof b, "%s", outdir);
    snprintf(pdir, 4096, "%s", dirname(a));
    snprintf(leaf, 4096, "%s", basename(b));
    if (stat(pdir, &st) != 0 || !S_ISDIR(st.st_mode))
        return core_err_set(MLV_ENOTFOUND, "%s: parent folder %s does not exist", outdir, pdir);
    return 0;
}

int reg_export_place(const char *staging, const char *outdir, bool out_exists, const char *pdir)
{
    if (out_exists && rmdir(outdir) != 0)
        return core_err_set(MLV_EIO, "%s: %s", outdir, strerror(errno));
    if (rename(staging, outdir) != 0)
        return core_err_set(MLV_EIO, "rename into %s: %s", outdir, strerror(errno));
    return core_fsync_dir(pdir);
}

int reg_export(reg_ctx *r, const reg_user *actor, const char *ref, const char *outdir)
{
    int rc = reg_authorize(actor, REG_ACT_DOWNLOAD);
    if (rc) return rc;
    checked_version c = {0};
    char staging[4096] = "";
    bool out_exists = false;

    /* Decide where the files go before touching anything. */
    char pdir[4096], lname[4096];
    if ((rc = reg_export_target(outdir, &out_exists, pdir, lname)) != 0) return rc;

    if ((rc = check_version(r, ref, &c)) != 0) goto done;
    if (snprintf(staging, sizeof staging, "%s/.%s.partial-XXXXXX", pdir, lname) >=
        (int)sizeof staging) {
        rc = core_err_set(MLV_EINVAL, "%s: path too long", outdir);
        staging[0] = 0;
        goto done;
    }
    if (!mkdtemp(staging)) {
        rc = core_err_set(MLV_EIO, "create %s: %s", staging, strerror(errno));
        staging[0] = 0;
        goto done;
    }
    for (size_t i = 0; i < c.m->n_files; i++) {
        const repo_file *f = &c.m->files[i];
        char *p = core_path_join(staging, f->path);
        if (!p) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        free(p);
        if (fd < 0) {
            rc = core_err_set(MLV_EIO, "%s: %s", f->path, strerror(errno));
            goto done;
        }
        rc = repo_blob_decrypt(r->home, r->keys, f->sha256, f->size, c.wrapped[i], fd);
        if (rc == 0 && fsync(fd) != 0)
            rc = core_err_set(MLV_EIO, "fsync %s: %s", f->path, strerror(errno));
        close(fd);
        if (rc) {
            core_err_wrap("%s: %s: ", ref, f->path);
            goto done;
        }
    }
    if ((rc = write_small(staging, REG_MANIFEST_FILE, c.row.manifest)) != 0) goto done;
    if ((rc = write_small(staging, REG_SIGNATURE_FILE, c.row.signature)) != 0) goto done;
    if ((rc = core_fsync_dir(staging)) != 0) goto done;

    /* Every check passed: record the download, then make the folder appear at once. */
    char target[80];
    snprintf(target, sizeof target, "%s:%d", c.row.name, c.row.version);
    if ((rc = reg_begin(r)) != 0) goto done;
    rc = reg_audit_append(r, actor->name, "export", target, "", NULL, 0);
    if (rc == 0) rc = reg_commit(r);
    if (rc) {
        reg_rollback(r);
        goto done;
    }
    if ((rc = reg_export_place(staging, outdir, out_exists, pdir)) != 0) goto done;
    staging[0] = 0;
    rc = reg_ledger_settle(r);
done:
    if (staging[0]) core_rm_rf(staging);
    checked_clear(&c);
    return rc;
}

int reg_loaded_open_model(reg_loaded *l, const eng_load_opts *lo, eng_model **out)
{
    *out = NULL;
    if (strcmp(l->kind, "model") != 0)
        return core_err_set(MLV_EINVAL, "%s:%d is a %s, not a model", l->name, l->version, l->kind);
    int rc;
    if (!strcmp(l->format, "gguf")) {
        reg_file_mem *g = NULL;
        for (size_t i = 0; i < l->n_files; i++) {
            size_t pl = strlen(l->files[i].path);
            if (pl > 5 && !strcmp(l->files[i].path + pl - 5, ".gguf")) g = &l->files[i];
        }
        if (!g || !g->data)
            return core_err_set(MLV_EINVAL, "%s:%d has no .gguf file", l->name, l->version);
        void *img = g->data;
        g->data = NULL;
        rc = eng_model_open_mem(out, img, (size_t)g->size, free, lo);
    } else {
        eng_hf_file *files = calloc(l->n_files ? l->n_files : 1, sizeof *files);
        if (!files) return core_err_set(MLV_ENOMEM, "out of memory");
        for (size_t i = 0; i < l->n_files; i++) {
            const char *slash = strrchr(l->files[i].path, '/');
            files[i] = (eng_hf_file){slash ? slash + 1 : l->files[i].path, l->files[i].data,
                                     (size_t)l->files[i].size};
        }
        void *img = NULL;
        size_t len = 0;
        rc = eng_convert_hf_mem(files, l->n_files, ENG_OUT_AUTO, &img, &len);
        free(files);
        if (!rc) rc = eng_model_open_mem(out, img, len, free, lo);
    }
    if (rc) core_err_wrap("%s:%d: ", l->name, l->version);
    return rc;
}
