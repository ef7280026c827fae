/* tests/faults/enospc.c: a fault-injection library for the crash tests, loaded with
 * LD_PRELOAD into the real `mlvault` binary. It stands between the process (our code,
 * SQLite, libgit2) and the C library's write and sync calls, counts what they do to
 * regular files, and makes them fail the way a full or failing disk does — in the
 * spirit of SQLite's own fault-injection VFS, but from outside the process, so the
 * code under test runs unmodified. Not a general syscall tracer: only what a store
 * writes with, and only faults a test asks for.
 *
 * Interposed (via dlsym(RTLD_NEXT, ...)):
 *   write, pwrite, pwrite64, writev, pwritev, pwritev64, pwritev2, pwritev64v2,
 *   fallocate, fallocate64, posix_fallocate, posix_fallocate64   (bytes and ENOSPC)
 *   fsync, fdatasync, syncfs                                      (EIO, kills)
 *   sync_file_range                                                (counted only)
 *   rename, renameat, renameat2, link, linkat                     (kills)
 * These are every call `strace -f -c mlvault push` shows touching file data on this
 * system: our code writes with write(), SQLite with pwrite64() and fdatasync(), libgit2
 * with write() and fsync(); stdio (fwrite) only ever goes to stdout/stderr. Writes
 * into mmap'd memory (SQLite's -shm index) are not seen, and need not be: the index
 * is rebuilt from the WAL and holds no data.
 *
 * Configuration, read once from the environment at load time:
 *   MLV_FAULT_ENOSPC_AFTER=N   once N bytes in total have been written to regular
 *                              files, every further write to a regular file fails with
 *                              ENOSPC. A write that crosses the budget writes up to it
 *                              and returns the short count (as a full disk does); the
 *                              next one fails. fallocate beyond the budget fails too.
 *                              File descriptors 0-2, pipes, sockets, ttys and
 *                              /dev/null are never failed nor counted.
 *   MLV_FAULT_EIO_FSYNC=K      the K-th fsync/fdatasync/syncfs call (1-based, counting
 *                              directories too) fails with EIO without syncing.
 *   MLV_FAULT_KILL_FSYNC=K     the process sends itself SIGKILL at the start of the
 *                              K-th fsync/fdatasync/syncfs: a crash at an exactly
 *                              chosen step of a durable write.
 *   MLV_FAULT_KILL_RENAME=K    the same at the start of the K-th rename/renameat/
 *                              renameat2/link/linkat (the moments names appear).
 *   MLV_FAULT_REPORT=PATH      at exit, write one JSON object to PATH: bytes written to
 *                              regular files, write calls, fsyncs, renames, ENOSPC and
 *                              EIO failures injected. Not written when killed.
 *   MLV_FAULT_TRACE=PATH       append one line per event, for finding budgets and K:
 *                              "fsync K PATH", "rename K FROM", and "write TOTAL PATH"
 *                              each time the writes move on to another file or start
 *                              at offset 0 (TOTAL = bytes written before this write);
 *                              "ENOSPC TOTAL PATH" and "EIO K" where a fault is injected.
 *                              Slow; for finding places, not for timing.
 *
 * Counters are C11 atomics: SQLite, libgit2 and the blob pipeline may write from
 * several threads. The byte budget is claimed with a compare-and-swap before writing,
 * so two threads never both spend the last bytes.
 *
 * A process whose ASan runtime must come first in the library list needs
 * ASAN_OPTIONS=verify_asan_link_order=0 to accept this library. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define NO_LIMIT UINT64_MAX

/* ------------------------------------------------------------------ settings --- */

static uint64_t budget = NO_LIMIT; /* MLV_FAULT_ENOSPC_AFTER */
static uint64_t eio_fsync_at;      /* MLV_FAULT_EIO_FSYNC, 0: never */
static uint64_t kill_fsync_at;     /* MLV_FAULT_KILL_FSYNC, 0: never */
static uint64_t kill_rename_at;    /* MLV_FAULT_KILL_RENAME, 0: never */
static char report_path[PATH_MAX]; /* MLV_FAULT_REPORT */
static int trace_fd = -1;          /* MLV_FAULT_TRACE, opened at load */

