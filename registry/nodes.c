/* registry/nodes.c: serving nodes as the registry sees them (DESIGN.md, Serving nodes) —
 * enrolment (a user with the node role, its X25519 public key and the one model it may
 * pull, in the `nodes` table), the scope check every pull route makes, the data keys of
 * a version wrapped for a node's own key, and the state reports nodes send. The node
 * agent itself (following a channel, serving) is node.c's; the routes are api_nodes.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "registry/reg_internal.h"

#define PEM_MAX 16384       /* a PEM X25519 public key is ~113 bytes */
#define LAST_ERROR_MAX 1000 /* characters of a report's last_error */
#define REPORT_STR_MAX 160  /* other strings of a report */
#define RPS_MAX 1e9

/* --------------------------------------------------------------- helpers --- */

/* A node's row: its model and public key PEM (owned), or MLV_ENOTFOUND. */
typedef struct node_row {
    char model[65], hint[65];
    char *pubkey;
    char *state; /* JSON text or NULL */
} node_row;

static void node_row_clear(node_row *n)
{
    free(n->pubkey);
    free(n->state);
    memset(n, 0, sizeof *n);
}

static int node_row_load(reg_ctx *r, const char *name, node_row *out)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT model, pubkey, key_hint, state FROM nodes WHERE name = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "nodes");
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        const char *state = (const char *)sqlite3_column_text(st, 3);
        snprintf(out->model, sizeof out->model, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(out->hint, sizeof out->hint, "%s", (const char *)sqlite3_column_text(st, 2));
        out->pubkey = strdup((const char *)sqlite3_column_text(st, 1));
        out->state = state ? strdup(state) : NULL;
        if (!out->pubkey || (state && !out->state)) rc = core_err_set(MLV_ENOMEM, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = MLV_ENOTFOUND;
        core_err_set(rc, "no node named '%s'", name);
    } else {
        rc = reg_db_err(r, "nodes");
    }
    sqlite3_finalize(st);
    if (rc) node_row_clear(out);
    return rc;
}

/* A node's enrolment, as the caller may know it: MLV_EFORBIDDEN when `u` is a node user
 * without one (made with `user add --role node`, say), so it can do nothing. */
static int own_row(reg_ctx *r, const reg_user *u, node_row *out)
{
    int rc = node_row_load(r, u->name, out);
    if (rc == MLV_ENOTFOUND)
        return core_err_set(MLV_EFORBIDDEN,
                            "forbidden: node %s is not enrolled for any model (an admin enrolls "
                            "it with `mlvault node enroll`)",
                            u->name);
    return rc;
}

/* 0 when `name` is a stored model; MLV_ENOTFOUND or MLV_EINVAL (a dataset) otherwise. */
static int model_exists(reg_ctx *r, const char *name)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT kind FROM artifacts WHERE name = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "artifacts");
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        if (strcmp((const char *)sqlite3_column_text(st, 0), "model") != 0)
            rc = core_err_set(MLV_EINVAL, "%s is a dataset, not a model: a node serves a model",
                              name);
    } else if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_ENOTFOUND, "no model named '%s'", name);
    } else {
        rc = reg_db_err(r, "artifacts");
    }
    sqlite3_finalize(st);
    return rc;
}

/* ------------------------------------------------------------------ scope --- */

int reg_node_scope(reg_ctx *r, const reg_user *u, const char *model)
{
    if (u->role != REG_ROLE_NODE) return 0; /* persons: their role decides */
    node_row n;
    int rc = own_row(r, u, &n);
    if (rc) return rc;
    if (!model || strcmp(n.model, model) != 0)
        rc = core_err_set(MLV_EFORBIDDEN, "forbidden: node %s is enrolled for model %s, not %.64s",
                          u->name, n.model, model ? model : "");
    node_row_clear(&n);
    return rc;
}

int reg_node_scope_ref(reg_ctx *r, const reg_user *u, const char *ref)
{
    if (u->role != REG_ROLE_NODE) return 0;
    reg_ref p;
    int rc = reg_ref_parse(ref, &p);
    /* a reference that does not parse names no model: nothing a node may read */
    return rc ? core_err_set(MLV_EFORBIDDEN, "forbidden: %s", core_err_last())
              : reg_node_scope(r, u, p.name);
}

