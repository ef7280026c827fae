/* registry/promote.c: channels and promotion requests (DESIGN.md, Evaluation and the
 * gate; Promotion and approvals) — channel policies, requests, the accuracy gate
 * (baseline vs candidate on one dataset digest, metric and context), approvals by
 * distinct approvers and rejections. Every state change is one transaction with its
 * audit row and its ledger copy (promotions/ID.json). Building and signing the release
 * record when a request is released is release.c's. The evaluations themselves run in
 * the caller (reg_gate_eval_fn): the registry never loads a model here. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/promote_internal.h"

#define MAX_TEXT 4096          /* reasons and comments */
#define MAX_APPROVALS 32       /* approvals a channel may require */
#define MAX_EXPIRY_DAYS 3650   /* a release record lives at most ten years */
#define MAX_LINEAGE_WALK 10000 /* ancestors visited looking for a baseline */
/* Accuracies are fractions of counted samples, so two results that differ by less than
 * 1e-9 points differ only by binary rounding: (0.99 - 0.97) * 100 is 2.0000000000000018
 * and (0.98 - 0.96) * 100 is 1.9999999999999996, and both are a drop of exactly 2.00
 * that must fail a threshold of 2.00. So the gate fails when drop >= threshold - EPS. */
#define GATE_EPS 1e-9

/* -------------------------------------------------------------------- helpers --- */

static bool text_ok(const char *s)
{
    return !s || strlen(s) <= MAX_TEXT;
}

static bool gate_metric_ok(const char *m)
{
    return !strcmp(m, "next_token_accuracy") || !strcmp(m, "mc_accuracy");
}

/* The context `mlvault eval` uses by default for a metric, so that a policy without one
 * reuses the evaluations already cached from plain `eval` runs. */
static uint32_t default_ctx(const char *metric)
{
    return !strcmp(metric, "mc_accuracy") ? 2048 : 512;
}

/* A stored version's name, number, kind and manifest digest, without its manifest. */
typedef struct ver_brief {
    char name[65], kind[16], digest[65];
    int version;
} ver_brief;

static int ver_brief_load(reg_ctx *r, int64_t vid, ver_brief *out)
{
    sqlite3_stmt *st = NULL;
    memset(out, 0, sizeof *out);
    if (sqlite3_prepare_v2(r->db,
                           "SELECT a.name, a.kind, v.version, v.manifest_digest FROM versions v"
                           " JOIN artifacts a ON a.id = v.artifact_id WHERE v.id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "versions");
    sqlite3_bind_int64(st, 1, vid);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        snprintf(out->name, sizeof out->name, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(out->kind, sizeof out->kind, "%s", (const char *)sqlite3_column_text(st, 1));
        out->version = sqlite3_column_int(st, 2);
        snprintf(out->digest, sizeof out->digest, "%s", (const char *)sqlite3_column_text(st, 3));
    } else if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_ENOTFOUND, "no version with id %lld", (long long)vid);
    } else {
        rc = reg_db_err(r, "versions");
    }
    sqlite3_finalize(st);
    return rc;
}

/* A model reference, NAME@CHANNEL included (the channel's current release). */
static int resolve_model(reg_ctx *r, const char *ref, int64_t *vid, ver_brief *b)
{
    reg_ref p;
    int rc = reg_ref_parse(ref, &p);
    if (rc) return rc;
    if (p.channel[0]) {
        rc = release_current(r, p.name, p.channel, vid, NULL);
        if (rc == MLV_ENOTFOUND)
            return core_err_set(MLV_ENOTFOUND, "%s: channel %s of %s has no release yet", ref,
                                p.channel, p.name);
        if (rc) return rc;
    } else if ((rc = reg_resolve(r, ref, vid, NULL, NULL)) != 0) {
        return rc;
    }
    if ((rc = ver_brief_load(r, *vid, b)) != 0) return rc;
    if (strcmp(b->kind, "model") != 0)
        return core_err_set(MLV_EINVAL, "%s:%d is a %s, not a model", b->name, b->version, b->kind);
    return 0;
}

/* A gate dataset: a stored single-file dataset version. digest: SHA-256 of its bytes
 * (what evaluations record), when not NULL. */
static int resolve_dataset(reg_ctx *r, const char *ref, char name_ver[160], char digest[65])
{
    int64_t vid = 0;
    ver_brief b;
    int rc = reg_resolve(r, ref, &vid, NULL, NULL);
    if (rc) return core_err_wrap("gate dataset: ");
    if ((rc = ver_brief_load(r, vid, &b)) != 0) return rc;
    if (strcmp(b.kind, "dataset") != 0)
        return core_err_set(MLV_EINVAL, "gate dataset: %s:%d is a %s, not a dataset", b.name,
                            b.version, b.kind);
    snprintf(name_ver, 160, "%s:%d", b.name, b.version);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT blob FROM version_files WHERE version_id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return reg_db_err(r, "version_files");
    sqlite3_bind_int64(st, 1, vid);
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (digest && n == 0) snprintf(digest, 65, "%s", (const char *)sqlite3_column_text(st, 0));
        n++;
    }
    sqlite3_finalize(st);
    if (n != 1)
        return core_err_set(MLV_EINVAL, "gate dataset: %s is not a single-file dataset", name_ver);
    return 0;
}

static int model_exists(reg_ctx *r, const char *model)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT kind FROM artifacts WHERE name = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "artifacts");
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    int rc = 0;
    if (sqlite3_step(st) != SQLITE_ROW)
        rc = core_err_set(MLV_ENOTFOUND, "no model named '%s'", model);
    else if (strcmp((const char *)sqlite3_column_text(st, 0), "model") != 0)
        rc = core_err_set(MLV_EINVAL, "%s is a dataset, not a model", model);
    sqlite3_finalize(st);
    return rc;
}

