/* cli/cmd_node.c: serving nodes (DESIGN.md, Serving nodes) —
 *   mlvault node init --home DIR                       the node's home and X25519 key pair
 *   mlvault node enroll NODE --pubkey FILE --model NAME   (admin) prints the token once
 *   mlvault node list                                  nodes and what they last reported
 *   mlvault node run ...                               the agent (cli/cmd_node_run.c)
 * enroll and list work on the local home or, with a registry URL, through /api/v1/nodes,
 * printing the same from the same JSON. init runs where the node runs: it needs no
 * registry. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "repo/repo.h"

#define PEM_MAX 16384

static const char USAGE[] = "usage: mlvault node init --home DIR\n"
                            "       mlvault node enroll NODE --pubkey FILE --model NAME\n"
                            "       mlvault node list\n"
                            "       mlvault node run --registry URL --model NAME --channel C ...";

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* ------------------------------------------------------------------ init --- */

static int node_init(const cli_args *a)
{
    const char *home = a->npos == 2 ? a->pos[1] : a->home;
    if (a->npos > 2 || !home || !*home)
        return core_err_set(MLV_EINVAL, "usage: mlvault node init --home DIR (the node's own "
                                        "home, not the registry's)");
    int rc = reg_node_home_init(home);
    if (rc) return rc;
    char *priv = core_path_join(home, "node.key"), *pub = core_path_join(home, "node.pub");
    repo_node_key *k = NULL;
    if (!priv || !pub)
        rc = core_err_set(MLV_ENOMEM, "out of memory");
    else
        rc = repo_node_key_load(&k, priv);
    if (rc == 0 && a->json) {
        cli_print_json(json_pack("{s:s,s:s,s:s,s:s}", "home", home, "pubkey_file", pub, "key_hint",
                                 repo_node_key_hint(k), "pubkey", repo_node_key_public_pem(k)));
    } else if (rc == 0) {
        printf("initialised node home %s\n", home);
        printf("public key: %s (sha256:%.16s)\n", pub, repo_node_key_hint(k));
        printf("an admin enrolls it: mlvault node enroll NODE --pubkey %s --model NAME\n", pub);
    }
    repo_node_key_free(k);
    free(priv);
    free(pub);
    return rc;
}

/* ---------------------------------------------------------------- enroll --- */

/* {name, model, key_hint, token}; takes j. */
static void print_enrolled(const cli_args *a, json_t *j)
{
    if (a->json) {
        cli_print_json(j);
        return;
    }
    printf("enrolled node %s for model %s (key sha256:%.16s)\n", jstr(j, "name"), jstr(j, "model"),
           jstr(j, "key_hint"));
    printf("node token (shown once; give it to the node as --token or MLVAULT_TOKEN): %s\n",
           jstr(j, "token"));
    json_decref(j);
}

static int node_enroll(const cli_args *a)
{
    const char *file = cli_opt(a, "pubkey"), *model = cli_opt(a, "model");
    if (a->npos != 2 || !file || !model)
        return core_err_set(MLV_EINVAL, "usage: mlvault node enroll NODE --pubkey FILE --model "
                                        "NAME");
    const char *name = a->pos[1];
    if (!core_name_valid(name))
        return core_err_set(MLV_EINVAL, "invalid node name '%s': use [a-z0-9][a-z0-9._-]{0,63}",
                            name);
    char *pem = NULL;
    size_t len = 0;
    int rc = core_read_file(file, PEM_MAX, &pem, &len);
    if (rc) return rc;
    if (strlen(pem) != len) {
        free(pem);
        return core_err_set(MLV_EINVAL, "%s is not a PEM public key", file);
    }
    json_t *res = NULL;
    if (cli_remote_url(a)) {
        json_t *body = json_pack("{s:s,s:s,s:s}", "name", name, "pubkey", pem, "model", model);
        rc = body ? cli_api(a, "POST", "/api/v1/nodes", body, &res)
                  : core_err_set(MLV_ENOMEM, "out of memory");
        json_decref(body);
    } else {
        reg_ctx *r = NULL;
        reg_user me;
        char token[REG_TOKEN_LEN + 1], hint[65];
        unsigned char raw[REPO_X25519_LEN];
        if ((rc = cli_open_auth(a, &r, &me)) == 0 &&
            (rc = reg_node_enroll(r, &me, name, pem, model, token)) == 0) {
            repo_import_key_parse(pem, raw, hint);
            if (!(res = json_pack("{s:s,s:s,s:s,s:s}", "name", name, "model", model, "key_hint",
                                  hint, "token", token)))
                rc = core_err_set(MLV_ENOMEM, "out of memory");
        }
        memset(token, 0, sizeof token);
        reg_close(r);
    }
    free(pem);
    if (rc == 0) print_enrolled(a, res);
    return rc;
}

