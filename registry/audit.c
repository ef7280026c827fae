/* registry/audit.c: the audit log — an append-only SQLite table whose rows form a hash
 * chain (each row's hash covers the previous row's hash), mirrored row by row into the
 * ledger so that removing the newest rows is detected too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/reg_internal.h"

static const char GENESIS[65] = "0000000000000000000000000000000000000000000000000000000000000000";

/* The canonical JSON of a row (without its own hash); *out freed by the caller. */
static char *row_json(int64_t seq, const char *at, const char *actor, const char *action,
                      const char *target, const char *detail, const char *prev)
{
    json_t *o =
        json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "seq", (json_int_t)seq, "at", at, "actor", actor,
                  "action", action, "target", target, "detail", detail, "prev", prev);
    char *s = o ? core_json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    return s;
}

static void row_hash(char out[65], const char *json)
{
    repo_sha256_hex(out, json, strlen(json));
}

int reg_audit_append(reg_ctx *r, const char *actor, const char *action, const char *target,
                     const char *detail, const repo_ledger_change *extra, size_t n_extra)
{
    sqlite3_stmt *st = NULL;
    int64_t seq = 1;
    char prev[65];
    memcpy(prev, GENESIS, sizeof prev);
    if (sqlite3_prepare_v2(r->db, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", -1, &st,
                           NULL) != SQLITE_OK)
        return reg_db_err(r, "audit");
    if (sqlite3_step(st) == SQLITE_ROW) {
        seq = sqlite3_column_int64(st, 0) + 1;
        snprintf(prev, sizeof prev, "%s", (const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_finalize(st);

    char at[21], hash[65];
    core_time_iso(at);
    char *rj = row_json(seq, at, actor, action, target, detail, prev);
    if (!rj) return core_err_set(MLV_ENOMEM, "audit: out of memory");
    row_hash(hash, rj);

    int rc = 0;
    char *mirror = NULL, *head = NULL;
    repo_ledger_change *ch = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO audit(seq, at, actor, action, target, detail, prev_hash,"
                           " hash) VALUES(?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "audit");
        goto done;
    }
    sqlite3_bind_int64(st, 1, seq);
    sqlite3_bind_text(st, 2, at, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, actor, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, action, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, target, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, detail, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, prev, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, hash, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "audit");
        goto done;
    }

    /* Ledger mirror: the row (with its hash) and the chain head, plus the caller's files. */
    core_buf mb = {0}, hb = {0};
    core_buf_appendf(&mb, "%.*s,\"hash\":\"%s\"}\n", (int)strlen(rj) - 1, rj, hash);
    core_buf_appendf(&hb, "{\"hash\":\"%s\",\"seq\":%lld}\n", hash, (long long)seq);
    mirror = core_buf_take(&mb);
    head = core_buf_take(&hb);
    ch = calloc(n_extra + 2, sizeof *ch);
    if (!mirror || !head || !ch) {
        rc = core_err_set(MLV_ENOMEM, "audit: out of memory");
        goto done;
    }
    char rowpath[96], msg[512];
    snprintf(rowpath, sizeof rowpath, "audit/rows/%06lld/%010lld.json", (long long)(seq / 1000),
             (long long)seq);
    for (size_t i = 0; i < n_extra; i++)
        ch[i] = extra[i];
    ch[n_extra] = (repo_ledger_change){rowpath, mirror, strlen(mirror)};
    ch[n_extra + 1] = (repo_ledger_change){"audit/head.json", head, strlen(head)};
    snprintf(msg, sizeof msg, "%s %s%s%s\n\naudit seq %lld, hash %s\n", action, target,
             *detail ? ": " : "", detail, (long long)seq, hash);
    rc = reg_ledger_queue(r, actor, msg, ch, n_extra + 2);
done:
    sqlite3_finalize(st);
    free(rj);
    free(mirror);
    free(head);
    free(ch);
    return rc;
}

int reg_audit_record(reg_ctx *r, const reg_user *actor, const char *action, const char *target,
                     const char *detail)
{
    int rc = reg_begin(r);
    if (rc) return rc;
    if ((rc = reg_audit_append(r, actor->name, action, target, detail, NULL, 0)) == 0)
        rc = reg_commit(r);
    if (rc) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

int reg_audit_list(reg_ctx *r, const reg_user *actor, const reg_audit_filter *f, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_AUDIT);
    if (rc) return rc;
    reg_audit_filter none = {0};
    if (!f) f = &none;
    /* An action ending in '.' is a prefix: "promote." matches promote.request, ... */
    char prefix[80] = "";
    if (f->action && *f->action && f->action[strlen(f->action) - 1] == '.')
        snprintf(prefix, sizeof prefix, "%s", f->action);
    sqlite3_stmt *st = NULL;
#define AUDIT_SELECT                                                                               \
    "SELECT seq, at, actor, action, target, detail, hash FROM audit"                               \
    " WHERE (?1 IS NULL OR actor = ?1)"                                                            \
    "   AND (?2 IS NULL OR action = ?2 OR (?3 <> '' AND substr(action, 1, length(?3)) = ?3))"      \
    "   AND (?4 IS NULL OR target = ?4) AND (?5 IS NULL OR at >= ?5)"                              \
    "   AND (?6 IS NULL OR at <= ?6) AND seq > ?7 AND (?9 = 0 OR seq < ?9)"
    /* two statements rather than an ORDER BY expression, so both walk the seq key */
    const char *sql = f->newest_first ? AUDIT_SELECT " ORDER BY seq DESC LIMIT ?8"
                                      : AUDIT_SELECT " ORDER BY seq LIMIT ?8";
#undef AUDIT_SELECT
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) return reg_db_err(r, "audit");
    const char *txt[] = {f->actor, f->action, NULL, f->target, f->since, f->until};
    for (int i = 0; i < 6; i++)
        if (i == 2)
            sqlite3_bind_text(st, 3, prefix, -1, SQLITE_STATIC);
        else if (txt[i] && *txt[i])
            sqlite3_bind_text(st, i + 1, txt[i], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, f->after_seq);
    sqlite3_bind_int64(st, 8, f->limit > 0 ? f->limit : -1);
    sqlite3_bind_int64(st, 9, f->before_seq > 0 ? f->before_seq : 0);
    json_t *arr = json_array();
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        json_array_append_new(arr, json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "seq",
                                             (json_int_t)sqlite3_column_int64(st, 0), "at",
                                             (const char *)sqlite3_column_text(st, 1), "actor",
                                             (const char *)sqlite3_column_text(st, 2), "action",
                                             (const char *)sqlite3_column_text(st, 3), "target",
                                             (const char *)sqlite3_column_text(st, 4), "detail",
                                             (const char *)sqlite3_column_text(st, 5), "hash",
                                             (const char *)sqlite3_column_text(st, 6)));
    }
    if (step != SQLITE_DONE) rc = reg_db_err(r, "audit");
    sqlite3_finalize(st);
    if (rc)
        json_decref(arr);
    else
        *out = arr;
    return rc;
}

