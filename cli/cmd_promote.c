/* cli/cmd_promote.c: channels and promotions (DESIGN.md, Evaluation and the gate;
 * Promotion and approvals) —
 *   mlvault channel set NAME CHANNEL --gate-data DATASET_REF [--gate-metric M]
 *       [--threshold 2.0] [--approvals N] [--expiry-days 90] [--ctx N]      (admin)
 *   mlvault channel list NAME | channel show NAME CHANNEL   (the signed release record)
 *   mlvault channel renew NAME CHANNEL      (admin) the current record re-signed, new expiry
 *   mlvault promote REF --to CHANNEL [--reason TEXT]          request; the gate runs first
 *   mlvault approve ID [--comment TEXT] | reject ID --reason TEXT | requests [--pending]
 * Locally these call registry/promote.c, and `promote` runs the gate's evaluations in
 * this process (cli_promote_gate, also the body of a "gate" job); with a registry URL
 * they call the routes of docs/api.md and print the same documents. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "repo/repo.h"

#define POLL_MS 300

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int parse_id(const char *s, int64_t *id)
{
    char *end;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || *end || v < 1)
        return core_err_set(MLV_EINVAL, "'%s' is not a request id (a positive number)", s ? s : "");
    *id = v;
    return 0;
}

/* ------------------------------------------------------------------ printing --- */

static void print_side(const char *label, const json_t *side)
{
    if (!json_is_object(side)) return;
    printf("    %-9s %-16s %.2f%%\n", label, jstr(side, "ref"),
           json_number_value(json_object_get(side, "value")) * 100);
}

static void print_gate(const json_t *g)
{
    if (!json_is_object(g)) {
        printf("  gate: not run yet\n");
        return;
    }
    printf("  gate: %s: %s on %s (ctx %lld)\n", jstr(g, "verdict"), jstr(g, "metric"),
           jstr(g, "dataset"), (long long)json_integer_value(json_object_get(g, "ctx")));
    print_side("baseline", json_object_get(g, "baseline"));
    print_side("candidate", json_object_get(g, "candidate"));
    const json_t *drop = json_object_get(g, "drop");
    double thr = json_number_value(json_object_get(g, "threshold"));
    if (json_is_number(drop))
        printf("    drop %.2f points, threshold %.2f\n", json_number_value(drop), thr);
    else
        printf("    no baseline: passes (threshold %.2f)\n", thr);
}

static void print_request_text(const json_t *q)
{
    printf("request %lld: %s -> %s  [%s]\n",
           (long long)json_integer_value(json_object_get(q, "id")), jstr(q, "ref"),
           jstr(q, "channel"), jstr(q, "state"));
    printf("  manifest sha256:%s\n", jstr(q, "digest"));
    printf("  requested by %s at %s%s%s\n", jstr(q, "requested_by"), jstr(q, "requested_at"),
           *jstr(q, "reason") ? ": " : "", jstr(q, "reason"));
    print_gate(json_object_get(q, "gate"));
    const json_t *apv = json_object_get(q, "approvals");
    printf("  approvals: %zu of %lld", json_array_size(apv),
           (long long)json_integer_value(json_object_get(q, "approvals_needed")));
    size_t i;
    const json_t *x;
    json_array_foreach(apv, i, x)
    {
        printf("%s%s", i ? ", " : " (", jstr(x, "user"));
    }
    printf("%s\n", json_array_size(apv) ? ")" : "");
    const json_t *rej = json_object_get(q, "rejection");
    if (json_is_object(rej))
        printf("  rejected by %s at %s: %s\n", jstr(rej, "user"), jstr(rej, "at"),
               jstr(rej, "reason"));
    const json_t *rel = json_object_get(q, "release");
    if (json_is_object(rel))
        printf("  released: %s@%s is %s:%lld, sequence %lld, expires %s\n", jstr(rel, "model"),
               jstr(rel, "channel"), jstr(rel, "model"),
               (long long)json_integer_value(json_object_get(rel, "version")),
               (long long)json_integer_value(json_object_get(rel, "sequence")),
               jstr(rel, "expires_at"));
}

