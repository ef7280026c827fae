/* registry/bundle.c: air-gap bundles between sites (DESIGN.md, Bundles) — choosing and
 * verifying what to send, wrapping its data keys for the receiving site, and, on the
 * other side, checking every manifest, signature and lineage edge against the catalog
 * before importing all new versions in one transaction. The bundle format itself, its
 * refusals and the blob checks are repo/bundle.c's. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/reg_internal.h"

/* ------------------------------------------------------------------ helpers --- */

/* A version row found by manifest digest or by name:version. */
typedef struct found {
    int64_t id;
    char name[65];
    char kind[16];
    int version;
    char digest[65];
} found;

/* 1 with *f filled when found, 0 when not, < 0 on a catalog error. */
static int find_version(reg_ctx *r, const char *digest, const char *name, int version, found *f)
{
    sqlite3_stmt *st = NULL;
    const char *sql = digest ? "SELECT v.id, a.name, a.kind, v.version, v.manifest_digest"
                               " FROM versions v JOIN artifacts a ON a.id = v.artifact_id"
                               " WHERE v.manifest_digest = ?"
                             : "SELECT v.id, a.name, a.kind, v.version, v.manifest_digest"
                               " FROM versions v JOIN artifacts a ON a.id = v.artifact_id"
                               " WHERE a.name = ? AND v.version = ?";
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "versions");
    sqlite3_bind_text(st, 1, digest ? digest : name, -1, SQLITE_STATIC);
    if (!digest) sqlite3_bind_int(st, 2, version);
    int step = sqlite3_step(st), rc = 0;
    if (step == SQLITE_ROW) {
        f->id = sqlite3_column_int64(st, 0);
        snprintf(f->name, sizeof f->name, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(f->kind, sizeof f->kind, "%s", (const char *)sqlite3_column_text(st, 2));
        f->version = sqlite3_column_int(st, 3);
        snprintf(f->digest, sizeof f->digest, "%s", (const char *)sqlite3_column_text(st, 4));
        rc = 1;
    } else if (step != SQLITE_DONE) {
        rc = reg_db_err(r, "versions");
    }
    sqlite3_finalize(st);
    return rc;
}

/* The stored size and master-wrapped data key of a blob; 0 when found, 1 when not. */
static int find_blob(reg_ctx *r, const char *sha, uint64_t *size,
                     unsigned char wrapped[REPO_WRAPPED_DEK_LEN])
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT size, wrapped_dek FROM blobs WHERE sha256 = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return reg_db_err(r, "blobs");
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    int step = sqlite3_step(st), rc = 1;
    if (step == SQLITE_ROW) {
        *size = (uint64_t)sqlite3_column_int64(st, 0);
        const char *hex = (const char *)sqlite3_column_text(st, 1);
        rc = (!wrapped || (hex && core_unhex(wrapped, REPO_WRAPPED_DEK_LEN, hex) == 0))
                 ? 0
                 : core_err_set(MLV_EINTEGRITY, "blob %s: data key record is corrupt", sha);
    } else if (step != SQLITE_DONE) {
        rc = reg_db_err(r, "blobs");
    }
    sqlite3_finalize(st);
    return rc;
}

int reg_import_key(reg_ctx *r, const reg_user *actor, char **pem, char hint[65])
{
    *pem = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    if (!(*pem = strdup(repo_keys_import_pem(r->keys))))
        return core_err_set(MLV_ENOMEM, "out of memory");
    memcpy(hint, repo_keys_import_hint(r->keys), 65);
    return 0;
}

/* ================================================================== export ==== */

/* A set of version row ids. */
typedef struct idset {
    int64_t *ids;
    size_t n, cap;
} idset;

static bool idset_has(const idset *s, int64_t id)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->ids[i] == id) return true;
    return false;
}