/* -------------------------------------------------------------- enrolment --- */

int reg_node_enroll(reg_ctx *r, const reg_user *actor, const char *name, const char *pubkey_pem,
                    const char *model, char token_out[REG_TOKEN_LEN + 1])
{
    memset(token_out, 0, REG_TOKEN_LEN + 1);
    int rc = reg_authorize(actor, REG_ACT_ADMIN);
    if (rc) return rc;
    if (!name || !core_name_valid(name))
        return core_err_set(MLV_EINVAL, "invalid node name '%.80s': use [a-z0-9][a-z0-9._-]{0,63}",
                            name ? name : "");
    if (!model || !core_name_valid(model))
        return core_err_set(MLV_EINVAL, "invalid model name '%.80s'", model ? model : "");
    unsigned char raw[REPO_X25519_LEN];
    char hint[65], at[21], detail[200];
    if (!pubkey_pem || strlen(pubkey_pem) > PEM_MAX ||
        repo_import_key_parse(pubkey_pem, raw, hint) != 0)
        return core_err_set(MLV_EINVAL,
                            "node %s: the public key is not a PEM X25519 public key (the "
                            "node.pub that `mlvault node init` writes)",
                            name);
    sqlite3_stmt *st = NULL;
    if ((rc = reg_begin(r)) != 0) return rc;
    if ((rc = model_exists(r, model)) != 0) goto done;
    /* one key per node: a key enrolled twice would let one node read as another */
    if (sqlite3_prepare_v2(r->db, "SELECT name FROM nodes WHERE key_hint = ?", -1, &st, NULL) !=
        SQLITE_OK) {
        rc = reg_db_err(r, "nodes");
        goto done;
    }
    sqlite3_bind_text(st, 1, hint, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        rc = core_err_set(MLV_EEXISTS, "this public key is already enrolled, for node %s",
                          (const char *)sqlite3_column_text(st, 0));
    else if (step != SQLITE_DONE)
        rc = reg_db_err(r, "nodes");
    sqlite3_finalize(st);
    st = NULL;
    if (rc) goto done;
    if ((rc = reg_user_insert_locked(r, actor->name, name, REG_ROLE_NODE, token_out)) != 0)
        goto done;
    core_time_iso(at);
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO nodes(name, model, pubkey, key_hint, enrolled_by,"
                           " enrolled_at) VALUES(?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "nodes");
        goto done;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, pubkey_pem, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, hint, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, actor->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, at, -1, SQLITE_STATIC);
    step = sqlite3_step(st);
    if (step == SQLITE_CONSTRAINT)
        rc = core_err_set(MLV_EEXISTS, "node %s already exists", name);
    else if (step != SQLITE_DONE)
        rc = reg_db_err(r, "nodes");
    if (rc) goto done;
    snprintf(detail, sizeof detail, "model=%s key=%s", model, hint);
    if ((rc = reg_audit_append(r, actor->name, "node.enroll", name, detail, NULL, 0)) != 0)
        goto done;
    rc = reg_commit(r);
done:
    sqlite3_finalize(st);
    if (rc) {
        reg_rollback(r);
        memset(token_out, 0, REG_TOKEN_LEN + 1);
        return rc;
    }
    return reg_ledger_settle(r);
}

int reg_node_list(reg_ctx *r, const reg_user *actor, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    json_t *arr = json_array();
    if (!arr) return core_err_set(MLV_ENOMEM, "out of memory");
    if (sqlite3_prepare_v2(r->db,
                           "SELECT n.name, n.model, n.key_hint, n.enrolled_by, n.enrolled_at,"
                           " u.disabled, n.last_seen, n.state FROM nodes n"
                           " JOIN users u ON u.name = n.name ORDER BY n.name",
                           -1, &st, NULL) != SQLITE_OK) {
        json_decref(arr);
        return reg_db_err(r, "nodes");
    }
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *seen = (const char *)sqlite3_column_text(st, 6);
        const char *state = (const char *)sqlite3_column_text(st, 7);
        json_t *sj = state ? json_loads(state, 0, NULL) : NULL;
        json_t *o = json_pack(
            "{s:s,s:s,s:s,s:s,s:s,s:b,s:o,s:o}", "name", (const char *)sqlite3_column_text(st, 0),
            "model", (const char *)sqlite3_column_text(st, 1), "key_hint",
            (const char *)sqlite3_column_text(st, 2), "enrolled_by",
            (const char *)sqlite3_column_text(st, 3), "enrolled_at",
            (const char *)sqlite3_column_text(st, 4), "disabled", sqlite3_column_int(st, 5) != 0,
            "last_seen", seen ? json_string(seen) : json_null(), "state",
            json_is_object(sj) ? sj : json_null());
        if (!json_is_object(sj)) json_decref(sj);
        if (!o || json_array_append_new(arr, o) != 0) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
    }
    if (rc == 0 && step != SQLITE_DONE) rc = reg_db_err(r, "nodes");
    sqlite3_finalize(st);
    if (rc) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return 0;
}

