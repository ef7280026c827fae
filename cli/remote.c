/* cli/remote.c: the remote registry — which server (--registry, $MLVAULT_URL), with
 * which token and CA, and the one-call helpers the commands use when a server is set
 * (registry/client.c does the HTTP). Printing stays in each command, shared by its
 * local and remote paths. */
#include <stdlib.h>

#include "cli/cli.h"

const char *cli_remote_url(const cli_args *a)
{
    if (a->registry && *a->registry) return a->registry;
    const char *e = getenv("MLVAULT_URL");
    return e && *e ? e : NULL;
}

int cli_client(const cli_args *a, reg_client **out)
{
    *out = NULL;
    const char *url = cli_remote_url(a);
    if (!url) return core_err_set(MLV_EINVAL, "no registry URL (--registry URL or MLVAULT_URL)");
    const char *tok = a->token ? a->token : getenv("MLVAULT_TOKEN");
    return reg_client_new(out, url, tok, getenv("MLVAULT_CACERT"));
}

int cli_api(const cli_args *a, const char *method, const char *path, const json_t *body,
            json_t **out)
{
    if (out) *out = NULL;
    reg_client *c;
    int rc = cli_client(a, &c);
    if (rc) return rc;
    json_t *res = NULL;
    rc = reg_client_json(c, method, path, body, &res);
    reg_client_free(c);
    if (rc == 0 && out)
        *out = res;
    else
        json_decref(res);
    return rc;
}

int cli_remote_version_path(const cli_args *a, const char *ref, const char *suffix, char *out,
                            size_t n)
{
    reg_client *c;
    int rc = cli_client(a, &c);
    if (rc) return rc;
    char base[256];
    rc = reg_client_version_path(c, ref, base, sizeof base);
    reg_client_free(c);
    if (rc == 0) snprintf(out, n, "%s%s", base, suffix ? suffix : "");
    return rc;
}

int cli_remote_refuse(const cli_args *a, const char *what)
{
    if (!cli_remote_url(a)) return 0;
    return core_err_set(MLV_EUNSUPPORTED,
                        "%s runs on the registry host: unset MLVAULT_URL (and drop --registry)",
                        what);
}
