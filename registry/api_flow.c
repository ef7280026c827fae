/* registry/api_flow.c: the API's job, channel and promotion routes (docs/api.md: Jobs;
 * Channels, promotions, approvals). Bodies are parsed and typed here; the rules (roles,
 * gate, approvals) are the registry's (jobs.c, promote.c). A promotion request also
 * queues the job that runs its gate. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/server_internal.h"

static int64_t id_param(const srv_req *q, int i)
{
    return strtoll(q->params[i], NULL, 10);
}

/* -------------------------------------------------------------------- jobs --- */

int api_jobs_submit(srv_req *q)
{
    json_t *b, *job = NULL;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    const char *kind = NULL;
    json_t *params = json_object_get(b, "params");
    int64_t id;
    if ((rc = srv_str_field(b, "kind", true, 15, &kind)) != 0) goto done;
    if (strcmp(kind, "quantize") != 0 && strcmp(kind, "eval") != 0) {
        rc = core_err_set(MLV_EINVAL, "unknown job kind '%s' (quantize or eval)", kind);
        goto done;
    }
    if (!json_is_object(params)) {
        rc = core_err_set(MLV_EINVAL, "'params' must be an object ({ref, OPTION: value, ...})");
        goto done;
    }
    if ((rc = reg_job_submit(q->r, &q->user, &q->s->validate, kind, params, &id)) != 0) goto done;
    if ((rc = reg_job_get(q->r, &q->user, id, &job)) != 0) goto done;
    rc = srv_reply_json(q, 201, job);
done:
    json_decref(b);
    return rc;
}

