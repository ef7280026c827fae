/* registry/client.c: the libcurl client of the registry API (docs/api.md) for the remote
 * CLI and, later, serving nodes. JSON calls, resumable uploads (upload sessions, 8 MiB
 * parts streamed from disk; a session a killed run left is continued), resumable
 * downloads (Range requests into DEST.part, SHA-256 checked at the end) and loads of a
 * version into memory (reg_client_load: signature, sizes and digests checked, nothing
 * on disk). The server's {"error":{code,message}} comes back as the
 * same MLV_E* code and message, so a remote command fails exactly as a local one. Not
 * for printing: callers (cli/) decide what the user sees. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "registry/reg_internal.h"

#define PART_BYTES (8u << 20)        /* one PUT of an upload */
#define JSON_MAX ((size_t)256 << 20) /* a JSON response */
#define ERR_MAX ((size_t)1 << 20)    /* an error body */
#define ATTEMPTS 6                   /* tries of one transfer before giving up */

struct reg_client {
    CURL *curl; /* reused: keeps the connection alive between calls */
    char *url;  /* without a trailing slash */
    char *auth; /* "Authorization: Bearer ..." or NULL */
    char *cafile;
    long stall_s; /* 0: each call's own */
    char errbuf[CURL_ERROR_SIZE];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int reg_client_new(reg_client **out, const char *url, const char *token, const char *cafile)
{
    *out = NULL;
    if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return core_err_set(MLV_EINVAL, "registry URL %s: expected http(s)://HOST:PORT",
                            url ? url : "(none)");
    if (token && strpbrk(token, "\r\n"))
        return core_err_set(MLV_EINVAL, "the token contains a line break");
    pthread_once(&curl_once, curl_init_once);
    reg_client *c = calloc(1, sizeof *c);
    if (!c) return core_err_set(MLV_ENOMEM, "out of memory");
    c->curl = curl_easy_init();
    c->url = strdup(url);
    if (c->url) {
        size_t n = strlen(c->url);
        while (n > 0 && c->url[n - 1] == '/')
            c->url[--n] = 0;
    }
    bool auth_failed = false;
    if (token && *token && asprintf(&c->auth, "Authorization: Bearer %s", token) < 0) {
        c->auth = NULL;
        auth_failed = true;
    }
    c->cafile = cafile && *cafile ? strdup(cafile) : NULL;
    if (!c->curl || !c->url || auth_failed || (cafile && *cafile && !c->cafile)) {
        reg_client_free(c);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    *out = c;
    return 0;
}

void reg_client_free(reg_client *c)
{
    if (!c) return;
    if (c->curl) curl_easy_cleanup(c->curl);
    if (c->auth) memset(c->auth, 0, strlen(c->auth));
    free(c->auth);
    free(c->url);
    free(c->cafile);
    free(c);
}

/* ------------------------------------------------------------------ one request --- */

typedef struct xfer {
    reg_client *c;
    long status;   /* of the response, once its body starts */
    core_buf body; /* a JSON response, or an error body */
    size_t body_max;
    bool body_over;
    /* a download: 2xx bodies go to fd, or into mem (mem_cap bytes), from offset `start` */
    int out_fd;
    unsigned char *mem;
    uint64_t mem_cap;
    bool mem_over; /* more bytes than mem holds */
    uint64_t start, written;
    bool decided; /* the first body byte was seen */
    int werr;     /* errno of a failed write */
    bool bad_range;
    char sha_hdr[65];    /* X-Mlvault-Sha256 */
    int64_t range_first; /* Content-Range: bytes FIRST-... (-1: none) */
    /* an upload: bytes [in_off, in_off + in_left) of in_fd, out of the part that
     * starts at part_off and is part_len long (libcurl may rewind it) */
    int in_fd;
    uint64_t in_off, in_left, part_off, part_len;
    int rerr; /* errno of a failed read */
} xfer;

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    char line[256];
    size_t l = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, p, l);
    line[l] = 0;
    line[strcspn(line, "\r\n")] = 0;
    if (!strncmp(line, "HTTP/", 5)) { /* a new response (after 100 Continue, say) */
        x->sha_hdr[0] = 0;
        x->range_first = -1;
    } else if (!strncasecmp(line, "X-Mlvault-Sha256:", 17)) {
        const char *v = line + 17;
        while (*v == ' ' || *v == '\t')
            v++;
        if (strlen(v) == 64) snprintf(x->sha_hdr, sizeof x->sha_hdr, "%s", v);
    } else if (!strncasecmp(line, "Content-Range:", 14)) {
        unsigned long long first;
        if (sscanf(line + 14, " bytes %llu-", &first) == 1) x->range_first = (int64_t)first;
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    bool sink = (x->out_fd >= 0 || x->mem) && (x->status == 200 || x->status == 206);
    if (!x->decided) {
        x->decided = true;
        curl_easy_getinfo(x->c->curl, CURLINFO_RESPONSE_CODE, &x->status);
        sink = (x->out_fd >= 0 || x->mem) && (x->status == 200 || x->status == 206);
        if (sink) {
            if (x->status == 206 && x->range_first != (int64_t)x->start) {
                x->bad_range = true;
                return 0;
            }
            if (x->status == 200) x->start = 0; /* the server sent it all: start over */
        }
        if (sink && x->out_fd >= 0 &&
            (ftruncate(x->out_fd, (off_t)x->start) != 0 ||
             lseek(x->out_fd, (off_t)x->start, SEEK_SET) < 0)) {
            x->werr = errno;
            return 0;
        }
    }
    if (sink && x->mem) {
        uint64_t at = x->start + x->written;
        if (at > x->mem_cap || len > x->mem_cap - at) {
            x->mem_over = true;
            return 0;
        }
        memcpy(x->mem + at, p, len);
        x->written += len;
        return len;
    }
    if (sink) {
        for (size_t done = 0; done < len;) {
            ssize_t w = write(x->out_fd, p + done, len - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                x->werr = w < 0 ? errno : EIO;
                return 0;
            }
            done += (size_t)w;
        }
        x->written += len;
        return len;
    }
    size_t max = x->status >= 200 && x->status < 300 ? x->body_max : ERR_MAX;
    if (x->body.len + len > max) {
        x->body_over = true;
        return 0;
    }
    core_buf_append(&x->body, p, len);
    return x->body.failed ? 0 : len;
}

static size_t on_read(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t want = size * n;
    if (want > x->in_left) want = (size_t)x->in_left;
    if (want == 0) return 0;
    for (;;) {
        ssize_t r = pread(x->in_fd, p, want, (off_t)x->in_off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            x->rerr = r < 0 ? errno : EIO; /* the file shrank under us */
            return CURL_READFUNC_ABORT;
        }
        x->in_off += (uint64_t)r;
        x->in_left -= (uint64_t)r;
        return (size_t)r;
    }
}

static int on_seek(void *ud, curl_off_t offset, int origin)
{
    xfer *x = ud;
    if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > x->part_len)
        return CURL_SEEKFUNC_CANTSEEK;
    x->in_off = x->part_off + (uint64_t)offset;
    x->in_left = x->part_len - (uint64_t)offset;
    return CURL_SEEKFUNC_OK;
}

