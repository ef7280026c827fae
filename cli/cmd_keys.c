/* cli/cmd_keys.c: `mlvault keys export-import-key|trust|list` — the keys that let two
 * sites exchange bundles: this site's import key (others wrap data keys for it) and
 * the other sites' signing keys this one trusts. In the local home or, with a registry
 * URL, through /api/v1/keys (key files are read and written on this machine either
 * way); both print the same from the same JSON. */
#include <ctype.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

#define KEY_FILE_MAX 16384 /* a PEM public key is a few hundred bytes */

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

/* Writes this site's import key to -o FILE, or prints it. */
static int emit_import_key(const cli_args *a, const char *pem, const char *hint)
{
    int rc = 0;
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

/* The key file of `keys trust FILE.pub` and the name to trust it under (--name, else
 * from the file's name); *pem owned by the caller. */
static int read_key(const cli_args *a, char **pem, char *name, size_t name_size)
{
    size_t len = 0;
    int rc = core_read_file(a->pos[1], KEY_FILE_MAX, pem, &len);
    if (rc) return rc;
    if (cli_opt(a, "name"))
        snprintf(name, name_size, "%s", cli_opt(a, "name"));
    else
        default_name(name, name_size, a->pos[1]);
    if (!core_name_valid(name)) {
        free(*pem);
        *pem = NULL;
        return core_err_set(MLV_EINVAL,
                            "key name '%s' is not valid: give --name NAME "
                            "([a-z0-9][a-z0-9._-]{0,63})",
                            name);
    }
    return 0;
}

/* {name, hint} of a key just trusted; takes j. */
static void print_trusted(const cli_args *a, json_t *j)
{
    if (a->json) {
        cli_print_json(j);
        return;
    }
    printf("trusted %s: signing key sha256:%s\n", str(j, "name"), str(j, "hint"));
    json_decref(j);
}

/* reg_key_list's [{hint, name, added_by, added_at, self}]; takes arr. */
static void print_keys(const cli_args *a, json_t *arr)
{
    if (a->json) {
        cli_print_json(arr);
        return;
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
}

static int keys_local(const cli_args *a, bool exp, bool tr)
{
    reg_ctx *r;
    reg_user me;
    int rc = cli_open_auth(a, &r, &me);
    if (rc) return rc;
    char *pem = NULL, hint[65], name[80];
    json_t *res = NULL;
    if (exp) {
        if ((rc = reg_import_key(r, &me, &pem, hint)) == 0) rc = emit_import_key(a, pem, hint);
    } else if (tr) {
        if ((rc = read_key(a, &pem, name, sizeof name)) == 0 &&
            (rc = reg_key_trust(r, &me, pem, name, hint)) == 0) {
            if ((res = json_pack("{s:s,s:s}", "name", name, "hint", hint)) != NULL)
                print_trusted(a, res);
            else
                rc = core_err_set(MLV_ENOMEM, "out of memory");
        }
    } else if ((rc = reg_key_list(r, &me, &res)) == 0) {
        print_keys(a, res);
    }
    free(pem);
    reg_close(r);
    return rc;
}

/* The same three through the registry server (docs/api.md, Administration). */
static int keys_remote(const cli_args *a, bool exp, bool tr)
{
    json_t *res = NULL;
    int rc;
    if (exp) {
        if ((rc = cli_api(a, "GET", "/api/v1/keys/import", NULL, &res)) != 0) return rc;
        const char *pem = json_string_value(json_object_get(res, "pem"));
        const char *hint = json_string_value(json_object_get(res, "hint"));
        if (!pem || !hint || !core_is_hex(hint, 64))
            rc = core_err_set(MLV_EIO, "the registry's import key reply has no pem and hint");
        else
            rc = emit_import_key(a, pem, hint);
        json_decref(res);
        return rc;
    }
    if (tr) {
        char *pem = NULL, name[80];
        if ((rc = read_key(a, &pem, name, sizeof name)) != 0) return rc;
        json_t *body = json_pack("{s:s,s:s}", "pem", pem, "name", name);
        free(pem);
        if (!body) return core_err_set(MLV_ENOMEM, "out of memory");
        rc = cli_api(a, "POST", "/api/v1/keys", body, &res);
        json_decref(body);
        if (rc == 0) print_trusted(a, res);
        return rc;
    }
    if ((rc = cli_api(a, "GET", "/api/v1/keys", NULL, &res)) != 0) return rc;
    if (!json_is_array(res)) {
        json_decref(res);
        return core_err_set(MLV_EIO, "the registry's key list is not a list");
    }
    print_keys(a, res);
    return 0;
}

int cmd_keys(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"output", 'o', true, false}, {"name", 0, true, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, 2);
    if (rc) return rc;
    const char *sub = a.npos ? a.pos[0] : "";
    bool exp = !strcmp(sub, "export-import-key") && a.npos == 1 && !cli_opt(&a, "name");
    bool tr = !strcmp(sub, "trust") && a.npos == 2 && !cli_opt(&a, "output");
    bool ls = !strcmp(sub, "list") && a.npos == 1 && !cli_opt(&a, "output") && !cli_opt(&a, "name");
    if (!exp && !tr && !ls) return core_err_set(MLV_EINVAL, "%s", USAGE_KEYS);
    return cli_remote_url(&a) ? keys_remote(&a, exp, tr) : keys_local(&a, exp, tr);
}