int api_jobs_list(srv_req *q)
{
    char state[32];
    const char *s = NULL;
    int rc = srv_query(q, "state", state, sizeof state);
    if (rc < 0) return rc;
    if (*state) {
        static const char *ok[] = {"queued", "running", "succeeded", "failed", "cancelled"};
        for (size_t i = 0; i < 5 && !s; i++)
            if (!strcmp(state, ok[i])) s = ok[i];
        if (!s)
            return core_err_set(MLV_EINVAL,
                                "state: queued, running, succeeded, failed or cancelled");
    }
    json_t *o;
    rc = reg_job_list(q->r, &q->user, s, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_job_get(srv_req *q)
{
    json_t *o;
    int rc = reg_job_get(q->r, &q->user, id_param(q, 0), &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_job_log(srv_req *q)
{
    char off_s[32];
    uint64_t off = 0;
    int rc = srv_query(q, "offset", off_s, sizeof off_s);
    if (rc < 0) return rc;
    if (*off_s) {
        char *end;
        long long x = strtoll(off_s, &end, 10);
        if (*end || x < 0) return core_err_set(MLV_EINVAL, "offset: want a byte count");
        off = (uint64_t)x;
    }
    char *text = NULL;
    size_t len = 0;
    rc = reg_job_log(q->r, &q->user, id_param(q, 0), off, &text, &len);
    if (rc) return rc;
    char extra[80];
    snprintf(extra, sizeof extra, "X-Mlvault-Log-Size: %llu\r\n", (unsigned long long)(off + len));
    srv_reply_bytes(q, 200, "text/plain; charset=utf-8", text ? text : "", len, extra);
    free(text);
    return 0;
}

int api_job_cancel(srv_req *q)
{
    int64_t id = id_param(q, 0);
    int rc = reg_job_cancel(q->r, &q->user, id);
    json_t *o;
    if (rc == 0) rc = reg_job_get(q->r, &q->user, id, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

/* ---------------------------------------------------------------- channels --- */

int api_channels(srv_req *q)
{
    json_t *o;
    int rc = reg_channel_list(q->r, &q->user, q->params[0], &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_channel_set(srv_req *q)
{
    json_t *b, *list = NULL;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    reg_channel_policy p = {.threshold = NAN, .approvals = 0, .expiry_days = 90};
    snprintf(p.gate_metric, sizeof p.gate_metric, "next_token_accuracy");
    const char *data = NULL, *metric = NULL;
    int64_t approvals = p.approvals, expiry = p.expiry_days, ctx = 0;
    if ((rc = srv_str_field(b, "gate_data", false, sizeof p.gate_dataset - 1, &data)) != 0 ||
        (rc = srv_str_field(b, "gate_metric", false, sizeof p.gate_metric - 1, &metric)) != 0 ||
        (rc = srv_num_field(b, "threshold", false, 0, 100, &p.threshold)) != 0 ||
        (rc = srv_int_field(b, "approvals", false, 0, 16, &approvals)) != 0 ||
        (rc = srv_int_field(b, "expiry_days", false, 1, 36500, &expiry)) != 0 ||
        (rc = srv_int_field(b, "ctx", false, 0, 1 << 20, &ctx)) != 0)
        goto done;
    if (data) snprintf(p.gate_dataset, sizeof p.gate_dataset, "%s", data);
    if (metric) snprintf(p.gate_metric, sizeof p.gate_metric, "%s", metric);
    p.approvals = (int)approvals;
    p.expiry_days = (int)expiry;
    p.ctx = (uint32_t)ctx;
    if ((rc = reg_channel_set(q->r, &q->user, q->params[0], q->params[1], &p)) != 0) goto done;
    if ((rc = reg_channel_list(q->r, &q->user, q->params[0], &list)) != 0) goto done;
    size_t i;
    json_t *c, *found = NULL;
    json_array_foreach(list, i, c)
    {
        const char *name = json_string_value(json_object_get(c, "channel"));
        if (name && !strcmp(name, q->params[1])) found = c;
    }
    rc = srv_reply_json(q, 200, found ? json_incref(found) : json_object());
done:
    json_decref(list);
    json_decref(b);
    return rc;
}

int api_channel_release(srv_req *q)
{
    json_t *o;
    int rc = reg_channel_release(q->r, &q->user, q->params[0], q->params[1], &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

/* -------------------------------------------------------------- promotions --- */

int api_promote(srv_req *q)
{
    json_t *b, *params = NULL, *o = NULL;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    const char *ref = NULL, *channel = NULL, *why = "";
    int64_t id, job;
    if ((rc = srv_str_field(b, "ref", true, 200, &ref)) != 0 ||
        (rc = srv_str_field(b, "channel", true, 64, &channel)) != 0 ||
        (rc = srv_str_field(b, "reason", false, 4096, &why)) != 0)
        goto done;
    if (!core_name_valid(channel)) {
        rc = core_err_set(MLV_EINVAL, "invalid channel '%s'", channel);
        goto done;
    }
    if ((rc = reg_promote_request(q->r, &q->user, ref, channel, why, &id)) != 0) goto done;
    /* The gate runs as a job of the requester: evaluations may take minutes. */
    if (!(params = json_pack("{s:I}", "promotion", (json_int_t)id))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = reg_job_submit(q->r, &q->user, &q->s->validate, "gate", params, &job)) != 0 ||
        (rc = reg_promote_set_job(q->r, id, job)) != 0) {
        core_err_wrap("promotion %lld was requested, but its gate job: ", (long long)id);
        goto done;
    }
    if ((rc = reg_promote_get(q->r, &q->user, id, &o)) != 0) goto done;
    rc = srv_reply_json(q, 201, o);
done:
    json_decref(params);
    json_decref(b);
    return rc;
}

int api_promotions(srv_req *q)
{
    char pend[8];
    int rc = srv_query(q, "pending", pend, sizeof pend);
    if (rc < 0) return rc;
    bool pending = rc > 0 && strcmp(pend, "0") != 0 && strcmp(pend, "false") != 0;
    json_t *o;
    rc = reg_promote_list(q->r, &q->user, pending, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_promotion(srv_req *q)
{
    json_t *o;
    int rc = reg_promote_get(q->r, &q->user, id_param(q, 0), &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_approve(srv_req *q)
{
    json_t *b, *o = NULL;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    const char *digest = NULL, *comment = "";
    int64_t id = id_param(q, 0);
    if ((rc = srv_str_field(b, "digest", false, 64, &digest)) != 0 ||
        (rc = srv_str_field(b, "comment", false, 4096, &comment)) != 0)
        goto done;
    if (digest && !core_is_hex(digest, 64)) {
        rc = core_err_set(MLV_EINVAL, "digest: want 64 lowercase hex characters");
        goto done;
    }
    if ((rc = reg_promote_approve(q->r, &q->user, id, digest, comment)) != 0 ||
        (rc = reg_promote_get(q->r, &q->user, id, &o)) != 0)
        goto done;
    rc = srv_reply_json(q, 200, o);
done:
    json_decref(b);
    return rc;
}

int api_reject(srv_req *q)
{
    json_t *b, *o = NULL;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    const char *why = NULL;
    int64_t id = id_param(q, 0);
    if ((rc = srv_str_field(b, "reason", true, 4096, &why)) != 0) goto done;
    if ((rc = reg_promote_reject(q->r, &q->user, id, why)) != 0 ||
        (rc = reg_promote_get(q->r, &q->user, id, &o)) != 0)
        goto done;
    rc = srv_reply_json(q, 200, o);
done:
    json_decref(b);
    return rc;
}
