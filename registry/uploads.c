/* registry/uploads.c: streaming, resumable uploads (docs/api.md, Uploads) — the push
 * path of the API. A session is a row of the `uploads` table (owner, declared files)
 * and a folder HOME/uploads/ID/files/ holding the bytes received so far; what a file
 * has received is its size on disk, so sessions survive a restart. PUT appends a part
 * only at the current end; commit checks every size and SHA-256, then calls reg_push
 * on the file (a .gguf or a dataset) or the folder (a Hugging Face model) — or, for the
 * kind "bundle" (one FILE.tar.zst), reg_bundle_import on the file. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/server_internal.h"

#define MAX_UPLOAD_FILES 4096
#define MAX_PARENTS 64
#define IO_BUF ((size_t)256 << 10)

typedef struct session {
    char id[33];
    json_t *meta; /* {name, kind, files:[{path,size,sha256}], parents, note} */
    char *dir;    /* HOME/uploads/ID */
} session;

static void session_clear(session *ss)
{
    json_decref(ss->meta);
    free(ss->dir);
    memset(ss, 0, sizeof *ss);
}

static char *upload_dir(const char *home, const char *id)
{
    char *p = NULL;
    if (asprintf(&p, "%s/uploads/%s", home, id) < 0) return NULL;
    return p;
}

/* The session of the route's {upload}, which must be the caller's. */
static int session_load(srv_req *q, session *ss)
{
    memset(ss, 0, sizeof *ss);
    snprintf(ss->id, sizeof ss->id, "%s", q->params[0]);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(q->r->db, "SELECT user, meta FROM uploads WHERE id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return reg_db_err(q->r, "uploads");
    sqlite3_bind_text(st, 1, ss->id, -1, SQLITE_STATIC);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_ENOTFOUND, "no upload session %s", ss->id);
    } else if (step != SQLITE_ROW) {
        rc = reg_db_err(q->r, "uploads");
    } else if (strcmp((const char *)sqlite3_column_text(st, 0), q->user.name) != 0) {
        rc = core_err_set(MLV_EFORBIDDEN, "upload %s belongs to another user", ss->id);
    } else {
        json_error_t e;
        ss->meta = json_loads((const char *)sqlite3_column_text(st, 1), 0, &e);
        ss->dir = upload_dir(q->s->home, ss->id);
        if (!ss->meta || !ss->dir) rc = core_err_set(MLV_EDB, "upload %s: bad session", ss->id);
    }
    sqlite3_finalize(st);
    if (rc) session_clear(ss);
    return rc;
}

/* One request at a time per session: two parts racing would both start at the end. */
static int session_lock(struct reg_server *s, const char *id)
{
    int rc = 0;
    pthread_mutex_lock(&s->up_mu);
    for (int i = 0; i < s->n_up_busy && rc == 0; i++)
        if (!strcmp(s->up_busy[i], id))
            rc = core_err_set(MLV_EBUSY, "upload %s is busy with another request", id);
    if (rc == 0 && s->n_up_busy == s->cap_up_busy) {
        int cap = s->cap_up_busy ? 2 * s->cap_up_busy : 16;
        char(*nb)[33] = realloc(s->up_busy, (size_t)cap * sizeof *nb);
        if (!nb)
            rc = core_err_set(MLV_ENOMEM, "out of memory");
        else
            s->up_busy = nb, s->cap_up_busy = cap;
    }
    if (rc == 0) snprintf(s->up_busy[s->n_up_busy++], 33, "%s", id);
    pthread_mutex_unlock(&s->up_mu);
    return rc;
}

static void session_unlock(struct reg_server *s, const char *id)
{
    pthread_mutex_lock(&s->up_mu);
    for (int i = 0; i < s->n_up_busy; i++)
        if (!strcmp(s->up_busy[i], id)) {
            memcpy(s->up_busy[i], s->up_busy[--s->n_up_busy], 33);
            break;
        }
    pthread_mutex_unlock(&s->up_mu);
}

static char *file_path(const session *ss, const char *path)
{
    char *p = NULL;
    if (asprintf(&p, "%s/files/%s", ss->dir, path) < 0) return NULL;
    return p;
}

static uint64_t received(const session *ss, const char *path)
{
    char *p = file_path(ss, path);
    struct stat st;
    uint64_t n = p && stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
    free(p);
    return n;
}

