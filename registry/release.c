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
 * rollback included, so a node can refuse an older record. A renewal (reg_channel_renew)
 * re-issues the current record with the next sequence, a fresh issued_at and expires_at
 * and "renewal_of": the sequence it replaces, so a node's freeze on expiry can be lifted
 * without a new promotion. The ledger holds the latest
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

/* One number a query on (model ?1, channel ?2) gives. */
static int channel_number(reg_ctx *r, const char *sql, const char *model, const char *channel,
                          int64_t *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "releases");
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : reg_db_err(r, "releases");
    *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc;
}

int release_sequence(reg_ctx *r, const char *model, const char *channel, int64_t *seq)
{
    return channel_number(r,
                          "SELECT COALESCE(MAX(sequence), 0) FROM releases"
                          " WHERE model = ?1 AND channel = ?2",
                          model, channel, seq);
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

/* What a release record says, whether a promotion releases it or an admin renews it. */
typedef struct release_in {
    const char *model, *channel, *digest;
    int version;
    int64_t version_id, promotion;
    json_t *approvers;  /* borrowed */
    json_t *gate;       /* borrowed */
    int expiry_days;    /* from now */
    int64_t renewal_of; /* the sequence a renewal replaces; 0 for a release */
} release_in;

/* Inside a transaction: the channel's next sequence number, the record built and signed,
 * its releases row inserted. *seq, *issued (21 bytes) and *doc_text (the ledger's
 * channels/MODEL/CHANNEL.json, canonical; owned by the caller) are written. */
static int release_insert(reg_ctx *r, const release_in *in, int64_t *seq_out, char issued[21],
                          char **doc_text)
{
    *doc_text = NULL;
    json_t *rec = NULL, *doc = NULL;
    char *record_json = NULL, *sig = NULL;
    sqlite3_stmt *st = NULL;
    int64_t seq = 0;
    int rc = release_sequence(r, in->model, in->channel, &seq);
    if (rc) return rc;
    seq++; /* only grows, a rollback and a renewal included */
    time_t now = time(NULL);
    char expires[21];
    iso_time(now, issued);
    iso_time(now + (time_t)in->expiry_days * 86400, expires);
    rec = json_pack("{s:s,s:s,s:i,s:s,s:s,s:I,s:s,s:s,s:O,s:O,s:I}", "schema", RELEASE_SCHEMA,
                    "model", in->model, "version", in->version, "digest", in->digest, "channel",
                    in->channel, "sequence", (json_int_t)seq, "issued_at", issued, "expires_at",
                    expires, "approvers", in->approvers, "gate", in->gate, "promotion",
                    (json_int_t)in->promotion);
    if (rec && in->renewal_of > 0 &&
        json_object_set_new(rec, "renewal_of", json_integer(in->renewal_of)) != 0) {
        json_decref(rec);
        rec = NULL;
    }
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
    sqlite3_bind_text(st, 1, in->model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, in->channel, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, seq);
    sqlite3_bind_int64(st, 4, in->version_id);
    sqlite3_bind_int64(st, 5, in->promotion);
    sqlite3_bind_text(st, 6, record_json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, sig, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, issued, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "releases");
        goto done;
    }
    if (!(doc = release_doc(r, record_json, sig)) ||
        !(*doc_text = core_json_dumps(doc, JSON_SORT_KEYS | JSON_COMPACT))) {
        rc = core_err_set(MLV_ENOMEM, "release: out of memory");
        goto done;
    }
    *seq_out = seq;
done:
    sqlite3_finalize(st);
    json_decref(rec);
    json_decref(doc);
    free(record_json);
    free(sig);
    return rc;
}

int release_locked(reg_ctx *r, const char *actor, int64_t id)
{
    prom_row p;
    int rc = prom_row_load(r, id, &p);
    if (rc) return rc;
    json_t *gate = NULL, *approvers = NULL;
    char *doc_text = NULL, *prom_text = NULL;
    sqlite3_stmt *st = NULL;
    if (strcmp(p.state, "pending") != 0 || !p.gate || !(gate = json_loads(p.gate, 0, NULL))) {
        rc = core_err_set(MLV_EINVAL,
                          "request %lld is %s: only a pending request whose gate "
                          "passed can be released",
                          (long long)id, p.state);
        goto done;
    }
    json_t *days = json_object_get(gate, "expiry_days");
    if (!(approvers = approvers_json(r, id))) {
        rc = core_err_set(MLV_ENOMEM, "release: out of memory");
        goto done;
    }
    release_in in = {.model = p.model,
                     .channel = p.channel,
                     .digest = p.digest,
                     .version = p.version,
                     .version_id = p.version_id,
                     .promotion = id,
                     .approvers = approvers,
                     .gate = gate,
                     .expiry_days = json_is_integer(days) ? (int)json_integer_value(days) : 90};
    int64_t seq = 0;
    char issued[21];
    if ((rc = release_insert(r, &in, &seq, issued, &doc_text)) != 0) goto done;
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
    json_decref(approvers);
    free(doc_text);
    free(prom_text);
    prom_row_clear(&p);
    return rc;
}