/* ---------------------------------------------------------------- reports --- */

/* Characters (code points) of a UTF-8 string, as jansson holds only valid UTF-8. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80) c++;
    return c;
}

/* A string field of a report: absent (or null) leaves *out; NUL bytes refused. */
static int report_str(const json_t *o, const char *key, size_t max_chars, const char **out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return core_err_set(MLV_EINVAL, "report: '%s' must be a string", key);
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (strlen(s) != n) return core_err_set(MLV_EINVAL, "report: '%s' contains a NUL", key);
    if (utf8_chars(s, n) > max_chars)
        return core_err_set(MLV_EINVAL, "report: '%s' is longer than %zu characters", key,
                            max_chars);
    *out = s;
    return 0;
}

static int report_int(const json_t *o, const char *key, bool required, json_int_t hi,
                      json_int_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return required ? core_err_set(MLV_EINVAL, "report: '%s' is required", key) : 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > hi)
        return core_err_set(MLV_EINVAL, "report: '%s' must be an integer in [0, %lld]", key,
                            (long long)hi);
    *out = json_integer_value(v);
    return 0;
}

/* The report, validated, as the canonical object stored (owned by the caller). */
static int report_parse(const json_t *in, json_t **out)
{
    *out = NULL;
    if (!json_is_object(in)) return core_err_set(MLV_EINVAL, "report: must be a JSON object");
    const char *channel = "", *digest = "", *last_error = "", *serving = "";
    json_int_t version = 0, sequence = 0;
    double rps = 0;
    int rc;
    if ((rc = report_str(in, "channel", 64, &channel)) != 0 ||
        (rc = report_str(in, "digest", 64, &digest)) != 0 ||
        (rc = report_str(in, "last_error", LAST_ERROR_MAX, &last_error)) != 0 ||
        (rc = report_str(in, "serving", REPORT_STR_MAX, &serving)) != 0 ||
        (rc = report_int(in, "version", true, 1000000000, &version)) != 0 ||
        (rc = report_int(in, "sequence", false, (json_int_t)1 << 53, &sequence)) != 0)
        return rc;
    if (*channel && !core_name_valid(channel))
        return core_err_set(MLV_EINVAL, "report: invalid channel '%s'", channel);
    if (*digest && !core_is_hex(digest, 64))
        return core_err_set(MLV_EINVAL, "report: 'digest' must be 64 lowercase hex digits or \"\"");
    if (*serving) {
        reg_ref p;
        if (reg_ref_parse(serving, &p) != 0 || !p.version || p.channel[0])
            return core_err_set(MLV_EINVAL, "report: 'serving' must be NAME:VERSION or \"\"");
    }
    json_t *h = json_object_get(in, "healthy");
    if (!json_is_boolean(h)) return core_err_set(MLV_EINVAL, "report: 'healthy' must be a boolean");
    json_t *x = json_object_get(in, "rps");
    if (x && !json_is_null(x)) {
        if (!json_is_number(x) || !isfinite(json_number_value(x)) || json_number_value(x) < 0 ||
            json_number_value(x) > RPS_MAX)
            return core_err_set(MLV_EINVAL, "report: 'rps' must be a number in [0, %g]", RPS_MAX);
        rps = json_number_value(x);
    }
    *out = json_pack("{s:s,s:I,s:s,s:I,s:b,s:s,s:f,s:s}", "channel", channel, "version", version,
                     "digest", digest, "sequence", sequence, "healthy", json_is_true(h),
                     "last_error", last_error, "rps", rps, "serving", serving);
    return *out ? 0 : core_err_set(MLV_ENOMEM, "out of memory");
}