/* ------------------------------------------------------------------ list --- */

/* [{name, model, key_hint, enrolled_by, enrolled_at, disabled, last_seen, state}]; takes
 * arr. */
static void print_nodes(const cli_args *a, json_t *arr)
{
    if (a->json) {
        cli_print_json(arr);
        return;
    }
    if (json_array_size(arr) == 0) {
        printf("no serving nodes (an admin enrolls one with `mlvault node enroll`)\n");
        json_decref(arr);
        return;
    }
    printf("%-20s %-20s %-24s %-7s %8s %-20s %s\n", "NODE", "MODEL", "SERVING", "HEALTHY", "RPS",
           "LAST SEEN", "LAST ERROR");
    size_t i;
    json_t *n;
    json_array_foreach(arr, i, n)
    {
        const json_t *st = json_object_get(n, "state");
        bool has = json_is_object(st);
        const char *serving = has && *jstr(st, "serving") ? jstr(st, "serving") : "-";
        const char *seen =
            json_is_string(json_object_get(n, "last_seen")) ? jstr(n, "last_seen") : "never";
        char rps[32] = "-", name[80];
        if (has) snprintf(rps, sizeof rps, "%.1f", json_number_value(json_object_get(st, "rps")));
        snprintf(name, sizeof name, "%s%s", jstr(n, "name"),
                 json_is_true(json_object_get(n, "disabled")) ? " (disabled)" : "");
        const char *err = has ? jstr(st, "last_error") : "";
        printf("%-20s %-20s %-24s %-7s %8s %-20s %.60s%s\n", name, jstr(n, "model"), serving,
               !has                                           ? "-"
               : json_is_true(json_object_get(st, "healthy")) ? "yes"
                                                              : "no",
               rps, seen, *err ? err : "-", strlen(err) > 60 ? "…" : "");
    }
    json_decref(arr);
}

static int node_list(const cli_args *a)
{
    if (a->npos != 1) return core_err_set(MLV_EINVAL, "usage: mlvault node list");
    json_t *arr = NULL;
    int rc;
    if (cli_remote_url(a)) {
        rc = cli_api(a, "GET", "/api/v1/nodes", NULL, &arr);
    } else {
        reg_ctx *r = NULL;
        reg_user me;
        if ((rc = cli_open_auth(a, &r, &me)) == 0) rc = reg_node_list(r, &me, &arr);
        reg_close(r);
    }
    if (rc == 0) print_nodes(a, arr);
    return rc;
}

int cmd_node(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "run")) return cmd_node_run(argc - 1, argv + 1);
    static const cli_opt_spec spec[] = {{"pubkey", 0, true, false}, {"model", 0, true, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    if (!strcmp(sub, "init")) return node_init(&a);
    if (!strcmp(sub, "enroll")) return node_enroll(&a);
    if (!strcmp(sub, "list")) return node_list(&a);
    return core_err_set(MLV_EINVAL, "%s", USAGE);
}