static void xfer_init(xfer *x, reg_client *c)
{
    memset(x, 0, sizeof *x);
    x->c = c;
    x->out_fd = -1;
    x->in_fd = -1;
    x->range_first = -1;
    x->body_max = JSON_MAX;
}

/* The status's code when the server sent no JSON error (a proxy's page, say). */
static int status_code(long status)
{
    switch (status) {
    case 400: return MLV_EINVAL;
    case 401: return MLV_EAUTH;
    case 403: return MLV_EFORBIDDEN;
    case 404: return MLV_ENOTFOUND;
    case 409: return MLV_EEXISTS;
    case 413:
    case 429: return MLV_ELIMIT;
    case 422: return MLV_EINTEGRITY;
    case 501: return MLV_EUNSUPPORTED;
    case 503: return MLV_EBUSY;
    default: return MLV_EIO;
    }
}

/* Turns a non-2xx response into the server's code and message. *extra (may be NULL)
 * receives the error document (for fields beside "error", like 409's "received"). */
static int http_error(reg_client *c, const char *what, xfer *x, json_t **extra)
{
    json_t *j = x->body.len ? json_loadb(x->body.data, x->body.len, 0, NULL) : NULL;
    json_t *e = json_object_get(j, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    int rc;
    if (code && msg)
        rc = core_err_set(core_err_from_name(code), "%s", msg);
    else
        rc = core_err_set(status_code(x->status), "registry %s: %s: HTTP status %ld", c->url, what,
                          x->status);
    if (extra)
        *extra = j;
    else
        json_decref(j);
    return rc;
}

/* Runs the prepared request. 0 with x->status set when a response came back (any
 * status); otherwise an MLV_EIO naming the registry, x->status -1 when another try may
 * get through. */
static int perform(reg_client *c, xfer *x, const char *what)
{
    c->errbuf[0] = 0;
    CURLcode cc = curl_easy_perform(c->curl);
    if (!x->decided) curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &x->status);
    if (cc == CURLE_OK) return 0;
    const char *detail = c->errbuf[0] ? c->errbuf : curl_easy_strerror(cc);
    if (x->werr) return core_err_set(MLV_EIO, "%s: write: %s", what, strerror(x->werr));
    if (x->rerr) return core_err_set(MLV_EIO, "%s: read: %s", what, strerror(x->rerr));
    if (x->bad_range)
        return core_err_set(MLV_EIO, "registry %s: %s: the server answered another range", c->url,
                            what);
    if (x->body_over)
        return core_err_set(MLV_ELIMIT, "registry %s: %s: response over %zu bytes", c->url, what,
                            x->body_max);
    if (x->mem_over)
        return core_err_set(MLV_EINTEGRITY, "registry %s: %s: more than the %llu bytes expected",
                            c->url, what, (unsigned long long)x->mem_cap);
    x->status = -1; /* no complete answer: the connection failed or broke */
    if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
        cc == CURLE_COULDNT_RESOLVE_PROXY)
        return core_err_set(MLV_EIO, "registry %s: cannot connect: %s", c->url, detail);
    if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE ||
        cc == CURLE_SSL_CONNECT_ERROR) {
        x->status = 0; /* not worth another try */
        return core_err_set(MLV_EIO, "registry %s: TLS: %s (MLVAULT_CACERT names the CA to trust)",
                            c->url, detail);
    }
    return core_err_set(MLV_EIO, "registry %s: %s: %s", c->url, what, detail);
}

/* A transfer that failed for a reason another try may not meet: no complete response
 * (a broken connection, a timeout: status -1, set by perform) or a server error. */
static bool transient(long status)
{
    return status >= 500 || status == -1;
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* Resets the handle for one request: URL, TLS, timeouts, callbacks, headers. `slow_s`
 * is how long the transfer may move less than a byte a second before it is given up. */
static int setup(reg_client *c, xfer *x, const char *method, const char *path,
                 struct curl_slist **hdrs, long slow_s)
{
    CURL *h = c->curl;
    curl_easy_reset(h);
    char *url = NULL;
    if (asprintf(&url, "%s%s", c->url, path) < 0) return core_err_set(MLV_ENOMEM, "out of memory");
    curl_easy_setopt(h, CURLOPT_URL, url);
    free(url); /* libcurl keeps its own copy */
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->cafile) curl_easy_setopt(h, CURLOPT_CAINFO, c->cafile);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
                     c->stall_s > 0 && c->stall_s < slow_s ? c->stall_s : slow_s);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "mlvault/" MLV_VERSION);
    if (strcmp(method, "GET") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    struct curl_slist *l = NULL, *t = NULL;
    if (c->auth) {
        if (!(t = curl_slist_append(l, c->auth))) goto oom;
        l = t;
    }
    if (!(t = curl_slist_append(l, "Expect:"))) goto oom; /* no 100-continue round trip */
    l = t;
    *hdrs = l;
    return 0;
oom:
    curl_slist_free_all(l);
    return core_err_set(MLV_ENOMEM, "out of memory");
}

/* Percent-encodes a relative file path for a URL, keeping its slashes. */
static char *encode_path(reg_client *c, const char *p)
{
    core_buf b = {0};
    const char *seg = p;
    for (;;) {
        size_t n = strcspn(seg, "/");
        char *e = curl_easy_escape(c->curl, seg, (int)n);
        if (!e) {
            core_buf_free(&b);
            return NULL;
        }
        core_buf_appendf(&b, "%s", e);
        curl_free(e);
        if (!seg[n]) break;
        core_buf_append(&b, "/", 1);
        seg += n + 1;
    }
    return core_buf_take(&b);
}

