/* repo/manifest.c: a version's manifest (DESIGN.md, Manifest) to and from canonical
 * JSON — jansson with JSON_SORT_KEYS|JSON_COMPACT, UTF-8, schema "mlvault.manifest/v1":
 *
 *   {"architecture":..,"created_at":"2026-11-29T07:48:12Z","creator":..,
 *    "files":[{"path":..,"sha256":..,"size":N}...],"format":..,"kind":..,
 *    "lineage":{"datasets":[digest...],"job":{"kind":..,"params":{...}},
 *               "mlvault_version":..,"parents":[{"digest":..,"name":..,"version":N}]},
 *    "name":..,"note":..,"parameters":N,"schema":"mlvault.manifest/v1",
 *    "tensor_types":[...],"version":N}
 *
 * Every key is always present. The manifest's SHA-256 is the version's identity, so
 * the parser accepts exactly the bytes that the writer produces for the same struct
 * (anything else is "not canonical"). One validator guards both directions: the
 * writer refuses a struct it could not read back. Not here: signing (sign.c) and
 * where manifests are stored (registry, ledger). */
#include "repo.h"

#include "core/core_json.h"
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_ID "mlvault.manifest/v1"
#define MANIFEST_MAX_BYTES (16u << 20)
#define MANIFEST_MAX_ITEMS 100000 /* files, parents, tensor types, datasets */
#define TEXT_MAX 256              /* architecture, mlvault_version */
#define NOTE_MAX 65536
#define TENSOR_TYPE_MAX 32
#define JSON_FLAGS (JSON_SORT_KEYS | JSON_COMPACT)

void repo_sha256_hex(char out[65], const void *data, size_t len)
{
    unsigned char d[32];
    unsigned int dl = 0;
    if (EVP_Digest(data, len, d, &dl, EVP_sha256(), NULL) != 1 || dl != 32) {
        /* Only a broken crypto library gets here; an impossible digest is safer than
         * garbage (it never matches anything real). */
        memset(out, '0', 64);
        out[64] = 0;
        return;
    }
    core_hex(out, d, 32);
}


/* ------------------------------------------------------------------ validation -- */

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as jansson
 * requires of every string; checked first so that a refusal reads EINVAL, not ENOMEM. */
static bool utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        size_t n;
        unsigned cp;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        p += n + 1;
    }
    return true;
}

/* A one-line text field: UTF-8, no control characters, at most `max` bytes. */
static int check_text(const char *what, const char *s, size_t max, bool allow_empty)
{
    if (!s) return core_err_set(MLV_EINVAL, "manifest: %s is missing", what);
    size_t n = strlen(s);
    if (n == 0 && !allow_empty) return core_err_set(MLV_EINVAL, "manifest: %s is empty", what);
    if (n > max)
        return core_err_set(MLV_EINVAL, "manifest: %s is longer than %zu bytes", what, max);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return core_err_set(MLV_EINVAL, "manifest: %s has a control character", what);
    if (!utf8_valid(s)) return core_err_set(MLV_EINVAL, "manifest: %s is not valid UTF-8", what);
    return 0;
}

static int check_name(const char *what, const char *s)
{
    if (!core_name_valid(s))
        return core_err_set(MLV_EINVAL,
                            "manifest: %s '%.80s' is not a valid name "
                            "([a-z0-9][a-z0-9._-]{0,63})",
                            what, s ? s : "(null)");
    return 0;
}

static int check_digest(const char *what, const char *hex)
{
    if (!core_is_hex(hex, 64))
        return core_err_set(MLV_EINVAL, "manifest: %s is not 64 lowercase hex characters", what);
    return 0;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* "YYYY-MM-DDTHH:MM:SSZ", as core_time_iso writes it. */
static int check_time(const char *s)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    if (!s || strlen(s) != sizeof shape - 1) goto bad;
    for (size_t i = 0; shape[i]; i++)
        if (shape[i] == 'd' ? !is_digit(s[i]) : s[i] != shape[i]) goto bad;
    int mo = (s[5] - '0') * 10 + (s[6] - '0'), d = (s[8] - '0') * 10 + (s[9] - '0');
    int h = (s[11] - '0') * 10 + (s[12] - '0'), mi = (s[14] - '0') * 10 + (s[15] - '0');
    int se = (s[17] - '0') * 10 + (s[18] - '0');
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) goto bad;
    return 0;
