/* registry/api_nodes.c: the API's serving-node routes (docs/api.md: Serving nodes) —
 * enrolment and the node list for people; for nodes themselves their state reports, the
 * data keys of a version wrapped for their own key, and the version's blobs exactly as
 * stored (still encrypted: a node decrypts them in memory). And the renewal of a
 * channel's release record. Thin edges over registry/nodes.c and release.c; the
 * dispatcher (server.c) has authenticated the caller, checked the route's role and, for
 * a node, that {name} is its enrolled model. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/server_internal.h"

#define PEM_MAX 16384
#define BLOB_IO ((size_t)1 << 20) /* bytes read and sent at a time */

int api_nodes_enroll(srv_req *q)
{
    json_t *b;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    const char *name = NULL, *pem = NULL, *model = NULL;
    char token[REG_TOKEN_LEN + 1], hint[65];
    unsigned char raw[REPO_X25519_LEN];
    if ((rc = srv_str_field(b, "name", true, 64, &name)) != 0 ||
        (rc = srv_str_field(b, "pubkey", true, PEM_MAX, &pem)) != 0 ||
        (rc = srv_str_field(b, "model", true, 64, &model)) != 0)
        goto done;
    if ((rc = reg_node_enroll(q->r, &q->user, name, pem, model, token)) != 0) goto done;
    repo_import_key_parse(pem, raw, hint); /* parsed by the enrolment already */
    rc = srv_reply_json(q, 201,
                        json_pack("{s:s,s:s,s:s,s:s}", "name", name, "model", model, "key_hint",
                                  hint, "token", token));
    memset(token, 0, sizeof token);
done:
    json_decref(b);
    return rc;
}

int api_nodes_list(srv_req *q)
{
    json_t *o;
    int rc = reg_node_list(q->r, &q->user, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

int api_node_state(srv_req *q)
{
    if (strcmp(q->params[0], q->user.name) != 0)
        return core_err_set(MLV_EFORBIDDEN, "forbidden: node %s may report only its own state",
                            q->user.name);
    json_t *b;
    int rc = srv_read_json(q, &b);
    if (rc) return rc;
    rc = reg_node_report(q->r, &q->user, b);
    json_decref(b);
    return rc ? rc
              : srv_reply_json(q, 200, json_pack("{s:s,s:b}", "name", q->user.name, "recorded", 1));
}

int api_node_keys(srv_req *q)
{
    char ref[96];
    srv_ref(q, ref, sizeof ref);
    json_t *o;
    int rc = reg_node_keys(q->r, &q->user, ref, &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}

/* GET V/blobs/PATH: the stored ciphertext of one file of the version, byte for byte;
 * X-Mlvault-Size is its length, X-Mlvault-Plain-Sha256 and X-Mlvault-Plain-Size the
 * plaintext's (as in the manifest), Range as for file downloads. */
int api_node_blob(srv_req *q)
{
    char ref[96], vref[160], digest[65];
    srv_ref(q, ref, sizeof ref);
    reg_version_row v = {0};
    repo_manifest *m = NULL;
    char *path = NULL;
    int fd = -1;
    unsigned char *buf = NULL;
    int64_t vid = 0;
    int rc = reg_resolve(q->r, ref, &vid, NULL, NULL);
    if (rc == 0) rc = reg_version_load(q->r, vid, &v);
    if (rc) goto done;
    snprintf(vref, sizeof vref, "%s:%d", v.name, v.version);
    repo_sha256_hex(digest, v.manifest, strlen(v.manifest));
    if (strcmp(digest, v.digest) != 0) {
        rc = core_err_set(MLV_EINTEGRITY, "%s: manifest was altered", vref);
        goto done;
    }
    if ((rc = repo_manifest_parse(&m, v.manifest, strlen(v.manifest))) != 0) goto done;
    const repo_file *f = NULL;
    for (size_t i = 0; i < m->n_files && !f; i++)
        if (!strcmp(m->files[i].path, q->params[2])) f = &m->files[i];
    if (!f) {
        rc = core_err_set(MLV_ENOTFOUND, "%s has no file '%s'", vref, q->params[2]);
        goto done;
    }
    uint64_t size = repo_aead_ciphertext_size(f->size);
    struct stat st;
    if (!(path = repo_blob_path(q->r->home, f->sha256))) {
        rc = core_err_code();
        goto done;
    }
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)) < 0) {
        rc = errno == ENOENT
                 ? core_err_set(MLV_EINTEGRITY, "%s: the blob of %s is missing", vref, f->path)
                 : core_err_set(MLV_EIO, "%s: blob of %s: %s", vref, f->path, strerror(errno));
        goto done;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) {
        rc = core_err_set(MLV_EINTEGRITY, "%s: the blob of %s is not the size it should be", vref,
                          f->path);
        goto done;
    }
    uint64_t a, b;
    char headers[768];
    int status = srv_range_start(q, size, NULL, &a, &b, headers, sizeof headers);
    if (status == 416) goto done;
    size_t used = strlen(headers);
    snprintf(headers + used, sizeof headers - used,
             "X-Mlvault-Plain-Sha256: %s\r\nX-Mlvault-Plain-Size: %" PRIu64 "\r\n", f->sha256,
             f->size);
    uint64_t len = size ? b - a + 1 : 0;
    /* The trace comes first: a download that is cut short was still a download. */
    char target[200], detail[160];
    snprintf(target, sizeof target, "%s/%s", vref, f->path);
    snprintf(detail, sizeof detail,
             "ciphertext bytes %" PRIu64 "-%" PRIu64 " of %" PRIu64 " (blob %.16s)", len ? a : 0,
             len ? b : 0, size, f->sha256);
    if (!q->head && (rc = reg_audit_record(q->r, &q->user, "node.pull", target, detail)) != 0)
        goto done;
    srv_reply_start(q, status, "application/octet-stream", len, headers);
    if (q->head || len == 0) goto done;
    if (!(buf = malloc(BLOB_IO))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (uint64_t off = a; off < a + len;) {
        size_t want = a + len - off < BLOB_IO ? (size_t)(a + len - off) : BLOB_IO;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            rc = core_err_set(MLV_EIO, "%s: reading the blob of %s: %s", vref, f->path,
                              n < 0 ? strerror(errno) : "it got shorter");
            goto done;
        }
        if ((rc = srv_write(q, buf, (size_t)n)) != 0) goto done;
        off += (uint64_t)n;
    }
done:
    free(buf);
    if (fd >= 0) close(fd);
    free(path);
    repo_manifest_free(m);
    reg_version_row_clear(&v);
    return rc;
}

int api_channel_renew(srv_req *q)
{
    json_t *o;
    int rc = reg_channel_renew(q->r, &q->user, q->params[0], q->params[1], &o);
    return rc ? rc : srv_reply_json(q, 200, o);
}
