/* registry/node.c: a serving node (being written). */
#include "registry/reg_internal.h"

int reg_node_home_init(const char *home)
{
    (void)home;
    return core_err_set(MLV_EUNSUPPORTED, "node init: not yet built");
}

int reg_node_run(const reg_node_opts *o)
{
    (void)o;
    return core_err_set(MLV_EUNSUPPORTED, "node run: not yet built");
}