bad:
    return core_err_set(MLV_EINVAL,
                        "manifest: created_at '%.40s' is not RFC 3339 UTC "
                        "(YYYY-MM-DDTHH:MM:SSZ)",
                        s ? s : "(null)");
}

static int check_tensor_type(const char *t)
{
    size_t n = t ? strlen(t) : 0;
    if (n == 0 || n > TENSOR_TYPE_MAX) goto bad;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_'))
            goto bad;
    }
    return 0;
bad:
    return core_err_set(MLV_EINVAL, "manifest: tensor type '%.40s' is not [A-Za-z0-9_]{1,32}",
                        t ? t : "(null)");
}

/* Everything a manifest must satisfy, for the writer and (through it) the parser. */
static int manifest_check(const repo_manifest *m)
{
    int rc;
    if (!m) return core_err_set(MLV_EINVAL, "manifest: no manifest");
    if (!m->kind || (strcmp(m->kind, "model") && strcmp(m->kind, "dataset")))
        return core_err_set(MLV_EINVAL, "manifest: kind '%.40s' is not model or dataset",
                            m->kind ? m->kind : "(null)");
    if ((rc = check_name("name", m->name))) return rc;
    if (m->version < 1)
        return core_err_set(MLV_EINVAL, "manifest: version %d is not ≥ 1", m->version);
    if (!m->format || (strcmp(m->format, "gguf") && strcmp(m->format, "safetensors") &&
                       strcmp(m->format, "dataset")))
        return core_err_set(MLV_EINVAL,
                            "manifest: format '%.40s' is not gguf, safetensors "
                            "or dataset",
                            m->format ? m->format : "(null)");
    if ((rc = check_text("architecture", m->architecture, TEXT_MAX, true))) return rc;
    if (m->parameters > (uint64_t)INT64_MAX)
        return core_err_set(MLV_EINVAL, "manifest: parameter count is out of range");

    if (m->n_tensor_types > MANIFEST_MAX_ITEMS || (m->n_tensor_types && !m->tensor_types))
        return core_err_set(MLV_EINVAL, "manifest: bad tensor type list");
    for (size_t i = 0; i < m->n_tensor_types; i++) {
        if ((rc = check_tensor_type(m->tensor_types[i]))) return rc;
        if (i > 0 && strcmp(m->tensor_types[i - 1], m->tensor_types[i]) >= 0)
            return core_err_set(MLV_EINVAL,
                                "manifest: tensor types are not sorted and unique "
                                "('%s' after '%s')",
                                m->tensor_types[i], m->tensor_types[i - 1]);
    }

    if (m->n_files == 0 || !m->files)
        return core_err_set(MLV_EINVAL, "manifest: a version holds at least one file");
    if (m->n_files > MANIFEST_MAX_ITEMS)
        return core_err_set(MLV_EINVAL, "manifest: more than %d files", MANIFEST_MAX_ITEMS);
    for (size_t i = 0; i < m->n_files; i++) {
        const repo_file *f = &m->files[i];
        if (!f->path || !core_relpath_safe(f->path) || !utf8_valid(f->path))
            return core_err_set(MLV_EINVAL,
                                "manifest: file path '%.80s' is not a safe "
                                "relative path",
                                f->path ? f->path : "(null)");
        if (f->size > (uint64_t)INT64_MAX)
            return core_err_set(MLV_EINVAL, "manifest: file %s: size out of range", f->path);
        if (!core_is_hex(f->sha256, 64))
            return core_err_set(MLV_EINVAL,
                                "manifest: file %s: sha256 is not 64 lowercase hex "
                                "characters",
                                f->path);
        if (i > 0) {
            int c = strcmp(m->files[i - 1].path, f->path);
            if (c == 0)
                return core_err_set(MLV_EINVAL, "manifest: file %s is listed twice", f->path);
            if (c > 0)
                return core_err_set(MLV_EINVAL,
                                    "manifest: files are not sorted by path "
                                    "('%s' after '%s')",
                                    f->path, m->files[i - 1].path);
        }
    }

    if (m->n_parents > MANIFEST_MAX_ITEMS || (m->n_parents && !m->parents))
        return core_err_set(MLV_EINVAL, "manifest: bad parent list");
    for (size_t i = 0; i < m->n_parents; i++) {
        const repo_parent *p = &m->parents[i];
        if ((rc = check_name("parent name", p->name))) return rc;
        if (p->version < 1)
            return core_err_set(MLV_EINVAL, "manifest: parent %s version %d is not ≥ 1", p->name,
                                p->version);
        if ((rc = check_digest("parent digest", p->digest))) return rc;
    }
    if ((rc = check_name("job kind", m->job_kind))) return rc;
    if (m->n_dataset_digests > MANIFEST_MAX_ITEMS || (m->n_dataset_digests && !m->dataset_digests))
        return core_err_set(MLV_EINVAL, "manifest: bad dataset list");
    for (size_t i = 0; i < m->n_dataset_digests; i++)
        if ((rc = check_digest("dataset digest", m->dataset_digests[i]))) return rc;
    if ((rc = check_text("mlvault_version", m->mlvault_version, TEXT_MAX, false))) return rc;
    if ((rc = check_name("creator", m->creator))) return rc;
    if ((rc = check_time(m->created_at))) return rc;
    if (m->note) {
        if (strlen(m->note) > NOTE_MAX)
            return core_err_set(MLV_EINVAL, "manifest: note is longer than %d bytes", NOTE_MAX);
        if (!utf8_valid(m->note))
            return core_err_set(MLV_EINVAL, "manifest: note is not valid UTF-8");
    }
    return 0;
}

