/* cli/cmd_read.c: the read commands — list, show, lineage, export, verify — printing
 * the registry's JSON views as text for people or as JSON with --json. With a registry
 * URL the same views come from the API (docs/api.md) and print the same way. */
#include <string.h>

#include "cli/cli.h"

/* A string member, or o itself when k is NULL; "" when absent. */
static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(k ? json_object_get(o, k) : o);
    return s ? s : "";
}

static void types_line(char *out, size_t n, json_t *types)
{
    out[0] = 0;
    size_t i;
    json_t *t;
    json_array_foreach(types, i, t)
    {
        size_t l = strlen(out);
        snprintf(out + l, n - l, "%s%s", i ? "," : "", json_string_value(t));
    }
}

/* The list view (reg_list's JSON, local or GET /models[/NAME]); takes arr. */
static void print_list(const cli_args *a, json_t *arr)
{
    if (a->json) {
        cli_print_json(arr);
        return;
    }
    size_t i;
    json_t *o;
    char hb[32], types[256];
    if (json_array_size(arr) == 0)
        printf("no models or datasets yet (mlvault push NAME PATH)\n");
    else if (a->npos)
        printf("%-24s %-12s %-12s %-14s %-10s %s\n", "VERSION", "SIZE", "FORMAT", "TYPES", "BY",
               "CREATED");
    else
        printf("%-24s %-8s %-9s %-12s %-12s %-14s %s\n", "NAME", "KIND", "VERSIONS", "SIZE",
               "FORMAT", "ARCH", "LATEST");
    json_array_foreach(arr, i, o)
    {
        core_human_bytes(hb, sizeof hb, (uint64_t)json_integer_value(json_object_get(o, "size")));
        char ref[96];
        snprintf(ref, sizeof ref, "%s:%d", str(o, "name"),
                 (int)json_integer_value(json_object_get(o, "version")));
        if (a->npos) {
            types_line(types, sizeof types, json_object_get(o, "tensor_types"));
            printf("%-24s %-12s %-12s %-14s %-10s %s\n", ref, hb, str(o, "format"), types,
                   str(o, "created_by"), str(o, "created_at"));
        } else {
            printf("%-24s %-8s %-9d %-12s %-12s %-14s %s\n", str(o, "name"), str(o, "kind"),
                   (int)json_integer_value(json_object_get(o, "versions")), hb, str(o, "format"),
                   str(o, "architecture"), ref);
        }
    }
    json_decref(arr);
}

int cmd_list(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, NULL, 0);
    if (rc) return rc;
    if (a.npos > 1) return core_err_set(MLV_EINVAL, "usage: mlvault list [NAME] [--json]");
    json_t *arr;
    if (cli_remote_url(&a)) {
        char path[256];
        if (a.npos && !core_name_valid(a.pos[0]))
            return core_err_set(MLV_EINVAL, "invalid name '%s'", a.pos[0]);
        snprintf(path, sizeof path, "/api/v1/models%s%s", a.npos ? "/" : "",
                 a.npos ? a.pos[0] : "");
        rc = cli_api(&a, "GET", path, NULL, &arr);
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_list(r, &me, a.npos ? a.pos[0] : NULL, &arr);
        reg_close(r);
    }
    if (rc) return rc;
    print_list(&a, arr);
    return 0;
}