static int policy_load(reg_ctx *r, const char *model, const char *channel, reg_channel_policy *p)
{
    sqlite3_stmt *st = NULL;
    memset(p, 0, sizeof *p);
    if (sqlite3_prepare_v2(
            r->db,
            "SELECT gate_dataset, gate_metric, threshold, approvals, expiry_days, ctx"
            " FROM channels WHERE model = ? AND channel = ?",
            -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "channels");
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(p->gate_dataset, sizeof p->gate_dataset, "%s",
                 (const char *)sqlite3_column_text(st, 0));
        snprintf(p->gate_metric, sizeof p->gate_metric, "%s",
                 (const char *)sqlite3_column_text(st, 1));
        p->threshold = sqlite3_column_double(st, 2);
        p->approvals = sqlite3_column_int(st, 3);
        p->expiry_days = sqlite3_column_int(st, 4);
        p->ctx = (uint32_t)sqlite3_column_int64(st, 5);
    } else {
        rc = core_err_set(MLV_ENOTFOUND,
                          "model %s has no channel '%s' (an admin sets it with `mlvault channel "
                          "set %s %s --gate-data DATASET`)",
                          model, channel, model, channel);
    }
    sqlite3_finalize(st);
    return rc;
}

static json_t *policy_json(const reg_channel_policy *p)
{
    return json_pack("{s:s,s:s,s:f,s:i,s:i,s:I}", "gate_data", p->gate_dataset, "gate_metric",
                     p->gate_metric, "threshold", p->threshold, "approvals", p->approvals,
                     "expiry_days", p->expiry_days, "ctx", (json_int_t)p->ctx);
}

/* ------------------------------------------------------------------ channels --- */

int reg_channel_set(reg_ctx *r, const reg_user *actor, const char *model, const char *channel,
                    const reg_channel_policy *in)
{
    int rc = reg_authorize(actor, REG_ACT_CHANNEL);
    if (rc) return rc;
    if (!core_name_valid(model) || !core_name_valid(channel))
        return core_err_set(MLV_EINVAL,
                            "invalid model or channel name: use [a-z0-9][a-z0-9._-]{0,63}");
    reg_channel_policy p = *in;
    if (isnan(p.threshold)) {
        reg_config cfg;
        if ((rc = reg_config_read(r->home, &cfg)) != 0) return rc;
        p.threshold = cfg.gate_threshold;
    }
    if (!gate_metric_ok(p.gate_metric))
        return core_err_set(MLV_EINVAL,
                            "gate metric '%.32s': expected next_token_accuracy or mc_accuracy",
                            p.gate_metric);
    if (!isfinite(p.threshold) || p.threshold < 0 || p.threshold > 100)
        return core_err_set(MLV_EINVAL, "threshold %g: expected points from 0 to 100", p.threshold);
    if (p.approvals < 0 || p.approvals > MAX_APPROVALS)
        return core_err_set(MLV_EINVAL, "approvals %d: expected 0 to %d", p.approvals,
                            MAX_APPROVALS);
    if (p.expiry_days < 1 || p.expiry_days > MAX_EXPIRY_DAYS)
        return core_err_set(MLV_EINVAL, "expiry %d days: expected 1 to %d", p.expiry_days,
                            MAX_EXPIRY_DAYS);
    if (p.ctx == 0) p.ctx = default_ctx(p.gate_metric);
    if (p.ctx < 16 || p.ctx > 65536)
        return core_err_set(MLV_EINVAL, "ctx %u: expected 16 to 65536", p.ctx);
    if (!p.gate_dataset[0]) return core_err_set(MLV_EINVAL, "a channel needs a gate dataset");
    if ((rc = model_exists(r, model)) != 0) return rc;
    char ds[160];
    if ((rc = resolve_dataset(r, p.gate_dataset, ds, NULL)) != 0) return rc;
    snprintf(p.gate_dataset, sizeof p.gate_dataset, "%s", ds);

    char now[21], target[140], detail[400], path[160];
    core_time_iso(now);
    snprintf(target, sizeof target, "%s@%s", model, channel);
    snprintf(detail, sizeof detail,
             "gate %s on %s (ctx %u), threshold %g points, %d approvals, records expire after "
             "%d days",
             p.gate_metric, p.gate_dataset, p.ctx, p.threshold, p.approvals, p.expiry_days);
    /* Policies sit beside, not inside, channels/: a channel may be named "x.policy". */
    snprintf(path, sizeof path, "policies/%s/%s.json", model, channel);
    json_t *pj = policy_json(&p);
    if (pj) {
        json_object_set_new(pj, "updated_by", json_string(actor->name));
        json_object_set_new(pj, "updated_at", json_string(now));
    }
    char *text = pj ? core_json_dumps(pj, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(pj);
    if (!text) return core_err_set(MLV_ENOMEM, "out of memory");

    sqlite3_stmt *st = NULL;
    if ((rc = reg_begin(r)) != 0) goto done;
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO channels(model, channel, gate_dataset, gate_metric,"
                           " threshold, approvals, expiry_days, ctx, updated_by, updated_at)"
                           " VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT(model, channel) DO UPDATE SET"
                           " gate_dataset = excluded.gate_dataset,"
                           " gate_metric = excluded.gate_metric, threshold = excluded.threshold,"
                           " approvals = excluded.approvals, expiry_days = excluded.expiry_days,"
                           " ctx = excluded.ctx, updated_by = excluded.updated_by,"
                           " updated_at = excluded.updated_at",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "channels");
        goto done;
    }
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, p.gate_dataset, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, p.gate_metric, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 5, p.threshold);
    sqlite3_bind_int(st, 6, p.approvals);
    sqlite3_bind_int(st, 7, p.expiry_days);
    sqlite3_bind_int64(st, 8, p.ctx);
    sqlite3_bind_text(st, 9, actor->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, now, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "channels");
        goto done;
    }
    repo_ledger_change ch = {path, text, strlen(text)};
    if ((rc = reg_audit_append(r, actor->name, "channel.set", target, detail, &ch, 1)) != 0 ||
        (rc = reg_commit(r)) != 0)
        goto done;