/* -------------------------------------------------------------------- writing -- */

/* Sets obj[key] = v, taking v; any NULL (a failed json_* constructor) fails. */
static int put(json_t *obj, const char *key, json_t *v)
{
    if (!v || json_object_set_new(obj, key, v) != 0)
        return core_err_set(MLV_ENOMEM, "manifest: out of memory");
    return 0;
}

static int append(json_t *arr, json_t *v)
{
    if (!v || json_array_append_new(arr, v) != 0)
        return core_err_set(MLV_ENOMEM, "manifest: out of memory");
    return 0;
}

/* Each container is attached to its parent as soon as it exists, so the root owns
 * everything and one json_decref(root) releases it on any failure
 * (json_object_set_new takes its value even when it fails). */
static int build(const repo_manifest *m, json_t **out)
{
    json_t *root = json_object(), *types = NULL, *files = NULL, *lineage = NULL;
    json_t *parents = NULL, *job = NULL, *datasets = NULL, *params = NULL;
    int rc = 0;
    *out = NULL;
    if (!root) return core_err_set(MLV_ENOMEM, "manifest: out of memory");

    json_error_t jerr;
    params = json_loads(m->job_params ? m->job_params : "{}", JSON_REJECT_DUPLICATES, &jerr);
    if (!params || !json_is_object(params)) {
        rc = core_err_set(MLV_EINVAL, "manifest: job params are not a JSON object%s%s",
                          params ? "" : ": ", params ? "" : jerr.text);
        json_decref(params);
        goto done;
    }

    if ((rc = put(root, "schema", json_string(SCHEMA_ID))) ||
        (rc = put(root, "kind", json_string(m->kind))) ||
        (rc = put(root, "name", json_string(m->name))) ||
        (rc = put(root, "version", json_integer(m->version))) ||
        (rc = put(root, "format", json_string(m->format))) ||
        (rc = put(root, "architecture", json_string(m->architecture))) ||
        (rc = put(root, "parameters", json_integer((json_int_t)m->parameters))) ||
        (rc = put(root, "creator", json_string(m->creator))) ||
        (rc = put(root, "created_at", json_string(m->created_at))) ||
        (rc = put(root, "note", json_string(m->note ? m->note : ""))) ||
        (rc = put(root, "tensor_types", types = json_array())) ||
        (rc = put(root, "files", files = json_array())) ||
        (rc = put(root, "lineage", lineage = json_object())) ||
        (rc = put(lineage, "parents", parents = json_array())) ||
        (rc = put(lineage, "job", job = json_object())) ||
        (rc = put(lineage, "datasets", datasets = json_array())) ||
        (rc = put(lineage, "mlvault_version", json_string(m->mlvault_version))) ||
        (rc = put(job, "kind", json_string(m->job_kind)))) {
        json_decref(params);
        goto done;
    }
    if ((rc = put(job, "params", params))) goto done;

    for (size_t i = 0; i < m->n_tensor_types && !rc; i++)
        rc = append(types, json_string(m->tensor_types[i]));
    for (size_t i = 0; i < m->n_files && !rc; i++) {
        json_t *f = json_object();
        if (!(rc = append(files, f)) && !(rc = put(f, "path", json_string(m->files[i].path))) &&
            !(rc = put(f, "size", json_integer((json_int_t)m->files[i].size))))
            rc = put(f, "sha256", json_string(m->files[i].sha256));
    }
    for (size_t i = 0; i < m->n_parents && !rc; i++) {
        json_t *p = json_object();
        if (!(rc = append(parents, p)) && !(rc = put(p, "name", json_string(m->parents[i].name))) &&
            !(rc = put(p, "version", json_integer(m->parents[i].version))))
            rc = put(p, "digest", json_string(m->parents[i].digest));
    }
    for (size_t i = 0; i < m->n_dataset_digests && !rc; i++)
        rc = append(datasets, json_string(m->dataset_digests[i]));
done:
    if (rc) {
        json_decref(root);
        return rc;
    }
    *out = root;
    return 0;
}