/* ------------------------------------------------------------------ counters --- */

static _Atomic uint64_t n_bytes;   /* bytes written to regular files */
static _Atomic uint64_t n_writes;  /* write calls on regular files */
static _Atomic uint64_t n_fsyncs;  /* fsync + fdatasync + syncfs calls */
static _Atomic uint64_t n_renames; /* rename* + link* calls */
static _Atomic uint64_t n_sfr;     /* sync_file_range calls */
static _Atomic uint64_t n_enospc;  /* writes failed with ENOSPC */
static _Atomic uint64_t n_eio;     /* fsyncs failed with EIO */
static _Atomic uint64_t n_short;   /* short writes at the budget */

/* ------------------------------------------------------------ real functions --- */

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*pwritev2_fn)(int, const struct iovec *, int, off_t, int);
typedef int (*fallocate_fn)(int, int, off_t, off_t);
typedef int (*posix_fallocate_fn)(int, off_t, off_t);
typedef int (*fd_fn)(int);
typedef int (*sfr_fn)(int, off_t, off_t, unsigned);
typedef int (*rename_fn)(const char *, const char *);
typedef int (*renameat_fn)(int, const char *, int, const char *);
typedef int (*renameat2_fn)(int, const char *, int, const char *, unsigned);
typedef int (*linkat_fn)(int, const char *, int, const char *, int);

/* Looks a real function up once; the result is cached in *slot. Racing threads look
 * it up twice at worst and store the same pointer. */
static void *real(void *_Atomic *slot, const char *name)
{
    void *f = atomic_load_explicit(slot, memory_order_acquire);
    if (!f) {
        f = dlsym(RTLD_NEXT, name);
        if (!f) {
            static const char msg[] = "mlv_faults: a C library function is missing\n";
            syscall(SYS_write, 2, msg, sizeof msg - 1);
            abort();
        }
        atomic_store_explicit(slot, f, memory_order_release);
    }
    return f;
}
#define REAL(type, name)                                                                           \
    static void *_Atomic slot_##name;                                                              \
    type real_##name = (type)real(&slot_##name, #name)

/* ------------------------------------------------------------------- helpers --- */

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end) {
        fprintf(stderr, "mlv_faults: %s=%s is not a number; ignored\n", name, v);
        return dflt;
    }
    return (uint64_t)x;
}

/* The fd's path, for the trace only. */
static void fd_path(int fd, char *buf, size_t n)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t k = readlink(link, buf, n - 1);
    buf[k < 0 ? 0 : k] = 0;
}

/* One line into the trace (raw syscalls: our own writes are not counted). */
static void trace(const char *fmt, ...)
{
    if (trace_fd < 0) return;
    char line[PATH_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof line) n = (int)sizeof line - 1;
    syscall(SYS_write, trace_fd, line, (size_t)n);
}