done:
    sqlite3_finalize(st);
    free(text);
    if (rc) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

int reg_channel_list(reg_ctx *r, const reg_user *actor, const char *model, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    if (!core_name_valid(model)) return core_err_set(MLV_EINVAL, "invalid model name");
    if ((rc = model_exists(r, model)) != 0) return rc;
    sqlite3_stmt *st = NULL;
    json_t *arr = json_array();
    if (!arr) return core_err_set(MLV_ENOMEM, "out of memory");
    if (sqlite3_prepare_v2(r->db,
                           "SELECT channel, updated_by, updated_at FROM channels WHERE model = ?"
                           " ORDER BY channel",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "channels");
        goto done;
    }
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *channel = (const char *)sqlite3_column_text(st, 0);
        reg_channel_policy p;
        json_t *cur = NULL;
        int64_t vid = 0;
        if ((rc = policy_load(r, model, channel, &p)) != 0) goto done;
        rc = release_current(r, model, channel, &vid, &cur);
        if (rc && rc != MLV_ENOTFOUND) goto done;
        rc = 0;
        core_err_clear();
        json_t *pj = policy_json(&p);
        json_object_set_new(pj, "updated_by",
                            json_string((const char *)sqlite3_column_text(st, 1)));
        json_object_set_new(pj, "updated_at",
                            json_string((const char *)sqlite3_column_text(st, 2)));
        json_t *rec = cur ? json_incref(json_object_get(cur, "record")) : json_null();
        json_decref(cur);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:o,s:o}", "model", model, "channel",
                                             channel, "policy", pj, "current", rec));
    }
    if (step != SQLITE_DONE) rc = reg_db_err(r, "channels");
done:
    sqlite3_finalize(st);
    if (rc) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return 0;
}

int reg_channel_release(reg_ctx *r, const reg_user *actor, const char *model, const char *channel,
                        json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_PULL);
    if (rc) return rc;
    if (!core_name_valid(model) || !core_name_valid(channel))
        return core_err_set(MLV_EINVAL, "invalid model or channel name");
    if ((rc = reg_node_scope(r, actor, model)) != 0) return rc;
    int64_t vid = 0;
    rc = release_current(r, model, channel, &vid, out);
    if (rc == MLV_ENOTFOUND)
        return core_err_set(MLV_ENOTFOUND, "channel %s of %s has no release yet", channel, model);
    return rc;
}

/* ------------------------------------------------------------ request rows --- */

static char *col_dup(sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    return s ? strdup(s) : NULL;
}

int prom_row_load(reg_ctx *r, int64_t id, prom_row *p)
{
    memset(p, 0, sizeof *p);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT p.id, p.version_id, p.job_id, p.release_seq, p.model, p.channel,"
                           " p.digest, v.version, p.state, p.requested_by, p.requested_at,"
                           " p.decided_at, p.reason, p.gate, p.rejection FROM promotions p"
                           " JOIN versions v ON v.id = p.version_id WHERE p.id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "promotions");
    sqlite3_bind_int64(st, 1, id);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
#define TXT(dst, i)                                                                                \
    snprintf(dst, sizeof dst, "%s",                                                                \
             sqlite3_column_text(st, i) ? (const char *)sqlite3_column_text(st, i) : "")
        p->id = sqlite3_column_int64(st, 0);
        p->version_id = sqlite3_column_int64(st, 1);
        p->job_id = sqlite3_column_int64(st, 2);
        p->release_seq = sqlite3_column_int64(st, 3);
        TXT(p->model, 4);
        TXT(p->channel, 5);
        TXT(p->digest, 6);
        p->version = sqlite3_column_int(st, 7);
        TXT(p->state, 8);
        TXT(p->requested_by, 9);
        TXT(p->requested_at, 10);
        TXT(p->decided_at, 11);
#undef TXT
        p->reason = col_dup(st, 12);
        p->gate = col_dup(st, 13);
        p->rejection = col_dup(st, 14);
        if (!p->reason) rc = core_err_set(MLV_ENOMEM, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_ENOTFOUND, "no promotion request %lld", (long long)id);
    } else {
        rc = reg_db_err(r, "promotions");
    }
    sqlite3_finalize(st);
    if (rc) prom_row_clear(p);
    return rc;
}

void prom_row_clear(prom_row *p)
{
    if (!p) return;
    free(p->reason);
    free(p->gate);
    free(p->rejection);
    memset(p, 0, sizeof *p);
}

static json_t *load_json_text(const char *text)
{
    if (!text) return json_null();
    json_t *j = json_loads(text, 0, NULL);
    return j ? j : json_null();
}

static json_t *approvals_json(reg_ctx *r, int64_t id)
{
    json_t *arr = json_array();
    sqlite3_stmt *st = NULL;
    if (!arr || sqlite3_prepare_v2(r->db,
                                   "SELECT user, digest, comment, at FROM approvals"
                                   " WHERE promotion_id = ? ORDER BY at, rowid",
                                   -1, &st, NULL) != SQLITE_OK)
        return arr;
    sqlite3_bind_int64(st, 1, id);
    while (sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s}", "user",
                                             (const char *)sqlite3_column_text(st, 0), "digest",
                                             (const char *)sqlite3_column_text(st, 1), "comment",
                                             (const char *)sqlite3_column_text(st, 2), "at",
                                             (const char *)sqlite3_column_text(st, 3)));
    sqlite3_finalize(st);
    return arr;
}