static void print_request(const cli_args *a, json_t *q)
{
    if (a->json)
        cli_print_json(json_incref(q));
    else
        print_request_text(q);
}

/* A request the gate rejected: MLV_EGATE with the registry's own message (the
 * rejection's reason), so a remote run says what a local one says. */
static int gate_verdict(const json_t *q)
{
    const json_t *g = json_object_get(q, "gate");
    if (strcmp(jstr(q, "state"), "rejected") != 0 || strcmp(jstr(g, "verdict"), "fail") != 0)
        return 0;
    return core_err_set(MLV_EGATE, "%s", jstr(json_object_get(q, "rejection"), "reason"));
}

static void print_policy_line(const json_t *c)
{
    const json_t *p = json_object_get(c, "policy"), *cur = json_object_get(c, "current");
    char current[96] = "-", seq[24] = "-";
    if (json_is_object(cur)) {
        snprintf(current, sizeof current, "%s:%lld", jstr(cur, "model"),
                 (long long)json_integer_value(json_object_get(cur, "version")));
        snprintf(seq, sizeof seq, "%lld",
                 (long long)json_integer_value(json_object_get(cur, "sequence")));
    }
    char gate[256];
    snprintf(gate, sizeof gate, "%s on %s, ctx %lld", jstr(p, "gate_metric"), jstr(p, "gate_data"),
             (long long)json_integer_value(json_object_get(p, "ctx")));
    printf("%-14s %-16s %-4s %-48s %9.2f %9lld %6lldd\n", jstr(c, "channel"), current, seq, gate,
           json_number_value(json_object_get(p, "threshold")),
           (long long)json_integer_value(json_object_get(p, "approvals")),
           (long long)json_integer_value(json_object_get(p, "expiry_days")));
}

static void print_policy_header(void)
{
    printf("%-14s %-16s %-4s %-48s %9s %9s %7s\n", "CHANNEL", "CURRENT", "SEQ", "GATE", "THRESHOLD",
           "APPROVALS", "EXPIRY");
}

/* ------------------------------------------------------------------- channel --- */

static const char *CHANNEL_USAGE =
    "usage: mlvault channel set NAME CHANNEL --gate-data DATASET_REF\n"
    "           [--gate-metric next_token_accuracy|mc_accuracy] [--threshold 2.0]\n"
    "           [--approvals N] [--expiry-days 90] [--ctx N]\n"
    "       mlvault channel list NAME\n"
    "       mlvault channel show NAME CHANNEL\n"
    "       mlvault channel renew NAME CHANNEL";