/* ------------------------------------------------------------------ JSON calls --- */

/* status (may be NULL): the response's HTTP status, -1 when the connection failed. */
static int json_call(reg_client *c, const char *method, const char *path, const json_t *body,
                     json_t **out, long *status)
{
    if (out) *out = NULL;
    if (status) *status = 0;
    if (!c) return core_err_set(MLV_EINVAL, "no registry client");
    xfer x;
    xfer_init(&x, c);
    struct curl_slist *hdrs = NULL;
    char *text = NULL;
    /* a commit or a verify works on the whole version before it answers */
    int rc = setup(c, &x, method, path, &hdrs, 900);
    if (rc) return rc;
    if (body) {
        text = core_json_dumps(body, JSON_COMPACT);
        struct curl_slist *t =
            text ? curl_slist_append(hdrs, "Content-Type: application/json") : NULL;
        if (!t) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
        hdrs = t;
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(text));
    } else if (!strcmp(method, "POST") || !strcmp(method, "PUT")) {
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, hdrs);
    char what[320];
    snprintf(what, sizeof what, "%s %s", method, path);
    rc = perform(c, &x, what);
    if (status) *status = x.status;
    if (rc) goto done;
    if (x.status < 200 || x.status >= 300) {
        rc = http_error(c, what, &x, NULL);
        goto done;
    }
    json_t *j = NULL;
    if (x.body.len) {
        json_error_t je;
        j = json_loadb(x.body.data, x.body.len, JSON_DECODE_ANY, &je);
        if (!j) {
            rc = core_err_set(MLV_EIO, "registry %s: %s: the response is not JSON: %s", c->url,
                              what, je.text);
            goto done;
        }
    } else {
        j = json_object();
    }
    if (out)
        *out = j;
    else
        json_decref(j);
done:
    curl_slist_free_all(hdrs);
    free(text);
    core_buf_free(&x.body);
    return rc;
}

int reg_client_json(reg_client *c, const char *method, const char *path, const json_t *body,
                    json_t **out)
{
    return json_call(c, method, path, body, out, NULL);
}

/* ------------------------------------------------------------------- hashing --- */

/* SHA-256 of an open file from its start, streamed. */
static int sha256_fd(int fd, const char *label, char out[65], uint64_t *size)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = malloc(1u << 20);
    int rc = 0;
    uint64_t total = 0;
    if (!md || !buf || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (;;) {
        ssize_t r = pread(fd, buf, 1u << 20, (off_t)total);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = core_err_set(MLV_EIO, "%s: %s", label, strerror(errno));
            goto done;
        }
        if (r == 0) break;
        EVP_DigestUpdate(md, buf, (size_t)r);
        total += (uint64_t)r;
    }
    unsigned char d[32];
    EVP_DigestFinal_ex(md, d, NULL);
    core_hex(out, d, 32);
    if (size) *size = total;
done:
    EVP_MD_CTX_free(md);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ downloads --- */

static void backoff(int attempt)
{
    unsigned s = 1u << (attempt < 4 ? attempt : 4); /* 1, 2, 4, 8, 16 s */
    core_log(CORE_LOG_INFO, "retrying in %u s", s);
    sleep(s);
}

/* One GET of `path` into x's sink (fd or memory) from x->start. */
static int get_range(reg_client *c, const char *path, xfer *x)
{
    struct curl_slist *hdrs = NULL;
    int rc = setup(c, x, "GET", path, &hdrs, 60);
    if (rc) return rc;
    char range[64];
    if (x->start > 0) {
        snprintf(range, sizeof range, "%llu-", (unsigned long long)x->start);
        curl_easy_setopt(c->curl, CURLOPT_RANGE, range);
    }
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, hdrs);
    char what[320];
    snprintf(what, sizeof what, "GET %s", path);
    rc = perform(c, x, what);
    if (rc == 0 && x->status != 200 && x->status != 206) rc = http_error(c, what, x, NULL);
    curl_slist_free_all(hdrs);
    return rc;
}

/* One GET of `path` appending to fd from `start`. */
static int get_once(reg_client *c, const char *path, int fd, uint64_t start, xfer *x)
{
    xfer_init(x, c);
    x->out_fd = fd;
    x->start = start;
    return get_range(c, path, x);
}

/* GETs `path` into fd (the part file) from the bytes it holds, resuming after broken
 * connections; `want` (65 bytes) takes the server's X-Mlvault-Sha256 when empty and
 * must match it otherwise (the part is removed on a mismatch). */
static int fetch(reg_client *c, const char *path, int fd, const char *part, char *want, xfer *x)
{
    int rc = 0;
    for (int attempt = 0;; attempt++) {
        struct stat st;
        if (fstat(fd, &st) != 0) return core_err_set(MLV_EIO, "%s: %s", part, strerror(errno));
        uint64_t have = (uint64_t)st.st_size;
        core_buf_free(&x->body);
        rc = get_once(c, path, fd, have, x);
        if (x->sha_hdr[0]) {
            if (want[0] && strcmp(want, x->sha_hdr) != 0) {
                unlink(part);
                return core_err_set(MLV_EINTEGRITY,
                                    "%s: the registry names sha256 %.12s…, expected %.12s…", path,
                                    x->sha_hdr, want);
            }
            snprintf(want, 65, "%s", x->sha_hdr);
        }
        if (rc == 0 || attempt + 1 >= ATTEMPTS) return rc;
        if (x->status == 416 && have > 0) {
            /* nothing after `have`: the part may already be whole; the digest decides */
            char got[65];
            if (want[0] && sha256_fd(fd, part, got, NULL) == 0 && !strcmp(got, want)) return 0;
            if (ftruncate(fd, 0) != 0)
                return core_err_set(MLV_EIO, "%s: %s", part, strerror(errno));
            continue;
        }
        /* a first connection refused: the server is not there, no point waiting */
        bool absent = attempt == 0 && x->status == -1 && strstr(core_err_last(), "cannot connect");
        if (!transient(x->status) || absent) return rc;
        core_log(CORE_LOG_WARN, "%s (resuming)", core_err_last());
        backoff(attempt);
    }
}

