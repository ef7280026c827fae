/* cli/cmd_keys.c: `mlvault keys export-import-key|trust|list` — the keys that let two
 * sites exchange bundles: this site's import key (others wrap data keys for it) and
 * the other sites' signing keys this one trusts. */
#include <ctype.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *USAGE_KEYS =
    "usage: mlvault keys export-import-key [-o FILE]   this site's import key, for bundles\n"
    "                                                  other sites export for it\n"
    "       mlvault keys trust FILE.pub [--name NAME]  trust another site's signing key\n"
    "                                                  (its keys/signing.pub; admin)\n"
    "       mlvault keys list                          trusted signing keys";

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static int export_import_key(const cli_args *a, reg_ctx *r, const reg_user *me)
{
    char *pem = NULL, hint[65];
    int rc = reg_import_key(r, me, &pem, hint);
    if (rc) return rc;
    const char *file = cli_opt(a, "output");
    if (file) {
        char tmpdir[4096];
        snprintf(tmpdir, sizeof tmpdir, "%s", file);
        rc = core_write_atomic(file, dirname(tmpdir), pem, strlen(pem), 0644);
        if (rc == 0 && a->json)
            cli_print_json(json_pack("{s:s,s:s}", "file", file, "hint", hint));
        else if (rc == 0)
            printf("wrote %s (import key %.16s…)\n", file, hint);
    } else if (a->json) {
        cli_print_json(json_pack("{s:s,s:s}", "pem", pem, "hint", hint));
    } else {
        fputs(pem, stdout);
    }
    free(pem);
    return rc;
}

/* A default name from the file's name: "site-a.pub" -> "site-a". */
static void default_name(char *out, size_t n, const char *file)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", file);
    const char *b = basename(buf);
    size_t k = 0;
    for (; b[k] && b[k] != '.' && k + 1 < n && k < 64; k++)
        out[k] = (char)(isalnum((unsigned char)b[k]) ? tolower((unsigned char)b[k]) : '-');
    out[k] = 0;
}

static int trust(const cli_args *a, reg_ctx *r, const reg_user *me)
{
    char *pem = NULL, name[80];
    size_t len = 0;
    int rc = core_read_file(a->pos[1], 16384, &pem, &len);
    if (rc) return rc;
    if (cli_opt(a, "name"))
        snprintf(name, sizeof name, "%s", cli_opt(a, "name"));
    else
        default_name(name, sizeof name, a->pos[1]);
    if (!core_name_valid(name)) {
        free(pem);
        return core_err_set(MLV_EINVAL,
                            "key name '%s' is not valid: give --name NAME "
                            "([a-z0-9][a-z0-9._-]{0,63})",
                            name);
    }
    char hint[65];
    rc = reg_key_trust(r, me, pem, name, hint);
    free(pem);
    if (rc) return rc;
    if (a->json)
        cli_print_json(json_pack("{s:s,s:s}", "name", name, "hint", hint));
    else
        printf("trusted %s: signing key sha256:%s\n", name, hint);
    return 0;
}

static int list(const cli_args *a, reg_ctx *r, const reg_user *me)
{
    json_t *arr = NULL;
    int rc = reg_key_list(r, me, &arr);
    if (rc) return rc;
    if (a->json) {
        cli_print_json(arr);
        return 0;
    }
    printf("%-20s %-18s %-12s %-20s %s\n", "NAME", "KEY", "ADDED BY", "ADDED", "");
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k)
    {
        printf("%-20s %.16s…  %-12s %-20s %s\n", str(k, "name"), str(k, "hint"), str(k, "added_by"),
               str(k, "added_at"), json_is_true(json_object_get(k, "self")) ? "(this site)" : "");
    }
    json_decref(arr);
    return 0;
}

int cmd_keys(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"output", 'o', true, false}, {"name", 0, true, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, 2);
    if (rc || (rc = cli_remote_refuse(&a, "keys")) != 0) return rc;
    const char *sub = a.npos ? a.pos[0] : "";
    bool exp = !strcmp(sub, "export-import-key") && a.npos == 1 && !cli_opt(&a, "name");
    bool tr = !strcmp(sub, "trust") && a.npos == 2 && !cli_opt(&a, "output");
    bool ls = !strcmp(sub, "list") && a.npos == 1 && !cli_opt(&a, "output") && !cli_opt(&a, "name");
    if (!exp && !tr && !ls) return core_err_set(MLV_EINVAL, "%s", USAGE_KEYS);
    reg_ctx *r;
    reg_user me;
    if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
    rc = exp ? export_import_key(&a, r, &me) : tr ? trust(&a, r, &me) : list(&a, r, &me);
    reg_close(r);
    return rc;
}