/* Only regular files count and fail; stdin/stdout/stderr never do, whatever they are. */
static bool is_regular(int fd)
{
    if (fd <= 2) return false;
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

/* Reserves up to `want` bytes of the budget for one write; returns how many may be
 * written (0: the disk is full, fail with ENOSPC). Like a full disk, this is harsher than
 * needed for overwrites of blocks a file already has: those fail too. */
static size_t claim(size_t want)
{
    if (budget == NO_LIMIT) return want;
    uint64_t cur = atomic_load(&n_bytes);
    for (;;) {
        uint64_t left = cur >= budget ? 0 : budget - cur;
        uint64_t take = want < left ? want : left;
        /* n_bytes moves only by claims while a budget is set, so a claim is a spend. */
        if (atomic_compare_exchange_weak(&n_bytes, &cur, cur + take)) return (size_t)take;
    }
}

/* Settles a claim of `claimed` bytes after the real call wrote `done` (or failed: -1). */
static void settle(size_t claimed, ssize_t done)
{
    size_t used = done > 0 ? (size_t)done : 0;
    if (budget == NO_LIMIT)
        atomic_fetch_add(&n_bytes, used);
    else if (used < claimed)
        atomic_fetch_sub(&n_bytes, claimed - used);
    if (done >= 0) atomic_fetch_add(&n_writes, 1);
}

static _Atomic uint64_t last_trace_ino;

/* Before each write to a regular file: a trace line when the target file changes, or
 * when a write starts at offset 0 (a new file may reuse the inode of one just removed;
 * `pos` is the write's offset, -1: the file's current position). */
static void trace_write(int fd, off_t pos)
{
    if (trace_fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (pos < 0) pos = lseek(fd, 0, SEEK_CUR);
    if (atomic_exchange(&last_trace_ino, (uint64_t)st.st_ino) == st.st_ino && pos != 0) return;
    char p[PATH_MAX];
    fd_path(fd, p, sizeof p);
    trace("write %llu %s\n", (unsigned long long)atomic_load(&n_bytes), p);
}

/* Fails a write (or reservation) on fd: the disk is full. */
static ssize_t enospc(int fd)
{
    atomic_fetch_add(&n_enospc, 1);
    if (trace_fd >= 0) {
        char p[PATH_MAX];
        fd_path(fd, p, sizeof p);
        trace("ENOSPC %llu %s\n", (unsigned long long)atomic_load(&n_bytes), p);
    }
    errno = ENOSPC;
    return -1;
}

/* Shortens an iovec list to `limit` bytes into `out` (capacity IOV_MAX); returns its
 * count. */
static int iov_cut(const struct iovec *iov, int cnt, size_t limit, struct iovec *out)
{
    int k = 0;
    for (int i = 0; i < cnt && limit > 0 && k < IOV_MAX; i++) {
        out[k] = iov[i];
        if (out[k].iov_len > limit) out[k].iov_len = limit;
        limit -= out[k].iov_len;
        k++;
    }
    return k;
}

static size_t iov_total(const struct iovec *iov, int cnt)
{
    size_t t = 0;
    for (int i = 0; i < cnt; i++)
        t += iov[i].iov_len;
    return t;
}

/* ----------------------------------------------------------------- the writes --- */

ssize_t write(int fd, const void *buf, size_t n)
{
    REAL(write_fn, write);
    if (n == 0 || !is_regular(fd)) return real_write(fd, buf, n);
    trace_write(fd, -1);
    size_t ok = claim(n);
    if (ok == 0) return enospc(fd);
    if (ok < n) atomic_fetch_add(&n_short, 1);
    ssize_t r = real_write(fd, buf, ok);
    settle(ok, r);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite_fn, pwrite);
    if (n == 0 || !is_regular(fd)) return real_pwrite(fd, buf, n, off);
    trace_write(fd, off);
    size_t ok = claim(n);
    if (ok == 0) return enospc(fd);
    if (ok < n) atomic_fetch_add(&n_short, 1);
    ssize_t r = real_pwrite(fd, buf, ok, off);
    settle(ok, r);
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite_fn, pwrite64);
    if (n == 0 || !is_regular(fd)) return real_pwrite64(fd, buf, n, off);
    trace_write(fd, off);
    size_t ok = claim(n);
    if (ok == 0) return enospc(fd);
    if (ok < n) atomic_fetch_add(&n_short, 1);
    ssize_t r = real_pwrite64(fd, buf, ok, off);
    settle(ok, r);
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    REAL(writev_fn, writev);
    size_t n = cnt > 0 ? iov_total(iov, cnt) : 0;
    if (n == 0 || !is_regular(fd)) return real_writev(fd, iov, cnt);
    trace_write(fd, -1);
    size_t ok = claim(n);
    if (ok == 0) return enospc(fd);
    ssize_t r;
    if (ok < n) {
        struct iovec cut[IOV_MAX];
        atomic_fetch_add(&n_short, 1);
        r = real_writev(fd, cut, iov_cut(iov, cnt, ok, cut));
    } else {
        r = real_writev(fd, iov, cnt);
    }
    settle(ok, r);
    return r;
}