/* 1 when added, 0 when already there, < 0 on failure. */
static int idset_add(idset *s, int64_t id)
{
    if (idset_has(s, id)) return 0;
    if (s->n >= REPO_BUNDLE_MAX_VERSIONS)
        return core_err_set(MLV_EINVAL, "more than %d versions to bundle",
                            REPO_BUNDLE_MAX_VERSIONS);
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        int64_t *n = realloc(s->ids, cap * sizeof *n);
        if (!n) return core_err_set(MLV_ENOMEM, "out of memory");
        s->ids = n;
        s->cap = cap;
    }
    s->ids[s->n++] = id;
    return 1;
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Adds the parents of every version in s (transitively). */
static int add_ancestors(reg_ctx *r, idset *s)
{
    for (size_t i = 0; i < s->n; i++) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(r->db, "SELECT parent_id FROM lineage WHERE child_id = ?", -1, &st,
                               NULL) != SQLITE_OK)
            return reg_db_err(r, "lineage");
        sqlite3_bind_int64(st, 1, s->ids[i]);
        int rc = 0;
        while (rc >= 0 && sqlite3_step(st) == SQLITE_ROW)
            rc = idset_add(s, sqlite3_column_int64(st, 0));
        sqlite3_finalize(st);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Adds the dataset versions the lineage of each version names, when stored here. */
static int add_datasets(reg_ctx *r, idset *s, bool *added)
{
    *added = false;
    for (size_t i = 0; i < s->n; i++) {
        reg_version_row v;
        repo_manifest *m = NULL;
        int rc = reg_version_load(r, s->ids[i], &v);
        if (rc) return rc;
        rc = repo_manifest_parse(&m, v.manifest, strlen(v.manifest));
        if (rc) core_err_wrap("%s:%d: manifest: ", v.name, v.version);
        for (size_t d = 0; rc == 0 && m && d < m->n_dataset_digests; d++) {
            found f;
            int got = find_version(r, m->dataset_digests[d], NULL, 0, &f);
            if (got < 0)
                rc = got;
            else if (got == 1 && !strcmp(f.kind, "dataset")) {
                int a = idset_add(s, f.id);
                if (a < 0) rc = a;
                if (a == 1) *added = true;
            }
        }
        repo_manifest_free(m);
        reg_version_row_clear(&v);
        if (rc) return rc;
    }
    return 0;
}

/* What the export holds while it is built. */
typedef struct export_state {
    reg_version_row *rows;
    repo_bundle_version *versions;
    repo_bundle_blob *blobs;
    size_t n_versions, n_blobs, cap_blobs;
    unsigned char (*master)[REPO_WRAPPED_DEK_LEN];
    unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN];
} export_state;

static void export_state_clear(export_state *e)
{
    for (size_t i = 0; e->rows && i < e->n_versions; i++)
        reg_version_row_clear(&e->rows[i]);
    free(e->rows);
    free(e->versions);
    free(e->blobs);
    free(e->master);
    free(e->wrapped);
}

/* Adds the blobs of a version (once each) with their master-wrapped data keys. */
static int collect_blobs(reg_ctx *r, export_state *e, const repo_manifest *m)
{
    for (size_t i = 0; i < m->n_files; i++) {
        const repo_file *f = &m->files[i];
        bool dup = false;
        for (size_t j = 0; j < e->n_blobs && !dup; j++)
            dup = !strcmp(e->blobs[j].sha256, f->sha256);
        if (dup) continue;
        if (e->n_blobs >= REPO_BUNDLE_MAX_BLOBS)
            return core_err_set(MLV_EINVAL, "more than %d blobs to bundle", REPO_BUNDLE_MAX_BLOBS);
        if (e->n_blobs == e->cap_blobs) {
            size_t cap = e->cap_blobs ? 2 * e->cap_blobs : 16;
            repo_bundle_blob *nb = realloc(e->blobs, cap * sizeof *nb);
            if (!nb) return core_err_set(MLV_ENOMEM, "out of memory");
            e->blobs = nb;
            unsigned char(*nm)[REPO_WRAPPED_DEK_LEN] = realloc(e->master, cap * sizeof *nm);
            if (!nm) return core_err_set(MLV_ENOMEM, "out of memory");
            e->master = nm;
            e->cap_blobs = cap;
        }
        repo_bundle_blob *b = &e->blobs[e->n_blobs];
        memset(b, 0, sizeof *b);
        memcpy(b->sha256, f->sha256, 65);
        uint64_t size = 0;
        int rc = find_blob(r, f->sha256, &size, e->master[e->n_blobs]);
        if (rc == 1)
            rc = core_err_set(MLV_EINTEGRITY, "%s: no data key recorded for blob %s", f->path,
                              f->sha256);
        if (rc) return rc;
        if (size != f->size)
            return core_err_set(MLV_EINTEGRITY, "%s: blob %s is recorded as %llu bytes, not %llu",
                                f->path, f->sha256, (unsigned long long)size,
                                (unsigned long long)f->size);
        b->size = size;
        e->n_blobs++;
    }
    return 0;
}

