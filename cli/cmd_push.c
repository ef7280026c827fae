/* cli/cmd_push.c: `mlvault push` and `mlvault dataset push` — store a new version, in
 * the local home or, with a registry URL, through an upload session on the server
 * (streamed in parts, resumed after a broken connection). Both print the same. */
#include <string.h>

#include "cli/cli.h"

static const cli_opt_spec SPEC[] = {{"parent", 0, true, true}, {"note", 0, true, false}};

/* The push result, as `push --json` prints it and POST /uploads/ID/commit answers;
 * takes j. */
static void print_pushed(const cli_args *a, json_t *j)
{
    if (a->json) {
        cli_print_json(j);
        return;
    }
    char hb[32];
    size_t files = (size_t)json_integer_value(json_object_get(j, "files"));
    size_t new_blobs = (size_t)json_integer_value(json_object_get(j, "new_blobs"));
    const char *name = json_string_value(json_object_get(j, "name"));
    const char *digest = json_string_value(json_object_get(j, "digest"));
    core_human_bytes(hb, sizeof hb, (uint64_t)json_integer_value(json_object_get(j, "size")));
    printf("%s:%d\n", name ? name : "", (int)json_integer_value(json_object_get(j, "version")));
    printf("manifest sha256:%s\n", digest ? digest : "");
    printf("%zu file%s, %s, %zu new blob%s (signed, encrypted)\n", files, files == 1 ? "" : "s", hb,
           new_blobs, new_blobs == 1 ? "" : "s");
    json_decref(j);
}

static int push_remote(const cli_args *a, const char *name, const char *path, bool dataset)
{
    const char **parents = NULL;
    int np = cli_opt_all(a, "parent", &parents);
    json_t *meta =
        json_pack("{s:s,s:s,s:[]}", "name", name, "kind", dataset ? "dataset" : "model", "parents");
    if (!meta) return core_err_set(MLV_ENOMEM, "out of memory");
    for (int i = 0; i < np; i++)
        json_array_append_new(json_object_get(meta, "parents"), json_string(parents[i]));
    if (cli_opt(a, "note")) json_object_set_new(meta, "note", json_string(cli_opt(a, "note")));
    reg_client *c;
    json_t *res = NULL;
    int rc = cli_client(a, &c);
    if (rc == 0) rc = reg_client_push(c, meta, path, &res);
    reg_client_free(c);
    json_decref(meta);
    if (rc == 0) print_pushed(a, res);
    return rc;
}

static int push(const cli_args *a, const char *name, const char *path, bool dataset)
{
    if (cli_remote_url(a)) return push_remote(a, name, path, dataset);
    reg_ctx *r;
    reg_user me;
    int rc = cli_open_auth(a, &r, &me);
    if (rc) return rc;
    const char **parents = NULL;
    int np = cli_opt_all(a, "parent", &parents);
    reg_push_opts o = {.name = name,
                       .path = path,
                       .dataset = dataset,
                       .parents = parents,
                       .n_parents = (size_t)np,
                       .note = cli_opt(a, "note")};
    reg_pushed p;
    rc = reg_push(r, &me, &o, &p);
    if (rc == 0) {
        char ref[96];
        snprintf(ref, sizeof ref, "%s:%d", p.name, p.version);
        json_t *j = json_pack("{s:s,s:s,s:i,s:s,s:I,s:i,s:i}", "ref", ref, "name", p.name,
                              "version", p.version, "digest", p.digest, "size", (json_int_t)p.size,
                              "files", (int)p.n_files, "new_blobs", (int)p.n_new_blobs);
        if (!j)
            rc = core_err_set(MLV_ENOMEM, "out of memory");
        else
            print_pushed(a, j);
    }
    reg_close(r);
    return rc;
}

int cmd_push(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, SPEC, 2);
    if (rc) return rc;
    if (a.npos != 2)
        return core_err_set(MLV_EINVAL,
                            "usage: mlvault push NAME PATH [--parent REF]... [--note TEXT]");
    return push(&a, a.pos[0], a.pos[1], false);
}

int cmd_dataset(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, SPEC + 1, 1);
    if (rc) return rc;
    if (a.npos != 3 || strcmp(a.pos[0], "push") != 0)
        return core_err_set(MLV_EINVAL, "usage: mlvault dataset push NAME FILE [--note TEXT]");
    return push(&a, a.pos[1], a.pos[2], true);
}