int reg_audit_verify(reg_ctx *r, const reg_user *actor, int64_t *rows_out)
{
    int rc = reg_authorize(actor, REG_ACT_AUDIT);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT seq, at, actor, action, target, detail, prev_hash, hash"
                           " FROM audit ORDER BY seq",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "audit");
    char prev[65];
    memcpy(prev, GENESIS, sizeof prev);
    int64_t expect = 1;
    int step;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        const char *stored_prev = (const char *)sqlite3_column_text(st, 6);
        const char *stored_hash = (const char *)sqlite3_column_text(st, 7);
        if (seq != expect) {
            rc = core_err_set(MLV_EINTEGRITY, "audit chain broken: row %lld is missing",
                              (long long)expect);
            break;
        }
        if (strcmp(stored_prev, prev) != 0) {
            rc = core_err_set(MLV_EINTEGRITY,
                              "audit chain broken at row %lld: previous hash does not match",
                              (long long)seq);
            break;
        }
        char *rj = row_json(
            seq, (const char *)sqlite3_column_text(st, 1), (const char *)sqlite3_column_text(st, 2),
            (const char *)sqlite3_column_text(st, 3), (const char *)sqlite3_column_text(st, 4),
            (const char *)sqlite3_column_text(st, 5), stored_prev);
        if (!rj) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
        char h[65];
        row_hash(h, rj);
        free(rj);
        if (strcmp(h, stored_hash) != 0) {
            rc = core_err_set(MLV_EINTEGRITY, "audit chain broken at row %lld: row was altered",
                              (long long)seq);
            break;
        }
        memcpy(prev, h, sizeof prev);
        expect++;
    }
    if (rc == 0 && step != SQLITE_DONE) rc = reg_db_err(r, "audit");
    sqlite3_finalize(st);
    if (rc) return rc;

    /* The ledger's head must be this chain's last row: catches removed newest rows. */
    char *head = NULL;
    size_t len = 0;
    if ((rc = repo_ledger_read(r->home, "audit/head.json", &head, &len)) != 0)
        return core_err_wrap("audit: ledger head: ");
    json_error_t jerr;
    json_t *h = json_loadb(head, len, 0, &jerr);
    free(head);
    const char *lh = json_string_value(json_object_get(h, "hash"));
    json_int_t lseq = json_integer_value(json_object_get(h, "seq"));
    if (!lh || lseq != expect - 1 || strcmp(lh, prev) != 0)
        rc = core_err_set(MLV_EINTEGRITY,
                          "audit chain broken: the ledger records %lld rows ending in %.12s, the "
                          "catalog has %lld ending in %.12s",
                          (long long)lseq, lh ? lh : "?", (long long)(expect - 1), prev);
    json_decref(h);
    if (rc == 0 && rows_out) *rows_out = expect - 1;
    return rc;
}
