/* registry/web.c: the web UI's files. GET|HEAD / answers web/index.html and /ui/PATH the
 * file web/PATH, from the copy compiled into the binary (scripts/embed-web.cmake writes
 * it into the build's web_assets.c) or, with `serve --web-dir DIR`, read from DIR on each
 * request (for working on the pages without a rebuild). Public: the pages hold no data,
 * and the API they call wants the token. Every reply carries the UI's
 * Content-Security-Policy (nothing loads from anywhere but this server), a strong ETag
 * (the SHA-256 of the bytes: If-None-Match answers 304) and Cache-Control: no-cache, so a
 * browser revalidates and never mixes pages of two builds. Anything that is not one of
 * the files is a plain 404: no listings, no redirects. Not for the API (api_*.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/server_internal.h"

/* docs/api.md (Web UI) and the pages' contract: scripts, styles, images, fetches from this
 * origin only; no inline script or style, no forms posting anywhere, no framing. */
#define CSP                                                                                        \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "              \
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "                   \
    "frame-ancestors 'none'"
#define MAX_PATH_LEN 200
#define MAX_DIR_FILE ((size_t)16 << 20) /* --web-dir: a file larger than this is not a page */

static const struct {
    const char *ext, *ctype;
} TYPES[] = {
    {"html", "text/html; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"svg", "image/svg+xml; charset=utf-8"},
    {"json", "application/json; charset=utf-8"},
    {"txt", "text/plain; charset=utf-8"},
    {"ico", "image/x-icon"},
    {"png", "image/png"},
    {"webp", "image/webp"},
    {"woff2", "font/woff2"},
};

static const char *content_type(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (dot && !strchr(dot, '/'))
        for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
            if (!strcmp(dot + 1, TYPES[i].ext)) return TYPES[i].ctype;
    return "application/octet-stream";
}

/* The only paths there are: segments of [A-Za-z0-9._-], none empty or starting with a dot.
 * That leaves out "..", "//", backslashes, percent-encodings (the path is the raw one),
 * control characters and hidden files, whatever a client sends. */
static bool path_ok(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > MAX_PATH_LEN) return false;
    bool seg_start = true;
    for (const char *c = p; *c; c++) {
        if (*c == '/') {
            if (seg_start) return false;
            seg_start = true;
            continue;
        }
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '_' || *c == '-' || *c == '.';
        if (!ok || (seg_start && *c == '.')) return false;
        seg_start = false;
    }
    return !seg_start;
}

/* If-None-Match: "*" or a list of entity tags, weak ones (W/"...") compared weakly. */
static bool etag_matches(const char *inm, const char *etag)
{
    if (!inm) return false;
    size_t el = strlen(etag);
    const char *p = inm;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p) break;
        const char *end = strchrnul(p, ',');
        size_t n = (size_t)(end - p);
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == 1 && *p == '*') return true;
        if (n > 2 && !strncmp(p, "W/", 2)) p += 2, n -= 2;
        if (n == el && !memcmp(p, etag, el)) return true;
        p = end;
    }
    return false;
}

/* The headers every reply of the UI carries, then the body (none for 304 or HEAD). */
static int reply(srv_req *q, int status, const char *ctype, const void *data, size_t n,
                 const char *etag)
{
    q->replied = true;
    q->status = status;
    mg_response_header_start(q->c, status);
    if (status != 304) {
        char len[24];
        snprintf(len, sizeof len, "%zu", n);
        mg_response_header_add(q->c, "Content-Type", ctype, -1);
        mg_response_header_add(q->c, "Content-Length", len, -1);
    }
    if (etag) mg_response_header_add(q->c, "ETag", etag, -1);
    mg_response_header_add(q->c, "Cache-Control", "no-cache", -1);
    mg_response_header_add(q->c, "Content-Security-Policy", CSP, -1);
    mg_response_header_add(q->c, "X-Content-Type-Options", "nosniff", -1);
    mg_response_header_add(q->c, "Referrer-Policy", "no-referrer", -1);
    mg_response_header_add(q->c, "X-Frame-Options", "DENY", -1);
    mg_response_header_send(q->c);
    return status == 304 ? 0 : srv_write(q, data, n);
}

static int not_found(srv_req *q)
{
    static const char msg[] = "not found\n";
    return reply(q, 404, "text/plain; charset=utf-8", msg, sizeof msg - 1, NULL);
}

static int send_file(srv_req *q, const char *path, const void *data, size_t n, const char *etag)
{
    if (etag_matches(mg_get_header(q->c, "If-None-Match"), etag))
        return reply(q, 304, NULL, NULL, 0, etag);
    return reply(q, 200, content_type(path), data, n, etag);
}

/* --web-dir: the file read now, if it is a regular file inside the folder once symlinks
 * are resolved (s->web_dir is a realpath). */
static int serve_dir(srv_req *q, const char *path)
{
    const char *dir = q->s->web_dir;
    char *joined = core_path_join(dir, path), *real = NULL, *data = NULL;
    size_t n = 0, dl = strlen(dir);
    int rc = 0;
    if (!joined) return core_err_set(MLV_ENOMEM, "out of memory");
    real = realpath(joined, NULL);
    if (!real || strncmp(real, dir, dl) != 0 || real[dl] != '/' ||
        core_read_file(real, MAX_DIR_FILE, &data, &n) != 0) {
        core_err_clear();
        rc = not_found(q);
        goto done;
    }
    char hex[65], etag[68];
    repo_sha256_hex(hex, data, n);
    snprintf(etag, sizeof etag, "\"%s\"", hex);
    rc = send_file(q, path, data, n, etag);
done:
    free(data);
    free(real);
    free(joined);
    return rc;
}

static int serve(srv_req *q, const char *path)
{
    if (!path_ok(path)) return not_found(q);
    if (q->s->web_dir) return serve_dir(q, path);
    for (int i = 0; i < srv_web_n_assets; i++) {
        const srv_web_asset *a = &srv_web_assets[i];
        if (!strcmp(a->path, path)) return send_file(q, path, a->data, a->size, a->etag);
    }
    return not_found(q);
}

int api_web_index(srv_req *q)
{
    return serve(q, "index.html");
}

int api_web_file(srv_req *q)
{
    return serve(q, q->params[0]);
}