/* Whether a report differs from the stored one in what the audit log follows. */
static bool state_changed(const char *stored, const json_t *now)
{
    json_t *old = stored ? json_loads(stored, 0, NULL) : NULL;
    bool changed = !json_is_object(old) ||
                   json_integer_value(json_object_get(old, "version")) !=
                       json_integer_value(json_object_get(now, "version")) ||
                   json_is_true(json_object_get(old, "healthy")) !=
                       json_is_true(json_object_get(now, "healthy")) ||
                   !json_is_string(json_object_get(old, "last_error")) ||
                   strcmp(json_string_value(json_object_get(old, "last_error")),
                          json_string_value(json_object_get(now, "last_error"))) != 0;
    json_decref(old);
    return changed;
}

int reg_node_report(reg_ctx *r, const reg_user *actor, const json_t *state)
{
    int rc = reg_authorize(actor, REG_ACT_NODE);
    if (rc) return rc;
    json_t *rep = NULL;
    char *text = NULL;
    node_row n = {0};
    sqlite3_stmt *st = NULL;
    bool audited = false;
    if ((rc = report_parse(state, &rep)) != 0) return rc;
    if (!(text = core_json_dumps(rep, JSON_SORT_KEYS | JSON_COMPACT))) {
        json_decref(rep);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    if ((rc = reg_begin(r)) != 0) goto out;
    if ((rc = own_row(r, actor, &n)) != 0) goto fail;
    char at[21];
    core_time_iso(at);
    if (sqlite3_prepare_v2(r->db, "UPDATE nodes SET state = ?, last_seen = ? WHERE name = ?", -1,
                           &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "nodes");
        goto fail;
    }
    sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, at, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, actor->name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "nodes");
        goto fail;
    }
    if (state_changed(n.state, rep)) {
        char detail[1200];
        const char *err = json_string_value(json_object_get(rep, "last_error"));
        snprintf(detail, sizeof detail, "version=%lld healthy=%s%s%s",
                 (long long)json_integer_value(json_object_get(rep, "version")),
                 json_is_true(json_object_get(rep, "healthy")) ? "yes" : "no",
                 *err ? " error=" : "", err);
        if ((rc = reg_audit_append(r, actor->name, "node.state", actor->name, detail, NULL, 0)) !=
            0)
            goto fail;
        audited = true;
    }
    if ((rc = reg_commit(r)) != 0) goto fail;
    if (audited) reg_ledger_settle(r);
    goto out;
fail:
    reg_rollback(r);
out:
    sqlite3_finalize(st);
    node_row_clear(&n);
    json_decref(rep);
    free(text);
    return rc;
}

/* ------------------------------------------------------------- data keys --- */

