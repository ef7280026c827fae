/* cli/cmd_promote.c: WORK IN PROGRESS */
#include "cli/cli.h"
int cmd_channel(int argc, char **argv) { (void)argc, (void)argv; return core_err_set(MLV_EUNSUPPORTED, "not yet"); }
int cmd_promote(int argc, char **argv) { (void)argc, (void)argv; return core_err_set(MLV_EUNSUPPORTED, "not yet"); }
int cmd_approve(int argc, char **argv) { (void)argc, (void)argv; return core_err_set(MLV_EUNSUPPORTED, "not yet"); }
int cmd_reject(int argc, char **argv) { (void)argc, (void)argv; return core_err_set(MLV_EUNSUPPORTED, "not yet"); }
int cmd_requests(int argc, char **argv) { (void)argc, (void)argv; return core_err_set(MLV_EUNSUPPORTED, "not yet"); }