/* {id, name, kind, files:[{path, size, received}]}; for the listing (created_at given)
 * also each file's sha256, the parents, the note and created_at: what a client needs to
 * tell whether the session is the push it is making again. */
static json_t *session_json(const session *ss, const char *created_at)
{
    json_t *files = json_array();
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(ss->meta, "files"), i, f)
    {
        const char *path = json_string_value(json_object_get(f, "path"));
        json_t *o = json_pack("{s:s,s:O,s:I}", "path", path, "size", json_object_get(f, "size"),
                              "received", (json_int_t)received(ss, path));
        if (o && created_at) json_object_set(o, "sha256", json_object_get(f, "sha256"));
        json_array_append_new(files, o);
    }
    json_t *j =
        json_pack("{s:s,s:O,s:O,s:o}", "id", ss->id, "name", json_object_get(ss->meta, "name"),
                  "kind", json_object_get(ss->meta, "kind"), "files", files);
    if (j && created_at) {
        json_object_set_new(j, "created_at", json_string(created_at));
        json_object_set(j, "parents", json_object_get(ss->meta, "parents"));
        json_object_set(j, "note", json_object_get(ss->meta, "note"));
    }
    return j;
}

static int session_remove(reg_ctx *r, const char *home, const char *id)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "DELETE FROM uploads WHERE id = ?", -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "uploads");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : reg_db_err(r, "uploads");
    sqlite3_finalize(st);
    char *dir = upload_dir(home, id);
    if (dir) core_rm_rf(dir);
    free(dir);
    return rc;
}

int srv_uploads_open(reg_ctx *r)
{
    sqlite3_stmt *st = NULL;
    int n = -1;
    if (sqlite3_prepare_v2(r->db, "SELECT COUNT(*) FROM uploads", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n;
}

void srv_uploads_sweep(reg_ctx *r)
{
    const char *home = reg_home(r);
    sqlite3_stmt *st = NULL;
    json_t *old = json_array(), *live = json_object();
    if (sqlite3_prepare_v2(r->db,
                           "SELECT id, created_at < strftime('%Y-%m-%dT%H:%M:%SZ', 'now', "
                           "'-1 day') FROM uploads",
                           -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *id = (const char *)sqlite3_column_text(st, 0);
            if (sqlite3_column_int(st, 1))
                json_array_append_new(old, json_string(id));
            else
                json_object_set_new(live, id, json_true());
        }
    }
    sqlite3_finalize(st);
    size_t i;
    json_t *id;
    json_array_foreach(old, i, id)
    {
        core_log(CORE_LOG_INFO, "removing upload %s: left for more than 24 hours",
                 json_string_value(id));
        session_remove(r, home, json_string_value(id));
    }
    /* folders of sessions that never got their row (a crash while opening one) */
    char *dir = core_path_join(home, "uploads");
    DIR *d = dir ? opendir(dir) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || json_object_get(live, e->d_name)) continue;
        char *p = core_path_join(dir, e->d_name);
        if (p) core_rm_rf(p);
        free(p);
    }
    if (d) closedir(d);
    free(dir);
    json_decref(old);
    json_decref(live);
}

/* ------------------------------------------------------------------- open --- */

typedef enum up_kind { UP_MODEL, UP_DATASET, UP_BUNDLE } up_kind;

static bool has_suffix(const char *s, const char *suffix)
{
    size_t l = strlen(s), k = strlen(suffix);
    return l > k && !strcmp(s + l - k, suffix);
}

