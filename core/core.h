/* core: the small shared base every module stands on — error codes and the
 * thread-local error slot, logging, files (atomic, durable writes), hex, time,
 * random bytes and name validation. Nothing here knows about models or storage
 * layout; it is plumbing only. */
#ifndef MLV_CORE_H
#define MLV_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MLV_VERSION "0.1.0"

/* Error codes: 0 is success, failures are negative. The CLI maps them to exit
 * codes (cli/main.c) and the HTTP API to statuses, each in exactly one place. */
enum {
    MLV_OK = 0,
    MLV_EINVAL = -1,        /* bad input from the caller or the user */
    MLV_ENOTFOUND = -2,     /* a name, version, file or row that does not exist */
    MLV_EEXISTS = -3,       /* would overwrite something that already exists */
    MLV_EAUTH = -4,         /* no token, an unknown token, or a disabled user */
    MLV_EFORBIDDEN = -5,    /* authenticated, but the role does not allow it */
    MLV_EINTEGRITY = -6,    /* a digest, tag, signature or chain does not verify */
    MLV_EIO = -7,           /* the operating system refused a read or a write */
    MLV_ENOMEM = -8,        /* allocation failed */
    MLV_EGATE = -9,         /* the accuracy gate refused a promotion */
    MLV_ECRYPTO = -10,      /* the crypto library failed (not a verification failure) */
    MLV_EDB = -11,          /* the catalog (SQLite) failed */
    MLV_EBUSY = -12,        /* locked by another process; try again */
    MLV_EUNSUPPORTED = -13, /* a valid request we do not implement (format, version) */
    MLV_ELIMIT = -14,       /* over a size or count limit (request body, uploads at once) */
};

/* Sets the calling thread's error slot and returns `code`, so a failure site
 * reads `return core_err_set(MLV_EINVAL, "name %s: ...", name);`. */
int core_err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends context to the current message ("push foo: " + old message); returns the
 * current code. Use it when passing an error up through a layer. */
int core_err_wrap(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last message set on this thread; borrowed, valid until the next set. */
const char *core_err_last(void);
int core_err_code(void);
void core_err_clear(void);
/* A short stable name for a code: "EINVAL", "EINTEGRITY", ... (static string). */
const char *core_err_name(int code);
/* The code of a name core_err_name gives ("EGATE" → MLV_EGATE); unknown names: MLV_EIO.
 * The HTTP client uses it to turn the server's error back into the same code. */
int core_err_from_name(const char *name);

/* Logging to stderr; level from MLVAULT_LOG (error|warn|info|debug), default warn. */
enum { CORE_LOG_ERROR, CORE_LOG_WARN, CORE_LOG_INFO, CORE_LOG_DEBUG };
void core_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- files ---- */
/* mkdir -p with `mode` for created directories. */
int core_mkdir_p(const char *path, unsigned mode);
/* fsync a directory so a rename or create inside it is durable. */
int core_fsync_dir(const char *dir);
/* Writes data to `path` durably and atomically: a temp file in `tmpdir` (same
 * filesystem), fsync, rename over `path`, fsync of path's directory. `mode` is the
 * file mode (e.g. 0600). Nothing is visible at `path` unless all of it is. */
int core_write_atomic(const char *path, const char *tmpdir, const void *data, size_t len,
                      unsigned mode);
/* Opens an existing regular file read-only; a FIFO or device is refused rather than
 * waited on. MLV_ENOTFOUND / MLV_EIO ("PATH: <strerror>") or MLV_EINVAL ("PATH is not a
 * regular file"). *fd_out is the caller's to close; size may be NULL. */
int core_open_regular(const char *path, int *fd_out, uint64_t *size);
/* Reads a whole regular file, at most `max` bytes (MLV_EINVAL beyond). *out is owned
 * by the caller (free()), NUL-terminated for convenience; *len excludes the NUL. */
int core_read_file(const char *path, size_t max, char **out, size_t *len);
/* write(2) the whole buffer, retrying short writes and EINTR. */
int core_write_all(int fd, const void *buf, size_t len);
/* Removes a directory tree (no symlink following). Missing is not an error. */
int core_rm_rf(const char *path);
/* Joins two path parts into a fresh string (caller frees), NULL on ENOMEM. */
char *core_path_join(const char *a, const char *b);
/* A path relative to a model folder is safe when it is non-empty, not absolute, has
 * no "." / ".." / empty components, no backslash or control characters, ≤ 255 bytes. */
bool core_relpath_safe(const char *p);

/* ---- names, hex, time, random ---- */
/* Artifact and user names: [a-z0-9][a-z0-9._-]{0,63}. */
bool core_name_valid(const char *name);
void core_hex(char *out, const unsigned char *in, size_t n);   /* out: 2n+1 bytes */
int core_unhex(unsigned char *out, size_t n, const char *hex); /* exactly 2n hex chars */
bool core_is_hex(const char *s, size_t n);                     /* n lowercase hex chars, then NUL */
/* Current UTC time as RFC 3339 with seconds ("2026-11-29T07:48:12Z"); out: 21 bytes. */
void core_time_iso(char out[21]);
/* Seconds on the monotonic clock, for durations. */
double core_now_s(void);
/* Cryptographically secure random bytes (OpenSSL RAND_bytes). */
int core_random(void *out, size_t n);
/* Formats a byte count for people ("92.9 MB"); out: at least 16 bytes. */
void core_human_bytes(char *out, size_t outsz, uint64_t n);

/* A copy of n bytes with every invalid UTF-8 sequence replaced by U+FFFD (as text from
 * a model may end in the middle of a character), NUL-terminated; caller frees; NULL on
 * ENOMEM. */
char *core_utf8_valid_copy(const char *s, size_t n);

/* Safe string building: a growable buffer. */
typedef struct core_buf {
    char *data;
    size_t len, cap;
    int failed; /* sticky: set on ENOMEM, further appends do nothing */
} core_buf;
void core_buf_appendf(core_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Runs fn(arg) on a new thread with a stack of `stack` bytes and waits for it: for work
 * started on threads whose stacks are small (CivetWeb's workers). 0, or MLV_ENOMEM when the
 * thread could not be started (fn did not run). */
int core_run_on_stack(size_t stack, void *(*fn)(void *), void *arg);
/* Prometheus text format: a label value with \\, " and newline escaped, appended to b; and a
 * metric's "# HELP" and "# TYPE" lines. */
void core_prom_label(core_buf *b, const char *value);
void core_prom_head(core_buf *b, const char *name, const char *type, const char *help);
void core_buf_append(core_buf *b, const void *p, size_t n);
/* Takes the string (NUL-terminated) out of the buffer, or NULL if an append failed.
 * The caller owns the result; the buffer is reset. */
char *core_buf_take(core_buf *b);
void core_buf_free(core_buf *b);

/* A thread pool for data-parallel kernels (core/pool.c): n threads including the caller;
 * workers spin briefly between jobs (a decode step runs hundreds of short jobs), then
 * sleep. One job at a time: core_pool_run is not reentrant and not for concurrent use
 * from several threads. */
typedef struct core_pool core_pool;
/* n_threads <= 0: the number of online CPUs. *out owned by the caller. */
int core_pool_new(core_pool **out, int n_threads);
void core_pool_free(core_pool *p);
int core_pool_size(const core_pool *p);
/* Calls fn(arg, ith, nth) on every thread (ith = 0..nth-1, the caller is 0) and returns
 * when all have returned. */
void core_pool_run(core_pool *p, void (*fn)(void *arg, int ith, int nth), void *arg);

#endif
