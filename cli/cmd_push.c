/* cli/cmd_push.c: `mlvault push` and `mlvault dataset push` — store a new version. */
#include <string.h>

#include "cli/cli.h"

static const cli_opt_spec SPEC[] = {{"parent", 0, true, true}, {"note", 0, true, false}};

static int push(const cli_args *a, const char *name, const char *path, bool dataset)
{
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
        if (a->json) {
            char ref[96];
            snprintf(ref, sizeof ref, "%s:%d", p.name, p.version);
            cli_print_json(json_pack("{s:s,s:s,s:i,s:s,s:I,s:i,s:i}", "ref", ref, "name", p.name,
                                     "version", p.version, "digest", p.digest, "size",
                                     (json_int_t)p.size, "files", (int)p.n_files, "new_blobs",
                                     (int)p.n_new_blobs));
        } else {
            char hb[32];
            core_human_bytes(hb, sizeof hb, p.size);
            printf("%s:%d\n", p.name, p.version);
            printf("manifest sha256:%s\n", p.digest);
            printf("%zu file%s, %s, %zu new blob%s (signed, encrypted)\n", p.n_files,
                   p.n_files == 1 ? "" : "s", hb, p.n_new_blobs, p.n_new_blobs == 1 ? "" : "s");
        }
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
