/* cli/cmd_audit.c: `mlvault audit [--verify] [filters]` — read and check the audit
 * chain, in the local home or through /api/v1/audit; both print the same. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *USAGE_AUDIT =
    "usage: mlvault audit [--actor USER] [--action ACTION|PREFIX.] [--target TARGET]\n"
    "                     [--since TIME] [--until TIME] [--after SEQ] [--before SEQ]\n"
    "                     [--newest-first] [--limit N] [--json]\n"
    "       mlvault audit --verify\n"
    "  TIME is YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC, inclusive); an ACTION ending in '.'\n"
    "  matches as a prefix (promote.); --newest-first with --limit N: the last N rows";

/* An RFC 3339 UTC time, or a day (its first or last second), into out[21]. */
static int parse_time(const char *opt, const char *v, bool end, char out[21])
{
    static const char day[] = "dddd-dd-dd", full[] = "dddd-dd-ddTdd:dd:ddZ";
    size_t n = strlen(v);
    const char *pat = n == sizeof day - 1 ? day : n == sizeof full - 1 ? full : NULL;
    for (size_t i = 0; pat && i < n; i++)
        if (pat[i] == 'd' ? !isdigit((unsigned char)v[i]) : v[i] != pat[i]) pat = NULL;
    if (!pat)
        return core_err_set(MLV_EINVAL, "--%s %s: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ", opt,
                            v);
    snprintf(out, 21, "%s%s", v, pat == day ? (end ? "T23:59:59Z" : "T00:00:00Z") : "");
    return 0;
}

/* Appends "&key=value" percent-encoded. */
static void query_add(core_buf *b, const char *key, const char *v)
{
    if (!v || !*v) return;
    core_buf_appendf(b, "%c%s=", b->len ? '&' : '?', key);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (isalnum(*p) || strchr("-._~", *p))
            core_buf_append(b, p, 1);
        else
            core_buf_appendf(b, "%%%02X", *p);
    }
}

static void print_rows(const cli_args *a, json_t *arr)
{
    if (a->json) {
        cli_print_json(arr);
        return;
    }
    size_t i;
    json_t *o;
    printf("%-6s %-20s %-12s %-16s %-28s %s\n", "SEQ", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL");
    json_array_foreach(arr, i, o)
    {
        printf("%-6lld %-20s %-12s %-16s %-28s %s\n",
               (long long)json_integer_value(json_object_get(o, "seq")),
               json_string_value(json_object_get(o, "at")),
               json_string_value(json_object_get(o, "actor")),
               json_string_value(json_object_get(o, "action")),
               json_string_value(json_object_get(o, "target")),
               json_string_value(json_object_get(o, "detail")));
    }
    json_decref(arr);
}

int cmd_audit(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {
        {"verify", 0, false, false},      {"actor", 0, true, false}, {"action", 0, true, false},
        {"target", 0, true, false},       {"since", 0, true, false}, {"until", 0, true, false},
        {"after", 0, true, false},        {"limit", 0, true, false}, {"before", 0, true, false},
        {"newest-first", 0, false, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    if (a.npos) return core_err_set(MLV_EINVAL, "%s", USAGE_AUDIT);
    char since[21] = "", until[21] = "";
    double after = 0, before = 0, limit = 0;
    if (cli_opt(&a, "since") && (rc = parse_time("since", cli_opt(&a, "since"), false, since)))
        return rc;
    if (cli_opt(&a, "until") && (rc = parse_time("until", cli_opt(&a, "until"), true, until)))
        return rc;
    if ((rc = cli_opt_num(&a, "after", 0, 9e15, true, &after)) != 0 ||
        (rc = cli_opt_num(&a, "before", 1, 9e15, true, &before)) != 0 ||
        (rc = cli_opt_num(&a, "limit", 1, 9e15, true, &limit)) != 0)
        return rc;
    bool verify = cli_flag(&a, "verify");
    json_t *res = NULL;
    if (cli_remote_url(&a)) {
        core_buf q = {0};
        if (!verify) {
            char num[32];
            query_add(&q, "actor", cli_opt(&a, "actor"));
            query_add(&q, "action", cli_opt(&a, "action"));
            query_add(&q, "target", cli_opt(&a, "target"));
            query_add(&q, "since", since);
            query_add(&q, "until", until);
            snprintf(num, sizeof num, "%.0f", after);
            if (after > 0) query_add(&q, "after", num);
            snprintf(num, sizeof num, "%.0f", before);
            if (before > 0) query_add(&q, "before", num);
            if (cli_flag(&a, "newest-first")) query_add(&q, "order", "desc");
            snprintf(num, sizeof num, "%.0f", limit);
            if (limit > 0) query_add(&q, "limit", num);
        }
        char *qs = core_buf_take(&q);
        char path[2048];
        snprintf(path, sizeof path, "/api/v1/audit%s%s", verify ? "/verify" : "", qs ? qs : "");
        free(qs);
        if ((rc = cli_api(&a, "GET", path, NULL, &res)) != 0) return rc;
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        if (verify) {
            int64_t rows = 0;
            rc = reg_audit_verify(r, &me, &rows);
            if (rc == 0) res = json_pack("{s:b,s:I}", "intact", 1, "rows", (json_int_t)rows);
        } else {
            reg_audit_filter f = {.actor = cli_opt(&a, "actor"),
                                  .action = cli_opt(&a, "action"),
                                  .target = cli_opt(&a, "target"),
                                  .since = since[0] ? since : NULL,
                                  .until = until[0] ? until : NULL,
                                  .after_seq = (int64_t)after,
                                  .before_seq = (int64_t)before,
                                  .limit = (int64_t)limit,
                                  .newest_first = cli_flag(&a, "newest-first")};
            rc = reg_audit_list(r, &me, &f, &res);
        }
        reg_close(r);
        if (rc) return rc;
    }
    if (!verify) {
        print_rows(&a, res);
    } else if (a.json) {
        cli_print_json(res);
    } else {
        printf("audit chain intact: %lld rows, head matches the ledger\n",
               (long long)json_integer_value(json_object_get(res, "rows")));
        json_decref(res);
    }
    return 0;
}
