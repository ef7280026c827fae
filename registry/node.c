/* registry/node.c: a serving node (DESIGN.md, Serving nodes; `mlvault node run`).
 *
 * The node follows one channel's signed release record. Each poll:
 *   record   GET /models/M/channels/C; the signature over the exact record bytes must
 *            verify with the pinned registry key; model and channel must be ours; a
 *            sequence below the highest accepted one is a rollback and an expired record
 *            a freeze: both refused. A higher sequence naming the version already served
 *            is a renewal (accepted, nothing reloaded).
 *   fetch    into cache/DIGEST/: the manifest and its signature, the data keys wrapped
 *            for this node's X25519 key (GET .../keys), and each file's encrypted blob as
 *            the registry stores it (GET .../blobs/PATH, resumed with Range requests).
 *   verify   the manifest's SHA-256 is the record's digest, its signature verifies with
 *            the pinned key and covers exactly its files; the keys unwrap; each blob
 *            decrypts (every chunk's tag) into memory to the manifest's size and SHA-256.
 *   switch   the engine's server swaps the model in (requests in flight finish on the
 *            old one); then state.json records the new sequence (durably), and the cache
 *            keeps the new and the previous version, nothing else.
 * On any failure the node keeps serving what it has, logs why and reports it. The cache
 * holds only ciphertext (blobs as the registry encrypted them) and keys wrapped for the
 * node's key, so a restart without the registry serves the last accepted version.
 *
 * Node home: node.key (X25519, 0600), node.pub, state.json, cache/DIGEST/{release.json,
 * manifest.json, model.sig, keys.json, blobs/SHA256}. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "registry/reg_internal.h"

#define RECORD_MAX ((size_t)1 << 20)
#define MANIFEST_MAX ((size_t)64 << 20)
#define STALL_S 30L           /* a registry that stalls this long counts as unreachable */
#define REPORT_ERROR_MAX 1000 /* bytes of last_error a report may carry */

/* What the node knows of one accepted release. */
typedef struct node_rel {
    int64_t sequence;
    int version; /* 0: none */
    char digest[65];
    char expires_at[21];
} node_rel;

typedef struct node {
    const reg_node_opts *o;
    char *home, *cache, *state_path;
    repo_node_key *key;
    reg_client *client;
    eng_server *srv;
    char name[65]; /* the node's user name (whoami), "" until the registry answered */
    /* guarded by mu: what /health, /metrics and reports show */
    pthread_mutex_t mu;
    int64_t accepted; /* highest sequence accepted (persisted) */
    node_rel cur, prev;
    char last_error[1024];
    double last_ok;    /* time of the last poll that reached the registry */
    uint64_t polls;    /* polls done (tests count switches in polls, not seconds) */
    int64_t tried_seq; /* the last release a fetch was started for (logged once) */
} node;

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* ------------------------------------------------------------------- state ---- */

static void set_error(node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(node *n, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&n->mu);
    bool same = !strcmp(n->last_error, msg);
    snprintf(n->last_error, sizeof n->last_error, "%s", msg);
    pthread_mutex_unlock(&n->mu);
    if (!same) core_log(CORE_LOG_ERROR, "node: %s", msg);
}

static void clear_error(node *n)
{
    pthread_mutex_lock(&n->mu);
    n->last_error[0] = 0;
    pthread_mutex_unlock(&n->mu);
}

static json_t *rel_json(const node_rel *r)
{
    if (!r->version) return json_null();
    return json_pack("{s:I,s:i,s:s,s:s}", "sequence", (json_int_t)r->sequence, "version",
                     r->version, "digest", r->digest, "expires_at", r->expires_at);
}

static int rel_from_json(const json_t *j, node_rel *r)
{
    memset(r, 0, sizeof *r);
    if (!j || json_is_null(j)) return 0;
    const char *d = json_string_value(json_object_get(j, "digest"));
    const char *e = json_string_value(json_object_get(j, "expires_at"));
    json_int_t seq = json_integer_value(json_object_get(j, "sequence"));
    json_int_t v = json_integer_value(json_object_get(j, "version"));
    if (!d || !core_is_hex(d, 64) || !e || strlen(e) != 20 || seq < 1 || v < 1 || v > INT32_MAX)
        return core_err_set(MLV_EINVAL, "node state: a bad release entry");
    r->sequence = seq;
    r->version = (int)v;
    snprintf(r->digest, sizeof r->digest, "%s", d);
    snprintf(r->expires_at, sizeof r->expires_at, "%s", e);
    return 0;
}