int reg_client_download(reg_client *c, const char *path, const char *dest, const char *sha256)
{
    if (!c) return core_err_set(MLV_EINVAL, "no registry client");
    if (sha256 && !core_is_hex(sha256, 64))
        return core_err_set(MLV_EINVAL, "%s: expected digest is not a SHA-256", dest);
    char *part = NULL;
    if (asprintf(&part, "%s.part", dest) < 0) return core_err_set(MLV_ENOMEM, "out of memory");
    int fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    int rc = 0;
    xfer x;
    xfer_init(&x, c);
    char want[65] = "";
    if (fd < 0) {
        rc = core_err_set(MLV_EIO, "%s: %s", part, strerror(errno));
        goto done;
    }
    if (sha256) snprintf(want, sizeof want, "%s", sha256);
    struct stat st0;
    /* bytes an earlier run left: resumed from, but dropped once if they prove wrong */
    bool stale = fstat(fd, &st0) == 0 && st0.st_size > 0;
    for (int round = 0;; round++) {
        if ((rc = fetch(c, path, fd, part, want, &x)) != 0) goto done;
        char got[65];
        if ((rc = sha256_fd(fd, part, got, NULL)) != 0) goto done;
        if (!want[0] || !strcmp(got, want)) break;
        if (stale && round == 0) {
            core_log(CORE_LOG_WARN, "%s: an earlier download's bytes do not match; again", part);
            if (ftruncate(fd, 0) != 0) {
                rc = core_err_set(MLV_EIO, "%s: %s", part, strerror(errno));
                goto done;
            }
            continue;
        }
        rc = core_err_set(MLV_EINTEGRITY, "%s: digest mismatch: got sha256 %s, expected %s", path,
                          got, want);
        unlink(part);
        goto done;
    }
    if (fsync(fd) != 0) {
        rc = core_err_set(MLV_EIO, "fsync %s: %s", part, strerror(errno));
        goto done;
    }
    if (rename(part, dest) != 0) rc = core_err_set(MLV_EIO, "%s: %s", dest, strerror(errno));
done:
    if (fd >= 0) close(fd);
    core_buf_free(&x.body);
    free(part);
    return rc;
}

/* -------------------------------------------------------------------- uploads --- */

typedef struct up_file {
    char *rel, *full;
    uint64_t size;
    char sha256[65];
} up_file;

/* What push sends (push_files.c), with each file's size and SHA-256 to come. */
static int collect(const char *path, bool dataset, up_file **fs, size_t *n)
{
    reg_push_src *src = NULL;
    size_t ns = 0;
    bool dir;
    int rc = reg_push_sources(path, dataset, &src, &ns, &dir);
    if (rc) return rc;
    if (!(*fs = calloc(ns, sizeof **fs))) {
        reg_push_sources_free(src, ns);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < ns; i++) {
        (*fs)[i].rel = src[i].rel;
        (*fs)[i].full = src[i].full;
    }
    *n = ns;
    free(src); /* the strings now belong to *fs */
    return 0;
}

/* How many bytes of `rel` the server holds in session `id` (GET /uploads/ID). */
static int session_received(reg_client *c, const char *id_path, const char *rel, uint64_t *got,
                            long *status)
{
    json_t *s = NULL;
    int rc = json_call(c, "GET", id_path, NULL, &s, status);
    if (rc) return rc;
    size_t i;
    json_t *f;
    rc = core_err_set(MLV_EIO, "registry %s: upload session has no file %s", c->url, rel);
    json_array_foreach(json_object_get(s, "files"), i, f)
    {
        if (!strcmp(rel, jstr(f, "path"))) {
            *got = (uint64_t)json_integer_value(json_object_get(f, "received"));
            rc = 0;
        }
    }
    json_decref(s);
    return rc;
}

