/* registry/trust.c: the signing keys this registry trusts — its own ("self") and other
 * sites' keys added by an admin for bundle imports — and the one place where a
 * version's model-signing bundle is checked against the key that signed it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/reg_internal.h"

void reg_key_hint(char out[65], const char *pem)
{
    repo_sha256_hex(out, pem, strlen(pem));
}

/* Inside a transaction. */
static int insert_key(reg_ctx *r, const char *hint, const char *pem, const char *name, int self,
                      const char *actor)
{
    char at[21];
    core_time_iso(at);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO trusted_keys(hint, pem, name, self, added_by, added_at)"
                           " VALUES(?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "trusted keys");
    sqlite3_bind_text(st, 1, hint, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, pem, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, self);
    sqlite3_bind_text(st, 5, actor, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, at, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    if (step == SQLITE_CONSTRAINT)
        return core_err_set(MLV_EEXISTS, "key %.16s… is already trusted", hint);
    return step == SQLITE_DONE ? 0 : reg_db_err(r, "trusted keys");
}

int reg_trust_self_locked(reg_ctx *r, const char *pem)
{
    char hint[65];
    reg_key_hint(hint, pem);
    return insert_key(r, hint, pem, "self", 1, "admin");
}

int reg_trusted_pem(reg_ctx *r, const char *hint, char **pem)
{
    *pem = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT pem FROM trusted_keys WHERE hint = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "trusted keys");
    sqlite3_bind_text(st, 1, hint, -1, SQLITE_STATIC);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *pem = strdup((const char *)sqlite3_column_text(st, 0));
        if (!*pem) rc = core_err_set(MLV_ENOMEM, "out of memory");
    } else {
        rc = core_err_set(MLV_ENOTFOUND,
                          "signing key %.16s… is not trusted here (mlvault keys trust FILE.pub)",
                          hint);
    }
    sqlite3_finalize(st);
    return rc;
}

repo_sig_resource *reg_version_resources(const repo_manifest *m, const char *digest)
{
    repo_sig_resource *res = calloc(m->n_files + 1, sizeof *res);
    if (!res) {
        core_err_set(MLV_ENOMEM, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < m->n_files; i++) {
        res[i].name = m->files[i].path;
        memcpy(res[i].sha256, m->files[i].sha256, 65);
    }
    res[m->n_files].name = REG_MANIFEST_FILE;
    memcpy(res[m->n_files].sha256, digest, 65);
    return res;
}

int reg_signature_check(reg_ctx *r, const char *signer, const repo_manifest *m, const char *digest,
                        const char *signature)
{
    char *pem = NULL;
    int rc = reg_trusted_pem(r, signer, &pem);
    if (rc) return rc;
    repo_sig_resource *res = reg_version_resources(m, digest);
    if (!res) {
        free(pem);
        return core_err_code();
    }
    rc = repo_sig_verify(signature, strlen(signature), pem, res, m->n_files + 1);
    free(res);
    free(pem);
    return rc;
}

int reg_key_trust(reg_ctx *r, const reg_user *actor, const char *pem, const char *name,
                  char hint_out[65])
{
    int rc = reg_authorize(actor, REG_ACT_ADMIN);
    if (rc) return rc;
    if (!core_name_valid(name))
        return core_err_set(MLV_EINVAL, "invalid key name '%s': use [a-z0-9][a-z0-9._-]{0,63}",
                            name);
    /* Stored in canonical form, so its hint is the one signatures carry. */
    char *canon = NULL;
    if ((rc = repo_pubkey_canonical(pem, &canon, hint_out)) != 0)
        return core_err_wrap("key %s: ", name);
    char path[128];
    snprintf(path, sizeof path, "keys/trusted/%s.pem", hint_out);
    repo_ledger_change ch = {path, canon, strlen(canon)};
    if ((rc = reg_begin(r)) != 0) {
        free(canon);
        return rc;
    }
    rc = insert_key(r, hint_out, canon, name, 0, actor->name);
    char detail[100];
    snprintf(detail, sizeof detail, "key %s", hint_out);
    if (rc == 0) rc = reg_audit_append(r, actor->name, "key.trust", name, detail, &ch, 1);
    if (rc == 0) rc = reg_commit(r);
    free(canon);
    if (rc) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

int reg_key_list(reg_ctx *r, const reg_user *actor, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT hint, name, self, added_by, added_at FROM trusted_keys"
                           " ORDER BY self DESC, name",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "trusted keys");
    json_t *arr = json_array();
    while (sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:b,s:s,s:s}", "hint",
                                             (const char *)sqlite3_column_text(st, 0), "name",
                                             (const char *)sqlite3_column_text(st, 1), "self",
                                             sqlite3_column_int(st, 2), "added_by",
                                             (const char *)sqlite3_column_text(st, 3), "added_at",
                                             (const char *)sqlite3_column_text(st, 4)));
    sqlite3_finalize(st);
    *out = arr;
    return 0;
}