/* state.json: what survives a restart — above all the highest accepted sequence, so a
 * rollback stays refused. Written atomically and durably before anything relies on it. */
static int state_save(node *n)
{
    pthread_mutex_lock(&n->mu);
    json_t *j = json_pack("{s:s,s:s,s:s,s:I,s:o,s:o}", "schema", "mlvault.node-state/v1", "model",
                          n->o->model, "channel", n->o->channel, "accepted_sequence",
                          (json_int_t)n->accepted, "current", rel_json(&n->cur), "previous",
                          rel_json(&n->prev));
    pthread_mutex_unlock(&n->mu);
    char *text = j ? core_json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!text) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc = core_write_atomic(n->state_path, n->home, text, strlen(text), 0600);
    free(text);
    return rc;
}

static int state_load(node *n)
{
    char *text = NULL;
    size_t len = 0;
    int rc = core_read_file(n->state_path, RECORD_MAX, &text, &len);
    if (rc == MLV_ENOTFOUND) {
        core_err_clear();
        return 0;
    }
    if (rc) return rc;
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    free(text);
    if (!j) return core_err_set(MLV_EINVAL, "%s: %s", n->state_path, je.text);
    const char *model = json_string_value(json_object_get(j, "model"));
    const char *channel = json_string_value(json_object_get(j, "channel"));
    if (!model || !channel || strcmp(model, n->o->model) || strcmp(channel, n->o->channel)) {
        rc = core_err_set(
            MLV_EINVAL, "%s follows %s@%s, not %s@%s: give each channel its own node home", n->home,
            model ? model : "?", channel ? channel : "?", n->o->model, n->o->channel);
    } else {
        n->accepted = json_integer_value(json_object_get(j, "accepted_sequence"));
        if ((rc = rel_from_json(json_object_get(j, "current"), &n->cur)) == 0)
            rc = rel_from_json(json_object_get(j, "previous"), &n->prev);
        if (rc) core_err_wrap("%s: ", n->state_path);
    }
    json_decref(j);
    return rc;
}

/* ---------------------------------------------------------- release records ---- */

/* Checks a release document {record_json, signature}: the signature over the exact bytes
 * with the pinned key, then the record's fields. */
static int record_check(node *n, const char *record_json, const char *signature, node_rel *out)
{
    memset(out, 0, sizeof *out);
    if (!record_json || !signature)
        return core_err_set(MLV_EINVAL, "release record: record_json or signature missing");
    int rc = repo_verify_bytes(n->o->trust_pem, record_json, strlen(record_json), signature);
    if (rc == MLV_EINTEGRITY)
        return core_err_set(MLV_EINTEGRITY,
                            "release record of %s@%s: the signature does not verify with the "
                            "pinned registry key (signed by another key, or altered)",
                            n->o->model, n->o->channel);
    if (rc) return rc;
    json_error_t je;
    json_t *rec = json_loads(record_json, 0, &je);
    if (!rec) return core_err_set(MLV_EINVAL, "release record: %s", je.text);
    const char *schema = json_string_value(json_object_get(rec, "schema"));
    const char *model = json_string_value(json_object_get(rec, "model"));
    const char *channel = json_string_value(json_object_get(rec, "channel"));
    const char *digest = json_string_value(json_object_get(rec, "digest"));
    const char *expires = json_string_value(json_object_get(rec, "expires_at"));
    json_t *seq = json_object_get(rec, "sequence"), *ver = json_object_get(rec, "version");
    if (!schema || strcmp(schema, "mlvault.release/v1") != 0)
        rc = core_err_set(MLV_EUNSUPPORTED, "release record: schema %s", schema ? schema : "?");
    else if (!model || !channel || strcmp(model, n->o->model) || strcmp(channel, n->o->channel))
        rc = core_err_set(MLV_EINTEGRITY, "release record names %s@%s, not %s@%s",
                          model ? model : "?", channel ? channel : "?", n->o->model, n->o->channel);
    else if (!digest || !core_is_hex(digest, 64) || !expires || strlen(expires) != 20 ||
             !json_is_integer(seq) || json_integer_value(seq) < 1 || !json_is_integer(ver) ||
             json_integer_value(ver) < 1 || json_integer_value(ver) > INT32_MAX)
        rc = core_err_set(MLV_EINVAL, "release record: a field is missing or malformed");
    if (!rc) {
        out->sequence = json_integer_value(seq);
        out->version = (int)json_integer_value(ver);
        snprintf(out->digest, sizeof out->digest, "%s", digest);
        snprintf(out->expires_at, sizeof out->expires_at, "%s", expires);
    }
    json_decref(rec);
    return rc;
}

