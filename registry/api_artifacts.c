/* registry/api_artifacts.c: the API's identity, user, artifact, audit and administration
 * routes (docs/api.md: Identity and users; Models, datasets and versions; Audit;
 * Administration: fsck and trusted keys), each a thin
 * edge over the registry functions the CLI calls, returning the same JSON as the CLI's
 * --json. File downloads stream decrypted plaintext chunk by chunk. The dispatcher in
 * server.c has already authenticated the caller and checked the route's role. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/server_internal.h"

int api_whoami(srv_req *q)
{
    return srv_reply_json(
        q, 200, json_pack("{s:s,s:s}", "name", q->user.name, "role", reg_role_name(q->user.role)));
}

/* ------------------------------------------------------------------- users --- */

int api_users_list(srv_req *q)
{
    reg_user *us;
    size_t n;
    int rc = reg_user_list(q->r, &q->user, &us, &n);
    if (rc) return rc;
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:b,s:s}", "name", us[i].name, "role",
                                             reg_role_name(us[i].role), "disabled", us[i].disabled,
                                             "created_at", us[i].created_at));
    free(us);
    return srv_reply_json(q, 200, arr);
}

int api_users_add(srv_req *q)
{
    json_t *b;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    const char *name = NULL, *role_s = NULL;
    reg_role role;
    char token[REG_TOKEN_LEN + 1];
    if ((rc = srv_str_field(b, "name", true, 64, &name)) != 0 ||
        (rc = srv_str_field(b, "role", true, 16, &role_s)) != 0 ||
        (rc = reg_role_parse(role_s, &role)) != 0)
        goto done;
    if (!core_name_valid(name)) {
        rc =
            core_err_set(MLV_EINVAL, "invalid user name '%s': use [a-z0-9][a-z0-9._-]{0,63}", name);
        goto done;
    }
    if ((rc = reg_user_add(q->r, &q->user, name, role, token)) != 0) goto done;
    rc = srv_reply_json(
        q, 201,
        json_pack("{s:s,s:s,s:s}", "user", name, "role", reg_role_name(role), "token", token));
    memset(token, 0, sizeof token);
done:
    json_decref(b);
    return rc;
}

int api_user_disable(srv_req *q)
{
    int rc = reg_user_disable(q->r, &q->user, q->params[0]);
    if (rc) return rc;
    return srv_reply_json(q, 200, json_pack("{s:s,s:b}", "user", q->params[0], "disabled", 1));
}

int api_user_token(srv_req *q)
{
    char token[REG_TOKEN_LEN + 1];
    int rc = reg_user_rotate_token(q->r, &q->user, q->params[0], token);
    if (rc) return rc;
    rc = srv_reply_json(q, 200, json_pack("{s:s,s:s}", "user", q->params[0], "token", token));
    memset(token, 0, sizeof token);
    return rc;
}

int api_registry_key(srv_req *q)
{
    const char *pem = repo_keys_public_pem(q->r->keys);
    char hint[65];
    reg_key_hint(hint, pem);
    return srv_reply_json(q, 200, json_pack("{s:s,s:s}", "pem", pem, "hint", hint));
}

/* --------------------------------------------------------------- artifacts --- */

