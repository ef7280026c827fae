#include "cli/cli.h"
int cmd_run(int argc, char **argv) { return core_err_set(MLV_EINVAL, "not yet"); }