static int channel_set(const cli_args *a)
{
    if (a->npos != 3 || !cli_opt(a, "gate-data"))
        return core_err_set(MLV_EINVAL, "%s", CHANNEL_USAGE);
    const char *model = a->pos[1], *channel = a->pos[2];
    reg_channel_policy p = {.threshold = NAN, .approvals = 0, .expiry_days = 90};
    const char *metric =
        cli_opt(a, "gate-metric") ? cli_opt(a, "gate-metric") : "next_token_accuracy";
    double approvals = 0, expiry = 90, ctx = 0;
    int rc;
    if ((rc = cli_opt_num(a, "threshold", 0, 100, false, &p.threshold)) != 0 ||
        (rc = cli_opt_num(a, "approvals", 0, 16, true, &approvals)) != 0 ||
        (rc = cli_opt_num(a, "expiry-days", 1, 3650, true, &expiry)) != 0 ||
        (rc = cli_opt_num(a, "ctx", 16, 65536, true, &ctx)) != 0)
        return rc;
    if (strcmp(metric, "next_token_accuracy") != 0 && strcmp(metric, "mc_accuracy") != 0)
        return core_err_set(
            MLV_EINVAL, "--gate-metric %s: expected next_token_accuracy or mc_accuracy", metric);
    if (strlen(cli_opt(a, "gate-data")) >= sizeof p.gate_dataset)
        return core_err_set(MLV_EINVAL, "--gate-data: reference too long");
    snprintf(p.gate_dataset, sizeof p.gate_dataset, "%s", cli_opt(a, "gate-data"));
    snprintf(p.gate_metric, sizeof p.gate_metric, "%s", metric);
    p.approvals = (int)approvals;
    p.expiry_days = (int)expiry;
    p.ctx = (uint32_t)ctx;

    json_t *c = NULL;
    if (cli_remote_url(a)) {
        char path[256];
        snprintf(path, sizeof path, "/api/v1/models/%s/channels/%s", model, channel);
        json_t *body = json_pack("{s:s,s:s,s:i,s:i,s:I}", "gate_data", p.gate_dataset,
                                 "gate_metric", p.gate_metric, "approvals", p.approvals,
                                 "expiry_days", p.expiry_days, "ctx", (json_int_t)p.ctx);
        if (body && !isnan(p.threshold)) /* else the server's config.ini default */
            json_object_set_new(body, "threshold", json_real(p.threshold));
        rc = body ? cli_api(a, "PUT", path, body, &c) : core_err_set(MLV_ENOMEM, "out of memory");
        json_decref(body);
        if (rc) return rc;
    } else {
        reg_ctx *r = NULL;
        reg_user me;
        json_t *list = NULL;
        if ((rc = cli_open_auth(a, &r, &me)) != 0) return rc;
        if ((rc = reg_channel_set(r, &me, model, channel, &p)) == 0 &&
            (rc = reg_channel_list(r, &me, model, &list)) == 0) {
            size_t i;
            json_t *x;
            json_array_foreach(list, i, x)
            {
                if (!c && !strcmp(jstr(x, "channel"), channel)) c = json_incref(x);
            }
        }
        json_decref(list);
        reg_close(r);
        if (rc) return rc;
        if (!c)
            return core_err_set(MLV_EIO, "channel %s of %s was set but is not listed", channel,
                                model);
    }
    if (a->json) {
        cli_print_json(c);
        return 0;
    }
    const json_t *pol = json_object_get(c, "policy");
    printf("channel %s of %s: gate %s on %s (ctx %lld), fails at a drop of %.2f points or more; "
           "%lld approval%s; release records expire after %lld days\n",
           channel, model, jstr(pol, "gate_metric"), jstr(pol, "gate_data"),
           (long long)json_integer_value(json_object_get(pol, "ctx")),
           json_number_value(json_object_get(pol, "threshold")),
           (long long)json_integer_value(json_object_get(pol, "approvals")),
           json_integer_value(json_object_get(pol, "approvals")) == 1 ? "" : "s",
           (long long)json_integer_value(json_object_get(pol, "expiry_days")));
    json_decref(c);
    return 0;
}

static int channel_list(const cli_args *a)
{
    if (a->npos != 2) return core_err_set(MLV_EINVAL, "%s", CHANNEL_USAGE);
    json_t *list = NULL;
    int rc;
    if (cli_remote_url(a)) {
        char path[200];
        snprintf(path, sizeof path, "/api/v1/models/%s/channels", a->pos[1]);
        if ((rc = cli_api(a, "GET", path, NULL, &list)) != 0) return rc;
    } else {
        reg_ctx *r = NULL;
        reg_user me;
        if ((rc = cli_open_auth(a, &r, &me)) != 0) return rc;
        rc = reg_channel_list(r, &me, a->pos[1], &list);
        reg_close(r);
        if (rc) return rc;
    }
    if (a->json) {
        cli_print_json(list);
        return 0;
    }
    if (json_array_size(list) == 0)
        printf("%s has no channels (an admin sets one with `mlvault channel set`)\n", a->pos[1]);
    else
        print_policy_header();
    size_t i;
    json_t *c;
    json_array_foreach(list, i, c)
    {
        print_policy_line(c);
    }
    json_decref(list);
    return 0;
}