/* Approvals needed: the number the gate fixed when it ran, else the channel's now. */
static int approvals_needed(reg_ctx *r, const prom_row *p, const json_t *gate)
{
    json_t *n = json_object_get(gate, "approvals_needed");
    if (json_is_integer(n)) return (int)json_integer_value(n);
    reg_channel_policy pol;
    if (policy_load(r, p->model, p->channel, &pol) != 0) {
        core_err_clear();
        return 0;
    }
    return pol.approvals;
}

int prom_request_json(reg_ctx *r, int64_t id, json_t **out)
{
    *out = NULL;
    prom_row p;
    int rc = prom_row_load(r, id, &p);
    if (rc) return rc;
    char ref[160];
    snprintf(ref, sizeof ref, "%s:%d", p.model, p.version);
    json_t *gate = load_json_text(p.gate);
    json_t *o = json_pack("{s:I,s:s,s:i,s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "id", (json_int_t)p.id,
                          "model", p.model, "version", p.version, "ref", ref, "digest", p.digest,
                          "channel", p.channel, "state", p.state, "reason", p.reason,
                          "requested_by", p.requested_by, "requested_at", p.requested_at);
    if (!o) {
        json_decref(gate);
        prom_row_clear(&p);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    json_object_set_new(o, "approvals_needed", json_integer(approvals_needed(r, &p, gate)));
    json_object_set_new(o, "gate", gate);
    json_object_set_new(o, "approvals", approvals_json(r, id));
    json_object_set_new(o, "rejection", load_json_text(p.rejection));
    json_t *rec = p.release_seq ? release_record_of(r, id) : NULL;
    json_object_set_new(o, "release", rec ? rec : json_null());
    json_object_set_new(o, "decided_at", p.decided_at[0] ? json_string(p.decided_at) : json_null());
    json_object_set_new(o, "job", p.job_id ? json_integer(p.job_id) : json_null());
    prom_row_clear(&p);
    *out = o;
    return 0;
}

int prom_ledger_text(reg_ctx *r, int64_t id, char path[64], char **text)
{
    json_t *j = NULL;
    *text = NULL;
    int rc = prom_request_json(r, id, &j);
    if (rc) return rc;
    /* The gate job is the server's bookkeeping, not part of the request's history. */
    json_object_del(j, "job");
    *text = core_json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(j);
    if (!*text) return core_err_set(MLV_ENOMEM, "out of memory");
    snprintf(path, 64, "promotions/%lld.json", (long long)id);
    return 0;
}

/* Inside a transaction: the audit row of a request's state change, with the request's
 * ledger copy as it is now. */
static int audit_request(reg_ctx *r, const char *actor, const char *action, const prom_row *p,
                         const char *detail)
{
    char path[64], target[140], full[1200];
    char *text = NULL;
    int rc = prom_ledger_text(r, p->id, path, &text);
    if (rc) return rc;
    snprintf(target, sizeof target, "%s@%s", p->model, p->channel);
    snprintf(full, sizeof full, "request %lld, %s:%d: %s", (long long)p->id, p->model, p->version,
             detail);
    repo_ledger_change ch = {path, text, strlen(text)};
    rc = reg_audit_append(r, actor, action, target, full, &ch, 1);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------ requests --- */

int reg_promote_request(reg_ctx *r, const reg_user *actor, const char *ref, const char *channel,
                        const char *reason, int64_t *id)
{
    *id = 0;
    int rc = reg_authorize(actor, REG_ACT_PROMOTE);
    if (rc) return rc;
    if (!channel || !core_name_valid(channel))
        return core_err_set(MLV_EINVAL, "invalid channel name: use [a-z0-9][a-z0-9._-]{0,63}");
    if (!reason) reason = "";
    if (!text_ok(reason)) return core_err_set(MLV_EINVAL, "reason longer than %d bytes", MAX_TEXT);
    int64_t vid = 0;
    ver_brief b;
    if ((rc = resolve_model(r, ref, &vid, &b)) != 0) return rc;
    reg_channel_policy pol;
    if ((rc = policy_load(r, b.name, channel, &pol)) != 0) return rc;

    char now[21];
    core_time_iso(now);
    sqlite3_stmt *st = NULL;
    if ((rc = reg_begin(r)) != 0) return rc;
    if (sqlite3_prepare_v2(
            r->db,
            "INSERT INTO promotions(model, version_id, digest, channel, state, reason,"
            " requested_by, requested_at) VALUES(?,?,?,?,'gating',?,?,?)",
            -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "promotions");
        goto done;
    }
    sqlite3_bind_text(st, 1, b.name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, vid);
    sqlite3_bind_text(st, 3, b.digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, channel, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, reason, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, actor->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, now, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "promotions");
        goto done;
    }
    int64_t nid = sqlite3_last_insert_rowid(r->db);
    prom_row p = {.id = nid, .version = b.version};
    snprintf(p.model, sizeof p.model, "%s", b.name);
    snprintf(p.channel, sizeof p.channel, "%s", channel);
    char detail[160];
    snprintf(detail, sizeof detail, "to %s (manifest %.12s)", channel, b.digest);
    if ((rc = audit_request(r, actor->name, "promote.request", &p, detail)) != 0 ||
        (rc = reg_commit(r)) != 0)
        goto done;
    *id = nid;
done:
    sqlite3_finalize(st);
    if (rc) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

int reg_promote_set_job(reg_ctx *r, int64_t id, int64_t job_id)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "UPDATE promotions SET job_id = ? WHERE id = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "promotions");
    sqlite3_bind_int64(st, 1, job_id);
    sqlite3_bind_int64(st, 2, id);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : reg_db_err(r, "promotions");
    sqlite3_finalize(st);
    if (rc == 0 && sqlite3_changes(r->db) == 0)
        rc = core_err_set(MLV_ENOTFOUND, "no promotion request %lld", (long long)id);
    return rc;
}

int reg_promote_get(reg_ctx *r, const reg_user *actor, int64_t id, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    return prom_request_json(r, id, out);
}

int reg_promote_list(reg_ctx *r, const reg_user *actor, bool pending_only, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    json_t *arr = json_array();
    if (!arr) return core_err_set(MLV_ENOMEM, "out of memory");
    if (sqlite3_prepare_v2(r->db,
                           pending_only ? "SELECT id FROM promotions WHERE state IN"
                                          " ('gating','pending') ORDER BY id DESC"
                                        : "SELECT id FROM promotions ORDER BY id DESC",
                           -1, &st, NULL) != SQLITE_OK) {
        json_decref(arr);
        return reg_db_err(r, "promotions");
    }
    int step;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *one = NULL;
        if ((rc = prom_request_json(r, sqlite3_column_int64(st, 0), &one)) == 0)
            json_array_append_new(arr, one);
    }
    if (rc == 0 && step != SQLITE_DONE) rc = reg_db_err(r, "promotions");
    sqlite3_finalize(st);
    if (rc) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return 0;
}