/* Checks the declared files and the kind's shape; *total = their bytes. */
static int check_files(const json_t *files, up_kind kind, uint64_t max, uint64_t *total)
{
    bool dataset = kind != UP_MODEL; /* one file, any name (a bundle's is checked below) */
    size_t n = json_array_size(files);
    if (!json_is_array(files) || n == 0)
        return core_err_set(MLV_EINVAL, "'files' must be a non-empty array");
    if (n > MAX_UPLOAD_FILES)
        return core_err_set(MLV_EINVAL, "more than %d files", MAX_UPLOAD_FILES);
    if (dataset && n != 1)
        return core_err_set(MLV_EINVAL,
                            kind == UP_BUNDLE ? "a bundle is one file" : "a dataset is one file");
    *total = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *f = json_array_get(files, i);
        const char *path = NULL, *sha = NULL;
        int64_t size = -1;
        int rc;
        if (!json_is_object(f)) return core_err_set(MLV_EINVAL, "files[%zu] must be an object", i);
        if ((rc = srv_str_field(f, "path", true, 255, &path)) != 0 ||
            (rc = srv_str_field(f, "sha256", true, 64, &sha)) != 0 ||
            (rc = srv_int_field(f, "size", true, 0, INT64_MAX, &size)) != 0)
            return core_err_wrap("files[%zu]: ", i);
        if (!core_relpath_safe(path) || strchr(path, '/') || path[0] == '.' ||
            !strcmp(path, REG_MANIFEST_FILE) || !strcmp(path, REG_SIGNATURE_FILE))
            return core_err_set(MLV_EINVAL, "files[%zu]: path '%s' is not allowed", i, path);
        if (!core_is_hex(sha, 64))
            return core_err_set(MLV_EINVAL, "files[%zu]: sha256 must be 64 lowercase hex", i);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(path, json_string_value(json_object_get(json_array_get(files, j), "path"))))
                return core_err_set(MLV_EINVAL, "files: '%s' twice", path);
        if ((uint64_t)size > max || *total > max - (uint64_t)size)
            return core_err_set(MLV_ELIMIT, "upload over the %" PRIu64 "-byte limit", max);
        *total += (uint64_t)size;
    }
    const char *p0 = json_string_value(json_object_get(json_array_get(files, 0), "path"));
    if (kind == UP_MODEL && n == 1 && !has_suffix(p0, ".gguf"))
        return core_err_set(MLV_EINVAL,
                            "a model is one .gguf file or a Hugging Face folder's files");
    if (kind == UP_BUNDLE && !has_suffix(p0, ".tar.zst"))
        return core_err_set(MLV_EINVAL, "a bundle is one FILE.tar.zst");
    return 0;
}

int api_upload_open(srv_req *q)
{
    json_t *b, *meta = NULL;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    struct reg_server *s = q->s;
    const char *name = NULL, *kind = NULL, *note = "";
    json_t *files = json_object_get(b, "files"), *parents = json_object_get(b, "parents");
    uint64_t total;
    char *dir = NULL, *fdir = NULL;
    bool locked = false;
    if ((rc = srv_str_field(b, "kind", true, 16, &kind)) != 0) goto done;
    up_kind k = !strcmp(kind, "dataset")  ? UP_DATASET
                : !strcmp(kind, "bundle") ? UP_BUNDLE
                : !strcmp(kind, "model")  ? UP_MODEL
                                          : (up_kind)-1;
    if ((int)k < 0) {
        rc = core_err_set(MLV_EINVAL, "kind must be \"model\", \"dataset\" or \"bundle\"");
        goto done;
    }
    /* a bundle names its versions itself: no name, parents or note of its own */
    if (k == UP_BUNDLE) name = "bundle";
    if ((rc = srv_str_field(b, "name", k != UP_BUNDLE, 64, &name)) != 0 ||
        (rc = srv_str_field(b, "note", false, 4096, &note)) != 0)
        goto done;
    if (!core_name_valid(name)) {
        rc = core_err_set(MLV_EINVAL, "invalid name '%s': use [a-z0-9][a-z0-9._-]{0,63}", name);
        goto done;
    }
    if (k == UP_BUNDLE && (*note || json_array_size(parents) > 0)) {
        rc = core_err_set(MLV_EINVAL, "a bundle upload takes no parents or note");
        goto done;
    }
    if ((rc = check_files(files, k, s->max_upload, &total)) != 0) goto done;
    if (parents && !json_is_null(parents)) {
        if (!json_is_array(parents) || json_array_size(parents) > MAX_PARENTS) {
            rc = core_err_set(MLV_EINVAL, "'parents' must be an array of at most %d refs",
                              MAX_PARENTS);
            goto done;
        }
        size_t i;
        json_t *p;
        reg_ref ref;
        json_array_foreach(parents, i, p)
        {
            if (!json_is_string(p) || (rc = reg_ref_parse(json_string_value(p), &ref)) != 0) {
                rc = rc ? rc : core_err_set(MLV_EINVAL, "parents[%zu] must be a reference", i);
                goto done;
            }
        }
    } else {
        parents = NULL;
    }
    /* only what was checked is kept */
    meta = json_pack("{s:s,s:s,s:O,s:o,s:s}", "name", name, "kind", kind, "files", files, "parents",
                     parents ? json_incref(parents) : json_array(), "note", note);
    char *meta_text = meta ? core_json_dumps(meta, JSON_COMPACT) : NULL;
    if (!meta_text) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    unsigned char raw[16];
    char id[33], now[21];
    core_random(raw, sizeof raw);
    core_hex(id, raw, sizeof raw);
    core_time_iso(now);
    pthread_mutex_lock(&s->up_mu);
    locked = true;
    int open = srv_uploads_open(q->r);
    if (open >= s->max_uploads) {
        srv_uploads_sweep(q->r);
        open = srv_uploads_open(q->r);
    }
    if (open < 0) {
        rc = reg_db_err(q->r, "uploads");
    } else if (open >= s->max_uploads) {
        q->too_many = true;
        rc = core_err_set(MLV_ELIMIT, "%d upload sessions are open, the most at once; retry later",
                          open);
    } else if (!(dir = upload_dir(s->home, id)) || asprintf(&fdir, "%s/files", dir) < 0) {
        fdir = NULL;
        rc = core_err_set(MLV_ENOMEM, "out of memory");
    } else if ((rc = core_mkdir_p(fdir, 0700)) == 0) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(q->r->db,
                               "INSERT INTO uploads(id, user, meta, created_at) VALUES(?,?,?,?)",
                               -1, &st, NULL) != SQLITE_OK) {
            rc = reg_db_err(q->r, "uploads");
        } else {
            sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, q->user.name, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, meta_text, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE) rc = reg_db_err(q->r, "uploads");
        }
        sqlite3_finalize(st);
        if (rc) core_rm_rf(dir);
    }
    pthread_mutex_unlock(&s->up_mu);
    locked = false;
    free(meta_text);
    if (rc) goto done;
    session ss = {.meta = meta, .dir = dir};
    snprintf(ss.id, sizeof ss.id, "%s", id);
    rc = srv_reply_json(q, 201, session_json(&ss, NULL));