/* pwritev and pwritev64 (the same on LP64), pwritev2 and pwritev64v2 likewise. */
#define PWRITEV(name)                                                                              \
    ssize_t name(int fd, const struct iovec *iov, int cnt, off_t off)                              \
    {                                                                                              \
        REAL(pwritev_fn, name);                                                                    \
        size_t n = cnt > 0 ? iov_total(iov, cnt) : 0;                                              \
        if (n == 0 || !is_regular(fd)) return real_##name(fd, iov, cnt, off);                      \
        trace_write(fd, off);                                                                      \
        size_t ok = claim(n);                                                                      \
        if (ok == 0) return enospc(fd);                                                            \
        ssize_t r;                                                                                 \
        if (ok < n) {                                                                              \
            struct iovec cut[IOV_MAX];                                                             \
            atomic_fetch_add(&n_short, 1);                                                         \
            r = real_##name(fd, cut, iov_cut(iov, cnt, ok, cut), off);                             \
        } else {                                                                                   \
            r = real_##name(fd, iov, cnt, off);                                                    \
        }                                                                                          \
        settle(ok, r);                                                                             \
        return r;                                                                                  \
    }
PWRITEV(pwritev)
PWRITEV(pwritev64)

#define PWRITEV2(name)                                                                             \
    ssize_t name(int fd, const struct iovec *iov, int cnt, off_t off, int flags)                   \
    {                                                                                              \
        REAL(pwritev2_fn, name);                                                                   \
        size_t n = cnt > 0 ? iov_total(iov, cnt) : 0;                                              \
        if (n == 0 || !is_regular(fd)) return real_##name(fd, iov, cnt, off, flags);               \
        trace_write(fd, off);                                                                      \
        size_t ok = claim(n);                                                                      \
        if (ok == 0) return enospc(fd);                                                            \
        ssize_t r;                                                                                 \
        if (ok < n) {                                                                              \
            struct iovec cut[IOV_MAX];                                                             \
            atomic_fetch_add(&n_short, 1);                                                         \
            r = real_##name(fd, cut, iov_cut(iov, cnt, ok, cut), off, flags);                      \
        } else {                                                                                   \
            r = real_##name(fd, iov, cnt, off, flags);                                             \
        }                                                                                          \
        settle(ok, r);                                                                             \
        return r;                                                                                  \
    }
PWRITEV2(pwritev2)
PWRITEV2(pwritev64v2)

/* Reserving space is spending it, as far as a full disk is concerned: the whole range
 * must fit in what is left, or the call fails and reserves nothing. (It may overlap
 * blocks the file already has; a test's budget errs toward failing early.) */
static bool fallocate_fits(int fd, off_t len)
{
    if (budget == NO_LIMIT || !is_regular(fd) || len <= 0) return true;
    return atomic_load(&n_bytes) + (uint64_t)len <= budget;
}

#define FALLOCATE(name)                                                                            \
    int name(int fd, int mode, off_t off, off_t len)                                               \
    {                                                                                              \
        REAL(fallocate_fn, name);                                                                  \
        if (!fallocate_fits(fd, len)) return (int)enospc(fd);                                      \
        return real_##name(fd, mode, off, len);                                                    \
    }
FALLOCATE(fallocate)
FALLOCATE(fallocate64)

/* posix_fallocate returns the error number instead of setting errno. */
#define POSIX_FALLOCATE(name)                                                                      \
    int name(int fd, off_t off, off_t len)                                                         \
    {                                                                                              \
        REAL(posix_fallocate_fn, name);                                                            \
        if (!fallocate_fits(fd, len)) {                                                            \
            enospc(fd);                                                                            \
            return ENOSPC;                                                                         \
        }                                                                                          \
        return real_##name(fd, off, len);                                                          \
    }
POSIX_FALLOCATE(posix_fallocate)
POSIX_FALLOCATE(posix_fallocate64)

/* ------------------------------------------------------------------ the syncs --- */

/* Counts one sync; kills the process or says to fail it when this is the chosen one. */
static bool sync_fails(int fd, const char *what)
{
    uint64_t k = atomic_fetch_add(&n_fsyncs, 1) + 1;
    if (trace_fd >= 0) {
        char p[PATH_MAX];
        fd_path(fd, p, sizeof p);
        trace("%s %llu %s\n", what, (unsigned long long)k, p);
    }
    if (k == kill_fsync_at) raise(SIGKILL);
    if (k == eio_fsync_at) {
        atomic_fetch_add(&n_eio, 1);
        trace("EIO %llu\n", (unsigned long long)k);
        return true;
    }
    return false;
}