/* Inside a transaction: ends an open request (gating or pending) as rejected by `actor`
 * with `reason`, audited as `action`. 0 also when it was no longer open. */
static int reject_locked(reg_ctx *r, const char *actor, const char *action, const prom_row *p,
                         const char *reason)
{
    char now[21];
    core_time_iso(now);
    json_t *rej = json_pack("{s:s,s:s,s:s}", "user", actor, "reason", reason, "at", now);
    char *rej_text = rej ? core_json_dumps(rej, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(rej);
    if (!rej_text) return core_err_set(MLV_ENOMEM, "out of memory");
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_prepare_v2(r->db,
                           "UPDATE promotions SET state = 'rejected', rejection = ?, decided_at = ?"
                           " WHERE id = ? AND state IN ('gating', 'pending')",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "promotions");
        goto done;
    }
    sqlite3_bind_text(st, 1, rej_text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, p->id);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = reg_db_err(r, "promotions");
    else if (sqlite3_changes(r->db) == 1)
        rc = audit_request(r, actor, action, p, reason);
done:
    sqlite3_finalize(st);
    free(rej_text);
    return rc;
}

/* A request whose gate could not run (an evaluation failed, its job crashed or was
 * cancelled) is rejected with the reason, rather than left "gating" for ever. */
static int gate_abort(reg_ctx *r, const char *actor, const prom_row *p, const char *why)
{
    char reason[900];
    snprintf(reason, sizeof reason, "the gate could not run: %s", why);
    int rc = reg_begin(r);
    if (rc == 0 && (rc = reject_locked(r, actor, "promote.gate", p, reason)) == 0)
        rc = reg_commit(r);
    if (rc) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

int reg_promote_sweep_failed_gates(reg_ctx *r)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT p.id, j.error FROM promotions p JOIN jobs j ON j.id = p.job_id"
                           " WHERE p.state = 'gating' AND j.state IN ('failed', 'cancelled')",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "promotions");
    int64_t ids[64];
    char errs[64][400];
    int n = 0;
    while (n < 64 && sqlite3_step(st) == SQLITE_ROW) {
        ids[n] = sqlite3_column_int64(st, 0);
        const char *e = (const char *)sqlite3_column_text(st, 1);
        snprintf(errs[n], sizeof errs[n], "its job %s", e && *e ? e : "failed");
        n++;
    }
    sqlite3_finalize(st);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        prom_row p;
        if ((rc = prom_row_load(r, ids[i], &p)) != 0) break;
        rc = gate_abort(r, p.requested_by, &p, errs[i]);
        prom_row_clear(&p);
    }
    return rc;
}

/* ---------------------------------------------------------------------- gate --- */

/* The cached evaluation of version `vid` on the gate's dataset, metric and context;
 * with eval_fn, a missing one is run (and recorded by it) first. */
static int gate_eval(reg_ctx *r, const reg_user *actor, int64_t vid, const reg_gate_need *proto,
                     const char *dataset_digest, reg_gate_eval_fn eval_fn, void *eval_ctx,
                     reg_eval *out)
{
    ver_brief b;
    int rc = ver_brief_load(r, vid, &b);
    if (rc) return rc;
    reg_gate_need need = *proto;
    snprintf(need.model_ref, sizeof need.model_ref, "%s:%d", b.name, b.version);
    rc = reg_eval_find(r, actor, b.digest, dataset_digest, proto->metric, proto->ctx, "", out);
    if (rc == MLV_ENOTFOUND && !eval_fn)
        return core_err_set(MLV_ENOTFOUND, "gate: %s has no %s evaluation on %s (ctx %u)",
                            need.model_ref, need.metric, need.dataset_ref, need.ctx);
    if (rc != MLV_ENOTFOUND) return rc;
    core_err_clear();
    if ((rc = eval_fn(eval_ctx, &need)) != 0)
        return core_err_wrap("gate: evaluating %s on %s: ", need.model_ref, need.dataset_ref);
    rc = reg_eval_find(r, actor, b.digest, dataset_digest, proto->metric, proto->ctx, "", out);
    if (rc == MLV_ENOTFOUND)
        rc = core_err_set(MLV_EINTEGRITY,
                          "gate: the evaluation of %s on %s (%s, ctx %u) recorded no result "
                          "for dataset digest %.12s",
                          need.model_ref, need.dataset_ref, need.metric, need.ctx, dataset_digest);
    return rc;
}