int repo_manifest_to_json(const repo_manifest *m, char **out, size_t *len)
{
    if (!out) return core_err_set(MLV_EINVAL, "manifest: no output");
    *out = NULL;
    if (len) *len = 0;
    int rc = manifest_check(m);
    if (rc) return rc;
    json_t *root = NULL;
    if ((rc = build(m, &root))) return rc;
    char *s = core_json_dumps(root, JSON_FLAGS);
    json_decref(root);
    if (!s) return core_err_set(MLV_ENOMEM, "manifest: out of memory");
    *out = s;
    if (len) *len = strlen(s);
    return 0;
}

/* -------------------------------------------------------------------- reading -- */

void repo_manifest_free(repo_manifest *m)
{
    if (!m) return;
    free(m->kind);
    free(m->name);
    free(m->format);
    free(m->architecture);
    for (size_t i = 0; m->tensor_types && i < m->n_tensor_types; i++)
        free(m->tensor_types[i]);
    free(m->tensor_types);
    for (size_t i = 0; m->files && i < m->n_files; i++)
        free(m->files[i].path);
    free(m->files);
    for (size_t i = 0; m->parents && i < m->n_parents; i++)
        free(m->parents[i].name);
    free(m->parents);
    free(m->job_kind);
    free(m->job_params);
    for (size_t i = 0; m->dataset_digests && i < m->n_dataset_digests; i++)
        free(m->dataset_digests[i]);
    free(m->dataset_digests);
    free(m->creator);
    free(m->created_at);
    free(m->note);
    free(m->mlvault_version);
    free(m);
}

/* `obj` must be an object holding exactly the keys in `keys` (NULL-terminated). */
static int exact_keys(const json_t *obj, const char *where, const char *const *keys)
{
    if (!json_is_object(obj))
        return core_err_set(MLV_EINVAL, "manifest: %s is not an object", where);
    size_t want = 0;
    for (; keys[want]; want++)
        if (!json_object_get(obj, keys[want]))
            return core_err_set(MLV_EINVAL, "manifest: %s lacks \"%s\"", where, keys[want]);
    if (json_object_size(obj) != want) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)obj, k, v)
        {
            size_t i = 0;
            while (keys[i] && strcmp(keys[i], k))
                i++;
            if (!keys[i])
                return core_err_set(MLV_EINVAL, "manifest: %s has an unknown key \"%.80s\"", where,
                                    k);
        }
    }
    return 0;
}

/* Copies string obj[key] into *out (caller's struct owns it). */
static int get_str(const json_t *obj, const char *where, const char *key, char **out)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return core_err_set(MLV_EINVAL, "manifest: %s.%s is not a string", where, key);
    *out = strdup(json_string_value(v));
    if (!*out) return core_err_set(MLV_ENOMEM, "manifest: out of memory");
    return 0;
}

