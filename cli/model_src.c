/* cli/model_src.c: where `run` and `eval` get their model and data — a file on disk
 * (a .gguf, mmap'd; a Hugging Face folder, converted in memory) or a stored version
 * (verified and decrypted into memory through the registry, or fetched into memory from
 * the registry server when MLVAULT_URL is set: no plaintext on disk either way). A path
 * that exists is a file; anything else is a REF. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "repo/repo.h"

void cli_source_clear(cli_source *s)
{
    if (!s) return;
    eng_model_free(s->model);
    if (s->r) reg_close(s->r);
    free(s->data);
    memset(s, 0, sizeof *s);
}

/* A REF's version in memory: from the registry server when one is set (checked there
 * and here; nothing is recorded, so the source is not `stored`), else decrypted from
 * the home, opened once per source. */
static int load_ref(const cli_args *a, const char *what, cli_source *s, reg_loaded *l)
{
    memset(l, 0, sizeof *l);
    int rc;
    if (cli_remote_url(a)) {
        reg_client *c;
        if ((rc = cli_client(a, &c)) != 0) return rc;
        rc = reg_client_load(c, what, l);
        reg_client_free(c);
        return rc;
    }
    if (!s->r && (rc = cli_open_auth(a, &s->r, &s->user)) != 0) return rc;
    if ((rc = reg_load(s->r, &s->user, what, l)) != 0) return rc;
    s->stored = true;
    return 0;
}

/* The model from an HF folder's files in memory -> GGUF image -> model. */
static int open_hf(const eng_hf_file *files, size_t n, const eng_load_opts *lo, eng_model **m)
{
    void *img = NULL;
    size_t len = 0;
    int rc = eng_convert_hf_mem(files, n, ENG_OUT_AUTO, &img, &len);
    if (rc) return rc;
    return eng_model_open_mem(m, img, len, free, lo);
}

static int open_hf_dir(const char *dir, const eng_load_opts *lo, eng_model **m)
{
    /* The folder's JSON and safetensors files, read into memory and converted there. */
    eng_hf_file *files = NULL;
    size_t n = 0;
    char **bufs = NULL;
    int rc = 0;
    DIR *d = opendir(dir);
    if (!d) return core_err_set(MLV_ENOTFOUND, "%s: cannot open the folder", dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        bool want = (l > 5 && !strcmp(e->d_name + l - 5, ".json")) ||
                    (l > 12 && !strcmp(e->d_name + l - 12, ".safetensors"));
        if (!want) continue;
        eng_hf_file *nf = realloc(files, sizeof *files * (n + 1));
        char **nb = realloc(bufs, sizeof *bufs * (n + 1));
        if (nf) files = nf;
        if (nb) bufs = nb;
        if (!nf || !nb) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
        char *path = core_path_join(dir, e->d_name);
        size_t len = 0;
        bufs[n] = NULL;
        rc = path ? core_read_file(path, (size_t)1 << 40, &bufs[n], &len)
                  : core_err_set(MLV_ENOMEM, "out of memory");
        free(path);
        if (rc) break;
        files[n].name = strdup(e->d_name);
        files[n].data = bufs[n];
        files[n].len = len;
        n++;
        if (!files[n - 1].name) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
    }
    closedir(d);
    if (!rc) rc = open_hf(files, n, lo, m);
    for (size_t i = 0; i < n; i++) {
        free((char *)files[i].name);
        free(bufs[i]);
    }
    free(files);
    free(bufs);
    return rc;
}

int cli_open_model(const cli_args *a, const char *what, const eng_load_opts *lo, cli_source *s)
{
    struct stat st;
    if (stat(what, &st) == 0) {
        snprintf(s->label, sizeof s->label, "%s", what);
        if (S_ISDIR(st.st_mode)) return open_hf_dir(what, lo, &s->model);
        return eng_model_open_file(&s->model, what, lo);
    }
    reg_loaded l;
    int rc = load_ref(a, what, s, &l);
    if (rc) return rc;
    if (strcmp(l.kind, "model") != 0) {
        s->stored = false;
        rc = core_err_set(MLV_EINVAL, "%s:%d is a %s, not a model", l.name, l.version, l.kind);
        goto done;
    }
    s->version_id = l.version_id;
    snprintf(s->label, sizeof s->label, "%s:%d", l.name, l.version);
    snprintf(s->digest, sizeof s->digest, "%s", l.digest);
    rc = reg_loaded_open_model(&l, lo, &s->model);
done:
    reg_loaded_clear(&l);
    return rc;
}

int cli_open_data(const cli_args *a, const char *what, cli_source *s)
{
    struct stat st;
    int rc;
    if (stat(what, &st) == 0) {
        const char *base = strrchr(what, '/');
        snprintf(s->label, sizeof s->label, "file:%s", base ? base + 1 : what);
        rc = core_read_file(what, (size_t)1 << 32, &s->data, &s->len);
        if (rc) return rc;
    } else {
        reg_loaded l;
        if ((rc = load_ref(a, what, s, &l)) != 0) return rc;
        if (strcmp(l.kind, "dataset") != 0 || l.n_files != 1) {
            s->stored = false;
            rc = core_err_set(MLV_EINVAL, "%s:%d is not a single-file dataset", l.name, l.version);
            reg_loaded_clear(&l);
            return rc;
        }
        s->version_id = l.version_id;
        snprintf(s->label, sizeof s->label, "%s:%d", l.name, l.version);
        s->data = l.files[0].data;
        s->len = (size_t)l.files[0].size;
        l.files[0].data = NULL;
        reg_loaded_clear(&l);
    }
    repo_sha256_hex(s->content_digest, s->data ? s->data : "", s->len);
    return 0;
}