/* The candidate's nearest ancestor (breadth first over the lineage, parents in id
 * order) that has an evaluation on the gate's terms: *found false when none has. */
static int nearest_evaluated_ancestor(reg_ctx *r, const reg_user *actor, int64_t vid,
                                      const reg_gate_need *proto, const char *dataset_digest,
                                      bool *found, reg_eval *out)
{
    *found = false;
    int64_t *q = malloc(sizeof *q * MAX_LINEAGE_WALK);
    if (!q) return core_err_set(MLV_ENOMEM, "out of memory");
    size_t head = 0, tail = 0;
    int rc = 0;
    q[tail++] = vid;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT parent_id FROM lineage WHERE child_id = ? ORDER BY parent_id",
                           -1, &st, NULL) != SQLITE_OK) {
        free(q);
        return reg_db_err(r, "lineage");
    }
    while (head < tail && !*found && rc == 0) {
        int64_t cur = q[head++];
        if (cur != vid) {
            rc = gate_eval(r, actor, cur, proto, dataset_digest, NULL, NULL, out);
            if (rc == 0) {
                *found = true;
                break;
            }
            if (rc != MLV_ENOTFOUND) break;
            rc = 0;
            core_err_clear();
        }
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, cur);
        while (sqlite3_step(st) == SQLITE_ROW) {
            int64_t parent = sqlite3_column_int64(st, 0);
            bool seen = false;
            for (size_t i = 0; i < tail && !seen; i++)
                seen = q[i] == parent;
            if (!seen && tail < MAX_LINEAGE_WALK) q[tail++] = parent;
        }
    }
    sqlite3_finalize(st);
    free(q);
    return rc;
}

static json_t *side_json(const reg_eval *e)
{
    return json_pack("{s:s,s:s,s:f}", "ref", e->model_ref, "digest", e->model_digest, "value",
                     e->value);
}

