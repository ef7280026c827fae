/* registry/auth.c: identity and roles. Tokens are 32 random bytes shown once as
 * "mlv_<64 hex>"; the catalog keeps only their SHA-256 (a token has full entropy, so a
 * plain hash is enough — no password stretching needed). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/reg_internal.h"

static const char *ROLE_NAMES[] = {"viewer", "engineer", "approver", "admin", "node"};

const char *reg_role_name(reg_role r)
{
    return (unsigned)r < sizeof ROLE_NAMES / sizeof *ROLE_NAMES ? ROLE_NAMES[r] : "unknown";
}

int reg_role_parse(const char *s, reg_role *out)
{
    for (size_t i = 0; i < sizeof ROLE_NAMES / sizeof *ROLE_NAMES; i++)
        if (s && !strcmp(s, ROLE_NAMES[i])) {
            *out = (reg_role)i;
            return 0;
        }
    return core_err_set(MLV_EINVAL, "unknown role '%s' (viewer, engineer, approver, admin, node)",
                        s ? s : "");
}

static void token_hash(char out[65], const char *token)
{
    repo_sha256_hex(out, token, strlen(token));
}

static int row_to_user(sqlite3_stmt *st, reg_user *u)
{
    memset(u, 0, sizeof *u);
    u->id = sqlite3_column_int64(st, 0);
    snprintf(u->name, sizeof u->name, "%s", (const char *)sqlite3_column_text(st, 1));
    if (reg_role_parse((const char *)sqlite3_column_text(st, 2), &u->role) != 0)
        return core_err_set(MLV_EINTEGRITY, "user %s has an unknown role", u->name);
    u->disabled = sqlite3_column_int(st, 3) != 0;
    snprintf(u->created_at, sizeof u->created_at, "%s", (const char *)sqlite3_column_text(st, 4));
    return 0;
}

int reg_authenticate(reg_ctx *r, const char *token, reg_user *out)
{
    if (!token || !*token)
        return core_err_set(MLV_EAUTH, "no token: set MLVAULT_TOKEN or pass --token");
    if (!strncmp(token, "mlvj_", 5)) return reg_job_authenticate(r, token, out);
    if (strncmp(token, "mlv_", 4) != 0 || !core_is_hex(token + 4, 64))
        return core_err_set(MLV_EAUTH, "invalid token: not an mlvault token");
    char h[65];
    token_hash(h, token);
    sqlite3_stmt *st = NULL;
    int rc;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT id, name, role, disabled, created_at FROM users"
                           " WHERE token_hash = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "authenticate");
    sqlite3_bind_text(st, 1, h, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        rc = row_to_user(st, out);
        if (rc == 0 && out->disabled)
            rc = core_err_set(MLV_EAUTH, "user %s is disabled", out->name);
    } else if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_EAUTH, "invalid token: no user has this token");
    } else {
        rc = reg_db_err(r, "authenticate");
    }
    sqlite3_finalize(st);
    return rc;
}

/* The policy, deny by default: a role not named for an action may not do it. `node`
 * may only pull (its enrolled model: reg_node_scope) and do node things. */
int reg_authorize(const reg_user *u, reg_action a)
{
    bool ok = false;
    reg_role ro = u->role;
    bool person = ro == REG_ROLE_VIEWER || ro == REG_ROLE_ENGINEER || ro == REG_ROLE_APPROVER ||
                  ro == REG_ROLE_ADMIN;
    switch (a) {
    case REG_ACT_READ:
    case REG_ACT_DOWNLOAD: ok = person; break;
    case REG_ACT_PUSH:
    case REG_ACT_JOB:
    case REG_ACT_PROMOTE: ok = ro == REG_ROLE_ENGINEER || ro == REG_ROLE_ADMIN; break;
    case REG_ACT_ADMIN:
    case REG_ACT_CHANNEL: ok = ro == REG_ROLE_ADMIN; break;
    case REG_ACT_AUDIT: ok = ro == REG_ROLE_ADMIN || ro == REG_ROLE_APPROVER; break;
    case REG_ACT_APPROVE: ok = ro == REG_ROLE_APPROVER; break;
    case REG_ACT_PULL: ok = person || ro == REG_ROLE_NODE; break;
    case REG_ACT_NODE: ok = ro == REG_ROLE_NODE; break;
    }
    if (u->disabled) return core_err_set(MLV_EAUTH, "user %s is disabled", u->name);
    if (ok) return 0;
    static const char *what[] = {
        "read the registry",  "download artifacts",           "push artifacts",
        "administer users",   "read the audit log",           "run jobs",
        "request promotions", "approve or reject promotions", "set channel policies",
        "pull models",        "act as a serving node"};
    return core_err_set(MLV_EFORBIDDEN, "forbidden: %s (role %s) may not %s", u->name,
                        reg_role_name(u->role), what[a]);
}