/* The registry's signing public key: GET /registry/key, or the home's keys/signing.pub. */
static int registry_pem(const cli_args *a, char **pem)
{
    *pem = NULL;
    if (cli_remote_url(a)) {
        json_t *k = NULL;
        int rc = cli_api(a, "GET", "/api/v1/registry/key", NULL, &k);
        if (rc == 0 && !(*pem = strdup(jstr(k, "pem"))))
            rc = core_err_set(MLV_ENOMEM, "out of memory");
        json_decref(k);
        return rc;
    }
    char *path = core_path_join(cli_home(a), "keys/signing.pub");
    size_t len;
    int rc =
        path ? core_read_file(path, 16384, pem, &len) : core_err_set(MLV_ENOMEM, "out of memory");
    free(path);
    return rc;
}

/* `channel show`, and `channel renew` (which prints the new record the same way). */
static int channel_show(const cli_args *a, bool renew)
{
    if (a->npos != 3) return core_err_set(MLV_EINVAL, "%s", CHANNEL_USAGE);
    json_t *doc = NULL;
    int rc;
    if (renew && (!core_name_valid(a->pos[1]) || !core_name_valid(a->pos[2])))
        return core_err_set(MLV_EINVAL, "invalid model or channel name");
    if (cli_remote_url(a)) {
        char path[256];
        snprintf(path, sizeof path, "/api/v1/models/%s/channels/%s%s", a->pos[1], a->pos[2],
                 renew ? "/renew" : "");
        if ((rc = cli_api(a, renew ? "POST" : "GET", path, NULL, &doc)) != 0) return rc;
    } else {
        reg_ctx *r = NULL;
        reg_user me;
        if ((rc = cli_open_auth(a, &r, &me)) != 0) return rc;
        rc = renew ? reg_channel_renew(r, &me, a->pos[1], a->pos[2], &doc)
                   : reg_channel_release(r, &me, a->pos[1], a->pos[2], &doc);
        reg_close(r);
        if (rc) return rc;
    }
    /* Check what we print: the record's bytes against its signature and the key. */
    char *pem = NULL, hint[65] = "", verdict[300];
    const char *record_json = jstr(doc, "record_json");
    if ((rc = registry_pem(a, &pem)) == 0) {
        char *canon = NULL;
        if (repo_pubkey_canonical(pem, &canon, hint) != 0)
            snprintf(verdict, sizeof verdict, "not checked: %s", core_err_last());
        else if (strcmp(hint, jstr(doc, "key_hint")) != 0)
            snprintf(verdict, sizeof verdict, "made with another key (%.16s, registry %.16s)",
                     jstr(doc, "key_hint"), hint);
        else if (repo_verify_bytes(pem, record_json, strlen(record_json), jstr(doc, "signature")))
            snprintf(verdict, sizeof verdict, "INVALID: %s", core_err_last());
        else
            snprintf(verdict, sizeof verdict, "valid (registry key sha256:%s)", hint);
        free(canon);
    } else {
        snprintf(verdict, sizeof verdict, "not checked: %s", core_err_last());
    }
    free(pem);
    core_err_clear();
    rc = 0;
    if (a->json) {
        cli_print_json(doc);
        return 0;
    }
    const json_t *rec = json_object_get(doc, "record");
    printf("%s@%s -> %s:%lld (manifest sha256:%s)\n", jstr(rec, "model"), jstr(rec, "channel"),
           jstr(rec, "model"), (long long)json_integer_value(json_object_get(rec, "version")),
           jstr(rec, "digest"));
    printf("  sequence %lld, issued %s, expires %s, promotion request %lld\n",
           (long long)json_integer_value(json_object_get(rec, "sequence")), jstr(rec, "issued_at"),
           jstr(rec, "expires_at"),
           (long long)json_integer_value(json_object_get(rec, "promotion")));
    if (json_is_integer(json_object_get(rec, "renewal_of")))
        printf("  renews release %lld (same version, approvers and gate)\n",
               (long long)json_integer_value(json_object_get(rec, "renewal_of")));
    const json_t *apv = json_object_get(rec, "approvers");
    printf("  approvers: ");
    size_t i;
    const json_t *x;
    json_array_foreach(apv, i, x)
    {
        printf("%s%s", i ? ", " : "", json_string_value(x));
    }
    printf("%s\n", json_array_size(apv) ? "" : "none needed");
    print_gate(json_object_get(rec, "gate"));
    printf("  signature: %s\n", verdict);
    json_decref(doc);
    return rc;
}