/* The temp file beside `path`, created 0644 (a bundle holds only ciphertext and public
 * records); *fd and tmp are the caller's. */
static int open_beside(const char *path, char *tmp, size_t n, int *fd)
{
    char dir[4096], base[4096];
    snprintf(dir, sizeof dir, "%s", path);
    snprintf(base, sizeof base, "%s", path);
    const char *d = dirname(dir), *b = basename(base);
    struct stat st;
    if (lstat(path, &st) == 0)
        return core_err_set(MLV_EEXISTS, "%s exists; refusing to overwrite it", path);
    if (stat(d, &st) != 0 || !S_ISDIR(st.st_mode))
        return core_err_set(MLV_ENOTFOUND, "%s: folder %s does not exist", path, d);
    if (snprintf(tmp, n, "%s/.%s.partial-XXXXXX", d, b) >= (int)n)
        return core_err_set(MLV_EINVAL, "%s: path too long", path);
    if ((*fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
        int rc = core_err_set(MLV_EIO, "create %s: %s", tmp, strerror(errno));
        tmp[0] = 0;
        return rc;
    }
    fchmod(*fd, 0644);
    return 0;
}

int reg_bundle_export(reg_ctx *r, const reg_user *actor, const reg_bundle_export_opts *o,
                      json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_PUSH);
    if (rc) return rc;
    if (!o->n_refs) return core_err_set(MLV_EINVAL, "bundle export: no versions given");
    if (!o->recipient_pem)
        return core_err_set(MLV_EINVAL, "bundle export needs the receiving site's import key "
                                        "(--to IMPORTKEY.pub)");
    unsigned char recipient[REPO_X25519_LEN];
    repo_bundle b = {0};
    if ((rc = repo_import_key_parse(o->recipient_pem, recipient, b.recipient_hint)) != 0)
        return core_err_wrap("--to: ");

    idset sel = {0};
    export_state e = {0};
    char tmp[4200] = "";
    int fd = -1;
    json_t *vers = NULL;
    core_buf refs = {0};
    for (size_t i = 0; i < o->n_refs; i++) {
        int64_t id;
        if ((rc = reg_resolve(r, o->refs[i], &id, NULL, NULL)) != 0) goto done;
        if ((rc = idset_add(&sel, id)) < 0) goto done;
    }
    /* Ancestors and the datasets their lineage names, until nothing more joins. */
    for (bool more = true; more;) {
        if (o->with_ancestors && (rc = add_ancestors(r, &sel)) != 0) goto done;
        if ((rc = add_datasets(r, &sel, &more)) != 0) goto done;
    }
    /* A parent's row always precedes its children's: row order is lineage order. */
    qsort(sel.ids, sel.n, sizeof *sel.ids, cmp_id);

    e.n_versions = sel.n;
    if (!(e.rows = calloc(sel.n, sizeof *e.rows)) ||
        !(e.versions = calloc(sel.n, sizeof *e.versions)) || !(vers = json_array())) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < sel.n; i++) {
        reg_version_row *v = &e.rows[i];
        repo_manifest *m = NULL;
        char ref[96];
        if ((rc = reg_version_load(r, sel.ids[i], v)) != 0) goto done;
        snprintf(ref, sizeof ref, "%s:%d", v->name, v->version);
        /* Everything `verify` checks, every blob decrypted, before any of it leaves. */
        if ((rc = reg_verify(r, actor, ref, NULL, NULL)) != 0) {
            core_err_wrap("bundle export: ");
            goto done;
        }
        if ((rc = repo_manifest_parse(&m, v->manifest, strlen(v->manifest))) != 0) {
            core_err_wrap("%s: manifest: ", ref);
            goto done;
        }
        rc = collect_blobs(r, &e, m);
        repo_manifest_free(m);
        if (rc) goto done;
        repo_bundle_version *bv = &e.versions[i];
        snprintf(bv->kind, sizeof bv->kind, "%s", v->kind);
        snprintf(bv->name, sizeof bv->name, "%s", v->name);
        bv->version = v->version;
        memcpy(bv->digest, v->digest, 65);
        memcpy(bv->signer, v->signer, 65);
        bv->manifest = v->manifest;
        bv->manifest_len = strlen(v->manifest);
        bv->signature = v->signature;
        bv->signature_len = strlen(v->signature);
        json_array_append_new(
            vers, json_pack("{s:s,s:s,s:s}", "ref", ref, "kind", v->kind, "digest", v->digest));
        core_buf_appendf(&refs, "%s%s", i ? ", " : "", ref);
    }
    if (!(e.wrapped = calloc(e.n_blobs ? e.n_blobs : 1, sizeof *e.wrapped))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = repo_keys_rewrap_for_recipient(r->keys, recipient,
                                             (const unsigned char(*)[REPO_WRAPPED_DEK_LEN])e.master,
                                             e.n_blobs, b.ephemeral_key, e.wrapped)) != 0)
        goto done;
    for (size_t i = 0; i < e.n_blobs; i++)
        memcpy(e.blobs[i].wrapped_dek, e.wrapped[i], REPO_WRAPPED_DEK_LEN);
    b.versions = e.versions;
    b.n_versions = e.n_versions;
    b.blobs = e.blobs;
    b.n_blobs = e.n_blobs;

    if ((rc = open_beside(o->path, tmp, sizeof tmp, &fd)) != 0) goto done;
    rc = repo_bundle_write(fd, r->home, r->keys, &b);
    if (close(fd) != 0 && rc == 0) rc = core_err_set(MLV_EIO, "close %s: %s", tmp, strerror(errno));
    fd = -1;
    if (rc) goto done;

    /* Written and durable: record the download, then make the file appear at once. */
    char *list = core_buf_take(&refs);
    if (!list) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    char detail[1200], target[200];
    snprintf(target, sizeof target, "%.120s%s", o->refs[0], o->n_refs > 1 ? ", ..." : "");
    snprintf(detail, sizeof detail,
             "sha256:%s for import key %.16s: %zu versions (%.900s), %zu blobs", b.file_sha256,
             b.recipient_hint, b.n_versions, list, b.n_blobs);
    free(list);
    if ((rc = reg_begin(r)) != 0) goto done;
    rc = reg_audit_append(r, actor->name, "bundle.export", target, detail, NULL, 0);
    if (rc == 0) rc = reg_commit(r);
    if (rc) {
        reg_rollback(r);
        goto done;
    }
    if (rename(tmp, o->path) != 0) {
        rc = core_err_set(MLV_EIO, "rename into %s: %s", o->path, strerror(errno));
        goto done;
    }
    tmp[0] = 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", o->path);
    if ((rc = core_fsync_dir(dirname(dir))) != 0) goto done;
    reg_ledger_settle(r);
    *out = json_pack("{s:s,s:s,s:I,s:s,s:O,s:i}", "file", o->path, "sha256", b.file_sha256, "bytes",
                     (json_int_t)b.file_size, "recipient", b.recipient_hint, "versions", vers,
                     "blobs", (int)b.n_blobs);
    if (!*out) rc = core_err_set(MLV_ENOMEM, "out of memory");