/* PUT bytes [from, from + len) of the file as one part; *received: the server's count. */
static int put_part(reg_client *c, const char *url_path, int fd, const up_file *f, uint64_t from,
                    uint64_t len, uint64_t *received, long *status)
{
    xfer x;
    xfer_init(&x, c);
    x.in_fd = fd;
    x.in_off = x.part_off = from;
    x.in_left = x.part_len = len;
    struct curl_slist *hdrs = NULL, *t;
    int rc = setup(c, &x, "PUT", url_path, &hdrs, 60);
    if (rc) return rc;
    char cr[128];
    snprintf(cr, sizeof cr, "Content-Range: bytes %llu-%llu/%llu", (unsigned long long)from,
             (unsigned long long)(from + len - 1), (unsigned long long)f->size);
    if (!(t = curl_slist_append(hdrs, cr)) ||
        !(hdrs = t, t = curl_slist_append(hdrs, "Content-Type: application/octet-stream"))) {
        curl_slist_free_all(hdrs);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    hdrs = t;
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c->curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c->curl, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(c->curl, CURLOPT_READDATA, &x);
    curl_easy_setopt(c->curl, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(c->curl, CURLOPT_SEEKDATA, &x);
    curl_easy_setopt(c->curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    char what[320];
    snprintf(what, sizeof what, "upload %s", f->rel);
    rc = perform(c, &x, what);
    *status = x.status;
    if (rc == 0 && (x.status < 200 || x.status >= 300)) {
        json_t *doc = NULL;
        rc = http_error(c, what, &x, &doc);
        json_t *rcv = json_object_get(doc, "received");
        if (x.status == 409 && json_is_integer(rcv)) { /* not where the server is: resync */
            *received = (uint64_t)json_integer_value(rcv);
            rc = 1;
        }
        json_decref(doc);
    } else if (rc == 0) {
        json_t *j = json_loadb(x.body.data ? x.body.data : "", x.body.len, 0, NULL);
        json_t *rcv = json_object_get(j, "received");
        *received = json_is_integer(rcv) ? (uint64_t)json_integer_value(rcv) : from + len;
        json_decref(j);
    }
    curl_slist_free_all(hdrs);
    core_buf_free(&x.body);
    return rc;
}

/* Sends one file from `received` on, in parts; after a broken part it asks the session
 * where to go on and tries again (ATTEMPTS in a row without progress, with backoff). */
static int upload_file(reg_client *c, const char *id_path, const up_file *f, uint64_t received)
{
    char *enc = encode_path(c, f->rel), *url_path = NULL;
    if (!enc || asprintf(&url_path, "%s/files/%s", id_path, enc) < 0) {
        free(enc);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    free(enc);
    int fd = -1;
    uint64_t size = 0;
    int rc = core_open_regular(f->full, &fd, &size);
    if (rc == 0 && size != f->size)
        rc = core_err_set(MLV_EIO, "%s changed while it was being pushed", f->full);
    int fails = 0;
    while (rc == 0 && received < f->size) {
        uint64_t len = f->size - received < PART_BYTES ? f->size - received : PART_BYTES;
        uint64_t got = received;
        long status = 0;
        int prc = put_part(c, url_path, fd, f, received, len, &got, &status);
        if (prc == 0 || prc == 1) { /* 1: the server told where it stands (409) */
            if (got > f->size) {
                rc = core_err_set(MLV_EIO, "registry %s: %s: the server holds %llu of %llu bytes",
                                  c->url, f->rel, (unsigned long long)got,
                                  (unsigned long long)f->size);
                break;
            }
            if (got > received)
                fails = 0;
            else if (prc == 1 && ++fails >= ATTEMPTS)
                rc = core_err_set(MLV_EEXISTS,
                                  "%s: the "
                                  "upload does not advance",
                                  f->rel);
            received = got;
            continue;
        }
        if (!transient(status) || ++fails >= ATTEMPTS) {
            rc = prc;
            break;
        }
        core_log(CORE_LOG_WARN, "%s (resuming)", core_err_last());
        for (;;) { /* where does the server stand? */
            backoff(fails - 1);
            long st2 = 0;
            int src = session_received(c, id_path, f->rel, &got, &st2);
            if (src == 0) {
                if (got > received) fails = 0;
                received = got;
                break;
            }
            if (!transient(st2) || ++fails >= ATTEMPTS) {
                rc = src;
                break;
            }
        }
    }
    if (fd >= 0) close(fd);
    free(url_path);
    return rc;
}

/* Whether a session of GET /uploads is the push `req` describes: the same name, kind,
 * parents, note and files (paths, sizes, SHA-256). */
static bool session_matches(const json_t *sess, const json_t *req)
{
    const char *kinds[] = {"name", "kind"};
    for (size_t i = 0; i < 2; i++)
        if (strcmp(jstr(sess, kinds[i]), jstr(req, kinds[i])) != 0) return false;
    if (strcmp(jstr(sess, "note"), jstr(req, "note")) != 0) return false;
    json_t *sp = json_object_get(sess, "parents"), *rp = json_object_get(req, "parents");
    if (json_array_size(sp) != json_array_size(rp)) return false;
    for (size_t i = 0; i < json_array_size(rp); i++)
        if (!json_equal(json_array_get(sp, i), json_array_get(rp, i))) return false;
    json_t *sf = json_object_get(sess, "files"), *rf = json_object_get(req, "files");
    if (json_array_size(sf) != json_array_size(rf)) return false;
    size_t i, k;
    json_t *f, *g;
    json_array_foreach(rf, i, f)
    {
        bool found = false;
        json_array_foreach(sf, k, g)
        {
            if (!strcmp(jstr(f, "path"), jstr(g, "path"))) {
                found = !strcmp(jstr(f, "sha256"), jstr(g, "sha256")) &&
                        json_equal(json_object_get(f, "size"), json_object_get(g, "size"));
                break;
            }
        }
        if (!found) return false;
    }
    return true;
}

/* An open session of this user for the same push (one a killed earlier run left): the one
 * that holds the most bytes, or NULL (also when the server cannot list sessions). */
static json_t *session_to_resume(reg_client *c, const json_t *req)
{
    json_t *list = NULL, *best = NULL, *sess;
    uint64_t best_bytes = 0;
    if (json_call(c, "GET", "/api/v1/uploads", NULL, &list, NULL) != 0) {
        core_log(CORE_LOG_DEBUG, "no session list: %s", core_err_last());
        core_err_clear();
        return NULL;
    }
    size_t i;
    json_array_foreach(list, i, sess)
    {
        if (!session_matches(sess, req)) continue;
        uint64_t bytes = 0;
        size_t k;
        json_t *f;
        json_array_foreach(json_object_get(sess, "files"), k, f)
        {
            bytes += (uint64_t)json_integer_value(json_object_get(f, "received"));
        }
        if (!best || bytes > best_bytes) best = sess, best_bytes = bytes;
    }
    if (best) {
        json_incref(best);
        core_log(CORE_LOG_INFO, "resuming upload %s (%llu bytes already sent)", jstr(best, "id"),
                 (unsigned long long)best_bytes);
    }
    json_decref(list);
    return best;
}

int reg_client_push(reg_client *c, const json_t *meta, const char *path, json_t **out)
{
    *out = NULL;
    if (!c) return core_err_set(MLV_EINVAL, "no registry client");
    const char *kind = json_string_value(json_object_get(meta, "kind"));
    bool bundle = kind && !strcmp(kind, "bundle");
    bool dataset = kind && (!strcmp(kind, "dataset") || bundle);
    up_file *fs = NULL;
    size_t n = 0;
    json_t *req = NULL, *sess = NULL;
    char id_path[128] = "";
    int rc = collect(path, dataset, &fs, &n);
    if (rc) goto done;
    if (bundle) { /* whatever the local file is called, the server wants FILE.tar.zst */
        free(fs[0].rel);
        if (!(fs[0].rel = strdup("bundle.tar.zst"))) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
    }
    req = json_deep_copy(meta);
    json_t *files = json_array();
    if (!req || !files || json_object_set_new(req, "files", files) != 0) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        int fd;
        if ((rc = core_open_regular(fs[i].full, &fd, NULL)) != 0) goto done;
        rc = sha256_fd(fd, fs[i].full, fs[i].sha256, &fs[i].size);
        close(fd);
        if (rc) goto done;
        json_array_append_new(files, json_pack("{s:s,s:I,s:s}", "path", fs[i].rel, "size",
                                               (json_int_t)fs[i].size, "sha256", fs[i].sha256));
    }
    /* a session an interrupted run of the same push left open goes on where it stopped */
    if (!(sess = session_to_resume(c, req)) &&
        (rc = json_call(c, "POST", "/api/v1/uploads", req, &sess, NULL)) != 0)
        goto done;
    /* the session id: a number or a token of letters and digits */
    json_t *idj = json_object_get(sess, "id");
    const char *ids = json_string_value(idj);
    bool id_ok = json_is_integer(idj)
                     ? json_integer_value(idj) > 0
                     : ids && *ids && strlen(ids) <= 64 &&
                           strspn(ids, "0123456789abcdefghijklmnopqrstuvwxyz"
                                       "ABCDEFGHIJKLMNOPQRSTUVWXYZ-_") == strlen(ids);
    if (!id_ok) {
        rc = core_err_set(MLV_EIO, "registry %s: POST /api/v1/uploads: no session id", c->url);
        goto done;
    }
    if (ids)
        snprintf(id_path, sizeof id_path, "/api/v1/uploads/%s", ids);
    else
        snprintf(id_path, sizeof id_path, "/api/v1/uploads/%lld",
                 (long long)json_integer_value(idj));
    for (size_t i = 0; i < n; i++) {
        uint64_t received = 0; /* a resumed session may already hold some */
        size_t k;
        json_t *sf;
        json_array_foreach(json_object_get(sess, "files"), k, sf)
        {
            if (!strcmp(fs[i].rel, jstr(sf, "path")))
                received = (uint64_t)json_integer_value(json_object_get(sf, "received"));
        }
        if ((rc = upload_file(c, id_path, &fs[i], received)) != 0) goto done;
    }
    char commit[96];
    snprintf(commit, sizeof commit, "%s/commit", id_path);
    rc = json_call(c, "POST", commit, NULL, out, NULL);
    if (rc == 0) id_path[0] = 0; /* the server removed the session */
done:
    if (rc && id_path[0]) { /* free the server's slot; keep our error */
        char *msg = strdup(core_err_last());
        json_call(c, "DELETE", id_path, NULL, NULL, NULL);
        core_err_set(rc, "%s", msg ? msg : "upload failed");
        free(msg);
    }
    for (size_t i = 0; i < n; i++) {
        free(fs[i].rel);
        free(fs[i].full);
    }
    free(fs);
    json_decref(req);
    json_decref(sess);
    return rc;
}

/* -------------------------------------------------------------------- bundles --- */

int reg_client_bundle_export(reg_client *c, const reg_bundle_export_opts *o, json_t **out)
{
    *out = NULL;
    if (!c) return core_err_set(MLV_EINVAL, "no registry client");
    if (!o->path || !o->recipient_pem)
        return core_err_set(MLV_EINVAL, "bundle export needs -o FILE and --to IMPORTKEY.pub");
    /* refused before the server builds anything, with reg_bundle_export's words */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", o->path);
    const char *d = dirname(dir);
    struct stat st;
    if (lstat(o->path, &st) == 0)
        return core_err_set(MLV_EEXISTS, "%s exists; refusing to overwrite it", o->path);
    if (stat(d, &st) != 0 || !S_ISDIR(st.st_mode))
        return core_err_set(MLV_ENOTFOUND, "%s: folder %s does not exist", o->path, d);
    json_t *refs = json_array(), *res = NULL;
    for (size_t i = 0; refs && i < o->n_refs; i++)
        json_array_append_new(refs, json_string(o->refs[i]));
    json_t *body = refs ? json_pack("{s:o,s:b,s:s}", "refs", refs, "with_ancestors",
                                    o->with_ancestors, "recipient_pem", o->recipient_pem)
                        : NULL;
    char path[128] = "";
    int rc = body ? json_call(c, "POST", "/api/v1/bundles", body, &res, NULL)
                  : core_err_set(MLV_ENOMEM, "out of memory");
    json_decref(body);
    if (rc) goto done;
    const char *id = jstr(res, "id"), *sha = jstr(res, "sha256");
    if (!core_is_hex(id, 32) || !core_is_hex(sha, 64)) {
        rc = core_err_set(MLV_EIO, "registry %s: POST /api/v1/bundles: no bundle id or sha256",
                          c->url);
        goto done;
    }
    snprintf(path, sizeof path, "/api/v1/bundles/%s", id);
    /* FILE.part, resumed after broken connections, checked, then renamed to FILE */
    if ((rc = reg_client_download(c, path, o->path, sha)) != 0) goto done;
    json_object_del(res, "id");
    json_object_set_new(res, "file", json_string(o->path));
    *out = res;
    res = NULL;
done:
    if (path[0]) { /* the server keeps it an hour at most; free it now, keep our error */
        char *msg = rc ? strdup(core_err_last()) : NULL;
        if (json_call(c, "DELETE", path, NULL, NULL, NULL) != 0)
            core_log(CORE_LOG_WARN, "bundle %s left on the server: %s", path, core_err_last());
        if (rc)
            core_err_set(rc, "%s", msg ? msg : "bundle export failed");
        else
            core_err_clear();
        free(msg);
    }
    json_decref(res);
    return rc;
}

int reg_client_bundle_import(reg_client *c, const char *path, json_t **out)
{
    *out = NULL;
    json_t *meta = json_pack("{s:s,s:s}", "name", "bundle", "kind", "bundle");
    if (!meta) return core_err_set(MLV_ENOMEM, "out of memory");
    int rc = reg_client_push(c, meta, path, out);
    json_decref(meta);
    if (rc == 0) json_object_set_new(*out, "file", json_string(path));
    return rc;
}

/* --------------------------------------------------------------------- export --- */

int reg_client_version_path(reg_client *c, const char *ref, char *out, size_t n)
{
    reg_ref r;
    int rc = reg_ref_parse(ref, &r);
    if (rc) return rc;
    int v = r.version;
    if (r.channel[0]) {
        char p[256];
        json_t *rel = NULL;
        snprintf(p, sizeof p, "/api/v1/models/%s/channels/%s", r.name, r.channel);
        if ((rc = json_call(c, "GET", p, NULL, &rel, NULL)) != 0) return rc;
        v = (int)json_integer_value(json_object_get(json_object_get(rel, "record"), "version"));
        json_decref(rel);
        if (v <= 0)
            return core_err_set(MLV_EIO, "registry %s: %s: the release names no version", c->url,
                                ref);
    }
    if (v > 0)
        snprintf(out, n, "/api/v1/models/%s/versions/%d", r.name, v);
    else
        snprintf(out, n, "/api/v1/models/%s/versions/latest", r.name);
    return 0;
}

/* The file at dir/name when its SHA-256 is `want` (left by an interrupted export). */
static bool have_file(const char *path, const char *want)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char got[65];
    bool ok = sha256_fd(fd, path, got, NULL) == 0 && !strcmp(got, want);
    close(fd);
    core_err_clear();
    return ok;
}

/* Checks a version as a local export does, from the server's answers: `show` (GET
 * VERSION), the manifest's bytes and the signature bundle. The manifest must hash to the
 * version's digest and name that version; the signature, when the registry's own key
 * (GET /registry/key) made it, is checked here over the manifest and its files, and one
 * another site made (a bundle import) by the server, which holds the keys it trusts.
 * *m (owned by the caller, repo_manifest_free) receives the parsed manifest. */
static int check_signed_version(reg_client *c, const char *ref, const char *vpath,
                                const json_t *show, const char *mtext, size_t mlen, const char *sig,
                                size_t slen, repo_manifest **m)
{
    *m = NULL;
    const char *digest = jstr(show, "digest");
    char got[65];
    repo_sha256_hex(got, mtext, mlen);
    if (strcmp(got, digest) != 0)
        return core_err_set(MLV_EINTEGRITY,
                            "%s: the manifest's SHA-256 is %s, but the version's digest is %s", ref,
                            got, digest);
    json_t *key = NULL;
    repo_sig_resource *res = NULL;
    int rc = repo_manifest_parse(m, mtext, mlen);
    if (rc) {
        core_err_wrap("%s: manifest: ", ref);
        goto done;
    }
    if (strcmp((*m)->name, jstr(show, "name")) != 0 ||
        (*m)->version != (int)json_integer_value(json_object_get(show, "version"))) {
        rc = core_err_set(MLV_EINTEGRITY, "%s: manifest names %s:%d", ref, (*m)->name,
                          (*m)->version);
        goto done;
    }
    if ((rc = json_call(c, "GET", "/api/v1/registry/key", NULL, &key, NULL)) != 0) goto done;
    const char *pem = jstr(key, "pem");
    char hint[65];
    reg_key_hint(hint, pem);
    const char *signer = jstr(json_object_get(show, "signature"), "key_hint");
    if (!*signer || !strcmp(signer, hint)) {
        if (!(res = reg_version_resources(*m, digest))) {
            rc = core_err_code();
            goto done;
        }
        if ((rc = repo_sig_verify(sig, slen, pem, res, (*m)->n_files + 1)) != 0)
            core_err_wrap("%s: signature: ", ref);
    } else {
        char sub[320];
        snprintf(sub, sizeof sub, "%s/verify", vpath);
        rc = json_call(c, "POST", sub, NULL, NULL, NULL);
    }
done:
    free(res);
    json_decref(key);
    if (rc) {
        repo_manifest_free(*m);
        *m = NULL;
    }
    return rc;
}

int reg_client_export(reg_client *c, const char *ref, const char *outdir)
{
    if (!c) return core_err_set(MLV_EINVAL, "no registry client");
    char staging[4096] = "", vpath[256];
    bool out_exists = false, keep = false;
    json_t *show = NULL;
    repo_manifest *m = NULL;
    char *mtext = NULL, *sig = NULL, *p = NULL;
    size_t mlen = 0, slen = 0;
    int rc = 0;

    /* Decide where the files go before asking the server anything (as reg_export). */
    char pdir[4096], lname[4096];
    if ((rc = reg_export_target(outdir, &out_exists, pdir, lname)) != 0) return rc;

    if ((rc = reg_client_version_path(c, ref, vpath, sizeof vpath)) != 0) goto done;
    if ((rc = json_call(c, "GET", vpath, NULL, &show, NULL)) != 0) goto done;
    const char *digest = jstr(show, "digest");
    if (!core_is_hex(digest, 64)) {
        rc = core_err_set(MLV_EIO, "registry %s: %s: no digest in the answer", c->url, ref);
        goto done;
    }
    /* Named by the version's digest, so running the export again resumes here. */
    if (snprintf(staging, sizeof staging, "%s/.%s.partial-%.16s", pdir, lname, digest) >=
        (int)sizeof staging) {
        staging[0] = 0;
        rc = core_err_set(MLV_EINVAL, "%s: path too long", outdir);
        goto done;
    }
    if (mkdir(staging, 0755) != 0 && errno != EEXIST) {
        rc = core_err_set(MLV_EIO, "create %s: %s", staging, strerror(errno));
        staging[0] = 0;
        goto done;
    }

    /* The manifest (its SHA-256 is the version's digest) and the signature over it. */
    if (!(p = core_path_join(staging, REG_MANIFEST_FILE))) goto oom;
    char sub[320];
    snprintf(sub, sizeof sub, "%s/manifest", vpath);
    if ((rc = reg_client_download(c, sub, p, digest)) != 0) goto done;
    if ((rc = core_read_file(p, 64u << 20, &mtext, &mlen)) != 0) goto done;
    free(p);
    if (!(p = core_path_join(staging, REG_SIGNATURE_FILE))) goto oom;
    unlink(p);
    snprintf(sub, sizeof sub, "%s/signature", vpath);
    if ((rc = reg_client_download(c, sub, p, NULL)) != 0) goto done;
    if ((rc = core_read_file(p, 16u << 20, &sig, &slen)) != 0) goto done;
    if ((rc = check_signed_version(c, ref, vpath, show, mtext, mlen, sig, slen, &m)) != 0)
        goto done;

    /* Every file, checked against the manifest's digest as it lands. */
    for (size_t i = 0; i < m->n_files; i++) {
        const repo_file *f = &m->files[i];
        free(p);
        char *enc = encode_path(c, f->path);
        if (!enc || !(p = core_path_join(staging, f->path))) {
            free(enc);
            goto oom;
        }
        char *slash = strrchr(p, '/');
        if (strchr(f->path, '/') && slash) {
            *slash = 0;
            rc = core_mkdir_p(p, 0755);
            *slash = '/';
            if (rc) {
                free(enc);
                goto done;
            }
        }
        char *fpath = NULL;
        if (asprintf(&fpath, "%s/files/%s", vpath, enc) < 0) fpath = NULL;
        free(enc);
        if (!fpath) goto oom;
        if (!have_file(p, f->sha256)) rc = reg_client_download(c, fpath, p, f->sha256);
        free(fpath);
        if (rc) {
            core_err_wrap("%s: %s: ", ref, f->path);
            goto done;
        }
    }
    if ((rc = core_fsync_dir(staging)) != 0) goto done;
    if ((rc = reg_export_place(staging, outdir, out_exists, pdir)) != 0) goto done;
    staging[0] = 0;
    goto done;
oom:
    rc = core_err_set(MLV_ENOMEM, "out of memory");
done:
    /* A broken connection keeps what arrived, for the next run; anything else leaves
     * nothing behind. */
    keep = rc == MLV_EIO && strstr(core_err_last(), "registry ") != NULL;
    if (staging[0] && keep) {
        char *msg = strdup(core_err_last());
        core_err_set(rc, "%s (run the export again to resume)", msg ? msg : "");
        free(msg);
    } else if (staging[0]) {
        core_rm_rf(staging);
    }
    repo_manifest_free(m);
    free(mtext);
    free(sig);
    free(p);
    json_decref(show);
    return rc;
}

/* ----------------------------------------------------------------------- load --- */

void reg_client_set_stall(reg_client *c, long seconds)
{
    c->stall_s = seconds;
}

/* A small answer (a manifest, a signature) into memory: *out NUL-terminated, owned by
 * the caller; asked again after a broken connection. */
static int get_small(reg_client *c, const char *path, size_t max, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    for (int attempt = 0;; attempt++) {
        xfer x;
        xfer_init(&x, c);
        x.body_max = max;
        int rc = get_range(c, path, &x);
        if (rc == 0) {
            *len = x.body.len;
            if (!(*out = core_buf_take(&x.body))) rc = core_err_set(MLV_ENOMEM, "out of memory");
            return rc;
        }
        core_buf_free(&x.body);
        if (!transient(x.status) || attempt + 1 >= ATTEMPTS) return rc;
        core_log(CORE_LOG_WARN, "%s (again)", core_err_last());
        backoff(attempt);
    }
}

int reg_client_get_text(reg_client *c, const char *path, size_t max, char **out, size_t *len)
{
    return get_small(c, path, max, out, len);
}

/* GETs a file of the version straight into `mem` (exactly f->size bytes), resuming with
 * Range requests after a broken connection (ATTEMPTS in a row without progress); the
 * bytes must be f->size long and hash to f->sha256. Nothing touches the disk. */
static int fetch_mem(reg_client *c, const char *path, const repo_file *f, unsigned char *mem)
{
    uint64_t have = 0;
    int rc = 0;
    for (int attempt = 0, fails = 0; have < f->size || attempt == 0; attempt++) {
        xfer x;
        xfer_init(&x, c);
        x.mem = mem;
        x.mem_cap = f->size;
        x.start = have;
        rc = get_range(c, path, &x);
        core_buf_free(&x.body);
        if (x.sha_hdr[0] && strcmp(x.sha_hdr, f->sha256) != 0)
            return core_err_set(MLV_EINTEGRITY,
                                "%s: the registry names sha256 %.12s…, the manifest %.12s…", path,
                                x.sha_hdr, f->sha256);
        /* what arrived, whatever the status says (perform() sets -1 on a broken transfer) */
        uint64_t now = x.start + x.written;
        fails = now > have ? 0 : fails + 1;
        have = now;
        if (rc == 0) break;
        bool absent = attempt == 0 && x.status == -1 && strstr(core_err_last(), "cannot connect");
        if (!transient(x.status) || absent || fails >= ATTEMPTS) return rc;
        core_log(CORE_LOG_WARN, "%s (resuming)", core_err_last());
        backoff(fails);
    }
    if (have != f->size)
        return core_err_set(MLV_EINTEGRITY, "%s: %llu bytes arrived, the manifest says %llu", path,
                            (unsigned long long)have, (unsigned long long)f->size);
    char got[65];
    repo_sha256_hex(got, mem, (size_t)f->size);
    if (strcmp(got, f->sha256) != 0)
        return core_err_set(MLV_EINTEGRITY, "%s: digest mismatch: got sha256 %s, expected %s", path,
                            got, f->sha256);
    return 0;
}

int reg_client_load(reg_client *c, const char *ref, reg_loaded *out)
{
    memset(out, 0, sizeof *out);
    if (!c) return core_err_set(MLV_EINVAL, "no registry client");
    char vpath[256], sub[320];
    json_t *show = NULL;
    repo_manifest *m = NULL;
    char *mtext = NULL, *sig = NULL, *fpath = NULL;
    size_t mlen = 0, slen = 0;
    int rc = reg_client_version_path(c, ref, vpath, sizeof vpath);
    if (rc) goto done;
    if ((rc = json_call(c, "GET", vpath, NULL, &show, NULL)) != 0) goto done;
    const char *digest = jstr(show, "digest");
    if (!core_is_hex(digest, 64)) {
        rc = core_err_set(MLV_EIO, "registry %s: %s: no digest in the answer", c->url, ref);
        goto done;
    }
    snprintf(sub, sizeof sub, "%s/manifest", vpath);
    if ((rc = get_small(c, sub, 64u << 20, &mtext, &mlen)) != 0) goto done;
    snprintf(sub, sizeof sub, "%s/signature", vpath);
    if ((rc = get_small(c, sub, 16u << 20, &sig, &slen)) != 0) goto done;
    if ((rc = check_signed_version(c, ref, vpath, show, mtext, mlen, sig, slen, &m)) != 0)
        goto done;

    if ((rc = reg_loaded_alloc(out, m, ref)) != 0) goto done;
    for (size_t i = 0; i < m->n_files; i++) {
        const repo_file *f = &m->files[i];
        reg_file_mem *fm = &out->files[i];
        char *enc = encode_path(c, f->path);
        free(fpath);
        fpath = NULL;
        if (!enc || asprintf(&fpath, "%s/files/%s", vpath, enc) < 0) {
            fpath = NULL;
            free(enc);
            goto oom;
        }
        free(enc);
        if ((rc = fetch_mem(c, fpath, f, fm->data)) != 0) {
            core_err_wrap("%s: %s: ", ref, f->path);
            goto done;
        }
    }
    snprintf(out->name, sizeof out->name, "%s", m->name);
    snprintf(out->kind, sizeof out->kind, "%s", m->kind);
    snprintf(out->digest, sizeof out->digest, "%s", digest);
    snprintf(out->format, sizeof out->format, "%s", m->format);
    out->version = m->version;
    out->version_id = 0; /* no catalog row here */
    goto done;
oom:
    rc = core_err_set(MLV_ENOMEM, "out of memory");
done:
    if (rc) reg_loaded_clear(out);
    repo_manifest_free(m);
    free(mtext);
    free(sig);
    free(fpath);
    json_decref(show);
    return rc;
}