int cmd_channel(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {
        {"gate-data", 0, true, false},   {"gate-metric", 0, true, false},
        {"threshold", 0, true, false},   {"approvals", 0, true, false},
        {"expiry-days", 0, true, false}, {"ctx", 'c', true, false},
    };
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    const char *sub = a.npos ? a.pos[0] : "";
    if (!strcmp(sub, "set")) return channel_set(&a);
    if (!strcmp(sub, "list")) return channel_list(&a);
    if (!strcmp(sub, "show")) return channel_show(&a, false);
    if (!strcmp(sub, "renew")) return channel_show(&a, true);
    return core_err_set(MLV_EINVAL, "%s", CHANNEL_USAGE);
}

/* ------------------------------------------------------------------ the gate --- */

typedef struct gate_env {
    const cli_args *a;
    eng_load_opts lo;
} gate_env;

/* One missing evaluation: the model and the dataset from the vault (verified, in
 * memory), the engine, and the result recorded where the gate will look for it. */
static int gate_eval(void *ctx, const reg_gate_need *need)
{
    gate_env *g = ctx;
    cli_source model = {0}, ds = {0};
    reg_eval e;
    memset(&e, 0, sizeof e);
    int metric = eng_metric_parse(need->metric), rc;
    if (metric < 0) return core_err_set(MLV_EINVAL, "gate: unknown metric %s", need->metric);
    fprintf(stderr, "gate: evaluating %s on %s (%s, ctx %u)\n", need->model_ref, need->dataset_ref,
            need->metric, need->ctx);
    if ((rc = cli_open_data(g->a, need->dataset_ref, &ds)) != 0) goto done;
    if ((rc = cli_open_model(g->a, need->model_ref, &g->lo, &model)) != 0) goto done;
    if (!model.stored || !ds.stored) {
        rc = core_err_set(MLV_EINVAL, "gate: %s and %s must be stored versions", need->model_ref,
                          need->dataset_ref);
        goto done;
    }
    snprintf(e.model_ref, sizeof e.model_ref, "%s", model.label);
    snprintf(e.model_digest, sizeof e.model_digest, "%s", model.digest);
    if ((rc = cli_eval_model(model.model, metric, &ds, need->ctx, NULL, &e)) != 0) goto done;
    rc = reg_eval_record(model.r, &model.user, &e);
done:
    cli_source_clear(&model);
    cli_source_clear(&ds);
    return rc;
}

int cli_promote_gate(const cli_args *a, int64_t id)
{
    gate_env g = {.a = a};
    int rc = cli_load_opts(a, &g.lo);
    if (rc) return rc;
    reg_ctx *r = NULL;
    reg_user me;
    if ((rc = cli_open_auth(a, &r, &me)) != 0) return rc;
    rc = reg_promote_gate(r, &me, id, gate_eval, &g);
    reg_close(r);
    return rc;
}

/* ------------------------------------------------------------------- promote --- */

/* Remote: the server queued the gate as a job; follow the request until it leaves
 * "gating" (or its job ends without moving it). */
static int wait_gate(const cli_args *a, json_t **q)
{
    int64_t id = json_integer_value(json_object_get(*q, "id"));
    char path[64];
    snprintf(path, sizeof path, "/api/v1/promotions/%lld", (long long)id);
    for (int n = 0; !strcmp(jstr(*q, "state"), "gating"); n++) {
        sleep_ms(POLL_MS);
        json_t *next = NULL;
        int rc = cli_api(a, "GET", path, NULL, &next);
        if (rc) return rc;
        json_decref(*q);
        *q = next;
        const json_t *job_field = json_object_get(*q, "job");
        const long long job_id = json_is_integer(job_field) ? json_integer_value(job_field) : 0;
        if (!strcmp(jstr(*q, "state"), "gating") && job_id > 0 && n % 3 == 2) {
            char jpath[64];
            json_t *job = NULL;
            snprintf(jpath, sizeof jpath, "/api/v1/jobs/%lld", job_id);
            if ((rc = cli_api(a, "GET", jpath, NULL, &job)) != 0) return rc;
            const char *st = jstr(job, "state");
            bool over =
                !strcmp(st, "failed") || !strcmp(st, "cancelled") || !strcmp(st, "succeeded");
            char err[512];
            snprintf(err, sizeof err, "%s", jstr(job, "error"));
            char state[16];
            snprintf(state, sizeof state, "%s", st);
            json_decref(job);
            if (!over) continue;
            /* The job may have ended just after our read of the request. */
            if ((rc = cli_api(a, "GET", path, NULL, &next)) != 0) return rc;
            json_decref(*q);
            *q = next;
            if (!strcmp(jstr(*q, "state"), "gating"))
                return core_err_set(
                    MLV_EIO,
                    "request %lld is still gating (an approver may reject it): its gate job "
                    "%lld %s%s%s",
                    (long long)id, job_id, state, *err ? ": " : "", err);
        }
    }
    return 0;
}

