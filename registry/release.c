/* registry/release.c: signed release records (DESIGN.md, Promotion and approvals;
 * docs/api.md) — what a channel points at, as the registry vouches for it to serving
 * nodes. A record is canonical JSON (sorted keys, compact, as jansson's JSON_SORT_KEYS |
 * JSON_COMPACT writes it):
 *
 *   {"approvers":[USER...],"channel":C,"digest":MANIFEST_SHA256,"expires_at":T,
 *    "gate":{...the request's gate...},"issued_at":T,"model":M,"promotion":ID,
 *    "schema":"mlvault.release/v1","sequence":N,"version":V}
 *
 * signed as bytes with the registry's ECDSA P-256 key (repo_sign_bytes: base64 DER over
 * SHA-256). The sequence counts releases of one model's channel and only grows, a
 * rollback included, so a node can refuse an older record. The ledger holds the latest
 * at channels/MODEL/CHANNEL.json as {key_hint, record, record_json, signature}; the
 * releases table keeps every one. When to release is promote.c's decision. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "registry/promote_internal.h"

#define RELEASE_SCHEMA "mlvault.release/v1"

static void iso_time(time_t t, char out[21])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *approvers_json(reg_ctx *r, int64_t id)
{
    json_t *arr = json_array();
    sqlite3_stmt *st = NULL;
    if (!arr || sqlite3_prepare_v2(r->db,
                                   "SELECT user FROM approvals WHERE promotion_id = ?"
                                   " ORDER BY at, rowid",
                                   -1, &st, NULL) != SQLITE_OK) {
        json_decref(arr);
        return NULL;
    }
    sqlite3_bind_int64(st, 1, id);
    while (sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(arr, json_string((const char *)sqlite3_column_text(st, 0)));
    sqlite3_finalize(st);
    return arr;
}

int release_sequence(reg_ctx *r, const char *model, const char *channel, int64_t *seq)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT COALESCE(MAX(sequence), 0) FROM releases"
                           " WHERE model = ? AND channel = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "releases");
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : reg_db_err(r, "releases");
    *seq = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc;
}

/* {key_hint, record, record_json, signature}; owned by the caller, NULL on ENOMEM. */
static json_t *release_doc(reg_ctx *r, const char *record_json, const char *signature)
{
    char hint[65];
    reg_key_hint(hint, repo_keys_public_pem(r->keys));
    json_t *rec = json_loads(record_json, 0, NULL);
    if (!rec) return NULL;
    return json_pack("{s:o,s:s,s:s,s:s}", "record", rec, "record_json", record_json, "signature",
                     signature, "key_hint", hint);
}

