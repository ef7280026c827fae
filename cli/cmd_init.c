/* cli/cmd_init.c: `mlvault init` — create a data home and show the admin token once. */
#include <string.h>

#include "cli/cli.h"

int cmd_init(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, NULL, 0);
    if (rc || (rc = cli_remote_refuse(&a, "init")) != 0) return rc;
    if (a.npos > 1) return core_err_set(MLV_EINVAL, "usage: mlvault init [--home DIR]");
    const char *home = a.npos == 1 ? a.pos[0] : cli_home(&a);
    char token[REG_TOKEN_LEN + 1];
    if ((rc = reg_home_init(home, token)) != 0) return rc;
    if (a.json) {
        cli_print_json(json_pack("{s:s,s:s,s:s}", "home", home, "user", "admin", "token", token));
    } else {
        printf("initialised mlvault home %s\n", home);
        printf("admin token (shown once, keep it safe): %s\n", token);
        printf("export MLVAULT_HOME=%s MLVAULT_TOKEN=%s\n", home, token);
    }
    memset(token, 0, sizeof token);
    return 0;
}