int cmd_promote(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {
        {"to", 0, true, false},
        {"reason", 0, true, false},
        {"threads", 't', true, false},
        {"backend", 0, true, false},
    };
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    const char *channel = cli_opt(&a, "to");
    const char *reason = cli_opt(&a, "reason") ? cli_opt(&a, "reason") : "";
    if (a.npos != 1 || !channel)
        return core_err_set(MLV_EINVAL,
                            "usage: mlvault promote REF --to CHANNEL [--reason TEXT] [--json]");
    json_t *q = NULL;
    if (cli_remote_url(&a)) {
        json_t *body =
            json_pack("{s:s,s:s,s:s}", "ref", a.pos[0], "channel", channel, "reason", reason);
        rc = body ? cli_api(&a, "POST", "/api/v1/promotions", body, &q)
                  : core_err_set(MLV_ENOMEM, "out of memory");
        json_decref(body);
        if (rc == 0) rc = wait_gate(&a, &q);
        if (rc) {
            json_decref(q);
            return rc;
        }
    } else {
        reg_ctx *r = NULL;
        reg_user me;
        int64_t id = 0;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_promote_request(r, &me, a.pos[0], channel, reason, &id);
        reg_close(r);
        if (rc) return rc;
        int gate_rc = cli_promote_gate(&a, id);
        if (gate_rc && gate_rc != MLV_EGATE)
            return core_err_wrap("request %lld is still gating (an approver may reject it): ",
                                 (long long)id);
        core_err_clear();
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_promote_get(r, &me, id, &q);
        reg_close(r);
        if (rc) return rc;
    }
    print_request(&a, q);
    rc = gate_verdict(q);
    json_decref(q);
    return rc;
}

/* ---------------------------------------------------------- approve, reject --- */

static int get_request(const cli_args *a, int64_t id, json_t **q)
{
    if (cli_remote_url(a)) {
        char path[64];
        snprintf(path, sizeof path, "/api/v1/promotions/%lld", (long long)id);
        return cli_api(a, "GET", path, NULL, q);
    }
    reg_ctx *r = NULL;
    reg_user me;
    int rc = cli_open_auth(a, &r, &me);
    if (rc) return rc;
    rc = reg_promote_get(r, &me, id, q);
    reg_close(r);
    return rc;
}

/* approve (reason = the comment) or reject; *q: the request afterwards. */
static int decide(const cli_args *a, int64_t id, bool approve, const char *digest, const char *text,
                  json_t **q)
{
    if (cli_remote_url(a)) {
        char path[80];
        snprintf(path, sizeof path, "/api/v1/promotions/%lld/%s", (long long)id,
                 approve ? "approve" : "reject");
        json_t *body = approve ? json_pack("{s:s,s:s}", "digest", digest, "comment", text)
                               : json_pack("{s:s}", "reason", text);
        int rc =
            body ? cli_api(a, "POST", path, body, q) : core_err_set(MLV_ENOMEM, "out of memory");
        json_decref(body);
        return rc;
    }
    reg_ctx *r = NULL;
    reg_user me;
    int rc = cli_open_auth(a, &r, &me);
    if (rc) return rc;
    rc = approve ? reg_promote_approve(r, &me, id, digest, text)
                 : reg_promote_reject(r, &me, id, text);
    if (rc == 0) rc = reg_promote_get(r, &me, id, q);
    reg_close(r);
    return rc;
}