/* The show view (reg_show's JSON, local or GET /models/NAME/versions/V); takes o. */
static void print_show(const cli_args *a, json_t *o)
{
    if (a->json) {
        cli_print_json(o);
        return;
    }
    json_t *m = json_object_get(o, "manifest"), *lin = json_object_get(m, "lineage");
    json_t *sig = json_object_get(o, "signature");
    char hb[32], types[512];
    core_human_bytes(hb, sizeof hb, (uint64_t)json_integer_value(json_object_get(o, "size")));
    types_line(types, sizeof types, json_object_get(m, "tensor_types"));
    printf("%s  (%s)\n", str(o, "ref"), str(o, "kind"));
    printf("  manifest     sha256:%s\n", str(o, "digest"));
    printf("  format       %s\n", str(m, "format"));
    if (*str(m, "architecture")) printf("  architecture %s\n", str(m, "architecture"));
    if (json_integer_value(json_object_get(m, "parameters")))
        printf("  parameters   %lld\n",
               (long long)json_integer_value(json_object_get(m, "parameters")));
    if (*types) printf("  tensor types %s\n", types);
    printf("  size         %s\n", hb);
    printf("  created      %s by %s\n", str(o, "created_at"), str(o, "created_by"));
    if (*str(m, "note")) printf("  note         %s\n", str(m, "note"));
    printf("  origin       %s\n", str(o, "origin"));
    printf("  signature    %s — %s\n", str(sig, "state"), str(sig, "detail"));
    printf("               %s, key sha256:%.16s…\n", str(sig, "format"), str(sig, "key_hint"));
    json_t *job = json_object_get(lin, "job");
    printf("  lineage      job %s", str(job, "kind"));
    /* long maps (a quantize recipe's per-tensor types) are counted here; --json has them */
    json_t *brief = json_deep_copy(json_object_get(job, "params"));
    const char *k;
    json_t *v;
    json_object_foreach(brief, k, v) if (json_object_size(v) > 8)
    {
        char n[48];
        snprintf(n, sizeof n, "%zu entries (see --json)", json_object_size(v));
        json_object_set_new(brief, k, json_string(n));
    }
    char *params = core_json_dumps(brief, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(brief);
    if (params && strcmp(params, "{}")) printf(" %s", params);
    free(params);
    printf(", mlvault %s\n", str(lin, "mlvault_version"));
    size_t i;
    json_t *x;
    printf("  parents     ");
    if (!json_array_size(json_object_get(o, "parents"))) printf(" (none)");
    json_array_foreach(json_object_get(o, "parents"), i, x) printf(" %s", json_string_value(x));
    printf("\n  children    ");
    if (!json_array_size(json_object_get(o, "children"))) printf(" (none)");
    json_array_foreach(json_object_get(o, "children"), i, x) printf(" %s", json_string_value(x));
    printf("\n  files\n");
    json_array_foreach(json_object_get(o, "files"), i, x)
    {
        core_human_bytes(hb, sizeof hb, (uint64_t)json_integer_value(json_object_get(x, "size")));
        printf("    %-40s %12s  sha256:%s\n", str(x, "path"), hb, str(x, "sha256"));
    }
    json_t *evs = json_object_get(o, "evaluations");
    if (json_array_size(evs)) printf("  evaluations\n");
    json_array_foreach(evs, i, x)
    {
        const char *metric = str(x, "metric");
        const bool pct = strstr(metric, "accuracy") != NULL;
        const double k = pct ? 100 : 1;
        printf("    %-20s %9.4f%s  [%.4f, %.4f]  on %s (sha256:%.12s…), %lld samples, ctx %lld, "
               "%s, %s\n",
               metric, json_real_value(json_object_get(x, "value")) * k, pct ? "%" : " ",
               json_real_value(json_object_get(x, "ci_low")) * k,
               json_real_value(json_object_get(x, "ci_high")) * k, str(x, "dataset"),
               str(x, "dataset_digest"),
               (long long)json_integer_value(json_object_get(x, "n_samples")),
               (long long)json_integer_value(json_object_get(x, "ctx")), str(x, "engine"),
               str(x, "created_at"));
    }
    json_decref(o);
}

int cmd_show(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, NULL, 0);
    if (rc) return rc;
    if (a.npos != 1) return core_err_set(MLV_EINVAL, "usage: mlvault show REF [--json]");
    json_t *o;
    if (cli_remote_url(&a)) {
        char path[320];
        if ((rc = cli_remote_version_path(&a, a.pos[0], NULL, path, sizeof path)) != 0) return rc;
        rc = cli_api(&a, "GET", path, NULL, &o);
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_show(r, &me, a.pos[0], &o);
        reg_close(r);
    }
    if (rc) return rc;
    print_show(&a, o);
    return 0;
}

