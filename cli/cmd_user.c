/* cli/cmd_user.c: `mlvault user add|list|disable` — identity management (admin only). */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const cli_opt_spec SPEC[] = {{"role", 0, true, false}};

int cmd_user(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, SPEC, 1);
    if (rc) return rc;
    const char *sub = a.npos ? a.pos[0] : "";
    bool add = !strcmp(sub, "add"), list = !strcmp(sub, "list"), dis = !strcmp(sub, "disable");
    if (!(add && a.npos == 2) && !(list && a.npos == 1) && !(dis && a.npos == 2))
        return core_err_set(MLV_EINVAL, "usage: mlvault user add NAME --role ROLE | user list | "
                                        "user disable NAME");
    reg_role role = REG_ROLE_VIEWER;
    if (add) {
        if (!cli_opt(&a, "role"))
            return core_err_set(MLV_EINVAL,
                                "user add needs --role viewer|engineer|approver|admin|node");
        if ((rc = reg_role_parse(cli_opt(&a, "role"), &role)) != 0) return rc;
    }
    reg_ctx *r;
    reg_user me;
    if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
    if (add) {
        char token[REG_TOKEN_LEN + 1];
        rc = reg_user_add(r, &me, a.pos[1], role, token);
        if (rc == 0 && a.json)
            cli_print_json(json_pack("{s:s,s:s,s:s}", "user", a.pos[1], "role", reg_role_name(role),
                                     "token", token));
        else if (rc == 0)
            printf("added %s (%s); token (shown once): %s\n", a.pos[1], reg_role_name(role), token);
        memset(token, 0, sizeof token);
    } else if (dis) {
        rc = reg_user_disable(r, &me, a.pos[1]);
        if (rc == 0 && !a.json) printf("disabled %s\n", a.pos[1]);
    } else {
        reg_user *us;
        size_t n;
        if ((rc = reg_user_list(r, &me, &us, &n)) == 0) {
            json_t *arr = json_array();
            for (size_t i = 0; i < n; i++)
                json_array_append_new(arr,
                                      json_pack("{s:s,s:s,s:b,s:s}", "name", us[i].name, "role",
                                                reg_role_name(us[i].role), "disabled",
                                                us[i].disabled, "created_at", us[i].created_at));
            if (a.json)
                cli_print_json(arr);
            else {
                printf("%-24s %-9s %-9s %s\n", "USER", "ROLE", "STATE", "CREATED");
                for (size_t i = 0; i < n; i++)
                    printf("%-24s %-9s %-9s %s\n", us[i].name, reg_role_name(us[i].role),
                           us[i].disabled ? "disabled" : "active", us[i].created_at);
                json_decref(arr);
            }
            free(us);
        }
    }
    reg_close(r);
    return rc;
}