int fsync(int fd)
{
    REAL(fd_fn, fsync);
    if (sync_fails(fd, "fsync")) {
        errno = EIO;
        return -1;
    }
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    REAL(fd_fn, fdatasync);
    if (sync_fails(fd, "fdatasync")) {
        errno = EIO;
        return -1;
    }
    return real_fdatasync(fd);
}

int syncfs(int fd)
{
    REAL(fd_fn, syncfs);
    if (sync_fails(fd, "syncfs")) {
        errno = EIO;
        return -1;
    }
    return real_syncfs(fd);
}

/* Writeback pacing only (nothing becomes durable by it): counted, never failed. */
int sync_file_range(int fd, off_t off, off_t n, unsigned flags)
{
    REAL(sfr_fn, sync_file_range);
    atomic_fetch_add(&n_sfr, 1);
    return real_sync_file_range(fd, off, n, flags);
}

/* ---------------------------------------------------------------- the renames --- */

static void name_event(const char *what, const char *from)
{
    uint64_t k = atomic_fetch_add(&n_renames, 1) + 1;
    trace("%s %llu %s\n", what, (unsigned long long)k, from ? from : "");
    if (k == kill_rename_at) raise(SIGKILL);
}

int rename(const char *from, const char *to)
{
    REAL(rename_fn, rename);
    name_event("rename", from);
    return real_rename(from, to);
}

int renameat(int fd1, const char *from, int fd2, const char *to)
{
    REAL(renameat_fn, renameat);
    name_event("rename", from);
    return real_renameat(fd1, from, fd2, to);
}

int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned flags)
{
    REAL(renameat2_fn, renameat2);
    name_event("rename", from);
    return real_renameat2(fd1, from, fd2, to, flags);
}

int link(const char *from, const char *to)
{
    REAL(rename_fn, link);
    name_event("link", from);
    return real_link(from, to);
}

int linkat(int fd1, const char *from, int fd2, const char *to, int flags)
{
    REAL(linkat_fn, linkat);
    name_event("link", from);
    return real_linkat(fd1, from, fd2, to, flags);
}

/* ---------------------------------------------------------- load and unload --- */

__attribute__((constructor)) static void faults_init(void)
{
    budget = env_u64("MLV_FAULT_ENOSPC_AFTER", NO_LIMIT);
    eio_fsync_at = env_u64("MLV_FAULT_EIO_FSYNC", 0);
    kill_fsync_at = env_u64("MLV_FAULT_KILL_FSYNC", 0);
    kill_rename_at = env_u64("MLV_FAULT_KILL_RENAME", 0);
    const char *rp = getenv("MLV_FAULT_REPORT");
    if (rp && *rp) snprintf(report_path, sizeof report_path, "%s", rp);
    const char *tp = getenv("MLV_FAULT_TRACE");
    if (tp && *tp) trace_fd = open(tp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

__attribute__((destructor)) static void faults_report(void)
{
    if (!report_path[0]) return;
    char buf[1024];
    int n = snprintf(
        buf, sizeof buf,
        "{\"pid\":%ld,\"bytes\":%llu,\"writes\":%llu,\"fsyncs\":%llu,"
        "\"renames\":%llu,\"sync_file_ranges\":%llu,\"enospc\":%llu,"
        "\"short_writes\":%llu,\"eio\":%llu}\n",
        (long)getpid(), (unsigned long long)atomic_load(&n_bytes),
        (unsigned long long)atomic_load(&n_writes), (unsigned long long)atomic_load(&n_fsyncs),
        (unsigned long long)atomic_load(&n_renames), (unsigned long long)atomic_load(&n_sfr),
        (unsigned long long)atomic_load(&n_enospc), (unsigned long long)atomic_load(&n_short),
        (unsigned long long)atomic_load(&n_eio));
    /* Raw syscalls, so the report neither counts nor fails against the budget. */
    int fd = (int)syscall(SYS_openat, AT_FDCWD, report_path,
                          O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (n > 0) syscall(SYS_write, fd, buf, (size_t)n);
    syscall(SYS_close, fd);
}