static bool rel_expired(const node_rel *r)
{
    char now[21];
    core_time_iso(now);
    return strcmp(r->expires_at, now) <= 0; /* same RFC 3339 UTC form: text order is time */
}

/* ------------------------------------------------------------------- cache ---- */

static char *cache_dir(node *n, const char *digest)
{
    return core_path_join(n->cache, digest);
}

static char *cache_file(node *n, const char *digest, const char *name)
{
    char *d = cache_dir(n, digest);
    char *p = d ? core_path_join(d, name) : NULL;
    free(d);
    return p;
}

static int cache_write(node *n, const char *digest, const char *name, const char *text)
{
    char *p = cache_file(n, digest, name);
    if (!p) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc = core_write_atomic(p, n->home, text, strlen(text), 0600);
    free(p);
    return rc;
}

static int cache_read(node *n, const char *digest, const char *name, size_t max, char **out,
                      size_t *len)
{
    char *p = cache_file(n, digest, name);
    if (!p) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc = core_read_file(p, max, out, len);
    free(p);
    return rc;
}

/* Removes every cached version but the current and previous one. */
static void cache_prune(node *n)
{
    DIR *d = opendir(n->cache);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (!strcmp(e->d_name, n->cur.digest) || !strcmp(e->d_name, n->prev.digest)) continue;
        char *p = core_path_join(n->cache, e->d_name);
        if (p && core_rm_rf(p) == 0) core_log(CORE_LOG_INFO, "node: cache: removed %s", e->d_name);
        free(p);
    }
    closedir(d);
}

/* ----------------------------------------------------- verify, decrypt, load ---- */

typedef struct wrapped_set {
    unsigned char eph[REPO_X25519_LEN];
    unsigned char (*wrapped)[REPO_WRAPPED_DEK_LEN]; /* one per manifest file, in its order */
} wrapped_set;

/* keys.json ({eph_pub, files:[{path, blob, size, wrapped}]}) against the manifest: each
 * file's entry must name its blob and size. */
static int keys_parse(const char *text, size_t len, const repo_manifest *m, wrapped_set *w)
{
    w->wrapped = calloc(m->n_files ? m->n_files : 1, sizeof *w->wrapped);
    if (!w->wrapped) return core_err_set(MLV_ENOMEM, "out of memory");
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    if (!j) return core_err_set(MLV_EINVAL, "wrapped keys: %s", je.text);
    int rc = 0;
    const char *eph = json_string_value(json_object_get(j, "eph_pub"));
    json_t *files = json_object_get(j, "files");
    if (!eph || core_unhex(w->eph, sizeof w->eph, eph) != 0 || !json_is_array(files)) {
        rc = core_err_set(MLV_EINVAL, "wrapped keys: eph_pub or files missing or malformed");
        goto done;
    }
    for (size_t i = 0; i < m->n_files && !rc; i++) {
        const repo_file *f = &m->files[i];
        json_t *hit = NULL, *e;
        size_t k;
        json_array_foreach(files, k, e)
        {
            const char *p = json_string_value(json_object_get(e, "path"));
            if (p && !strcmp(p, f->path)) hit = e;
        }
        const char *blob = hit ? json_string_value(json_object_get(hit, "blob")) : NULL;
        const char *wr = hit ? json_string_value(json_object_get(hit, "wrapped")) : NULL;
        json_int_t size = hit ? json_integer_value(json_object_get(hit, "size")) : -1;
        if (!hit)
            rc = core_err_set(MLV_EINTEGRITY, "wrapped keys: no key for %s", f->path);
        else if (!blob || strcmp(blob, f->sha256) != 0 || size < 0 || (uint64_t)size != f->size)
            rc = core_err_set(MLV_EINTEGRITY,
                              "wrapped keys: %s names another blob or size than the manifest",
                              f->path);
        else if (!wr || core_unhex(w->wrapped[i], REPO_WRAPPED_DEK_LEN, wr) != 0)
            rc = core_err_set(MLV_EINVAL, "wrapped keys: %s: malformed key", f->path);
    }
done:
    json_decref(j);
    return rc;
}

/* The manifest text and signature of a cached version, checked against the record's
 * digest and the pinned key. *m owned by the caller. */