done:
    if (locked) pthread_mutex_unlock(&s->up_mu);
    free(dir);
    free(fdir);
    json_decref(meta);
    json_decref(b);
    return rc;
}

int api_upload_list(srv_req *q)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(q->r->db,
                           "SELECT id, meta, created_at FROM uploads WHERE user = ? "
                           "ORDER BY created_at, id",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(q->r, "uploads");
    sqlite3_bind_text(st, 1, q->user.name, -1, SQLITE_STATIC);
    json_t *list = json_array();
    int rc = list ? 0 : core_err_set(MLV_ENOMEM, "out of memory"), step = SQLITE_DONE;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        session ss = {0};
        snprintf(ss.id, sizeof ss.id, "%s", (const char *)sqlite3_column_text(st, 0));
        ss.meta = json_loads((const char *)sqlite3_column_text(st, 1), 0, NULL);
        ss.dir = upload_dir(q->s->home, ss.id);
        json_t *j =
            ss.meta && ss.dir ? session_json(&ss, (const char *)sqlite3_column_text(st, 2)) : NULL;
        if (!j || json_array_append_new(list, j) != 0)
            rc = core_err_set(MLV_EDB, "upload %s: bad session", ss.id);
        session_clear(&ss);
    }
    if (rc == 0 && step != SQLITE_DONE) rc = reg_db_err(q->r, "uploads");
    sqlite3_finalize(st);
    if (rc) {
        json_decref(list);
        return rc;
    }
    return srv_reply_json(q, 200, list);
}

int api_upload_get(srv_req *q)
{
    session ss;
    int rc = session_load(q, &ss);
    if (rc) return rc;
    rc = srv_reply_json(q, 200, session_json(&ss, NULL));
    session_clear(&ss);
    return rc;
}

int api_upload_delete(srv_req *q)
{
    session ss;
    int rc = session_load(q, &ss);
    if (rc) return rc;
    if ((rc = session_lock(q->s, ss.id)) == 0) {
        rc = session_remove(q->r, q->s->home, ss.id);
        session_unlock(q->s, ss.id);
    }
    if (rc == 0) rc = srv_reply_json(q, 200, json_pack("{s:s,s:b}", "id", ss.id, "deleted", 1));
    session_clear(&ss);
    return rc;
}

/* ------------------------------------------------------------------- parts --- */

static json_t *declared(const session *ss, const char *path)
{
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(ss->meta, "files"), i, f)
    {
        if (!strcmp(json_string_value(json_object_get(f, "path")), path)) return f;
    }
    return NULL;
}