/* Copies string obj[key] (64 hex expected; the writer checks) into a fixed buffer. */
static int get_digest(const json_t *obj, const char *where, const char *key, char out[65])
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v) || json_string_length(v) != 64)
        return core_err_set(MLV_EINVAL, "manifest: %s.%s is not a 64-character digest", where, key);
    memcpy(out, json_string_value(v), 65);
    return 0;
}

static int get_int(const json_t *obj, const char *where, const char *key, json_int_t lo,
                   json_int_t hi, json_int_t *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v))
        return core_err_set(MLV_EINVAL, "manifest: %s.%s is not an integer", where, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return core_err_set(MLV_EINVAL, "manifest: %s.%s is out of range", where, key);
    *out = x;
    return 0;
}

/* obj[key] as an array of at most MANIFEST_MAX_ITEMS; *n its size. */
static int get_array(const json_t *obj, const char *where, const char *key, const json_t **arr,
                     size_t *n)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_array(v))
        return core_err_set(MLV_EINVAL, "manifest: %s.%s is not an array", where, key);
    if (json_array_size(v) > MANIFEST_MAX_ITEMS)
        return core_err_set(MLV_EINVAL, "manifest: %s.%s has more than %d entries", where, key,
                            MANIFEST_MAX_ITEMS);
    *arr = v;
    *n = json_array_size(v);
    return 0;
}

static int get_str_array(const json_t *obj, const char *where, const char *key, char ***out,
                         size_t *n)
{
    const json_t *arr;
    size_t cnt;
    int rc = get_array(obj, where, key, &arr, &cnt);
    if (rc) return rc;
    if (cnt == 0) return 0;
    *out = calloc(cnt, sizeof **out);
    if (!*out) return core_err_set(MLV_ENOMEM, "manifest: out of memory");
    *n = cnt;
    for (size_t i = 0; i < cnt; i++) {
        const json_t *v = json_array_get(arr, i);
        if (!json_is_string(v))
            return core_err_set(MLV_EINVAL, "manifest: %s.%s[%zu] is not a string", where, key, i);
        if (!((*out)[i] = strdup(json_string_value(v))))
            return core_err_set(MLV_ENOMEM, "manifest: out of memory");
    }
    return 0;
}

static const char *const TOP_KEYS[] = {
    "schema",       "kind",  "name",    "version", "format",     "architecture", "parameters",
    "tensor_types", "files", "lineage", "creator", "created_at", "note",         NULL};
static const char *const FILE_KEYS[] = {"path", "size", "sha256", NULL};
static const char *const LINEAGE_KEYS[] = {"parents", "job", "datasets", "mlvault_version", NULL};
static const char *const PARENT_KEYS[] = {"name", "version", "digest", NULL};
static const char *const JOB_KEYS[] = {"kind", "params", NULL};

/* Fills m from the parsed document (shape and types only; semantics are checked by
 * manifest_check when the struct is written back). */