int release_locked(reg_ctx *r, const char *actor, int64_t id)
{
    prom_row p;
    int rc = prom_row_load(r, id, &p);
    if (rc) return rc;
    json_t *gate = NULL, *rec = NULL, *doc = NULL;
    char *record_json = NULL, *sig = NULL, *doc_text = NULL, *prom_text = NULL;
    sqlite3_stmt *st = NULL;
    if (strcmp(p.state, "pending") != 0 || !p.gate || !(gate = json_loads(p.gate, 0, NULL))) {
        rc = core_err_set(MLV_EINVAL,
                          "request %lld is %s: only a pending request whose gate "
                          "passed can be released",
                          (long long)id, p.state);
        goto done;
    }
    json_t *days = json_object_get(gate, "expiry_days");
    int expiry_days = json_is_integer(days) ? (int)json_integer_value(days) : 90;
    int64_t seq = 0;
    if ((rc = release_sequence(r, p.model, p.channel, &seq)) != 0) goto done;
    seq++; /* only grows, a rollback included */
    time_t now = time(NULL);
    char issued[21], expires[21];
    iso_time(now, issued);
    iso_time(now + (time_t)expiry_days * 86400, expires);
    json_t *approvers = approvers_json(r, id);
    rec = approvers ? json_pack("{s:s,s:s,s:i,s:s,s:s,s:I,s:s,s:s,s:o,s:O,s:I}", "schema",
                                RELEASE_SCHEMA, "model", p.model, "version", p.version, "digest",
                                p.digest, "channel", p.channel, "sequence", (json_int_t)seq,
                                "issued_at", issued, "expires_at", expires, "approvers", approvers,
                                "gate", gate, "promotion", (json_int_t)id)
                    : NULL;
    if (!rec || !(record_json = core_json_dumps(rec, JSON_SORT_KEYS | JSON_COMPACT))) {
        rc = core_err_set(MLV_ENOMEM, "release: out of memory");
        goto done;
    }
    if ((rc = repo_sign_bytes(r->keys, record_json, strlen(record_json), &sig)) != 0) {
        core_err_wrap("release: ");
        goto done;
    }

    if (sqlite3_prepare_v2(
            r->db,
            "INSERT INTO releases(model, channel, sequence, version_id, promotion_id,"
            " record, signature, issued_at) VALUES(?,?,?,?,?,?,?,?)",
            -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "releases");
        goto done;
    }
    sqlite3_bind_text(st, 1, p.model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, p.channel, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, seq);
    sqlite3_bind_int64(st, 4, p.version_id);
    sqlite3_bind_int64(st, 5, id);
    sqlite3_bind_text(st, 6, record_json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, sig, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, issued, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    st = NULL;
    if (step != SQLITE_DONE) {
        rc = reg_db_err(r, "releases");
        goto done;
    }
    if (sqlite3_prepare_v2(r->db,
                           "UPDATE promotions SET state = 'released', release_seq = ?,"
                           " decided_at = ? WHERE id = ? AND state = 'pending'",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "promotions");
        goto done;
    }
    sqlite3_bind_int64(st, 1, seq);
    sqlite3_bind_text(st, 2, issued, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, id);
    if (sqlite3_step(st) != SQLITE_DONE || sqlite3_changes(r->db) != 1) {
        rc = reg_db_err(r, "promotions");
        goto done;
    }

    char chan_path[160], prom_path[64], target[140], detail[256];
    if (!(doc = release_doc(r, record_json, sig)) ||
        !(doc_text = core_json_dumps(doc, JSON_SORT_KEYS | JSON_COMPACT))) {
        rc = core_err_set(MLV_ENOMEM, "release: out of memory");
        goto done;
    }
    if ((rc = prom_ledger_text(r, id, prom_path, &prom_text)) != 0) goto done;
    snprintf(chan_path, sizeof chan_path, "channels/%s/%s.json", p.model, p.channel);
    snprintf(target, sizeof target, "%s@%s", p.model, p.channel);
    snprintf(detail, sizeof detail, "request %lld: %s:%d (manifest %.12s), sequence %lld",
             (long long)id, p.model, p.version, p.digest, (long long)seq);
    repo_ledger_change ch[2] = {{chan_path, doc_text, strlen(doc_text)},
                                {prom_path, prom_text, strlen(prom_text)}};
    rc = reg_audit_append(r, actor, "promote.release", target, detail, ch, 2);
done:
    sqlite3_finalize(st);
    json_decref(gate);
    json_decref(rec);
    json_decref(doc);
    free(record_json);
    free(sig);
    free(doc_text);
    free(prom_text);
    prom_row_clear(&p);
    return rc;
}

int release_current(reg_ctx *r, const char *model, const char *channel, int64_t *version_id,
                    json_t **out)
{
    if (out) *out = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT version_id, record, signature FROM releases"
                           " WHERE model = ? AND channel = ? ORDER BY sequence DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "releases");
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        *version_id = sqlite3_column_int64(st, 0);
        if (out && !(*out = release_doc(r, (const char *)sqlite3_column_text(st, 1),
                                        (const char *)sqlite3_column_text(st, 2))))
            rc = core_err_set(MLV_EINTEGRITY, "release of %s@%s: the stored record is not JSON",
                              model, channel);
    } else if (step == SQLITE_DONE) {
        rc = MLV_ENOTFOUND;
        core_err_set(rc, "channel %s of %s has no release yet", channel, model);
    } else {
        rc = reg_db_err(r, "releases");
    }
    sqlite3_finalize(st);
    return rc;
}

json_t *release_record_of(reg_ctx *r, int64_t promotion_id)
{
    sqlite3_stmt *st = NULL;
    json_t *rec = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT record FROM releases WHERE promotion_id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return NULL;
    sqlite3_bind_int64(st, 1, promotion_id);
    if (sqlite3_step(st) == SQLITE_ROW)
        rec = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
    sqlite3_finalize(st);
    return rec;
}