int reg_node_keys(reg_ctx *r, const reg_user *actor, const char *ref, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_NODE);
    if (rc) return rc;
    if ((rc = reg_node_scope_ref(r, actor, ref)) != 0) return rc;
    node_row n = {0};
    reg_version_row v = {0};
    repo_manifest *m = NULL;
    unsigned char(*master)[REPO_WRAPPED_DEK_LEN] = NULL, (*wrapped)[REPO_WRAPPED_DEK_LEN] = NULL;
    unsigned char node_pub[REPO_X25519_LEN], eph[REPO_X25519_LEN];
    char hint[65], vref[96], digest[65];
    json_t *files = NULL;
    sqlite3_stmt *st = NULL;
    int64_t vid = 0;
    if ((rc = own_row(r, actor, &n)) != 0) goto done;
    if (repo_import_key_parse(n.pubkey, node_pub, hint) != 0) {
        rc = core_err_set(MLV_EINTEGRITY, "node %s: its stored public key does not parse",
                          actor->name);
        goto done;
    }
    if ((rc = reg_resolve(r, ref, &vid, NULL, NULL)) != 0 ||
        (rc = reg_version_load(r, vid, &v)) != 0)
        goto done;
    snprintf(vref, sizeof vref, "%s:%d", v.name, v.version);
    repo_sha256_hex(digest, v.manifest, strlen(v.manifest));
    if (strcmp(digest, v.digest) != 0) {
        rc = core_err_set(MLV_EINTEGRITY, "%s: the stored manifest was altered", vref);
        goto done;
    }
    if ((rc = repo_manifest_parse(&m, v.manifest, strlen(v.manifest))) != 0) goto done;
    size_t nf = m->n_files;
    if (!(master = calloc(nf ? nf : 1, sizeof *master)) ||
        !(wrapped = calloc(nf ? nf : 1, sizeof *wrapped)) || !(files = json_array())) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if (sqlite3_prepare_v2(r->db, "SELECT size, wrapped_dek FROM blobs WHERE sha256 = ?", -1, &st,
                           NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "blobs");
        goto done;
    }
    for (size_t i = 0; i < nf; i++) {
        const repo_file *f = &m->files[i];
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, f->sha256, -1, SQLITE_STATIC);
        const char *hex = NULL;
        if (sqlite3_step(st) != SQLITE_ROW || (uint64_t)sqlite3_column_int64(st, 0) != f->size ||
            !(hex = (const char *)sqlite3_column_text(st, 1)) ||
            core_unhex(master[i], REPO_WRAPPED_DEK_LEN, hex) != 0) {
            rc = core_err_set(MLV_EINTEGRITY, "%s: no usable blob record for %s", vref, f->path);
            goto done;
        }
        /* what the node will download must be what it can decrypt */
        uint64_t cipher = repo_aead_ciphertext_size(f->size);
        char *path = repo_blob_path(r->home, f->sha256);
        struct stat sb;
        if (!path) {
            rc = core_err_code();
            goto done;
        }
        int missing = stat(path, &sb) != 0;
        free(path);
        if (missing || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != cipher) {
            rc =
                core_err_set(MLV_EINTEGRITY, "%s: blob %s of %s is %s (run `mlvault fsck`)", vref,
                             f->sha256, f->path, missing ? "missing" : "not the size it should be");
            goto done;
        }
        if (json_array_append_new(files, json_pack("{s:s,s:s,s:I,s:I}", "path", f->path, "blob",
                                                   f->sha256, "size", (json_int_t)f->size,
                                                   "cipher_size", (json_int_t)cipher)) != 0) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
    }
    if ((rc = repo_keys_rewrap_for_node(r->keys, node_pub,
                                        (const unsigned char(*)[REPO_WRAPPED_DEK_LEN])master, nf,
                                        eph, wrapped)) != 0) {
        core_err_wrap("%s: ", vref);
        goto done;
    }
    for (size_t i = 0; i < nf; i++) {
        char w[2 * REPO_WRAPPED_DEK_LEN + 1];
        core_hex(w, wrapped[i], REPO_WRAPPED_DEK_LEN);
        json_object_set_new(json_array_get(files, i), "wrapped", json_string(w));
    }
    char eph_hex[2 * REPO_X25519_LEN + 1], detail[160];
    core_hex(eph_hex, eph, REPO_X25519_LEN);
    snprintf(detail, sizeof detail, "%zu data keys for node key %.16s", nf, hint);
    if ((rc = reg_audit_record(r, actor, "node.keys", vref, detail)) != 0) goto done;
    if (!(*out = json_pack("{s:s,s:s,s:s,s:O}", "ref", vref, "digest", v.digest, "eph_pub", eph_hex,
                           "files", files)))
        rc = core_err_set(MLV_ENOMEM, "out of memory");
done:
    sqlite3_finalize(st);
    json_decref(files);
    free(master);
    free(wrapped);
    repo_manifest_free(m);
    reg_version_row_clear(&v);
    node_row_clear(&n);
    return rc;
}