int api_models(srv_req *q)
{
    json_t *o;
    int rc = reg_list(q->r, &q->user, NULL, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_model(srv_req *q)
{
    json_t *o;
    int rc = reg_list(q->r, &q->user, q->params[0], &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_version(srv_req *q)
{
    char ref[96];
    srv_ref(q, ref, sizeof ref);
    json_t *o;
    int rc = reg_show(q->r, &q->user, ref, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_lineage(srv_req *q)
{
    char ref[96];
    srv_ref(q, ref, sizeof ref);
    json_t *o;
    int rc = reg_lineage(q->r, &q->user, ref, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

/* The version row of the route's NAME/V (caller clears it). */
static int load_row(srv_req *q, reg_version_row *v)
{
    char ref[96];
    srv_ref(q, ref, sizeof ref);
    int64_t id;
    int rc = reg_resolve(q->r, ref, &id, NULL, NULL);
    return rc ? rc : reg_version_load(q->r, id, v);
}

int api_manifest(srv_req *q)
{
    reg_version_row v;
    int rc = load_row(q, &v);
    if (rc) return rc;
    char extra[120];
    snprintf(extra, sizeof extra, "X-Mlvault-Digest: %s\r\n", v.digest);
    srv_reply_bytes(q, 200, "application/json", v.manifest, strlen(v.manifest), extra);
    reg_version_row_clear(&v);
    return 0;
}

int api_signature(srv_req *q)
{
    reg_version_row v;
    int rc = load_row(q, &v);
    if (rc) return rc;
    srv_reply_bytes(q, 200, "application/json", v.signature, strlen(v.signature), NULL);
    reg_version_row_clear(&v);
    return 0;
}

int api_evaluations(srv_req *q)
{
    char ref[96];
    srv_ref(q, ref, sizeof ref);
    int64_t id;
    int rc = reg_resolve(q->r, ref, &id, NULL, NULL);
    if (rc) return rc;
    json_t *o = reg_eval_list_json(q->r, id);
    if (!o) return core_err_code() ? core_err_code() : core_err_set(MLV_EDB, "evaluations");
    return srv_reply_json(q, 200, o);
}

static void collect_line(const char *line, void *ctx)
{
    json_array_append_new((json_t *)ctx, json_string(line));
}

int api_verify(srv_req *q)
{
    char ref[96];
    srv_ref(q, ref, sizeof ref);
    json_t *lines = json_array();
    if (!lines) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc = reg_verify(q->r, &q->user, ref, collect_line, lines);
    if (rc) {
        json_decref(lines);
        return rc;
    }
    return srv_reply_json(
        q, 200,
        json_pack("{s:s,s:b,s:b,s:o}", "ref", ref, "ok", 1, "verified", 1, "checked", lines));
}

/* ---------------------------------------------------------------- download --- */

/* "bytes=A-", "bytes=A-B" or "bytes=-N" against a file of `size` bytes: 1 and the
 * inclusive range, 0 when there is no usable Range header, -1 when unsatisfiable. */
static int parse_range(const char *h, uint64_t size, uint64_t *a, uint64_t *b)
{
    if (!h) return 0;
    if (strncmp(h, "bytes=", 6) != 0 || strchr(h, ',')) return 0; /* ignored: whole file */
    const char *p = h + 6;
    char *end;
    unsigned long long x, y;
    if (*p == '-') {
        y = strtoull(p + 1, &end, 10);
        if (end == p + 1 || *end || y == 0) return -1;
        if (size == 0) return -1;
        *a = y >= size ? 0 : size - y;
        *b = size - 1;
        return 1;
    }
    if (*p < '0' || *p > '9') return 0;
    x = strtoull(p, &end, 10);
    if (*end != '-') return 0;
    p = end + 1;
    if (!*p) {
        y = size ? size - 1 : 0;
    } else {
        if (*p < '0' || *p > '9') return 0;
        y = strtoull(p, &end, 10);
        if (*end) return 0;
        if (y >= size) y = size ? size - 1 : 0;
    }
    if (x >= size || y < x) return -1;
    *a = x;
    *b = y;
    return 1;
}

typedef struct dl_sink {
    srv_req *q;
    int status;
    uint64_t length;
    char headers[512];
    bool started;
} dl_sink;

int srv_range_start(srv_req *q, uint64_t size, const char *sha256, uint64_t *a, uint64_t *b,
                    char *headers, size_t n)
{
    *a = 0;
    *b = size ? size - 1 : 0;
    int pr = parse_range(mg_get_header(q->c, "Range"), size, a, b);
    if (pr < 0) {
        char extra[200];
        snprintf(extra, sizeof extra, "Content-Range: bytes */%" PRIu64 "\r\n", size);
        const char *body =
            "{\"error\":{\"code\":\"EINVAL\",\"message\":\"range not satisfiable\"}}";
        srv_reply_bytes(q, 416, "application/json", body, strlen(body), extra);
        return 416;
    }
    int off = snprintf(headers, n, "Accept-Ranges: bytes\r\n%s%s%sX-Mlvault-Size: %" PRIu64 "\r\n",
                       sha256 ? "X-Mlvault-Sha256: " : "", sha256 ? sha256 : "",
                       sha256 ? "\r\n" : "", size);
    if (pr && off > 0 && (size_t)off < n)
        snprintf(headers + off, n - (size_t)off,
                 "Content-Range: bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64 "\r\n", *a, *b, size);
    return pr ? 206 : 200;
}

/* Headers go out with the first authenticated bytes, so a blob that fails at once
 * (missing, altered header) still gets a proper error reply. */
static int dl_write(void *ctx, const void *data, size_t n)
{
    dl_sink *d = ctx;
    if (!d->started) {
        d->started = true;
        srv_reply_start(d->q, d->status, "application/octet-stream", d->length, d->headers);
    }
    return srv_write(d->q, data, n);
}

int api_download(srv_req *q)
{
    reg_version_row v;
    repo_manifest *m = NULL;
    int rc = load_row(q, &v);
    if (rc) return rc;
    const repo_file *f = NULL;
    unsigned char wrapped[REPO_WRAPPED_DEK_LEN];
    char ref[160], digest[65];
    snprintf(ref, sizeof ref, "%s:%d", v.name, v.version);
    repo_sha256_hex(digest, v.manifest, strlen(v.manifest));
    if (strcmp(digest, v.digest) != 0) {
        rc = core_err_set(MLV_EINTEGRITY, "%s: manifest was altered", ref);
        goto done;
    }
    if ((rc = repo_manifest_parse(&m, v.manifest, strlen(v.manifest))) != 0) goto done;
    for (size_t i = 0; i < m->n_files && !f; i++)
        if (!strcmp(m->files[i].path, q->params[2])) f = &m->files[i];
    if (!f) {
        rc = core_err_set(MLV_ENOTFOUND, "%s has no file '%s'", ref, q->params[2]);
        goto done;
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(q->r->db, "SELECT wrapped_dek FROM blobs WHERE sha256 = ?", -1, &st,
                           NULL) != SQLITE_OK) {
        rc = reg_db_err(q->r, "blobs");
        goto done;
    }
    sqlite3_bind_text(st, 1, f->sha256, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW ||
        core_unhex(wrapped, REPO_WRAPPED_DEK_LEN, (const char *)sqlite3_column_text(st, 0)) != 0)
        rc = core_err_set(MLV_EINTEGRITY, "%s: no usable data key for %s", ref, f->path);
    sqlite3_finalize(st);
    if (rc) goto done;

    uint64_t a, b;
    dl_sink d = {.q = q};
    d.status = srv_range_start(q, f->size, f->sha256, &a, &b, d.headers, sizeof d.headers);
    if (d.status == 416) goto done;
    d.length = f->size ? b - a + 1 : 0;
    /* The trace comes first: a download that is cut short was still a download. */
    char detail[160];
    snprintf(detail, sizeof detail, "%s bytes %" PRIu64 "-%" PRIu64 " of %" PRIu64, f->path,
             d.length ? a : 0, d.length ? b : 0, f->size);
    char target[200];
    snprintf(target, sizeof target, "%s/%s", ref, f->path);
    if (!q->head && (rc = reg_audit_record(q->r, &q->user, "download", target, detail)) != 0)
        goto done;
    if (q->head || d.length == 0) {
        srv_reply_start(q, d.status, "application/octet-stream", d.length, d.headers);
        goto done;
    }
    rc = repo_blob_decrypt_range(q->r->home, q->r->keys, f->sha256, f->size, wrapped, a, d.length,
                                 dl_write, &d);
done:
    repo_manifest_free(m);
    reg_version_row_clear(&v);
    return rc;
}

/* ------------------------------------------------------------------- audit --- */

static bool rfc3339(const char *s)
{
    /* 2026-11-29T07:48:12Z */
    if (strlen(s) != 20) return false;
    for (int i = 0; i < 20; i++) {
        char c = s[i];
        bool digit = c >= '0' && c <= '9';
        switch (i) {
        case 4:
        case 7:
            if (c != '-') return false;
            break;
        case 10:
            if (c != 'T') return false;
            break;
        case 13:
        case 16:
            if (c != ':') return false;
            break;
        case 19:
            if (c != 'Z') return false;
            break;
        default:
            if (!digit) return false;
        }
    }
    return true;
}

/* A query parameter that is a sequence number (digits only), into *out; absent: 0. */
static int query_seq(srv_req *q, const char *key, int64_t *out)
{
    char v[32];
    *out = 0;
    int rc = srv_query(q, key, v, sizeof v);
    if (rc <= 0 || !*v) return rc;
    char *end;
    long long x = strtoll(v, &end, 10);
    if (*end || v[0] < '0' || v[0] > '9' || x < 0)
        return core_err_set(MLV_EINVAL, "%s: want a sequence number", key);
    *out = x;
    return 0;
}

int api_audit(srv_req *q)
{
    char actor[80], action[80], target[256], since[32], until[32], limit[32], order[8];
    reg_audit_filter f = {0};
    int rc;
    if ((rc = srv_query(q, "actor", actor, sizeof actor)) < 0 ||
        (rc = srv_query(q, "action", action, sizeof action)) < 0 ||
        (rc = srv_query(q, "target", target, sizeof target)) < 0 ||
        (rc = srv_query(q, "since", since, sizeof since)) < 0 ||
        (rc = srv_query(q, "until", until, sizeof until)) < 0 ||
        (rc = srv_query(q, "order", order, sizeof order)) < 0 ||
        (rc = srv_query(q, "limit", limit, sizeof limit)) < 0 ||
        (rc = query_seq(q, "after", &f.after_seq)) != 0 ||
        (rc = query_seq(q, "before", &f.before_seq)) != 0)
        return rc;
    if (*actor) f.actor = actor;
    if (*action) f.action = action;
    if (*target) f.target = target;
    if (*since) {
        if (!rfc3339(since))
            return core_err_set(MLV_EINVAL, "since: want RFC 3339 UTC (2026-01-31T12:00:00Z)");
        f.since = since;
    }
    if (*until) {
        if (!rfc3339(until))
            return core_err_set(MLV_EINVAL, "until: want RFC 3339 UTC (2026-01-31T12:00:00Z)");
        f.until = until;
    }
    if (*order) {
        if (strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0)
            return core_err_set(MLV_EINVAL, "order: want asc or desc");
        f.newest_first = !strcmp(order, "desc");
    }
    char *end;
    if (*limit) {
        long long x = strtoll(limit, &end, 10);
        if (*end || x < 0 || x > 1000000) return core_err_set(MLV_EINVAL, "limit: want 0..1000000");
        f.limit = x;
    }
    json_t *o;
    rc = reg_audit_list(q->r, &q->user, &f, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_audit_verify(srv_req *q)
{
    int64_t rows = 0;
    int rc = reg_audit_verify(q->r, &q->user, &rows);
    if (rc) return rc;
    return srv_reply_json(q, 200, json_pack("{s:b,s:I}", "intact", 1, "rows", (json_int_t)rows));
}

/* ---------------------------------------------------------- administration --- */

#define KEY_PEM_MAX 16384 /* as `mlvault keys trust` reads a key file */

int api_fsck(srv_req *q)
{
    json_t *b;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    json_t *prune = json_object_get(b, "prune");
    if (prune && !json_is_null(prune) && !json_is_boolean(prune))
        rc = core_err_set(MLV_EINVAL, "'prune' must be true or false");
    json_t *o = NULL;
    if (rc == 0) rc = reg_fsck(q->r, &q->user, json_is_true(prune), &o);
    json_decref(b);
    /* 200 whatever it found: the report's "ok" says, as for the local command */
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_keys_list(srv_req *q)
{
    json_t *o;
    int rc = reg_key_list(q->r, &q->user, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_key_trust(srv_req *q)
{
    json_t *b;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    const char *pem = NULL, *name = NULL;
    char hint[65];
    if ((rc = srv_str_field(b, "pem", true, KEY_PEM_MAX, &pem)) != 0 ||
        (rc = srv_str_field(b, "name", true, 64, &name)) != 0)
        goto done;
    if (!core_name_valid(name)) {
        rc = core_err_set(MLV_EINVAL, "invalid key name '%s': use [a-z0-9][a-z0-9._-]{0,63}", name);
        goto done;
    }
    if ((rc = reg_key_trust(q->r, &q->user, pem, name, hint)) != 0) goto done;
    rc = srv_reply_json(q, 201, json_pack("{s:s,s:s}", "name", name, "hint", hint));
done:
    json_decref(b);
    return rc;
}

int api_import_key(srv_req *q)
{
    char *pem = NULL, hint[65];
    int rc = reg_import_key(q->r, &q->user, &pem, hint);
    if (rc) return rc;
    rc = srv_reply_json(q, 200, json_pack("{s:s,s:s}", "pem", pem, "hint", hint));
    free(pem);
    return rc;
}