int reg_promote_gate(reg_ctx *r, const reg_user *actor, int64_t id, reg_gate_eval_fn eval_fn,
                     void *eval_ctx)
{
    int rc = reg_authorize(actor, REG_ACT_PROMOTE);
    if (rc) return rc;
    prom_row p;
    if ((rc = prom_row_load(r, id, &p)) != 0) return rc;
    json_t *gate = NULL;
    char *gate_text = NULL, *rej_text = NULL;
    char msg[768] = "";
    bool failed = false;
    bool gating = false; /* once true, a failure rejects the request (gate_abort) */
    if (strcmp(p.state, "gating") != 0) {
        rc = core_err_set(MLV_EINVAL, "request %lld is %s: its gate has run", (long long)id,
                          p.state);
        goto out;
    }
    gating = true;
    reg_channel_policy pol;
    reg_gate_need proto;
    char dataset_digest[65];
    memset(&proto, 0, sizeof proto);
    if ((rc = policy_load(r, p.model, p.channel, &pol)) != 0 ||
        (rc = resolve_dataset(r, pol.gate_dataset, proto.dataset_ref, dataset_digest)) != 0)
        goto out;
    snprintf(proto.metric, sizeof proto.metric, "%s", pol.gate_metric);
    proto.ctx = pol.ctx;

    /* Every evaluation first, outside any transaction: they take minutes. The channel's
     * release sequence is noted, and checked again when the verdict is written. */
    reg_eval cand, base;
    bool have_base = false;
    int64_t base_vid = 0, seq = 0;
    if ((rc = gate_eval(r, actor, p.version_id, &proto, dataset_digest, eval_fn, eval_ctx,
                        &cand)) != 0 ||
        (rc = release_base_sequence(r, p.model, p.channel, &seq)) != 0)
        goto out;
    rc = release_current(r, p.model, p.channel, &base_vid, NULL);
    if (rc == 0) {
        if ((rc = gate_eval(r, actor, base_vid, &proto, dataset_digest, eval_fn, eval_ctx,
                            &base)) != 0)
            goto out;
        have_base = true;
    } else if (rc == MLV_ENOTFOUND) {
        core_err_clear();
        if ((rc = nearest_evaluated_ancestor(r, actor, p.version_id, &proto, dataset_digest,
                                             &have_base, &base)) != 0)
            goto out;
    } else {
        goto out;
    }

    char now[21];
    core_time_iso(now);
    double drop = have_base ? (base.value - cand.value) * 100.0 : 0;
    failed = have_base && drop >= pol.threshold - GATE_EPS;
    const char *verdict = !have_base ? "no baseline" : failed ? "fail" : "pass";
    gate = json_pack(
        "{s:s,s:s,s:s,s:s,s:I,s:f,s:o,s:o,s:o,s:i,s:i,s:s,s:s,s:I}", "verdict", verdict, "metric",
        proto.metric, "dataset", proto.dataset_ref, "dataset_digest", dataset_digest, "ctx",
        (json_int_t)proto.ctx, "threshold", pol.threshold, "baseline",
        have_base ? side_json(&base) : json_null(), "candidate", side_json(&cand), "drop",
        have_base ? json_real(drop) : json_null(), "approvals_needed", pol.approvals, "expiry_days",
        pol.expiry_days, "by", actor->name, "at", now, "channel_sequence", (json_int_t)seq);
    if (!gate || !(gate_text = core_json_dumps(gate, JSON_SORT_KEYS | JSON_COMPACT))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto out;
    }
    if (failed)
        snprintf(msg, sizeof msg,
                 "gate failed: %s dropped %.2f points, at or over the threshold of %.2f "
                 "(baseline %s %.2f%%, candidate %s %.2f%%, on %s, ctx %u)",
                 proto.metric, drop, pol.threshold, base.model_ref, base.value * 100,
                 cand.model_ref, cand.value * 100, proto.dataset_ref, proto.ctx);
    else if (have_base)
        snprintf(msg, sizeof msg, "pass: %s drop %.2f points, under the threshold of %.2f",
                 proto.metric, drop, pol.threshold);
    else
        snprintf(msg, sizeof msg, "no baseline: %s %.2f%% on %s, ctx %u", proto.metric,
                 cand.value * 100, proto.dataset_ref, proto.ctx);
    if (failed) {
        json_t *rej = json_pack("{s:s,s:s,s:s}", "user", actor->name, "reason", msg, "at", now);
        rej_text = rej ? core_json_dumps(rej, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
        json_decref(rej);
        if (!rej_text) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto out;
        }
    }

    const char *state = failed ? "rejected" : "pending";
    sqlite3_stmt *st = NULL;
    int64_t seq_now = 0;
    if ((rc = reg_begin(r)) != 0) goto out;
    if ((rc = release_base_sequence(r, p.model, p.channel, &seq_now)) != 0) goto fail;
    if (seq_now != seq) {
        /* Released meanwhile: this verdict was measured against another baseline. */
        reg_rollback(r);
        char why[300];
        snprintf(why, sizeof why,
                 "%s@%s moved (release %lld, then %lld) while it ran; "
                 "request the promotion again",
                 p.model, p.channel, (long long)seq, (long long)seq_now);
        rc = gate_abort(r, actor->name, &p, why);
        if (rc == 0) rc = core_err_set(MLV_EGATE, "the gate could not run: %s", why);
        goto out;
    }
    if (sqlite3_prepare_v2(r->db,
                           "UPDATE promotions SET gate = ?, state = ?, rejection = ?,"
                           " decided_at = ? WHERE id = ? AND state = 'gating'",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "promotions");
        goto fail;
    }
    sqlite3_bind_text(st, 1, gate_text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
    if (failed) {
        sqlite3_bind_text(st, 3, rej_text, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(st, 5, id);
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    if (step != SQLITE_DONE) {
        rc = reg_db_err(r, "promotions");
        goto fail;
    }
    if (sqlite3_changes(r->db) != 1) {
        /* Rejected by an approver while its evaluations ran. */
        rc = core_err_set(MLV_EINVAL, "request %lld changed while its gate ran", (long long)id);
        gating = false;
        goto fail;
    }
    if ((rc = audit_request(r, actor->name, "promote.gate", &p, msg)) != 0) goto fail;
    if (!failed && pol.approvals == 0 && (rc = release_locked(r, actor->name, id)) != 0) goto fail;
    if ((rc = reg_commit(r)) != 0) goto fail;
    reg_ledger_settle(r);
    if (failed) rc = core_err_set(MLV_EGATE, "%s", msg);
    goto out;
fail:
    reg_rollback(r);
out:
    if (rc != 0 && rc != MLV_EGATE && gating) {
        char why[600];
        snprintf(why, sizeof why, "%s", core_err_last());
        int code = rc;
        if (gate_abort(r, actor->name, &p, why) == 0) core_err_set(code, "%s", why);
    }
    json_decref(gate);
    free(gate_text);
    free(rej_text);
    prom_row_clear(&p);
    return rc;
}

/* ------------------------------------------------------------- approvals --- */

static int count_approvals(reg_ctx *r, int64_t id, int *n)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT COUNT(*) FROM approvals WHERE promotion_id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return reg_db_err(r, "approvals");
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : reg_db_err(r, "approvals");
    *n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc;
}

int reg_promote_approve(reg_ctx *r, const reg_user *actor, int64_t id, const char *digest,
                        const char *comment)
{
    int rc = reg_authorize(actor, REG_ACT_APPROVE);
    if (rc) return rc;
    if (!comment) comment = "";
    if (!text_ok(comment))
        return core_err_set(MLV_EINVAL, "comment longer than %d bytes", MAX_TEXT);
    if (digest && !core_is_hex(digest, 64))
        return core_err_set(MLV_EINVAL, "digest: expected 64 lowercase hex characters");
    prom_row p = {0};
    json_t *gate = NULL;
    sqlite3_stmt *st = NULL;
    char now[21], detail[200];
    core_time_iso(now);
    /* Checks and the change in one IMMEDIATE transaction: two approvers at once cannot
     * both count as the last one, and none can approve what was rejected meanwhile. */
    if ((rc = reg_begin(r)) != 0) return rc;
    if ((rc = prom_row_load(r, id, &p)) != 0) goto done;
    if (strcmp(p.state, "pending") != 0) {
        rc = core_err_set(MLV_EINVAL, "request %lld is %s: only a pending request can be approved",
                          (long long)id, p.state);
        goto done;
    }
    if (!strcmp(p.requested_by, actor->name)) {
        rc = core_err_set(MLV_EFORBIDDEN, "%s requested promotion %lld and cannot approve it",
                          actor->name, (long long)id);
        goto done;
    }
    if (digest && strcmp(digest, p.digest) != 0) {
        rc = core_err_set(MLV_EINVAL,
                          "request %lld is for manifest %s, not %s: look at the request again",
                          (long long)id, p.digest, digest);
        goto done;
    }
    /* The gate compared against the channel as it was; if it has been released since,
     * that verdict no longer holds: the request ends and must be made again. */
    gate = load_json_text(p.gate);
    int64_t seq_gate = json_integer_value(json_object_get(gate, "channel_sequence")), seq_now = 0;
    if ((rc = release_base_sequence(r, p.model, p.channel, &seq_now)) != 0) goto done;
    if (seq_now != seq_gate) {
        char why[300];
        snprintf(why, sizeof why,
                 "%s@%s has been released since its gate ran (release %lld, now %lld): the "
                 "gate's verdict no longer holds; request the promotion again",
                 p.model, p.channel, (long long)seq_gate, (long long)seq_now);
        if ((rc = reject_locked(r, actor->name, "promote.reject", &p, why)) == 0 &&
            (rc = reg_commit(r)) == 0) {
            reg_ledger_settle(r);
            rc = core_err_set(MLV_EGATE, "request %lld: %s", (long long)id, why);
        }
        json_decref(gate);
        prom_row_clear(&p);
        if (rc != MLV_EGATE) reg_rollback(r);
        return rc;
    }
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO approvals(promotion_id, user, digest, comment, at)"
                           " VALUES(?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "approvals");
        goto done;
    }
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, actor->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, p.digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, comment, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, now, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step != SQLITE_DONE) {
        rc = sqlite3_extended_errcode(r->db) == SQLITE_CONSTRAINT_PRIMARYKEY
                 ? core_err_set(MLV_EEXISTS, "%s has already approved request %lld", actor->name,
                                (long long)id)
                 : reg_db_err(r, "approvals");
        goto done;
    }
    int have = 0;
    int need = approvals_needed(r, &p, gate);
    if ((rc = count_approvals(r, id, &have)) != 0) goto done;
    snprintf(detail, sizeof detail, "approval %d of %d by %s", have, need, actor->name);
    if ((rc = audit_request(r, actor->name, "promote.approve", &p, detail)) != 0) goto done;
    if (have >= need && (rc = release_locked(r, actor->name, id)) != 0) goto done;
    rc = reg_commit(r);
done:
    sqlite3_finalize(st);
    json_decref(gate);
    prom_row_clear(&p);
    if (rc) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

int reg_promote_reject(reg_ctx *r, const reg_user *actor, int64_t id, const char *reason)
{
    int rc = reg_authorize(actor, REG_ACT_APPROVE);
    if (rc) return rc;
    if (!reason || !*reason) return core_err_set(MLV_EINVAL, "a rejection needs a reason");
    if (!text_ok(reason)) return core_err_set(MLV_EINVAL, "reason longer than %d bytes", MAX_TEXT);
    prom_row p = {0};
    sqlite3_stmt *st = NULL;
    char now[21];
    core_time_iso(now);
    json_t *rej = json_pack("{s:s,s:s,s:s}", "user", actor->name, "reason", reason, "at", now);
    char *rej_text = rej ? core_json_dumps(rej, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(rej);
    if (!rej_text) return core_err_set(MLV_ENOMEM, "out of memory");
    if ((rc = reg_begin(r)) != 0) goto done;
    if ((rc = prom_row_load(r, id, &p)) != 0) goto done;
    /* A request still gating may be rejected too: its gate then finds it decided. */
    if (strcmp(p.state, "pending") != 0 && strcmp(p.state, "gating") != 0) {
        rc = core_err_set(MLV_EINVAL, "request %lld is %s: only an open request can be rejected",
                          (long long)id, p.state);
        goto done;
    }
    if (sqlite3_prepare_v2(r->db,
                           "UPDATE promotions SET state = 'rejected', rejection = ?, decided_at = ?"
                           " WHERE id = ?",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "promotions");
        goto done;
    }
    sqlite3_bind_text(st, 1, rej_text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, id);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "promotions");
        goto done;
    }
    char detail[MAX_TEXT + 64];
    snprintf(detail, sizeof detail, "rejected by %s: %s", actor->name, reason);
    if ((rc = audit_request(r, actor->name, "promote.reject", &p, detail)) != 0) goto done;
    rc = reg_commit(r);
done:
    sqlite3_finalize(st);
    free(rej_text);
    prom_row_clear(&p);
    if (rc) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

/* -------------------------------------------------------------------- stats --- */

int reg_promote_stats(reg_ctx *r, json_t **counts, json_t **accuracy)
{
    *counts = NULL;
    *accuracy = NULL;
    sqlite3_stmt *st = NULL;
    json_int_t pending = 0, released = 0, rejected = 0;
    if (sqlite3_prepare_v2(r->db, "SELECT state, COUNT(*) FROM promotions GROUP BY state", -1, &st,
                           NULL) != SQLITE_OK)
        return reg_db_err(r, "promotions");
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *s = (const char *)sqlite3_column_text(st, 0);
        json_int_t n = sqlite3_column_int64(st, 1);
        if (!strcmp(s, "released"))
            released += n;
        else if (!strcmp(s, "rejected"))
            rejected += n;
        else
            pending += n; /* gating or pending: both wait */
    }
    sqlite3_finalize(st);
    json_t *acc = json_array();
    if (!acc ||
        sqlite3_prepare_v2(r->db,
                           "SELECT x.model, x.channel, x.record FROM releases x WHERE x.sequence ="
                           " (SELECT MAX(sequence) FROM releases y WHERE y.model = x.model AND"
                           " y.channel = x.channel) ORDER BY x.model, x.channel",
                           -1, &st, NULL) != SQLITE_OK) {
        json_decref(acc);
        return reg_db_err(r, "releases");
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *rec = json_loads((const char *)sqlite3_column_text(st, 2), 0, NULL);
        json_t *g = json_object_get(rec, "gate");
        json_t *v = json_object_get(json_object_get(g, "candidate"), "value");
        if (json_is_number(v))
            json_array_append_new(
                acc, json_pack("{s:s,s:s,s:O,s:O,s:f}", "model",
                               (const char *)sqlite3_column_text(st, 0), "channel",
                               (const char *)sqlite3_column_text(st, 1), "version",
                               json_object_get(rec, "version"), "metric",
                               json_object_get(g, "metric"), "value", json_number_value(v)));
        json_decref(rec);
    }
    sqlite3_finalize(st);
    *counts =
        json_pack("{s:I,s:I,s:I}", "pending", pending, "released", released, "rejected", rejected);
    *accuracy = acc;
    return 0;
}
