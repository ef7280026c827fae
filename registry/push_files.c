/* registry/push_files.c: what a push sends — one .gguf file, one dataset file, or a
 * Hugging Face folder's visible regular files at its top level — with the same choice
 * and the same refusals for a local push (vault.c) and a remote one (client.c). It does
 * not read the files: describing and hashing them is the caller's. */
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "registry/reg_internal.h"

#define MAX_FILES 4096

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

static bool reserved_name(const char *n)
{
    return !strcmp(n, REG_MANIFEST_FILE) || !strcmp(n, REG_SIGNATURE_FILE);
}

static int add_file(reg_push_src **fs, size_t *n, const char *rel, const char *full)
{
    if (*n >= MAX_FILES) return core_err_set(MLV_EINVAL, "more than %d files", MAX_FILES);
    reg_push_src *nf = realloc(*fs, (*n + 1) * sizeof *nf);
    if (!nf) return core_err_set(MLV_ENOMEM, "out of memory");
    *fs = nf;
    nf[*n].rel = strdup(rel);
    nf[*n].full = strdup(full);
    (*n)++;
    if (!nf[*n - 1].rel || !nf[*n - 1].full) return core_err_set(MLV_ENOMEM, "out of memory");
    return 0;
}

/* A Hugging Face folder: its visible regular files, top level only. */
static int collect_dir(const char *dir, reg_push_src **fs, size_t *n)
{
    DIR *d = opendir(dir);
    if (!d) return core_err_set(MLV_EIO, "%s: %s", dir, strerror(errno));
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue; /* ., .., .git, .gitattributes, ... */
        char *full = core_path_join(dir, e->d_name);
        if (!full) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
        struct stat st;
        if (lstat(full, &st) != 0)
            rc = core_err_set(MLV_EIO, "%s: %s", full, strerror(errno));
        else if (S_ISLNK(st.st_mode))
            rc = core_err_set(MLV_EINVAL, "%s is a symlink; copy the file itself into the folder",
                              full);
        else if (S_ISDIR(st.st_mode))
            rc = core_err_set(MLV_EINVAL, "%s: nested folders are not supported", full);
        else if (!S_ISREG(st.st_mode))
            rc = core_err_set(MLV_EINVAL, "%s is not a regular file", full);
        else if (!core_relpath_safe(e->d_name))
            rc = core_err_set(MLV_EINVAL, "%s: file name not allowed", full);
        else if (reserved_name(e->d_name))
            rc =
                core_err_set(MLV_EINVAL, "%s: the name %s is reserved by mlvault", full, e->d_name);
        else
            rc = add_file(fs, n, e->d_name, full);
        free(full);
    }
    closedir(d);
    if (rc == 0 && *n == 0) rc = core_err_set(MLV_EINVAL, "%s is an empty folder", dir);
    return rc;
}

static int cmp_src(const void *a, const void *b)
{
    return strcmp(((const reg_push_src *)a)->rel, ((const reg_push_src *)b)->rel);
}

int reg_push_sources(const char *path, bool dataset, reg_push_src **out, size_t *n, bool *is_dir)
{
    *out = NULL;
    *n = 0;
    *is_dir = false;
    struct stat st;
    if (stat(path, &st) != 0)
        return core_err_set(errno == ENOENT ? MLV_ENOTFOUND : MLV_EIO, "%s: %s", path,
                            strerror(errno));
    char base[4096];
    snprintf(base, sizeof base, "%s", path);
    const char *bn = basename(base);
    int rc;
    if (!dataset && S_ISDIR(st.st_mode)) {
        *is_dir = true;
        rc = collect_dir(path, out, n);
    } else if (dataset && !S_ISREG(st.st_mode)) {
        rc = core_err_set(MLV_EINVAL, "%s: a dataset must be a regular file", path);
    } else if (!dataset && (!S_ISREG(st.st_mode) || !has_suffix(path, ".gguf"))) {
        rc = core_err_set(MLV_EINVAL,
                          "%s: a model is a .gguf file or a Hugging Face folder "
                          "(config.json, *.safetensors, tokenizer.json)",
                          path);
    } else if (!core_relpath_safe(bn) || reserved_name(bn)) {
        rc = core_err_set(MLV_EINVAL, "%s: file name not allowed", path);
    } else {
        rc = add_file(out, n, bn, path);
    }
    if (rc) {
        reg_push_sources_free(*out, *n);
        *out = NULL;
        *n = 0;
        return rc;
    }
    qsort(*out, *n, sizeof **out, cmp_src);
    return 0;
}

void reg_push_sources_free(reg_push_src *s, size_t n)
{
    for (size_t i = 0; s && i < n; i++) {
        free(s[i].rel);
        free(s[i].full);
    }
    free(s);
}
