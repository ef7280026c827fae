#include "cli/cli.h"
int cmd_eval(int argc, char **argv) { return core_err_set(MLV_EINVAL, "not yet"); }
