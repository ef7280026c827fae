/* cli/cmd_user.c: `mlvault user add|list|disable|token` — identity management (admin
 * only), in the local home or, with a registry URL, through /api/v1/users; both print
 * the same from the same JSON. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const cli_opt_spec SPEC[] = {{"role", 0, true, false}};

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* {user, role, token} of `user add`, {user, token} of `user token`; takes j. */
static void print_token(const cli_args *a, json_t *j, bool added)
{
    if (a->json) {
        cli_print_json(j);
        return;
    }
    if (added)
        printf("added %s (%s); token (shown once): %s\n", str(j, "user"), str(j, "role"),
               str(j, "token"));
    else
        printf("new token for %s (shown once; the old one no longer works): %s\n", str(j, "user"),
               str(j, "token"));
    json_decref(j);
}

/* [{name, role, disabled, created_at}]; takes arr. */
static void print_users(const cli_args *a, json_t *arr)
{
    if (a->json) {
        cli_print_json(arr);
        return;
    }
    size_t i;
    json_t *u;
    printf("%-24s %-9s %-9s %s\n", "USER", "ROLE", "STATE", "CREATED");
    json_array_foreach(arr, i, u) printf(
        "%-24s %-9s %-9s %s\n", str(u, "name"), str(u, "role"),
        json_is_true(json_object_get(u, "disabled")) ? "disabled" : "active", str(u, "created_at"));
    json_decref(arr);
}

static int user_remote(const cli_args *a, const char *sub, reg_role role)
{
    char path[160];
    json_t *res = NULL;
    int rc;
    if (strcmp(sub, "list") && !core_name_valid(a->pos[1]))
        return core_err_set(MLV_EINVAL, "invalid user name '%s'", a->pos[1]);
    if (!strcmp(sub, "add")) {
        json_t *body = json_pack("{s:s,s:s}", "name", a->pos[1], "role", reg_role_name(role));
        rc = cli_api(a, "POST", "/api/v1/users", body, &res);
        json_decref(body);
        if (rc == 0) print_token(a, res, true);
    } else if (!strcmp(sub, "token")) {
        snprintf(path, sizeof path, "/api/v1/users/%s/token", a->pos[1]);
        if ((rc = cli_api(a, "POST", path, NULL, &res)) == 0) print_token(a, res, false);
    } else if (!strcmp(sub, "disable")) {
        snprintf(path, sizeof path, "/api/v1/users/%s/disable", a->pos[1]);
        if ((rc = cli_api(a, "POST", path, NULL, &res)) == 0) {
            if (a->json)
                cli_print_json(res);
            else
                printf("disabled %s\n", a->pos[1]), json_decref(res);
        }
    } else {
        if ((rc = cli_api(a, "GET", "/api/v1/users", NULL, &res)) == 0) print_users(a, res);
    }
    return rc;
}

int cmd_user(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, SPEC, 1);
    if (rc) return rc;
    const char *sub = a.npos ? a.pos[0] : "";
    bool add = !strcmp(sub, "add"), list = !strcmp(sub, "list"), dis = !strcmp(sub, "disable");
    bool tok = !strcmp(sub, "token");
    if (!(add && a.npos == 2) && !(list && a.npos == 1) && !(dis && a.npos == 2) &&
        !(tok && a.npos == 2))
        return core_err_set(MLV_EINVAL, "usage: mlvault user add NAME --role ROLE | user list | "
                                        "user disable NAME | user token NAME");
    reg_role role = REG_ROLE_VIEWER;
    if (add) {
        if (!cli_opt(&a, "role"))
            return core_err_set(MLV_EINVAL,
                                "user add needs --role viewer|engineer|approver|admin|node");
        if ((rc = reg_role_parse(cli_opt(&a, "role"), &role)) != 0) return rc;
    }
    if (cli_remote_url(&a)) return user_remote(&a, sub, role);
    reg_ctx *r;
    reg_user me;
    if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
    if (add || tok) {
        char token[REG_TOKEN_LEN + 1];
        rc = add ? reg_user_add(r, &me, a.pos[1], role, token)
                 : reg_user_rotate_token(r, &me, a.pos[1], token);
        if (rc == 0) {
            json_t *j = add ? json_pack("{s:s,s:s,s:s}", "user", a.pos[1], "role",
                                        reg_role_name(role), "token", token)
                            : json_pack("{s:s,s:s}", "user", a.pos[1], "token", token);
            if (!j)
                rc = core_err_set(MLV_ENOMEM, "out of memory");
            else
                print_token(&a, j, add);
        }
        memset(token, 0, sizeof token);
    } else if (dis) {
        rc = reg_user_disable(r, &me, a.pos[1]);
        if (rc == 0 && a.json)
            cli_print_json(json_pack("{s:s,s:b}", "user", a.pos[1], "disabled", 1));
        else if (rc == 0)
            printf("disabled %s\n", a.pos[1]);
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
            free(us);
            print_users(&a, arr);
        }
    }
    reg_close(r);
    return rc;
}