int cmd_approve(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"comment", 'm', true, false}, {"digest", 0, true, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    int64_t id;
    if (a.npos != 1)
        return core_err_set(MLV_EINVAL,
                            "usage: mlvault approve ID [--comment TEXT] [--digest SHA256]");
    if ((rc = parse_id(a.pos[0], &id)) != 0) return rc;
    /* The approval names the manifest this command showed: a request whose candidate
     * differs from what the approver looked at cannot be approved by mistake. */
    json_t *q = NULL;
    if ((rc = get_request(&a, id, &q)) != 0) return rc;
    char digest[65];
    snprintf(digest, sizeof digest, "%s",
             cli_opt(&a, "digest") ? cli_opt(&a, "digest") : jstr(q, "digest"));
    if (!a.json)
        fprintf(stderr, "approving request %lld: %s -> %s, manifest sha256:%s\n", (long long)id,
                jstr(q, "ref"), jstr(q, "channel"), digest);
    json_decref(q);
    q = NULL;
    const char *comment = cli_opt(&a, "comment") ? cli_opt(&a, "comment") : "";
    if ((rc = decide(&a, id, true, digest, comment, &q)) != 0) return rc;
    print_request(&a, q);
    json_decref(q);
    return 0;
}

int cmd_reject(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"reason", 'm', true, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    int64_t id;
    if (a.npos != 1 || !cli_opt(&a, "reason"))
        return core_err_set(MLV_EINVAL, "usage: mlvault reject ID --reason TEXT");
    if ((rc = parse_id(a.pos[0], &id)) != 0) return rc;
    json_t *q = NULL;
    if ((rc = decide(&a, id, false, NULL, cli_opt(&a, "reason"), &q)) != 0) return rc;
    print_request(&a, q);
    json_decref(q);
    return 0;
}

int cmd_requests(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"pending", 0, false, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    if (a.npos != 0) return core_err_set(MLV_EINVAL, "usage: mlvault requests [--pending]");
    const bool pending = cli_flag(&a, "pending");
    json_t *list = NULL;
    if (cli_remote_url(&a)) {
        if ((rc =
                 cli_api(&a, "GET", pending ? "/api/v1/promotions?pending=1" : "/api/v1/promotions",
                         NULL, &list)) != 0)
            return rc;
    } else {
        reg_ctx *r = NULL;
        reg_user me;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_promote_list(r, &me, pending, &list);
        reg_close(r);
        if (rc) return rc;
    }
    if (a.json) {
        cli_print_json(list);
        return 0;
    }
    if (json_array_size(list) == 0) {
        printf("no %spromotion requests\n", pending ? "open " : "");
        json_decref(list);
        return 0;
    }
    printf("%-5s %-9s %-16s %-12s %-12s %7s %9s  %-12s %s\n", "ID", "STATE", "REF", "CHANNEL",
           "GATE", "DROP", "APPROVALS", "REQUESTED_BY", "REQUESTED_AT");
    size_t i;
    json_t *q;
    json_array_foreach(list, i, q)
    {
        const json_t *g = json_object_get(q, "gate"), *drop = json_object_get(g, "drop");
        char drops[24] = "-", apv[24];
        if (json_is_number(drop)) snprintf(drops, sizeof drops, "%.2f", json_number_value(drop));
        snprintf(apv, sizeof apv, "%zu/%lld", json_array_size(json_object_get(q, "approvals")),
                 (long long)json_integer_value(json_object_get(q, "approvals_needed")));
        printf("%-5lld %-9s %-16s %-12s %-12s %7s %9s  %-12s %s\n",
               (long long)json_integer_value(json_object_get(q, "id")), jstr(q, "state"),
               jstr(q, "ref"), jstr(q, "channel"), json_is_object(g) ? jstr(g, "verdict") : "-",
               drops, apv, jstr(q, "requested_by"), jstr(q, "requested_at"));
    }
    json_decref(list);
    return 0;
}