static int manifest_check(node *n, const node_rel *rel, repo_manifest **m)
{
    *m = NULL;
    char *mtext = NULL, *sig = NULL;
    size_t mlen = 0, slen = 0;
    repo_sig_resource *res = NULL;
    int rc = cache_read(n, rel->digest, REG_MANIFEST_FILE, MANIFEST_MAX, &mtext, &mlen);
    if (!rc) rc = cache_read(n, rel->digest, REG_SIGNATURE_FILE, MANIFEST_MAX, &sig, &slen);
    if (rc) goto done;
    char got[65];
    repo_sha256_hex(got, mtext, mlen);
    if (strcmp(got, rel->digest) != 0) {
        rc = core_err_set(MLV_EINTEGRITY,
                          "manifest of %s:%d: SHA-256 %.12s…, the release record names %.12s…",
                          n->o->model, rel->version, got, rel->digest);
        goto done;
    }
    if ((rc = repo_manifest_parse(m, mtext, mlen)) != 0) goto done;
    if (strcmp((*m)->name, n->o->model) != 0 || (*m)->version != rel->version ||
        strcmp((*m)->kind, "model") != 0) {
        rc = core_err_set(MLV_EINTEGRITY, "the manifest names %s %s:%d, the record %s:%d",
                          (*m)->kind, (*m)->name, (*m)->version, n->o->model, rel->version);
        goto done;
    }
    if (!(res = reg_version_resources(*m, rel->digest))) {
        rc = core_err_code();
        goto done;
    }
    if ((rc = repo_sig_verify(sig, slen, n->o->trust_pem, res, (*m)->n_files + 1)) != 0)
        core_err_wrap("signature of %s:%d (pinned key): ", n->o->model, rel->version);
done:
    free(res);
    free(mtext);
    free(sig);
    if (rc) {
        repo_manifest_free(*m);
        *m = NULL;
    }
    return rc;
}

/* Decrypts one cached blob into out->data. A blob that fails is removed from the cache,
 * so the next poll downloads it again. */
static int blob_open(node *n, const node_rel *rel, const repo_file *f,
                     const unsigned char dek[REPO_KEY_LEN], reg_file_mem *out)
{
    char name[80];
    snprintf(name, sizeof name, "blobs/%s", f->sha256);
    char *path = cache_file(n, rel->digest, name);
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    char *cipher = NULL;
    size_t clen = 0;
    uint64_t want = repo_aead_ciphertext_size(f->size);
    int rc = core_read_file(path, (size_t)want + 1, &cipher, &clen);
    if (!rc) {
        char label[600];
        snprintf(label, sizeof label, "%s:%d %s", n->o->model, rel->version, f->path);
        rc = repo_blob_decrypt_buf(dek, cipher, clen, f->sha256, f->size, out->data, label);
        if (rc == MLV_EINTEGRITY || rc == MLV_EINVAL) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", core_err_last());
            unlink(path);
            rc = core_err_set(MLV_EINTEGRITY, "%s (the cached copy was removed)", msg);
        }
    }
    free(cipher);
    free(path);
    return rc;
}

/* Verifies a cached version completely (record, manifest, signature, keys, every blob)
 * and opens its model from memory. */
static int version_open(node *n, const node_rel *rel, eng_model **model)
{
    *model = NULL;
    repo_manifest *m = NULL;
    wrapped_set w = {0};
    unsigned char(*deks)[REPO_KEY_LEN] = NULL;
    reg_loaded l = {0};
    char *ktext = NULL;
    size_t klen = 0;
    bool bad_keys = false;
    int rc = manifest_check(n, rel, &m);
    if (rc) goto done;
    if ((rc = cache_read(n, rel->digest, "keys.json", RECORD_MAX * 16, &ktext, &klen)) != 0)
        goto done;
    if ((rc = keys_parse(ktext, klen, m, &w)) != 0) {
        bad_keys = true;
        goto done;
    }
    if (!(deks = calloc(m->n_files ? m->n_files : 1, sizeof *deks))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = repo_node_key_unwrap(n->key, w.eph,
                                   (const unsigned char(*)[REPO_WRAPPED_DEK_LEN])w.wrapped,
                                   m->n_files, deks)) != 0) {
        core_err_wrap("data keys of %s:%d: ", n->o->model, rel->version);
        bad_keys = true;
        goto done;
    }
    char ref[160];
    snprintf(ref, sizeof ref, "%s:%d", n->o->model, rel->version);
    if ((rc = reg_loaded_alloc(&l, m, ref)) != 0) goto done;
    snprintf(l.name, sizeof l.name, "%s", m->name);
    snprintf(l.kind, sizeof l.kind, "%s", m->kind);
    snprintf(l.format, sizeof l.format, "%s", m->format);
    snprintf(l.digest, sizeof l.digest, "%s", rel->digest);
    l.version = m->version;
    for (size_t i = 0; i < m->n_files && !rc; i++)
        rc = blob_open(n, rel, &m->files[i], deks[i], &l.files[i]);
    if (!rc) rc = reg_loaded_open_model(&l, &n->o->load, model);
