/* cli/cmd_job.c: WORK IN PROGRESS */
#include "cli/cli.h"
int cmd_job(int argc, char **argv) { (void)argc, (void)argv; return core_err_set(MLV_EUNSUPPORTED, "not yet"); }