int api_upload_put(srv_req *q)
{
    session ss;
    int rc = session_load(q, &ss);
    if (rc) return rc;
    const char *path = q->params[1];
    char *fp = NULL;
    unsigned char *buf = NULL;
    int fd = -1;
    bool locked = false;
    json_t *f = declared(&ss, path);
    if (!f) {
        rc = core_err_set(MLV_ENOTFOUND, "upload %s declares no file '%s'", ss.id, path);
        goto done;
    }
    uint64_t size = (uint64_t)json_integer_value(json_object_get(f, "size"));
    const char *cr = mg_get_header(q->c, "Content-Range");
    unsigned long long a, b, total;
    int used = 0;
    if (!cr || sscanf(cr, "bytes %llu-%llu/%llu%n", &a, &b, &total, &used) != 3 || cr[used] != 0 ||
        b < a) {
        rc = core_err_set(MLV_EINVAL, "a part needs Content-Range: bytes START-END/TOTAL");
        goto done;
    }
    if (total != size || b >= size) {
        rc = core_err_set(MLV_EINVAL, "%s is declared as %" PRIu64 " bytes, not %llu", path, size,
                          total);
        goto done;
    }
    long long clen = q->ri->content_length;
    if (clen < 0 || (unsigned long long)clen != b - a + 1) {
        rc = core_err_set(MLV_EINVAL, "Content-Length must be the part's %llu bytes", b - a + 1);
        goto done;
    }
    if ((rc = session_lock(q->s, ss.id)) != 0) goto done;
    locked = true;
    uint64_t have = received(&ss, path);
    if (a != have) {
        q->err_extra = json_pack("{s:I}", "received", (json_int_t)have);
        rc = core_err_set(MLV_EEXISTS,
                          "%s: the part starts at %llu but %" PRIu64
                          " bytes are here; send from there",
                          path, a, have);
        goto done;
    }
    if (!(fp = file_path(&ss, path)) || !(buf = malloc(IO_BUF))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((fd = open(fp, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
        rc = core_err_set(MLV_EIO, "upload %s: %s: %s", ss.id, path, strerror(errno));
        goto done;
    }
    /* never whole in memory: each buffer goes to disk as it arrives */
    uint64_t left = b - a + 1, at = a;
    while (left > 0) {
        int n = mg_read(q->c, buf, left < IO_BUF ? (size_t)left : IO_BUF);
        if (n <= 0) {
            rc = core_err_set(MLV_EIO, "upload %s: %s: the connection broke at byte %" PRIu64,
                              ss.id, path, at);
            goto done;
        }
        ssize_t w = pwrite(fd, buf, (size_t)n, (off_t)at);
        if (w != n) {
            rc = core_err_set(MLV_EIO, "upload %s: %s: %s", ss.id, path,
                              w < 0 ? strerror(errno) : "short write");
            if (w > 0 && ftruncate(fd, (off_t)at) != 0) { /* keep only whole buffers */
            }
            goto done;
        }
        at += (uint64_t)n;
        left -= (uint64_t)n;
    }
    /* the session is free again before the client hears back: its next part must not
     * find it busy */
    close(fd);
    fd = -1;
    session_unlock(q->s, ss.id);
    locked = false;
    rc = srv_reply_json(q, 200, json_pack("{s:s,s:I}", "path", path, "received", (json_int_t)at));
done:
    if (fd >= 0) close(fd);
    if (locked) session_unlock(q->s, ss.id);
    free(buf);
    free(fp);
    session_clear(&ss);
    return rc;
}

/* ------------------------------------------------------------------ commit --- */

static int file_sha256(const char *path, char hex[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return core_err_set(MLV_EIO, "%s: %s", path, strerror(errno));
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = malloc(IO_BUF), digest[32];
    int rc = 0;
    if (!md || !buf || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    ssize_t n;
    while ((n = read(fd, buf, IO_BUF)) > 0)
        EVP_DigestUpdate(md, buf, (size_t)n);
    if (n < 0) {
        rc = core_err_set(MLV_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    EVP_DigestFinal_ex(md, digest, NULL);
    core_hex(hex, digest, sizeof digest);
done:
    EVP_MD_CTX_free(md);
    free(buf);
    close(fd);
    return rc;
}

/* A bundle's commit: reg_bundle_import on the one file (it checks the role, every
 * signature and blob before it changes anything), then the session goes either way —
 * a bundle that does not import will not import on a second try. */
static int commit_bundle(srv_req *q, session *ss)
{
    const char *name = json_string_value(
        json_object_get(json_array_get(json_object_get(ss->meta, "files"), 0), "path"));
    char *path = file_path(ss, name);
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    json_t *res = NULL;
    int rc = reg_bundle_import(q->r, &q->user, path, &res);
    free(path);
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", core_err_last());
    if (session_remove(q->r, q->s->home, ss->id) != 0)
        core_log(CORE_LOG_WARN, "upload %s: bundle committed, session not removed: %s", ss->id,
                 core_err_last());
    if (rc) return core_err_set(rc, "%s", saved);
    /* the server's path is no business of the client's: it names its own file */
    json_object_set_new(res, "file", json_string(name));
    return srv_reply_json(q, 200, res);
}

int api_upload_commit(srv_req *q)
{
    session ss;
    int rc = session_load(q, &ss);
    if (rc) return rc;
    const char **parents = NULL;
    char *push_path = NULL;
    bool locked = false;
    if ((rc = session_lock(q->s, ss.id)) != 0) goto done;
    locked = true;
    json_t *files = json_object_get(ss.meta, "files"), *f;
    size_t i;
    json_array_foreach(files, i, f)
    {
        const char *path = json_string_value(json_object_get(f, "path"));
        const char *want = json_string_value(json_object_get(f, "sha256"));
        uint64_t size = (uint64_t)json_integer_value(json_object_get(f, "size"));
        uint64_t have = received(&ss, path);
        if (have != size) {
            q->err_extra = json_pack("{s:s,s:I}", "path", path, "received", (json_int_t)have);
            rc = core_err_set(MLV_EINVAL, "%s: %" PRIu64 " of %" PRIu64 " bytes received", path,
                              have, size);
            goto done;
        }
        char *fp = file_path(&ss, path), got[65];
        if (!fp) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
        if (size == 0) { /* an empty file may never have been PUT */
            int fd = open(fp, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
            if (fd >= 0) close(fd);
        }
        rc = file_sha256(fp, got);
        free(fp);
        if (rc) goto done;
        if (strcmp(got, want) != 0) {
            rc = core_err_set(MLV_EINTEGRITY, "%s: SHA-256 %s, but %s was declared", path, got,
                              want);
            goto done;
        }
    }
    if (!strcmp(json_string_value(json_object_get(ss.meta, "kind")), "bundle")) {
        rc = commit_bundle(q, &ss);
        goto done;
    }
    json_t *pa = json_object_get(ss.meta, "parents");
    size_t np = json_array_size(pa);
    if (np && !(parents = calloc(np, sizeof *parents))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (i = 0; i < np; i++)
        parents[i] = json_string_value(json_array_get(pa, i));
    bool dataset = !strcmp(json_string_value(json_object_get(ss.meta, "kind")), "dataset");
    /* one file is pushed as that file; several as the folder (a Hugging Face model) */
    if (json_array_size(files) == 1)
        push_path =
            file_path(&ss, json_string_value(json_object_get(json_array_get(files, 0), "path")));
    else if (asprintf(&push_path, "%s/files", ss.dir) < 0)
        push_path = NULL;
    if (!push_path) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    const char *note = json_string_value(json_object_get(ss.meta, "note"));
    reg_push_opts o = {.name = json_string_value(json_object_get(ss.meta, "name")),
                       .path = push_path,
                       .dataset = dataset,
                       .parents = parents,
                       .n_parents = np,
                       .note = note && *note ? note : NULL};
    reg_pushed p;
    if ((rc = reg_push(q->r, &q->user, &o, &p)) != 0) goto done;
    if (session_remove(q->r, q->s->home, ss.id) != 0)
        core_log(CORE_LOG_WARN, "upload %s pushed, but not removed: %s", ss.id, core_err_last());
    char ref[96];
    snprintf(ref, sizeof ref, "%s:%d", p.name, p.version);
    session_unlock(q->s, ss.id); /* before the reply, as for a part */
    locked = false;
    rc = srv_reply_json(q, 201,
                        json_pack("{s:s,s:s,s:i,s:s,s:I,s:i,s:i}", "ref", ref, "name", p.name,
                                  "version", p.version, "digest", p.digest, "size",
                                  (json_int_t)p.size, "files", (int)p.n_files, "new_blobs",
                                  (int)p.n_new_blobs));
done:
    if (locked) session_unlock(q->s, ss.id);
    free(parents);
    free(push_path);
    session_clear(&ss);
    return rc;
}