done:
    if (bad_keys) { /* keys that do not fit or unwrap are dropped: the next fetch asks again */
        char *kp = cache_file(n, rel->digest, "keys.json");
        if (kp) unlink(kp);
        free(kp);
    }
    if (deks) OPENSSL_cleanse(deks, sizeof *deks * (m ? m->n_files : 0));
    free(deks);
    free(w.wrapped);
    free(ktext);
    reg_loaded_clear(&l);
    repo_manifest_free(m);
    return rc;
}

/* ------------------------------------------------------------------ registry ---- */

static int api_path(node *n, char *out, size_t len, int version, const char *suffix)
{
    int k = version ? snprintf(out, len, "/api/v1/models/%s/versions/%d%s", n->o->model, version,
                               suffix)
                    : snprintf(out, len, "/api/v1/models/%s/channels/%s%s", n->o->model,
                               n->o->channel, suffix);
    return k < 0 || (size_t)k >= len ? core_err_set(MLV_EINVAL, "path too long") : 0;
}

/* Downloads what a version needs into cache/DIGEST/ (what is there already is kept; a
 * blob's partial download resumes). */
static int version_fetch(node *n, const node_rel *rel, const char *release_text)
{
    char *dir = cache_dir(n, rel->digest), *blobs = dir ? core_path_join(dir, "blobs") : NULL;
    char path[512];
    char *mtext = NULL, *sig = NULL;
    size_t mlen = 0, slen = 0;
    json_t *keys = NULL;
    repo_manifest *m = NULL;
    int rc = 0;
    if (!blobs) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = core_mkdir_p(blobs, 0700)) != 0) goto done;
    if ((rc = api_path(n, path, sizeof path, rel->version, "/manifest")) != 0 ||
        (rc = reg_client_get_text(n->client, path, MANIFEST_MAX, &mtext, &mlen)) != 0 ||
        (rc = api_path(n, path, sizeof path, rel->version, "/signature")) != 0 ||
        (rc = reg_client_get_text(n->client, path, MANIFEST_MAX, &sig, &slen)) != 0)
        goto done;
    /* The wrapped keys stay valid for this node: asked once per version (each answer is
     * an audit row and a ledger commit), again only after version_open dropped them. */
    char *kpath = cache_file(n, rel->digest, "keys.json");
    struct stat kst;
    bool have_keys = kpath && stat(kpath, &kst) == 0;
    free(kpath);
    if (!have_keys) {
        if ((rc = api_path(n, path, sizeof path, rel->version, "/keys")) != 0 ||
            (rc = reg_client_json(n->client, "GET", path, NULL, &keys)) != 0)
            goto done;
        char *ktext = core_json_dumps(keys, JSON_COMPACT);
        if (!ktext) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
        rc = cache_write(n, rel->digest, "keys.json", ktext);
        free(ktext);
    }
    if (rc || (rc = cache_write(n, rel->digest, REG_MANIFEST_FILE, mtext)) != 0 ||
        (rc = cache_write(n, rel->digest, REG_SIGNATURE_FILE, sig)) != 0 ||
        (rc = cache_write(n, rel->digest, "release.json", release_text)) != 0)
        goto done;
    if ((rc = repo_manifest_parse(&m, mtext, mlen)) != 0) goto done;
    for (size_t i = 0; i < m->n_files && !rc; i++) {
        const repo_file *f = &m->files[i];
        if (!core_relpath_safe(f->path) || !core_is_hex(f->sha256, 64)) {
            rc = core_err_set(MLV_EINTEGRITY, "manifest: unsafe file entry %s", f->path);
            break;
        }
        char *dest = core_path_join(blobs, f->sha256);
        if (!dest) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
        struct stat st;
        uint64_t want = repo_aead_ciphertext_size(f->size);
        if (stat(dest, &st) == 0 && (uint64_t)st.st_size == want) {
            free(dest);
            continue; /* cached (its tags are checked when it is opened) */
        }
        char sub[600];
        snprintf(sub, sizeof sub, "/blobs/%s", f->path);
        if ((rc = api_path(n, path, sizeof path, rel->version, sub)) == 0 &&
            (rc = reg_client_download(n->client, path, dest, NULL)) == 0 &&
            (stat(dest, &st) != 0 || (uint64_t)st.st_size != want)) {
            unlink(dest);
            rc = core_err_set(MLV_EINTEGRITY, "%s: the encrypted blob is not %llu bytes", f->path,
                              (unsigned long long)want);
        }
        free(dest);
    }