int cmd_lineage(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"dot", 0, false, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, 1);
    if (rc) return rc;
    if (a.npos != 1) return core_err_set(MLV_EINVAL, "usage: mlvault lineage REF [--json|--dot]");
    json_t *g;
    if (cli_remote_url(&a)) {
        char path[320];
        if ((rc = cli_remote_version_path(&a, a.pos[0], "/lineage", path, sizeof path)) != 0)
            return rc;
        rc = cli_api(&a, "GET", path, NULL, &g);
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_lineage(r, &me, a.pos[0], &g);
        reg_close(r);
    }
    if (rc) return rc;
    json_t *nodes = json_object_get(g, "nodes"), *edges = json_object_get(g, "edges"), *x;
    size_t i;
    if (a.json) {
        cli_print_json(g);
        return 0;
    }
    if (cli_flag(&a, "dot")) {
        printf("digraph lineage {\n  rankdir=LR;\n  node [shape=box];\n");
        json_array_foreach(nodes, i, x)
        {
            printf("  \"%s\" [label=\"%s\\n%s %s\\n%.12s\"%s];\n", str(x, "id"), str(x, "id"),
                   str(x, "format"), str(json_object_get(x, "job"), "kind"), str(x, "digest"),
                   !strcmp(str(x, "id"), str(g, "root")) ? ", style=bold" : "");
        }
        json_array_foreach(edges, i, x)
            printf("  \"%s\" -> \"%s\";\n", str(x, "from"), str(x, "to"));
        printf("}\n");
    } else {
        printf("lineage of %s: %zu version%s, %zu edge%s\n", str(g, "root"), json_array_size(nodes),
               json_array_size(nodes) == 1 ? "" : "s", json_array_size(edges),
               json_array_size(edges) == 1 ? "" : "s");
        json_array_foreach(nodes, i, x)
        {
            printf("  %s %-24s %-12s %-10s sha256:%.12s\n",
                   !strcmp(str(x, "id"), str(g, "root")) ? "*" : " ", str(x, "id"),
                   str(x, "format"), str(json_object_get(x, "job"), "kind"), str(x, "digest"));
        }
        json_array_foreach(edges, i, x) printf("  %s -> %s\n", str(x, "from"), str(x, "to"));
    }
    json_decref(g);
    return 0;
}

static void print_line(const char *line, void *ctx)
{
    (void)ctx;
    printf("%s\n", line);
}

int cmd_verify(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, NULL, 0);
    if (rc) return rc;
    if (a.npos != 1) return core_err_set(MLV_EINVAL, "usage: mlvault verify REF");
    if (cli_remote_url(&a)) {
        /* the server decrypts and hashes every blob; it sends the lines verify prints */
        char path[320];
        json_t *res = NULL;
        if ((rc = cli_remote_version_path(&a, a.pos[0], "/verify", path, sizeof path)) != 0)
            return rc;
        rc = cli_api(&a, "POST", path, NULL, &res);
        size_t i;
        json_t *x;
        if (rc == 0 && !a.json)
            json_array_foreach(json_object_get(res, "checked"), i, x)
                print_line(str(x, NULL), NULL);
        json_decref(res);
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_verify(r, &me, a.pos[0], a.json ? NULL : print_line, NULL);
        reg_close(r);
    }
    if (rc == 0) {
        if (a.json)
            cli_print_json(json_pack("{s:s,s:b}", "ref", a.pos[0], "verified", 1));
        else
            printf("verified %s\n", a.pos[0]);
    }
    return rc;
}

int cmd_export(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {{"output", 'o', true, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, 1);
    if (rc) return rc;
    if (a.npos != 1 || !cli_opt(&a, "output"))
        return core_err_set(MLV_EINVAL, "usage: mlvault export REF -o DIR");
    if (cli_remote_url(&a)) {
        reg_client *c;
        if ((rc = cli_client(&a, &c)) != 0) return rc;
        rc = reg_client_export(c, a.pos[0], cli_opt(&a, "output"));
        reg_client_free(c);
    } else {
        reg_ctx *r;
        reg_user me;
        if ((rc = cli_open_auth(&a, &r, &me)) != 0) return rc;
        rc = reg_export(r, &me, a.pos[0], cli_opt(&a, "output"));
        reg_close(r);
    }
    if (rc == 0) {
        if (a.json)
            cli_print_json(json_pack("{s:s,s:s}", "ref", a.pos[0], "dir", cli_opt(&a, "output")));
        else
            printf("exported %s to %s (verified; signature in model.sig)\n", a.pos[0],
                   cli_opt(&a, "output"));
    }
    return rc;
}