/* The channel policy's expiry_days (MLV_ENOTFOUND without a policy). */
static int channel_expiry_days(reg_ctx *r, const char *model, const char *channel, int *days)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT expiry_days FROM channels WHERE model = ? AND channel = ?", -1,
                           &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "channels");
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        *days = sqlite3_column_int(st, 0);
    else if (step == SQLITE_DONE)
        rc = core_err_set(MLV_ENOTFOUND, "model %s has no channel '%s'", model, channel);
    else
        rc = reg_db_err(r, "channels");
    sqlite3_finalize(st);
    return rc;
}

int reg_channel_renew(reg_ctx *r, const reg_user *actor, const char *model, const char *channel,
                      json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_CHANNEL);
    if (rc) return rc;
    if (!model || !channel || !core_name_valid(model) || !core_name_valid(channel))
        return core_err_set(MLV_EINVAL, "invalid model or channel name");
    json_t *cur = NULL; /* the current release's document: its signed record */
    char *doc_text = NULL;
    if ((rc = reg_begin(r)) != 0) return rc;
    int days = 0;
    int64_t vid = 0;
    if ((rc = release_current(r, model, channel, &vid, &cur)) == MLV_ENOTFOUND)
        core_err_set(rc, "channel %s of %s has no release to renew", channel, model);
    if (rc || (rc = channel_expiry_days(r, model, channel, &days)) != 0) goto fail;
    const json_t *rec = json_object_get(cur, "record");
    json_t *approvers = json_object_get(rec, "approvers"), *gate = json_object_get(rec, "gate");
    const char *digest = json_string_value(json_object_get(rec, "digest"));
    json_t *ver = json_object_get(rec, "version"), *prom = json_object_get(rec, "promotion");
    const int64_t cur_seq = json_integer_value(json_object_get(rec, "sequence"));
    if (!json_is_array(approvers) || !json_is_object(gate) || !digest || !json_is_integer(ver) ||
        !json_is_integer(prom) || cur_seq < 1) {
        rc = core_err_set(MLV_EINTEGRITY, "release %lld of %s@%s: the stored record lacks a field",
                          (long long)cur_seq, model, channel);
        goto fail;
    }
    release_in in = {.model = model,
                     .channel = channel,
                     .digest = digest,
                     .version = (int)json_integer_value(ver),
                     .version_id = vid,
                     .promotion = json_integer_value(prom),
                     .approvers = approvers,
                     .gate = gate,
                     .expiry_days = days,
                     .renewal_of = cur_seq};
    int64_t seq = 0;
    char issued[21], chan_path[160], target[140], detail[256];
    if ((rc = release_insert(r, &in, &seq, issued, &doc_text)) != 0) goto fail;
    snprintf(chan_path, sizeof chan_path, "channels/%s/%s.json", model, channel);
    snprintf(target, sizeof target, "%s@%s", model, channel);
    snprintf(detail, sizeof detail,
             "%s:%d (manifest %.12s): sequence %lld renews %lld, valid %d days", model, in.version,
             digest, (long long)seq, (long long)cur_seq, days);
    repo_ledger_change ch[1] = {{chan_path, doc_text, strlen(doc_text)}};
    if ((rc = reg_audit_append(r, actor->name, "promote.renew", target, detail, ch, 1)) != 0 ||
        (rc = reg_commit(r)) != 0)
        goto fail;
    json_decref(cur);
    free(doc_text);
    reg_ledger_settle(r);
    return release_current(r, model, channel, &vid, out);
fail:
    reg_rollback(r);
    json_decref(cur);
    free(doc_text);
    return rc;
}

int release_base_sequence(reg_ctx *r, const char *model, const char *channel, int64_t *seq)
{
    return channel_number(r,
                          "SELECT COALESCE(MIN(sequence), 0) FROM releases"
                          " WHERE model = ?1 AND channel = ?2 AND promotion_id ="
                          " (SELECT promotion_id FROM releases WHERE model = ?1 AND channel = ?2"
                          "  ORDER BY sequence DESC LIMIT 1)",
                          model, channel, seq);
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
    /* the release itself, not a later renewal of it */
    if (sqlite3_prepare_v2(r->db,
                           "SELECT record FROM releases WHERE promotion_id = ?"
                           " ORDER BY sequence LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return NULL;
    sqlite3_bind_int64(st, 1, promotion_id);
    if (sqlite3_step(st) == SQLITE_ROW)
        rec = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
    sqlite3_finalize(st);
    return rec;
}