done:
    if (fd >= 0) close(fd);
    if (tmp[0]) unlink(tmp);
    core_buf_free(&refs);
    json_decref(vers);
    export_state_clear(&e);
    free(sel.ids);
    return rc;
}

/* ================================================================== import ==== */

typedef struct incoming {
    repo_bundle_version *bv;
    repo_manifest *m;
    bool present;  /* already stored with the same digest */
    bool inserted; /* during the transaction */
} incoming;

static int trusted_cb(void *ctx, const char *hint, char **pem)
{
    return reg_trusted_pem(ctx, hint, pem);
}

/* The bundle entry of a version, by manifest digest. */
static incoming *in_bundle(incoming *in, size_t n, const char *digest)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(in[i].bv->digest, digest)) return &in[i];
    return NULL;
}

static repo_bundle_blob *bundle_blob(repo_bundle *b, const char *sha)
{
    for (size_t i = 0; i < b->n_blobs; i++)
        if (!strcmp(b->blobs[i].sha256, sha)) return &b->blobs[i];
    return NULL;
}

/* Every check on one version of the bundle that the catalog can answer. */
static int check_incoming(reg_ctx *r, repo_bundle *b, incoming *in, size_t n, incoming *x)
{
    repo_bundle_version *bv = x->bv;
    char ref[96];
    snprintf(ref, sizeof ref, "%s:%d", bv->name, bv->version);
    int rc = repo_manifest_parse(&x->m, bv->manifest, bv->manifest_len);
    if (rc) return core_err_wrap("bundle: %s: manifest: ", ref);
    const repo_manifest *m = x->m;
    char digest[65];
    repo_sha256_hex(digest, bv->manifest, bv->manifest_len);
    if (strcmp(digest, bv->digest) != 0 || strcmp(m->kind, bv->kind) != 0 ||
        strcmp(m->name, bv->name) != 0 || m->version != bv->version)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle: %s: the manifest is %s %s:%d (%.16s…), not what bundle.json "
                            "declares",
                            ref, m->kind, m->name, m->version, digest);
    rc = reg_signature_check(r, bv->signer, m, bv->digest, bv->signature);
    if (rc == MLV_ENOTFOUND)
        return core_err_set(MLV_EINTEGRITY,
                            "bundle: %s is signed by key %.16s…, which is not trusted: run "
                            "mlvault keys trust FILE.pub with the signing site's key",
                            ref, bv->signer);
    if (rc) return core_err_wrap("bundle: %s: signature: ", ref);

    /* Already here? The same digest is the same version; another digest is a conflict. */
    found f;
    int got = find_version(r, NULL, bv->name, bv->version, &f);
    if (got < 0) return got;
    if (got == 1 && strcmp(f.digest, bv->digest) != 0)
        return core_err_set(MLV_EEXISTS,
                            "bundle: %s conflicts with this site's %s (manifest %.16s…, the "
                            "bundle's is %.16s…); nothing imported",
                            ref, ref, f.digest, bv->digest);
    if (got == 1 && strcmp(f.kind, bv->kind) != 0)
        return core_err_set(MLV_EEXISTS, "bundle: %s is a %s here, a %s in the bundle", ref, f.kind,
                            bv->kind);
    x->present = got == 1;
    if (x->present) return 0;
    /* A name is a model or a dataset, here as there. */
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT kind FROM artifacts WHERE name = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "artifacts");
    sqlite3_bind_text(st, 1, bv->name, -1, SQLITE_STATIC);
    rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW &&
        strcmp((const char *)sqlite3_column_text(st, 0), bv->kind))
        rc = core_err_set(MLV_EEXISTS, "bundle: %s is a %s in the bundle, but %s is a %s here", ref,
                          bv->kind, bv->name, (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    if (rc) return rc;

    /* Each file's blob travels in the bundle with its size, or is stored here. */
    for (size_t i = 0; i < m->n_files; i++) {
        const repo_file *file = &m->files[i];
        repo_bundle_blob *bl = bundle_blob(b, file->sha256);
        uint64_t size = 0;
        if (bl)
            size = bl->size;
        else if ((rc = find_blob(r, file->sha256, &size, NULL)) != 0)
            return rc < 0 ? rc
                          : core_err_set(MLV_EINTEGRITY,
                                         "bundle: %s: %s (blob %.16s…) is neither in the bundle "
                                         "nor stored here",
                                         ref, file->path, file->sha256);
        if (size != file->size)
            return core_err_set(MLV_EINTEGRITY, "bundle: %s: %s is %llu bytes, its blob %llu", ref,
                                file->path, (unsigned long long)file->size,
                                (unsigned long long)size);
    }
    /* Each parent is in the bundle, or stored here, with the digest the manifest names. */
    for (size_t i = 0; i < m->n_parents; i++) {
        const repo_parent *p = &m->parents[i];
        incoming *pb = in_bundle(in, n, p->digest);
        if (pb && !strcmp(pb->bv->name, p->name) && pb->bv->version == p->version) continue;
        got = find_version(r, p->digest, NULL, 0, &f);
        if (got < 0) return got;
        if (got == 0 || strcmp(f.name, p->name) != 0 || f.version != p->version)
            return core_err_set(MLV_EINTEGRITY,
                                "bundle: %s: parent %s:%d (manifest %.16s…) is neither in the "
                                "bundle nor stored here (export it --with-ancestors)",
                                ref, p->name, p->version, p->digest);
    }
    return 0;
}

/* Inside the transaction: inserts x once all its parents have rows. 1 when inserted, 0
 * when a parent is still missing. */
static int insert_incoming(reg_ctx *r, incoming *x, const char *origin)
{
    const repo_manifest *m = x->m;
    int64_t *parent_ids = calloc(m->n_parents + 1, sizeof *parent_ids);
    if (!parent_ids) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < m->n_parents; i++) {
        found f;
        int got = find_version(r, m->parents[i].digest, NULL, 0, &f);
        if (got <= 0) {
            free(parent_ids);
            return got;
        }
        parent_ids[i] = f.id;
    }
    uint64_t size = 0;
    for (size_t i = 0; i < m->n_files; i++)
        size += m->files[i].size;
    int64_t art = 0, vid = 0;
    if ((rc = reg_artifact_id(r, m->name, m->kind, &art)) == 0) {
        reg_new_version nv = {.artifact_id = art,
                              .m = m,
                              .digest = x->bv->digest,
                              .manifest = x->bv->manifest,
                              .signature = x->bv->signature,
                              .signer = x->bv->signer,
                              .origin = origin,
                              .size = size,
                              .parent_ids = parent_ids};
        rc = reg_version_insert(r, &nv, &vid);
    }
    free(parent_ids);
    if (rc) return core_err_wrap("bundle: %s:%d: ", m->name, m->version);
    x->inserted = true;
    return 1;
}