done:
    repo_manifest_free(m);
    json_decref(keys);
    free(mtext);
    free(sig);
    free(blobs);
    free(dir);
    return rc;
}

/* Reports the node's state (best effort: a registry that is down changes nothing). */
static void report(node *n)
{
    if (!n->name[0]) {
        json_t *me = NULL;
        if (reg_client_json(n->client, "GET", "/api/v1/whoami", NULL, &me) != 0) return;
        const char *nm = json_string_value(json_object_get(me, "name"));
        snprintf(n->name, sizeof n->name, "%s", nm ? nm : "");
        json_decref(me);
        if (!n->name[0]) return;
    }
    char serving[128] = "", err[REPORT_ERROR_MAX + 1];
    eng_server_current(n->srv, serving, sizeof serving);
    pthread_mutex_lock(&n->mu);
    /* the registry keeps at most REPORT_ERROR_MAX bytes: cut at a character boundary */
    size_t el = strlen(n->last_error);
    if (el > REPORT_ERROR_MAX) {
        el = REPORT_ERROR_MAX;
        while (el > 0 && ((unsigned char)n->last_error[el] & 0xC0) == 0x80)
            el--;
    }
    memcpy(err, n->last_error, el);
    err[el] = 0;
    json_t *st = json_pack("{s:s,s:i,s:s,s:I,s:b,s:s,s:f,s:s}", "channel", n->o->channel, "version",
                           n->cur.version, "digest", n->cur.digest, "sequence",
                           (json_int_t)n->accepted, "healthy", serving[0] != 0, "last_error", err,
                           "rps", eng_server_rps(n->srv), "serving", serving);
    pthread_mutex_unlock(&n->mu);
    char path[160];
    snprintf(path, sizeof path, "/api/v1/nodes/%s/state", n->name);
    if (st && reg_client_json(n->client, "PUT", path, st, NULL) != 0)
        core_log(CORE_LOG_INFO, "node: report: %s", core_err_last());
    json_decref(st);
}

/* Makes `rel` (verified, cached, its model open) the served version. */
static int switch_to(node *n, const node_rel *rel, eng_model *model)
{
    char id[128];
    snprintf(id, sizeof id, "%s:%d", n->o->model, rel->version);
    int rc = eng_server_swap(n->srv, model, id);
    if (rc) return rc;
    pthread_mutex_lock(&n->mu);
    if (strcmp(n->cur.digest, rel->digest) != 0) n->prev = n->cur;
    n->cur = *rel;
    if (rel->sequence > n->accepted) n->accepted = rel->sequence;
    pthread_mutex_unlock(&n->mu);
    core_log(CORE_LOG_WARN, "node: serving %s (release %lld)", id, (long long)rel->sequence);
    if ((rc = state_save(n)) != 0) return rc;
    cache_prune(n);
    return 0;
}

/* One poll of the channel: 0 when the registry answered and nothing was refused. */
static int poll_once(node *n)
{
    char path[512];
    json_t *doc = NULL;
    int rc = api_path(n, path, sizeof path, 0, "");
    if (!rc) rc = reg_client_json(n->client, "GET", path, NULL, &doc);
    if (rc) {
        set_error(n, "registry: %s", core_err_last());
        return rc;
    }
    pthread_mutex_lock(&n->mu);
    n->last_ok = core_now_s();
    pthread_mutex_unlock(&n->mu);
    const char *record_json = json_string_value(json_object_get(doc, "record_json"));
    const char *signature = json_string_value(json_object_get(doc, "signature"));
    node_rel rel;
    eng_model *model = NULL;
    char *release_text = NULL;
    if ((rc = record_check(n, record_json, signature, &rel)) != 0) {
        set_error(n, "refused: %s", core_err_last());
        goto done;
    }
    if (rel.sequence < n->accepted) {
        rc = core_err_set(MLV_EINTEGRITY,
                          "refused: release %lld of %s@%s is below release %lld "
                          "already accepted (a rollback)",
                          (long long)rel.sequence, n->o->model, n->o->channel,
                          (long long)n->accepted);
        set_error(n, "%s", core_err_last());
        goto done;
    }
    if (rel.sequence == n->accepted && !strcmp(rel.digest, n->cur.digest)) {
        clear_error(n); /* nothing new */
        goto done;
    }
    if (rel_expired(&rel)) {
        rc = core_err_set(MLV_EINTEGRITY,
                          "refused: release %lld of %s@%s expired at %s (a frozen or replayed "
                          "record)",
                          (long long)rel.sequence, n->o->model, n->o->channel, rel.expires_at);
        set_error(n, "%s", core_err_last());
        goto done;
    }
    json_t *keep = json_pack("{s:s,s:s}", "record_json", record_json, "signature", signature);
    release_text = keep ? core_json_dumps(keep, JSON_COMPACT) : NULL;
    json_decref(keep);
    if (!release_text) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if (!strcmp(rel.digest, n->cur.digest)) {
        /* a renewal: the same version under a newer record */
        if ((rc = cache_write(n, rel.digest, "release.json", release_text)) != 0) goto failed;
        pthread_mutex_lock(&n->mu);
        n->cur = rel;
        n->accepted = rel.sequence;
        pthread_mutex_unlock(&n->mu);
        if ((rc = state_save(n)) != 0) goto failed;
        core_log(CORE_LOG_WARN, "node: release %lld renews %s:%d", (long long)rel.sequence,
                 n->o->model, rel.version);
        clear_error(n);
        goto done;
    }
    if (rel.sequence != n->tried_seq)
        core_log(CORE_LOG_WARN, "node: release %lld names %s:%d; fetching", (long long)rel.sequence,
                 n->o->model, rel.version);
    n->tried_seq = rel.sequence;
    if ((rc = version_fetch(n, &rel, release_text)) != 0 ||
        (rc = version_open(n, &rel, &model)) != 0 || (rc = switch_to(n, &rel, model)) != 0)
        goto failed;
    clear_error(n);
    goto done;
failed:
    set_error(n, "release %lld (%s:%d) not served: %s", (long long)rel.sequence, n->o->model,
              rel.version, core_err_last());
done:
    free(release_text);
    json_decref(doc);
    return rc;
}