/* A fresh token ("mlv_" + 64 hex of 32 random bytes) and its hash. */
static int new_token(char token[REG_TOKEN_LEN + 1], char hash[65])
{
    unsigned char raw[32];
    int rc = core_random(raw, sizeof raw);
    if (rc) return rc;
    memcpy(token, "mlv_", 4);
    core_hex(token + 4, raw, sizeof raw);
    token_hash(hash, token);
    return 0;
}

int reg_user_insert_locked(reg_ctx *r, const char *actor, const char *name, reg_role role,
                           char token_out[REG_TOKEN_LEN + 1])
{
    char h[65], at[21];
    int rc = new_token(token_out, h);
    if (rc) return rc;
    core_time_iso(at);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO users(name, role, token_hash, created_at, created_by)"
                           " VALUES(?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "add user");
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, reg_role_name(role), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, h, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, at, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, actor, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_CONSTRAINT)
        rc = core_err_set(MLV_EEXISTS, "user %s already exists", name);
    else if (step != SQLITE_DONE)
        rc = reg_db_err(r, "add user");
    sqlite3_finalize(st);
    if (rc) memset(token_out, 0, REG_TOKEN_LEN + 1);
    return rc;
}

int reg_user_create_locked(reg_ctx *r, const char *actor, const char *name, reg_role role,
                           char token_out[REG_TOKEN_LEN + 1])
{
    int rc = reg_user_insert_locked(r, actor, name, role, token_out);
    if (rc) return rc;
    char detail[64];
    snprintf(detail, sizeof detail, "role=%s", reg_role_name(role));
    return reg_audit_append(r, actor, "user.add", name, detail, NULL, 0);
}

int reg_user_add(reg_ctx *r, const reg_user *actor, const char *name, reg_role role,
                 char token_out[REG_TOKEN_LEN + 1])
{
    int rc = reg_authorize(actor, REG_ACT_ADMIN);
    if (rc) return rc;
    if (!core_name_valid(name))
        return core_err_set(MLV_EINVAL, "invalid user name '%s': use [a-z0-9][a-z0-9._-]{0,63}",
                            name);
    if ((rc = reg_begin(r)) != 0) return rc;
    rc = reg_user_create_locked(r, actor->name, name, role, token_out);
    if (rc == 0) rc = reg_commit(r);
    if (rc != 0) {
        reg_rollback(r);
        memset(token_out, 0, REG_TOKEN_LEN + 1);
        return rc;
    }
    return reg_ledger_settle(r);
}

/* One UPDATE of the user `name` (?2 in sql; ?1 is `value`, may be NULL), audited as
 * `action` in its own transaction; `missing` is the message when no row changed. */
static int user_update(reg_ctx *r, const reg_user *actor, const char *sql, const char *value,
                       const char *name, const char *action, const char *missing)
{
    int rc = reg_begin(r);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, action);
        goto done;
    }
    if (value) sqlite3_bind_text(st, 1, value, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = reg_db_err(r, action);
    else if (sqlite3_changes(r->db) == 0)
        rc = core_err_set(MLV_ENOTFOUND, "%s '%s'", missing, name);
    if (rc == 0) rc = reg_audit_append(r, actor->name, action, name, "", NULL, 0);
    if (rc == 0) rc = reg_commit(r);
done:
    sqlite3_finalize(st);
    if (rc != 0) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

int reg_user_disable(reg_ctx *r, const reg_user *actor, const char *name)
{
    int rc = reg_authorize(actor, REG_ACT_ADMIN);
    if (rc) return rc;
    if (!strcmp(actor->name, name)) return core_err_set(MLV_EINVAL, "you cannot disable yourself");
    return user_update(r, actor, "UPDATE users SET disabled = 1 WHERE name = ?2 AND disabled = 0",
                       NULL, name, "user.disable", "no enabled user named");
}

int reg_user_list(reg_ctx *r, const reg_user *actor, reg_user **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    int rc = reg_authorize(actor, REG_ACT_ADMIN);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT id, name, role, disabled, created_at FROM users"
                           " ORDER BY name",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "list users");
    size_t cap = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            reg_user *nu = realloc(*out, cap * sizeof *nu);
            if (!nu) {
                rc = core_err_set(MLV_ENOMEM, "out of memory");
                break;
            }
            *out = nu;
        }
        if ((rc = row_to_user(st, &(*out)[*n])) != 0) break;
        (*n)++;
    }
    if (rc == 0 && step != SQLITE_DONE) rc = reg_db_err(r, "list users");
    sqlite3_finalize(st);
    if (rc) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

int reg_user_rotate_token(reg_ctx *r, const reg_user *actor, const char *name,
                          char token_out[REG_TOKEN_LEN + 1])
{
    int rc = reg_authorize(actor, REG_ACT_ADMIN);
    if (rc) return rc;
    char token[REG_TOKEN_LEN + 1], h[65];
    if ((rc = new_token(token, h)) != 0) return rc;
    rc = user_update(r, actor, "UPDATE users SET token_hash = ?1 WHERE name = ?2", h, name,
                     "user.token", "no user named");
    if (rc == 0) memcpy(token_out, token, sizeof token);
    memset(token, 0, sizeof token);
    return rc;
}
