/* registry/query.c: read-only views of the catalog — references, version rows, list,
 * show and the lineage graph — as JSON shared by the CLI and the HTTP API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/reg_internal.h"

int reg_ref_parse(const char *s, reg_ref *out)
{
    memset(out, 0, sizeof *out);
    if (!s || !*s) return core_err_set(MLV_EINVAL, "empty reference");
    size_t n = strlen(s);
    if (n > 200) return core_err_set(MLV_EINVAL, "reference too long");
    const char *colon = strchr(s, ':'), *at = strchr(s, '@');
    if (colon && at) return core_err_set(MLV_EINVAL, "invalid reference '%s'", s);
    const char *sep = colon ? colon : at;
    size_t nl = sep ? (size_t)(sep - s) : n;
    if (nl >= sizeof out->name) return core_err_set(MLV_EINVAL, "invalid name in '%s'", s);
    memcpy(out->name, s, nl);
    out->name[nl] = 0;
    if (!core_name_valid(out->name))
        return core_err_set(MLV_EINVAL,
                            "invalid name in reference '%s': use [a-z0-9][a-z0-9._-]{0,63}", s);
    if (colon) {
        const char *v = colon + 1;
        char *end;
        if (*v < '1' || *v > '9') return core_err_set(MLV_EINVAL, "invalid version in '%s'", s);
        long x = strtol(v, &end, 10);
        if (*end || x < 1 || x > 1000000000)
            return core_err_set(MLV_EINVAL, "invalid version in '%s'", s);
        out->version = (int)x;
    } else if (at) {
        if (!core_name_valid(at + 1)) return core_err_set(MLV_EINVAL, "invalid channel in '%s'", s);
        snprintf(out->channel, sizeof out->channel, "%s", at + 1);
    }
    return 0;
}

int reg_resolve(reg_ctx *r, const char *ref, int64_t *version_id, char name[65], int *version)
{
    reg_ref p;
    int rc = reg_ref_parse(ref, &p);
    if (rc) return rc;
    if (p.channel[0])
        return core_err_set(MLV_ENOTFOUND, "%s: channel %s of %s is not set", ref, p.channel,
                            p.name);
    sqlite3_stmt *st = NULL;
    const char *sql = p.version
                          ? "SELECT v.id, v.version FROM versions v JOIN artifacts a"
                            " ON a.id = v.artifact_id WHERE a.name = ? AND v.version = ?"
                          : "SELECT v.id, v.version FROM versions v JOIN artifacts a"
                            " ON a.id = v.artifact_id WHERE a.name = ? ORDER BY v.version DESC"
                            " LIMIT 1";
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) return reg_db_err(r, "resolve");
    sqlite3_bind_text(st, 1, p.name, -1, SQLITE_STATIC);
    if (p.version) sqlite3_bind_int(st, 2, p.version);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        *version_id = sqlite3_column_int64(st, 0);
        if (version) *version = sqlite3_column_int(st, 1);
        if (name) snprintf(name, 65, "%s", p.name);
        rc = 0;
    } else if (step == SQLITE_DONE) {
        rc = p.version
                 ? core_err_set(MLV_ENOTFOUND, "%s: no version %d of %s", ref, p.version, p.name)
                 : core_err_set(MLV_ENOTFOUND, "%s: no such model or dataset", ref);
    } else {
        rc = reg_db_err(r, "resolve");
    }
    sqlite3_finalize(st);
    return rc;
}

static char *dup_col(sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    return strdup(s ? s : "");
}

int reg_version_load(reg_ctx *r, int64_t id, reg_version_row *out)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT v.id, a.name, a.kind, v.version, v.manifest_digest, v.manifest,"
                           " v.signature, v.created_by, v.created_at, v.size, v.signer, v.origin"
                           " FROM versions v"
                           " JOIN artifacts a ON a.id = v.artifact_id WHERE v.id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "load version");
    sqlite3_bind_int64(st, 1, id);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        out->id = sqlite3_column_int64(st, 0);
        snprintf(out->name, sizeof out->name, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(out->kind, sizeof out->kind, "%s", (const char *)sqlite3_column_text(st, 2));
        out->version = sqlite3_column_int(st, 3);
        snprintf(out->digest, sizeof out->digest, "%s", (const char *)sqlite3_column_text(st, 4));
        out->manifest = dup_col(st, 5);
        out->signature = dup_col(st, 6);
        snprintf(out->created_by, sizeof out->created_by, "%s",
                 (const char *)sqlite3_column_text(st, 7));
        snprintf(out->created_at, sizeof out->created_at, "%s",
                 (const char *)sqlite3_column_text(st, 8));
        out->size = (uint64_t)sqlite3_column_int64(st, 9);
        snprintf(out->signer, sizeof out->signer, "%s", (const char *)sqlite3_column_text(st, 10));
        out->origin = dup_col(st, 11);
        if (!out->manifest || !out->signature || !out->origin)
            rc = core_err_set(MLV_ENOMEM, "out of memory");
    } else {
        rc = core_err_set(MLV_ENOTFOUND, "version row %lld not found", (long long)id);
    }
    sqlite3_finalize(st);
    if (rc) reg_version_row_clear(out);
    return rc;
}

void reg_version_row_clear(reg_version_row *v)
{
    free(v->manifest);
    free(v->signature);
    free(v->origin);
    v->manifest = v->signature = v->origin = NULL;
}

void reg_version_ledger_dir(char *out, size_t n, const char *kind, const char *name, int v)
{
    snprintf(out, n, "%s/%s/%d", !strcmp(kind, "dataset") ? "datasets" : "models", name, v);
}

/* ------------------------------------------------------------------------ list --- */