/* At start: the cached current version (else the previous one), fully verified again. */
static void serve_cached(node *n)
{
    node_rel want[2] = {n->cur, n->prev};
    for (int i = 0; i < 2; i++) {
        if (!want[i].version) continue;
        char *text = NULL;
        size_t len = 0;
        node_rel rel;
        eng_model *model = NULL;
        int rc = cache_read(n, want[i].digest, "release.json", RECORD_MAX, &text, &len);
        json_t *doc = rc ? NULL : json_loadb(text, len, 0, NULL);
        free(text);
        if (!rc && !doc) rc = core_err_set(MLV_EINVAL, "release.json is not JSON");
        if (!rc)
            rc = record_check(n, json_string_value(json_object_get(doc, "record_json")),
                              json_string_value(json_object_get(doc, "signature")), &rel);
        json_decref(doc);
        if (!rc && strcmp(rel.digest, want[i].digest) != 0)
            rc = core_err_set(MLV_EINTEGRITY, "the cached record names another version");
        if (!rc) rc = version_open(n, &rel, &model);
        if (!rc) {
            char id[128];
            snprintf(id, sizeof id, "%s:%d", n->o->model, rel.version);
            if ((rc = eng_server_swap(n->srv, model, id)) == 0) {
                core_log(CORE_LOG_WARN, "node: serving %s from the local cache%s", id,
                         rel_expired(&rel) ? " (its release record has expired)" : "");
                if (i == 1) {
                    set_error(n,
                              "the cached current version did not load; serving the previous "
                              "one, %s",
                              id);
                    pthread_mutex_lock(&n->mu);
                    n->cur = n->prev;
                    memset(&n->prev, 0, sizeof n->prev);
                    pthread_mutex_unlock(&n->mu);
                }
                return;
            }
        }
        set_error(n, "cached %s:%d: %s", n->o->model, want[i].version, core_err_last());
    }
}

/* ------------------------------------------------------------ health, metrics ---- */

static void health_hook(void *arg, json_t *doc)
{
    node *n = arg;
    pthread_mutex_lock(&n->mu);
    json_t *j =
        json_pack("{s:s,s:s,s:s,s:I,s:i,s:s,s:f,s:I}", "registry", n->o->registry, "model",
                  n->o->model, "channel", n->o->channel, "sequence", (json_int_t)n->accepted,
                  "version", n->cur.version, "last_error", n->last_error, "registry_seen_s_ago",
                  n->last_ok > 0 ? core_now_s() - n->last_ok : -1.0, "polls", (json_int_t)n->polls);
    pthread_mutex_unlock(&n->mu);
    if (j) json_object_set_new(doc, "node", j);
}