static int read_doc(repo_manifest *m, const json_t *root)
{
    int rc;
    json_int_t x;
    if ((rc = exact_keys(root, "manifest", TOP_KEYS))) return rc;
    const json_t *schema = json_object_get(root, "schema");
    if (!json_is_string(schema) || strcmp(json_string_value(schema), SCHEMA_ID))
        return core_err_set(MLV_EINVAL, "manifest: schema is not \"" SCHEMA_ID "\"");
    if ((rc = get_str(root, "manifest", "kind", &m->kind)) ||
        (rc = get_str(root, "manifest", "name", &m->name)) ||
        (rc = get_int(root, "manifest", "version", 1, INT_MAX, &x)))
        return rc;
    m->version = (int)x;
    if ((rc = get_str(root, "manifest", "format", &m->format)) ||
        (rc = get_str(root, "manifest", "architecture", &m->architecture)) ||
        (rc = get_int(root, "manifest", "parameters", 0, INT64_MAX, &x)))
        return rc;
    m->parameters = (uint64_t)x;
    if ((rc = get_str_array(root, "manifest", "tensor_types", &m->tensor_types,
                            &m->n_tensor_types)) ||
        (rc = get_str(root, "manifest", "creator", &m->creator)) ||
        (rc = get_str(root, "manifest", "created_at", &m->created_at)) ||
        (rc = get_str(root, "manifest", "note", &m->note)))
        return rc;

    const json_t *arr;
    size_t n;
    if ((rc = get_array(root, "manifest", "files", &arr, &n))) return rc;
    if (n) {
        if (!(m->files = calloc(n, sizeof *m->files)))
            return core_err_set(MLV_ENOMEM, "manifest: out of memory");
        m->n_files = n;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *f = json_array_get(arr, i);
        if ((rc = exact_keys(f, "file entry", FILE_KEYS)) ||
            (rc = get_str(f, "file", "path", &m->files[i].path)) ||
            (rc = get_int(f, "file", "size", 0, INT64_MAX, &x)) ||
            (rc = get_digest(f, "file", "sha256", m->files[i].sha256)))
            return rc;
        m->files[i].size = (uint64_t)x;
    }

    const json_t *lin = json_object_get(root, "lineage");
    if ((rc = exact_keys(lin, "lineage", LINEAGE_KEYS))) return rc;
    if ((rc = get_array(lin, "lineage", "parents", &arr, &n))) return rc;
    if (n) {
        if (!(m->parents = calloc(n, sizeof *m->parents)))
            return core_err_set(MLV_ENOMEM, "manifest: out of memory");
        m->n_parents = n;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *p = json_array_get(arr, i);
        if ((rc = exact_keys(p, "parent entry", PARENT_KEYS)) ||
            (rc = get_str(p, "parent", "name", &m->parents[i].name)) ||
            (rc = get_int(p, "parent", "version", 1, INT_MAX, &x)) ||
            (rc = get_digest(p, "parent", "digest", m->parents[i].digest)))
            return rc;
        m->parents[i].version = (int)x;
    }
    const json_t *job = json_object_get(lin, "job");
    if ((rc = exact_keys(job, "lineage.job", JOB_KEYS)) ||
        (rc = get_str(job, "lineage.job", "kind", &m->job_kind)))
        return rc;
    const json_t *params = json_object_get(job, "params");
    if (!json_is_object(params))
        return core_err_set(MLV_EINVAL, "manifest: lineage.job.params is not an object");
    if (!(m->job_params = core_json_dumps(params, JSON_FLAGS)))
        return core_err_set(MLV_ENOMEM, "manifest: out of memory");
    if ((rc = get_str_array(lin, "lineage", "datasets", &m->dataset_digests,
                            &m->n_dataset_digests)) ||
        (rc = get_str(lin, "lineage", "mlvault_version", &m->mlvault_version)))
        return rc;
    return 0;
}

int repo_manifest_parse(repo_manifest **out, const char *json, size_t len)
{
    repo_manifest *m = NULL;
    json_t *root = NULL;
    char *again = NULL;
    size_t again_len = 0;
    int rc = 0;
    if (!out) return core_err_set(MLV_EINVAL, "manifest: no output");
    *out = NULL;
    if (!json) return core_err_set(MLV_EINVAL, "manifest: no input");
    if (len > MANIFEST_MAX_BYTES)
        return core_err_set(MLV_EINVAL, "manifest: %zu bytes is over the %u-byte limit", len,
                            MANIFEST_MAX_BYTES);

    json_error_t jerr;
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = core_err_set(MLV_EINVAL, "manifest: not JSON: %s (at byte %d)", jerr.text,
                          jerr.position);
        goto done;
    }
    if (!(m = calloc(1, sizeof *m))) {
        rc = core_err_set(MLV_ENOMEM, "manifest: out of memory");
        goto done;
    }
    if ((rc = read_doc(m, root))) goto done;
    /* Validates every field, then proves the input is the one canonical form. */
    if ((rc = repo_manifest_to_json(m, &again, &again_len))) goto done;
    if (again_len != len || memcmp(again, json, len) != 0) {
        rc = core_err_set(MLV_EINVAL, "manifest is not canonical");
        goto done;
    }
    *out = m;
    m = NULL;
done:
    free(again);
    json_decref(root);
    repo_manifest_free(m);
    return rc;
}
