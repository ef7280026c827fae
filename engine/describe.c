/* engine/describe.c: what a model artifact is, for its manifest — format,
 * architecture, parameter count and tensor types — for a GGUF file (through
 * engine/gguf.c) or a Hugging Face folder (config.json + *.safetensors, whose headers
 * are read here and validated by engine/safetensors.c per the format's spec).
 * Not a loader: no tensor data is read. */
#include "engine.h"
#include "engine/safetensors.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_MAX (16u << 20)

void eng_model_info_clear(eng_model_info *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n_tensor_types; i++)
        free(m->tensor_types[i]);
    free(m->tensor_types);
    memset(m, 0, sizeof *m);
}

/* A set of type names kept sorted and unique. */
static int types_add(eng_model_info *m, const char *name)
{
    size_t lo = 0, hi = m->n_tensor_types;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->tensor_types[mid]);
        if (c == 0) return 0;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    char **t = realloc(m->tensor_types, (m->n_tensor_types + 1) * sizeof *t);
    if (!t) return core_err_set(MLV_ENOMEM, "out of memory");
    m->tensor_types = t;
    char *s = strdup(name);
    if (!s) return core_err_set(MLV_ENOMEM, "out of memory");
    memmove(t + lo + 1, t + lo, (m->n_tensor_types - lo) * sizeof *t);
    t[lo] = s;
    m->n_tensor_types++;
    return 0;
}

/* Copies a validated architecture name, lower-cased when `lower`. */
static int set_arch(eng_model_info *m, const char *arch, const char *where, bool lower)
{
    size_t n = strlen(arch);
    if (n == 0 || n >= sizeof m->architecture)
        return core_err_set(MLV_EINVAL, "%s: architecture '%.80s' is empty or too long", where,
                            arch);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)arch[i];
        if (c < 0x20 || c == 0x7f)
            return core_err_set(MLV_EINVAL, "%s: architecture has control characters", where);
        m->architecture[i] = lower ? (char)tolower(c) : (char)c;
    }
    m->architecture[n] = 0;
    return 0;
}

/* ----------------------------------------------------------------- GGUF ---- */

int eng_describe_gguf(const char *path, eng_model_info *out)
{
    memset(out, 0, sizeof *out);
    eng_gguf *g = NULL;
    int rc = eng_gguf_open_file(&g, path);
    if (rc) return rc;
    const char *arch;
    if ((rc = eng_gguf_get_str(g, "general.architecture", &arch))) {
        rc = core_err_set(MLV_EINVAL, "%s: gguf: general.architecture is missing or not a string",
                          path);
        goto done;
    }
    snprintf(out->format, sizeof out->format, "gguf");
    if ((rc = set_arch(out, arch, path, false))) goto done;
    for (size_t i = 0; i < eng_gguf_n_tensors(g); i++) {
        eng_gguf_tensor t;
        eng_gguf_tensor_info(g, i, &t);
        if (t.n_elems > UINT64_MAX - out->parameters) {
            rc = core_err_set(MLV_EINVAL, "%s: gguf: parameter count overflows", path);
            goto done;
        }
        out->parameters += t.n_elems;
        if ((rc = types_add(out, eng_type_name(t.type)))) goto done;
    }
done:
    eng_gguf_free(g);
    if (rc) eng_model_info_clear(out);
    return rc;
}

/* ---------------------------------------------------------- safetensors ---- */

static int pread_all(int fd, void *buf, size_t n, uint64_t off, const char *path)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return core_err_set(MLV_EIO, "read %s: %s", path, strerror(errno));
        if (k == 0) return core_err_set(MLV_EINVAL, "%s: truncated", path);
        got += (size_t)k;
    }
    return 0;
}

/* Any dtype and shape the format allows (empty tensors and scalars too); __metadata__,
 * when there, must be an object. */
static const eng_st_rules describe_rules = {.strict_metadata = true};

/* Validates one .safetensors file's header (engine/safetensors.c) and adds its tensors
 * to `m`. Only the header is read. */
