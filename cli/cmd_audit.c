/* cli/cmd_audit.c: `mlvault audit [--verify]` — read and check the audit chain. */
#include "cli/cli.h"

int cmd_audit(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"verify", 0, false, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, 1);
    if (rc) return rc;
    if (a.npos) return core_err_set(MLV_EINVAL, "usage: mlvault audit [--verify] [--json]");
    reg_ctx *r;
    reg_user me;
    if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
    if (cli_flag(&a, "verify")) {
        int64_t rows = 0;
        rc = reg_audit_verify(r, &me, &rows);
        reg_close(r);
        if (rc) return rc;
        if (a.json)
            cli_print_json(json_pack("{s:b,s:I}", "intact", 1, "rows", (json_int_t)rows));
        else
            printf("audit chain intact: %lld rows, head matches the ledger\n", (long long)rows);
        return 0;
    }
    json_t *arr;
    rc = reg_audit_list(r, &me, NULL, &arr);
    reg_close(r);
    if (rc) return rc;
    if (a.json) {
        cli_print_json(arr);
        return 0;
    }
    size_t i;
    json_t *o;
    printf("%-6s %-20s %-12s %-14s %-28s %s\n", "SEQ", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL");
    json_array_foreach(arr, i, o)
    {
        printf("%-6lld %-20s %-12s %-14s %-28s %s\n",
               (long long)json_integer_value(json_object_get(o, "seq")),
               json_string_value(json_object_get(o, "at")),
               json_string_value(json_object_get(o, "actor")),
               json_string_value(json_object_get(o, "action")),
               json_string_value(json_object_get(o, "target")),
               json_string_value(json_object_get(o, "detail")));
    }
    json_decref(arr);
    return 0;
}
