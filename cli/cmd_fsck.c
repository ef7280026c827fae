/* cli/cmd_fsck.c: `mlvault fsck [--prune] [--json]` — one line per problem, exit 0 only
 * when catalog, ledger, blobs and audit chain all agree. */
#include "cli/cli.h"

int cmd_fsck(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"prune", 0, false, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, 1);
    if (rc || (rc = cli_remote_refuse(&a, "fsck")) != 0) return rc;
    if (a.npos) return core_err_set(MLV_EINVAL, "usage: mlvault fsck [--prune] [--json]");
    reg_ctx *r;
    reg_user me;
    if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
    json_t *rep;
    rc = reg_fsck(r, &me, cli_flag(&a, "prune"), &rep);
    reg_close(r);
    if (rc) return rc;
    json_t *problems = json_object_get(rep, "problems"), *x;
    json_t *checked = json_object_get(rep, "checked");
    size_t n = json_array_size(problems), i;
    if (a.json) {
        cli_print_json(rep);
    } else {
        json_array_foreach(json_object_get(rep, "removed"), i, x)
            printf("removed %s\n", json_string_value(x));
        json_array_foreach(problems, i, x) printf("%s\n", json_string_value(x));
        if (n == 0)
            printf("fsck: ok — %lld versions, %lld blobs, %lld audit rows agree with the ledger\n",
                   (long long)json_integer_value(json_object_get(checked, "versions")),
                   (long long)json_integer_value(json_object_get(checked, "blobs")),
                   (long long)json_integer_value(json_object_get(checked, "audit_rows")));
        json_decref(rep);
    }
    return n ? core_err_set(MLV_EINTEGRITY, "fsck found %zu problem%s", n, n == 1 ? "" : "s") : 0;
}