static int describe_safetensors(const char *path, eng_model_info *m)
{
    int rc = 0;
    unsigned char *head = NULL;
    eng_st_header h = {0};
    int fd;
    uint64_t fsize, hlen;
    if ((rc = core_open_regular(path, &fd, &fsize)) != 0) return rc;
    unsigned char lb[8] = {0};
    if (fsize >= 8 && (rc = pread_all(fd, lb, 8, 0, path))) goto done;
    if ((rc = eng_st_header_length(&hlen, lb, fsize, path, &describe_rules))) goto done;
    if (!(head = malloc(8 + hlen))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(head, lb, 8);
    if ((rc = pread_all(fd, head + 8, (size_t)hlen, 8, path))) goto done;
    if ((rc = eng_st_parse(&h, head, 8 + hlen, fsize, path, &describe_rules))) goto done;
    for (size_t i = 0; i < h.n; i++) {
        if (h.t[i].n_elems > UINT64_MAX - m->parameters) {
            rc = core_err_set(MLV_EINVAL, "safetensors %s: parameter count overflows", path);
            goto done;
        }
        m->parameters += h.t[i].n_elems;
        if ((rc = types_add(m, eng_st_dtype_name(h.t[i].dtype)))) goto done;
    }
done:
    eng_st_header_clear(&h);
    free(head);
    close(fd);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* config.json: model_type, else architectures[0]. */
static int read_config(const char *dir, eng_model_info *m)
{
    char *path = core_path_join(dir, "config.json"), *text = NULL;
    json_t *root = NULL;
    int rc;
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    size_t len;
    if ((rc = core_read_file(path, CONFIG_MAX, &text, &len))) {
        if (rc == MLV_ENOTFOUND) rc = core_err_set(MLV_EINVAL, "no config.json in %s", dir);
        goto done;
    }
    json_error_t jerr;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = core_err_set(MLV_EINVAL, "%s: not valid JSON: %s", path, jerr.text);
        goto done;
    }
    if (!json_is_object(root)) {
        rc = core_err_set(MLV_EINVAL, "%s: not a JSON object", path);
        goto done;
    }
    json_t *mt = json_object_get(root, "model_type");
    json_t *archs = json_object_get(root, "architectures");
    if (json_is_string(mt) && json_string_length(mt) > 0) {
        rc = set_arch(m, json_string_value(mt), path, false);
    } else if (json_is_array(archs) && json_is_string(json_array_get(archs, 0))) {
        rc = set_arch(m, json_string_value(json_array_get(archs, 0)), path, true);
    } else {
        rc = core_err_set(MLV_EINVAL, "%s: neither model_type nor architectures[0]", path);
    }
done:
    json_decref(root);
    free(text);
    free(path);
    return rc;
}

int eng_describe_hf_dir(const char *dir, eng_model_info *out)
{
    memset(out, 0, sizeof *out);
    char **files = NULL;
    size_t nf = 0, cap = 0;
    int rc;
    DIR *d = NULL;
    if ((rc = read_config(dir, out))) goto done;
    snprintf(out->format, sizeof out->format, "safetensors");
    if (!(d = opendir(dir))) {
        rc =
            core_err_set(errno == ENOENT ? MLV_ENOTFOUND : MLV_EIO, "%s: %s", dir, strerror(errno));
        goto done;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l <= 12 || strcmp(e->d_name + l - 12, ".safetensors")) continue;
        if (nf == cap) {
            size_t nc = cap ? cap * 2 : 8;
            char **f = realloc(files, nc * sizeof *f);
            if (!f) {
                rc = core_err_set(MLV_ENOMEM, "out of memory");
                goto done;
            }
            files = f;
            cap = nc;
        }
        if (!(files[nf] = core_path_join(dir, e->d_name))) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
        nf++;
    }
    if (nf == 0) {
        rc = core_err_set(MLV_EINVAL, "no *.safetensors in %s", dir);
        goto done;
    }
    qsort(files, nf, sizeof *files, cmp_str); /* deterministic errors */
    for (size_t i = 0; i < nf; i++)
        if ((rc = describe_safetensors(files[i], out))) goto done;
done:
    if (d) closedir(d);
    for (size_t i = 0; i < nf; i++)
        free(files[i]);
    free(files);
    if (rc) eng_model_info_clear(out);
    return rc;
}