static json_t *manifest_summary(const char *manifest_text)
{
    json_error_t e;
    return json_loads(manifest_text, 0, &e);
}

int reg_list(reg_ctx *r, const reg_user *actor, const char *name, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    if (name && !core_name_valid(name)) return core_err_set(MLV_EINVAL, "invalid name '%s'", name);
    sqlite3_stmt *st = NULL;
    const char *sql =
        name ? "SELECT a.name, a.kind, v.version, v.manifest_digest, v.size, v.manifest,"
               " v.created_by, v.created_at FROM versions v JOIN artifacts a"
               " ON a.id = v.artifact_id WHERE a.name = ? ORDER BY v.version"
             : "SELECT a.name, a.kind, v.version, v.manifest_digest, v.size, v.manifest,"
               " v.created_by, v.created_at, (SELECT COUNT(*) FROM versions w"
               " WHERE w.artifact_id = a.id) FROM artifacts a JOIN versions v"
               " ON v.artifact_id = a.id AND v.version = (SELECT MAX(version) FROM versions"
               " WHERE artifact_id = a.id) ORDER BY a.kind DESC, a.name";
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) return reg_db_err(r, "list");
    if (name) sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    json_t *arr = json_array();
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *m = manifest_summary((const char *)sqlite3_column_text(st, 5));
        json_t *o = json_pack(
            "{s:s,s:s,s:i,s:s,s:I,s:O,s:O,s:O,s:O,s:s,s:s}", "name",
            (const char *)sqlite3_column_text(st, 0), "kind",
            (const char *)sqlite3_column_text(st, 1), "version", sqlite3_column_int(st, 2),
            "digest", (const char *)sqlite3_column_text(st, 3), "size",
            (json_int_t)sqlite3_column_int64(st, 4), "format",
            json_object_get(m, "format") ? json_object_get(m, "format") : json_null(),
            "architecture",
            json_object_get(m, "architecture") ? json_object_get(m, "architecture") : json_null(),
            "parameters",
            json_object_get(m, "parameters") ? json_object_get(m, "parameters") : json_null(),
            "tensor_types",
            json_object_get(m, "tensor_types") ? json_object_get(m, "tensor_types") : json_null(),
            "created_by", (const char *)sqlite3_column_text(st, 6), "created_at",
            (const char *)sqlite3_column_text(st, 7));
        if (o && name) json_object_set(o, "note", json_object_get(m, "note"));
        if (o && !name) json_object_set_new(o, "versions", json_integer(sqlite3_column_int(st, 8)));
        json_decref(m);
        if (!o) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
        json_array_append_new(arr, o);
    }
    if (rc == 0 && step != SQLITE_DONE) rc = reg_db_err(r, "list");
    sqlite3_finalize(st);
    if (rc == 0 && name && json_array_size(arr) == 0)
        rc = core_err_set(MLV_ENOTFOUND, "no model or dataset named %s", name);
    if (rc)
        json_decref(arr);
    else
        *out = arr;
    return rc;
}

/* ------------------------------------------------------------------------ show --- */

json_t *reg_refs_from(sqlite3_stmt *st)
{
    json_t *arr = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        char ref[96];
        snprintf(ref, sizeof ref, "%s:%d", (const char *)sqlite3_column_text(st, 0),
                 sqlite3_column_int(st, 1));
        json_array_append_new(arr, json_string(ref));
    }
    sqlite3_finalize(st);
    return arr;
}