static void metrics_hook(void *arg, core_buf *out)
{
    node *n = arg;
    pthread_mutex_lock(&n->mu);
    core_buf_appendf(out,
                     "# HELP mlvault_node_release_sequence Highest release sequence accepted.\n"
                     "# TYPE mlvault_node_release_sequence gauge\n"
                     "mlvault_node_release_sequence %lld\n"
                     "# HELP mlvault_node_error Whether the last poll or switch failed.\n"
                     "# TYPE mlvault_node_error gauge\n"
                     "mlvault_node_error %d\n"
                     "# HELP mlvault_node_registry_last_seen_seconds Unix time the registry last "
                     "answered.\n"
                     "# TYPE mlvault_node_registry_last_seen_seconds gauge\n"
                     "mlvault_node_registry_last_seen_seconds %.3f\n",
                     (long long)n->accepted, n->last_error[0] != 0,
                     n->last_ok > 0 ? (double)time(NULL) - (core_now_s() - n->last_ok) : 0.0);
    pthread_mutex_unlock(&n->mu);
}

/* --------------------------------------------------------------------- main ---- */

int reg_node_home_init(const char *home)
{
    struct stat st;
    if (stat(home, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return core_err_set(MLV_EEXISTS, "%s exists and is not a folder", home);
    } else if (core_mkdir_p(home, 0700) != 0) {
        return core_err_code();
    }
    char *priv = core_path_join(home, "node.key"), *pub = core_path_join(home, "node.pub"),
         *cache = core_path_join(home, "cache");
    int rc = !priv || !pub || !cache ? core_err_set(MLV_ENOMEM, "out of memory") : 0;
    if (!rc && stat(priv, &st) == 0)
        rc = core_err_set(MLV_EEXISTS, "%s already holds a node key (node.key)", home);
    if (!rc) rc = repo_node_key_create(priv, pub);
    if (!rc) rc = core_mkdir_p(cache, 0700);
    free(priv);
    free(pub);
    free(cache);
    return rc;
}

static void node_free(node *n)
{
    eng_server_free(n->srv);
    reg_client_free(n->client);
    repo_node_key_free(n->key);
    pthread_mutex_destroy(&n->mu);
    free(n->home);
    free(n->cache);
    free(n->state_path);
}

int reg_node_run(const reg_node_opts *o)
{
    if (!o->home || !o->registry || !o->model || !o->channel || !o->trust_pem || !o->listen)
        return core_err_set(MLV_EINVAL, "node run: --home, --registry, --model, --channel, "
                                        "--trust and --listen are needed");
    if (!core_name_valid(o->model) || !core_name_valid(o->channel))
        return core_err_set(MLV_EINVAL, "node run: bad model or channel name");
    if (!(o->poll_s >= 0.1 && o->poll_s <= 86400))
        return core_err_set(MLV_EINVAL, "node run: --poll must be 0.1 .. 86400 seconds");
    node n = {.o = o};
    pthread_mutex_init(&n.mu, NULL);
    n.home = strdup(o->home);
    n.cache = core_path_join(o->home, "cache");
    n.state_path = core_path_join(o->home, "state.json");
    char *keyp = core_path_join(o->home, "node.key");
    int rc = !n.home || !n.cache || !n.state_path || !keyp
                 ? core_err_set(MLV_ENOMEM, "out of memory")
                 : 0;
    if (!rc) rc = repo_node_key_load(&n.key, keyp);
    free(keyp);
    if (rc) {
        core_err_wrap("node home %s (create it with `mlvault node init`): ", o->home);
        goto done;
    }
    if ((rc = core_mkdir_p(n.cache, 0700)) != 0 || (rc = state_load(&n)) != 0) goto done;
    if ((rc = reg_client_new(&n.client, o->registry, o->token, o->cafile)) != 0) goto done;
    reg_client_set_stall(n.client, STALL_S);
    eng_server_opts so = {.batch = o->batch,
                          .hooks = {.health = health_hook, .metrics = metrics_hook, .arg = &n},
                          .api_key = o->api_key};
    if ((rc = eng_server_new(&n.srv, &so)) != 0) goto done;
    serve_cached(&n);
    if ((rc = eng_server_listen(n.srv, o->listen)) != 0) goto done;
    fprintf(stderr, "node: serving the OpenAI API on port %d, following %s@%s at %s\n",
            eng_server_port(n.srv), o->model, o->channel, o->registry);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    while (!stop_flag) {
        poll_once(&n);
        pthread_mutex_lock(&n.mu);
        n.polls++;
        pthread_mutex_unlock(&n.mu);
        core_err_clear();
        report(&n);
        core_err_clear();
        for (double t = core_now_s() + o->poll_s; !stop_flag && core_now_s() < t;)
            usleep(50000);
    }
    fprintf(stderr, "node: stopping\n");
done:
    node_free(&n);
    return rc;
}
