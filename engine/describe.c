/* engine/describe.c: what a model artifact is, for its manifest — format,
 * architecture, parameter count and tensor types — for a GGUF file (through
 * engine/gguf.c) or a Hugging Face folder (config.json + *.safetensors, whose headers
 * are read and validated here per the safetensors format spec: 8-byte little-endian
 * header length, JSON header, a data area indexed entirely and without holes).
 * Not a loader: no tensor data is read. */
#include "engine.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100ull << 20) /* safetensors' own limit on the JSON header */
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

static const struct {
    const char *name;
    unsigned size;
} st_dtypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
    {"F32", 4},  {"I64", 8}, {"U64", 8}, {"F64", 8},
};

static unsigned st_dtype_size(const char *d)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(st_dtypes[i].name, d)) return st_dtypes[i].size;
    return 0;
}

typedef struct st_range {
    uint64_t begin, end;
    const char *name; /* borrowed from the JSON header */
} st_range;

static int cmp_range(const void *a, const void *b)
{
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static bool json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

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

/* Validates one .safetensors file's header and adds its tensors to `m`. */
static int describe_safetensors(const char *path, eng_model_info *m)
{
    int rc = 0;
    char *hdr = NULL;
    json_t *root = NULL;
    st_range *ranges = NULL;
    int fd;
    uint64_t fsize;
    if ((rc = core_open_regular(path, &fd, &fsize)) != 0) return rc;
    if (fsize < 8) {
        rc =
            core_err_set(MLV_EINVAL, "safetensors %s: shorter than its 8-byte header length", path);
        goto done;
    }
    unsigned char lb[8];
    if ((rc = pread_all(fd, lb, 8, 0, path))) goto done;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | lb[i];
    if (hlen > ST_MAX_HEADER || hlen > fsize - 8) {
        rc = core_err_set(MLV_EINVAL,
                          "safetensors %s: header length %" PRIu64 " exceeds the file or 100 MiB",
                          path, hlen);
        goto done;
    }
    if (!(hdr = malloc(hlen + 1))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = pread_all(fd, hdr, (size_t)hlen, 8, path))) goto done;
    hdr[hlen] = 0;
    json_error_t jerr;
    root = json_loadb(hdr, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = core_err_set(MLV_EINVAL, "safetensors %s: header is not valid JSON: %s", path,
                          jerr.text);
        goto done;
    }
    if (!json_is_object(root)) {
        rc = core_err_set(MLV_EINVAL, "safetensors %s: header is not a JSON object", path);
        goto done;
    }
    uint64_t data_len = fsize - 8 - hlen;
    size_t n = json_object_size(root), nr = 0;
    if (!(ranges = calloc(n ? n : 1, sizeof *ranges))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v)
    {
        if (!strcmp(name, "__metadata__")) {
            if (!json_is_object(v)) {
                rc =
                    core_err_set(MLV_EINVAL, "safetensors %s: __metadata__ is not an object", path);
                goto done;
            }
            continue;
        }
        json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
               *offs = json_object_get(v, "data_offsets");
        if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(shape) ||
            !json_is_array(offs) || json_array_size(offs) != 2) {
            rc = core_err_set(MLV_EINVAL,
                              "safetensors %s: tensor '%.120s': needs dtype, shape and "
                              "data_offsets [begin, end]",
                              path, name);
            goto done;
        }
        const char *dtype = json_string_value(dt);
        unsigned esize = st_dtype_size(dtype);
        if (!esize) {
            rc = core_err_set(MLV_EINVAL, "safetensors %s: tensor '%.120s': unknown dtype '%.40s'",
                              path, name, dtype);
            goto done;
        }
        uint64_t elems = 1;
        for (size_t d = 0; d < json_array_size(shape); d++) {
            uint64_t dim;
            if (!json_u64(json_array_get(shape, d), &dim)) {
                rc = core_err_set(MLV_EINVAL,
                                  "safetensors %s: tensor '%.120s': shape is not a list of "
                                  "non-negative integers",
                                  path, name);
                goto done;
            }
            if (dim && elems > UINT64_MAX / dim) {
                rc = core_err_set(MLV_EINVAL, "safetensors %s: tensor '%.120s': shape overflows",
                                  path, name);
                goto done;
            }
            elems *= dim;
        }
        uint64_t begin, end;
        if (!json_u64(json_array_get(offs, 0), &begin) ||
            !json_u64(json_array_get(offs, 1), &end) || end < begin) {
            rc = core_err_set(MLV_EINVAL, "safetensors %s: tensor '%.120s': bad data_offsets", path,
                              name);
            goto done;
        }
        if (elems > UINT64_MAX / esize || end - begin != elems * esize) {
            rc = core_err_set(MLV_EINVAL,
                              "safetensors %s: tensor '%.120s': %" PRIu64
                              " bytes for a %s tensor of %" PRIu64 " elements",
                              path, name, end - begin, dtype, elems);
            goto done;
        }
        if (end > data_len) {
            rc = core_err_set(MLV_EINVAL, "safetensors %s: tensor '%.120s': data past end of file",
                              path, name);
            goto done;
        }
        if (elems > UINT64_MAX - m->parameters) {
            rc = core_err_set(MLV_EINVAL, "safetensors %s: parameter count overflows", path);
            goto done;
        }
        m->parameters += elems;
        if ((rc = types_add(m, dtype))) goto done;
        ranges[nr++] = (st_range){begin, end, name};
    }
    /* The spec: the data area is indexed entirely, with neither overlaps nor holes
     * (so a file cannot hide a second payload). */
    qsort(ranges, nr, sizeof *ranges, cmp_range);
    uint64_t at = 0;
    for (size_t i = 0; i < nr; i++) {
        if (ranges[i].begin < at) {
            rc = core_err_set(MLV_EINVAL, "safetensors %s: tensor '%.120s' overlaps another", path,
                              ranges[i].name);
            goto done;
        }
        if (ranges[i].begin > at) {
            rc = core_err_set(MLV_EINVAL, "safetensors %s: unindexed bytes before tensor '%.120s'",
                              path, ranges[i].name);
            goto done;
        }
        at = ranges[i].end;
    }
    if (at != data_len) {
        rc = core_err_set(MLV_EINVAL,
                          "safetensors %s: %" PRIu64 " data bytes but the tensors cover %" PRIu64,
                          path, data_len, at);
        goto done;
    }
done:
    free(ranges);
    json_decref(root);
    free(hdr);
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
