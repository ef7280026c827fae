/* cli/cmd_node_run.c: `mlvault node run` (being written). */
#include "cli/cli.h"

int cmd_node_run(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return core_err_set(MLV_EUNSUPPORTED, "node run: not yet built");
}
