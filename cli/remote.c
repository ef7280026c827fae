/* cli/remote.c: WORK IN PROGRESS */
#include <stdlib.h>
#include "cli/cli.h"
const char *cli_remote_url(const cli_args *a)
{
    if (a->registry && *a->registry) return a->registry;
    const char *e = getenv("MLVAULT_URL");
    return e && *e ? e : NULL;
}
