/* registry/evals.c: evaluation results of stored model versions (the evaluations table):
 * recording (audited), the cache lookup by (model, dataset, metric, context, baseline)
 * and the JSON list `show` prints. The numbers come from engine/eval.c; this file only
 * stores them. */
#include <stdlib.h>
#include <string.h>

#include "registry/reg_internal.h"

int reg_eval_record(reg_ctx *r, const reg_user *actor, const reg_eval *e)
{
    int rc = reg_authorize(actor, REG_ACT_PUSH);
    if (rc) return rc;
    if (!core_is_hex(e->model_digest, 64) || !core_is_hex(e->dataset_digest, 64) ||
        (e->baseline_digest[0] && !core_is_hex(e->baseline_digest, 64)))
        return core_err_set(MLV_EINVAL, "evaluation: digests must be 64 lowercase hex characters");
    sqlite3_stmt *st = NULL;
    int64_t vid = -1;
    if (sqlite3_prepare_v2(r->db, "SELECT id FROM versions WHERE manifest_digest = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return reg_db_err(r, "versions");
    sqlite3_bind_text(st, 1, e->model_digest, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) vid = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (vid < 0)
        return core_err_set(MLV_ENOTFOUND, "evaluation: no stored version has manifest %.12s",
                            e->model_digest);
    char now[21], detail[256];
    core_time_iso(now);
    snprintf(detail, sizeof detail, "%s=%.6g on %s (%llu samples, ctx %u)", e->metric, e->value,
             e->dataset_ref, (unsigned long long)e->n_samples, e->n_ctx);
    if ((rc = reg_begin(r)) != 0) return rc;
    if (sqlite3_prepare_v2(
            r->db,
            "INSERT INTO evaluations(version_id, model_digest, dataset_ref, dataset_digest, metric,"
            " value, ci_low, ci_high, n_samples, n_ctx, baseline_digest, accuracy, perplexity,"
            " same_top, seconds, engine, created_by, created_at)"
            " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "evaluations");
        goto fail;
    }
    sqlite3_bind_int64(st, 1, vid);
    sqlite3_bind_text(st, 2, e->model_digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, e->dataset_ref, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, e->dataset_digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, e->metric, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 6, e->value);
    sqlite3_bind_double(st, 7, e->ci_low);
    sqlite3_bind_double(st, 8, e->ci_high);
    sqlite3_bind_int64(st, 9, (sqlite3_int64)e->n_samples);
    sqlite3_bind_int64(st, 10, e->n_ctx);
    sqlite3_bind_text(st, 11, e->baseline_digest, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 12, e->accuracy);
    sqlite3_bind_double(st, 13, e->perplexity);
    sqlite3_bind_double(st, 14, e->same_top);
    sqlite3_bind_double(st, 15, e->seconds);
    sqlite3_bind_text(st, 16, e->engine, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 17, actor->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 18, now, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    if (step != SQLITE_DONE) {
        rc = reg_db_err(r, "evaluations");
        goto fail;
    }
    if ((rc = reg_audit_append(r, actor->name, "eval", e->model_ref, detail, NULL, 0)) != 0 ||
        (rc = reg_commit(r)) != 0)
        goto fail;
    reg_ledger_settle(r);
    return 0;
fail:
    reg_rollback(r);
    return rc;
}

#define EVAL_COLUMNS                                                                               \
    "e.model_digest, e.dataset_ref, e.dataset_digest, e.metric, e.value, e.ci_low, e.ci_high,"     \
    " e.n_samples, e.n_ctx, e.baseline_digest, e.accuracy, e.perplexity, e.same_top,"              \
    " e.seconds, e.engine, e.created_by, e.created_at, a.name, v.version"

static void row_to_eval(sqlite3_stmt *st, reg_eval *e)
{
    memset(e, 0, sizeof *e);
#define TXT(dst, col) snprintf(dst, sizeof dst, "%s", (const char *)sqlite3_column_text(st, col))
    TXT(e->model_digest, 0);
    TXT(e->dataset_ref, 1);
    TXT(e->dataset_digest, 2);
    TXT(e->metric, 3);
    e->value = sqlite3_column_double(st, 4);
    e->ci_low = sqlite3_column_double(st, 5);
    e->ci_high = sqlite3_column_double(st, 6);
    e->n_samples = (uint64_t)sqlite3_column_int64(st, 7);
    e->n_ctx = (uint32_t)sqlite3_column_int64(st, 8);
    TXT(e->baseline_digest, 9);
    e->accuracy = sqlite3_column_double(st, 10);
    e->perplexity = sqlite3_column_double(st, 11);
    e->same_top = sqlite3_column_double(st, 12);
    e->seconds = sqlite3_column_double(st, 13);
    TXT(e->engine, 14);
    TXT(e->created_by, 15);
    TXT(e->created_at, 16);
    snprintf(e->model_ref, sizeof e->model_ref, "%s:%d", (const char *)sqlite3_column_text(st, 17),
             sqlite3_column_int(st, 18));
#undef TXT
}

int reg_eval_find(reg_ctx *r, const reg_user *actor, const char *model_digest,
                  const char *dataset_digest, const char *metric, uint32_t n_ctx,
                  const char *baseline_digest, reg_eval *out)
{
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT " EVAL_COLUMNS " FROM evaluations e"
                           " JOIN versions v ON v.id = e.version_id"
                           " JOIN artifacts a ON a.id = v.artifact_id"
                           " WHERE e.model_digest = ? AND e.dataset_digest = ? AND e.metric = ?"
                           " AND e.n_ctx = ? AND e.baseline_digest = ? ORDER BY e.id DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "evaluations");
    sqlite3_bind_text(st, 1, model_digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dataset_digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, metric, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, n_ctx);
    sqlite3_bind_text(st, 5, baseline_digest ? baseline_digest : "", -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        row_to_eval(st, out);
    else if (step == SQLITE_DONE)
        rc = MLV_ENOTFOUND;
    else
        rc = reg_db_err(r, "evaluations");
    sqlite3_finalize(st);
    return rc;
}

json_t *reg_eval_list_json(reg_ctx *r, int64_t version_id)
{
    json_t *arr = json_array();
    sqlite3_stmt *st = NULL;
    if (!arr || sqlite3_prepare_v2(r->db,
                                   "SELECT " EVAL_COLUMNS " FROM evaluations e"
                                   " JOIN versions v ON v.id = e.version_id"
                                   " JOIN artifacts a ON a.id = v.artifact_id"
                                   " WHERE e.version_id = ? ORDER BY e.id DESC",
                                   -1, &st, NULL) != SQLITE_OK)
        return arr;
    sqlite3_bind_int64(st, 1, version_id);
    while (sqlite3_step(st) == SQLITE_ROW) {
        reg_eval e;
        row_to_eval(st, &e);
        json_array_append_new(
            arr,
            json_pack("{s:s,s:s,s:s,s:f,s:f,s:f,s:I,s:I,s:s,s:f,s:f,s:f,s:f,s:s,s:s,s:s}",
                      "dataset", e.dataset_ref, "dataset_digest", e.dataset_digest, "metric",
                      e.metric, "value", e.value, "ci_low", e.ci_low, "ci_high", e.ci_high,
                      "n_samples", (json_int_t)e.n_samples, "ctx", (json_int_t)e.n_ctx,
                      "baseline_digest", e.baseline_digest, "accuracy", e.accuracy, "perplexity",
                      e.perplexity, "same_top", e.same_top, "seconds", e.seconds, "engine",
                      e.engine, "created_by", e.created_by, "created_at", e.created_at));
    }
    sqlite3_finalize(st);
    return arr;
}
