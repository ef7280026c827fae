/* cli/cmd_bundle.c: `mlvault bundle export|import` — moving versions between sites that
 * share no network, as one signed, encrypted .tar.zst (registry/bundle.c). With a
 * registry URL set, both run against the server (reg_client_bundle_*) and print the
 * same. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *USAGE_BUNDLE =
    "usage: mlvault bundle export REF... [--with-ancestors] --to IMPORTKEY.pub -o FILE.tar.zst\n"
    "       mlvault bundle import FILE.tar.zst\n"
    "  export  verifies the versions, then writes them (and the datasets their lineage\n"
    "          names) with their data keys wrapped for the receiving site's import key\n"
    "          (`mlvault keys export-import-key` there gives IMPORTKEY.pub)\n"
    "  import  verifies everything against trusted keys (`mlvault keys trust`) and\n"
    "          imports all new versions, or nothing\n"
    "  Both need the engineer or admin role: a bundle carries whole models off-site.";

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void print_export(const cli_args *a, json_t *res);
static void print_import(const cli_args *a, json_t *res);

static int bundle_export(const cli_args *a)
{
    const char *to = cli_opt(a, "to"), *file = cli_opt(a, "output");
    if (a->npos < 2 || !file) return core_err_set(MLV_EINVAL, "%s", USAGE_BUNDLE);
    if (!to)
        return core_err_set(MLV_EINVAL,
                            "bundle export needs --to IMPORTKEY.pub: the receiving site's import "
                            "key (run `mlvault keys export-import-key` there)");
    char *pem = NULL;
    size_t len = 0;
    int rc = core_read_file(to, 16384, &pem, &len);
    if (rc) return core_err_wrap("--to: ");
    reg_bundle_export_opts o = {.refs = a->pos + 1,
                                .n_refs = (size_t)a->npos - 1,
                                .with_ancestors = cli_flag(a, "with-ancestors"),
                                .recipient_pem = pem,
                                .path = file};
    json_t *res = NULL;
    if (cli_remote_url(a)) {
        reg_client *c;
        if ((rc = cli_client(a, &c)) == 0) rc = reg_client_bundle_export(c, &o, &res);
        reg_client_free(c);
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(a, &r, &me)) == 0) {
            rc = reg_bundle_export(r, &me, &o, &res);
            reg_close(r);
        }
    }
    free(pem);
    if (rc) return rc;
    print_export(a, res);
    return 0;
}

/* What export says, locally and remotely alike. Consumes res. */
static void print_export(const cli_args *a, json_t *res)
{
    if (a->json) {
        cli_print_json(res); /* consumes it */
        return;
    }
    char hb[32];
    core_human_bytes(hb, sizeof hb, (uint64_t)json_integer_value(json_object_get(res, "bytes")));
    json_t *vs = json_object_get(res, "versions"), *v;
    size_t i;
    printf("wrote %s (%s): %zu version%s, %d blob%s\n", str(res, "file"), hb, json_array_size(vs),
           json_array_size(vs) == 1 ? "" : "s",
           (int)json_integer_value(json_object_get(res, "blobs")),
           json_integer_value(json_object_get(res, "blobs")) == 1 ? "" : "s");
    json_array_foreach(vs, i, v)
        printf("  %-28s %-8s sha256:%.16s…\n", str(v, "ref"), str(v, "kind"), str(v, "digest"));
    printf("bundle sha256:%s\n", str(res, "sha256"));
    printf("data keys wrapped for import key %.16s…\n", str(res, "recipient"));
    json_decref(res);
}

static int bundle_import(const cli_args *a)
{
    if (a->npos != 2) return core_err_set(MLV_EINVAL, "%s", USAGE_BUNDLE);
    json_t *res = NULL;
    int rc;
    if (cli_remote_url(a)) {
        reg_client *c;
        if ((rc = cli_client(a, &c)) == 0) rc = reg_client_bundle_import(c, a->pos[1], &res);
        reg_client_free(c);
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(a, &r, &me)) == 0) {
            rc = reg_bundle_import(r, &me, a->pos[1], &res);
            reg_close(r);
        }
    }
    if (rc) return rc;
    print_import(a, res);
    return 0;
}

/* What import says, locally and remotely alike. Consumes res. */
static void print_import(const cli_args *a, json_t *res)
{
    if (a->json) {
        cli_print_json(res); /* consumes it */
        return;
    }
    json_t *vs = json_object_get(res, "versions"), *v;
    size_t i;
    if (!json_is_true(json_object_get(res, "changed")))
        printf(json_array_size(vs) == 1
                   ? "nothing changed: the %zu version of this bundle is already here\n"
                   : "nothing changed: all %zu versions of this bundle are already here\n",
               json_array_size(vs));
    else
        printf("imported %d version%s (%d already here, %d new blob%s) from key %.16s…\n",
               (int)json_integer_value(json_object_get(res, "imported")),
               json_integer_value(json_object_get(res, "imported")) == 1 ? "" : "s",
               (int)json_integer_value(json_object_get(res, "present")),
               (int)json_integer_value(json_object_get(res, "new_blobs")),
               json_integer_value(json_object_get(res, "new_blobs")) == 1 ? "" : "s",
               str(res, "sender"));
    json_array_foreach(vs, i, v) printf("  %-28s %-8s %-9s sha256:%.16s…\n", str(v, "ref"),
                                        str(v, "kind"), str(v, "status"), str(v, "digest"));
    printf("bundle sha256:%s\n", str(res, "sha256"));
    json_decref(res);
}

int cmd_bundle(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {
        {"to", 0, true, false}, {"output", 'o', true, false}, {"with-ancestors", 0, false, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, 3);
    if (rc) return rc;
    const char *sub = a.npos ? a.pos[0] : "";
    if (!strcmp(sub, "export")) return bundle_export(&a);
    if (!strcmp(sub, "import")) {
        if (cli_opt(&a, "to") || cli_opt(&a, "output") || cli_flag(&a, "with-ancestors"))
            return core_err_set(MLV_EINVAL, "bundle import takes only FILE");
        return bundle_import(&a);
    }
    return core_err_set(MLV_EINVAL, "%s", USAGE_BUNDLE);
}