/* Refs of the versions linked to `id` (its parents when parents=1, else children). */
static json_t *linked(reg_ctx *r, int64_t id, int parents)
{
    const char *sql = parents ? "SELECT a.name, v.version FROM lineage l JOIN versions v"
                                " ON v.id = l.parent_id JOIN artifacts a ON a.id = v.artifact_id"
                                " WHERE l.child_id = ? ORDER BY a.name, v.version"
                              : "SELECT a.name, v.version FROM lineage l JOIN versions v"
                                " ON v.id = l.child_id JOIN artifacts a ON a.id = v.artifact_id"
                                " WHERE l.parent_id = ? ORDER BY a.name, v.version";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) return json_array();
    sqlite3_bind_int64(st, 1, id);
    return reg_refs_from(st);
}

/* The signer's name as this registry knows it ("self" for its own key). */
static void signer_name(reg_ctx *r, const char *hint, char *out, size_t n)
{
    sqlite3_stmt *st = NULL;
    snprintf(out, n, "an unknown key");
    if (sqlite3_prepare_v2(r->db, "SELECT name FROM trusted_keys WHERE hint = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return;
    sqlite3_bind_text(st, 1, hint, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

int reg_show(reg_ctx *r, const reg_user *actor, const char *ref, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_PULL);
    if (rc) return rc;
    if ((rc = reg_node_scope_ref(r, actor, ref)) != 0) return rc;
    int64_t id;
    reg_version_row v;
    if ((rc = reg_resolve(r, ref, &id, NULL, NULL)) != 0) return rc;
    if ((rc = reg_version_load(r, id, &v)) != 0) return rc;

    json_error_t e;
    json_t *m = json_loads(v.manifest, 0, &e);
    if (!m) {
        reg_version_row_clear(&v);
        return core_err_set(MLV_EINTEGRITY, "%s: stored manifest is not JSON", ref);
    }
    /* Signature state: the bundle against the manifest's own file list and digest, with
     * the key that signed it. */
    repo_manifest *pm = NULL;
    char signer[80], detail[700];
    signer_name(r, v.signer, signer, sizeof signer);
    const char *state = "valid";
    snprintf(detail, sizeof detail, "signed by %s's key", signer);
    char mdigest[65];
    repo_sha256_hex(mdigest, v.manifest, strlen(v.manifest));
    if (strcmp(mdigest, v.digest) != 0) {
        state = "invalid";
        snprintf(detail, sizeof detail, "manifest digest does not match");
    } else if (repo_manifest_parse(&pm, v.manifest, strlen(v.manifest)) != 0 ||
               reg_signature_check(r, v.signer, pm, v.digest, v.signature) != 0) {
        state = "invalid";
        snprintf(detail, sizeof detail, "%s", core_err_last());
    }
    repo_manifest_free(pm);
    char vref[96];
    snprintf(vref, sizeof vref, "%s:%d", v.name, v.version);
    json_t *o = json_pack(
        "{s:s,s:s,s:i,s:s,s:s,s:I,s:O,s:O,s:{s:s,s:s,s:s,s:s,s:s},s:o,s:o,s:s,s:s,s:s}", "ref",
        vref, "name", v.name, "version", v.version, "kind", v.kind, "digest", v.digest, "size",
        (json_int_t)v.size, "manifest", m, "files", json_object_get(m, "files"), "signature",
        "state", state, "detail", detail, "format",
        "model-signing/v1.0 (sigstore bundle v0.3, ECDSA P-256)", "key_hint", v.signer, "signer",
        signer, "parents", linked(r, id, 1), "children", linked(r, id, 0), "created_by",
        v.created_by, "created_at", v.created_at, "origin", v.origin[0] ? v.origin : "local");
    if (o && actor->role == REG_ROLE_NODE)
        /* a node reads its model's versions, not what else the registry holds: derived
         * versions (of other models) and the datasets of evaluations stay hidden */
        json_object_del(o, "children");
    else if (o)
        json_object_set_new(o, "evaluations", reg_eval_list_json(r, id));
    json_decref(m);
    reg_version_row_clear(&v);
    if (!o) return core_err_set(MLV_ENOMEM, "out of memory");
    *out = o;
    return 0;
}

/* --------------------------------------------------------------------- lineage --- */

static int add_node(reg_ctx *r, json_t *nodes, json_t *seen, int64_t id)
{
    char key[32];
    snprintf(key, sizeof key, "%lld", (long long)id);
    if (json_object_get(seen, key)) return 0;
    reg_version_row v;
    int rc = reg_version_load(r, id, &v);
    if (rc) return rc;
    json_error_t e;
    json_t *m = json_loads(v.manifest, 0, &e);
    char ref[96];
    snprintf(ref, sizeof ref, "%s:%d", v.name, v.version);
    json_t *job = json_object_get(json_object_get(m, "lineage"), "job");
    json_object_set_new(seen, key, json_string(ref));
    json_array_append_new(
        nodes, json_pack("{s:s,s:s,s:i,s:s,s:s,s:O,s:I,s:O}", "id", ref, "name", v.name, "version",
                         v.version, "kind", v.kind, "digest", v.digest, "format",
                         json_object_get(m, "format") ? json_object_get(m, "format") : json_null(),
                         "size", (json_int_t)v.size, "job", job ? job : json_null()));
    json_decref(m);
    reg_version_row_clear(&v);
    return 1; /* newly added */
}

/* Walks up (parents) or down (children) from `start`, adding every version reached. */
static int walk(reg_ctx *r, int64_t start, int up, json_t *nodes, json_t *seen)
{
    size_t head = 0, tail = 0, cap = 64;
    int64_t *queue = malloc(sizeof *queue * cap);
    if (!queue) return core_err_set(MLV_ENOMEM, "out of memory");
    queue[tail++] = start;
    int rc = 0;
    const char *sql = up ? "SELECT parent_id FROM lineage WHERE child_id = ?"
                         : "SELECT child_id FROM lineage WHERE parent_id = ?";
    while (rc == 0 && head < tail) {
        int64_t cur = queue[head++];
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) {
            rc = reg_db_err(r, "lineage");
            break;
        }
        sqlite3_bind_int64(st, 1, cur);
        while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
            int64_t next = sqlite3_column_int64(st, 0);
            int added = add_node(r, nodes, seen, next);
            if (added < 0) rc = added;
            if (added != 1) continue;
            if (tail == cap) {
                int64_t *nq = realloc(queue, sizeof *nq * cap * 2);
                if (!nq) {
                    rc = core_err_set(MLV_ENOMEM, "out of memory");
                    break;
                }
                queue = nq;
                cap *= 2;
            }
            queue[tail++] = next;
        }
        sqlite3_finalize(st);
    }
    free(queue);
    return rc;
}

/* Every lineage edge whose two ends are both in the graph (`seen`: row id -> ref). */
static int collect_edges(reg_ctx *r, json_t *seen, json_t *edges)
{
    const char *key;
    json_t *ref;
    json_object_foreach(seen, key, ref)
    {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(r->db,
                               "SELECT parent_id FROM lineage WHERE child_id = ?"
                               " ORDER BY parent_id",
                               -1, &st, NULL) != SQLITE_OK)
            return reg_db_err(r, "lineage");
        sqlite3_bind_int64(st, 1, strtoll(key, NULL, 10));
        while (sqlite3_step(st) == SQLITE_ROW) {
            char pk[32];
            snprintf(pk, sizeof pk, "%lld", (long long)sqlite3_column_int64(st, 0));
            json_t *from = json_object_get(seen, pk);
            if (from) json_array_append_new(edges, json_pack("{s:O,s:O}", "from", from, "to", ref));
        }
        sqlite3_finalize(st);
    }
    return 0;
}

int reg_lineage(reg_ctx *r, const reg_user *actor, const char *ref, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    int64_t id;
    if ((rc = reg_resolve(r, ref, &id, NULL, NULL)) != 0) return rc;
    json_t *nodes = json_array(), *edges = json_array(), *seen = json_object();
    rc = add_node(r, nodes, seen, id);
    if (rc >= 0) rc = walk(r, id, 1, nodes, seen);
    if (rc == 0) rc = walk(r, id, 0, nodes, seen);
    if (rc == 0) rc = collect_edges(r, seen, edges);
    if (rc == 0) {
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)id);
        *out = json_pack("{s:O,s:o,s:o}", "root", json_object_get(seen, key), "nodes", nodes,
                         "edges", edges);
        nodes = edges = NULL;
        if (!*out) rc = core_err_set(MLV_ENOMEM, "out of memory");
    }
    json_decref(nodes);
    json_decref(edges);
    json_decref(seen);
    return rc;
}
