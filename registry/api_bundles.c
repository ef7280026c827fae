/* registry/api_bundles.c: air-gap bundles over the API (docs/api.md, Bundles). POST
 * /bundles runs reg_bundle_export into HOME/tmp/bundles/ID/ and keeps the file there
 * for its creator to fetch (GET, with Range, so a broken download resumes) until DELETE
 * or an hour has passed; a server start sweeps HOME/tmp as for every temp file. Imports
 * come in through an upload session of kind "bundle" (uploads.c), not here. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "registry/server_internal.h"

#define BUNDLE_TTL_S 3600
#define BUNDLE_MAX_REFS 256
#define BUNDLE_PEM_MAX 16384 /* as `mlvault bundle export --to` reads the key */
#define BUNDLE_FILE "bundle.tar.zst"
#define BUNDLE_META "meta.json"
#define IO_BUF ((size_t)256 << 10)

static char *bundles_dir(const char *home)
{
    char *p = NULL;
    if (asprintf(&p, "%s/tmp/bundles", home) < 0) return NULL;
    return p;
}

static char *bundle_path(const char *home, const char *id, const char *leaf)
{
    char *p = NULL;
    if (asprintf(&p, "%s/tmp/bundles/%s%s%s", home, id, leaf ? "/" : "", leaf ? leaf : "") < 0)
        return NULL;
    return p;
}

/* {user, created, sha256, bytes} of a finished bundle; NULL while it is being written
 * (or when it never finished). */
static json_t *bundle_meta(const char *home, const char *id)
{
    char *p = bundle_path(home, id, BUNDLE_META);
    json_t *m = p ? json_load_file(p, 0, NULL) : NULL;
    free(p);
    return m;
}

static bool expired(const json_t *meta, time_t now)
{
    json_int_t created = json_integer_value(json_object_get(meta, "created"));
    return now - (time_t)created > BUNDLE_TTL_S;
}

/* Removes bundles older than BUNDLE_TTL_S, and folders of exports that never finished
 * (no meta.json) once their folder is that old. */
static void bundles_sweep(const char *home)
{
    char *dir = bundles_dir(home);
    DIR *d = dir ? opendir(dir) : NULL;
    struct dirent *e;
    time_t now = time(NULL);
    while (d && (e = readdir(d)) != NULL) {
        if (!core_is_hex(e->d_name, 32)) continue;
        json_t *m = bundle_meta(home, e->d_name);
        char *p = bundle_path(home, e->d_name, NULL);
        struct stat st;
        bool old = m ? expired(m, now) : p && stat(p, &st) == 0 && now - st.st_mtime > BUNDLE_TTL_S;
        if (old && p) {
            core_log(CORE_LOG_INFO, "removing bundle %s: older than an hour", e->d_name);
            core_rm_rf(p);
        }
        free(p);
        json_decref(m);
    }
    if (d) closedir(d);
    free(dir);
}

/* The route's bundle, which must be the caller's and not expired; *meta the caller's. */
static int bundle_load(srv_req *q, json_t **meta)
{
    const char *id = q->params[0];
    *meta = bundle_meta(q->s->home, id);
    if (!*meta) return core_err_set(MLV_ENOTFOUND, "no bundle %s", id);
    int rc = 0;
    const char *owner = json_string_value(json_object_get(*meta, "user"));
    if (expired(*meta, time(NULL))) {
        char *p = bundle_path(q->s->home, id, NULL);
        if (p) core_rm_rf(p);
        free(p);
        rc = core_err_set(MLV_ENOTFOUND, "no bundle %s (it expired after an hour)", id);
    } else if (!owner || strcmp(owner, q->user.name) != 0) {
        rc = core_err_set(MLV_EFORBIDDEN, "bundle %s belongs to another user", id);
    }
    if (rc) {
        json_decref(*meta);
        *meta = NULL;
    }
    return rc;
}

