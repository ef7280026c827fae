/* cli/cmd_fsck.c: `mlvault fsck [--prune] [--json]` — one line per problem, exit 0 only
 * when catalog, ledger, blobs and audit chain all agree. Runs in the local home or,
 * with a registry URL, on the server (POST /api/v1/admin/fsck); one printer for both. */
#include "cli/cli.h"

/* Prints reg_fsck's report and takes it; MLV_EINTEGRITY when it found problems. */
static int print_report(const cli_args *a, json_t *rep)
{
    json_t *problems = json_object_get(rep, "problems"), *x;
    json_t *checked = json_object_get(rep, "checked");
    size_t n = json_array_size(problems), i;
    if (a->json) {
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

int cmd_fsck(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"prune", 0, false, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, 1);
    if (rc) return rc;
    if (a.npos) return core_err_set(MLV_EINVAL, "usage: mlvault fsck [--prune] [--json]");
    json_t *rep = NULL;
    if (cli_remote_url(&a)) {
        json_t *body = json_pack("{s:b}", "prune", cli_flag(&a, "prune"));
        if (!body) return core_err_set(MLV_ENOMEM, "out of memory");
        rc = cli_api(&a, "POST", "/api/v1/admin/fsck", body, &rep);
        json_decref(body);
        if (rc == 0 && !json_is_array(json_object_get(rep, "problems"))) {
            json_decref(rep);
            return core_err_set(MLV_EIO, "the registry's fsck report has no problem list");
        }
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_fsck(r, &me, cli_flag(&a, "prune"), &rep);
        reg_close(r);
    }
    return rc ? rc : print_report(&a, rep);
}
