/* core/file.c: durable, atomic file writes and careful reads. The crash-safety rule
 * of the data home lives here: temp file, fsync, rename, fsync the directory. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int core_mkdir_p(const char *path, unsigned mode)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return core_err_set(MLV_EINVAL, "path too long: %s", path);
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return core_err_set(MLV_EIO, "mkdir %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, mode) != 0 && errno != EEXIST)
        return core_err_set(MLV_EIO, "mkdir %s: %s", buf, strerror(errno));
    return 0;
}

int core_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return core_err_set(MLV_EIO, "open dir %s: %s", dir, strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0) rc = core_err_set(MLV_EIO, "fsync dir %s: %s", dir, strerror(errno));
    close(fd);
    return rc;
}

int core_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return core_err_set(MLV_EIO, "write: %s", strerror(errno));
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int core_write_atomic(const char *path, const char *tmpdir, const void *data, size_t len,
                      unsigned mode)
{
    char tmpl[4096];
    if (snprintf(tmpl, sizeof tmpl, "%s/.atomic-XXXXXX", tmpdir) >= (int)sizeof tmpl)
        return core_err_set(MLV_EINVAL, "path too long: %s", tmpdir);
    int fd = mkostemp(tmpl, O_CLOEXEC);
    if (fd < 0) return core_err_set(MLV_EIO, "create temp in %s: %s", tmpdir, strerror(errno));
    int rc = 0;
    if (fchmod(fd, mode) != 0) {
        rc = core_err_set(MLV_EIO, "chmod %s: %s", tmpl, strerror(errno));
        goto fail;
    }
    if ((rc = core_write_all(fd, data, len)) != 0) {
        core_err_wrap("%s: ", path);
        goto fail;
    }
    if (fsync(fd) != 0) {
        rc = core_err_set(MLV_EIO, "fsync %s: %s", tmpl, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = core_err_set(MLV_EIO, "close %s: %s", tmpl, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmpl, path) != 0) {
        rc = core_err_set(MLV_EIO, "rename to %s: %s", path, strerror(errno));
        goto fail;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    return core_fsync_dir(dirname(dir));
fail:
    if (fd >= 0) close(fd);
    unlink(tmpl);
    return rc;
}

int core_open_regular(const char *path, int *fd_out, uint64_t *size)
{
    *fd_out = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return core_err_set(errno == ENOENT || errno == ENOTDIR ? MLV_ENOTFOUND : MLV_EIO,
                            "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return core_err_set(MLV_EIO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return core_err_set(MLV_EINVAL, "%s is not a regular file", path);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    *fd_out = fd;
    if (size) *size = (uint64_t)st.st_size;
    return 0;
}

int core_read_file(const char *path, size_t max, char **out, size_t *len)
{
    *out = NULL;
    if (len) *len = 0;
    int fd;
    uint64_t fsize;
    int rc = core_open_regular(path, &fd, &fsize);
    if (rc) return rc;
    char *buf = NULL;
    if (fsize > max) {
        rc = core_err_set(MLV_EINVAL, "%s: larger than the limit of %zu bytes", path, max);
        goto done;
    }
    size_t n = (size_t)fsize, got = 0;
    buf = malloc(n + 1);
    if (!buf) {
        rc = core_err_set(MLV_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = core_err_set(MLV_EIO, "read %s: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    buf[got] = 0;
    *out = buf;
    buf = NULL;
    if (len) *len = got;
done:
    free(buf);
    close(fd);
    return rc;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(p) != 0 && errno != ENOENT ? -1 : 0;
}

int core_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return 0;
    if (nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS) != 0)
        return core_err_set(MLV_EIO, "remove %s: %s", path, strerror(errno));
    return 0;
}

char *core_path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    if (!p) return NULL;
    memcpy(p, a, la);
    size_t o = la;
    if (la && a[la - 1] != '/') p[o++] = '/';
    memcpy(p + o, b, lb + 1);
    return p;
}

bool core_relpath_safe(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > 255 || p[0] == '/') return false;
    const char *seg = p;
    for (const char *c = p;; c++) {
        if (*c == '/' || *c == 0) {
            size_t sl = (size_t)(c - seg);
            if (sl == 0) return false;
            if (sl == 1 && seg[0] == '.') return false;
            if (sl == 2 && seg[0] == '.' && seg[1] == '.') return false;
            if (*c == 0) break;
            seg = c + 1;
            continue;
        }
        if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == '\\') return false;
    }
    return true;
}