int api_bundle_create(srv_req *q)
{
    json_t *b, *res = NULL, *meta = NULL;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    const char *pem = NULL, **refs = NULL;
    char *dir = NULL, *file = NULL, *meta_path = NULL, *meta_text = NULL;
    json_t *jrefs = json_object_get(b, "refs"), *wa = json_object_get(b, "with_ancestors");
    size_t n = json_array_size(jrefs);
    if ((rc = srv_str_field(b, "recipient_pem", true, BUNDLE_PEM_MAX, &pem)) != 0) goto done;
    if (!json_is_array(jrefs) || n == 0 || n > BUNDLE_MAX_REFS) {
        rc = core_err_set(MLV_EINVAL, "'refs' must be an array of 1 to %d references",
                          BUNDLE_MAX_REFS);
        goto done;
    }
    if (wa && !json_is_null(wa) && !json_is_boolean(wa)) {
        rc = core_err_set(MLV_EINVAL, "'with_ancestors' must be true or false");
        goto done;
    }
    if (!(refs = calloc(n, sizeof *refs))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(jrefs, i));
        reg_ref ref;
        if (!s || strlen(s) > 200 || (rc = reg_ref_parse(s, &ref)) != 0) {
            rc = rc ? rc : core_err_set(MLV_EINVAL, "refs[%zu] must be a reference", i);
            goto done;
        }
        refs[i] = s;
    }
    bundles_sweep(q->s->home);
    unsigned char raw[16];
    char id[33];
    core_random(raw, sizeof raw);
    core_hex(id, raw, sizeof raw);
    if (!(dir = bundle_path(q->s->home, id, NULL)) ||
        !(file = bundle_path(q->s->home, id, BUNDLE_FILE)) ||
        !(meta_path = bundle_path(q->s->home, id, BUNDLE_META))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = core_mkdir_p(dir, 0700)) != 0) goto done;
    reg_bundle_export_opts o = {.refs = refs,
                                .n_refs = n,
                                .with_ancestors = json_is_true(wa),
                                .recipient_pem = pem,
                                .path = file};
    if ((rc = reg_bundle_export(q->r, &q->user, &o, &res)) != 0) goto done;
    meta =
        json_pack("{s:s,s:I,s:O,s:O}", "user", q->user.name, "created", (json_int_t)time(NULL),
                  "sha256", json_object_get(res, "sha256"), "bytes", json_object_get(res, "bytes"));
    if (!meta || !(meta_text = core_json_dumps(meta, JSON_COMPACT))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = core_write_atomic(meta_path, dir, meta_text, strlen(meta_text), 0600)) != 0)
        goto done;
    /* the server's path is no business of the client's: it names its own file */
    json_object_del(res, "file");
    json_object_set_new(res, "id", json_string(id));
    rc = srv_reply_json(q, 201, res);
    res = NULL;
done:
    if (rc && dir) core_rm_rf(dir); /* nothing of a failed export stays */
    json_decref(res);
    json_decref(meta);
    json_decref(b);
    free(meta_text);
    free(meta_path);
    free(file);
    free(dir);
    free(refs);
    return rc;
}

int api_bundle_get(srv_req *q)
{
    json_t *meta;
    int rc = bundle_load(q, &meta);
    if (rc) return rc;
    char *path = bundle_path(q->s->home, q->params[0], BUNDLE_FILE);
    unsigned char *buf = NULL;
    int fd = -1;
    uint64_t size = 0;
    if (!path) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = core_open_regular(path, &fd, &size)) != 0) goto done;
    const char *sha = json_string_value(json_object_get(meta, "sha256"));
    uint64_t a, b;
    char headers[512];
    int status = srv_range_start(q, size, sha, &a, &b, headers, sizeof headers);
    if (status == 416) goto done;
    uint64_t length = size ? b - a + 1 : 0;
    srv_reply_start(q, status, "application/octet-stream", length, headers);
    if (q->head || length == 0) goto done;
    if (!(buf = malloc(IO_BUF))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    /* never whole in memory: one buffer at a time from disk to the socket */
    for (uint64_t at = a, left = length; left > 0 && rc == 0;) {
        ssize_t r = pread(fd, buf, left < IO_BUF ? (size_t)left : IO_BUF, (off_t)at);
        if (r <= 0) {
            rc = core_err_set(MLV_EIO, "%s: %s", path, r < 0 ? strerror(errno) : "short read");
            break;
        }
        rc = srv_write(q, buf, (size_t)r);
        at += (uint64_t)r;
        left -= (uint64_t)r;
    }
done:
    if (fd >= 0) close(fd);
    free(buf);
    free(path);
    json_decref(meta);
    return rc;
}

int api_bundle_delete(srv_req *q)
{
    json_t *meta;
    int rc = bundle_load(q, &meta);
    if (rc) return rc;
    json_decref(meta);
    char *dir = bundle_path(q->s->home, q->params[0], NULL);
    if (!dir) return core_err_set(MLV_ENOMEM, "out of memory");
    rc = core_rm_rf(dir);
    free(dir);
    if (rc) return rc;
    return srv_reply_json(q, 200, json_pack("{s:s,s:b}", "id", q->params[0], "deleted", 1));
}