int reg_bundle_import(reg_ctx *r, const reg_user *actor, const char *path, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_PUSH);
    if (rc) return rc;
    repo_bundle *b = NULL;
    incoming *in = NULL;
    repo_staged_blob **staged = NULL;
    repo_ledger_change *ch = NULL;
    char(*paths)[2][200] = NULL;
    json_t *vers = json_array();
    core_buf refs = {0};
    char *list = NULL, *origin = NULL;
    size_t n_new = 0, n_staged = 0, n_new_blobs = 0;
    bool in_tx = false;
    if (!vers) return core_err_set(MLV_ENOMEM, "out of memory");

    /* Everything the bundle alone can prove: repo checks it all, blobs included. */
    if ((rc = repo_bundle_read(&b, path, r->home, r->keys, trusted_cb, r)) != 0) goto done;
    if (!(in = calloc(b->n_versions, sizeof *in))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < b->n_versions; i++)
        in[i].bv = &b->versions[i];
    for (size_t i = 0; i < b->n_versions; i++)
        if ((rc = check_incoming(r, b, in, b->n_versions, &in[i])) != 0) goto done;
    for (size_t i = 0; i < b->n_versions; i++) {
        if (in[i].present) continue;
        n_new++;
        char ref[96];
        snprintf(ref, sizeof ref, "%s:%d", in[i].bv->name, in[i].bv->version);
        core_buf_appendf(&refs, "%s%s", n_new > 1 ? ", " : "", ref);
    }
    for (size_t i = 0; i < b->n_versions; i++) {
        char ref[96];
        snprintf(ref, sizeof ref, "%s:%d", in[i].bv->name, in[i].bv->version);
        json_array_append_new(vers, json_pack("{s:s,s:s,s:s,s:s}", "ref", ref, "kind",
                                              in[i].bv->kind, "digest", in[i].bv->digest, "status",
                                              in[i].present ? "present" : "imported"));
    }

    if (n_new > 0) {
        /* The blobs the new versions use, recorded as intents before any is moved. */
        if (!(staged = calloc(b->n_blobs ? b->n_blobs : 1, sizeof *staged)) ||
            !(ch = calloc(2 * n_new, sizeof *ch)) || !(paths = calloc(n_new, sizeof *paths))) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < b->n_blobs; i++) {
            bool used = false;
            for (size_t v = 0; v < b->n_versions && !used; v++)
                for (size_t f = 0; !in[v].present && f < in[v].m->n_files && !used; f++)
                    used = !strcmp(in[v].m->files[f].sha256, b->blobs[i].sha256);
            if (used) staged[n_staged++] = &b->blobs[i].staged;
        }
        if ((rc = reg_blob_intents_add(r, staged, n_staged)) != 0) goto done;

        char at[21];
        core_time_iso(at);
        core_buf ob = {0};
        core_buf_appendf(&ob, "bundle sha256:%s from %s at %s", b->file_sha256, b->sender_hint, at);
        if (!(origin = core_buf_take(&ob)) || !(list = core_buf_take(&refs))) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
        if ((rc = reg_begin(r)) != 0) goto done;
        in_tx = true;
        if ((rc = reg_blobs_store(r, staged, n_staged, &n_new_blobs)) != 0) goto done;
        /* Parents first: each pass inserts what has all its parents. */
        for (size_t done_n = 0; done_n < n_new;) {
            size_t before = done_n;
            for (size_t i = 0; i < b->n_versions; i++) {
                if (in[i].present || in[i].inserted) continue;
                int got = insert_incoming(r, &in[i], origin);
                if (got < 0) {
                    rc = got;
                    goto done;
                }
                if (got == 1) done_n++;
            }
            if (done_n == before) {
                rc = core_err_set(MLV_EINTEGRITY, "bundle: its lineage has a cycle");
                goto done;
            }
        }
        size_t k = 0;
        for (size_t i = 0; i < b->n_versions; i++) {
            if (in[i].present) continue;
            repo_bundle_version *bv = in[i].bv;
            char dir[160];
            reg_version_ledger_dir(dir, sizeof dir, bv->kind, bv->name, bv->version);
            snprintf(paths[k][0], sizeof paths[k][0], "%s/manifest.json", dir);
            snprintf(paths[k][1], sizeof paths[k][1], "%s/signature", dir);
            ch[2 * k] = (repo_ledger_change){paths[k][0], bv->manifest, bv->manifest_len};
            ch[2 * k + 1] = (repo_ledger_change){paths[k][1], bv->signature, bv->signature_len};
            k++;
        }
        char target[80], detail[1200];
        snprintf(target, sizeof target, "sha256:%.64s", b->file_sha256);
        snprintf(detail, sizeof detail, "%zu versions from key %.16s: %.1000s", n_new,
                 b->sender_hint, list);
        if ((rc = reg_audit_append(r, actor->name, "bundle.import", target, detail, ch,
                                   2 * n_new)) != 0)
            goto done;
        if ((rc = reg_commit(r)) != 0) goto done;
        in_tx = false;
        reg_ledger_settle(r);
    }
    *out = json_pack("{s:s,s:s,s:s,s:b,s:O,s:i,s:i,s:i}", "file", path, "sha256", b->file_sha256,
                     "sender", b->sender_hint, "changed", n_new > 0, "versions", vers, "imported",
                     (int)n_new, "present", (int)(b->n_versions - n_new), "new_blobs",
                     (int)n_new_blobs);
    if (!*out) rc = core_err_set(MLV_ENOMEM, "out of memory");
done:
    if (in_tx) reg_rollback(r);
    for (size_t i = 0; in && b && i < b->n_versions; i++)
        repo_manifest_free(in[i].m);
    free(in);
    free(staged);
    free(ch);
    free(paths);
    free(list);
    free(origin);
    core_buf_free(&refs);
    json_decref(vers);
    repo_bundle_free(b); /* discards every staged blob not moved into objects/ */
    return rc;
}
